"""Shorts in the trading agent (`allow_short`, issue #14): the decisions as pure functions
(`plan`, sizing, the pipeline's swarm gate). Flat + SELL opens a short, short + BUY covers,
a signal against the position flips it (close, then open the other side, sized at the
account the close leaves), per-symbol switches, and long-only unchanged when off.
Risk's venue rule (no short on spot venues) is tested in rust-risk and through the real
binaries (tests/test_shorts_e2e.py)."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

import pytest

from services.contract.models import (
    AccountState,
    Action,
    OrderRequest,
    Side,
    TradingState,
    VoteAction,
    decode,
    encode,
    now_ns,
)
from services.trading_agent.agent import Choice, plan
from services.trading_agent.config import TradingConfig
from services.trading_agent.decide import RuleDecider
from services.trading_agent.plugin import Choice as PluginChoice
from services.trading_agent.plugin import StrategyContext, StrategyPlugin
from services.trading_agent.pipeline import PipelineConfig, apply, wants_swarm
from services.trading_agent.sizing import all_in_short_quantity, short_quantity

from tests.test_decision_pipeline import NOW, consensus
from services.common.bus import flush
from services.common.streams import ORDERS
from services.trading_agent import service
from tests.test_trading_agent import CONFIG, FakeMarket, bar, ctx_for, next_signal, verdict

BUY, SELL, HOLD = Action.BUY, Action.SELL, Action.HOLD
SHORTS = TradingConfig(order_usd=D("100"), max_position_pct=30.0, cash_pct=10.0, allow_short=True)
LONG_ONLY = TradingConfig(order_usd=D("100"), max_position_pct=30.0, cash_pct=10.0)
ALL_IN = TradingConfig(sizing="all_in", cash_pct=0.0, quantity_step=D("1"), fee_bps=10.0, allow_short=True)


def account(equity: str = "10000", cash: str | None = None, gross: str = "0") -> AccountState:
    return AccountState(
        state=TradingState.ACTIVE, cash=D(cash or equity), equity=D(equity), peak_equity=D(equity), drawdown_pct=0.0,
        realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(0), fees=D(0), gross_exposure=D(gross),
        open_positions=0, kill_switch=False, ts=now_ns(),
    )


def choice(action: Action, close_only: bool = False) -> Choice:
    return Choice(action, 0.8, "because", "momentum", close_only=close_only)


def decide(action: Action, position: str, cfg: TradingConfig, a: AccountState | None = None, price: str = "100",
           state: TradingState = TradingState.ACTIVE, close_only: bool = False, symbol: str = "BTC-USD"):
    ctx = ctx_for(symbol=symbol, price=price, v=verdict(symbol, state, position=position),
                  a=a if a is not None else account())
    return plan(choice(action, close_only), ctx, cfg, now_ns())


def sides(p) -> list[tuple[Side, D, bool]]:
    return [(o.side, o.quantity, o.reduce_only) for o in p.orders]


# ---------------------------------------------------------------- sizing


def test_short_sizing_mirrors_the_long_one() -> None:
    # fixed_usd: order_usd worth, capped by the short's share of equity and the free margin's reserve
    assert short_quantity(D(100), D(0), D(10000), D(0), D(100), 30.0, 10.0) == D(1)
    assert short_quantity(D(100), D(-29.5), D(10000), D(2950), D(100), 30.0, 10.0) == D("0.5")  # 3000 - 2950
    assert short_quantity(D(100), D(0), D(10000), D(8950), D(100), 30.0, 10.0) == D("0.5")  # 1050 free - 1000
    assert short_quantity(D(100), D(0), D(10000), D(9000), D(100), 30.0, 10.0) == D(0)
    # a long of the symbol does not use the short's room (only the margin it takes)
    assert short_quantity(D(100), D(5), D(10000), D(500), D(100), 30.0, 10.0) == D(1)
    # all_in: the free margin over price x (1 + fee), as backtesting.py's sell(): 10000 // 100.1 = 99
    assert all_in_short_quantity(D(100), D(10000), D(0), 0.0, D(10), D(1)) == D(99)
    assert all_in_short_quantity(D(100), D(10000), D(10000), 0.0, D(10), D(1)) == D(0)


# ---------------------------------------------------------------- plan


def test_flat_and_sell_opens_a_short_sized_by_the_rules() -> None:
    p = decide(SELL, "0", SHORTS)
    assert sides(p) == [(Side.SELL, D(1), False)] and p.then is None
    assert p.signal.action is SELL
    assert p.signal.reasoning == "because; order SELL 1.000000 at ~100 (opens or adds to a short)"
    decode(OrderRequest, encode(p.order))
    # all_in: the whole free margin (whole units)
    assert sides(decide(SELL, "0", ALL_IN)) == [(Side.SELL, D(99), False)]


def test_short_and_sell_adds_within_the_position_cap() -> None:
    # short 29.5 at 100 (2950 of a 3000 cap): only 0.5 more
    p = decide(SELL, "-29.5", SHORTS, a=account(equity="10000", cash="12950", gross="2950"))
    assert sides(p) == [(Side.SELL, D("0.5"), False)]


def test_short_and_buy_covers_reduce_only() -> None:
    p = decide(BUY, "-5", SHORTS, a=account(equity="10000", cash="10500", gross="500"))
    assert sides(p) == [(Side.BUY, D(1), True)] and p.then is None  # order_usd worth: a partial cover, no flip
    assert p.signal.reasoning == "because; order BUY 1.000000 at ~100 (reduce only)"
    # a cover passes in every state, as any reducing order
    for state in TradingState:
        p = decide(BUY, "-0.25", SHORTS, state=state)
        assert p.order is not None and (p.order.side, p.order.quantity, p.order.reduce_only) == (Side.BUY, D("0.25"), True)


def test_all_in_long_and_sell_flips_to_a_short() -> None:
    """Long 10 at 100 of an account of 10000 (cash 9000): the close sells 10 (fee 1 at 10 bps),
    which leaves equity 9999, no exposure; the short is 9999 // (100 x 1.001) = 99 units."""
    p = decide(SELL, "10", ALL_IN, a=account(equity="10000", cash="9000", gross="1000"))
    assert sides(p) == [(Side.SELL, D(10), True), (Side.SELL, D(99), False)]
    close, open_ = p.orders
    assert close.client_order_id != open_.client_order_id
    assert (open_.symbol, open_.venue, open_.decision_price, open_.origin_ts) == (
        close.symbol, close.venue, close.decision_price, close.origin_ts)
    assert p.signal.action is SELL
    assert p.signal.reasoning == "because; order SELL 10 at ~100 (reduce only); then SELL 99 at ~100 (flips to a short)"


