//! Hyperliquid, public WebSocket (`wss://api.hyperliquid.xyz/ws`), no key.
//!
//! Subscribes to `allMids` (every coin's mid, each block) and, per coin, `trades`
//! and `l2Book` (a full snapshot of the top levels each block, so a lost message
//! cannot desync a book; one not newer than the last, by `time`, is dropped and
//! counted as a duplicate).
//! - a changed mid -> a tick at the mid; a trade -> a tick at its price and size
//!   (a new subscription repeats recent trades: one at or before the newest taken,
//!   by `time` then `tid`, is a duplicate, dropped and counted);
//! - `l2Book` -> `md.book`, and the best bid and ask of the next ticks.
//!
//! Every message is decoded and checked whole before anything is taken from it:
//! a rejected one moves no duplicate watermark and publishes nothing.
//!
//! The server closes a connection that has sent nothing for 60 s, so the client
//! sends `{"method":"ping"}` every `ping_interval_ms` and gets `{"channel":"pong"}`.
//! Coins map to `<COIN>-<quote>` (perps: `BTC` -> `BTC-USD`), the one spot pair
//! Hyperliquid names by its tokens, `PURR/USDC` -> `PURR-USDC`; every other spot
//! pair is named by its index in `spotMeta` (`@107`) and needs `symbol_map`. Another
//! `BASE/QUOTE` would subscribe to nothing, so it is refused at start-up.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Result};
use moonbus_common::Venue;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Message;

use super::book::{level, Instrument, LocalBook, Trade};
use super::link::{check_url, Link, WS};
use super::session::{plain_request, run_ws, Batch, Fault, FeedOut, WsVenue};
use super::symbols::{self, Naming};
use super::wire::{decimal, Dec};
use crate::feed::FeedSink;

/// `[market_data.hyperliquid]`, besides the link keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HyperliquidConfig {
    pub ws_url: String,
    /// Coins (`BTC`), `PURR/USDC` or spot indices (`@107`).
    pub symbols: Vec<String>,
    /// The quote of a bare coin's canonical symbol (`BTC` -> `BTC-USD`).
    pub quote: String,
    pub symbol_map: BTreeMap<String, String>,
    pub ping_interval_ms: u64,
}

impl Default for HyperliquidConfig {
    fn default() -> Self {
        Self {
            ws_url: "wss://api.hyperliquid.xyz/ws".into(),
            symbols: vec!["BTC".into(), "ETH".into(), "SOL".into()],
            quote: "USD".into(),
            symbol_map: BTreeMap::new(),
            ping_interval_ms: 30_000,
        }
    }
}

const NAMING: Naming = Naming {
    venue: "hyperliquid",
    pattern: "COIN, BASE/QUOTE or @INDEX, letters and digits only",
    valid: is_coin,
};

/// The only spot pair Hyperliquid names by its tokens; the rest are `@<index>`.
const NAMED_SPOT_PAIR: &str = "PURR/USDC";

fn is_coin(name: &str) -> bool {
    let part =
        |p: &str| (1..=20).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric());
    match name.strip_prefix('@') {
        Some(index) => (1..=6).contains(&index.len()) && index.bytes().all(|b| b.is_ascii_digit()),
        None => match name.split_once('/') {
            Some((base, quote)) => part(base) && part(quote),
            None => part(name),
        },
    }
}

fn canonical(name: &str, quote: &str) -> Option<String> {
    if name.starts_with('@') {
        return None;
    }
    let symbol = match name.split_once('/') {
        Some((base, quote)) => format!("{base}-{quote}"),
        None => format!("{name}-{quote}"),
    };
    Some(symbol.to_ascii_uppercase())
}

pub(super) fn start(
    name: &str,
    link: Link,
    config: &HyperliquidConfig,
    sink: FeedSink,
) -> Result<()> {
    let hyperliquid = Hyperliquid::new(name, &link, config)?;
    let out = FeedOut::new(name.parse()?, sink, hyperliquid.coins.len());
    tokio::spawn(run_ws(hyperliquid, link, out));
    Ok(())
}

pub(super) struct Hyperliquid {
    ws_url: String,
    ping_interval: Duration,
    depth: usize,
    /// Hyperliquid coin -> its state (kept across reconnects: the time checks
    /// then also drop what a new subscription repeats).
    coins: HashMap<String, Coin>,
}

struct Coin {
    instrument: Instrument,
    mid: Option<Decimal>,
    /// The time (ms) of the newest trade taken, and the ids of the trades taken at
    /// that time: a new subscription repeats recent trades, which are dropped.
    trade_time: u64,
    trade_ids: Vec<u64>,
    /// The time (ms) of the book taken.
    book_time: u64,
}

