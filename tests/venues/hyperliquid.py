"""A local stand-in of Hyperliquid's perps API (POST /info, POST /exchange, the /ws
WebSocket) on 127.0.0.1, for the rust-execution adapter tests.

It speaks the documented wire format and checks what the real venue checks:
- Every /exchange action is re-built the way the venue reads it (typed fields, in the SDK's
  order: an order is {a, b, p, s, r, t, c}; prices and sizes must be in `float_to_wire` form)
  and its signer is RECOVERED with the official SDK (`hyperliquid.utils.signing.
  recover_agent_or_user_from_l1_action`, eth_account underneath) for the network of the
  stand-in (testnet "b" unless `mainnet`); a signer that is not the configured agent wallet
  is refused as the venue refuses it ("User or API Wallet ... does not exist.").
- Nonces: unique per signer, within (now - 2 days, now + 1 day) and above the smallest of the
  100 highest seen; `expiresAfter` in the past refuses the action; `vaultAddress` must be the
  configured vault (or none).
- Orders: asset ids and szDecimals from `meta`, sizes multiples of 10^-szDecimals, prices of at
  most 5 significant figures (integers always) and 6 - szDecimals decimals, a $10 minimum,
  duplicate cloids refused, reduce-only, GTC resting / crossing fills at the mid, IOC fills up
  to `ioc_liquidity` with the rest cancelled (none: the IOC error), cancels by cloid or oid.
- /info: meta, allMids, clearinghouseState, openOrders, frontendOpenOrders, orderStatus (oid or
  cloid), userFills. The WebSocket: subscribe userFills (first message `isSnapshot`) and
  orderUpdates, ping/pong, and test hooks to fill, cancel, reject and drop the connections.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import eth_account
from aiohttp import WSMsgType, web
from hyperliquid.utils.signing import (
    float_to_wire,
    order_wires_to_order_action,
    recover_agent_or_user_from_l1_action,
    sign_l1_action,
)

from tests.venues import serve

TWO_DAYS_MS = 2 * 24 * 3600 * 1000
ONE_DAY_MS = 24 * 3600 * 1000
TAKER_FEE = Decimal("0.00045")
MAKER_FEE = Decimal("0.00015")


def wire(x: Decimal) -> str:
    """The SDK's float_to_wire of a decimal."""
    return float_to_wire(float(x))


def canonical_order_action(action: dict[str, Any]) -> dict[str, Any]:
    """An `order` action as the venue reads it; ValueError for what it would not accept."""
    wires = []
    for o in action["orders"]:
        t = o["t"]
        if set(t) != {"limit"} or t["limit"].get("tif") not in ("Gtc", "Ioc", "Alo"):
            raise ValueError(f"unsupported order type {t}")
        for k in ("p", "s"):
            if not isinstance(o[k], str) or float_to_wire(float(o[k])) != o[k]:
                raise ValueError(f"{k} {o[k]!r} is not in float_to_wire form")
        w = {"a": int(o["a"]), "b": bool(o["b"]), "p": o["p"], "s": o["s"], "r": bool(o["r"]),
             "t": {"limit": {"tif": t["limit"]["tif"]}}}
        if o.get("c") is not None:
            c = o["c"]
            if not (isinstance(c, str) and c.startswith("0x") and len(c) == 34):
                raise ValueError(f"cloid {c!r} is not 16 bytes of 0x-hex")
            w["c"] = c
        wires.append(w)
    return order_wires_to_order_action(wires, None, action.get("grouping", "na"))


def canonical_action(action: dict[str, Any]) -> dict[str, Any]:
    kind = action.get("type")
    if kind == "order":
        return canonical_order_action(action)
    if kind == "cancel":
        return {"type": "cancel", "cancels": [{"a": int(c["a"]), "o": int(c["o"])} for c in action["cancels"]]}
    if kind == "cancelByCloid":
        return {"type": "cancelByCloid",
                "cancels": [{"asset": int(c["asset"]), "cloid": str(c["cloid"])} for c in action["cancels"]]}
    raise ValueError(f"unsupported action type {kind!r}")


def valid_price(px: Decimal, sz_decimals: int) -> bool:
    if px <= 0:
        return False
    n = px.normalize()
    exp = n.as_tuple().exponent
    decimals = max(0, -exp) if isinstance(exp, int) else 99
    if decimals > 6 - sz_decimals:
        return False
    if decimals == 0:
        return True  # integer prices are always allowed
    return len(n.as_tuple().digits) <= 5


