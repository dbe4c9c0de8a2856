"""Deterministic price rules over a series of closes (oldest first), shared by the trading
agent's strategies and the swarm's offline models: same inputs, same call, always.

Confidence grows with the signal: 0.5 at the threshold, 1.0 at twice the threshold; a
HOLD is the surer the smaller the move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from services.contract.models import Action


@dataclass(frozen=True)
class Call:
    action: Action
    confidence: float
    reasoning: str


def strength(value: Decimal, threshold: Decimal) -> float:
    return round(float(min(Decimal(1), abs(value) / (2 * threshold))), 4)


def hold_confidence(value: Decimal, threshold: Decimal) -> float:
    return round(float(max(Decimal(0), 1 - abs(value) / threshold)), 4)


def mean(values: Sequence[Decimal]) -> Decimal:
    return sum(values, Decimal(0)) / len(values)


def momentum(symbol: str, closes: Sequence[Decimal], threshold_pct: float) -> Call:
    """BUY when the close rose >= threshold_pct from the first to the last, SELL when it fell as much."""
    threshold = Decimal(str(threshold_pct))
    first, last = closes[0], closes[-1]
    change = (last - first) / first * 100
    text = f"{symbol} moved {change:+.4f}% over {len(closes)} bars ({first} -> {last})"
    if change >= threshold:
        return Call(Action.BUY, strength(change, threshold), f"{text}: momentum up")
    if change <= -threshold:
        return Call(Action.SELL, strength(change, threshold), f"{text}: momentum down")
    return Call(Action.HOLD, hold_confidence(change, threshold), f"{text}: within +/-{threshold}%")


def mean_reversion(symbol: str, closes: Sequence[Decimal], stretch_pct: float) -> Call:
    """Fade a last close stretched >= stretch_pct from the mean: SELL above it, BUY below it."""
    threshold = Decimal(str(stretch_pct))
    average = mean(closes)
    stretch = (closes[-1] - average) / average * 100
    text = f"{symbol} last {closes[-1]} is {stretch:+.4f}% from the {len(closes)}-bar mean {average:.6f}"
    if stretch >= threshold:
        return Call(Action.SELL, strength(stretch, threshold), f"{text}: stretched up, fade it")
    if stretch <= -threshold:
        return Call(Action.BUY, strength(stretch, threshold), f"{text}: stretched down, fade it")
    return Call(Action.HOLD, hold_confidence(stretch, threshold), f"{text}: within +/-{threshold}%")
