"""A cap on the symbols a service keeps the latest message of, from the bus.

The trading agent keeps the latest Sentiment and Consensus per symbol (context.ContextSource),
the swarm agent the latest Sentiment (offline.LatestSentiment). Anyone who may publish
`agent.sentiment.<symbol>` / `agent.swarm.<symbol>` may name any symbol: one stolen
sentiment-agent or swarm-agent credential, publishing made-up symbols, would grow those caches
without end (OOM). So each holds at most MAX_SYMBOLS symbols: a message for a new symbol beyond
them is refused on errors.<service>, a symbol already kept still updates. With the contract's
bounds on each message's text (services/contract/models.py, NAME_MAX_CHARS ...) what such a
credential can make a service hold is bounded.
"""

from __future__ import annotations

from collections.abc import Collection

from services.common.bus import Bus

# Far above any real deployment (the benchmarks run 1,000 symbols, market-data's 10,000), small
# enough that the caches stay bounded: ~10,000 x the largest Sentiment (~8 K characters) / Consensus
# (~110 K characters) the contract allows.
MAX_SYMBOLS = 10_000


async def admit_symbol(bus: Bus, kept: Collection[str], symbol: str, subject: str, data: bytes) -> bool:
    """Whether the latest message of `symbol` may be kept in `kept` (the symbols kept now): yes
    for a symbol already there or while fewer than MAX_SYMBOLS are; else it is refused, on
    errors.<service>, and the service carries on."""
    if symbol in kept or len(kept) < MAX_SYMBOLS:
        return True
    await bus.report_error(subject, f"symbol {symbol} refused: already {len(kept)} symbols kept, the most "
                                    f"this service keeps (MAX_SYMBOLS {MAX_SYMBOLS})", data)
    return False
