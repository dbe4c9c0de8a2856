"""The fault suite (`make chaos`; a short version is tests/test_faults.py).

The whole system as `make run` starts it (nats-server with the secure config, the release
binaries, every Python agent and the gateway), a steady flow of orders from the real
trading agent (1 s bars, a strategy that decides BUY or SELL on almost every bar) plus a
paced publisher of MARKET orders as the operator, and then, one after the other, each
fault we can cause:

- SIGKILL of each service (a crash: the launcher's supervisor, where present, restarts
  it; else the harness does, at once);
- kill -9 of nats-server and a start on the same store, and a graceful restart;
- SIGSTOP of a service past its timeouts (risk past execution's risk timeout, execution
  past the ORDERS ack wait, market-data past risk's staleness), then SIGCONT;
- the ORDERS stream full (admin shrinks its max_bytes to what it holds; discard=new
  refuses every new order), then restored;
- EXEC refusing every report (admin sets its max_msg_size to 64 bytes), then restored;
- one sender's clock skewed: ticks published as market-data an hour in the future and
  an hour in the past.

After each fault, from the streams themselves (ORDERS and EXEC read by direct gets) and
risk's positions: every order stored in ORDERS has exactly one terminal report in EXEC
(none lost), no order has two terminal reports or more fills than its quantity (none
doubled), risk's positions equal the signed sum of the fills in EXEC (exact decimals), and
no order stored while risk was impaired was filled on anything but a check answered after
risk was back (fails closed). Recovery time: from the fault to the first FILLED report of
an order sent after the fault (for an agent's fault, an order of that agent).

`python -m bench chaos` writes bench/results/chaos.json and prints a table.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

import nats
import nats.errors
from nats.aio.msg import Msg

from bench.__main__ import Context
from services.common.bus import server_urls
from services.common.streams import read_stream
from services.contract.models import ExecutionReport, OrderStatus, PositionsReply
from services.devstack.launcher import SERVICES, System, all_active, risk_states
from services.devstack.natsserver import free_port

TERMINAL = {OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.FAILED}
QUANTITY = {"BTC-USD": "0.001", "ETH-USD": "0.01", "SOL-USDC": "0.1"}
SEC = 1_000_000_000

# Risk's rules have their own tests: here they must let a steady flow through. Short
# timeouts so each fault is past them within seconds: execution's risk timeout 1 s, the
# ORDERS ack wait 5 s (validated: > max_in_flight x (risk timeout + latency)), risk's
# staleness 5 s. Every metrics port off (several systems may run on this machine).
ENV = {
    "RUST_LOG": "warn",
    "MOONBUS_LOG_LEVEL": "WARNING",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    # No sim books: paper MARKET orders fill at the latest tick (+ slippage), the price a
    # skewed tick could freeze; the book walk has its own tests.
    "MOONBUS__MARKET_DATA__BOOK_DEPTH": "0",
    "MOONBUS__MARKET_DATA__JUMP_PROBABILITY": "0",  # no 1.5 % jumps: a skewed tick is 1 % off
    "MOONBUS__MARKET_DATA__METRICS_ADDR": '""',
    "MOONBUS__RISK__METRICS_ADDR": '""',
    "MOONBUS__EXECUTION__METRICS_ADDR": '""',
    "MOONBUS__RISK__STARTING_CASH": '"10000000"',
    "MOONBUS__RISK__MAX_ORDER_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"10000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"100000000"',
    "MOONBUS__RISK__MAX_DAILY_LOSS": '"10000000"',
    "MOONBUS__RISK__MAX_DRAWDOWN_PCT": "100",
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__RATE_LIMIT_REDUCE_ONLY": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_AGENT": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__RISK__PRICE_BAND_PCT": "0",
    "MOONBUS__EXECUTION__ACK_WAIT_MS": "5000",
    "MOONBUS__EXECUTION__MAX_IN_FLIGHT": "4",
    "MOONBUS__EXECUTION__RISK_TIMEOUT_MS": "1000",
    "MOONBUS__TRADING_AGENT__STRATEGY": "momentum",
    "MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK": "2",
    "MOONBUS__TRADING_AGENT__MOMENTUM_THRESHOLD_PCT": "0.0001",
    "MOONBUS__TRADING_AGENT__METRICS_PORT": "0",
    "MOONBUS__RISK_AGENT__METRICS_PORT": "0",
    "MOONBUS__RISK_AGENT__MAX_LOSS_USD": '"1000000"',
    "MOONBUS__RISK_AGENT__MAX_GAIN_USD": '"1000000"',
    "MOONBUS__SENTIMENT_AGENT__METRICS_PORT": "0",
    "MOONBUS__SENTIMENT_AGENT__INTERVAL_S": "0.5",
    "MOONBUS__SWARM_AGENT__METRICS_PORT": "0",
}
STOP_PAST = {"risk": 3.0, "execution": 7.0, "market-data": 7.0}  # > 1 s, > 5 s, > 5 s


@dataclass
class Outcome:
    """One scenario's figures and verdict."""

    scenario: str
    passed: bool = False
    skipped: str = ""
    recovery_s: float | None = None  # fault -> first FILLED report of an order sent after it
    back_s: float | None = None  # fault -> the service answers again
    orders_stored: int = 0  # in ORDERS during the scenario
    refused_at_publish: dict[str, int] = field(default_factory=dict)  # the operator's PubAck errors
    outcomes: dict[str, int] = field(default_factory=dict)  # terminal status (reason) of its orders
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    positions_match: bool = False
    fail_closed_violations: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Fault:
    """When a fault was caused and, for an impaired risk, the window it was impaired."""

    at_ns: int
    at: float  # monotonic
    impaired_until_ns: int | None = None  # risk back (restarted / resumed): later checks are real
    back_s: float | None = None
    notes: list[str] = field(default_factory=list)
    unstored_until: float = 0.0  # monotonic: reports seen before may not be in EXEC


