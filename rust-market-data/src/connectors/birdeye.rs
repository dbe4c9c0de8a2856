//! Birdeye, Solana token prices in USD, with an API key from the environment
//! (`api_key_env`, never from the file, never logged). Two modes:
//!
//! - `poll`: `GET /defi/multi_price?list_address=a,b,...` (100 addresses a request)
//!   every `poll_interval_ms`, headers `X-API-KEY` and `x-chain`; a token whose
//!   `value` or `updateUnixTime` changed -> a tick. A failed poll -> status
//!   `reconnecting` and the backoff; the next good one -> `connected`.
//! - `ws`: `wss://public-api.birdeye.so/socket/solana?x-api-key=...` with the
//!   `echo-protocol` subprotocol, `SUBSCRIBE_PRICE` (a `simple` query for one
//!   token, a `complex` one for several); each `PRICE_DATA` -> a tick at its close
//!   `c`. A WebSocket ping every `ping_interval_ms` keeps the connection open.
//!
//! Birdeye's prices are JSON numbers: they are read from their text into Decimal
//! (see wire.rs). Tokens are mint addresses; each maps to a canonical symbol by
//! `symbol_map` or the few well-known mints below.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use moonbus_common::{FeedState, Venue};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::book::{Instrument, Trade};
use super::link::{check_url, Backoff, Link, HTTP, WS};
use super::session::{http_body, run_ws, Batch, Fault, FeedOut, Liveness, Silence, WsVenue};
use super::symbols::{self, Naming};
use super::wire::json_number;
use crate::feed::FeedSink;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BirdeyeMode {
    #[default]
    Poll,
    Ws,
}

/// `[market_data.birdeye]`, besides the link keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BirdeyeConfig {
    pub mode: BirdeyeMode,
    pub rest_url: String,
    pub ws_url: String,
    /// `x-chain` of the REST requests.
    pub chain: String,
    /// The environment variable that holds the API key.
    pub api_key_env: String,
    /// Token mint addresses.
    pub symbols: Vec<String>,
    /// Mint address -> canonical symbol.
    pub symbol_map: BTreeMap<String, String>,
    pub poll_interval_ms: u64,
    /// `chartType` of the price subscription (`1m`, `1s`, ...).
    pub chart_type: String,
    pub ping_interval_ms: u64,
}

impl Default for BirdeyeConfig {
    fn default() -> Self {
        Self {
            mode: BirdeyeMode::Poll,
            rest_url: "https://public-api.birdeye.so".into(),
            ws_url: "wss://public-api.birdeye.so/socket/solana".into(),
            chain: "solana".into(),
            api_key_env: "BIRDEYE_API_KEY".into(),
            symbols: vec![SOL_MINT.into()],
            symbol_map: BTreeMap::new(),
            poll_interval_ms: 1000,
            chart_type: "1m".into(),
            ping_interval_ms: 30_000,
        }
    }
}

const SOL_MINT: &str = "So11111111111111111111111111111111111111112";

/// Well-known mints; Birdeye prices are in USD.
const KNOWN_MINTS: [(&str, &str); 6] = [
    (SOL_MINT, "SOL-USD"),
    ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v", "USDC-USD"),
    ("Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB", "USDT-USD"),
    ("mSoLzYCxHdYgdzU16g5QSh3i5K3z3KZK7ytfqcJm7So", "MSOL-USD"),
    ("DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263", "BONK-USD"),
    ("JUPyiwrYJFskUPiHa7hkeR8VUtAeFoSYbKedZNsDvCN", "JUP-USD"),
];

const NAMING: Naming = Naming {
    venue: "birdeye",
    pattern: "a base58 mint address, 32 to 44 characters",
    valid: |address| {
        (32..=44).contains(&address.len())
            && address
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() && !b"0OIl".contains(&b))
    },
};

/// Birdeye's limit of addresses per `multi_price` request and per socket.
const MAX_ADDRESSES: usize = 100;
const CHART_TYPES: [&str; 18] = [
    "1s", "15s", "30s", "1m", "3m", "5m", "15m", "30m", "1H", "2H", "4H", "6H", "8H", "12H", "1D",
    "3D", "1W", "1M",
];
/// The socket's handshake, as Birdeye documents it.
const ORIGIN: &str = "ws://public-api.birdeye.so";
const SUBPROTOCOL: &str = "echo-protocol";

