"""A 3-node NATS cluster (README "A NATS cluster"): the cluster forms from the moonbus
config, the provisioning puts the streams at `[jetstream] replicas`, routes have their own
password, clients take every seed; and, under a steady order flow, the node that leads
ORDERS killed, then a second (no quorum), then both back: no order lost or doubled,
positions equal to the fills (bench/cluster_failover.py; its times are measured by
`make bench BENCH=cluster_failover`, not asserted here).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from bench.cluster_failover import cluster_chaos, run_failover
from services.common import config
from services.common.bus import flush, server_urls
from services.common.streams import ProvisionError, _info, jetstream_spec, wanted_state
from services.devstack.launcher import SERVICES
from services.devstack.natsserver import (
    EPHEMERAL_RANGE,
    ROUTE_PASSWORD_FILE,
    REPO_ROOT,
    NatsCluster,
    NatsServerError,
    Routes,
    free_port,
    load_or_create_credentials,
)
from tests.conftest import connect_when_up
from tests.dockerstack import ComposeProject, docker, fresh_clone, moonbus_images  # noqa: F401

STREAMS = [s["name"] for s in jetstream_spec()["streams"]]


# ---- the settings --------------------------------------------------------------------------


def test_replicas_are_r1_unless_the_deployment_says() -> None:
    assert {s["num_replicas"] for s in wanted_state(None)["streams"]} == {1}
    three = wanted_state({"jetstream": {"replicas": 3, "ORDERS": {"max_bytes": "8MiB"}}})["streams"]
    assert {s["name"]: s["num_replicas"] for s in three} == dict.fromkeys(STREAMS, 3)
    assert next(s for s in three if s["name"] == "ORDERS")["max_bytes"] == 8 << 20
    table = config.load(REPO_ROOT / "moonbus.toml", environ={"MOONBUS__JETSTREAM__REPLICAS": "3"})
    assert {s["num_replicas"] for s in wanted_state(table)["streams"]} == {3}
    for bad in [0, 6, -1, "3", 2.5, True]:
        with pytest.raises(ProvisionError, match=r"\[jetstream\] replicas: "):
            wanted_state({"jetstream": {"replicas": bad}})


def test_nats_url_is_one_server_or_the_seeds() -> None:
    assert server_urls("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert server_urls("nats://a:1, nats://b:2,,tls://c:3") == ["nats://a:1", "nats://b:2", "tls://c:3"]
    with pytest.raises(ValueError, match="names no server"):
        server_urls(" , ")


# ---- the cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    moon_dir = tmp_path_factory.mktemp("cluster-moon")
    with NatsCluster(moon_dir=moon_dir, credentials=load_or_create_credentials(moon_dir)) as cluster:
        cluster.provision({"jetstream": {"replicas": 3}})
        yield cluster


async def _connect(cluster: NatsCluster, user: str, url: str | None = None) -> nats.NATS:
    env = cluster.env_for(user)
    return await nats.connect(server_urls(url or env["NATS_URL"]), user=user, password=env["NATS_PASSWORD"],
                              inbox_prefix=f"_INBOX.{user}", allow_reconnect=False, connect_timeout=2)


def test_a_clusters_ports_are_distinct_and_below_the_ephemeral_range(tmp_path: Path) -> None:
    """No outgoing connection can take a node's port before the node binds it (see
    natsserver.cluster_port): the nodes dial each other's route ports while they start."""
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    clusters = [NatsCluster(moon_dir=tmp_path / str(i), credentials=load_or_create_credentials(tmp_path / str(i)))
                for i in range(2)]
    ports = [int(url.rsplit(":", 1)[1]) for c in clusters for url in c.url.split(",")]
    ports += [int(n.routes.listen.rsplit(":", 1)[1]) for c in clusters for n in c.nodes.values()]
    assert len(ports) == len(set(ports)) == 12, ports
    assert all(p < low for p in ports), (low, ports)


async def test_the_nodes_form_one_jetstream_cluster_with_r3_streams(cluster: NatsCluster) -> None:
    jsz = cluster.jsz()
    assert jsz["meta_cluster"]["cluster_size"] == 3, jsz["meta_cluster"]
    assert cluster.env_for("risk")["NATS_URL"] == ",".join(n.url for n in cluster.nodes.values())
    nc = await _connect(cluster, "operator")
    try:
        for name in STREAMS:
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)).data)
            assert info["config"]["num_replicas"] == 3, name
            peers = [info["cluster"]["leader"], *(r["name"] for r in info["cluster"]["replicas"])]
            assert sorted(peers) == sorted(cluster.nodes), (name, info["cluster"])
        consumer = json.loads((await nc.request("$JS.API.CONSUMER.INFO.ORDERS.execution", b"", timeout=5)).data)
        assert len(consumer["cluster"]["replicas"]) == 2, "the durable follows its stream: R3"
    finally:
        await nc.close()
    # Provisioned once more with the same settings: nothing to change; without them (R1)
    # the provisioning would scale every stream down, and says so.
    assert cluster.provision({"jetstream": {"replicas": 3}}) == {}