class Chaos:
    """The system under test, an operator watching it and a paced order publisher."""

    def __init__(self, moon_dir: Path, rate: float = 4.0, env: dict[str, str] | None = None) -> None:
        self.moon_dir = moon_dir
        self.rate = rate
        self.env = {**ENV, "MOONBUS__GATEWAY__PORT": str(free_port()), **(env or {})}
        self.system = System()
        self.nc: nats.NATS | None = None
        self.reports: list[tuple[float, ExecutionReport]] = []  # (monotonic received, report)
        self.seen: dict[str, tuple[float, str]] = {}  # order id -> (monotonic first seen, agent)
        self.refused: list[tuple[float, str]] = []  # operator's publishes refused: (when, why)
        self.errors: Counter[str] = Counter()  # ErrorEvents per service
        self.error_samples: dict[str, list[str]] = defaultdict(list)  # the first few reasons
        # symbol -> (when received, price) of the real ticks of the last ~40 s
        self.genuine: dict[str, collections.deque[tuple[float, Decimal]]] = defaultdict(
            lambda: collections.deque(maxlen=2000))
        self.sent = 0
        self._fills: dict[str, Decimal] = defaultdict(Decimal)  # net fills in EXEC up to _exec_seq
        self._exec_seq = 0
        self._publisher: asyncio.Task | None = None
        self._paused = asyncio.Event()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self, timeout: float = 120.0) -> None:
        await asyncio.to_thread(lambda: self.system.start(port=free_port(), moon_dir=self.moon_dir, out=None,
                                                          env=self.env, write_env_file=False))
        self.nc = await self.connect("operator", allow_reconnect=True, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2)
        await self.nc.subscribe("exec.report.>", cb=self._on_report)
        await self.nc.subscribe("orders.submit.>", cb=self._on_order)
        await self.nc.subscribe("errors.>", cb=self._on_error)
        await self.nc.subscribe("md.tick.sim.>", cb=self._on_tick)
        await self.wait_serving(timeout)
        self._publisher = asyncio.create_task(self._publish_loop())
        # The trading agent orders once it has two closed bars and an ACTIVE verdict.
        await self.until(lambda: any(r.status is OrderStatus.FILLED and r.agent == "trading"
                                     for _, r in self.reports), "a FILLED order of the trading agent", timeout)

    async def stop(self) -> None:
        if self._publisher:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self.nc and not self.nc.is_closed:
            await self.nc.close()
        await asyncio.to_thread(self.system.stop)

    async def connect(self, user: str, **options: object) -> nats.NATS:
        env = self.system.env_for(user)
        options.setdefault("allow_reconnect", False)
        return await nats.connect(server_urls(env["NATS_URL"]), user=user, password=env["NATS_PASSWORD"],
                                  inbox_prefix=f"_INBOX.{user}", name=f"chaos-{user}", **options)

    async def wait_serving(self, timeout: float) -> None:
        """Risk trading every symbol (fresh prices, rebuilt) and execution answering."""
        assert self.nc is not None
        async with risk_states(self.nc) as states:
            await self.until(lambda: all_active(states, QUANTITY), "every symbol ACTIVE", timeout)
            await self.until_answers("execution", timeout)

    # ---- what the operator sees ----------------------------------------------------------

    async def _on_report(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            self.reports.append((time.monotonic(), ExecutionReport.model_validate_json(msg.data)))

    async def _on_order(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError):
            order = json.loads(msg.data)
            self.seen.setdefault(order["client_order_id"], (time.monotonic(), order["agent"]))

    async def _on_error(self, msg: Msg) -> None:
        service = msg.subject.split(".", 1)[1]
        self.errors[service] += 1
        if len(self.error_samples[service]) < 3:
            with contextlib.suppress(ValueError, KeyError):
                self.error_samples[service].append(json.loads(msg.data)["reason"][:160])

    async def _on_tick(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError):
            tick = json.loads(msg.data)
            if abs(tick["ts"] - time.time_ns()) < 5 * SEC:  # not one of the skewed ones
                self.genuine[tick["symbol"]].append((time.monotonic(), Decimal(tick["price"])))

    async def _publish_loop(self) -> None:
        """MARKET orders as the operator at `rate`/s, round-robin over the symbols, BUY and
        SELL in turn (positions stay small); a refused publish is recorded with its reason."""
        assert self.nc is not None
        js = self.nc.jetstream()
        run = os.urandom(3).hex()
        symbols = list(QUANTITY)
        while True:
            await asyncio.sleep(1 / self.rate)
            if self._paused.is_set():
                continue
            self.sent += 1
            n = self.sent
            symbol = symbols[n % len(symbols)]
            order_id = f"cx-{run}-{n}"
            body = {"client_order_id": order_id, "agent": "operator", "symbol": symbol,
                    "side": "BUY" if (n // len(symbols)) % 2 == 0 else "SELL", "type": "MARKET",
                    "quantity": QUANTITY[symbol], "origin_ts": time.time_ns(), "ts": time.time_ns()}
            try:
                await js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                                 headers={"Nats-Msg-Id": order_id}, timeout=2)
            except Exception as e:  # noqa: BLE001 (every refusal is a figure, with its reason)
                why = getattr(e, "description", None) or str(e) or "no PubAck"
                self.refused.append((time.monotonic(), f"{type(e).__name__}: {why}"[:120]))

    async def until(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out ({timeout:.0f}s) waiting for: {what}\n{self.system.tail(15)}")
            await asyncio.sleep(0.05)

    async def answers(self, service: str) -> bool:
        assert self.nc is not None
        try:
            return bool((await self.nc.request(f"$SRV.PING.{service}", b"", timeout=1)).data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError):
            return False

    async def until_answers(self, service: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await self.answers(service):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} does not answer $SRV.PING\n{self.system.tail(15)}")
            await asyncio.sleep(0.1)

    # ---- faults --------------------------------------------------------------------------

    def _fault(self) -> Fault:
        return Fault(at_ns=time.time_ns(), at=time.monotonic())

    async def crash(self, service: str, timeout: float = 60.0) -> Fault:
        """SIGKILL `service` (no clean-up: a crash) and have it back: restarted by the
        launcher's supervisor if it has one, else by us at once."""
        child = self.system.children[service]
        assert child.process is not None
        restarts = self._restarts(service)
        fault = self._fault()
        child.signal(signal.SIGKILL)  # not System.kill: that is a stop, which a supervisor leaves be
        await asyncio.to_thread(child.process.wait)
        if restarts is None:
            fault.notes.append("restarted by the harness (no supervisor in the launcher)")
            started_ns = time.time_ns()
            await asyncio.to_thread(self.system.restart, service)
        else:
            started_ns = await self._restarted(service, restarts, timeout)
        if service == "risk":  # no check before the new process started can be a real one
            fault.impaired_until_ns = started_ns
        await self.until_answers(service, timeout)
        fault.back_s = time.monotonic() - fault.at
        return fault

    def _restarts(self, name: str) -> int | None:
        """The supervisor's restart count of `name` ("nats" too); None: no supervisor."""
        if not getattr(self.system, "supervise", False):
            return None
        return self.system.supervision(name).restarts

    async def _restarted(self, name: str, before: int, timeout: float) -> int:
        """Until the launcher's supervisor has started `name` again and it runs; returns
        when it started (ns)."""
        def running() -> bool:
            if name == "nats":
                return self.system.nats is not None and self.system.nats.running
            return self.system.children[name].running

        await self.until(lambda: self.system.supervision(name).restarts > before and running(),
                         f"the supervisor restarting {name}", timeout)
        return self.system.supervision(name).last_start_ns or time.time_ns()

    async def pause(self, service: str, seconds: float) -> Fault:
        """SIGSTOP `service` for `seconds`, then SIGCONT."""
        fault = self._fault()
        self.system.children[service].signal(signal.SIGSTOP)
        await asyncio.sleep(seconds)
        if service == "risk":
            fault.impaired_until_ns = time.time_ns()
        self.system.children[service].signal(signal.SIGCONT)
        await self.until_answers(service, 60)
        fault.back_s = time.monotonic() - fault.at
        return fault

    async def nats_restart(self, graceful: bool) -> Fault:
        """nats-server killed (-9) or stopped cleanly, then started on the same store and port."""
        server = self.system.nats
        assert server is not None and server.process is not None
        restarts = self._restarts("nats")
        fault = self._fault()
        server.process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        await asyncio.to_thread(server.process.wait)
        if restarts is None:
            fault.notes.append("restarted by the harness (no supervisor in the launcher)")
            started_ns = time.time_ns()
            await asyncio.to_thread(server.start)
        else:
            started_ns = await self._restarted("nats", restarts, 60)
        # Every service is cut off from risk while the bus is down.
        fault.impaired_until_ns = started_ns
        await self.until_answers("risk", 60)
        await self.until_answers("execution", 60)
        fault.back_s = time.monotonic() - fault.at
        return fault

    async def admin_stream_update(self, stream: str, **changes: object) -> dict:
        """As `admin` (the only user that may): change `stream`'s config; returns the old one."""
        nc = await self.connect("admin")
        try:
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)).data)
            config = info["config"]
            made = json.loads((await nc.request(f"$JS.API.STREAM.UPDATE.{stream}",
                                                json.dumps({**config, **changes}).encode(), timeout=5)).data)
            if "error" in made:
                raise RuntimeError(f"{stream} update {changes}: {made['error']}")
            return {**config, "_bytes": info["state"]["bytes"]}
        finally:
            await nc.close()

    async def fill_orders(self, seconds: float) -> Fault:
        """ORDERS full: max_bytes shrunk to what it holds (discard=new refuses every new
        order) for `seconds`, then restored."""
        current = await self.admin_stream_update("ORDERS")
        await self.admin_stream_update("ORDERS", max_bytes=current["_bytes"])
        fault = self._fault()  # from when it is full: an order in flight before may still land
        await asyncio.sleep(seconds)
        await self.admin_stream_update("ORDERS", max_bytes=current["max_bytes"])
        fault.back_s = time.monotonic() - fault.at
        return fault

    async def refuse_exec(self, seconds: float) -> Fault:
        """EXEC refuses every report (as admin: max_msg_size 64 bytes) for `seconds`, then
        restored: execution must leave each order unacked (re-delivered), never settled."""
        current = await self.admin_stream_update("EXEC")
        await self.admin_stream_update("EXEC", max_msg_size=64)
        fault = self._fault()
        await asyncio.sleep(seconds)
        await self.admin_stream_update("EXEC", max_msg_size=current["max_msg_size"])
        fault.unstored_until = time.monotonic()
        fault.back_s = fault.unstored_until - fault.at
        return fault

    async def skew_clock(self, symbol: str = "BTC-USD", hours: float = 1.0) -> Fault:
        """As market-data (the one sender of ticks): ticks of `symbol` an hour in the future,
        then an hour in the past, 1 % off the real price, among the genuine ones."""
        md = await self.connect("market-data")
        fault = self._fault()
        try:
            price = self.genuine[symbol][-1][1]
            for i, (offset, factor) in enumerate([(hours, "1.01"), (-hours, "0.99")] * 3):
                tick = {"venue": "sim", "symbol": symbol, "price": str((price * Decimal(factor)).quantize(price)),
                        "seq": 10**9 + i, "ts": time.time_ns() + int(offset * 3600 * SEC)}
                await md.publish(f"md.tick.sim.{symbol}", json.dumps(tick).encode())
                await md.flush()
                await asyncio.sleep(0.2)
        finally:
            await md.close()
        fault.back_s = time.monotonic() - fault.at
        return fault

    # ---- checking ---------------------------------------------------------------------

    async def recovery(self, fault: Fault, agent: str | None, timeout: float) -> float | None:
        """Fault -> first FILLED report of an order first seen after the fault (of `agent`)."""
        def first() -> float | None:
            for received, r in self.reports:
                seen = self.seen.get(r.client_order_id or "")
                if received > max(fault.at, fault.unstored_until) and r.status is OrderStatus.FILLED \
                        and seen and seen[0] > fault.at \
                        and (agent is None or seen[1] == agent):
                    return received - fault.at
            return None

        deadline = time.monotonic() + timeout
        while (found := first()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return found

    async def stored(self) -> tuple[dict[str, tuple[int, dict]], dict[str, list[ExecutionReport]]]:
        """ORDERS (id -> (stored ns, order)) and EXEC (id -> its reports), read by direct gets."""
        assert self.nc is not None
        # EXEC first: every report read then has its order in ORDERS already.
        reports: dict[str, list[ExecutionReport]] = defaultdict(list)
        async for m in read_stream(self.nc, "EXEC", "exec.report.>", timeout=10):
            r = ExecutionReport.model_validate_json(m.data)
            if r.client_order_id:
                reports[r.client_order_id].append(r)
        orders = {}
        async for m in read_stream(self.nc, "ORDERS", "orders.submit.>", timeout=10):
            with contextlib.suppress(ValueError, KeyError):
                order = json.loads(m.data)
                orders.setdefault(order["client_order_id"], (m.stored_ns, order))
        return orders, reports

    async def net_fills(self) -> dict[str, Decimal]:
        """The signed sum of every fill in EXEC per symbol (read on from where it stopped)."""
        assert self.nc is not None
        async for m in read_stream(self.nc, "EXEC", "exec.report.>", start_seq=self._exec_seq + 1, timeout=10):
            self._exec_seq = m.seq
            r = ExecutionReport.model_validate_json(m.data)
            if r.last_fill_quantity and r.symbol and r.side:
                self._fills[r.symbol] += r.last_fill_quantity if r.side.value == "BUY" else -r.last_fill_quantity
        return dict(self._fills)

    async def positions(self) -> PositionsReply | None:
        assert self.nc is not None
        try:
            reply = await self.nc.request("risk.api.positions", b"{}", timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return None
        return None if b'"error"' in reply.data else PositionsReply.model_validate_json(reply.data)

    async def audit(self, out: Outcome, fault: Fault, settle_timeout: float = 90.0) -> Outcome:
        """Lost, doubled, positions against fills, fail closed: the whole history so far,
        with the figures of the orders stored since `fault`."""
        # Every order stored before now settles (a re-delivery comes after the ack wait,
        # 5 s); the flow goes on, so later ones are the next audit's.
        cutoff = time.time_ns()
        deadline = time.monotonic() + settle_timeout
        while True:
            orders, reports = await self.stored()
            open_ids = [i for i, (stored_ns, _) in orders.items()
                        if stored_ns < cutoff and not any(r.status in TERMINAL for r in reports.get(i, []))]
            if not open_ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        out.lost = sorted(open_ids)[:20]
        for order_id, (stored_ns, order) in orders.items():
            mine = reports.get(order_id, [])
            terminal = [r for r in mine if r.status in TERMINAL]
            filled = sum((r.last_fill_quantity or Decimal(0) for r in mine), Decimal(0))
            if len(terminal) > 1 or filled > Decimal(order["quantity"]):
                out.doubled.append(f"{order_id}: {[r.status.value for r in mine]}, filled {filled}")
            if stored_ns < fault.at_ns:
                continue
            out.orders_stored += 1
            for r in terminal:
                key = r.status.value + (f" ({r.reason.split(':')[0]})" if r.reason else "")  # the code
                out.outcomes[key] = out.outcomes.get(key, 0) + 1
            if fault.impaired_until_ns and stored_ns < fault.impaired_until_ns:
                for r in mine:
                    checked = r.timings.risk_checked_ts or 0
                    if r.last_fill_quantity and checked < fault.impaired_until_ns:
                        out.fail_closed_violations.append(
                            f"{order_id} stored while risk was impaired, filled on a check at {checked}")
        # What subscribers saw: a report published and not stored (EXEC refused it) still
        # reaches them; two different terminal reports of one order is a doubling to them.
        seen: dict[str, set] = defaultdict(set)
        for when, r in self.reports:
            if when >= fault.at and r.client_order_id and r.status in TERMINAL:
                seen[r.client_order_id].add((r.status, r.filled_quantity, r.avg_fill_price))
        conflicting = sorted(i for i, outcomes in seen.items() if len(outcomes) > 1)
        if conflicting:
            out.failures.append(f"{len(conflicting)} orders with two different terminal reports on exec.report.> "
                                f"(one of them not in EXEC): {conflicting[:3]}")
        orphans = [i for i in reports if i not in orders]
        if orphans:
            out.failures.append(f"reports for orders not in ORDERS: {orphans[:5]}")
        out.refused_at_publish = dict(Counter(why for when, why in self.refused if when >= fault.at))
        # The agents keep trading: a symbol matches when risk's position, read before and
        # after the fills in EXEC, equals their sum (nothing moved in between).
        self._paused.set()
        try:
            unmatched: dict[str, tuple] = {}
            pending: set[str] | None = None
            deadline = time.monotonic() + 30
            while (pending is None or pending) and time.monotonic() < deadline:
                before = await self.positions()
                fills = await self.net_fills()
                after = await self.positions()
                if before is None or after is None:
                    await asyncio.sleep(0.2)
                    continue
                held = {p.symbol: p.quantity for p in before.positions}
                again = {p.symbol: p.quantity for p in after.positions}
                if pending is None:
                    pending = {*held, *fills}
                for symbol in list(pending):
                    h, a, f = (d.get(symbol, Decimal(0)) for d in (held, again, fills))
                    if h == a == f:
                        pending.discard(symbol)
                    else:
                        unmatched[symbol] = (str(h), str(a), str(f))
                await asyncio.sleep(0.1)
        finally:
            self._paused.clear()
        out.positions_match = pending == set()
        if not out.positions_match:
            out.failures.append("risk positions != fills in EXEC (risk before, risk after, EXEC): "
                                f"{ {s: unmatched.get(s) for s in (pending or ['?'])} }")
        if out.lost:
            out.failures.append(f"{len(open_ids)} stored orders without a terminal report: {out.lost[:5]}")
        if out.doubled:
            out.failures.append(f"doubled: {out.doubled[:5]}")
        if out.fail_closed_violations:
            out.failures.append(f"filled without risk: {out.fail_closed_violations[:5]}")
        if out.recovery_s is None and not out.skipped:
            out.failures.append("no FILLED report of an order sent after the fault")
        out.passed = not out.failures and not out.skipped
        return out

    async def skew_checks(self, out: Outcome, fault: Fault, symbol: str, watch: float) -> None:
        """After skewed ticks: the symbol keeps filling (nothing frozen, nothing stale) at
        prices near the genuine ones."""
        await asyncio.sleep(watch)
        # From 0.5 s after the last skewed tick: a genuine one (every 20 ms) has come since.
        since = fault.at + (fault.back_s or 0) + 0.5
        late = [(t, r) for t, r in self.reports if t > since and r.symbol == symbol]
        stale = [r for _, r in late if r.status is OrderStatus.REJECTED and "stale" in (r.reason or "")]
        if stale:
            out.failures.append(f"{len(stale)} {symbol} orders REJECTED as stale after the skewed ticks: "
                                f"{stale[0].reason}")
        fills = [r for _, r in late if r.last_fill_price]
        if not fills:
            out.failures.append(f"no {symbol} fill in the {watch:.0f} s after the skewed ticks")
        # Each fill against the genuine ticks of the half second before it was reported.
        genuine = list(self.genuine[symbol])
        off = []
        for t, r in late:
            near = [p for when, p in genuine if t - 0.5 <= when <= t]
            if r.last_fill_price and near and all(abs(r.last_fill_price / p - 1) > Decimal("0.005") for p in near):
                off.append(f"{r.last_fill_price} (genuine {near[-1]})")
        if off:
            out.failures.append(f"{len(off)} {symbol} fills more than 0.5% from the genuine price: {off[:3]}")


# ---- scenarios ---------------------------------------------------------------------------

Inject = Callable[[Chaos], Awaitable[Fault]]


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Inject
    agent: str | None = None  # recovery counts this agent's orders only
    watch: float = 0.0  # extra seconds of flow after the fault before the audit


def _crash(service: str) -> Inject:
    return lambda chaos: chaos.crash(service)


def _pause(service: str) -> Inject:
    return lambda chaos: chaos.pause(service, STOP_PAST[service])


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    *[Scenario(f"sigkill-{name}", _crash(name), agent="trading" if name == "trading-agent" else None)
      for name in SERVICES],
    Scenario("nats-kill9-restart", lambda c: c.nats_restart(graceful=False)),
    Scenario("nats-graceful-restart", lambda c: c.nats_restart(graceful=True)),
    *[Scenario(f"sigstop-{name}", _pause(name)) for name in STOP_PAST],
    Scenario("orders-stream-full", lambda c: c.fill_orders(5.0)),
    Scenario("exec-store-refuses", lambda c: c.refuse_exec(5.0)),
    Scenario("clock-skew-ticks", lambda c: c.skew_clock(), watch=8.0),
]}

