"""The public client (services/client.py) as the `operator` user against the session's real
nats-server: stand-in market-data / risk / execution on the NATS service API (as in
tests/test_cli.py), real orders in the real ORDERS stream, real reports in EXEC."""

from __future__ import annotations

import asyncio
import shlex
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from services.client import ApiError, BlockingMoonbusClient, ConnectError, MoonbusClient
from services.contract import subjects as S
from services.common.bus import Bus, RequestError, flush
from services.contract.models import (
    AccountState,
    ExecutionReport,
    KillSwitchRequest,
    KillSwitchState,
    MonitorStartRequest,
    MonitorStatusReply,
    MonitorStatusRequest,
    MonitorStopRequest,
    OrderStatus,
    Position,
    PositionsReply,
    PositionsRequest,
    PriceReply,
    PriceRequest,
    PricesReply,
    PricesRequest,
    Side,
    Tick,
    Timings,
    TradingState,
    VersionReply,
    encode,
    now_ns,
)
from services.devstack.natsserver import free_port
from services.common.streams import MSG_ID_HEADER

D = Decimal
PRICES = {"CLA-USD": "100.5", "CLB-USD": "0.00012345"}


def tick(symbol: str, price: str = "100.5") -> Tick:
    return Tick(venue="sim", symbol=symbol, price=D(price), bid=D(price), ask=D(price), seq=1, ts=now_ns())


def version(service: str) -> VersionReply:
    return VersionReply(service=service, version="9.9.9", started_ts=1)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """An empty env file: nothing from the repository's .moon/nats.env leaks into a test."""
    path = tmp_path / "nats.env"
    path.write_text("")
    return path


@pytest.fixture
async def client(nats_server, env_file) -> AsyncIterator[MoonbusClient]:
    async with MoonbusClient(nats_server.url, "operator", nats_server.credentials["operator"],
                             env_file=env_file) as moon:
        yield moon


@pytest.fixture
async def services(service_bus) -> AsyncIterator[list[KillSwitchRequest]]:
    """Stand-in market data and risk; yields the kill-switch requests risk got."""
    md = await service_bus("market-data")
    monitors: dict[str, MonitorStartRequest] = {}

    def status(symbol: str | None = None) -> MonitorStatusReply:
        return MonitorStatusReply.model_validate(
            {"monitors": [m.model_dump() for m in monitors.values() if symbol in (None, m.symbol)]})

    async def price(request: PriceRequest) -> PriceReply:
        if request.symbol not in PRICES:
            raise RequestError("unknown_symbol", f"no price for {request.symbol}")
        return PriceReply(tick=tick(request.symbol, PRICES[request.symbol]))

    async def prices(request: PricesRequest) -> PricesReply:
        return PricesReply(prices={s: tick(s, PRICES[s]) for s in request.symbols if s in PRICES},
                           missing=[s for s in request.symbols if s not in PRICES])

    async def start(request: MonitorStartRequest) -> MonitorStatusReply:
        monitors[request.symbol] = request
        return status()

    async def stop(request: MonitorStopRequest) -> MonitorStatusReply:
        if monitors.pop(request.symbol, None) is None:
            raise RequestError("not_found", f"no monitor for {request.symbol}")
        return status()

    async def show(request: MonitorStatusRequest) -> MonitorStatusReply:
        return status(request.symbol)

    async def md_version(_: S.VersionRequest) -> VersionReply:
        return version("market-data")

    await md.serve("stand-in market data", {
        S.MD_PRICE: (PriceRequest, price),
        S.MD_PRICES: (PricesRequest, prices),
        S.MD_MONITOR_START: (MonitorStartRequest, start),
        S.MD_MONITOR_STOP: (MonitorStopRequest, stop),
        S.MD_MONITOR_STATUS: (MonitorStatusRequest, show),
        S.MD_VERSION: (S.VersionRequest, md_version),
    })

    risk = await service_bus("risk")
    seen: list[KillSwitchRequest] = []
    switch = KillSwitchState(engaged=False, actor="nobody", reason="", changed_ts=1)

    async def positions(request: PositionsRequest) -> PositionsReply:
        position = Position(symbol="CLA-USD", quantity=D("10.5"), avg_price=D("95"), mark_price=D("100.5"),
                            realized_pnl=D("-1.25"), unrealized_pnl=D("57.75"), fees=D("1"), notional=D("1055.25"))
        account = AccountState(
            state=TradingState.ACTIVE, reasons=[], cash=D("9000"), equity=D("10055.25"), peak_equity=D("10100"),
            drawdown_pct=0.44, realized_pnl=D("-1.25"), unrealized_pnl=D("57.75"), day_pnl=D("56.5"), fees=D("1"),
            gross_exposure=D("1055.25"), open_positions=1, kill_switch=switch.engaged, ts=now_ns())
        return PositionsReply(positions=[p for p in [position] if request.symbol in (None, p.symbol)],
                              account=account)

    async def killswitch(request: KillSwitchRequest) -> KillSwitchState:
        nonlocal switch
        seen.append(request)
        if request.action != "status":
            switch = KillSwitchState(engaged=request.action == "engage", actor=request.actor, reason=request.reason,
                                     changed_ts=now_ns(), flatten_orders=2 if request.flatten else None)
        return switch

    async def risk_version(_: S.VersionRequest) -> VersionReply:
        return version("risk")

    await risk.serve("stand-in risk", {S.RISK_POSITIONS: (PositionsRequest, positions),
                                       S.risk_killswitch("operator"): (KillSwitchRequest, killswitch),
                                       S.RISK_VERSION: (S.VersionRequest, risk_version)})
    await flush(md.client)  # the endpoints' subscriptions are on the server before any request
    await flush(risk.client)
    yield seen


