"""How long a client_order_id stays taken, on the real system: nats-server with the secure
config and the release-built rust-market-data, rust-risk and rust-execution.

Execution's ledger keeps a final order's outcome for two weeks after its final report
(twice as long as ORDERS keeps an order; rust-execution ledger.rs), on the reports' clock.
Two FILLED reports are stored in EXEC as execution would have written them 15 and 13 days
ago; a restarted execution rebuilds its ledger from EXEC: an order sent again under the
15-day-old id is a new order (filled), one under the 13-day-old id is still a duplicate
(no report).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import nats
import pytest

from services.common.bus import flush
from services.common.streams import read_stream
from services.contract.models import ExecutionReport, OrderStatus, Side, Timings
from services.devstack.launcher import System
from tests.conftest import RISK_UNLIMITED, connect_as, request_when_answered, system_fixture

pytestmark = pytest.mark.e2e

WAIT = 60.0
DAY_NS = 86_400 * 10**9
ENV = RISK_UNLIMITED | {"RUST_LOG": "warn", "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20"}

system = system_fixture(ENV, tail=60)


@pytest.fixture
async def nc(system: System) -> AsyncIterator[nats.NATS]:
    client = await connect_as(system, "operator")
    try:
        yield client
    finally:
        await client.close()


async def submit(nc: nats.NATS, order_id: str, quantity: str) -> None:
    body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "side": "BUY", "type": "MARKET",
            "quantity": quantity, "origin_ts": 1, "ts": 1}
    await nc.jetstream().publish("orders.submit.operator.BTC-USD", json.dumps(body).encode(),
                                 headers={"Nats-Msg-Id": order_id})


async def in_exec(nc: nats.NATS, order_id: str) -> list[ExecutionReport]:
    reports = [ExecutionReport.model_validate_json(m.data) async for m in read_stream(nc, "EXEC", "exec.report.>")]
    return [r for r in reports if r.client_order_id == order_id]


async def until(condition, what: str, system: System) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}\n{system.tail(30)}"
        await asyncio.sleep(0.1)


async def test_an_id_is_taken_for_two_weeks_after_its_order_ended(system: System, nc: nats.NATS) -> None:
    filled: dict[str, ExecutionReport] = {}

    async def on_report(msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.status == OrderStatus.FILLED and report.client_order_id:
            filled[report.client_order_id] = report

    await nc.subscribe("exec.report.>", cb=on_report)
    await flush(nc)

    # Two orders that filled 15 and 13 days ago, stored as execution stored its reports then.
    as_execution = await connect_as(system, "execution")
    now = time.time_ns()
    try:
        for order_id, days in (("h-old", 15), ("h-recent", 13)):
            report = ExecutionReport(
                client_order_id=order_id, order_id=f"sim-{order_id}", agent="operator", symbol="BTC-USD",
                venue="sim", side=Side.BUY, status=OrderStatus.FILLED, quantity="0.001", filled_quantity="0.001",
                last_fill_price="90000", last_fill_quantity="0.001", avg_fill_price="90000", fee="0",
                timings=Timings(), ts=now - days * DAY_NS)
            ack = await as_execution.jetstream().publish("exec.report.BTC-USD", report.model_dump_json().encode())
            assert ack.seq
    finally:
        await as_execution.close()

    # Then orders of today (once risk has prices).
    async def first_fill() -> None:
        n = 0
        while not any(k.startswith("warm-") for k in filled):
            n += 1
            await submit(nc, f"warm-{n}", "0.001")
            await asyncio.sleep(1.0)
    await asyncio.wait_for(first_fill(), WAIT)

    # A restarted execution rebuilds its ledger from EXEC, on the reports' clock: by
    # today's report the 15-day-old outcome is forgotten, the 13-day-old one is not.
    system.kill("execution")
    system.restart("execution")
    await request_when_answered(nc, "exec.api.version")

    # Sent again: the 13-day-old id is a duplicate, the 15-day-old one a new order. Orders
    # of one symbol are taken in turn, so once "h-after" has filled, "h-recent" has been
    # handled.
    await submit(nc, "h-recent", "0.002")
    await submit(nc, "h-old", "0.002")
    await submit(nc, "h-after", "0.001")

    async def after_filled() -> bool:
        return "h-after" in filled and "h-old" in filled
    try:
        await until(after_filled, "h-old and h-after filled", system)
    except AssertionError:
        got = {k: [(r.status, r.reason, r.filled_quantity, r.ts) for r in await in_exec(nc, k)]
               for k in ("h-old", "h-recent", "h-after")}
        raise AssertionError(f"{got}\n{system.tail(40)}") from None
    recent = await in_exec(nc, "h-recent")
    assert [r.ts for r in recent] == [now - 13 * DAY_NS], "the 13-day-old id is still taken: no new report"
    old = await in_exec(nc, "h-old")
    assert old[0].ts == now - 15 * DAY_NS
    assert old[-1].status == OrderStatus.FILLED and old[-1].filled_quantity == Decimal("0.002")
    assert old[-1].ts > now, "executed again, as a new order"
