"""Shorts in the backtester (issue #14): the live agent's `plan` with `allow_short`, risk's
rules and the paper venue (moonbus_sim) over bars. A scripted short / flip / flip run whose
trades, fees, PnL and equity are computed by hand below, the same run in backtesting.py
(its `position.close(); sell()`), the report's metrics of short trades as backtesting.py
defines them, SmaCross long/short on backtesting.py's GOOG data trade for trade, and the
spot-venue rule (risk refuses a sell-to-open there, with its reason)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from decimal import Decimal as D
from pathlib import Path

import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import GOOG, SMA

import backtesting
from services.backtest import data, engine, presets, report
from services.backtest.data import BarSeries
from services.contract.models import Action, Bar
from services.trading_agent.decide import RuleDecider
from services.trading_agent.strategy import Decision

HOUR = 3_600_000_000_000
T0 = 1_700_000_000 // 3600 * 3600 * 1_000_000_000
GOOG_CSV = Path(backtesting.__file__).parent / "test" / "GOOG.csv"

# (open, close) per hourly bar; the script decides at bars 1, 3 and 5 (filled at the next open;
# backtesting.py's first next() is at bar 1)
BARS = [(100, 100), (100, 100), (100, 90), (90, 80), (80, 88), (88, 88), (90, 95)]
SCRIPT = {1: Action.SELL, 3: Action.BUY, 5: Action.SELL}


def series(venue: str = "backtest") -> BarSeries:
    opens, closes = [D(o) for o, _ in BARS], [D(c) for _, c in BARS]
    return BarSeries(symbol="BTC-USD", venue=venue, interval="1h", start_ts=[T0 + i * HOUR for i in range(len(BARS))],
                     open=opens, high=[max(o, c) for o, c in zip(opens, closes)],
                     low=[min(o, c) for o, c in zip(opens, closes)], close=closes, volume=[D(1)] * len(BARS))


class Scripted:
    """SELL at bar 1, BUY at bar 3, SELL at bar 5 (by the bar's start time), else HOLD."""

    name = "scripted"
    bars_needed = 1

    def decide(self, symbol: str, bars: Sequence[Bar]) -> Decision:
        i = (bars[-1].start_ts - T0) // HOUR
        action = SCRIPT.get(i, Action.HOLD)
        return Decision(action, 1.0, f"bar {i}: {action.value}")


def run(shorts: bool = True, venue: str = "backtest", live: dict | None = None) -> engine.BacktestResult:
    preset = presets.backtesting_py(commission=0.001, cash=10_000)
    if live:
        preset["overrides"]["execution"]["live"] = live
    return engine.run([series(venue)], decider=RuleDecider(Scripted()),
                      params=preset["params"] | {"allow_short": shorts}, overrides=preset["overrides"])


def test_a_short_a_flip_and_a_flip_back_by_hand() -> None:
    """All in, whole units, fee 10 bps, cash 10000:
    - bar 2 open 100: short 10000 // 100.1 = 99, fee 9.9;
    - bar 4 open 80: cover 99 (fee 7.92): PnL (100 - 80) x 99 - 17.82 = 1962.18, equity 11962.18;
      then long 11962.18 // 80.08 = 149, fee 11.92;
    - bar 6 open 90: sell 149 (fee 13.41): PnL (90 - 80) x 149 - 25.33 = 1464.67, equity 13426.85;
      then short 13426.85 // 90.09 = 149, fee 13.41; open at the end, at the last close 95:
      (90 - 95) x 149 - 13.41 = -758.41; final equity 13426.85 - 13.41 - 745 = 12668.44."""
    result = run()
    assert not result.rejections
    assert [(f.side, f.quantity, f.price, f.fee, f.reduce_only) for f in result.fills] == [
        ("SELL", D(99), D(100), D("9.9"), False),
        ("BUY", D(99), D(80), D("7.92"), True), ("BUY", D(149), D(80), D("11.92"), False),
        ("SELL", D(149), D(90), D("13.41"), True), ("SELL", D(149), D(90), D("13.41"), False),
    ]
    trades = [(t.direction, t.quantity, t.entry_bar, t.entry_price, t.exit_bar, t.exit_price, t.fees, t.pnl)
              for t in result.trades]
    assert trades == [
        ("SHORT", D(99), 2, D(100), 4, D(80), D("17.82"), D("1962.18")),
        ("LONG", D(149), 4, D(80), 6, D(90), D("25.33"), D("1464.67")),
        ("SHORT", D(149), 6, D(90), None, None, D("13.41"), D("-758.41")),
    ]
    # every bar's equity: a short gains as the price falls
    assert result.equity == [D(10000), D(10000), D("10980.1"), D("11970.1"), D("13142.26"), D("13142.26"), D("12668.44")]
    assert result.fees == D("56.56")  # 9.9 + 7.92 + 11.92 + 13.41 + 13.41


def test_the_report_treats_short_trades_as_backtesting_py_does() -> None:
    """A trade's return is its PnL over its entry value, signed by direction: the short
    from 100 to 80 returns (1 - 80 / 100) - 17.82 / 9900 = 19.82 %."""
    result = run()
    summary = report.summarize(result)
    rows = report.trade_rows(result)
    assert [(r["direction"], r["return_pct"]) for r in rows] == [
        ("SHORT", pytest.approx(19.82)), ("LONG", pytest.approx(1464.67 / 11920 * 100)),
        ("SHORT", pytest.approx(-758.41 / 13410 * 100))]
    assert (summary["trades"], summary["open_trades"], summary["win_rate_pct"]) == (2, 1, 100.0)
    assert summary["equity_final"] == "12668.44" and summary["fees"] == "56.56"
    assert summary["best_trade_pct"] == pytest.approx(19.82)


class ScriptedPeer(Strategy):
    """The same script in backtesting.py: close, then sell / buy."""

    def init(self) -> None:
        pass

    def next(self) -> None:
        action = SCRIPT.get(len(self.data) - 1)
        if action is Action.SELL:
            self.position.close()
            self.sell()
        elif action is Action.BUY:
            self.position.close()
            self.buy()


def test_the_scripted_run_equals_backtesting_py() -> None:
    frame = pd.DataFrame({"Open": [float(o) for o, _ in BARS], "High": [float(max(o, c)) for o, c in BARS],
                          "Low": [float(min(o, c)) for o, c in BARS], "Close": [float(c) for _, c in BARS],
                          "Volume": [1.0] * len(BARS)},
                         index=pd.to_datetime([T0 + i * HOUR for i in range(len(BARS))], unit="ns"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(frame, ScriptedPeer, cash=10_000, commission=0.001).run()
    ours = [t for t in run().trades if t.exit_bar is not None]
    theirs = list(stats._trades.itertuples())
    assert len(ours) == len(theirs) == 2
    for t, their in zip(ours, theirs):
        signed = t.quantity if t.direction == "LONG" else -t.quantity
        assert (int(signed), t.entry_bar, t.exit_bar) == (their.Size, their.EntryBar, their.ExitBar)
        assert abs(t.pnl - D(str(their.PnL))) < D("0.000001")
        assert abs(report.trade_return(t) - their.ReturnPct) < 1e-9
    assert abs(run().final_equity - D(str(stats["Equity Final [$]"]))) < D("0.005")
    assert stats._strategy.position.size == -149


class SmaCrossLongShort(Strategy):
    """backtesting.py's SmaCross example as it is: always in the market, long or short."""

    n1 = 10
    n2 = 20

    def init(self) -> None:
        self.sma1 = self.I(SMA, self.data.Close, self.n1)
        self.sma2 = self.I(SMA, self.data.Close, self.n2)

    def next(self) -> None:
        if crossover(self.sma1, self.sma2):
            self.position.close()
            self.buy()
        elif crossover(self.sma2, self.sma1):
            self.position.close()
            self.sell()


@pytest.mark.parametrize(("n1", "n2", "commission"), [(10, 20, 0.002), (5, 30, 0.0)])
def test_sma_cross_long_short_equals_backtesting_py(n1: int, n2: int, commission: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(GOOG, SmaCrossLongShort, cash=10_000, commission=commission).run(n1=n1, n2=n2)
    preset = presets.backtesting_py(commission=commission, cash=10_000)
    [goog] = data.load(GOOG_CSV)
    result = engine.run([goog], strategy="ma_crossover", overrides=preset["overrides"],
                        params=preset["params"] | {"ma_fast": n1, "ma_slow": n2, "allow_short": True})
    closed = [t for t in result.trades if t.exit_bar is not None]
    theirs = stats._trades
    assert len(closed) == len(theirs) > 10 and {t.direction for t in closed} == {"LONG", "SHORT"}
    for ours, their in zip(closed, theirs.itertuples()):
        signed = ours.quantity if ours.direction == "LONG" else -ours.quantity
        assert (int(signed), ours.entry_bar, ours.exit_bar) == (their.Size, their.EntryBar, their.ExitBar)
        assert ours.entry_price == D(str(their.EntryPrice)) and ours.exit_price == D(str(their.ExitPrice))
        assert abs(ours.pnl - D(str(their.PnL))) < D("0.000001")
    assert abs(result.final_equity - D(str(stats["Equity Final [$]"]))) < D("0.005")
    curve = stats._equity_curve["Equity"].tolist()
    assert max(abs(float(e) - c) for e, c in zip(result.equity, curve)) < 0.005
    assert not result.rejections


def test_long_only_ignores_the_sell_without_a_long() -> None:
    """Off: the SELL at bar 1 is no order; the BUY at bar 3 opens a long, the SELL at bar 5
    closes it, no flip: one long trade 10000 // 80.08 = 124 from 80 to 90."""
    result = run(shorts=False)
    assert [(t.direction, t.quantity, t.entry_price, t.exit_price) for t in result.trades] == [
        ("LONG", D(124), D(80), D(90))]


def test_a_spot_venue_refuses_the_short_with_its_reason() -> None:
    """The venue is a Jupiter one ([execution.live.jup] kind jupiter, paper mode: the paper
    venue fills it, risk's rule is the venue kind's): the short at bar 2 is refused
    short_not_allowed; the BUY opens a long of 124, the SELL closes it (jup holds it) and its
    flip, a short of (10000 - 9.92 + 1240 - 11.16) // 90.09 = 124, is refused."""
    result = run(venue="jup", live={"jup": {"kind": "jupiter", "mode": "paper"}})
    assert [(r.side, r.quantity, r.reason.split(":")[0]) for r in result.rejections] == [
        ("SELL", D(99), "short_not_allowed"), ("SELL", D(124), "short_not_allowed")]
    assert "on jup (jupiter)" in result.rejections[0].reason
    assert [(t.direction, t.quantity, t.entry_price, t.exit_price) for t in result.trades] == [
        ("LONG", D(124), D(80), D(90))]
