"""The rehearsal (issue #13): bars through the real running services, end to end.

Two symbols of 1-minute OHLCV bars (a few hundred) go through rust-market-data's replay on
the file's clock, the trading agent (MA crossover), rust-risk and rust-execution's paper
venue, started by the launcher of `make run`. Checked: market-data publishes exactly the
file's bars; every decision's order reaches execution and comes back in EXEC; risk's
positions and cash are those fills'; in lockstep the live path trades like the in-process
engine (services/backtest/engine.py) on the same bars.
"""

from __future__ import annotations

import asyncio
import json
import math
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.backtest import data, engine
from services.backtest.rehearsal import (
    RehearsalError,
    RehearsalResult,
    dump_toml,
    load_series,
    net_positions,
    rehearse_series,
)
from services.cli.main import app
from services.common import config as moon_config
from services.contract.models import OrderStatus
from services.devstack.launcher import SERVICES
from services.devstack.natsserver import REPO_ROOT

pytestmark = pytest.mark.e2e

BARS = 240
PARAMS = {"ma_fast": 5, "ma_slow": 20}


def write_ohlcv(path: Path, phase: float, base: float) -> None:
    """A wave (a cross every ~30 bars, none on the last bar: the engine has no next bar to
    fill it at) as backtesting.py writes OHLCV. No jump: the engine's circuit breaker runs
    on the bars' time, the rehearsal's is off (README "Rehearsal")."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    lines = ["Date,Open,High,Low,Close,Volume"]
    close = Decimal(f"{base:.2f}")
    for t in range(BARS):
        wave = math.sin(2 * math.pi * t / 60 + phase)
        open_, close = close, Decimal(f"{base + 8 * wave + t * 0.01:.2f}")
        high, low = max(open_, close) + Decimal("0.4"), min(open_, close) - Decimal("0.3")
        when = (start + timedelta(minutes=t)).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{when},{open_},{high},{low},{close},{1 + t % 5}.5")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup`")
    folder = tmp_path_factory.mktemp("rehearsal-data")
    write_ohlcv(folder / "AAA-USD.csv", 0.0, 100.0)
    write_ohlcv(folder / "BBB-USD.csv", 1.5, 50.0)
    return [folder / "AAA-USD.csv", folder / "BBB-USD.csv"]


@pytest.fixture(scope="module")
def series(files: list[Path]) -> list[data.BarSeries]:
    return load_series(files)


@pytest.fixture(scope="module")
async def lockstep(series: list[data.BarSeries]) -> RehearsalResult:
    return await rehearse_series(series, strategy="ma_crossover", params=PARAMS)


def ohlcv(bar: object) -> tuple:
    return tuple(getattr(bar, k) for k in ("symbol", "start_ts", "open", "high", "low", "close", "volume"))


async def test_market_data_publishes_exactly_the_files_bars(series: list[data.BarSeries],
                                                            lockstep: RehearsalResult) -> None:
    expected = sorted(ohlcv(s.bar(i)) for s in series for i in range(len(s)))
    assert len(expected) == 2 * BARS
    assert sorted(ohlcv(b) for b in lockstep.published) == expected
    assert lockstep.bars_in_file == len(lockstep.published) == lockstep.signals


async def test_orders_reach_execution_and_risk_holds_their_fills(lockstep: RehearsalResult) -> None:
    assert lockstep.orders >= 6, "the wave crosses several times per symbol"
    final = {r.client_order_id: r for r in lockstep.final}
    assert len(final) == lockstep.orders, "one final report in EXEC per order the agent sent"
    assert all(r.client_order_id.startswith("trd-") for r in final.values())
    assert [r.status for r in final.values()].count(OrderStatus.FILLED) == len(final), lockstep.rejections
    net = net_positions([(r.symbol, r.side.value, r.filled_quantity) for r in lockstep.fills])
    held = {p.symbol: p.quantity for p in lockstep.positions if p.quantity}
    assert held == {s: q for s, q in net.items() if q}
    spent = sum((r.filled_quantity * r.avg_fill_price * (1 if r.side.value == "BUY" else -1)
                 for r in lockstep.fills), Decimal(0))
    starting_cash = Decimal("10000")
    assert lockstep.account.cash == starting_cash - spent - lockstep.fees


async def test_in_lockstep_the_services_trade_like_the_engine(series: list[data.BarSeries],
                                                              lockstep: RehearsalResult) -> None:
    result = engine.run(series, strategy="ma_crossover", params=PARAMS)
    live = sorted((r.symbol, r.side.value, r.filled_quantity, r.avg_fill_price, r.fee) for r in lockstep.fills)
    assert live == sorted((f.symbol, f.side, f.quantity, f.price, f.fee) for f in result.fills)
    assert lockstep.account.equity == result.final_equity


async def test_moon_backtest_rehearse_prints_the_services_and_the_engine_side_by_side(files: list[Path]) -> None:
    args = ["backtest", *map(str, files), "--strategy", "ma_crossover", "-p", "fast=5", "-p", "slow=20",
            "--rehearse", "--json"]
    result = await asyncio.to_thread(CliRunner().invoke, app, args)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    live, theirs = outcome["rehearsal"], outcome["engine"]
    assert live["bars_published"] == live["decisions"] == theirs["decisions"] == 2 * BARS
    assert (live["fills"], live["fees"], live["equity"]) == (theirs["fills"], theirs["fees"], theirs["equity"])


async def test_the_firehose_decides_with_each_bars_own_history(series: list[data.BarSeries]) -> None:
    """Every bar at once: market-data runs far ahead of the agent, whose md.api.history then
    holds later bars; the agent still decides each bar on the bars up to it."""
    result = await rehearse_series(series, strategy="ma_crossover", params=PARAMS, lockstep=False)
    assert len(result.published) == result.signals == 2 * BARS
    assert result.orders >= 6
    assert len(result.final) == result.orders


def test_bars_market_data_would_cut_differently_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "XYZ-USD.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n2025-01-02 09:30:00,10,11,9,10,1\n"
                    "2025-01-02 10:30:00,10,11,9,10,1\n")
    with pytest.raises(RehearsalError, match="a 1h bar starts at 2025-01-02T09:30:00Z, not on a whole 1h"):
        load_series([path])


def test_the_written_config_reads_back_as_moonbus_toml() -> None:
    base = moon_config.load(REPO_ROOT / "moonbus.toml", {})
    assert tomllib.loads(dump_toml(base)) == base
