"""The [trading_agent] section of moonbus.toml."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field

from services.common.config import ConfigMoney, Section


class TradingConfig(Section):
    strategy: Literal["momentum"] = "momentum"
    lookback_ticks: Annotated[int, Field(ge=2)] = 20
    threshold_pct: Annotated[float, Field(gt=0)] = 0.05
    order_usd: Annotated[ConfigMoney, Field(gt=0)] = Decimal("100")
    max_position_pct: Annotated[float, Field(gt=0, le=100)] = 30.0
    cooldown_s: Annotated[float, Field(ge=0)] = 5.0
    publish_timeout_s: Annotated[float, Field(gt=0)] = 2.0
