"""`build_provider`: the provider named by [llm] `provider`, wrapped with the record/replay
cache, the cost budget, the fallback and the metrics (`GuardedProvider`)."""

from __future__ import annotations

import logging
import os
import time
from decimal import Decimal

from . import metrics
from .budget import Budget
from .cache import DecisionCache
from .config import LLMConfig
from .decision import Decision, DecisionRequest, Provider
from .live import ANSWERED, LiveProvider

log = logging.getLogger("moonbus.llm")
_shared_budgets: dict[tuple[Decimal, Decimal], Budget] = {}


def shared_budget(config: LLMConfig) -> Budget:
    """One budget per process for every provider built with the same limits."""
    limits = (config.budget_usd_per_hour, config.budget_usd_per_day)
    if limits not in _shared_budgets:
        _shared_budgets[limits] = Budget(*limits)
    return _shared_budgets[limits]


class GuardedProvider:
    """A live provider behind the cache (replay never calls it), the budget and the fallback."""

    def __init__(self, live: LiveProvider, fallback: Provider | None, budget: Budget, cache: DecisionCache,
                 fallback_on_error: bool) -> None:
        self.live = live
        self.name = live.model
        self.fallback = fallback
        self.budget = budget
        self.cache = cache
        self.fallback_on_error = fallback_on_error
        self._labels = (live.name, live.endpoint.model)

    async def decide(self, request: DecisionRequest) -> Decision:
        if self.cache.mode == "replay":
            recorded = await self.cache.load(request, self.name)
            outcome = "replayed" if isinstance(recorded, Decision) else "replay_miss"
            metrics.CALLS.labels(*self._labels, outcome).inc()
            return recorded if isinstance(recorded, Decision) else Decision.abstain(self.name, recorded)
        exhausted = self.budget.exhausted()
        if exhausted:
            metrics.CALLS.labels(*self._labels, "budget_exhausted").inc()
            return await self._fall_back(request, Decision.abstain(self.name, exhausted), "budget_exhausted")
        decision, outcome = await self.live.decide_with_outcome(request)
        self._record_metrics(decision, outcome)
        if self.cache.mode == "record" and outcome in ANSWERED:
            await self.cache.save(request, self.name, decision)
        if outcome in ("ok", "abstain") or not self.fallback_on_error:
            return decision
        return await self._fall_back(request, decision, outcome)

    async def _fall_back(self, request: DecisionRequest, failed: Decision, reason: str) -> Decision:
        """The fallback's decision, marked, carrying the failed call's error, tokens and cost."""
        if self.fallback is None:
            return failed
        metrics.FALLBACKS.labels(*self._labels, reason).inc()
        start = time.perf_counter()
        answer = await self.fallback.decide(request)
        error = failed.error if answer.error is None else f"{failed.error}; fallback: {answer.error}"
        return answer.model_copy(update={
            "fallback": True, "error": error,
            "latency_ms": round(failed.latency_ms + (time.perf_counter() - start) * 1000, 3),
            "input_tokens": failed.input_tokens, "output_tokens": failed.output_tokens, "cost_usd": failed.cost_usd,
        })

    def _record_metrics(self, decision: Decision, outcome: str) -> None:
        metrics.CALLS.labels(*self._labels, outcome).inc()
        metrics.LATENCY.labels(*self._labels).observe(decision.latency_ms / 1000)
        metrics.TOKENS.labels(*self._labels, "input").inc(decision.input_tokens)
        metrics.TOKENS.labels(*self._labels, "output").inc(decision.output_tokens)
        cost = self.live.cost(decision.input_tokens, decision.output_tokens)
        metrics.COST.labels(*self._labels).inc(float(cost))
        self.budget.spend(cost)

    async def aclose(self) -> None:
        await self.live.aclose()


def build_provider(config: LLMConfig, fallback: Provider | None = None, *, endpoint: str | None = None,
                   budget: Budget | None = None) -> Provider:
    """The provider of [llm] `provider` (or of `endpoint`, a name in [llm.endpoints]).

    "offline" returns `fallback` itself (the agent's deterministic model). A live provider
    answers through the cache and the budget; when the budget is spent, or (with
    `fallback_on_error`) the call fails or the answer is unusable, `fallback` answers with
    fallback=True; without a fallback such a decision is an ABSTAIN with the error.
    """
    name = endpoint or config.provider
    if name == "offline":
        if fallback is None:
            raise ValueError("provider 'offline' needs the agent's offline model as `fallback`")
        return fallback
    if name not in config.endpoints:
        raise ValueError(f"unknown LLM endpoint {name!r}; configured: {sorted(config.endpoints)}")
    settings = config.endpoints[name]
    # "" = a local server that needs no key; None = the key is missing (decisions abstain or fall back).
    api_key = (os.environ.get(settings.api_key_env) or None) if settings.api_key_env else ""
    if api_key is None:
        log.warning("LLM endpoint %s: %s is not set; its decisions will abstain or fall back", name,
                    settings.api_key_env)
    # The SDKs (~40 MB of modules between them) are imported only by a process that uses one.
    live_class: type[LiveProvider]
    if settings.kind == "anthropic":
        from .anthropic_api import AnthropicProvider as live_class
    else:
        from .openai_api import OpenAIProvider as live_class
    live = live_class(name, settings, config, api_key)
    return GuardedProvider(live, fallback, budget or shared_budget(config),
                           DecisionCache(config.cache_mode, config.cache_dir), config.fallback_on_error)
