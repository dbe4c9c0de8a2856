"""Agent ingest rate and decision latency (`make bench BENCH=agent_ingest`).

1. Ingest: ticks/s one agent process takes in on `md.tick.>`, against a raw nats-py
   subscriber of the same payloads in the same run (each in its own process, a publisher
   process feeding a real nats-server). Paths:
   - `raw`: a nats-py callback that only counts (the ceiling);
   - `agent`: the trading agent's tick path (`context.LatestTicks.on_message`: every
     tick checked against the contract on arrival with `services/contract/wire.checker`,
     which reads it with the contract's Rust types when moonbus_sim is installed,
     a malformed one refused with the model's reason; the latest raw tick per subject
     kept, a Tick built only when a decision reads it);
   - `typed`: `Bus.subscribe(..., Tick, ...)`, a full pydantic model built for every tick
     (what the agents do for bars, alerts, verdicts), to show what eager building costs.
2. Decision latency: bar published (its end_ts) -> order seen on `orders.submit.<symbol>`
   (acknowledged by the ORDERS stream), and -> Signal, for the deterministic strategy, with
   the real `python -m services.trading_agent` (history from a fake md.api.history here,
   asked once per symbol: the agent keeps its own rolling bars). bench/agent_decisions.py
   measures the same path against a raw nats-py baseline, and decisions/s per replica.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import shutil
import signal
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats

from bench.__main__ import Context, percentiles
from bench._system import agent_child_env
from services.common.bus import Bus, run_async
from services.devstack.launcher import Child, Output
from services.contract.models import (
    AccountState,
    Bar,
    OrderRequest,
    Signal,
    Tick,
    TradingState,
    Verdict,
    encode,
    now_ns,
)
from services.devstack.natsserver import REPO_ROOT, NatsServer, load_or_create_credentials
from services.trading_agent.context import LatestTicks

SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USDC"]
PATHS = ("raw", "agent", "typed")


# ---------------------------------------------------------------- ingest


def tick_payloads(count: int = 3000) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        price = Decimal(97000) + Decimal(i % 500) / 100
        t = Tick(venue="sim", symbol=symbol, price=price, bid=price - Decimal("0.01"), ask=price + Decimal("0.01"),
                 size=Decimal("0.25"), seq=i, ts=now_ns())
        out.append((f"md.tick.sim.{symbol}", encode(t)))
    return out


async def _subscribe(path: str, env: dict[str, str]) -> tuple[Any, Any]:
    """Connect as the trading agent and subscribe `path`; returns (connection, count())."""
    bus = Bus("trading-agent")
    await bus.connect(env["NATS_URL"], env["NATS_USER"], env["NATS_PASSWORD"])
    n = 0
    if path == "raw":
        async def raw(_msg: Any) -> None:
            nonlocal n
            n += 1

        await bus.client.subscribe("md.tick.>", cb=raw)
        return bus, lambda: n
    if path == "agent":
        latest = LatestTicks(bus)
        await bus.client.subscribe("md.tick.>", cb=latest.on_message)  # as ContextSource.subscribe does
        return bus, lambda: latest.received

    async def typed(_tick: Tick, _msg: Any) -> None:
        nonlocal n
        n += 1

    await bus.subscribe("md.tick.>", Tick, typed)
    return bus, lambda: n


def _subscriber(path: str, env: dict[str, str], total: int, pipe: Any) -> None:
    async def main() -> None:
        bus, count = await _subscribe(path, env)
        await bus.client.flush()
        pipe.send("ready")
        first = last = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now, seen = time.perf_counter(), count()
            if first is None and seen:
                first = (now, seen)
            if seen >= total:
                last = (now, seen)
                break
            await asyncio.sleep(0.002)
        await bus.close()
        pipe.send({"first": first, "last": last, "received": count()})

    run_async(main())


async def _publish(env: dict[str, str], payloads: list[tuple[str, bytes]], total: int) -> float:
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"], inbox_prefix=f"_INBOX.{env['NATS_USER']}",
                            pending_size=64 * 1024 * 1024)
    start = time.perf_counter()
    for i, (subject, data) in zip(range(total), itertools.cycle(payloads)):
        await nc.publish(subject, data)
        if i % 5000 == 4999:
            await nc.flush()
    await nc.flush()
    elapsed = time.perf_counter() - start
    await nc.close()
    return total / elapsed


async def ingest_once(server: NatsServer, path: str, total: int, payloads: list[tuple[str, bytes]]) -> dict[str, Any]:
    mp = multiprocessing.get_context("spawn")
    mine, theirs = mp.Pipe()
    proc = mp.Process(target=_subscriber, args=(path, server.env_for("trading-agent"), total, theirs))
    proc.start()
    try:
        if not await asyncio.to_thread(mine.poll, 30) or mine.recv() != "ready":
            raise RuntimeError(f"{path} subscriber did not start")
        publish_rate = await _publish(server.env_for("market-data"), payloads, total)
        if not await asyncio.to_thread(mine.poll, 150):
            raise RuntimeError(f"{path} subscriber did not report")
        report = mine.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    first, last = report["first"], report["last"]
    if not (first and last) or last[0] <= first[0]:
        return {"path": path, "received": report["received"], "rate": 0.0, "publish_rate": round(publish_rate)}
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return {"path": path, "received": report["received"], "rate": round(rate), "publish_rate": round(publish_rate)}


async def ingest(server: NatsServer, total: int, rounds: int) -> dict[str, Any]:
    """Each path once per round, rounds interleaved. Three processes (publisher, server,
    subscriber) share the 2 cores, so one round's figures move by +-20 %: the ratios are
    the median of the rounds' own ratios (each against the raw run of its round)."""
    payloads = tick_payloads()
    runs = []
    for _ in range(rounds):  # interleaved, so load changes hit every path alike
        for path in PATHS:
            runs.append(await ingest_once(server, path, total, payloads))
    rates = {p: [r["rate"] for r in runs if r["path"] == p] for p in PATHS}

    ratios = {p: [round(a / b, 3) for a, b in zip(rates[p], rates["raw"]) if b] for p in ("agent", "typed")}
    return {
        "ticks_per_run": total,
        "tick_bytes": round(sum(len(d) for _, d in payloads) / len(payloads)),
        "runs": runs,
        "median_ticks_per_s": {p: round(statistics.median(v)) for p, v in rates.items()},
        "best_ticks_per_s": {p: max(v) for p, v in rates.items()},
        "agent_vs_raw_per_round": ratios["agent"],
        "agent_vs_raw": statistics.median(ratios["agent"]) if ratios["agent"] else None,
        "typed_vs_raw": statistics.median(ratios["typed"]) if ratios["typed"] else None,
    }


