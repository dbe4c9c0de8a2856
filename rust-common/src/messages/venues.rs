//! Live venues: execution's [`LiveVenueStatus`] of each live venue (`exec.venue.<venue>`,
//! with the account read from the venue) and risk's [`Reconciliation`] of it with its own
//! positions (`risk.recon.<venue>`).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::check::{self, quoted, wire_enum, ValidationError};
use super::ids::{Symbol, Venue};
use super::money::{Money, NonNegativeMoney, PositiveMoney};

wire_enum! {
    /// Which live venue adapter of execution talks to the venue ([`LiveVenueStatus::kind`]).
    LiveVenueKind {
        /// Binance spot.
        BinanceSpot = "binance_spot",
        /// Binance USD-M futures.
        BinanceFutures = "binance_futures",
        /// Aster (Binance-compatible futures).
        Aster = "aster",
        /// Hyperliquid perpetuals.
        Hyperliquid = "hyperliquid",
        /// Jupiter (Solana swaps).
        Jupiter = "jupiter",
    }
}

wire_enum! {
    /// A live venue's mode ([`LiveVenueStatus::mode`]).
    VenueMode {
        /// The venue's test network: no real money.
        Testnet = "testnet",
        /// Real money.
        Live = "live",
    }
}

wire_enum! {
    /// [`Reconciliation::state`].
    ReconState {
        /// The venue's positions are risk's (within the tolerance), no unknown orders.
        Matched = "MATCHED",
        /// A position differs beyond the tolerance, or the venue has orders execution does not know.
        Mismatch = "MISMATCH",
        /// No account read from the venue for longer than `recon_stale_ms`.
        Unavailable = "UNAVAILABLE",
    }
}

wire_enum! {
    /// [`Reconciliation::action`]: what risk did about it.
    ReconAction {
        /// Nothing: the venue matches.
        None = "NONE",
        /// The account may only reduce positions.
        ReduceOnly = "REDUCE_ONLY",
        /// The account may not trade.
        Halted = "HALTED",
    }
}

/// A venue's own name for something: 1 to 128 characters.
fn venue_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    check::chars::<1, 128, _>(d)
}

/// An optional venue text: absent, null, or 1 to 128 characters.
fn optional_venue_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => {
            let n = text.chars().count();
            if (1..=128).contains(&n) {
                Ok(Some(text))
            } else {
                Err(de::Error::custom(format!(
                    "a string of 1 to 128 characters expected, got {n}"
                )))
            }
        }
        None => Ok(None),
    }
}

/// One asset's balance at a venue, as the venue reports it (total = free + locked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VenueBalanceEntry {
    /// The venue's asset name (`USDT`, `BTC`, a token mint).
    #[serde(deserialize_with = "venue_text")]
    pub asset: String,
    /// The total balance.
    pub total: Money,
}

/// One position at a venue, as the venue reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VenuePositionEntry {
    /// The symbol, mapped to `BASE-QUOTE`.
    pub symbol: Symbol,
    /// Signed quantity (short < 0).
    pub quantity: Money,
    /// The venue's entry price, when it says one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_price: Option<PositiveMoney>,
}

/// The account read from a venue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VenueAccount {
    /// Cash in the quote currency, where the venue says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cash: Option<Money>,
    /// Equity (cash plus positions' value), where the venue says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equity: Option<Money>,
    /// Every balance.
    #[serde(default)]
    pub balances: Vec<VenueBalanceEntry>,
    /// The positions (derivatives, or spot holdings as `BASE-QUOTE`).
    #[serde(default)]
    pub positions: Vec<VenuePositionEntry>,
}

/// An order open at the venue that execution does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownVenueOrder {
    /// The venue's order id.
    #[serde(
        default,
        deserialize_with = "optional_venue_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub venue_order_id: Option<String>,
    /// The client order id the venue holds for it.
    #[serde(
        default,
        deserialize_with = "optional_venue_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_order_id: Option<String>,
    /// The venue's symbol (`BTCUSDT`).
    #[serde(deserialize_with = "venue_text")]
    pub venue_symbol: String,
    /// The symbol as `BASE-QUOTE`, when it maps to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
    /// The venue's status of the order.
    #[serde(deserialize_with = "venue_text")]
    pub status: String,
    /// How much of it has filled.
    #[serde(default)]
    pub filled: NonNegativeMoney,
}

/// `exec.venue.<venue>`: one live venue as execution sees it, with the account read from it
/// (every `reconcile_interval_ms` and on change). Published by execution only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveVenueStatus {
    /// The venue (the subject's token).
    pub venue: Venue,
    /// The adapter.
    pub kind: LiveVenueKind,
    /// testnet or live.
    pub mode: VenueMode,
    /// Is execution connected to the venue.
    pub connected: bool,
    /// Why not, or anything else worth saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Orders resting at the venue that execution knows.
    #[serde(default)]
    pub working_orders: u64,
    /// Orders sent to the venue with no answer from it yet.
    #[serde(default)]
    pub unconfirmed_orders: u64,
    /// The account read from the venue; None: it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<VenueAccount>,
    /// Why the account could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_error: Option<String>,
    /// Orders open at the venue that execution does not know.
    #[serde(default)]
    pub unknown_orders: Vec<UnknownVenueOrder>,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// One symbol whose quantity at the venue differs from risk's beyond the tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconDifference {
    /// The symbol.
    pub symbol: Symbol,
    /// The venue's quantity (signed).
    pub venue: Money,
    /// Risk's quantity (signed).
    pub ledger: Money,
    /// venue - ledger.
    pub difference: Money,
}

/// `risk.recon.<venue>`: risk's comparison of a live venue's account with its own
/// positions. Published by risk only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// The venue.
    pub venue: Venue,
    /// MATCHED, MISMATCH or UNAVAILABLE.
    pub state: ReconState,
    /// What risk did about it.
    pub action: ReconAction,
    /// The symbols that differ.
    #[serde(default)]
    pub differences: Vec<ReconDifference>,
    /// Orders open at the venue that execution does not know.
    #[serde(default)]
    pub unknown_orders: u64,
    /// The venue's cash, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cash: Option<Money>,
    /// The venue's equity, as reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equity: Option<Money>,
    /// Why, in words.
    #[serde(default)]
    pub detail: String,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn venue_texts_are_bounded() {
        let order = |id: &str| {
            serde_json::from_str::<UnknownVenueOrder>(&format!(
                r#"{{"venue_order_id":{id},"venue_symbol":"BTCUSDT","status":"NEW"}}"#
            ))
        };
        assert!(order("null").is_ok() && order(r#""1""#).is_ok());
        assert!(order(r#""""#).is_err());
        assert!(order(&format!("{:?}", "x".repeat(129))).is_err());
    }

    #[test]
    fn kinds_and_modes_read_their_wire_names() {
        assert_eq!(
            "binance_futures".parse::<LiveVenueKind>(),
            Ok(LiveVenueKind::BinanceFutures)
        );
        assert!("paper".parse::<VenueMode>().is_err());
    }
}
