"""Supervision by `make run`'s launcher (services/devstack/launcher.py, supervisor.py) on the
real system: nats-server with the secure config and the release-built Rust services, on a
free port in a temp dir.

- rust-risk SIGKILLed from outside: restarted with backoff, KV `supervisor.risk` says
  running with restarts=1 and the signal, an ErrorEvent on `errors.supervisor`, orders
  filled again; `moon status` and the gateway's /api/supervision show it;
- rust-risk with a bad config crashes at once: a crash loop, flagged, restarted only after
  each (growing) backoff, never in a busy loop; `moon status` fails with CRASH LOOP;
- stop() while a restart is pending returns without waiting for it and starts nothing;
- a service that exits 0 on its own is left stopped;
- nats-server SIGKILLed: restarted on the same port and store, the services reconnect and
  orders are filled again, the supervisor's record of it is stored once it is back;
- the backoff and crash-loop rules themselves (Track, RestartPolicy);
- compose keeps its restart policies and gets the supervisor's password hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from typer.testing import CliRunner

from services.cli.main import app as moon_app
from services.common.bus import Bus as ServiceBus
from services.common.bus import flush, inbox_prefix
from services.contract import subjects as S
from services.contract.models import ErrorEvent, ExecutionReport, OrderStatus
from services.devstack.launcher import SERVICES, ServiceSpec, System
from services.devstack.natsserver import REPO_ROOT, free_port
from services.devstack.supervisor import RestartPolicy, Track
from services.gateway.app import create_app
from services.ops.supervision import Supervised, read_supervision

pytestmark = pytest.mark.e2e

WAIT = 120.0  # generous: a loaded 2-core machine is allowed, a stuck service is not
TERMINAL = {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED,
            OrderStatus.FAILED}
ENV = {
    "RUST_LOG": "warn",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    # Risk's rules have their own tests; here they must let orders through.
    "MOONBUS__RISK__STARTING_CASH": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"10000000"',
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
}
STAND_IN = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("stand-in up", flush=True)
while True:
    time.sleep(0.1)
"""


def need_binaries() -> None:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    need_binaries()
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk", "execution"],
                            out=None, env=ENV)
    try:
        yield system
    finally:
        system.stop()
        print(system.tail(40))  # shown by pytest only when the test failed


