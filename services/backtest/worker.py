"""The backtest worker (`python -m services.backtest`, NATS user `backtest`): serves
`backtest.api.run` in queue group `backtest`, so any number of workers on any machines
share a sweep, each request going to one of them.

A request names its datasets by object name and sha256 (services/backtest/datastore.py):
the worker fetches each once (direct gets, the bytes checked against the sha256), keeps
the file in its cache directory and the parsed bars in memory, cuts the optional window
(start_ts..end_ts), runs engine.run and answers report.summarize(result). A request that
does not parse, or a run that fails (missing or forged dataset, bad data, bad parameters,
the engine raising), is answered with the reason and reported on `errors.backtest`; the
worker carries on. One run at a time per worker (the engine is CPU-bound Python): the
next request waits in the subscription's queue, and `make run` starts one worker per core.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nats.micro.request import Request
from nats.micro.service import EndpointConfig
from pydantic import ValidationError

from services.common.bus import Bus, validation_summary
from services.contract import subjects as S
from services.contract.models import BacktestReply, BacktestRequest, Dataset, ErrorBody, ErrorReply, encode

from . import data
from .datastore import DatasetError, fetch

SERVICE = "backtest"
log = logging.getLogger(__name__)


class RunError(Exception):
    """A run that cannot be done: `code` goes into the reply's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def window(series: list[data.BarSeries], start_ts: int | None, end_ts: int | None) -> list[data.BarSeries]:
    """Each series cut to the bars with start_ts in [start_ts, end_ts) (None: no bound)."""
    cut = []
    for s in series:
        lo = bisect.bisect_left(s.start_ts, start_ts) if start_ts is not None else 0
        hi = bisect.bisect_left(s.start_ts, end_ts) if end_ts is not None else len(s)
        if hi > lo:
            cut.append(s.slice(lo, hi) if (lo, hi) != (0, len(s)) else s)
    if not cut:
        raise RunError("bad_params", f"no bars between start_ts {start_ts} and end_ts {end_ts}")
    return cut


def load_files(files: Sequence[tuple[Path, str | None, str | None]]) -> list[data.BarSeries]:
    """The bars of (path, symbol, interval) files; files of the same symbol and interval are
    loaded together (one series, merged in time)."""
    groups: dict[tuple[str | None, str | None], list[Path]] = {}
    for path, symbol, interval in files:
        groups.setdefault((symbol, interval), []).append(path)
    return [s for (symbol, interval), paths in groups.items()
            for s in data.load_many(paths, symbol=symbol, interval=interval)]


def run_backtest(series: list[data.BarSeries], request: BacktestRequest) -> dict[str, Any]:
    """engine.run over the request's window + report.summarize: what a worker answers for one
    request; called in-process it gives the same numbers (tests/test_backtest_sweep.py checks)."""
    from . import engine, report  # the engine loads the strategies and the Rust rules: only when running

    result = engine.run(window(series, request.start_ts, request.end_ts), strategy=request.strategy,
                        params=dict(request.params), overrides={k: dict(v) for k, v in request.overrides.items()})
    return report.summarize(result)


class Worker:
    """Serves backtest.api.run on `bus` (connected as user `backtest`)."""

    def __init__(self, bus: Bus, cache_dir: Path | None = None, keep_series: int = 16) -> None:
        self.bus = bus
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._own_cache = cache_dir is None
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="moonbus-backtest-"))
        self.keep_series = keep_series
        self._series: OrderedDict[tuple, list[data.BarSeries]] = OrderedDict()  # parsed, most recent last
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="backtest-run")
        self.runs = self.failures = 0

    async def start(self) -> None:
        micro = await self.bus.serve(f"backtest worker {self.name}: {S.BACKTEST_RUN}", {})
        await micro.add_endpoint(EndpointConfig(name="run", subject=S.BACKTEST_RUN,
                                                queue_group=S.BACKTEST_QUEUE, handler=self.handle))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    # ---- one request --------------------------------------------------------------

    async def handle(self, req: Request) -> None:
        started = time.perf_counter()
        try:
            request = BacktestRequest.model_validate_json(req.data)
        except ValidationError as e:
            reason = validation_summary(e)
            await self.bus.report_error(S.BACKTEST_RUN, f"bad_request: {reason}", req.data)
            body = ErrorReply.model_validate({"error": {"code": "bad_request", "message": reason}})
            await req.respond(encode(body))
            return
        error: ErrorBody | None = None
        summary = None
        try:
            series = await self.series(request.datasets)
            summary = await asyncio.get_running_loop().run_in_executor(self._pool, run_backtest, series, request)
        except (RunError, DatasetError) as e:
            error = ErrorBody(code=e.code, message=str(e))
        except data.DataError as e:
            error = ErrorBody(code="bad_data", message=str(e))
        except Exception as e:  # the engine's own refusal (bad parameter) or a bug: said, not fatal
            log.exception("run %s failed", request.run_id)
            code = "bad_params" if isinstance(e, (ValueError, ValidationError)) else "run_failed"
            error = ErrorBody(code=code, message=f"{type(e).__name__}: {e}"[:2000])
        elapsed = (time.perf_counter() - started) * 1000
        reply = BacktestReply(run_id=request.run_id, params=request.params, summary=summary, error=error,
                              worker=self.name, elapsed_ms=elapsed)
        self.runs += 1
        if error is not None:
            self.failures += 1
            await self.bus.report_error(S.BACKTEST_RUN, f"run {request.run_id}: {error.code}: {error.message}",
                                        req.data)
        else:
            log.info("run %s done in %.0f ms", request.run_id, elapsed)
        await req.respond(encode(reply))

    # ---- datasets ----------------------------------------------------------------------

    async def path(self, dataset: Dataset) -> Path:
        """The dataset's file in the cache (fetched and checked the first time)."""
        path = self.cache_dir / dataset.sha256 / Path(dataset.filename).name
        if not path.exists():
            payload = await fetch(self.bus.client, dataset.name, dataset.sha256)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".part")
            partial.write_bytes(payload)
            partial.replace(path)  # whole or absent, whatever else reads the cache
        return path

    async def series(self, datasets: list[Dataset]) -> list[data.BarSeries]:
        """The bars of every dataset, parsed once per worker (the last `keep_series` kept)."""
        key = tuple((d.sha256, d.filename, d.symbol, d.interval) for d in datasets)
        if key in self._series:
            self._series.move_to_end(key)
            return self._series[key]
        files = [(await self.path(d), d.symbol, d.interval) for d in datasets]
        try:
            series = await asyncio.get_running_loop().run_in_executor(self._pool, load_files, files)
        except data.DataError as e:  # name the file as the user knows it, not the cache path
            raise data.DataError(Path(e.path).name, e.row, e.reason) from None
        self._series[key] = series
        while len(self._series) > self.keep_series:
            self._series.popitem(last=False)
        return series


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None) -> None:
    """Serve until `stop` is set. `config` is unused: each run reads moonbus.toml (MOONBUS_CONFIG)
    with its request's overrides, as the engine does."""
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    worker = Worker(bus)
    try:
        await worker.start()
        log.info("backtest worker %s ready on %s (queue group %s)", worker.name, S.BACKTEST_RUN, S.BACKTEST_QUEUE)
        await stop.wait()
    finally:
        await bus.close()
        worker.close()
        log.info("backtest worker %s stopped after %d runs (%d failed)", worker.name, worker.runs, worker.failures)
