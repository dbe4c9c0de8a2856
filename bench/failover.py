"""Risk and execution failover under a steady order flow: the ACTIVE instance of risk
SIGKILLed, then the active execution; each time the standby takes the lease
(`leader.<service>`, rust-common leader.rs) and the orders fill again. Last, a graceful
stop (SIGTERM) of the active execution: it releases the lease once its orders are settled
and the other instance takes it at once.

`make bench BENCH=failover` writes bench/results/failover.json: per kill, the takeover
time (kill -> the first FILLED report of an order sent after the kill), the time until the
new active holds the lease and until it answers on the service API, and what the orders
sent meanwhile became. tests/test_failover.py runs the same and asserts what must hold (not
the times): no stored order lost or doubled (every client_order_id exactly one terminal
report in EXEC), risk's positions equal to the fills, no fill on a check made before the
new risk held the lease, never two active instances (the lease history and the service
API's responders, sampled all along), the standby the new holder.

The system: `System(standby=True)` as `MOONBUS_STANDBY=1 make run` starts it (risk,
risk-standby, execution, execution-standby, each pair contending for its lease) with
market-data and the trading agent; the flow and the checks are bench/chaos.py's (the real
trading agent on 1 s bars plus the operator's paced MARKET orders). The killed process is
restarted by the launcher's supervisor and becomes the standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nats.errors
from nats.aio.msg import Msg

from bench.__main__ import Context
from bench.chaos import ENV, Chaos, Fault, Outcome
from services.contract import subjects as S
from services.devstack.launcher import System
from services.ops.leadership import Lease, read_leadership

SERVICES = ["market-data", "risk", "execution", "trading-agent"]
FAILOVER = ("risk", "execution")
LEASE_TTL_MS = 1500
# The paper venue takes 200 ms per order, so orders are in flight (taken from ORDERS, not
# yet acked) when execution is killed: max_in_flight 4 x (risk 1000 + 200) ms < ack_wait 5 s.
STANDBY_ENV = {**ENV, "MOONBUS__RISK__LEASE_TTL_MS": str(LEASE_TTL_MS),
               "MOONBUS__EXECUTION__LEASE_TTL_MS": str(LEASE_TTL_MS), "MOONBUS__EXECUTION__LATENCY_MS": "200"}


class StandbySystem(System):
    """The launcher's System with a standby of risk and of execution, and SERVICES."""

    def start(self, **options: object) -> System:
        return super().start(**{**options, "standby": True, "services": SERVICES})


@dataclass
class Takeover:
    """One kill of an active instance and what followed."""

    service: str
    killed: str  # the launcher's name of the killed process (risk / risk-standby ...)
    old_holder: str
    in_flight_at_kill: int = 0  # execution: ORDERS messages taken and not acked when killed
    new_holder: str = ""
    lease_taken_s: float | None = None  # kill -> the new holder's lease acquired (its own clock)
    answers_s: float | None = None  # kill -> the service answers $SRV.PING again
    takeover_s: float | None = None  # kill -> the first FILLED order sent after the kill
    outcome: Outcome = field(default_factory=lambda: Outcome(scenario=""))


