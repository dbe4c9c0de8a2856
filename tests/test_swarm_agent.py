"""Swarm agent: the consensus methods (majority, weighted, quorum, abstentions), the
offline and LLM models, timeouts and failures as ABSTAIN (with latency, cost, error), and
the agent in-process against the real nats-server with a fake md.api.history (asked, and
on a price alert by itself)."""

from __future__ import annotations

import asyncio
import json
import socket
from decimal import Decimal

import pytest

from services.common import caps
from services.common.bus import flush
from services.common.llm import Decision, DecisionRequest, LLMConfig
from services.contract.models import (
    NAME_MAX_CHARS,
    REASONING_MAX_CHARS,
    SUMMARY_MAX_CHARS,
    VOTE_ERROR_MAX_CHARS,
    Bar,
    Consensus,
    PriceAlert,
    Sentiment,
    Vote,
    VoteAction,
    decode,
    encode,
    now_ns,
)
from services.swarm_agent import service
from services.swarm_agent.config import SwarmConfig
from services.swarm_agent.consensus import decide, summarize
from services.swarm_agent.llm import LLMModel
from services.swarm_agent.model import NoData, Opinion, ask_models
from services.swarm_agent.offline import LatestSentiment, MeanReversionModel, MomentumModel, SentimentModel

BUY, SELL, HOLD, ABSTAIN = VoteAction.BUY, VoteAction.SELL, VoteAction.HOLD, VoteAction.ABSTAIN


def vote(action: VoteAction, confidence: float = 0.5, model: str = "m") -> Vote:
    return Vote(model=model, action=action, confidence=confidence, latency_ms=1.0,
                error="failed" if action is ABSTAIN else None)


# ---------------------------------------------------------------- consensus


def test_majority() -> None:
    out = decide([vote(BUY), vote(BUY), vote(SELL)], "majority")
    assert (out.action, out.agreement) == (BUY, 0.6667)


def test_majority_tie_is_hold_and_abstentions_do_not_count() -> None:
    assert decide([vote(BUY), vote(SELL)], "majority").action is HOLD
    out = decide([vote(SELL), vote(ABSTAIN), vote(ABSTAIN)], "majority")
    assert (out.action, out.agreement) == (SELL, 1.0)


def test_no_votes_at_all_is_abstain() -> None:
    for method in ("majority", "weighted", "quorum"):
        assert decide([vote(ABSTAIN), vote(ABSTAIN)], method).action is ABSTAIN
        assert decide([], method).action is ABSTAIN


def test_weighted_sums_confidence() -> None:
    # two weak BUYs (0.2 + 0.3) lose to one strong SELL (0.9)
    out = decide([vote(BUY, 0.2), vote(BUY, 0.3), vote(SELL, 0.9)], "weighted")
    assert (out.action, out.agreement) == (SELL, round(0.9 / 1.4, 4))
    assert decide([vote(BUY, 0.5), vote(SELL, 0.5)], "weighted").action is HOLD  # tie
    assert decide([vote(BUY, 0.0), vote(SELL, 0.0)], "weighted").action is HOLD


def test_quorum_counts_every_model() -> None:
    votes = [vote(BUY), vote(BUY), vote(ABSTAIN)]
    # 2 of 3 models = 0.667
    assert decide(votes, "quorum", quorum=0.6).action is BUY
    assert decide(votes, "quorum", quorum=0.7).action is HOLD
    assert decide(votes, "quorum", quorum=2 / 3).action is BUY  # exactly at the quorum
    out = decide([vote(BUY), vote(ABSTAIN), vote(ABSTAIN)], "quorum", quorum=0.5)
    assert (out.action, out.agreement) == (HOLD, 0.0)  # majority says BUY, but 1 of 3 < 0.5
    assert decide([vote(BUY), vote(SELL), vote(HOLD)], "quorum", quorum=0.3).action is HOLD  # tie


def test_unknown_method() -> None:
    with pytest.raises(ValueError):
        decide([vote(BUY)], "unanimous")


def test_summary_names_every_vote() -> None:
    votes = [vote(BUY, 0.8, "a"), vote(ABSTAIN, 0, "b")]
    text = summarize(votes, decide(votes, "majority"), "majority")
    assert text == "BUY by majority (agreement 1.00): a BUY 0.80, b ABSTAIN (failed)"