def uid() -> str:
    return uuid.uuid4().hex[:8].upper()


# ---------------------------------------------------------------- requests


async def test_market_data_calls(client: MoonbusClient, services) -> None:
    t = await client.get_realtime_price("CLA-USD")
    assert (t.symbol, t.price) == ("CLA-USD", D("100.5"))
    bulk = await client.get_bulk_prices(["CLA-USD", "CLB-USD", "CLX-USD"])
    assert bulk.prices["CLB-USD"].price == D("0.00012345") and bulk.missing == ["CLX-USD"]
    with pytest.raises(ApiError) as error:
        await client.get_realtime_price("CLX-USD")
    assert error.value.code == "unknown_symbol"

    assert not await client.is_monitor_active("CLA-USD")
    reply = await client.start_price_monitor("CLA-USD", threshold_pct=1.5, window_s=30)
    assert [(m.symbol, m.threshold_pct, m.window_s) for m in reply.monitors] == [("CLA-USD", 1.5, 30)]
    assert await client.is_monitor_active("CLA-USD") and not await client.is_monitor_active("CLB-USD")
    assert [m.symbol for m in (await client.monitors()).monitors] == ["CLA-USD"]
    assert (await client.stop_price_monitor("CLA-USD")).monitors == []
    assert not await client.is_monitor_active("CLA-USD")
    with pytest.raises(ApiError) as error:
        await client.stop_price_monitor("CLA-USD")
    assert error.value.code == "not_found"
    with pytest.raises(ValueError):  # checked before anything is sent
        await client.start_price_monitor("cla-usd")

    assert (await client.version()).service == "market-data"
    assert (await client.version("risk")).version == "9.9.9"
    with pytest.raises(ValueError):
        await client.version("nobody")


async def test_risk_calls(client: MoonbusClient, services: list[KillSwitchRequest]) -> None:
    reply = await client.positions()
    assert reply.positions[0].unrealized_pnl == D("57.75") and reply.account.equity == D("10055.25")
    assert (await client.positions("CLB-USD")).positions == []

    assert not (await client.kill_switch_status()).engaged
    state = await client.engage_kill_switch("bad fills", flatten=True)
    assert state.engaged and state.reason == "bad fills" and state.flatten_orders == 2
    assert (await client.kill_switch_status()).engaged
    assert not (await client.release_kill_switch("fixed")).engaged
    assert [(r.action, r.flatten) for r in services] == [("status", False), ("engage", True), ("status", False),
                                                          ("release", False)]
    assert all(r.actor == "moonbus-client" for r in services)


