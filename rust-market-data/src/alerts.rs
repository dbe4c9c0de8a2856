//! Price alerts: `md.alert.<symbol>` when a symbol moves >= threshold % within a
//! window, once per crossing.
//!
//! The rule, per (venue, symbol) with a monitor:
//! - the move **up** is from the lowest price in the window to the current price,
//!   `(price - low) / low * 100`; the move **down** is from the highest,
//!   `(high - price) / high * 100`, published as a negative `change_pct`;
//! - when a move reaches `threshold_pct`, one alert is published (`from_price` is
//!   that low or high) and that direction is **disarmed**;
//! - a direction is **re-armed** when its move, measured the same way, falls back
//!   below `threshold_pct / 2`: the price came back, or the extreme it was measured
//!   from left the window. A price hovering at the threshold therefore gives one
//!   alert, not one per tick, and a second alert needs a second move.
//!
//! The window is kept as `BUCKETS` time buckets of `window / BUCKETS`, each with
//! its low and high, so memory is fixed per symbol and the cost per tick is a
//! couple of comparisons. A bucket leaves the window once it lies entirely before
//! `ts - window`: the window is exact to one bucket (a tenth of the window).

use std::collections::VecDeque;

use moonbus_common::{Direction, PositiveMoney, PriceAlert, Symbol, Venue};

use crate::encode::to_f64;

/// Buckets per window.
const BUCKETS: u64 = 10;

/// A monitor's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub threshold_pct: f64,
    pub window_s: f64,
}

#[derive(Debug, Clone, Copy)]
struct Extreme {
    value: f64,
    price: PositiveMoney,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    start: u64,
    low: Extreme,
    high: Extreme,
}

/// The alert state of one (venue, symbol).
#[derive(Debug, Clone)]
pub struct Monitor {
    pub threshold: Threshold,
    bucket_ns: u64,
    window_ns: u64,
    buckets: VecDeque<Bucket>,
    /// The window's low and high (over `buckets`).
    low: Option<Extreme>,
    high: Option<Extreme>,
    armed_up: bool,
    armed_down: bool,
}

impl Monitor {
    /// Prefetches the bucket a price goes into (market.rs `prefetch_parts`).
    pub fn prefetch(&self) {
        if let Some(bucket) = self.buckets.back() {
            crate::prefetch::value(bucket);
        }
    }

    pub fn new(threshold: Threshold) -> Self {
        // The window is a whole number of buckets, so buckets only leave it when a
        // tick opens a new bucket.
        let bucket_ns = ((threshold.window_s * 1e9) as u64 / BUCKETS).max(1);
        Self {
            threshold,
            bucket_ns,
            window_ns: bucket_ns * BUCKETS,
            buckets: VecDeque::with_capacity(BUCKETS as usize + 1),
            low: None,
            high: None,
            armed_up: true,
            armed_down: true,
        }
    }

    /// Takes a price at `ts` (ticks in time order); returns the alert it raised.
    pub fn on_price(
        &mut self,
        venue: &Venue,
        symbol: &Symbol,
        price: PositiveMoney,
        ts: u64,
    ) -> Option<PriceAlert> {
        let value = to_f64(price.get());
        let here = Extreme { value, price };
        match self.buckets.back_mut() {
            // The usual case: the tick falls in the newest bucket (no division).
            Some(bucket) if ts >= bucket.start && ts - bucket.start < self.bucket_ns => {
                if value < bucket.low.value {
                    bucket.low = here;
                }
                if value > bucket.high.value {
                    bucket.high = here;
                }
            }
            _ => {
                // A new bucket: the window's start moved, older buckets may leave it.
                self.roll(ts);
                self.buckets.push_back(Bucket {
                    start: ts - ts % self.bucket_ns,
                    low: here,
                    high: here,
                });
            }
        }
        let low = *self.low.get_or_insert(here);
        let high = *self.high.get_or_insert(here);
        let low = if value < low.value { here } else { low };
        let high = if value > high.value { here } else { high };
        (self.low, self.high) = (Some(low), Some(high));

        // Moves in % of the low (up) and of the high (down).
        let up = (value - low.value) / low.value * 100.0;
        let down = (high.value - value) / high.value * 100.0;
        let threshold = self.threshold.threshold_pct;
        let mut alert = None;
        if self.armed_up && up >= threshold {
            self.armed_up = false;
            alert = Some((Direction::Up, up, low.price));
        } else if !self.armed_up && up < threshold / 2.0 {
            self.armed_up = true;
        }
        if self.armed_down && down >= threshold {
            self.armed_down = false;
            // A single tick cannot move both ways; if the window holds both moves,
            // the newer extreme wins (the up alert, reported first, is kept).
            alert = alert.or(Some((Direction::Down, -down, high.price)));
        } else if !self.armed_down && down < threshold / 2.0 {
            self.armed_down = true;
        }
        alert.map(|(direction, change_pct, from_price)| PriceAlert {
            venue: venue.clone(),
            symbol: symbol.clone(),
            direction,
            change_pct,
            threshold_pct: threshold,
            window_s: self.threshold.window_s,
            from_price,
            price,
            ts,
        })
    }

