"""Risk agent: the account rules (a gain never trips the loss rule), the latch, the
closing orders, and the agent in-process against the real nats-server."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal

import nats.errors
import pytest

from services.contract.models import (
    AccountState,
    Action,
    OrderRequest,
    OrderType,
    Position,
    PositionsReply,
    Side,
    Signal,
    TradingState,
    decode,
    encode,
    now_ns,
)
from services.risk_agent import service
from services.risk_agent.config import RiskAgentConfig
from services.common.bus import flush
from services.common.llm import Decision, DecisionRequest, LLMConfig
from services.risk_agent.confirm import ask_hold, hold_threshold
from services.risk_agent.rules import Breach, Closing, Latch, PnLWindow, check_account, close_orders, day_pnl

D = Decimal
CFG = RiskAgentConfig(max_loss_usd=D("300"), max_gain_usd=D("1000"), min_balance_usd=D("100"))


def account(pnl: str = "0", equity: str = "10000", ts: int | None = None) -> AccountState:
    return AccountState(
        state=TradingState.ACTIVE, cash=D(equity), equity=D(equity), peak_equity=D(equity), drawdown_pct=0.0,
        realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(pnl), fees=D(0), gross_exposure=D(0),
        open_positions=0, kill_switch=False, ts=ts or now_ns(),
    )


def position(symbol: str, quantity: str, mark: str | None = "100") -> Position:
    return Position(
        symbol=symbol, quantity=D(quantity), avg_price=D("100"), mark_price=D(mark) if mark else None,
        realized_pnl=D(0), unrealized_pnl=D(0), fees=D(0), notional=abs(D(quantity)) * D("100"),
    )


def rules(acc: AccountState, cfg: RiskAgentConfig = CFG) -> list[str]:
    return [b.rule for b in check_account(acc, day_pnl(acc), cfg)]


# ---------------------------------------------------------------- rules


def test_loss_rule_trips_on_a_loss_only() -> None:
    assert rules(account("-299.99")) == []
    assert rules(account("-300")) == ["max_loss"]
    assert rules(account("-1000000")) == ["max_loss"]
    # A gain must never trip the loss rule, however large.
    assert "max_loss" not in rules(account("300"))
    assert "max_loss" not in rules(account("5000"))


def test_gain_rule_trips_on_a_gain_only() -> None:
    assert rules(account("999.99")) == []
    assert rules(account("1000")) == ["max_gain"]
    assert "max_gain" not in rules(account("-1000"))


def test_min_balance_rule() -> None:
    assert rules(account(equity="100")) == []
    assert rules(account(equity="99.99")) == ["min_balance"]
    assert rules(account("-9950", equity="50")) == ["max_loss", "min_balance"]


def test_breach_reason_has_the_numbers() -> None:
    (breach,) = check_account(account("-412.5"), day_pnl(account("-412.5")), CFG)
    assert breach.reason == "day PnL -412.5 <= -300 (max_loss_usd)"


def test_percent_limits_against_the_equity_at_the_start_of_the_day() -> None:
    cfg = RiskAgentConfig(max_loss_usd=D(0), max_loss_pct=4.0, max_gain_usd=D(0), max_gain_pct=5.0)
    assert rules(account("-399", equity="9601"), cfg) == []  # -399 of 10000 = -3.99%
    (breach,) = check_account(account("-400", equity="9600"), day_pnl(account("-400", equity="9600")), cfg)
    assert breach == Breach("max_loss", "day PnL -4.00% of 10000 <= -4% (max_loss_pct)")
    assert rules(account("500", equity="10500"), cfg) == ["max_gain"]  # +5% of 10000
    assert rules(account("5000", equity="15000"), cfg) == ["max_gain"]  # never the loss rule
    assert rules(account("-400", equity="9600"), CFG) == ["max_loss"]  # 0 % = off, USD still on


def test_sliding_window_pnl() -> None:
    w = PnLWindow(lookback_s=60)
    s = 10**9
    assert w.update(account(equity="10000", ts=100 * s)).amount == 0
    w.update(account(equity="9900", ts=130 * s))
    pnl = w.update(account(equity="9700", ts=159 * s))
    assert (pnl.amount, pnl.start_equity, pnl.period) == (D(-300), D(10000), "last 60s")
    # at 190 s the window starts at 130 s: the reference is the equity seen at 130 s
    pnl = w.update(account(equity="9800", ts=190 * s))
    assert (pnl.amount, pnl.start_equity) == (D(-100), D(9900))
    (breach,) = check_account(account(equity="9650"), w.update(account(equity="9550", ts=200 * s)), CFG)
    assert breach.reason == "PnL over the last 60s -350 <= -300 (max_loss_usd)"


def test_a_flood_of_account_updates_keeps_the_window_bounded() -> None:
    """Every update was kept for the whole window: a stolen risk credential sending the account
    a hundred thousand times a second grew it without end. Now at most PnLWindow.MAX_SAMPLES
    are kept (the latest of each lookback / MAX_SAMPLES), and the PnL is still measured from
    the equity at the window's start, to within that much."""
    w = PnLWindow(lookback_s=60)
    s, step, t0 = 10**9, 10**9 // 1000, 1_000 * 10**9  # 1,000 updates a second for 120 s
    for n in range(120_001):
        pnl = w.update(account(equity=str(10000 - n // 1000), ts=t0 + n * step))
    assert len(w._samples) <= PnLWindow.MAX_SAMPLES + 2, len(w._samples)
    # At 120 s the window starts at 60 s; the update at 60 s exactly shared its 6 ms with later
    # ones, so the reference is the one just before, at 59.999 s (9941; 9940 from 60 s on).
    assert pnl.start_equity == D(9941) and pnl.amount == D(-61), pnl
    assert w.update(account(equity="9800", ts=t0 + 120 * s + 1)).start_equity == D(9941)
    assert w.update(account(equity="9800", ts=t0 + 126 * s)).start_equity == D(9935)


def test_latch_acts_once_per_breach_until_it_clears() -> None:
    latch = Latch()
    loss = Breach("max_loss", "x")
    assert latch.update([loss]) == [loss]
    assert latch.update([loss]) == []  # still breached: no second flatten
    assert latch.update([loss, Breach("min_balance", "y")]) == [Breach("min_balance", "y")]
    assert latch.update([]) == []  # cleared
    assert latch.update([loss]) == [loss]  # breached again: acts again
    latch.release(["max_loss"])  # the action failed: try again next time
    assert latch.update([loss]) == [loss]


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RiskAgentConfig(max_loss_usd=D("-300"))
    with pytest.raises(ValueError, match="decimal string"):
        RiskAgentConfig(max_gain_usd=1000.0)  # money as a float


def test_close_orders_flatten_longs_and_shorts_reduce_only() -> None:
    positions = [position("BTC-USD", "0.01"), position("ETH-USD", "-0.5", mark=None), position("SOL-USDC", "0")]
    out = close_orders(positions, "day PnL -400 <= -300 (max_loss_usd)", "sim", origin_ts=5, ts=6)
    assert [(o.symbol, o.side, o.quantity) for _, o in out] == [
        ("BTC-USD", Side.SELL, D("0.01")),
        ("ETH-USD", Side.BUY, D("0.5")),
    ]
    for signal, order in out:
        assert re.fullmatch(r"rsk-[0-9a-f]{20}", order.client_order_id)
        assert (order.agent, order.type, order.reduce_only, order.origin_ts) == ("risk", OrderType.MARKET, True, 5)
        assert signal.reasoning.startswith("day PnL -400 <= -300 (max_loss_usd); closing")
        assert signal.action is Action(order.side.value) and signal.agent == "risk"
        decode(OrderRequest, encode(order))
    assert out[0][1].decision_price == D("100") and out[1][1].decision_price is None


# ---------------------------------------------------------------- in-process, real nats-server

CONFIG = {"risk_agent": {"max_loss_usd": "300", "max_gain_usd": "1000", "min_balance_usd": "100"}}


async def drain(queue: asyncio.Queue, n: int, timeout: float = 5.0) -> list:
    return [await asyncio.wait_for(queue.get(), timeout) for _ in range(n)]


async def test_breach_flattens_every_position_once(connect, running_service) -> None:
    operator, risk = await connect("operator"), await connect("risk")
    requests: list[dict] = []

    async def positions_api(msg) -> None:  # a fake rust-risk
        requests.append(json.loads(msg.data))
        reply = PositionsReply(
            positions=[position("RSKA-USD", "0.01"), position("RSKB-USD", "-0.5"), position("RSKC-USD", "0")],
            account=account("-400"),
        )
        await msg.respond(encode(reply))

    sub = await risk.subscribe("risk.api.positions", cb=positions_api)
    orders = await operator.collect("orders.submit.>")
    signals = await operator.collect("agent.signal.risk.>")
    try:
        async with running_service("risk-agent", service.main, CONFIG, operator):
            await risk.publish("risk.account", encode(account("-400")))
            got = [decode(OrderRequest, m.data) for m in await drain(orders, 2)]
            sigs = [decode(Signal, m.data) for m in await drain(signals, 2)]

            # The heartbeat repeats the breached state: nothing more happens.
            await risk.publish("risk.account", encode(account("-420")))
            await flush(risk)
            await asyncio.sleep(0.3)
            assert orders.empty() and len(requests) == 1

            # Cleared, then breached again (a gain this time): flattens again.
            await risk.publish("risk.account", encode(account("0")))
            await risk.publish("risk.account", encode(account("1500")))
            again = [decode(OrderRequest, m.data) for m in await drain(orders, 2)]
            await drain(signals, 2)
    finally:
        await sub.unsubscribe()

    assert requests[0] == {}  # all positions
    assert sorted((o.symbol, o.side, o.quantity) for o in got) == [
        ("RSKA-USD", Side.SELL, D("0.01")),
        ("RSKB-USD", Side.BUY, D("0.5")),
    ]
    assert all(o.reduce_only and o.agent == "risk" and o.client_order_id.startswith("rsk-") for o in got)
    assert all(s.reasoning.startswith("day PnL -400 <= -300 (max_loss_usd)") for s in sigs)
    assert {o.client_order_id for o in again}.isdisjoint(o.client_order_id for o in got)


async def test_an_account_dated_far_ahead_does_not_empty_the_window(connect, running_service) -> None:
    """With a lookback window, an account update dated an hour ahead (a standby's skewed clock)
    would have dropped every earlier equity from the window and held later updates out of it:
    it is refused on errors.risk-agent, and a loss after it is still measured from the start."""
    operator, risk = await connect("operator"), await connect("risk")

    async def positions_api(msg) -> None:  # a fake rust-risk
        await msg.respond(encode(PositionsReply(positions=[position("RSKF-USD", "1")], account=account())))

    sub = await risk.subscribe("risk.api.positions", cb=positions_api)
    orders = await operator.collect("orders.submit.>")
    errors = await operator.collect("errors.risk-agent")
    config = {"risk_agent": {"max_loss_usd": "300", "lookback_s": 600}}
    try:
        async with running_service("risk-agent", service.main, config, operator):
            now, minute = now_ns(), 60 * 10**9
            await risk.publish("risk.account", encode(account(equity="10000", ts=now - 15 * minute)))
            await risk.publish("risk.account", encode(account(equity="9700", ts=now - 5 * minute)))
            await risk.publish("risk.account", encode(account(equity="9700", ts=now + 60 * minute)))
            error = json.loads((await drain(errors, 1))[0].data)
            assert error["subject"] == "risk.account" and "ahead of this clock: refused" in error["reason"], error
            # 10 minutes back the equity was 10,000: -350 over the window (not -50 from 9,700).
            await risk.publish("risk.account", encode(account(equity="9650", ts=now)))
            (order,) = [decode(OrderRequest, m.data) for m in await drain(orders, 1)]
    finally:
        await sub.unsubscribe()
    assert (order.symbol, order.side, order.quantity) == ("RSKF-USD", Side.SELL, D("1"))


# ---------------------------------------------------------------- AI confirmation


class FakeProvider:
    name = "fake:m"

    def __init__(self, decision: Decision | None = None, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.decision, self.delay, self.fail = decision, delay, fail
        self.requests: list[DecisionRequest] = []

    async def decide(self, request: DecisionRequest) -> Decision:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        assert self.decision is not None
        return self.decision


def answer(action: str, confidence: float) -> Decision:
    sign = {"BUY": 1.0, "SELL": -1.0}.get(action, 0.0)
    return Decision(action=action, conviction=sign * confidence, confidence=confidence, reasoning="r",
                    model="fake:m", latency_ms=700.0, cost_usd=0.001)


LOSS, GAIN, BALANCE = Breach("max_loss", "loss"), Breach("max_gain", "gain"), Breach("min_balance", "low")


def test_hold_threshold_by_rule() -> None:
    assert hold_threshold([LOSS], CFG) == 0.90 and hold_threshold([GAIN], CFG) == 0.60
    assert hold_threshold([LOSS, BALANCE], CFG) is None  # min_balance is never put to a model
    assert hold_threshold([], CFG) is None


@pytest.mark.parametrize("provider, threshold, hold, why", [
    (FakeProvider(answer("HOLD", 0.90)), 0.90, True, "answered HOLD with confidence 0.90 >= 0.90: position kept"),
    (FakeProvider(answer("HOLD", 0.89)), 0.90, False, "a hold needs HOLD with >= 0.90, closing"),
    (FakeProvider(answer("HOLD", 0.60)), 0.60, True, "position kept"),
    (FakeProvider(answer("SELL", 0.99)), 0.60, False, "answered SELL with confidence 0.99"),
    (FakeProvider(Decision.abstain("fake:m", "unparsable answer")), 0.60, False, "could not answer (unparsable"),
    (FakeProvider(fail=RuntimeError("boom")), 0.60, False, "AI confirmation failed (RuntimeError('boom'))"),
    (FakeProvider(answer("HOLD", 1.0), delay=30), 0.60, False, "no answer within 0.2s"),
])
async def test_ai_confirmation_holds_only_on_a_confident_hold(provider, threshold, hold, why) -> None:
    cfg = RiskAgentConfig(ai_timeout_s=0.2)
    got = await asyncio.wait_for(ask_hold(provider, position("BTC-USD", "0.01"), "day PnL -400 <= -300",
                                          account("-400"), threshold, cfg), 5)
    assert got.hold is hold and why in got.why
    (req,) = provider.requests
    assert (req.agent, req.symbol) == ("risk", "BTC-USD") and "Breached rule: day PnL -400 <= -300" in req.prompt


def test_ai_confirm_needs_a_model() -> None:
    with pytest.raises(ValueError, match="needs an LLM"):
        service.make_provider(RiskAgentConfig(ai_confirm=True), {"llm": {"provider": "offline"}})
    assert service.make_provider(RiskAgentConfig(), {}) is None
    LLMConfig()  # the default [llm] is offline


async def test_breach_with_ai_hold_and_kill_switch(connect, service_bus) -> None:
    """act() on the real bus: positions and the kill switch from a fake rust-risk; the model
    keeps one position (confident HOLD) and not the other, the kill switch is engaged first."""
    operator, risk = await connect("operator"), await connect("risk")
    bus = await service_bus("risk-agent")
    calls: list[str] = []

    async def positions_api(msg) -> None:
        calls.append("positions")
        reply = PositionsReply(positions=[position("RSKH-USD", "0.01"), position("RSKJ-USD", "-0.5")],
                               account=account("-400"))
        await msg.respond(encode(reply))

    async def killswitch_api(msg) -> None:
        calls.append(f"killswitch {json.loads(msg.data)['action']} by {json.loads(msg.data)['actor']}")
        await msg.respond(json.dumps({"engaged": True, "actor": "risk-agent", "reason": "x",
                                      "changed_ts": now_ns()}).encode())

    class PerSymbol(FakeProvider):
        async def decide(self, request: DecisionRequest) -> Decision:
            self.requests.append(request)
            return answer("HOLD", 0.95) if request.symbol == "RSKH-USD" else answer("HOLD", 0.5)

    subs = [await risk.subscribe("risk.api.positions", cb=positions_api),
            await risk.subscribe("risk.api.killswitch.risk-agent", cb=killswitch_api)]
    orders = await operator.collect("orders.submit.>")
    signals = await operator.collect("agent.signal.risk.>")
    cfg = RiskAgentConfig(ai_confirm=True, engage_kill_switch_on_breach=True)
    try:
        ok = await service.act(bus, cfg, PerSymbol(), [Breach("max_loss", "day PnL -400 <= -300 (max_loss_usd)")],
                               account("-400"), Closing())
        got = [decode(Signal, m.data) for m in await drain(signals, 2)]
        (order,) = [decode(OrderRequest, m.data) for m in await drain(orders, 1)]
    finally:
        for sub in subs:
            await sub.unsubscribe()
    assert ok and calls == ["positions", "killswitch engage by risk-agent"]
    held, closed = sorted(got, key=lambda s: s.symbol)
    assert (held.symbol, held.action, held.model, held.cost_usd) == ("RSKH-USD", Action.HOLD, "fake:m", 0.001)
    assert "position kept" in held.reasoning
    assert (closed.symbol, closed.action) == ("RSKJ-USD", Action.BUY) and "closing" in closed.reasoning
    assert (order.symbol, order.side, order.reduce_only, order.quantity) == ("RSKJ-USD", Side.BUY, True, D("0.5"))


async def test_a_lost_ack_is_tried_again_with_the_same_orders(connect, service_bus) -> None:
    """The ack of one closing order is lost (the stream stored it; the agent cannot know): the
    action failed and the next account update acts again. Each position gets the same order
    again, the same client_order_id, which ORDERS keeps once: no second close for risk to
    refuse as over-closing, and no second signal."""
    operator, risk = await connect("operator"), await connect("risk")
    bus = await service_bus("risk-agent")

    async def positions_api(msg) -> None:
        reply = PositionsReply(positions=[position("RSKL-USD", "0.01"), position("RSKM-USD", "-0.5")],
                               account=account("-400"))
        await msg.respond(encode(reply))

    stored = bus.publish_order
    lose = {"RSKL-USD"}

    async def ack_lost_once(subject, order, timeout=2.0, fresh=False):
        ack = await stored(subject, order, timeout=timeout, fresh=fresh)
        if order.symbol in lose:
            lose.discard(order.symbol)
            raise nats.errors.TimeoutError  # stored, but the answer never came
        return ack

    bus.publish_order = ack_lost_once
    sub = await risk.subscribe("risk.api.positions", cb=positions_api)
    orders = await operator.collect("orders.submit.>")
    signals = await operator.collect("agent.signal.risk.>")
    js = operator.jetstream()
    before = (await js.stream_info("ORDERS")).state.messages
    breach, closing, cfg = Breach("max_loss", "day PnL -400 <= -300 (max_loss_usd)"), Closing(), RiskAgentConfig()
    try:
        first = await service.act(bus, cfg, None, [breach], account("-400"), closing)
        second = await service.act(bus, cfg, None, [breach], account("-400"), closing)
        sent = [decode(OrderRequest, m.data) for m in await drain(orders, 4)]
        await drain(signals, 2)
        await asyncio.sleep(0.2)
        stored_orders = (await js.stream_info("ORDERS")).state.messages - before
        quiet = signals.empty()
        # The breach over, the next one closes with new orders.
        closing.clear()
        third = await service.act(bus, cfg, None, [breach], account("-400"), closing)
        fresh = [decode(OrderRequest, m.data).client_order_id for m in await drain(orders, 2)]
    finally:
        await sub.unsubscribe()
    assert (first, second, third) == (False, True, True)
    ids = [o.client_order_id for o in sent]
    assert len(set(ids)) == 2 and sorted(ids[:2]) == sorted(ids[2:]), ids
    assert stored_orders == 2
    assert quiet, "a resent order is not a new decision"
    assert set(fresh).isdisjoint(ids)


async def test_positions_unavailable_is_reported_and_retried(connect, running_service) -> None:
    operator, risk = await connect("operator"), await connect("risk")
    errors = await operator.collect("errors.risk-agent")
    async with running_service("risk-agent", service.main, CONFIG, operator):
        # Nobody serves risk.api.positions: the flatten fails, is reported, and the
        # latch is released so the next account update tries again.
        await risk.publish("risk.account", encode(account("-400")))
        first = await asyncio.wait_for(errors.get(), 5)
        await risk.publish("risk.account", encode(account("-400")))
        second = await asyncio.wait_for(errors.get(), 5)
    for m in (first, second):
        event = json.loads(m.data)
        assert event["service"] == "risk-agent" and "no_responders" in event["reason"]
