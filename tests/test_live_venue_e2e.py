"""Real venues end to end, for Binance, Hyperliquid and Jupiter: the trading agent decides on
bars of that venue (market-data replaying a file as that venue), sends its orders there, and
execution serves the venue in testnet mode through its adapter, pointed at the local stand-in
(tests/venues/: each verifies every signature and keeps the account). The fills come back as
execution reports, risk books them, and risk's reconciliation of the venue's account
(exec.venue.<venue> -> risk.recon.<venue>) says MATCHED: risk's position = the venue's = the
fills. On Binance also: the venue's account changing behind our back (a trade elsewhere) gates
the account REDUCE_ONLY until it matches again, and the kill switch cancels an order resting
at the venue.

The release binaries and the real trading agent, started by the launcher; nothing mocked but
the exchanges.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
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
AGENT_SYSTEM = ["market-data", "risk", "execution", "trading-agent"]
TERMINAL = {"FILLED", "REJECTED", "CANCELLED", "EXPIRED", "FAILED"}


def rising(path: Path, venue: str, symbol: str, start_price: Decimal, places: str) -> Path:
    """Ticks of `symbol` at `venue`, 10 a second: rising 0.05% a second for 15 s (momentum
    buys), then flat for 165 s (it holds: the account stops changing)."""
    rows = ["ts,venue,symbol,price,bid,ask,size"]
    price, start = start_price, time.time_ns()
    for n in range(1800):
        if n < 150:
            price = (price * Decimal("1.00005")).quantize(Decimal(places))
        rows.append(f"{start + n * 100_000_000},{venue},{symbol},{price},{price},{price},1")
    path.write_text("\n".join(rows) + "\n")
    return path


def agent_env(replay: Path, symbol: str, venue: str, quantity_step: str) -> dict[str, str]:
    """The replayed venue's prices and the eager strategy of the tests, sized to its lot step."""
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


