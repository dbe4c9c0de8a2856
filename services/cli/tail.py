"""`moon tail`: live messages on a subject pattern, decoded into the contract's models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError
from rich.console import Console

from services.contract.catalogue import model_for
from services.common.bus import flush

from .connection import CliError, Session
from .render import message_line

Filter = tuple[list[str], str]


def parse_filters(items: list[str]) -> list[Filter]:
    """`symbol=BTC-USD`, `timings.filled_ts=123` -> (path, wanted value)."""
    filters = []
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise CliError(f"bad --filter {item!r}: write field=value, e.g. symbol=BTC-USD")
        filters.append((field.split("."), value))
    return filters


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def passes(payload: bytes, filters: list[Filter]) -> bool:
    """Every filter's field is present in the JSON payload with that value (compared as text)."""
    if not filters:
        return True
    try:
        data = json.loads(payload)
    except ValueError:
        return False
    for path, wanted in filters:
        value: Any = data
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return False
            value = value[key]
        if _text(value) != wanted:
            return False
    return True


async def tail(session: Session, pattern: str, console: Console, *, raw: bool = False,
               filters: list[Filter] | None = None, count: int = 0, seconds: float = 0) -> int:
    """Print messages until Ctrl+C, `count` messages, or `seconds`; returns how many were shown."""
    filters = filters or []
    shown = 0
    done = asyncio.Event()
    failures: list[Exception] = []

    async def on_message(msg: Msg) -> None:
        if done.is_set() or not passes(msg.data, filters):
            return
        try:
            show(msg)
        except (SystemExit, BrokenPipeError):  # a closed pipe (`moon tail ... | head`): rich exits
            done.set()
            with contextlib.suppress(OSError, ValueError):  # and nothing more is written to it
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except Exception as e:  # nats-py would swallow it: end the command with it instead
            failures.append(e)
            done.set()

    def show(msg: Msg) -> None:
        nonlocal shown
        if raw:
            console.file.write(msg.data.decode("utf-8", "replace") + "\n")
            console.file.flush()
        else:
            model, message, problem = model_for(msg.subject), None, ""
            if model is not None:
                try:
                    message = model.model_validate_json(msg.data)
                except ValidationError as e:
                    problem = f"invalid {model.__name__} ({e.error_count()} errors):"
            console.print(message_line(msg.subject, message, msg.data, problem), soft_wrap=True)
        shown += 1
        if count and shown >= count:
            done.set()

    try:
        await session.nc.subscribe(pattern, cb=on_message)
        await flush(session.nc, session.timeout)
    except Exception as e:
        raise CliError(f"cannot subscribe to {pattern!r}: {e}") from None
    denied = [e for e in session.server_errors if "permissions violation" in e.lower()]
    if denied:
        raise CliError(f"NATS refused the subscription for user {session.target.user}: {denied[-1]}")
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(done.wait(), seconds or None)
    if failures:
        raise CliError(f"could not show a message: {failures[0]!r}")
    return shown