class Operator:
    """The operator's connection: orders, reports, errors.supervisor events, KV records."""

    def __init__(self, system: System, nc: nats.NATS) -> None:
        self.system, self.nc = system, nc
        self.reports: dict[str, ExecutionReport] = {}
        self.events: list[ErrorEvent] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, system: System) -> AsyncIterator[Operator]:
        env = system.env_for("operator")
        nc = await nats.connect(env["NATS_URL"], user="operator", password=env["NATS_PASSWORD"],
                                inbox_prefix=inbox_prefix("operator"), max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
        op = cls(system, nc)
        await nc.subscribe(S.ALL_REPORTS, cb=op._on_report)
        await nc.subscribe(S.errors("supervisor"), cb=op._on_event)
        await flush(nc)
        try:
            yield op
        finally:
            await nc.close()

    async def _on_report(self, msg: nats.aio.msg.Msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id and report.status in TERMINAL:
            self.reports[report.client_order_id] = report

    async def _on_event(self, msg: nats.aio.msg.Msg) -> None:
        self.events.append(ErrorEvent.model_validate_json(msg.data))

    async def until(self, condition, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            assert time.monotonic() < deadline, f"timed out waiting for: {what}\n{self.system.tail(30)}"
            await asyncio.sleep(0.1)

    async def order_filled(self) -> bool:
        """One BUY; True once it is FILLED, False when it ended otherwise (risk not ready yet)."""
        order_id = f"sup-{uuid.uuid4().hex[:12]}"
        body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "side": "BUY",
                "type": "MARKET", "quantity": "0.001", "origin_ts": 1, "ts": 1}
        try:
            await self.nc.jetstream().publish(S.orders_submit("operator", "BTC-USD"), json.dumps(body).encode(),
                                              headers={"Nats-Msg-Id": order_id}, timeout=2)
        except Exception:  # nats-server or the stream not back yet
            return False
        deadline = time.monotonic() + 20
        while order_id not in self.reports and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        report = self.reports.get(order_id)
        return report is not None and report.status is OrderStatus.FILLED

    async def records(self) -> dict[str, Supervised]:
        records, problems = await read_supervision(self.nc)
        assert problems == []
        return records

    async def record(self, name: str) -> Supervised | None:
        try:
            return (await self.records()).get(name)
        except Exception:  # nats-server not back yet
            return None


def moon(system: System, *args: str):
    env = {**system.env_for("operator"), "COLUMNS": "220", "NO_COLOR": "1"}
    return CliRunner().invoke(moon_app, list(args), env=env)


async def test_a_killed_risk_is_restarted_recorded_and_orders_flow_again(system: System) -> None:
    async with Operator.connect(system) as op:
        await op.until(op.order_filled, "a first order filled")
        first = system.supervision("risk").pid
        assert (await op.record("risk")).state == "running"

        assert system.crash("risk", signal.SIGKILL) == first
        system.wait_for_state("risk", "running", restarts=1, timeout=WAIT)
        assert system.supervision("risk").pid != first
        assert any("risk exited unexpectedly: killed by signal SIGKILL" in line and "restart #1 in 0.5s" in line
                   for line in system.output("risk"))

        async def recorded() -> bool:
            record = await op.record("risk")
            return record is not None and record.state == "running" and record.restarts == 1

        await op.until(recorded, "KV supervisor.risk: running, restarts=1")
        record = await op.record("risk")
        assert (record.last_signal, record.last_exit, record.crash_loop) == ("SIGKILL", "killed by signal SIGKILL",
                                                                              False)
        assert record.pid == system.supervision("risk").pid and not record.stale()
        assert (await op.record("execution")).restarts == 0

        async def event_seen() -> bool:
            return any(e.subject == S.kv_supervisor("risk") for e in op.events)

        await op.until(event_seen, "an ErrorEvent on errors.supervisor")
        event = next(e for e in op.events if e.subject == S.kv_supervisor("risk"))
        assert event.service == "supervisor" and "SIGKILL" in event.reason and "restart #1" in event.reason

        await op.until(op.order_filled, "an order filled after the restart")

        # moon status (as operator) and the gateway's dashboard API show the same record.
        result = await asyncio.to_thread(moon, system, "status", "--json", "--feed-wait", "5")
        status = json.loads(result.stdout)
        assert status["supervision"]["risk"]["restarts"] == 1
        assert status["supervision"]["risk"]["state"] == "running"
        assert status["supervision"]["nats"]["restarts"] == 0
        text = (await asyncio.to_thread(moon, system, "status", "--feed-wait", "5")).stdout
        assert "restarts" in text and "nats-server" in text

        bus = ServiceBus("gateway")
        gateway = system.env_for("gateway")
        await bus.connect(gateway["NATS_URL"], "gateway", gateway["NATS_PASSWORD"])
        try:
            gw_app = create_app(bus=bus, config={"gateway": {"request_timeout_s": 5}}, token="t", read_token="")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw_app),
                                         base_url="http://127.0.0.1:8080") as client:
                answer = (await client.get("/api/supervision")).json()
        finally:
            await bus.close()
        assert answer["services"]["risk"]["restarts"] == 1 and answer["services"]["risk"]["crash_loop"] is False
        assert answer["services"]["risk"]["stale"] is False and answer["problems"] == []
    system.stop()
    assert system.supervision("risk").state == "stopped" and system.supervision("risk").restarts == 1


