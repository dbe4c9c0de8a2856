"""The backtester: the trading agent's decider, its `plan` (sizing, fail-closed rules)
and rust-risk's and rust-execution's own code (the `moonbus_sim` module built from
rust-backtest) over historical bars, on an event-time clock.

Per bar time t, for every symbol with a bar at t (in symbol order):
1. the open trades at t: risk marks it, the paper venue's market is it (resting
   orders it makes marketable fill, as live);
2. a decision of the bar before is planned now, at the open, with the open as the
   latest tick (live: `Context.price` is the latest tick when it is newer than the
   event), and the order goes through risk's check and the paper venue: market orders
   fill at the next bar's open, as in backtesting.py (`trade_on_close` plans and fills
   at the close of the bar that decided instead);
3. the close trades at the bar's last nanosecond; the equity is sampled after every
   symbol's close;
4. the decider sees the closed bars (the live agent's window, `bars_needed`) and
   decides; anything but HOLD waits for step 2 of the next bar.

No sleep, no wall clock: every time is a bar's, order ids are numbered, so the same
inputs give the same result, byte for byte. What differs from live is the transport
only (no NATS, no JetStream) and that the venue answers at once.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import json
import logging
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.common import config as moonbus_config
from services.contract.models import AccountState, Action, Side, Tick, Verdict
from services.trading_agent.agent import Choice, Context, Event, plan
from services.trading_agent.config import TradingConfig
from services.trading_agent.decide import Decider, RuleDecider
from services.trading_agent.service import make_deciders

from . import llm
from .data import BarSeries, trusted
from .window import Window
from .result import BacktestResult, Fill, Rejection, Trade

log = logging.getLogger(__name__)

# Where a bar time has got to in the simulator (rust-backtest sim.rs Phase).
OPENED, CLOSED, SAMPLED = 1, 2, 3
END = 2**64 - 1


class BacktestError(ValueError):
    """A backtest that cannot run as asked (bad config, data that do not fit together)."""


def _simulator() -> Any:
    try:
        import moonbus_sim
    except ImportError as e:  # the Rust module is a build output, not a PyPI package
        raise BacktestError("the Rust rules for Python (moonbus_sim) are not installed: run `make setup`") from e
    return moonbus_sim


def config_file(config_path: str | Path | None) -> Path:
    """moonbus.toml as the services find it: the argument, $MOONBUS_CONFIG, ./moonbus.toml,
    else the checkout's."""
    if config_path is not None:
        return Path(config_path)
    if "MOONBUS_CONFIG" in os.environ:
        return Path(os.environ["MOONBUS_CONFIG"])
    local = Path("moonbus.toml")
    return local if local.exists() else moonbus_config.REPO_ROOT / "moonbus.toml"


def _toml_value(value: Any) -> str:
    """A value as the TOML text of a MOONBUS__ override (money stays a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return json.dumps(str(value))
    if isinstance(value, (int, float, str, list)):
        return json.dumps(value)
    raise BacktestError(f"override value {value!r} is not a string, number, boolean or list")


def _overrides(overrides: Mapping[str, Any], prefix: str = moonbus_config.ENV_PREFIX) -> dict[str, str]:
    """{section: {key: value}} (tables nest: {"llm": {"endpoints": {"x": {...}}}}) as
    MOONBUS__SECTION__KEY overrides, read by both languages' config loaders."""
    env: dict[str, str] = {}
    for name, value in overrides.items():
        key = f"{prefix}{name.upper()}"
        if isinstance(value, Mapping):
            env |= _overrides(value, key + "__")
        elif prefix == moonbus_config.ENV_PREFIX:
            raise BacktestError(f"override [{name}] must be a table of keys")
        else:
            env[key] = _toml_value(value)
    return env


async def _decide(decider: Decider, ctx: Context) -> Choice:
    return await decider.decide(ctx)


