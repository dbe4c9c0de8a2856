"""The [llm] section of moonbus.toml: which model answers, its endpoints, prices, budget, cache."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, model_validator

from services.common.config import ConfigMoney, Section

Kind = Literal["anthropic", "openai", "openai_compatible"]
# How the answer is structured: Anthropic: one forced tool; OpenAI: strict JSON schema;
# OpenAI-compatible servers vary: json_schema, json_object (JSON mode), or text (JSON parsed
# from plain text, for servers with neither).
Output = Literal["tool", "json_schema", "json_object", "text"]
DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "openai_compatible": "OPENAI_API_KEY"}
DEFAULT_OUTPUT: dict[str, Output] = {"anthropic": "tool", "openai": "json_schema", "openai_compatible": "json_object"}


class Price(Section):
    """USD per million tokens."""

    input: Annotated[ConfigMoney, Field(ge=0)]
    output: Annotated[ConfigMoney, Field(ge=0)]


class EndpointConfig(Section):
    kind: Kind
    model: str = Field(min_length=1)
    base_url: str | None = None  # None = the SDK's default (api.anthropic.com / api.openai.com)
    # Name of the environment variable holding the key (never the key itself); "" = no key
    # (a local Ollama / vLLM). Default: ANTHROPIC_API_KEY or OPENAI_API_KEY by kind.
    api_key_env: str | None = None
    output: Output | None = None  # default by kind: tool / json_schema / json_object
    max_tokens: Annotated[int, Field(ge=16, le=32000)] = 512

    @model_validator(mode="after")
    def _defaults_by_kind(self) -> EndpointConfig:
        if self.api_key_env is None:
            self.api_key_env = DEFAULT_KEY_ENV[self.kind]
        if self.output is None:
            self.output = DEFAULT_OUTPUT[self.kind]
        allowed = {"anthropic": {"tool"}, "openai": {"json_schema", "json_object"},
                   "openai_compatible": {"json_schema", "json_object", "text"}}[self.kind]
        if self.output not in allowed:
            raise ValueError(f"output {self.output!r} is not supported by kind {self.kind!r}; use one of {sorted(allowed)}")
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("an openai_compatible endpoint needs base_url")
        return self


class LLMConfig(Section):
    provider: str = "offline"  # "offline" (the agents' deterministic models) or a name in `endpoints`
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict)  # by model id; every live endpoint's model must be priced
    max_retries: Annotated[int, Field(ge=0, le=10)] = 3  # on 429 / 5xx / connection errors
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5  # doubles per retry, full jitter
    backoff_max_s: Annotated[float, Field(gt=0)] = 8.0
    fallback_on_error: bool = True  # an outage / bad answer also goes to the fallback model, if any
    budget_usd_per_hour: Annotated[ConfigMoney, Field(ge=0)] = Decimal(1)
    budget_usd_per_day: Annotated[ConfigMoney, Field(ge=0)] = Decimal(10)
    cache_mode: Literal["off", "record", "replay"] = "off"
    cache_dir: str = "data/llm-cache"  # relative: to the working directory

    @model_validator(mode="after")
    def _provider_known_and_priced(self) -> LLMConfig:
        if self.provider != "offline" and self.provider not in self.endpoints:
            raise ValueError(f"provider {self.provider!r} is neither 'offline' nor in endpoints {sorted(self.endpoints)}")
        unpriced = sorted({e.model for e in self.endpoints.values()} - set(self.prices))
        if unpriced:
            raise ValueError(f"no price for model(s) {unpriced}: add them to [llm.prices] (the budget needs a cost)")
        return self
