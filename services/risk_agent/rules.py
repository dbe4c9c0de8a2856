"""The account rules and what to do on a breach, without the bus.

- max_loss:    day_pnl <= -max_loss_usd  (a loss; a gain can never trip it)
- max_gain:    day_pnl >= +max_gain_usd  (take the profit and stop)
- min_balance: equity < min_balance_usd

A breach acts once: the `Latch` reports a rule when it starts being breached and
stays quiet until the rule has cleared, so a heartbeat every second does not
flatten the book every second.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.models import (
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


def check_account(account: AccountState, cfg: RiskAgentConfig) -> list[Breach]:
    breaches = []
    if account.day_pnl <= -cfg.max_loss_usd:
        breaches.append(Breach("max_loss", f"day PnL {account.day_pnl} <= -{cfg.max_loss_usd} (max_loss_usd)"))
    if account.day_pnl >= cfg.max_gain_usd:
        breaches.append(Breach("max_gain", f"day PnL {account.day_pnl} >= {cfg.max_gain_usd} (max_gain_usd)"))
    if account.equity < cfg.min_balance_usd:
        breaches.append(Breach("min_balance", f"equity {account.equity} < {cfg.min_balance_usd} (min_balance_usd)"))
    return breaches


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


def close_orders(
    positions: Iterable[Position],
    reason: str,
    venue: str,
    origin_ts: int,
    ts: int,
) -> list[tuple[Signal, OrderRequest]]:
    """A reduce-only MARKET order (and the Signal saying why) per non-zero position."""
    out = []
    for p in positions:
        if p.quantity == 0:
            continue
        side = Side.SELL if p.quantity > 0 else Side.BUY
        quantity = abs(p.quantity)
        price = p.mark_price if p.mark_price else None
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
            decision_price=price,
            origin_ts=origin_ts,
            ts=ts,
        )
        out.append((signal, order))
    return out

