"""Subject names of proto/SUBJECTS.md: the Python mirror of rust-common/src/subjects.rs
(same names, upper case for constants), plus the typed request/reply endpoints.

Build subjects only from validated `Symbol` / `Venue` values (single safe tokens), never
from raw input. No other Python module under services/ spells a subject literally;
tests/test_subjects.py checks this module against subjects.rs and proto/SUBJECTS.md.

    await bus.call(subjects.MD_PRICE_API, PriceRequest(symbol="BTC-USD"))   # -> PriceReply
    await bus.call(subjects.risk_killswitch_api("operator"), KillSwitchRequest(action="status"))
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from pydantic import BaseModel

from .models import (
    Consensus,
    HistoryReply,
    HistoryRequest,
    KillSwitchRequest,
    KillSwitchState,
    LimitsReply,
    LimitsRequest,
    MonitorStartRequest,
    MonitorStatusReply,
    MonitorStatusRequest,
    MonitorStopRequest,
    PositionsReply,
    PositionsRequest,
    BacktestReply,
    BacktestRequest,
    PriceReply,
    PriceRequest,
    PricesReply,
    PricesRequest,
    RiskCheckRequest,
    RiskCheckResult,
    Strict,
    SwarmAskRequest,
    VersionReply,
)

# ---------------------------------------------------------------- the constants of subjects.rs

ACCOUNT = "risk.account"
RISK_EVENTS = "risk.events"
RISK_CHECK = "risk.api.check"
# `risk.api.killswitch.<caller>` / `risk.api.limits.<caller>`: the caller is the NATS user,
# pinned by its permissions (proto/nats/moonbus.conf), never a payload claim.
RISK_KILLSWITCH = "risk.api.killswitch.*"
RISK_LIMITS = "risk.api.limits.*"
RISK_POSITIONS = "risk.api.positions"
RISK_VERSION = "risk.api.version"
MD_PRICE = "md.api.price"
MD_PRICES = "md.api.prices"
MD_HISTORY = "md.api.history"
MD_MONITOR_START = "md.api.monitor.start"
MD_MONITOR_STOP = "md.api.monitor.stop"
MD_MONITOR_STATUS = "md.api.monitor.status"
MD_VERSION = "md.api.version"
EXEC_VERSION = "exec.api.version"
ALL_TICKS = "md.tick.>"
ALL_REPORTS = "exec.report.>"
ORDERS_SUBMIT_ALL = "orders.submit.>"
ORDERS_CANCEL_ALL = "orders.cancel.>"
# Every live venue's LiveVenueStatus (published by execution only).
ALL_VENUE_STATUS = "exec.venue.>"
# Every protection's ProtectionState (published by execution only).
ALL_PROTECTIONS = "exec.protection.>"
# nats-server's advisory when execution's ORDERS consumer gives up on a message (max_deliver);
# kept in the DEADLETTER stream, acted on by execution.
DEAD_LETTER_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.execution"

# The JetStream streams; ORDERS dedupes on `Nats-Msg-Id` = client_order_id.
ORDERS_STREAM = "ORDERS"
EXEC_STREAM = "EXEC"
# The KV bucket for the latest state a starting service reads at once.
KV_BUCKET = "moonbus"
# Where a report goes when the order's symbol cannot be trusted.
INVALID_TOKEN = "_invalid"
# The agent of rust-risk's kill-switch flatten orders (`orders.submit.killswitch.<symbol>`).
KILLSWITCH_AGENT = "killswitch"
# The agent of execution's protection exits (`orders.submit.protection.<symbol>`).
PROTECTION_AGENT = "protection"

# ---------------------------------------------------------------- Python-side constants

SWARM_ASK = "agent.api.swarm.ask"
# One backtest run (request/reply), served by the backtest workers in queue group BACKTEST_QUEUE:
# a sweep fans its grid out here, so every worker (on any machine) adds capacity.
BACKTEST_RUN = "backtest.api.run"
BACKTEST_QUEUE = "backtest"
# The JetStream object store of backtest datasets (stream OBJ_backtest-data), each named by
# the sha256 of its bytes; the sweep writes them (user operator), the workers read them.
BACKTEST_DATA_BUCKET = "backtest-data"
ALL_BARS = "md.bar.>"
ALL_BOOKS = "md.book.>"
ALL_ALERTS = "md.alert.>"
ALL_ARBS = "md.arb.>"
ALL_FEED_STATUS = "md.status.>"
ALL_VERDICTS = "risk.verdict.>"
ALL_RECONCILIATIONS = "risk.recon.>"
ALL_SENTIMENT = "agent.sentiment.>"
ALL_SIGNALS = "agent.signal.>"
ALL_SWARM = "agent.swarm.>"
ALL_ERRORS = "errors.>"
ORDERS_ALL = "orders.>"
ORDERS_PREFIX = "orders."
# KV keys in KV_BUCKET (not subjects): risk's kill switch and loss latch.
KV_KILLSWITCH = "risk.killswitch"
KV_LOSS_LATCH = "risk.loss_latch"

# ---------------------------------------------------------------- builders (subjects.rs names)


def tick(venue: object, symbol: object) -> str:
    """`md.tick.<venue>.<symbol>`."""
    return f"md.tick.{venue}.{symbol}"


def bar(interval: object, venue: object, symbol: object) -> str:
    """`md.bar.<interval>.<venue>.<symbol>` (closed bars)."""
    return f"md.bar.{interval}.{venue}.{symbol}"


def book(venue: object, symbol: object) -> str:
    """`md.book.<venue>.<symbol>` (`all` = every venue merged)."""
    return f"md.book.{venue}.{symbol}"


def alert(symbol: object) -> str:
    """`md.alert.<symbol>`."""
    return f"md.alert.{symbol}"


def arb(symbol: object) -> str:
    """`md.arb.<symbol>` (cross-venue arbitrage opportunities)."""
    return f"md.arb.{symbol}"


def feed_status(venue: object) -> str:
    """`md.status.<venue>`."""
    return f"md.status.{venue}"


def verdict(symbol: object) -> str:
    """`risk.verdict.<symbol>`."""
    return f"risk.verdict.{symbol}"


def exec_report(symbol: object) -> str:
    """`exec.report.<symbol>`."""
    return f"exec.report.{symbol}"


def exec_venue(venue: object) -> str:
    """`exec.venue.<venue>`: a live venue's status and account, published by execution only."""
    return f"exec.venue.{venue}"


