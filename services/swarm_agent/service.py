"""Bus wiring of the swarm agent: serves `agent.api.swarm.ask` (queue group of the
NATS service API, so replicas share the load) and publishes every Consensus on
`agent.swarm.<symbol>`.

`agent.sentiment.>` is subscribed without a queue group: each replica needs the
latest sentiment of every symbol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.common.bus import Bus
from services.common.config import load, section
from services.common.models import (
    Bar,
    Consensus,
    HistoryReply,
    HistoryRequest,
    Sentiment,
    SwarmAskRequest,
    now_ns,
)

from .config import SwarmConfig
from .consensus import decide, summarize
from .model import Model, ask_models
from .offline import LatestSentiment, build_models

SERVICE = "swarm-agent"
log = logging.getLogger(__name__)


class Swarm:
    def __init__(self, models: list[Model], cfg: SwarmConfig) -> None:
        self.models = models
        self.cfg = cfg

    async def ask(self, request: SwarmAskRequest) -> Consensus:
        question = request.question or f"BUY, SELL or HOLD {request.symbol} now?"
        votes = await ask_models(self.models, request.symbol, question, self.cfg.timeout_s)
        outcome = decide(votes, self.cfg.method, self.cfg.quorum)
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
    cfg = section(load() if config is None else config, "swarm_agent", SwarmConfig)
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    latest = LatestSentiment()

    async def history(symbol: str) -> list[Bar]:
        request = HistoryRequest(symbol=symbol, interval=cfg.history_interval, limit=cfg.history_limit)
        reply = await bus.request("md.api.history", request, HistoryReply, timeout=cfg.timeout_s)
        return reply.bars

    swarm = Swarm(build_models(cfg, history, latest), cfg)

    async def on_sentiment(sentiment: Sentiment, _msg: Any) -> None:
        latest.update(sentiment)

    async def ask(request: SwarmAskRequest) -> Consensus:
        consensus = await swarm.ask(request)
        await bus.publish(f"agent.swarm.{consensus.symbol}", consensus)
        log.info("%s: %s", consensus.symbol, consensus.summary)
        return consensus

    try:
        await bus.subscribe("agent.sentiment.>", Sentiment, on_sentiment)
        await bus.serve(
            f"swarm of {len(swarm.models)} models, {cfg.method} consensus",
            {"agent.api.swarm.ask": (SwarmAskRequest, ask)},
        )
        log.info("swarm agent ready: %s", cfg.model_dump())
        await stop.wait()
    finally:
        await bus.close()
