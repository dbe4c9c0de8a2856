"""One webhook channel: filter, token bucket, bounded queue, delivery with retries.

- `offer()` (never blocks): an event the filters let through takes a token of the bucket
  ([notifier.channels.<name>] max_per_minute, burst) and joins the queue (queue_size). With
  no token left, or the queue full, it is suppressed: counted, and told in one summary
  notice ("N notifications suppressed: ...") that takes the next token. Until that summary
  has gone, later events are counted into it too (so a flood costs one message).
  Kill-switch changes skip the bucket (never the queue bound).
- `run()`: sends the queue in order, one at a time. Each event: up to 1 + max_retries
  attempts; a 5xx, 408, timeout or connection error waits backoff_s doubling to
  backoff_max_s; a 429 waits what the service asked (Discord's JSON `retry_after`,
  Telegram's `parameters.retry_after`, else the `Retry-After` header: Slack's), and drops
  the event when that is beyond max_retry_after_s; any other 4xx is not retried.
  `fail_after` events in a row not delivered -> `on_failing(text)` (errors.notifier),
  at most once per error_interval_s while it keeps failing.

The secret (webhook URL, bot token) is never logged: `redact()` takes it out of every
message, and repr() names only its environment variable.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import metrics
from .config import ChannelConfig
from .events import Notice
from .formats import discord_body, json_body, slack_body, telegram_body

log = logging.getLogger(__name__)
REDACTED = "<redacted>"


class TokenBucket:
    """`burst` tokens, refilled at `per_minute` per minute."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def try_take(self) -> bool:
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until a token is there (0 = now)."""
        self._refill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


def retry_after(response: httpx.Response, kind: str) -> float | None:
    """Seconds a 429 asks to wait: the JSON body's (Discord `retry_after`, Telegram
    `parameters.retry_after`), else the Retry-After header (seconds or an HTTP date)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    value: Any = None
    if isinstance(body, dict):
        if kind == "discord":
            value = body.get("retry_after")
        elif kind == "telegram" and isinstance(body.get("parameters"), dict):
            value = body["parameters"].get("retry_after")
    header = _header_seconds(response.headers.get("retry-after"))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        # An unversioned Discord webhook URL (/api/webhooks/..., API v6) answers retry_after in
        # milliseconds (discord/discord-api-docs#4722); its Retry-After header is in seconds.
        if kind == "discord" and header is not None and value > max(header, 1.0) * 50:
            return float(value) / 1000.0
        return float(value)
    return header


