"""Deterministic strategies: given the recent closed bars of one symbol (oldest first,
the triggering bar last), decide BUY / SELL / HOLD with a confidence and the reason.

A strategy only looks at prices; whether an order may be sent and how big it is are
decided by the agent (risk verdicts, sizing), so strategies stay small and pure.
They hold no state: the bars come with every decision (live from `md.api.history`),
which is what lets any replica decide any bar.

Each rule is written once, as `scan`: the decisions over a whole series of closes, bar
by bar. Live, `decide` scans the recent window and answers for its last bar; a backtest
scans the whole history in one pass (services/backtest/engine.py), so a decision costs
about a microsecond. Momentum and mean reversion are the shared rules of
services/common/price_rules.py (the swarm's offline models use them too).

They are strategy plugins (plugin.py) like any in `strategies/` or an installed package:
their params default to the [trading_agent] keys (momentum_lookback, ...) and a
`[trading_agent.symbols."<symbol>"] params` table overrides them per symbol; `scan` is the
fast path the backtester takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Annotated, Any, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common import caps, price_rules
from services.contract.models import Action, Bar

from .config import TradingConfig
from .plugin import Choice, StrategyContext, StrategyPlugin, validate_params

ZERO = Decimal(0)

Decision = Choice  # a strategy's answer (the plugin interface's Choice)


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def bars_needed(self) -> int: ...  # how many closed bars a decision looks at

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision: ...


@runtime_checkable
class SeriesStrategy(Strategy, Protocol):
    """A strategy whose rule runs over a series of closes (the built-in ones)."""

    def scan(self, symbol: str, closes: Sequence[Decimal], start: int = 0,
             holds: bool = False) -> Iterator[tuple[int, Decision]]: ...


def _not_enough(symbol: str, bars: Sequence[Bar], needed: int) -> Decision | None:
    if len(bars) >= needed:
        return None
    return Decision(Action.HOLD, 0.0, f"{symbol}: {len(bars)} closed bars, the strategy needs {needed}")


def _decide_last(strategy: SeriesStrategy, symbol: str, bars: Sequence[Bar]) -> Decision:
    """The decision on the last of `bars`: the strategy's scan over their closes."""
    if short := _not_enough(symbol, bars, strategy.bars_needed):
        return short
    closes = [b.close for b in bars[-strategy.bars_needed:]]
    for _, decision in strategy.scan(symbol, closes, start=len(closes) - 1, holds=True):
        return decision
    raise AssertionError("a scan with holds=True decides every bar from start")


class _BuiltinParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MomentumParams(_BuiltinParams):
    lookback: Annotated[int, Field(ge=2, le=1000)]  # default: [trading_agent] momentum_lookback
    threshold_pct: Annotated[float, Field(gt=0)]  # momentum_threshold_pct


class MeanReversionParams(_BuiltinParams):
    lookback: Annotated[int, Field(ge=2, le=1000)]  # meanrev_lookback
    stretch_pct: Annotated[float, Field(gt=0)]  # meanrev_stretch_pct


class CrossoverParams(_BuiltinParams):
    fast: Annotated[int, Field(ge=1, le=1000)]  # ma_fast
    slow: Annotated[int, Field(ge=2, le=1000)]  # ma_slow
    min_gap_pct: Annotated[float, Field(ge=0)]  # ma_min_gap_pct

    @model_validator(mode="after")
    def _fast_below_slow(self) -> CrossoverParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self


class _Builtin(StrategyPlugin):
    """A built-in rule as a plugin: on_bar / on_alert = decide over the bars window."""

    inline = True

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision:
        raise NotImplementedError

    def on_bar(self, ctx: StrategyContext) -> Choice:
        return self.decide(ctx.symbol, ctx.bars)


class CloseRuleStrategy(_Builtin):
    """A rule of services/common/price_rules.py over the closes of the last `lookback` bars."""

    rule: Callable[[str, Sequence[Decimal], float], price_rules.Call]

    def __init__(self, lookback: int, threshold_pct: float) -> None:
        if lookback < 2:
            raise ValueError(f"{self.name} lookback must be >= 2 bars")
        super().__init__(None)
        self.bars_needed = lookback
        self.threshold_pct = threshold_pct

    def scan(self, symbol: str, closes: Sequence[Decimal], start: int = 0,
             holds: bool = False) -> Iterator[tuple[int, Decision]]:
        """The decision on every bar from `start` with `lookback` closes (only the ones
        that are not HOLD unless `holds`)."""
        n, rule = self.bars_needed, type(self).rule
        for i in range(max(start, n - 1), len(closes)):
            call = rule(symbol, closes[i - n + 1 : i + 1], self.threshold_pct)
            if holds or call.action is not Action.HOLD:
                yield i, Decision(call.action, call.confidence, call.reasoning)

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision:
        return _decide_last(self, symbol, bars)


class MomentumStrategy(CloseRuleStrategy):
    """BUY when the close rose >= threshold_pct over the last `lookback` bars, SELL when
    it fell as much."""

    name = "momentum"
    rule = staticmethod(price_rules.momentum)
    Params = MomentumParams

    @classmethod
    def defaults(cls, cfg: TradingConfig) -> dict[str, Any]:
        return {"lookback": cfg.momentum_lookback, "threshold_pct": cfg.momentum_threshold_pct}

    @classmethod
    def from_params(cls, params: MomentumParams) -> MomentumStrategy:
        strategy = cls(params.lookback, params.threshold_pct)
        strategy.params = params
        return strategy


