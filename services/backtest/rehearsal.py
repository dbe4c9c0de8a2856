"""Rehearsal (issue #13): the same bars through the real running services, end to end.

`rehearse(paths, ...)` loads the bars (services/backtest/data.py: OHLCV / Binance / replay
files), writes a config (moonbus.toml with the replay feed on the file's clock, the sim
off, the strategy and its params, `overrides` last), starts nats-server, rust-market-data,
rust-risk, rust-execution and the trading agent with the launcher of `make run`
(services/devstack), and feeds the bars to market-data's replay through a named pipe with
`replay_speed = 0`: no sleeps, no wall-clock pacing. It then reads every execution report
from the stream EXEC and risk's positions (`risk.api.positions`).

Pacing. The replay runs on the file's clock (`replay_clock = "file"`): a bar is closed by the
first tick past its end, so the bars published are the file's bars however fast they go.
By default (lockstep) a bar's time is written only once the system has finished with the
bars before it: the next bars' opening ticks go first (closing the bars before, so each
decision's latest tick, and the paper fill, is the next bar's open), then the rehearsal waits
until every closed bar has its Signal, every order its final report and risk's verdicts show
the fills; then the rest of those bars. That is as fast as the system takes the bars, with
each decision seeing the history, position and price of its own bar. `lockstep=False` writes
the whole file at once (a firehose: the replay runs ahead of the agent, which then decides
with later prices; README "Rehearsal" lists what that changes).

    python -m services.backtest.rehearsal data/backtest/BTC-USD.csv --strategy ma_crossover \
        --param ma_fast=5 --param ma_slow=20       # or: moon backtest ... --rehearse
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import heapq
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import nats
from nats.aio.msg import Msg

from services.backtest import data
from services.backtest import engine as backtest_engine
from services.common import config as moon_config
from services.common.bus import flush
from services.common.streams import read_stream
from services.contract import subjects as S
from services.contract.models import (
    AccountState,
    Action,
    Bar,
    ExecutionReport,
    FeedStatus,
    OrderStatus,
    Position,
    PositionsReply,
    PositionsRequest,
    Signal,
    Verdict,
    encode,
)
from services.devstack.launcher import System
from services.devstack.natsserver import free_port

SERVICES = ["market-data", "risk", "execution", "trading-agent"]
FINAL = {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
         OrderStatus.FAILED}
# Bar rows and tick rows in one CSV (rust-market-data/src/replay.rs: a row with an `open` is a bar).
HEADER = "ts,symbol,venue,interval,open,high,low,close,volume,price,size\n"
START_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 30.0  # one bar time's decisions, orders and fills (lockstep)


class RehearsalError(RuntimeError):
    """The rehearsal could not run or finish; says what it was waiting for."""


@dataclass
class RehearsalResult:
    symbols: list[str]
    interval: str
    bars_in_file: int
    published: list[Bar]  # md.bar.<interval>.> as market-data published them, in order
    signals: int  # the trading agent's decisions (one per bar)
    orders: int  # decisions that sent an order
    reports: list[ExecutionReport]  # every report in EXEC, in stream order
    positions: list[Position]
    account: AccountState
    elapsed_s: float  # from the first bar written to the last report settled
    config_path: Path  # the config the services ran with (gone with rehearse's temp dir)
    lockstep: bool

    @property
    def final(self) -> list[ExecutionReport]:
        return [r for r in self.reports if r.status in FINAL]

    @property
    def fills(self) -> list[ExecutionReport]:
        return [r for r in self.final if r.filled_quantity > 0 and r.algo is None]  # a parent's fills are its children's

    @property
    def rejections(self) -> list[ExecutionReport]:
        return [r for r in self.final if r.status is OrderStatus.REJECTED]

    @property
    def fees(self) -> Decimal:
        return sum((r.fee for r in self.final), Decimal(0))

    @property
    def bars_per_s(self) -> float:
        return len(self.published) / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ------------------------------------------------------------------ config and replay file


def rehearsal_config(base: dict[str, Any], series: Sequence[data.BarSeries], replay: Path, *,
                     strategy: str | None = None, params: dict[str, Any] | None = None,
                     overrides: dict[str, dict[str, Any]] | None = None, lockstep: bool = True) -> dict[str, Any]:
    """`base` (moonbus.toml as loaded) set up for a rehearsal of `series` replayed from `replay`.
    Only config values: the services run their live code."""
    cfg = copy.deepcopy(base)

    def put(section: str, **values: Any) -> None:
        cfg.setdefault(section, {}).update(values)

    interval = series[0].interval
    venues = sorted({s.venue for s in series})
    put("system", symbols=sorted({s.symbol for s in series}))
    put("market_data", feeds=["replay"], replay_files=[str(replay)], replay_speed=0.0, replay_clock="file",
        replay_loop=False, replay_venue=venues[0], bar_intervals=[interval], alert_threshold_pct=0.0,
        metrics_addr="")
    # One decision at a time, in bar order (parallel workers would size two bars of a symbol
    # from the same position); never "overloaded" (the firehose queues every bar).
    put("trading_agent", bar_interval=interval, on_alerts=False, workers=1, max_pending=10_000_000,
        metrics_port=0)
    # The data's own gaps (nights, weekends) are no outage of market-data: bars across them
    # are one series, as in the engine (live, history_max_gap_s = 60 s would cut daily bars at
    # every weekend and a 20-bar strategy would never decide).
    longest = max((b - a - s.interval_ns for s in series for a, b in zip(s.start_ts, s.start_ts[1:])), default=0)
    gap_s = cfg.get("trading_agent", {}).get("history_max_gap_s", 60.0)
    put("trading_agent", history_max_gap_s=max(float(gap_s), longest / 1e9 + 1))
    if strategy:
        put("trading_agent", strategy=strategy)
    put("trading_agent", **(params or {}))
    # Windows on the wall clock would see hours of bars within a second: the circuit breaker
    # and the rate limits are off (README "Rehearsal").
    put("risk", metrics_addr="", circuit_breaker_pct=0.0, rate_limit_agent=0, rate_limit_global=0,
        rate_limit_reduce_only=0, flatten_venue=venues[0])
    put("execution", venues=venues, metrics_addr="")
    if not lockstep:
        # The agent decides long after the last tick: no "stale market" for that; and its
        # history requests reach back to its bar through every bar published since.
        put("execution", tick_max_age_ms=3_600_000)
        put("risk", stale_after_ms=3_600_000)
        put("market_data", history_len=max(1000, max(len(s) for s in series)))
    for section, values in (overrides or {}).items():
        put(section, **values)
    return cfg


def dump_toml(table: dict[str, Any]) -> str:
    """TOML for a loaded config (tables, strings, numbers, booleans, lists)."""
    lines: list[str] = []

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))  # str, Decimal: a TOML basic string

    def emit(prefix: str, values: dict[str, Any]) -> None:
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in values.items() if not isinstance(v, dict))
        lines.append("")
        for k, v in values.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{key(k)}" if prefix else key(k), v)

    emit("", table)
    return "\n".join(lines)


def _num(d: Decimal) -> str:
    return format(d, "f")  # never "1E+3": the replay reads plain decimals


def bar_row(s: data.BarSeries, i: int) -> str:
    return (f"{s.start_ts[i]},{s.symbol},{s.venue},{s.interval},{_num(s.open[i])},{_num(s.high[i])},"
            f"{_num(s.low[i])},{_num(s.close[i])},{_num(s.volume[i])},,\n")


def open_row(s: data.BarSeries, i: int) -> str:
    """The bar's opening tick alone (size 0): it closes the bars before it; the bar row
    that follows opens at the same price, so the bar's OHLCV stay the file's."""
    return f"{s.start_ts[i]},{s.symbol},{s.venue},,,,,,,{_num(s.open[i])},0\n"


def bar_times(series: Sequence[data.BarSeries]) -> Iterator[list[tuple[data.BarSeries, int]]]:
    """The bars of every series merged in time order, grouped by start time, the symbols of
    each time in symbol order (the engine's order)."""

    def one(s: data.BarSeries) -> Iterator[tuple[int, str, int]]:
        return ((ts, s.symbol, i) for i, ts in enumerate(s.start_ts))

    by_symbol = {s.symbol: s for s in series}
    merged = heapq.merge(*(one(s) for s in series))
    for _, group in itertools.groupby(merged, key=lambda t: t[0]):
        yield [(by_symbol[symbol], i) for _, symbol, i in group]


def load_series(paths: Sequence[str | Path], **kw: Any) -> list[data.BarSeries]:
    """data.load_many(paths, **kw), checked for a rehearsal."""
    return check(data.load_many(paths, **kw))


def check(series: list[data.BarSeries]) -> list[data.BarSeries]:
    """`series` if market-data can replay them as they are: one interval, one series per
    symbol, bars on whole intervals since the epoch; else a RehearsalError saying why."""
    intervals = {s.interval for s in series}
    if len(intervals) != 1:
        raise RehearsalError(f"the files have bars of {', '.join(sorted(intervals))}: a rehearsal runs one "
                             "interval (the trading agent's bar_interval)")
    if len({s.symbol for s in series}) != len(series):
        raise RehearsalError("a symbol appears in two series (two venues): give one venue per symbol")
    for s in series:
        # market-data's bars start on whole intervals since the epoch (bars.rs).
        if misaligned := next((ts for ts in s.start_ts if ts % s.interval_ns), None):
            raise RehearsalError(f"{s.symbol}: a {s.interval} bar starts at {data._iso(misaligned)}, not on a whole "
                                 f"{s.interval} since the epoch: market-data would cut it into two bars")
    return series


# ------------------------------------------------------------------ watching the bus


class Watch:
    """What the operator sees on the bus while the rehearsal runs."""

    def __init__(self, interval: str) -> None:
        self.interval = interval
        self.bars: list[Bar] = []
        self.signals: list[Signal] = []
        self.final: dict[str, ExecutionReport] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.accounts = 0
        self.done: FeedStatus | None = None
        self.changed = asyncio.Event()

    async def subscribe(self, nc: nats.NATS) -> None:
        def on(model: Any, keep: Callable[[Any], None]) -> Callable[[Msg], Any]:
            async def cb(msg: Msg) -> None:
                keep(model.model_validate_json(msg.data))
                self.changed.set()
            return cb

        def report(r: ExecutionReport) -> None:
            if r.client_order_id and r.status in FINAL:
                self.final[r.client_order_id] = r

        def status(s: FeedStatus) -> None:
            if s.status == "replay_done":
                self.done = s

        def account(_: AccountState) -> None:
            self.accounts += 1

        await nc.subscribe(S.bar(self.interval, "*", "*"), cb=on(Bar, self.bars.append))
        await nc.subscribe(S.signal("trading", "*"), cb=on(Signal, self.signals.append))
        await nc.subscribe(S.ALL_REPORTS, cb=on(ExecutionReport, report))
        await nc.subscribe(S.ALL_VERDICTS, cb=on(Verdict, lambda v: self.verdicts.__setitem__(v.symbol, v)))
        await nc.subscribe(S.ACCOUNT, cb=on(AccountState, account))
        await nc.subscribe(S.ALL_FEED_STATUS, cb=on(FeedStatus, status))
        await flush(nc)

    @property
    def orders(self) -> int:
        return sum(1 for s in self.signals if s.action is not Action.HOLD)

    def position(self, symbol: str) -> Decimal:
        return sum((r.filled_quantity if r.side and r.side.value == "BUY" else -r.filled_quantity
                    for r in self.final.values() if r.symbol == symbol and r.algo is None), Decimal(0))

    def settled(self, bars: int) -> str | None:
        """None once `bars` bars are published and decided, every order has its final report
        and risk's verdicts show the fills; else what is still missing."""
        if len(self.bars) < bars:
            return f"{bars} bars published (seen {len(self.bars)})"
        if len(self.signals) < bars:
            return f"{bars} decisions (seen {len(self.signals)})"
        if len(self.final) < self.orders:
            return f"final reports for {self.orders} orders (seen {len(self.final)})"
        for symbol in {r.symbol for r in self.final.values() if r.symbol}:
            verdict = self.verdicts.get(symbol)
            if verdict is None or verdict.position != self.position(symbol):
                return f"risk's verdict on {symbol} with position {self.position(symbol)}"
        return None

    def priced(self, symbols: Sequence[str]) -> str | None:
        """None once risk has a price for every symbol (its verdicts say so)."""
        missing = [s for s in symbols if s not in self.verdicts or "no_market_data" in self.verdicts[s].reasons]
        return f"risk's verdicts with prices for {', '.join(missing)}" if missing else None

    async def until(self, missing: Callable[[], str | None], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (what := missing()) is not None:
            self.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RehearsalError(f"timed out after {timeout:g}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


# ------------------------------------------------------------------ running it


async def _open_pipe(fifo: Path, timeout: float) -> TextIO:
    """The write end of the replay's pipe, once market-data has opened the read end."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(open, fifo, "w"), timeout)
    except TimeoutError:
        # Unblock the thread still waiting in open(), then say why.
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        raise RehearsalError(f"market-data did not open the replay pipe {fifo} within {timeout:g}s") from None


async def _feed(pipe: TextIO, series: Sequence[data.BarSeries], watch: Watch, lockstep: bool) -> int:
    """Writes the bars into the replay's pipe (module docs: pacing); returns how many."""
    written = 0
    seen: set[str] = set()
    pipe.write(HEADER)
    for group in bar_times(series):
        if lockstep and written:
            pipe.write("".join(open_row(s, i) for s, i in group))
            pipe.flush()
            await watch.until(lambda: watch.settled(written), STEP_TIMEOUT_S)
        pipe.write("".join(bar_row(s, i) for s, i in group))
        pipe.flush()
        written += len(group)
        new = [s.symbol for s, _ in group if s.symbol not in seen]
        if lockstep and new:
            seen.update(new)
            await watch.until(lambda: watch.priced(new), STEP_TIMEOUT_S)
    pipe.close()  # end of file: replay_done, after the last bars are closed
    return written


async def rehearse_series(series: Sequence[data.BarSeries], *, strategy: str | None = None,
                          params: dict[str, Any] | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                          lockstep: bool = True, config_path: str | Path | None = None,
                          work_dir: Path | None = None, settle_timeout: float = 300.0) -> RehearsalResult:
    """Rehearses `series` (one interval, one series per symbol) through the real services."""
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="moon-rehearsal-")) if work_dir is None else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fifo = work / "replay.csv"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    cfg = rehearsal_config(moon_config.load(config_path), series, fifo, strategy=strategy, params=params,
                           overrides=overrides, lockstep=lockstep)
    cfg_path = work / "rehearsal.toml"
    cfg_path.write_text(dump_toml(cfg))
    system = System().start(port=free_port(), moon_dir=work / "moon", services=list(SERVICES), out=None,
                            env={"MOONBUS_CONFIG": str(cfg_path)}, write_env_file=False, supervise=False)
    try:
        env = system.env_for("operator")
        nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                                inbox_prefix=f"_INBOX.{env['NATS_USER']}")
        try:
            watch = Watch(series[0].interval)
            await watch.subscribe(nc)
            await _ready(system, nc, watch)
            pipe = await _open_pipe(fifo, START_TIMEOUT_S)
            started = time.perf_counter()
            written = await _feed(pipe, series, watch, lockstep)
            await watch.until(lambda: None if watch.done else "replay_done", settle_timeout)
            await watch.until(lambda: watch.settled(written), settle_timeout)
            elapsed = time.perf_counter() - started
            reports = [ExecutionReport.model_validate_json(m.data)
                       async for m in read_stream(nc, S.EXEC_STREAM, S.ALL_REPORTS)]
            reply = await nc.request(S.RISK_POSITIONS, encode(PositionsRequest()), timeout=10)
            positions = PositionsReply.model_validate_json(reply.data)
            return RehearsalResult(
                symbols=sorted(s.symbol for s in series), interval=series[0].interval,
                bars_in_file=sum(len(s) for s in series), published=list(watch.bars),
                signals=len(watch.signals), orders=watch.orders, reports=reports,
                positions=positions.positions, account=positions.account, elapsed_s=elapsed,
                config_path=cfg_path, lockstep=lockstep)
        finally:
            await nc.close()
    except BaseException as e:
        if isinstance(e, Exception):
            raise RehearsalError(f"{e}\n--- last lines of the services ---\n{system.tail(20)}") from e
        raise
    finally:
        system.stop()
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


