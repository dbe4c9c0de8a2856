"""The notifier (services/notifier): each webhook format exactly as sent, filters, the token
bucket and its suppression summary, the bounded queue, retries on 5xx and timeouts, 429
waits as each service asks, secrets kept out of logs, and the whole path through a real
nats-server: an ExecutionReport published as `execution` reaches a stand-in webhook.

The webhooks are local aiohttp servers on 127.0.0.1 (Discord, Slack, Telegram are outside
the machine); they record every request and answer what the test queued.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import ValidationError

from services.common import caps
from services.common.bus import flush
from services.contract.models import (
    AccountState,
    ErrorEvent,
    ExecutionReport,
    KillSwitchState,
    LiveVenueKind,
    LiveVenueStatus,
    OrderStatus,
    PriceAlert,
    Reconciliation,
    ReconAction,
    ReconDifference,
    ReconState,
    Side,
    Timings,
    TradingState,
    Verdict,
    VenueMode,
    encode,
)
from services.devstack.launcher import SERVICES, default_services
from services.notifier import service as notifier
from services.notifier.channel import Channel, TokenBucket
from services.notifier.config import ChannelConfig, NotifierConfig, channel_secret
from services.notifier.events import Notice, Tracker, from_alert, from_kill_switch, from_report

TS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
DISCORD_SECRET_PATH = "/api/webhooks/123456789/Zx9SeCrEtWeBhOoKtOkEn-abc"
TELEGRAM_TOKEN = "123456:AAEsEcReTbOtToKeN_xyz987"


# ---------------------------------------------------------------- a stand-in webhook


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class Hook:
    """Records every POST; answers from `answers` (status, body, headers, delay_s), else `default`."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    answers: collections.deque[tuple[int, Any, dict[str, str], float]] = field(default_factory=collections.deque)
    default: tuple[int, Any, dict[str, str], float] = (200, "ok", {}, 0.0)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    failing_prefix: str = "/broken/"  # always answered 500 "down"

    def answer(self, status: int, body: Any = "", headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        self.answers.append((status, body, headers or {}, delay))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode()
        self.seen.append(Seen(request.path, dict(request.headers), body, time.monotonic()))
        self.event.set()
        if request.path.startswith(self.failing_prefix):
            return web.Response(status=500, text="down")
        status, out, headers, delay = self.answers.popleft() if self.answers else self.default
        if delay:
            await asyncio.sleep(delay)
        if status == 204:
            return web.Response(status=204, headers=headers)
        text = out if isinstance(out, str) else json.dumps(out)
        return web.Response(status=status, text=text, headers=headers,
                            content_type="text/plain" if isinstance(out, str) else "application/json")

    async def wait(self, count: int, timeout: float = 10.0) -> list[Seen]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.seen) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"the webhook got {len(self.seen)} requests, expected {count}: "
                                     f"{[s.body for s in self.seen]}")
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except TimeoutError:
                pass
        return self.seen


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/{tail:.*}", h.handle)
    runner = web.AppRunner(app, access_log=None)  # the stand-in's own log would show the paths
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    h.url = f"http://127.0.0.1:{port}"
    yield h
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def channel_config(kind: str = "json", **kw: Any) -> ChannelConfig:
    base: dict[str, Any] = {"kind": kind, "backoff_s": 0.01, "backoff_max_s": 0.05}
    if kind == "telegram":
        base |= {"token_env": "TG_TOKEN", "chat_id": "-1001234"}
    else:
        base["url_env"] = "HOOK_URL"
    return ChannelConfig.model_validate(base | kw)


def make_channel(kind: str, hook: Hook, client: httpx.AsyncClient, failures: list[str] | None = None,
                 **kw: Any) -> Channel:
    cfg = channel_config(kind, **kw)
    if kind == "telegram":
        cfg = cfg.model_copy(update={"api_base": hook.url})
        secret = TELEGRAM_TOKEN
    else:
        secret = hook.url + DISCORD_SECRET_PATH

    async def on_failing(text: str) -> None:
        if failures is not None:
            failures.append(text)

    return Channel(f"test-{kind}", cfg, secret, client, on_failing)


def report(status: OrderStatus = OrderStatus.FILLED, **kw: Any) -> ExecutionReport:
    fields: dict[str, Any] = dict(
        client_order_id="ord-1", order_id="7", agent="trading", symbol="BTC-USD", venue="sim", side=Side.BUY,
        status=status, quantity=Decimal("0.5"), filled_quantity=Decimal("0.5"),
        last_fill_price=Decimal("100000.5"), last_fill_quantity=Decimal("0.5"),
        avg_fill_price=Decimal("100000.5"), fee=Decimal("5"), timings=Timings(), ts=TS)
    if status == OrderStatus.REJECTED:
        fields.update(filled_quantity=Decimal(0), last_fill_price=None, last_fill_quantity=None, avg_fill_price=None,
                      fee=Decimal(0), reason="max_order_notional: 50000.25 > 10000 @everyone <!channel> <b>x</b>")
    fields.update(kw)
    return ExecutionReport(**fields)


def fill_notice(**kw: Any) -> Notice:
    r = report(**kw)
    notice = from_report(r, f"exec.report.{r.symbol}", json.loads(encode(r)))
    assert notice is not None
    return notice


def rejection_notice() -> Notice:
    r = report(OrderStatus.REJECTED)
    notice = from_report(r, "exec.report.BTC-USD", json.loads(encode(r)))
    assert notice is not None
    return notice


# ---------------------------------------------------------------- formats, exactly as sent


