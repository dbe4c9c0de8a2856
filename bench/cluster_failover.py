"""A 3-node NATS cluster under a steady order flow: the node that leads ORDERS killed, then
a second node (1 of 3 left: JetStream has no quorum), then both back.

`make bench BENCH=cluster_failover` writes bench/results/cluster_failover.json: how long no
order was filled around each step, read from EXEC itself (the stored time of each fill),
how long the cluster took to elect a new ORDERS leader, what the publishers were told while
there was no quorum. tests/test_cluster.py runs the same and asserts what must hold (not
the times): no stored order lost or doubled, risk's positions equal to the fills, nothing
stored without a quorum, the flow filling again once the nodes are back.

The system: `System(cluster=3)` as `MOONBUS_CLUSTER=3 make run` starts it (three
nats-server nodes routed on loopback, every stream at R3, each service given every
node as a seed) with market-data, risk, execution and the trading agent; the order flow
and the checks are bench/chaos.py's (the real trading agent on 1 s bars plus the
operator's paced MARKET orders).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.__main__ import Context
from bench.chaos import ENV, Chaos, Outcome
from services.common.streams import read_stream
from services.contract.models import ExecutionReport
from services.devstack.launcher import System
from services.devstack.natsserver import NatsCluster

NODES = 3
SERVICES = ["market-data", "risk", "execution", "trading-agent"]
SEC = 1_000_000_000


class ClusterSystem(System):
    """The launcher's System with a NODES-node cluster and SERVICES, whatever Chaos asks."""

    def start(self, **options: object) -> System:
        return super().start(**{**options, "cluster": NODES, "services": SERVICES})

    @property
    def cluster(self) -> NatsCluster:
        assert isinstance(self.nats, NatsCluster)
        return self.nats


def cluster_chaos(moon_dir: Path, rate: float = 4.0) -> Chaos:
    """bench/chaos.py's harness on a ClusterSystem."""
    chaos = Chaos(moon_dir, rate=rate, env=ENV)
    chaos.system = ClusterSystem()
    return chaos


@dataclass
class Step:
    """One change to the cluster: when (monotonic and wall ns), which node, what followed."""

    name: str
    node: str
    at: float
    at_ns: int
    leader_before: str | None = None
    leader_after: str | None = None
    leader_elected_s: float | None = None  # the step -> a node other than `node` leads ORDERS
    first_fill_s: float | None = None  # the step -> first fill stored in EXEC after it
    no_fill_s: float | None = None  # last fill stored before the step -> first one after


@dataclass
class Failover:
    steps: list[Step] = field(default_factory=list)
    outcome: Outcome = field(default_factory=lambda: Outcome(scenario="cluster-failover"))
    no_quorum_s: float = 0.0
    stored_without_quorum: list[str] = field(default_factory=list)  # orders stored while 1 of 3 ran
    refused_without_quorum: dict[str, int] = field(default_factory=dict)  # the operator's publishes
    fills_stored: int = 0


