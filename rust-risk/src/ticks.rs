//! Ticks that risk finds waiting together, applied as one batch (`Engine::apply_ticks`):
//! one sum of the account and one account published per batch rather than per tick when
//! risk falls behind (at 1,000 held symbols a sum per tick was most of its time), and one
//! tick at a time when it keeps up. A batch holds one tick per symbol: a symbol's next tick
//! starts the next batch, so every mark meets the peak and the loss latch.

use std::collections::HashSet;

use moonbus_common::{Symbol, Tick};

/// The most ticks in one batch (and so the most one sum of the account stands for).
pub const MAX_BATCH: usize = 1024;

#[derive(Debug, Default)]
pub struct TickBatch {
    ticks: Vec<Tick>,
    symbols: HashSet<Symbol>,
}

impl TickBatch {
    /// Whether `tick` may join: the batch is not full and has no tick of its symbol (else
    /// it goes in the next batch).
    pub fn takes(&self, tick: &Tick) -> bool {
        self.ticks.len() < MAX_BATCH && !self.symbols.contains(&tick.symbol)
    }

    /// The tick into the batch (one that `takes`).
    pub fn push(&mut self, tick: Tick) {
        debug_assert!(
            self.takes(&tick),
            "a second tick of {} in one batch",
            tick.symbol
        );
        self.symbols.insert(tick.symbol.clone());
        self.ticks.push(tick);
    }

    pub fn ticks(&self) -> &[Tick] {
        &self.ticks
    }

    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    pub fn clear(&mut self) {
        self.ticks.clear();
        self.symbols.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(symbol: &str, price: &str) -> Tick {
        serde_json::from_value(serde_json::json!({
            "symbol": symbol, "venue": "sim", "price": price, "seq": 1, "ts": 1
        }))
        .unwrap()
    }

    #[test]
    fn a_symbols_second_tick_and_the_tick_past_the_cap_wait_for_the_next_batch() {
        let mut batch = TickBatch::default();
        batch.push(tick("SOL-USDC", "130"));
        assert!(batch.takes(&tick("BTC-USD", "97000")));
        batch.push(tick("BTC-USD", "97000"));
        let again = tick("SOL-USDC", "150");
        assert!(!batch.takes(&again));
        assert_eq!(batch.ticks().len(), 2);
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.takes(&again));
        batch.push(again);
        for i in 1..MAX_BATCH {
            batch.push(tick(&format!("S{i:05}-USD"), "1"));
        }
        assert!(!batch.takes(&tick("LAST-USD", "1")));
        assert_eq!(batch.ticks().len(), MAX_BATCH);
    }
}
