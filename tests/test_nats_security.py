"""The NATS server is secure by default and every service can do its job.

Runs against the real nats-server with proto/nats/moonbus.conf (conftest.nats_server).
Each "allowed" case checks that a message really arrives; each "denied" case checks
that the server reports a permission violation AND that nothing arrives. JetStream
cases use nats-py directly and, for the Rust services, the exact API subjects that
async-nats 0.51 sends (CONSUMER.CREATE.<stream>.<name>.<filter>, MSG.NEXT, acks).
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
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.natsserver import (
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
    MSG_ID_HEADER,
    ORDERS,
    STREAMS,
    ensure_kv,
    ensure_streams,
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
    """ORDERS and EXEC exist (created as `execution`, which may create both)."""
    nc = await connect("execution")
    return await ensure_streams(nc.jetstream(timeout=5))


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
    ("market-data", "errors.market-data", True),
    ("market-data", "errors.risk", False),
    ("market-data", "risk.verdict.BTC-USD", False),
    ("market-data", "orders.submit.BTC-USD", False),
    ("risk", "risk.verdict.BTC-USD", True),
    ("risk", "risk.account", True),
    ("risk", "risk.events", True),
    ("risk", "md.tick.sim.BTC-USD", False),
    ("risk", "exec.report.BTC-USD", False),
    ("risk", "orders.submit.BTC-USD", True),  # kill switch flatten
    ("risk", "orders.cancel.BTC-USD", False),
    ("execution", "exec.report.BTC-USD", True),
    ("execution", "risk.api.check", True),
    ("execution", "risk.api.killswitch", False),
    ("execution", "orders.submit.BTC-USD", False),
    ("execution", "md.tick.sim.BTC-USD", False),
    ("trading-agent", "orders.submit.BTC-USD", True),
    ("trading-agent", "orders.cancel.BTC-USD", True),
    ("trading-agent", "agent.signal.trading.BTC-USD", True),
    ("trading-agent", "md.api.price", True),
    ("trading-agent", "risk.api.positions", True),
    ("trading-agent", "risk.api.killswitch", False),
    ("trading-agent", "agent.signal.risk.BTC-USD", False),
    ("trading-agent", "md.tick.sim.BTC-USD", False),
    ("trading-agent", "exec.report.BTC-USD", False),
    ("risk-agent", "agent.signal.risk.BTC-USD", True),
    ("risk-agent", "risk.api.killswitch", True),
    ("risk-agent", "orders.cancel.BTC-USD", True),
    ("risk-agent", "risk.verdict.BTC-USD", False),
    ("risk-agent", "agent.signal.trading.BTC-USD", False),
    ("sentiment-agent", "agent.sentiment.BTC-USD", True),
    ("sentiment-agent", "agent.swarm.BTC-USD", False),
    ("sentiment-agent", "orders.submit.BTC-USD", False),
    ("swarm-agent", "agent.swarm.BTC-USD", True),
    ("swarm-agent", "agent.signal.swarm.BTC-USD", True),
    ("swarm-agent", "md.api.history", True),
    ("swarm-agent", "agent.sentiment.BTC-USD", False),
    ("swarm-agent", "orders.submit.BTC-USD", False),
    ("gateway", "orders.submit.BTC-USD", True),
    ("gateway", "risk.api.killswitch", True),
    ("gateway", "agent.api.swarm.ask", True),
    ("gateway", "$SRV.PING", True),
    ("gateway", "md.tick.sim.BTC-USD", False),
    ("gateway", "risk.verdict.BTC-USD", False),
    ("gateway", "exec.report.BTC-USD", False),
    ("gateway", "agent.signal.gateway.BTC-USD", False),
    ("operator", "md.api.price", True),
    ("operator", "risk.api.killswitch", True),
    ("operator", "exec.api.version", True),
    ("operator", "agent.api.swarm.ask", True),
    ("operator", "$SRV.PING", True),
    ("operator", "orders.submit.BTC-USD", True),
    ("operator", "orders.cancel.BTC-USD", True),
    ("operator", "md.tick.sim.X", False),
    ("operator", "md.alert.X", False),
    ("operator", "risk.verdict.X", False),
    ("operator", "risk.account", False),
    ("operator", "exec.report.X", False),
    ("operator", "agent.sentiment.X", False),
    ("operator", "agent.signal.operator.X", False),
    ("operator", "_INBOX.someone-elses-reply", False),
]


@pytest.mark.parametrize(("user", "subject", "allowed"), PUBLISH_CASES, ids=lambda v: str(v))
async def test_publish_permissions(connect, user, subject, allowed):
    watcher = await connect("operator")  # operator may subscribe to everything
    sub = await watcher.subscribe(subject)
    await watcher.flush()

    nc = await connect(user)
    payload = f"probe-{uid()}".encode()
    await nc.publish(subject, payload)
    await nc.flush()  # the server has processed the PUB once our PING is answered

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
    await operator.flush()
    md = await connect("market-data")
    await md.publish("md.tick.sim.BTC-USD", b'{"price":"100.5"}')
    msg = await sub.next_msg(timeout=5)
    assert msg.subject == "md.tick.sim.BTC-USD"
    assert msg.data == b'{"price":"100.5"}'


@pytest.mark.parametrize("subject", ["md.tick.sim.X", "risk.verdict.X", "exec.report.X"])
async def test_operator_cannot_impersonate_services(connect, subject):
    listener = await connect("gateway")  # gateway subscribes md.>, risk.>, exec.>
    sub = await listener.subscribe(subject)
    await listener.flush()
    operator = await connect("operator")
    await operator.publish(subject, b"forged")
    await operator.flush()
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
    ("risk", "exec.report.>", True),
    ("risk", "orders.submit.>", False),
    ("execution", "md.book.>", True),
    ("execution", "orders.submit.>", False),  # orders come from the stream, not core
    ("trading-agent", "md.tick.>", True),
    ("trading-agent", "md.api.price", False),
    ("trading-agent", "risk.api.check", False),
    ("trading-agent", "orders.submit.>", False),
    ("risk-agent", "risk.verdict.>", True),
    ("risk-agent", "risk.api.check", False),
    ("sentiment-agent", "md.alert.>", True),
    ("sentiment-agent", "md.tick.>", False),
    ("swarm-agent", "agent.api.swarm.ask", True),
    ("swarm-agent", "orders.>", False),
    ("gateway", "orders.>", True),
    ("gateway", "errors.>", True),
    ("gateway", "exec.api.version", False),
    ("gateway", "risk.api.check", False),
    ("gateway", ">", False),
    ("operator", ">", True),
]


@pytest.mark.parametrize(("user", "subject", "allowed"), SUBSCRIBE_CASES, ids=lambda v: str(v))
async def test_subscribe_permissions(connect, user, subject, allowed):
    nc = await connect(user)
    await nc.subscribe(subject)
    await nc.flush()
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
    await agent.flush()
    execution = await connect("execution")
    await execution.publish("risk.api.check", b"{}", reply="_INBOX.x")
    risk = await connect("risk")
    await risk.publish("risk.verdict.BTC-USD", b"verdict")
    await execution.flush()
    await risk.flush()
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
    await md.flush()

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
    await operator.flush()
    agent = await connect("trading-agent")
    with pytest.raises((NatsTimeoutError, nats.errors.NoRespondersError)):
        fut = asyncio.ensure_future(agent.request("md.api.price", b"{}", timeout=1))
        request = await sub.next_msg(timeout=5)
        await request.respond(b'{"price":"0.01"}')  # forged answer
        await fut
    await operator.wait_for_permission_error("_INBOX")


# ---- JetStream: streams ----------------------------------------------------------------


async def test_ensure_streams_is_idempotent_and_repairs_drift(connect):
    nc = await connect("execution")
    js = nc.jetstream(timeout=5)
    first = await ensure_streams(js)
    second = await ensure_streams(js)
    assert set(first) == set(second) == {ORDERS, EXEC}
    for name in (ORDERS, EXEC):
        assert first[name].created == second[name].created
        cfg = second[name].config
        assert cfg.subjects == STREAMS[name].subjects
        assert cfg.storage == "file"
        assert cfg.retention == "limits"
        assert cfg.duplicate_window == pytest.approx(600)
    assert second[ORDERS].config.max_age == pytest.approx(7 * 24 * 3600)
    assert second[EXEC].config.max_age == pytest.approx(30 * 24 * 3600)
    assert second[EXEC].config.subjects == ["exec.report.>"]

    # Someone changed a managed setting: ensure_streams puts it back (UPDATE).
    drifted = second[ORDERS].config.evolve(max_age=3600.0)
    await js.update_stream(drifted)
    repaired = await ensure_streams(js, [ORDERS])
    assert repaired[ORDERS].config.max_age == pytest.approx(7 * 24 * 3600)
    assert repaired[ORDERS].created == first[ORDERS].created


@pytest.mark.parametrize(
    ("orders_creator", "exec_creator"),
    [("trading-agent", "risk"), ("risk-agent", "execution"), ("execution", "risk"), ("execution", "execution")],
)
async def test_streams_are_created_by_whoever_starts_first(tmp_path, orders_creator, exec_creator):
    """On an empty bus the first service up creates what it needs; later ones reuse it.
    (execution creates both streams at start, risk only EXEC, the order publishers only ORDERS.)"""
    creds = load_or_create_credentials(tmp_path)
    async with NatsServer(store_dir=tmp_path, credentials=creds) as server:
        async def js_as(user):
            nc = await nats.connect(server.url, user=user, password=creds[user], allow_reconnect=False)
            return nc, nc.jetstream(timeout=5)

        nc1, js1 = await js_as(orders_creator)
        created = (await ensure_streams(js1, [ORDERS]))[ORDERS]
        nc2, js2 = await js_as(exec_creator)
        await ensure_streams(js2, [EXEC])
        nc3, js3 = await js_as("execution")
        both = await ensure_streams(js3)
        assert both[ORDERS].created == created.created
        nc4, js4 = await js_as("sentiment-agent")
        kv = await ensure_kv(js4)
        await kv.put("sentiment.BTC-USD", b"0.1")
        for nc in (nc1, nc2, nc3, nc4):
            await nc.close()


async def test_order_publishers_may_ensure_orders_but_not_exec(connect):
    nc = await connect("trading-agent")
    js = nc.jetstream(timeout=1)
    infos = await ensure_streams(js, [ORDERS])
    assert infos[ORDERS].config.name == ORDERS
    with pytest.raises(NatsTimeoutError):
        await ensure_streams(js, [EXEC])
    await nc.wait_for_permission_error(f"$JS.API.STREAM.INFO.{EXEC}")


async def test_exec_api_requests_are_not_captured_by_exec_stream(connect, streams):
    """A request to exec.api.* must be answered by execution, not PubAck'ed by EXEC."""
    execution = await connect("execution")

    async def version(msg):
        await msg.respond(b'{"version":"test"}')

    await execution.subscribe("exec.api.version", cb=version)
    await execution.flush()
    operator = await connect("operator")
    for _ in range(5):
        reply = await operator.request("exec.api.version", b"{}", timeout=5)
        assert reply.data == b'{"version":"test"}'


