"""Serving the gateway: uvicorn on [gateway] host/port, inside `main(stop)` like every
other service, so `bus.run` and in-process tests drive it the same way.

On SIGINT/SIGTERM uvicorn shuts down gracefully (the app's lifespan exit drains the
bus) and hands the signal back to bus.run, which sets `stop`; setting `stop` from
elsewhere asks uvicorn to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvicorn

from services.common.config import load, section

from .app import create_app
from .config import GatewayConfig


async def main(stop: asyncio.Event, config: dict[str, Any] | None = None) -> None:
    table = load() if config is None else config
    cfg = section(table, "gateway", GatewayConfig)
    # Live streams never end by themselves: after shutdown_grace_s uvicorn closes them.
    # proxy_headers off: the client address (per-client stream cap) is the TCP peer, never
    # an X-Forwarded-For that any local client could write.
    server = uvicorn.Server(uvicorn.Config(create_app(config=table), host=cfg.host, port=cfg.port, log_config=None,
                                           timeout_graceful_shutdown=cfg.shutdown_grace_s, proxy_headers=False))
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
