"""Protections (issue #14 part 3) on the real system: nats-server with the secure config, the
release-built rust-risk and rust-execution (started by the launcher), and ticks this test
publishes as `market-data` at prices it chooses. Entries come from the operator on
orders.submit.operator.<symbol>, with `protection` attached, as an agent sends them.

- a long's stop-loss: entry FILLED -> ARMED -> a tick through the stop -> ONE reduce-only exit
  (child_kind STOP_LOSS, parent_order_id) FILLED -> CLOSED -> flat; the take-profit leg is
  over (OCO: a later tick through it sends nothing);
- a short's take-profit (BUY exit), a long's trailing stop (ratchets up, never back, then
  triggers), the entry's cancel before and after the fill, risk refusing the exit (TRIGGERED
  stays, errors.execution, retried until risk approves), execution SIGKILLed while ARMED and
  the moment it triggers (exactly one exit filled either way);
- NATS permissions: nobody but execution publishes exec.protection.>, writes its KV keys or
  submits as agent `protection`;
- the trading agent's `[trading_agent.protection]`: exact trigger prices, entries only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import nats
import pytest

from services.common.bus import flush
from services.contract import subjects as S
from services.contract.models import (
    ExecutionReport,
    OrderRequest,
    OrderStatus,
    PositionsReply,
    ProtectionState,
    ProtectionStatus,
    Side,
)
from services.devstack.launcher import System
from services.devstack.natsserver import REPO_ROOT
from services.trading_agent.protection import ProtectionConfig, attach, protection_for
from tests.conftest import RISK_UNLIMITED, connect_as, system_fixture

SYMBOL = "BTC-USD"
OTHERS = {"ETH-USD": "2000", "SOL-USDC": "100"}
WAIT = 60.0

ENV = RISK_UNLIMITED | {
    "RUST_LOG": "warn,rust_execution::protect=info",
    # An exit in hand when execution is killed comes back after 5 s (> 4 x (1000 + 0) ms).
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
    "MOONBUS__EXECUTION__RETRY_DELAY_MS": "300",
    "MOONBUS__EXECUTION__RETRY_MAX_DELAY_MS": "600",
}


# ---------------------------------------------------------------- the trading agent (no bus)


def test_agent_protection_prices_are_exact_and_mirrored_for_a_short() -> None:
    cfg = ProtectionConfig(enabled=True, stop_loss_pct=Decimal("2"), take_profit_pct=Decimal("5"),
                           trailing_stop_bps=150)
    long = protection_for(Side.BUY, Decimal("97001.47"), cfg)
    assert long is not None
    assert (long.stop_loss, long.take_profit, long.trailing_stop_bps) == (
        Decimal("95061.4406"), Decimal("101851.5435"), 150)
    short = protection_for(Side.SELL, Decimal("97001.47"), cfg)
    assert short is not None
    assert (short.stop_loss, short.take_profit) == (Decimal("98941.4994"), Decimal("92151.3965"))
    assert protection_for(Side.BUY, Decimal("1"), ProtectionConfig()) is None, "off by default"
    with pytest.raises(ValueError, match="needs stop_loss_pct"):
        ProtectionConfig(enabled=True)


def test_agent_attaches_protection_to_entries_only() -> None:
    cfg = ProtectionConfig(enabled=True, stop_loss_pct=Decimal("1.5"))
    base = dict(client_order_id="trd-1", agent="trading", symbol=SYMBOL, side=Side.BUY,
                quantity=Decimal("0.1"), decision_price=Decimal("100"), origin_ts=1, ts=2)
    entry = attach(OrderRequest(**base), cfg)
    assert entry is not None and entry.protection is not None
    assert entry.protection.stop_loss == Decimal("98.5")
    # On the wire, and read back by the contract (a reduce_only one would be refused).
    assert OrderRequest.model_validate_json(entry.model_dump_json(exclude_none=True)) == entry
    reducing = attach(OrderRequest(**{**base, "side": Side.SELL, "reduce_only": True}), cfg)
    assert reducing is not None and reducing.protection is None
    assert attach(None, cfg) is None


def test_the_contract_refuses_a_protection_on_a_reduce_only_order() -> None:
    body = dict(client_order_id="x-1", agent="operator", symbol=SYMBOL, side="SELL", quantity="1",
                reduce_only=True, protection={"stop_loss": "110"}, origin_ts=1, ts=1)
    with pytest.raises(ValueError, match="reduce_only order takes no protection"):
        OrderRequest.model_validate_json(json.dumps(body))
    body = dict(client_order_id="x-1", agent="operator", symbol=SYMBOL, side="BUY", quantity="1",
                protection={"stop_loss": "110", "take_profit": "100"}, origin_ts=1, ts=1)
    with pytest.raises(ValueError, match="stop_loss below take_profit"):
        OrderRequest.model_validate_json(json.dumps(body))


# ---------------------------------------------------------------- the backtester (moonbus_sim)

SIM_SCRIPT = r"""
import json, sys
import moonbus_sim
T0, S = 1_764_000_000_000_000_000, 1_000_000_000
sim = moonbus_sim.Simulator(open(sys.argv[1]).read(), [("MOONBUS__EXECUTION__VENUES", '["backtest"]'),
                                                      ("MOONBUS__SYSTEM__SYMBOLS", '["BTC-USD"]'),
                                                      ("MOONBUS__RISK__CIRCUIT_BREAKER_PCT", "0")])
