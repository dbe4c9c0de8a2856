"""Run the whole moonbus system on this machine, without Docker (`make run`).

Starts nats-server (secure config, one user per service), writes `.moon/nats.env`
with the operator's credentials, then every service as a child process with its own
NATS user. Each line a child prints is shown with a fixed-width, coloured service
name, like docker compose. Ctrl+C / SIGTERM stops the services (SIGTERM, then SIGKILL
after 10 s) and nats-server last, promptly: no restart once stopping.

Supervision (services/devstack/supervisor.py): a service that crashes (a non-zero exit,
or killed by a signal the launcher did not send) is restarted with exponential backoff
(RestartPolicy: 0.5 s doubling to 30 s, back to 0.5 s once it has stayed up 30 s); 3
crashes within 60 s (or in a row) are a crash loop, flagged and still retried. A service that exits 0
on its own stays stopped. If nats-server dies it is restarted on the same port and
store; the services reconnect on their own. Each one's state is kept in the KV bucket
`moonbus` under `supervisor.<service>` (`supervisor.nats`; read by `moon status` and the
dashboard), written as the `supervisor` NATS user, and each crash is an ErrorEvent on
`errors.supervisor`.

The same class runs a subset of the system in tests:

    system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk"],
                            out=None)
    try:
        system.wait_for_output("market-data", r"connected to NATS", timeout=30)
        env = system.env_for("operator")        # NATS_URL / NATS_USER / NATS_PASSWORD
        system.crash("risk")                    # SIGKILL the launcher did not ask for: a crash
        system.wait_for_state("risk", "running", restarts=1)   # restarted by the supervisor
    finally:
        print(system.tail())                    # last lines of every service, on failure
        system.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from services.common import config
from services.devstack.natsserver import (
    REPO_ROOT,
    SERVICE_USERS,
    NatsCluster,
    NatsServer,
    NatsServerError,
    load_or_create_credentials,
    write_nats_env,
)
from services.devstack.certs import ensure_tls_files
from services.devstack.supervisor import Recorder, RestartPolicy, Track, describe_exit
from services.ops.supervision import HEARTBEAT_S
from services.contract.models import ErrorEvent
from services.notifier.config import NotifierConfig
from services.contract import subjects as S

DEFAULT_PORT = 4222
DEFAULT_CLUSTER_PORT = 6222  # routes between the nodes of a cluster (MOONBUS_CLUSTER=3)


class NatsConfig(config.Section):
    """`[nats]` of moonbus.toml: how `make run` starts nats-server."""

    tls: bool = False  # TLS required; CA + server certificate generated into <moon_dir>/tls/
    monitor_port: int = 8222  # HTTP monitoring on 127.0.0.1 only; 0 = off


@dataclass(frozen=True)
class ServiceSpec:
    """A service: its name is also its NATS user (proto/nats/moonbus.conf)."""

    name: str
    command: tuple[str, ...]  # a path relative to the repository, or `-m module` for Python
    kind: str  # "rust" or "python"
    env: tuple[tuple[str, str], ...] = ()  # extra variables for this service only (a test's config)
    user: str = ""  # its NATS user when not its name (a standby: `risk-standby` runs as `risk`)

    @property
    def nats_user(self) -> str:
        return self.user or self.name

    def argv(self, repo_root: Path) -> list[str]:
        """The command line, with the repository's path or this Python."""
        if self.kind == "python":
            return [sys.executable, *self.command]
        return [str(repo_root / self.command[0]), *self.command[1:]]


# In start-up order: the Rust core first, then the agents, the gateway last.
SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in [
        ServiceSpec("market-data", ("target/release/rust-market-data",), "rust"),
        ServiceSpec("risk", ("target/release/rust-risk",), "rust"),
        ServiceSpec("execution", ("target/release/rust-execution",), "rust"),
        ServiceSpec("risk-agent", ("-m", "services.risk_agent"), "python"),
        ServiceSpec("trading-agent", ("-m", "services.trading_agent"), "python"),
        ServiceSpec("sentiment-agent", ("-m", "services.sentiment_agent"), "python"),
        ServiceSpec("swarm-agent", ("-m", "services.swarm_agent"), "python"),
        # One worker process per core (all in queue group `backtest`), for backtest sweeps.
        ServiceSpec("backtest", ("-m", "services.backtest", "--workers", "auto"), "python"),
        ServiceSpec("gateway", ("-m", "services.gateway"), "python"),
    ]
}

