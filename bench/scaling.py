"""Scaling curves (`make bench BENCH=scaling`): issue #17 parts 6 and 7.

Four curves, each point against a baseline measured in the same run (this machine is
shared and noisy: the load average is recorded before and after each curve):

1. `market_data`: rust-market-data flat out vs symbols (1k, 10k, 100k), the Rust driver of
   bench/market_data.py (rust-market-data/benches/market_data.rs) in its three modes,
   interleaved over `MD_ROUNDS` rounds: `raw` (a bare async-nats publisher of the sim's
   pre-encoded ticks: the same subjects and bytes, the ceiling), `sim` and `replay` (the
   real engine, default config: bars of 1s/1m/5m/15m/1h, sim books, alerts). Ratio = the
   median of the per-round engine/raw ratios, with their min and max (the spread).
   The sim is asked 1 tick per ms per symbol (the finest `tick_interval_ms`): 1 M ticks/s at
   1k symbols, below raw's rate, so at 1k the sim point is paced (its ratio is a floor) and
   only replay runs flat out there. RSS at steady state: every series' history of every interval is full before the engine
   starts (`MD_BENCH_FULL_HISTORY=1`: filled through `Market::restore`, a restart's reload
   path) and read after the measured window. The history is the default `history_len`
   (1000) capped by `history_budget_mb` (40 MB of 56-byte kept bars): 149, 14 and 1 bars per (symbol, interval)
   at 1k, 10k and 100k symbols; at 100k `max_series` is raised to 100,000 (its default,
   20,000, would drop 80 % of the symbols).
2. `order_path`: the real order path (nats-server with the secure config, rust-market-data,
   rust-risk, rust-execution; rust-execution/benches/order_path.rs in its paced open-loop
   mode) at doubling offered rates from `RATES[0]` until it saturates (`saturated`: the
   achieved rate below 90 % of the offered one, orders without a terminal report or not
   stored, or p99 above 10x the p99 of the lowest rate). Baseline at each rate: the driver's
   request/reply echo through the same server on the same schedule.
3. `tick_to_fill`: the whole system with the real Python trading agent (momentum over 2
   bars of 1 s, threshold 0.0001 %: an order on almost every bar) vs symbols (3, 100,
   1000): bar end (`end_ts`, the instant after the bar's last tick, which the agent carries
   as the order's `origin_ts`) -> the FILLED report received here, and -> execution's
   `filled_ts`, and hop by hop (`HOPS`: the agent's decision, the ORDERS write and delivery
   to execution, the risk round trip, the fill, the report's delivery here) from each
   order's own stamps. Baseline: the order path's own order -> report latency at its lowest
   rate in this run (the same services without the agent and market-data's bar close).
4. `agent_replicas`: decisions/s vs trading-agent replicas, read from
   bench/results/agent_decisions.json (bench/agent_decisions.py, its own baseline), not
   measured twice.

Writes bench/results/scaling.json (via the harness), scaling.md (the table) and
scaling.png (2x2 plots, matplotlib Agg). ~8-10 minutes; `--quick` runs one small point of
each curve (figures not meaningful).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.__main__ import Context
from bench._system import OPEN_RISK, build_driver, drive, driver_env, running, summary, wait_until_serving
from bench.market_data import nats_server
from services.common.bus import run_async

MD_SIZES = (1_000, 10_000, 100_000)
MD_ROUNDS = 3
MD_SECONDS = 4
MD_MODES = ("raw", "sim", "replay")

RATES = (250, 500, 1000, 2000, 4000, 8000, 16000, 32000)
RATE_SECONDS = 4
ORDER_SYMBOLS = "BTC-USD:0.001,ETH-USD:0.01,SOL-USDC:0.5"

AGENT_SYMBOLS = (3, 100, 1000)
FILL_SECONDS = 20

# saturation: achieved below this share of the offered rate, or p99 above this many times
# the p99 of the lowest rate
ACHIEVED_SHARE = 0.9
P99_BLOWUP = 10.0


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def load_text(load: dict | None) -> str:
    """`{"before": [1m, 5m, 15m], "after": [...]}` as "load 1m 5.2 -> 6.1"."""
    if not load:
        return "load not recorded"
    before, after = load.get("before") or [None], load.get("after") or [None]
    return f"load 1m {before[0]} -> {after[0]}"


# ---------------------------------------------------------------------------- market data


def build_md_driver(root: Path) -> Path:
    """`cargo bench --no-run` rust-market-data's driver; its executable is run directly, so
    a rebuild (others edit this repository) never lands inside a measurement."""
    argv = ["cargo", "bench", "-q", "-p", "rust-market-data", "--bench", "market_data", "--no-run",
            "--message-format=json"]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        artifact = json.loads(line)
        if artifact.get("reason") == "compiler-artifact" and artifact["target"]["name"] == "market_data" \
                and artifact.get("executable"):
            return Path(artifact["executable"])
    raise RuntimeError("cargo built no market_data bench executable")


def md_drive(driver: Path, args: list[str], timeout: float) -> dict:
    env = {**os.environ, "RUST_LOG": "error", "MD_BENCH_FULL_HISTORY": "1"}
    done = subprocess.run([str(driver), "--bench", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"market_data {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def md_point(symbols: int, runs: dict[str, list[dict]]) -> dict:
    """One size's figures from its interleaved runs (same number of rounds per mode)."""
    raw = [r["ticks_per_s"] for r in runs["raw"]]
    out: dict[str, Any] = {
        "symbols": symbols,
        "rounds": len(raw),
        "raw_ticks_per_s": round(statistics.median(raw)),
        "raw_all_runs": [round(r) for r in raw],
        "raw_rss_mb": round(max(r["rss_mb"] for r in runs["raw"]), 1),
    }
    for mode in ("sim", "replay"):
        rates = [r["ticks_per_s"] for r in runs[mode]]
        ratios = [r / b for r, b in zip(rates, raw, strict=True)]
        last = runs[mode][-1]
        out[mode] = {
            "ticks_per_s": round(statistics.median(rates)),
            "all_runs": [round(r) for r in rates],
            "ratio_to_raw": round(statistics.median(ratios), 3),
            "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
            "rss_mb_steady": round(max(r["rss_mb"] for r in runs[mode]), 1),
            "history_bars_per_series": last.get("history_bars_per_series"),
            "history_full": all(r.get("history_full") for r in runs[mode]),
            "bars_prefilled": last.get("bars_prefilled"),
            "latency_us_at_most": last.get("latency_us_at_most"),
            "dropped_bus_full": sum(r.get("dropped_bus_full", 0) for r in runs[mode]),
        }
    return out


