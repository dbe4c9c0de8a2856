"""Jupiter on Solana: the local stand-in (tests/venues/jupiter.py) checked against a client that
swaps like Jupiter's docs (quote, swap, sign with solders, send); then the rust-execution
adapter through the real binary (test_binary_* below).
"""

from __future__ import annotations

import aiohttp
import pytest
from solders.keypair import Keypair
from solders.message import to_bytes_versioned
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from tests.venues.jupiter import BASE_FEE, JUP, USDC, WSOL, Client, StandIn


@pytest.fixture
async def chain() -> StandIn:
    venue = await StandIn().start()
    yield venue
    await venue.stop()


@pytest.fixture
async def session() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as s:
        yield s


def wallet(chain: StandIn) -> tuple[Keypair, str]:
    kp = Keypair()
    owner = str(kp.pubkey())
    chain.fund(owner, WSOL, 2_000_000_000)
    chain.fund(owner, USDC, 1_000_000_000)
    return kp, owner


async def test_stand_in_signed_swap_lands_once(chain: StandIn, session) -> None:
    kp, owner = wallet(chain)
    client = Client(chain, kp)
    tx, last_valid = await client.unsigned_swap(session, USDC, JUP, 2_000_000, "ExactOut")
    assert tx.message.account_keys[0] == kp.pubkey(), "the fee payer is the user"
    assert tx.signatures == [Signature.default()]
    assert last_valid == chain.height + 150
    signed = client.sign(tx)
    answer = await client.send(session, signed)
    assert answer["result"] == str(signed.signatures[0])
    # 2 JUP at 0.8125 USDC = 1.625 USDC.
    assert chain.balance(owner, JUP) == 2_000_000
    assert chain.balance(owner, USDC) == 1_000_000_000 - 1_625_000
    fee = BASE_FEE + 10_000
    assert chain.balance(owner, WSOL) == 2_000_000_000 - fee
    sig = str(signed.signatures[0])
    first = await client.rpc(session, "getSignatureStatuses", [[sig], {"searchTransactionHistory": True}])
    second = await client.rpc(session, "getSignatureStatuses", [[sig]])
    assert first["result"]["value"][0]["confirmationStatus"] == "processed"
    assert second["result"]["value"][0]["confirmationStatus"] == "confirmed"
    got = await client.rpc(session, "getTransaction", [sig, {"encoding": "jsonParsed",
                                                             "maxSupportedTransactionVersion": 0}])
    meta = got["result"]["meta"]
    assert meta["fee"] == fee and meta["err"] is None
    mine = [(b["mint"], b["uiTokenAmount"]["amount"]) for b in meta["postTokenBalances"] if b["owner"] == owner]
    assert sorted(mine) == sorted([(USDC, str(1_000_000_000 - 1_625_000)), (JUP, "2000000")])
    assert not any(b["owner"] == owner and b["mint"] == JUP for b in meta["preTokenBalances"])
    # Re-sending the same signed bytes: preflight says processed; without preflight it is
    # accepted and changes nothing.
    again = await client.send(session, signed)
    assert again["error"]["code"] == -32002 and "already been processed" in again["error"]["message"]
    assert (await client.send(session, signed, skip_preflight=True))["result"] == sig
    assert chain.balance(owner, JUP) == 2_000_000 and len(chain.landed()) == 1
    old = await client.rpc(session, "getTransaction", [sig, {"encoding": "jsonParsed"}])
    assert old["error"]["code"] == -32015


async def test_stand_in_verifies_signatures(chain: StandIn, session) -> None:
    kp, owner = wallet(chain)
    client = Client(chain, kp)
    tx, _ = await client.unsigned_swap(session, WSOL, USDC, 100_000_000)
    unsigned = await client.send(session, tx)
    assert unsigned["error"]["code"] == -32003
    stranger = VersionedTransaction.populate(tx.message, [Keypair().sign_message(to_bytes_versioned(tx.message))])
    assert (await client.send(session, stranger))["error"]["code"] == -32003
    signed = client.sign(tx)
    raw = bytearray(bytes(signed))
    raw[5] ^= 1  # one bit of the signature
    flipped = VersionedTransaction.from_bytes(bytes(raw))
    assert (await client.send(session, flipped))["error"]["code"] == -32003
    # A message the stand-in did not issue (signed correctly) is refused by simulation.
    other, _ = await client.unsigned_swap(session, WSOL, USDC, 100_000_000)
    chain.swaps.pop(to_bytes_versioned(other.message))
    refused = await client.send(session, client.sign(other))
    assert refused["error"]["code"] == -32002
    assert chain.landed() == [] and chain.balance(owner, USDC) == 1_000_000_000
    assert (await client.send(session, signed))["result"] == str(signed.signatures[0])
    assert chain.balance(owner, USDC) == 1_000_000_000 + 15_025_000


