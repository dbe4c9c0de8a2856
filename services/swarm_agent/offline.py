"""Deterministic offline models: the same inputs always give the same vote.

- offline-momentum:  follows the direction of the last bars (close of the first vs the last);
- offline-meanrev:   fades a move stretched away from the mean close of those bars;
- offline-sentiment: follows the latest `agent.sentiment.<symbol>` score.

Confidence grows with the signal: 0.5 at the threshold, 1.0 at twice the threshold;
a HOLD is the surer the smaller the move.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from services.common.models import Bar, Sentiment, VoteAction

from .config import SwarmConfig
from .model import Model, NoData, Opinion

HistoryFn = Callable[[str], Awaitable[list[Bar]]]


def _strength(value: float, threshold: float) -> float:
    return round(min(1.0, abs(value) / (2 * threshold)), 4)


def _hold_confidence(value: float, threshold: float) -> float:
    return round(max(0.0, 1.0 - abs(value) / threshold), 4)


async def _closes(history: HistoryFn, symbol: str) -> list[Decimal]:
    bars = await history(symbol)
    if len(bars) < 2:
        raise NoData(f"need at least 2 bars of history for {symbol}, got {len(bars)}")
    return [b.close for b in sorted(bars, key=lambda b: b.start_ts)]


class MomentumModel:
    name = "offline-momentum"

    def __init__(self, history: HistoryFn, threshold_pct: float) -> None:
        self.history = history
        self.threshold_pct = threshold_pct

    async def ask(self, symbol: str, question: str) -> Opinion:
        closes = await _closes(self.history, symbol)
        change = float((closes[-1] - closes[0]) / closes[0] * 100)
        text = f"{symbol} moved {change:+.4f}% over {len(closes)} bars ({closes[0]} -> {closes[-1]})"
        if change >= self.threshold_pct:
            return Opinion(VoteAction.BUY, _strength(change, self.threshold_pct), f"{text}: momentum up")
        if change <= -self.threshold_pct:
            return Opinion(VoteAction.SELL, _strength(change, self.threshold_pct), f"{text}: momentum down")
        return Opinion(VoteAction.HOLD, _hold_confidence(change, self.threshold_pct),
                       f"{text}: within +/-{self.threshold_pct}%")


class MeanReversionModel:
    name = "offline-meanrev"

    def __init__(self, history: HistoryFn, stretch_pct: float) -> None:
        self.history = history
        self.stretch_pct = stretch_pct

    async def ask(self, symbol: str, question: str) -> Opinion:
        closes = await _closes(self.history, symbol)
        mean = sum(closes) / len(closes)
        stretch = float((closes[-1] - mean) / mean * 100)
        text = f"{symbol} last {closes[-1]} is {stretch:+.4f}% from the {len(closes)}-bar mean {mean:.6f}"
        if stretch >= self.stretch_pct:
            return Opinion(VoteAction.SELL, _strength(stretch, self.stretch_pct), f"{text}: stretched up, fade it")
        if stretch <= -self.stretch_pct:
            return Opinion(VoteAction.BUY, _strength(stretch, self.stretch_pct), f"{text}: stretched down, fade it")
        return Opinion(VoteAction.HOLD, _hold_confidence(stretch, self.stretch_pct),
                       f"{text}: within +/-{self.stretch_pct}%")


class LatestSentiment:
    """The last Sentiment seen per symbol (fed by the `agent.sentiment.>` subscription)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[Sentiment, float]] = {}

    def update(self, sentiment: Sentiment, now: float | None = None) -> None:
        self._latest[sentiment.symbol] = (sentiment, time.monotonic() if now is None else now)

    def get(self, symbol: str) -> tuple[Sentiment, float] | None:
        return self._latest.get(symbol)


class SentimentModel:
    name = "offline-sentiment"

    def __init__(self, latest: LatestSentiment, threshold: float, max_age_s: float) -> None:
        self.latest = latest
        self.threshold = threshold
        self.max_age_s = max_age_s

    async def ask(self, symbol: str, question: str) -> Opinion:
        entry = self.latest.get(symbol)
        if entry is None:
            raise NoData(f"no sentiment for {symbol} yet")
        s, received = entry
        age = time.monotonic() - received
        if age > self.max_age_s:
            raise NoData(f"sentiment for {symbol} is stale ({age:.0f}s old)")
        text = f"{symbol} sentiment {s.score:+.3f} (confidence {s.confidence:.2f}, {s.items} items, {s.model})"
        if s.score >= self.threshold:
            return Opinion(VoteAction.BUY, round(abs(s.score) * s.confidence, 4), f"{text}: positive")
        if s.score <= -self.threshold:
            return Opinion(VoteAction.SELL, round(abs(s.score) * s.confidence, 4), f"{text}: negative")
        return Opinion(VoteAction.HOLD, round(s.confidence, 4), f"{text}: neutral")


def build_models(cfg: SwarmConfig, history: HistoryFn, latest: LatestSentiment) -> list[Model]:
    """The configured models, in config order."""
    factories: dict[str, Callable[[], Model]] = {
        MomentumModel.name: lambda: MomentumModel(history, cfg.momentum_threshold_pct),
        MeanReversionModel.name: lambda: MeanReversionModel(history, cfg.meanrev_stretch_pct),
        SentimentModel.name: lambda: SentimentModel(latest, cfg.sentiment_threshold, cfg.sentiment_max_age_s),
    }
    return [factories[name]() for name in cfg.models]
