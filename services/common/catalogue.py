"""Which message travels on which subject (proto/SUBJECTS.md), for the tools that watch
many subjects at once: `moon tail` and the gateway's live stream.

    model_for("md.tick.sim.BTC-USD")   # -> Tick
    model_for("_INBOX.abc")            # -> None (a reply, or not part of the contract)
    matches("md.tick.>", "md.tick.sim.BTC-USD")   # NATS wildcard matching
"""

from __future__ import annotations

from pydantic import BaseModel

from .models import (
    AccountState,
    Bar,
    Book,
    CancelRequest,
    Consensus,
    ErrorEvent,
    ExecutionReport,
    FeedStatus,
    HistoryRequest,
    KillSwitchRequest,
    KillSwitchState,
    LimitsRequest,
    MonitorStartRequest,
    MonitorStatusRequest,
    MonitorStopRequest,
    OrderRequest,
    PositionsRequest,
    PriceAlert,
    PriceRequest,
    PricesRequest,
    RiskCheckRequest,
    Sentiment,
    Signal,
    SwarmAskRequest,
    Tick,
    Verdict,
)

# (subject pattern, message); the first pattern that matches wins.
SUBJECT_MODELS: list[tuple[str, type[BaseModel]]] = [
    ("md.tick.*.*", Tick),
    ("md.bar.*.*.*", Bar),
    ("md.book.*.*", Book),
    ("md.alert.*", PriceAlert),
    ("md.status.*", FeedStatus),
    ("md.api.price", PriceRequest),
    ("md.api.prices", PricesRequest),
    ("md.api.history", HistoryRequest),
    ("md.api.monitor.start", MonitorStartRequest),
    ("md.api.monitor.stop", MonitorStopRequest),
    ("md.api.monitor.status", MonitorStatusRequest),
    ("risk.verdict.*", Verdict),
    ("risk.account", AccountState),
    ("risk.events", KillSwitchState),
    ("risk.api.check", RiskCheckRequest),
    ("risk.api.killswitch.*", KillSwitchRequest),
    ("risk.api.limits.*", LimitsRequest),
    ("risk.api.positions", PositionsRequest),
    ("agent.sentiment.*", Sentiment),
    ("agent.signal.*.*", Signal),
    ("agent.swarm.*", Consensus),
    ("agent.api.swarm.ask", SwarmAskRequest),
    ("orders.submit.*.*", OrderRequest),
    ("orders.cancel.*.*", CancelRequest),
    ("exec.report.*", ExecutionReport),
    ("errors.*", ErrorEvent),
]


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


def model_for(subject: str) -> type[BaseModel] | None:
    for pattern, model in SUBJECT_MODELS:
        if matches(pattern, subject):
            return model
    return None
