"""Reading the order history back from JetStream, read-only: recent orders with their
execution reports (ORDERS + EXEC), and the trace of one order from its origin tick to
its fill. Used by `moon orders` / `moon trace` and the gateway.

Every read is a batch of direct gets (streams.read_stream): no consumer, nothing acked,
nothing held back from execution, which is all the operator and gateway users may do
(moonbus.conf). Every scan is bounded by `max_scan` messages.

    trails = await recent_orders(nc, limit=20)          # newest last
    trail = await trace(nc, "trading-BTC-USD-42")      # None if not found
    for hop in hops(trail): print(hop.name, hop.ts, hop.since_previous_ns)
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from services.contract import subjects
from services.contract.models import ExecutionReport, OrderRequest, OrderStatus
from services.common.streams import EXEC, ORDERS, Stored, StreamReadError, read_stream

__all__ = ["OrderTrail", "Report", "ScanLimitReached", "Stored", "StreamReadError", "hops", "recent_orders",
           "trace"]

# The most messages one lookup reads from a stream: an unknown id costs at most this.
MAX_SCAN = 100_000


class ScanLimitReached(StreamReadError):
    """A search read its `max_scan` messages without finding what it looked for."""


@dataclass
class Report:
    stored: Stored
    report: ExecutionReport


@dataclass
class OrderTrail:
    """An order as stored in ORDERS and the reports execution stored for it in EXEC."""

    client_order_id: str
    order: OrderRequest | None = None  # None: the order itself is no longer (or not) in ORDERS
    stored: Stored | None = None
    reports: list[Report] = field(default_factory=list)

    @property
    def last(self) -> ExecutionReport | None:
        return self.reports[-1].report if self.reports else None

    @property
    def status(self) -> str:
        """The latest report's status; PENDING while execution has not reported yet."""
        return self.last.status.value if self.last else "PENDING"

    @property
    def terminal(self) -> bool:
        return self.last is not None and self.last.status not in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)

    def as_dict(self) -> dict[str, Any]:
        """JSON: the order and its reports in their wire format, stream positions, hops."""
        return {
            "client_order_id": self.client_order_id,
            "status": self.status,
            "order": _wire(self.order),
            "stored": {"seq": self.stored.seq, "ts": self.stored.stored_ns} if self.stored else None,
            "reports": [{"seq": r.stored.seq, "stored_ts": r.stored.stored_ns, "report": _wire(r.report)}
                        for r in self.reports],
            "hops": [{"hop": h.name, "ts": h.ts, "since_previous_ns": h.since_previous_ns} for h in hops(self)],
        }


def _wire(message: BaseModel | None) -> Any:
    return json.loads(message.model_dump_json(exclude_none=True)) if message is not None else None


def _order(stored: Stored) -> OrderRequest | None:
    """The order stored, when it is one and it names the agent and symbol of its subject
    (`orders.submit.<agent>.<symbol>`): one that names another agent is not that agent's order
    (execution refuses it), shown as unreadable, never as the order it claims to be."""
    try:
        order = OrderRequest.model_validate_json(stored.data)
    except ValidationError:
        return None  # execution rejects it too and reports it on exec.report._invalid
    if stored.subject != subjects.orders_submit(order.agent, order.symbol):
        return None
    return order


def _report(stored: Stored) -> ExecutionReport | None:
    try:
        return ExecutionReport.model_validate_json(stored.data)
    except ValidationError:
        return None


async def _last_seq(nc: Client, stream: str) -> tuple[int, int]:
    try:
        info = await nc.jetstream().stream_info(stream)
    except Exception as e:
        raise StreamReadError(f"cannot read stream {stream}: {e}") from None
    return info.state.first_seq, info.state.last_seq


async def _attach_reports(nc: Client, trails: dict[str, OrderTrail], subject: str, start_ns: int,
                          max_scan: int) -> None:
    """Reports are stored after their order, so EXEC is read from the oldest order's time."""
    async for stored in read_stream(nc, EXEC, subject, start_ns=start_ns, max_messages=max_scan):
        report = _report(stored)
        if report is not None and report.client_order_id in trails:
            trails[report.client_order_id].reports.append(Report(stored, report))