def exec_protection(symbol: object) -> str:
    """`exec.protection.<symbol>`: a protection's state (ProtectionState), published by execution only."""
    return f"exec.protection.{symbol}"


# Execution's protections: a KV bucket of their own (key = the entry's client_order_id; filled,
# it refuses only new protections). An ended one is stored with a Nats-TTL and expires by itself.
KV_PROTECTIONS_BUCKET = "protections"


def kv_protection(parent_order_id: object) -> str:
    """The subject the latest record of entry `parent_order_id`'s protection is stored on:
    `$KV.protections.<parent_order_id>` (written by execution only)."""
    return f"$KV.{KV_PROTECTIONS_BUCKET}.{parent_order_id}"


def risk_recon(venue: object) -> str:
    """`risk.recon.<venue>`: risk's reconciliation of a live venue (published by risk only);
    also the KV key (`risk.recon.<venue>`) of the latest one."""
    return f"risk.recon.{venue}"


def orders_submit(agent: object, symbol: object) -> str:
    """`orders.submit.<agent>.<symbol>`: each NATS user may publish only its own agent token."""
    return f"orders.submit.{agent}.{symbol}"


def orders_cancel(agent: object, symbol: object) -> str:
    """`orders.cancel.<agent>.<symbol>`: each NATS user may publish only its own agent token."""
    return f"orders.cancel.{agent}.{symbol}"


def orders(kind: object, agent: object, symbol: object) -> str:
    """`orders.<kind>.<agent>.<symbol>` (kind `submit` / `cancel`, or a wildcard)."""
    return f"orders.{kind}.{agent}.{symbol}"


def errors(service: object) -> str:
    """`errors.<service>`."""
    return f"errors.{service}"


def sentiment(symbol: object) -> str:
    """`agent.sentiment.<symbol>`; also the KV key of the latest Sentiment."""
    return f"agent.sentiment.{symbol}"


# The sentiment agent's own KV bucket (a full bucket refuses every write, and the sentiment agent
# may name any symbol: in KV_BUCKET its credential could fill it and lock risk's keys out).
KV_SENTIMENT_BUCKET = "sentiment"


def kv_sentiment(symbol: object) -> str:
    """The KV key (not a subject) of a symbol's latest Sentiment, in KV_SENTIMENT_BUCKET."""
    return f"{symbol}"


def kv_sentiment_subject(symbol: object) -> str:
    """The subject a symbol's latest Sentiment is stored on: `$KV.sentiment.<symbol>`."""
    return f"$KV.{KV_SENTIMENT_BUCKET}.{symbol}"


def kv_supervisor(service: object) -> str:
    """The KV key (not a subject) of `make run`'s record of a supervised service
    (`supervisor.<service>`, `supervisor.nats` for nats-server); only user `supervisor` writes them."""
    return f"supervisor.{service}"


def object_chunks(bucket: object, nuid: object) -> str:
    """`$O.<bucket>.C.<nuid>`: the chunks of one object of a JetStream object store."""
    return f"$O.{bucket}.C.{nuid}"


def object_meta(bucket: object, encoded_name: object) -> str:
    """`$O.<bucket>.M.<base64url(name)>`: the meta (ObjectInfo JSON) of one object."""
    return f"$O.{bucket}.M.{encoded_name}"


def kv_leader(service: object) -> str:
    """The KV key (not a subject) of a service's failover lease (rust-common leader.rs):
    `leader.risk`, `leader.execution`; written only by that service's user."""
    return f"leader.{service}"


def kv_subject(key: object) -> str:
    """The subject a KV key of KV_BUCKET is stored on: `$KV.moonbus.<key>`."""
    return f"$KV.{KV_BUCKET}.{key}"


