"""The NATS server is secure by default and every service can do its job.

Runs against the real nats-server with proto/nats/moonbus.conf (conftest.nats_server).
Each "allowed" case checks that a message really arrives; each "denied" case checks
that the server reports a permission violation AND that nothing arrives. JetStream
cases use nats-py directly and, for the Rust services, the exact API subjects that
async-nats 0.51 sends (CONSUMER.INFO, MSG.NEXT, acks, direct gets). What a stolen
credential must NOT be able to do is tests/test_attacks.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import uuid

import nats
import nats.micro
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from services.common.bus import flush
from services.devstack.natsserver import (
    SERVICE_USERS,
    NatsServer,
    NatsServerError,
    free_port,
    load_or_create_credentials,
    write_nats_env,
)
from services.common.streams import (
    EXEC,
    KV_BUCKET,
    KV_PROTECTIONS_BUCKET,
    KV_SENTIMENT_BUCKET,
    KV_STREAM,
    MSG_ID_HEADER,
    ORDERS,
    jetstream_spec,
    open_kv,
    provision,
    read_stream,
)

# Seconds to wait for something that must NOT happen. Short is enough: a message the
# server routed before answering our PING is already queued when flush() returns.
SHORT = 0.25


def uid() -> str:
    return uuid.uuid4().hex[:10]


async def js_request(nc, subject: str, body: dict | None = None, timeout: float = 2.0) -> dict:
    """A raw JetStream API request, as async-nats sends it; returns the JSON answer."""
    msg = await nc.request(subject, json.dumps(body or {}).encode(), timeout=timeout)
    return json.loads(msg.data)


async def assert_denied_request(nc, subject: str, body: dict | None = None) -> None:
    """The request is refused by the server (permission violation), so no answer."""
    with pytest.raises(NatsTimeoutError):
        await nc.request(subject, json.dumps(body or {}).encode(), timeout=SHORT)
    await nc.wait_for_permission_error(subject)


@pytest.fixture
async def streams(connect):
    """ORDERS, EXEC, the KV bucket and the durables, as provisioned for the session."""
    nc = await connect("operator")
    return {name: await nc.jetstream(timeout=5).stream_info(name) for name in (ORDERS, EXEC, KV_STREAM)}


# ---- authentication --------------------------------------------------------------


async def test_anonymous_connection_is_refused(nats_server):
    with pytest.raises(Exception) as info:
        await nats.connect(nats_server.url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0)
    assert "authorization" in str(info.value).lower() or "auth" in type(info.value).__name__.lower()


@pytest.mark.parametrize("user", ["market-data", "operator", "nobody"])
async def test_wrong_password_is_refused(nats_server, user):
    with pytest.raises(Exception) as info:
        await nats.connect(
            nats_server.url, user=user, password="not-the-password",
            allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0,
        )
    assert "authorization" in str(info.value).lower() or "auth" in type(info.value).__name__.lower()


async def test_every_user_can_log_in(connect):
    for user in SERVICE_USERS:
        nc = await connect(user)
        await nc.flush(timeout=5)
        assert nc.is_connected, user


async def test_passwords_that_look_like_config_values_work(tmp_path):
    """nats-server parses a `$VAR` from the environment as a config value: `yes`,
    `1e5` or `-12` must still arrive as the literal password string."""
    tricky = ["yes", "1e5", "-12ab", "1k", "true", "0x1F", "null", "x#y", "a//b", "a,b"]
    creds = {user: tricky[i % len(tricky)] + ("" if i < len(tricky) else str(i)) for i, user in enumerate(SERVICE_USERS)}
    server = NatsServer(store_dir=tmp_path / "js", credentials=creds, port=free_port())
    async with server:
        for user in SERVICE_USERS:
            nc = await nats.connect(server.url, user=user, password=creds[user], allow_reconnect=False, connect_timeout=5)
            await nc.close()
    assert not server.running


def test_credentials_are_private_and_reused(tmp_path):
    moon = tmp_path / "moon"
    first = load_or_create_credentials(moon)
    assert set(first) == set(SERVICE_USERS)
    assert len(set(first.values())) == len(SERVICE_USERS)
    path = moon / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(moon.stat().st_mode) == 0o700
    assert load_or_create_credentials(moon) == first

    env_file = moon / "nats.env"
    write_nats_env(env_file, "nats://127.0.0.1:4222", "operator", first["operator"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    out = subprocess.run(
        ["bash", "-c", f"source {env_file} && printf '%s|%s|%s' \"$NATS_URL\" \"$NATS_USER\" \"$NATS_PASSWORD\""],
        capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]},
    ).stdout
    assert out == f"nats://127.0.0.1:4222|operator|{first['operator']}"


def test_server_start_failure_shows_its_output(tmp_path):
    creds = load_or_create_credentials(tmp_path)
    bad = tmp_path / "bad.conf"
    bad.write_text("this is { not a config\n")
    server = NatsServer(store_dir=tmp_path / "js", credentials=creds, config=bad)
    with pytest.raises(NatsServerError, match="Parse error"):
        server.start(timeout=10)


# ---- core publish permissions ------------------------------------------------------

PUBLISH_CASES = [
    # (user, subject, allowed)
    ("market-data", "md.tick.sim.BTC-USD", True),
    ("market-data", "md.alert.BTC-USD", True),
    ("market-data", "md.arb.BTC-USD", True),
    ("market-data", "errors.market-data", True),
    ("market-data", "md.api.price", False),  # requests are for others to make
    ("market-data", "errors.risk", False),
    ("market-data", "risk.verdict.BTC-USD", False),
    ("market-data", "orders.submit.trading.BTC-USD", False),
    ("risk", "risk.verdict.BTC-USD", True),
    ("risk", "risk.account", True),
    ("risk", "risk.events", True),
    ("risk", "md.tick.sim.BTC-USD", False),
    ("risk", "exec.report.BTC-USD", False),
    ("risk", "orders.submit.killswitch.BTC-USD", True),  # kill switch flatten
    ("risk", "orders.submit.trading.BTC-USD", False),
    ("risk", "orders.cancel.killswitch.BTC-USD", False),
    ("execution", "exec.report.BTC-USD", True),
    ("execution", "risk.api.check", True),
    ("execution", "exec.api.version", False),
    ("execution", "risk.api.killswitch.execution", False),
    ("execution", "orders.submit.trading.BTC-USD", True),  # algo children, under the parent's agent
    ("execution", "orders.cancel.trading.BTC-USD", False),
    ("execution", "md.tick.sim.BTC-USD", False),
    ("trading-agent", "orders.submit.trading.BTC-USD", True),
    ("trading-agent", "orders.cancel.trading.BTC-USD", True),
    ("trading-agent", "orders.submit.risk.BTC-USD", False),
    ("trading-agent", "orders.submit.gateway.BTC-USD", False),
    ("trading-agent", "orders.cancel.operator.BTC-USD", False),
    ("trading-agent", "agent.signal.trading.BTC-USD", True),
    ("trading-agent", "md.api.price", True),
    ("trading-agent", "md.api.monitor.start", False),
    ("trading-agent", "risk.api.positions", True),
    ("trading-agent", "agent.api.swarm.ask", True),  # the decision pipeline's ask_swarm
    ("trading-agent", "risk.api.killswitch.trading-agent", False),
    ("trading-agent", "agent.signal.risk.BTC-USD", False),
    ("trading-agent", "md.tick.sim.BTC-USD", False),
    ("trading-agent", "exec.report.BTC-USD", False),
    ("risk-agent", "agent.signal.risk.BTC-USD", True),
    ("risk-agent", "risk.api.killswitch.risk-agent", True),
    ("risk-agent", "risk.api.killswitch.operator", False),
    ("risk-agent", "risk.api.limits.risk-agent", False),
    ("risk-agent", "risk.api.check", False),
    ("risk-agent", "orders.submit.risk.BTC-USD", True),
    ("risk-agent", "orders.cancel.risk.BTC-USD", True),
    ("risk-agent", "orders.submit.trading.BTC-USD", False),
    ("risk-agent", "risk.verdict.BTC-USD", False),
    ("risk-agent", "agent.signal.trading.BTC-USD", False),
    ("sentiment-agent", "agent.sentiment.BTC-USD", True),
    ("sentiment-agent", "$KV.sentiment.BTC-USD", True),
    ("sentiment-agent", "$KV.moonbus.sentiment.BTC-USD", False),  # its keys are a bucket of their own
    ("sentiment-agent", "$KV.moonbus.risk.killswitch", False),
    ("sentiment-agent", "agent.swarm.BTC-USD", False),
    ("sentiment-agent", "orders.submit.trading.BTC-USD", False),
    ("swarm-agent", "agent.swarm.BTC-USD", True),
    ("swarm-agent", "agent.signal.swarm.BTC-USD", True),
    ("swarm-agent", "md.api.history", True),
    ("swarm-agent", "md.api.monitor.stop", False),
    ("swarm-agent", "agent.sentiment.BTC-USD", False),
    ("swarm-agent", "orders.submit.swarm.BTC-USD", False),
    # the notifier reads and tells: it publishes its own errors and nothing else
    ("notifier", "errors.notifier", True),
    ("notifier", "errors.risk", False),
    ("notifier", "orders.submit.notifier.BTC-USD", False),
    ("notifier", "orders.submit.trading.BTC-USD", False),
    ("notifier", "orders.submit.killswitch.BTC-USD", False),
    ("notifier", "orders.cancel.operator.BTC-USD", False),
    ("notifier", "risk.api.killswitch.notifier", False),
    ("notifier", "risk.api.positions", False),
    ("notifier", "risk.events", False),
    ("notifier", "exec.report.BTC-USD", False),
    ("notifier", "md.alert.BTC-USD", False),
    ("notifier", "md.arb.BTC-USD", False),
    ("gateway", "md.arb.BTC-USD", False),
    ("trading-agent", "md.arb.BTC-USD", False),
    ("notifier", "$KV.moonbus.risk.killswitch", False),
    ("notifier", "$JS.API.STREAM.INFO.ORDERS", False),
    ("gateway", "orders.submit.gateway.BTC-USD", True),
    ("gateway", "orders.cancel.gateway.BTC-USD", True),
    ("gateway", "orders.submit.trading.BTC-USD", False),
    ("gateway", "risk.api.killswitch.gateway", True),
    ("gateway", "risk.api.limits.gateway", True),
    ("gateway", "risk.api.killswitch.operator", False),
    ("gateway", "risk.api.check", False),
    ("gateway", "agent.api.swarm.ask", True),
    ("gateway", "$SRV.PING", True),
    ("gateway", "md.tick.sim.BTC-USD", False),
    ("gateway", "risk.verdict.BTC-USD", False),
    ("gateway", "exec.report.BTC-USD", False),
    ("gateway", "agent.signal.gateway.BTC-USD", False),
    ("operator", "md.api.price", True),
    ("operator", "risk.api.killswitch.operator", True),
    ("operator", "risk.api.limits.operator", True),
    ("operator", "risk.api.killswitch.gateway", False),
    ("operator", "risk.api.check", False),
    ("operator", "exec.api.version", True),
    ("operator", "agent.api.swarm.ask", True),
    ("operator", "$SRV.PING", True),
    ("operator", "orders.submit.operator.BTC-USD", True),
    ("operator", "orders.cancel.operator.BTC-USD", True),
    ("operator", "orders.submit.trading.BTC-USD", False),
    ("operator", "md.tick.sim.X", False),
    ("operator", "md.alert.X", False),
    ("operator", "md.arb.X", False),
    ("operator", "risk.verdict.X", False),
    ("operator", "risk.account", False),
    ("operator", "exec.report.X", False),
    ("operator", "agent.sentiment.X", False),
    ("operator", "agent.signal.operator.X", False),
    ("operator", "_INBOX.someone-elses-reply", False),
    ("operator", "$KV.moonbus.risk.killswitch", False),
    # the failover leases (rust-common leader.rs): each only by its own service
    ("risk", "$KV.moonbus.leader.risk", True),
    ("risk", "$KV.moonbus.leader.execution", False),
    ("execution", "$KV.moonbus.leader.execution", True),
    ("execution", "$KV.moonbus.leader.risk", False),
    ("execution", "$KV.moonbus.risk.killswitch", False),
    ("operator", "$KV.moonbus.leader.risk", False),
    ("gateway", "$KV.moonbus.leader.execution", False),
]


@pytest.mark.parametrize(("user", "subject", "allowed"), PUBLISH_CASES, ids=lambda v: str(v))
async def test_publish_permissions(connect, user, subject, allowed):
    watcher = await connect("operator")  # operator may subscribe to everything
    sub = await watcher.subscribe(subject)
    await flush(watcher)

    nc = await connect(user)
    payload = f"probe-{uid()}".encode()
    await nc.publish(subject, payload)
    await flush(nc)  # the server has processed the PUB once our PING is answered

    if allowed:
        msg = await sub.next_msg(timeout=5)
        assert msg.data == payload
        assert not nc.permission_errors(), nc.permission_errors()
    else:
        await nc.wait_for_permission_error(subject)
        await watcher.flush()
        with pytest.raises(NatsTimeoutError):
            await sub.next_msg(timeout=SHORT)


async def test_market_data_tick_reaches_operator(connect):
    operator = await connect("operator")
    sub = await operator.subscribe("md.>")
    await flush(operator)
    md = await connect("market-data")
    await md.publish("md.tick.sim.BTC-USD", b'{"price":"100.5"}')
    msg = await sub.next_msg(timeout=5)
    assert msg.subject == "md.tick.sim.BTC-USD"
    assert msg.data == b'{"price":"100.5"}'


@pytest.mark.parametrize("subject", ["md.tick.sim.X", "risk.verdict.X", "exec.report.X"])
async def test_operator_cannot_impersonate_services(connect, subject):
    listener = await connect("gateway")  # gateway subscribes md.>, risk.>, exec.>
    sub = await listener.subscribe(subject)
    await flush(listener)
    operator = await connect("operator")
    await operator.publish(subject, b"forged")
    await flush(operator)
    text = await operator.wait_for_permission_error(subject)
    assert "publish" in text.lower()
    await listener.flush()
    with pytest.raises(NatsTimeoutError):
        await sub.next_msg(timeout=SHORT)
    assert operator.is_connected  # a violation is reported, the connection stays up


@pytest.mark.parametrize("user", SERVICE_USERS)
async def test_nobody_may_delete_or_purge_streams(connect, streams, user):
    nc = await connect(user)
    await assert_denied_request(nc, f"$JS.API.STREAM.DELETE.{ORDERS}")
    await assert_denied_request(nc, f"$JS.API.STREAM.PURGE.{EXEC}")
    check = await connect("execution")
    info = await check.jetstream(timeout=5).stream_info(ORDERS)  # still there
    assert info.config.name == ORDERS


# ---- subscribe permissions ----------------------------------------------------------

SUBSCRIBE_CASES = [
    ("market-data", "md.api.price", True),
    ("market-data", "md.tick.>", False),
    ("market-data", "_INBOX.market-data.x", True),
    ("market-data", "_INBOX.>", False),
    ("market-data", "_INBOX.risk.>", False),
    ("market-data", "$SRV.PING.market-data", True),
    ("market-data", "$SRV.PING.risk", False),
    ("risk", "exec.report.>", True),
    ("risk", "orders.submit.>", False),
    ("risk", "_INBOX.execution.>", False),
    ("execution", "md.book.>", True),
    ("execution", "md.arb.>", False),
    ("trading-agent", "md.arb.>", True),
    ("risk-agent", "md.arb.>", True),
    ("gateway", "md.arb.>", True),
    ("operator", "md.arb.>", True),
    ("execution", "orders.submit.>", False),  # orders come from the stream, not core
    ("execution", "_INBOX.>", False),
    ("trading-agent", "md.tick.>", True),
    ("trading-agent", "md.api.price", False),
    ("trading-agent", "risk.api.check", False),
    ("trading-agent", "orders.submit.>", False),
    ("trading-agent", "_INBOX.>", False),
    ("risk-agent", "risk.verdict.>", True),
    ("risk-agent", "risk.api.check", False),
    ("sentiment-agent", "md.alert.>", True),
    ("sentiment-agent", "md.tick.>", False),
    ("swarm-agent", "agent.api.swarm.ask", True),
    ("swarm-agent", "orders.>", False),
    ("swarm-agent", "_INBOX.gateway.>", False),
    ("notifier", "exec.report.>", True),
    ("notifier", "risk.events", True),
    ("notifier", "risk.verdict.>", True),
    ("notifier", "risk.account", True),
    ("notifier", "md.alert.>", True),
    ("notifier", "md.arb.>", False),
    ("notifier", "exec.venue.>", True),
    ("notifier", "risk.recon.>", True),
    ("notifier", "errors.>", True),
    ("notifier", "orders.>", False),
    ("notifier", "orders.submit.>", False),
    ("notifier", "md.tick.>", False),
    ("notifier", "risk.api.>", False),
    ("notifier", "agent.>", False),
    ("notifier", "_INBOX.>", False),
    ("notifier", "_INBOX.risk.>", False),
    ("notifier", "$SRV.PING.risk", False),
    ("gateway", "orders.>", True),
    ("gateway", "errors.>", True),
    ("gateway", "exec.api.version", False),
    ("gateway", "risk.api.check", False),
    ("gateway", ">", False),
    ("gateway", "_INBOX.operator.>", False),
    ("operator", ">", True),
    ("operator", "_INBOX.risk.>", False),
    ("operator", "$JS.ACK.>", False),
]


@pytest.mark.parametrize(("user", "subject", "allowed"), SUBSCRIBE_CASES, ids=lambda v: str(v))
async def test_subscribe_permissions(connect, user, subject, allowed):
    nc = await connect(user)
    await nc.subscribe(subject)
    await flush(nc)
    if allowed:
        await asyncio.sleep(0.05)
        assert not nc.permission_errors(), nc.permission_errors()
    else:
        text = await nc.wait_for_permission_error(subject)
        assert "subscription" in text.lower()


async def test_wide_subscription_does_not_see_api_requests(connect):
    """risk-agent subscribes risk.> but must never see (and so never answer)
    risk.api.check requests meant for risk."""
    agent = await connect("risk-agent")
    sub = await agent.subscribe("risk.>")
    await flush(agent)
    execution = await connect("execution")
    await execution.publish("risk.api.check", b"{}", reply="_INBOX.x")
    risk = await connect("risk")
    await risk.publish("risk.verdict.BTC-USD", b"verdict")
    await flush(execution)
    await flush(risk)
    await agent.flush()
    msg = await sub.next_msg(timeout=5)
    assert msg.subject == "risk.verdict.BTC-USD"
    with pytest.raises(NatsTimeoutError):
        await sub.next_msg(timeout=SHORT)


# ---- request / reply and the service API ---------------------------------------------


async def test_responders_answer_requests_and_service_api(connect):
    md = await connect("market-data")

    async def price(msg):
        await msg.respond(b'{"price":"101"}')

    await md.subscribe("md.api.price", cb=price)
    service = await nats.micro.add_service(md, name="market-data", version="0.1.0")
    await flush(md)

    agent = await connect("trading-agent")
    reply = await agent.request("md.api.price", b'{"symbol":"BTC-USD"}', timeout=5)
    assert reply.data == b'{"price":"101"}'

    operator = await connect("operator")
    ping = await operator.request("$SRV.PING.market-data", b"", timeout=5)
    assert json.loads(ping.data)["name"] == "market-data"
    assert not md.permission_errors(), md.permission_errors()
    await service.stop()


async def test_operator_cannot_answer_requests(connect):
    operator = await connect("operator")
    sub = await operator.subscribe("md.api.>")
    await flush(operator)
    agent = await connect("trading-agent")
    with pytest.raises((NatsTimeoutError, nats.errors.NoRespondersError)):
        fut = asyncio.ensure_future(agent.request("md.api.price", b"{}", timeout=1))
        request = await sub.next_msg(timeout=5)
        await request.respond(b'{"price":"0.01"}')  # forged answer
        await fut
    await operator.wait_for_permission_error("_INBOX")


# ---- JetStream: provisioning ------------------------------------------------------------


async def test_provisioned_state_is_the_spec_and_provisioning_is_idempotent(connect, streams):
    spec = jetstream_spec()
    for wanted in spec["streams"]:
        nc = await connect("operator")
        live = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{wanted['name']}", b"", timeout=5)).data)["config"]
        assert {k: live.get(k) for k in wanted} == wanted
        assert live["deny_delete"] and live["deny_purge"] and not live["allow_rollup_hdrs"]
    admin = await connect("admin")
    assert await provision(admin) == {}  # nothing to change
    # Drift (made here by the admin itself, as a hand edit would) is put back.
    live = json.loads((await admin.request(f"$JS.API.STREAM.INFO.{ORDERS}", b"", timeout=5)).data)["config"]
    changed = await js_request(admin, f"$JS.API.STREAM.UPDATE.{ORDERS}", {**live, "max_age": 3_600_000_000_000})
    assert "error" not in changed, changed
    repaired = await provision(admin)
    assert repaired == {ORDERS: ["max_age: 3600000000000 -> 604800000000000"]}
    # Execution's settings from moonbus.toml become its consumer's.
    moved = await provision(admin, {"execution": {"ack_wait_ms": 2000, "max_in_flight": 7}})
    assert moved == {f"{ORDERS}/execution": ["ack_wait: 30000000000 -> 2000000000", "max_ack_pending: 32 -> 7"]}
    assert await provision(admin) != {}  # and back to the defaults


@pytest.mark.parametrize("user", [u for u in SERVICE_USERS if u != "admin"])
async def test_no_service_may_provision(connect, streams, user):
    nc = await connect(user)
    await assert_denied_request(nc, f"$JS.API.STREAM.CREATE.{ORDERS}", {"name": ORDERS, "subjects": ["orders.>"]})
    await assert_denied_request(nc, f"$JS.API.STREAM.UPDATE.{EXEC}", {"name": EXEC})
    await assert_denied_request(nc, f"$JS.API.CONSUMER.CREATE.{ORDERS}.execution",
                                {"stream_name": ORDERS, "config": {"durable_name": "execution"}})


async def test_admin_may_provision_but_never_delete(connect, streams):
    admin = await connect("admin")
    await assert_denied_request(admin, f"$JS.API.STREAM.DELETE.{ORDERS}")
    await assert_denied_request(admin, f"$JS.API.STREAM.PURGE.{EXEC}")
    await assert_denied_request(admin, f"$JS.API.CONSUMER.DELETE.{ORDERS}.execution")
    # Only the named consumers of the spec, no others.
    await assert_denied_request(admin, f"$JS.API.CONSUMER.CREATE.{ORDERS}.other",
                                {"stream_name": ORDERS, "config": {"durable_name": "other"}})


async def test_exec_api_requests_are_not_captured_by_exec_stream(connect, streams):
    """A request to exec.api.* must be answered by execution, not PubAck'ed by EXEC."""
    execution = await connect("execution")

    async def version(msg):
        await msg.respond(b'{"version":"test"}')

    await execution.subscribe("exec.api.version", cb=version)
    await flush(execution)
    operator = await connect("operator")
    for _ in range(5):
        reply = await operator.request("exec.api.version", b"{}", timeout=5)
        assert reply.data == b'{"version":"test"}'


