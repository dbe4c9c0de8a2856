//! Coinbase public market data, no key, in either of its two dialects
//! (`api` in config):
//!
//! - `exchange` (`wss://ws-feed.exchange.coinbase.com`): channels `ticker`,
//!   `level2_batch` (the public level 2) and `heartbeat`. Ticker and heartbeat
//!   messages carry the product's `sequence`: one not above the last seen arrived
//!   out of order and is dropped. Level 2 messages carry none, so the book checks
//!   itself: an `l2update` before its `snapshot`, or one that leaves the book
//!   crossed, means updates were lost -> a gap: unsubscribe and subscribe that
//!   product's level 2 again, which sends a new snapshot.
//! - `advanced` (`wss://advanced-trade-ws.coinbase.com`): channels `ticker`,
//!   `level2` and `heartbeats`. Every message of a connection carries
//!   `sequence_num`, one more than the last: a jump is a gap -> resubscribe every
//!   product's level 2 (new snapshots), as above.
//!
//! A ticker -> a tick (price, best bid and ask, last size); a book change ->
//! `md.book`. Product ids are canonical already (`BTC-USD`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use moonbus_common::Venue;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use super::book::{level, Instrument, LocalBook, Side, Trade};
use super::link::{check_url, Link, WS};
use super::session::{plain_request, run_ws, Batch, Fault, FeedOut, WsVenue};
use super::symbols::{self, Naming};
use super::wire::Dec;
use crate::feed::FeedSink;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoinbaseApi {
    #[default]
    Exchange,
    Advanced,
}

/// `[market_data.coinbase]`, besides the link keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CoinbaseConfig {
    pub api: CoinbaseApi,
    /// Empty: the public endpoint of `api`.
    pub ws_url: String,
    /// Product ids (`BTC-USD`).
    pub symbols: Vec<String>,
    pub symbol_map: BTreeMap<String, String>,
}

impl Default for CoinbaseConfig {
    fn default() -> Self {
        Self {
            api: CoinbaseApi::Exchange,
            ws_url: String::new(),
            symbols: vec!["BTC-USD".into(), "ETH-USD".into(), "SOL-USD".into()],
            symbol_map: BTreeMap::new(),
        }
    }
}

const NAMING: Naming = Naming {
    venue: "coinbase",
    pattern: "^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$",
    valid: |name| {
        name.split_once('-')
            .is_some_and(|(b, q)| symbols::upper_alnum(b, 1, 20) && symbols::upper_alnum(q, 1, 20))
    },
};

pub(super) fn start(name: &str, link: Link, config: &CoinbaseConfig, sink: FeedSink) -> Result<()> {
    let coinbase = Coinbase::new(name, &link, config)?;
    let out = FeedOut::new(name.parse()?, sink, coinbase.ids.len());
    tokio::spawn(run_ws(coinbase, link, out));
    Ok(())
}

pub(super) struct Coinbase {
    api: CoinbaseApi,
    ws_url: String,
    depth: usize,
    /// The product ids, sorted (subscription order).
    ids: Vec<String>,
    products: HashMap<String, Product>,
    /// `advanced`: the `sequence_num` the next message must carry.
    next_sequence_num: Option<u64>,
}

struct Product {
    instrument: Instrument,
    /// `exchange`: the highest `sequence` seen (ticker, heartbeat).
    sequence: u64,
    /// `None`: waiting for a snapshot.
    book: Option<LocalBook>,
    /// A resubscription is on its way: updates of the old subscription may still
    /// come before its snapshot, and are ignored.
    resyncing: bool,
}

impl Product {
    fn new(instrument: Instrument) -> Self {
        Self {
            instrument,
            sequence: 0,
            book: None,
            resyncing: false,
        }
    }
}

impl Coinbase {
    /// Checks `[market_data.coinbase]`.
    pub(super) fn new(name: &str, link: &Link, config: &CoinbaseConfig) -> Result<Self> {
        let products = symbols::map(&NAMING, &config.symbols, &config.symbol_map, |p| {
            Some(p.to_string())
        })?;
        let ws_url = match (config.ws_url.is_empty(), config.api) {
            (false, _) => config.ws_url.clone(),
            (true, CoinbaseApi::Exchange) => "wss://ws-feed.exchange.coinbase.com".into(),
            (true, CoinbaseApi::Advanced) => "wss://advanced-trade-ws.coinbase.com".into(),
        };
        check_url("coinbase", "ws_url", &ws_url, WS)?;
        let venue: Venue = name.parse()?;
        let mut ids: Vec<String> = products.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        Ok(Self {
            api: config.api,
            ws_url,
            depth: link.book_depth,
            ids,
            products: products
                .into_iter()
                .map(|(id, symbol)| (id, Product::new(Instrument::new(venue.clone(), symbol))))
                .collect(),
            next_sequence_num: None,
        })
    }
}

