"""`moon orders` and `moon trace`: orders and their reports, read back from ORDERS / EXEC."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from services.ops.orderlog import OrderTrail, hops

from .connection import CliError
from .render import cells, clock, millis, money, stamp, status

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """`90s`, `30m`, `24h`, `7d` -> seconds."""
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([smhd])", text.strip())
    if not found:
        raise CliError(f"bad --since {text!r}: write a duration such as 30m, 24h or 7d")
    return float(found.group(1)) * UNITS[found.group(2)]


def latency(trail: OrderTrail) -> int | None:
    """Origin tick to the last hop reached (fill, or the report of a rejection)."""
    points = hops(trail)
    return points[-1].ts - points[0].ts if len(points) > 1 else None


def orders_table(trails: list[OrderTrail]) -> Table:
    table = Table(title="orders (oldest first)", title_justify="left")
    for column in ("stored", "client_order_id", "agent", "symbol", "side", "qty", "type", "status",
                   "filled", "avg price", "fee", "tick->end ms", "reason"):
        table.add_column(column, justify="right" if column in ("qty", "filled", "avg price", "fee", "tick->end ms")
                         else "left", overflow="fold")
    for t in trails:
        order, last = t.order, t.last
        limit = f" @ {money(order.limit_price)}" if order and order.limit_price else ""
        kind = "-" if order is None else order.type.value + limit
        table.add_row(*cells(
            clock(t.stored.stored_ns if t.stored else None), t.client_order_id,
            order.agent if order else "-", order.symbol if order else "-",
            order.side.value if order else "-", money(order.quantity) if order else "-", kind,
            status(t.status), money(last.filled_quantity) if last else "-",
            money(last.avg_fill_price) if last else "-", money(last.fee) if last else "-",
            millis(latency(t)), (last.reason or "") if last else "",
        ))
    return table


def trace_view(trail: OrderTrail) -> Group:
    order = trail.order
    if order is not None:
        head = Text(f"{order.client_order_id}: {order.agent} {order.side.value} {money(order.quantity)} "
                    f"{order.symbol} {order.type.value} -> ")
    else:
        head = Text(f"{trail.client_order_id} (the order itself is no longer in ORDERS) -> ")
    head.append_text(status(trail.status))
    table = Table(title="hops", title_justify="left")
    for column, justify in (("hop", "left"), ("time", "left"), ("+ms", "right"), ("since tick ms", "right")):
        table.add_column(column, justify=justify)
    points = hops(trail)
    for h in points:
        table.add_row(*cells(h.name, stamp(h.ts), millis(h.since_previous_ns), millis(h.ts - points[0].ts)))
    reports = Table(title="reports (EXEC)", title_justify="left")
    for column in ("seq", "stored", "status", "filled", "price", "fee", "slippage bps", "reason"):
        reports.add_column(column)
    for r in trail.reports:
        rep = r.report
        reports.add_row(*cells(str(r.stored.seq), stamp(r.stored.stored_ns), status(rep.status),
                               money(rep.filled_quantity), money(rep.avg_fill_price), money(rep.fee),
                        "-" if rep.slippage_bps is None else f"{rep.slippage_bps:g}", rep.reason or ""))
    parts: list[Any] = [head, table]
    parts.append(reports if trail.reports else Text("no report yet: execution has not handled it", style="yellow"))
    return Group(*parts)


def show_orders(trails: list[OrderTrail], console: Console) -> None:
    console.print(orders_table(trails) if trails else Text("no orders in ORDERS"))
