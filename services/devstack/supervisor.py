"""Supervision for `make run`: when to restart a crashed process (RestartPolicy), what the
launcher knows of each one (Track), and the record of it on the bus (Recorder: the KV
bucket `moonbus`, key `supervisor.<service>`, and crash events on `errors.supervisor`, as
the `supervisor` NATS user). services/devstack/launcher.py drives them.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats

from services.common.bus import inbox_prefix, server_urls
from services.common.tls import client_tls_options
from services.contract import subjects as S
from services.contract.models import ErrorEvent, encode
from services.ops.supervision import Supervised

USER = "supervisor"


@dataclass(frozen=True)
class RestartPolicy:
    """A crashed service is restarted after `backoff_initial_s`, doubled at each crash up to
    `backoff_max_s`; once it has stayed up `stable_s` the next crash starts again from the
    initial wait. `loop_crashes` crashes within `loop_window_s`, or in a row without a
    stable run between, are a crash loop: flagged
    (state crash_loop), still retried with the growing backoff."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    stable_s: float = 30.0
    loop_crashes: int = 3
    loop_window_s: float = 60.0

    def backoff(self, consecutive: int) -> float:
        """The wait before restart number `consecutive` (1 = the first crash of a run)."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, consecutive - 1))


def describe_exit(code: int | None) -> str:
    """`exit code 3`, `killed by signal SIGKILL`, `still running` (None)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def exit_fields(code: int | None) -> dict[str, object]:
    """last_exit / last_exit_code / last_signal of a return code (negative: a signal)."""
    if code is None:
        return {"last_exit": None, "last_exit_code": None, "last_signal": None}
    signal_name = describe_exit(code).removeprefix("killed by signal ") if code < 0 else None
    return {"last_exit": describe_exit(code), "last_exit_code": code if code >= 0 else None,
            "last_signal": signal_name}


class Track:
    """What the launcher knows of one supervised process (a service or nats-server). Only the
    launcher's supervisor thread changes it (and System.stop, once that thread is gone)."""

    def __init__(self, name: str, policy: RestartPolicy) -> None:
        self.name = name
        self.policy = policy
        self.state = "stopped"
        self.restarts = 0  # automatic restarts after a crash
        self.consecutive = 0  # crashes since the last stable run: the backoff's exponent
        self.crashes: collections.deque[float] = collections.deque()  # monotonic times, within the window
        self.started_mono: float | None = None
        self.last_start_ns: int | None = None
        self.pid: int | None = None
        self.restart_due: float | None = None  # monotonic time of the pending restart
        self.next_backoff: float | None = None
        self.exit: dict[str, object] = exit_fields(None)
        self.detail = ""
        self.starts: collections.deque[float] = collections.deque(maxlen=100)  # monotonic, for tests

    def _prune(self, now: float) -> None:
        while self.crashes and now - self.crashes[0] > self.policy.loop_window_s:
            self.crashes.popleft()

    def in_loop(self, now: float) -> bool:
        """`loop_crashes` crashes within the window, or in a row with no stable run between
        (the capped backoff spreads a crash-at-once service's crashes beyond any window)."""
        self._prune(now)
        return max(len(self.crashes), self.consecutive) >= self.policy.loop_crashes

    def started(self, pid: int | None, now: float) -> None:
        self.started_mono, self.last_start_ns, self.pid = now, time.time_ns(), pid
        self.restart_due = self.next_backoff = None
        self.starts.append(now)
        self.state = "crash_loop" if self.in_loop(now) else "running"

    def crashed(self, code: int | None, now: float, detail: str) -> float:
        """Records a crash; returns the wait before the restart (also in restart_due)."""
        uptime = now - self.started_mono if self.started_mono is not None else 0.0
        if uptime >= self.policy.stable_s:
            self.consecutive = 0
        self.consecutive += 1
        self.crashes.append(now)
        backoff = self.policy.backoff(self.consecutive)
        self.restart_due, self.next_backoff = now + backoff, backoff
        self.state = "crash_loop" if self.in_loop(now) else "restarting"
        self.exit, self.pid, self.detail = exit_fields(code), None, detail
        return backoff

    def stopped(self, code: int | None, detail: str) -> None:
        self.state, self.restart_due, self.next_backoff, self.pid = "stopped", None, None, None
        self.exit, self.detail = exit_fields(code), detail

    def settle(self, now: float) -> bool:
        """After `stable_s` up, the crashes are forgiven (backoff and crash loop reset);
        True when that changed the record."""
        if self.state not in ("running", "crash_loop") or self.started_mono is None:
            return False
        if now - self.started_mono < self.policy.stable_s or (self.consecutive == 0 and self.state == "running"):
            return False
        self.consecutive = 0
        self.crashes.clear()
        self.state = "running"
        return True

    def record(self, now: float | None = None) -> Supervised:
        now = time.monotonic() if now is None else now
        due_ns = None
        if self.restart_due is not None:
            due_ns = time.time_ns() + int(max(0.0, self.restart_due - now) * 1e9)
        return Supervised(
            service=self.name, state=self.state, restarts=self.restarts, crash_loop=self.in_loop(now),
            recent_crashes=len(self.crashes), last_start_ns=self.last_start_ns, next_backoff_s=self.next_backoff,
            restart_at_ns=due_ns, pid=self.pid, detail=self.detail[:500], ts=time.time_ns(),
            **self.exit,  # type: ignore[arg-type]
        )


