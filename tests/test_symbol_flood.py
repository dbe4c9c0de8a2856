"""A stolen market-data credential floods `md.tick.>` with made-up symbols: the real
rust-risk and rust-execution keep at most MAX_MARKET_SYMBOLS of them (moonbus_common::caps),
refuse the rest on errors.<service>, keep running, and trade the symbols they kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

import nats
import pytest

from services.common.caps import MAX_MARKET_SYMBOLS
from services.contract.models import ExecutionReport, OrderStatus
from services.devstack.launcher import System
from tests.conftest import RISK_ROOMY, SystemBus, connect_as, request_when_answered, system_fixture

pytestmark = pytest.mark.e2e

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USDC")  # what market-data's sim publishes
ENV = RISK_ROOMY | {
    "RUST_LOG": "warn",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "50",
    # Nothing goes stale during the flood: the cap, not the sweep of stale keys, is tested.
    "MOONBUS__RISK__STALE_AFTER_MS": "120000",
    "MOONBUS__EXECUTION__TICK_MAX_AGE_MS": "120000",
}
# Enough made-up symbols to pass the cap with the sim's own three kept.
FLOOD = MAX_MARKET_SYMBOLS + 50

system = system_fixture(ENV, tail=40)


class Bus(SystemBus):
    def __init__(self, system: System, nc: nats.NATS) -> None:
        super().__init__(system, nc)
        self.reports: dict[str, ExecutionReport] = {}
        self.capped: dict[str, list[dict]] = defaultdict(list)

    async def on_report(self, msg: nats.aio.msg.Msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id and report.status in (OrderStatus.FILLED, OrderStatus.REJECTED):
            self.reports[report.client_order_id] = report

    async def on_error(self, msg: nats.aio.msg.Msg) -> None:
        event = json.loads(msg.data)
        if "MAX_MARKET_SYMBOLS" in event["reason"] or "MAX_BOOK_LEVELS" in event["reason"]:
            self.capped[event["service"]].append(event)

    async def wait_serving(self) -> None:
        await self.nc.subscribe("errors.>", cb=self.on_error)
        await self.wait_active(SYMBOLS)
        await request_when_answered(self.nc, "exec.api.version")

    async def order(self, order_id: str, symbol: str) -> ExecutionReport:
        body = {"client_order_id": order_id, "agent": "operator", "symbol": symbol, "side": "BUY",
                "type": "MARKET", "quantity": "0.001", "origin_ts": 1, "ts": 1}
        await self.js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": order_id})
        await self.until(lambda: order_id in self.reports, f"the report of {order_id}")
        return self.reports[order_id]


bus = Bus.fixture()


async def test_a_flood_of_made_up_symbols_is_capped_and_the_kept_ones_still_trade(bus: Bus, system: System) -> None:
    thief = await connect_as(system, "market-data")
    try:
        ts = time.time_ns()
        for n in range(FLOOD):
            symbol = f"F{n}-USD"
            tick = {"venue": "sim", "symbol": symbol, "price": "1", "seq": 1, "ts": ts}
            await thief.publish(f"md.tick.sim.{symbol}", json.dumps(tick).encode())
            if n % 10_000 == 0:
                await thief.flush()  # paced: neither service may drop ticks as a slow consumer
        deep = {"venue": "sim", "symbol": "BTC-USD", "bids": [], "seq": 1, "ts": ts,
                "asks": [[str(100 + i), "1"] for i in range(1_001)]}
        await thief.publish("md.book.sim.BTC-USD", json.dumps(deep).encode())
        await thief.flush()
    finally:
        await thief.close()

    # Both refuse what passes the cap, each new symbol on errors.<service> with the reason.
    for service in ("risk", "execution"):
        await bus.until(lambda: any(f"F{FLOOD - 1}-USD" in e["reason"] for e in bus.capped[service]),
                        f"{service} refusing the last made-up symbol")
        refused = [e for e in bus.capped[service] if "MAX_MARKET_SYMBOLS" in e["reason"]]
        assert f"MAX_MARKET_SYMBOLS {MAX_MARKET_SYMBOLS}" in refused[-1]["reason"], refused[-1]
        assert refused[-1]["subject"] == f"md.tick.sim.F{FLOOD - 1}-USD", refused[-1]
        # Exactly what passed the cap: the sim's symbols and the first made-up ones were kept.
        assert len(refused) == FLOOD + len(SYMBOLS) - MAX_MARKET_SYMBOLS, len(refused)
    await bus.until(lambda: any("MAX_BOOK_LEVELS 1000" in e["reason"] for e in bus.capped["execution"]),
                    "execution refusing a book deeper than market-data publishes")

    # Still running, and still trading: a kept symbol fills; a refused one has no price (fail closed).
    filled = await bus.order("flood-kept", "BTC-USD")
    assert filled.status == OrderStatus.FILLED, filled
    refused_order = await bus.order("flood-refused", f"F{FLOOD - 1}-USD")
    assert refused_order.status == OrderStatus.REJECTED, refused_order
    assert "market_data" in refused_order.reason, refused_order.reason
    await asyncio.sleep(0)