async def recent_orders(nc: Client, limit: int = 20, symbol: str | None = None, *,
                        max_scan: int = MAX_SCAN) -> list[OrderTrail]:
    """The last `limit` orders submitted (for `symbol`, or all), oldest first, with their reports.
    Looks back over at most `max_scan` stream sequences of ORDERS (fewer orders when the
    symbol's are sparser than that)."""
    subject = subjects.orders_submit("*", symbol) if symbol else subjects.ORDERS_SUBMIT_ALL
    first, last = await _last_seq(nc, ORDERS)
    found: list[Stored] = []
    window = limit
    # Walk back from the end in growing windows until `limit` orders of the subject are in.
    while last >= first and last > 0:
        start = max(first, last - window + 1)
        found = [s async for s in read_stream(nc, ORDERS, subject, start_seq=start, max_messages=max_scan)]
        if len(found) >= limit or start == first or window >= max_scan:
            break
        window = min(window * 4, max_scan)
    trails: dict[str, OrderTrail] = {}
    for stored in found[-limit:]:
        order = _order(stored)
        key = order.client_order_id if order else stored.msg_id or f"seq-{stored.seq}"
        # The first stored under an id is the order execution took; a later one is a duplicate.
        if key not in trails:
            trails[key] = OrderTrail(key, order, stored)
    if trails:
        oldest = min(t.stored.stored_ns for t in trails.values() if t.stored)
        await _attach_reports(nc, trails, subjects.exec_report(symbol or ">"), oldest, max_scan)
    return list(trails.values())


async def trace(nc: Client, client_order_id: str, since_ns: int | None = None,
                max_scan: int = MAX_SCAN) -> OrderTrail | None:
    """The order `client_order_id` (stored since `since_ns`, default: all the stream
    keeps) and its reports; None when neither ORDERS nor EXEC knows it. Reads at most
    `max_scan` messages of each stream: ScanLimitReached when that ends the search."""
    trail = OrderTrail(client_order_id)
    orders = read_stream(nc, ORDERS, subjects.ORDERS_SUBMIT_ALL, start_ns=since_ns, max_messages=max_scan)
    scanned = 0
    async with contextlib.aclosing(orders) as found:
        async for stored in found:
            scanned += 1
            if stored.msg_id == client_order_id:
                trail.stored, trail.order = stored, _order(stored)
                break
    if trail.stored is None and scanned >= max_scan:
        raise ScanLimitReached(f"no order {client_order_id} in the first {max_scan} orders of ORDERS read; "
                               "a later start (since) narrows the search")
    symbol = trail.order.symbol if trail.order else ">"
    start_ns = trail.stored.stored_ns if trail.stored else since_ns
    # EXEC's Nats-Msg-Id is `<client_order_id>:<status>:<filled>`.
    async for stored in read_stream(nc, EXEC, subjects.exec_report(symbol), start_ns=start_ns, max_messages=max_scan):
        if stored.msg_id.startswith(client_order_id + ":"):
            report = _report(stored)
            if report is not None and report.client_order_id == client_order_id:
                trail.reports.append(Report(stored, report))
    return trail if trail.stored or trail.reports else None


@dataclass
class Hop:
    name: str
    ts: int
    since_previous_ns: int | None  # None for the first hop


def hops(trail: OrderTrail) -> list[Hop]:
    """Each hop's timestamp, from the tick that caused the order to the report of its
    outcome stored in EXEC, and the time since the previous hop. Hops not reached
    (a rejected order is never filled) are left out."""
    order, last = trail.order, trail.last
    timings = last.timings if last else None
    points = [
        ("origin tick", order.origin_ts if order else (timings.origin_ts if timings else None)),
        ("order sent", order.ts if order else None),
        ("stored in ORDERS", trail.stored.stored_ns if trail.stored else None),
        ("received by execution", timings.received_ts if timings else None),
        ("risk checked", timings.risk_checked_ts if timings else None),
        ("filled", timings.filled_ts if timings else None),
        ("report sent", last.ts if last else None),
        ("stored in EXEC", trail.reports[-1].stored.stored_ns if trail.reports else None),
    ]
    result: list[Hop] = []
    for name, ts in points:
        if ts is None:
            continue
        result.append(Hop(name, ts, ts - result[-1].ts if result else None))
    return result
