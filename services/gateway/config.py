"""The [gateway] section of moonbus.toml. The write token is a secret: it comes only from
the environment (MOONBUS_GATEWAY_TOKEN), never from this file."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.common.config import Section

TOKEN_ENV = "MOONBUS_GATEWAY_TOKEN"


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    request_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    connect_wait_s: Annotated[float, Field(ge=0)] = 5.0
    stream_queue: Annotated[int, Field(ge=1)] = 1000
    max_streams: Annotated[int, Field(ge=1)] = 50
    keepalive_s: Annotated[float, Field(gt=0)] = 15.0
    recent_signals: Annotated[int, Field(ge=1)] = 200
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 3.0
