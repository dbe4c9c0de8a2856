"""Prometheus metrics of the swarm agent (served on [swarm_agent] metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ASKS = Counter("moonbus_swarm_asks_total", "Questions put to the swarm, by trigger", ["trigger"])
ALERTS_SKIPPED = Counter("moonbus_swarm_alerts_skipped_total", "Price alerts not asked about, by reason "
                         "(in_flight: an ask on that symbol's alert is under way; busy: max_alert_asks are)",
                         ["reason"])
VOTES = Counter("moonbus_swarm_votes_total", "Votes by model and answer (ABSTAIN = failed, timed out "
                "or had no data)", ["model", "action"])
CONSENSUS = Counter("moonbus_swarm_consensus_total", "Consensus outcomes", ["action", "method"])
VOTE_SECONDS = Histogram("moonbus_swarm_vote_seconds", "Latency of one model's vote", ["model"],
                         buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20))
COST = Counter("moonbus_swarm_cost_usd_total", "Estimated LLM cost of the votes", ["model"])
