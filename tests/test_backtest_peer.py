"""moonbus reproduces backtesting.py (the reference its users know) on its own bundled
data: with the equivalent fill model (services/backtest/presets.py), the SMA-crossover
strategy's trades (bars, sizes, prices) and final equity equal backtesting.py's, to the
cent. The strategy on the moonbus side is the live trading agent's ma_crossover."""

from __future__ import annotations

import warnings
from decimal import Decimal
from pathlib import Path

import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import GOOG, SMA

import backtesting
from services.backtest import data, engine, presets

GOOG_CSV = Path(backtesting.__file__).parent / "test" / "GOOG.csv"


class SmaCrossLong(Strategy):
    """backtesting.py's SmaCross example, long only (moonbus trades spot: no shorts)."""

    n1 = 10
    n2 = 20

    def init(self) -> None:
        self.sma1 = self.I(SMA, self.data.Close, self.n1)
        self.sma2 = self.I(SMA, self.data.Close, self.n2)

    def next(self) -> None:
        if crossover(self.sma1, self.sma2):
            self.buy()
        elif crossover(self.sma2, self.sma1):
            self.position.close()


def reference(n1: int, n2: int, commission: float):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "trades remain open at the end"
        return Backtest(GOOG, SmaCrossLong, cash=10_000, commission=commission).run(n1=n1, n2=n2)


def moonbus(n1: int, n2: int, commission: float):
    preset = presets.backtesting_py(commission=commission, cash=10_000)
    [series] = data.load(GOOG_CSV)
    return engine.run([series], strategy="ma_crossover", params=preset["params"] | {"ma_fast": n1, "ma_slow": n2},
                      overrides=preset["overrides"])


@pytest.mark.parametrize(("n1", "n2", "commission"), [(10, 20, 0.002), (5, 30, 0.0), (20, 50, 0.001)])
def test_trades_and_final_equity_equal_backtesting_py(n1: int, n2: int, commission: float) -> None:
    stats = reference(n1, n2, commission)
    result = moonbus(n1, n2, commission)

    closed = [t for t in result.trades if t.exit_bar is not None]
    theirs = stats._trades
    assert len(closed) == len(theirs) > 10
    for ours, their in zip(closed, theirs.itertuples()):
        assert (int(ours.quantity), ours.entry_bar, ours.exit_bar) == (their.Size, their.EntryBar, their.ExitBar)
        assert ours.entry_price == Decimal(str(their.EntryPrice))
        assert ours.exit_price == Decimal(str(their.ExitPrice))
        assert ours.entry_ts == int(their.EntryTime.value) and ours.exit_ts is not None
        assert abs(ours.pnl - Decimal(str(their.PnL))) < Decimal("0.000001")
    # The trade still open at the end is backtesting.py's open position.
    still_open = [t for t in result.trades if t.exit_bar is None]
    assert sum(int(t.quantity) for t in still_open) == stats._strategy.position.size
    assert abs(result.final_equity - Decimal(str(stats["Equity Final [$]"]))) < Decimal("0.005")
    # Every bar's equity, not only the last.
    curve = stats._equity_curve["Equity"].tolist()
    assert len(result.equity) == len(curve)
    assert max(abs(float(ours) - theirs) for ours, theirs in zip(result.equity, curve)) < 0.005
    assert not result.rejections


def test_a_rule_of_risk_still_applies_under_the_preset() -> None:
    """The preset opens risk's limits wide; it does not switch risk off: a max_order_notional
    below the all-in size refuses every entry, with risk's reason."""
    preset = presets.backtesting_py(commission=0.002)
    preset["overrides"]["risk"]["max_order_notional"] = "5000"
    [series] = data.load(GOOG_CSV)
    result = engine.run([series], strategy="ma_crossover", params=preset["params"] | {"ma_fast": 10, "ma_slow": 20},
                        overrides=preset["overrides"])
    assert not result.fills
    assert result.rejections and all(r.reason.startswith("max_order_notional") for r in result.rejections)


def test_moon_backtest_with_the_preset_gives_backtesting_pys_equity(tmp_path: Path) -> None:
    """The same comparison as a user makes it: `moon backtest GOOG.csv --preset backtesting.py:0.002`."""
    import json
    import subprocess
    import sys

    from services.common.config import REPO_ROOT

    done = subprocess.run([sys.executable, "-m", "services.cli", "backtest", str(GOOG_CSV), "--strategy",
                           "ma_crossover", "--preset", "backtesting.py:0.002", "-p", "fast=10", "-p", "slow=20",
                           "--out", str(tmp_path), "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["summary"]
    expected = reference(10, 20, 0.002)["Equity Final [$]"]
    assert abs(Decimal(summary["equity_final"]) - Decimal(str(expected))) < Decimal("0.005")
    assert summary["trades"] == reference(10, 20, 0.002)["# Trades"]
