//! The simulated market, venue `sim`: one geometric Brownian motion per symbol,
//! seeded so the same seed gives the same price path, with occasional jumps, a
//! bid/ask spread, a random trade size and a random (seeded) order book around
//! the quote. `SimFeed` puts the paths on a clock; it runs inside the engine task.

use moonbus_common::{Book, NonNegativeMoney, PositiveMoney, PriceLevel, Symbol, Venue};
use rand::Rng;
use rand::SeedableRng;
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use rust_decimal::Decimal;
use tokio::time::{sleep_until, Duration, Instant};

use crate::encode::TickData;
use crate::fnv::fnv1a;

/// Published prices keep at least this many significant digits...
const SIGNIFICANT_DIGITS: i32 = 6;
/// ...and at least cents, and never more decimals than this.
const MIN_DECIMALS: i32 = 2;
const MAX_DECIMALS: i32 = 18;
/// The model state is clamped to this range so it stays > 0; within it a price
/// in units of its last decimal fits an i64 (1e15 x 1e2, 1e-12 x 1e18).
const MIN_PRICE: f64 = 1e-12;
const MAX_PRICE: f64 = 1e15;
/// Each trade's notional is drawn from this range (quote units), so volumes are
/// comparable across symbols whatever their price.
const MIN_NOTIONAL: f64 = 10.0;
const MAX_NOTIONAL: f64 = 10_000.0;
/// Each book level's notional is drawn from this range.
const MIN_LEVEL_NOTIONAL: f64 = 1_000.0;
const MAX_LEVEL_NOTIONAL: f64 = 50_000.0;
const SIZE_DECIMALS: u32 = 8;
/// The largest size in units of 1e-8: 99999999999999.99999999, just inside the contract's
/// money range (|x| < 1e14). A tiny price times a big notional can want more (1000 USD
/// of a 1e-12 token is 1e15 of it): the size is capped there.
const MAX_SIZE_UNITS: i128 = 10_i128.pow(22) - 1;
/// 10^0 ..= 10^MAX_DECIMALS.
const POW10: [f64; 19] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];
const MS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0 * 1000.0;
/// The book generator is seeded with this mixed in, apart from the price path's, so books never
/// change a price path.
const BOOK_STREAM: u64 = 0x9E37_79B9_7F4A_7C15;

/// The model's parameters (already validated, see `config.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct GbmParams {
    /// Time step of one tick of one symbol.
    pub step_ms: u64,
    /// Annualised volatility (0.8 = 80 %) and drift.
    pub volatility: f64,
    pub drift: f64,
    /// Full bid/ask spread in basis points of the price.
    pub spread_bps: f64,
    /// Chance per tick of a jump of `jump_pct` percent, up or down with equal odds.
    pub jump_probability: f64,
    pub jump_pct: f64,
}

/// One simulated quote; every field is exact and rounded for the wire. The
/// prices share `scale` decimals; `*_units` are their mantissas.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub price: Decimal,
    pub bid: Decimal,
    pub ask: Decimal,
    pub size: Decimal,
}

/// The price path of one symbol.
///
/// The model state is an f64 (a model, not money); every published figure is an
/// exact decimal built from integers (the price in units of its last decimal), so
/// money on the wire is exact and the path is a pure function of (seed, symbol, step).
#[derive(Debug, Clone)]
pub struct GbmPath {
    rng: Xoshiro256PlusPlus,
    book_rng: Xoshiro256PlusPlus,
    price: f64,
    /// (drift - volatility^2 / 2) * dt and volatility * sqrt(dt): the per-step log move.
    log_drift: f64,
    log_diffusion: f64,
    jump_probability: f64,
    jump_pct: f64,
    /// Half the spread as a fraction of the price.
    half_spread: f64,
    /// The last quote, in units: price, bid, ask, and their scale.
    units: (i64, i64, i64, u32),
    /// floor(log10(price)), kept up to date step by step (no log per tick).
    magnitude: i32,
}

