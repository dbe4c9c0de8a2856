"""Shorts through the real system (issue #14): nats-server with the secure config, the
release-built rust-market-data, rust-risk and rust-execution. Two live venues declared in
paper mode (the paper venue fills them; their kind is what risk's short rule reads):
`jup` (kind jupiter: spot) and `hl` (kind hyperliquid: perps), and the paper venue `sim`.

- a sell-to-open on `jup` is REJECTED `short_not_allowed` (execution asked risk);
- the same SELL on `hl` and on `sim` fills: risk books a short (position < 0);
- on `jup` a SELL of what was bought there fills (the symbol is short overall, the spot
  venue holds it), one more is refused again.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from tests.conftest import system_fixture
from tests.test_money_path import ENV as MONEY_PATH_ENV
from tests.test_money_path import Bus

pytestmark = pytest.mark.e2e

ENV = MONEY_PATH_ENV | {
    "MOONBUS__EXECUTION__LIVE__JUP__KIND": "jupiter",
    "MOONBUS__EXECUTION__LIVE__JUP__MODE": "paper",
    "MOONBUS__EXECUTION__LIVE__HL__KIND": "hyperliquid",
    "MOONBUS__EXECUTION__LIVE__HL__MODE": "paper",
}


system = system_fixture(ENV, tail=40)


class Orders(Bus):
    """The operator's orders, to a venue."""

    async def to(self, venue: str, side: str, quantity: str = "0.001") -> str:
        self.sent += 1
        order_id = f"sh-{self.sent}"
        body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "venue": venue,
                "side": side, "type": "MARKET", "quantity": quantity, "origin_ts": 1, "ts": 1}
        await self.js.publish("orders.submit.operator.BTC-USD", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": order_id})
        return order_id

    async def outcome(self, order_id: str):
        await self.until(lambda: order_id in self.terminal, f"the outcome of {order_id}")
        [report] = self.terminal[order_id]
        return report

    async def btc(self, expected: Decimal) -> None:
        """Wait until risk's BTC-USD position is `expected` (it books the fills from EXEC)."""
        seen = None
        for _ in range(600):
            positions = await self.ready_positions()
            seen = next((p.quantity for p in positions.positions if p.symbol == "BTC-USD"), Decimal(0))
            if seen == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"risk's BTC-USD position is {seen}, expected {expected}")


orders = Orders.fixture("orders")


async def test_shorts_on_paper_and_perps_not_on_spot(orders: Orders) -> None:
    refused = await orders.outcome(await orders.to("jup", "SELL"))
    assert refused.status.value == "REJECTED", refused
    assert refused.reason and refused.reason.startswith("short_not_allowed: "), refused
    assert "on jup (jupiter)" in refused.reason

    for venue in ("hl", "sim"):
        filled = await orders.outcome(await orders.to(venue, "SELL"))
        assert filled.status.value == "FILLED", filled
    await orders.btc(Decimal("-0.002"))  # a short, booked and held by risk

    # Bought on jup: jup holds 0.001 (the symbol is still short 0.001 overall): it may sell that.
    assert (await orders.outcome(await orders.to("jup", "BUY"))).status.value == "FILLED"
    # (risk counts what its books hold there: a SELL checked before it booked the fill would be refused)
    await orders.btc(Decimal("-0.001"))
    assert (await orders.outcome(await orders.to("jup", "SELL"))).status.value == "FILLED"
    again = await orders.outcome(await orders.to("jup", "SELL"))
    assert again.status.value == "REJECTED" and again.reason.startswith("short_not_allowed: "), again
    await orders.btc(Decimal("-0.002"))
