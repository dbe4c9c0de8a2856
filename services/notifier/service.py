"""Bus wiring of the notifier (NATS user `notifier`: reads only, publishes only errors.notifier).

Subscribes only what some channel wants: `exec.report.>` (fills, rejections), `risk.events`
(kill switch), `risk.verdict.>` and `risk.account` (state changes only), `md.alert.>`,
`exec.venue.>` and `risk.recon.>` (venue disconnects, unknown orders, reconciliation changes),
`errors.>` (other services' errors, never its own; execution's about a live venue are `venues`). Each message becomes at most one Notice
(events.py), offered to every channel (channel.py), which filters, rate-limits and sends it.
The Tracker's last states are kept for at most MAX_MARKET_SYMBOLS symbols and MAX_VENUES venues
(services/common/caps.py): a message naming a new one beyond is refused on errors.notifier.
No queue group: run one notifier (two would send everything twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from nats.aio.msg import Msg
from pydantic import BaseModel

from services.common.bus import Bus
from services.common.caps import admit_symbol
from services.common.config import load, section
from services.common.metrics import serve_metrics
from services.contract import subjects as S
from services.contract.models import (
    AccountState,
    ErrorEvent,
    ExecutionReport,
    KillSwitchState,
    LiveVenueStatus,
    PriceAlert,
    Reconciliation,
    Verdict,
    encode,
    now_ns,
)

from .channel import Channel
from .config import NotifierConfig, channel_secret
from .events import Notice, Tracker, from_alert, from_error, from_kill_switch, from_report

SERVICE = "notifier"
OWN_ERRORS = S.errors(SERVICE)
DRAIN_S = 2.0  # on stop, time given to the queues to empty
log = logging.getLogger(__name__)


def quiet_http_logs() -> None:
    """httpx logs every request's URL at INFO (and httpcore more at DEBUG): a webhook URL is
    a secret, so neither may log below WARNING here, whatever MOONBUS_LOG_LEVEL says."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_channels(cfg: NotifierConfig, client: httpx.AsyncClient, bus: Bus,
                   environ: Mapping[str, str] | None = None) -> list[Channel]:
    channels = []
    for name, ch in cfg.channels.items():
        secret = channel_secret(name, ch, environ)

        async def on_failing(text: str, name: str = name) -> None:
            event = ErrorEvent(service=SERVICE, subject=f"notifier.channel.{name}", reason=text[:1000], ts=now_ns())
            await bus.client.publish(OWN_ERRORS, encode(event))

        channels.append(Channel(name, ch, secret, client, on_failing))
    return channels


async def main(stop: asyncio.Event, bus: Bus | None = None, config: dict[str, Any] | None = None,
               environ: Mapping[str, str] | None = None) -> None:
    config = load() if config is None else config
    cfg = section(config, "notifier", NotifierConfig)
    if not cfg.enabled:
        log.info("notifier off ([notifier] enabled = false): nothing to do")
        return
    quiet_http_logs()
    bus = bus or Bus(SERVICE)
    if bus.nc is None:
        await bus.connect()
    tasks: list[asyncio.Task[None]] = []
    client = httpx.AsyncClient(follow_redirects=False)
    try:
        channels = build_channels(cfg, client, bus, environ)
        serve_metrics(cfg.metrics_port)
        wanted = {kind for ch in channels for kind in ch.events}
        tracker = Tracker()

        def dispatch(notice: Notice | None) -> None:
            if notice is not None:
                for ch in channels:
                    ch.offer(notice)

        def handler(convert: Callable[[Any, str, dict[str, Any]], Notice | None],
                    kept: Callable[[Any], tuple[dict[str, Any], str, str, str]] | None = None
                    ) -> Callable[[Any, Msg], Any]:
            """`kept`: the Tracker's cache a message updates, its key, the cap's name, what the key is."""
            async def on_message(message: BaseModel, msg: Msg) -> None:
                if kept is not None:
                    cache, key, limit, what = kept(message)
                    if not await admit_symbol(bus, cache, key, msg.subject, msg.data, limit, what):
                        return  # a new symbol or venue past the cap: made-up ones must not grow the tracker
                dispatch(convert(message, msg.subject, json.loads(msg.data)))
            return on_message

        def by_symbol(v: Verdict) -> tuple[dict[str, Any], str, str, str]:
            return tracker.verdicts, v.symbol, "MAX_MARKET_SYMBOLS", "symbol"

        def by_venue(cache: dict[str, Any]) -> Callable[[Any], tuple[dict[str, Any], str, str, str]]:
            return lambda m: (cache, m.venue, "MAX_VENUES", "venue")

        async def on_error(event: ErrorEvent, msg: Msg) -> None:
            if msg.subject != OWN_ERRORS:  # its own errors are about its channels: no loop
                dispatch(from_error(event, msg.subject, json.loads(msg.data)))

        subscriptions: list[tuple[str, type[BaseModel], Callable[[Any, Msg], Any], set[str]]] = [
            (S.ALL_REPORTS, ExecutionReport, handler(from_report), {"fills", "rejections"}),
            (S.RISK_EVENTS, KillSwitchState, handler(from_kill_switch), {"kill_switch"}),
            (S.ALL_VERDICTS, Verdict, handler(tracker.verdict, by_symbol), {"breaches"}),
            (S.ACCOUNT, AccountState, handler(tracker.account_state), {"breaches"}),
            (S.ALL_ALERTS, PriceAlert, handler(from_alert), {"alerts"}),
            # (connected and unknown_orders are kept per venue together)
            (S.ALL_VENUE_STATUS, LiveVenueStatus, handler(tracker.venue_status, by_venue(tracker.connected)),
             {"venues"}),
            (S.ALL_RECONCILIATIONS, Reconciliation, handler(tracker.reconciliation, by_venue(tracker.recon)),
             {"venues"}),
            (S.ALL_ERRORS, ErrorEvent, on_error, {"errors", "venues"}),  # execution's venue trouble
        ]
        subjects = []
        for subject, model, on_message, kinds in subscriptions:
            if kinds & wanted:
                await bus.subscribe(subject, model, on_message)
                subjects.append(subject)
        tasks = [asyncio.create_task(ch.run(), name=f"notifier-{ch.name}") for ch in channels]
        await bus.serve("notifier: fills, rejections, breaches, kill switch, alerts -> webhooks", {})
        if channels:
            log.info("notifier ready: %s; subscribed %s", ", ".join(map(repr, channels)), ", ".join(subjects))
        else:
            log.warning("notifier enabled without channels ([notifier.channels.<name>]): nothing will be sent")
        await stop.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while any(not ch.queue.empty() for ch in channels) and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()
        await bus.close()
