"""Parameter sweeps over the backtest workers (NATS `backtest.api.run`, queue group `backtest`).

    axes = [parse_axis("fast=5:50:5"), parse_axis("slow=20:200:20")]
    grid = make_grid(axes, base_params, config)          # cells, and the ones skipped (fast >= slow)
    refs = [await datastore.upload(nc, p) for p in paths] # once per content
    results = await fan_out(nc, [request(...) for cell in grid.cells], concurrency=8, timeout=120)
    write_sweep(results, axes, "sharpe", out_dir)         # sweep.csv / .json, heatmap.png / .html

Each run goes to one worker of the queue group; at most `concurrency` are in flight; a run
with no answer within `timeout` (its worker died, or the network lost it) is sent again once,
then reported failed. A run that answered an error is not retried: the same input fails the
same way. In-sample / out-of-sample (`train_test_windows`) and walk-forward
(`walk_forward_windows`) are windows of bar times sent with each request.
"""

from __future__ import annotations

import asyncio
import csv
import html
import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client
from pydantic import ValidationError

from services.common.bus import validation_summary
from services.common.config import _parse_env_value
from services.contract import subjects as S
from services.contract.models import BacktestReply, BacktestRequest, Dataset, ErrorReply, encode
from services.trading_agent.config import TradingConfig

from .datastore import DatasetRef

log = logging.getLogger(__name__)

# `fast` / `slow`: the moving-average crossover's own keys.
ALIASES = {"fast": "ma_fast", "slow": "ma_slow"}
# Metrics where lower is better; every other is ranked highest first.
LOWER_IS_BETTER = {"volatility_ann_pct", "fees", "rejections", "max_drawdown_duration_s", "avg_drawdown_duration_s"}
# The columns shown first in tables (the rest of the summary follows in the CSV / JSON).
MAIN_METRICS = ("return_pct", "sharpe", "sortino", "calmar", "max_drawdown_pct", "trades", "win_rate_pct",
                "profit_factor", "fees", "equity_final")
RANGE = re.compile(r"^(-?[0-9.]+):(-?[0-9.]+):([0-9.]+)$")


class SweepError(ValueError):
    """A sweep that cannot be made as asked (bad axis, no cell left, no worker)."""


@dataclass(frozen=True)
class Axis:
    key: str  # a [trading_agent] key
    values: tuple[Any, ...]


def _number(text: str) -> int | float:
    value = _parse_env_value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{text!r} is not a number")
    return value


def parse_axis(spec: str) -> Axis:
    """`fast=5:50:5` (start:stop:step, stop included), `ma_slow=20,50,100` (a list), or one
    value. `fast` / `slow` are ma_fast / ma_slow; any [trading_agent] key may be swept."""
    name, sep, values = spec.partition("=")
    key = ALIASES.get(name.strip(), name.strip())
    if not sep or not values:
        raise SweepError(f"sweep axis {spec!r}: write key=start:stop:step or key=a,b,c")
    if key not in TradingConfig.model_fields:
        raise SweepError(f"sweep axis {spec!r}: {key!r} is not a [trading_agent] key "
                         f"(keys: {', '.join(sorted(TradingConfig.model_fields))}; aliases fast, slow)")
    if m := RANGE.match(values.strip()):
        start, stop, step = (_number(g) for g in m.groups())
        if step <= 0 or stop < start:
            raise SweepError(f"sweep axis {spec!r}: need start <= stop and a step above 0")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > 10_000:
            raise SweepError(f"sweep axis {spec!r}: {count} values; at most 10000")
        whole = all(isinstance(v, int) for v in (start, stop, step))
        grid = [start + i * step for i in range(count)]
        return Axis(key, tuple(grid if whole else (round(v, 12) for v in grid)))
    return Axis(key, tuple(_parse_env_value(v.strip()) for v in values.split(",") if v.strip()))


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """`key=value` or `section.key=value` -> (path, value); the value as TOML reads it
    (10 -> int, 0.5 -> float, "100" or 100 for money, true), else the text itself."""
    name, sep, value = text.partition("=")
    path = [p.strip() for p in name.split(".")]
    if not sep or not all(path):
        raise SweepError(f"{text!r}: write key=value")
    return path, _parse_env_value(value.strip())


