"""A backtest sweep over NATS with 1 and then 2 backtest workers: wall time and runs/s.

Each round starts a private nats-server and `python -m services.backtest --workers N` (the
form `make run` uses, N = cores there), uploads data/backtest/BTC-USD.csv (1500 1 h bars) to
the object store and fans the same grid of the moving-average crossover out (fast 2..40 step
2 x slow 10..200 step 10, the cells with fast >= slow skipped), 2 runs in flight per worker,
as `moon backtest --sweep` does. The engine's own time per run (the replies' elapsed_ms) is
the baseline: runs/s x elapsed = how busy the workers were kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import time
from pathlib import Path

import nats

from bench.__main__ import Context
from bench._system import running
from services.backtest import datastore, sweep
from services.common.bus import inbox_prefix
from services.devstack.launcher import ServiceSpec

DATA = Path(__file__).resolve().parents[1] / "data" / "backtest" / "BTC-USD.csv"


def grid(quick: bool) -> list[dict]:
    axes = [sweep.parse_axis("fast=5:15:5" if quick else "fast=2:40:2"),
            sweep.parse_axis("slow=20,40" if quick else "slow=10:200:10")]
    return sweep.make_grid(axes, {}, {"strategy": "ma_crossover"}).cells


def cpu_seconds(parent: int) -> float:
    """User + system CPU time of `parent`'s child processes (the workers), from /proc."""
    pids = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split() or [str(parent)]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


async def one_round(env: dict[str, str], workers: int, cells: list[dict], tag: str, parent: int) -> dict:
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=inbox_prefix(env["NATS_USER"]))
    try:
        deadline = time.monotonic() + 60
        while await sweep.count_workers(nc, 0.3) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} backtest workers did not come up")
        ref = await datastore.upload(nc, DATA)
        make = lambda i, cell: sweep.make_request(f"{tag}-{i}", [ref], cell, strategy="ma_crossover")  # noqa: E731
        # Warm-up (not timed): each worker fetches and parses the data once.
        await sweep.fan_out(nc, [make(f"w{i}", cells[0]) for i in range(2 * workers)], concurrency=2 * workers,
                            timeout=300)
        started, cpu = time.perf_counter(), cpu_seconds(parent)
        results = await sweep.fan_out(nc, [make(i, c) for i, c in enumerate(cells)], concurrency=2 * workers,
                                      timeout=300)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(parent) - cpu
    finally:
        await nc.close()
    ok = [r for r in results if r.error is None]
    if len(ok) < len(results):  # a failed run is fast and says nothing about throughput
        first = next(r for r in results if r.error)
        raise RuntimeError(f"{len(results) - len(ok)} of {len(results)} runs failed, e.g. {first.params}: {first.error}")
    busy = sum(r.elapsed_ms for r in ok) / 1000
    return {
        "workers": workers,
        "runs": len(results),
        "wall_s": round(wall, 2),
        "runs_per_s": round(len(results) / wall, 3),
        "run_elapsed_ms_median": round(statistics.median(r.elapsed_ms for r in ok), 1) if ok else None,
        # engine time / (wall x workers): 1.0 = every worker busy all the time
        "worker_utilisation": round(busy / (wall * workers), 3),
        # CPU the workers got / (wall x workers): below the utilisation = waiting for a core
        "worker_cpu_s": round(cpu, 2),
        "worker_cpu_share": round(cpu / (wall * workers), 3),
        "worker_cores_used": round(cpu / wall, 2),  # what the machine gave the sweep
        "worker_cpu_ms_per_run": round(1000 * cpu / len(results), 1),
        "runs_per_worker": {w: sum(r.worker == w for r in ok) for w in sorted({r.worker for r in ok})},
    }


def run(ctx: Context) -> dict:
    cells = grid(ctx.quick)
    rounds = []
    # 1, 2, 1, 2 workers: the machine is shared, its load drifts; each count's best round counts.
    for workers in (1, 2) if ctx.quick else (1, 2, 1, 2):
        spec = ServiceSpec("backtest", ("-m", "services.backtest", "--workers", str(workers)), "python")
        with running([spec], {}) as system:
            load = os.getloadavg()[0]
            parent = system.children["backtest"].process.pid
            figures = asyncio.run(one_round(system.env_for("operator"), workers, cells, f"bench{len(rounds)}", parent))
            rounds.append({**figures, "loadavg_1m_before": round(load, 2)})
    best = {n: max((r for r in rounds if r["workers"] == n), key=lambda r: r["runs_per_s"]) for n in (1, 2)}
    return {
        "grid": f"{len(cells)} runs: ma_crossover, fast x slow, on {DATA.name} (1500 bars of 1h)",
        "rounds": rounds,
        "best_runs_per_s": {n: r["runs_per_s"] for n, r in best.items()},
        "best_wall_s": {n: r["wall_s"] for n, r in best.items()},
        "speedup_2_vs_1": round(best[2]["runs_per_s"] / best[1]["runs_per_s"], 2),
        "note": f"{os.cpu_count()} cores shared with the rest of the machine (loadavg_1m_before each round): "
                "2 workers can at best double 1, and only with 2 idle cores; more machines add capacity "
                "the same way (one queue group)",
    }
