"""Run the whole moonbus system on this machine, without Docker (`make run`).

Starts nats-server (secure config, one user per service), writes `.moon/nats.env`
with the operator's credentials, then every service as a child process with its own
NATS user. Each line a child prints is shown with a fixed-width, coloured service
name, like docker compose. A child that dies is reported and the rest keep running.
Ctrl+C / SIGTERM stops the services (SIGTERM, then SIGKILL after 10 s) and
nats-server last.

The same class runs a subset of the system in tests:

    system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk"],
                            out=None)
    try:
        system.wait_for_output("market-data", r"connected to NATS", timeout=30)
        env = system.env_for("operator")        # NATS_URL / NATS_USER / NATS_PASSWORD
    finally:
        print(system.tail())                    # last lines of every service, on failure
        system.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from services.common import config
from services.devstack.natsserver import (
    REPO_ROOT,
    SERVICE_USERS,
    NatsServer,
    NatsServerError,
    load_or_create_credentials,
    write_nats_env,
)
from services.devstack.certs import ensure_tls_files

DEFAULT_PORT = 4222


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

    def argv(self, repo_root: Path) -> list[str]:
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
        ServiceSpec("gateway", ("-m", "services.gateway"), "python"),
    ]
}

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
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.start_error: str | None = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def _add(self, text: str) -> None:
        with self._cond:
            self.lines.append(text)
            self._cond.notify_all()
        self.out.line(self.name, text)

    def start(self) -> None:
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
        if not self.stopping:
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

    def wait_for(self, pattern: str, timeout: float) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for text in self.lines:
                    if regex.search(text):
                        return text
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.name}: no output line matching {pattern!r} within {timeout:.0f}s "
                        f"({'running' if self.running else describe_exit(self.returncode)}); last lines:\n"
                        + "\n".join(self.lines)
                    )
                self._cond.wait(min(remaining, 0.5))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class System:
    """nats-server plus a chosen set of services, as child processes."""

    def __init__(self, repo_root: Path = REPO_ROOT, *, keep_lines: int = 500) -> None:
        self.repo_root = Path(repo_root)
        self.keep_lines = keep_lines
        self.nats: NatsServer | None = None
        self.children: dict[str, Child] = {}
        self.out = Output(None, [])
        self.moon_dir: Path | None = None

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
        """
        specs = [SERVICES[s] if isinstance(s, str) and s in SERVICES else s
                 for s in (list(SERVICES) if services is None else services)]
        unknown = [s for s in specs if not isinstance(s, ServiceSpec)]
        if unknown:
            raise ValueError(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)}")
        names = [spec.name for spec in specs]
        not_users = [n for n in names if n not in SERVICE_USERS]
        if not_users:
            raise ValueError(f"service(s) {not_users} have no NATS user; users: {', '.join(SERVICE_USERS)}")
        if port is None:
            port = int(os.environ.get("MOONBUS_NATS_PORT", DEFAULT_PORT))
        self.moon_dir = Path(moon_dir) if moon_dir else self.repo_root / ".moon"
        self.out = Output(out, ["nats", "launcher", *names], colour)

        credentials = load_or_create_credentials(self.moon_dir)
        self.nats = NatsServer(
            store_dir=self.moon_dir,  # JetStream keeps its data in <moon_dir>/jetstream
            credentials=credentials,
            port=port,
            host=host,
            log_path=self.moon_dir / "nats-server.log",
            on_line=lambda text: self.out.line("nats", text),
            monitor_port=monitor_port or None,
            tls=ensure_tls_files(self.moon_dir / "tls", [host]) if tls else None,
        )
        self.nats.start(timeout=nats_timeout)
        monitor = f", monitoring on {self.nats.monitor_url}" if self.nats.monitor_url else ""
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
            for spec in specs:
                name = spec.name
                child_env = {**base, **self.nats.env_for(name)}
                child = Child(name, spec.argv(self.repo_root), child_env, self.repo_root, self.out, self.keep_lines)
                self.children[name] = child
                if spec.kind == "rust" and not Path(child.argv[0]).exists():
                    child.start_error = f"{child.argv[0]} not found: build it with `make setup` (cargo build --release)"
                    child._add(f"[launcher] {child.start_error}")
                    continue
                child.start()
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

    def output(self, name: str) -> list[str]:
        """The last lines of a service ("nats" for nats-server)."""
        if name == "nats":
            return list(self.nats.lines) if self.nats else []
        return list(self.children[name].lines)

    def returncode(self, name: str) -> int | None:
        """None while the service runs (or never started: see Child.start_error)."""
        return self.children[name].returncode

    def running(self, name: str) -> bool:
        return self.children[name].running

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of nats-server and of every service, for a failure message."""
        parts = []
        for name in ["nats", *self.children]:
            text = self.output(name)[-lines:]
            state = ""
            if name in self.children:
                child = self.children[name]
                state = f" ({child.start_error or ('running' if child.running else describe_exit(child.returncode))})"
            parts.append(f"---- {name}{state} ----\n" + "\n".join(text))
        return "\n".join(parts)

    def wait_for_output(self, name: str, pattern: str, timeout: float = 30.0) -> str:
        """Block until a line of `name` matches the regex `pattern`; returns the line."""
        return self.children[name].wait_for(pattern, timeout)

    async def await_output(self, name: str, pattern: str, timeout: float = 30.0) -> str:
        """`wait_for_output` for async tests (does not block the event loop)."""
        return await asyncio.to_thread(self.wait_for_output, name, pattern, timeout)

    # ---- one service (fault tests) ------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Stop one service with `sig` (default SIGKILL: a crash, no clean-up) and wait until
        it is gone (SIGKILL after `timeout`); returns its exit code. The others keep running."""
        child = self.children[name]
        if child.process is None:
            return None
        child.stopping = True
        child.signal(sig)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.signal(signal.SIGKILL)
            child.process.wait()
        child.join_output()
        return child.returncode

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
        child.start()

    # ---- stopping -----------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every service, SIGKILL what is left after `timeout`, then stop NATS."""
        children = [c for c in self.children.values() if c.process is not None]
        for child in children:
            child.stopping = True
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
        if self.nats is not None:
            self.nats.stop()

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
    parser.add_argument("--no-colour", "--no-color", action="store_true", help="no ANSI colours")
    args = parser.parse_args(argv)

    services = [s.strip() for s in args.services.split(",") if s.strip()] or None
    try:
        table = config.load(None if "MOONBUS_CONFIG" in os.environ else REPO_ROOT / "moonbus.toml")
        nats_cfg = config.section(table, "nats", NatsConfig)
    except Exception as e:  # a bad [nats] section or override: one line, exit 1
        print(f"moonbus: config: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    system = System()
    try:
        system.start(port=args.port, host=args.host, moon_dir=args.moon_dir, services=services,
                     colour=False if args.no_colour else None, tls=nats_cfg.tls,
                     monitor_port=nats_cfg.monitor_port)
    except (NatsServerError, ValueError) as e:
        print(f"moonbus: {e}", file=sys.stderr)
        return 1
    env_file = args.moon_dir / "nats.env"
    system.out.line("launcher", f"operator credentials for the nats CLI: source {env_file} && nats sub 'md.>'")
    system.out.line("launcher", "Ctrl+C stops everything")
    while not stop.wait(0.5):
        pass
    system.out.line("launcher", "stopping services, then nats-server")
    system.stop()
    system.out.line("launcher", "stopped")
    return 0
