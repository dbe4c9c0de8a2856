"""A live venue's order path against the paper venue's, in the same system and run.

Orders from the operator, one at a time (latency, not throughput), alternating between
`venue = "binance"` (execution's Binance adapter, testnet mode, pointed at the local
stand-in tests/venues/binance.py on loopback: signed REST order, the fill from the user
data stream) and `venue = "sim"` (the paper venue). Per order, from the publish to ORDERS:
- `accepted`: the ACCEPTED report (live: risk's check + the write-ahead to EXEC);
- `filled`: the FILLED report.
The difference is what a venue costs beyond the paper path: the written-ahead ACCEPTED,
the REST round trip (HMAC signing, the stand-in's own checks), the user-stream event and
one more EXEC write. The stand-in answers at once; a real venue adds its network and
matching time on top.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import nats

from bench.__main__ import Context, percentiles
from bench._system import OPEN_RISK
from services.devstack.launcher import System
from services.devstack.natsserver import free_port
from tests.venues.binance import SPOT, StandIn

SYMBOL = "BTC-USDT"
ORDERS = 200


def run(ctx: Context) -> dict:
    return asyncio.run(measure(40 if ctx.quick else ORDERS))


async def measure(count: int) -> dict:
    venue = await StandIn(flavor=SPOT).start()
    venue.balances["USDT"] = Decimal("100000000")
    try:
        with tempfile.TemporaryDirectory(prefix="moonbus-live-bench-") as tmp:
            return await with_system(Path(tmp), venue, count)
    finally:
        await venue.stop()


async def with_system(tmp: Path, venue: StandIn, count: int) -> dict:
    env = {
        **OPEN_RISK,
        "RUST_LOG": "warn",
        "MOONBUS__SYSTEM__SYMBOLS": json.dumps([SYMBOL]),
        "MOONBUS__EXECUTION__VENUES": '["sim"]',
        "MOONBUS__EXECUTION__LIVE__BINANCE__KIND": '"binance_spot"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__MODE": '"testnet"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__MAX_NOTIONAL": '"100000000"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__SYMBOLS": '{ "BTC-USDT" = "BTCUSDT" }',
        "MOONBUS__EXECUTION__LIVE__BINANCE__REST_URL": json.dumps(venue.rest_url),
        "MOONBUS__EXECUTION__LIVE__BINANCE__WS_URL": json.dumps(venue.ws_url),
        "BINANCE_API_KEY": venue.api_key,
        "BINANCE_API_SECRET": venue.secret or "",
    }
    system = System()
    await asyncio.to_thread(system.start, port=free_port(), moon_dir=tmp,
                            services=["market-data", "risk", "execution"], out=None, env=env,
                            write_env_file=False)
    try:
        return await drive(system, count)
    except BaseException:
        print(system.tail(40))
        raise
    finally:
        await asyncio.to_thread(system.stop)


async def drive(system: System, count: int) -> dict:
    creds = system.env_for("operator")
    nc = await nats.connect(creds["NATS_URL"], user=creds["NATS_USER"], password=creds["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{creds['NATS_USER']}")
    seen: dict[str, dict[str, float]] = {}
    events: dict[str, asyncio.Event] = {}

    async def on_report(msg) -> None:
        report = json.loads(msg.data)
        cid = report.get("client_order_id")
        if cid in seen:
            seen[cid].setdefault(report["status"], time.perf_counter())
            if report["status"] in ("FILLED", "REJECTED", "EXPIRED", "FAILED"):
                events[cid].set()

    await nc.subscribe(f"exec.report.{SYMBOL}", cb=on_report)
    js = nc.jetstream()
    results: dict[str, dict[str, list[float]]] = {v: {"accepted": [], "filled": []} for v in ("binance", "sim")}
    refused: list[str] = []
    try:
        # Warm up: the market-data sim feed has no BTC-USDT of venue binance; the paper venue
        # and risk price both venues' orders from md.tick.sim.BTC-USDT.
        n = 0
        deadline = time.monotonic() + 60
        for i in range(2 * count + 20):
            venue = "binance" if i % 2 == 0 else "sim"
            n += 1
            cid = f"lb-{n}"
            seen[cid], events[cid] = {}, asyncio.Event()
            order = {"client_order_id": cid, "agent": "operator", "symbol": SYMBOL, "venue": venue, "side": "BUY",
                     "type": "MARKET", "quantity": "0.001", "origin_ts": 1, "ts": time.time_ns()}
            start = time.perf_counter()
            await js.publish(f"orders.submit.operator.{SYMBOL}", json.dumps(order).encode(),
                             headers={"Nats-Msg-Id": cid})
            await asyncio.wait_for(events[cid].wait(), timeout=30)
            marks = seen[cid]
            if "FILLED" not in marks:
                refused.append(cid)
                assert time.monotonic() < deadline, f"orders not filling: {marks}\n{system.tail(30)}"
                await asyncio.sleep(0.2)
                continue
            if i < 20:
                continue  # warm-up
            if "ACCEPTED" in marks:
                results[venue]["accepted"].append((marks["ACCEPTED"] - start) * 1000)
            results[venue]["filled"].append((marks["FILLED"] - start) * 1000)
    finally:
        await nc.close()
    live, paper = results["binance"], results["sim"]
    out = {
        "orders_per_venue": count,
        "live_binance_standin_ms": {k: percentiles(v) for k, v in live.items()},
        "paper_sim_ms": {"filled": percentiles(paper["filled"])},
        "refused_during_warmup": len(refused),
    }
    live_p50, paper_p50 = out["live_binance_standin_ms"]["filled"]["p50"], out["paper_sim_ms"]["filled"]["p50"]
    out["summary"] = (f"order -> FILLED p50/p99: live (Binance stand-in) {live_p50:.2f}/"
                      f"{out['live_binance_standin_ms']['filled']['p99']:.2f} ms, paper {paper_p50:.2f}/"
                      f"{out['paper_sim_ms']['filled']['p99']:.2f} ms (baseline, same run); "
                      f"ACCEPTED (written ahead) p50 {out['live_binance_standin_ms']['accepted']['p50']:.2f} ms")
    return out