@dataclass
class Order:
    oid: int
    coin: str
    asset: int
    is_buy: bool
    px: Decimal
    orig_sz: Decimal
    tif: str
    reduce_only: bool
    cloid: str | None
    timestamp: int
    filled: Decimal = Decimal(0)
    status: str = "open"
    status_ts: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.orig_sz - self.filled

    def wire(self) -> dict[str, Any]:
        return {"coin": self.coin, "side": "B" if self.is_buy else "A", "limitPx": wire(self.px),
                "sz": wire(self.remaining),
                "oid": self.oid, "timestamp": self.timestamp, "origSz": wire(self.orig_sz), "cloid": self.cloid,
                "triggerCondition": "N/A", "isTrigger": False, "triggerPx": "0.0", "children": [],
                "isPositionTpsl": False, "reduceOnly": self.reduce_only, "orderType": "Limit", "tif": self.tif}


@dataclass
class StandIn:
    """One venue; `agent` signs for `account` (the master address)."""

    agent: Any = field(default_factory=lambda: eth_account.Account.create())
    account: str = field(default_factory=lambda: "0x" + secrets.token_hex(20))
    vault: str | None = None
    mainnet: bool = False
    universe: list[tuple[str, int]] = field(default_factory=lambda: [("BTC", 5), ("ETH", 4), ("SOL", 2)])
    mids: dict[str, Decimal] = field(default_factory=lambda: {"BTC": Decimal("60000"), "ETH": Decimal("3000"),
                                                               "SOL": Decimal("150")})
    cash: Decimal = Decimal("10000")
    # Test hooks
    fill_on_arrival: bool = True  # crossing orders fill at the mid at once
    ioc_liquidity: Decimal | None = None  # an IOC fills at most this much
    reject_next: list[str] = field(default_factory=list)  # the next orders get {"error": text}
    answer_delay: float = 0.0  # delay before answering an order (after placing it)
    answer_5xx: int = 0  # the next N orders are placed but answered 502
    force_429: int = 0  # the next N requests are answered 429
    exchange_429: int = 0  # the next N /exchange requests are answered 429 (nothing placed)
    duplicate_error: str = "Duplicate cloid"  # the words of the duplicate-cloid refusal
    mute_ws: bool = False  # the WebSocket feeds say nothing (updates lost, connections kept)

    def __post_init__(self) -> None:
        self.account = self.account.lower()
        self.orders: dict[int, Order] = {}
        self.by_cloid: dict[str, int] = {}
        self.oids = itertools.count(1000)
        self.tids = itertools.count(1)
        self.fills: list[dict[str, Any]] = []
        self.positions: dict[str, tuple[Decimal, Decimal]] = {}  # coin -> (szi, entryPx)
        self.nonces: list[int] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.subscriptions: dict[web.WebSocketResponse, set[str]] = {}
        self.actions: list[dict[str, Any]] = []  # accepted /exchange bodies
        self.refusals: list[str] = []  # why /exchange refused
        self.info_requests: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def agent_address(self) -> str:
        return self.agent.address.lower()

    @property
    def agent_key(self) -> str:
        return "0x" + bytes(self.agent.key).hex()

    @property
    def user(self) -> str:
        return (self.vault or self.account).lower()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def asset(self, coin: str) -> int:
        return [name for name, _ in self.universe].index(coin)

    # ----- lifecycle

    async def start(self) -> StandIn:
        app = web.Application()
        app.router.add_post("/info", self.info)
        app.router.add_post("/exchange", self.exchange)
        app.router.add_get("/ws", self.websocket)
        self.runner, self.port = await serve(app)
        return self

    async def stop(self) -> None:
        await self.drop_ws()
        if self.runner is not None:
            await self.runner.cleanup()

    # ----- the WebSocket

    async def push(self, feed: str, message: dict[str, Any]) -> None:
        if self.mute_ws:
            return
        text = json.dumps(message)
        for ws in list(self.sockets):
            if feed in self.subscriptions.get(ws, set()) and not ws.closed:
                try:
                    await ws.send_str(text)
                except ConnectionError:
                    pass

    async def push_raw(self, text: str) -> None:
        """Send a frame as is (malformed ones included) on every connection."""
        for ws in list(self.sockets):
            if not ws.closed:
                await ws.send_str(text)

    async def drop_ws(self) -> None:
        """Close every WebSocket connection (the adapter must reconnect)."""
        for ws in list(self.sockets):
            await ws.close()
        self.sockets.clear()

    def subscribed(self, feed: str) -> int:
        return sum(1 for ws in self.sockets if feed in self.subscriptions.get(ws, set()) and not ws.closed)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        self.subscriptions[ws] = set()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                body = json.loads(msg.data)
            except ValueError:
                await ws.send_str(json.dumps({"channel": "error", "data": f"Error parsing JSON into valid websocket request: {msg.data}"}))
                continue
            if body.get("method") == "ping":
                await ws.send_str(json.dumps({"channel": "pong"}))
                continue
            sub = body.get("subscription") or {}
            if body.get("method") != "subscribe" or sub.get("type") not in ("userFills", "orderUpdates"):
                await ws.send_str(json.dumps({"channel": "error", "data": f"Invalid subscription {msg.data}"}))
                continue
            user = str(sub.get("user", "")).lower()
            await ws.send_str(json.dumps({"channel": "subscriptionResponse", "data": body}))
            if user != self.user:
                continue  # a valid subscription of another user: nothing of ours on it
            self.subscriptions[ws].add(sub["type"])
            if sub["type"] == "userFills":
                snapshot = {"isSnapshot": True, "user": self.user, "fills": self.fills[-2000:]}
                await ws.send_str(json.dumps({"channel": "userFills", "data": snapshot}))
        if ws in self.sockets:
            self.sockets.remove(ws)
        self.subscriptions.pop(ws, None)
        return ws

    # ----- state changes (also the test hooks)

    def find(self, ref: int | str) -> Order:
        if isinstance(ref, str):
            return self.orders[self.by_cloid[ref.lower()]]
        return self.orders[ref]

    async def order_update(self, order: Order) -> None:
        await self.push("orderUpdates", {"channel": "orderUpdates", "data": [
            {"order": order.wire(), "status": order.status, "statusTimestamp": order.status_ts}]})

    async def fill(self, ref: int | str, sz: Decimal, px: Decimal | None = None, maker: bool = True,
                   push: bool = True) -> Order:
        """Fill `sz` of an order at `px` (its limit price by default)."""
        order = self.find(ref)
        assert order.status == "open" and Decimal(0) < sz <= order.remaining, (order, sz)
        px = order.px if px is None else px
        fee = (px * sz * (MAKER_FEE if maker else TAKER_FEE)).quantize(Decimal("0.000001"))
        szi, entry = self.positions.get(order.coin, (Decimal(0), Decimal(0)))
        delta = sz if order.is_buy else -sz
        new = szi + delta
        if szi == 0 or (szi > 0) == (delta > 0):
            entry = (abs(szi) * entry + sz * px) / abs(new)
            closed = Decimal(0)
        else:
            closed = min(abs(szi), sz) * (px - entry) * (1 if szi > 0 else -1)
            if new != 0 and (new > 0) != (szi > 0):
                entry = px
        self.positions[order.coin] = (new, entry if new != 0 else Decimal(0))
        self.cash += closed - fee
        now = int(time.time() * 1000)
        record = {"coin": order.coin, "px": wire(px), "sz": wire(sz), "side": "B" if order.is_buy else "A",
                  "time": now, "startPosition": wire(szi), "dir": "Open Long" if order.is_buy else "Open Short",
                  "closedPnl": str(closed), "hash": "0x" + secrets.token_hex(32), "oid": order.oid,
                  "crossed": not maker, "fee": str(fee), "tid": next(self.tids), "feeToken": "USDC"}
        if order.cloid:
            record["cloid"] = order.cloid
        self.fills.append(record)
        order.filled += sz
        order.status_ts = now
        if order.remaining == 0:
            order.status = "filled"
        if push:
            await self.push("userFills", {"channel": "userFills",
                                          "data": {"isSnapshot": False, "user": self.user, "fills": [record]}})
            if order.status == "filled":
                await self.order_update(order)
        return order

    async def cancel_by_venue(self, ref: int | str, status: str = "canceled") -> Order:
        order = self.find(ref)
        order.status = status
        order.status_ts = int(time.time() * 1000)
        await self.order_update(order)
        return order

    # ----- HTTP

    def take_429(self) -> web.Response | None:
        if self.force_429 > 0:
            self.force_429 -= 1
            return web.Response(status=429, text="Too many requests")
        return None

    async def info(self, request: web.Request) -> web.Response:
        if (limited := self.take_429()) is not None:
            return limited
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=422, text="Failed to deserialize the JSON body")
        self.info_requests.append(body)
        kind = body.get("type")
        if kind == "meta":
            return web.json_response({"universe": [{"name": n, "szDecimals": d, "maxLeverage": 20}
                                                   for n, d in self.universe]})
        if kind == "allMids":
            return web.json_response({c: wire(p) for c, p in self.mids.items()})
        user = str(body.get("user", "")).lower()
        mine = user == self.user
        if kind == "clearinghouseState":
            positions = []
            ntl = Decimal(0)
            upnl = Decimal(0)
            for coin, (szi, entry) in self.positions.items():
                if szi == 0 or not mine:
                    continue
                value = abs(szi) * self.mids[coin]
                ntl += value
                upnl += szi * (self.mids[coin] - entry)
                positions.append({"type": "oneWay", "position": {
                    "coin": coin, "szi": wire(szi), "entryPx": wire(entry), "positionValue": str(value),
                    "unrealizedPnl": str(upnl), "leverage": {"type": "cross", "value": 20}}})
            value = (self.cash + upnl) if mine else Decimal(0)
            margin = ntl / 20
            return web.json_response({
                "assetPositions": positions,
                "marginSummary": {"accountValue": str(value), "totalNtlPos": str(ntl),
                                  "totalRawUsd": str(self.cash if mine else 0), "totalMarginUsed": str(margin)},
                "crossMarginSummary": {"accountValue": str(value), "totalNtlPos": str(ntl),
                                       "totalRawUsd": str(self.cash if mine else 0), "totalMarginUsed": str(margin)},
                "withdrawable": str(max(Decimal(0), value - margin)), "time": int(time.time() * 1000)})
        if kind in ("openOrders", "frontendOpenOrders"):
            open_ = [o.wire() for o in self.orders.values() if o.status == "open"] if mine else []
            if kind == "openOrders":
                open_ = [{k: o[k] for k in ("coin", "side", "limitPx", "sz", "oid", "timestamp", "origSz", "cloid")}
                         for o in open_]
            return web.json_response(open_)
        if kind == "orderStatus":
            ref = body.get("oid")
            try:
                order = self.find(ref if isinstance(ref, str) else int(ref))
            except (KeyError, TypeError, ValueError):
                return web.json_response({"status": "unknownOid"})
            if not mine:
                return web.json_response({"status": "unknownOid"})
            return web.json_response({"status": "order", "order": {
                "order": order.wire(), "status": order.status, "statusTimestamp": order.status_ts}})
        if kind == "userFills":
            return web.json_response(list(reversed(self.fills[-2000:])) if mine else [])
        return web.Response(status=422, text=f"Failed to deserialize the JSON body into the target type: {kind}")

    def refuse(self, why: str) -> web.Response:
        self.refusals.append(why)
        return web.json_response({"status": "err", "response": why})

    async def exchange(self, request: web.Request) -> web.Response:
        if (limited := self.take_429()) is not None:
            return limited
        if self.exchange_429 > 0:
            self.exchange_429 -= 1
            return web.Response(status=429, text="Too many requests")
        try:
            body = await request.json()
            action = canonical_action(body["action"])
            nonce = int(body["nonce"])
            signature = body["signature"]
            vault = body.get("vaultAddress")
            expires = body.get("expiresAfter")
            signer = recover_agent_or_user_from_l1_action(action, signature, vault, nonce, expires, self.mainnet)
        except Exception as e:  # noqa: BLE001 - whatever the venue could not read
            return web.Response(status=422, text=f"Failed to deserialize the JSON body into the target type: {e}")
        if signer.lower() != self.agent_address:
            return self.refuse(f"User or API Wallet {signer.lower()} does not exist.")
        if (vault or None) != (self.vault.lower() if self.vault else None):
            return self.refuse(f"Vault {vault} not registered for this agent")
        now = int(time.time() * 1000)
        if expires is not None and now > int(expires):
            return self.refuse(f"Action expired: expiresAfter {expires} < {now}")
        top = sorted(self.nonces)[-100:]
        if nonce in self.nonces:
            return self.refuse(f"Invalid nonce: duplicate nonce {nonce}")
        if not (now - TWO_DAYS_MS < nonce < now + ONE_DAY_MS) or (len(top) == 100 and nonce <= top[0]):
            return self.refuse(f"Invalid nonce: {nonce} is too old or too far in the future")
        self.nonces.append(nonce)
        self.actions.append(body)
        if action["type"] == "order":
            statuses = [await self.place(o, now) for o in action["orders"]]
            if self.answer_delay:
                await asyncio.sleep(self.answer_delay)
            # Only an order placed: a refused one (a late duplicate) leaves the 502 for the next.
            if self.answer_5xx > 0 and any("error" not in st for st in statuses):
                self.answer_5xx -= 1
                return web.Response(status=502, text="Bad Gateway")
            return web.json_response({"status": "ok", "response": {"type": "order", "data": {"statuses": statuses}}})
        statuses = []
        for c in action["cancels"]:
            try:
                order = self.find(c["cloid"] if action["type"] == "cancelByCloid" else int(c["o"]))
            except KeyError:
                order = None
            if order is None or order.status != "open":
                statuses.append({"error": "Order was never placed, already canceled, or filled."})
                continue
            await self.cancel_by_venue(order.oid, "canceled")
            statuses.append("success")
        return web.json_response({"status": "ok", "response": {"type": "cancel", "data": {"statuses": statuses}}})

    async def place(self, o: dict[str, Any], now: int) -> dict[str, Any]:
        if not 0 <= o["a"] < len(self.universe):
            return {"error": f"Invalid asset {o['a']}"}
        coin, sz_decimals = self.universe[o["a"]]
        px, sz = Decimal(o["p"]), Decimal(o["s"])
        cloid = o.get("c")
        if cloid is not None and cloid.lower() in self.by_cloid:
            return {"error": self.duplicate_error}  # idempotency: the first order stands
        if self.reject_next:
            return {"error": self.reject_next.pop(0)}
        if sz <= 0 or sz != sz.quantize(Decimal(1).scaleb(-sz_decimals)):
            return {"error": "Order has invalid size."}
        if not valid_price(px, sz_decimals):
            return {"error": "Price must be divisible by tick size. asset=" + str(o["a"])}
        mid = self.mids[coin]
        if px * sz < 10 and not o["r"]:
            return {"error": "Order must have minimum value of $10."}
        szi = self.positions.get(coin, (Decimal(0), Decimal(0)))[0]
        if o["r"] and (szi == 0 or (szi > 0) == o["b"] or sz > abs(szi)):
            return {"error": "Reduce only order would increase position."}
        tif = o["t"]["limit"]["tif"]
        crosses = (o["b"] and px >= mid) or (not o["b"] and px <= mid)
        if tif == "Alo" and crosses:
            return {"error": "Post only order would have immediately matched, bbo was 0@0. asset=" + str(o["a"])}
        order = Order(next(self.oids), coin, o["a"], o["b"], px, sz, tif, o["r"], cloid.lower() if cloid else None, now,
                      status_ts=now)
        fillable = sz if self.ioc_liquidity is None or tif != "Ioc" else min(sz, self.ioc_liquidity)
        if tif == "Ioc" and (not crosses or not self.fill_on_arrival or fillable <= 0):
            return {"error": "Order could not immediately match against any resting orders. asset=" + str(o["a"])}
        self.orders[order.oid] = order
        if order.cloid:
            self.by_cloid[order.cloid] = order.oid
        if crosses and self.fill_on_arrival:
            await self.fill(order.oid, fillable, mid, maker=False)
            if order.status == "open" and tif == "Ioc":
                order.status = "canceled"
                order.status_ts = now
                await self.order_update(order)
            if order.filled > 0:
                return {"filled": {"totalSz": wire(order.filled), "avgPx": wire(mid), "oid": order.oid}}
        await self.order_update(order)
        return {"resting": {"oid": order.oid}}


