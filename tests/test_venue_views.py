"""The live venues shown to users (issue 12): the gateway's `/api/venues` (the latest
LiveVenueStatus and Reconciliation per venue, as heard on the session's real nats-server),
the live stream's events for them, and `moon status` (its table and --json), with the
publishers' real credentials (execution: exec.venue.*, risk: risk.recon.* and KV)."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
from test_cli import market_data, moon, risk, run_while_publishing  # noqa: F401 (fixtures)
from test_gateway import BASE, CONFIG

from services.contract import subjects as S
from services.contract.models import (
    FeedStatus,
    LiveVenueKind,
    LiveVenueStatus,
    Reconciliation,
    ReconAction,
    ReconDifference,
    ReconState,
    UnknownVenueOrder,
    VenueAccount,
    VenueMode,
    VenuePositionEntry,
    encode,
    now_ns,
)
from services.gateway.app import create_app
from services.gateway.live import Live
from services.gateway.metrics import GatewayMetrics

D = Decimal


def status(venue: str, *, connected: bool = True, mode: VenueMode = VenueMode.TESTNET, unknown: int = 0,
           account: bool = True) -> LiveVenueStatus:
    return LiveVenueStatus(
        venue=venue, kind=LiveVenueKind.HYPERLIQUID, mode=mode, connected=connected,
        detail=None if connected else "websocket closed: reconnecting in 2s",
        working_orders=3, unconfirmed_orders=1,
        account=VenueAccount(cash=D("1000.5"), equity=D("1200.25"),
                             positions=[VenuePositionEntry(symbol="ETH-USD", quantity=D("-0.25"))]) if account else None,
        account_error=None if account else "HTTP 429 rate limited",
        unknown_orders=[UnknownVenueOrder(venue_order_id="9", venue_symbol="ETH", status="open") for _ in range(unknown)],
        ts=now_ns(),
    )


def reconciliation(venue: str, state: ReconState = ReconState.MATCHED) -> Reconciliation:
    matched = state is ReconState.MATCHED
    return Reconciliation(
        venue=venue, state=state, action=ReconAction.NONE if matched else ReconAction.REDUCE_ONLY,
        differences=[] if matched else [ReconDifference(symbol="ETH-USD", venue=D("-0.25"), ledger=D("0"),
                                                        difference=D("-0.25"))],
        unknown_orders=0, cash=D("1000.5"), equity=D("1200.25"),
        detail="1 position(s) match risk's books" if matched else "ETH-USD: venue -0.25, risk 0", ts=now_ns(),
    )


async def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the gateway


async def test_api_venues_has_the_latest_status_and_reconciliation_per_venue(connect, service_bus) -> None:
    app = create_app(bus=await service_bus("gateway"), config=CONFIG)
    execution, risk_nc = await connect("execution"), await connect("risk")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            assert (await c.get("/api/venues")).json()["venues"] == {}
            await execution.publish(S.exec_venue("gwva"), encode(status("gwva", connected=False, account=False)))
            await execution.publish(S.exec_venue("gwva"), encode(status("gwva", unknown=2)))  # the latest wins
            await risk_nc.publish(S.risk_recon("gwva"), encode(reconciliation("gwva", ReconState.MISMATCH)))
            await execution.publish(S.exec_venue("gwvb"), encode(status("gwvb", mode=VenueMode.LIVE)))

            async def heard() -> bool:
                venues = (await c.get("/api/venues")).json()["venues"]
                return bool(venues.get("gwva", {}).get("reconciliation")) and "gwvb" in venues \
                    and len((venues["gwva"]["status"] or {}).get("unknown_orders", [])) == 2

            await wait_for(heard, what="both venues")
            body = (await c.get("/api/venues")).json()
            a, b = body["venues"]["gwva"], body["venues"]["gwvb"]
            assert a["status"]["connected"] is True and a["status"]["mode"] == "testnet"
            assert (a["status"]["working_orders"], a["status"]["unconfirmed_orders"]) == (3, 1)
            assert a["status"]["account"]["positions"][0]["quantity"] == "-0.25"  # money as on the wire
            assert (a["reconciliation"]["state"], a["reconciliation"]["action"]) == ("MISMATCH", "REDUCE_ONLY")
            assert a["reconciliation"]["differences"][0]["difference"] == "-0.25"
            assert 0 <= a["status_age_s"] < 10 and 0 <= a["reconciliation_age_s"] < 10
            assert b["status"]["mode"] == "live" and b["reconciliation"] is None and b["reconciliation_age_s"] is None
            assert body["ts"] > 0


def test_the_live_stream_names_the_venue_events() -> None:
    live = Live(GatewayMetrics())
    stream = live.open({"venues"}, {"BTC-USD"})  # a symbol filter does not hide venue events
    live.fan_out("venues", S.exec_venue("gwvc"), encode(status("gwvc")))
    live.fan_out("venues", S.risk_recon("gwvc"), encode(reconciliation("gwvc")))
    first, second = stream.queue.get_nowait(), stream.queue.get_nowait()
    assert first.startswith(b"event: LiveVenueStatus\ndata: {\"subject\":\"exec.venue.gwvc\"")
    assert second.startswith(b"event: Reconciliation\ndata: {\"subject\":\"risk.recon.gwvc\"")


def test_the_dashboard_shows_the_venues(repo_root) -> None:
    """The page has the table and the script fills it from /api/venues and the stream's events."""
    static = repo_root / "services" / "gateway" / "static"
    html, js = (static / "index.html").read_text(), (static / "dashboard.js").read_text()
    assert 'id="venues"' in html and 'id="venuepill"' in html
    for needle in ('api("/api/venues")', 'on("LiveVenueStatus"', 'on("Reconciliation"', "renderVenues();",
                   "unconfirmed_orders", "working_orders", "r.action"):
        assert needle in js, needle


