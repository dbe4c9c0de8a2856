//! The simulated market: one geometric Brownian motion per symbol, seeded so the
//! same seed gives the same price path, with occasional jumps, a bid/ask spread
//! and a random trade size. Pure logic, no I/O: `feed.rs` puts it on a clock.

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

/// Published prices keep at least this many significant digits...
const SIGNIFICANT_DIGITS: i64 = 6;
/// ...and at least cents, and never more decimals than this.
const MIN_DECIMALS: i64 = 2;
const MAX_DECIMALS: i64 = 18;
/// The model state is clamped to this range so it stays > 0 and far from
/// Decimal's limits; within it, 6 significant digits fit in 18 decimals.
const MIN_PRICE: Decimal = Decimal::from_parts(1, 0, 0, false, 12); // 1e-12
const MAX_PRICE: Decimal = Decimal::from_parts(0xA4C6_8000, 0x38D7E, 0, false, 0); // 1e15
/// Each trade's notional is drawn from this range (quote units), so volumes are
/// comparable across symbols whatever their price.
const MIN_NOTIONAL: f64 = 10.0;
const MAX_NOTIONAL: f64 = 10_000.0;
const SIZE_DECIMALS: u32 = 8;
const MS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0 * 1000.0;

/// The model's parameters (already validated, see `config.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct GbmParams {
    /// Time step of one tick of one symbol.
    pub step_ms: u64,
    /// Annualised volatility (0.8 = 80 %) and drift.
    pub volatility: f64,
    pub drift: f64,
    /// Full bid/ask spread in basis points of the price.
    pub spread_bps: Decimal,
    /// Chance per tick of a jump of `jump_pct` percent, up or down with equal odds.
    pub jump_probability: f64,
    pub jump_pct: f64,
}

/// One simulated quote; every field is exact and rounded for the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub price: Decimal,
    pub bid: Decimal,
    pub ask: Decimal,
    pub size: Decimal,
}

/// The price path of one symbol.
///
/// The state is an unrounded `Decimal` (money stays exact); only the step factor
/// `exp(...)`, a ratio, is computed in f64. Rounding happens on the published copy,
/// never on the state, so small moves accumulate instead of vanishing.
#[derive(Debug, Clone)]
pub struct GbmPath {
    rng: ChaCha8Rng,
    price: Decimal,
    /// (drift - volatility^2 / 2) * dt and volatility * sqrt(dt): the per-step log move.
    log_drift: f64,
    log_diffusion: f64,
    jump_probability: f64,
    jump_pct: f64,
    /// Half the spread as a fraction of the price.
    half_spread: Decimal,
}

impl GbmPath {
    /// A path starting at `start`. Its random stream depends only on `seed` and
    /// `symbol`, so adding or reordering symbols does not change another's path.
    pub fn new(seed: u64, symbol: &str, start: Decimal, params: &GbmParams) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(fnv1a(symbol.as_bytes()));
        let dt = params.step_ms as f64 / MS_PER_YEAR;
        let sigma = params.volatility;
        Self {
            rng,
            price: start.clamp(MIN_PRICE, MAX_PRICE),
            log_drift: (params.drift - sigma * sigma / 2.0) * dt,
            log_diffusion: sigma * dt.sqrt(),
            jump_probability: params.jump_probability,
            jump_pct: params.jump_pct,
            half_spread: params.spread_bps / Decimal::from(20_000),
        }
    }

    /// Advance one step and return the new quote.
    pub fn next_quote(&mut self) -> Quote {
        // Always draw the same number of random values per step, so a path is a
        // pure function of (seed, symbol, step) whatever the branches taken.
        let z = standard_normal(&mut self.rng);
        let jump_draw: f64 = self.rng.random();
        let jump_up: bool = self.rng.random();
        let notional = self.rng.random_range(MIN_NOTIONAL..MAX_NOTIONAL);

        let mut factor = (self.log_drift + self.log_diffusion * z).exp();
        if jump_draw < self.jump_probability {
            let jump = self.jump_pct / 100.0;
            factor *= if jump_up { 1.0 + jump } else { 1.0 - jump };
        }
        // A non-finite factor (impossible with validated parameters) leaves the price as is.
        if let Some(next) = Decimal::from_f64(factor).and_then(|f| self.price.checked_mul(f)) {
            self.price = next.clamp(MIN_PRICE, MAX_PRICE);
        }
        self.quote(notional)
    }

    fn quote(&self, notional: f64) -> Quote {
        let decimals = price_decimals(self.price);
        let price = self
            .price
            .round_dp_with_strategy(decimals, RoundingStrategy::MidpointNearestEven);
        let half = price * self.half_spread;
        // Bid rounds down and ask up, so bid <= price <= ask always holds.
        let bid =
            (price - half).round_dp_with_strategy(decimals, RoundingStrategy::ToNegativeInfinity);
        let ask =
            (price + half).round_dp_with_strategy(decimals, RoundingStrategy::ToPositiveInfinity);
        let notional = Decimal::from_f64(notional).unwrap_or(Decimal::ONE_HUNDRED);
        let size = (notional / price)
            .round_dp_with_strategy(SIZE_DECIMALS, RoundingStrategy::MidpointNearestEven);
        Quote {
            price,
            bid,
            ask,
            size,
        }
    }
}

