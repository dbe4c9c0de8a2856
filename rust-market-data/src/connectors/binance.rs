//! The Binance family, public market data, no key: Binance spot (`binance`) and
//! Aster's perpetual futures (`aster`, asterdex.com, whose market-data API is
//! Binance USDⓈ-M futures' own). One combined-stream connection
//! (`/stream?streams=<s>@<trade>/<s>@bookTicker/<s>@depth@100ms/...`); what sets the
//! two apart is a [`Flavour`]: endpoints, the trade stream, limits and the depth
//! sync [`Rule`].
//!
//! - `trade` (spot) or `aggTrade` (futures) -> a tick at the trade price and size;
//!   `bookTicker` -> a tick when the best bid or ask changes (priced at the last
//!   trade, or the mid before one).
//! - `depth@100ms` diffs + the REST snapshot (`GET /api/v3/depth`, futures
//!   `GET /fapi/v1/depth`) keep a local book, as each venue's "How to manage a local
//!   order book correctly" says: buffer the diffs, fetch a snapshot (again, after the
//!   backoff, if it is older than the first buffered diff), set the book to it, then
//!   replay the buffer and every later diff with the one [`step`] of the venue's rule.
//!   A diff is old or a duplicate (ignored, and, once in sync, counted in
//!   `md_duplicates_total`), follows the book (applied, the book is then at its `u`),
//!   or shows a gap (counted; that diff and every one after it stay buffered for a new
//!   snapshot). The rules, with the book at update id `last`:
//!   - spot: `u <= last` old; `U > last + 1` gap; else apply.
//!   - futures (`pu`: the previous diff's `u`): after the snapshot (`last` =
//!     `lastUpdateId`), `u < last` old; the first diff applied must straddle it
//!     (`U <= last <= u`) or start right after it (`pu == last`), else gap; after a
//!     diff, `u <= last` old (a stale or repeated diff), `pu == last` apply, else gap.
//!     (Futures update ids are not contiguous: `U` is rarely `pu + 1`.)
//!
//!   A diff is checked whole (`U <= u`, every level, futures: `pu` present) before
//!   it is buffered or applied. The book is published after every applied diff,
//!   `seq` = its `u`; a replay that hits a gap publishes nothing.
//! - Binance pings every 20 s, Aster every 5 min; tungstenite answers with the same
//!   payload. The connector pings every `ping_interval_ms` too: the venue's pong keeps
//!   a quiet connection (a few quiet Aster symbols) from being taken for dead.
//! - The snapshots spend REST weight, which both venues count per IP a minute
//!   (Binance 6,000, Aster 2,400; execution's orders from the same IP count too): a
//!   [`WeightBudget`] paces them, and a 429 or 418 stops every fetch for its
//!   `Retry-After` (a 429 ignored becomes a 418 ban, 2 minutes up to 3 days).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Result};
use moonbus_common::Venue;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Message;

use super::book::{level, Instrument, LocalBook, Side, Trade};
use super::link::{check_url, Backoff, Link, HTTP, WS};
use super::session::{plain_request, response_body, run_ws, Batch, Fault, FeedOut, WsVenue};
use super::symbols::{self, Naming};
use super::wire::Dec;
use crate::feed::FeedSink;

/// `[market_data.binance]` and `[market_data.aster]`, besides the link keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BinanceConfig {
    /// "" = the venue's endpoint (`wss://stream.binance.com:9443`,
    /// `wss://fstream.asterdex.com`).
    pub ws_url: String,
    /// "" = the venue's endpoint (`https://api.binance.com`, `https://fapi.asterdex.com`).
    pub rest_url: String,
    /// The venue's symbols (`BTCUSDT`).
    pub symbols: Vec<String>,
    /// Venue symbol -> canonical symbol, where the default split
    /// (`BTCUSDT` -> `BTC-USDT`) is not wanted or not possible.
    pub symbol_map: BTreeMap<String, String>,
    /// Levels asked of the depth snapshot (spot 1..5000, 1000 costs weight 50;
    /// Aster one of 5, 10, 20, 50, 100, 500, 1000).
    pub snapshot_limit: u32,
    /// The REST weight the depth snapshots may spend in any 60 s; 0 = half the
    /// venue's limit for an IP (Binance 6,000, Aster 2,400), leaving the rest to
    /// execution and anything else on the same address.
    pub snapshot_weight_per_minute: u32,
    /// A WebSocket ping this often; the venue's pong is a sign of life.
    pub ping_interval_ms: u64,
}

impl Default for BinanceConfig {
    fn default() -> Self {
        Self {
            ws_url: String::new(),
            rest_url: String::new(),
            symbols: vec!["BTCUSDT".into(), "ETHUSDT".into(), "SOLUSDT".into()],
            symbol_map: BTreeMap::new(),
            snapshot_limit: 1000,
            snapshot_weight_per_minute: 0,
            ping_interval_ms: 30_000,
        }
    }
}

/// What sets a venue of the Binance family apart.
pub(super) struct Flavour {
    naming: Naming,
    ws_url: &'static str,
    rest_url: &'static str,
    /// The depth snapshot's path under `rest_url`.
    depth_path: &'static str,
    /// The trade stream's suffix (`<symbol>@trade`).
    trade_stream: &'static str,
    /// Three streams a symbol: the connection's stream limit / 3.
    max_symbols: usize,
    snapshot_limit: fn(u32) -> bool,
    /// The valid `snapshot_limit`s, for messages.
    snapshot_limits: &'static str,
    /// The venue's REST weight limit for an IP a minute (`REQUEST_WEIGHT`).
    weight_limit: u32,
    /// The weight of a depth snapshot of a valid `snapshot_limit`.
    depth_weight: fn(u32) -> u32,
    rule: Rule,
}

/// Binance spot: 1024 streams per connection.
pub(super) const BINANCE: Flavour = Flavour {
    naming: Naming {
        venue: "binance",
        pattern: "^[A-Z0-9]{2,20}$",
        valid: |name| symbols::upper_alnum(name, 2, 20),
    },
    ws_url: "wss://stream.binance.com:9443",
    rest_url: "https://api.binance.com",
    depth_path: "/api/v3/depth",
    trade_stream: "@trade",
    max_symbols: 300,
    snapshot_limit: |limit| (1..=5000).contains(&limit),
    snapshot_limits: "1..5000",
    weight_limit: 6000,
    depth_weight: |limit| match limit {
        1..=100 => 5,
        101..=500 => 25,
        501..=1000 => 50,
        _ => 250,
    },
    rule: Rule::Spot,
};