def order(oid, side, protection):
    return json.dumps({"client_order_id": oid, "agent": "trading", "symbol": "BTC-USD", "venue": "backtest",
                       "side": side, "quantity": "0.5", "protection": protection, "ts": 1, "origin_ts": 1}).encode()
steps, t = [], T0
def tick(price):
    global t
    t += S
    steps.append(["tick", price, [json.loads(r) for r in sim.tick("backtest", "BTC-USD", price, t)]])
tick("100")
steps.append(["submit", "long", [json.loads(r) for r in sim.submit(order("bt-long", "BUY",
                                                           {"stop_loss": "95", "take_profit": "110"}))]])
for price in ("96", "94", "90", "111"):
    tick(price)
steps.append(["submit", "short", [json.loads(r) for r in sim.submit(order("bt-short", "SELL",
                                                            {"trailing_stop_bps": 1000}))]])
for price in ("100", "80", "87", "88.5", "70"):
    tick(price)
print(json.dumps({"steps": steps, "account": json.loads(sim.account())}))
"""


def test_the_backtester_runs_the_same_protections(tmp_path) -> None:
    import shutil
    import subprocess
    import sys

    built = REPO_ROOT / "target" / "release" / "libmoonbus_sim.so"
    if not built.exists():
        pytest.fail("target/release/libmoonbus_sim.so missing: cargo build --release -p rust-backtest")
    shutil.copyfile(built, tmp_path / "moonbus_sim.abi3.so")  # this tree's build, not the venv's
    done = subprocess.run([sys.executable, "-c", SIM_SCRIPT, str(REPO_ROOT / "moonbus.toml")],
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    steps = {(kind, what): reports for kind, what, reports in out["steps"]}
    assert [r["status"] for r in steps[("submit", "long")]] == ["FILLED"]
    assert steps[("tick", "96")] == []
    [exit_] = steps[("tick", "94")]
    assert (exit_["status"], exit_["side"], exit_["child_kind"], exit_["parent_order_id"], exit_["client_order_id"],
            exit_["filled_quantity"], exit_["agent"]) == (
        "FILLED", "SELL", "STOP_LOSS", "bt-long", "bt-long-x1", "0.5", "protection")
    assert steps[("tick", "90")] == [] and steps[("tick", "111")] == [], "one exit; the take-profit is over (OCO)"
    # The short's trailing stop: 10 % above the fill, down to 88 at 80, not back up at 87; 88.5 crosses.
    assert [r["status"] for r in steps[("submit", "short")]] == ["FILLED"], [r.get("reason") for r in steps[("submit", "short")]]
    assert steps[("tick", "80")] == [] and steps[("tick", "87")] == []
    [cover] = steps[("tick", "88.5")]
    assert (cover["side"], cover["child_kind"], cover["client_order_id"]) == ("BUY", "TRAILING_STOP", "bt-short-x1")
    assert steps[("tick", "70")] == []
    assert out["account"]["open_positions"] == 0


BACKTEST_SCRIPT = r"""
import json
from tests.test_backtest_engine import wave, crossover
from services.backtest import engine
base = crossover()
plain = engine.run([wave("BTC-USD")], **base)
params = base["params"] | {"protection": {"enabled": True, "take_profit_pct": "1"}}
protected = engine.run([wave("BTC-USD")], **{**base, "params": params})
exits = lambda r: [f for f in r.fills if f.client_order_id.endswith("-x1")]
print(json.dumps({"plain": len(exits(plain)), "exits": len(exits(protected)),
                  "reduce_only": all(f.reduce_only for f in exits(protected)),
                  "rejections": [r.reason for r in protected.rejections]}))
