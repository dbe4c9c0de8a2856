"""Bus wiring of the trading agent.

Closed bars (`md.bar.<bar_interval>.<venue>.<symbol>`) and price alerts (`md.alert.<symbol>`)
come through the `trading-agent` queue group: the server hands each one to exactly one
replica, which decides it (one Signal on `agent.signal.trading.<symbol>` per event, the
order into ORDERS when there is one). The subscription callback only queues the event;
`workers` tasks decide, so a slow LLM never holds up the bar path, and hand each order's
wait for the stream's ack to a task of its own (`_submit`). Context comes from
`context.ContextSource` (history, KV, live state), so any replica can decide any event
and one can die without the others missing anything after the server notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pydantic import ValidationError

from services.contract import subjects as S
from services.common.bus import ApiError, Bus, OrderRefused, flush
from services.common.config import load, section
from services.common.llm import LLMConfig, build_provider
from services.common.metrics import serve_metrics
from services.contract.models import Action, Bar, Consensus, PriceAlert, Signal, SwarmAskRequest, encode, now_ns

from . import metrics
from . import pipeline
from .agent import AGENT, Choice, Context, Event, Proposal, plan
from .config import TradingConfig
from .context import ContextSource
from .decide import Decider, LLMDecider, RuleDecider
from .registry import Found, build, choice_for, discover
from .strategy import make_strategy

SERVICE = "trading-agent"
ORDERS_IN_FLIGHT = 256  # decisions whose orders await the stream's ack at once (TradingService._submit)
log = logging.getLogger(__name__)


class Deciders:
    """Each symbol's decider: `[trading_agent.symbols."<symbol>"]`, else the global one."""

    def __init__(self, default: Decider, per_symbol: dict[str, Decider] | None = None) -> None:
        self.default = default
        self.per_symbol = {k.upper(): d for k, d in (per_symbol or {}).items()}
        names = sorted({default.name, *(d.name for d in self.per_symbol.values())})
        self.name = names[0] if len(names) == 1 else "per-symbol " + ", ".join(names)

    def for_symbol(self, symbol: str) -> Decider:
        return self.per_symbol.get(symbol.upper(), self.default)


def _decider(cfg: TradingConfig, config: dict[str, Any], registry: dict[str, Found], symbol: str | None) -> Decider:
    name, params, where = choice_for(cfg, symbol)
    if name != "llm":
        return RuleDecider(build(registry, cfg, name, params, where), cfg.plugin_timeout_ms / 1000, cfg.workers,
                           cfg.shorts)
    llm = section(config, "llm", LLMConfig)
    fallback = make_strategy(cfg.llm_fallback, cfg)
    if llm.provider == "offline":
        log.info("strategy llm with [llm] provider offline: the %s strategy decides", fallback.name)
        return RuleDecider(fallback, cfg.plugin_timeout_ms / 1000, cfg.workers)
    return LLMDecider(build_provider(llm), fallback, cfg)


def make_deciders(cfg: TradingConfig, config: dict[str, Any]) -> Deciders:
    """The global decider and one per `[trading_agent.symbols.*]` table, all built (and
    their params checked) now: a bad one is a StrategyLoadError (a ValueError) at start."""
    registry = discover(cfg.strategies_dir)
    default = _decider(cfg, config, registry, None)
    return Deciders(default, {symbol: _decider(cfg, config, registry, symbol) for symbol in cfg.symbols})


def make_decider(cfg: TradingConfig, config: dict[str, Any], symbol: str | None = None) -> Decider:
    """The decider of `symbol` (None: the global strategy)."""
    deciders = make_deciders(cfg, config)
    return deciders.default if symbol is None else deciders.for_symbol(symbol)


def bar_event(bar: Bar) -> Event:
    summary = (f"{bar.interval} bar closed: open {bar.open}, high {bar.high}, low {bar.low}, close {bar.close}, "
               f"volume {bar.volume}")
    return Event("bar", bar.symbol, bar.venue, bar.close, bar.end_ts, summary)


