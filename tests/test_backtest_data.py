"""services/backtest/data.py: real files (written to tmp_path, plus backtesting.py's bundled
GOOG/EURUSD/BTCUSD data) through load / load_many; every refusal names its file line."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from backtesting import test as backtesting_test  # the reference backtester, a test dependency

from services.backtest.data import BarSeries, DataError, interval_name, interval_ns, load, load_many
from services.contract.models import Bar

BUNDLED = Path(backtesting_test.__file__).parent
S = 1_000_000_000
MIN = 60 * S
T0 = 1_704_067_200 * S  # 2024-01-01T00:00:00Z
D = Decimal


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one(path: Path, **kw) -> BarSeries:
    [series] = load(path, **kw)
    return series


def assert_valid_bars(series: BarSeries) -> None:
    for i in (0, len(series) // 2, -1):
        bar = series.bar(i)
        assert Bar.model_validate(bar.model_dump()) == bar


def refused(path: Path, **kw) -> str:
    with pytest.raises(DataError) as caught:
        load(path, **kw)
    return str(caught.value)


# ------------------------------------------------------------------ OHLCV (pandas / backtesting.py)


def test_backtesting_goog_loads_as_backtesting_reads_it():
    goog = one(BUNDLED / "GOOG.csv")
    frame = backtesting_test.GOOG  # backtesting.py's own DataFrame of the same file
    assert (goog.symbol, goog.venue, goog.interval) == ("GOOG-USD", "backtest", "1d")
    assert len(goog) == len(frame) == 2148
    assert goog.start_ts == [int(t) for t in frame.index.as_unit("ns").asi8]
    assert [float(x) for x in goog.close] == list(frame.Close)
    # exact text, never through a float
    assert (goog.open[0], goog.high[0], goog.low[0], goog.close[0], goog.volume[0]) == (
        D("100"), D("104.06"), D("95.96"), D("100.34"), D("22351900"))
    # weekends are gaps (smallest step 1 day), not errors; the first: Fri 20 -> Mon 23 Aug 2004
    assert goog.gaps[0] == (goog.start_ts[1], 2)
    assert all(n >= 1 for _, n in goog.gaps)
    bar = goog.bar(0)
    assert (bar.start_ts, bar.end_ts, bar.trades) == (goog.start_ts[0], goog.start_ts[0] + 86400 * S, 0)
    assert_valid_bars(goog)


def test_backtesting_eurusd_is_hourly_and_btcusd_monthly_is_refused():
    eurusd = one(BUNDLED / "EURUSD.csv")
    assert (eurusd.symbol, eurusd.interval, len(eurusd)) == ("EUR-USD", "1h", 5000)
    assert eurusd.close[0] == D("1.07219")
    assert_valid_bars(eurusd)
    # monthly bars: no interval of the contract (1s..1d) fits
    message = refused(BUNDLED / "BTCUSD.csv")
    assert re.fullmatch(r".*BTCUSD\.csv:\d+: BTC-USD: the smallest step between bars is "
                        r"2419200 s, not an interval of whole seconds from 1s to 1d", message)


def test_ohlcv_header_names_dates_and_symbol(tmp_path):
    # named Date column, any case, offsets honoured, no Volume column
    path = write(tmp_path, "sol-usdc.csv", "date,OPEN,High,low,Close\n"
                 "2024-01-01T00:00:00Z,10,11,9,10.5\n"
                 "2024-01-01T02:05:00+02:00,10.5,10.5,10.1,10.2\n")
    series = one(path)
    assert (series.symbol, series.interval) == ("SOL-USDC", "5m")
    assert series.start_ts == [T0, T0 + 5 * MIN]
    assert series.volume == [D(0), D(0)]
    assert_valid_bars(series)
    # epoch numbers (s, ms), naive datetimes are UTC, symbol= wins over the file name
    path = write(tmp_path, "data.csv", "Timestamp,Open,High,Low,Close,Volume\n"
                 f"{T0 // S},1,1,1,1,0\n{T0 // 1_000_000 + 60_000},1,1,1,1,0\n")
    assert one(path, symbol="ETH-USD").start_ts == [T0, T0 + MIN]
    path = write(tmp_path, "data.csv", "Date,Open,High,Low,Close,Volume\n"
                 "20240101,1,1,1,1,0\n1704067201.5,1,1,1,1,0\n1704067203000000,1,1,1,1,0\n")
    assert one(path, symbol="ETH-USD", interval="1s").start_ts == [T0, T0 + 3 * S // 2, T0 + 3 * S]
    path = write(tmp_path, "btcusdt.csv", "Datetime,Open,High,Low,Close,Volume\n"
                 "2024-01-01 00:00:00,1,1,1,1,0.5\n2024-01-01 00:00:01,1,1,1,1,0\n")
    series = one(path)
    assert (series.symbol, series.interval, series.start_ts[0]) == ("BTC-USDT", "1s", T0)


def test_interval_given_or_inferred_from_the_smallest_step(tmp_path):
    rows = "".join(f"2024-01-01 00:{m:02d}:00,1,2,1,2,3\n" for m in (0, 5, 10, 12, 20))
    path = write(tmp_path, "x.csv", ",Open,High,Low,Close,Volume\n" + rows)
    assert one(path).interval == "2m"  # the minimum step, not the most common one
    assert one(path).gaps == [(T0, 1), (T0 + 5 * MIN, 1), (T0 + 12 * MIN, 3)]
    assert one(path, interval="1m").gaps == [(T0, 4), (T0 + 5 * MIN, 4), (T0 + 10 * MIN, 1),
                                             (T0 + 12 * MIN, 7)]
    assert refused(path, interval="5m") == (
        f"{path}:5: starts 2024-01-01T00:12:00Z, less than 5m after the bar before "
        "(2024-01-01T00:10:00Z): bars of 5m overlap")
    single = write(tmp_path, "y.csv", ",Open,High,Low,Close,Volume\n2024-01-01,1,1,1,1,1\n")
    assert refused(single) == f"{single}:2: Y-USD has one bar: pass interval=, it cannot be inferred"
    assert len(one(single, interval="1d")) == 1
    assert refused(single, interval="1w") == f"{single}: interval '1w' is not a number and s, m, h or d (1m, 4h)"
    assert refused(single, interval="2d") == f"{single}: interval 2d is not between 1s and 1d"
    assert (interval_ns("15m"), interval_name(15 * MIN), interval_name(90 * S)) == (15 * MIN, "15m", "90s")


def test_gaps_are_kept_or_refused_with_strict(tmp_path):
    path = write(tmp_path, "gappy.csv", "Date,Open,High,Low,Close,Volume\n"
                 "2024-01-01 00:00,1,1,1,1,1\n2024-01-01 00:01,1,1,1,1,1\n"
                 "2024-01-01 00:04,1,1,1,1,1\n2024-01-01 00:05,1,1,1,1,1\n")
    series = one(path)
    assert series.gaps == [(T0 + MIN, 2)]
    assert refused(path, strict=True) == (
        f"{path}:4: gap: 2 1m bar(s) missing before 2024-01-01T00:04:00Z (strict)")
    # slices keep the gaps inside them only
    assert series.slice(0, 3).gaps == [(T0 + MIN, 2)]
    assert series.slice(2, 4).gaps == []
    part = series.slice(1, 3)
    assert part.start_ts == [T0 + MIN, T0 + 4 * MIN] and len(part) == 2
    assert part.bar(1) == series.bar(2)


# ------------------------------------------------------------------ Binance klines


def kline(open_ms: int, o: str, h: str, lo: str, c: str, volume: str = "1.5", count: int = 7,
          unit: int = 1) -> str:
    return (f"{open_ms * unit},{o},{h},{lo},{c},{volume},{(open_ms + 59_999) * unit + unit - 1},"
            f"100.5,{count},0.7,50.2,0\n")


def test_binance_ms_and_us_dumps_read_the_same(tmp_path):
    ms = T0 // 1_000_000
    rows = [("42000.10", "42100", "41900.5", "42050"), ("42050", "42060", "42000", "42001.99")]
    old = write(tmp_path, "BTCUSDT-1m-2024-01-01.csv",
                "".join(kline(ms + i * 60_000, *r) for i, r in enumerate(rows)))
    # spot dumps from 2025 on count microseconds; some dumps have a header
    header = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
              "taker_buy_volume,taker_buy_quote_volume,ignore\n")
    (tmp_path / "us").mkdir()
    new = write(tmp_path / "us", "BTCUSDT-1m-2024-01-01.csv",
                header + "".join(kline(ms + i * 60_000, *r, unit=1000) for i, r in enumerate(rows)))
    a, b = one(old), one(new)
    assert a == b
    assert (a.symbol, a.venue, a.interval, a.start_ts) == ("BTC-USDT", "backtest", "1m", [T0, T0 + MIN])
    assert (a.open[0], a.close[1], a.volume[0], a.trades) == (D("42000.10"), D("42001.99"), D("1.5"), [7, 7])
    assert a.bar(0).trades == 7
    assert_valid_bars(a)


def test_binance_interval_from_the_name_and_alignment(tmp_path):
    ms = T0 // 1_000_000
    path = write(tmp_path, "ETHUSDT-5m-2024-01.csv", kline(ms, "1", "1", "1", "1")
                 + kline(ms + 15 * 60_000, "1", "1", "1", "1"))
    series = one(path, venue="binance")
    assert (series.symbol, series.venue, series.interval, series.gaps) == ("ETH-USDT", "binance", "5m", [(T0, 2)])
    misaligned = write(tmp_path, "ETHUSDT-5m-2024-02.csv", kline(ms, "1", "1", "1", "1")
                       + kline(ms + 6 * 60_000, "1", "1", "1", "1"))
    assert refused(misaligned) == (
        f"{misaligned}:2: a 5m bar must start on a whole 5m since the epoch, not at 2024-01-01T00:06:00Z")
    # another name: symbol= is needed (and the interval is inferred)
    other = write(tmp_path, "klines.csv", kline(ms, "1", "1", "1", "1") + kline(ms + 60_000, "1", "1", "1", "1"))
    assert "pass symbol=" in refused(other, fmt="binance")
    assert one(other, fmt="binance", symbol="SOLUSDT").symbol == "SOL-USDT"
    weekly = write(tmp_path, "BTCUSDT-1w-2024-01.csv", kline(ms, "1", "1", "1", "1"))
    assert refused(weekly) == f"{weekly}: interval '1w' is not a number and s, m, h or d (1m, 4h) (from the file name)"


# ------------------------------------------------------------------ replay files


def test_replay_bar_rows_several_symbols_csv_and_jsonl(tmp_path):
    csv_path = write(tmp_path, "bars.csv", "# bars of two symbols\n"
                     "ts,symbol,interval,open,high,low,close,volume,venue\n"
                     f"{T0},BTC-USD,1m,97000,97100,96900,97050.5,2.5,\n"
                     f"{T0},ETH-USD,1m,3500,3510,3490,3505,10,coinbase\n"
                     "\n"
                     f"{T0 + MIN},BTC-USD,1m,97050.5,97060,97000,97001,0,\n"
                     f"{T0 + 3 * MIN},BTC-USD,1m,97001,97001,96000,96500,1,\n")
    btc, eth = load(csv_path)
    assert (btc.symbol, btc.venue, btc.interval, btc.start_ts) == ("BTC-USD", "backtest", "1m", [T0, T0 + MIN, T0 + 3 * MIN])
    assert btc.gaps == [(T0 + MIN, 1)] and btc.close == [D("97050.5"), D("97001"), D("96500")]
    assert (eth.symbol, eth.venue, len(eth)) == ("ETH-USD", "coinbase", 1)
    assert_valid_bars(btc)
    jsonl = tmp_path / "bars.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in [
        {"ts": T0, "symbol": "BTC-USD", "interval": "1m", "open": "97000", "high": "97100",
         "low": "96900", "close": "97050.5", "volume": "2.5"},
        {"ts": T0, "symbol": "ETH-USD", "interval": "1m", "open": 3500, "high": 3510,
         "low": 3490, "close": 3505, "volume": 10, "venue": "coinbase"},
    ]) + f'{{"ts": {T0 + MIN}, "symbol": "BTC-USD", "interval": "1m", "open": 97050.5, '
         f'"high": 97060, "low": 97000, "close": 97001.10, "volume": 0.1}}\n')
    btc2, eth2 = load(jsonl)
    assert btc2.close == [D("97050.5"), D("97001.10")]  # JSON numbers kept as their text
    assert btc2.volume == [D("2.5"), D("0.1")] and eth2 == eth
    [only_eth] = load(csv_path, symbol="ETH-USD")
    assert only_eth == eth


def test_ticks_become_the_bars_bars_rs_makes(tmp_path):
    # By hand, with bars.rs's rule (epoch-aligned 1m; first/max/min/last price; sizes
    # summed, a tick without size adds 0; one trade per tick; no tick, no bar):
    #   BTC 60.000 s 100 x1, 70 s 102 x0.5, 119.999 s 99 x2  -> [60 s) 100/102/99/99 vol 3.5, 3 trades
    #   BTC 185 s 101 (no size)                                -> [180 s) 101/101/101/101 vol 0, 1 trade
    #   ETH 61 s 10 x1, 62 s 10 x1 (equal ts allowed: two trades at once is not an error)
    path = write(tmp_path, "ticks.csv", "ts,symbol,price,bid,ask,size\n"
                 f"{60 * S},BTC-USD,100,99.9,100.1,1\n"
                 f"{61 * S},ETH-USD,10,,,1\n"
                 f"{61 * S},ETH-USD,10.5,,,1\n"
                 f"{70 * S},BTC-USD,102,,,0.5\n"
                 f"{120 * S - 1},BTC-USD,99,,,2\n"
                 f"{185 * S},BTC-USD,101,,,\n")
    btc, eth = load(path, interval="1m")
    assert btc.interval == "1m" and btc.start_ts == [60 * S, 180 * S]
    assert (btc.open, btc.high, btc.low, btc.close) == (
        [D(100), D(101)], [D(102), D(101)], [D(99), D(101)], [D(99), D(101)])
    assert btc.volume == [D("3.5"), D(0)] and btc.trades == [3, 1] and btc.gaps == [(60 * S, 1)]
    assert (eth.start_ts, eth.close, eth.volume, eth.trades) == ([60 * S], [D("10.5")], [D(2)], [2])
    assert btc.bar(0).end_ts == 120 * S and btc.bar(0).trades == 3
    assert_valid_bars(btc)
    assert refused(path) == f"{path}:2: tick rows need interval= (the length of the bars to build)"


def test_the_shipped_replay_sample(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "data" / "replay_sample.csv"
    series = load(sample, interval="1s")
    assert [s.symbol for s in series] == ["BTC-USD", "ETH-USD", "SOL-USDC"]
    for s in series:
        assert len(s) == 120 and s.trades == [2] * 120 and s.gaps == []
        assert_valid_bars(s)
    assert series[0].open[0] == D("97000.00") and series[0].close[0] == D("97059.20")
    assert series[0].volume[0] == D("0.0900")


# ------------------------------------------------------------------ load_many


def test_load_many_merges_a_symbol_in_time_order_and_refuses_overlap(tmp_path):
    ms = T0 // 1_000_000
    day = 86_400_000
    first = write(tmp_path, "BTCUSDT-1h-2024-01-01.csv",
                  "".join(kline(ms + h * 3_600_000, "1", "2", "1", "2") for h in range(24)))
    second = write(tmp_path, "BTCUSDT-1h-2024-01-02.csv",
                   "".join(kline(ms + day + h * 3_600_000, "2", "3", "2", "3") for h in range(24)))
    fourth = write(tmp_path, "BTCUSDT-1h-2024-01-04.csv", kline(ms + 3 * day, "3", "3", "3", "3"))
    eth = write(tmp_path, "ETHUSDT-1h-2024-01-01.csv", kline(ms, "1", "1", "1", "1"))
    btc, eth_series = load_many([fourth, second, eth, first])
    assert (btc.symbol, len(btc), btc.interval, eth_series.symbol) == ("BTC-USDT", 49, "1h", "ETH-USDT")
    assert btc.start_ts == sorted(btc.start_ts) and btc.gaps == [(T0 + 47 * 3600 * S, 24)]
    assert btc.trades == [7] * 49
    overlap = tmp_path / "more" / "BTCUSDT-1h-2024-01-01.csv"
    overlap.parent.mkdir()
    overlap.write_text(kline(ms + 3 * 3_600_000 - day, "1", "1", "1", "1")
                       + kline(ms + 23 * 3_600_000, "1", "1", "1", "1"))
    with pytest.raises(DataError) as caught:
        load_many([first, overlap])
    assert str(caught.value) == (f"{first}:1: BTC-USDT's bars overlap {overlap}'s, which run to "
                                 "2024-01-01T23:00:00Z")


# ------------------------------------------------------------------ refusals, each with its line


HEADER = "Date,Open,High,Low,Close,Volume\n"
GOOD = "2024-01-01 00:00,10,11,9,10,5\n"


@pytest.mark.parametrize("name,text,row,reason", [
    ("unsorted", HEADER + GOOD + "2024-01-01 00:02,10,11,9,10,5\n2024-01-01 00:01,10,11,9,10,5\n", 4,
     "timestamp 2024-01-01T00:01:00Z is before the previous bar's 2024-01-01T00:02:00Z (rows must be in time order)"),
    ("duplicate", HEADER + GOOD + GOOD, 3,
     "duplicate timestamp 2024-01-01T00:00:00Z: the bar before has the same"),
    ("not a decimal", HEADER + "2024-01-01 00:00,10,11,9,ten,5\n", 2, "close 'ten' is not a decimal number"),
    ("nan", HEADER + GOOD + "2024-01-01 00:01,NaN,11,9,10,5\n", 3, "open 'NaN' is not a finite number"),
    ("inf", HEADER + "2024-01-01 00:00,10,inf,9,10,5\n", 2, "high 'inf' is not a finite number"),
    ("zero price", HEADER + "2024-01-01 00:00,0,11,0,10,5\n", 2, "open 0 must be greater than zero"),
    ("negative price", HEADER + "2024-01-01 00:00,10,11,-9,10,5\n", 2, "low -9 must be greater than zero"),
    ("negative volume", HEADER + "2024-01-01 00:00,10,11,9,10,-5\n", 2, "volume -5 must not be negative"),
    ("too large", HEADER + "2024-01-01 00:00,10,100000000000000,9,10,5\n", 2,
     "high 100000000000000 is too large (money stays below 1e14)"),
    ("too fine", HEADER + "2024-01-01 00:00,10,11,9,10,1e-30\n", 2,
     "volume 1e-30 has more digits than money holds (at most 28 after the point, and below 2^96 "
     "with the point taken out)"),
    ("too many places", HEADER + "2024-01-01 00:00,10,11,9,10." + "0" * 29 + ",5\n", 2,
     "close 10." + "0" * 29 + " has more digits than money holds (at most 28 after the point, and "
     "below 2^96 with the point taken out)"),
    ("high below", HEADER + GOOD + "2024-01-01 00:01,10,10.5,9,11,5\n", 3, "high 10.5 is below max(open 10, close 11)"),
    ("low above", HEADER + "2024-01-01 00:00,10,11,10.5,10.6,5\n", 2, "low 10.5 is above min(open 10, close 10.6)"),
    ("column count", HEADER + GOOD + "2024-01-01 00:01,10,11,9,10\n", 3, "5 values for 6 columns"),
    ("too late", HEADER + GOOD + f"{2**64},10,11,9,10,5\n", 3,
     f"timestamp {2**64} ns is past the year 2554"),
    ("bad date", HEADER + "yesterday,10,11,9,10,5\n", 2,
     "date 'yesterday' is neither an ISO date/datetime nor an epoch number"),
    ("missing columns", "Date,Open,Close,Volume\n" + "2024-01-01,1,1,1\n", 1,
     "missing columns: high, low (the header is Date,Open,Close,Volume)"),
    ("no date column", "When,Open,High,Low,Close\n" + "2024-01-01,1,1,1,1\n", 1,
     "missing columns: date (or an unnamed first column) (the header is When,Open,High,Low,Close)"),
])
def test_ohlcv_refusals_name_the_row(tmp_path, name, text, row, reason):
    path = write(tmp_path, "BTC-USD.csv", text)
    assert refused(path) == f"{path}:{row}: {reason}"


@pytest.mark.parametrize("name,text,row,reason", [
    ("column count", "1704067200000,1,1,1,1,1,1704067259999,1,1,1,1\n", 1,
     "11 values, a Binance kline row has 12"),
    ("open_time", "2024-01-01,1,1,1,1,1,1704067259999,1,1,1,1,0\n", 1,
     "open_time '2024-01-01' is not an integer (ms or µs since the epoch)"),
    ("count", "1704067200000,1,1,1,1,1,1704067259999,1,x,1,1,0\n", 1, "count 'x' is not a whole number of trades"),
    ("bad price", "1704067200000,1,1,1,1,1,1704067259999,1,1,1,1,0\n"
                  "1704067260000,1,1,1,1e999999999,1,1704067319999,1,1,1,1,0\n", 2,
     "close 1e999999999 is too large (money stays below 1e14)"),
    ("unsorted", "1704067260000,1,1,1,1,1,1704067319999,1,1,1,1,0\n"
                 "1704067200000,1,1,1,1,1,1704067259999,1,1,1,1,0\n", 2,
     "timestamp 2024-01-01T00:00:00Z is before the previous bar's 2024-01-01T00:01:00Z (rows must be in time order)"),
])
def test_binance_refusals_name_the_row(tmp_path, name, text, row, reason):
    path = write(tmp_path, "BTCUSDT-1m-2024-01-01.csv", text)
    assert refused(path) == f"{path}:{row}: {reason}"


@pytest.mark.parametrize("name,text,row,reason", [
    ("missing columns", "ts,symbol,open,high,close\n", 1, "missing columns: low, interval"),
    ("no price column", "ts,symbol,size\n", 1,
     "missing columns: price (tick rows) or open, high, low, close, interval (bar rows)"),
    ("column count", "# c\nts,symbol,price\n5,BTC-USD,1,2\n", 3, "4 values for 3 columns"),
    ("bad symbol", "ts,symbol,price\n5,btc,1\n", 2, "symbol 'btc' is not BASE-QUOTE (BTC-USD)"),
    ("symbol like a venue", "ts,symbol,price\n5,backtest,1\n", 2, "symbol 'backtest' is not BASE-QUOTE (BTC-USD)"),
    ("bad venue", "ts,symbol,price,venue\n5,BTC-USD,1,Bin ance\n", 2,
     "venue 'Bin ance' is not lowercase letters, digits and _"),
    ("bad ts", "ts,symbol,price\n1.5,BTC-USD,1\n", 2, "ts '1.5' is not an integer of nanoseconds"),
    ("no price", "ts,symbol,price\n5,BTC-USD,\n", 2, "no price"),
    ("bad size", "ts,symbol,price,size\n5,BTC-USD,1,-1\n", 2, "size -1 must not be negative"),
    ("bad bid", "ts,symbol,price,bid\n5,BTC-USD,1,x\n", 2, "bid 'x' is not a decimal number"),
    ("unsorted ticks", "ts,symbol,price\n10,BTC-USD,1\n9,BTC-USD,1\n", 3,
     "timestamp 1970-01-01T00:00:00Z (+9 ns) is before the previous tick's "
     "1970-01-01T00:00:00Z (+10 ns) (rows must be in time order)"),
    ("not aligned", f"ts,symbol,interval,open,high,low,close\n{T0 + S},BTC-USD,1m,1,1,1,1\n", 2,
     "a 1m bar must start on a whole 1m since the epoch, not at 2024-01-01T00:00:01Z"),
    ("interval changes", f"ts,symbol,interval,open,high,low,close\n{T0},BTC-USD,1m,1,1,1,1\n"
                         f"{T0 + MIN},BTC-USD,5m,1,1,1,1\n", 3, "interval 5m, but earlier rows of BTC-USD say 1m"),
    ("ticks and bars", f"ts,symbol,interval,open,high,low,close,price\n{T0},BTC-USD,1m,1,1,1,1,\n"
                       f"{T0 + MIN},BTC-USD,,,,,,5\n", 3, "a tick row, but earlier rows of BTC-USD are bar rows"),
])
def test_replay_refusals_name_the_row(tmp_path, name, text, row, reason):
    path = write(tmp_path, "replay.csv", text if text.count("\n") > 1 else text + f"{T0},BTC-USD,1\n")
    assert refused(path, interval="1m") == f"{path}:{row}: {reason}"


def test_replay_jsonl_refusals(tmp_path):
    path = write(tmp_path, "r.jsonl", '{"ts": 1, "symbol": "BTC-USD", "price": "1"}\n[1]\n')
    assert refused(path, interval="1s") == f"{path}:2: not a JSON object"
    path = write(tmp_path, "s.jsonl", '{"ts": 1, "symbol": "BTC-USD", "price": NaN}\n')
    assert refused(path, interval="1s") == f"{path}:1: price 'NaN' is not a finite number"
    path = write(tmp_path, "t.jsonl", '{"ts": 1, "symbol": "BTC-USD", "price": [1]}\n')
    assert refused(path, interval="1s") == f"{path}:1: price: [1] is not a string or a number"


def test_whole_file_refusals(tmp_path):
    empty = write(tmp_path, "empty.csv", "")
    assert refused(empty) == f"{empty}: no bars: the file is empty"
    header_only = write(tmp_path, "h.csv", HEADER)
    assert refused(header_only) == f"{header_only}: no bars: the file is empty"
    missing = tmp_path / "nope.csv"
    assert refused(missing) == f"{missing}: cannot read: No such file or directory"
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert refused(binary).startswith(f"{binary}: not UTF-8 text")
    good = write(tmp_path, "good.csv", HEADER + GOOD)
    assert refused(good, fmt="excel") == f"{good}: fmt='excel': one of auto, ohlcv, binance, replay"
    assert refused(good, venue="Bad Venue") == f"{good}: venue 'Bad Venue' is not lowercase letters, digits and _"
    odd = write(tmp_path, "my_data.csv", HEADER + GOOD)
    assert refused(odd, interval="1m") == (
        f"{odd}: 'my_data' cannot be a BASE-QUOTE symbol (BTC-USD): pass symbol=")
    assert one(odd, interval="1m", symbol="BTC-USD").symbol == "BTC-USD"


def test_long_files_stay_columnar(tmp_path):
    # Not timed (make bench measures speed): the columns are plain lists, a bar is made on demand.
    ms = T0 // 1_000_000
    rows = "".join(kline(ms + i * 60_000, "1.5", "2", "1", "1.75", count=i % 9) for i in range(20_000))
    series = one(write(tmp_path, "BTCUSDT-1m-2024-01.csv", rows))
    assert len(series) == 20_000 and type(series.close) is list and type(series.start_ts[0]) is int
    assert series.bar(19_999).start_ts == T0 + 19_999 * MIN and series.trades[-1] == 19_999 % 9
