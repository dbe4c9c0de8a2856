"""Prometheus metrics of the LLM calls (the default registry; the service exposes it)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("moonbus_llm_calls_total", "LLM decisions by outcome (ok, abstain, parse_error, refusal, "
                "timeout, http_error, connection_error, no_key, budget_exhausted, replayed, replay_miss)",
                ["provider", "model", "outcome"])
RETRIES = Counter("moonbus_llm_retries_total", "Retried LLM requests (429 / 5xx / connection)",
                  ["provider", "model", "reason"])
FALLBACKS = Counter("moonbus_llm_fallbacks_total", "Decisions answered by the offline fallback instead",
                    ["provider", "model", "reason"])
LATENCY = Histogram("moonbus_llm_latency_seconds", "Wall time of a live LLM decision, retries included",
                    ["provider", "model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
TOKENS = Counter("moonbus_llm_tokens_total", "Tokens billed", ["provider", "model", "direction"])
COST = Counter("moonbus_llm_cost_usd_total", "Estimated cost in USD ([llm.prices])", ["provider", "model"])
BUDGET_SPENT = Gauge("moonbus_llm_budget_spent_usd", "Estimated USD spent in the sliding window", ["window"])
BUDGET_EXHAUSTED = Gauge("moonbus_llm_budget_exhausted", "1 while the window's budget is spent", ["window"])