def market_data_curve(ctx: Context) -> dict:
    sizes, rounds, seconds = ((1_000,), 1, 1) if ctx.quick else (MD_SIZES, MD_ROUNDS, MD_SECONDS)
    driver = build_md_driver(ctx.root)
    points = []
    load = {"before": loadavg()}
    with tempfile.TemporaryDirectory(prefix="moonbus-scaling-md-") as tmp, nats_server(ctx.root) as url:
        for symbols in sizes:
            replay_file = str(Path(tmp) / f"ticks-{symbols}.csv")
            runs: dict[str, list[dict]] = {mode: [] for mode in MD_MODES}
            for _ in range(rounds):
                for mode in MD_MODES:
                    args = [mode, url, str(symbols), str(seconds)] + ([replay_file] if mode == "replay" else [])
                    runs[mode].append(md_drive(driver, args, timeout=seconds + 300))
            points.append(md_point(symbols, runs))
            print(f"   market_data {symbols} symbols: sim {points[-1]['sim']['ratio_to_raw']} of raw, "
                  f"replay {points[-1]['replay']['ratio_to_raw']}", flush=True)
    load["after"] = loadavg()
    return {"points": points, "seconds_per_run": seconds, "loadavg": load,
            "config": "default [market_data] (bars 1s,1m,5m,15m,1h; sim books depth 10 every 1 s per symbol; "
                      "alerts), sim asked for 1 tick/ms per symbol (flat out); history full (restored) before "
                      "the run; max_series = symbols above 20,000",
            "driver": "rust-market-data/benches/market_data.rs, MD_BENCH_FULL_HISTORY=1"}


