"""The decision pipeline of the trading agent ([trading_agent.pipeline], pipeline.py): the
policy as pure functions (swarm confirm / veto, stale inputs, sentiment weighting,
min_confidence, reducing orders never blocked), and the agent against the real nats-server:
a published consensus changes its decision and the Signal carries the inputs and their ages;
agent.api.swarm.ask answered by a stand-in swarm, and left unanswered."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from services.contract.models import (
    Action,
    Consensus,
    OrderRequest,
    Sentiment,
    Signal,
    SwarmAskRequest,
    Vote,
    VoteAction,
    decode,
    encode,
    now_ns,
)
from services.common import caps
from services.common.bus import flush
from services.trading_agent import service
from services.trading_agent.agent import Choice, plan
from services.trading_agent.config import TradingConfig
from services.trading_agent.pipeline import PipelineConfig, apply

from tests.test_trading_agent import CONFIG, FakeMarket, allow_trading, bar, ctx_for, next_signal, verdict

BUY, SELL, HOLD = Action.BUY, Action.SELL, Action.HOLD
NOW = 1_764_000_100 * 10**9
S = 10**9
FLAT, LONG = Decimal(0), Decimal(1)


def consensus(action: VoteAction, agreement: float, age_s: float = 3.0, symbol: str = "BTC-USD",
              ts: int | None = None) -> Consensus:
    return Consensus(symbol=symbol, question="BUY?", votes=[], action=action, method="majority",
                     agreement=agreement, summary=f"{action.value} by {agreement}",
                     ts=ts if ts is not None else NOW - int(age_s * S))


def sentiment(score: float, age_s: float = 12.0, symbol: str = "BTC-USD", ts: int | None = None) -> Sentiment:
    return Sentiment(symbol=symbol, score=score, confidence=0.9, items=5, model="keywords",
                     ts=ts if ts is not None else NOW - int(age_s * S))


def choice(action: Action, confidence: float = 0.6) -> Choice:
    return Choice(action, confidence, f"strategy says {action.value}", "momentum")


def cfg(**kw: object) -> PipelineConfig:
    return PipelineConfig.model_validate(kw)


# ---------------------------------------------------------------- the policy, pure


def test_off_by_default_changes_nothing() -> None:
    assert not PipelineConfig().enabled and not TradingConfig().pipeline.enabled
    c = choice(BUY)
    out, inputs = apply(c, FLAT, consensus(VoteAction.SELL, 1.0), sentiment(-1.0), PipelineConfig(), NOW)
    assert out is c and inputs == []
    # and plan without inputs writes no `inputs` on the wire (old consumers see the same bytes)
    signal = plan(c, ctx_for(v=verdict("BTC-USD")), TradingConfig(), NOW).signal
    assert signal.inputs is None and b"inputs" not in encode(signal)


def test_config_bounds() -> None:
    with pytest.raises(ValidationError):
        cfg(swarm="maybe")
    with pytest.raises(ValidationError):
        cfg(sentiment_weight=1.5)
    with pytest.raises(ValidationError):
        cfg(min_confidence=-0.1)
    with pytest.raises(ValidationError):
        cfg(swarm_max_age_s=0)
    with pytest.raises(ValidationError):
        cfg(swarm_typo="confirm")


def test_confirm_needs_a_fresh_agreeing_consensus() -> None:
    p = cfg(swarm="confirm", swarm_min_confidence=0.7)
    out, inputs = apply(choice(BUY), FLAT, consensus(VoteAction.BUY, 0.8), None, p, NOW)
    assert (out.action, out.confidence) == (BUY, 0.6)
    assert "swarm BUY 0.80 (3.0 s old) confirms -> BUY 0.60" in out.reasoning
    assert [(i.source, i.action, i.value, i.age_s, i.effect) for i in inputs] == [
        ("swarm", "BUY", 0.8, 3.0, "confirms")]
    # too weak, disagreeing, or none at all: HOLD
    for c in (consensus(VoteAction.BUY, 0.65), consensus(VoteAction.HOLD, 0.9), consensus(VoteAction.SELL, 0.9)):
        out, inputs = apply(choice(BUY), FLAT, c, None, p, NOW)
        assert out.action is HOLD and inputs[0].effect == "does not confirm", c
    out, inputs = apply(choice(BUY), FLAT, None, None, p, NOW)
    assert out.action is HOLD and inputs == [] and "no fresh swarm consensus: HOLD (confirm abstains)" in out.reasoning


def test_veto_turns_a_buy_into_hold_only_on_a_fresh_opposite_consensus() -> None:
    p = cfg(swarm="veto", swarm_min_confidence=0.6)
    out, inputs = apply(choice(BUY), FLAT, consensus(VoteAction.SELL, 0.75), None, p, NOW)
    assert out.action is HOLD and inputs[0].effect == "vetoes" and "vetoes" in out.reasoning
    for c in (None, consensus(VoteAction.BUY, 0.9), consensus(VoteAction.HOLD, 0.9),
              consensus(VoteAction.SELL, 0.5)):  # nothing, agreeing, neutral, too weak to veto
        out, _ = apply(choice(BUY), FLAT, c, None, p, NOW)
        assert out.action is BUY, c


def test_stale_inputs_are_recorded_and_ignored() -> None:
    old_sell = consensus(VoteAction.SELL, 0.99, age_s=121)
    out, inputs = apply(choice(BUY), FLAT, old_sell, None, cfg(swarm="veto", swarm_max_age_s=120), NOW)
    assert out.action is BUY and inputs[0].effect == "stale (> 120 s): ignored" and inputs[0].age_s == 121.0
    old_buy = consensus(VoteAction.BUY, 0.99, age_s=121)
    out, inputs = apply(choice(BUY), FLAT, old_buy, None, cfg(swarm="confirm", swarm_max_age_s=120), NOW)
    assert out.action is HOLD and inputs[0].effect.startswith("stale") and "no fresh swarm consensus" in out.reasoning
    out, inputs = apply(choice(BUY, 0.5), FLAT, None, sentiment(1.0, age_s=901),
                        cfg(sentiment_weight=1.0, sentiment_max_age_s=900), NOW)
    assert out.confidence == 0.5 and inputs[0].source == "sentiment" and inputs[0].effect.startswith("stale")
    # a consensus from the future (clock skew) counts as 0 s old, never negative
    out, inputs = apply(choice(BUY), FLAT, consensus(VoteAction.BUY, 0.9, ts=NOW + S), None, cfg(swarm="confirm"), NOW)
    assert out.action is BUY and inputs[0].age_s == 0.0


def test_sentiment_scales_the_conviction_and_is_clamped() -> None:
    p = cfg(sentiment_weight=0.5)
    out, inputs = apply(choice(BUY, 0.6), FLAT, None, sentiment(0.4), p, NOW)
    assert out.confidence == pytest.approx(0.6 * 1.2) and out.action is BUY
    assert (inputs[0].value, inputs[0].age_s, inputs[0].effect) == (0.4, 12.0, "x1.20")
    assert "sentiment +0.40 (12.0 s) x1.20 -> BUY 0.72" in out.reasoning
    out, _ = apply(choice(BUY, 0.6), FLAT, None, sentiment(-0.4), p, NOW)
    assert out.confidence == pytest.approx(0.6 * 0.8)
    out, _ = apply(choice(SELL, 0.6), LONG, None, sentiment(-0.4), p, NOW)  # bearish news: a stronger sell
    assert out.confidence == pytest.approx(0.6 * 1.2)
    out, _ = apply(choice(BUY, 0.9), FLAT, None, sentiment(1.0), cfg(sentiment_weight=1.0), NOW)
    assert out.confidence == 1.0  # 0.9 x 2, clamped
    out, inputs = apply(choice(HOLD, 0.3), FLAT, None, sentiment(1.0), p, NOW)
    assert (out.action, out.confidence, inputs[0].effect) == (HOLD, 0.3, "not applied (HOLD)")


def test_min_confidence_holds_weak_decisions() -> None:
    p = cfg(min_confidence=0.5)
    assert apply(choice(BUY, 0.49), FLAT, None, None, p, NOW)[0].action is HOLD
    assert apply(choice(BUY, 0.5), FLAT, None, None, p, NOW)[0].action is BUY
    # sentiment can lift a decision over it, or drop it under
    p = cfg(min_confidence=0.5, sentiment_weight=0.5)
    assert apply(choice(BUY, 0.45), FLAT, None, sentiment(0.5), p, NOW)[0].action is BUY  # 0.45 x 1.25
    out, _ = apply(choice(BUY, 0.55), FLAT, None, sentiment(-0.5), p, NOW)  # 0.55 x 0.75
    assert out.action is HOLD and "below min_confidence 0.5: HOLD" in out.reasoning


@pytest.mark.parametrize("mode", ["confirm", "veto"])
def test_reducing_orders_are_never_blocked_by_the_swarm(mode: str) -> None:
    p = cfg(swarm=mode)
    for c in (None, consensus(VoteAction.BUY, 1.0), consensus(VoteAction.SELL, 0.1, age_s=9999)):
        out, inputs = apply(choice(SELL), LONG, c, None, p, NOW)
        assert out.action is SELL, c
        if c is not None and c.ts > NOW - 100 * S:
            assert inputs[0].effect == "not needed (SELL reduces the position)"
    # closing a short is reducing too (no shorting here, but the rule is general)
    assert apply(choice(BUY), Decimal(-1), None, None, p, NOW)[0].action is BUY
    # and with an unknown position a BUY counts as increasing
    if mode == "confirm":
        assert apply(choice(BUY), None, None, None, p, NOW)[0].action is HOLD


def test_the_reason_says_what_decided_and_plan_records_the_inputs() -> None:
    p = cfg(swarm="confirm", sentiment_weight=0.4)
    c, inputs = apply(choice(BUY, 0.6), FLAT, consensus(VoteAction.BUY, 0.8), sentiment(0.4), p, NOW)
    assert c.reasoning == ("strategy says BUY; pipeline: momentum BUY 0.60; sentiment +0.40 (12.0 s) x1.16; "
                           "swarm BUY 0.80 (3.0 s old) confirms -> BUY 0.70")
    from tests.test_trading_agent import account
    ctx = ctx_for(v=verdict("BTC-USD"))
    ctx.account = account("10000")
    proposal = plan(c, ctx, TradingConfig(), now_ns(), inputs=inputs)
    assert proposal.order is not None and proposal.signal.confidence == pytest.approx(0.696)
    wire = decode(Signal, encode(proposal.signal))
    assert [i.source for i in wire.inputs or []] == ["sentiment", "swarm"]


# ---------------------------------------------------------------- in-process, real nats-server


def pipeline_config(**pipeline: object) -> dict:
    return {"trading_agent": {**CONFIG["trading_agent"], "pipeline": pipeline}}


async def test_a_published_consensus_changes_the_decision(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    swarm, news = await connect("swarm-agent"), await connect("sentiment-agent")
    symbol = "PIPA-USD"
    market = await FakeMarket(md).start()
    orders = await operator.collect(f"orders.submit.trading.{symbol}")
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    config = pipeline_config(swarm="confirm", swarm_min_confidence=0.7, sentiment_weight=0.5)
    try:
        async with running_service("trading-agent", service.main, config, operator):
            await allow_trading(risk, symbol)
            await news.publish(f"agent.sentiment.{symbol}", encode(sentiment(0.2, age_s=5, symbol=symbol,
                                                                              ts=now_ns() - 5 * S)))
            got = []
            for i, close in enumerate(["100", "100.1", "100.2", "101"]):
                await market.publish(bar(symbol, close, i))
                got.append(await next_signal(signals))
            # momentum says BUY at the 4th bar, but no consensus: confirm abstains
            assert got[3].action is HOLD and "momentum BUY" in got[3].reasoning
            assert "no fresh swarm consensus: HOLD" in got[3].reasoning
            assert [(x.source, x.effect) for x in got[3].inputs or []] == [("sentiment", "x1.10")]
            assert orders.empty()

            published = consensus(VoteAction.BUY, 0.8, symbol=symbol, ts=now_ns() - 2 * S)
            await swarm.publish(f"agent.swarm.{symbol}", encode(published))
            await flush(swarm)
            await asyncio.sleep(0.2)
            await market.publish(bar(symbol, "101.5", 4))
            confirmed = await next_signal(signals)
            order = decode(OrderRequest, (await asyncio.wait_for(orders.get(), 5)).data)
    finally:
        await market.close()

    assert confirmed.action is BUY and order.side.value == "BUY" and order.origin_ts == confirmed.origin_ts
    assert "swarm BUY 0.80" in confirmed.reasoning and "confirms" in confirmed.reasoning
    by_source = {x.source: x for x in confirmed.inputs or []}
    swarm_in, sentiment_in = by_source["swarm"], by_source["sentiment"]
    assert (swarm_in.action, swarm_in.value, swarm_in.effect, swarm_in.ts) == ("BUY", 0.8, "confirms", published.ts)
    assert 2.0 <= swarm_in.age_s < 10.0 and 5.0 <= sentiment_in.age_s < 15.0
    assert sentiment_in.value == 0.2 and sentiment_in.effect == "x1.10"


async def test_the_agent_asks_the_swarm_and_abstains_without_an_answer(connect, running_service) -> None:
    operator, md, risk = await connect("operator"), await connect("market-data"), await connect("risk")
    swarm = await connect("swarm-agent")
    symbol = "PIPB-USD"
    market = await FakeMarket(md).start()
    signals = await operator.collect(f"agent.signal.trading.{symbol}")
    asked: list[SwarmAskRequest] = []
    answering = True

    async def responder(msg) -> None:
        request = decode(SwarmAskRequest, msg.data)
        asked.append(request)
        if answering:  # else silent: the agent's deadline passes
            await msg.respond(encode(consensus(VoteAction.BUY, 0.9, symbol=request.symbol, ts=now_ns())))

    sub = await swarm.subscribe("agent.api.swarm.ask", cb=responder)
    await flush(swarm)
    config = pipeline_config(swarm="confirm", ask_swarm=True, ask_timeout_s=0.5, swarm_max_age_s=1.0)
    try:
        async with running_service("trading-agent", service.main, config, operator):
            await allow_trading(risk, symbol)
            got = []
            for i, close in enumerate(["100", "100.1", "100.2", "101"]):
                await market.publish(bar(symbol, close, i))
                got.append(await next_signal(signals))
            assert [a.symbol for a in asked] == [symbol]  # only the BUY needed the swarm
            answered = got[3]
            await asyncio.sleep(1.1)  # the answer is now older than swarm_max_age_s
            answering = False
            await allow_trading(risk, symbol)  # the verdict stays fresh
            await market.publish(bar(symbol, "101.6", 4))
            unanswered = await next_signal(signals)
    finally:
        await sub.unsubscribe()
        await market.close()

    assert answered.action is BUY and "swarm BUY 0.90" in answered.reasoning
    assert [(x.source, x.action, x.effect) for x in answered.inputs or []] == [("swarm", "BUY", "confirms")]
    assert len(asked) == 2
    assert unanswered.action is HOLD and "asked, no answer within 0.5 s" in unanswered.reasoning
    assert [(x.source, x.effect) for x in unanswered.inputs or []] == [("swarm", "stale (> 1 s): ignored")]


async def test_concurrent_decisions_share_one_swarm_ask(connect, service_bus) -> None:
    swarm = await connect("swarm-agent")
    asks = 0

    async def responder(msg) -> None:
        nonlocal asks
        asks += 1
        await asyncio.sleep(0.3)  # a swarm takes its time: both decisions wait for this one answer
        await msg.respond(encode(consensus(VoteAction.BUY, 0.9, symbol="PIPC-USD", ts=now_ns())))

    sub = await swarm.subscribe("agent.api.swarm.ask", cb=responder)
    await flush(swarm)
    cfg_ = TradingConfig.model_validate({"pipeline": {"swarm": "confirm", "ask_swarm": True, "ask_timeout_s": 2}})
    svc = service.TradingService(await service_bus("trading-agent"), cfg_, service.RuleDecider(
        service.make_strategy("momentum", cfg_)))
    ctx = ctx_for("PIPC-USD", v=verdict("PIPC-USD"))
    try:
        (a, _), (b, _) = await asyncio.gather(svc.weigh(choice(BUY), ctx), svc.weigh(choice(BUY), ctx))
        assert asks == 1 and a.action is BUY and b.action is BUY and "confirms" in a.reasoning
        assert svc.context.consensus["PIPC-USD"].agreement == 0.9  # kept for the next decisions
        c, _ = await svc.weigh(choice(BUY), ctx)  # fresh now: no new ask
        assert asks == 1 and c.action is BUY
    finally:
        await sub.unsubscribe()


async def test_an_input_dated_far_ahead_is_refused_and_hides_no_later_one(connect, service_bus) -> None:
    """The live caches keep the latest by `ts` (`ts >=`). A consensus (swarm-agent's user), a
    sentiment (sentiment-agent's), a verdict or the account (risk's) dated years ahead was kept
    and then hid every genuine later one for good (and counted as 0 s old: fresh forever, so a
    stolen swarm credential could veto every BUY until the agent restarted). Now one dated more
    than FUTURE_TOLERANCE_NS ahead of the agent's clock is refused on errors.trading-agent."""
    from tests.test_trading_agent import account

    operator = await connect("operator")
    errors = await operator.collect("errors.trading-agent")
    swarm, news, risk = await connect("swarm-agent"), await connect("sentiment-agent"), await connect("risk")
    cfg_ = TradingConfig.model_validate({"pipeline": {"swarm": "veto"}})
    svc = service.TradingService(await service_bus("trading-agent"), cfg_, service.RuleDecider(
        service.make_strategy("momentum", cfg_)))
    await svc.context.subscribe()
    symbol, far = "PIPF-USD", now_ns() + 10 * 365 * 86400 * S
    await swarm.publish(f"agent.swarm.{symbol}", encode(consensus(VoteAction.SELL, 1.0, symbol=symbol, ts=far)))
    await news.publish(f"agent.sentiment.{symbol}", encode(sentiment(-1.0, symbol=symbol, ts=far)))
    await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol, ts=far)))
    await risk.publish("risk.account", encode(account().model_copy(update={"ts": far})))
    for nc in (swarm, news, risk):
        await flush(nc)
    reasons = [json.loads((await asyncio.wait_for(errors.get(), 5)).data)["reason"] for _ in range(4)]
    assert all("ahead of this clock" in r for r in reasons), reasons

    genuine = consensus(VoteAction.BUY, 0.9, symbol=symbol, ts=now_ns())
    await swarm.publish(f"agent.swarm.{symbol}", encode(genuine))
    await news.publish(f"agent.sentiment.{symbol}", encode(sentiment(0.5, symbol=symbol, ts=now_ns())))
    await risk.publish(f"risk.verdict.{symbol}", encode(verdict(symbol)))
    await risk.publish("risk.account", encode(account()))
    for nc in (swarm, news, risk):
        await flush(nc)
    await asyncio.sleep(0.2)
    ctx = svc.context
    assert ctx.consensus[symbol].action is VoteAction.BUY and ctx.sentiments[symbol].score == 0.5
    assert ctx.verdicts[symbol].ts < far and ctx.account is not None and ctx.account.ts < far
    out, _ = apply(choice(BUY), FLAT, ctx.consensus[symbol], None, cfg_.pipeline, now_ns())
    assert out.action is BUY  # no veto from the future
    # and an answer of agent.api.swarm.ask dated far ahead is refused the same way
    await ctx.on_consensus(consensus(VoteAction.SELL, 1.0, symbol=symbol, ts=far))
    assert ctx.consensus[symbol].action is VoteAction.BUY