impl Coin {
    fn new(instrument: Instrument) -> Self {
        Self {
            instrument,
            mid: None,
            trade_time: 0,
            trade_ids: Vec::new(),
            book_time: 0,
        }
    }

    /// True for a trade not taken before (the trade is checked already: only a
    /// good trade moves the watermark).
    fn take_trade(&mut self, time: u64, id: u64) -> bool {
        if time < self.trade_time || (time == self.trade_time && self.trade_ids.contains(&id)) {
            return false;
        }
        if time > self.trade_time {
            self.trade_time = time;
            self.trade_ids.clear();
        }
        self.trade_ids.push(id);
        true
    }
}

impl Hyperliquid {
    /// Checks `[market_data.hyperliquid]`.
    pub(super) fn new(name: &str, link: &Link, config: &HyperliquidConfig) -> Result<Self> {
        if let Some(pair) = config
            .symbols
            .iter()
            .find(|name| name.contains('/') && name.as_str() != NAMED_SPOT_PAIR)
        {
            bail!(
                "[market_data.hyperliquid] symbols: {pair:?}: Hyperliquid names spot pairs by \
                 their index in spotMeta (\"@107\"), {NAMED_SPOT_PAIR} alone by its tokens; list \
                 the index and name it in symbol_map"
            );
        }
        let symbols = symbols::map(&NAMING, &config.symbols, &config.symbol_map, |coin| {
            canonical(coin, &config.quote)
        })?;
        check_url("hyperliquid", "ws_url", &config.ws_url, WS)?;
        if config.ping_interval_ms == 0 {
            bail!("[market_data.hyperliquid] ping_interval_ms = 0: must be at least 1");
        }
        let venue: Venue = name.parse()?;
        Ok(Self {
            ws_url: config.ws_url.clone(),
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            depth: link.book_depth,
            coins: symbols
                .into_iter()
                .map(|(coin, symbol)| (coin, Coin::new(Instrument::new(venue.clone(), symbol))))
                .collect(),
        })
    }
}

impl WsVenue for Hyperliquid {
    type Done = std::convert::Infallible;

    fn request(&self) -> Result<Request, String> {
        plain_request(&self.ws_url)
    }