class _Ids:
    """Numbered client_order_ids: a run's orders are named the same every time."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"bt-{self.n:012d}"


def run(series: list[BarSeries], *, strategy: str | None = None, params: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None, config_path: str | Path | None = None,
        trade_on_close: bool = False, decider: Decider | None = None,
        llm_mode: llm.Mode = "replay") -> BacktestResult:
    """Backtest the trading agent over `series` (one per symbol, one interval).

    `params` are [trading_agent] keys (e.g. {"ma_fast": 10}); `overrides` are any
    section's keys over the config file ({"risk": {"starting_cash": "5000"}}); the
    config file is read as the services read it, environment overrides included.
    `decider` replaces the configured one (for every symbol; else each symbol gets its
    own, `[trading_agent.symbols."<symbol>"]`, plugins included). The LLM strategy decides through the
    record/replay cache (llm.py): `llm_mode` "replay" (free, reproducible) or "record"
    (asks the model: see llm.estimate first)."""
    if not series:
        raise BacktestError("no data to backtest")
    intervals = {s.interval for s in series}
    if len(intervals) != 1:
        raise BacktestError(f"every series must have one interval, got {sorted(intervals)}")
    symbols = [s.symbol for s in series]
    if len(set(symbols)) != len(symbols):
        raise BacktestError(f"a symbol appears twice: {symbols}")
    series = sorted(series, key=lambda s: s.symbol)
    interval = series[0].interval

    path = config_file(config_path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BacktestError(f"config {path}: {e.strerror}") from e
    merged = {k: v for k, v in os.environ.items() if k.startswith(moonbus_config.ENV_PREFIX)}
    trading_keys = dict(params or {})
    if strategy is not None:
        trading_keys["strategy"] = strategy
    trading_keys["bar_interval"] = interval
    merged |= _overrides({"system": {"symbols": sorted(symbols)},
                          "execution": {"venues": sorted({s.venue for s in series})}})
    merged |= _overrides(overrides or {})
    merged |= _overrides({"trading_agent": trading_keys})
    try:
        table = moonbus_config.load(path, merged)
        cfg = moonbus_config.section(table, "trading_agent", TradingConfig)
    except (ValueError, OSError) as e:
        raise BacktestError(f"config: {e}") from e
    if decider is None:
        try:
            book = make_deciders(cfg, table | {"llm": llm.llm_settings(table, llm_mode).model_dump()})
        except ValueError as e:
            raise BacktestError(f"config: {e}") from e
        deciders = {s: book.for_symbol(s) for s in symbols}
        names = sorted({d.name for d in deciders.values()})
        name = names[0] if len(names) == 1 else "per_symbol"  # a run id's prefix ([A-Za-z0-9_-])
    else:
        deciders, name = {s: decider for s in symbols}, decider.name
    try:
        sim = _simulator().Simulator(text, sorted(merged.items()))
    except ValueError as e:
        raise BacktestError(f"config: {e}") from e

    starting_cash = AccountState.model_validate_json(sim.account()).equity
    result = BacktestResult(strategy=name, params=cfg.model_dump(mode="json"), symbols=sorted(symbols),
                            interval=interval, starting_cash=starting_cash)
    for s in series:
        sim.add_series(s.venue, s.symbol, s.start_ts, [str(p) for p in s.open], [str(p) for p in s.close],
                       s.interval_ns)
    _Run(sim, cfg, deciders, series, result, trade_on_close).run()
    return result


class _Run:
    """One backtest's event loop. The Rust simulator runs the bars (`advance_to`); this
    stops it where the agent acts: at a bar's close to decide, at the next open (or at
    the close, trade_on_close) to plan and send an order.

    A rule decider that decides from prices alone (a built-in: its `scan`) has its
    decisions on every bar made first, in one pass per symbol, and the bars run in Rust
    from one order to the next. Any other decider (an LLM, a plugin without `scan`) may
    read the account and positions: it is asked at each bar's close, with the state of
    that moment, exactly as the live agent asks it (RuleDecider.decide, deadline included)."""

    def __init__(self, sim: Any, cfg: TradingConfig, deciders: Mapping[str, Decider], series: list[BarSeries],
                 result: BacktestResult, trade_on_close: bool) -> None:
        self.sim, self.cfg, self.deciders, self.series, self.result = sim, cfg, deciders, series, result
        self.trade_on_close = trade_on_close
        self.new_id = _Ids()
        self.fill_times: list[int] = []
        self.stops: list[tuple[int, int, int, str, Any]] = []  # (t, phase, order, kind, payload)
        self.order = itertools.count()  # stops at one (t, phase) go in the order they were made
        self.loop: asyncio.AbstractEventLoop | None = None
        self.abstained: dict[str, list[str]] = {}  # symbol -> why, per bar a plugin abstained on

    def stop(self, t: int, phase: int, kind: str, payload: Any) -> None:
        heapq.heappush(self.stops, (t, phase, next(self.order), kind, payload))

    def run(self) -> None:
        for k, s in enumerate(self.series):
            decider = self.deciders[s.symbol]
            if isinstance(decider, RuleDecider) and decider.fast_path:
                self.decide_every_bar(s)
            elif len(s):
                self.stop(s.start_ts[0], CLOSED, "decide", (k, 0, Window(decider.bars_needed, s.bar)))
        try:
            while self.stops:
                t, phase, _, kind, payload = heapq.heappop(self.stops)
                self.record(self.sim.advance_to(t, phase))
                if kind == "decide":
                    self.decide_at_close(*payload)
                else:
                    self.send(t, *payload)
            self.record(self.sim.advance_to(END, SAMPLED))
        finally:
            if self.loop is not None:
                self.loop.close()
        for symbol, whys in self.abstained.items():
            log.warning("%s: the strategy abstained on %d bars (HOLD); the first: %s", symbol, len(whys), whys[0])
        self.result.times, equity = self.sim.take_curve()
        self.result.equity = list(map(Decimal, equity))
        self.result.bars = sum(len(s) for s in self.series)
        self.result.closes = {s.symbol: _closes_at(self.result.times, s) for s in self.series}
        self.result.trades = round_trips(self.result.fills, [self.step_of(ts) for ts in self.fill_times],
                                         self.result.closes)

    def step_of(self, ts: int) -> int:
        return bisect.bisect_right(self.result.times, ts) - 1

    def decide_every_bar(self, s: BarSeries) -> None:
        """A rule decider's decisions on each bar of `s`, in one pass: the strategy's own
        scan over the closes when it has one (the built-in strategies), else its decide
        on each bar's window."""
        decider = self.deciders[s.symbol]
        assert isinstance(decider, RuleDecider)
        strategy = decider.strategy
        if callable(scan := getattr(strategy, "scan", None)):
            for i, d in scan(s.symbol, s.close):
                self.decided(s, i, decider.choice(d), None)
            return
        window = Window(decider.bars_needed, s.bar)
        for i in range(len(s)):
            window.push(i)
            d = strategy.decide(s.symbol, window)  # type: ignore[union-attr]
            if d.action is not Action.HOLD:
                self.decided(s, i, decider.choice(d), None)

    def decide_at_close(self, k: int, i: int, window: Window) -> None:
        s = self.series[k]
        window.push(i)
        ctx = Context(event=self.event(s, i), bars=window)
        ctx.tick = self.tick(s, i, s.start_ts[i] + s.interval_ns - 1, s.close[i])
        self.context(ctx)
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        choice = self.loop.run_until_complete(_decide(self.deciders[s.symbol], ctx))
        self.result.llm_cost_usd += choice.cost_usd
        if choice.failure is not None:  # a plugin that raised or overran abstained, as live
            self.abstained.setdefault(s.symbol, []).append(choice.reasoning)
        if choice.action is not Action.HOLD:
            self.decided(s, i, choice, ctx)
        if i + 1 < len(s):
            self.stop(s.start_ts[i + 1], CLOSED, "decide", (k, i + 1, window))

    def decided(self, s: BarSeries, i: int, choice: Choice, ctx: Context | None) -> None:
        """A decision on bar i (and its context, None for a rule's: made when planned):
        planned at its close, or at the next bar's open."""
        self.result.signals += 1
        if self.trade_on_close:
            self.stop(s.start_ts[i], CLOSED, "plan", (s, i, choice, ctx, True))
        elif i + 1 < len(s):
            self.stop(s.start_ts[i + 1], OPENED, "plan", (s, i + 1, choice, ctx, False))

    def send(self, t: int, s: BarSeries, i: int, choice: Choice, ctx: Context | None, at_close: bool) -> None:
        if at_close:  # the stop was queued after the bar's close: the sim is there already
            ts, price = s.start_ts[i] + s.interval_ns - 1, s.close[i]
        else:  # the order is planned at the open, with the open as the latest tick (live: Context.price)
            ts, price = t, s.open[i]
        if ctx is None:  # the deciding bar: i at the close, the one before i at the next open
            ctx = Context(event=self.event(s, i if at_close else i - 1), bars=())
        ctx.tick = self.tick(s, i, ts, price)
        self.context(ctx)
        for order in plan(choice, ctx, self.cfg, ts, self.new_id).orders:  # a flip: the close, then the opening one
            self.record(self.sim.submit(order.model_dump_json().encode()), order.reduce_only)

    def context(self, ctx: Context) -> None:
        """Risk's verdict and account now, as the live agent reads them from the bus."""
        if (raw := self.sim.verdict(ctx.event.symbol)) is not None:
            ctx.verdict = Verdict.model_validate_json(raw)
        ctx.account = AccountState.model_validate_json(self.sim.account())

    def event(self, s: BarSeries, i: int) -> Event:
        return Event(kind="bar", symbol=s.symbol, venue=s.venue, price=s.close[i],
                     origin_ts=s.start_ts[i] + s.interval_ns, summary=f"bar {s.interval} closed")

    @staticmethod
    def tick(s: BarSeries, i: int, ts: int, price: Decimal) -> Tick:
        return trusted(Tick, {"venue": s.venue, "symbol": s.symbol, "price": price, "bid": None, "ask": None,
                              "size": None, "seq": 0, "ts": ts})

    def record(self, reports: list[str], reduce_only: bool = False) -> None:
        result = self.result
        for raw in reports:
            r = json.loads(raw)
            if r.get("last_fill_quantity") is not None:
                result.fills.append(Fill(ts=r["ts"], symbol=r["symbol"], side=r["side"],
                                         quantity=Decimal(r["last_fill_quantity"]),
                                         price=Decimal(r["last_fill_price"]), fee=Decimal(r["fee"]),
                                         client_order_id=r["client_order_id"],
                                         # a protection's exit (stop, take-profit, trailing) is reduce-only
                                         reduce_only=reduce_only or r.get("child_kind") in PROTECTION_EXITS))
                self.fill_times.append(r["ts"])
            elif r["status"] in ("REJECTED", "EXPIRED"):
                result.rejections.append(Rejection(ts=r["ts"], symbol=r.get("symbol") or "", side=r.get("side") or "",
                                                   quantity=Decimal(r.get("quantity") or 0),
                                                   reason=r.get("reason") or r["status"]))