# ---- JetStream: orders ----------------------------------------------------------------


async def test_trading_agent_gets_puback_and_dedupe_works(connect, streams):
    nc = await connect("trading-agent")
    js = nc.jetstream(timeout=5)
    coid = f"co-{uid()}"
    ack = await js.publish("orders.submit.BTC-USD", b'{"order":1}', headers={MSG_ID_HEADER: coid})
    assert ack.stream == ORDERS
    assert not ack.duplicate
    again = await js.publish("orders.submit.BTC-USD", b'{"order":1}', headers={MSG_ID_HEADER: coid})
    assert again.stream == ORDERS
    assert again.duplicate is True
    assert again.seq == ack.seq
    other = await js.publish("orders.submit.BTC-USD", b'{"order":2}', headers={MSG_ID_HEADER: f"co-{uid()}"})
    assert not other.duplicate and other.seq > ack.seq


async def test_execution_durable_pull_consumer_fetch_and_ack(connect, streams):
    agent = await connect("trading-agent")
    coid = f"co-{uid()}"
    subject = f"orders.submit.EXEC{uid()}"  # this test's own symbol: other tests fill ORDERS too
    await agent.jetstream().publish(subject, coid.encode(), headers={MSG_ID_HEADER: coid})

    nc = await connect("execution")
    js = nc.jetstream(timeout=5)
    durable = f"execution-{uid()}"
    # nats-py: CONSUMER.INFO, then CONSUMER.CREATE.ORDERS.<durable>.<filter>
    psub = await js.pull_subscribe(
        subject, durable=durable, stream=ORDERS,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
    )
    msgs = await psub.fetch(batch=100, timeout=5)
    ours = [m for m in msgs if m.data == coid.encode()]
    assert len(ours) == 1
    for m in msgs:
        await m.in_progress()  # a second reply to the same message: needs $JS.ACK.ORDERS.>,
        await m.ack_sync()     # allow_responses alone allows one; ack_sync waits for the server
    assert not nc.permission_errors(), nc.permission_errors()
    info = await js.consumer_info(ORDERS, durable)
    assert info.num_ack_pending == 0
    assert info.config.durable_name == durable
    assert info.ack_floor.stream_seq >= ours[0].metadata.sequence.stream