    fn on_open(&mut self, out: &mut Batch) {
        let subscribe =
            |subscription| json!({"method": "subscribe", "subscription": subscription}).to_string();
        out.frames.push(subscribe(json!({"type": "allMids"})));
        let mut coins: Vec<&String> = self.coins.keys().collect();
        coins.sort();
        for coin in coins {
            out.frames
                .push(subscribe(json!({"type": "trades", "coin": coin})));
            out.frames
                .push(subscribe(json!({"type": "l2Book", "coin": coin})));
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault> {
        let envelope: Envelope = serde_json::from_str(text).map_err(garbage)?;
        let data = || envelope.data.map_or("null", RawValue::get);
        match envelope.channel.as_ref() {
            "subscriptionResponse" | "pong" => Ok(()),
            "allMids" => {
                let mids: AllMids = serde_json::from_str(data()).map_err(garbage)?;
                self.on_mids(&mids, out)
            }
            "trades" => {
                let wire: Vec<TradeWire> = serde_json::from_str(data()).map_err(garbage)?;
                let trades = wire
                    .iter()
                    .map(|t| Trade::new(t.px.0, Some(t.sz.0)).map_err(Fault::Garbage))
                    .collect::<Result<Vec<Trade>, Fault>>()?;
                for (wire, trade) in wire.iter().zip(trades) {
                    let Some(coin) = self.coins.get_mut(wire.coin.as_ref()) else {
                        continue;
                    };
                    if !coin.take_trade(wire.time, wire.tid) {
                        out.duplicates += 1;
                        continue;
                    }
                    out.events.push(coin.instrument.trade(trade));
                }
                Ok(())
            }
            "l2Book" => {
                let book: BookWire = serde_json::from_str(data()).map_err(garbage)?;
                let Some(coin) = self.coins.get_mut(book.coin.as_ref()) else {
                    return Ok(());
                };
                let side = |levels: &[LevelWire]| -> Result<Vec<(Decimal, Decimal)>, Fault> {
                    levels
                        .iter()
                        .map(|l| level(l.px.0, l.sz.0).map_err(Fault::Garbage))
                        .collect()
                };
                let (bids, asks) = (side(&book.levels.0)?, side(&book.levels.1)?);
                if book.time <= coin.book_time {
                    // The one we hold, again (a new subscription), or an older one.
                    out.duplicates += 1;
                    return Ok(());
                }
                let local = LocalBook::from_levels(&bids, &asks);
                coin.book_time = book.time;
                coin.instrument.touch(&local);
                out.events
                    .push(coin.instrument.book(&local, self.depth, None));
                Ok(())
            }
            "error" => Err(Fault::Garbage(format!("Hyperliquid error: {}", data()))),
            other => Err(Fault::Garbage(format!("unknown channel {other:?}"))),
        }
    }

    fn keepalive(&self) -> Option<(Duration, Message)> {
        Some((self.ping_interval, Message::text(r#"{"method":"ping"}"#)))
    }
}

impl Hyperliquid {
    /// Mids of every coin arrive each block: a tick for each of ours that moved.
    /// Our coins' mids are all checked before any is taken.
    fn on_mids(&mut self, mids: &AllMids, out: &mut Batch) -> Result<(), Fault> {
        let mut names: Vec<&String> = self.coins.keys().collect();
        names.sort();
        let mut moved = Vec::new();
        for name in names {
            let Some(text) = mids.mids.get(name.as_str()) else {
                continue;
            };
            let mid = decimal(text).map_err(Fault::Garbage)?;
            let trade =
                Trade::new(mid, None).map_err(|e| Fault::Garbage(format!("{name}: {e}")))?;
            moved.push((name.clone(), mid, trade));
        }
        for (name, mid, trade) in moved {
            let Some(coin) = self.coins.get_mut(&name) else {
                continue;
            };
            if coin.mid == Some(mid) {
                continue;
            }
            coin.mid = Some(mid);
            out.events.push(coin.instrument.trade(trade));
        }
        Ok(())
    }
}

fn garbage(e: serde_json::Error) -> Fault {
    Fault::Garbage(e.to_string())
}

// ---------------------------------------------------------------- wire format

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Only our coins' values are parsed; other coins may carry anything.
#[derive(Deserialize)]
struct AllMids<'a> {
    #[serde(borrow)]
    mids: HashMap<Cow<'a, str>, Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TradeWire<'a> {
    #[serde(borrow)]
    coin: Cow<'a, str>,
    px: Dec,
    sz: Dec,
    time: u64,
    tid: u64,
}

#[derive(Deserialize)]
struct BookWire<'a> {
    #[serde(borrow)]
    coin: Cow<'a, str>,
    time: u64,
    /// Bids, then asks; best first.
    levels: (Vec<LevelWire>, Vec<LevelWire>),
}

#[derive(Deserialize)]
struct LevelWire {
    px: Dec,
    sz: Dec,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::link::LinkConfig;
    use crate::feed::FeedEvent;

    fn hyperliquid() -> Hyperliquid {
        let link = LinkConfig::default().validate("hyperliquid").unwrap();
        let config = HyperliquidConfig {
            symbols: vec!["BTC".into(), "ETH".into()],
            ..HyperliquidConfig::default()
        };
        Hyperliquid::new("hyperliquid", &link, &config).unwrap()
    }

    fn trade(px: &str, time: u64, tid: u64) -> String {
        format!(
            r#"{{"coin":"BTC","side":"B","px":"{px}","sz":"0.01234","hash":"0x4e1a2e0c3ad0a4b6a5b8040c2f7a7a0202a5d4e4e6c7f7c6d1b2a1e9c9d8e7f6","time":{time},"tid":{tid},"users":["0x1111111111111111111111111111111111111111","0x2222222222222222222222222222222222222222"]}}"#
        )
    }

    fn trades(trades: &[String]) -> String {
        format!(r#"{{"channel":"trades","data":[{}]}}"#, trades.join(","))
    }

    fn book(time: u64, bid: &str, ask: &str) -> String {
        format!(
            r#"{{"channel":"l2Book","data":{{"coin":"BTC","time":{time},"levels":[[{{"px":"{bid}","sz":"1.5","n":3}}],[{{"px":"{ask}","sz":"0.75","n":2}}]]}}}}"#
        )
    }

    /// (symbol, price, seq) of each tick, and the best bid of each book.
    fn seen(out: &Batch) -> (Vec<(String, String, u64)>, Vec<String>) {
        let mut ticks = Vec::new();
        let mut books = Vec::new();
        for event in &out.events {
            match event {
                FeedEvent::Tick(t) => {
                    ticks.push((t.symbol.to_string(), t.price.to_string(), t.seq));
                }
                FeedEvent::Book(b) => books.push(b.bids[0].0.to_string()),
                other => panic!("{other:?}"),
            }
        }
        (ticks, books)
    }

    #[test]
    fn a_rejected_trade_does_not_move_the_duplicate_watermark() {
        let mut hl = hyperliquid();
        let mut out = Batch::default();
        // A good trade then a bad one (price 0) at a later time: rejected whole.
        let bad = trades(&[
            trade("97013", 1732000000123, 1),
            trade("0", 1732000000500, 2),
        ]);
        assert!(matches!(hl.on_text(&bad, &mut out), Err(Fault::Garbage(_))));
        assert!(out.events.is_empty());
        // Genuine trades before that later time, including the good one, are taken.
        let good = trades(&[
            trade("97013", 1732000000123, 1),
            trade("97014", 1732000000200, 3),
        ]);
        hl.on_text(&good, &mut out).unwrap();
        let (ticks, _) = seen(&out);
        assert_eq!(
            ticks,
            [
                ("BTC-USD".into(), "97013".into(), 1),
                ("BTC-USD".into(), "97014".into(), 2)
            ]
        );
        // A new subscription repeats them: duplicates, dropped and counted.
        hl.on_text(&good, &mut out).unwrap();
        assert_eq!((seen(&out).0.len(), out.duplicates), (2, 2));
    }

    #[test]
    fn mids_are_checked_whole_before_any_is_taken() {
        let mut hl = hyperliquid();
        let mut out = Batch::default();
        let bad =
            r#"{"channel":"allMids","data":{"mids":{"BTC":"97012.5","ETH":"-1","@107":"18.402"}}}"#;
        assert!(hl.on_text(bad, &mut out).is_err());
        assert!(out.events.is_empty());
        let good = r#"{"channel":"allMids","data":{"mids":{"BTC":"97012.5","ETH":"3501.15"}}}"#;
        hl.on_text(good, &mut out).unwrap();
        let (ticks, _) = seen(&out);
        assert_eq!(
            ticks,
            [
                ("BTC-USD".into(), "97012.5".into(), 1),
                ("ETH-USD".into(), "3501.15".into(), 1)
            ],
            "BTC's mid was not taken from the rejected message"
        );
    }

    #[test]
    fn a_book_not_newer_than_the_one_held_is_a_duplicate_and_a_rejected_one_changes_nothing() {
        let mut hl = hyperliquid();
        let mut out = Batch::default();
        hl.on_text(&book(1732000000200, "97012", "97013"), &mut out)
            .unwrap();
        // The same block again (a new subscription), and an older one.
        hl.on_text(&book(1732000000200, "97012", "97013"), &mut out)
            .unwrap();
        hl.on_text(&book(1732000000100, "96000", "96001"), &mut out)
            .unwrap();
        assert_eq!(out.duplicates, 2);
        // A newer book with a bad level is rejected and moves no watermark.
        let bad = book(1732000000900, "97020", "97021").replace("0.75", "-0.75");
        assert!(hl.on_text(&bad, &mut out).is_err());
        hl.on_text(&book(1732000000300, "97015", "97016"), &mut out)
            .unwrap();
        assert_eq!(seen(&out).1, ["97012", "97015"]);
    }

    #[test]
    fn coins_pairs_and_indices_map_to_canonical_symbols() {
        assert!(is_coin("BTC") && is_coin("kPEPE") && is_coin("PURR/USDC") && is_coin("@107"));
        assert!(
            !is_coin("BTC-USD")
                && !is_coin("@")
                && !is_coin("A/B/C")
                && !is_coin("BTC.X")
                && !is_coin("")
        );
        assert_eq!(canonical("BTC", "USD").as_deref(), Some("BTC-USD"));
        assert_eq!(canonical("kPEPE", "USDC").as_deref(), Some("KPEPE-USDC"));
        assert_eq!(canonical("PURR/USDC", "USD").as_deref(), Some("PURR-USDC"));
        assert_eq!(canonical("@107", "USD"), None);
    }

    #[test]
    fn a_spot_pair_other_than_purr_usdc_is_refused_with_the_way_to_name_it() {
        let link = LinkConfig::default().validate("hyperliquid").unwrap();
        let config = |symbols: &[&str]| HyperliquidConfig {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            symbol_map: [("@107".to_string(), "HYPE-USDC".to_string())].into(),
            ..HyperliquidConfig::default()
        };
        assert!(
            Hyperliquid::new("hyperliquid", &link, &config(&["BTC", "PURR/USDC", "@107"])).is_ok()
        );
        let err = Hyperliquid::new("hyperliquid", &link, &config(&["BTC", "HYPE/USDC"]))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "[market_data.hyperliquid] symbols: \"HYPE/USDC\": Hyperliquid names spot pairs by \
             their index in spotMeta (\"@107\"), PURR/USDC alone by its tokens; list the index \
             and name it in symbol_map"
        );
    }
}
