"""The [gateway] section of moonbus.toml. The tokens are secrets: they come only from the
environment (MOONBUS_GATEWAY_TOKEN for writes, MOONBUS_GATEWAY_READ_TOKEN for reads),
never from this file."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field

from services.common.config import REPO_ROOT, Section

TOKEN_ENV = "MOONBUS_GATEWAY_TOKEN"
READ_TOKEN_ENV = "MOONBUS_GATEWAY_READ_TOKEN"


class GatewayConfigError(ValueError):
    """The gateway must not start this way (said in plain words)."""


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    request_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    connect_wait_s: Annotated[float, Field(ge=0)] = 5.0
    stream_queue: Annotated[int, Field(ge=1)] = 1000
    max_streams: Annotated[int, Field(ge=1)] = 50
    max_streams_per_client: Annotated[int, Field(ge=1)] = 8
    keepalive_s: Annotated[float, Field(gt=0)] = 15.0
    recent_signals: Annotated[int, Field(ge=1)] = 200
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 3.0
    max_body_bytes: Annotated[int, Field(ge=1)] = 64 * 1024
    allowed_hosts: list[str] = []
    order_lookup_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    order_scan_max: Annotated[int, Field(ge=1)] = 100_000
    max_order_lookups: Annotated[int, Field(ge=1)] = 2
    backtests_dir: str = ".moon/backtests"  # relative: under the checkout (REPO_ROOT)
    arb_stale_s: Annotated[float, Field(gt=0)] = 5.0  # an older arbitrage opportunity is shown stale
    arb_keep_s: Annotated[float, Field(gt=0)] = 60.0  # ... and dropped when older than this
    protection_keep_s: Annotated[float, Field(ge=0)] = 60.0  # a CLOSED / CANCELLED protection shown this long
    view_max_entries: Annotated[int, Field(ge=1)] = 1000  # per view (arbs, protections, algos, ...)


def backtests_path(cfg: GatewayConfig) -> Path:
    """Where the past backtest reports are (one directory each), served at /api/backtests."""
    return REPO_ROOT / cfg.backtests_dir  # an absolute backtests_dir stays as it is


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host` (a name other than localhost counts as beyond)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(cfg: GatewayConfig, read_token: str | None) -> None:
    """Bound beyond localhost, the gateway's reads (positions, orders, the live stream) are
    open to whoever reaches the port: refuse to start without a read token."""
    if not is_loopback(cfg.host) and not read_token:
        raise GatewayConfigError(
            f"[gateway] host = {cfg.host!r} listens beyond localhost, so reads need a token: set {READ_TOKEN_ENV} "
            f"(any long random string), or bind host = \"127.0.0.1\"")


def allowed_hosts(cfg: GatewayConfig) -> tuple[frozenset[str], frozenset[str]]:
    """The Host header values served, as (names served on any port, `name:port` pairs):
    the loopback names on the configured port, the bound address when it is a specific
    one, and [gateway] allowed_hosts (`name` = any port, `name:port` = that port)."""
    suffix = f":{cfg.port}" if cfg.port else ""  # port 0: the OS picks it, so any port
    entries = [f"127.0.0.1{suffix}", f"localhost{suffix}", f"[::1]{suffix}", *cfg.allowed_hosts]
    if cfg.host not in ("0.0.0.0", "::", ""):  # a wildcard bind has no name of its own
        entries.append(f"[{cfg.host}]{suffix}" if ":" in cfg.host else f"{cfg.host}{suffix}")
    any_port, exact = set(), set()
    for entry in (e.strip().lower() for e in entries):
        name, port = split_host(entry)
        if port:
            exact.add(f"{name}:{port}")
        else:
            any_port.add(name)
    return frozenset(any_port), frozenset(exact)


def split_host(value: str) -> tuple[str, str]:
    """`name[:port]` or `[v6][:port]` -> (name, port or "")."""
    if value.startswith("["):
        name, _, rest = value.partition("]")
        return name + "]", rest.removeprefix(":")
    name, _, port = value.partition(":")
    return name, port
