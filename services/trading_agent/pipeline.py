"""The decision pipeline (`[trading_agent.pipeline]`): the strategy's choice weighed with
the swarm's consensus (`agent.swarm.<symbol>`, or asked on `agent.api.swarm.ask`) and the
news sentiment (`agent.sentiment.<symbol>` / KV `sentiment.<symbol>`), before `plan`.

Pure functions here (the service gathers the inputs); off by default: with every knob at
its default the choice passes through unchanged and the Signal carries no `inputs`.

Order of the steps, each written into the reasoning and into `Signal.inputs` with its age:
1. sentiment: a fresh score s (younger than sentiment_max_age_s) scales the confidence by
   (1 + sentiment_weight * s) for a BUY, by (1 - sentiment_weight * s) for a SELL (bearish
   news strengthens a sell), clamped to 0..1; a stale one is recorded and ignored;
2. min_confidence: a BUY or SELL whose conviction is below it becomes HOLD;
3. swarm, for a risk-increasing BUY only (a SELL that reduces a long is never blocked):
   "confirm" needs a fresh BUY consensus with agreement >= swarm_min_confidence, else HOLD;
   "veto" turns it into HOLD when a fresh SELL consensus has agreement >= swarm_min_confidence.
   No fresh consensus: "confirm" abstains (HOLD), "veto" lets the BUY through.
   With shorts allowed for the symbol (`allow_short`) a risk-increasing SELL (opening or
   adding to a short) is gated the same way, sides swapped: "confirm" needs a SELL
   consensus, a BUY consensus vetoes. A signal against the position that may flip it
   (close, then open the other side) is gated for its opening part only: blocked, it
   still closes (`close_only`), without the flip.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from services.common.config import Section
from services.contract.models import Action, Consensus, Sentiment, SignalInput, VoteAction

if TYPE_CHECKING:  # agent.py imports config.py, which imports this module
    from .agent import Choice

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class PipelineConfig(Section):
    """`[trading_agent.pipeline]` (keys documented in moonbus.toml)."""

    swarm: Literal["off", "confirm", "veto"] = "off"
    swarm_min_confidence: Unit = 0.6  # the consensus agreement needed to confirm (or to veto)
    swarm_max_age_s: Annotated[float, Field(gt=0)] = 120.0  # an older consensus is ignored
    ask_swarm: bool = False  # no fresh consensus: ask agent.api.swarm.ask (within ask_timeout_s)
    ask_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    sentiment_weight: Unit = 0.0  # 0 = sentiment does not change the conviction
    sentiment_max_age_s: Annotated[float, Field(gt=0)] = 900.0  # an older sentiment is ignored
    min_confidence: Unit = 0.0  # a BUY or SELL below this conviction becomes HOLD

    @property
    def enabled(self) -> bool:
        return self.swarm != "off" or self.sentiment_weight > 0 or self.min_confidence > 0


def age_s(ts: int, now_ns: int) -> float:
    """Seconds from `ts` to `now_ns` (0 when `ts` is in the future: clocks differ a little)."""
    return max(0.0, (now_ns - ts) / 1e9)


def increases_risk(action: Action, position: Decimal | None, shorts: bool = False) -> bool:
    """A BUY that is not closing a short, or with shorts a SELL that is not closing a long
    (position unknown counts as increasing)."""
    if action is Action.SELL and shorts:
        return not (position is not None and position > 0)
    return action is Action.BUY and not (position is not None and position < 0)


def reduces(action: Action, position: Decimal | None) -> bool:
    """A SELL of a long or a BUY of a short: never blocked by the swarm."""
    return position is not None and ((action is Action.SELL and position > 0) or (action is Action.BUY and position < 0))


def wants_swarm(choice: Choice, position: Decimal | None, cfg: PipelineConfig, shorts: bool = False) -> bool:
    """Whether the swarm's consensus matters for this choice (so asking for one is worth it)."""
    return cfg.swarm != "off" and (increases_risk(choice.action, position, shorts)
                                   or (shorts and reduces(choice.action, position)))


def _opposite(action: Action) -> VoteAction:
    return VoteAction.SELL if action is Action.BUY else VoteAction.BUY


