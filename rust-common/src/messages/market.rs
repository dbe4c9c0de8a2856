//! Market data: [`Tick`], [`Bar`], [`Book`], [`PriceAlert`], [`ArbOpportunity`], [`FeedStatus`], and the
//! `md.api.*` requests and replies (price, prices, history, monitors).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::check::{self, quoted, validated_on_read, wire_enum, ValidationError};
use super::ids::{default_interval, Interval, Symbol, Venue};
use super::money::{Money, NonNegativeMoney, PositiveMoney};

wire_enum! {
    /// [`PriceAlert::direction`].
    Direction {
        /// The price rose.
        Up = "UP",
        /// The price fell.
        Down = "DOWN",
    }
}

wire_enum! {
    /// [`FeedStatus::status`].
    FeedState {
        /// Receiving data.
        Connected = "connected",
        /// Connected, but no data for longer than the staleness limit.
        Stale = "stale",
        /// The link dropped; trying again.
        Reconnecting = "reconnecting",
        /// Not connected (the feed stopped, e.g. the service is shutting down).
        Disconnected = "disconnected",
        /// A replay feed reached the end of its files.
        ReplayDone = "replay_done",
    }
}

fn default_history_limit() -> u32 {
    100
}

fn default_threshold_pct() -> f64 {
    2.0
}

fn default_window_s() -> f64 {
    60.0
}

/// PricesRequest.symbols: 1 ..= 10000 symbols.
fn symbol_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Symbol>, D::Error> {
    let symbols = Vec::<Symbol>::deserialize(d)?;
    if (1..=10_000).contains(&symbols.len()) {
        Ok(symbols)
    } else {
        Err(de::Error::custom(format!(
            "1 to 10000 symbols expected, got {}",
            symbols.len()
        )))
    }
}

/// `md.tick.<venue>.<symbol>`: one price update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// The venue.
    pub venue: Venue,
    /// The symbol.
    pub symbol: Symbol,
    /// The last price.
    pub price: PositiveMoney,
    /// The best bid, when the venue sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid: Option<PositiveMoney>,
    /// The best ask, when the venue sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<PositiveMoney>,
    /// The size of the last trade, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<NonNegativeMoney>,
    /// Sequence number per venue and symbol.
    pub seq: u64,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `md.bar.<interval>.<venue>.<symbol>`: one closed OHLCV bar [start_ts, end_ts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    /// The venue.
    pub venue: Venue,
    /// The symbol.
    pub symbol: Symbol,
    /// The bar's length.
    pub interval: Interval,
    /// First price of the interval.
    pub open: PositiveMoney,
    /// Highest price of the interval.
    pub high: PositiveMoney,
    /// Lowest price of the interval.
    pub low: PositiveMoney,
    /// Last price of the interval.
    pub close: PositiveMoney,
    /// Sum of the trade sizes.
    pub volume: NonNegativeMoney,
    /// Number of ticks the bar is made of.
    pub trades: u64,
    /// Start of the interval (included), ns since the epoch.
    pub start_ts: u64,
    /// End of the interval (excluded), ns since the epoch.
    pub end_ts: u64,
}

/// One book level on the wire: `["price", "size"]`.
pub type PriceLevel = (PositiveMoney, NonNegativeMoney);

