"""Arbitrage detection latency of rust-market-data: a Hyperliquid book update in -> its
`md.arb.<symbol>` out, against the plain `md.book.hyperliquid.<symbol>` publish of the same
update measured in the same run (the baseline: same connector, same engine turn).

Loopback only, bounded: the release binary (started by the launcher, secure config, a
temp dir) runs the sim feed and the Hyperliquid connector pointed at a local WebSocket
stand-in of Hyperliquid. The stand-in sends `ROUNDS` `l2Book` snapshots of BTC, one per
`GAP_S`, each with a bid 2 % above the sim's ask (so each is an opportunity: buy on the sim,
sell on Hyperliquid) and a price of its own (`+ i` cents) that identifies it in both
outputs. `book_interval_ms = 1` and `[market_data.arb] min_interval_ms = 0` so that every
update is published on both subjects.

Figures (microseconds, nearest-rank percentiles):
- `arb_e2e_us` / `book_e2e_us`: the stand-in's send -> a NATS subscriber (the gateway's
  user) receiving the update's `md.arb` / `md.book` (WebSocket, the connector, the engine,
  nats-server, the subscriber; the same path but for the detection);
- `arb_detect_us`: `ts - source_ts` of each `md.arb`, inside market-data: the book's arrival
  (stamped by the connector) -> the opportunity built (the detection proper, and the
  queue hop from the connector task to the engine).
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
from services.contract.models import ArbOpportunity, Book, decode
from services.devstack.launcher import System
from services.devstack.natsserver import free_port

ROUNDS = 1000
GAP_S = 0.005
CENT = Decimal("0.01")
WAIT = 30.0


def run(ctx: Context) -> dict:
    rounds = 200 if ctx.quick else ROUNDS
    return asyncio.run(asyncio.wait_for(measure(rounds), timeout=180))


async def measure(rounds: int) -> dict:
    from websockets.asyncio.server import serve

    clients: set = set()
    connected = asyncio.Event()

    async def handler(ws) -> None:
        clients.add(ws)
        connected.set()
        try:
            async for frame in ws:
                if json.loads(frame).get("method") == "ping":
                    await ws.send('{"channel":"pong"}')
        finally:
            clients.discard(ws)

    ws_port = free_port()
    env = {
        "RUST_LOG": "warn",
        "MOONBUS__MARKET_DATA__FEEDS": '["sim", "hyperliquid"]',
        "MOONBUS__MARKET_DATA__METRICS_ADDR": '""',
        "MOONBUS__MARKET_DATA__BOOK_INTERVAL_MS": "1",
        "MOONBUS__MARKET_DATA__ARB__MIN_INTERVAL_MS": "0",
        "MOONBUS__MARKET_DATA__HYPERLIQUID__WS_URL": f'"ws://127.0.0.1:{ws_port}"',
        "MOONBUS__MARKET_DATA__HYPERLIQUID__SYMBOLS": '["BTC"]',
    }
    async with serve(handler, "127.0.0.1", ws_port):
        with tempfile.TemporaryDirectory(prefix="moonbus-bench-arb-") as moon_dir:
            system = await asyncio.to_thread(
                lambda: System().start(port=free_port(), moon_dir=Path(moon_dir), services=["market-data"],
                                       out=None, env=env, write_env_file=False, supervise=False))
            try:
                return await drive(system, clients, connected, rounds)
            except BaseException:
                print(system.tail(30))
                raise
            finally:
                await asyncio.to_thread(system.stop)


async def drive(system: System, clients: set, connected: asyncio.Event, rounds: int) -> dict:
    env = system.env_for("gateway")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix="_INBOX.gateway")
    sim_book: asyncio.Future[Book] = asyncio.get_running_loop().create_future()
    book_at: dict[Decimal, int] = {}
    arb_at: dict[Decimal, int] = {}
    detect_ns: list[int] = []

    async def on_sim(msg) -> None:
        if not sim_book.done():
            sim_book.set_result(decode(Book, msg.data))

    async def on_book(msg) -> None:
        now = time.time_ns()
        book = decode(Book, msg.data)
        if book.bids:
            book_at.setdefault(book.bids[0][0], now)

    async def on_arb(msg) -> None:
        now = time.time_ns()
        arb = decode(ArbOpportunity, msg.data)
        if arb.sell_venue == "hyperliquid" and arb.sell_price not in arb_at:
            arb_at[arb.sell_price] = now
            detect_ns.append(arb.ts - arb.source_ts)

    try:
        await nc.subscribe("md.book.sim.BTC-USD", cb=on_sim)
        await nc.subscribe("md.book.hyperliquid.BTC-USD", cb=on_book)
        await nc.subscribe("md.arb.BTC-USD", cb=on_arb)
        await nc.flush()
        await asyncio.wait_for(connected.wait(), WAIT)
        sim = await asyncio.wait_for(sim_book, WAIT)
        base = (sim.asks[0][0] * Decimal("1.02")).quantize(CENT)
        sent: dict[Decimal, int] = {}
        time_ms = int(time.time() * 1000)
        started = time.monotonic()
        for i in range(rounds):
            bid = base + i * CENT
            time_ms = max(time_ms + 1, int(time.time() * 1000))
            frame = json.dumps({"channel": "l2Book", "data": {"coin": "BTC", "time": time_ms, "levels": [
                [{"px": str(bid), "sz": "0.5", "n": 1}],
                [{"px": str((bid * Decimal("1.001")).quantize(CENT)), "sz": "1", "n": 1}]]}})
            sent[bid] = time.time_ns()
            for ws in list(clients):
                await ws.send(frame)
            await asyncio.sleep(GAP_S)
        deadline = time.monotonic() + 5
        while (len(arb_at) < rounds or len(book_at) < rounds) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        await nc.close()

    us = lambda ns: ns / 1000  # noqa: E731
    arb_e2e = [us(arb_at[p] - t) for p, t in sent.items() if p in arb_at]
    book_e2e = [us(book_at[p] - t) for p, t in sent.items() if p in book_at]
    arb_stats, book_stats = percentiles(arb_e2e), percentiles(book_e2e)
    return {
        "rounds": rounds,
        "gap_ms": GAP_S * 1000,
        "seconds": round(elapsed, 2),
        "arbs_received": len(arb_at),
        "books_received": len(book_at),
        "arb_e2e_us": arb_stats,
        "book_e2e_us": book_stats,
        "arb_detect_us": percentiles([us(n) for n in detect_ns]),
        "p50_arb_over_book": round(arb_stats["p50"] / book_stats["p50"], 3) if book_e2e and arb_e2e else None,
        "p99_arb_over_book": round(arb_stats["p99"] / book_stats["p99"], 3) if book_e2e and arb_e2e else None,
        "baseline": "md.book.hyperliquid.BTC-USD of the same update, same run",
        "path": "stand-in WebSocket -> Hyperliquid connector -> engine -> nats-server -> subscriber (loopback)",
    }
