"""Warm start: `make run` (a second start, on the store of the first) -> the first FILLED
report, with the bar history kept in the stream BARS (market-data reloads it on start)
against without it, measured in the same run.

Runs the whole system as `make run` does (services/devstack/launcher.py, every service,
the secure config, moonbus.toml's defaults) in a temporary store on a free port:

1. a cold first start, until the first fill (the agents need ~20 closed 1s bars);
2. then, `ROUNDS` times in turn, a stop and a warm start:
   - `with_history`: the store as the last run left it;
   - `without_history`: the same, but the stream BARS removed from the stopped server's
     store (the launcher provisions it again, empty): bar history only in memory, as before.

The time is from the launcher's start (nats-server, provisioning, every service) to the
`ts` of the first FILLED report stored in EXEC after it, read back by direct gets; the
agent that placed the order is noted. Also from the same start: the trading agent's first
signal, and its first decided with the bars its strategy needs (not "N closed bars, the
strategy needs 20"); the fill comes at the first such decision that is not a HOLD, which
is the strategy's and the market's doing (momentum: a 0.05 % move over 20 bars).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nats

from bench.__main__ import Context
from services.common.bus import run_async
from services.contract.models import ExecutionReport, OrderStatus, Signal
from services.devstack.launcher import System
from services.devstack.natsserver import free_port

ROUNDS = 3
TIMEOUT = 120.0


def run(ctx: Context) -> dict:
    rounds = 1 if ctx.quick else ROUNDS
    port = free_port()
    runs: dict[str, list[dict]] = {"with_history": [], "without_history": []}
    with tempfile.TemporaryDirectory(prefix="moonbus-warm-") as tmp:
        moon_dir = Path(tmp)
        cold = start_until_fill(moon_dir, port, after_seq=0, drop_bars=False)
        last_seq = cold["exec_seq"]
        for _ in range(rounds):
            for mode in ("with_history", "without_history"):
                result = start_until_fill(moon_dir, port, after_seq=last_seq, drop_bars=mode == "without_history")
                last_seq = result["exec_seq"]
                runs[mode].append(result)
    out: dict = {"rounds": rounds, "cold_first_fill_s": cold["first_fill_s"], "cold_agent": cold["agent"]}
    for mode, results in runs.items():
        times = [r["first_fill_s"] for r in results]
        decided = [r["first_full_decision_s"] for r in results if r["first_full_decision_s"] is not None]
        out[mode] = {"first_fill_s_median": round(statistics.median(times), 2), "min": min(times), "max": max(times),
                     "all_runs_s": times, "agents": [r["agent"] for r in results],
                     "launched_s": [r["launched_s"] for r in results],
                     "agent_ready_s": [r["agent_ready_s"] for r in results],
                     "first_signal_s": [r["first_signal_s"] for r in results],
                     "first_full_history_decision_s": [r["first_full_decision_s"] for r in results],
                     "first_full_history_decision_s_median": round(statistics.median(decided), 2) if decided else None,
                     "bars_reloaded": [r["bars_reloaded"] for r in results]}
    out["speedup"] = round(out["without_history"]["first_fill_s_median"] / out["with_history"]["first_fill_s_median"], 1)
    out["aims"] = {"with_history_first_fill_s": "a few seconds"}
    return out


def start_until_fill(moon_dir: Path, port: int, after_seq: int, drop_bars: bool) -> dict:
    if drop_bars:
        delete_bars(moon_dir)
    t0 = time.time_ns()
    # Momentum, as when these figures were first taken (the default is mean_reversion since):
    # what is measured is how soon the agent decides with full history, not the strategy's call.
    system = System().start(port=port, moon_dir=moon_dir, out=None,
                            env={"MOONBUS_LOG_LEVEL": "INFO", "MOONBUS__TRADING_AGENT__STRATEGY": "momentum"})
    started = round((time.time_ns() - t0) / 1e9, 2)  # nats-server up, JetStream provisioned, services launched
    try:
        result = run_async(first_fill(system, after_seq, t0))
        result["launched_s"] = started
        result["agent_ready_s"] = logged_at(system.output("trading-agent"), "trading agent ready", t0)
        reloaded = [line for line in system.output("market-data") if "bar history reloaded" in line]
        result["bars_reloaded"] = _field(reloaded[0], "bars") if reloaded else None
        return result
    except BaseException:
        print(system.tail(40))
        raise
    finally:
        system.stop()


def logged_at(lines: list[str], text: str, t0: int) -> float | None:
    """Seconds from `t0` to the first log line with `text` (the agents' default format
    starts with the local time to the millisecond: `2026-12-05 22:55:01,123`)."""
    for line in lines:
        if text in line:
            with contextlib.suppress(ValueError, IndexError):
                stamp = datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                return round(stamp - t0 / 1e9, 2)
    return None


def _field(line: str, name: str) -> int | None:
    for word in line.split():
        if word.startswith(f"{name}="):
            return int(word.split("=", 1)[1])
    return None


def delete_bars(moon_dir: Path) -> None:
    """The stream BARS gone from the stopped server's store (no user may delete a stream,
    not even admin: SECURITY.md), so the next start provisions it empty."""
    found = list((moon_dir / "jetstream").glob("*/streams/BARS"))
    if not found:
        raise RuntimeError(f"no stream BARS in {moon_dir / 'jetstream'}")
    for path in found:
        shutil.rmtree(path)


async def first_fill(system: System, after_seq: int, t0: int) -> dict:
    """The first FILLED report made after `t0`, stored in EXEC after `after_seq`, by direct gets
    as the operator."""
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix="_INBOX.operator")
    js = nc.jetstream()
    signals: dict[str, float | None] = {"first_signal_s": None, "first_full_decision_s": None}

    async def on_signal(msg: nats.aio.msg.Msg) -> None:
        signal = Signal.model_validate_json(msg.data)
        at = round((signal.ts - t0) / 1e9, 2)
        if signals["first_signal_s"] is None:
            signals["first_signal_s"] = at
        if signals["first_full_decision_s"] is None and "the strategy needs" not in signal.reasoning:
            signals["first_full_decision_s"] = at

    # Subscribed when the launcher returns: the agents (Python) take seconds more to start.
    await nc.subscribe("agent.signal.trading.>", cb=on_signal)
    seq = after_seq + 1
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            try:
                msg = await js.get_msg("EXEC", seq=seq, subject="exec.report.>", direct=True, next=True)
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)
                continue
            seq = msg.seq + 1
            report = ExecutionReport.model_validate_json(msg.data)
            # ts >= t0: not a fill of the previous run's last moments.
            if report.status is OrderStatus.FILLED and report.ts >= t0:
                return {"first_fill_s": round((report.ts - t0) / 1e9, 2), "agent": report.agent,
                        "exec_seq": msg.seq, **signals}
        raise TimeoutError(f"no FILLED report within {TIMEOUT:.0f} s\n{system.tail(40)}")
    finally:
        await nc.close()