/// `md.book.<venue>.<symbol>`: top N levels, best first. venue `all` = aggregated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Book {
    /// The venue; `all` = aggregated over the venues.
    pub venue: Venue,
    /// The symbol.
    pub symbol: Symbol,
    /// Bid levels, best (highest) first.
    pub bids: Vec<PriceLevel>,
    /// Ask levels, best (lowest) first.
    pub asks: Vec<PriceLevel>,
    /// Sequence number per venue and symbol.
    pub seq: u64,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `md.alert.<symbol>`: the price moved >= threshold_pct within window_s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceAlert {
    /// The venue.
    pub venue: Venue,
    /// The symbol.
    pub symbol: Symbol,
    /// Which way the price moved.
    pub direction: Direction,
    /// The move, percent (negative when down).
    pub change_pct: f64,
    /// The monitor's threshold, percent (> 0).
    #[serde(deserialize_with = "check::positive")]
    pub threshold_pct: f64,
    /// The monitor's window, seconds (> 0).
    #[serde(deserialize_with = "check::positive")]
    pub window_s: f64,
    /// The price the move is measured from.
    pub from_price: PositiveMoney,
    /// The price that triggered the alert.
    pub price: PositiveMoney,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `md.arb.<symbol>`: buy at `buy_venue`'s best ask, sell at `sell_venue`'s best
/// bid, net of both venues' taker fees (rust-market-data/src/arb.rs). Two different
/// venues, checked on read like the model's validator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ArbOpportunity {
    /// The symbol.
    pub symbol: Symbol,
    /// Where to buy (at its best ask).
    pub buy_venue: Venue,
    /// Where to sell (at its best bid); never `buy_venue`.
    pub sell_venue: Venue,
    /// `buy_venue`'s best ask.
    pub buy_price: PositiveMoney,
    /// `sell_venue`'s best bid.
    pub sell_price: PositiveMoney,
    /// `buy_venue`'s taker fee counted, basis points.
    pub buy_fee_bps: NonNegativeMoney,
    /// `sell_venue`'s taker fee counted, basis points.
    pub sell_fee_bps: NonNegativeMoney,
    /// (sell_price - buy_price) / buy_price, basis points, before fees.
    pub gross_bps: Money,
    /// The return on the cost of buying, fees paid, basis points (4 decimals).
    pub net_bps: Money,
    /// The quantity executable on both books while still above the threshold.
    pub quantity: PositiveMoney,
    /// The worst ask that quantity takes (the buy's limit price).
    pub buy_limit: PositiveMoney,
    /// The worst bid that quantity takes (the sell's limit price).
    pub sell_limit: PositiveMoney,
    /// The profit over `quantity`, fees paid, quote currency.
    pub profit: NonNegativeMoney,
    /// The arrival of the book update that made it, ns since the epoch.
    pub source_ts: u64,
    /// When this was made, ns since the epoch (`ts - source_ts`: detection latency).
    pub ts: u64,
}

impl ArbOpportunity {
    /// The rule of the model: two different venues.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.buy_venue == self.sell_venue {
            return Err(ValidationError::new(
                "an arbitrage pairs two different venues",
            ));
        }
        Ok(())
    }
}

validated_on_read!(ArbOpportunity);

/// `md.status.<venue>`: health of one feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedStatus {
    /// The venue.
    pub venue: Venue,
    /// The feed's state.
    pub status: FeedState,
    /// Why, in words.
    #[serde(default)]
    pub detail: String,
    /// Number of symbols the feed serves.
    #[serde(default)]
    pub symbols: u64,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `md.api.price`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest {
    /// The symbol to price.
    pub symbol: Symbol,
    /// Only this venue's last tick; none = the latest of any venue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
}

/// `md.api.price` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceReply {
    /// The last tick.
    pub tick: Tick,
}

/// `md.api.prices`: many symbols at once; the unknown ones are named in `missing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesRequest {
    /// 1 to 10000 symbols.
    #[serde(deserialize_with = "symbol_list")]
    pub symbols: Vec<Symbol>,
    /// Only this venue's last ticks; none = the latest of any venue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
}

/// `md.api.prices` reply: symbol -> last tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricesReply {
    /// Symbol -> its last tick.
    pub prices: BTreeMap<String, Tick>,
    /// The symbols without a price.
    pub missing: Vec<String>,
}

/// `md.api.history`: the last `limit` closed bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    /// The symbol.
    pub symbol: Symbol,
    /// The bar interval; `1m` when left out.
    #[serde(default = "default_interval")]
    pub interval: Interval,
    /// 1 ..= 5000.
    #[serde(
        default = "default_history_limit",
        deserialize_with = "check::history_limit"
    )]
    pub limit: u32,
    /// Only this venue's bars; none = the first venue that has the symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
}