class Failover:
    """bench/chaos.py's harness on a StandbySystem, plus the lease history and a sampler of
    how many instances of each failover service answer the service API."""

    def __init__(self, moon_dir: Path, rate: float = 4.0) -> None:
        self.chaos = Chaos(moon_dir, rate=rate, env=STANDBY_ENV)
        self.chaos.system = StandbySystem()
        self.history: dict[str, list[Lease]] = {s: [] for s in FAILOVER}  # every lease value written
        self.most_active: dict[str, int] = dict.fromkeys(FAILOVER, 0)  # most responders to one $SRV.PING
        self._sampler: asyncio.Task | None = None

    async def start(self) -> None:
        await self.chaos.start()
        assert self.chaos.nc is not None
        await self.chaos.nc.subscribe(S.kv_subject(S.kv_leader(">")), cb=self._on_lease)
        self._sampler = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._sampler:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.chaos.stop()

    async def _on_lease(self, msg: Msg) -> None:
        service = msg.subject.rsplit(".", 1)[-1]
        with contextlib.suppress(ValueError):
            self.history[service].append(Lease.model_validate_json(msg.data))

    async def _sample(self) -> None:
        """Every 200 ms: how many instances answer `$SRV.PING.<service>` (only the active
        one registers on the service API)."""
        nc = self.chaos.nc
        assert nc is not None
        while True:
            for service in FAILOVER:
                inbox = nc.new_inbox()
                replies: list[Msg] = []

                async def on_reply(msg: Msg, replies: list[Msg] = replies) -> None:
                    replies.append(msg)

                sub = await nc.subscribe(inbox, cb=on_reply)
                with contextlib.suppress(nats.errors.Error):
                    await nc.publish(f"$SRV.PING.{service}", b"", reply=inbox)
                    await asyncio.sleep(0.1)
                await sub.unsubscribe()
                self.most_active[service] = max(self.most_active[service], len(replies))
            await asyncio.sleep(0.1)

    async def lease(self, service: str) -> Lease | None:
        assert self.chaos.nc is not None
        leases, _ = await read_leadership(self.chaos.nc)
        return leases.get(service)

    def holder_process(self, lease: Lease) -> str:
        """The launcher's name of the process holding `lease` (its id ends in -<pid>-<ms>)."""
        pid = int(lease.holder.rsplit("-", 2)[-2])
        for name, child in self.chaos.system.children.items():
            if child.process is not None and child.process.pid == pid and child.running:
                return name
        raise RuntimeError(f"no running process holds {lease.holder}")

    async def kill_active(self, service: str, timeout: float = 60.0,
                          sig: int = signal.SIGKILL) -> tuple[Takeover, Fault]:
        """SIGKILL (a crash: no release, the standby waits out the ttl) or SIGTERM (a graceful
        stop: released once settled, taken at once) the active instance of `service`; until
        another instance holds the lease and the service answers again."""
        old = await self.lease(service)
        assert old is not None and not old.lapsed(), f"no active {service}: {old}"
        killed = self.holder_process(old)
        child = self.chaos.system.children[killed]
        assert child.process is not None
        in_flight = await self.in_flight(until=time.monotonic() + 10) if service == "execution" else 0
        fault = self.chaos._fault()
        child.signal(sig)
        await asyncio.to_thread(child.process.wait)
        takeover = Takeover(service, killed, old.holder, in_flight)
        deadline = time.monotonic() + timeout
        while (new := await self.lease(service)) is None or new.holder == old.holder or new.lapsed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no instance took {service}'s lease\n{self.chaos.system.tail(15)}")
            await asyncio.sleep(0.05)
        takeover.new_holder = new.holder
        takeover.lease_taken_s = round((new.acquired_ts - fault.at_ns) / 1e9, 3)
        if service == "risk":  # no check answered before the new holder had the lease was a real one
            fault.impaired_until_ns = new.acquired_ts
        await self.chaos.until_answers(service, timeout)
        fault.back_s = time.monotonic() - fault.at
        takeover.answers_s = round(fault.back_s, 3)
        return takeover, fault

    async def in_flight(self, until: float) -> int:
        """Orders execution has taken and not acked (its ORDERS consumer's ack pending), as
        soon as there are some (mid-flow), or 0 at `until`."""
        assert self.chaos.nc is not None
        while True:
            reply = await self.chaos.nc.request("$JS.API.CONSUMER.INFO.ORDERS.execution", b"", timeout=2)
            pending = json.loads(reply.data).get("num_ack_pending", 0)
            if pending or time.monotonic() > until:
                return pending
            await asyncio.sleep(0.01)

    async def run_kill(self, service: str, recovery_timeout: float = 60.0, sig: int = signal.SIGKILL) -> Takeover:
        """Kill (or stop, SIGTERM) the active `service`, measure the takeover, audit
        everything so far."""
        takeover, fault = await self.kill_active(service, sig=sig)
        takeover.outcome.scenario = f"{signal.Signals(sig).name.lower()}-active-{service}"
        recovery = await self.chaos.recovery(fault, None, recovery_timeout)
        takeover.takeover_s = None if recovery is None else round(recovery, 3)
        takeover.outcome.recovery_s = takeover.takeover_s
        takeover.outcome.back_s = takeover.answers_s
        await self.chaos.audit(takeover.outcome, fault)
        return takeover

    def overlaps(self, service: str) -> list[str]:
        """Two holders whose acting windows overlap in the lease history: the new one took
        the lease before the old one had stopped acting (and had not released it)."""
        found = []
        history = self.history[service]
        for before, after in zip(history, history[1:]):
            if after.holder != before.holder and not before.released \
                    and after.acquired_ts <= before.acting_until_ts:
                found.append(f"{after.holder} took the lease at {after.acquired_ts}, "
                             f"{before.holder} acted until {before.acting_until_ts}")
        return found


def run(ctx: Context) -> dict:
    return asyncio.run(_run(flow_s=3.0 if ctx.quick else 8.0))


async def _run(flow_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="moonbus-failover-") as moon_dir:
        failover = Failover(Path(moon_dir))
        takeovers: list[Takeover] = []
        try:
            await failover.start()
            for service in FAILOVER:
                await asyncio.sleep(flow_s)
                takeovers.append(await failover.run_kill(service))
            # A graceful stop: the lease released once every order is settled, taken at once.
            await asyncio.sleep(flow_s)
            takeovers.append(await failover.run_kill("execution", sig=signal.SIGTERM))
            for t in takeovers:
                print(f"-- {t.outcome.scenario}: {t.killed} stopped, {t.new_holder} took over; lease {t.lease_taken_s} s, "
                      f"answers {t.answers_s} s, first fill {t.takeover_s} s; "
                      f"{'PASS' if t.outcome.passed else t.outcome.failures}", flush=True)
        finally:
            await failover.stop()
        return {
            "takeovers": [{**{k: v for k, v in asdict(t).items() if k != "outcome"},
                           "orders_stored": t.outcome.orders_stored, "outcomes": t.outcome.outcomes,
                           "lost": len(t.outcome.lost), "doubled": len(t.outcome.doubled),
                           "positions_match": t.outcome.positions_match, "failures": t.outcome.failures}
                          for t in takeovers],
            "most_active_instances": failover.most_active,
            "lease_overlaps": {s: failover.overlaps(s) for s in FAILOVER},
            "lease_ttl_ms": LEASE_TTL_MS,
            "flow": {"operator_orders_per_s": failover.chaos.rate, "seconds_before_each_kill": flow_s},
            "settings": {k: v for k, v in STANDBY_ENV.items() if "METRICS" not in k},
            "note": "takeover_s = kill -> first FILLED report of an order sent after the kill: lease ttl "
                    "(the dead holder's lease ages a whole ttl on the standby's clock) + the standby's poll "
                    "(ttl/10) + its start (snapshot + EXEC rebuild, market warm-up) + the order's trip",
        }


if __name__ == "__main__":
    print(json.dumps(run(Context()), indent=2))
