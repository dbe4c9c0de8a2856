"""How `moon` finds and reaches NATS, and how it reports what went wrong.

Each setting is taken from, in order: the command-line flag (--server, --user,
--password), the environment (NATS_URL, NATS_USER, NATS_PASSWORD, NATS_CA), the env file
written by `make run` (.moon/nats.env, in the current directory or the repository),
then the default (nats://127.0.0.1:4222, no user, no TLS). With NATS_CA (a CA file, set
by `make run` when `[nats] tls` is on) the connection is TLS and the server's certificate
must chain to that CA.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client

from services.common.bus import ApiError, Bus, inbox_prefix, server_urls
from services.common.config import REPO_ROOT
from services.common.tls import client_tls_options

DEFAULT_URL = "nats://127.0.0.1:4222"
OWNERS = {"md": "market-data", "risk": "risk", "exec": "execution", "agent": "the swarm agent"}  # by subject prefix
ENV_FILE = Path(".moon") / "nats.env"
T = TypeVar("T")


class CliError(Exception):
    """Ends the command with this one-line message and exit code 1."""


def read_env_file(path: Path) -> dict[str, str]:
    """`export KEY=value` lines (shell-quoted values), as written by natsserver.write_nats_env."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        if len(words) == 1 and "=" in words[0]:
            key, _, value = words[0].partition("=")
            values[key] = value
    return values


def default_env_file() -> Path:
    here = Path.cwd() / ENV_FILE
    return here if here.exists() else REPO_ROOT / ENV_FILE


@dataclass
class Target:
    url: str
    user: str | None
    password: str | None
    env_file: Path | None  # the file that was read, if any
    ca: str | None = None  # CA file for TLS (NATS_CA)

    @classmethod
    def resolve(cls, server: str | None = None, user: str | None = None, password: str | None = None,
                env_file: Path | None = None) -> Target:
        explicit = env_file is not None
        path = env_file or default_env_file()
        file: dict[str, str] = {}
        if path.exists():
            try:
                file = read_env_file(path)
            except (OSError, ValueError) as e:
                raise CliError(f"cannot read {path}: {e}") from None
        elif explicit:
            raise CliError(f"{path} does not exist (it is written by `make run`)")

        def pick(flag: str | None, name: str) -> str | None:
            return flag or os.environ.get(name) or file.get(name)

        return cls(pick(server, "NATS_URL") or DEFAULT_URL, pick(user, "NATS_USER"),
                   pick(password, "NATS_PASSWORD"), path if file else None, pick(None, "NATS_CA"))

    def describe(self) -> str:
        return f"{self.url} as {self.user or '(no user)'}"


@dataclass
class Session:
    """A connected client plus what the server told us asynchronously (permission errors)."""

    nc: Client
    target: Target
    timeout: float
    server_errors: list[str] = field(default_factory=list)

    @cached_property
    def bus(self) -> Bus:
        bus = Bus("moon")
        bus.nc = self.nc
        return bus


async def connect(target: Target, timeout: float = 3.0) -> Session:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    options: dict[str, Any] = client_tls_options(target.url, target.ca)
    if target.user:
        options |= {"user": target.user, "password": target.password or "", "inbox_prefix": inbox_prefix(target.user)}
    try:
        nc = await nats.connect(
            # max_reconnect_attempts=0 would mean "retry forever" to nats-py: 1 = two tries.
            server_urls(target.url), name="moon", allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1,
            connect_timeout=timeout, error_cb=on_error, **options,
        )
    except Exception as e:
        raise CliError(_connect_failure(target, e, errors, timeout)) from None
    return Session(nc, target, timeout, errors)


def _connect_failure(target: Target, error: Exception, reported: list[str], timeout: float) -> str:
    text = " ".join([str(error), *reported]).lower()
    if "authorization" in text or "authentication" in text:
        hint = "" if target.user else " (no user given: use --user/--password, NATS_USER or .moon/nats.env)"
        return f"NATS at {target.url} refused the credentials of {target.user or '(no user)'}{hint}"
    detail = next((r for r in reported if r), "") or str(error) or f"no answer within {timeout:g}s"
    return f"cannot reach NATS at {target.url}: {detail}"


def explain(error: ApiError, session: Session | None) -> str:
    """One line for an error reply, a missing responder, or a request the server refused."""
    denied = [e for e in (session.server_errors if session else []) if "permissions violation" in e.lower()]
    if error.code == "timeout" and denied:
        return f"NATS refused this for user {session.target.user if session else '?'}: {denied[-1]}"
    if error.code == "no_responders":
        owner = OWNERS.get(error.message.removeprefix("nobody serves ").split(".")[0], "its service")
        return f"{error.message} (is {owner} running?)"
    return f"{error.code}: {error.message}"


def run(target: Target, timeout: float, work: Callable[[Session], Awaitable[T]]) -> T:
    """Connect, do `work`, close; every failure becomes a CliError with one line."""

    async def main() -> T:
        session = await connect(target, timeout)
        try:
            return await work(session)
        except ApiError as e:
            raise CliError(explain(e, session)) from None
        except nats.errors.NoRespondersError:
            raise CliError("nobody answered (no responders)") from None
        except nats.errors.TimeoutError:
            raise CliError(f"NATS did not answer within {timeout}s") from None
        finally:
            if not session.nc.is_closed:
                await session.nc.close()

    return asyncio.run(main())
