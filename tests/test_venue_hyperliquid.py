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

from tests.venues import reasons_left
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


# ----- the adapter through the real binary -------------------------------------------------

import hashlib  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import nats  # noqa: E402

from services.common.bus import flush  # noqa: E402
from services.devstack.launcher import SERVICES, System  # noqa: E402
from services.devstack.natsserver import REPO_ROOT, free_port  # noqa: E402

RISK_ENV = {
    "RUST_LOG": "warn,rust_execution=info",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "50",
    "MOONBUS__RISK__STARTING_CASH": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"10000000"',
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__RATE_LIMIT_REDUCE_ONLY": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
}
WAIT = 60.0


def cloid_of(client_order_id: str) -> str:
    return "0x" + hashlib.sha256(client_order_id.encode()).digest()[:16].hex()


@pytest.fixture
def standin_loop_venue() -> Iterator[tuple[asyncio.AbstractEventLoop, StandIn]]:
    """The stand-in runs on its own event loop in a thread: the test's loop awaits NATS."""
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    venue = StandIn(mids={"BTC": Decimal("97000"), "ETH": Decimal("3500"), "SOL": Decimal("150")})
    asyncio.run_coroutine_threadsafe(venue.start(), loop).result(10)
    try:
        yield loop, venue
    finally:
        asyncio.run_coroutine_threadsafe(venue.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.fixture
def extra_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A test's own variables (parametrize indirectly)."""
    return getattr(request, "param", {})


@pytest.fixture
def system(tmp_path: Path, standin_loop_venue: tuple[asyncio.AbstractEventLoop, StandIn],
           extra_env: dict[str, str]) -> Iterator[System]:
    if not (REPO_ROOT / "rust-execution/src/live/router.rs").exists():
        pytest.skip("the live router is not there yet")
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    _, venue = standin_loop_venue
    env = RISK_ENV | {
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__KIND": '"hyperliquid"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__MODE": '"testnet"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__MAX_NOTIONAL": '"100000"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__SYMBOLS": '{ "ETH-USD" = "ETH", "BTC-USD" = "BTC" }',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__REST_URL": f'"{venue.rest_url}"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__WS_URL": f'"{venue.ws_url}"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__PING_SECS": "2",
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__EXPIRES_AFTER_MS": "3000",
        "MOONBUS__EXECUTION__LIVE_POLL_MS": "300",
        # A killed execution's unacknowledged order comes back after 5 s (> 4 x 1000 ms).
        "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
        "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
        "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
        "MOONBUS__EXECUTION__RECONCILE_INTERVAL_MS": "500",
        "HYPERLIQUID_AGENT_PRIVATE_KEY": venue.agent_key,
        "HYPERLIQUID_ACCOUNT_ADDRESS": venue.account,
    } | extra_env
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk", "execution"],
                            out=None, env=env)
    try:
        yield system
    finally:
        system.stop()
        print(system.tail(60))  # shown by pytest only when the test failed