class Client:
    """Signs like the official SDK (hyperliquid.utils.signing) and posts to a stand-in."""

    def __init__(self, standin: StandIn, wallet: Any = None, vault: str | None = None) -> None:
        self.standin = standin
        self.wallet = wallet if wallet is not None else standin.agent
        self.vault = vault

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.post(self.standin.rest_url + path, json=body) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def action(self, action: dict[str, Any], nonce: int | None = None, expires_after: int | None = None,
                     tamper: Any = None) -> tuple[int, Any]:
        nonce = int(time.time() * 1000) if nonce is None else nonce
        signature = sign_l1_action(self.wallet, action, self.vault, nonce, expires_after, self.standin.mainnet)
        if tamper is not None:
            action = tamper(json.loads(json.dumps(action)))
        return await self.post("/exchange", {"action": action, "nonce": nonce, "signature": signature,
                                             "vaultAddress": self.vault, "expiresAfter": expires_after})

    async def order(self, coin: str, is_buy: bool, sz: str, px: str, tif: str = "Gtc", cloid: str | None = None,
                    reduce_only: bool = False, **kw: Any) -> tuple[int, Any]:
        w: dict[str, Any] = {"a": self.standin.asset(coin), "b": is_buy, "p": wire(Decimal(px)), "s": wire(Decimal(sz)),
                             "r": reduce_only, "t": {"limit": {"tif": tif}}}
        if cloid:
            w["c"] = cloid
        return await self.action(order_wires_to_order_action([w]), **kw)

    async def info(self, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.post("/info", body)