# ---------------------------------------------------------------- models


def bars(closes: list[str], symbol: str = "BTC-USD") -> list[Bar]:
    return [
        Bar(venue="sim", symbol=symbol, interval="1s", open=Decimal(c), high=Decimal(c), low=Decimal(c),
            close=Decimal(c), volume=Decimal(1), trades=1, start_ts=i * 10**9, end_ts=(i + 1) * 10**9)
        for i, c in enumerate(closes)
    ]


def history_of(closes: list[str]):
    async def history(symbol: str) -> list[Bar]:
        return bars(closes, symbol)

    return history


async def test_momentum_model() -> None:
    m = MomentumModel(history_of(["100", "100.05", "100.1"]), threshold_pct=0.05)
    assert (await m.ask("BTC-USD", "")).action is BUY
    o = await MomentumModel(history_of(["100", "99.9"]), 0.05).ask("BTC-USD", "")
    assert (o.action, o.confidence) == (SELL, 1.0)
    assert (await MomentumModel(history_of(["100", "100.01"]), 0.05).ask("BTC-USD", "")).action is HOLD
    with pytest.raises(NoData):
        await MomentumModel(history_of(["100"]), 0.05).ask("BTC-USD", "")


async def test_meanrev_model_fades_a_stretch() -> None:
    # mean 101, last 103: +1.98% above the mean -> SELL
    o = await MeanReversionModel(history_of(["100", "100", "101", "103"]), stretch_pct=0.5).ask("BTC-USD", "")
    assert o.action is SELL and o.confidence == 1.0
    o = await MeanReversionModel(history_of(["100", "100", "99", "97"]), stretch_pct=0.5).ask("BTC-USD", "")
    assert o.action is BUY
    o = await MeanReversionModel(history_of(["100", "100.1"]), stretch_pct=0.5).ask("BTC-USD", "")
    assert o.action is HOLD


async def test_sentiment_model() -> None:
    latest = LatestSentiment()
    m = SentimentModel(latest, threshold=0.2, max_age_s=60)
    with pytest.raises(NoData):
        await m.ask("BTC-USD", "")
    latest.update(Sentiment(symbol="BTC-USD", score=0.6, confidence=0.5, items=3, model="x", ts=now_ns()))
    o = await m.ask("BTC-USD", "")
    assert (o.action, o.confidence) == (BUY, 0.3)
    latest.update(Sentiment(symbol="BTC-USD", score=-0.1, confidence=0.5, items=3, model="x", ts=now_ns()))
    assert (await m.ask("BTC-USD", "")).action is HOLD
    latest.update(Sentiment(symbol="BTC-USD", score=-0.9, confidence=0.5, items=3, model="x", ts=now_ns()), now=-100)
    with pytest.raises(NoData, match="stale"):
        await m.ask("BTC-USD", "")


async def test_failing_and_slow_models_abstain_in_parallel() -> None:
    class Slow:
        name = "slow"

        async def ask(self, symbol: str, question: str) -> Opinion:
            await asyncio.sleep(10)
            raise AssertionError("not reached")

    class Broken:
        name = "broken"

        async def ask(self, symbol: str, question: str) -> Opinion:
            raise RuntimeError("model exploded")

    class Fine:
        name = "fine"

        async def ask(self, symbol: str, question: str) -> Opinion:
            return Opinion(BUY, 1.7, "sure")  # confidence clamped to 1

    start = asyncio.get_running_loop().time()
    votes = await ask_models([Slow(), Broken(), Fine()], "BTC-USD", "?", [0.2] * 3)
    assert asyncio.get_running_loop().time() - start < 1.0
    assert [(v.model, v.action) for v in votes] == [("slow", ABSTAIN), ("broken", ABSTAIN), ("fine", BUY)]
    assert votes[0].error == "timeout after 0.2s" and votes[0].latency_ms >= 150
    assert votes[1].error == "model exploded"
    assert votes[2].confidence == 1.0 and votes[2].error is None


