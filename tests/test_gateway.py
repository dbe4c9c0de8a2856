"""Gateway REST: every route against fake md.api / risk.api responders on the real
nats-server (and the real ORDERS / EXEC streams), through httpx + ASGITransport; bus
errors mapped to HTTP codes; the bearer token on every write; metrics; the OpenAPI spec.
The live state, the stream and the dashboard: tests/test_gateway_live.py."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from unittest import mock

import httpx
import pytest

from services.common.models import (
    AccountState,
    Bar,
    ExecutionReport,
    HistoryReply,
    KillSwitchState,
    LimitsReply,
    OrderRequest,
    OrderStatus,
    Position,
    PositionsReply,
    PriceReply,
    PricesReply,
    RiskLimits,
    Side,
    Tick,
    Timings,
    TradingState,
    encode,
)
from services.common.streams import MSG_ID_HEADER, ORDERS, ensure_streams
from services.gateway.app import create_app

D = Decimal
KNOWN = {"GWA-USD": "100.5", "GWB-USD": "2000"}
CONFIG = {"system": {"symbols": ["GWA-USD", "GWB-USD"]}, "gateway": {"request_timeout_s": 0.5}}
TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN = b'{"error": {"code": "unknown_symbol", "message": "unknown symbol"}}'


def tick(symbol: str) -> Tick:
    return Tick(venue="sim", symbol=symbol, price=D(KNOWN[symbol]), seq=1, ts=time.time_ns())


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
        end = time.time_ns() // 10**9 * 10**9  # the last `limit` whole seconds, closes going up and down
        closes = [D(KNOWN[request["symbol"]]) + D(i % 7) / 10 for i in range(request["limit"])]
        bars = [
            Bar(venue="sim", symbol=request["symbol"], interval=request["interval"], open=c, high=c, low=c, close=c,
                volume=D("10"), trades=3, start_ts=end - (len(closes) - i) * 10**9,
                end_ts=end - (len(closes) - i - 1) * 10**9)
            for i, c in enumerate(closes)
        ]
        await msg.respond(encode(HistoryReply(bars=bars)))

    subs = [
        await md.subscribe("md.api.price", cb=price),
        await md.subscribe("md.api.prices", cb=prices),
        await md.subscribe("md.api.history", cb=history),
    ]
    await md.flush()
    return subs


LIMITS = RiskLimits(max_order_notional=D("1000"), max_position_notional=D("5000"), max_gross_exposure=D("20000"),
                    min_cash=D("100"), max_daily_loss=D("500"), max_drawdown_pct=10.0)


async def fake_risk(risk, seen: list[tuple[str, dict]] | None = None) -> list:
    """positions, killswitch (engage / release / status, remembered) and limits; every
    request is appended to `seen` as (subject, body)."""
    seen = [] if seen is None else seen
    switch = KillSwitchState(engaged=False, actor="nobody", reason="", changed_ts=1)

    async def positions(msg) -> None:
        seen.append((msg.subject, json.loads(msg.data)))
        pos = Position(symbol="GWA-USD", quantity=D("10.5"), avg_price=D("95"), realized_pnl=D(0),
                       unrealized_pnl=D("57.75"), fees=D("1"), notional=D("1055.25"))
        await msg.respond(encode(PositionsReply(positions=[pos], account=account())))

    async def killswitch(msg) -> None:
        nonlocal switch
        request = json.loads(msg.data)
        seen.append((msg.subject, request))
        if request["action"] != "status":
            switch = KillSwitchState(engaged=request["action"] == "engage", actor=request["actor"],
                                     reason=request["reason"], changed_ts=2)
        await msg.respond(encode(switch))

    async def limits(msg) -> None:
        request = json.loads(msg.data)
        seen.append((msg.subject, request))
        changed = LIMITS.model_copy(update={k: D(v) for k, v in (request.get("set") or {}).items()})
        await msg.respond(encode(LimitsReply(limits=changed)))

    subs = [
        await risk.subscribe("risk.api.positions", cb=positions),
        await risk.subscribe("risk.api.killswitch", cb=killswitch),
        await risk.subscribe("risk.api.limits", cb=limits),
    ]
    await risk.flush()
    return subs


@pytest.fixture
async def client(connect, service_bus) -> AsyncIterator[httpx.AsyncClient]:
    """The app with TOKEN; `client.seen`: the requests the fake risk got."""
    # the bus and the responders' connections are closed by `service_bus` / `connect`
    md, risk = await connect("market-data"), await connect("risk")
    seen: list[tuple[str, dict]] = []
    await fake_market_data(md)
    risk_subs = await fake_risk(risk, seen)
    app = create_app(bus=await service_bus("gateway"), config=CONFIG, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        c.risk, c.risk_subs = risk, risk_subs  # type: ignore[attr-defined]
        c.seen = seen  # type: ignore[attr-defined]
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
    assert len(bars) == 3 and bars[0]["interval"] == "1s" and bars[1]["close"] == "2000.1"
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
    await client.risk.flush()  # type: ignore[attr-defined]  # the server has dropped them
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
    assert app.state.gateway.bus.nc.is_closed


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


# ---------------------------------------------------------------- writes and the token


async def test_writes_need_the_bearer_token(client: httpx.AsyncClient) -> None:
    body = {"action": "engage", "actor": "alice", "reason": "test"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        r = await client.post("/api/killswitch", json=body, headers=headers)
        assert (r.status_code, error_code(r)) == (401, "unauthorized"), headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert not [s for s, _ in client.seen if s == "risk.api.killswitch"]  # type: ignore[attr-defined]

    r = await client.post("/api/killswitch", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json()["engaged"] is True and r.json()["actor"] == "alice"
    assert client.seen[-1] == ("risk.api.killswitch", {**body, "flatten": False})  # type: ignore[attr-defined]
    r = await client.get("/api/killswitch")  # reading needs no token
    assert (r.status_code, r.json()["engaged"], r.json()["reason"]) == (200, True, "test")
    r = await client.post("/api/killswitch", json={"action": "release", "reason": "done"}, headers=AUTH)
    assert r.json()["engaged"] is False


async def test_writes_are_refused_when_no_token_is_set(connect, service_bus) -> None:
    risk = await connect("risk")
    seen: list = []
    await fake_risk(risk, seen)
    with mock.patch.dict(os.environ, {"MOONBUS_GATEWAY_TOKEN": ""}):
        app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        for path, body in (("/api/killswitch", {"action": "engage"}), ("/api/limits", {}),
                           ("/api/orders", {"client_order_id": "x1", "symbol": "GWA-USD", "side": "BUY",
                                            "quantity": "1"})):
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
                r = await c.post(path, json=body, headers=headers)
                assert (r.status_code, error_code(r)) == (403, "writes_disabled"), (path, headers)
        assert (await c.get("/api/limits")).status_code == 200  # reads still work
    assert [s for s, _ in seen] == ["risk.api.limits"]


async def test_bad_write_bodies_never_reach_the_bus(client: httpx.AsyncClient) -> None:
    for body in ({"action": "explode"}, {"action": "engage", "reasn": "typo"}, {"action": "engage", "actor": ""}):
        r = await client.post("/api/killswitch", json=body, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), body
    for body in ({"set": {"max_order_notional": 250}}, {"set": {"max_order_notional": "-1"}},
                 {"set": {"max_orders": "1"}}, {"set": {"max_drawdown_pct": 101}}):
        r = await client.post("/api/limits", json=body, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), body
    assert client.seen == []  # type: ignore[attr-defined]


async def test_limits_read_and_change(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/limits")
    assert r.status_code == 200 and r.json()["limits"]["max_order_notional"] == "1000"
    r = await client.post("/api/limits", json={"set": {"max_order_notional": "250.5"}}, headers=AUTH)
    assert r.status_code == 200 and r.json()["limits"]["max_order_notional"] == "250.5"
    subject, request = client.seen[-1]  # type: ignore[attr-defined]
    assert subject == "risk.api.limits" and request["set"] == {"max_order_notional": "250.5"}


# ---------------------------------------------------------------- orders, from and to the streams


@pytest.fixture
async def streams(connect) -> None:
    await ensure_streams((await connect("execution")).jetstream(timeout=5))


def uid() -> str:
    return uuid.uuid4().hex[:10].upper()


async def test_submit_order_is_stored_once(client: httpx.AsyncClient, connect, streams) -> None:
    symbol, coid = f"GW{uid()}-USD", f"gw-{uid()}"
    body = {"client_order_id": coid, "symbol": symbol, "side": "BUY", "quantity": "0.25"}
    assert (await client.post("/api/orders", json=body)).status_code == 401
    r = await client.post("/api/orders", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    first = r.json()
    assert (first["client_order_id"], first["stream"], first["duplicate"]) == (coid, ORDERS, False)
    again = (await client.post("/api/orders", json=body, headers=AUTH)).json()
    assert (again["seq"], again["duplicate"]) == (first["seq"], True)  # a retry is stored once

    stored = await (await connect("operator")).jetstream(timeout=5).get_msg(ORDERS, first["seq"])
    order = OrderRequest.model_validate_json(stored.data)
    assert (stored.subject, stored.headers[MSG_ID_HEADER]) == (f"orders.submit.{symbol}", coid)
    assert (order.agent, order.quantity, order.side.value, order.type.value) == ("gateway", D("0.25"), "BUY", "MARKET")

    for bad in ({**body, "type": "LIMIT"}, {**body, "limit_price": "1"}, {**body, "quantity": 1},
                {**body, "quantity": "0"}, {**body, "symbol": "gw.x"}, {**body, "reduce_onyl": True},
                {**body, "client_order_id": "a b"}):
        r = await client.post("/api/orders", json=bad, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), bad


async def test_orders_and_trace_read_from_the_streams(client: httpx.AsyncClient, connect, streams) -> None:
    symbol, coid = f"GW{uid()}-USD", f"gw-{uid()}"
    order = OrderRequest(client_order_id=coid, agent="trading", symbol=symbol, side=Side.BUY, quantity=D("2"),
                         origin_ts=1_000_000_000, ts=1_002_000_000)
    agent = await connect("trading-agent")
    await agent.jetstream().publish(f"orders.submit.{symbol}", encode(order), headers={MSG_ID_HEADER: coid})
    report = ExecutionReport(
        client_order_id=coid, agent="trading", symbol=symbol, side=Side.BUY, status=OrderStatus.FILLED,
        quantity=D("2"), filled_quantity=D("2"), avg_fill_price=D("100.5"), fee=D("0.2"), ts=1_009_000_000,
        timings=Timings(origin_ts=1_000_000_000, received_ts=1_004_000_000, risk_checked_ts=1_005_000_000,
                        filled_ts=1_008_000_000),
    )
    execution = await connect("execution")
    await execution.jetstream().publish(f"exec.report.{symbol}", encode(report),
                                        headers={MSG_ID_HEADER: f"{coid}:FILLED:2"})

    r = await client.get("/api/orders", params={"symbol": symbol, "limit": 5})
    assert r.status_code == 200
    (trail,) = r.json()["orders"]
    assert (trail["client_order_id"], trail["status"], trail["order"]["quantity"]) == (coid, "FILLED", "2")
    assert trail["reports"][0]["report"]["avg_fill_price"] == "100.5"

    r = await client.get(f"/api/orders/{coid}")
    assert r.status_code == 200
    hops = {h["hop"]: h for h in r.json()["hops"]}
    assert hops["order sent"]["since_previous_ns"] == 2_000_000  # decided 2 ms after the tick
    assert hops["risk checked"]["since_previous_ns"] == 1_000_000
    assert hops["filled"]["since_previous_ns"] == 3_000_000
    assert list(hops)[0] == "origin tick" and list(hops)[-1] == "stored in EXEC"

    r = await client.get(f"/api/orders/gw-missing-{uid()}", params={"since_s": 60})
    assert (r.status_code, error_code(r)) == (404, "not_found")
    for bad in ("/api/orders/a.b", "/api/orders?symbol=bad.one", "/api/orders?limit=0"):
        r = await client.get(bad)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), bad


async def test_orders_without_the_streams_is_503(service_bus, nats_server) -> None:
    """A read of a stream that is not there is the bus's fault, said so."""
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        with mock.patch("services.common.orderlog.ORDERS", "NOSUCHSTREAM"):
            r = await c.get("/api/orders")
    assert (r.status_code, error_code(r)) == (503, "stream_unavailable")
    assert "NOSUCHSTREAM" in r.json()["error"]["message"]


