"""The dashboard's views of issue 14 part 7, through the session's real nats-server, each with
the credential of its real publisher: the swarm's votes and the sentiment per symbol
(agent.swarm.*, agent.sentiment.*), the arbitrage opportunities (md.arb.*: stale marked,
old ones dropped), the protections on each position (exec.protection.*, ProtectionState as
plain JSON) and the running TWAP / ICEBERG algorithms (the `algo` of exec.report.*). Each
view gets valid messages and malformed ones: a malformed one is dropped and counted by
reason, never kept, never streamed, and the gateway carries on. Then the live stream over
real uvicorn, and the page in headless Chromium (skipped without Chromium)."""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal

import httpx
import pytest
from test_gateway import BASE, CONFIG, fake_market_data, fake_risk
from test_gateway_live import READ_TOKEN, Browser, events, find_chromium, serve_gateway, wait_for

from services.contract import subjects as S
from services.contract.models import (
    ArbOpportunity,
    Consensus,
    Sentiment,
    Vote,
    VoteAction,
    encode,
    now_ns,
)
from services.devstack.natsserver import NatsServer, load_or_create_credentials
from services.gateway.app import create_app

D = Decimal


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """This module's own nats-server (conftest's fixtures use it here): the execution reports
    published below land in its EXEC stream, not in the session's, from which later tests'
    risk rebuilds its books."""
    moon_dir = tmp_path_factory.mktemp("moon-dashboard")
    server = NatsServer(store_dir=moon_dir, credentials=load_or_create_credentials(moon_dir),
                        log_path=moon_dir / "nats-server.log")
    with server:
        server.provision()
        yield server


def consensus(symbol: str, action: str = "BUY", ts: int | None = None, agreement: float = 0.67) -> Consensus:
    return Consensus(
        symbol=symbol, question=f"buy {symbol} now?", action=VoteAction(action), method="majority",
        agreement=agreement, summary="2 of 3 for BUY", ts=ts or now_ns(),
        votes=[Vote(model="offline-momentum", action=VoteAction.BUY, confidence=0.8, reasoning="up 3 bars",
                    latency_ms=1.5),
               Vote(model="claude-haiku", action=VoteAction.BUY, confidence=0.6, reasoning="news positive",
                    latency_ms=820.0, cost_usd=0.0004),
               Vote(model="gpt-mini", action=VoteAction.ABSTAIN, confidence=0.0, latency_ms=3000.0,
                    error="timeout after 3 s")])


def sentiment(symbol: str, score: float, ts: int | None = None) -> Sentiment:
    return Sentiment(symbol=symbol, score=score, confidence=0.8, items=12, sources=["replay"],
                     model="offline-lexicon", ts=ts or now_ns())


def arb(symbol: str, buy: str, sell: str, net: str, ts: int | None = None) -> ArbOpportunity:
    return ArbOpportunity(
        symbol=symbol, buy_venue=buy, sell_venue=sell, buy_price=D("100.00"), sell_price=D("100.40"),
        buy_fee_bps=D("10"), sell_fee_bps=D("4.5"), gross_bps=D("40"), net_bps=D(net), quantity=D("0.75"),
        buy_limit=D("100.02"), sell_limit=D("100.38"), profit=D("0.19"), source_ts=(ts or now_ns()) - 50_000,
        ts=ts or now_ns())


def protection(parent: str, symbol: str, state: str = "ARMED", **fields: object) -> dict:
    """A ProtectionState as execution writes it (the model is not on main yet: plain JSON)."""
    return {"parent_order_id": parent, "agent": "trading", "symbol": symbol, "venue": "sim", "side": "SELL",
            "quantity": "10.5", "stop_loss": "90.5", "take_profit": "110", "trailing_stop_bps": 50,
            "trailing_trigger": "105.25", "state": state, "ts": now_ns(), **fields}


def parent_report(coid: str, symbol: str, status: str = "ACCEPTED", filled: str = "0", **algo: object) -> dict:
    """A TWAP / ICEBERG parent's ExecutionReport with its `algo` (plain JSON, as execution writes it)."""
    progress = {"kind": "TWAP", "slices_total": 4, "slices_sent": 1, "slices_filled": 0,
                "working_child_id": f"{coid}-s1", "next_slice_ts": now_ns() + 30 * 10**9, **algo}
    return {"client_order_id": coid, "agent": "trading", "symbol": symbol, "venue": "sim", "side": "BUY",
            "status": status, "quantity": "2", "filled_quantity": filled, "fee": "0",
            "timings": {"origin_ts": now_ns()}, "ts": now_ns(), "algo": {k: v for k, v in progress.items()
                                                                         if v is not None}}


