"""Scorers: the offline lexicon (the default), or an LLM through the [llm] provider that
falls back to the lexicon, visibly, when the model cannot answer.

The LLM is asked as a decision about the symbol: BUY = the news is good for it, SELL =
bad, HOLD = neutral, the confidence = how strongly; its signed conviction is the score.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from services.common.llm import DecisionRequest, Provider

from .lexicon import LexiconModel

SYSTEM_PROMPT = (
    "You rate the sentiment of one news headline for one traded asset. Answer BUY when the "
    "news is good for the asset's price, SELL when it is bad, HOLD when it is neutral or "
    "unrelated; the confidence is how strong the effect is (0 = none, 1 = very strong). "
    "Answer ABSTAIN only when the headline cannot be understood."
)


@dataclass(frozen=True)
class Score:
    value: float  # [-1, 1]
    model: str
    fallback: bool = False
    error: str | None = None


class Scorer(Protocol):
    name: str

    async def score(self, text: str, symbol: str) -> Score: ...


class LexiconScorer:
    def __init__(self) -> None:
        self.model = LexiconModel()
        self.name = self.model.name

    async def score(self, text: str, symbol: str) -> Score:
        return Score(self.model.score(text), self.name)


class LLMScorer:
    def __init__(self, provider: Provider, timeout_s: float) -> None:
        self.provider = provider
        self.timeout_s = timeout_s
        self.lexicon = LexiconScorer()
        self.name = f"llm:{provider.name}"

    async def score(self, text: str, symbol: str) -> Score:
        request = DecisionRequest(agent="sentiment", symbol=symbol, system=SYSTEM_PROMPT,
                                  prompt=f"Asset: {symbol}\nHeadline: {text}", timeout_s=self.timeout_s)
        try:
            decision = await asyncio.wait_for(self.provider.decide(request), self.timeout_s + 1.0)
            error = decision.error if decision.error or decision.fallback else None
        except TimeoutError:
            error = f"no answer within {self.timeout_s}s"
        except Exception as e:  # a provider must not raise; the headline is still scored
            error = f"provider failed: {e!r}"
        if error is None:
            return Score(decision.conviction, decision.model)  # ABSTAIN / HOLD -> 0, neutral
        offline = await self.lexicon.score(text, symbol)
        return Score(offline.value, offline.model, fallback=True, error=error)