async def start(tmp: Path, services: list[str], env: dict[str, str]) -> System:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup`")
    system = System()
    # The launcher waits for the services; the stand-in answers on this loop meanwhile.
    await asyncio.to_thread(system.start, port=free_port(), moon_dir=tmp, services=services, out=None, env=env)
    return system


async def stop(system: System) -> None:
    await asyncio.to_thread(system.stop)
    print(system.tail(60))  # shown by pytest only when the test failed


class Watch:
    """The operator's view of one venue and symbol: reports per order, the venue's
    reconciliations, risk's account."""

    def __init__(self, system: System, venue: str, symbol: str) -> None:
        self.system, self.venue, self.symbol = system, venue, symbol
        self.reports: dict[str, list[ExecutionReport]] = defaultdict(list)
        self.recon: list[dict] = []
        self.accounts: list[dict] = []

    async def __aenter__(self) -> Watch:
        env = self.system.env_for("operator")
        self.nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                                     inbox_prefix=f"_INBOX.{env['NATS_USER']}")
        await self.nc.subscribe(f"exec.report.{self.symbol}", cb=self.on_report)
        await self.nc.subscribe(f"risk.recon.{self.venue}", cb=self.on_recon)
        await self.nc.subscribe("risk.account", cb=self.on_account)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def on_report(self, msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.client_order_id:
            self.reports[report.client_order_id].append(report)

    async def on_recon(self, msg) -> None:
        self.recon.append(json.loads(msg.data))

    async def on_account(self, msg) -> None:
        self.accounts.append(json.loads(msg.data))

    async def until(self, condition: Callable[[], object], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{self.system.tail(60)}"
            await asyncio.sleep(0.1)

    def all_reports(self) -> list[ExecutionReport]:
        return [r for rs in self.reports.values() for r in rs]

    def state(self) -> str | None:
        return self.recon[-1]["state"] if self.recon else None

    async def agent_trades_and_reconciles(self, held_at_venue: Callable[[], Decimal]) -> ExecutionReport:
        """The agent's orders at the venue fill, every one ends, and risk says MATCHED with
        its position equal to the venue's (`held_at_venue()`) and to the fills. The first fill."""
        await self.until(lambda: any(r.status.value == "FILLED" and r.agent == "trading" and r.venue == self.venue
                                     for r in self.all_reports()), f"a FILLED agent order at {self.venue}")
        first = next(r for r in self.all_reports() if r.status.value == "FILLED")
        assert self.reports[first.client_order_id][0].status.value == "ACCEPTED"  # written ahead, then sent

        def settled() -> bool:
            return all(any(r.status.value in TERMINAL for r in rs) for rs in self.reports.values())

        # The price goes flat: the agent holds, every order it sent ends.
        await self.until(lambda: settled() and held_at_venue() > 0 and self.state() == "MATCHED",
                         f"every order ended, {self.venue} MATCHED (last: {self.recon[-1:]})")
        # Risk books the fills through its own EXEC consumer, which may lag the reports seen
        # here (and a MATCHED may be from before the first fill, when both held nothing).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            held = await self.nc.request("risk.api.positions", json.dumps({"symbol": self.symbol}).encode(),
                                         timeout=5)
            positions = {p["symbol"]: Decimal(p["quantity"]) for p in json.loads(held.data)["positions"]}
            fills = sum((r.last_fill_quantity or 0) for r in self.all_reports())
            if positions.get(self.symbol) == held_at_venue() == fills and self.state() == "MATCHED":
                return first
            assert loop.time() < deadline, (positions, held_at_venue(), fills, self.recon[-1:])
            await asyncio.sleep(0.1)


# ----- Binance ---------------------------------------------------------------------------------

@pytest.fixture
async def venue() -> AsyncIterator[StandIn]:
    standin = await StandIn(flavor=SPOT).start()
    try:
        yield standin
    finally:
        await standin.stop()


@pytest.fixture
async def system(tmp_path: Path, venue: StandIn, request: pytest.FixtureRequest) -> AsyncIterator[System]:
    env = agent_env(rising(tmp_path / "binance.csv", "binance", SYMBOL, Decimal("60000"), "0.01"),
                    SYMBOL, "binance", "0.00001") | {
        "MOONBUS__EXECUTION__LIVE__BINANCE__KIND": '"binance_spot"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__MODE": '"testnet"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__MAX_NOTIONAL": '"500"',
        "MOONBUS__EXECUTION__LIVE__BINANCE__SYMBOLS": '{ "BTC-USDT" = "BTCUSDT" }',
        "MOONBUS__EXECUTION__LIVE__BINANCE__REST_URL": json.dumps(venue.rest_url),
        "MOONBUS__EXECUTION__LIVE__BINANCE__WS_URL": json.dumps(venue.ws_url),
        "BINANCE_API_KEY": venue.api_key,
        "BINANCE_API_SECRET": venue.secret or "",
    }
    system = await start(tmp_path, getattr(request, "param", AGENT_SYSTEM), env)
    try:
        yield system
    finally:
        await stop(system)


async def test_an_agent_order_trades_at_the_venue_and_risk_reconciles_with_it(system: System,
                                                                              venue: StandIn) -> None:
    async with Watch(system, "binance", SYMBOL) as watch:
        fill = await watch.agent_trades_and_reconciles(lambda: venue.balances["BTC"])
        # The venue got exactly that order, signed (the stand-in refuses bad signatures),
        # under our client order id, once.
        sent = [params for method, path, params in venue.requests if method == "POST" and path.endswith("/order")]
        assert len([p for p in sent if p.get("newClientOrderId") == fill.client_order_id]) == 1, sent
        assert not [r for r in venue.refusals if r[1] in (-1022, -2015)], venue.refusals

        # Someone trades on the account behind our back: a mismatch, the account reduce-only.
        venue.balances["BTC"] += Decimal("0.5")
        await watch.until(lambda: watch.state() == "MISMATCH", "risk.recon.binance MISMATCH")
        # Acted on once it outlasts [risk] recon_grace_ms (fills race the account reads).
        await watch.until(lambda: watch.recon[-1]["action"] == "REDUCE_ONLY", "the mismatch acted on: REDUCE_ONLY")
        difference = watch.recon[-1]["differences"][0]
        assert (difference["symbol"], Decimal(difference["difference"]).copy_abs()) == (SYMBOL, Decimal("0.5"))
        await watch.until(lambda: watch.accounts and watch.accounts[-1]["state"] in ("REDUCE_ONLY", "HALTED"),
                          "risk's account gated by the mismatch")
        venue.balances["BTC"] -= Decimal("0.5")
        await watch.until(lambda: watch.state() == "MATCHED", "MATCHED again")


@pytest.mark.parametrize("system", [["market-data", "risk", "execution"]], indirect=True)
async def test_the_kill_switch_cancels_the_orders_working_at_the_venue(system: System, venue: StandIn) -> None:
    """A resting LIMIT order at the venue is cancelled there when the kill switch engages
    (risk refuses new risk; an order already at the venue would still fill)."""
    async with Watch(system, "binance", SYMBOL) as watch:
        js = watch.nc.jetstream()
        order = {"agent": "operator", "symbol": SYMBOL, "venue": "binance", "side": "BUY", "type": "LIMIT",
                 "limit_price": "50000", "quantity": "0.001", "origin_ts": 1, "ts": 1}

        def accepted() -> list[str]:
            return [r.client_order_id for r in watch.all_reports() if r.status.value == "ACCEPTED"]

        # Risk needs a price first (the replay's ticks): sent again until risk accepts one.
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not accepted():
            assert loop.time() < deadline, f"never ACCEPTED: {watch.reports}\n{system.tail(60)}"
            sent += 1
            cid = f"ks-rest-{sent}"
            await js.publish(f"orders.submit.operator.{SYMBOL}", json.dumps({**order, "client_order_id": cid}).encode(),
                             headers={"Nats-Msg-Id": cid})
            await watch.until(lambda: watch.reports.get(cid), "a report")
            if not accepted():
                await asyncio.sleep(0.5)
        [resting] = accepted()
        await watch.until(lambda: resting in venue.orders, "the order at the venue")
        assert venue.orders[resting].status == "NEW"

        body = {"action": "engage", "actor": "live-venue-test", "reason": "test"}
        reply = await watch.nc.request("risk.api.killswitch.operator", json.dumps(body).encode(), timeout=10)
        assert json.loads(reply.data)["engaged"] is True
        await watch.until(lambda: any(r.status.value == "CANCELLED" for r in watch.reports[resting]),
                          "the resting order CANCELLED by the kill switch")
        assert venue.orders[resting].status == "CANCELED"
        assert any(m == "DELETE" and p.get("origClientOrderId") == resting for m, _, p in venue.requests)


# ----- Hyperliquid and Jupiter ---------------------------------------------------------------

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
    try:
        system = await start(tmp_path, AGENT_SYSTEM, env)
        try:
            async with Watch(system, "hyperliquid", "ETH-USD") as watch:
                await watch.agent_trades_and_reconciles(
                    lambda: venue.positions.get("ETH", (Decimal(0), Decimal(0)))[0])
            # Every action the venue took was signed by the configured agent wallet.
            assert venue.actions and not [r for r in venue.refusals if "sign" in str(r).lower()], venue.refusals
        finally:
            await stop(system)
    finally:
        await venue.stop()


async def test_an_agent_order_swaps_on_jupiter_and_risk_reconciles(tmp_path: Path) -> None:
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
    try:
        system = await start(tmp_path / "moon", AGENT_SYSTEM, env)
        try:
            async with Watch(system, "jup", "JUP-USDC") as watch:
                await watch.agent_trades_and_reconciles(lambda: Decimal(chain.balance(owner, JUP)) / Decimal(10**6))
            # Each swap landed once, signed by the wallet (the chain verifies every signature).
            assert len(chain.by_signature) == len({s for s, _ in chain.sends})
        finally:
            await stop(system)
    finally:
        await chain.stop()
