"""`moon`: watch and operate a running moonbus from the terminal.

Attaches as the `operator` user with .moon/nats.env (written by `make run`), or with
--server/--user/--password, or NATS_URL/NATS_USER/NATS_PASSWORD. Every failure ends
with one line on stderr and exit code 1 (2 for a bad command line).
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.ops import orderlog
from services.contract import subjects as S
from services.common.config import SystemConfig, load, section
from services.common.config import REPO_ROOT
from services.contract.models import (
    KillSwitchRequest,
    MonitorStartRequest,
    MonitorStatusReply,
    MonitorStatusRequest,
    MonitorStopRequest,
    PositionsRequest,
    PricesRequest,
)

from . import orders as order_views
from . import status as status_views
from .connection import CliError, Session, Target, run
from .render import age, cells, money, printable, signed, state
from .tail import parse_filters, tail

T = TypeVar("T")
app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
monitor_app = typer.Typer(help="Price monitors of market-data (md.api.monitor.*): alert on big moves.",
                          no_args_is_help=True)
killswitch_app = typer.Typer(help="The kill switch of risk (risk.api.killswitch): stop all new orders.",
                             no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")
app.add_typer(killswitch_app, name="killswitch")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


class Options:
    target: Target
    timeout: float


def console() -> Console:
    return Console(highlight=False)


def fail(message: str) -> typer.Exit:
    Console(stderr=True, highlight=False).print(Text(printable(f"moon: {message}"), style="red"), soft_wrap=True)
    return typer.Exit(1)


def execute(ctx: typer.Context, work: Callable[[Session], Awaitable[T]]) -> T:
    options: Options = ctx.obj
    try:
        return run(options.target, options.timeout, work)
    except CliError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:  # Ctrl+C: the usual way to end `moon tail`
        raise typer.Exit(130) from None


def print_json(value: Any) -> None:
    text = value.model_dump_json(exclude_none=True) if isinstance(value, BaseModel) else json.dumps(value)
    console().print_json(text)


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option("--server", "-s", help="NATS URL [env NATS_URL]")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="NATS user [env NATS_USER]")] = None,
    password: Annotated[str | None, typer.Option("--password", help="NATS password [env NATS_PASSWORD]")] = None,
    env_file: Annotated[Path | None, typer.Option(
        "--env-file", help="Credentials file (default: .moon/nats.env here, else in the repository)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for an answer.")] = 3.0,
) -> None:
    options = Options()
    try:
        options.target = Target.resolve(server, user, password, env_file)
    except CliError as e:
        raise fail(str(e)) from None
    options.timeout = timeout
    ctx.obj = options


@app.command("tail")
def tail_command(
    ctx: typer.Context,
    subject: Annotated[str, typer.Argument(help="Subject pattern, e.g. 'md.tick.>' or 'exec.report.BTC-USD'.")],
    raw: Annotated[bool, typer.Option("--json", help="Print each payload as it arrived, one per line.")] = False,
    filters: Annotated[list[str] | None, typer.Option(
        "--filter", "-f", help="Only messages whose field has this value: symbol=BTC-USD, timings.filled_ts=1 "
        "(repeatable; all must match).")] = None,
    count: Annotated[int, typer.Option("--count", "-n", min=0, help="Stop after this many messages.")] = 0,
    seconds: Annotated[float, typer.Option("--seconds", min=0, help="Stop after this long.")] = 0,
) -> None:
    """Live messages on SUBJECT, decoded and coloured by type (Ctrl+C stops)."""
    try:
        wanted = parse_filters(filters or [])
    except CliError as e:
        raise fail(str(e)) from None
    execute(ctx, lambda s: tail(s, subject, console(), raw=raw, filters=wanted, count=count, seconds=seconds))


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    wait: Annotated[float, typer.Option(help="Seconds to collect the services' answers.")] = 1.0,
    feed_wait: Annotated[float, typer.Option(help="Seconds to wait for the feeds' heartbeat.")] = 6.0,
) -> None:
    """Every service (instances, versions, uptime, requests, errors), the feeds, the account
    and trading state. Exit code 1 when something is missing or unhealthy."""
    result = execute(ctx, lambda s: status_views.gather(s, wait, feed_wait))
    if as_json:
        print_json(result.as_dict())
    else:
        status_views.show(result, console())
    if not result.healthy:
        raise typer.Exit(1)


@app.command()
def positions(ctx: typer.Context, symbol: Annotated[str | None, typer.Argument()] = None,
              as_json: JsonFlag = False) -> None:
    """Positions and PnL (risk.api.positions)."""
    reply = execute(ctx, lambda s: s.bus.call(S.RISK_POSITIONS_API, PositionsRequest(symbol=symbol), s.timeout))
    if as_json:
        return print_json(reply)
    table = Table(title="positions", title_justify="left")
    for column in ("symbol", "quantity", "avg price", "mark", "notional", "unrealized", "realized", "fees"):
        table.add_column(column, justify="left" if column == "symbol" else "right")
    for p in reply.positions:
        table.add_row(*cells(p.symbol, money(p.quantity), money(p.avg_price), money(p.mark_price), money(p.notional),
                      signed(p.unrealized_pnl), signed(p.realized_pnl), money(p.fees)))
    out = console()
    out.print(table if reply.positions else Text("no open positions"))
    a = reply.account
    out.print(Text.assemble("account ", state(a.state), f"  equity {money(a.equity)}  cash {money(a.cash)}  day PnL ",
                            signed(a.day_pnl), f"  drawdown {a.drawdown_pct:.2f}%",
                            ("  KILL SWITCH ENGAGED", "bold red") if a.kill_switch else ""))


@app.command("orders")
def orders_command(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10000, help="How many orders.")] = 20,
    symbol: Annotated[str | None, typer.Option("--symbol", help="Only this symbol.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Recent orders (ORDERS stream) and what became of them (EXEC stream); read-only."""
    trails = execute(ctx, lambda s: orderlog.recent_orders(s.nc, limit, symbol))
    if as_json:
        return print_json([t.as_dict() for t in trails])
    order_views.show_orders(trails, console())


