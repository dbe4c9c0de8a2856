"""Backtest speed: one million 1-minute bars of one symbol, the SMA-crossover strategy
(long only, commission 0.1 %) with slow averages (50/200) and fast ones (10/30), moonbus (services/backtest/engine.py:
the live trading agent's strategy and plan, rust-risk's rules and the paper venue)
against backtesting.py on the same bars, in the same run.

Each side runs in its own process (peak RSS is its own; backtesting.py's numpy without
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which slow a current numpy on this machine). The
time of a run excludes reading the file (both are given as figures): backtesting.py gets
a DataFrame from pandas.read_csv, moonbus a BarSeries from services/backtest/data.py.
The bars are a seeded random walk with 4 decimals (few exact ties between the averages,
where the two differ by design: see services/backtest/presets.py), so both should make
the same trades; the result says whether they did.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.__main__ import Context

CASES = {"sma_50_200": (50, 200), "sma_10_30": (10, 30)}
COMMISSION = 0.001
START_S = 1_600_000_000


def write_bars(path: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    price = 100.0
    with path.open("w") as f:
        f.write("Date,Open,High,Low,Close,Volume\n")
        for i in range(n):
            open_ = price
            price = max(1.0, price * (1 + rng.gauss(0, 0.001)))
            high = max(open_, price) * (1 + abs(rng.gauss(0, 0.0005)))
            low = min(open_, price) * (1 - abs(rng.gauss(0, 0.0005)))
            f.write(f"{START_S + 60 * i},{open_:.4f},{high:.4f},{low:.4f},{price:.4f},{rng.randint(1, 1000)}\n")


MOONBUS = """
import json, resource, sys, time
from services.backtest import data, engine, presets
path, fast, slow, commission = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
t = time.perf_counter(); [series] = data.load(path, symbol="BTC-USD"); load = time.perf_counter() - t
preset = presets.backtesting_py(commission=commission)
t = time.perf_counter()
result = engine.run([series], strategy="ma_crossover", params=preset["params"] | {"ma_fast": fast, "ma_slow": slow},
                    overrides=preset["overrides"])
run = time.perf_counter() - t
print(json.dumps({"bars": len(series), "load_s": load, "run_s": run,
                  "trades": sum(1 for tr in result.trades if tr.exit_bar is not None),
                  "final_equity": str(result.final_equity),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BACKTESTING_PY = """
import json, resource, sys, time, warnings
import pandas as pd
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import SMA
path, fast, slow, commission = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

class SmaCrossLong(Strategy):
    def init(self):
        self.fast = self.I(SMA, self.data.Close, fast)
        self.slow = self.I(SMA, self.data.Close, slow)
    def next(self):
        if crossover(self.fast, self.slow):
            self.buy()
        elif crossover(self.slow, self.fast):
            self.position.close()

t = time.perf_counter()
df = pd.read_csv(path); df.index = pd.to_datetime(df.pop("Date"), unit="s")
load = time.perf_counter() - t
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    stats = Backtest(df, SmaCrossLong, cash=10_000, commission=commission).run()
    run = time.perf_counter() - t
print(json.dumps({"bars": len(df), "load_s": load, "run_s": run, "trades": int(stats["# Trades"]),
                  "final_equity": repr(float(stats["Equity Final [$]"])),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _side(code: str, path: Path, root: Path, fast: int, slow: int, drop_env: tuple[str, ...] = ()) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    out = subprocess.run([sys.executable, "-c", code, str(path), str(fast), str(slow), str(COMMISSION)],
                         cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["bars_per_s"] = round(figures["bars"] / figures["run_s"])
    figures["load_bars_per_s"] = round(figures["bars"] / figures["load_s"])
    return figures


def run(ctx: Context) -> dict[str, Any]:
    bars = 100_000 if ctx.quick else 1_000_000
    out: dict[str, Any] = {"bars": bars, "commission": COMMISSION, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="moonbus-bench-") as tmp:
        path = Path(tmp) / "bars.csv"
        write_bars(path, bars)
        for name, (fast, slow) in CASES.items():
            ours = _side(MOONBUS, path, ctx.root, fast, slow)
            theirs = _side(BACKTESTING_PY, path, ctx.root, fast, slow,
                           drop_env=("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
            out["cases"][name] = {
                "strategy": f"SMA crossover {fast}/{slow}, long only",
                "moonbus": ours,
                "backtesting_py": theirs,
                "speedup_run": round(theirs["run_s"] / ours["run_s"], 2),
                "same_trades": ours["trades"] == theirs["trades"],
                "final_equity_difference": abs(float(ours["final_equity"]) - float(theirs["final_equity"])),
            }
    return out
