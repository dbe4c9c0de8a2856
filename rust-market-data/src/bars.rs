//! OHLCV bars from ticks: one `BarSeries` per (interval, venue, symbol).

use std::collections::VecDeque;

use moonbus_common::{Bar, Interval, NonNegativeMoney, Tick};
use rust_decimal::Decimal;

/// The bar intervals market-data builds and serves.
pub const INTERVALS: [&str; 2] = ["1s", "1m"];
/// Closed bars kept per series for `md.api.history`.
pub const HISTORY_LEN: usize = 1000;

/// Builds the bars of one (interval, venue, symbol) and keeps the last closed ones.
///
/// Bars are `[start_ts, end_ts)` with boundaries aligned to the epoch (a 1m bar
/// starts on a whole minute). The open bar closes when a tick arrives in a later
/// interval or when `close_due` is called after its end (a timer, so a quiet
/// symbol's bar still closes on time). An interval in which no tick arrived
/// produces no bar at all: there is no price to put in it, and a flat bar would
/// invent trades that never happened.
#[derive(Debug)]
pub struct BarSeries {
    interval: Interval,
    len_ns: u64,
    /// The bar being built; its fields are updated in place, tick by tick.
    open: Option<Bar>,
    /// Ticks stamped before this (the open bar's start, or the last closed bar's
    /// end) count in the open or next bar: if the wall clock steps back, a closed
    /// bar is never reopened or published twice.
    floor_ts: u64,
    history: VecDeque<Bar>,
}

impl BarSeries {
    /// `None` for a zero-length interval (`0s`).
    pub fn new(interval: Interval) -> Option<Self> {
        let len_ns = interval.seconds().checked_mul(1_000_000_000)?;
        (len_ns > 0).then(|| Self {
            interval,
            len_ns,
            open: None,
            floor_ts: 0,
            history: VecDeque::with_capacity(HISTORY_LEN),
        })
    }

    pub fn interval(&self) -> &Interval {
        &self.interval
    }

    /// Adds a tick; returns the bar it closed, if the tick opened a later interval.
    pub fn on_tick(&mut self, tick: &Tick) -> Option<Bar> {
        let ts = tick.ts.max(self.floor_ts);
        let start = ts - ts % self.len_ns;
        let closed = match &self.open {
            Some(bar) if bar.start_ts != start => self.close(),
            _ => None,
        };
        let size = tick.size.unwrap_or(NonNegativeMoney::ZERO);
        match &mut self.open {
            Some(bar) => {
                bar.high = bar.high.max(tick.price);
                bar.low = bar.low.min(tick.price);
                bar.close = tick.price;
                bar.volume = add(bar.volume, size);
                bar.trades += 1;
            }
            None => {
                self.floor_ts = start;
                self.open = Some(Bar {
                    venue: tick.venue.clone(),
                    symbol: tick.symbol.clone(),
                    interval: self.interval.clone(),
                    open: tick.price,
                    high: tick.price,
                    low: tick.price,
                    close: tick.price,
                    volume: size,
                    trades: 1,
                    start_ts: start,
                    end_ts: start.saturating_add(self.len_ns),
                });
            }
        }
        closed
    }

    /// Closes the open bar if its interval has ended by `now_ns`.
    pub fn close_due(&mut self, now_ns: u64) -> Option<Bar> {
        match &self.open {
            Some(bar) if bar.end_ts <= now_ns => self.close(),
            _ => None,
        }
    }

    /// The last `limit` closed bars, oldest first.
    pub fn last(&self, limit: usize) -> Vec<Bar> {
        let skip = self.history.len().saturating_sub(limit);
        self.history.iter().skip(skip).cloned().collect()
    }

    fn close(&mut self) -> Option<Bar> {
        let bar = self.open.take()?;
        self.floor_ts = bar.end_ts;
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(bar.clone());
        Some(bar)
    }
}

