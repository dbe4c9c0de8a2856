"""Hyperliquid perps: the local stand-in (tests/venues/hyperliquid.py) checked against a client
that signs with the official SDK's own functions, and the SDK's published signing vectors; then
the rust-execution adapter through the real binary (test_binary_* below).
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import aiohttp
import eth_account
import pytest
from hyperliquid.utils.signing import (
    action_hash,
    float_to_wire,
    order_request_to_order_wire,
    order_wires_to_order_action,
    recover_agent_or_user_from_l1_action,
    sign_l1_action,
)

from tests.venues.hyperliquid import Client, StandIn, canonical_action, valid_price

# hyperliquid-python-sdk tests/signing_test.py.
SDK_KEY = "0x0123456789012345678901234567890123456789012345678901234567890123"


def test_oracle_reproduces_the_sdk_vectors() -> None:
    """The stand-in's oracle is the SDK: its published vectors hold here too."""
    wallet = eth_account.Account.from_key(SDK_KEY)
    request = {"coin": "ETH", "is_buy": True, "sz": 100, "limit_px": 100, "reduce_only": False,
               "order_type": {"limit": {"tif": "Gtc"}}, "cloid": None}
    action = order_wires_to_order_action([order_request_to_order_wire(request, 1)])
    sig = sign_l1_action(wallet, action, None, 0, None, True)
    assert sig["r"] == "0xd65369825a9df5d80099e513cce430311d7d26ddf477f5b3a33d2806b100d78e"
    assert sig["v"] == 28
    assert recover_agent_or_user_from_l1_action(action, sig, None, 0, None, True) == wallet.address
    # The canonical re-build is the identity on what the SDK sends, JSON round trip included.
    assert canonical_action(json.loads(json.dumps(action))) == action
    shuffled = {"grouping": "na", "orders": [dict(reversed(list(action["orders"][0].items())))], "type": "order"}
    rebuilt = canonical_action(shuffled)
    assert action_hash(rebuilt, None, 0, None) == action_hash(action, None, 0, None)


def test_price_rules_and_wire_form() -> None:
    assert valid_price(Decimal("123456"), 5)
    assert valid_price(Decimal("1234.5"), 1)
    assert not valid_price(Decimal("1234.56"), 1)
    assert not valid_price(Decimal("0.0012345"), 0)
    assert float_to_wire(100.0) == "100" and float_to_wire(0.0147) == "0.0147"
    with pytest.raises(ValueError):
        canonical_action({"type": "order", "grouping": "na", "orders": [
            {"a": 0, "b": True, "p": "100.0", "s": "1", "r": False, "t": {"limit": {"tif": "Gtc"}}}]})


@pytest.fixture
async def venue() -> StandIn:
    v = await StandIn().start()
    yield v
    await v.stop()


async def test_stand_in_verifies_signer_nonce_and_expiry(venue: StandIn) -> None:
    good = Client(venue)
    status, body = await good.order("ETH", True, "0.01", "2900", cloid="0x" + "11" * 16)
    assert status == 200 and "resting" in body["response"]["data"]["statuses"][0], body
    # Another key: the venue recovers an address it does not know.
    other = eth_account.Account.create()
    status, body = await Client(venue, wallet=other).order("ETH", True, "0.01", "2900")
    assert body["status"] == "err" and other.address.lower() in body["response"]
    # A tampered action no longer recovers to the agent.
    status, body = await good.order("ETH", True, "0.01", "2900",
                                    tamper=lambda a: a | {"orders": [a["orders"][0] | {"s": "0.02"}]})
    assert body["status"] == "err" and "does not exist" in body["response"]
    # The same nonce twice; a nonce from 3 days ago; an expired action.
    nonce = int(time.time() * 1000) + 5
    status, body = await good.order("ETH", True, "0.01", "2900", nonce=nonce)
    assert body["status"] == "ok"
    status, body = await good.order("ETH", True, "0.01", "2900", nonce=nonce)
    assert body["status"] == "err" and "duplicate nonce" in body["response"]
    status, body = await good.order("ETH", True, "0.01", "2900", nonce=nonce - 3 * 24 * 3600 * 1000)
    assert body["status"] == "err" and "nonce" in body["response"]
    status, body = await good.order("ETH", True, "0.01", "2900", expires_after=int(time.time() * 1000) - 1)
    assert body["status"] == "err" and "expired" in body["response"]
    # Signed for mainnet, sent to testnet: another phantom agent, another signer.
    mainnet = Client(StandIn(agent=venue.agent, mainnet=True))
    mainnet.standin.port = venue.port
    status, body = await mainnet.order("ETH", True, "0.01", "2900")
    assert body["status"] == "err" and "does not exist" in body["response"]
    venue.force_429 = 1
    status, _ = await good.info({"type": "meta"})
    assert status == 429


