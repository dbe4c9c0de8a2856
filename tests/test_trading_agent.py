"""Trading agent: momentum strategy, sizing (exact Decimals), fail-closed gating, and
the agent in-process against the real nats-server (ticks in, Signal + order out)."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import nats.errors
import pytest

from services.common.models import (
    AccountState,
    Action,
    OrderRequest,
    Side,
    Signal,
    Tick,
    TradingState,
    Verdict,
    decode,
    encode,
    now_ns,
)
from services.common.streams import MSG_ID_HEADER, ORDERS
from services.trading_agent import service
from services.trading_agent.agent import TradingAgent
from services.trading_agent.config import TradingConfig
from services.trading_agent.sizing import buy_quantity, round_down, sell_quantity
from services.trading_agent.strategy import MomentumStrategy

D = Decimal


def tick(symbol: str, price: str, seq: int = 0) -> Tick:
    return Tick(venue="sim", symbol=symbol, price=D(price), seq=seq, ts=now_ns())


def verdict(symbol: str, state: TradingState = TradingState.ACTIVE, position: str = "0") -> Verdict:
    return Verdict(symbol=symbol, state=state, position=D(position), ts=now_ns())


def account(equity: str = "10000", state: TradingState = TradingState.ACTIVE) -> AccountState:
    return AccountState(
        state=state, cash=D(equity), equity=D(equity), peak_equity=D(equity), drawdown_pct=0.0,
        realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(0), fees=D(0), gross_exposure=D(0),
        open_positions=0, kill_switch=False, ts=now_ns(),
    )


# ---------------------------------------------------------------- strategy


def test_momentum_waits_for_a_full_window() -> None:
    s = MomentumStrategy(lookback_ticks=3, threshold_pct=1.0)
    assert s.on_tick(tick("BTC-USD", "100")) is None
    assert s.on_tick(tick("BTC-USD", "105")) is None  # only 2 of 3 prices


def test_momentum_buy_sell_and_nothing() -> None:
    s = MomentumStrategy(lookback_ticks=3, threshold_pct=1.0)
    for p in ("100", "100.5", "101"):  # +1% exactly: BUY at the threshold, confidence 0.5
        d = s.on_tick(tick("BTC-USD", p))
    assert d is not None and d.action is Action.BUY and d.confidence == 0.5
    assert "+1.0000%" in d.reasoning and "100 -> 101" in d.reasoning

    s = MomentumStrategy(lookback_ticks=3, threshold_pct=1.0)
    for p in ("100", "99", "98"):  # -2%: SELL, confidence 1.0
        d = s.on_tick(tick("ETH-USD", p))
    assert d is not None and d.action is Action.SELL and d.confidence == 1.0

    s = MomentumStrategy(lookback_ticks=3, threshold_pct=1.0)
    for p in ("100", "100.5", "100.99"):
        d = s.on_tick(tick("SOL-USDC", p))
    assert d is None


def test_momentum_windows_are_per_symbol_and_slide() -> None:
    s = MomentumStrategy(lookback_ticks=2, threshold_pct=1.0)
    s.on_tick(tick("BTC-USD", "100"))
    assert s.on_tick(tick("ETH-USD", "200")) is None  # other symbol, own window
    assert s.on_tick(tick("BTC-USD", "101")).action is Action.BUY
    assert s.on_tick(tick("BTC-USD", "101")) is None  # window is now 101, 101


# ---------------------------------------------------------------- sizing


def test_buy_quantity_is_order_usd_over_price_rounded_down() -> None:
    assert buy_quantity(D("97000"), D(0), D("10000"), D("100"), 30.0) == D("0.001030")
    assert buy_quantity(D("150"), D(0), D("10000"), D("100"), 30.0) == D("0.666666")


def test_buy_quantity_capped_by_position_share_of_equity() -> None:
    # cap 3000; holding 0.03 * 97000 = 2910 -> room 90 -> 0.000927835... -> 0.000927
    assert buy_quantity(D("97000"), D("0.03"), D("10000"), D("100"), 30.0) == D("0.000927")
    assert buy_quantity(D("97000"), D("0.031"), D("10000"), D("100"), 30.0) == D(0)  # over the cap
    assert buy_quantity(D("97000"), D(0), D(0), D("100"), 30.0) == D(0)  # no equity
    assert buy_quantity(D("97000"), D(0), D("10000"), D("100"), 0.0001) == D(0)  # rounds to zero


def test_sell_quantity_only_reduces_a_long() -> None:
    assert sell_quantity(D("97000"), D("0.01"), D("100")) == D("0.001030")
    assert sell_quantity(D("97000"), D("0.0005"), D("100")) == D("0.0005")
    assert sell_quantity(D("97000"), D("0.00000049"), D("100")) == D(0)  # dust rounds to zero
    assert sell_quantity(D("97000"), D(0), D("100")) == D(0)
    assert sell_quantity(D("97000"), D("-1"), D("100")) == D(0)  # never deepen a short


def test_round_down_never_rounds_up() -> None:
    assert round_down(D("0.0000019999")) == D("0.000001")
    assert round_down(D("-1")) == D(0)


# ---------------------------------------------------------------- agent gating


def make_agent(**overrides: object) -> TradingAgent:
    cfg = TradingConfig(lookback_ticks=2, threshold_pct=1.0, order_usd=D("100"), cooldown_s=10.0,
                        **overrides)
    return TradingAgent(cfg)


def rise(agent: TradingAgent, symbol: str, now: float, start: str = "100", end: str = "102"):
    agent.on_tick(tick(symbol, start), now)
    return agent.on_tick(tick(symbol, end), now)


def test_no_verdict_no_order() -> None:
    agent = make_agent()
    agent.on_account(account())
    assert rise(agent, "BTC-USD", 0.0) is None


def test_buy_needs_active_verdict_and_active_account() -> None:
    agent = make_agent()
    agent.on_verdict(verdict("BTC-USD"))
    assert rise(agent, "BTC-USD", 0.0) is None  # no account yet: equity unknown
    agent.on_account(account(state=TradingState.REDUCE_ONLY))
    assert rise(agent, "BTC-USD", 0.0) is None
    for state in (TradingState.REDUCE_ONLY, TradingState.HALTED):
        agent.on_account(account())
        agent.on_verdict(verdict("BTC-USD", state))
        assert rise(agent, "BTC-USD", 0.0) is None


def test_buy_proposal_fields() -> None:
    agent = make_agent()
    agent.on_verdict(verdict("BTC-USD"))
    agent.on_account(account())
    t0 = tick("BTC-USD", "100")
    agent.on_tick(t0, 0.0)
    t1 = tick("BTC-USD", "102")
    p = agent.on_tick(t1, 0.0)
    assert p is not None
    o, s = p.order, p.signal
    assert re.fullmatch(r"trd-[0-9a-f]{20}", o.client_order_id)
    assert (o.agent, o.symbol, o.venue, o.side, o.reduce_only) == ("trading", "BTC-USD", "sim", Side.BUY, False)
    assert o.quantity == D("0.980392")  # 100 / 102 rounded down
    assert o.decision_price == D("102") and o.origin_ts == t1.ts and o.ts >= t1.ts
    assert (s.action, s.model, s.origin_ts, s.confidence) == (Action.BUY, "momentum", t1.ts, 1.0)
    assert "+2.0000%" in s.reasoning and "0.980392" in s.reasoning
    decode(OrderRequest, encode(o))  # valid on the wire


def test_cooldown_per_symbol() -> None:
    agent = make_agent()
    agent.on_account(account())
    for sym in ("BTC-USD", "ETH-USD"):
        agent.on_verdict(verdict(sym))
    assert rise(agent, "BTC-USD", 0.0) is not None
    assert agent.on_tick(tick("BTC-USD", "105"), 9.9) is None  # cooling down
    assert rise(agent, "ETH-USD", 9.9) is not None  # other symbol unaffected
    assert agent.on_tick(tick("BTC-USD", "108"), 10.0) is not None


def test_sell_reduces_a_long_in_every_state() -> None:
    for state in TradingState:
        agent = make_agent()
        agent.on_verdict(verdict("ETH-USD", state, position="0.5"))
        p = rise(agent, "ETH-USD", 0.0, start="100", end="98")  # -2% -> SELL
        assert p is not None, state
        assert (p.order.side, p.order.reduce_only, p.order.quantity) == (Side.SELL, True, D("0.5"))
        assert p.signal.action is Action.SELL


def test_sell_without_a_long_is_no_order() -> None:
    agent = make_agent()
    agent.on_account(account())
    agent.on_verdict(verdict("ETH-USD", position="0"))
    assert rise(agent, "ETH-USD", 0.0, start="100", end="98") is None  # no shorting


def test_config_rejects_float_money() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        TradingConfig(order_usd=100.5)


# ---------------------------------------------------------------- in-process, real nats-server

CONFIG = {"trading_agent": {"lookback_ticks": 5, "threshold_pct": 0.5, "order_usd": "100",
                            "max_position_pct": 30.0, "cooldown_s": 60.0}}


async def feed_ticks(md, symbol: str, prices, until: asyncio.Queue | None, timeout: float) -> list[Tick]:
    """Publish ticks (20 ms apart) until something lands in `until`, or for `timeout` s."""
    sent = []
    deadline = asyncio.get_running_loop().time() + timeout
    for seq, price in enumerate(prices):
        t = Tick(venue="sim", symbol=symbol, price=D(price), seq=seq, ts=now_ns())
        await md.publish(f"md.tick.sim.{symbol}", encode(t))
        sent.append(t)
        await asyncio.sleep(0.02)
        if (until is not None and not until.empty()) or asyncio.get_running_loop().time() > deadline:
            break
    return sent


def rising(start: int = 100):
    return (str(start + i) for i in range(10_000))


async def test_rising_price_sends_signal_and_order_into_orders_stream(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDA-USD"
    orders = await operator.collect(f"orders.submit.{symbol}")
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    async with running_service("trading-agent", service.main, CONFIG, operator):
        await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol)))
        await risk.publish("risk.account", encode(account("10000")))
        await risk.flush()
        await asyncio.sleep(0.1)
        sent = await feed_ticks(md, symbol, rising(), orders, timeout=5)
        msg = await asyncio.wait_for(orders.get(), 5)
        sig_msg = await asyncio.wait_for(signals.get(), 1)

    order = decode(OrderRequest, msg.data)
    by_ts = {t.ts: t for t in sent}
    assert order.origin_ts in by_ts
    decision_tick = by_ts[order.origin_ts]
    assert order.decision_price == decision_tick.price
    assert order.quantity == round_down(D("100") / decision_tick.price)
    assert (order.agent, order.symbol, order.side, order.reduce_only) == ("trading", symbol, Side.BUY, False)
    assert re.fullmatch(r"trd-[0-9a-f]{20}", order.client_order_id)

    signal = decode(Signal, sig_msg.data)
    assert (signal.action, signal.model, signal.origin_ts) == (Action.BUY, "momentum", order.origin_ts)

    # Stored in ORDERS, with the client_order_id as the dedupe id.
    stored = await operator.jetstream().get_last_msg(ORDERS, f"orders.submit.{symbol}")
    assert decode(OrderRequest, stored.data) == order
    assert stored.headers[MSG_ID_HEADER] == order.client_order_id
    assert orders.empty()  # cooldown: one order


async def test_halted_verdict_sends_no_buy(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDB-USD"
    orders = await operator.collect(f"orders.submit.{symbol}")
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    async with running_service("trading-agent", service.main, CONFIG, operator):
        await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol, TradingState.HALTED)))
        await risk.publish("risk.account", encode(account("10000")))
        await risk.flush()
        await asyncio.sleep(0.1)
        await feed_ticks(md, symbol, [str(100 + i) for i in range(30)], None, timeout=5)
        await asyncio.sleep(0.2)
    assert orders.empty() and signals.empty()


async def test_halted_verdict_still_reduces_a_long(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDC-USD"
    orders = await operator.collect(f"orders.submit.{symbol}")
    async with running_service("trading-agent", service.main, CONFIG, operator):
        await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol, TradingState.HALTED, "0.25")))
        await risk.flush()
        await asyncio.sleep(0.1)
        await feed_ticks(md, symbol, [str(100 - i) for i in range(50)], orders, timeout=5)
        msg = await asyncio.wait_for(orders.get(), 5)
    order = decode(OrderRequest, msg.data)
    assert (order.side, order.reduce_only, order.quantity) == (Side.SELL, True, D("0.25"))


async def test_unacknowledged_order_is_reported_not_raised() -> None:
    class NoAckBus:
        def __init__(self) -> None:
            self.published: list[str] = []
            self.errors: list[tuple[str, str]] = []

        async def publish(self, subject: str, message: object) -> None:
            self.published.append(subject)

        async def publish_order(self, subject: str, order: object, timeout: float) -> None:
            raise nats.errors.TimeoutError

        async def report_error(self, subject: str, reason: str, payload: bytes) -> None:
            self.errors.append((subject, reason))

    agent = make_agent()
    agent.on_verdict(verdict("BTC-USD"))
    agent.on_account(account())
    bus = NoAckBus()
    assert await service.submit(bus, rise(agent, "BTC-USD", 0.0), timeout=0.1) is False  # type: ignore[arg-type]
    assert bus.published == ["agent.signal.trading.BTC-USD"]
    assert bus.errors and bus.errors[0][0] == "orders.submit.BTC-USD" and "not acknowledged" in bus.errors[0][1]
