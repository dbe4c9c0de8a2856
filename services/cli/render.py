"""How `moon` shows things: one coloured line per bus message, times, ages, money."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from rich.text import Text

from services.ops.supervision import Supervised

from services.contract.models import (
    AccountState,
    ArbOpportunity,
    Bar,
    Consensus,
    ErrorEvent,
    ExecutionReport,
    FeedStatus,
    KillSwitchState,
    OrderRequest,
    OrderStatus,
    PriceAlert,
    Sentiment,
    Signal,
    Tick,
    TradingState,
    Verdict,
)

# Colour of a message type's name; requests and anything else are dim.
COLOURS: dict[str, str] = {
    "Tick": "cyan",
    "Bar": "blue",
    "Book": "blue",
    "PriceAlert": "bold yellow",
    "ArbOpportunity": "bold green",
    "FeedStatus": "magenta",
    "Verdict": "yellow",
    "AccountState": "green",
    "KillSwitchState": "bold red",
    "Sentiment": "bright_magenta",
    "Signal": "bright_cyan",
    "Consensus": "bright_blue",
    "OrderRequest": "bold white",
    "CancelRequest": "white",
    "ExecutionReport": "green",
    "ErrorEvent": "red",
}
STATE_COLOURS = {TradingState.ACTIVE: "green", TradingState.REDUCE_ONLY: "yellow", TradingState.HALTED: "bold red"}
BAD_STATUSES = {OrderStatus.REJECTED, OrderStatus.FAILED, OrderStatus.EXPIRED, OrderStatus.CANCELLED}


# Control characters (C0 but tab, DEL, C1) in text from the bus, shown escaped: any credential may
# publish an error reason or a message, and an ESC in it would drive the operator's terminal
# (erase lines already shown, fake new ones, OSC 52 writes the clipboard). rich lets ESC through.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)]}


def printable(text: str) -> str:
    """`text` with its control characters escaped (`\\x1b`), safe to print to a terminal."""
    return text.translate(_CONTROLS)


def cells(*values: Any) -> list[Any]:
    """Table cells: text is shown as it is (a `[tag]` in a service's reason is not rich markup),
    its control characters escaped."""
    return [Text(printable(v)) if isinstance(v, str) else v for v in values]


def clock(ts_ns: int | None) -> str:
    """Local wall-clock time with milliseconds."""
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


def stamp(ts_ns: int | None) -> str:
    if not ts_ns:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def duration(seconds: float) -> str:
    """`45ms`, `12.3s`, `5m 02s`, `3h 04m`, `2d 05h`."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def age(ts_ns: int | None) -> str:
    return "-" if not ts_ns else duration(max(0.0, (time.time_ns() - ts_ns) / 1e9))


def millis(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:,.3f}"


def money(value: Decimal | None) -> str:
    return "-" if value is None else format(value, "f")


def signed(value: Decimal) -> Text:
    """PnL: green when positive, red when negative."""
    style = "green" if value > 0 else "red" if value < 0 else ""
    return Text(money(value), style=style)


def state(value: TradingState) -> Text:
    return Text(value.value, style=STATE_COLOURS.get(value, ""))


SUPERVISOR_STYLES = {"running": "green", "restarting": "yellow", "crash_loop": "bold red", "stopped": "red"}


def supervised(record: Supervised | None) -> Text:
    """A service's state under `make run`'s supervisor: `running`, `restarting in 2s`,
    `CRASH LOOP (exit code 1)`; `-` when unsupervised (compose); dimmed when stale."""
    if record is None:
        return Text("-")
    if record.stale():
        return Text(f"{record.state} (stale {age(record.ts)})", style="dim")
    text = "CRASH LOOP" if record.state == "crash_loop" else record.state
    if record.state in ("restarting", "crash_loop") and record.restart_at_ns and record.pid is None:
        text += f", restart in {duration(max(0.0, (record.restart_at_ns - time.time_ns()) / 1e9))}"
    if record.state != "running" and record.last_exit:
        text += f" ({record.last_exit})"
    return Text(text, style=SUPERVISOR_STYLES.get(record.state, ""))


def status(value: OrderStatus | str) -> Text:
    text = value.value if isinstance(value, OrderStatus) else value
    style = "red" if text in {s.value for s in BAD_STATUSES} else "green" if text == "FILLED" else "yellow"
    return Text(text, style=style)


def summary(message: BaseModel) -> str:
    """The message in one line, the fields that matter first."""
    m: Any = message
    if isinstance(m, Tick):
        return f"{m.symbol} {money(m.price)}  bid {money(m.bid)} ask {money(m.ask)}  #{m.seq}"
    if isinstance(m, Bar):
        return (f"{m.symbol} {m.interval} O {money(m.open)} H {money(m.high)} L {money(m.low)} "
                f"C {money(m.close)} V {money(m.volume)}")
    if isinstance(m, PriceAlert):
        move = f"{money(m.from_price)} -> {money(m.price)}"
        return f"{m.symbol} {m.direction} {m.change_pct:+.2f}% in {m.window_s:g}s: {move}"
    if isinstance(m, ArbOpportunity):
        legs = f"buy {m.buy_venue} {money(m.buy_price)} sell {m.sell_venue} {money(m.sell_price)}"
        return f"{m.symbol} {legs}: net {m.net_bps} bps x {money(m.quantity)} = {money(m.profit)}"
    if isinstance(m, FeedStatus):
        return f"{m.venue} {m.status} {m.detail}"
    if isinstance(m, Verdict):
        return f"{m.symbol} {m.state.value} position {money(m.position)} {'; '.join(m.reasons)}".rstrip()
    if isinstance(m, AccountState):
        kill = "  KILL SWITCH" if m.kill_switch else ""
        return (f"{m.state.value} equity {money(m.equity)} cash {money(m.cash)} day PnL {money(m.day_pnl)} "
                f"drawdown {m.drawdown_pct:.2f}% positions {m.open_positions}{kill}")
    if isinstance(m, KillSwitchState):
        return f"{'ENGAGED' if m.engaged else 'released'} by {m.actor}: {m.reason}"
    if isinstance(m, Sentiment):
        return f"{m.symbol} score {m.score:+.2f} confidence {m.confidence:.2f} ({m.items} items, {m.model})"
    if isinstance(m, Signal):
        fallback = " fallback" if m.fallback else ""
        return f"{m.agent} {m.symbol} {m.action.value} {m.confidence:.2f} [{m.model}{fallback}] {m.reasoning}"
    if isinstance(m, Consensus):
        how = f"{m.method}, agreement {m.agreement:.0%}, {len(m.votes)} votes"
        return f"{m.symbol} {m.action.value} ({how}) {m.summary}"
    if isinstance(m, OrderRequest):
        limit = f" @ {money(m.limit_price)}" if m.limit_price is not None else ""
        flags = " reduce-only" if m.reduce_only else ""
        what = f"{m.side.value} {money(m.quantity)} {m.symbol} {m.type.value}"
        return f"{m.client_order_id} {m.agent} {what}{limit}{flags}"
    if isinstance(m, ExecutionReport):
        price = f" @ {money(m.avg_fill_price)}" if m.avg_fill_price is not None else ""
        reason = f" {m.reason}" if m.reason else ""
        side = m.side.value if m.side else "?"
        return (f"{m.client_order_id} {m.status.value} {side} {money(m.filled_quantity)}/{money(m.quantity)} "
                f"{m.symbol}{price} fee {money(m.fee)}{reason}")
    if isinstance(m, ErrorEvent):
        return f"{m.service} rejected {m.subject}: {m.reason}"
    fields = m.model_dump(mode="json", exclude_none=True)
    return " ".join(f"{k}={v}" for k, v in fields.items() if k != "ts")


def colour_of(message: BaseModel) -> str:
    if isinstance(message, ExecutionReport) and message.status in BAD_STATUSES:
        return "red"
    if isinstance(message, (Verdict, AccountState)):
        return STATE_COLOURS.get(message.state, "yellow")
    return COLOURS.get(type(message).__name__, "dim")


def message_line(subject: str, message: BaseModel | None, raw: bytes, problem: str = "") -> Text:
    """`12:00:01.123 md.tick.sim.BTC-USD Tick BTC-USD 97000.5 ...`: time from the message's
    `ts` when it has one (else now), subject, type in its colour, summary."""
    ts = getattr(message, "ts", None) or time.time_ns()
    line = Text(f"{clock(ts)} ", style="dim")
    line.append(f"{printable(subject)} ", style="dim")
    if message is None:
        excerpt = raw[:200].decode("utf-8", "replace")
        line.append(f"{printable(problem)} " if problem else "", style="bold red")
        line.append(printable(excerpt))
        return line
    line.append(f"{type(message).__name__} ", style=colour_of(message))
    line.append(printable(summary(message)))
    return line

