"""Cross-venue arbitrage through the real binary: the release-built rust-market-data (started
by the launcher, as its own NATS user) runs the sim feed and the Hyperliquid connector, the
latter pointed at a local WebSocket stand-in of Hyperliquid that sends `l2Book` snapshots
we choose. A Hyperliquid book around the sim's quote gives no `md.arb.BTC-USD`; one whose
bid is above the sim's ask (by more than both taker fees and `min_net_bps`) gives one,
read as the gateway reads it (`md.>`) and checked against the contract's model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from pydantic import ValidationError
from websockets.asyncio.server import ServerConnection, serve

from services.cli.render import summary
from services.common.bus import flush
from services.contract.catalogue import model_for
from services.contract.models import ArbOpportunity, Book, decode
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

WAIT = 20.0
CENT = Decimal("0.01")


class HyperliquidStandIn:
    """Hyperliquid's public WebSocket on 127.0.0.1: takes the subscriptions, sends the
    `l2Book` snapshots of BTC it is given (each `time` later than the last)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.clients: set[ServerConnection] = set()
        self.connected = asyncio.Event()
        self.time_ms = int(time.time() * 1000)

    async def handler(self, ws: ServerConnection) -> None:
        self.clients.add(ws)
        self.connected.set()
        try:
            async for frame in ws:
                if json.loads(frame).get("method") == "ping":
                    await ws.send('{"channel":"pong"}')
        finally:
            self.clients.discard(ws)

    async def book(self, bids: list[tuple[Decimal, str]], asks: list[tuple[Decimal, str]]) -> None:
        self.time_ms = max(self.time_ms + 1, int(time.time() * 1000))
        side = lambda levels: [{"px": str(p), "sz": s, "n": 1} for p, s in levels]  # noqa: E731
        frame = json.dumps({"channel": "l2Book", "data": {"coin": "BTC", "time": self.time_ms,
                                                          "levels": [side(bids), side(asks)]}})
        for ws in list(self.clients):
            await ws.send(frame)


@pytest.fixture
async def stand_in() -> AsyncIterator[HyperliquidStandIn]:
    venue = HyperliquidStandIn()
    async with serve(venue.handler, "127.0.0.1", venue.port):
        yield venue


@pytest.fixture
async def system(tmp_path: Path, stand_in: HyperliquidStandIn) -> AsyncIterator[System]:
    binary = REPO_ROOT / SERVICES["market-data"].command[0]
    if not binary.exists():
        pytest.fail(f"{binary} missing: run `cargo build --release -p rust-market-data`")
    env = {
        "RUST_LOG": "warn",
        "MOONBUS__MARKET_DATA__FEEDS": '["sim", "hyperliquid"]',
        "MOONBUS__MARKET_DATA__METRICS_ADDR": '""',
        "MOONBUS__MARKET_DATA__HYPERLIQUID__WS_URL": f'"ws://127.0.0.1:{stand_in.port}"',
        "MOONBUS__MARKET_DATA__HYPERLIQUID__SYMBOLS": '["BTC"]',
    }
    # In a thread: the stand-in (this loop) must answer market-data's connection meanwhile.
    started = await asyncio.to_thread(
        lambda: System().start(port=free_port(), moon_dir=tmp_path, services=["market-data"], out=None,
                               env=env, supervise=False))
    try:
        yield started
    finally:
        await asyncio.to_thread(started.stop)
        print(started.tail(40))


async def test_two_venues_books_give_an_arb_only_when_fees_are_covered(
        system: System, stand_in: HyperliquidStandIn) -> None:
    env = system.env_for("gateway")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix="_INBOX.gateway")
    try:
        sim_books: asyncio.Queue[Book] = asyncio.Queue()
        arbs: asyncio.Queue[tuple[ArbOpportunity, int]] = asyncio.Queue()

        async def on_book(msg) -> None:
            await sim_books.put(decode(Book, msg.data))

        async def on_arb(msg) -> None:
            await arbs.put((decode(ArbOpportunity, msg.data), time.time_ns()))

        await nc.subscribe("md.book.sim.BTC-USD", cb=on_book)
        await nc.subscribe("md.arb.>", cb=on_arb)
        await flush(nc)
        await asyncio.wait_for(stand_in.connected.wait(), WAIT)
        sim = await asyncio.wait_for(sim_books.get(), WAIT)
        bid, ask = sim.bids[0][0], sim.asks[0][0]

        # Around the sim's quote (1 % wider each side): nothing to take.
        await stand_in.book([((bid * Decimal("0.99")).quantize(CENT), "1")],
                            [((ask * Decimal("1.01")).quantize(CENT), "1")])
        await asyncio.sleep(1.5)
        assert arbs.empty(), f"no arbitrage expected, got {arbs.get_nowait()}"

        # Hyperliquid bids 2 % above the sim's ask: buy on the sim, sell on Hyperliquid.
        sim = await asyncio.wait_for(sim_books.get(), WAIT)  # the sim's latest book
        high_bid = (sim.asks[0][0] * Decimal("1.02")).quantize(CENT)
        await stand_in.book([(high_bid, "0.5")], [((high_bid * Decimal("1.001")).quantize(CENT), "1")])
        arb, received_ns = await asyncio.wait_for(arbs.get(), WAIT)
    finally:
        await nc.close()

    assert (arb.symbol, arb.buy_venue, arb.sell_venue) == ("BTC-USD", "sim", "hyperliquid")
    assert arb.sell_price == high_bid and arb.sell_limit == high_bid
    # The fees of moonbus.toml's [market_data.arb]: sim 10 bps, hyperliquid 4.5.
    assert (arb.buy_fee_bps, arb.sell_fee_bps) == (Decimal(10), Decimal("4.5"))
    cost = arb.buy_price * (1 + arb.buy_fee_bps / 10_000)
    proceeds = arb.sell_price * (1 - arb.sell_fee_bps / 10_000)
    assert arb.net_bps == ((proceeds - cost) / cost * 10_000).quantize(Decimal("0.0001"))
    assert arb.net_bps > 150, "~2 % gross, 14.5 bps of fees"
    assert Decimal(0) < arb.quantity <= Decimal("0.5"), "at most the Hyperliquid bid's size"
    # Walking the sim's asks only makes each further unit dearer.
    assert arb.buy_limit >= arb.buy_price
    assert Decimal(0) < arb.profit <= arb.quantity * (proceeds - cost)
    # Detection latency: from the Hyperliquid book's arrival to the message.
    assert arb.source_ts <= arb.ts <= received_ns
    assert arb.ts - arb.source_ts < 1_000_000_000


def test_the_model_pairs_two_different_venues() -> None:
    raw = json.loads((REPO_ROOT / "proto/vectors/valid/ArbOpportunity/basic.json").read_text())
    arb = decode(ArbOpportunity, json.dumps(raw))
    assert arb.buy_venue == "coinbase"
    # `moon tail` and the gateway's stream know the subject, and say it in one line.
    assert model_for("md.arb.BTC-USD") is ArbOpportunity
    assert summary(arb) == "BTC-USD buy coinbase 100.00 sell sim 101.50: net 79.3738 bps x 2 = 1.59700"
    with pytest.raises(ValidationError, match="two different venues"):
        decode(ArbOpportunity, json.dumps({**raw, "sell_venue": raw["buy_venue"]}))