def child_report(coid: str, parent: str, symbol: str, status: str = "FILLED") -> dict:
    return {"client_order_id": coid, "agent": "trading", "symbol": symbol, "venue": "sim", "side": "BUY",
            "status": status, "quantity": "0.5", "filled_quantity": "0.5", "last_fill_price": "100.1",
            "avg_fill_price": "100.1", "fee": "0.05", "timings": {}, "ts": now_ns(),
            "parent_order_id": parent, "child_kind": "SLICE"}


def raw(message: dict) -> bytes:
    return json.dumps(message).encode()


async def metrics_text(c: httpx.AsyncClient) -> str:
    return (await c.get("/metrics")).text


# ---------------------------------------------------------------- swarm and sentiment


async def test_swarm_votes_and_sentiment_per_symbol(connect, service_bus) -> None:
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    swarm, senti = await connect("swarm-agent"), await connect("sentiment-agent")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            assert (await c.get("/api/swarm")).json()["swarm"] == {}
            latest = consensus("DVA-USD", ts=now_ns() - 2 * 10**9)
            await swarm.publish(S.swarm("DVA-USD"), encode(latest))
            await swarm.publish(S.swarm("DVA-USD"), encode(consensus("DVA-USD", "SELL", ts=latest.ts - 10**9)))
            # malformed: not JSON; agreement above 1; another symbol than the subject's; no votes
            await swarm.publish(S.swarm("DVA-USD"), b'{"symbol": "DVA-USD", "votes": [')
            bad = json.loads(encode(consensus("DVA-USD")))
            await swarm.publish(S.swarm("DVA-USD"), raw({**bad, "agreement": 1.5}))
            await swarm.publish(S.swarm("DVB-USD"), encode(consensus("DVA-USD")))
            await swarm.publish(S.swarm("DVA-USD"), raw({k: v for k, v in bad.items() if k != "votes"}))
            await senti.publish(S.sentiment("DVA-USD"), encode(sentiment("DVA-USD", 0.42)))
            await senti.publish(S.sentiment("DVB-USD"), encode(sentiment("DVB-USD", -0.3)))
            await senti.publish(S.sentiment("DVB-USD"), raw({**json.loads(encode(sentiment("DVB-USD", 0.9))),
                                                              "score": "0.9"}))  # a string: refused

            async def heard() -> bool:
                swarm_reply = (await c.get("/api/swarm")).json()
                return sum(swarm_reply["dropped"].values()) == 5 and len(
                    (await c.get("/api/sentiment")).json()["dropped"]) == 1

            await wait_for(heard, what="every message counted")
            body = (await c.get("/api/swarm")).json()
            assert list(body["swarm"]) == ["DVA-USD"]
            dva = body["swarm"]["DVA-USD"]
            assert (dva["action"], dva["agreement"], dva["method"], dva["ts"]) == ("BUY", 0.67, "majority", latest.ts)
            assert [(v["model"], v["action"], v["confidence"]) for v in dva["votes"]] == [
                ("offline-momentum", "BUY", 0.8), ("claude-haiku", "BUY", 0.6), ("gpt-mini", "ABSTAIN", 0.0)]
            assert dva["votes"][2]["error"] == "timeout after 3 s"
            assert 2 <= dva["age_s"] < 10
            assert body["dropped"] == {"invalid": 2, "not_json": 1, "older_than_kept": 1, "subject_mismatch": 1}
            senti_body = (await c.get("/api/sentiment")).json()
            assert {s: v["score"] for s, v in senti_body["sentiment"].items()} == {"DVA-USD": 0.42, "DVB-USD": -0.3}
            assert senti_body["sentiment"]["DVB-USD"]["items"] == 12 and senti_body["dropped"] == {"invalid": 1}
            text = await metrics_text(c)
            assert 'moonbus_gateway_view_dropped_total{reason="not_json",view="swarm"} 1.0' in text
            assert 'moonbus_gateway_view_dropped_total{reason="invalid",view="sentiment"} 1.0' in text
            assert (await c.get("/health")).status_code == 200


