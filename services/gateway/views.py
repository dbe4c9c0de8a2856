"""The gateway's views of the decisions' context and of what protects the positions, each
kept as the latest state and sent on the live stream:

- swarm: the latest Consensus per symbol (`agent.swarm.<symbol>`): each model's vote, the
  consensus, its age;
- sentiment: the latest Sentiment per symbol (`agent.sentiment.<symbol>`);
- arbs: the latest ArbOpportunity per symbol and venue pair (`md.arb.<symbol>`); one older
  than [gateway] arb_stale_s is marked stale, one older than arb_keep_s is dropped (market
  data re-sends an opportunity that lasts at least every [market_data.arb] min_interval_ms);
- protections: the latest ProtectionState per parent order (`exec.protection.<symbol>`,
  execution: the stop loss / take profit / trailing stop armed for a position); CLOSED and
  CANCELLED ones are dropped protection_keep_s after they arrive;
- algos: the running TWAP / ICEBERG parent orders, from the `algo` object of their
  ExecutionReports (`exec.report.<symbol>`), with the latest report of their SLICE children;
  a parent is dropped once its report is final (FILLED, CANCELLED, ...).

Every message is checked before it is kept or streamed: a malformed one (not JSON, a field
missing or of the wrong type or range, money not a decimal string, a symbol that is not the
subject's) is dropped and counted by view and reason (`moonbus_gateway_view_dropped_total`,
and `dropped` in each /api answer); it never stops the gateway. Every message is checked by
the contract's own model (ProtectionState; ExecutionReport with its `algo`, `parent_order_id`
and `child_kind`). What is kept and shown is the checked message (money as decimal strings), not the raw one.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from services.contract import subjects as S
from services.contract.models import (
    ArbOpportunity,
    ChildKind,
    Consensus,
    ExecutionReport,
    OrderStatus,
    ProtectionState,
    ProtectionStatus,
    Sentiment,
    Tolerant,
)

from .metrics import GatewayMetrics

FINAL = frozenset({OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
                   OrderStatus.FAILED})
ENDED = frozenset({ProtectionStatus.CLOSED, ProtectionStatus.CANCELLED})


@dataclass
class Kept:
    """One checked message as shown (JSON-ready) and when it arrived (ns)."""

    shown: dict[str, Any]
    ts: int  # the message's own time
    received: int


@dataclass
class ViewState:
    swarm: dict[str, Kept] = field(default_factory=dict)  # symbol -> Consensus
    sentiment: dict[str, Kept] = field(default_factory=dict)  # symbol -> Sentiment
    arbs: dict[tuple[str, str, str], Kept] = field(default_factory=dict)  # (symbol, buy, sell) -> ArbOpportunity
    protections: dict[str, Kept] = field(default_factory=dict)  # parent_order_id -> ProtectionState
    algos: dict[str, Kept] = field(default_factory=dict)  # parent client_order_id -> parent report + algo
    dropped: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


@dataclass(frozen=True)
class Limits:
    arb_stale_s: float = 5.0
    arb_keep_s: float = 60.0
    protection_keep_s: float = 60.0
    max_entries: int = 1000  # per view: past it the oldest entry goes


# (stream topic, SSE event name, the checked message as JSON bytes)
Event = tuple[str, str, bytes]


def _shown(model: BaseModel) -> dict[str, Any]:
    return json.loads(model.model_dump_json(exclude_none=True))


def _encode(shown: dict[str, Any]) -> bytes:
    return json.dumps(shown, separators=(",", ":")).encode()


def _age_s(now: int, ts: int) -> float:
    return round(max(0, now - ts) / 1e9, 3)


class Views:
    def __init__(self, metrics: GatewayMetrics, limits: Limits | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.metrics = metrics
        self.limits = limits or Limits()
        self.clock = clock or time.time_ns
        self.state = ViewState()

    # ------------------------------------------------------------ intake

    def drop(self, view: str, reason: str) -> None:
        self.state.dropped[(view, reason)] += 1
        self.metrics.view_dropped.labels(view, reason).inc()

    def _check(self, view: str, model: type[Tolerant], data: bytes | dict[str, Any]) -> Any:
        """`data` as `model` (a part of a message, as a dict, is checked as its JSON: the
        contract's models are strict, read from the wire's JSON), or None, counted."""
        try:
            return model.model_validate_json(json.dumps(data) if isinstance(data, dict) else data)
        except ValidationError as e:
            kinds = {err["type"] for err in e.errors()}
            self.drop(view, "not_json" if "json_invalid" in kinds else "invalid")
            return None

    def take(self, topic: str, subject: str, data: bytes) -> list[Event] | None:
        """Keep what `data` (on `subject`, of stream topic `topic`) says; the events to stream
        instead of the raw message, or None: not a view topic, stream the message as it is."""
        if topic == "swarm":
            return self._latest_per_symbol("swarm", Consensus, self.state.swarm, subject, data)
        if topic == "sentiment":
            return self._latest_per_symbol("sentiment", Sentiment, self.state.sentiment, subject, data)
        if topic == "arbs":
            return self._arb(subject, data)
        if topic == "protections":
            return self._protection(subject, data)
        if topic == "reports":
            return self._report(subject, data)
        return None

    def seed(self, view: str, subject: str, data: bytes) -> None:
        """A stored message (the KV bucket's latest Sentiment) read at start: kept unless a
        newer one was heard live already (not a drop); a malformed one is counted."""
        kept = self.state.sentiment if view == "sentiment" else self.state.swarm
        model = Sentiment if view == "sentiment" else Consensus
        self._latest_per_symbol(view, model, kept, subject, data, stored=True)

    def _latest_per_symbol(self, view: str, model: type[Consensus] | type[Sentiment], kept: dict[str, Kept],
                           subject: str, data: bytes, stored: bool = False) -> list[Event]:
        message = self._check(view, model, data)
        if message is None:
            return []
        if message.symbol != S.last_token(subject):
            self.drop(view, "subject_mismatch")
            return []
        old = kept.get(message.symbol)
        if old is not None and message.ts < old.ts:
            if not stored:
                self.drop(view, "older_than_kept")
            return []
        shown = _shown(message)
        kept[message.symbol] = Kept(shown, message.ts, self.clock())
        self._cap(kept)
        return [(view, model.__name__, _encode(shown))]

    def _arb(self, subject: str, data: bytes) -> list[Event]:
        arb = self._check("arbs", ArbOpportunity, data)
        if arb is None:
            return []
        if arb.symbol != S.last_token(subject):
            self.drop("arbs", "subject_mismatch")
            return []
        key = (arb.symbol, arb.buy_venue, arb.sell_venue)
        old = self.state.arbs.get(key)
        if old is not None and arb.ts < old.ts:
            self.drop("arbs", "older_than_kept")
            return []
        shown = _shown(arb)
        self.state.arbs[key] = Kept(shown, arb.ts, self.clock())
        self._cap(self.state.arbs)
        return [("arbs", "ArbOpportunity", _encode(shown))]

    def _protection(self, subject: str, data: bytes) -> list[Event]:
        p = self._check("protections", ProtectionState, data)
        if p is None:
            return []
        if p.symbol != S.last_token(subject):
            self.drop("protections", "subject_mismatch")
            return []
        old = self.state.protections.get(p.parent_order_id)
        if old is not None and p.ts < old.ts:
            self.drop("protections", "older_than_kept")
            return []
        shown = _shown(p)
        self.state.protections[p.parent_order_id] = Kept(shown, p.ts, self.clock())
        self._cap(self.state.protections)
        return [("protections", "ProtectionState", _encode(shown))]

    def _report(self, subject: str, data: bytes) -> list[Event]:
        """The report itself is streamed as it is (the orders table's, unchanged); a parent's
        or child's also updates the algos view, streamed as an `AlgoOrder` event."""
        events: list[Event] = [("reports", "ExecutionReport", data)]
        if b'"algo"' not in data and b'"parent_order_id"' not in data:
            return events  # the common case: no parse beyond the bytes search
        try:
            raw = json.loads(data)
        except ValueError:
            return events  # not JSON: the orders table's concern, not an algo
        if not isinstance(raw, dict):
            return events
        if raw.get("algo") is not None:
            shown = self._parent(subject, data)
        elif "parent_order_id" in raw:
            shown = self._child(data)
        else:
            shown = None
        if shown is not None:
            events.append(("algos", "AlgoOrder", _encode(shown)))
        return events

    def _parent(self, subject: str, data: bytes) -> dict[str, Any] | None:
        report = self._check("algos", ExecutionReport, data)
        if report is None:
            return None
        algo = report.algo
        if algo is None or algo.slices_filled > algo.slices_sent or (
                algo.slices_total is not None and algo.slices_sent > algo.slices_total):
            self.drop("algos", "invalid")
            return None
        if report.client_order_id is None or report.symbol is None or report.symbol != S.last_token(subject):
            self.drop("algos", "subject_mismatch")
            return None
        coid = report.client_order_id
        old = self.state.algos.get(coid)
        if old is not None and report.ts < old.ts:
            self.drop("algos", "older_than_kept")
            return None
        shown = {k: v for k, v in _shown(report).items() if k in (
            "client_order_id", "agent", "symbol", "venue", "side", "status", "reason", "quantity",
            "filled_quantity", "avg_fill_price", "ts")}
        shown["algo"] = _shown(algo)
        shown["running"] = report.status not in FINAL
        if old is not None and "last_child" in old.shown:
            shown["last_child"] = old.shown["last_child"]
        if shown["running"]:
            self.state.algos[coid] = Kept(shown, report.ts, self.clock())
            self._cap(self.state.algos)
        else:
            self.state.algos.pop(coid, None)  # finished: off the view
        return shown

    def _child(self, data: bytes) -> dict[str, Any] | None:
        report = self._check("algos", ExecutionReport, data)
        if report is None:
            return None
        if report.child_kind is not ChildKind.SLICE or report.parent_order_id is None:
            return None  # a protection's exit: not an algo's child
        parent = self.state.algos.get(report.parent_order_id)
        if parent is None:
            return None  # its parent finished, or was never heard: nothing to show it under
        if report.client_order_id is None:
            self.drop("algos", "invalid")
            return None
        parent.shown["last_child"] = {k: v for k, v in _shown(report).items() if k in (
            "client_order_id", "status", "reason", "quantity", "filled_quantity", "last_fill_price", "ts")}
        parent.received = self.clock()
        return parent.shown

    def _cap(self, kept: dict[Any, Kept]) -> None:
        while len(kept) > self.limits.max_entries:
            oldest = min(kept, key=lambda k: kept[k].received)
            del kept[oldest]

    # ------------------------------------------------------------ reads

    def prune(self, now: int) -> None:
        """Drop the arbitrage opportunities older than arb_keep_s and the ended protections
        heard more than protection_keep_s ago."""
        s, lim = self.state, self.limits
        for key in [k for k, v in s.arbs.items() if now - v.ts > lim.arb_keep_s * 1e9]:
            del s.arbs[key]
        for key in [k for k, v in s.protections.items()
                    if v.shown["state"] in ENDED and now - v.received > lim.protection_keep_s * 1e9]:
            del s.protections[key]

    def dropped(self, view: str) -> dict[str, int]:
        return {reason: n for (v, reason), n in sorted(self.state.dropped.items()) if v == view}

    def per_symbol(self, view: str, now: int) -> dict[str, dict[str, Any]]:
        """swarm or sentiment: symbol -> the latest message with its age in seconds."""
        kept = self.state.swarm if view == "swarm" else self.state.sentiment
        return {symbol: {**k.shown, "age_s": _age_s(now, k.ts)} for symbol, k in sorted(kept.items())}

    def arbs(self, now: int) -> list[dict[str, Any]]:
        """The fresh and the stale (marked) opportunities, best net spread first."""
        self.prune(now)
        found = [{**k.shown, "age_s": _age_s(now, k.ts), "stale": now - k.ts > self.limits.arb_stale_s * 1e9}
                 for k in self.state.arbs.values()]
        return sorted(found, key=lambda a: (a["stale"], -float(a["net_bps"]), a["symbol"]))

    def protections(self, now: int) -> list[dict[str, Any]]:
        """By symbol, then oldest first."""
        self.prune(now)
        found = [{**k.shown, "age_s": _age_s(now, k.ts)} for k in self.state.protections.values()]
        return sorted(found, key=lambda p: (p["symbol"], p["ts"], p["parent_order_id"]))

    def algos(self, now: int) -> list[dict[str, Any]]:
        """The running algorithms, oldest report first, each with the age of its latest report."""
        found = [{**k.shown, "age_s": _age_s(now, k.ts)} for k in self.state.algos.values()]
        return sorted(found, key=lambda a: (a["ts"], a["client_order_id"]))
