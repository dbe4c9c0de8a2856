//! Which venues may hold a short: the one place this rule is written (the pre-trade
//! check, rules.rs, asks it; the backtester runs the same rules through rust-backtest).
//!
//! - A venue with an `[execution.live.<name>]` table is the kind it names there:
//!   perpetual futures (`hyperliquid`, `binance_futures`, `aster`) may go short; spot
//!   venues (`binance_spot`, `jupiter`) cannot: selling there needs the asset in hand.
//!   The kind decides whatever the venue's `mode` (a spot venue rehearsed in paper mode
//!   refuses a short as it would for real).
//! - Every other venue is the paper venue (`sim`, the `[execution] venues`): it may go short,
//!   unless execution's status of it (`exec.venue.<venue>`, LiveVenueStatus) says it is a
//!   live venue of a spot kind: risk learns kinds from those too, and a spot kind heard
//!   there wins over the config (fail closed when risk's config misses the table).
//!
//! On a venue that cannot go short, a SELL passes only if what risk's fills on that venue
//! hold of the symbol (its books per venue, recon.rs) covers it and every sell of the
//! symbol in flight (all venues: the conservative side); else it is refused
//! `short_not_allowed`. So a spot venue's position never goes below zero in risk's books.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{Context as _, Result};
use moonbus_common::config::Config;
use moonbus_common::{LiveVenueKind, Venue};
use serde::Deserialize;

/// The refusal code of a sell-to-open on a venue that cannot hold a short.
pub const SHORT_NOT_ALLOWED: &str = "short_not_allowed";

/// Whether a live venue kind can hold a short position.
pub fn kind_allows_short(kind: LiveVenueKind) -> bool {
    match kind {
        LiveVenueKind::Hyperliquid | LiveVenueKind::BinanceFutures | LiveVenueKind::Aster => true,
        LiveVenueKind::BinanceSpot | LiveVenueKind::Jupiter => false,
    }
}

/// The venues that cannot hold a short (every other one can), from the live venues' kinds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShortVenues {
    kinds: BTreeMap<Venue, LiveVenueKind>,
}

/// `[execution.live.<name>] kind`: the only key of those tables risk reads (execution
/// checks the rest).
#[derive(Debug, Deserialize)]
struct LiveKind {
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
struct ExecutionVenues {
    #[serde(default)]
    live: BTreeMap<String, LiveKind>,
}

impl ShortVenues {
    /// From `[execution.live.*] kind` of the config (no table: every venue is paper).
    pub fn load(config: &Config) -> Result<Self> {
        let execution: ExecutionVenues = config.section("execution")?;
        Self::from_kinds(
            execution
                .live
                .iter()
                .map(|(name, live)| (name.as_str(), live.kind.as_str())),
        )
    }

    /// From (venue name, kind) pairs; an unknown kind or a bad name is an error.
    pub fn from_kinds<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut kinds = BTreeMap::new();
        for (name, kind) in pairs {
            let venue = Venue::try_from(name.to_string())
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("[execution.live.{name}]"))?;
            let parsed = LiveVenueKind::from_str(kind)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("[execution.live.{name}] kind {kind:?}"))?;
            kinds.insert(venue, parsed);
        }
        Ok(Self { kinds })
    }

    /// A kind heard from execution's status of the venue: a kind that cannot go short
    /// replaces one that can (never the other way: a config's spot kind stays).
    pub fn learn(&mut self, venue: &Venue, kind: LiveVenueKind) {
        let known = self.kinds.get(venue).copied();
        if known.is_none_or(|k| kind_allows_short(k) && !kind_allows_short(kind)) {
            self.kinds.insert(venue.clone(), kind);
        }
    }

    /// The venue's live kind (None: the paper venue).
    pub fn kind(&self, venue: &Venue) -> Option<LiveVenueKind> {
        self.kinds.get(venue).copied()
    }

    /// May `venue` hold a short position?
    pub fn allows_short(&self, venue: &Venue) -> bool {
        self.kind(venue).is_none_or(kind_allows_short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn venue(name: &str) -> Venue {
        Venue::try_from(name.to_string()).unwrap()
    }

    #[test]
    fn perps_and_paper_may_go_short_spot_may_not() {
        let venues = ShortVenues::from_kinds([
            ("hl", "hyperliquid"),
            ("bf", "binance_futures"),
            ("aster", "aster"),
            ("binance", "binance_spot"),
            ("jup", "jupiter"),
        ])
        .unwrap();
        for name in ["hl", "bf", "aster", "sim", "anything_else"] {
            assert!(venues.allows_short(&venue(name)), "{name}");
        }
        for name in ["binance", "jup"] {
            assert!(!venues.allows_short(&venue(name)), "{name}");
        }
        assert_eq!(venues.kind(&venue("jup")), Some(LiveVenueKind::Jupiter));
        assert_eq!(venues.kind(&venue("sim")), None);
    }

    #[test]
    fn kinds_heard_from_execution_only_close_shorts() {
        let mut venues =
            ShortVenues::from_kinds([("hl", "hyperliquid"), ("bn", "binance_spot")]).unwrap();
        venues.learn(&venue("jup"), LiveVenueKind::Jupiter); // not in the config: spot now
        venues.learn(&venue("hl"), LiveVenueKind::BinanceSpot); // says spot: spot wins
        venues.learn(&venue("bn"), LiveVenueKind::BinanceFutures); // the config's spot stays
        for name in ["jup", "hl", "bn"] {
            assert!(!venues.allows_short(&venue(name)), "{name}");
        }
        venues.learn(&venue("aster"), LiveVenueKind::Aster);
        assert!(venues.allows_short(&venue("aster")));
        assert_eq!(venues.kind(&venue("aster")), Some(LiveVenueKind::Aster));
    }

    #[test]
    fn read_from_the_execution_live_tables() {
        let text = "[execution.live.binance]\nkind = \"binance_spot\"\nmode = \"testnet\"\n\
                    max_notional = \"100\"\nsymbols = { \"BTC-USDT\" = \"BTCUSDT\" }\n\
                    [execution.live.hl]\nkind = \"hyperliquid\"\n";
        let venues = ShortVenues::load(&Config::from_parts(text, Vec::new()).unwrap()).unwrap();
        assert!(!venues.allows_short(&venue("binance")));
        assert!(venues.allows_short(&venue("hl")));
        // An environment override makes a venue a live one too.
        let env = vec![(
            "MOONBUS__EXECUTION__LIVE__JUP__KIND".to_string(),
            "jupiter".to_string(),
        )];
        let venues = ShortVenues::load(&Config::from_parts("", env).unwrap()).unwrap();
        assert!(!venues.allows_short(&venue("jup")));
        assert_eq!(
            ShortVenues::load(&Config::from_parts("", Vec::new()).unwrap()).unwrap(),
            ShortVenues::default()
        );
        let bad =
            Config::from_parts("[execution.live.x]\nkind = \"kraken\"\n", Vec::new()).unwrap();
        let error = format!("{:#}", ShortVenues::load(&bad).unwrap_err());
        assert!(
            error.contains("[execution.live.x] kind \"kraken\""),
            "{error}"
        );
    }
}