impl WsVenue for Coinbase {
    type Done = std::convert::Infallible;

    fn request(&self) -> Result<Request, String> {
        plain_request(&self.ws_url)
    }

    fn on_open(&mut self, out: &mut Batch) {
        // A fresh subscription sends each snapshot before any update.
        self.next_sequence_num = None;
        for product in self.products.values_mut() {
            product.book = None;
            product.resyncing = false;
        }
        match self.api {
            CoinbaseApi::Exchange => out.frames.push(
                json!({
                    "type": "subscribe",
                    "product_ids": self.ids,
                    "channels": ["ticker", "level2_batch", "heartbeat"],
                })
                .to_string(),
            ),
            CoinbaseApi::Advanced => {
                // One channel per message; heartbeats keep a quiet subscription open.
                for channel in ["ticker", "level2"] {
                    out.frames
                        .push(subscription("subscribe", channel, &self.ids));
                }
                out.frames
                    .push(json!({"type": "subscribe", "channel": "heartbeats"}).to_string());
            }
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault> {
        match self.api {
            CoinbaseApi::Exchange => self.on_exchange(text, out),
            CoinbaseApi::Advanced => self.on_advanced(text, out),
        }
    }
}

fn subscription(kind: &str, channel: &str, ids: &[String]) -> String {
    json!({"type": kind, "product_ids": ids, "channel": channel}).to_string()
}

/// One change of a level 2 message, either dialect.
type Change = (Side, Decimal, Decimal);

impl Coinbase {
    fn on_exchange(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault> {
        let head: TypeHead = serde_json::from_str(text).map_err(garbage)?;
        match head.kind.as_ref() {
            "ticker" => {
                // Checked whole before the sequence moves: a rejected ticker must not
                // make the next genuine one look old.
                let t: ExchangeTicker = serde_json::from_str(text).map_err(garbage)?;
                let trade =
                    Trade::new(t.price.0, t.last_size.map(|d| d.0)).map_err(Fault::Garbage)?;
                if !self.products.contains_key(&t.product_id) {
                    return Ok(()); // not subscribed
                }
                let Some(product) = self.fresh(&t.product_id, t.sequence) else {
                    out.duplicates += 1; // older than the last taken
                    return Ok(());
                };
                product
                    .instrument
                    .set_quote(t.best_bid.map(|d| d.0), t.best_ask.map(|d| d.0));
                out.events.push(product.instrument.trade(trade));
                Ok(())
            }
            "heartbeat" => {
                let h: ExchangeHeartbeat = serde_json::from_str(text).map_err(garbage)?;
                // It repeats the product's last sequence: only ever moves it on.
                self.fresh(&h.product_id, h.sequence);
                Ok(())
            }
            "snapshot" => {
                let s: ExchangeSnapshot = serde_json::from_str(text).map_err(garbage)?;
                let bids = s.bids.iter().map(|(p, q)| checked(Side::Bid, p.0, q.0));
                let asks = s.asks.iter().map(|(p, q)| checked(Side::Ask, p.0, q.0));
                let changes = bids.chain(asks).collect::<Result<Vec<Change>, Fault>>()?;
                self.on_book(&s.product_id, true, &changes, out);
                Ok(())
            }
            "l2update" => {
                let u: ExchangeUpdate = serde_json::from_str(text).map_err(garbage)?;
                let changes = u
                    .changes
                    .iter()
                    .map(|(side, p, q)| checked(side_of(side, "buy", "sell")?, p.0, q.0))
                    .collect::<Result<Vec<Change>, Fault>>()?;
                self.on_book(&u.product_id, false, &changes, out);
                Ok(())
            }
            "error" => Err(Fault::Garbage(format!("Coinbase error: {text}"))),
            // Coinbase may add message types; clients are to ignore them.
            _ => Ok(()),
        }
    }

    /// The product, when `sequence` is newer than any seen for it (an older one
    /// is a duplicate or arrived out of order).
    fn fresh(&mut self, id: &str, sequence: u64) -> Option<&mut Product> {
        let product = self.products.get_mut(id)?;
        if sequence <= product.sequence {
            tracing::debug!(
                product = id,
                sequence,
                last = product.sequence,
                "out-of-order message dropped"
            );
            return None;
        }
        product.sequence = sequence;
        Some(product)
    }

    /// Advanced Trade: the whole message is decoded and checked first; only a
    /// good one moves `sequence_num` on and changes books and ticks.
    fn on_advanced(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault> {
        let head: AdvancedHead = serde_json::from_str(text).map_err(garbage)?;
        if head.kind.as_deref() == Some("error") {
            return Err(Fault::Garbage(format!("Coinbase error: {text}")));
        }
        let (Some(channel), Some(sequence_num)) = (head.channel, head.sequence_num) else {
            return Err(Fault::Garbage("no channel or sequence_num".into()));
        };
        let events = head.events.map_or("[]", RawValue::get);
        let message = match channel.as_ref() {
            "l2_data" => {
                let events: Vec<AdvancedL2> = serde_json::from_str(events).map_err(garbage)?;
                let books = events
                    .into_iter()
                    .map(|event| {
                        let changes = event
                            .updates
                            .iter()
                            .map(|u| {
                                let side = side_of(&u.side, "bid", "offer")?;
                                checked(side, u.price_level.0, u.new_quantity.0)
                            })
                            .collect::<Result<Vec<Change>, Fault>>()?;
                        Ok((event.product_id, event.kind == "snapshot", changes))
                    })
                    .collect::<Result<Vec<_>, Fault>>()?;
                Advanced::Books(books)
            }
            "ticker" | "ticker_batch" => {
                let events: Vec<AdvancedTickers> = serde_json::from_str(events).map_err(garbage)?;
                let ticks = events
                    .into_iter()
                    .flat_map(|e| e.tickers)
                    .map(|t| {
                        let trade = Trade::new(t.price.0, None).map_err(Fault::Garbage)?;
                        let quote = (t.best_bid.map(|d| d.0), t.best_ask.map(|d| d.0));
                        Ok((t.product_id, quote, trade))
                    })
                    .collect::<Result<Vec<_>, Fault>>()?;
                Advanced::Ticks(ticks)
            }
            _ => Advanced::Other, // heartbeats, subscriptions, channels we did not ask for
        };
        // u64::MAX has no successor, so the next message cannot be checked
        // against it: taken as a gap (resync), and the numbering starts over with
        // whatever comes next, as on a new connection.
        let successor = sequence_num.checked_add(1);
        match self.next_sequence_num {
            Some(next) if sequence_num < next => {
                // Already seen (a duplicate or out of order): its content is superseded.
                tracing::debug!(expected = next, got = sequence_num, "old message dropped");
                out.duplicates += 1;
                return Ok(());
            }
            next if successor.is_none() || next.is_some_and(|next| sequence_num > next) => {
                tracing::warn!(
                    expected = next,
                    got = sequence_num,
                    "Coinbase sequence gap; resubscribing level2"
                );
                out.gaps += 1;
                self.resync(&self.ids.clone(), out);
            }
            _ => {}
        }
        self.next_sequence_num = successor;
        match message {
            Advanced::Books(books) => {
                for (id, snapshot, changes) in books {
                    self.on_book(&id, snapshot, &changes, out);
                }
            }
            Advanced::Ticks(ticks) => {
                for (id, (bid, ask), trade) in ticks {
                    let Some(product) = self.products.get_mut(id.as_ref()) else {
                        continue;
                    };
                    product.instrument.set_quote(bid, ask);
                    out.events.push(product.instrument.trade(trade));
                }
            }
            Advanced::Other => {}
        }
        Ok(())
    }

    /// A snapshot (replaces the book) or an update of one product's book; the
    /// changes are checked already.
    fn on_book(&mut self, id: &str, snapshot: bool, changes: &[Change], out: &mut Batch) {
        let Some(product) = self.products.get_mut(id) else {
            return;
        };
        if snapshot {
            product.book = Some(LocalBook::default());
            product.resyncing = false;
        }
        let Some(book) = &mut product.book else {
            if !product.resyncing {
                self.gap(id, "an update before its snapshot", out);
            } // else the new snapshot is on its way
            return;
        };
        for &(side, price, size) in changes {
            book.set(side, price, size);
        }
        if book.is_crossed() {
            return self.gap(id, "the book crossed", out);
        }
        product.instrument.touch(book);
        out.events
            .push(product.instrument.book(book, self.depth, None));
    }

    fn gap(&mut self, id: &str, why: &str, out: &mut Batch) {
        tracing::warn!(
            product = id,
            why,
            "Coinbase level 2 out of sync; resubscribing"
        );
        out.gaps += 1;
        self.resync(&[id.to_string()], out);
    }

    /// Unsubscribe and subscribe again the level 2 of `ids`: Coinbase then sends
    /// each a new snapshot.
    fn resync(&mut self, ids: &[String], out: &mut Batch) {
        for id in ids {
            if let Some(product) = self.products.get_mut(id) {
                product.book = None;
                product.resyncing = true;
            }
        }
        match self.api {
            CoinbaseApi::Exchange => {
                for kind in ["unsubscribe", "subscribe"] {
                    let frame =
                        json!({"type": kind, "product_ids": ids, "channels": ["level2_batch"]});
                    out.frames.push(frame.to_string());
                }
            }
            CoinbaseApi::Advanced => {
                for kind in ["unsubscribe", "subscribe"] {
                    out.frames.push(subscription(kind, "level2", ids));
                }
            }
        }
    }
}

/// Best bid and ask.
type Quote = (Option<Decimal>, Option<Decimal>);

/// An Advanced Trade message, decoded and checked, not yet applied.
enum Advanced<'a> {
    /// Per event: product, snapshot or update, changes.
    Books(Vec<(String, bool, Vec<Change>)>),
    /// Per ticker: product, (best bid, best ask), the price as a trade.
    Ticks(Vec<(Cow<'a, str>, Quote, Trade)>),
    Other,
}

/// A level 2 change, its price and size checked.
fn checked(side: Side, price: Decimal, size: Decimal) -> Result<Change, Fault> {
    let (price, size) = level(price, size).map_err(Fault::Garbage)?;
    Ok((side, price, size))
}

fn side_of(side: &str, bid: &str, ask: &str) -> Result<Side, Fault> {
    if side == bid {
        Ok(Side::Bid)
    } else if side == ask {
        Ok(Side::Ask)
    } else {
        Err(Fault::Garbage(format!("unknown side {side:?}")))
    }
}

fn garbage(e: serde_json::Error) -> Fault {
    Fault::Garbage(e.to_string())
}

// ---------------------------------------------------------------- wire format: exchange

#[derive(Deserialize)]
struct TypeHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ExchangeTicker {
    product_id: String,
    sequence: u64,
    price: Dec,
    #[serde(default)]
    best_bid: Option<Dec>,
    #[serde(default)]
    best_ask: Option<Dec>,
    #[serde(default)]
    last_size: Option<Dec>,
}

#[derive(Deserialize)]
struct ExchangeHeartbeat {
    product_id: String,
    sequence: u64,
}

#[derive(Deserialize)]
struct ExchangeSnapshot {
    product_id: String,
    bids: Vec<(Dec, Dec)>,
    asks: Vec<(Dec, Dec)>,
}

#[derive(Deserialize)]
struct ExchangeUpdate {
    product_id: String,
    /// `[side ("buy" | "sell"), price, new size]`
    changes: Vec<(String, Dec, Dec)>,
}

// ---------------------------------------------------------------- wire format: advanced

#[derive(Deserialize)]
struct AdvancedHead<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence_num: Option<u64>,
    #[serde(borrow, default)]
    events: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AdvancedL2 {
    #[serde(rename = "type")]
    kind: String,
    product_id: String,
    updates: Vec<AdvancedLevel>,
}

#[derive(Deserialize)]
struct AdvancedLevel {
    /// "bid" | "offer"
    side: String,
    price_level: Dec,
    new_quantity: Dec,
}

#[derive(Deserialize)]
struct AdvancedTickers<'a> {
    #[serde(borrow)]
    tickers: Vec<AdvancedTicker<'a>>,
}

#[derive(Deserialize)]
struct AdvancedTicker<'a> {
    #[serde(borrow)]
    product_id: Cow<'a, str>,
    price: Dec,
    #[serde(default)]
    best_bid: Option<Dec>,
    #[serde(default)]
    best_ask: Option<Dec>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::link::LinkConfig;
    use crate::feed::FeedEvent;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/connectors/coinbase"
    );

    fn lines(name: &str) -> Vec<String> {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn coinbase(api: CoinbaseApi) -> Coinbase {
        let link = LinkConfig::default().validate("coinbase").unwrap();
        let config = CoinbaseConfig {
            api,
            symbols: vec!["BTC-USD".into()],
            ..CoinbaseConfig::default()
        };
        let mut coinbase = Coinbase::new("coinbase", &link, &config).unwrap();
        coinbase.on_open(&mut Batch::default());
        coinbase
    }

    /// Advanced Trade after `advanced.jsonl` (sequence_num 0-4): the book is
    /// 21921.3 / 21921.74, the next message must be 5.
    fn advanced() -> Coinbase {
        let mut coinbase = coinbase(CoinbaseApi::Advanced);
        let mut out = Batch::default();
        for line in lines("advanced.jsonl") {
            coinbase.on_text(&line, &mut out).unwrap();
        }
        assert_eq!(coinbase.next_sequence_num, Some(5));
        coinbase
    }

    fn l2(sequence_num: u64, updates: &str) -> String {
        format!(
            r#"{{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:54.000Z","sequence_num":{sequence_num},"events":[{updates}]}}"#
        )
    }

    fn update(side: &str, price: &str, quantity: &str) -> String {
        format!(
            r#"{{"type":"update","product_id":"BTC-USD","updates":[{{"side":"{side}","event_time":"2023-02-09T20:32:53.999Z","price_level":"{price}","new_quantity":"{quantity}"}}]}}"#
        )
    }

    fn tops(out: &Batch) -> Vec<(String, String)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Book(b) => Some((b.bids[0].0.to_string(), b.asks[0].0.to_string())),
                _ => None,
            })
            .collect()
    }

