//! Binance spot, Binance USDⓈ-M futures and Aster perps: one REST + user-data-stream API
//! family (Aster's futures API v1 is Binance's USDⓈ-M API at other URLs), picked by `kind`:
//! `binance_spot`, `binance_futures`, `aster`.
//!
//! - SIGNED requests: every parameter in the query string, then `timestamp` (the venue's
//!   clock: ours plus the offset measured from `/time` at start and again after -1021) and
//!   `recvWindow`, then `signature` = hex HMAC-SHA256 of that query with the secret, or
//!   base64 Ed25519 signature of it (Binance Ed25519 API keys: PKCS#8 PEM private key).
//!   The API key goes in `X-MBX-APIKEY`.
//! - Orders carry `newClientOrderId` = our client order id when it fits Binance's
//!   `^[\.A-Z\:/a-z0-9_-]{1,36}$`, else `mb-` + 33 hex digits of its SHA-256 (deterministic,
//!   mapped back), so a retry can never double: a duplicate answer means the order is
//!   there, and it is queried.
//! - exchangeInfo filters (PRICE_FILTER, LOT_SIZE, MARKET_LOT_SIZE, MIN_NOTIONAL, NOTIONAL)
//!   are checked before sending; a failing order is `Rejected` and never sent.
//! - Request weight: `X-MBX-USED-WEIGHT-1M` is read from every answer and kept under the
//!   REQUEST_WEIGHT limit of exchangeInfo; a 429 / 418 stops all sending until its
//!   Retry-After has passed (submits meanwhile: `Rejected rate_limited`, never sent).
//! - Fills come from the user data stream (listenKey, kept alive every 30 min, renewed on
//!   `listenKeyExpired` or a lost connection, with `Health` events); REST queries are the
//!   fallback. A connection silent for `user_stream_idle_s` (no frame at all, not even the
//!   venue's ping: a half-open connection) counts as lost. A stream event that cannot be
//!   read is not applied and is told (`VenueEvent::Problem`: errors.execution, named by our
//!   order when the frame still says whose it is).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::Signer as _;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use moonbus_common::{OrderType, Side, Symbol, TimeInForce};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{
    AccountState, Due, Exchange, Mode, ReadDeadline, Submitted, VenueBalance, VenueError,
    VenueEvent, VenueOrder, VenuePosition, VenueStatus,
};
use crate::venue::Routed;

/// Spot or USDⓈ-M futures (Aster is the latter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Spot,
    Futures,
}

/// `[execution.live.<name>]` without the router's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Our symbol (BTC-USDT) -> the venue's (BTCUSDT).
    symbols: BTreeMap<String, String>,
    /// REST base URL; default by kind and mode.
    #[serde(default)]
    rest_url: Option<String>,
    /// WebSocket base URL (the stream is `<ws_url>/ws/<listenKey>`); default by kind and mode.
    #[serde(default)]
    ws_url: Option<String>,
    /// How the private stream is opened: `ws_api` (spot default: the WebSocket API's
    /// `userDataStream.subscribe.signature`; Binance ended spot listenKeys on 2026-02-20) or
    /// `listen_key` (futures and Aster default: POST listenKey, `<ws_url>/ws/<listenKey>`).
    #[serde(default)]
    user_stream: Option<String>,
    /// The WebSocket API URL (spot); default by mode, or `<ws_url>/ws-api/v3` when only
    /// `ws_url` is set.
    #[serde(default)]
    ws_api_url: Option<String>,
    /// `hmac` (API secret) or `ed25519` (PKCS#8 PEM private key).
    #[serde(default = "default_key_type")]
    key_type: String,
    /// The environment variable with the API key (default BINANCE_API_KEY / ASTER_API_KEY).
    #[serde(default)]
    api_key_env: Option<String>,
    /// The environment variable with the HMAC secret (default BINANCE_API_SECRET / ASTER_API_SECRET).
    #[serde(default)]
    api_secret_env: Option<String>,
    /// Ed25519: the environment variable with the PEM text (default BINANCE_PRIVATE_KEY),
    /// or the environment variable naming a PEM file (mode 0600; default BINANCE_PRIVATE_KEY_FILE).
    #[serde(default)]
    private_key_env: Option<String>,
    #[serde(default)]
    private_key_file_env: Option<String>,
    /// recvWindow of every SIGNED request, ms (Binance's default 5000; at most 60000).
    #[serde(default = "default_recv_window")]
    recv_window_ms: u64,
    /// Timeout of every HTTP call, ms.
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    /// Share of exchangeInfo's REQUEST_WEIGHT per minute we allow ourselves (0 < x <= 1).
    #[serde(default = "default_weight_share")]
    weight_share: f64,
    /// listenKey keepalive period, s.
    #[serde(default = "default_keepalive")]
    keepalive_secs: u64,
    /// The user data stream's read deadline, s: a connection silent this long (not a frame,
    /// not even the venue's ping) is dropped and reconnected, as if it had closed. Default
    /// by flavour: spot 60 (the venue pings every 20 s and drops us after a minute without
    /// our pong), futures and Aster 600 (Binance pings every 3 min and waits 10 min for the
    /// pong; Aster every 5 min). 1..=86400.
    #[serde(default)]
    user_stream_idle_s: Option<u64>,
    /// Futures account endpoint (Binance `/fapi/v2/account`, Aster `/fapi/v4/account`).
    #[serde(default)]
    account_path: Option<String>,
}

fn default_key_type() -> String {
    "hmac".into()
}
fn default_recv_window() -> u64 {
    5_000
}
fn default_timeout() -> u64 {
    5_000
}
fn default_weight_share() -> f64 {
    0.8
}
fn default_keepalive() -> u64 {
    1_800
}

/// How requests are signed. Debug never shows the key.
enum Signer {
    Hmac(Vec<u8>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signer::Hmac(_) => "Hmac(<redacted>)",
            Signer::Ed25519(_) => "Ed25519(<redacted>)",
        })
    }
}

impl Signer {
    /// The `signature` parameter of a SIGNED request (before URL encoding).
    fn sign(&self, payload: &str) -> String {
        match self {
            Signer::Hmac(secret) => hmac_sha256_hex(secret, payload),
            Signer::Ed25519(key) => ed25519_base64(key, payload),
        }
    }
}

/// Binance HMAC signature: lower-case hex of HMAC-SHA256(secret, payload).
pub fn hmac_sha256_hex(secret: &[u8], payload: &str) -> String {
    // HMAC accepts keys of any length: new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Binance Ed25519 signature: standard base64 of the 64-byte signature of the payload.
pub fn ed25519_base64(key: &ed25519_dalek::SigningKey, payload: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.sign(payload.as_bytes()).to_bytes())
}

/// Percent-encoding of a query value (RFC 3986 unreserved characters kept).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn query_string(params: &[(&str, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Binance's `newClientOrderId` rule: `^[\.A-Z\:/a-z0-9_-]{1,36}$`.
pub fn fits_binance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 36
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'/' | b'_' | b'-'))
}

/// Our client order id as the venue's `newClientOrderId`: itself when it fits, else a
/// deterministic `mb-` + 33 hex digits of its SHA-256 (36 characters).
pub fn venue_client_id(ours: &str) -> String {
    if fits_binance_id(ours) {
        ours.to_string()
    } else {
        let digest = hex::encode(Sha256::digest(ours.as_bytes()));
        format!("mb-{}", &digest[..33])
    }
}

/// One symbol's trading rules from exchangeInfo.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub base: String,
    pub quote: String,
    pub tick_size: Decimal,
    pub min_price: Decimal,
    pub max_price: Decimal,
    pub step_size: Decimal,
    pub min_qty: Decimal,
    pub max_qty: Decimal,
    /// MARKET_LOT_SIZE (zero where the filter is absent or says 0).
    pub market_step_size: Decimal,
    pub market_min_qty: Decimal,
    pub market_max_qty: Decimal,
    /// MIN_NOTIONAL / NOTIONAL minimum (zero: none).
    pub min_notional: Decimal,
    /// Whether the minimum applies to MARKET orders (spot applyToMarket / applyMinToMarket).
    pub min_notional_market: bool,
    /// NOTIONAL maximum (spot; zero: none).
    pub max_notional: Decimal,
    pub max_notional_market: bool,
}

fn dec(value: &Value, key: &str) -> Option<Decimal> {
    match value.get(key)? {
        Value::String(text) => Decimal::from_str(text.trim()).ok(),
        Value::Number(number) => Decimal::from_str(&number.to_string()).ok(),
        _ => None,
    }
}

fn dec_or_zero(value: &Value, key: &str) -> Decimal {
    dec(value, key).unwrap_or(Decimal::ZERO)
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str()
}

