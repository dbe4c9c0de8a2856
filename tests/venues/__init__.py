"""Local stand-ins of the live venues (Binance, Hyperliquid, Jupiter) for the adapter tests."""

from __future__ import annotations

import json
from typing import Any

import nats
from aiohttp import web


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 at a free port: the runner (to clean up) and the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def reasons_left(errors: Any, quiet: float = 0.2) -> list[str]:
    """The reasons of the ErrorEvents still coming on subscription `errors`, until it is quiet."""
    reasons = []
    while True:
        try:
            reasons.append(json.loads((await errors.next_msg(timeout=quiet)).data)["reason"])
        except nats.errors.TimeoutError:
            return reasons
