"""A local stand-in of Jupiter's Swap API (v1: /quote, /swap) and of a Solana JSON-RPC node on
127.0.0.1, for the rust-execution Jupiter adapter tests.

- `GET /swap/v1/quote`: prices from a table (USD per token), ExactIn or ExactOut, the
  `otherAmountThreshold` from slippageBps; errors as Jupiter writes them
  (`{"error": ..., "errorCode": "COULD_NOT_FIND_ANY_ROUTE"}`).
- `POST /swap/v1/swap`: a REAL unsigned v0 transaction built with `solders`: the fee payer
  is `userPublicKey`, a fresh blockhash, `lastValidBlockHeight` = height + 150, all tracked.
- `POST /rpc`: JSON-RPC 2.0. `sendTransaction` VERIFIES the first signature with solders over
  the message bytes and that the message is one the stand-in issued (else -32003 / -32002,
  as a node answers), refuses an expired blockhash ("Blockhash not found") and a re-send of a
  landed transaction under preflight ("already been processed"); `getSignatureStatuses`
  (processed, then confirmed), `getTransaction` (jsonParsed, needs
  maxSupportedTransactionVersion 0, pre/postTokenBalances, lamports), `getBlockHeight` (one
  block per call), `getBalance`, `getTokenAccountsByOwner`, `getTokenSupply`, `getHealth`,
  `getVersion`.
- Native SOL moves as lamports (Jupiter's wrapAndUnwrapSol: no wSOL token account before or
  after), other tokens in token accounts.
- Hooks: `drop_sends` (accepted, then lost), `fail_preflight`, `fail_onchain` (an
  InstructionError, the fee is still paid), `settle_override` (odd or partial amounts),
  `expire()` (the chain moves past every blockhash), `send_answer_delay` (the answer to
  sendTransaction comes after the client gave up), `rpc_429` / `jupiter_429`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from aiohttp import web
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from tests.venues import serve

WSOL = "So11111111111111111111111111111111111111112"
USDC = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
JUP = "JUPyiwrYJFskUPiHa7hkeR8VUtAeFoSYbKedZNsDvCN"
JUPITER_PROGRAM = "JUP6LkbZbjS1jKKwapdHNy74zcZ3tLUZoi5QNyVTaV4"
TOKEN_PROGRAM = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"
POOL_OWNER = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"
BASE_FEE = 5000
BLOCKHASH_LIFE = 150


def derived(*parts: str) -> str:
    """A stable fake address (token accounts, pool vaults) from its parts."""
    return str(Pubkey.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()))


@dataclass
class Swap:
    """One transaction /swap issued."""

    swap_id: int
    user: str
    input_mint: str
    output_mint: str
    in_amount: int
    out_amount: int
    swap_mode: str
    last_valid: int
    priority_lamports: int
    message: bytes
    signature: str | None = None
    landed_slot: int | None = None
    err: dict | None = None
    status_reads: int = 0
    tx_json: dict | None = None


@dataclass
class StandIn:
    decimals: dict[str, int] = field(default_factory=lambda: {WSOL: 9, USDC: 6, JUP: 6})
    usd: dict[str, Decimal] = field(default_factory=lambda: {
        WSOL: Decimal("150.25"), USDC: Decimal("1"), JUP: Decimal("0.8125")})
    # Test hooks
    drop_sends: int = 0  # the next N sendTransaction are answered with the signature, then lost
    fail_preflight: int = 0  # the next N sends fail simulation (not forwarded)
    fail_onchain: int = 0  # the next N landings fail with InstructionError (fee paid)
    settle_override: tuple[int, int] | None = None  # (in, out) atomic for the next landing
    rpc_429: int = 0
    jupiter_429: int = 0
    no_route: bool = False
    send_answer_delay: float = 0.0  # sendTransaction lands, then answers this late (a client timeout)
    height_step: int = 1

    def __post_init__(self) -> None:
        self.height = 279_000_000
        self.slot = 300_000_000
        self.lamports: dict[str, int] = {}
        self.tokens: dict[tuple[str, str], int] = {}  # (owner, mint) -> atomic
        self.swaps: dict[bytes, Swap] = {}  # message bytes -> swap
        self.by_signature: dict[str, Swap] = {}
        self.ids = itertools.count(1)
        self.sends: list[tuple[str, bool]] = []  # (signature, skipPreflight)
        self.swap_requests: list[dict] = []
        self.quote_requests: list[dict[str, str]] = []
        self.rpc_calls: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    # ----- lifecycle

    @property
    def jupiter_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/swap/v1"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rpc"

    async def start(self) -> StandIn:
        app = web.Application()
        app.router.add_get("/swap/v1/quote", self.quote)
        app.router.add_post("/swap/v1/swap", self.swap)
        app.router.add_post("/rpc", self.rpc)
        self.runner, self.port = await serve(app)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ----- state

    def fund(self, owner: str, mint: str, amount: int) -> None:
        """Credits `amount` atomic units (lamports for wrapped SOL)."""
        if mint == WSOL:
            self.lamports[owner] = self.lamports.get(owner, 0) + amount
        else:
            self.tokens[(owner, mint)] = self.tokens.get((owner, mint), 0) + amount

    def balance(self, owner: str, mint: str) -> int:
        return self.lamports.get(owner, 0) if mint == WSOL else self.tokens.get((owner, mint), 0)

    def expire(self) -> None:
        """The chain moves past the life of every blockhash issued so far."""
        self.height += BLOCKHASH_LIFE + 50

    def landed(self) -> list[Swap]:
        return [s for s in self.swaps.values() if s.landed_slot is not None]

    # ----- Jupiter

    def jupiter_error(self, status: int, code: str, error: str) -> web.Response:
        return web.json_response({"error": error, "errorCode": code}, status=status)

    async def quote(self, request: web.Request) -> web.Response:
        if self.jupiter_429 > 0:
            self.jupiter_429 -= 1
            return web.json_response({"message": "Too many requests"}, status=429)
        q = dict(request.query)
        self.quote_requests.append(q)
        try:
            in_mint, out_mint, mode = q["inputMint"], q["outputMint"], q.get("swapMode", "ExactIn")
            amount, slippage = int(q["amount"]), int(q.get("slippageBps", "50"))
        except (KeyError, ValueError) as e:
            return self.jupiter_error(400, "INVALID_REQUEST", f"bad query: {e}")
        if not q["amount"].isdigit() or amount <= 0 or mode not in ("ExactIn", "ExactOut"):
            return self.jupiter_error(400, "INVALID_REQUEST", "bad amount or swapMode")
        if in_mint not in self.usd or out_mint not in self.usd or self.no_route:
            return self.jupiter_error(400, "COULD_NOT_FIND_ANY_ROUTE", "Could not find any route")
        rate = self.usd[in_mint] / self.usd[out_mint]  # output tokens per input token
        din, dout = Decimal(10) ** self.decimals[in_mint], Decimal(10) ** self.decimals[out_mint]
        if mode == "ExactIn":
            in_amt = amount
            out_amt = int((Decimal(amount) / din * rate * dout).to_integral_value(ROUND_FLOOR))
            threshold = out_amt * (10_000 - slippage) // 10_000
        else:
            out_amt = amount
            in_amt = int((Decimal(amount) / dout / rate * din).to_integral_value(ROUND_CEILING))
            threshold = -(-in_amt * (10_000 + slippage) // 10_000)
        if in_amt <= 0 or out_amt <= 0:
            return self.jupiter_error(400, "COULD_NOT_FIND_ANY_ROUTE", "Could not find any route")
        return web.json_response({
            "inputMint": in_mint, "inAmount": str(in_amt), "outputMint": out_mint,
            "outAmount": str(out_amt), "otherAmountThreshold": str(threshold), "swapMode": mode,
            "slippageBps": slippage, "platformFee": None, "priceImpactPct": "0",
            "routePlan": [{"swapInfo": {"ammKey": derived("pool", in_mint, out_mint), "label": "StandIn",
                                        "inputMint": in_mint, "outputMint": out_mint,
                                        "inAmount": str(in_amt), "outAmount": str(out_amt),
                                        "feeAmount": "0", "feeMint": in_mint}, "percent": 100}],
            "contextSlot": self.slot, "timeTaken": 0.001,
        })

    async def swap(self, request: web.Request) -> web.Response:
        if self.jupiter_429 > 0:
            self.jupiter_429 -= 1
            return web.json_response({"message": "Too many requests"}, status=429)
        try:
            body = await request.json()
            quote, user = body["quoteResponse"], body["userPublicKey"]
            payer = Pubkey.from_string(user)
            in_amt, out_amt = int(quote["inAmount"]), int(quote["outAmount"])
            in_mint, out_mint, mode = quote["inputMint"], quote["outputMint"], quote["swapMode"]
        except (ValueError, KeyError, TypeError) as e:
            return self.jupiter_error(400, "INVALID_REQUEST", f"bad swap request: {e}")
        self.swap_requests.append(body)
        if "computeUnitPriceMicroLamports" in body and "prioritizationFeeLamports" in body:
            return self.jupiter_error(400, "INVALID_REQUEST", "both priority fee options")
        if "computeUnitPriceMicroLamports" in body:
            priority = int(body["computeUnitPriceMicroLamports"]) * 200_000 // 1_000_000
        elif isinstance(body.get("prioritizationFeeLamports"), dict):
            cap = body["prioritizationFeeLamports"]["priorityLevelWithMaxLamports"]["maxLamports"]
            priority = int(cap) // 2
        else:
            priority = 10_000  # "auto"
        swap_id = next(self.ids)
        blockhash = Hash.from_bytes(hashlib.sha256(f"blockhash {swap_id} {time.time()}".encode()).digest())
        accounts = [AccountMeta(payer, True, True)]
        for mint in (in_mint, out_mint):
            if mint != WSOL:
                accounts.append(AccountMeta(Pubkey.from_string(derived("ata", user, mint)), False, True))
        accounts.append(AccountMeta(Pubkey.from_string(derived("vault", in_mint, out_mint)), False, True))
        ix = Instruction(Pubkey.from_string(JUPITER_PROGRAM), b"stand-in swap %d" % swap_id, accounts)
        message = MessageV0.try_compile(payer, [ix], [], blockhash)
        unsigned = VersionedTransaction.populate(message, [Signature.default()])
        last_valid = self.height + BLOCKHASH_LIFE
        raw = to_bytes_versioned(message)
        self.swaps[raw] = Swap(swap_id, user, in_mint, out_mint, in_amt, out_amt, mode, last_valid,
                               priority, raw)
        return web.json_response({"swapTransaction": base64.b64encode(bytes(unsigned)).decode(),
                                  "lastValidBlockHeight": last_valid,
                                  "prioritizationFeeLamports": priority})

    # ----- Solana JSON-RPC

    async def rpc(self, request: web.Request) -> web.Response:
        if self.rpc_429 > 0:
            self.rpc_429 -= 1
            return web.Response(status=429, text="Too many requests")
        try:
            req = await request.json()
            method, params, rid = req["method"], req.get("params", []), req.get("id")
            assert req.get("jsonrpc") == "2.0"
        except Exception:  # noqa: BLE001 - any malformed request
            return web.json_response({"jsonrpc": "2.0", "id": None,
                                      "error": {"code": -32700, "message": "Parse error"}})
        self.rpc_calls.append(method)
        handler = getattr(self, f"rpc_{method}", None)
        if handler is None:
            return web.json_response({"jsonrpc": "2.0", "id": rid,
                                      "error": {"code": -32601, "message": "Method not found"}})
        try:
            result = handler(params)
            if method == "sendTransaction" and self.send_answer_delay:
                await asyncio.sleep(self.send_answer_delay)
        except RpcError as e:
            error = {"code": e.code, "message": e.message}
            if e.data is not None:
                error["data"] = e.data
            return web.json_response({"jsonrpc": "2.0", "id": rid, "error": error})
        return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result})

    def context(self) -> dict:
        return {"apiVersion": "2.1.0", "slot": self.slot}

    def rpc_getHealth(self, params: list) -> str:
        return "ok"

    def rpc_getVersion(self, params: list) -> dict:
        return {"solana-core": "2.1.0-standin", "feature-set": 1}

    def rpc_getBlockHeight(self, params: list) -> int:
        self.height += self.height_step
        self.slot += self.height_step
        return self.height

    def rpc_getTokenSupply(self, params: list) -> dict:
        mint = params[0]
        if mint not in self.decimals:
            raise RpcError(-32602, "Invalid param: not a Token mint")
        d = self.decimals[mint]
        return {"context": self.context(), "value": {"amount": "1000000000000000", "decimals": d,
                                                     "uiAmount": 1e15 / 10 ** d,
                                                     "uiAmountString": str(Decimal(10 ** 15) / 10 ** d)}}

    def rpc_getBalance(self, params: list) -> dict:
        return {"context": self.context(), "value": self.lamports.get(params[0], 0)}

    def token_amount(self, mint: str, amount: int) -> dict:
        d = self.decimals[mint]
        ui = Decimal(amount) / (Decimal(10) ** d)
        return {"amount": str(amount), "decimals": d, "uiAmount": float(ui), "uiAmountString": str(ui)}

    def rpc_getTokenAccountsByOwner(self, params: list) -> dict:
        owner, flt, cfg = params[0], params[1], params[2] if len(params) > 2 else {}
        if cfg.get("encoding") != "jsonParsed":
            raise RpcError(-32602, "the stand-in answers jsonParsed only")
        value = []
        for (who, mint), amount in sorted(self.tokens.items()):
            if who != owner or ("mint" in flt and flt["mint"] != mint):
                continue
            if "programId" in flt and flt["programId"] != TOKEN_PROGRAM:
                continue
            value.append({"pubkey": derived("ata", owner, mint), "account": {
                "data": {"parsed": {"info": {"isNative": False, "mint": mint, "owner": owner,
                                             "state": "initialized",
                                             "tokenAmount": self.token_amount(mint, amount)},
                                    "type": "account"}, "program": "spl-token", "space": 165},
                "executable": False, "lamports": 2039280, "owner": TOKEN_PROGRAM, "rentEpoch": 0}})
        return {"context": self.context(), "value": value}

    def rpc_sendTransaction(self, params: list) -> str:
        raw_b64, cfg = params[0], params[1] if len(params) > 1 else {}
        if cfg.get("encoding") != "base64":
            raise RpcError(-32602, "the stand-in takes base64 only")
        try:
            tx = VersionedTransaction.from_bytes(base64.b64decode(raw_b64, validate=True))
        except Exception as e:  # noqa: BLE001
            raise RpcError(-32602, f"invalid transaction: failed to deserialize: {e}") from e
        message = to_bytes_versioned(tx.message)
        signature = tx.signatures[0]
        payer = tx.message.account_keys[0]
        if not signature.verify(payer, message):
            raise RpcError(-32003, "Transaction signature verification failure")
        skip = bool(cfg.get("skipPreflight", False))
        self.sends.append((str(signature), skip))
        swap = self.swaps.get(message)
        if swap is None:
            raise RpcError(-32002, "Transaction simulation failed: the stand-in did not issue this transaction",
                           {"err": "AccountNotFound", "logs": []})
        if swap.landed_slot is not None:
            if not skip:
                raise RpcError(-32002, "Transaction simulation failed: This transaction has already been processed",
                               {"err": "AlreadyProcessed", "logs": []})
            return str(signature)
        if self.height > swap.last_valid:
            if not skip:
                raise RpcError(-32002, "Transaction simulation failed: Blockhash not found",
                               {"err": "BlockhashNotFound", "logs": []})
            return str(signature)  # a node drops it
        if not skip and self.fail_preflight > 0:
            self.fail_preflight -= 1
            raise RpcError(-32002, "Transaction simulation failed: Error processing Instruction 2: custom program error: 0x1771",
                           {"err": {"InstructionError": [2, {"Custom": 6001}]}, "logs": []})
        if self.drop_sends > 0:
            self.drop_sends -= 1
            return str(signature)
        self.land(swap, str(signature))
        return str(signature)

    def land(self, swap: Swap, signature: str) -> None:
        self.slot += 1
        swap.signature, swap.landed_slot = signature, self.slot
        self.by_signature[signature] = swap
        fee = BASE_FEE + swap.priority_lamports
        user = swap.user
        in_amt, out_amt = swap.in_amount, swap.out_amount
        if self.settle_override is not None:
            in_amt, out_amt = self.settle_override
            self.settle_override = None
        mints = [m for m in (swap.input_mint, swap.output_mint) if m != WSOL]
        vault = derived("vault", swap.input_mint, swap.output_mint)
        before = {m: self.tokens.get((user, m)) for m in mints}
        vault_before = {m: self.tokens.get((vault, m), 10 ** 15) for m in mints}
        lamports_before = self.lamports.get(user, 0)
        if lamports_before < fee:
            swap.err = {"InstructionError": [0, "InsufficientFundsForFee"]}
        elif self.fail_onchain > 0:
            self.fail_onchain -= 1
            swap.err = {"InstructionError": [2, {"Custom": 6001}]}
        elif self.balance(user, swap.input_mint) - (fee if swap.input_mint == WSOL else 0) < in_amt:
            swap.err = {"InstructionError": [2, {"Custom": 1}]}  # SPL token: insufficient funds
        self.lamports[user] = lamports_before - min(fee, lamports_before)
        if swap.err is None:
            self.fund(user, swap.input_mint, -in_amt)
            self.fund(user, swap.output_mint, out_amt)
            for m, delta in ((swap.input_mint, in_amt), (swap.output_mint, -out_amt)):
                if m != WSOL:
                    self.tokens[(vault, m)] = vault_before[m] + delta
        keys = [user] + [derived("ata", user, m) for m in mints] + [vault] + [JUPITER_PROGRAM]
        pre_tb, post_tb = [], []
        for i, m in enumerate(mints, start=1):
            if before[m] is not None:
                pre_tb.append(self.token_balance(i, m, user, before[m]))
            post_tb.append(self.token_balance(i, m, user, self.tokens.get((user, m), 0)))
            pre_tb.append(self.token_balance(len(mints) + 1, m, POOL_OWNER, vault_before[m]))
            post_tb.append(self.token_balance(len(mints) + 1, m, POOL_OWNER,
                                              self.tokens.get((vault, m), vault_before[m])))
        pre_lamports = [lamports_before] + [2039280] * len(mints) + [2039280, 1]
        post_lamports = [self.lamports[user]] + [2039280] * len(mints) + [2039280, 1]
        swap.tx_json = {
            "slot": self.slot, "blockTime": int(time.time()), "version": 0,
            "meta": {"err": swap.err, "status": {"Ok": None} if swap.err is None else {"Err": swap.err},
                     "fee": fee, "preBalances": pre_lamports, "postBalances": post_lamports,
                     "preTokenBalances": pre_tb, "postTokenBalances": post_tb,
                     "innerInstructions": [], "logMessages": [], "computeUnitsConsumed": 120_000},
            "transaction": {"signatures": [signature], "message": {
                "accountKeys": [{"pubkey": k, "signer": i == 0, "writable": k != JUPITER_PROGRAM,
                                 "source": "transaction"} for i, k in enumerate(keys)],
                "instructions": [], "recentBlockhash": "stand-in", "addressTableLookups": []}},
        }

    def token_balance(self, index: int, mint: str, owner: str, amount: int) -> dict:
        return {"accountIndex": index, "mint": mint, "owner": owner, "programId": TOKEN_PROGRAM,
                "uiTokenAmount": self.token_amount(mint, amount)}

    def rpc_getSignatureStatuses(self, params: list) -> dict:
        value = []
        for sig in params[0]:
            swap = self.by_signature.get(sig)
            if swap is None:
                value.append(None)
                continue
            swap.status_reads += 1
            level = "processed" if swap.status_reads == 1 else "confirmed"
            value.append({"slot": swap.landed_slot, "confirmations": 0 if level == "processed" else 1,
                          "err": swap.err, "confirmationStatus": level,
                          "status": {"Ok": None} if swap.err is None else {"Err": swap.err}})
        return {"context": self.context(), "value": value}

    def rpc_getTransaction(self, params: list) -> dict | None:
        sig, cfg = params[0], params[1] if len(params) > 1 else {}
        swap = self.by_signature.get(sig)
        if swap is None:
            return None
        if cfg.get("maxSupportedTransactionVersion") != 0:
            raise RpcError(-32015, "Transaction version (0) is not supported by the requesting client. "
                                   "Please try the request again with the following configuration parameter: "
                                   "\"maxSupportedTransactionVersion\": 0")
        if cfg.get("encoding") != "jsonParsed":
            raise RpcError(-32602, "the stand-in answers jsonParsed only")
        return json.loads(json.dumps(swap.tx_json))


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: object | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class Client:
    """Swaps like Jupiter's docs do it: quote, swap, sign with solders, send."""

    def __init__(self, standin: StandIn, keypair: Keypair) -> None:
        self.standin, self.keypair = standin, keypair

    async def rpc(self, session, method: str, params: list) -> dict:
        async with session.post(self.standin.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                            "params": params}) as r:
            return await r.json()

    async def unsigned_swap(self, session, input_mint: str, output_mint: str, amount: int,
                            mode: str = "ExactIn") -> tuple[VersionedTransaction, int]:
        query = {"inputMint": input_mint, "outputMint": output_mint, "amount": str(amount),
                 "slippageBps": "50", "swapMode": mode}
        async with session.get(f"{self.standin.jupiter_url}/quote", params=query) as r:
            quote = await r.json()
            assert r.status == 200, quote
        async with session.post(f"{self.standin.jupiter_url}/swap",
                                json={"quoteResponse": quote, "userPublicKey": str(self.keypair.pubkey())}) as r:
            body = await r.json()
            assert r.status == 200, body
        tx = VersionedTransaction.from_bytes(base64.b64decode(body["swapTransaction"]))
        return tx, body["lastValidBlockHeight"]

    def sign(self, tx: VersionedTransaction, keypair: Keypair | None = None) -> VersionedTransaction:
        return VersionedTransaction(tx.message, [keypair or self.keypair])

    async def send(self, session, tx: VersionedTransaction, skip_preflight: bool = False) -> dict:
        return await self.rpc(session, "sendTransaction", [
            base64.b64encode(bytes(tx)).decode(),
            {"encoding": "base64", "skipPreflight": skip_preflight, "maxRetries": 0}])
