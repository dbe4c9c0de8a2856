"""services/backtest/report.py: the metrics are backtesting.py's (its SmaCross example on its
GOOG data, converted into a BacktestResult, gives its numbers), the files are complete,
escaped, self-contained and byte-identical from run to run."""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.backtest import report
from services.backtest.result import BacktestResult, Fill, Rejection, Trade

D = Decimal
DAY = 86_400 * 10**9
T0 = 1_700_006_400 * 10**9  # 2023-11-15 00:00 UTC, a Wednesday


# ---------------------------------------------------------------- backtesting.py's numbers


def smacross_stats(finalize_trades: bool) -> tuple[Any, Any]:
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    from backtesting.test import GOOG, SMA

    class SmaCross(Strategy):  # backtesting.py's README example
        n1, n2 = 10, 20

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

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some trades remain open" without finalize_trades
        stats = Backtest(GOOG, SmaCross, cash=10_000, commission=0.002, finalize_trades=finalize_trades).run()
    return stats, GOOG


def dec(x: float) -> Decimal:
    return D(str(float(x)))


def ns(t: Any) -> int:
    return int(t.value)


def as_result(stats: Any, data: Any) -> BacktestResult:
    """backtesting.py's equity curve and trades as a BacktestResult, one fill carrying each
    trade's commission (only their total is reported)."""
    times = [ns(t) for t in data.index]
    trades, fills = [], []
    for t in stats._trades.itertuples():
        trades.append(Trade(symbol="GOOG", direction="LONG" if t.Size > 0 else "SHORT", quantity=D(abs(int(t.Size))),
                            entry_ts=ns(t.EntryTime), entry_price=dec(t.EntryPrice), exit_ts=ns(t.ExitTime),
                            exit_price=dec(t.ExitPrice), fees=dec(t.Commission), pnl=dec(t.PnL),
                            entry_bar=int(t.EntryBar), exit_bar=int(t.ExitBar)))
        fills.append(Fill(ts=ns(t.EntryTime), symbol="GOOG", side="BUY" if t.Size > 0 else "SELL",
                          quantity=D(abs(int(t.Size))), price=dec(t.EntryPrice), fee=dec(t.Commission),
                          client_order_id=f"bt-{t.Index}"))
    return BacktestResult(strategy="sma_cross", params={"n1": 10, "n2": 20}, symbols=["GOOG"], interval="1d",
                          starting_cash=D(10_000), times=times, equity=[dec(e) for e in stats._equity_curve.Equity],
                          closes={"GOOG": [dec(c) for c in data.Close]}, fills=fills, trades=trades,
                          bars=len(times))


# our key -> backtesting.py's
SAME = {
    "return_pct": "Return [%]",
    "return_ann_pct": "Return (Ann.) [%]",
    "volatility_ann_pct": "Volatility (Ann.) [%]",
    "sharpe": "Sharpe Ratio",
    "sortino": "Sortino Ratio",
    "calmar": "Calmar Ratio",
    "max_drawdown_pct": "Max. Drawdown [%]",
    "avg_drawdown_pct": "Avg. Drawdown [%]",
    "trades": "# Trades",
    "win_rate_pct": "Win Rate [%]",
    "best_trade_pct": "Best Trade [%]",
    "worst_trade_pct": "Worst Trade [%]",
    "avg_trade_pct": "Avg. Trade [%]",
    "profit_factor": "Profit Factor",
    "expectancy_pct": "Expectancy [%]",
    "sqn": "SQN",
    "exposure_time_pct": "Exposure Time [%]",
}
MONEY = {"equity_final": "Equity Final [$]", "equity_peak": "Equity Peak [$]", "fees": "Commissions [$]"}
DURATIONS = {"max_drawdown_duration_s": "Max. Drawdown Duration", "avg_drawdown_duration_s": "Avg. Drawdown Duration"}


def test_the_metrics_are_backtesting_pys_on_its_smacross_example() -> None:
    from backtesting._stats import compute_stats

    stats, goog = smacross_stats(finalize_trades=True)
    summary = report.summarize(as_result(stats, goog))
    assert stats["# Trades"] == 94 and summary["periods_per_year"] == 252  # daily stock bars, no weekends
    for ours, theirs in SAME.items():
        assert summary[ours] == pytest.approx(float(stats[theirs]), rel=1e-6), ours
    for ours, theirs in MONEY.items():
        assert float(D(summary[ours])) == pytest.approx(float(stats[theirs]), rel=1e-6), ours
    for ours, theirs in DURATIONS.items():
        assert summary[ours] == stats[theirs].total_seconds(), ours
    assert summary["start"] == "2004-08-19T00:00:00Z" and summary["end"] == "2013-03-01T00:00:00Z"
    assert summary["duration_s"] == stats["Duration"].total_seconds()
    # buy & hold from the first close: backtesting.py's own figure without a strategy's warm-up
    from_first = compute_stats(stats._trades, stats._equity_curve.Equity.values, goog, None)
    assert summary["buy_hold_return_pct"] == pytest.approx(from_first["Buy & Hold Return [%]"], rel=1e-9)
    assert summary["buy_hold_return_pct"] != pytest.approx(stats["Buy & Hold Return [%]"], rel=1e-3)
    json.dumps(summary, allow_nan=False)  # strict JSON


