"""What every route needs: the bus, the config, the live state, the metrics, the tokens;
bus requests with their errors and timings counted; the token checks; the error reply."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from services.common.bus import ApiError, Bus, validation_summary
from services.contract.subjects import Endpoint

from .config import READ_TOKEN_ENV, TOKEN_ENV, GatewayConfig
from .live import Live
from .metrics import GatewayMetrics

R = TypeVar("R", bound=BaseModel)
SESSION_COOKIE = "moonbus_read"

STATUS_BY_CODE = {
    "bad_request": 422,
    "unknown_interval": 422,  # md.api.history: an interval market data does not serve (the client's choice)
    "bad_host": 400,
    "body_too_large": 413,
    "unknown_symbol": 404,
    "not_found": 404,
    "unauthorized": 401,
    "writes_disabled": 403,
    "too_many_client_streams": 429,
    "bus_unavailable": 503,
    "no_responders": 503,
    "timeout": 503,
    "not_ready": 503,
    "not_stored": 503,
    "stream_unavailable": 503,
    "too_many_streams": 503,
    "too_many_lookups": 503,
}


def error_response(e: ApiError) -> JSONResponse:
    """`{"error": {"code", "message"}}` with the code's HTTP status (502 for a service's own codes)."""
    status = STATUS_BY_CODE.get(e.code, 502)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=status, headers=headers)


@dataclass
class Gateway:
    cfg: GatewayConfig
    symbols: list[str]  # [system].symbols: the default of /api/prices
    live: Live
    metrics: GatewayMetrics
    token: str | None  # writes (and reads); None = writes refused
    read_token: str | None = None  # None = reads open (only allowed on a loopback bind)
    bus: Bus | None = None
    lookups: asyncio.Semaphore = field(init=False)  # order lookups running at once

    def __post_init__(self) -> None:
        self.lookups = asyncio.Semaphore(self.cfg.max_order_lookups)

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.nc is not None and self.bus.nc.is_connected

    def the_bus(self) -> Bus:
        if not self.connected:
            raise ApiError("bus_unavailable", "the gateway is not connected to NATS")
        assert self.bus is not None
        return self.bus

    async def call(self, endpoint: Endpoint[Any, R], message: BaseModel) -> R:
        """One bus request; a reply that does not parse is the upstream's fault (bad_reply)."""
        bus = self.the_bus()
        subject = endpoint.subject
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await bus.call(endpoint, message, self.cfg.request_timeout_s)
        except ApiError as e:
            outcome = e.code
            raise
        except ValidationError as e:
            outcome = "bad_reply"
            raise ApiError("bad_reply", f"{subject} answered an invalid reply: {validation_summary(e)}") from None
        finally:
            self.metrics.bus_requests.labels(subject, self.metrics.outcome(outcome)).inc()
            self.metrics.bus_seconds.labels(subject).observe(time.perf_counter() - started)

    # ------------------------------------------------------------ tokens

    def session_value(self) -> str | None:
        """The dashboard's read cookie: derived from the read token (the token itself never
        sits in the browser), so a new token ends every session."""
        if not self.read_token:
            return None
        return hmac.new(self.read_token.encode(), b"moonbus gateway read session", hashlib.sha256).hexdigest()

    def check_write(self, authorization: str | None) -> None:
        """Writes: `Authorization: Bearer <MOONBUS_GATEWAY_TOKEN>`; with no token configured
        every write is refused."""
        if not self.token:
            self._refuse("write", "writes_disabled")
            raise ApiError("writes_disabled", f"writes are disabled: the gateway has no {TOKEN_ENV}")
        given = bearer_token(authorization)
        if given is None:
            self._refuse("write", "missing")
            raise ApiError("unauthorized", "this endpoint needs `Authorization: Bearer <token>`")
        if not _same(given, self.token):
            self._refuse("write", "wrong")
            raise ApiError("unauthorized", "wrong token")

    def check_read(self, authorization: str | None, cookie: str | None) -> None:
        """Reads, when a read token is set: the read (or the write) token as a bearer, or
        the session cookie POST /api/session gave the dashboard."""
        if not self.read_token:
            return
        given = bearer_token(authorization)
        if given is not None:
            # both compared every time: no timing tells which one it was close to
            if _same(given, self.read_token) | _same(given, self.token or ""):
                return
            self._refuse("read", "wrong")
            raise ApiError("unauthorized", "wrong token")
        if cookie is not None:
            if _same(cookie, self.session_value() or ""):
                return
            self._refuse("read", "wrong_cookie")
            raise ApiError("unauthorized", "the dashboard session is no longer valid; give the read token again")
        self._refuse("read", "missing")
        raise ApiError("unauthorized", f"reads need `Authorization: Bearer <{READ_TOKEN_ENV}>`")

    def _refuse(self, access: str, reason: str) -> None:
        self.metrics.auth_failures.labels(access, reason).inc()


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _same(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def the_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


bearer = HTTPBearer(auto_error=False, description=f"the token in the gateway's {TOKEN_ENV}")


async def writer(
    gw: Annotated[Gateway, Depends(the_gateway)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    request: Request,
) -> Gateway:
    """Write endpoints. The guard (guard.Guard) checks the token before the body is read;
    checked again here so that a write route is never open, and declared for OpenAPI."""
    gw.check_write(request.headers.get("authorization"))
    return gw
