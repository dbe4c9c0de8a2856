"""The trading agent's decisions, without the bus: feed it verdicts, account states
and ticks; it returns the Signal and OrderRequest to publish, or None.

It fails closed: no verdict for a symbol = no order; a risk-increasing BUY needs an
ACTIVE verdict and an ACTIVE account (its equity caps the position); a SELL only
ever reduces a long position (reduce_only) and is allowed in every state, risk
decides the rest.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from decimal import Decimal

from services.common.models import (
    AccountState,
    Action,
    OrderRequest,
    Side,
    Signal,
    Tick,
    TradingState,
    Verdict,
    now_ns,
)

from .config import TradingConfig
from .sizing import buy_quantity, sell_quantity
from .strategy import Strategy, make_strategy

log = logging.getLogger(__name__)

AGENT = "trading"


def new_client_order_id() -> str:
    return f"trd-{uuid.uuid4().hex[:20]}"


@dataclass(frozen=True)
class Proposal:
    signal: Signal
    order: OrderRequest


class TradingAgent:
    def __init__(self, cfg: TradingConfig, strategy: Strategy | None = None) -> None:
        self.cfg = cfg
        self.strategy = strategy or make_strategy(cfg)
        self.verdicts: dict[str, Verdict] = {}
        self.account: AccountState | None = None
        self._cooldown_until: dict[str, float] = {}

    def on_verdict(self, verdict: Verdict) -> None:
        self.verdicts[verdict.symbol] = verdict

    def on_account(self, account: AccountState) -> None:
        self.account = account

    def on_tick(self, tick: Tick, now: float) -> Proposal | None:
        """`now` is a monotonic clock in seconds (for the cooldown)."""
        decision = self.strategy.on_tick(tick)
        if decision is None or decision.action is Action.HOLD:
            return None
        symbol = tick.symbol
        if now < self._cooldown_until.get(symbol, float("-inf")):
            return None
        verdict = self.verdicts.get(symbol)
        if verdict is None:
            log.debug("%s: %s skipped, no verdict from risk yet", symbol, decision.action.value)
            return None

        if decision.action is Action.BUY:
            if not self._may_increase(verdict):
                return None
            assert self.account is not None
            quantity = buy_quantity(
                tick.price,
                verdict.position,
                self.account.equity,
                self.cfg.order_usd,
                self.cfg.max_position_pct,
            )
            side, reduce_only = Side.BUY, False
        else:
            quantity = sell_quantity(tick.price, verdict.position, self.cfg.order_usd)
            side, reduce_only = Side.SELL, True
        if quantity <= 0:
            log.debug("%s: %s skipped, size rounds to zero", symbol, decision.action.value)
            return None

        self._cooldown_until[symbol] = now + self.cfg.cooldown_s
        ts = now_ns()
        signal = Signal(
            agent=AGENT,
            symbol=symbol,
            action=decision.action,
            confidence=decision.confidence,
            reasoning=f"{decision.reasoning}; {side.value} {quantity} at ~{tick.price}"
            + (" (reduce only)" if reduce_only else ""),
            model=self.strategy.name,
            origin_ts=tick.ts,
            ts=ts,
        )
        order = OrderRequest(
            client_order_id=new_client_order_id(),
            agent=AGENT,
            symbol=symbol,
            venue=tick.venue,
            side=side,
            quantity=quantity,
            reduce_only=reduce_only,
            decision_price=tick.price,
            origin_ts=tick.ts,
            ts=ts,
        )
        return Proposal(signal, order)

    def _may_increase(self, verdict: Verdict) -> bool:
        account = self.account
        if verdict.state is not TradingState.ACTIVE:
            log.debug("%s: BUY skipped, verdict is %s", verdict.symbol, verdict.state.value)
            return False
        if account is None or account.state is not TradingState.ACTIVE or account.kill_switch:
            log.debug("%s: BUY skipped, account unknown or not ACTIVE", verdict.symbol)
            return False
        if account.equity <= Decimal(0):
            return False
        return True