def test_config_models_must_be_known_and_distinct() -> None:
    with pytest.raises(ValueError):
        SwarmConfig(models=["offline-momentum", "offline-momentum"])
    with pytest.raises(ValueError):
        SwarmConfig(models=[])
    with pytest.raises(ValueError, match="unknown swarm model"):
        service.build_models(SwarmConfig(models=["gpt-7"]), history_of([]), LatestSentiment(), LLMConfig())
    models = service.build_models(SwarmConfig(models=["offline-meanrev", "local"]), history_of([]),
                                  LatestSentiment(), LLM_CONFIG)
    assert [m.name for m in models] == ["offline-meanrev", "local:m"] and isinstance(models[1], LLMModel)


# ---------------------------------------------------------------- LLM members


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# An OpenAI-compatible endpoint where nothing listens: every call fails to connect.
LLM_CONFIG = LLMConfig.model_validate({
    "max_retries": 0,
    "endpoints": {"local": {"kind": "openai_compatible", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                            "model": "m", "api_key_env": ""}},
    "prices": {"m": {"input": "1", "output": "5"}},
})


class FakeProvider:
    name = "fake:m"

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.requests: list[DecisionRequest] = []

    async def decide(self, request: DecisionRequest) -> Decision:
        self.requests.append(request)
        return self.decision


async def test_llm_member_votes_with_cost_and_sees_bars_and_sentiment() -> None:
    latest = LatestSentiment()
    latest.update(Sentiment(symbol="BTC-USD", score=0.5, confidence=0.4, items=2, model="x", ts=now_ns()))
    answer = Decision(action="BUY", conviction=0.9, confidence=0.9, reasoning="trend", model="fake:m",
                      cost_usd=0.0031, latency_ms=900.0)
    provider = FakeProvider(answer)
    model = LLMModel(provider, history_of(["100", "101"]), latest, timeout_s=7)
    (v,) = await ask_models([model], "BTC-USD", "buy?", [8])
    assert (v.model, v.action, v.confidence, v.cost_usd, v.error, v.reasoning) == ("fake:m", BUY, 0.9, 0.0031, None,
                                                                                 "trend")
    (req,) = provider.requests
    assert (req.agent, req.symbol, req.timeout_s) == ("swarm", "BTC-USD", 7)
    assert "Question: buy?" in req.prompt and "101, 1" in req.prompt and "score +0.500" in req.prompt


async def test_llm_member_failure_is_an_abstention_with_error_and_cost() -> None:
    failed = Decision.abstain("fake:m", "unparsable answer (stop: stop): no JSON object", cost_usd=0.002)
    model = LLMModel(FakeProvider(failed), history_of([]), LatestSentiment(), 5)
    (v,) = await ask_models([model], "BTC-USD", "?", [6])
    assert (v.action, v.confidence, v.cost_usd) == (ABSTAIN, 0.0, 0.002) and "unparsable" in v.error
    assert "(unavailable" not in v.reasoning


# ---------------------------------------------------------------- in-process, real nats-server

CONFIG = {"swarm_agent": {"method": "majority", "timeout_s": 1.0, "history_limit": 30,
                          "momentum_threshold_pct": 0.05, "meanrev_stretch_pct": 0.1}}