    fn ticks(out: &Batch) -> Vec<(String, u64)> {
        out.events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Tick(t) => Some((t.price.to_string(), t.seq)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rejected_message_does_not_move_the_sequence_num() {
        let mut coinbase = advanced();
        let mut out = Batch::default();
        // A message that fails its checks, whatever sequence_num it carries.
        let bad = l2(999, &update("bid", "21921.5", "-1"));
        assert!(matches!(
            coinbase.on_text(&bad, &mut out),
            Err(Fault::Garbage(_))
        ));
        assert_eq!(coinbase.next_sequence_num, Some(5));
        // The genuine 5 follows: no gap, no resubscription.
        let good = l2(5, &update("bid", "21921.5", "0.1"));
        coinbase.on_text(&good, &mut out).unwrap();
        assert_eq!((out.gaps, out.frames.len()), (0, 0));
        assert_eq!(tops(&out), [("21921.5".into(), "21921.74".into())]);
    }

    #[test]
    fn a_message_rejected_half_way_publishes_and_changes_nothing() {
        let mut coinbase = advanced();
        let mut out = Batch::default();
        // Two events: the first is good, the second has an unknown side.
        let events = format!(
            "{},{}",
            update("bid", "21921.6", "1"),
            update("middle", "21921.7", "1")
        );
        assert!(coinbase.on_text(&l2(5, &events), &mut out).is_err());
        // Two tickers: the second price is 0.
        let tickers = r#"{"channel":"ticker","client_id":"","timestamp":"2023-02-09T20:32:54.100Z","sequence_num":5,"events":[{"type":"update","tickers":[{"type":"ticker","product_id":"BTC-USD","price":"21933","best_bid":"21921.3","best_ask":"21921.74"},{"type":"ticker","product_id":"BTC-USD","price":"0","best_bid":"1","best_ask":"2"}]}]}"#;
        assert!(coinbase.on_text(tickers, &mut out).is_err());
        assert!(out.events.is_empty());
        assert_eq!(coinbase.next_sequence_num, Some(5));
        // The book never had 21921.6, and the next tick is the second of this connection.
        coinbase
            .on_text(&l2(5, &update("offer", "21921.8", "1")), &mut out)
            .unwrap();
        assert_eq!(tops(&out), [("21921.3".into(), "21921.74".into())]);
        let ticker = r#"{"channel":"ticker","client_id":"","timestamp":"2023-02-09T20:32:54.200Z","sequence_num":6,"events":[{"type":"update","tickers":[{"type":"ticker","product_id":"BTC-USD","price":"21934","best_bid":"21921.3","best_ask":"21921.74"}]}]}"#;
        coinbase.on_text(ticker, &mut out).unwrap();
        assert_eq!(ticks(&out), [("21934".into(), 2)]);
        assert_eq!(out.gaps, 0);
    }

    #[test]
    fn an_old_or_duplicate_sequence_num_is_ignored_and_a_jump_resyncs() {
        let mut coinbase = advanced();
        let mut out = Batch::default();
        // 3 again (a duplicate of the last book update, which must not apply twice).
        let duplicate = &lines("advanced.jsonl")[3];
        coinbase.on_text(duplicate, &mut out).unwrap();
        let old = l2(2, &update("bid", "21000", "1"));
        coinbase.on_text(&old, &mut out).unwrap();
        assert_eq!((out.gaps, out.duplicates), (0, 2));
        assert!(out.events.is_empty() && out.frames.is_empty());
        assert_eq!(coinbase.next_sequence_num, Some(5));
        // A real gap (7 after 4) still resubscribes every product's level 2.
        coinbase
            .on_text(&lines("advanced_gap.jsonl")[0], &mut out)
            .unwrap();
        assert_eq!(out.gaps, 1);
        assert_eq!(out.frames.len(), 2);
        assert!(out.frames[0].contains("unsubscribe"));
        assert_eq!(coinbase.next_sequence_num, Some(8));
    }

    #[test]
    fn a_sequence_num_of_u64_max_resyncs_and_numbering_starts_over() {
        let mut coinbase = advanced();
        let mut out = Batch::default();
        // A jump to u64::MAX: one gap, one resubscription, no overflow.
        let last = l2(u64::MAX, &update("bid", "21921.5", "0.1"));
        coinbase.on_text(&last, &mut out).unwrap();
        assert_eq!((out.gaps, out.frames.len()), (1, 2));
        assert_eq!(coinbase.next_sequence_num, None);
        // Nothing can follow it in sequence: whatever comes next starts anew.
        coinbase
            .on_text(&l2(6, &update("bid", "1", "1")), &mut out)
            .unwrap();
        assert_eq!(coinbase.next_sequence_num, Some(7));
        assert_eq!(out.gaps, 1);

        // Reached in sequence, u64::MAX still resyncs (it has no successor).
        let mut coinbase = advanced();
        coinbase.next_sequence_num = Some(u64::MAX);
        let mut out = Batch::default();
        coinbase.on_text(&last, &mut out).unwrap();
        assert_eq!((out.gaps, out.frames.len()), (1, 2));
        assert_eq!(coinbase.next_sequence_num, None);
    }

    #[test]
    fn a_rejected_exchange_ticker_does_not_move_the_sequence_watermark() {
        let mut coinbase = coinbase(CoinbaseApi::Exchange);
        let mut out = Batch::default();
        // A ticker whose price is 0 carries a high sequence: rejected whole.
        let bad = r#"{"type":"ticker","sequence":37475249000,"product_id":"BTC-USD","price":"0","best_bid":"1","best_ask":"2","side":"buy","time":"2019-08-14T20:42:27.300Z","trade_id":370843401,"last_size":"0.001"}"#;
        assert!(coinbase.on_text(bad, &mut out).is_err());
        // The genuine tickers that follow are taken, an older one is a duplicate.
        let exchange = lines("exchange.jsonl");
        for line in &exchange[3..] {
            coinbase.on_text(line, &mut out).unwrap();
        }
        let Some(FeedEvent::Tick(first)) = out.events.first() else {
            panic!("{:?}", out.events)
        };
        assert_eq!(
            (
                first.bid.unwrap().to_string(),
                first.ask.unwrap().to_string()
            ),
            ("10101.8".into(), "10103".into()),
            "the rejected ticker's quote was not taken"
        );
        assert_eq!(ticks(&out), [("10101.8".into(), 1), ("10102".into(), 2)]);
        assert_eq!(out.duplicates, 1);
    }

    #[test]
    fn a_rejected_exchange_update_leaves_the_book_as_it_was() {
        let mut coinbase = coinbase(CoinbaseApi::Exchange);
        let mut out = Batch::default();
        let exchange = lines("exchange.jsonl");
        coinbase.on_text(&exchange[1], &mut out).unwrap(); // the snapshot
                                                           // The first change is good, the second's size is not a number.
        let bad = r#"{"type":"l2update","product_id":"BTC-USD","changes":[["buy","10101.50","1.0"],["sell","10102.55","x"]],"time":"2019-08-14T20:42:27.265Z"}"#;
        assert!(coinbase.on_text(bad, &mut out).is_err());
        coinbase.on_text(&exchange[2], &mut out).unwrap();
        let books: Vec<&moonbus_common::Book> = out
            .events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Book(b) => Some(b),
                _ => None,
            })
            .collect();
        let bids: Vec<String> = books[1].bids.iter().map(|l| l.0.to_string()).collect();
        assert_eq!(bids, ["10101.8", "10101.1", "10101"], "no 10101.5");
        assert_eq!(out.gaps, 0);
    }
}
