"""Prometheus metrics of the sentiment agent (served on [sentiment_agent] metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter

ITEMS = Counter("moonbus_sentiment_items_total", "Headlines scored, by source", ["source"])
SCORES = Counter("moonbus_sentiment_scores_total", "Per-symbol scores, by the model that gave them",
                 ["model", "fallback"])
FEED_ERRORS = Counter("moonbus_sentiment_feed_errors_total", "Feed polls that failed (HTTP, not RSS/Atom)",
                      ["source"])
KV_FAILURES = Counter("moonbus_sentiment_kv_failures_total", "Sentiments not written to the KV bucket")
