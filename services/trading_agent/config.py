"""The [trading_agent] section of moonbus.toml (keys documented there)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from services.common.config import ConfigMoney, Section
from services.contract.models import INTERVAL_PATTERN

from .algo import AlgoConfig
from .pipeline import PipelineConfig
from .protection import ProtectionConfig

Deterministic = Literal["momentum", "mean_reversion", "ma_crossover"]
StrategyName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
DEFAULT_STRATEGIES_DIR = "strategies"


class SymbolStrategy(Section):
    """`[trading_agent.symbols."<symbol>"]`: the strategy of one symbol and its params."""

    strategy: StrategyName | None = None  # else the global `strategy`
    params: dict[str, Any] = Field(default_factory=dict)  # the plugin's Params (else its defaults; the built-ins': the keys below)
    allow_short: bool | None = None  # else the global `allow_short`


class TradingConfig(Section):
    # a built-in (momentum | mean_reversion | ma_crossover), llm, or a plugin's name (registry.py);
    # checked against the strategies found when the agent (or a backtest) starts
    strategy: StrategyName = "mean_reversion"
    params: dict[str, Any] = Field(default_factory=dict)  # the global strategy's params
    symbols: dict[str, SymbolStrategy] = Field(default_factory=dict)  # per symbol: strategy and params
    strategies_dir: str = DEFAULT_STRATEGIES_DIR  # plugin files (*.py); relative = to the working dir
    plugin_timeout_ms: Annotated[float, Field(gt=0, le=600_000)] = 250.0  # per decision of a plugin
    bar_interval: Annotated[str, Field(pattern=INTERVAL_PATTERN)] = "1s"
    on_alerts: bool = True
    # momentum
    momentum_lookback: Annotated[int, Field(ge=2, le=1000)] = 20
    momentum_threshold_pct: Annotated[float, Field(gt=0)] = 0.05
    # mean reversion
    meanrev_lookback: Annotated[int, Field(ge=2, le=1000)] = 20
    meanrev_stretch_pct: Annotated[float, Field(gt=0)] = 0.1
    # moving-average crossover
    ma_fast: Annotated[int, Field(ge=1, le=1000)] = 5
    ma_slow: Annotated[int, Field(ge=2, le=1000)] = 20
    ma_min_gap_pct: Annotated[float, Field(ge=0)] = 0.01
    # LLM strategy ([llm] section: provider, endpoints, budget)
    llm_fallback: Deterministic = "momentum"
    llm_bars: Annotated[int, Field(ge=2, le=500)] = 30
    llm_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # sizing (sizing.py): "fixed_usd" = the original's USD_SIZE, MAX_POSITION_PERCENTAGE,
    # CASH_PERCENTAGE; "all_in" = all cash above the cash_pct reserve, net of fee_bps
    sizing: Literal["fixed_usd", "all_in"] = "fixed_usd"
    quantity_step: Annotated[ConfigMoney, Field(gt=0)] = Decimal("0.000001")
    fee_bps: Annotated[float, Field(ge=0, le=10_000)] = 10.0
    order_usd: Annotated[ConfigMoney, Field(gt=0)] = Decimal("100")
    max_position_pct: Annotated[float, Field(gt=0, le=100)] = 30.0
    cash_pct: Annotated[float, Field(ge=0, lt=100)] = 10.0
    # shorts (agent.py): a SELL when flat opens a short, a SELL of a long flips to one, a BUY
    # covers (and flips to a long); where the venue can hold one (risk refuses a sell-to-open
    # on a spot venue: short_not_allowed). Off: long only, a SELL without a long is no order.
    allow_short: bool = False
    # context and plumbing
    state_max_age_s: Annotated[float, Field(gt=0)] = 10.0
    history_timeout_s: Annotated[float, Field(gt=0)] = 1.0
    history_max_gap_s: Annotated[float, Field(ge=0)] = 60.0
    publish_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    workers: Annotated[int, Field(ge=1, le=256)] = 8
    max_pending: Annotated[int, Field(ge=1)] = 1000
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
    # [trading_agent.pipeline]: swarm consensus and sentiment weighed before an order (pipeline.py); off by default
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    # [trading_agent.algo]: an order over max_order_notional goes as a TWAP / ICEBERG parent (algo.py); off by default
    algo: AlgoConfig = Field(default_factory=AlgoConfig)

    def shorts(self, symbol: str) -> bool:
        """Whether `symbol` may go short: its `[trading_agent.symbols."<symbol>"] allow_short`
        (matched case-insensitively), else the global one."""
        for key, table in self.symbols.items():
            if key.upper() == symbol.upper() and table.allow_short is not None:
                return table.allow_short
        return self.allow_short
    # [trading_agent.protection]: stop-loss / take-profit / trailing stop on entries (protection.py); off by default
    protection: ProtectionConfig = Field(default_factory=ProtectionConfig)

    @model_validator(mode="after")
    def _ma_fast_below_slow(self) -> TradingConfig:
        if self.ma_fast >= self.ma_slow:
            raise ValueError(f"ma_fast ({self.ma_fast}) must be below ma_slow ({self.ma_slow})")
        return self
