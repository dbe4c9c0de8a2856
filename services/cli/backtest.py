"""`moon backtest DATA...`: one backtest in this process, or a sweep over the backtest workers.

    moon backtest data/backtest/BTC-USD.csv --strategy ma_crossover --param ma_fast=10
    moon backtest bars.csv --sweep fast=5:50:5 slow=20:200:20 --metric sharpe --train 0.7

One run: engine.run + report.write into .moon/backtests/<run-id>/ (the directory the gateway
serves, [gateway] backtests_dir), the summary printed. A sweep (`--sweep`, one axis after it or
several: `key=start:stop:step` or `key=a,b,c`; `fast` / `slow` are ma_fast / ma_slow) uploads
the files to the object store `backtest-data`, fans the grid out over NATS to the workers of
queue group `backtest` (`make run` starts one per core) and writes the ranked table (sweep.csv /
.json) and the heatmap (heatmap.png / .html). `--train F`: the sweep on the first F of the bars,
the best params then run on the rest; `--walk-forward K`: K rolling train/test windows.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.backtest import data, presets, sweep
from services.backtest.datastore import DatasetRef, upload
from services.backtest.sweep import Axis, RunResult, SweepError, Window
from services.backtest.worker import load_files
from services.common.config import REPO_ROOT, load
from services.contract.models import BacktestRequest

from .connection import CliError, Session
from .render import printable

# Shown in the tables, when the summary has them (every field is in the JSON and CSV files).
SHOWN = ("return_pct", "buy_hold_return_pct", "return_ann_pct", "sharpe", "sortino", "calmar", "max_drawdown_pct",
         "max_drawdown_duration_s", "exposure_time_pct", "trades", "win_rate_pct", "profit_factor",
         "avg_trade_pct", "fees", "equity_final", "bars")


@dataclass
class Plan:
    """What was asked, parsed: the files, their symbols, the run's settings, the sweep."""

    paths: list[Path]
    symbols: list[str | None]
    interval: str | None
    strategy: str | None
    params: dict[str, Any]
    overrides: dict[str, dict[str, Any]]
    axes: list[Axis]
    out: Path

    def files(self) -> list[tuple[Path, str | None, str | None]]:
        return list(zip(self.paths, self.symbols, [self.interval] * len(self.paths), strict=True))


