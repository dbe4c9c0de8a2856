"""Shared fixtures: one real nats-server (moonbus config, fresh credentials) per test
session, `connect(user)` for a nats-py client logged in as a moonbus user, and
`service_bus(user)` / `running_service(...)` for a Python service in-process.

    async def test_x(nats_server, connect):
        nc = await connect("market-data")          # closed at teardown
        await nc.publish("md.tick.sim.BTC-USD", b"{}")
        nc.errors                                  # errors the server sent (permission violations)
        queue = await nc.collect("md.tick.>")      # every message on the subject, in order

    async def test_y(connect, running_service):
        operator = await connect("operator")
        async with running_service("risk-agent", service.main, CONFIG, operator):
            ...                                    # the service answers $SRV.PING here
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.common.bus import Bus, flush
from services.contract.models import PositionsReply
from services.devstack.launcher import SERVICES, System, all_active, risk_states
from services.devstack.natsserver import NatsServer, find_nats_server, free_port, load_or_create_credentials

REPO_ROOT = Path(__file__).resolve().parents[1]

# nats-server checks a password's bcrypt hash at every connect: at the default cost (11,
# ~0.12 s of CPU per connect) the hundreds of connects of the suite would take minutes.
# The hashes are still bcrypt, made and checked the same way, only cheaper; the
# subprocesses (`make run` in a test, compose) inherit it. tests/test_nats_secrets.py
# checks the default.
os.environ.setdefault("MOONBUS_BCRYPT_COST", "4")


class MoonClient(Client):
    """A nats-py client that records the asynchronous errors the server sends
    (for example `Permissions Violation for Publish to "md.tick.x"`)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[Exception] = []
        self.user: str | None = None

    async def _record_error(self, e: Exception) -> None:
        self.errors.append(e)

    def permission_errors(self) -> list[str]:
        return [str(e) for e in self.errors if "permissions violation" in str(e).lower()]

    async def wait_for_permission_error(self, needle: str, timeout: float = 2.0) -> str:
        """Wait until the server reported a permission violation mentioning `needle`
        (case-insensitive: nats-py lower-cases the server's error text)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for text in self.permission_errors():
                if needle.lower() in text.lower():
                    return text
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"no permission violation about {needle!r} for user {self.user!r}; "
                    f"errors seen: {[str(e) for e in self.errors]}"
                )
            await asyncio.sleep(0.02)

    async def collect(self, subject: str) -> asyncio.Queue[Msg]:
        """Subscribe to `subject`; every message lands in the returned queue."""
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        await self.subscribe(subject, cb=queue.put)
        await flush(self)
        return queue


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for the whole session: free port, temp store, fresh passwords."""
    moon_dir = tmp_path_factory.mktemp("moon")
    server = NatsServer(
        store_dir=moon_dir,  # data in <moon_dir>/jetstream
        credentials=load_or_create_credentials(moon_dir),
        log_path=moon_dir / "nats-server.log",
    )
    with server:
        server.provision()  # ORDERS, EXEC, KV and the durables, as `make run` has them
        yield server


@pytest.fixture
def plain_nats() -> Iterator[str]:
    """The URL of a bare nats-server of this test alone (no JetStream, no users): for
    stand-ins of the JetStream API or of a stream. Killed at teardown."""
    port = free_port()
    server = subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


async def connect_when_up(url: str, timeout: float = 10.0) -> nats.NATS:
    """A plain connection to `url`, once its server (just started) accepts one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await nats.connect(url, allow_reconnect=False, connect_timeout=1)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


ConnectFn = Callable[..., Awaitable[MoonClient]]


@pytest.fixture
async def connect(nats_server: NatsServer) -> AsyncIterator[ConnectFn]:
    """`await connect(user)` -> a connected MoonClient; all are closed at teardown."""
    clients: list[MoonClient] = []

    async def _connect(user: str, **options: object) -> MoonClient:
        nc = MoonClient()
        nc.user = user
        options.setdefault("allow_reconnect", False)
        options.setdefault("inbox_prefix", f"_INBOX.{user}")  # each user may read only its own
        options.setdefault("connect_timeout", 5)
        await nc.connect(
            servers=[nats_server.url],
            user=user,
            password=nats_server.credentials[user],
            name=f"test-{user}",
            error_cb=nc._record_error,
            **options,
        )
        clients.append(nc)
        return nc

    yield _connect
    for nc in clients:
        if not nc.is_closed:
            await nc.close()


ServiceBusFn = Callable[[str], Awaitable[Bus]]


@pytest.fixture
async def service_bus(nats_server: NatsServer) -> AsyncIterator[ServiceBusFn]:
    """`await service_bus(user)` -> a services.common Bus connected as `user`; all are
    closed at teardown (closing twice is fine: a service's main closes its bus too)."""
    buses: list[Bus] = []

    async def _service_bus(user: str) -> Bus:
        bus = Bus(user)
        buses.append(bus)
        await bus.connect(nats_server.url, user, nats_server.credentials[user])
        return bus

    yield _service_bus
    for bus in buses:
        await bus.close()


async def wait_for_service(nc: Client, name: str, task: asyncio.Task, timeout: float = 10.0) -> None:
    """Ready = answers $SRV.PING (a service registers after its subscriptions);
    fails at once, with the task's error, when the service stops during start-up."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if task.done():
            task.result()
            raise AssertionError(f"{name} stopped during start-up")
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not come up")


async def request_when_answered(nc: Client, subject: str, timeout: float = 30.0) -> Any:
    """The reply to `subject`, asked again while nobody subscribes to it yet (a binary
    started with others subscribes when it is ready, not when the one before it is)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await nc.request(subject, b"{}", timeout=2)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"nobody answered {subject} within {timeout:.0f} s") from None
            await asyncio.sleep(0.1)


