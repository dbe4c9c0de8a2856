"""Deterministic offline models: the same inputs always give the same vote.

- offline-momentum:  follows the direction of the last bars (close of the first vs the last);
- offline-meanrev:   fades a move stretched away from the mean close of those bars;
- offline-sentiment: follows the latest `agent.sentiment.<symbol>` score.

Momentum and mean reversion are the shared rules of services/common/price_rules.py
(the trading agent's strategies use them too).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal

from services.common import price_rules
from services.contract.models import Bar, Sentiment, VoteAction

from .model import NoData, Opinion

HistoryFn = Callable[[str], Awaitable[list[Bar]]]


async def _closes(history: HistoryFn, symbol: str) -> list[Decimal]:
    bars = await history(symbol)
    if len(bars) < 2:
        raise NoData(f"need at least 2 bars of history for {symbol}, got {len(bars)}")
    return [b.close for b in sorted(bars, key=lambda b: b.start_ts)]


def _opinion(call: price_rules.Call) -> Opinion:
    return Opinion(VoteAction(call.action), call.confidence, call.reasoning)


class MomentumModel:
    name = "offline-momentum"

    def __init__(self, history: HistoryFn, threshold_pct: float) -> None:
        self.history = history
        self.threshold_pct = threshold_pct

    async def ask(self, symbol: str, question: str) -> Opinion:
        closes = await _closes(self.history, symbol)
        return _opinion(price_rules.momentum(symbol, closes, self.threshold_pct))


class MeanReversionModel:
    name = "offline-meanrev"

    def __init__(self, history: HistoryFn, stretch_pct: float) -> None:
        self.history = history
        self.stretch_pct = stretch_pct

    async def ask(self, symbol: str, question: str) -> Opinion:
        closes = await _closes(self.history, symbol)
        return _opinion(price_rules.mean_reversion(symbol, closes, self.stretch_pct))


class LatestSentiment:
    """The last Sentiment seen per symbol (fed by the `agent.sentiment.>` subscription, which
    keeps at most MAX_SYMBOLS symbols here: services/common/caps.py `admit_symbol`)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[Sentiment, float]] = {}

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._latest

    def __iter__(self) -> Iterator[str]:
        return iter(self._latest)

    def __len__(self) -> int:
        return len(self._latest)

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
