"""Bus messages -> Notices: what happened, in words, with the fields a channel filters on.

Pure: `Tracker` keeps the last state seen (verdict per symbol, account, reconciliation and
connection per venue) so only changes become notices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from services.contract import subjects as S
from services.contract.models import (
    AccountState,
    ErrorEvent,
    ExecutionReport,
    KillSwitchState,
    LiveVenueStatus,
    OrderStatus,
    PriceAlert,
    Reconciliation,
    ReconState,
    TradingState,
    Verdict,
)

Severity = Literal["info", "warning", "critical"]
FILL_STATUSES = (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED)
REJECT_STATUSES = (OrderStatus.REJECTED, OrderStatus.FAILED)


def money(value: Decimal | None) -> str:
    """A decimal as the wire writes it (fixed point, never exponent notation)."""
    if value is None:
        return "-"
    return format(value.copy_abs() if value.is_zero() else value, "f")


@dataclass(frozen=True)
class Notice:
    """One thing to tell people. `kind` is the event filter name (config.EventKind, or
    `suppressed` for a channel's own summary, which every channel sends)."""

    kind: str
    title: str
    text: str
    severity: Severity = "info"
    symbol: str | None = None
    notional: Decimal | None = None  # fills: the filled value (price x quantity)
    fields: tuple[tuple[str, str], ...] = ()
    subject: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # the message as it came (json channels)
    ts: int = 0


def fill_notional(r: ExecutionReport) -> Decimal | None:
    """The value of what this report filled: the last fill if given, else the whole fill."""
    if r.last_fill_price is not None and r.last_fill_quantity is not None:
        return r.last_fill_price * r.last_fill_quantity
    if r.avg_fill_price is not None:
        return r.avg_fill_price * r.filled_quantity
    return None


def from_report(r: ExecutionReport, subject: str, data: dict[str, Any]) -> Notice | None:
    side = r.side.value if r.side else "?"
    symbol = r.symbol or "?"
    fields: list[tuple[str, str]] = [("order", r.client_order_id or "-"), ("agent", r.agent or "-"),
                                     ("venue", r.venue or "-")]
    if r.status in FILL_STATUSES:
        if r.algo is not None:
            return None  # an algo parent's totals: its children's reports announce the fills
        notional = fill_notional(r)
        price = r.last_fill_price if r.last_fill_price is not None else r.avg_fill_price
        qty = r.last_fill_quantity if r.last_fill_quantity is not None else r.filled_quantity
        title = f"{r.status.value} {side} {money(qty)} {symbol} @ {money(price)}"
        fields += [("filled", f"{money(r.filled_quantity)} / {money(r.quantity)}"),
                   ("avg price", money(r.avg_fill_price)), ("notional", money(notional)),
                   ("fee", money(r.fee))]
        text = f"{r.agent or '?'} {side} {symbol} on {r.venue or '?'}: filled {money(r.filled_quantity)} of " \
               f"{money(r.quantity)}, average {money(r.avg_fill_price)}"
        return Notice("fills", title, text, "info", r.symbol, notional, tuple(fields), subject, data, r.ts)
    if r.status in REJECT_STATUSES:
        title = " ".join(p for p in (r.status.value, r.side.value if r.side else "",
                                     money(r.quantity) if r.quantity is not None else "",
                                     r.symbol or "order (unreadable: exec.report._invalid)") if p)
        text = f"{r.agent or '?'} order {r.client_order_id or '?'}: {r.reason or 'no reason given'}"
        fields.append(("reason", r.reason or "-"))
        return Notice("rejections", title, text, "warning", r.symbol, None, tuple(fields), subject, data, r.ts)
    return None


def from_kill_switch(k: KillSwitchState, subject: str, data: dict[str, Any]) -> Notice:
    what = "ENGAGED" if k.engaged else "released"
    fields = [("actor", k.actor), ("reason", k.reason or "-")]
    if k.flatten_orders is not None:
        fields.append(("flatten orders", str(k.flatten_orders)))
    return Notice("kill_switch", f"Kill switch {what} by {k.actor}", k.reason or "(no reason given)",
                  "critical" if k.engaged else "warning", None, None, tuple(fields), subject, data, k.changed_ts)


def from_alert(a: PriceAlert, subject: str, data: dict[str, Any]) -> Notice:
    sign = "+" if a.change_pct >= 0 else ""
    title = f"{a.symbol} {a.direction} {sign}{a.change_pct:.2f}% in {a.window_s:g}s"
    text = f"{money(a.from_price)} -> {money(a.price)} on {a.venue} (threshold {a.threshold_pct:g}%)"
    fields = (("from", money(a.from_price)), ("price", money(a.price)), ("venue", a.venue))
    return Notice("alerts", title, text, "info", a.symbol, None, fields, subject, data, a.ts)


VENUE_ERRORS = S.errors("execution")  # only execution's word on a live venue is a `venues` notice
VENUE_PREFIX = S.exec_venue("")


def from_error(e: ErrorEvent, subject: str, data: dict[str, Any]) -> Notice:
    """Another service's ErrorEvent; execution's about a live venue (a venue state it did not
    apply, a malformed fill or frame: money at the venue the system may not see) is venue
    trouble. Any service may publish `errors.<its own name>`, so only `errors.execution`
    counts as execution's."""
    if subject == VENUE_ERRORS and e.subject.startswith(VENUE_PREFIX):
        venue = e.subject.removeprefix(VENUE_PREFIX)
        return Notice("venues", f"Venue {venue}: data not applied", e.reason[:1000], "critical", None, None,
                      (("venue", venue), ("excerpt", e.excerpt or "-")), subject, data, e.ts)
    # The service is the subject's token (its publisher's permissions pin it), not what the
    # message says it is: a stolen credential must not post "Error in risk".
    service = subject.removeprefix(S.errors(""))
    claimed = () if e.service == service else (("claims to be", e.service[:64]),)
    return Notice("errors", f"Error in {service}", e.reason[:1000], "warning", None, None,
                  (("subject", e.subject), ("excerpt", e.excerpt or "-"), *claimed), subject, data, e.ts)


_LEVEL = {TradingState.ACTIVE: "info", TradingState.REDUCE_ONLY: "warning", TradingState.HALTED: "critical"}


class Tracker:
    """The last state of each thing whose changes are notices. A first sighting is a notice
    only when it is not the normal state (ACTIVE, MATCHED, connected): a notifier started
    while a symbol is halted says so once. (service.py keeps it to MAX_MARKET_SYMBOLS symbols
    and MAX_VENUES venues: services/common/caps.py.)"""

    def __init__(self) -> None:
        self.verdicts: dict[str, TradingState] = {}
        self.account: TradingState | None = None
        self.recon: dict[str, ReconState] = {}
        self.connected: dict[str, bool] = {}
        self.unknown_orders: dict[str, int] = {}

    def verdict(self, v: Verdict, subject: str, data: dict[str, Any]) -> Notice | None:
        before = self.verdicts.get(v.symbol)
        self.verdicts[v.symbol] = v.state
        if before == v.state or (before is None and v.state == TradingState.ACTIVE):
            return None
        was = before.value if before else "unknown"
        why = "; ".join(v.reasons) or v.detail or "no reason given"
        fields = [("was", was), ("position", money(v.position)), ("reasons", why)]
        if v.detail:
            fields.append(("detail", v.detail))
        return Notice("breaches", f"{v.symbol}: {was} -> {v.state.value}", why, _LEVEL[v.state], v.symbol,  # type: ignore[arg-type]
                      None, tuple(fields), subject, data, v.ts)

    def account_state(self, a: AccountState, subject: str, data: dict[str, Any]) -> Notice | None:
        before, self.account = self.account, a.state
        if before == a.state or (before is None and a.state == TradingState.ACTIVE):
            return None
        was = before.value if before else "unknown"
        why = "; ".join(a.reasons) or "no reason given"
        fields = (("was", was), ("equity", money(a.equity)), ("day PnL", money(a.day_pnl)),
                  ("drawdown", f"{a.drawdown_pct:.2f}%"), ("reasons", why))
        return Notice("breaches", f"Account: {was} -> {a.state.value}", why, _LEVEL[a.state], None, None,  # type: ignore[arg-type]
                      fields, subject, data, a.ts)

    def reconciliation(self, r: Reconciliation, subject: str, data: dict[str, Any]) -> Notice | None:
        before = self.recon.get(r.venue)
        self.recon[r.venue] = r.state
        if before == r.state or (before is None and r.state == ReconState.MATCHED):
            return None
        was = before.value if before else "unknown"
        diffs = ", ".join(f"{d.symbol} venue {money(d.venue)} vs ledger {money(d.ledger)}" for d in r.differences[:10])
        text = r.detail or diffs or f"{r.unknown_orders} unknown orders"
        fields = [("was", was), ("action", r.action.value), ("unknown orders", str(r.unknown_orders))]
        if diffs:
            fields.append(("differences", diffs))
        severity: Severity = "info" if r.state == ReconState.MATCHED else "critical"
        return Notice("venues", f"Reconciliation {r.venue}: {was} -> {r.state.value}", text, severity, None, None,
                      tuple(fields), subject, data, r.ts)

    def venue_status(self, s: LiveVenueStatus, subject: str, data: dict[str, Any]) -> Notice | None:
        before = self.connected.get(s.venue)
        self.connected[s.venue] = s.connected
        unknown_before = self.unknown_orders.get(s.venue, 0)
        self.unknown_orders[s.venue] = len(s.unknown_orders)
        fields = (("kind", s.kind.value), ("mode", s.mode.value), ("working orders", str(s.working_orders)),
                  ("unknown orders", str(len(s.unknown_orders))))
        if before is not None and before != s.connected or before is None and not s.connected:
            what = "connected" if s.connected else "DISCONNECTED"
            return Notice("venues", f"Venue {s.venue} ({s.mode.value}) {what}", s.detail or s.account_error or what,
                          "info" if s.connected else "critical", None, None, fields, subject, data, s.ts)
        if s.unknown_orders and not unknown_before:
            text = ", ".join(f"{o.venue_symbol} {o.status}" for o in s.unknown_orders[:10])
            return Notice("venues", f"Venue {s.venue}: {len(s.unknown_orders)} orders unknown to execution", text,
                          "warning", None, None, fields, subject, data, s.ts)
        return None