def test_open_trades_count_for_exposure_not_for_trade_statistics() -> None:
    """backtesting.py's default (finalize_trades=False) leaves the last, open trade out of
    its statistics; ours lists it as open and counts it in the exposure only."""
    stats, goog = smacross_stats(finalize_trades=False)
    closed, finalized = as_result(stats, goog), as_result(*smacross_stats(finalize_trades=True))
    last = finalized.trades[-1]
    closed.trades.append(Trade(**{**last.__dict__, "exit_ts": None, "exit_price": None, "exit_bar": None}))
    summary = report.summarize(closed)
    assert (summary["trades"], summary["open_trades"]) == (93, 1)
    for ours in ("win_rate_pct", "profit_factor", "sqn", "avg_trade_pct", "expectancy_pct"):
        assert summary[ours] == pytest.approx(float(stats[SAME[ours]]), rel=1e-6), ours
    full = report.summarize(finalized)
    assert summary["exposure_time_pct"] == full["exposure_time_pct"] > float(stats["Exposure Time [%]"])


# ---------------------------------------------------------------- hand-made results


def crypto_result(days: int = 30, strategy: str = "momentum") -> BacktestResult:
    """Two symbols of daily bars every day (weekends too), one closed trade, one open."""
    times = [T0 + i * DAY for i in range(days)]
    a = [D(100) + D(i % 7) - D(i) / 10 for i in range(days)]
    b = [None, None] + [D("20.5") + D(i) / 4 for i in range(2, days)]
    equity = [D(10_000) + D(i * 13 % 17) - D(i) for i in range(days)]
    trades = [
        Trade(symbol="AAA-USD", direction="LONG", quantity=D("3"), entry_ts=times[2], entry_price=a[2],
              exit_ts=times[9], exit_price=a[9], fees=D("0.6"), pnl=D(3) * (a[9] - a[2]) - D("0.6"),
              entry_bar=2, exit_bar=9),
        Trade(symbol="BBB-USD", direction="SHORT", quantity=D("10"), entry_ts=times[20], entry_price=b[20],
              exit_ts=None, exit_price=None, fees=D("0.2"), pnl=D(10) * (b[20] - b[-1]) - D("0.2"),
              entry_bar=20, exit_bar=None),
    ]
    fills = [Fill(ts=times[2], symbol="AAA-USD", side="BUY", quantity=D(3), price=a[2], fee=D("0.3"),
                  client_order_id="o1"),
             Fill(ts=times[9], symbol="AAA-USD", side="SELL", quantity=D(3), price=a[9], fee=D("0.3"),
                  client_order_id="o2"),
             Fill(ts=times[20], symbol="BBB-USD", side="SELL", quantity=D(10), price=b[20], fee=D("0.2"),
                  client_order_id="o3")]
    return BacktestResult(strategy=strategy, params={"ma_fast": 3, "ma_slow": 7, "risk": D("0.5")},
                          symbols=["AAA-USD", "BBB-USD"], interval="1d", starting_cash=D(10_000), times=times,
                          equity=equity, closes={"AAA-USD": a, "BBB-USD": b}, fills=fills, trades=trades,
                          rejections=[Rejection(ts=times[5], symbol="AAA-USD", side="BUY", quantity=D(1),
                                                reason="max_position")],
                          signals=7, bars=2 * days - 2, llm_cost_usd=0.25)


