"""Per-symbol sentiment with exponential time decay.

Each scored item weighs 0.5 ** (age / half_life_s): a headline one half-life old
counts half as much as a fresh one. The symbol's score is the weighted mean of its
items; the sum of the weights is the "number of recent items" n, and the
confidence is n / (n + 2) (one fresh item 0.33, two 0.5, eight 0.8). Items that
have decayed below 1/1024 (ten half-lives) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_WEIGHT = 1 / 1024


@dataclass(frozen=True)
class Aggregate:
    score: float
    confidence: float
    items: int


class DecayingSentiment:
    def __init__(self, half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s
        self._items: dict[str, list[tuple[float, float]]] = {}

    def add(self, symbol: str, score: float, at: float) -> None:
        self._items.setdefault(symbol, []).append((at, score))

    def weight(self, age_s: float) -> float:
        return 0.5 ** (max(age_s, 0.0) / self.half_life_s)

    def value(self, symbol: str, now: float) -> Aggregate:
        kept = [(t, s) for t, s in self._items.get(symbol, []) if self.weight(now - t) >= MIN_WEIGHT]
        self._items[symbol] = kept
        weights = [self.weight(now - t) for t, _ in kept]
        total = sum(weights)
        if total == 0:
            return Aggregate(0.0, 0.0, 0)
        mean = sum(w * s for w, (_, s) in zip(weights, kept)) / total
        return Aggregate(
            score=round(max(-1.0, min(1.0, mean)), 6),
            confidence=round(total / (total + 2), 6),
            items=len(kept),
        )