ServiceMain = Callable[..., Awaitable[None]]


@pytest.fixture
def running_service(service_bus: ServiceBusFn) -> Callable[..., contextlib.AbstractAsyncContextManager[None]]:
    """`async with running_service(user, main, config, nc):` runs `main(stop, bus=..., config=...)`
    as `user` until the block ends (then sets stop and awaits it); the block starts once the
    service answers $SRV.PING, asked through `nc` (e.g. an operator client)."""

    @contextlib.asynccontextmanager
    async def _running(
        user: str, main: ServiceMain, config: dict[str, Any], nc: Client, timeout: float = 10.0
    ) -> AsyncIterator[None]:
        stop = asyncio.Event()
        bus = await service_bus(user)
        task = asyncio.create_task(main(stop, bus=bus, config=config))
        try:
            await wait_for_service(nc, user, task, timeout)
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout)

    return _running


# ---------------------------------------------------------------- the whole system (e2e)
# Tests of the money path through the real binaries (test_money_path, test_exec_algos,
# test_shorts_e2e, test_protection) share these: `from tests.conftest import ...`.

# Risk's rules have their own tests; these let the orders of a test through.
RISK_ROOMY = {
    "MOONBUS__RISK__STARTING_CASH": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"10000000"',
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
}
RISK_UNLIMITED = RISK_ROOMY | {  # ... and a stream of them: no rate or open-order limits
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__RATE_LIMIT_REDUCE_ONLY": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL": "0",
}
MONEY_PATH = ("market-data", "risk", "execution")


@contextlib.contextmanager
def release_system(moon_dir: Path, env: dict[str, str], services: tuple[str, ...] = MONEY_PATH,
                   tail: int = 0) -> Iterator[System]:
    """The launcher's System on a free port in `moon_dir` (nats-server with the secure config,
    the release-built `services`, `env` on top); stopped at the end, then its last `tail` log
    lines printed (pytest shows them when the test failed)."""
    missing = [s.command[0] for s in SERVICES.values()
               if s.name in services and s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    system = System().start(port=free_port(), moon_dir=moon_dir, services=list(services), out=None, env=env)
    try:
        yield system
    finally:
        system.stop()
        if tail:
            print(system.tail(tail))


def system_fixture(env: dict[str, str], services: tuple[str, ...] = MONEY_PATH, tail: int = 0,
                   scope: str = "function") -> Any:
    """A `system` fixture for a test module: `system = system_fixture(ENV, tail=40)`, a fresh
    release_system per test (or per module with scope="module")."""

    @pytest.fixture(scope=scope)
    def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
        with release_system(tmp_path_factory.mktemp("system"), env, services, tail) as system:
            yield system

    return system


async def connect_as(system: System, user: str) -> nats.NATS:
    """A nats-py client of `system` logged in as the moonbus user `user`."""
    env = system.env_for(user)
    return await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                              inbox_prefix=f"_INBOX.{env['NATS_USER']}")


class SystemBus:
    """The operator's connection to a release_system. A subclass says what it keeps of the
    execution reports (`on_report`) and when the system serves (`wait_serving`, usually
    `wait_active` and execution answering)."""

    wait = 120.0  # generous: a loaded 2-core machine is allowed, a stuck service is not
    tail = 40  # log lines of the system in a timeout's message

    def __init__(self, system: System, nc: nats.NATS) -> None:
        self.system = system
        self.nc = nc
        self.js = nc.jetstream()

    @classmethod
    def fixture(cls, name: str = "bus") -> Any:
        """A fixture `name` for a test module (after the subclass): `bus = Bus.fixture()`,
        the subclass connected by `operator` to the module's `system`."""

        @pytest.fixture(name=name)
        async def bus(system: System) -> AsyncIterator[Any]:
            async with cls.operator(system) as bus:
                yield bus

        return bus

    @classmethod
    @contextlib.asynccontextmanager
    async def operator(cls, system: System) -> AsyncIterator[Any]:
        """Connected as operator, seeing exec.report.>, once the system serves; closed after."""
        nc = await connect_as(system, "operator")
        bus = cls(system, nc)
        try:
            await nc.subscribe("exec.report.>", cb=bus.on_report)
            await bus.wait_serving()
            yield bus
        finally:
            await nc.close()

    async def on_report(self, msg: Msg) -> None:
        raise NotImplementedError

    async def wait_serving(self) -> None:
        raise NotImplementedError

    async def wait_active(self, symbols: Any) -> None:
        """Until risk's verdict on every one of `symbols` is ACTIVE (rebuilt, fresh prices)."""
        async with risk_states(self.nc) as states:
            await self.until(lambda: all_active(states, symbols), f"every symbol ACTIVE: {states}")

    async def positions(self) -> PositionsReply | None:
        """risk.api.positions; None while risk is not ready (or not there)."""
        try:
            reply = await self.nc.request("risk.api.positions", b"{}", timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
        if b'"error"' in reply.data:
            return None
        return PositionsReply.model_validate_json(reply.data)

    async def until(self, condition: Callable[[], Any], what: str, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.wait if timeout is None else timeout)
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{self.system.tail(self.tail)}"
            await asyncio.sleep(0.05)