async def test_an_oversized_sentiment_or_consensus_is_refused(connect, service_bus) -> None:
    """Sentiment's sources and model, Consensus's question, summary and votes (and each vote's
    text) had no bound: a stolen sentiment-agent or swarm-agent credential could have the agent
    keep up to the server's max payload (1 MB) per symbol. The contract bounds them now
    (models.py NAME_MAX_CHARS ...): one beyond is refused, with the field, on errors.trading-agent."""
    operator = await connect("operator")
    errors = await operator.collect("errors.trading-agent")
    swarm, news = await connect("swarm-agent"), await connect("sentiment-agent")
    cfg_ = TradingConfig.model_validate({"pipeline": {"swarm": "veto"}})
    svc = service.TradingService(await service_bus("trading-agent"), cfg_, service.RuleDecider(
        service.make_strategy("momentum", cfg_)))
    await svc.context.subscribe()
    for nc in (swarm, news):  # each publisher's round trip first (see the test above)
        await nc.flush()
    symbol = "PIPO-USD"
    s = json.loads(encode(sentiment(0.5, symbol=symbol, ts=now_ns())))
    c = json.loads(encode(consensus(VoteAction.SELL, 1.0, symbol=symbol, ts=now_ns())))
    v = {"model": "offline-momentum", "action": "SELL", "confidence": 0.9, "latency_ms": 1.0}
    oversized_sentiments = {
        "sources": s | {"sources": ["feed:news.example"] * 33},
        "sources.0": s | {"sources": ["x" * 257]},
        "model": s | {"model": "m" * 100_000},
    }
    oversized_consensus = {
        "question": c | {"question": "q" * 2001},
        "summary": c | {"summary": "s" * 100_000},
        "votes": c | {"votes": [v] * 33},
        "votes.0.reasoning": c | {"votes": [v | {"reasoning": "r" * 2001}]},
        "votes.0.error": c | {"votes": [v | {"action": "ABSTAIN", "error": "e" * 1001}]},
    }
    for message in oversized_sentiments.values():
        await news.publish(f"agent.sentiment.{symbol}", json.dumps(message).encode())
    for message in oversized_consensus.values():
        await swarm.publish(f"agent.swarm.{symbol}", json.dumps(message).encode())
    for nc in (swarm, news):
        await flush(nc)
    n = len(oversized_sentiments) + len(oversized_consensus)
    reasons = [json.loads((await asyncio.wait_for(errors.get(), 5)).data)["reason"] for _ in range(n)]
    for field in [*oversized_sentiments, *oversized_consensus]:
        assert any(r.startswith(f"{field}: ") and "at most" in r for r in reasons), (field, reasons)
    assert symbol not in svc.context.sentiments and symbol not in svc.context.consensus

    # genuine ones, at the bounds, still pass
    at_bounds = c | {"question": "q" * 2000, "summary": "s" * 4000,
                     "votes": [v | {"model": "m" * 256, "reasoning": "r" * 2000}] * 32}
    await swarm.publish(f"agent.swarm.{symbol}", json.dumps(at_bounds).encode())
    await news.publish(f"agent.sentiment.{symbol}", json.dumps(s | {"sources": ["x" * 256] * 32}).encode())
    for nc in (swarm, news):
        await flush(nc)
    for _ in range(50):
        if symbol in svc.context.sentiments and symbol in svc.context.consensus:
            break
        await asyncio.sleep(0.05)
    # kept (a consensus without its votes and words: test_the_agent_keeps_a_consensus_without_its_votes_and_words)
    assert symbol in svc.context.consensus and len(svc.context.sentiments[symbol].sources) == 32
    assert errors.empty()


