"""The gateway's HTTP app: the REST API over the bus (routes), the live stream (live),
the dashboard (static/), /health and /metrics; the OpenAPI spec at /openapi.json, docs at /docs.

Errors are `{"error": {"code", "message"}}` like on the bus, with an HTTP status
(context.STATUS_BY_CODE): bad input -> 422 (checked here, before anything reaches the
bus), Host not served -> 400, body too large -> 413, unknown symbol or order -> 404,
missing or wrong token -> 401, writes disabled (no token set) -> 403, too many streams
from one client -> 429, no bus / no responder / timeout / not ready / too many streams or
lookups -> 503, other bus errors -> 502.

Middleware, outermost first: SecurityHeaders (every response, refusals too), CountRequests,
Guard (Host, token, body size: before any route runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.bus import ApiError, Bus, validation_summary
from services.common.config import SystemConfig, load, section

from . import backtests
from .config import READ_TOKEN_ENV, TOKEN_ENV, GatewayConfig, check_exposure
from .context import Gateway, error_response
from .guard import Guard, SecurityHeaders
from .live import Live
from .metrics import GatewayMetrics
from .routes import router
from .views import Limits

SERVICE = "gateway"
STATIC = Path(__file__).parent / "static"
log = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
# Methods labelled as they are; any other is `other`: the client picks the method (uvicorn
# takes any token), and each new label value would be a time series kept for good.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


class CountRequests:
    """HTTP requests by route template and status, and the time to the response's headers
    (a live stream counts once, when it starts)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in METHODS else "other"

        def record(status: int) -> None:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_seconds.labels(method, route).observe(time.perf_counter() - started)

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            record(500)
            raise


def body_problem(cause: BaseException) -> str:
    """Why FastAPI could not read a request body as JSON, in words."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not JSON text: byte {cause.start} is not {cause.encoding} ({cause.reason})"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deep"
    return f"the body is not valid JSON: {str(cause)[:200]}"


def json_problem(e: RequestValidationError) -> str | None:
    """`the body is not valid JSON: <why> at character N` for FastAPI's JSON decode error
    (its own message says only "JSON decode error")."""
    for error in e.errors():
        if error.get("type") == "json_invalid":
            why = (error.get("ctx") or {}).get("error", "decode error")
            where = error["loc"][-1] if len(error.get("loc", ())) > 1 else "?"
            return f"the body is not valid JSON: {why} at character {where}"
    return None


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the API serves at `path` (every operation of the OpenAPI paths matching
    it): a 405 names them all in `Allow` (RFC 9110), not only those of the first route
    that matched the path (Starlette's)."""
    methods: set[str] = set()
    for template, operations in app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


def create_app(bus: Bus | None = None, config: dict[str, Any] | None = None, token: str | None = None,
               read_token: str | None = None) -> FastAPI:
    """The app. Without `bus`, the lifespan connects one as the `gateway` user (from
    NATS_URL / NATS_USER / NATS_PASSWORD); a given bus is used as it is (tests). The
    write token defaults to $MOONBUS_GATEWAY_TOKEN (unset or empty: writes refused), the
    read token to $MOONBUS_GATEWAY_READ_TOKEN (unset or empty: reads open, which only a
    loopback [gateway] host allows: GatewayConfigError otherwise)."""
    table = load() if config is None else config
    cfg = section(table, "gateway", GatewayConfig)
    read_token = read_token if read_token is not None else os.environ.get(READ_TOKEN_ENV) or None
    check_exposure(cfg, read_token)
    metrics = GatewayMetrics()
    gw = Gateway(
        cfg=cfg,
        symbols=section(table, "system", SystemConfig).symbols,
        live=Live(metrics, cfg.stream_queue, cfg.max_streams, cfg.recent_signals, cfg.max_streams_per_client,
                  Limits(cfg.arb_stale_s, cfg.arb_keep_s, cfg.protection_keep_s, cfg.view_max_entries)),
        metrics=metrics,
        token=token if token is not None else os.environ.get(TOKEN_ENV) or None,
        read_token=read_token,
        bus=bus,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if bus is not None:
            await gw.live.start(bus)
            try:
                yield
            finally:
                await gw.live.stop()
            return
        own = gw.bus = Bus(SERVICE)

        async def connect() -> None:
            await own.connect()
            await gw.live.start(own)
            await own.serve("HTTP gateway to the moonbus APIs, live stream and dashboard", {})

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
            await gw.live.stop()
            await own.close()

    app = FastAPI(title="moonbus gateway", version="0.2.0", lifespan=lifespan,
                  description="REST over the moonbus bus, a live stream and a dashboard. Money is a "
                              "decimal string, time integer nanoseconds. Writes need `Authorization: Bearer "
                              f"<{TOKEN_ENV}>`; reads, when the gateway has a {READ_TOKEN_ENV}, need it as a "
                              "bearer token too (or the dashboard's cookie from `POST /api/session`).")
    app.state.gateway = gw
    app.include_router(router)
    app.include_router(backtests.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(ValidationError)
    async def on_bad_input(_request: Request, e: ValidationError) -> JSONResponse:
        return error_response(ApiError("bad_request", validation_summary(e)))

    @app.exception_handler(RequestValidationError)
    async def on_bad_request(_request: Request, e: RequestValidationError) -> JSONResponse:
        message = json_problem(e) or validation_summary(e)  # type: ignore[arg-type]
        return error_response(ApiError("bad_request", message))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
        """Starlette's own (no such route, method not allowed) in the same error shape; a body
        FastAPI could not parse (its bare 400) is bad input like any other: 422 with why."""
        if e.status_code == 400 and e.__cause__ is not None:
            return error_response(ApiError("bad_request", body_problem(e.__cause__)))
        headers = dict(e.headers or {})
        if e.status_code == 405 and (allowed := allowed_methods(request.app, request.url.path)):
            headers["Allow"] = ", ".join(allowed)
        code = HTTP_CODES.get(e.status_code, "bad_request")
        return JSONResponse({"error": {"code": code, "message": str(e.detail)}}, status_code=e.status_code,
                            headers=headers or None)

    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(Guard, gw=gw)
    app.add_middleware(CountRequests, metrics=metrics)
    app.add_middleware(SecurityHeaders)

    @app.get("/health")
    async def health() -> JSONResponse:
        connected = gw.connected
        body = {"status": "ok" if connected else "degraded", "bus": "connected" if connected else "disconnected"}
        return JSONResponse(body, status_code=200 if connected else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        metrics.nats_connected.set(1 if gw.connected else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app
