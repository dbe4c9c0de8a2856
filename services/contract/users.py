"""The NATS users of proto/nats/moonbus.conf: one per service (its name is also its
service name on the NATS service API), `operator` for humans and tools, and `admin`, which
provisions JetStream and which no running service holds (SECURITY.md)."""

SERVICE_USERS: list[str] = [
    "market-data",
    "risk",
    "execution",
    "trading-agent",
    "risk-agent",
    "sentiment-agent",
    "swarm-agent",
    "gateway",
    "notifier",  # services/notifier: read-only, sends fills, breaches and alerts to webhooks
    "operator",
    "backtest",  # the backtest workers (services/backtest/worker.py): backtest.api.run, dataset reads
    "supervisor",  # make run's launcher: restarts crashed services, records them in KV supervisor.*
    "admin",  # provisioning only (streams.provision): no running service holds it
]