"""


def test_a_backtest_with_trading_agent_protection_takes_profit(tmp_path) -> None:
    """The trading agent's [trading_agent.protection] in a backtest (services/backtest/engine.py
    over this tree's moonbus_sim): a 1 % take-profit on every entry closes positions the
    crossover alone would hold; the exits count as reduce-only."""
    import shutil
    import subprocess
    import sys

    built = REPO_ROOT / "target" / "release" / "libmoonbus_sim.so"
    if not built.exists():
        pytest.fail("target/release/libmoonbus_sim.so missing: cargo build --release -p rust-backtest")
    shutil.copyfile(built, tmp_path / "moonbus_sim.abi3.so")
    done = subprocess.run([sys.executable, "-c", BACKTEST_SCRIPT], cwd=REPO_ROOT,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["plain"] == 0 and out["exits"] > 0 and out["reduce_only"], out
    assert out["rejections"] == [], out


# ---------------------------------------------------------------- permissions (nats_server only)


async def test_nobody_but_execution_publishes_protections_or_their_exits(connect) -> None:
    state = ProtectionState(parent_order_id="p-1", agent="trading", symbol=SYMBOL, venue="sim", side=Side.SELL,
                            quantity=Decimal("1"), stop_loss=Decimal("1"), state=ProtectionStatus.CANCELLED, ts=1)
    for user in ("trading-agent", "risk", "gateway", "operator"):
        nc = await connect(user)
        await nc.publish(f"exec.protection.{SYMBOL}", state.model_dump_json(exclude_none=True).encode())
        await nc.publish(S.kv_protection("p-1"), b"{}")
        await nc.publish("$KV.moonbus.exec.protection.p-1", b"{}")
        await nc.publish(f"orders.submit.protection.{SYMBOL}", b"{}")
        await flush(nc)
        for subject in (f"exec.protection.{SYMBOL}", S.kv_protection("p-1").lower(), "$kv.moonbus.exec.protection.p-1",
                        f"orders.submit.protection.{SYMBOL}"):
            await nc.wait_for_permission_error(subject)
    # Execution's own keys are a bucket of their own: the shared bucket, where risk keeps its
    # kill switch, is not execution's to fill, not even under the keys it wrote there before.
    nc = await connect("execution")
    await nc.publish("$KV.moonbus.exec.protection.p-1", b"{}")
    await flush(nc)
    await nc.wait_for_permission_error("$kv.moonbus.exec.protection.p-1")
    # The subscribers the catalogue names may listen.
    for user in ("trading-agent", "gateway", "notifier", "risk-agent"):
        nc = await connect(user)
        await nc.subscribe("exec.protection.>")
        await flush(nc)
        await asyncio.sleep(0.05)
        assert not nc.permission_errors(), (user, nc.permission_errors())


# ---------------------------------------------------------------- the running system


system = system_fixture(ENV, services=("risk", "execution"), scope="module")


class Desk:
    """The operator's view plus a price feed: sends orders and cancels, sets the price of
    SYMBOL (published as `market-data` every 50 ms), sees reports, protection states and
    errors as they are published."""

    def __init__(self, system: System, nc: nats.NATS, md: nats.NATS) -> None:
        self.system, self.nc, self.md = system, nc, md
        self.js = nc.jetstream()
        self.price = Decimal("100")
        self.seq = itertools.count(int(time.time() * 1000))
        self.reports: list[ExecutionReport] = []
        self.states: list[ProtectionState] = []
        self.errors: list[dict] = []
        self.ids = itertools.count(1)
        self.run = f"{int(time.time() * 1000) % 10_000_000}"
        self.kill_on_trigger: str | None = None

    async def start(self) -> None:
        async def on_report(msg) -> None:
            self.reports.append(ExecutionReport.model_validate_json(msg.data))

        async def on_state(msg) -> None:
            state = ProtectionState.model_validate_json(msg.data)
            self.states.append(state)
            if state.state.value == "TRIGGERED" and state.parent_order_id == self.kill_on_trigger:
                self.kill_on_trigger = None
                self.system.kill("execution")  # at once: the exit is being sent right now

        async def on_error(msg) -> None:
            self.errors.append(json.loads(msg.data))

        await self.nc.subscribe("exec.report.>", cb=on_report)
        await self.nc.subscribe("exec.protection.>", cb=on_state)
        await self.nc.subscribe("errors.execution", cb=on_error)
        self.feed = asyncio.create_task(self._feed())

    async def _feed(self) -> None:
        while True:
            for symbol, price in [(SYMBOL, str(self.price)), *OTHERS.items()]:
                tick = {"venue": "sim", "symbol": symbol, "price": price, "seq": next(self.seq), "ts": time.time_ns()}
                await self.md.publish(f"md.tick.sim.{symbol}", json.dumps(tick).encode())
            await asyncio.sleep(0.05)

    async def set_price(self, price: str) -> None:
        self.price = Decimal(price)
        await asyncio.sleep(0.15)  # a few ticks at that price

    async def until(self, condition, what: str, timeout: float = WAIT):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = condition()
            if found:
                return found
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{self.system.tail(40)}"
            await asyncio.sleep(0.05)

    def new_id(self, tag: str) -> str:
        return f"pt{self.run}-{tag}-{next(self.ids)}"

    async def submit(self, side: str, quantity: str, protection: dict | None = None, tag: str = "e",
                     **extra) -> str:
        order_id = self.new_id(tag)
        body = {"client_order_id": order_id, "agent": "operator", "symbol": SYMBOL, "side": side,
                "quantity": quantity, "origin_ts": 1, "ts": 1, **extra}
        if protection is not None:
            body["protection"] = protection
        await self.js.publish(f"orders.submit.operator.{SYMBOL}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": order_id})
        return order_id

    async def cancel(self, order_id: str) -> None:
        body = {"client_order_id": order_id, "agent": "operator", "symbol": SYMBOL, "ts": 1}
        await self.js.publish(f"orders.cancel.operator.{SYMBOL}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": f"cancel-{order_id}"})

    def report(self, order_id: str, status: OrderStatus) -> ExecutionReport | None:
        return next((r for r in self.reports if r.client_order_id == order_id and r.status is status), None)

    async def wait_report(self, order_id: str, status: OrderStatus) -> ExecutionReport:
        return await self.until(lambda: self.report(order_id, status), f"{order_id} {status.value}")

    def state(self, parent: str, state: str) -> ProtectionState | None:
        return next((s for s in self.states if s.parent_order_id == parent and s.state.value == state), None)

    async def wait_state(self, parent: str, state: str) -> ProtectionState:
        return await self.until(lambda: self.state(parent, state), f"protection of {parent} {state}")

    def exits(self, parent: str) -> list[ExecutionReport]:
        return [r for r in self.reports if r.parent_order_id == parent]

    async def position(self) -> Decimal:
        reply = await self.nc.request("risk.api.positions", b"{}", timeout=10)
        positions = PositionsReply.model_validate_json(reply.data)
        return next((p.quantity for p in positions.positions if p.symbol == SYMBOL), Decimal(0))

    async def wait_position(self, quantity: str) -> None:
        want = Decimal(quantity)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (got := await self.position()) != want:
            assert loop.time() < deadline, f"position {got}, expected {want}"
            await asyncio.sleep(0.1)

    async def wait_ready(self) -> None:
        """Execution answering, and an order round trip through risk filled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            try:
                reply = await self.nc.request("exec.api.version", b"{}", timeout=5)
                if json.loads(reply.data).get("service") == "execution":
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            assert loop.time() < deadline, self.system.tail(40)
            await asyncio.sleep(0.2)
        # A plain round trip: an order fills, then flat again.
        buy = await self.submit("BUY", "0.001", tag="warm")
        await self.until(lambda: self.report(buy, OrderStatus.FILLED) or self.report(buy, OrderStatus.REJECTED),
                         "the warm-up order's outcome")
        if self.report(buy, OrderStatus.FILLED) is None:  # risk not ready yet (no marks)
            assert loop.time() < deadline, self.system.tail(40)
            await asyncio.sleep(0.5)
            return await self.wait_ready()
        sell = await self.submit("SELL", "0.001", tag="warm")
        await self.wait_report(sell, OrderStatus.FILLED)
        await self.wait_position("0")