async def test_sentiment_is_read_from_kv_at_start_and_a_newer_live_one_wins(connect, service_bus) -> None:
    """The sentiment agent keeps each symbol's latest Sentiment in its KV bucket (key: the symbol): the
    gateway starts with it, not with an empty panel until the next headline; a malformed
    stored value is counted, not shown."""
    senti = await connect("sentiment-agent")
    js = senti.jetstream()
    stored_ts = now_ns() - 30 * 10**9
    await js.publish(S.kv_sentiment_subject("DVK-USD"), encode(sentiment("DVK-USD", 0.61, ts=stored_ts)))
    await js.publish(S.kv_sentiment_subject("DVL-USD"), encode(sentiment("DVL-USD", -0.2, ts=stored_ts)))
    await js.publish(S.kv_sentiment_subject("DVM-USD"), b'{"symbol": "DVM-USD", "score": 2}')
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    try:
        await _sentiment_from_kv(app, senti)
    finally:  # the keys deleted: the next gateways of this module start without them
        for symbol in ("DVK-USD", "DVL-USD", "DVM-USD"):
            await js.publish(S.kv_sentiment_subject(symbol), b"", headers={"KV-Operation": "DEL"})


async def _sentiment_from_kv(app, senti) -> None:  # noqa: ANN001
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            body = (await c.get("/api/sentiment")).json()
            assert {s: v["score"] for s, v in body["sentiment"].items() if s.startswith("DV")} == {
                "DVK-USD": 0.61, "DVL-USD": -0.2}
            assert 30 <= body["sentiment"]["DVK-USD"]["age_s"] < 40 and body["dropped"] == {"invalid": 1}
            await senti.publish(S.sentiment("DVL-USD"), encode(sentiment("DVL-USD", 0.05)))

            async def newer() -> bool:
                return (await c.get("/api/sentiment")).json()["sentiment"]["DVL-USD"]["score"] == 0.05

            await wait_for(newer, what="the live sentiment")


# ---------------------------------------------------------------- arbitrage


async def test_arbs_latest_per_pair_best_first_stale_marked_old_dropped(connect, service_bus) -> None:
    config = {**CONFIG, "gateway": {**CONFIG["gateway"], "arb_stale_s": 3.0, "arb_keep_s": 20.0}}
    app = create_app(bus=await service_bus("gateway"), config=config)
    md = await connect("market-data")
    now = now_ns()
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            await md.publish(S.arb("DVA-USD"), encode(arb("DVA-USD", "sim", "binance", "8.5", now - 10**9)))
            await md.publish(S.arb("DVA-USD"), encode(arb("DVA-USD", "sim", "binance", "12.25", now)))  # replaces
            await md.publish(S.arb("DVA-USD"), encode(arb("DVA-USD", "binance", "hyperliquid", "30", now - 5 * 10**9)))
            await md.publish(S.arb("DVB-USD"), encode(arb("DVB-USD", "aster", "sim", "6", now)))
            await md.publish(S.arb("DVB-USD"), encode(arb("DVB-USD", "sim", "aster", "50", now - 25 * 10**9)))  # gone
            good = json.loads(encode(arb("DVB-USD", "sim", "aster", "9")))
            await md.publish(S.arb("DVB-USD"), raw({**good, "quantity": 0.75}))  # a JSON number: refused
            await md.publish(S.arb("DVB-USD"), raw({**good, "buy_venue": "aster", "sell_venue": "aster"}))
            await md.publish(S.arb("DVB-USD"), b"\xff\xfe not json")
            await md.publish(S.arb("DVA-USD"), encode(arb("DVB-USD", "sim", "aster", "9")))

            async def heard() -> bool:
                return sum((await c.get("/api/arbs")).json()["dropped"].values()) == 4

            await wait_for(heard, what="every arbitrage message")
            body = (await c.get("/api/arbs")).json()
            assert (body["stale_after_s"], body["keep_s"]) == (3.0, 20.0)
            found = [(a["symbol"], a["buy_venue"], a["sell_venue"], a["net_bps"], a["stale"]) for a in body["arbs"]]
            # fresh ones best first, then the stale; the one older than arb_keep_s is gone
            assert found == [("DVA-USD", "sim", "binance", "12.25", False), ("DVB-USD", "aster", "sim", "6", False),
                             ("DVA-USD", "binance", "hyperliquid", "30", True)]
            first = body["arbs"][0]
            assert (first["quantity"], first["profit"], first["buy_price"]) == ("0.75", "0.19", "100.00")
            assert 0 <= first["age_s"] < 3 and 5 <= body["arbs"][2]["age_s"] < 10
            assert body["dropped"] == {"invalid": 2, "not_json": 1, "subject_mismatch": 1}