async def test_stand_in_orders(venue: StandIn) -> None:
    c = Client(venue)
    cloid = "0x" + "ab" * 16
    _, body = await c.order("ETH", True, "0.1", "2900", cloid=cloid)
    oid = body["response"]["data"]["statuses"][0]["resting"]["oid"]
    _, body = await c.order("ETH", True, "0.1", "2900", cloid=cloid)
    assert body["response"]["data"]["statuses"][0] == {"error": "Duplicate cloid"}
    _, st = await c.info({"type": "orderStatus", "user": venue.account, "oid": cloid})
    assert st["status"] == "order" and st["order"]["order"]["oid"] == oid and st["order"]["status"] == "open"
    await venue.fill(cloid, Decimal("0.04"))
    _, st = await c.info({"type": "orderStatus", "user": venue.account, "oid": oid})
    assert (st["order"]["order"]["sz"], st["order"]["order"]["origSz"]) == ("0.06", "0.1")
    _, body = await c.action({"type": "cancelByCloid", "cancels": [{"asset": 1, "cloid": cloid}]})
    assert body["response"]["data"]["statuses"] == ["success"]
    _, body = await c.action({"type": "cancel", "cancels": [{"a": 1, "o": oid}]})
    assert "never placed" in body["response"]["data"]["statuses"][0]["error"]
    # Rules: size step, price figures, $10 minimum, reduce-only, IOC without liquidity.
    for sz, px, words in [("0.00001", "2900", "invalid size"), ("0.1", "2900.55", "tick size"),
                          ("0.001", "2900", "minimum value")]:
        _, body = await c.order("ETH", True, sz, px)
        assert words in body["response"]["data"]["statuses"][0]["error"], (sz, px, body)
    _, body = await c.order("ETH", True, "0.1", "3100", reduce_only=True)
    assert "Reduce only" in body["response"]["data"]["statuses"][0]["error"]
    _, body = await c.order("ETH", True, "0.1", "2900", tif="Ioc")
    assert "could not immediately match" in body["response"]["data"]["statuses"][0]["error"]
    # A crossing IOC with 0.03 of liquidity: filled 0.03, the rest cancelled.
    venue.ioc_liquidity = Decimal("0.03")
    _, body = await c.order("ETH", False, "0.05", "2985", tif="Ioc", cloid="0x" + "cd" * 16)
    assert body["response"]["data"]["statuses"][0]["filled"]["totalSz"] == "0.03"
    _, st = await c.info({"type": "orderStatus", "user": venue.account, "oid": "0x" + "cd" * 16})
    assert st["order"]["status"] == "canceled"
    # A short was opened: SELL with no position; the fills are the user's.
    _, state = await c.info({"type": "clearinghouseState", "user": venue.account})
    szi = {p["position"]["coin"]: p["position"]["szi"] for p in state["assetPositions"]}
    assert szi == {"ETH": "0.01"}  # +0.04 bought, -0.03 sold
    _, fills = await c.info({"type": "userFills", "user": venue.account})
    assert len(fills) == 2 and {f["oid"] for f in fills} == {oid, st["order"]["order"]["oid"]}
    venue.reject_next.append("Insufficient margin to place order. asset=1")
    _, body = await c.order("ETH", True, "0.1", "2900")
    assert "Insufficient margin" in body["response"]["data"]["statuses"][0]["error"]


async def test_stand_in_websocket_feeds(venue: StandIn) -> None:
    c = Client(venue)
    _, body = await c.order("BTC", True, "0.001", "59000", cloid="0x" + "01" * 16)
    await venue.fill("0x" + "01" * 16, Decimal("0.0004"))
    async with aiohttp.ClientSession() as session, session.ws_connect(venue.ws_url) as ws:
        for feed in ("userFills", "orderUpdates"):
            await ws.send_json({"method": "subscribe", "subscription": {"type": feed, "user": venue.account}})
        assert (await ws.receive_json(timeout=5))["channel"] == "subscriptionResponse"
        snap = await ws.receive_json(timeout=5)
        assert snap["channel"] == "userFills" and snap["data"]["isSnapshot"] is True
        assert [f["sz"] for f in snap["data"]["fills"]] == ["0.0004"]
        assert (await ws.receive_json(timeout=5))["channel"] == "subscriptionResponse"
        await ws.send_json({"method": "ping"})
        assert (await ws.receive_json(timeout=5)) == {"channel": "pong"}
        await venue.fill("0x" + "01" * 16, Decimal("0.0006"))
        live = await ws.receive_json(timeout=5)
        assert live["data"]["isSnapshot"] is False and live["data"]["fills"][0]["tid"] == 2
        upd = await ws.receive_json(timeout=5)
        assert upd["channel"] == "orderUpdates" and upd["data"][0]["status"] == "filled"
        await ws.send_str("not json")
        assert (await ws.receive_json(timeout=5))["channel"] == "error"
        await venue.drop_ws()
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    await asyncio.sleep(0)
