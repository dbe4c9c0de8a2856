"""Trading agent: the strategies, sizing (exact Decimals), fail-closed gating, the LLM
strategy and its fallback, and the agent in-process against the real nats-server (bars
and alerts in, one Signal per event and orders into ORDERS out; context from a fake
md.api.history, the KV bucket and live verdicts)."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal

import nats.errors
import pytest

from services.common import caps
from services.common.bus import flush
from services.common.llm import Decision, DecisionRequest
from services.contract.models import (
    AccountState,
    Action,
    Bar,
    OrderRequest,
    PriceAlert,
    Sentiment,
    Side,
    Signal,
    Tick,
    TradingState,
    Verdict,
    decode,
    encode,
    now_ns,
)
from services.common.streams import MSG_ID_HEADER, ORDERS, open_kv
from services.trading_agent import service
from services.trading_agent.agent import Choice, Context, Event, plan
from services.trading_agent.config import TradingConfig
from services.trading_agent.context import merge_bars
from services.trading_agent.decide import LLMDecider, RuleDecider, build_prompt
from services.trading_agent.sizing import buy_quantity, reduce_quantity, round_down
from services.trading_agent.strategy import MeanReversionStrategy, MomentumStrategy, MovingAverageCrossover

D = Decimal
BUY, SELL, HOLD = Action.BUY, Action.SELL, Action.HOLD
T0 = 1_764_000_000 * 10**9


def bar(symbol: str, close: str, i: int, interval: str = "1s") -> Bar:
    c = D(close)
    return Bar(venue="sim", symbol=symbol, interval=interval, open=c, high=c, low=c, close=c, volume=D(1),
               trades=1, start_ts=T0 + i * 10**9, end_ts=T0 + (i + 1) * 10**9)


def bars(symbol: str, closes: list[str]) -> list[Bar]:
    return [bar(symbol, c, i) for i, c in enumerate(closes)]


def verdict(symbol: str, state: TradingState = TradingState.ACTIVE, position: str = "0",
            ts: int | None = None) -> Verdict:
    return Verdict(symbol=symbol, state=state, position=D(position), ts=ts or now_ns())


def account(equity: str = "10000", cash: str | None = None, state: TradingState = TradingState.ACTIVE) -> AccountState:
    return AccountState(
        state=state, cash=D(cash or equity), equity=D(equity), peak_equity=D(equity), drawdown_pct=0.0,
        realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(0), fees=D(0), gross_exposure=D(0),
        open_positions=0, kill_switch=False, ts=now_ns(),
    )


# ---------------------------------------------------------------- strategies


def test_momentum() -> None:
    s = MomentumStrategy(lookback=3, threshold_pct=1.0)
    short = s.decide("BTC-USD", bars("BTC-USD", ["100", "105"]))
    assert short.action is HOLD and "2 closed bars, the strategy needs 3" in short.reasoning
    d = s.decide("BTC-USD", bars("BTC-USD", ["90", "100", "100.5", "101"]))  # window 100 -> 101: +1%
    assert (d.action, d.confidence) == (BUY, 0.5) and "+1.0000%" in d.reasoning and "100 -> 101" in d.reasoning
    d = s.decide("BTC-USD", bars("BTC-USD", ["100", "99", "98"]))
    assert (d.action, d.confidence) == (SELL, 1.0)
    d = s.decide("BTC-USD", bars("BTC-USD", ["100", "100.5", "100.5"]))
    assert (d.action, d.confidence) == (HOLD, 0.5)


def test_mean_reversion_fades_a_stretch() -> None:
    s = MeanReversionStrategy(lookback=4, threshold_pct=0.5)
    d = s.decide("ETH-USD", bars("ETH-USD", ["100", "100", "101", "103"]))  # mean 101, +1.98%
    assert (d.action, d.confidence) == (SELL, 1.0) and "stretched up" in d.reasoning
    assert s.decide("ETH-USD", bars("ETH-USD", ["100", "100", "99", "97"])).action is BUY
    assert s.decide("ETH-USD", bars("ETH-USD", ["100", "100", "100", "100.1"])).action is HOLD
    assert s.decide("ETH-USD", bars("ETH-USD", ["100"])).action is HOLD


def test_ma_crossover_acts_on_the_cross_only() -> None:
    s = MovingAverageCrossover(fast=2, slow=3, min_gap_pct=0.1)
    assert s.bars_needed == 4
    # before: fast(100,100)=100 <= slow(100,100,100); now: fast(100,103)=101.5 > slow 101
    d = s.decide("SOL-USDC", bars("SOL-USDC", ["100", "100", "100", "103"]))
    assert d.action is BUY and d.confidence == 1.0 and "crossed above" in d.reasoning
    d = s.decide("SOL-USDC", bars("SOL-USDC", ["100", "100", "100", "97"]))
    assert d.action is SELL and "crossed below" in d.reasoning
    # already above on the bar before: no new cross
    d = s.decide("SOL-USDC", bars("SOL-USDC", ["100", "100", "103", "104"]))
    assert d.action is HOLD and "no cross, fast stays above slow" in d.reasoning
    with pytest.raises(ValueError):
        MovingAverageCrossover(fast=3, slow=3, min_gap_pct=0.1)


def test_ma_crossover_keeps_its_holds_for_at_most_the_market_cap(monkeypatch) -> None:
    """Its HOLD decisions are kept per (symbol, side) to be shared: made-up symbols on md.bar
    grew them without end. Past caps.MAX_MARKET_SYMBOLS symbols (x 3 sides) a new one's is made
    each time, the same decision."""
    monkeypatch.setattr(caps, "MAX_MARKET_SYMBOLS", 2)
    s = MovingAverageCrossover(fast=2, slow=3, min_gap_pct=0.1)
    for n in range(10):
        symbol = f"MAH{n}-USD"
        for _ in range(2):
            d = s.decide(symbol, bars(symbol, ["100", "100", "103", "104"]))
            assert d.action is HOLD and d.reasoning == f"{symbol} MA(2) vs MA(3): no cross, fast stays above slow"
    assert len(s._holds) == 6 and s._hold("MAH0-USD", "above") is s._hold("MAH0-USD", "above")


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="decimal string"):
        TradingConfig(order_usd=100.5)
    with pytest.raises(ValueError, match="ma_fast"):
        TradingConfig(ma_fast=20, ma_slow=5)
    with pytest.raises(ValueError):
        TradingConfig(bar_interval="1 s")  # not a subject token
    with pytest.raises(ValueError):
        TradingConfig(lookback_ticks=5)  # an old key is an error, not silently ignored


# ---------------------------------------------------------------- sizing


def test_buy_quantity_is_order_usd_over_price_rounded_down() -> None:
    assert buy_quantity(D("97000"), D(0), D("10000"), D("10000"), D("100"), 30.0, 10.0) == D("0.001030")
    assert buy_quantity(D("150"), D(0), D("10000"), D("10000"), D("100"), 30.0, 10.0) == D("0.666666")


def test_buy_quantity_capped_by_position_share_and_cash_reserve() -> None:
    # position cap 3000; holding 0.03 * 97000 = 2910 -> room 90 -> 0.000927835... -> 0.000927
    assert buy_quantity(D("97000"), D("0.03"), D("10000"), D("7000"), D("100"), 30.0, 10.0) == D("0.000927")
    assert buy_quantity(D("97000"), D("0.031"), D("10000"), D("7000"), D("100"), 30.0, 10.0) == D(0)
    # cash 1040, reserve 10% of 10000 = 1000 -> room 40
    assert buy_quantity(D("100"), D(0), D("10000"), D("1040"), D("100"), 30.0, 10.0) == D("0.4")
    assert buy_quantity(D("100"), D(0), D("10000"), D("999"), D("100"), 30.0, 10.0) == D(0)
    assert buy_quantity(D("97000"), D(0), D(0), D(0), D("100"), 30.0, 0.0) == D(0)  # no equity


def test_reduce_quantity_never_past_zero() -> None:
    assert reduce_quantity(D("97000"), D("0.01"), D("100")) == D("0.001030")
    assert reduce_quantity(D("97000"), D("0.0005"), D("100")) == D("0.0005")
    assert reduce_quantity(D("97000"), D("-0.0005"), D("100")) == D("0.0005")  # a short: buy it back
    assert reduce_quantity(D("97000"), D("0.00000049"), D("100")) == D(0)  # dust rounds to zero
    assert round_down(D("0.0000019999")) == D("0.000001") and round_down(D("-1")) == D(0)


# ---------------------------------------------------------------- gating (plan)

CFG = TradingConfig(order_usd=D("100"), max_position_pct=30.0, cash_pct=10.0, state_max_age_s=10.0)


def ctx_for(symbol: str = "BTC-USD", price: str = "100", v: Verdict | None = None,
            a: AccountState | None = None) -> Context:
    event = Event("bar", symbol, "sim", D(price), T0, "1s bar closed")
    return Context(event=event, bars=[], verdict=v, account=a)


def choice(action: Action, confidence: float = 0.8) -> Choice:
    return Choice(action, confidence, "because", "momentum")


def test_hold_is_a_signal_without_an_order() -> None:
    p = plan(choice(HOLD, 0.3), ctx_for(v=verdict("BTC-USD"), a=account()), CFG, now_ns())
    assert p.order is None and p.signal.action is HOLD and p.signal.reasoning == "because; no order"


def test_no_verdict_no_order_even_to_sell() -> None:
    for action in (BUY, SELL):
        p = plan(choice(action), ctx_for(a=account()), CFG, now_ns())
        assert p.order is None and p.signal.action is HOLD and "fail closed" in p.signal.reasoning


def test_never_a_risk_increasing_order_unless_active_and_fresh() -> None:
    ts = now_ns()
    for state in (TradingState.REDUCE_ONLY, TradingState.HALTED):
        p = plan(choice(BUY), ctx_for(v=verdict("BTC-USD", state), a=account()), CFG, ts)
        assert p.order is None and f"the verdict is {state.value}" in p.signal.reasoning
    stale = verdict("BTC-USD", ts=ts - 11 * 10**9)
    assert "too old" in plan(choice(BUY), ctx_for(v=stale, a=account()), CFG, ts).signal.reasoning
    assert plan(choice(BUY), ctx_for(v=verdict("BTC-USD")), CFG, ts).order is None  # account unknown
    halted_account = account(state=TradingState.HALTED)
    assert plan(choice(BUY), ctx_for(v=verdict("BTC-USD"), a=halted_account), CFG, ts).order is None


def test_buy_order_fields() -> None:
    ts = now_ns()
    p = plan(choice(BUY), ctx_for(price="102", v=verdict("BTC-USD"), a=account()), CFG, ts)
    o, s = p.order, p.signal
    assert o is not None and re.fullmatch(r"trd-[0-9a-f]{20}", o.client_order_id)
    assert (o.agent, o.symbol, o.venue, o.side, o.reduce_only) == ("trading", "BTC-USD", "sim", Side.BUY, False)
    assert o.quantity == D("0.980392") and o.decision_price == D("102") and (o.origin_ts, o.ts) == (T0, ts)
    assert (s.action, s.model, s.origin_ts, s.confidence) == (BUY, "momentum", T0, 0.8)
    assert s.reasoning == "because; order BUY 0.980392 at ~102"
    decode(OrderRequest, encode(o))
    again = plan(choice(BUY), ctx_for(price="102", v=verdict("BTC-USD"), a=account()), CFG, ts)
    assert again.order and again.order.client_order_id != o.client_order_id  # fresh every time


def test_reducing_orders_pass_in_every_state() -> None:
    for state in TradingState:
        p = plan(choice(SELL), ctx_for(v=verdict("ETH-USD", state, position="0.5")), CFG, now_ns())
        assert p.order and (p.order.side, p.order.reduce_only, p.order.quantity) == (Side.SELL, True, D("0.5"))
        p = plan(choice(BUY), ctx_for(v=verdict("ETH-USD", state, position="-0.25")), CFG, now_ns())
        assert p.order and (p.order.side, p.order.reduce_only, p.order.quantity) == (Side.BUY, True, D("0.25"))
        assert p.signal.action is BUY and "(reduce only)" in p.signal.reasoning


def test_sell_without_a_long_is_no_order() -> None:
    p = plan(choice(SELL), ctx_for(v=verdict("ETH-USD"), a=account()), CFG, now_ns())
    assert p.order is None and "no shorting" in p.signal.reasoning


# ---------------------------------------------------------------- context and the LLM strategy


def test_merge_bars_adds_the_event_bar_once_and_keeps_the_last() -> None:
    history = bars("BTC-USD", ["1", "2", "3"])
    assert [b.close for b in merge_bars(history, history[2], 10)] == [D(1), D(2), D(3)]
    nxt = bar("BTC-USD", "4", 3)
    assert [b.close for b in merge_bars(history, nxt, 3)] == [D(2), D(3), D(4)]
    assert [b.close for b in merge_bars(history, history[1], 10)] == [D(1), D(2)]  # nothing after the event
    assert [b.close for b in merge_bars(history, None, 2)] == [D(2), D(3)]


def test_merge_bars_uses_no_bars_across_a_long_silence() -> None:
    # Bars 0-2, then market-data down: the next bars start at 10 s and at 100 s.
    history = bars("BTC-USD", ["1", "2", "3"]) + [bar("BTC-USD", "4", 10)]
    late = bar("BTC-USD", "5", 100)
    # A 7 s gap within the limit of 60 s: the series goes on across it (a restart).
    assert [b.close for b in merge_bars(history, None, 10, 60 * 10**9)] == [D(1), D(2), D(3), D(4)]
    # An 89 s gap: only the bars after it (the strategy then waits for enough of them).
    assert [b.close for b in merge_bars(history, late, 10, 60 * 10**9)] == [D(5)]
    assert [b.close for b in merge_bars(history, None, 10, 5 * 10**9)] == [D(4)]
    # Contiguous bars are no gap, even with a limit of 0; without a limit nothing is cut.
    assert [b.close for b in merge_bars(history[:3], None, 10, 0)] == [D(1), D(2), D(3)]
    assert len(merge_bars(history, late, 10)) == 5


class FakeProvider:
    def __init__(self, answer: Decision | None = None, delay: float = 0.0, fail: Exception | None = None) -> None:
        self.name = "fake"
        self.answer, self.delay, self.fail = answer, delay, fail
        self.requests: list[DecisionRequest] = []

    async def decide(self, request: DecisionRequest) -> Decision:
        self.requests.append(request)
        await asyncio.sleep(self.delay)  # ignores request.timeout_s on purpose
        if self.fail:
            raise self.fail
        assert self.answer is not None
        return self.answer


def llm_ctx() -> Context:
    ctx = ctx_for("BTC-USD", "103", verdict("BTC-USD", position="0.01"), account())
    ctx.bars = bars("BTC-USD", ["100", "101", "102", "103"])
    ctx.sentiment = Sentiment(symbol="BTC-USD", score=0.42, confidence=0.6, items=3, model="offline-lexicon", ts=T0)
    return ctx


async def test_llm_answer_is_used_with_its_cost_and_latency() -> None:
    answer = Decision(action="SELL", conviction=-0.7, confidence=0.7, reasoning="overbought", model="fake:m",
                      latency_ms=812.0, cost_usd=0.0021)
    provider = FakeProvider(answer)
    decider = LLMDecider(provider, MomentumStrategy(3, 1.0), TradingConfig(llm_bars=3, llm_timeout_s=5))
    c = await decider.decide(llm_ctx())
    assert c == Choice(SELL, 0.7, "overbought", "fake:m", False, 812.0, 0.0021)
    (req,) = provider.requests
    assert (req.agent, req.symbol, req.timeout_s) == ("trading", "BTC-USD", 5)
    assert ", 100, 100, 100, 100, 1" not in req.prompt  # only the last llm_bars=3 bars
    assert req.prompt.count("\n2025-") == 3 and ", 103, 103, 103, 103, 1" in req.prompt
    assert "Sentiment: score +0.420" in req.prompt and "Risk verdict: ACTIVE, position 0.01" in req.prompt
    assert "Account: ACTIVE, equity 10000" in req.prompt and "BUY, SELL or HOLD BTC-USD now?" in req.prompt


async def test_llm_abstention_is_a_hold_not_a_fallback() -> None:
    answer = Decision(action="ABSTAIN", conviction=0.0, confidence=0.2, reasoning="not enough data", model="fake:m")
    c = await LLMDecider(FakeProvider(answer), MomentumStrategy(3, 1.0), TradingConfig()).decide(llm_ctx())
    assert (c.action, c.fallback, c.model) == (HOLD, False, "fake:m") and "abstained" in c.reasoning


@pytest.mark.parametrize("provider, why", [
    (FakeProvider(Decision.abstain("fake:m", "unparsable answer: no JSON object", cost_usd=0.001)), "unparsable"),
    (FakeProvider(fail=RuntimeError("boom")), "provider failed"),
    (FakeProvider(Decision.abstain("fake:m", "x"), delay=30), "no answer within 0.2s"),
])
async def test_llm_failure_falls_back_to_the_deterministic_strategy(provider, why) -> None:
    decider = LLMDecider(provider, MomentumStrategy(3, 1.0), TradingConfig(llm_timeout_s=0.2))
    c = await asyncio.wait_for(decider.decide(llm_ctx()), 5)  # the deadline holds even if the provider ignores it
    assert (c.action, c.model, c.fallback) == (BUY, "momentum", True)  # 101 -> 103 is +1.98%
    assert why in c.reasoning and "momentum: BTC-USD moved" in c.reasoning


async def test_rule_decider_names_missing_context() -> None:
    ctx = ctx_for()
    ctx.notes.append("history unavailable (timeout)")
    c = await RuleDecider(MomentumStrategy(3, 1.0)).decide(ctx)
    assert c.action is HOLD and c.reasoning.endswith("; history unavailable (timeout)")
    assert "Missing data: history unavailable" in build_prompt(ctx, 10)


# ---------------------------------------------------------------- in-process, real nats-server

CONFIG = {"trading_agent": {"strategy": "momentum", "momentum_lookback": 3, "momentum_threshold_pct": 0.5,
                            "order_usd": "100",
                            "max_position_pct": 30.0, "cash_pct": 10.0, "workers": 2}}


class Always:
    """A strategy that answers `action` on every bar (one bar is enough)."""

    bars_needed, uses_sentiment = 1, False

    def __init__(self, action: Action) -> None:
        self.action, self.name = action, f"always-{action.value.lower()}"

    async def decide(self, ctx: Context) -> Choice:
        return choice(self.action)


class FakeMarket:
    """market-data stand-in: publishes closed bars and answers md.api.history with them."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.bars: dict[str, list[Bar]] = {}
        self.requests: list[dict] = []

    async def start(self) -> FakeMarket:
        self.sub = await self.nc.subscribe("md.api.history", cb=self._history)
        return self

    async def _history(self, msg) -> None:
        request = json.loads(msg.data)
        self.requests.append(request)
        have = self.bars.get(request["symbol"], [])[-request["limit"]:]
        await msg.respond(json.dumps({"bars": [json.loads(encode(b)) for b in have]}).encode())

    async def publish(self, b: Bar) -> None:
        self.bars.setdefault(b.symbol, []).append(b)
        await self.nc.publish(f"md.bar.{b.interval}.{b.venue}.{b.symbol}", encode(b))

    async def close(self) -> None:
        await self.sub.unsubscribe()