@pytest.fixture
async def desk(system: System) -> AsyncIterator[Desk]:
    nc, md = await connect_as(system, "operator"), await connect_as(system, "market-data")
    desk = Desk(system, nc, md)
    await desk.start()
    try:
        await desk.set_price("100")
        await desk.wait_ready()
        yield desk
    finally:
        desk.feed.cancel()
        await nc.close()
        await md.close()


def assert_one_exit(desk: Desk, parent: str, kind: str, side: str) -> ExecutionReport:
    filled = [r for r in desk.exits(parent) if r.status is OrderStatus.FILLED]
    assert len(filled) == 1, [(r.client_order_id, r.status.value) for r in desk.exits(parent)]
    exit_ = filled[0]
    assert exit_.child_kind is not None and exit_.child_kind.value == kind
    assert exit_.side is not None and exit_.side.value == side
    assert exit_.agent == "protection"
    return exit_


async def test_long_stop_loss_one_reduce_only_exit_then_flat_and_the_take_profit_is_over(desk: Desk) -> None:
    entry = await desk.submit("BUY", "0.5", {"stop_loss": "95", "take_profit": "110"})
    await desk.wait_report(entry, OrderStatus.FILLED)
    armed = await desk.wait_state(entry, "ARMED")
    assert (armed.side, armed.quantity, armed.stop_loss, armed.take_profit) == (
        Side.SELL, Decimal("0.5"), Decimal("95"), Decimal("110"))
    await desk.wait_position("0.5")
    await desk.set_price("96")
    assert desk.state(entry, "TRIGGERED") is None, "96 is above the stop"
    await desk.set_price("94.5")
    triggered = await desk.wait_state(entry, "TRIGGERED")
    assert triggered.exit_order_id == f"{entry}-x1"
    closed = await desk.wait_state(entry, "CLOSED")
    assert closed.quantity == 0
    exit_ = assert_one_exit(desk, entry, "STOP_LOSS", "SELL")
    assert exit_.client_order_id == f"{entry}-x1" and exit_.filled_quantity == Decimal("0.5")
    # origin_ts = the crossing tick's ts: the exit's tick-to-fill latency (-s shows it)
    assert exit_.timings.origin_ts and exit_.timings.filled_ts
    print(f"tick crossing the stop -> exit filled: {(exit_.timings.filled_ts - exit_.timings.origin_ts) / 1e6:.2f} ms")
    await desk.wait_position("0")
    # OCO: the take-profit leg is over.
    await desk.set_price("111")
    await asyncio.sleep(0.5)
    assert len(desk.exits(entry)) == 1
    await desk.wait_position("0")


