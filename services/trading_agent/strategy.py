"""Strategies: given the next tick, decide BUY / SELL or nothing.

A strategy only looks at prices; whether an order may be sent and how big it is
are decided by the agent (risk verdicts, sizing, cooldown), so strategies stay
small and are easy to test. More strategies plug in through `STRATEGIES`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from services.common.models import Action, Tick

from .config import TradingConfig


@dataclass(frozen=True)
class Decision:
    action: Action
    confidence: float
    reasoning: str


class Strategy(Protocol):
    name: str

    def on_tick(self, tick: Tick) -> Decision | None:
        """The decision this tick leads to, or None (nothing to do)."""
        ...


class MomentumStrategy:
    """BUY when the price rose >= threshold_pct over the last `lookback_ticks` prices,
    SELL when it fell as much. Confidence grows with the move: 0.5 at the threshold,
    1.0 at twice the threshold."""

    name = "momentum"

    def __init__(self, lookback_ticks: int, threshold_pct: float) -> None:
        if lookback_ticks < 2:
            raise ValueError("lookback_ticks must be >= 2")
        self.lookback_ticks = lookback_ticks
        self.threshold = Decimal(str(threshold_pct))
        self._windows: dict[str, deque[Decimal]] = {}

    def on_tick(self, tick: Tick) -> Decision | None:
        window = self._windows.setdefault(tick.symbol, deque(maxlen=self.lookback_ticks))
        window.append(tick.price)
        if len(window) < self.lookback_ticks:
            return None
        first, last = window[0], window[-1]
        change_pct = (last - first) / first * 100
        if change_pct >= self.threshold:
            action = Action.BUY
        elif change_pct <= -self.threshold:
            action = Action.SELL
        else:
            return None
        confidence = float(min(Decimal(1), abs(change_pct) / (2 * self.threshold)))
        reasoning = (
            f"{tick.symbol} moved {change_pct:+.4f}% over the last {len(window)} ticks "
            f"({first} -> {last}); threshold is +/-{self.threshold}%"
        )
        return Decision(action, round(confidence, 4), reasoning)


def make_strategy(cfg: TradingConfig) -> Strategy:
    return STRATEGIES[cfg.strategy](cfg)


STRATEGIES = {
    "momentum": lambda cfg: MomentumStrategy(cfg.lookback_ticks, cfg.threshold_pct),
}
