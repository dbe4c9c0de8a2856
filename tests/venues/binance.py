"""A local stand-in of the Binance API family (spot /api/v3, USDⓈ-M futures /fapi, and Aster,
whose futures API v1 is the USDⓈ-M one) on 127.0.0.1, for the rust-execution adapter tests.

It speaks the documented wire format and checks what the real venue checks:
- SIGNED requests: `X-MBX-APIKEY` (else 401 -2015), `signature` = hex HMAC-SHA256 of the query
  before it with the secret, or base64 Ed25519 of it verified with the public key (the
  `cryptography` library as the oracle; else 400 -1022), `timestamp` within `recvWindow` of
  the venue's clock (else 400 -1021; the clock can be skewed by a test hook), recvWindow <= 60000.
- Request weight per minute in `X-MBX-USED-WEIGHT-1M`; above the limit, or when a test asks,
  429 with Retry-After; `ban()` answers 418.
- Orders: exchangeInfo filters (-1013), duplicate client ids (spot -2010 "Duplicate order sent.",
  futures -4116), MARKET / LIMIT GTC / IOC, reduceOnly (futures), fills against a set price,
  partial fills, cancels (-2011 for an unknown order), IOC expiries, queries (-2013).
- The user data stream: listenKeys, `ws://.../ws/<listenKey>`, spot `executionReport` and
  futures `ORDER_TRADE_UPDATE` events, `listenKeyExpired`, and dropped connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import parse_qsl, quote, unquote, urlencode

import aiohttp
from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.venues import serve

SPOT, FUTURES = "spot", "futures"


def hmac_signature(secret: str, payload: str) -> str:
    """Binance's HMAC signature: hex HMAC-SHA256 of the payload (the query string)."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def verify_signature(query: str, secret: str | None, public_key: Ed25519PublicKey | None) -> bool:
    """Whether `query` (the raw query string, `signature` last) is signed by the key."""
    payload, sep, signature = query.rpartition("&signature=")
    if not sep or not signature:
        return False
    return verify_payload(payload, unquote(signature), secret, public_key)