class MeanReversionStrategy(CloseRuleStrategy):
    """Fade a close stretched >= threshold_pct away from the mean close of the last
    `lookback` bars: SELL above the mean, BUY below it."""

    name = "mean_reversion"
    rule = staticmethod(price_rules.mean_reversion)
    Params = MeanReversionParams

    @classmethod
    def defaults(cls, cfg: TradingConfig) -> dict[str, Any]:
        return {"lookback": cfg.meanrev_lookback, "stretch_pct": cfg.meanrev_stretch_pct}

    @classmethod
    def from_params(cls, params: MeanReversionParams) -> MeanReversionStrategy:
        strategy = cls(params.lookback, params.stretch_pct)
        strategy.params = params
        return strategy


class MovingAverageCrossover(_Builtin):
    """BUY when the fast moving average of the closes crosses above the slow one on this
    bar, SELL when it crosses below; HOLD while they keep their order. Confidence grows
    with the gap between the averages after the cross (0.5 at min_gap_pct, 1.0 at twice)."""

    name = "ma_crossover"
    Params = CrossoverParams

    def __init__(self, fast: int, slow: int, min_gap_pct: float) -> None:
        if not 1 <= fast < slow:
            raise ValueError("ma_crossover needs 1 <= fast < slow")
        super().__init__(None)
        self.fast, self.slow = fast, slow
        self.min_gap = Decimal(str(min_gap_pct))
        self.bars_needed = slow + 1  # the averages on this bar and on the one before
        self._holds: dict[tuple[str, str], Decision] = {}

    def scan(self, symbol: str, closes: Sequence[Decimal], start: int = 0,
             holds: bool = False) -> Iterator[tuple[int, Decision]]:
        """The crosses from bar `start` on (every bar's decision with `holds`).

        The sums of the last fast and slow closes run along the series (add the new
        close, drop the one that leaves: exact in Decimal), and the averages are compared
        as sums scaled by the other length (a/f > b/s exactly when a*s > b*f), so a bar
        costs a few additions and no division."""
        f, s = self.fast, self.slow
        fast_sum = slow_sum = ZERO
        above = ZERO
        for i, close in enumerate(closes):
            fast_sum += close - closes[i - f] if i >= f else close
            slow_sum += close - closes[i - s] if i >= s else close
            above_before, above = above, fast_sum * s - slow_sum * f
            if i < s or i < start:  # the slow average of the bar before needs s closes before this one
                continue
            if above_before <= 0 < above:
                yield i, self._crossed(symbol, fast_sum / f, slow_sum / s, up=True)
            elif above_before >= 0 > above:
                yield i, self._crossed(symbol, fast_sum / f, slow_sum / s, up=False)
            elif holds:
                yield i, self._hold(symbol, "above" if above > 0 else "below" if above < 0 else "level with")

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision:
        return _decide_last(self, symbol, bars)

    @classmethod
    def defaults(cls, cfg: TradingConfig) -> dict[str, Any]:
        return {"fast": cfg.ma_fast, "slow": cfg.ma_slow, "min_gap_pct": cfg.ma_min_gap_pct}

    @classmethod
    def from_params(cls, params: CrossoverParams) -> MovingAverageCrossover:
        strategy = cls(params.fast, params.slow, params.min_gap_pct)
        strategy.params = params
        return strategy

    def _crossed(self, symbol: str, fast: Decimal, slow: Decimal, up: bool) -> Decision:
        gap = (fast - slow) / slow * 100
        text = (f"{symbol} fast MA({self.fast}) {fast:.6f} vs slow MA({self.slow}) {slow:.6f}, "
                f"gap {gap:+.4f}%")
        confidence = price_rules.strength(gap, self.min_gap) if self.min_gap > 0 else 1.0
        if up:
            return Decision(Action.BUY, confidence, f"{text}: crossed above")
        return Decision(Action.SELL, confidence, f"{text}: crossed below")

    def _hold(self, symbol: str, side: str) -> Decision:
        """The common case, kept cheap: no figures, one shared (immutable) decision."""
        key = (symbol, side)
        hold = self._holds.get(key)
        if hold is None:
            reason = f"{symbol} MA({self.fast}) vs MA({self.slow}): no cross, fast stays {side} slow"
            hold = Decision(Action.HOLD, 0.5, reason)
            # kept for at most MAX_MARKET_SYMBOLS symbols (x 3 sides): the symbols are market-data's to name
            if len(self._holds) < 3 * caps.MAX_MARKET_SYMBOLS:
                self._holds[key] = hold
        return hold


BUILTINS: tuple[type[_Builtin], ...] = (MomentumStrategy, MeanReversionStrategy, MovingAverageCrossover)
STRATEGIES: dict[str, type[_Builtin]] = {cls.name: cls for cls in BUILTINS}


def make_strategy(name: str, cfg: TradingConfig) -> _Builtin:
    """A built-in strategy by name with the [trading_agent] keys as its params (`llm_fallback`;
    registry.py builds any plugin, with per-symbol params)."""
    cls = STRATEGIES[name]
    return cast(_Builtin, cls.from_params(validate_params(cls, cls.defaults(cfg))))