/// The API key; shown nowhere (Debug and Display are redacted).
#[derive(Clone)]
pub(super) struct ApiKey(pub(super) String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

pub(super) fn start(name: &str, link: Link, config: &BirdeyeConfig, sink: FeedSink) -> Result<()> {
    let env = &config.api_key_env;
    let key = std::env::var(env)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .with_context(|| {
            format!("[market_data.birdeye] needs an API key in the environment variable {env}")
        })?;
    let birdeye = Birdeye::new(name, config, ApiKey(key))?;
    let out = FeedOut::new(birdeye.venue.clone(), sink, birdeye.tokens.len());
    match config.mode {
        BirdeyeMode::Poll => {
            let http = reqwest::Client::builder()
                .timeout(link.connect_timeout)
                .build()?;
            tokio::spawn(run_poll(birdeye, http, link, out));
        }
        BirdeyeMode::Ws => {
            tokio::spawn(run_ws(birdeye, link, out));
        }
    }
    Ok(())
}

pub(super) struct Birdeye {
    venue: Venue,
    key: ApiKey,
    rest_url: String,
    ws_url: String,
    chain: String,
    poll_interval: Duration,
    chart_type: String,
    ping_interval: Duration,
    /// Addresses in config order (request order).
    addresses: Vec<String>,
    tokens: HashMap<String, Token>,
}

struct Token {
    instrument: Instrument,
    /// The last (value, updateUnixTime) polled.
    last: Option<(rust_decimal::Decimal, u64)>,
}

impl Birdeye {
    pub(super) fn new(name: &str, config: &BirdeyeConfig, key: ApiKey) -> Result<Self> {
        let mapped = symbols::map(&NAMING, &config.symbols, &config.symbol_map, |address| {
            KNOWN_MINTS
                .iter()
                .find(|(mint, _)| *mint == address)
                .map(|(_, s)| s.to_string())
        })?;
        if mapped.len() > MAX_ADDRESSES && config.mode == BirdeyeMode::Ws {
            bail!("[market_data.birdeye] symbols: at most {MAX_ADDRESSES} tokens per socket");
        }
        check_url("birdeye", "rest_url", &config.rest_url, HTTP)?;
        check_url("birdeye", "ws_url", &config.ws_url, WS)?;
        if !CHART_TYPES.contains(&config.chart_type.as_str()) {
            bail!(
                "[market_data.birdeye] chart_type = {:?}: one of {}",
                config.chart_type,
                CHART_TYPES.join(", ")
            );
        }
        if !config
            .chain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            || config.chain.is_empty()
        {
            bail!(
                "[market_data.birdeye] chain = {:?}: a chain name such as \"solana\"",
                config.chain
            );
        }
        for (key_name, value) in [
            ("poll_interval_ms", config.poll_interval_ms),
            ("ping_interval_ms", config.ping_interval_ms),
        ] {
            if value == 0 {
                bail!("[market_data.birdeye] {key_name} = 0: must be at least 1");
            }
        }
        let venue: Venue = name.parse()?;
        Ok(Self {
            key,
            rest_url: config.rest_url.trim_end_matches('/').to_string(),
            ws_url: config.ws_url.clone(),
            chain: config.chain.clone(),
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            chart_type: config.chart_type.clone(),
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            addresses: mapped.iter().map(|(a, _)| a.clone()).collect(),
            tokens: mapped
                .into_iter()
                .map(|(address, symbol)| {
                    let token = Token {
                        instrument: Instrument::new(venue.clone(), symbol),
                        last: None,
                    };
                    (address, token)
                })
                .collect(),
            venue,
        })
    }

    /// One `multi_price` round: every token, 100 addresses a request. Every answer
    /// of the round is decoded and checked before any token is updated: a failed
    /// round (no answer, an error, not Birdeye's format) changes nothing, so the
    /// next one sends every tick it would have. A token whose own price is refused
    /// (not positive, more digits than a decimal holds) is left out of the round
    /// and named in the answer's refusals: one odd token must not freeze the rest.
    async fn poll(
        &mut self,
        http: &reqwest::Client,
        out: &mut Batch,
    ) -> Result<Vec<Refused>, PollError> {
        let url = format!("{}/defi/multi_price", self.rest_url);
        let mut polled = Vec::new();
        let mut refused = Vec::new();
        for chunk in self.addresses.clone().chunks(MAX_ADDRESSES) {
            let request = http
                .get(&url)
                .query(&[("list_address", chunk.join(","))])
                .header("X-API-KEY", &self.key.0)
                .header("x-chain", &self.chain)
                .header("accept", "application/json");
            let body = http_body(request)
                .await
                .map_err(|e| PollError::Failed(format!("multi_price: {e}")))?;
            let malformed = |reason: String| PollError::Malformed {
                reason: format!("multi_price: {reason}"),
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let prices: MultiPrice =
                serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
            if !prices.success {
                return Err(PollError::Failed("multi_price: success = false".into()));
            }
            for (address, price) in &prices.data {
                let (true, Some(price)) = (self.tokens.contains_key(address.as_ref()), price)
                else {
                    continue; // not ours, or Birdeye has no price for it
                };
                let trade = json_number(price.value).and_then(|value| match value {
                    None => Ok(None),
                    Some(value) => Trade::new(value, None).map(|trade| Some((value, trade))),
                });
                match trade {
                    Ok(None) => {}
                    Ok(Some((value, trade))) => {
                        let seen = (value, price.update_unix_time.unwrap_or(0));
                        polled.push((address.to_string(), seen, trade));
                    }
                    Err(e) => refused.push(Refused {
                        reason: format!("multi_price: {address}: {e}"),
                        price: price.value.get().to_string(),
                    }),
                }
            }
        }
        for (address, seen, trade) in polled {
            let Some(token) = self.tokens.get_mut(&address) else {
                continue;
            };
            if token.last == Some(seen) {
                continue;
            }
            token.last = Some(seen);
            out.events.push(token.instrument.trade(trade));
        }
        Ok(refused)
    }
}

/// A token's price left out of a poll round, and why.
struct Refused {
    reason: String,
    /// The price as Birdeye wrote it.
    price: String,
}

/// Why a poll round failed.
enum PollError {
    /// No answer, or an answer that is an error (HTTP status, `success = false`).
    Failed(String),
    /// An answer that is not Birdeye's format: also reported on `errors.market-data`.
    Malformed { reason: String, body: String },
}

/// The REST mode: poll, report, back off on failure, until the engine is gone.
async fn run_poll(mut birdeye: Birdeye, http: reqwest::Client, link: Link, mut out: FeedOut) {
    let mut backoff = Backoff::new(&link);
    // A poller's frames are its polls; a dead connection shows as failed polls.
    let mut liveness = Liveness::new(&Link {
        dead_after: Duration::from_secs(100 * 365 * 24 * 3600),
        ..link.clone()
    });
    let mut status_timer = interval_at(Instant::now() + link.status_interval, link.status_interval);
    status_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    let mut batch = Batch::default();
    if out
        .status(FeedState::Reconnecting, "first poll".into())
        .await
        .is_err()
    {
        return;
    }
    loop {
        let sent = tokio::select! {
            () = out.closed() => return,
            () = sleep_until(next_poll) => {
                let polled = tokio::select! {
                    () = out.closed() => return,
                    polled = birdeye.poll(&http, &mut batch) => polled,
                };
                match polled {
                    Ok(refused) => {
                        for token in refused {
                            out.garbage(&token.reason, &token.price);
                        }
                        next_poll = Instant::now() + birdeye.poll_interval;
                        backoff.reset();
                        let fresh = !batch.events.is_empty() && liveness.data();
                        let reported = if out.state() == FeedState::Reconnecting || fresh {
                            out.status(FeedState::Connected, "polling".into()).await
                        } else {
                            Ok(())
                        };
                        match reported {
                            Ok(()) => out.send(&mut batch.events).await,
                            Err(closed) => Err(closed),
                        }
                    }
                    Err(failed) => {
                        let e = match failed {
                            PollError::Failed(e) => e,
                            PollError::Malformed { reason, body } => {
                                out.garbage(&reason, &body);
                                reason
                            }
                        };
                        batch.events.clear();
                        out.count_reconnect();
                        let delay = backoff.next_delay();
                        next_poll = Instant::now() + delay;
                        tracing::warn!(venue = %out.venue(), error = e, "poll failed");
                        let detail = format!("{e}; next attempt in {} ms", delay.as_millis());
                        out.status(FeedState::Reconnecting, detail).await
                    }
                }
            }
            () = sleep_until(liveness.deadline()) => match liveness.check() {
                // While polls fail the status says so already.
                Silence::WentStale if out.state() == FeedState::Connected => {
                    out.status(FeedState::Stale, liveness.stale_detail()).await
                }
                Silence::WentStale | Silence::Fine | Silence::Dead => Ok(()),
            },
            _ = status_timer.tick() => out.heartbeat().await,
        };
        if sent.is_err() {
            return;
        }
    }
}

impl WsVenue for Birdeye {
    type Done = std::convert::Infallible;

    fn request(&self) -> Result<Request, String> {
        let url = format!("{}?x-api-key={}", self.ws_url, percent_encode(&self.key.0));
        // Never show the URL: it carries the key.
        let mut request = url
            .into_client_request()
            .map_err(|_| "bad ws_url or API key".to_string())?;
        let headers = request.headers_mut();
        headers.insert("Origin", HeaderValue::from_static(ORIGIN));
        headers.insert("Sec-WebSocket-Origin", HeaderValue::from_static(ORIGIN));
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(request)
    }

    fn on_open(&mut self, out: &mut Batch) {
        let chart = &self.chart_type;
        let data = match self.addresses.as_slice() {
            [address] => {
                json!({"queryType": "simple", "chartType": chart, "address": address, "currency": "usd"})
            }
            addresses => {
                let query: Vec<String> = addresses
                    .iter()
                    .map(|a| format!("(address = {a} AND chartType = {chart} AND currency = usd)"))
                    .collect();
                json!({"queryType": "complex", "query": query.join(" OR ")})
            }
        };
        out.frames
            .push(json!({"type": "SUBSCRIBE_PRICE", "data": data}).to_string());
    }

    fn on_text(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault> {
        let envelope: Envelope =
            serde_json::from_str(text).map_err(|e| Fault::Garbage(e.to_string()))?;
        match envelope.kind.as_ref() {
            "PRICE_DATA" => {
                let data = envelope
                    .data
                    .ok_or_else(|| Fault::Garbage("PRICE_DATA without data".into()))?;
                let price: PriceData =
                    serde_json::from_str(data.get()).map_err(|e| Fault::Garbage(e.to_string()))?;
                let Some(token) = self.tokens.get_mut(price.address.as_ref()) else {
                    return Ok(());
                };
                let close = json_number(price.c)
                    .map_err(Fault::Garbage)?
                    .ok_or_else(|| Fault::Garbage("PRICE_DATA without a close".into()))?;
                let trade = Trade::new(close, None).map_err(Fault::Garbage)?;
                out.events.push(token.instrument.trade(trade));
                Ok(())
            }
            "ERROR" => Err(Fault::Garbage(format!("Birdeye error: {text}"))),
            _ => Ok(()), // WELCOME, subscription acknowledgements, other events
        }
    }

    fn keepalive(&self) -> Option<(Duration, Message)> {
        Some((self.ping_interval, Message::Ping(Default::default())))
    }
}

/// A query-string value: unreserved characters as they are, the rest as %XX.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------- wire format

#[derive(Deserialize)]
struct MultiPrice<'a> {
    #[serde(default)]
    success: bool,
    #[serde(borrow, default)]
    data: HashMap<Cow<'a, str>, Option<PriceWire<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PriceWire<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(default)]
    update_unix_time: Option<u64>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PriceData<'a> {
    #[serde(borrow)]
    c: &'a RawValue,
    #[serde(borrow)]
    address: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_encoded_and_never_shown() {
        assert_eq!(percent_encode("ab12-_.~"), "ab12-_.~");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(
            format!("{:?}", ApiKey("secret".into())),
            "ApiKey(<redacted>)"
        );
    }

    #[test]
    fn mint_addresses_are_base58() {
        assert!((NAMING.valid)(SOL_MINT));
        assert!(!(NAMING.valid)(
            "So1111111111111111111111111111111111111111O"
        )); // O is not base58
        assert!(!(NAMING.valid)("short"));
        assert!(!(NAMING.valid)(
            "So11111111111111111111111111111111111111.12"
        ));
    }
}
