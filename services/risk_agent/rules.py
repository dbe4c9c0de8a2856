"""The account rules and what to do on a breach, without the bus.

- max_loss:    PnL <= -max_loss_usd, or <= -max_loss_pct of the equity at the start of
               the period (a loss; a gain can never trip it: the PnL is signed)
- max_gain:    PnL >= +max_gain_usd, or >= +max_gain_pct (take the profit and stop)
- min_balance: equity < min_balance_usd

The PnL is over risk's trading day (`day_pnl`, lookback_s = 0) or over a sliding window
of lookback_s seconds of the equity this agent has seen (`PnLWindow`).

A breach acts once: the `Latch` reports a rule when it starts being breached and stays
quiet until the rule has cleared, so a heartbeat every second does not flatten the book
every second.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from services.contract.models import (
    AccountState,
    Action,
    OrderRequest,
    OrderType,
    Position,
    Side,
    Signal,
)

from .config import RiskAgentConfig

AGENT = "risk"
MODEL = "account-rules"


@dataclass(frozen=True)
class Breach:
    rule: str
    reason: str


@dataclass(frozen=True)
class PnL:
    amount: Decimal
    start_equity: Decimal  # the equity at the start of the period
    period: str  # "day", "last 3600s"

    @property
    def pct(self) -> Decimal | None:
        return self.amount / self.start_equity * 100 if self.start_equity > 0 else None


def day_pnl(account: AccountState) -> PnL:
    return PnL(account.day_pnl, account.equity - account.day_pnl, "day")


class PnLWindow:
    """The equity change over the last `lookback_s` seconds of account updates: the
    reference is the last equity seen at or before the window's start (or the first one
    seen, while the agent has run for less than the window).

    At most MAX_SAMPLES are kept: of updates closer together than lookback / MAX_SAMPLES only
    the latest (the reference may then be up to that much before the window's start). Risk sends
    the account at most every 100 ms; anyone else holding risk's credential could send a
    hundred thousand a second, and every one was kept for the whole window."""

    MAX_SAMPLES = 10_000

    def __init__(self, lookback_s: float) -> None:
        self.lookback_ns = int(lookback_s * 1e9)
        self.granule_ns = max(1, self.lookback_ns // self.MAX_SAMPLES)
        self.period = f"last {lookback_s:g}s"
        self._samples: deque[tuple[int, Decimal]] = deque()

    def update(self, account: AccountState) -> PnL:
        samples = self._samples
        if not samples or account.ts >= samples[-1][0]:
            if len(samples) > 1 and account.ts // self.granule_ns == samples[-1][0] // self.granule_ns:
                samples[-1] = (account.ts, account.equity)  # the same granule: the latest only
            else:
                samples.append((account.ts, account.equity))
        start = account.ts - self.lookback_ns
        while len(samples) > 1 and samples[1][0] <= start:
            samples.popleft()
        reference = samples[0][1]
        return PnL(account.equity - reference, reference, self.period)


def _limit(rule: str, pnl: PnL, usd: Decimal, pct: float, sign: int) -> Breach | None:
    what = "day PnL" if pnl.period == "day" else f"PnL over the {pnl.period}"
    op = "<=" if sign < 0 else ">="
    if usd > 0 and sign * pnl.amount >= usd:
        return Breach(rule, f"{what} {pnl.amount} {op} {sign * usd} ({rule}_usd)")
    p = pnl.pct
    if pct > 0 and p is not None and sign * p >= Decimal(str(pct)):
        return Breach(rule, f"{what} {p:+.2f}% of {pnl.start_equity} {op} {sign * pct:+g}% ({rule}_pct)")
    return None


def check_account(account: AccountState, pnl: PnL, cfg: RiskAgentConfig) -> list[Breach]:
    breaches = [
        _limit("max_loss", pnl, cfg.max_loss_usd, cfg.max_loss_pct, -1),
        _limit("max_gain", pnl, cfg.max_gain_usd, cfg.max_gain_pct, +1),
    ]
    if account.equity < cfg.min_balance_usd:
        breaches.append(Breach("min_balance", f"equity {account.equity} < {cfg.min_balance_usd} (min_balance_usd)"))
    return [b for b in breaches if b is not None]


class Latch:
    """Remembers which rules are breached; `update` returns only the new breaches."""

    def __init__(self) -> None:
        self.active: set[str] = set()

    def update(self, breaches: Iterable[Breach]) -> list[Breach]:
        current = list(breaches)
        new = [b for b in current if b.rule not in self.active]
        self.active = {b.rule for b in current}
        return new

    def release(self, rules: Iterable[str]) -> None:
        """Forget rules whose action failed, so the next account update tries again."""
        self.active.difference_update(rules)


def new_client_order_id() -> str:
    return f"rsk-{uuid.uuid4().hex[:20]}"


def close_order(p: Position, reason: str, venue: str, origin_ts: int, ts: int) -> tuple[Signal, OrderRequest]:
    """A reduce-only MARKET order closing the position, and the Signal saying why."""
    side = Side.SELL if p.quantity > 0 else Side.BUY
    quantity = abs(p.quantity)
    signal = Signal(
        agent=AGENT,
        symbol=p.symbol,
        action=Action(side.value),
        confidence=1.0,
        reasoning=f"{reason}; closing {p.symbol} position {p.quantity} with a reduce-only "
        f"market {side.value} of {quantity}",
        model=MODEL,
        origin_ts=origin_ts,
        ts=ts,
    )
    order = OrderRequest(
        client_order_id=new_client_order_id(),
        agent=AGENT,
        symbol=p.symbol,
        venue=venue,
        side=side,
        type=OrderType.MARKET,
        quantity=quantity,
        reduce_only=True,
        decision_price=p.mark_price or None,
        origin_ts=origin_ts,
        ts=ts,
    )
    return signal, order


class Closing:
    """The closing order of each symbol while a breach lasts. An action that failed (one
    order's ack lost: stored or not, nobody knows) is tried again on the next account update;
    the same position then gets the same order, the same client_order_id, which ORDERS and
    execution take once, not a second order that risk would refuse as over-closing."""

    def __init__(self) -> None:
        self.orders: dict[str, OrderRequest] = {}

    def close(self, p: Position, reason: str, venue: str, origin_ts: int,
              ts: int) -> tuple[Signal, OrderRequest, bool]:
        """The signal and the order closing `p`, and whether that order was made before."""
        signal, order = close_order(p, reason, venue, origin_ts, ts)
        made = self.orders.get(p.symbol)
        if made is not None and (made.side, made.quantity, made.venue) == (order.side, order.quantity, order.venue):
            return signal, made, True
        self.orders[p.symbol] = order
        return signal, order, False

    def clear(self) -> None:
        """The breach is over: the next one closes with new orders."""
        self.orders.clear()


def close_orders(
    positions: Iterable[Position],
    reason: str,
    venue: str,
    origin_ts: int,
    ts: int,
) -> list[tuple[Signal, OrderRequest]]:
    """A closing order (and its Signal) per non-zero position."""
    return [close_order(p, reason, venue, origin_ts, ts) for p in positions if p.quantity != 0]