def ws_api_payload(params: dict[str, object]) -> str:
    """What the WebSocket API signs: every parameter but `signature`, sorted by name."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "signature")


def verify_payload(payload: str, signature: str, secret: str | None, public_key: Ed25519PublicKey | None) -> bool:
    """Whether `signature` (hex HMAC-SHA256 or base64 Ed25519) signs `payload` with the key."""
    if secret is not None:
        return hmac.compare_digest(hmac_signature(secret, payload), signature.lower())
    if public_key is not None:
        try:
            public_key.verify(base64.b64decode(signature, validate=True), payload.encode())
            return True
        except (InvalidSignature, ValueError):
            return False
    return False


@dataclass
class SymbolRules:
    symbol: str
    base: str
    quote: str
    tick: Decimal = Decimal("0.01")
    min_price: Decimal = Decimal("0.01")
    max_price: Decimal = Decimal("1000000")
    step: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal("0.00001")
    max_qty: Decimal = Decimal("9000")
    min_notional: Decimal = Decimal("5")


@dataclass
class Order:
    symbol: str
    order_id: int
    client_id: str
    side: str
    type: str
    tif: str
    qty: Decimal
    price: Decimal
    reduce_only: bool
    status: str = "NEW"
    filled: Decimal = Decimal(0)
    quote: Decimal = Decimal(0)
    time: int = 0
    update: int = 0
    trades: list[dict[str, object]] = field(default_factory=list)


@dataclass
class StandIn:
    """One venue. `flavor` spot or futures; `prefix` `/api/v3` or `/fapi/v1`."""

    flavor: str = SPOT
    api_key: str = "stand-in-api-key"
    secret: str | None = "stand-in-secret"
    public_key: Ed25519PublicKey | None = None
    rules: dict[str, SymbolRules] = field(default_factory=dict)
    weight_limit: int = 6000
    fee_rate: Decimal = Decimal("0.001")
    fee_asset: str | None = None  # None: the quote asset
    # Test hooks
    prices: dict[str, Decimal] = field(default_factory=dict)
    clock_skew_ms: int = 0
    fill_on_arrival: bool = True  # MARKET and crossing LIMIT orders fill at once
    market_liquidity: Decimal | None = None  # a MARKET order fills at most this much
    answer_delay: float = 0.0  # delay before answering a new order (after placing it)
    answer_5xx: int = 0  # the next N new orders are placed but answered 503
    force_429: int = 0  # the next N requests are answered 429
    fill_before_cancel: bool = False  # a cancel finds its order just filled (-2011)
    # A fill racing a cancel, told only by the cancel's answer: this much of the order fills
    # as it is cancelled, and the stream's events of both are lost.
    fill_in_cancel: Decimal = Decimal(0)
    trades_error: bool = False  # an order's trades (myTrades / userTrades) cannot be read: a 500
    retry_after: int = 2

    def __post_init__(self) -> None:
        if not self.rules:
            self.rules = {"BTCUSDT": SymbolRules("BTCUSDT", "BTC", "USDT")}
            if self.flavor == FUTURES:
                self.rules["BTCUSDT"] = SymbolRules("BTCUSDT", "BTC", "USDT", tick=Decimal("0.1"),
                                                    min_price=Decimal("0.1"), step=Decimal("0.001"),
                                                    min_qty=Decimal("0.001"), max_qty=Decimal("1000"),
                                                    min_notional=Decimal("100"))
        for symbol in self.rules:
            self.prices.setdefault(symbol, Decimal("60000"))
        self.orders: dict[str, Order] = {}
        self.ids = itertools.count(1000)
        self.trade_ids = itertools.count(1)
        self.listen_keys: set[str] = set()
        self.sockets: dict[str, list[web.WebSocketResponse]] = {}
        self.ws_api: dict[web.WebSocketResponse, int] = {}  # subscribed WebSocket API sessions
        self.subscription_ids = itertools.count(0)
        self.weight_minute = 0
        self.weight_used = 0
        self.banned_until = 0.0
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, params
        self.refusals: list[tuple[str, int]] = []  # path, code
        self.balances: dict[str, Decimal] = {"USDT": Decimal("10000"), "BTC": Decimal("0")}
        self.positions: dict[str, Decimal] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    # ----- lifecycle

    @property
    def prefix(self) -> str:
        return "/api/v3" if self.flavor == SPOT else "/fapi/v1"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> StandIn:
        app = web.Application()
        p = self.prefix
        app.router.add_get(f"{p}/time", self.time)
        app.router.add_get(f"{p}/exchangeInfo", self.exchange_info)
        app.router.add_route("*", f"{p}/order", self.order)
        app.router.add_get(f"{p}/openOrders", self.open_orders)
        app.router.add_get("/api/v3/myTrades" if self.flavor == SPOT else "/fapi/v1/userTrades", self.my_trades)
        if self.flavor == SPOT:
            app.router.add_get("/api/v3/account", self.account)
            app.router.add_get("/api/v3/ticker/price", self.ticker_price)
            app.router.add_route("*", "/api/v3/userDataStream", self.listen_key)
        else:
            for version in ("v2", "v3", "v4"):  # Binance v2/v3, Aster v4
                app.router.add_get(f"/fapi/{version}/account", self.account)
            app.router.add_route("*", "/fapi/v1/listenKey", self.listen_key)
        app.router.add_get("/ws/{key}", self.websocket)
        app.router.add_get("/ws-api/v3", self.websocket_api)
        self.runner, self.port = await serve(app)
        return self

    async def stop(self) -> None:
        await self.drop_streams()
        if self.runner is not None:
            await self.runner.cleanup()

    # ----- helpers

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_skew_ms

    def error(self, status: int, code: int, msg: str, path: str = "") -> web.Response:
        self.refusals.append((path, code))
        return self.reply({"code": code, "msg": msg}, status)

    def reply(self, body: object, status: int = 200) -> web.Response:
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.weight_used)}
        return web.json_response(body, status=status, headers=headers)

    def charge(self, weight: int) -> web.Response | None:
        now = time.time()
        if now < self.banned_until:
            response = self.error(418, -1003, "Way too many requests; IP banned.")
            response.headers["Retry-After"] = str(max(1, int(self.banned_until - now + 0.999)))
            return response
        minute = int(now // 60)
        if minute != self.weight_minute:
            self.weight_minute, self.weight_used = minute, 0
        self.weight_used += weight
        if self.force_429 > 0 or self.weight_used > self.weight_limit:
            self.force_429 = max(0, self.force_429 - 1)
            response = self.error(429, -1003, "Too many requests; current limit is exceeded.")
            response.headers["Retry-After"] = str(self.retry_after)
            return response
        return None

    def ban(self, seconds: float) -> None:
        self.banned_until = time.time() + seconds

    def authenticate(self, request: web.Request, signed: bool) -> tuple[dict[str, str], web.Response | None]:
        params = dict(parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True))
        self.requests.append((request.method, request.path, params))
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            return params, self.error(401, -2015, "Invalid API-key, IP, or permissions for action.", request.path)
        if not signed:
            return params, None
        if not verify_signature(request.rel_url.raw_query_string, self.secret, self.public_key):
            return params, self.error(400, -1022, "Signature for this request is not valid.", request.path)
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", "5000"))
        except (KeyError, ValueError):
            return params, self.error(400, -1102, "Mandatory parameter 'timestamp' was not sent.", request.path)
        if recv_window > 60000:
            return params, self.error(400, -1131, "recvWindow must be less than 60000", request.path)
        server = self.now_ms()
        if not (timestamp < server + 1000 and server - timestamp <= recv_window):
            return params, self.error(400, -1021, "Timestamp for this request is outside of the recvWindow.",
                                      request.path)
        return params, None

    def order_json(self, order: Order) -> dict[str, object]:
        common = {
            "symbol": order.symbol, "orderId": order.order_id, "clientOrderId": order.client_id,
            "price": str(order.price), "origQty": str(order.qty), "executedQty": str(order.filled),
            "status": order.status, "timeInForce": order.tif, "type": order.type, "side": order.side,
        }
        if self.flavor == SPOT:
            common |= {"orderListId": -1, "cummulativeQuoteQty": str(order.quote),
                       "transactTime": order.time, "time": order.time, "updateTime": order.update}
        else:
            avg = (order.quote / order.filled) if order.filled else Decimal(0)
            common |= {"cumQty": str(order.filled), "cumQuote": str(order.quote), "avgPrice": str(avg),
                       "reduceOnly": order.reduce_only, "updateTime": order.update}
        return common

    # ----- fills and events (also the test hooks)

    async def push(self, event: dict[str, object]) -> None:
        text = json.dumps(event)
        for sockets in self.sockets.values():
            for ws in list(sockets):
                if not ws.closed:
                    await ws.send_str(text)
        for ws, subscription in list(self.ws_api.items()):
            if not ws.closed:
                await ws.send_str(json.dumps({"subscriptionId": subscription, "event": event}))

    async def event(self, order: Order, exec_type: str, last_qty: Decimal = Decimal(0),
                    last_price: Decimal = Decimal(0), fee: Decimal = Decimal(0), trade_id: int = 0,
                    cancel_id: str = "") -> None:
        rules = self.rules[order.symbol]
        fee_asset = self.fee_asset or rules.quote
        now = self.now_ms()
        if self.flavor == SPOT:
            # Spot: the event of a cancel carries the cancel request's id in `c`, the order's in `C`.
            client, original = (cancel_id, order.client_id) if cancel_id else (order.client_id, "")
            await self.push({
                "e": "executionReport", "E": now, "s": order.symbol, "c": client, "S": order.side,
                "o": order.type, "f": order.tif, "q": str(order.qty), "p": str(order.price), "C": original,
                "x": exec_type, "X": order.status, "r": "NONE", "i": order.order_id, "l": str(last_qty),
                "z": str(order.filled), "L": str(last_price), "n": str(fee),
                "N": fee_asset if fee else None, "T": now, "t": trade_id if trade_id else -1,
                "Z": str(order.quote), "O": order.time,
            })
        else:
            avg = (order.quote / order.filled) if order.filled else Decimal(0)
            await self.push({
                "e": "ORDER_TRADE_UPDATE", "E": now, "T": now, "o": {
                    "s": order.symbol, "c": order.client_id, "S": order.side, "o": order.type, "f": order.tif,
                    "q": str(order.qty), "p": str(order.price), "ap": str(avg), "x": exec_type,
                    "X": order.status, "i": order.order_id, "l": str(last_qty), "z": str(order.filled),
                    "L": str(last_price), "N": fee_asset, "n": str(fee), "T": now, "t": trade_id,
                    "R": order.reduce_only,
                }})

    async def fill(self, client_id: str, qty: Decimal, price: Decimal | None = None, beyond: bool = False,
                   quiet: bool = False) -> Order:
        """Fill `qty` more of an open order (at its limit price, or the set price); `beyond`:
        a venue gone wrong, filling more than the order's quantity; `quiet`: its stream event lost."""
        order = self.orders[client_id]
        assert order.status in ("NEW", "PARTIALLY_FILLED"), order.status
        qty = qty if beyond else min(qty, order.qty - order.filled)
        price = price or (order.price if order.type == "LIMIT" else self.prices[order.symbol])
        order.filled += qty
        order.quote += qty * price
        order.status = "FILLED" if order.filled >= order.qty else "PARTIALLY_FILLED"
        order.update = self.now_ms()
        rules = self.rules[order.symbol]
        sign = 1 if order.side == "BUY" else -1
        if self.flavor == SPOT:
            self.balances[rules.base] = self.balances.get(rules.base, Decimal(0)) + sign * qty
            self.balances[rules.quote] = self.balances.get(rules.quote, Decimal(0)) - sign * qty * price
        else:
            self.positions[order.symbol] = self.positions.get(order.symbol, Decimal(0)) + sign * qty
        fee = qty * price * self.fee_rate if self.fee_asset is None else Decimal("0.0001")
        trade_id = next(self.trade_ids)
        order.trades.append({"symbol": order.symbol, "id": trade_id, "orderId": order.order_id, "price": str(price),
                             "qty": str(qty), "quoteQty": str(qty * price), "commission": str(fee),
                             "commissionAsset": self.fee_asset or rules.quote, "time": order.update})
        if not quiet:
            await self.event(order, "TRADE", qty, price, fee, trade_id)
        return order

    def add_order(self, client_id: str, side: str, qty: Decimal, price: Decimal, symbol: str = "BTCUSDT") -> Order:
        """A resting LIMIT GTC order that is already at the venue (sent before, e.g. by an
        earlier run): a new order with its client id is a duplicate."""
        now = self.now_ms()
        order = Order(symbol, next(self.ids), client_id, side, "LIMIT", "GTC", qty, price, False, time=now, update=now)
        self.orders[client_id] = order
        return order

    async def expire(self, client_id: str) -> Order:
        order = self.orders[client_id]
        order.status = "EXPIRED"
        order.update = self.now_ms()
        await self.event(order, "EXPIRED")
        return order

    async def drop_streams(self) -> None:
        """Close every user-data WebSocket (a lost connection)."""
        for sockets in self.sockets.values():
            for ws in list(sockets):
                await ws.close()
        self.sockets.clear()
        for ws in list(self.ws_api):
            await ws.close()
        self.ws_api.clear()

    async def expire_listen_keys(self) -> None:
        """listenKeys expire (listenKeyExpired); WebSocket API subscriptions end
        (eventStreamTerminated)."""
        for ws, subscription in list(self.ws_api.items()):
            await ws.send_str(json.dumps({"subscriptionId": subscription,
                                          "event": {"e": "eventStreamTerminated", "E": self.now_ms()}}))
        for sockets in self.sockets.values():
            for ws in list(sockets):
                await ws.send_str(json.dumps({"e": "listenKeyExpired", "E": self.now_ms()}))
        self.listen_keys.clear()
        await self.drop_streams()

    def stream_count(self) -> int:
        return (sum(1 for sockets in self.sockets.values() for ws in sockets if not ws.closed)
                + sum(1 for ws in self.ws_api if not ws.closed))

    # ----- endpoints

    async def time(self, request: web.Request) -> web.Response:
        if (limited := self.charge(1)) is not None:
            return limited
        return self.reply({"serverTime": self.now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        if (limited := self.charge(20 if self.flavor == SPOT else 1)) is not None:
            return limited
        self.requests.append((request.method, request.path, dict(request.query)))
        symbols = []
        for rules in self.rules.values():
            filters: list[dict[str, object]] = [
                {"filterType": "PRICE_FILTER", "minPrice": str(rules.min_price), "maxPrice": str(rules.max_price),
                 "tickSize": str(rules.tick)},
                {"filterType": "LOT_SIZE", "minQty": str(rules.min_qty), "maxQty": str(rules.max_qty),
                 "stepSize": str(rules.step)},
            ]
            if self.flavor == SPOT:
                filters.append({"filterType": "NOTIONAL", "minNotional": str(rules.min_notional),
                                "applyMinToMarket": True, "maxNotional": "9000000", "applyMaxToMarket": False,
                                "avgPriceMins": 5})
            else:
                filters.append({"filterType": "MIN_NOTIONAL", "notional": str(rules.min_notional)})
            symbols.append({"symbol": rules.symbol, "status": "TRADING", "baseAsset": rules.base,
                            "quoteAsset": rules.quote, "filters": filters})
        return self.reply({
            "timezone": "UTC", "serverTime": self.now_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": self.weight_limit}],
            "symbols": symbols,
        })

    def filter_failure(self, rules: SymbolRules, qty: Decimal, price: Decimal | None) -> str | None:
        if price is not None and ((price - rules.min_price) % rules.tick != 0 or price < rules.min_price):
            return "PRICE_FILTER"
        if qty < rules.min_qty or qty > rules.max_qty or (qty - rules.min_qty) % rules.step != 0:
            return "LOT_SIZE"
        notional = qty * (price if price is not None else self.prices[rules.symbol])
        if notional < rules.min_notional:
            return "NOTIONAL" if self.flavor == SPOT else "MIN_NOTIONAL"
        return None

    async def order(self, request: web.Request) -> web.Response:
        weight = {"POST": 1, "GET": 4 if self.flavor == SPOT else 1, "DELETE": 1}.get(request.method, 1)
        if (limited := self.charge(weight)) is not None:
            return limited
        params, refused = self.authenticate(request, signed=True)
        if refused is not None:
            return refused
        if request.method == "POST":
            return await self.new_order(request, params)
        client_id = params.get("origClientOrderId", "")
        order = self.orders.get(client_id)
        if order is None or order.symbol != params.get("symbol"):
            if request.method == "DELETE":
                return self.error(400, -2011, "Unknown order sent.", request.path)
            return self.error(400, -2013, "Order does not exist.", request.path)
        if request.method == "DELETE":
            if self.fill_before_cancel and order.status in ("NEW", "PARTIALLY_FILLED"):
                await self.fill(order.client_id, order.qty - order.filled)
            if order.status not in ("NEW", "PARTIALLY_FILLED"):
                return self.error(400, -2011, "Unknown order sent.", request.path)
            raced = self.fill_in_cancel
            if raced:
                await self.fill(order.client_id, raced, quiet=True)
            order.status = "CANCELED"
            order.update = self.now_ms()
            if self.flavor == SPOT:
                # The answer's clientOrderId is the cancel request's own (newClientOrderId, or
                # one the venue makes up); the order's is origClientOrderId.
                cancel_id = params.get("newClientOrderId") or f"cancel{next(self.ids)}"
                if not raced:
                    await self.event(order, "CANCELED", cancel_id=cancel_id)
                return self.reply({**self.order_json(order), "clientOrderId": cancel_id,
                                   "origClientOrderId": order.client_id})
            if not raced:
                await self.event(order, "CANCELED")
        return self.reply(self.order_json(order))

    async def new_order(self, request: web.Request, params: dict[str, str]) -> web.Response:
        path = request.path
        rules = self.rules.get(params.get("symbol", ""))
        if rules is None:
            return self.error(400, -1121, "Invalid symbol.", path)
        client_id = params.get("newClientOrderId") or f"auto{next(self.ids)}"
        if client_id in self.orders:
            if self.flavor == SPOT:
                return self.error(400, -2010, "Duplicate order sent.", path)
            return self.error(400, -4116, "ClientOrderId is duplicated.", path)
        try:
            side, kind = params["side"], params["type"]
            qty = Decimal(params["quantity"])
            price = Decimal(params["price"]) if "price" in params else None
        except (KeyError, ArithmeticError):
            return self.error(400, -1102, "Mandatory parameter was not sent, was empty/null, or malformed.", path)
        if side not in ("BUY", "SELL") or kind not in ("MARKET", "LIMIT"):
            return self.error(400, -1116, "Invalid orderType.", path)
        tif = params.get("timeInForce", "GTC" if kind == "LIMIT" else "")
        if kind == "LIMIT" and (price is None or tif not in ("GTC", "IOC")):
            return self.error(400, -1102, "Mandatory parameter 'price' or 'timeInForce' was not sent.", path)
        if kind == "MARKET" and price is not None:
            return self.error(400, -1106, "Parameter 'price' sent when not required.", path)
        reduce_only = params.get("reduceOnly") == "true"
        if reduce_only and self.flavor == SPOT:
            return self.error(400, -1104, "Not all sent parameters were read.", path)
        if (failure := self.filter_failure(rules, qty, price)) is not None:
            return self.error(400, -1013, f"Filter failure: {failure}", path)
        if reduce_only:
            position = self.positions.get(rules.symbol, Decimal(0))
            if position == 0 or (side == "BUY") == (position > 0) or qty > abs(position):
                return self.error(400, -2022, "ReduceOnly Order is rejected.", path)
        now = self.now_ms()
        order = Order(rules.symbol, next(self.ids), client_id, side, kind, tif, qty,
                      price if price is not None else Decimal(0), reduce_only, time=now, update=now)
        self.orders[client_id] = order
        await self.event(order, "NEW")
        market = self.prices[rules.symbol]
        crosses = kind == "MARKET" or (side == "BUY" and price >= market) or (side == "SELL" and price <= market)
        if self.fill_on_arrival and crosses:
            take = qty if kind == "LIMIT" or self.market_liquidity is None else min(qty, self.market_liquidity)
            if take > 0:
                await self.fill(client_id, take, market if kind == "MARKET" else price)
            if order.filled < qty and (kind == "MARKET" or tif == "IOC"):
                await self.expire(client_id)
        elif tif == "IOC":
            await self.expire(client_id)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        if self.answer_5xx > 0:
            self.answer_5xx -= 1
            return self.reply({"code": -1000, "msg": "An unknown error occurred while processing the request."}, 503)
        answer = self.order_json(order)
        if self.flavor == SPOT and params.get("newOrderRespType") == "FULL":
            answer["fills"] = [{"price": t["price"], "qty": t["qty"], "commission": t["commission"],
                                "commissionAsset": t["commissionAsset"], "tradeId": t["id"]} for t in order.trades]
        return self.reply(answer)

    async def my_trades(self, request: web.Request) -> web.Response:
        if (limited := self.charge(5)) is not None:
            return limited
        params, refused = self.authenticate(request, signed=True)
        if refused is not None:
            return refused
        if self.trades_error:
            return self.error(500, -1000, "An unknown error occurred while processing the request.", request.path)
        return self.reply([t for o in self.orders.values() if o.symbol == params.get("symbol")
                           and str(o.order_id) == params.get("orderId", str(o.order_id)) for t in o.trades])

    async def open_orders(self, request: web.Request) -> web.Response:
        if (limited := self.charge(6 if self.flavor == SPOT else 1)) is not None:
            return limited
        params, refused = self.authenticate(request, signed=True)
        if refused is not None:
            return refused
        symbol = params.get("symbol")
        return self.reply([self.order_json(o) for o in self.orders.values()
                           if o.status in ("NEW", "PARTIALLY_FILLED") and symbol in (None, o.symbol)])

    async def ticker_price(self, request: web.Request) -> web.Response:
        if (limited := self.charge(4)) is not None:
            return limited
        self.requests.append((request.method, request.path, dict(request.query)))
        wanted = json.loads(request.query.get("symbols", "null") or "null") or list(self.prices)
        return self.reply([{"symbol": s, "price": str(self.prices[s])} for s in wanted if s in self.prices])

    async def account(self, request: web.Request) -> web.Response:
        if (limited := self.charge(20 if self.flavor == SPOT else 5)) is not None:
            return limited
        params, refused = self.authenticate(request, signed=True)
        if refused is not None:
            return refused
        if self.flavor == SPOT:
            return self.reply({"canTrade": True, "accountType": "SPOT", "balances": [
                {"asset": asset, "free": str(amount), "locked": "0"} for asset, amount in self.balances.items()]})
        wallet = self.balances.get("USDT", Decimal(0))
        return self.reply({
            "totalWalletBalance": str(wallet), "totalMarginBalance": str(wallet),
            "availableBalance": str(wallet), "assets": [{"asset": "USDT", "walletBalance": str(wallet)}],
            "positions": [{"symbol": s, "positionAmt": str(q), "entryPrice": "60000", "positionSide": "BOTH"}
                          for s, q in self.positions.items()],
        })

    async def listen_key(self, request: web.Request) -> web.Response:
        if (limited := self.charge(2)) is not None:
            return limited
        params, refused = self.authenticate(request, signed=False)
        if refused is not None:
            return refused
        if request.method == "POST":
            key = secrets.token_hex(30)
            self.listen_keys.add(key)
            return self.reply({"listenKey": key})
        key = params.get("listenKey")
        if key is not None and key not in self.listen_keys:
            return self.error(400, -1125, "This listenKey does not exist.", request.path)
        if request.method == "DELETE" and key is not None:
            self.listen_keys.discard(key)
        return self.reply({})

    async def websocket_api(self, request: web.Request) -> web.StreamResponse:
        """The spot WebSocket API, as far as the user data stream goes:
        `userDataStream.subscribe.signature` (apiKey, timestamp, signature of the sorted
        parameters), then the account's events as {"subscriptionId", "event"}."""
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                try:
                    req = json.loads(message.data)
                    request_id, method, params = req.get("id"), req["method"], dict(req.get("params") or {})
                except (ValueError, KeyError, TypeError, AttributeError):
                    await _ws_api_answer(ws, None, 400, code=-1102, msg="Malformed request.")
                    continue
                if method != "userDataStream.subscribe.signature":
                    await _ws_api_answer(ws, request_id, 400, code=-1100, msg=f"Unknown method {method}.")
                    continue
                if params.get("apiKey") != self.api_key:
                    await _ws_api_answer(ws, request_id, 401, code=-2015, msg="Invalid API-key, IP, or permissions.")
                    self.refusals.append(("/ws-api/v3", -2015))
                    continue
                if not verify_payload(ws_api_payload(params), str(params.get("signature", "")), self.secret,
                                      self.public_key):
                    await _ws_api_answer(ws, request_id, 400, code=-1022, msg="Signature for this request is not valid.")
                    self.refusals.append(("/ws-api/v3", -1022))
                    continue
                server, timestamp = self.now_ms(), int(params.get("timestamp", 0))
                if not (timestamp < server + 1000 and server - timestamp <= int(params.get("recvWindow", 5000))):
                    await _ws_api_answer(ws, request_id, 400, code=-1021,
                                         msg="Timestamp for this request is outside of the recvWindow.")
                    self.refusals.append(("/ws-api/v3", -1021))
                    continue
                subscription = next(self.subscription_ids)
                self.ws_api[ws] = subscription
                await _ws_api_answer(ws, request_id, 200, {"subscriptionId": subscription})
        finally:
            self.ws_api.pop(ws, None)
        return ws

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if key not in self.listen_keys:
            return web.Response(status=400, text="invalid listenKey")
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self.sockets.setdefault(key, []).append(ws)
        async for message in ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        return ws


async def _ws_api_answer(ws: web.WebSocketResponse, request_id: object, status: int, result: object = None,
                         code: int = 0, msg: str = "") -> None:
    body: dict[str, object] = {"id": request_id, "status": status}
    if status == 200:
        body["result"] = result
    else:
        body["error"] = {"code": code, "msg": msg}
    await ws.send_str(json.dumps(body))


class Client:
    """A Python client that signs like Binance's SDKs (binance-connector-python's
    binance_common: HMAC hex / Ed25519 base64 of the urlencoded query), to test the stand-in."""

    def __init__(self, standin: StandIn, api_key: str, secret: str | None = None,
                 private_key: object | None = None) -> None:
        self.standin, self.api_key, self.secret, self.private_key = standin, api_key, secret, private_key

    def signed_query(self, params: dict[str, str], timestamp: int | None = None) -> str:
        query = urlencode({**params, "timestamp": timestamp or self.standin.now_ms(), "recvWindow": 5000})
        if self.secret is not None:
            signature = hmac_signature(self.secret, query)
        else:
            signature = base64.b64encode(self.private_key.sign(query.encode())).decode()  # type: ignore[attr-defined]
        return f"{query}&signature={quote(signature, safe='')}"

    async def request(self, method: str, path: str, params: dict[str, str], timestamp: int | None = None,
                      signed: bool = True) -> tuple[int, object]:
        query = self.signed_query(params, timestamp) if signed else "&".join(f"{k}={v}" for k, v in params.items())
        url = f"{self.standin.rest_url}{path}" + (f"?{query}" if query else "")
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, headers={"X-MBX-APIKEY": self.api_key}) as response:
                return response.status, await response.json()