@dataclass
class Grid:
    cells: list[dict[str, Any]]  # params of each run (base params + the cell's values)
    skipped: list[tuple[dict[str, Any], str]]  # (cell, why) for cells the trading agent refuses


def make_grid(axes: Sequence[Axis], base: dict[str, Any], trading: dict[str, Any] | None = None) -> Grid:
    """Every combination of the axes' values over `base`; a cell the trading agent's own config
    refuses (ma_fast >= ma_slow, a value out of range), with moonbus.toml's [trading_agent]
    (`trading`) under it, is skipped with the reason."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise SweepError(f"a key is swept twice: {keys}")
    grid = Grid([], [])
    for values in itertools.product(*(a.values for a in axes)):
        cell = {**base, **dict(zip(keys, values))}
        try:
            TradingConfig.model_validate({**(trading or {}), **cell})
        except ValidationError as e:
            grid.skipped.append((cell, validation_summary(e).removeprefix("message: Value error, ")))
            continue
        grid.cells.append(cell)
    return grid


# ---- windows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Bars with start_ts in [start_ts, end_ts); None: unbounded."""

    start_ts: int | None
    end_ts: int | None
    bars: int


def bar_times(series: Sequence[Any]) -> list[int]:
    """The sorted union of the series' bar start times (ns)."""
    return sorted(set().union(*(s.start_ts for s in series)))


def train_test_windows(times: Sequence[int], train: float) -> tuple[Window, Window]:
    """The first `train` fraction of the bar times, and the rest."""
    if not 0 < train < 1:
        raise SweepError(f"--train {train}: a fraction between 0 and 1, e.g. 0.7")
    cut = int(len(times) * train)
    if cut < 2 or len(times) - cut < 2:
        raise SweepError(f"--train {train} of {len(times)} bars leaves a window of fewer than 2 bars")
    return Window(None, times[cut], cut), Window(times[cut], None, len(times) - cut)


def walk_forward_windows(times: Sequence[int], folds: int) -> list[tuple[Window, Window]]:
    """K rolling (train, test) pairs: the bars cut into K + 1 equal segments, fold i trains on
    segment i and tests on segment i + 1 (the last test runs to the end)."""
    if folds < 1:
        raise SweepError("--walk-forward K needs K >= 1")
    segment = len(times) // (folds + 1)
    if segment < 2:
        raise SweepError(f"--walk-forward {folds}: {len(times)} bars make segments of fewer than 2 bars")
    edges = [times[i * segment] for i in range(folds + 1)]
    pairs = []
    for i in range(folds):
        test_end = edges[i + 2] if i + 2 <= folds else None
        test_bars = (len(times) if test_end is None else (i + 2) * segment) - (i + 1) * segment
        pairs.append((Window(edges[i], edges[i + 1], segment), Window(edges[i + 1], test_end, test_bars)))
    return pairs


# ---- fan-out --------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run of a sweep: the reply's summary, or why it failed."""

    run_id: str
    params: dict[str, Any]
    summary: dict[str, Any] | None = None
    error: str | None = None  # "code: message"
    worker: str = ""
    elapsed_ms: float = 0.0
    attempts: int = 0

    def metric(self, name: str) -> float | None:
        value = (self.summary or {}).get(name)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def make_request(run_id: str, refs: Sequence[DatasetRef], params: dict[str, Any], *, strategy: str | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None, window: Window | None = None,
                 symbols: Sequence[str | None] = (), interval: str | None = None) -> BacktestRequest:
    """The request of one run (symbols: one per dataset, or one for all)."""
    per = list(symbols) if len(symbols) > 1 else [symbols[0] if symbols else None] * len(refs)
    datasets = [Dataset(name=r.name, sha256=r.sha256, filename=r.filename, symbol=s, interval=interval)
                for r, s in zip(refs, per, strict=True)]
    return BacktestRequest(run_id=run_id, datasets=datasets, strategy=strategy, params=params,
                           overrides=overrides or {}, start_ts=window.start_ts if window else None,
                           end_ts=window.end_ts if window else None)


