"""The attack suite: what a thief holding ONE service's credential would try, run with
every service's real credential against the real nats-server (proto/nats/moonbus.conf)
and, where a service must refuse, the real binaries. Each attack must be refused AND
leave nothing changed (SECURITY.md lists them; `moon audit` runs the same attacks,
aimed at probe subjects, against a running deployment).

The attacks themselves live in services/cli/audit.py; here they are aimed at the real
targets (a tick, risk.account, risk.killswitch, BTC-USD orders), on a server of their own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from services.cli import audit
from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, NatsServer, free_port, load_or_create_credentials
from services.common.streams import (EXEC, KV_PROTECTIONS_STREAM, KV_SENTIMENT_STREAM, KV_STREAM, ORDERS, jetstream_spec,
                                     read_stream)
from services.contract import subjects as S
from tests.conftest import request_when_answered

NETWORK_ATTACKS = [a for a in audit.ATTACKS if a is not audit.risk_api_beyond_role]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A server of this module's own: were an attack to succeed, no other test is hurt."""
    moon_dir = tmp_path_factory.mktemp("attacks")
    with NatsServer(store_dir=moon_dir, credentials=load_or_create_credentials(moon_dir)) as server:
        server.provision()
        yield server


@pytest.mark.parametrize("user", audit.SERVICES)
@pytest.mark.parametrize("attack", NETWORK_ATTACKS, ids=lambda a: a.__name__)
async def test_attack_is_refused_and_changes_nothing(server, attack, user):
    auditor = audit.Auditor(server.url, server.credentials)
    watcher = await auditor.connect("operator")
    try:
        result = await attack(auditor, watcher, user, False)
    finally:
        await auditor.close()
    assert result.held, f"{result.attack} with {user}'s credential: {result.detail}"


async def test_the_jetstream_state_is_still_as_provisioned(server):
    """After every attack above (the module's tests run in order): each stream and durable
    has exactly the provisioned configuration, and the stores lost nothing."""
    nc = await nats.connect(server.url, user="operator", password=server.credentials["operator"])
    try:
        spec = jetstream_spec()
        for wanted in spec["streams"]:
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{wanted['name']}", b"", timeout=5)).data)
            live = info["config"]
            assert {k: live.get(k) for k in wanted} == wanted, wanted["name"]
            assert "republish" not in live and not live.get("sealed")
            assert info["state"]["first_seq"] <= 1, f"{wanted['name']} lost messages: {info['state']}"
        for consumer in spec["consumers"]:
            stream, wanted = consumer["stream_name"], consumer["config"]
            info = json.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{wanted['name']}", b"",
                                                timeout=5)).data)
            assert not info["config"].get("deliver_subject")
            assert info["config"].get("inactive_threshold", 0) == 0
        for stream in (ORDERS, EXEC, KV_STREAM):
            names = json.loads((await nc.request(f"$JS.API.CONSUMER.NAMES.{stream}", b"{}", timeout=5)).data)
            assert set(names["consumers"] or []) <= {"execution", "risk"}, (stream, names)
    finally:
        await nc.close()


async def test_the_suite_sees_a_broken_defence(tmp_path):
    """The attacks can fail: against a server whose config lets every user create
    consumers and update streams (the wave-1 weakness), or publish snapshots and the
    server's advisories, they report it."""
    conf = (REPO_ROOT / "proto" / "nats" / "moonbus.conf").read_text()
    block = conf.index('user: "market-data"')
    weakened = conf[block:].replace(
        'allow: ["md.tick.>",', 'allow: ["$JS.API.>", "snapshot.>", "$JS.EVENT.>", "md.tick.>",', 1).replace("deny: $DENY_DESTRUCTIVE", "", 1)
    weak = tmp_path / "weak.conf"
    weak.write_text(conf[:block] + weakened)
    creds = load_or_create_credentials(tmp_path)
    with NatsServer(store_dir=tmp_path, credentials=creds, config=weak) as server:
        server.provision()
        reader = audit.Auditor(server.url, creds)  # audit() closes its own connections
        watcher = await reader.connect("operator")
        before = {stream: await audit._stream_config(watcher, stream) for stream in audit.STREAMS}
        results = await audit.audit(audit.Auditor(server.url, creds), safe=True, users=["market-data"],
                                    attacks=[audit.forge_with_push_consumer, audit.forge_with_republish,
                                             audit.forge_state_or_dead_letters, audit.rewrite_or_erase_streams])
        after = {stream: await audit._stream_config(watcher, stream) for stream in audit.STREAMS}
        await reader.close()
    assert [r.held for r in results] == [False, False, False, False], results
    # Safe means safe though the defence is broken: no real stream sealed, re-subjected or republished.
    assert after == before


