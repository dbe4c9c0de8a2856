"""Prometheus metrics of the trading agent (served on [trading_agent] metrics_port)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

EVENTS = Counter("moonbus_trading_events_total", "Bars and alerts received for a decision", ["kind"])
DECISIONS = Counter("moonbus_trading_decisions_total", "Decisions (one Signal each) by final action",
                    ["action", "strategy", "fallback"])
FALLBACKS = Counter("moonbus_trading_llm_fallbacks_total",
                    "LLM strategy decisions taken by the deterministic fallback strategy", ["strategy"])
PLUGIN_FAILURES = Counter("moonbus_trading_plugin_failures_total",
                          "Strategy plugin calls that raised or overran plugin_timeout_ms (decided HOLD, "
                          "reported on errors.trading-agent)", ["strategy", "reason"])
ORDERS = Counter("moonbus_trading_orders_total", "Orders acknowledged by the ORDERS stream", ["side"])
ORDER_FAILURES = Counter("moonbus_trading_order_publish_failures_total",
                         "Orders the ORDERS stream did not acknowledge (reported on errors.trading-agent)")
OVERLOADED = Counter("moonbus_trading_overloaded_total",
                     "Events decided HOLD without a strategy because max_pending decisions were queued")
DECISION_SECONDS = Histogram("moonbus_trading_decision_seconds",
                             "Event received -> Signal published (context, strategy, order ack)",
                             ["strategy"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                    1, 2.5, 5, 10, 20))
SWARM_ASKS = Counter("moonbus_trading_swarm_asks_total",
                     "agent.api.swarm.ask requests of the decision pipeline, by outcome", ["outcome"])

_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}


def labelled(metric: Counter | Histogram, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once per label set (the hot path's counters: a
    `labels()` call validates and locks each time). The label sets are few: actions,
    strategy names, sides, event kinds."""
    key = (metric, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child
