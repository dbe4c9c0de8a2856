"""Historical bars for backtests: OHLCV CSV (pandas / backtesting.py), Binance kline CSV
(data.binance.vision dumps) and the project's replay files (bar rows, or tick rows built
into bars the way rust-market-data/src/bars.rs does). README "Backtest data".

Bars are kept by column (lists of int / Decimal; an open equal to the close before shares
its Decimal), so a million bars stay cheap; `BarSeries.bar(i)` makes the contract's `Bar`.
Prices go from the file's text straight into Decimal, never through a float. Anything
wrong in a file is a `DataError` "path:row: reason" (row = 1-based line of the file).
"""

from __future__ import annotations

import csv
import json
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from services.contract.models import (
    FAST_MONEY_CHARS,
    INTERVAL_PATTERN,
    MAX_DECIMAL_CHARS,
    MONEY_LIMIT,
    SYMBOL_PATTERN,
    U64_MAX,
    VENUE_PATTERN,
    Bar,
    fits_96_bits,
)

NS = 1_000_000_000
UNITS = {"s": NS, "m": 60 * NS, "h": 3600 * NS, "d": 86400 * NS}
MAX_INTERVAL_NS = UNITS["d"]  # 1s .. 1d, like the live bar intervals
FORMATS = ("auto", "ohlcv", "binance", "replay")
ZERO = Decimal(0)

# The quote currencies rust-market-data recognises at the end of a venue symbol
# (connectors/symbols.rs QUOTES, longest first): BTCUSDT -> BTC-USDT.
QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "EURI", "USD", "EUR", "TRY", "BRL", "JPY",
          "GBP", "BTC", "ETH", "BNB", "DAI")
DEFAULT_QUOTE = "USD"  # a name without one (GOOG) is priced in dollars, like backtesting.py's data

BINANCE_COLUMNS = 12  # open_time, open, high, low, close, volume, close_time, quote_volume, count, ...
BINANCE_NAME = re.compile(r"^([A-Z0-9]+)-([0-9]+[a-z]+)-[0-9]{4}-[0-9]{2}(-[0-9]{2})?$")
DATE_COLUMNS = ("date", "datetime", "time", "timestamp")

_SYMBOL = re.compile(SYMBOL_PATTERN)
_VENUE = re.compile(VENUE_PATTERN)
_INTERVAL = re.compile(INTERVAL_PATTERN)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)


class DataError(ValueError):
    """A file that cannot be loaded: str(e) == "path:row: reason" (row = 1-based line),
    or "path: reason" when it is about the whole file (unreadable, empty, an argument)."""

    def __init__(self, path: object, row: int | None, reason: str) -> None:
        self.path, self.row, self.reason = str(path), row, reason
        super().__init__(f"{path}:{row}: {reason}" if row else f"{path}: {reason}")


class _Bad(Exception):
    """A reason a row is bad; the reader adds path and row."""


M = TypeVar("M", bound=BaseModel)


def trusted(model: type[M], fields: dict[str, Any]) -> M:
    """A model of values already checked (every field given): what `model_construct`
    makes, without its per-call overhead (a backtest makes one per bar)."""
    instance = object.__new__(model)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(fields))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


@dataclass(frozen=True)
class BarSeries:
    """One (venue, symbol)'s bars, by column, start_ts strictly increasing."""

    symbol: str
    venue: str
    interval: str
    start_ts: list[int]  # ns since the epoch
    open: list[Decimal]
    high: list[Decimal]
    low: list[Decimal]
    close: list[Decimal]
    volume: list[Decimal]
    trades: list[int] | None = None  # trade counts when the file has them (Binance, ticks)
    # (start_ts of the bar before a gap, whole intervals missing after it)
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.start_ts)

    @cached_property
    def interval_ns(self) -> int:
        return interval_ns(self.interval)

    def bar(self, i: int) -> Bar:
        start = self.start_ts[i]
        # The values were checked when loaded; validating each bar again is too slow.
        return trusted(Bar, {
            "venue": self.venue, "symbol": self.symbol, "interval": self.interval,
            "open": self.open[i], "high": self.high[i], "low": self.low[i], "close": self.close[i],
            "volume": self.volume[i], "trades": self.trades[i] if self.trades is not None else 0,
            "start_ts": start, "end_ts": start + self.interval_ns})

    def slice(self, start: int, stop: int) -> BarSeries:
        """Bars [start, stop) (list slice semantics), with the gaps inside them."""
        ts = self.start_ts[start:stop]
        cut = slice(start, stop)
        return BarSeries(
            self.symbol, self.venue, self.interval, ts, self.open[cut], self.high[cut],
            self.low[cut], self.close[cut], self.volume[cut],
            self.trades[cut] if self.trades is not None else None,
            [g for g in self.gaps if ts and ts[0] <= g[0] < ts[-1]])


