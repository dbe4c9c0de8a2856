"""The [swarm_agent] section of moonbus.toml."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from services.common.config import Section
from services.common.models import INTERVAL_PATTERN

KNOWN_MODELS = ("offline-momentum", "offline-meanrev", "offline-sentiment")


class SwarmConfig(Section):
    models: list[str] = list(KNOWN_MODELS)
    method: Literal["majority", "weighted", "quorum"] = "majority"
    quorum: Annotated[float, Field(gt=0, le=1)] = 0.6
    timeout_s: Annotated[float, Field(gt=0)] = 2.0
    history_interval: Annotated[str, Field(pattern=INTERVAL_PATTERN)] = "1s"
    history_limit: Annotated[int, Field(ge=2, le=5000)] = 30
    momentum_threshold_pct: Annotated[float, Field(gt=0)] = 0.05
    meanrev_stretch_pct: Annotated[float, Field(gt=0)] = 0.1
    sentiment_threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    sentiment_max_age_s: Annotated[float, Field(gt=0)] = 900.0

    @field_validator("models")
    @classmethod
    def _known_and_distinct(cls, models: list[str]) -> list[str]:
        unknown = [m for m in models if m not in KNOWN_MODELS]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {list(KNOWN_MODELS)}")
        if len(set(models)) != len(models) or not models:
            raise ValueError("models must be a non-empty list of distinct names")
        return models