async def test_nobody_answering_is_a_clear_error(client: MoonbusClient) -> None:
    with pytest.raises(ApiError) as error:  # no execution running in this test
        await client.version("execution")
    assert error.value.code == "no_responders" and S.EXEC_VERSION in str(error.value)


async def test_connect_errors(nats_server, env_file) -> None:
    with pytest.raises(ConnectError, match="cannot reach NATS"):
        await MoonbusClient(f"nats://127.0.0.1:{free_port()}", "operator", "x", env_file=env_file,
                            timeout=0.5).connect()
    with pytest.raises(ConnectError, match="refused the credentials of operator"):
        await MoonbusClient(nats_server.url, "operator", "wrong", env_file=env_file).connect()
    with pytest.raises(ConnectError, match="does not exist"):
        MoonbusClient(env_file=env_file.parent / "missing.env")


async def test_credentials_found_as_moon_finds_them(nats_server, env_file, monkeypatch, services) -> None:
    for name in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CA"):
        monkeypatch.delenv(name, raising=False)
    env = nats_server.env_for("operator")
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k != "NATS_USER"))
    async with MoonbusClient(env_file=env_file) as moon:  # from the file; the user defaults to operator
        assert moon.user == "operator" and moon.url == nats_server.url
        assert (await moon.get_realtime_price("CLA-USD")).price == D("100.5")
    monkeypatch.setenv("NATS_PASSWORD", "wrong")  # the environment comes before the file
    with pytest.raises(ConnectError, match="refused"):
        await MoonbusClient(env_file=env_file).connect()


# ---------------------------------------------------------------- orders and subscriptions


async def test_submit_order_and_read_it_back(client: MoonbusClient, connect) -> None:
    symbol = f"CL{uid()}-USD"
    order = await client.submit_order(symbol, "BUY", "0.5", order_type="LIMIT", limit_price="99.5")
    assert (order.agent, order.side, order.quantity) == ("operator", Side.BUY, D("0.5"))
    execution = await connect("execution")
    report = ExecutionReport(client_order_id=order.client_order_id, agent="operator", symbol=symbol, side=Side.BUY,
                             status=OrderStatus.ACCEPTED, quantity=D("0.5"), timings=Timings(), ts=now_ns())
    await execution.jetstream().publish(S.exec_report(symbol), encode(report),
                                        headers={MSG_ID_HEADER: f"{order.client_order_id}:ACCEPTED:0"})
    (trail,) = await client.orders(limit=5, symbol=symbol)
    assert trail.client_order_id == order.client_order_id and trail.order == order
    assert trail.status == "ACCEPTED"
    with pytest.raises(ValueError):
        await client.submit_order(symbol, "BUY", "-1")


async def _publish_until(task: asyncio.Task, publish) -> None:
    for _ in range(100):
        if task.done():
            return
        await publish()
        await asyncio.sleep(0.05)


async def test_typed_subscriptions(client: MoonbusClient, connect) -> None:
    md = await connect("market-data")
    ticks = asyncio.create_task(_collect(client.ticks("CLA-USD", limit=2)))
    await _publish_until(ticks, lambda: md.publish(S.tick("sim", "CLA-USD"), encode(tick("CLA-USD"))))
    got = await asyncio.wait_for(ticks, 5)
    assert [type(t) for t in got] == [Tick, Tick] and got[0].price == D("100.5")

    # Anything that does not parse is skipped; the model comes from the catalogue.
    anything = asyncio.create_task(_collect(client.subscribe(S.ALL_TICKS, limit=1)))

    async def bad_then_good() -> None:
        await md.publish(S.tick("sim", "CLB-USD"), b'{"not": "a tick"}')
        await md.publish(S.tick("sim", "CLB-USD"), encode(tick("CLB-USD", "2")))

    await _publish_until(anything, bad_then_good)
    assert [t.price for t in await asyncio.wait_for(anything, 5)] == [D("2")]

    execution = await connect("execution")
    symbol = f"CL{uid()}-USD"
    report = ExecutionReport(client_order_id=f"cli-{uid()}", symbol=symbol, status=OrderStatus.REJECTED,
                             reason="test", timings=Timings(), ts=now_ns())
    reports = asyncio.create_task(_collect(client.reports(symbol, limit=1)))
    await _publish_until(reports, lambda: execution.publish(S.exec_report(symbol), encode(report)))
    assert (await asyncio.wait_for(reports, 5))[0].status == OrderStatus.REJECTED


