"""Deterministic offline models as providers: the agent passes a function of the request
(its own rule: momentum, mean reversion, lexicon...) and gets the Provider interface."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

from .decision import Answer, Decision, DecisionRequest

OfflineModel = Callable[[DecisionRequest], Answer | Awaitable[Answer]]


class OfflineProvider:
    def __init__(self, name: str, model: OfflineModel) -> None:
        self.name = name
        self.model = model

    async def decide(self, request: DecisionRequest) -> Decision:
        start = time.perf_counter()
        try:
            answer = self.model(request)
            if inspect.isawaitable(answer):
                answer = await answer
            if not isinstance(answer, Answer):
                raise TypeError(f"offline model returned {type(answer).__name__}, not Answer")
        except Exception as e:  # noqa: BLE001  (a broken rule abstains, like a broken LLM)
            return Decision.abstain(self.name, f"offline model failed: {e or repr(e)}",
                                    latency_ms=_ms_since(start))
        return Decision.from_answer(answer, self.name, latency_ms=_ms_since(start))


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
