"""Bus wiring of the swarm agent: serves `agent.api.swarm.ask` (queue group of the NATS
service API, so replicas share the load), asks by itself on every price alert
(`md.alert.<symbol>`, queue group `swarm-agent`: one replica per alert), and publishes
every Consensus on `agent.swarm.<symbol>`.

`agent.sentiment.>` is subscribed without a queue group: each replica needs the latest
sentiment of every symbol (of at most MAX_SYMBOLS symbols: services/common/caps.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from services.contract import subjects as S
from services.common.bus import Bus
from services.common.caps import admit_symbol
from services.common.config import load, section
from services.common.llm import LLMConfig, build_provider
from services.common.metrics import serve_metrics
from services.contract.models import (
    Bar,
    Consensus,
    HistoryRequest,
    PriceAlert,
    Sentiment,
    SwarmAskRequest,
    now_ns,
)

from . import metrics
from .config import SwarmConfig
from .consensus import decide, summarize
from .llm import LLMModel
from .model import Model, ask_models
from .offline import HistoryFn, LatestSentiment, MeanReversionModel, MomentumModel, SentimentModel

SERVICE = "swarm-agent"
log = logging.getLogger(__name__)


def build_models(cfg: SwarmConfig, history: HistoryFn, latest: LatestSentiment, llm: LLMConfig) -> list[Model]:
    """The configured models, in config order: offline names, or endpoint names of [llm]."""
    offline: dict[str, Callable[[], Model]] = {
        MomentumModel.name: lambda: MomentumModel(history, cfg.momentum_threshold_pct),
        MeanReversionModel.name: lambda: MeanReversionModel(history, cfg.meanrev_stretch_pct),
        SentimentModel.name: lambda: SentimentModel(latest, cfg.sentiment_threshold, cfg.sentiment_max_age_s),
    }
    unknown = [m for m in cfg.models if m not in offline and m not in llm.endpoints]
    if unknown:
        raise ValueError(f"unknown swarm model(s) {unknown}; known: offline {sorted(offline)}, "
                         f"[llm.endpoints] {sorted(llm.endpoints)}")
    return [offline[name]() if name in offline
            else LLMModel(build_provider(llm, endpoint=name), history, latest, cfg.llm_timeout_s)
            for name in cfg.models]


def alert_question(alert: PriceAlert) -> str:
    return (f"{alert.symbol} moved {alert.change_pct:+.3f}% ({alert.direction}) within {alert.window_s:g}s, "
            f"{alert.from_price} -> {alert.price}. BUY, SELL or HOLD {alert.symbol} now?")


class Swarm:
    def __init__(self, models: list[Model], cfg: SwarmConfig) -> None:
        self.models = models
        self.cfg = cfg

    def timeout_for(self, model: Model) -> float:
        # An LLM member keeps its own deadline (llm_timeout_s); this one only backs it up.
        return self.cfg.llm_timeout_s + 1.0 if isinstance(model, LLMModel) else self.cfg.timeout_s

    async def ask(self, request: SwarmAskRequest) -> Consensus:
        question = request.question or f"BUY, SELL or HOLD {request.symbol} now?"
        votes = await ask_models(self.models, request.symbol, question, [self.timeout_for(m) for m in self.models])
        outcome = decide(votes, self.cfg.method, self.cfg.quorum)
        for v in votes:
            metrics.VOTES.labels(v.model, v.action.value).inc()
            metrics.VOTE_SECONDS.labels(v.model).observe(v.latency_ms / 1000)
            metrics.COST.labels(v.model).inc(v.cost_usd)
        metrics.CONSENSUS.labels(outcome.action.value, self.cfg.method).inc()
        return Consensus(
            symbol=request.symbol,
            question=question,
            votes=votes,
            action=outcome.action,
            method=self.cfg.method,
            agreement=outcome.agreement,
            summary=summarize(votes, outcome, self.cfg.method),
            ts=now_ns(),
        )


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None) -> None:
    config = load() if config is None else config
    cfg = section(config, "swarm_agent", SwarmConfig)
    bus = bus or Bus(SERVICE)
    latest = LatestSentiment()

    async def history(symbol: str) -> list[Bar]:
        request = HistoryRequest(symbol=symbol, interval=cfg.history_interval, limit=cfg.history_limit)
        reply = await bus.call(S.MD_HISTORY_API, request, timeout=cfg.timeout_s)
        return reply.bars

    swarm = Swarm(build_models(cfg, history, latest, section(config, "llm", LLMConfig)), cfg)
    if bus.nc is None:
        await bus.connect()
    asking: dict[str, asyncio.Task[None]] = {}  # asks on alerts under way, by symbol

    async def ask(request: SwarmAskRequest, trigger: str = "request") -> Consensus:
        metrics.ASKS.labels(trigger).inc()
        consensus = await swarm.ask(request)
        await bus.publish(S.swarm(consensus.symbol), consensus)
        log.info("%s: %s", consensus.symbol, consensus.summary)
        return consensus

    async def on_sentiment(sentiment: Sentiment, msg: Any) -> None:
        if await admit_symbol(bus, latest, sentiment.symbol, msg.subject, msg.data):  # else: past MAX_SYMBOLS
            latest.update(sentiment)

    async def ask_on_alert(alert: PriceAlert) -> None:
        try:
            await ask(SwarmAskRequest(symbol=alert.symbol, question=alert_question(alert)), "alert")
        except Exception as e:
            log.exception("swarm on alert %s failed", alert.symbol)
            await bus.report_error(S.alert(alert.symbol), f"swarm failed: {e!r}", b"")

    async def on_alert(alert: PriceAlert, msg: Any) -> None:
        # In a task: the models may take seconds, the next alert must not wait for them. One
        # ask per symbol (its answer is coming) and at most max_alert_asks at once.
        symbol = alert.symbol
        if symbol in asking:
            metrics.ALERTS_SKIPPED.labels("in_flight").inc()
            return
        if len(asking) >= cfg.max_alert_asks:
            metrics.ALERTS_SKIPPED.labels("busy").inc()
            await bus.report_error(msg.subject, f"alert of {symbol} not asked about: {len(asking)} asks on alerts "
                                                f"under way (max_alert_asks {cfg.max_alert_asks})", msg.data)
            return
        task = asking[symbol] = asyncio.create_task(ask_on_alert(alert))
        task.add_done_callback(lambda _: asking.pop(symbol, None))

    try:
        serve_metrics(cfg.metrics_port)
        await bus.subscribe(S.ALL_SENTIMENT, Sentiment, on_sentiment)
        if cfg.on_alerts:
            await bus.subscribe(S.alert("*"), PriceAlert, on_alert, queue=SERVICE)
        await bus.serve(
            f"swarm of {len(swarm.models)} models, {cfg.method} consensus",
            {S.SWARM_ASK: (SwarmAskRequest, ask)},
            concurrency=cfg.max_concurrent_asks,
        )
        log.info("swarm agent ready: %s", [m.name for m in swarm.models])
        await stop.wait()
        if asking:
            await asyncio.wait(list(asking.values()), timeout=cfg.llm_timeout_s + 1.0)
    finally:
        await bus.close()
