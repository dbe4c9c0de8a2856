"""The Binance family: the local stand-in (tests/venues/binance.py) checked against a client
that signs like Binance's SDKs, spot and USDⓈ-M futures (and Aster, the same API at other URLs);
then the rust-execution adapter through the real binary (test_binary_* below).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal

import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common.bus import flush
from services.contract.models import ExecutionReport
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port
from tests.venues import reasons_left
from tests.venues.binance import FUTURES, SPOT, Client, StandIn, hmac_signature, verify_signature

# Binance spot API docs, "SIGNED Endpoint Examples for POST /api/v3/order - HMAC Keys".
DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOC_QUERY = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
             "&recvWindow=5000&timestamp=1499827319559")
DOC_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_stand_in_verifies_the_docs_hmac_example() -> None:
    assert hmac_signature(DOC_SECRET, DOC_QUERY) == DOC_SIGNATURE
    assert verify_signature(f"{DOC_QUERY}&signature={DOC_SIGNATURE}", DOC_SECRET, None)
    tampered = DOC_QUERY.replace("quantity=1", "quantity=2")
    assert not verify_signature(f"{tampered}&signature={DOC_SIGNATURE}", DOC_SECRET, None)
    assert not verify_signature(DOC_QUERY, DOC_SECRET, None)


def test_stand_in_verifies_ed25519_like_the_sdk() -> None:
    key = Ed25519PrivateKey.generate()
    client = Client(StandIn(), "k", private_key=key)
    query = client.signed_query({"symbol": "BTCUSDT"}, timestamp=1)
    assert verify_signature(query, None, key.public_key())
    assert not verify_signature(query, None, Ed25519PrivateKey.generate().public_key())
    assert not verify_signature(query.replace("BTCUSDT", "ETHUSDT"), None, key.public_key())


@pytest.fixture
async def spot() -> AsyncIterator[StandIn]:
    venue = await StandIn(flavor=SPOT).start()
    yield venue
    await venue.stop()


@pytest.fixture
async def futures() -> AsyncIterator[StandIn]:
    venue = await StandIn(flavor=FUTURES).start()
    yield venue
    await venue.stop()


async def test_stand_in_auth_and_clock(spot: StandIn) -> None:
    good = Client(spot, spot.api_key, secret=spot.secret)
    status, body = await good.request("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"})
    assert status == 200 and body == []
    status, body = await Client(spot, spot.api_key, secret="wrong").request("GET", "/api/v3/openOrders", {})
    assert (status, body["code"]) == (400, -1022)
    status, body = await Client(spot, "other-key", secret=spot.secret).request("GET", "/api/v3/openOrders", {})
    assert (status, body["code"]) == (401, -2015)
    status, body = await good.request("GET", "/api/v3/openOrders", {}, timestamp=spot.now_ms() - 6000)
    assert (status, body["code"]) == (400, -1021)
    status, body = await good.request("GET", "/api/v3/openOrders", {}, timestamp=spot.now_ms() + 1500)
    assert (status, body["code"]) == (400, -1021)


async def test_stand_in_ed25519_account() -> None:
    key = Ed25519PrivateKey.generate()
    venue = await StandIn(flavor=SPOT, secret=None, public_key=key.public_key()).start()
    try:
        status, body = await Client(venue, venue.api_key, private_key=key).request("GET", "/api/v3/account", {})
        assert status == 200 and body["balances"]
        other = Client(venue, venue.api_key, private_key=Ed25519PrivateKey.generate())
        status, body = await other.request("GET", "/api/v3/account", {})
        assert (status, body["code"]) == (400, -1022)
    finally:
        await venue.stop()


async def test_stand_in_orders_spot(spot: StandIn) -> None:
    client = Client(spot, spot.api_key, secret=spot.secret)
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001",
             "price": "59000", "newClientOrderId": "a-1", "newOrderRespType": "RESULT"}
    status, body = await client.request("POST", "/api/v3/order", order)
    assert status == 200 and body["status"] == "NEW"
    status, body = await client.request("POST", "/api/v3/order", order)
    assert (status, body["code"], body["msg"]) == (400, -2010, "Duplicate order sent.")
    await spot.fill("a-1", Decimal("0.0004"))
    status, body = await client.request("GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "a-1"})
    assert body["status"] == "PARTIALLY_FILLED" and Decimal(body["cummulativeQuoteQty"]) == Decimal("23.6")
    status, body = await client.request("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "a-1"})
    assert body["status"] == "CANCELED"
    status, body = await client.request("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "a-1"})
    assert (status, body["code"]) == (400, -2011)
    status, body = await client.request("GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "zz"})
    assert (status, body["code"]) == (400, -2013)
    ioc = order | {"newClientOrderId": "a-2", "timeInForce": "IOC"}
    status, body = await client.request("POST", "/api/v3/order", ioc)
    assert body["status"] == "EXPIRED"
    bad = order | {"newClientOrderId": "a-3", "price": "59000.001"}
    status, body = await client.request("POST", "/api/v3/order", bad)
    assert (status, body["code"]) == (400, -1013)
    spot.force_429 = 1
    status, body = await client.request("GET", "/api/v3/openOrders", {})
    assert status == 429


async def test_stand_in_ws_api_subscription(spot: StandIn) -> None:
    import aiohttp

    from tests.venues.binance import ws_api_payload

    async def subscribe(secret: str, timestamp: int) -> dict:
        params: dict[str, object] = {"apiKey": spot.api_key, "timestamp": timestamp}
        params["signature"] = hmac_signature(secret, ws_api_payload(params))
        await ws.send_json({"id": "s1", "method": "userDataStream.subscribe.signature", "params": params})
        return await ws.receive_json(timeout=5)

    async with aiohttp.ClientSession() as session, session.ws_connect(f"{spot.ws_url}/ws-api/v3") as ws:
        assert (await subscribe("wrong", spot.now_ms()))["error"]["code"] == -1022
        assert (await subscribe(spot.secret, spot.now_ms() - 10_000))["error"]["code"] == -1021
        answer = await subscribe(spot.secret, spot.now_ms())
        assert answer["status"] == 200 and "subscriptionId" in answer["result"]
        assert spot.stream_count() == 1
        spot.add_order("w-1", "BUY", Decimal("0.001"), Decimal("59000"))
        await spot.fill("w-1", Decimal("0.001"))
        event = await ws.receive_json(timeout=5)
        assert event["subscriptionId"] == answer["result"]["subscriptionId"]
        assert event["event"]["e"] == "executionReport" and event["event"]["X"] == "FILLED"
        await spot.expire_listen_keys()
        assert (await ws.receive_json(timeout=5))["event"]["e"] == "eventStreamTerminated"


async def test_stand_in_futures_stream_and_reduce_only(futures: StandIn) -> None:
    import aiohttp

    client = Client(futures, futures.api_key, secret=futures.secret)
    status, body = await client.request("POST", "/fapi/v1/listenKey", {}, signed=False)
    key = body["listenKey"]
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{futures.ws_url}/ws/{key}") as ws:
        order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002",
                 "newClientOrderId": "f-1", "newOrderRespType": "RESULT"}
        status, body = await client.request("POST", "/fapi/v1/order", order)
        assert body["status"] == "FILLED" and Decimal(body["cumQuote"]) == Decimal("120.000")
        events = [await ws.receive_json(timeout=5) for _ in range(2)]
        assert [e["o"]["X"] for e in events] == ["NEW", "FILLED"]
        status, body = await client.request("POST", "/fapi/v1/order", order)
        assert body["code"] == -4116
        closing = order | {"side": "SELL", "quantity": "0.003", "reduceOnly": "true", "newClientOrderId": "f-2"}
        status, body = await client.request("POST", "/fapi/v1/order", closing)
        assert body["code"] == -2022
        await futures.expire_listen_keys()
        assert (await ws.receive_json(timeout=5))["e"] == "listenKeyExpired"


# ---------------------------------------------------------------------------------------------
# The adapter through the real rust-execution binary: market-data, risk and execution started
# by the launcher, [execution.live.binance] pointed at the stand-in by env overrides.

WAIT = 60.0
BASE_ENV = {
    "RUST_LOG": "warn",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "50",
    "MOONBUS__RISK__STARTING_CASH": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"10000000"',
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__EXECUTION__LIVE_POLL_MS": "200",
    "MOONBUS__EXECUTION__RECONCILE_INTERVAL_MS": "2000",
}


class Operator:
    def __init__(self, system: System, nc: nats.NATS) -> None:
        self.system, self.nc, self.js = system, nc, nc.jetstream()
        self.reports: dict[str, list[ExecutionReport]] = defaultdict(list)
        self.sent = 0
        self.kind = ""

    async def on_report(self, msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id:
            self.reports[report.client_order_id].append(report)

    async def until(self, condition, what: str, timeout: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{self.system.tail(40)}"
            await asyncio.sleep(0.05)

    def statuses(self, order_id: str) -> list[str]:
        return [str(r.status.value if hasattr(r.status, "value") else r.status) for r in self.reports[order_id]]

    async def wait_status(self, order_id: str, status: str) -> ExecutionReport:
        await self.until(lambda: status in self.statuses(order_id),
                         f"{order_id} {status}: {self.reports[order_id]}")
        return self.reports[order_id][self.statuses(order_id).index(status)]

    async def submit(self, side: str, quantity: str, price: str | None = None, tif: str = "GTC",
                     order_id: str | None = None, reduce_only: bool = False) -> str:
        self.sent += 1
        order_id = order_id or f"bn-{self.sent}"
        body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "venue": "binance",
                "side": side, "type": "LIMIT" if price else "MARKET", "quantity": quantity,
                "time_in_force": tif, "reduce_only": reduce_only, "origin_ts": 1, "ts": 1}
        if price:
            body["limit_price"] = price
        await self.js.publish("orders.submit.operator.BTC-USD", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": order_id})
        return order_id

    async def cancel(self, order_id: str) -> None:
        body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "ts": 1}
        await self.js.publish("orders.cancel.operator.BTC-USD", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": f"cancel-{order_id}"})


def live_env(kind: str, venue: StandIn, extra: dict[str, str]) -> dict[str, str]:
    prefix = "MOONBUS__EXECUTION__LIVE__BINANCE__"
    return BASE_ENV | {
        prefix + "KIND": f'"{kind}"',
        prefix + "MODE": '"testnet"',
        prefix + "MAX_NOTIONAL": '"100000"',
        prefix + "SYMBOLS": '{ "BTC-USD" = "BTCUSDT" }',
        prefix + "REST_URL": f'"{venue.rest_url}"',
        prefix + "WS_URL": f'"{venue.ws_url}"',
        prefix + "TIMEOUT_MS": "1500",
        "BINANCE_API_KEY": venue.api_key,
        "ASTER_API_KEY": venue.api_key,
    } | extra


@pytest.fixture
async def live(request, tmp_path) -> AsyncIterator[tuple[StandIn, Operator]]:
    kind, key_type = request.param
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup`")
    extra: dict[str, str] = {}
    if key_type == "ed25519":
        key = Ed25519PrivateKey.generate()
        venue = StandIn(flavor=SPOT if kind == "binance_spot" else FUTURES, secret=None,
                        public_key=key.public_key())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path = tmp_path / "binance-ed25519.pem"
        path.write_bytes(pem)
        os.chmod(path, 0o600)
        extra = {"MOONBUS__EXECUTION__LIVE__BINANCE__KEY_TYPE": '"ed25519"', "BINANCE_PRIVATE_KEY_FILE": str(path)}
    else:
        venue = StandIn(flavor=SPOT if kind == "binance_spot" else FUTURES)
        extra = {"BINANCE_API_SECRET": venue.secret, "ASTER_API_SECRET": venue.secret}
    await venue.start()
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk", "execution"],
                            out=None, env=live_env(kind, venue, extra))
    nc = None
    try:
        env = system.env_for("operator")
        nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                                inbox_prefix=f"_INBOX.{env['NATS_USER']}")
        operator = Operator(system, nc)
        operator.kind = kind
        await nc.subscribe("exec.report.>", cb=operator.on_report)
        await operator.until(lambda: venue.stream_count() > 0, "the user data stream connected")
        yield venue, operator
    finally:
        if nc is not None:
            await nc.close()
        system.stop()
        await venue.stop()
        print(system.tail(60))


async def first_order(operator: Operator, venue: StandIn) -> None:
    """Risk needs fresh prices before it approves: retry a small probe until one is routed."""
    quantity = "0.001" if venue.flavor == SPOT else "0.002"
    for attempt in range(100):
        order_id = await operator.submit("BUY", quantity, order_id=f"warm-{attempt}")
        await operator.until(lambda: operator.reports[order_id], f"a report for {order_id}")
        await asyncio.sleep(0.3)
        if order_id in venue.orders:
            await operator.wait_status(order_id, "FILLED")
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no order reached the venue: {dict(operator.reports)}")


@pytest.mark.e2e
@pytest.mark.parametrize("live", [("binance_spot", "hmac")], indirect=True)
async def test_binary_spot(live: tuple[StandIn, Operator]) -> None:
    venue, op = live
    await first_order(op, venue)
    # MARKET BUY: filled at the venue, reported with its fee (0.1% in USDT).
    market = await op.submit("BUY", "0.002")
    filled = await op.wait_status(market, "FILLED")
    assert Decimal(str(filled.fee)) == Decimal("0.12"), filled
    assert venue.orders[market].client_id == market
    # LIMIT GTC below the market rests; a partial fill, then our cancel.
    resting = await op.submit("BUY", "0.003", price="59000.00")
    await op.until(lambda: resting in venue.orders, "the resting order at the venue")
    await op.wait_status(resting, "ACCEPTED")
    await venue.fill(resting, Decimal("0.001"))
    await op.wait_status(resting, "PARTIALLY_FILLED")
    await op.cancel(resting)
    cancelled = await op.wait_status(resting, "CANCELLED")
    assert venue.orders[resting].status == "CANCELED", cancelled
    # A fill racing our cancel, told only by the cancel's answer (whose clientOrderId is the
    # cancel's own, the order being origClientOrderId): booked under the order, fee and all.
    raced = await op.submit("BUY", "0.003", price="59000.00")
    await op.until(lambda: raced in venue.orders, "the order at the venue")
    await op.wait_status(raced, "ACCEPTED")
    venue.fill_in_cancel = Decimal("0.001")
    await op.cancel(raced)
    cancelled = await op.wait_status(raced, "CANCELLED")
    venue.fill_in_cancel = Decimal(0)
    told = [(r.status.value, r.filled_quantity, r.fee) for r in op.reports[raced]]
    assert Decimal(str(cancelled.filled_quantity)) == Decimal("0.001"), told
    assert sum(Decimal(str(r.fee)) for r in op.reports[raced]) == Decimal("0.059"), told  # a report's fee is its fill's
    # IOC that does not cross: EXPIRED.
    ioc = await op.submit("BUY", "0.001", price="50000", tif="IOC")
    await op.wait_status(ioc, "EXPIRED")
    # Not a multiple of the tick: REJECTED before sending.
    bad = await op.submit("BUY", "0.001", price="59000.001")
    rejected = await op.wait_status(bad, "REJECTED")
    assert "tick_size" in (rejected.reason or ""), rejected
    assert bad not in venue.orders
    # The stream drops; a fill meanwhile is found (reconnect or REST query).
    later = await op.submit("BUY", "0.001", price="59500.00")
    await op.until(lambda: later in venue.orders, "the order at the venue")
    await op.wait_status(later, "ACCEPTED")
    await venue.drop_streams()
    await venue.fill(later, Decimal("0.001"))
    filled = await op.wait_status(later, "FILLED")
    assert Decimal(str(filled.fee)) == Decimal("0.0595"), filled  # from the trade list if the stream missed it
    await op.until(lambda: venue.stream_count() > 0, "the stream reconnected")
    # 429: the venue refuses, sending stops until Retry-After has passed.
    venue.force_429 = 1
    venue.retry_after = 3
    limited = await op.submit("BUY", "0.001")
    rejected = await op.wait_status(limited, "REJECTED")
    assert "rate_limited" in (rejected.reason or ""), rejected
    blocked = await op.submit("BUY", "0.001")
    rejected = await op.wait_status(blocked, "REJECTED")
    assert "rate_limited" in (rejected.reason or ""), rejected
    assert limited not in venue.orders and blocked not in venue.orders
    # The venue fills more than ordered: no report (no figure can be ours), the order stays as
    # last reported, and errors.execution says so, once, however often the state comes again.
    errors = await op.nc.subscribe("errors.execution")
    await flush(op.nc)
    await asyncio.sleep(3)  # the 429's Retry-After has passed
    over = await op.submit("BUY", "0.001", price="59000.00")
    await op.until(lambda: over in venue.orders, "the order at the venue")
    await op.wait_status(over, "ACCEPTED")
    await venue.fill(over, Decimal("0.002"), beyond=True)
    event = json.loads((await errors.next_msg(timeout=10)).data)
    assert event["subject"] == "exec.venue.binance", event
    assert f"venue state of {over} not applied: overfill" in event["reason"], event
    await venue.drop_streams()  # the order is queried while the stream is down: the same state
    await op.until(lambda: venue.stream_count() > 0, "the stream reconnected")
    await asyncio.sleep(1)
    again = await reasons_left(errors)
    assert not [r for r in again if over in r], again
    assert op.statuses(over) == ["ACCEPTED"], op.statuses(over)
    # Reconciliation reads balances, open orders, and prices for the equity.
    for path in ("/api/v3/account", "/api/v3/openOrders", "/api/v3/ticker/price"):
        assert any(p == path for _, p, _ in venue.requests), path
    # Spot's private stream is the WebSocket API subscription (listenKeys ended 2026-02-20).
    assert not [p for _, p, _ in venue.requests if p == "/api/v3/userDataStream"]
    # No request was ever refused for its signature or its timestamp.
    assert not [r for r in venue.refusals if r[1] in (-1022, -2015, -1021)], venue.refusals


@pytest.mark.e2e
@pytest.mark.parametrize("live", [("binance_futures", "ed25519"), ("aster", "hmac")], indirect=True)
async def test_binary_futures(live: tuple[StandIn, Operator]) -> None:
    venue, op = live
    await first_order(op, venue)
    market = await op.submit("BUY", "0.002")
    filled = await op.wait_status(market, "FILLED")
    assert Decimal(str(filled.fee)) == Decimal("0.12"), filled
    # The venue's clock jumps 8 s ahead: -1021, the adapter syncs again and the order goes.
    venue.clock_skew_ms = 8000
    skewed = await op.submit("SELL", "0.002", reduce_only=True)
    await op.wait_status(skewed, "FILLED")
    assert any(code == -1021 for _, code in venue.refusals), venue.refusals
    assert venue.orders[skewed].reduce_only
    # A cancel that comes too late: the order filled just before (-2011): FILLED, not CANCELLED.
    late = await op.submit("BUY", "0.002", price="59000.0")
    await op.until(lambda: late in venue.orders, "the order at the venue")
    await op.wait_status(late, "ACCEPTED")
    await venue.drop_streams()  # the fill's event is lost with the stream
    venue.fill_before_cancel = True
    await op.cancel(late)
    filled = await op.wait_status(late, "FILLED")
    assert Decimal(str(filled.fee)) == Decimal("0.118"), filled
    assert "CANCELLED" not in op.statuses(late)
    assert any(code == -2011 for _, code in venue.refusals), venue.refusals
    venue.fill_before_cancel = False
    # A filter failure of the venue's futures rules (MIN_NOTIONAL notional 100).
    small = await op.submit("BUY", "0.001", price="59000.0")
    rejected = await op.wait_status(small, "REJECTED")
    assert "min_notional" in (rejected.reason or ""), rejected
    assert not [r for r in venue.refusals if r[1] in (-1022, -2015)], venue.refusals
    # A stream event the adapter cannot read (a TRADE without its trade id and price): not
    # applied, and told on errors.execution under the order's id, not only logged.
    errors = await op.nc.subscribe("errors.execution")
    await flush(op.nc)
    resting = await op.submit("BUY", "0.002", price="58000.0")
    await op.until(lambda: resting in venue.orders, "the order at the venue")
    await op.wait_status(resting, "ACCEPTED")
    await op.until(lambda: venue.stream_count() > 0, "the stream reconnected")
    now = venue.now_ms()
    await venue.push({"e": "ORDER_TRADE_UPDATE", "E": now, "T": now, "o": {
        "s": "BTCUSDT", "c": venue.orders[resting].client_id, "x": "TRADE", "X": "PARTIALLY_FILLED",
        "z": "0.001", "ap": "58000"}})
    seen = []
    while not any(resting in e["reason"] for e in seen):
        seen.append(json.loads((await errors.next_msg(timeout=10)).data))
    told = seen[-1]
    assert told["subject"] == "exec.venue.binance", told
    assert told["reason"].startswith(f"venue state of {resting} not applied: malformed event: TRADE without t: "), seen
    assert op.statuses(resting) == ["ACCEPTED"], op.statuses(resting)
    # A fill the stream missed whose trades cannot be read (a 500): FILLED, its fee left out,
    # and errors.execution says so under the order's id (it was only a log line).
    unread = await op.submit("BUY", "0.002", price="58000.0")
    await op.until(lambda: unread in venue.orders, "the order at the venue")
    await op.wait_status(unread, "ACCEPTED")
    await venue.drop_streams()
    venue.trades_error = True
    await venue.fill(unread, Decimal("0.002"))
    await op.wait_status(unread, "FILLED")
    while not any(unread in e["reason"] and "fee may be left out" in e["reason"] for e in seen):
        seen.append(json.loads((await errors.next_msg(timeout=10)).data))
    venue.trades_error = False
    await op.until(lambda: venue.stream_count() > 0, "the stream reconnected")
    # Reconciliation reads the futures account and open orders.
    account = "/fapi/v4/account" if op.kind == "aster" else "/fapi/v2/account"
    assert any(path == account for _, path, _ in venue.requests), account
    assert any(path == "/fapi/v1/openOrders" for _, path, _ in venue.requests)


@pytest.mark.e2e
@pytest.mark.parametrize("live", [("binance_spot", "hmac"), ("binance_spot", "ed25519")], indirect=True)
async def test_binary_spot_unknown_outcomes(live: tuple[StandIn, Operator]) -> None:
    venue, op = live
    await first_order(op, venue)
    # Already at the venue (a duplicate client id, -2010): queried and followed, not doubled.
    venue.add_order("bn-dup", "BUY", Decimal("0.001"), Decimal("59000.00"))
    dup = await op.submit("BUY", "0.001", price="59000.00", order_id="bn-dup")
    await op.wait_status(dup, "ACCEPTED")
    # ACCEPTED is stored when risk approves, before the send: the refusal may come after it.
    await op.until(lambda: any(code == -2010 for _, code in venue.refusals), "the venue refused the duplicate")
    await venue.fill(dup, Decimal("0.001"))
    await op.wait_status(dup, "FILLED")
    # Placed, but the answer is a 503: unknown outcome, queried, found filled; never resent.
    venue.answer_5xx = 1
    lost = await op.submit("BUY", "0.001")
    filled = await op.wait_status(lost, "FILLED")
    assert Decimal(str(filled.fee)) == Decimal("0.06"), filled
    # Placed, but the answer comes after our timeout (1.5 s): the same.
    venue.answer_delay = 2.5
    slow = await op.submit("BUY", "0.001")
    await op.wait_status(slow, "FILLED")
    venue.answer_delay = 0
    posts = [p for m, path, p in venue.requests if m == "POST" and path == "/api/v3/order"]
    assert [p["newClientOrderId"] for p in posts].count(lost) == 1
    assert [p["newClientOrderId"] for p in posts].count(slow) == 1
    # A client id longer than Binance's 36 characters goes as a derived one, reported as ours.
    long_id = "operator-order-with-a-rather-long-id-0123456789"
    await op.submit("BUY", "0.001", order_id=long_id)
    await op.wait_status(long_id, "FILLED")
    assert long_id not in venue.orders
    assert any(o.client_id.startswith("mb-") and len(o.client_id) == 36 for o in venue.orders.values())
    # The listenKey expires: a new one, a new connection, fills still arrive by the stream.
    await venue.expire_listen_keys()
    await op.until(lambda: venue.stream_count() > 0, "the stream reconnected with a new listenKey")
    resting = await op.submit("BUY", "0.002", price="59100.00")
    await op.until(lambda: resting in venue.orders, "the order at the venue")
    await venue.fill(resting, Decimal("0.002"))
    await op.wait_status(resting, "FILLED")
    # A fee charged in BNB cannot be converted: left out of the report (and logged).
    venue.fee_asset = "BNB"
    bnb = await op.submit("BUY", "0.001")
    filled = await op.wait_status(bnb, "FILLED")
    assert Decimal(str(filled.fee)) == 0 and venue.orders[bnb].trades[0]["commissionAsset"] == "BNB", filled
    venue.fee_asset = None
    # The venue's rules change (step 0.001): its -1013 makes the adapter read them again,
    # and the next such order is refused before it is sent.
    venue.rules["BTCUSDT"].step = Decimal("0.001")
    venue.rules["BTCUSDT"].min_qty = Decimal("0.001")
    first = await op.submit("BUY", "0.0015")
    rejected = await op.wait_status(first, "REJECTED")
    assert (rejected.reason or "").startswith("-1013"), rejected
    await op.until(lambda: sum(p == "/api/v3/exchangeInfo" for _, p, _ in venue.requests) >= 2, "exchangeInfo again")
    await asyncio.sleep(0.2)
    second = await op.submit("BUY", "0.0015")
    rejected = await op.wait_status(second, "REJECTED")
    assert (rejected.reason or "").startswith("lot_size:"), rejected
    # An IP ban (418): REJECTED rate_limited, nothing sent while it lasts.
    venue.ban(3)
    banned = await op.submit("BUY", "0.001")
    rejected = await op.wait_status(banned, "REJECTED")
    assert "rate_limited" in (rejected.reason or ""), rejected
    assert banned not in venue.orders
    assert not [r for r in venue.refusals if r[1] in (-1022, -2015, -1021)], venue.refusals
