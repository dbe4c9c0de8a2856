//! Binance spot, public market data, no key: one combined-stream connection
//! (`/stream?streams=<s>@trade/<s>@bookTicker/<s>@depth@100ms/...`).
//!
//! - `trade` -> a tick at the trade price and size; `bookTicker` -> a tick when the
//!   best bid or ask changes (priced at the last trade, or the mid before one).
//! - `depth@100ms` diffs + the REST snapshot `GET /api/v3/depth` keep a local book,
//!   as Binance's "How to manage a local order book correctly" (spot) says: buffer
//!   the diffs, fetch a snapshot (again, after the backoff, if it is older than
//!   the first buffered diff: `lastUpdateId + 1 < U`), set the book to it, then
//!   replay the buffer and every later diff with one rule, the book at update id
//!   `last`: a diff with `u <= last` is old or a duplicate, ignored (and, once in
//!   sync, counted in `md_duplicates_total`); one with `U > last + 1` is a gap: count it, keep it
//!   and every diff after it buffered, fetch a new snapshot; else apply it,
//!   `last = u`. A diff is checked whole (`U <= u`, every level) before it is
//!   buffered or applied. The book is published after every applied diff, `seq` =
//!   its `u`; a replay that hits a gap publishes nothing.
//! - The server pings every 20 s; tungstenite answers with the same payload.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use anyhow::{bail, Result};
use moonbus_common::Venue;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use super::book::{level, Instrument, LocalBook, Side, Trade};
use super::link::{check_url, Backoff, Link, HTTP, WS};
use super::session::{http_body, plain_request, run_ws, Batch, Fault, FeedOut, WsVenue};
use super::symbols::{self, Naming};
use super::wire::Dec;
use crate::feed::FeedSink;

/// `[market_data.binance]`, besides the link keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BinanceConfig {
    pub ws_url: String,
    pub rest_url: String,
    /// Binance symbols (`BTCUSDT`).
    pub symbols: Vec<String>,
    /// Binance symbol -> canonical symbol, where the default split
    /// (`BTCUSDT` -> `BTC-USDT`) is not wanted or not possible.
    pub symbol_map: BTreeMap<String, String>,
    /// Levels asked of `GET /api/v3/depth` (1..5000; 1000 costs weight 50).
    pub snapshot_limit: u32,
}

impl Default for BinanceConfig {
    fn default() -> Self {
        Self {
            ws_url: "wss://stream.binance.com:9443".into(),
            rest_url: "https://api.binance.com".into(),
            symbols: vec!["BTCUSDT".into(), "ETHUSDT".into(), "SOLUSDT".into()],
            symbol_map: BTreeMap::new(),
            snapshot_limit: 1000,
        }
    }
}

const NAMING: Naming = Naming {
    venue: "binance",
    pattern: "^[A-Z0-9]{2,20}$",
    valid: |name| symbols::upper_alnum(name, 2, 20),
};

/// Three streams a symbol; Binance allows 1024 streams per connection.
const MAX_SYMBOLS: usize = 300;
/// Diffs kept while a snapshot is on its way (10 a second: 100 s); past this the
/// oldest go, and the snapshot check asks for a newer snapshot if it must.
const MAX_BUFFER: usize = 1000;

pub(super) fn start(name: &str, link: Link, config: &BinanceConfig, sink: FeedSink) -> Result<()> {
    let binance = Binance::new(name, &link, config)?;
    let out = FeedOut::new(name.parse()?, sink, binance.pairs.len());
    tokio::spawn(run_ws(binance, link, out));
    Ok(())
}

pub(super) struct Binance {
    ws_url: String,
    rest_url: String,
    snapshot_limit: u32,
    depth: usize,
    http: reqwest::Client,
    /// Binance symbol -> its state.
    pairs: HashMap<String, Pair>,
    /// Depth snapshots on their way (dropped, i.e. aborted, on a new connection).
    fetches: JoinSet<(String, Result<Snapshot, String>)>,
}