# Started by `make run` only when their config section says so (default_services):
# the notifier with `[notifier] enabled = true`. System.start takes them by name too.
OPTIONAL_SERVICES: dict[str, ServiceSpec] = {
    "notifier": ServiceSpec("notifier", ("-m", "services.notifier"), "python"),
}


def default_services(table: dict[str, object]) -> list[str]:
    """What `make run` starts without --services: every one of SERVICES, and the notifier
    (before the gateway) when `[notifier] enabled = true`."""
    names = list(SERVICES)
    if config.section(table, "notifier", NotifierConfig).enabled:
        names.insert(names.index("gateway"), "notifier")
    return names


# Services that run as active + standby with `standby=True` (MOONBUS_STANDBY=1): leader
# election over the KV lease `leader.<service>` (rust-common leader.rs), `[<service>] failover`.
FAILOVER_SERVICES = ("risk", "execution")


def with_standbys(specs: list[ServiceSpec]) -> list[ServiceSpec]:
    """Each of FAILOVER_SERVICES followed by a standby `<name>-standby` (same binary, same
    NATS user); every instance gets its own MOONBUS_INSTANCE for the lease records."""
    out: list[ServiceSpec] = []
    for spec in specs:
        if spec.name not in FAILOVER_SERVICES:
            out.append(spec)
            continue
        failover = (f"MOONBUS__{spec.name.upper()}__FAILOVER", "true")
        out.append(ServiceSpec(spec.name, spec.command, spec.kind, (*spec.env, failover, ("MOONBUS_INSTANCE", spec.name)),
                               spec.user))
        standby = f"{spec.name}-standby"
        out.append(ServiceSpec(standby, spec.command, spec.kind, (*spec.env, failover, ("MOONBUS_INSTANCE", standby)),
                               spec.nats_user))
    return out


_COLOURS = ["36", "33", "32", "35", "34", "91", "92", "93", "94", "95", "96"]


class Output:
    """Writes `name | line` to one stream, whole lines only, from many threads."""

    def __init__(self, stream: TextIO | None, names: list[str], colour: bool | None = None) -> None:
        self.stream = stream
        self.width = max((len(n) for n in names), default=8)
        if colour is None:
            colour = bool(stream is not None and stream.isatty() and not os.environ.get("NO_COLOR"))
        self.colour = colour
        self._colours = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(names)}
        self._lock = threading.Lock()

    def line(self, name: str, text: str) -> None:
        if self.stream is None:
            return
        label = f"{name:<{self.width}} |"
        if self.colour:
            code = self._colours.get(name, "1")
            label = f"\033[{code}m{label}\033[0m"
        with self._lock:
            try:
                self.stream.write(f"{label} {text}\n")
                self.stream.flush()
            except (OSError, ValueError):  # closed terminal: keep the services running
                pass


class Child:
    """One service process: output pumped to `Output`, last lines kept."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, out: Output,
                 keep_lines: int) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.out = out
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.total = 0  # lines ever added: `wait_for(after=...)` skips the older ones
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.start_error: str | None = None
        # Called from the output thread when the process has exited (the supervisor).
        self.on_exit: Callable[[Child, subprocess.Popen[bytes], int], None] | None = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def _add(self, text: str) -> None:
        with self._cond:
            self.lines.append(text)
            self.total += 1
            self._cond.notify_all()
        self.out.line(self.name, text)

    def start(self) -> None:
        self.start_error = None
        try:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: we signal it, not the terminal
            )
        except OSError as e:
            self.start_error = f"could not start {' '.join(self.argv)}: {e}"
            self._add(f"[launcher] {self.start_error}")
            return
        self._reader = threading.Thread(target=self._pump, name=f"out-{self.name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        proc = self.process
        assert proc is not None and proc.stdout is not None
        for raw in proc.stdout:
            self._add(raw.decode("utf-8", "replace").rstrip("\r\n"))
        code = proc.wait()
        if self.on_exit is not None:
            self.on_exit(self, proc, code)
        elif not self.stopping:
            self._add(f"[launcher] {self.name} exited unexpectedly: {describe_exit(code)}; "
                      "the other services keep running")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, sig)  # the service and anything it started
        except ProcessLookupError:
            pass

    def join_output(self, timeout: float = 2.0) -> None:
        if self._reader:
            self._reader.join(timeout)

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> str:
        """The first kept line matching `pattern` among those after the `after`-th line
        ever added (`total` before a restart: only the new run's lines)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                first = self.total - len(self.lines)  # lines[i] is line number first + i + 1
                for i, text in enumerate(self.lines):
                    if first + i >= after and regex.search(text):
                        return text
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name}: no output line matching {pattern!r} within {timeout:.0f}s "
                        f"({'running' if self.running else describe_exit(self.returncode)}); last lines:\n"
                        + "\n".join(self.lines)
                    )
                self._cond.wait(min(remaining, 0.5))