# ---------------------------------------------------------------- protections


async def test_protections_latest_per_parent_ended_ones_drop_off(connect, service_bus) -> None:
    config = {**CONFIG, "gateway": {**CONFIG["gateway"], "protection_keep_s": 1.0}}
    app = create_app(bus=await service_bus("gateway"), config=config)
    execution = await connect("execution")  # its NATS user publishes exec.protection.>
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            subject = S.ALL_PROTECTIONS.replace(">", "DVA-USD")
            await execution.publish(subject, raw(protection("dvp-1", "DVA-USD")))
            await execution.publish(subject, raw(protection("dvp-1", "DVA-USD", "TRIGGERED", exit_order_id="dvp-1-x",
                                                            reason="stop_loss 90.5 crossed at 90.4")))
            await execution.publish(subject, raw(protection("dvp-2", "DVA-USD", take_profit=None,
                                                            trailing_stop_bps=None, trailing_trigger=None)))
            await execution.publish(subject, raw(protection("dvp-3", "DVA-USD", "CANCELLED", reason="position closed")))
            for bad in (protection("dvp-4", "DVA-USD", quantity=10.5),  # money as a JSON number
                        protection("dvp-4", "DVA-USD", state="EXPLODED"),
                        protection("dvp-4", "DVA-USD", trailing_stop_bps="50"),
                        {k: v for k, v in protection("dvp-4", "DVA-USD").items() if k != "parent_order_id"},
                        protection("dvp-4", "DVA-USD", side="SIDEWAYS"),
                        protection("dvp-4", "DVB-USD"),  # on DVA-USD's subject
                        [1, 2, 3]):
                await execution.publish(subject, raw(bad))
            await execution.publish(subject, b"{not json")

            async def heard() -> bool:
                return sum((await c.get("/api/protections")).json()["dropped"].values()) == 8

            await wait_for(heard, what="every protection message")
            body = (await c.get("/api/protections")).json()
            shown = {p["parent_order_id"]: p for p in body["protections"]}
            assert list(shown) == ["dvp-1", "dvp-2", "dvp-3"]
            p1 = shown["dvp-1"]
            assert (p1["state"], p1["exit_order_id"], p1["reason"]) == ("TRIGGERED", "dvp-1-x",
                                                                      "stop_loss 90.5 crossed at 90.4")
            assert (p1["side"], p1["quantity"], p1["stop_loss"], p1["take_profit"], p1["trailing_stop_bps"],
                    p1["trailing_trigger"]) == ("SELL", "10.5", "90.5", "110", 50, "105.25")
            assert "take_profit" not in shown["dvp-2"] and shown["dvp-2"]["stop_loss"] == "90.5"
            assert body["dropped"] == {"invalid": 6, "not_json": 1, "subject_mismatch": 1}
            assert 0 <= p1["age_s"] < 10

            async def cancelled_gone() -> bool:
                ids = [p["parent_order_id"] for p in (await c.get("/api/protections")).json()["protections"]]
                return ids == ["dvp-1", "dvp-2"]

            await wait_for(cancelled_gone, 10, "the CANCELLED protection to drop off after protection_keep_s")
            assert (await c.get("/health")).status_code == 200


# ---------------------------------------------------------------- running algorithms