class Operator:
    def __init__(self, system: System, nc, loop: asyncio.AbstractEventLoop, venue: StandIn) -> None:
        self.system, self.nc, self.loop, self.venue = system, nc, loop, venue
        self.js = nc.jetstream()
        self.reports: dict[str, list[dict]] = defaultdict(list)

    async def on_report(self, msg) -> None:
        report = json.loads(msg.data)
        if report.get("client_order_id"):
            self.reports[report["client_order_id"]].append(report)

    async def hook(self, coro):
        """Run a stand-in hook on its own loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def until(self, condition, what: str, timeout: float = WAIT) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, (
                f"timed out waiting for: {what}\nreports: {dict(self.reports)}\nrefusals: {self.venue.refusals}\n"
                f"{self.system.tail(40)}")
            await asyncio.sleep(0.05)

    def statuses(self, cid: str) -> list[str]:
        return [r["status"] for r in self.reports[cid]]

    async def wait_status(self, cid: str, status: str) -> dict:
        await self.until(lambda: status in self.statuses(cid), f"{cid} {status}")
        return [r for r in self.reports[cid] if r["status"] == status][-1]

    async def submit(self, cid: str, symbol: str, side: str, quantity: str, limit: str | None = None,
                     tif: str = "GTC", reduce_only: bool = False) -> None:
        body = {"client_order_id": cid, "agent": "operator", "symbol": symbol, "venue": "hyperliquid",
                "side": side, "type": "LIMIT" if limit else "MARKET", "quantity": quantity,
                "time_in_force": tif, "reduce_only": reduce_only, "origin_ts": 1, "ts": 1}
        if limit:
            body["limit_price"] = limit
        await self.js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": cid})

    async def cancel(self, cid: str, symbol: str) -> None:
        body = {"client_order_id": cid, "agent": "operator", "symbol": symbol, "ts": 1}
        await self.js.publish(f"orders.cancel.operator.{symbol}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": f"cancel-{cid}"})


@pytest.fixture
async def operator(system: System, standin_loop_venue) -> AsyncIterator[Operator]:
    import nats

    loop, venue = standin_loop_venue
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    op = Operator(system, nc, loop, venue)
    try:
        await nc.subscribe("exec.report.>", cb=op.on_report)
        states: dict[str, str] = {}

        async def on_verdict(msg) -> None:
            verdict = json.loads(msg.data)
            states[verdict["symbol"]] = verdict["state"]

        sub = await nc.subscribe("risk.verdict.>", cb=on_verdict)
        await op.until(lambda: states.get("ETH-USD") == "ACTIVE", "risk trading ETH-USD", timeout=120)
        await sub.unsubscribe()
        await op.until(lambda: venue.subscribed("userFills") and venue.subscribed("orderUpdates"),
                       "the adapter subscribed to the user feeds")
        yield op
    finally:
        await nc.close()


@pytest.mark.e2e
async def test_binary_limit_rests_fills_in_part_and_cancels(operator: Operator) -> None:
    op, venue = operator, operator.venue
    await op.submit("hl-1", "ETH-USD", "BUY", "0.1", limit="3400")
    await op.wait_status("hl-1", "ACCEPTED")
    # ACCEPTED is stored before the order is sent: the venue has it a moment later.
    await op.until(lambda: cloid_of("hl-1").lower() in venue.by_cloid, "hl-1 at the venue")
    order = venue.find(cloid_of("hl-1"))  # the cloid is sha256(client_order_id)[:16]
    assert (order.px, order.orig_sz, order.tif, order.is_buy) == (Decimal("3400"), Decimal("0.1"), "Gtc", True)
    # Malformed frames are not applied (each told on errors.execution); the stream goes on (the
    # same connection).
    connections = list(venue.sockets)
    for junk in ("not json", '{"channel":"userFills","data":{"user":"%s","fills":[{"px":"x"}]}}' % venue.account,
                 '{"channel":"orderUpdates","data":{"oops":1}}', '{"data":[]}'):
        await op.hook(venue.push_raw(junk))
    await op.hook(venue.fill(order.oid, Decimal("0.04")))
    partial = await op.wait_status("hl-1", "PARTIALLY_FILLED")
    assert Decimal(partial["filled_quantity"]) == Decimal("0.04")
    assert Decimal(partial["avg_fill_price"]) == Decimal("3400")
    assert Decimal(partial["fee"]) == Decimal("0.0204")  # 3400 x 0.04 x 1.5 bps, in USDC
    await op.cancel("hl-1", "ETH-USD")
    cancelled = await op.wait_status("hl-1", "CANCELLED")
    assert Decimal(cancelled["filled_quantity"]) == Decimal("0.04")
    assert venue.find(order.oid).status == "canceled"
    assert venue.sockets == connections and not connections[0].closed
    # Every action came signed by the agent (the stand-in recovered each), nonces rising.
    assert venue.refusals == []
    kinds = [a["action"]["type"] for a in venue.actions]
    assert kinds == ["order", "cancelByCloid"]
    assert venue.actions[0]["expiresAfter"] > venue.actions[0]["nonce"]
    assert venue.actions[1]["nonce"] > venue.actions[0]["nonce"]


async def errors_until(errors, match, what: str, timeout: float = 10) -> dict:
    """The next errors.execution event whose reason `match`es (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen = []
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"timed out waiting for {what} on errors.execution; seen: {seen}"
        try:
            event = json.loads((await errors.next_msg(timeout=left)).data)
        except nats.errors.TimeoutError:
            continue
        if match(event["reason"]):
            return event
        seen.append(event["reason"])


@pytest.mark.e2e
async def test_binary_a_malformed_fill_is_told_and_loses_no_good_one(operator: Operator) -> None:
    """A userFills list with one malformed fill among good ones: the good fill is applied (its
    report arrives), the malformed one is not, and errors.execution names it and its order, once
    however often the venue sends it again. A malformed frame is told the same way."""
    op, venue = operator, operator.venue
    errors = await op.nc.subscribe("errors.execution")
    await flush(op.nc)
    await op.submit("hl-b1", "ETH-USD", "BUY", "0.1", limit="3400")
    await op.wait_status("hl-b1", "ACCEPTED")
    await op.until(lambda: cloid_of("hl-b1").lower() in venue.by_cloid, "hl-b1 at the venue")
    order = venue.find(cloid_of("hl-b1"))
    await op.hook(venue.fill(order.oid, Decimal("0.04"), push=False))
    good = venue.fills[-1]
    bad = dict(good, tid=10_000_000, px="3400.x")  # the same order, a price that is no number
    frame = json.dumps({"channel": "userFills",
                        "data": {"isSnapshot": False, "user": venue.user, "fills": [bad, good]}})
    await op.hook(venue.push_raw(frame))
    partial = await op.wait_status("hl-b1", "PARTIALLY_FILLED")
    assert Decimal(partial["filled_quantity"]) == Decimal("0.04")
    assert Decimal(partial["avg_fill_price"]) == Decimal("3400")
    told = f"venue state of hl-b1 not applied: malformed fill tid 10000000, oid {order.oid}: "
    event = await errors_until(errors, lambda r: "malformed fill" in r, "the malformed fill")
    assert event["subject"] == "exec.venue.hyperliquid", event
    assert event["reason"].startswith(told), event
    assert '"px":"3400.x"' in event["reason"], event  # an excerpt of the fill
    # The same list again (a venue repeating itself): the good fill counts once, the bad one is
    # not told again; a malformed frame is told.
    await op.hook(venue.push_raw(frame))
    await op.hook(venue.push_raw('{"channel":"userFills","data":{"fills":[]}}'))
    event = await errors_until(errors, lambda r: "malformed frame" in r, "the malformed frame")
    assert event["subject"] == "exec.venue.hyperliquid", event
    assert event["reason"].startswith(
        "venue state of the stream not applied: malformed frame: userFills without user: "), event
    await asyncio.sleep(1)
    again = await reasons_left(errors)
    assert not [r for r in again if "malformed fill" in r], again
    assert op.statuses("hl-b1") == ["ACCEPTED", "PARTIALLY_FILLED"], op.statuses("hl-b1")
    # The rest fills well-formed: FILLED at the sum of the good fills only.
    await op.hook(venue.fill(order.oid, Decimal("0.06")))
    filled = await op.wait_status("hl-b1", "FILLED")
    assert Decimal(filled["filled_quantity"]) == Decimal("0.1")


@pytest.mark.e2e
async def test_binary_market_ioc_short_and_rejections(operator: Operator) -> None:
    op, venue = operator, operator.venue
    # MARKET: IOC at mid 3500 x 1.005 = 3517.5, filled at the mid; SELL with no position: a short.
    await op.submit("hl-m1", "ETH-USD", "SELL", "0.01")
    filled = await op.wait_status("hl-m1", "FILLED")
    assert Decimal(filled["avg_fill_price"]) == Decimal("3500")
    sent = venue.actions[0]["action"]["orders"][0]
    assert (sent["p"], sent["t"], sent["b"]) == ("3482.5", {"limit": {"tif": "Ioc"}}, False)
    # An IOC the book fills in part: the rest EXPIRED.
    venue.ioc_liquidity = Decimal("0.004")
    await op.submit("hl-m2", "ETH-USD", "BUY", "0.01", limit="3600", tif="IOC")
    expired = await op.wait_status("hl-m2", "EXPIRED")
    assert Decimal(expired["filled_quantity"]) == Decimal("0.004")
    venue.ioc_liquidity = None
    # Checked before sending: size step (szDecimals 4), price figures, minimum value.
    await op.submit("hl-r1", "ETH-USD", "BUY", "0.00001", limit="3400")
    assert "lot_size" in (await op.wait_status("hl-r1", "REJECTED"))["reason"]
    await op.submit("hl-r2", "ETH-USD", "BUY", "0.01", limit="3400.55")
    assert "tick_size" in (await op.wait_status("hl-r2", "REJECTED"))["reason"]
    await op.submit("hl-r3", "ETH-USD", "BUY", "0.001", limit="3400")
    assert "min_notional" in (await op.wait_status("hl-r3", "REJECTED"))["reason"]
    # Refused by the venue: its words in the reason.
    venue.reject_next.append("Insufficient margin to place order. asset=1")
    await op.submit("hl-r4", "ETH-USD", "BUY", "0.01", limit="3400")
    assert "Insufficient margin" in (await op.wait_status("hl-r4", "REJECTED"))["reason"]
    # None of the locally refused orders reached the venue.
    assert [a["action"]["orders"][0]["c"] for a in venue.actions] == [cloid_of(c) for c in ("hl-m1", "hl-m2", "hl-r4")]
    state = venue.positions["ETH"]
    assert state[0] == Decimal("-0.006")  # -0.01 + 0.004
    # Reduce-only below the $10 minimum: allowed, it closes part of the short.
    await op.submit("hl-c1", "ETH-USD", "BUY", "0.002", reduce_only=True)
    await op.wait_status("hl-c1", "FILLED")
    assert venue.positions["ETH"][0] == Decimal("-0.004")
    assert venue.actions[-1]["action"]["orders"][0]["r"] is True


@pytest.mark.e2e
async def test_binary_duplicate_cloid_unknown_answer_and_stream_drop(operator: Operator) -> None:
    op, venue = operator, operator.venue
    # The order is already at the venue (an earlier send): the duplicate is refused, the
    # adapter finds it by its cloid and follows it.
    status, body = await op.hook(Client(venue).order("ETH", True, "0.02", "3300", cloid=cloid_of("hl-d1")))
    assert "resting" in body["response"]["data"]["statuses"][0]
    await op.submit("hl-d1", "ETH-USD", "BUY", "0.02", limit="3300")
    await op.wait_status("hl-d1", "ACCEPTED")
    assert len(venue.orders) == 1
    await op.hook(venue.fill(cloid_of("hl-d1"), Decimal("0.02")))
    assert Decimal((await op.wait_status("hl-d1", "FILLED"))["filled_quantity"]) == Decimal("0.02")
    # Whatever words the venue uses for the refusal, the cloid's record decides.
    venue.duplicate_error = "Order could not be placed."
    await op.hook(Client(venue).order("ETH", False, "0.02", "3800", cloid=cloid_of("hl-d2")))
    await op.submit("hl-d2", "ETH-USD", "SELL", "0.02", limit="3800")
    await op.wait_status("hl-d2", "ACCEPTED")
    await op.hook(venue.fill(cloid_of("hl-d2"), Decimal("0.02")))
    await op.wait_status("hl-d2", "FILLED")
    assert "REJECTED" not in op.statuses("hl-d2")
    assert len(venue.orders) == 2
    # No answer (502 after the venue placed it) and its stream update lost: never resent,
    # found by orderStatus with its cloid.
    venue.answer_5xx = 1
    venue.mute_ws = True
    await op.submit("hl-u1", "ETH-USD", "BUY", "0.01", limit="3300")
    await op.wait_status("hl-u1", "ACCEPTED")
    await op.until(lambda: any(r.get("type") == "orderStatus" and r.get("oid") == cloid_of("hl-u1")
                               for r in venue.info_requests), "the unanswered order queried")
    venue.mute_ws = False
    await op.hook(venue.fill(cloid_of("hl-u1"), Decimal("0.01")))
    await op.wait_status("hl-u1", "FILLED")
    assert sum(1 for a in venue.actions if a["action"]["orders"][0].get("c") == cloid_of("hl-u1")
               if a["action"]["type"] == "order") == 1
    # The stream drops; a fill while it is down arrives by the snapshot after the reconnect
    # (or the query of the working order): reported once.
    await op.submit("hl-s1", "ETH-USD", "SELL", "0.01", limit="3700")
    await op.wait_status("hl-s1", "ACCEPTED")
    await op.until(lambda: cloid_of("hl-s1").lower() in venue.by_cloid, "hl-s1 at the venue")
    await op.hook(venue.drop_ws())
    await op.hook(venue.fill(cloid_of("hl-s1"), Decimal("0.01"), push=False))
    filled = await op.wait_status("hl-s1", "FILLED")
    assert Decimal(filled["avg_fill_price"]) == Decimal("3700")
    await op.until(lambda: venue.subscribed("userFills"), "the adapter back on the user feeds")
    await asyncio.sleep(1)
    assert op.statuses("hl-s1").count("FILLED") == 1


@pytest.mark.e2e
async def test_binary_account_health_and_rate_limit(operator: Operator) -> None:
    op, venue = operator, operator.venue
    statuses: list[dict] = []

    async def on_status(msg) -> None:
        statuses.append(json.loads(msg.data))

    await op.nc.subscribe("exec.venue.hyperliquid", cb=on_status)
    # An order at the venue that is not ours; a short of ours.
    await op.hook(Client(venue).order("BTC", False, "0.001", "99000", cloid="0x" + "77" * 16))
    await op.submit("hl-a1", "ETH-USD", "SELL", "0.01")
    await op.wait_status("hl-a1", "FILLED")

    def latest_account():
        for st in reversed(statuses):
            if st.get("account") and st["account"].get("positions"):
                return st
        return None

    await op.until(lambda: latest_account() is not None, "the account with the short read")
    st = latest_account()
    assert st["kind"] == "hyperliquid" and st["mode"] == "testnet" and st["connected"] is True
    position = st["account"]["positions"][0]
    assert (position["symbol"], Decimal(position["quantity"]), Decimal(position["entry_price"])) == (
        "ETH-USD", Decimal("-0.01"), Decimal("3500"))
    assert Decimal(st["account"]["equity"]) > 0 and Decimal(st["account"]["cash"]) > 0
    assert [o["venue_symbol"] for o in st["unknown_orders"]] == ["BTC"]
    asked = {r["type"] for r in venue.info_requests}
    assert {"clearinghouseState", "frontendOpenOrders", "meta", "allMids"} <= asked
    # The stream drops: the venue is reported disconnected, then connected again.
    await op.hook(venue.drop_ws())
    await op.until(lambda: any(s["connected"] is False for s in statuses), "disconnected reported")
    n = len(statuses)
    await op.until(lambda: any(s["connected"] for s in statuses[n:]), "connected again")
    # Rate limited (429) on the send: nothing was placed; queried by cloid until the
    # action's expiry has passed, then REJECTED, never resent.
    venue.exchange_429 = 1
    await op.submit("hl-q1", "ETH-USD", "BUY", "0.01", limit="3300")
    rejected = await op.wait_status("hl-q1", "REJECTED")
    assert "never" in rejected["reason"], rejected
    assert not any(a["action"]["type"] == "order" and a["action"]["orders"][0].get("c") == cloid_of("hl-q1")
                   for a in venue.actions)
    assert any(r.get("type") == "orderStatus" and r.get("oid") == cloid_of("hl-q1") for r in venue.info_requests)


@pytest.mark.e2e
async def test_binary_execution_killed_after_sending_does_not_double(operator: Operator) -> None:
    """Killed while the venue holds the order but before its answer: the order's ACCEPTED was
    stored before it was sent (write ahead), so the restarted execution restores it, asks the
    venue by its cloid and follows it; the re-delivered message is a duplicate, never sent."""
    op, venue = operator, operator.venue
    venue.answer_delay = 4.0
    await op.submit("hl-k1", "ETH-USD", "BUY", "0.01", limit="3300")
    await op.until(lambda: cloid_of("hl-k1") in venue.by_cloid, "the order at the venue")
    assert op.statuses("hl-k1") == ["ACCEPTED"]  # stored before it left the machine
    await asyncio.to_thread(op.system.kill, "execution")
    venue.answer_delay = 0.0
    await asyncio.to_thread(op.system.restart, "execution")
    await op.until(lambda: any(r.get("type") == "orderStatus" and r.get("oid") == cloid_of("hl-k1")
                               for r in venue.info_requests), "the restarted execution asking the venue")
    await op.until(lambda: venue.subscribed("userFills") > 0, "the new execution on the user feeds")
    await op.hook(venue.fill(cloid_of("hl-k1"), Decimal("0.01")))
    filled = await op.wait_status("hl-k1", "FILLED")
    assert Decimal(filled["filled_quantity"]) == Decimal("0.01")
    sends = [a for a in venue.actions if a["action"]["type"] == "order"
             and a["action"]["orders"][0].get("c") == cloid_of("hl-k1")]
    assert len(sends) == 1 and len(venue.orders) == 1
    await asyncio.sleep(1)
    assert op.statuses("hl-k1").count("FILLED") == 1
