"""Reading the order history back from JetStream, read-only: recent orders with their
execution reports (ORDERS + EXEC), and the trace of one order from its origin tick to
its fill. Used by `moon orders` / `moon trace` and the gateway.

Every read is an unnamed, unacknowledged push consumer (`$JS.API.CONSUMER.CREATE.<stream>`)
that the server removes once we unsubscribe: it never takes, holds back or acks an order
meant for execution, which is all the operator and gateway users may do (moonbus.conf).

    trails = await recent_orders(nc, limit=20)          # newest last
    trail = await trace(nc, "trading-BTC-USD-42")      # None if not found
    for hop in hops(trail): print(hop.name, hop.ts, hop.since_previous_ns)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ValidationError

from .models import ExecutionReport, OrderRequest, OrderStatus
from .streams import EXEC, MSG_ID_HEADER, ORDERS

# A scan gives up when the server sends nothing for this long while messages are pending.
STALL_S = 10.0


class StreamReadError(RuntimeError):
    """A stream could not be read (missing, not allowed, or the server stopped sending)."""


@dataclass
class Stored:
    """One stream message: its sequence, subject, the server's time of storing it (ns)."""

    seq: int
    subject: str
    stored_ns: int
    msg_id: str
    data: bytes


def _stored(msg: Msg) -> tuple[Stored, int]:
    """The message and how many more are pending after it."""
    meta = msg.metadata
    tokens = (msg.reply or "").split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (v1), or with
    # domain and account hash after ACK (v2): the timestamp in full nanoseconds.
    stored_ns = int(tokens[7] if len(tokens) == 9 else tokens[Msg.Ack.Timestamp])
    msg_id = (msg.headers or {}).get(MSG_ID_HEADER, "")
    return Stored(meta.sequence.stream, msg.subject, stored_ns, msg_id, msg.data), meta.num_pending


async def scan(
    nc: Client,
    stream: str,
    subject: str,
    *,
    start_seq: int | None = None,
    start_ns: int | None = None,
    headers_only: bool = False,
) -> AsyncIterator[Stored]:
    """Every message of `stream` on `subject` from `start_seq` or `start_ns` (else the
    first) up to the last one stored now, oldest first. headers_only: `data` is empty
    (much less to send when looking for a Nats-Msg-Id).

    Use as `async with contextlib.aclosing(scan(...)) as messages:` when stopping early.
    """
    js = nc.jetstream()
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=queue.put)
    config = ConsumerConfig(
        deliver_subject=inbox,
        ack_policy=AckPolicy.NONE,
        filter_subject=subject,
        headers_only=headers_only or None,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=10.0,
    )
    if start_seq is not None:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, max(1, start_seq)
    elif start_ns is not None:
        config.deliver_policy = DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.fromtimestamp(start_ns / 1e9, timezone.utc)
    try:
        try:
            info = await js.add_consumer(stream, config)
        except Exception as e:
            raise StreamReadError(f"cannot read stream {stream}: {e}") from None
        # Delivery starts with the create: whatever went out before the answer counts too.
        pending = (info.num_pending or 0) + (info.delivered.consumer_seq if info.delivered else 0)
        while pending > 0:
            try:
                msg = await asyncio.wait_for(queue.get(), STALL_S)
            except asyncio.TimeoutError:
                raise StreamReadError(f"stream {stream} stopped sending ({pending} messages pending)") from None
            stored, pending = _stored(msg)
            yield stored
    finally:
        await sub.unsubscribe()


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
    try:
        return OrderRequest.model_validate_json(stored.data)
    except ValidationError:
        return None  # execution rejects it too and reports it on exec.report._invalid


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


async def _attach_reports(nc: Client, trails: dict[str, OrderTrail], subject: str, start_ns: int) -> None:
    """Reports are stored after their order, so EXEC is read from the oldest order's time."""
    async for stored in scan(nc, EXEC, subject, start_ns=start_ns):
        report = _report(stored)
        if report is not None and report.client_order_id in trails:
            trails[report.client_order_id].reports.append(Report(stored, report))


async def recent_orders(nc: Client, limit: int = 20, symbol: str | None = None) -> list[OrderTrail]:
    """The last `limit` orders submitted (for `symbol`, or all), oldest first, with their reports."""
    subject = f"orders.submit.{symbol or '>'}"
    first, last = await _last_seq(nc, ORDERS)
    found: list[Stored] = []
    window = limit
    # Walk back from the end in growing windows until `limit` orders of the subject are in.
    while last >= first and last > 0:
        start = max(first, last - window + 1)
        found = [s async for s in scan(nc, ORDERS, subject, start_seq=start)]
        if len(found) >= limit or start == first:
            break
        window *= 4
    trails: dict[str, OrderTrail] = {}
    for stored in found[-limit:]:
        order = _order(stored)
        key = order.client_order_id if order else stored.msg_id or f"seq-{stored.seq}"
        trails[key] = OrderTrail(key, order, stored)
    if trails:
        oldest = min(t.stored.stored_ns for t in trails.values() if t.stored)
        await _attach_reports(nc, trails, f"exec.report.{symbol or '>'}", oldest)
    return list(trails.values())


async def trace(nc: Client, client_order_id: str, since_ns: int | None = None) -> OrderTrail | None:
    """The order `client_order_id` (stored since `since_ns`, default: all the stream
    keeps) and its reports; None when neither ORDERS nor EXEC knows it."""
    trail = OrderTrail(client_order_id)
    async with contextlib.aclosing(scan(nc, ORDERS, "orders.submit.>", start_ns=since_ns, headers_only=True)) as found:
        async for head in found:
            if head.msg_id == client_order_id:
                raw = await nc.jetstream().get_msg(ORDERS, head.seq)
                head.data = raw.data or b""
                trail.stored, trail.order = head, _order(head)
                break
    symbol = trail.order.symbol if trail.order else ">"
    start_ns = trail.stored.stored_ns if trail.stored else since_ns
    # EXEC's Nats-Msg-Id is `<client_order_id>:<status>:<filled>`: find by header, then fetch.
    async for head in scan(nc, EXEC, f"exec.report.{symbol}", start_ns=start_ns, headers_only=True):
        if head.msg_id.startswith(client_order_id + ":"):
            raw = await nc.jetstream().get_msg(EXEC, head.seq)
            head.data = raw.data or b""
            report = _report(head)
            if report is not None and report.client_order_id == client_order_id:
                trail.reports.append(Report(head, report))
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