# ---------------------------------------------------------------- decision latency

AGENT_CONFIG = """
[trading_agent]
strategy = "momentum"
momentum_lookback = 2
momentum_threshold_pct = 0.01
metrics_port = 0
"""


async def decision_latency(server: NatsServer, tmp: Path, bars: int) -> dict[str, Any]:
    (tmp / "bench.toml").write_text(AGENT_CONFIG)
    env = agent_child_env(server.env_for("trading-agent"), tmp / "bench.toml")
    agent = Child("trading-agent", [sys.executable, "-m", "services.trading_agent"], env, REPO_ROOT,
                  Output(None, []), keep_lines=200)

    async def connect(user: str) -> nats.NATS:
        return await nats.connect(server.url, user=user, password=server.credentials[user], inbox_prefix=f"_INBOX.{user}")

    md, risk, operator = await connect("market-data"), await connect("risk"), await connect("operator")
    history: dict[str, list[Bar]] = {s: [] for s in SYMBOLS}
    order_ms: list[float] = []
    signal_ms: list[float] = []

    async def serve_history(msg: Any) -> None:
        request = json.loads(msg.data)
        have = history[request["symbol"]][-request["limit"]:]
        await msg.respond(json.dumps({"bars": [json.loads(encode(b)) for b in have]}).encode())

    async def on_order(msg: Any) -> None:
        order_ms.append((now_ns() - OrderRequest.model_validate_json(msg.data).origin_ts) / 1e6)

    async def on_signal(msg: Any) -> None:
        signal_ms.append((now_ns() - Signal.model_validate_json(msg.data).origin_ts) / 1e6)

    await md.subscribe("md.api.history", cb=serve_history)
    await operator.subscribe("orders.submit.>", cb=on_order)
    await operator.subscribe("agent.signal.trading.>", cb=on_signal)

    async def heartbeat() -> None:
        d = Decimal
        while True:
            for s in SYMBOLS:
                verdict = Verdict(symbol=s, state=TradingState.ACTIVE, ts=now_ns())
                await risk.publish(f"risk.verdict.{s}", encode(verdict))
            account = AccountState(state=TradingState.ACTIVE, cash=d(10**9), equity=d(10**9), peak_equity=d(10**9),
                                   drawdown_pct=0.0, realized_pnl=d(0), unrealized_pnl=d(0), day_pnl=d(0), fees=d(0),
                                   gross_exposure=d(0), open_positions=0, kill_switch=False, ts=now_ns())
            await risk.publish("risk.account", encode(account))
            await asyncio.sleep(0.5)

    agent.start()
    beat = asyncio.create_task(heartbeat())
    try:
        await asyncio.to_thread(agent.wait_for, "trading agent ready", 60)
        await asyncio.sleep(1.0)
        for i in range(bars + 1):  # strictly rising closes: every bar after the first is a BUY
            for s in SYMBOLS:
                end = now_ns()
                close = Decimal(100) + Decimal(i) / 10
                bar = Bar(venue="sim", symbol=s, interval="1s", open=close, high=close, low=close, close=close,
                          volume=Decimal(1), trades=1, start_ts=end - 10**9, end_ts=end)
                history[s].append(bar)
                await md.publish(f"md.bar.1s.sim.{s}", encode(bar))
            await asyncio.sleep(0.03)
        deadline = time.monotonic() + 20
        while len(order_ms) < bars * len(SYMBOLS) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        beat.cancel()
        agent.stopping = True
        agent.signal(signal.SIGTERM)
        if agent.process is not None:
            await asyncio.to_thread(agent.process.wait, 10)
        for nc in (md, risk, operator):
            await nc.close()
    return {
        "bars_published": (bars + 1) * len(SYMBOLS),
        "bar_to_order_ms": percentiles(order_ms),
        "bar_to_signal_ms": percentiles(signal_ms),
        "note": "bar end_ts (stamped at publish) -> order on orders.submit (after the ORDERS ack) / Signal; "
                "md.api.history asked once per symbol (the agent's own rolling bars); momentum strategy, "
                "separate agent process",
    }


# ---------------------------------------------------------------- harness entry


def run(ctx: Context) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="moonbus-bench-"))
    server = NatsServer(store_dir=tmp, credentials=load_or_create_credentials(tmp))
    server.start()
    try:
        server.provision()  # ORDERS: every order waits for its stream ack, as in the system
        total, rounds, bars = (20_000, 1, 20) if ctx.quick else (200_000, 5, 150)
        result = run_async(_run(server, tmp, total, rounds, bars))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


async def _run(server: NatsServer, tmp: Path, total: int, rounds: int, bars: int) -> dict[str, Any]:
    ingested = await ingest(server, total, rounds)
    return {"ingest": ingested, "decision_latency": await decision_latency(server, tmp, bars)}