async def allow_trading(risk, symbol: str) -> None:
    """risk stand-in: an ACTIVE verdict and the account, seen by the agent before it goes on."""
    await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol)))
    await risk.publish("risk.account", encode(account("10000")))
    await flush(risk)
    await asyncio.sleep(0.1)


async def next_signal(queue: asyncio.Queue, timeout: float = 5.0) -> Signal:
    return decode(Signal, (await asyncio.wait_for(queue.get(), timeout)).data)


async def test_every_bar_is_decided_and_a_rise_buys(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDA-USD"
    market = await FakeMarket(md).start()
    orders = await operator.collect(f"orders.submit.trading.{symbol}")
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    try:
        async with running_service("trading-agent", service.main, CONFIG, operator):
            await allow_trading(risk, symbol)
            got = []
            for i, close in enumerate(["100", "100.1", "100.2", "101"]):
                await market.publish(bar(symbol, close, i))
                got.append(await next_signal(signals))  # one Signal per bar, in turn
            order = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
    finally:
        await market.close()

    assert [s.origin_ts for s in got] == [T0 + (i + 1) * 10**9 for i in range(4)]  # the bar's end_ts
    assert [s.action for s in got] == [HOLD, HOLD, HOLD, BUY]  # 2 bars, 3 bars (+0.2%), then +0.9%
    assert "the strategy needs 3" in got[0].reasoning and "within +/-0.5%" in got[2].reasoning
    assert all(s.model == "momentum" and not s.fallback for s in got)
    assert (order.side, order.reduce_only, order.quantity) == (Side.BUY, False, round_down(D("100") / D("101")))
    assert (order.origin_ts, order.decision_price) == (got[3].origin_ts, D("101"))
    assert market.requests == [{"symbol": symbol, "interval": "1s", "limit": 3, "venue": "sim"}]  # once, then the window
    stored = await operator.jetstream().get_last_msg(ORDERS, f"orders.submit.trading.{symbol}")
    assert decode(OrderRequest, stored.data) == order and stored.headers[MSG_ID_HEADER] == order.client_order_id
    assert orders.empty()


async def test_a_fresh_replica_reads_the_verdict_from_kv(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDK-USD"
    kv = await open_kv(risk.jetstream())
    await kv.put(f"risk.verdict.{symbol}", encode(verdict(symbol, TradingState.HALTED, "0.25")))
    market = await FakeMarket(md).start()
    orders = await operator.collect(f"orders.submit.trading.{symbol}")
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    try:
        async with running_service("trading-agent", service.main, CONFIG, operator):
            for i, close in enumerate(["100", "99", "98"]):  # -2%: SELL
                await market.publish(bar(symbol, close, i))
            order = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
            for i, close in enumerate(["98", "99", "101"], start=3):  # +3%: BUY, but HALTED
                await market.publish(bar(symbol, close, i))
            sigs = [await next_signal(signals) for _ in range(6)]
    finally:
        await market.close()
    assert (order.side, order.reduce_only, order.quantity) == (Side.SELL, True, D("0.25"))
    assert sigs[-1].action is HOLD and "BUY would increase the position and the verdict is HALTED" in sigs[-1].reasoning


async def test_alert_is_decided_with_its_price_and_ts(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDL-USD"
    market = await FakeMarket(md).start()
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    orders = await operator.collect(f"orders.submit.trading.{symbol}")
    try:
        async with running_service("trading-agent", service.main, CONFIG, operator):
            for i, close in enumerate(["100", "100", "102"]):
                market.bars.setdefault(symbol, []).append(bar(symbol, close, i))  # history only, no bar events
            await allow_trading(risk, symbol)
            alert = PriceAlert(venue="sim", symbol=symbol, direction="UP", change_pct=2.0, threshold_pct=1.0,
                               window_s=60, from_price=D("100"), price=D("102.5"), ts=now_ns())
            await md.publish(f"md.alert.{symbol}", encode(alert))
            s = await next_signal(signals)
            order = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
    finally:
        await market.close()
    assert (s.action, s.origin_ts) == (BUY, alert.ts)
    assert (order.origin_ts, order.decision_price) == (alert.ts, D("102.5"))


def test_a_newer_tick_prices_the_decision() -> None:
    ctx = ctx_for(price="100", v=verdict("BTC-USD"), a=account())
    ctx.tick = Tick(venue="sim", symbol="BTC-USD", price=D("101"), seq=1, ts=T0 - 1)
    assert ctx.price == D("100")  # older than the bar
    ctx.tick = Tick(venue="sim", symbol="BTC-USD", price=D("101"), seq=2, ts=T0 + 1)
    assert ctx.price == D("101")
    p = plan(choice(BUY), ctx, CFG, now_ns())
    assert p.order and p.order.decision_price == D("101") and p.order.quantity == D("0.990099")


async def test_ticks_are_checked_on_arrival_and_built_when_used(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDN-USD"
    market = await FakeMarket(md).start()
    orders = await operator.collect(f"orders.submit.trading.{symbol}")
    errors = await operator.collect("errors.trading-agent")
    try:
        async with running_service("trading-agent", service.main, CONFIG, operator):
            await allow_trading(risk, symbol)
            bad = {"venue": "sim", "symbol": symbol, "price": 101.5, "seq": 1, "ts": now_ns()}  # float money
            await md.publish(f"md.tick.sim.{symbol}", json.dumps(bad).encode())
            error = json.loads((await asyncio.wait_for(errors.get(), 5)).data)  # refused on arrival
            for i, close in enumerate(["100", "100", "101"]):
                await market.publish(bar(symbol, close, i))
            first = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
            good = Tick(venue="sim", symbol=symbol, price=D("101.7"), seq=2, ts=now_ns())
            await md.publish(f"md.tick.sim.{symbol}", encode(good))
            worse = {**json.loads(encode(good)), "price": "101.9e0", "seq": 3}  # exponent: no decimal string
            await md.publish(f"md.tick.sim.{symbol}", json.dumps(worse).encode())
            second_error = json.loads((await asyncio.wait_for(errors.get(), 5)).data)
            await market.publish(bar(symbol, "102", 3))
            second = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
    finally:
        await market.close()
    assert first.decision_price == D("101")  # the bad tick was refused: the bar's close
    assert error["subject"] == f"md.tick.sim.{symbol}" and "bad tick" in error["reason"]
    assert "not a JSON number" in error["reason"]  # the model's own reason
    assert "price" in second_error["reason"] and "101.9e0" in second_error["excerpt"]
    assert second.decision_price == D("101.7")  # the last good tick, newer than the bar (T0-based)


def capped_service(bus) -> service.TradingService:
    """The agent of CONFIG (momentum over 3 bars), for tests that look inside its caches."""
    cfg = TradingConfig.model_validate(CONFIG["trading_agent"])
    return service.TradingService(bus, cfg, service.RuleDecider(service.make_strategy("momentum", cfg)))


async def refusals(errors: asyncio.Queue, n: int) -> list[dict]:
    return [json.loads((await asyncio.wait_for(errors.get(), 5)).data) for _ in range(n)]


async def test_past_the_market_cap_a_tick_on_a_new_subject_is_refused(connect, service_bus, monkeypatch) -> None:
    """The agent kept the latest tick of every md.tick subject: one stolen market-data
    credential publishing made-up symbols grew it without end. Now it keeps at most
    caps.MAX_MARKET_SYMBOLS subjects: a tick on a new one beyond is refused on
    errors.trading-agent, a kept one still updates (and prices the decision), the agent decides on."""
    monkeypatch.setattr(caps, "MAX_MARKET_SYMBOLS", 2)
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    kept, new = ["TRCA-USD", "TRCB-USD"], "TRCC-USD"
    market = await FakeMarket(md).start()
    errors = await operator.collect("errors.trading-agent")
    orders = await operator.collect(f"orders.submit.trading.{kept[0]}")
    svc = capped_service(await service_bus("trading-agent"))
    await svc.start()

    def tick(symbol: str, price: str, seq: int) -> bytes:
        return encode(Tick(venue="sim", symbol=symbol, price=D(price), seq=seq, ts=now_ns()))

    try:
        await md.flush()  # the publisher's round trip first (tests/test_decision_pipeline.py)
        for symbol in [*kept, new]:
            await md.publish(f"md.tick.sim.{symbol}", tick(symbol, "100", 1))
        await md.publish(f"md.tick.sim.{kept[0]}", tick(kept[0], "101.7", 2))  # a kept subject updates
        await md.publish(f"md.tick.sim.{new}", tick(new, "100", 2))  # refused again
        await flush(md)
        refused = await refusals(errors, 2)
        await allow_trading(risk, kept[0])
        for i, close in enumerate(["100", "100", "101"]):
            await market.publish(bar(kept[0], close, i))
        order = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
    finally:
        await svc.stop(2)
        await market.close()
    assert [e["subject"] for e in refused] == [f"md.tick.sim.{new}"] * 2
    assert all(f"subject md.tick.sim.{new} refused" in e["reason"] and "MAX_MARKET_SYMBOLS 2" in e["reason"]
               for e in refused), refused
    assert sorted(svc.context.ticks._raw) == [f"md.tick.sim.{s}" for s in kept]
    assert order.decision_price == D("101.7")  # the kept subject's latest tick
    assert errors.empty()


async def test_a_tick_or_verdict_padded_past_what_is_kept_is_refused_and_a_padded_bar_kept_as_a_bar(
        connect, service_bus) -> None:
    """Market data and verdicts are Tolerant (unknown fields pass), and the agent kept ticks and
    bars as received: padded to NATS's 1 MiB, 100,000 of them would be 100 GiB. A tick or a
    verdict over caps.MAX_KEPT_MESSAGE_BYTES is refused on errors.trading-agent (the last good
    one stays); a padded bar is kept as a Bar, whose every field is bounded."""
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRPD-USD"
    errors = await operator.collect("errors.trading-agent")
    svc = capped_service(await service_bus("trading-agent"))
    await svc.start()
    pad = {"pad": "x" * caps.MAX_KEPT_MESSAGE_BYTES}

    def padded(message: Tick | Verdict | Bar) -> bytes:
        return json.dumps(json.loads(encode(message)) | pad).encode()

    try:
        await md.flush()
        good = encode(Tick(venue="sim", symbol=symbol, price=D("100"), seq=1, ts=now_ns()))
        await md.publish(f"md.tick.sim.{symbol}", good)
        await md.publish(f"md.tick.sim.{symbol}",
                         padded(Tick(venue="sim", symbol=symbol, price=D("999"), seq=2, ts=now_ns())))
        await risk.publish(f"risk.verdict.{symbol}", padded(verdict(symbol)))
        await md.publish(f"md.bar.1s.sim.{symbol}", padded(bar(symbol, "100", 0)))
        await flush(md)
        await flush(risk)
        refused = await refusals(errors, 2)
        while not svc.context.bars.windows:
            await asyncio.sleep(0.01)
    finally:
        await svc.stop(2)
    assert sorted(e["subject"] for e in refused) == [f"md.tick.sim.{symbol}", f"risk.verdict.{symbol}"], refused
    assert all("MAX_KEPT_MESSAGE_BYTES 8192" in e["reason"] for e in refused), refused
    assert svc.context.ticks._raw[f"md.tick.sim.{symbol}"] == good
    assert symbol not in svc.context.verdicts
    kept = list(svc.context.bars.windows[("sim", symbol)].bars.values())
    assert [type(b) for b in kept] == [Bar] and kept[0].close == D("100")
    assert errors.empty()


async def test_past_the_market_cap_a_new_symbols_bars_are_refused_and_decided_from_history(
        connect, service_bus, monkeypatch) -> None:
    """The agent kept a bar window per (venue, symbol) named on md.bar: made-up symbols grew
    them without end. Now at most caps.MAX_MARKET_SYMBOLS are kept: a bar of a new one beyond
    is refused on errors.trading-agent and still decided, from md.api.history; a kept window
    still takes its bars."""
    monkeypatch.setattr(caps, "MAX_MARKET_SYMBOLS", 2)
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    kept, new = ["TRCD-USD", "TRCE-USD"], "TRCF-USD"
    market = await FakeMarket(md).start()
    errors = await operator.collect("errors.trading-agent")
    signals = {s: await operator.collect(f"agent.signal.trading.{s}") for s in (kept[0], new)}
    svc = capped_service(await service_bus("trading-agent"))
    await svc.start()
    got: dict[str, list[Signal]] = {kept[0]: [], new: []}
    try:
        for symbol in (kept[0], new):
            await allow_trading(risk, symbol)
        for i, close in enumerate(["100", "100", "101"]):
            for symbol in kept:
                await market.publish(bar(symbol, close, i))
            while len(svc.context.bars.windows) < 2:  # the kept ones first (a decision may make a window too)
                await asyncio.sleep(0.01)
            await market.publish(bar(new, close, i))
            for symbol, queue in signals.items():
                got[symbol].append(await next_signal(queue))
        refused = await refusals(errors, 3)
    finally:
        await svc.stop(2)
        await market.close()
    assert [e["subject"] for e in refused] == [f"md.bar.1s.sim.{new}"] * 3
    assert all(f"bar window sim {new} refused" in e["reason"] and "MAX_MARKET_SYMBOLS 2" in e["reason"]
               for e in refused), refused
    assert sorted(svc.context.bars.windows) == [("sim", s) for s in kept]
    assert len(svc.context.bars.windows[("sim", kept[0])].starts) == 3  # the kept window took every bar
    assert [s.action for s in got[kept[0]]] == [s.action for s in got[new]] == [HOLD, HOLD, BUY]
    asked = [r["symbol"] for r in market.requests]
    assert asked.count(kept[0]) == 1 and asked.count(new) == 3  # the window once; no window: every decision
    assert errors.empty()


async def test_past_the_market_cap_a_verdict_of_a_new_symbol_is_refused(connect, service_bus, monkeypatch) -> None:
    """The agent kept the latest verdict of every symbol named on risk.verdict.> (and read from
    KV): one stolen risk credential publishing made-up symbols grew it without end. Now at most
    caps.MAX_MARKET_SYMBOLS symbols: a verdict of a new one beyond is refused on
    errors.trading-agent (its decisions fail closed), a kept one still updates, and a verdict
    read from KV is used but not kept."""
    monkeypatch.setattr(caps, "MAX_MARKET_SYMBOLS", 2)
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    kept, new, stored = ["TRCG-USD", "TRCH-USD"], "TRCI-USD", "TRCJ-USD"
    kv = await open_kv(risk.jetstream())
    await kv.put(f"risk.verdict.{stored}", encode(verdict(stored, TradingState.HALTED)))
    market = await FakeMarket(md).start()
    errors = await operator.collect("errors.trading-agent")
    signals = {s: await operator.collect(f"agent.signal.trading.{s}") for s in (new, stored)}
    svc = capped_service(await service_bus("trading-agent"))
    await svc.start()
    try:
        await risk.flush()
        for symbol in [*kept, new]:
            await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol)))
        await risk.publish(f"risk.verdict.{kept[0]}", encode(verdict(kept[0], TradingState.HALTED)))
        await risk.publish("risk.account", encode(account("10000")))
        await flush(risk)
        (refused,) = await refusals(errors, 1)
        for i, close in enumerate(["100", "100", "101"]):
            for symbol in (new, stored):
                await market.publish(bar(symbol, close, i))
        last = {symbol: [await next_signal(queue) for _ in range(3)][-1] for symbol, queue in signals.items()}
    finally:
        await svc.stop(2)
        await market.close()
    assert refused["subject"] == f"risk.verdict.{new}", refused
    assert f"symbol {new} refused" in refused["reason"] and "MAX_MARKET_SYMBOLS 2" in refused["reason"], refused
    assert sorted(svc.context.verdicts) == kept and svc.context.verdicts[kept[0]].state is TradingState.HALTED
    assert last[new].action is HOLD and "needs a verdict from risk (fail closed)" in last[new].reasoning
    assert last[stored].action is HOLD and "the verdict is HALTED" in last[stored].reasoning  # from KV
    assert errors.empty()


async def test_failed_and_overloaded_decisions_are_still_signals(connect, service_bus) -> None:
    operator = await connect("operator")
    symbol = "TRDF-USD"
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    errors = await operator.collect("errors.trading-agent")
    release = asyncio.Event()

    class Stuck:
        name, bars_needed, uses_sentiment = "stuck", 2, False

        async def decide(self, ctx: Context) -> Choice:
            if ctx.event.origin_ts == bar(symbol, "1", 0).end_ts:
                raise RuntimeError("strategy bug")
            await release.wait()
            return choice(HOLD)

    svc = service.TradingService(await service_bus("trading-agent"),
                                 TradingConfig(workers=1, max_pending=1, history_timeout_s=0.2), Stuck())
    await svc.start()
    try:
        events = [bar(symbol, "1", i) for i in range(4)]
        await svc.enqueue(service.bar_event(events[0]), events[0])  # fails
        failed = await next_signal(signals)
        await svc.enqueue(service.bar_event(events[1]), events[1])
        while not svc.queue.empty():  # until the worker is stuck on it
            await asyncio.sleep(0.01)
        for b in events[2:]:  # 2: queued, 3: overloaded
            await svc.enqueue(service.bar_event(b), b)
        overloaded = await next_signal(signals)
        release.set()
        rest = [await next_signal(signals) for _ in range(2)]
    finally:
        await svc.stop(2)
    assert (failed.action, failed.model, failed.origin_ts) == (HOLD, "failed", events[0].end_ts)
    assert "decision failed: RuntimeError('strategy bug')" in failed.reasoning
    assert "decision failed" in json.loads((await asyncio.wait_for(errors.get(), 5)).data)["reason"]
    assert (overloaded.model, overloaded.origin_ts) == ("overloaded", events[3].end_ts)
    assert sorted(s.origin_ts for s in rest) == [events[1].end_ts, events[2].end_ts]


@pytest.mark.parametrize("in_flight, deciding", [(service.ORDERS_IN_FLIGHT, 2), (1, 1)])
async def test_a_worker_decides_on_while_its_orders_await_the_stream(connect, service_bus, monkeypatch,
                                                                     in_flight: int, deciding: int) -> None:
    """The stream's ack of an order is awaited off the worker (up to ORDERS_IN_FLIGHT
    decisions at once): one worker decides the next event meanwhile; stop() waits for
    the orders and Signals of what was decided."""
    monkeypatch.setattr(service, "ORDERS_IN_FLIGHT", in_flight)
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbols = [f"TRDQ{in_flight}-USD", f"TRDR{in_flight}-USD"]
    market = await FakeMarket(md).start()
    signals = await operator.collect("agent.signal.trading.*")

    bus = await service_bus("trading-agent")
    acked, sending = asyncio.Event(), []
    stream_publish = bus.publish_order

    async def slow_stream(subject: str, order: OrderRequest, timeout: float = 2.0, fresh: bool = False):
        sending.append(order.symbol)
        await acked.wait()  # the stream's ack, held back
        return await stream_publish(subject, order, timeout=timeout, fresh=fresh)

    bus.publish_order = slow_stream  # type: ignore[method-assign]
    svc = service.TradingService(bus, TradingConfig(workers=1, history_timeout_s=0.5), Always(BUY))
    await svc.start()
    try:
        for symbol in symbols:
            await allow_trading(risk, symbol)
        events = [bar(symbol, "100", 0) for symbol in symbols]
        for b in events:
            await market.publish(b)
        deadline = asyncio.get_running_loop().time() + 5
        while len(sending) < deciding and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # time enough for a decision the bound should hold back
        assert sending == symbols[:deciding]
        assert signals.empty()  # a Signal says whether its order was acknowledged: after the ack
        stopping = asyncio.create_task(svc.stop(5))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # stop() waits for the acks of what was decided
        acked.set()
        await asyncio.wait_for(stopping, 5)
    finally:
        acked.set()
        await market.close()
    got = sorted([await next_signal(signals) for _ in symbols], key=lambda s: s.symbol)
    assert [(s.symbol, s.action) for s in got] == [(symbol, BUY) for symbol in symbols]
    assert all("NOT acknowledged" not in s.reasoning for s in got)
    for symbol in symbols:
        stored = await operator.jetstream().get_last_msg(ORDERS, f"orders.submit.trading.{symbol}")
        assert decode(OrderRequest, stored.data).side is Side.BUY


async def test_a_stopping_replica_decides_the_bars_it_was_given(connect, service_bus) -> None:
    """A replica stopped (SIGTERM) as a burst of bars reaches it: the server gave them to it
    (its share of the queue group), so no other replica will; each is decided. stop() used to
    unsubscribe, and nats-py discards what a subscription holds undelivered then (the compose
    suite saw a bar of the window without a Signal)."""
    operator, md = await connect("operator"), await connect("market-data")
    market = await FakeMarket(md).start()
    signals = await operator.collect("agent.signal.trading.*")

    bus = await service_bus("trading-agent")
    svc = service.TradingService(bus, TradingConfig(workers=2, history_timeout_s=0.5), Always(HOLD))
    enqueue = svc.enqueue

    async def slow_enqueue(event, b) -> None:  # noqa: ANN001 (the bars pile up in the subscription)
        await asyncio.sleep(0.02)
        await enqueue(event, b)

    svc.enqueue = slow_enqueue  # type: ignore[method-assign]
    await svc.start()
    symbols = [f"TRDD{i}-USD" for i in range(40)]
    try:
        for symbol in symbols:
            await market.publish(bar(symbol, "100", 0))
        await flush(md)  # the server has every bar; the replica holds most of them unread
        await asyncio.sleep(0.1)
        await svc.stop(10)
    finally:
        await market.close()
    got = sorted([(await next_signal(signals)).symbol for _ in symbols])
    assert got == sorted(symbols)


async def test_a_signal_the_bus_cannot_send_is_reported_on_errors(connect, service_bus) -> None:
    """Off the worker too (`_submit`), a decision whose Signal cannot be published is an
    event on errors.trading-agent, and the worker goes on to the next event."""
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbols = ["TRDS-USD", "TRDT-USD"]
    market = await FakeMarket(md).start()
    errors = await operator.collect("errors.trading-agent")
    signals = await operator.collect("agent.signal.trading.*")

    bus = await service_bus("trading-agent")
    publish = bus.publish

    async def failing_first(subject: str, message: Signal) -> None:
        if subject.endswith(symbols[0]):
            raise ConnectionError("bus gone")
        await publish(subject, message)

    bus.publish = failing_first  # type: ignore[method-assign]
    svc = service.TradingService(bus, TradingConfig(workers=1, history_timeout_s=0.5), Always(HOLD))
    await svc.start()
    try:
        for symbol in symbols:
            await market.publish(bar(symbol, "100", 0))
        error = json.loads((await asyncio.wait_for(errors.get(), 5)).data)
        after = await next_signal(signals)
    finally:
        await svc.stop(2)
        await market.close()
    assert error["subject"] == f"md.bar.1s.sim.{symbols[0]}"
    assert error["reason"] == "signal not sent: ConnectionError('bus gone')"
    assert after.symbol == symbols[1]


class SilentLLM:
    """An OpenAI-compatible endpoint that accepts the connection and never answers."""

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._hang, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3600)

    async def close(self) -> None:
        self.server.close()


