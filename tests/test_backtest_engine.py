"""The backtest engine (services/backtest/engine.py) and the live rules it runs
(moonbus_sim, built from rust-backtest): event time, determinism, several symbols,
risk's rules and the paper venue's fill model as live, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
from decimal import Decimal

import moonbus_sim
import pytest

from services.backtest import engine, presets
from services.backtest.data import BarSeries
from services.backtest.engine import BacktestError
from services.common.config import REPO_ROOT

HOUR = 3_600_000_000_000
T0 = 1_700_000_000 // 3600 * 3600 * 1_000_000_000


def wave(symbol: str, n: int = 400, base: float = 100.0, period: int = 40, venue: str = "backtest") -> BarSeries:
    """Hourly bars on a sine wave: crossovers every half period."""
    closes = [Decimal(str(round(base * (1 + 0.05 * math.sin(2 * math.pi * i / period)), 2))) for i in range(n)]
    opens = [closes[0]] + closes[:-1]
    return BarSeries(symbol=symbol, venue=venue, interval="1h", start_ts=[T0 + i * HOUR for i in range(n)],
                     open=opens, high=[max(o, c) for o, c in zip(opens, closes)],
                     low=[min(o, c) for o, c in zip(opens, closes)], close=closes, volume=[Decimal(1)] * n)


def crossover(**params):
    preset = presets.backtesting_py(commission=0.001)
    return dict(strategy="ma_crossover", params=preset["params"] | {"ma_fast": 5, "ma_slow": 15} | params,
                overrides=preset["overrides"])


def test_same_inputs_give_byte_identical_results() -> None:
    runs = [engine.run([wave("BTC-USD"), wave("ETH-USD", base=50.0, period=30)], **crossover()) for _ in range(2)]
    first, second = (repr(dataclasses.asdict(r)) for r in runs)
    assert first == second
    assert runs[0].fills, "the strategy traded"


def test_fills_are_at_the_next_bars_open_on_event_time() -> None:
    series = wave("BTC-USD")
    result = engine.run([series], **crossover())
    assert result.fills
    for fill in result.fills:
        i = series.start_ts.index(fill.ts)  # stamped with a bar's start: no wall clock anywhere
        assert fill.price == series.open[i]
        assert fill.fee == fill.price * fill.quantity * Decimal("0.001")
    assert result.times == series.start_ts and len(result.equity) == len(series)


def test_trade_on_close_fills_at_the_deciding_bars_close() -> None:
    series = wave("BTC-USD")
    result = engine.run([series], trade_on_close=True, **crossover())
    assert result.fills
    for fill in result.fills:
        i = series.start_ts.index(fill.ts - HOUR + 1)
        assert fill.price == series.close[i]


def test_several_symbols_share_one_account() -> None:
    a, b = wave("BTC-USD"), wave("ETH-USD", base=50.0, period=30)
    both = engine.run([a, b], **crossover())
    assert {f.symbol for f in both.fills} == {"BTC-USD", "ETH-USD"}
    assert set(both.closes) == {"BTC-USD", "ETH-USD"}
    # One cash: all-in on the first symbol leaves nothing for the other while it is held.
    alone = engine.run([b], **crossover())
    assert [f for f in both.fills if f.symbol == "ETH-USD"] != alone.fills


def test_live_risk_limits_refuse_with_their_reason() -> None:
    """The default config's limits (max_order_notional 1000) with all-in sizing: every
    entry is refused by rust-risk, and says why."""
    result = engine.run([wave("BTC-USD")], strategy="ma_crossover",
                        params={"ma_fast": 5, "ma_slow": 15, "ma_min_gap_pct": 0, "sizing": "all_in"})
    assert not result.fills and result.rejections
    assert all(r.reason.startswith("max_order_notional") for r in result.rejections)


def test_the_default_sizing_trades_within_the_default_limits() -> None:
    series = wave("BTC-USD")
    result = engine.run([series], strategy="ma_crossover", params={"ma_fast": 5, "ma_slow": 15, "ma_min_gap_pct": 0})
    assert result.fills and not result.rejections
    for fill in result.fills:  # order_usd worth at the decision price (the open), slippage on top
        open_price = series.open[series.start_ts.index(fill.ts)]
        assert fill.quantity * open_price <= Decimal("100") < (fill.quantity + Decimal("0.000001")) * open_price
        assert fill.price > open_price if fill.side == "BUY" else fill.price < open_price


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(BacktestError, match="ma_fast"):
        engine.run([wave("BTC-USD")], strategy="ma_crossover", params={"ma_fast": 30, "ma_slow": 20})
    with pytest.raises(BacktestError, match="risk"):
        engine.run([wave("BTC-USD")], overrides={"risk": {"max_drawdown_pct": -5.0}})
    with pytest.raises(BacktestError, match="interval"):
        one = wave("BTC-USD")
        other = dataclasses.replace(wave("ETH-USD"), interval="1m")
        engine.run([one, other])
    with pytest.raises(BacktestError, match="no data"):
        engine.run([])


def sim() -> moonbus_sim.Simulator:
    text = (REPO_ROOT / "moonbus.toml").read_text()
    return moonbus_sim.Simulator(text, [("MOONBUS__EXECUTION__VENUES", '["backtest"]'),
                                        ("MOONBUS__SYSTEM__SYMBOLS", '["BTC-USD"]')])


def order(**fields) -> bytes:
    base = {"client_order_id": "bt-1", "agent": "trading", "symbol": "BTC-USD", "venue": "backtest",
            "side": "BUY", "type": "MARKET", "quantity": "0.5", "ts": T0, "origin_ts": T0}
    return json.dumps(base | fields).encode()


def test_the_simulator_never_executes_an_order_twice() -> None:
    s = sim()
    s.tick("backtest", "BTC-USD", "100", T0)
    [filled] = map(json.loads, s.submit(order()))
    assert filled["status"] == "FILLED" and filled["ts"] == T0
    assert s.submit(order()) == []  # the same client_order_id again: nothing
    account = json.loads(s.account())
    assert Decimal(account["fees"]) == Decimal(filled["last_fill_price"]) * Decimal("0.5") / 1000  # fee_bps 10


def test_the_simulator_rejects_bad_orders_with_the_reason() -> None:
    s = sim()
    s.tick("backtest", "BTC-USD", "100", T0)
    [bad] = map(json.loads, s.submit(b'{"client_order_id": "bt-2", "quantity": "-1"}'))
    assert bad["status"] == "REJECTED" and "must be greater than zero" in bad["reason"] and bad["ts"] == T0
    [venue] = map(json.loads, s.submit(order(client_order_id="bt-3", venue="binance")))
    assert venue["status"] == "REJECTED" and venue["reason"].startswith("unknown_venue")
    [limit] = map(json.loads, s.submit(order(client_order_id="bt-4", quantity="1000")))
    assert limit["status"] == "REJECTED" and limit["reason"].startswith("max_order_notional")
    with pytest.raises(ValueError, match="time goes back"):
        s.tick("backtest", "BTC-USD", "100", T0 - 1)
    with pytest.raises(ValueError, match="price"):
        s.tick("backtest", "BTC-USD", "-3", T0)


def test_a_resting_limit_order_fills_on_a_later_tick() -> None:
    s = sim()
    s.tick("backtest", "BTC-USD", "100", T0)
    [accepted] = map(json.loads, s.submit(order(type="LIMIT", limit_price="95", time_in_force="GTC")))
    assert accepted["status"] == "ACCEPTED"
    assert s.tick("backtest", "BTC-USD", "97", T0 + 1) == []
    [filled] = map(json.loads, s.tick("backtest", "BTC-USD", "94", T0 + 2))
    assert filled["status"] == "FILLED" and filled["last_fill_price"] == "95" and filled["ts"] == T0 + 2
