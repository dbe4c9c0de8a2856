"""Caps on the keys (symbols, venues, subjects) a service keeps the latest message of, from the bus.

Whoever may publish a subject may name any symbol or venue in it, and each cache keyed by one
grows by an entry per new name: one stolen credential, publishing made-up names, would grow it
without end (OOM). So each such cache holds at most a fixed number of keys: a message for a new
key beyond them is refused on errors.<service> (`admit_symbol`), a key already kept still
updates. Read-through caches and memos, whose entries can be had again, just stop keeping new
keys.

- MAX_SYMBOLS: what the agents publish. The trading agent keeps the latest Sentiment and
  Consensus per symbol (context.ContextSource), the swarm agent the latest Sentiment
  (offline.LatestSentiment), from `agent.sentiment.<symbol>` / `agent.swarm.<symbol>`
  (sentiment-agent's and swarm-agent's credentials). With the contract's bounds on each
  message's text (services/contract/models.py, NAME_MAX_CHARS ...) what such a credential can
  make a service hold is bounded.
- MAX_MARKET_SYMBOLS: what market-data and risk publish: the latest tick per subject and the
  bar windows per (venue, symbol) of the trading agent (from md.tick / md.bar / md.alert), the
  verdicts per symbol of the trading agent, the gateway and the notifier (risk.verdict.<symbol>),
  the gateway's ticks. The Rust services risk and execution keep at most as many symbols of
  marks, ticks and books (moonbus_common::caps), dropping stale ones first to make room.
- MAX_VENUES: what is kept per venue: the gateway's feeds (md.status.<venue>), venue statuses
  (exec.venue.<venue>) and reconciliations (risk.recon.<venue>), the notifier's alike.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (a type only: the strategies read the caps without the bus runtime)
    from services.common.bus import Bus

# Far above any real deployment (the benchmarks run 1,000 symbols, market-data's 10,000), small
# enough that the caches stay bounded: ~10,000 x the largest Sentiment (~8 K characters) / Consensus
# (~110 K characters) the contract allows.
MAX_SYMBOLS = 10_000

# Far above any deployment we run (the benchmarks take 1,000 symbols through the agents,
# market-data alone 10,000-100,000), small enough to bound memory. The Rust services use the
# same number (moonbus_common::caps::MAX_MARKET_SYMBOLS).
MAX_MARKET_SYMBOLS = 100_000

# Venues are a handful per deployment (one per [market_data] feed / [execution] venue).
MAX_VENUES = 1_000

# The most bytes of one message a service keeps per symbol (a tick or bar as received, a verdict):
# market-data's ticks and bars are 150-300 bytes, risk's verdicts under 2 KiB; the rest is room
# for fields a later version adds (market data and verdicts are Tolerant). Without it the caps
# above bound the keys, not what each holds: a message may be up to NATS's max_payload (1 MiB).
MAX_KEPT_MESSAGE_BYTES = 8_192


# The most bytes of one agent message (a Signal, a swarm Consensus) a service keeps or relays to
# its clients: a consensus of a dozen models with their reasoning is 10-20 KiB; the contract's
# text bounds allow more (32 votes of 2,000 characters), which no member list sends.
MAX_AGENT_MESSAGE_BYTES = 65_536

# The most bytes of events one live stream (the gateway's SSE) holds for a client that does not
# read: past it the oldest go, as past its count.
MAX_STREAM_QUEUE_BYTES = 4 * 1024 * 1024


def oversized(data: bytes, what: str) -> str | None:
    """The reason `data` (a `what`: "tick", "verdict") is too big to keep, else None."""
    if len(data) <= MAX_KEPT_MESSAGE_BYTES:
        return None
    return (f"{what} of {len(data)} bytes refused: more than a message kept per symbol may be "
            f"(MAX_KEPT_MESSAGE_BYTES {MAX_KEPT_MESSAGE_BYTES})")


def full(kept: Collection[Hashable], key: Hashable, limit: str = "MAX_SYMBOLS") -> bool:
    """Whether `key` is new to `kept` and `kept` holds the cap named `limit` (a constant of this
    module, read now: tests set it) already."""
    return key not in kept and len(kept) >= globals()[limit]


async def refuse(bus: Bus, kept: Collection[Hashable], key: Hashable, subject: str, data: bytes,
                 limit: str = "MAX_SYMBOLS", what: str = "symbol") -> None:
    """The refusal of a message for `key` (new to the full `kept`), on errors.<service>."""
    await bus.report_error(subject, refusal(kept, key, limit, what), data)


def refusal(kept: Collection[Hashable], key: Hashable, limit: str = "MAX_SYMBOLS", what: str = "symbol") -> str:
    """Why a message for `key` (new to the full `kept`) is refused."""
    name = " ".join(key) if isinstance(key, tuple) else key
    return f"{what} {name} refused: already {len(kept)} {what}s kept, the most this service keeps ({limit} {globals()[limit]})"


async def admit_symbol(bus: Bus, kept: Collection[Hashable], symbol: Hashable, subject: str, data: bytes,
                       limit: str = "MAX_SYMBOLS", what: str = "symbol") -> bool:
    """Whether the latest message of `symbol` (a symbol, or a venue, subject, (venue, symbol):
    `what` names it) may be kept in `kept` (the keys kept now): yes for a key already there or
    while fewer than the cap named `limit` are; else it is refused, on errors.<service>, and the
    service carries on."""
    if not full(kept, symbol, limit):
        return True
    await refuse(bus, kept, symbol, subject, data, limit, what)
    return False