async def test_execution_consumer_as_async_nats_does_it(connect, streams):
    """The raw API subjects of async-nats 0.51: get_or_create_consumer, fetch, ack."""
    agent = await connect("risk-agent")
    coid = f"co-{uid()}"
    await agent.jetstream().publish("orders.cancel.SOL-USDC", coid.encode(), headers={MSG_ID_HEADER: coid})

    nc = await connect("execution")
    name = f"exec-rs-{uid()}"
    info = await js_request(nc, f"$JS.API.CONSUMER.INFO.{ORDERS}.{name}")
    assert info["error"]["code"] == 404
    created = await js_request(
        nc,
        f"$JS.API.CONSUMER.CREATE.{ORDERS}.{name}.orders.>",
        {
            "stream_name": ORDERS,
            "config": {"durable_name": name, "name": name, "ack_policy": "explicit",
                       "deliver_policy": "all", "filter_subject": "orders.>"},
            "action": "create",
        },
    )
    assert "error" not in created, created
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.{name}", json.dumps({"batch": 500, "no_wait": True}).encode(), reply=inbox)
    found = None
    while True:
        msg = await sub.next_msg(timeout=5)
        if not msg.reply:  # 404 "no messages" status: end of the batch
            break
        assert msg.reply.startswith(f"$JS.ACK.{ORDERS}.{name}.")
        await nc.publish(msg.reply, b"+WPI")  # in progress, then a double ack (async-nats AckKind / double_ack)
        await nc.request(msg.reply, b"+ACK", timeout=5)
        if msg.data == coid.encode():
            found = msg
    assert found is not None
    assert not nc.permission_errors(), nc.permission_errors()
    info = await js_request(nc, f"$JS.API.CONSUMER.INFO.{ORDERS}.{name}")
    assert info["num_ack_pending"] == 0