async def _until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (found := await asyncio.to_thread(condition)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out ({timeout:.0f}s) waiting for {what}")
        await asyncio.sleep(0.1)
    return found


def _leader(cluster: NatsCluster) -> str | None:
    try:
        return cluster.stream_leader("ORDERS")
    except (OSError, ValueError):
        return None


async def _kill(chaos: Chaos, name: str, node: str) -> Step:
    system = chaos.system
    assert isinstance(system, ClusterSystem)
    step = Step(name, node, time.monotonic(), time.time_ns(), leader_before=_leader(system.cluster))
    await asyncio.to_thread(system.kill_nats, node)
    return step


async def run_failover(chaos: Chaos, hold_s: float = 5.0, timeout: float = 60.0) -> Failover:
    """Kill the ORDERS leader, wait for fills again; kill the new leader (no quorum) for
    `hold_s`; start both again; wait for fills; audit the whole run (bench/chaos.py)."""
    system = chaos.system
    assert isinstance(system, ClusterSystem)
    cluster = system.cluster
    result = Failover()
    first = await _until(lambda: _leader(cluster), timeout, "a leader of ORDERS")
    # 1. the node that leads ORDERS
    kill1 = await _kill(chaos, "kill the ORDERS leader", str(first))
    result.steps.append(kill1)
    kill1.leader_after = str(await _until(lambda: (lead := _leader(cluster)) not in (None, first) and lead,
                                          timeout, "a new ORDERS leader"))
    kill1.leader_elected_s = round(time.monotonic() - kill1.at, 2)
    fault = chaos._fault()
    fault.at, fault.at_ns = kill1.at, kill1.at_ns
    if await chaos.recovery(fault, None, timeout) is None:
        raise TimeoutError(f"no fill within {timeout:.0f}s of killing {first}\n{system.tail(15)}")
    # 2. a second node, the new leader: one node left, no JetStream quorum
    kill2 = await _kill(chaos, "kill the new leader (no quorum)", kill1.leader_after)
    result.steps.append(kill2)
    await asyncio.sleep(hold_s)
    # 3. both back
    back = Step("both back", f"{kill1.node}+{kill2.node}", time.monotonic(), time.time_ns())
    result.no_quorum_s = round(back.at - kill2.at, 2)
    await asyncio.to_thread(system.restart_nats, kill2.node)
    await asyncio.to_thread(system.restart_nats, kill1.node)
    await asyncio.to_thread(cluster.wait_ready, timeout, placement=False)  # the streams exist
    back.leader_after = _leader(cluster)
    back.leader_elected_s = round(time.monotonic() - back.at, 2)
    result.steps.append(back)
    restored = chaos._fault()
    restored.at, restored.at_ns = back.at, back.at_ns
    recovery = await chaos.recovery(restored, None, timeout)
    result.outcome.recovery_s = None if recovery is None else round(recovery, 2)
    await asyncio.sleep(2.0)  # a little flow after, then the audit from the first kill on
    result.outcome = await chaos.audit(result.outcome, fault)
    # What EXEC says: when each fill was stored, and the orders ORDERS took without a quorum.
    assert chaos.nc is not None
    fills = []
    async for m in read_stream(chaos.nc, "EXEC", "exec.report.>", start_ns=kill1.at_ns - 30 * SEC, timeout=10):
        if ExecutionReport.model_validate_json(m.data).last_fill_quantity:
            fills.append(m.stored_ns)
    result.fills_stored = len(fills)
    for step in result.steps:
        before = [t for t in fills if t < step.at_ns]
        after = [t for t in fills if t >= step.at_ns]
        if after:
            step.first_fill_s = round((after[0] - step.at_ns) / SEC, 2)
            if before:
                step.no_fill_s = round((after[0] - before[-1]) / SEC, 2)
    grace = SEC // 2  # a write the leader had committed just before it was killed
    async for m in read_stream(chaos.nc, "ORDERS", "orders.submit.>", start_ns=kill2.at_ns + grace, timeout=10):
        if m.stored_ns < back.at_ns:
            result.stored_without_quorum.append(m.msg_id)
    refused: dict[str, int] = {}
    for when, why in chaos.refused:
        if kill2.at <= when < back.at:
            refused[why] = refused.get(why, 0) + 1
    result.refused_without_quorum = refused
    return result


# ---- `make bench BENCH=cluster_failover` ---------------------------------------------------


def run(ctx: Context) -> dict:
    return asyncio.run(_run(flow_s=3.0 if ctx.quick else 10.0))


async def _run(flow_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="moonbus-cluster-") as moon_dir:
        chaos = cluster_chaos(Path(moon_dir))
        started = time.monotonic()
        try:
            await chaos.start()
            await asyncio.sleep(flow_s)
            result = await run_failover(chaos)
        finally:
            await chaos.stop()
    out = result.outcome
    for step in result.steps:
        print(f"{step.name:34} {step.node:16} leader {step.leader_before} -> {step.leader_after} "
              f"in {step.leader_elected_s} s; no fill for {step.no_fill_s} s (first fill {step.first_fill_s} s after)")
    print(f"{'PASS' if out.passed else 'FAIL'}: {out.orders_stored} orders stored since the first kill, "
          f"lost {len(out.lost)}, doubled {len(out.doubled)}, positions {'=' if out.positions_match else '!='} fills; "
          f"without quorum {result.no_quorum_s} s: {len(result.stored_without_quorum)} stored, "
          f"refused {result.refused_without_quorum}; {out.failures or ''}")
    return {
        "nodes": NODES,
        "services": SERVICES,
        "replicas": 3,
        "steps": [asdict(s) for s in result.steps],
        "no_quorum_s": result.no_quorum_s,
        "stored_without_quorum": len(result.stored_without_quorum),
        "refused_without_quorum": result.refused_without_quorum,
        "fills_stored": result.fills_stored,
        "outcome": asdict(out),
        "passed": out.passed and not result.stored_without_quorum,
        "seconds": round(time.monotonic() - started, 1),
        "flow": {"operator_orders_per_s": chaos.rate, "seconds_before_the_first_kill": flow_s,
                 "trading_agent": "momentum, lookback 2 bars of 1 s, threshold 0.0001 %"},
    }