async def test_an_engaged_kill_switch_cancels_armed_protections(desk: Desk) -> None:
    async def killswitch(action: str) -> dict:
        body = {"action": action, "actor": "protection-test", "reason": "test"}
        reply = await desk.nc.request("risk.api.killswitch.operator", json.dumps(body).encode(), timeout=10)
        return json.loads(reply.data)

    entry = await desk.submit("BUY", "0.1", {"stop_loss": "95"})
    await desk.wait_state(entry, "ARMED")
    try:
        assert (await killswitch("engage"))["engaged"] is True
        cancelled = await desk.wait_state(entry, "CANCELLED")
        assert cancelled.reason and cancelled.reason.startswith("kill_switch: "), cancelled
        await desk.set_price("90")
        await asyncio.sleep(0.5)
        assert desk.exits(entry) == [], "no exit races the flatten"
    finally:
        assert (await killswitch("release"))["engaged"] is False
    await desk.set_price("100")
    close = await desk.submit("SELL", "0.1", tag="close")
    await desk.wait_report(close, OrderStatus.FILLED)
    await desk.wait_position("0")


async def test_short_take_profit_buys_back(desk: Desk) -> None:
    entry = await desk.submit("SELL", "0.3", {"stop_loss": "105", "take_profit": "90"})
    await desk.wait_report(entry, OrderStatus.FILLED)
    armed = await desk.wait_state(entry, "ARMED")
    assert armed.side is Side.BUY and armed.quantity == Decimal("0.3")
    await desk.wait_position("-0.3")
    await desk.set_price("91")
    await desk.set_price("89.99")
    await desk.wait_state(entry, "CLOSED")
    assert_one_exit(desk, entry, "TAKE_PROFIT", "BUY")
    await desk.wait_position("0")