async def test_ask_returns_consensus_of_three_votes(connect, running_service) -> None:
    operator, md, sentiment = await connect("operator"), await connect("market-data"), await connect("sentiment-agent")
    history_requests: list[dict] = []

    async def history_api(msg) -> None:  # a fake market-data
        request = json.loads(msg.data)
        history_requests.append(request)
        if request["symbol"] != "SWMA-USD":
            await msg.respond(b'{"error": {"code": "unknown_symbol", "message": "no such symbol"}}')
            return
        closes = [str(100 + i) for i in range(request["limit"])]  # steadily rising
        await msg.respond(json.dumps({"bars": [json.loads(encode(b)) for b in bars(closes, "SWMA-USD")]}).encode())

    sub = await md.subscribe("md.api.history", cb=history_api)
    published = await operator.collect("agent.swarm.>")
    try:
        async with running_service("swarm-agent", service.main, CONFIG, operator):
            s = Sentiment(symbol="SWMA-USD", score=0.6, confidence=0.5, items=3, model="offline-lexicon", ts=now_ns())
            await sentiment.publish("agent.sentiment.SWMA-USD", encode(s))
            await flush(sentiment)
            for _ in range(50):  # until the swarm has seen the sentiment
                reply = await operator.request("agent.api.swarm.ask", b'{"symbol": "SWMA-USD"}', timeout=3)
                consensus = decode(Consensus, reply.data)
                if consensus.votes[2].action is not ABSTAIN:
                    break
                await asyncio.sleep(0.05)

            # Nothing known about SWMB-USD: every model abstains, with its error.
            ask = b'{"symbol": "SWMB-USD", "question": "buy?"}'
            reply = await operator.request("agent.api.swarm.ask", ask, timeout=3)
            unknown = decode(Consensus, reply.data)
            bad = json.loads((await operator.request("agent.api.swarm.ask", b'{"symbol": "a.b"}', timeout=3)).data)
            pub = decode(Consensus, (await asyncio.wait_for(published.get(), 3)).data)
    finally:
        await sub.unsubscribe()

    assert [(v.model, v.action) for v in consensus.votes] == [
        ("offline-momentum", BUY),  # +29% over the bars
        ("offline-meanrev", SELL),  # far above the mean: fade it
        ("offline-sentiment", BUY),  # score 0.6
    ]
    assert (consensus.action, consensus.method, consensus.agreement) == (BUY, "majority", 0.6667)
    assert consensus.question == "BUY, SELL or HOLD SWMA-USD now?"
    assert all(v.latency_ms >= 0 and v.reasoning for v in consensus.votes)
    assert history_requests[0] == {"symbol": "SWMA-USD", "interval": "1s", "limit": 30}
    assert pub.symbol == "SWMA-USD" and len(pub.votes) == 3  # also published on agent.swarm.<symbol>

    assert unknown.action is ABSTAIN and unknown.question == "buy?"
    assert [v.action for v in unknown.votes] == [ABSTAIN] * 3
    assert "unknown_symbol" in unknown.votes[0].error and "no sentiment" in unknown.votes[2].error
    assert bad["error"]["code"] == "bad_request"


async def test_an_alert_makes_the_swarm_ask_by_itself(connect, running_service) -> None:
    operator, md = await connect("operator"), await connect("market-data")

    async def history_api(msg) -> None:
        closes = [str(100 + i) for i in range(json.loads(msg.data)["limit"])]
        await msg.respond(json.dumps({"bars": [json.loads(encode(b)) for b in bars(closes, "SWMC-USD")]}).encode())

    sub = await md.subscribe("md.api.history", cb=history_api)
    published = await operator.collect("agent.swarm.SWMC-USD")
    config = {"swarm_agent": {**CONFIG["swarm_agent"], "models": ["offline-momentum", "offline-meanrev", "local"],
                              "llm_timeout_s": 3.0},
              "llm": LLM_CONFIG.model_dump(mode="json")}
    try:
        async with running_service("swarm-agent", service.main, config, operator):
            alert = PriceAlert(venue="sim", symbol="SWMC-USD", direction="UP", change_pct=2.5, threshold_pct=2.0,
                               window_s=60, from_price=Decimal("100"), price=Decimal("102.5"), ts=now_ns())
            await md.publish("md.alert.SWMC-USD", encode(alert))
            consensus = decode(Consensus, (await asyncio.wait_for(published.get(), 10)).data)
    finally:
        await sub.unsubscribe()
    assert consensus.question == ("SWMC-USD moved +2.500% (UP) within 60s, 100 -> 102.5. "
                                  "BUY, SELL or HOLD SWMC-USD now?")
    assert [(v.model, v.action) for v in consensus.votes] == [
        ("offline-momentum", BUY), ("offline-meanrev", SELL), ("local:m", ABSTAIN)]
    llm_vote = consensus.votes[2]
    assert "connection error" in llm_vote.error and llm_vote.cost_usd == 0.0 and llm_vote.latency_ms > 0
    assert consensus.action is HOLD  # one BUY, one SELL, one abstention: a tie
    assert "local:m ABSTAIN (connection error" in consensus.summary


