"""The report of a backtest: `summarize(result)` (the metrics, JSON-able) and
`write(result, out_dir)` (summary.json, trades.csv / trades.json, equity.csv, a
self-contained report.html and report.png). Deterministic: the same result gives
byte-identical files (no wall-clock time anywhere).

The metrics are backtesting.py's (0.6.6, `backtesting/_stats.py`), checked against it on
its own SmaCross / GOOG example (tests/test_backtest_report.py):

- annualisation by periods per year from the bar times: the median of the last 100 bar
  spacings gives the period; 7 days -> 52 (weekly returns), 31 days -> 12 (monthly),
  365 days -> 1 (yearly), else daily returns (the last equity of each UTC day) and 365
  periods when over 60 % of the expected weekend share of bars falls on a weekend
  (crypto), 252 otherwise (stocks);
- return (ann.) = (1 + geometric mean period return) ** periods - 1; volatility (ann.)
  is backtesting.py's compounded variance formula; Sharpe = return (ann.) / volatility
  (ann.) with a risk-free rate of 0; Sortino = return (ann.) / (root mean square of the
  negative period returns * sqrt(periods)); Calmar = return (ann.) / |max drawdown|;
- drawdowns are negative percentages; a drawdown period runs from a new equity peak to
  the next (or to the end); its duration is in seconds, the average rounded up to the
  bar spacing's unit (day, hour, minute, second) like backtesting.py's;
- trade returns are pnl / (quantity * entry price), after fees; avg trade = their
  geometric mean; profit factor = sum of winning returns / |sum of losing returns|
  (returns, not money, as backtesting.py); expectancy = mean return; SQN =
  sqrt(trades) * mean pnl / stdev pnl; win rate counts pnl > 0.

Where the meaning differs from backtesting.py:

- trade statistics count closed trades only (backtesting.py's default, without
  finalize_trades); `open_trades` says how many were still open at the end. Exposure
  time does count an open trade as held to the end (backtesting.py leaves it out);
- return is against `starting_cash` (backtesting.py: the first bar's equity; the same
  unless the first bar trades);
- buy & hold starts at each symbol's first close (backtesting.py: after the strategy's
  indicator warm-up, which a result does not know) and is the equal-weight average over
  the symbols (one position per symbol bought at the start, never rebalanced);
- a metric that cannot be computed (no trades, a single day, no losing trade) is null,
  never NaN or infinity.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from .result import BacktestResult, Trade

DAY_NS = 86_400 * 10**9
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# pandas' Timedelta resolutions: a duration is rounded up to the bar spacing's own unit
UNITS_NS = (DAY_NS, 3600 * 10**9, 60 * 10**9, 10**9, 10**6, 10**3, 1)
SIGNIFICANT = 10  # digits kept of a float metric (drops binary noise, keeps 1e-9 relative)
MAX_CHART_POINTS = 2000  # per line in the charts (min and max of each bucket above that)
MAX_HTML_TRADES = 5000  # rows of report.html's trade list and markers per chart; the CSV has all
FILES = ("summary.json", "trades.csv", "trades.json", "equity.csv", "report.html", "report.png")


# ---------------------------------------------------------------- metrics


def summarize(result: BacktestResult) -> dict[str, Any]:
    """The metrics of a run: money as decimal strings, ratios and percentages as floats
    (None when they cannot be computed), times as ISO 8601 UTC and ns, durations in seconds."""
    times, n = result.times, len(result.times)
    if n == 0 or len(result.equity) != n:
        raise ValueError(f"a result needs one equity per bar time: {n} times, {len(result.equity)} equity")
    equity = [float(e) for e in result.equity]
    start_cash = float(result.starting_cash)
    last = times[-100:]
    period_ns = statistics.median(b - a for a, b in zip(last, last[1:])) if n > 1 else 0
    drawdown = drawdowns(equity)
    dd_durations, dd_peaks = drawdown_periods(times, drawdown)
    per_year, period_returns = annual_periods(times, equity, period_ns)
    gmean = geometric_mean(period_returns)
    ann_return = (1 + gmean) ** per_year - 1 if gmean is not None else None
    volatility = ann_volatility(period_returns, gmean, per_year)
    downside = (math.sqrt(sum(min(r, 0.0) ** 2 for r in period_returns) / len(period_returns)) * math.sqrt(per_year)
                if period_returns else None)
    max_dd = max(drawdown)
    closed = [t for t in result.trades if t.exit_ts is not None]
    pnls = [float(t.pnl) for t in closed]
    returns = [trade_return(t) for t in closed]
    wins, losses = sum(r for r in returns if r > 0), sum(r for r in returns if r < 0)
    return {
        "start": iso(times[0]),
        "end": iso(times[-1]),
        "start_ts": times[0],
        "end_ts": times[-1],
        "duration_s": (times[-1] - times[0]) / 1e9,
        "exposure_time_pct": num(100 * exposure(result.trades, n) / n),
        "equity_start": str(result.starting_cash),
        "equity_final": str(result.equity[-1]),
        "equity_peak": str(max(result.equity)),
        "return_pct": num((equity[-1] - start_cash) / start_cash * 100),
        "buy_hold_return_pct": num(buy_and_hold(result.closes)),
        "return_ann_pct": pct(ann_return),
        "volatility_ann_pct": pct(volatility),
        "sharpe": ratio(ann_return, volatility),
        "sortino": ratio(ann_return, downside),
        "calmar": ratio(ann_return, max_dd),
        "max_drawdown_pct": num(-max_dd * 100),
        "avg_drawdown_pct": num(-statistics.fmean(dd_peaks) * 100) if dd_peaks else None,
        "max_drawdown_duration_s": ceil_to_unit(max(dd_durations), period_ns) if dd_durations else None,
        "avg_drawdown_duration_s": ceil_to_unit(statistics.fmean(dd_durations), period_ns) if dd_durations else None,
        "trades": len(closed),
        "open_trades": len(result.trades) - len(closed),
        "win_rate_pct": num(100 * sum(p > 0 for p in pnls) / len(pnls)) if pnls else None,
        "best_trade_pct": pct(max(returns, default=None)),
        "worst_trade_pct": pct(min(returns, default=None)),
        "avg_trade_pct": pct(geometric_mean(returns)),
        "profit_factor": ratio(wins, -losses),
        "expectancy_pct": pct(statistics.fmean(returns)) if returns else None,
        "sqn": ratio(math.sqrt(len(pnls)) * statistics.fmean(pnls), statistics.stdev(pnls)) if len(pnls) > 1 else None,
        "fees": str(result.fees),
        "rejections": len(result.rejections),
        "bars": result.bars,
        "points": n,
        "signals": result.signals,
        "llm_cost_usd": num(result.llm_cost_usd),
        "periods_per_year": per_year,
    }


def drawdowns(equity: Sequence[float]) -> list[float]:
    """1 - equity / running peak at each point (0 at a new peak)."""
    peak, out = -math.inf, []
    for e in equity:
        peak = max(peak, e)
        out.append(1 - e / peak)
    return out


def drawdown_periods(times: Sequence[int], dd: Sequence[float]) -> tuple[list[float], list[float]]:
    """(duration in ns, deepest drawdown) of each drawdown period: from a point at a peak to
    the next one (or the last point) more than one point later, as backtesting.py counts them."""
    ends = [i for i, d in enumerate(dd) if d == 0]
    if ends[-1] != len(dd) - 1:
        ends.append(len(dd) - 1)
    durations, peaks = [], []
    for prev, i in zip(ends, ends[1:]):
        if i > prev + 1:
            durations.append(float(times[i] - times[prev]))
            peaks.append(max(dd[prev:i + 1]))
    return durations, peaks


def annual_periods(times: Sequence[int], equity: Sequence[float], period_ns: float) -> tuple[int, list[float]]:
    """(periods per year, the returns of those periods) as backtesting.py derives them."""
    period_days = int(period_ns // DAY_NS)
    by: Callable[[int], Any]
    if period_days == 7:
        per_year, by = 52, week_ending_sunday
    elif period_days == 31:
        per_year, by = 12, month
    elif period_days == 365:
        per_year, by = 1, lambda ts: utc(ts).year
    else:
        weekend = sum(weekday(ts) >= 5 for ts in times) / len(times)
        per_year, by = (365 if weekend > 2 / 7 * 0.6 else 252), lambda ts: ts // DAY_NS
    last: dict[Any, float] = {}  # each period's last equity, in order
    for ts, e in zip(times, equity):
        last[by(ts)] = e
    closes = list(last.values())
    return per_year, [b / a - 1 for a, b in zip(closes, closes[1:])]


def weekday(ts: int) -> int:
    return (ts // DAY_NS + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0


def week_ending_sunday(ts: int) -> int:
    return ts // DAY_NS + 6 - weekday(ts)


def month(ts: int) -> tuple[int, int]:
    d = utc(ts)
    return d.year, d.month


def geometric_mean(returns: Sequence[float]) -> float | None:
    if not returns:
        return None
    if any(r <= -1 for r in returns):
        return 0.0  # backtesting.py's convention when a return wipes out everything
    return math.exp(sum(math.log1p(r) for r in returns) / len(returns)) - 1


def ann_volatility(returns: Sequence[float], gmean: float | None, per_year: int) -> float | None:
    """backtesting.py's annualised volatility of compounded returns."""
    if gmean is None or len(returns) < 2:
        return None
    variance = statistics.variance(returns)
    value = (variance + (1 + gmean) ** 2) ** per_year - (1 + gmean) ** (2 * per_year)
    return math.sqrt(value) if value >= 0 else None