async def test_a_live_buckets_writes_are_not_lost_data_but_a_key_gone_is(server):
    """`rewrite_or_erase_streams` compares the streams before and after: a KV bucket keeps one
    message a key, so a running service writing a key again moves the bucket's first sequence
    (the compose suite once read that as lost data); a key gone is the loss."""
    auditor = audit.Auditor(server.url, server.credentials)
    watcher = await auditor.connect("operator")
    writer = await nats.connect(server.url, user="sentiment-agent", password=server.credentials["sentiment-agent"],
                                inbox_prefix="_INBOX.sentiment-agent")
    try:
        js = writer.jetstream()
        kv = await js.key_value(S.KV_SENTIMENT_BUCKET)
        for key in ("AUDIT-USD", "AUDITB-USD"):
            await kv.put(key, b"1")
        before = await audit._stream_state(watcher, KV_SENTIMENT_STREAM)
        # The key of the bucket's oldest message written again: that message is dropped.
        oldest = await js.get_msg(KV_SENTIMENT_STREAM, seq=before["first_seq"], direct=True)
        await kv.put(oldest.subject.removeprefix(f"$KV.{S.KV_SENTIMENT_BUCKET}."), b"2")
        rewritten = await audit._stream_state(watcher, KV_SENTIMENT_STREAM)
        assert rewritten["first_seq"] != before["first_seq"]
        assert rewritten["num_subjects"] == before["num_subjects"] >= 2
        assert not audit._lost(before, rewritten, KV_SENTIMENT_STREAM)
    finally:
        await writer.close()
        await auditor.close()
    # (Nobody may delete from the buckets, admin included: a key gone, as a purge would leave it.)
    gone = dict(list(rewritten["subjects"].items())[1:])
    assert audit._lost(rewritten, {**rewritten, "subjects": gone}, KV_SENTIMENT_STREAM)
    # Any other stream: its first message gone is the loss.
    assert audit._lost({"first_seq": 1}, {"first_seq": 2}, ORDERS)
    assert not audit._lost({"first_seq": 1}, {"first_seq": 1}, ORDERS)


async def test_an_ended_protection_expiring_is_not_lost_data(server):
    """Execution writes an ended protection's record with a per-message TTL: the record going
    by itself during an audit is no loss (`moon audit` once could report it as one); an active
    record (no TTL) gone still is."""
    auditor = audit.Auditor(server.url, server.credentials)
    watcher = await auditor.connect("operator")
    execution = await nats.connect(server.url, user="execution", password=server.credentials["execution"],
                                   inbox_prefix="_INBOX.execution")
    try:
        await execution.request(S.kv_protection("audit-ended"), b"{}", headers={"Nats-TTL": "1s"}, timeout=5)
        await execution.request(S.kv_protection("audit-active"), b"{}", timeout=5)
        before = await audit._stream_state(watcher, KV_PROTECTIONS_STREAM)
        expiring = await audit._expiring_keys(watcher, KV_PROTECTIONS_STREAM, before)
        assert expiring == {S.kv_protection("audit-ended")}
        after = before
        for _ in range(50):  # the TTL is 1 s; the server removes expired messages on its own timer
            await asyncio.sleep(0.1)
            after = await audit._stream_state(watcher, KV_PROTECTIONS_STREAM)
            if S.kv_protection("audit-ended") not in after.get("subjects", {}):
                break
        assert set(after["subjects"]) == {S.kv_protection("audit-active")}, after
        assert audit._lost(before, after, KV_PROTECTIONS_STREAM)  # without knowing it was to expire
        assert not audit._lost(before, after, KV_PROTECTIONS_STREAM, expiring)
        assert audit._lost(before, {**after, "subjects": {}}, KV_PROTECTIONS_STREAM, expiring)
    finally:
        await execution.close()
        await auditor.close()


async def test_the_lease_attack_sees_a_broken_defence(tmp_path):
    """Another service's credential taking the risk lease: against a server that lets
    market-data write every KV key, both the safe probe and the real takeover are reported,
    and the real one did take `leader.risk`."""
    conf = (REPO_ROOT / "proto" / "nats" / "moonbus.conf").read_text()
    block = conf.index('user: "market-data"')
    weak = tmp_path / "weak.conf"
    weak.write_text(conf[:block] + conf[block:].replace('allow: ["md.tick.>",', 'allow: ["$KV.moonbus.>", "md.tick.>",', 1))
    creds = load_or_create_credentials(tmp_path)
    with NatsServer(store_dir=tmp_path, credentials=creds, config=weak) as server:
        server.provision()
        for safe in (True, False):
            results = await audit.audit(audit.Auditor(server.url, creds), safe=safe, users=["market-data"],
                                        attacks=[audit.take_a_lease])
            assert [r.held for r in results] == [False], results
        nc = await nats.connect(server.url, user="operator", password=creds["operator"])
        try:
            lease = await (await nc.jetstream().key_value("moonbus")).get("leader.risk")
            assert json.loads(lease.value)["holder"] == "audit-market-data"
        finally:
            await nc.close()


