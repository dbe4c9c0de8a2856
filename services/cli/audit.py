"""`moon audit`: run the attacks of SECURITY.md against a running moonbus, each with every
service's own credential, and say which defences hold.

Each attack is what a thief holding ONE credential would try: make the server publish
where the thief may not (push consumers, stream republish), read replies meant for
others, rewrite or erase streams and KV keys, call APIs beyond the service's role, act
as another agent. An attack holds when the server (or the service) refuses it AND
nothing changed; a refusal alone is not trusted.

The same attacks are the test suite's (tests/test_attacks.py). `safe=True` (what
`moon audit` runs) aims every attempt at probe subjects and keys, so that even a
defence that failed changes nothing that matters: no real tick, verdict or report is
forged, no real key is written, no limit is changed, the kill switch is not touched.

    results = await audit(Auditor(url, credentials), safe=True)
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from services.contract import subjects as S
from services.common.bus import flush, inbox_prefix
from services.contract.users import SERVICE_USERS
from services.common.streams import EXEC, KV_BUCKET, KV_PROTECTIONS_STREAM, KV_SENTIMENT_STREAM, KV_STREAM, ORDERS

# The object store of backtest datasets (only `operator` writes it, only appends).
BACKTEST_DATA = f"OBJ_{S.BACKTEST_DATA_BUCKET}"

# Long enough for the server to have refused (or done) what it was asked.
SETTLE_S = 0.3

SERVICES = [u for u in SERVICE_USERS if u != "admin"]
STREAMS = [ORDERS, EXEC, KV_STREAM, KV_SENTIMENT_STREAM, KV_PROTECTIONS_STREAM, BACKTEST_DATA]
# The agent token each user may put in orders.submit.<agent>.<symbol> (moonbus.conf).
OWN_AGENT = {"trading-agent": "trading", "risk-agent": "risk", "gateway": "gateway", "operator": "operator",
             "risk": "killswitch", "execution": S.PROTECTION_AGENT}
# execution's protections: a KV bucket of their own, `$KV.protections.<parent_order_id>`.
PROTECTION_KEYS = S.kv_protection("").removesuffix(".")
# Who owns which KV keys, by subject prefix (`supervisor.*`: make run's launcher, records of each
# service; the sentiment agent's keys are a bucket of their own).
SENTIMENT_KEYS = S.kv_sentiment_subject("").removesuffix(".")
KV_OWNER = {S.kv_subject("risk"): "risk", SENTIMENT_KEYS: "sentiment-agent", S.kv_subject("supervisor"): "supervisor",
            PROTECTION_KEYS: "execution"}
# The failover leases (rust-common leader.rs): only the service's own user takes or renews one.
LEASE_OWNER = {S.kv_leader("risk"): "risk", S.kv_leader("execution"): "execution"}
# The real key an unsafe attack aims at, per prefix.
KV_TARGET = {S.kv_subject("risk"): S.kv_subject(S.KV_KILLSWITCH), SENTIMENT_KEYS: S.kv_sentiment_subject("BTC-USD"),
             S.kv_subject("supervisor"): S.kv_subject(S.kv_supervisor("risk")),
             PROTECTION_KEYS: S.kv_protection("audit-probe")}


def _kv_stream(subject: str) -> str:
    """The stream of a KV subject: `$KV.<bucket>.<key>` is stored in `KV_<bucket>`."""
    return f"KV_{subject.split('.')[1]}"


@dataclass
class Result:
    attack: str
    user: str
    held: bool
    detail: str


class Probe:
    """A client connected as one user that remembers what the server refused."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def _on_error(self, e: Exception) -> None:
        self.errors.append(str(e))

    def refused(self, needle: str = "") -> bool:
        return any("permissions violation" in e.lower() and needle.lower() in e.lower() for e in self.errors)

    async def request(self, subject: str, body: Any = None, timeout: float = SETTLE_S,
                      headers: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The JSON answer, or None when nothing answered (refused, or nobody there)."""
        assert self.nc
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        try:
            reply = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except (NatsTimeoutError, nats.errors.NoRespondersError):
            return None
        try:
            return json.loads(reply.data or b"{}")
        except ValueError:
            return {"raw": reply.data.decode(errors="replace")}


class Auditor:
    """Connects as any user of `credentials` (user -> password) to `url`."""

    def __init__(self, url: str, credentials: dict[str, str], connect_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.credentials = credentials
        self.options = dict(connect_options or {})
        self._open: list[Client] = []

    async def connect(self, user: str) -> Probe:
        probe = Probe(user)
        probe.nc = await nats.connect(
            self.url, user=user, password=self.credentials[user], inbox_prefix=inbox_prefix(user),
            name=f"moon-audit-{user}", allow_reconnect=False, connect_timeout=5, error_cb=probe._on_error,
            **self.options,
        )
        self._open.append(probe.nc)
        return probe

    async def close(self) -> None:
        for nc in self._open:
            if not nc.is_closed:
                await nc.close()
        self._open.clear()


def _uid() -> str:
    return uuid.uuid4().hex[:8]


async def _watch(watcher: Probe, subject: str) -> asyncio.Queue:
    assert watcher.nc
    queue: asyncio.Queue = asyncio.Queue()
    await watcher.nc.subscribe(subject, cb=queue.put)
    await flush(watcher.nc)
    return queue


async def _stream_config(reader: Probe, stream: str) -> dict[str, Any] | None:
    info = await reader.request(f"$JS.API.STREAM.INFO.{stream}", timeout=5)
    return info.get("config") if info and "error" not in info else None


async def _stream_state(reader: Probe, stream: str) -> dict[str, Any] | None:
    """STREAM.INFO's state; for a KV bucket with its keys (`subjects`: key subject -> count)."""
    body = {"subjects_filter": ">"} if stream.startswith("KV_") else None
    info = await reader.request(f"$JS.API.STREAM.INFO.{stream}", body, timeout=5)
    return info.get("state") if info and "error" not in info else None


async def _expiring_keys(reader: Probe, stream: str, state: dict[str, Any]) -> set[str]:
    """The keys of KV bucket `stream` whose latest value carries a per-message TTL (`Nats-TTL`,
    as an ended protection's record does): they may go by themselves, which is no loss."""
    assert reader.nc
    expiring: set[str] = set()
    # Only a bucket that allows per-message TTLs has any: the rest need no get per key.
    config = await _stream_config(reader, stream)
    if not config or not config.get("allow_msg_ttl"):
        return expiring
    for subject in state.get("subjects") or {}:
        try:
            msg = await reader.nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=5)
        except NatsTimeoutError:
            continue
        if (msg.headers or {}).get("Nats-TTL"):
            expiring.add(subject)
    return expiring


