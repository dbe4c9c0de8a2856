//! Live exchange connectors: Binance spot, Aster (perpetual futures), Coinbase,
//! Hyperliquid and Birdeye.
//!
//! Each connector is one task that speaks its venue's wire format and hands the
//! engine `FeedEvent`s (ticks, books, statuses) through the `FeedSink`. What they
//! share lives here: the settings of a link ([`link`]), the reconnecting WebSocket
//! session with staleness detection ([`session`]), symbol mapping ([`symbols`]),
//! local books and per-symbol tick state ([`book`]), and exact number parsing
//! ([`wire`]). A connector ends when the engine drops the queue.
//!
//! Config: `[market_data.<venue>]` of moonbus.toml (see there), read only when the
//! venue is listed in `[market_data] feeds`.
//!
//! # Sync rules
//!
//! What every connector does with each frame, in this order:
//!
//! 1. **Decode and check the whole frame first** (every field, price, size, side,
//!    id). A frame that fails is skipped whole: it changes no state (no sequence
//!    counter, no duplicate watermark, no book, no tick count) and publishes
//!    nothing; it is logged and reported on `errors.market-data`, and the link
//!    goes on. (`session` also rolls back anything a rejected frame added to its
//!    batch.)
//! 2. **Old or duplicate: ignore it**, counted in `md_duplicates_total{venue}`;
//!    never treated as a gap.
//! 3. **A real gap: resync**, counted in `md_gaps_total{venue}`.
//! 4. Else apply it and publish what it produced.
//!
//! Per venue (each module's doc has the details, after the venue's documentation):
//!
//! - **Binance** ("How to manage a local order book correctly", spot): diffs are
//!   buffered until the REST snapshot; a snapshot older than the first buffered diff
//!   (`lastUpdateId + 1 < U`) is fetched again. The book at update id `last` then
//!   takes the buffer and the stream with one rule: `u <= last` old (ignored),
//!   `U > last + 1` gap (that diff and the ones after it stay buffered for a new
//!   snapshot), else apply and `last = u`. A diff with `U > u` is refused.
//! - **Aster** (Binance USDⓈ-M futures' API, binance.rs with the futures rule): the
//!   same buffering and snapshot, but diffs chain by `pu` (the previous diff's `u`):
//!   after the snapshot `u < lastUpdateId` is old and the first diff applied must
//!   have `U <= lastUpdateId <= u` (or `pu == lastUpdateId`); after that `u <= last`
//!   is old, `pu == last` applies, anything else is a gap.
//! - **Coinbase Advanced Trade**: `sequence_num` counts every message of a
//!   connection. Lower than expected: old, ignored. Higher: gap, every product's
//!   `level2` is resubscribed (a new snapshot each), and the message is taken.
//!   **Coinbase Exchange**: a ticker whose `sequence` is not above the product's last
//!   is old; `level2_batch` has no sequence, so an update before its snapshot or one
//!   that crosses the book is a gap (that product is resubscribed).
//! - **Hyperliquid**: `l2Book` is a whole book per block: one not newer (`time`)
//!   than the book held is old. A trade at or before the newest taken (`time`, then
//!   `tid` at the same time) is a duplicate (a new subscription repeats recent
//!   trades).
//! - **Birdeye**: no sequence. A poll round (every `multi_price` answer) is checked
//!   whole before any token moves (an answer not in Birdeye's format fails the
//!   round); a token whose own price is refused is reported and left out, the rest
//!   move; a token whose value and update time did not change gives no tick.

mod binance;
mod birdeye;
mod book;
mod coinbase;
mod hyperliquid;
mod link;
mod session;
mod symbols;
mod wire;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::feed::{FeedKind, FeedSink};

pub use binance::BinanceConfig;
pub use birdeye::BirdeyeConfig;
pub use coinbase::CoinbaseConfig;
pub use hyperliquid::HyperliquidConfig;
pub use link::LinkConfig;

/// One `[market_data.<venue>]` section: the settings every link has, the venue's
/// own, and nothing else (an unknown key is a start-up error, not a silent typo).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Section<V> {
    #[serde(flatten)]
    pub link: LinkConfig,
    #[serde(flatten)]
    pub venue: V,
    /// Keys neither of the above took.
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

impl<V> Section<V> {
    fn check_keys(&self, venue: &str) -> Result<()> {
        match self.unknown.keys().next() {
            None => Ok(()),
            Some(key) => anyhow::bail!("[market_data.{venue}]: unknown key `{key}`"),
        }
    }
}

