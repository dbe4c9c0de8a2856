//! The settings every connector shares (how long is stale, how fast to retry) and
//! the jittered exponential backoff between attempts.

use std::time::Duration;

use anyhow::{bail, Result};
use rand::Rng;
use serde::Deserialize;

/// The keys of `[market_data.<venue>]` that every venue has, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LinkConfig {
    /// No market data for this long: status `stale`.
    pub stale_after_ms: u64,
    /// No frame at all (data, heartbeat, ping, pong) for this long: the connection
    /// is dead; reconnect.
    pub dead_after_ms: u64,
    pub connect_timeout_ms: u64,
    /// First retry delay; doubles per failed attempt up to `backoff_max_ms`, each
    /// delay drawn at random from its upper half (jitter).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// The current status is re-sent on `md.status.<venue>` this often.
    pub status_interval_ms: u64,
    /// Levels per side in `md.book.<venue>.<symbol>` (venues with books).
    pub book_depth: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            stale_after_ms: 10_000,
            dead_after_ms: 60_000,
            connect_timeout_ms: 10_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            status_interval_ms: 5_000,
            book_depth: 10,
        }
    }
}

/// The biggest `book_depth`: a book message stays small.
const MAX_BOOK_DEPTH: usize = 1000;

/// [`LinkConfig`], checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Link {
    pub stale_after: Duration,
    pub dead_after: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub status_interval: Duration,
    pub book_depth: usize,
}

impl LinkConfig {
    pub(crate) fn validate(&self, venue: &str) -> Result<Link> {
        let positive = [
            ("stale_after_ms", self.stale_after_ms),
            ("dead_after_ms", self.dead_after_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("status_interval_ms", self.status_interval_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("[market_data.{venue}] {key} = 0: must be at least 1");
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            bail!(
                "[market_data.{venue}] backoff_max_ms = {}: must be >= backoff_initial_ms ({})",
                self.backoff_max_ms,
                self.backoff_initial_ms
            );
        }
        if !(1..=MAX_BOOK_DEPTH).contains(&self.book_depth) {
            bail!(
                "[market_data.{venue}] book_depth = {}: must be between 1 and {MAX_BOOK_DEPTH}",
                self.book_depth
            );
        }
        Ok(Link {
            stale_after: Duration::from_millis(self.stale_after_ms),
            dead_after: Duration::from_millis(self.dead_after_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            status_interval: Duration::from_millis(self.status_interval_ms),
            book_depth: self.book_depth,
        })
    }
}

pub(crate) const WS: &[&str] = &["ws://", "wss://"];
pub(crate) const HTTP: &[&str] = &["http://", "https://"];

/// A URL of `[market_data.<venue>] <key>` must use one of `schemes`.
pub(crate) fn check_url(venue: &str, key: &str, url: &str, schemes: &[&str]) -> Result<()> {
    let host = schemes.iter().find_map(|s| url.strip_prefix(s));
    if host.is_none_or(str::is_empty) || url.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        bail!(
            "[market_data.{venue}] {key} = {url:?}: must be a {} URL",
            schemes.join(" or ")
        );
    }
    Ok(())
}

/// Delays between attempts: initial, 2x, 4x, ... capped at max, each one drawn
/// uniformly from [d/2, d] so that many clients do not retry in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(link: &Link) -> Self {
        Self {
            initial: link.backoff_initial,
            max: link.backoff_max,
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// After a success: the next failure starts again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(initial: u64, max: u64) -> Link {
        LinkConfig {
            backoff_initial_ms: initial,
            backoff_max_ms: max,
            ..LinkConfig::default()
        }
        .validate("test")
        .unwrap()
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(&link(100, 1000));
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
        for ceiling in ceilings {
            let delay = backoff.next_delay().as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&delay),
                "{delay} ms not in [{}, {ceiling}]",
                ceiling / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_draws_differ() {
        let mut delays = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut backoff = Backoff::new(&link(1000, 1000));
            delays.insert(backoff.next_delay());
        }
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = LinkConfig {
            stale_after_ms: 0,
            ..LinkConfig::default()
        }
        .validate("binance")
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "[market_data.binance] stale_after_ms = 0: must be at least 1"
        );
        let err = link_err(LinkConfig {
            backoff_initial_ms: 10,
            backoff_max_ms: 5,
            ..LinkConfig::default()
        });
        assert!(
            err.contains("backoff_max_ms = 5: must be >= backoff_initial_ms (10)"),
            "{err}"
        );
        let err = link_err(LinkConfig {
            book_depth: 0,
            ..LinkConfig::default()
        });
        assert!(err.contains("book_depth = 0"), "{err}");
    }

    fn link_err(config: LinkConfig) -> String {
        config.validate("x").unwrap_err().to_string()
    }
}
