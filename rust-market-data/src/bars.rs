//! OHLCV bars from ticks, for the intervals of `[market_data] bar_intervals`.
//!
//! Bars are `[start_ts, end_ts)` with boundaries aligned to the epoch (a 1m bar
//! starts on a whole minute, a 1h bar on a whole hour, UTC). A bar closes at its
//! boundary or at the first tick after it, whichever comes first: a tick stamped in a
//! later interval closes it at once, and the engine's bar clock (engine.rs) calls
//! `close_due` at the boundary, so a quiet symbol's bar still closes on time (a replay
//! on the file's clock, `replay_clock = "file"`, calls it with its ticks' time instead:
//! at the first tick past a boundary, and at the end of the replay). Closed
//! bars survive restarts through the stream BARS (history.rs, `restore`). **An interval in which no
//! tick arrived produces no bar at all**: there is no price to put in it, and a flat
//! bar would invent trades that never happened; readers see a gap in `start_ts`.
//!
//! Only the shortest interval (the base) is fed tick by tick; every longer one is
//! built from the base's closed bars (each longer interval is a multiple of the
//! base, so a base bar lies inside exactly one longer bar, and OHLCV combine
//! exactly: first open, max high, min low, last close, summed volume and trades).
//! That keeps the per-tick cost at one bar update however many intervals there are.

use std::collections::VecDeque;
use std::num::NonZeroU32;

use anyhow::{bail, Result};
use moonbus_common::{Bar, Interval, NonNegativeMoney, PositiveMoney, Symbol, Venue};
use rust_decimal::Decimal;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One bar without its labels (venue, symbol, interval: the series knows them): the
/// open bar as it is built (96 bytes); a history keeps its closed bars packed (`Kept`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarData {
    pub open: PositiveMoney,
    pub high: PositiveMoney,
    pub low: PositiveMoney,
    pub close: PositiveMoney,
    pub volume: NonNegativeMoney,
    pub trades: u64,
    pub start_ts: u64,
}

impl BarData {
    fn first(start_ts: u64, price: PositiveMoney, volume: NonNegativeMoney, trades: u64) -> Self {
        Self {
            open: price,
            high: price,
            low: price,
            close: price,
            volume,
            trades,
            start_ts,
        }
    }

    /// Folds a later bar (or a tick, as a one-trade bar) into this one.
    fn merge(&mut self, later: &BarData) {
        self.high = self.high.max(later.high);
        self.low = self.low.min(later.low);
        self.close = later.close;
        self.volume = add(self.volume, later.volume);
        self.trades += later.trades;
    }
}

/// Memory of one bar in a history, for the history budget (config.rs).
pub const KEPT_BAR_BYTES: usize = std::mem::size_of::<Kept>();

/// A closed bar as a history keeps it: 56 bytes instead of `BarData`'s 96, so the same
/// history takes ~40 % less memory. Each amount is kept as its decimal's mantissa and
/// scale, i.e. exactly the value and the digits it came with; a bar that does not fit
/// (a mantissa beyond i64, more than u32::MAX trades) is kept whole, boxed: 96 bytes more
/// than the budget counts, for bars no venue's prices and sizes make in practice.
#[derive(Debug, Clone)]
enum Kept {
    Packed(PackedBar),
    Whole(Box<BarData>),
}

#[derive(Debug, Clone, Copy)]
struct PackedBar {
    /// open, high, low, close, volume.
    mantissas: [i64; 5],
    start_ts: u64,
    trades: u32,
    /// The five scales (0..=28), 5 bits each from bit 0; bit 31 set, so never zero
    /// (the niche that tags `Kept::Whole` without growing `Kept`).
    scales: NonZeroU32,
}

impl Kept {
    fn new(bar: BarData) -> Self {
        match Self::pack(&bar) {
            Some(packed) => Self::Packed(packed),
            None => Self::Whole(Box::new(bar)),
        }
    }

