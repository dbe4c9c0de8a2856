"""Bus wiring of the risk agent.

`risk.account` is subscribed without a queue group: the rules are cheap and the latch is
per process, and a duplicate flatten from a second replica is harmless (reduce-only
orders cannot open a position).

On a new breach: read the positions (`risk.api.positions`), optionally ask the model
whether to hold each one (confirm.py), engage the kill switch (`risk.api.killswitch`,
if engage_kill_switch_on_breach) unless every position was held, then close what is not
held with reduce-only market orders. Every step says why on `agent.signal.risk.<symbol>`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.contract import subjects as S
from services.common.bus import ApiError, Bus, OrderRefused
from services.common.config import load, section
from services.common.llm import LLMConfig, Provider, build_provider
from services.common.metrics import serve_metrics
from services.contract.models import (
    AccountState,
    Action,
    KillSwitchRequest,
    PositionsRequest,
    Signal,
    encode,
    now_ns,
)

from . import metrics
from .config import RiskAgentConfig
from .confirm import Answer, ask_hold, hold_threshold
from .rules import AGENT, Breach, Closing, Latch, PnLWindow, check_account, day_pnl

SERVICE = "risk-agent"
# Its NATS user may engage (never release) the kill switch; rust-risk reads the caller here.
KILL_SWITCH = S.risk_killswitch_api(SERVICE)
log = logging.getLogger(__name__)


def make_provider(cfg: RiskAgentConfig, config: dict[str, Any]) -> Provider | None:
    if not cfg.ai_confirm:
        return None
    llm = section(config, "llm", LLMConfig)
    if llm.provider == "offline":
        raise ValueError("[risk_agent] ai_confirm = true needs an LLM: set [llm] provider to an endpoint")
    return build_provider(llm)  # no fallback: a model that cannot answer means close


async def engage_kill_switch(bus: Bus, cfg: RiskAgentConfig, reason: str) -> None:
    request = KillSwitchRequest(action="engage", actor=SERVICE, reason=reason[:500])
    try:
        state = await bus.call(KILL_SWITCH, request, cfg.request_timeout_s)
    except (ApiError, ValueError) as e:
        metrics.KILL_SWITCH.labels("failed").inc()
        log.error("kill switch not engaged: %s", e)
        await bus.report_error(KILL_SWITCH.subject, f"kill switch not engaged: {e}", encode(request))
        return
    metrics.KILL_SWITCH.labels("engaged" if state.engaged else "refused").inc()
    log.warning("kill switch engaged=%s by %s: %s", state.engaged, state.actor, state.reason)


async def act(bus: Bus, cfg: RiskAgentConfig, provider: Provider | None, breaches: list[Breach],
              account: AccountState, closing: Closing) -> bool:
    """Handle new breaches; True when everything that had to be done was done. A position
    closed before in this breach (an earlier try that failed) gets the same order again."""
    reason = "; ".join(b.reason for b in breaches)
    try:
        reply = await bus.call(S.RISK_POSITIONS_API, PositionsRequest(), cfg.request_timeout_s)
    except (ApiError, ValueError) as e:
        log.error("cannot act on the breach (%s): positions unavailable: %s", reason, e)
        await bus.report_error(S.RISK_POSITIONS, f"cannot flatten: {e}", b"")
        return False
    positions = [p for p in reply.positions if p.quantity != 0]
    threshold = hold_threshold(breaches, cfg)
    answers: list[Answer | None] = [None] * len(positions)
    if provider is not None and threshold is not None:
        answers = list(await asyncio.gather(*(ask_hold(provider, p, reason, account, threshold, cfg)
                                              for p in positions)))
    if cfg.engage_kill_switch_on_breach and not all(a is not None and a.hold for a in answers):
        await engage_kill_switch(bus, cfg, reason)
    ok = True
    for p, answer in zip(positions, answers, strict=True):
        if answer is not None:
            metrics.AI_ANSWERS.labels("hold" if answer.hold else "close").inc()
        if answer is not None and answer.hold:
            await bus.publish(S.signal(AGENT, p.symbol), held_signal(p.symbol, reason, answer, account.ts))
            log.warning("%s kept: %s", p.symbol, answer.why)
            continue
        why = f"{reason}; {answer.why}" if answer else reason
        signal, order, again = closing.close(p, why, cfg.venue, account.ts, now_ns())
        if answer and answer.decision:
            signal = signal.model_copy(update={"latency_ms": answer.decision.latency_ms,
                                               "cost_usd": answer.decision.cost_usd})
        if not again:
            await bus.publish(S.signal(AGENT, p.symbol), signal)
        subject = S.orders_submit(order.agent, order.symbol)  # the agent token our user may publish
        try:
            # Sent again: a "duplicate" answer means the first try was stored after all.
            await bus.publish_order(subject, order, timeout=cfg.request_timeout_s, fresh=not again)
        except Exception as e:
            ok = False
            metrics.ORDER_FAILURES.inc()
            log.error("close order %s not acknowledged: %r", order.client_order_id, e)
            why = f"order refused: {e.reason}" if isinstance(e, OrderRefused) else f"order not acknowledged: {e!r}"
            await bus.report_error(subject, why, encode(order))
            continue
        metrics.CLOSE_ORDERS.inc()
        log.warning("closing %s: %s %s (%s)", order.symbol, order.side.value, order.quantity, order.client_order_id)
    return ok


def held_signal(symbol: str, reason: str, answer: Answer, origin_ts: int) -> Signal:
    d = answer.decision
    assert d is not None
    return Signal(agent=AGENT, symbol=symbol, action=Action.HOLD, confidence=d.confidence,
                  reasoning=f"{reason}; {answer.why}", model=d.model, latency_ms=d.latency_ms,
                  cost_usd=d.cost_usd, origin_ts=origin_ts, ts=now_ns())


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None) -> None:
    config = load() if config is None else config
    cfg = section(config, "risk_agent", RiskAgentConfig)
    provider = make_provider(cfg, config)
    window = PnLWindow(cfg.lookback_s) if cfg.lookback_s > 0 else None
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    latch = Latch()
    closing = Closing()
    try:
        serve_metrics(cfg.metrics_port)

        async def on_account(account: AccountState, msg: Any) -> None:
            if window and await bus.refused_as_ahead(account.ts, msg.subject, msg.data):
                return  # it would empty the window of every earlier equity (PnLWindow)
            pnl = window.update(account) if window else day_pnl(account)
            new = latch.update(check_account(account, pnl, cfg))
            if not latch.active:
                closing.clear()
            if not new:
                return
            for b in new:
                metrics.BREACHES.labels(b.rule).inc()
            log.warning("account rule breached: %s", "; ".join(b.reason for b in new))
            if not await act(bus, cfg, provider, new, account, closing):
                latch.release(b.rule for b in new)

        await bus.subscribe(S.ACCOUNT, AccountState, on_account)
        await bus.serve("risk agent: account rules (max loss, max gain, min balance)", {})
        log.info("risk agent ready: %s", cfg.model_dump(mode="json"))
        await stop.wait()
    finally:
        await bus.close()
