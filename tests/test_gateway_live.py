"""Gateway live side: the latest state it keeps, the fan-out to streams (filters, slow
clients), the Server-Sent Events stream over real uvicorn and its limits (per client
address, in total), the edge over a real socket (an unauthenticated body is never read, a
streamed body past the limit is cut off), and the dashboard page in headless Chromium
behind a read token (skipped when Chromium is not installed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from unittest import mock

import httpx
import pytest
from prometheus_client import generate_latest
from test_gateway import BASE, CONFIG, account, fake_market_data, fake_risk
from test_venue_views import reconciliation, status

from services.common import caps
from services.common.bus import ApiError, flush
from services.contract import subjects as S
from services.contract.models import (
    Action,
    ExecutionReport,
    FeedStatus,
    KillSwitchState,
    OrderRequest,
    OrderStatus,
    ReconState,
    Side,
    Signal,
    Tick,
    Timings,
    TradingState,
    Verdict,
    encode,
    now_ns,
)
from services.devstack.natsserver import free_port
from services.common.streams import MSG_ID_HEADER
from services.gateway import service
from services.gateway.app import create_app
from services.gateway.live import Live
from services.gateway.metrics import GatewayMetrics

D = Decimal
TOKEN = "dashboard-token-5678"
READ_TOKEN = "dashboard-read-token-1234"


def tick(symbol: str, price: str, seq: int = 1) -> Tick:
    return Tick(venue="sim", symbol=symbol, price=D(price), bid=D(price), ask=D(price), seq=seq, ts=now_ns())


def signal(symbol: str, why: str) -> Signal:
    return Signal(agent="trading", symbol=symbol, action=Action.BUY, confidence=0.75, reasoning=why,
                  model="momentum", origin_ts=now_ns(), ts=now_ns())


async def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- fan-out (no bus needed)


def test_fan_out_filters_by_topic_and_symbol_and_drops_the_oldest() -> None:
    metrics = GatewayMetrics()
    live = Live(metrics, queue_size=2, max_streams=2)
    ticks_a = live.open({"ticks"}, {"LVA-USD"})
    everything = live.open({"ticks", "reports", "risk"}, None)
    with pytest.raises(ApiError, match="too_many_streams"):
        live.open({"ticks"}, None)  # max_streams

    live.fan_out("ticks", "md.tick.sim.LVB-USD", b'{"p":"1"}')
    live.fan_out("reports", "exec.report.LVA-USD", b'{"r":1}')
    live.fan_out("ticks", "md.tick.sim.LVA-USD", b'{"p":"2"}')
    assert ticks_a.queue.qsize() == 1
    assert ticks_a.queue.get_nowait() == b'event: Tick\ndata: {"subject":"md.tick.sim.LVA-USD","message":{"p":"2"}}\n\n'
    # `everything` holds 2: the first of its 3 events was dropped for the newest
    assert (everything.queue.qsize(), everything.dropped) == (2, 1)
    assert b"exec.report.LVA-USD" in everything.queue.get_nowait()
    live.fan_out("risk", "risk.account", b'{\n "state": "ACTIVE"\n}')  # SSE data must stay one line
    assert everything.queue.get_nowait().endswith(b'"message":{"p":"2"}}\n\n')
    assert everything.queue.get_nowait() == (
        b'event: AccountState\ndata: {"subject":"risk.account","message":{"state":"ACTIVE"}}\n\n')

    live.close(ticks_a)
    live.close(ticks_a)  # closing twice gives back one slot
    assert live.open({"ticks"}, None) is not None
    text = generate_latest(metrics.registry).decode()
    assert "moonbus_gateway_stream_dropped_total 1.0" in text
    assert "moonbus_gateway_stream_clients 2.0" in text


def test_agent_messages_are_checked_before_they_are_kept_and_streams_hold_bounded_bytes() -> None:
    """A stolen agent credential may publish anything up to the server's 1 MiB on agent.signal.> or
    agent.swarm.>: the gateway keeps 200 of each and parses them on every /api/signals, so only a
    real Signal / Consensus within caps.MAX_AGENT_MESSAGE_BYTES is kept. What it relays to a live
    stream is bounded per event and per client, in bytes as in count."""
    live = Live(GatewayMetrics(), queue_size=1000)
    nested = b"[" + b"[]," * 20_000 + b"[]]"  # 60 KB of JSON that parses to 20,000 lists
    refused = live.take("signals", "agent.signal.trading.LVS-USD", nested)
    assert refused is not None and refused.startswith("not a Signal:"), refused
    big = json.loads(encode(signal("LVS-USD", "x" * caps.MAX_AGENT_MESSAGE_BYTES)))
    refused = live.take("signals", "agent.signal.trading.LVS-USD", json.dumps(big).encode())
    assert refused is not None and "MAX_AGENT_MESSAGE_BYTES 65536" in refused, refused
    # Not a Consensus: not kept (the swarm view counts it as invalid, as before).
    assert live.take("swarm", "agent.swarm.LVS-USD", encode(signal("LVS-USD", "not a consensus"))) is None
    assert live.take("signals", "agent.signal.trading.LVS-USD", encode(signal("LVS-USD", "kept"))) is None
    assert [s["reasoning"] for s in live.recent("signals", 200)] == ["kept"]
    assert live.recent("swarm", 200) == []

    relayed = live.open({"orders"}, None)
    # An order naming another agent than its subject (execution refuses it) is not relayed: the
    # dashboard would show it as the order whose id it borrows.
    order = {"client_order_id": "op-1", "agent": "operator", "symbol": "LVS-USD", "side": "BUY", "quantity": "9"}
    refused = live.take("orders", "orders.submit.trading.LVS-USD", json.dumps(order).encode())
    assert refused is not None and "agent 'operator'" in refused, refused
    assert live.take("orders", "orders.submit.operator.LVS-USD", json.dumps(order).encode()) is None
    assert b'"op-1"' in relayed.queue.get_nowait() and relayed.queue.empty()
    live.close(relayed)

    stream = live.open({"orders"}, None)
    live.fan_out("orders", "orders.submit.trading.LVS-USD", b'{"pad":"' + b"x" * 70_000 + b'"}')
    assert stream.queue.empty(), "an order past ORDERS' own size limit is not relayed"
    event = b'{"pad":"' + b"x" * 60_000 + b'"}'
    for _ in range(100):  # 6 MB for a client that reads nothing
        live.fan_out("orders", "orders.submit.trading.LVS-USD", event)
    assert stream.queued_bytes <= caps.MAX_STREAM_QUEUE_BYTES
    assert stream.dropped == 100 - stream.queue.qsize() and stream.queue.qsize() >= 60
    assert stream.queued_bytes == sum(len(e) for e in list(stream.queue._queue))


# ---------------------------------------------------------------- the latest state


async def test_state_verdicts_and_signals_from_the_bus(connect, service_bus) -> None:
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    risk, md, agent = await connect("risk"), await connect("market-data"), await connect("trading-agent")
    async with app.router.lifespan_context(app):  # subscribes before it yields
        await risk.publish("risk.verdict.LVA-USD", encode(Verdict(symbol="LVA-USD", state=TradingState.HALTED,
                                                                  reasons=["circuit_breaker"], ts=5)))
        await risk.publish("risk.account", encode(account()))
        await risk.publish("risk.events", encode(KillSwitchState(engaged=True, actor="al", reason="x", changed_ts=3)))
        await md.publish("md.status.sim", encode(FeedStatus(venue="sim", status="stale", ts=4)))
        await md.publish("md.tick.sim.LVA-USD", encode(tick("LVA-USD", "10.25")))
        for i in range(3):
            await agent.publish("agent.signal.trading.LVA-USD", encode(signal("LVA-USD", f"reason {i}")))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            async def complete() -> bool:
                body = (await c.get("/api/state")).json()
                return all(body[k] for k in ("account", "kill_switch", "verdicts", "feeds", "ticks")) and len(
                    (await c.get("/api/signals")).json()["signals"]) == 3

            await wait_for(complete, what="the state to fill")
            state = (await c.get("/api/state")).json()
            assert state["connected"] is True
            assert state["account"]["equity"] == "10050.25"
            assert state["kill_switch"]["engaged"] is True
            assert state["feeds"]["sim"]["status"] == "stale"
            assert state["ticks"]["LVA-USD"]["price"] == "10.25"
            verdicts = (await c.get("/api/verdicts")).json()["verdicts"]
            assert verdicts["LVA-USD"]["reasons"] == ["circuit_breaker"]
            signals = (await c.get("/api/signals", params={"limit": 2})).json()["signals"]
            assert [s["reasoning"] for s in signals] == ["reason 1", "reason 2"]  # the last two, oldest first


async def test_past_the_caps_a_new_subject_symbol_or_venue_is_refused(connect, service_bus, monkeypatch) -> None:
    """The gateway kept the latest tick of every md.tick subject, the verdict of every symbol,
    the feed, venue status and reconciliation of every venue named on the bus: a stolen
    market-data, risk or execution credential publishing made-up names grew them without end.
    Now each keeps at most caps.MAX_MARKET_SYMBOLS (ticks, verdicts) or caps.MAX_VENUES keys: a
    message naming a new one beyond is refused on errors.gateway, neither kept nor streamed; a
    kept one still updates."""
    monkeypatch.setattr(caps, "MAX_MARKET_SYMBOLS", 2)
    monkeypatch.setattr(caps, "MAX_VENUES", 2)
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    operator = await connect("operator")
    errors = await operator.collect("errors.gateway")
    md, risk, execution = await connect("market-data"), await connect("risk"), await connect("execution")
    symbols, venues = ["LVCA-USD", "LVCB-USD", "LVCC-USD"], ["lvca", "lvcb", "lvcc"]
    new_symbol, new_venue = symbols[2], venues[2]
    async with app.router.lifespan_context(app):
        stream = app.state.gateway.live.open({"ticks"}, None)
        for nc in (md, risk, execution):
            await nc.flush()  # the publishers' round trips first (tests/test_decision_pipeline.py)
        for symbol, venue in zip(symbols, venues, strict=True):
            await md.publish(f"md.tick.sim.{symbol}", encode(tick(symbol, "10")))
            await risk.publish(S.verdict(symbol), encode(Verdict(symbol=symbol, state=TradingState.ACTIVE, ts=5)))
            await md.publish(f"md.status.{venue}", encode(FeedStatus(venue=venue, status="connected", ts=4)))
            await execution.publish(S.exec_venue(venue), encode(status(venue)))
            await risk.publish(S.risk_recon(venue), encode(reconciliation(venue)))
        kept_symbol, kept_venue = symbols[0], venues[0]  # each updates
        await md.publish(f"md.tick.sim.{kept_symbol}", encode(tick(kept_symbol, "11", 2)))
        await risk.publish(S.verdict(kept_symbol), encode(Verdict(symbol=kept_symbol, state=TradingState.HALTED,
                                                                  ts=6)))
        await md.publish(f"md.status.{kept_venue}", encode(FeedStatus(venue=kept_venue, status="stale", ts=5)))
        await execution.publish(S.exec_venue(kept_venue), encode(status(kept_venue, connected=False)))
        await risk.publish(S.risk_recon(kept_venue), encode(reconciliation(kept_venue, ReconState.MISMATCH)))
        for nc in (md, risk, execution):
            await flush(nc)
        refused = {e["subject"]: e["reason"] for e in
                   [json.loads((await asyncio.wait_for(errors.get(), 5)).data) for _ in range(5)]}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            async def updated() -> bool:
                state, venue = (await c.get("/api/state")).json(), (await c.get("/api/venues")).json()["venues"]
                return (state["ticks"][kept_symbol]["price"] == "11" and state["feeds"][kept_venue]["status"] == "stale"
                        and state["verdicts"][kept_symbol]["state"] == "HALTED"
                        and venue[kept_venue]["status"]["connected"] is False
                        and venue[kept_venue]["reconciliation"]["state"] == "MISMATCH")

            await wait_for(updated, what="the kept ones to update")
            state, venue = (await c.get("/api/state")).json(), (await c.get("/api/venues")).json()["venues"]
            assert (await c.get("/health")).status_code == 200
    assert refused == {
        f"md.tick.sim.{new_symbol}": f"subject md.tick.sim.{new_symbol} refused: already 2 subjects kept, the most "
                                     "this service keeps (MAX_MARKET_SYMBOLS 2)",
        S.verdict(new_symbol): f"symbol {new_symbol} refused: already 2 symbols kept, the most this service keeps "
                               "(MAX_MARKET_SYMBOLS 2)",
        **{subject: f"venue {new_venue} refused: already 2 venues kept, the most this service keeps (MAX_VENUES 2)"
           for subject in (f"md.status.{new_venue}", S.exec_venue(new_venue), S.risk_recon(new_venue))},
    }
    assert sorted(state["ticks"]) == sorted(state["verdicts"]) == symbols[:2]
    assert sorted(state["feeds"]) == sorted(venue) == venues[:2]
    streamed = [stream.queue.get_nowait() for _ in range(stream.queue.qsize())]
    assert len(streamed) == 3 and not any(new_symbol.encode() in e for e in streamed)  # A, B, A again
    assert errors.empty()


# ---------------------------------------------------------------- the stream, over real uvicorn


@contextlib.asynccontextmanager
async def serve_gateway(nats_server, read_token: str = "", **gateway: object) -> AsyncIterator[str]:
    """service.main on a free port as the `gateway` user; yields the base URL once /health is 200."""
    port = free_port()
    config = {**CONFIG, "gateway": {"host": "127.0.0.1", "port": port, "keepalive_s": 0.5, **gateway}}
    stop = asyncio.Event()
    env = {**nats_server.env_for("gateway"), "MOONBUS_GATEWAY_TOKEN": TOKEN, "MOONBUS_GATEWAY_READ_TOKEN": read_token}
    with mock.patch.dict(os.environ, env):
        task = asyncio.create_task(service.main(stop, config=config))
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base) as c:
                async def healthy() -> bool:
                    if task.done():
                        task.result()
                    with contextlib.suppress(httpx.TransportError):
                        return (await c.get("/health")).status_code == 200
                    return False

                await wait_for(healthy, 30, "the gateway to serve")
            yield base
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict]]:
    """(event name, data) of each Server-Sent Event; comments and `retry:` are skipped."""
    name, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            yield name, json.loads(data)
            name, data = "", ""


async def test_stream_serves_server_sent_events(nats_server, connect) -> None:
    md = await connect("market-data")
    async with serve_gateway(nats_server, max_streams=1) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as c:
            for bad in ({"topics": "ticks,gossip"}, {"symbols": "lva-usd"}):
                r = await c.get("/api/stream", params=bad)
                assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request"), bad
            async with c.stream("GET", "/api/stream", params={"topics": "ticks", "symbols": "LVA-USD"}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                r2 = await c.get("/api/stream")  # max_streams = 1
                assert (r2.status_code, r2.json()["error"]["code"]) == (503, "too_many_streams")
                # One subscription, so in order: LVB would come first if the filter let it through.
                await md.publish("md.tick.sim.LVB-USD", encode(tick("LVB-USD", "1")))
                sent = tick("LVA-USD", "97000.50")
                await md.publish("md.tick.sim.LVA-USD", encode(sent))
                name, data = await asyncio.wait_for(anext(events(r)), 10)
                assert name == "Tick"
                assert data["subject"] == "md.tick.sim.LVA-USD"
                assert data["message"] == json.loads(encode(sent))
                assert data["message"]["price"] == "97000.50"  # the wire JSON, untouched
            metrics = (await c.get("/metrics")).text
            assert 'moonbus_gateway_stream_events_total{topic="ticks"} 1.0' in metrics
            assert 'route="/api/stream",status="200"' in metrics


async def test_streams_are_capped_per_client_address_and_in_total(nats_server) -> None:
    """One address cannot take every stream: max_streams_per_client (429), max_streams (503)."""
    async with serve_gateway(nats_server, max_streams=3, max_streams_per_client=2) as base, \
            contextlib.AsyncExitStack() as stack:
        here = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=10))
        # another client address: the whole of 127.0.0.0/8 is this machine
        there = await stack.enter_async_context(httpx.AsyncClient(
            base_url=base, timeout=10, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")))

        async def open_stream(c: httpx.AsyncClient) -> httpx.Response:
            return await stack.enter_async_context(c.stream("GET", "/api/stream", params={"topics": "ticks"}))

        mine = [await open_stream(here), await open_stream(here)]
        assert [r.status_code for r in mine] == [200, 200]
        r = await here.get("/api/stream")
        assert (r.status_code, r.json()["error"]["code"]) == (429, "too_many_client_streams")
        assert (await open_stream(there)).status_code == 200  # not locked out by `here`
        r = await there.get("/api/stream")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "too_many_streams")  # 3 in all

        await mine[0].aclose()  # the server sees it gone at its next keepalive, and frees the slot

        async def freed() -> bool:
            return "moonbus_gateway_stream_clients 2.0" in (await here.get("/metrics")).text

        await wait_for(freed, 10, "the closed stream's slot")
        assert (await open_stream(here)).status_code == 200
        metrics = (await here.get("/metrics")).text
        assert 'moonbus_gateway_refused_total{code="too_many_client_streams"} 1.0' in metrics
        assert 'moonbus_gateway_refused_total{code="too_many_streams"} 1.0' in metrics


async def first_line_of_reply(port: int, request: bytes, body: tuple[bytes, ...] = ()) -> bytes:
    """Send `request` (and `body`, piece by piece) on a raw socket; the reply's status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        for piece in body:
            writer.write(piece)
            await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_over_a_socket_the_body_waits_for_the_token_and_the_limit(nats_server) -> None:
    async with serve_gateway(nats_server) as base:
        port = int(base.rsplit(":", 1)[1])
        head = f"POST /api/killswitch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        started = asyncio.get_running_loop().time()
        # A gigabyte announced, one byte sent: without a token the answer comes at once, unread.
        line = await first_line_of_reply(port, (head + "Content-Length: 1000000000\r\n\r\n{").encode())
        assert line.startswith(b"HTTP/1.1 401 "), line
        # With the token the announced size alone is refused.
        auth = f"Authorization: Bearer {TOKEN}\r\n"
        line = await first_line_of_reply(port, (head + auth + "Content-Length: 1000000000\r\n\r\n{").encode())
        assert line.startswith(b"HTTP/1.1 413 "), line
        # A chunked body is cut off once past max_body_bytes (64 KiB), its end never sent.
        chunk = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB
        line = await first_line_of_reply(port, (head + auth + "Transfer-Encoding: chunked\r\n\r\n").encode(),
                                         (chunk,) * 5)
        assert line.startswith(b"HTTP/1.1 413 "), line
        assert asyncio.get_running_loop().time() - started < 5