async def test_a_service_crashing_at_once_is_a_crash_loop_with_growing_backoff(tmp_path: Path) -> None:
    need_binaries()
    bad = tmp_path / "bad.toml"
    bad.write_text('[risk]\nmax_drawdown_pct = "banana"\n')  # rust-risk refuses it and exits 1
    policy = RestartPolicy(backoff_initial_s=0.2, backoff_max_s=1.6, stable_s=30, loop_crashes=3, loop_window_s=60)
    spec = ServiceSpec("risk", SERVICES["risk"].command, "rust", env=(("MOONBUS_CONFIG", str(bad)),))
    system = System().start(port=free_port(), moon_dir=tmp_path, services=[spec], out=None, restart_policy=policy)
    try:
        async with Operator.connect(system) as op:
            track = system.wait_for_state("risk", "crash_loop", restarts=5, timeout=WAIT)
            starts = list(track.starts)
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            # Each restart came no sooner than its backoff: 0.2, 0.4, 0.8, 1.6, 1.6 (capped).
            for n, gap in enumerate(gaps, start=1):
                assert gap >= policy.backoff(n), f"restart {n} after {gap:.3f}s < {policy.backoff(n)}s: {gaps}"
            assert [policy.backoff(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 1.6, 1.6]
            assert "invalid [risk] section" in "\n".join(system.output("risk"))

            async def looping() -> bool:
                record = await op.record("risk")
                return record is not None and record.state == "crash_loop" and record.restarts >= 5

            await op.until(looping, "KV supervisor.risk: crash_loop")
            record = await op.record("risk")
            assert record.crash_loop and record.recent_crashes >= 3 and record.last_exit_code == 1
            events = [e for e in op.events if e.subject == S.kv_supervisor("risk")]
            assert len(events) >= 3 and any("CRASH LOOP" in e.reason for e in events)
            assert any("invalid [risk] section" in e.excerpt for e in events)

            result = await asyncio.to_thread(moon, system, "status", "--json", "--feed-wait", "1")
            assert result.exit_code == 1
            status = json.loads(result.stdout)
            assert status["supervision"]["risk"]["crash_loop"] is True
            assert any("risk: CRASH LOOP" in p for p in status["problems"]), status["problems"]
            text = (await asyncio.to_thread(moon, system, "status", "--feed-wait", "1")).stdout
            assert "CRASH LOOP" in text
    finally:
        system.stop()
        print(system.tail(20))
    assert system.supervision("risk").state == "stopped"


def test_stop_while_a_restart_is_pending_is_prompt_and_starts_nothing(tmp_path: Path) -> None:
    policy = RestartPolicy(backoff_initial_s=60, backoff_max_s=60)
    specs = [ServiceSpec("risk", ("-c", "import sys; print('giving up', flush=True); sys.exit(3)"), "python")]
    system = System().start(port=free_port(), moon_dir=tmp_path, services=specs, out=None, restart_policy=policy)
    try:
        track = system.wait_for_state("risk", "restarting", timeout=WAIT)
        assert track.restart_due is not None and len(track.starts) == 1
    finally:
        started = time.monotonic()
        system.stop()
        took = time.monotonic() - started
    assert took < policy.backoff_initial_s, f"stop() waited {took:.1f}s: for the pending restart?"
    assert len(system.supervision("risk").starts) == 1 and system.supervision("risk").state == "stopped"
    assert not system.nats.running
    assert sum("giving up" in line for line in system.output("risk")) == 1


def test_a_service_that_exits_0_on_its_own_is_left_stopped(tmp_path: Path) -> None:
    specs = [ServiceSpec("risk", ("-c", "print('done', flush=True)"), "python"),
             ServiceSpec("market-data", ("-c", STAND_IN), "python")]
    system = System().start(port=free_port(), moon_dir=tmp_path, services=specs, out=None)
    try:
        system.wait_for_output("risk", r"exited on its own \(exit code 0\); not restarted", timeout=WAIT)
        system.wait_for_output("market-data", "stand-in up", timeout=WAIT)
        track = system.wait_for_state("risk", "stopped", timeout=WAIT)
        assert track.restarts == 0 and track.exit["last_exit_code"] == 0 and track.restart_due is None
        assert system.running("market-data")
    finally:
        system.stop()
    assert system.returncode("market-data") == 0


async def test_nats_server_killed_is_restarted_and_the_services_reconnect(system: System) -> None:
    async with Operator.connect(system) as op:
        await op.until(op.order_filled, "a first order filled")
        port, store = system.nats.port, system.nats.store_dir
        killed = system.crash_nats(signal.SIGKILL)
        assert killed is not None
        system.wait_for_state("nats", "running", restarts=1, timeout=WAIT)
        assert (system.nats.port, system.nats.store_dir) == (port, store) and system.nats.process.pid != killed
        assert system.supervision("nats").exit["last_signal"] == "SIGKILL"

        # The operator's own client reconnects too; risk, execution and market-data did on their own.
        await op.until(op.order_filled, "an order filled after nats-server came back")
        for name in ("market-data", "risk", "execution"):
            assert system.running(name) and system.supervision(name).restarts == 0, name

        async def recorded() -> bool:
            record = await op.record("nats")
            return record is not None and record.restarts == 1 and record.state == "running"

        await op.until(recorded, "KV supervisor.nats: running, restarts=1 (stored once it was back)")


# ---------------------------------------------------------------- the rules, without processes


def test_backoff_doubles_to_its_cap_and_resets_after_a_stable_run() -> None:
    policy = RestartPolicy(backoff_initial_s=0.5, backoff_max_s=30, stable_s=30, loop_crashes=3, loop_window_s=60)
    track = Track("risk", policy)
    now = 1000.0
    waits = []
    for _ in range(8):
        track.started(1, now)
        now += 1  # up for 1 s each time
        waits.append(track.crashed(1, now, "exit code 1"))
        now += waits[-1]
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert track.state == "crash_loop" and track.record(now).crash_loop
    track.started(1, now)
    assert track.state == "crash_loop"  # still within the window
    assert not track.settle(now + 29) and track.settle(now + 30)
    assert track.state == "running" and not track.in_loop(now + 30)
    now += 31
    assert track.crashed(-9, now, "killed") == 0.5, "a crash after a stable run starts again from the first wait"
    assert track.state == "restarting" and track.exit["last_signal"] == "SIGKILL"


def test_a_crash_loop_is_3_crashes_within_the_window_or_in_a_row() -> None:
    policy = RestartPolicy(stable_s=30, loop_crashes=3, loop_window_s=60)
    spread = Track("x", policy)
    for at in (0.0, 40.0, 80.0, 120.0):  # each after a stable run, never 3 within 60 s
        spread.started(1, at)
        spread.crashed(2, at + 35, "exit code 2")
        assert spread.state == "restarting", at
    for at in (160.0, 162.0):  # then quick ones: 3 within 60 s (115, 155, 161)
        spread.started(1, at)
        spread.crashed(2, at + 0.5 if at == 162.0 else at + 1, "exit code 2")
    assert spread.state == "crash_loop"
    in_a_row = Track("y", policy)
    for at in (0.0, 100.0, 200.0):  # never up long, the crashes far apart (a capped backoff)
        in_a_row.started(1, at)
        in_a_row.crashed(1, at + 1, "exit code 1")
        assert in_a_row.state == ("crash_loop" if at == 200.0 else "restarting")
    assert in_a_row.record(250.0).crash_loop


def test_compose_keeps_its_restart_policies_and_gets_the_supervisor_hash(tmp_path: Path) -> None:
    import yaml

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    # The notifier is off by default: it then exits 0, and `on-failure` leaves it exited
    # (README "Notifications"); on, it restarts on a crash like the others.
    assert compose["services"]["notifier"].get("restart") == "on-failure"
    long_running = [name for name in compose["services"] if name not in ("provision", "credentials", "notifier")]
    assert {"nats", "market-data", "risk", "execution", "gateway"} <= set(long_running)
    for name in long_running:
        assert compose["services"][name].get("restart") == "unless-stopped", name
    # nats-server's hashes come from compose's `credentials` one-shot, the supervisor's too.
    assert "secrets-nats:/run/moonbus:ro" in compose["services"]["nats"]["volumes"]
    subprocess.run([sys.executable, str(REPO_ROOT / "docker/credentials.py"), str(tmp_path / "c")],
                   check=True, capture_output=True, env={**os.environ, "MOONBUS_BCRYPT_COST": "4"})
    assert (tmp_path / "c" / "nats" / "MOONBUS_PW_SUPERVISOR").read_text().startswith('"$2b$')
