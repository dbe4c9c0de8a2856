"""Risk and execution failover (README "Failover"): the system with a standby of each
(`MOONBUS_STANDBY=1 make run`), a steady order flow, then SIGKILL of the ACTIVE risk and of
the ACTIVE execution in turn. Each time: the standby takes the lease and the orders fill
again; no stored order lost or doubled (every client_order_id exactly one terminal report
in EXEC, never more filled than ordered), risk's positions equal the fills in EXEC, no fill
on a risk check made before the new risk held the lease, and never two instances active
(the lease history's acting windows never overlap; at most one instance answers the
service API at any sample). The harness is bench/failover.py (`make bench BENCH=failover`
measures the takeover times; here only correctness is asserted).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator

import pytest
from typer.testing import CliRunner

from bench.failover import FAILOVER, Failover
from services.cli.main import app as moon_app
from services.devstack.launcher import SERVICES
from services.devstack.natsserver import REPO_ROOT

pytestmark = pytest.mark.e2e

FLOW_S = 3.0  # steady flow before each kill


@pytest.fixture(scope="module")
async def failover(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Failover]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    failover = Failover(tmp_path_factory.mktemp("failover-moon"))
    try:
        await failover.start()
        yield failover
    finally:
        await failover.stop()
        print(failover.chaos.system.tail(30))  # shown by pytest only when a test failed


async def test_both_pairs_start_with_one_active_and_one_standby(failover: Failover) -> None:
    for service in FAILOVER:
        lease = await failover.lease(service)
        assert lease is not None and not lease.lapsed(), service
        active = failover.holder_process(lease)
        standby = {service, f"{service}-standby"} - {active}
        assert all(failover.chaos.system.children[s].running for s in standby), "the standby runs"
    await failover.chaos.until(lambda: all(failover.most_active.values()), "a sample of the service API", 10)
    assert failover.most_active == {"risk": 1, "execution": 1}, "only the active instance answers"


@pytest.mark.parametrize("service", FAILOVER)
async def test_killing_the_active_instance_hands_over_and_loses_or_doubles_nothing(failover: Failover,
                                                                                  service: str) -> None:
    await asyncio.sleep(FLOW_S)
    takeover = await failover.run_kill(service)
    out = takeover.outcome
    assert takeover.new_holder != takeover.old_holder
    if service == "execution":  # killed mid-flow: orders taken and not acked come back to the new active
        assert takeover.in_flight_at_kill > 0
    assert out.orders_stored > 0, "no order was stored after the kill: the flow stopped"
    assert out.recovery_s is not None, "no order sent after the kill was filled"
    assert not out.lost and not out.doubled, out.failures
    assert out.positions_match, out.failures
    assert not out.fail_closed_violations, out.failures
    assert not out.failures, f"{out.failures}\n{failover.chaos.system.tail(20)}"
    # The killed process came back (the launcher's supervisor) as the standby.
    await failover.chaos.until(lambda: failover.chaos.system.children[takeover.killed].running,
                               f"{takeover.killed} restarted", 30)
    lease = await failover.lease(service)
    assert lease is not None and lease.holder == takeover.new_holder
    assert lease.takeovers >= 1 and lease.previous_holder == takeover.old_holder


async def test_a_graceful_stop_releases_the_lease_and_hands_over(failover: Failover) -> None:
    await asyncio.sleep(FLOW_S)
    takeover = await failover.run_kill("execution", sig=signal.SIGTERM)
    out = takeover.outcome
    released = [lease for lease in failover.history["execution"] if lease.holder == takeover.old_holder]
    assert released and released[-1].released, "the stopped instance released its lease"
    assert takeover.new_holder != takeover.old_holder
    assert out.recovery_s is not None and not out.failures, f"{out.failures}\n{failover.chaos.system.tail(20)}"


async def test_never_two_active(failover: Failover) -> None:
    for service in FAILOVER:
        holders = {lease.holder for lease in failover.history[service]}
        assert len(holders) >= 2, f"{service}: no takeover seen in the lease history {holders}"
        assert not failover.overlaps(service)
    assert failover.most_active == {"risk": 1, "execution": 1}, failover.most_active


async def test_moon_status_shows_the_active_instances_and_the_last_takeover(failover: Failover) -> None:
    env = {**failover.chaos.system.env_for("operator"), "COLUMNS": "220", "NO_COLOR": "1"}
    result = await asyncio.to_thread(CliRunner().invoke, moon_app, ["status", "--json", "--feed-wait", "1"], env=env)
    leadership = json.loads(result.stdout)["leadership"]
    for service in FAILOVER:
        lease = await failover.lease(service)
        assert lease is not None
        shown = leadership[service]
        assert shown["holder"] == lease.holder and not shown["lapsed"]
        assert shown["takeover_ts"] and shown["previous_holder"] and shown["takeovers"] >= 1
    result = await asyncio.to_thread(CliRunner().invoke, moon_app, ["status", "--feed-wait", "1"], env=env)
    text = result.stdout
    assert "failover (active instance)" in text
    for service in FAILOVER:
        assert (await failover.lease(service)).holder in text  # type: ignore[union-attr]