# ---------------------------------------------------------------------------- order path


def saturated(point: dict, first: dict | None) -> str | None:
    """Why the order path is saturated at `point` (None: it keeps up). `first` is the
    lowest rate's point (for the p99 blow-up)."""
    offered, achieved = point["offered_rate"], point.get("achieved_rate") or 0.0
    if achieved < ACHIEVED_SHARE * offered:
        return f"achieved {achieved:.0f}/s < {ACHIEVED_SHARE:.0%} of offered {offered}/s"
    if point.get("without_terminal_report") or point.get("not_stored"):
        return (f"{point.get('without_terminal_report', 0)} orders without a terminal report, "
                f"{point.get('not_stored', 0)} not stored")
    if first is not None and first is not point:
        p99, base = point.get("p99_us"), first.get("p99_us")
        if p99 is not None and base and p99 > P99_BLOWUP * base:
            return f"p99 {p99:.0f} us > {P99_BLOWUP:g}x the lowest rate's {base:.0f} us"
    return None


def order_point(result: dict) -> dict:
    filled = summary(result["latency_us"].get("FILLED", []))
    echo = summary(result.get("echo_baseline_us") or [])
    return {
        "offered_rate": round(result["offered_rate"]),
        "achieved_rate": round(result.get("achieved_rate") or 0.0, 1),
        "orders": result["orders"],
        "statuses": result.get("statuses"),
        "without_terminal_report": result.get("without_terminal_report", 0),
        "not_stored": result.get("not_stored", 0),
        "max_send_lag_us": round(result.get("max_send_lag_us", 0.0), 1),
        "p50_us": filled.get("p50"), "p99_us": filled.get("p99"), "p99_9_us": filled.get("p99_9"),
        "echo_p50_us": echo.get("p50"), "echo_p99_us": echo.get("p99"), "echo_p99_9_us": echo.get("p99_9"),
    }


def order_path_curve(ctx: Context) -> dict:
    rates, seconds = ((250, 500), 1) if ctx.quick else (RATES, RATE_SECONDS)
    driver = build_driver(ctx.root, "order_path")
    symbols = [pair.split(":")[0] for pair in ORDER_SYMBOLS.split(",")]
    points: list[dict] = []
    load = {"before": loadavg()}
    saturation = None
    with running(["market-data", "risk", "execution"], OPEN_RISK) as system:
        wait_until_serving(system, symbols)
        env = driver_env(system)
        for rate in rates:
            result = drive(driver, ["--mode", "rate", "--rate", str(rate), "--seconds", str(seconds), "--warmup", "1",
                                    "--symbols", ORDER_SYMBOLS, "--run", f"scale{rate}"], env,
                           timeout=4 * seconds + 180)
            point = order_point(result)
            point["saturated"] = saturated(point, points[0] if points else None)
            points.append(point)
            print(f"   order_path {rate}/s: achieved {point['achieved_rate']}/s p99 {point['p99_us']} us "
                  f"(echo {point['echo_p99_us']}){'; saturated: ' + point['saturated'] if point['saturated'] else ''}",
                  flush=True)
            if point["saturated"]:
                saturation = {"offered_rate": rate, "why": point["saturated"]}
                break
    load["after"] = loadavg()
    return {"points": points, "saturation": saturation, "seconds_per_rate": seconds, "loadavg": load,
            "driver": "rust-execution/benches/order_path.rs --mode rate (paced open loop, 1 s warm-up left out)"}


# ---------------------------------------------------------------------------- tick -> fill


def agent_env(symbols: list[str]) -> dict[str, str]:
    return {
        **OPEN_RISK,
        "MOONBUS_LOG_LEVEL": "WARNING",
        "MOONBUS__SYSTEM__SYMBOLS": json.dumps(symbols),
        "MOONBUS__MARKET_DATA__METRICS_ADDR": '""',
        "MOONBUS__RISK__METRICS_ADDR": '""',
        "MOONBUS__EXECUTION__METRICS_ADDR": '""',
        "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_AGENT": "0",
        "MOONBUS__TRADING_AGENT__STRATEGY": "momentum",
        "MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK": "2",
        "MOONBUS__TRADING_AGENT__MOMENTUM_THRESHOLD_PCT": "0.0001",
        "MOONBUS__TRADING_AGENT__METRICS_PORT": "0",
    }