/// `md.api.history` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// The bars, oldest first.
    pub bars: Vec<Bar>,
}

/// `md.api.monitor.start`: alert when `symbol` moves >= threshold_pct within window_s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorStartRequest {
    /// The symbol to watch.
    pub symbol: Symbol,
    /// 0 < x <= 100.
    #[serde(
        default = "default_threshold_pct",
        deserialize_with = "check::threshold_pct"
    )]
    pub threshold_pct: f64,
    /// 0 < x <= 86400.
    #[serde(default = "default_window_s", deserialize_with = "check::window_s")]
    pub window_s: f64,
}

/// `md.api.monitor.stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorStopRequest {
    /// The symbol to stop watching.
    pub symbol: Symbol,
}

/// `md.api.monitor.status`; no symbol = all monitors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorStatusRequest {
    /// Only this symbol's monitor; none = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
}

/// One active price monitor, in [`MonitorStatusReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    /// The symbol.
    pub symbol: Symbol,
    /// The move that triggers an alert, percent (> 0).
    #[serde(deserialize_with = "check::positive")]
    pub threshold_pct: f64,
    /// The window the move is measured over, seconds (> 0).
    #[serde(deserialize_with = "check::positive")]
    pub window_s: f64,
}

/// `md.api.monitor.status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorStatusReply {
    /// The active monitors.
    pub monitors: Vec<Monitor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_strict() {
        let base = r#"{"venue":"sim","symbol":"BTC-USD","price":"1","seq":SEQ,"ts":1}"#;
        assert!(serde_json::from_str::<Tick>(&base.replace("SEQ", "1")).is_ok());
        for bad in ["1.0", "\"1\"", "-1", "true", "null"] {
            assert!(
                serde_json::from_str::<Tick>(&base.replace("SEQ", bad)).is_err(),
                "{bad}"
            );
        }
        // An integer is a valid float, as in pydantic strict mode.
        let monitor: MonitorStartRequest =
            serde_json::from_str(r#"{"symbol":"BTC-USD","window_s":30}"#).unwrap();
        assert_eq!((monitor.threshold_pct, monitor.window_s), (2.0, 30.0));
        for bad in [
            r#""threshold_pct":0"#,
            r#""threshold_pct":100.5"#,
            r#""window_s":86401"#,
        ] {
            let text = format!(r#"{{"symbol":"BTC-USD",{bad}}}"#);
            assert!(
                serde_json::from_str::<MonitorStartRequest>(&text).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_defaults_and_bounds() {
        let history: HistoryRequest = serde_json::from_str(r#"{"symbol":"BTC-USD"}"#).unwrap();
        assert_eq!(
            (history.interval.as_str(), history.limit, history.venue),
            ("1m", 100, None)
        );
        for bad in ["0", "5001", "1.5", "\"50\""] {
            let text = format!(r#"{{"symbol":"BTC-USD","limit":{bad}}}"#);
            assert!(
                serde_json::from_str::<HistoryRequest>(&text).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<PricesRequest>(r#"{"symbols":[]}"#).is_err());
        let symbols = vec!["BTC-USD"; 10_001];
        let text = serde_json::json!({ "symbols": symbols }).to_string();
        assert!(serde_json::from_str::<PricesRequest>(&text).is_err());
        let book = |level: &str| {
            let text = format!(
                r#"{{"venue":"all","symbol":"BTC-USD","bids":[{level}],"asks":[],"seq":0,"ts":0}}"#
            );
            serde_json::from_str::<Book>(&text)
        };
        assert!(book(r#"["1","0"]"#).is_ok());
        for bad in [r#"["0","1"]"#, r#"["1"]"#, r#"["1","1","1"]"#, r#"[1,"1"]"#] {
            assert!(book(bad).is_err(), "{bad}");
        }
    }
}
