"""Rehearsal: bars/s through the real services (services/backtest/rehearsal.py), in lockstep and
as a firehose, with the in-process engine on the same bars in the same run as the baseline.

data/backtest/BTC-USD.csv (1,500 hourly bars; `--quick`: the first 300), MA crossover 5/20.
Each rehearsal starts its own nats-server, market-data, risk, execution and trading agent;
the time is from the first bar written to the last order settled (start-up not counted).
Also recorded: whether the rehearsal's fills and final equity equal the engine's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.__main__ import Context
from services.backtest import engine, rehearsal

DATA = "data/backtest/BTC-USD.csv"
PARAMS = {"ma_fast": 5, "ma_slow": 20}


def run(ctx: Context) -> dict:
    [series] = rehearsal.load_series([ctx.root / DATA])
    if ctx.quick:
        series = series.slice(0, 300)
    out: dict[str, Any] = {"data": DATA, "bars": len(series), "strategy": "ma_crossover", "params": PARAMS}
    started = time.perf_counter()
    result = engine.run([series], strategy="ma_crossover", params=PARAMS)
    elapsed = time.perf_counter() - started
    out["engine"] = {"bars_per_s": round(len(series) / elapsed, 1), "fills": len(result.fills),
                     "equity": str(result.final_equity)}
    for mode, lockstep in (("lockstep", True), ("firehose", False)):
        r = asyncio.run(rehearsal.rehearse_series([series], strategy="ma_crossover", params=PARAMS,
                                                  lockstep=lockstep))
        out[mode] = {"bars_per_s": round(r.bars_per_s, 1), "elapsed_s": round(r.elapsed_s, 3),
                     "bars_published": len(r.published), "fills": len(r.fills), "equity": str(r.account.equity),
                     "same_as_engine": len(r.fills) == len(result.fills) and r.account.equity == result.final_equity}
    out["summary"] = (f"{len(series)} bars: lockstep {out['lockstep']['bars_per_s']:.0f} bars/s "
                      f"(engine's result: {out['lockstep']['same_as_engine']}), firehose "
                      f"{out['firehose']['bars_per_s']:.0f} bars/s, engine {out['engine']['bars_per_s']:.0f} bars/s")
    return out
