"""Gateway: every route against fake md.api / risk.api responders on the real
nats-server, through httpx + ASGITransport; bus errors mapped to HTTP codes."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from decimal import Decimal
from unittest import mock

import httpx
import pytest

from services.common.models import (
    AccountState,
    Bar,
    HistoryReply,
    Position,
    PositionsReply,
    PriceReply,
    PricesReply,
    Tick,
    TradingState,
    encode,
)
from services.gateway.app import create_app

D = Decimal
KNOWN = {"GWA-USD": "100.5", "GWB-USD": "2000"}
CONFIG = {"system": {"symbols": ["GWA-USD", "GWB-USD"]}, "gateway": {"request_timeout_s": 0.5}}
UNKNOWN = b'{"error": {"code": "unknown_symbol", "message": "unknown symbol"}}'


def tick(symbol: str) -> Tick:
    return Tick(venue="sim", symbol=symbol, price=D(KNOWN[symbol]), seq=1, ts=1)


def account() -> AccountState:
    return AccountState(
        state=TradingState.ACTIVE, cash=D("9000"), equity=D("10050.25"), peak_equity=D("10100"),
        drawdown_pct=0.5, realized_pnl=D(0), unrealized_pnl=D("50.25"), day_pnl=D("50.25"), fees=D("1"),
        gross_exposure=D("1050"), open_positions=1, kill_switch=False, ts=1,
    )


async def fake_market_data(md) -> list:
    async def price(msg) -> None:
        symbol = json.loads(msg.data)["symbol"]
        await msg.respond(encode(PriceReply(tick=tick(symbol))) if symbol in KNOWN else UNKNOWN)

    async def prices(msg) -> None:
        symbols = json.loads(msg.data)["symbols"]
        reply = PricesReply(prices={s: tick(s) for s in symbols if s in KNOWN},
                            missing=[s for s in symbols if s not in KNOWN])
        await msg.respond(encode(reply))

    async def history(msg) -> None:
        request = json.loads(msg.data)
        if request["symbol"] == "GWSLOW-USD":
            return  # never answers
        if request["symbol"] not in KNOWN:
            await msg.respond(UNKNOWN)
            return
        bars = [
            Bar(venue="sim", symbol=request["symbol"], interval=request["interval"], open=D("1"), high=D("2"),
                low=D("0.5"), close=D("1.5"), volume=D("10"), trades=3, start_ts=i, end_ts=i + 1)
            for i in range(request["limit"])
        ]
        await msg.respond(encode(HistoryReply(bars=bars)))

    subs = [
        await md.subscribe("md.api.price", cb=price),
        await md.subscribe("md.api.prices", cb=prices),
        await md.subscribe("md.api.history", cb=history),
    ]
    await md.flush()
    return subs


async def fake_risk(risk) -> list:
    async def positions(msg) -> None:
        pos = Position(symbol="GWA-USD", quantity=D("10.5"), avg_price=D("95"), realized_pnl=D(0),
                       unrealized_pnl=D("57.75"), fees=D("1"), notional=D("1055.25"))
        await msg.respond(encode(PositionsReply(positions=[pos], account=account())))

    sub = await risk.subscribe("risk.api.positions", cb=positions)
    await risk.flush()
    return [sub]


@pytest.fixture
async def client(connect, service_bus) -> AsyncIterator[httpx.AsyncClient]:
    # the bus and the responders' connections are closed by `service_bus` / `connect`
    md, risk = await connect("market-data"), await connect("risk")
    subs = await fake_market_data(md) + await fake_risk(risk)
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        c.risk_subs = subs[-1:]  # type: ignore[attr-defined]
        yield c


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "bus": "connected"})


async def test_price(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/price/GWA-USD")
    assert r.status_code == 200
    assert r.json()["tick"]["price"] == "100.5"  # money stays a decimal string


async def test_price_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/price/GWX-USD")
    assert (r.status_code, error_code(r)) == (404, "unknown_symbol")
    for bad in ("gwa-usd", "GWA.USD", "GWA-USD*"):
        r = await client.get(f"/api/price/{bad}")
        assert (r.status_code, error_code(r)) == (422, "bad_request"), bad
        assert "symbol" in r.json()["error"]["message"]


async def test_prices(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/prices", params={"symbols": "GWA-USD, GWX-USD"})
    assert r.status_code == 200
    body = r.json()
    assert list(body["prices"]) == ["GWA-USD"] and body["missing"] == ["GWX-USD"]
    r = await client.get("/api/prices")  # default: [system] symbols
    assert sorted(r.json()["prices"]) == ["GWA-USD", "GWB-USD"]
    r = await client.get("/api/prices", params={"symbols": "GWA-USD,bad.one"})
    assert (r.status_code, error_code(r)) == (422, "bad_request")


async def test_history(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/history/GWB-USD", params={"interval": "1s", "limit": 3})
    assert r.status_code == 200
    bars = r.json()["bars"]
    assert len(bars) == 3 and bars[0]["interval"] == "1s" and bars[0]["close"] == "1.5"
    assert len((await client.get("/api/history/GWB-USD")).json()["bars"]) == 100  # defaults 1m / 100
    for params in ({"limit": 0}, {"limit": "abc"}, {"interval": "1 minute"}):
        r = await client.get("/api/history/GWB-USD", params=params)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), params


async def test_timeout_is_503(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/history/GWSLOW-USD")
    assert (r.status_code, error_code(r)) == (503, "timeout")


async def test_positions_and_account(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/positions")
    assert r.status_code == 200
    (p,) = r.json()["positions"]
    assert (p["symbol"], p["quantity"], p["notional"]) == ("GWA-USD", "10.5", "1055.25")
    r = await client.get("/api/account")
    assert r.status_code == 200
    assert (r.json()["equity"], r.json()["state"]) == ("10050.25", "ACTIVE")


async def test_no_responders_is_503(client: httpx.AsyncClient) -> None:
    for sub in client.risk_subs:  # type: ignore[attr-defined]
        await sub.unsubscribe()
    r = await client.get("/api/account")
    assert (r.status_code, error_code(r)) == (503, "no_responders")


async def test_without_a_bus_everything_is_503() -> None:
    app = create_app(bus=None, config=CONFIG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/health")
        assert (r.status_code, r.json()["bus"]) == (503, "disconnected")
        r = await c.get("/api/price/GWA-USD")
        assert (r.status_code, error_code(r)) == (503, "bus_unavailable")


async def test_lifespan_connects_as_gateway_and_registers(nats_server, connect) -> None:
    operator = await connect("operator")
    app = create_app(config=CONFIG)
    with mock.patch.dict(os.environ, nats_server.env_for("gateway")):
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                assert (await c.get("/health")).status_code == 200
            info = json.loads((await operator.request("$SRV.INFO.gateway", b"", timeout=2)).data)
            assert info["name"] == "gateway"
    assert app.state.bus.nc.is_closed


async def test_main_serves_http_with_uvicorn(nats_server) -> None:
    import asyncio

    from services.common.natsserver import free_port
    from services.gateway import service

    port = free_port()
    config = {**CONFIG, "gateway": {"host": "127.0.0.1", "port": port}}
    stop = asyncio.Event()
    with mock.patch.dict(os.environ, nats_server.env_for("gateway")):
        task = asyncio.create_task(service.main(stop, config=config))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                for _ in range(100):
                    try:
                        r = await c.get("/health")
                        if r.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
                assert (r.status_code, r.json()["bus"]) == (200, "connected")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