def interval_ns(name: str) -> int:
    """"1s" .. "1d" -> nanoseconds; ValueError for anything else."""
    if not isinstance(name, str) or not _INTERVAL.fullmatch(name):
        raise ValueError(f"interval {name!r} is not a number and s, m, h or d (1m, 4h)")
    ns = int(name[:-1]) * UNITS[name[-1]]
    if not NS <= ns <= MAX_INTERVAL_NS:
        raise ValueError(f"interval {name} is not between 1s and 1d")
    return ns


def interval_name(ns: int) -> str | None:
    """Nanoseconds -> "5m", "1d"...; None if it is not a whole number of seconds in 1s..1d."""
    if not NS <= ns <= MAX_INTERVAL_NS:
        return None
    for unit in "dhms":
        count, rest = divmod(ns, UNITS[unit])
        if not rest and _INTERVAL.fullmatch(name := f"{count}{unit}"):
            return name
    return None


def load(path: str | Path, *, symbol: str | None = None, venue: str = "backtest",
         interval: str | None = None, fmt: str = "auto", strict: bool = False) -> list[BarSeries]:
    """The bars of one file, one BarSeries per (venue, symbol) in order of first appearance.

    symbol: the symbol of an OHLCV or Binance file (default: from the file name); for a replay
    file, only that symbol's rows are read. interval: the bar length; inferred from the
    smallest step between bars when not given (or stated by the file); required for tick rows.
    strict: a gap (a whole interval without a bar) is an error instead of a `gaps` entry.
    """
    return load_many([path], symbol=symbol, venue=venue, interval=interval, fmt=fmt, strict=strict)


def load_many(paths: Iterable[str | Path], *, symbol: str | None = None, venue: str = "backtest",
              interval: str | None = None, fmt: str = "auto",
              strict: bool = False) -> list[BarSeries]:
    """Several files: a (venue, symbol) found in more than one is merged in time order;
    files whose bars overlap are an error."""
    merged: dict[tuple[str, str], list[_Part]] = {}
    for path in paths:
        for part in _read(str(path), symbol, venue, interval, fmt):
            merged.setdefault((part.venue, part.symbol), []).append(part)
    return [_finish(parts, interval, strict) for parts in merged.values()]


# ------------------------------------------------------------------ reading