async def count_workers(nc: Client, wait: float = 0.5) -> int:
    """How many backtest workers serve backtest.api.run: the ones whose $SRV.INFO.backtest,
    answered within `wait` seconds, lists the endpoint (a worker answers $SRV.PING a moment
    before its endpoint is subscribed)."""
    inbox = nc.new_inbox()
    seen: set[str] = set()

    async def got(msg: Any) -> None:
        try:
            info = json.loads(msg.data)
        except ValueError:
            return
        if any(e.get("subject") == S.BACKTEST_RUN for e in info.get("endpoints") or []):
            seen.add(info.get("id", ""))

    sub = await nc.subscribe(inbox, cb=got)
    try:
        await nc.publish(f"$SRV.INFO.{S.BACKTEST_QUEUE}", b"", reply=inbox)
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return len(seen)


def _decode(run_id: str, params: dict[str, Any], data: bytes) -> RunResult:
    try:
        reply = BacktestReply.model_validate_json(data)
    except ValidationError:
        try:
            err = ErrorReply.model_validate_json(data).error
            return RunResult(run_id, params, error=f"{err.code}: {err.message}")
        except ValidationError as e:
            return RunResult(run_id, params, error=f"bad_reply: {validation_summary(e)}")
    error = f"{reply.error.code}: {reply.error.message}" if reply.error else None
    return RunResult(run_id, params, reply.summary, error, reply.worker, reply.elapsed_ms)