async def test_provisioning_scales_r1_streams_up_in_place(tmp_path: Path) -> None:
    """A cluster provisioned at R1 (no setting), with a message stored, then with replicas 3:
    every stream is updated to R3 and keeps what it stored."""
    with NatsCluster(moon_dir=tmp_path, credentials=load_or_create_credentials(tmp_path)) as cluster:
        cluster.provision(None)
        nc = await _connect(cluster, "operator")
        try:
            # Generous timeouts: on a loaded machine a fresh cluster's stream leaders (and, after
            # the update, their new replicas) can take seconds to answer; CI saw a 5 s one expire.
            ack = await nc.jetstream(timeout=15).publish("orders.submit.operator.BTC-USD", b"{}",
                                                         headers={"Nats-Msg-Id": "r1-order"})
            changes = cluster.provision({"jetstream": {"replicas": 3}})
            assert changes == {name: ["num_replicas: 1 -> 3"] for name in STREAMS}, changes
            for name in STREAMS:
                info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=15)).data)
                assert info["config"]["num_replicas"] == 3, name
            stored = json.loads((await nc.request("$JS.API.STREAM.INFO.ORDERS", b"", timeout=15)).data)
            assert stored["state"]["last_seq"] == ack.seq and stored["state"]["messages"] == 1
        finally:
            await nc.close()


async def test_an_unanswered_info_is_asked_again_until_its_timeout(plain_nats: str) -> None:
    """A stream or consumer without a leader for the moment drops an INFO request (seen after
    an R1 -> R3 update): provisioning asks again instead of waiting out one long timeout. A
    stand-in JetStream API on a plain nats-server leaves the first two requests unanswered."""
    nc = await connect_when_up(plain_nats)
    asked: list[str] = []

    async def stand_in(msg: Any) -> None:
        asked.append(msg.subject)
        if len(asked) > 2 and ".EXEC." in msg.subject:
            await msg.respond(b'{"config": {"name": "EXEC"}}')

    await nc.subscribe("$JS.API.>", cb=stand_in)
    info = await _info(nc, "$JS.API.CONSUMER.INFO.EXEC.risk", timeout=5, attempt=0.2)
    assert info == {"config": {"name": "EXEC"}}
    assert asked == ["$JS.API.CONSUMER.INFO.EXEC.risk"] * 3
    # Never answered: asked again each attempt, and the timeout still ends it.
    asked.clear()
    with pytest.raises(nats.errors.TimeoutError):
        await _info(nc, "$JS.API.CONSUMER.INFO.ORDERS.execution", timeout=1, attempt=0.3)
    assert len(asked) >= 3 and set(asked) == {"$JS.API.CONSUMER.INFO.ORDERS.execution"}, asked
    await nc.close()


async def test_a_client_reaches_the_cluster_through_any_seed(cluster: NatsCluster) -> None:
    """A message crosses the routes: published on one node, received on another; and the
    seeds list gets a client in while its first seed is down."""
    first, second = list(cluster.nodes.values())[:2]
    sub, pub = await _connect(cluster, "operator", first.url), await _connect(cluster, "market-data", second.url)
    try:
        got = await sub.subscribe("md.tick.sim.BTC-USD")
        await flush(sub)
        await asyncio.sleep(0.2)  # the interest travels over the route
        await pub.publish("md.tick.sim.BTC-USD", b"{}")
        assert (await got.next_msg(timeout=2)).data == b"{}"
    finally:
        await sub.close()
        await pub.close()
    dead = f"nats://127.0.0.1:{free_port()}"
    nc = await _connect(cluster, "operator", f"{dead},{second.url}")
    try:
        assert nc.connected_url is not None and nc.connected_url.port == second.port
    finally:
        await nc.close()


async def test_routes_have_their_own_password(cluster: NatsCluster, tmp_path: Path) -> None:
    """The route password is in no client's hands and opens no client connection; a node
    with a wrong one is refused by the others."""
    moon_dir = next(iter(cluster.nodes.values())).store_dir.parent
    route_password = (moon_dir / ROUTE_PASSWORD_FILE).read_text().strip()
    assert route_password not in load_or_create_credentials(moon_dir).values()
    assert (moon_dir / ROUTE_PASSWORD_FILE).stat().st_mode & 0o077 == 0
    node = next(iter(cluster.nodes.values()))
    with pytest.raises(Exception):  # noqa: B017 (nats-py's error depends on its retry path)
        await nats.connect(node.url, user="route", password=route_password, allow_reconnect=False,
                           connect_timeout=2)
    # A fourth node with the peers' addresses but another password: never routed.
    rogue_dir = tmp_path / "rogue"
    rogue = NatsCluster(moon_dir=rogue_dir, credentials=load_or_create_credentials(rogue_dir), size=1)
    only, member = rogue.nodes["nats-1"], next(iter(cluster.nodes.values()))
    assert only.routes is not None and member.routes is not None
    only.routes = Routes(only.routes.listen, member.routes.peers, only.routes.password)
    refused_route = re.compile(r"rid:\d+ - authentication error", re.IGNORECASE)  # rid: a route (cid: a client)
    assert not any(refused_route.search(line) for line in member.lines)
    only.start()
    try:
        for _ in range(50):
            if any(refused_route.search(line) for line in member.lines):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the cluster did not refuse a route with a wrong password:\n" + member.output())
        assert cluster.jsz()["meta_cluster"]["cluster_size"] == 3
    finally:
        only.stop()