impl GbmPath {
    /// A path starting at `start`. Its random stream depends only on `seed` and
    /// `symbol`, so adding or reordering symbols does not change another's path.
    pub fn new(seed: u64, symbol: &str, start: f64, params: &GbmParams) -> Self {
        // Seeded through SplitMix64 (seed_from_u64) from the seed and the symbol's hash.
        let stream = seed ^ fnv1a(symbol.as_bytes());
        let rng = Xoshiro256PlusPlus::seed_from_u64(stream);
        let book_rng = Xoshiro256PlusPlus::seed_from_u64(stream ^ BOOK_STREAM);
        let dt = params.step_ms as f64 / MS_PER_YEAR;
        let sigma = params.volatility;
        Self {
            rng,
            book_rng,
            price: start.clamp(MIN_PRICE, MAX_PRICE),
            log_drift: (params.drift - sigma * sigma / 2.0) * dt,
            log_diffusion: sigma * dt.sqrt(),
            jump_probability: params.jump_probability,
            jump_pct: params.jump_pct,
            half_spread: params.spread_bps / 20_000.0,
            units: (0, 0, 0, 0),
            magnitude: magnitude(start.clamp(MIN_PRICE, MAX_PRICE)),
        }
    }

    /// Advance one step and return the new quote.
    pub fn next_quote(&mut self) -> Quote {
        // Always draw the same number of random values per step, so a path is a
        // pure function of (seed, symbol, step) whatever the branches taken.
        let z: f64 = self.rng.sample(StandardNormal);
        let jump_draw: f64 = self.rng.random();
        let jump_up: bool = self.rng.random();
        let notional = self.rng.random_range(MIN_NOTIONAL..MAX_NOTIONAL);

        let mut factor = (self.log_drift + self.log_diffusion * z).exp();
        if jump_draw < self.jump_probability {
            let jump = self.jump_pct / 100.0;
            factor *= if jump_up { 1.0 + jump } else { 1.0 - jump };
        }
        // A non-finite factor (impossible with validated parameters) leaves the price as is.
        let next = self.price * factor;
        if next.is_finite() {
            self.price = next.clamp(MIN_PRICE, MAX_PRICE);
        }
        self.quote(notional)
    }

    fn quote(&mut self, notional: f64) -> Quote {
        // A step moves the price by far less than 10x: at most one decade each way.
        while self.magnitude < 15 && self.price >= POW10_F[(self.magnitude + 13) as usize] {
            self.magnitude += 1;
        }
        while self.magnitude > -12 && self.price < POW10_F[(self.magnitude + 12) as usize] {
            self.magnitude -= 1;
        }
        let scale = decimals_for(self.magnitude);
        let units = ((self.price * POW10[scale as usize]).round() as i64).max(1);
        // Half the spread rounded up, the same on both sides: bid <= price <= ask,
        // symmetric, and the bid stays > 0 (the spread is at most 10 %).
        let half = (units as f64 * self.half_spread).ceil() as i64;
        let (bid, ask) = ((units - half).max(1), units + half);
        self.units = (units, bid, ask, scale);
        let size = (notional / self.price * 1e8).round() as i128;
        Quote {
            price: Decimal::new(units, scale),
            bid: Decimal::new(bid, scale),
            ask: Decimal::new(ask, scale),
            size: Decimal::from_i128_with_scale(size.clamp(0, MAX_SIZE_UNITS), SIZE_DECIMALS),
        }
    }

