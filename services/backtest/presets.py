"""Named sets of settings for `engine.run` (and `moon backtest --preset NAME`).

`backtesting_py(commission, cash)`: the fill model of backtesting.py's defaults, so a
strategy can be compared trade for trade with it (tests/test_backtest_peer.py):

| backtesting.py                       | moonbus                                             |
|--------------------------------------|-----------------------------------------------------|
| market order filled at the next open | the default (`trade_on_close=False`)                |
| `commission=c` on entry and exit     | [execution] fee_bps = c * 10000 (and risk's estimate)|
| `spread=0`                           | [execution] slippage_bps = 0                         |
| `buy()`: all the cash, whole units   | sizing "all_in", cash_pct 0, quantity_step 1         |
| `position.close()`                   | a SELL of a long: reduces all of it under all_in     |
| `position.close(); sell()`           | with `allow_short = true`: the SELL closes the long  |
|                                      | and opens an all-in short (a BUY the other way)      |
| no risk rules                        | risk's limits opened wide (they still run, and a     |
|                                      | rule that would refuse does refuse)                  |

Differences that remain: moonbus is long only unless `[trading_agent] allow_short` (then a
SELL without a long opens a short, and a signal against the position flips it), and sizes
in exact decimals where backtesting.py uses floats (a quantity at an exact boundary of
floor(cash / price) could differ by one unit).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

WIDE_OPEN = "1000000000000"  # 1e12: no limit that a backtest of normal size reaches


def backtesting_py(commission: float = 0.0, cash: int | str = 10_000) -> dict[str, Any]:
    """`params` and `overrides` for engine.run equivalent to
    `Backtest(data, strategy, cash=cash, commission=commission)`."""
    if not 0 <= commission < 1:
        raise ValueError(f"commission {commission} must be a fraction in [0, 1)")
    fee_bps = float(Decimal(str(commission)) * 10_000)
    return {
        "params": {"sizing": "all_in", "cash_pct": 0.0, "quantity_step": "1", "fee_bps": fee_bps,
                   "ma_min_gap_pct": 0.0},
        "overrides": {
            "execution": {"fee_bps": fee_bps, "slippage_bps": 0.0},
            "risk": {"starting_cash": str(cash), "fee_bps": fee_bps, "min_cash": "0",
                     "max_order_notional": WIDE_OPEN, "max_position_notional": WIDE_OPEN,
                     "max_gross_exposure": WIDE_OPEN, "max_daily_loss": WIDE_OPEN, "max_drawdown_pct": 100.0,
                     "circuit_breaker_pct": 0.0, "price_band_pct": 0.0,
                     # daily bars: a mark is a day old when the next order comes
                     "stale_after_ms": 10 * 365 * 86_400_000},
        },
    }


PRESETS = {"backtesting.py": backtesting_py}
