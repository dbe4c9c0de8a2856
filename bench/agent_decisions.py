"""The trading agent's decision path (`make bench BENCH=agent_decisions`): issue #17 parts 1 and 5.

Real `python -m services.trading_agent` processes against a real nats-server (ORDERS
provisioned, so every order waits for its stream ack); the bench is market-data (bars on
md.bar, a stand-in md.api.history) and risk (ACTIVE verdicts and account, heartbeat).

1. `latency`: bar published (its end_ts, stamped at publish) -> the order seen on
   orders.submit.<symbol> and -> the Signal, one agent, momentum strategy, rising closes:
   every bar a BUY. Baseline in the same run, rounds alternated: `echo`, a separate raw
   nats-py process that republishes each bar at once (md.bar -> the observer: the bus
   hops without any agent work; as the trading-agent user, on agent.signal.trading.<symbol>). History is asked once per symbol (the agent keeps its
   own rolling bars), counted from the stand-in's requests.
2. `replicas`: decisions/s of 1, 2 and 3 replicas (one queue group, `trading-agent`):
   24 symbols, 500 bars each published as fast as the bench can (a replay faster
   than the agents, within the 512 bars a window keeps ahead of its decisions: max_pending
   holds them all, so no decision is an `overloaded` HOLD),
   flat closes (momentum decides HOLD: a Signal per bar, no order) and, for the
   `with_orders` workload, rising ones (a BUY order per bar into ORDERS). Rate = decided
   bars / (last Signal - first Signal). Rounds alternate 1, 2, 3, 3, 2, 1 for each workload
   (the best of the two rounds of each count is the figure).
3. `ingest`: bench/agent_ingest.py's tick ingest in the same run: raw nats-py, the
   agent's tick path (each tick checked against the contract on arrival, services/contract/
   wire.py), full pydantic models per tick; ratios to raw.
4. `rss`: VmRSS of each agent process when ready and after its runs.

This machine is shared (2 cores, other builds running): the load average is recorded,
and every figure is to be read against its baseline of the same run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats

from bench.__main__ import Context, percentiles
from bench._system import agent_child_env
from services.common.bus import run_async
from services.contract.models import AccountState, Bar, OrderRequest, Signal, TradingState, Verdict, encode, now_ns
from services.devstack.launcher import Child, Output
from services.devstack.natsserver import REPO_ROOT, NatsServer, load_or_create_credentials

LATENCY_SYMBOLS = ["LATA-USD", "LATB-USD", "LATC-USD"]
T0 = 1_764_000_000 * 10**9

AGENT_CONFIG = """
[trading_agent]
strategy = "momentum"
momentum_lookback = 2
momentum_threshold_pct = 0.01
# workers: the default (8), as shipped
max_pending = 200000
metrics_port = 0
history_max_gap_s = 1000000000
state_max_age_s = 60
"""


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_bar(symbol: str, i: int, close: Decimal, end: int | None = None) -> Bar:
    end = T0 + (i + 1) * 10**9 if end is None else end
    return Bar(venue="sim", symbol=symbol, interval="1s", open=close, high=close, low=close, close=close,
               volume=Decimal(1), trades=1, start_ts=end - 10**9, end_ts=end)


class Bench:
    def __init__(self, server: NatsServer, tmp: Path) -> None:
        self.server = server
        self.tmp = tmp
        (tmp / "bench.toml").write_text(AGENT_CONFIG)
        self.env = agent_child_env(server.env_for("trading-agent"), tmp / "bench.toml")
        self.history: dict[str, list[Bar]] = {}
        self.history_requests = 0
        self.rss: list[dict[str, Any]] = []

    async def connect(self, user: str) -> nats.NATS:
        return await nats.connect(self.server.url, user=user, password=self.server.credentials[user],
                                  inbox_prefix=f"_INBOX.{user}", pending_size=64 * 1024 * 1024)

    async def open(self) -> None:
        self.md, self.risk, self.operator = (await self.connect("market-data"), await self.connect("risk"),
                                             await self.connect("operator"))

        async def serve_history(msg: Any) -> None:
            self.history_requests += 1
            request = json.loads(msg.data)
            have = self.history.get(request["symbol"], [])[-request["limit"]:]
            await msg.respond(json.dumps({"bars": [json.loads(encode(b)) for b in have]}).encode())

        await self.md.subscribe("md.api.history", cb=serve_history)
        self.beat = asyncio.create_task(self._heartbeat())

    async def close(self) -> None:
        self.beat.cancel()
        for nc in (self.md, self.risk, self.operator):
            await nc.close()

    async def _heartbeat(self) -> None:
        d = Decimal
        while True:
            for s in self.symbols_seen():
                await self.risk.publish(f"risk.verdict.{s}",
                                        encode(Verdict(symbol=s, state=TradingState.ACTIVE, ts=now_ns())))
            account = AccountState(state=TradingState.ACTIVE, cash=d(10**12), equity=d(10**12),
                                   peak_equity=d(10**12), drawdown_pct=0.0, realized_pnl=d(0), unrealized_pnl=d(0),
                                   day_pnl=d(0), fees=d(0), gross_exposure=d(0), open_positions=0, kill_switch=False,
                                   ts=now_ns())
            await self.risk.publish("risk.account", encode(account))
            await asyncio.sleep(0.5)

    def symbols_seen(self) -> list[str]:
        return list(self.history) + [s for s in LATENCY_SYMBOLS if s not in self.history]

    async def start_agents(self, n: int) -> list[Child]:
        agents = [Child(f"trading-agent-{i}", [sys.executable, "-m", "services.trading_agent"], self.env, REPO_ROOT,
                        Output(None, []), keep_lines=200) for i in range(n)]
        for a in agents:
            a.start()
        for a in agents:
            await asyncio.to_thread(a.wait_for, "trading agent ready|Traceback", 90)
            if not a.running:
                raise RuntimeError("agent did not start:\n" + "\n".join(a.lines))
        await asyncio.sleep(0.5)
        for a in agents:
            assert a.process is not None
            self.rss.append({"when": "ready", "replicas": n, "mb": rss_mb(a.process.pid)})
        return agents

    async def stop_agents(self, agents: list[Child], phase: str) -> None:
        for a in agents:
            if a.process is not None:
                self.rss.append({"when": f"after {phase}", "replicas": len(agents), "mb": rss_mb(a.process.pid)})
            a.stopping = True
            a.signal(signal.SIGTERM)
        for a in agents:
            if a.process is not None:
                try:
                    await asyncio.to_thread(a.process.wait, 15)
                except Exception:
                    a.signal(signal.SIGKILL)

    # ------------------------------------------------------------ latency

    async def latency_round(self, path: str, bars: int, start: int) -> dict[str, list[float]]:
        """`agent`: bar -> order / Signal through one agent; `echo`: bar -> a raw nats-py
        process's republished copy (the baseline)."""
        order_ms: list[float] = []
        signal_ms: list[float] = []
        echo_ms: list[float] = []

        async def on_order(msg: Any) -> None:
            order_ms.append((now_ns() - OrderRequest.model_validate_json(msg.data).origin_ts) / 1e6)

        async def on_signal(msg: Any) -> None:
            signal_ms.append((now_ns() - Signal.model_validate_json(msg.data).origin_ts) / 1e6)

        async def on_echo(msg: Any) -> None:
            echo_ms.append((now_ns() - json.loads(msg.data)["end_ts"]) / 1e6)

        subs = []
        if path == "agent":
            subs.append(await self.operator.subscribe("orders.submit.>", cb=on_order))
            subs.append(await self.operator.subscribe("agent.signal.trading.>", cb=on_signal))
            agents = await self.start_agents(1)
            echo = None
        else:
            subs.append(await self.operator.subscribe("agent.signal.trading.>", cb=on_echo))
            echo = multiprocessing.get_context("spawn").Process(
                target=_echo, args=(self.server.env_for("trading-agent"), "md.bar.1s.sim.*"), daemon=True)
            echo.start()
            agents = []
            await asyncio.sleep(2.0)  # the echo process connected and subscribed
        await self.operator.flush()
        try:
            for i in range(start, start + bars + 1):  # rising closes: every bar after the first is a BUY
                for s in LATENCY_SYMBOLS:
                    bar = make_bar(s, i, Decimal(100) + Decimal(i) / 10, end=now_ns())
                    self.history.setdefault(s, []).append(bar)
                    await self.md.publish(f"md.bar.1s.sim.{s}", encode(bar))
                await self.md.flush()
                await asyncio.sleep(0.02)
            want = bars * len(LATENCY_SYMBOLS)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(order_ms if path == "agent" else echo_ms) < want:
                await asyncio.sleep(0.05)
        finally:
            for sub in subs:
                await sub.unsubscribe()
            await self.stop_agents(agents, "latency (paced bars)")
            if echo is not None:
                echo.kill()
                echo.join(5)
        skip = len(LATENCY_SYMBOLS)  # the first bar of each symbol (the agent's first history request)
        return {"order": order_ms[skip:], "signal": signal_ms[skip:], "echo": echo_ms[skip:]}

    async def latency(self, bars: int, rounds: int) -> dict[str, Any]:
        orders: list[float] = []
        signals: list[float] = []
        echo: list[float] = []
        start = 0
        requests_before = self.history_requests
        agent_rounds = 0
        for _ in range(rounds):
            for path in ("echo", "agent"):
                got = await self.latency_round(path, bars, start)
                start += bars + 1
                orders += got["order"]
                signals += got["signal"]
                echo += got["echo"]
                agent_rounds += path == "agent"
        return {
            "bars_per_round": bars * len(LATENCY_SYMBOLS),
            "bar_to_order_ms": percentiles(orders),
            "bar_to_signal_ms": percentiles(signals),
            "baseline_echo_ms": percentiles(echo),
            "history_requests": self.history_requests - requests_before,
            "history_requests_per_agent_start": (self.history_requests - requests_before) / max(1, agent_rounds),
            "note": "bar end_ts stamped at publish -> order on orders.submit (the agent awaits its ORDERS ack "
                    "before the Signal) / Signal; echo: the same bars republished by a raw nats-py process; "
                    "the first bar of each symbol (its one md.api.history request) left out",
        }

    # ------------------------------------------------------------ replicas

    async def replicas_round(self, n: int, symbols: list[str], bars: int, orders: bool) -> dict[str, Any]:
        agents = await self.start_agents(n)
        times: list[int] = []
        overloaded = 0
        ordered = 0
        expected = len(symbols) * bars

        async def on_signal(msg: Any) -> None:
            nonlocal overloaded
            times.append(time.perf_counter_ns())
            if b'"model":"overloaded"' in msg.data:
                overloaded += 1

        async def on_order(_msg: Any) -> None:
            nonlocal ordered
            ordered += 1

        subs = [await self.operator.subscribe("agent.signal.trading.>", cb=on_signal, pending_msgs_limit=10**7),
                await self.operator.subscribe("orders.submit.>", cb=on_order, pending_msgs_limit=10**7)]
        await self.operator.flush()
        for s in symbols:  # verdicts before the bars: a BUY needs a fresh ACTIVE one (the heartbeat is every 0.5 s)
            self.history.setdefault(s, [])
            await self.risk.publish(f"risk.verdict.{s}", encode(Verdict(symbol=s, state=TradingState.ACTIVE,
                                                                         ts=now_ns())))
        await self.risk.flush()
        await asyncio.sleep(0.3)
        try:
            payloads = []
            for i in range(bars):
                for s in symbols:
                    close = Decimal(100) + (Decimal(i) / 10 if orders else 0)  # +0.1 % a bar: BUY
                    bar = make_bar(s, i, close)
                    self.history.setdefault(s, []).append(bar)
                    payloads.append((f"md.bar.1s.sim.{s}", encode(bar)))
            pids = [a.process.pid for a in agents if a.process is not None]
            cpu_before = sum(cpu_s(pid) for pid in pids)
            t_pub = time.perf_counter()
            for k, (subject, data) in enumerate(payloads):
                await self.md.publish(subject, data)
                if k % 2000 == 1999:
                    await self.md.flush()
            await self.md.flush()
            publish_s = time.perf_counter() - t_pub
            deadline = time.monotonic() + 120
            while len(times) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            cpu = sum(cpu_s(pid) for pid in pids) - cpu_before
            await asyncio.sleep(0.2)
        finally:
            for sub in subs:
                await sub.unsubscribe()
            await self.stop_agents(agents, "orders" if orders else "hold")
        rate = (len(times) - 1) / ((times[-1] - times[0]) / 1e9) if len(times) > 1 else 0.0
        gone = [a.name for a in agents if a.returncode not in (None, 0, -signal.SIGTERM)]
        return {"agents_ended_early": gone, "replicas": n, "workload": "with_orders" if orders else "hold", "decided": len(times),
                "expected": expected, "overloaded": overloaded, "orders": ordered, "decisions_per_s": round(rate),
                "agent_cpu_s": round(cpu, 2), "decisions_per_cpu_s": round(len(times) / cpu) if cpu else None,
                "publish_per_s": round(len(payloads) / publish_s)}

    async def replicas(self, counts: list[int], symbols: int, bars: int, with_orders: bool) -> dict[str, Any]:
        runs = []
        base = 100_000
        order = counts + counts[::-1]  # alternated: 1, 2, 3, 3, 2, 1
        for workload in (False, True) if with_orders else (False,):
            for n in order:
                names = [f"S{base % 10**6:06d}{k:03d}-USD" for k in range(symbols)]
                runs.append(await self.replicas_round(n, names, bars, workload))
                base += 1
        best: dict[str, dict[int, int]] = {}
        per_cpu: dict[str, dict[int, int]] = {}
        for r in runs:
            if not r["decided"]:  # the agents were gone (agents_ended_early): no figure
                continue
            w = best.setdefault(r["workload"], {})
            w[r["replicas"]] = max(w.get(r["replicas"], 0), r["decisions_per_s"])
            c = per_cpu.setdefault(r["workload"], {})
            c[r["replicas"]] = max(c.get(r["replicas"], 0), r["decisions_per_cpu_s"] or 0)
        scaling = {w: {n: round(v / by[1], 2) for n, v in by.items()} for w, by in best.items() if by.get(1)}
        return {"symbols": symbols, "bars_per_symbol": bars, "runs": runs, "best_decisions_per_s": best,
                "vs_one_replica": scaling, "best_decisions_per_agent_cpu_s": per_cpu,
                "note": "decisions/s: wall clock, first to last Signal, all replicas together; "
                        "decisions_per_cpu_s: decided bars / CPU seconds of all agent processes in that "
                        "time (what one fully used core decides; each replica also takes every bar "
                        "into its own window)"}