async def test_trailing_stop_ratchets_up_never_back_then_triggers(desk: Desk) -> None:
    entry = await desk.submit("BUY", "0.2", {"trailing_stop_bps": 1000})
    filled = await desk.wait_report(entry, OrderStatus.FILLED)
    armed = await desk.wait_state(entry, "ARMED")
    assert filled.avg_fill_price is not None
    assert armed.trailing_trigger == filled.avg_fill_price * Decimal("0.9")
    await desk.set_price("120")
    await desk.until(lambda: any(s.parent_order_id == entry and s.trailing_trigger == Decimal("108")
                                 for s in desk.states), "the trailing trigger at 108", timeout=10)
    await desk.set_price("112")
    await asyncio.sleep(1.5)  # a ratchet would be told within a second
    triggers = [s.trailing_trigger for s in desk.states if s.parent_order_id == entry and s.trailing_trigger]
    assert max(triggers) == Decimal("108") and triggers[-1] == Decimal("108"), triggers
    assert desk.state(entry, "TRIGGERED") is None
    await desk.set_price("107.5")
    await desk.wait_state(entry, "CLOSED")
    assert_one_exit(desk, entry, "TRAILING_STOP", "SELL")
    await desk.wait_position("0")


async def test_cancel_before_the_fill_and_after_it(desk: Desk) -> None:
    resting = await desk.submit("BUY", "0.1", {"stop_loss": "40"}, type="LIMIT", limit_price="50")
    await desk.wait_report(resting, OrderStatus.ACCEPTED)
    await desk.cancel(resting)
    await desk.wait_report(resting, OrderStatus.CANCELLED)
    cancelled = await desk.wait_state(resting, "CANCELLED")
    assert cancelled.reason == "cancelled by operator" and cancelled.quantity == 0
    assert desk.state(resting, "ARMED") is None, "never armed: it never filled"

    entry = await desk.submit("BUY", "0.1", {"stop_loss": "95"})
    await desk.wait_state(entry, "ARMED")
    await desk.cancel(entry)
    cancelled = await desk.wait_state(entry, "CANCELLED")
    assert cancelled.quantity == Decimal("0.1")
    await desk.set_price("90")
    await asyncio.sleep(0.8)
    assert desk.exits(entry) == [], "a cancelled protection sends nothing"
    assert not [e for e in desk.errors if entry in e.get("reason", "")], desk.errors
    await desk.wait_position("0.1")
    close = await desk.submit("SELL", "0.1", tag="close")
    await desk.wait_report(close, OrderStatus.FILLED)
    await desk.wait_position("0")


async def test_a_protection_on_a_reduce_only_order_is_refused(desk: Desk) -> None:
    order = await desk.submit("SELL", "0.1", {"stop_loss": "110"}, reduce_only=True)
    rejected = await desk.wait_report(order, OrderStatus.REJECTED)
    assert rejected.reason and "reduce_only order takes no protection" in rejected.reason