def new_id(kind: str) -> str:
    """`<kind>-20261205-093012-1a2b`: sortable, unique enough, a safe token."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def default_out() -> Path:
    """[gateway] backtests_dir (default .moon/backtests, under the checkout): the gateway serves it."""
    return REPO_ROOT / str(load().get("gateway", {}).get("backtests_dir", ".moon/backtests"))


def make_plan(args: Sequence[str], sweeps: Sequence[str], params: Sequence[str], sets: Sequence[str],
              symbols: Sequence[str], interval: str | None, strategy: str | None, out: Path | None,
              preset: str | None = None) -> Plan:
    """DATA arguments that are `key=values` (and not files) are more sweep axes: click gives
    `--sweep fast=5:50:5 slow=20:200:20` the first one, the rest land among the files.
    A preset (services/backtest/presets.py) comes first; --param and --set override it."""
    paths, extra = [], []
    for arg in args:
        (extra if "=" in arg and not Path(arg).exists() else paths).append(arg)
    if extra and not sweeps:
        raise SweepError(f"{extra[0]!r} is not a file (a sweep axis? write --sweep {extra[0]})")
    if not paths:
        raise SweepError("no data file given")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SweepError(f"no such file: {missing[0]}")
    if len(symbols) not in (0, 1, len(paths)):
        raise SweepError(f"--symbol: give one for all files or one per file ({len(paths)})")
    per_file = list(symbols) if len(symbols) > 1 else [symbols[0] if symbols else None] * len(paths)
    base: dict[str, Any] = {}
    overrides: dict[str, dict[str, Any]] = {}
    if preset is not None:
        name, _, commission = preset.partition(":")  # backtesting.py:0.002 = its commission=0.002
        if name not in presets.PRESETS:
            raise SweepError(f"--preset {preset!r}: one of {', '.join(presets.PRESETS)} (NAME or NAME:COMMISSION)")
        try:
            chosen = presets.PRESETS[name](float(commission or 0))
        except ValueError as e:
            raise SweepError(f"--preset {preset!r}: {e}") from None
        base |= chosen["params"]
        overrides = {section: dict(keys) for section, keys in chosen["overrides"].items()}
    for text in params:
        path, value = sweep.parse_assignment(text)
        base[sweep.ALIASES.get(path[-1], path[-1])] = value
    for text in sets:
        path, value = sweep.parse_assignment(text)
        if len(path) != 2:
            raise SweepError(f"--set {text!r}: write section.key=value")
        overrides.setdefault(path[0], {})[path[1]] = value
    return Plan([Path(p) for p in paths], per_file, interval, strategy, base, overrides,
                [sweep.parse_axis(s) for s in [*sweeps, *extra]], out or default_out())


# ---- output ---------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return str(value)


def summary_table(title: str, columns: dict[str, dict[str, Any] | None]) -> Table:
    """Metrics as rows, one column per run (e.g. in-sample and out-of-sample)."""
    table = Table("metric", *columns, title=title)
    for name in SHOWN:
        if any(name in (s or {}) for s in columns.values()):
            table.add_row(name, *(_cell((s or {}).get(name)) for s in columns.values()))
    return table


def ranking_table(title: str, ranked: Sequence[RunResult], axes: Sequence[Axis], metric: str, top: int = 10) -> Table:
    shown = [m for m in dict.fromkeys((metric, "return_pct", "sharpe", "max_drawdown_pct", "trades", "fees"))]
    table = Table("#", *(a.key for a in axes), *shown, "worker", title=title)
    for i, r in enumerate(ranked[:top], 1):
        if r.summary is None:
            break
        table.add_row(str(i), *(_cell(r.params.get(a.key)) for a in axes),
                      *(_cell(r.summary.get(m)) for m in shown), r.worker)
    return table


def _paths(console: Console, files: dict[str, Path]) -> None:
    for name, path in files.items():
        console.print(f"  {name:<14} {path}")


# ---- one run in this process -------------------------------------------------------------------


def run_local(plan: Plan, console: Console, as_json: bool, trade_on_close: bool = False,
              llm_record: bool = False, yes: bool = False) -> dict[str, Any]:
    from services.backtest import engine, report

    series = load_files(plan.files())
    if llm_record:
        confirm_recording(series, plan, console, yes)
    result = engine.run(series, strategy=plan.strategy, params=plan.params, overrides=plan.overrides,
                        trade_on_close=trade_on_close, llm_mode="record" if llm_record else "replay")
    run_id = new_id(result.strategy)
    files = report.write(result, plan.out / run_id)
    summary = report.summarize(result)
    if as_json:
        console.print_json(json.dumps({"run_id": run_id, "summary": summary,
                                       "files": {k: str(v) for k, v in files.items()}}, default=str))
    else:
        console.print(summary_table(f"{run_id}: {result.strategy} on {', '.join(result.symbols)} "
                                    f"({result.interval}, {result.bars} bars)", {"result": summary}))
        _paths(console, files)
    return summary


def confirm_recording(series: list[data.BarSeries], plan: Plan, console: Console, yes: bool) -> None:
    """A recording run asks the model at every bar: say what it costs first, and go on only
    when the user says so (--yes, or at the prompt)."""
    from services.backtest import llm
    from services.trading_agent.config import TradingConfig

    table = load()
    for section_name, keys in plan.overrides.items():
        table[section_name] = table.get(section_name, {}) | keys
    trading = table.get("trading_agent", {}) | plan.params | ({"strategy": plan.strategy} if plan.strategy else {})
    cfg = TradingConfig(**trading)
    if cfg.strategy != "llm":
        raise SweepError("--llm-record records an LLM strategy's answers: add --strategy llm")
    cost = llm.estimate(series, cfg, llm.llm_settings(table, "record"))
    if cost is None:
        raise SweepError("--llm-record: [llm] provider is offline, there is no model to record")
    console.print(cost.text())
    if not yes and not typer.confirm("Record (this calls the model and costs money)?", default=False):
        raise SweepError("not recorded")


# ---- sweeps over NATS -------------------------------------------------------------------------


@dataclass
class SweepSettings:
    metric: str
    train: float | None
    walk_forward: int | None
    concurrency: int | None
    run_timeout: float
    as_json: bool


class Sweeper:
    """One sweep through a connected session: uploads, fans out, writes, prints."""

    def __init__(self, session: Session, plan: Plan, settings: SweepSettings, console: Console) -> None:
        self.session, self.plan, self.settings, self.console = session, plan, settings, console
        self.sweep_id = new_id("sweep")
        self.out = plan.out / self.sweep_id
        self.refs: list[DatasetRef] = []
        self.concurrency = 1
        self.sent = 0

    def say(self, text: str) -> None:
        """Progress and notes, in the terminal only (--json prints the result alone)."""
        if not self.settings.as_json:
            self.console.print(text)

    def request(self, params: dict[str, Any], window: Window | None) -> BacktestRequest:
        self.sent += 1
        return sweep.make_request(f"{self.sweep_id}-{self.sent:05d}", self.refs, params, strategy=self.plan.strategy,
                                  overrides=self.plan.overrides, window=window, symbols=self.plan.symbols,
                                  interval=self.plan.interval)

    async def fan_out(self, requests: list[BacktestRequest], what: str) -> list[RunResult]:
        done = 0
        started = time.monotonic()

        def progress(result: RunResult) -> None:
            nonlocal done
            done += 1
            if done == len(requests) or done % max(1, len(requests) // 10) == 0:
                self.say(f"  {what}: {done}/{len(requests)} runs ({time.monotonic() - started:.1f} s)")

        return await sweep.fan_out(self.session.nc, requests, concurrency=self.concurrency,
                                   timeout=self.settings.run_timeout, on_result=progress)

    async def run(self) -> dict[str, Any]:
        plan, settings = self.plan, self.settings
        times = sweep.bar_times(load_files(plan.files()))  # the data checked here, before any upload
        trading = {**load().get("trading_agent", {}), **plan.overrides.get("trading_agent", {})}
        grid = sweep.make_grid(plan.axes, plan.params, trading)
        for cell, why in grid.skipped[:5]:
            self.say(f"  skipped {', '.join(f'{a.key}={cell[a.key]}' for a in plan.axes)}: {why}")
        if grid.skipped:
            self.say(f"{len(grid.skipped)} of {len(grid.cells) + len(grid.skipped)} cells skipped "
                     "(the trading agent's config refuses them)")
        if not grid.cells:
            raise SweepError("every cell of the grid was skipped: nothing to run")
        workers = await sweep.count_workers(self.session.nc)
        if workers == 0:
            raise CliError(f"no backtest worker answers on {self.session.target.url} (`make run` starts one per "
                           "core; or `python -m services.backtest`)")
        # Two in flight per worker: each has the next run queued when it finishes one.
        self.concurrency = settings.concurrency or 2 * workers
        self.refs = [await upload(self.session.nc, p) for p in plan.paths]
        self.say(f"{self.sweep_id}: {len(grid.cells)} runs on {workers} worker(s), "
                 f"{self.concurrency} in flight, {len(times)} bars")
        started = time.monotonic()
        if settings.walk_forward:
            report = await self.walk_forward(grid.cells, sweep.walk_forward_windows(times, settings.walk_forward))
        elif settings.train:
            report = await self.train_test(grid.cells, *sweep.train_test_windows(times, settings.train))
        else:
            report = await self.plain(grid.cells)
        report |= {"sweep_id": self.sweep_id, "workers": workers, "skipped": len(grid.skipped),
                   "wall_s": round(time.monotonic() - started, 3)}
        (self.out / "sweep_meta.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        if settings.as_json:
            self.console.print_json(json.dumps(report, default=str))
        self.say(f"{self.sent} runs in {report['wall_s']:.1f} s; files in {self.out}")
        return report

    def _in_sample(self, results: list[RunResult], out: Path, title: str) -> sweep.SweepOutcome:
        outcome = sweep.write_sweep(results, self.plan.axes, self.settings.metric, out, title)
        failed = [r for r in results if r.error]
        if not self.settings.as_json:
            self.console.print(ranking_table(title, outcome.ranked, self.plan.axes, self.settings.metric))
            for r in failed[:5]:
                # A worker's error text: not markup, no control characters.
                self.console.print(Text(printable(f"  failed {r.run_id} {r.params}: {r.error}"), style="red"))
            _paths(self.console, outcome.files)
        return outcome

    async def plain(self, cells: list[dict[str, Any]]) -> dict[str, Any]:
        results = await self.fan_out([self.request(c, None) for c in cells], "sweep")
        outcome = self._in_sample(results, self.out, f"{self.sweep_id} by {self.settings.metric}")
        return {"mode": "sweep", "best": outcome.best.__dict__ if outcome.best else None,
                "failed": sum(r.error is not None for r in results)}

    async def _out_of_sample(self, best: RunResult | None, test: Window) -> RunResult | None:
        if best is None:
            return None
        [oos] = await self.fan_out([self.request(best.params, test)], "out-of-sample")
        return oos

    async def train_test(self, cells: list[dict[str, Any]], train: Window, test: Window) -> dict[str, Any]:
        results = await self.fan_out([self.request(c, train) for c in cells], f"in-sample ({train.bars} bars)")
        outcome = self._in_sample(results, self.out, f"{self.sweep_id} in-sample by {self.settings.metric}")
        oos = await self._out_of_sample(outcome.best, test)
        report = {"mode": "train_test", "train": train.__dict__, "test": test.__dict__,
                  "best_params": outcome.best.params if outcome.best else None,
                  "in_sample": outcome.best.summary if outcome.best else None,
                  "out_of_sample": oos.summary if oos else None, "out_of_sample_error": oos.error if oos else None}
        (self.out / "out_of_sample.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        if not self.settings.as_json and outcome.best:
            self.console.print(summary_table(f"best {outcome.best.params}",
                                             {"in-sample": report["in_sample"], "out-of-sample": report["out_of_sample"]}))
        return report

    async def walk_forward(self, cells: list[dict[str, Any]], folds: list[tuple[Window, Window]]) -> dict[str, Any]:
        # Every fold's in-sample runs at once (more in the queue, the workers never idle).
        requests = [[self.request(c, train) for c in cells] for train, _ in folds]
        flat = await self.fan_out([r for fold in requests for r in fold], "in-sample, all folds")
        rows = []
        for i, (train, test) in enumerate(folds):
            results = flat[i * len(cells):(i + 1) * len(cells)]
            outcome = self._in_sample(results, self.out / f"fold-{i + 1}", f"fold {i + 1} in-sample")
            oos = await self._out_of_sample(outcome.best, test)
            rows.append({"fold": i + 1, "train": train.__dict__, "test": test.__dict__,
                         "best_params": outcome.best.params if outcome.best else None,
                         "in_sample": outcome.best.summary if outcome.best else None,
                         "out_of_sample": oos.summary if oos else None})
        (self.out / "walk_forward.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
        metric = self.settings.metric
        table = Table("fold", "best params", f"in-sample {metric}", f"out-of-sample {metric}", "oos return_pct",
                      title=f"{self.sweep_id} walk-forward, {len(folds)} folds")
        for row in rows:
            table.add_row(str(row["fold"]), json.dumps(row["best_params"]),
                          _cell((row["in_sample"] or {}).get(metric)), _cell((row["out_of_sample"] or {}).get(metric)),
                          _cell((row["out_of_sample"] or {}).get("return_pct")))
        if not self.settings.as_json:
            self.console.print(table)
        return {"mode": "walk_forward", "folds": rows}


# ---- the command --------------------------------------------------------------------------------


def backtest_command(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(metavar="DATA...", help="Bar files (OHLCV CSV, Binance klines, "
                                              "replay files); with --sweep, more key=values axes.")],
    strategy: Annotated[str | None, typer.Option("--strategy", help="momentum, mean_reversion, ma_crossover, llm "
                                                 "or a plugin's name (trading_agent.strategies_dir, entry points) "
                                                 "(default: moonbus.toml trading_agent.strategy).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="A trading_agent key: ma_fast=10 "
                                                    "(fast/slow: ma_fast/ma_slow). Repeatable.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any moonbus.toml key: risk.starting_cash=10000. "
                                                   "Repeatable.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where the run's directory goes "
                                             "(default .moon/backtests, served by the gateway).")] = None,
    symbol: Annotated[list[str] | None, typer.Option("--symbol", help="The bars' symbol: one for all files or one "
                                                     "per file (default: from the file).")] = None,
    interval: Annotated[str | None, typer.Option("--interval", help="Bar length (default: from the bars).")] = None,
    sweep_axes: Annotated[list[str] | None, typer.Option("--sweep", help="Sweep axes: fast=5:50:5 slow=20:200:20 "
                                                         "(start:stop:step, or a,b,c).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Rank the sweep by this summary metric.")] = "sharpe",
    train: Annotated[float | None, typer.Option("--train", help="Sweep on this first fraction of the bars, run "
                                                "the best on the rest.")] = None,
    walk_forward: Annotated[int | None, typer.Option("--walk-forward", help="K rolling train/test windows.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Runs in flight (default: "
                                                    "2 per worker).")] = None,
    run_timeout: Annotated[float, typer.Option("--run-timeout", min=1, help="Seconds before a run is sent "
                                               "again (once), then reported failed.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    rehearse: Annotated[bool, typer.Option("--rehearse", help="Replay the bars through the real services too "
                                           "(market-data, risk, execution, trading agent on a private "
                                           "nats-server) and print both outcomes side by side.")] = False,
    preset: Annotated[str | None, typer.Option("--preset", help="Named settings first: backtesting.py[:COMMISSION] "
                                               "= its fill model, to compare with it.")] = None,
    trade_on_close: Annotated[bool, typer.Option("--trade-on-close", help="Fill at the deciding bar's close, "
                                                 "not the next open.")] = False,
    llm_record: Annotated[bool, typer.Option("--llm-record", help="LLM strategy: ask the model and record its "
                                             "answers (costs money: the estimate comes first). Default: replay "
                                             "the recorded answers, free.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before recording.")] = False,
) -> None:
    """Backtest the live strategy over historical bars, here or as a sweep over the backtest workers."""
    from .main import execute, fail

    console = Console(highlight=False)
    try:
        plan = make_plan(args, sweep_axes or [], param or [], set_ or [], symbol or [], interval, strategy, out,
                         preset)
        if plan.axes and (trade_on_close or llm_record):
            raise SweepError("--trade-on-close and --llm-record are for a single run, not a sweep")
        if not plan.axes:
            if train or walk_forward:
                raise SweepError("--train and --walk-forward split a sweep: add --sweep")
            if rehearse:  # services/backtest/rehearsal.py
                from services.backtest import rehearsal
                try:
                    outcome = rehearsal.compare(load_files(plan.files()), strategy=plan.strategy,
                                                params=plan.params, overrides=plan.overrides)
                except rehearsal.RehearsalError as e:
                    raise fail(f"rehearsal: {e}") from None
                if as_json:
                    console.print_json(json.dumps(outcome))
                else:
                    console.print(rehearsal.side_by_side(**outcome), markup=False)
                return
            run_local(plan, console, as_json, trade_on_close, llm_record, yes)
            return
        settings = SweepSettings(metric, train, walk_forward, concurrency, run_timeout, as_json)
    except (SweepError, data.DataError, ValueError) as e:
        raise fail(str(e)) from None

    async def work(session: Session) -> None:
        try:
            await Sweeper(session, plan, settings, console).run()
        except (SweepError, data.DataError) as e:
            raise CliError(str(e)) from None

    execute(ctx, work)