def trade_return(t: Trade) -> float:
    """The trade's return after its fees, as a fraction of what it cost to enter."""
    return float(t.pnl) / float(t.quantity * t.entry_price)


def exposure(trades: Sequence[Trade], n: int) -> int:
    """Points at which some trade was open (from its entry bar to its exit bar, both in)."""
    held = bytearray(n)
    for t in trades:
        stop = n if t.exit_bar is None else t.exit_bar + 1
        held[t.entry_bar:stop] = b"\x01" * (stop - t.entry_bar)
    return sum(held)


def buy_and_hold(closes: dict[str, list[Decimal | None]]) -> float | None:
    """Equal weight over the symbols, each from its first close to its last."""
    returns = []
    for series in closes.values():
        known = [c for c in series if c is not None]
        if known:
            returns.append(float(known[-1] / known[0] - 1) * 100)
    return statistics.fmean(returns) if returns else None


def ceil_to_unit(duration_ns: float, period_ns: float) -> float:
    """In seconds, rounded up to the largest unit that divides the bar spacing."""
    unit = next((u for u in UNITS_NS if period_ns and period_ns % u == 0), 1)
    return math.ceil(duration_ns / unit) * unit / 1e9


def num(x: float | None) -> float | None:
    """A finite float with SIGNIFICANT digits, or None."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{SIGNIFICANT}g}")


def pct(x: float | None) -> float | None:
    return num(x * 100) if x is not None else None


def ratio(a: float | None, b: float | None) -> float | None:
    return num(a / b) if a is not None and b else None


def utc(ts: int) -> datetime:
    return EPOCH + timedelta(microseconds=ts // 1000)


def iso(ts: int | None) -> str | None:
    return None if ts is None else utc(ts).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- files


TRADE_COLUMNS = ("symbol", "direction", "quantity", "entry_ts", "entry_time", "entry_price", "exit_ts", "exit_time",
                 "exit_price", "fees", "pnl", "return_pct", "entry_bar", "exit_bar")


def trade_rows(result: BacktestResult) -> list[dict[str, Any]]:
    """Every Trade field (money as decimal strings), the times in ISO too, and the return."""
    return [dict(zip(TRADE_COLUMNS, (
        t.symbol, t.direction, str(t.quantity), t.entry_ts, iso(t.entry_ts), str(t.entry_price), t.exit_ts,
        iso(t.exit_ts), None if t.exit_price is None else str(t.exit_price), str(t.fees), str(t.pnl),
        pct(trade_return(t)), t.entry_bar, t.exit_bar))) for t in result.trades]


def drawdown_pct(equity: Sequence[Decimal]) -> list[Decimal]:
    """Exact: (equity / running peak - 1) * 100, to 6 decimals (0 or negative)."""
    peak, out = None, []
    for e in equity:
        peak = e if peak is None or e > peak else peak
        out.append(((e / peak - 1) * 100).quantize(Decimal("0.000001")) if peak else Decimal(0))
    return out


def to_csv(header: Sequence[str], rows: Any) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    return buffer.getvalue()


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


def write(result: BacktestResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the report files into `out_dir` (created if missing); returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"strategy": result.strategy, "params": result.params, "symbols": result.symbols,
               "interval": result.interval, "starting_cash": str(result.starting_cash), **summarize(result)}
    trades = trade_rows(result)
    dd = drawdown_pct(result.equity)
    texts = {
        "summary.json": to_json(summary),
        "trades.json": to_json(trades),
        "trades.csv": to_csv(TRADE_COLUMNS, (t.values() for t in trades)),
        "equity.csv": to_csv(["time", "ts", "equity", "drawdown_pct"],
                             ([iso(ts), ts, str(e), str(d)] for ts, e, d in zip(result.times, result.equity, dd))),
        "report.html": render_html(result, summary, trades, dd),
    }
    paths = {name: out / name for name in FILES}
    for name, text in texts.items():
        paths[name].write_text(text, encoding="utf-8", newline="\n")
    render_png(result, dd, paths["report.png"])
    return paths


# ---------------------------------------------------------------- charts


def decimate(n: int, values: Sequence[float | None]) -> list[int]:
    """The indices to draw (None values never): all of them up to MAX_CHART_POINTS, else the
    lowest and the highest point of each bucket (in time order), so spikes stay visible."""
    if n <= MAX_CHART_POINTS:
        return [i for i in range(n) if values[i] is not None]
    buckets = MAX_CHART_POINTS // 2
    keep: list[int] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        known = [i for i in range(lo, hi) if values[i] is not None]
        if known:
            low = min(known, key=lambda i: values[i])  # type: ignore[arg-type,return-value]
            high = max(known, key=lambda i: values[i])  # type: ignore[arg-type,return-value]
            keep.extend(sorted({low, high}))
    return keep


Marker = tuple[int, float]  # (bar index, price)


def markers(result: BacktestResult, symbol: str) -> tuple[list[Marker], list[Marker]]:
    """Entries and exits of `symbol`'s trades (the first MAX_HTML_TRADES) at their prices."""
    trades = [t for t in result.trades if t.symbol == symbol][:MAX_HTML_TRADES]
    return ([(t.entry_bar, float(t.entry_price)) for t in trades],
            [(t.exit_bar, float(t.exit_price)) for t in trades if t.exit_bar is not None and t.exit_price is not None])


