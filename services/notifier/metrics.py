"""Prometheus metrics of the notifier (served on [notifier] metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SENT = Counter("moonbus_notifier_sent_total", "Notifications a channel's webhook accepted", ["channel"])
FAILED = Counter("moonbus_notifier_failed_total", "Notifications given up after the retries", ["channel"])
RETRIES = Counter("moonbus_notifier_retries_total", "Retried webhook calls (5xx, 429, timeouts)", ["channel"])
SUPPRESSED = Counter("moonbus_notifier_suppressed_total",
                     "Notifications not sent: rate limit or full queue (told in a summary)", ["channel", "reason"])
QUEUED = Gauge("moonbus_notifier_queued", "Notifications waiting in a channel's queue", ["channel"])