async def test_services_lists_every_instance(client: httpx.AsyncClient, service_bus) -> None:
    for _ in range(2):  # two replicas of one service
        await (await service_bus("swarm-agent")).serve("stand-in swarm", {})
    r = await client.get("/api/services")
    assert r.status_code == 200
    swarm = next(s for s in r.json()["services"] if s["name"] == "swarm-agent")
    assert len(swarm["instances"]) == 2 and swarm["versions"] == ["0.1.0"] and swarm["started_ns"] > 0


# ---------------------------------------------------------------- metrics and the spec


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.get("/api/price/GWA-USD")
    await client.get("/api/price/GWX-USD")
    await client.post("/api/killswitch", json={"action": "engage"})
    text = (await client.get("/metrics")).text
    assert 'moonbus_gateway_http_requests_total{method="GET",route="/api/price/{symbol}",status="200"} 1.0' in text
    assert 'moonbus_gateway_http_requests_total{method="GET",route="/api/price/{symbol}",status="404"} 1.0' in text
    assert 'moonbus_gateway_bus_requests_total{outcome="ok",subject="md.api.price"} 1.0' in text
    assert 'moonbus_gateway_bus_requests_total{outcome="unknown_symbol",subject="md.api.price"} 1.0' in text
    assert 'moonbus_gateway_auth_failures_total{reason="missing"} 1.0' in text
    assert "moonbus_gateway_nats_connected 1.0" in text
    assert 'moonbus_gateway_bus_request_seconds_count{subject="md.api.price"} 2.0' in text


async def test_openapi_documents_the_api_and_its_security(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in ("/api/prices", "/api/price/{symbol}", "/api/history/{symbol}", "/api/positions", "/api/account",
                 "/api/orders", "/api/orders/{client_order_id}", "/api/verdicts", "/api/limits",
                 "/api/killswitch", "/api/signals", "/api/state", "/api/services", "/api/stream"):
        assert path in paths, path
    for path in ("/api/killswitch", "/api/limits", "/api/orders"):
        assert paths[path]["post"]["security"] == [{"HTTPBearer": []}], path
        assert {"401", "403"} <= set(paths[path]["post"]["responses"]), path
    assert "security" not in paths["/api/killswitch"]["get"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "PricesReply" in spec["components"]["schemas"]
