"""The [gateway] section of moonbus.toml."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from services.common.config import Section


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    request_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    connect_wait_s: Annotated[float, Field(ge=0)] = 5.0