def _header_seconds(header: str | None) -> float | None:
    """A Retry-After header: seconds, or an HTTP date."""
    if header is None:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Channel:
    def __init__(self, name: str, cfg: ChannelConfig, secret: str, client: httpx.AsyncClient,
                 on_failing: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self._secret = secret
        self.client = client
        self.on_failing = on_failing
        self.bucket = TokenBucket(cfg.max_per_minute, cfg.burst or cfg.max_per_minute)
        self.queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=cfg.queue_size)
        self.suppressed: collections.Counter[str] = collections.Counter()  # by event kind
        self.suppressed_why: collections.Counter[str] = collections.Counter()  # by reason
        self.events = set(cfg.events)
        self.symbols = set(cfg.symbols)
        self.failing = 0  # events in a row not delivered
        self.sent = 0
        self.failed = 0
        self._last_report: float | None = None
        self._wake = asyncio.Event()
        self._secrets = self._secret_parts(secret)

    def __repr__(self) -> str:
        var = self.cfg.token_env if self.cfg.kind == "telegram" else self.cfg.url_env
        return f"Channel({self.name!r}, kind={self.cfg.kind}, secret from ${var})"

    # ---------------------------------------------------------------- secrets

    def _secret_parts(self, secret: str) -> list[str]:
        parts = [secret]
        if self.cfg.kind == "telegram":
            parts.append(secret.split(":", 1)[-1])
        else:
            split = urlsplit(secret)
            if len(split.path) >= 8:
                parts.append(split.path)
            if split.query:
                parts.append(split.query)
        return sorted({p for p in parts if p}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for part in self._secrets:
            text = text.replace(part, REDACTED)
        return text

    @property
    def url(self) -> str:
        if self.cfg.kind == "telegram":
            return f"{self.cfg.api_base.rstrip('/')}/bot{self._secret}/sendMessage"
        return self._secret

    # ---------------------------------------------------------------- admission

    def accepts(self, n: Notice) -> bool:
        if n.kind not in self.events:
            return False
        if self.symbols and n.symbol is not None and n.symbol not in self.symbols:
            return False
        if n.kind == "fills" and self.cfg.min_fill_notional > 0:
            return n.notional is not None and n.notional >= self.cfg.min_fill_notional
        return True

    def offer(self, n: Notice) -> bool:
        """Queue `n` if the filters want it and the bucket and queue allow; never blocks."""
        if not self.accepts(n):
            return False
        if n.kind != "kill_switch" and (self.suppressed or not self.bucket.try_take()):
            self._suppress(n, "rate_limit")
            return False
        try:
            self.queue.put_nowait(n)
        except asyncio.QueueFull:
            self._suppress(n, "queue_full")
            return False
        metrics.QUEUED.labels(self.name).set(self.queue.qsize())
        self._wake.set()
        return True

    def _suppress(self, n: Notice, why: str) -> None:
        if not self.suppressed:
            log.warning("channel %s: %s, suppressing notifications until the next token (%d per minute)",
                        self.name, why.replace("_", " "), self.cfg.max_per_minute)
        self.suppressed[n.kind] += 1
        self.suppressed_why[why] += 1
        metrics.SUPPRESSED.labels(self.name, why).inc()
        self._wake.set()

    def summary(self) -> Notice:
        """The notice that tells what was suppressed since the last one (and resets the count)."""
        total = sum(self.suppressed.values())
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.suppressed.items()))
        why = []
        if self.suppressed_why["rate_limit"]:
            why.append(f"{self.suppressed_why['rate_limit']} over the rate limit of {self.cfg.max_per_minute} "
                       "per minute")
        if self.suppressed_why["queue_full"]:
            why.append(f"{self.suppressed_why['queue_full']} with the queue full ({self.cfg.queue_size})")
        self.suppressed.clear()
        self.suppressed_why.clear()
        word = "notification" if total == 1 else "notifications"
        fields = (("suppressed", str(total)), ("events", kinds))
        return Notice("suppressed", f"{total} {word} suppressed", f"{kinds} ({'; '.join(why)})", "warning",
                      fields=fields, ts=time.time_ns())

    # ---------------------------------------------------------------- delivery

    async def run(self) -> None:
        """Send the queue, then the summary of what was suppressed, forever."""
        while True:
            if not self.queue.empty():
                n = self.queue.get_nowait()
                metrics.QUEUED.labels(self.name).set(self.queue.qsize())
                await self.deliver(n)
                continue
            if self.suppressed and self.bucket.try_take():
                await self.deliver(self.summary())
                continue
            self._wake.clear()
            timeout = self.bucket.wait_s() if self.suppressed else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def body(self, n: Notice) -> dict[str, Any]:
        kind = self.cfg.kind
        if kind == "discord":
            return discord_body(n)
        if kind == "slack":
            return slack_body(n)
        if kind == "telegram":
            assert self.cfg.chat_id is not None
            return telegram_body(n, self.cfg.chat_id)
        return json_body(n)

    def backoff(self, attempt: int) -> float:
        return min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** attempt)

    async def deliver(self, n: Notice) -> bool:
        """Send one notice (with its retries); count, log and report the outcome."""
        ok, reason = await self.send(n)
        if ok:
            self.sent += 1
            metrics.SENT.labels(self.name).inc()
            if self.failing >= self.cfg.fail_after:
                log.info("channel %s delivers again after %d failed notifications", self.name, self.failing)
            self.failing = 0
            self._last_report = None
            return True
        self.failed += 1
        self.failing += 1
        metrics.FAILED.labels(self.name).inc()
        log.warning("channel %s: %s notification not delivered: %s", self.name, n.kind, reason)
        now = time.monotonic()
        if self.failing >= self.cfg.fail_after and (
                self._last_report is None or now - self._last_report >= self.cfg.error_interval_s):
            self._last_report = now
            text = (f"channel {self.name} ({self.cfg.kind}) keeps failing: {self.failing} notifications in a "
                    f"row not delivered; last: {reason}")
            log.error("%s", text)
            if self.on_failing is not None:
                try:
                    await self.on_failing(text)
                except Exception as e:  # reporting must never stop the channel
                    log.error("channel %s: could not report the failure: %s", self.name, self.redact(repr(e)))
        return False

    async def send(self, n: Notice) -> tuple[bool, str]:
        """(delivered, why not). Never raises for the service's answers or the network."""
        body = self.body(n)
        reason = "not sent"
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            wait: float
            try:
                response = await self.client.post(self.url, json=body, timeout=self.cfg.timeout_s)
            except httpx.TimeoutException:
                reason, wait = f"no answer within {self.cfg.timeout_s:g}s", self.backoff(attempt)
            except httpx.HTTPError as e:
                reason, wait = f"connection failed ({type(e).__name__})", self.backoff(attempt)
            except ValueError as e:
                # The body is no JSON (httpx refuses NaN / Infinity, which Python's json reads in
                # a field the contract ignores: any user may publish errors.<its name>). Not
                # retried; raised, it would stop run() and the channel for good.
                return False, f"not sendable as JSON ({e})"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return self._accepted(response)
                detail = self.redact(response.text[:200].strip())
                if status == 429:
                    asked = retry_after(response, self.cfg.kind)
                    reason = f"rate limited (HTTP 429, retry after {asked if asked is not None else '?'}s)"
                    if asked is not None and asked > self.cfg.max_retry_after_s:
                        return False, f"{reason}: longer than max_retry_after_s = {self.cfg.max_retry_after_s:g}"
                    wait = asked if asked is not None else self.backoff(attempt)
                elif status >= 500 or status == 408:
                    reason, wait = f"HTTP {status}: {detail}", self.backoff(attempt)
                else:
                    return False, f"HTTP {status}, not retried (check the channel's URL/token/chat_id): {detail}"
            if attempt + 1 < attempts:
                metrics.RETRIES.labels(self.name).inc()
                log.info("channel %s: %s; retry %d/%d in %.2fs", self.name, reason, attempt + 1,
                         self.cfg.max_retries, wait)
                await asyncio.sleep(wait)
        return False, f"{reason} (gave up after {attempts} attempts)"

    def _accepted(self, response: httpx.Response) -> tuple[bool, str]:
        if self.cfg.kind != "telegram":
            return True, ""
        try:  # the Bot API answers {"ok": true, "result": ...}
            body = response.json()
        except ValueError:
            return False, "telegram: the answer is not JSON"
        if isinstance(body, dict) and body.get("ok") is True:
            return True, ""
        desc = body.get("description", "") if isinstance(body, dict) else ""
        return False, self.redact(f"telegram answered ok=false: {str(desc)[:200]}")
