"""An example strategy plugin: a channel breakout (Donchian).

BUY when the bar closes above the highest high of the `lookback` bars before it (by at
least `min_break_pct`), SELL when it closes below their lowest low; HOLD inside the
channel. Confidence grows with how far the close broke out (0.5 at min_break_pct, 1.0 at
twice; 1.0 when min_break_pct is 0).

Use it: copy this file into the strategies folder (`[trading_agent] strategies_dir`,
default `strategies/` under the working directory) and name it in moonbus.toml:

    [trading_agent]
    strategy = "breakout"                  # for every symbol ...
    params = { lookback = 20 }

    [trading_agent.symbols."ETH-USD"]      # ... or for one
    strategy = "breakout"
    params = { lookback = 55, min_break_pct = 0.1 }

Backtest it unchanged: `moon backtest data/backtest/BTC-USD.csv --strategy breakout`
(the backtester asks it at every bar's close with the position of that moment, as live).

The interface (services/trading_agent/plugin.py): a StrategyPlugin subclass with a
`name`, a `Params` model (validated at start: a bad param stops the agent with the symbol
and the key), `bars_needed`, and `on_bar(ctx) -> Choice` (`on_alert` defaults to it).
It holds no state between calls: every decision gets its bars in `ctx`.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from services.trading_agent.plugin import Action, Choice, StrategyContext, StrategyPlugin


class BreakoutParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lookback: int = Field(20, ge=1, le=1000)  # bars of the channel (before the deciding bar)
    min_break_pct: float = Field(0.0, ge=0)  # how far past the channel the close must be, in %
    sell_only_when_long: bool = True  # HOLD a breakdown when the agent holds no long (nothing to sell)


class Breakout(StrategyPlugin):
    """BUY a close above the channel of the last `lookback` bars, SELL one below it."""

    name = "breakout"
    Params = BreakoutParams

    def __init__(self, params: BreakoutParams) -> None:
        super().__init__(params)
        self.bars_needed = params.lookback + 1  # the channel and the deciding bar
        self.min_break = Decimal(str(params.min_break_pct))

    def on_bar(self, ctx: StrategyContext) -> Choice:
        p = self.params
        if len(ctx.bars) < self.bars_needed:
            return Choice(Action.HOLD, 0.0, f"{ctx.symbol}: {len(ctx.bars)} closed bars, breakout needs "
                                            f"{self.bars_needed}")
        channel = ctx.bars[-self.bars_needed:-1]
        close: Decimal = ctx.bars[-1].close
        high: Decimal = max(b.high for b in channel)
        low: Decimal = min(b.low for b in channel)
        text = f"{ctx.symbol} close {close} vs {p.lookback}-bar channel [{low}, {high}]"
        if close > high:
            return self._broke(Action.BUY, (close - high) / high * 100, f"{text}: broke out above")
        if close < low:
            if p.sell_only_when_long and (ctx.position is None or ctx.position <= 0):
                return Choice(Action.HOLD, 0.0, f"{text}: broke down, but no long to sell "
                                                f"(position {ctx.position})")
            return self._broke(Action.SELL, (low - close) / low * 100, f"{text}: broke down below")
        return Choice(Action.HOLD, 0.5, f"{text}: inside")

    def _broke(self, action: Action, pct: Decimal, text: str) -> Choice:
        if pct < self.min_break:
            return Choice(Action.HOLD, 0.0, f"{text} by {pct:.4f}%, less than {self.min_break}%")
        confidence = 1.0 if self.min_break == 0 else float(min(Decimal(1), pct / (2 * self.min_break)))
        return Choice(action, confidence, f"{text} by {pct:.4f}%")