async def test_stand_in_drops_expires_and_fails(chain: StandIn, session) -> None:
    kp, owner = wallet(chain)
    client = Client(chain, kp)
    chain.drop_sends = 1
    tx, _ = await client.unsigned_swap(session, WSOL, USDC, 100_000_000)
    signed = client.sign(tx)
    sig = str(signed.signatures[0])
    assert (await client.send(session, signed))["result"] == sig
    status = await client.rpc(session, "getSignatureStatuses", [[sig]])
    assert status["result"]["value"] == [None], "dropped"
    assert (await client.send(session, signed))["result"] == sig
    assert len(chain.landed()) == 1
    # Expiry: an old blockhash is not found under preflight and never lands.
    tx2, last_valid = await client.unsigned_swap(session, WSOL, USDC, 100_000_000)
    chain.expire()
    height = (await client.rpc(session, "getBlockHeight", []))["result"]
    assert height > last_valid
    late = await client.send(session, client.sign(tx2))
    assert "Blockhash not found" in late["error"]["message"]
    assert (await client.send(session, client.sign(tx2), skip_preflight=True))["result"]
    assert len(chain.landed()) == 1
    # Preflight failure: not forwarded; on-chain failure: the fee is paid, nothing swapped.
    chain.fail_preflight = 1
    tx3, _ = await client.unsigned_swap(session, WSOL, USDC, 100_000_000)
    failed = await client.send(session, client.sign(tx3))
    assert failed["error"]["data"]["err"] == {"InstructionError": [2, {"Custom": 6001}]}
    chain.fail_onchain = 1
    lamports, usdc = chain.balance(owner, WSOL), chain.balance(owner, USDC)
    assert (await client.send(session, client.sign(tx3)))["result"]
    assert chain.balance(owner, USDC) == usdc and chain.balance(owner, WSOL) == lamports - BASE_FEE - 10_000
    sig3 = str(client.sign(tx3).signatures[0])
    status = await client.rpc(session, "getSignatureStatuses", [[sig3]])
    assert status["result"]["value"][0]["err"] == {"InstructionError": [2, {"Custom": 6001}]}


