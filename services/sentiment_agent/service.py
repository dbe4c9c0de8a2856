"""Replay loop and bus wiring of the sentiment agent.

Every interval_s the next headline of the file (cycling) is scored, added to the
decaying score of each of its symbols, and a Sentiment is published on
`agent.sentiment.<symbol>` for each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from services.common.bus import Bus
from services.common.config import load, section
from services.common.models import Sentiment, now_ns

from .aggregate import DecayingSentiment
from .config import SentimentConfig
from .headlines import Headline, load_headlines, resolve
from .lexicon import LexiconModel

SERVICE = "sentiment-agent"
log = logging.getLogger(__name__)


class SentimentModel(Protocol):
    """Scores one text in [-1, 1]. The offline lexicon today; LLM providers later."""

    name: str

    def score(self, text: str) -> float: ...


class SentimentTracker:
    """Scores headlines and keeps the decaying score per symbol (no bus, clock injected)."""

    def __init__(self, model: SentimentModel, half_life_s: float, source: str) -> None:
        self.model = model
        self.decay = DecayingSentiment(half_life_s)
        self.source = source

    def on_headline(self, item: Headline, now: float) -> list[Sentiment]:
        item_score = self.model.score(item.title)
        out = []
        for symbol in dict.fromkeys(item.symbols):  # de-duplicated, order kept
            self.decay.add(symbol, item_score, now)
            agg = self.decay.value(symbol, now)
            out.append(
                Sentiment(
                    symbol=symbol,
                    score=agg.score,
                    confidence=agg.confidence,
                    items=agg.items,
                    sources=[self.source],
                    model=self.model.name,
                    ts=now_ns(),
                )
            )
        return out


async def main(
    stop: asyncio.Event,
    bus: Bus | None = None,
    config: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    cfg = section(load() if config is None else config, "sentiment_agent", SentimentConfig)
    items = load_headlines(cfg.headlines)
    tracker = SentimentTracker(LexiconModel(), cfg.half_life_s, f"replay:{resolve(cfg.headlines).name}")
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    try:
        await bus.serve(f"sentiment agent: replays {len(items)} headlines, {tracker.model.name}", {})
        log.info("sentiment agent ready: %d headlines, %s", len(items), cfg.model_dump())
        index = 0
        while not stop.is_set():
            item = items[index % len(items)]
            index += 1
            for sentiment in tracker.on_headline(item, clock()):
                await bus.publish(f"agent.sentiment.{sentiment.symbol}", sentiment)
            log.debug("scored %r", item.title)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.interval_s)
    finally:
        await bus.close()
