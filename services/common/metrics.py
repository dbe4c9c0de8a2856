"""Serve the process's Prometheus metrics (the default registry of prometheus-client:
the agent's own counters and the LLM library's) on http://<host>:<port>/metrics."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(port: int, host: str = "0.0.0.0") -> bool:
    """Start the exporter thread; port 0 = off. A port in use is logged, never fatal:
    a service without its metrics still trades."""
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as e:
        log.error("metrics not served: cannot listen on %s:%d: %s", host, port, e)
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