# ---- attacks the services themselves must refuse: the real binaries ------------------------

ENV = {
    "RUST_LOG": "warn",
    "MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20",
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_AGENT": "3",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    moon_dir = tmp_path_factory.mktemp("attacked-system")
    system = System().start(port=free_port(), moon_dir=moon_dir, services=["market-data", "risk", "execution"],
                            out=None, env=ENV)
    try:
        yield system
    finally:
        system.stop()
        print(system.tail(40))


class Operator:
    def __init__(self, system: System) -> None:
        self.system = system
        self.creds = json.loads((Path(system.moon_dir) / "credentials.json").read_text())
        self.clients: list[nats.NATS] = []

    async def connect(self, user: str) -> nats.NATS:
        nc = await nats.connect(self.system.url, user=user, password=self.creds[user],
                                inbox_prefix=f"_INBOX.{user}")
        self.clients.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self.clients:
            await nc.close()


@pytest.fixture
async def operator(system: System) -> AsyncIterator[Operator]:
    op = Operator(system)
    nc = await op.connect("operator")
    # Risk rebuilt and trading, execution answering.
    for _ in range(600):
        try:
            reply = json.loads((await nc.request("risk.api.positions", b"{}", timeout=2)).data)
            if "account" in reply:
                break
        except nats.errors.Error:
            pass
        await asyncio.sleep(0.1)
    await request_when_answered(nc, "exec.api.version")
    try:
        yield op
    finally:
        await op.close()


async def test_risk_api_beyond_its_role_is_refused_for_every_credential(system, operator):
    creds = operator.creds
    auditor = audit.Auditor(system.url, creds)
    results = await audit.audit(auditor, safe=False, attacks=[audit.risk_api_beyond_role])
    assert len(results) == len(audit.SERVICES)
    for r in results:
        assert r.held and "skipped" not in r.detail, r


async def _report(nc: nats.NATS, client_order_id: str, until: tuple[str, ...] = ("FILLED", "REJECTED", "CANCELLED",
                  "EXPIRED"), timeout: float = 30.0) -> dict:
    """The latest report of an order in EXEC once its status is one of `until`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: list[dict] = []
    while loop.time() < deadline:
        found = [json.loads(m.data) async for m in read_stream(nc, EXEC, "exec.report.>")
                 if m.msg_id.startswith(client_order_id + ":")]
        if found and found[-1]["status"] in until:
            return found[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {until} report for {client_order_id}: {found}")


def _order(cid: str, agent: str, **extra) -> bytes:
    body = {"client_order_id": cid, "agent": agent, "symbol": "BTC-USD", "side": "BUY", "type": "MARKET",
            "quantity": "0.001", "origin_ts": 1, "ts": 1, **extra}
    return json.dumps(body).encode()


async def test_an_order_trades_only_as_its_publisher(system, operator):
    """The gateway's credential sends an order claiming to be the trading agent (to use
    its rate limit, or have it blamed): REJECTED agent_mismatch. On the trading agent's
    subject it cannot publish at all."""
    gateway = await operator.connect("gateway")
    js = gateway.jetstream()
    await js.publish("orders.submit.gateway.BTC-USD", _order("atk-impostor", "trading"),
                     headers={"Nats-Msg-Id": "atk-impostor"})
    report = await _report(gateway, "atk-impostor")
    assert report["status"] == "REJECTED" and report["reason"].startswith("agent_mismatch: "), report
    with pytest.raises(nats.errors.Error):
        await gateway.jetstream(timeout=0.5).publish("orders.submit.trading.BTC-USD", _order("atk-2", "trading"))
    # Its own orders go through.
    await js.publish("orders.submit.gateway.BTC-USD", _order("atk-own", "gateway"), headers={"Nats-Msg-Id": "atk-own"})
    assert (await _report(gateway, "atk-own"))["status"] == "FILLED"


async def test_only_the_owner_or_the_operator_cancels_an_order(system, operator):
    op = await operator.connect("operator")
    gateway = await operator.connect("gateway")
    errors: asyncio.Queue = asyncio.Queue()
    await op.subscribe("errors.execution", cb=errors.put)
    resting = _order("atk-rest", "gateway", type="LIMIT", limit_price="1000", time_in_force="GTC")
    await gateway.jetstream().publish("orders.submit.gateway.BTC-USD", resting, headers={"Nats-Msg-Id": "atk-rest"})
    await _report(op, "atk-rest", until=("ACCEPTED",))
    # The operator's credential may cancel any order, on its own subject only.
    cancel = {"client_order_id": "atk-rest", "agent": "gateway", "symbol": "BTC-USD", "ts": 1}
    await op.jetstream().publish("orders.cancel.operator.BTC-USD", json.dumps(cancel).encode())
    event = json.loads((await asyncio.wait_for(errors.get(), 30)).data)
    assert event["reason"].startswith("agent_mismatch: subject agent \"operator\""), event
    cancel["agent"] = "operator"
    await op.jetstream().publish("orders.cancel.operator.BTC-USD", json.dumps(cancel).encode())
    report = await _report(op, "atk-rest")
    assert report["status"] == "CANCELLED" and report["reason"] == "cancelled by operator", report


async def test_an_overflowing_order_is_refused_and_risk_keeps_running(system, operator):
    """The wave-1 crash: quantity x price beyond a 96-bit decimal panicked rust-risk."""
    op = await operator.connect("operator")
    js = op.jetstream()
    huge = _order("atk-overflow", "operator", quantity="79228162514264337593543950335", type="LIMIT",
                  limit_price="79228162514264337593543950335", time_in_force="IOC")
    await js.publish("orders.submit.operator.BTC-USD", huge, headers={"Nats-Msg-Id": "atk-overflow"})
    report = await _report(op, "atk-overflow")
    assert report["status"] == "REJECTED" and report["reason"], report
    assert system.running("risk") and system.running("execution")
    await js.publish("orders.submit.operator.BTC-USD", _order("atk-after", "operator"),
                     headers={"Nats-Msg-Id": "atk-after"})
    assert (await _report(op, "atk-after"))["status"] == "FILLED"


async def test_an_agent_notices_a_stolen_order_id(server):
    """The one thing subject permissions cannot stop (SECURITY.md, known limits): another
    publisher stores a message under the id an agent is about to use, so ORDERS takes the
    agent's order for a duplicate. The agent's fresh ids make that a guess, and an agent
    that gets "duplicate" for a fresh id says its order was NOT stored."""
    from services.common.bus import Bus, DuplicateOrderId
    from services.contract.models import OrderRequest

    thief = await nats.connect(server.url, user="gateway", password=server.credentials["gateway"],
                               inbox_prefix="_INBOX.gateway")
    agent = Bus("trading-agent")
    await agent.connect(server.url, "trading-agent", server.credentials["trading-agent"])
    try:
        await thief.jetstream().publish("orders.submit.gateway.BTC-USD", b"{}", headers={"Nats-Msg-Id": "trd-guessed"})
        order = OrderRequest.model_validate_json(_order("trd-guessed", "trading"))
        with pytest.raises(DuplicateOrderId, match="not stored"):
            await agent.publish_order("orders.submit.trading.BTC-USD", order, fresh=True)
        # A re-send of one's own order is a duplicate as it should be (not fresh: no error).
        order = order.model_copy(update={"client_order_id": "trd-own"})
        first = await agent.publish_order("orders.submit.trading.BTC-USD", order, fresh=True)
        again = await agent.publish_order("orders.submit.trading.BTC-USD", order)
        assert again.duplicate and again.seq == first.seq
    finally:
        await thief.close()
        await agent.close()


async def test_one_agent_cannot_lock_the_others_out(system, operator):
    """Resting orders far from the market until the account's open-order budget is gone:
    one credential gets its own share (max_open_orders_per_agent) and no more."""
    gateway = await operator.connect("gateway")
    op = await operator.connect("operator")
    ids = [f"atk-lock-{i}" for i in range(4)]
    for cid in ids:
        resting = _order(cid, "gateway", type="LIMIT", limit_price="1000", time_in_force="GTC")
        await gateway.jetstream().publish("orders.submit.gateway.BTC-USD", resting, headers={"Nats-Msg-Id": cid})
    for cid in ids[:3]:
        await _report(op, cid, until=("ACCEPTED",))
    refused = await _report(op, ids[3])
    assert refused["status"] == "REJECTED" and refused["reason"].startswith("max_open_orders_agent"), refused
    # Everyone else still trades.
    await op.jetstream().publish("orders.submit.operator.BTC-USD", _order("atk-unlocked", "operator"),
                                 headers={"Nats-Msg-Id": "atk-unlocked"})
    assert (await _report(op, "atk-unlocked"))["status"] == "FILLED"
    for cid in ids[:3]:
        cancel = {"client_order_id": cid, "agent": "gateway", "symbol": "BTC-USD", "ts": 1}
        await gateway.jetstream().publish("orders.cancel.gateway.BTC-USD", json.dumps(cancel).encode())
        assert (await _report(op, cid))["status"] == "CANCELLED"
