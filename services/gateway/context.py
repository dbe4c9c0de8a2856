"""What every route needs: the bus, the config, the live state, the metrics, the write
token; bus requests with their errors and timings counted; the write-token check."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from services.common.bus import ApiError, Bus, validation_summary

from .config import TOKEN_ENV, GatewayConfig
from .live import Live
from .metrics import GatewayMetrics

R = TypeVar("R", bound=BaseModel)


@dataclass
class Gateway:
    cfg: GatewayConfig
    symbols: list[str]  # [system].symbols: the default of /api/prices
    live: Live
    metrics: GatewayMetrics
    token: str | None
    bus: Bus | None = None

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.nc is not None and self.bus.nc.is_connected

    def the_bus(self) -> Bus:
        if not self.connected:
            raise ApiError("bus_unavailable", "the gateway is not connected to NATS")
        assert self.bus is not None
        return self.bus

    async def call(self, subject: str, message: BaseModel, reply_model: type[R]) -> R:
        """One bus request; a reply that does not parse is the upstream's fault (bad_reply)."""
        bus = self.the_bus()
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await bus.request(subject, message, reply_model, self.cfg.request_timeout_s)
        except ApiError as e:
            outcome = e.code
            raise
        except ValidationError as e:
            outcome = "bad_reply"
            raise ApiError("bad_reply", f"{subject} answered an invalid reply: {validation_summary(e)}") from None
        finally:
            self.metrics.bus_requests.labels(subject, outcome).inc()
            self.metrics.bus_seconds.labels(subject).observe(time.perf_counter() - started)


def the_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


bearer = HTTPBearer(auto_error=False, description=f"the token in the gateway's {TOKEN_ENV}")


async def writer(
    gw: Annotated[Gateway, Depends(the_gateway)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Gateway:
    """Write endpoints: `Authorization: Bearer <MOONBUS_GATEWAY_TOKEN>`; with no token
    configured every write is refused."""
    if not gw.token:
        gw.metrics.auth_failures.labels("writes_disabled").inc()
        raise ApiError("writes_disabled", f"writes are disabled: the gateway has no {TOKEN_ENV}")
    if credentials is None:
        gw.metrics.auth_failures.labels("missing").inc()
        raise ApiError("unauthorized", "this endpoint needs `Authorization: Bearer <token>`")
    if not hmac.compare_digest(credentials.credentials.encode(), gw.token.encode()):
        gw.metrics.auth_failures.labels("wrong").inc()
        raise ApiError("unauthorized", "wrong token")
    return gw