    fn pack(bar: &BarData) -> Option<PackedBar> {
        let amounts = [
            bar.open.get(),
            bar.high.get(),
            bar.low.get(),
            bar.close.get(),
            bar.volume.get(),
        ];
        let mut mantissas = [0i64; 5];
        let mut scales = 1u32 << 31;
        for (i, amount) in amounts.iter().enumerate() {
            // A negative zero would come back as zero: kept whole, as it came.
            if amount.is_sign_negative() {
                return None;
            }
            mantissas[i] = i64::try_from(amount.mantissa()).ok()?;
            scales |= amount.scale() << (5 * i);
        }
        Some(PackedBar {
            mantissas,
            start_ts: bar.start_ts,
            trades: u32::try_from(bar.trades).ok()?,
            scales: NonZeroU32::new(scales)?,
        })
    }

    fn start_ts(&self) -> u64 {
        match self {
            Self::Packed(p) => p.start_ts,
            Self::Whole(bar) => bar.start_ts,
        }
    }

    fn bar(&self) -> BarData {
        let p = match self {
            Self::Packed(p) => p,
            Self::Whole(bar) => return **bar,
        };
        let amount = |i: usize| Decimal::new(p.mantissas[i], (p.scales.get() >> (5 * i)) & 31);
        // The same mantissa and scale as a valid amount of the same type: valid again.
        let price = |i| PositiveMoney::new(amount(i)).expect("packed from a PositiveMoney");
        BarData {
            open: price(0),
            high: price(1),
            low: price(2),
            close: price(3),
            volume: NonNegativeMoney::new(amount(4)).expect("packed from a NonNegativeMoney"),
            trades: u64::from(p.trades),
            start_ts: p.start_ts,
        }
    }
}

/// The validated bar intervals: sorted, each a multiple of the first (the base).
#[derive(Debug, Clone, PartialEq)]
pub struct Intervals(Vec<(Interval, u64)>);

