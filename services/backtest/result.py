"""What a backtest produces, before any report is made of it (report.py does that).

Money is exact (Decimal); times are ns since the epoch (event time: the bars' times,
never the wall clock), so the same inputs give byte-identical results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Fill:
    """One execution of an order, as rust-execution's paper venue reported it."""

    ts: int
    symbol: str
    side: str  # "BUY" | "SELL"
    quantity: Decimal
    price: Decimal
    fee: Decimal
    client_order_id: str
    reduce_only: bool = False


@dataclass(frozen=True)
class Trade:
    """A round trip: a position opened and closed (or still open at the end: exit_* None).

    Trades are matched first in, first out per symbol, like backtesting.py: a fill that
    reduces a position closes (part of) the oldest open trade; a partial close splits it.
    """

    symbol: str
    direction: str  # "LONG" | "SHORT"
    quantity: Decimal
    entry_ts: int
    entry_price: Decimal
    exit_ts: int | None
    exit_price: Decimal | None
    fees: Decimal  # entry and exit fees of this quantity
    pnl: Decimal  # quantity * (exit - entry) signed by direction, minus fees; at the last close if open
    entry_bar: int  # index into BacktestResult.times
    exit_bar: int | None


@dataclass(frozen=True)
class Rejection:
    """An order the rules refused (risk) or the venue rejected, with the reason."""

    ts: int
    symbol: str
    side: str
    quantity: Decimal
    reason: str


@dataclass
class BacktestResult:
    strategy: str
    params: dict[str, Any]  # the trading_agent keys the run used (defaults + overrides)
    symbols: list[str]
    interval: str
    starting_cash: Decimal
    # One point per bar time (the union of every symbol's bar times, in order): the bar's
    # close marked to market after every fill of that bar.
    times: list[int] = field(default_factory=list)  # bar start_ts, ns
    equity: list[Decimal] = field(default_factory=list)
    # Per symbol, the close at each of `times` (None before the symbol's first bar).
    closes: dict[str, list[Decimal | None]] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    signals: int = 0  # decisions that were not HOLD
    bars: int = 0  # bars processed, every symbol
    llm_cost_usd: float = 0.0

    @property
    def final_equity(self) -> Decimal:
        return self.equity[-1] if self.equity else self.starting_cash

    @property
    def fees(self) -> Decimal:
        return sum((f.fee for f in self.fills), Decimal(0))
