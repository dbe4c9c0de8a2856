"""The soak (`make soak`; a short version is tests/test_soak.py): the whole system as
`make run` starts it (nats-server, the release binaries, every agent, the gateway, the
launcher's supervisor) for 10 minutes with the simulated feed at 10,000 ticks/s (100
symbols, each ticking every 10 ms), the agents deciding on every 1 s bar of every symbol.

Every `SAMPLE_S` seconds each process's RSS (VmRSS of /proc/<pid>/status, nats-server
too); after the warm-up, the least-squares slope of each in MB/min, judged flat when it is
within `flat_mb_per_min` (the larger of 0.5 MB/min and 0.5 % of its mean RSS a minute:
a leak of 1 MB a minute is 1.4 GB a day). Also counted: ErrorEvents on `errors.>` (zero
expected), restarts by the supervisor (zero expected), nats-server's slow-consumer
warnings, the ticks market-data published (its md_ticks_out_total) and the orders filled.

market-data keeps `history_len` closed bars per series: 100 here (not 1000) so that the
1 s history is full within the warm-up and its growth is not mistaken for a leak.

nats-server is a Go program run with GOGC=400 (natsserver.py NATS_GOGC): its heap grows
to five times what was live at the last collection before the next, and its RSS follows
that high-water mark. So what it keeps is measured too: once a minute its profiling port
(on 127.0.0.1 like everything here) is asked for the heap profile after a collection
(`gc=1`), whose MemStats HeapAlloc is then exactly the live heap. `MOONBUS_SOAK_SECONDS`
runs longer than 10 minutes (the BARS stream's 1 s bars reach 1,000 per series after ~17).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bench.__main__ import Context
from services.devstack.launcher import System
from services.devstack.natsserver import free_port

SAMPLE_S = 5.0
SYMBOLS = [f"S{i:03d}-USD" for i in range(97)] + ["BTC-USD", "ETH-USD", "SOL-USDC"]
TICK_INTERVAL_MS = 10  # per symbol: 100 symbols -> 10,000 ticks/s


@dataclass(frozen=True)
class Plan:
    seconds: float
    warmup: float
    symbols: list[str]
    tick_interval_ms: int

    @property
    def ticks_per_s(self) -> float:
        return len(self.symbols) * 1000 / self.tick_interval_ms


FULL = Plan(seconds=600, warmup=120, symbols=SYMBOLS, tick_interval_ms=TICK_INTERVAL_MS)
SECONDS_ENV = "MOONBUS_SOAK_SECONDS"


def full_plan(env: dict[str, str] | os._Environ[str] = os.environ) -> Plan:
    """FULL, for $MOONBUS_SOAK_SECONDS when set (at least the warm-up and 5 minutes)."""
    text = env.get(SECONDS_ENV, "").strip()
    if not text:
        return FULL
    try:
        seconds = float(text)
    except ValueError:
        raise SystemExit(f"{SECONDS_ENV}={text!r} is not a number of seconds") from None
    if not seconds >= FULL.warmup + 300:
        raise SystemExit(f"{SECONDS_ENV}={text}: at least {FULL.warmup + 300:.0f} (the warm-up and 5 minutes)")
    return dataclasses.replace(FULL, seconds=seconds)


def env_for(plan: Plan, metrics_port: int) -> dict[str, str]:
    """The default config, with the feed's rate and the ports this run may use."""
    return {
        "RUST_LOG": "warn",
        "MOONBUS_LOG_LEVEL": "WARNING",
        "MOONBUS__SYSTEM__SYMBOLS": json.dumps(plan.symbols),
        "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": str(plan.tick_interval_ms),
        "MOONBUS__MARKET_DATA__HISTORY_LEN": "100",
        # The strategy loses on the sim's random walk (fees): past the default daily loss
        # (500 on 10,000) risk latches the account REDUCE_ONLY and the agents stop sending
        # (after ~9 minutes, seen 2026-12-07), leaving the order path idle. The soak keeps it busy.
        "MOONBUS__RISK__MAX_DAILY_LOSS": '"1000000"',
        "MOONBUS__RISK__MAX_DRAWDOWN_PCT": "100.0",
        "MOONBUS__MARKET_DATA__METRICS_ADDR": f'"127.0.0.1:{metrics_port}"',
        "MOONBUS__RISK__METRICS_ADDR": '""',
        "MOONBUS__EXECUTION__METRICS_ADDR": '""',
        "MOONBUS__TRADING_AGENT__METRICS_PORT": "0",
        "MOONBUS__RISK_AGENT__METRICS_PORT": "0",
        "MOONBUS__SENTIMENT_AGENT__METRICS_PORT": "0",
        "MOONBUS__SWARM_AGENT__METRICS_PORT": "0",
        "MOONBUS__GATEWAY__PORT": str(free_port()),
    }


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) / 1024 if found else None


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den * 60


