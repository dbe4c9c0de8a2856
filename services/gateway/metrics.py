"""The gateway's Prometheus metrics, served on its own HTTP port at /metrics.

One registry per app (not the process default) so that several apps in one process
(tests) each count their own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# The most distinct error codes `bus_requests` counts apart; later new ones count as `other`.
# A code comes from whoever answers the request (the pattern bounds its form, not its
# variety): a stolen responder credential must not make a new series per answer.
MAX_OUTCOMES = 50


class GatewayMetrics:
    def __init__(self) -> None:
        self._outcomes: set[str] = {"ok"}
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("moonbus_gateway_http_requests_total", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("moonbus_gateway_http_request_seconds", "HTTP request latency (to the headers)",
                                      ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.bus_requests = Counter("moonbus_gateway_bus_requests_total",
                                    "Bus requests by subject and outcome (ok or the error code)",
                                    ["subject", "outcome"], registry=r)
        self.bus_seconds = Histogram("moonbus_gateway_bus_request_seconds", "Bus request latency", ["subject"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter("moonbus_gateway_auth_failures_total",
                                     "Requests refused for their token, by access (read, write) and reason",
                                     ["access", "reason"], registry=r)
        self.refused = Counter("moonbus_gateway_refused_total",
                               "Requests refused at the edge or for a limit, by error code", ["code"], registry=r)
        self.bus_messages = Counter("moonbus_gateway_bus_messages_total", "Live bus messages received, by topic",
                                    ["topic"], registry=r)
        self.stream_clients = Gauge("moonbus_gateway_stream_clients", "Open live streams (/api/stream)", registry=r)
        self.stream_events = Counter("moonbus_gateway_stream_events_total", "Events queued to live streams, by topic",
                                     ["topic"], registry=r)
        self.stream_dropped = Counter("moonbus_gateway_stream_dropped_total",
                                      "Events dropped because a live stream's client was too slow", registry=r)
        self.view_dropped = Counter("moonbus_gateway_view_dropped_total",
                                    "Bus messages dropped by a view (swarm, sentiment, arbs, protections, algos) "
                                    "for what was wrong with them", ["view", "reason"], registry=r)
        self.orders_submitted = Counter("moonbus_gateway_orders_submitted_total",
                                        "Orders stored in ORDERS through POST /api/orders", ["duplicate"], registry=r)
        self.nats_connected = Gauge("moonbus_gateway_nats_connected", "1 while connected to NATS", registry=r)

    def outcome(self, code: str) -> str:
        """`code` as the outcome label of `bus_requests`: itself, or `other` once MAX_OUTCOMES
        distinct ones are counted."""
        if code not in self._outcomes:
            if len(self._outcomes) >= MAX_OUTCOMES:
                return "other"
            self._outcomes.add(code)
        return code