/// The sum of two non-negative amounts is non-negative; `new` cannot refuse it.
fn add(a: NonNegativeMoney, b: NonNegativeMoney) -> NonNegativeMoney {
    let sum: Decimal = a.get() + b.get();
    NonNegativeMoney::new(sum).unwrap_or(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{PositiveMoney, Symbol, Venue};
    use std::collections::BTreeMap;

    const SEC: u64 = 1_000_000_000;
    /// 2025-11-26T04:00:00Z, a whole minute.
    const T0: u64 = 1_764_129_600 * SEC;

    fn tick(ts: u64, price: &str, size: &str) -> Tick {
        Tick {
            venue: Venue::sim(),
            symbol: "BTC-USD".parse::<Symbol>().unwrap(),
            price: price.parse::<PositiveMoney>().unwrap(),
            bid: None,
            ask: None,
            size: Some(size.parse().unwrap()),
            seq: 0,
            ts,
        }
    }

    fn series(interval: &str) -> BarSeries {
        BarSeries::new(interval.parse().unwrap()).unwrap()
    }

    /// The obvious way: group ticks by interval start, then fold each group.
    fn reference_bars(
        ticks: &[Tick],
        len_ns: u64,
    ) -> Vec<(u64, String, String, String, String, String, u64)> {
        let mut groups: BTreeMap<u64, Vec<&Tick>> = BTreeMap::new();
        for t in ticks {
            groups.entry(t.ts / len_ns * len_ns).or_default().push(t);
        }
        groups
            .into_iter()
            .map(|(start, group)| {
                let prices: Vec<Decimal> = group.iter().map(|t| t.price.get()).collect();
                let volume: Decimal = group.iter().map(|t| t.size.unwrap().get()).sum();
                (
                    start,
                    prices[0].to_string(),
                    prices.iter().max().unwrap().to_string(),
                    prices.iter().min().unwrap().to_string(),
                    prices.last().unwrap().to_string(),
                    volume.to_string(),
                    group.len() as u64,
                )
            })
            .collect()
    }

    fn summary(bar: &Bar) -> (u64, String, String, String, String, String, u64) {
        (
            bar.start_ts,
            bar.open.to_string(),
            bar.high.to_string(),
            bar.low.to_string(),
            bar.close.to_string(),
            bar.volume.to_string(),
            bar.trades,
        )
    }

    #[test]
    fn bars_match_a_reference_computed_from_the_same_ticks() {
        // A deterministic, irregular tick stream over ~3 minutes with gaps.
        let mut ticks = Vec::new();
        let mut ts = T0 + 17 * SEC / 10;
        let mut price: i64 = 970_000;
        for i in 0..400u64 {
            ts += (i * 7919 % 13) * SEC / 10 + (i % 3) * 50_000_000;
            if i % 97 == 0 {
                ts += 20 * SEC; // a quiet stretch: empty 1s intervals
            }
            price += ((i * 31) % 17) as i64 - 8;
            let p = Decimal::new(price, 1).to_string();
            let size = Decimal::new(((i * 13) % 50) as i64, 3).to_string();
            ticks.push(tick(ts, &p, &size));
        }
        for (interval, len_ns) in [("1s", SEC), ("1m", 60 * SEC)] {
            let mut s = series(interval);
            let mut bars: Vec<Bar> = ticks.iter().filter_map(|t| s.on_tick(t)).collect();
            bars.extend(s.close_due(u64::MAX));
            let expected = reference_bars(&ticks, len_ns);
            assert_eq!(
                bars.iter().map(summary).collect::<Vec<_>>(),
                expected,
                "{interval}"
            );
            for bar in &bars {
                assert_eq!(bar.end_ts - bar.start_ts, len_ns);
                assert_eq!(bar.start_ts % len_ns, 0, "aligned to the epoch");
                assert_eq!(bar.interval, interval);
                assert_eq!(
                    (bar.venue.as_str(), bar.symbol.as_str()),
                    ("sim", "BTC-USD")
                );
            }
            let last = s.last(5000);
            assert_eq!(last.len(), bars.len().min(HISTORY_LEN));
            assert_eq!(last.last(), bars.last());
        }
    }

    #[test]
    fn boundaries_and_empty_intervals() {
        let mut s = series("1s");
        assert_eq!(s.on_tick(&tick(T0, "10", "1")), None);
        assert_eq!(
            s.on_tick(&tick(T0 + SEC - 1, "12", "1")),
            None,
            "same second"
        );
        // Next tick 3 s later: closes [T0, T0+1s); the two empty seconds make no bar.
        let closed = s
            .on_tick(&tick(T0 + 3 * SEC, "11", "2"))
            .expect("bar closed");
        assert_eq!((closed.start_ts, closed.end_ts), (T0, T0 + SEC));
        assert_eq!(
            summary(&closed),
            (
                T0,
                "10".into(),
                "12".into(),
                "10".into(),
                "12".into(),
                "2".into(),
                2
            )
        );
        assert_eq!(s.last(10), vec![closed]);
        // The timer closes a quiet bar at its end, not before.
        assert_eq!(s.close_due(T0 + 4 * SEC - 1), None);
        let closed = s.close_due(T0 + 4 * SEC).expect("closed by the timer");
        assert_eq!((closed.start_ts, closed.trades), (T0 + 3 * SEC, 1));
        assert_eq!(s.close_due(T0 + 60 * SEC), None, "no ticks, no bar");
        assert_eq!(s.last(10).len(), 2);
    }

    #[test]
    fn a_late_tick_never_reopens_a_closed_bar() {
        let mut s = series("1s");
        s.on_tick(&tick(T0 + SEC / 2, "10", "1"));
        let first = s.close_due(T0 + SEC).unwrap();
        // Wall clock stepped back: the tick counts in the next bar.
        assert_eq!(s.on_tick(&tick(T0 + SEC / 4, "9", "1")), None);
        let second = s.close_due(T0 + 2 * SEC).unwrap();
        assert_eq!(second.start_ts, first.end_ts);
        assert_eq!(second.low, "9".parse::<PositiveMoney>().unwrap());
        // And within an open bar, an earlier-stamped tick folds into it.
        s.on_tick(&tick(T0 + 5 * SEC + SEC / 2, "20", "1"));
        assert_eq!(s.on_tick(&tick(T0 + 5 * SEC, "21", "1")), None);
        let third = s.close_due(T0 + 6 * SEC).unwrap();
        assert_eq!((third.start_ts, third.trades), (T0 + 5 * SEC, 2));
    }

    #[test]
    fn history_keeps_the_last_bars_oldest_first() {
        let mut s = series("1s");
        for i in 0..(HISTORY_LEN as u64 + 10) {
            s.on_tick(&tick(T0 + i * SEC, "10", "1"));
        }
        s.close_due(u64::MAX);
        let all = s.last(5000);
        assert_eq!(all.len(), HISTORY_LEN);
        assert_eq!(all[0].start_ts, T0 + 10 * SEC);
        assert!(all.windows(2).all(|w| w[0].start_ts < w[1].start_ts));
        let last3 = s.last(3);
        assert_eq!(last3, all[HISTORY_LEN - 3..].to_vec());
    }

    #[test]
    fn zero_length_interval_is_refused() {
        assert!(BarSeries::new("0s".parse().unwrap()).is_none());
    }
}