async def test_an_exit_risk_refuses_stays_triggered_and_is_tried_again(desk: Desk) -> None:
    entry = await desk.submit("BUY", "0.4", {"stop_loss": "95"})
    await desk.wait_state(entry, "ARMED")
    await desk.wait_position("0.4")  # booked by risk, so that "0" below is after the close
    # The position is closed by hand: the stop's reduce-only exit would flip it.
    close = await desk.submit("SELL", "0.4", tag="close")
    await desk.wait_report(close, OrderStatus.FILLED)
    await desk.wait_position("0")
    await desk.set_price("94")
    refused = await desk.wait_report(f"{entry}-x1", OrderStatus.REJECTED)
    assert refused.reason and refused.reason.startswith("reduce_only_increases"), refused.reason
    assert refused.parent_order_id == entry and refused.child_kind is not None
    await desk.until(lambda: [e for e in desk.errors if f"{entry}-x1" in e["reason"]], "the refusal on errors.execution")
    await asyncio.sleep(0.3)
    assert desk.state(entry, "CLOSED") is None
    assert desk.states[-1].state.value == "TRIGGERED" or any(
        s.parent_order_id == entry and s.state.value == "TRIGGERED" for s in desk.states)
    # Tried again (and refused again) while flat...
    await desk.wait_report(f"{entry}-x2", OrderStatus.REJECTED)
    # ... and once there is a position again, the next attempt goes through.
    reopen = await desk.submit("BUY", "0.4", tag="reopen")
    await desk.wait_report(reopen, OrderStatus.FILLED)
    closed = await desk.wait_state(entry, "CLOSED")
    assert closed.quantity == 0
    filled = [r for r in desk.exits(entry) if r.status is OrderStatus.FILLED]
    assert len(filled) == 1 and filled[0].filled_quantity == Decimal("0.4")
    await desk.wait_position("0")


async def test_execution_killed_while_armed_restores_it_and_exits_once(desk: Desk) -> None:
    entry = await desk.submit("BUY", "0.25", {"stop_loss": "95", "take_profit": "130"})
    await desk.wait_state(entry, "ARMED")
    desk.system.kill("execution")
    await desk.set_price("94")  # while execution is down
    desk.system.restart("execution")
    await desk.wait_state(entry, "CLOSED")
    assert_one_exit(desk, entry, "STOP_LOSS", "SELL")
    await desk.wait_position("0")
    await asyncio.sleep(1.0)
    assert len([r for r in desk.exits(entry) if r.status is OrderStatus.FILLED]) == 1


async def test_execution_killed_as_it_triggers_exits_exactly_once(desk: Desk) -> None:
    entry = await desk.submit("SELL", "0.15", {"stop_loss": "105"})
    await desk.wait_state(entry, "ARMED")
    await desk.wait_position("-0.15")
    await desk.set_price("104")
    desk.kill_on_trigger = entry
    desk.price = Decimal("106")
    await desk.until(lambda: desk.state(entry, "TRIGGERED"), "TRIGGERED", timeout=10)
    await desk.until(lambda: not desk.system.running("execution"), "execution killed")
    desk.system.restart("execution")
    await desk.wait_state(entry, "CLOSED")
    assert_one_exit(desk, entry, "STOP_LOSS", "BUY")
    await desk.wait_position("0")
    await asyncio.sleep(1.0)
    stored = [r for r in desk.exits(entry) if r.status is OrderStatus.FILLED]
    assert len(stored) == 1
    await desk.set_price("100")



async def test_a_cancel_is_done_only_once_its_protection_is_stored(desk: Desk) -> None:
    """A cancel of an armed protection whose CANCELLED state KV refuses to store is not acked:
    acked, a restart would read the protection ARMED from KV and fire the exit the operator had
    cancelled. It comes back, to the restarted execution here, and is done once KV stores again."""
    entry = await desk.submit("BUY", "0.1", {"stop_loss": "95"})
    await desk.wait_state(entry, "ARMED")
    await desk.wait_position("0.1")
    admin = await connect_as(desk.system, "admin")
    js = admin.jetstream()
    config = (await js.stream_info("KV_protections")).config
    kept = config.max_msg_size
    config.max_msg_size = 16  # smaller than any protection record: every write refused
    await js.update_stream(config)
    try:
        await desk.cancel(entry)
        await desk.until(lambda: [e for e in desk.errors if f"protection of {entry} not stored" in e.get("reason", "")],
                         "the refused write reported")
        desk.system.kill("execution")
    finally:
        config.max_msg_size = kept
        await js.update_stream(config)
        await admin.close()
    desk.system.restart("execution")
    cancelled = await desk.wait_state(entry, "CANCELLED")
    assert cancelled.reason == "cancelled by operator", cancelled
    await desk.set_price("90")
    await asyncio.sleep(1.0)
    assert desk.exits(entry) == [], "the cancelled protection sent an exit"
    close = await desk.submit("SELL", "0.1", tag="close")
    await desk.wait_report(close, OrderStatus.FILLED)
    await desk.wait_position("0")
