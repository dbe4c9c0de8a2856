"""The [risk_agent] section of moonbus.toml (keys documented there)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field

from services.common.config import ConfigMoney, Section
from services.contract.models import VENUE_PATTERN

Unit = Annotated[float, Field(ge=0, le=1)]


class RiskAgentConfig(Section):
    # A limit of 0 is off. USD and percent limits may be combined: the first one reached acts.
    max_loss_usd: Annotated[ConfigMoney, Field(ge=0)] = Decimal("300")
    max_loss_pct: Annotated[float, Field(ge=0, le=100)] = 0.0
    max_gain_usd: Annotated[ConfigMoney, Field(ge=0)] = Decimal("1000")
    max_gain_pct: Annotated[float, Field(ge=0)] = 0.0
    min_balance_usd: Annotated[ConfigMoney, Field(ge=0)] = Decimal("100")
    lookback_s: Annotated[float, Field(ge=0)] = 0.0  # 0 = risk's trading day (day_pnl)
    venue: Annotated[str, Field(pattern=VENUE_PATTERN)] = "sim"
    request_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    engage_kill_switch_on_breach: bool = False
    ai_confirm: bool = False
    ai_hold_confidence_loss: Unit = 0.90
    ai_hold_confidence_gain: Unit = 0.60
    ai_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0
