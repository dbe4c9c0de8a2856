//! Circuit breakers: a symbol whose mark moves more than `pct` percent within
//! `window_ns` is halted for `halt_ns`. While halted nothing that adds risk passes;
//! orders that reduce a position still do (a trader closes into a crash, never opens).
//!
//! The move is measured against the lowest and the highest mark of the window
//! (monotonic queues, O(1) per tick). A trip starts a fresh window at the tripping
//! price; marks keep being recorded during the halt, so if the price is still running
//! when the halt ends, the first tick after it halts the symbol again.

use std::collections::{HashMap, VecDeque};

use moonbus_common::Symbol;
use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Zero = circuit breakers off.
    pub pct: Decimal,
    pub window_ns: u64,
    pub halt_ns: u64,
}

/// A halt in force (or ended: see `until_ns`).
#[derive(Debug, Clone, PartialEq)]
pub struct Halt {
    pub until_ns: u64,
    /// What tripped it, in words.
    pub detail: String,
}

/// The marks of one window, with the lowest and highest at the front of their queue.
#[derive(Debug, Default)]
struct Window {
    lows: VecDeque<(u64, Decimal)>,
    highs: VecDeque<(u64, Decimal)>,
}

impl Window {
    fn push(&mut self, now_ns: u64, price: Decimal, window_ns: u64) {
        while self.lows.back().is_some_and(|(_, p)| *p >= price) {
            self.lows.pop_back();
        }
        self.lows.push_back((now_ns, price));
        while self.highs.back().is_some_and(|(_, p)| *p <= price) {
            self.highs.pop_back();
        }
        self.highs.push_back((now_ns, price));
        for queue in [&mut self.lows, &mut self.highs] {
            while queue
                .front()
                .is_some_and(|(t, _)| now_ns.saturating_sub(*t) > window_ns)
            {
                queue.pop_front();
            }
        }
    }

    /// The largest move to `price` from any mark of the window, signed, in percent.
    fn move_pct(&self, price: Decimal) -> Decimal {
        let up = self
            .lows
            .front()
            .map_or(Decimal::ZERO, |(_, low)| percent_move(*low, price));
        let down = self
            .highs
            .front()
            .map_or(Decimal::ZERO, |(_, high)| percent_move(*high, price));
        if up >= -down {
            up
        } else {
            down
        }
    }

    fn clear(&mut self) {
        self.lows.clear();
        self.highs.clear();
    }
}

/// `(to - from) * 100 / from`; a move too big for a decimal (a mark of 1e-20 after one
/// of 1e13) is as big as a decimal goes, in its direction: it trips the breaker.
fn percent_move(from: Decimal, to: Decimal) -> Decimal {
    to.checked_sub(from)
        .and_then(|x| x.checked_mul(Decimal::ONE_HUNDRED))
        .and_then(|x| x.checked_div(from))
        .unwrap_or(if to < from {
            Decimal::MIN
        } else {
            Decimal::MAX
        })
}

#[derive(Debug, Default)]
struct SymbolState {
    window: Window,
    halt: Option<Halt>,
}

#[derive(Debug)]
pub struct CircuitBreakers {
    config: BreakerConfig,
    symbols: HashMap<Symbol, SymbolState>,
}

