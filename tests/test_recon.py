"""Live venue reconciliation (issue 12): execution's `exec.venue.<venue>` (LiveVenueStatus,
with the account read from the venue) against rust-risk's books, `risk.recon.<venue>`.

- the NATS permissions: only execution publishes exec.venue.>, only risk risk.recon.>; the
  readers (risk, gateway, operator, the agents) get them; the audit attack
  `forge_venue_accounts` notices a config that lets another user publish them;
- the real rust-risk (release build, launcher, secure nats-server): the test is execution
  (it publishes a fill into EXEC and the venue's status as the execution user) and market
  data (ticks). A position that differs gates the account REDUCE_ONLY with
  `recon_mismatch:binance` (checks refused, reducing orders pass, KV `risk.recon.binance`
  stored); a matching report opens it again and the venue's cash and equity show in
  `risk.account`; a status on another venue's subject is refused; a venue that falls silent
  for `recon_stale_ms` is UNAVAILABLE (`recon_unavailable:binance`, fail closed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import nats
import pytest

from services.cli import audit
from services.common.bus import flush
from services.contract import subjects as S
from services.contract.models import (
    AccountState,
    ErrorEvent,
    LiveVenueKind,
    LiveVenueStatus,
    Reconciliation,
    ReconAction,
    ReconState,
    TradingState,
    UnknownVenueOrder,
    VenueAccount,
    VenueMode,
    VenuePositionEntry,
    encode,
)
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, NatsServer, free_port, load_or_create_credentials

SHORT = 0.3


def venue_status(venue: str = "binance", positions: dict[str, str] | None = None, *, cash: str | None = None,
                 equity: str | None = None, account: bool = True, unknown: int = 0) -> LiveVenueStatus:
    return LiveVenueStatus(
        venue=venue, kind=LiveVenueKind.BINANCE_FUTURES, mode=VenueMode.TESTNET, connected=True,
        working_orders=1, unconfirmed_orders=0,
        account=VenueAccount(
            cash=Decimal(cash) if cash else None, equity=Decimal(equity) if equity else None,
            positions=[VenuePositionEntry(symbol=s, quantity=Decimal(q)) for s, q in (positions or {}).items()],
        ) if account else None,
        account_error=None if account else "HTTP 502 from GET /fapi/v2/account",
        unknown_orders=[UnknownVenueOrder(venue_order_id=str(i), venue_symbol="BTCUSDT", status="NEW")
                        for i in range(unknown)],
        ts=time.time_ns(),
    )


# ---- permissions: a real nats-server with proto/nats/moonbus.conf -----------------------------

READERS_OF_VENUE_STATUS = ["risk", "gateway", "operator", "trading-agent", "risk-agent"]
READERS_OF_RECON = ["gateway", "operator", "trading-agent", "risk-agent"]


@pytest.mark.parametrize(("publisher", "subject", "readers"), [
    ("execution", S.exec_venue("binance"), READERS_OF_VENUE_STATUS),
    ("risk", S.risk_recon("binance"), READERS_OF_RECON),
])
async def test_the_owner_publishes_and_the_readers_receive(connect, publisher, subject, readers):
    queues = {user: await (await connect(user)).collect(subject) for user in readers}
    nc = await connect(publisher)
    await nc.publish(subject, b'{"probe": 1}')
    await flush(nc)
    for user, queue in queues.items():
        msg = await asyncio.wait_for(queue.get(), 2)
        assert msg.data == b'{"probe": 1}', user
    assert nc.permission_errors() == []


async def test_a_config_that_lets_another_user_forge_them_is_caught(tmp_path):
    """The attack (tests/test_attacks.py runs it with every credential) is not one that
    cannot fail: on a config that lets trading-agent publish exec.venue.>, it reports so."""
    conf = (REPO_ROOT / "proto" / "nats" / "moonbus.conf").read_text()
    block = conf.index('user: "trading-agent"')
    weak = tmp_path / "weak.conf"
    weak.write_text(conf[:block] + conf[block:].replace('"orders.submit.trading.>",',
                                                        '"orders.submit.trading.>", "exec.venue.>",', 1))
    creds = load_or_create_credentials(tmp_path)
    with NatsServer(store_dir=tmp_path, credentials=creds, config=weak) as server:
        server.provision()
        results = await audit.audit(audit.Auditor(server.url, creds), safe=True,
                                    users=["trading-agent", "gateway"], attacks=[audit.forge_venue_accounts])
    by_user = {r.user: r for r in results}
    assert not by_user["trading-agent"].held and "exec.venue" in by_user["trading-agent"].detail
    assert "risk.recon" not in by_user["trading-agent"].detail  # that one is still refused
    assert by_user["gateway"].held, by_user["gateway"]


# ---- the real rust-risk ------------------------------------------------------------------------

pytest_e2e = pytest.mark.e2e
WAIT = 60.0
ENV = {
    "RUST_LOG": "warn",
    "MOONBUS__RISK__RECON_GRACE_MS": "0",
    "MOONBUS__RISK__RECON_STALE_MS": "2000",
    "MOONBUS__RISK__HEARTBEAT_MS": "200",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
}


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    system = System().start(port=free_port(), moon_dir=tmp_path, services=["risk"], out=None, env=ENV,
                            supervise=False)
    try:
        yield system
    finally:
        system.stop()
        print(system.tail(40))


async def connect_as(system: System, user: str) -> nats.NATS:
    env = system.env_for(user)
    return await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                              inbox_prefix=f"_INBOX.{user}")


class Seen:
    """The latest reconciliation and account risk published, and risk's error events."""

    def __init__(self) -> None:
        self.recon: Reconciliation | None = None
        self.account: AccountState | None = None
        self.errors: list[ErrorEvent] = []

    async def on_recon(self, msg) -> None:
        self.recon = Reconciliation.model_validate_json(msg.data)

    async def on_account(self, msg) -> None:
        self.account = AccountState.model_validate_json(msg.data)

    async def on_error(self, msg) -> None:
        self.errors.append(ErrorEvent.model_validate_json(msg.data))

    async def until(self, condition, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for: {what}; recon {self.recon}; " \
                                                f"account {self.account}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def feeds(system: System) -> AsyncIterator[tuple[nats.NATS, nats.NATS, Seen]]:
    """(execution, operator, what risk published), BTC-USDT ticks at 100 flowing."""
    md = await connect_as(system, "market-data")
    execution = await connect_as(system, "execution")
    operator = await connect_as(system, "operator")
    seen = Seen()
    await operator.subscribe(S.risk_recon("binance"), cb=seen.on_recon)
    await operator.subscribe(S.ACCOUNT, cb=seen.on_account)
    await operator.subscribe(S.errors("risk"), cb=seen.on_error)

    async def ticks() -> None:
        seq = 0
        while True:
            seq += 1
            tick = {"venue": "binance", "symbol": "BTC-USDT", "price": "100", "seq": seq, "ts": time.time_ns()}
            await md.publish(S.tick("binance", "BTC-USDT"), json.dumps(tick).encode())
            await asyncio.sleep(0.1)

    task = asyncio.create_task(ticks())
    try:
        yield execution, operator, seen
    finally:
        task.cancel()
        for nc in (md, execution, operator):
            await nc.close()


async def check(execution: nats.NATS, side: str, n: int) -> dict:
    body = {"client_order_id": f"rc-{n}", "agent": "trading", "symbol": "BTC-USDT", "venue": "binance",
            "side": side, "type": "MARKET", "quantity": "0.1", "ts": time.time_ns()}
    return json.loads((await execution.request(S.RISK_CHECK, json.dumps(body).encode(), timeout=5)).data)


@pytest_e2e
async def test_rust_risk_reconciles_a_live_venue(system, feeds):
    execution, operator, seen = feeds
    # A fill on binance, recorded in EXEC as execution records it: 0.5 BTC-USDT at 100, fee 0.1.
    fill = {"client_order_id": "live-1", "agent": "trading", "symbol": "BTC-USDT", "venue": "binance",
            "side": "BUY", "status": "FILLED", "quantity": "0.5", "filled_quantity": "0.5",
            "last_fill_quantity": "0.5", "last_fill_price": "100", "avg_fill_price": "100", "fee": "0.1",
            "timings": {}, "ts": time.time_ns()}
    await execution.jetstream().publish(S.exec_report("BTC-USDT"), json.dumps(fill).encode(),
                                        headers={"Nats-Msg-Id": "live-1:FILLED"})
    await seen.until(lambda: seen.account is not None and seen.account.open_positions == 1
                     and "not_ready" not in seen.account.reasons, "risk ready with the fill")

    # The venue holds 0.7 where risk's fills on it make 0.5: MISMATCH, the account REDUCE_ONLY.
    await execution.publish(S.exec_venue("binance"), encode(venue_status(positions={"BTC-USDT": "0.7"})))
    await seen.until(lambda: seen.recon is not None and seen.recon.state is ReconState.MISMATCH, "a mismatch")
    assert seen.recon.action is ReconAction.REDUCE_ONLY
    assert [(d.symbol, d.venue, d.ledger, d.difference) for d in seen.recon.differences] == [
        ("BTC-USDT", Decimal("0.7"), Decimal("0.5"), Decimal("0.2"))]
    await seen.until(lambda: "recon_mismatch:binance" in seen.account.reasons, "the account's breach reason")
    assert seen.account.state is TradingState.REDUCE_ONLY
    refused = await check(execution, "BUY", 1)
    assert not refused["approved"] and refused["reason_code"] == "account_reduce_only"
    assert "recon_mismatch:binance" in refused["reason"] and "venue 0.7, risk 0.5" in refused["reason"]
    reduce = await check(execution, "SELL", 2)
    assert reduce["approved"], f"an order that reduces the position passes: {reduce}"
    # Risk stores the reconciliation through a background writer: poll for it.
    kv = await operator.jetstream().key_value(S.KV_BUCKET)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            stored = Reconciliation.model_validate_json((await kv.get(S.risk_recon("binance"))).value)
        except nats.js.errors.KeyNotFoundError:
            stored = None
        if stored is not None and stored.state is ReconState.MISMATCH:
            break
        assert time.monotonic() < deadline, f"the mismatch was never stored: {stored}"
        await asyncio.sleep(0.05)

    # An order open at the venue that execution does not know: a mismatch as well.
    await execution.publish(S.exec_venue("binance"), encode(venue_status(positions={"BTC-USDT": "0.5"}, unknown=1)))
    await seen.until(lambda: seen.recon.unknown_orders == 1, "the unknown order")
    assert seen.recon.state is ReconState.MISMATCH and seen.recon.differences == []

    # A status on another venue's subject is not taken.
    await execution.publish(S.exec_venue("aster"), encode(venue_status(positions={"BTC-USDT": "0.5"})))
    await seen.until(lambda: any("another venue" in e.reason for e in seen.errors), "the refusal on errors.risk")
    assert seen.recon.state is ReconState.MISMATCH

    # The venue matches: the gate opens; the venue's cash and equity are the account's live part.
    await execution.publish(S.exec_venue("binance"),
                            encode(venue_status(positions={"BTC-USDT": "0.5"}, cash="5000", equity="5050")))
    await seen.until(lambda: seen.recon.state is ReconState.MATCHED, "a match")
    assert (seen.recon.action, seen.recon.cash, seen.recon.equity) == (ReconAction.NONE, Decimal(5000), Decimal(5050))
    await seen.until(lambda: not any(r.startswith("recon_") for r in seen.account.reasons), "the gate open")
    assert seen.account.state is TradingState.ACTIVE
    # Paper: 10000 less what the binance fill moved (50.1) is the ledger's; binance's own figures replace it.
    assert (seen.account.cash, seen.account.equity) == (Decimal(15000), Decimal(15050))
    assert (await check(execution, "BUY", 3))["approved"]

    # Execution falls silent: after recon_stale_ms (2 s) the venue is UNAVAILABLE, fail closed.
    await seen.until(lambda: seen.recon.state is ReconState.UNAVAILABLE, "unavailable", timeout=15)
    assert seen.recon.action is ReconAction.REDUCE_ONLY
    await seen.until(lambda: "recon_unavailable:binance" in seen.account.reasons, "the unavailable reason")
    assert seen.account.state is TradingState.REDUCE_ONLY
    assert (seen.account.cash, seen.account.equity) == (Decimal("9949.9"), Decimal("9999.9")), \
        "a stale venue's figures are not used: the ledger's"
    # Reported again: an account read that matches clears it.
    await execution.publish(S.exec_venue("binance"), encode(venue_status(positions={"BTC-USDT": "0.5"})))
    await seen.until(lambda: seen.recon.state is ReconState.MATCHED, "matched again")


@pytest_e2e
async def test_a_gated_venue_stays_gated_across_a_risk_restart(system, feeds):
    """Risk stores each reconciliation in KV and reads them back on start: a venue gated
    before the restart gates the account again at once (before any new status), and a
    report that matches opens it."""
    execution, operator, seen = feeds
    fill = {"client_order_id": "live-2", "agent": "trading", "symbol": "BTC-USDT", "venue": "binance",
            "side": "BUY", "status": "FILLED", "quantity": "0.5", "filled_quantity": "0.5",
            "last_fill_quantity": "0.5", "last_fill_price": "100", "avg_fill_price": "100", "fee": "0",
            "timings": {}, "ts": time.time_ns()}
    await execution.jetstream().publish(S.exec_report("BTC-USDT"), json.dumps(fill).encode(),
                                        headers={"Nats-Msg-Id": "live-2:FILLED"})
    await seen.until(lambda: seen.account is not None and seen.account.open_positions == 1
                     and "not_ready" not in seen.account.reasons, "risk ready with the fill")
    await execution.publish(S.exec_venue("binance"), encode(venue_status(positions={"BTC-USDT": "0.9"})))
    kv = await operator.jetstream().key_value(S.KV_BUCKET)

    async def stored_state() -> ReconState | None:
        try:
            return Reconciliation.model_validate_json((await kv.get(S.risk_recon("binance"))).value).state
        except nats.js.errors.KeyNotFoundError:
            return None

    deadline = time.monotonic() + WAIT
    while await stored_state() is not ReconState.MISMATCH:
        assert time.monotonic() < deadline, "the mismatch was never stored"
        await asyncio.sleep(0.05)

    system.kill("risk")
    seen.account = None
    system.restart("risk")
    await seen.until(lambda: seen.account is not None and "not_ready" not in seen.account.reasons,
                     "risk ready again")
    assert "recon_mismatch:binance" in seen.account.reasons and seen.account.state is TradingState.REDUCE_ONLY
    refused = await check(execution, "BUY", 10)
    assert refused["reason_code"] == "account_reduce_only" and "recon_mismatch:binance" in refused["reason"]
    await execution.publish(S.exec_venue("binance"), encode(venue_status(positions={"BTC-USDT": "0.5"})))
    await seen.until(lambda: seen.recon is not None and seen.recon.state is ReconState.MATCHED, "a match")
    await seen.until(lambda: seen.account.state is TradingState.ACTIVE, "the gate open")
