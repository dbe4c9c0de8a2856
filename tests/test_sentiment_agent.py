"""Sentiment agent: the lexicon scorer (weights, negation, range), the time decay, the
headline file, the LLM scorer and its fallback, RSS / Atom feeds from a local HTTP server,
and the agent in-process against the real nats-server (publish + the KV bucket `sentiment`)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import nats.errors

import pytest

from services.common.llm import Decision, DecisionRequest
from services.contract.models import NAME_MAX_CHARS, Sentiment, decode, encode
from services.common.streams import KV_SENTIMENT_BUCKET
from services.sentiment_agent import service
from services.sentiment_agent.aggregate import DecayingSentiment
from services.sentiment_agent.config import SentimentConfig, keywords_for
from services.sentiment_agent.feeds import MAX_FEED_BYTES, FeedError, FeedPoller, parse_feed
from services.sentiment_agent.headlines import Headline, load_headlines
from services.sentiment_agent.lexicon import raw_score, score, tokens
from services.sentiment_agent.scoring import LexiconScorer, LLMScorer
from services.sentiment_agent.service import SentimentTracker

score_text = score

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- lexicon


def test_positive_negative_and_neutral() -> None:
    assert score("Bitcoin surges to a record") > 0.5
    assert score("Exchange hacked, funds stolen") < -0.5
    assert score("Bitcoin trades near 97,000") == 0.0


def test_squash_values() -> None:
    # one weight-2 word: 2 / sqrt(4 + 4)
    assert score("ETH rallies") == pytest.approx(2 / math.sqrt(8))
    assert raw_score("surge surge plunge") == 2.0


def test_negation_flips_the_next_known_word_within_three_words() -> None:
    assert raw_score("a crash") == -2.0
    assert raw_score("not a crash") == 2.0
    assert raw_score("no sign of recovery") == -1.5  # no ... recovery (3 words later)
    assert raw_score("isn't bullish") == -2.0  # n't
    assert raw_score("not one two three four rally") == 2.0  # out of scope
    assert raw_score("not bullish, rally") == 0.0  # negation used up by the first word


def test_score_stays_in_range() -> None:
    assert score(" ".join(["surge"] * 200)) <= 1.0
    assert score(" ".join(["crash"] * 200)) >= -1.0


def test_tokens_lowercase_and_apostrophes() -> None:
    assert tokens("Bitcoin DOESN\u2019T crash") == ["bitcoin", "doesn't", "crash"]


# ---------------------------------------------------------------- decay


def test_decay_weighted_mean_and_confidence() -> None:
    d = DecayingSentiment(half_life_s=100)
    d.add("BTC-USD", 1.0, at=0)
    one = d.value("BTC-USD", now=0)
    assert (one.score, one.confidence, one.items) == (1.0, round(1 / 3, 6), 1)
    d.add("BTC-USD", -1.0, at=100)
    # weights 0.5 (one half-life old) and 1 -> (0.5 - 1) / 1.5
    two = d.value("BTC-USD", now=100)
    assert two.score == pytest.approx(-1 / 3, abs=1e-6)
    assert two.confidence == pytest.approx(1.5 / 3.5, abs=1e-6)
    assert two.items == 2


def test_decay_forgets_old_items_and_unknown_symbols() -> None:
    d = DecayingSentiment(half_life_s=10)
    d.add("ETH-USD", 0.8, at=0)
    assert d.value("ETH-USD", now=100).items == 1  # 10 half-lives: weight 1/1024, kept
    assert d.value("ETH-USD", now=101).items == 0
    assert d.value("ETH-USD", now=101).confidence == 0.0
    assert d.value("SOL-USDC", now=0).score == 0.0


async def test_tracker_publishes_one_sentiment_per_symbol() -> None:
    tracker = SentimentTracker(LexiconScorer(), half_life_s=600)
    item = Headline(title="ETH rallies", symbols=["ETH-USD", "SOL-USDC", "ETH-USD"])
    out = await tracker.on_headline(item, "replay:x.jsonl", now=0)
    assert [s.symbol for s in out] == ["ETH-USD", "SOL-USDC"]
    assert out[0].score == round(2 / math.sqrt(8), 6) and out[0].model == "offline-lexicon"
    assert out[0].sources == ["replay:x.jsonl"]


# ---------------------------------------------------------------- LLM scorer


class FakeProvider:
    name = "fake"

    def __init__(self, decision: Decision | None = None, fail: Exception | None = None) -> None:
        self.decision, self.fail = decision, fail
        self.requests: list[DecisionRequest] = []

    async def decide(self, request: DecisionRequest) -> Decision:
        self.requests.append(request)
        if self.fail:
            raise self.fail
        return self.decision


async def test_llm_scorer_uses_the_signed_conviction() -> None:
    answer = Decision(action="SELL", conviction=-0.8, confidence=0.8, reasoning="hack", model="fake:m")
    provider = FakeProvider(answer)
    score = await LLMScorer(provider, timeout_s=3).score("Exchange hacked", "BTC-USD")
    assert (score.value, score.model, score.fallback) == (-0.8, "fake:m", False)
    (req,) = provider.requests
    assert (req.agent, req.symbol, req.timeout_s) == ("sentiment", "BTC-USD", 3)
    assert req.prompt == "Asset: BTC-USD\nHeadline: Exchange hacked"
    hold = Decision(action="HOLD", conviction=0.0, confidence=0.9, reasoning="neutral", model="fake:m")
    assert (await LLMScorer(FakeProvider(hold), 3).score("Bitcoin surges", "BTC-USD")).value == 0.0


@pytest.mark.parametrize("provider", [
    FakeProvider(Decision.abstain("fake:m", "unparsable answer")),
    FakeProvider(fail=RuntimeError("boom")),
])
async def test_llm_scorer_falls_back_to_the_lexicon(provider) -> None:
    score = await LLMScorer(provider, timeout_s=3).score("Bitcoin surges to a record", "BTC-USD")
    assert score.value == score_text("Bitcoin surges to a record") > 0
    assert (score.model, score.fallback) == ("offline-lexicon", True) and score.error


# ---------------------------------------------------------------- headlines file


def test_the_shipped_headlines_load_and_mix_sentiment() -> None:
    items = load_headlines(REPO / "data" / "headlines.jsonl")
    assert len(items) >= 40
    scores = [score(h.title) for h in items]
    assert sum(s > 0.2 for s in scores) >= 10 and sum(s < -0.2 for s in scores) >= 10


def test_bad_headline_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "h.jsonl"
    f.write_text('{"title": "ok", "symbols": ["BTC-USD"]}\n\n{"title": "x", "symbols": ["btc.usd"]}\n')
    with pytest.raises(ValueError, match=r"h.jsonl:3"):
        load_headlines(f)


# ---------------------------------------------------------------- in-process, real nats-server


async def test_replay_publishes_scores(connect, running_service, tmp_path: Path) -> None:
    operator = await connect("operator")
    file = tmp_path / "news.jsonl"
    lines = [
        {"title": "SENTA surges to a record", "symbols": ["SENTA-USD"]},
        {"title": "SENTA exchange hacked", "symbols": ["SENTA-USD", "SENTB-USD"]},
    ]
    file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = await operator.collect("agent.sentiment.>")
    config = {"sentiment_agent": {"headlines": str(file), "interval_s": 0.05, "half_life_s": 600}}
    async with running_service("sentiment-agent", service.main, config, operator):
        messages = [await asyncio.wait_for(got.get(), 5) for _ in range(4)]

    received = [(m.subject, decode(Sentiment, m.data)) for m in messages]
    subjects = [s for s, _ in received]
    assert subjects == ["agent.sentiment.SENTA-USD", "agent.sentiment.SENTA-USD",
                        "agent.sentiment.SENTB-USD", "agent.sentiment.SENTA-USD"]
    first, second, b, third = (m for _, m in received)
    assert first.score == round(score(lines[0]["title"]), 6) > 0 and first.items == 1
    assert second.score < first.score and second.items == 2 and second.confidence > first.confidence
    assert b.score < 0 and b.items == 1
    assert third.items == 3  # cycled back to the first headline
    assert all(m.model == "offline-lexicon" and m.sources == ["replay:news.jsonl"] for _, m in received)

    # The latest per symbol is in its KV bucket (key: the symbol) for any agent to read.
    kv = await operator.jetstream().key_value(KV_SENTIMENT_BUCKET)
    # (The agent goes on scoring until it has stopped: on a busy machine that is a few more
    # cycles, so the latest is at least what was received, not necessarily equal to it.)
    latest_b = decode(Sentiment, (await kv.get("SENTB-USD")).value)
    assert latest_b.symbol == "SENTB-USD" and latest_b.score == b.score and latest_b.items >= b.items
    assert latest_b.model == b.model and latest_b.sources == b.sources and latest_b.ts >= b.ts
    latest_a = decode(Sentiment, (await kv.get("SENTA-USD")).value)
    assert latest_a.items >= 3 and latest_a.symbol == "SENTA-USD"


# ---------------------------------------------------------------- RSS / Atom feeds

FEEDS = REPO / "tests" / "data" / "feeds"
KEYWORDS = keywords_for(SentimentConfig(), ["BTC-USD", "ETH-USD", "SOL-USDC"])


class FeedServer:
    """A local HTTP server: /crypto.rss and /crypto.atom (the files, editable per test),
    /broken (HTTP 500), /garbage (not a feed), /trickle (a byte every 0.1 s, for 10 s),
    /huge (more than MAX_FEED_BYTES)."""

    def __init__(self) -> None:
        self.files = {"/crypto.rss": (FEEDS / "crypto.rss").read_bytes(),
                      "/crypto.atom": (FEEDS / "crypto.atom").read_bytes()}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                types = {"/crypto.rss": "application/rss+xml", "/crypto.atom": "application/atom+xml"}
                if self.path in ("/trickle", "/huge"):
                    self.hostile()
                    return
                if self.path in server.files:
                    body, status, ctype = server.files[self.path], 200, types[self.path]
                elif self.path == "/garbage":
                    body, status, ctype = b"<html><body>not a feed", 200, "text/html"
                else:
                    body, status, ctype = b"internal error", 500, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def hostile(self) -> None:
                trickle = self.path == "/trickle"
                size = 100 if trickle else MAX_FEED_BYTES + 1
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size if trickle else size // 65536 + 1):
                        self.wfile.write(b"<" if trickle else b" " * 65536)
                        self.wfile.flush()
                        if trickle:
                            time.sleep(0.1)
                except OSError:  # the poller hung up
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


def test_rss_entries_map_to_symbols_by_keywords() -> None:
    items = parse_feed((FEEDS / "crypto.rss").read_bytes(), KEYWORDS)
    assert [(i.key, i.headline.title, i.headline.symbols) for i in items] == [
        ("desk-1001", "Bitcoin surges to a record as ETF inflows jump", ["BTC-USD"]),
        ("desk-1002", "Solana outage halts block production", ["SOL-USDC"]),
    ]  # the rates story names no symbol: skipped


def test_atom_entries_title_markup_and_summary_keywords() -> None:
    items = parse_feed((FEEDS / "crypto.atom").read_bytes(), KEYWORDS)
    assert [(i.headline.title, i.headline.symbols) for i in items] == [
        ("Ethereum rallies after a successful upgrade", ["ETH-USD"]),  # <em> stripped
        ("Exchange hacked, funds stolen", ["BTC-USD", "ETH-USD"]),  # symbols from the summary
    ]
    assert items[0].key == "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"


def test_configured_keywords_replace_the_defaults() -> None:
    cfg = SentimentConfig(keywords={"DOGE-USD": ["Dogecoin"]})
    assert keywords_for(cfg, ["BTC-USD", "bad.symbol"]) == {"BTC-USD": ["bitcoin", "btc"], "DOGE-USD": ["dogecoin"]}
    with pytest.raises(ValueError, match="http"):
        SentimentConfig(feeds=["file:///etc/passwd"])


async def test_poller_reports_each_entry_once(feed_server: FeedServer) -> None:
    async with httpx.AsyncClient() as client:
        poller = FeedPoller(f"{feed_server.url}/crypto.rss", KEYWORDS, 5.0, client)
        first = await poller.poll()
        assert [h.symbols for h in first] == [["BTC-USD"], ["SOL-USDC"]]
        assert await poller.poll() == []  # nothing new
        rss = feed_server.files["/crypto.rss"].decode()
        new_item = ("<item><title>Bitcoin slumps as liquidations mount</title>"
                    "<guid isPermaLink=\"false\">desk-1004</guid></item>")
        feed_server.files["/crypto.rss"] = rss.replace("<item>", new_item + "<item>", 1).encode()
        (latest,) = await poller.poll()
        assert latest.title == "Bitcoin slumps as liquidations mount" and poller.source.startswith("feed:127.0.0.1:")


async def test_poller_errors_are_feed_errors(feed_server: FeedServer) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(FeedError, match="500"):
            await FeedPoller(f"{feed_server.url}/broken", KEYWORDS, 5.0, client).poll()
        with pytest.raises(FeedError, match="not an RSS or Atom feed"):
            await FeedPoller(f"{feed_server.url}/garbage", KEYWORDS, 5.0, client).poll()
        # httpx's timeout is per read: a byte every 0.1 s never trips it; the poll's own does.
        started = time.monotonic()
        with pytest.raises(FeedError, match="no whole answer within 1 s"):
            await FeedPoller(f"{feed_server.url}/trickle", KEYWORDS, 1.0, client).poll()
        assert time.monotonic() - started < 3
        with pytest.raises(FeedError, match=f"larger than {MAX_FEED_BYTES} bytes"):
            await FeedPoller(f"{feed_server.url}/huge", KEYWORDS, 5.0, client).poll()


async def test_feeds_are_scored_published_and_a_broken_feed_is_reported(
    connect, running_service, feed_server: FeedServer
) -> None:
    operator = await connect("operator")
    got = await operator.collect("agent.sentiment.>")
    errors = await operator.collect("errors.sentiment-agent")
    config = {
        "system": {"symbols": ["BTC-USD", "ETH-USD", "SOL-USDC"]},
        "sentiment_agent": {"headlines": "", "feed_poll_s": 0.2,
                            "feeds": [f"{feed_server.url}/crypto.atom", f"{feed_server.url}/broken"]},
    }
    async with running_service("sentiment-agent", service.main, config, operator):
        messages = [decode(Sentiment, (await asyncio.wait_for(got.get(), 5)).data) for _ in range(3)]
        error = json.loads((await asyncio.wait_for(errors.get(), 5)).data)
        await asyncio.sleep(0.5)  # more polls: the same entries are not scored again
    assert got.empty()
    assert [(m.symbol, m.items) for m in messages] == [("ETH-USD", 1), ("BTC-USD", 1), ("ETH-USD", 2)]
    assert messages[0].score > 0 and messages[1].score < 0  # rallies / hacked
    assert all(m.sources == [f"feed:{feed_server.url.removeprefix('http://')}"] for m in messages)
    assert error["subject"].endswith("/broken") and "500" in error["reason"]


class RefusingBus:
    """What a Bus does when the server has been gone for long: its buffer is full and every
    publish raises (nats-py's OutboundBufferLimitError); errors are noted."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def publish(self, subject: str, message: object) -> None:
        raise nats.errors.OutboundBufferLimitError

    async def report_error(self, subject: str, reason: str, payload: bytes) -> None:
        self.errors.append(reason)


async def test_a_source_keeps_going_through_a_bus_outage_and_an_unexpected_error() -> None:
    """The replay and poll tasks run for the agent's life: a publish that raises, or a poll that
    fails other than as a bad feed, is noted and the source goes on (it used to end the task,
    silently, with the process still answering pings)."""
    bus = RefusingBus()
    agent = service.SentimentService(bus, SentimentTracker(LexiconScorer(), 3600.0), None, time.time)  # type: ignore[arg-type]
    await agent.handle(Headline(title="Bitcoin rallies", symbols=["BTC-USD"]), "test")  # no raise

    class FlakyPoller:
        url, source, polls = "http://feed.invalid/x", "feed:x", 0

        async def poll(self) -> list[Headline]:
            self.polls += 1
            if self.polls == 1:
                raise RuntimeError("a parser bug")
            return [Headline(title="Ethereum hacked", symbols=["ETH-USD"])]

    poller = FlakyPoller()
    task = asyncio.create_task(agent.poll(poller, 0.01))  # type: ignore[arg-type]
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if poller.polls >= 3:
                break
        assert poller.polls >= 3 and not task.done()
    finally:
        task.cancel()
    assert bus.errors == ["polling failed: RuntimeError('a parser bug')"], bus.errors


async def test_a_long_source_or_model_name_is_cut_to_the_contract_not_refused() -> None:
    """Sentiment.sources and .model are bounded now (models.py NAME_MAX_CHARS): the agent cuts a
    longer feed host or replay file name to fit, so its own messages are never refused."""
    tracker = service.SentimentTracker(LexiconScorer(), half_life_s=60)
    out = await tracker.on_headline(Headline(title="BTC rallies", symbols=["BTC-USD"]), "feed:" + "h" * 400, 0.0)
    (s,) = out
    assert len(s.sources[0]) == NAME_MAX_CHARS and s.sources[0].startswith("feed:hhh")
    assert decode(Sentiment, encode(s)) == s