class Recorder:
    """Puts records into the KV bucket and crash events on `errors.supervisor`, as user
    `supervisor`, from a thread of its own (nats-py is asyncio, the launcher threads). The
    latest record per service wins; a put that fails (nats-server down) is retried until
    it is stored, the connection reconnecting for ever. Never blocks the caller."""

    def __init__(self, url: str, password: str, ca: str | None = None,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.url, self.password, self.ca = url, password, ca
        self.on_problem = on_problem or (lambda text: None)
        self._lock = threading.Lock()
        self._latest: dict[str, Supervised] = {}
        self._dirty: set[str] = set()
        self._events: list[ErrorEvent] = []
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.stored = 0  # records stored (acknowledged by the stream)
        self.published = 0  # events published

    def start(self, timeout: float = 10.0) -> Recorder:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="supervisor-recorder",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def put(self, record: Supervised) -> None:
        with self._lock:
            self._latest[record.service] = record
            self._dirty.add(record.service)
        self._poke()

    def event(self, event: ErrorEvent) -> None:
        with self._lock:
            self._events.append(event)
        self._poke()

    def close(self, timeout: float = 3.0) -> None:
        """Store what is pending (one more try, within `timeout`), then disconnect."""
        with self._lock:
            self._closing = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout)

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has ended
                pass

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        complained: set[str] = set()

        async def on_error(e: Exception) -> None:
            text = str(e)
            if "permissions violation" in text.lower() and text not in complained:
                complained.add(text)  # a config that denies the supervisor: say it once
                self.on_problem(f"supervisor: {text}")

        try:
            nc = await nats.connect(server_urls(self.url), user=USER, password=self.password, inbox_prefix=inbox_prefix(USER),
                                    name="moonbus-launcher", allow_reconnect=True, max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.5, connect_timeout=2, error_cb=on_error,
                                    **client_tls_options(self.url, self.ca))  # type: ignore[arg-type]
        except Exception as e:  # supervision goes on; only its record on the bus is missing
            self.on_problem(f"cannot connect to NATS as {USER}: {e}; services are still restarted, "
                            "but not recorded in KV")
            return
        js = nc.jetstream()
        try:
            while True:
                with self._lock:
                    events, self._events = self._events, []
                    pending = {name: self._latest[name] for name in self._dirty}
                    self._dirty.clear()
                    closing = self._closing
                for event in events:  # buffered by the client while it reconnects
                    await nc.publish(S.errors(USER), encode(event))
                    self.published += 1
                failed = [] if nc.is_connected else list(pending)  # no put can succeed while reconnecting
                for name, record in pending.items():
                    if not nc.is_connected:
                        continue
                    try:
                        await js.publish(S.kv_subject(S.kv_supervisor(name)), record.model_dump_json().encode(),
                                         timeout=2)
                        self.stored += 1
                    except Exception:
                        failed.append(name)
                with self._lock:
                    self._dirty.update(failed)  # a newer record may be there already: it is the one sent
                if closing:
                    break
                assert self._wake is not None
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.5 if failed else None)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            try:
                await nc.flush(timeout=1)
            except Exception:
                pass
            await nc.close()