def test_summary_of_a_hand_made_result() -> None:
    r = crypto_result()
    s = report.summarize(r)
    assert s["periods_per_year"] == 365  # bars every day of the week
    assert (s["trades"], s["open_trades"], s["rejections"], s["signals"], s["bars"], s["points"]) == (1, 1, 1, 7, 58, 30)
    assert s["fees"] == "0.8" and s["equity_start"] == "10000" and s["equity_final"] == str(r.equity[-1])
    assert s["equity_peak"] == str(max(r.equity)) and s["llm_cost_usd"] == 0.25
    assert s["exposure_time_pct"] == pytest.approx(100 * (8 + 10) / 30)  # bars 2..9 and 20..29
    hold_a = float(r.closes["AAA-USD"][-1] / r.closes["AAA-USD"][0] - 1)
    hold_b = float(r.closes["BBB-USD"][-1] / r.closes["BBB-USD"][2] - 1)  # from its first close
    assert s["buy_hold_return_pct"] == pytest.approx(100 * (hold_a + hold_b) / 2)
    assert s["return_pct"] == pytest.approx(float(r.equity[-1] / 10_000 - 1) * 100)
    only = r.trades[0]
    assert s["best_trade_pct"] == s["worst_trade_pct"] == pytest.approx(
        100 * float(only.pnl / (only.quantity * only.entry_price)))
    assert s["win_rate_pct"] == (100.0 if only.pnl > 0 else 0.0)
    assert s["sqn"] is None  # needs two trades
    assert s["max_drawdown_pct"] < 0 and s["sharpe"] is not None
    json.dumps(s, allow_nan=False)


def test_a_single_point_has_no_ratios_and_no_nan() -> None:
    r = BacktestResult(strategy="s", params={}, symbols=["AAA-USD"], interval="1m", starting_cash=D(100),
                       times=[T0], equity=[D(100)], closes={"AAA-USD": [D(5)]})
    s = report.summarize(r)
    assert s["return_pct"] == 0.0 and s["max_drawdown_pct"] == 0.0 and s["trades"] == 0
    for key in ("sharpe", "sortino", "calmar", "return_ann_pct", "win_rate_pct", "profit_factor", "sqn",
                "max_drawdown_duration_s", "avg_trade_pct"):
        assert s[key] is None, key
    json.dumps(s, allow_nan=False)
    with pytest.raises(ValueError, match="one equity per bar time"):
        report.summarize(BacktestResult(strategy="s", params={}, symbols=[], interval="1m", starting_cash=D(1)))


def test_periods_per_year_follow_the_bar_spacing() -> None:
    def per_year(spacing_ns: int, n: int = 60, start: int = T0) -> int:
        times = [start + i * spacing_ns for i in range(n)]
        return report.annual_periods(times, [1.0 + i / 100 for i in range(n)], spacing_ns)[0]

    weekdays = [T0 + d * DAY for d in range(90) if report.weekday(T0 + d * DAY) < 5]
    assert report.annual_periods(weekdays, [1.0] * len(weekdays), DAY)[0] == 252
    assert per_year(DAY) == 365 and per_year(60 * 10**9, n=14 * 1440) == 365  # minutes, two weeks
    assert (per_year(7 * DAY), per_year(31 * DAY), per_year(365 * DAY)) == (52, 12, 1)
    assert report.week_ending_sunday(T0) == T0 // DAY + 4  # Wednesday 15th -> Sunday 19th


# ---------------------------------------------------------------- the files


def read_all(paths: dict[str, Path]) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in paths.items()}