    /// `depth` levels each side of the last quote, `step_bps` apart (at least one
    /// unit of the last decimal), each with a random notional.
    pub fn book_levels(
        &mut self,
        depth: usize,
        step_bps: f64,
    ) -> (Vec<PriceLevel>, Vec<PriceLevel>) {
        let (units, bid, ask, scale) = self.units;
        let step = ((units as f64 * step_bps / 10_000.0).round() as i64).max(1);
        let mut level = |units: i64| -> Option<PriceLevel> {
            let price = Decimal::new(units, scale);
            let notional = self
                .book_rng
                .random_range(MIN_LEVEL_NOTIONAL..MAX_LEVEL_NOTIONAL);
            let size = (notional / self.price * 1e8).round() as i128;
            let size = NonNegativeMoney::new(Decimal::from_i128_with_scale(
                size.clamp(0, MAX_SIZE_UNITS),
                SIZE_DECIMALS,
            ))
            .ok()?;
            Some((PositiveMoney::new(price).ok()?, size))
        };
        // Allocated at `depth` (collect() would grow to the next power of two: a symbol's
        // latest book is kept, so that is memory held per symbol).
        let mut bids = Vec::with_capacity(depth);
        bids.extend(
            (0..depth as i64)
                .map(|k| bid - k * step)
                .take_while(|&u| u > 0)
                .filter_map(&mut level),
        );
        let mut asks = Vec::with_capacity(depth);
        asks.extend(
            (0..depth as i64)
                .map(|k| ask + k * step)
                .filter_map(&mut level),
        );
        (bids, asks)
    }
}

/// Decimals for a price of this magnitude: 6 significant digits, at least 2
/// decimals (97000.12, 3500.25, 150.123, 1.23456, 0.000123456).
pub fn price_decimals(price: f64) -> u32 {
    decimals_for(magnitude(price))
}

/// floor(log10(price)): 97000 -> 4, 0.0123 -> -2.
fn magnitude(price: f64) -> i32 {
    price.log10().floor() as i32
}

fn decimals_for(magnitude: i32) -> u32 {
    (SIGNIFICANT_DIGITS - 1 - magnitude).clamp(MIN_DECIMALS, MAX_DECIMALS) as u32
}

/// 10^-12 ..= 10^16: POW10_F[m + 12] = 10^m, the decade bounds of the price range.
const POW10_F: [f64; 29] = [
    1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0, 1e1, 1e2, 1e3,
    1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
];

/// At most this many ticks per wake-up, so the engine serves its other work
/// (queries, timers, other feeds) between batches.
pub const MAX_BATCH: u64 = 256;

/// The sim's book settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimBooks {
    pub depth: usize,
    pub step_bps: f64,
    pub interval: Duration,
}

/// The simulated feed's settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    pub seed: u64,
    /// How often each symbol ticks.
    pub tick_interval: Duration,
    pub params: GbmParams,
    /// The symbols in `[system].symbols` order, with their start prices.
    pub symbols: Vec<(Symbol, PositiveMoney)>,
}

/// Venue `sim`: each symbol ticks every `tick_interval`, the symbols in turn
/// (round robin), the k-th tick of the run due at `start + k * interval / n`.
/// A feed that falls more than one round behind (the bus is slower than the
/// configured rate) skips the backlog instead of bursting to catch up.
pub struct SimFeed {
    venue: Venue,
    symbols: Vec<Symbol>,
    paths: Vec<GbmPath>,
    /// The last seq published per symbol; the first tick is seq 1.
    seqs: Vec<u64>,
    /// Per-symbol tick interval in ns, and the clock of the run.
    interval_ns: u128,
    start: Instant,
    produced: u64,
    next: usize,
    books: Option<SimBooks>,
    /// When each symbol's next book is due (ns since the epoch).
    book_due: Vec<u64>,
}

impl SimFeed {
    pub fn new(settings: &SimSettings, books: Option<SimBooks>) -> Self {
        let symbols: Vec<Symbol> = settings.symbols.iter().map(|(s, _)| s.clone()).collect();
        let paths = settings
            .symbols
            .iter()
            .map(|(symbol, start)| {
                let start = start.get().try_into().unwrap_or(100.0);
                GbmPath::new(settings.seed, symbol.as_str(), start, &settings.params)
            })
            .collect();
        Self {
            venue: Venue::sim(),
            seqs: vec![0; symbols.len()],
            book_due: vec![0; symbols.len()],
            symbols,
            paths,
            interval_ns: settings.tick_interval.as_nanos().max(1),
            start: Instant::now(),
            produced: 0,
            next: 0,
            books,
        }
    }

