"""Stream limits from moonbus.toml and a full ORDERS store (issue 11), against a real
nats-server of this module's own (the limits are shrunk here, so not the session's):

- `[jetstream.<STREAM>] max_bytes / max_msg_size` are validated and applied by provision;
- a full ORDERS (discard new) refuses a new order with the server's reason: Bus.publish_order
  raises OrderRefused, the trading agent says so on errors.trading-agent, the gateway answers
  503 with the reason; nothing stored before is lost, and raising the limit lets orders in again;
- provision refuses to shrink a discard-old stream (EXEC) below what it stores (the server would
  delete the oldest reports to fit).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from services.common.bus import OrderRefused
from services.common.streams import ORDERS, ProvisionError, parse_size, read_stream, wanted_state
from services.contract import subjects as S
from services.contract.models import Action, ErrorEvent, OrderRequest, Side, Signal, encode, now_ns
from services.devstack.natsserver import NatsServer, load_or_create_credentials
from services.gateway.app import create_app
from services.trading_agent.agent import Proposal
from services.trading_agent.service import submit

TOKEN = "store-limits-token"
SYMBOL = "LIM-USD"
GATEWAY_CONFIG = {"system": {"symbols": [SYMBOL]}, "gateway": {"request_timeout_s": 2.0}}


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    moon_dir = tmp_path_factory.mktemp("limits")
    server = NatsServer(store_dir=moon_dir, credentials=load_or_create_credentials(moon_dir),
                        log_path=moon_dir / "nats-server.log")
    with server:
        server.provision()
        yield server


def order(agent: str = "operator", qty: str = "0.01") -> OrderRequest:
    ts = now_ns()
    return OrderRequest(client_order_id=f"{agent[:3]}-{uuid.uuid4().hex[:16]}", agent=agent, symbol=SYMBOL,
                        side=Side.BUY, quantity=Decimal(qty), origin_ts=ts, ts=ts)


def limits(stream: str, **values: object) -> dict:
    return {"jetstream": {stream: values}}


def test_limits_come_from_config_and_nonsense_is_refused() -> None:
    spec = {s["name"]: s for s in wanted_state(limits("ORDERS", max_bytes="2GiB", max_msg_size="8KiB"))["streams"]}
    assert spec["ORDERS"]["max_bytes"] == 2 * 1024**3 and spec["ORDERS"]["max_msg_size"] == 8192
    assert spec["EXEC"]["max_bytes"] == 2147483648, "other streams keep proto/nats/jetstream.json's"
    # environment overrides arrive lower case: names match case-insensitively
    assert {s["name"]: s for s in wanted_state({"jetstream": {"exec": {"max_bytes": "500MB"}}})["streams"]}[
        "EXEC"]["max_bytes"] == 500_000_000
    assert parse_size(" 64 KiB ", "x") == 65536 and parse_size(1000, "x") == 1000
    for config, says in [
        (limits("NOPE", max_bytes=1), "no such stream"),
        (limits("ORDERS", max_age=1), "unknown setting .max_age."),
        (limits("ORDERS", max_bytes=0), "more than 0 bytes"),
        (limits("ORDERS", max_bytes=-1), "more than 0 bytes"),
        (limits("ORDERS", max_bytes="1 parsec"), "is not a size"),
        (limits("ORDERS", max_bytes=1.5), "is not a size"),
        (limits("ORDERS", max_bytes=True), "is not a size"),
        (limits("ORDERS", max_bytes="99999999TiB"), r"below 2\^63"),
        (limits("ORDERS", max_msg_size="2MiB"), "max_payload"),
        (limits("ORDERS", max_bytes=1000, max_msg_size=4096), "larger than max_bytes"),
        ({"jetstream": {"ORDERS": 5}}, "must be a table"),
    ]:
        with pytest.raises(ProvisionError, match=says):
            wanted_state(config)


async def stored_orders(nc) -> dict[int, bytes]:
    return {m.seq: m.data async for m in read_stream(nc, ORDERS, "orders.>")}


async def test_a_full_orders_store_refuses_with_the_reason_and_loses_nothing(
        nats_server: NatsServer, connect, service_bus) -> None:
    operator = await service_bus("operator")
    watcher = await connect("operator")
    errors = await watcher.collect(S.errors("trading-agent"))
    accepted: dict[int, bytes] = {}
    for _ in range(5):
        o = order()
        ack = await operator.publish_order(S.orders_submit("operator", SYMBOL), o, fresh=True)
        accepted[ack.seq] = encode(o)

    # As admin: ORDERS may hold only a little more than it holds now.
    info = json.loads((await watcher.request(f"$JS.API.STREAM.INFO.{ORDERS}", b"", timeout=2)).data)
    room = info["state"]["bytes"] + 2000
    assert nats_server.provision(limits("ORDERS", max_bytes=room, max_msg_size=1024)) == {
        ORDERS: [f"max_bytes: 1073741824 -> {room}", "max_msg_size: 65536 -> 1024"]}

    with pytest.raises(OrderRefused) as refused:
        for _ in range(100):
            o = order()
            ack = await operator.publish_order(S.orders_submit("operator", SYMBOL), o, fresh=True)
            accepted[ack.seq] = encode(o)
    assert refused.value.reason == "store full: maximum bytes exceeded"
    assert len(accepted) > 5, "the store took orders until it was full"

    # The trading agent says so on errors.trading-agent, with the reason.
    agent = await service_bus("trading-agent")
    o = order("trading")
    signal = Signal(agent="trading", symbol=SYMBOL, action=Action.BUY, confidence=0.5, reasoning="test",
                    model="test", origin_ts=o.origin_ts, ts=o.ts)
    assert await submit(agent, Proposal(signal=signal, order=o), timeout=2.0) is False
    event = ErrorEvent.model_validate_json((await errors.get()).data)
    assert event.reason == "order refused: store full: maximum bytes exceeded"
    assert o.client_order_id in event.excerpt

    # The gateway answers 503 with the reason.
    app = create_app(bus=await service_bus("gateway"), config=GATEWAY_CONFIG, token=TOKEN, read_token="")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080") as c:
        r = await c.post("/api/orders", headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"client_order_id": "gw-full-1", "symbol": SYMBOL, "side": "BUY", "quantity": "1"})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == {"code": "not_stored", "message": "the ORDERS stream refused the order: "
                                                                   "store full: maximum bytes exceeded"}

    # Nothing accepted before is lost, nothing refused was stored.
    stored = await stored_orders(watcher)
    assert {seq: stored.get(seq) for seq in accepted} == accepted
    assert len(stored) == len(accepted)

    # Room again: orders flow.
    assert nats_server.provision({}) == {ORDERS: [f"max_bytes: {room} -> 1073741824", "max_msg_size: 1024 -> 65536"]}
    ack = await operator.publish_order(S.orders_submit("operator", SYMBOL), order(), fresh=True)
    assert ack.seq == max(accepted) + 1


async def test_an_order_larger_than_max_msg_size_is_refused(nats_server: NatsServer, service_bus) -> None:
    operator = await service_bus("operator")
    try:
        nats_server.provision(limits("ORDERS", max_msg_size=256))
        big = order().model_copy(update={"client_order_id": "big-" + "x" * 60})
        padded = big.model_copy(update={"decision_price": Decimal("1." + "1" * 100)})
        with pytest.raises(OrderRefused, match="message size exceeds maximum allowed"):
            await operator.publish_order(S.orders_submit("operator", SYMBOL), padded)
    finally:
        nats_server.provision({})
    await operator.publish_order(S.orders_submit("operator", SYMBOL), order())


async def test_provision_refuses_to_shrink_exec_below_what_it_stores(nats_server: NatsServer, connect) -> None:
    execution = await connect("execution")
    for i in range(3):
        await execution.jetstream().publish(S.exec_report(SYMBOL), b'{"x": "' + b"y" * 500 + b'"}',
                                            headers={"Nats-Msg-Id": f"lim-{i}-{time.time_ns()}"})
    with pytest.raises(ProvisionError, match="EXEC: max_bytes 1000 is below the .* bytes it stores; "
                                             "shrinking it would delete stored messages"):
        nats_server.provision(limits("EXEC", max_bytes=1000, max_msg_size=1000))
    info = json.loads((await execution.request("$JS.API.STREAM.INFO.EXEC", b"", timeout=2)).data)
    assert info["config"]["max_bytes"] == 2147483648 and info["state"]["messages"] >= 3


def test_the_provision_command_says_what_is_wrong(nats_server: NatsServer, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "moonbus.toml"
    config.write_text('[jetstream.ORDERS]\nmax_bytes = "lots"\n')
    out = subprocess.run([sys.executable, "-m", "services.common.streams", "--check"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "NATS_URL": nats_server.url,
                                                     "NATS_PASSWORD": nats_server.credentials["admin"],
                                                     "MOONBUS_CONFIG": str(config)})
    assert out.returncode == 1, out
    assert "[jetstream.ORDERS] max_bytes: 'lots' is not a size" in out.stderr