# ---------------------------------------------------------------- moon status


async def test_moon_status_lists_the_live_venues(moon, connect, market_data, risk) -> None:  # noqa: F811
    md, execution, risk_nc = await connect("market-data"), await connect("execution"), await connect("risk")
    # Risk's stored reconciliation of a venue that stopped reporting (KV risk.recon.<venue>).
    silent = reconciliation("cliquiet", ReconState.UNAVAILABLE).model_copy(update={
        "action": ReconAction.HALTED, "differences": [], "detail": "no account read from cliquiet for 31000 ms"})
    await risk_nc.jetstream().publish(S.kv_subject(S.risk_recon("cliquiet")), encode(silent))

    async def heartbeat() -> None:
        await md.publish("md.status.sim", encode(FeedStatus(venue="sim", status="connected", symbols=2, ts=now_ns())))
        await execution.publish(S.exec_venue("clivenue"), encode(status("clivenue", mode=VenueMode.LIVE, unknown=1)))
        await risk_nc.publish(S.risk_recon("clivenue"), encode(reconciliation("clivenue", ReconState.MISMATCH)))

    result = await run_while_publishing(moon("status", "--json", "--feed-wait", "3"), heartbeat)
    body = json.loads(result.stdout)
    venue = body["venues"]["clivenue"]
    assert (venue["status"]["mode"], venue["status"]["connected"], venue["status"]["working_orders"]) == ("live", True, 3)
    assert venue["reconciliation"]["state"] == "MISMATCH"
    assert body["venues"]["cliquiet"] == {"status": None, "reconciliation": json.loads(
        silent.model_dump_json(exclude_none=True))}
    problems = "\n".join(body["problems"])
    assert "live venue clivenue: MISMATCH, account REDUCE_ONLY: ETH-USD: venue -0.25, risk 0" in problems
    assert "live venue cliquiet: UNAVAILABLE, account HALTED" in problems
    assert "live venue cliquiet: no status on exec.venue.cliquiet" in problems

    started = time.monotonic()
    result = await run_while_publishing(moon("status", "--feed-wait", "3"), heartbeat)
    assert time.monotonic() - started < 30
    table = result.stdout[result.stdout.index("live venues"):]
    for text in ("clivenue", "hyperliquid", "live", "yes", "MISMATCH", "REDUCE_ONLY", "1000.5", "1200.25",
                 "cliquiet", "UNAVAILABLE", "HALTED"):
        assert text in table, text
    row = next(line for line in table.splitlines() if "clivenue" in line)
    assert [c.strip() for c in row.split("│")[5:8]] == ["3", "1", "1"], row  # working, unconfirmed, unknown
