"""Bus wiring of the risk agent.

`risk.account` is subscribed without a queue group: the rules are cheap and the
latch is per process, and a duplicate flatten from a second replica is harmless
(reduce-only orders cannot open a position).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.common.bus import ApiError, Bus
from services.common.config import load, section
from services.common.models import AccountState, PositionsReply, PositionsRequest, encode, now_ns
from services.common.streams import ORDERS, ensure_streams

from .config import RiskAgentConfig
from .rules import Latch, check_account, close_orders

SERVICE = "risk-agent"
log = logging.getLogger(__name__)


async def flatten(bus: Bus, cfg: RiskAgentConfig, reason: str, origin_ts: int) -> bool:
    """Close every open position; True when every order was acknowledged."""
    try:
        reply = await bus.request("risk.api.positions", PositionsRequest(), PositionsReply, cfg.request_timeout_s)
    except ApiError as e:
        log.error("cannot flatten (%s): positions unavailable: %s", reason, e)
        await bus.report_error("risk.api.positions", f"cannot flatten: {e}", b"")
        return False
    ok = True
    for signal, order in close_orders(reply.positions, reason, cfg.venue, origin_ts, now_ns()):
        await bus.publish(f"agent.signal.{signal.agent}.{signal.symbol}", signal)
        subject = f"orders.submit.{order.symbol}"
        try:
            await bus.publish_order(subject, order, timeout=cfg.request_timeout_s)
            log.warning("closing %s: %s %s (%s)", order.symbol, order.side.value, order.quantity, order.client_order_id)
        except Exception as e:
            ok = False
            log.error("close order %s not acknowledged: %r", order.client_order_id, e)
            await bus.report_error(subject, f"order not acknowledged: {e!r}", encode(order))
    return ok


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None) -> None:
    cfg = section(load() if config is None else config, "risk_agent", RiskAgentConfig)
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    latch = Latch()
    try:
        try:
            await ensure_streams(bus.client.jetstream(), [ORDERS])
        except Exception as e:
            log.warning("could not ensure stream %s: %r", ORDERS, e)

        async def on_account(account: AccountState, _msg: Any) -> None:
            new = latch.update(check_account(account, cfg))
            if not new:
                return
            reason = "; ".join(b.reason for b in new)
            log.warning("account rule breached: %s", reason)
            if not await flatten(bus, cfg, reason, account.ts):
                latch.release(b.rule for b in new)

        await bus.subscribe("risk.account", AccountState, on_account)
        await bus.serve("risk agent: account rules (max loss, max gain, min balance)", {})
        log.info("risk agent ready: %s", cfg.model_dump(mode="json"))
        await stop.wait()
    finally:
        await bus.close()
