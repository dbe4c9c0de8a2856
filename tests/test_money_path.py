"""Fault tests of the money path on the real system: nats-server with the secure config,
the release-built rust-market-data, rust-risk and rust-execution, started by the launcher
on a free port in a temp dir (a fresh system per test). Orders come from the operator
on orders.submit.operator.<symbol> (JetStream ORDERS, Nats-Msg-Id = client_order_id), as an
agent sends them.

- execution SIGKILLed in the middle of a stream of orders and restarted: every stored
  order gets exactly one terminal report, none is filled twice, and risk's positions
  equal the sum of the fills in EXEC;
- risk SIGKILLed and restarted: positions, realized PnL, fees and cash are identical;
- risk down: no order is routed (all REJECTED risk_unavailable, nothing filled);
- kill switch engaged: the very next BUY is REJECTED kill_switch.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from decimal import Decimal

import nats
import pytest

from services.devstack.launcher import System
from services.contract.models import ExecutionReport, OrderStatus, PositionsReply
from services.common.streams import read_stream
from tests.conftest import RISK_UNLIMITED, SystemBus, request_when_answered, system_fixture

pytestmark = pytest.mark.e2e

SYMBOLS = {"BTC-USD": "0.001", "ETH-USD": "0.01", "SOL-USDC": "0.1"}
TERMINAL = {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
            OrderStatus.FAILED}
WAIT = 120.0  # generous: a loaded 2-core machine is allowed, a stuck service is not

ENV = RISK_UNLIMITED | {
    "RUST_LOG": "warn",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    # A killed execution's orders in hand come back after 5 s (> 4 x (1000 + 10) ms, as
    # validated); 10 ms of simulated venue latency per order keeps a stream of orders going
    # long enough to kill it midway; risk gets 1 s, this machine may be busy.
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
    "MOONBUS__EXECUTION__LATENCY_MS": "10",
    "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
}


system = system_fixture(ENV, tail=40)


class Bus(SystemBus):
    """The operator's view: sends orders, sees reports as they are published, reads the
    EXEC stream (the durable record) and risk's positions."""

    tail = 30

    def __init__(self, system: System, nc: nats.NATS) -> None:
        super().__init__(system, nc)
        self.terminal: dict[str, list[ExecutionReport]] = defaultdict(list)
        self.sent = 0

    async def on_report(self, msg: nats.aio.msg.Msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id and report.status in TERMINAL:
            self.terminal[report.client_order_id].append(report)

    async def wait_serving(self) -> None:
        """Risk rebuilt and trading every symbol (fresh prices), execution answering."""
        await self.wait_active(SYMBOLS)
        reply = await request_when_answered(self.nc, "exec.api.version")
        assert json.loads(reply.data)["service"] == "execution"

    async def submit(self, symbol: str, side: str, quantity: str | None = None) -> str:
        """One MARKET order, stored in ORDERS (PubAck awaited); returns its id."""
        self.sent += 1
        order_id = f"mp-{self.sent}"
        body = {"client_order_id": order_id, "agent": "operator", "symbol": symbol, "side": side, "type": "MARKET",
                "quantity": quantity or SYMBOLS[symbol], "origin_ts": 1, "ts": 1}
        await self.js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": order_id})
        return order_id

    async def submit_stream(self, count: int) -> list[str]:
        """`count` orders round-robin over the symbols, two BUYs to a SELL per symbol."""
        ids = []
        for n in range(count):
            symbol = list(SYMBOLS)[n % len(SYMBOLS)]
            side = "SELL" if (n // len(SYMBOLS)) % 3 == 2 else "BUY"
            ids.append(await self.submit(symbol, side))
        return ids

    def done(self, ids: list[str]) -> int:
        return sum(1 for i in ids if self.terminal.get(i))

    async def wait_done(self, ids: list[str]) -> None:
        await self.until(lambda: self.done(ids) == len(ids), f"terminal reports for {len(ids)} orders")

    async def stored_reports(self) -> list[ExecutionReport]:
        """Every report in the EXEC stream, in order."""
        return [ExecutionReport.model_validate_json(stored.data)
                async for stored in read_stream(self.nc, "EXEC", "exec.report.>")]

    async def ready_positions(self) -> PositionsReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (positions := await self.positions()) is None:
            assert loop.time() < deadline, f"risk.api.positions never answered\n{self.system.tail(30)}"
            await asyncio.sleep(0.1)
        return positions

    async def wait_positions_match_fills(self) -> dict[str, Decimal]:
        """Until risk's position and fees per symbol equal the sums of the fills in EXEC
        (the fees too: a quantity can equal the final one before the last fills, BUY BUY
        SELL, while every fill adds a fee)."""
        stored = await self.stored_reports()
        fills, fees = net_fills(stored), fill_fees(stored)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            positions = (await self.ready_positions()).positions
            held = {p.symbol: p.quantity for p in positions}
            paid = {p.symbol: p.fees for p in positions}
            if all(held.get(s, Decimal(0)) == fills.get(s, Decimal(0))
                   and paid.get(s, Decimal(0)) == fees.get(s, Decimal(0)) for s in {*held, *fills}):
                return fills
            assert loop.time() < deadline, f"risk positions {held}, fees {paid} != fills in EXEC {fills}, {fees}"
            await asyncio.sleep(0.1)


bus = Bus.fixture()


def net_fills(reports: list[ExecutionReport]) -> dict[str, Decimal]:
    net: dict[str, Decimal] = defaultdict(Decimal)
    for r in reports:
        if r.last_fill_quantity and r.symbol and r.side:
            net[r.symbol] += r.last_fill_quantity if r.side.value == "BUY" else -r.last_fill_quantity
    return dict(net)


def fill_fees(reports: list[ExecutionReport]) -> dict[str, Decimal]:
    fees: dict[str, Decimal] = defaultdict(Decimal)
    for r in reports:
        if r.last_fill_quantity and r.symbol:
            fees[r.symbol] += r.fee
    return dict(fees)


def by_order(reports: list[ExecutionReport], ids: list[str]) -> dict[str, list[ExecutionReport]]:
    mine: dict[str, list[ExecutionReport]] = {i: [] for i in ids}
    for r in reports:
        if r.client_order_id in mine:
            mine[r.client_order_id].append(r)
    return mine


async def test_execution_killed_mid_stream_loses_and_doubles_nothing(system: System, bus: Bus) -> None:
    ids = await bus.submit_stream(240)
    await bus.until(lambda: bus.done(ids) >= 30, "the first reports")
    system.kill("execution")
    done_at_kill = {i for i in ids if bus.terminal.get(i)}
    assert len(done_at_kill) < len(ids), "killed after the last order: proves nothing"
    ids += await bus.submit_stream(60)  # stored while execution is down, handled after
    system.restart("execution")
    await bus.wait_done(ids)

    stored = await bus.stored_reports()
    for order_id, reports in by_order(stored, ids).items():
        terminal = [r for r in reports if r.status in TERMINAL]
        fills = [r for r in reports if r.last_fill_quantity]
        assert len(terminal) == 1, f"{order_id}: {len(terminal)} terminal reports: {reports}"
        assert len(fills) <= 1, f"{order_id} filled twice: {fills}"
        assert len({r.status for r in reports}) == len(reports), f"{order_id}: a report stored twice: {reports}"
    filled = {i for i, rs in by_order(stored, ids).items() if any(r.status is OrderStatus.FILLED for r in rs)}
    assert filled & done_at_kill, "orders filled before the kill"
    assert filled & set(ids[240:]), "orders filled after the restart"
    await bus.wait_positions_match_fills()


async def test_risk_restarted_has_the_same_positions_and_pnl(system: System, bus: Bus) -> None:
    ids = await bus.submit_stream(45)
    await bus.wait_done(ids)
    await bus.wait_positions_match_fills()
    before = await bus.ready_positions()
    assert any(p.realized_pnl != 0 for p in before.positions), "the SELLs realized some PnL"

    system.kill("risk")
    system.restart("risk")
    after = await bus.ready_positions()

    def books(reply: PositionsReply) -> dict:
        # What risk rebuilds from EXEC; marks (unrealized PnL, equity) are market data.
        return {
            "positions": {p.symbol: (p.quantity, p.avg_price, p.realized_pnl, p.fees) for p in reply.positions},
            "account": (reply.account.cash, reply.account.realized_pnl, reply.account.fees,
                        reply.account.open_positions),
        }

    assert books(after) == books(before)


async def test_without_risk_no_order_is_routed(system: System, bus: Bus) -> None:
    system.kill("risk")
    ids = [await bus.submit(symbol, side) for symbol in SYMBOLS for side in ("BUY", "SELL", "BUY")]
    await bus.wait_done(ids)
    for order_id, reports in by_order(await bus.stored_reports(), ids).items():
        assert [r.status for r in reports] == [OrderStatus.REJECTED], f"{order_id}: {reports}"
        report = reports[0]
        assert report.reason and report.reason.startswith("risk_unavailable: "), report
        assert report.filled_quantity == 0 and report.last_fill_quantity is None
        assert report.timings.risk_checked_ts is None

    system.restart("risk")
    positions = await bus.ready_positions()
    assert all(p.quantity == 0 for p in positions.positions), f"nothing was filled: {positions.positions}"


async def test_kill_switch_refuses_the_next_buy(system: System, bus: Bus) -> None:
    async def killswitch(action: str) -> dict:
        body = {"action": action, "actor": "money-path-test", "reason": "test"}
        reply = await bus.nc.request("risk.api.killswitch.operator", json.dumps(body).encode(), timeout=10)
        return json.loads(reply.data)

    assert (await killswitch("engage"))["engaged"] is True
    refused = await bus.submit("BTC-USD", "BUY")
    await bus.wait_done([refused])
    [report] = bus.terminal[refused]
    assert report.status is OrderStatus.REJECTED
    assert report.reason and report.reason.startswith("kill_switch: "), report

    assert (await killswitch("release"))["engaged"] is False
    allowed = await bus.submit("BTC-USD", "BUY")
    await bus.wait_done([allowed])
    assert [r.status for r in bus.terminal[allowed]] == [OrderStatus.FILLED]