@contextlib.asynccontextmanager
async def risk_states(nc: Any) -> AsyncIterator[dict[str, str]]:
    """Risk's latest verdict state per symbol (`risk.verdict.>`, read as any user allowed
    to), kept up to date while inside: to wait until risk trades the symbols a run needs."""
    states: dict[str, str] = {}

    async def on_verdict(msg: Any) -> None:
        verdict = json.loads(msg.data)
        states[verdict["symbol"]] = verdict["state"]

    sub = await nc.subscribe(S.ALL_VERDICTS, cb=on_verdict)
    try:
        yield states
    finally:
        with contextlib.suppress(Exception):  # the connection may be gone already
            await sub.unsubscribe()


def all_active(states: dict[str, str], symbols: Iterable[str]) -> bool:
    """Risk trades every one of `symbols`: its verdict is ACTIVE (rebuilt, fresh prices);
    before that it refuses every check."""
    return all(states.get(s) == "ACTIVE" for s in symbols)


class System:
    """nats-server plus a chosen set of services, as child processes."""

    def __init__(self, repo_root: Path = REPO_ROOT, *, keep_lines: int = 500) -> None:
        self.repo_root = Path(repo_root)
        self.keep_lines = keep_lines
        self.nats: NatsServer | NatsCluster | None = None
        self.children: dict[str, Child] = {}
        self.out = Output(None, [])
        self.moon_dir: Path | None = None
        # Supervision: one Track per child and per nats-server ("nats", or "nats-1".. for a
        # cluster); the supervisor thread acts on them.
        self.policy = RestartPolicy()
        self.supervise = False
        self.tracks: dict[str, Track] = {}
        self.recorder: Recorder | None = None
        self._stopping = False
        self._cond = threading.Condition()  # guards the tracks, _exits, _stopping and every (re)start
        self._exits: list[tuple[Child, subprocess.Popen[bytes], int]] = []
        self._held: set[str] = set()  # nats-server nodes kill_nats keeps down
        self._supervisor: threading.Thread | None = None
        self._nats_timeout = 15.0

    def start(
        self,
        *,
        port: int | None = None,
        moon_dir: Path | None = None,
        services: list[str | ServiceSpec] | None = None,
        host: str = "127.0.0.1",
        out: TextIO | None = sys.stdout,
        colour: bool | None = None,
        env: dict[str, str] | None = None,
        write_env_file: bool = True,
        nats_timeout: float = 15.0,
        tls: bool = False,
        monitor_port: int | None = None,
        supervise: bool = True,
        restart_policy: RestartPolicy | None = None,
        cluster: int = 1,
        cluster_ports: tuple[list[int] | None, list[int] | None, list[int] | None] | None = None,
        standby: bool = False,
        nats_args: list[str] | None = None,
    ) -> System:
        """Start nats-server, then `services` (default: all of SERVICES, in order).

        A service is a name of SERVICES or a ServiceSpec of your own (a test's stand-in);
        its name must be a NATS user, whose credentials it gets.

        port: default $MOONBUS_NATS_PORT or 4222. moon_dir: default <repo>/.moon
        (credentials.json, nats.env, jetstream/). out: where prefixed output goes
        (None: kept only in memory, see `output()` / `tail()`). env: extra variables
        for every service (after the defaults, before the NATS credentials).
        tls: TLS required on every connection, with a CA and server certificate made (once)
        in <moon_dir>/tls/; every service gets a `tls://` NATS_URL and NATS_CA.
        monitor_port: nats-server's HTTP monitoring on 127.0.0.1 (None or 0: off).
        supervise: restart crashed services and nats-server (restart_policy, default
        RestartPolicy()) and record them in KV `supervisor.<service>`; False: a crash is
        only reported.
        cluster: more than 1 = that many nats-server nodes routed into one JetStream cluster
        (NatsCluster: nodes `nats-1`.., each supervised; every service gets all of them as
        seeds in NATS_URL; streams at `[jetstream] replicas`, default min(cluster, 3));
        cluster_ports: (client, route, monitoring) ports per node, default free ports.
        standby: risk and execution each run twice, active + `<name>-standby`, with
        `failover = true` (with_standbys): the standby takes over when the active one dies.
        nats_args: more nats-server arguments (one node only; the soak's `--profile`).
        """
        known = {**SERVICES, **OPTIONAL_SERVICES}
        specs = [known[s] if isinstance(s, str) and s in known else s
                 for s in (list(SERVICES) if services is None else services)]
        unknown = [s for s in specs if not isinstance(s, ServiceSpec)]
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; known: {', '.join(known)}")
        if nats_args and cluster > 1:
            raise ValueError("nats_args is for a single nats-server, not a cluster")
        if standby:
            specs = with_standbys(specs)
        names = [spec.name for spec in specs]
        not_users = [s.nats_user for s in specs if s.nats_user not in SERVICE_USERS]
        if not_users:
            raise ValueError(f"service(s) {not_users} have no NATS user; users: {', '.join(SERVICE_USERS)}")
        if port is None:
            port = int(os.environ.get("MOONBUS_NATS_PORT", DEFAULT_PORT))
        self.moon_dir = Path(moon_dir) if moon_dir else self.repo_root / ".moon"
        nodes = [f"nats-{i + 1}" for i in range(cluster)] if cluster > 1 else ["nats"]
        self.out = Output(out, [*nodes, "launcher", *names], colour)

        credentials = load_or_create_credentials(self.moon_dir)
        tls_files = ensure_tls_files(self.moon_dir / "tls", [host]) if tls else None
        if cluster > 1:
            ports_ = cluster_ports or (None, None, None)
            self.nats = NatsCluster(moon_dir=self.moon_dir, credentials=credentials, size=cluster, host=host,
                                    ports=ports_[0], cluster_ports=ports_[1], monitor_ports=ports_[2],
                                    tls=tls_files, on_line=self.out.line)
        else:
            self.nats = NatsServer(
                store_dir=self.moon_dir,  # JetStream keeps its data in <moon_dir>/jetstream
                credentials=credentials,
                port=port,
                host=host,
                log_path=self.moon_dir / "nats-server.log",
                on_line=lambda text: self.out.line("nats", text),
                monitor_port=monitor_port or None,
                tls=tls_files,
                extra_args=nats_args,
            )
        self.nats.start(timeout=max(nats_timeout, 30.0) if cluster > 1 else nats_timeout)
        self.supervise = supervise
        self.policy = restart_policy or RestartPolicy()
        self._nats_timeout = nats_timeout
        if supervise:
            for name, node in self.nats_nodes().items():
                self.tracks[name] = Track(name, self.policy)
                self.tracks[name].started(node.process.pid if node.process else None, time.monotonic())
        monitor = f", monitoring on {self.nats.monitor_url}" if self.nats.monitor_url else ""
        if cluster > 1:
            monitor += f" (a JetStream cluster of {cluster} nodes: {', '.join(nodes)})"
        self.out.line("launcher", f"nats-server ready on {self.nats.url}{monitor}; "
                                  f"starting {', '.join(names) or 'no services'}")
        if write_env_file:
            op = self.nats.env_for("operator")
            write_nats_env(self.moon_dir / "nats.env", op["NATS_URL"], op["NATS_USER"], op["NATS_PASSWORD"],
                           op.get("NATS_CA"))

        base = {k: v for k, v in os.environ.items() if not k.startswith(("MOONBUS_PW_", "NATS_"))}
        # No RUST_LOG default: the Rust services read MOONBUS_LOG_LEVEL as the agents do
        # (default INFO); a RUST_LOG of the caller's still overrides it for them.
        base.setdefault("MOONBUS_CONFIG", str(self.repo_root / "moonbus.toml"))
        base["PYTHONUNBUFFERED"] = "1"
        if cluster > 1:  # replicated streams: one node may be lost (R3 on 3 nodes)
            base.setdefault("MOONBUS__JETSTREAM__REPLICAS", str(min(cluster, 3)))
        base.update(env or {})
        # Streams, KV and the durable consumers, as the services' config wants them,
        # before any service starts: no service may create or change them itself.
        try:
            changes = self.nats.provision(config.load(environ=base))
        except BaseException:
            self.stop()
            raise
        if changes:
            self.out.line("launcher", "JetStream provisioned: " + "; ".join(
                f"{name} {', '.join(what)}" for name, what in changes.items()))
        try:
            if supervise:
                sup = self.nats.env_for("supervisor")
                self.recorder = Recorder(sup["NATS_URL"], sup["NATS_PASSWORD"], sup.get("NATS_CA"),
                                         on_problem=lambda text: self.out.line("launcher", text)).start()
                for name in self.nats_nodes():
                    self.recorder.put(self.tracks[name].record())
            for spec in specs:
                name = spec.name
                child_env = {**base, **dict(spec.env), **self.nats.env_for(spec.nats_user)}
                child = Child(name, spec.argv(self.repo_root), child_env, self.repo_root, self.out, self.keep_lines)
                self.children[name] = child
                if supervise:
                    self.tracks[name] = Track(name, self.policy)
                    child.on_exit = self._on_exit
                if spec.kind == "rust" and not Path(child.argv[0]).exists():
                    child.start_error = f"{child.argv[0]} not found: build it with `make setup` (cargo build --release)"
                    child._add(f"[launcher] {child.start_error}")
                    if supervise:  # a missing build is no crash: nothing to retry
                        self.tracks[name].stopped(None, child.start_error)
                        self._record(name)
                    continue
                self._start_child(child)
            if supervise:
                self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
                self._supervisor.start()
        except BaseException:
            self.stop()
            raise
        return self

    # ---- looking at it -------------------------------------------------------------

    def env_for(self, user: str) -> dict[str, str]:
        """NATS_URL / NATS_USER / NATS_PASSWORD for `user` (e.g. "operator" in a test)."""
        if self.nats is None:
            raise RuntimeError("the system is not started")
        return self.nats.env_for(user)

    @property
    def url(self) -> str:
        if self.nats is None:
            raise RuntimeError("the system is not started")
        return self.nats.url

    def nats_nodes(self) -> dict[str, NatsServer]:
        """The nats-server processes by name: "nats", or a cluster's "nats-1", "nats-2", .."""
        if isinstance(self.nats, NatsCluster):
            return self.nats.nodes
        return {"nats": self.nats} if self.nats is not None else {}

    def output(self, name: str) -> list[str]:
        """The last lines of a service ("nats" for nats-server, "nats-<i>" for a node)."""
        nodes = self.nats_nodes()
        if name in nodes:
            return list(nodes[name].lines)
        if name == "nats":
            return []
        return list(self.children[name].lines)

    def returncode(self, name: str) -> int | None:
        """None while the service runs (or never started: see Child.start_error)."""
        return self.children[name].returncode

    def running(self, name: str) -> bool:
        return self.children[name].running

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of nats-server and of every service, for a failure message."""
        parts = []
        for name in [*(self.nats_nodes() or ["nats"]), *self.children]:
            text = self.output(name)[-lines:]
            state = ""
            if name in self.children:
                child = self.children[name]
                state = f" ({child.start_error or ('running' if child.running else describe_exit(child.returncode))})"
            parts.append(f"---- {name}{state} ----\n" + "\n".join(text))
        return "\n".join(parts)

    def wait_for_output(self, name: str, pattern: str, timeout: float = 30.0, after: int = 0) -> str:
        """Block until a line of `name` matches the regex `pattern`; returns the line. `after`:
        only lines after that many (`line_count(name)` taken before a crash: the new run's)."""
        return self.children[name].wait_for(pattern, timeout, after)

    def line_count(self, name: str) -> int:
        """How many lines `name` has printed so far (for `wait_for_output(after=...)`)."""
        return self.children[name].total

    async def await_output(self, name: str, pattern: str, timeout: float = 30.0, after: int = 0) -> str:
        """`wait_for_output` for async tests (does not block the event loop)."""
        return await asyncio.to_thread(self.wait_for_output, name, pattern, timeout, after)

    # ---- supervision ----------------------------------------------------------------------

    def supervision(self, name: str) -> Track:
        """What the supervisor knows of `name` (a service or "nats"): state, restarts, ..."""
        return self.tracks[name]

    def wait_for_state(self, name: str, state: str, restarts: int = 0, timeout: float = 30.0) -> Track:
        """Block until the supervisor has `name` in `state` with at least `restarts` restarts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                track = self.tracks[name]
                if track.state == state and track.restarts >= restarts:
                    return track
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{name}: not {state} with {restarts}+ restarts within {timeout:.0f}s "
                                       f"(now {track.state}, {track.restarts} restarts)")
                self._cond.wait(min(remaining, 0.5))

    def _record(self, name: str) -> None:
        """Send the current record of `name` to KV (the caller holds _cond or runs alone)."""
        if self.recorder is not None:
            self.recorder.put(self.tracks[name].record())

    def _event(self, name: str, reason: str, excerpt: str = "") -> None:
        if self.recorder is not None:
            self.recorder.event(ErrorEvent(service="supervisor", subject=S.kv_supervisor(name), reason=reason,
                                           excerpt=excerpt[-256:], ts=time.time_ns()))

    def _start_child(self, child: Child) -> None:
        """(Re)start under the lock, unless stopping: stop() then sees the new process."""
        with self._cond:
            if self._stopping or child.stopping:
                return
            child.start()
            track = self.tracks.get(child.name)
            if track is not None:
                if child.process is None:  # could not even be spawned: a crash like any other
                    self._crashed(child.name, None, child.start_error or "could not start", "")
                else:
                    track.started(child.process.pid, time.monotonic())
                    self._record(child.name)
            self._cond.notify_all()

    def _on_exit(self, child: Child, proc: subprocess.Popen[bytes], code: int) -> None:
        """From a child's output thread: its process has exited (handled by _supervise)."""
        with self._cond:
            self._exits.append((child, proc, code))
            self._cond.notify_all()

    def _crashed(self, name: str, code: int | None, what: str, excerpt: str) -> None:
        track = self.tracks[name]
        backoff = track.crashed(code, time.monotonic(), what)
        loop = (f"; CRASH LOOP: {track.consecutive} crashes in a row, {len(track.crashes)} within "
                f"{self.policy.loop_window_s:g}s" if track.state == "crash_loop" else "")
        label = "nats-server" if name == "nats" else (f"nats-server {name}" if name in self.nats_nodes() else name)
        reason = f"{label} {what}; restart #{track.restarts + 1} in {backoff:g}s{loop}"
        if name in self.children:
            self.children[name]._add(f"[launcher] {reason}")
        else:
            self.out.line("launcher", reason)
        self._record(name)
        self._event(name, reason, excerpt)

    def _handle_exit(self, child: Child, proc: subprocess.Popen[bytes], code: int) -> None:
        name, track = child.name, self.tracks[child.name]
        if proc is not child.process:
            return  # an older run's exit, already handled
        if self._stopping or child.stopping:
            track.stopped(code, "stopped by the launcher")
            self._record(name)
            return
        excerpt = "\n".join(list(child.lines)[-4:])
        if code == 0:  # it chose to end: not a crash, nothing to restart
            reason = f"{name} exited on its own (exit code 0); not restarted"
            track.stopped(code, "exited on its own")
            child._add(f"[launcher] {reason}")
            self._record(name)
            self._event(name, reason, excerpt)
            return
        uptime = time.monotonic() - (track.started_mono or time.monotonic())
        self._crashed(name, code, f"exited unexpectedly: {describe_exit(code)} after {uptime:.1f}s up", excerpt)

    def _restart_nats(self, name: str = "nats") -> None:
        """Same port, same store, same passwords; the services' clients reconnect."""
        node = self.nats_nodes()[name]
        track = self.tracks[name]
        track.restarts += 1
        track.restart_due = None
        self.out.line("launcher", f"restarting nats-server {name} on {node.url} (restart #{track.restarts})")
        error = None
        self._cond.release()  # a start takes a while: exits and stop() must not wait for it
        try:
            node.start(timeout=self._nats_timeout)
        except NatsServerError as e:
            error = str(e).splitlines()[0]
        finally:
            self._cond.acquire()
        if self._stopping:  # stop() came meanwhile and may have missed this process
            node.stop()
            return
        if error is not None:
            self._crashed(name, None, f"could not be restarted: {error}", "")
            return
        track.started(node.process.pid if node.process else None, time.monotonic())
        self._record(name)
        self.out.line("launcher", f"nats-server {name} is back on {node.url}")

    def _supervise(self) -> None:
        """The supervisor thread: handles exits, restarts what is due, forgives the crashes
        of a stable run, re-writes every record each HEARTBEAT_S; stop() wakes it at once."""
        next_heartbeat = time.monotonic() + HEARTBEAT_S
        with self._cond:
            while not self._stopping:
                exits, self._exits = self._exits, []
                for child, proc, code in exits:
                    self._handle_exit(child, proc, code)
                now = time.monotonic()
                nodes = self.nats_nodes()
                for name, node in nodes.items():
                    if (name not in self._held and node.process is not None and node.process.poll() is not None
                            and self.tracks[name].restart_due is None):
                        code = node.process.returncode
                        uptime = now - (self.tracks[name].started_mono or now)
                        self._crashed(name, code, f"died: {describe_exit(code)} after {uptime:.1f}s up",
                                      "\n".join(list(node.lines)[-4:]))
                for name, track in self.tracks.items():
                    if self._stopping:
                        break
                    if track.restart_due is not None and track.restart_due <= now:
                        if name in nodes:
                            self._restart_nats(name)
                        elif not self.children[name].stopping:
                            track.restarts += 1
                            self.children[name]._add(f"[launcher] restarting {name} (restart #{track.restarts})")
                            self._start_child(self.children[name])
                    elif track.settle(now):
                        self.out.line("launcher", f"{name} has stayed up {self.policy.stable_s:g}s: "
                                                  "backoff and crash count reset")
                        self._record(name)
                if now >= next_heartbeat:
                    next_heartbeat = now + HEARTBEAT_S
                    for name in self.tracks:
                        self._record(name)
                self._cond.notify_all()  # for wait_for_state
                due = [t.restart_due - time.monotonic() for t in self.tracks.values() if t.restart_due is not None]
                if not self._exits and not self._stopping:
                    self._cond.wait(max(0.01, min([0.5, *due])))

    # ---- one service (fault tests) ------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Stop one service with `sig` (default SIGKILL: no clean-up) and wait until it is
        gone (SIGKILL after `timeout`); returns its exit code. The launcher asked for it, so
        the supervisor does not restart it (`crash` is the fault it restarts); the others
        keep running."""
        child = self.children[name]
        with self._cond:
            child.stopping = True  # also cancels a pending restart
            track = self.tracks.get(name)
            if track is not None and track.restart_due is not None:
                track.stopped(child.returncode, "stopped by the launcher")
                self._record(name)
        if child.process is None:
            return None
        child.signal(sig)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            child.process.wait()
        child.join_output()
        return child.returncode

    def crash(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Send `sig` to one service as an outside fault would (the launcher did not ask for
        it): with supervision it is restarted, with backoff. Returns the pid signalled."""
        child = self.children[name]
        pid = child.process.pid if child.running and child.process else None
        child.signal(sig)
        return pid

    def crash_nats(self, sig: int = signal.SIGKILL, node: str = "nats") -> int | None:
        """kill -9 (or `sig`) nats-server (a cluster's `node`) as an outside fault: the
        supervisor restarts it on the same port and store. Returns the pid signalled."""
        server = self.nats_nodes().get(node)
        proc = server.process if server is not None else None
        if proc is None or proc.poll() is not None:
            return None
        proc.send_signal(sig)
        return proc.pid

    def kill_nats(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Stop one nats-server node with `sig` (default kill -9) and keep it down, unlike
        `crash_nats`: the supervisor leaves it alone until `restart_nats(node)`."""
        server = self.nats_nodes()[node]
        with self._cond:
            self._held.add(node)
            if node in self.tracks:
                self.tracks[node].stopped(None, "stopped by the launcher")
                self._record(node)
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(sig)
            server.process.wait()

    def restart_nats(self, node: str, timeout: float | None = None) -> None:
        """Start a node `kill_nats` stopped, on its port and store; supervised again."""
        server = self.nats_nodes()[node]
        server.start(timeout=timeout or self._nats_timeout)
        with self._cond:
            self._held.discard(node)
            if node in self.tracks:
                self.tracks[node].started(server.process.pid if server.process else None, time.monotonic())
                self._record(node)

    def restart(self, name: str) -> None:
        """Start a killed or stopped service again: same command, same environment. Its kept
        output starts afresh, so `wait_for_output` only sees the new run's lines."""
        child = self.children[name]
        if child.running:
            raise RuntimeError(f"{name} is still running: kill it first")
        child.join_output()
        with child._cond:
            child.lines.clear()
        child.stopping = False
        child.start_error = None
        self.out.line("launcher", f"restarting {name}")
        if name in self.tracks:
            self._start_child(child)
        else:
            child.start()

    # ---- stopping -----------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every service, SIGKILL what is left after `timeout`, then stop NATS. From
        the first line on nothing is restarted, whatever was pending."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            children = [c for c in self.children.values() if c.process is not None]
            for child in children:
                child.stopping = True
        if self._supervisor is not None:
            self._supervisor.join(2.0)  # it wakes at once, unless inside a nats-server restart
        for child in children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.out.line("launcher", f"{child.name} did not stop within {timeout:.0f}s: killing it")
                child.signal(signal.SIGKILL)
                child.process.wait()
        for child in children:
            child.join_output()
        if self.recorder is not None:
            with self._cond:  # the last word in KV: stopped, and how
                for name, track in self.tracks.items():
                    if name in self.children:
                        if track.state != "stopped" or track.restart_due is not None:
                            track.stopped(self.children[name].returncode, "stopped by the launcher")
                    else:
                        track.stopped(None, "stopped by the launcher")
                    self._record(name)
            self.recorder.close()
        if self.nats is not None:
            self.nats.stop()
        if self._supervisor is not None:
            self._supervisor.join(self._nats_timeout + 5)

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.devstack.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("MOONBUS_NATS_PORT", DEFAULT_PORT)),
                        help="NATS port (default $MOONBUS_NATS_PORT or 4222)")
    parser.add_argument("--host", default=os.environ.get("MOONBUS_NATS_HOST", "127.0.0.1"),
                        help="NATS listen address (default 127.0.0.1: this machine only)")
    parser.add_argument("--moon-dir", type=Path, default=REPO_ROOT / ".moon",
                        help="state directory: credentials, nats.env, JetStream store (default .moon)")
    parser.add_argument("--services", default=os.environ.get("MOONBUS_SERVICES", ""),
                        help=f"comma-separated subset to start (default all: {','.join(SERVICES)})")
    parser.add_argument("--cluster", type=int, default=int(os.environ.get("MOONBUS_CLUSTER") or 1),
                        help="nats-server nodes (default $MOONBUS_CLUSTER or 1); 3 = a JetStream cluster on this "
                             "machine, clients on --port and the next ports, routes on --cluster-port.., "
                             "streams at R3")
    parser.add_argument("--cluster-port", type=int,
                        default=int(os.environ.get("MOONBUS_CLUSTER_PORT", DEFAULT_CLUSTER_PORT)),
                        help=f"first node's route port (default $MOONBUS_CLUSTER_PORT or {DEFAULT_CLUSTER_PORT})")
    parser.add_argument("--standby", action="store_true", default=os.environ.get("MOONBUS_STANDBY", "") in ("1", "true"),
                        help="run a standby of risk and of execution that takes over when the active one dies "
                             "(default $MOONBUS_STANDBY)")
    parser.add_argument("--no-colour", "--no-color", action="store_true", help="no ANSI colours")
    args = parser.parse_args(argv)

    services = [s.strip() for s in args.services.split(",") if s.strip()] or None
    try:
        table = config.load(None if "MOONBUS_CONFIG" in os.environ else REPO_ROOT / "moonbus.toml")
        nats_cfg = config.section(table, "nats", NatsConfig)
        services = services or default_services(table)
    except Exception as e:  # a bad [nats] section or override: one line, exit 1
        print(f"moonbus: config: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    if args.cluster < 1:
        print(f"moonbus: --cluster {args.cluster}: a number of nats-server nodes, 1 or more", file=sys.stderr)
        return 1
    # A cluster's node i (from 0) takes the i-th port after each first one.
    nodes = range(args.cluster)
    ports = ([args.port + i for i in nodes], [args.cluster_port + i for i in nodes],
             [nats_cfg.monitor_port + i for i in nodes] if nats_cfg.monitor_port else None)
    system = System()
    try:
        system.start(port=args.port, host=args.host, moon_dir=args.moon_dir, services=services,
                     colour=False if args.no_colour else None, tls=nats_cfg.tls,
                     monitor_port=nats_cfg.monitor_port, cluster=args.cluster, cluster_ports=ports,
                     standby=args.standby)
    except (NatsServerError, ValueError) as e:
        print(f"moonbus: {e}", file=sys.stderr)
        return 1
    env_file = args.moon_dir / "nats.env"
    system.out.line("launcher", f"operator credentials for the nats CLI: source {env_file} && nats sub 'md.>'")
    system.out.line("launcher", f"supervising: a crashed service is restarted after {system.policy.backoff_initial_s:g}s "
                                f"doubling to {system.policy.backoff_max_s:g}s; `moon status` shows restarts and "
                                "crash loops")
    system.out.line("launcher", "Ctrl+C stops everything")
    while not stop.wait(0.5):
        pass
    system.out.line("launcher", "stopping services, then nats-server")
    system.stop()
    system.out.line("launcher", "stopped")
    return 0