async def test_a_silent_llm_degrades_to_the_fallback_visibly(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "TRDM-USD"
    llm = SilentLLM()
    base_url = await llm.start()
    config = {
        "trading_agent": {**CONFIG["trading_agent"], "strategy": "llm", "llm_fallback": "momentum",
                          "llm_timeout_s": 0.5, "workers": 4},
        "llm": {"provider": "local", "max_retries": 0,
                "endpoints": {"local": {"kind": "openai_compatible", "base_url": base_url, "model": "m",
                                        "api_key_env": ""}},
                "prices": {"m": {"input": "0", "output": "0"}}},
    }
    market = await FakeMarket(md).start()
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    try:
        async with running_service("trading-agent", service.main, config, operator):
            await allow_trading(risk, symbol)
            for i, close in enumerate(["100", "100.5", "101", "101.5"]):
                await market.publish(bar(symbol, close, i))
            got = [await next_signal(signals, 10) for _ in range(4)]
    finally:
        await market.close()
        await llm.close()
    assert sorted(s.origin_ts for s in got) == [T0 + (i + 1) * 10**9 for i in range(4)]
    assert all(s.fallback and s.model == "momentum" for s in got)
    assert all("LLM local:m unavailable" in s.reasoning and "timeout" in s.reasoning for s in got)
    assert BUY in {s.action for s in got}
    assert service.metrics.FALLBACKS.labels("llm:local:m")._value.get() >= 4


async def test_unacknowledged_order_is_reported_not_raised() -> None:
    class NoAckBus:
        def __init__(self) -> None:
            self.published: list[tuple[str, Signal]] = []
            self.errors: list[tuple[str, str]] = []

        async def publish(self, subject: str, message: Signal) -> None:
            self.published.append((subject, message))

        async def publish_order(self, subject: str, order: object, timeout: float) -> None:
            raise nats.errors.TimeoutError

        async def report_error(self, subject: str, reason: str, payload: bytes) -> None:
            self.errors.append((subject, reason))

    bus = NoAckBus()
    failures = service.metrics.ORDER_FAILURES._value.get()
    proposal = plan(choice(BUY), ctx_for(v=verdict("BTC-USD"), a=account()), CFG, now_ns())
    assert await service.submit(bus, proposal, timeout=0.1) is False  # type: ignore[arg-type]
    ((subject, signal),) = bus.published
    assert subject == "agent.signal.trading.BTC-USD" and "NOT acknowledged" in signal.reasoning
    assert bus.errors and bus.errors[0][0] == "orders.submit.trading.BTC-USD" and "not acknowledged" in bus.errors[0][1]
    assert service.metrics.ORDER_FAILURES._value.get() == failures + 1


def test_order_ids_are_unguessable_and_never_repeat_even_across_a_fork() -> None:
    """new_client_order_id hands out 80 CSPRNG bits per id from a pool (one getrandom per
    ~400 ids): every id differs, the pool refills past its end, and a forked child never
    hands out the parent's next ids (it starts with an empty pool)."""
    import os

    from services.trading_agent.agent import new_client_order_id

    ids = [new_client_order_id() for _ in range(2000)]  # ~5 refills of the 4 KiB pool
    assert all(re.fullmatch(r"trd-[0-9a-f]{20}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, new_client_order_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert re.fullmatch(r"trd-[0-9a-f]{20}", child)
    assert child != new_client_order_id()
    assert child not in ids