async def test_gateway_reads_orders_but_cannot_take_or_ack_them(connect, streams):
    agent = await connect("trading-agent")
    coid = f"co-{uid()}"
    await agent.jetstream().publish("orders.submit.ADA-USD", coid.encode(), headers={MSG_ID_HEADER: coid})

    gw = await connect("gateway")
    js = gw.jetstream(timeout=5)
    sub = await js.subscribe("orders.submit.ADA-USD", ordered_consumer=True)  # unnamed ephemeral
    msg = await sub.next_msg(timeout=5)
    assert msg.subject == "orders.submit.ADA-USD"
    assert not gw.permission_errors(), gw.permission_errors()

    # No durable consumer and no fetch on ORDERS, no acks, no stream changes.
    await assert_denied_request(
        gw, f"$JS.API.CONSUMER.CREATE.{ORDERS}.gw.orders.>",
        {"stream_name": ORDERS, "config": {"durable_name": "gw", "name": "gw"}},
    )
    await assert_denied_request(gw, f"$JS.API.CONSUMER.DURABLE.CREATE.{ORDERS}.gw")
    await assert_denied_request(gw, f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution", {"batch": 1})
    await assert_denied_request(gw, f"$JS.API.STREAM.UPDATE.{ORDERS}")
    await gw.publish(f"$JS.ACK.{ORDERS}.execution.1.1.1.1.0", b"+ACK")
    await gw.wait_for_permission_error(f"$JS.ACK.{ORDERS}")

    # The unnamed CONSUMER.CREATE.ORDERS is allowed, but one that smuggles a durable
    # name in is refused by the server itself: the gateway only ever gets ephemerals.
    answer = await js_request(
        gw, f"$JS.API.CONSUMER.CREATE.{ORDERS}",
        {"stream_name": ORDERS, "config": {"durable_name": f"sneaky-{uid()}", "deliver_subject": gw.new_inbox()}},
    )
    assert answer["error"]["code"] == 400, answer


@pytest.mark.parametrize("reader", ["gateway", "operator"])  # with and without allow_responses
async def test_ordered_consumer_flow_control_replies_are_allowed(connect, streams, reader):
    """A backlog big enough for the server to ask for flow control: the reader must be
    allowed to answer on $JS.FC.<stream>.>, or delivery stalls."""
    execution = await connect("execution")
    subject = f"exec.report.FLOW{uid()}"
    count, payload = 3000, b"x" * 4000
    for _ in range(count):
        await execution.publish(subject, payload)  # core publish: stored by EXEC, no acks to wait for
    await execution.flush()

    gw = await connect(reader)
    fc_replies: list[str] = []
    publish = gw.publish

    async def spy(subj, *args, **kwargs):
        if subj.startswith("$JS.FC."):
            fc_replies.append(subj)
        return await publish(subj, *args, **kwargs)

    gw.publish = spy
    sub = await gw.jetstream(timeout=5).subscribe(subject, ordered_consumer=True, stream=EXEC)
    for _ in range(count):
        await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    assert fc_replies and all(r.startswith(f"$JS.FC.{EXEC}.") for r in fc_replies)
    assert not gw.permission_errors(), gw.permission_errors()


async def test_operator_reads_jetstream_but_never_changes_it(connect, streams):
    op = await connect("operator")
    js = op.jetstream(timeout=5)
    info = await js.stream_info(ORDERS)
    assert info.config.name == ORDERS
    names = await js.streams_info()
    assert {ORDERS, EXEC} <= {s.config.name for s in names}
    sub = await js.subscribe("exec.report.>", ordered_consumer=True, stream=EXEC)
    await sub.unsubscribe()
    await assert_denied_request(op, f"$JS.API.STREAM.CREATE.NEWSTREAM", {"name": "NEWSTREAM", "subjects": ["md.>"]})
    await assert_denied_request(op, f"$JS.API.STREAM.UPDATE.{ORDERS}")
    await assert_denied_request(op, f"$JS.API.CONSUMER.DURABLE.CREATE.{ORDERS}.op")
    await assert_denied_request(op, f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution", {"batch": 1})
    await assert_denied_request(op, f"$JS.API.CONSUMER.DELETE.{ORDERS}.execution")


# ---- JetStream: execution reports ----------------------------------------------------------


async def test_risk_reads_exec_with_ordered_and_durable_consumers(connect, streams):
    execution = await connect("execution")
    report = f"report-{uid()}".encode()
    subject = f"exec.report.RISK{uid()}"  # this test's own symbol: other tests fill EXEC too
    ack = await execution.jetstream().publish(subject, report)
    assert ack.stream == EXEC

    risk = await connect("risk")
    js = risk.jetstream(timeout=5)
    # nats-py ordered push consumer; stream found by subject (STREAM.NAMES)
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    seen = []
    while report not in seen:
        seen.append((await sub.next_msg(timeout=5)).data)
    await sub.unsubscribe()

    # async-nats ordered (pull) consumer: unnamed CONSUMER.CREATE.EXEC, then MSG.NEXT
    created = await js_request(
        risk, f"$JS.API.CONSUMER.CREATE.{EXEC}",
        {"stream_name": EXEC, "config": {"ack_policy": "none", "deliver_policy": "all",
                                         "filter_subject": subject, "inactive_threshold": 5_000_000_000,
                                         "mem_storage": True, "num_replicas": 1}},
    )
    assert "error" not in created, created
    inbox = risk.new_inbox()  # (nats-py's request() cannot receive a JetStream delivery)
    isub = await risk.subscribe(inbox)
    await risk.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{EXEC}.{created['name']}",
        json.dumps({"batch": 1, "expires": 1_000_000_000}).encode(),
        reply=inbox,
    )
    msg = await isub.next_msg(timeout=5)
    assert msg.subject == subject and msg.data == report, (msg.subject, msg.headers)

    # durable pull consumer with acks (rebuilding positions)
    psub = await js.pull_subscribe(subject, durable=f"risk-{uid()}", stream=EXEC)
    msgs = await psub.fetch(batch=100, timeout=5)
    assert report in [m.data for m in msgs]
    for m in msgs:
        await m.ack()
    await risk.flush()
    assert not risk.permission_errors(), risk.permission_errors()

    # risk may not touch ORDERS
    await assert_denied_request(risk, f"$JS.API.CONSUMER.CREATE.{ORDERS}")
    await assert_denied_request(risk, f"$JS.API.STREAM.INFO.{ORDERS}")


async def test_risk_flatten_orders_land_in_orders_deduplicated(connect, streams):
    """Kill switch flatten: risk publishes reduce-only orders into ORDERS through
    JetStream (Nats-Msg-Id = client_order_id), and nothing else of ORDERS."""
    risk = await connect("risk")
    js = risk.jetstream(timeout=5)
    coid = f"ks-{uid()}-RISKFLAT-USD"
    subject = f"orders.submit.RISKFLAT{uid()}-USD"  # this test's own symbol
    ack = await js.publish(subject, b'{"flatten":1}', headers={MSG_ID_HEADER: coid})
    assert ack.stream == ORDERS and not ack.duplicate
    again = await js.publish(subject, b'{"flatten":1}', headers={MSG_ID_HEADER: coid})
    assert again.duplicate and again.seq == ack.seq
    assert not risk.permission_errors(), risk.permission_errors()

    reader = await connect("operator")
    stored = await reader.jetstream(timeout=5).get_last_msg(ORDERS, subject)
    assert (stored.data, stored.headers[MSG_ID_HEADER]) == (b'{"flatten":1}', coid)

    # Publishing is all: no ORDERS API, no consumer, no cancels.
    await assert_denied_request(risk, f"$JS.API.STREAM.INFO.{ORDERS}")
    await assert_denied_request(risk, f"$JS.API.CONSUMER.MSG.NEXT.{ORDERS}.execution", {"batch": 1})
    with pytest.raises(NatsTimeoutError):
        await risk.jetstream(timeout=SHORT).publish("orders.cancel.BTC-USD", b"{}")
    await risk.wait_for_permission_error("orders.cancel.BTC-USD")


async def test_only_execution_publishes_exec_reports(connect, streams):
    for user in ("risk", "trading-agent", "gateway", "operator"):
        nc = await connect(user)
        with pytest.raises(NatsTimeoutError):
            await nc.jetstream(timeout=SHORT).publish("exec.report.BTC-USD", b"forged")
        await nc.wait_for_permission_error("exec.report.BTC-USD")


# ---- KV bucket ------------------------------------------------------------------------------


async def test_kv_writers_and_readers(connect):
    sentiment = await connect("sentiment-agent")
    kv = await ensure_kv(sentiment.jetstream(timeout=5))
    again = await ensure_kv(sentiment.jetstream(timeout=5))
    assert again.bucket if hasattr(again, "bucket") else True
    key = f"sentiment.BTC-USD.{uid()}"
    await kv.put(key, b'{"score":0.4}')

    trader = await connect("trading-agent")
    tkv = await trader.jetstream(timeout=5).key_value(KV_BUCKET)
    entry = await tkv.get(key)  # DIRECT.GET.KV_moonbus.$KV.moonbus.<key>
    assert entry.value == b'{"score":0.4}'
    with pytest.raises(NatsTimeoutError):
        await (await trader.jetstream(timeout=SHORT).key_value(KV_BUCKET)).put(key, b"forged")
    await trader.wait_for_permission_error(f"$KV.{KV_BUCKET}.")

    risk = await connect("risk")
    rkv = await ensure_kv(risk.jetstream(timeout=5))
    await rkv.put(f"verdict.BTC-USD.{uid()}", b"ACTIVE")
    assert (await rkv.get(key)).value == b'{"score":0.4}'

    # The shape of what rust-risk keeps there (risk.killswitch, risk.loss_latch,
    # risk.account, risk.verdict.<symbol>), readable at once by a starting agent and
    # by the gateway. Keys of this test's own (the session's agents read the real ones).
    tag = uid()
    risk_keys = {
        f"risk.killswitch{tag}": b'{"engaged":true,"actor":"alice","reason":"test","changed_ts":1}',
        f"risk.loss_latch{tag}": b"null",
        f"risk.account{tag}": b'{"state":"ACTIVE"}',
        f"risk.verdict.SEC{tag.upper()}-USD": b'{"state":"ACTIVE"}',
    }
    for k, value in risk_keys.items():
        await rkv.put(k, value)
    for reader in ("trading-agent", "risk-agent", "swarm-agent", "gateway"):
        nc = await connect(reader)
        kv_reader = await nc.jetstream(timeout=5).key_value(KV_BUCKET)
        for k, value in risk_keys.items():
            assert (await kv_reader.get(k)).value == value, (reader, k)
        assert not nc.permission_errors(), (reader, nc.permission_errors())
    forger = await connect("risk-agent")
    with pytest.raises(NatsTimeoutError):
        await (await forger.jetstream(timeout=SHORT).key_value(KV_BUCKET)).put(f"risk.killswitch{tag}", b"{}")
    await forger.wait_for_permission_error(f"$KV.{KV_BUCKET}.risk.killswitch{tag}")


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
    await nc.publish("orders.submit.STANDIN", b"not mine to send")
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
    from services.common.launcher import ServiceSpec, System

    specs = [
        ServiceSpec("market-data", ("-c", STAND_IN), "python"),
        ServiceSpec("swarm-agent", ("-c", "import sys; print('giving up'); sys.exit(3)"), "python"),
    ]
    system = System().start(port=free_port(), moon_dir=tmp_path, services=specs, out=None)
    try:
        line = system.wait_for_output("market-data", r"stand-in up as", timeout=30)
        assert "up as market-data leaked: []" in line
        assert 'publish to "orders.submit.standin"' in line.lower()  # denied: not market-data's
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