async def test_stand_in_quotes_and_limits(chain: StandIn, session) -> None:
    async with session.get(f"{chain.jupiter_url}/quote", params={
            "inputMint": USDC, "outputMint": WSOL, "amount": "1000000000", "swapMode": "ExactOut",
            "slippageBps": "100"}) as r:
        quote = await r.json()
    # 1 SOL at 150.25 USDC; at most 1% more.
    assert (quote["inAmount"], quote["otherAmountThreshold"]) == ("150250000", "151752500")
    async with session.get(f"{chain.jupiter_url}/quote", params={
            "inputMint": USDC, "outputMint": "11111111111111111111111111111111", "amount": "1"}) as r:
        assert r.status == 400 and (await r.json())["errorCode"] == "COULD_NOT_FIND_ANY_ROUTE"
    chain.jupiter_429 = 1
    async with session.get(f"{chain.jupiter_url}/quote", params={
            "inputMint": USDC, "outputMint": WSOL, "amount": "1"}) as r:
        assert r.status == 429
    chain.rpc_429 = 1
    async with session.post(chain.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"}) as r:
        assert r.status == 429
    async with session.post(chain.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"}) as r:
        assert (await r.json())["result"] == "ok"


# ----- the adapter through the real rust-execution binary

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from decimal import Decimal  # noqa: E402
from pathlib import Path  # noqa: E402

import nats  # noqa: E402

from services.devstack.launcher import SERVICES, System  # noqa: E402
from services.devstack.natsserver import REPO_ROOT, free_port  # noqa: E402

WAIT = 90.0
BINARY_ENV = {
    "RUST_LOG": "warn,rust_execution::live=info",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    "MOONBUS__RISK__STARTING_CASH": '"1000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"10000000"',
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__RATE_LIMIT_REDUCE_ONLY": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__RISK__PRICE_BAND_PCT": "0",
    # The wallet holds SOL for fees before any fill: reconciliation would gate the account
    # (its own tests are risk's); here it must not.
    "MOONBUS__RISK__RECON_TOLERANCE": '"1000000"',
    "MOONBUS__EXECUTION__LIVE_POLL_MS": "100",
    "MOONBUS__EXECUTION__RECONCILE_INTERVAL_MS": "500",
    "MOONBUS__EXECUTION__LIVE__JUP__KIND": '"jupiter"',
    "MOONBUS__EXECUTION__LIVE__JUP__MODE": '"testnet"',
    "MOONBUS__EXECUTION__LIVE__JUP__MAX_NOTIONAL": '"100000"',
    "MOONBUS__EXECUTION__LIVE__JUP__SYMBOLS": f'{{ "SOL-USDC" = "{WSOL}/{USDC}" }}',
    "MOONBUS__EXECUTION__LIVE__JUP__POLL_MS": "50",
    "MOONBUS__EXECUTION__LIVE__JUP__RESEND_MS": "150",
    "MOONBUS__EXECUTION__LIVE__JUP__TIMEOUT_MS": "1000",
    # Only a swap found again after a restart expires by time (its last valid height is lost).
    "MOONBUS__EXECUTION__LIVE__JUP__BLOCKHASH_LIFE_SECS": "3",
}
TERMINAL = {"FILLED", "REJECTED", "CANCELLED", "EXPIRED", "FAILED"}


class ThreadedChain:
    """The stand-in on its own event loop thread: the binary talks to it while this test's
    loop is blocked (System.start waits for the services synchronously)."""

    def __init__(self) -> None:
        self.chain = StandIn()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.chain.start(), self.loop).result(10)
        return self.chain

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.chain.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[System, StandIn, Keypair]]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    kp = Keypair()
    key_file = tmp_path / "id.json"
    key_file.write_text(json.dumps(list(bytes(kp))))
    os.chmod(key_file, 0o600)
    with ThreadedChain() as chain:
        chain.fund(str(kp.pubkey()), WSOL, 2_000_000_000)
        chain.fund(str(kp.pubkey()), USDC, 1_000_000_000)
        env = dict(BINARY_ENV)
        env["MOONBUS__EXECUTION__LIVE__JUP__JUPITER_URL"] = json.dumps(chain.jupiter_url)
        env["MOONBUS__EXECUTION__LIVE__JUP__RPC_URL"] = json.dumps(chain.rpc_url)
        env["MOONBUS__EXECUTION__LIVE__JUP__KEYPAIR_PATH"] = json.dumps(str(key_file))
        system = System().start(port=free_port(), moon_dir=tmp_path / "moon",
                                services=["market-data", "risk", "execution"], out=None, env=env)
        try:
            yield system, chain, kp
        finally:
            system.stop()
            print(system.tail(60))