class _Part:
    """One (venue, symbol)'s bars from one file, while it is read."""

    def __init__(self, path: str, venue: str, symbol: str, interval: str | None,
                 aligned: bool, counts: bool) -> None:
        self.path, self.venue, self.symbol = path, venue, symbol
        self.interval = interval  # as the file states it (None: inferred later)
        self.interval_line = 0  # where it was stated
        self.aligned = aligned  # bars must start on a multiple of the interval (epoch-aligned)
        self.ts: list[int] = []
        self.open: list[Decimal] = []
        self.high: list[Decimal] = []
        self.low: list[Decimal] = []
        self.close: list[Decimal] = []
        self.volume: list[Decimal] = []
        self.trades: list[int] | None = [] if counts else None
        self.lines: list[int] = []  # the file line of each bar (its first tick's, for ticks)
        self.last_tick = -1

    def state(self, name: str, line: int) -> None:
        """The file says the bars are `name` long (a replay bar row)."""
        if self.interval is None:
            self.interval, self.interval_line = name, line
        elif name != self.interval:
            raise _Bad(f"interval {name}, but earlier rows of {self.symbol} say {self.interval}")

    def extend(self, rows: Iterable[tuple[int, int, str, str, str, str, str, int | None]],
               reader: Any = None) -> None:
        """Appends bars (line, start_ts, open, high, low, close, volume, trades) after
        checking them. The hot loop of a load: locals only, checks per row not per value
        (low > 0 and high < 1e14 bound all four prices once high/low contain open/close).
        rows may come from a csv `reader`: its line_num is then where an error is."""
        ts_, open_, high_, low_, close_, volume_, lines_ = (
            c.append for c in (self.ts, self.open, self.high, self.low, self.close,
                               self.volume, self.lines))
        trades_ = self.trades.append if self.trades is not None else None
        last = self.ts[-1] if self.ts else -1
        line, o, h, lo, c, v, big = 0, "", "", "", "", "", FAST_MONEY_CHARS
        last_c, cp = "", ZERO
        try:
            for line, ts, o, h, lo, c, v, n in rows:
                if ts <= last:
                    _out_of_order(ts, last, "bar")
                # Most opens are the close before (always in Binance klines): one object.
                op = cp if o == last_c else Decimal(o)
                hp, lp, cp, vp = Decimal(h), Decimal(lo), Decimal(c), Decimal(v)
                last_c = c
                if (not (0 < lp and hp < MONEY_LIMIT and 0 <= vp < MONEY_LIMIT)
                        or hp < op or hp < cp or lp > op or lp > cp
                        or len(o) > big or len(h) > big or len(lo) > big or len(c) > big
                        or len(v) > big or "e" in (row := o + h + lo + c + v) or "E" in row):
                    # long texts and exponent forms (1e-30) may be finer than money holds
                    _diagnose(o, h, lo, c, v)
                last = ts
                ts_(ts)
                open_(op)
                high_(hp)
                low_(lp)
                close_(cp)
                volume_(vp)
                lines_(line)
                if trades_:
                    trades_(n or 0)
        except (_Bad, csv.Error, InvalidOperation, ValueError, TypeError) as e:
            if isinstance(e, DataError):
                raise
            reason = f"not valid CSV: {e}" if isinstance(e, csv.Error) else str(e)
            if not isinstance(e, (_Bad, csv.Error)):
                try:  # a Decimal refused: say which value and why
                    _diagnose(o, h, lo, c, v)
                except _Bad as bad:
                    reason = str(bad)
            raise DataError(self.path, reader.line_num if reader else line, reason) from None

    def tick(self, line: int, ts: int, price: str, size: str | None, length: int) -> None:
        """bars.rs: a tick opens the bar of its epoch-aligned interval or joins the open one
        (first, max, min, last price; sizes summed; one trade per tick). No tick, no bar."""
        if ts < self.last_tick:
            _out_of_order(ts, self.last_tick, "tick")
        self.last_tick = ts
        p = _number(price, "price", True)
        v = ZERO if size is None else _number(size, "size", False)
        start = ts - ts % length
        if self.ts and self.ts[-1] == start:
            self.high[-1] = max(self.high[-1], p)
            self.low[-1] = min(self.low[-1], p)
            self.close[-1] = p
            self.volume[-1] += v
            self.trades[-1] += 1  # type: ignore[index]
            if self.volume[-1] >= MONEY_LIMIT:
                raise _Bad("the bar's volume (sum of sizes) is 1e14 or more")
            return
        for column in (self.open, self.high, self.low, self.close):
            column.append(p)
        self.ts.append(start)
        self.volume.append(v)
        self.trades.append(1)  # type: ignore[union-attr]
        self.lines.append(line)


def _out_of_order(ts: int, before: int, what: str) -> None:
    if ts == before:
        raise _Bad(f"duplicate timestamp {_iso(ts)}: the {what} before has the same")
    raise _Bad(f"timestamp {_iso(ts)} is before the previous {what}'s {_iso(before)} "
               "(rows must be in time order)")


def _diagnose(o: str, h: str, lo: str, c: str, v: str) -> None:
    """Why a row's numbers were refused (the slow path, value by value)."""
    op, hp, lp, cp = (_number(t, n, True) for t, n in ((o, "open"), (h, "high"), (lo, "low"),
                                                        (c, "close")))
    _number(v, "volume", False)
    if hp < op or hp < cp:
        raise _Bad(f"high {h} is below max(open {o}, close {c})")
    if lp > op or lp > cp:
        raise _Bad(f"low {lo} is above min(open {o}, close {c})")