PROTECTION_EXITS = ("STOP_LOSS", "TAKE_PROFIT", "TRAILING_STOP")


def _closes_at(times: list[int], s: BarSeries) -> list[Decimal | None]:
    """The series' close at each of `times` (the last one before, None before its first bar)."""
    if times == s.start_ts:
        return list(s.close)
    out: list[Decimal | None] = []
    i, last = 0, None
    for t in times:
        while i < len(s) and s.start_ts[i] <= t:
            last = s.close[i]
            i += 1
        out.append(last)
    return out


def round_trips(fills: list[Fill], steps: list[int], closes: Mapping[str, list[Decimal | None]]) -> list[Trade]:
    """Fills matched into trades first in, first out per symbol (backtesting.py's rule): a
    fill against the position closes the oldest open lots (splitting one if it closes
    part of it); the rest opens a new lot. Fees are shared by quantity. Lots still open at
    the end are trades with no exit, valued at the last close."""
    trades: list[Trade] = []
    lots: dict[str, list[list[Any]]] = {}  # symbol -> [[signed qty, ts, price, fee per unit, step]]
    for fill, step in zip(fills, steps):
        signed = fill.quantity if fill.side == Side.BUY.value else -fill.quantity
        fee_per_unit = fill.fee / fill.quantity
        open_lots = lots.setdefault(fill.symbol, [])
        while signed and open_lots and (open_lots[0][0] > 0) != (signed > 0):
            lot = open_lots[0]
            take = min(abs(lot[0]), abs(signed))
            trades.append(_trade(fill.symbol, lot, take, fill.ts, fill.price, fee_per_unit, step))
            lot[0] += take if lot[0] < 0 else -take
            signed += take if signed < 0 else -take
            if not lot[0]:
                open_lots.pop(0)
        if signed:
            open_lots.append([signed, fill.ts, fill.price, fee_per_unit, step])
    for symbol, open_lots in lots.items():
        last = next((c for c in reversed(closes.get(symbol, [])) if c is not None), None)
        for lot in open_lots:
            trades.append(_trade(symbol, lot, abs(lot[0]), None, last, Decimal(0), None))
    trades.sort(key=lambda tr: (tr.entry_ts, tr.symbol))
    return trades


def _trade(symbol: str, lot: list[Any], quantity: Decimal, exit_ts: int | None, exit_price: Decimal | None,
           exit_fee_per_unit: Decimal, exit_step: int | None) -> Trade:
    _, entry_ts, entry_price, entry_fee_per_unit, entry_step = lot
    long = lot[0] > 0
    fees = (entry_fee_per_unit + exit_fee_per_unit) * quantity
    move = (exit_price - entry_price) if exit_price is not None else Decimal(0)
    pnl = (move if long else -move) * quantity - fees
    return Trade(symbol=symbol, direction="LONG" if long else "SHORT", quantity=quantity, entry_ts=entry_ts,
                 entry_price=entry_price, exit_ts=exit_ts if exit_step is not None else None,
                 exit_price=exit_price if exit_step is not None else None, fees=fees, pnl=pnl,
                 entry_bar=entry_step, exit_bar=exit_step)