async def test_a_burst_of_alerts_starts_at_most_max_alert_asks_one_per_symbol(
        connect, running_service, monkeypatch) -> None:
    """Every alert started an ask (a model call per member) at once: a burst of alerts (a
    crash moving every symbol, or a stolen market-data credential's) started as many. Now one
    ask per symbol is under way at a time (a second alert of it is skipped: its answer is
    coming) and at most max_alert_asks in all; an alert beyond is told on errors.swarm-agent."""
    release = asyncio.Event()
    asked: list[str] = []

    async def slow_ask(self, request):  # noqa: ANN001, ANN202 (holds each ask until released)
        asked.append(request.symbol)
        await release.wait()
        return await original(self, request)

    original = service.Swarm.ask
    monkeypatch.setattr(service.Swarm, "ask", slow_ask)
    operator, md = await connect("operator"), await connect("market-data")
    errors = await operator.collect("errors.swarm-agent")
    published = await operator.collect("agent.swarm.>")
    config = {"swarm_agent": {**CONFIG["swarm_agent"], "max_alert_asks": 2}}

    def alert(symbol: str) -> bytes:
        return encode(PriceAlert(venue="sim", symbol=symbol, direction="UP", change_pct=2.5, threshold_pct=2.0,
                                 window_s=60, from_price=Decimal("100"), price=Decimal("102.5"), ts=now_ns()))

    async with running_service("swarm-agent", service.main, config, operator):
        for symbol in ("SWBA-USD", "SWBA-USD", "SWBB-USD", "SWBC-USD"):
            await md.publish(f"md.alert.{symbol}", alert(symbol))
        await flush(md)
        told = json.loads((await asyncio.wait_for(errors.get(), 5)).data)
        assert sorted(asked) == ["SWBA-USD", "SWBB-USD"], asked
        release.set()
        answered = sorted([decode(Consensus, (await asyncio.wait_for(published.get(), 10)).data).symbol
                           for _ in range(2)])
        await md.publish("md.alert.SWBC-USD", alert("SWBC-USD"))  # room again
        again = decode(Consensus, (await asyncio.wait_for(published.get(), 10)).data)
    assert told["subject"] == "md.alert.SWBC-USD", told
    assert told["reason"] == "alert of SWBC-USD not asked about: 2 asks on alerts under way (max_alert_asks 2)"
    assert answered == ["SWBA-USD", "SWBB-USD"] and again.symbol == "SWBC-USD"
    assert asked == ["SWBA-USD", "SWBB-USD", "SWBC-USD"] and errors.empty()


async def test_a_slow_ask_holds_up_no_other_asker(connect, running_service, monkeypatch) -> None:
    """agent.api.swarm.ask waits for the slowest member (an LLM: up to llm_timeout_s): answered
    one at a time, every other asker waited behind it (the trading agent gives up after its
    own timeout). Up to max_concurrent_asks are answered at once; beyond, a request waits."""
    release = asyncio.Event()

    async def slow_for_one(self, request):  # noqa: ANN001, ANN202
        if request.symbol.startswith("SWSLOW"):
            await release.wait()
        return await original(self, request)

    original = service.Swarm.ask
    monkeypatch.setattr(service.Swarm, "ask", slow_for_one)
    operator = await connect("operator")
    config = {"swarm_agent": {**CONFIG["swarm_agent"], "max_concurrent_asks": 2}}
    async with running_service("swarm-agent", service.main, config, operator):
        slow = asyncio.create_task(operator.request("agent.api.swarm.ask", b'{"symbol": "SWSLOWA-USD"}', timeout=10))
        await asyncio.sleep(0.2)
        quick = await operator.request("agent.api.swarm.ask", b'{"symbol": "SWSQ-USD"}', timeout=3)
        assert decode(Consensus, quick.data).symbol == "SWSQ-USD" and not slow.done()
        # Two slow ones fill the room: the next ask waits until one is answered.
        slower = asyncio.create_task(operator.request("agent.api.swarm.ask", b'{"symbol": "SWSLOWB-USD"}', timeout=10))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(operator.request("agent.api.swarm.ask", b'{"symbol": "SWSQ-USD"}', timeout=10))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        release.set()
        answered = [decode(Consensus, (await t).data).symbol for t in (slow, slower, waiting)]
    assert answered == ["SWSLOWA-USD", "SWSLOWB-USD", "SWSQ-USD"]