# ---- JetStream: orders ----------------------------------------------------------------


async def test_trading_agent_gets_puback_and_dedupe_works(connect, streams):
    nc = await connect("trading-agent")
    js = nc.jetstream(timeout=5)
    coid = f"co-{uid()}"
    subject = "orders.submit.trading.BTC-USD"
    ack = await js.publish(subject, b'{"order":1}', headers={MSG_ID_HEADER: coid})
    assert ack.stream == ORDERS
    assert not ack.duplicate
    again = await js.publish(subject, b'{"order":1}', headers={MSG_ID_HEADER: coid})
    assert again.stream == ORDERS
    assert again.duplicate is True
    assert again.seq == ack.seq
    other = await js.publish(subject, b'{"order":2}', headers={MSG_ID_HEADER: f"co-{uid()}"})
    assert not other.duplicate and other.seq > ack.seq


async def test_execution_pulls_and_acks_from_its_durable_as_async_nats_does(connect, streams):
    """The raw API subjects of async-nats 0.51: get_consumer (INFO), fetch (MSG.NEXT), acks."""
    agent = await connect("risk-agent")
    coid = f"co-{uid()}"
    await agent.jetstream().publish("orders.cancel.risk.SOL-USDC", coid.encode(), headers={MSG_ID_HEADER: coid})

    nc = await connect("execution")
    info = await js_request(nc, f"$JS.API.CONSUMER.INFO.{ORDERS}.execution")
    assert info["config"]["durable_name"] == "execution" and "deliver_subject" not in info["config"]
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution",
                     json.dumps({"batch": 500, "no_wait": True}).encode(), reply=inbox)
    found = None
    while True:
        msg = await sub.next_msg(timeout=5)
        if not msg.reply:  # 404 "no messages" status: end of the batch
            break
        assert msg.reply.startswith(f"$JS.ACK.{ORDERS}.execution.")
        await nc.publish(msg.reply, b"+WPI")  # in progress, then a double ack (async-nats AckKind / double_ack)
        await nc.request(msg.reply, b"+ACK", timeout=5)
        if msg.data == coid.encode():
            found = msg
    assert found is not None
    assert not nc.permission_errors(), nc.permission_errors()
    info = await js_request(nc, f"$JS.API.CONSUMER.INFO.{ORDERS}.execution")
    assert info["num_ack_pending"] == 0