impl CircuitBreakers {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            symbols: HashMap::new(),
        }
    }

    /// A new mark; returns true when it trips the breaker (a new halt starts).
    pub fn observe(&mut self, symbol: &Symbol, price: Decimal, now_ns: u64) -> bool {
        let config = self.config;
        if config.pct.is_zero() {
            return false;
        }
        let state = self.symbols.entry(symbol.clone()).or_default();
        state.window.push(now_ns, price, config.window_ns);
        if state.halt.as_ref().is_some_and(|h| now_ns < h.until_ns) {
            return false;
        }
        let moved = state.window.move_pct(price);
        if moved.abs() <= config.pct {
            state.halt = None;
            return false;
        }
        let until_ns = now_ns.saturating_add(config.halt_ns);
        state.halt = Some(Halt {
            until_ns,
            detail: format!(
                "{symbol} moved {}% within {} s (circuit_breaker_pct {}), halted for {} s until ts {until_ns}",
                moved.round_dp(2).normalize(),
                config.window_ns / 1_000_000_000,
                config.pct.normalize(),
                config.halt_ns / 1_000_000_000,
            ),
        });
        state.window.clear();
        state.window.push(now_ns, price, config.window_ns);
        tracing::warn!(%symbol, %price, moved = %moved.round_dp(2), until_ns, "circuit breaker tripped");
        true
    }

    /// Forgets `symbol`'s window and halt (its mark was dropped: engine.rs).
    pub fn forget(&mut self, symbol: &Symbol) {
        self.symbols.remove(symbol);
    }

    /// Every halt recorded (in force or ended), for a snapshot.
    pub fn halts(&self) -> impl Iterator<Item = (&Symbol, &Halt)> {
        self.symbols
            .iter()
            .filter_map(|(symbol, s)| s.halt.as_ref().map(|h| (symbol, h)))
    }

    /// A halt from a snapshot; the window starts afresh with the next tick.
    pub fn restore_halt(&mut self, symbol: Symbol, halt: Halt) {
        self.symbols.entry(symbol).or_default().halt = Some(halt);
    }

    /// The halt in force for `symbol` at `now_ns`, if any.
    pub fn halt(&self, symbol: &Symbol, now_ns: u64) -> Option<&Halt> {
        self.symbols
            .get(symbol)
            .and_then(|s| s.halt.as_ref())
            .filter(|h| now_ns < h.until_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{d, sym};

    const S: u64 = 1_000_000_000;

    fn breakers() -> CircuitBreakers {
        CircuitBreakers::new(BreakerConfig {
            pct: d("5"),
            window_ns: 60 * S,
            halt_ns: 300 * S,
        })
    }

    #[test]
    fn a_move_within_the_limit_does_not_trip() {
        let mut b = breakers();
        let btc = sym("BTC-USD");
        assert!(!b.observe(&btc, d("100"), 0));
        assert!(!b.observe(&btc, d("105"), S));
        assert!(!b.observe(&btc, d("100"), 2 * S));
        // Down from the high of 105 to 99.75 is exactly -5%: not more than the limit.
        assert!(!b.observe(&btc, d("99.75"), 3 * S));
        assert!(b.halt(&btc, 3 * S).is_none());
    }

    #[test]
    fn a_fall_from_the_window_high_trips_and_halts_for_the_halt_time() {
        let mut b = breakers();
        let btc = sym("BTC-USD");
        b.observe(&btc, d("100"), 0);
        assert!(!b.observe(&btc, d("104"), 10 * S));
        assert!(!b.observe(&btc, d("98.8"), 15 * S), "exactly -5% from 104");
        assert!(b.observe(&btc, d("98.7"), 20 * S), "-5.096% from 104");
        let halt = b.halt(&btc, 20 * S).unwrap();
        assert_eq!(halt.until_ns, 320 * S);
        assert!(
            halt.detail.contains("moved -5.1% within 60 s"),
            "{}",
            halt.detail
        );
        assert!(b.halt(&btc, 320 * S - 1).is_some());
        assert!(b.halt(&btc, 320 * S).is_none());
        // Other symbols trade on.
        assert!(b.halt(&sym("ETH-USD"), 20 * S).is_none());
    }

    #[test]
    fn moves_older_than_the_window_do_not_count() {
        let mut b = breakers();
        let btc = sym("BTC-USD");
        b.observe(&btc, d("100"), 0);
        b.observe(&btc, d("103"), 40 * S);
        // 61 s after the 100: only 103 is in the window; 107 is +3.9% from it.
        assert!(!b.observe(&btc, d("107"), 61 * S));
        assert!(b.halt(&btc, 61 * S).is_none());
    }

    #[test]
    fn a_move_that_continues_through_the_halt_halts_again() {
        let mut b = breakers();
        let btc = sym("BTC-USD");
        b.observe(&btc, d("100"), 0);
        assert!(b.observe(&btc, d("94"), S));
        // During the halt: recorded, no new trip.
        assert!(!b.observe(&btc, d("90"), 290 * S));
        assert!(b.halt(&btc, 300 * S).is_some());
        // The halt ends at 301 s; the price is still falling: -5.56% from 90 within 11 s.
        assert!(b.observe(&btc, d("85"), 301 * S));
        assert_eq!(b.halt(&btc, 301 * S).unwrap().until_ns, 601 * S);
        // A market that calmed down during the halt trades again after it.
        let mut calm = breakers();
        calm.observe(&btc, d("100"), 0);
        assert!(calm.observe(&btc, d("106"), S));
        assert!(!calm.observe(&btc, d("106.5"), 400 * S));
        assert!(calm.halt(&btc, 400 * S).is_none());
    }

    #[test]
    fn a_move_too_big_for_a_decimal_trips_without_a_panic() {
        let mut b = breakers();
        let btc = sym("BTC-USD");
        b.observe(&btc, d("0.0000000000000000000000000001"), 0);
        // +1e43 %: beyond the decimal range, reported as the largest move there is.
        assert!(b.observe(&btc, d("99999999999999"), S));
        let halt = b.halt(&btc, S).unwrap();
        assert!(
            halt.detail.contains("moved 79228162514264337593543950335%"),
            "{}",
            halt.detail
        );
        let eth = sym("ETH-USD");
        b.observe(&eth, d("99999999999999"), 0);
        assert!(b.observe(&eth, d("0.0000000000000000000000000001"), S));
        assert!(b.halt(&eth, S).unwrap().detail.contains("moved -100%"));
    }

    #[test]
    fn zero_pct_turns_breakers_off() {
        let mut b = CircuitBreakers::new(BreakerConfig {
            pct: Decimal::ZERO,
            window_ns: 60 * S,
            halt_ns: 300 * S,
        });
        let btc = sym("BTC-USD");
        b.observe(&btc, d("100"), 0);
        assert!(!b.observe(&btc, d("1"), S));
        assert!(b.symbols.is_empty());
    }
}