async def _consumer(reader: Probe, stream: str, name: str) -> dict[str, Any] | None:
    info = await reader.request(f"$JS.API.CONSUMER.INFO.{stream}.{name}", timeout=5)
    return info if info and "error" not in info else None


async def _kv_raw(reader: Probe, subject: str) -> bytes | None:
    """The stored value of KV `subject` (None: none), by direct get."""
    assert reader.nc
    try:
        msg = await reader.nc.request(f"$JS.API.DIRECT.GET.{_kv_stream(subject)}.{subject}", b"", timeout=5)
    except NatsTimeoutError:
        return None
    if (msg.headers or {}).get("Status"):
        return None
    return (msg.headers or {}).get("KV-Operation", "PUT").encode() + b":" + msg.data


async def _last_on(reader: Probe, stream: str, subject: str) -> str | None:
    """The subject of the last message stored on `subject` (wildcards allowed), or None."""
    assert reader.nc
    inbox = reader.nc.new_inbox()
    queue: asyncio.Queue = asyncio.Queue()
    sub = await reader.nc.subscribe(inbox, cb=queue.put)
    try:
        await reader.nc.publish(f"$JS.API.DIRECT.GET.{stream}",
                                json.dumps({"batch": 1, "next_by_subj": subject}).encode(), reply=inbox)
        msg = await asyncio.wait_for(queue.get(), 5)
    finally:
        await sub.unsubscribe()
    headers = msg.headers or {}
    return None if headers.get("Status") else headers.get("Nats-Subject", "?")


# ---------------------------------------------------------------- the attacks
# Each takes (auditor, watcher = an operator Probe, attacker user, safe) -> Result.


# The stream a safe update names in its body (not the one in its subject): the server answers
# "stream name in subject does not match request" and changes nothing, so an answer at all shows
# the permissions let the update through, while a real stream is never sealed or rewritten.
MISMATCHED_STREAM = "AUDITPROBE"


