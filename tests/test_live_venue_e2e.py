"""A real venue end to end: the trading agent decides on bars of venue `binance` (market-data
replaying a file as that venue), sends its order to `binance`, which execution serves in
testnet mode through its Binance adapter, pointed at the local stand-in (tests/venues/binance.py:
it verifies every signature and keeps the account). The fill comes back from the venue's user
data stream as execution reports, risk books it, and risk's reconciliation of the venue's
account (exec.venue.binance -> risk.recon.binance) says MATCHED. Then the venue's account
changes behind our back (a trade elsewhere): risk says MISMATCH and the account goes
REDUCE_ONLY, until the venue matches again.

The release binaries and the real trading agent, started by the launcher; nothing mocked but
the exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from services.contract.models import ExecutionReport
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port
from tests.venues.binance import SPOT, StandIn

pytestmark = pytest.mark.e2e

WAIT = 90.0
SYMBOL = "BTC-USDT"


def replay_file(path: Path, start_ns: int, seconds: int, rising: int) -> Path:
    """BTC-USDT ticks of venue binance, 10 a second: rising 0.05% a second for `rising`
    seconds (momentum buys), then flat (it holds: the account stops changing)."""
    rows = ["ts,venue,symbol,price,bid,ask,size"]
    price = Decimal("60000")
    for n in range(seconds * 10):
        if n < rising * 10:
            price = (price * Decimal("1.00005")).quantize(Decimal("0.01"))
        ts = start_ns + n * 100_000_000
        rows.append(f"{ts},binance,{SYMBOL},{price},{price - Decimal('0.5')},{price + Decimal('0.5')},0.01")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
async def venue() -> AsyncIterator[StandIn]:
    standin = await StandIn(flavor=SPOT).start()
    try:
        yield standin
    finally:
        await standin.stop()


@pytest.fixture
async def system(tmp_path: Path, venue: StandIn, request: pytest.FixtureRequest) -> AsyncIterator[System]:
    services = getattr(request, "param", ["market-data", "risk", "execution", "trading-agent"])
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup`")
    import time

    replay = replay_file(tmp_path / "binance.csv", time.time_ns(), 180, rising=15)
    env = {
        "RUST_LOG": "warn",
        "MOONBUS__SYSTEM__SYMBOLS": json.dumps([SYMBOL]),
        "MOONBUS__MARKET_DATA__FEEDS": '["replay"]',
        "MOONBUS__MARKET_DATA__REPLAY_FILES": json.dumps([str(replay)]),
        "MOONBUS__MARKET_DATA__REPLAY_VENUE": '"binance"',
        "MOONBUS__MARKET_DATA__REPLAY_SPEED": "1.0",
        "MOONBUS__EXECUTION__VENUES": '["sim"]',
        "MOONBUS__EXECUTION__LIVE__BINANCE__KIND": '"binance_spot"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__MODE": '"testnet"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__MAX_NOTIONAL": '"500"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__SYMBOLS": '{ "BTC-USDT" = "BTCUSDT" }',
        "MOONBUS__EXECUTION__LIVE__BINANCE__REST_URL": json.dumps(venue.rest_url),
        "MOONBUS__EXECUTION__LIVE__BINANCE__WS_URL": json.dumps(venue.ws_url),
        "MOONBUS__EXECUTION__RECONCILE_INTERVAL_MS": "500",
        "BINANCE_API_KEY": venue.api_key,
        "BINANCE_API_SECRET": venue.secret or "",
        # The eager strategy of the tests, sized to the venue's lot step.
        "MOONBUS__TRADING_AGENT__STRATEGY": '"momentum"',
        "MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK": "3",
        "MOONBUS__TRADING_AGENT__MOMENTUM_THRESHOLD_PCT": "0.01",
        "MOONBUS__TRADING_AGENT__ON_ALERTS": "false",
        "MOONBUS__TRADING_AGENT__ORDER_USD": '"100"',
        "MOONBUS__TRADING_AGENT__QUANTITY_STEP": '"0.00001"',
        "MOONBUS__TRADING_AGENT__METRICS_PORT": "0",
    }
    system = System()
    # The launcher waits for the services; the stand-in answers on this loop meanwhile.
    await asyncio.to_thread(system.start, port=free_port(), moon_dir=tmp_path,
                            services=services, out=None, env=env)
    try:
        yield system
    finally:
        await asyncio.to_thread(system.stop)
        print(system.tail(60))  # shown by pytest only when the test failed


async def test_an_agent_order_trades_at_the_venue_and_risk_reconciles_with_it(system: System,
                                                                              venue: StandIn) -> None:
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    reports: dict[str, list[ExecutionReport]] = defaultdict(list)
    recon: list[dict] = []
    accounts: list[dict] = []

    async def on_report(msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id:
            reports[report.client_order_id].append(report)

    async def on_recon(msg) -> None:
        recon.append(json.loads(msg.data))

    async def on_account(msg) -> None:
        accounts.append(json.loads(msg.data))

    loop = asyncio.get_running_loop()

    async def until(condition, what: str) -> None:
        deadline = loop.time() + WAIT
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{system.tail(60)}"
            await asyncio.sleep(0.1)

    try:
        await nc.subscribe(f"exec.report.{SYMBOL}", cb=on_report)
        await nc.subscribe("risk.recon.binance", cb=on_recon)
        await nc.subscribe("risk.account", cb=on_account)

        def filled() -> list[ExecutionReport]:
            return [r for rs in reports.values() for r in rs if r.status.value == "FILLED"]

        await until(lambda: filled(), "a FILLED report of an agent's order at binance")
        fill = filled()[0]
        assert fill.venue == "binance" and fill.agent == "trading"
        # The venue got exactly that order, signed (the stand-in refuses bad signatures),
        # under our client order id, once.
        sent = [params for method, path, params in venue.requests if method == "POST" and path.endswith("/order")]
        ours = [p for p in sent if p.get("newClientOrderId") == fill.client_order_id]
        assert len(ours) == 1, sent
        assert not [r for r in venue.refusals if r[1] in (-1022, -2015)], venue.refusals
        first = reports[fill.client_order_id]
        assert first[0].status.value == "ACCEPTED"  # every live order: ACCEPTED, then the venue's fills
        assert fill.last_fill_price is not None and fill.fee is not None

        # Risk's books equal the venue's account once reconciled.
        def matched() -> bool:
            return bool(recon) and recon[-1]["state"] == "MATCHED" and venue.balances["BTC"] > 0

        def settled() -> bool:
            terminal = {"FILLED", "REJECTED", "CANCELLED", "EXPIRED", "FAILED"}
            return all(any(r.status.value in terminal for r in rs) for rs in reports.values())

        # The price goes flat: the agent holds, every order it sent ends.
        await until(lambda: settled() and matched(), f"every order ended, MATCHED (last: {recon[-1:]})")
        await asyncio.sleep(2)
        await until(matched, f"risk.recon.binance MATCHED (last: {recon[-1:]})")
        held = await nc.request("risk.api.positions", json.dumps({"symbol": SYMBOL}).encode(), timeout=5)
        positions = {p["symbol"]: Decimal(p["quantity"]) for p in json.loads(held.data)["positions"]}
        assert positions.get(SYMBOL) == venue.balances["BTC"], (positions, venue.balances)
        fills = sum((r.last_fill_quantity or 0) for rs in reports.values() for r in rs)
        assert fills == venue.balances["BTC"], (fills, venue.balances)

        # Someone trades on the account behind our back: a mismatch, the account reduce-only.
        venue.balances["BTC"] += Decimal("0.5")
        await until(lambda: recon and recon[-1]["state"] == "MISMATCH", "risk.recon.binance MISMATCH")
        # Acted on once it outlasts [risk] recon_grace_ms (fills race the account reads).
        await until(lambda: recon[-1]["action"] == "REDUCE_ONLY", "the mismatch acted on: REDUCE_ONLY")
        difference = recon[-1]["differences"][0]
        assert (difference["symbol"], Decimal(difference["difference"]).copy_abs()) == (SYMBOL, Decimal("0.5"))
        await until(lambda: accounts and accounts[-1]["state"] in ("REDUCE_ONLY", "HALTED"),
                    "risk's account gated by the mismatch")
        venue.balances["BTC"] -= Decimal("0.5")
        await until(lambda: recon and recon[-1]["state"] == "MATCHED", "MATCHED again")
    finally:
        await nc.close()


@pytest.mark.parametrize("system", [["market-data", "risk", "execution"]], indirect=True)
async def test_the_kill_switch_cancels_the_orders_working_at_the_venue(system: System, venue: StandIn) -> None:
    """A resting LIMIT order at the venue is cancelled there when the kill switch engages
    (risk refuses new risk; an order already at the venue would still fill)."""
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    reports: list[ExecutionReport] = []

    async def on_report(msg) -> None:
        reports.append(ExecutionReport.model_validate_json(msg.data))

    loop = asyncio.get_running_loop()

    async def until(condition, what: str) -> None:
        deadline = loop.time() + WAIT
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{system.tail(60)}"
            await asyncio.sleep(0.1)

    async def killswitch(action: str) -> dict:
        body = {"action": action, "actor": "live-venue-test", "reason": "test"}
        reply = await nc.request("risk.api.killswitch.operator", json.dumps(body).encode(), timeout=10)
        return json.loads(reply.data)

    try:
        await nc.subscribe(f"exec.report.{SYMBOL}", cb=on_report)
        js = nc.jetstream()
        order = {"client_order_id": "ks-rest-1", "agent": "operator", "symbol": SYMBOL, "venue": "binance",
                 "side": "BUY", "type": "LIMIT", "limit_price": "50000", "quantity": "0.001",
                 "origin_ts": 1, "ts": 1}
        # Risk needs a price first (the replay's ticks): retried until risk accepts.
        sent = 0
        deadline = loop.time() + WAIT
        while not any(r.status.value == "ACCEPTED" for r in reports):
            assert loop.time() < deadline, f"never ACCEPTED: {reports}\n{system.tail(60)}"
            sent += 1
            order["client_order_id"] = f"ks-rest-{sent}"
            await js.publish(f"orders.submit.operator.{SYMBOL}", json.dumps(order).encode(),
                             headers={"Nats-Msg-Id": order["client_order_id"]})
            await until(lambda: any(r.client_order_id == order["client_order_id"] for r in reports), "a report")
            if not any(r.status.value == "ACCEPTED" for r in reports):
                await asyncio.sleep(0.5)
        resting = order["client_order_id"]
        assert venue.orders[resting].status == "NEW"

        assert (await killswitch("engage"))["engaged"] is True
        await until(lambda: any(r.client_order_id == resting and r.status.value == "CANCELLED" for r in reports),
                    "the resting order CANCELLED by the kill switch")
        assert venue.orders[resting].status == "CANCELED"
        assert any(m == "DELETE" and p.get("origClientOrderId") == resting for m, _, p in venue.requests)
    finally:
        await nc.close()


# ----- the same path for the other venues: the agent's order, its fill, risk reconciled -----

def rising(path: Path, venue: str, symbol: str, start_price: Decimal, places: str) -> Path:
    """Ticks of `symbol` at `venue`, 10 a second, rising 0.05% a second for 15 s, then flat."""
    import time

    rows = ["ts,venue,symbol,price,bid,ask,size"]
    price, start = start_price, time.time_ns()
    for n in range(1800):
        if n < 150:
            price = (price * Decimal("1.00005")).quantize(Decimal(places))
        rows.append(f"{start + n * 100_000_000},{venue},{symbol},{price},{price},{price},1")
    path.write_text("\n".join(rows) + "\n")
    return path


def agent_env(replay: Path, symbol: str, venue: str, quantity_step: str) -> dict[str, str]:
    return {
        "RUST_LOG": "warn",
        "MOONBUS__SYSTEM__SYMBOLS": json.dumps([symbol]),
        "MOONBUS__MARKET_DATA__FEEDS": '["replay"]',
        "MOONBUS__MARKET_DATA__REPLAY_FILES": json.dumps([str(replay)]),
        "MOONBUS__MARKET_DATA__REPLAY_VENUE": json.dumps(venue),
        "MOONBUS__EXECUTION__RECONCILE_INTERVAL_MS": "500",
        "MOONBUS__RISK__PRICE_BAND_PCT": "0",
        "MOONBUS__TRADING_AGENT__STRATEGY": '"momentum"',
        "MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK": "3",
        "MOONBUS__TRADING_AGENT__MOMENTUM_THRESHOLD_PCT": "0.01",
        "MOONBUS__TRADING_AGENT__ON_ALERTS": "false",
        "MOONBUS__TRADING_AGENT__ORDER_USD": '"100"',
        "MOONBUS__TRADING_AGENT__QUANTITY_STEP": json.dumps(quantity_step),
        "MOONBUS__TRADING_AGENT__METRICS_PORT": "0",
    }


async def agent_trades_and_reconciles(system: System, venue: str, symbol: str, held_at_venue) -> None:
    """The agent's orders at `venue` fill, every one ends, and risk says MATCHED with its
    position equal to the venue's (`held_at_venue()`) and to the fills."""
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    reports: dict[str, list[ExecutionReport]] = defaultdict(list)
    recon: list[dict] = []

    async def on_report(msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id:
            reports[report.client_order_id].append(report)

    async def on_recon(msg) -> None:
        recon.append(json.loads(msg.data))

    loop = asyncio.get_running_loop()

    async def until(condition, what: str) -> None:
        deadline = loop.time() + WAIT
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{system.tail(60)}"
            await asyncio.sleep(0.1)

    def settled() -> bool:
        terminal = {"FILLED", "REJECTED", "CANCELLED", "EXPIRED", "FAILED"}
        return all(any(r.status.value in terminal for r in rs) for rs in reports.values())

    try:
        await nc.subscribe(f"exec.report.{symbol}", cb=on_report)
        await nc.subscribe(f"risk.recon.{venue}", cb=on_recon)
        await until(lambda: any(r.status.value == "FILLED" and r.agent == "trading" and r.venue == venue
                                for rs in reports.values() for r in rs), f"a FILLED agent order at {venue}")
        await until(lambda: settled() and held_at_venue() > 0 and recon and recon[-1]["state"] == "MATCHED",
                    f"every order ended, {venue} MATCHED (last: {recon[-1:]})")
        await asyncio.sleep(2)  # the price is flat: nothing more is traded
        await until(lambda: recon[-1]["state"] == "MATCHED", f"{venue} MATCHED (last: {recon[-1:]})")
        held = await nc.request("risk.api.positions", json.dumps({"symbol": symbol}).encode(), timeout=5)
        positions = {p["symbol"]: Decimal(p["quantity"]) for p in json.loads(held.data)["positions"]}
        fills = sum((r.last_fill_quantity or 0) for rs in reports.values() for r in rs)
        assert positions.get(symbol) == held_at_venue() == fills, (positions, held_at_venue(), fills)
    finally:
        await nc.close()


async def test_an_agent_order_trades_at_hyperliquid_and_risk_reconciles(tmp_path: Path) -> None:
    from tests.venues.hyperliquid import StandIn as Hyperliquid

    venue = await Hyperliquid(mids={"ETH": Decimal("3500")}).start()
    env = agent_env(rising(tmp_path / "hl.csv", "hyperliquid", "ETH-USD", Decimal("3500"), "0.1"),
                    "ETH-USD", "hyperliquid", "0.0001") | {
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__KIND": '"hyperliquid"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__MODE": '"testnet"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__MAX_NOTIONAL": '"500"',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__SYMBOLS": '{ "ETH-USD" = "ETH" }',
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__REST_URL": json.dumps(venue.rest_url),
        "MOONBUS__EXECUTION__LIVE__HYPERLIQUID__WS_URL": json.dumps(venue.ws_url),
        "HYPERLIQUID_AGENT_PRIVATE_KEY": venue.agent_key,
        "HYPERLIQUID_ACCOUNT_ADDRESS": venue.account,
    }
    system = System()
    await asyncio.to_thread(system.start, port=free_port(), moon_dir=tmp_path,
                            services=["market-data", "risk", "execution", "trading-agent"], out=None, env=env)
    try:
        await agent_trades_and_reconciles(system, "hyperliquid", "ETH-USD",
                                          lambda: venue.positions.get("ETH", (Decimal(0), Decimal(0)))[0])
        # Every action the venue took was signed by the configured agent wallet.
        assert venue.actions and not [r for r in venue.refusals if "sign" in str(r).lower()], venue.refusals
    finally:
        await asyncio.to_thread(system.stop)
        await venue.stop()
        print(system.tail(60))


async def test_an_agent_order_swaps_on_jupiter_and_risk_reconciles(tmp_path: Path) -> None:
    import os

    from solders.keypair import Keypair

    from tests.venues.jupiter import JUP, USDC, WSOL
    from tests.venues.jupiter import StandIn as Chain

    kp = Keypair()
    key_file = tmp_path / "id.json"
    key_file.write_text(json.dumps(list(bytes(kp))))
    os.chmod(key_file, 0o600)
    chain = await Chain().start()
    owner = str(kp.pubkey())
    chain.fund(owner, WSOL, 2_000_000_000)  # SOL for the fees
    chain.fund(owner, USDC, 1_000_000_000)
    env = agent_env(rising(tmp_path / "jup.csv", "jup", "JUP-USDC", Decimal("0.8125"), "0.000001"),
                    "JUP-USDC", "jup", "0.000001") | {
        "MOONBUS__EXECUTION__LIVE__JUP__KIND": '"jupiter"',
        "MOONBUS__EXECUTION__LIVE__JUP__MODE": '"testnet"',
        "MOONBUS__EXECUTION__LIVE__JUP__MAX_NOTIONAL": '"500"',
        "MOONBUS__EXECUTION__LIVE__JUP__SYMBOLS": f'{{ "JUP-USDC" = "{JUP}/{USDC}" }}',
        "MOONBUS__EXECUTION__LIVE__JUP__JUPITER_URL": json.dumps(chain.jupiter_url),
        "MOONBUS__EXECUTION__LIVE__JUP__RPC_URL": json.dumps(chain.rpc_url),
        "MOONBUS__EXECUTION__LIVE__JUP__KEYPAIR_PATH": json.dumps(str(key_file)),
        "MOONBUS__EXECUTION__LIVE__JUP__POLL_MS": "100",
    }
    system = System()
    await asyncio.to_thread(system.start, port=free_port(), moon_dir=tmp_path / "moon",
                            services=["market-data", "risk", "execution", "trading-agent"], out=None, env=env)
    try:
        await agent_trades_and_reconciles(system, "jup", "JUP-USDC",
                                          lambda: Decimal(chain.balance(owner, JUP)) / Decimal(10**6))
        # Each swap landed once, signed by the wallet (the chain verifies every signature).
        assert len(chain.by_signature) == len({s for s, _ in chain.sends})
    finally:
        await asyncio.to_thread(system.stop)
        await chain.stop()
        print(system.tail(60))
