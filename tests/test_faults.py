"""The fault suite, short version (the long one: `make chaos`, bench/chaos.py).

One whole system for the module (nats-server, the release binaries, every agent, the
gateway, as `make run` starts them) with a steady flow of orders from the real trading
agent and the operator; then one fault of each kind, in turn: SIGKILL of execution, of
risk and of the trading agent; kill -9 of nats-server and a start on the same store;
SIGSTOP of execution past the ORDERS ack wait; the ORDERS stream full; ticks from a
skewed clock; EXEC refusing every report (see KNOWN). After each, from the streams themselves and risk's answer: no stored order
lost, none doubled, risk's positions equal to the fills in EXEC (exact), no order filled
while risk was impaired without a check made after it was back, and a FILLED report of an
order sent after the fault (the time it took is measured by `make chaos`, not asserted).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.chaos import SHORT, Chaos, run_scenario
from services.devstack.launcher import SERVICES
from services.devstack.natsserver import REPO_ROOT

pytestmark = pytest.mark.e2e

FLOW_S = 3.0  # steady flow before each fault


@pytest.fixture(scope="module")
async def chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chaos]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    chaos = Chaos(tmp_path_factory.mktemp("faults-moon"), rate=4.0)
    try:
        await chaos.start()
        yield chaos
    finally:
        await chaos.stop()
        print(chaos.system.tail(30))  # shown by pytest only when a test failed


# EXEC refusing every report: a report EXEC refuses still reaches the subscribers of
# exec.report.> (a JetStream publish is delivered to core subscribers whether stored or
# not). Execution keeps that outcome and stores it as it was when the order comes back,
# so subscribers never see a second, different fill of one order (found by this suite).
KNOWN = ["exec-store-refuses"]


@pytest.mark.parametrize("scenario", [*SHORT, *KNOWN])
async def test_fault_loses_and_doubles_nothing_and_recovers(chaos: Chaos, scenario: str) -> None:
    await asyncio.sleep(FLOW_S)
    outcome = await run_scenario(chaos, scenario)
    assert outcome.orders_stored > 0, f"{scenario}: no order was stored after the fault: the flow stopped"
    assert not outcome.failures, f"{scenario}: {outcome.failures}\n{chaos.system.tail(20)}"
    assert outcome.passed