fn int(value: &Value, key: &str) -> Option<u64> {
    match value.get(key)? {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

impl Rules {
    /// The rules of one `symbols[]` entry of exchangeInfo.
    pub fn from_exchange_info(entry: &Value) -> Result<Rules, String> {
        let base = text(entry, "baseAsset").ok_or("no baseAsset")?.to_string();
        let quote = text(entry, "quoteAsset")
            .ok_or("no quoteAsset")?
            .to_string();
        let mut rules = Rules {
            base,
            quote,
            ..Rules::default()
        };
        let filters = entry
            .get("filters")
            .and_then(Value::as_array)
            .ok_or("no filters")?;
        for filter in filters {
            match text(filter, "filterType") {
                Some("PRICE_FILTER") => {
                    rules.tick_size = dec_or_zero(filter, "tickSize");
                    rules.min_price = dec_or_zero(filter, "minPrice");
                    rules.max_price = dec_or_zero(filter, "maxPrice");
                }
                Some("LOT_SIZE") => {
                    rules.step_size = dec_or_zero(filter, "stepSize");
                    rules.min_qty = dec_or_zero(filter, "minQty");
                    rules.max_qty = dec_or_zero(filter, "maxQty");
                }
                Some("MARKET_LOT_SIZE") => {
                    rules.market_step_size = dec_or_zero(filter, "stepSize");
                    rules.market_min_qty = dec_or_zero(filter, "minQty");
                    rules.market_max_qty = dec_or_zero(filter, "maxQty");
                }
                Some("MIN_NOTIONAL") => {
                    // Spot: minNotional + applyToMarket; futures: notional.
                    if let Some(min) = dec(filter, "minNotional") {
                        rules.min_notional = min;
                        rules.min_notional_market = filter
                            .get("applyToMarket")
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                    } else if let Some(min) = dec(filter, "notional") {
                        rules.min_notional = min;
                        rules.min_notional_market = true;
                    }
                }
                Some("NOTIONAL") => {
                    rules.min_notional = dec_or_zero(filter, "minNotional");
                    rules.min_notional_market = filter
                        .get("applyMinToMarket")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    rules.max_notional = dec_or_zero(filter, "maxNotional");
                    rules.max_notional_market = filter
                        .get("applyMaxToMarket")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                }
                _ => {}
            }
        }
        Ok(rules)
    }

    /// Whether an order passes the filters; `Err(reason)` says which and why. `ref_price`
    /// prices a MARKET order's notional (the decision price), if known.
    pub fn check(
        &self,
        order_type: OrderType,
        quantity: Decimal,
        limit_price: Option<Decimal>,
        ref_price: Option<Decimal>,
    ) -> Result<(), String> {
        let market = order_type == OrderType::Market;
        if let Some(price) = limit_price {
            if self.min_price > Decimal::ZERO && price < self.min_price {
                return Err(format!(
                    "price_filter: price {price} below minPrice {}",
                    self.min_price
                ));
            }
            if self.max_price > Decimal::ZERO && price > self.max_price {
                return Err(format!(
                    "price_filter: price {price} above maxPrice {}",
                    self.max_price
                ));
            }
            if self.tick_size > Decimal::ZERO {
                // Checked: minPrice is the venue's word, and one far below zero would put
                // the difference past Decimal's range (a panic); the order is refused.
                let rem = price
                    .checked_sub(self.min_price)
                    .and_then(|offset| offset.checked_rem(self.tick_size));
                if rem != Some(Decimal::ZERO) {
                    return Err(format!(
                        "tick_size: price {price} is not a multiple of tickSize {}",
                        self.tick_size
                    ));
                }
            }
        }
        // MARKET orders: MARKET_LOT_SIZE where it states a bound (0 = none), else LOT_SIZE.
        let pick = |market_value: Decimal, value: Decimal| {
            if market && market_value > Decimal::ZERO {
                (market_value, "MARKET_LOT_SIZE")
            } else {
                (value, "LOT_SIZE")
            }
        };
        let (step, step_filter) = pick(self.market_step_size, self.step_size);
        let (min, min_filter) = pick(self.market_min_qty, self.min_qty);
        let (max, max_filter) = pick(self.market_max_qty, self.max_qty);
        if min > Decimal::ZERO && quantity < min {
            return Err(format!(
                "lot_size: quantity {quantity} below {min_filter} minQty {min}"
            ));
        }
        if max > Decimal::ZERO && quantity > max {
            return Err(format!(
                "lot_size: quantity {quantity} above {max_filter} maxQty {max}"
            ));
        }
        if step > Decimal::ZERO {
            let step_min = if step_filter == "MARKET_LOT_SIZE" {
                self.market_min_qty
            } else {
                self.min_qty
            };
            // Checked, as the price above: minQty is the venue's word.
            let rem = quantity
                .checked_sub(step_min)
                .and_then(|offset| offset.checked_rem(step));
            if rem != Some(Decimal::ZERO) {
                return Err(format!(
                    "lot_size: quantity {quantity} is not a multiple of {step_filter} stepSize {step}"
                ));
            }
        }
        let price = if market { ref_price } else { limit_price };
        if let Some(price) = price {
            let notional = price
                .checked_mul(quantity)
                .ok_or_else(|| format!("min_notional: {price} x {quantity} overflows"))?;
            if self.min_notional > Decimal::ZERO
                && (!market || self.min_notional_market)
                && notional < self.min_notional
            {
                return Err(format!(
                    "min_notional: notional {notional} below {}",
                    self.min_notional
                ));
            }
            if self.max_notional > Decimal::ZERO
                && (!market || self.max_notional_market)
                && notional > self.max_notional
            {
                return Err(format!(
                    "max_notional: notional {notional} above {}",
                    self.max_notional
                ));
            }
        }
        Ok(())
    }
}

/// The REQUEST_WEIGHT per minute limit of exchangeInfo's `rateLimits`.
pub fn weight_limit(info: &Value) -> Option<u32> {
    info.get("rateLimits")?
        .as_array()?
        .iter()
        .filter(|limit| text(limit, "rateLimitType") == Some("REQUEST_WEIGHT"))
        .filter_map(|limit| {
            let per = match (
                text(limit, "interval")?,
                int(limit, "intervalNum").unwrap_or(1),
            ) {
                ("SECOND", n) => n,
                // Checked: intervalNum is the venue's word; one beyond u64 seconds is
                // skipped like any unreadable entry.
                ("MINUTE", n) => n.checked_mul(60)?,
                ("HOUR", n) => n.checked_mul(3_600)?,
                ("DAY", n) => n.checked_mul(86_400)?,
                _ => return None,
            };
            // Scaled to one minute: the header we read is per minute.
            let limit = int(limit, "limit")?;
            u32::try_from(limit.checked_mul(60)? / per.max(1)).ok()
        })
        .min()
}

/// The venue's order status as ours.
pub fn status_of(status: &str) -> Option<VenueStatus> {
    Some(match status {
        "NEW" | "PARTIALLY_FILLED" | "PENDING_NEW" | "NEW_INSURANCE" | "NEW_ADL" => {
            VenueStatus::Open
        }
        "FILLED" => VenueStatus::Filled,
        "CANCELED" | "PENDING_CANCEL" => VenueStatus::Cancelled,
        "EXPIRED" | "EXPIRED_IN_MATCH" => VenueStatus::Expired,
        "REJECTED" => VenueStatus::Rejected,
        _ => return None,
    })
}

/// A REST order object (new order RESULT, query, cancel, openOrders) as a VenueOrder,
/// with the client id as the venue has it (mapped back by the caller) and fee 0 (REST
/// answers carry no fee: the caller puts in what the stream reported).
pub fn parse_rest_order(flavor: Flavor, value: &Value) -> Result<VenueOrder, String> {
    let symbol = text(value, "symbol").ok_or("order without symbol")?;
    let status_text = text(value, "status").ok_or("order without status")?;
    let status = status_of(status_text).ok_or_else(|| format!("unknown status {status_text}"))?;
    let filled = dec(value, "executedQty").ok_or("order without executedQty")?;
    let notional = match flavor {
        Flavor::Spot => {
            dec(value, "cummulativeQuoteQty").ok_or("order without cummulativeQuoteQty")?
        }
        Flavor::Futures => match dec(value, "cumQuote") {
            Some(quote) if !quote.is_zero() || filled.is_zero() => quote,
            _ => {
                let avg = dec(value, "avgPrice").unwrap_or(Decimal::ZERO);
                avg.checked_mul(filled)
                    .ok_or("executedQty x avgPrice overflows")?
            }
        },
    };
    if filled < Decimal::ZERO || notional < Decimal::ZERO {
        return Err("negative executedQty or quote".into());
    }
    let ts_ms = int(value, "updateTime")
        .or_else(|| int(value, "transactTime"))
        .or_else(|| int(value, "time"))
        .unwrap_or(0);
    Ok(VenueOrder {
        // A spot cancel's answer names the order `origClientOrderId`; its `clientOrderId` is
        // the cancel request's own id. Every other answer names it `clientOrderId`.
        client_order_id: text(value, "origClientOrderId")
            .filter(|id| !id.is_empty())
            .or_else(|| text(value, "clientOrderId"))
            .map(str::to_string),
        venue_order_id: int(value, "orderId").map(|id| id.to_string()),
        symbol: None,
        venue_symbol: symbol.to_string(),
        status,
        filled,
        filled_notional: notional,
        fee: Decimal::ZERO,
        reason: match status {
            VenueStatus::Cancelled | VenueStatus::Expired | VenueStatus::Rejected => {
                Some(status_text.to_string())
            }
            _ => None,
        },
        ts: ts_ms.saturating_mul(1_000_000),
    })
}

/// One user-data-stream frame, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// An order update, with the trade it reports if it reports one.
    Order {
        order: Box<VenueOrder>,
        trade: Option<Trade>,
    },
    /// The listenKey expired: get a new one.
    Expired,
    /// Anything else (balances, positions, ...).
    Other,
}

/// Parse one frame of the user data stream (spot `executionReport`, futures
/// `ORDER_TRADE_UPDATE`, `listenKeyExpired`; a combined-stream envelope is unwrapped).
pub fn parse_stream(frame: &str) -> Result<StreamEvent, String> {
    let value: Value = serde_json::from_str(frame).map_err(|e| format!("not JSON: {e}"))?;
    let value = match value.get("data") {
        Some(data) if value.get("stream").is_some() => data.clone(),
        _ => value,
    };
    // The WebSocket API wraps events as {"event": {...}}.
    let value = match value.get("event") {
        Some(event) if event.is_object() => event.clone(),
        _ => value,
    };
    let kind = text(&value, "e").ok_or("frame without event type")?;
    match kind {
        "listenKeyExpired" | "eventStreamTerminated" => Ok(StreamEvent::Expired),
        "executionReport" => parse_execution_report(&value),
        "ORDER_TRADE_UPDATE" => {
            let o = value.get("o").ok_or("ORDER_TRADE_UPDATE without o")?;
            parse_futures_update(o, int(&value, "E").unwrap_or(0))
        }
        _ => Ok(StreamEvent::Other),
    }
}

/// The client order id a stream frame names (an execution report's `C` for a cancel, else
/// its `c`; a futures update's `o.c`), as far as the frame can be read: to name the order of
/// a malformed one.
pub fn stream_client_id(frame: &str) -> Option<String> {
    let value: Value = serde_json::from_str(frame).ok()?;
    let value = match value.get("data") {
        Some(data) if value.get("stream").is_some() => data,
        _ => &value,
    };
    let value = value
        .get("event")
        .filter(|e| e.is_object())
        .unwrap_or(value);
    let order = value.get("o").filter(|o| o.is_object()).unwrap_or(value);
    let id = [text(order, "C"), text(order, "c")]
        .into_iter()
        .flatten()
        .find(|c| !c.is_empty())
        .map(|c| c.chars().take(64).collect());
    id
}

/// One trade of an order: its id, commission (and the asset it is in), price and quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub id: u64,
    pub fee: Decimal,
    pub asset: String,
    pub price: Decimal,
    pub qty: Decimal,
}

fn trade_of(v: &Value, exec_type: &str) -> Result<Option<Trade>, String> {
    if exec_type != "TRADE" {
        return Ok(None);
    }
    Ok(Some(Trade {
        id: int(v, "t").ok_or("TRADE without t")?,
        fee: dec(v, "n").unwrap_or(Decimal::ZERO),
        asset: text(v, "N").unwrap_or("").to_string(),
        price: dec(v, "L").ok_or("TRADE without L")?,
        qty: dec(v, "l").ok_or("TRADE without l")?,
    }))
}

/// A REST trade (spot myTrades, futures userTrades) or a fill of a spot FULL answer.
fn rest_trade(v: &Value, id_key: &str) -> Option<Trade> {
    Some(Trade {
        id: int(v, id_key)?,
        fee: dec(v, "commission").unwrap_or(Decimal::ZERO),
        asset: text(v, "commissionAsset").unwrap_or("").to_string(),
        price: dec(v, "price")?,
        qty: dec(v, "qty")?,
    })
}

fn parse_execution_report(v: &Value) -> Result<StreamEvent, String> {
    let symbol = text(v, "s").ok_or("executionReport without s")?;
    let status_text = text(v, "X").ok_or("executionReport without X")?;
    let status = status_of(status_text).ok_or_else(|| format!("unknown status {status_text}"))?;
    let exec_type = text(v, "x").ok_or("executionReport without x")?;
    let filled = dec(v, "z").ok_or("executionReport without z")?;
    let notional = dec(v, "Z").ok_or("executionReport without Z")?;
    // A cancel's report carries the cancel request's id in c and the order's in C.
    let orig = text(v, "C").filter(|c| !c.is_empty());
    let client = match (status, orig) {
        (VenueStatus::Cancelled, Some(orig)) => orig,
        _ => text(v, "c").ok_or("executionReport without c")?,
    };
    let reason = text(v, "r").filter(|r| *r != "NONE").map(str::to_string);
    Ok(StreamEvent::Order {
        order: Box::new(VenueOrder {
            client_order_id: Some(client.to_string()),
            venue_order_id: int(v, "i").map(|id| id.to_string()),
            symbol: None,
            venue_symbol: symbol.to_string(),
            status,
            filled,
            filled_notional: notional,
            fee: Decimal::ZERO,
            reason: match status {
                VenueStatus::Cancelled | VenueStatus::Expired | VenueStatus::Rejected => {
                    reason.or_else(|| Some(status_text.to_string()))
                }
                _ => None,
            },
            ts: int(v, "E").unwrap_or(0).saturating_mul(1_000_000),
        }),
        trade: trade_of(v, exec_type)?,
    })
}

fn parse_futures_update(o: &Value, event_ms: u64) -> Result<StreamEvent, String> {
    let symbol = text(o, "s").ok_or("order update without s")?;
    let status_text = text(o, "X").ok_or("order update without X")?;
    let status = status_of(status_text).ok_or_else(|| format!("unknown status {status_text}"))?;
    let exec_type = text(o, "x").ok_or("order update without x")?;
    let filled = dec(o, "z").ok_or("order update without z")?;
    let avg = dec(o, "ap").unwrap_or(Decimal::ZERO);
    let notional = avg.checked_mul(filled).ok_or("z x ap overflows")?;
    Ok(StreamEvent::Order {
        order: Box::new(VenueOrder {
            client_order_id: Some(text(o, "c").ok_or("order update without c")?.to_string()),
            venue_order_id: int(o, "i").map(|id| id.to_string()),
            symbol: None,
            venue_symbol: symbol.to_string(),
            status,
            filled,
            filled_notional: notional,
            fee: Decimal::ZERO,
            reason: match status {
                VenueStatus::Cancelled | VenueStatus::Expired | VenueStatus::Rejected => {
                    Some(status_text.to_string())
                }
                _ => None,
            },
            ts: int(o, "T").unwrap_or(event_ms).saturating_mul(1_000_000),
        }),
        trade: trade_of(o, exec_type)?,
    })
}

/// The fee of one trade in the quote currency: as is when charged in the quote asset,
/// times the trade price when charged in the base asset, `None` otherwise (e.g. BNB).
pub fn fee_in_quote(rules: &Rules, fee: Decimal, asset: &str, price: Decimal) -> Option<Decimal> {
    if fee.is_zero() {
        Some(Decimal::ZERO)
    } else if asset == rules.quote {
        Some(fee)
    } else if asset == rules.base {
        fee.checked_mul(price)
    } else {
        None
    }
}

/// The answer of one REST call.
#[derive(Debug)]
enum Reply {
    /// 2xx with a JSON body.
    Ok(Value),
    /// The venue refused: its error code (0 if none) and message, HTTP status.
    Error { http: u16, code: i64, msg: String },
    /// 429 / 418: stop sending until the ban ends.
    RateLimited(String),
    /// Nothing usable (timeout, connection, 5xx, malformed).
    NoAnswer(String),
}

/// One order's trades counted: their ids, fees (quote currency) and quantity.
#[derive(Debug, Default, Clone)]
struct FeeBook {
    ids: HashSet<u64>,
    fee: Decimal,
    qty: Decimal,
}

#[derive(Debug, Default)]
struct State {
    /// Venue clock minus ours, ms.
    offset_ms: i64,
    rules: HashMap<String, Rules>,
    /// REQUEST_WEIGHT per minute we allow ourselves.
    weight_limit: u32,
    /// Weight used in the minute `weight_minute` (venue clock) as the venue last said.
    weight_used: u32,
    weight_minute: i64,
    /// No sending before this.
    banned_until: Option<Instant>,
    /// Venue client id -> ours, for derived ids.
    ids: HashMap<String, String>,
    /// Per venue client id: the fees of the trades seen so far.
    fees: HashMap<String, FeeBook>,
    /// Whether the private stream is up (fills arrive by it).
    stream_up: bool,
}

struct Inner {
    name: String,
    kind: String,
    flavor: Flavor,
    rest_url: String,
    ws_url: String,
    /// `Some(url)`: the private stream is the WebSocket API's subscription at `url`.
    ws_api_url: Option<String>,
    api_key: String,
    signer: Signer,
    recv_window_ms: u64,
    weight_share: f64,
    keepalive: Duration,
    /// The user data stream's read deadline (`user_stream_idle_s`).
    user_stream_idle: Duration,
    account_path: String,
    symbols: HashMap<Symbol, String>,
    venue_symbols: HashMap<String, Symbol>,
    http: reqwest::Client,
    state: Mutex<State>,
    /// The router's channel (set by `start`): problems off the stream (the fee path's) are
    /// told on errors.execution like the stream's own.
    events: OnceLock<mpsc::UnboundedSender<VenueEvent>>,
}

/// The Binance family adapter. Cheap to clone.
#[derive(Clone)]
pub struct Binance {
    inner: Arc<Inner>,
}

impl fmt::Debug for Binance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binance")
            .field("name", &self.inner.name)
            .field("kind", &self.inner.kind)
            .field("rest_url", &self.inner.rest_url)
            .field("ws_url", &self.inner.ws_url)
            .field("ws_api_url", &self.inner.ws_api_url)
            .field("api_key", &"<redacted>")
            .field("signer", &self.inner.signer)
            .finish()
    }
}

fn env_var(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
        _ => bail!("environment variable {name} is not set (needed for the venue's keys)"),
    }
}

fn read_key_file(path: &str) -> anyhow::Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| format!("key file {path}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "key file {path} has mode {mode:o}: it must be 0600 (readable by its owner only)"
            );
        }
    }
    std::fs::read_to_string(path).with_context(|| format!("key file {path}"))
}

