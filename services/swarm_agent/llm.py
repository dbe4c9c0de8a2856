"""LLM swarm members: a provider of [llm.endpoints] asked the swarm's question with the
recent bars and the latest sentiment. A failed call, a refusal or an answer outside the
schema is an ABSTAIN with its error (and the cost it ran up): never a guessed vote, and
never a silent stand-in by another model (the swarm counts it as an abstention)."""

from __future__ import annotations

from services.common.bus import ApiError
from services.common.llm import DecisionRequest, Provider
from services.contract.models import VoteAction

from .model import Opinion
from .offline import HistoryFn, LatestSentiment

SYSTEM_PROMPT = (
    "You are one of several independent models voting on a trading decision for one symbol. "
    "From the recent closed bars and the latest news sentiment, answer BUY, SELL or HOLD with a "
    "confidence from 0 to 1 and a short reasoning that cites the data; ABSTAIN when the data is "
    "not enough."
)


class LLMModel:
    def __init__(self, provider: Provider, history: HistoryFn, latest: LatestSentiment, timeout_s: float) -> None:
        self.provider = provider
        self.name = provider.name
        self.history = history
        self.latest = latest
        self.timeout_s = timeout_s

    async def prompt(self, symbol: str, question: str) -> str:
        lines = [f"Symbol: {symbol}", f"Question: {question}", "", "Closed bars (oldest first): close, volume"]
        try:
            bars = sorted(await self.history(symbol), key=lambda b: b.start_ts)
            lines += [f"{b.close}, {b.volume}" for b in bars] or ["(none)"]
        except (ApiError, ValueError) as e:
            lines.append(f"(unavailable: {e})")
        entry = self.latest.get(symbol)
        s = entry[0] if entry else None
        lines.append("Sentiment: " + (f"score {s.score:+.3f} in [-1, 1], confidence {s.confidence:.2f}, "
                                      f"{s.items} items" if s else "unknown"))
        return "\n".join(lines)

    async def ask(self, symbol: str, question: str) -> Opinion:
        request = DecisionRequest(agent="swarm", symbol=symbol, system=SYSTEM_PROMPT,
                                  prompt=await self.prompt(symbol, question), timeout_s=self.timeout_s)
        d = await self.provider.decide(request)
        if d.error is not None or d.fallback:
            return Opinion(VoteAction.ABSTAIN, 0.0, d.reasoning, d.cost_usd, d.error or "fallback answered")
        return Opinion(VoteAction(d.action), d.confidence, d.reasoning, d.cost_usd)