async def test_running_algorithms_from_execution_reports(connect, service_bus) -> None:
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    execution = await connect("execution")
    subject = S.exec_report("DVA-USD")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            await execution.publish(subject, raw(parent_report("dvt-1", "DVA-USD")))
            await execution.publish(subject, raw(child_report("dvt-1-s1", "dvt-1", "DVA-USD")))
            await execution.publish(subject, raw(parent_report("dvt-1", "DVA-USD", "PARTIALLY_FILLED", "0.5",
                                                               slices_sent=2, slices_filled=1,
                                                               working_child_id="dvt-1-s2")))
            await execution.publish(subject, raw(parent_report("dvi-1", "DVA-USD", kind="ICEBERG", slices_total=None,
                                                               next_slice_ts=None)))
            await execution.publish(subject, raw(parent_report("dvt-2", "DVA-USD")))
            await execution.publish(subject, raw(parent_report("dvt-2", "DVA-USD", "FILLED", "2", slices_sent=4,
                                                               slices_filled=4, working_child_id=None)))
            # malformed algos: more slices filled than sent, a lowercase kind, not an object,
            # a parent report that is not an ExecutionReport, a child's link of the wrong kind
            await execution.publish(subject, raw(parent_report("dvx-1", "DVA-USD", slices_filled=3)))
            await execution.publish(subject, raw(parent_report("dvx-2", "DVA-USD", kind="twap")))
            await execution.publish(subject, raw({**parent_report("dvx-3", "DVA-USD"), "algo": "TWAP"}))
            await execution.publish(subject, raw(parent_report("dvx-4", "DVA-USD", status="SOMEWHERE")))
            await execution.publish(subject, raw({**child_report("dvt-1-s9", "dvt-1", "DVA-USD"), "child_kind": "X"}))
            await execution.publish(S.exec_report("DVB-USD"), raw(parent_report("dvx-5", "DVA-USD")))

            async def heard() -> bool:
                return sum((await c.get("/api/algos")).json()["dropped"].values()) == 6

            await wait_for(heard, what="every report")
            body = (await c.get("/api/algos")).json()
            algos = {a["client_order_id"]: a for a in body["algos"]}
            assert list(algos) == ["dvt-1", "dvi-1"]  # dvt-2 finished: off the view
            twap = algos["dvt-1"]
            assert (twap["status"], twap["filled_quantity"], twap["quantity"], twap["running"]) == (
                "PARTIALLY_FILLED", "0.5", "2", True)
            assert twap["algo"]["kind"] == "TWAP" and (twap["algo"]["slices_total"], twap["algo"]["slices_sent"],
                                                       twap["algo"]["slices_filled"]) == (4, 2, 1)
            assert twap["algo"]["working_child_id"] == "dvt-1-s2" and twap["algo"]["next_slice_ts"] > now_ns()
            assert twap["last_child"]["client_order_id"] == "dvt-1-s1" and twap["last_child"]["status"] == "FILLED"
            assert twap["last_child"]["last_fill_price"] == "100.1"
            assert "slices_total" not in algos["dvi-1"]["algo"] and algos["dvi-1"]["algo"]["kind"] == "ICEBERG"
            assert body["dropped"] == {"invalid": 5, "subject_mismatch": 1}

            await execution.publish(subject, raw(parent_report("dvt-1", "DVA-USD", "CANCELLED", "0.5",
                                                               slices_sent=2, slices_filled=1)))

            async def finished() -> bool:
                return [a["client_order_id"] for a in (await c.get("/api/algos")).json()["algos"]] == ["dvi-1"]

            await wait_for(finished, what="the cancelled TWAP to drop off")


# ---------------------------------------------------------------- the live stream