def _number(text: str, name: str, positive: bool) -> Decimal:
    """A price (positive) or an amount (>= 0) from its text, checked as the contract's
    money (finite, below 1e14, at most 40 characters, what a 96-bit decimal holds)."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        raise _Bad(f"{name} {text!r} is not a decimal number") from None
    if not value.is_finite():
        raise _Bad(f"{name} {text!r} is not a finite number")
    if positive and value <= 0:
        raise _Bad(f"{name} {text} must be greater than zero")
    if value < 0:
        raise _Bad(f"{name} {text} must not be negative")
    if value >= MONEY_LIMIT:
        raise _Bad(f"{name} {text} is too large (money stays below 1e14)")
    if len(text) > MAX_DECIMAL_CHARS:
        raise _Bad(f"{name} {text[:20]}... has more than {MAX_DECIMAL_CHARS} characters")
    if not fits_96_bits(value):
        raise _Bad(f"{name} {text} has more digits than money holds (at most 28 after the "
                   "point, and below 2^96 with the point taken out)")
    return value


def _iso(ns: int) -> str:
    try:
        return datetime.fromtimestamp(ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + (
            f" (+{ns % NS} ns)" if ns % NS else "")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns"


def _epoch_ns(n: int) -> int:
    """An epoch number in s, ms, µs or ns (by magnitude) -> ns. Binance spot dumps switched
    from ms to µs in 2025: both land here."""
    return n * _epoch_unit(n)


def _epoch_unit(n: int | Decimal) -> int:
    """ns per unit of an epoch number, told by its size (s until 5138 AD, then ms...)."""
    return NS if n < 10**11 else 1_000_000 if n < 10**14 else 1_000 if n < 10**17 else 1


def _date_ns(text: str) -> int:
    """ISO date or datetime (naive = UTC, an offset honoured) or epoch number -> ns."""
    # 8 digits is a date (20240101): as epoch seconds it would be before March 1973.
    if text.isdecimal() and len(text) != 8:
        return _epoch_ns(int(text))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return _fractional_epoch_ns(text)
    delta = when - (_EPOCH_NAIVE if when.tzinfo is None else _EPOCH_UTC)
    ns = (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000
    if ns < 0:
        raise _Bad(f"date {text!r} is before 1970")
    return ns


def _fractional_epoch_ns(text: str) -> int:
    """1704067200.5 (seconds, or ms...) -> ns, exactly."""
    try:
        number = Decimal(text)
        if number.is_finite() and number >= 0 and text.replace(".", "", 1).isdecimal():
            return int(number * _epoch_unit(number))
    except InvalidOperation:
        pass
    raise _Bad(f"date {text!r} is neither an ISO date/datetime nor an epoch number")


def _canonical(name: str) -> str | None:
    """A file's or argument's symbol -> BASE-QUOTE: kept if it is one, else split at a
    known quote (BTCUSDT -> BTC-USDT), else priced in USD (GOOG -> GOOG-USD)."""
    name = name.strip().upper()
    if _SYMBOL.fullmatch(name):
        return name
    for quote in QUOTES:
        base = name.removesuffix(quote)
        if base != name and _SYMBOL.fullmatch(f"{base}-{quote}"):
            return f"{base}-{quote}"
    return f"{name}-{DEFAULT_QUOTE}" if _SYMBOL.fullmatch(f"{name}-{DEFAULT_QUOTE}") else None


def _read(path: str, symbol: str | None, venue: str, interval: str | None,
          fmt: str) -> list[_Part]:
    if fmt not in FORMATS:
        raise DataError(path, None, f"fmt={fmt!r}: one of {', '.join(FORMATS)}")
    if not isinstance(venue, str) or not _VENUE.fullmatch(venue):
        raise DataError(path, None, f"venue {venue!r} is not lowercase letters, digits and _")
    length = None
    if interval is not None:
        try:
            length = interval_ns(interval)
        except ValueError as e:
            raise DataError(path, None, str(e)) from None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            if fmt == "auto":
                fmt = _detect(path, f)
                f.seek(0)
            if fmt == "replay":
                rows = _json_rows(f) if path.endswith(".jsonl") else _csv_rows(path, f)
                parts = _replay(path, rows, symbol, venue, length)
            elif fmt == "binance":
                parts = [_binance(path, f, symbol, venue)]
            else:
                parts = [_ohlcv(path, f, symbol, venue)]
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text: {e.reason}") from None
    if not parts or not any(p.ts for p in parts):
        raise DataError(path, None, "no bars: the file is empty"
                        + (f" or has no rows of {symbol}" if symbol and fmt == "replay" else ""))
    return parts


def _detect(path: str, f: Any) -> str:
    if path.endswith(".jsonl"):
        return "replay"
    if BINANCE_NAME.fullmatch(Path(path).stem):
        return "binance"
    for line in f:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip().lower() for c in line.split(",")]
        if "ts" in cells and "symbol" in cells:
            return "replay"
        if cells[0] == "open_time" or (len(cells) == BINANCE_COLUMNS and cells[0].isdecimal()):
            return "binance"
        return "ohlcv"
    raise DataError(path, None, "no bars: the file is empty")


def _row_error(path: str, reader: Any, at: list[int] | None = None) -> Iterator[list[str]]:
    """csv rows; a malformed one (csv.Error) is a DataError at its line."""
    try:
        yield from reader
    except csv.Error as e:
        raise DataError(path, at[0] if at else reader.line_num, f"not valid CSV: {e}") from None


def _ohlcv(path: str, f: Any, symbol: str | None, venue: str) -> _Part:
    reader = csv.reader(f)
    header = next((r for r in _row_error(path, reader) if r), None)
    if header is None:
        raise DataError(path, None, "no bars: the file is empty")
    names = [c.strip().lower() for c in header]
    at = {name: i for i, name in reversed(list(enumerate(names)))}
    date = 0 if names[0] in ("", *DATE_COLUMNS) else next(
        (at[n] for n in DATE_COLUMNS if n in at), None)
    missing = [n for n in ("open", "high", "low", "close") if n not in at]
    if date is None:
        missing.insert(0, "date (or an unnamed first column)")
    if missing:
        raise DataError(path, reader.line_num, f"missing columns: {', '.join(missing)} "
                        f"(the header is {','.join(header)})")
    name = symbol or Path(path).stem
    part = _Part(path, venue, _symbol(path, name), None, False, False)
    o, h, lo, c = at["open"], at["high"], at["low"], at["close"]
    v = at.get("volume")
    width = len(header)

    def bars() -> Iterator[tuple[int, int, str, str, str, str, str, None]]:
        for row in reader:
            if len(row) != width:
                if not row:
                    continue
                raise _Bad(f"{len(row)} values for {width} columns")
            yield (reader.line_num, _date_ns(row[date].strip()), row[o], row[h], row[lo], row[c],
                   "0" if v is None else row[v], None)

    part.extend(bars(), reader)
    return part


def _symbol(path: str, name: str) -> str:
    found = _canonical(name)
    if found is None:
        raise DataError(path, None, f"{name!r} cannot be a BASE-QUOTE symbol (BTC-USD): "
                        "pass symbol=")
    return found


def _binance(path: str, f: Any, symbol: str | None, venue: str) -> _Part:
    named = BINANCE_NAME.fullmatch(Path(path).stem)
    if symbol is None and named is None:
        raise DataError(path, None, "the name is not Binance's SYMBOL-INTERVAL-DATE.csv "
                        "(BTCUSDT-1m-2024-01-01.csv): pass symbol=")
    stated = None
    if named:
        stated = named.group(2)
        try:
            interval_ns(stated)
        except ValueError as e:
            raise DataError(path, None, f"{e} (from the file name)") from None
    part = _Part(path, venue, _symbol(path, symbol or named.group(1)), stated, True, True)
    reader = csv.reader(f)

    def bars() -> Iterator[tuple[int, int, str, str, str, str, str, int]]:
        for row in reader:
            if len(row) != BINANCE_COLUMNS:
                if not row:
                    continue
                raise _Bad(f"{len(row)} values, a Binance kline row has {BINANCE_COLUMNS}")
            if not row[0].isdecimal():
                if reader.line_num == 1 and row[0].strip().lower() == "open_time":
                    continue  # the header some dumps have
                raise _Bad(f"open_time {row[0]!r} is not an integer (ms or µs since the epoch)")
            if not row[8].isdecimal():
                raise _Bad(f"count {row[8]!r} is not a whole number of trades")
            yield (reader.line_num, _epoch_ns(int(row[0])), row[1], row[2], row[3], row[4],
                   row[5], int(row[8]))

    part.extend(bars(), reader)
    return part


# Replay files: rows are (line, {name: text}) whichever the file format.


def _csv_rows(path: str, f: Any) -> Iterator[tuple[int, dict[str, str]]]:
    at = [0]  # the line csv is on: comment and blank lines are dropped before it sees them

    def lines() -> Iterator[str]:
        for number, text in enumerate(f, 1):
            if text.strip() and not text.startswith("#"):
                at[0] = number
                yield text

    reader = csv.reader(lines())
    columns: list[str] | None = None
    for values in _row_error(path, reader, at):
        line = at[0]
        if columns is None:
            columns = [c.strip().lower() for c in values]
            missing = [c for c in ("ts", "symbol") if c not in columns]
            if "open" in columns:
                missing += [c for c in ("high", "low", "close", "interval") if c not in columns]
            elif "price" not in columns:
                missing.append("price (tick rows) or open, high, low, close, interval (bar rows)")
            if missing:
                raise DataError(path, line, f"missing columns: {', '.join(missing)}")
            continue
        if len(values) != len(columns):
            raise DataError(path, line, f"{len(values)} values for {len(columns)} columns")
        yield line, dict(zip(columns, values))


def _json_rows(f: Any) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(f, 1):
        if not text.strip() or text.startswith("#"):
            continue
        try:
            # Numbers kept as their text: money never passes through a float.
            yield line, json.loads(text, parse_float=str, parse_constant=str)
        except ValueError:
            yield line, None


def _field(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None  # empty = not given, as in replay.rs
    if type(value) is int:
        return str(value)
    raise _Bad(f"{name}: {value!r} is not a string or a number")


def _replay(path: str, rows: Iterator[tuple[int, Any]], want: str | None, default_venue: str,
            length: int | None) -> list[_Part]:
    parts: dict[tuple[str, str], _Part] = {}
    kinds: dict[tuple[str, str], str] = {}
    want = _canonical(want) if want else None
    symbols: set[str] = set()  # checked already (a regex per row is slow)
    venues = {default_venue}
    for line, row in rows:
        try:
            if not isinstance(row, dict):
                raise _Bad("not a JSON object")
            name = _field(row, "symbol")
            if name not in symbols:
                if name is None or not _SYMBOL.fullmatch(name):
                    raise _Bad(f"symbol {name!r} is not BASE-QUOTE (BTC-USD)")
                symbols.add(name)
            if want and name != want:
                continue
            venue = _field(row, "venue") or default_venue
            if venue not in venues:
                if not _VENUE.fullmatch(venue):
                    raise _Bad(f"venue {venue!r} is not lowercase letters, digits and _")
                venues.add(venue)
            ts_text = _field(row, "ts")
            if ts_text is None or not ts_text.isdecimal():
                raise _Bad(f"ts {ts_text!r} is not an integer of nanoseconds")
            ts = int(ts_text)
            key = (venue, name)
            opening = _field(row, "open")
            kind = "bar" if opening is not None else "tick"
            if kinds.setdefault(key, kind) != kind:
                raise _Bad(f"a {kind} row, but earlier rows of {name} are {kinds[key]} rows")
            part = parts.get(key)
            if part is None:
                part = parts[key] = _Part(path, venue, name, None, True, True)
            if kind == "tick":
                price = _field(row, "price")
                if price is None:
                    raise _Bad("no price")
                if length is None:
                    raise _Bad("tick rows need interval= (the length of the bars to build)")
                for quote in ("bid", "ask"):
                    if (text := _field(row, quote)) is not None:
                        _number(text, quote, True)
                part.tick(line, ts, price, _field(row, "size"), length)
                continue
            stated = _field(row, "interval")
            if stated is None:
                raise _Bad("no interval")
            try:
                interval_ns(stated)
            except ValueError as e:
                raise _Bad(str(e)) from None
            part.state(stated, line)
            values = [_field(row, c) for c in ("high", "low", "close")]
            if None in values:
                raise _Bad(f"no {('high', 'low', 'close')[values.index(None)]}")
            part.extend([(line, ts, opening, *values, _field(row, "volume") or "0", 0)])
        except _Bad as e:
            raise DataError(path, line, str(e)) from None
    return list(parts.values())


# ------------------------------------------------------------------ checking


def _finish(parts: list[_Part], interval: str | None, strict: bool) -> BarSeries:
    """Merges one (venue, symbol)'s parts in time order, settles the interval and checks
    every step between bars: no overlap, aligned where the format is, gaps noted."""
    parts = sorted((p for p in parts if p.ts), key=lambda p: p.ts[0])
    first = parts[0]
    for before, part in zip(parts, parts[1:]):
        if part.ts[0] <= before.ts[-1]:
            raise DataError(part.path, part.lines[0],
                            f"{part.symbol}'s bars overlap {before.path}'s, which run to "
                            f"{_iso(before.ts[-1])}")
    offsets = [0]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part.ts))

    def where(i: int) -> tuple[str, int]:
        part_index = bisect_right(offsets, i) - 1
        part = parts[part_index]
        return part.path, part.lines[i - offsets[part_index]]

    def column(name: str) -> list[Any]:
        if len(parts) == 1:
            return getattr(first, name)
        return [x for p in parts for x in getattr(p, name)]

    ts = column("ts")
    if ts[-1] + MAX_INTERVAL_NS > U64_MAX:  # the contract's times (start and end) are u64 ns
        raise DataError(*where(len(ts) - 1), f"timestamp {ts[-1]} ns is past the year 2554")
    stated = [(p.interval, p.path, p.interval_line) for p in parts if p.interval]
    if interval:
        stated.insert(0, (interval, "interval=", 0))
    for name, path, line in stated[1:]:
        if name != stated[0][0]:
            raise DataError(path, line or None, f"{first.symbol}: interval {name} here, but "
                            f"{stated[0][0]} in {stated[0][1]}")
    if stated:
        name = stated[0][0]
        length = interval_ns(name)
    else:
        if len(ts) < 2:
            raise DataError(first.path, first.lines[0],
                            f"{first.symbol} has one bar: pass interval=, it cannot be inferred")
        length = min(b - a for a, b in zip(ts, islice(ts, 1, None)))
        inferred = interval_name(length)
        if inferred is None:
            i = next(i for i in range(1, len(ts)) if ts[i] - ts[i - 1] == length)
            raise DataError(*where(i), f"{first.symbol}: the smallest step between bars is "
                            f"{Decimal(length) / NS} s, not an interval of whole seconds "
                            "from 1s to 1d")
        name = inferred
    steps = zip(ts, islice(ts, 1, None))
    if stated and any(b - a < length for a, b in steps):
        i = next(i for i in range(1, len(ts)) if ts[i] - ts[i - 1] < length)
        raise DataError(*where(i), f"starts {_iso(ts[i])}, less than {name} after the bar "
                        f"before ({_iso(ts[i - 1])}): bars of {name} overlap")
    for part in parts:
        if part.aligned and any(t % length for t in part.ts):
            j = next(j for j, t in enumerate(part.ts) if t % length)
            raise DataError(part.path, part.lines[j], f"a {name} bar must start on a whole "
                            f"{name} since the epoch, not at {_iso(part.ts[j])}")
    gaps = [(a, (b - a) // length - 1) for a, b in zip(ts, islice(ts, 1, None))
            if b - a >= 2 * length]
    if strict and gaps:
        i = ts.index(gaps[0][0]) + 1
        raise DataError(*where(i), f"gap: {gaps[0][1]} {name} bar(s) missing before "
                        f"{_iso(ts[i])} (strict)")
    counted = all(p.trades is not None for p in parts)
    return BarSeries(first.symbol, first.venue, name, ts, column("open"), column("high"),
                     column("low"), column("close"), column("volume"),
                     column("trades") if counted else None, gaps)