# Where bar end -> report goes, hop by hop (each order's own stamps; clocks of one machine):
# the bar reaching the agent and its decision (bar end_ts -> the order's ts), the ORDERS
# write and its delivery to execution (-> received_ts), the risk round trip (->
# risk_checked_ts), the paper fill (-> filled_ts), the EXEC write and its delivery here.
HOPS = ("bar_end_to_decided", "decided_to_execution", "risk_round_trip", "fill", "report_to_subscriber")


async def collect_fills(env: dict[str, str], warmup: float, seconds: float) -> dict:
    """FILLED reports on exec.report.> for `seconds` after the first one (+ `warmup`):
    received - origin_ts and filled_ts - origin_ts, in ms, and each hop (HOPS) of the orders
    seen on orders.submit.>."""
    import nats

    from services.contract.models import ExecutionReport, OrderStatus

    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    received: list[float] = []
    in_system: list[float] = []
    hops: dict[str, list[float]] = {name: [] for name in HOPS}
    decided: dict[str, int] = {}  # client_order_id -> the order's ts (the agent's decision)
    counting = {"from": None, "filled": 0, "other": 0}
    reasons: dict[str, int] = {}

    async def on_order(msg: Any) -> None:
        order = json.loads(msg.data)
        decided[order["client_order_id"]] = order["ts"]

    async def on_report(msg: Any) -> None:
        now = time.time_ns()
        report = ExecutionReport.model_validate_json(msg.data)
        if counting["from"] is None:
            counting["from"] = time.monotonic() + warmup
        if time.monotonic() < counting["from"]:
            return
        if report.status == OrderStatus.FILLED:
            counting["filled"] += 1
            t = report.timings
            if t.origin_ts:
                received.append((now - t.origin_ts) / 1e6)
                if t.filled_ts:
                    in_system.append((t.filled_ts - t.origin_ts) / 1e6)
                stamps = [t.origin_ts, decided.pop(report.client_order_id or "", None), t.received_ts,
                          t.risk_checked_ts, t.filled_ts, now]
                if all(stamps):
                    for name, (a, b) in zip(HOPS, zip(stamps, stamps[1:]), strict=True):
                        hops[name].append((b - a) / 1e6)  # type: ignore[operator]
        elif report.status in (OrderStatus.REJECTED, OrderStatus.FAILED, OrderStatus.CANCELLED, OrderStatus.EXPIRED):
            counting["other"] += 1
            why = f"{report.status.value}: {(report.reason or '')[:60]}"
            reasons[why] = reasons.get(why, 0) + 1

    await nc.subscribe("orders.submit.>", cb=on_order)
    await nc.subscribe("exec.report.>", cb=on_report)
    deadline = time.monotonic() + 90
    while counting["from"] is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if counting["from"] is None:
        await nc.close()
        raise RuntimeError("no execution report within 90 s of the system serving")
    await asyncio.sleep(warmup + seconds)
    await nc.close()
    return {"received_ms": received, "filled_ms": in_system, "hops_ms": hops, "filled": counting["filled"],
            "not_filled": counting["other"], "not_filled_reasons": reasons, "seconds": seconds}


def ms_summary(samples: list[float]) -> dict:
    s = summary(samples)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.items()}


