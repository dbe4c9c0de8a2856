"""The `Model` seam: anything that can answer "BUY, SELL or HOLD this symbol?".

`ask_models` asks every model in parallel, each with its own timeout; a model that
raises or times out ABSTAINs with the error, so one broken model never breaks the
swarm. LLM-backed models plug in here later.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from services.common.models import Vote, VoteAction


@dataclass(frozen=True)
class Opinion:
    action: VoteAction
    confidence: float
    reasoning: str


class Model(Protocol):
    name: str

    async def ask(self, symbol: str, question: str) -> Opinion: ...


class NoData(Exception):
    """The model has nothing to go on (no history, no sentiment yet)."""


async def ask_model(model: Model, symbol: str, question: str, timeout_s: float) -> Vote:
    start = time.perf_counter()

    def elapsed_ms() -> float:
        return round((time.perf_counter() - start) * 1000, 3)

    try:
        opinion = await asyncio.wait_for(model.ask(symbol, question), timeout_s)
    except TimeoutError:
        return Vote(model=model.name, action=VoteAction.ABSTAIN, confidence=0.0,
                    latency_ms=elapsed_ms(), error=f"timeout after {timeout_s}s")
    except Exception as e:
        return Vote(model=model.name, action=VoteAction.ABSTAIN, confidence=0.0,
                    latency_ms=elapsed_ms(), error=str(e) or repr(e))
    return Vote(
        model=model.name,
        action=opinion.action,
        confidence=max(0.0, min(1.0, opinion.confidence)),
        reasoning=opinion.reasoning,
        latency_ms=elapsed_ms(),
    )


async def ask_models(models: list[Model], symbol: str, question: str, timeout_s: float) -> list[Vote]:
    return list(await asyncio.gather(*(ask_model(m, symbol, question, timeout_s) for m in models)))