def signal(agent: object, symbol: object) -> str:
    """`agent.signal.<agent>.<symbol>`."""
    return f"agent.signal.{agent}.{symbol}"


def swarm(symbol: object) -> str:
    """`agent.swarm.<symbol>`."""
    return f"agent.swarm.{symbol}"


def risk_killswitch(caller: object) -> str:
    """`risk.api.killswitch.<caller>`, caller = the NATS user."""
    return f"risk.api.killswitch.{caller}"


def risk_limits(caller: object) -> str:
    """`risk.api.limits.<caller>`, caller = the NATS user."""
    return f"risk.api.limits.{caller}"


class OrderKind(str, Enum):
    """Submit or cancel (`orders.<kind>.<agent>.<symbol>`)."""

    SUBMIT = "submit"
    CANCEL = "cancel"


def parse_order_subject(subject: str) -> tuple[OrderKind, str, str] | None:
    """`orders.<submit|cancel>.<agent>.<symbol>` -> (kind, agent, symbol); None otherwise."""
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[0] != "orders" or tokens[1] not in ("submit", "cancel"):
        return None
    return OrderKind(tokens[1]), tokens[2], tokens[3]


def last_token(subject: str) -> str:
    """The last token of a subject (`exec.report.BTC-USD` -> `BTC-USD`)."""
    return subject.rsplit(".", 1)[-1]


# Patterns of every message subject of proto/SUBJECTS.md (`*` for a token; the API
# subjects are the constants above). tests/test_subjects.py compares them with the tables.
PATTERNS: tuple[str, ...] = (
    tick("*", "*"), bar("*", "*", "*"), book("*", "*"), alert("*"), arb("*"), feed_status("*"),
    MD_PRICE, MD_PRICES, MD_HISTORY, MD_MONITOR_START, MD_MONITOR_STOP, MD_MONITOR_STATUS, MD_VERSION,
    verdict("*"), ACCOUNT, RISK_EVENTS, RISK_CHECK, RISK_KILLSWITCH, RISK_LIMITS, RISK_POSITIONS, RISK_VERSION,
    sentiment("*"), signal("*", "*"), swarm("*"), SWARM_ASK,
    risk_recon("*"),
    orders_submit("*", "*"), orders_cancel("*", "*"), exec_report("*"), exec_report(INVALID_TOKEN),
    exec_venue("*"), exec_protection("*"),
    EXEC_VERSION, errors("*"), DEAD_LETTER_ADVISORY, BACKTEST_RUN,
)

# ---------------------------------------------------------------- typed endpoints

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class VersionRequest(Strict):
    """`{}`: the request of every `*.api.version`."""


@dataclass(frozen=True)
class Endpoint(Generic[Q, R]):
    """A request/reply API: its subject, the request model and the reply model
    (`Bus.call(endpoint, request)` sends one and decodes the other)."""

    subject: str
    request_model: type[Q]
    reply_model: type[R]


MD_PRICE_API = Endpoint(MD_PRICE, PriceRequest, PriceReply)
MD_PRICES_API = Endpoint(MD_PRICES, PricesRequest, PricesReply)
MD_HISTORY_API = Endpoint(MD_HISTORY, HistoryRequest, HistoryReply)
MD_MONITOR_START_API = Endpoint(MD_MONITOR_START, MonitorStartRequest, MonitorStatusReply)
MD_MONITOR_STOP_API = Endpoint(MD_MONITOR_STOP, MonitorStopRequest, MonitorStatusReply)
MD_MONITOR_STATUS_API = Endpoint(MD_MONITOR_STATUS, MonitorStatusRequest, MonitorStatusReply)
MD_VERSION_API = Endpoint(MD_VERSION, VersionRequest, VersionReply)
RISK_CHECK_API = Endpoint(RISK_CHECK, RiskCheckRequest, RiskCheckResult)
RISK_POSITIONS_API = Endpoint(RISK_POSITIONS, PositionsRequest, PositionsReply)
RISK_VERSION_API = Endpoint(RISK_VERSION, VersionRequest, VersionReply)
EXEC_VERSION_API = Endpoint(EXEC_VERSION, VersionRequest, VersionReply)
SWARM_ASK_API = Endpoint(SWARM_ASK, SwarmAskRequest, Consensus)
BACKTEST_RUN_API = Endpoint(BACKTEST_RUN, BacktestRequest, BacktestReply)


def risk_killswitch_api(caller: str) -> Endpoint[KillSwitchRequest, KillSwitchState]:
    """The kill switch as `caller` (the NATS user: each may publish only its own)."""
    return Endpoint(risk_killswitch(caller), KillSwitchRequest, KillSwitchState)


def risk_limits_api(caller: str) -> Endpoint[LimitsRequest, LimitsReply]:
    """The limits as `caller` (the NATS user)."""
    return Endpoint(risk_limits(caller), LimitsRequest, LimitsReply)


# The version endpoint of each service, by the names `moon` and the client use.
VERSION_APIS: dict[str, Endpoint[VersionRequest, VersionReply]] = {
    "market-data": MD_VERSION_API,
    "risk": RISK_VERSION_API,
    "execution": EXEC_VERSION_API,
}