def jetstream_mb(port: int) -> float | None:
    """What JetStream stores (every stream, file storage), from nats-server's /jsz."""
    try:
        jsz = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=5).read())
    except (OSError, ValueError):
        return None
    return jsz.get("storage", 0) / 2**20


def go_live_heap_mb(port: int) -> float | None:
    """nats-server's live Go heap: HeapAlloc of the MemStats its profiling port prints with
    the heap profile, asked for after a collection (gc=1)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/pprof/heap?debug=1&gc=1",
                                      timeout=10).read()
    except OSError:
        return None
    found = re.search(rb"^# HeapAlloc = (\d+)$", text, re.M)
    return int(found.group(1)) / 2**20 if found else None


def ticks_out(port: int) -> float | None:
    """market-data's md_ticks_out_total, all venues."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    values = [float(m.group(1)) for m in re.finditer(r"^md_ticks_out_total(?:\{[^}]*\})? (\S+)$", text, re.M)]
    return sum(values) if values else None


async def soak(plan: Plan, moon_dir: Path, progress: bool = False) -> dict:
    metrics_port, monitor_port, profile_port = free_port(), free_port(), free_port()
    system = System()
    await asyncio.to_thread(lambda: system.start(port=free_port(), moon_dir=moon_dir, out=None,
                                                 env=env_for(plan, metrics_port), write_env_file=False,
                                                 monitor_port=monitor_port,
                                                 nats_args=["--profile", str(profile_port)]))
    errors: Counter[str] = Counter()
    samples: dict[str, list[str]] = defaultdict(list)
    reports: Counter[str] = Counter()
    filled_by_minute: Counter[int] = Counter()  # the order path busy to the end
    rss: dict[str, list[tuple[float, float]]] = defaultdict(list)
    try:
        env = system.env_for("operator")
        nc = await nats.connect(env["NATS_URL"], user="operator", password=env["NATS_PASSWORD"],
                                inbox_prefix="_INBOX.operator", name="soak",
                                connect_timeout=10)  # bcrypt under the start-up load

        async def on_error(msg: Msg) -> None:
            service = msg.subject.split(".", 1)[1]
            errors[service] += 1
            if len(samples[service]) < 5:
                with contextlib.suppress(ValueError, KeyError):
                    samples[service].append(json.loads(msg.data)["reason"][:200])

        async def on_report(msg: Msg) -> None:
            with contextlib.suppress(ValueError, KeyError):
                status = json.loads(msg.data)["status"]
                reports[status] += 1
                if status == "FILLED":
                    filled_by_minute[int((time.monotonic() - started) // 60)] += 1

        started = time.monotonic()
        await nc.subscribe("errors.>", cb=on_error)
        await nc.subscribe("exec.report.>", cb=on_report)
        ticks: list[tuple[float, float]] = []
        stored: list[tuple[float, float]] = []  # JetStream's stored MB
        live_heap: list[tuple[float, float]] = []  # nats-server's live Go heap, MB
        heap_every = 60.0 if plan.seconds >= 600 else 15.0  # each forces a collection
        while (elapsed := time.monotonic() - started) < plan.seconds:
            pids = {name: child.process.pid if child.running and child.process else None
                    for name, child in system.children.items()}
            pids["nats-server"] = system.nats.process.pid if system.nats and system.nats.running else None
            for name, pid in pids.items():
                if (mb := rss_mb(pid)) is not None:
                    rss[name].append((elapsed, mb))
            if (count := ticks_out(metrics_port)) is not None:
                ticks.append((elapsed, count))
            if (mb := jetstream_mb(monitor_port)) is not None:
                stored.append((elapsed, mb))
            if (not live_heap or elapsed - live_heap[-1][0] >= heap_every) and (
                    mb := go_live_heap_mb(profile_port)) is not None:
                live_heap.append((elapsed, mb))
            if progress:
                print(f"  {elapsed:5.0f}s " + " ".join(f"{n}={v[-1][1]:.0f}" for n, v in rss.items() if v)
                      + f" stored={stored[-1][1] if stored else 0:.0f} errors={sum(errors.values())}", flush=True)
            await asyncio.sleep(SAMPLE_S)
        await nc.close()
        restarts = {name: system.supervision(name).restarts for name in [*system.children, "nats"]
                    if getattr(system, "supervise", False) and system.supervision(name).restarts}
        slow = sum("slow consumer" in line.lower() for line in system.output("nats"))
        exits = {name: line for name, child in system.children.items()
                 for line in child.lines if "exited unexpectedly" in line}
    finally:
        await asyncio.to_thread(system.stop)

    services = {}
    for name, points in rss.items():
        steady = [(t, v) for t, v in points if t >= plan.warmup]
        mean = sum(v for _, v in steady) / len(steady) if steady else 0.0
        slope = slope_mb_per_min(steady)
        bound = max(0.5, 0.005 * mean)
        services[name] = {
            "rss_mb_start": round(points[0][1], 1),
            "rss_mb_after_warmup": round(steady[0][1], 1) if steady else None,
            "rss_mb_end": round(points[-1][1], 1),
            "rss_mb_max": round(max(v for _, v in points), 1),
            "slope_mb_per_min": round(slope, 3),
            "flat_mb_per_min": round(bound, 3),
            "flat": abs(slope) <= bound,
            "samples": len(points),
        }
    store_slope = slope_mb_per_min([p for p in stored if p[0] >= plan.warmup])
    if "nats-server" in services:  # growth no faster than what it stores: the streams filling
        nats_rss = services["nats-server"]
        nats_rss["flat_given_store_growth"] = nats_rss["slope_mb_per_min"] <= nats_rss["flat_mb_per_min"] + store_slope
        steady = [p for p in live_heap if p[0] >= plan.warmup]
        if steady:
            nats_rss["go_live_heap_mb_after_warmup"] = round(steady[0][1], 1)
            nats_rss["go_live_heap_mb_end"] = round(steady[-1][1], 1)
            nats_rss["go_live_heap_slope_mb_per_min"] = round(slope_mb_per_min(steady), 3)
            nats_rss["go_live_heap_mb"] = [round(v, 1) for _, v in live_heap]
    measured = [(t, c) for t, c in ticks if t >= plan.warmup] or ticks
    rate = ((measured[-1][1] - measured[0][1]) / (measured[-1][0] - measured[0][0])
            if len(measured) >= 2 and measured[-1][0] > measured[0][0] else None)
    return {
        "seconds": plan.seconds,
        "warmup_s": plan.warmup,
        "sample_every_s": SAMPLE_S,
        "symbols": len(plan.symbols),
        "ticks_per_s_asked": plan.ticks_per_s,
        "ticks_per_s_published": None if rate is None else round(rate),
        "services": services,
        "all_flat": all(s["flat"] for s in services.values()),
        # nats-server's RSS follows what its streams hold (BARS fills up to 1000 bars per
        # series, ORDERS and EXEC grow with every order), all bounded by the streams' limits.
        "jetstream_stored_mb_start": round(stored[0][1], 1) if stored else None,
        "jetstream_stored_mb_end": round(stored[-1][1], 1) if stored else None,
        "jetstream_stored_slope_mb_per_min": round(store_slope, 3),
        "error_events": dict(errors),
        "error_samples": dict(samples),
        "restarts": restarts,
        "unexpected_exits": exits,
        "nats_slow_consumer_warnings": slow,
        "reports": dict(reports),
        "filled_per_minute": [filled_by_minute[m] for m in range(int(plan.seconds // 60))],
    }


def run(ctx: Context) -> dict:
    plan = Plan(seconds=60, warmup=20, symbols=SYMBOLS, tick_interval_ms=TICK_INTERVAL_MS) if ctx.quick else full_plan()
    with tempfile.TemporaryDirectory(prefix="moonbus-soak-") as moon_dir:
        result = asyncio.run(soak(plan, Path(moon_dir), progress=True))
    print(f"{'service':<16} {'start MB':>9} {'end MB':>8} {'slope MB/min':>13} flat")
    for name, s in result["services"].items():
        print(f"{name:<16} {s['rss_mb_start']:>9} {s['rss_mb_end']:>8} {s['slope_mb_per_min']:>13} {s['flat']}")
    print(f"FILLED per minute: {result['filled_per_minute']}")
    return result
