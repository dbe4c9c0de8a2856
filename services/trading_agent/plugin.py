"""The strategy plugin interface: what a strategy file in `strategies/` (or an installed
package, entry-point group `moonbus.strategies`) defines. The built-in strategies
(strategy.py) are plugins of this interface too.

    from decimal import Decimal
    from pydantic import BaseModel, Field
    from services.trading_agent.plugin import Action, Choice, StrategyContext, StrategyPlugin

    class Breakout(StrategyPlugin):
        name = "breakout"                      # what `[trading_agent] strategy` names

        class Params(BaseModel):               # validated at start; bad params stop the agent
            lookback: int = Field(20, ge=2)

        def __init__(self, params: Params) -> None:
            super().__init__(params)
            self.bars_needed = params.lookback + 1   # closed bars a decision looks at

        def on_bar(self, ctx: StrategyContext) -> Choice:
            ...
            return Choice(Action.HOLD, 0.0, "why")

A plugin:
- `name`: a lowercase identifier (`^[a-z][a-z0-9_]{0,63}$`), unique among built-ins,
  files and entry points (a clash stops the agent, naming both origins); `llm` is taken;
- `Params`: a pydantic model or a typed dataclass; the agent validates the configured
  params against it (unknown keys are errors) and passes the instance to `__init__`;
  `defaults(cfg)` may supply defaults from the [trading_agent] section (the built-ins
  read momentum_lookback etc. there);
- `bars_needed`: how many closed bars (oldest first, the event's bar last) `ctx.bars` holds;
- `on_bar(ctx) -> Choice` on every closed bar; `on_alert(ctx)` on a price alert (default:
  on_bar). Either may be `async def`; then both should be;
- optionally `scan(symbol, closes, start=0, holds=False)`: the decisions over a whole
  series of closes in one pass (index, Choice), for plugins that decide from closes alone
  and answer exactly as `on_bar` would; the backtester then uses it (fast path).

What a Choice means: BUY and SELL are sides, the agent sizes and gates the orders. Long
only (default): BUY opens or adds to a long (or covers a short), SELL reduces a long, a
SELL without a long is no order. With `allow_short` (`ctx.allow_short`): SELL when flat
opens a short, SELL when short adds to it, a signal against the position closes it and,
once flat, opens the other side (a flip); risk refuses a short on a spot venue.

A plugin should hold no state across calls (any replica decides any bar, and one
instance serves a symbol's bars concurrently). A sync plugin runs in a thread with a
deadline, an async one under asyncio.wait_for ([trading_agent] plugin_timeout_ms): one that
raises or overruns abstains (HOLD, reason `plugin_error: ...` / `plugin_timeout`, reported
on errors.trading-agent and counted in moonbus_trading_plugin_failures_total). A thread
cannot be killed: a sync plugin that never returns keeps its thread, and once `workers`
of its calls are stuck the plugin abstains at once. An async plugin must not block the
event loop (no time.sleep, no blocking I/O): the deadline cannot interrupt that.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from services.contract.models import AccountState, Action, Bar, Verdict

if TYPE_CHECKING:
    from .config import TradingConfig

__all__ = ["Action", "Choice", "NoParams", "ParamsError", "StrategyContext", "StrategyPlugin", "validate_params"]

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Choice:
    """A strategy's answer on one event: BUY / SELL / HOLD, a confidence in [0, 1], why."""

    action: Action
    confidence: float
    reasoning: str


@dataclass(frozen=True)
class StrategyContext:
    """What a plugin sees. `position`, `verdict`, `account` are what the agent already
    has (None = not known yet); the agent, not the plugin, gates and sizes orders."""

    symbol: str
    venue: str
    kind: str  # "bar" | "alert"
    bars: Sequence[Bar]  # oldest first, the event's bar last; at most bars_needed
    price: Decimal  # the latest price: a newer tick's, else the event's (the bar's close / alert's price)
    position: Decimal | None = None  # the risk verdict's position of the symbol
    verdict: Verdict | None = None
    account: AccountState | None = None
    allow_short: bool = False  # the symbol may go short ([trading_agent] allow_short): see below

    @property
    def closes(self) -> list[Decimal]:
        return [b.close for b in self.bars]


class NoParams(BaseModel):
    """The params of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyPlugin:
    """Base class of strategy plugins (see the module docstring)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    inline: ClassVar[bool] = False  # the built-ins only: pure microsecond rules, run in the loop
    bars_needed: int = 1

    def __init__(self, params: Any = None) -> None:
        self.params = params

    @classmethod
    def defaults(cls, cfg: TradingConfig) -> dict[str, Any]:
        """Params taken from the [trading_agent] section when the config gives none."""
        return {}

    @classmethod
    def from_params(cls, params: Any) -> StrategyPlugin:
        return cls(params)

    def on_bar(self, ctx: StrategyContext) -> Choice:
        raise NotImplementedError(f"strategy {self.name} has no on_bar")

    def on_alert(self, ctx: StrategyContext) -> Choice:
        return self.on_bar(ctx)


class ParamsError(ValueError):
    """Params that do not fit a plugin's Params: `key` names the first bad one ("" = the
    params as a whole, e.g. a check across two of them)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


def _field_names(params_type: type) -> set[str] | None:
    if isinstance(params_type, type) and issubclass(params_type, BaseModel):
        return set(params_type.model_fields)
    if dataclasses.is_dataclass(params_type):
        return {f.name for f in dataclasses.fields(params_type)}
    return None


def validate_params(plugin: type[StrategyPlugin], values: Mapping[str, Any]) -> Any:
    """`values` as the plugin's Params (a pydantic model or a typed dataclass): unknown
    keys and invalid values raise ParamsError naming the key."""
    params_type = plugin.Params
    names = _field_names(params_type)
    if names is None:
        raise TypeError(f"strategy {plugin.name}: Params must be a pydantic model or a dataclass")
    unknown = sorted(set(values) - names)
    if unknown:
        raise ParamsError(unknown[0], f"unknown param (strategy {plugin.name} takes {', '.join(sorted(names)) or 'none'})")
    try:
        return TypeAdapter(params_type).validate_python(dict(values))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise ParamsError(key, f"{message} (got {err.get('input')!r})" if key else message) from None
