"""Execution algorithms (#14) on the real system: nats-server with the secure config and
the release-built rust-market-data, rust-risk and rust-execution, started by the launcher
(a fresh system per test). A parent order with `algo` (TWAP / ICEBERG) is worked by
execution as children that go through ORDERS, risk's pre-trade check and the paper venue
like any order (rust-execution/src/algo.rs).

- a TWAP over max_order_notional (refused whole) fills in N children on schedule, the
  parent reporting its progress and never a fill of its own; risk's position is exactly
  the children's fills;
- an ICEBERG sends one child of display_quantity at a time, the last the remainder;
- a child refused by risk stops the algo: the parent ends CANCELLED naming the child;
- a cancel of the parent mid-way cancels the working child and ends it CANCELLED;
- the kill switch stops a running algo;
- execution SIGKILLed mid-TWAP and restarted: the schedule resumes, no child twice.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from decimal import Decimal

import nats
import pytest
from nats.js.api import DiscardPolicy

from services.common.streams import read_stream
from services.contract.models import ChildKind, ExecutionReport, OrderStatus
from services.devstack.launcher import System
from tests.conftest import RISK_ROOMY, SystemBus, system_fixture

pytestmark = pytest.mark.e2e

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USDC")
TERMINAL = {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
            OrderStatus.FAILED}
WAIT = 120.0

# max_order_notional stays at its default (1000): a BTC order over ~0.0103 is refused whole.
ENV = RISK_ROOMY | {
    "RUST_LOG": "warn,rust_execution=info",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
    # Snapshots often: a restart rebuilds from one (its algo children included) plus the EXEC tail.
    "MOONBUS__EXECUTION__SNAPSHOT_INTERVAL_MS": "200",
    "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
}


system = system_fixture(ENV, tail=60)


class Bus(SystemBus):
    def __init__(self, system: System, nc: nats.NATS) -> None:
        super().__init__(system, nc)
        self.reports: dict[str, list[ExecutionReport]] = defaultdict(list)
        self.seen_at: dict[str, list[float]] = defaultdict(list)

    async def on_report(self, msg: nats.aio.msg.Msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id:
            self.reports[report.client_order_id].append(report)
            self.seen_at[report.client_order_id].append(asyncio.get_running_loop().time())

    async def wait_serving(self) -> None:
        await self.wait_active(SYMBOLS)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:  # execution may register on the service API a little after risk is ACTIVE
            try:
                reply = await self.nc.request("exec.api.version", b"{}", timeout=2)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                assert loop.time() < deadline, f"execution never answered\n{self.system.tail(40)}"
                await asyncio.sleep(0.2)
        assert json.loads(reply.data)["service"] == "execution"

    async def submit(self, order_id: str, quantity: str, algo: dict | None, *, side: str = "BUY",
                     limit: str | None = None, symbol: str = "BTC-USD") -> str:
        body: dict = {"client_order_id": order_id, "agent": "operator", "symbol": symbol, "side": side,
                      "type": "LIMIT" if limit else "MARKET", "quantity": quantity, "origin_ts": 1, "ts": 1}
        if limit:
            body["limit_price"] = limit
        if algo:
            body["algo"] = algo
        await self.js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": order_id})
        return order_id

    async def cancel(self, order_id: str, symbol: str = "BTC-USD") -> None:
        body = {"client_order_id": order_id, "agent": "operator", "symbol": symbol, "ts": 1}
        await self.js.publish(f"orders.cancel.operator.{symbol}", json.dumps(body).encode())

    def final(self, order_id: str) -> ExecutionReport | None:
        return next((r for r in self.reports.get(order_id, []) if r.status in TERMINAL), None)

    async def wait_final(self, order_id: str, timeout: float = WAIT) -> ExecutionReport:
        await self.until(lambda: self.final(order_id) is not None, f"a final report of {order_id}", timeout)
        report = self.final(order_id)
        assert report is not None
        return report

    async def stored(self) -> list[ExecutionReport]:
        return [ExecutionReport.model_validate_json(m.data) async for m in read_stream(self.nc, "EXEC", "exec.report.>")]

    async def positions(self) -> dict[str, Decimal] | None:  # type: ignore[override]
        reply = await super().positions()
        return None if reply is None else {p.symbol: p.quantity for p in reply.positions}

    async def wait_position(self, symbol: str, expected: Decimal) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            held = await self.positions()
            if held is not None and held.get(symbol, Decimal(0)) == expected:
                return
            assert loop.time() < deadline, f"risk's {symbol} position {held} != {expected}"
            await asyncio.sleep(0.1)


bus = Bus.fixture()


def children_of(reports: list[ExecutionReport], parent: str) -> dict[str, list[ExecutionReport]]:
    children: dict[str, list[ExecutionReport]] = defaultdict(list)
    for r in reports:
        if r.parent_order_id == parent:
            assert r.client_order_id is not None
            children[r.client_order_id].append(r)
    return dict(children)


def check_books(stored: list[ExecutionReport], parent: str) -> Decimal:
    """The parent's reports carry no fill; each child fills at most once; returns the
    children's net fill."""
    mine = [r for r in stored if r.client_order_id == parent]
    assert mine, "the parent has reports"
    assert all(r.last_fill_quantity is None and r.fee == 0 for r in mine), f"a parent report carries a fill: {mine}"
    assert all(r.algo is not None for r in mine), "every parent report carries its progress"
    assert sum(1 for r in mine if r.status in TERMINAL) == 1, f"one final parent report: {mine}"
    net = Decimal(0)
    for child, reports in children_of(stored, parent).items():
        assert all(r.child_kind is ChildKind.SLICE for r in reports), reports
        fills = [r for r in reports if r.last_fill_quantity]
        assert len(fills) <= 1, f"{child} filled twice: {fills}"
        assert sum(1 for r in reports if r.status in TERMINAL) == 1, f"{child}: {reports}"
        for r in fills:
            assert r.last_fill_quantity is not None
            net += r.last_fill_quantity if r.side and r.side.value == "BUY" else -r.last_fill_quantity
    return net