async def fan_out(nc: Client, requests: Sequence[BacktestRequest], *, concurrency: int, timeout: float,
                  retries: int = 1, on_result: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Send every request to the queue group, at most `concurrency` in flight; a run lost
    (no answer within `timeout`, or no worker) is sent again up to `retries` times. The
    results come back in the order of `requests`."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(request: BacktestRequest) -> RunResult:
        params = dict(request.params)
        lost = ""
        for attempt in range(1, retries + 2):
            async with gate:
                try:
                    msg = await nc.request(S.BACKTEST_RUN, encode(request), timeout=timeout)
                except nats.errors.NoRespondersError:
                    lost = "no backtest worker answered (no responders)"
                except nats.errors.TimeoutError:
                    lost = f"no answer within {timeout:g}s"
                else:
                    result = _decode(request.run_id, params, msg.data)
                    result.attempts = attempt
                    break
            if lost.startswith("no backtest"):
                await asyncio.sleep(min(2.0, timeout / 4))  # a worker may be (re)starting
            log.warning("run %s lost (%s), attempt %d of %d", request.run_id, lost, attempt, retries + 1)
        else:
            result = RunResult(request.run_id, params, error=f"lost: {lost} ({retries + 1} attempts)",
                               attempts=retries + 1)
        if on_result:
            on_result(result)
        return result

    return list(await asyncio.gather(*(one(r) for r in requests)))


# ---- results -------------------------------------------------------------------------------


def rank(results: Sequence[RunResult], metric: str) -> list[RunResult]:
    """Best first by `metric` (highest, or lowest for LOWER_IS_BETTER); failed and
    uncomputable (null) runs last, in their order."""
    sign = 1 if metric in LOWER_IS_BETTER else -1
    scored = [r for r in results if r.metric(metric) is not None]
    rest = [r for r in results if r.metric(metric) is None]
    return sorted(scored, key=lambda r: sign * r.metric(metric)) + rest  # type: ignore[operator]


def rows(results: Sequence[RunResult], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per run: the swept params, every summary field, the worker, the error."""
    fields = list(dict.fromkeys(k for r in results for k in (r.summary or {})))
    out = []
    for r in results:
        row = {"run_id": r.run_id, **{k: r.params.get(k) for k in keys}}
        row.update({f: (r.summary or {}).get(f) for f in fields})
        row.update({"worker": r.worker, "elapsed_ms": round(r.elapsed_ms, 1), "attempts": r.attempts,
                    "error": r.error or ""})
        out.append(row)
    return out


def write_table(results: Sequence[RunResult], keys: Sequence[str], out: Path, stem: str) -> dict[str, Path]:
    """<stem>.csv and <stem>.json (the same rows), in ranking order."""
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results, keys)
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["run_id"])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    paths["json"].write_text(json.dumps(table, indent=1, default=str) + "\n")
    return paths


def heat(results: Sequence[RunResult], x: Axis, y: Axis | None, metric: str) -> list[list[float | None]]:
    """The metric per (y value, x value): the best over any other swept key; None where
    no run (skipped, failed, or the metric uncomputable)."""
    best: dict[tuple[Any, Any], float] = {}
    pick = min if metric in LOWER_IS_BETTER else max
    for r in results:
        value = r.metric(metric)
        if value is None:
            continue
        cell = (r.params.get(x.key), r.params.get(y.key) if y else None)
        best[cell] = pick(best[cell], value) if cell in best else value
    ys = y.values if y else (None,)
    return [[best.get((xv, yv)) for xv in x.values] for yv in ys]


def _colour(value: float | None, low: float, high: float, lower_better: bool) -> str:
    if value is None:
        return "#eeeeee"
    t = 0.5 if high == low else (value - low) / (high - low)
    t = 1 - t if lower_better else t
    red, green = int(230 - 130 * t), int(110 + 120 * t)  # red (worst) .. green (best)
    return f"#{red:02x}{green:02x}78"


def write_heatmap(results: Sequence[RunResult], axes: Sequence[Axis], metric: str, out: Path,
                  title: str) -> dict[str, Path]:
    """heatmap.html (a table coloured by the metric) and heatmap.png (matplotlib, Agg) over
    the first two swept keys (one key: a single row)."""
    x, y = axes[0], axes[1] if len(axes) > 1 else None
    matrix = heat(results, x, y, metric)
    found = [v for row in matrix for v in row if v is not None]
    low, high = (min(found), max(found)) if found else (0.0, 0.0)
    lower = metric in LOWER_IS_BETTER
    head = "".join(f"<th>{html.escape(str(v))}</th>" for v in x.values)
    body = []
    for yv, row in zip(y.values if y else ("",), matrix):
        cells = "".join(f'<td style="background:{_colour(v, low, high, lower)}">'
                        f'{"" if v is None else f"{v:.3g}"}</td>' for v in row)
        body.append(f"<tr><th>{html.escape(str(yv))}</th>{cells}</tr>")
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:13px}</style>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(metric)} by {html.escape(x.key)} (columns)"
            f"{' and ' + html.escape(y.key) + ' (rows)' if y else ''}; grey: no run "
            "(skipped, failed or not computable)</p>"
            f"<table><tr><th>{html.escape(y.key if y else '')} \\ {html.escape(x.key)}</th>{head}</tr>"
            + "".join(body) + "</table>\n")
    paths = {"html": out / "heatmap.html", "png": out / "heatmap.png"}
    out.mkdir(parents=True, exist_ok=True)
    paths["html"].write_text(page)
    _heatmap_png(matrix, x, y, metric, title, paths["png"])
    return paths


def _heatmap_png(matrix: list[list[float | None]], x: Axis, y: Axis | None, metric: str, title: str,
                 path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    values = [[math.nan if v is None else v for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(x.values) + 2), max(2.5, 0.45 * len(values) + 1.5)))
    try:
        cmap = "RdYlGn_r" if metric in LOWER_IS_BETTER else "RdYlGn"
        image = ax.imshow(values, cmap=cmap, aspect="auto", origin="lower")
        ax.set_xticks(range(len(x.values)), [str(v) for v in x.values], rotation=45)
        ax.set_yticks(range(len(values)), [str(v) for v in (y.values if y else ("",))])
        ax.set_xlabel(x.key)
        ax.set_ylabel(y.key if y else "")
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, label=metric)
        fig.tight_layout()
        fig.savefig(path, dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)


@dataclass
class SweepOutcome:
    """What a sweep wrote and found."""

    results: list[RunResult]
    ranked: list[RunResult]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def best(self) -> RunResult | None:
        return next((r for r in self.ranked if r.summary is not None), None)


def write_sweep(results: Sequence[RunResult], axes: Sequence[Axis], metric: str, out: Path,
                title: str, stem: str = "sweep") -> SweepOutcome:
    """The ranked table (<stem>.csv / .json) and the heatmap (heatmap.html / .png)."""
    ranked = rank(results, metric)
    files = {f"table_{k}": p for k, p in write_table(ranked, [a.key for a in axes], out, stem).items()}
    if axes:
        files |= {f"heatmap_{k}": p for k, p in write_heatmap(results, axes, metric, out, title).items()}
    return SweepOutcome(list(results), ranked, files)