impl Binance {
    /// Checks `[market_data.binance]`.
    pub(super) fn new(name: &str, link: &Link, config: &BinanceConfig) -> Result<Self> {
        let symbols = symbols::map(
            &NAMING,
            &config.symbols,
            &config.symbol_map,
            symbols::split_known_quote,
        )?;
        if symbols.len() > MAX_SYMBOLS {
            bail!(
                "[market_data.binance] symbols: {} listed, at most {MAX_SYMBOLS} per connection",
                symbols.len()
            );
        }
        check_url("binance", "ws_url", &config.ws_url, WS)?;
        check_url("binance", "rest_url", &config.rest_url, HTTP)?;
        if !(1..=5000).contains(&config.snapshot_limit) {
            bail!(
                "[market_data.binance] snapshot_limit = {}: must be 1..5000",
                config.snapshot_limit
            );
        }
        let venue: Venue = name.parse()?;
        Ok(Self {
            ws_url: config.ws_url.trim_end_matches('/').to_string(),
            rest_url: config.rest_url.trim_end_matches('/').to_string(),
            snapshot_limit: config.snapshot_limit,
            depth: link.book_depth,
            http: reqwest::Client::builder()
                .timeout(link.connect_timeout)
                .build()?,
            pairs: symbols
                .into_iter()
                .map(|(name, symbol)| {
                    (
                        name,
                        Pair::new(Instrument::new(venue.clone(), symbol), link),
                    )
                })
                .collect(),
            fetches: JoinSet::new(),
        })
    }

    fn fetch(&mut self, name: &str, when: Fetch) {
        let Some(pair) = self.pairs.get_mut(name) else {
            return;
        };
        let delay = match when {
            Fetch::Now => Duration::ZERO,
            Fetch::Later => pair.retry.next_delay(),
        };
        let url = format!("{}/api/v3/depth", self.rest_url);
        let (http, limit, name) = (self.http.clone(), self.snapshot_limit, name.to_string());
        self.fetches.spawn(async move {
            tokio::time::sleep(delay).await;
            let snapshot = fetch_snapshot(&http, &url, &name, limit).await;
            (name, snapshot)
        });
    }
}

impl WsVenue for Binance {
    type Done = (String, Result<Snapshot, String>);

    fn request(&self) -> Result<Request, String> {
        let mut names: Vec<&String> = self.pairs.keys().collect();
        names.sort();
        let streams: Vec<String> = names
            .iter()
            .map(|name| {
                let s = name.to_ascii_lowercase();
                format!("{s}@trade/{s}@bookTicker/{s}@depth@100ms")
            })
            .collect();
        plain_request(&format!(
            "{}/stream?streams={}",
            self.ws_url,
            streams.join("/")
        ))
    }