async def _ready(system: System, nc: nats.NATS, watch: Watch) -> None:
    """Every service up: the agent subscribed, risk rebuilt (its account heartbeat), execution answering."""
    await system.await_output("trading-agent", r"trading agent ready", timeout=START_TIMEOUT_S)
    await watch.until(lambda: None if watch.accounts else "risk's first risk.account", START_TIMEOUT_S)
    await nc.request(S.EXEC_VERSION, b"{}", timeout=START_TIMEOUT_S)


def rehearse(paths: Sequence[str | Path], *, strategy: str | None = None, params: dict[str, Any] | None = None,
             overrides: dict[str, dict[str, Any]] | None = None, venue: str = "backtest",
             interval: str | None = None, **kw: Any) -> RehearsalResult:
    """Loads `paths` (data.load_many) and rehearses them; `kw`: see rehearse_series."""
    series = load_series(paths, venue=venue, interval=interval)
    return asyncio.run(rehearse_series(series, strategy=strategy, params=params, overrides=overrides, **kw))


# ------------------------------------------------------------------ the outcome


def net_positions(fills: Sequence[tuple[str, str, Decimal]]) -> dict[str, Decimal]:
    """(symbol, side, quantity) fills -> net quantity per symbol."""
    net: dict[str, Decimal] = {}
    for symbol, side, quantity in fills:
        net[symbol] = net.get(symbol, Decimal(0)) + (quantity if side == "BUY" else -quantity)
    return net