def alert_event(alert: PriceAlert) -> Event:
    summary = (f"price alert: {alert.direction} {alert.change_pct:+.3f}% within {alert.window_s:g}s "
               f"({alert.from_price} -> {alert.price}; threshold {alert.threshold_pct:g}%)")
    return Event("alert", alert.symbol, alert.venue, alert.price, alert.ts, summary)


def event_subject(event: Event, bar_interval: str) -> str:
    """The subject the event came in on (md.bar.<interval>.<venue>.<symbol> / md.alert.<symbol>)."""
    if event.kind == "bar":
        return S.bar(bar_interval, event.venue, event.symbol)
    return S.alert(event.symbol)


async def submit(bus: Bus, proposal: Proposal, timeout: float) -> bool:
    """The order into ORDERS (if any; a flip's opening order after its close, and only if
    the close was acknowledged), then the Signal saying why (and whether the order was
    acknowledged). A missing ack is reported on errors.trading-agent, never raised."""
    signal, ok = proposal.signal, True
    for order in proposal.orders:  # a flip: the close, then the opening order (stream order)
        if not ok:
            break
        subject = S.orders_submit(order.agent, order.symbol)  # the agent token our user may publish
        try:
            ack = await bus.publish_order(subject, order, timeout=timeout, fresh=True)
        except Exception as e:
            ok = False
            metrics.ORDER_FAILURES.inc()
            log.error("order %s not acknowledged: %r", order.client_order_id, e)
            why = f"order refused: {e.reason}" if isinstance(e, OrderRefused) else f"order not acknowledged: {e!r}"
            await bus.report_error(subject, why, encode(order))
            signal = signal.model_copy(update={"reasoning": f"{signal.reasoning}; NOT acknowledged: {e!r}"})
        else:
            metrics.labelled(metrics.ORDERS, order.side.value).inc()
            # DEBUG: a line per order costs more than the rest of a rule's decision (the
            # orders are in ORDERS, counted in moonbus_trading_orders_total, each in its Signal)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("order %s %s %s %s (stream seq %s%s)", order.client_order_id, order.side.value,
                          order.quantity, order.symbol, ack.seq, ", duplicate" if ack.duplicate else "")
    await bus.publish(S.signal(AGENT, signal.symbol), signal)
    return ok


