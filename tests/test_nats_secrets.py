"""Secrets around nats-server, through the project's own code (natsserver.py, launcher.py):

- the server is given bcrypt hashes, never the plaintext (it does not warn about plaintext
  passwords), the hashes are cached beside the credentials and made again only for a
  password that changed;
- moonbus.conf and cluster.conf read as written (nats-server warns, and goes on, about a
  field it reads otherwise: an unquoted `sync_interval: 2m` was 2,000,000 seconds);
- the HTTP monitoring port listens on 127.0.0.1 only, even when clients may connect from
  anywhere;
- `[nats] tls = true`: a CA and a server certificate are made, TLS is required, and
  every client (nats-py, the services' Bus, `moon`, a real Rust service) checks the
  server against that CA: without TLS or with another CA there is no connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import bcrypt
import httpx
import nats
import nats.errors
import pytest
from cryptography import x509

from services.cli.connection import CliError, Target
from services.cli.connection import connect as cli_connect
from services.common import config
from services.devstack import natsserver
from services.common.bus import Bus
from services.devstack.launcher import NatsConfig, System
from services.devstack.natsserver import (
    HASHES_FILE,
    REPO_ROOT,
    NatsServer,
    free_port,
    load_or_create_credentials,
    password_env_var,
    password_hashes,
)
from services.common.tls import client_ssl_context
from services.devstack.certs import ensure_tls_files

PLAINTEXT_WARNING = "Plaintext passwords detected"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def process_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# ---- bcrypt -------------------------------------------------------------------------------

def test_hashes_are_bcrypt_cached_0600_and_redone_only_for_a_changed_password(tmp_path, monkeypatch):
    creds = {"market-data": "mone-password", "operator": "mtwo-password", "risk": "mthree"}
    cache = tmp_path / HASHES_FILE
    first = password_hashes(creds, cache, cost=5)
    for user, hashed in first.items():
        assert hashed.startswith("$2b$05$"), hashed
        assert bcrypt.checkpw(creds[user].encode(), hashed.encode())
        assert creds[user] not in cache.read_text()
    assert mode(cache) == 0o600

    # A new process (no in-memory memo) reads them back from the cache without hashing.
    monkeypatch.setattr(natsserver, "_HASH_MEMO", {})
    made: list[bytes] = []
    real_hashpw = bcrypt.hashpw
    monkeypatch.setattr(bcrypt, "hashpw", lambda pw, salt: made.append(pw) or real_hashpw(pw, salt))
    assert password_hashes(creds, cache, cost=5) == first
    assert made == []

    # One password changes: only its hash is made again.
    monkeypatch.setattr(natsserver, "_HASH_MEMO", {})
    changed = {**creds, "operator": "mnew-password"}
    second = password_hashes(changed, cache, cost=5)
    assert made == [b"mnew-password"]
    assert {u: h for u, h in second.items() if u != "operator"} == {u: h for u, h in first.items() if u != "operator"}
    assert bcrypt.checkpw(b"mnew-password", second["operator"].encode())
    assert json.loads(cache.read_text())["operator"]["hash"] == second["operator"]

    # Another cost: every hash is made again at that cost.
    third = password_hashes(changed, cache, cost=6)
    assert all(h.startswith("$2b$06$") for h in third.values())


def test_default_cost_is_11_and_the_environment_can_change_it(tmp_path, monkeypatch):
    monkeypatch.delenv(natsserver.BCRYPT_COST_ENV, raising=False)
    assert natsserver.default_bcrypt_cost() == natsserver.BCRYPT_COST == 11
    started = time.perf_counter()
    hashed = password_hashes({"operator": "mpassword"}, None)["operator"]
    assert hashed.startswith("$2b$11$"), hashed
    print(f"one bcrypt hash at cost 11: {time.perf_counter() - started:.3f}s")
    monkeypatch.setenv(natsserver.BCRYPT_COST_ENV, "6")
    assert password_hashes({"operator": "mpassword"}, None)["operator"].startswith("$2b$06$")
    for bad in ("3", "17", "eleven"):
        monkeypatch.setenv(natsserver.BCRYPT_COST_ENV, bad)
        with pytest.raises(natsserver.NatsServerError, match=natsserver.BCRYPT_COST_ENV):
            natsserver.default_bcrypt_cost()


async def test_server_gets_only_hashes_and_does_not_warn_about_plaintext(tmp_path):
    system = System().start(port=free_port(), moon_dir=tmp_path, services=[], out=None)
    try:
        creds = json.loads((tmp_path / "credentials.json").read_text())
        env = process_env(system.nats.process.pid)
        argv = Path(f"/proc/{system.nats.process.pid}/cmdline").read_bytes().decode()
        for user, password in creds.items():
            given = env[password_env_var(user)]
            assert given.startswith('"$2b$') and given.endswith('"'), (user, given)
            assert bcrypt.checkpw(password.encode(), given.strip('"').encode())
            assert password not in "\n".join(env.values()) + argv, f"{user}'s plaintext reached nats-server"
        assert mode(tmp_path / HASHES_FILE) == 0o600

        # The clients log in with the plaintext; a wrong password is refused.
        op = system.env_for("operator")
        nc = await nats.connect(op["NATS_URL"], user="operator", password=op["NATS_PASSWORD"], allow_reconnect=False)
        await nc.flush()
        await nc.close()
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(op["NATS_URL"], user="operator", password=op["NATS_PASSWORD"] + "x",
                               allow_reconnect=False, max_reconnect_attempts=0)
        log = "\n".join(system.output("nats"))
        assert "Server is ready" in log
        assert PLAINTEXT_WARNING not in log
    finally:
        system.stop()


def test_the_plaintext_check_would_see_plaintext(tmp_path, monkeypatch):
    """Control for the test above: the same start with plaintext passwords makes
    nats-server print the warning the test looks for."""
    monkeypatch.setattr(natsserver, "password_hashes", lambda creds, *a, **k: dict(creds))
    with NatsServer(store_dir=tmp_path, credentials=load_or_create_credentials(tmp_path)) as server:
        deadline = time.monotonic() + 5
        while "Server is ready" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert PLAINTEXT_WARNING in server.output()


# ---- monitoring ---------------------------------------------------------------------------

def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: only picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_monitoring_listens_on_loopback_only_even_when_clients_may_come_from_anywhere(tmp_path):
    monitor = free_port()
    system = System().start(port=free_port(), host="0.0.0.0", moon_dir=tmp_path, services=[], out=None,
                            monitor_port=monitor)
    try:
        assert system.nats.monitor_url == f"http://127.0.0.1:{monitor}"
        varz = httpx.get(f"http://127.0.0.1:{monitor}/varz", timeout=5).json()
        assert (varz["host"], varz["http_host"], varz["http_port"]) == ("0.0.0.0", "127.0.0.1", monitor)
        assert any(f"http monitor on 127.0.0.1:{monitor}" in line for line in system.output("nats"))
        address = non_loopback_address()
        if address is not None:
            # The client port is reachable on that address, the monitoring port is not.
            socket.create_connection((address, system.nats.port), timeout=2).close()
            with pytest.raises(OSError):
                socket.create_connection((address, monitor), timeout=2).close()
    finally:
        system.stop()


def test_monitoring_is_off_unless_asked_for(tmp_path):
    with NatsServer(store_dir=tmp_path, credentials=load_or_create_credentials(tmp_path)) as server:
        assert server.monitor_url is None
        assert "-m" not in server.argv()
        assert not any("http monitor" in line for line in server.lines)


def test_the_config_reads_as_written(tmp_path):
    """nats-server only warns about a field it reads otherwise than written (an unquoted
    `sync_interval: 2m` is the number 2,000,000, taken as seconds: an fsync every 23 days):
    moonbus.conf reads without one, and JetStream fsyncs every 2 minutes as README says."""
    monitor = free_port()
    with NatsServer(store_dir=tmp_path, credentials=load_or_create_credentials(tmp_path),
                    monitor_port=monitor) as server:
        jsz = httpx.get(f"http://127.0.0.1:{monitor}/jsz", timeout=5).json()
        warnings = [line for line in server.lines if "invalid use of field" in line or "[WRN]" in line]
    assert warnings == []
    assert jsz["config"]["sync_interval"] == 120 * 10**9, jsz["config"]


def test_the_cluster_config_reads_as_written():
    """cluster.conf (moonbus.conf plus the routes, with the variables the launcher gives a
    node) passes nats-server's own check (`-t`) without a warning."""
    conf = REPO_ROOT / "proto" / "nats"
    passwords = re.findall(r"\$(MOONBUS_PW_[A-Z_]+)", (conf / "moonbus.conf").read_text())
    routes = natsserver.Routes(listen="127.0.0.1:6222", peers=("127.0.0.1:6223",), password="x")
    env = {**os.environ, **{name: "x" for name in passwords}, **routes.env()}
    checked = subprocess.run([natsserver.find_nats_server(), "-c", str(conf / "cluster.conf"), "-t"],
                             env=env, capture_output=True, text=True, timeout=30)
    output = (checked.stdout + checked.stderr).strip()
    # One line, "... is valid (sha256:...)"; a warning is a line of its own before it.
    assert checked.returncode == 0 and "is valid" in output and "\n" not in output, output