/// The longest ban a Retry-After sets: 30 days, far beyond Binance's longest (3 days).
const MAX_BAN_SECS: u64 = 30 * 86_400;
/// The user data stream's default read deadlines, s. Spot (WebSocket API and stream.binance.com):
/// "The WebSocket server will send a ping frame every 20 seconds": 60 s is three pings missed,
/// and the venue itself drops a connection whose pong is a minute late. USDⓈ-M futures: "The
/// websocket server will send a ping frame every 3 minutes" (and waits 10 minutes for the
/// pong); Aster pings every 5 minutes: 600 s is two of Aster's pings, three of Binance's.
const DEFAULT_IDLE_SPOT_S: u64 = 60;
const DEFAULT_IDLE_FUTURES_S: u64 = 600;
/// The most the venue's clock may be off ours (sync_time): a day.
const MAX_CLOCK_OFFSET_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Binance {
    /// Build from `[execution.live.<name>]` (see the module comment for the keys).
    pub fn from_config(
        name: &str,
        kind: &str,
        mode: Mode,
        settings: Value,
    ) -> anyhow::Result<Self> {
        let settings: Settings =
            serde_json::from_value(settings).with_context(|| format!("[execution.live.{name}]"))?;
        let (flavor, env_prefix) = match kind {
            "binance_spot" => (Flavor::Spot, "BINANCE"),
            "binance_futures" => (Flavor::Futures, "BINANCE"),
            "aster" => (Flavor::Futures, "ASTER"),
            other => bail!("[execution.live.{name}] kind {other:?} is not a Binance-family kind"),
        };
        let (rest_default, ws_default) = match (kind, mode) {
            ("binance_spot", Mode::Live) => {
                ("https://api.binance.com", "wss://stream.binance.com:9443")
            }
            ("binance_spot", _) => (
                "https://testnet.binance.vision",
                "wss://stream.testnet.binance.vision",
            ),
            // USDⓈ-M user data comes from the `/private` base since Binance split its
            // WebSocket URLs (announced 2026-03; the legacy URLs retired 2026-04-23): the
            // stream is `wss://fstream.binance.com/private/ws/<listenKey>`.
            ("binance_futures", Mode::Live) => (
                "https://fapi.binance.com",
                "wss://fstream.binance.com/private",
            ),
            ("binance_futures", _) => (
                "https://testnet.binancefuture.com",
                "wss://fstream.binancefuture.com",
            ),
            ("aster", Mode::Live) => ("https://fapi.asterdex.com", "wss://fstream.asterdex.com"),
            _ => (
                "https://fapi.asterdex-testnet.com",
                "wss://fstream.asterdex-testnet.com",
            ),
        };
        if mode == Mode::Paper {
            bail!("[execution.live.{name}] mode paper needs no adapter");
        }
        if settings.recv_window_ms == 0 || settings.recv_window_ms > 60_000 {
            bail!("[execution.live.{name}] recv_window_ms must be 1..=60000");
        }
        if !(settings.weight_share > 0.0 && settings.weight_share <= 1.0) {
            bail!("[execution.live.{name}] weight_share must be in (0, 1]");
        }
        let user_stream_idle_s = settings.user_stream_idle_s.unwrap_or(match flavor {
            Flavor::Spot => DEFAULT_IDLE_SPOT_S,
            Flavor::Futures => DEFAULT_IDLE_FUTURES_S,
        });
        if !(1..=86_400).contains(&user_stream_idle_s) {
            bail!(
                "[execution.live.{name}] user_stream_idle_s = {user_stream_idle_s}: must be 1..=86400"
            );
        }
        let mut symbols = HashMap::new();
        let mut venue_symbols = HashMap::new();
        for (ours, theirs) in &settings.symbols {
            let symbol: Symbol = ours
                .parse()
                .map_err(|e| anyhow!("[execution.live.{name}] symbols: {ours}: {e}"))?;
            if theirs.is_empty() || !theirs.bytes().all(|b| b.is_ascii_alphanumeric()) {
                bail!("[execution.live.{name}] symbols: {ours} = {theirs:?} is not a venue symbol");
            }
            symbols.insert(symbol.clone(), theirs.clone());
            venue_symbols.insert(theirs.clone(), symbol);
        }
        if symbols.is_empty() {
            bail!("[execution.live.{name}] symbols is empty");
        }
        let key_env = settings
            .api_key_env
            .clone()
            .unwrap_or_else(|| format!("{env_prefix}_API_KEY"));
        let api_key = env_var(&key_env)?;
        let signer = match settings.key_type.as_str() {
            "hmac" => {
                let secret_env = settings
                    .api_secret_env
                    .clone()
                    .unwrap_or_else(|| format!("{env_prefix}_API_SECRET"));
                Signer::Hmac(env_var(&secret_env)?.into_bytes())
            }
            "ed25519" => {
                let pem_env = settings
                    .private_key_env
                    .clone()
                    .unwrap_or_else(|| format!("{env_prefix}_PRIVATE_KEY"));
                let file_env = settings
                    .private_key_file_env
                    .clone()
                    .unwrap_or_else(|| format!("{env_prefix}_PRIVATE_KEY_FILE"));
                let pem = match std::env::var(&pem_env) {
                    Ok(pem) if !pem.trim().is_empty() => pem,
                    _ => match std::env::var(&file_env) {
                        Ok(path) if !path.trim().is_empty() => read_key_file(path.trim())?,
                        _ => bail!(
                            "neither {pem_env} (PEM text) nor {file_env} (PEM file) is set (Ed25519 key)"
                        ),
                    },
                };
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| {
                    anyhow!("the Ed25519 key is not a PKCS#8 PEM Ed25519 private key")
                })?;
                Signer::Ed25519(Box::new(key))
            }
            other => bail!("[execution.live.{name}] key_type {other:?}: hmac or ed25519"),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
            .build()
            .context("HTTP client")?;
        let ws_api_default = match mode {
            Mode::Live => "wss://ws-api.binance.com:443/ws-api/v3",
            _ => "wss://ws-api.testnet.binance.vision/ws-api/v3",
        };
        let ws_api_url = match (settings.user_stream.as_deref(), flavor) {
            (Some("ws_api"), _) | (None, Flavor::Spot) => {
                Some(match (&settings.ws_api_url, &settings.ws_url) {
                    (Some(url), _) => url.trim_end_matches('/').to_string(),
                    (None, Some(ws)) => format!("{}/ws-api/v3", ws.trim_end_matches('/')),
                    (None, None) => ws_api_default.to_string(),
                })
            }
            (Some("listen_key"), _) | (None, Flavor::Futures) => None,
            (Some(other), _) => {
                bail!("[execution.live.{name}] user_stream {other:?}: ws_api or listen_key")
            }
        };
        let account_path = settings
            .account_path
            .clone()
            .unwrap_or_else(|| match (flavor, kind) {
                (Flavor::Spot, _) => "/api/v3/account".into(),
                // Aster's futures API v1 documents its account at v4.
                (Flavor::Futures, "aster") => "/fapi/v4/account".into(),
                (Flavor::Futures, _) => "/fapi/v2/account".into(),
            });
        Ok(Binance {
            inner: Arc::new(Inner {
                name: name.to_string(),
                kind: kind.to_string(),
                flavor,
                rest_url: settings
                    .rest_url
                    .clone()
                    .unwrap_or_else(|| rest_default.into())
                    .trim_end_matches('/')
                    .to_string(),
                ws_url: settings
                    .ws_url
                    .clone()
                    .unwrap_or_else(|| ws_default.into())
                    .trim_end_matches('/')
                    .to_string(),
                ws_api_url,
                api_key,
                signer,
                recv_window_ms: settings.recv_window_ms,
                weight_share: settings.weight_share,
                keepalive: Duration::from_secs(settings.keepalive_secs.max(1)),
                user_stream_idle: Duration::from_secs(user_stream_idle_s),
                account_path,
                symbols,
                venue_symbols,
                http,
                state: Mutex::new(State {
                    weight_limit: 1_000,
                    ..State::default()
                }),
                events: OnceLock::new(),
            }),
        })
    }

    /// A problem with `of` (an order, else what it was) told on errors.execution through the
    /// router (throttled there), and logged; only logged before `start`.
    fn tell(&self, of: &str, why: String) {
        tracing::warn!(venue = %self.inner.name, of, why, "venue problem");
        if let Some(events) = self.inner.events.get() {
            let of = of.to_string();
            let _ = events.send(VenueEvent::Problem { of, why });
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state itself stays usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, spot: &'static str, futures: &'static str) -> &'static str {
        match self.inner.flavor {
            Flavor::Spot => spot,
            Flavor::Futures => futures,
        }
    }

    /// Whether a call of `weight` may go now; `Err(why)` if banned or over budget.
    fn admit(&self, weight: u32) -> Result<(), String> {
        let mut state = self.state();
        if let Some(until) = state.banned_until {
            let now = Instant::now();
            if now < until {
                return Err(format!(
                    "rate_limited: the venue asked us to wait {} ms more",
                    (until - now).as_millis()
                ));
            }
            state.banned_until = None;
        }
        let minute = (now_ms() + state.offset_ms).div_euclid(60_000);
        if minute != state.weight_minute {
            state.weight_minute = minute;
            state.weight_used = 0;
        }
        let budget = (state.weight_limit as f64 * self.inner.weight_share) as u32;
        if state.weight_used.saturating_add(weight) > budget {
            return Err(format!(
                "rate_limited: request weight {} of {budget} used this minute",
                state.weight_used
            ));
        }
        state.weight_used = state.weight_used.saturating_add(weight);
        Ok(())
    }

    /// One REST call. `signed`: timestamp, recvWindow and signature are appended.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &[(&str, String)],
        signed: bool,
        weight: u32,
    ) -> Reply {
        if let Err(why) = self.admit(weight) {
            return Reply::RateLimited(why);
        }
        let mut query = query_string(params);
        if signed {
            let ts = now_ms() + self.state().offset_ms;
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!(
                "timestamp={ts}&recvWindow={}",
                self.inner.recv_window_ms
            ));
            let signature = self.inner.signer.sign(&query);
            query.push_str(&format!("&signature={}", encode(&signature)));
        }
        let url = if query.is_empty() {
            format!("{}{path}", self.inner.rest_url)
        } else {
            format!("{}{path}?{query}", self.inner.rest_url)
        };
        let response = match self
            .inner
            .http
            .request(method, &url)
            .header("X-MBX-APIKEY", &self.inner.api_key)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                };
                return Reply::NoAnswer(format!("{kind}: {}", e.without_url()));
            }
        };
        let http = response.status().as_u16();
        let headers = response.headers();
        if let Some(used) = headers
            .get("x-mbx-used-weight-1m")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
        {
            let mut state = self.state();
            state.weight_minute = (now_ms() + state.offset_ms).div_euclid(60_000);
            state.weight_used = used;
        }
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = match response.text().await {
            Ok(body) => body,
            Err(e) => return Reply::NoAnswer(format!("reading the answer: {}", e.without_url())),
        };
        if http == 429 || http == 418 {
            // Capped: Retry-After is the venue's word, and an Instant cannot be pushed
            // past ~292 years (adding u64::MAX seconds panics).
            let wait = Duration::from_secs(
                retry_after
                    .unwrap_or(if http == 418 { 120 } else { 60 })
                    .min(MAX_BAN_SECS),
            );
            self.state().banned_until = Some(Instant::now() + wait);
            tracing::warn!(venue = %self.inner.name, http, wait_s = wait.as_secs(), "rate limited by the venue: sending stops until the ban ends");
            return Reply::RateLimited(format!(
                "rate_limited: HTTP {http}, retry after {} s",
                wait.as_secs()
            ));
        }
        let value: Option<Value> = serde_json::from_str(&body).ok();
        if (200..300).contains(&http) {
            return match value {
                Some(value) => Reply::Ok(value),
                None => Reply::NoAnswer(format!("HTTP {http}: malformed answer")),
            };
        }
        let code = value
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(Value::as_i64);
        let msg = value
            .as_ref()
            .and_then(|v| text(v, "msg"))
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        if http >= 500 || code.is_none() || code == Some(-1007) || code == Some(-1006) {
            return Reply::NoAnswer(format!("HTTP {http} {}: {msg}", code.unwrap_or(0)));
        }
        Reply::Error {
            http,
            code: code.unwrap_or(0),
            msg,
        }
    }

    /// A SIGNED call; after -1021 (timestamp outside recvWindow) the clock is synced again
    /// and the call made once more (the venue refused the first: nothing happened).
    async fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &[(&str, String)],
        weight: u32,
    ) -> Reply {
        let reply = self.call(method.clone(), path, params, true, weight).await;
        if let Reply::Error { code: -1021, .. } = reply {
            tracing::warn!(venue = %self.inner.name, "timestamp outside recvWindow (-1021): syncing the clock again");
            if let Err(e) = self.sync_time().await {
                tracing::warn!(venue = %self.inner.name, error = %e, "clock sync failed");
                return reply;
            }
            return self.call(method, path, params, true, weight).await;
        }
        reply
    }

    /// Measure the venue's clock offset from `/time` (half the round trip as the delay).
    async fn sync_time(&self) -> Result<(), VenueError> {
        let sent = now_ms();
        let path = self.path("/api/v3/time", "/fapi/v1/time");
        let reply = self.call(reqwest::Method::GET, path, &[], false, 1).await;
        let received = now_ms();
        let value = ok_or_error(reply)?;
        let server = value
            .get("serverTime")
            .and_then(Value::as_i64)
            .ok_or_else(|| VenueError::Transient("time: no serverTime".into()))?;
        // serverTime is the venue's word: more than a day off ours is refused, so that
        // the offset and `now_ms() + offset_ms` (every signed timestamp) fit an i64.
        let offset = server
            .checked_sub((sent + received) / 2)
            .filter(|offset| (-MAX_CLOCK_OFFSET_MS..=MAX_CLOCK_OFFSET_MS).contains(offset))
            .ok_or_else(|| {
                VenueError::Transient(format!(
                    "time: serverTime {server} is more than a day off our clock ({received})"
                ))
            })?;
        self.state().offset_ms = offset;
        tracing::info!(venue = %self.inner.name, offset_ms = offset, "venue clock offset");
        Ok(())
    }

    async fn load_rules(&self) -> Result<(), VenueError> {
        let path = self.path("/api/v3/exchangeInfo", "/fapi/v1/exchangeInfo");
        let mut params = Vec::new();
        if self.inner.flavor == Flavor::Spot {
            let list: Vec<String> = self
                .inner
                .symbols
                .values()
                .map(|s| format!("\"{s}\""))
                .collect();
            params.push(("symbols", format!("[{}]", list.join(","))));
        }
        let weight = if self.inner.flavor == Flavor::Spot {
            20
        } else {
            1
        };
        let value = ok_or_error(
            self.call(reqwest::Method::GET, path, &params, false, weight)
                .await,
        )?;
        let mut rules = HashMap::new();
        for entry in value
            .get("symbols")
            .and_then(Value::as_array)
            .ok_or_else(|| VenueError::Transient("exchangeInfo without symbols".into()))?
        {
            let Some(symbol) = text(entry, "symbol") else {
                continue;
            };
            if !self.inner.venue_symbols.contains_key(symbol) {
                continue;
            }
            if let Some(status) = text(entry, "status").filter(|s| *s != "TRADING") {
                tracing::warn!(venue = %self.inner.name, symbol, status, "symbol is not TRADING at the venue: its orders will be refused");
            }
            let parsed = Rules::from_exchange_info(entry)
                .map_err(|e| VenueError::Transient(format!("exchangeInfo {symbol}: {e}")))?;
            rules.insert(symbol.to_string(), parsed);
        }
        for theirs in self.inner.symbols.values() {
            if !rules.contains_key(theirs) {
                return Err(VenueError::Refused(format!(
                    "exchangeInfo has no symbol {theirs} (check [execution.live.{}] symbols)",
                    self.inner.name
                )));
            }
        }
        let mut state = self.state();
        state.rules = rules;
        if let Some(limit) = weight_limit(&value) {
            state.weight_limit = limit;
        }
        Ok(())
    }

    /// Map a venue order to ours: our client id back from a derived one, our symbol, the
    /// fee the stream has reported so far.
    fn finish(&self, mut order: VenueOrder) -> VenueOrder {
        let state = self.state();
        if let Some(id) = &order.client_order_id {
            if let Some(book) = state.fees.get(id) {
                order.fee = order.fee.max(book.fee);
            }
            if let Some(ours) = state.ids.get(id) {
                order.client_order_id = Some(ours.clone());
            }
        }
        order.symbol = self.inner.venue_symbols.get(&order.venue_symbol).cloned();
        order
    }

    /// Count a trade's fee once (by trade id); the order's fee so far.
    fn add_fee(&self, client: &str, symbol: &str, trade: &Trade) -> Decimal {
        let mut state = self.state();
        let converted = state
            .rules
            .get(symbol)
            .and_then(|rules| fee_in_quote(rules, trade.fee, &trade.asset, trade.price));
        let book = state.fees.entry(client.to_string()).or_default();
        if book.ids.insert(trade.id) {
            book.qty = book.qty.checked_add(trade.qty).unwrap_or(book.qty);
            match converted {
                Some(value) => book.fee = book.fee.checked_add(value).unwrap_or(book.fee),
                None => tracing::warn!(
                    venue = %self.inner.name, symbol, asset = %trade.asset, fee = %trade.fee,
                    "fee charged in an asset other than the symbol's: left out of the reported fee"
                ),
            }
        }
        book.fee
    }

    /// The quantity of the order's trades whose fees are counted.
    fn fee_qty(&self, client: &str) -> Decimal {
        self.state()
            .fees
            .get(client)
            .map(|book| book.qty)
            .unwrap_or_default()
    }

    fn ids_for(&self, routed: &Routed) -> Result<(String, String), String> {
        let symbol = &routed.order.symbol;
        let venue_symbol = self
            .inner
            .symbols
            .get(symbol)
            .ok_or_else(|| {
                format!(
                    "unknown_symbol: {symbol} is not in [execution.live.{}] symbols",
                    self.inner.name
                )
            })?
            .clone();
        let ours = routed.order.client_order_id.as_str();
        let theirs = venue_client_id(ours);
        if theirs != ours {
            self.state().ids.insert(theirs.clone(), ours.to_string());
        }
        Ok((venue_symbol, theirs))
    }

    /// Query by venue client id; `Ok(None)` if the venue has no such order.
    async fn query_ids(
        &self,
        venue_symbol: &str,
        client: &str,
    ) -> Result<Option<VenueOrder>, VenueError> {
        let path = self.path("/api/v3/order", "/fapi/v1/order");
        let weight = if self.inner.flavor == Flavor::Spot {
            4
        } else {
            1
        };
        let params = [
            ("symbol", venue_symbol.to_string()),
            ("origClientOrderId", client.to_string()),
        ];
        match self
            .signed(reqwest::Method::GET, path, &params, weight)
            .await
        {
            Reply::Ok(value) => {
                let order = parse_rest_order(self.inner.flavor, &value)
                    .map_err(|e| VenueError::Transient(format!("malformed order answer: {e}")))?;
                self.complete_fees(venue_symbol, client, &order).await;
                Ok(Some(self.finish(order)))
            }
            Reply::Error { code: -2013, .. } => Ok(None),
            other => Err(reply_error(other)),
        }
    }

    fn order_params(
        &self,
        routed: &Routed,
        venue_symbol: &str,
        client: &str,
    ) -> Vec<(&'static str, String)> {
        let order = &routed.order;
        let mut params = vec![
            ("symbol", venue_symbol.to_string()),
            (
                "side",
                match order.side {
                    Side::Buy => "BUY".to_string(),
                    Side::Sell => "SELL".to_string(),
                },
            ),
        ];
        match order.order_type {
            OrderType::Market => params.push(("type", "MARKET".into())),
            OrderType::Limit => {
                params.push(("type", "LIMIT".into()));
                params.push((
                    "timeInForce",
                    match order.time_in_force {
                        TimeInForce::Gtc => "GTC".into(),
                        TimeInForce::Ioc => "IOC".into(),
                    },
                ));
            }
        }
        params.push((
            "quantity",
            Decimal::from(order.quantity).normalize().to_string(),
        ));
        if let Some(price) = order.limit_price {
            params.push(("price", Decimal::from(price).normalize().to_string()));
        }
        if order.reduce_only && self.inner.flavor == Flavor::Futures {
            params.push(("reduceOnly", "true".into()));
        }
        params.push(("newClientOrderId", client.to_string()));
        // Spot FULL = RESULT + the fills with their commissions; futures RESULT.
        params.push((
            "newOrderRespType",
            match self.inner.flavor {
                Flavor::Spot => "FULL".into(),
                Flavor::Futures => "RESULT".into(),
            },
        ));
        params
    }

    async fn stream_loop(self, events: mpsc::UnboundedSender<VenueEvent>) {
        let mut backoff = Duration::from_millis(500);
        while !events.is_closed() {
            let detail = match self.stream_once(&events).await {
                Ok(why) => {
                    backoff = Duration::from_millis(500);
                    why
                }
                Err(why) => why,
            };
            if events.is_closed() {
                return;
            }
            tracing::warn!(venue = %self.inner.name, detail = %detail, "user data stream lost; reconnecting");
            self.state().stream_up = false;
            let _ = events.send(VenueEvent::Health {
                connected: false,
                detail,
            });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// The WebSocket API request that subscribes to the account's events:
    /// `userDataStream.subscribe.signature` with apiKey, timestamp and the signature of
    /// `apiKey=...&timestamp=...` (the parameters sorted by name, as the WebSocket API signs).
    fn subscribe_request(&self, id: &str) -> String {
        let timestamp = now_ms() + self.state().offset_ms;
        let payload = format!("apiKey={}&timestamp={timestamp}", self.inner.api_key);
        let signature = self.inner.signer.sign(&payload);
        serde_json::json!({
            "id": id,
            "method": "userDataStream.subscribe.signature",
            "params": {"apiKey": self.inner.api_key, "timestamp": timestamp, "signature": signature},
        })
        .to_string()
    }

    /// The user data stream's read deadline: `user_stream_idle_s` without a frame (text,
    /// ping, pong) and the connection is dropped like a closed one; halfway through the
    /// silence we ping once (RFC 6455 5.5.2: the venue must answer with a pong; Binance's
    /// developer forum: "Client can send ping message to Websocket server, the server will
    /// return pong as response"), so a stream the venue does not ping stays up.
    fn read_deadline(&self) -> ReadDeadline {
        let idle = self.inner.user_stream_idle;
        ReadDeadline::new(idle, Some(idle / 2))
    }

    /// What the read deadline says is due: our ping (sent here), or why the connection is
    /// taken as dead.
    async fn on_silence<S>(&self, ws: &mut S, due: Due) -> Option<String>
    where
        S: futures::Sink<Message> + Unpin,
        S::Error: fmt::Display,
    {
        match due {
            Due::Ping => match ws.send(Message::Ping(Vec::new().into())).await {
                Ok(()) => None,
                Err(e) => Some(format!("stream error: ping: {e}")),
            },
            Due::Dead(silent) => {
                tracing::warn!(venue = %self.inner.name, silent_ms = silent.as_millis() as u64,
                    "user data stream silent past user_stream_idle_s: dropping the connection");
                Some(format!(
                    "nothing heard for {silent:?} (user_stream_idle_s = {} s): connection taken as dead",
                    self.inner.user_stream_idle.as_secs()
                ))
            }
        }
    }

    /// One WebSocket API session with a user data subscription; returns why it ended.
    async fn stream_ws_api(
        &self,
        url: &str,
        events: &mpsc::UnboundedSender<VenueEvent>,
    ) -> Result<String, String> {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| "connecting the WebSocket API: timeout".to_string())?
        .map_err(|e| format!("connecting the WebSocket API: {e}"))?;
        let id = format!("mb-subscribe-{}", now_ms());
        ws.send(Message::Text(self.subscribe_request(&id).into()))
            .await
            .map_err(|e| format!("subscribing: {e}"))?;
        let mut subscribed = false;
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        let mut liveness = self.read_deadline();
        loop {
            tokio::select! {
                message = ws.next() => {
                    let message = match message {
                        None => return Ok("stream closed".into()),
                        Some(Err(e)) => return Ok(format!("stream error: {e}")),
                        Some(Ok(message)) => message,
                    };
                    liveness.heard();
                    match message {
                        Message::Text(frame) => {
                            let value: Option<Value> = serde_json::from_str(frame.as_str()).ok();
                            let answer = value.as_ref().filter(|v| v.get("id").and_then(Value::as_str) == Some(id.as_str()));
                            if let Some(answer) = answer {
                                if answer.get("status").and_then(Value::as_u64) == Some(200) {
                                    subscribed = true;
                                    self.state().stream_up = true;
                                    let _ = events.send(VenueEvent::Health {
                                        connected: true,
                                        detail: "user data stream subscribed (WebSocket API)".into(),
                                    });
                                    continue;
                                }
                                let error = answer.get("error").cloned().unwrap_or(Value::Null);
                                let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
                                if code == -1021 {
                                    let _ = self.sync_time().await;
                                }
                                let msg = text(&error, "msg").unwrap_or("").chars().take(200).collect::<String>();
                                return Err(format!("subscription refused: {code}: {msg}"));
                            }
                            if value.as_ref().is_some_and(|v| v.get("id").is_some() && v.get("status").is_some()) {
                                continue; // an answer to something else
                            }
                            if self.on_frame(frame.as_str(), events) {
                                return Ok("the subscription ended (eventStreamTerminated)".into());
                            }
                        }
                        Message::Ping(payload) => {
                            let _ = ws.send(Message::Pong(payload)).await;
                        }
                        Message::Close(_) => return Ok("stream closed by the venue".into()),
                        _ => {}
                    }
                }
                _ = &mut deadline, if !subscribed => return Err("no answer to the subscription in 10 s".into()),
                due = liveness.due() => {
                    if let Some(why) = self.on_silence(&mut ws, due).await {
                        return Ok(why);
                    }
                }
                _ = events.closed() => return Ok("stopped".into()),
            }
        }
    }

    /// One private stream session; returns why it ended.
    async fn stream_once(
        &self,
        events: &mpsc::UnboundedSender<VenueEvent>,
    ) -> Result<String, String> {
        if let Some(url) = self.inner.ws_api_url.clone() {
            return self.stream_ws_api(&url, events).await;
        }
        let path = self.path("/api/v3/userDataStream", "/fapi/v1/listenKey");
        let key = match self.call(reqwest::Method::POST, path, &[], false, 2).await {
            Reply::Ok(value) => text(&value, "listenKey")
                .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric()))
                .ok_or("listenKey answer without a usable listenKey")?
                .to_string(),
            other => return Err(format!("listenKey: {}", reply_error(other))),
        };
        let url = format!("{}/ws/{key}", self.inner.ws_url);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .map_err(|_| "connecting the stream: timeout".to_string())?
        .map_err(|e| format!("connecting the stream: {e}"))?;
        self.state().stream_up = true;
        let _ = events.send(VenueEvent::Health {
            connected: true,
            detail: "user data stream connected".into(),
        });
        let mut keepalive = tokio::time::interval(self.inner.keepalive);
        keepalive.tick().await;
        let mut liveness = self.read_deadline();
        loop {
            tokio::select! {
                message = ws.next() => {
                    let message = match message {
                        None => return Ok("stream closed".into()),
                        Some(Err(e)) => return Ok(format!("stream error: {e}")),
                        Some(Ok(message)) => message,
                    };
                    liveness.heard();
                    match message {
                        Message::Text(frame) if self.on_frame(frame.as_str(), events) => {
                            return Ok("listenKeyExpired".into());
                        }
                        Message::Ping(payload) => {
                            let _ = ws.send(Message::Pong(payload)).await;
                        }
                        Message::Close(_) => return Ok("stream closed by the venue".into()),
                        _ => {}
                    }
                }
                _ = keepalive.tick() => {
                    let params = match self.inner.flavor {
                        Flavor::Spot => vec![("listenKey", key.clone())],
                        Flavor::Futures => vec![],
                    };
                    match self.call(reqwest::Method::PUT, path, &params, false, 2).await {
                        Reply::Ok(_) => {}
                        Reply::Error { code: -1125, .. } => return Ok("listenKey no longer valid".into()),
                        other => tracing::warn!(venue = %self.inner.name, error = %reply_error(other), "listenKey keepalive failed"),
                    }
                }
                due = liveness.due() => {
                    if let Some(why) = self.on_silence(&mut ws, due).await {
                        return Ok(why);
                    }
                }
                _ = events.closed() => return Ok("stopped".into()),
            }
        }
    }

    /// The fees of a new order's answer: spot FULL answers list the fills with their
    /// commissions; futures answers have none, so for an order that filled at once the
    /// stream (which carries them) is given a moment to report that much filled.
    async fn fees_of_answer(
        &self,
        client: &str,
        venue_symbol: &str,
        answer: &Value,
        filled: Decimal,
    ) {
        if let Some(fills) = answer.get("fills").and_then(Value::as_array) {
            for fill in fills {
                match rest_trade(fill, "tradeId") {
                    Some(trade) => {
                        self.add_fee(client, venue_symbol, &trade);
                    }
                    None => self.tell(
                        client,
                        format!("a fill without tradeId, price or qty in the order's answer, its fee left out: {}",
                            excerpt(fill)),
                    ),
                }
            }
            return;
        }
        if filled.is_zero() {
            return;
        }
        if !self.state().stream_up {
            return; // no stream to wait for: the trade list is read instead
        }
        let until = Instant::now() + Duration::from_millis(1_000);
        while Instant::now() < until {
            if self.fee_qty(client) >= filled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// For an order with more filled than the fees counted so far (a fill the stream
    /// missed), read its trades (spot myTrades, futures userTrades) for their commissions.
    async fn complete_fees(&self, venue_symbol: &str, client: &str, order: &VenueOrder) {
        let Some(order_id) = order.venue_order_id.clone() else {
            return;
        };
        if order.filled <= self.fee_qty(client) {
            return;
        }
        let (path, weight) = match self.inner.flavor {
            Flavor::Spot => ("/api/v3/myTrades", 5),
            Flavor::Futures => ("/fapi/v1/userTrades", 5),
        };
        let params = [("symbol", venue_symbol.to_string()), ("orderId", order_id)];
        let trades = match self
            .signed(reqwest::Method::GET, path, &params, weight)
            .await
        {
            Reply::Ok(Value::Array(trades)) => trades,
            other => {
                let why = format!(
                    "reading the order's trades failed, its fee may be left out: {}",
                    reply_error(other)
                );
                self.tell(client, why);
                return;
            }
        };
        for trade in &trades {
            match rest_trade(trade, "id") {
                Some(trade) => {
                    self.add_fee(client, venue_symbol, &trade);
                }
                None => self.tell(
                    client,
                    format!(
                        "a trade without id, price or qty ignored, its fee left out: {}",
                        excerpt(trade)
                    ),
                ),
            }
        }
    }

    /// Spot equity in the quote currency: its balance plus the mapped symbols' base assets
    /// at the venue's last prices (GET /api/v3/ticker/price). `None` when the symbols do
    /// not share one quote asset or the prices cannot be read.
    async fn spot_equity(
        &self,
        rules: &HashMap<String, Rules>,
        totals: &HashMap<String, (Decimal, Decimal)>,
    ) -> Option<Decimal> {
        let quotes: HashSet<&str> = rules.values().map(|r| r.quote.as_str()).collect();
        if quotes.len() != 1 {
            return None;
        }
        let quote = quotes.into_iter().next()?;
        let list: Vec<String> = rules.keys().map(|s| format!("\"{s}\"")).collect();
        let params = [("symbols", format!("[{}]", list.join(",")))];
        let prices = match self
            .call(
                reqwest::Method::GET,
                "/api/v3/ticker/price",
                &params,
                false,
                4,
            )
            .await
        {
            Reply::Ok(Value::Array(prices)) => prices,
            other => {
                tracing::warn!(venue = %self.inner.name, error = %reply_error(other), "spot prices for the equity unavailable");
                return None;
            }
        };
        let mut equity = totals.get(quote).map(|(_, t)| *t).unwrap_or_default();
        for (symbol, r) in rules {
            let held = totals.get(&r.base).map(|(_, t)| *t).unwrap_or_default();
            if held.is_zero() {
                continue;
            }
            let price = prices
                .iter()
                .find(|p| text(p, "symbol") == Some(symbol.as_str()))
                .and_then(|p| dec(p, "price"))?;
            equity = equity.checked_add(held.checked_mul(price)?)?;
        }
        Some(equity)
    }

    /// Handle one stream frame; `true` when the listenKey expired.
    fn on_frame(&self, frame: &str, events: &mpsc::UnboundedSender<VenueEvent>) -> bool {
        match parse_stream(frame) {
            Ok(StreamEvent::Expired) => true,
            Ok(StreamEvent::Other) => false,
            Ok(StreamEvent::Order { mut order, trade }) => {
                if let (Some(client), Some(trade)) = (&order.client_order_id, &trade) {
                    order.fee = self.add_fee(client, &order.venue_symbol, trade);
                }
                let order = self.finish(*order);
                if order.symbol.is_some() {
                    let _ = events.send(VenueEvent::Order(order));
                }
                false
            }
            Err(e) => {
                // Not applied, and told (errors.execution through the router, throttled):
                // an order event we cannot read may be a fill no report will show. Named
                // by our order when the frame still says whose it is.
                let state = self.state();
                let of = stream_client_id(frame)
                    .map(|id| state.ids.get(&id).cloned().unwrap_or(id))
                    .unwrap_or_else(|| "the user data stream".into());
                drop(state);
                let excerpt: String = frame.chars().take(200).collect();
                let _ = events.send(VenueEvent::Problem {
                    of,
                    why: format!("malformed event: {e}: {excerpt}"),
                });
                false
            }
        }
    }
}

/// A JSON value's first 200 characters, for a problem's reason.
fn excerpt(value: &Value) -> String {
    value.to_string().chars().take(200).collect()
}

fn ok_or_error(reply: Reply) -> Result<Value, VenueError> {
    match reply {
        Reply::Ok(value) => Ok(value),
        other => Err(reply_error(other)),
    }
}

fn reply_error(reply: Reply) -> VenueError {
    match reply {
        Reply::Ok(_) => VenueError::Transient("unexpected answer".into()),
        Reply::Error { http, code, msg } => {
            VenueError::Refused(format!("{code}: {msg} (HTTP {http})"))
        }
        Reply::RateLimited(why) => VenueError::Transient(why),
        Reply::NoAnswer(why) => VenueError::Transient(why),
    }
}

/// A duplicate client order id: the order is already at the venue.
fn is_duplicate(code: i64, msg: &str) -> bool {
    code == -4116
        || code == -4015 && msg.to_ascii_lowercase().contains("duplicat")
        || msg.to_ascii_lowercase().contains("duplicate order")
}

impl Exchange for Binance {
    async fn start(&self, events: mpsc::UnboundedSender<VenueEvent>) -> Result<(), VenueError> {
        self.sync_time().await?;
        self.load_rules().await?;
        let _ = self.inner.events.set(events.clone());
        tokio::spawn(self.clone().stream_loop(events));
        Ok(())
    }

    /// Binance finds an order by our id: nothing to write ahead.
    async fn submit(&self, routed: &Routed, _write_ahead: super::WriteAhead<'_>) -> Submitted {
        let (venue_symbol, client) = match self.ids_for(routed) {
            Ok(ids) => ids,
            Err(reason) => return Submitted::Rejected { reason },
        };
        let rules = self.state().rules.get(&venue_symbol).cloned();
        let Some(rules) = rules else {
            return Submitted::Rejected {
                reason: format!(
                    "unknown_symbol: no exchangeInfo rules for {venue_symbol} (not started?)"
                ),
            };
        };
        let order = &routed.order;
        if let Err(reason) = rules.check(
            order.order_type,
            order.quantity.into(),
            order.limit_price.map(Decimal::from),
            order.decision_price.map(Decimal::from),
        ) {
            return Submitted::Rejected { reason };
        }
        let params = self.order_params(routed, &venue_symbol, &client);
        let path = self.path("/api/v3/order", "/fapi/v1/order");
        match self.signed(reqwest::Method::POST, path, &params, 1).await {
            Reply::Ok(value) => match parse_rest_order(self.inner.flavor, &value) {
                Ok(order) => {
                    self.fees_of_answer(&client, &venue_symbol, &value, order.filled)
                        .await;
                    self.complete_fees(&venue_symbol, &client, &order).await;
                    Submitted::Accepted(self.finish(order))
                }
                Err(e) => Submitted::Unknown {
                    reason: format!("malformed order answer: {e}"),
                },
            },
            Reply::Error { code, msg, .. } if is_duplicate(code, &msg) => {
                match self.query_ids(&venue_symbol, &client).await {
                    Ok(Some(order)) => Submitted::Accepted(order),
                    Ok(None) => Submitted::Unknown {
                        reason: format!(
                            "duplicate order id ({code}: {msg}) but the venue does not find it"
                        ),
                    },
                    Err(e) => Submitted::Unknown {
                        reason: format!("duplicate order id ({code}: {msg}); query failed: {e}"),
                    },
                }
            }
            Reply::Error { code, msg, .. } => {
                if code == -1013 {
                    // A filter we checked passed, the venue's failed: its rules may have
                    // changed since the start; read them again (in the background).
                    let venue = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = venue.load_rules().await {
                            tracing::warn!(venue = %venue.inner.name, error = %e, "reloading exchangeInfo failed");
                        }
                    });
                }
                Submitted::Rejected {
                    reason: format!("{code}: {msg}"),
                }
            }
            Reply::RateLimited(why) => Submitted::Rejected { reason: why },
            Reply::NoAnswer(why) => Submitted::Unknown { reason: why },
        }
    }

    async fn cancel(&self, routed: &Routed) -> Result<VenueOrder, VenueError> {
        let (venue_symbol, client) = self.ids_for(routed).map_err(VenueError::Refused)?;
        let path = self.path("/api/v3/order", "/fapi/v1/order");
        let params = [
            ("symbol", venue_symbol.clone()),
            ("origClientOrderId", client.clone()),
        ];
        match self.signed(reqwest::Method::DELETE, path, &params, 1).await {
            Reply::Ok(value) => {
                let order = parse_rest_order(self.inner.flavor, &value)
                    .map_err(|e| VenueError::Transient(format!("malformed cancel answer: {e}")))?;
                self.complete_fees(&venue_symbol, &client, &order).await;
                Ok(self.finish(order))
            }
            // Unknown order: it ended meanwhile (filled) or never arrived: ask.
            Reply::Error {
                code: -2011 | -2013,
                msg,
                ..
            } => match self.query_ids(&venue_symbol, &client).await? {
                Some(order) => Ok(order),
                None => Err(VenueError::Refused(format!("-2011: {msg}"))),
            },
            other => Err(reply_error(other)),
        }
    }

    async fn query(&self, routed: &Routed) -> Result<Option<VenueOrder>, VenueError> {
        let (venue_symbol, client) = self.ids_for(routed).map_err(VenueError::Refused)?;
        self.query_ids(&venue_symbol, &client).await
    }

    async fn account(&self) -> Result<AccountState, VenueError> {
        let spot = self.inner.flavor == Flavor::Spot;
        let weight = if spot { 20 } else { 5 };
        let account = ok_or_error(
            self.signed(reqwest::Method::GET, &self.inner.account_path, &[], weight)
                .await,
        )?;
        let malformed =
            |what: &str| VenueError::Transient(format!("malformed account answer: {what}"));
        let mut state = AccountState::default();
        let quote = {
            let rules = &self.state().rules;
            self.inner
                .symbols
                .values()
                .filter_map(|s| rules.get(s).map(|r| r.quote.clone()))
                .next()
        };
        if spot {
            let balances = account
                .get("balances")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("no balances"))?;
            let mut totals = HashMap::new();
            for balance in balances {
                let asset =
                    text(balance, "asset").ok_or_else(|| malformed("balance without asset"))?;
                let free = dec(balance, "free").ok_or_else(|| malformed("balance without free"))?;
                let locked = dec(balance, "locked").unwrap_or(Decimal::ZERO);
                let total = free
                    .checked_add(locked)
                    .ok_or_else(|| malformed("balance overflows"))?;
                totals.insert(asset.to_string(), (free, total));
                if !total.is_zero() {
                    state.balances.push(VenueBalance {
                        asset: asset.to_string(),
                        total,
                    });
                }
            }
            let rules = self.state().rules.clone();
            for (symbol, theirs) in &self.inner.symbols {
                if let Some(r) = rules.get(theirs) {
                    let quantity = totals
                        .get(&r.base)
                        .map(|(_, t)| *t)
                        .unwrap_or(Decimal::ZERO);
                    state.positions.push(VenuePosition {
                        symbol: symbol.clone(),
                        quantity,
                        entry_price: None,
                    });
                }
            }
            state.cash = quote
                .as_ref()
                .map(|q| totals.get(q).map(|(f, _)| *f).unwrap_or(Decimal::ZERO));
            state.equity = self.spot_equity(&rules, &totals).await;
        } else {
            if let Some(assets) = account.get("assets").and_then(Value::as_array) {
                for asset in assets {
                    let name =
                        text(asset, "asset").ok_or_else(|| malformed("asset without name"))?;
                    let total = dec(asset, "walletBalance")
                        .ok_or_else(|| malformed("asset without walletBalance"))?;
                    if !total.is_zero() {
                        state.balances.push(VenueBalance {
                            asset: name.to_string(),
                            total,
                        });
                    }
                }
            }
            let mut amounts = HashMap::new();
            for position in account
                .get("positions")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed("no positions"))?
            {
                let Some(symbol) = text(position, "symbol") else {
                    continue;
                };
                let amount = dec(position, "positionAmt")
                    .ok_or_else(|| malformed("position without positionAmt"))?;
                let entry = dec(position, "entryPrice").filter(|p| !p.is_zero());
                // Hedge mode lists LONG and SHORT legs: their sum is the net position.
                let slot = amounts
                    .entry(symbol.to_string())
                    .or_insert((Decimal::ZERO, None));
                slot.0 = (slot.0 as Decimal)
                    .checked_add(amount)
                    .ok_or_else(|| malformed("position overflows"))?;
                if entry.is_some() {
                    slot.1 = entry;
                }
            }
            for (symbol, theirs) in &self.inner.symbols {
                let (quantity, entry_price) = amounts
                    .get(theirs)
                    .cloned()
                    .unwrap_or((Decimal::ZERO, None));
                state.positions.push(VenuePosition {
                    symbol: symbol.clone(),
                    quantity,
                    entry_price,
                });
            }
            state.equity =
                dec(&account, "totalMarginBalance").or_else(|| dec(&account, "totalWalletBalance"));
            state.cash = dec(&account, "availableBalance");
        }
        let path = self.path("/api/v3/openOrders", "/fapi/v1/openOrders");
        let weight = if spot { 6 } else { 1 };
        for theirs in self.inner.symbols.values() {
            let value = ok_or_error(
                self.signed(
                    reqwest::Method::GET,
                    path,
                    &[("symbol", theirs.clone())],
                    weight,
                )
                .await,
            )?;
            for entry in value
                .as_array()
                .ok_or_else(|| malformed("openOrders is not a list"))?
            {
                let order = parse_rest_order(self.inner.flavor, entry)
                    .map_err(|e| VenueError::Transient(format!("malformed open order: {e}")))?;
                state.open_orders.push(self.finish(order));
            }
        }
        Ok(state)
    }

    fn unknown_deadline(&self) -> Duration {
        // The venue drops a request older than recvWindow (by its clock); our clock is
        // off by at most the measured offset's error (half a round trip): 2 s of margin.
        Duration::from_millis(self.inner.recv_window_ms + 2_000)
    }

    fn forget(&self, client_order_id: &str) {
        let theirs = venue_client_id(client_order_id);
        let mut state = self.state();
        state.fees.remove(&theirs);
        state.ids.remove(&theirs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    /// Binance spot API docs, "SIGNED Endpoint Examples for POST /api/v3/order - HMAC Keys"
    /// (developers.binance.com/docs/binance-spot-api-docs/rest-api/request-security):
    /// the secret, the query, and the signature they print.
    #[test]
    fn hmac_signature_matches_binance_docs_example() {
        let secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
        let query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(
            hmac_sha256_hex(secret.as_bytes(), query),
            "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
        );
        let signer = Signer::Hmac(secret.as_bytes().to_vec());
        assert_eq!(
            signer.sign(query),
            "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
        );
        assert_eq!(format!("{signer:?}"), "Hmac(<redacted>)");
    }

    /// Binance's Ed25519 keys are PKCS#8 PEM and the signature is base64 of the raw
    /// Ed25519 signature (binance-connector-python common/src/binance_common/signature.py:
    /// eddsa "rfc8032" + b64encode). Binance publishes no fixed Ed25519 key with its
    /// signature, so the vector is RFC 8032 section 7.1 TEST 1 (secret key 9d61b1...,
    /// empty message, signature e55643...7a100b), its seed wrapped as the PKCS#8 PEM that
    /// Binance's key generator writes.
    const RFC8032_TEST1_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";

    #[test]
    fn ed25519_signature_matches_rfc8032_vector_from_a_pkcs8_pem() {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(RFC8032_TEST1_PEM).unwrap();
        let expected = hex::decode("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b").unwrap();
        assert_eq!(
            ed25519_base64(&key, ""),
            base64::engine::general_purpose::STANDARD.encode(expected)
        );
        // The docs' example query, signed the same way (checked against Python's
        // `cryptography` Ed25519PrivateKey.sign with the same seed).
        let query = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(
            ed25519_base64(&key, query),
            "3fhuDZ9nYMviDQ5OEtJBJS11jUZDTRzRQ+TQMarm+LErFiJvUiVPQjTzDoWZQe4miPX+yHk1v/Z7TWLYjIbmCA=="
        );
        // In the query string the base64 signature is percent-encoded.
        assert_eq!(encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }

    #[test]
    fn client_ids_fit_binance_or_are_derived_deterministically() {
        assert!(fits_binance_id("trd-7f3a9c_X"));
        assert!(fits_binance_id("a.b:c/d"));
        assert!(!fits_binance_id(""));
        assert!(!fits_binance_id(&"x".repeat(37)));
        assert!(!fits_binance_id("a b"));
        assert_eq!(venue_client_id("trd-1"), "trd-1");
        let long = "x".repeat(64);
        let derived = venue_client_id(&long);
        assert_eq!(derived.len(), 36);
        assert!(derived.starts_with("mb-"));
        assert!(fits_binance_id(&derived));
        assert_eq!(derived, venue_client_id(&long));
        assert_ne!(derived, venue_client_id(&"y".repeat(64)));
    }

    fn spot_info() -> Value {
        json!({
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}
            ],
            "symbols": [{
                "symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT",
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
                    {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
                    {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000", "stepSize": "0.00000000"},
                    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": true, "maxNotional": "9000000.00000000", "applyMaxToMarket": false, "avgPriceMins": 5}
                ]
            }]
        })
    }

    fn futures_entry() -> Value {
        json!({
            "symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764", "tickSize": "0.10"},
                {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"},
                {"filterType": "MARKET_LOT_SIZE", "stepSize": "0.001", "maxQty": "120", "minQty": "0.001"},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MIN_NOTIONAL", "notional": "100"},
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"}
            ]
        })
    }

    #[test]
    fn spot_filters_are_read_and_applied() {
        let info = spot_info();
        assert_eq!(weight_limit(&info), Some(6000));
        let rules = Rules::from_exchange_info(&info["symbols"][0]).unwrap();
        assert_eq!(rules.tick_size, d("0.01"));
        assert_eq!(rules.step_size, d("0.00001"));
        assert_eq!(rules.min_notional, d("5"));
        assert_eq!(rules.market_max_qty, d("100"));
        let limit = OrderType::Limit;
        assert_eq!(
            rules.check(limit, d("0.001"), Some(d("50000.01")), None),
            Ok(())
        );
        let err = rules
            .check(limit, d("0.001"), Some(d("50000.001")), None)
            .unwrap_err();
        assert!(err.starts_with("tick_size:"), "{err}");
        let err = rules
            .check(limit, d("0.000015"), Some(d("50000")), None)
            .unwrap_err();
        assert!(
            err.starts_with("lot_size:") && err.contains("stepSize"),
            "{err}"
        );
        let err = rules
            .check(limit, d("0.000001"), Some(d("50000")), None)
            .unwrap_err();
        assert!(
            err.starts_with("lot_size:") && err.contains("minQty"),
            "{err}"
        );
        let err = rules
            .check(limit, d("0.00001"), Some(d("100")), None)
            .unwrap_err();
        assert!(err.starts_with("min_notional:"), "{err}");
        let err = rules
            .check(limit, d("1"), Some(d("0.001")), None)
            .unwrap_err();
        assert!(err.starts_with("price_filter:"), "{err}");
        // MARKET: MARKET_LOT_SIZE maxQty 100, its step 0 = LOT_SIZE's step applies.
        let market = OrderType::Market;
        let err = rules.check(market, d("101"), None, None).unwrap_err();
        assert!(err.contains("MARKET_LOT_SIZE maxQty"), "{err}");
        assert_eq!(rules.check(market, d("0.5"), None, None), Ok(()));
        assert_eq!(rules.check(market, d("0.00001"), None, None), Ok(()));
        // MARKET notional from the decision price when there is one.
        let err = rules
            .check(market, d("0.00001"), None, Some(d("50000")))
            .unwrap_err();
        assert!(err.starts_with("min_notional:"), "{err}");
    }

    #[test]
    fn futures_filters_use_min_notional_notional() {
        let rules = Rules::from_exchange_info(&futures_entry()).unwrap();
        assert_eq!(rules.min_notional, d("100"));
        assert_eq!(rules.min_price, d("556.80"));
        let limit = OrderType::Limit;
        assert_eq!(
            rules.check(limit, d("0.002"), Some(d("60000.1")), None),
            Ok(())
        );
        let err = rules
            .check(limit, d("0.001"), Some(d("60000")), None)
            .unwrap_err();
        assert!(err.starts_with("min_notional:"), "{err}");
        let err = rules
            .check(limit, d("0.002"), Some(d("60000.15")), None)
            .unwrap_err();
        assert!(err.starts_with("tick_size:"), "{err}");
        let err = rules
            .check(OrderType::Market, d("121"), None, None)
            .unwrap_err();
        assert!(err.starts_with("lot_size:"), "{err}");
        // Broken entries are errors, not panics.
        assert!(Rules::from_exchange_info(&json!({"symbol": "X"})).is_err());
        assert!(Rules::from_exchange_info(&json!({"baseAsset": "A", "quoteAsset": "B"})).is_err());
    }

    /// exchangeInfo is the venue's word: a minPrice or minQty far below zero puts
    /// `price - minPrice` and `quantity - minQty` past Decimal's range (7.9e28). The order
    /// is refused, execution does not panic.
    #[test]
    fn absurd_filters_refuse_the_order_instead_of_panicking() {
        let entry = json!({"baseAsset": "BTC", "quoteAsset": "USDT", "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "-79228162514264337593543950335",
             "maxPrice": "0", "tickSize": "0.01"},
            {"filterType": "LOT_SIZE", "minQty": "-79228162514264337593543950335",
             "maxQty": "0", "stepSize": "0.001"}
        ]});
        let rules = Rules::from_exchange_info(&entry).unwrap();
        let err = rules
            .check(OrderType::Limit, d("1"), Some(d("100")), None)
            .unwrap_err();
        assert!(err.starts_with("tick_size:"), "{err}");
        let err = rules
            .check(OrderType::Market, d("1"), None, None)
            .unwrap_err();
        assert!(err.starts_with("lot_size:"), "{err}");
    }

    /// A REQUEST_WEIGHT interval whose length in seconds does not fit a u64 is skipped
    /// like any unreadable entry (`n * 60` overflowed: a panic in debug builds, a wrapped
    /// interval of 44 s and a budget far above the venue's in release).
    #[test]
    fn a_weight_interval_beyond_u64_seconds_is_skipped() {
        for interval in ["MINUTE", "HOUR", "DAY"] {
            let info = json!({"rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": interval,
                 "intervalNum": u64::MAX / 60 + 1, "limit": 6000}
            ]});
            assert_eq!(weight_limit(&info), None, "{interval}");
        }
    }

    /// A venue stand-in on 127.0.0.1 that answers every request with `response`.
    fn venue_answering(response: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut request = [0u8; 8192];
                let _ = std::io::Read::read(&mut stream, &mut request);
                let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
            }
        });
        url
    }

    /// A 429 whose Retry-After (seconds) no clock can add (u64::MAX): a long ban, not a
    /// panic ("overflow when adding duration to instant").
    #[tokio::test]
    async fn an_endless_retry_after_is_a_ban_not_a_panic() {
        std::env::set_var("MB_TEST_RETRY_KEY", "key");
        std::env::set_var("MB_TEST_RETRY_SECRET", "secret");
        let url = venue_answering(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 18446744073709551615\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "rest_url": url,
                         "api_key_env": "MB_TEST_RETRY_KEY", "api_secret_env": "MB_TEST_RETRY_SECRET"});
        let venue = Binance::from_config("b", "binance_spot", Mode::Testnet, cfg).unwrap();
        let (events, _rx) = mpsc::unbounded_channel();
        match venue.start(events).await {
            Err(VenueError::Transient(why)) => {
                assert!(why.starts_with("rate_limited: HTTP 429"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // The ban holds: the next call is refused here, the venue is not asked.
        let why = venue.admit(1).unwrap_err();
        assert!(why.starts_with("rate_limited: the venue asked us"), "{why}");
    }

    /// A serverTime far from ours is refused at start: `serverTime - our time` and then
    /// `now + offset` (every signed request's timestamp) overflowed i64 (a panic in debug
    /// builds, nonsense timestamps in release).
    #[tokio::test]
    async fn a_server_time_beyond_a_day_off_is_refused() {
        std::env::set_var("MB_TEST_TIME_KEY", "key");
        std::env::set_var("MB_TEST_TIME_SECRET", "secret");
        let url = venue_answering(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\
             Connection: close\r\n\r\n{\"serverTime\":-9223372036854775808}",
        );
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "rest_url": url,
                         "api_key_env": "MB_TEST_TIME_KEY", "api_secret_env": "MB_TEST_TIME_SECRET"});
        let venue = Binance::from_config("b", "binance_spot", Mode::Testnet, cfg).unwrap();
        let (events, _rx) = mpsc::unbounded_channel();
        match venue.start(events).await {
            Err(VenueError::Transient(why)) => {
                assert!(why.starts_with("time: serverTime"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(venue.state().offset_ms, 0);
    }

    #[test]
    fn weight_limits_scale_to_a_minute() {
        let info = json!({"rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}
        ]});
        assert_eq!(weight_limit(&info), Some(600));
        assert_eq!(weight_limit(&json!({})), None);
        assert_eq!(weight_limit(&json!({"rateLimits": "x"})), None);
    }

    #[test]
    fn rest_orders_parse_spot_and_futures() {
        let spot = json!({
            "symbol": "BTCUSDT", "orderId": 28, "orderListId": -1, "clientOrderId": "6gCrw2kRUAF9CvJDGP16IP",
            "transactTime": 1507725176595u64, "price": "0.00000000", "origQty": "10.00000000",
            "executedQty": "10.00000000", "cummulativeQuoteQty": "10.00000000", "status": "FILLED",
            "timeInForce": "GTC", "type": "MARKET", "side": "SELL"
        });
        let order = parse_rest_order(Flavor::Spot, &spot).unwrap();
        assert_eq!(order.status, VenueStatus::Filled);
        assert_eq!(order.filled, d("10"));
        assert_eq!(order.filled_notional, d("10"));
        assert_eq!(order.venue_order_id.as_deref(), Some("28"));
        assert_eq!(
            order.client_order_id.as_deref(),
            Some("6gCrw2kRUAF9CvJDGP16IP")
        );
        assert_eq!(order.ts, 1_507_725_176_595_000_000);
        // The docs' answer to a spot cancel (DELETE /api/v3/order): the order is
        // origClientOrderId, clientOrderId is the cancel request's own.
        let cancelled = json!({
            "symbol": "LTCBTC", "origClientOrderId": "myOrder1", "orderId": 4, "orderListId": -1,
            "clientOrderId": "cancelMyOrder1", "transactTime": 1684804350068u64, "price": "2.00000000",
            "origQty": "1.00000000", "executedQty": "0.00000000", "cummulativeQuoteQty": "0.00000000",
            "status": "CANCELED", "timeInForce": "GTC", "type": "LIMIT", "side": "BUY",
            "selfTradePreventionMode": "NONE"
        });
        let order = parse_rest_order(Flavor::Spot, &cancelled).unwrap();
        assert_eq!(order.client_order_id.as_deref(), Some("myOrder1"));
        assert_eq!(order.status, VenueStatus::Cancelled);
        let futures = json!({
            "clientOrderId": "testOrder", "cumQty": "0", "cumQuote": "0", "executedQty": "0.002",
            "orderId": 22542179, "avgPrice": "60000.5", "origQty": "10", "price": "0",
            "reduceOnly": false, "side": "BUY", "positionSide": "SHORT", "status": "PARTIALLY_FILLED",
            "stopPrice": "9300", "closePosition": false, "symbol": "BTCUSDT", "timeInForce": "GTD",
            "type": "LIMIT", "updateTime": 1566818724722u64
        });
        let order = parse_rest_order(Flavor::Futures, &futures).unwrap();
        assert_eq!(order.status, VenueStatus::Open);
        assert_eq!(order.filled_notional, d("120.001"));
        let expired = json!({"symbol": "BTCUSDT", "status": "EXPIRED", "executedQty": "0", "cumQuote": "0", "avgPrice": "0"});
        let order = parse_rest_order(Flavor::Futures, &expired).unwrap();
        assert_eq!(order.status, VenueStatus::Expired);
        assert_eq!(order.reason.as_deref(), Some("EXPIRED"));
        for bad in [
            json!({}),
            json!({"symbol": "BTCUSDT", "status": "WHAT", "executedQty": "1", "cummulativeQuoteQty": "1"}),
            json!({"symbol": "BTCUSDT", "status": "NEW", "executedQty": "x", "cummulativeQuoteQty": "1"}),
            json!({"symbol": "BTCUSDT", "status": "NEW", "executedQty": "-1", "cummulativeQuoteQty": "1"}),
            json!({"symbol": "BTCUSDT", "status": "NEW", "executedQty": "1"}),
        ] {
            assert!(parse_rest_order(Flavor::Spot, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spot_execution_reports_parse() {
        let trade = r#"{"e":"executionReport","E":1499405658658,"s":"ETHBTC","c":"mUvoqJxFIILMdfAW5iGSOW","S":"BUY","o":"LIMIT","f":"GTC","q":"1.00000000","p":"0.10264410","P":"0.00000000","F":"0.00000000","g":-1,"C":"","x":"TRADE","X":"PARTIALLY_FILLED","r":"NONE","i":4293153,"l":"0.40000000","z":"0.40000000","L":"0.10264410","n":"0.00004106","N":"BTC","T":1499405658657,"t":77,"I":8641984,"w":false,"m":false,"M":false,"O":1499405658657,"Z":"0.04105764","Y":"0.04105764","Q":"0.00000000"}"#;
        let StreamEvent::Order { order, trade } = parse_stream(trade).unwrap() else {
            panic!()
        };
        assert_eq!(
            order.client_order_id.as_deref(),
            Some("mUvoqJxFIILMdfAW5iGSOW")
        );
        assert_eq!(order.status, VenueStatus::Open);
        assert_eq!(order.filled, d("0.4"));
        assert_eq!(order.filled_notional, d("0.04105764"));
        assert_eq!(
            trade,
            Some(Trade {
                id: 77,
                fee: d("0.00004106"),
                asset: "BTC".into(),
                price: d("0.10264410"),
                qty: d("0.4"),
            })
        );
        // A cancel: c is the cancel's id, C the order's.
        let cancel = r#"{"e":"executionReport","E":1,"s":"ETHBTC","c":"cancel-1","C":"ours-1","x":"CANCELED","X":"CANCELED","r":"NONE","i":1,"z":"0","Z":"0","n":"0","N":null,"L":"0"}"#;
        let StreamEvent::Order { order, trade } = parse_stream(cancel).unwrap() else {
            panic!()
        };
        assert_eq!(order.client_order_id.as_deref(), Some("ours-1"));
        assert_eq!(order.status, VenueStatus::Cancelled);
        assert_eq!(trade, None);
        let expired = r#"{"e":"executionReport","E":1,"s":"ETHBTC","c":"ours-2","C":"","x":"EXPIRED","X":"EXPIRED","r":"NONE","i":2,"z":"0.1","Z":"1","L":"0"}"#;
        let StreamEvent::Order { order, .. } = parse_stream(expired).unwrap() else {
            panic!()
        };
        assert_eq!(order.status, VenueStatus::Expired);
        assert_eq!(order.client_order_id.as_deref(), Some("ours-2"));
        // The WebSocket API's envelope and the combined stream's are unwrapped.
        let wrapped = format!(r#"{{"subscriptionId":0,"event":{expired}}}"#);
        assert!(matches!(
            parse_stream(&wrapped),
            Ok(StreamEvent::Order { .. })
        ));
    }

    #[test]
    fn futures_order_trade_updates_parse() {
        let frame = r#"{"e":"ORDER_TRADE_UPDATE","E":1568879465651,"T":1568879465650,"o":{"s":"BTCUSDT","c":"TEST","S":"SELL","o":"TRAILING_STOP_MARKET","f":"GTC","q":"0.001","p":"0","ap":"0","sp":"7103.04","x":"NEW","X":"NEW","i":8886774,"l":"0","z":"0","L":"0","N":"USDT","n":"0","T":1568879465650,"t":0,"b":"0","a":"9.91","m":false,"R":false,"wt":"CONTRACT_PRICE","ot":"TRAILING_STOP_MARKET","ps":"LONG","cp":false,"AP":"7476.89","cr":"5.0","rp":"0"}}"#;
        let StreamEvent::Order { order, trade } = parse_stream(frame).unwrap() else {
            panic!()
        };
        assert_eq!(order.status, VenueStatus::Open);
        assert_eq!(order.client_order_id.as_deref(), Some("TEST"));
        assert_eq!(trade, None);
        let fill = r#"{"e":"ORDER_TRADE_UPDATE","E":2,"T":2,"o":{"s":"BTCUSDT","c":"ours","x":"TRADE","X":"FILLED","i":9,"l":"0.002","z":"0.003","L":"60001","ap":"60000.5","N":"USDT","n":"0.048","T":3,"t":55}}"#;
        let StreamEvent::Order { order, trade } = parse_stream(fill).unwrap() else {
            panic!()
        };
        assert_eq!(order.status, VenueStatus::Filled);
        assert_eq!(order.filled_notional, d("180.0015"));
        assert_eq!(order.ts, 3_000_000);
        assert_eq!(
            trade,
            Some(Trade {
                id: 55,
                fee: d("0.048"),
                asset: "USDT".into(),
                price: d("60001"),
                qty: d("0.002"),
            })
        );
        assert_eq!(
            parse_stream(r#"{"e":"listenKeyExpired","E":1}"#),
            Ok(StreamEvent::Expired)
        );
        assert_eq!(
            parse_stream(r#"{"e":"ACCOUNT_UPDATE","E":1}"#),
            Ok(StreamEvent::Other)
        );
        let combined = r#"{"stream":"k","data":{"e":"listenKeyExpired","E":1}}"#;
        assert_eq!(parse_stream(combined), Ok(StreamEvent::Expired));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for frame in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"e":"executionReport"}"#,
            r#"{"e":"executionReport","s":"X","X":"NEW","x":"NEW","c":"a","z":"1"}"#,
            r#"{"e":"executionReport","s":"X","X":"BOGUS","x":"NEW","c":"a","z":"1","Z":"1"}"#,
            r#"{"e":"executionReport","s":"X","X":"FILLED","x":"TRADE","c":"a","z":"1","Z":"1"}"#,
            r#"{"e":"ORDER_TRADE_UPDATE"}"#,
            r#"{"e":"ORDER_TRADE_UPDATE","o":{"s":"X","c":"a","x":"TRADE","X":"FILLED","z":"1e999","ap":"1"}}"#,
            r#"{"e":"ORDER_TRADE_UPDATE","o":{"s":"X","c":"a","x":"TRADE","X":"FILLED","z":"79228162514264337593543950335","ap":"2","t":1,"L":"1"}}"#,
        ] {
            assert!(parse_stream(frame).is_err(), "{frame:?} accepted");
        }
    }

    #[test]
    fn a_forgotten_order_leaves_its_fees_and_id_mapping() {
        std::env::set_var("MB_TEST_FORGET_KEY", "key");
        std::env::set_var("MB_TEST_FORGET_SECRET", "secret");
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"},
                         "api_key_env": "MB_TEST_FORGET_KEY", "api_secret_env": "MB_TEST_FORGET_SECRET"});
        let venue = Binance::from_config("b", "binance_spot", Mode::Testnet, cfg).unwrap();
        let (long, short) = ("x".repeat(40), "kept-1".to_string());
        {
            let mut state = venue.state();
            for ours in [&long, &short] {
                let theirs = venue_client_id(ours);
                state.ids.insert(theirs.clone(), ours.clone());
                state.fees.insert(theirs, FeeBook::default());
            }
        }
        venue.forget(&long);
        let state = venue.state();
        let derived = venue_client_id(&long);
        assert!(!state.ids.contains_key(&derived) && !state.fees.contains_key(&derived));
        assert!(state.ids.contains_key(&short) && state.fees.contains_key(&short));
    }

    #[test]
    fn a_malformed_stream_event_is_told_not_only_logged() {
        assert_eq!(
            stream_client_id(r#"{"e":"executionReport","c":"abc","C":"","X":"BOGUS"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            stream_client_id(r#"{"e":"executionReport","c":"cxl-1","C":"abc","X":"CANCELED"}"#)
                .as_deref(),
            Some("abc")
        );
        let futures = r#"{"stream":"k","data":{"e":"ORDER_TRADE_UPDATE","o":{"c":"f-1","z":"x"}}}"#;
        assert_eq!(stream_client_id(futures).as_deref(), Some("f-1"));
        let ws_api = r#"{"event":{"e":"executionReport","c":"w-1"}}"#;
        assert_eq!(stream_client_id(ws_api).as_deref(), Some("w-1"));
        assert_eq!(stream_client_id("not json"), None);
        assert_eq!(stream_client_id(r#"{"e":"executionReport"}"#), None);

        std::env::set_var("MB_TEST_MALFORMED_KEY", "key");
        std::env::set_var("MB_TEST_MALFORMED_SECRET", "secret");
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"},
                         "api_key_env": "MB_TEST_MALFORMED_KEY", "api_secret_env": "MB_TEST_MALFORMED_SECRET"});
        let venue = Binance::from_config("b", "binance_spot", Mode::Testnet, cfg).unwrap();
        let long = "x".repeat(40);
        let derived = venue_client_id(&long);
        venue.state().ids.insert(derived.clone(), long.clone());
        let (events, mut rx) = mpsc::unbounded_channel();
        // A fill whose cumulative notional is missing: not applied, told under our id.
        let bad = format!(
            r#"{{"e":"executionReport","s":"BTCUSDT","X":"FILLED","x":"TRADE","c":"{derived}","z":"1"}}"#
        );
        assert!(!venue.on_frame(&bad, &events));
        assert!(!venue.on_frame("not json", &events));
        match rx.try_recv().unwrap() {
            VenueEvent::Problem { of, why } => {
                assert_eq!(of, long);
                assert!(
                    why.starts_with("malformed event: executionReport without Z: {"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        match rx.try_recv().unwrap() {
            VenueEvent::Problem { of, why } => {
                assert_eq!(of, "the user data stream");
                assert!(
                    why.starts_with("malformed event: not JSON") && why.ends_with(": not json"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn fees_convert_only_when_trivial() {
        let rules = Rules {
            base: "BTC".into(),
            quote: "USDT".into(),
            ..Rules::default()
        };
        assert_eq!(
            fee_in_quote(&rules, d("0.5"), "USDT", d("60000")),
            Some(d("0.5"))
        );
        assert_eq!(
            fee_in_quote(&rules, d("0.00001"), "BTC", d("60000")),
            Some(d("0.6"))
        );
        assert_eq!(fee_in_quote(&rules, d("0.001"), "BNB", d("60000")), None);
        assert_eq!(
            fee_in_quote(&rules, d("0"), "BNB", d("60000")),
            Some(d("0"))
        );
    }

    #[test]
    fn duplicates_are_recognised() {
        assert!(is_duplicate(-2010, "Duplicate order sent."));
        assert!(is_duplicate(-4116, "ClientOrderId is duplicated."));
        assert!(!is_duplicate(
            -2010,
            "Account has insufficient balance for requested action."
        ));
        assert!(!is_duplicate(-1013, "Filter failure: LOT_SIZE"));
    }

    fn settings() -> Value {
        json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "api_key_env": "MB_TEST_BN_KEY", "api_secret_env": "MB_TEST_BN_SECRET"})
    }

    #[test]
    fn config_needs_keys_from_env_and_redacts_them() {
        std::env::remove_var("MB_TEST_BN_MISSING");
        let mut missing = settings();
        missing["api_key_env"] = json!("MB_TEST_BN_MISSING");
        let err =
            Binance::from_config("binance", "binance_spot", Mode::Testnet, missing).unwrap_err();
        assert!(format!("{err:#}").contains("MB_TEST_BN_MISSING"), "{err:#}");
        std::env::set_var("MB_TEST_BN_KEY", "the-api-key-value");
        std::env::set_var("MB_TEST_BN_SECRET", "the-secret-value");
        let venue =
            Binance::from_config("binance", "binance_spot", Mode::Testnet, settings()).unwrap();
        let shown = format!("{venue:?}");
        assert!(
            !shown.contains("the-api-key-value") && !shown.contains("the-secret-value"),
            "{shown}"
        );
        assert_eq!(venue.inner.rest_url, "https://testnet.binance.vision");
        assert_eq!(venue.unknown_deadline(), Duration::from_millis(7_000));
        let futures =
            Binance::from_config("bf", "binance_futures", Mode::Live, settings()).unwrap();
        assert_eq!(futures.inner.rest_url, "https://fapi.binance.com");
        assert_eq!(futures.inner.ws_url, "wss://fstream.binance.com/private");
        assert_eq!(futures.inner.flavor, Flavor::Futures);
        let aster = Binance::from_config("aster", "aster", Mode::Live, settings()).unwrap();
        assert_eq!(aster.inner.rest_url, "https://fapi.asterdex.com");
        assert_eq!(aster.inner.ws_url, "wss://fstream.asterdex.com");
        assert_eq!(aster.inner.account_path, "/fapi/v4/account");
        assert_eq!(futures.inner.account_path, "/fapi/v2/account");
        let mut unknown = settings();
        unknown["colour"] = json!("red");
        assert!(Binance::from_config("b", "binance_spot", Mode::Testnet, unknown).is_err());
        let mut bad_symbol = settings();
        bad_symbol["symbols"] = json!({"BTCUSDT": "BTCUSDT"});
        assert!(Binance::from_config("b", "binance_spot", Mode::Testnet, bad_symbol).is_err());
        assert!(Binance::from_config("b", "kraken", Mode::Testnet, settings()).is_err());
    }

    #[test]
    fn ed25519_key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mb-bn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        std::fs::write(&path, RFC8032_TEST1_PEM).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::env::set_var("MB_TEST_BN_KEY", "the-api-key-value");
        std::env::set_var("MB_TEST_BN_PEMFILE", &path);
        std::env::remove_var("MB_TEST_BN_PEMTEXT");
        let mut cfg = settings();
        cfg["key_type"] = json!("ed25519");
        cfg["private_key_env"] = json!("MB_TEST_BN_PEMTEXT");
        cfg["private_key_file_env"] = json!("MB_TEST_BN_PEMFILE");
        let err =
            Binance::from_config("b", "binance_spot", Mode::Testnet, cfg.clone()).unwrap_err();
        assert!(format!("{err:#}").contains("0600"), "{err:#}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let venue = Binance::from_config("b", "binance_spot", Mode::Testnet, cfg).unwrap();
        assert_eq!(venue.inner.signer.sign(""), base64::engine::general_purpose::STANDARD.encode(hex::decode("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b").unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weight_budget_and_bans_stop_sending_before_it_happens() {
        std::env::set_var("MB_TEST_BW_KEY", "k");
        std::env::set_var("MB_TEST_BW_SECRET", "s");
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "api_key_env": "MB_TEST_BW_KEY",
                         "api_secret_env": "MB_TEST_BW_SECRET", "weight_share": 0.8});
        let venue = Binance::from_config("b", "binance_futures", Mode::Testnet, cfg).unwrap();
        venue.state().weight_limit = 10; // budget 8 a minute
        assert_eq!(venue.admit(5), Ok(()));
        let err = venue.admit(4).unwrap_err();
        assert!(err.starts_with("rate_limited:"), "{err}");
        assert_eq!(venue.admit(3), Ok(()));
        // A new minute (by the venue's clock) starts from zero.
        venue.state().weight_minute -= 1;
        assert_eq!(venue.admit(8), Ok(()));
        // A 429/418 ban: nothing goes until it ends.
        venue.state().weight_minute -= 1;
        venue.state().banned_until = Some(Instant::now() + Duration::from_secs(60));
        let err = venue.admit(1).unwrap_err();
        assert!(err.contains("wait"), "{err}");
        venue.state().banned_until = Some(Instant::now());
        assert_eq!(venue.admit(1), Ok(()));
    }

    #[test]
    fn order_parameters_follow_the_flavour() {
        use moonbus_common::OrderRequest;
        std::env::set_var("MB_TEST_BW_KEY", "k");
        std::env::set_var("MB_TEST_BW_SECRET", "s");
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "api_key_env": "MB_TEST_BW_KEY",
                         "api_secret_env": "MB_TEST_BW_SECRET"});
        let order: OrderRequest = serde_json::from_value(json!({
            "client_order_id": "x".repeat(40), "agent": "a", "symbol": "BTC-USDT", "venue": "b",
            "side": "SELL", "type": "LIMIT", "quantity": "0.0100", "limit_price": "60000.50",
            "time_in_force": "IOC", "reduce_only": true, "origin_ts": 1, "ts": 1
        }))
        .unwrap();
        let routed = Routed {
            order,
            order_id: "b-1".into(),
            timings: Default::default(),
        };
        for (kind, reduce, resp) in [("binance_spot", false, "FULL"), ("aster", true, "RESULT")] {
            let venue = Binance::from_config("b", kind, Mode::Testnet, cfg.clone()).unwrap();
            let (symbol, client) = venue.ids_for(&routed).unwrap();
            assert_eq!(symbol, "BTCUSDT");
            assert_eq!(client, venue_client_id(&"x".repeat(40)));
            // The derived id maps back to ours.
            assert_eq!(venue.state().ids.get(&client), Some(&"x".repeat(40)));
            let params = venue.order_params(&routed, &symbol, &client);
            let query = query_string(&params);
            let mut expected = String::from(
                "symbol=BTCUSDT&side=SELL&type=LIMIT&timeInForce=IOC&quantity=0.01&price=60000.5",
            );
            if reduce {
                expected.push_str("&reduceOnly=true");
            }
            expected.push_str(&format!(
                "&newClientOrderId={client}&newOrderRespType={resp}"
            ));
            assert_eq!(query, expected);
        }
    }
}

#[cfg(test)]
mod ws_api_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spot_subscribes_by_signature_and_futures_by_listen_key() {
        std::env::set_var(
            "MB_TEST_WS_KEY",
            "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
        );
        std::env::set_var(
            "MB_TEST_WS_SECRET",
            "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j",
        );
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "api_key_env": "MB_TEST_WS_KEY",
                         "api_secret_env": "MB_TEST_WS_SECRET"});
        let spot = Binance::from_config("b", "binance_spot", Mode::Live, cfg.clone()).unwrap();
        assert_eq!(
            spot.inner.ws_api_url.as_deref(),
            Some("wss://ws-api.binance.com:443/ws-api/v3")
        );
        let request: Value = serde_json::from_str(&spot.subscribe_request("x")).unwrap();
        assert_eq!(request["method"], "userDataStream.subscribe.signature");
        let params = &request["params"];
        let payload = format!(
            "apiKey={}&timestamp={}",
            params["apiKey"].as_str().unwrap(),
            params["timestamp"].as_i64().unwrap()
        );
        assert_eq!(
            params["signature"].as_str().unwrap(),
            hmac_sha256_hex(
                b"NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j",
                &payload
            )
        );
        let mut local = cfg.clone();
        local["ws_url"] = json!("ws://127.0.0.1:9/");
        let spot = Binance::from_config("b", "binance_spot", Mode::Testnet, local).unwrap();
        assert_eq!(
            spot.inner.ws_api_url.as_deref(),
            Some("ws://127.0.0.1:9/ws-api/v3")
        );
        let futures =
            Binance::from_config("b", "binance_futures", Mode::Testnet, cfg.clone()).unwrap();
        assert_eq!(futures.inner.ws_api_url, None);
        let mut legacy = cfg.clone();
        legacy["user_stream"] = json!("listen_key");
        let spot = Binance::from_config("b", "binance_spot", Mode::Testnet, legacy).unwrap();
        assert_eq!(spot.inner.ws_api_url, None);
        let mut bad = cfg;
        bad["user_stream"] = json!("carrier_pigeon");
        assert!(Binance::from_config("b", "binance_spot", Mode::Testnet, bad).is_err());
        assert_eq!(
            parse_stream(r#"{"subscriptionId":3,"event":{"e":"eventStreamTerminated","E":1}}"#),
            Ok(StreamEvent::Expired)
        );
    }
}

/// The user data stream's read deadline against venue stand-ins on 127.0.0.1: a listenKey
/// endpoint (HTTP) and a WebSocket server that, once connected (and, for the WebSocket API,
/// subscribed), goes silent with the TCP connection kept open (a half-open connection: the
/// peer gone without FIN/RST), or only pings, or only answers our pings.
#[cfg(test)]
mod idle_tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Copy)]
    enum Peer {
        /// Says nothing and reads nothing (our pings go unanswered).
        Silent,
        /// Sends a ping frame every 200 ms and reads nothing.
        Pings,
        /// Sends nothing of its own but reads, so it answers our pings with pongs.
        AnswersPings,
    }

    struct StandIn {
        rest_url: String,
        ws_url: String,
        listen_keys: Arc<AtomicUsize>,
        connections: Arc<AtomicUsize>,
    }

    async fn stand_in(peer: Peer, ws_api: bool) -> StandIn {
        let listen_keys = Arc::new(AtomicUsize::new(0));
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rest_url = format!("http://{}", http.local_addr().unwrap());
        let counter = listen_keys.clone();
        std::thread::spawn(move || {
            for mut stream in http.incoming().flatten() {
                let mut request = [0u8; 8192];
                let n = std::io::Read::read(&mut stream, &mut request).unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                if request.starts_with("POST /fapi/v1/listenKey")
                    || request.starts_with("POST /api/v3/userDataStream")
                {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                let body = r#"{"listenKey":"standinkey1"}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
            }
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_url = format!("ws://{}", ws.local_addr().unwrap());
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = ws.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    if ws_api {
                        // Answer the subscription (the WebSocket API's first request).
                        let Some(Ok(Message::Text(request))) = ws.next().await else {
                            return;
                        };
                        let request: Value = serde_json::from_str(request.as_str()).unwrap();
                        let answer = json!({"id": request["id"], "status": 200, "result": {}});
                        let _ = ws.send(Message::Text(answer.to_string().into())).await;
                    }
                    match peer {
                        Peer::Silent => std::future::pending::<()>().await,
                        Peer::Pings => loop {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                                return;
                            }
                        },
                        Peer::AnswersPings => while let Some(Ok(_)) = ws.next().await {},
                    }
                });
            }
        });
        StandIn {
            rest_url,
            ws_url,
            listen_keys,
            connections,
        }
    }

    fn venue(kind: &str, stand_in: &StandIn) -> Binance {
        std::env::set_var("MB_TEST_IDLE_KEY", "key");
        std::env::set_var("MB_TEST_IDLE_SECRET", "secret");
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"}, "rest_url": stand_in.rest_url,
                         "ws_url": stand_in.ws_url, "user_stream_idle_s": 1,
                         "api_key_env": "MB_TEST_IDLE_KEY", "api_secret_env": "MB_TEST_IDLE_SECRET"});
        Binance::from_config("b", kind, Mode::Testnet, cfg).unwrap()
    }

    /// The next Health event within `wait`, if any (order events are not expected here).
    async fn health(
        rx: &mut mpsc::UnboundedReceiver<VenueEvent>,
        wait: Duration,
    ) -> Option<(bool, String)> {
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(VenueEvent::Health { connected, detail })) => Some((connected, detail)),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => None,
        }
    }

    /// Connected, then the silent connection is dropped (stream down, as on a disconnect:
    /// the router queries working orders meanwhile), then connected again: a second
    /// connection, and for a listenKey stream a second listenKey request.
    async fn a_silent_stream_is_dropped_and_reconnected(kind: &str, ws_api: bool) {
        let stand_in = stand_in(Peer::Silent, ws_api).await;
        let venue = venue(kind, &stand_in);
        let (events, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(venue.clone().stream_loop(events));
        let wait = Duration::from_secs(5);
        assert!(matches!(health(&mut rx, wait).await, Some((true, _))));
        assert!(venue.state().stream_up);
        let (connected, detail) = health(&mut rx, wait).await.expect("never taken as down");
        assert!(!connected && detail.contains("nothing heard"), "{detail}");
        assert!(!venue.state().stream_up);
        assert!(matches!(health(&mut rx, wait).await, Some((true, _))));
        assert_eq!(stand_in.connections.load(Ordering::SeqCst), 2);
        let listen_keys = if ws_api { 0 } else { 2 };
        assert_eq!(stand_in.listen_keys.load(Ordering::SeqCst), listen_keys);
        task.abort();
    }

    /// A stream that is quiet but alive (the venue's pings, or pongs to ours) stays up.
    async fn a_live_quiet_stream_stays_up(kind: &str, ws_api: bool, peer: Peer) {
        let stand_in = stand_in(peer, ws_api).await;
        let venue = venue(kind, &stand_in);
        let (events, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(venue.clone().stream_loop(events));
        assert!(matches!(
            health(&mut rx, Duration::from_secs(5)).await,
            Some((true, _))
        ));
        // Three deadlines of 1 s without a text frame.
        assert_eq!(health(&mut rx, Duration::from_millis(3_200)).await, None);
        assert!(venue.state().stream_up);
        assert_eq!(stand_in.connections.load(Ordering::SeqCst), 1);
        task.abort();
    }

    #[tokio::test]
    async fn idle_listen_key_stream_is_dropped_and_reconnected() {
        a_silent_stream_is_dropped_and_reconnected("binance_futures", false).await;
    }

    #[tokio::test]
    async fn idle_ws_api_stream_is_dropped_and_reconnected() {
        a_silent_stream_is_dropped_and_reconnected("binance_spot", true).await;
    }

    #[tokio::test]
    async fn idle_deadline_is_reset_by_the_venues_pings_listen_key() {
        a_live_quiet_stream_stays_up("aster", false, Peer::Pings).await;
    }

    #[tokio::test]
    async fn idle_deadline_is_reset_by_the_venues_pings_ws_api() {
        a_live_quiet_stream_stays_up("binance_spot", true, Peer::Pings).await;
    }

    #[tokio::test]
    async fn idle_deadline_is_reset_by_pongs_to_our_ping() {
        a_live_quiet_stream_stays_up("binance_futures", false, Peer::AnswersPings).await;
        a_live_quiet_stream_stays_up("binance_spot", true, Peer::AnswersPings).await;
    }

    #[test]
    fn idle_deadline_defaults_by_flavour_and_is_bounded() {
        std::env::set_var("MB_TEST_IDLE_KEY", "key");
        std::env::set_var("MB_TEST_IDLE_SECRET", "secret");
        let cfg = json!({"symbols": {"BTC-USDT": "BTCUSDT"},
                         "api_key_env": "MB_TEST_IDLE_KEY", "api_secret_env": "MB_TEST_IDLE_SECRET"});
        for (kind, secs) in [
            ("binance_spot", 60),
            ("binance_futures", 600),
            ("aster", 600),
        ] {
            let venue = Binance::from_config("b", kind, Mode::Live, cfg.clone()).unwrap();
            assert_eq!(
                venue.inner.user_stream_idle,
                Duration::from_secs(secs),
                "{kind}"
            );
        }
        let mut set = cfg.clone();
        set["user_stream_idle_s"] = json!(90);
        let venue = Binance::from_config("b", "binance_spot", Mode::Live, set).unwrap();
        assert_eq!(venue.inner.user_stream_idle, Duration::from_secs(90));
        for bad in [json!(0), json!(86_401), json!(u64::MAX)] {
            let mut set = cfg.clone();
            set["user_stream_idle_s"] = bad;
            let err = Binance::from_config("b", "binance_futures", Mode::Live, set).unwrap_err();
            assert!(format!("{err:#}").contains("user_stream_idle_s"), "{err:#}");
        }
    }
}
