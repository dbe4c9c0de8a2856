"""Where a decision's context comes from, so that replicas keep no state of their own:

- recent bars: `md.api.history` (one request per decision, the event's own bar merged in);
- the latest tick per symbol (`LatestTicks`), for the price at decision time: a decision
  may take seconds (an LLM), the bar's close is older by then;
- verdicts, account, sentiment: live subscriptions (every replica sees every update);
  what has not been seen yet is read from the KV bucket `moonbus` (`risk.verdict.<symbol>`,
  `risk.account`, `sentiment.<symbol>`; the account else from `risk.api.positions`), so a
  replica that has just started decides with the same context as one that has run for hours.

A piece that cannot be had is left None with a note; the agent then fails closed.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from services.contract import subjects as S
from services.common.bus import ApiError, Bus
from services.contract.models import (
    AccountState,
    Bar,
    Consensus,
    HistoryRequest,
    PositionsRequest,
    Sentiment,
    Tick,
    Verdict,
)
from services.common.streams import KV_BUCKET

from .agent import Context, Event
from .config import TradingConfig

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
HISTORY_LIMIT = 5000  # the most bars one md.api.history request may ask for (HistoryRequest.limit)


def merge_bars(history: list[Bar], bar: Bar | None, limit: int, max_gap_ns: int | None = None) -> list[Bar]:
    """History plus the event's bar (history may not have it yet), oldest first, no
    duplicate start_ts, the last `limit`; with `max_gap_ns`, only the bars after the last
    silence longer than that (a bar's start minus the end of the one before it).

    A gap in start_ts is real: market-data makes no bar for an interval without ticks or
    while it was down, and keeps its history across restarts (stream BARS). A short gap (a
    restart) leaves a usable series, so a restarted system decides at once; bars across a
    long one (hours down) are no series to measure a move over, so the strategy waits for
    enough new bars, as on a first start."""
    by_start = {b.start_ts: b for b in history if bar is None or b.start_ts <= bar.start_ts}
    if bar is not None:
        by_start[bar.start_ts] = bar
    merged = [by_start[k] for k in sorted(by_start)][-limit:]
    if max_gap_ns is not None:
        for i in range(len(merged) - 1, 0, -1):
            if merged[i].start_ts - merged[i - 1].end_ts > max_gap_ns:
                return merged[i:]
    return merged


class LatestTicks:
    """The latest tick per subject, kept as raw bytes and parsed only when a decision reads
    it. Latest wins: almost every tick is replaced before anyone reads it, so validating
    each one on arrival would be wasted work on the hottest subject (see bench/agent_ingest.py)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.received = 0
        self._raw: dict[str, bytes] = {}

    async def on_message(self, msg: Msg) -> None:
        self.received += 1
        self._raw[msg.subject] = msg.data

    async def get(self, venue: str, symbol: str) -> Tick | None:
        subject = S.tick(venue, symbol)
        raw = self._raw.get(subject)
        if raw is None:
            return None
        try:
            return Tick.model_validate_json(raw)
        except ValidationError as e:
            del self._raw[subject]
            await self.bus.report_error(subject, f"bad tick: {e.errors()[0]['msg']}", raw)
            return None


class ContextSource:
    def __init__(self, bus: Bus, cfg: TradingConfig) -> None:
        self.bus = bus
        self.cfg = cfg
        self.ticks = LatestTicks(bus)
        self.verdicts: dict[str, Verdict] = {}
        self.sentiments: dict[str, Sentiment] = {}
        self.consensus: dict[str, Consensus] = {}  # the swarm's latest per symbol (pipeline on only)
        self.account: AccountState | None = None
        self._kv: KeyValue | None = None

    async def subscribe(self) -> None:
        """Live updates, without a queue group: every replica needs every symbol's state."""

        async def on_verdict(v: Verdict, _msg: Any) -> None:
            if v.symbol not in self.verdicts or v.ts >= self.verdicts[v.symbol].ts:
                self.verdicts[v.symbol] = v

        async def on_account(a: AccountState, _msg: Any) -> None:
            if self.account is None or a.ts >= self.account.ts:
                self.account = a

        async def on_sentiment(s: Sentiment, _msg: Any) -> None:
            if s.symbol not in self.sentiments or s.ts >= self.sentiments[s.symbol].ts:
                self.sentiments[s.symbol] = s

        await self.bus.subscribe(S.ALL_VERDICTS, Verdict, on_verdict)
        await self.bus.subscribe(S.ACCOUNT, AccountState, on_account)
        await self.bus.subscribe(S.ALL_SENTIMENT, Sentiment, on_sentiment)
        if self.cfg.pipeline.swarm != "off":
            await self.bus.subscribe(S.ALL_SWARM, Consensus, self.on_consensus)
        await self.bus.client.subscribe(S.ALL_TICKS, cb=self.ticks.on_message)

    async def on_consensus(self, c: Consensus, _msg: Any = None) -> None:
        """The swarm's consensus (agent.swarm.<symbol>, or an agent.api.swarm.ask reply): the latest wins."""
        if c.symbol not in self.consensus or c.ts >= self.consensus[c.symbol].ts:
            self.consensus[c.symbol] = c

    async def gather(self, event: Event, bar: Bar | None, bars_needed: int, sentiment: bool) -> Context:
        ctx = Context(event=event, bars=[])
        ctx.bars = merge_bars(await self._history(event, bar, bars_needed, ctx.notes), bar, bars_needed,
                              int(self.cfg.history_max_gap_s * 1e9))
        symbol = event.symbol
        ctx.tick = await self.ticks.get(event.venue, symbol)
        if symbol not in self.verdicts and (v := await self._from_kv(S.verdict(symbol), Verdict, ctx.notes)):
            self.verdicts.setdefault(symbol, v)
        ctx.verdict = self.verdicts.get(symbol)
        if self.account is None:
            self.account = (await self._from_kv(S.ACCOUNT, AccountState, ctx.notes)
                            or await self._account(ctx.notes))
        ctx.account = self.account
        if sentiment:
            ctx.sentiment = self.sentiments.get(symbol) or await self._from_kv(S.kv_sentiment(symbol), Sentiment,
                                                                               ctx.notes)
        return ctx

    async def _history(self, event: Event, bar: Bar | None, limit: int, notes: list[str]) -> list[Bar]:
        """The `limit` bars up to the event's. market-data may be ahead of this decision (events
        queued behind slower ones, a replay faster than the agent): merge_bars drops the bars
        after the event's, so then ask once more, for as many more bars as fit in between."""
        bars = await self._ask_history(event, limit, notes)
        if bar is not None and bars and bars[-1].start_ts > bar.start_ts:
            ahead = (bars[-1].start_ts - bar.start_ts) // max(1, bar.end_ts - bar.start_ts)
            bars = await self._ask_history(event, min(HISTORY_LIMIT, limit + ahead), notes)
        return bars

    async def _ask_history(self, event: Event, limit: int, notes: list[str]) -> list[Bar]:
        request = HistoryRequest(symbol=event.symbol, interval=self.cfg.bar_interval, limit=limit, venue=event.venue)
        try:
            reply = await self.bus.call(S.MD_HISTORY_API, request, self.cfg.history_timeout_s)
        except (ApiError, ValidationError) as e:
            notes.append(f"history unavailable ({e})")
            return []
        return [b for b in reply.bars if b.symbol == event.symbol]

    async def _account(self, notes: list[str]) -> AccountState | None:
        try:
            reply = await self.bus.call(S.RISK_POSITIONS_API, PositionsRequest(), self.cfg.history_timeout_s)
        except (ApiError, ValidationError) as e:
            notes.append(f"account unavailable ({e})")
            return None
        return reply.account

    async def _from_kv(self, key: str, model: type[M], notes: list[str]) -> M | None:
        try:
            if self._kv is None:
                self._kv = await self.bus.client.jetstream().key_value(KV_BUCKET)
            entry = await self._kv.get(key)
        except (BucketNotFoundError, KeyNotFoundError):
            return None
        except Exception as e:  # KV unreachable: decide without it, visibly
            notes.append(f"KV {key} unavailable ({e!r})")
            return None
        try:
            return model.model_validate_json(entry.value or b"")
        except ValidationError as e:
            notes.append(f"KV {key} unreadable")
            reason = f"bad {model.__name__} in KV: {e}"
            await self.bus.report_error(f"$KV.{KV_BUCKET}.{key}", reason, entry.value or b"")
            return None