def test_make_run_settings_come_from_the_nats_section():
    shipped = config.section(config.load(REPO_ROOT / "moonbus.toml", {}), "nats", NatsConfig)
    assert (shipped.tls, shipped.monitor_port) == (False, 8222)
    switched = config.section(config.load(REPO_ROOT / "moonbus.toml", {"MOONBUS__NATS__TLS": "true",
                                                                       "MOONBUS__NATS__MONITOR_PORT": "0"}),
                              "nats", NatsConfig)
    assert (switched.tls, switched.monitor_port) == (True, 0)


# ---- TLS ----------------------------------------------------------------------------------

def test_tls_files_are_private_named_for_every_host_and_reused(tmp_path):
    files = ensure_tls_files(tmp_path / "tls", ["10.1.2.3"])
    assert mode(tmp_path / "tls") == 0o700
    for path in (files.key, tmp_path / "tls" / "ca-key.pem", files.ca, files.cert):
        assert mode(path) == 0o600, path
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "nats"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.1.2.3"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    before = {p: p.read_bytes() for p in (files.ca, files.cert, files.key)}
    assert ensure_tls_files(tmp_path / "tls", ["10.1.2.3"]) == files
    assert {p: p.read_bytes() for p in before} == before, "valid files are reused"
    # A new name: a new server certificate from the same CA.
    ensure_tls_files(tmp_path / "tls", ["10.9.9.9"])
    assert files.ca.read_bytes() == before[files.ca]
    assert files.cert.read_bytes() != before[files.cert]
    renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    renewed.verify_directly_issued_by(ca)