    /// Drops the buckets that left the window before `ts`; recomputes low and high.
    fn roll(&mut self, ts: u64) {
        let since = ts.saturating_sub(self.window_ns);
        let mut dropped = false;
        while let Some(first) = self.buckets.front() {
            // Saturating: a replay file's ts may be in the last bucket before u64::MAX.
            if first.start.saturating_add(self.bucket_ns) > since {
                break;
            }
            self.buckets.pop_front();
            dropped = true;
        }
        if dropped {
            self.low =
                self.buckets
                    .iter()
                    .map(|b| b.low)
                    .reduce(|a, b| if b.value < a.value { b } else { a });
            self.high =
                self.buckets
                    .iter()
                    .map(|b| b.high)
                    .reduce(|a, b| if b.value > a.value { b } else { a });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_764_129_600 * SEC;

    fn monitor(pct: f64, window_s: f64) -> Monitor {
        Monitor::new(Threshold {
            threshold_pct: pct,
            window_s,
        })
    }

    /// Feeds (seconds after T0, price) and returns the alerts as (t, direction, change).
    fn feed(m: &mut Monitor, points: &[(f64, i64)]) -> Vec<(f64, Direction, f64)> {
        let venue = Venue::sim();
        let symbol: Symbol = "BTC-USD".parse().unwrap();
        points
            .iter()
            .filter_map(|&(t, price)| {
                let price = PositiveMoney::new(Decimal::new(price, 0)).unwrap();
                let ts = T0 + (t * 1e9) as u64;
                m.on_price(&venue, &symbol, price, ts)
                    .map(|a| (t, a.direction, (a.change_pct * 100.0).round() / 100.0))
            })
            .collect()
    }

    #[test]
    fn one_alert_per_crossing_not_per_tick() {
        let mut m = monitor(2.0, 60.0);
        // 100 -> 102 crosses +2 % at t=2; staying above gives nothing more.
        let alerts = feed(
            &mut m,
            &[
                (0.0, 100),
                (1.0, 101),
                (2.0, 102),
                (3.0, 103),
                (4.0, 102),
                (5.0, 104),
            ],
        );
        assert_eq!(alerts, [(2.0, Direction::Up, 2.0)]);
        // Back under +1 % (half the threshold) re-arms the up side (and is itself a
        // -3.85 % move from the high of 104); the next +2 % alerts again.
        let alerts = feed(&mut m, &[(6.0, 100), (7.0, 102)]);
        assert_eq!(
            alerts,
            [(6.0, Direction::Down, -3.85), (7.0, Direction::Up, 2.0)]
        );
        // Dipping only to +1.5 % does not re-arm.
        let alerts = feed(&mut m, &[(8.0, 101), (9.0, 105)]);
        assert!(alerts.iter().all(|a| a.1 != Direction::Up), "{alerts:?}");
    }

    #[test]
    fn down_moves_alert_with_a_negative_change_from_the_high() {
        let mut m = monitor(5.0, 60.0);
        let alerts = feed(&mut m, &[(0.0, 200), (1.0, 195), (2.0, 190), (3.0, 180)]);
        assert_eq!(alerts, [(2.0, Direction::Down, -5.0)]);
        let venue = Venue::sim();
        let alert = m
            .clone()
            .on_price(
                &venue,
                &"BTC-USD".parse().unwrap(),
                PositiveMoney::new(Decimal::new(400, 0)).unwrap(),
                T0 + 4 * SEC,
            )
            .unwrap();
        assert_eq!(
            (
                alert.direction,
                alert.from_price.to_string(),
                alert.price.to_string()
            ),
            (Direction::Up, "180".into(), "400".into())
        );
        assert_eq!((alert.threshold_pct, alert.window_s), (5.0, 60.0));
    }

    #[test]
    fn a_move_slower_than_the_window_never_alerts() {
        let mut m = monitor(2.0, 10.0);
        // +1 % every 10 s: within any 10 s window the move stays ~1 %.
        let points: Vec<(f64, i64)> = (0..30).map(|i| (i as f64 * 10.0, 1000 + i * 10)).collect();
        assert!(feed(&mut m, &points).is_empty());
    }

    /// At the end of u64 time, a tick a little older than the last (a replay file's
    /// rows out of order) still sees the window: `start + bucket_ns` overflowed (a
    /// panic in debug builds; in release the window was emptied and the move missed).
    #[test]
    fn the_window_holds_at_the_end_of_time() {
        let mut m = monitor(2.0, 10.0);
        let (venue, symbol) = (Venue::sim(), "BTC-USD".parse::<Symbol>().unwrap());
        let price = |p| PositiveMoney::new(Decimal::new(p, 0)).unwrap();
        assert!(m.on_price(&venue, &symbol, price(100), u64::MAX).is_none());
        let alert = m.on_price(&venue, &symbol, price(103), u64::MAX - 2 * SEC);
        assert_eq!(alert.map(|a| a.direction), Some(Direction::Up));
    }

    #[test]
    fn the_window_rolling_re_arms() {
        let mut m = monitor(2.0, 10.0);
        assert_eq!(
            feed(&mut m, &[(0.0, 100), (1.0, 103)]),
            [(1.0, Direction::Up, 3.0)]
        );
        // Flat at 103: the low of 100 leaves the window after ~10 s; the move is 0,
        // re-armed; a new +2 % from there alerts again.
        let alerts = feed(&mut m, &[(5.0, 103), (12.0, 103), (13.0, 103), (14.0, 106)]);
        assert_eq!(alerts, [(14.0, Direction::Up, 2.91)]);
    }
}