async def test_a_twap_over_the_order_limit_fills_in_its_slices_on_schedule(bus: Bus) -> None:
    # 0.027 BTC (~2600 USD) is over max_order_notional (1000): refused whole ...
    whole = await bus.submit("whole-1", "0.027", None)
    refused = await bus.wait_final(whole)
    assert refused.status is OrderStatus.REJECTED and refused.reason and "max_order_notional" in refused.reason
    # ... and filled as a TWAP of 3 slices of 0.009 over 3 s.
    parent = await bus.submit("twap-1", "0.027", {"kind": "TWAP", "duration_ms": 3000, "slices": 3})
    final = await bus.wait_final(parent)
    assert final.status is OrderStatus.FILLED, final
    assert final.filled_quantity == Decimal("0.027")
    assert final.algo is not None and (final.algo.slices_total, final.algo.slices_sent, final.algo.slices_filled) == (3, 3, 3)
    assert final.algo.working_child_id is None and final.algo.next_slice_ts is None

    parent_reports = bus.reports[parent]
    assert parent_reports[0].status is OrderStatus.ACCEPTED and parent_reports[0].algo is not None
    progress = [r for r in parent_reports if r.status is OrderStatus.PARTIALLY_FILLED]
    assert progress, f"progress reports: {parent_reports}"
    assert [r.filled_quantity for r in progress] == sorted(r.filled_quantity for r in progress)
    assert all(r.avg_fill_price for r in progress)

    stored = await bus.stored()
    children = children_of(stored, parent)
    assert sorted(children) == ["twap-1__s1", "twap-1__s2", "twap-1__s3"]
    quantities = [children[c][0].quantity for c in sorted(children)]
    assert quantities == [Decimal("0.009")] * 3
    assert all(rs[-1].status is OrderStatus.FILLED for rs in children.values())
    # On schedule: 1 s apart (received by execution; the first at once).
    received = [children[c][0].timings.received_ts for c in sorted(children)]
    assert all(t is not None for t in received)
    gaps = [(b - a) / 1e9 for a, b in zip(received, received[1:])]  # type: ignore[operator]
    assert all(0.9 <= g <= 2.5 for g in gaps), f"slices {gaps} s apart, 1 s expected"
    # The average is the children's.
    notional = sum(rs[-1].avg_fill_price * rs[-1].filled_quantity for rs in children.values())  # type: ignore[operator]
    assert abs(final.avg_fill_price - notional / Decimal("0.027")) < Decimal("1e-9")  # type: ignore[operator]

    net = check_books(stored, parent)
    assert net == Decimal("0.027")
    await bus.wait_position("BTC-USD", Decimal("0.027"))