/// Aster perpetual futures (the Binance USDⓈ-M futures API): 200 streams per
/// connection, no `trade` stream (`aggTrade`), snapshot limits from a list.
pub(super) const ASTER: Flavour = Flavour {
    naming: Naming {
        venue: "aster",
        pattern: "^[A-Z0-9]{2,20}$",
        valid: |name| symbols::upper_alnum(name, 2, 20),
    },
    ws_url: "wss://fstream.asterdex.com",
    rest_url: "https://fapi.asterdex.com",
    depth_path: "/fapi/v1/depth",
    trade_stream: "@aggTrade",
    max_symbols: 66,
    snapshot_limit: |limit| [5, 10, 20, 50, 100, 500, 1000].contains(&limit),
    snapshot_limits: "one of 5, 10, 20, 50, 100, 500, 1000",
    weight_limit: 2400,
    depth_weight: |limit| match limit {
        0..=50 => 2,
        51..=100 => 5,
        101..=500 => 10,
        _ => 20,
    },
    rule: Rule::Futures,
};

/// Diffs kept while a snapshot is on its way (10 a second: 100 s); past this the
/// oldest go, and the snapshot check asks for a newer snapshot if it must.
const MAX_BUFFER: usize = 1000;

/// `[market_data.binance]`.
pub(super) fn start(name: &str, link: Link, config: &BinanceConfig, sink: FeedSink) -> Result<()> {
    launch(&BINANCE, name, link, config, sink)
}

/// `[market_data.aster]`.
pub(super) fn start_aster(
    name: &str,
    link: Link,
    config: &BinanceConfig,
    sink: FeedSink,
) -> Result<()> {
    launch(&ASTER, name, link, config, sink)
}

fn launch(
    flavour: &'static Flavour,
    name: &str,
    link: Link,
    config: &BinanceConfig,
    sink: FeedSink,
) -> Result<()> {
    let binance = Binance::new(flavour, name, &link, config)?;
    let out = FeedOut::new(name.parse()?, sink, binance.pairs.len());
    tokio::spawn(run_ws(binance, link, out));
    Ok(())
}

pub(super) struct Binance {
    flavour: &'static Flavour,
    ws_url: String,
    rest_url: String,
    snapshot_limit: u32,
    /// What one snapshot costs of `budget`.
    snapshot_weight: u32,
    budget: Arc<Mutex<WeightBudget>>,
    ping_interval: Duration,
    depth: usize,
    http: reqwest::Client,
    /// Venue symbol -> its state.
    pairs: HashMap<String, Pair>,
    /// Depth snapshots on their way (dropped, i.e. aborted, on a new connection).
    fetches: JoinSet<(String, Result<Snapshot, SnapshotError>)>,
}

