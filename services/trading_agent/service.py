"""Bus wiring of the trading agent.

Ticks come through the `trading-agent` queue group (replicas share the load);
verdicts and account states are subscribed without a queue group, because every
replica needs the latest state to gate its own decisions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from services.common.bus import Bus
from services.common.config import load, section
from services.common.models import AccountState, Tick, Verdict, encode
from services.common.streams import ORDERS, ensure_streams

from .agent import Proposal, TradingAgent
from .config import TradingConfig

SERVICE = "trading-agent"
log = logging.getLogger(__name__)


async def submit(bus: Bus, proposal: Proposal, timeout: float) -> bool:
    """Signal first (why), then the order into ORDERS. A missing ack is reported, not raised."""
    order = proposal.order
    await bus.publish(f"agent.signal.{order.agent}.{order.symbol}", proposal.signal)
    subject = f"orders.submit.{order.symbol}"
    try:
        ack = await bus.publish_order(subject, order, timeout=timeout)
    except Exception as e:
        log.error("order %s not acknowledged: %r", order.client_order_id, e)
        await bus.report_error(subject, f"order not acknowledged: {e!r}", encode(order))
        return False
    log.info(
        "order %s %s %s %s (stream seq %s%s)",
        order.client_order_id, order.side.value, order.quantity, order.symbol,
        ack.seq, ", duplicate" if ack.duplicate else "",
    )
    return True


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None) -> None:
    cfg = section(load() if config is None else config, "trading_agent", TradingConfig)
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    agent = TradingAgent(cfg)
    try:
        try:
            await ensure_streams(bus.client.jetstream(), [ORDERS])
        except Exception as e:  # execution may create it; orders will fail loudly if not
            log.warning("could not ensure stream %s: %r", ORDERS, e)

        async def on_verdict(verdict: Verdict, _msg: Any) -> None:
            agent.on_verdict(verdict)

        async def on_account(account: AccountState, _msg: Any) -> None:
            agent.on_account(account)

        async def on_tick(tick: Tick, _msg: Any) -> None:
            proposal = agent.on_tick(tick, time.monotonic())
            if proposal is not None:
                await submit(bus, proposal, cfg.publish_timeout_s)

        await bus.subscribe("risk.verdict.>", Verdict, on_verdict)
        await bus.subscribe("risk.account", AccountState, on_account)
        await bus.subscribe("md.tick.>", Tick, on_tick, queue=SERVICE)
        await bus.serve(f"trading agent ({agent.strategy.name} strategy)", {})
        log.info("trading agent ready: %s", cfg.model_dump(mode="json"))
        await stop.wait()
    finally:
        await bus.close()