    pub fn venue(&self) -> &Venue {
        &self.venue
    }

    /// The symbols; a tick's index refers to this list.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// Waits until ticks are due; returns how many (1 ..= MAX_BATCH, and at most
    /// one round: each symbol at most once), to be taken with `tick`. Cancel-safe:
    /// nothing changes before the await completes.
    pub async fn due(&mut self) -> u64 {
        let n = self.symbols.len() as u128;
        if n == 0 {
            // Config refuses an empty symbol list; without symbols there is never a tick.
            return std::future::pending().await;
        }
        loop {
            let elapsed = self.start.elapsed().as_nanos();
            let due_total = (elapsed * n / self.interval_ns) as u64;
            let behind = due_total.saturating_sub(self.produced);
            if behind > 0 {
                let round = n as u64;
                if behind > round {
                    self.produced = due_total - round;
                }
                return behind.min(round).min(MAX_BATCH);
            }
            let next_ns = (u128::from(self.produced) + 1) * self.interval_ns / n;
            sleep_until(self.start + Duration::from_nanos(next_ns as u64)).await;
        }
    }

    /// The next tick (symbol index, tick) and the symbol's book when one is due.
    pub fn tick(&mut self, now_ns: u64) -> Option<(usize, TickData, Option<Book>)> {
        let index = self.next;
        self.next = (index + 1) % self.symbols.len();
        self.produced += 1;
        let path = &mut self.paths[index];
        let quote = path.next_quote();
        self.seqs[index] += 1;
        let money = |d: Decimal| PositiveMoney::new(d).ok();
        // The model keeps every price > 0 (units >= 1), so `new` refuses only a price past
        // the contract's range (1e14): that tick is not sent.
        let tick = TickData {
            price: money(quote.price)?,
            bid: money(quote.bid),
            ask: money(quote.ask),
            size: NonNegativeMoney::new(quote.size).ok(),
            seq: self.seqs[index],
            ts: now_ns,
        };
        let book = match self.books {
            Some(books) if now_ns >= self.book_due[index] => {
                self.book_due[index] = now_ns + books.interval.as_nanos() as u64;
                let (bids, asks) = path.book_levels(books.depth, books.step_bps);
                Some(Book {
                    venue: self.venue.clone(),
                    symbol: self.symbols[index].clone(),
                    bids,
                    asks,
                    seq: self.seqs[index],
                    ts: now_ns,
                })
            }
            _ => None,
        };
        Some((index, tick, book))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// The unrounded model state, to measure returns.
    fn state_f64(path: &GbmPath) -> f64 {
        path.price
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn params() -> GbmParams {
        GbmParams {
            step_ms: 200,
            volatility: 0.8,
            drift: 0.0,
            spread_bps: 2.0,
            jump_probability: 0.0005,
            jump_pct: 1.5,
        }
    }

    fn path_of(
        seed: u64,
        symbol: &str,
        start: f64,
        params: &GbmParams,
        steps: usize,
    ) -> Vec<Quote> {
        let mut path = GbmPath::new(seed, symbol, start, params);
        (0..steps).map(|_| path.next_quote()).collect()
    }

    #[test]
    fn same_seed_same_path_other_seed_or_symbol_other_path() {
        let a = path_of(42, "BTC-USD", 97000_f64, &params(), 500);
        let b = path_of(42, "BTC-USD", 97000_f64, &params(), 500);
        assert_eq!(a, b);
        let other_seed = path_of(43, "BTC-USD", 97000_f64, &params(), 500);
        assert_ne!(a, other_seed);
        let other_symbol = path_of(42, "ETH-USD", 97000_f64, &params(), 500);
        assert_ne!(a, other_symbol);
        // The path moves at all.
        assert!(a.iter().any(|q| q.price != a[0].price));
    }

    #[test]
    fn prices_stay_positive_under_extreme_volatility_and_jumps() {
        let wild = GbmParams {
            step_ms: 60_000,
            volatility: 5.0,
            drift: -3.0,
            spread_bps: 50.0,
            jump_probability: 0.5,
            jump_pct: 90.0,
        };
        let mut path = GbmPath::new(7, "DOGE-USD", 0.0001, &wild);
        for _ in 0..20_000 {
            let q = path.next_quote();
            assert!(q.price > Decimal::ZERO, "price {}", q.price);
            assert!(q.bid > Decimal::ZERO, "bid {}", q.bid);
            assert!(q.size >= Decimal::ZERO);
            assert!(state_f64(&path) > 0.0);
            assert_eq!(path.magnitude, magnitude(path.price), "{}", path.price);
        }
    }

    #[test]
    fn spread_is_applied_around_the_price() {
        let mut p = params();
        p.spread_bps = 10.0; // 0.1 % full spread
        for q in path_of(1, "BTC-USD", 97000_f64, &p, 1000) {
            assert!(q.bid < q.price && q.price < q.ask, "{q:?}");
            let unit = Decimal::new(1, q.price.scale());
            let expected = q.price * dec("0.001");
            let spread = q.ask - q.bid;
            // Bid rounds down and ask up: at most one price unit wider each side.
            assert!(
                spread >= expected && spread <= expected + unit * Decimal::TWO,
                "{q:?}"
            );
            assert_eq!(
                q.ask - q.price,
                q.price - q.bid,
                "rounding keeps the spread symmetric: {q:?}"
            );
        }
    }

    #[test]
    fn zero_spread_quotes_the_price_on_both_sides() {
        let mut p = params();
        p.spread_bps = 0.0;
        for q in path_of(3, "SOL-USDC", 150_f64, &p, 100) {
            assert_eq!((q.bid, q.ask), (q.price, q.price));
        }
    }

    #[test]
    fn prices_are_rounded_for_their_magnitude() {
        assert_eq!(price_decimals(97000.123456), 2);
        assert_eq!(price_decimals(3500.0), 2);
        assert_eq!(price_decimals(150.5), 3);
        assert_eq!(price_decimals(1.5), 5);
        assert_eq!(price_decimals(0.000123), 9);
        assert_eq!(price_decimals(0.000000000001), 17);
        for q in path_of(5, "SOL-USDC", 150_f64, &params(), 100) {
            assert!(q.price.scale() <= 3, "{}", q.price);
        }
        for q in path_of(5, "PEPE-USDC", 0.0000123_f64, &params(), 100) {
            assert!(q.price.scale() <= 10, "{}", q.price);
            assert!(q.price > dec("0.000001"), "{}", q.price);
        }
    }

    #[test]
    fn size_is_a_notional_in_range_divided_by_the_price() {
        for q in path_of(9, "ETH-USD", 3500_f64, &params(), 500) {
            let notional = q.size * q.price;
            assert!(
                notional >= dec("9.99") && notional <= dec("10000.01"),
                "{q:?}"
            );
            assert!(q.size.scale() <= SIZE_DECIMALS);
        }
    }

    #[test]
    fn volatility_matches_the_configured_annual_figure() {
        // 20k steps of 1 h with 80 % annual vol: the sample stdev of log returns is
        // 0.8 * sqrt(1/8766) ~= 0.00854; allow a few percent of sampling error.
        let mut p = params();
        p.step_ms = 3_600_000;
        p.jump_probability = 0.0;
        let mut path = GbmPath::new(11, "BTC-USD", 97000.0, &p);
        let mut prev = state_f64(&path);
        let returns: Vec<f64> = (0..20_000)
            .map(|_| {
                path.next_quote();
                let now = state_f64(&path);
                let r = (now / prev).ln();
                prev = now;
                r
            })
            .collect();
        let mean = returns.iter().sum::<f64>() / returns.len() as f64;
        let var =
            returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (returns.len() - 1) as f64;
        let expected = 0.8 * (3_600_000.0 / MS_PER_YEAR).sqrt();
        assert!(
            (var.sqrt() / expected - 1.0).abs() < 0.03,
            "stdev {} vs {expected}",
            var.sqrt()
        );
    }
}

#[cfg(test)]
mod book_tests {
    use super::*;

    #[test]
    fn books_surround_the_quote_best_first_and_are_seeded() {
        let params = GbmParams {
            step_ms: 200,
            volatility: 0.8,
            drift: 0.0,
            spread_bps: 2.0,
            jump_probability: 0.0,
            jump_pct: 0.0,
        };
        let run = || {
            let mut path = GbmPath::new(42, "BTC-USD", 97_000.0, &params);
            let quote = path.next_quote();
            (quote, path.book_levels(5, 1.0))
        };
        let (quote, (bids, asks)) = run();
        assert_eq!((bids.len(), asks.len()), (5, 5));
        assert_eq!(bids[0].0.get(), quote.bid);
        assert_eq!(asks[0].0.get(), quote.ask);
        assert!(bids.windows(2).all(|w| w[0].0 > w[1].0), "bids high to low");
        assert!(asks.windows(2).all(|w| w[0].0 < w[1].0), "asks low to high");
        // 1 bp of ~97000 = 9.70 between levels.
        assert_eq!(asks[1].0.get() - asks[0].0.get(), Decimal::new(970, 2));
        for (price, size) in bids.iter().chain(&asks) {
            let notional = price.get() * size.get();
            assert!(
                notional > Decimal::new(999, 0) && notional < Decimal::new(50_001, 0),
                "{notional}"
            );
        }
        assert_eq!(run().1, (bids, asks), "same seed, same book");
    }

    #[test]
    fn a_tiny_price_book_stops_at_zero() {
        let params = GbmParams {
            step_ms: 200,
            volatility: 0.0,
            drift: 0.0,
            spread_bps: 0.0,
            jump_probability: 0.0,
            jump_pct: 0.0,
        };
        let mut path = GbmPath::new(1, "X-USD", 1e-12, &params);
        path.next_quote();
        let (bids, asks) = path.book_levels(10, 5000.0);
        assert!(bids.len() < 10 && !bids.is_empty(), "{bids:?}");
        assert_eq!(asks.len(), 10);
    }
}

#[cfg(test)]
mod feed_tests {
    use super::*;

    fn feed(symbols: usize, tick_interval: Duration) -> SimFeed {
        let params = GbmParams {
            step_ms: 1,
            volatility: 0.8,
            drift: 0.0,
            spread_bps: 2.0,
            jump_probability: 0.0,
            jump_pct: 0.0,
        };
        let settings = SimSettings {
            seed: 1,
            tick_interval,
            params,
            symbols: (0..symbols)
                .map(|i| (format!("S{i}-USD").parse().unwrap(), "100".parse().unwrap()))
                .collect(),
        };
        SimFeed::new(&settings, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_at_most_one_round_and_a_late_feed_skips_the_backlog() {
        let mut sim = feed(3, Duration::from_millis(30));
        // 10 ms per tick (30 ms / 3 symbols): after 1 s, 100 are due; one round is taken.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(sim.due().await, 3);
        let symbols: Vec<usize> = (0..3).map(|_| sim.tick(1).unwrap().0).collect();
        assert_eq!(symbols, [0, 1, 2], "each symbol once");
        // The backlog was skipped: nothing more is due until the next 10 ms.
        let before = tokio::time::Instant::now();
        assert_eq!(sim.due().await, 1);
        assert!(tokio::time::Instant::now() - before <= Duration::from_millis(10));
        let (_, tick, _) = sim.tick(2).unwrap();
        assert_eq!(
            (tick.seq, tick.ts),
            (2, 2),
            "seq counts per symbol; ts as given"
        );
    }
}
