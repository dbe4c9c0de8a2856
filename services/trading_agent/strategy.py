"""Deterministic strategies: given the recent closed bars of one symbol (oldest first,
the triggering bar last), decide BUY / SELL / HOLD with a confidence and the reason.

A strategy only looks at prices; whether an order may be sent and how big it is are
decided by the agent (risk verdicts, sizing), so strategies stay small and pure.
They hold no state: the bars come with every decision (live from `md.api.history`, in
a backtest from the data), which is what lets any replica decide any bar. They read
them through a `Window` (window.py): moving averages are running sums, so a decision
costs microseconds whatever the lookback. Momentum and mean reversion are the shared
rules of services/common/price_rules.py (the swarm's offline models use them too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from services.common import price_rules
from services.contract.models import Action, Bar

from .config import TradingConfig
from .window import window_of


@dataclass(frozen=True)
class Decision:
    action: Action
    confidence: float
    reasoning: str


class Strategy(Protocol):
    name: str
    bars_needed: int  # how many closed bars a decision looks at

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision: ...


def _not_enough(symbol: str, bars: Sequence[Bar], needed: int) -> Decision | None:
    if len(bars) >= needed:
        return None
    return Decision(Action.HOLD, 0.0, f"{symbol}: {len(bars)} closed bars, the strategy needs {needed}")


def _closes(bars: Sequence[Bar], n: int) -> list[Decimal]:
    return window_of(bars, n).last_closes(n)


class CloseRuleStrategy:
    """A rule of services/common/price_rules.py over the closes of the last `lookback` bars."""

    name: str
    rule: Callable[[str, Sequence[Decimal], float], price_rules.Call]

    def __init__(self, lookback: int, threshold_pct: float) -> None:
        if lookback < 2:
            raise ValueError(f"{self.name} lookback must be >= 2 bars")
        self.bars_needed = lookback
        self.threshold_pct = threshold_pct

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision:
        if short := _not_enough(symbol, bars, self.bars_needed):
            return short
        call = type(self).rule(symbol, _closes(bars, self.bars_needed), self.threshold_pct)
        return Decision(call.action, call.confidence, call.reasoning)


class MomentumStrategy(CloseRuleStrategy):
    """BUY when the close rose >= threshold_pct over the last `lookback` bars, SELL when
    it fell as much."""

    name = "momentum"
    rule = staticmethod(price_rules.momentum)


class MeanReversionStrategy(CloseRuleStrategy):
    """Fade a close stretched >= threshold_pct away from the mean close of the last
    `lookback` bars: SELL above the mean, BUY below it."""

    name = "mean_reversion"
    rule = staticmethod(price_rules.mean_reversion)


class MovingAverageCrossover:
    """BUY when the fast moving average of the closes crosses above the slow one on this
    bar, SELL when it crosses below; HOLD while they keep their order. Confidence grows
    with the gap between the averages after the cross (0.5 at min_gap_pct, 1.0 at twice)."""

    name = "ma_crossover"

    def __init__(self, fast: int, slow: int, min_gap_pct: float) -> None:
        if not 1 <= fast < slow:
            raise ValueError("ma_crossover needs 1 <= fast < slow")
        self.fast, self.slow = fast, slow
        self.min_gap = Decimal(str(min_gap_pct))
        self.bars_needed = slow + 1  # the averages on this bar and on the one before
        self._holds: dict[tuple[str, str], Decision] = {}

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision:
        if len(bars) < self.bars_needed:
            return _not_enough(symbol, bars, self.bars_needed) or self._hold(symbol, "level with")
        window = window_of(bars, self.bars_needed)
        # Averages compared as sums scaled by the other length: exact, no division.
        f, s = self.fast, self.slow
        fast_sum, fast_sum_before = window.sums(f)
        slow_sum, slow_sum_before = window.sums(s)
        above, above_before = fast_sum * s - slow_sum * f, fast_sum_before * s - slow_sum_before * f
        crossed_up = above_before <= 0 < above
        crossed_down = above_before >= 0 > above
        if not (crossed_up or crossed_down):
            return self._hold(symbol, "above" if above > 0 else "below" if above < 0 else "level with")
        fast, slow = fast_sum / f, slow_sum / s
        gap = (fast - slow) / slow * 100
        text = (f"{symbol} fast MA({self.fast}) {fast:.6f} vs slow MA({self.slow}) {slow:.6f}, "
                f"gap {gap:+.4f}%")
        confidence = price_rules.strength(gap, self.min_gap) if self.min_gap > 0 else 1.0
        if crossed_up:
            return Decision(Action.BUY, confidence, f"{text}: crossed above")
        return Decision(Action.SELL, confidence, f"{text}: crossed below")

    def _hold(self, symbol: str, side: str) -> Decision:
        """The common case, kept cheap: no figures, one shared (immutable) decision."""
        key = (symbol, side)
        hold = self._holds.get(key)
        if hold is None:
            reason = f"{symbol} MA({self.fast}) vs MA({self.slow}): no cross, fast stays {side} slow"
            hold = self._holds[key] = Decision(Action.HOLD, 0.5, reason)
        return hold


STRATEGIES: dict[str, Callable[[TradingConfig], Strategy]] = {
    "momentum": lambda cfg: MomentumStrategy(cfg.momentum_lookback, cfg.momentum_threshold_pct),
    "mean_reversion": lambda cfg: MeanReversionStrategy(cfg.meanrev_lookback, cfg.meanrev_stretch_pct),
    "ma_crossover": lambda cfg: MovingAverageCrossover(cfg.ma_fast, cfg.ma_slow, cfg.ma_min_gap_pct),
}


def make_strategy(name: str, cfg: TradingConfig) -> Strategy:
    """A deterministic strategy by name (the `strategy` key, or `llm_fallback`)."""
    return STRATEGIES[name](cfg)
