"""Prometheus metrics of the risk agent (served on [risk_agent] metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter

BREACHES = Counter("moonbus_risk_agent_breaches_total", "Account rules newly breached", ["rule"])
AI_ANSWERS = Counter("moonbus_risk_agent_ai_confirmations_total",
                     "AI confirmations by outcome (hold = position kept)", ["outcome"])
CLOSE_ORDERS = Counter("moonbus_risk_agent_close_orders_total", "Reduce-only closing orders acknowledged")
ORDER_FAILURES = Counter("moonbus_risk_agent_order_publish_failures_total",
                         "Closing orders the ORDERS stream did not acknowledge")
KILL_SWITCH = Counter("moonbus_risk_agent_kill_switch_total", "Kill-switch engage requests by outcome",
                      ["outcome"])
