"""Which message travels on which subject (proto/SUBJECTS.md), for the tools that watch
many subjects at once: `moon tail` and the gateway's live stream.

    model_for("md.tick.sim.BTC-USD")   # -> Tick
    model_for("_INBOX.abc")            # -> None (a reply, or not part of the contract)
    matches("md.tick.>", "md.tick.sim.BTC-USD")   # NATS wildcard matching
"""

from __future__ import annotations

from pydantic import BaseModel

from . import subjects as S
from .models import (
    AccountState,
    ArbOpportunity,
    Bar,
    Book,
    CancelRequest,
    Consensus,
    ErrorEvent,
    ExecutionReport,
    FeedStatus,
    KillSwitchRequest,
    KillSwitchState,
    LimitsRequest,
    LiveVenueStatus,
    OrderRequest,
    PositionsRequest,
    PriceAlert,
    ProtectionState,
    Reconciliation,
    RiskCheckRequest,
    Sentiment,
    Signal,
    SwarmAskRequest,
    Tick,
    Verdict,
)

# (subject pattern, message); the first pattern that matches wins.
SUBJECT_MODELS: list[tuple[str, type[BaseModel]]] = [
    (S.tick("*", "*"), Tick),
    (S.bar("*", "*", "*"), Bar),
    (S.book("*", "*"), Book),
    (S.alert("*"), PriceAlert),
    (S.arb("*"), ArbOpportunity),
    (S.feed_status("*"), FeedStatus),
    *((e.subject, e.request_model) for e in (S.MD_PRICE_API, S.MD_PRICES_API, S.MD_HISTORY_API,
                                             S.MD_MONITOR_START_API, S.MD_MONITOR_STOP_API,
                                             S.MD_MONITOR_STATUS_API)),
    (S.verdict("*"), Verdict),
    (S.ACCOUNT, AccountState),
    (S.risk_recon("*"), Reconciliation),
    (S.RISK_EVENTS, KillSwitchState),
    (S.RISK_CHECK, RiskCheckRequest),
    (S.RISK_KILLSWITCH, KillSwitchRequest),
    (S.RISK_LIMITS, LimitsRequest),
    (S.RISK_POSITIONS, PositionsRequest),
    (S.sentiment("*"), Sentiment),
    (S.signal("*", "*"), Signal),
    (S.swarm("*"), Consensus),
    (S.SWARM_ASK, SwarmAskRequest),
    (S.orders_submit("*", "*"), OrderRequest),
    (S.orders_cancel("*", "*"), CancelRequest),
    (S.exec_report("*"), ExecutionReport),
    (S.exec_venue("*"), LiveVenueStatus),
    (S.exec_protection("*"), ProtectionState),
    (S.errors("*"), ErrorEvent),
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
    """The message model a concrete subject carries (the first pattern that matches), or None."""
    for pattern, model in SUBJECT_MODELS:
        if matches(pattern, subject):
            return model
    return None