/// Decimals for a price of this magnitude: 6 significant digits, at least 2
/// decimals (97000.12, 3500.25, 150.123, 1.23456, 0.000123456).
pub fn price_decimals(price: Decimal) -> u32 {
    let digits = price
        .mantissa()
        .unsigned_abs()
        .checked_ilog10()
        .unwrap_or(0) as i64
        + 1;
    // floor(log10(price)): 97000 -> 4, 0.0123 -> -2.
    let magnitude = digits - 1 - price.scale() as i64;
    (SIGNIFICANT_DIGITS - 1 - magnitude).clamp(MIN_DECIMALS, MAX_DECIMALS) as u32
}

/// A standard normal sample (Box-Muller; one of the pair is enough here).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln never sees 0
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// FNV-1a: a stable hash (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::prelude::ToPrimitive;
    use std::str::FromStr;

    /// The unrounded model state as f64, to measure returns.
    fn state_f64(path: &GbmPath) -> f64 {
        path.price.to_f64().unwrap_or(f64::NAN)
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn params() -> GbmParams {
        GbmParams {
            step_ms: 200,
            volatility: 0.8,
            drift: 0.0,
            spread_bps: dec("2"),
            jump_probability: 0.0005,
            jump_pct: 1.5,
        }
    }

    fn path_of(
        seed: u64,
        symbol: &str,
        start: &str,
        params: &GbmParams,
        steps: usize,
    ) -> Vec<Quote> {
        let mut path = GbmPath::new(seed, symbol, dec(start), params);
        (0..steps).map(|_| path.next_quote()).collect()
    }

    #[test]
    fn constants_are_what_they_say() {
        assert_eq!(MIN_PRICE, dec("0.000000000001"));
        assert_eq!(MAX_PRICE, dec("1000000000000000"));
    }

    #[test]
    fn same_seed_same_path_other_seed_or_symbol_other_path() {
        let a = path_of(42, "BTC-USD", "97000", &params(), 500);
        let b = path_of(42, "BTC-USD", "97000", &params(), 500);
        assert_eq!(a, b);
        let other_seed = path_of(43, "BTC-USD", "97000", &params(), 500);
        assert_ne!(a, other_seed);
        let other_symbol = path_of(42, "ETH-USD", "97000", &params(), 500);
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
            spread_bps: dec("50"),
            jump_probability: 0.5,
            jump_pct: 90.0,
        };
        let mut path = GbmPath::new(7, "DOGE-USD", dec("0.0001"), &wild);
        for _ in 0..20_000 {
            let q = path.next_quote();
            assert!(q.price > Decimal::ZERO, "price {}", q.price);
            assert!(q.bid > Decimal::ZERO, "bid {}", q.bid);
            assert!(q.size >= Decimal::ZERO);
            assert!(state_f64(&path) > 0.0);
        }
    }

    #[test]
    fn spread_is_applied_around_the_price() {
        let mut p = params();
        p.spread_bps = dec("10"); // 0.1 % full spread
        for q in path_of(1, "BTC-USD", "97000", &p, 1000) {
            assert!(q.bid < q.price && q.price < q.ask, "{q:?}");
            let unit = Decimal::new(1, price_decimals(q.price));
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
        p.spread_bps = Decimal::ZERO;
        for q in path_of(3, "SOL-USDC", "150", &p, 100) {
            assert_eq!((q.bid, q.ask), (q.price, q.price));
        }
    }

    #[test]
    fn prices_are_rounded_for_their_magnitude() {
        assert_eq!(price_decimals(dec("97000.123456")), 2);
        assert_eq!(price_decimals(dec("3500")), 2);
        assert_eq!(price_decimals(dec("150.5")), 3);
        assert_eq!(price_decimals(dec("1.5")), 5);
        assert_eq!(price_decimals(dec("0.000123")), 9);
        assert_eq!(price_decimals(dec("0.000000000001")), 17);
        for q in path_of(5, "SOL-USDC", "150", &params(), 100) {
            assert!(q.price.scale() <= 3, "{}", q.price);
        }
        for q in path_of(5, "PEPE-USDC", "0.0000123", &params(), 100) {
            assert!(q.price.scale() <= 10, "{}", q.price);
            assert!(q.price > dec("0.000001"), "{}", q.price);
        }
    }

    #[test]
    fn size_is_a_notional_in_range_divided_by_the_price() {
        for q in path_of(9, "ETH-USD", "3500", &params(), 500) {
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
        let mut path = GbmPath::new(11, "BTC-USD", dec("97000"), &p);
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