def test_all_in_short_and_buy_flips_to_a_long() -> None:
    """Short 10 at 100 (cash 11000, equity 10000): the cover pays 1000 + fee 1, cash 9999 is
    then all spent on the long: 9999 // 100.1 = 99."""
    p = decide(BUY, "-10", ALL_IN, a=account(equity="10000", cash="11000", gross="1000"))
    assert sides(p) == [(Side.BUY, D(10), True), (Side.BUY, D(99), False)]
    assert p.signal.reasoning.endswith("then BUY 99 at ~100 (flips to a long)")


def test_fixed_usd_flips_only_when_the_close_flattens() -> None:
    # long 0.5 at 100 = 50 <= order_usd: closed, and a short of order_usd worth opened
    p = decide(SELL, "0.5", SHORTS, a=account(equity="10000", cash="9950", gross="50"))
    assert sides(p) == [(Side.SELL, D("0.5"), True), (Side.SELL, D(1), False)]
    # long 5 = 500: the SELL reduces by order_usd worth, the position stays long
    assert sides(decide(SELL, "5", SHORTS, a=account(cash="9500", gross="500"))) == [(Side.SELL, D(1), True)]


def test_no_flip_when_new_risk_is_not_allowed() -> None:
    for state in (TradingState.REDUCE_ONLY, TradingState.HALTED):
        p = decide(SELL, "10", ALL_IN, state=state, a=account(cash="9000", gross="1000"))
        assert sides(p) == [(Side.SELL, D(10), True)]
        assert p.signal.reasoning.endswith(f"(reduce only); no flip to a short: the verdict is {state.value}")
    # the pipeline blocked the new risk: the close still goes
    p = decide(SELL, "10", ALL_IN, close_only=True, a=account(cash="9000", gross="1000"))
    assert sides(p) == [(Side.SELL, D(10), True)] and p.signal.reasoning.endswith("no flip to a short (close only)")
    # a short is risk-increasing: it needs ACTIVE, as a BUY does
    p = decide(SELL, "0", SHORTS, state=TradingState.REDUCE_ONLY)
    assert p.order is None
    assert p.signal.reasoning == "because; no order: SELL would increase the position and the verdict is REDUCE_ONLY"