# The short version (tests/test_faults.py): one of each kind.
SHORT = ["sigkill-execution", "sigkill-risk", "sigkill-trading-agent", "nats-kill9-restart", "sigstop-execution",
         "orders-stream-full", "clock-skew-ticks"]


async def run_scenario(chaos: Chaos, name: str, recovery_timeout: float = 90.0) -> Outcome:
    scenario = SCENARIOS[name]
    out = Outcome(scenario=name)
    fault = await scenario.inject(chaos)
    out.back_s = None if fault.back_s is None else round(fault.back_s, 2)
    out.notes += fault.notes
    recovery = await chaos.recovery(fault, scenario.agent, recovery_timeout)
    out.recovery_s = None if recovery is None else round(recovery, 2)
    if name == "clock-skew-ticks":
        await chaos.skew_checks(out, fault, "BTC-USD", scenario.watch)
    elif scenario.watch:
        await asyncio.sleep(scenario.watch)
    if name == "orders-stream-full" and not any(when >= fault.at for when, _ in chaos.refused):
        out.failures.append("no order was refused while ORDERS was full")
    return await chaos.audit(out, fault)


# ---- `make chaos` ------------------------------------------------------------------------


def run(ctx: Context) -> dict:
    names = SHORT if ctx.quick else list(SCENARIOS)
    return asyncio.run(_run(names, rate=4.0 if ctx.quick else 8.0, flow_s=5.0 if ctx.quick else 20.0))