def _stream_update(stream: str, config: dict[str, Any], safe: bool) -> tuple[str, dict[str, Any]]:
    """An update of `stream` to `config`; safe: one the server refuses after the permissions."""
    return f"$JS.API.STREAM.UPDATE.{stream}", {**config, "name": MISMATCHED_STREAM} if safe else config


def _through(answer: dict[str, Any] | None, safe: bool) -> bool:
    """Whether an update got past the permissions: safe, any answer (see MISMATCHED_STREAM);
    else an answer that is not an error."""
    if safe:
        return answer is not None
    return bool(answer) and "error" not in answer and answer.get("success", True)


async def forge_with_push_consumer(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """A push consumer whose deliver subject is one the user may not publish (nats-server
    #8274): the server would publish stored messages there on the user's behalf. Safe: it
    delivers only new messages and goes by itself a second after the audit stops watching."""
    target = S.feed_status("audit-probe") if safe else S.tick("sim", "BTC-USD")
    arrived = await _watch(watcher, target)
    attacker = await a.connect(user)
    tries = []
    for stream in STREAMS:
        name = f"audit-{_uid()}"
        config: dict[str, Any] = {"deliver_subject": target, "ack_policy": "none", "deliver_policy": "all"}
        if safe:
            config |= {"deliver_policy": "new", "inactive_threshold": 1_000_000_000}
        named = {**config, "durable_name": name, "name": name}
        tries += [
            (f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}),
            (f"$JS.API.CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": named}),
            (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}", {"stream_name": stream, "config": named}),
        ]
    answers = await asyncio.gather(*(attacker.request(subject, body) for subject, body in tries))
    made = [f"{subject} -> {answer.get('name')}" for (subject, _), answer in zip(tries, answers)
            if answer and "error" not in answer]
    await asyncio.sleep(SETTLE_S)
    forged = arrived.qsize()
    held = not made and forged == 0
    return Result("push consumer delivering to a foreign subject", user, held,
                  "refused" if held else f"created {made}, {forged} message(s) forged on {target}")


