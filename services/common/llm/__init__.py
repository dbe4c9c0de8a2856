"""Model providers behind one small interface: ask a model "BUY, SELL or HOLD?" and get a
schema-checked `Decision` back, never an exception for a model problem.

    provider = build_provider(section(config, "llm", LLMConfig), fallback=OfflineProvider("offline-momentum", fn))
    decision = await provider.decide(DecisionRequest(agent="trading", symbol="BTC-USD", system=..., prompt=...))

Providers: Anthropic (tool use), OpenAI (structured outputs), any OpenAI-compatible endpoint
by base URL, and deterministic offline models (the default). `build_provider` wraps the live
ones with the record/replay cache, the hourly/daily cost budget and the metrics.
"""

from .config import EndpointConfig, LLMConfig
from .decision import Action, Answer, Decision, DecisionRequest, Provider
from .factory import build_provider
from .offline import OfflineModel, OfflineProvider

__all__ = [
    "Action", "Answer", "Decision", "DecisionRequest", "EndpointConfig", "LLMConfig", "OfflineModel",
    "OfflineProvider", "Provider", "build_provider",
]
