"""Gateway REST: every route against fake md.api / risk.api responders on the real
nats-server (and the real ORDERS / EXEC streams), through httpx + ASGITransport; bus
errors mapped to HTTP codes; the bearer token on every write; metrics; the OpenAPI spec.
The edge: the token checked before the body is read, the body size limit, the read
token and the dashboard's session cookie, the refusal to listen beyond localhost without
it, the Host allow-list, the security headers, bounded order lookups.
The live state, the stream (and its limits) and the dashboard: tests/test_gateway_live.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from unittest import mock

import httpx
import pytest

from services.common.bus import Bus, flush, inbox_prefix
from services.contract.models import (
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
    now_ns,
)
from services.devstack.natsserver import REPO_ROOT
from services.common.streams import MSG_ID_HEADER, ORDERS, StreamReadError
from services.gateway.app import create_app
from services.gateway.config import READ_TOKEN_ENV, GatewayConfigError
from tests.conftest import connect_when_up

D = Decimal
KNOWN = {"GWA-USD": "100.5", "GWB-USD": "2000"}
CONFIG = {"system": {"symbols": ["GWA-USD", "GWB-USD"]}, "gateway": {"request_timeout_s": 0.5}}
TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://127.0.0.1:8080"  # a Host the gateway serves ([gateway] port = 8080)
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
        if request["interval"] not in ("1s", "1m", "5m", "15m", "1h"):  # as rust-market-data answers it
            await msg.respond(json.dumps({"error": {"code": "unknown_interval", "message": f"interval "
                                                    f"{request['interval']} is not served"}}).encode())
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
    await flush(md)
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
        await risk.subscribe("risk.api.killswitch.*", cb=killswitch),  # the last token: the caller
        await risk.subscribe("risk.api.limits.*", cb=limits),
    ]
    await flush(risk)
    return subs


@pytest.fixture
async def gateway_client(connect, service_bus) -> AsyncIterator[Any]:
    """`await gateway_client(config, **create_app kwargs)`: an httpx client on a new app
    (token TOKEN, no read token unless given) with the fake responders; `.seen`: the
    requests the fake risk got."""
    # the bus and the responders' connections are closed by `service_bus` / `connect`
    md, risk = await connect("market-data"), await connect("risk")
    seen: list[tuple[str, dict]] = []
    await fake_market_data(md)
    risk_subs = await fake_risk(risk, seen)
    async with contextlib.AsyncExitStack() as stack:
        async def make(config: dict = CONFIG, **kwargs: Any) -> httpx.AsyncClient:
            app = create_app(bus=await service_bus("gateway"), config=config, **{"token": TOKEN, "read_token": "",
                                                                                   **kwargs})
            transport = httpx.ASGITransport(app=app)
            c = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url=BASE))
            c.risk, c.risk_subs, c.seen = risk, risk_subs, seen  # type: ignore[attr-defined]
            return c

        yield make


@pytest.fixture
async def client(gateway_client) -> httpx.AsyncClient:
    """The app with TOKEN and no read token; `client.seen`: the requests the fake risk got."""
    return await gateway_client()


def with_gateway(**keys: Any) -> dict:
    """CONFIG with these [gateway] keys."""
    return {**CONFIG, "gateway": {**CONFIG["gateway"], **keys}}


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


async def test_an_interval_market_data_does_not_serve_is_422(client: httpx.AsyncClient) -> None:
    """`7m` is a well-formed interval that market data does not serve: the client's mistake,
    a 422 that says so (it was a 502, as if market data had failed)."""
    r = await client.get("/api/history/GWB-USD", params={"interval": "7m"})
    assert (r.status_code, error_code(r)) == (422, "unknown_interval"), r.text
    assert "7m" in r.json()["error"]["message"]


async def test_symbol_parameters_are_documented_as_they_are_checked(client: httpx.AsyncClient) -> None:
    """The OpenAPI spec says what a symbol, an interval and a limit must be (the checks ran
    with the spec saying "any string": a fuzzer's valid requests were refused)."""
    paths = (await client.get("/openapi.json")).json()["paths"]

    def schema(path: str, name: str) -> dict:
        (param,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == name]
        s = param["schema"]
        return next(a for a in s["anyOf"] if a["type"] == "string") if "anyOf" in s else s

    for path, name in (("/api/price/{symbol}", "symbol"), ("/api/history/{symbol}", "symbol"),
                       ("/api/positions", "symbol"), ("/api/orders", "symbol")):
        assert schema(path, name)["pattern"] == r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$", path
    assert schema("/api/history/{symbol}", "interval")["pattern"] == r"^[0-9]{1,4}[smhd]$"
    assert (schema("/api/history/{symbol}", "limit")["minimum"], schema("/api/history/{symbol}", "limit")["maximum"]) \
        == (1, 5000)
    listed = re.compile(schema("/api/prices", "symbols")["pattern"])
    for good in ("GWA-USD", "GWA-USD,GWX-USD", " GWA-USD , GWX-USD ", ""):
        assert listed.fullmatch(good), good
        assert (await client.get("/api/prices", params={"symbols": good})).status_code == 200, good
    for bad in ("GWA-USD,,GWX-USD", "GWA-USD,", ",GWA-USD", "GWA-USD;GWX-USD", "\tGWA-USD", " ", "gwa-usd"):
        assert not listed.fullmatch(bad), bad
        r = await client.get("/api/prices", params={"symbols": bad})
        assert (r.status_code, error_code(r)) == (422, "bad_request"), bad
    r = await client.get("/api/positions", params={"symbol": ""})
    assert (r.status_code, error_code(r)) == (422, "bad_request")


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
    await flush(client.risk)  # type: ignore[attr-defined]  # the server has dropped them
    r = await client.get("/api/account")
    assert (r.status_code, error_code(r)) == (503, "no_responders")


async def test_without_a_bus_everything_is_503() -> None:
    app = create_app(bus=None, config=CONFIG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        r = await c.get("/health")
        assert (r.status_code, r.json()["bus"]) == (503, "disconnected")
        r = await c.get("/api/price/GWA-USD")
        assert (r.status_code, error_code(r)) == (503, "bus_unavailable")


async def test_lifespan_connects_as_gateway_and_registers(nats_server, connect) -> None:
    operator = await connect("operator")
    app = create_app(config=CONFIG)
    with mock.patch.dict(os.environ, nats_server.env_for("gateway")):
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
                assert (await c.get("/health")).status_code == 200
            info = json.loads((await operator.request("$SRV.INFO.gateway", b"", timeout=2)).data)
            assert info["name"] == "gateway"
    assert app.state.gateway.bus.nc.is_closed


async def test_main_serves_http_with_uvicorn(nats_server) -> None:
    import asyncio

    from services.devstack.natsserver import free_port
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
    assert not [s for s, _ in client.seen if s.startswith("risk.api.killswitch")]  # type: ignore[attr-defined]

    r = await client.post("/api/killswitch", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json()["engaged"] is True and r.json()["actor"] == "alice"
    assert client.seen[-1] == ("risk.api.killswitch.gateway", {**body, "flatten": False})  # type: ignore[attr-defined]
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
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        for path, body in (("/api/killswitch", {"action": "engage"}), ("/api/limits", {}),
                           ("/api/orders", {"client_order_id": "x1", "symbol": "GWA-USD", "side": "BUY",
                                            "quantity": "1"})):
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
                r = await c.post(path, json=body, headers=headers)
                assert (r.status_code, error_code(r)) == (403, "writes_disabled"), (path, headers)
        assert (await c.get("/api/limits")).status_code == 200  # reads still work
    assert [s for s, _ in seen] == ["risk.api.limits.gateway"]


async def test_bad_write_bodies_never_reach_the_bus(client: httpx.AsyncClient) -> None:
    for body in ({"action": "explode"}, {"action": "engage", "reasn": "typo"}, {"action": "engage", "actor": ""}):
        r = await client.post("/api/killswitch", json=body, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), body
    for body in ({"set": {"max_order_notional": 250}}, {"set": {"max_order_notional": "-1"}},
                 {"set": {"max_orders": "1"}}, {"set": {"max_drawdown_pct": 101}}):
        r = await client.post("/api/limits", json=body, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), body
    assert client.seen == []  # type: ignore[attr-defined]


async def test_a_body_that_is_not_json_is_422_with_the_reason(client: httpx.AsyncClient) -> None:
    """Bytes that are not UTF-8, JSON nested past the parser's depth, a number of more than
    4300 digits: FastAPI's bare 400 "There was an error parsing the body" (undocumented,
    no reason) is now the 422 every other bad input gets, saying why."""
    cases = ((b"\x04\xff\xfe", "not JSON text"), (b"{\"action\": \"engage\", \"reason\": \"\xe9\"}", "not JSON text"),
             (b"[" * 5000 + b"]" * 5000, "nested too deep"), (b'{"action": ' + b"1" * 5000 + b"}", "not valid JSON"),
             (b'{"action": "engage",', "not valid JSON"))
    for path in ("/api/killswitch", "/api/limits", "/api/orders"):
        for body, why in cases:
            r = await client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
            assert (r.status_code, error_code(r)) == (422, "bad_request"), (path, body[:20])
            assert why in r.json()["error"]["message"], (path, body[:20], r.text)
    assert client.seen == []  # type: ignore[attr-defined]


async def test_limits_read_and_change(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/limits")
    assert r.status_code == 200 and r.json()["limits"]["max_order_notional"] == "1000"
    r = await client.post("/api/limits", json={"set": {"max_order_notional": "250.5"}}, headers=AUTH)
    assert r.status_code == 200 and r.json()["limits"]["max_order_notional"] == "250.5"
    subject, request = client.seen[-1]  # type: ignore[attr-defined]
    assert subject == "risk.api.limits.gateway" and request["set"] == {"max_order_notional": "250.5"}


# ---------------------------------------------------------------- orders, from and to the streams


def uid() -> str:
    return uuid.uuid4().hex[:10].upper()


async def test_submit_order_is_stored_once(client: httpx.AsyncClient, connect) -> None:
    symbol, coid = f"GW{uid()}-USD", f"gw-{uid()}"
    body = {"client_order_id": coid, "symbol": symbol, "side": "BUY", "quantity": "0.25"}
    assert (await client.post("/api/orders", json=body)).status_code == 401
    r = await client.post("/api/orders", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    first = r.json()
    assert (first["client_order_id"], first["stream"], first["duplicate"]) == (coid, ORDERS, False)
    again = (await client.post("/api/orders", json=body, headers=AUTH)).json()
    assert (again["seq"], again["duplicate"]) == (first["seq"], True)  # a retry is stored once

    stored = await (await connect("operator")).jetstream(timeout=5).get_msg(ORDERS, first["seq"], direct=True)
    order = OrderRequest.model_validate_json(stored.data)
    assert (stored.subject, stored.headers[MSG_ID_HEADER]) == (f"orders.submit.gateway.{symbol}", coid)
    assert (order.agent, order.quantity, order.side.value, order.type.value) == ("gateway", D("0.25"), "BUY", "MARKET")

    for bad in ({**body, "type": "LIMIT"}, {**body, "limit_price": "1"}, {**body, "quantity": 1},
                {**body, "quantity": "0"}, {**body, "symbol": "gw.x"}, {**body, "reduce_onyl": True},
                {**body, "client_order_id": "a b"},
                # more than the Rust services' 96-bit decimal holds: was a 202, then REJECTED
                {**body, "quantity": "0." + "0" * 28 + "1"}, {**body, "quantity": "79228162514.264337593543950336"}):
        r = await client.post("/api/orders", json=bad, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), bad


async def test_an_order_may_carry_a_protection_or_an_algo(client: httpx.AsyncClient, connect) -> None:
    symbol = f"GW{uid()}-USD"
    base = {"symbol": symbol, "side": "BUY", "quantity": "0.3"}
    protection = {"stop_loss": "90", "take_profit": "110", "trailing_stop_bps": 150}
    algo = {"kind": "TWAP", "duration_ms": 3000, "slices": 3}
    js = (await connect("operator")).jetstream(timeout=5)
    for extra in ({"protection": protection}, {"algo": algo}):
        body = {**base, "client_order_id": f"gw-{uid()}", **extra}
        r = await client.post("/api/orders", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        order = OrderRequest.model_validate_json((await js.get_msg(ORDERS, r.json()["seq"], direct=True)).data)
        assert order.model_dump(mode="json", include=set(extra), exclude_none=True) == extra
    for bad in ({"protection": protection, "algo": algo},  # one or the other
                {"protection": {**protection, "stop_loss": "120"}},  # a BUY's stop above its take-profit
                {"protection": protection, "reduce_only": True},
                {"protection": {}},
                {"algo": {"kind": "TWAP", "slices": 3}},
                {"algo": {"kind": "ICEBERG", "display_quantity": "0.3"}}):  # not below the quantity
        r = await client.post("/api/orders", json={**base, "client_order_id": f"gw-{uid()}", **bad}, headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), bad


async def test_an_algo_nested_deep_is_bad_input_not_a_500(client: httpx.AsyncClient) -> None:
    """`algo` was taken as any JSON object (checked as an ExecAlgo later): one nested a few
    hundred levels deep made the body's serialization raise, a 500. It is checked as an
    ExecAlgo now, and documented as one (the spec said "any object")."""
    base = {"symbol": "GWA-USD", "side": "BUY", "quantity": "0.3"}
    for depth in (1, 300, 600):
        nested = "[" * depth + "]" * depth
        body = json.dumps({**base, "client_order_id": f"gw-{uid()}", "algo": {"kind": "TWAP", "x": 0}})
        body = body.replace('"x": 0', f'"x": {nested}')
        r = await client.post("/api/orders", content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert (r.status_code, error_code(r)) == (422, "bad_request"), (depth, r.text)
        assert "algo" in r.json()["error"]["message"], depth
    for algo in ({"kind": {"a": 1}}, {}, {"kind": "twap"}, {"kind": "TWAP", "duration_ms": "3000", "slices": 3}):
        r = await client.post("/api/orders", json={**base, "client_order_id": f"gw-{uid()}", "algo": algo},
                              headers=AUTH)
        assert (r.status_code, error_code(r)) == (422, "bad_request"), algo
        assert "algo" in r.json()["error"]["message"], algo
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert {"$ref": "#/components/schemas/AlgoSubmit"} in schemas["OrderSubmit"]["properties"]["algo"]["anyOf"]
    assert set(schemas["AlgoSubmit"]["properties"]) == {"kind", "duration_ms", "slices", "display_quantity"}
    assert schemas["AlgoSubmit"]["additionalProperties"] is False


async def test_an_order_no_stream_takes_is_503_not_stored(plain_nats: str) -> None:
    """A server without the ORDERS stream (not provisioned yet) answers the publish with
    "no responders": the order was not stored, a 503 that says so (it was a 500)."""
    await (await connect_when_up(plain_nats)).close()  # the server is up
    bus = Bus("gateway")
    await bus.connect(plain_nats)
    try:
        app = create_app(bus=bus, config=CONFIG, token=TOKEN, read_token="")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            body = {"client_order_id": f"gw-{uid()}", "symbol": "GWA-USD", "side": "BUY", "quantity": "1"}
            r = await c.post("/api/orders", json=body, headers=AUTH)
        assert (r.status_code, error_code(r)) == (503, "not_stored"), r.text
        assert "client_order_id" in r.json()["error"]["message"]
    finally:
        await bus.close()


async def test_orders_and_trace_read_from_the_streams(client: httpx.AsyncClient, connect) -> None:
    symbol, coid = f"GW{uid()}-USD", f"gw-{uid()}"
    order = OrderRequest(client_order_id=coid, agent="trading", symbol=symbol, side=Side.BUY, quantity=D("2"),
                         origin_ts=1_000_000_000, ts=1_002_000_000)
    agent = await connect("trading-agent", inbox_prefix=inbox_prefix("trading-agent"))  # its PubAck comes there
    await agent.jetstream().publish(f"orders.submit.trading.{symbol}", encode(order), headers={MSG_ID_HEADER: coid})
    report = ExecutionReport(
        client_order_id=coid, agent="trading", symbol=symbol, side=Side.BUY, status=OrderStatus.FILLED,
        quantity=D("2"), filled_quantity=D("2"), avg_fill_price=D("100.5"), fee=D("0.2"), ts=1_009_000_000,
        timings=Timings(origin_ts=1_000_000_000, received_ts=1_004_000_000, risk_checked_ts=1_005_000_000,
                        filled_ts=1_008_000_000),
    )
    execution = await connect("execution", inbox_prefix=inbox_prefix("execution"))
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


async def test_a_trace_look_back_beyond_any_time_is_bad_input(client: httpx.AsyncClient) -> None:
    """since_s is a float: `inf` or 1e300 seconds is no nanosecond count; a 422 that says
    so, never a 500 (it was an OverflowError)."""
    for since_s in ("inf", "1e300", "nan", "-1"):
        r = await client.get(f"/api/orders/gw-{uid()}", params={"since_s": since_s})
        assert (r.status_code, error_code(r)) == (422, "bad_request"), since_s
        assert "since_s" in r.json()["error"]["message"], since_s
    for since_s in ("inf", "nan", "-inf"):  # said as it is (nan was "less than or equal to 1e10")
        r = await client.get(f"/api/orders/gw-{uid()}", params={"since_s": since_s})
        assert "finite number" in r.json()["error"]["message"], since_s


async def test_orders_without_the_streams_is_503(service_bus, nats_server) -> None:
    """A stream that cannot be read is the bus's fault, said so."""
    async def unreadable(_nc, stream: str) -> tuple[int, int]:
        raise StreamReadError(f"cannot read stream {stream}: stream not found")

    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        with mock.patch("services.ops.orderlog._last_seq", unreadable):
            r = await c.get("/api/orders")
    assert (r.status_code, error_code(r)) == (503, "stream_unavailable")
    assert "cannot read stream ORDERS" in r.json()["error"]["message"]


async def test_services_lists_every_instance(client: httpx.AsyncClient, service_bus) -> None:
    for _ in range(2):  # two replicas of one service
        await (await service_bus("swarm-agent")).serve("stand-in swarm", {})
    r = await client.get("/api/services")
    assert r.status_code == 200
    swarm = next(s for s in r.json()["services"] if s["name"] == "swarm-agent")
    assert len(swarm["instances"]) == 2 and swarm["versions"] == ["0.1.0"] and swarm["started_ns"] > 0


async def test_services_skips_malformed_service_api_answers(client: httpx.AsyncClient, service_bus, connect) -> None:
    """Any credential may answer $SRV.INFO / $SRV.STATS (every service subscribes $SRV.*):
    an answer of the wrong shape is left out, never a 500 that hides the real services."""
    await (await service_bus("swarm-agent")).serve("stand-in swarm", {})
    rogue = await connect("gateway")  # a stolen gateway credential (any service's would do)
    infos = [{"name": ["x"], "id": "r1"}, {"name": "rogue", "id": {"a": 1}}, {"name": "rogue", "id": "r3",
             "endpoints": [1]}, {"name": 7, "id": "r4"}, {"name": "rogue", "id": "r5", "endpoints": "abc"}]
    stats = [{"id": "r6", "name": ["y"]}, {"id": "r7", "started": 5}, {"id": "r8", "started": "9999-99-99T00:00:00Z"},
             {"id": "r9", "endpoints": [{"num_requests": "many"}]}, {"id": "r10", "endpoints": [3]},
             {"id": ["r11"]}]

    async def answer_info(msg) -> None:
        for a in infos:
            await rogue.publish(msg.reply, json.dumps(a).encode())

    async def answer_stats(msg) -> None:
        for a in stats:
            await rogue.publish(msg.reply, json.dumps(a).encode())

    await rogue.subscribe("$SRV.INFO", cb=answer_info)
    await rogue.subscribe("$SRV.STATS", cb=answer_stats)
    await flush(rogue)
    r = await client.get("/api/services")
    assert r.status_code == 200, r.text
    assert any(s["name"] == "swarm-agent" for s in r.json()["services"])


# ---------------------------------------------------------------- metrics and the spec


def test_bus_request_outcomes_are_bounded() -> None:
    """The outcome label is the error code whoever answered chose: at most MAX_OUTCOMES distinct
    ones are counted apart, later new ones as `other` (a stolen responder credential answering
    a new code each time made a new series each time)."""
    from services.gateway.metrics import MAX_OUTCOMES, GatewayMetrics

    m = GatewayMetrics()
    labels = [m.outcome(f"code_{n}") for n in range(MAX_OUTCOMES + 10)]
    assert labels[: MAX_OUTCOMES - 1] == [f"code_{n}" for n in range(MAX_OUTCOMES - 1)]  # "ok" is one
    assert set(labels[MAX_OUTCOMES - 1:]) == {"other"}
    assert m.outcome("ok") == "ok" and m.outcome("code_3") == "code_3"


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.get("/api/price/GWA-USD")
    await client.get("/api/price/GWX-USD")
    await client.post("/api/killswitch", json={"action": "engage"})
    text = (await client.get("/metrics")).text
    assert 'moonbus_gateway_http_requests_total{method="GET",route="/api/price/{symbol}",status="200"} 1.0' in text
    assert 'moonbus_gateway_http_requests_total{method="GET",route="/api/price/{symbol}",status="404"} 1.0' in text
    assert 'moonbus_gateway_bus_requests_total{outcome="ok",subject="md.api.price"} 1.0' in text
    assert 'moonbus_gateway_bus_requests_total{outcome="unknown_symbol",subject="md.api.price"} 1.0' in text
    assert 'moonbus_gateway_auth_failures_total{access="write",reason="missing"} 1.0' in text
    assert "moonbus_gateway_nats_connected 1.0" in text
    assert 'moonbus_gateway_bus_request_seconds_count{subject="md.api.price"} 2.0' in text


async def test_metrics_label_only_the_standard_http_methods(gateway_client) -> None:
    """The method is the client's to choose (uvicorn's h11 takes any token, up to its 16 KiB
    head): labelled as it came, every new one was a new time series, in memory for good and
    in the open /metrics, even for requests refused at the edge. Others are `other`."""
    c = await gateway_client(read_token=READ)
    for i in range(20):
        r = await c.request(f"X{i}{'A' * 1000}", "/health", headers={"Host": "evil.example"})
        assert r.status_code == 400
        r = await c.request(f"Y{i}", "/api/limits")
        assert r.status_code == 401
    await c.get("/health")
    text = (await c.get("/metrics")).text
    assert "X0A" not in text and 'method="Y' not in text
    assert 'moonbus_gateway_http_requests_total{method="other",route="unmatched",status="400"} 20.0' in text
    assert 'moonbus_gateway_http_requests_total{method="other",route="unmatched",status="401"} 20.0' in text
    assert 'moonbus_gateway_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text


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


async def test_a_405_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    """`Allow` lists what the path serves (RFC 9110), not only the methods of the first
    route that matched it: GET and POST for /api/orders (it said `GET`)."""
    for method, path, allowed in (("OPTIONS", "/api/orders", "GET, POST"), ("DELETE", "/api/killswitch", "GET, POST"),
                                  ("PUT", "/api/limits", "GET, POST"), ("PATCH", "/api/price/GWA-USD", "GET"),
                                  ("DELETE", "/api/orders/gw-1", "GET"), ("GET", "/api/session", "POST")):
        r = await client.request(method, path, headers=AUTH)
        assert (r.status_code, error_code(r)) == (405, "method_not_allowed"), (method, path)
        assert r.headers["allow"] == allowed, (method, path)


# ---------------------------------------------------------------- the edge: token before body, body size


class EndlessBody:
    """An ASGI `receive` that sends 1 KiB chunks for ever (a client that never stops), counting them."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict:
        self.calls += 1
        await asyncio.sleep(0.001)  # a network's pace: lets a reader without a limit time out
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}


async def asgi(app: Any, method: str, path: str, headers: dict[str, str], receive: Any) -> tuple[int, dict, bytes]:
    """One request straight into the ASGI app: (status, headers, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)  # an endless body never ends without the guard
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


LOCAL = {"host": "127.0.0.1:8080"}


async def test_the_token_is_checked_before_the_body_is_read() -> None:
    chunked = {**LOCAL, "transfer-encoding": "chunked", "content-type": "application/json"}
    app = create_app(bus=None, config=CONFIG, token=TOKEN, read_token="")
    for path in ("/api/killswitch", "/api/limits", "/api/orders"):
        for auth in ({}, {"authorization": "Bearer wrong"}):
            body = EndlessBody()
            status, headers, reply = await asgi(app, "POST", path, {**chunked, **auth}, body)
            assert (status, json.loads(reply)["error"]["code"]) == (401, "unauthorized"), (path, auth)
            assert headers["www-authenticate"] == "Bearer"
            assert body.calls == 0  # not one byte of it was read
    no_writes = create_app(bus=None, config=CONFIG, token="", read_token="")
    body = EndlessBody()
    status, _, reply = await asgi(no_writes, "POST", "/api/killswitch", {**chunked, **AUTH}, body)
    assert (status, json.loads(reply)["error"]["code"], body.calls) == (403, "writes_disabled", 0)


async def test_bodies_over_max_body_bytes_are_refused(gateway_client) -> None:
    config = with_gateway(max_body_bytes=1024)
    # streamed (chunked, no Content-Length) and never ending: refused once past the limit
    body = EndlessBody()
    app = create_app(bus=None, config=config, token=TOKEN, read_token="")
    status, _, reply = await asgi(app, "POST", "/api/limits", {**LOCAL, **AUTH, "transfer-encoding": "chunked"}, body)
    assert (status, json.loads(reply)["error"]["code"]) == (413, "body_too_large")
    assert body.calls == 2  # 1 KiB is within the limit, 2 KiB is not

    c = await gateway_client(config)
    padded = {"action": "engage", "reason": "x" * 1100}
    r = await c.post("/api/killswitch", json=padded, headers=AUTH)  # with Content-Length
    assert (r.status_code, error_code(r)) == (413, "body_too_large")
    assert "max_body_bytes" in r.json()["error"]["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b'{"action": "engage", "reason": "', b"y" * 700, b"y" * 700, b'"}'):
            yield piece

    r = await c.post("/api/killswitch", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert (r.status_code, error_code(r)) == (413, "body_too_large")
    # a declared size alone is enough, for reads too (nothing is read)
    r = await c.get("/api/limits", headers={"Content-Length": "5000"})
    assert r.status_code == 413
    assert c.seen == []  # type: ignore[attr-defined]

    r = await c.post("/api/killswitch", json={"action": "engage", "reason": "x" * 500}, headers=AUTH)
    assert r.status_code == 200  # within the limit: as before
    text = (await c.get("/metrics")).text
    assert 'moonbus_gateway_refused_total{code="body_too_large"} 3.0' in text


# ---------------------------------------------------------------- the read token and the dashboard's session

READ = "read-token-9012"
READ_AUTH = {"Authorization": f"Bearer {READ}"}


async def test_reads_need_the_read_token_when_one_is_set(gateway_client) -> None:
    c = await gateway_client(read_token=READ)
    for path in ("/api/limits", "/api/state", "/api/orders", "/api/orders/gw-x1", "/api/stream",
                 "/openapi.json", "/docs"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {READ}"},
                        {"Cookie": "moonbus_read=forged"}):
            r = await c.get(path, headers=headers)
            assert (r.status_code, error_code(r)) == (401, "unauthorized"), (path, headers)
    assert c.seen == []  # type: ignore[attr-defined]
    for token in (READ, TOKEN):  # the write token reads too
        r = await c.get("/api/limits", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, token
    for path in ("/health", "/", "/static/dashboard.js", "/metrics"):  # hold no data: open
        assert (await c.get(path)).status_code == 200, path
    r = await c.post("/api/killswitch", json={"action": "engage"}, headers=READ_AUTH)
    assert (r.status_code, error_code(r)) == (401, "unauthorized")  # the read token never writes
    text = (await c.get("/metrics", headers=READ_AUTH)).text
    for reason, count in (("missing", 14), ("wrong", 7), ("wrong_cookie", 7)):  # 7 paths, 4 ways each
        assert f'moonbus_gateway_auth_failures_total{{access="read",reason="{reason}"}} {count}.0' in text
    assert 'moonbus_gateway_auth_failures_total{access="write",reason="wrong"} 1.0' in text


async def test_the_dashboard_reads_with_a_session_cookie(gateway_client) -> None:
    c = await gateway_client(read_token=READ)
    r = await c.post("/api/session", headers={"Authorization": "Bearer wrong"})
    assert (r.status_code, "set-cookie" in r.headers) == (401, False)
    r = await c.post("/api/session", headers=READ_AUTH)
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    value = re.match(r"moonbus_read=([0-9a-f]+);", cookie).group(1)
    assert READ not in cookie  # the token itself never sits in the browser
    session = {"Cookie": f"moonbus_read={value}"}
    c.cookies.clear()
    assert (await c.get("/api/limits", headers=session)).status_code == 200
    r = await c.post("/api/killswitch", json={"action": "engage"}, headers=session)
    assert r.status_code == 401  # a cookie never writes: no cross-site request can use it
    assert not [s for s, _ in c.seen if s.startswith("risk.api.killswitch")]  # type: ignore[attr-defined]
    other = await gateway_client(read_token="another-read-token")  # a new token ends old sessions
    r = await other.get("/api/limits", headers=session)
    assert (r.status_code, error_code(r)) == (401, "unauthorized")
    # without a read token the session is a no-op: reads are open anyway
    open_reads = await gateway_client()
    r = await open_reads.post("/api/session")
    assert r.status_code == 204 and "set-cookie" not in r.headers


def test_refuses_to_listen_beyond_localhost_without_a_read_token() -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "gateway.example"):
        with pytest.raises(GatewayConfigError, match=READ_TOKEN_ENV):
            create_app(bus=None, config={"gateway": {"host": host}}, read_token="")
        create_app(bus=None, config={"gateway": {"host": host}}, read_token=READ)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        create_app(bus=None, config={"gateway": {"host": host}}, read_token="")


def test_python_m_services_gateway_says_why_it_refuses() -> None:
    env = {**os.environ, "MOONBUS__GATEWAY__HOST": '"0.0.0.0"', READ_TOKEN_ENV: ""}
    run = subprocess.run([sys.executable, "-m", "services.gateway"], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "refusing to start" in run.stderr and READ_TOKEN_ENV in run.stderr and "Traceback" not in run.stderr


# ---------------------------------------------------------------- Host allow-list, security headers


async def test_only_the_hosts_it_serves_are_answered(gateway_client) -> None:
    c = await gateway_client()
    for host in ("evil.example", "evil.example:8080", "127.0.0.1:9999", "localhost", "127.0.0.1.evil.example:8080",
                 "127.0.0.1:8080@evil", "[::1]:80"):
        r = await c.get("/health", headers={"Host": host})
        assert (r.status_code, error_code(r)) == (400, "bad_host"), host
    for host in ("127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080"):
        assert (await c.get("/health", headers={"Host": host})).status_code == 200, host
    # a write from a page whose name was rebound to 127.0.0.1: refused, token or not
    r = await c.post("/api/killswitch", json={"action": "engage"}, headers={**AUTH, "Host": "evil.example:8080"})
    assert (r.status_code, error_code(r)) == (400, "bad_host")
    assert c.seen == []  # type: ignore[attr-defined]
    app = create_app(bus=None, config=CONFIG, token=TOKEN, read_token="")
    status, _, _ = await asgi(app, "GET", "/health", {}, EndlessBody())  # no Host at all
    assert status == 400

    extra = await gateway_client(with_gateway(allowed_hosts=["gateway:8080", "Dash.Example"]))
    for host, status in (("gateway:8080", 200), ("gateway:80", 400), ("gateway", 400), ("dash.example", 200),
                         ("dash.example:1234", 200), ("127.0.0.1:8080", 200)):
        r = await extra.get("/api/limits", headers={"Host": host})
        assert r.status_code == status, host
    assert 'moonbus_gateway_refused_total{code="bad_host"}' in (await c.get("/metrics")).text


async def test_security_headers_on_every_response(gateway_client) -> None:
    c = await gateway_client(read_token=READ)
    page, script = await c.get("/"), await c.get("/static/dashboard.js")
    api, refused = await c.get("/api/limits", headers=READ_AUTH), await c.get("/api/limits")
    health, bad_host = await c.get("/health"), await c.get("/health", headers={"Host": "evil.example"})
    assert [r.status_code for r in (page, script, api, refused, health, bad_host)] == [200, 200, 200, 401, 200, 400]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    for r in (page, script, api, refused, health, bad_host):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY", r.url
        assert r.headers["referrer-policy"] == "no-referrer", r.url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], r.url
    for r in (page, api, refused, health):
        assert r.headers["cache-control"] == "no-store", r.url
    assert api.headers["content-security-policy"].startswith("default-src 'none'")


def test_the_dashboard_has_no_inline_code() -> None:
    """So that its CSP (default-src 'self') can forbid inline script and style."""
    html = (REPO_ROOT / "services/gateway/static/index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.DOTALL)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html and not re.search(r"\sstyle=", html) and not re.search(r"\son[a-z]+=", html)


# ---------------------------------------------------------------- bounded order lookups


async def never_answers(*_args: Any, **_kwargs: Any) -> None:
    await asyncio.Event().wait()


async def test_an_order_lookup_ends_within_its_time_bound(gateway_client) -> None:
    c = await gateway_client(with_gateway(order_lookup_timeout_s=0.2))
    started = time.monotonic()
    with mock.patch("services.ops.orderlog.trace", never_answers), \
            mock.patch("services.ops.orderlog.recent_orders", never_answers):
        r = await asyncio.wait_for(c.get("/api/orders/gw-unknown-1"), 5)
        assert (r.status_code, error_code(r)) == (404, "not_found")
        assert "0.2 s" in r.json()["error"]["message"]
        r = await asyncio.wait_for(c.get("/api/orders"), 5)
        assert (r.status_code, error_code(r)) == (503, "timeout")
    assert time.monotonic() - started < 3
    assert 'moonbus_gateway_refused_total{code="lookup_timeout"} 2.0' in (await c.get("/metrics")).text


async def test_order_lookups_at_once_are_capped(gateway_client) -> None:
    c = await gateway_client(with_gateway(max_order_lookups=1))
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(*_args: Any, **_kwargs: Any) -> None:
        entered.set()
        await release.wait()

    with mock.patch("services.ops.orderlog.trace", slow):
        first = asyncio.create_task(c.get("/api/orders/gw-a1"))
        await asyncio.wait_for(entered.wait(), 5)
        r = await asyncio.wait_for(c.get("/api/orders/gw-b1"), 5)
        assert (r.status_code, error_code(r)) == (503, "too_many_lookups")
        release.set()
        assert (await first).status_code == 404
        assert (await c.get("/api/orders/gw-c1")).status_code == 404  # the slot is free again


async def test_order_scan_max_bounds_the_search(gateway_client, connect) -> None:
    agent = await connect("trading-agent", inbox_prefix=inbox_prefix("trading-agent"))
    symbol, first, second = f"GW{uid()}-USD", f"gw-{uid()}", f"gw-{uid()}"
    for coid in (first, second):
        order = OrderRequest(client_order_id=coid, agent="trading", symbol=symbol, side=Side.BUY, quantity=D("1"),
                             origin_ts=now_ns(), ts=now_ns())
        await agent.jetstream().publish(f"orders.submit.trading.{symbol}", encode(order),
                                        headers={MSG_ID_HEADER: coid})
    bounded = await gateway_client(with_gateway(order_scan_max=1))
    r = await bounded.get(f"/api/orders/{second}", params={"since_s": 30})
    assert (r.status_code, error_code(r)) == (404, "not_found")  # it is there, past the bound
    r = await (await gateway_client()).get(f"/api/orders/{second}", params={"since_s": 30})
    assert r.status_code == 200 and r.json()["order"]["client_order_id"] == second