impl Binance {
    /// Checks `[market_data.<name>]` (`binance` or `aster`).
    pub(super) fn new(
        flavour: &'static Flavour,
        name: &str,
        link: &Link,
        config: &BinanceConfig,
    ) -> Result<Self> {
        let symbols = symbols::map(
            &flavour.naming,
            &config.symbols,
            &config.symbol_map,
            symbols::split_known_quote,
        )?;
        if symbols.len() > flavour.max_symbols {
            bail!(
                "[market_data.{name}] symbols: {} listed, at most {} per connection",
                symbols.len(),
                flavour.max_symbols
            );
        }
        let or = |url: &str, default: &'static str| {
            if url.is_empty() {
                default.to_string()
            } else {
                url.to_string()
            }
        };
        let ws_url = or(&config.ws_url, flavour.ws_url);
        let rest_url = or(&config.rest_url, flavour.rest_url);
        check_url(name, "ws_url", &ws_url, WS)?;
        check_url(name, "rest_url", &rest_url, HTTP)?;
        if !(flavour.snapshot_limit)(config.snapshot_limit) {
            bail!(
                "[market_data.{name}] snapshot_limit = {}: must be {}",
                config.snapshot_limit,
                flavour.snapshot_limits
            );
        }
        // Levels beyond the snapshot are learnt only when they change (Binance's "How to
        // manage a local order book correctly"): a snapshot shallower than the published
        // book would publish it with holes from the start.
        if u64::from(config.snapshot_limit) < link.book_depth as u64 {
            bail!(
                "[market_data.{name}] snapshot_limit = {} is below book_depth = {}: the book \
                 would be published without the levels the snapshot does not hold",
                config.snapshot_limit,
                link.book_depth
            );
        }
        let snapshot_weight = (flavour.depth_weight)(config.snapshot_limit);
        let per_minute = match config.snapshot_weight_per_minute {
            0 => flavour.weight_limit / 2,
            set => set,
        };
        // A fifth of the budget is the burst: it must hold one snapshot.
        if per_minute > flavour.weight_limit || per_minute < BURST_SHARE * snapshot_weight {
            bail!(
                "[market_data.{name}] snapshot_weight_per_minute = {per_minute}: must be from {} \
                 (five snapshots of snapshot_limit = {}, weight {snapshot_weight} each) to the \
                 venue's limit of {} (0 = half of it)",
                BURST_SHARE * snapshot_weight,
                config.snapshot_limit,
                flavour.weight_limit
            );
        }
        let whole_sync = u64::from(snapshot_weight) * symbols.len() as u64;
        if whole_sync > u64::from(per_minute) {
            tracing::warn!(
                venue = name,
                symbols = symbols.len(),
                weight = whole_sync,
                per_minute,
                "the depth snapshots of every symbol weigh more than the budget allows in a \
                 minute: a full book sync (at start, after a reconnect) takes minutes; a lower \
                 snapshot_limit weighs less"
            );
        }
        if config.ping_interval_ms == 0
            || config.ping_interval_ms >= link.dead_after.as_millis() as u64
        {
            bail!(
                "[market_data.{name}] ping_interval_ms = {}: must be from 1 to below \
                 dead_after_ms ({}), so that the pong keeps a quiet connection alive",
                config.ping_interval_ms,
                link.dead_after.as_millis()
            );
        }
        let venue: Venue = name.parse()?;
        Ok(Self {
            flavour,
            ws_url: ws_url.trim_end_matches('/').to_string(),
            rest_url: rest_url.trim_end_matches('/').to_string(),
            snapshot_limit: config.snapshot_limit,
            snapshot_weight,
            budget: Arc::new(Mutex::new(WeightBudget::new(per_minute, Instant::now()))),
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            depth: link.book_depth,
            http: reqwest::Client::builder()
                .timeout(link.connect_timeout)
                .build()?,
            pairs: symbols
                .into_iter()
                .map(|(name, symbol)| {
                    let instrument = Instrument::new(venue.clone(), symbol);
                    (name, Pair::new(instrument, link, flavour.rule))
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
        let url = format!("{}{}", self.rest_url, self.flavour.depth_path);
        let (http, limit, name) = (self.http.clone(), self.snapshot_limit, name.to_string());
        let (budget, weight) = (self.budget.clone(), self.snapshot_weight);
        self.fetches.spawn(async move {
            tokio::time::sleep(delay).await;
            // Asked again after each wait: a 429 elsewhere may have paused every fetch.
            loop {
                let taken = lock(&budget).take(weight, Instant::now());
                match taken {
                    Ok(()) => break,
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
            let snapshot = fetch_snapshot(&http, &url, &name, limit).await;
            (name, snapshot)
        });
    }
}

fn lock(budget: &Mutex<WeightBudget>) -> std::sync::MutexGuard<'_, WeightBudget> {
    // Nothing panics while holding it; a poisoned budget is still a budget.
    budget.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `1 / BURST_SHARE` of the budget may be spent at once.
const BURST_SHARE: u32 = 5;

/// The longest ban Binance and Aster document (3 days): a longer `Retry-After` is
/// taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);

/// The REST weight the depth snapshots may spend, shared by every symbol of a
/// connector and kept across reconnects (a reconnect fetches every snapshot
/// again). A generic cell rate: a fifth of the budget at once, the rest spread
/// evenly, so that no 60 s spend more than the budget; a pause (a 429's or 418's
/// `Retry-After`) stops every fetch.
#[derive(Debug)]
struct WeightBudget {
    /// When the spent weight has come back whole (`>= now` when some is spent).
    whole_at: Instant,
    /// How long one unit of weight takes to come back.
    per_unit: Duration,
    /// How far `whole_at` may run ahead of now: the burst.
    burst: Duration,
    paused_until: Instant,
}

impl WeightBudget {
    /// `per_minute` is at least `BURST_SHARE` (the config check).
    fn new(per_minute: u32, now: Instant) -> Self {
        let burst_weight = per_minute / BURST_SHARE;
        let per_unit = Duration::from_secs(60) / (per_minute - burst_weight).max(1);
        Self {
            whole_at: now,
            per_unit,
            burst: per_unit * burst_weight,
            paused_until: now,
        }
    }

    /// Spends `weight` now, or says how long to wait before asking again.
    fn take(&mut self, weight: u32, now: Instant) -> Result<(), Duration> {
        if now < self.paused_until {
            return Err(self.paused_until - now);
        }
        let whole_after = self.whole_at.max(now) + self.per_unit * weight;
        let allowed_from = whole_after.checked_sub(self.burst).unwrap_or(now);
        if allowed_from > now {
            return Err(allowed_from - now);
        }
        self.whole_at = whole_after;
        Ok(())
    }

    /// Nothing is spent before `until`.
    fn pause(&mut self, until: Instant) {
        self.paused_until = self.paused_until.max(until);
    }
}

/// Why a depth snapshot did not come.
#[derive(Debug)]
pub(super) enum SnapshotError {
    /// 429 (over the limit) or 418 (banned), with the venue's `Retry-After`.
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    Failed(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Throttled {
                status,
                retry_after: Some(after),
            } => write!(f, "HTTP {status}, Retry-After {} s", after.as_secs()),
            Self::Throttled {
                status,
                retry_after: None,
            } => write!(f, "HTTP {status} without Retry-After"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl WsVenue for Binance {
    type Done = (String, Result<Snapshot, SnapshotError>);

    fn request(&self) -> Result<Request, String> {
        let mut names: Vec<&String> = self.pairs.keys().collect();
        names.sort();
        let trade = self.flavour.trade_stream;
        let streams: Vec<String> = names
            .iter()
            .map(|name| {
                let s = name.to_ascii_lowercase();
                format!("{s}{trade}/{s}@bookTicker/{s}@depth@100ms")
            })
            .collect();
        plain_request(&format!(
            "{}/stream?streams={}",
            self.ws_url,
            streams.join("/")
        ))
    }

    fn keepalive(&self) -> Option<(Duration, Message)> {
        Some((self.ping_interval, Message::Ping(Default::default())))
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
            return Err(Fault::Reconnect(format!(
                "{} announced a server shutdown",
                self.flavour.naming.venue
            )));
        }
        let Some(pair) = self.pairs.get_mut(head.s.as_ref()) else {
            return Err(Fault::Garbage(format!(
                "an event for {:?}, not subscribed",
                head.s
            )));
        };
        let stream = envelope.stream.as_ref();
        if stream.ends_with(self.flavour.trade_stream) {
            let trade: TradeWire = serde_json::from_str(envelope.data.get()).map_err(garbage)?;
            let trade = Trade::new(trade.p.0, Some(trade.q.0)).map_err(Fault::Garbage)?;
            out.events.push(pair.instrument.trade(trade));
        } else if stream.ends_with("@bookTicker") {
            let quote: BookTickerWire =
                serde_json::from_str(envelope.data.get()).map_err(garbage)?;
            out.events
                .extend(pair.instrument.quote(Some(quote.b.0), Some(quote.a.0)));
        } else if stream.contains("@depth") {
            let diff = parse_diff(pair.rule, envelope.data.get()).map_err(Fault::Garbage)?;
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
                if let SnapshotError::Throttled {
                    retry_after: Some(after),
                    ..
                } = e
                {
                    lock(&self.budget).pause(Instant::now() + after);
                    tracing::warn!(
                        venue = self.flavour.naming.venue,
                        error = %e,
                        "the venue limits this IP: every depth snapshot waits"
                    );
                }
                tracing::warn!(symbol = %name, error = %e, "depth snapshot failed; retrying");
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
) -> Result<Snapshot, SnapshotError> {
    let response = http
        .get(url)
        .query(&[("symbol", symbol), ("limit", &limit.to_string())])
        .send()
        .await
        .map_err(|e| SnapshotError::Failed(e.without_url().to_string()))?;
    let status = response.status().as_u16();
    if status == 429 || status == 418 {
        // Seconds, as both venues send it; an HTTP date is not theirs.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
        return Err(SnapshotError::Throttled {
            status,
            retry_after,
        });
    }
    let body = response_body(response)
        .await
        .map_err(SnapshotError::Failed)?;
    parse_snapshot(&body).map_err(SnapshotError::Failed)
}

/// A depth snapshot answer, checked whole.
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
/// buffered or applied. The futures rule needs `pu`.
fn parse_diff(rule: Rule, data: &str) -> Result<Diff, String> {
    let wire: DiffWire = serde_json::from_str(data).map_err(|e| e.to_string())?;
    if wire.first_id > wire.last_id {
        return Err(format!(
            "depth update with U {} > u {}",
            wire.first_id, wire.last_id
        ));
    }
    if rule == Rule::Futures && wire.prev_id.is_none() {
        return Err("futures depth update without pu".into());
    }
    Ok(Diff {
        first_id: wire.first_id,
        last_id: wire.last_id,
        prev_id: wire.prev_id,
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

/// `trade` and `aggTrade` alike.
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
    /// Futures only.
    #[serde(rename = "pu", default)]
    prev_id: Option<u64>,
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
    /// `pu`: the `u` of the diff before this one (futures).
    prev_id: Option<u64>,
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
    /// The book is in sync up to `at`.
    Live { book: LocalBook, at: At },
}

/// The update id a book is at: a snapshot's `lastUpdateId`, or the `u` of the last
/// diff applied (the futures rule tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    id: u64,
    snapshot: bool,
}

/// How a venue's diffs follow each other (the module doc has both rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Binance spot: a diff's `U` is the previous one's `u + 1`.
    Spot,
    /// Binance USDⓈ-M futures (Aster): a diff's `pu` is the previous one's `u`.
    Futures,
}

/// What the book at `at` makes of a diff.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Already in the book.
    Old,
    /// Updates between were lost.
    Gap,
    Apply,
}

fn step(rule: Rule, at: At, diff: &Diff) -> Step {
    let (first, last) = (diff.first_id, diff.last_id);
    let (old, follows) = match (rule, at.snapshot) {
        (Rule::Spot, _) => (last <= at.id, first <= at.id.saturating_add(1)),
        // The first diff after the snapshot straddles it, or starts right after it.
        (Rule::Futures, true) => (last < at.id, first <= at.id || diff.prev_id == Some(at.id)),
        (Rule::Futures, false) => (last <= at.id, diff.prev_id == Some(at.id)),
    };
    if old {
        Step::Old
    } else if follows {
        Step::Apply
    } else {
        Step::Gap
    }
}

/// One symbol.
struct Pair {
    instrument: Instrument,
    rule: Rule,
    sync: Sync,
    retry: Backoff,
}

impl Pair {
    fn new(instrument: Instrument, link: &Link, rule: Rule) -> Self {
        Self {
            instrument,
            rule,
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
            Sync::Live { book, at } => match step(self.rule, *at, &diff) {
                Step::Old => {
                    out.duplicates += 1;
                    None
                }
                Step::Gap => {
                    tracing::warn!(
                        symbol = %self.instrument.symbol,
                        book_at = at.id,
                        diff_from = diff.first_id,
                        diff_after = diff.prev_id,
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
                    *at = At {
                        id: diff.last_id,
                        snapshot: false,
                    };
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
        let mut at = At {
            id: snapshot.last_update_id,
            snapshot: true,
        };
        if buffer
            .front()
            .is_some_and(|first| step(self.rule, at, first) == Step::Gap)
        {
            // Older than the diffs we hold: the ones between are lost to us.
            return Some(Fetch::Later);
        }
        // Replay the buffer on the snapshot; publish only a replay that reaches
        // the end of the buffer.
        let mut book = LocalBook::from_levels(&snapshot.bids, &snapshot.asks);
        let mut instrument = self.instrument.clone();
        let mut events = vec![instrument.book(&book, depth, Some(at.id))];
        while let Some(diff) = buffer.pop_front() {
            match step(self.rule, at, &diff) {
                // Buffered before the snapshot was taken: expected, not counted.
                Step::Old => {}
                Step::Gap => {
                    // Lost updates behind the snapshot: this diff and the ones after it
                    // stay buffered for the next snapshot; nothing is published.
                    tracing::warn!(
                        symbol = %self.instrument.symbol,
                        book_at = at.id,
                        diff_from = diff.first_id,
                        diff_after = diff.prev_id,
                        "depth gap in the buffered diffs; fetching a new snapshot"
                    );
                    buffer.push_front(diff);
                    out.gaps += 1;
                    return Some(Fetch::Now);
                }
                Step::Apply => {
                    apply(&mut book, &diff);
                    at = At {
                        id: diff.last_id,
                        snapshot: false,
                    };
                    events.push(instrument.book(&book, depth, Some(at.id)));
                }
            }
        }
        out.events.extend(events);
        self.instrument = instrument;
        self.sync = Sync::Live { book, at };
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

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/connectors");

    /// `tests/fixtures/connectors/binance/<name>`.
    fn fixture(name: &str) -> String {
        venue_fixture("binance", name)
    }

    fn venue_fixture(venue: &str, name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{venue}/{name}")).unwrap()
    }

    fn pair_of(venue: &str, symbol: &str, rule: Rule) -> Pair {
        let link = LinkConfig::default().validate(venue).unwrap();
        let instrument = Instrument::new(venue.parse().unwrap(), symbol.parse().unwrap());
        Pair::new(instrument, &link, rule)
    }

    fn pair() -> Pair {
        pair_of("binance", "BNB-BTC", Rule::Spot)
    }

    /// The depth diffs of a fixture stream, in order.
    fn diffs_of(rule: Rule, text: &str) -> Vec<Diff> {
        text.lines()
            .map(|line| {
                let envelope: Envelope = serde_json::from_str(line).unwrap();
                parse_diff(rule, envelope.data.get()).unwrap()
            })
            .collect()
    }

    fn stream(name: &str) -> Vec<Diff> {
        diffs_of(Rule::Spot, &fixture(name))
    }

    /// 157-160, 161-163, 164-165, 166.
    fn diffs() -> Vec<Diff> {
        stream("depth_stream.jsonl")
    }

    fn snapshot(name: &str) -> Snapshot {
        parse_snapshot(fixture(name).as_bytes()).unwrap()
    }

    /// Feeds `diffs` to a pair waiting for its first snapshot: only the first asks
    /// for one (the fetch is then on its way), and nothing is published.
    fn buffered(pair: &mut Pair, diffs: &[Diff]) -> Batch {
        let mut out = Batch::default();
        for (i, diff) in diffs.iter().enumerate() {
            let want = (i == 0).then_some(Fetch::Now);
            assert_eq!(pair.on_diff(diff.clone(), 5, &mut out), want, "diff {i}");
        }
        assert!(
            out.events.is_empty(),
            "nothing published before the snapshot"
        );
        out
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
            Sync::Live { at, .. } => Some(at.id),
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
        let diffs = diffs();
        let mut out = buffered(&mut pair, &diffs[..3]);
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
            Rule::Spot,
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
        let mut binance = Binance::new(&BINANCE, "binance", &link, &config).unwrap();
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

    /// The ticks of `out`, as "price bid ask size" (it must hold nothing else).
    fn ticks(out: &Batch) -> Vec<String> {
        let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        out.events
            .iter()
            .map(|e| match e {
                FeedEvent::Tick(t) => format!(
                    "{} {} {} {}",
                    t.price,
                    show(t.bid.map(|b| b.to_string())),
                    show(t.ask.map(|a| a.to_string())),
                    show(t.size.map(|s| s.to_string()))
                ),
                other => panic!("{other:?}"),
            })
            .collect()
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
        let mut binance = Binance::new(&BINANCE, "binance", &link, &config).unwrap();
        let mut out = Batch::default();
        for line in fixture("ticks.jsonl").lines() {
            binance.on_text(line, &mut out).unwrap();
        }
        assert_eq!(
            ticks(&out),
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

    // ------------------------------------------------------------ Aster (futures rule)

    fn aster_pair() -> Pair {
        pair_of("aster", "BTC-USDT", Rule::Futures)
    }

    /// 990-995 (pu 980), 996-1003 (pu 995), 1010-1012 (pu 1003), 1020-1025
    /// (pu 1012), 1030-1031 (pu 1025): a chain, though no `U` is the last `u + 1`.
    fn aster_diffs() -> Vec<Diff> {
        diffs_of(Rule::Futures, &venue_fixture("aster", "depth_stream.jsonl"))
    }

    /// `depth_snapshot_1000.json` or `depth_snapshot_1012.json`.
    fn aster_snapshot(id: u64) -> Snapshot {
        let text = venue_fixture("aster", &format!("depth_snapshot_{id}.json"));
        parse_snapshot(text.as_bytes()).unwrap()
    }

    /// In sync at 1003 (snapshot 1000, then 996-1003).
    fn live_aster_pair() -> Pair {
        let mut pair = aster_pair();
        let mut out = Batch::default();
        pair.on_diff(aster_diffs()[1].clone(), 5, &mut out);
        pair.on_snapshot(aster_snapshot(1000), 5, &mut out);
        assert_eq!(seqs(&out), [1000, 1003]);
        pair
    }

    fn aster() -> Binance {
        let link = LinkConfig::default().validate("aster").unwrap();
        let config = BinanceConfig {
            symbols: vec!["BTCUSDT".into()],
            ..BinanceConfig::default()
        };
        Binance::new(&ASTER, "aster", &link, &config).unwrap()
    }

    fn diff(first_id: u64, last_id: u64, prev_id: Option<u64>) -> Diff {
        Diff {
            first_id,
            last_id,
            prev_id,
            bids: vec![],
            asks: vec![],
        }
    }

    #[test]
    fn the_two_rules_step_by_their_own_ids() {
        let snap = |id| At { id, snapshot: true };
        let after = |id| At {
            id,
            snapshot: false,
        };
        let cases = [
            // Spot: ids are contiguous.
            (Rule::Spot, snap(160), diff(157, 160, None), Step::Old),
            (Rule::Spot, snap(160), diff(161, 163, None), Step::Apply),
            (Rule::Spot, snap(160), diff(159, 163, None), Step::Apply),
            (Rule::Spot, after(163), diff(165, 166, None), Step::Gap),
            (Rule::Spot, after(u64::MAX), diff(1, 5, None), Step::Old),
            (
                Rule::Spot,
                after(u64::MAX - 1),
                diff(u64::MAX, u64::MAX, None),
                Step::Apply,
            ),
            // Futures after the snapshot: u < lastUpdateId old, then straddle (u ==
            // lastUpdateId counts) or start right after it.
            (
                Rule::Futures,
                snap(1000),
                diff(990, 999, Some(980)),
                Step::Old,
            ),
            (
                Rule::Futures,
                snap(1000),
                diff(990, 1000, Some(980)),
                Step::Apply,
            ),
            (
                Rule::Futures,
                snap(1000),
                diff(996, 1003, Some(995)),
                Step::Apply,
            ),
            (
                Rule::Futures,
                snap(1000),
                diff(1005, 1008, Some(1000)),
                Step::Apply,
            ),
            (
                Rule::Futures,
                snap(1000),
                diff(1005, 1008, Some(1002)),
                Step::Gap,
            ),
            // Futures after a diff: u <= last old (stale, repeated), pu == last applies.
            (
                Rule::Futures,
                after(1003),
                diff(996, 1003, Some(995)),
                Step::Old,
            ),
            (
                Rule::Futures,
                after(1003),
                diff(990, 995, Some(980)),
                Step::Old,
            ),
            (
                Rule::Futures,
                after(1003),
                diff(1010, 1012, Some(1003)),
                Step::Apply,
            ),
            (
                Rule::Futures,
                after(1003),
                diff(1020, 1025, Some(1012)),
                Step::Gap,
            ),
            // Overlapping the book without chaining to it: futures never do that.
            (
                Rule::Futures,
                after(1003),
                diff(1001, 1005, Some(1000)),
                Step::Gap,
            ),
            (
                Rule::Futures,
                after(u64::MAX),
                diff(1, u64::MAX, Some(0)),
                Step::Old,
            ),
        ];
        for (rule, at, diff, want) in cases {
            assert_eq!(step(rule, at, &diff), want, "{rule:?} at {at:?}: {diff:?}");
        }
    }

    #[test]
    fn futures_diffs_chain_by_pu_from_the_one_straddling_the_snapshot() {
        let mut pair = aster_pair();
        let diffs = aster_diffs();
        let mut out = buffered(&mut pair, &diffs[..3]);
        assert_eq!(pair.on_snapshot(aster_snapshot(1000), 5, &mut out), None);
        // 990-995 is older than the snapshot; 996-1003 straddles it; 1010-1012 chains
        // by pu (under the spot rule 1010 after 1003 would be a gap).
        assert_eq!(seqs(&out), [1000, 1003, 1012]);
        assert_eq!(
            step(
                Rule::Spot,
                At {
                    id: 1003,
                    snapshot: false
                },
                &diffs[2]
            ),
            Step::Gap
        );
        let published = books(&out);
        assert_eq!(top(published[0]), ("97000".into(), "97010".into()));
        assert_eq!(published[1].bids[0].1.to_string(), "1.5");
        assert_eq!(published[1].asks.len(), 1, "97020 was removed");
        assert_eq!(top(published[2]), ("97005".into(), "97010".into()));
        out.events.clear();
        for diff in &diffs[3..] {
            assert_eq!(pair.on_diff(diff.clone(), 5, &mut out), None);
        }
        assert_eq!(seqs(&out), [1025, 1031]);
        assert_eq!(top(books(&out)[1]), ("97001".into(), "97008".into()));
        assert_eq!((out.gaps, out.duplicates), (0, 0));
    }

    #[test]
    fn a_futures_pu_mismatch_is_a_gap_and_the_new_snapshot_takes_the_buffered_diffs() {
        let mut pair = live_aster_pair();
        let mut out = Batch::default();
        let diffs = aster_diffs();
        // 1010-1012 is lost: 1020-1025 says it follows 1012, the book is at 1003.
        assert_eq!(
            pair.on_diff(diffs[3].clone(), 5, &mut out),
            Some(Fetch::Now)
        );
        assert_eq!(out.gaps, 1);
        assert!(out.events.is_empty());
        assert_eq!(live_at(&pair), None);
        // 1030-1031 arrives while the snapshot (1012) is on its way.
        assert_eq!(
            pair.on_diff(diffs[4].clone(), 5, &mut out),
            None,
            "buffered"
        );
        assert_eq!(pair.on_snapshot(aster_snapshot(1012), 5, &mut out), None);
        // 1020-1025 starts right after the snapshot (pu == lastUpdateId).
        assert_eq!(seqs(&out), [1012, 1025, 1031]);
        let published = books(&out);
        assert_eq!(top(published[0]), ("97005".into(), "97010".into()));
        assert_eq!(top(published[1]), ("97000".into(), "97008".into()));
        assert_eq!(
            published[1].asks[2].0.to_string(),
            "97030",
            "the new snapshot's level"
        );
        assert_eq!((out.gaps, live_at(&pair)), (1, Some(1031)));
    }

    #[test]
    fn futures_stale_and_repeated_diffs_are_ignored_not_gaps() {
        let mut pair = live_aster_pair();
        let mut out = Batch::default();
        let diffs = aster_diffs();
        assert_eq!(pair.on_diff(diffs[2].clone(), 5, &mut out), None);
        // 1010-1012 again, 996-1003 and 990-995: all in the book already.
        for i in [2, 1, 0] {
            assert_eq!(
                pair.on_diff(diffs[i].clone(), 5, &mut out),
                None,
                "diff {i}"
            );
        }
        assert_eq!((out.gaps, out.duplicates, seqs(&out)), (0, 3, vec![1012]));
        assert_eq!(live_at(&pair), Some(1012));
        assert_eq!(pair.on_diff(diffs[3].clone(), 5, &mut out), None);
        assert_eq!((out.gaps, seqs(&out)), (0, vec![1012, 1025]));
    }

    #[test]
    fn a_futures_snapshot_older_than_the_first_buffered_diff_is_fetched_again() {
        let mut pair = aster_pair();
        let mut out = Batch::default();
        let diffs = aster_diffs();
        pair.on_diff(diffs[2].clone(), 5, &mut out); // 1010-1012, pu 1003
        assert_eq!(
            pair.on_snapshot(aster_snapshot(1000), 5, &mut out),
            Some(Fetch::Later)
        );
        assert!(out.events.is_empty());
        assert_eq!(out.gaps, 0);
        assert!(matches!(pair.sync, Sync::Waiting { fetching: true, .. }));
        // A snapshot at 1003 is where 1010-1012 starts (pu): it follows.
        let mut at_1003 = aster_snapshot(1000);
        at_1003.last_update_id = 1003;
        assert_eq!(pair.on_snapshot(at_1003, 5, &mut out), None);
        assert_eq!(seqs(&out), [1003, 1012]);
    }

    #[test]
    fn a_futures_gap_in_the_buffered_diffs_keeps_them_for_the_next_snapshot() {
        // 996-1003 was lost before the snapshot (1000) came: 1010-1012 cannot follow it.
        let mut pair = aster_pair();
        let mut out = Batch::default();
        let diffs = aster_diffs();
        for i in [0, 2, 3] {
            pair.on_diff(diffs[i].clone(), 5, &mut out);
        }
        assert_eq!(
            pair.on_snapshot(aster_snapshot(1000), 5, &mut out),
            Some(Fetch::Now)
        );
        assert_eq!(out.gaps, 1);
        assert!(
            out.events.is_empty(),
            "a replay that hit a gap publishes nothing"
        );
        let Sync::Waiting { buffer, .. } = &pair.sync else {
            panic!("still waiting")
        };
        let kept: Vec<u64> = buffer.iter().map(|d| d.last_id).collect();
        assert_eq!(kept, [1012, 1025]);
        // The snapshot at 1012: 1010-1012 straddles it (u == lastUpdateId), 1020-1025 chains.
        assert_eq!(pair.on_snapshot(aster_snapshot(1012), 5, &mut out), None);
        assert_eq!(seqs(&out), [1012, 1012, 1025]);
        assert_eq!(out.gaps, 1);
    }

    #[test]
    fn a_malformed_futures_frame_changes_nothing() {
        let mut aster = aster();
        *aster.pairs.get_mut("BTCUSDT").unwrap() = live_aster_pair();
        let mut out = Batch::default();
        for bad in [
            // no pu
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1010,"u":1012,"b":[],"a":[]}}"#,
            // pu as a string
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1010,"u":1012,"pu":"1003","b":[],"a":[]}}"#,
            // U > u
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1013,"u":1012,"pu":1003,"b":[],"a":[]}}"#,
            // a negative id
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":-1,"u":1012,"pu":1003,"b":[],"a":[]}}"#,
            // the second level's price is 0
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1010,"u":1012,"pu":1003,"b":[["97005","1"],["0","1"]],"a":[]}}"#,
            // a size as a JSON number
            r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1010,"u":1012,"pu":1003,"b":[],"a":[["97010",1]]}}"#,
            // Aster has no `trade` stream
            r#"{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT","p":"1","q":"1"}}"#,
            r#"{"stream":"btcusdt@depth@100ms","data":"#,
        ] {
            let result = aster.on_text(bad, &mut out);
            assert!(
                matches!(result, Err(Fault::Garbage(_))),
                "{bad}: {result:?}"
            );
        }
        assert!(out.events.is_empty());
        assert_eq!((out.gaps, out.duplicates), (0, 0));
        assert_eq!(live_at(&aster.pairs["BTCUSDT"]), Some(1003));
        // The genuine 1010-1012 still follows the book.
        let genuine = venue_fixture("aster", "depth_stream.jsonl");
        aster
            .on_text(genuine.lines().nth(2).unwrap(), &mut out)
            .unwrap();
        assert_eq!(seqs(&out), [1012]);
    }

    #[test]
    fn aster_agg_trades_and_book_tickers_become_ticks() {
        let mut aster = aster();
        let mut out = Batch::default();
        for line in venue_fixture("aster", "ticks.jsonl").lines() {
            aster.on_text(line, &mut out).unwrap();
        }
        assert_eq!(
            ticks(&out),
            [
                "97000.2 97000.1 97000.3 -",
                "97000.25 97000.1 97000.3 0.015"
            ]
        );
        let request = aster.request().unwrap();
        assert_eq!(
            request.uri().to_string(),
            "wss://fstream.asterdex.com/stream?streams=btcusdt@aggTrade/btcusdt@bookTicker/btcusdt@depth@100ms"
        );
        assert_eq!(aster.rest_url, "https://fapi.asterdex.com");
        assert_eq!(aster.flavour.depth_path, "/fapi/v1/depth");
    }

    #[test]
    fn each_flavour_checks_its_own_limits() {
        let link = LinkConfig::default().validate("aster").unwrap();
        let new = |flavour, name, config: &BinanceConfig| {
            Binance::new(flavour, name, &link, config).map(|_| ())
        };
        let odd = BinanceConfig {
            snapshot_limit: 300,
            ..BinanceConfig::default()
        };
        assert!(new(&BINANCE, "binance", &odd).is_ok());
        let err = new(&ASTER, "aster", &odd).unwrap_err().to_string();
        assert_eq!(
            err,
            "[market_data.aster] snapshot_limit = 300: must be one of 5, 10, 20, 50, 100, 500, 1000"
        );
        let many = BinanceConfig {
            symbols: (0..67).map(|i| format!("C{i}USDT")).collect(),
            ..BinanceConfig::default()
        };
        assert!(new(&BINANCE, "binance", &many).is_ok());
        let shallow = BinanceConfig {
            snapshot_limit: 5,
            ..BinanceConfig::default()
        };
        let err = new(&ASTER, "aster", &shallow).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "[market_data.aster] snapshot_limit = 5 is below book_depth = {}: the book would be \
                 published without the levels the snapshot does not hold",
                link.book_depth
            )
        );
        let err = new(&ASTER, "aster", &many).unwrap_err().to_string();
        assert_eq!(
            err,
            "[market_data.aster] symbols: 67 listed, at most 66 per connection"
        );
        let err = new(
            &ASTER,
            "aster",
            &BinanceConfig {
                ws_url: "https://fstream.asterdex.com".into(),
                ..BinanceConfig::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("[market_data.aster] ws_url = "), "{err}");
    }

    #[test]
    fn the_snapshot_budget_and_the_ping_are_checked_against_the_venue() {
        let link = LinkConfig::default().validate("binance").unwrap();
        let new = |flavour, name, config: &BinanceConfig| {
            Binance::new(flavour, name, &link, config).map(|b| (b.snapshot_weight, b.ping_interval))
        };
        // The documented weights: spot 1000 levels 50, 5000 levels 250; Aster 1000 levels 20.
        let (weight, ping) = new(&BINANCE, "binance", &BinanceConfig::default()).unwrap();
        assert_eq!((weight, ping), (50, Duration::from_secs(30)));
        let deep = BinanceConfig {
            snapshot_limit: 5000,
            ..BinanceConfig::default()
        };
        assert_eq!(new(&BINANCE, "binance", &deep).unwrap().0, 250);
        assert_eq!(
            new(&ASTER, "aster", &BinanceConfig::default()).unwrap().0,
            20
        );
        let over = BinanceConfig {
            snapshot_weight_per_minute: 2401,
            ..BinanceConfig::default()
        };
        assert!(new(&BINANCE, "binance", &over).is_ok());
        let err = new(&ASTER, "aster", &over).unwrap_err().to_string();
        assert_eq!(
            err,
            "[market_data.aster] snapshot_weight_per_minute = 2401: must be from 100 (five \
             snapshots of snapshot_limit = 1000, weight 20 each) to the venue's limit of 2400 \
             (0 = half of it)"
        );
        let tight = BinanceConfig {
            snapshot_weight_per_minute: 249,
            ..BinanceConfig::default()
        };
        assert!(new(&BINANCE, "binance", &tight).is_err());
        let silent = BinanceConfig {
            ping_interval_ms: 60_000,
            ..BinanceConfig::default()
        };
        let err = new(&BINANCE, "binance", &silent).unwrap_err().to_string();
        assert_eq!(
            err,
            "[market_data.binance] ping_interval_ms = 60000: must be from 1 to below \
             dead_after_ms (60000), so that the pong keeps a quiet connection alive"
        );
    }

    #[test]
    fn the_budget_spends_a_fifth_at_once_then_paces_so_no_minute_spends_more() {
        let start = Instant::now();
        let mut budget = WeightBudget::new(3000, start);
        // A fifth (600) at once: twelve snapshots of 50.
        for _ in 0..12 {
            assert_eq!(budget.take(50, start), Ok(()));
        }
        // Then 2,400 a minute: 50 every 1.25 s.
        let wait = budget.take(50, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1250));
        assert_eq!(budget.take(50, start + wait), Ok(()));
        assert!(budget.take(50, start + wait).is_err());
        // Over any 60 s, whatever the asking: at most the budget.
        let mut budget = WeightBudget::new(3000, start);
        let mut spent = Vec::new();
        let mut now = start;
        while now < start + Duration::from_secs(300) {
            match budget.take(50, now) {
                Ok(()) => spent.push(now),
                Err(wait) => now += wait,
            }
        }
        for (i, at) in spent.iter().enumerate() {
            let in_minute = spent[i..]
                .iter()
                .take_while(|t| **t < *at + Duration::from_secs(60))
                .count();
            assert!(
                in_minute * 50 <= 3000,
                "{in_minute} snapshots within 60 s of {at:?}"
            );
        }
        // Idle, it fills again, but never beyond the burst.
        let later = now + Duration::from_secs(600);
        for _ in 0..12 {
            assert_eq!(budget.take(50, later), Ok(()));
        }
        assert!(budget.take(50, later).is_err());
    }

    #[test]
    fn a_pause_stops_every_fetch_until_its_end() {
        let start = Instant::now();
        let mut budget = WeightBudget::new(3000, start);
        budget.pause(start + Duration::from_secs(120));
        budget.pause(start + Duration::from_secs(30)); // an earlier end does not shorten it
        assert_eq!(budget.take(5, start), Err(Duration::from_secs(120)));
        assert_eq!(
            budget.take(5, start + Duration::from_secs(100)),
            Err(Duration::from_secs(20))
        );
        assert_eq!(budget.take(5, start + Duration::from_secs(120)), Ok(()));
    }

    // ------------------------------------------------------------ both rules, at random

    /// A change of the exchange's book: update id, side, price, size (0 removes).
    type Update = (u64, Side, Decimal, Decimal);

    /// The exchange's book at update id `upto`, as a snapshot: every change up to it,
    /// in order (`LocalBook::from_levels` applies them one after the other).
    fn snapshot_at(updates: &[Update], upto: u64) -> Snapshot {
        let side = |want: Side| {
            updates
                .iter()
                .filter(|&&(id, side, ..)| id <= upto && side == want)
                .map(|&(_, _, price, size)| (price, size))
                .collect()
        };
        Snapshot {
            last_update_id: upto,
            bids: side(Side::Bid),
            asks: side(Side::Ask),
        }
    }

    const MODEL_DEPTH: usize = 20;

    /// The venue's diffs, `U..=u` each: spot ids are contiguous; futures ids step by
    /// 1..=4 (other symbols' updates between) and each diff carries `pu`.
    fn model_diffs(
        rule: Rule,
        changes: &[(u64, bool, u32, u32)],
        groups: &[usize],
    ) -> (Vec<Update>, Vec<Diff>) {
        let mut id = 100;
        let updates: Vec<Update> = changes
            .iter()
            .map(|&(step, bid, price, size)| {
                id += if rule == Rule::Spot { 1 } else { step };
                let (side, price) = if bid {
                    (Side::Bid, price)
                } else {
                    (Side::Ask, price + 10)
                };
                (id, side, Decimal::from(price), Decimal::from(size))
            })
            .collect();
        let mut diffs: Vec<Diff> = Vec::new();
        let mut rest = &updates[..];
        for &size in groups.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (group, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            let levels = |want: Side| {
                group
                    .iter()
                    .filter(|u| u.1 == want)
                    .map(|&(_, _, price, size)| (price, size))
                    .collect()
            };
            let prev = diffs.last().map_or(group[0].0 - 1, |d| d.last_id);
            diffs.push(Diff {
                first_id: group[0].0,
                last_id: group[group.len() - 1].0,
                prev_id: (rule == Rule::Futures).then_some(prev),
                bids: levels(Side::Bid),
                asks: levels(Side::Ask),
            });
        }
        (updates, diffs)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Diffs dropped, repeated late and delivered out of order, snapshots taken at
        /// any update id (also inside a diff, also older than the buffer): every book
        /// published is the exchange's book at its seq, a gap is only ever counted
        /// when a diff was lost, and a last snapshot brings the book in sync.
        #[test]
        fn every_published_book_is_the_exchange_book_at_its_seq(
            futures in proptest::prelude::any::<bool>(),
            changes in proptest::collection::vec((1u64..=4, proptest::prelude::any::<bool>(), 1u32..=8, 0u32..=3), 1..60),
            groups in proptest::collection::vec(1usize..=3, 1..8),
            actions in proptest::collection::vec((0u8..6, 0u8..5, proptest::prelude::any::<bool>(), 0usize..3), 1..20),
        ) {
            let rule = if futures { Rule::Futures } else { Rule::Spot };
            let (updates, diffs) = model_diffs(rule, &changes, &groups);
            let mut pair = pair_of("aster", "BTC-USDT", rule);
            let mut out = Batch::default();
            let mut pending = false;
            let mut lost = false;
            let mut produced = 0;
            for (i, diff) in diffs.iter().enumerate() {
                let (drop, late, answer, back) = actions[i % actions.len()];
                produced += diff.bids.len() + diff.asks.len();
                if drop == 0 && i + 1 < diffs.len() {
                    lost = true;
                } else {
                    pending |= pair.on_diff(diff.clone(), MODEL_DEPTH, &mut out).is_some();
                }
                if late == 0 && i > 0 {
                    let earlier = diffs[i.saturating_sub(1 + back)].clone();
                    pending |= pair.on_diff(earlier, MODEL_DEPTH, &mut out).is_some();
                }
                if pending && answer {
                    let at = updates[produced.saturating_sub(1 + back)].0;
                    pending = pair.on_snapshot(snapshot_at(&updates, at), MODEL_DEPTH, &mut out).is_some();
                }
            }
            let end = updates[updates.len() - 1].0;
            if pending {
                let again = pair.on_snapshot(snapshot_at(&updates, end), MODEL_DEPTH, &mut out);
                proptest::prop_assert_eq!(again, None);
            }
            proptest::prop_assert_eq!(live_at(&pair), Some(end));
            let published = books(&out);
            proptest::prop_assert!(!published.is_empty());
            for book in published {
                let truth = LocalBook::from_levels(&snapshot_at(&updates, book.seq).bids, &snapshot_at(&updates, book.seq).asks);
                let FeedEvent::Book(want) = pair.instrument.clone().book(&truth, MODEL_DEPTH, Some(book.seq)) else {
                    unreachable!()
                };
                proptest::prop_assert_eq!((&book.bids, &book.asks), (&want.bids, &want.asks), "seq {}", book.seq);
            }
            if !lost {
                proptest::prop_assert_eq!(out.gaps, 0);
            }
        }
    }
}
