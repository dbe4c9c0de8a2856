"""The first trade, end to end, with the real system: nats-server with the secure
config, the three release-built Rust services and the Python agents, started by the
same launcher as `make run` on a free port in a temp dir.

simulated tick -> trading agent -> orders.submit (ORDERS stream) -> execution ->
risk.api.check -> paper fill -> exec.report (EXEC stream) -> risk position + risk.account
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from services.devstack.launcher import SERVICES, System
from services.contract.models import (
    AccountState,
    ExecutionReport,
    OrderRequest,
    OrderStatus,
    PositionsReply,
    PositionsRequest,
    encode,
)
from services.devstack.natsserver import REPO_ROOT, free_port
from services.common.streams import read_stream

pytestmark = pytest.mark.e2e

# Fast ticks and an eager strategy so a trade happens within seconds.
FAST = {
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    "MOONBUS__TRADING_AGENT__STRATEGY": "momentum",  # the eager strategy of the tests, not the default
    "MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK": "3",
    "MOONBUS__TRADING_AGENT__MOMENTUM_THRESHOLD_PCT": "0.001",
    "MOONBUS__SENTIMENT_AGENT__INTERVAL_S": "0.5",
    "RUST_LOG": "info",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    moon_dir: Path = tmp_path_factory.mktemp("e2e-moon")
    env = {**FAST, "MOONBUS__GATEWAY__PORT": str(free_port())}
    system = System().start(port=free_port(), moon_dir=moon_dir, out=None, env=env)
    try:
        yield system
    finally:
        system.stop()
        # Shown by pytest only when a test of this module failed.
        print(system.tail(60))


async def _operator(system: System) -> nats.NATS:
    env = system.env_for("operator")
    return await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"], inbox_prefix=f"_INBOX.{env['NATS_USER']}")


async def test_every_service_answers_the_service_api(system: System) -> None:
    nc = await _operator(system)
    try:
        expected = set(SERVICES)
        seen: set[str] = set()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while seen != expected and loop.time() < deadline:
            await nc.publish("$SRV.PING", b"", reply=inbox)
            try:
                while True:
                    msg = await sub.next_msg(timeout=0.5)
                    if msg.data:  # an empty message is the server's "no responders" status
                        seen.add(json.loads(msg.data)["name"])
            except nats.errors.TimeoutError:
                pass
        assert seen == expected, f"no $SRV.PING answer from {expected - seen}\n{system.tail()}"
    finally:
        await nc.close()


async def test_moon_status_calls_the_default_system_healthy(system: System) -> None:
    """What `make run` starts (the notifier is off by default) is the whole system: `moon
    status` exits 0 and misses nothing once every service is up."""
    from typer.testing import CliRunner

    from services.cli.main import app

    env = system.env_for("operator")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        result = await asyncio.to_thread(CliRunner().invoke, app, ["status", "--json"], env=env)
        status = json.loads(result.stdout)
        if result.exit_code == 0 or loop.time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert result.exit_code == 0 and status["healthy"], (status["missing"], status["problems"])
    assert status["missing"] == [] and "notifier" not in {s["name"] for s in status["services"]}


async def test_a_tick_triggered_order_is_filled_and_shows_in_the_position(system: System) -> None:
    nc = await _operator(system)
    js = nc.jetstream()
    try:
        reports: asyncio.Queue[ExecutionReport] = asyncio.Queue()
        accounts: list[AccountState] = []

        async def on_report(msg: nats.aio.msg.Msg) -> None:
            await reports.put(ExecutionReport.model_validate_json(msg.data))

        async def on_account(msg: nats.aio.msg.Msg) -> None:
            accounts.append(AccountState.model_validate_json(msg.data))

        await nc.subscribe("exec.report.>", cb=on_report)
        await nc.subscribe("risk.account", cb=on_account)

        fill: ExecutionReport | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while fill is None:
            remaining = deadline - loop.time()
            assert remaining > 0, f"no FILLED report from the trading agent within 90 s\n{system.tail()}"
            try:
                report = await asyncio.wait_for(reports.get(), timeout=remaining)
            except TimeoutError:
                continue
            if report.status is OrderStatus.FILLED and (report.client_order_id or "").startswith("trd-"):
                fill = report

        assert fill.symbol and fill.side and fill.last_fill_price and fill.last_fill_quantity
        assert fill.filled_quantity == fill.last_fill_quantity > 0
        assert fill.fee > 0
        # Every hop is stamped, in causal order, starting at the tick that caused the order.
        t = fill.timings
        assert t.origin_ts and t.received_ts and t.risk_checked_ts and t.filled_ts
        assert t.origin_ts <= t.received_ts <= t.risk_checked_ts <= t.filled_ts

        # The order the agent sent is in the ORDERS stream under its client_order_id.
        stored = await js.get_last_msg("ORDERS", f"orders.submit.trading.{fill.symbol}")
        assert stored.headers and stored.headers.get("Nats-Msg-Id")
        order = OrderRequest.model_validate_json(stored.data)
        assert order.agent == "trading" and order.symbol == fill.symbol

        # Risk saw the fill: its position equals the sum of all fills in the EXEC stream.
        # (The agent keeps trading meanwhile, so both sides are read again until they meet.)
        deadline = loop.time() + 15
        while True:
            filled = await _net_filled(nc, fill.symbol)
            positions = await _positions(nc, fill.symbol)
            held = positions.positions[0].quantity if positions.positions else Decimal(0)
            if held == filled and filled != 0:
                break
            assert loop.time() < deadline, f"risk position {held} != fills {filled}\n{system.tail()}"
            await asyncio.sleep(0.05)
        assert positions.account.fees > 0

        # ... and published it on risk.account.
        deadline = loop.time() + 10
        while not any(a.open_positions > 0 and a.fees > 0 for a in accounts):
            assert loop.time() < deadline, f"risk.account never showed the position: {accounts[-3:]}"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def test_an_invalid_order_is_rejected_with_a_reason(system: System) -> None:
    nc = await _operator(system)
    js = nc.jetstream()
    try:
        sub = await nc.subscribe("exec.report.BTC-USD")
        bad = {
            "client_order_id": "e2e-bad-1",
            "agent": "operator",
            "symbol": "BTC-USD",
            "side": "BUY",
            "quantity": 0.5,  # float money: refused
            "origin_ts": 0,
            "ts": 0,
        }
        await js.publish("orders.submit.operator.BTC-USD", json.dumps(bad).encode(), headers={"Nats-Msg-Id": "e2e-bad-1"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            msg = await sub.next_msg(timeout=max(0.1, deadline - loop.time()))
            report = ExecutionReport.model_validate_json(msg.data)
            if report.client_order_id == "e2e-bad-1":
                break
        assert report.status is OrderStatus.REJECTED
        assert report.reason and "decimal string" in report.reason
        # Execution is still serving: a valid request still gets answered by risk.
        reply = await nc.request("risk.api.positions", encode(PositionsRequest()), timeout=5)
        PositionsReply.model_validate_json(reply.data)
    finally:
        await nc.close()


async def _net_filled(nc: nats.NATS, symbol: str) -> Decimal:
    """Signed sum of all fills of `symbol` in the EXEC stream, read by direct gets."""
    net = Decimal(0)
    async for stored in read_stream(nc, "EXEC", f"exec.report.{symbol}"):
        report = ExecutionReport.model_validate_json(stored.data)
        if report.last_fill_quantity and report.side:
            net += report.last_fill_quantity if report.side.value == "BUY" else -report.last_fill_quantity
    return net


async def _positions(nc: nats.NATS, symbol: str) -> PositionsReply:
    msg = await nc.request("risk.api.positions", encode(PositionsRequest(symbol=symbol)), timeout=5)
    return PositionsReply.model_validate_json(msg.data)
