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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.common.bus import Bus
from services.devstack.natsserver import NatsServer, load_or_create_credentials

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
        await self.flush()
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