def summary(result: RehearsalResult) -> dict[str, Any]:
    """The rehearsal's outcome, JSON-able (money as decimal strings)."""
    return {
        "mode": "lockstep" if result.lockstep else "firehose",
        "symbols": result.symbols,
        "interval": result.interval,
        "bars_in_file": result.bars_in_file,
        "bars_published": len(result.published),
        "decisions": result.signals,
        "orders": result.orders,
        "fills": len(result.fills),
        "rejections": len(result.rejections),
        "rejection_reasons": sorted({(r.reason or "").split(":")[0] for r in result.rejections}),
        "fees": str(result.fees),
        "positions": {p.symbol: str(p.quantity) for p in result.positions if p.quantity},
        "cash": str(result.account.cash),
        "equity": str(result.account.equity),
        "elapsed_s": round(result.elapsed_s, 3),
        "bars_per_s": round(result.bars_per_s, 1),
    }


def engine_summary(series: Sequence[data.BarSeries], **kw: Any) -> dict[str, Any]:
    """The in-process engine (services/backtest/engine.py) on the same bars."""
    started = time.perf_counter()
    result = backtest_engine.run(list(series), **kw)
    elapsed = time.perf_counter() - started
    net = net_positions([(f.symbol, f.side, f.quantity) for f in result.fills])
    return {
        "mode": "engine",
        "bars_in_file": result.bars,
        "decisions": result.bars,
        "orders": len(result.fills) + len(result.rejections),
        "fills": len(result.fills),
        "rejections": len(result.rejections),
        "rejection_reasons": sorted({r.reason.split(":")[0] for r in result.rejections}),
        "fees": str(result.fees),
        "positions": {s: str(q) for s, q in net.items() if q},
        "equity": str(result.final_equity),
        "elapsed_s": round(elapsed, 3),
        "bars_per_s": round(result.bars / elapsed, 1) if elapsed > 0 else 0.0,
    }