impl Intervals {
    pub fn parse(names: &[String]) -> Result<Self> {
        if names.is_empty() {
            bail!("[market_data] bar_intervals is empty");
        }
        let mut intervals = Vec::new();
        for name in names {
            let interval: Interval = name
                .parse()
                .map_err(|e| anyhow::anyhow!("[market_data] bar_intervals: {name:?}: {e}"))?;
            let len_ns = interval.seconds().saturating_mul(NANOS_PER_SEC);
            if len_ns == 0 {
                bail!("[market_data] bar_intervals: {name} has no length");
            }
            if intervals.iter().any(|(_, len)| *len == len_ns) {
                bail!(
                    "[market_data] bar_intervals: {name} is listed twice (or an equal length is)"
                );
            }
            intervals.push((interval, len_ns));
        }
        intervals.sort_by_key(|(_, len)| *len);
        let base = intervals[0].1;
        if let Some((interval, _)) = intervals.iter().find(|(_, len)| len % base != 0) {
            bail!(
                "[market_data] bar_intervals: {interval} is not a multiple of the shortest, {}",
                intervals[0].0
            );
        }
        Ok(Self(intervals))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Interval> {
        self.0.iter().map(|(i, _)| i)
    }

    pub fn names(&self) -> String {
        self.iter()
            .map(Interval::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The length in nanoseconds of interval `index`.
    pub fn len_ns(&self, index: usize) -> Option<u64> {
        self.0.get(index).map(|(_, len)| *len)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The bars of one interval of one (venue, symbol): the open one and the last
/// `capacity` closed ones.
#[derive(Debug)]
pub struct BarSeries {
    len_ns: u64,
    open: Option<BarData>,
    /// Input stamped before this (the open bar's start, or the last closed bar's
    /// end) counts in the open or next bar: if the wall clock steps back, a closed
    /// bar is never reopened or published twice.
    floor_ts: u64,
    history: VecDeque<Kept>,
    capacity: usize,
}

impl BarSeries {
    fn new(len_ns: u64, capacity: usize) -> Self {
        Self {
            len_ns,
            open: None,
            floor_ts: 0,
            history: VecDeque::new(),
            capacity,
        }
    }

    /// Adds input (a tick as a one-trade bar, or a shorter interval's closed bar)
    /// stamped `ts`; returns the bar it closed, if it opened a later interval.
    fn add(&mut self, ts: u64, input: &BarData) -> Option<BarData> {
        // The usual case: inside the open bar (no division).
        if let Some(bar) = &mut self.open {
            if ts >= bar.start_ts && ts - bar.start_ts < self.len_ns {
                bar.merge(input);
                return None;
            }
        }
        let ts = ts.max(self.floor_ts);
        let start = ts - ts % self.len_ns;
        let closed = match &self.open {
            Some(bar) if bar.start_ts != start => self.close(),
            _ => None,
        };
        match &mut self.open {
            Some(bar) => bar.merge(input),
            None => {
                self.floor_ts = start;
                self.open = Some(BarData {
                    start_ts: start,
                    ..*input
                });
            }
        }
        closed
    }

    /// Closes the open bar if its interval has ended by `now_ns`.
    fn close_due(&mut self, now_ns: u64) -> Option<BarData> {
        match &self.open {
            Some(bar) if bar.start_ts.saturating_add(self.len_ns) <= now_ns => self.close(),
            _ => None,
        }
    }

    /// Takes back a bar closed before a restart (read from the stream BARS), before any
    /// tick: kept in the history if it is aligned and later than the last one kept, and
    /// input stamped before its end counts in the next bar, so it is never built again.
    fn restore(&mut self, bar: BarData) -> bool {
        let later = self
            .history
            .back()
            .is_none_or(|last| bar.start_ts > last.start_ts());
        if self.open.is_some() || !bar.start_ts.is_multiple_of(self.len_ns) || !later {
            return false;
        }
        self.floor_ts = bar.start_ts.saturating_add(self.len_ns);
        self.keep(bar);
        true
    }

    fn close(&mut self) -> Option<BarData> {
        let bar = self.open.take()?;
        self.floor_ts = bar.start_ts.saturating_add(self.len_ns);
        self.keep(bar);
        Some(bar)
    }

    /// Keeps `bar` as the newest closed bar, dropping the oldest once `capacity` are
    /// kept. The buffer is allocated once, at exactly `capacity`, on the first bar: grown
    /// by doubling it would hold up to twice the bars it may keep, and at least 4, so the
    /// history budget (config.rs: `history_budget_mb`) would not bound it (100,000 symbols
    /// of 1 bar per interval took 4x the budget).
    fn keep(&mut self, bar: BarData) {
        if self.capacity == 0 {
            return;
        }
        if self.history.len() == self.capacity {
            self.history.pop_front();
        } else if self.history.capacity() == 0 {
            self.history.reserve_exact(self.capacity);
        }
        self.history.push_back(Kept::new(bar));
    }
}

/// All the intervals of one (venue, symbol).
#[derive(Debug)]
pub struct Bars {
    /// In `Intervals` order: [0] is the base, fed by ticks.
    series: Vec<BarSeries>,
}

/// A closed bar: the index of its interval in `Intervals`, and the bar.
pub type Closed = (usize, BarData);

impl Bars {
    /// `history` closed bars are kept per interval (0 = none).
    pub fn new(intervals: &Intervals, history: usize) -> Self {
        Self {
            series: intervals
                .0
                .iter()
                .map(|(_, len)| BarSeries::new(*len, history))
                .collect(),
        }
    }

    /// Adds a tick; the bars it closed are appended to `closed`, shortest first.
    pub fn on_tick(
        &mut self,
        ts: u64,
        price: PositiveMoney,
        size: Option<NonNegativeMoney>,
        closed: &mut Vec<Closed>,
    ) {
        let tick = BarData::first(ts, price, size.unwrap_or(NonNegativeMoney::ZERO), 1);
        if let Some(bar) = self.series[0].add(ts, &tick) {
            self.cascade(bar, closed);
        }
    }

    /// Prefetches the base interval's series, the one a tick goes into.
    pub fn prefetch(&self) {
        if let Some(base) = self.series.first() {
            crate::prefetch::value(base);
        }
    }

    /// Closes every bar whose interval ended by `now_ns`, shortest first, so a
    /// base bar closed here still lands in its longer bars before they close.
    pub fn close_due(&mut self, now_ns: u64, closed: &mut Vec<Closed>) {
        if let Some(bar) = self.series[0].close_due(now_ns) {
            self.cascade(bar, closed);
        }
        for i in 1..self.series.len() {
            if let Some(bar) = self.series[i].close_due(now_ns) {
                closed.push((i, bar));
            }
        }
    }

    /// A base bar closed: record it, and feed it to the longer intervals.
    fn cascade(&mut self, base: BarData, closed: &mut Vec<Closed>) {
        closed.push((0, base));
        for i in 1..self.series.len() {
            if let Some(bar) = self.series[i].add(base.start_ts, &base) {
                closed.push((i, bar));
            }
        }
    }

    /// Takes back a closed bar of interval `index` from before a restart (see
    /// `BarSeries::restore`); false if it is refused (no such interval, misaligned,
    /// not later than the last one, or a bar is already open).
    pub fn restore(&mut self, index: usize, bar: BarData) -> bool {
        self.series
            .get_mut(index)
            .is_some_and(|series| series.restore(bar))
    }

    /// The last `limit` closed bars of interval `index`, oldest first.
    pub fn last(&self, index: usize, limit: usize) -> Vec<BarData> {
        let Some(series) = self.series.get(index) else {
            return Vec::new();
        };
        let skip = series.history.len().saturating_sub(limit);
        series.history.iter().skip(skip).map(Kept::bar).collect()
    }
}

/// The wire form of a closed bar.
pub fn to_bar(venue: &Venue, symbol: &Symbol, intervals: &Intervals, closed: &Closed) -> Bar {
    let (index, data) = closed;
    let (interval, len_ns) = &intervals.0[*index];
    Bar {
        venue: venue.clone(),
        symbol: symbol.clone(),
        interval: interval.clone(),
        open: data.open,
        high: data.high,
        low: data.low,
        close: data.close,
        volume: data.volume,
        trades: data.trades,
        start_ts: data.start_ts,
        end_ts: data.start_ts.saturating_add(*len_ns),
    }
}

/// The sum of two non-negative amounts is non-negative; `new` cannot refuse it
/// (an overflow past Decimal's 7.9e28 keeps the first).
fn add(a: NonNegativeMoney, b: NonNegativeMoney) -> NonNegativeMoney {
    a.get()
        .checked_add(b.get())
        .and_then(|sum| NonNegativeMoney::new(sum).ok())
        .unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal::Decimal;
    use std::collections::BTreeMap;
    use std::str::FromStr;

    const SEC: u64 = 1_000_000_000;
    /// 2025-11-26T04:00:00Z, a whole hour.
    const T0: u64 = 1_764_129_600 * SEC;
    const ALL: [&str; 5] = ["1s", "1m", "5m", "15m", "1h"];

    fn intervals(names: &[&str]) -> Intervals {
        Intervals::parse(&names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn money(units: i64, scale: u32) -> PositiveMoney {
        PositiveMoney::new(Decimal::new(units, scale)).unwrap()
    }

    /// (ts, price, size) -> summary (start, o, h, l, c, volume, trades).
    type Summary = (u64, Decimal, Decimal, Decimal, Decimal, Decimal, u64);

    /// The obvious way: group the ticks by interval start, then fold each group.
    fn reference(ticks: &[(u64, PositiveMoney, NonNegativeMoney)], len_ns: u64) -> Vec<Summary> {
        let mut groups: BTreeMap<u64, Vec<&(u64, PositiveMoney, NonNegativeMoney)>> =
            BTreeMap::new();
        for t in ticks {
            groups.entry(t.0 / len_ns * len_ns).or_default().push(t);
        }
        groups
            .into_iter()
            .map(|(start, group)| {
                let prices: Vec<Decimal> = group.iter().map(|t| t.1.get()).collect();
                (
                    start,
                    prices[0],
                    *prices.iter().max().unwrap(),
                    *prices.iter().min().unwrap(),
                    *prices.last().unwrap(),
                    group.iter().map(|t| t.2.get()).sum(),
                    group.len() as u64,
                )
            })
            .collect()
    }

    fn summary(bar: &BarData) -> Summary {
        (
            bar.start_ts,
            bar.open.get(),
            bar.high.get(),
            bar.low.get(),
            bar.close.get(),
            bar.volume.get(),
            bar.trades,
        )
    }

    /// Runs ticks (in time order) through `Bars`, then the timer at the end of time.
    fn run(names: &[&str], ticks: &[(u64, PositiveMoney, NonNegativeMoney)]) -> Vec<Vec<Summary>> {
        let intervals = intervals(names);
        let mut bars = Bars::new(&intervals, 100_000);
        let mut closed = Vec::new();
        for (ts, price, size) in ticks {
            bars.on_tick(*ts, *price, Some(*size), &mut closed);
        }
        bars.close_due(u64::MAX, &mut closed);
        let mut by_interval = vec![Vec::new(); intervals.len()];
        for (i, bar) in &closed {
            by_interval[*i].push(summary(bar));
        }
        by_interval
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every interval's bars equal the reference built straight from the ticks.
        #[test]
        fn bars_match_the_reference(
            steps in prop::collection::vec((0u64..90_000_000_000, 1i64..10_000_000, 0i64..100_000), 1..300),
            start in 0u64..3_600_000_000_000,
        ) {
            let mut ts = T0 + start;
            let ticks: Vec<_> = steps
                .iter()
                .map(|(gap, price, size)| {
                    // Mostly short gaps, sometimes long ones (empty intervals).
                    ts += if gap % 7 == 0 { *gap } else { gap % 2_000_000_000 };
                    (ts, money(*price, 3), NonNegativeMoney::new(Decimal::new(*size, 4)).unwrap())
                })
                .collect();
            let got = run(&ALL, &ticks);
            let intervals = intervals(&ALL);
            for (i, (_, len)) in intervals.0.iter().enumerate() {
                prop_assert_eq!(&got[i], &reference(&ticks, *len), "interval {}", i);
            }
        }
    }

    #[test]
    fn boundaries_and_empty_intervals() {
        let intervals = intervals(&["1s"]);
        let mut bars = Bars::new(&intervals, 10);
        let mut closed = Vec::new();
        let one = NonNegativeMoney::new(Decimal::ONE).ok();
        bars.on_tick(T0, money(10, 0), one, &mut closed);
        bars.on_tick(T0 + SEC - 1, money(12, 0), one, &mut closed);
        assert!(closed.is_empty(), "same second");
        // Next tick 3 s later closes [T0, T0+1s); the two empty seconds make no bar.
        bars.on_tick(T0 + 3 * SEC, money(11, 0), one, &mut closed);
        assert_eq!(closed.len(), 1);
        let bar = to_bar(
            &Venue::sim(),
            &"BTC-USD".parse().unwrap(),
            &intervals,
            &closed[0],
        );
        assert_eq!((bar.start_ts, bar.end_ts, bar.trades), (T0, T0 + SEC, 2));
        assert_eq!(
            (bar.open, bar.high, bar.low, bar.close),
            (money(10, 0), money(12, 0), money(10, 0), money(12, 0))
        );
        assert_eq!(bar.interval.as_str(), "1s");
        // The timer closes a quiet bar at its end, not before.
        closed.clear();
        bars.close_due(T0 + 4 * SEC - 1, &mut closed);
        assert!(closed.is_empty());
        bars.close_due(T0 + 4 * SEC, &mut closed);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1.start_ts, T0 + 3 * SEC);
        closed.clear();
        bars.close_due(T0 + 60 * SEC, &mut closed);
        assert!(closed.is_empty(), "no ticks, no bar");
        assert_eq!(bars.last(0, 10).len(), 2);
    }

    #[test]
    fn the_timer_closes_longer_bars_after_their_last_base_bar() {
        let intervals = intervals(&["1s", "1m"]);
        let mut bars = Bars::new(&intervals, 10);
        let mut closed = Vec::new();
        bars.on_tick(T0 + 59 * SEC + SEC / 2, money(5, 0), None, &mut closed);
        bars.close_due(T0 + 60 * SEC, &mut closed);
        let got: Vec<(usize, u64, u64)> = closed
            .iter()
            .map(|(i, b)| (*i, b.start_ts, b.trades))
            .collect();
        assert_eq!(got, [(0, T0 + 59 * SEC, 1), (1, T0, 1)]);
    }

    #[test]
    fn a_late_tick_never_reopens_a_closed_bar() {
        let intervals = intervals(&["1s"]);
        let mut bars = Bars::new(&intervals, 10);
        let mut closed = Vec::new();
        bars.on_tick(T0 + SEC / 2, money(10, 0), None, &mut closed);
        bars.close_due(T0 + SEC, &mut closed);
        // Wall clock stepped back: the tick counts in the next bar.
        bars.on_tick(T0 + SEC / 4, money(9, 0), None, &mut closed);
        bars.close_due(T0 + 2 * SEC, &mut closed);
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[1].1.start_ts, T0 + SEC);
        assert_eq!(closed[1].1.low, money(9, 0));
    }

    #[test]
    fn history_keeps_the_last_bars_oldest_first() {
        let intervals = intervals(&["1s"]);
        let mut bars = Bars::new(&intervals, 100);
        let mut closed = Vec::new();
        for i in 0..110 {
            bars.on_tick(T0 + i * SEC, money(10, 0), None, &mut closed);
        }
        bars.close_due(u64::MAX, &mut closed);
        let all = bars.last(0, 5000);
        assert_eq!(all.len(), 100);
        assert_eq!(all[0].start_ts, T0 + 10 * SEC);
        assert_eq!(bars.last(0, 3), all[97..].to_vec());
        assert!(bars.last(7, 3).is_empty(), "no such interval");
    }

    #[test]
    fn the_history_holds_no_more_bars_than_it_keeps() {
        // Grown by doubling, 1 kept bar took room for 4 and 100 for 128: 4x and 1.28x
        // the memory the history budget counts.
        for keep in [1, 13, 100] {
            let intervals = intervals(&ALL);
            let mut bars = Bars::new(&intervals, keep);
            let mut closed = Vec::new();
            for i in 0..(keep as u64 + 3) {
                bars.on_tick(T0 + i * SEC, money(10, 0), None, &mut closed);
            }
            bars.close_due(u64::MAX, &mut closed);
            for series in &bars.series {
                assert!(!series.history.is_empty());
                assert_eq!(series.history.capacity(), keep, "{keep} bars kept");
            }
        }
    }

    #[test]
    fn restored_bars_are_history_and_are_never_built_again() {
        let intervals = intervals(&["1s", "1m"]);
        let mut bars = Bars::new(&intervals, 3);
        let bar = |start, price| BarData::first(start, money(price, 0), NonNegativeMoney::ZERO, 1);
        for i in 0..4 {
            assert!(bars.restore(0, bar(T0 + i * SEC, 10 + i as i64)));
        }
        assert!(bars.restore(1, bar(T0 - 60 * SEC, 9)));
        // Misaligned, not later than the last, or no such interval: refused.
        assert!(!bars.restore(0, bar(T0 + 5 * SEC + 1, 1)));
        assert!(!bars.restore(0, bar(T0 + 3 * SEC, 1)));
        assert!(!bars.restore(2, bar(T0, 1)));
        // The last 3 kept, oldest first.
        let kept: Vec<u64> = bars.last(0, 10).iter().map(|b| b.start_ts).collect();
        assert_eq!(kept, [T0 + SEC, T0 + 2 * SEC, T0 + 3 * SEC]);
        // A tick stamped inside the last restored bar (a venue's late timestamp) goes to
        // the next bar: no second bar with that start. The gap (market-data was down)
        // stays a gap.
        let mut closed = Vec::new();
        bars.on_tick(T0 + 3 * SEC + SEC / 2, money(20, 0), None, &mut closed);
        bars.on_tick(T0 + 9 * SEC, money(21, 0), None, &mut closed);
        let got: Vec<(usize, u64)> = closed.iter().map(|(i, b)| (*i, b.start_ts)).collect();
        assert_eq!(got, [(0, T0 + 4 * SEC)]);
        bars.close_due(T0 + 60 * SEC, &mut closed);
        let starts: Vec<u64> = bars.last(0, 10).iter().map(|b| b.start_ts).collect();
        assert_eq!(starts, [T0 + 3 * SEC, T0 + 4 * SEC, T0 + 9 * SEC]);
        // The 1m bar of T0 is built from the bars since the restart only (the one
        // open at the stop was lost) and follows the restored one.
        let minutes: Vec<(u64, u64)> = bars
            .last(1, 10)
            .iter()
            .map(|b| (b.start_ts, b.trades))
            .collect();
        assert_eq!(minutes, [(T0 - 60 * SEC, 1), (T0, 2)]);
        // Once a bar is open, nothing more is restored.
        bars.on_tick(T0 + 61 * SEC, money(22, 0), None, &mut closed);
        assert!(!bars.restore(0, bar(T0 + 100 * SEC, 1)));
    }

    #[test]
    fn intervals_are_validated_and_sorted() {
        assert_eq!(intervals(&["1h", "1s", "5m"]).names(), "1s, 5m, 1h");
        let err = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            format!("{:#}", Intervals::parse(&names).unwrap_err())
        };
        assert!(err(&["1m", "90s"]).contains("90s is not a multiple of the shortest, 1m"));
        assert!(err(&["1m", "60s"]).contains("listed twice"));
        assert!(err(&["0s"]).contains("no length"));
        assert!(err(&["1x"]).contains("\"1x\""));
        assert!(err(&[]).contains("empty"));
    }

    /// The bar a history gives back is the bar it kept: every amount with its value and
    /// its digits (the wire shows "97000.10", not "97000.1"), packed or kept whole.
    fn kept(bar: BarData) -> (BarData, bool) {
        let kept = Kept::new(bar);
        (kept.bar(), matches!(kept, Kept::Packed(_)))
    }

    fn texts(bar: &BarData) -> [String; 5] {
        [
            bar.open.to_string(),
            bar.high.to_string(),
            bar.low.to_string(),
            bar.close.to_string(),
            bar.volume.to_string(),
        ]
    }

    #[test]
    fn kept_bars_come_back_exactly() {
        let p = |s: &str| PositiveMoney::from_str(s).unwrap();
        let n = |s: &str| NonNegativeMoney::from_str(s).unwrap();
        let bar = |o: &str, v: &str, trades: u64| BarData {
            open: p(o),
            high: p("97000.10"),
            low: p("0.000000000000000000000000001"),
            close: p("99999999999999.99"),
            volume: n(v),
            trades,
            start_ts: T0,
        };
        let cases = [
            (bar("97000.1", "0", 1), true),
            (bar("1", "0.000", 7), true),
            (
                bar("1.00000000", "92233720368547.75807", u64::from(u32::MAX)),
                true,
            ),
            // A mantissa past i64 (19 significant digits and more), more trades than a
            // u32 holds: kept whole.
            (bar("1", "92233720368547.75808", 1), false),
            (bar("1", "1", u64::from(u32::MAX) + 1), false),
        ];
        for (original, packed) in cases {
            let (back, was_packed) = kept(original);
            assert_eq!(was_packed, packed, "{:?}", texts(&original));
            assert_eq!(back, original);
            assert_eq!(texts(&back), texts(&original));
            assert_eq!(
                (back.trades, back.start_ts),
                (original.trades, original.start_ts)
            );
        }
        // Through a series: restored, kept, read back.
        let mut bars = Bars::new(&intervals(&["1s"]), 10);
        for (i, (original, _)) in cases.iter().enumerate() {
            assert!(bars.restore(
                0,
                BarData {
                    start_ts: T0 + i as u64 * SEC,
                    ..*original
                }
            ));
        }
        let back = bars.last(0, 10);
        assert_eq!(back.len(), cases.len());
        for (b, (original, _)) in back.iter().zip(&cases) {
            assert_eq!(texts(b), texts(original));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any amount in the money range, at any scale, comes back with its digits.
        #[test]
        fn any_kept_amount_comes_back_exactly(
            mantissa in 1i128..100_000_000_000_000_000_000_000_000,
            scale in 0u32..=28,
            trades in any::<u64>(),
        ) {
            let amount = Decimal::from_i128_with_scale(mantissa, scale);
            prop_assume!(PositiveMoney::new(amount).is_ok());
            let price = PositiveMoney::new(amount).unwrap();
            let original = BarData::first(T0, price, NonNegativeMoney::new(amount).unwrap(), trades);
            let (back, _) = kept(original);
            prop_assert_eq!(back, original);
            prop_assert_eq!(texts(&back), texts(&original));
        }
    }
}