class TradingService:
    def __init__(self, bus: Bus, cfg: TradingConfig, decider: Decider | Deciders) -> None:
        self.bus = bus
        self.cfg = cfg
        self.deciders = decider if isinstance(decider, Deciders) else Deciders(decider)
        self.decider = self.deciders.default
        self.context = ContextSource(bus, cfg)
        self.queue: asyncio.Queue[tuple[Event, Bar | None, float]] = asyncio.Queue(cfg.max_pending)
        self._workers: list[asyncio.Task[None]] = []
        # Orders awaiting the stream's ack, each in its own task: a worker decides the next
        # event meanwhile. Bounded: a stalled stream holds the workers (and so the queue),
        # and a worker deciding a backlog without yielding lets its orders out at least
        # every ORDERS_IN_FLIGHT decisions (sending them together costs less than one by one).
        self._submitting: set[asyncio.Task[None]] = set()
        self._submit_slots = asyncio.Semaphore(ORDERS_IN_FLIGHT)
        self._subs: list[Any] = []
        self._asking: dict[str, asyncio.Task[tuple[Consensus | None, str]]] = {}  # agent.api.swarm.ask in flight

    async def start(self) -> None:
        await self.context.subscribe()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.cfg.workers)]

        async def on_bar(bar: Bar, msg: Any) -> None:
            self.context.bars.adopt(bar, msg.data)  # built once for this replica's window too
            await self.enqueue(bar_event(bar), bar)

        async def on_alert(alert: PriceAlert, _msg: Any) -> None:
            await self.enqueue(alert_event(alert), None)

        self._subs.append(await self.bus.subscribe(S.bar(self.cfg.bar_interval, "*", "*"), Bar, on_bar, queue=SERVICE))
        if self.cfg.on_alerts:
            self._subs.append(await self.bus.subscribe(S.alert("*"), PriceAlert, on_alert, queue=SERVICE))
        await flush(self.bus.client)  # started = the server has them: no bar after it goes undecided

    async def enqueue(self, event: Event, bar: Bar | None) -> None:
        metrics.labelled(metrics.EVENTS, event.kind).inc()
        try:
            self.queue.put_nowait((event, bar, time.perf_counter()))
        except asyncio.QueueFull:  # still decided, visibly: HOLD without a strategy
            metrics.OVERLOADED.inc()
            await self.hold(event, "overloaded", f"{self.cfg.max_pending} decisions pending, {event.kind} "
                                                 "not evaluated")

    async def hold(self, event: Event, model: str, why: str) -> None:
        """The Signal of an event no strategy could decide: HOLD, no order, and why."""
        metrics.labelled(metrics.DECISIONS, "HOLD", model, "false").inc()
        signal = Signal(agent=AGENT, symbol=event.symbol, action=Action.HOLD, confidence=0.0,
                        reasoning=f"{why}; no order", model=model, origin_ts=event.origin_ts, ts=now_ns())
        await self.bus.publish(S.signal(AGENT, event.symbol), signal)

    async def _work(self) -> None:
        while True:
            event, bar, received = await self.queue.get()
            try:
                await self.decide(event, bar, received)
            except Exception as e:  # one bad decision must not stop the worker
                log.exception("decision for %s %s failed", event.kind, event.symbol)
                subject = event_subject(event, self.cfg.bar_interval)
                with contextlib.suppress(Exception):  # the bus itself may be what failed
                    await self.bus.report_error(subject, f"decision failed: {e!r}", b"")
                    await self.hold(event, "failed", f"decision failed: {e!r}")
            finally:
                self.queue.task_done()

    async def decide(self, event: Event, bar: Bar | None, received: float) -> None:
        d = self.deciders.for_symbol(event.symbol)
        p = self.cfg.pipeline
        ctx = await self.context.gather(event, bar, d.bars_needed, d.uses_sentiment or p.sentiment_weight > 0)
        choice = await d.decide(ctx)
        if choice.failure is not None:  # the plugin abstained: visibly, and the agent goes on
            metrics.PLUGIN_FAILURES.labels(d.name, choice.failure).inc()
            log.warning("%s %s: %s", event.kind, event.symbol, choice.reasoning)
            with contextlib.suppress(Exception):
                await self.bus.report_error(event_subject(event, self.cfg.bar_interval),
                                            f"strategy {d.name}: {choice.reasoning}", b"")
        inputs = None
        if p.enabled:
            choice, inputs = await self.weigh(choice, ctx)
        proposal = plan(choice, ctx, self.cfg, now_ns(), inputs=inputs)
        await self._submit_slots.acquire()
        task = asyncio.create_task(self._submit(event, proposal, d.name, received))
        self._submitting.add(task)
        task.add_done_callback(self._submitted)

    async def _submit(self, event: Event, proposal: Proposal, model: str, received: float) -> None:
        """A decision's orders and Signal (`submit`), off the worker: the stream's ack takes
        a round trip (~2 ms at 1,000 orders a second), which bounded the workers to a few
        thousand decisions a second while their CPU was ~60 us each."""
        try:
            await submit(self.bus, proposal, self.cfg.publish_timeout_s)
        except Exception as e:  # the Signal's publish: the bus itself failed (no HOLD: an order may be stored)
            log.error("signal for %s %s not sent: %r", event.kind, event.symbol, e)
            await self.bus.report_error(event_subject(event, self.cfg.bar_interval), f"signal not sent: {e!r}", b"")
            return
        s = proposal.signal
        metrics.labelled(metrics.DECISIONS, s.action.value, model, "true" if s.fallback else "false").inc()
        if s.fallback:
            metrics.labelled(metrics.FALLBACKS, model).inc()
        metrics.labelled(metrics.DECISION_SECONDS, model).observe(time.perf_counter() - received)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s: %s (%s)", event.kind, event.symbol, s.action.value, s.reasoning)

    def _submitted(self, task: asyncio.Task[None]) -> None:
        self._submitting.discard(task)
        self._submit_slots.release()

    async def weigh(self, choice: Choice, ctx: Context) -> tuple[Choice, list[Any]]:
        """The decision pipeline ([trading_agent.pipeline], pipeline.py): the choice weighed
        with the swarm's latest consensus (asked for when none is fresh and ask_swarm is on)
        and the sentiment in the context."""
        p, symbol = self.cfg.pipeline, ctx.event.symbol
        position = ctx.verdict.position if ctx.verdict is not None else None
        consensus = self.context.consensus.get(symbol)
        note = ""
        shorts = self.cfg.shorts(symbol)
        if (p.ask_swarm and pipeline.wants_swarm(choice, position, p, shorts)
                and not pipeline.fresh_consensus(consensus, p, now_ns())):
            # one ask per symbol at a time (each costs the swarm's LLM calls): decisions meanwhile share it
            task = self._asking.get(symbol)
            if task is None:
                task = self._asking[symbol] = asyncio.create_task(self.ask_swarm(symbol, consensus, choice.action))
                task.add_done_callback(lambda _t: self._asking.pop(symbol, None))
            consensus, note = await asyncio.shield(task)
        return pipeline.apply(choice, position, consensus, ctx.sentiment, p, now_ns(), note, shorts)

    async def ask_swarm(self, symbol: str, known: Consensus | None,
                        action: Action = Action.BUY) -> tuple[Consensus | None, str]:
        """The swarm's consensus asked on agent.api.swarm.ask within ask_timeout_s; no
        answer: the consensus known before (stale, so ignored) and why."""
        p = self.cfg.pipeline
        question = (f"Should the trading agent SELL {symbol} now (open or add to a short)?"
                    if action is Action.SELL else f"Should the trading agent BUY {symbol} now (open or add to a long)?")
        try:
            answer = await self.bus.call(S.SWARM_ASK_API, SwarmAskRequest(symbol=symbol, question=question),
                                         p.ask_timeout_s)
        except (ApiError, ValidationError) as e:
            metrics.SWARM_ASKS.labels("no_answer").inc()
            log.warning("swarm ask for %s: no answer (%s)", symbol, e)
            return known, f"asked, no answer within {p.ask_timeout_s:g} s: {e}"
        if answer.symbol != symbol:
            metrics.SWARM_ASKS.labels("no_answer").inc()
            return known, f"asked, answer about {answer.symbol}"
        metrics.SWARM_ASKS.labels("answered").inc()
        await self.context.on_consensus(answer)
        return answer, ""

    async def stop(self, timeout: float) -> None:
        """Stop taking events, decide what is queued and send its orders (within `timeout`),
        stop the workers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for sub in self._subs:
            # Drained, not unsubscribed: the events the server already gave this replica (its
            # share of the queue group) are decided; unsubscribe() discarded them, and no other
            # replica gets them again.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.drain(), max(0.0, deadline - loop.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), max(0.0, deadline - loop.time()))
        if self._submitting:  # the decided orders' acks and Signals
            await asyncio.wait(self._submitting, timeout=max(0.0, deadline - loop.time()))
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None) -> None:
    config = load() if config is None else config
    cfg = section(config, "trading_agent", TradingConfig)
    decider = make_deciders(cfg, config)
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    service = TradingService(bus, cfg, decider)
    try:
        serve_metrics(cfg.metrics_port)
        await service.start()
        await bus.serve(f"trading agent ({decider.name} on {cfg.bar_interval} bars"
                        f"{' and alerts' if cfg.on_alerts else ''})", {})
        log.info("trading agent ready: %s", cfg.model_dump(mode="json"))
        await stop.wait()
        await service.stop(cfg.publish_timeout_s + cfg.llm_timeout_s)
    finally:
        await bus.close()