@pytest.mark.parametrize("reader", ["gateway", "operator"])
async def test_readers_read_orders_by_direct_get_and_cannot_take_them(connect, streams, reader):
    agent = await connect("trading-agent")
    coid = f"co-{uid()}"
    symbol = f"R{uid().upper()}-USD"
    await agent.jetstream().publish(f"orders.submit.trading.{symbol}", coid.encode(), headers={MSG_ID_HEADER: coid})

    nc = await connect(reader)
    found = [m async for m in read_stream(nc, ORDERS, f"orders.submit.*.{symbol}")]
    assert [(m.msg_id, m.data) for m in found] == [(coid, coid.encode())]
    last = await nc.jetstream(timeout=5).get_last_msg(ORDERS, f"orders.submit.trading.{symbol}")
    assert last.data == coid.encode()
    assert not nc.permission_errors(), nc.permission_errors()
    await assert_denied_request(nc, f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution", {"batch": 1})
    await assert_denied_request(nc, f"$JS.API.CONSUMER.CREATE.{ORDERS}",
                                {"stream_name": ORDERS, "config": {"deliver_subject": nc.new_inbox()}})
    await nc.publish(f"$JS.ACK.{ORDERS}.execution.1.1.1.1.0", b"+ACK")
    await nc.wait_for_permission_error(f"$JS.ACK.{ORDERS}")


async def test_read_stream_reads_batches_in_order_and_stops_at_the_end(connect, streams):
    execution = await connect("execution")
    subject = f"exec.report.BATCH{uid().upper()}"
    for i in range(1200):  # more than two batches of 512
        await execution.publish(subject, str(i).encode())
    await execution.flush()
    await execution.jetstream(timeout=5).publish(subject, b"last")
    reader = await connect("gateway")
    seen = [m async for m in read_stream(reader, EXEC, subject, batch=512)]
    assert [m.data for m in seen] == [str(i).encode() for i in range(1200)] + [b"last"]
    assert [m.seq for m in seen] == sorted(m.seq for m in seen)
    assert len([m async for m in read_stream(reader, EXEC, subject, start_seq=seen[-2].seq)]) == 2
    assert len([m async for m in read_stream(reader, EXEC, subject, max_messages=10)]) == 10
    assert [m async for m in read_stream(reader, EXEC, "exec.report.NOTHING-HERE")] == []


# ---- JetStream: execution reports ----------------------------------------------------------


async def test_risk_reads_exec_by_direct_get_and_its_durable(connect, streams):
    execution = await connect("execution")
    report = f"report-{uid()}".encode()
    subject = f"exec.report.RISK{uid()}"
    ack = await execution.jetstream().publish(subject, report)
    assert ack.stream == EXEC

    risk = await connect("risk")
    found = [m async for m in read_stream(risk, EXEC, subject)]
    assert [m.data for m in found] == [report]
    # Its durable (deliver new, no acks): what is stored next arrives.
    info = await js_request(risk, f"$JS.API.CONSUMER.INFO.{EXEC}.risk")
    assert info["config"]["ack_policy"] == "none"
    inbox = risk.new_inbox()
    sub = await risk.subscribe(inbox)
    second = f"report-{uid()}".encode()
    await execution.jetstream().publish(subject, second)
    got: list[bytes] = []
    while second not in got:  # (the session's other tests left a backlog on the durable)
        await risk.publish(f"$JS.API.CONSUMER.MSG.NEXT.{EXEC}.risk",
                           json.dumps({"batch": 5000, "no_wait": True}).encode(), reply=inbox)
        while True:
            msg = await sub.next_msg(timeout=5)
            if not msg.subject.startswith("exec.report."):
                break  # a status: this batch is done
            if msg.subject == subject:
                got.append(msg.data)
    assert not risk.permission_errors(), risk.permission_errors()
    # risk may not touch ORDERS beyond publishing flatten orders
    await assert_denied_request(risk, f"$JS.API.STREAM.INFO.{ORDERS}")
    await assert_denied_request(risk, f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution", {"batch": 1})


async def test_risk_flatten_orders_land_in_orders_deduplicated(connect, streams):
    """Kill switch flatten: risk publishes reduce-only orders into ORDERS through
    JetStream (Nats-Msg-Id = client_order_id) as agent `killswitch`, and nothing else."""
    risk = await connect("risk")
    js = risk.jetstream(timeout=5)
    coid = f"ks-{uid()}-RISKFLAT-USD"
    subject = f"orders.submit.killswitch.RISKFLAT{uid()}-USD"
    ack = await js.publish(subject, b'{"flatten":1}', headers={MSG_ID_HEADER: coid})
    assert ack.stream == ORDERS and not ack.duplicate
    again = await js.publish(subject, b'{"flatten":1}', headers={MSG_ID_HEADER: coid})
    assert again.duplicate and again.seq == ack.seq
    assert not risk.permission_errors(), risk.permission_errors()

    reader = await connect("operator")
    stored = await reader.jetstream(timeout=5).get_last_msg(ORDERS, subject)
    assert (stored.data, stored.headers[MSG_ID_HEADER]) == (b'{"flatten":1}', coid)
    with pytest.raises(NatsTimeoutError):
        await risk.jetstream(timeout=SHORT).publish("orders.cancel.killswitch.BTC-USD", b"{}")
    await risk.wait_for_permission_error("orders.cancel.killswitch.btc-usd")


async def test_only_execution_publishes_exec_reports(connect, streams):
    for user in ("risk", "trading-agent", "gateway", "operator"):
        nc = await connect(user)
        with pytest.raises(NatsTimeoutError):
            await nc.jetstream(timeout=SHORT).publish("exec.report.BTC-USD", b"forged")
        await nc.wait_for_permission_error("exec.report.BTC-USD")


# ---- KV bucket ------------------------------------------------------------------------------


async def test_kv_each_writer_writes_only_its_own_keys_and_everyone_reads(connect, streams):
    sentiment = await connect("sentiment-agent")
    kv = await open_kv(sentiment.jetstream(timeout=5), KV_SENTIMENT_BUCKET)
    key = f"KV{uid().upper()}-USD"
    await kv.put(key, b'{"score":0.4}')

    risk = await connect("risk")
    rkv = await open_kv(risk.jetstream(timeout=5))
    tag = uid()
    risk_keys = {
        f"risk.killswitch{tag}": b'{"engaged":true,"actor":"alice","reason":"test","changed_ts":1}',
        f"risk.loss_latch{tag}": b"null",
        f"risk.account{tag}": b'{"state":"ACTIVE"}',
        f"risk.verdict.SEC{tag.upper()}-USD": b'{"state":"ACTIVE"}',
    }
    for k, value in risk_keys.items():
        await rkv.put(k, value)
    for reader in ("trading-agent", "risk-agent", "swarm-agent", "gateway", "sentiment-agent", "risk"):
        nc = await connect(reader)
        kv_reader = await nc.jetstream(timeout=5).key_value(KV_BUCKET)  # STREAM.INFO, then direct gets
        for k, value in risk_keys.items():
            assert (await kv_reader.get(k)).value == value, (reader, k)
        sentiment_reader = await nc.jetstream(timeout=5).key_value(KV_SENTIMENT_BUCKET)
        assert (await sentiment_reader.get(key)).value == b'{"score":0.4}', reader
        assert not nc.permission_errors(), (reader, nc.permission_errors())
    # Writers are confined to their own prefix; readers write nothing.
    for user, bucket, foreign in (("sentiment-agent", KV_BUCKET, f"risk.killswitch{tag}"),
                                  ("sentiment-agent", KV_BUCKET, f"sentiment.{key}"),
                                  ("risk", KV_SENTIMENT_BUCKET, key), ("trading-agent", KV_SENTIMENT_BUCKET, key),
                                  ("risk-agent", KV_BUCKET, f"risk.killswitch{tag}")):
        nc = await connect(user)
        with pytest.raises(NatsTimeoutError):
            await (await nc.jetstream(timeout=SHORT).key_value(bucket)).put(foreign, b"forged")
        await nc.wait_for_permission_error(f"$KV.{bucket}.")
    # Purging a key of one's own (a rollup) is refused by the bucket: nothing is erased.
    with pytest.raises(nats.js.errors.APIError):
        await kv.purge(key)
    assert (await kv.get(key)).value == b'{"score":0.4}'


@pytest.mark.parametrize(("thief_user", "bucket"), [("sentiment-agent", KV_SENTIMENT_BUCKET),
                                                    ("execution", KV_PROTECTIONS_BUCKET)])
async def test_a_full_bucket_of_ones_own_locks_no_one_else_out(tmp_path, thief_user, bucket):
    """A full KV bucket (discard new) refuses every write, the update of a key it holds too.
    The sentiment agent may name any symbol, execution any entry id: in the shared bucket a stolen
    credential of either could fill it and lock risk out of storing a kill switch release, the
    loss latch or its lease. Their keys are buckets of their own: filling one leaves everyone
    else's writes alone. (A server of this test alone: the session's must not be left full.)"""
    server = NatsServer(store_dir=tmp_path, credentials=load_or_create_credentials(tmp_path),
                        log_path=tmp_path / "nats-server.log")
    with server:
        server.provision()

        async def login(user: str) -> nats.NATS:
            return await nats.connect(server.url, user=user, password=server.credentials[user],
                                      inbox_prefix=f"_INBOX.{user}", allow_reconnect=False)

        thief, risk = await login(thief_user), await login("risk")
        try:
            stolen = await thief.jetstream(timeout=5).key_value(bucket)
            filled, refusal = 0, ""
            while not refusal and filled < 5_000:
                try:
                    await stolen.put(f"FILL{filled}-USD", b"x" * 60_000)
                    filled += 1
                except nats.js.errors.APIError as e:
                    refusal = str(e)
            assert "maximum bytes exceeded" in refusal, (filled, refusal)
            own = await risk.jetstream(timeout=5).key_value(KV_BUCKET)
            key = f"risk.killswitch{uid()}"
            for engaged in ("true", "false"):  # a new key, then its update: both stored
                state = f'{{"engaged":{engaged},"actor":"operator","reason":"test","changed_ts":1}}'.encode()
                await own.put(key, state)
            assert (await own.get(key)).value == state
        finally:
            await thief.close()
            await risk.close()


# ---- the launcher gives each service its own user, and only that -------------------------

STAND_IN = r"""
import asyncio, os, signal
import nats

async def main():
    leaked = [k for k in os.environ if k.startswith("MOONBUS_PW_")]
    errors = []
    async def on_error(e):
        errors.append(str(e))
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"],
                            password=os.environ["NATS_PASSWORD"], error_cb=on_error)
    await nc.publish("md.tick.sim.STANDIN", b"hello")
    await nc.publish("orders.submit.trading.STANDIN", b"not mine to send")
    await nc.flush()
    await asyncio.sleep(0.2)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("stand-in up as", os.environ["NATS_USER"], "leaked:", leaked, "errors:", errors, flush=True)
    await stop.wait()
    await nc.close()
    print("stand-in stopped cleanly", flush=True)

asyncio.run(main())
"""


def test_launcher_runs_each_service_as_its_own_user(tmp_path):
    from services.devstack.launcher import ServiceSpec, System

    specs = [
        ServiceSpec("market-data", ("-c", STAND_IN), "python"),
        ServiceSpec("swarm-agent", ("-c", "import sys; print('giving up'); sys.exit(3)"), "python"),
    ]
    system = System().start(port=free_port(), moon_dir=tmp_path, services=specs, out=None)
    try:
        line = system.wait_for_output("market-data", r"stand-in up as", timeout=30)
        assert "up as market-data leaked: []" in line
        assert 'publish to "orders.submit.trading.standin"' in line.lower()  # denied: not market-data's
        assert "md.tick" not in line.lower()  # allowed: no error about it
        system.wait_for_output("swarm-agent", r"exited unexpectedly: exit code 3", timeout=30)
        assert system.running("market-data")  # one service dying does not stop the others
        env_file = tmp_path / "nats.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert "NATS_USER=operator" in env_file.read_text()
    except BaseException:
        print(system.tail())
        raise
    finally:
        system.stop()
    assert "stand-in stopped cleanly" in system.output("market-data")
    assert system.returncode("market-data") == 0
    assert not system.nats.running
