"""Where a decision's context comes from, so that replicas keep no state of their own:

- recent bars: the agent's own rolling window per (venue, symbol) (`BarWindows`), kept
  from every closed bar on `md.bar` (a subscription outside the queue group: each replica
  sees every bar, decides only its share; a bar is kept as received, `RawBar`, and checked
  and built only when a decision reads it, so the bars of other replicas' decisions cost
  little); `md.api.history` is asked once per symbol at
  the first decision (and again only when the window cannot vouch for the bars a decision
  needs: a gap it has not had confirmed, a bar older than it keeps, a bar that never came
  through it), so a decision needs no round trip;
- the latest tick per symbol (`LatestTicks`), for the price at decision time: a decision
  may take seconds (an LLM), the bar's close is older by then;
- verdicts, account, sentiment: live subscriptions (every replica sees every update);
  what has not been seen yet is read from the KV buckets (`moonbus`: `risk.verdict.<symbol>`,
  `risk.account`; `sentiment`: the symbol's; the account else from `risk.api.positions`), so a
  replica that has just started decides with the same context as one that has run for hours.
  Sentiment and consensus are kept for at most MAX_SYMBOLS symbols each; ticks, bar windows and
  verdicts for at most MAX_MARKET_SYMBOLS subjects / (venue, symbol)s / symbols (services/common/caps.py:
  made-up symbols are refused on errors.<service>, not kept without end).

A piece that cannot be had is left None with a note; the agent then fails closed.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from services.contract import subjects as S
from services.common.bus import ApiError, Bus, flush, is_ahead, validation_summary
from services.common import caps
from services.common.caps import admit_symbol
from services.contract.models import (
    AccountState,
    Bar,
    Consensus,
    HistoryRequest,
    PositionsRequest,
    Sentiment,
    Tick,
    Verdict,
    encode,
)
from services.common.streams import KV_BUCKET, KV_SENTIMENT_BUCKET
from services.contract.wire import checker, decoder

from .agent import Context, Event
from .config import TradingConfig

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
HISTORY_LIMIT = 5000  # the most bars one md.api.history request may ask for (HistoryRequest.limit)
ARRIVAL_TIMEOUT_S = 0.25  # how long a decision waits for its bar to come through the BarWindow


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


ALL_KNOWN = -1  # BarWindow.known_from when market-data has no older bar than the window's first
KEEP_AHEAD = 512  # bars a window keeps beyond `keep` for decisions still to come (~2 KB a bar)

_START_KEY, _END_KEY = b'"start_ts":', b'"end_ts":'
_NUMBER = re.compile(rb"[0-9]{1,20}(?=[,}])")
_decode_bar: Callable[[bytes], Bar] = decoder(Bar)


class RawBar:
    """A closed bar as it came on md.bar: its JSON, not yet checked, with the start_ts and
    end_ts read from it (what the window's order and holes need). The Bar is built, and
    checked against the contract, when a decision reads it (`BarWindow.select`); one that
    fails then (malformed, or not what its start_ts, end_ts and subject said) is dropped
    from the window as if it had been lost on the way. Most bars of a replica's window are
    decided by other replicas and never read at all: ~1 us here against ~10 us to build one."""

    __slots__ = ("data", "end_ts", "start_ts")

    def __init__(self, data: bytes, start_ts: int, end_ts: int) -> None:
        self.data = data
        self.start_ts = start_ts
        self.end_ts = end_ts

    @classmethod
    def read(cls, data: bytes) -> RawBar | None:
        """start_ts and end_ts of market-data's compact JSON (a key's last occurrence: the one
        the model takes); None when they are not there in that form."""
        i, j = data.rfind(_START_KEY), data.rfind(_END_KEY)
        if i < 0 or j < 0:
            return None
        start, end = _NUMBER.match(data, i + len(_START_KEY)), _NUMBER.match(data, j + len(_END_KEY))
        if start is None or end is None:
            return None
        return cls(data, int(start[0]), int(end[0]))


class BarWindow:
    """One (venue, symbol)'s closed bars as received on md.bar (each start_ts once, the
    latest copy wins, in start_ts order: a late bar goes in its place), for decisions.

    It vouches for a decision's bars only where it knows it has them all:
    - `known_from`: bars starting before it are unknown here (None: nothing is known yet,
      md.api.history was not asked; ALL_KNOWN: market-data had no older bar). Set by the
      history merged in at the first decision; raised when old bars are dropped (`keep`).
      The subscription is up before that request, so every bar after the history's is
      received here, in market-data's publication order;
    - `unconfirmed`: start_ts of bars with a hole before them (the bar before ends earlier
      than this one starts) that no history reply has confirmed: market-data makes no bar
      for a silent interval or while it is down, but a hole may also be a bar lost on the
      way, so the first decision across one asks md.api.history again (once per hole).

    Bars from md.bar are kept as `RawBar`s until a decision reads them (`select` builds
    them; one that fails its check is dropped there, `_drop`)."""

    __slots__ = ("starts", "bars", "known_from", "unconfirmed", "keep", "low_water", "arrivals", "venue", "symbol")

    def __init__(self, keep: int, venue: str | None = None, symbol: str | None = None) -> None:
        self.starts: list[int] = []
        self.bars: dict[int, Bar | RawBar] = {}
        self.venue, self.symbol = venue, symbol  # what a RawBar read here must say (None: not checked)
        self.known_from: int | None = None
        self.unconfirmed: set[int] = set()
        self.keep = keep
        self.low_water: int | None = None  # the first bar of the latest decision's bars (decisions come in order)
        self.arrivals: dict[int, asyncio.Future[None]] = {}  # decisions waiting for a bar to come through

    def add(self, bar: Bar | RawBar) -> None:
        start = bar.start_ts
        if start in self.bars:
            self.bars[start] = bar
        else:
            starts = self.starts
            i = bisect.bisect_left(starts, start)
            starts.insert(i, start)
            self.bars[start] = bar
            if i > 0 and self.bars[starts[i - 1]].end_ts < start:
                self.unconfirmed.add(start)
            if i + 1 < len(starts):
                following = starts[i + 1]
                if bar.end_ts >= following:
                    self.unconfirmed.discard(following)  # a late bar filled the hole
                else:
                    self.unconfirmed.add(following)
            if len(starts) > self.keep:
                self._trim()
        waiter = self.arrivals.pop(start, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _trim(self) -> None:
        """Down to `keep` bars, but never the bars a decision still to come may need (those
        from `low_water` on) unless over `keep` + KEEP_AHEAD (a replay far ahead of the
        decisions: those then ask md.api.history, "behind")."""
        excess = len(self.starts) - self.keep
        if excess <= 0:
            return
        spare = 0 if self.low_water is None else bisect.bisect_left(self.starts, self.low_water)
        n = max(min(excess, spare), excess - KEEP_AHEAD)
        if n <= 0:
            return
        for start in self.starts[:n]:
            del self.bars[start]
            self.unconfirmed.discard(start)
        del self.starts[:n]
        self.unconfirmed.discard(self.starts[0])  # the first bar's hole is below known_from now
        if self.known_from is not None:
            self.known_from = max(self.known_from, self.starts[0])

    def merge_history(self, history: list[Bar], asked: int) -> None:
        """md.api.history's `asked` (or fewer) latest bars: what the window lacks goes in,
        holes between them are market-data's own (confirmed), and the window is complete
        from the first of them (from the beginning when market-data had fewer)."""
        if not history:
            return
        before = dict(zip(self.starts[1:], self.starts))  # start -> the start before it
        for b in history:
            self.bars.setdefault(b.start_ts, b)
        self.starts = starts = sorted(self.bars)
        first, last = history[0].start_ts, history[-1].start_ts
        bars, unconfirmed = self.bars, set()
        for prev, start in zip(starts, starts[1:]):
            if (bars[prev].end_ts < start and not first < start <= last
                    and (start in self.unconfirmed or before.get(start) != prev)):
                unconfirmed.add(start)
        self.unconfirmed = unconfirmed
        known = ALL_KNOWN if len(history) < asked else first
        if self.known_from is None or known < self.known_from:
            self.known_from = known
        self._trim()

    def select(self, upto: int | None, limit: int) -> tuple[list[Bar] | None, str]:
        """The last `limit` bars starting at or before `upto` (None: the latest), oldest
        first, when the window vouches for them; else None and why: "unknown" (history
        never merged), "behind" (older bars are needed than the window keeps), "hole"
        (a hole among them not confirmed). The RawBars among them are built here; one that
        fails is dropped (`_drop`) and the choice made again without it."""
        while True:
            if self.known_from is None:
                return None, "unknown"
            starts = self.starts
            end = len(starts) if upto is None else bisect.bisect_right(starts, upto)
            begin = bisect.bisect_left(starts, self.known_from) if self.known_from != ALL_KNOWN else 0
            first = max(begin, end - limit)
            if end - first < limit and self.known_from != ALL_KNOWN:
                return None, "behind"
            if self.unconfirmed and first < end:
                low, high = starts[first], starts[end - 1]
                if any(low < s <= high for s in self.unconfirmed):
                    return None, "hole"
            bars = self.bars
            chosen = [bars[s] for s in starts[first:end]]
            if any(type(b) is RawBar for b in chosen):
                chosen = [self.build(b) if type(b) is RawBar else b for b in chosen]  # type: ignore[arg-type]
                if any(b is None for b in chosen):
                    continue  # one did not pass its check: dropped, choose again
            break
        if first < end and (self.low_water is None or starts[first] > self.low_water):
            self.low_water = starts[first]
        if len(starts) > self.keep:
            self._trim()  # what the decisions have passed (a replay ahead of them)
        return chosen, ""  # type: ignore[return-value]  # (every RawBar built above)

    def build(self, raw: RawBar) -> Bar | None:
        """The Bar of a RawBar of this window, checked against the contract and against
        what the window took it for (its start_ts, end_ts, and the subject's venue and
        symbol); None when it fails (then it is dropped from the window, `_drop`)."""
        try:
            bar = _decode_bar(raw.data)
        except ValidationError:
            bar = None
        if (bar is None or bar.start_ts != raw.start_ts or bar.end_ts != raw.end_ts
                or (self.venue is not None and (bar.venue, bar.symbol) != (self.venue, self.symbol))):
            if self.bars.get(raw.start_ts) is raw:
                self._drop(raw.start_ts)
            return None
        if self.bars.get(raw.start_ts) is raw:
            self.bars[raw.start_ts] = bar
        return bar

    def _drop(self, start: int) -> None:
        """A bar that failed its check when read: out of the window, as if lost on the way.
        The bar after it is behind a hole until a history reply confirms it, and the window
        vouches for nothing until then (known_from None: the next decision asks md.api.history
        once, whose bars fill the place)."""
        starts = self.starts
        i = bisect.bisect_left(starts, start)
        del starts[i]
        del self.bars[start]
        self.unconfirmed.discard(start)
        if 0 < i < len(starts) and self.bars[starts[i - 1]].end_ts < starts[i]:
            self.unconfirmed.add(starts[i])
        self.known_from = None

    async def arrival(self, start: int, timeout: float) -> bool:
        """Whether the bar starting at `start` has come through the window (waiting up to
        `timeout`): once it has, so has every bar market-data published before it."""
        if start in self.bars or (self.starts and start < self.starts[0]):
            return True  # here, or older than the window keeps (select says "behind")
        waiter = self.arrivals.get(start)
        if waiter is None:
            waiter = self.arrivals[start] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            self.arrivals.pop(start, None)
            return False
        return True


def cut_at_silence(bars: list[Bar], max_gap_ns: int | None) -> list[Bar]:
    """The bars after the last silence longer than `max_gap_ns` (merge_bars' rule)."""
    if max_gap_ns is not None:
        for i in range(len(bars) - 1, 0, -1):
            if bars[i].start_ts - bars[i - 1].end_ts > max_gap_ns:
                return bars[i:]
    return bars


class BarWindows:
    """The rolling windows of every (venue, symbol) on md.bar.<interval>.*.* (see BarWindow),
    of at most MAX_MARKET_SYMBOLS (venue, symbol)s (services/common/caps.py): a bar of a new
    one beyond is refused on errors.<service>, its decisions ask md.api.history."""

    def __init__(self, keep_extra: int = 64, bus: Bus | None = None) -> None:
        self.windows: dict[tuple[str, str], BarWindow] = {}
        self.keep_extra = keep_extra
        self.bus = bus  # where a refused bar is reported (`on_message`)
        self.most = 0
        self.received = 0
        self._decode: Callable[[bytes], Bar] = decoder(Bar)

    def window(self, venue: str, symbol: str, limit: int) -> BarWindow | None:
        """The window of (venue, symbol), keeping at least `limit` + keep_extra bars (the
        most any decision has asked for, so a new symbol's too); None for a new one when
        MAX_MARKET_SYMBOLS are kept (made-up symbols must not grow this without end)."""
        self.most = max(self.most, limit)
        return self._window((venue, symbol))

    def _window(self, key: tuple[str, str]) -> BarWindow | None:
        w = self.windows.get(key)
        if w is None:
            if len(self.windows) >= caps.MAX_MARKET_SYMBOLS:
                return None
            w = self.windows[key] = BarWindow(self.most + self.keep_extra, *key)
        elif w.keep < self.most + self.keep_extra:
            w.keep = self.most + self.keep_extra
        return w

    async def on_message(self, msg: Msg) -> None:
        """A bar on md.bar (every one, not only this replica's share), kept as received
        (`RawBar`, checked and built when a decision reads it) in the window of its
        subject's venue and symbol; one not in market-data's compact form is decoded now.
        A malformed one is left out (here, or when read); the queue group's subscriber
        reports it on errors.<service>. A bar of a new (venue, symbol) past MAX_MARKET_SYMBOLS
        is refused there too."""
        data = msg.data
        # One too big to keep as received is kept as a Bar (every field of it bounded).
        raw = RawBar.read(data) if len(data) <= caps.MAX_KEPT_MESSAGE_BYTES else None
        tokens = msg.subject.split(".")
        bar: Bar | RawBar
        if raw is not None and len(tokens) == 5:  # md.bar.<interval>.<venue>.<symbol>
            bar, key = raw, (tokens[3], tokens[4])
        else:
            try:
                bar = self._decode(data)
            except ValidationError:
                return
            key = (bar.venue, bar.symbol)
        self.received += 1
        w = self._window(key)
        if w is None:
            if self.bus is not None:
                await caps.refuse(self.bus, self.windows, key, msg.subject, data, "MAX_MARKET_SYMBOLS", "bar window")
            return
        w.add(bar)

    def adopt(self, bar: Bar, data: bytes) -> None:
        """The queue group's copy of a bar (decoded from `data`) in place of the window's
        RawBar of the same bytes, so that a later decision does not build it again."""
        w = self.windows.get((bar.venue, bar.symbol))
        if w is not None:
            raw = w.bars.get(bar.start_ts)
            if type(raw) is RawBar and raw.data == data and raw.end_ts == bar.end_ts:
                w.bars[bar.start_ts] = bar


class LatestTicks:
    """The latest tick per subject. Each one is checked against the contract on arrival
    (`wire.checker`: read by the contract's Rust types, no Tick built, under 1 us; a
    malformed one is refused with the model's reason on errors.<service> and does not
    replace the last good one) and kept as raw bytes; a Tick is built only when a decision
    reads it. Latest wins: almost every tick is replaced before anyone reads it (see
    bench/agent_ingest.py). At most MAX_MARKET_SYMBOLS subjects are kept (caps.py): a tick
    on a new one beyond is refused on errors.<service>."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.received = 0
        self.refused = 0
        self._raw: dict[str, bytes] = {}
        self._check = checker(Tick)
        self._decode = decoder(Tick)

    async def on_message(self, msg: Msg) -> None:
        self.received += 1
        data = msg.data
        try:
            self._check(data)
        except ValidationError as e:
            self.refused += 1
            await self.bus.report_error(msg.subject, f"bad tick: {validation_summary(e)}", data)
            return
        raw, subject = self._raw, msg.subject
        if len(data) > caps.MAX_KEPT_MESSAGE_BYTES:  # valid, but kept as received: bounded in size too
            self.refused += 1
            await self.bus.report_error(subject, caps.oversized(data, "tick") or "", data)
            return
        # a kept subject (almost every tick) costs one lookup here; a new one past the cap is refused
        if subject not in raw and not await admit_symbol(self.bus, raw, subject, subject, data,
                                                         "MAX_MARKET_SYMBOLS", "subject"):
            self.refused += 1
            return
        raw[subject] = data

    async def get(self, venue: str, symbol: str) -> Tick | None:
        subject = S.tick(venue, symbol)
        raw = self._raw.get(subject)
        if raw is None:
            return None
        try:
            return self._decode(raw)
        except ValidationError as e:
            del self._raw[subject]
            await self.bus.report_error(subject, f"bad tick: {e.errors()[0]['msg']}", raw)
            return None


class ContextSource:
    def __init__(self, bus: Bus, cfg: TradingConfig) -> None:
        self.bus = bus
        self.cfg = cfg
        self.ticks = LatestTicks(bus)
        self.verdicts: dict[str, Verdict] = {}  # for at most MAX_MARKET_SYMBOLS symbols
        # the latest per symbol, for at most MAX_SYMBOLS symbols each (services/common/caps.py)
        self.sentiments: dict[str, Sentiment] = {}
        self.consensus: dict[str, Consensus] = {}  # the swarm's latest per symbol (pipeline on only)
        self.account: AccountState | None = None
        self._kv: dict[str, KeyValue] = {}  # by bucket
        self.bars = BarWindows(bus=bus)
        self._fetching: dict[tuple[str, str], asyncio.Lock] = {}  # one history request per symbol at a time
        self.history_requests = 0

    async def subscribe(self) -> None:
        """Live updates, without a queue group: every replica needs every symbol's state."""

        async def on_verdict(v: Verdict, msg: Msg) -> None:
            if await self._ahead(v.ts, msg.subject, msg.data):
                return
            if (too_big := caps.oversized(msg.data, "verdict")) is not None:
                await self.bus.report_error(msg.subject, too_big, msg.data)
                return
            if v.symbol not in self.verdicts and not await admit_symbol(self.bus, self.verdicts, v.symbol, msg.subject,
                                                                       msg.data, "MAX_MARKET_SYMBOLS"):
                return  # a new symbol past MAX_MARKET_SYMBOLS (a stolen risk credential's made-up symbols)
            if v.symbol not in self.verdicts or v.ts >= self.verdicts[v.symbol].ts:
                self.verdicts[v.symbol] = v

        async def on_account(a: AccountState, msg: Msg) -> None:
            if await self._ahead(a.ts, msg.subject, msg.data):
                return
            if self.account is None or a.ts >= self.account.ts:
                self.account = a

        async def on_sentiment(s: Sentiment, msg: Msg) -> None:
            if await self._ahead(s.ts, msg.subject, msg.data):
                return
            if not await admit_symbol(self.bus, self.sentiments, s.symbol, msg.subject, msg.data):
                return  # a new symbol past MAX_SYMBOLS (made-up symbols would grow this without end)
            if s.symbol not in self.sentiments or s.ts >= self.sentiments[s.symbol].ts:
                self.sentiments[s.symbol] = s

        await self.bus.subscribe(S.ALL_VERDICTS, Verdict, on_verdict)
        await self.bus.subscribe(S.ACCOUNT, AccountState, on_account)
        await self.bus.subscribe(S.ALL_SENTIMENT, Sentiment, on_sentiment)
        if self.cfg.pipeline.swarm != "off":
            await self.bus.subscribe(S.ALL_SWARM, Consensus, self.on_consensus)
        await self.bus.client.subscribe(S.ALL_TICKS, cb=self.ticks.on_message)
        # every closed bar, outside the queue group, before any md.api.history request (BarWindow)
        await self.bus.client.subscribe(S.bar(self.cfg.bar_interval, "*", "*"), cb=self.bars.on_message)
        await flush(self.bus.client)

    async def _ahead(self, ts: int, subject: str, data: bytes) -> bool:
        """A verdict, account, sentiment or consensus dated far ahead (Bus.refused_as_ahead): the
        live caches keep the latest by `ts`, so it would hide every later genuine one (and a
        consensus or sentiment would count as 0 s old, fresh, until then)."""
        return is_ahead(ts) and await self.bus.refused_as_ahead(ts, subject, data)

    async def on_consensus(self, c: Consensus, msg: Msg | None = None) -> None:
        """The swarm's consensus (agent.swarm.<symbol>, or an agent.api.swarm.ask reply): the latest
        wins; refused when dated far ahead (`_ahead`) or for a new symbol past MAX_SYMBOLS."""
        subject, data = (msg.subject, msg.data) if msg else (S.SWARM_ASK, encode(c))
        if await self._ahead(c.ts, subject, data):
            return
        if not await admit_symbol(self.bus, self.consensus, c.symbol, subject, data):
            return
        if c.symbol not in self.consensus or c.ts >= self.consensus[c.symbol].ts:
            # Kept without its votes and words: the pipeline reads action, agreement and ts
            # only, and a symbol's entry stays small (what a stolen swarm credential can make
            # 10,000 of them hold).
            self.consensus[c.symbol] = c.model_copy(update={"question": "", "votes": [], "summary": ""})

    async def gather(self, event: Event, bar: Bar | None, bars_needed: int, sentiment: bool) -> Context:
        ctx = Context(event=event, bars=[])
        ctx.bars = await self.recent_bars(event, bar, bars_needed, ctx.notes)
        symbol = event.symbol
        ctx.tick = await self.ticks.get(event.venue, symbol)
        v = None
        if (symbol not in self.verdicts and (v := await self._from_kv(S.verdict(symbol), Verdict, ctx.notes))
                and not caps.full(self.verdicts, symbol, "MAX_MARKET_SYMBOLS")):
            self.verdicts.setdefault(symbol, v)
        ctx.verdict = self.verdicts.get(symbol, v)  # (past the cap: KV's, read each time, not kept)
        if self.account is None:
            self.account = (await self._from_kv(S.ACCOUNT, AccountState, ctx.notes)
                            or await self._account(ctx.notes))
        ctx.account = self.account
        if sentiment:
            ctx.sentiment = self.sentiments.get(symbol) or await self._from_kv(S.kv_sentiment(symbol), Sentiment,
                                                                               ctx.notes, KV_SENTIMENT_BUCKET)
        return ctx

    async def recent_bars(self, event: Event, bar: Bar | None, limit: int, notes: list[str]) -> list[Bar]:
        """The `limit` bars up to the event's (the latest for an alert), oldest first, after
        the last silence longer than history_max_gap_s (merge_bars' rule). From the
        symbol's BarWindow once its bar has come through it (at once, but for a slow
        subscriber); md.api.history when the window cannot vouch for them (BarWindow), and
        alone when the event's bar never came through the window."""
        max_gap = int(self.cfg.history_max_gap_s * 1e9)
        upto = None if bar is None else bar.start_ts
        w = self.bars.window(event.venue, event.symbol, limit)
        if w is None:  # a new (venue, symbol) past MAX_MARKET_SYMBOLS: no window, this decision's own history
            return merge_bars((await self._history(event, bar, limit, notes))[0], bar, limit, max_gap)
        if bar is not None and not await w.arrival(bar.start_ts, ARRIVAL_TIMEOUT_S):
            return merge_bars((await self._history(event, bar, limit, notes))[0], bar, limit, max_gap)
        chosen, why = w.select(upto, limit)
        if why == "behind":  # a bar older than the window keeps: this decision's own history
            return merge_bars((await self._history(event, bar, limit, notes))[0], bar, limit, max_gap)
        if chosen is None:
            key = (event.venue, event.symbol)
            lock = self._fetching.get(key) or self._fetching.setdefault(key, asyncio.Lock())
            async with lock:
                chosen, why = w.select(upto, limit)  # another decision may have fetched meanwhile
                if chosen is None:
                    history, asked = await self._history(event, bar, limit, notes)
                    w.merge_history(history, asked)
                    chosen, why = w.select(upto, limit)
                    if chosen is None:  # (history unavailable, or the bar is older than the window keeps)
                        return merge_bars(history, bar, limit, max_gap)
        if bar is not None and chosen and chosen[-1] is not bar:
            if chosen[-1].start_ts != bar.start_ts:  # not through the window after all
                return merge_bars((await self._history(event, bar, limit, notes))[0], bar, limit, max_gap)
            chosen[-1] = bar  # the event's own copy (the same start_ts)
        return cut_at_silence(chosen, max_gap)

    async def _history(self, event: Event, bar: Bar | None, limit: int, notes: list[str]) -> tuple[list[Bar], int]:
        """The `limit` bars up to the event's, and how many were asked for. market-data may be
        ahead of this decision (events queued behind slower ones, a replay faster than the
        agent): merge_bars drops the bars after the event's, so then ask once more, for as
        many more bars as fit in between."""
        bars = await self._ask_history(event, limit, notes)
        if bar is not None and bars and bars[-1].start_ts > bar.start_ts:
            ahead = (bars[-1].start_ts - bar.start_ts) // max(1, bar.end_ts - bar.start_ts)
            limit = min(HISTORY_LIMIT, limit + ahead)
            bars = await self._ask_history(event, limit, notes)
        return bars, limit

    async def _ask_history(self, event: Event, limit: int, notes: list[str]) -> list[Bar]:
        self.history_requests += 1
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

    async def _from_kv(self, key: str, model: type[M], notes: list[str], bucket: str = KV_BUCKET) -> M | None:
        try:
            if bucket not in self._kv:
                self._kv[bucket] = await self.bus.client.jetstream().key_value(bucket)
            entry = await self._kv[bucket].get(key)
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
            await self.bus.report_error(f"$KV.{bucket}.{key}", reason, entry.value or b"")
            return None