async def test_past_the_symbol_cap_a_new_symbol_is_refused_and_a_known_one_updates(
        connect, service_bus, monkeypatch) -> None:
    """The agent kept the latest sentiment and consensus of every symbol named on the bus: one
    stolen credential publishing made-up symbols grew them without end. Now each keeps at most
    caps.MAX_SYMBOLS symbols; a new one beyond is refused on errors.trading-agent, the agent
    carries on and the symbols it keeps still update."""
    monkeypatch.setattr(caps, "MAX_SYMBOLS", 2)
    operator = await connect("operator")
    errors = await operator.collect("errors.trading-agent")
    swarm, news = await connect("swarm-agent"), await connect("sentiment-agent")
    cfg_ = TradingConfig.model_validate({"pipeline": {"swarm": "veto"}})
    svc = service.TradingService(await service_bus("trading-agent"), cfg_, service.RuleDecider(
        service.make_strategy("momentum", cfg_)))
    await svc.context.subscribe()
    for nc in (swarm, news):
        await nc.flush()
    kept, new = ["PIPK-USD", "PIPL-USD"], "PIPM-USD"
    for symbol in [*kept, new]:
        await news.publish(f"agent.sentiment.{symbol}", encode(sentiment(0.1, symbol=symbol, ts=now_ns())))
        await swarm.publish(f"agent.swarm.{symbol}", encode(consensus(VoteAction.SELL, 0.5, symbol=symbol,
                                                                      ts=now_ns())))
    for nc in (swarm, news):
        await flush(nc)
    events = [json.loads((await asyncio.wait_for(errors.get(), 5)).data) for _ in range(2)]
    assert sorted(e["subject"] for e in events) == [f"agent.sentiment.{new}", f"agent.swarm.{new}"]
    assert all(f"symbol {new} refused" in e["reason"] and "MAX_SYMBOLS 2" in e["reason"] for e in events), events

    await news.publish(f"agent.sentiment.{kept[0]}", encode(sentiment(0.7, symbol=kept[0], ts=now_ns())))
    await swarm.publish(f"agent.swarm.{kept[0]}", encode(consensus(VoteAction.BUY, 0.9, symbol=kept[0],
                                                                   ts=now_ns())))
    for nc in (swarm, news):
        await flush(nc)
    ctx = svc.context
    for _ in range(50):
        if ctx.sentiments[kept[0]].score == 0.7 and ctx.consensus[kept[0]].action is VoteAction.BUY:
            break
        await asyncio.sleep(0.05)
    assert ctx.sentiments[kept[0]].score == 0.7 and ctx.consensus[kept[0]].action is VoteAction.BUY
    assert sorted(ctx.sentiments) == sorted(ctx.consensus) == kept
    # an agent.api.swarm.ask answer for a new symbol is refused the same way
    await ctx.on_consensus(consensus(VoteAction.BUY, 0.9, symbol="PIPN-USD", ts=now_ns()))
    event = json.loads((await asyncio.wait_for(errors.get(), 5)).data)
    assert event["subject"] == "agent.api.swarm.ask" and "symbol PIPN-USD refused" in event["reason"]
    assert sorted(ctx.consensus) == kept


async def test_the_agent_keeps_a_consensus_without_its_votes_and_words() -> None:
    """The pipeline reads a consensus's action, agreement and ts only: the rest (up to 32 votes
    of 2,000-character reasonings, the question, the summary) is not kept per symbol."""
    ctx = service.ContextSource(None, TradingConfig.model_validate({"pipeline": {"swarm": "veto"}}))  # type: ignore[arg-type]
    vote = Vote(model="m", action=VoteAction.BUY, confidence=0.9, reasoning="r" * 2000, latency_ms=1.0)
    full = consensus(VoteAction.BUY, 0.9, symbol="PIPS-USD", ts=now_ns()).model_copy(update={"votes": [vote] * 32})
    await ctx.on_consensus(full)
    kept = ctx.consensus["PIPS-USD"]
    assert (kept.action, kept.agreement, kept.ts, kept.method) == (full.action, full.agreement, full.ts, full.method)
    assert (kept.question, kept.summary, kept.votes) == ("", "", [])