def rust_binary(name: str) -> Path:
    path = REPO_ROOT / "target" / "release" / name
    if not path.exists():
        pytest.fail(f"{path} missing: run `make setup` (or `make test`)")
    return path


async def ping(nc, service: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = await nc.request(f"$SRV.PING.{service}", b"", timeout=0.5)
            return json.loads(reply.data)["name"] == service
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.2)
    return False


def start_rust(binary: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MOONBUS_PW_"))}
    return subprocess.Popen([str(binary)], env={**base, "RUST_LOG": "info", **env}, cwd=REPO_ROOT,
                            stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_tls_switch_requires_tls_and_every_client_checks_the_ca(tmp_path):
    risk = rust_binary("rust-risk")
    system = System().start(port=free_port(), moon_dir=tmp_path / "moon", services=[], out=None, tls=True)
    try:
        op = system.env_for("operator")
        port = system.nats.port
        ca = op["NATS_CA"]
        assert op["NATS_URL"] == f"tls://127.0.0.1:{port}"
        assert Path(ca) == (tmp_path / "moon" / "tls" / "ca.pem").resolve()
        assert "--tls" in system.nats.argv()
        assert any("TLS required for client connections" in line for line in system.output("nats"))
        # The launcher's own readiness probe completes the handshake: no error in the log.
        assert not any("[ERR]" in line for line in system.output("nats")), system.output("nats")
        env_file = (tmp_path / "moon" / "nats.env").read_text()
        assert f"export NATS_URL=tls://127.0.0.1:{port}" in env_file and f"export NATS_CA={ca}" in env_file

        # nats-py with the CA: connected over TLS.
        nc = await nats.connect(op["NATS_URL"], user="operator", password=op["NATS_PASSWORD"],
                                tls=client_ssl_context(ca), allow_reconnect=False)
        assert nc._transport.__class__.__name__ == "TcpTransport"
        assert nc._transport._io_writer.get_extra_info("ssl_object") is not None, "not a TLS connection"

        # Without TLS: the server refuses to go on (plain socket: INFO says TLS is required;
        # a plaintext CONNECT is taken for a failed TLS handshake: closed, never a PONG).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            info = json.loads(s.recv(4096).decode().split(" ", 1)[1])
            assert info["tls_required"] is True
            s.sendall(b'CONNECT {"user":"operator","pass":"%s","verbose":false}\r\nPING\r\n'
                      % op["NATS_PASSWORD"].encode())
            answer, closed = b"", False
            try:
                while chunk := s.recv(4096):
                    answer += chunk
                closed = True
            except ConnectionResetError:
                closed = True
            assert closed and b"PONG" not in answer and b"+OK" not in answer, answer
        with pytest.raises(Exception):  # nats-py without a TLS context
            await nats.connect(f"nats://127.0.0.1:{port}", user="operator", password=op["NATS_PASSWORD"],
                               allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)

        # Another CA: the server's certificate is refused.
        other = ensure_tls_files(tmp_path / "other-ca")
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(op["NATS_URL"], user="operator", password=op["NATS_PASSWORD"],
                               tls=client_ssl_context(other.ca), allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=3)

        # The services' Bus and `moon` take the CA from NATS_CA / .moon/nats.env.
        bus = Bus("gateway")
        env = system.env_for("gateway")
        await bus.connect(env["NATS_URL"], env["NATS_USER"], env["NATS_PASSWORD"], ca=env["NATS_CA"])
        assert bus.client.is_connected
        await bus.close()
        target = Target.resolve(env_file=tmp_path / "moon" / "nats.env")
        assert (target.url, target.ca) == (op["NATS_URL"], ca)
        session = await cli_connect(target)
        await session.nc.close()
        wrong = Target(target.url, target.user, target.password, None, str(other.ca))
        with pytest.raises(CliError, match="cannot reach NATS"):
            await cli_connect(wrong)

        # A real Rust service: with another CA it never gets on the bus ...
        bad = start_rust(risk, {**system.env_for("risk"), "NATS_CA": str(other.ca)}, tmp_path / "risk-bad.log")
        try:
            assert not await ping(nc, "risk", timeout=4), "rust-risk connected with a CA that did not sign the server"
            assert bad.poll() is None, "it keeps retrying"
        finally:
            stop(bad)
        # ... with the right one (what `make run` gives it) it serves over TLS.
        good = start_rust(risk, system.env_for("risk"), tmp_path / "risk.log")
        try:
            assert await ping(nc, "risk", timeout=30), (tmp_path / "risk.log").read_text()[-3000:]
        finally:
            stop(good)
        await nc.close()
        assert not any(PLAINTEXT_WARNING in line for line in system.output("nats"))
    finally:
        system.stop()