    fn on_open(&mut self, _out: &mut Batch) {
        // The streams are in the URL. Every book starts over from a new snapshot.
        self.fetches = JoinSet::new();
        for pair in self.pairs.values_mut() {
            pair.sync = Sync::Waiting {
                buffer: VecDeque::new(),
                fetching: false,
            };
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault> {
        let envelope: Envelope = serde_json::from_str(text)
            .map_err(|e| Fault::Garbage(format!("not a combined-stream event: {e}")))?;
        let head: Head = serde_json::from_str(envelope.data.get()).map_err(garbage)?;
        if head.e.as_deref() == Some("serverShutdown") {
            return Err(Fault::Reconnect(
                "Binance announced a server shutdown".into(),
            ));
        }
        let Some(pair) = self.pairs.get_mut(head.s.as_ref()) else {
            return Err(Fault::Garbage(format!(
                "an event for {:?}, not subscribed",
                head.s
            )));
        };
        let stream = envelope.stream.as_ref();
        if stream.ends_with("@trade") {
            let trade: TradeWire = serde_json::from_str(envelope.data.get()).map_err(garbage)?;
            let trade = Trade::new(trade.p.0, Some(trade.q.0)).map_err(Fault::Garbage)?;
            out.events.push(pair.instrument.trade(trade));
        } else if stream.ends_with("@bookTicker") {
            let quote: BookTickerWire =
                serde_json::from_str(envelope.data.get()).map_err(garbage)?;
            out.events
                .extend(pair.instrument.quote(Some(quote.b.0), Some(quote.a.0)));
        } else if stream.contains("@depth") {
            let diff = parse_diff(envelope.data.get()).map_err(Fault::Garbage)?;
            if let Some(when) = pair.on_diff(diff, self.depth, out) {
                let name = head.s.into_owned();
                self.fetch(&name, when);
            }
        } else {
            return Err(Fault::Garbage(format!("unknown stream {stream:?}")));
        }
        Ok(())
    }

    async fn background(&mut self) -> Self::Done {
        loop {
            match self.fetches.join_next().await {
                Some(Ok(done)) => return done,
                Some(Err(e)) if e.is_panic() => {
                    tracing::error!(error = %e, "depth snapshot task panicked")
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn on_done(&mut self, (name, snapshot): Self::Done, out: &mut Batch) -> Result<(), Fault> {
        let Some(pair) = self.pairs.get_mut(&name) else {
            return Ok(());
        };
        let when = match snapshot {
            Ok(snapshot) => pair.on_snapshot(snapshot, self.depth, out),
            Err(e) => {
                tracing::warn!(symbol = %name, error = e, "depth snapshot failed; retrying");
                Some(Fetch::Later)
            }
        };
        if let Some(when) = when {
            self.fetch(&name, when);
        }
        Ok(())
    }
}

fn garbage(e: serde_json::Error) -> Fault {
    Fault::Garbage(e.to_string())
}

async fn fetch_snapshot(
    http: &reqwest::Client,
    url: &str,
    symbol: &str,
    limit: u32,
) -> Result<Snapshot, String> {
    let request = http
        .get(url)
        .query(&[("symbol", symbol), ("limit", &limit.to_string())]);
    let body = http_body(request).await?;
    parse_snapshot(&body)
}

/// A `GET /api/v3/depth` answer, checked whole.
fn parse_snapshot(body: &[u8]) -> Result<Snapshot, String> {
    let wire: SnapshotWire =
        serde_json::from_slice(body).map_err(|e| format!("bad snapshot: {e}"))?;
    Ok(Snapshot {
        last_update_id: wire.last_update_id,
        bids: levels(&wire.bids)?,
        asks: levels(&wire.asks)?,
    })
}

/// A `depthUpdate` event, checked whole (ids and every level) before it is
/// buffered or applied.
fn parse_diff(data: &str) -> Result<Diff, String> {
    let wire: DiffWire = serde_json::from_str(data).map_err(|e| e.to_string())?;
    if wire.first_id > wire.last_id {
        return Err(format!(
            "depth update with U {} > u {}",
            wire.first_id, wire.last_id
        ));
    }
    Ok(Diff {
        first_id: wire.first_id,
        last_id: wire.last_id,
        bids: levels(&wire.b)?,
        asks: levels(&wire.a)?,
    })
}

fn levels(wire: &[(Dec, Dec)]) -> Result<Vec<(Decimal, Decimal)>, String> {
    wire.iter().map(|(p, q)| level(p.0, q.0)).collect()
}

// ---------------------------------------------------------------- wire format

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The fields every event of a subscribed stream has.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    e: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    s: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TradeWire {
    p: Dec,
    q: Dec,
}

#[derive(Deserialize)]
struct BookTickerWire {
    b: Dec,
    a: Dec,
}

#[derive(Deserialize)]
struct DiffWire {
    #[serde(rename = "U")]
    first_id: u64,
    #[serde(rename = "u")]
    last_id: u64,
    b: Vec<(Dec, Dec)>,
    a: Vec<(Dec, Dec)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotWire {
    last_update_id: u64,
    bids: Vec<(Dec, Dec)>,
    asks: Vec<(Dec, Dec)>,
}

// ---------------------------------------------------------------- book sync

#[derive(Debug, Clone, PartialEq)]
struct Diff {
    first_id: u64,
    last_id: u64,
    bids: Vec<(Decimal, Decimal)>,
    asks: Vec<(Decimal, Decimal)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Snapshot {
    last_update_id: u64,
    bids: Vec<(Decimal, Decimal)>,
    asks: Vec<(Decimal, Decimal)>,
}

/// When to fetch a depth snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Now,
    /// After the pair's retry backoff (a failed or too old snapshot).
    Later,
}

#[derive(Debug)]
enum Sync {
    /// Diffs wait for a snapshot.
    Waiting {
        buffer: VecDeque<Diff>,
        fetching: bool,
    },
    /// The book is in sync up to update id `last` (the snapshot's `lastUpdateId`,
    /// then each applied diff's `u`).
    Live { book: LocalBook, last: u64 },
}

/// What the book at `last` makes of a diff (Binance's update procedure).
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// `u <= last`: already in the book.
    Old,
    /// `U > last + 1`: updates between were lost.
    Gap,
    Apply,
}

fn step(last: u64, diff: &Diff) -> Step {
    if diff.last_id <= last {
        Step::Old
    } else if diff.first_id > last + 1 {
        Step::Gap
    } else {
        Step::Apply
    }
}

/// One Binance symbol.
struct Pair {
    instrument: Instrument,
    sync: Sync,
    retry: Backoff,
}

impl Pair {
    fn new(instrument: Instrument, link: &Link) -> Self {
        Self {
            instrument,
            sync: Sync::Waiting {
                buffer: VecDeque::new(),
                fetching: false,
            },
            retry: Backoff::new(link),
        }
    }

    /// A diff from the stream; says when a snapshot must be fetched.
    fn on_diff(&mut self, diff: Diff, depth: usize, out: &mut Batch) -> Option<Fetch> {
        match &mut self.sync {
            Sync::Waiting { buffer, fetching } => {
                buffer_diff(buffer, diff);
                (!std::mem::replace(fetching, true)).then_some(Fetch::Now)
            }
            Sync::Live { book, last } => match step(*last, &diff) {
                Step::Old => {
                    out.duplicates += 1;
                    None
                }
                Step::Gap => {
                    tracing::warn!(
                        symbol = %self.instrument.symbol,
                        book_at = *last,
                        diff_from = diff.first_id,
                        "depth gap; fetching a new snapshot"
                    );
                    out.gaps += 1;
                    self.sync = Sync::Waiting {
                        buffer: VecDeque::from([diff]),
                        fetching: true,
                    };
                    Some(Fetch::Now)
                }
                Step::Apply => {
                    apply(book, &diff);
                    *last = diff.last_id;
                    out.events
                        .push(self.instrument.book(book, depth, Some(diff.last_id)));
                    None
                }
            },
        }
    }

    /// A snapshot arrived; says when another must be fetched.
    fn on_snapshot(&mut self, snapshot: Snapshot, depth: usize, out: &mut Batch) -> Option<Fetch> {
        let Sync::Waiting { buffer, .. } = &mut self.sync else {
            return None;
        };
        if buffer
            .front()
            .is_some_and(|first| snapshot.last_update_id + 1 < first.first_id)
        {
            // Older than the diffs we hold: the ones between are lost to us.
            return Some(Fetch::Later);
        }
        // Replay the buffer on the snapshot; publish only a replay that reaches
        // the end of the buffer.
        let mut book = LocalBook::from_levels(&snapshot.bids, &snapshot.asks);
        let mut last = snapshot.last_update_id;
        let mut instrument = self.instrument.clone();
        let mut events = vec![instrument.book(&book, depth, Some(last))];
        while let Some(diff) = buffer.pop_front() {
            match step(last, &diff) {
                // Buffered before the snapshot was taken: expected, not counted.
                Step::Old => {}
                Step::Gap => {
                    // Lost updates behind the snapshot: this diff and the ones after it
                    // stay buffered for the next snapshot; nothing is published.
                    tracing::warn!(
                        symbol = %self.instrument.symbol,
                        book_at = last,
                        diff_from = diff.first_id,
                        "depth gap in the buffered diffs; fetching a new snapshot"
                    );
                    buffer.push_front(diff);
                    out.gaps += 1;
                    return Some(Fetch::Now);
                }
                Step::Apply => {
                    apply(&mut book, &diff);
                    last = diff.last_id;
                    events.push(instrument.book(&book, depth, Some(last)));
                }
            }
        }
        out.events.extend(events);
        self.instrument = instrument;
        self.sync = Sync::Live { book, last };
        self.retry.reset();
        None
    }
}

/// Buffers a diff while no book is live; past `MAX_BUFFER` the oldest goes (the
/// snapshot check then asks for a newer snapshot if it must).
fn buffer_diff(buffer: &mut VecDeque<Diff>, diff: Diff) {
    if buffer.len() == MAX_BUFFER {
        buffer.pop_front();
    }
    buffer.push_back(diff);
}

fn apply(book: &mut LocalBook, diff: &Diff) {
    for &(price, size) in &diff.bids {
        book.set(Side::Bid, price, size);
    }
    for &(price, size) in &diff.asks {
        book.set(Side::Ask, price, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::link::LinkConfig;
    use crate::feed::FeedEvent;
    use moonbus_common::Book;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/connectors/binance"
    );

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn pair() -> Pair {
        let link = LinkConfig::default().validate("binance").unwrap();
        let instrument = Instrument::new("binance".parse().unwrap(), "BNB-BTC".parse().unwrap());
        Pair::new(instrument, &link)
    }

    /// The depth diffs of a fixture stream, in order.
    fn stream(name: &str) -> Vec<Diff> {
        fixture(name)
            .lines()
            .map(|line| {
                let envelope: Envelope = serde_json::from_str(line).unwrap();
                parse_diff(envelope.data.get()).unwrap()
            })
            .collect()
    }

    /// 157-160, 161-163, 164-165, 166.
    fn diffs() -> Vec<Diff> {
        stream("depth_stream.jsonl")
    }

    fn snapshot(name: &str) -> Snapshot {
        parse_snapshot(fixture(name).as_bytes()).unwrap()
    }

    fn seqs(out: &Batch) -> Vec<u64> {
        books(out).iter().map(|b| b.seq).collect()
    }

    /// A pair in sync at 163 (snapshot 160, then 161-163).
    fn live_pair() -> Pair {
        let mut pair = pair();
        let mut out = Batch::default();
        pair.on_diff(diffs()[1].clone(), 5, &mut out);
        pair.on_snapshot(snapshot("depth_snapshot_160.json"), 5, &mut out);
        assert_eq!(seqs(&out), [160, 163]);
        pair
    }

    fn live_at(pair: &Pair) -> Option<u64> {
        match pair.sync {
            Sync::Live { last, .. } => Some(last),
            Sync::Waiting { .. } => None,
        }
    }

    fn books(out: &Batch) -> Vec<&Book> {
        out.events
            .iter()
            .filter_map(|e| match e {
                FeedEvent::Book(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    fn top(book: &Book) -> (String, String) {
        (book.bids[0].0.to_string(), book.asks[0].0.to_string())
    }

    #[test]
    fn diffs_wait_for_the_snapshot_then_apply_in_order() {
        // Fixture: snapshot lastUpdateId 160; diffs 157-160 (older), 161-163
        // (straddles 161), 164-165, 166-166.
        let mut pair = pair();
        let mut out = Batch::default();
        let diffs = diffs();
        assert_eq!(
            pair.on_diff(diffs[0].clone(), 5, &mut out),
            Some(Fetch::Now)
        );
        for diff in &diffs[1..3] {
            assert_eq!(
                pair.on_diff(diff.clone(), 5, &mut out),
                None,
                "already fetching"
            );
        }
        assert!(
            out.events.is_empty(),
            "nothing published before the snapshot"
        );
        assert_eq!(
            pair.on_snapshot(snapshot("depth_snapshot_160.json"), 5, &mut out),
            None
        );
        let published = books(&out);
        // The snapshot, then the two buffered diffs after it (157-160 dropped).
        let seqs: Vec<u64> = published.iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [160, 163, 165]);
        assert_eq!(top(published[0]), ("0.0024".into(), "0.0026".into()));
        assert_eq!(top(published[2]), ("0.0025".into(), "0.0026".into()));
        out.events.clear();
        assert_eq!(pair.on_diff(diffs[3].clone(), 5, &mut out), None);
        assert_eq!(books(&out)[0].seq, 166);
        assert_eq!(out.gaps, 0);
    }

    #[test]
    fn a_gap_counts_and_waits_for_a_new_snapshot() {
        let mut pair = pair();
        let mut out = Batch::default();
        let diffs = diffs();
        pair.on_diff(diffs[1].clone(), 5, &mut out);
        pair.on_snapshot(snapshot("depth_snapshot_160.json"), 5, &mut out);
        out.events.clear();
        // 166 after 163: 164-165 is missing.
        assert_eq!(
            pair.on_diff(diffs[3].clone(), 5, &mut out),
            Some(Fetch::Now)
        );
        assert_eq!(out.gaps, 1);
        assert!(out.events.is_empty());
        // A snapshot at 165 resyncs; the buffered 166 follows it.
        assert_eq!(
            pair.on_snapshot(snapshot("depth_snapshot_165.json"), 5, &mut out),
            None
        );
        let seqs: Vec<u64> = books(&out).iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [165, 166]);
        assert_eq!(top(books(&out)[0]), ("0.0021".into(), "0.0029".into()));
    }

    #[test]
    fn a_snapshot_older_than_the_first_buffered_diff_is_fetched_again() {
        let mut pair = pair();
        let mut out = Batch::default();
        let diffs = diffs();
        pair.on_diff(diffs[2].clone(), 5, &mut out); // U = 164
        assert_eq!(
            pair.on_snapshot(snapshot("depth_snapshot_160.json"), 5, &mut out),
            Some(Fetch::Later)
        );
        assert!(out.events.is_empty());
        assert!(matches!(pair.sync, Sync::Waiting { fetching: true, .. }));
    }

    #[test]
    fn the_first_diff_must_straddle_the_snapshot() {
        let mut pair = pair();
        let mut out = Batch::default();
        let diffs = diffs();
        // Only 164-165 buffered: 161-163 was lost, so it cannot follow 160.
        pair.on_diff(diffs[2].clone(), 5, &mut out);
        let mut old = snapshot("depth_snapshot_160.json");
        old.last_update_id = 164; // pretend the snapshot is at 164: 164-165 straddles
        assert_eq!(pair.on_snapshot(old, 5, &mut out), None);
        assert_eq!(books(&out).last().unwrap().seq, 165);
        // 157-160 and 164-165 buffered (161-163 lost on the way): after the
        // snapshot at 160, 164 cannot follow.
        let mut pair2 = self::pair();
        let mut out2 = Batch::default();
        pair2.on_diff(diffs[0].clone(), 5, &mut out2);
        pair2.on_diff(diffs[2].clone(), 5, &mut out2);
        assert_eq!(
            pair2.on_snapshot(snapshot("depth_snapshot_160.json"), 5, &mut out2),
            Some(Fetch::Now)
        );
        assert_eq!(out2.gaps, 1);
    }

    #[test]
    fn a_snapshot_after_a_gap_replays_the_diffs_buffered_behind_it() {
        // In sync at 163; 164-165 is lost: 166 is a gap. 167-168 and 169-170 come
        // while the new snapshot (167) is on its way.
        let mut pair = live_pair();
        let mut out = Batch::default();
        assert_eq!(
            pair.on_diff(diffs()[3].clone(), 5, &mut out),
            Some(Fetch::Now)
        );
        let after = stream("depth_after_gap.jsonl");
        for diff in &after[..2] {
            assert_eq!(pair.on_diff(diff.clone(), 5, &mut out), None, "buffered");
        }
        assert!(out.events.is_empty());
        assert_eq!(
            pair.on_snapshot(snapshot("depth_snapshot_167.json"), 5, &mut out),
            None
        );
        // 166 is older than the snapshot; 167-168 straddles it; 169-170 follows.
        assert_eq!(seqs(&out), [167, 168, 170]);
        assert_eq!(
            top(books(&out)[2]),
            ("0.00225".into(), "0.0028".into()),
            "not the bare snapshot"
        );
        assert_eq!((out.gaps, out.duplicates), (1, 0));
        // The next diff follows: no second resync.
        out.events.clear();
        assert_eq!(pair.on_diff(after[2].clone(), 5, &mut out), None);
        assert_eq!(seqs(&out), [171]);
        assert_eq!(top(books(&out)[0]), ("0.0022".into(), "0.0028".into()));
        assert_eq!(out.gaps, 1);
    }

    #[test]
    fn a_gap_in_the_buffered_diffs_keeps_the_diffs_behind_it_for_the_next_snapshot() {
        // 161-163 was lost before the first snapshot arrived.
        let mut pair = pair();
        let mut out = Batch::default();
        let diffs = diffs();
        for i in [0, 2, 3] {
            pair.on_diff(diffs[i].clone(), 5, &mut out);
        }
        assert_eq!(
            pair.on_snapshot(snapshot("depth_snapshot_160.json"), 5, &mut out),
            Some(Fetch::Now)
        );
        assert_eq!(out.gaps, 1);
        assert!(
            out.events.is_empty(),
            "a replay that hit a gap publishes nothing"
        );
        let Sync::Waiting { buffer, fetching } = &pair.sync else {
            panic!("still waiting")
        };
        let kept: Vec<(u64, u64)> = buffer.iter().map(|d| (d.first_id, d.last_id)).collect();
        assert_eq!((kept, *fetching), (vec![(164, 165), (166, 166)], true));
        // The next snapshot (165) takes 166 from the buffer; 167-168 follows live.
        assert_eq!(
            pair.on_snapshot(snapshot("depth_snapshot_165.json"), 5, &mut out),
            None
        );
        assert_eq!(
            pair.on_diff(stream("depth_after_gap.jsonl")[0].clone(), 5, &mut out),
            None
        );
        assert_eq!(seqs(&out), [165, 166, 168]);
        assert_eq!(out.gaps, 1);
    }

    #[test]
    fn old_and_duplicate_diffs_after_sync_are_ignored_not_gaps() {
        let mut pair = live_pair();
        let mut out = Batch::default();
        let diffs = diffs();
        // 161-163 again (a duplicate), 157-160 (older than the book).
        assert_eq!(pair.on_diff(diffs[1].clone(), 5, &mut out), None);
        assert_eq!(pair.on_diff(diffs[0].clone(), 5, &mut out), None);
        assert_eq!((out.gaps, out.duplicates, out.events.len()), (0, 2, 0));
        assert_eq!(live_at(&pair), Some(163));
        assert_eq!(pair.on_diff(diffs[2].clone(), 5, &mut out), None);
        // A diff that overlaps the book (U <= last < u) carries the newer sizes: applied.
        let overlap = parse_diff(
            r#"{"e":"depthUpdate","E":1,"s":"BNBBTC","U":165,"u":167,"b":[["0.0025","2"]],"a":[]}"#,
        )
        .unwrap();
        assert_eq!(pair.on_diff(overlap, 5, &mut out), None);
        assert_eq!(seqs(&out), [165, 167]);
        assert_eq!(books(&out)[1].bids[0].1.to_string(), "2");
        assert_eq!((out.gaps, out.duplicates), (0, 2));
    }

    #[test]
    fn a_rejected_depth_frame_changes_nothing() {
        let link = LinkConfig::default().validate("binance").unwrap();
        let config = BinanceConfig {
            symbols: vec!["BNBBTC".into()],
            ..BinanceConfig::default()
        };
        let mut binance = Binance::new("binance", &link, &config).unwrap();
        *binance.pairs.get_mut("BNBBTC").unwrap() = live_pair();
        let mut out = Batch::default();
        for bad in [
            // U > u
            r#"{"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BNBBTC","U":170,"u":164,"b":[],"a":[]}}"#,
            // the second level's size is negative
            r#"{"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BNBBTC","U":164,"u":165,"b":[["0.0025","1"],["0.0024","-1"]],"a":[]}}"#,
            // a price as a JSON number
            r#"{"stream":"bnbbtc@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BNBBTC","U":164,"u":165,"b":[[0.0025,"1"]],"a":[]}}"#,
        ] {
            let result = binance.on_text(bad, &mut out);
            assert!(matches!(result, Err(Fault::Garbage(_))), "{bad}");
        }
        assert!(out.events.is_empty());
        assert_eq!((out.gaps, out.duplicates), (0, 0));
        assert_eq!(live_at(&binance.pairs["BNBBTC"]), Some(163));
        // The genuine 164-165 still follows the book.
        binance
            .on_text(&lines("depth_stream.jsonl")[2], &mut out)
            .unwrap();
        assert_eq!(seqs(&out), [165]);
    }

    fn lines(name: &str) -> Vec<String> {
        fixture(name).lines().map(str::to_string).collect()
    }

    #[test]
    fn trade_and_book_ticker_frames_become_ticks() {
        let link = LinkConfig::default().validate("binance").unwrap();
        let config = BinanceConfig {
            symbols: vec!["BNBBTC".into()],
            ..BinanceConfig::default()
        };
        let mut binance = Binance::new("binance", &link, &config).unwrap();
        let mut out = Batch::default();
        for line in fixture("ticks.jsonl").lines() {
            binance.on_text(line, &mut out).unwrap();
        }
        // price bid ask size
        let ticks: Vec<String> = out
            .events
            .iter()
            .map(|e| match e {
                FeedEvent::Tick(t) => {
                    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                    format!(
                        "{} {} {} {}",
                        t.price,
                        show(t.bid.map(|b| b.to_string())),
                        show(t.ask.map(|a| a.to_string())),
                        show(t.size.map(|s| s.to_string()))
                    )
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            ticks,
            ["25.35855 25.3519 25.3652 -", "25.3601 25.3519 25.3652 100"]
        );
        let err = binance.on_text(
            "{\"stream\":\"ethusdt@trade\",\"data\":{\"s\":\"ETHUSDT\"}}",
            &mut out,
        );
        assert!(matches!(err, Err(Fault::Garbage(_))), "unsubscribed symbol");
        let err = binance.on_text(
            "{\"stream\":\"x\",\"data\":{\"e\":\"serverShutdown\",\"E\":1,\"s\":\"\"}}",
            &mut out,
        );
        assert!(matches!(err, Err(Fault::Reconnect(_))));
        let err = binance.on_text(
            "{\"stream\":\"bnbbtc@trade\",\"data\":{\"s\":\"BNBBTC\",\"p\":0.1,\"q\":\"1\"}}",
            &mut out,
        );
        assert!(
            matches!(err, Err(Fault::Garbage(_))),
            "a price as a JSON number"
        );
    }
}