async def test_the_stream_carries_only_checked_view_messages(nats_server, connect) -> None:
    swarm, senti, md = await connect("swarm-agent"), await connect("sentiment-agent"), await connect("market-data")
    execution = protector = await connect("execution")
    async with serve_gateway(nats_server) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        params = {"topics": "swarm,sentiment,arbs,protections,algos", "symbols": "DVS-USD"}
        async with c.stream("GET", "/api/stream", params=params) as r:
            assert r.status_code == 200
            # malformed first, on each view's subject; then one good message each
            await swarm.publish(S.swarm("DVS-USD"), b"MALFORMED")
            await senti.publish(S.sentiment("DVS-USD"), raw({**json.loads(encode(sentiment("DVS-USD", 0.1))),
                                                             "score": 7, "model": "MALFORMED"}))
            await md.publish(S.arb("DVS-USD"), raw({**json.loads(encode(arb("DVS-USD", "sim", "aster", "9"))),
                                                    "net_bps": 9, "symbol": "MALFORMED"}))
            subject = S.ALL_PROTECTIONS.replace(">", "DVS-USD")
            await protector.publish(subject, raw(protection("dvs-1", "DVS-USD", quantity="-1", reason="MALFORMED")))
            await execution.publish(S.exec_report("DVS-USD"), raw({**parent_report("dvs-x", "DVS-USD", slices_filled=9),
                                                                   "reason": "MALFORMED"}))
            await swarm.publish(S.swarm("DVS-USD"), encode(consensus("DVS-USD")))
            await senti.publish(S.sentiment("DVS-USD"), encode(sentiment("DVS-USD", 0.25)))
            await md.publish(S.arb("DVS-USD"), encode(arb("DVS-USD", "sim", "aster", "9.5")))
            await protector.publish(subject, raw(protection("dvs-1", "DVS-USD")))
            await execution.publish(S.exec_report("DVS-USD"), raw(parent_report("dvs-t", "DVS-USD")))
            await md.publish(S.arb("DVO-USD"), encode(arb("DVO-USD", "sim", "aster", "9.5")))  # not this symbol

            got: dict[str, dict] = {}
            stream = events(r)
            wanted = {"Consensus", "Sentiment", "ArbOpportunity", "ProtectionState", "AlgoOrder"}
            while not wanted <= set(got):
                name, data = await asyncio.wait_for(anext(stream), 10)
                assert b"MALFORMED" not in json.dumps(data).encode(), (name, data)
                assert data["message"].get("symbol") == "DVS-USD", (name, data)
                got[name] = data
        assert got["Consensus"]["subject"] == "agent.swarm.DVS-USD" and len(got["Consensus"]["message"]["votes"]) == 3
        assert got["Sentiment"]["message"]["score"] == 0.25
        assert got["ArbOpportunity"]["message"]["net_bps"] == "9.5"  # money stays a decimal string
        assert got["ProtectionState"]["message"]["quantity"] == "10.5"
        assert got["AlgoOrder"]["message"]["algo"]["slices_total"] == 4 and got["AlgoOrder"]["message"]["running"]
        metrics = (await c.get("/metrics")).text
        for view in ("swarm", "sentiment", "arbs", "protections", "algos"):
            assert f'moonbus_gateway_view_dropped_total{{reason="invalid",view="{view}"}}' in metrics or \
                f'moonbus_gateway_view_dropped_total{{reason="not_json",view="{view}"}}' in metrics, view


# ---------------------------------------------------------------- the page in Chromium


