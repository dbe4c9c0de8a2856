"""The [risk_agent] section of moonbus.toml."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field

from services.common.config import ConfigMoney, Section
from services.common.models import VENUE_PATTERN


class RiskAgentConfig(Section):
    max_loss_usd: Annotated[ConfigMoney, Field(gt=0)] = Decimal("300")
    max_gain_usd: Annotated[ConfigMoney, Field(gt=0)] = Decimal("1000")
    min_balance_usd: Annotated[ConfigMoney, Field(ge=0)] = Decimal("100")
    venue: Annotated[str, Field(pattern=VENUE_PATTERN)] = "sim"
    request_timeout_s: Annotated[float, Field(gt=0)] = 2.0