def test_long_only_is_unchanged_when_off() -> None:
    p = decide(SELL, "0", LONG_ONLY)
    assert p.order is None and p.orders == []
    assert p.signal.reasoning == "because; no order: no long position to sell (position 0, no shorting)"
    # a SELL of a long closes it and never flips; a BUY of a short covers it (reduce only)
    long_only_all_in = ALL_IN.model_copy(update={"allow_short": False})
    assert sides(decide(SELL, "10", long_only_all_in, a=account(cash="9000", gross="1000"))) == [
        (Side.SELL, D(10), True)]
    assert sides(decide(BUY, "-10", long_only_all_in, a=account(cash="11000", gross="1000"))) == [
        (Side.BUY, D(10), True)]


def test_per_symbol_switch() -> None:
    cfg = TradingConfig.model_validate({"allow_short": False, "symbols": {
        "eth-usd": {"allow_short": True}, "SOL-USD": {"strategy": "momentum"}}})
    assert cfg.shorts("ETH-USD") and not cfg.shorts("SOL-USD") and not cfg.shorts("BTC-USD")
    assert sides(decide(SELL, "0", cfg, symbol="ETH-USD")) == [(Side.SELL, D(1), False)]
    assert decide(SELL, "0", cfg, symbol="BTC-USD").order is None
    off_here = TradingConfig.model_validate({"allow_short": True, "symbols": {"BTC-USD": {"allow_short": False}}})
    assert not off_here.shorts("BTC-USD") and off_here.shorts("ETH-USD")
    assert decide(SELL, "0", off_here, symbol="BTC-USD").order is None
    with pytest.raises(ValueError):
        TradingConfig.model_validate({"symbols": {"BTC-USD": {"allow_short": "maybe"}}})


# ---------------------------------------------------------------- the pipeline's swarm gate


def gate(action: Action, position: str, swarm: str, vote: VoteAction | None, shorts: bool = True):
    c = consensus(vote, 0.9) if vote is not None else None
    return apply(choice(action), D(position), c, None, PipelineConfig(swarm=swarm), NOW, "", shorts)[0]


def test_a_sell_to_open_is_gated_like_a_buy() -> None:
    assert gate(SELL, "0", "veto", VoteAction.BUY).action is HOLD  # a strong BUY consensus vetoes the short
    assert gate(SELL, "0", "veto", VoteAction.SELL).action is SELL
    assert gate(SELL, "0", "confirm", VoteAction.SELL).action is SELL  # confirmed by a SELL consensus
    assert gate(SELL, "0", "confirm", VoteAction.BUY).action is HOLD
    assert gate(SELL, "0", "confirm", None).action is HOLD  # confirm abstains without a consensus
    assert wants_swarm(choice(SELL), D(0), PipelineConfig(swarm="veto"), shorts=True)


def test_a_flip_blocked_by_the_swarm_still_closes() -> None:
    out = gate(SELL, "10", "veto", VoteAction.BUY)
    assert out.action is SELL and out.close_only and "close only, no flip" in out.reasoning
    out = gate(SELL, "10", "veto", VoteAction.SELL)
    assert out.action is SELL and not out.close_only
    out = gate(BUY, "-10", "confirm", None)
    assert out.action is BUY and out.close_only