async def test_discord_gets_content_and_one_embed(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.default = (204, "", {}, 0.0)  # Discord answers an execute without ?wait=true with 204
    ch = make_channel("discord", hook, client)
    assert await ch.deliver(fill_notice())
    (seen,) = await hook.wait(1)
    assert seen.path == DISCORD_SECRET_PATH and seen.headers["Content-Type"] == "application/json"
    assert seen.body == {
        "content": "FILLED BUY 0.5 BTC-USD @ 100000.5",
        "embeds": [{
            "title": "FILLED BUY 0.5 BTC-USD @ 100000.5",
            "description": "trading BUY BTC-USD on sim: filled 0.5 of 0.5, average 100000.5",
            "color": 0x3498DB,
            "fields": [
                {"name": "order", "value": "ord-1", "inline": True},
                {"name": "agent", "value": "trading", "inline": True},
                {"name": "venue", "value": "sim", "inline": True},
                {"name": "filled", "value": "0.5 / 0.5", "inline": True},
                {"name": "avg price", "value": "100000.5", "inline": True},
                {"name": "notional", "value": "50000.25", "inline": True},
                {"name": "fee", "value": "5", "inline": True},
            ],
            "footer": {"text": "moonbus fills \u00b7 exec.report.BTC-USD"},
            "timestamp": "2026-01-01T00:00:00.000Z",
        }],
        "allowed_mentions": {"parse": []},
    }


async def test_discord_rejection_is_yellow_and_mentions_never_ping(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("discord", hook, client)
    assert await ch.deliver(rejection_notice())
    body = (await hook.wait(1))[0].body
    assert body["content"] == "REJECTED BUY 0.5 BTC-USD"
    assert body["embeds"][0]["color"] == 0xF1C40F
    assert "@everyone" in body["embeds"][0]["description"] and body["allowed_mentions"] == {"parse": []}
    assert {"name": "reason", "value": report(OrderStatus.REJECTED).reason, "inline": False} \
        in body["embeds"][0]["fields"]


async def test_discord_limits_hold_for_huge_text(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("discord", hook, client)
    huge = Notice("errors", "T" * 5000, "D" * 9000, "warning", fields=tuple((f"k{i}" * 100, "v" * 5000) for i in range(40)))
    assert await ch.deliver(huge)
    body = (await hook.wait(1))[0].body
    embed = body["embeds"][0]
    assert len(body["content"]) <= 2000 and len(embed["title"]) == 256 and len(embed["description"]) == 4096
    assert len(embed["fields"]) <= 25 and all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"]) + sum(
        len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000


async def test_slack_gets_text_and_blocks_escaped(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("slack", hook, client)
    assert await ch.deliver(rejection_notice())
    (seen,) = await hook.wait(1)
    reason = "max_order_notional: 50000.25 &gt; 10000 @everyone &lt;!channel&gt; &lt;b&gt;x&lt;/b&gt;"
    assert seen.body == {
        "text": f"REJECTED BUY 0.5 BTC-USD: trading order ord-1: {reason}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "REJECTED BUY 0.5 BTC-USD"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"trading order ord-1: {reason}"}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": "*order*\nord-1"},
                {"type": "mrkdwn", "text": "*agent*\ntrading"},
                {"type": "mrkdwn", "text": "*venue*\nsim"},
                {"type": "mrkdwn", "text": f"*reason*\n{reason}"},
            ]},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": ":warning: moonbus rejections \u00b7 exec.report.BTC-USD"}]},
        ],
    }
    assert "<!channel>" not in json.dumps(seen.body)


