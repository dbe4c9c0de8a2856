"""Sources, scoring and bus wiring of the sentiment agent.

Sources: the replay file (one headline every interval_s, cycling) and RSS / Atom feeds
(polled every feed_poll_s). Each headline is scored per symbol, added to the symbol's
decaying score, and the result published on `agent.sentiment.<symbol>` and written to
its own KV bucket `sentiment` under the symbol (the latest, for any agent to read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from nats.js.kv import KeyValue

from services.contract import subjects as S
from services.common.bus import Bus
from services.common.config import SystemConfig, load, section
from services.common.llm import LLMConfig, build_provider
from services.common.metrics import serve_metrics
from services.contract.models import NAME_MAX_CHARS, Sentiment, clip, encode, now_ns
from services.common.streams import KV_SENTIMENT_BUCKET, open_kv

from . import metrics
from .aggregate import DecayingSentiment
from .config import SentimentConfig, keywords_for
from .feeds import FeedError, FeedPoller
from .headlines import Headline, load_headlines, resolve
from .scoring import LexiconScorer, LLMScorer, Scorer

SERVICE = "sentiment-agent"
log = logging.getLogger(__name__)


def make_scorer(cfg: SentimentConfig, config: dict[str, Any]) -> Scorer:
    if cfg.scorer == "lexicon":
        return LexiconScorer()
    llm = section(config, "llm", LLMConfig)
    if llm.provider == "offline":
        log.info("scorer llm with [llm] provider offline: the lexicon scores")
        return LexiconScorer()
    return LLMScorer(build_provider(llm), cfg.llm_timeout_s)


class SentimentTracker:
    """Scores headlines and keeps the decaying score per symbol (no bus, clock injected)."""

    def __init__(self, scorer: Scorer, half_life_s: float) -> None:
        self.scorer = scorer
        self.decay = DecayingSentiment(half_life_s)

    async def on_headline(self, item: Headline, source: str, now: float) -> list[Sentiment]:
        symbols = list(dict.fromkeys(item.symbols))  # de-duplicated, order kept
        scores = await asyncio.gather(*(self.scorer.score(item.title, s) for s in symbols))
        metrics.ITEMS.labels(source).inc()
        out = []
        for symbol, score in zip(symbols, scores, strict=True):
            metrics.SCORES.labels(score.model, str(score.fallback).lower()).inc()
            if score.error:
                log.warning("%s: %s fell back to %s: %s", symbol, self.scorer.name, score.model, score.error)
            self.decay.add(symbol, score.value, now)
            agg = self.decay.value(symbol, now)
            out.append(Sentiment(symbol=symbol, score=agg.score, confidence=agg.confidence, items=agg.items,
                                 sources=[clip(source, NAME_MAX_CHARS)], model=clip(score.model, NAME_MAX_CHARS),
                                 ts=now_ns()))
        return out


class SentimentService:
    def __init__(self, bus: Bus, tracker: SentimentTracker, kv: KeyValue | None,
                 clock: Callable[[], float]) -> None:
        self.bus = bus
        self.tracker = tracker
        self.kv = kv
        self.clock = clock

    async def handle(self, item: Headline, source: str) -> None:
        try:
            sentiments = await self.tracker.on_headline(item, source, self.clock())
        except Exception as e:  # one headline must not stop its source
            log.exception("scoring %r from %s failed", item.title, source)
            await self.bus.report_error(source[:256], f"scoring failed: {e!r}", item.title.encode())
            return
        for sentiment in sentiments:
            try:
                await self.bus.publish(S.sentiment(sentiment.symbol), sentiment)
            except Exception as e:  # the bus down for long (its buffer full): the next one goes
                log.warning("%s not published: %r", sentiment.symbol, e)
            if self.kv is None:
                continue
            try:
                await self.kv.put(S.kv_sentiment(sentiment.symbol), encode(sentiment))
            except Exception as e:  # readers fall back to the live subject
                metrics.KV_FAILURES.inc()
                log.warning("%s not written to the KV bucket sentiment: %r", sentiment.symbol, e)
        log.debug("scored %r from %s", item.title, source)

    async def replay(self, items: list[Headline], source: str, interval_s: float) -> None:
        index = 0
        while True:
            await self.handle(items[index % len(items)], source)
            index += 1
            await asyncio.sleep(interval_s)

    async def poll(self, poller: FeedPoller, every_s: float) -> None:
        while True:
            try:
                for item in await poller.poll():
                    await self.handle(item, poller.source)
            except FeedError as e:
                metrics.FEED_ERRORS.labels(poller.source).inc()
                await self.bus.report_error(poller.url[:256], f"feed unusable: {e}", b"")
            except Exception as e:  # anything else must not end the source's task for good
                metrics.FEED_ERRORS.labels(poller.source).inc()
                log.exception("polling %s failed", poller.url)
                await self.bus.report_error(poller.url[:256], f"polling failed: {e!r}", b"")
            await asyncio.sleep(every_s)


async def main(
    stop: asyncio.Event,
    bus: Bus | None = None,
    config: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    config = load() if config is None else config
    cfg = section(config, "sentiment_agent", SentimentConfig)
    if not cfg.headlines and not cfg.feeds:
        raise ValueError("[sentiment_agent] has no source: set headlines and/or feeds")
    items = load_headlines(cfg.headlines) if cfg.headlines else []
    keywords = keywords_for(cfg, section(config, "system", SystemConfig).symbols)
    tracker = SentimentTracker(make_scorer(cfg, config), cfg.half_life_s)
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    tasks: list[asyncio.Task[None]] = []
    try:
        serve_metrics(cfg.metrics_port)
        kv = None
        try:
            kv = await open_kv(bus.client.jetstream(), KV_SENTIMENT_BUCKET)
        except Exception as e:  # publish anyway; KV readers will find nothing
            log.error("KV bucket unavailable, sentiment is only published: %r", e)
        service = SentimentService(bus, tracker, kv, clock)
        async with httpx.AsyncClient(headers={"User-Agent": "moonbus-sentiment/0.1"}) as client:
            if items:
                source = f"replay:{resolve(cfg.headlines).name}"
                tasks.append(asyncio.create_task(service.replay(items, source, cfg.interval_s)))
            for url in cfg.feeds:
                poller = FeedPoller(url, keywords, cfg.feed_timeout_s, client)
                tasks.append(asyncio.create_task(service.poll(poller, cfg.feed_poll_s)))
            sources = f"{len(items)} replayed headlines, {len(cfg.feeds)} feeds"
            await bus.serve(f"sentiment agent: {sources}, {tracker.scorer.name}", {})
            log.info("sentiment agent ready: %s; %s", sources, cfg.model_dump())
            await stop.wait()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        for task in tasks:
            task.cancel()
        await bus.close()