async def _collect(iterator: AsyncIterator) -> list:
    return [m async for m in iterator]


# ---------------------------------------------------------------- the blocking form


async def test_blocking_client(nats_server, env_file, services, connect) -> None:
    md = await connect("market-data")
    password = nats_server.credentials["operator"]

    def script() -> tuple:
        with BlockingMoonbusClient(nats_server.url, "operator", password, env_file=env_file) as moon:
            price = moon.get_realtime_price("CLA-USD").price
            missing = moon.get_bulk_prices(["CLA-USD", "CLX-USD"]).missing
            moon.start_price_monitor("CLB-USD", 3.0, 10)
            active = moon.is_monitor_active("CLB-USD")
            moon.stop_price_monitor("CLB-USD")
            engaged = moon.engage_kill_switch("blocking").engaged
            released = not moon.release_kill_switch().engaged
            equity = moon.positions().account.equity
            try:
                moon.version("execution")
                error = None
            except ApiError as e:
                error = e.code
            ticks = list(moon.ticks("CLA-USD", limit=2))
            return price, missing, active, engaged, released, equity, error, ticks

    work = asyncio.create_task(asyncio.to_thread(script))
    await _publish_until(work, lambda: md.publish(S.tick("sim", "CLA-USD"), encode(tick("CLA-USD", "7"))))
    price, missing, active, engaged, released, equity, error, ticks = await asyncio.wait_for(work, 10)
    assert (price, missing, active, engaged, released, equity) == (D("100.5"), ["CLX-USD"], True, True, True,
                                                                    D("10055.25"))
    assert error == "no_responders"
    assert [t.price for t in ticks] == [D("7"), D("7")]


def test_blocking_connect_error(env_file) -> None:
    with pytest.raises(ConnectError):
        BlockingMoonbusClient(f"nats://127.0.0.1:{free_port()}", "operator", "x", env_file=env_file, timeout=0.5)


def test_the_example_runs_offline_syntax() -> None:
    """examples/client_example.py is valid Python that uses only the client's public names."""
    import ast
    source = (Path(__file__).resolve().parents[1] / "examples" / "client_example.py").read_text()
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "services.client"
                for a in n.names}
    assert imported <= {"BlockingMoonbusClient", "MoonbusClient", "ApiError", "ConnectError"} and imported


async def test_bus_call_checks_the_request_type(client: MoonbusClient) -> None:
    with pytest.raises(TypeError, match="PriceRequest"):
        await client.call(S.MD_PRICE_API, PricesRequest(symbols=["CLA-USD"]))


async def test_error_replies_carry_their_service_error_code(service_bus, connect) -> None:
    """A bad request answers NATS service error code 400, a handler that fails 500; the
    body is the ErrorReply in both."""
    bus: Bus = await service_bus("market-data")

    async def broken(_: PriceRequest) -> PriceReply:
        raise RuntimeError("boom")

    await bus.serve("broken", {S.MD_PRICE: (PriceRequest, broken)})
    operator = await connect("operator")
    bad = await operator.request(S.MD_PRICE, b'{"symbol": "nope"}', timeout=2)
    assert bad.headers["Nats-Service-Error-Code"] == "400" and b'"bad_request"' in bad.data
    failed = await operator.request(S.MD_PRICE, b'{"symbol": "CLA-USD"}', timeout=2)
    assert failed.headers["Nats-Service-Error-Code"] == "500" and b'"internal"' in failed.data