def tick_to_fill_curve(ctx: Context) -> dict:
    sizes, seconds = ((3,), 5) if ctx.quick else (AGENT_SYMBOLS, FILL_SECONDS)
    points = []
    load = {"before": loadavg()}
    for n in sizes:
        symbols = [f"T{i:04d}-USD" for i in range(n)]
        with running(["market-data", "risk", "execution", "trading-agent"], agent_env(symbols)) as system:
            wait_until_serving(system, symbols, timeout=120)
            got = run_async(collect_fills(system.env_for("operator"), warmup=5.0, seconds=seconds))
        received, filled = ms_summary(got["received_ms"]), ms_summary(got["filled_ms"])
        points.append({
            "symbols": n,
            "fills": got["filled"],
            "fills_per_s": round(got["filled"] / seconds, 1),
            "not_filled": got["not_filled"],
            "not_filled_reasons": dict(sorted(got["not_filled_reasons"].items(), key=lambda kv: -kv[1])[:5]),
            "bar_end_to_report_ms": received,
            "bar_end_to_filled_ts_ms": filled,
            "hops_ms": {name: ms_summary(v) for name, v in got["hops_ms"].items()},
        })
        print(f"   tick_to_fill {n} symbols: p50 {received.get('p50')} ms p99 {received.get('p99')} ms, "
              f"{got['filled']} fills", flush=True)
    load["after"] = loadavg()
    return {"points": points, "seconds_per_point": seconds, "loadavg": load,
            "measured": "bar end_ts (the agent's origin_ts) -> FILLED report received by this process; and -> "
                        "execution's filled_ts; momentum over 2 bars of 1 s, one trading-agent process, "
                        "sim tick every 200 ms per symbol"}


# ---------------------------------------------------------------------------- agent replicas


def agent_replicas(results: Path) -> dict:
    """decisions/s vs replicas from bench/agent_decisions.py's latest result, if any."""
    path = results / "agent_decisions.json"
    if not path.exists():
        return {"source": str(path.name), "missing": "run `make bench BENCH=agent_decisions` first"}
    data = json.loads(path.read_text())
    found = data.get("results", {}).get("replicas")
    points = replica_points(found)
    return {"source": path.name, "started": data.get("started"), "quick": data.get("quick"),
            "loadavg_1m": data.get("machine", {}).get("loadavg_1m"), "points": points, "raw": found}


def replica_points(found: Any) -> list[dict]:
    """[{workload, replicas, decisions_per_s (median of its runs), runs}] from agent_decisions'
    `replicas` block: its `runs` ({replicas, workload, decisions_per_s} each), else its
    `best_decisions_per_s` ({workload: {replicas: rate}})."""
    if not isinstance(found, dict):
        return []
    by: dict[tuple[str, int], list[float]] = {}
    for r in found.get("runs") or []:
        if isinstance(r, dict) and isinstance(r.get("decisions_per_s"), (int, float)) and "replicas" in r:
            by.setdefault((str(r.get("workload", "")), int(r["replicas"])), []).append(float(r["decisions_per_s"]))
    if not by:
        for workload, per in (found.get("best_decisions_per_s") or {}).items():
            for n, rate in (per or {}).items():
                if str(n).isdigit() and isinstance(rate, (int, float)):
                    by[(str(workload), int(n))] = [float(rate)]
    # A round that decided nothing (0/s: it failed) is left out of the median and counted.
    return [{"workload": w, "replicas": n,
             "decisions_per_s": round(statistics.median([r for r in rates if r > 0] or [0.0]), 1),
             "runs": [round(r, 1) for r in rates], "zero_runs": sum(1 for r in rates if r <= 0)}
            for (w, n), rates in sorted(by.items())]


# ---------------------------------------------------------------------------- outputs