async def test_telegram_send_message_params(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.default = (200, {"ok": True, "result": {"message_id": 1}}, {}, 0.0)
    ch = make_channel("telegram", hook, client)
    assert await ch.deliver(rejection_notice())
    (seen,) = await hook.wait(1)
    assert seen.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert seen.body == {
        "chat_id": "-1001234",
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": True},
        "text": "\u26a0\ufe0f <b>REJECTED BUY 0.5 BTC-USD</b>\n"
                "trading order ord-1: max_order_notional: 50000.25 &gt; 10000 @everyone &lt;!channel&gt; "
                "&lt;b&gt;x&lt;/b&gt;\n"
                "<b>order</b>: ord-1\n<b>agent</b>: trading\n<b>venue</b>: sim\n"
                "<b>reason</b>: max_order_notional: 50000.25 &gt; 10000 @everyone &lt;!channel&gt; &lt;b&gt;x&lt;/b&gt;",
    }


async def test_telegram_ok_false_is_a_failure_not_retried(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.default = (200, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, {}, 0.0)
    ch = make_channel("telegram", hook, client)
    ok, why = await ch.send(rejection_notice())
    assert not ok and "chat not found" in why and len(hook.seen) == 1
    hook.default = (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, {}, 0.0)
    ok, why = await ch.send(rejection_notice())
    assert not ok and "HTTP 400, not retried" in why and len(hook.seen) == 2


async def test_telegram_text_stays_within_4096(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("telegram", hook, client)
    hook.default = (200, {"ok": True}, {}, 0.0)
    notice = Notice("errors", "<" * 600, "&" * 5000, "critical", fields=tuple((f"f{i}", "<" * 400) for i in range(30)))
    assert await ch.deliver(notice)
    text = (await hook.wait(1))[0].body["text"]
    assert len(text) <= 4096 and text.startswith("\U0001f6a8 <b>&lt;")


async def test_json_posts_the_event_and_the_message(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("json", hook, client)
    r = report()
    assert await ch.deliver(fill_notice())
    (seen,) = await hook.wait(1)
    assert seen.body == {
        "event": "fills", "severity": "info", "title": "FILLED BUY 0.5 BTC-USD @ 100000.5",
        "text": "trading BUY BTC-USD on sim: filled 0.5 of 0.5, average 100000.5", "symbol": "BTC-USD",
        "notional": "50000.25", "subject": "exec.report.BTC-USD",
        "fields": {"order": "ord-1", "agent": "trading", "venue": "sim", "filled": "0.5 / 0.5",
                   "avg price": "100000.5", "notional": "50000.25", "fee": "5"},
        "ts": TS, "data": json.loads(encode(r)),
    }
    assert seen.body["data"]["last_fill_price"] == "100000.5"  # money stays a decimal string


# ---------------------------------------------------------------- events and state changes


def test_reports_other_than_fills_and_rejections_are_not_notices() -> None:
    for status in (OrderStatus.ACCEPTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED):
        r = report(status, filled_quantity=Decimal(0), last_fill_price=None, last_fill_quantity=None,
                   avg_fill_price=None)
        assert from_report(r, "exec.report.BTC-USD", {}) is None
    partial = report(OrderStatus.PARTIALLY_FILLED, filled_quantity=Decimal("0.2"), last_fill_quantity=Decimal("0.2"))
    n = from_report(partial, "exec.report.BTC-USD", {})
    assert n is not None and n.kind == "fills" and n.notional == Decimal("20000.1")
    invalid = ExecutionReport(status=OrderStatus.REJECTED, reason="bad_request: symbol", timings=Timings(), ts=TS)
    n = from_report(invalid, "exec.report._invalid", {})
    assert n is not None and n.title == "REJECTED order (unreadable: exec.report._invalid)" and n.symbol is None
    assert n.text == "? order ?: bad_request: symbol"
    failed = report(OrderStatus.FAILED, reason="venue down", filled_quantity=Decimal(0), last_fill_price=None,
                    last_fill_quantity=None, avg_fill_price=None)
    assert from_report(failed, "exec.report.BTC-USD", {}).kind == "rejections"  # type: ignore[union-attr]


def test_only_state_changes_are_notices() -> None:
    t = Tracker()

    def verdict(state: TradingState, reasons: list[str] | None = None) -> Notice | None:
        return t.verdict(Verdict(symbol="BTC-USD", state=state, reasons=reasons or [], ts=TS), "risk.verdict.BTC-USD", {})

    assert verdict(TradingState.ACTIVE) is None  # first sighting, normal
    assert verdict(TradingState.ACTIVE) is None  # heartbeat
    halted = verdict(TradingState.HALTED, ["circuit_breaker"])
    assert halted is not None and halted.kind == "breaches" and halted.severity == "critical"
    assert halted.title == "BTC-USD: ACTIVE -> HALTED" and halted.text == "circuit_breaker"
    assert verdict(TradingState.HALTED, ["circuit_breaker"]) is None
    back = verdict(TradingState.ACTIVE)
    assert back is not None and back.title == "BTC-USD: HALTED -> ACTIVE" and back.severity == "info"
    # a notifier started while a symbol is halted says so once
    first = Tracker().verdict(Verdict(symbol="ETH-USD", state=TradingState.REDUCE_ONLY, ts=TS), "s", {})
    assert first is not None and first.title == "ETH-USD: unknown -> REDUCE_ONLY"

    def account(state: TradingState) -> Notice | None:
        return t.account_state(AccountState(state=state, reasons=["max_daily_loss"], cash=Decimal(1), equity=Decimal(2),
                                            peak_equity=Decimal(3), drawdown_pct=1.5, realized_pnl=Decimal(0),
                                            unrealized_pnl=Decimal(0), day_pnl=Decimal("-300.5"), fees=Decimal(0),
                                            gross_exposure=Decimal(0), open_positions=0, kill_switch=False, ts=TS),
                               "risk.account", {})

    assert account(TradingState.ACTIVE) is None
    loss = account(TradingState.HALTED)
    assert loss is not None and loss.title == "Account: ACTIVE -> HALTED" and ("day PnL", "-300.5") in loss.fields
    assert account(TradingState.HALTED) is None

    def recon(state: ReconState) -> Notice | None:
        diffs = [ReconDifference(symbol="BTC-USD", venue=Decimal("1"), ledger=Decimal("0.5"), difference=Decimal("0.5"))]
        return t.reconciliation(Reconciliation(venue="binance", state=state, action=ReconAction.HALTED,
                                               differences=diffs if state == ReconState.MISMATCH else [], ts=TS),
                                "risk.recon.binance", {})

    assert recon(ReconState.MATCHED) is None
    mismatch = recon(ReconState.MISMATCH)
    assert mismatch is not None and mismatch.kind == "venues" and "BTC-USD venue 1 vs ledger 0.5" in mismatch.text
    assert recon(ReconState.MISMATCH) is None

    def venue(connected: bool, unknown: int = 0) -> Notice | None:
        status = LiveVenueStatus.model_validate({
            "venue": "binance", "kind": LiveVenueKind.BINANCE_SPOT, "mode": VenueMode.TESTNET, "connected": connected,
            "unknown_orders": [{"venue_symbol": "BTCUSDT", "status": "NEW"}] * unknown, "ts": TS})
        return t.venue_status(status, "exec.venue.binance", {})

    assert venue(True) is None
    down = venue(False)
    assert down is not None and down.title == "Venue binance (testnet) DISCONNECTED" and down.severity == "critical"
    assert venue(False) is None
    assert venue(True) is not None
    unknown = venue(True, 2)
    assert unknown is not None and unknown.title == "Venue binance: 2 orders unknown to execution"
    assert venue(True, 2) is None


def test_kill_switch_and_alert_notices() -> None:
    k = from_kill_switch(KillSwitchState(engaged=True, actor="operator (alice)", reason="fat finger",
                                         changed_ts=TS, flatten_orders=3), "risk.events", {})
    assert k.title == "Kill switch ENGAGED by operator (alice)" and k.severity == "critical"
    assert ("flatten orders", "3") in k.fields
    a = from_alert(PriceAlert(venue="sim", symbol="SOL-USDC", direction="DOWN", change_pct=-5.25, threshold_pct=5,
                              window_s=60, from_price=Decimal("200"), price=Decimal("189.5"), ts=TS), "md.alert.SOL-USDC", {})
    assert a.title == "SOL-USDC DOWN -5.25% in 60s" and a.text == "200 -> 189.5 on sim (threshold 5%)"
    assert a.symbol == "SOL-USDC"


# ---------------------------------------------------------------- filters


async def test_filters_events_symbols_and_min_notional(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("json", hook, client, events=["fills", "kill_switch"], symbols=["ETH-USD"],
                      min_fill_notional="1000")
    assert not ch.offer(fill_notice())  # BTC-USD: not one of its symbols
    assert not ch.offer(fill_notice(symbol="ETH-USD", last_fill_quantity=Decimal("0.001")))  # 100.0005 < 1000
    assert not ch.offer(rejection_notice())  # not one of its events
    big = fill_notice(symbol="ETH-USD")
    assert ch.offer(big)
    kill = from_kill_switch(KillSwitchState(engaged=False, actor="operator", reason="", changed_ts=TS), "risk.events", {})
    assert ch.offer(kill)  # no symbol: passes the symbol filter
    assert ch.queue.qsize() == 2 and not ch.suppressed  # filtered is not suppressed
    exact = make_channel("json", hook, client, min_fill_notional="50000.25")
    assert exact.offer(fill_notice())  # exactly the minimum passes (Decimal, no float)
    assert not make_channel("json", hook, client, min_fill_notional="50000.2500001").offer(fill_notice())


def test_config_requires_secret_variables_and_reads_them_without_showing_them() -> None:
    with pytest.raises(ValidationError, match="token_env"):
        ChannelConfig(kind="telegram", chat_id="1")
    with pytest.raises(ValidationError, match="url_env"):
        ChannelConfig(kind="discord")
    with pytest.raises(ValidationError):
        ChannelConfig(kind="slack", url_env="X", webhook_url="https://hooks.slack.com/x")  # no secret in the file
    with pytest.raises(ValidationError, match="decimal string"):
        ChannelConfig(kind="json", url_env="X", min_fill_notional=0.1)
    with pytest.raises(ValidationError, match="channel names"):
        NotifierConfig.model_validate({"channels": {"Bad Name": {"kind": "json", "url_env": "X"}}})
    cfg = ChannelConfig(kind="discord", url_env="DISCORD_HOOK")
    with pytest.raises(ValueError, match="DISCORD_HOOK is not set"):
        channel_secret("desk", cfg, {})
    with pytest.raises(ValueError, match="DISCORD_HOOK does not hold an http") as e:
        channel_secret("desk", cfg, {"DISCORD_HOOK": "not-a-url-s3cr3t"})
    assert "s3cr3t" not in str(e.value)
    assert channel_secret("desk", cfg, {"DISCORD_HOOK": "https://x/y"}) == "https://x/y"
    tg = ChannelConfig(kind="telegram", token_env="TG", chat_id="1")
    with pytest.raises(ValueError, match="TG does not hold a Telegram bot token") as e:
        channel_secret("phone", tg, {"TG": "oops-s3cr3t"})
    assert "s3cr3t" not in str(e.value)
    assert channel_secret("phone", tg, {"TG": TELEGRAM_TOKEN}) == TELEGRAM_TOKEN


# ---------------------------------------------------------------- rate limit, queue bound


def test_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(per_minute=60, burst=2, clock=lambda: now[0])
    assert bucket.try_take() and bucket.try_take() and not bucket.try_take()
    assert bucket.wait_s() == pytest.approx(1.0)
    now[0] = 0.5
    assert not bucket.try_take() and bucket.wait_s() == pytest.approx(0.5)
    now[0] = 100.0
    assert bucket.try_take() and bucket.try_take() and not bucket.try_take()  # never more than the burst


async def test_rate_limit_suppresses_and_sends_one_summary(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("json", hook, client, max_per_minute=60, burst=2)
    offered = [ch.offer(fill_notice(client_order_id=f"o{i}")) for i in range(5)]
    assert offered == [True, True, False, False, False]
    alert = from_alert(PriceAlert(venue="sim", symbol="BTC-USD", direction="UP", change_pct=5, threshold_pct=5,
                                  window_s=60, from_price=Decimal(1), price=Decimal(2), ts=TS), "md.alert.BTC-USD", {})
    assert not ch.offer(alert)  # suppressed until the summary has gone, whatever the kind
    kill = from_kill_switch(KillSwitchState(engaged=True, actor="operator", reason="stop", changed_ts=TS), "risk.events", {})
    assert ch.offer(kill)  # the kill switch is never rate-limited
    task = asyncio.create_task(ch.run())
    try:
        seen = await hook.wait(4, timeout=5)
        assert [s.body["event"] for s in seen] == ["fills", "fills", "kill_switch", "suppressed"]
        assert [s.body["data"]["client_order_id"] for s in seen[:2]] == ["o0", "o1"]
        summary = seen[3].body
        assert summary["title"] == "4 notifications suppressed"
        assert summary["text"] == "1 alerts, 3 fills (4 over the rate limit of 60 per minute)"
        assert seen[3].at - seen[0].at >= 0.7  # it waited for the next token (1 per second)
        for _ in range(100):  # the webhook saw it; the channel counts it once the answer is back
            if ch.sent == 4:
                break
            await asyncio.sleep(0.02)
        assert not ch.suppressed and ch.sent == 4
        await asyncio.sleep(1.1)
        assert ch.offer(fill_notice(client_order_id="later"))  # tokens again: normal service
        assert (await hook.wait(5))[4].body["data"]["client_order_id"] == "later"
    finally:
        task.cancel()


async def test_queue_is_bounded_and_overflow_is_counted(hook: Hook, client: httpx.AsyncClient) -> None:
    ch = make_channel("json", hook, client, queue_size=2, max_per_minute=6000)
    results = [ch.offer(fill_notice(client_order_id=f"q{i}")) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert ch.queue.qsize() == 2 and ch.suppressed == {"fills": 3} and ch.suppressed_why == {"queue_full": 1, "rate_limit": 2}
    task = asyncio.create_task(ch.run())
    try:
        seen = await hook.wait(3)
        assert seen[2].body["title"] == "3 notifications suppressed"
        assert seen[2].body["text"] == "3 fills (2 over the rate limit of 6000 per minute; 1 with the queue full (2))"
    finally:
        task.cancel()


# ---------------------------------------------------------------- retries, 429, failures


async def test_retries_on_5xx_then_delivers(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.answer(500, "boom")
    hook.answer(503, "busy")
    ch = make_channel("json", hook, client, backoff_s=0.1, backoff_max_s=1)
    t0 = time.monotonic()
    assert await ch.deliver(fill_notice())
    seen = await hook.wait(3)
    assert len(seen) == 3 and seen[0].body == seen[2].body
    assert seen[1].at - seen[0].at >= 0.09 and seen[2].at - seen[1].at >= 0.19  # backoff doubles
    assert time.monotonic() - t0 < 5 and ch.sent == 1 and ch.failing == 0


async def test_a_timeout_is_retried(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.answer(200, "late", delay=1.0)
    ch = make_channel("json", hook, client, timeout_s=0.2)
    ok, why = await ch.send(fill_notice())
    assert ok and len(hook.seen) == 2


async def test_4xx_is_not_retried(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.default = (404, {"message": "Unknown Webhook", "code": 10015}, {}, 0.0)
    ch = make_channel("discord", hook, client)
    ok, why = await ch.send(fill_notice())
    assert not ok and why.startswith("HTTP 404, not retried") and "Unknown Webhook" in why and len(hook.seen) == 1


@pytest.mark.parametrize(("kind", "status", "body", "headers", "wait"), [
    ("discord", 429, {"message": "You are being rate limited.", "retry_after": 0.6, "global": False}, {}, 0.6),
    # an unversioned webhook URL (API v6) says milliseconds in the body, seconds in the header
    ("discord", 429, {"message": "You are being rate limited.", "retry_after": 700, "global": False},
     {"Retry-After": "1"}, 0.7),
    ("telegram", 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                       "parameters": {"retry_after": 1}}, {}, 1.0),
    ("slack", 429, "rate_limited", {"Retry-After": "1"}, 1.0),
    ("json", 429, "slow down", {"Retry-After": "0.5"}, 0.5),
])
async def test_429_waits_what_the_service_asks(hook: Hook, client: httpx.AsyncClient, kind: str, status: int,
                                               body: Any, headers: dict[str, str], wait: float) -> None:
    hook.answer(status, body, headers)
    hook.default = (200, {"ok": True} if kind == "telegram" else "ok", {}, 0.0)
    ch = make_channel(kind, hook, client, backoff_s=5.0)  # a backoff would be 5 s: the 429's wait is used
    ok, _ = await ch.send(fill_notice())
    seen = await hook.wait(2)
    assert ok and wait - 0.05 <= seen[1].at - seen[0].at < wait + 2.0


def test_retry_after_reads_bodies_and_headers() -> None:
    import email.utils

    from services.notifier.channel import retry_after

    def r(body: Any = None, **headers: str) -> httpx.Response:
        return httpx.Response(429, json=body, headers=headers) if body is not None else \
            httpx.Response(429, text="", headers=headers)

    assert retry_after(r({"retry_after": 1.5}), "discord") == 1.5
    assert retry_after(r({"parameters": {"retry_after": 3}}), "telegram") == 3.0
    assert retry_after(r({"retry_after": 9}), "telegram") is None  # not where Telegram puts it
    assert retry_after(r(**{"Retry-After": "7"}), "slack") == 7.0
    assert retry_after(r({"retry_after": True}, **{"Retry-After": "2"}), "discord") == 2.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after(r(**{"Retry-After": later}), "json") <= 31  # type: ignore[operator]
    assert retry_after(r(**{"Retry-After": "soon"}), "json") is None
    assert retry_after(r(), "json") is None


async def test_429_longer_than_allowed_drops_the_event(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.default = (429, {"retry_after": 3600}, {}, 0.0)
    ch = make_channel("discord", hook, client, max_retry_after_s=5)
    t0 = time.monotonic()
    ok, why = await ch.send(fill_notice())
    assert not ok and "longer than max_retry_after_s = 5" in why and len(hook.seen) == 1 and time.monotonic() - t0 < 1


async def test_a_failing_channel_reports_once_then_recovers(hook: Hook, client: httpx.AsyncClient) -> None:
    hook.default = (500, "down", {}, 0.0)
    failures: list[str] = []
    ch = make_channel("slack", hook, client, failures, max_retries=1, fail_after=2, error_interval_s=3600)
    assert not await ch.deliver(fill_notice())
    assert failures == []
    assert not await ch.deliver(fill_notice())
    assert len(failures) == 1
    assert failures[0] == ("channel test-slack (slack) keeps failing: 2 notifications in a row not delivered; "
                           "last: HTTP 500: down (gave up after 2 attempts)")
    assert not await ch.deliver(fill_notice())
    assert len(failures) == 1  # once per error_interval_s
    assert len(hook.seen) == 6  # 1 + max_retries per event
    hook.default = (200, "ok", {}, 0.0)
    assert await ch.deliver(fill_notice()) and ch.failing == 0


async def test_unreachable_webhook_is_a_failure_not_a_crash(client: httpx.AsyncClient) -> None:
    from services.devstack.natsserver import free_port

    cfg = channel_config("discord", max_retries=1)
    secret = f"http://127.0.0.1:{free_port()}{DISCORD_SECRET_PATH}"
    ch = Channel("gone", cfg, secret, client)
    ok, why = await ch.send(fill_notice())
    assert not ok and why == "connection failed (ConnectError) (gave up after 2 attempts)"


# ---------------------------------------------------------------- secrets


async def test_secrets_never_reach_logs_or_reprs(hook: Hook, client: httpx.AsyncClient,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    notifier.quiet_http_logs()
    token_part = DISCORD_SECRET_PATH.rsplit("/", 1)[-1]
    # A service that echoes the URL in its error (some do) is redacted too.
    hook.answer(500, f"error at {hook.url}{DISCORD_SECRET_PATH}")
    hook.answer(400, f"bad path {DISCORD_SECRET_PATH}")
    failures: list[str] = []
    ch = make_channel("discord", hook, client, failures, fail_after=1)
    assert not await ch.deliver(fill_notice())
    hook.answer(200, {"ok": False, "description": f"bot{TELEGRAM_TOKEN} unauthorized"})
    tg = make_channel("telegram", hook, client, failures, fail_after=1)
    assert not await tg.deliver(fill_notice())
    # the httpx request log (URL at INFO) is silenced
    async with httpx.AsyncClient() as other:
        await other.post(f"{hook.url}{DISCORD_SECRET_PATH}", json={})
    text = caplog.text + " ".join(failures) + repr(ch) + repr(tg)
    assert "<redacted>" in text
    for secret in (token_part, TELEGRAM_TOKEN, TELEGRAM_TOKEN.split(":")[1]):
        assert secret not in text
    assert repr(ch) == "Channel('test-discord', kind=discord, secret from $HOOK_URL)"
    assert repr(tg) == "Channel('test-telegram', kind=telegram, secret from $TG_TOKEN)"


# ---------------------------------------------------------------- launcher


def test_make_run_starts_the_notifier_only_when_enabled() -> None:
    assert default_services({}) == list(SERVICES)
    assert default_services({"notifier": {"enabled": False}}) == list(SERVICES)
    names = default_services({"notifier": {"enabled": True}})
    assert names[-2:] == ["notifier", "gateway"] and set(names) == set(SERVICES) | {"notifier"}
    assert "notifier" not in SERVICES  # `make run` is unchanged for everyone else


async def test_disabled_notifier_exits_at_once() -> None:
    await asyncio.wait_for(notifier.main(asyncio.Event(), config={}), 2)


# ---------------------------------------------------------------- through a real nats-server


async def test_execution_report_reaches_the_webhooks_through_nats(
        hook: Hook, connect: Any, running_service: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("NOTIFIER_TEST_JSON", f"{hook.url}/json/Zx9SeCrEtJsOn")
    monkeypatch.setenv("NOTIFIER_TEST_DISCORD", f"{hook.url}{DISCORD_SECRET_PATH}")
    monkeypatch.setenv("NOTIFIER_TEST_BROKEN", f"{hook.url}/broken/Zx9SeCrEtBrOkEn")
    monkeypatch.setenv("NOTIFIER_TEST_OPS", f"{hook.url}/ops/Zx9SeCrEtOpS")
    hook.default = (204, "", {}, 0.0)
    config = {"notifier": {"enabled": True, "channels": {
        "all": {"kind": "json", "url_env": "NOTIFIER_TEST_JSON", "events": ["fills", "rejections", "kill_switch",
                                                                             "breaches", "alerts", "venues", "errors"]},
        "desk": {"kind": "discord", "url_env": "NOTIFIER_TEST_DISCORD", "events": ["fills"],
                 "min_fill_notional": "10000"},
        "broken": {"kind": "slack", "url_env": "NOTIFIER_TEST_BROKEN", "events": ["kill_switch"], "max_retries": 0,
                   "fail_after": 1},
        "ops": {"kind": "json", "url_env": "NOTIFIER_TEST_OPS", "events": ["venues"]},
    }}}
    operator = await connect("operator")
    errors = await operator.collect("errors.notifier")
    execution = await connect("execution")
    risk = await connect("risk")

    def by_path(prefix: str) -> list[Seen]:
        return [s for s in hook.seen if s.path.startswith(prefix)]

    async def until(predicate: Any, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            assert asyncio.get_running_loop().time() < deadline, [(s.path, s.body) for s in hook.seen]
            await asyncio.sleep(0.02)

    async with running_service("notifier", notifier.main, config, operator):
        await execution.publish("exec.report.BTC-USD", encode(report()))
        await execution.publish("exec.report.BTC-USD", encode(report(client_order_id="small",
                                                                     last_fill_quantity=Decimal("0.0001"))))
        await flush(execution)
        await until(lambda: len(by_path("/json/")) == 2 and len(by_path("/api/webhooks/")) == 1)
        assert [s.body["data"]["client_order_id"] for s in by_path("/json/")] == ["ord-1", "small"]
        (discord,) = by_path("/api/webhooks/")
        assert discord.body["content"] == "FILLED BUY 0.5 BTC-USD @ 100000.5"  # the small fill is under 10000

        # a verdict heartbeat is no notice, its change is
        verdict = Verdict(symbol="BTC-USD", state=TradingState.ACTIVE, ts=TS)
        await risk.publish("risk.verdict.BTC-USD", encode(verdict))
        await risk.publish("risk.verdict.BTC-USD", encode(verdict))
        await risk.publish("risk.verdict.BTC-USD", encode(verdict.model_copy(update={"state": TradingState.HALTED})))
        await flush(risk)
        await until(lambda: len(by_path("/json/")) == 3)
        assert by_path("/json/")[2].body["title"] == "BTC-USD: ACTIVE -> HALTED"

        # the broken channel (its webhook answers 500) fails on the kill switch and says so
        await risk.publish("risk.events", encode(KillSwitchState(engaged=True, actor="operator", reason="test",
                                                                 changed_ts=TS)))
        await flush(risk)
        msg = await asyncio.wait_for(errors.get(), 10)
        event = ErrorEvent.model_validate_json(msg.data)
        assert event.service == "notifier" and event.subject == "notifier.channel.broken"
        assert event.reason == ("channel broken (slack) keeps failing: 1 notifications in a row not delivered; "
                                "last: HTTP 500: down (gave up after 1 attempts)")
        await until(lambda: len(by_path("/json/")) == 4 and len(by_path("/broken/")) == 1)
        assert by_path("/json/")[3].body["event"] == "kill_switch"

        # other services' errors go to the channels that want them; its own never (no loop)
        await execution.publish("errors.execution", encode(ErrorEvent(service="execution", subject="orders.x",
                                                                      reason="bad order", ts=TS)))
        await flush(execution)
        await until(lambda: len(by_path("/json/")) == 5)
        assert by_path("/json/")[4].body["title"] == "Error in execution"

        # execution's word that it did not apply what a live venue sent is venue trouble (a
        # channel of `venues` alone gets it); another service's error naming a venue is not
        await execution.publish("errors.execution", encode(ErrorEvent(
            service="execution", subject="exec.venue.binance",
            reason="venue state of c-1 not applied: malformed fill tid 7, oid 9: bad px", ts=TS)))
        await flush(execution)
        await until(lambda: len(by_path("/json/")) == 6 and len(by_path("/ops/")) == 1)
        (ops,) = by_path("/ops/")
        assert ops.body["event"] == "venues" and ops.body["severity"] == "critical"
        assert ops.body["title"] == "Venue binance: data not applied" and "malformed fill tid 7" in ops.body["text"]
        forger = await connect("trading-agent")
        await forger.publish("errors.trading-agent", encode(ErrorEvent(
            service="execution", subject="exec.venue.binance", reason="venue state of c-1 not applied", ts=TS)))
        await flush(forger)
        await until(lambda: len(by_path("/json/")) == 7)
        assert by_path("/json/")[6].body["event"] == "errors"
        assert by_path("/json/")[6].body["title"] == "Error in trading-agent", by_path("/json/")[6].body
        await asyncio.sleep(0.3)
        assert len(by_path("/json/")) == 7 and len(by_path("/ops/")) == 1 and errors.empty()
    assert "Zx9SeCrEt" not in caplog.text


async def test_make_run_launches_the_notifier_as_its_own_user(hook: Hook, tmp_path: Any) -> None:
    """`python -m services.notifier` under the launcher, configured by overrides only, as NATS
    user `notifier`: a kill switch published by risk reaches the webhook; the URL is never printed."""
    import nats as nats_py

    from services.devstack.launcher import System
    from services.devstack.natsserver import free_port

    hook.default = (200, "ok", {}, 0.0)
    secret_url = f"{hook.url}/hooks/Zx9SeCrEtLaUnChEr"
    env = {"MOONBUS__NOTIFIER__ENABLED": "true", "MOONBUS__NOTIFIER__METRICS_PORT": "0",
           "MOONBUS__NOTIFIER__CHANNELS__OPS__KIND": "json",
           "MOONBUS__NOTIFIER__CHANNELS__OPS__URL_ENV": "NOTIFIER_OPS_URL",
           "MOONBUS_LOG_LEVEL": "DEBUG", "NOTIFIER_OPS_URL": secret_url}
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["notifier"], out=None, env=env)
    try:
        await system.await_output("notifier", r"notifier ready: Channel\('ops', kind=json, secret from "
                                              r"\$NOTIFIER_OPS_URL\)", timeout=30)
        creds = system.env_for("risk")
        risk = await nats_py.connect(creds["NATS_URL"], user="risk", password=creds["NATS_PASSWORD"],
                                     inbox_prefix="_INBOX.risk")
        try:
            await risk.publish("risk.events", encode(KillSwitchState(engaged=True, actor="operator",
                                                                     reason="launcher test", changed_ts=TS)))
            await flush(risk)
            (seen,) = await hook.wait(1, timeout=15)
        finally:
            await risk.close()
        assert seen.path == "/hooks/Zx9SeCrEtLaUnChEr"
        assert seen.body["event"] == "kill_switch" and seen.body["title"] == "Kill switch ENGAGED by operator"
        assert system.running("notifier")
        assert not any("Zx9SeCrEt" in line for line in system.output("notifier"))
    finally:
        system.stop()
        print(system.tail(40))


async def test_a_message_that_is_not_json_for_the_webhook_does_not_stop_the_channel(
        hook: Hook, connect: Any, running_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any user may publish errors.<its name>, which the notifier reads. Python's json reads
    NaN / Infinity in a field the contract ignores, and httpx refuses to send them (allow_nan
    False): that ValueError escaped Channel.run and the channel sent nothing more, silently."""
    monkeypatch.setenv("NOTIFIER_TEST_JSON", f"{hook.url}/json/Zx9SeCrEtJsOn")
    hook.default = (204, "", {}, 0.0)
    config = {"notifier": {"enabled": True, "channels": {
        "all": {"kind": "json", "url_env": "NOTIFIER_TEST_JSON", "events": ["errors"]}}}}
    operator = await connect("operator")
    news = await connect("sentiment-agent")  # the least of the users: it may publish errors.sentiment-agent
    async with running_service("notifier", notifier.main, config, operator):
        await news.publish("errors.sentiment-agent", b'{"service":"sentiment-agent","subject":"x","reason":"r",'
                                                     b'"ts":1,"extra":NaN}')
        await news.publish("errors.sentiment-agent", encode(ErrorEvent(service="sentiment-agent", subject="y",
                                                                       reason="the next one", ts=TS)))
        await flush(news)
        seen = await hook.wait(1)
        assert seen[0].body["text"] == "the next one"


async def test_past_the_caps_a_new_symbol_or_venue_is_refused(
        hook: Hook, connect: Any, running_service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notifier kept the last verdict of every symbol and the last reconciliation and
    connection of every venue named on the bus: a stolen risk or execution credential
    publishing made-up names grew them without end. Now at most caps.MAX_MARKET_SYMBOLS symbols
    and caps.MAX_VENUES venues: a message naming a new one beyond is refused on errors.notifier
    (no notice), a kept one still changes and is told."""
    monkeypatch.setattr(caps, "MAX_MARKET_SYMBOLS", 2)
    monkeypatch.setattr(caps, "MAX_VENUES", 2)
    monkeypatch.setenv("NOTIFIER_TEST_JSON", f"{hook.url}/json/Zx9SeCrEtJsOn")
    hook.default = (204, "", {}, 0.0)
    config = {"notifier": {"enabled": True, "channels": {
        "all": {"kind": "json", "url_env": "NOTIFIER_TEST_JSON", "events": ["breaches", "venues"],
                "max_per_minute": 6000}}}}
    operator, risk, execution = await connect("operator"), await connect("risk"), await connect("execution")
    errors = await operator.collect("errors.notifier")
    symbols, venues = ["NTCA-USD", "NTCB-USD", "NTCC-USD"], ["ntca", "ntcb", "ntcc"]

    def halted(symbol: str, state: TradingState = TradingState.HALTED) -> bytes:
        return encode(Verdict(symbol=symbol, state=state, reasons=["circuit_breaker"], ts=TS))

    def down(venue: str, connected: bool = False) -> bytes:
        return encode(LiveVenueStatus(venue=venue, kind=LiveVenueKind.HYPERLIQUID, mode=VenueMode.TESTNET,
                                      connected=connected, ts=TS))

    def mismatch(venue: str, state: ReconState = ReconState.MISMATCH) -> bytes:
        return encode(Reconciliation(venue=venue, state=state, action=ReconAction.NONE, differences=[],
                                     unknown_orders=0, ts=TS))

    async with running_service("notifier", notifier.main, config, operator):
        for nc in (risk, execution):
            await nc.flush()  # the publishers' round trips first (tests/test_decision_pipeline.py)
        for symbol, venue in zip(symbols, venues, strict=True):  # each first sighting is a notice
            await risk.publish(f"risk.verdict.{symbol}", halted(symbol))
            await execution.publish(f"exec.venue.{venue}", down(venue))
            await risk.publish(f"risk.recon.{venue}", mismatch(venue))
        await risk.publish(f"risk.verdict.{symbols[0]}", halted(symbols[0], TradingState.ACTIVE))  # kept: a change
        await execution.publish(f"exec.venue.{venues[0]}", down(venues[0], connected=True))
        await risk.publish(f"risk.recon.{venues[0]}", mismatch(venues[0], ReconState.MATCHED))
        await risk.publish(f"risk.verdict.{symbols[2]}", halted(symbols[2], TradingState.ACTIVE))  # refused again
        for nc in (risk, execution):
            await flush(nc)
        refused = [json.loads((await asyncio.wait_for(errors.get(), 5)).data) for _ in range(4)]
        seen = await hook.wait(9)
        await asyncio.sleep(0.3)  # nothing more comes
        titles = sorted(s.body["title"] for s in hook.seen)
    assert sorted((e["subject"], e["reason"]) for e in refused) == sorted([
        *[(f"risk.verdict.{symbols[2]}", f"symbol {symbols[2]} refused: already 2 symbols kept, the most this "
                                         "service keeps (MAX_MARKET_SYMBOLS 2)")] * 2,
        *[(subject, f"venue {venues[2]} refused: already 2 venues kept, the most this service keeps (MAX_VENUES 2)")
          for subject in (f"exec.venue.{venues[2]}", f"risk.recon.{venues[2]}")]])
    assert len(seen) == 9 and titles == sorted([
        "NTCA-USD: unknown -> HALTED", "NTCB-USD: unknown -> HALTED", "NTCA-USD: HALTED -> ACTIVE",
        "Venue ntca (testnet) DISCONNECTED", "Venue ntcb (testnet) DISCONNECTED", "Venue ntca (testnet) connected",
        "Reconciliation ntca: unknown -> MISMATCH", "Reconciliation ntcb: unknown -> MISMATCH",
        "Reconciliation ntca: MISMATCH -> MATCHED"])
    assert errors.empty()