def _echo(env: dict[str, str], subject: str) -> None:
    async def main() -> None:
        nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                                inbox_prefix=f"_INBOX.{env['NATS_USER']}")

        async def on_bar(msg: Any) -> None:
            await nc.publish("agent.signal.trading." + msg.subject.rsplit(".", 1)[-1], msg.data)

        await nc.subscribe(subject, cb=on_bar)
        await nc.flush()
        while True:
            await asyncio.sleep(3600)

    run_async(main())


def plot(result: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = (("best_decisions_per_s", "bar decisions / s (wall clock)"),
              ("best_decisions_per_agent_cpu_s", "bar decisions / agent CPU second"))
    for ax, (key, label) in zip(axes, panels):
        for workload, by in result[key].items():
            xs = sorted(int(n) for n in by)
            ax.plot(xs, [by[n] for n in xs], marker="o", label=workload)
        ax.set_xlabel("agent replicas (one queue group)")
        ax.set_ylabel(label)
        ax.set_xticks([1, 2, 3])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"trading agent: {os.cpu_count()} CPUs shared, load average {os.getloadavg()[0]:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(REPO_ROOT))


def run(ctx: Context) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="moonbus-bench-"))
    server = NatsServer(store_dir=tmp, credentials=load_or_create_credentials(tmp))
    server.start()
    try:
        server.provision()
        result = run_async(_run(server, tmp, ctx))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    png = plot(result["replicas"], ctx.results / "agent_decisions.png")
    result["replicas"]["plot"] = png
    return result


async def _run(server: NatsServer, tmp: Path, ctx: Context) -> dict[str, Any]:
    from bench.agent_ingest import ingest

    load = {"loadavg_before": os.getloadavg()}
    b = Bench(server, tmp)
    await b.open()
    try:
        q = ctx.quick
        latency = await b.latency(bars=10 if q else 60, rounds=1 if q else 2)
        replicas = await b.replicas([1, 2, 3], symbols=6 if q else 24, bars=100 if q else 500,
                                    with_orders=True)
    finally:
        await b.close()
    ingested = await ingest(server, 20_000 if ctx.quick else 200_000, 1 if ctx.quick else 5)
    load["loadavg_after"] = os.getloadavg()
    return {"latency": latency, "replicas": replicas, "ingest": ingested, "rss_mb": b.rss, "load": load}