W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 220, 70, 10, 24, 22


def svg_chart(title: str, times: Sequence[int], values: Sequence[float | None], *, area: bool = False,
              entries: Sequence[Marker] = (), exits: Sequence[Marker] = ()) -> str:
    """One line chart (optionally filled down to 0), ▲ at entries and ▼ at exits, as inline SVG."""
    known = [v for v in values if v is not None] + [p for _, p in (*entries, *exits)]
    if not known:
        return ""
    lo, hi = min(known + ([0.0] if area else [])), max(known + ([0.0] if area else []))
    hi = hi if hi > lo else lo + 1
    t0, t1 = times[0], times[-1] if times[-1] > times[0] else times[0] + 1

    def x(i: int) -> float:
        return PAD_L + (times[i] - t0) / (t1 - t0) * (W - PAD_L - PAD_R)

    def y(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * (H - PAD_T - PAD_B)

    # None only before a symbol's first bar: one line from there on
    points = [f"{x(i):.1f},{y(values[i]):.1f}" for i in decimate(len(values), values)]  # type: ignore[arg-type]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="{esc(title)}">',
             f'<text x="{PAD_L}" y="15" class="t">{esc(title)}</text>',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" class="frame"/>']
    for v in (hi, (hi + lo) / 2, lo):
        parts.append(f'<text x="{PAD_L - 4}" y="{y(v) + 4:.1f}" class="ya">{esc(f"{v:,.2f}")}</text>')
    parts.append(f'<text x="{PAD_L}" y="{H - 6}" class="xa">{esc(iso(times[0]) or "")}</text>')
    parts.append(f'<text x="{W - PAD_R}" y="{H - 6}" class="xa end">{esc(iso(times[-1]) or "")}</text>')
    line = " ".join(points)
    if area:
        first, last = points[0].split(",")[0], points[-1].split(",")[0]
        parts.append(f'<polygon points="{first},{y(0):.1f} {line} {last},{y(0):.1f}" class="area"/>')
    parts.append(f'<polyline points="{line}" class="line"/>')
    for indices, shape, cls in ((entries, "0,-6 5,3 -5,3", "buy"), (exits, "0,6 5,-3 -5,-3", "sell")):
        for i, price in indices:
            parts.append(f'<polygon transform="translate({x(i):.1f},{y(price):.1f})" points="{shape}" class="{cls}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
svg{width:100%;max-width:900px;display:block;margin:.5em 0}
.t{font-size:13px;font-weight:bold}.ya{font-size:10px;text-anchor:end}.xa{font-size:10px}.end{text-anchor:end}
.frame{fill:none;stroke:#ddd}.line{fill:none;stroke:#1f5fbf;stroke-width:1}.area{fill:#e8b4b4;stroke:none}
.buy{fill:#1a9641}.sell{fill:#d7191c}"""


def render_html(result: BacktestResult, summary: dict[str, Any], trades: list[dict[str, Any]],
                dd: Sequence[Decimal]) -> str:
    """The whole report as one HTML file: inline SVG and CSS, no script, every string escaped."""
    times = result.times
    charts = [svg_chart("Equity", times, [float(e) for e in result.equity]),
              svg_chart("Drawdown %", times, [float(d) for d in dd], area=True)]
    for symbol in result.symbols:
        closes = result.closes.get(symbol)
        if closes:
            entries, exits = markers(result, symbol)
            charts.append(svg_chart(f"{symbol} close (▲ entry, ▼ exit)", times,
                                    [None if c is None else float(c) for c in closes], entries=entries, exits=exits))
    metrics = "\n".join(f'<tr><th class="l">{esc(k)}</th><td>{esc(format_value(v))}</td></tr>'
                        for k, v in summary.items())
    columns = TRADE_COLUMNS
    shown = trades[:MAX_HTML_TRADES]
    rows = "\n".join("<tr>" + "".join(f"<td>{esc(format_value(t[c]))}</td>" for c in columns) + "</tr>" for t in shown)
    note = (f"<p>The first {len(shown)} of {len(trades)} trades; trades.csv has them all.</p>"
            if len(shown) < len(trades) else "")
    title = f"Backtest: {result.strategy} on {', '.join(result.symbols)} ({result.interval})"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
{STYLE}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>{esc(summary["start"])} to {esc(summary["end"])}; return {esc(format_value(summary["return_pct"]))} %,
buy &amp; hold {esc(format_value(summary["buy_hold_return_pct"]))} %, {esc(summary["trades"])} trades.</p>
{chr(10).join(charts)}
<h2>Metrics</h2>
<table>
{metrics}
</table>
<h2>Trades</h2>
{note}<table>
<tr>{"".join(f"<th>{esc(c)}</th>" for c in columns)}</tr>
{rows}
</table>
</body>
</html>
"""


def format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def render_png(result: BacktestResult, dd: Sequence[Decimal], path: Path) -> None:
    """Equity, drawdown and each symbol's close with its entries and exits (matplotlib, Agg,
    imported here: only a report needs it). No Software tag, a fixed size: same bytes each time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateFormatter, AutoDateLocator
    from matplotlib.figure import Figure

    times = result.times
    days = [ts / DAY_NS for ts in times]  # matplotlib's dates: days since 1970-01-01
    symbols = [s for s in result.symbols if result.closes.get(s)]
    fig = Figure(figsize=(10, 2.4 * (2 + len(symbols))), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 + len(symbols), 1, sharex=True, squeeze=False)[:, 0]

    def plot(ax: Any, title: str, values: Sequence[float | None]) -> tuple[list[float], list[float]]:
        keep = decimate(len(values), values)
        xs, ys = [days[i] for i in keep], [values[i] for i in keep]
        ax.plot(xs, ys, linewidth=0.8, color="#1f5fbf")
        ax.set_title(title, fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        return xs, ys  # type: ignore[return-value]

    plot(axes[0], "Equity", [float(e) for e in result.equity])
    xs, ys = plot(axes[1], "Drawdown %", [float(d) for d in dd])
    axes[1].fill_between(xs, ys, 0, color="#e8b4b4", linewidth=0)
    for ax, symbol in zip(axes[2:], symbols):
        closes = [None if c is None else float(c) for c in result.closes[symbol]]
        plot(ax, f"{symbol} close", closes)
        entries, exits = markers(result, symbol)
        for shown, marker, color in ((entries, "^", "#1a9641"), (exits, "v", "#d7191c")):
            ax.scatter([days[i] for i, _ in shown], [p for _, p in shown], marker=marker, color=color, s=18, zorder=3)
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(AutoDateFormatter(locator))
    fig.suptitle(f"{result.strategy} on {', '.join(result.symbols)} ({result.interval})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