async def test_past_the_symbol_cap_the_swarm_keeps_no_new_sentiment(connect, running_service, monkeypatch) -> None:
    """The swarm kept the latest sentiment of every symbol named on agent.sentiment.>, each as
    large as the server let it be: one stolen sentiment-agent credential publishing made-up
    symbols grew it without end. Now an oversized Sentiment is refused (the contract's bounds)
    and at most caps.MAX_SYMBOLS symbols are kept: a new one beyond is refused on
    errors.swarm-agent, a kept one still updates."""
    monkeypatch.setattr(caps, "MAX_SYMBOLS", 2)
    operator, news = await connect("operator"), await connect("sentiment-agent")
    errors = await operator.collect("errors.swarm-agent")
    config = {"swarm_agent": {**CONFIG["swarm_agent"], "models": ["offline-sentiment"]}}

    def sentiment(symbol: str, score: float) -> bytes:
        return encode(Sentiment(symbol=symbol, score=score, confidence=0.5, items=3, model="offline-lexicon",
                                ts=now_ns()))

    async def ask(symbol: str) -> Vote:
        reply = await operator.request("agent.api.swarm.ask", json.dumps({"symbol": symbol}).encode(), timeout=3)
        return decode(Consensus, reply.data).votes[0]

    async def refusal() -> dict:
        return json.loads((await asyncio.wait_for(errors.get(), 5)).data)

    async with running_service("swarm-agent", service.main, config, operator):
        await news.flush()  # the publisher's round trip first (tests/test_decision_pipeline.py)
        for symbol in ("SWMK-USD", "SWML-USD", "SWMM-USD"):
            await news.publish(f"agent.sentiment.{symbol}", sentiment(symbol, 0.6))
        oversized = json.loads(sentiment("SWMO-USD", 0.6)) | {"sources": ["feed:news.example"] * 33}
        await news.publish("agent.sentiment.SWMO-USD", json.dumps(oversized).encode())
        await flush(news)
        capped, too_big = await refusal(), await refusal()
        assert capped["subject"] == "agent.sentiment.SWMM-USD" and "MAX_SYMBOLS 2" in capped["reason"], capped
        assert too_big["subject"] == "agent.sentiment.SWMO-USD", too_big
        assert too_big["reason"].startswith("sources: List should have at most 32 items"), too_big

        await news.publish("agent.sentiment.SWMK-USD", sentiment("SWMK-USD", -0.6))  # a kept symbol updates
        await news.publish("agent.sentiment.SWMN-USD", sentiment("SWMN-USD", 0.6))  # refused (and in order)
        await flush(news)
        assert (await refusal())["subject"] == "agent.sentiment.SWMN-USD"
        kept, updated, refused = await ask("SWML-USD"), await ask("SWMK-USD"), await ask("SWMM-USD")
    assert kept.action is BUY and "+0.600" in kept.reasoning
    assert updated.action is SELL and "-0.600" in updated.reasoning
    assert refused.action is ABSTAIN and "no sentiment for SWMM-USD" in (refused.error or "")


async def test_a_members_long_text_is_cut_to_the_contract_not_refused() -> None:
    """Vote.model, .reasoning, .error and Consensus.summary are bounded now (models.py): the
    swarm cuts what a member says to fit, so its own Consensus is never refused."""

    class Verbose:
        name = "v" * 300

        async def ask(self, symbol: str, question: str) -> Opinion:
            return Opinion(BUY, 0.9, "r" * 5000)

    class Failing:
        name = "failing"

        async def ask(self, symbol: str, question: str) -> Opinion:
            raise RuntimeError("e" * 5000)

    votes = await ask_models([Verbose(), Failing()], "BTC-USD", "?", [1.0, 1.0])
    assert [len(votes[0].model), len(votes[0].reasoning), len(votes[1].error or "")] == [
        NAME_MAX_CHARS, REASONING_MAX_CHARS, VOTE_ERROR_MAX_CHARS]
    summary = summarize(votes * 16, decide(votes * 16, "majority"), "majority")
    assert len(summary) == SUMMARY_MAX_CHARS and summary.endswith("\u2026")
    c = Consensus(symbol="BTC-USD", question="?", votes=votes * 16, action=BUY, method="majority",
                  agreement=1.0, summary=summary, ts=now_ns())
    assert decode(Consensus, encode(c)) == c
    with pytest.raises(ValueError, match="at most 32"):
        SwarmConfig(models=[f"m{i}" for i in range(33)])
