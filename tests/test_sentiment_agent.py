"""Sentiment agent: the lexicon scorer (weights, negation, range), the time decay,
the headline file, and the replay loop in-process against the real nats-server."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from services.common.models import Sentiment, decode
from services.sentiment_agent import service
from services.sentiment_agent.aggregate import DecayingSentiment
from services.sentiment_agent.headlines import Headline, load_headlines
from services.sentiment_agent.lexicon import LexiconModel, raw_score, score, tokens
from services.sentiment_agent.service import SentimentTracker

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


def test_tracker_publishes_one_sentiment_per_symbol() -> None:
    tracker = SentimentTracker(LexiconModel(), half_life_s=600, source="replay:x.jsonl")
    out = tracker.on_headline(Headline(title="ETH rallies", symbols=["ETH-USD", "SOL-USDC", "ETH-USD"]), now=0)
    assert [s.symbol for s in out] == ["ETH-USD", "SOL-USDC"]
    assert out[0].score == round(2 / math.sqrt(8), 6) and out[0].model == "offline-lexicon"
    assert out[0].sources == ["replay:x.jsonl"]


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
