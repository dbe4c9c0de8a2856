"""The [sentiment_agent] section of moonbus.toml."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.common.config import Section


class SentimentConfig(Section):
    headlines: str = "data/headlines.jsonl"
    half_life_s: Annotated[float, Field(gt=0)] = 600.0
    interval_s: Annotated[float, Field(gt=0)] = 2.0