/// The `[market_data.<venue>]` sections of the live venues, wherever they are kept:
/// config.rs implements it for its `MarketDataConfig`. The connectors name only this
/// trait, never the config module, so the dependency points one way (config ->
/// connectors).
pub trait VenueSections {
    /// `[market_data.binance]`.
    fn binance(&self) -> &Section<BinanceConfig>;
    /// `[market_data.aster]` (the Binance family, futures flavour).
    fn aster(&self) -> &Section<BinanceConfig>;
    /// `[market_data.coinbase]`.
    fn coinbase(&self) -> &Section<CoinbaseConfig>;
    /// `[market_data.hyperliquid]`.
    fn hyperliquid(&self) -> &Section<HyperliquidConfig>;
    /// `[market_data.birdeye]`.
    fn birdeye(&self) -> &Section<BirdeyeConfig>;
}

/// Starts the connector of `kind` (a live venue), reading its section of
/// `config`. A bad section is an error here, at start-up, naming the key.
pub fn spawn(kind: FeedKind, config: &impl VenueSections, sink: FeedSink) -> Result<()> {
    let name = kind.as_str();
    let started = match kind {
        FeedKind::Binance => start(name, config.binance(), sink, binance::start),
        FeedKind::Aster => start(name, config.aster(), sink, binance::start_aster),
        FeedKind::Coinbase => start(name, config.coinbase(), sink, coinbase::start),
        FeedKind::Hyperliquid => start(name, config.hyperliquid(), sink, hyperliquid::start),
        FeedKind::Birdeye => start(name, config.birdeye(), sink, birdeye::start),
        FeedKind::Sim | FeedKind::Replay => anyhow::bail!("{name} is not a live connector"),
    };
    started.with_context(|| format!("starting the {name} connector"))
}

type Starter<V> = fn(&str, link::Link, &V, FeedSink) -> Result<()>;

fn start<V>(name: &str, section: &Section<V>, sink: FeedSink, starter: Starter<V>) -> Result<()> {
    section.check_keys(name)?;
    let link = section.link.validate(name)?;
    starter(name, link, &section.venue, sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::config::Config;

    fn link<V>(section: &Section<V>, venue: &str) -> link::Link {
        section.check_keys(venue).unwrap();
        section.link.validate(venue).unwrap()
    }

    /// The venue sections of `[market_data]`, the rest ignored (config.rs's tests read the
    /// whole section).
    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Sections {
        binance: Section<BinanceConfig>,
        aster: Section<BinanceConfig>,
        coinbase: Section<CoinbaseConfig>,
        hyperliquid: Section<HyperliquidConfig>,
        birdeye: Section<BirdeyeConfig>,
    }

    #[test]
    fn the_project_config_sections_are_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let config: Sections = Config::from_parts(&text, [])
            .unwrap()
            .section("market_data")
            .unwrap();
        let (b, c, h, e) = (
            &config.binance,
            &config.coinbase,
            &config.hyperliquid,
            &config.birdeye,
        );
        binance::Binance::new(&binance::BINANCE, "binance", &link(b, "binance"), &b.venue).unwrap();
        coinbase::Coinbase::new("coinbase", &link(c, "coinbase"), &c.venue).unwrap();
        hyperliquid::Hyperliquid::new("hyperliquid", &link(h, "hyperliquid"), &h.venue).unwrap();
        link(e, "birdeye");
        birdeye::Birdeye::new("birdeye", &e.venue, birdeye::ApiKey("key".into())).unwrap();
        let a = &config.aster;
        binance::Binance::new(&binance::ASTER, "aster", &link(a, "aster"), &a.venue).unwrap();
        assert_eq!(b.link.stale_after_ms, 10_000);
        assert_eq!(h.venue.symbols, ["BTC", "ETH", "SOL"]);
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Venue {
        ws_url: String,
    }

    fn parse(text: &str) -> Section<Venue> {
        let text = format!("[venue]\n{text}");
        let config = Config::from_parts(&text, []).unwrap();
        config.section("venue").unwrap()
    }

    #[test]
    fn a_section_splits_into_link_and_venue_keys_and_refuses_others() {
        let section = parse("ws_url = \"ws://x\"\nstale_after_ms = 250\n");
        assert_eq!(section.venue.ws_url, "ws://x");
        assert_eq!(section.link.stale_after_ms, 250);
        assert!(section.check_keys("x").is_ok());
        let section = parse("ws_url = \"ws://x\"\nstale_afer_ms = 250\n");
        let err = section.check_keys("binance").unwrap_err().to_string();
        assert_eq!(err, "[market_data.binance]: unknown key `stale_afer_ms`");
    }
}
