"""`moon status`: every service ($SRV.INFO / $SRV.STATS), with its restarts and crash-loop
flag from `make run`'s supervisor (KV `supervisor.<service>`), the feeds (md.status.*),
the account, trading state and kill switch (risk.api.positions, risk.api.killswitch)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from services.contract import subjects as S
from services.common.bus import ApiError
from services.common.config import SystemConfig, load, section
from services.ops.discovery import Service, discover
from services.ops.leadership import Lease, read_leadership
from services.ops.supervision import StreamReadError, Supervised, read_supervision
from services.contract.models import (
    AccountState,
    FeedStatus,
    KillSwitchRequest,
    KillSwitchState,
    PositionsReply,
    PositionsRequest,
    PricesReply,
    PricesRequest,
)
from services.contract.users import SERVICE_USERS

from .connection import Session, explain
from .render import age, cells, duration, money, signed, state, supervised

# Every service of a full system (the NATS users, less the humans').
EXPECTED = [u for u in SERVICE_USERS if u not in ("operator", "admin", "supervisor")]


@dataclass
class Status:
    services: dict[str, Service]
    feeds: dict[str, FeedStatus] = field(default_factory=dict)
    account: AccountState | None = None
    kill_switch: KillSwitchState | None = None
    supervision: dict[str, Supervised] = field(default_factory=dict)  # empty unless run by `make run`
    leadership: dict[str, Lease] = field(default_factory=dict)  # failover leases (empty without failover)
    problems: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [name for name in EXPECTED if name not in self.services]

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

    started = time.monotonic()
    sub = await session.nc.subscribe(S.ALL_FEED_STATUS, cb=on_feed)
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
        return_exceptions=True,
    )
    services, positions, kill_switch, prices, supervision, leadership = results
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
    if records := _records(status, supervision, f"supervisor records (KV {S.kv_supervisor('*')})"):
        status.supervision = records
        status.problems += supervision_problems(status.supervision)
    if records := _records(status, leadership, f"failover leases (KV {S.kv_leader('*')})"):
        status.leadership = records
        status.problems += [f"{name}: no active instance (lease {'released' if lease.released else 'not renewed'} "
                            f"{age(lease.renewed_ts)} ago; a standby takes over)"
                            for name, lease in status.leadership.items()
                            if lease.lapsed() and name not in status.services]  # (a lease left from a failover run)
    venues = {t.venue for t in prices.prices.values()} if isinstance(prices, PricesReply) else set()
    while not venues <= set(feeds) or not feeds:
        left = feed_wait - (time.monotonic() - started)
        if left <= 0 or not venues and isinstance(prices, BaseException):
            break
        feed_seen.clear()
        try:
            await asyncio.wait_for(feed_seen.wait(), left)
        except asyncio.TimeoutError:
            break
    await sub.unsubscribe()
    status.feeds = dict(sorted(feeds.items()))
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
    if status.account is not None:
        parts.append(account_table(status.account, status.kill_switch))
    parts += [Text(f"! {p}", style="red") for p in status.problems]
    console.print(Group(*parts))
