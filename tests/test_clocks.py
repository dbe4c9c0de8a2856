"""Clocks end to end (issue 11), on the real rust-risk and rust-execution (release builds,
secure nats-server, launcher in a temp dir). The test is the market-data feed: it publishes
BTC-USD ticks as the market-data user, with whatever `ts` it likes.

Staleness is judged on receive time, never on the sender's clock, and the last tick received
is the price (venue.rs Market; rust-risk's marks):
- a tick dated an hour ahead, then ordinary ticks: fills use the ordinary ticks' prices
  (a max-ts rule would have frozen the price at the future tick's);
- market-data's clock stepping back an hour: execution fills at, and risk approves on, the
  fresh prices;
- no tick received for longer than the max age (the last one dated in the future): orders
  are still refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from services.common.bus import flush
from services.contract.models import ExecutionReport, OrderStatus
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

WAIT = 60.0
HOUR_NS = 3600 * 10**9
ENV = {
    "RUST_LOG": "warn",
    "MOONBUS__RISK__STALE_AFTER_MS": "1000",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",  # the prices jump here on purpose
    "MOONBUS__EXECUTION__TICK_MAX_AGE_MS": "1000",
    "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["risk", "execution"], out=None,
                            env=ENV, supervise=False)
    try:
        yield system
    finally:
        system.stop()
        print(system.tail(40))


async def connect_as(system: System, user: str) -> nats.NATS:
    env = system.env_for(user)
    return await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                              inbox_prefix=f"_INBOX.{user}")


class Feed:
    """Publishes a BTC-USD tick every 50 ms at `price`, dated now + `skew_ns`, while `on`."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc, self.price, self.skew_ns, self.on, self.seq = nc, "100.00", 0, True, 0

    async def send(self, price: str, ts: int) -> None:
        self.seq += 1
        tick = {"venue": "sim", "symbol": "BTC-USD", "price": price, "seq": self.seq, "ts": ts}
        await self.nc.publish("md.tick.sim.BTC-USD", json.dumps(tick).encode())
        await flush(self.nc)

    async def run(self) -> None:
        while True:
            if self.on:
                await self.send(self.price, time.time_ns() + self.skew_ns)
            await asyncio.sleep(0.05)


@pytest.fixture
async def feed(system: System) -> AsyncIterator[Feed]:
    nc = await connect_as(system, "market-data")
    f = Feed(nc)
    task = asyncio.create_task(f.run())
    try:
        yield f
    finally:
        task.cancel()
        await nc.close()


class Orders:
    def __init__(self, nc: nats.NATS) -> None:
        self.nc, self.n, self.reports = nc, 0, {}

    async def on_report(self, msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.status in (OrderStatus.FILLED, OrderStatus.REJECTED):
            self.reports[report.client_order_id] = report

    async def buy(self) -> ExecutionReport:
        self.n += 1
        order_id = f"clk-{self.n}"
        body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "side": "BUY",
                "type": "MARKET", "quantity": "0.01", "origin_ts": 1, "ts": 1}
        await self.nc.jetstream().publish("orders.submit.operator.BTC-USD", json.dumps(body).encode(),
                                          headers={"Nats-Msg-Id": order_id})
        deadline = time.monotonic() + WAIT
        while order_id not in self.reports:
            assert time.monotonic() < deadline, f"no outcome for {order_id}"
            await asyncio.sleep(0.05)
        return self.reports[order_id]


@pytest.fixture
async def orders(system: System) -> AsyncIterator[Orders]:
    nc = await connect_as(system, "operator")
    o = Orders(nc)
    await nc.subscribe("exec.report.>", cb=o.on_report)
    try:
        yield o
    finally:
        await nc.close()


async def filled_at(orders: Orders) -> Decimal:
    """One BUY until it fills (risk may still be rebuilding at first); its price."""
    deadline = time.monotonic() + WAIT
    while True:
        report = await orders.buy()
        if report.status == OrderStatus.FILLED:
            assert report.avg_fill_price is not None
            return report.avg_fill_price
        assert time.monotonic() < deadline, f"never filled: {report.reason}"
        await asyncio.sleep(0.3)


async def settle(feed: Feed, price: str, skew_ns: int) -> None:
    feed.price, feed.skew_ns = price, skew_ns
    await asyncio.sleep(0.3)  # a few ticks at the new price and clock


async def test_staleness_is_judged_on_receive_time(system: System, feed: Feed, orders: Orders) -> None:
    # Ordinary market: fills near 100 (paper slippage 5 bps on the last price).
    assert Decimal("100") <= await filled_at(orders) < Decimal("100.1")

    # One tick dated an hour ahead at 150, then ordinary ticks at 101: 101 is the price.
    await feed.send("150.00", time.time_ns() + HOUR_NS)
    await settle(feed, "101.00", 0)
    assert Decimal("101") <= await filled_at(orders) < Decimal("101.1")

    # market-data's clock steps back an hour: its ticks at 102 are still the fresh market.
    # (A risk judging age by the sender's ts would refuse every order: filled_at times out.)
    await settle(feed, "102.00", -HOUR_NS)
    assert Decimal("102") <= await filled_at(orders) < Decimal("102.1")

    # The feed stops, its last tick dated an hour ahead: after the max age (1 s) the market
    # is stale whatever that tick's ts says, and orders are refused.
    feed.on = False
    await asyncio.sleep(0.1)
    await feed.send("103.00", time.time_ns() + HOUR_NS)
    await asyncio.sleep(1.5)
    report = await orders.buy()
    assert report.status == OrderStatus.REJECTED, report
    assert "stale_market_data" in (report.reason or ""), report.reason

    # The feed is back: orders fill again.
    feed.on = True
    await settle(feed, "104.00", 0)
    assert Decimal("104") <= await filled_at(orders) < Decimal("104.1")


async def test_a_restarted_execution_waits_for_the_market_before_taking_orders(
        system: System, feed: Feed, orders: Orders) -> None:
    """Orders stored while execution is down are taken only after `market_warmup_ms` (500)
    of ticks: a restarted execution has no price yet, and would REJECT them
    `no_market_price` (with market_warmup_ms = 0 they are)."""
    assert (await filled_at(orders)) > 0  # risk is up and has a mark
    system.kill("execution")
    waiting = []
    for _ in range(3):
        orders.n += 1
        order_id = f"warm-{orders.n}"
        body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "side": "BUY",
                "type": "MARKET", "quantity": "0.01", "origin_ts": 1, "ts": 1}
        await orders.nc.jetstream().publish("orders.submit.operator.BTC-USD", json.dumps(body).encode(),
                                            headers={"Nats-Msg-Id": order_id})
        waiting.append(order_id)
    system.restart("execution")
    deadline = time.monotonic() + WAIT
    while not all(o in orders.reports for o in waiting):
        assert time.monotonic() < deadline, f"no outcome for {[o for o in waiting if o not in orders.reports]}"
        await asyncio.sleep(0.05)
    outcomes = {o: (orders.reports[o].status, orders.reports[o].reason) for o in waiting}
    assert all(status == OrderStatus.FILLED for status, _ in outcomes.values()), outcomes