async def test_dashboard_shows_swarm_sentiment_arbs_protections_and_algos(nats_server, connect, tmp_path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium (Debian: apt-get install chromium)")
    pytest.importorskip("websockets")
    md, risk = await connect("market-data"), await connect("risk")
    swarm, senti = await connect("swarm-agent"), await connect("sentiment-agent")
    execution = protector = await connect("execution")
    market_subs = await fake_market_data(md)
    risk_subs = await fake_risk(risk)  # a position in GWA-USD
    protections = S.ALL_PROTECTIONS.replace(">", "GWA-USD")
    # Heard before the page opens (its first paint reads them from /api/...).
    before = [
        (swarm, S.swarm("GWA-USD"), encode(consensus("GWA-USD"))),
        (senti, S.sentiment("GWB-USD"), encode(sentiment("GWB-USD", -0.35))),
        (md, S.arb("GWA-USD"), encode(arb("GWA-USD", "sim", "binance", "12.5"))),
        (md, S.arb("GWA-USD"), encode(arb("GWA-USD", "binance", "aster", "44", now_ns() - 30 * 10**9))),  # stale
        (protector, protections, raw(protection("gwp-1", "GWA-USD"))),
        (protector, protections, raw(protection("gwp-2", "GWA-USD", "TRIGGERED", exit_order_id="gwp-2-x",
                                                 reason="take_profit 110 crossed"))),
        (execution, S.exec_report("GWA-USD"), raw(parent_report("gwt-1", "GWA-USD", "PARTIALLY_FILLED", "0.5",
                                                                slices_sent=2, slices_filled=1))),
        (execution, S.exec_report("GWA-USD"), raw(parent_report("gwt-2", "GWA-USD"))),
    ]
    browser = Browser(binary)
    try:
        async with serve_gateway(nats_server, read_token=READ_TOKEN, arb_stale_s=20.0) as base:
            for nc, subject, data in before:
                await nc.publish(subject, data)
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {READ_TOKEN}"}) as c:
                async def heard() -> bool:
                    return len((await c.get("/api/algos")).json()["algos"]) == 2 and len(
                        (await c.get("/api/protections")).json()["protections"]) == 2
                await wait_for(heard, what="the views to fill")
            await browser.open()
            await browser.call("Page.navigate", url=base + "/")
            await browser.until("!document.getElementById('loginform').hidden", "the read token form")
            await browser.js(f"document.getElementById('readtoken').value = '{READ_TOKEN}';"
                             "document.getElementById('loginform').requestSubmit()")
            await browser.until("document.getElementById('stream').textContent === 'stream: live'", "the stream")

            def text(element_id: str) -> str:
                return f"document.getElementById('{element_id}').textContent"

            # swarm and sentiment per symbol: the consensus, each model's vote, the sentiment
            await browser.until(f"{text('symbols')}.includes('agreement 67%')", "the swarm's consensus")
            card = "document.querySelector('#symbols .card[data-symbol=\"GWA-USD\"]')"
            assert await browser.js(f"{card}.querySelectorAll('.votes tbody tr').length") == 3
            votes = str(await browser.js(f"{card}.textContent"))
            for needle in ("offline-momentum", "claude-haiku", "gpt-mini", "ABSTAIN", "timeout after 3 s", "majority"):
                assert needle in votes, needle
            assert "-0.35" in str(await browser.js(
                "document.querySelector('#symbols .card[data-symbol=\"GWB-USD\"] .sentiment').textContent"))
            # arbitrage: the fresh one first, the stale one marked
            await browser.until("document.querySelectorAll('#arbs tbody tr').length === 2", "two arbitrage rows")
            rows = await browser.js("[...document.querySelectorAll('#arbs tbody tr')].map(r => [r.className, "
                                    "r.cells[1].textContent, r.cells[5].textContent, r.cells[9].textContent])")
            assert rows[0][:3] == ["", "sim", "12.5"] and rows[1][:3] == ["stale", "binance", "44"], rows
            assert "stale" in rows[1][3], rows
            # protections under the position
            await browser.until("document.querySelectorAll('#positions tr.protection').length === 2", "protections")
            positions = await browser.js("[...document.querySelectorAll('#positions tbody tr')].map(r => r.className"
                                         " + ':' + r.textContent)")
            assert positions[0].startswith(":GWA-USD") and positions[1].startswith("protection:"), positions
            assert "ARMED" in positions[1] and "stop 90.5" in positions[1] and "trail 50 bps at 105.25" in positions[1]
            assert "TRIGGERED" in positions[2] and "exit gwp-2-x" in positions[2], positions
            # running algorithms with their progress
            await browser.until("document.querySelectorAll('#algos tbody tr').length === 2", "two running algorithms")
            twap = "document.querySelector('#algos tr[data-order=\"gwt-1\"]')"
            assert "1 / 2 / 4" in str(await browser.js(f"{twap}.textContent"))
            assert await browser.js(f"{twap}.querySelector('progress').value") == 0.5

            # Live: a new consensus, a protection closed, an algorithm finished, a new arbitrage.
            await swarm.publish(S.swarm("GWA-USD"), encode(consensus("GWA-USD", "SELL", agreement=1.0)))
            await protector.publish(protections, raw(protection("gwp-2", "GWA-USD", "CLOSED", exit_order_id="gwp-2-x")))
            await execution.publish(S.exec_report("GWA-USD"), raw(parent_report("gwt-2", "GWA-USD", "FILLED", "2",
                                                                                slices_sent=4, slices_filled=4)))
            await md.publish(S.arb("GWA-USD"), encode(arb("GWA-USD", "aster", "sim", "20")))
            await browser.until(f"{text('symbols')}.includes('agreement 100%')", "the new consensus")
            await browser.until("document.querySelectorAll('#algos tbody tr').length === 1", "the TWAP to drop off")
            await browser.until("document.getElementById('positions').textContent.includes('CLOSED')", "CLOSED")
            await browser.until("document.querySelectorAll('#arbs tbody tr').length === 3 && "
                                "document.querySelector('#arbs tbody tr').cells[2].textContent === '100.00' && "
                                "document.querySelector('#arbs tbody tr').cells[5].textContent === '20'",
                                "the best arbitrage on top")

            await browser.js("document.getElementById('symbols-panel').scrollIntoView()")  # the lower panels
            shot = base64.b64decode((await browser.call("Page.captureScreenshot", format="png"))["data"])
            assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
            (tmp_path / "dashboard-views.png").write_bytes(shot)
            print(f"dashboard screenshot: {tmp_path / 'dashboard-views.png'}")
    finally:
        await browser.close()
        for sub in [*market_subs, *risk_subs]:
            await sub.unsubscribe()
