"""The [swarm_agent] section of moonbus.toml."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from services.common.config import Section
from services.contract.models import INTERVAL_PATTERN, SWARM_MAX_VOTES

OFFLINE_MODELS = ("offline-momentum", "offline-meanrev", "offline-sentiment")


class SwarmConfig(Section):
    # offline names and/or [llm.endpoints] names; one vote each, at most the contract's Consensus.votes
    models: Annotated[list[str], Field(max_length=SWARM_MAX_VOTES)] = list(OFFLINE_MODELS)
    method: Literal["majority", "weighted", "quorum"] = "majority"
    quorum: Annotated[float, Field(gt=0, le=1)] = 0.6
    timeout_s: Annotated[float, Field(gt=0)] = 2.0
    llm_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    on_alerts: bool = True
    # Asks on alerts under way at once per replica, one per symbol: a burst of alerts (a crash
    # moving every symbol, or made-up alerts) must not start a model call per alert.
    max_alert_asks: Annotated[int, Field(ge=1, le=1000)] = 8
    # agent.api.swarm.ask requests answered at once per replica: an ask waits for its slowest
    # member (an LLM: up to llm_timeout_s), and one at a time made every other asker wait too.
    max_concurrent_asks: Annotated[int, Field(ge=1, le=1000)] = 8
    history_interval: Annotated[str, Field(pattern=INTERVAL_PATTERN)] = "1s"
    history_limit: Annotated[int, Field(ge=2, le=5000)] = 30
    momentum_threshold_pct: Annotated[float, Field(gt=0)] = 0.05
    meanrev_stretch_pct: Annotated[float, Field(gt=0)] = 0.1
    sentiment_threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    sentiment_max_age_s: Annotated[float, Field(gt=0)] = 900.0
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        # Whether a name is known is checked with the [llm] section (offline.build_models).
        if len(set(models)) != len(models) or not models:
            raise ValueError("models must be a non-empty list of distinct names")
        return models
