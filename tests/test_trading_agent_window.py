"""The trading agent's rolling bar window (context.BarWindow / ContextSource.recent_bars):
each decision gets exactly the bars md.api.history would have given it (the last `limit`
up to the event's bar, its own copy last, nothing across a long silence) while
md.api.history is asked once per symbol, and again only where the window cannot vouch:
a hole it has not seen confirmed (market-data down, a bar lost on the way), a bar older
than it keeps (a replay far ahead of the agent), a bar that never came through it, a
restarted agent. The market here is a stand-in: every bar it "publishes" goes into its
history and, unless lost, through the window's subscription callback."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from services.contract.models import Bar, encode
from services.trading_agent import context as context_module
from services.trading_agent.config import TradingConfig
from services.trading_agent.context import ContextSource, cut_at_silence
from services.trading_agent.service import alert_event, bar_event
from services.contract.models import PriceAlert

T0 = 1_764_000_000 * 10**9
S = 10**9
SYMBOL = "WIN-USD"


def bar(i: int, close: str = "100", symbol: str = SYMBOL) -> Bar:
    c = Decimal(close)
    return Bar(venue="sim", symbol=symbol, interval="1s", open=c, high=c, low=c, close=c, volume=Decimal(1),
               trades=1, start_ts=T0 + i * S, end_ts=T0 + (i + 1) * S)


@dataclass
class Msg:
    data: bytes
    subject: str = f"md.bar.1s.sim.{SYMBOL}"


class Market:
    """market-data: its history (start_ts -> bar, the latest copy wins) and md.api.history."""

    def __init__(self) -> None:
        self.history: dict[tuple[str, int], Bar] = {}
        self.requests: list[int] = []

    def ask(self, symbol: str, limit: int) -> list[Bar]:
        self.requests.append(limit)
        mine = sorted((b for (s, _), b in self.history.items() if s == symbol), key=lambda b: b.start_ts)
        return mine[-limit:]

    def expected(self, event_bar: Bar | None, limit: int, max_gap_s: float = 60.0) -> list[Bar]:
        """What a decision must get: the last `limit` bars of the history up to the event's
        bar (its own copy last), after the last silence longer than max_gap_s."""
        upto = event_bar.start_ts if event_bar else 1 << 70
        mine = sorted((b for (s, st), b in self.history.items() if s == SYMBOL and st <= upto),
                      key=lambda b: b.start_ts)[-limit:]
        if event_bar is not None:
            mine[-1] = event_bar
        return cut_at_silence(mine, int(max_gap_s * 1e9))


class Source(ContextSource):
    def __init__(self, market: Market, **cfg: Any) -> None:
        super().__init__(bus=None, cfg=TradingConfig(**cfg))  # type: ignore[arg-type]
        self.market = market

    async def _ask_history(self, event: Any, limit: int, notes: list[str]) -> list[Bar]:
        self.history_requests += 1
        return self.market.ask(event.symbol, limit)


async def publish(market: Market, source: Source | None, b: Bar, lost: bool = False) -> None:
    market.history[(b.symbol, b.start_ts)] = b
    if source is not None and not lost:
        await source.bars.on_message(Msg(encode(b)))


async def decide(source: Source, b: Bar, limit: int) -> list[Bar]:
    return await source.recent_bars(bar_event(b), b, limit, [])


async def test_history_is_asked_once_and_every_decision_gets_its_bars() -> None:
    market = Market()
    for i in range(30):  # before the agent started
        await publish(market, None, bar(i, str(100 + i)))
    source = Source(market)
    for i in range(30, 80):
        b = bar(i, str(100 + i))
        await publish(market, source, b)
        assert await decide(source, b, 20) == market.expected(b, 20)
    assert market.requests == [20]


async def test_a_long_outage_is_confirmed_once_and_cuts_the_series() -> None:
    market, source = Market(), None
    source = Source(market)
    for i in range(25):
        b = bar(i)
        await publish(market, source, b)
        await decide(source, b, 10)
    assert len(market.requests) == 1
    for i in range(25 + 120, 25 + 130):  # market-data down two minutes: no bars, > history_max_gap_s
        b = bar(i)
        await publish(market, source, b)
        got = await decide(source, b, 10)
        assert got == market.expected(b, 10) and got[0].start_ts >= T0 + 145 * S
    assert len(market.requests) == 2  # the hole confirmed once by market-data, then the window


async def test_a_short_hole_keeps_the_series_and_a_lost_bar_comes_back_from_history() -> None:
    market = Market()
    source = Source(market)
    for i in range(15):
        b = bar(i, str(100 + i))
        await publish(market, source, b, lost=(i == 12))  # market-data made it; the window never got it
        if i != 12:
            assert await decide(source, b, 10) == market.expected(b, 10)
    assert len(market.requests) == 2  # the first decision, and the one after the hole
    assert bar(12, "112") in await decide(source, bar(14, "114"), 10)


async def test_late_and_duplicate_bars() -> None:
    market = Market()
    source = Source(market)
    for i in (0, 1, 2, 4, 5):
        await publish(market, source, bar(i))
    await decide(source, bar(5), 5)
    late = bar(3, "103")  # published after bar 5: goes in its place
    await publish(market, source, late)
    assert await decide(source, late, 3) == [bar(1), bar(2), late]
    assert await decide(source, bar(5), 5) == market.expected(bar(5), 5)
    again = bar(5, "105")  # the same bar published again, another close: the latest copy wins
    await publish(market, source, again)
    assert (await decide(source, again, 5))[-1] == again
    assert (await decide(source, bar(5), 5))[-1] == bar(5)  # a decision gets its event's own copy
    await publish(market, source, bar(8))  # a hole before it, then the bars of the hole, late
    await publish(market, source, bar(6))
    await publish(market, source, bar(7))
    assert await decide(source, bar(8), 5) == market.expected(bar(8), 5)
    assert len(market.requests) == 1  # the late bars filled the hole: nothing to confirm


async def test_a_replay_ahead_of_the_decisions_is_decided_from_the_window() -> None:
    """The firehose: every bar through the window before the first decision, then the
    decisions in order: the window keeps what they still need (KEEP_AHEAD)."""
    market = Market()
    source = Source(market)
    published = [bar(i, str(100 + i % 7)) for i in range(context_module.KEEP_AHEAD)]
    for b in published:
        await publish(market, source, b)
    for b in published:
        assert await decide(source, b, 20) == market.expected(b, 20)
    assert len(market.requests) == 2  # the first decision's: the latest 20, then back to its own bar
    assert len(source.bars.windows[("sim", SYMBOL)].starts) <= 20 + source.bars.keep_extra + 1


async def test_a_replay_far_ahead_of_the_decisions_still_gives_each_its_bars() -> None:
    """More bars ahead than the window keeps: the oldest decisions ask md.api.history
    ("behind"), the others come from the window; every one gets its bars."""
    market = Market()
    source = Source(market)
    published = [bar(i, str(100 + i % 7)) for i in range(3 * context_module.KEEP_AHEAD)]
    for b in published:
        await publish(market, source, b)
    keep = len(source.bars.windows[("sim", SYMBOL)].starts)
    assert 20 < keep < len(published)
    recent = len(published) - keep + 20  # from here on, the window holds every bar a decision needs
    for b in published[:recent]:
        assert await decide(source, b, 20) == market.expected(b, 20)
    asked = len(market.requests)
    for b in published[recent:]:
        assert await decide(source, b, 20) == market.expected(b, 20)
    assert len(market.requests) == asked


async def test_a_restarted_agent_asks_once_again() -> None:
    market = Market()
    first = Source(market)
    for i in range(30):
        b = bar(i)
        await publish(market, first, b)
        await decide(first, b, 10)
    second = Source(market)  # a restart: the window is empty
    for i in range(30, 40):
        b = bar(i, str(200 + i))
        await publish(market, second, b)
        assert await decide(second, b, 10) == market.expected(b, 10)
    assert market.requests == [10, 10]


async def test_a_bar_that_never_comes_through_the_window_is_decided_from_history(monkeypatch) -> None:
    monkeypatch.setattr(context_module, "ARRIVAL_TIMEOUT_S", 0.05)
    market = Market()
    source = Source(market)
    for i in range(10):
        await publish(market, source, bar(i))
    b = bar(10, "150")
    await publish(market, source, b, lost=True)
    assert await decide(source, b, 5) == market.expected(b, 5)
    assert len(market.requests) == 1


async def test_the_bar_arriving_just_after_its_decision_started_is_waited_for() -> None:
    market = Market()
    source = Source(market)
    for i in range(10):
        await publish(market, source, bar(i))
    await decide(source, bar(9), 5)
    b = bar(10, "150")
    market.history[(SYMBOL, b.start_ts)] = b
    decision = asyncio.create_task(decide(source, b, 5))
    await asyncio.sleep(0.01)
    assert not decision.done()
    await source.bars.on_message(Msg(encode(b)))
    assert await decision == market.expected(b, 5)
    assert len(market.requests) == 1


async def test_an_alert_gets_the_latest_bars() -> None:
    market = Market()
    source = Source(market)
    for i in range(12):
        await publish(market, source, bar(i, str(100 + i)))
    alert = PriceAlert(venue="sim", symbol=SYMBOL, direction="UP", change_pct=2.0, threshold_pct=1.0, window_s=60,
                       from_price=Decimal("100"), price=Decimal("112"), ts=T0 + 12 * S)
    for _ in range(3):
        assert await source.recent_bars(alert_event(alert), None, 5, []) == market.expected(None, 5)
    assert market.requests == [5]


async def test_a_malformed_bar_is_left_out_of_the_window() -> None:
    """Without its start and end it is refused on arrival; else when a decision reads it
    (bars are checked and built then, context.RawBar): dropped as if lost on the way, the
    hole it leaves confirmed by md.api.history, and no decision ever gets it."""
    market = Market()
    source = Source(market)
    await source.bars.on_message(Msg(b'{"venue": "sim", "symbol": "WIN-USD"}'))
    assert source.bars.received == 0 and not source.bars.windows
    for i in range(3):
        await publish(market, source, bar(i))
    market.history[(SYMBOL, bar(3).start_ts)] = bar(3, "101")
    malformed = [encode(bar(3, "101")).replace(b'"101"', b"101"),  # money as a number
                 encode(bar(4)).replace(b'"symbol":"WIN-USD"', b'"symbol":"WIN-USDT"'),  # not the subject's
                 encode(bar(5))[:-1] + b',"x":{"end_ts":7}}']  # its end_ts is not the one read first
    for data, i in zip(malformed, (3, 4, 5)):
        market.history[(SYMBOL, bar(i).start_ts)] = bar(i, "101")
        await source.bars.on_message(Msg(data))
    b = bar(6)
    await publish(market, source, b)
    assert await decide(source, b, 7) == market.expected(b, 7)
    assert [x.close for x in market.expected(b, 7)][3:6] == [Decimal(101)] * 3
    assert market.requests == [7]  # the first decision's; its reply decided it (the window had holes then)
    assert await decide(source, b, 7) == market.expected(b, 7)
    assert market.requests == [7, 7]  # the holes the malformed bars left, confirmed once
    assert await decide(source, b, 7) == market.expected(b, 7) and market.requests == [7, 7]
    assert all(type(x) is Bar for x in source.bars.windows[("sim", SYMBOL)].bars.values())


@pytest.mark.parametrize("limit", [1, 3, 50])
async def test_history_unavailable_decides_with_the_events_bar_and_asks_again(limit: int) -> None:
    class Down(Source):
        async def _ask_history(self, event: Any, limit: int, notes: list[str]) -> list[Bar]:
            self.history_requests += 1
            notes.append("history unavailable (timeout)")
            return []

    source = Down(Market())
    b = bar(0)
    await source.bars.on_message(Msg(encode(b)))
    notes: list[str] = []
    assert await source.recent_bars(bar_event(b), b, limit, notes) == [b]
    assert notes and source.history_requests == 1
    await source.recent_bars(bar_event(b), b, limit, [])
    assert source.history_requests == 2  # nothing vouched for: asked again
