"""The `Model` seam: anything that can answer "BUY, SELL or HOLD this symbol?".

`ask_models` asks every model in parallel, each with its own timeout; a model that raises, times out or
answers with an error ABSTAINs with the error (and the cost it ran up), so one broken
model never breaks the swarm. Offline models are in `offline`, LLM ones in `llm`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from services.contract.models import (
    NAME_MAX_CHARS,
    REASONING_MAX_CHARS,
    VOTE_ERROR_MAX_CHARS,
    Vote,
    VoteAction,
    clip,
)


@dataclass(frozen=True)
class Opinion:
    action: VoteAction
    confidence: float
    reasoning: str
    cost_usd: float = 0.0
    error: str | None = None  # set = the model could not answer (action ABSTAIN)


class Model(Protocol):
    name: str

    async def ask(self, symbol: str, question: str) -> Opinion: ...


class NoData(Exception):
    """The model has nothing to go on (no history, no sentiment yet)."""


async def ask_model(model: Model, symbol: str, question: str, timeout_s: float) -> Vote:
    """The model's vote; its name, reasoning and error cut to the contract's bounds (models.py)."""
    start = time.perf_counter()
    name = clip(model.name, NAME_MAX_CHARS)

    def elapsed_ms() -> float:
        return round((time.perf_counter() - start) * 1000, 3)

    try:
        opinion = await asyncio.wait_for(model.ask(symbol, question), timeout_s)
    except TimeoutError:
        return Vote(model=name, action=VoteAction.ABSTAIN, confidence=0.0,
                    latency_ms=elapsed_ms(), error=f"timeout after {timeout_s}s")
    except Exception as e:
        return Vote(model=name, action=VoteAction.ABSTAIN, confidence=0.0,
                    latency_ms=elapsed_ms(), error=clip(str(e) or repr(e), VOTE_ERROR_MAX_CHARS))
    failed = opinion.error is not None
    return Vote(
        model=name,
        action=VoteAction.ABSTAIN if failed else opinion.action,
        confidence=0.0 if failed else max(0.0, min(1.0, opinion.confidence)),
        reasoning=clip(opinion.reasoning, REASONING_MAX_CHARS),
        latency_ms=elapsed_ms(),
        cost_usd=max(0.0, opinion.cost_usd),
        error=None if opinion.error is None else clip(opinion.error, VOTE_ERROR_MAX_CHARS),
    )


async def ask_models(models: list[Model], symbol: str, question: str, timeouts: list[float]) -> list[Vote]:
    """Every model in parallel, each with its own timeout; the votes in the models' order."""
    asks = (ask_model(m, symbol, question, t) for m, t in zip(models, timeouts, strict=True))
    return list(await asyncio.gather(*asks))