def test_write_makes_every_file_and_the_same_bytes_each_time(tmp_path: Path) -> None:
    r = crypto_result()
    first = report.write(r, tmp_path / "a")
    second = report.write(r, tmp_path / "b" / "nested")
    assert sorted(first) == sorted(report.FILES) and all(p.parent == tmp_path / "a" for p in first.values())
    assert read_all(first) == read_all(second)  # report.png too
    summary = json.loads(first["summary.json"].read_text())
    assert summary == {"strategy": "momentum", "params": {"ma_fast": 3, "ma_slow": 7, "risk": "0.5"},
                       "symbols": ["AAA-USD", "BBB-USD"], "interval": "1d", "starting_cash": "10000",
                       **report.summarize(r)}

    rows = list(csv.DictReader(first["trades.csv"].open()))
    assert [row["symbol"] for row in rows] == ["AAA-USD", "BBB-USD"]
    assert tuple(rows[0]) == report.TRADE_COLUMNS
    assert rows[1]["exit_ts"] == rows[1]["exit_price"] == "" and rows[1]["pnl"] == str(r.trades[1].pnl)
    assert rows[0]["entry_time"] == "2023-11-17T00:00:00Z" and rows[0]["quantity"] == "3"
    trades = json.loads(first["trades.json"].read_text())
    assert trades[1]["exit_ts"] is None and trades[0]["entry_price"] == str(r.trades[0].entry_price)
    assert trades[0]["fees"] == "0.6" and trades[0]["exit_bar"] == 9

    equity = list(csv.DictReader(first["equity.csv"].open()))
    assert len(equity) == 30 and equity[0] == {"time": "2023-11-15T00:00:00Z", "ts": str(T0), "equity": "10000",
                                               "drawdown_pct": "0.000000"}
    peak = max(r.equity[:6])
    assert D(equity[5]["drawdown_pct"]) == ((r.equity[5] / peak - 1) * 100).quantize(D("0.000001"))
    assert min(float(e["drawdown_pct"]) for e in equity) == pytest.approx(summary["max_drawdown_pct"], abs=1e-6)

    png = first["report.png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and b"Software" not in png and len(png) > 10_000


def test_the_html_is_self_contained_escaped_and_complete(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>'
    r = crypto_result(strategy=evil)
    r.params["note"] = "a & b <i>"
    page = report.write(r, tmp_path)["report.html"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "a &amp; b &lt;i&gt;" in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<link|<iframe""", page)  # nothing loaded
    assert page.count("<svg") == 4  # equity, drawdown, AAA-USD and BBB-USD prices
    for metric in ("sharpe", "sortino", "calmar", "max_drawdown_pct", "profit_factor", "win_rate_pct"):
        assert f">{metric}</th>" in page, metric
    # the ▲ entries and ▼ exits sit on the price charts: AAA-USD one of each, BBB-USD an entry only
    aaa, bbb = (page.split(f"{s} close", 1)[1].split("</svg>")[0] for s in ("AAA-USD", "BBB-USD"))
    assert (aaa.count('class="buy"'), aaa.count('class="sell"')) == (1, 1)
    assert (bbb.count('class="buy"'), bbb.count('class="sell"')) == (1, 0)
    assert page.count("<tr><td>") == 2  # the trade list


def test_long_runs_are_decimated_in_the_charts(tmp_path: Path) -> None:
    n = 50_000
    times = [T0 + i * 60 * 10**9 for i in range(n)]
    closes = [D(100) + D(math.sin(i / 500)).quantize(D("0.01")) for i in range(n)]
    closes[31_337] = D(150)  # a spike survives the decimation
    r = BacktestResult(strategy="s", params={}, symbols=["AAA-USD"], interval="1m", starting_cash=D(1000),
                       times=times, equity=[D(1000) + c - D(100) for c in closes], closes={"AAA-USD": closes},
                       bars=n)
    paths = report.write(r, tmp_path)
    page = paths["report.html"].read_text()
    assert len(page) < 400_000 and "150.00" in page
    assert len(paths["equity.csv"].read_text().splitlines()) == n + 1


# ---------------------------------------------------------------- a real run


def test_the_report_of_a_real_run_agrees_with_backtesting_py(tmp_path: Path) -> None:
    """The engine's peer run (the live ma_crossover under backtesting.py's fill model, see
    test_backtest_peer.py) reported: its metrics are backtesting.py's for the same strategy."""
    from test_backtest_peer import moonbus, reference

    result, stats = moonbus(10, 20, 0.002), reference(10, 20, 0.002)
    paths = report.write(result, tmp_path / "peer")
    summary = json.loads(paths["summary.json"].read_text())
    assert (summary["strategy"], summary["symbols"], summary["interval"]) == ("ma_crossover", ["GOOG-USD"], "1d")
    assert (summary["trades"], summary["open_trades"]) == (stats["# Trades"], 1)  # backtesting.py leaves it open too
    for ours in ("win_rate_pct", "best_trade_pct", "worst_trade_pct", "avg_trade_pct", "profit_factor",
                 "expectancy_pct", "sqn"):
        assert summary[ours] == pytest.approx(float(stats[SAME[ours]]), rel=1e-6), ours
    # the equity curves agree to half a cent a bar, so these to ~1e-6
    for ours in ("return_pct", "return_ann_pct", "volatility_ann_pct", "sharpe", "sortino", "calmar",
                 "max_drawdown_pct", "avg_drawdown_pct"):
        assert summary[ours] == pytest.approx(float(stats[SAME[ours]]), rel=1e-5), ours
    for ours, theirs in DURATIONS.items():
        assert summary[ours] == stats[theirs].total_seconds(), ours
    assert summary["fees"] == str(result.fees) and D(summary["fees"]) > 0
    rows = list(csv.DictReader(paths["trades.csv"].open()))
    assert len(rows) == len(result.trades) and rows[-1]["exit_ts"] == ""
    page = paths["report.html"].read_text()
    assert page.count('class="buy"') == len(result.trades) and page.count('class="sell"') == len(result.trades) - 1
    assert report.write(result, tmp_path / "again") and all(
        (tmp_path / "again" / name).read_bytes() == path.read_bytes() for name, path in paths.items())
