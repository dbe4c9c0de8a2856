"""From a decision to what is published, without the bus: the Signal (always, one per
event) and the order (when the decision leads to one and risk allows it).

It fails closed: no verdict for the symbol = no order (the position is unknown); a
risk-increasing BUY needs a fresh ACTIVE verdict and a fresh ACTIVE account (its equity
and cash size the order), "fresh" = younger than state_max_age_s; an order that only
reduces a position (SELL of a long, BUY of a short) is reduce_only and allowed in every
state, risk decides the rest. Long only by default: a SELL without a long is no order.

Shorts (`allow_short`, globally or per symbol): a SELL when flat opens a short (sized as
sizing.py says), a SELL when short adds to it, a BUY covers it (reduce only). A signal
against the position whose close flattens it (all_in: always; fixed_usd: when the
position is at most order_usd worth) also opens the other side in the same decision: two
orders, the close (reduce only) then the opening one, sized at the account the close
leaves (its exit fee estimated at fee_bps). That is backtesting.py's
`position.close(); sell()`. A choice marked `close_only` (the decision pipeline blocked
the new risk) closes without the flip. Whether the venue may hold a short is risk's rule
(rust-risk shorts.rs: paper and perps yes, spot `short_not_allowed`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from services.contract.models import (
    AccountState,
    Action,
    Bar,
    OrderRequest,
    Sentiment,
    Side,
    Signal,
    SignalInput,
    Tick,
    TradingState,
    Verdict,
)

from .algo import algo_for
from .config import TradingConfig
from .protection import attach
from .sizing import all_in_quantity, all_in_short_quantity, buy_quantity, reduce_quantity, short_quantity

AGENT = "trading"


class _RandomPool:
    """Bytes of os.urandom read 4 KiB at a time and handed out once each: the same CSPRNG
    bytes, one getrandom call per ~400 order ids instead of one per id (it showed in the
    agent's profile, bench/agent_decisions.py). A forked child starts with an empty pool,
    so parent and child never hand out the same bytes."""

    SIZE = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._at = b"", 0

    def take(self, n: int) -> bytes:
        at = self._at
        if at + n > len(self._pool):
            self._pool, at = os.urandom(max(self.SIZE, n)), 0
        self._at = at + n
        return self._pool[at:at + n]


_RANDOM = _RandomPool()


def new_client_order_id() -> str:
    """`trd-` and 20 random hex digits (80 bits from the OS's CSPRNG: another publisher
    must not be able to guess the next id and take it first, SECURITY.md)."""
    return "trd-" + _RANDOM.take(10).hex()


@dataclass(frozen=True)
class Event:
    """What a decision is about: a closed bar or a price alert."""

    kind: str  # "bar" | "alert"
    symbol: str
    venue: str
    price: Decimal  # the bar's close, the alert's price
    origin_ts: int  # the bar's end_ts, the alert's ts
    summary: str


@dataclass
class Context:
    """Everything a decision may look at; None = not known (or too old to trust)."""

    event: Event
    bars: Sequence[Bar]  # oldest first, the event's bar last (a list, or a Window in a backtest)
    tick: Tick | None = None  # the latest tick of the symbol, if any
    verdict: Verdict | None = None
    account: AccountState | None = None
    sentiment: Sentiment | None = None
    notes: list[str] = field(default_factory=list)  # context that could not be had, and why

    @property
    def price(self) -> Decimal:
        """The price to size and stamp the order with: the latest tick if it is newer than
        the event (a decision may take seconds; a tick at a bar's end_ts is already the
        next bar's, bars being [start_ts, end_ts)), else the event's price."""
        if self.tick is not None and self.tick.ts >= self.event.origin_ts:
            return self.tick.price
        return self.event.price


@dataclass(frozen=True)
class Choice:
    """A strategy's answer (deterministic or LLM)."""

    action: Action
    confidence: float
    reasoning: str
    model: str
    fallback: bool = False
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    failure: str | None = None  # "plugin_error" / "plugin_timeout": the plugin abstained (reported)
    close_only: bool = False  # shorts: a signal against the position closes it, no flip (pipeline.py)


@dataclass(frozen=True)
class Proposal:
    signal: Signal
    order: OrderRequest | None
    then: OrderRequest | None = None  # a flip's opening order, sent after `order` (the close)

    @property
    def orders(self) -> list[OrderRequest]:
        """The orders to send, in this order."""
        return [o for o in (self.order, self.then) if o is not None]


def plan(choice: Choice, ctx: Context, cfg: TradingConfig, ts: int,
         new_id: Callable[[], str] = new_client_order_id, inputs: list[SignalInput] | None = None) -> Proposal:
    """The Signal for this decision and the order it leads to (or None, with why in the
    reasoning). `new_id` names the order (a backtest numbers them, for byte-identical runs);
    `inputs` are what the decision pipeline weighed (None: it is off)."""
    order, outcome = _order(choice.action, ctx, cfg, ts, new_id)
    then = None
    if order is not None and order.reduce_only and cfg.shorts(ctx.event.symbol):
        then, flip = _flip(choice, order, ctx, cfg, ts, new_id)
        outcome += flip
    order, then = attach(order, cfg.protection), attach(then, cfg.protection)
    action = Action(order.side.value) if order else Action.HOLD
    signal = Signal(
        agent=AGENT,
        symbol=ctx.event.symbol,
        action=action,
        confidence=max(0.0, min(1.0, choice.confidence)),
        reasoning=f"{choice.reasoning}; {outcome}",
        model=choice.model,
        fallback=choice.fallback,
        latency_ms=choice.latency_ms,
        cost_usd=choice.cost_usd,
        origin_ts=ctx.event.origin_ts,
        ts=ts,
        inputs=inputs,
    )
    return Proposal(signal, order, then)


def _order(action: Action, ctx: Context, cfg: TradingConfig, ts: int,
           new_id: Callable[[], str]) -> tuple[OrderRequest | None, str]:
    if action is Action.HOLD:
        return None, "no order"
    verdict = ctx.verdict
    if verdict is None:
        return None, f"no order: {action.value} needs a verdict from risk (fail closed)"
    price, position = ctx.price, verdict.position
    reducing = (action is Action.SELL and position > 0) or (action is Action.BUY and position < 0)
    all_in = cfg.sizing == "all_in"
    if reducing:
        quantity = abs(position) if all_in else reduce_quantity(price, position, cfg.order_usd, cfg.quantity_step)
    elif action is Action.SELL and not cfg.shorts(ctx.event.symbol):
        return None, f"no order: no long position to sell (position {position}, no shorting)"
    else:
        refusal = _may_increase(verdict, ctx.account, ts - int(cfg.state_max_age_s * 1e9))
        if refusal:
            return None, f"no order: {action.value} would increase the position and {refusal}"
        assert ctx.account is not None
        a = ctx.account
        quantity = _opening_quantity(action, cfg, price, position, a.equity, a.cash, a.gross_exposure)
    if quantity <= 0:
        return None, (f"no order: {action.value} size is zero (position {position}, max position "
                      f"{cfg.max_position_pct}% of equity, cash reserve {cfg.cash_pct}%)")
    algo, algo_note = algo_for(quantity, price, verdict.max_order_notional, cfg.algo, cfg.quantity_step)
    order = OrderRequest(
        client_order_id=new_id(),
        agent=AGENT,
        symbol=ctx.event.symbol,
        venue=ctx.event.venue,
        side=Side(action.value),
        quantity=quantity,
        reduce_only=reducing,
        decision_price=price,
        origin_ts=ctx.event.origin_ts,
        ts=ts,
        algo=algo,
    )
    opens_short = action is Action.SELL and not reducing
    return order, (f"order {action.value} {quantity} at ~{price}" + (" (reduce only)" if reducing else "")
                   + (" (opens or adds to a short)" if opens_short else "") + algo_note)


def _opening_quantity(action: Action, cfg: TradingConfig, price: Decimal, position: Decimal, equity: Decimal,
                      cash: Decimal, gross_exposure: Decimal) -> Decimal:
    """The size of an order that opens or adds to a position (sizing.py)."""
    fee_bps, step = Decimal(str(cfg.fee_bps)), cfg.quantity_step
    if action is Action.BUY:
        if cfg.sizing == "all_in":
            return all_in_quantity(price, equity, cash, cfg.cash_pct, fee_bps, step)
        return buy_quantity(price, position, equity, cash, cfg.order_usd, cfg.max_position_pct, cfg.cash_pct, step)
    if cfg.sizing == "all_in":
        return all_in_short_quantity(price, equity, gross_exposure, cfg.cash_pct, fee_bps, step)
    return short_quantity(price, position, equity, gross_exposure, cfg.order_usd, cfg.max_position_pct,
                          cfg.cash_pct, step)


def _flip(choice: Choice, close: OrderRequest, ctx: Context, cfg: TradingConfig, ts: int,
          new_id: Callable[[], str]) -> tuple[OrderRequest | None, str]:
    """After a close that flattens the position (shorts allowed): the order that opens the
    other side, sized at the account the close leaves (exit fee at fee_bps), and what
    was decided about it (text for the reasoning)."""
    verdict, account = ctx.verdict, ctx.account
    assert verdict is not None
    if close.quantity != abs(verdict.position):
        return None, ""  # a partial close (fixed_usd): the position keeps its side
    side = "short" if close.side is Side.SELL else "long"
    if choice.close_only:
        return None, f"; no flip to a {side} (close only)"
    refusal = _may_increase(verdict, account, ts - int(cfg.state_max_age_s * 1e9))
    if refusal:
        return None, f"; no flip to a {side}: {refusal}"
    assert account is not None
    price = ctx.price
    notional = close.quantity * price
    fee = notional * Decimal(str(cfg.fee_bps)) / 10_000
    equity = account.equity - fee
    # a long sold: its notional comes back as cash; a short covered: paid for out of cash
    cash = account.cash + (notional if close.side is Side.SELL else -notional) - fee
    gross = max(account.gross_exposure - notional, Decimal(0))
    action = Action(close.side.value)
    quantity = _opening_quantity(action, cfg, price, Decimal(0), equity, cash, gross)
    if quantity <= 0:
        return None, f"; no flip to a {side}: its size is zero"
    algo, algo_note = algo_for(quantity, price, verdict.max_order_notional, cfg.algo, cfg.quantity_step)
    order = OrderRequest(client_order_id=new_id(), agent=AGENT, symbol=close.symbol, venue=close.venue,
                         side=close.side, quantity=quantity, reduce_only=False, decision_price=price,
                         origin_ts=close.origin_ts, ts=ts, algo=algo)
    return order, f"; then {action.value} {quantity} at ~{price} (flips to a {side}){algo_note}"


def _may_increase(verdict: Verdict, account: AccountState | None, fresh_after_ts: int) -> str | None:
    """None when a risk-increasing order may be sent, else why not."""
    if verdict.state is not TradingState.ACTIVE:
        return f"the verdict is {verdict.state.value}"
    if verdict.ts < fresh_after_ts:
        return "the ACTIVE verdict is too old to trust"
    if account is None or account.ts < fresh_after_ts:
        return "the account state is unknown or too old"
    if account.state is not TradingState.ACTIVE or account.kill_switch:
        return f"the account is {account.state.value}" + (" (kill switch)" if account.kill_switch else "")
    if account.equity <= Decimal(0):
        return f"equity is {account.equity}"
    return None
