"""What `make run`'s launcher (the `supervisor` NATS user) records about each service it
supervises: one JSON value per service in the KV bucket `moonbus`, key `supervisor.<service>`
(`supervisor.nats` for nats-server itself). Written by services/devstack/launcher.py, read by
`moon status` and the gateway's dashboard by direct gets.

    records = await read_supervision(nc)       # {"risk": Supervised(state="running", restarts=1, ...)}

The launcher re-writes every record each HEARTBEAT_S, so a record older than STALE_S was
left by a launcher that is gone (killed, or a previous `make run`): it is shown as stale,
not as the truth. Under docker compose there is no such record (compose's own restart
policies supervise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, ValidationError

from services.common.streams import KV_STREAM, StreamReadError, read_stream
from services.contract import subjects as S

M = TypeVar("M", bound=BaseModel)

HEARTBEAT_S = 10.0
STALE_S = 3 * HEARTBEAT_S

State = Literal["running", "restarting", "crash_loop", "stopped"]


class Supervised(BaseModel):
    """One service as its supervisor last saw it (the KV value of `supervisor.<service>`)."""

    model_config = ConfigDict(extra="ignore")

    service: str
    state: State
    restarts: int = 0  # restarts by this launcher since it started
    crash_loop: bool = False  # >= loop_crashes crashes within loop_window_s (still restarted, with backoff)
    recent_crashes: int = 0  # crashes within the crash-loop window
    last_exit: str | None = None  # "exit code 3" / "killed by signal SIGKILL"
    last_exit_code: int | None = None
    last_signal: str | None = None
    last_start_ns: int | None = None  # wall clock, ns
    next_backoff_s: float | None = None  # the wait before the pending restart (state restarting / crash_loop)
    restart_at_ns: int | None = None
    pid: int | None = None
    detail: str = ""
    ts: int  # when the launcher wrote this record (ns): refreshed every HEARTBEAT_S

    def stale(self, now_ns: int | None = None) -> bool:
        """Not refreshed for STALE_S: its launcher is gone."""
        return (now_ns or time.time_ns()) - self.ts > STALE_S * 1e9

    def as_dict(self, now_ns: int | None = None) -> dict:
        """The record plus `stale`, for JSON answers."""
        return {**self.model_dump(), "stale": self.stale(now_ns)}


async def read_supervision(nc: Client, timeout: float = 5.0) -> tuple[dict[str, Supervised], list[str]]:
    """Every `supervisor.*` record, by direct gets (one value per key: the bucket keeps no
    history): ({service: record}, problems). A value that does not parse is a problem, not
    an exception. Raises StreamReadError when the bucket cannot be read."""
    return await read_records(nc, S.kv_supervisor, Supervised, "a supervisor record", timeout)


async def read_records(nc: Client, key: Callable[[str], str], model: type[M], what: str,
                       timeout: float = 5.0) -> tuple[dict[str, M], list[str]]:
    """Every KV value under `key("")` (a prefix such as `supervisor.`), parsed as `model`:
    ({name after the prefix: record}, problems: the values that do not parse)."""
    found: dict[str, M] = {}
    problems: list[str] = []
    prefix = S.kv_subject(key(""))
    async for stored in read_stream(nc, KV_STREAM, S.kv_subject(key(">")), timeout=timeout):
        name = stored.subject.removeprefix(prefix)
        if not stored.data:  # a deleted key (never written so; tolerated)
            continue
        try:
            found[name] = model.model_validate_json(stored.data)
        except ValidationError as e:
            problems.append(f"KV {key(name)}: not {what} ({e.error_count()} errors)")
    return dict(sorted(found.items())), problems


__all__ = ["HEARTBEAT_S", "STALE_S", "StreamReadError", "Supervised", "read_records", "read_supervision"]
