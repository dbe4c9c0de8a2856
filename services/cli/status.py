"""`moon status`: every service ($SRV.INFO / $SRV.STATS), with its restarts and crash-loop
flag from `make run`'s supervisor (KV `supervisor.<service>`), the feeds (md.status.*),
the live venues (exec.venue.*: mode, connection, working and unconfirmed orders; risk's
reconciliation of each, risk.recon.* and KV `risk.recon.<venue>`), the account, trading
state and kill switch (risk.api.positions, risk.api.killswitch), and how full each stream
is ($JS.API.STREAM.INFO: a stream that refuses new writes when full is a problem from 90 %)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from services.contract import subjects as S
from services.common.bus import ApiError
from services.common.config import SystemConfig, load, section
from services.common.streams import jetstream_spec
from services.ops.discovery import Service, discover
from services.ops.leadership import Lease, read_leadership
from services.ops.supervision import StreamReadError, Supervised, read_records, read_supervision
from services.contract.models import (
    AccountState,
    FeedStatus,
    KillSwitchRequest,
    KillSwitchState,
    LiveVenueStatus,
    PositionsReply,
    PositionsRequest,
    PricesReply,
    PricesRequest,
    ReconAction,
    Reconciliation,
    ReconState,
)
from services.contract.users import SERVICE_USERS

from .connection import Session, explain
from .render import age, cells, duration, money, signed, state, supervised

# Services a system may run or not: the notifier runs only with `[notifier] enabled = true`,
# so it is missing only where a running supervisor (`make run`) runs it.
OPTIONAL = ("notifier",)
# Every service of a full system (the NATS users, less the humans' and the optional ones).
EXPECTED = [u for u in SERVICE_USERS if u not in ("operator", "admin", "supervisor", *OPTIONAL)]


@dataclass
class LiveVenue:
    """One live venue: execution's latest status of it and risk's latest reconciliation
    (heard on the bus, or the one stored in KV when none was heard)."""

    status: LiveVenueStatus | None = None
    reconciliation: Reconciliation | None = None

    def as_dict(self) -> dict[str, Any]:
        def plain(m: Any) -> Any:
            return json.loads(m.model_dump_json(exclude_none=True)) if m is not None else None

        return {"status": plain(self.status), "reconciliation": plain(self.reconciliation)}


def venue_problems(venues: dict[str, LiveVenue]) -> list[str]:
    """A live venue that execution is not connected to, or whose reconciliation gates the account."""
    problems = []
    for name, venue in venues.items():
        if venue.status is not None and not venue.status.connected:
            problems.append(f"live venue {name}: not connected ({venue.status.detail or 'no detail'})")
        r = venue.reconciliation
        if r is not None and r.action is not ReconAction.NONE:
            problems.append(f"live venue {name}: {r.state.value}, account {r.action.value}: {r.detail}")
    return problems


# A stream that refuses new writes when full (discard new: ORDERS, the KV buckets) is a
# problem from this share of its max_bytes on: at 100 % ORDERS refuses every order.
FULL_WARN = 0.9


@dataclass
class Store:
    """One stream of the spec as the server has it."""

    name: str
    discard: str  # "new": full, it refuses new writes; "old": it drops its oldest
    bytes: int
    max_bytes: int
    messages: int

    @property
    def used(self) -> float:
        return self.bytes / self.max_bytes if self.max_bytes > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"discard": self.discard, "bytes": self.bytes, "max_bytes": self.max_bytes,
                "messages": self.messages, "used": round(self.used, 4)}


async def read_stores(session: Session) -> tuple[dict[str, Store], list[str]]:
    """Every stream of the spec (proto/nats/jetstream.json) as the server has it, and the
    problems reading them (one unreadable stream does not hide the others)."""
    js = session.nc.jetstream(timeout=session.timeout)
    stores: dict[str, Store] = {}
    problems = []
    for spec in jetstream_spec()["streams"]:
        name = spec["name"]
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            problems.append(f"stream {name}: missing (not provisioned: `make run` or "
                            f"`python -m services.common.streams` provisions it)")
            continue
        except nats.errors.Error as e:  # each stream's problem is told; the others are read
            problems.append(f"stream {name}: not readable ({type(e).__name__}: {e})")
            continue
        # (nats-py gives the policy as the server's string, or the enum where it built the config)
        discard = str(getattr(info.config.discard, "value", info.config.discard) or "old")
        stores[name] = Store(name, discard, info.state.bytes, info.config.max_bytes or 0, info.state.messages)
    return stores, problems


def store_problems(stores: dict[str, Store]) -> list[str]:
    """A stream that refuses new writes when full, FULL_WARN of the way there."""
    return [f"stream {s.name} is {s.used:.0%} full ({s.bytes:,} of {s.max_bytes:,} bytes): full, it refuses "
            f"every new write{' (every new order)' if s.name == 'ORDERS' else ''}; raise "
            f"[jetstream.{s.name}] max_bytes (README: Stream limits)"
            for s in stores.values() if s.discard == "new" and s.used >= FULL_WARN]


@dataclass
class Status:
    services: dict[str, Service]
    feeds: dict[str, FeedStatus] = field(default_factory=dict)
    account: AccountState | None = None
    kill_switch: KillSwitchState | None = None
    supervision: dict[str, Supervised] = field(default_factory=dict)  # empty unless run by `make run`
    leadership: dict[str, Lease] = field(default_factory=dict)  # failover leases (empty without failover)
    venues: dict[str, LiveVenue] = field(default_factory=dict)  # live venues (empty when trading paper only)
    stores: dict[str, Store] = field(default_factory=dict)  # the spec's streams
    problems: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        run = [name for name in OPTIONAL if name in self.supervision and not self.supervision[name].stale()]
        wanted = EXPECTED + run
        return [name for name in wanted if name not in self.services]

    @property
    def healthy(self) -> bool:
        return not (self.missing or self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "services": [s.as_dict() for s in self.services.values()],
            "missing": self.missing,
            "feeds": {v: json.loads(f.model_dump_json()) for v, f in self.feeds.items()},
            "account": json.loads(self.account.model_dump_json()) if self.account else None,
            "kill_switch": json.loads(self.kill_switch.model_dump_json()) if self.kill_switch else None,
            "supervision": {name: record.as_dict() for name, record in self.supervision.items()},
            "leadership": {name: lease.as_dict() for name, lease in self.leadership.items()},
            "venues": {name: venue.as_dict() for name, venue in self.venues.items()},
            "stores": {name: store.as_dict() for name, store in self.stores.items()},
            "problems": self.problems,
        }


async def gather(session: Session, wait: float, feed_wait: float) -> Status:
    """Ask everything at once; the feeds' heartbeat comes every few seconds, so wait for one
    status per venue that has prices (or `feed_wait` at most)."""
    feeds: dict[str, FeedStatus] = {}
    feed_seen = asyncio.Event()

    async def on_feed(msg: Msg) -> None:
        try:
            status = FeedStatus.model_validate_json(msg.data)
        except ValidationError:
            return
        feeds[status.venue] = status
        feed_seen.set()

    venues: dict[str, LiveVenue] = {}

    def on_venue(model: type[LiveVenueStatus] | type[Reconciliation]):  # noqa: ANN202
        async def handle(msg: Msg) -> None:
            try:
                message = model.model_validate_json(msg.data)
            except ValidationError:
                return
            venue = venues.setdefault(message.venue, LiveVenue())
            if isinstance(message, LiveVenueStatus):
                venue.status = message
            else:
                venue.reconciliation = message
            feed_seen.set()

        return handle

    started = time.monotonic()
    sub = await session.nc.subscribe(S.ALL_FEED_STATUS, cb=on_feed)
    venue_subs = [await session.nc.subscribe(S.ALL_VENUE_STATUS, cb=on_venue(LiveVenueStatus)),
                  await session.nc.subscribe(S.ALL_RECONCILIATIONS, cb=on_venue(Reconciliation))]
    bus, timeout = session.bus, session.timeout
    symbols = section(load(), "system", SystemConfig).symbols
    results = await asyncio.gather(
        discover(session.nc, wait=wait),
        bus.call(S.RISK_POSITIONS_API, PositionsRequest(), timeout),
        bus.call(S.risk_killswitch_api(session.target.user), KillSwitchRequest(action="status", actor="moon"),
                 timeout),
        bus.call(S.MD_PRICES_API, PricesRequest(symbols=symbols), timeout),
        read_supervision(session.nc, timeout),
        read_leadership(session.nc, timeout),
        read_records(session.nc, S.risk_recon, Reconciliation, "a Reconciliation", timeout),
        read_stores(session),
        return_exceptions=True,
    )
    services, positions, kill_switch, prices, supervision, leadership, stored_recon, stores = results
    if isinstance(services, BaseException):
        raise services
    status = Status(services)
    for name, result in ((S.RISK_POSITIONS, positions), (S.RISK_KILLSWITCH.rstrip(".*"), kill_switch),
                         (S.MD_PRICES, prices)):
        if isinstance(result, ApiError):
            status.problems.append(f"{name}: {explain(result, session)}")
        elif isinstance(result, BaseException):
            raise result
    if isinstance(positions, PositionsReply):
        status.account = positions.account
    if isinstance(kill_switch, KillSwitchState):
        status.kill_switch = kill_switch
    if isinstance(stores, BaseException):
        raise stores
    status.stores, unreadable = stores
    status.problems += unreadable + store_problems(status.stores)
    if records := _records(status, supervision, f"supervisor records (KV {S.kv_supervisor('*')})"):
        status.supervision = records
        status.problems += supervision_problems(status.supervision)
    if records := _records(status, leadership, f"failover leases (KV {S.kv_leader('*')})"):
        status.leadership = records
        status.problems += [f"{name}: no active instance (lease {'released' if lease.released else 'not renewed'} "
                            f"{age(lease.renewed_ts)} ago; a standby takes over)"
                            for name, lease in status.leadership.items()
                            if lease.lapsed() and name not in status.services]  # (a lease left from a failover run)
    # Risk's stored reconciliations name the live venues; each one's status comes every few seconds.
    stored = _records(status, stored_recon, f"reconciliations (KV {S.risk_recon('*')})")
    for name, reconciliation in stored.items():
        venues.setdefault(name, LiveVenue())
        if venues[name].reconciliation is None:
            venues[name].reconciliation = reconciliation
    priced = {t.venue for t in prices.prices.values()} if isinstance(prices, PricesReply) else set()

    def waiting() -> bool:
        return not priced <= set(feeds) or not feeds or any(v.status is None for v in venues.values())

    while waiting():
        left = feed_wait - (time.monotonic() - started)
        if left <= 0 or not priced and isinstance(prices, BaseException):
            break
        feed_seen.clear()
        try:
            await asyncio.wait_for(feed_seen.wait(), left)
        except asyncio.TimeoutError:
            break
    for s in (sub, *venue_subs):
        await s.unsubscribe()
    status.feeds = dict(sorted(feeds.items()))
    status.venues = dict(sorted(venues.items()))
    status.problems += venue_problems(status.venues)
    status.problems += [f"live venue {name}: no status on {S.exec_venue(name)} within {feed_wait:g}s "
                        f"(risk's last reconciliation: {v.reconciliation.state.value if v.reconciliation else '-'})"
                        for name, v in status.venues.items() if v.status is None]
    if not feeds:
        status.problems.append(f"no feed status on md.status.* within {feed_wait:g}s")
    status.problems += [f"feed {v}: {f.status} ({f.detail})" for v, f in feeds.items() if f.status != "connected"]
    return status


def _records(status: Status, result: object, what: str) -> dict:
    """The records of a read_records result; an unreadable bucket or value is a problem."""
    if isinstance(result, StreamReadError):
        status.problems.append(f"{what}: {result}")
        return {}
    if isinstance(result, BaseException):
        raise result
    records, unreadable = result  # type: ignore[misc]
    status.problems += unreadable
    return records


def supervision_problems(records: dict[str, Supervised]) -> list[str]:
    """A crash loop or a pending restart that the supervisor (still running) reports."""
    problems = []
    for name, record in records.items():
        if record.stale() or record.state not in ("crash_loop", "restarting"):
            continue
        what = "CRASH LOOP" if record.state == "crash_loop" else "restarting"
        problems.append(f"{name}: {what} ({record.restarts} restarts, {record.recent_crashes} recent crashes, "
                        f"last {record.last_exit or '?'})")
    return problems


def services_table(status: Status) -> Table:
    table = Table(title="services", title_justify="left", expand=False)
    numeric = ("instances", "requests", "errors", "restarts")
    for column in ("service", "instances", "version", "uptime", "requests", "errors", "restarts", "supervisor",
                   "last error"):
        table.add_column(column, justify="right" if column in numeric else "left")
    now = time.time_ns()
    sup = status.supervision

    def restarts(name: str) -> str:
        return str(sup[name].restarts) if name in sup else "-"

    for name, service in status.services.items():
        uptime = duration((now - service.started_ns) / 1e9) if service.started_ns else "-"
        errors = Text(str(service.errors), style="red" if service.errors else "")
        table.add_row(*cells(name, str(len(service.instances)), ", ".join(service.versions), uptime,
                      str(service.requests), errors, restarts(name), supervised(sup.get(name)),
                      service.last_error[:60]))
    for name in status.missing:
        down = Text("not running", style="red")
        table.add_row(*cells(Text(name, style="red"), Text("0", style="red"), "", down, "", "", restarts(name),
                             supervised(sup.get(name)), ""))
    # nats-server itself when `make run` supervises it: "nats", or a cluster's "nats-1", ..
    for node in sorted(n for n in sup if n == "nats" or re.fullmatch(r"nats-\d+", n)):
        label = "nats-server" if node == "nats" else f"nats-server {node}"
        table.add_row(*cells(label, "", "", "", "", "", restarts(node), supervised(sup[node]), ""))
    return table


def failover_table(status: Status) -> Table:
    """Per failover service: the active instance, since when, the last takeover."""
    table = Table(title="failover (active instance)", title_justify="left")
    for column in ("service", "active", "since", "last takeover", "takeovers", "renewed"):
        table.add_column(column)
    for name, lease in status.leadership.items():
        active = Text(lease.holder, style="red" if lease.lapsed() else "green")
        takeover = f"{age(lease.takeover_ts)} ago from {lease.previous_holder}" if lease.takeover_ts else "-"
        table.add_row(*cells(name, active, age(lease.acquired_ts) + " ago", takeover, str(lease.takeovers),
                             age(lease.renewed_ts) + " ago"))
    return table


def feeds_table(status: Status) -> Table:
    table = Table(title="feeds", title_justify="left")
    for column in ("venue", "status", "symbols", "detail", "last heard"):
        table.add_column(column)
    for venue, feed in status.feeds.items():
        style = "green" if feed.status == "connected" else "red"
        heard = age(feed.ts) + " ago"
        table.add_row(*cells(venue, Text(feed.status, style=style), str(feed.symbols), feed.detail, heard))
    return table


RECON_STYLES = {ReconState.MATCHED: "green", ReconState.MISMATCH: "bold red", ReconState.UNAVAILABLE: "red"}


def venues_table(status: Status) -> Table:
    """Each live venue: mode, connection, orders (working, unconfirmed, unknown to execution),
    risk's reconciliation and what it did, when last heard."""
    table = Table(title="live venues", title_justify="left")
    numeric = ("working", "unconfirmed", "unknown")
    for column in ("venue", "kind", "mode", "connected", "working", "unconfirmed", "unknown", "reconciliation",
                   "action", "cash", "equity", "last heard", "detail"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for name, venue in status.venues.items():
        s, r = venue.status, venue.reconciliation
        mode = Text(s.mode.value, style="bold yellow" if s.mode.value == "live" else "") if s else "-"
        connected = Text("yes", style="green") if s and s.connected else Text("no" if s else "-", style="red")
        recon = Text(r.state.value, style=RECON_STYLES.get(r.state, "")) if r else Text("-")
        action = Text(r.action.value, style="" if r.action is ReconAction.NONE else "bold red") if r else Text("-")
        detail = (r.detail if r and r.action is not ReconAction.NONE else
                  (s.account_error or s.detail) if s else "") or (r.detail if r else "")
        table.add_row(*cells(
            name, s.kind.value if s else "-", mode, connected,
            str(s.working_orders) if s else "-", str(s.unconfirmed_orders) if s else "-",
            Text(str(len(s.unknown_orders)), style="red" if s.unknown_orders else "") if s else "-",
            recon, action, money(r.cash if r else None), money(r.equity if r else None),
            age(s.ts) + " ago" if s else "-", (detail or "")[:80]))
    return table


def stores_table(status: Status) -> Table:
    table = Table(title="streams", title_justify="left")
    for column in ("stream", "messages", "bytes", "of max_bytes", "used", "when full"):
        table.add_column(column)
    for store in status.stores.values():
        full = "refuses new" if store.discard == "new" else "drops oldest"
        style = "red" if store.discard == "new" and store.used >= FULL_WARN else ""
        table.add_row(*cells(store.name, f"{store.messages:,}", f"{store.bytes:,}", f"{store.max_bytes:,}",
                             Text(f"{store.used:.1%}", style=style), full))
    return table


def account_table(account: AccountState, kill_switch: KillSwitchState | None) -> Table:
    table = Table(title="account", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    reasons = f" ({'; '.join(account.reasons)})" if account.reasons else ""
    table.add_row(*cells("trading state", Text.assemble(state(account.state), reasons)))
    if kill_switch is not None:
        engaged = Text(f"ENGAGED by {kill_switch.actor}: {kill_switch.reason}", style="bold red")
        table.add_row(*cells("kill switch", engaged if kill_switch.engaged else Text("off", style="green")))
    table.add_row(*cells("equity", money(account.equity)))
    table.add_row(*cells("cash", money(account.cash)))
    table.add_row(*cells("day PnL", signed(account.day_pnl)))
    table.add_row(*cells("realized PnL", signed(account.realized_pnl)))
    table.add_row(*cells("unrealized PnL", signed(account.unrealized_pnl)))
    table.add_row(*cells("fees", money(account.fees)))
    table.add_row(*cells("drawdown", f"{account.drawdown_pct:.2f}% (peak {money(account.peak_equity)})"))
    table.add_row(*cells("gross exposure", money(account.gross_exposure)))
    table.add_row(*cells("open positions", str(account.open_positions)))
    return table


def show(status: Status, console: Console) -> None:
    parts: list[Any] = [services_table(status), feeds_table(status)]
    if status.leadership:
        parts.insert(1, failover_table(status))
    if status.venues:
        parts.append(venues_table(status))
    if status.account is not None:
        parts.append(account_table(status.account, status.kill_switch))
    if status.stores:
        parts.append(stores_table(status))
    parts += [Text(f"! {p}", style="red") for p in status.problems]
    console.print(Group(*parts))
