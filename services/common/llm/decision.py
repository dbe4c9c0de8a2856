"""The types every provider speaks: the request, the model's answer, the decision."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.contract.models import VoteAction

# The contract's VoteAction, as plain strings: the JSON schema the models are given must be a
# plain enum of strings, and their answers (dicts from the SDKs) are validated strictly.
Action = Literal[tuple(a.value for a in VoteAction)]  # type: ignore[valid-type]


class Answer(BaseModel):
    """What a model answers (the JSON schema given to the LLMs; what offline models return)."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    confidence: float = Field(ge=0, le=1)
    reasoning: str = Field(max_length=4000)


class Decision(BaseModel):
    """What every provider returns; a model problem is an ABSTAIN with `error`, never a raise."""

    action: Action
    conviction: float = Field(ge=-1, le=1)  # signed: >0 buy, <0 sell; 0 for HOLD and ABSTAIN
    confidence: float = Field(ge=0, le=1)
    reasoning: str
    model: str  # e.g. "anthropic:claude-sonnet-4-5", "offline-momentum"
    fallback: bool = False  # an offline model answered instead (budget spent, outage, bad answer)
    error: str | None = None  # why it abstained / fell back
    latency_ms: float = Field(default=0.0, ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)  # an estimate from the [llm.prices] table

    @model_validator(mode="after")
    def _conviction_matches_action(self) -> Decision:
        sign_ok = {"BUY": self.conviction >= 0, "SELL": self.conviction <= 0}.get(self.action, self.conviction == 0)
        if not sign_ok:
            raise ValueError(f"conviction {self.conviction} does not match action {self.action}")
        return self

    @classmethod
    def from_answer(cls, answer: Answer, model: str, **extra: object) -> Decision:
        sign = {"BUY": 1.0, "SELL": -1.0}.get(answer.action, 0.0)
        return cls(action=answer.action, conviction=sign * answer.confidence, confidence=answer.confidence,
                   reasoning=answer.reasoning, model=model, **extra)

    @classmethod
    def abstain(cls, model: str, error: str, **extra: object) -> Decision:
        return cls(action="ABSTAIN", conviction=0.0, confidence=0.0, reasoning="", model=model, error=error, **extra)


class DecisionRequest(BaseModel):
    agent: str  # who asks: part of the cache key and of the metrics labels
    symbol: str
    system: str  # the system prompt
    prompt: str  # the question, with the data the model should use
    timeout_s: float = Field(default=10.0, gt=0)  # for the whole call, retries included


class Provider(Protocol):
    name: str

    async def decide(self, request: DecisionRequest) -> Decision: ...