def test_long_only_pipeline_is_unchanged() -> None:
    """Without shorts a SELL never needs the swarm (it reduces a long or is no order)."""
    out = gate(SELL, "0", "veto", VoteAction.BUY, shorts=False)
    assert out.action is SELL and not out.close_only and "not needed (SELL)" in out.reasoning
    out = gate(SELL, "10", "confirm", None, shorts=False)
    assert out.action is SELL and not out.close_only
    assert not wants_swarm(choice(SELL), D(0), PipelineConfig(swarm="veto"))


# ---------------------------------------------------------------- the agent on a real nats-server


async def test_the_live_agent_sends_a_flip_as_two_orders_in_stream_order(connect, running_service) -> None:
    """Long 0.5 (49.5 at 99, under order_usd): the momentum SELL closes it and opens a short
    of order_usd worth, 100 / 99 = 1.010101: two orders in ORDERS, the close first."""
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    symbol = "SHRT-USD"
    config = {"trading_agent": CONFIG["trading_agent"] | {"allow_short": True}}
    market = await FakeMarket(md).start()
    orders = await operator.collect(f"orders.submit.trading.{symbol}")
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    try:
        async with running_service("trading-agent", service.main, config, operator):
            await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol, position="0.5")))
            await risk.publish("risk.account", encode(account(equity="10000", cash="9950", gross="50")))
            await flush(risk)
            await asyncio.sleep(0.1)
            got = []
            for i, close in enumerate(["100", "99.9", "99.8", "99"]):
                await market.publish(bar(symbol, close, i))
                got.append(await next_signal(signals))
            sent = [decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data) for _ in range(2)]
    finally:
        await market.close()
    assert [s.action for s in got] == [HOLD, HOLD, HOLD, SELL]
    assert [(o.side, o.quantity, o.reduce_only) for o in sent] == [
        (Side.SELL, D("0.5"), True), (Side.SELL, D("1.010101"), False)]
    assert got[3].reasoning.endswith("order SELL 0.500000 at ~99 (reduce only); then SELL 1.010101 at ~99 (flips to a short)")
    js = operator.jetstream()
    info = await js.stream_info(ORDERS)
    # ORDERS is the session's: other tests store there too (the attack suite's probes are not
    # even orders), so only this symbol's subject is read.
    stored = [await js.get_msg(ORDERS, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    ours = [decode(OrderRequest, m.data).client_order_id for m in stored
            if m.subject == f"orders.submit.trading.{symbol}"]
    assert ours == [o.client_order_id for o in sent]  # stored once each, the close first
    assert orders.empty()


class ShortsAware(StrategyPlugin):
    """A plugin that sells only where it may go short."""

    name = "shorts_aware"

    def on_bar(self, ctx: StrategyContext) -> PluginChoice:
        if ctx.allow_short:
            return PluginChoice(SELL, 0.7, "may go short: SELL")
        return PluginChoice(HOLD, 0.0, "long only: HOLD")


async def test_plugins_are_told_whether_the_symbol_may_go_short() -> None:
    cfg = TradingConfig.model_validate({"symbols": {"ETH-USD": {"allow_short": True}}})
    decider = RuleDecider(ShortsAware(), shorts=cfg.shorts)
    on_eth = await decider.decide(ctx_for(symbol="ETH-USD", v=verdict("ETH-USD"), a=account()))
    on_btc = await decider.decide(ctx_for(symbol="BTC-USD", v=verdict("BTC-USD"), a=account()))
    assert (on_eth.action, on_btc.action) == (SELL, HOLD)
    # the agent's deciders are built with the config's switch
    deciders = service.make_deciders(cfg, {})
    assert deciders.default.shorts == cfg.shorts
    assert (await RuleDecider(ShortsAware()).decide(ctx_for(symbol="ETH-USD"))).action is HOLD  # not told: off
