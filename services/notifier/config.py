"""The [notifier] section of moonbus.toml (keys documented there).

Secrets never live in the file: a channel names the environment variable that holds its
webhook URL (`url_env`: the URL of a Discord / Slack webhook is its credential) or its
Telegram bot token (`token_env`); `secrets()` reads them at start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, model_validator

from services.common.config import ConfigMoney, Section
from services.contract.models import SYMBOL_PATTERN

EventKind = Literal["fills", "rejections", "breaches", "kill_switch", "alerts", "venues", "errors"]
EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]
DEFAULT_EVENTS: list[str] = ["fills", "rejections", "breaches", "kill_switch", "alerts", "venues"]
ChannelKind = Literal["json", "discord", "slack", "telegram"]
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
CHANNEL_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


class ChannelConfig(Section):
    kind: ChannelKind
    url_env: Annotated[str, Field(pattern=ENV_NAME)] | None = None  # json, discord, slack: the webhook URL
    token_env: Annotated[str, Field(pattern=ENV_NAME)] | None = None  # telegram: the bot token
    chat_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # telegram: where to post
    api_base: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] = "https://api.telegram.org"  # telegram
    events: list[EventKind] = list(DEFAULT_EVENTS)  # type: ignore[arg-type]
    symbols: list[Annotated[str, Field(pattern=SYMBOL_PATTERN)]] = []  # empty = every symbol
    min_fill_notional: Annotated[ConfigMoney, Field(ge=0)] = Decimal(0)  # fills below this are not sent
    max_per_minute: Annotated[int, Field(ge=1, le=6000)] = 20  # token bucket refill
    burst: Annotated[int, Field(ge=1, le=6000)] | None = None  # bucket size; default max_per_minute
    queue_size: Annotated[int, Field(ge=1, le=10000)] = 100  # events waiting to be sent; more are dropped
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0  # one HTTP attempt
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4  # after the first attempt (5xx, 429, timeouts)
    backoff_s: Annotated[float, Field(ge=0, le=60)] = 1.0  # first retry; doubles up to backoff_max_s
    backoff_max_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    max_retry_after_s: Annotated[float, Field(ge=0, le=3600)] = 120.0  # a longer 429 wait drops the event
    fail_after: Annotated[int, Field(ge=1, le=1000)] = 3  # failed events in a row -> errors.notifier
    error_interval_s: Annotated[float, Field(ge=0)] = 300.0  # at most one such error per this while failing

    @model_validator(mode="after")
    def _secrets_named(self) -> ChannelConfig:
        if self.kind == "telegram":
            if not self.token_env or not self.chat_id:
                raise ValueError("a telegram channel needs token_env (the variable holding the bot token) "
                                 "and chat_id")
        elif not self.url_env:
            raise ValueError(f"a {self.kind} channel needs url_env (the variable holding the webhook URL)")
        return self


class NotifierConfig(Section):
    enabled: bool = False
    channels: dict[str, ChannelConfig] = {}
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 0

    @model_validator(mode="after")
    def _names(self) -> NotifierConfig:
        bad = [n for n in self.channels if not CHANNEL_NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"channel names must match [a-z0-9_-]{{1,32}}: {bad}")
        return self


def channel_secret(name: str, cfg: ChannelConfig, environ: Mapping[str, str] | None = None) -> str:
    """The channel's secret (webhook URL, or Telegram bot token) from its variable; a clear
    error, naming the variable and never a value, when it is missing or malformed."""
    environ = os.environ if environ is None else environ
    var = cfg.token_env if cfg.kind == "telegram" else cfg.url_env
    assert var is not None
    value = environ.get(var, "").strip()
    if not value:
        raise ValueError(f"[notifier.channels.{name}]: environment variable {var} is not set")
    if cfg.kind == "telegram":
        if not re.fullmatch(r"[0-9]{1,20}:[A-Za-z0-9_-]{10,200}", value):
            raise ValueError(f"[notifier.channels.{name}]: {var} does not hold a Telegram bot token "
                             "(<digits>:<letters>)")
    elif not re.fullmatch(r"https?://[^\s]+", value):
        raise ValueError(f"[notifier.channels.{name}]: {var} does not hold an http(s) URL")
    return value
