"""The gateway's HTTP API: each route is one bus request, the reply passed through
in its wire format (money as decimal strings).

Errors are `{"error": {"code", "message"}}` like on the bus, with an HTTP status:
bad input -> 422 (checked here, before anything reaches the bus), unknown symbol
-> 404, no bus / no responder / timeout / not ready -> 503, other bus errors -> 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from services.common.bus import ApiError, Bus
from services.common.config import SystemConfig, load, section
from services.common.models import (
    HistoryReply,
    HistoryRequest,
    PositionsReply,
    PositionsRequest,
    PriceReply,
    PriceRequest,
    PricesReply,
    PricesRequest,
    encode,
)

from .config import GatewayConfig

SERVICE = "gateway"
R = TypeVar("R", bound=BaseModel)
log = logging.getLogger(__name__)

STATUS_BY_CODE = {
    "bad_request": 422,
    "unknown_symbol": 404,
    "not_found": 404,
    "bus_unavailable": 503,
    "no_responders": 503,
    "timeout": 503,
    "not_ready": 503,
}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _validation_message(error: ValidationError | RequestValidationError) -> str:
    parts = []
    for e in list(error.errors())[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "request"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _wire(message: BaseModel) -> Response:
    return Response(content=encode(message), media_type="application/json")


async def _call(bus: Bus, subject: str, message: BaseModel, reply_model: type[R], timeout: float) -> R:
    """bus.request, with a reply that does not parse reported as the upstream's fault (502)."""
    try:
        return await bus.request(subject, message, reply_model, timeout)
    except ValidationError as e:
        raise ApiError("bad_reply", f"{subject} answered an invalid reply: {_validation_message(e)}") from None


def _connected(bus: Bus | None) -> bool:
    return bus is not None and bus.nc is not None and bus.nc.is_connected


def create_app(bus: Bus | None = None, config: dict[str, Any] | None = None) -> FastAPI:
    """The app. Without `bus`, the lifespan connects one as the `gateway` user (from
    NATS_URL / NATS_USER / NATS_PASSWORD); a given bus is used as it is (tests)."""
    table = load() if config is None else config
    cfg = section(table, "gateway", GatewayConfig)
    default_symbols = section(table, "system", SystemConfig).symbols

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.bus is not None:
            yield
            return
        own = app.state.bus = Bus(SERVICE)

        async def connect() -> None:
            await own.connect()
            await own.serve("HTTP gateway to the moonbus APIs", {})

        # Start serving HTTP even if NATS is not up yet: /health says so, the API
        # answers 503, and the connection keeps being retried in the background.
        task = asyncio.create_task(connect())
        done, _ = await asyncio.wait({task}, timeout=cfg.connect_wait_s)
        if not done:
            log.warning("NATS not reachable yet; still trying in the background")
        elif task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        try:
            yield
        finally:
            task.cancel()
            await own.close()

    app = FastAPI(title="moonbus gateway", version="0.1.0", lifespan=lifespan)
    app.state.bus = bus

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, e: ApiError) -> JSONResponse:
        return _error(STATUS_BY_CODE.get(e.code, 502), e.code, e.message)

    @app.exception_handler(ValidationError)
    async def on_bad_input(_request: Request, e: ValidationError) -> JSONResponse:
        return _error(422, "bad_request", _validation_message(e))

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(_request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(422, "bad_request", _validation_message(e))

    def the_bus(request: Request) -> Bus:
        bus = request.app.state.bus
        if not _connected(bus):
            raise ApiError("bus_unavailable", "the gateway is not connected to NATS")
        return bus

    timeout = cfg.request_timeout_s

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        connected = _connected(request.app.state.bus)
        body = {"status": "ok" if connected else "degraded", "bus": "connected" if connected else "disconnected"}
        return JSONResponse(body, status_code=200 if connected else 503)

    @app.get("/api/prices")
    async def prices(symbols: str | None = None, bus: Bus = Depends(the_bus)) -> Response:
        wanted = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else default_symbols
        req = PricesRequest(symbols=wanted)
        return _wire(await _call(bus, "md.api.prices", req, PricesReply, timeout))

    @app.get("/api/price/{symbol}")
    async def price(symbol: str, bus: Bus = Depends(the_bus)) -> Response:
        req = PriceRequest(symbol=symbol)
        return _wire(await _call(bus, "md.api.price", req, PriceReply, timeout))

    @app.get("/api/history/{symbol}")
    async def history(symbol: str, interval: str = "1m", limit: int = 100, bus: Bus = Depends(the_bus)) -> Response:
        req = HistoryRequest(symbol=symbol, interval=interval, limit=limit)
        return _wire(await _call(bus, "md.api.history", req, HistoryReply, timeout))

    @app.get("/api/positions")
    async def positions(symbol: str | None = None, bus: Bus = Depends(the_bus)) -> JSONResponse:
        reply = await _call(bus, "risk.api.positions", PositionsRequest(symbol=symbol), PositionsReply, timeout)
        return JSONResponse({"positions": [p.model_dump(mode="json", exclude_none=True) for p in reply.positions]})

    @app.get("/api/account")
    async def account(bus: Bus = Depends(the_bus)) -> Response:
        reply = await _call(bus, "risk.api.positions", PositionsRequest(), PositionsReply, timeout)
        return _wire(reply.account)

    return app