async def test_an_iceberg_sends_one_child_at_a_time(bus: Bus) -> None:
    parent = await bus.submit("ice-1", "0.025", {"kind": "ICEBERG", "display_quantity": "0.01"})
    final = await bus.wait_final(parent)
    assert final.status is OrderStatus.FILLED, final
    assert final.algo is not None and final.algo.slices_total is None and final.algo.slices_sent == 3
    stored = await bus.stored()
    children = children_of(stored, parent)
    ordered = sorted(children)
    assert ordered == ["ice-1__s1", "ice-1__s2", "ice-1__s3"]
    assert [children[c][0].quantity for c in ordered] == [Decimal("0.01"), Decimal("0.01"), Decimal("0.005")]
    # One at a time: each child was received after the previous one's final report.
    for before, after in zip(ordered, ordered[1:]):
        ended = next(r for r in children[before] if r.status in TERMINAL)
        received = children[after][0].timings.received_ts
        assert received is not None and received >= ended.ts, f"{after} sent before {before} ended"
    assert check_books(stored, parent) == Decimal("0.025")
    await bus.wait_position("BTC-USD", Decimal("0.025"))


async def test_a_child_refused_by_risk_stops_the_algo(bus: Bus) -> None:
    # Slices of 0.015 BTC (~1450 USD) are over max_order_notional: the first is refused.
    parent = await bus.submit("twap-big", "0.03", {"kind": "TWAP", "duration_ms": 2000, "slices": 2})
    final = await bus.wait_final(parent)
    assert final.status is OrderStatus.CANCELLED, final
    assert final.reason and final.reason.startswith("child twap-big__s1 REJECTED: max_order_notional"), final.reason
    assert final.filled_quantity == 0
    await asyncio.sleep(2.5)  # past the second slice's time: it is never sent
    stored = await bus.stored()
    assert list(children_of(stored, parent)) == ["twap-big__s1"]
    assert check_books(stored, parent) == 0
    await bus.wait_position("BTC-USD", Decimal(0))


async def test_a_cancel_mid_way_cancels_the_working_child(bus: Bus) -> None:
    # A LIMIT BUY far below the market rests; 4 slices over 40 s.
    parent = await bus.submit("twap-cxl", "0.004", {"kind": "TWAP", "duration_ms": 40000, "slices": 4},
                              limit="50000")
    await bus.until(lambda: any(r.status is OrderStatus.ACCEPTED for r in bus.reports.get("twap-cxl__s1", [])),
                    "the first child resting")
    await bus.cancel(parent)
    final = await bus.wait_final(parent, timeout=30)
    assert final.status is OrderStatus.CANCELLED, final
    assert final.reason and final.reason.startswith("cancelled by operator"), final.reason
    child = await bus.wait_final("twap-cxl__s1", timeout=10)
    assert child.status is OrderStatus.CANCELLED and child.parent_order_id == parent, child
    stopping = [r for r in bus.reports[parent] if r.reason and r.reason.startswith("stopping: ")]
    assert stopping, "a stopping report was stored before the end"
    stored = await bus.stored()
    assert list(children_of(stored, parent)) == ["twap-cxl__s1"]
    assert check_books(stored, parent) == 0


async def test_the_kill_switch_stops_a_running_algo(bus: Bus) -> None:
    parent = await bus.submit("twap-ks", "0.004", {"kind": "TWAP", "duration_ms": 30000, "slices": 4})
    await bus.until(lambda: any(r.status is OrderStatus.FILLED for r in bus.reports.get("twap-ks__s1", [])),
                    "the first slice filled")
    body = {"action": "engage", "actor": "algo-test", "reason": "test"}
    reply = await bus.nc.request("risk.api.killswitch.operator", json.dumps(body).encode(), timeout=10)
    assert json.loads(reply.data)["engaged"] is True
    final = await bus.wait_final(parent, timeout=30)
    assert final.status is OrderStatus.CANCELLED and final.reason and "kill switch engaged" in final.reason, final
    assert final.filled_quantity == Decimal("0.001")
    stored = await bus.stored()
    assert list(children_of(stored, parent)) == ["twap-ks__s1"]
    assert check_books(stored, parent) == Decimal("0.001")
    await bus.wait_position("BTC-USD", Decimal("0.001"))


