"""AI confirmation before closing (the original's option): for each open position the
model is asked whether to hold it despite the breached rule. The position is kept only
when the model answers HOLD with confidence >= ai_hold_confidence_loss (0.90) for a loss
limit, >= ai_hold_confidence_gain (0.60) for a gain limit. Anything else closes it: a
close answer, a low confidence, a timeout, an error, an unparsable answer, an abstention.
The min_balance rule is never put to a model.

A model can only delay this agent's own closing orders: rust-risk's hard limits (order,
position and exposure caps, max daily loss, drawdown, kill switch) are enforced on every
order whatever any model says.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.common.llm import Decision, DecisionRequest, Provider
from services.contract.models import AccountState, Position

from .config import RiskAgentConfig
from .rules import AGENT, Breach

SYSTEM_PROMPT = (
    "You are the risk officer of an automated trading account. An account rule has been "
    "breached and the rule says to close the position below now. Answer HOLD only if you are "
    "confident that keeping the position is better than closing it; answer SELL (close a long) "
    "or BUY (close a short) otherwise. Give a confidence from 0 to 1 and a short reasoning."
)
OVERRIDABLE = ("max_loss", "max_gain")


@dataclass(frozen=True)
class Answer:
    hold: bool
    why: str  # for the Signal / the close reason
    decision: Decision | None


def hold_threshold(breaches: list[Breach], cfg: RiskAgentConfig) -> float | None:
    """The confidence a HOLD needs, or None when a model may not override these breaches."""
    if not breaches or any(b.rule not in OVERRIDABLE for b in breaches):
        return None
    return max(cfg.ai_hold_confidence_loss if b.rule == "max_loss" else cfg.ai_hold_confidence_gain
               for b in breaches)


def prompt(position: Position, reason: str, account: AccountState) -> str:
    return "\n".join([
        f"Breached rule: {reason}",
        f"Position: {position.symbol} quantity {position.quantity}, average price {position.avg_price}, "
        f"mark {position.mark_price or 'unknown'}, unrealized PnL {position.unrealized_pnl}, "
        f"realized PnL {position.realized_pnl}",
        f"Account: equity {account.equity}, cash {account.cash}, day PnL {account.day_pnl}, "
        f"drawdown {account.drawdown_pct:.2f}%, state {account.state.value}",
        f"Question: HOLD this {position.symbol} position, or close it now?",
    ])


async def ask_hold(provider: Provider, position: Position, reason: str, account: AccountState,
                   threshold: float, cfg: RiskAgentConfig) -> Answer:
    request = DecisionRequest(agent=AGENT, symbol=position.symbol, system=SYSTEM_PROMPT,
                              prompt=prompt(position, reason, account), timeout_s=cfg.ai_timeout_s)
    try:
        d = await asyncio.wait_for(provider.decide(request), cfg.ai_timeout_s + 1.0)
    except TimeoutError:
        return Answer(False, f"AI confirmation: no answer within {cfg.ai_timeout_s}s, closing", None)
    except Exception as e:
        return Answer(False, f"AI confirmation failed ({e!r}), closing", None)
    if d.error is not None or d.fallback:
        return Answer(False, f"AI confirmation: {d.model} could not answer ({d.error}), closing", d)
    said = f"AI confirmation: {d.model} answered {d.action} with confidence {d.confidence:.2f}"
    if d.action == "HOLD" and d.confidence >= threshold:
        return Answer(True, f"{said} >= {threshold:.2f}: position kept ({d.reasoning})", d)
    need = f"; a hold needs HOLD with >= {threshold:.2f}"
    return Answer(False, f"{said}{need}, closing", d)
