"""The Binance family: the local stand-in (tests/venues/binance.py) checked against a client
that signs like Binance's SDKs, spot and USDⓈ-M futures (and Aster, the same API at other URLs);
then the rust-execution adapter through the real binary (test_binary_* below).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
async def spot() -> StandIn:
    venue = await StandIn(flavor=SPOT).start()
    yield venue
    await venue.stop()


@pytest.fixture
async def futures() -> StandIn:
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