class Operator:
    def __init__(self, system: System, nc: nats.NATS) -> None:
        self.system, self.nc, self.js = system, nc, nc.jetstream()
        self.reports: dict[str, list[dict]] = defaultdict(list)
        self.venue_status: list[dict] = []
        self.sent = 0

    async def on_report(self, msg) -> None:
        report = json.loads(msg.data)
        self.reports[report.get("client_order_id")].append(report)

    async def on_venue(self, msg) -> None:
        self.venue_status.append(json.loads(msg.data))

    async def until(self, condition, what: str, timeout: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            assert loop.time() < deadline, f"timed out waiting for: {what}\n{self.system.tail(40)}"
            await asyncio.sleep(0.05)

    async def order(self, side: str, quantity: str, symbol: str = "SOL-USDC", **extra: str) -> dict:
        """Sends one order to venue `jup` and waits for its terminal report."""
        cid = await self.submit(side, quantity, symbol, **extra)
        return await self.terminal(cid)

    async def submit(self, side: str, quantity: str, symbol: str = "SOL-USDC", **extra: str) -> str:
        self.sent += 1
        cid = f"jup-{self.sent}"
        body = {"client_order_id": cid, "agent": "operator", "symbol": symbol, "venue": "jup", "side": side,
                "type": "MARKET", "quantity": quantity, "origin_ts": 1, "ts": 1, **extra}
        await self.js.publish(f"orders.submit.operator.{symbol}", json.dumps(body).encode(),
                              headers={"Nats-Msg-Id": cid})
        return cid

    async def terminal(self, cid: str) -> dict:
        await self.until(lambda: any(r["status"] in TERMINAL for r in self.reports[cid]), f"{cid} terminal")
        return next(r for r in self.reports[cid] if r["status"] in TERMINAL)


@pytest.fixture
async def operator(live) -> Operator:
    system, _, _ = live
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                            inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    op = Operator(system, nc)
    await nc.subscribe("exec.report.>", cb=op.on_report)
    await nc.subscribe("exec.venue.jup", cb=op.on_venue)
    states: dict[str, str] = {}

    async def on_verdict(msg) -> None:
        verdict = json.loads(msg.data)
        states[verdict["symbol"]] = verdict["state"]

    sub = await nc.subscribe("risk.verdict.>", cb=on_verdict)
    await op.until(lambda: states.get("SOL-USDC") == "ACTIVE", f"SOL-USDC ACTIVE: {states}")
    await sub.unsubscribe()
    try:
        yield op
    finally:
        await nc.close()


@pytest.mark.e2e
async def test_binary_swaps_fill_from_the_chain(live, operator: Operator) -> None:
    _, chain, kp = live
    owner = str(kp.pubkey())
    # BUY 0.1 SOL: ExactOut 0.1 SOL for 15.025 USDC; the fee (5000 + 10000 lamports) in USDC
    # at the swap's price: 0.000015 x 150.25 = 0.00225375 -> 0.002254 (USDC has 6 decimals).
    buy = await operator.order("BUY", "0.1")
    assert buy["status"] == "FILLED", buy
    assert Decimal(buy["filled_quantity"]) == Decimal("0.1")
    assert Decimal(buy["avg_fill_price"]) == Decimal("150.25")
    assert Decimal(buy["fee"]) == Decimal("0.002254")
    assert [q["swapMode"] for q in chain.quote_requests] == ["ExactOut"]
    assert chain.quote_requests[0]["amount"] == "100000000" and chain.quote_requests[0]["slippageBps"] == "50"
    assert chain.balance(owner, USDC) == 1_000_000_000 - 15_025_000
    assert chain.balance(owner, WSOL) == 2_000_000_000 + 100_000_000 - 15_000
    assert len(chain.landed()) == 1 and chain.landed()[0].user == owner
    assert {s for s, _ in chain.sends} == {chain.landed()[0].signature}, "one transaction, landed once"
    assert chain.sends[0][1] is False, "the first send runs preflight"

    # SELL with the first two sends lost: the same signed bytes go again until one lands.
    chain.drop_sends = 2
    sell = await operator.order("SELL", "0.05")
    assert sell["status"] == "FILLED", sell
    assert Decimal(sell["avg_fill_price"]) == Decimal("150.25")
    swap = chain.landed()[-1]
    assert swap.swap_mode == "ExactIn" and swap.in_amount == 50_000_000
    sends = [s for s, _ in chain.sends if s == swap.signature]
    assert len(sends) >= 3 and len(chain.landed()) == 2
    first = next(skip for s, skip in chain.sends if s == swap.signature)
    assert first is False, "the first send runs preflight"

    # Balances and positions read from the chain (exec.venue.jup): 1000 - 15.025 + 7.5125 USDC;
    # 2 + 0.1 - 0.05 SOL less two fees of 0.000015.
    def account() -> dict | None:
        for status in reversed(operator.venue_status):
            if (status.get("account") or {}).get("cash") == "992.4875":
                return status["account"]
        return None

    await operator.until(lambda: account() is not None, f"account read: {operator.venue_status[-1:]}", timeout=20)
    balances = {b["asset"]: Decimal(b["total"]) for b in account()["balances"]}
    assert balances == {"SOL": Decimal("2.04997"), "USDC": Decimal("992.4875")}
    assert [(p["symbol"], Decimal(p["quantity"])) for p in account()["positions"]] == [("SOL-USDC", Decimal("2.04997"))]


@pytest.mark.e2e
async def test_binary_expiry_failures_and_rules(live, operator: Operator) -> None:
    _, chain, _ = live
    # Every send lost, then the chain passes the blockhash's last valid height: EXPIRED, and
    # never a second swap for the same order.
    chain.drop_sends = 10_000
    swaps_before = len(chain.swap_requests)
    task = asyncio.create_task(operator.order("BUY", "0.1"))
    await operator.until(lambda: len(chain.sends) >= 2, "the swap sent and re-sent")
    chain.expire()
    expired = await task
    assert expired["status"] == "EXPIRED" and expired["reason"].startswith("blockhash_expired"), expired
    assert len(chain.swap_requests) == swaps_before + 1
    assert len({s for s, _ in chain.sends}) == 1 and chain.landed() == []
    chain.drop_sends = 0

    chain.fail_onchain = 1
    failed = await operator.order("BUY", "0.1")
    assert failed["status"] == "REJECTED" and failed["reason"].startswith("slippage_exceeded"), failed
    chain.fail_preflight = 1
    refused = await operator.order("BUY", "0.1")
    assert refused["status"] == "REJECTED" and refused["reason"].startswith("preflight: -32002"), refused

    # Partial: the chain moved 0.099 SOL for 15.1 USDC.
    chain.settle_override = (15_100_000, 99_000_000)
    partial = await operator.order("BUY", "0.1")
    reports = operator.reports[f"jup-{operator.sent}"]
    fill = next(r for r in reports if r["status"] == "PARTIALLY_FILLED")
    assert Decimal(fill["filled_quantity"]) == Decimal("0.099")
    assert abs(Decimal(fill["avg_fill_price"]) - Decimal("15.1") / Decimal("0.099")) < Decimal("1e-20")
    assert partial["status"] == "EXPIRED" and partial["reason"].startswith("partial_swap"), partial

    lot = await operator.order("BUY", "0.0000000001")
    assert lot["status"] == "REJECTED" and lot["reason"].startswith("lot_size"), lot
    gtc = await operator.order("BUY", "0.1", type="LIMIT", limit_price="200")
    assert gtc["status"] == "REJECTED" and gtc["reason"].startswith("unsupported"), gtc
    # IOC limits: the worst price within slippage (150.25 x 1.005 = 151.00125) must be at or
    # better than the limit.
    low = await operator.order("BUY", "0.1", type="LIMIT", limit_price="151", time_in_force="IOC")
    assert low["status"] == "EXPIRED" and low["reason"].startswith("limit_price"), low
    ok = await operator.order("BUY", "0.1", type="LIMIT", limit_price="151.01", time_in_force="IOC")
    assert ok["status"] == "FILLED" and Decimal(ok["avg_fill_price"]) == Decimal("150.25"), ok
    chain.jupiter_429 = 1
    limited = await operator.order("BUY", "0.1")
    assert limited["status"] == "REJECTED" and limited["reason"].startswith("jupiter: quote HTTP 429"), limited
    chain.no_route = True
    no_route = await operator.order("SELL", "0.1")
    assert no_route["status"] == "REJECTED" and "COULD_NOT_FIND_ANY_ROUTE" in no_route["reason"], no_route


@pytest.mark.e2e
async def test_binary_restart_mid_swap_finds_the_swap_by_its_signature(live, operator: Operator) -> None:
    system, chain, kp = live
    owner = str(kp.pubkey())

    async def signed_and_stored(cid: str) -> str:
        """The swap is sent but lands nowhere (every send lost); its signature is stored on an
        ACCEPTED report (a swap is known by its signature only); execution is then killed."""
        await operator.until(lambda: any(r.get("venue_order_id") for r in operator.reports[cid]), f"{cid}'s signature")
        signature = next(r["venue_order_id"] for r in operator.reports[cid] if r.get("venue_order_id"))
        assert [r["status"] for r in operator.reports[cid]] == ["ACCEPTED", "ACCEPTED"], operator.reports[cid]
        assert {s for s, _ in chain.sends} >= {signature}
        system.kill("execution")
        return signature

    # It landed while execution was down (an earlier send went through after all): the
    # restarted execution finds it by the stored signature and books the fill, once.
    chain.drop_sends = 10_000
    swaps = len(chain.swap_requests)
    landed = await operator.submit("BUY", "0.2")
    signature = await signed_and_stored(landed)
    chain.drop_sends = 0
    swap = next(s for s in chain.swaps.values() if s.landed_slot is None and s.user == owner)
    chain.land(swap, signature)
    system.restart("execution")
    filled = await operator.terminal(landed)
    assert filled["status"] == "FILLED" and Decimal(filled["filled_quantity"]) == Decimal("0.2"), operator.reports[landed]
    assert filled["venue_order_id"] == signature
    assert len(chain.swap_requests) == swaps + 1 and len(chain.landed()) == 1

    # It never lands: EXPIRED once a blockhash's life has passed since the signature was
    # stored (not REJECTED as never received: it was, and could have landed).
    chain.drop_sends = 10_000
    lost = await operator.submit("BUY", "0.1")
    await signed_and_stored(lost)
    system.restart("execution")
    expired = await operator.terminal(lost)
    assert expired["status"] == "EXPIRED" and "found again after a restart" in expired["reason"], expired
    assert len(chain.landed()) == 1
    chain.drop_sends = 0


@pytest.mark.e2e
async def test_binary_killed_right_after_the_send_finds_the_swap_it_stored_ahead(live, operator: Operator) -> None:
    system, chain, _ = live
    # The swap lands at once but its answer comes late, and execution is killed while it
    # waits (well within the adapter's 1 s). The signature was stored on an ACCEPTED report
    # before the send, so the restarted execution watches it and books the fill. Stored only
    # after the answer, it was lost: the order, found nowhere, would end REJECTED
    # venue_never_received while the wallet had swapped.
    chain.send_answer_delay = 5
    cid = await operator.submit("BUY", "0.2")
    await operator.until(lambda: chain.sends, "the swap sent")
    system.kill("execution")
    signature = chain.sends[0][0]
    assert len(chain.landed()) == 1
    await operator.until(lambda: any(r.get("venue_order_id") == signature for r in operator.reports[cid]),
                         f"the signature stored before the send: {operator.reports[cid]}", timeout=5)
    chain.send_answer_delay = 0
    system.restart("execution")
    filled = await operator.terminal(cid)
    assert filled["status"] == "FILLED" and Decimal(filled["filled_quantity"]) == Decimal("0.2"), operator.reports[cid]
    assert filled["venue_order_id"] == signature
    assert len(chain.swap_requests) == 1 and len(chain.landed()) == 1


@pytest.mark.e2e
async def test_binary_lost_answer_is_found_on_chain_never_resent_as_a_new_swap(live, operator: Operator) -> None:
    _, chain, kp = live
    # The transaction lands but the answer to sendTransaction comes after the adapter's 1 s
    # timeout: the order is unconfirmed, its signature is watched and queried, and it fills
    # from the chain, once, with no second quote or swap.
    chain.send_answer_delay = 2.5
    buy = await operator.order("BUY", "0.2")
    assert buy["status"] == "FILLED" and Decimal(buy["filled_quantity"]) == Decimal("0.2"), buy
    assert len(chain.swap_requests) == 1 and len(chain.quote_requests) == 1
    assert len(chain.landed()) == 1
    assert chain.balance(str(kp.pubkey()), USDC) == 1_000_000_000 - 30_050_000


@pytest.mark.e2e
def test_binary_refuses_a_keypair_file_others_can_read(tmp_path: Path) -> None:
    kp = Keypair()
    key_file = tmp_path / "id.json"
    key_file.write_text(json.dumps(list(bytes(kp))))
    os.chmod(key_file, 0o644)
    with ThreadedChain() as chain:
        env = dict(BINARY_ENV)
        env["MOONBUS__EXECUTION__LIVE__JUP__JUPITER_URL"] = json.dumps(chain.jupiter_url)
        env["MOONBUS__EXECUTION__LIVE__JUP__RPC_URL"] = json.dumps(chain.rpc_url)
        env["MOONBUS__EXECUTION__LIVE__JUP__KEYPAIR_PATH"] = json.dumps(str(key_file))
        system = System().start(port=free_port(), moon_dir=tmp_path / "moon", services=["execution"],
                                out=None, env=env)
        try:
            line = system.wait_for_output("execution", r"mode 0644", timeout=30)
            assert "chmod 600" in line
            secret = json.dumps(list(bytes(kp)))[1:40]
            assert secret not in "\n".join(system.output("execution"))
            assert chain.rpc_calls == [], "nothing sent before the key is accepted"
        finally:
            system.stop()