async def forge_with_republish(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """A stream config whose `republish` sends every stored message to a foreign subject,
    on an existing stream (update) or a new one (create)."""
    target = S.feed_status("audit-probe") if safe else S.ACCOUNT
    arrived = await _watch(watcher, target)
    attacker = await a.connect(user)
    before = {s: await _stream_config(watcher, s) for s in STREAMS}
    name = f"AUDIT{_uid().upper()}"
    # A literal source inside the stream's subjects: a transform from a wildcard to one
    # literal subject is not valid, from a literal it is.
    updates = [_stream_update(stream, {**before[stream], "republish": {
                   "src": before[stream]["subjects"][0].replace(">", "audit"), "dest": target}}, safe)
               for stream in STREAMS if before[stream] is not None]
    create = (f"$JS.API.STREAM.CREATE.{name}", {"name": name, "subjects": [f"audit.{name}.>"],
                                                 "republish": {"src": f"audit.{name}.x", "dest": target}})
    answers = await asyncio.gather(*(attacker.request(subject, body) for subject, body in [*updates, create]))
    accepted = [subject for (subject, _), answer in zip(updates, answers) if _through(answer, safe)]
    if answers[-1] and "error" not in answers[-1]:
        accepted.append(create[0])
    after = {s: await _stream_config(watcher, s) for s in STREAMS}
    await asyncio.sleep(SETTLE_S)
    held = not accepted and before == after and arrived.qsize() == 0
    return Result("stream republish to a foreign subject", user, held,
                  "refused" if held else f"accepted: {accepted or 'none'}; configs changed: {before != after}")


async def read_others_replies(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Subscribe to every reply inbox (or another user's) and read the replies."""
    attacker = await a.connect(user)
    assert attacker.nc
    seen: list[str] = []

    async def got(msg: Any) -> None:
        # The operator may watch every subject, so its `_INBOX.>` is accepted and the server
        # drops what its deny list names: replies (which carry the inbox as their subject).
        # JetStream's deliveries to another user's inbox carry their stream subject, which
        # the operator may read anyway, with an ack subject it may not use: not a breach.
        if user != "operator" or msg.subject.startswith("_INBOX."):
            seen.append(msg.subject)

    for subject in ["_INBOX.>", *(f"_INBOX.{u}.>" for u in SERVICE_USERS if u != user)]:
        await attacker.nc.subscribe(subject, cb=got)
    await flush(attacker.nc)
    await asyncio.sleep(0.05)
    # Another service asks something; the JetStream API replies to that service's inbox.
    asker = await a.connect("execution" if user != "execution" else "risk")
    answer = await asker.request("$JS.API.INFO", timeout=5)
    await asyncio.sleep(SETTLE_S)
    # (The operator may subscribe to `_INBOX.>`: the server drops what its deny list names.)
    held = answer is not None and not seen
    return Result("subscribe to other users' reply inboxes", user, held,
                  "refused" if held else f"read {len(seen)} replies: {seen[:3]}" if seen else "no probe reply")


async def take_or_ack_orders(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Pull from, or ack/terminate on, execution's ORDERS consumer."""
    if user == "execution":
        return Result("take or ack execution's orders", user, True, "its own consumer (expected)")
    attacker = await a.connect(user)
    answer = await attacker.request(f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution",
                                    {"batch": 1, "no_wait": True})
    assert attacker.nc
    await attacker.nc.publish(f"$JS.ACK.{ORDERS}.execution.1.1.1.1.0", b"+TERM")
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    # (The consumer itself moves on with the orders of a live system: the refusals are the proof.)
    held = answer is None and attacker.refused("$JS.ACK")
    return Result("take or ack execution's orders", user, held,
                  "refused" if held else f"fetch answered {answer}; ack refused: {attacker.refused('$JS.ACK')}")


async def rewrite_or_erase_streams(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Seal, shrink or re-subject a stream; purge or delete it or a message of it."""
    attacker = await a.connect(user)
    before = {s: await _stream_config(watcher, s) for s in STREAMS}
    states = {s: await _stream_state(watcher, s) for s in STREAMS}
    expiring = {s: await _expiring_keys(watcher, s, states[s]) for s in STREAMS if states[s] and s.startswith("KV_")}
    tries = []
    for stream in STREAMS:
        config = before[stream]
        if config is None:
            continue
        for change in ({"sealed": True}, {"max_msgs": 1}, {"subjects": ["audit.>"]}, {"allow_rollup_hdrs": True},
                       {"deny_purge": False}):
            tries.append(_stream_update(stream, {**config, **change}, safe))
        if not safe:
            tries += [(f"$JS.API.STREAM.PURGE.{stream}", {}), (f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": 1}),
                      (f"$JS.API.STREAM.DELETE.{stream}", {})]
    answers = await asyncio.gather(*(attacker.request(subject, body) for subject, body in tries))
    accepted = [f"{subject} {json.dumps(body)[:60]}" for (subject, body), answer in zip(tries, answers)
                if _through(answer, safe)]
    after = {s: await _stream_config(watcher, s) for s in STREAMS}
    lost = [s for s in STREAMS
            if states[s] and _lost(states[s], await _stream_state(watcher, s) or {}, s, expiring.get(s, set()))]
    held = not accepted and before == after and not lost
    return Result("rewrite, purge or delete a stream", user, held,
                  "refused" if held else f"accepted: {accepted}; lost data in: {lost}")


def _lost(before: dict[str, Any], after: dict[str, Any], stream: str, expiring: set[str] = frozenset()) -> bool:
    """Whether `stream` lost data between two states. A KV bucket keeps one message a key, so
    a live system's writes move its first sequence (a key written again drops its older
    message): there a key gone is the loss, unless its value was written to expire
    (`expiring`). Elsewhere, the first message gone."""
    if stream.startswith("KV_"):
        return bool(set(before.get("subjects") or {}) - set(after.get("subjects") or {}) - expiring)
    return after.get("first_seq") != before.get("first_seq")


async def tamper_with_kv(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Write or delete another service's KV key (risk's kill switch above all), or roll up
    (purge) the bucket through a key of one's own."""
    attacker = await a.connect(user)
    assert attacker.nc
    broken: list[str] = []
    for prefix, owner in KV_OWNER.items():
        if owner == user:
            continue
        subject = f"{prefix}.audit-probe" if safe else KV_TARGET[prefix]
        before = await _kv_raw(watcher, subject)
        put, delete = await asyncio.gather(
            attacker.request(subject, b'{"engaged":false,"actor":"audit","reason":"","changed_ts":1}'),
            attacker.request(subject, b"", headers={"KV-Operation": "DEL"}))
        if (put and "error" not in put) or (delete and "error" not in delete) or await _kv_raw(watcher, subject) != before:
            broken.append(f"wrote {subject}")
    own = next((p for p, o in KV_OWNER.items() if o == user), None)
    if own is not None:
        bucket = _kv_stream(own)
        state = await _stream_state(watcher, bucket)
        expiring = await _expiring_keys(watcher, bucket, state) if state else set()
        rollup = "sub" if safe else "all"
        answer = await attacker.request(f"{own}.audit-probe", b"probe",
                                        headers={"Nats-Rollup": rollup, "KV-Operation": "PURGE"})
        after = await _stream_state(watcher, bucket)
        if (answer and "error" not in answer) or (state and after and _lost(state, after, bucket, expiring)):
            broken.append(f"rollup {rollup} accepted ({answer})")
    held = not broken
    return Result("write, delete or purge KV keys that are not one's own", user, held,
                  "refused" if held else "; ".join(broken))


async def take_a_lease(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Take another service's failover lease (`leader.risk` above all): made the active
    risk, a rogue instance would answer checks from books it never built. Tries a create
    and a compare-and-swap on the lease's revision. Safe: the swap names a revision that
    cannot be the current one, so even a broken defence changes nothing (the server's
    "wrong last sequence" then shows the write got through the permissions)."""
    attacker = await a.connect(user)
    broken: list[str] = []
    for key, owner in LEASE_OWNER.items():
        if owner == user:
            continue
        subject = S.kv_subject(key)
        revision = "999999999999" if safe else str(await _kv_revision(watcher, key))
        value = json.dumps({"holder": f"audit-{user}", "acquired_ts": 1, "renewed_ts": 1, "acting_until_ts": 1,
                            "ttl_ms": 1, "takeover_ts": None, "previous_holder": None, "takeovers": 0,
                            "released": False}).encode()
        answers = await asyncio.gather(*(
            attacker.request(subject, value, headers={"Nats-Expected-Last-Subject-Sequence": seq})
            for seq in ("0", revision)))
        through = [x for x in answers if x is not None]  # a PubAck or a JetStream error: not refused
        # A live lease is renewed all the time: what shows a breach is the attacker's holder in it.
        if through or f"audit-{user}".encode() in (await _kv_raw(watcher, subject) or b""):
            broken.append(f"reached {key}: {through}")
    held = not broken
    return Result("take another service's failover lease", user, held, "refused" if held else "; ".join(broken))


async def _kv_revision(reader: Probe, key: str) -> int:
    """The revision (stream sequence) of `key`'s value; 0 when it has none."""
    assert reader.nc
    try:
        msg = await reader.nc.request(f"$JS.API.DIRECT.GET.{KV_STREAM}.$KV.{KV_BUCKET}.{key}", b"", timeout=5)
    except NatsTimeoutError:
        return 0
    return int((msg.headers or {}).get("Nats-Sequence", 0))


async def order_as_another_agent(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Publish an order or a cancel on another agent's subject (to trade as it, cancel its
    orders, or spend its rate limit)."""
    attacker = await a.connect(user)
    assert attacker.nc
    mine = OWN_AGENT.get(user)
    victims = [agent for agent in ("trading", "risk", "gateway", "operator", "killswitch", S.PROTECTION_AGENT)
               if agent != mine]
    symbol = f"AUDIT{_uid().upper()}-USD"  # a symbol of its own: found again below, traded by nobody
    # execution submits algo children under their parent's agent token (rust-execution
    # algo.rs): its submits are its own; it still cancels as nobody.
    kinds = ("cancel",) if user == "execution" else ("submit", "cancel")
    for agent in victims:
        for kind in kinds:
            # Never a valid order: even stored, execution would only reject it.
            await attacker.nc.publish(S.orders(kind, agent, symbol), b'{"audit": true}')
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    found = await _last_on(watcher, ORDERS, S.orders("*", "*", symbol))
    held = attacker.refused(S.ORDERS_PREFIX) and found is None
    return Result("orders or cancels as another agent", user, held,
                  "refused" if held else f"stored on {found}" if found else "not refused")


async def reconfigure_execution_consumer(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Create-or-update execution's durable (e.g. a short ack_wait, an inactive threshold
    that deletes it, a filter that starves it)."""
    attacker = await a.connect(user)
    before = await _consumer(watcher, ORDERS, "execution")
    config = dict((before or {}).get("config", {"durable_name": "execution", "ack_policy": "explicit"}))
    changes = [{"inactive_threshold": 1_000_000_000}, {"filter_subjects": [f"{S.ORDERS_PREFIX}audit.>"]}, {"max_ack_pending": 1}]
    answers = await asyncio.gather(*(attacker.request(f"$JS.API.CONSUMER.CREATE.{ORDERS}.execution",
                                                      {"stream_name": ORDERS, "config": {**config, **change}})
                                     for change in changes))
    accepted = [change for change, answer in zip(changes, answers) if answer and "error" not in answer]
    after = await _consumer(watcher, ORDERS, "execution")
    held = not accepted and (before or {}).get("config") == (after or {}).get("config")
    return Result("reconfigure execution's consumer", user, held,
                  "refused" if held else f"accepted {accepted}")


async def risk_api_beyond_role(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Release the kill switch, raise limits or release the loss latch, as whoever the
    credential may publish for, and claiming to be the operator."""
    if user in ("operator", "gateway"):
        return Result("release the kill switch or change limits", user, True, "a human's role (expected)")
    attacker = await a.connect(user)
    state = await watcher.request(S.risk_killswitch("operator"), {"action": "status"}, timeout=5)
    limits = await watcher.request(S.risk_limits("operator"), {}, timeout=5)
    if state is None or limits is None:
        return Result("release the kill switch or change limits", user, True, "skipped: risk is not running")
    broken = []
    account_active = safe and await _account_state(watcher) == "ACTIVE"
    same_limits = {"set": {"max_order_notional": limits["limits"]["max_order_notional"]}}
    for caller in {user, "operator"}:
        subject = S.risk_killswitch(caller)
        # Safe: a release of a released switch changes nothing even if it went through.
        if not safe or not state.get("engaged"):
            answer = await attacker.request(subject, {"action": "release", "actor": "operator"}, timeout=2)
            if answer and "error" not in answer:
                broken.append(f"release via {subject}")
        answer = await attacker.request(S.risk_limits(caller), {**same_limits, "actor": "operator"}, timeout=2)
        if answer and "error" not in answer:
            broken.append(f"limits via {S.risk_limits(caller)}")
        # Safe: only while the account is ACTIVE (no loss latch to release), so a release that
        # went through changes nothing.
        if not safe or account_active:
            answer = await attacker.request(S.risk_limits(caller), {"release_loss_latch": True}, timeout=2)
            if answer and "error" not in answer:
                broken.append(f"latch release via {S.risk_limits(caller)}")
    after = await watcher.request(S.risk_killswitch("operator"), {"action": "status"}, timeout=5)
    if after and after.get("engaged") != state.get("engaged"):
        broken.append("the kill switch changed")
    held = not broken
    return Result("release the kill switch or change limits", user, held, "refused" if held else "; ".join(broken))


async def _account_state(reader: Probe, timeout: float = 3.0) -> str | None:
    """The trading state of risk's next account update (it sends one at least every few
    seconds); None if none comes in time."""
    assert reader.nc
    arrived: asyncio.Queue = asyncio.Queue()
    sub = await reader.nc.subscribe(S.ACCOUNT, cb=arrived.put)
    try:
        msg = await asyncio.wait_for(arrived.get(), timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        await sub.unsubscribe()
    try:
        return json.loads(msg.data).get("state")
    except (ValueError, AttributeError):
        return None


async def _last_data(reader: Probe, stream: str, subject: str) -> bytes | None:
    """The data of the last message stored on `subject` in `stream` (None: none), by direct get."""
    assert reader.nc
    try:
        msg = await reader.nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=5)
    except NatsTimeoutError:
        return None
    return None if (msg.headers or {}).get("Status") else msg.data


# Who writes which snapshots (SNAPSHOTS: snapshot.<service>.>); risk and execution rebuild from them.
SNAPSHOT_OWNERS = ("risk", "execution")


async def forge_state_or_dead_letters(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Write another service's snapshot manifest (its next start would rebuild from a forged
    state), or forge the server's MAX_DELIVERIES advisory (execution would REJECT an order
    still waiting in ORDERS `dead_letter`)."""
    attacker = await a.connect(user)
    assert attacker.nc
    marker = f'{{"audit": "{_uid()}"}}'.encode()
    targets = [("SNAPSHOTS", f"snapshot.{owner}.manifest") for owner in SNAPSHOT_OWNERS if owner != user]
    # Safe: an ORDERS sequence that does not exist, so even a delivered forgery rejects nothing.
    advisory = {"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": ORDERS, "consumer": "execution",
                "stream_seq": 2**62 if safe else 1, "deliveries": 10, "audit": marker.decode()}
    for _, subject in targets:
        await attacker.nc.publish(subject, marker)
    await attacker.nc.publish(S.DEAD_LETTER_ADVISORY, json.dumps(advisory).encode())
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    broken = [f"not refused: {subject}" for _, subject in targets if not attacker.refused(subject)]
    if not attacker.refused("MAX_DELIVERIES"):
        broken.append("not refused: the dead-letter advisory")
    for stream, subject in [*targets, ("DEADLETTER", S.DEAD_LETTER_ADVISORY)]:
        stored = await _last_data(watcher, stream, subject)
        if stored is not None and marker.decode() in stored.decode(errors="replace"):
            broken.append(f"stored on {subject}")
    held = not broken
    return Result("forge a snapshot or a dead letter", user, held, "refused" if held else "; ".join(broken))


async def hijack_backtests(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Take sweep runs to answer them with forged results (join queue group `backtest`, or read
    every request with a plain subscription), or write a dataset (a forged object, or a rollup
    that would erase the bucket)."""
    attacker = await a.connect(user)
    assert attacker.nc
    broken = []
    probe = f"audit-{_uid()}"
    subs = [await attacker.nc.subscribe(S.BACKTEST_RUN)]
    if user != "backtest":  # its own queue group is the workers' role
        subs.append(await attacker.nc.subscribe(S.BACKTEST_RUN, queue=S.BACKTEST_QUEUE))
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    if not attacker.refused(f'subscription to "{S.BACKTEST_RUN}"'):
        broken.append("subscribed to the sweep requests")
    for sub in subs:
        await sub.unsubscribe()
    # A rollup is refused by the stream itself, even for the uploader (operator).
    chunk, meta = S.object_chunks(S.BACKTEST_DATA_BUCKET, probe), S.object_meta(S.BACKTEST_DATA_BUCKET, probe)
    rollup = await attacker.request(chunk, b"audit", headers={"Nats-Rollup": "sub" if safe else "all"})
    if rollup and "error" not in rollup:
        broken.append(f"rollup accepted: {rollup}")
    if user != "operator":
        await attacker.request(meta, b'{"audit": true}')
        if not attacker.refused(meta):
            broken.append(f"not refused: {meta}")
        if await _last_data(watcher, BACKTEST_DATA, meta) is not None:
            broken.append(f"stored on {meta}")
    held = not broken
    return Result("take sweep runs or write datasets", user, held, "refused" if held else "; ".join(broken))


async def backtest_beyond_role(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """With the backtest workers' credential: read ORDERS, EXEC or the KV bucket, subscribe to
    orders and reports, forge another service's subjects (ticks, account, signals, errors)."""
    if user != "backtest":
        return Result("backtest credential beyond its role", user, True, "the backtest credential's attack")
    attacker = await a.connect(user)
    assert attacker.nc
    broken = []
    for stream in (ORDERS, EXEC, KV_STREAM, KV_SENTIMENT_STREAM, KV_PROTECTIONS_STREAM):
        if await attacker.request(f"$JS.API.DIRECT.GET.{stream}", {"seq": 1}) is not None:
            broken.append(f"read {stream}")
    for subject in (S.ALL_REPORTS, S.ORDERS_ALL):
        await attacker.nc.subscribe(subject)
    # Safe: probe subjects (outside the allow list just the same), so a broken defence forges nothing read.
    forged = ([S.feed_status("audit-probe"), S.signal("audit-probe", "AUDIT-USD"), S.errors("audit-probe")] if safe
              else [S.tick("sim", "BTC-USD"), S.ACCOUNT, S.signal("trading", "AUDIT-USD"), S.errors("risk")])
    queues = [await _watch(watcher, subject) for subject in forged]
    for subject in forged:
        await attacker.nc.publish(subject, b'{"audit": true}')
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    broken += [f"subscribed to {s}" for s in (S.ALL_REPORTS, S.ORDERS_ALL) if not attacker.refused(f'"{s}"')]
    broken += [f"forged {s}" for s, q in zip(forged, queues) if q.qsize() or not attacker.refused(s)]
    held = not broken
    return Result("backtest credential beyond its role", user, held, "refused" if held else "; ".join(broken))


async def forge_venue_accounts(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Publish a live venue's status (`exec.venue.<venue>`: risk would reconcile a forged
    account, or see a mismatch where there is none) or risk's reconciliation of it
    (`risk.recon.<venue>`: the dashboard and agents would see MATCHED while the venue
    differs). Only execution may publish the one, only risk the other."""
    attacker = await a.connect(user)
    assert attacker.nc
    venue = f"audit{_uid()}"  # a venue of its own: no real one is reconciled or shown
    marker = f'{{"audit": "{_uid()}"}}'.encode()  # never a valid message either
    targets = [subject for subject, owner in ((S.exec_venue(venue), "execution"), (S.risk_recon(venue), "risk"))
               if owner != user]
    queues = {subject: await _watch(watcher, subject) for subject in targets}
    for subject in targets:
        await attacker.nc.publish(subject, marker)
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    broken = [f"not refused: {subject}" for subject in targets if not attacker.refused(subject)]
    broken += [f"delivered on {subject}" for subject, queue in queues.items() if not queue.empty()]
    held = not broken
    return Result("forge a live venue's account or its reconciliation", user, held,
                  "refused" if held else "; ".join(broken))


async def forge_protections(a: Auditor, watcher: Probe, user: str, safe: bool) -> Result:
    """Publish a protection's state (`exec.protection.<symbol>`: the dashboard and agents
    would see a position protected, or closed, that is not). Only execution may (its KV
    record is `tamper_with_kv`'s, its exits `order_as_another_agent`'s)."""
    attacker = await a.connect(user)
    assert attacker.nc
    subject = S.exec_protection(f"AUDIT{_uid().upper()}-USD")  # a symbol of its own: shown by nobody
    if user == "execution":
        return Result("forge a protection's state", user, True, "its own subject")
    queue = await _watch(watcher, subject)
    await attacker.nc.publish(subject, f'{{"audit": "{_uid()}"}}'.encode())
    await flush(attacker.nc)
    await asyncio.sleep(SETTLE_S)
    broken = [] if attacker.refused(subject) else [f"not refused: {subject}"]
    broken += [f"delivered on {subject}"] if not queue.empty() else []
    held = not broken
    return Result("forge a protection's state", user, held, "refused" if held else "; ".join(broken))


ATTACKS: list[Callable[[Auditor, Probe, str, bool], Awaitable[Result]]] = [
    forge_state_or_dead_letters,
    forge_venue_accounts,
    forge_protections,
    forge_with_push_consumer,
    forge_with_republish,
    read_others_replies,
    take_or_ack_orders,
    rewrite_or_erase_streams,
    tamper_with_kv,
    take_a_lease,
    order_as_another_agent,
    reconfigure_execution_consumer,
    risk_api_beyond_role,
    hijack_backtests,
    backtest_beyond_role,
]


async def audit(auditor: Auditor, *, safe: bool = True, users: Iterable[str] | None = None,
                attacks: Iterable[Callable[..., Awaitable[Result]]] | None = None) -> list[Result]:
    """Every attack, one after another, each with every credential (of `users`) at once."""
    results: list[Result] = []
    watcher = await auditor.connect("operator")

    async def attempt(attack: Callable[..., Awaitable[Result]], user: str) -> Result:
        try:
            return await attack(auditor, watcher, user, safe)
        except Exception as e:  # an attack that cannot even be tried says so
            return Result(attack.__name__, user, False, f"could not run: {e!r}")

    try:
        for attack in attacks or ATTACKS:
            tried = [user for user in users or SERVICES if user in auditor.credentials]
            results += await asyncio.gather(*(attempt(attack, user) for user in tried))
    finally:
        await auditor.close()
    return results
