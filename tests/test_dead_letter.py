"""Dead letters end to end (issue 11), on the real system: nats-server with the secure config
and the release-built rust-market-data, rust-risk and rust-execution (launcher, temp dir).

An order whose report can never be stored is not redelivered for ever: execution naks it
with a growing delay and says why on errors.execution each time; after max_deliver (10)
deliveries the server gives up and its MAX_DELIVERIES advisory (kept in DEADLETTER) makes
execution REJECT the order `dead_letter` (one report, one errors.execution event). Orders
after it flow, and a restarted execution (which scans DEADLETTER) writes no second report.

How an order "cannot be settled", for real: as admin, EXEC's max_msg_size is set just above
the size of an ordinary report; an order with an unknown field gets a REJECTED report whose
reason (the decoder's message, up to 500 characters) makes it larger than that, so the
stream refuses it every time. The dead-letter report itself is short and fits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from services.common import config
from services.common.bus import flush
from services.common.streams import read_stream
from services.contract.models import ErrorEvent, ExecutionReport, OrderStatus
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

WAIT = 120.0
ENV = {
    "RUST_LOG": "warn",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
    # A failed write comes back after 20 ms, 40 ms, 80 ms, then every 100 ms: the 10
    # deliveries take about a second here (about 5 minutes with the defaults).
    "MOONBUS__EXECUTION__RETRY_DELAY_MS": "20",
    "MOONBUS__EXECUTION__RETRY_MAX_DELAY_MS": "100",
}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["market-data", "risk", "execution"],
                            out=None, env=ENV, supervise=False)
    try:
        yield system
    finally:
        system.stop()
        print(system.tail(60))  # shown by pytest only when the test failed


@pytest.fixture
async def nc(system: System) -> AsyncIterator[nats.NATS]:
    env = system.env_for("operator")
    client = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                                inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    try:
        yield client
    finally:
        await client.close()


async def until(condition, what: str, system: System, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for: {what}\n{system.tail(30)}"
        await asyncio.sleep(0.05)


async def submit(nc: nats.NATS, order_id: str, **extra: object) -> None:
    body = {"client_order_id": order_id, "agent": "operator", "symbol": "BTC-USD", "side": "BUY", "type": "MARKET",
            "quantity": "0.001", "origin_ts": 1, "ts": 1, **extra}
    await nc.jetstream().publish("orders.submit.operator.BTC-USD", json.dumps(body).encode(),
                                 headers={"Nats-Msg-Id": order_id})


async def stored(nc: nats.NATS) -> list[tuple[int, ExecutionReport]]:
    return [(len(m.data), ExecutionReport.model_validate_json(m.data))
            async for m in read_stream(nc, "EXEC", "exec.report.>")]


async def test_an_order_that_cannot_be_settled_is_rejected_dead_letter_once(system: System, nc: nats.NATS) -> None:
    reports: dict[str, list[ExecutionReport]] = {}
    errors: list[ErrorEvent] = []

    async def on_report(msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        reports.setdefault(report.client_order_id or "", []).append(report)

    async def on_error(msg) -> None:
        errors.append(ErrorEvent.model_validate_json(msg.data))

    await nc.subscribe("exec.report.>", cb=on_report)
    await nc.subscribe("errors.execution", cb=on_error)
    await flush(nc)

    # An ordinary order first (once risk has prices), to learn the size of a report.
    async def first_fill() -> None:
        n = 0
        while not any(r.status == OrderStatus.FILLED for rs in reports.values() for r in rs):
            n += 1
            await submit(nc, f"dl-warm-{n}")
            await asyncio.sleep(1.0)
    await asyncio.wait_for(first_fill(), WAIT)
    ordinary = max(size for size, r in await stored(nc) if r.status == OrderStatus.FILLED)

    # As admin: EXEC takes reports up to a little more than an ordinary one.
    limit = ordinary + 64
    cfg = config.load(environ=ENV)
    cfg["jetstream"] = {"EXEC": {"max_msg_size": limit}}
    assert system.nats is not None
    assert system.nats.provision(cfg) == {"EXEC": [f"max_msg_size: 65536 -> {limit}"]}

    # Its REJECTED report (a 500-character reason) never fits: nak'd, said, redelivered...
    await submit(nc, "dl-poison", **{"x" * 600: 1})
    # (A core subscriber of exec.report.> also sees the refused publishes: only EXEC counts.)
    await until(lambda: any((r.reason or "").startswith("dead_letter:") for r in reports.get("dl-poison", [])),
                "the dead-letter report", system)
    [report] = [r for _, r in await stored(nc) if r.client_order_id == "dl-poison"]
    assert report.status == OrderStatus.REJECTED and report.symbol == "BTC-USD"
    assert (report.reason or "").startswith("dead_letter: not settled after 10 deliveries"), report
    failures = [e for e in errors if e.reason.startswith("report_not_stored:") and "dl-poison" in e.excerpt]
    assert len(failures) == 10, [e.reason for e in errors]
    assert "message size exceeds maximum allowed" in failures[0].reason, failures[0].reason
    assert failures[0].reason.endswith("the order comes back in 20ms"), failures[0].reason
    await until(lambda: any(e.reason.startswith("dead_letter:") for e in errors), "the dead-letter event", system)
    [event] = [e for e in errors if e.reason.startswith("dead_letter:")]
    assert event.subject == "orders.submit.operator.BTC-USD" and "dl-poison" in event.excerpt
    assert event.reason == report.reason

    # The server kept the advisory, naming the order.
    advisories = [json.loads(m.data) async for m in read_stream(
        nc, "DEADLETTER", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.execution")]
    assert [(a["stream"], a["consumer"], a["deliveries"]) for a in advisories] == [("ORDERS", "execution", 10)]

    # Later orders flow.
    await submit(nc, "dl-after")
    await until(lambda: any(r.status == OrderStatus.FILLED for r in reports.get("dl-after", [])),
                "the next order filled", system)

    # A restarted execution scans DEADLETTER and finds the order settled: no second report.
    system.kill("execution")
    system.restart("execution")
    for _ in range(200):
        try:
            await nc.request("exec.api.version", b"{}", timeout=0.5)
            break
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.2)
    await submit(nc, "dl-after-restart")
    await until(lambda: any(r.status == OrderStatus.FILLED for r in reports.get("dl-after-restart", [])),
                "an order filled after the restart", system)
    in_exec = [r for _, r in await stored(nc) if r.client_order_id == "dl-poison"]
    assert len(in_exec) == 1 and in_exec[0].reason == report.reason
    assert len([e for e in errors if e.reason.startswith("dead_letter:")]) == 1
