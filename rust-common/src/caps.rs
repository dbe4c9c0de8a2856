//! Caps on what a service keeps per key that a publisher names.
//!
//! rust-risk keeps a mark (and a circuit-breaker window) per symbol of `md.tick.>`, and
//! rust-execution the latest tick per symbol and the latest book per symbol and venue. The
//! subject's publisher chooses those keys: one stolen market-data credential publishing
//! made-up symbols would grow those maps without end (OOM). So each keeps at most
//! `MAX_MARKET_SYMBOLS` keys. When a new key comes to a full map, what has gone stale there
//! (by the service's own freshness rule: a mark risk would refuse to price with, a tick or
//! book execution would not use) is dropped to make room; if there is still none, the message
//! is refused on `errors.<service>` and the keys kept still update. The Python services keep
//! the same number (`services/common/caps.py`).

/// Far above any deployment we run (the benchmarks take 1,000 symbols through the whole
/// system, market-data alone 10,000 to 100,000), small enough to bound memory: a risk mark
/// with its breaker window is a few hundred bytes.
pub const MAX_MARKET_SYMBOLS: usize = 100_000;

/// The most levels a side of a book may have (market-data's own `book_depth` limit): a book
/// with more is refused, so a kept book stays small.
pub const MAX_BOOK_LEVELS: usize = 1_000;

/// A full map is searched for stale keys (a pass over all of them) at most this often:
/// under a flood of new keys, once a second, not once a message.
pub const SWEEP_EVERY_NS: u64 = 1_000_000_000;

/// The cap of one map: its limit and when it was last swept.
#[derive(Debug, Clone)]
pub struct KeyCap {
    limit: usize,
    swept_ns: Option<u64>,
}

impl Default for KeyCap {
    fn default() -> Self {
        Self::new(MAX_MARKET_SYMBOLS)
    }
}

impl KeyCap {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            swept_ns: None,
        }
    }

    /// Whether a map holding `len` keys has no room for a new one.
    pub fn full(&self, len: usize) -> bool {
        len >= self.limit
    }

    /// Whether a full map may be swept for stale keys now (`now_ns` on a monotonic clock);
    /// if so, the sweep is taken as done now.
    pub fn may_sweep(&mut self, now_ns: u64) -> bool {
        let due = self
            .swept_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= SWEEP_EVERY_NS);
        if due {
            self.swept_ns = Some(now_ns);
        }
        due
    }

    /// The reason a message for the new key `key` is refused, for `errors.<service>`.
    pub fn refusal(&self, what: &str, key: &str) -> String {
        format!(
            "{what} {key} refused: already {} kept, the most this service keeps \
             (MAX_MARKET_SYMBOLS {}), none of them stale",
            self.limit, self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_is_swept_at_most_once_a_second() {
        let mut cap = KeyCap::new(2);
        assert!(!cap.full(1));
        assert!(cap.full(2));
        assert!(cap.may_sweep(5));
        assert!(!cap.may_sweep(5 + SWEEP_EVERY_NS - 1));
        assert!(cap.may_sweep(5 + SWEEP_EVERY_NS));
        assert!(cap
            .refusal("mark of", "XYZ-USD")
            .contains("MAX_MARKET_SYMBOLS 2"));
    }
}