async def test_execution_killed_mid_twap_resumes_without_doubling(system: System, bus: Bus) -> None:
    parent = await bus.submit("twap-kill", "0.006", {"kind": "TWAP", "duration_ms": 6000, "slices": 6})
    await bus.until(lambda: any(r.status is OrderStatus.FILLED for r in bus.reports.get("twap-kill__s2", [])),
                    "two slices filled")
    system.kill("execution")
    assert bus.final(parent) is None, "killed after the end: proves nothing"
    await asyncio.sleep(1.5)
    system.restart("execution")
    final = await bus.wait_final(parent)
    assert final.status is OrderStatus.FILLED, final
    assert final.filled_quantity == Decimal("0.006")
    stored = await bus.stored()
    children = children_of(stored, parent)
    assert sorted(children) == [f"twap-kill__s{n}" for n in range(1, 7)], sorted(children)
    assert check_books(stored, parent) == Decimal("0.006")
    # Every child is in ORDERS once (its id is its Nats-Msg-Id).
    orders = [json.loads(m.data) async for m in read_stream(bus.nc, "ORDERS", "orders.submit.>")]
    ids = [o["client_order_id"] for o in orders if o["client_order_id"].startswith("twap-kill__s")]
    assert sorted(ids) == sorted(children), ids
    await bus.wait_position("BTC-USD", Decimal("0.006"))


async def twap_resting_two_children(bus: Bus, parent: str) -> str:
    """A TWAP of two LIMIT slices far below the market: both children sent, both resting."""
    await bus.submit(parent, "0.002", {"kind": "TWAP", "duration_ms": 1000, "slices": 2}, limit="50000")
    for child in (f"{parent}__s1", f"{parent}__s2"):
        await bus.until(lambda c=child: any(r.status is OrderStatus.ACCEPTED for r in bus.reports.get(c, [])),
                        f"{child} resting")
    await bus.until(lambda: any(r.algo and r.algo.slices_sent == 2 for r in bus.reports[parent]), "2 sent")
    return parent


async def test_a_restored_algo_with_resting_children_is_cancelled_whole(system: System, bus: Bus) -> None:
    # Both LIMIT children rest far below the market; execution is killed and restarted; the
    # restored algo still knows them: a cancel of the parent cancels both.
    parent = await twap_resting_two_children(bus, "twap-rest")
    system.kill("execution")
    system.restart("execution")
    await bus.wait_serving()
    await bus.cancel(parent)
    final = await bus.wait_final(parent, timeout=60)
    assert final.status is OrderStatus.CANCELLED and final.reason, final
    assert final.reason.startswith("cancelled by operator; filled 0 of 0.002"), final.reason
    for child in ("twap-rest__s1", "twap-rest__s2"):
        report = await bus.wait_final(child, timeout=10)
        assert report.status is OrderStatus.CANCELLED and report.parent_order_id == parent, report
    stored = await bus.stored()
    assert sorted(children_of(stored, parent)) == ["twap-rest__s1", "twap-rest__s2"]
    assert check_books(stored, parent) == 0


async def test_a_parent_older_than_orders_keeps_is_restored_from_the_snapshot(system: System, bus: Bus) -> None:
    # ORDERS keeps an order 7 days; a parent whose LIMIT children rest may work longer. Its order
    # is kept by the ledger's snapshot: a restart after ORDERS dropped it still restores the
    # algo (before: FAILED restore_failed, its children left working alone).
    parent = await twap_resting_two_children(bus, "twap-old")
    last = (await bus.js.stream_info("EXEC")).state.last_seq
    pattern = re.compile(r"ledger snapshot stored.*exec_sequence=(\d+)")
    await bus.until(lambda: any(int(m.group(1)) >= last for line in system.output("execution")
                                if (m := pattern.search(line))), "a snapshot covering the algo")
    system.kill("execution")
    env = system.env_for("admin")
    admin = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                               inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    js = admin.jetstream()
    config = (await js.stream_info("ORDERS")).config
    kept = (config.max_msgs, config.discard)
    try:
        # As max_age would after 7 days: all but the newest message (a child) gone.
        config.max_msgs, config.discard = 1, DiscardPolicy.OLD
        await js.update_stream(config)
        assert (await js.stream_info("ORDERS")).state.messages == 1
        system.restart("execution")
        await bus.wait_serving()
    finally:
        config.max_msgs, config.discard = kept
        await js.update_stream(config)
        await admin.close()
    assert bus.final(parent) is None, bus.final(parent)
    await bus.cancel(parent)
    final = await bus.wait_final(parent, timeout=60)
    assert final.status is OrderStatus.CANCELLED, final
    for child in ("twap-old__s1", "twap-old__s2"):
        report = await bus.wait_final(child, timeout=10)
        assert report.status is OrderStatus.CANCELLED and report.parent_order_id == parent, report