# ---------------------------------------------------------------- the dashboard in Chromium


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="moonbus-chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--window-size=1500,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.ws = None
        self.next_id = 0

    async def open(self) -> None:
        import websockets

        port_file = Path(self.profile) / "DevToolsActivePort"  # written once it listens

        async def listening() -> bool:
            return port_file.exists() and port_file.read_text().strip() != ""

        await wait_for(listening, 60, "Chromium's DevTools port")
        port = port_file.read_text().split()[0]
        targets = json.loads(await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read()))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)

    async def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            answer = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer["result"]

    async def js(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, what: str, timeout: float = 30) -> None:
        """Wait until `expression` is true on the page (an error, e.g. before it loaded, is false)."""
        async def true() -> bool:
            guarded = f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
            return bool(await self.js(guarded))

        await wait_for(true, timeout, what)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        self.process.terminate()
        await asyncio.to_thread(self.process.wait, 10)
        shutil.rmtree(self.profile, ignore_errors=True)


async def test_dashboard_in_headless_chromium(nats_server, connect, tmp_path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium (Debian: apt-get install chromium)")
    pytest.importorskip("websockets")
    md, risk, agent = await connect("market-data"), await connect("risk"), await connect("trading-agent")
    execution = await connect("execution")
    coid = f"dash-{now_ns()}"
    order = OrderRequest(client_order_id=coid, agent="trading", symbol="GWA-USD", side=Side.BUY, quantity=D("0.5"),
                         origin_ts=now_ns() - 9_000_000, ts=now_ns())
    report = ExecutionReport(client_order_id=coid, agent="trading", symbol="GWA-USD", side=Side.BUY,
                             status=OrderStatus.FILLED, quantity=D("0.5"), filled_quantity=D("0.5"),
                             avg_fill_price=D("100.55"), timings=Timings(origin_ts=order.origin_ts, filled_ts=now_ns()),
                             ts=now_ns())
    await agent.jetstream().publish("orders.submit.trading.GWA-USD", encode(order), headers={MSG_ID_HEADER: coid})
    await execution.jetstream().publish("exec.report.GWA-USD", encode(report),
                                        headers={MSG_ID_HEADER: f"{coid}:FILLED:0.5"})
    await fake_market_data(md)
    seen: list[tuple[str, dict]] = []
    await fake_risk(risk, seen)

    async def publish_live() -> None:  # what the real services would send, until the test ends
        seq = 0
        while True:
            seq += 1
            await md.publish("md.tick.sim.GWA-USD", encode(tick("GWA-USD", f"100.{seq % 9}", seq)))
            if seq % 5 == 1:
                await risk.publish("risk.account", encode(account()))
                await risk.publish("risk.verdict.GWA-USD", encode(Verdict(symbol="GWA-USD", state=TradingState.ACTIVE,
                                                                          ts=seq)))
                await agent.publish("agent.signal.trading.GWA-USD",
                                    encode(signal("GWA-USD", f"momentum up {seq}: buy a little")))
                await md.publish("md.status.sim", encode(FeedStatus(venue="sim", status="connected", ts=seq)))
            await asyncio.sleep(0.1)

    publisher = asyncio.create_task(publish_live())
    browser = Browser(binary)
    try:
        async with serve_gateway(nats_server, read_token=READ_TOKEN) as base:
            await browser.open()
            # Whatever the page's CSP blocks is recorded (DevTools' own script is exempt from it).
            await browser.call("Page.enable")
            await browser.call("Page.addScriptToEvaluateOnNewDocument", source=(
                "window.blocked = []; document.addEventListener('securitypolicyviolation',"
                " (e) => window.blocked.push(e.violatedDirective + ' ' + e.blockedURI));"))
            await browser.call("Page.navigate", url=base + "/")
            # Behind a read token the page asks for it; a wrong one is said so, the right one
            # becomes an HttpOnly cookie (never visible to the page) and the page reloads.
            await browser.until("!document.getElementById('loginform').hidden", "the read token form")
            await browser.js("document.getElementById('readtoken').value = 'not-the-token';"
                             "document.getElementById('loginform').requestSubmit()")
            await browser.until("document.getElementById('message').textContent.includes('wrong token')",
                                "a wrong read token refused")
            await browser.js(f"document.getElementById('readtoken').value = '{READ_TOKEN}';"
                             "document.getElementById('loginform').requestSubmit()")
            await browser.until("document.getElementById('loginform').hidden", "the page to reload, signed in")
            await browser.until("document.getElementById('stream').textContent === 'stream: live'", "the stream")
            assert await browser.js("document.cookie") == ""  # HttpOnly: the page cannot read it
            assert await browser.js("getComputedStyle(document.body).backgroundColor") == "rgb(15, 20, 25)"
            await browser.until("document.querySelectorAll('#prices tbody tr').length === 2", "two price rows")
            await browser.until("view.series['GWA-USD'] && view.series['GWA-USD'].length > 20", "chart points")
            # /api/prices' tick has no bid, the stream's have
            await browser.until("view.ticks['GWA-USD'].bid !== undefined", "a tick from the stream")
            await browser.until("document.getElementById('account').textContent.includes('10050.25')", "the account")
            await browser.until("document.querySelectorAll('#signals li').length > 0", "agent decisions")
            await browser.until("document.querySelector('#positions tbody td') !== null", "positions")
            await browser.until(f"document.getElementById('orders').textContent.includes('{coid}')", "the order")
            assert "FILLED" in str(await browser.js("document.getElementById('orders').textContent"))
            assert await browser.js("document.getElementById('trading').textContent") == "state: ACTIVE"
            assert "momentum up" in str(await browser.js("document.getElementById('signals').textContent"))
            assert "GWA-USD" in str(await browser.js("document.getElementById('verdicts').textContent"))
            assert await browser.js("window.blocked") == []  # the CSP let everything the page needs through

            shot = base64.b64decode((await browser.call("Page.captureScreenshot", format="png"))["data"])
            assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
            (tmp_path / "dashboard.png").write_bytes(shot)
            print(f"dashboard screenshot: {tmp_path / 'dashboard.png'}")

            # The kill switch button: token and reason typed in, one click, risk is asked.
            await browser.js(f"document.getElementById('token').value = '{TOKEN}';"
                             "document.getElementById('reason').value = 'from the browser test';"
                             "document.getElementById('killbutton').click()")
            await browser.until("document.getElementById('killswitch').textContent.includes('ENGAGED')",
                                "the kill switch to show engaged")
            engage = [body for subject, body in seen
                      if subject == "risk.api.killswitch.gateway" and body["action"] == "engage"]
            assert engage == [{"action": "engage", "actor": "dashboard", "reason": "from the browser test",
                               "flatten": False}]
    finally:
        publisher.cancel()
        await browser.close()


async def test_a_tick_or_verdict_padded_past_what_is_kept_is_refused(connect, service_bus) -> None:
    """Ticks and verdicts are Tolerant (unknown fields pass) and the gateway keeps them as
    received: one padded past caps.MAX_KEPT_MESSAGE_BYTES is refused on errors.gateway, neither
    kept nor streamed; the last good one stays."""
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    operator = await connect("operator")
    errors = await operator.collect("errors.gateway")
    md, risk = await connect("market-data"), await connect("risk")
    symbol, pad = "LVPA-USD", {"pad": "x" * caps.MAX_KEPT_MESSAGE_BYTES}
    async with app.router.lifespan_context(app):
        for nc in (md, risk):
            await nc.flush()
        await md.publish(f"md.tick.sim.{symbol}", encode(tick(symbol, "10")))
        await md.publish(f"md.tick.sim.{symbol}", json.dumps(json.loads(encode(tick(symbol, "99", 2))) | pad).encode())
        await risk.publish(S.verdict(symbol), json.dumps(
            json.loads(encode(Verdict(symbol=symbol, state=TradingState.ACTIVE, ts=5))) | pad).encode())
        for nc in (md, risk):
            await flush(nc)
        refused = {e["subject"]: e["reason"] for e in
                   [json.loads((await asyncio.wait_for(errors.get(), 5)).data) for _ in range(2)]}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            state = (await c.get("/api/state")).json()
    assert sorted(refused) == sorted([f"md.tick.sim.{symbol}", S.verdict(symbol)]), refused
    assert all("MAX_KEPT_MESSAGE_BYTES 8192" in reason for reason in refused.values()), refused
    assert state["ticks"][symbol]["price"] == "10" and symbol not in state["verdicts"]
    assert errors.empty()