def fresh_consensus(consensus: Consensus | None, cfg: PipelineConfig, now_ns: int) -> bool:
    return consensus is not None and age_s(consensus.ts, now_ns) <= cfg.swarm_max_age_s


def _fmt_age(seconds: float) -> str:
    return f"{seconds:.1f} s"


def apply(choice: Choice, position: Decimal | None, consensus: Consensus | None, sentiment: Sentiment | None,
          cfg: PipelineConfig, now_ns: int, swarm_note: str = "", shorts: bool = False
          ) -> tuple[Choice, list[SignalInput]]:
    """The choice after the pipeline, and the inputs it weighed (with ages and effects).
    `swarm_note` says why there is no consensus when one was asked for and none came;
    `shorts`: the symbol may go short (the agent's `allow_short`)."""
    if not cfg.enabled:
        return choice, []
    inputs: list[SignalInput] = []
    steps = [f"{choice.model} {choice.action.value} {choice.confidence:.2f}"]
    action, conviction = choice.action, max(0.0, min(1.0, choice.confidence))

    # 1. sentiment
    if sentiment is not None and cfg.sentiment_weight > 0:
        age = age_s(sentiment.ts, now_ns)
        text = f"sentiment {sentiment.score:+.2f} ({_fmt_age(age)})"
        if age > cfg.sentiment_max_age_s:
            effect = f"stale (> {cfg.sentiment_max_age_s:g} s): ignored"
        elif action is Action.HOLD:
            effect = "not applied (HOLD)"
        else:
            sign = 1.0 if action is Action.BUY else -1.0
            factor = 1.0 + cfg.sentiment_weight * sentiment.score * sign
            conviction = max(0.0, min(1.0, conviction * factor))
            effect = f"x{factor:.2f}"
        inputs.append(SignalInput(source="sentiment", value=sentiment.score, age_s=round(age, 3), ts=sentiment.ts,
                                  effect=effect))
        steps.append(f"{text} {effect}")

    # 2. min_confidence
    if action is not Action.HOLD and conviction < cfg.min_confidence:
        steps.append(f"conviction {conviction:.2f} below min_confidence {cfg.min_confidence:g}: HOLD")
        action = Action.HOLD

    # 3. swarm
    close_only = choice.close_only
    if cfg.swarm != "off":
        gated = increases_risk(action, position, shorts)
        flips = shorts and reduces(action, position)  # the close may be followed by the other side
        checked = gated or flips
        if consensus is not None:
            age = age_s(consensus.ts, now_ns)
            text = f"swarm {consensus.action.value} {consensus.agreement:.2f} ({_fmt_age(age)} old)"
            fresh = age <= cfg.swarm_max_age_s
            strong = consensus.agreement >= cfg.swarm_min_confidence
            if not fresh:
                effect = f"stale (> {cfg.swarm_max_age_s:g} s): ignored"
            elif not checked:
                effect = f"not needed ({action.value}{' reduces the position' if reduces(action, position) else ''})"
            elif cfg.swarm == "confirm":
                effect = ("confirms" if consensus.action is VoteAction(action.value) and strong
                          else "does not confirm")
            else:
                effect = "vetoes" if consensus.action is _opposite(action) and strong else "no veto"
            inputs.append(SignalInput(source="swarm", action=consensus.action.value, value=consensus.agreement,
                                      age_s=round(age, 3), ts=consensus.ts, effect=effect))
            steps.append(f"{text} {effect}")
            if not fresh and checked:
                consensus = None
        if checked:
            blocked = "HOLD" if gated else "close only, no flip"
            if consensus is None:
                why = f"no fresh swarm consensus{f' ({swarm_note})' if swarm_note else ''}"
                if cfg.swarm == "confirm":
                    steps.append(f"{why}: {blocked} (confirm abstains)")
                else:
                    steps.append(f"{why}: not vetoed")
                    blocked = ""
            elif inputs[-1].effect in ("does not confirm", "vetoes"):
                steps.append(blocked)
            else:
                blocked = ""
            if blocked and gated:
                action = Action.HOLD
            elif blocked:
                close_only = True

    steps[-1] += f" -> {action.value} {conviction:.2f}"
    reasoning = f"{choice.reasoning}; pipeline: {'; '.join(steps)}"
    return replace(choice, action=action, confidence=conviction, reasoning=reasoning, close_only=close_only), inputs
