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
