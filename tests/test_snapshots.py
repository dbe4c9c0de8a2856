"""State that outlives EXEC retention (issue 11), end to end on the real system: nats-server
with the secure config, the release-built rust-market-data, rust-risk and rust-execution
started by the launcher (a fresh system per test). Risk and execution snapshot their state
to SNAPSHOTS; here EXEC is then shrunk as the `admin` user, as retention would, so the
early reports are gone, and both are SIGKILLed and restarted:

- risk's positions, cash and PnL are what they were; limits changed through the API too;
- a resent old client_order_id is still not executed a second time;
- a resting LIMIT order still rests (it can be cancelled: execution knows it and has it);
- a graceful stop writes both snapshots;
- with no snapshot covering the reports removed, risk fails closed (risk_unavailable, an
  errors.risk event) and execution refuses to start.

Corrupt and partial snapshots (only risk and execution may write them) are covered by
rust-risk/tests/risk.rs.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from services.contract.models import ExecutionReport, OrderStatus, PositionsReply
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

WAIT = 120.0  # generous: a loaded 2-core machine is allowed, a stuck service is not
SYMBOLS = {"BTC-USD": "0.001", "ETH-USD": "0.01", "SOL-USDC": "0.1"}
TERMINAL = {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
            OrderStatus.FAILED}

ENV = {
    # The snapshot lines of risk and execution are what the test waits for.
    "RUST_LOG": "warn,rust_risk::service=info,rust_execution::snapshot=info",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    "MOONBUS__RISK__STARTING_CASH": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"10000000"',
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
    "MOONBUS__RISK__SNAPSHOT_INTERVAL_MS": "300",
    "MOONBUS__EXECUTION__SNAPSHOT_INTERVAL_MS": "300",
}
# No snapshot at all (the timers off, and only SIGKILLs, so no stop writes one).
NO_SNAPSHOTS = {**ENV, "MOONBUS__RISK__SNAPSHOT_INTERVAL_MS": "0", "MOONBUS__RISK__SNAPSHOT_EVERY_REPORTS": "0",
                "MOONBUS__EXECUTION__SNAPSHOT_INTERVAL_MS": "0"}


@pytest.fixture
def start_system(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], System]]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    systems: list[System] = []

    def start(env: dict[str, str]) -> System:
        system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk", "execution"],
                                out=None, env=env)
        systems.append(system)
        return system

    yield start
    for system in systems:
        system.stop()
        print(system.tail(60))  # shown by pytest only when the test failed


class Bus:
    """The operator's view (orders, reports, risk's API) plus an admin connection (the
    only user that may change a stream's limits)."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.reports: dict[str, list[ExecutionReport]] = defaultdict(list)
        self.orders: dict[str, tuple[str, str]] = {}  # client_order_id -> (symbol, side)
        self.errors: list[dict] = []

    async def connect(self) -> None:
        def login(user: str) -> dict:
            env = self.system.env_for(user)
            return dict(servers=[env["NATS_URL"]], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                        inbox_prefix=f"_INBOX.{env['NATS_USER']}")

        self.nc = await nats.connect(**login("operator"))
        self.admin = await nats.connect(**login("admin"))
        self.js = self.nc.jetstream()
        await self.nc.subscribe("exec.report.>", cb=self._on_report)
        await self.nc.subscribe("errors.risk", cb=self._on_error)

    async def close(self) -> None:
        await self.nc.close()
        await self.admin.close()

    async def _on_report(self, msg: nats.aio.msg.Msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id:
            self.reports[report.client_order_id].append(report)

    async def _on_error(self, msg: nats.aio.msg.Msg) -> None:
        self.errors.append(json.loads(msg.data))

    async def until(self, condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{self.system.tail(30)}"
            await asyncio.sleep(0.05)

    def terminal(self, order_id: str) -> list[ExecutionReport]:
        return [r for r in self.reports[order_id] if r.status in TERMINAL]

    async def submit(self, order_id: str, symbol: str, side: str, *, limit: str | None = None,
                     msg_id: str | None = None) -> None:
        self.orders.setdefault(order_id, (symbol, side))
        body = {"client_order_id": order_id, "agent": "operator", "symbol": symbol, "side": side,
                "type": "LIMIT" if limit else "MARKET", "quantity": SYMBOLS[symbol], "origin_ts": 1, "ts": 1}
        if limit:
            body["limit_price"] = limit
        ack = await self.js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                                    headers={"Nats-Msg-Id": msg_id or order_id})
        assert not ack.duplicate, f"{order_id} must be stored in ORDERS to prove anything"

    async def trade(self, prefix: str, count: int) -> list[str]:
        """`count` MARKET orders, two BUYs to a SELL per symbol, until all are terminal."""
        ids = []
        for n in range(count):
            symbol = list(SYMBOLS)[n % len(SYMBOLS)]
            side = "SELL" if (n // len(SYMBOLS)) % 3 == 2 else "BUY"
            ids.append(f"{prefix}-{n}")
            await self.submit(ids[-1], symbol, side)
        await self.until(lambda: all(self.terminal(i) for i in ids), f"terminal reports for {ids}")
        return ids

    async def positions(self) -> dict:
        reply = await self.nc.request("risk.api.positions", b"{}", timeout=5)
        return json.loads(reply.data)

    async def ready_positions(self) -> PositionsReply:
        async def answered() -> PositionsReply | None:
            try:
                reply = await self.nc.request("risk.api.positions", b"{}", timeout=5)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return None
            return None if b'"error"' in reply.data else PositionsReply.model_validate_json(reply.data)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (positions := await answered()) is None:
            assert loop.time() < deadline, f"risk.api.positions never answered\n{self.system.tail(30)}"
            await asyncio.sleep(0.1)
        return positions

    async def booked_positions(self) -> PositionsReply:
        """Risk's positions once it has booked every fill reported so far: a FILLED report
        reaches this test before (or after) it reaches risk's EXEC consumer. Quantities and
        fees: a quantity can equal the final one before the last fills (BUY BUY SELL),
        while every fill adds a fee."""
        held: dict[str, Decimal] = defaultdict(Decimal)
        fees: dict[str, Decimal] = defaultdict(Decimal)
        for order_id, (symbol, side) in self.orders.items():
            for report in self.terminal(order_id)[:1]:
                held[symbol] += report.filled_quantity if side == "BUY" else -report.filled_quantity
                fees[symbol] += report.fee
        want = {symbol: (held[symbol], fees[symbol]) for symbol in held}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            positions = await self.ready_positions()
            booked = {p.symbol: (p.quantity, p.fees) for p in positions.positions}
            if all(booked.get(symbol, (Decimal(0), Decimal(0))) == w for symbol, w in want.items()):
                return positions
            assert loop.time() < deadline, f"risk never booked {want}: {booked}\n{self.system.tail(30)}"
            await asyncio.sleep(0.1)

    async def exec_last_sequence(self) -> int:
        return (await self.js.stream_info("EXEC")).state.last_seq

    async def shrink_exec(self, keep: int) -> None:
        """As retention would: EXEC keeps only its last `keep` reports (-1: no limit)."""
        js = self.admin.jetstream()
        config = (await js.stream_info("EXEC")).config
        config.max_msgs = keep
        await js.update_stream(config)

    async def snapshot_covering(self, service: str, sequence: int) -> None:
        """Until `service` logged a stored snapshot covering EXEC up to `sequence`."""
        pattern = re.compile(r"snapshot stored.*exec_sequence=(\d+)")

        def covered() -> bool:
            return any(int(m.group(1)) >= sequence for line in self.system.output(service)
                       if (m := pattern.search(line)))

        await self.until(covered, f"a {service} snapshot covering EXEC {sequence}")


@pytest.fixture
async def bus_for() -> AsyncIterator[Callable[[System], Bus]]:
    buses: list[Bus] = []

    async def make(system: System) -> Bus:
        bus = Bus(system)
        await bus.connect()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


def books(reply: PositionsReply) -> dict:
    """What risk rebuilds; marks (unrealized PnL, equity) are market data."""
    return {
        "positions": {p.symbol: (p.quantity, p.avg_price, p.realized_pnl, p.fees) for p in reply.positions},
        "account": (reply.account.cash, reply.account.realized_pnl, reply.account.fees, reply.account.open_positions),
    }


async def test_state_outlives_exec_retention(start_system, bus_for) -> None:
    system = start_system(ENV)
    bus = await bus_for(system)
    await bus.ready_positions()
    ids = await bus.trade("early", 9)
    # A BUY far below the market rests (GTC).
    await bus.submit("resting", "BTC-USD", "BUY", limit="1")
    await bus.until(lambda: [r.status for r in bus.reports["resting"]] == [OrderStatus.ACCEPTED], "the LIMIT resting")
    change = {"set": {"max_order_notional": "777"}, "reason": "snapshot test"}
    reply = json.loads((await bus.nc.request("risk.api.limits.operator", json.dumps(change).encode(), timeout=10)).data)
    assert reply["limits"]["max_order_notional"] == "777", reply
    before = await bus.booked_positions()
    assert any(p.quantity != 0 for p in before.positions) and before.account.fees > 0, before
    last = await bus.exec_last_sequence()
    await bus.snapshot_covering("risk", last)
    await bus.snapshot_covering("execution", last)

    # SIGKILL (no snapshot on the way out), then retention removes all but the last report.
    system.kill("risk")
    system.kill("execution")
    await bus.shrink_exec(1)
    assert (await bus.js.stream_info("EXEC")).state.first_seq == last
    system.restart("risk")
    system.restart("execution")
    after = await bus.ready_positions()
    assert books(after) == books(before)
    limits = json.loads((await bus.nc.request("risk.api.limits.operator", b"{}", timeout=10)).data)
    assert limits["limits"]["max_order_notional"] == "777", limits
    await bus.shrink_exec(-1)

    # An early order sent again (a new ORDERS message, the same client_order_id) is not
    # executed again; the fresh order behind it in its symbol's lane is.
    await bus.submit(ids[0], "BTC-USD", "BUY", msg_id=f"{ids[0]}-again")
    await bus.submit("fresh", "BTC-USD", "BUY")
    await bus.until(lambda: bus.terminal("fresh"), "the fresh order")
    assert [r.status for r in bus.terminal("fresh")] == [OrderStatus.FILLED]
    assert len(bus.reports[ids[0]]) == 1, f"{ids[0]} executed again: {bus.reports[ids[0]]}"

    # The resting order is known and on the venue: a cancel takes it off.
    cancel = {"client_order_id": "resting", "agent": "operator", "symbol": "BTC-USD", "ts": 1}
    await bus.js.publish("orders.cancel.operator.BTC-USD", json.dumps(cancel).encode())
    await bus.until(lambda: bus.terminal("resting"), "the cancel")
    assert [r.status for r in bus.terminal("resting")] == [OrderStatus.CANCELLED]

    # And risk booked the fresh fill on top of the restored books.
    fill = bus.terminal("fresh")[0]

    async def booked() -> bool:
        held = {p.symbol: p.quantity for p in (await bus.ready_positions()).positions}
        return held["BTC-USD"] == dict(books(before)["positions"])["BTC-USD"][0] + fill.last_fill_quantity

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await booked():
        assert loop.time() < deadline, "the fresh fill never reached risk's position"
        await asyncio.sleep(0.1)


async def test_a_retention_gap_fails_closed(start_system, bus_for) -> None:
    system = start_system(NO_SNAPSHOTS)
    bus = await bus_for(system)
    await bus.ready_positions()
    await bus.trade("gap", 3)
    system.kill("risk")
    system.kill("execution")
    await bus.shrink_exec(1)
    first = (await bus.js.stream_info("EXEC")).state.first_seq
    assert first > 1

    system.restart("risk")
    await bus.until(lambda: any("cannot rebuild" in e.get("reason", "") for e in bus.errors), "the errors.risk event")
    reply = await bus.positions()
    assert reply["error"]["code"] == "risk_unavailable", reply
    assert f"EXEC starts at sequence {first}" in reply["error"]["message"], reply

    system.restart("execution")
    line = await system.await_output("execution", "execution refuses to start", timeout=WAIT)
    assert f"EXEC starts at sequence {first}" in line, line
    # (A supervisor restarts it, and it refuses again.) Nothing is routed meanwhile: an order
    # waits in ORDERS, no report for it.
    await bus.submit("while-refused", "BTC-USD", "BUY")
    await asyncio.sleep(1.0)
    assert not bus.reports["while-refused"]


async def test_a_graceful_stop_writes_the_snapshots(start_system, bus_for) -> None:
    system = start_system(NO_SNAPSHOTS)  # no timer: only the stop writes one
    bus = await bus_for(system)
    await bus.ready_positions()
    ids = await bus.trade("stop", 6)
    before = await bus.booked_positions()
    last = await bus.exec_last_sequence()
    system.kill("execution", signal.SIGTERM)
    system.kill("risk", signal.SIGTERM)
    await bus.snapshot_covering("execution", last)
    await bus.snapshot_covering("risk", last)
    await bus.shrink_exec(1)
    system.restart("risk")
    system.restart("execution")
    assert books(await bus.ready_positions()) == books(before)
    await bus.shrink_exec(-1)
    await bus.submit(ids[0], "BTC-USD", "BUY", msg_id=f"{ids[0]}-again")
    await bus.submit("after-stop", "BTC-USD", "BUY")
    await bus.until(lambda: bus.terminal("after-stop"), "the order after the restart")
    assert len(bus.reports[ids[0]]) == 1, f"{ids[0]} executed again: {bus.reports[ids[0]]}"
