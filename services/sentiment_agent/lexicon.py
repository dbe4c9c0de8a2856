"""A small offline sentiment model: weighted word lists with negation.

score(title) sums the weights of the words it knows; "not", "no", "never" and
"...n't" flip the sign of the next known word within 3 words ("no sign of
recovery" is negative). The sum is squashed into [-1, 1] with x / sqrt(x^2 + 4)
(as VADER does), so one strong word gives ~0.7 and several agree towards 1.
"""

from __future__ import annotations

import math
import re

NAME = "offline-lexicon"

POSITIVE: dict[str, float] = {
    **dict.fromkeys(["surge", "surges", "surged", "soar", "soars", "soared", "skyrockets"], 2.0),
    **dict.fromkeys(["rally", "rallies", "rallied", "breakout", "bullish", "approves", "approved"], 2.0),
    **dict.fromkeys(["inflows", "win", "wins", "rebound", "rebounds", "recovers"], 1.5),
    **dict.fromkeys(["recovery", "strong", "strongest", "strongly", "jump", "jumps", "boost", "boosting"], 1.5),
    **dict.fromkeys(["record", "gain", "gains", "rise", "rises", "rising", "climb", "climbs", "high", "highs"], 1.0),
    **dict.fromkeys(["upgrade", "adoption", "buying", "grows", "growth", "expands", "successful"], 1.0),
    **dict.fromkeys(["approve", "launches", "raises", "steady", "support"], 0.5),
}

NEGATIVE: dict[str, float] = {
    **dict.fromkeys(["crash", "crashes", "plunge", "plunges", "plunged", "collapse", "collapses"], -2.0),
    **dict.fromkeys(["hack", "hacked", "stolen", "exploit", "fraud", "insolvency", "bearish"], -2.0),
    **dict.fromkeys(["slump", "slumps", "outage", "liquidations", "capitulate", "selloff", "drains"], -1.5),
    **dict.fromkeys(["outflows", "losses", "loss", "sue", "sues", "fear", "fears", "downturn"], -1.5),
    **dict.fromkeys(["fall", "falls", "falling", "drop", "drops", "slides", "dips", "weak", "halts"], -1.0),
    **dict.fromkeys(["low", "lows", "delay", "delays", "bugs", "suspends", "paused", "failed", "fails"], -1.0),
    **dict.fromkeys(["warn", "warns", "nervous", "congestion", "hawkish", "deeper", "sell"], -1.0),
    **dict.fromkeys(["correction", "rumours", "rumors", "brace"], -0.5),
}

WEIGHTS: dict[str, float] = {**POSITIVE, **NEGATIVE}
NEGATORS = {"not", "no", "never", "without"}
NEGATION_SCOPE = 3
SQUASH_ALPHA = 4.0

_token = re.compile(r"[a-z]+(?:'[a-z]+)?")


def tokens(text: str) -> list[str]:
    return _token.findall(text.lower().replace("\u2019", "'"))


def raw_score(text: str, weights: dict[str, float] = WEIGHTS) -> float:
    total = 0.0
    negate_for = 0  # words left in the current negation's scope
    for word in tokens(text):
        if word in NEGATORS or word.endswith("n't"):
            negate_for = NEGATION_SCOPE
            continue
        weight = weights.get(word)
        if weight is not None:
            total += -weight if negate_for else weight
            negate_for = 0
        elif negate_for:
            negate_for -= 1
    return total


def score(text: str) -> float:
    """Sentiment of one text in [-1, 1]; 0 when no known word occurs."""
    total = raw_score(text)
    return max(-1.0, min(1.0, total / math.sqrt(total * total + SQUASH_ALPHA)))


class LexiconModel:
    """The offline model (scoring.LexiconScorer wraps it for the service)."""

    name = NAME

    def score(self, text: str) -> float:
        return score(text)
