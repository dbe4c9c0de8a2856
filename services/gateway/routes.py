"""The REST API (/api/...): each read is one bus request or a read of the ORDERS / EXEC
streams or of the live state; each write needs the bearer token. Replies keep the bus's
wire format (money as decimal strings). The tokens, the Host and the body size are
checked before any of this runs (guard.py).

The gateway is a caller of its own on the bus (proto/nats/moonbus.conf): it changes the
kill switch and limits on `risk.api.<api>.gateway` and submits orders on
`orders.submit.gateway.<symbol>`; risk knows the caller from the subject."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import nats.errors
import nats.js.errors
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from services.ops import orderlog
from services.contract import subjects as S
from services.common.bus import ApiError, OrderRefused
from services.ops.discovery import discover
from services.ops.supervision import StreamReadError, read_supervision
from services.contract.models import (
    CLIENT_ORDER_ID_PATTERN,
    INTERVAL_PATTERN,
    SYMBOL_PATTERN,
    AlgoKind,
    ClientOrderId,
    ErrorReply,
    ExecAlgo,
    HistoryReply,
    HistoryRequest,
    KillSwitchRequest,
    KillSwitchState,
    LimitsReply,
    LimitsRequest,
    OrderRequest,
    Protection,
    PositiveMoney,
    PositionsReply,
    PositionsRequest,
    PriceReply,
    PriceRequest,
    PricesReply,
    PricesRequest,
    Strict,
    Symbol,
    Venue,
    encode,
    now_ns,
)

from .context import SESSION_COOKIE, Gateway, bearer, the_gateway, writer
from .live import TOPICS, Live, Stream

router = APIRouter(prefix="/api")
KILL_SWITCH = S.risk_killswitch_api("gateway")  # the gateway calls as its own NATS user
LIMITS = S.risk_limits_api("gateway")
Gw = Annotated[Gateway, Depends(the_gateway)]
Writer = Annotated[Gateway, Depends(writer)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorReply, "description": text}
    for code, text in ((422, "bad input"), (502, "the service answered an error"),
                       (503, "no bus, no responder, timeout or not ready"))
}
WRITE_ERRORS = {**ERRORS, 401: {"model": ErrorReply, "description": "missing or wrong bearer token"},
                403: {"model": ErrorReply, "description": "writes disabled: no MOONBUS_GATEWAY_TOKEN"},
                413: {"model": ErrorReply, "description": "body over [gateway] max_body_bytes"}}
T = TypeVar("T")
SymbolPath = Annotated[str, Path(pattern=SYMBOL_PATTERN)]
_SYMBOL = SYMBOL_PATTERN.strip("^$")
# A comma-separated list of symbols (spaces around them allowed), or nothing (the default).
SYMBOLS_PATTERN = rf"^( *{_SYMBOL} *(, *{_SYMBOL} *)*)?$"
MAX_SINCE_S = 1e10  # a trace's look-back (over 300 years): more, or inf, is no nanosecond count


def wire(message: BaseModel) -> Response:
    return Response(content=encode(message), media_type="application/json")


def split_list(text: str | None, default: list[str]) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else default


# ---------------------------------------------------------------- market data


@router.get("/prices", response_model=PricesReply, responses=ERRORS)
async def prices(gw: Gw, symbols: Annotated[str | None, Query(pattern=SYMBOLS_PATTERN,
                                                              description="comma-separated; default: "
                                                                          "[system].symbols")] = None) -> Response:
    """Latest tick per symbol (md.api.prices); unknown symbols are listed in `missing`."""
    request = PricesRequest(symbols=split_list(symbols, gw.symbols))
    return wire(await gw.call(S.MD_PRICES_API, request))


@router.get("/price/{symbol}", response_model=PriceReply, responses={**ERRORS, 404: {"model": ErrorReply}})
async def price(gw: Gw, symbol: SymbolPath) -> Response:
    """Latest tick of one symbol (md.api.price)."""
    return wire(await gw.call(S.MD_PRICE_API, PriceRequest(symbol=symbol)))


@router.get("/history/{symbol}", response_model=HistoryReply, responses={**ERRORS, 404: {"model": ErrorReply}})
async def history(gw: Gw, symbol: SymbolPath,
                  interval: Annotated[str, Query(pattern=INTERVAL_PATTERN, description="one market data serves "
                                                 "([market_data] intervals), else 422 unknown_interval")] = "1m",
                  limit: Annotated[int, Query(ge=1, le=5000)] = 100) -> Response:
    """The last closed bars (md.api.history)."""
    request = HistoryRequest(symbol=symbol, interval=interval, limit=limit)
    return wire(await gw.call(S.MD_HISTORY_API, request))


# ---------------------------------------------------------------- risk


@router.get("/positions", responses=ERRORS)
async def positions(gw: Gw, symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None) -> JSONResponse:
    """Positions and PnL (risk.api.positions)."""
    reply = await gw.call(S.RISK_POSITIONS_API, PositionsRequest(symbol=symbol))
    return JSONResponse({"positions": [json.loads(p.model_dump_json(exclude_none=True)) for p in reply.positions]})


@router.get("/account", responses=ERRORS)
async def account(gw: Gw) -> Response:
    """Equity, cash, PnL, drawdown, trading state (from risk.api.positions)."""
    reply = await gw.call(S.RISK_POSITIONS_API, PositionsRequest())
    return wire(reply.account)


@router.get("/verdicts")
async def verdicts(gw: Gw) -> JSONResponse:
    """The latest verdict per symbol, as heard on risk.verdict.* (risk sends each at least once a heartbeat)."""
    return JSONResponse({"verdicts": gw.live.snapshot()["verdicts"]})


@router.get("/venues")
async def venues(gw: Gw) -> JSONResponse:
    """Each live venue (mode testnet or live): execution's latest LiveVenueStatus (connected,
    working and unconfirmed orders, the account read from the venue, orders open there that
    execution does not know) and risk's latest Reconciliation of it (MATCHED / MISMATCH /
    UNAVAILABLE, the action taken, the differences), as heard on exec.venue.* and
    risk.recon.*, each with its age in seconds. Empty without live venues."""
    now = time.time_ns()
    return JSONResponse({"venues": gw.live.venues(now), "ts": now})


@router.get("/limits", response_model=LimitsReply, responses=ERRORS)
async def limits(gw: Gw) -> Response:
    """The limits risk enforces (risk.api.limits)."""
    return wire(await gw.call(LIMITS, LimitsRequest()))


@router.post("/limits", response_model=LimitsReply, responses=WRITE_ERRORS)
async def set_limits(gw: Writer, body: LimitsRequest) -> Response:
    """Change limits (the ones left out keep their value). Needs the bearer token."""
    return wire(await gw.call(LIMITS, body))


@router.get("/killswitch", response_model=KillSwitchState, responses=ERRORS)
async def kill_switch(gw: Gw) -> Response:
    """Is the kill switch engaged, by whom, why."""
    return wire(await gw.call(KILL_SWITCH, KillSwitchRequest(action="status", actor="gateway")))


@router.post("/killswitch", response_model=KillSwitchState, responses=WRITE_ERRORS)
async def set_kill_switch(gw: Writer, body: KillSwitchRequest) -> Response:
    """`{"action": "engage" | "release", "actor", "reason", "flatten"}`. Needs the bearer token."""
    return wire(await gw.call(KILL_SWITCH, body))


# ---------------------------------------------------------------- orders


class AlgoSubmit(ExecAlgo):
    """An ExecAlgo as a client sends it: TWAP needs duration_ms and slices, ICEBERG
    display_quantity (below the order's quantity)."""

    # The body is checked from parsed JSON (Python objects), where a strict enum takes only
    # the enum object: `kind` takes its name. Every other field is as strict as the contract's.
    kind: Annotated[AlgoKind, Field(strict=False)]


class OrderSubmit(Strict):
    """An order from a person. `client_order_id` is the idempotency key: sending the same
    order twice (a retry) stores it once. The gateway adds agent `gateway` and the times."""

    client_order_id: ClientOrderId
    symbol: Symbol
    side: Literal["BUY", "SELL"]
    quantity: PositiveMoney
    type: Literal["MARKET", "LIMIT"] = "MARKET"
    limit_price: PositiveMoney | None = None
    venue: Venue = "sim"
    time_in_force: Literal["GTC", "IOC"] = "GTC"
    reduce_only: bool = False
    # exits execution carries out once it fills (README "Protections"), or an execution
    # algorithm (README "Execution algorithms"): one or the other
    protection: Protection | None = None
    algo: AlgoSubmit | None = None


class OrderAccepted(BaseModel):
    client_order_id: str
    stream: str
    seq: int
    duplicate: bool = Field(description="true: this client_order_id was stored before; nothing new was sent")


@router.get("/orders", responses=ERRORS)
async def orders(gw: Gw, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                 symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None) -> JSONResponse:
    """The last orders in ORDERS, oldest first, each with its execution reports from EXEC."""
    nc = gw.the_bus().client
    try:
        trails = await _bounded(gw, lambda: orderlog.recent_orders(nc, limit, symbol, max_scan=gw.cfg.order_scan_max))
    except TimeoutError:
        raise ApiError("timeout", f"reading ORDERS / EXEC took over {gw.cfg.order_lookup_timeout_s} s "
                                  "([gateway] order_lookup_timeout_s); ask for fewer or one symbol") from None
    return JSONResponse({"orders": [t.as_dict() for t in trails]})


@router.get("/orders/{client_order_id}", responses={**ERRORS, 404: {"model": ErrorReply}})
async def order_trace(gw: Gw, client_order_id: Annotated[str, Path(pattern=CLIENT_ORDER_ID_PATTERN)],
                      since_s: Annotated[float | None, Query(gt=0, le=MAX_SINCE_S, allow_inf_nan=False,
                                                             description="look back this far, in seconds")] = None,
                      ) -> JSONResponse:
    """One order, its reports and every hop's timestamp from the origin tick to the fill.
    The search is bounded ([gateway] order_scan_max messages of each stream, and
    order_lookup_timeout_s): 404 when it ends without the order."""
    since_ns = now_ns() - int(since_s * 1e9) if since_s else None
    nc = gw.the_bus().client
    try:
        trail = await _bounded(gw, lambda: orderlog.trace(nc, client_order_id, since_ns,
                                                          max_scan=gw.cfg.order_scan_max))
    except TimeoutError:
        raise ApiError("not_found", f"no order {client_order_id} found in {gw.cfg.order_lookup_timeout_s} s of "
                                    "searching ORDERS and EXEC; since_s narrows the search") from None
    except orderlog.ScanLimitReached as e:
        raise ApiError("not_found", str(e)) from None
    if trail is None:
        raise ApiError("not_found", f"no order {client_order_id} in ORDERS or EXEC")
    return JSONResponse(trail.as_dict())


async def _bounded(gw: Gateway, lookup: Callable[[], Awaitable[T]]) -> T:
    """A read of ORDERS / EXEC, bounded: at most max_order_lookups at once (else 503 at
    once), each cancelled after order_lookup_timeout_s (TimeoutError), so no scan runs on
    and on, buffering messages, for a client."""
    if gw.lookups.locked():
        gw.metrics.refused.labels("too_many_lookups").inc()
        raise ApiError("too_many_lookups", f"{gw.cfg.max_order_lookups} order lookups are running already "
                                           "([gateway] max_order_lookups); try again")
    async with gw.lookups:
        try:
            async with asyncio.timeout(gw.cfg.order_lookup_timeout_s):
                return await lookup()
        except orderlog.ScanLimitReached:
            raise  # the caller says what was not found
        except orderlog.StreamReadError as e:
            raise ApiError("stream_unavailable", str(e)) from None
        except TimeoutError:
            gw.metrics.refused.labels("lookup_timeout").inc()
            raise


@router.post("/orders", status_code=202, response_model=OrderAccepted, responses=WRITE_ERRORS)
async def submit_order(gw: Writer, body: OrderSubmit) -> OrderAccepted:
    """Store an order in ORDERS (orders.submit.gateway.<symbol>); execution takes it from there,
    through the risk check. Needs the bearer token."""
    ts = now_ns()
    order = OrderRequest.model_validate_json(json.dumps({**body.model_dump(mode="json", exclude_none=True),
                                                         "agent": "gateway", "origin_ts": ts, "ts": ts}))
    try:
        ack = await gw.the_bus().publish_order(S.orders_submit("gateway", order.symbol), order, gw.cfg.request_timeout_s)
    except OrderRefused as e:  # not stored: a full store, an order too large
        raise ApiError("not_stored", f"the ORDERS stream refused the order: {e.reason}") from None
    except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
        raise ApiError("not_stored", "the ORDERS stream did not acknowledge the order; it may be retried "
                                     "with the same client_order_id") from None
    gw.metrics.orders_submitted.labels(str(ack.duplicate).lower()).inc()
    return OrderAccepted(client_order_id=order.client_order_id, stream=ack.stream, seq=ack.seq,
                         duplicate=bool(ack.duplicate))


# ---------------------------------------------------------------- live


@router.get("/signals")
async def signals(gw: Gw, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSONResponse:
    """The last agent decisions (agent.signal.*) with their reasoning, oldest first."""
    return JSONResponse({"signals": gw.live.recent("signals", limit), "swarm": gw.live.recent("swarm", limit)})


@router.get("/swarm")
async def swarm(gw: Gw) -> JSONResponse:
    """The swarm's latest Consensus per symbol, as heard on agent.swarm.<symbol>: each model's
    vote (action, confidence, reasoning, latency, error), the consensus action, agreement and
    method, and `age_s` (seconds since the consensus' ts). `dropped`: malformed messages left
    out, by reason."""
    now = time.time_ns()
    return JSONResponse({"swarm": gw.live.views.per_symbol("swarm", now), "dropped": gw.live.views.dropped("swarm"),
                         "ts": now})


@router.get("/sentiment")
async def sentiment(gw: Gw) -> JSONResponse:
    """The latest Sentiment per symbol, as heard on agent.sentiment.<symbol> (score -1..1,
    confidence, items, sources, model), each with `age_s`; `dropped` as /api/swarm."""
    now = time.time_ns()
    return JSONResponse({"sentiment": gw.live.views.per_symbol("sentiment", now),
                         "dropped": gw.live.views.dropped("sentiment"), "ts": now})


@router.get("/arbs")
async def arbs(gw: Gw) -> JSONResponse:
    """The latest arbitrage opportunity per symbol and venue pair (md.arb.<symbol>), best net
    spread first: net and gross bps, quantity, profit, limits, `age_s`; `stale` once older
    than [gateway] arb_stale_s (stale ones last), gone once older than arb_keep_s."""
    now = time.time_ns()
    views = gw.live.views
    return JSONResponse({"arbs": views.arbs(now), "stale_after_s": views.limits.arb_stale_s,
                         "keep_s": views.limits.arb_keep_s, "dropped": views.dropped("arbs"), "ts": now})


@router.get("/protections")
async def protections(gw: Gw) -> JSONResponse:
    """The protections execution keeps on positions (exec.protection.<symbol>), the latest
    per parent order, by symbol: state (ARMED, TRIGGERED, CLOSED, CANCELLED), the exits'
    side and quantity, stop_loss, take_profit, trailing_stop_bps and trailing_trigger, the
    exit order, `age_s`. CLOSED and CANCELLED ones go after [gateway] protection_keep_s."""
    now = time.time_ns()
    views = gw.live.views
    return JSONResponse({"protections": views.protections(now), "keep_s": views.limits.protection_keep_s,
                         "dropped": views.dropped("protections"), "ts": now})


@router.get("/algos")
async def algos(gw: Gw) -> JSONResponse:
    """The running execution algorithms (TWAP, ICEBERG parent orders, from their execution
    reports' `algo`): status, quantity and filled quantity, slices sent / filled / total, the
    working slice, the next slice's time, the latest report of a slice (`last_child`), and
    `age_s` of the parent's latest report. A parent goes once its report is final."""
    now = time.time_ns()
    views = gw.live.views
    return JSONResponse({"algos": views.algos(now), "dropped": views.dropped("algos"), "ts": now})


@router.get("/state")
async def state(gw: Gw) -> JSONResponse:
    """What the gateway heard last: account, kill switch event, verdicts, feeds, latest ticks."""
    return JSONResponse({"connected": gw.connected, **gw.live.snapshot()})


@router.get("/services", responses=ERRORS)
async def services(gw: Gw) -> JSONResponse:
    """Every running service and instance ($SRV.INFO / $SRV.STATS)."""
    found = await discover(gw.the_bus().client, wait=gw.cfg.request_timeout_s / 2)
    return JSONResponse({"services": [s.as_dict() for s in found.values()], "ts": time.time_ns()})


@router.get("/supervision", responses=ERRORS)
async def supervision(gw: Gw) -> JSONResponse:
    """Each service as `make run`'s supervisor last recorded it (KV `supervisor.<service>`,
    `nats` for nats-server): state (running / restarting / crash_loop / stopped), restarts,
    crash-loop flag, last exit, next backoff; `stale` when its launcher is gone. Empty
    under docker compose, whose restart policies supervise."""
    try:
        records, problems = await read_supervision(gw.the_bus().client, gw.cfg.request_timeout_s)
    except StreamReadError as e:
        raise ApiError("stream_unavailable", str(e)) from None
    now = time.time_ns()
    return JSONResponse({"services": {name: r.as_dict(now) for name, r in records.items()}, "problems": problems,
                         "ts": now})


@router.get("/stream", responses={200: {"content": {"text/event-stream": {}},
                                        "description": "Server-Sent Events; event = message type"}, **ERRORS,
                                   429: {"model": ErrorReply, "description": "too many streams from this client"}})
async def stream(
    gw: Gw,
    request: Request,
    topics: Annotated[str | None, Query(description=f"comma-separated, of: {', '.join(TOPICS)} (default all)")] = None,
    symbols: Annotated[str | None, Query(description="comma-separated; default every symbol")] = None,
) -> StreamingResponse:
    """Live messages as Server-Sent Events: `event: <message type>`, `data: {"subject", "message"}`.
    At most [gateway] max_streams_per_client from one address (429), max_streams in all (503)."""
    wanted = set(split_list(topics, list(TOPICS)))
    unknown = wanted - set(TOPICS)
    if unknown:
        raise ApiError("bad_request", f"unknown topics {sorted(unknown)}; known: {', '.join(TOPICS)}")
    chosen = set(split_list(symbols, [])) or None
    for symbol in chosen or ():
        PriceRequest(symbol=symbol)  # the symbol check of the contract (422 on a bad one)
    gw.the_bus()
    # The TCP peer's address: uvicorn runs with proxy_headers off, so X-Forwarded-For cannot fake it.
    opened = gw.live.open(wanted, chosen, request.client.host if request.client else "")
    return EventStream(gw.live, opened, gw.cfg.keepalive_s)


class EventStream(StreamingResponse):
    """The live stream's response; its slot is given back however the response ends, even
    when the client is gone before the first event (then the generator never starts)."""

    def __init__(self, live: Live, opened: Stream, keepalive_s: float) -> None:
        super().__init__(live.events(opened, keepalive_s), media_type="text/event-stream",
                         headers={"X-Accel-Buffering": "no"})
        self.live, self.opened = live, opened

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.live.close(self.opened)


# ---------------------------------------------------------------- the dashboard's session


@router.post("/session", status_code=204, responses={401: {"model": ErrorReply, "description": "wrong read token"}})
async def session(gw: Gw, request: Request, _: Annotated[Any, Depends(bearer)]) -> Response:
    """`Authorization: Bearer <MOONBUS_GATEWAY_READ_TOKEN>` once; the answer sets an HttpOnly,
    SameSite=Strict cookie with which this browser reads (an EventSource cannot send a
    header). It is worth reads only, never writes. No read token set: nothing to do."""
    gw.check_read(request.headers.get("authorization"), None)
    response = Response(status_code=204)
    value = gw.session_value()
    if value is not None:
        response.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response
