"""The gateway's live view of the bus: one subscription per topic for the whole gateway,
the latest state kept (prices, verdicts, account, kill switch, feeds, recent decisions,
and views.py's swarm, sentiment, arbitrage, protections and running algorithms), and every
message fanned out to the open streams (/api/stream, Server-Sent Events).

Messages pass through as their wire JSON (no re-encoding: money stays a decimal string),
except the views' topics, whose messages are checked first and streamed as checked (a
malformed one is dropped and counted, views.py).
A stream whose client reads too slowly loses its oldest events, never blocks the others.
Streams are capped in total and per client address, so one client cannot take them all.
What is kept per subject, symbol or venue is capped (services/common/caps.py: MAX_MARKET_SYMBOLS
ticks and verdicts, MAX_VENUES feeds, venue statuses and reconciliations): a message naming a
new one beyond is refused on errors.gateway (neither kept nor streamed), a kept one still updates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from services.common import caps
from services.common.bus import ApiError, Bus, flush, validation_summary
from services.common.streams import KV_SENTIMENT_STREAM, read_stream
from services.contract import subjects as S
from services.contract.catalogue import model_for
from services.contract.models import Consensus, Signal

from .metrics import GatewayMetrics
from .views import Limits, Views

# Topic -> subjects. A stream asks for topics; the dashboard wants all of them.
TOPICS: dict[str, list[str]] = {
    "ticks": [S.ALL_TICKS],
    "alerts": [S.ALL_ALERTS],
    "arbs": [S.ALL_ARBS],  # cross-venue arbitrage opportunities (market-data)
    "feeds": [S.ALL_FEED_STATUS],
    "signals": [S.ALL_SIGNALS],
    "swarm": [S.ALL_SWARM],  # the latest Consensus per symbol (views.py)
    "sentiment": [S.ALL_SENTIMENT],  # the latest Sentiment per symbol (views.py)
    "orders": [S.ORDERS_SUBMIT_ALL, S.ORDERS_CANCEL_ALL],
    "reports": [S.ALL_REPORTS],
    # TWAP / ICEBERG parents' progress (`AlgoOrder` events), made from exec.report (views.py)
    "algos": [],
    # the stop loss / take profit / trailing stop of each position (execution's ProtectionState)
    "protections": [S.ALL_PROTECTIONS],
    "risk": [S.ACCOUNT, S.ALL_VERDICTS, S.RISK_EVENTS],
    # the live venues: execution's status and account of each, risk's reconciliation of it
    "venues": [S.ALL_VENUE_STATUS, S.ALL_RECONCILIATIONS],
}
VENUE_STATUS_PREFIX = S.exec_venue("")
RECON_PREFIX = S.risk_recon("")
VERDICT_PREFIX = S.verdict("")
KV_SENTIMENT_PREFIX = S.kv_sentiment_subject("")
log = logging.getLogger(__name__)


def event_bytes(name: str, data: bytes) -> bytes:
    """One Server-Sent Event."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def _one_line(payload: bytes) -> bytes:
    """SSE data must be one line: wire JSON is compact, anything else is re-encoded."""
    if b"\n" not in payload and b"\r" not in payload:
        return payload
    try:
        return json.dumps(json.loads(payload), separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(payload.decode("utf-8", "replace")).encode()


@dataclass(eq=False)  # identity: each open stream is its own
class Stream:
    topics: set[str]
    symbols: set[str] | None  # None = every symbol
    queue: asyncio.Queue[bytes]
    client: str = ""  # the peer's address
    dropped: int = 0
    queued_bytes: int = 0  # of the events in `queue` (caps.MAX_STREAM_QUEUE_BYTES)


@dataclass
class LiveState:
    # each cache keyed by a subject, symbol or venue holds at most caps.MAX_MARKET_SYMBOLS / MAX_VENUES keys
    ticks: dict[str, bytes] = field(default_factory=dict)  # subject -> latest payload
    verdicts: dict[str, bytes] = field(default_factory=dict)  # symbol -> latest Verdict
    feeds: dict[str, bytes] = field(default_factory=dict)  # venue -> latest FeedStatus
    account: bytes | None = None
    kill_switch: bytes | None = None  # the latest risk.events
    signals: collections.deque[bytes] = field(default_factory=collections.deque)
    swarm: collections.deque[bytes] = field(default_factory=collections.deque)
    venue_status: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # venue -> (LiveVenueStatus, received ns)
    reconciliations: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # venue -> (Reconciliation, received)


def _symbol_of(topic: str, subject: str) -> str | None:
    """The symbol a message is about (the last subject token), for the `symbols` filter."""
    if topic in ("ticks", "alerts", "arbs", "signals", "swarm", "sentiment", "orders", "reports", "algos",
                 "protections") or subject.startswith(VERDICT_PREFIX):
        return subject.rsplit(".", 1)[-1]
    return None


class Live:
    def __init__(self, metrics: GatewayMetrics, queue_size: int = 1000, max_streams: int = 50,
                 recent: int = 200, max_per_client: int = 8, limits: Limits | None = None) -> None:
        self.metrics = metrics
        self.queue_size = queue_size
        self.max_streams = max_streams
        self.max_per_client = max_per_client
        self.per_client: collections.Counter[str] = collections.Counter()
        self.state = LiveState(signals=collections.deque(maxlen=recent), swarm=collections.deque(maxlen=recent))
        self.streams: set[Stream] = set()
        self.views = Views(metrics, limits)
        self.bus: Bus | None = None  # where a refused message is reported (start)
        self._subs: list[Any] = []

    async def start(self, bus: Bus) -> None:
        self.bus = bus
        for topic, subjects in TOPICS.items():
            for subject in subjects:
                self._subs.append(await bus.client.subscribe(subject, cb=self._handler(topic)))
        await flush(bus.client)  # the server has the subscriptions: nothing published after is missed
        await self.seed(bus)

    async def seed(self, bus: Bus, timeout: float = 2.0) -> None:
        """The latest Sentiment of each symbol from the sentiment agent's KV bucket (key: the
        symbol), so that the views have it before the next one is published; one
        heard live meanwhile, being newer, wins. Best effort: a bucket that cannot be read
        leaves the view to the live messages."""
        try:
            async for stored in read_stream(bus.client, KV_SENTIMENT_STREAM, S.kv_sentiment_subject(">"), timeout=timeout):
                if stored.data:
                    self.views.seed("sentiment", S.sentiment(stored.subject.removeprefix(KV_SENTIMENT_PREFIX)),
                                    stored.data)
        except Exception as e:  # noqa: BLE001 (a missing bucket, a timeout, no permission: live only)
            log.warning("no sentiment read from KV (%r): the view starts from the live messages", e)

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):  # the connection may be closing already
                await sub.unsubscribe()
        self._subs.clear()

    def _handler(self, topic: str):  # noqa: ANN202
        async def on_message(msg: Msg) -> None:
            self.metrics.bus_messages.labels(topic).inc()
            refused = self.take(topic, msg.subject, msg.data)
            if refused is not None and self.bus is not None:
                await self.bus.report_error(msg.subject, refused, msg.data)

        return on_message

    def take(self, topic: str, subject: str, data: bytes) -> str | None:
        """One bus message: kept, and streamed (as checked, for the views' topics); or, naming a
        new subject, symbol or venue past its cap (or too big to keep), neither: why, for
        errors.gateway."""
        refused = self.remember(topic, subject, data)
        if refused is not None:
            return refused
        events = self.views.take(topic, subject, data)
        if events is None:
            self.fan_out(topic, subject, data)
        for event_topic, name, payload in events or ():
            self.fan_out(event_topic, subject, payload, name)
        return None

    def remember(self, topic: str, subject: str, data: bytes) -> str | None:
        """Keep the latest state `data` says; why not when its key is new and its cache full, or a
        tick or verdict is too big to keep (made-up symbols or venues, or padded messages, must not
        grow the gateway without end)."""
        s = self.state
        last = subject.rsplit(".", 1)[-1]
        if topic == "ticks":
            ticks = s.ticks
            if len(data) > caps.MAX_KEPT_MESSAGE_BYTES:
                return caps.oversized(data, "tick")
            if subject not in ticks and len(ticks) >= caps.MAX_MARKET_SYMBOLS:
                return caps.refusal(ticks, subject, "MAX_MARKET_SYMBOLS", "subject")
            ticks[subject] = data
        elif topic == "feeds":
            if caps.full(s.feeds, last, "MAX_VENUES"):
                return caps.refusal(s.feeds, last, "MAX_VENUES", "venue")
            s.feeds[last] = data
        elif topic in ("signals", "swarm"):
            # Kept as received and parsed on every read: checked whole first, so a stolen agent
            # credential cannot make the gateway hold (and parse) what is not a real message.
            model = Signal if topic == "signals" else Consensus
            if len(data) > caps.MAX_AGENT_MESSAGE_BYTES:
                return (f"{model.__name__} of {len(data)} bytes refused: more than an agent message kept "
                        f"may be (MAX_AGENT_MESSAGE_BYTES {caps.MAX_AGENT_MESSAGE_BYTES})")
            try:
                model.model_validate_json(data)
            except ValidationError as e:
                if topic == "swarm":
                    return None  # not kept; the swarm view counts and drops it (views.py)
                return f"not a {model.__name__}: {validation_summary(e)}"
            (s.signals if topic == "signals" else s.swarm).append(data)
        elif topic == "orders":
            return _foreign_order(subject, data)
        elif subject == S.ACCOUNT:
            s.account = data
        elif subject == S.RISK_EVENTS:
            s.kill_switch = data
        elif subject.startswith(VERDICT_PREFIX):
            if len(data) > caps.MAX_KEPT_MESSAGE_BYTES:
                return caps.oversized(data, "verdict")
            if caps.full(s.verdicts, last, "MAX_MARKET_SYMBOLS"):
                return caps.refusal(s.verdicts, last, "MAX_MARKET_SYMBOLS", "symbol")
            s.verdicts[last] = data
        elif subject.startswith(VENUE_STATUS_PREFIX):
            if caps.full(s.venue_status, last, "MAX_VENUES"):
                return caps.refusal(s.venue_status, last, "MAX_VENUES", "venue")
            s.venue_status[last] = (data, time.time_ns())
        elif subject.startswith(RECON_PREFIX):
            if caps.full(s.reconciliations, last, "MAX_VENUES"):
                return caps.refusal(s.reconciliations, last, "MAX_VENUES", "venue")
            s.reconciliations[last] = (data, time.time_ns())
        return None

    def fan_out(self, topic: str, subject: str, data: bytes, name: str | None = None) -> None:
        """`data` to every stream that wants `topic` (and the subject's symbol), as an event
        named `name`, by default the subject's message type."""
        if not self.streams:
            return
        if name is None:
            model = model_for(subject)
            name = model.__name__ if model else "Message"
        if len(data) > caps.MAX_AGENT_MESSAGE_BYTES:
            # Orders are heard on plain subscriptions, where ORDERS' own size limit does not apply.
            self.metrics.refused.labels("too_big_to_stream").inc()
            return
        symbol = _symbol_of(topic, subject)
        body = b'{"subject":' + json.dumps(subject).encode() + b',"message":' + _one_line(data) + b"}"
        event = event_bytes(name, body)
        for stream in self.streams:
            if topic not in stream.topics or (stream.symbols is not None and symbol is not None
                                              and symbol not in stream.symbols):
                continue
            # Latest wins: drop the oldest for this slow client, past its count or its bytes.
            while stream.queue.full() or (stream.queued_bytes + len(event) > caps.MAX_STREAM_QUEUE_BYTES
                                          and not stream.queue.empty()):
                stream.queued_bytes -= len(stream.queue.get_nowait())
                stream.dropped += 1
                self.metrics.stream_dropped.inc()
            stream.queue.put_nowait(event)
            stream.queued_bytes += len(event)
            self.metrics.stream_events.labels(topic).inc()

    def open(self, topics: set[str], symbols: set[str] | None, client: str = "") -> Stream:
        """A new stream for `client` (its address); ApiError when `max_per_client` of its
        own or `max_streams` in all are open already."""
        if self.per_client[client] >= self.max_per_client:
            self.metrics.refused.labels("too_many_client_streams").inc()
            raise ApiError("too_many_client_streams", f"{self.max_per_client} live streams are open from {client} "
                                                      "already ([gateway] max_streams_per_client)")
        if len(self.streams) >= self.max_streams:
            self.metrics.refused.labels("too_many_streams").inc()
            raise ApiError("too_many_streams", f"{self.max_streams} live streams are open already "
                                               "([gateway] max_streams)")
        stream = Stream(topics, symbols, asyncio.Queue(self.queue_size), client)
        self.streams.add(stream)
        self.per_client[client] += 1
        self.metrics.stream_clients.set(len(self.streams))
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self.streams:
            self.streams.discard(stream)
            self.per_client[stream.client] -= 1
            if not self.per_client[stream.client]:
                del self.per_client[stream.client]
        self.metrics.stream_clients.set(len(self.streams))

    async def events(self, stream: Stream, keepalive_s: float) -> AsyncIterator[bytes]:
        """The stream's events as SSE bytes, a comment every `keepalive_s` when idle
        (proxies close silent connections); closes the stream when the client goes."""
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(stream.queue.get(), keepalive_s)
                    stream.queued_bytes -= len(event)
                    yield event
                except asyncio.TimeoutError:
                    yield b": keepalive\n\n"
        finally:
            self.close(stream)

    def snapshot(self) -> dict[str, Any]:
        """The latest state as JSON (for /api/state and the dashboard's first paint)."""
        s = self.state
        return {
            "account": _parse(s.account),
            "kill_switch": _parse(s.kill_switch),
            "verdicts": {k: _parse(v) for k, v in sorted(s.verdicts.items())},
            "feeds": {k: _parse(v) for k, v in sorted(s.feeds.items())},
            "ticks": {k.rsplit(".", 1)[-1]: _parse(v) for k, v in sorted(s.ticks.items())},
        }

    def venues(self, now_ns: int) -> dict[str, dict[str, Any]]:
        """Each live venue heard from: its latest LiveVenueStatus (execution) and Reconciliation
        (risk), and how many seconds ago each arrived (execution re-sends every
        reconcile_interval_ms: an old one means execution or the venue went quiet)."""
        s = self.state
        found: dict[str, dict[str, Any]] = {}
        for venue in sorted(set(s.venue_status) | set(s.reconciliations)):
            entry: dict[str, Any] = {}
            for key, source in (("status", s.venue_status), ("reconciliation", s.reconciliations)):
                data, received = source.get(venue, (None, None))
                entry[key] = _parse(data)
                entry[f"{key}_age_s"] = None if received is None else round((now_ns - received) / 1e9, 3)
            found[venue] = entry
        return found

    def recent(self, which: str, limit: int) -> list[Any]:
        """The last `limit` signals or swarm consensus messages, oldest first."""
        items = list(self.state.signals if which == "signals" else self.state.swarm)[-limit:]
        return [m for m in map(_parse, items) if m is not None]


def _foreign_order(subject: str, data: bytes) -> str | None:
    """Why an order or cancel heard on `orders.<kind>.<agent>.<symbol>` is not relayed: it names
    another agent or symbol than its subject (execution refuses it; a client would show it as
    the order whose id it borrows). None: relay it."""
    try:
        claimed = json.loads(data)
    except ValueError:
        return None  # not JSON: relayed as received, no order row to forge
    parts = subject.split(".")
    if not isinstance(claimed, dict) or len(parts) != 4:
        return None
    said = (claimed.get("agent"), claimed.get("symbol"))
    if said != (parts[2], parts[3]):
        return f"an order naming agent {said[0]!r} and symbol {said[1]!r} on {subject}: not relayed"
    return None


def _parse(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None