async def _run(names: list[str], rate: float, flow_s: float) -> dict:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="moonbus-chaos-") as moon_dir:
        chaos = Chaos(Path(moon_dir), rate=rate)
        started = time.monotonic()
        try:
            await chaos.start()
            for name in names:
                print(f"-- {name}", flush=True)
                await asyncio.sleep(flow_s)  # steady flow before each fault
                try:
                    outcome = await run_scenario(chaos, name)
                except Exception as e:  # noqa: BLE001 (a scenario that breaks is a failed one, the run goes on)
                    outcome = Outcome(scenario=name, failures=[f"{type(e).__name__}: {str(e)[:400]}"])
                outcomes.append(outcome)
                print(f"   {'PASS' if outcome.passed else 'FAIL'} recovery {outcome.recovery_s} s, "
                      f"back {outcome.back_s} s; {outcome.failures or ''}", flush=True)
        finally:
            seconds = time.monotonic() - started
            await chaos.stop()
    print(table(outcomes))
    filled = sum(1 for _, r in chaos.reports if r.status is OrderStatus.FILLED)
    return {
        "scenarios": [asdict(o) for o in outcomes],
        "passed": sum(o.passed for o in outcomes),
        "failed": [o.scenario for o in outcomes if not o.passed],
        "orders_sent_by_operator": chaos.sent,
        "orders_seen": len(chaos.seen),
        "orders_seen_by_agent": dict(Counter(agent for _, agent in chaos.seen.values())),
        "filled_reports": filled,
        "error_events": dict(chaos.errors),
        "error_samples": dict(chaos.error_samples),
        "seconds": round(seconds, 1),
        "flow": {"operator_orders_per_s": rate, "seconds_before_each_fault": flow_s,
                 "trading_agent": "momentum, lookback 2 bars of 1 s, threshold 0.0001 %"},
        "settings": {k: v for k, v in ENV.items() if "METRICS" not in k},
    }


def table(outcomes: list[Outcome]) -> str:
    rows = [("scenario", "result", "recovery s", "back s", "stored", "lost", "doubled", "positions", "notes")]
    for o in outcomes:
        rows.append((o.scenario, "PASS" if o.passed else ("SKIP" if o.skipped else "FAIL"),
                     "-" if o.recovery_s is None else f"{o.recovery_s:.2f}",
                     "-" if o.back_s is None else f"{o.back_s:.2f}", str(o.orders_stored), str(len(o.lost)),
                     str(len(o.doubled)), "=" if o.positions_match else "!=",
                     "; ".join(o.failures + o.notes)[:80]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
