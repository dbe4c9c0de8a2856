"""Bar history across restarts (issue 17), end to end: nats-server with the secure config
(moonbus.conf's permissions, the stream BARS provisioned by admin from jetstream.json) and
the release-built rust-market-data started by the launcher. market-data is killed and
started again, then the whole system (nats-server too, on the same store: `make run`
twice): each time the first `md.api.history` answer, asked as the trading agent, already
holds every bar from before, the restart leaves a gap (no bar made up), and bars go on
after it, each start once. And a running trading agent decides across a market-data restart
with the bars from before it, unless the stop was longer than history_max_gap_s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from services.devstack.launcher import SERVICES, System
from services.devstack.natsserver import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

WAIT = 60.0
ENV = {"MOONBUS__MARKET_DATA__TICK_INTERVAL_MS": "20", "RUST_LOG": "warn,rust_market_data=info"}
HISTORY = json.dumps({"symbol": "BTC-USD", "interval": "1s", "limit": 1000}).encode()
SEC = 10**9


@pytest.fixture
def moon_dir(tmp_path: Path) -> Iterator[Path]:
    binary = REPO_ROOT / SERVICES["market-data"].command[0]
    if not binary.exists():
        pytest.fail(f"{binary} missing: run `make setup` (or `make test`)")
    yield tmp_path


def start(moon_dir: Path, port: int) -> System:
    return System().start(port=port, moon_dir=moon_dir, services=["market-data"], out=None, env=ENV)


async def connect(system: System, user: str) -> nats.NATS:
    env = system.env_for(user)
    return await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"],
                              inbox_prefix=f"_INBOX.{env['NATS_USER']}")


async def first_history(nc: nats.NATS) -> list[dict]:
    """The first answer of md.api.history once market-data answers at all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        try:
            reply = json.loads((await nc.request("md.api.history", HISTORY, timeout=1)).data)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            assert loop.time() < deadline, "market-data did not answer"
            await asyncio.sleep(0.02)
            continue
        if "error" in reply and reply["error"]["code"] == "unknown_symbol":
            # Not a history answer: the symbol has no series yet (nothing was reloaded).
            return []
        assert "bars" in reply, reply
        return reply["bars"]


class Watcher:
    """1s bars of BTC-USD as the trading agent sees them, and errors.market-data as the
    operator does, across restarts of market-data (not of nats-server)."""

    def __init__(self) -> None:
        self.bars: asyncio.Queue[dict] = asyncio.Queue()
        self.errors: list[dict] = []

    async def connect(self, system: System) -> None:
        self.agent = await connect(system, "trading-agent")
        self.operator = await connect(system, "operator")

        async def on_bar(msg: nats.aio.msg.Msg) -> None:
            await self.bars.put(json.loads(msg.data))

        async def on_error(msg: nats.aio.msg.Msg) -> None:
            self.errors.append(json.loads(msg.data))

        await self.agent.subscribe("md.bar.1s.sim.BTC-USD", cb=on_bar)
        await self.operator.subscribe("errors.market-data", cb=on_error)

    async def close(self) -> None:
        await self.agent.close()
        await self.operator.close()

    async def closed_bars(self, count: int, after_ts: int = 0) -> list[dict]:
        """`count` bars published with a start after `after_ts`, and the history then."""
        seen: list[dict] = []
        while len(seen) < count:
            bar = await asyncio.wait_for(self.bars.get(), WAIT)
            if bar["start_ts"] > after_ts:
                seen.append(bar)
        history = await first_history(self.agent)
        for bar in seen:
            assert bar in history, f"{bar} not in history"
        return history


def check_restart(before: list[dict], after: list[dict], later: list[dict]) -> None:
    # The first answer after the start has every bar from before, as it was.
    assert after[: len(before)] == before, f"{[b['start_ts'] for b in before]} vs {[b['start_ts'] for b in after]}"
    starts = [b["start_ts"] for b in later]
    assert starts == sorted(set(starts)), "each start once, in order"
    assert later[: len(before)] == before
    # Down for over a second: a gap, nothing made up for it.
    first_new = later[len(before)]["start_ts"]
    assert first_new - before[-1]["start_ts"] >= 2 * SEC, starts


async def test_history_survives_a_market_data_restart_and_a_full_restart(moon_dir: Path) -> None:
    port = free_port()
    system = start(moon_dir, port)
    watch = Watcher()
    try:
        await watch.connect(system)
        before = await watch.closed_bars(3)
        # market-data alone, killed (no clean-up) and started again.
        system.kill("market-data")
        await asyncio.sleep(1.5)
        system.restart("market-data")
        after = await first_history(watch.agent)
        log = system.wait_for_output("market-data", r"bar history reloaded", timeout=10)
        assert "refused=0" in log, log
        later = await watch.closed_bars(2, after_ts=before[-1]["start_ts"])
        check_restart(before, after, later)
        assert watch.errors == [], "the reload is permitted and finds only bars"
        await watch.close()
    finally:
        system.stop()
        print(system.tail(40))

    # The whole system stopped and started on the same store, as `make run` twice.
    before = later
    await asyncio.sleep(1.5)
    system = start(moon_dir, port)
    watch = Watcher()
    try:
        await watch.connect(system)
        after = await first_history(watch.agent)
        later = await watch.closed_bars(2, after_ts=before[-1]["start_ts"])
        check_restart(before, after, later)
        assert watch.errors == []
        await watch.close()
    finally:
        system.stop()
        print(system.tail(40))


AGENT_ENV = {**ENV, "MOONBUS__TRADING_AGENT__STRATEGY": "momentum",
             "MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK": "5", "MOONBUS__TRADING_AGENT__ON_ALERTS": "false"}


async def next_btc_signal(queue: asyncio.Queue[dict], after_ns: int) -> dict:
    while True:
        signal = await asyncio.wait_for(queue.get(), WAIT)
        if signal["symbol"] == "BTC-USD" and signal["origin_ts"] > after_ns:
            return signal


@pytest.mark.parametrize(("max_gap_s", "decides_at_once"), [("60", True), ("0.5", False)])
async def test_the_trading_agent_decides_across_a_restart_only_within_the_max_gap(
        moon_dir: Path, max_gap_s: str, decides_at_once: bool) -> None:
    """market-data killed and restarted under a running trading agent (momentum over 5 bars):
    with the history reloaded and a short stop, its first decision after the restart already
    has the 5 bars; with history_max_gap_s below the stop, the bars before it are not used and
    it waits for 5 new ones (the gap is real)."""
    env = {**AGENT_ENV, "MOONBUS__TRADING_AGENT__HISTORY_MAX_GAP_S": max_gap_s}
    system = System().start(port=free_port(), moon_dir=moon_dir, services=["market-data", "trading-agent"],
                            out=None, env=env)
    try:
        nc = await connect(system, "operator")
        signals: asyncio.Queue[dict] = asyncio.Queue()

        async def on_signal(msg: nats.aio.msg.Msg) -> None:
            await signals.put(json.loads(msg.data))

        await nc.subscribe("agent.signal.trading.BTC-USD", cb=on_signal)
        while "over 5 bars" not in (await next_btc_signal(signals, 0))["reasoning"]:
            pass
        system.kill("market-data")
        stopped = time.time_ns()
        await asyncio.sleep(1.5)
        system.restart("market-data")
        first = await next_btc_signal(signals, stopped)
        if decides_at_once:
            assert "over 5 bars" in first["reasoning"], first
        else:
            assert "the strategy needs 5" in first["reasoning"], first
        await nc.close()
    finally:
        system.stop()
        print(system.tail(40))