@app.command()
def trace(
    ctx: typer.Context,
    client_order_id: Annotated[str, typer.Argument(help="The order's client_order_id.")],
    since: Annotated[str | None, typer.Option(help="Only look this far back: 30m, 24h, 7d (default: all).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every hop of one order, from the tick that caused it to its fill, with the latency of each."""
    try:
        since_ns = time.time_ns() - int(order_views.parse_since(since) * 1e9) if since else None
    except CliError as e:
        raise fail(str(e)) from None
    trail = execute(ctx, lambda s: orderlog.trace(s.nc, client_order_id, since_ns))
    if trail is None:
        raise fail(f"no order {client_order_id!r} in ORDERS or EXEC" + (f" in the last {since}" if since else ""))
    if as_json:
        return print_json(trail.as_dict())
    console().print(order_views.trace_view(trail))


def _build(model: type[BaseModel], **fields: Any) -> BaseModel:
    try:
        return model(**fields)
    except ValueError as e:
        raise fail("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None  # type: ignore[attr-defined]


@app.command()
def price(ctx: typer.Context, symbols: Annotated[list[str] | None, typer.Argument(
        help="Symbols (default: [system].symbols of moonbus.toml).")] = None, as_json: JsonFlag = False) -> None:
    """Latest prices (md.api.prices). Exit code 1 if a symbol is unknown."""
    wanted = symbols or section(load(), "system", SystemConfig).symbols
    request = _build(PricesRequest, symbols=wanted)
    reply = execute(ctx, lambda s: s.bus.call(S.MD_PRICES_API, request, s.timeout))
    if as_json:
        print_json(reply)
    else:
        table = Table()
        for column in ("symbol", "venue", "price", "bid", "ask", "age"):
            table.add_column(column, justify="left" if column in ("symbol", "venue") else "right")
        for name, tick in reply.prices.items():
            table.add_row(*cells(name, tick.venue, money(tick.price), money(tick.bid), money(tick.ask), age(tick.ts)))
        console().print(table)
    if reply.missing:
        raise fail(f"unknown symbol(s): {', '.join(reply.missing)}")


def _show_monitors(reply: MonitorStatusReply, as_json: bool) -> None:
    if as_json:
        return print_json(reply)
    if not reply.monitors:
        return console().print("no monitors")
    table = Table()
    for column in ("symbol", "threshold %", "window s"):
        table.add_column(column)
    for m in reply.monitors:
        table.add_row(*cells(m.symbol, f"{m.threshold_pct:g}", f"{m.window_s:g}"))
    console().print(table)


def _monitor(ctx: typer.Context, endpoint: S.Endpoint[Any, MonitorStatusReply], request: BaseModel,
             as_json: bool) -> None:
    reply = execute(ctx, lambda s: s.bus.call(endpoint, request, s.timeout))
    _show_monitors(reply, as_json)


@monitor_app.command("start")
def monitor_start(
    ctx: typer.Context,
    symbol: str,
    threshold: Annotated[float, typer.Option(help="Alert on a move of this many % ...")] = 2.0,
    window: Annotated[float, typer.Option(help="... within this many seconds.")] = 60.0,
    as_json: JsonFlag = False,
) -> None:
    """Alert on md.alert.SYMBOL when SYMBOL moves by --threshold % within --window seconds."""
    request = _build(MonitorStartRequest, symbol=symbol, threshold_pct=threshold, window_s=window)
    _monitor(ctx, S.MD_MONITOR_START_API, request, as_json)


@monitor_app.command("stop")
def monitor_stop(ctx: typer.Context, symbol: str, as_json: JsonFlag = False) -> None:
    """Stop monitoring SYMBOL."""
    request = _build(MonitorStopRequest, symbol=symbol)
    reply = execute(ctx, lambda s: s.bus.call(S.MD_MONITOR_STOP_API, request, s.timeout))
    if not as_json and all(m.symbol != symbol for m in reply.monitors):
        console().print(f"stopped monitoring {symbol}")
    if reply.monitors or as_json:
        _show_monitors(reply, as_json)


@monitor_app.command("status")
def monitor_status(ctx: typer.Context, symbol: Annotated[str | None, typer.Argument()] = None,
                   as_json: JsonFlag = False) -> None:
    """The monitors (of SYMBOL, or all)."""
    _monitor(ctx, S.MD_MONITOR_STATUS_API, _build(MonitorStatusRequest, symbol=symbol), as_json)


def actor() -> str:
    try:
        return f"moon:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "moon"


def _kill_switch(ctx: typer.Context, action: str, reason: str, flatten: bool, as_json: bool) -> None:
    request = _build(KillSwitchRequest, action=action, actor=actor(), reason=reason, flatten=flatten)
    reply = execute(ctx, lambda s: s.bus.call(S.risk_killswitch_api(s.target.user), request, s.timeout))
    if as_json:
        return print_json(reply)
    if reply.engaged:
        line = Text(f"kill switch ENGAGED by {reply.actor}: {reply.reason}", style="bold red")
        if reply.flatten_orders is not None:
            line.append(f" ({reply.flatten_orders} reduce-only orders sent to flatten)")
    else:
        line = Text(f"kill switch off (last change by {reply.actor}: {reply.reason})", style="green")
    console().print(line)


Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded with the change).")]


@killswitch_app.command("on")
def killswitch_on(ctx: typer.Context, reason: Reason = "",
                  flatten: Annotated[bool, typer.Option(help="Also close every position.")] = False,
                  as_json: JsonFlag = False) -> None:
    """Engage: risk refuses every new order except reduce-only ones until released."""
    _kill_switch(ctx, "engage", reason, flatten, as_json)


@killswitch_app.command("off")
def killswitch_off(ctx: typer.Context, reason: Reason = "", as_json: JsonFlag = False) -> None:
    """Release: trading resumes (subject to the limits)."""
    _kill_switch(ctx, "release", reason, False, as_json)


@killswitch_app.command("status")
def killswitch_status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Is the kill switch engaged, by whom and why."""
    _kill_switch(ctx, "status", "", False, as_json)


@app.command("audit")
def audit_command(
    ctx: typer.Context,
    credentials: Annotated[Path | None, typer.Option(
        "--credentials", help="Every service's NATS password (default: .moon/credentials.json here, "
        "else in the repository; written by `make run`, the source of compose's .env).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Try the attacks of SECURITY.md with every service's credential against the running
    system, aimed at probe subjects and keys so that nothing real is touched, and show
    which defences hold. Exit code 1 if any does not."""
    import asyncio

    from services.common.tls import client_tls_options

    from .audit import Auditor, audit

    target: Target = ctx.obj.target
    path = credentials or next((p for p in (Path.cwd() / ".moon" / "credentials.json",
                                            REPO_ROOT / ".moon" / "credentials.json") if p.exists()), None)
    if path is None or not path.exists():
        raise fail(f"no credentials file {path or '.moon/credentials.json'} (written by `make run`)")
    try:
        creds = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise fail(f"cannot read {path}: {e}") from None
    auditor = Auditor(target.url, creds, client_tls_options(target.url, target.ca))
    try:
        results = asyncio.run(audit(auditor, safe=True))
    except Exception as e:
        raise fail(f"cannot audit {target.url}: {e}") from None
    if as_json:
        print_json([r.__dict__ for r in results])
    else:
        table = Table("attack", "credential", "result", "detail", title=f"moon audit of {target.url}")
        for r in results:
            table.add_row(r.attack, r.user, Text("holds", style="green") if r.held else Text("BROKEN", style="bold red"),
                          r.detail)
        console().print(table)
        held = sum(r.held for r in results)
        console().print(f"{held} of {len(results)} attacks refused")
    if not all(r.held for r in results):
        raise typer.Exit(1)


# `moon backtest` (services/cli/backtest.py): one run here, or a sweep over the backtest workers.
from .backtest import backtest_command  # noqa: E402  (it uses execute and fail, defined above)

app.command("backtest")(backtest_command)
