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
import json
import os
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.common import config as moonbus_config
from services.contract.models import AccountState, Action, Bar, Side, Tick, Verdict
from services.trading_agent.agent import Choice, Context, Event, plan
from services.trading_agent.config import TradingConfig
from services.trading_agent.decide import Decider, RuleDecider
from services.trading_agent.strategy import make_strategy

from .data import BarSeries
from .result import BacktestResult, Fill, Rejection, Trade

AGENT = "trading"


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


def _overrides(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for section, keys in overrides.items():
        if not isinstance(keys, Mapping):
            raise BacktestError(f"override [{section}] must be a table of keys")
        for key, value in keys.items():
            env[f"{moonbus_config.ENV_PREFIX}{section.upper()}__{key.upper()}"] = _toml_value(value)
    return env


def _run_sync(decider: Decider, ctx: Context, loop: asyncio.AbstractEventLoop | None) -> tuple[Choice, asyncio.AbstractEventLoop | None]:
    """The decider's answer. A rule decider never awaits: its coroutine is stepped once,
    with no event loop (microseconds); one that awaits (an LLM) runs on a loop."""
    coro: Coroutine[Any, Any, Choice] = decider.decide(ctx)
    if isinstance(decider, RuleDecider):
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value, loop
        coro.close()
        raise BacktestError(f"decider {decider.name} awaited")
    if loop is None:
        loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro), loop


class _Ids:
    """Numbered client_order_ids: a run's orders are named the same every time."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"bt-{self.n:012d}"


def _times(series: list[BarSeries]) -> Iterator[tuple[int, list[tuple[BarSeries, int]]]]:
    """Each bar time in order, with the (series, index) of every symbol that has a bar then."""
    cursors = [0] * len(series)
    while True:
        pending = [s.start_ts[c] for s, c in zip(series, cursors) if c < len(s)]
        if not pending:
            return
        t = min(pending)
        due = []
        for k, s in enumerate(series):
            c = cursors[k]
            if c < len(s) and s.start_ts[c] == t:
                due.append((s, c))
                cursors[k] = c + 1
        yield t, due


def run(series: list[BarSeries], *, strategy: str | None = None, params: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None, config_path: str | Path | None = None,
        trade_on_close: bool = False, decider: Decider | None = None) -> BacktestResult:
    """Backtest the trading agent over `series` (one per symbol, one interval).

    `params` are [trading_agent] keys (e.g. {"ma_fast": 10}); `overrides` are any
    section's keys over the config file ({"risk": {"starting_cash": "5000"}}); the
    config file is read as the services read it, environment overrides included.
    `decider` replaces the configured one (an LLM decider in replay mode, say)."""
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
        if cfg.strategy == "llm":
            raise BacktestError("an LLM strategy backtests through the record/replay cache: see services/backtest/llm.py")
        decider = RuleDecider(make_strategy(cfg.strategy, cfg))
    try:
        sim = _simulator().Simulator(text, sorted(merged.items()))
    except ValueError as e:
        raise BacktestError(f"config: {e}") from e

    starting_cash = AccountState.model_validate_json(sim.account()).equity
    result = BacktestResult(strategy=decider.name, params=cfg.model_dump(mode="json"), symbols=sorted(symbols),
                            interval=interval, starting_cash=starting_cash)
    windows: dict[str, deque[Bar]] = {s.symbol: deque(maxlen=decider.bars_needed) for s in series}
    choices: dict[str, tuple[Choice, Context]] = {}
    new_id = _Ids()
    loop: asyncio.AbstractEventLoop | None = None
    interval_ns = series[0].interval_ns
    closes: dict[str, list[Decimal | None]] = {s.symbol: [] for s in series}

    def submit_plan(choice: Choice, ctx: Context, ts: int, step: int) -> None:
        symbol = ctx.event.symbol
        if (raw := sim.verdict(symbol)) is not None:
            ctx.verdict = Verdict.model_validate_json(raw)
        ctx.account = AccountState.model_validate_json(sim.account())
        order = plan(choice, ctx, cfg, ts, new_id).order
        if order is not None:
            record(sim.submit(order.model_dump_json().encode()), step, order.reduce_only)

    def record(reports: list[str], step: int, reduce_only: bool = False) -> None:
        for raw in reports:
            r = json.loads(raw)
            if r.get("last_fill_quantity") is not None:
                result.fills.append(Fill(ts=r["ts"], symbol=r["symbol"], side=r["side"],
                                         quantity=Decimal(r["last_fill_quantity"]),
                                         price=Decimal(r["last_fill_price"]), fee=Decimal(r["fee"]),
                                         client_order_id=r["client_order_id"], reduce_only=reduce_only))
                fill_steps.append(step)
            elif r["status"] in ("REJECTED", "EXPIRED"):
                result.rejections.append(Rejection(ts=r["ts"], symbol=r.get("symbol") or "", side=r.get("side") or "",
                                                   quantity=Decimal(r.get("quantity") or 0),
                                                   reason=r.get("reason") or r["status"]))

    fill_steps: list[int] = []
    try:
        for step, (t, due) in enumerate(_times(series)):
            for s, i in due:  # 1. the opens
                record(sim.tick(s.venue, s.symbol, str(s.open[i]), t), step)
            for s, i in due:  # 2. last bar's decisions, planned and sent at the open
                if (pending := choices.pop(s.symbol, None)) is not None:
                    choice, ctx = pending
                    ctx.tick = Tick.model_construct(venue=s.venue, symbol=s.symbol, price=s.open[i], seq=0, ts=t)
                    submit_plan(choice, ctx, t, step)
            close_ts = t + interval_ns - 1
            for s, i in due:  # 3. the closes
                record(sim.tick(s.venue, s.symbol, str(s.close[i]), close_ts), step)
            for s, i in due:  # 4. decisions on the closed bar
                bar = s.bar(i)
                window = windows[s.symbol]
                window.append(bar)
                event = Event(kind="bar", symbol=s.symbol, venue=s.venue, price=bar.close,
                              origin_ts=bar.end_ts, summary=f"bar {interval} closed")
                ctx = Context(event=event, bars=list(window))
                choice, loop = _run_sync(decider, ctx, loop)
                result.llm_cost_usd += choice.cost_usd
                if choice.action is not Action.HOLD:
                    result.signals += 1
                    if trade_on_close:
                        submit_plan(choice, ctx, close_ts, step)
                    else:
                        choices[s.symbol] = (choice, ctx)
            sim.sample()
            result.times.append(t)
            present = {s.symbol: s.close[i] for s, i in due}
            for symbol, column in closes.items():
                column.append(present.get(symbol, column[-1] if column else None))
            result.bars += len(due)
    finally:
        if loop is not None:
            loop.close()
    result.equity = [Decimal(e) for _, e in sim.take_curve()]
    result.closes = closes
    result.trades = round_trips(result.fills, fill_steps, closes)
    return result


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
