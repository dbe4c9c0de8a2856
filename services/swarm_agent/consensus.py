"""Turning votes into one action.

ABSTAIN votes (failed, timed out, no data) never count for an action.
- majority: the action with the most votes wins; a tie for first place -> HOLD;
- weighted: the action with the largest sum of confidences wins; a tie -> HOLD;
- quorum:   the majority action must also hold >= `quorum` of ALL models (abstentions
            included), else HOLD: a decision needs enough models to stand behind it.
No vote at all -> ABSTAIN. `agreement` is the winning action's share: of the votes
(majority), of the total confidence (weighted), of all models (quorum).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from services.contract.models import SUMMARY_MAX_CHARS, Vote, VoteAction, clip

METHODS = ("majority", "weighted", "quorum")


@dataclass(frozen=True)
class Outcome:
    action: VoteAction
    agreement: float


def _top(scores: dict[VoteAction, float]) -> VoteAction:
    best = max(scores.values())
    leaders = [a for a, s in scores.items() if abs(s - best) < 1e-9]
    return leaders[0] if len(leaders) == 1 else VoteAction.HOLD


def decide(votes: list[Vote], method: str, quorum: float = 0.5) -> Outcome:
    if method not in METHODS:
        raise ValueError(f"unknown consensus method {method!r}; known: {METHODS}")
    voting = [v for v in votes if v.action is not VoteAction.ABSTAIN]
    if not voting:
        return Outcome(VoteAction.ABSTAIN, 0.0)
    counts = Counter(v.action for v in voting)

    if method == "weighted":
        weights: dict[VoteAction, float] = defaultdict(float)
        for v in voting:
            weights[v.action] += v.confidence
        action = _top(weights)
        total = sum(weights.values())
        return Outcome(action, round(weights[action] / total, 4) if total else 0.0)

    action = _top({a: float(n) for a, n in counts.items()})
    if method == "majority":
        return Outcome(action, round(counts[action] / len(voting), 4))
    # quorum
    if counts[action] < quorum * len(votes) - 1e-9:
        action = VoteAction.HOLD
    return Outcome(action, round(counts[action] / len(votes), 4))


def summarize(votes: list[Vote], outcome: Outcome, method: str) -> str:
    parts = []
    for v in votes:
        if v.action is VoteAction.ABSTAIN:
            parts.append(f"{v.model} ABSTAIN ({v.error or 'no reason'})")
        else:
            parts.append(f"{v.model} {v.action.value} {v.confidence:.2f}")
    text = f"{outcome.action.value} by {method} (agreement {outcome.agreement:.2f}): " + ", ".join(parts)
    return clip(text, SUMMARY_MAX_CHARS)  # the contract's bound (many long abstention errors)