def test_a_cluster_port_taken_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = NatsCluster(moon_dir=tmp_path, credentials=load_or_create_credentials(tmp_path), size=2,
                              cluster_ports=[port, free_port()])
        with pytest.raises(NatsServerError):
            cluster.start(timeout=10)
    assert not any(node.running for node in cluster.nodes.values())


# ---- failover under a steady order flow ----------------------------------------------------


@pytest.mark.e2e
async def test_failover_loses_and_doubles_no_order(tmp_path: Path) -> None:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    chaos = cluster_chaos(tmp_path, rate=4.0)
    try:
        await chaos.start(timeout=60)
        await asyncio.sleep(3.0)  # a steady flow first
        result = await asyncio.wait_for(run_failover(chaos, hold_s=4.0, timeout=60), 240)
    finally:
        await chaos.stop()
    out = result.outcome
    kill1, kill2, back = result.steps
    assert kill1.leader_after not in (None, kill1.node), "another node leads ORDERS after its leader died"
    assert kill2.node not in (kill1.node, None)
    assert not result.stored_without_quorum, f"ORDERS stored without a quorum: {result.stored_without_quorum}"
    assert result.refused_without_quorum, "no publish was refused (or timed out) while 1 node of 3 ran"
    assert out.recovery_s is not None, "no fill after the nodes came back"
    assert not out.lost and not out.doubled and out.positions_match, out.failures
    assert not out.failures, f"{out.failures}\n{chaos.system.tail(20)}"
    assert out.orders_stored > 0


# ---- docker-compose.cluster.yml ------------------------------------------------------------

# The trading agent orders on almost every 1 s bar (as in bench/chaos.py), so orders flow
# within seconds of the start.
FAST_AGENT = """
services:
  trading-agent:
    environment:
      MOONBUS__TRADING_AGENT__STRATEGY: "momentum"
      MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK: "2"
      MOONBUS__TRADING_AGENT__MOMENTUM_THRESHOLD_PCT: "0.0001"
"""


def _streams(stack: ComposeProject, node: str) -> dict[str, dict]:
    """/jsz of `node` (read inside its container, where monitoring listens): name -> detail."""
    code, out = stack.containers(node)[0].exec_run(
        ["python3", "/app/healthcheck.py", "--print", "http://127.0.0.1:8222/jsz?streams=true&config=true"])
    assert code == 0, out
    return {s["name"]: s for a in json.loads(out).get("account_details", []) for s in a.get("stream_detail", [])}


def _until(condition: Callable[[], object], timeout: float, what: str, stack: ComposeProject) -> object:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:.0f}s) waiting for {what}\n{stack.logs()}")
        time.sleep(1)
    return found


@pytest.mark.e2e
def test_compose_cluster_trades_through_a_lost_node(moonbus_images, tmp_path: Path) -> None:
    """The override on a fresh clone: three nodes, streams at R3, the money path trading; the
    node `nats` killed, the orders and their reports go on; started again, it catches up."""
    clone = fresh_clone(tmp_path)
    (clone / "fast-agent.yml").write_text(FAST_AGENT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONBUS_")}
    env.update(MOONBUS_NATS_PUBLISH="127.0.0.1:", MOONBUS_GATEWAY_PUBLISH="127.0.0.1:", MOONBUS_BCRYPT_COST="4")
    stack = ComposeProject(clone, [clone / "docker-compose.yml", clone / "docker-compose.cluster.yml",
                                   clone / "fast-agent.yml"], env)
    try:
        stack.compose("up", "-d", "market-data", "risk", "execution", "trading-agent")
        streams = _streams(stack, "nats-2")
        assert {name: s["config"]["num_replicas"] for name, s in streams.items()} == dict.fromkeys(STREAMS, 3)
        _until(lambda: _streams(stack, "nats-2")["EXEC"]["state"]["messages"] >= 5, 120, "5 reports in EXEC", stack)
        stack.compose("kill", "nats")
        before = _streams(stack, "nats-2")["EXEC"]["state"]["messages"]
        _until(lambda: _streams(stack, "nats-3")["EXEC"]["state"]["messages"] >= before + 5, 90,
               "5 more reports with node nats down", stack)
        stack.compose("up", "-d", "nats")
        _until(lambda: _streams(stack, "nats")["ORDERS"]["state"]["messages"]
               >= _streams(stack, "nats-2")["ORDERS"]["state"]["messages"] > 0 and
               stack.health(stack.containers("nats")[0]) == "running healthy", 90, "nats caught up", stack)
    finally:
        stack.down()