def table(result: dict) -> str:
    """The markdown table of every curve, each point with its baseline."""
    lines: list[str] = []
    for name in ("market_data", "order_path", "tick_to_fill"):
        if (result.get(name) or {}).get("failed"):
            lines += [f"**{name} failed**: {result[name]['failed'][:300]}", ""]
    md = result.get("market_data", {})
    if md.get("points"):
        lines += [f"**market-data vs symbols** ({load_text(md.get('loadavg'))}, {md.get('seconds_per_run')} s per run)", "",
                  "| symbols | raw async-nats ticks/s | sim ticks/s (ratio, spread) | replay ticks/s (ratio, spread) "
                  "| RSS steady MB sim / replay (raw) | history bars |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for p in md["points"]:
            sim, rep = p["sim"], p["replay"]
            lines.append(f"| {p['symbols']:,} | {p['raw_ticks_per_s']:,} | {sim['ticks_per_s']:,} ({sim['ratio_to_raw']}, "
                         f"{sim['ratio_spread'][0]}-{sim['ratio_spread'][1]}) | {rep['ticks_per_s']:,} "
                         f"({rep['ratio_to_raw']}, {rep['ratio_spread'][0]}-{rep['ratio_spread'][1]}) | "
                         f"{sim['rss_mb_steady']} / {rep['rss_mb_steady']} ({p['raw_rss_mb']}) | "
                         f"{sim['history_bars_per_series']} |")
        lines.append("")
    op = result.get("order_path", {})
    if op.get("points"):
        lines += [f"**order path vs offered rate** ({load_text(op.get('loadavg'))}; saturation: "
                  f"{(op.get('saturation') or {}).get('why', 'not reached')})", "",
                  "| offered/s | achieved/s | p50 / p99 / p99.9 us | echo p50 / p99 / p99.9 us |",
                  "|---:|---:|---:|---:|"]
        for p in op["points"]:
            lines.append(f"| {p['offered_rate']:,} | {p['achieved_rate']:,} | {p['p50_us']} / {p['p99_us']} / "
                         f"{p['p99_9_us']} | {p['echo_p50_us']} / {p['echo_p99_us']} / {p['echo_p99_9_us']} |")
        lines.append("")
    tf = result.get("tick_to_fill", {})
    if tf.get("points"):
        lines += [f"**bar end -> fill through the trading agent vs symbols** ({load_text(tf.get('loadavg'))}; baseline: "
                  f"order path alone at its lowest rate p50 / p99 {tf.get('baseline_order_p50_us')} / "
                  f"{tf.get('baseline_order_p99_us')} us)", "",
                  "| symbols | fills/s | not filled | report p50 / p99 ms | filled_ts p50 / p99 ms |",
                  "|---:|---:|---:|---:|---:|"]
        for p in tf["points"]:
            r, f = p["bar_end_to_report_ms"], p["bar_end_to_filled_ts_ms"]
            lines.append(f"| {p['symbols']:,} | {p['fills_per_s']} | {p.get('not_filled', 0)} | {r.get('p50')} / {r.get('p99')} | "
                         f"{f.get('p50')} / {f.get('p99')} |")
        lines.append("")
        if any(p.get("hops_ms") for p in tf["points"]):
            lines += ["Hop by hop, p50 / p99 ms (HOPS in bench/scaling.py):", "",
                      "| symbols | " + " | ".join(h.replace("_", " ") for h in HOPS) + " |",
                      "|---:|" + "---:|" * len(HOPS)]
            for p in tf["points"]:
                h = p.get("hops_ms", {})
                lines.append(f"| {p['symbols']:,} | " + " | ".join(
                    f"{h.get(name, {}).get('p50')} / {h.get(name, {}).get('p99')}" for name in HOPS) + " |")
            lines.append("")
    ar = result.get("agent_replicas", {})
    if ar.get("points"):
        lines += [f"**decisions/s vs agent replicas** (from {ar['source']}, {ar.get('started')}, "
                  f"load 1m {round(ar.get('loadavg_1m') or 0, 2)}{', QUICK run' if ar.get('quick') else ''})", "", "| workload | replicas | decisions/s |", "|---|---:|---:|"]
        lines += [f"| {p['workload']} | {p['replicas']} | {p['decisions_per_s']:,}"
                  f"{' (' + str(p['zero_runs']) + ' round(s) at 0 left out)' if p.get('zero_runs') else ''} |"
                  for p in ar["points"]]
        lines.append("")
    elif ar:
        lines += [f"**decisions/s vs agent replicas**: {ar.get('missing', 'no replica figures')}", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """2x2 plots of the four curves (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    ax = axes[0][0]
    md = result.get("market_data", {}).get("points", [])
    if md:
        xs = [p["symbols"] for p in md]
        ax.plot(xs, [p["raw_ticks_per_s"] for p in md], "k--o", label="raw async-nats (baseline)")
        ax.plot(xs, [p["sim"]["ticks_per_s"] for p in md], "-o", label="engine, sim")
        ax.plot(xs, [p["replay"]["ticks_per_s"] for p in md], "-o", label="engine, replay")
        ax.set_xscale("log")
        ax2 = ax.twinx()
        ax2.plot(xs, [p["sim"]["rss_mb_steady"] for p in md], "r:s", label="RSS sim, history full (MB)")
        ax2.set_ylabel("RSS MB", color="r")
        ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("market-data ticks/s vs symbols")
    ax.set_xlabel("symbols")
    ax.set_ylabel("ticks/s")
    ax.legend(loc="upper right", fontsize=8)

    ax = axes[0][1]
    ops = result.get("order_path", {}).get("points", [])
    if ops:
        xs = [p["offered_rate"] for p in ops]
        ax.plot(xs, [p["p50_us"] for p in ops], "-o", label="order p50")
        ax.plot(xs, [p["p99_us"] for p in ops], "-o", label="order p99")
        ax.plot(xs, [p["echo_p99_us"] for p in ops], "k--", label="echo p99 (baseline)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax2 = ax.twinx()
        ax2.plot(xs, [p["achieved_rate"] for p in ops], "g:s", label="achieved orders/s")
        ax2.plot(xs, xs, "g-", alpha=0.2)
        ax2.set_yscale("log")
        ax2.set_ylabel("achieved orders/s", color="g")
        ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("order path latency vs offered rate")
    ax.set_xlabel("offered orders/s")
    ax.set_ylabel("µs")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1][0]
    tf = result.get("tick_to_fill", {}).get("points", [])
    if tf:
        xs = [p["symbols"] for p in tf]
        for key, label in (("p50", "p50"), ("p99", "p99")):
            ax.plot(xs, [p["bar_end_to_report_ms"].get(key) for p in tf], "-o", label=f"bar end -> report {label}")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_title("bar end -> fill through the trading agent")
    ax.set_xlabel("symbols")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    ar = result.get("agent_replicas", {}).get("points", [])
    for workload in sorted({p["workload"] for p in ar}):
        pts = [p for p in ar if p["workload"] == workload]
        ax.plot([p["replicas"] for p in pts], [p["decisions_per_s"] for p in pts], "-o", label=workload)
    ax.set_title("decisions/s vs trading-agent replicas")
    ax.set_xlabel("replicas")
    ax.set_ylabel("decisions/s")
    if ar:
        ax.legend(fontsize=8)
    fig.suptitle(f"moonbus scaling ({result.get('started', '')}; load {result.get('loadavg_start')})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(result: dict, results: Path) -> None:
    result["table_md"] = table(result)
    (results / "scaling.md").write_text(result["table_md"] + "\n")
    plot(result, results / "scaling.png")


def run(ctx: Context) -> dict:
    ctx.results.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "loadavg_start": loadavg(), "cpus": os.cpu_count()}
    # A curve that fails (a service that does not start, a config mid-edit) is recorded
    # with its error; the others are still measured and written.
    for name, curve in (("market_data", market_data_curve), ("order_path", order_path_curve),
                        ("tick_to_fill", tick_to_fill_curve)):
        try:
            result[name] = curve(ctx)
        except Exception as e:  # noqa: BLE001 (recorded in the result, and the run fails below)
            traceback.print_exc()
            result[name] = {"failed": f"{type(e).__name__}: {str(e)[:2000]}", "points": []}
    first = result["order_path"]["points"][0] if result["order_path"]["points"] else {}
    result["tick_to_fill"]["baseline_order_p50_us"] = first.get("p50_us")
    result["tick_to_fill"]["baseline_order_p99_us"] = first.get("p99_us")
    result["agent_replicas"] = agent_replicas(ctx.results)
    result["loadavg_end"] = loadavg()
    write_outputs(result, ctx.results)
    failed = [name for name in ("market_data", "order_path", "tick_to_fill") if result[name].get("failed")]
    if failed:
        (ctx.results / "scaling.json").write_text(json.dumps({"benchmark": "scaling", "results": result}, indent=2) + "\n")
        raise RuntimeError(f"curves failed: {', '.join(failed)} (the others in bench/results/scaling.json)")
    return result
