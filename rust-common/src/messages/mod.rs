//! The bus contract in Rust: one type per message of proto/SUBJECTS.md.
//!
//! A mirror of `services/common/models.py` (the source of truth) and of the JSON Schemas
//! generated from it in `proto/schemas`. `tests/vectors.rs` runs every vector of
//! `proto/vectors` through these types, so Rust and Python judge the wire the same way.
//!
//! Rules (proto/SUBJECTS.md, README "The contract"), all enforced while deserializing:
//! - money is a decimal *string* on the wire (`"187.42"`) and a
//!   [`Decimal`](rust_decimal::Decimal) in code;
//!   a JSON number where money belongs is rejected; it is written fixed-point, never
//!   with an exponent ([`Money`], [`PositiveMoney`], [`NonNegativeMoney`]); its
//!   magnitude is below 1e14 ([`MONEY_LIMIT`]), so the product of any two money values
//!   fits a `Decimal` (< 1e28 < 7.9e28) and cannot overflow;
//! - time is integer nanoseconds since the epoch (`u64`); integers and bools are never
//!   read from strings, integers never from floats;
//! - symbols are `BASE-QUOTE`, venues lowercase, both single safe subject tokens
//!   ([`Symbol`], [`Venue`], ... check themselves, also when parsed from a subject);
//! - market data, events and replies ignore unknown fields; orders and requests
//!   (`deny_unknown_fields`) reject them;
//! - optional fields that are `None` are left out when writing; missing or `null`
//!   both read as `None`. Fields with a default in the model have the same default here.
//!
//! One file per concern, everything re-exported here (`moonbus_common::messages::Tick`,
//! `moonbus_common::Tick`): `money.rs` (decimal strings and their bounds), `ids.rs` (the
//! validated tokens), `market.rs` (market data and the `md.api` messages), `risk.rs`,
//! `orders.rs`, `agents.rs`, `api.rs` (error replies and events, version) and `check.rs`
//! (the validation error and helpers the others share). The dependencies point one way:
//! `check` <- `money`, `ids` <- the message modules, and of those only `risk` uses another
//! (`orders`, for [`Side`] and [`OrderType`]).

// Every public item of the contract has a doc comment (clippy -D warnings keeps it so).
#![warn(missing_docs)]

use std::time::{SystemTime, UNIX_EPOCH};

mod agents;
mod api;
mod backtest;
mod check;
mod ids;
mod market;
mod money;
mod orders;
mod risk;
mod venues;

pub use agents::*;
pub use api::*;
pub use backtest::*;
pub use check::ValidationError;
pub use ids::*;
pub use market::*;
pub use money::*;
pub use orders::*;
pub use risk::*;
pub use venues::*;

/// Nanoseconds since the Unix epoch, the unit of every `*_ts` field.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Nanoseconds since the Unix epoch on a clock that never steps: the wall clock read
/// once (at the first call) plus the monotonic time elapsed since. Ages, windows and
/// expiries measured on it survive a wall-clock step (NTP, an operator) on this host;
/// it strays from the wall clock only by the adjustments made since the process began.
pub fn steady_ns() -> u64 {
    static ANCHOR: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (at, wall) = *ANCHOR.get_or_init(|| (std::time::Instant::now(), now_ns()));
    wall.saturating_add(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_nanoseconds() {
        assert!(now_ns() > 1_700_000_000_000_000_000);
    }

    #[test]
    fn the_steady_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let first = steady_ns();
        assert!(first.abs_diff(now_ns()) < 1_000_000_000);
        let mut last = first;
        for _ in 0..1000 {
            let now = steady_ns();
            assert!(now >= last);
            last = now;
        }
    }
}