def side_by_side(rehearsal: dict[str, Any], engine: dict[str, Any] | None = None) -> str:
    """The two outcomes as a text table, one column each."""
    keys = ["mode", "bars_in_file", "bars_published", "decisions", "orders", "fills", "rejections",
            "rejection_reasons", "fees", "positions", "cash", "equity", "elapsed_s", "bars_per_s"]
    columns = [("rehearsal", rehearsal)] + ([("engine", engine)] if engine else [])
    width = max(len(k) for k in keys)
    lines = [f"{'':<{width}}  " + "  ".join(f"{name:<28}" for name, _ in columns)]
    for k in keys:
        cells = [str(col.get(k, "-")) for _, col in columns]
        lines.append(f"{k:<{width}}  " + "  ".join(f"{c:<28}" for c in cells))
    return "\n".join(lines)


def _assignment(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected name=value")
    return name.strip(), moon_config._parse_env_value(raw.strip())


def compare(series: list[data.BarSeries], *, strategy: str | None = None, params: dict[str, Any] | None = None,
            overrides: dict[str, dict[str, Any]] | None = None, lockstep: bool = True,
            engine: bool = True) -> dict[str, dict[str, Any] | None]:
    """Rehearses `series` and runs the engine on them: {"rehearsal": summary, "engine": summary or None}."""
    result = asyncio.run(rehearse_series(check(series), strategy=strategy, params=params, overrides=overrides,
                                         lockstep=lockstep))
    theirs = engine_summary(series, strategy=strategy, params=params, overrides=overrides) if engine else None
    return {"rehearsal": summary(result), "engine": theirs}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.backtest.rehearsal",
                                     description="Rehearse historical bars through the real running services.")
    parser.add_argument("data", nargs="+", help="OHLCV / Binance kline CSV or replay files")
    parser.add_argument("--strategy", help="[trading_agent] strategy (default: moonbus.toml's)")
    parser.add_argument("--param", action="append", default=[], type=_assignment, metavar="KEY=VALUE",
                        help="a [trading_agent] key, e.g. ma_fast=10 (repeatable)")
    parser.add_argument("--set", action="append", default=[], type=_assignment, metavar="SECTION.KEY=VALUE",
                        help="any config key, e.g. risk.starting_cash='\"10000\"' (repeatable)")
    parser.add_argument("--symbol", help="the symbol of a file that does not name one")
    parser.add_argument("--firehose", action="store_true",
                        help="write every bar at once instead of in lockstep with the decisions")
    parser.add_argument("--no-engine", action="store_true", help="do not run the in-process engine alongside")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    args = parser.parse_args(argv)
    overrides: dict[str, dict[str, Any]] = {}
    for dotted, value in args.set:
        section, _, key = dotted.partition(".")
        if not key:
            parser.error(f"--set {dotted}: expected section.key")
        overrides.setdefault(section, {})[key] = value
    params = dict(args.param)
    try:
        outcome = compare(data.load_many(args.data, symbol=args.symbol), strategy=args.strategy, params=params,
                          overrides=overrides, lockstep=not args.firehose, engine=not args.no_engine)
    except (data.DataError, RehearsalError) as e:
        print(f"rehearsal failed: {e}", file=sys.stderr)
        return 1
    print(json.dumps(outcome, indent=2) if args.json else side_by_side(**outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
