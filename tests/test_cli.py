"""`moon`, the CLI, against the session's real nats-server as the `operator` user.

market-data and risk are stand-ins registered on the NATS service API like the real
ones (services.common.bus.Bus.serve), so `moon status` sees them in $SRV.INFO/$SRV.STATS;
orders and reports are real messages in the real ORDERS / EXEC streams. The CLI runs
in a thread (typer's CliRunner), the fakes on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app
from services.cli.status import Store, read_stores, store_problems
from services.common.bus import Bus, RequestError
from services.contract.models import (
    AccountState,
    ExecutionReport,
    FeedStatus,
    KillSwitchRequest,
    KillSwitchState,
    MonitorStartRequest,
    MonitorStatusReply,
    MonitorStatusRequest,
    MonitorStopRequest,
    OrderRequest,
    OrderStatus,
    Position,
    PositionsReply,
    PositionsRequest,
    PricesReply,
    PricesRequest,
    Side,
    Tick,
    Timings,
    TradingState,
    encode,
    now_ns,
)
from services.devstack.natsserver import REPO_ROOT, free_port, write_nats_env
from services.common.streams import MSG_ID_HEADER, jetstream_spec
from tests.conftest import connect_when_up

D = Decimal
PRICES = {"CLA-USD": "100.5", "CLB-USD": "0.00012345"}


def uid() -> str:
    return uuid.uuid4().hex[:8].upper()


def tick(symbol: str, price: str = "100.5") -> Tick:
    return Tick(venue="sim", symbol=symbol, price=D(price), bid=D(price), ask=D(price), seq=1, ts=now_ns())


@pytest.fixture
def moon(nats_server):
    """`await moon(*args, env=...)` runs the CLI as `operator` (NATS_* from the environment)."""
    runner = CliRunner()
    base = {**nats_server.env_for("operator"), "COLUMNS": "220", "NO_COLOR": "1"}

    async def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        return await asyncio.to_thread(runner.invoke, app, list(args), env={**base, **(env or {})})

    return run


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moon: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- stand-ins for market-data and risk


@pytest.fixture
async def market_data(service_bus) -> AsyncIterator[Bus]:
    bus = await service_bus("market-data")
    monitors: dict[str, MonitorStartRequest] = {}

    async def prices(request: PricesRequest) -> PricesReply:
        return PricesReply(prices={s: tick(s, PRICES[s]) for s in request.symbols if s in PRICES},
                           missing=[s for s in request.symbols if s not in PRICES])

    def status() -> MonitorStatusReply:
        return MonitorStatusReply.model_validate({"monitors": [m.model_dump() for m in monitors.values()]})

    async def start(request: MonitorStartRequest) -> MonitorStatusReply:
        monitors[request.symbol] = request
        return status()

    async def stop(request: MonitorStopRequest) -> MonitorStatusReply:
        if monitors.pop(request.symbol, None) is None:
            raise RequestError("not_found", f"no monitor for {request.symbol}")
        return status()

    async def show(request: MonitorStatusRequest) -> MonitorStatusReply:
        return status()

    await bus.serve("stand-in market data", {
        "md.api.prices": (PricesRequest, prices),
        "md.api.monitor.start": (MonitorStartRequest, start),
        "md.api.monitor.stop": (MonitorStopRequest, stop),
        "md.api.monitor.status": (MonitorStatusRequest, show),
    })
    yield bus


@pytest.fixture
async def risk(service_bus) -> AsyncIterator[list[KillSwitchRequest]]:
    """Serves positions and the kill switch; yields the kill-switch requests it got."""
    bus = await service_bus("risk")
    seen: list[KillSwitchRequest] = []
    switch = KillSwitchState(engaged=False, actor="nobody", reason="", changed_ts=1)

    async def positions(request: PositionsRequest) -> PositionsReply:
        position = Position(symbol="CLA-USD", quantity=D("10.5"), avg_price=D("95"), mark_price=D("100.5"),
                            realized_pnl=D("-1.25"), unrealized_pnl=D("57.75"), fees=D("1"), notional=D("1055.25"))
        account = AccountState(
            state=TradingState.REDUCE_ONLY, reasons=["max_daily_loss"], cash=D("9000"), equity=D("10055.25"),
            peak_equity=D("10100"), drawdown_pct=0.44, realized_pnl=D("-1.25"), unrealized_pnl=D("57.75"),
            day_pnl=D("56.5"), fees=D("1"), gross_exposure=D("1055.25"), open_positions=1, kill_switch=switch.engaged,
            ts=now_ns(),
        )
        return PositionsReply(positions=[position], account=account)

    async def killswitch(request: KillSwitchRequest) -> KillSwitchState:
        nonlocal switch
        seen.append(request)
        if request.action != "status":
            switch = KillSwitchState(engaged=request.action == "engage", actor=request.actor, reason=request.reason,
                                     changed_ts=now_ns(), flatten_orders=2 if request.flatten else None)
        return switch

    await bus.serve("stand-in risk", {"risk.api.positions": (PositionsRequest, positions),
                                      "risk.api.killswitch.operator": (KillSwitchRequest, killswitch)})
    yield seen


# ---------------------------------------------------------------- requests


async def test_price(moon, market_data) -> None:
    result = await moon("price", "CLA-USD", "CLB-USD")
    assert result.exit_code == 0, result.output
    assert "CLA-USD" in result.stdout and "100.5" in result.stdout
    assert "0.00012345" in result.stdout  # money exactly as on the wire
    result = await moon("price", "CLA-USD", "--json")
    assert json.loads(result.stdout)["prices"]["CLA-USD"]["price"] == "100.5"

    result = await moon("price", "CLA-USD", "CLX-USD")
    assert one_line_error(result) == "moon: unknown symbol(s): CLX-USD"
    assert "CLA-USD" in result.stdout  # the known ones are still shown
    # Checked before anything is sent: even with no NATS at all.
    result = await moon("-s", f"nats://127.0.0.1:{free_port()}", "price", "cla-usd")
    assert "symbols.0" in one_line_error(result)


async def test_positions(moon, risk) -> None:
    result = await moon("positions")
    assert result.exit_code == 0, result.output
    for text in ("CLA-USD", "10.5", "57.75", "-1.25", "REDUCE_ONLY", "equity 10055.25"):
        assert text in result.stdout, text
    reply = PositionsReply.model_validate_json((await moon("positions", "--json")).stdout)
    assert reply.positions[0].notional == D("1055.25")


async def test_killswitch(moon, risk) -> None:
    result = await moon("killswitch", "on", "--reason", "drill: bad fills")
    assert result.exit_code == 0, result.output
    assert "kill switch ENGAGED by moon:" in result.stdout and "drill: bad fills" in result.stdout
    request = risk[-1]
    assert (request.action, request.reason, request.flatten) == ("engage", "drill: bad fills", False)
    assert request.actor.startswith("moon:")

    assert "ENGAGED" in (await moon("killswitch", "status")).stdout
    assert risk[-1].action == "status"
    assert "kill switch off" in (await moon("killswitch", "off", "-r", "drill over")).stdout
    assert (risk[-1].action, risk[-1].reason) == ("release", "drill over")

    result = await moon("killswitch", "on", "--flatten", "--json")
    assert json.loads(result.stdout)["flatten_orders"] == 2 and risk[-1].flatten is True
    assert "2 reduce-only orders" in (await moon("killswitch", "status")).stdout


async def test_monitor(moon, market_data) -> None:
    result = await moon("monitor", "start", "CLA-USD", "--threshold", "1.5", "--window", "30")
    assert result.exit_code == 0, result.output
    assert "CLA-USD" in result.stdout and "1.5" in result.stdout and "30" in result.stdout
    status = json.loads((await moon("monitor", "status", "--json")).stdout)
    assert status == {"monitors": [{"symbol": "CLA-USD", "threshold_pct": 1.5, "window_s": 30.0}]}
    assert (await moon("monitor", "stop", "CLA-USD")).stdout.strip() == "stopped monitoring CLA-USD"
    assert "no monitors" in (await moon("monitor", "status")).stdout
    assert one_line_error(await moon("monitor", "stop", "CLA-USD")) == "moon: not_found: no monitor for CLA-USD"
    assert "threshold_pct" in one_line_error(await moon("monitor", "start", "CLA-USD", "--threshold", "0"))


# ---------------------------------------------------------------- attaching, and failing clearly


async def test_connection_errors_are_one_line(moon, nats_server, tmp_path) -> None:
    port = free_port()
    line = one_line_error(await moon("-s", f"nats://127.0.0.1:{port}", "price", "CLA-USD"))
    assert line.startswith(f"moon: cannot reach NATS at nats://127.0.0.1:{port}")
    line = one_line_error(await moon("--password", "not-the-password", "positions"))
    assert line == f"moon: NATS at {nats_server.url} refused the credentials of operator"
    line = one_line_error(await moon("positions", env={"NATS_USER": None, "NATS_PASSWORD": None},))
    assert "refused the credentials" in line
    line = one_line_error(await moon("positions"))  # nobody serves it in this test
    assert line == "moon: nobody serves risk.api.positions (is risk running?)"
    line = one_line_error(await moon("--env-file", str(tmp_path / "missing.env"), "positions"))
    assert "missing.env does not exist" in line


async def test_env_file_and_flags(moon, nats_server, market_data, tmp_path) -> None:
    """.moon/nats.env as `make run` writes it; flags beat the environment."""
    env_file = tmp_path / "nats.env"
    creds = nats_server.env_for("operator")
    write_nats_env(env_file, creds["NATS_URL"], "operator", creds["NATS_PASSWORD"])
    no_env: dict[str, str | None] = {"NATS_URL": None, "NATS_USER": None, "NATS_PASSWORD": None}
    result = await moon("--env-file", str(env_file), "price", "CLA-USD", env=no_env)
    assert result.exit_code == 0, result.output
    wrong = {"NATS_URL": f"nats://127.0.0.1:{free_port()}", "NATS_USER": "operator", "NATS_PASSWORD": "wrong"}
    result = await moon("-s", creds["NATS_URL"], "-u", "operator", "--password", creds["NATS_PASSWORD"],
                        "price", "CLA-USD", env=wrong)
    assert result.exit_code == 0, result.output


def test_python_m_services_cli_exits_1_with_one_line() -> None:
    """The real process: exit code and stderr as a shell sees them."""
    done = subprocess.run([sys.executable, "-m", "services.cli", "-s", f"nats://127.0.0.1:{free_port()}",
                           "positions"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("moon: cannot reach NATS") and done.stderr.count("\n") == 1, done.stderr
    done = subprocess.run([sys.executable, "-m", "services.cli", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    for command in ("tail", "status", "positions", "orders", "trace", "price", "monitor", "killswitch"):
        assert command in done.stdout, command


# ---------------------------------------------------------------- tail


async def run_while_publishing(moon_call, publish) -> Result:
    """Run the CLI and keep publishing until it is done (it subscribes at its own pace)."""
    task = asyncio.ensure_future(moon_call)
    while not task.done():
        await publish()
        await asyncio.sleep(0.05)
    return await task


async def test_tail_decodes_filters_and_prints_raw(moon, connect) -> None:
    md = await connect("market-data")
    a, b = tick("CLA-USD"), tick("CLB-USD", "7")

    async def ticks() -> None:
        await md.publish("md.tick.sim.CLB-USD", encode(b))
        await md.publish("md.tick.sim.CLA-USD", encode(a))

    result = await run_while_publishing(
        moon("tail", "md.tick.>", "--filter", "symbol=CLA-USD", "-f", "venue=sim", "-n", "2", "--seconds", "30"),
        ticks)
    lines = result.stdout.strip().splitlines()
    assert result.exit_code == 0 and len(lines) == 2, result.output
    assert all("md.tick.sim.CLA-USD Tick CLA-USD 100.5  bid 100.5 ask 100.5" in line for line in lines), lines

    result = await run_while_publishing(moon("tail", "md.tick.*.CLA-USD", "--json", "-n", "1", "--seconds", "30"),
                                        ticks)
    assert result.stdout.strip() == encode(a).decode()  # the payload as it was sent

    async def broken() -> None:
        await md.publish("md.tick.sim.CLC-USD", b'{"venue": "sim", "symbol": "CLC-USD", "price": 1.5}')

    result = await run_while_publishing(moon("tail", "md.tick.sim.CLC-USD", "-n", "1", "--seconds", "30"), broken)
    assert "invalid Tick" in result.stdout and '"price": 1.5' in result.stdout

    assert "bad --filter" in one_line_error(await moon("tail", ">", "--filter", "symbol"))


async def test_tail_escapes_control_characters_any_credential_can_send(moon, connect) -> None:
    """Every user may publish errors.<itself>, with any text: an ESC in it would move the operator's
    cursor, erase or fake lines already shown, or (OSC 52) write the clipboard. `moon tail` shows
    the characters escaped."""
    agent = await connect("sentiment-agent")
    reason = "fine\x1b[1A\x1b[2Kforged line\x1b]52;c;ZXZpbA==\x07\x9b"

    async def hostile() -> None:
        event = {"service": "sentiment-agent", "subject": "x", "reason": reason, "ts": 1}
        await agent.publish("errors.sentiment-agent", json.dumps(event).encode())

    result = await run_while_publishing(moon("tail", "errors.sentiment-agent", "-n", "1", "--seconds", "30"), hostile)
    assert result.exit_code == 0, result.output
    assert not any(c in result.stdout for c in "\x1b\x07\x9b"), repr(result.stdout)
    assert "fine\\x1b[1A\\x1b[2Kforged line\\x1b]52;c;ZXZpbA==\\x07\\x9b" in result.stdout, repr(result.stdout)


# ---------------------------------------------------------------- status


async def test_status(moon, connect, market_data, risk) -> None:
    md = await connect("market-data")
    await moon("price", "CLA-USD")  # one request counted in $SRV.STATS

    async def heartbeat() -> None:
        await md.publish("md.status.sim", encode(FeedStatus(venue="sim", status="connected", detail="stand-in",
                                                            symbols=2, ts=now_ns())))

    result = await run_while_publishing(moon("status", "--json", "--feed-wait", "20"), heartbeat)
    assert result.exit_code == 1, result.output  # execution, the agents and the gateway are not running
    status = json.loads(result.stdout)
    services = {s["name"]: s for s in status["services"]}
    assert services["market-data"]["versions"] == ["0.1.0"] and len(services["market-data"]["instances"]) == 1
    assert services["market-data"]["requests"] >= 1 and services["market-data"]["started_ns"] > 0
    assert "md.api.prices" in services["market-data"]["instances"][0]["endpoints"]
    assert set(services) >= {"market-data", "risk"}
    assert {"execution", "gateway", "trading-agent"} <= set(status["missing"])
    assert status["feeds"]["sim"]["status"] == "connected"
    assert status["account"]["state"] == "REDUCE_ONLY" and status["kill_switch"]["engaged"] is False

    # Every stream of the spec, as provisioned; none near full.
    assert set(status["stores"]) == {s["name"] for s in jetstream_spec()["streams"]}
    orders = status["stores"]["ORDERS"]
    assert (orders["discard"], orders["max_bytes"]) == ("new", 1 << 30) and orders["used"] < 0.9
    assert not [p for p in status["problems"] if p.startswith("stream ")], status["problems"]

    result = await run_while_publishing(moon("status", "--feed-wait", "20"), heartbeat)
    for text in ("market-data", "not running", "execution", "sim", "connected", "REDUCE_ONLY (max_daily_loss)",
                 "10055.25", "streams", "ORDERS", "refuses new", "drops oldest"):
        assert text in result.stdout, text


async def test_streams_missing_or_unreadable_are_each_a_problem(connect, plain_nats) -> None:
    # The provisioned server, as the operator: every stream read, nothing to say.
    stores, problems = await read_stores(SimpleNamespace(nc=await connect("operator"), timeout=5.0))
    assert len(stores) == len(jetstream_spec()["streams"]) and problems == []
    # A server without JetStream: each stream is a problem of its own, with the reason.
    nc = await connect_when_up(plain_nats)
    try:
        stores, problems = await read_stores(SimpleNamespace(nc=nc, timeout=1.0))
    finally:
        await nc.close()
    assert stores == {} and len(problems) == len(jetstream_spec()["streams"]), problems
    assert problems[0].startswith("stream ORDERS: not readable ("), problems[0]


def test_a_stream_that_refuses_writes_when_full_is_a_problem_from_90_percent() -> None:
    stores = {
        "ORDERS": Store("ORDERS", "new", 967_000_000, 1 << 30, 2_400_000),  # 90.06 %
        "KV_moonbus": Store("KV_moonbus", "new", 60_000_000, 64 << 20, 90),  # 89.4 %
        "EXEC": Store("EXEC", "old", 2 << 30, 2 << 30, 5_000_000),  # full: drops its oldest
    }
    [problem] = store_problems(stores)
    assert problem.startswith("stream ORDERS is 90% full (967,000,000 of 1,073,741,824 bytes)"), problem
    assert "every new order" in problem and "[jetstream.ORDERS] max_bytes" in problem
    stores["KV_moonbus"].bytes = 64 << 20
    assert [p.split(" is ")[0] for p in store_problems(stores)] == ["stream ORDERS", "stream KV_moonbus"]


# ---------------------------------------------------------------- orders and trace, from the real streams


async def test_orders_and_trace(moon, connect) -> None:
    execution, agent = await connect("execution"), await connect("trading-agent")
    symbol, coid = f"CL{uid()}-USD", f"cli-{uid()}"
    origin = now_ns() - 50_000_000
    order = OrderRequest(client_order_id=coid, agent="trading", symbol=symbol, side=Side.SELL, quantity=D("0.5"),
                         origin_ts=origin, ts=origin + 2_000_000)
    await agent.jetstream().publish(f"orders.submit.trading.{symbol}", encode(order), headers={MSG_ID_HEADER: coid})
    timings = Timings(origin_ts=origin, received_ts=origin + 3_000_000, risk_checked_ts=origin + 3_500_000)
    accepted = ExecutionReport(client_order_id=coid, agent="trading", symbol=symbol, side=Side.SELL,
                               status=OrderStatus.ACCEPTED, quantity=D("0.5"), timings=timings, ts=origin + 3_600_000)
    filled = accepted.model_copy(update={
        "status": OrderStatus.FILLED, "filled_quantity": D("0.5"), "avg_fill_price": D("99.75"), "fee": D("0.05"),
        "timings": timings.model_copy(update={"filled_ts": origin + 4_000_000}), "ts": origin + 4_100_000})
    for report in (accepted, filled):
        await execution.jetstream().publish(
            f"exec.report.{symbol}", encode(report),
            headers={MSG_ID_HEADER: f"{coid}:{report.status.value}:{report.filled_quantity}"})

    result = await moon("orders", "--symbol", symbol, "--json")
    (trail,) = json.loads(result.stdout)
    assert (trail["client_order_id"], trail["status"], len(trail["reports"])) == (coid, "FILLED", 2)
    result = await moon("orders", "--symbol", symbol)
    assert coid in result.stdout and "FILLED" in result.stdout and "99.75" in result.stdout

    # The same id again, stored (no Nats-Msg-Id) by the trading agent's credential claiming to be
    # the operator's bigger BUY: execution takes the first only, and so does the order log.
    forged = order.model_copy(update={"agent": "operator", "side": Side.BUY, "quantity": D("9")})
    await agent.jetstream().publish(f"orders.submit.trading.{symbol}", encode(forged))
    trails = {t["client_order_id"]: t for t in json.loads((await moon("orders", "--symbol", symbol, "--json")).stdout)}
    order_shown = trails.pop(coid)["order"]
    assert (order_shown["agent"], order_shown["side"], order_shown["quantity"]) == ("trading", "SELL", "0.5")
    assert [t["order"] for t in trails.values()] == [None], trails  # shown as unreadable, on its own

    result = await moon("trace", coid, "--json")
    hops = {h["hop"]: h["since_previous_ns"] for h in json.loads(result.stdout)["hops"]}
    assert list(hops)[:2] == ["origin tick", "order sent"] and list(hops)[-1] == "stored in EXEC"
    assert (hops["order sent"], hops["risk checked"], hops["filled"]) == (2_000_000, 500_000, 500_000)
    result = await moon("trace", coid, "--since", "1h")
    assert result.exit_code == 0, result.output
    for text in ("origin tick", "received by execution", "risk checked", "filled", "stored in EXEC", "2.000",
                 "ACCEPTED", "FILLED", "99.75"):
        assert text in result.stdout, text

    # A reason is shown as it is, even where it looks like rich markup.
    refused = f"cli-{uid()}"
    await agent.jetstream().publish(f"orders.submit.trading.{symbol}", encode(order.model_copy(update={
        "client_order_id": refused})), headers={MSG_ID_HEADER: refused})
    rejected = ExecutionReport(client_order_id=refused, symbol=symbol, status=OrderStatus.REJECTED,
                               reason="[/risk] max_order_notional", timings=Timings(), ts=now_ns())
    await execution.jetstream().publish(f"exec.report.{symbol}", encode(rejected),
                                        headers={MSG_ID_HEADER: f"{refused}:REJECTED:0"})
    result = await moon("orders", "--symbol", symbol)
    assert result.exit_code == 0, result.output
    assert "REJECTED" in result.stdout and "[/risk] max_order_notional" in result.stdout
    assert "[/risk] max_order_notional" in (await moon("trace", refused)).stdout

    assert one_line_error(await moon("trace", f"cli-{uid()}", "--since", "10m")).startswith("moon: no order")
    assert "bad --since" in one_line_error(await moon("trace", coid, "--since", "soon"))


def test_the_notifier_is_missing_only_where_a_supervisor_runs_it() -> None:
    """Off by default (`[notifier] enabled = false`): a system without it is whole; one whose
    launcher runs it misses it when it does not answer."""
    from services.cli.status import EXPECTED, Service, Status
    from services.ops.supervision import Supervised

    every = {name: Service(name) for name in EXPECTED}
    assert Status(every).missing == [] and Status(every).healthy
    import time

    run = {"notifier": Supervised(service="notifier", state="restarting", ts=time.time_ns())}
    assert Status(every, supervision=run).missing == ["notifier"]
    gone = {"notifier": Supervised(service="notifier", state="running", ts=time.time_ns() - 3600 * 10**9)}
    assert Status(every, supervision=gone).healthy  # a launcher that ran it is gone
    assert Status({**every, "notifier": Service("notifier")}, supervision=run).healthy
    assert Status({k: v for k, v in every.items() if k != "risk"}).missing == ["risk"]
