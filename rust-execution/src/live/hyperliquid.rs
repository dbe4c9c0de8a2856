//! Hyperliquid perpetuals (kind "hyperliquid").
//!
//! - Orders and cancels are L1 actions signed exactly as the official Python SDK
//!   (hyperliquid-dex/hyperliquid-python-sdk, `hyperliquid/utils/signing.py`) signs them:
//!   `keccak256(msgpack(action) ++ nonce u64 BE ++ vault flag [++ vault address]
//!   [++ 0x00 ++ expiresAfter u64 BE])` is the `connectionId` of a phantom agent
//!   `{source: "a" mainnet | "b" testnet, connectionId}`, signed as EIP-712 typed data in the
//!   domain `{name "Exchange", version "1", chainId 1337, verifyingContract 0x0}` with
//!   secp256k1 (`{r, s, v}`).
//! - The signing key is an API ("agent") wallet's private key, from the environment only;
//!   the account (master) address is what the `info` queries and the WebSocket user feeds
//!   use (the vault address instead when one is configured).
//! - Every order carries a `cloid`: the first 16 bytes of sha256(client_order_id), so a
//!   second submission of the same order is refused by Hyperliquid as a duplicate; the
//!   adapter then asks `orderStatus` by that cloid and reports what the venue has.
//! - Sizes must be multiples of 10^-szDecimals (`meta`), prices have at most 5 significant
//!   figures (integers always allowed) and at most 6 - szDecimals decimals: breaking either
//!   rejects the order before anything is sent. MARKET orders go out as IOC limit orders at
//!   the latest mid (`allMids`) moved by `slippage_bps`, rounded as the SDK's `market_open`.
//! - Fills come from the `userFills` WebSocket feed (deduplicated by `tid`, the first
//!   message a snapshot that also catches up after a reconnect), states from `orderUpdates`.
//!   Reported figures are always sums of the fills seen (exact decimals, fees in USDC).
//! - A fill is a WsFill (coin, px, sz, side, time, startPosition, dir, closedPnl, hash, oid,
//!   crossed, fee, tid, feeToken, optional cloid, liquidation, builderFee); we need coin, px,
//!   sz, oid, tid, fee and time. A list is read item by item: a malformed fill (or order
//!   update) is not applied and is told (`VenueEvent::Problem`: errors.execution, named by
//!   our order when it is ours), the list's other items are applied. A malformed frame or an
//!   `error` frame is told the same way.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use k256::ecdsa::SigningKey;
use moonbus_common::{OrderType, Side, Symbol, TimeInForce};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sha3::Keccak256;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::{
    AccountState, Due, Exchange, Mode, ReadDeadline, Submitted, VenueBalance, VenueError,
    VenueEvent, VenueOrder, VenuePosition, VenueStatus,
};
use crate::venue::Routed;

/// Documented endpoints (https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api).
const MAINNET_REST: &str = "https://api.hyperliquid.xyz";
const MAINNET_WS: &str = "wss://api.hyperliquid.xyz/ws";
const TESTNET_REST: &str = "https://api.hyperliquid-testnet.xyz";
const TESTNET_WS: &str = "wss://api.hyperliquid-testnet.xyz/ws";

/// Perps prices: at most this many decimals minus szDecimals (6 for perps, 8 for spot).
const PERP_MAX_DECIMALS: u32 = 6;
/// Prices: at most this many significant figures (integers are always allowed).
const MAX_SIG_FIGS: u32 = 5;
/// The collateral and fee currency of Hyperliquid perps.
const QUOTE: &str = "USDC";
/// How many fill ids are remembered for deduplication.
const SEEN_TIDS: usize = 100_000;
/// How many fills of not-yet-known orders are kept.
const UNMATCHED_FILLS: usize = 1_000;

fn default_account_env() -> String {
    "HYPERLIQUID_ACCOUNT_ADDRESS".into()
}
fn default_key_env() -> String {
    "HYPERLIQUID_AGENT_PRIVATE_KEY".into()
}
fn default_slippage_bps() -> u64 {
    50
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_expires_after_ms() -> u64 {
    15_000
}
fn default_min_notional() -> String {
    "10".into()
}
fn default_ping_secs() -> u64 {
    30
}

/// A number written as a number or as a string (env overrides arrive as strings).
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n}: not a whole number >= 0"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?}: not a whole number >= 0"))),
        other => Err(serde::de::Error::custom(format!("{other}: not a number"))),
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(s),
        other => Err(serde::de::Error::custom(format!("{other}: not a decimal"))),
    }
}

/// `[execution.live.<name>]` of kind "hyperliquid", less the router's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Our symbol (BTC-USDC) -> Hyperliquid coin (BTC).
    pub symbols: BTreeMap<String, String>,
    /// REST base (`/info` and `/exchange` are appended); by mode when left out.
    #[serde(default)]
    pub rest_url: Option<String>,
    /// WebSocket URL; by mode when left out.
    #[serde(default)]
    pub ws_url: Option<String>,
    /// The account (master) address; read from `account_address_env` when left out.
    #[serde(default)]
    pub account_address: Option<String>,
    #[serde(default = "default_account_env")]
    pub account_address_env: String,
    /// The variable holding the API (agent) wallet's private key (hex).
    #[serde(default = "default_key_env")]
    pub agent_key_env: String,
    /// Trade for a vault or sub-account (its address), signed by the agent.
    #[serde(default)]
    pub vault_address: Option<String>,
    /// MARKET orders: IOC at the mid moved this many basis points against us.
    #[serde(default = "default_slippage_bps", deserialize_with = "lenient_u64")]
    pub slippage_bps: u64,
    /// Every HTTP call and the WebSocket connect.
    #[serde(default = "default_timeout_ms", deserialize_with = "lenient_u64")]
    pub timeout_ms: u64,
    /// Actions carry `expiresAfter = nonce + this`: an unanswered order cannot land later.
    /// 0 = not sent (then an unanswered order stays possible for the nonce window, 2 days).
    #[serde(default = "default_expires_after_ms", deserialize_with = "lenient_u64")]
    pub expires_after_ms: u64,
    /// The venue's minimum order value in USDC (10 on Hyperliquid).
    #[serde(default = "default_min_notional", deserialize_with = "lenient_string")]
    pub min_notional: String,
    /// WebSocket ping period (the venue drops a connection silent for 60 s).
    #[serde(default = "default_ping_secs", deserialize_with = "lenient_u64")]
    pub ping_secs: u64,
}

/// The agent wallet's key. Debug never shows it.
#[derive(Clone)]
struct AgentKey(SigningKey);

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentKey(<redacted>, address {})", address_of(&self.0))
    }
}

/// One perp of `meta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Asset {
    /// Index in `meta.universe`: the asset id of actions.
    pub id: u32,
    pub sz_decimals: u32,
}

/// Where one of our orders stands, from what the venue said.
#[derive(Debug, Clone)]
struct Track {
    client_order_id: String,
    symbol: Symbol,
    coin: String,
    quantity: Decimal,
    ioc: bool,
    oid: Option<u64>,
    /// Sums over the fills seen (userFills, deduplicated by tid).
    filled: Decimal,
    notional: Decimal,
    fee: Decimal,
    /// The venue's latest state and how much it says is filled.
    status: VenueStatus,
    venue_filled: Decimal,
    reason: Option<String>,
    ts: u64,
}

impl Track {
    /// The order as reported: fill figures only from fills; a terminal state only once the
    /// fills behind it were seen (until then Open, so nothing is concluded too early).
    fn view(&self) -> VenueOrder {
        let caught_up = match self.status {
            VenueStatus::Filled => self.filled >= self.quantity,
            VenueStatus::Open => true,
            _ => self.filled >= self.venue_filled,
        };
        VenueOrder {
            client_order_id: Some(self.client_order_id.clone()),
            venue_order_id: self.oid.map(|o| o.to_string()),
            symbol: Some(self.symbol.clone()),
            venue_symbol: self.coin.clone(),
            status: if caught_up {
                self.status
            } else {
                VenueStatus::Open
            },
            filled: self.filled,
            filled_notional: self.notional,
            fee: self.fee,
            reason: if caught_up { self.reason.clone() } else { None },
            ts: self.ts,
        }
    }

    fn set_status(&mut self, status: VenueStatus, venue_filled: Decimal, reason: Option<String>) {
        // A terminal state never goes back to Open.
        if self.status != VenueStatus::Open && status == VenueStatus::Open {
            return;
        }
        self.status = status;
        if venue_filled > self.venue_filled {
            self.venue_filled = venue_filled;
        }
        if reason.is_some() {
            self.reason = reason;
        }
    }
}

#[derive(Default)]
struct Book {
    by_cloid: HashMap<String, Track>,
    oid_to_cloid: HashMap<u64, String>,
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
    /// Fills of orders not known yet (a fill can beat the answer that names its oid).
    unmatched: VecDeque<WsFill>,
}

impl Book {
    fn remember_tid(&mut self, tid: u64) -> bool {
        if !self.seen.insert(tid) {
            return false;
        }
        self.seen_order.push_back(tid);
        if self.seen_order.len() > SEEN_TIDS {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn cloid_of(&self, oid: u64, cloid: Option<&str>) -> Option<String> {
        if let Some(c) = cloid {
            let c = c.to_ascii_lowercase();
            if self.by_cloid.contains_key(&c) {
                return Some(c);
            }
        }
        self.oid_to_cloid.get(&oid).cloned()
    }

    /// Our client order id of the order the venue names by oid and/or cloid, if it is ours.
    fn owner(&self, oid: Option<u64>, cloid: Option<&str>) -> Option<String> {
        let cloid = match cloid.map(str::to_ascii_lowercase) {
            Some(c) if self.by_cloid.contains_key(&c) => c,
            _ => self.oid_to_cloid.get(&oid?)?.clone(),
        };
        self.by_cloid.get(&cloid).map(|t| t.client_order_id.clone())
    }

    /// Applies fills; returns the orders that changed.
    fn apply_fills(&mut self, fills: &[WsFill]) -> Vec<VenueOrder> {
        let mut changed: Vec<String> = Vec::new();
        for fill in fills {
            let Some(cloid) = self.cloid_of(fill.oid, fill.cloid.as_deref()) else {
                debug!(
                    oid = fill.oid,
                    tid = fill.tid,
                    "hyperliquid: fill of an order not known (yet)"
                );
                if !self.seen.contains(&fill.tid)
                    && !self.unmatched.iter().any(|f| f.tid == fill.tid)
                {
                    self.unmatched.push_back(fill.clone());
                    if self.unmatched.len() > UNMATCHED_FILLS {
                        self.unmatched.pop_front();
                    }
                }
                continue;
            };
            if !self.remember_tid(fill.tid) {
                continue;
            }
            let Some(track) = self.by_cloid.get_mut(&cloid) else {
                continue;
            };
            let Some(value) = fill.px.checked_mul(fill.sz) else {
                warn!(
                    tid = fill.tid,
                    "hyperliquid: fill value overflows, fill left out"
                );
                continue;
            };
            let (Some(filled), Some(notional)) = (
                track.filled.checked_add(fill.sz),
                track.notional.checked_add(value),
            ) else {
                warn!(
                    tid = fill.tid,
                    "hyperliquid: fill sums overflow, fill left out"
                );
                continue;
            };
            track.filled = filled;
            track.notional = notional;
            if fill.fee_token.as_deref().unwrap_or(QUOTE) == QUOTE {
                track.fee = track.fee.checked_add(fill.fee).unwrap_or(track.fee);
            } else {
                warn!(tid = fill.tid, token = ?fill.fee_token, "hyperliquid: fee not in USDC left out");
            }
            track.oid.get_or_insert(fill.oid);
            self.oid_to_cloid.insert(fill.oid, cloid.clone());
            track.ts = track.ts.max(fill.time.saturating_mul(1_000_000));
            if !changed.contains(&cloid) {
                changed.push(cloid);
            }
        }
        changed
            .iter()
            .filter_map(|c| self.by_cloid.get(c).map(Track::view))
            .collect()
    }

    /// Links an oid to our order and applies the fills of it that came before.
    fn register_oid(&mut self, oid: u64, cloid: &str) -> Vec<VenueOrder> {
        self.oid_to_cloid.insert(oid, cloid.to_string());
        if let Some(track) = self.by_cloid.get_mut(cloid) {
            track.oid.get_or_insert(oid);
        }
        let (early, rest): (Vec<WsFill>, Vec<WsFill>) =
            self.unmatched.drain(..).partition(|f| f.oid == oid);
        self.unmatched = rest.into();
        if early.is_empty() {
            Vec::new()
        } else {
            self.apply_fills(&early)
        }
    }

    /// Applies order state updates; returns the orders that changed.
    fn apply_updates(&mut self, updates: &[WsOrderUpdate]) -> Vec<VenueOrder> {
        let mut out = Vec::new();
        for update in updates {
            let Some(cloid) = self.cloid_of(update.oid, update.cloid.as_deref()) else {
                continue;
            };
            out.extend(self.register_oid(update.oid, &cloid));
            let Some(track) = self.by_cloid.get_mut(&cloid) else {
                continue;
            };
            let (status, reason) = map_status(&update.status, track.ioc);
            let venue_filled = update
                .orig_sz
                .checked_sub(update.sz)
                .unwrap_or(Decimal::ZERO);
            track.oid.get_or_insert(update.oid);
            track.set_status(status, venue_filled, reason);
            track.ts = track.ts.max(update.ts.saturating_mul(1_000_000));
            out.push(track.view());
        }
        out
    }
}

struct Inner {
    name: String,
    mode: Mode,
    settings: Settings,
    info_url: String,
    exchange_url: String,
    ws_url: String,
    /// Whose account: the vault when one is set, else the master account.
    user: String,
    vault: Option<[u8; 20]>,
    key: AgentKey,
    http: reqwest::Client,
    /// our symbol -> coin, and back.
    coins: BTreeMap<String, String>,
    symbols: BTreeMap<String, Symbol>,
    min_notional: Decimal,
    assets: Mutex<HashMap<String, Asset>>,
    book: Mutex<Book>,
    events: Mutex<Option<mpsc::UnboundedSender<VenueEvent>>>,
    last_nonce: AtomicU64,
}

/// The Hyperliquid perps adapter; clones share one state.
#[derive(Clone)]
pub struct Hyperliquid {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hyperliquid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hyperliquid")
            .field("name", &self.inner.name)
            .field("mode", &self.inner.mode)
            .field("user", &self.inner.user)
            .field("agent", &self.inner.key)
            .finish()
    }
}

fn parse_address(text: &str, what: &str) -> anyhow::Result<[u8; 20]> {
    let hex_part = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(hex_part).with_context(|| format!("{what} {text:?} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow!("{what} {text:?} is not a 20-byte address"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Hyperliquid {
    /// Builds the adapter from its settings; the key and the account address come from the
    /// environment (the variables named by `agent_key_env`, `account_address_env`).
    pub fn from_config(
        name: &str,
        kind: &str,
        mode: Mode,
        settings: Value,
    ) -> anyhow::Result<Self> {
        if kind != "hyperliquid" {
            bail!("venue {name}: kind {kind:?} is not served by the Hyperliquid adapter");
        }
        if mode == Mode::Paper {
            bail!("venue {name}: paper mode needs no Hyperliquid adapter");
        }
        let settings: Settings = serde_json::from_value(settings)
            .with_context(|| format!("[execution.live.{name}] (kind hyperliquid)"))?;
        // The stream waits 2 x ping_secs for a word from the venue: a huge value would
        // overflow that Duration (a panic), and any ping of 60 s or more lets the venue
        // drop the connection anyway.
        if settings.ping_secs >= 60 {
            bail!(
                "venue {name}: ping_secs = {}: must be at most 59 (Hyperliquid drops a connection silent for 60 s)",
                settings.ping_secs
            );
        }
        let key_hex = std::env::var(&settings.agent_key_env).map_err(|_| {
            anyhow!(
                "venue {name}: environment variable {} is not set (the Hyperliquid API wallet's private key)",
                settings.agent_key_env
            )
        })?;
        let key = parse_key(&key_hex).map_err(|why| {
            anyhow!(
                "venue {name}: {} does not hold a private key: {why}",
                settings.agent_key_env
            )
        })?;
        let account = match &settings.account_address {
            Some(a) => a.clone(),
            None => std::env::var(&settings.account_address_env).map_err(|_| {
                anyhow!(
                    "venue {name}: no account_address and environment variable {} is not set (the master account's address)",
                    settings.account_address_env
                )
            })?,
        };
        parse_address(&account, "account address")?;
        let vault = match &settings.vault_address {
            Some(v) => Some(parse_address(v, "vault_address")?),
            None => None,
        };
        let user = settings
            .vault_address
            .clone()
            .unwrap_or(account)
            .to_ascii_lowercase();
        let mainnet = mode == Mode::Live;
        let rest = settings
            .rest_url
            .clone()
            .unwrap_or_else(|| (if mainnet { MAINNET_REST } else { TESTNET_REST }).into());
        let rest = rest.trim_end_matches('/').to_string();
        let ws_url = settings
            .ws_url
            .clone()
            .unwrap_or_else(|| (if mainnet { MAINNET_WS } else { TESTNET_WS }).into());
        let mut coins = BTreeMap::new();
        let mut symbols = BTreeMap::new();
        for (ours, coin) in &settings.symbols {
            let symbol: Symbol = ours
                .parse()
                .map_err(|e| anyhow!("venue {name}: symbols: {ours:?}: {e}"))?;
            if symbols.insert(coin.clone(), symbol).is_some() {
                bail!("venue {name}: symbols: coin {coin:?} is mapped twice");
            }
            coins.insert(ours.clone(), coin.clone());
        }
        let min_notional = Decimal::from_str(settings.min_notional.trim()).map_err(|e| {
            anyhow!(
                "venue {name}: min_notional {:?}: {e}",
                settings.min_notional
            )
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms.max(1)))
            .build()
            .context("HTTP client")?;
        info!(venue = name, %mode, user = %user, agent = %address_of(&key), "hyperliquid adapter");
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.into(),
                mode,
                info_url: format!("{rest}/info"),
                exchange_url: format!("{rest}/exchange"),
                ws_url,
                user,
                vault,
                key: AgentKey(key),
                http,
                coins,
                symbols,
                min_notional,
                assets: Mutex::new(HashMap::new()),
                book: Mutex::new(Book::default()),
                events: Mutex::new(None),
                last_nonce: AtomicU64::new(0),
                settings,
            }),
        })
    }

    /// The agent wallet's address (what the venue recovers from our signatures).
    pub fn agent_address(&self) -> String {
        address_of(&self.inner.key.0)
    }

    fn emit(&self, orders: Vec<VenueOrder>) {
        if orders.is_empty() {
            return;
        }
        let guard = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            for order in orders {
                let _ = tx.send(VenueEvent::Order(order));
            }
        }
    }

    /// Tells what the venue sent that could not be applied (`VenueEvent::Problem`: the
    /// router puts it on errors.execution, throttled).
    fn problem(&self, of: String, why: String) {
        let guard = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(VenueEvent::Problem { of, why });
        }
    }

    /// Tells a list's malformed items, each named by our order when it is one of ours.
    fn tell_bad(&self, bad: Vec<BadItem>) {
        if bad.is_empty() {
            return;
        }
        let named: Vec<(String, String)> = {
            let book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
            bad.into_iter()
                .map(|b| {
                    let of = book
                        .owner(b.oid, b.cloid.as_deref())
                        .unwrap_or_else(|| "an unidentified order".into());
                    (of, b.why)
                })
                .collect()
        };
        for (of, why) in named {
            self.problem(of, why);
        }
    }

    fn health(&self, connected: bool, detail: String) {
        let guard = self.inner.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(VenueEvent::Health { connected, detail });
        }
    }

    fn next_nonce(&self) -> u64 {
        let now = now_ms();
        let mut last = self.inner.last_nonce.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self.inner.last_nonce.compare_exchange(
                last,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Value, VenueError> {
        let resp = self
            .inner
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| VenueError::Transient(format!("{url}: {}", without_url(&e))))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            VenueError::Transient(format!("{url}: reading the answer: {}", without_url(&e)))
        })?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(VenueError::Transient(format!(
                "{url}: HTTP {status}: {}",
                clip(&text)
            )));
        }
        if !status.is_success() {
            return Err(VenueError::Refused(format!(
                "HTTP {status}: {}",
                clip(&text)
            )));
        }
        serde_json::from_str(&text).map_err(|e| {
            VenueError::Transient(format!("{url}: malformed answer ({e}): {}", clip(&text)))
        })
    }

    async fn info(&self, body: Value) -> Result<Value, VenueError> {
        let url = self.inner.info_url.clone();
        self.post(&url, &body).await
    }

    /// Signs and posts an L1 action.
    async fn exchange<A: Serialize>(&self, action: &A) -> Result<Value, VenueError> {
        let nonce = self.next_nonce();
        let expires = match self.inner.settings.expires_after_ms {
            0 => None,
            ms => Some(nonce + ms),
        };
        let signature = sign_l1_action(
            &self.inner.key.0,
            action,
            self.inner.vault.as_ref(),
            nonce,
            expires,
            self.inner.mode == Mode::Live,
        )
        .map_err(|e| VenueError::Refused(format!("signing: {e}")))?;
        let body = json!({
            "action": action,
            "nonce": nonce,
            "signature": signature,
            "vaultAddress": self.inner.settings.vault_address.as_ref().map(|v| v.to_ascii_lowercase()),
            "expiresAfter": expires,
        });
        let url = self.inner.exchange_url.clone();
        self.post(&url, &body).await
    }

    async fn load_meta(&self) -> Result<(), VenueError> {
        let meta = self.info(json!({"type": "meta"})).await?;
        let assets = parse_meta(&meta).map_err(VenueError::Transient)?;
        for coin in self.inner.coins.values() {
            if !assets.contains_key(coin) {
                warn!(venue = %self.inner.name, coin, "hyperliquid: configured coin not in meta; its orders are rejected");
            }
        }
        *self.inner.assets.lock().unwrap_or_else(|e| e.into_inner()) = assets;
        Ok(())
    }

    async fn asset(&self, coin: &str) -> Result<Option<Asset>, VenueError> {
        let known = {
            let assets = self.inner.assets.lock().unwrap_or_else(|e| e.into_inner());
            if assets.is_empty() {
                None
            } else {
                Some(assets.get(coin).cloned())
            }
        };
        match known {
            Some(asset) => Ok(asset),
            None => {
                self.load_meta().await?;
                Ok(self
                    .inner
                    .assets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(coin)
                    .cloned())
            }
        }
    }

    async fn mid(&self, coin: &str) -> Result<Decimal, VenueError> {
        let mids = self.info(json!({"type": "allMids"})).await?;
        let text = mids
            .get(coin)
            .and_then(Value::as_str)
            .ok_or_else(|| VenueError::Transient(format!("allMids has no mid for {coin}")))?;
        dec(text).map_err(VenueError::Transient)
    }

    fn track(&self, order: &Routed, cloid: &str, coin: &str) {
        let mut book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
        book.by_cloid
            .entry(cloid.to_string())
            .or_insert_with(|| Track {
                client_order_id: order.order.client_order_id.as_str().to_string(),
                symbol: order.order.symbol.clone(),
                coin: coin.to_string(),
                quantity: order.order.quantity.get(),
                ioc: order.order.order_type == OrderType::Market
                    || order.order.time_in_force == TimeInForce::Ioc,
                oid: None,
                filled: Decimal::ZERO,
                notional: Decimal::ZERO,
                fee: Decimal::ZERO,
                status: VenueStatus::Open,
                venue_filled: Decimal::ZERO,
                reason: None,
                ts: now_ns(),
            });
    }

    fn update_track(
        &self,
        cloid: &str,
        oid: Option<u64>,
        status: VenueStatus,
        venue_filled: Decimal,
        reason: Option<String>,
    ) -> Option<VenueOrder> {
        let mut book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(oid) = oid {
            // Fills that came before the answer count now (the answer's state has them).
            book.register_oid(oid, cloid);
        }
        let track = book.by_cloid.get_mut(cloid)?;
        track.set_status(status, venue_filled, reason);
        Some(track.view())
    }

    fn view(&self, cloid: &str) -> Option<VenueOrder> {
        let book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
        book.by_cloid.get(cloid).map(Track::view)
    }

    /// The checks before sending; the wire price and size, or the rejection.
    async fn prepare(&self, order: &Routed) -> Result<(String, Asset, String, String), String> {
        let o = &order.order;
        let coin = self
            .inner
            .coins
            .get(o.symbol.as_str())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "unknown_symbol: {} is not in [execution.live.{}] symbols",
                    o.symbol, self.inner.name
                )
            })?;
        let asset = match self.asset(&coin).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(format!(
                    "unknown_symbol: {coin} is not a Hyperliquid perp (meta)"
                ))
            }
            Err(e) => return Err(format!("venue_unavailable: reading meta: {e}")),
        };
        let qty = o.quantity.get();
        check_size(qty, asset.sz_decimals)?;
        let price = match (o.order_type, o.limit_price) {
            (OrderType::Limit, Some(p)) => {
                check_price(p.get(), asset.sz_decimals)?;
                p.get()
            }
            (OrderType::Limit, None) => {
                return Err("invalid_order: a LIMIT order needs limit_price".into())
            }
            (OrderType::Market, _) => {
                let mid = self
                    .mid(&coin)
                    .await
                    .map_err(|e| format!("venue_unavailable: reading allMids: {e}"))?;
                slippage_price(
                    mid,
                    o.side == Side::Buy,
                    self.inner.settings.slippage_bps,
                    asset.sz_decimals,
                )
                .ok_or_else(|| format!("invalid_order: no valid market price from mid {mid}"))?
            }
        };
        let value = price
            .checked_mul(qty)
            .ok_or("invalid_order: price x quantity overflows")?;
        // A reduce-only order may be smaller (closing what is left of a position); the
        // venue has the last word on it.
        if value < self.inner.min_notional && !o.reduce_only {
            return Err(format!(
                "min_notional: {qty} x {price} = {value} USDC is below Hyperliquid's minimum order value {}",
                self.inner.min_notional
            ));
        }
        let px = decimal_to_wire(price).map_err(|e| format!("tick_size: {e}"))?;
        let sz = decimal_to_wire(qty).map_err(|e| format!("lot_size: {e}"))?;
        Ok((coin, asset, px, sz))
    }

    /// orderStatus by cloid; registers the order so its fills are followed.
    async fn order_status(&self, order: &Routed) -> Result<Option<VenueOrder>, VenueError> {
        let cloid = cloid_for(order.order.client_order_id.as_str());
        let coin = self.inner.coins.get(order.order.symbol.as_str()).cloned();
        let Some(coin) = coin else {
            return Err(VenueError::Refused(format!(
                "unknown_symbol: {}",
                order.order.symbol
            )));
        };
        let answer = self
            .info(json!({"type": "orderStatus", "user": self.inner.user, "oid": cloid}))
            .await?;
        let Some(status) = parse_order_status(&answer).map_err(VenueError::Transient)? else {
            return Ok(None);
        };
        self.track(order, &cloid, &coin);
        let ioc = order.order.order_type == OrderType::Market
            || order.order.time_in_force == TimeInForce::Ioc;
        let (st, reason) = map_status(&status.status, ioc);
        let venue_filled = status
            .orig_sz
            .checked_sub(status.sz)
            .unwrap_or(Decimal::ZERO);
        let view = self.update_track(&cloid, Some(status.oid), st, venue_filled, reason);
        // The venue says more was filled than the fills we saw: fetch the user's fills.
        if view.as_ref().is_some_and(|v| v.filled < venue_filled) {
            self.catch_up_fills().await;
        }
        Ok(self.view(&cloid))
    }

    /// Reads the user's recent fills (`userFills`) and applies those not seen yet; a
    /// malformed one is told, the others applied.
    async fn catch_up_fills(&self) {
        let (fills, bad) = match self
            .info(json!({"type": "userFills", "user": self.inner.user}))
            .await
        {
            Ok(v) => match parse_fill_list(&v) {
                Ok(f) => f,
                Err(e) => {
                    self.problem(
                        "the userFills answer".into(),
                        format!("malformed answer: {e}: {}", excerpt(&v.to_string())),
                    );
                    return;
                }
            },
            Err(e) => {
                warn!(venue = %self.inner.name, "hyperliquid: userFills: {e}");
                return;
            }
        };
        let changed = {
            let mut book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
            book.apply_fills(&fills)
        };
        self.emit(changed);
        self.tell_bad(bad);
    }
}

/// reqwest errors name the URL; ours never carry secrets, but keep the text short.
fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        format!("connection failed: {e}")
    } else {
        e.to_string()
    }
}

fn clip(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Enough of what the venue sent to recognise it in an error event.
fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

impl Exchange for Hyperliquid {
    async fn start(&self, events: mpsc::UnboundedSender<VenueEvent>) -> Result<(), VenueError> {
        self.load_meta().await?;
        *self.inner.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events.clone());
        let me = self.clone();
        tokio::spawn(async move { me.run_stream(events).await });
        Ok(())
    }

    /// Hyperliquid finds an order by its cloid (ours): nothing to write ahead.
    async fn submit(&self, order: &Routed, _write_ahead: super::WriteAhead<'_>) -> Submitted {
        let (coin, asset, px, sz) = match self.prepare(order).await {
            Ok(v) => v,
            Err(reason) => return Submitted::Rejected { reason },
        };
        let o = &order.order;
        let cloid = cloid_for(o.client_order_id.as_str());
        let tif = match (o.order_type, o.time_in_force) {
            (OrderType::Market, _) | (_, TimeInForce::Ioc) => Tif::Ioc,
            _ => Tif::Gtc,
        };
        let action = OrderAction {
            r#type: "order",
            orders: vec![OrderWire {
                a: asset.id,
                b: o.side == Side::Buy,
                p: px,
                s: sz,
                r: o.reduce_only,
                t: OrderTypeWire {
                    limit: LimitWire { tif },
                },
                c: Some(cloid.clone()),
            }],
            grouping: "na",
        };
        // Tracked before sending: a fill on the stream may beat the answer.
        self.track(order, &cloid, &coin);
        let answer = match self.exchange(&action).await {
            Ok(a) => a,
            Err(VenueError::Transient(why)) => return Submitted::Unknown { reason: why },
            Err(VenueError::Refused(why)) => {
                self.update_track(
                    &cloid,
                    None,
                    VenueStatus::Rejected,
                    Decimal::ZERO,
                    Some(why.clone()),
                );
                return Submitted::Rejected {
                    reason: format!("hyperliquid: {why}"),
                };
            }
        };
        match parse_order_answer(&answer) {
            Err(AnswerError::Malformed(why)) => Submitted::Unknown {
                reason: format!("hyperliquid: {why}"),
            },
            Err(AnswerError::Refused(why)) => {
                self.update_track(
                    &cloid,
                    None,
                    VenueStatus::Rejected,
                    Decimal::ZERO,
                    Some(why.clone()),
                );
                Submitted::Rejected {
                    reason: format!("hyperliquid: {why}"),
                }
            }
            // The order was refused. Whatever the words, an order with our cloid may be
            // at the venue already (a second send after a restart is refused as a
            // duplicate): the venue's own record of the cloid decides.
            Ok(OrderAnswer::Error(why)) => match self.order_status(order).await {
                Ok(Some(state))
                    if !(state.status == VenueStatus::Rejected && state.filled.is_zero()) =>
                {
                    info!(venue = %self.inner.name, cloid, why, "hyperliquid: the order is already there");
                    Submitted::Accepted(state)
                }
                Err(e) if is_duplicate_cloid(&why) => Submitted::Unknown {
                    reason: format!("hyperliquid: {why}; orderStatus: {e}"),
                },
                Ok(None) if is_duplicate_cloid(&why) => Submitted::Unknown {
                    reason: format!("hyperliquid: {why}; orderStatus knows no such order yet"),
                },
                _ => {
                    self.update_track(
                        &cloid,
                        None,
                        VenueStatus::Rejected,
                        Decimal::ZERO,
                        Some(why.clone()),
                    );
                    Submitted::Rejected {
                        reason: format!("hyperliquid: {why}"),
                    }
                }
            },
            Ok(OrderAnswer::Resting { oid }) => {
                match self.update_track(&cloid, Some(oid), VenueStatus::Open, Decimal::ZERO, None) {
                    Some(v) => Submitted::Accepted(v),
                    None => Submitted::Unknown {
                        reason: "order not tracked".into(),
                    },
                }
            }
            Ok(OrderAnswer::Filled { oid, total_sz }) => {
                let status = if total_sz >= o.quantity.get() {
                    VenueStatus::Filled
                } else if tif == Tif::Ioc {
                    VenueStatus::Expired
                } else {
                    VenueStatus::Open
                };
                let reason =
                    (status == VenueStatus::Expired).then(|| "IOC remainder expired".to_string());
                let mut view = self.update_track(&cloid, Some(oid), status, total_sz, reason);
                // Filled at once: the fills behind the answer, if the stream has not
                // brought them yet (the figures come from fills only).
                if view.as_ref().is_some_and(|v| v.filled < total_sz) {
                    self.catch_up_fills().await;
                    view = self.view(&cloid);
                }
                match view {
                    Some(v) => Submitted::Accepted(v),
                    None => Submitted::Unknown {
                        reason: "order not tracked".into(),
                    },
                }
            }
        }
    }

    async fn cancel(&self, order: &Routed) -> Result<VenueOrder, VenueError> {
        let cloid = cloid_for(order.order.client_order_id.as_str());
        let coin = self
            .inner
            .coins
            .get(order.order.symbol.as_str())
            .cloned()
            .ok_or_else(|| {
                VenueError::Refused(format!("unknown_symbol: {}", order.order.symbol))
            })?;
        let asset = self
            .asset(&coin)
            .await?
            .ok_or_else(|| VenueError::Refused(format!("unknown_symbol: {coin} not in meta")))?;
        let action = CancelByCloidAction {
            r#type: "cancelByCloid",
            cancels: vec![CancelByCloidWire {
                asset: asset.id,
                cloid: cloid.clone(),
            }],
        };
        let answer = self.exchange(&action).await?;
        let outcome = parse_cancel_answer(&answer).map_err(|e| match e {
            AnswerError::Malformed(w) => VenueError::Transient(w),
            AnswerError::Refused(w) => VenueError::Refused(w),
        })?;
        // Either way, the venue's state of the order now.
        match self.order_status(order).await? {
            Some(state) => Ok(state),
            None => Err(VenueError::Refused(match outcome {
                Some(why) => why,
                None => "the venue knows no such order".into(),
            })),
        }
    }

    async fn query(&self, order: &Routed) -> Result<Option<VenueOrder>, VenueError> {
        self.order_status(order).await
    }

    async fn account(&self) -> Result<AccountState, VenueError> {
        let state = self
            .info(json!({"type": "clearinghouseState", "user": self.inner.user}))
            .await?;
        let orders = self
            .info(json!({"type": "frontendOpenOrders", "user": self.inner.user}))
            .await?;
        let mut account =
            parse_clearinghouse(&state, &self.inner.symbols).map_err(VenueError::Transient)?;
        let open = parse_open_orders(&orders).map_err(VenueError::Transient)?;
        let book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
        for o in open {
            let track = o
                .cloid
                .as_ref()
                .and_then(|c| book.by_cloid.get(&c.to_ascii_lowercase()))
                .or_else(|| {
                    book.oid_to_cloid
                        .get(&o.oid)
                        .and_then(|c| book.by_cloid.get(c))
                });
            let order = match track {
                Some(t) => {
                    let mut v = t.view();
                    v.venue_order_id = Some(o.oid.to_string());
                    v.status = VenueStatus::Open;
                    v
                }
                None => VenueOrder {
                    client_order_id: None,
                    venue_order_id: Some(o.oid.to_string()),
                    symbol: self.inner.symbols.get(&o.coin).cloned(),
                    venue_symbol: o.coin.clone(),
                    status: VenueStatus::Open,
                    filled: o.orig_sz.checked_sub(o.sz).unwrap_or(Decimal::ZERO),
                    filled_notional: Decimal::ZERO,
                    fee: Decimal::ZERO,
                    reason: None,
                    ts: o.ts.saturating_mul(1_000_000),
                },
            };
            account.open_orders.push(order);
        }
        Ok(account)
    }

    fn unknown_deadline(&self) -> Duration {
        match self.inner.settings.expires_after_ms {
            // The nonce window: a nonce older than 2 days is refused.
            0 => Duration::from_secs(2 * 24 * 3600),
            ms => Duration::from_millis(ms) + Duration::from_secs(2),
        }
    }

    fn forget(&self, client_order_id: &str) {
        let cloid = cloid_for(client_order_id);
        let mut book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
        if book.by_cloid.remove(&cloid).is_some() {
            book.oid_to_cloid.retain(|_, c| *c != cloid);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The WebSocket user feeds.

impl Hyperliquid {
    async fn run_stream(self, events: mpsc::UnboundedSender<VenueEvent>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            if events.is_closed() {
                return;
            }
            let why = match self.stream_once(&events, &mut backoff).await {
                Ok(()) => return,
                Err(why) => why,
            };
            warn!(venue = %self.inner.name, "hyperliquid stream: {why}; reconnecting in {backoff:?}");
            self.health(false, why);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One connection; `Ok` only when the events receiver is gone.
    async fn stream_once(
        &self,
        events: &mpsc::UnboundedSender<VenueEvent>,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let timeout = Duration::from_millis(self.inner.settings.timeout_ms.max(1));
        let url = self.inner.ws_url.clone();
        let (mut ws, _) =
            tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .map_err(|_| format!("{url}: connect timeout"))?
                .map_err(|e| format!("{url}: {e}"))?;
        for feed in ["userFills", "orderUpdates"] {
            let sub = json!({"method": "subscribe", "subscription": {"type": feed, "user": self.inner.user}});
            ws.send(Message::Text(sub.to_string().into()))
                .await
                .map_err(|e| format!("subscribing {feed}: {e}"))?;
        }
        *backoff = Duration::from_secs(1);
        self.health(true, format!("{url}: subscribed userFills, orderUpdates"));
        // A ping after `ping` of silence, dead after twice that (the shared read deadline).
        let ping = Duration::from_secs(self.inner.settings.ping_secs.max(1));
        let mut liveness = ReadDeadline::new(ping * 2, Some(ping));
        loop {
            if events.is_closed() {
                return Ok(());
            }
            let message = tokio::select! {
                message = ws.next() => message,
                due = liveness.due() => {
                    match due {
                        Due::Ping => ws
                            .send(Message::Text(r#"{"method":"ping"}"#.into()))
                            .await
                            .map_err(|e| format!("ping: {e}"))?,
                        Due::Dead(silent) => return Err(format!("nothing heard for {silent:?}")),
                    }
                    continue;
                }
            };
            match message {
                None => return Err("closed by the venue".into()),
                Some(Err(e)) => return Err(format!("read: {e}")),
                Some(Ok(msg)) => {
                    liveness.heard();
                    match msg {
                        Message::Text(text) => self.on_frame(text.as_str()),
                        Message::Close(frame) => {
                            return Err(format!("closed by the venue: {frame:?}"))
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn on_frame(&self, text: &str) {
        match parse_frame(text) {
            Ok(WsFrame::Fills {
                user,
                fills,
                snapshot,
                bad,
            }) => {
                if !user.eq_ignore_ascii_case(&self.inner.user) {
                    warn!(venue = %self.inner.name, "hyperliquid: userFills for another user ignored");
                    return;
                }
                debug!(
                    n = fills.len(),
                    bad = bad.len(),
                    snapshot,
                    "hyperliquid: fills"
                );
                // The well-formed fills are applied; a malformed one is told, not applied
                // (a snapshot or the REST catch-up brings it again: told once, throttled).
                let changed = {
                    let mut book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
                    book.apply_fills(&fills)
                };
                self.emit(changed);
                self.tell_bad(bad);
            }
            Ok(WsFrame::OrderUpdates { updates, bad }) => {
                let changed = {
                    let mut book = self.inner.book.lock().unwrap_or_else(|e| e.into_inner());
                    book.apply_updates(&updates)
                };
                self.emit(changed);
                self.tell_bad(bad);
            }
            Ok(WsFrame::Error(why)) => {
                // E.g. a subscription refused: then no fills arrive at all.
                let why: String = why.chars().take(300).collect();
                self.problem("the stream".into(), format!("error frame: {why}"));
            }
            Ok(WsFrame::Other) => {}
            Err(why) => {
                // Nothing of it is applied (it may be a fill list whose user cannot be read).
                self.problem(
                    "the stream".into(),
                    format!("malformed frame: {why}: {}", excerpt(text)),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Wire types (field order = the SDK's: msgpack keeps it and the hash depends on it).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Tif {
    Gtc,
    Ioc,
    Alo,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitWire {
    pub tif: Tif,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderTypeWire {
    pub limit: LimitWire,
}

/// `order_request_to_order_wire`: a, b, p, s, r, t, then c only when set.
#[derive(Debug, Clone, Serialize)]
pub struct OrderWire {
    pub a: u32,
    pub b: bool,
    pub p: String,
    pub s: String,
    pub r: bool,
    pub t: OrderTypeWire,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
}

/// `order_wires_to_order_action`: type, orders, grouping.
#[derive(Debug, Clone, Serialize)]
pub struct OrderAction {
    pub r#type: &'static str,
    pub orders: Vec<OrderWire>,
    pub grouping: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct CancelByCloidWire {
    pub asset: u32,
    pub cloid: String,
}

/// `bulk_cancel_by_cloid`: type, cancels [{asset, cloid}].
#[derive(Debug, Clone, Serialize)]
pub struct CancelByCloidAction {
    pub r#type: &'static str,
    pub cancels: Vec<CancelByCloidWire>,
}

/// The r, s, v of a signature as the SDK sends it (`to_hex` of the integers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signature {
    pub r: String,
    pub s: String,
    pub v: u8,
}

// ---------------------------------------------------------------------------------------
// Signing (hyperliquid/utils/signing.py).

fn keccak(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// `msgpack.packb(action)`: maps with string keys in field order, compact integers.
pub fn msgpack<A: Serialize>(action: &A) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(action).map_err(|e| e.to_string())
}

/// `action_hash(action, vault_address, nonce, expires_after)`.
pub fn action_hash<A: Serialize>(
    action: &A,
    vault: Option<&[u8; 20]>,
    nonce: u64,
    expires_after: Option<u64>,
) -> Result<[u8; 32], String> {
    let mut data = msgpack(action)?;
    data.extend_from_slice(&nonce.to_be_bytes());
    match vault {
        None => data.push(0),
        Some(addr) => {
            data.push(1);
            data.extend_from_slice(addr);
        }
    }
    if let Some(exp) = expires_after {
        data.push(0);
        data.extend_from_slice(&exp.to_be_bytes());
    }
    Ok(keccak(&data))
}

/// The EIP-712 digest of the phantom agent `{source, connectionId}` (`l1_payload`).
pub fn agent_digest(connection_id: &[u8; 32], mainnet: bool) -> [u8; 32] {
    let domain_type = keccak(
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
    );
    let mut chain_id = [0u8; 32];
    chain_id[24..].copy_from_slice(&1337u64.to_be_bytes());
    let mut domain = Vec::with_capacity(5 * 32);
    domain.extend_from_slice(&domain_type);
    domain.extend_from_slice(&keccak(b"Exchange"));
    domain.extend_from_slice(&keccak(b"1"));
    domain.extend_from_slice(&chain_id);
    domain.extend_from_slice(&[0u8; 32]); // verifyingContract 0x000...0
    let domain_separator = keccak(&domain);
    let agent_type = keccak(b"Agent(string source,bytes32 connectionId)");
    let mut message = Vec::with_capacity(3 * 32);
    message.extend_from_slice(&agent_type);
    message.extend_from_slice(&keccak(if mainnet { b"a" } else { b"b" }));
    message.extend_from_slice(connection_id);
    let struct_hash = keccak(&message);
    let mut full = Vec::with_capacity(66);
    full.extend_from_slice(&[0x19, 0x01]);
    full.extend_from_slice(&domain_separator);
    full.extend_from_slice(&struct_hash);
    keccak(&full)
}

/// `to_hex(int)`: 0x and the hex digits without leading zeros.
fn int_hex(bytes: &[u8]) -> String {
    let h = hex::encode(bytes);
    let trimmed = h.trim_start_matches('0');
    format!("0x{}", if trimmed.is_empty() { "0" } else { trimmed })
}

/// `sign_l1_action(wallet, action, active_pool, nonce, expires_after, is_mainnet)`.
pub fn sign_l1_action<A: Serialize>(
    key: &SigningKey,
    action: &A,
    vault: Option<&[u8; 20]>,
    nonce: u64,
    expires_after: Option<u64>,
    mainnet: bool,
) -> Result<Signature, String> {
    let hash = action_hash(action, vault, nonce, expires_after)?;
    let digest = agent_digest(&hash, mainnet);
    let (sig, recid) = key
        .sign_prehash_recoverable(&digest)
        .map_err(|e| e.to_string())?;
    let bytes = sig.to_bytes();
    Ok(Signature {
        r: int_hex(&bytes[..32]),
        s: int_hex(&bytes[32..]),
        v: 27 + recid.to_byte(),
    })
}

fn parse_key(text: &str) -> Result<SigningKey, String> {
    let hex_part = text.trim().strip_prefix("0x").unwrap_or(text.trim());
    let bytes = hex::decode(hex_part).map_err(|_| "not hex".to_string())?;
    if bytes.len() != 32 {
        return Err(format!("{} bytes, not 32", bytes.len()));
    }
    SigningKey::from_slice(&bytes).map_err(|_| "not a valid secp256k1 key".to_string())
}

/// The Ethereum address of a key (lowercase 0x-hex).
pub fn address_of(key: &SigningKey) -> String {
    let point = key.verifying_key().to_encoded_point(false);
    let hash = keccak(&point.as_bytes()[1..]);
    format!("0x{}", hex::encode(&hash[12..]))
}

/// Our client order id -> the 16-byte cloid: the first 16 bytes of sha256 of it.
pub fn cloid_for(client_order_id: &str) -> String {
    let digest = Sha256::digest(client_order_id.as_bytes());
    format!("0x{}", hex::encode(&digest[..16]))
}

// ---------------------------------------------------------------------------------------
// Numbers.

/// `float_to_wire` for an exact decimal: at most 8 decimals (more would be rounded by the
/// SDK: refused), trailing zeros removed, "-0" as "0".
pub fn decimal_to_wire(x: Decimal) -> Result<String, String> {
    let n = x.normalize();
    if n.scale() > 8 {
        return Err(format!("{x} has more than 8 decimals"));
    }
    if n.is_zero() {
        return Ok("0".into());
    }
    Ok(n.to_string())
}

fn sig_figs(x: Decimal) -> u32 {
    let n = x.normalize();
    let mut m = n.mantissa().unsigned_abs();
    let mut digits = 0;
    while m > 0 {
        m /= 10;
        digits += 1;
    }
    digits
}

/// Sizes: a multiple of 10^-szDecimals, never rounded.
pub fn check_size(qty: Decimal, sz_decimals: u32) -> Result<(), String> {
    if qty <= Decimal::ZERO {
        return Err(format!("lot_size: size {qty} must be positive"));
    }
    if qty.normalize().scale() > sz_decimals {
        return Err(format!(
            "lot_size: size {qty} is not a multiple of {} (szDecimals {sz_decimals})",
            Decimal::new(1, sz_decimals)
        ));
    }
    Ok(())
}

/// Perp prices: at most 5 significant figures unless an integer, at most 6 - szDecimals
/// decimals.
pub fn check_price(px: Decimal, sz_decimals: u32) -> Result<(), String> {
    if px <= Decimal::ZERO {
        return Err(format!("tick_size: price {px} must be positive"));
    }
    let n = px.normalize();
    let max_dp = PERP_MAX_DECIMALS.saturating_sub(sz_decimals);
    if n.scale() > max_dp {
        return Err(format!(
            "tick_size: price {px} has more than {max_dp} decimals (6 - szDecimals {sz_decimals})"
        ));
    }
    if n.scale() > 0 && sig_figs(n) > MAX_SIG_FIGS {
        return Err(format!(
            "tick_size: price {px} has more than 5 significant figures"
        ));
    }
    Ok(())
}

/// `_slippage_price`: mid x (1 +- slippage), 5 significant figures, then 6 - szDecimals
/// decimals (half to even, as Python's formatting and `round`).
pub fn slippage_price(mid: Decimal, buy: bool, bps: u64, sz_decimals: u32) -> Option<Decimal> {
    let slip = Decimal::new(i64::try_from(bps).ok()?, 4);
    let factor = if buy {
        Decimal::ONE.checked_add(slip)?
    } else {
        Decimal::ONE.checked_sub(slip)?
    };
    if factor <= Decimal::ZERO {
        return None;
    }
    let px = mid.checked_mul(factor)?;
    let px = px.round_sf_with_strategy(MAX_SIG_FIGS, RoundingStrategy::MidpointNearestEven)?;
    let px = px.round_dp_with_strategy(
        PERP_MAX_DECIMALS.saturating_sub(sz_decimals),
        RoundingStrategy::MidpointNearestEven,
    );
    (px > Decimal::ZERO).then(|| px.normalize())
}

fn dec(text: &str) -> Result<Decimal, String> {
    Decimal::from_str(text.trim()).map_err(|e| format!("{text:?} is not a decimal: {e}"))
}

// ---------------------------------------------------------------------------------------
// Parsing the venue's answers and frames.

/// `meta.universe`: coin -> asset id (the index) and szDecimals.
pub fn parse_meta(meta: &Value) -> Result<HashMap<String, Asset>, String> {
    let universe = meta
        .get("universe")
        .and_then(Value::as_array)
        .ok_or("meta without universe")?;
    let mut out = HashMap::new();
    for (i, a) in universe.iter().enumerate() {
        let name = a
            .get("name")
            .and_then(Value::as_str)
            .ok_or(format!("meta.universe[{i}] without name"))?;
        let sz = a
            .get("szDecimals")
            .and_then(Value::as_u64)
            .filter(|d| *d <= 8)
            .ok_or(format!("meta.universe[{i}] without valid szDecimals"))?;
        let id = u32::try_from(i).map_err(|_| "meta too long")?;
        out.insert(
            name.to_string(),
            Asset {
                id,
                sz_decimals: sz as u32,
            },
        );
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderAnswer {
    Resting { oid: u64 },
    Filled { oid: u64, total_sz: Decimal },
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AnswerError {
    /// `{"status":"err","response":"..."}`: the action was refused whole.
    Refused(String),
    /// Not an answer we can read: the outcome is unknown.
    Malformed(String),
}

fn answer_statuses(answer: &Value) -> Result<&Vec<Value>, AnswerError> {
    match answer.get("status").and_then(Value::as_str) {
        Some("ok") => {}
        Some("err") => {
            let why = match answer.get("response") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "refused".into(),
            };
            return Err(AnswerError::Refused(why));
        }
        _ => {
            return Err(AnswerError::Malformed(format!(
                "unexpected answer {}",
                clip(&answer.to_string())
            )))
        }
    }
    answer
        .pointer("/response/data/statuses")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            AnswerError::Malformed(format!(
                "answer without statuses: {}",
                clip(&answer.to_string())
            ))
        })
}

/// The answer to an order action with one order.
pub fn parse_order_answer(answer: &Value) -> Result<OrderAnswer, AnswerError> {
    let st = &answer_statuses(answer)?[0];
    if let Some(oid) = st.pointer("/resting/oid").and_then(Value::as_u64) {
        return Ok(OrderAnswer::Resting { oid });
    }
    if let Some(f) = st.get("filled") {
        let oid = f.get("oid").and_then(Value::as_u64);
        let total = f.get("totalSz").and_then(Value::as_str).map(dec);
        if let (Some(oid), Some(Ok(total_sz))) = (oid, total) {
            return Ok(OrderAnswer::Filled { oid, total_sz });
        }
    }
    if let Some(e) = st.get("error").and_then(Value::as_str) {
        return Ok(OrderAnswer::Error(e.to_string()));
    }
    Err(AnswerError::Malformed(format!(
        "unreadable order status {}",
        clip(&st.to_string())
    )))
}

/// The answer to a cancel: `None` for "success", the venue's words otherwise.
pub fn parse_cancel_answer(answer: &Value) -> Result<Option<String>, AnswerError> {
    let st = &answer_statuses(answer)?[0];
    if st.as_str() == Some("success") {
        return Ok(None);
    }
    if let Some(e) = st.get("error").and_then(Value::as_str) {
        return Ok(Some(e.to_string()));
    }
    Err(AnswerError::Malformed(format!(
        "unreadable cancel status {}",
        clip(&st.to_string())
    )))
}

fn is_duplicate_cloid(why: &str) -> bool {
    let w = why.to_ascii_lowercase();
    w.contains("duplicate") && w.contains("cloid")
}

/// The venue's order status words -> ours.
pub fn map_status(status: &str, ioc: bool) -> (VenueStatus, Option<String>) {
    match status {
        "open" | "triggered" | "accepted" => (VenueStatus::Open, None),
        "filled" => (VenueStatus::Filled, None),
        "canceled" if ioc => (VenueStatus::Expired, Some("IOC remainder expired".into())),
        "iocCancelRejected" => (VenueStatus::Expired, Some(status.into())),
        s if s.ends_with("Rejected") || s == "rejected" => (VenueStatus::Rejected, Some(s.into())),
        s => (VenueStatus::Cancelled, Some(s.into())),
    }
}

/// One order's fields in orderStatus, orderUpdates, frontendOpenOrders.
#[derive(Debug, Clone, PartialEq)]
pub struct WireOrder {
    pub coin: String,
    pub oid: u64,
    pub sz: Decimal,
    pub orig_sz: Decimal,
    pub cloid: Option<String>,
    pub ts: u64,
}

fn parse_wire_order(o: &Value) -> Result<WireOrder, String> {
    let s = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .ok_or(format!("order without {k}"))
    };
    let sz = dec(s("sz")?)?;
    Ok(WireOrder {
        coin: s("coin")?.to_string(),
        oid: o
            .get("oid")
            .and_then(Value::as_u64)
            .ok_or("order without oid")?,
        sz,
        orig_sz: match o.get("origSz").and_then(Value::as_str) {
            Some(t) => dec(t)?,
            None => sz,
        },
        cloid: o
            .get("cloid")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        ts: o.get("timestamp").and_then(Value::as_u64).unwrap_or(0),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderStatusAnswer {
    pub oid: u64,
    pub sz: Decimal,
    pub orig_sz: Decimal,
    pub status: String,
}

/// `orderStatus`: `None` for unknownOid.
pub fn parse_order_status(answer: &Value) -> Result<Option<OrderStatusAnswer>, String> {
    match answer.get("status").and_then(Value::as_str) {
        Some("unknownOid") => Ok(None),
        Some("order") => {
            let o = answer
                .pointer("/order/order")
                .ok_or("orderStatus without order.order")?;
            let w = parse_wire_order(o)?;
            let status = answer
                .pointer("/order/status")
                .and_then(Value::as_str)
                .ok_or("orderStatus without order.status")?;
            Ok(Some(OrderStatusAnswer {
                oid: w.oid,
                sz: w.sz,
                orig_sz: w.orig_sz,
                status: status.into(),
            }))
        }
        _ => Err(format!(
            "unexpected orderStatus answer {}",
            clip(&answer.to_string())
        )),
    }
}

pub fn parse_open_orders(answer: &Value) -> Result<Vec<WireOrder>, String> {
    answer
        .as_array()
        .ok_or("open orders: not a list")?
        .iter()
        .map(parse_wire_order)
        .collect()
}

/// `clearinghouseState` -> equity (accountValue), cash (withdrawable), the USDC balance
/// (totalRawUsd) and the positions of the coins we map (szi signed: short < 0).
pub fn parse_clearinghouse(
    state: &Value,
    symbols: &BTreeMap<String, Symbol>,
) -> Result<AccountState, String> {
    let field = |p: &str| -> Result<Decimal, String> {
        dec(state
            .pointer(p)
            .and_then(Value::as_str)
            .ok_or(format!("clearinghouseState without {p}"))?)
    };
    let equity = field("/marginSummary/accountValue")?;
    let cash = field("/withdrawable")?;
    let raw = field("/marginSummary/totalRawUsd").unwrap_or(equity);
    let mut positions = Vec::new();
    for p in state
        .get("assetPositions")
        .and_then(Value::as_array)
        .ok_or("clearinghouseState without assetPositions")?
    {
        let pos = p.get("position").ok_or("assetPosition without position")?;
        let coin = pos
            .get("coin")
            .and_then(Value::as_str)
            .ok_or("position without coin")?;
        let szi = dec(pos
            .get("szi")
            .and_then(Value::as_str)
            .ok_or("position without szi")?)?;
        let entry = match pos.get("entryPx").and_then(Value::as_str) {
            Some(t) => Some(dec(t)?),
            None => None,
        };
        match symbols.get(coin) {
            Some(symbol) => positions.push(VenuePosition {
                symbol: symbol.clone(),
                quantity: szi,
                entry_price: entry,
            }),
            None => debug!(coin, "hyperliquid: position in a coin not mapped"),
        }
    }
    Ok(AccountState {
        balances: vec![VenueBalance {
            asset: QUOTE.into(),
            total: raw,
        }],
        positions,
        open_orders: Vec::new(),
        equity: Some(equity),
        cash: Some(cash),
    })
}

/// One fill of `userFills`.
#[derive(Debug, Clone, PartialEq)]
pub struct WsFill {
    pub coin: String,
    pub px: Decimal,
    pub sz: Decimal,
    pub oid: u64,
    pub tid: u64,
    pub fee: Decimal,
    pub fee_token: Option<String>,
    pub cloid: Option<String>,
    pub time: u64,
}

fn parse_fill(f: &Value) -> Result<WsFill, String> {
    let s = |k: &str| {
        f.get(k)
            .and_then(Value::as_str)
            .ok_or(format!("fill without {k}"))
    };
    let u = |k: &str| {
        f.get(k)
            .and_then(Value::as_u64)
            .ok_or(format!("fill without {k}"))
    };
    let px = dec(s("px")?)?;
    let sz = dec(s("sz")?)?;
    if px <= Decimal::ZERO || sz <= Decimal::ZERO {
        return Err(format!("fill with px {px} sz {sz}"));
    }
    Ok(WsFill {
        coin: s("coin")?.to_string(),
        px,
        sz,
        oid: u("oid")?,
        tid: u("tid")?,
        fee: dec(s("fee")?)?,
        fee_token: f
            .get("feeToken")
            .and_then(Value::as_str)
            .map(str::to_string),
        cloid: f
            .get("cloid")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        time: u("time")?,
    })
}

/// An item of a list (a fill of `userFills`, an update of `orderUpdates`) that could not be
/// read: not applied, told (`VenueEvent::Problem`); the list's other items are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct BadItem {
    /// Whose it is, as far as it can be read (to name our order when it is ours).
    pub oid: Option<u64>,
    pub cloid: Option<String>,
    /// What it is, why it cannot be read, and an excerpt of it: `malformed fill tid 12,
    /// oid 5: fill with px -1 sz 1: {...}`.
    pub why: String,
}

impl BadItem {
    fn of(kind: &str, item: &Value, why: String) -> Self {
        let int = |k: &str| item.get(k).and_then(Value::as_u64);
        // A fill names its order at the top; an order update inside `order`.
        let order = item.get("order").filter(|o| o.is_object()).unwrap_or(item);
        let oid = order.get("oid").and_then(Value::as_u64);
        let cloid = order
            .get("cloid")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        let mut ids = Vec::new();
        if let Some(tid) = int("tid") {
            ids.push(format!("tid {tid}"));
        }
        if let Some(oid) = oid {
            ids.push(format!("oid {oid}"));
        }
        let ids = if ids.is_empty() {
            String::new()
        } else {
            format!(" {}", ids.join(", "))
        };
        // All of it that fits (a whole fill is ~400 characters): its fields are sorted by
        // name, so 200 would cut it before px and sz.
        let item: String = item.to_string().chars().take(400).collect();
        BadItem {
            oid,
            cloid,
            why: format!("malformed {kind}{ids}: {why}: {item}"),
        }
    }
}

/// A list of fills (a `userFills` frame's, or the `userFills` info answer): the fills read,
/// and those that could not be (each alone: one malformed fill loses no other). `Err` only
/// when it is not a list at all.
pub fn parse_fill_list(v: &Value) -> Result<(Vec<WsFill>, Vec<BadItem>), String> {
    let mut fills = Vec::new();
    let mut bad = Vec::new();
    for f in v.as_array().ok_or("fills: not a list")? {
        match parse_fill(f) {
            Ok(fill) => fills.push(fill),
            Err(why) => bad.push(BadItem::of("fill", f, why)),
        }
    }
    Ok((fills, bad))
}

fn parse_order_update(u: &Value) -> Result<WsOrderUpdate, String> {
    let o = parse_wire_order(u.get("order").ok_or("orderUpdate without order")?)?;
    let status = u
        .get("status")
        .and_then(Value::as_str)
        .ok_or("orderUpdate without status")?;
    Ok(WsOrderUpdate {
        oid: o.oid,
        cloid: o.cloid,
        sz: o.sz,
        orig_sz: o.orig_sz,
        status: status.to_string(),
        ts: u
            .get("statusTimestamp")
            .and_then(Value::as_u64)
            .unwrap_or(o.ts),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct WsOrderUpdate {
    pub oid: u64,
    pub cloid: Option<String>,
    pub sz: Decimal,
    pub orig_sz: Decimal,
    pub status: String,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WsFrame {
    /// The fills read, and the list's malformed ones (told, not applied).
    Fills {
        user: String,
        snapshot: bool,
        fills: Vec<WsFill>,
        bad: Vec<BadItem>,
    },
    /// The updates read, and the list's malformed ones (told, not applied).
    OrderUpdates {
        updates: Vec<WsOrderUpdate>,
        bad: Vec<BadItem>,
    },
    Error(String),
    /// pong, subscriptionResponse, other channels.
    Other,
}

/// One text frame of the WebSocket.
pub fn parse_frame(text: &str) -> Result<WsFrame, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let channel = v
        .get("channel")
        .and_then(Value::as_str)
        .ok_or("frame without channel")?;
    let data = v.get("data");
    match channel {
        "userFills" => {
            let data = data.ok_or("userFills without data")?;
            let user = data
                .get("user")
                .and_then(Value::as_str)
                .ok_or("userFills without user")?;
            let snapshot = data
                .get("isSnapshot")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let (fills, bad) =
                parse_fill_list(data.get("fills").ok_or("userFills without fills")?)?;
            Ok(WsFrame::Fills {
                user: user.to_string(),
                snapshot,
                fills,
                bad,
            })
        }
        "orderUpdates" => {
            let list = data
                .and_then(Value::as_array)
                .ok_or("orderUpdates without a list")?;
            let mut updates = Vec::with_capacity(list.len());
            let mut bad = Vec::new();
            for u in list {
                match parse_order_update(u) {
                    Ok(update) => updates.push(update),
                    Err(why) => bad.push(BadItem::of("order update", u, why)),
                }
            }
            Ok(WsFrame::OrderUpdates { updates, bad })
        }
        "error" => Ok(WsFrame::Error(match data {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "error".into(),
        })),
        _ => Ok(WsFrame::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The private key of the SDK's tests/signing_test.py.
    const SDK_KEY: &str = "0x0123456789012345678901234567890123456789012345678901234567890123";

    fn key() -> SigningKey {
        parse_key(SDK_KEY).unwrap()
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn sig(r: &str, s: &str, v: u8) -> Signature {
        Signature {
            r: r.into(),
            s: s.into(),
            v,
        }
    }

    fn order_action(a: u32, p: &str, s: &str, tif: Tif, c: Option<&str>) -> OrderAction {
        OrderAction {
            r#type: "order",
            orders: vec![OrderWire {
                a,
                b: true,
                p: p.into(),
                s: s.into(),
                r: false,
                t: OrderTypeWire {
                    limit: LimitWire { tif },
                },
                c: c.map(str::to_string),
            }],
            grouping: "na",
        }
    }

    /// `{"type": "dummy", "num": float_to_int_for_hashing(1000)}`.
    #[derive(Serialize)]
    struct Dummy {
        r#type: &'static str,
        num: u64,
    }

    #[test]
    fn phantom_agent_matches_production() {
        // signing_test.py test_phantom_agent_creation_matches_production: ETH (asset 4),
        // buy 0.0147 at 1670.1 IOC, nonce 1677777606040.
        let action = order_action(
            4,
            &decimal_to_wire(d("1670.1")).unwrap(),
            &decimal_to_wire(d("0.0147")).unwrap(),
            Tif::Ioc,
            None,
        );
        let hash = action_hash(&action, None, 1677777606040, None).unwrap();
        assert_eq!(
            hex::encode(hash),
            "0fcbeda5ae3c4950a548021552a4fea2226858c4453571bf3f24ba017eac2908"
        );
    }

    #[test]
    fn l1_action_signing_matches() {
        // signing_test.py test_l1_action_signing_matches.
        let action = Dummy {
            r#type: "dummy",
            num: 100_000_000_000,
        };
        assert_eq!(
            sign_l1_action(&key(), &action, None, 0, None, true).unwrap(),
            sig(
                "0x53749d5b30552aeb2fca34b530185976545bb22d0b3ce6f62e31be961a59298",
                "0x755c40ba9bf05223521753995abb2f73ab3229be8ec921f350cb447e384d8ed8",
                27
            )
        );
        assert_eq!(
            sign_l1_action(&key(), &action, None, 0, None, false).unwrap(),
            sig(
                "0x542af61ef1f429707e3c76c5293c80d01f74ef853e34b76efffcb57e574f9510",
                "0x17b8b32f086e8cdede991f1e2c529f5dd5297cbe8128500e00cbaf766204a613",
                28
            )
        );
    }

    #[test]
    fn l1_action_signing_with_vault_matches() {
        // signing_test.py test_l1_action_signing_matches_with_vault.
        let action = Dummy {
            r#type: "dummy",
            num: 100_000_000_000,
        };
        let vault = parse_address("0x1719884eb866cb12b2287399b15f7db5e7d775ea", "vault").unwrap();
        assert_eq!(
            sign_l1_action(&key(), &action, Some(&vault), 0, None, true).unwrap(),
            sig(
                "0x3c548db75e479f8012acf3000ca3a6b05606bc2ec0c29c50c515066a326239",
                "0x4d402be7396ce74fbba3795769cda45aec00dc3125a984f2a9f23177b190da2c",
                28
            )
        );
        assert_eq!(
            sign_l1_action(&key(), &action, Some(&vault), 0, None, false).unwrap(),
            sig(
                "0xe281d2fb5c6e25ca01601f878e4d69c965bb598b88fac58e475dd1f5e56c362b",
                "0x7ddad27e9a238d045c035bc606349d075d5c5cd00a6cd1da23ab5c39d4ef0f60",
                27
            )
        );
    }

    #[test]
    fn l1_action_signing_order_matches() {
        // signing_test.py test_l1_action_signing_order_matches: ETH asset 1, buy sz 100
        // at 100 GTC, no cloid, nonce 0.
        let action = order_action(
            1,
            &decimal_to_wire(d("100")).unwrap(),
            &decimal_to_wire(d("100")).unwrap(),
            Tif::Gtc,
            None,
        );
        assert_eq!(
            sign_l1_action(&key(), &action, None, 0, None, true).unwrap(),
            sig(
                "0xd65369825a9df5d80099e513cce430311d7d26ddf477f5b3a33d2806b100d78e",
                "0x2b54116ff64054968aa237c20ca9ff68000f977c93289157748a3162b6ea940e",
                28
            )
        );
        assert_eq!(
            sign_l1_action(&key(), &action, None, 0, None, false).unwrap(),
            sig(
                "0x82b2ba28e76b3d761093aaded1b1cdad4960b3af30212b343fb2e6cdfa4e3d54",
                "0x6b53878fc99d26047f4d7e8c90eb98955a109f44209163f52d8dc4278cbbd9f5",
                27
            )
        );
    }

    #[test]
    fn l1_action_signing_order_with_cloid_matches() {
        // signing_test.py test_l1_action_signing_order_with_cloid_matches.
        let action = order_action(
            1,
            "100",
            "100",
            Tif::Gtc,
            Some("0x00000000000000000000000000000001"),
        );
        assert_eq!(
            sign_l1_action(&key(), &action, None, 0, None, true).unwrap(),
            sig(
                "0x41ae18e8239a56cacbc5dad94d45d0b747e5da11ad564077fcac71277a946e3",
                "0x3c61f667e747404fe7eea8f90ab0e76cc12ce60270438b2058324681a00116da",
                27
            )
        );
        assert_eq!(
            sign_l1_action(&key(), &action, None, 0, None, false).unwrap(),
            sig(
                "0xeba0664bed2676fc4e5a743bf89e5c7501aa6d870bdb9446e122c9466c5cd16d",
                "0x7f3e74825c9114bc59086f1eebea2928c190fdfbfde144827cb02b85bbe90988",
                28
            )
        );
    }

    #[test]
    fn msgpack_bytes_match_python_msgpack() {
        // msgpack.packb({"type":"cancelByCloid","cancels":[{"asset":3,"cloid":"0x..01"}]}):
        // fixmap(2) "type" ... in field order, fixarray(1), fixmap(2), positive fixint 3.
        let action = CancelByCloidAction {
            r#type: "cancelByCloid",
            cancels: vec![CancelByCloidWire {
                asset: 3,
                cloid: "0x00000000000000000000000000000001".into(),
            }],
        };
        let bytes = msgpack(&action).unwrap();
        let mut expected = vec![0x82, 0xa4];
        expected.extend_from_slice(b"type");
        expected.push(0xad);
        expected.extend_from_slice(b"cancelByCloid");
        expected.push(0xa7);
        expected.extend_from_slice(b"cancels");
        expected.extend_from_slice(&[0x91, 0x82, 0xa5]);
        expected.extend_from_slice(b"asset");
        expected.push(0x03);
        expected.push(0xa5);
        expected.extend_from_slice(b"cloid");
        expected.push(0xd9); // str8: 34 characters
        expected.push(34);
        expected.extend_from_slice(b"0x00000000000000000000000000000001");
        assert_eq!(bytes, expected);
        // An order: a, b, p, s, r, t, c in that order; no "c" key without a cloid.
        let o = msgpack(&order_action(200, "1.5", "2", Tif::Alo, None)).unwrap();
        let text = String::from_utf8_lossy(&o);
        let pos = |k: &str| text.find(k).unwrap();
        assert!(pos("orders") < pos("grouping"));
        assert!(
            o.windows(3).any(|w| w == [0xa1, b'a', 0xcc]),
            "asset 200 as uint8: {o:02x?}"
        );
        assert!(!o.windows(2).any(|w| w == [0xa1, b'c']));
        assert!(text.contains("Alo"));
    }

    #[test]
    fn expires_after_changes_the_hash() {
        let action = Dummy {
            r#type: "dummy",
            num: 1,
        };
        let a = action_hash(&action, None, 5, None).unwrap();
        let b = action_hash(&action, None, 5, Some(10)).unwrap();
        let mut data = msgpack(&action).unwrap();
        data.extend_from_slice(&5u64.to_be_bytes());
        data.push(0);
        data.push(0);
        data.extend_from_slice(&10u64.to_be_bytes());
        assert_ne!(a, b);
        assert_eq!(b, keccak(&data));
    }

    #[test]
    fn signatures_recover_to_the_agent_address() {
        use k256::ecdsa::{RecoveryId, Signature as KSig, VerifyingKey};
        let k = key();
        // The address of the SDK's test key (eth_account.Account.from_key(...).address).
        assert_eq!(address_of(&k), "0x14791697260e4c9a71f18484c9f997b308e59325");
        let action = order_action(0, "50000", "0.001", Tif::Ioc, Some(&cloid_for("abc")));
        let s = sign_l1_action(
            &k,
            &action,
            None,
            1_700_000_000_000,
            Some(1_700_000_015_000),
            false,
        )
        .unwrap();
        let digest = agent_digest(
            &action_hash(&action, None, 1_700_000_000_000, Some(1_700_000_015_000)).unwrap(),
            false,
        );
        let pad = |h: &str| format!("{:0>64}", h.trim_start_matches("0x"));
        let bytes = hex::decode(pad(&s.r) + &pad(&s.s)).unwrap();
        let ksig = KSig::from_slice(&bytes).unwrap();
        let vk = VerifyingKey::recover_from_prehash(
            &digest,
            &ksig,
            RecoveryId::from_byte(s.v - 27).unwrap(),
        )
        .unwrap();
        assert_eq!(vk, *k.verifying_key());
    }

    #[test]
    fn float_to_wire_cases() {
        // float_to_wire: f"{x:.8f}", normalized.
        for (x, wire) in [
            ("100", "100"),
            ("100.00", "100"),
            ("1670.1", "1670.1"),
            ("0.0147", "0.0147"),
            ("0.00000001", "0.00000001"),
            ("123456789", "123456789"),
            ("1e3", "1000"),
            ("0.10000000", "0.1"),
            ("-0", "0"),
        ] {
            let x = Decimal::from_scientific(x)
                .or_else(|_| Decimal::from_str(x))
                .unwrap();
            assert_eq!(decimal_to_wire(x).unwrap(), wire, "{x}");
        }
        // float_to_wire raises "causes rounding" beyond 8 decimals.
        assert!(decimal_to_wire(d("0.000000001")).is_err());
        assert!(decimal_to_wire(d("1.123456789")).is_err());
    }

    #[test]
    fn size_and_price_rules() {
        assert!(check_size(d("0.001"), 3).is_ok());
        assert!(check_size(d("1.2300"), 2).is_ok());
        let e = check_size(d("0.0015"), 3).unwrap_err();
        assert!(e.starts_with("lot_size:") && e.contains("0.001"), "{e}");
        assert!(check_size(d("1.5"), 0).is_err());
        // perps: <= 5 significant figures, <= 6 - szDecimals decimals, integers always ok.
        assert!(check_price(d("123456"), 5).is_ok());
        assert!(check_price(d("1234.5"), 1).is_ok());
        assert!(check_price(d("1234.56"), 1)
            .unwrap_err()
            .contains("significant"));
        assert!(check_price(d("0.0012345"), 0).is_err()); // 7 decimals > 6
        assert!(check_price(d("0.001234"), 0).is_ok());
        assert!(check_price(d("0.01234"), 5)
            .unwrap_err()
            .starts_with("tick_size:")); // 1 decimal max
        assert!(check_price(d("97000.0"), 5).is_ok());
        assert!(check_price(d("97000.5"), 5).is_err());
    }

    #[test]
    fn slippage_price_as_market_open() {
        // round(float(f"{px:.5g}"), 6 - szDecimals)
        // BTC mid 97000.5, buy 50 bps: 97485.5025 -> 97486 (5 sig figs).
        assert_eq!(slippage_price(d("97000.5"), true, 50, 5), Some(d("97486")));
        // ETH mid 1670.1 sell 500 bps: 1586.595 -> 1586.6 (.5g); 6-4=2 decimals.
        assert_eq!(
            slippage_price(d("1670.1"), false, 500, 4),
            Some(d("1586.6"))
        );
        // small coin, mid 0.123456 buy 50 bps = 0.12407328 -> 0.12407 (5 sig), 6-0 dp.
        assert_eq!(
            slippage_price(d("0.123456"), true, 50, 0),
            Some(d("0.12407"))
        );
        // szDecimals caps decimals: mid 1.23456 szDecimals 3 -> 3 decimals.
        assert_eq!(slippage_price(d("1.23456"), true, 0, 3), Some(d("1.235")));
        assert_eq!(slippage_price(d("1"), false, 10_000, 0), None);
        for (mid, sz) in [
            ("97000.5", 5u32),
            ("0.123456", 0),
            ("1670.1", 4),
            ("3.21", 2),
        ] {
            for buy in [true, false] {
                let p = slippage_price(d(mid), buy, 50, sz).unwrap();
                check_price(p, sz).unwrap();
            }
        }
    }

    #[test]
    fn cloid_is_16_bytes_and_deterministic() {
        let c = cloid_for("agent-1-42");
        assert_eq!(c.len(), 34);
        assert!(c.starts_with("0x"));
        assert_eq!(c, cloid_for("agent-1-42"));
        assert_ne!(c, cloid_for("agent-1-43"));
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a3...
        assert_eq!(cloid_for("abc"), "0xba7816bf8f01cfea414140de5dae2223");
    }

    #[test]
    fn order_answers() {
        let resting = json!({"status":"ok","response":{"type":"order","data":{"statuses":[{"resting":{"oid":77738308}}]}}});
        assert_eq!(
            parse_order_answer(&resting),
            Ok(OrderAnswer::Resting { oid: 77738308 })
        );
        let filled = json!({"status":"ok","response":{"type":"order","data":{"statuses":[{"filled":{"totalSz":"0.02","avgPx":"1891.4","oid":77747314}}]}}});
        assert_eq!(
            parse_order_answer(&filled),
            Ok(OrderAnswer::Filled {
                oid: 77747314,
                total_sz: d("0.02")
            })
        );
        let err = json!({"status":"ok","response":{"type":"order","data":{"statuses":[{"error":"Order must have minimum value of $10."}]}}});
        assert_eq!(
            parse_order_answer(&err),
            Ok(OrderAnswer::Error(
                "Order must have minimum value of $10.".into()
            ))
        );
        let refused = json!({"status":"err","response":"User or API Wallet 0x123 does not exist."});
        assert!(
            matches!(parse_order_answer(&refused), Err(AnswerError::Refused(w)) if w.contains("does not exist"))
        );
        for bad in [
            json!({}),
            json!({"status":"ok"}),
            json!({"status":"ok","response":{"data":{"statuses":[]}}}),
            json!({"status":"ok","response":{"data":{"statuses":[{"filled":{"oid":1}}]}}}),
            json!([1]),
        ] {
            assert!(
                matches!(parse_order_answer(&bad), Err(AnswerError::Malformed(_))),
                "{bad}"
            );
        }
        let ok =
            json!({"status":"ok","response":{"type":"cancel","data":{"statuses":["success"]}}});
        assert_eq!(parse_cancel_answer(&ok), Ok(None));
        let gone = json!({"status":"ok","response":{"type":"cancel","data":{"statuses":[{"error":"Order was never placed, already canceled, or filled."}]}}});
        assert!(parse_cancel_answer(&gone)
            .unwrap()
            .unwrap()
            .contains("never placed"));
        assert!(is_duplicate_cloid("Duplicate cloid"));
        assert!(!is_duplicate_cloid("Insufficient margin"));
    }

    #[test]
    fn statuses_and_queries() {
        assert_eq!(map_status("open", false).0, VenueStatus::Open);
        assert_eq!(map_status("filled", true).0, VenueStatus::Filled);
        assert_eq!(map_status("canceled", false).0, VenueStatus::Cancelled);
        assert_eq!(map_status("canceled", true).0, VenueStatus::Expired);
        assert_eq!(
            map_status("marginCanceled", false),
            (VenueStatus::Cancelled, Some("marginCanceled".into()))
        );
        assert_eq!(map_status("tickRejected", false).0, VenueStatus::Rejected);
        assert_eq!(
            map_status("iocCancelRejected", true).0,
            VenueStatus::Expired
        );
        let found = json!({"status":"order","order":{"order":{"coin":"ETH","side":"B","limitPx":"1800.0","sz":"0.5","oid":7,"timestamp":1,"origSz":"2.0","cloid":"0xAB"},"status":"open","statusTimestamp":2}});
        assert_eq!(
            parse_order_status(&found).unwrap(),
            Some(OrderStatusAnswer {
                oid: 7,
                sz: d("0.5"),
                orig_sz: d("2.0"),
                status: "open".into()
            })
        );
        assert_eq!(
            parse_order_status(&json!({"status":"unknownOid"})).unwrap(),
            None
        );
        assert!(parse_order_status(&json!({"status":"order"})).is_err());
        assert!(parse_order_status(&json!("x")).is_err());
    }

    #[test]
    fn meta_and_account() {
        let meta = json!({"universe":[{"name":"BTC","szDecimals":5,"maxLeverage":50},{"name":"ETH","szDecimals":4,"maxLeverage":50}]});
        let assets = parse_meta(&meta).unwrap();
        assert_eq!(
            assets["ETH"],
            Asset {
                id: 1,
                sz_decimals: 4
            }
        );
        assert!(parse_meta(&json!({"universe":[{"name":"X"}]})).is_err());
        assert!(parse_meta(&json!({})).is_err());
        let state = json!({
            "assetPositions":[
                {"position":{"coin":"ETH","szi":"-0.5","entryPx":"1800.5","leverage":{"type":"cross","value":5}},"type":"oneWay"},
                {"position":{"coin":"DOGE","szi":"100","entryPx":"0.1"},"type":"oneWay"}],
            "marginSummary":{"accountValue":"1234.56","totalNtlPos":"900.25","totalRawUsd":"2134.81","totalMarginUsed":"180"},
            "withdrawable":"1000.01"});
        let mut symbols = BTreeMap::new();
        symbols.insert("ETH".to_string(), "ETH-USDC".parse::<Symbol>().unwrap());
        let acc = parse_clearinghouse(&state, &symbols).unwrap();
        assert_eq!(acc.equity, Some(d("1234.56")));
        assert_eq!(acc.cash, Some(d("1000.01")));
        assert_eq!(
            acc.balances,
            vec![VenueBalance {
                asset: "USDC".into(),
                total: d("2134.81")
            }]
        );
        assert_eq!(acc.positions.len(), 1);
        assert_eq!(acc.positions[0].quantity, d("-0.5"));
        assert_eq!(acc.positions[0].entry_price, Some(d("1800.5")));
        assert!(parse_clearinghouse(&json!({"marginSummary":{}}), &symbols).is_err());
        let open = parse_open_orders(&json!([{"coin":"ETH","side":"A","limitPx":"1900","sz":"1","oid":9,"timestamp":5,"origSz":"1.5","cloid":null}])).unwrap();
        assert_eq!(open[0].orig_sz - open[0].sz, d("0.5"));
        assert!(parse_open_orders(&json!({"a":1})).is_err());
    }

    fn fill(oid: u64, tid: u64, px: &str, sz: &str, fee: &str) -> Value {
        json!({"coin":"ETH","px":px,"sz":sz,"side":"B","time":1700000000000u64,"startPosition":"0","dir":"Open Long",
               "closedPnl":"0","hash":"0x0","oid":oid,"crossed":true,"fee":fee,"tid":tid,"feeToken":"USDC"})
    }

    #[test]
    fn ws_frames() {
        let snap = json!({"channel":"userFills","data":{"isSnapshot":true,"user":"0xabc","fills":[fill(1,10,"1800.5","0.1","0.07")]}});
        match parse_frame(&snap.to_string()).unwrap() {
            WsFrame::Fills {
                user,
                snapshot,
                fills,
                bad,
            } => {
                assert_eq!(user, "0xabc");
                assert!(snapshot);
                assert_eq!(fills[0].px, d("1800.5"));
                assert_eq!(fills[0].fee, d("0.07"));
                assert!(bad.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let upd = json!({"channel":"orderUpdates","data":[{"order":{"coin":"ETH","side":"B","limitPx":"1800","sz":"0","oid":1,"timestamp":1,"origSz":"0.1","cloid":"0x01"},"status":"filled","statusTimestamp":3}]});
        assert_eq!(
            parse_frame(&upd.to_string()).unwrap(),
            WsFrame::OrderUpdates {
                updates: vec![WsOrderUpdate {
                    oid: 1,
                    cloid: Some("0x01".into()),
                    sz: d("0"),
                    orig_sz: d("0.1"),
                    status: "filled".into(),
                    ts: 3
                }],
                bad: vec![]
            }
        );
        assert_eq!(
            parse_frame(r#"{"channel":"pong"}"#).unwrap(),
            WsFrame::Other
        );
        assert_eq!(
            parse_frame(r#"{"channel":"subscriptionResponse","data":{"method":"subscribe"}}"#)
                .unwrap(),
            WsFrame::Other
        );
        assert_eq!(
            parse_frame(r#"{"channel":"error","data":"Invalid subscription"}"#).unwrap(),
            WsFrame::Error("Invalid subscription".into())
        );
        // Malformed frames are errors, never panics.
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"channel":"userFills"}"#,
            r#"{"channel":"userFills","data":{"fills":[]}}"#,
            r#"{"channel":"userFills","data":{"user":"0x1","fills":{"px":"1"}}}"#,
            r#"{"channel":"orderUpdates","data":{"x":1}}"#,
        ] {
            assert!(parse_frame(bad).is_err(), "{bad}");
        }
        // A malformed item of a list is that item's error only, never a panic: told (named
        // by what of it can be read), not applied.
        for (item, named) in [
            (r#"{"px":"1"}"#, ""),
            (
                r#"{"coin":"E","px":"abc","sz":"1","oid":1,"tid":1,"fee":"0","time":1}"#,
                " tid 1, oid 1: \"abc\" is not a decimal",
            ),
            (
                r#"{"coin":"E","px":"-1","sz":"1","oid":1,"tid":1,"fee":"0","time":1}"#,
                " tid 1, oid 1: fill with px -1 sz 1",
            ),
            (
                r#"{"coin":"E","px":"1e999","sz":"1","oid":1,"tid":1,"fee":"0","time":1}"#,
                " tid 1, oid 1:",
            ),
            (
                r#"{"coin":"E","px":"1","sz":"1","oid":2,"fee":"0","time":1}"#,
                " oid 2: fill without tid",
            ),
            ("7", ": fill without px"),
        ] {
            let frame =
                format!(r#"{{"channel":"userFills","data":{{"user":"0x1","fills":[{item}]}}}}"#);
            match parse_frame(&frame).unwrap() {
                WsFrame::Fills { fills, bad, .. } => {
                    assert!(fills.is_empty(), "{item}");
                    assert_eq!(bad.len(), 1, "{item}");
                    let why = &bad[0].why;
                    assert!(why.starts_with(&format!("malformed fill{named}")), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        for item in [
            r#"{"order":{"coin":"E","oid":"x","sz":"1","cloid":"0xAB"},"status":"open"}"#,
            r#"{"status":"open"}"#,
            r#"{"order":{"coin":"E","oid":4,"sz":"1"}}"#,
        ] {
            let frame = format!(r#"{{"channel":"orderUpdates","data":[{item}]}}"#);
            match parse_frame(&frame).unwrap() {
                WsFrame::OrderUpdates { updates, bad } => {
                    assert!(updates.is_empty(), "{item}");
                    assert_eq!(bad.len(), 1, "{item}");
                    assert!(bad[0].why.starts_with("malformed order update"), "{bad:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_malformed_fill_loses_no_other_fill_of_its_list() {
        // The WebSocket feed: two good fills around a bad one of the same order.
        let mut bad_fill = fill(5, 2, "abc", "0.1", "0.05");
        bad_fill["cloid"] = json!("0x01");
        let list = json!([
            fill(5, 1, "1800", "0.1", "0.05"),
            bad_fill,
            fill(5, 3, "1802", "0.1", "0.05")
        ]);
        let frame =
            json!({"channel":"userFills","data":{"isSnapshot":false,"user":"0xabc","fills":list}});
        let WsFrame::Fills {
            fills: good, bad, ..
        } = parse_frame(&frame.to_string()).unwrap()
        else {
            panic!("not fills")
        };
        assert_eq!(
            good.iter().map(|f| f.tid).collect::<Vec<_>>(),
            [1, 3],
            "the good fills are read"
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(
            (bad[0].oid, bad[0].cloid.as_deref()),
            (Some(5), Some("0x01"))
        );
        assert!(
            bad[0]
                .why
                .starts_with("malformed fill tid 2, oid 5: \"abc\" is not a decimal"),
            "{}",
            bad[0].why
        );
        assert!(
            bad[0].why.contains(r#""px":"abc""#),
            "an excerpt: {}",
            bad[0].why
        );
        // The good ones are applied, the bad one named by our order.
        let mut book = Book::default();
        tracked(&mut book, "0x01", "0.3", false);
        book.oid_to_cloid.insert(5, "0x01".into());
        let out = book.apply_fills(&good);
        assert_eq!(
            (out[0].filled, out[0].filled_notional),
            (d("0.2"), d("360.2"))
        );
        assert_eq!(
            book.owner(bad[0].oid, bad[0].cloid.as_deref()).as_deref(),
            Some("c-1")
        );
        assert_eq!(book.owner(Some(5), None).as_deref(), Some("c-1"));
        assert_eq!(book.owner(Some(99), Some("0x99")), None);
        // The REST catch-up reads the same list the same way; the good fills are seen
        // already (dedup by tid), the bad one is not: a good copy of it would still count.
        let (again, bad_again) = parse_fill_list(&list).unwrap();
        assert_eq!((again.len(), bad_again), (2, bad));
        assert!(book.apply_fills(&again).is_empty());
        let out = book.apply_fills(&fills(json!([fill(5, 2, "1801", "0.1", "0.05")])));
        assert_eq!(
            (out[0].filled, out[0].status),
            (d("0.3"), VenueStatus::Open)
        );
        assert!(parse_fill_list(&json!({"fills": []})).is_err());
    }

    #[test]
    fn a_forgotten_order_leaves_the_book_and_the_others_stay() {
        std::env::set_var("MB_TEST_HL_KEY_6", SDK_KEY);
        let h = Hyperliquid::from_config(
            "hyperliquid",
            "hyperliquid",
            Mode::Testnet,
            json!({"symbols":{"ETH-USDC":"ETH"},"agent_key_env":"MB_TEST_HL_KEY_6",
                   "account_address":"0x1d9470d4b963f552e6f671a81619d395877bf409"}),
        )
        .unwrap();
        let (done, open) = (cloid_for("done"), cloid_for("open"));
        {
            let mut book = h.inner.book.lock().unwrap();
            tracked(&mut book, &done, "1", true);
            tracked(&mut book, &open, "1", false);
            book.oid_to_cloid.insert(7, done.clone());
            book.oid_to_cloid.insert(8, open.clone());
        }
        h.forget("done");
        let book = h.inner.book.lock().unwrap();
        assert!(!book.by_cloid.contains_key(&done) && !book.oid_to_cloid.contains_key(&7));
        assert!(book.by_cloid.contains_key(&open) && book.oid_to_cloid.get(&8) == Some(&open));
    }

    #[test]
    fn the_stream_applies_the_good_fills_and_tells_the_bad_ones() {
        std::env::set_var("MB_TEST_HL_KEY_4", SDK_KEY);
        let h = Hyperliquid::from_config(
            "hyperliquid",
            "hyperliquid",
            Mode::Testnet,
            json!({"symbols":{"ETH-USDC":"ETH"},"agent_key_env":"MB_TEST_HL_KEY_4",
                   "account_address":"0x1d9470d4b963f552e6f671a81619d395877bf409"}),
        )
        .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        *h.inner.events.lock().unwrap() = Some(tx);
        {
            let mut book = h.inner.book.lock().unwrap();
            tracked(&mut book, "0x01", "0.3", false);
            book.oid_to_cloid.insert(5, "0x01".into());
        }
        let mut taken = || {
            let mut events = Vec::new();
            while let Ok(event) = rx.try_recv() {
                events.push(event);
            }
            events
        };
        let frame = json!({"channel":"userFills","data":{"isSnapshot":false,"user":h.inner.user,
            "fills":[fill(5,1,"1800","0.1","0.05"), fill(5,2,"1800","-0.1","0.05"), fill(77,3,"1","1","0")]}});
        h.on_frame(&frame.to_string());
        let mut unknown = fill(77, 4, "1", "1", "0");
        unknown.as_object_mut().unwrap().remove("fee");
        h.on_frame(
            &json!({"channel":"userFills","data":{"user":h.inner.user,"fills":[unknown]}})
                .to_string(),
        );
        let events = taken();
        assert_eq!(events.len(), 3, "{events:?}");
        match &events[0] {
            VenueEvent::Order(o) => {
                assert_eq!(o.client_order_id.as_deref(), Some("c-1"));
                assert_eq!((o.filled, o.filled_notional), (d("0.1"), d("180.0")));
            }
            other => panic!("{other:?}"),
        }
        match &events[1] {
            VenueEvent::Problem { of, why } => {
                assert_eq!(of, "c-1");
                assert!(
                    why.starts_with("malformed fill tid 2, oid 5: fill with px 1800 sz -0.1: {"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        match &events[2] {
            VenueEvent::Problem { of, why } => {
                assert_eq!(of, "an unidentified order");
                assert!(
                    why.starts_with("malformed fill tid 4, oid 77: fill without fee"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A malformed frame, an error frame: told, the stream goes on.
        h.on_frame("not json");
        h.on_frame(r#"{"channel":"error","data":"Invalid subscription"}"#);
        h.on_frame(r#"{"channel":"pong"}"#);
        let events = taken();
        assert_eq!(events.len(), 2, "{events:?}");
        match &events[0] {
            VenueEvent::Problem { of, why } => {
                assert_eq!(of, "the stream");
                assert!(why.starts_with("malformed frame: not JSON: "), "{why}");
                assert!(why.ends_with(": not json"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            events[1],
            VenueEvent::Problem {
                of: "the stream".into(),
                why: "error frame: Invalid subscription".into()
            }
        );
        // An order update list: the good update applied, the bad one told.
        let upd = json!({"channel":"orderUpdates","data":[
            {"order":{"coin":"ETH","oid":5,"sz":"0.1","origSz":"0.3","cloid":"0x01","timestamp":1},"status":"open"},
            {"order":{"coin":"ETH","oid":5,"sz":"x","cloid":"0x01"},"status":"canceled"}]});
        h.on_frame(&upd.to_string());
        let events = taken();
        assert!(
            matches!(&events[0], VenueEvent::Order(o) if o.filled == d("0.1")),
            "{events:?}"
        );
        assert!(
            matches!(&events[1], VenueEvent::Problem { of, why } if of == "c-1" && why.starts_with("malformed order update oid 5: ")),
            "{events:?}"
        );
    }

    fn tracked(book: &mut Book, cloid: &str, qty: &str, ioc: bool) {
        book.by_cloid.insert(
            cloid.into(),
            Track {
                client_order_id: "c-1".into(),
                symbol: "ETH-USDC".parse().unwrap(),
                coin: "ETH".into(),
                quantity: d(qty),
                ioc,
                oid: None,
                filled: Decimal::ZERO,
                notional: Decimal::ZERO,
                fee: Decimal::ZERO,
                status: VenueStatus::Open,
                venue_filled: Decimal::ZERO,
                reason: None,
                ts: 0,
            },
        );
    }

    fn fills(v: Value) -> Vec<WsFill> {
        let (fills, bad) = parse_fill_list(&v).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        fills
    }

    #[test]
    fn fills_accumulate_dedupe_and_map_back() {
        let mut book = Book::default();
        tracked(&mut book, "0x01", "0.3", false);
        book.oid_to_cloid.insert(5, "0x01".into());
        let out = book.apply_fills(&fills(json!([
            fill(5, 1, "1800", "0.1", "0.05"),
            fill(5, 2, "1801", "0.1", "0.05")
        ])));
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!(o.client_order_id.as_deref(), Some("c-1"));
        assert_eq!(
            (o.filled, o.filled_notional, o.fee),
            (d("0.2"), d("360.1"), d("0.10"))
        );
        assert_eq!(o.status, VenueStatus::Open);
        // Replayed (e.g. the snapshot after a reconnect): nothing changes.
        assert!(book
            .apply_fills(&fills(json!([fill(5, 1, "1800", "0.1", "0.05")])))
            .is_empty());
        // A fill of an order not ours is left out.
        assert!(book
            .apply_fills(&fills(json!([fill(99, 3, "1800", "0.1", "0")])))
            .is_empty());
        // "filled" before its last fill: still Open; Filled once the fill is in.
        let upd = WsOrderUpdate {
            oid: 5,
            cloid: None,
            sz: d("0"),
            orig_sz: d("0.3"),
            status: "filled".into(),
            ts: 9,
        };
        assert_eq!(
            book.apply_updates(std::slice::from_ref(&upd))[0].status,
            VenueStatus::Open
        );
        let out = book.apply_fills(&fills(json!([fill(5, 4, "1802", "0.1", "-0.01")])));
        assert_eq!(out[0].status, VenueStatus::Filled);
        assert_eq!(
            (out[0].filled, out[0].filled_notional, out[0].fee),
            (d("0.3"), d("540.3"), d("0.09"))
        );
        // A terminal state does not go back to Open.
        let reopen = WsOrderUpdate {
            status: "open".into(),
            ..upd
        };
        assert_eq!(book.apply_updates(&[reopen])[0].status, VenueStatus::Filled);
    }

    #[test]
    fn ioc_partial_ends_expired_after_its_fills() {
        let mut book = Book::default();
        tracked(&mut book, "0x02", "1", true);
        let upd = WsOrderUpdate {
            oid: 6,
            cloid: Some("0x02".into()),
            sz: d("0.6"),
            orig_sz: d("1"),
            status: "canceled".into(),
            ts: 1,
        };
        let out = book.apply_updates(&[upd]);
        assert_eq!(out[0].status, VenueStatus::Open); // 0.4 filled at the venue, not seen yet
        let mut f = fill(6, 7, "10", "0.4", "0.001");
        f["cloid"] = json!("0x02");
        let out = book.apply_fills(&fills(json!([f])));
        assert_eq!(out[0].status, VenueStatus::Expired);
        assert_eq!(out[0].filled, d("0.4"));
        assert_eq!(out[0].venue_order_id.as_deref(), Some("6"));
    }

    #[test]
    fn config_rules_and_secrets() {
        let mk =
            |s: Value| Hyperliquid::from_config("hyperliquid", "hyperliquid", Mode::Testnet, s);
        // Variables unique to this test (tests run in parallel threads).
        let key_env = "MB_TEST_HL_KEY_1";
        std::env::set_var(key_env, SDK_KEY);
        let base = json!({"symbols":{"ETH-USDC":"ETH"},"agent_key_env":key_env,"account_address":"0x1d9470d4b963f552e6f671a81619d395877bf409"});
        let h = mk(base.clone()).unwrap();
        assert_eq!(
            h.agent_address(),
            "0x14791697260e4c9a71f18484c9f997b308e59325"
        );
        assert_eq!(h.inner.info_url, "https://api.hyperliquid-testnet.xyz/info");
        assert_eq!(h.inner.ws_url, "wss://api.hyperliquid-testnet.xyz/ws");
        assert_eq!(h.unknown_deadline(), Duration::from_secs(17));
        let dbg = format!("{h:?}");
        assert!(
            !dbg.contains("0123456789012345678901234567890123456789012345678901234567890123"),
            "{dbg}"
        );
        assert!(dbg.contains("redacted"));
        let live = Hyperliquid::from_config("hl", "hyperliquid", Mode::Live, base.clone()).unwrap();
        assert_eq!(
            live.inner.exchange_url,
            "https://api.hyperliquid.xyz/exchange"
        );
        // Unknown keys, a wrong kind, paper, a missing variable: clear errors.
        let mut bad = base.clone();
        bad["rest_ulr"] = json!("x");
        assert!(format!("{:#}", mk(bad).unwrap_err()).contains("rest_ulr"));
        assert!(
            Hyperliquid::from_config("x", "binance_spot", Mode::Testnet, base.clone()).is_err()
        );
        assert!(Hyperliquid::from_config("x", "hyperliquid", Mode::Paper, base.clone()).is_err());
        let mut missing = base.clone();
        missing["agent_key_env"] = json!("MB_TEST_HL_NOT_SET");
        let e = mk(missing).unwrap_err().to_string();
        assert!(e.contains("MB_TEST_HL_NOT_SET"), "{e}");
        let key_env2 = "MB_TEST_HL_KEY_2";
        std::env::set_var(key_env2, "0xnothex-secret");
        let mut badkey = base.clone();
        badkey["agent_key_env"] = json!(key_env2);
        let e = mk(badkey).unwrap_err().to_string();
        assert!(e.contains(key_env2) && !e.contains("nothex-secret"), "{e}");
        let mut noacct = base.clone();
        noacct.as_object_mut().unwrap().remove("account_address");
        noacct["account_address_env"] = json!("MB_TEST_HL_NO_ACCOUNT");
        assert!(mk(noacct)
            .unwrap_err()
            .to_string()
            .contains("MB_TEST_HL_NO_ACCOUNT"));
        // Numbers as strings (env overrides); expires_after_ms 0 = the nonce window.
        let mut s = base.clone();
        s["slippage_bps"] = json!("25");
        s["expires_after_ms"] = json!(0);
        let h = mk(s).unwrap();
        assert_eq!(h.inner.settings.slippage_bps, 25);
        assert_eq!(h.unknown_deadline(), Duration::from_secs(172_800));
        // A ping the venue would not wait for (or that overflows 2 x ping) is refused.
        for ping in [json!(60), json!(u64::MAX.to_string())] {
            let mut s = base.clone();
            s["ping_secs"] = ping;
            let e = mk(s).unwrap_err().to_string();
            assert!(
                e.contains("ping_secs = ") && e.contains("at most 59"),
                "{e}"
            );
        }
        let mut s = base.clone();
        s["ping_secs"] = json!(59);
        assert!(mk(s).is_ok());
    }

    #[test]
    fn a_fill_before_the_answer_counts_once_the_oid_is_known() {
        let mut book = Book::default();
        tracked(&mut book, "0x03", "0.2", false);
        // The fill names oid 8, not yet linked to our order (no cloid on the fill).
        assert!(book
            .apply_fills(&fills(json!([fill(8, 11, "100", "0.2", "0.01")])))
            .is_empty());
        let out = book.register_oid(8, "0x03");
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].filled, out[0].filled_notional),
            (d("0.2"), d("20.0"))
        );
        // Not applied twice: neither again from the buffer nor from a replay.
        assert!(book.register_oid(8, "0x03").is_empty());
        assert!(book
            .apply_fills(&fills(json!([fill(8, 11, "100", "0.2", "0.01")])))
            .is_empty());
        assert_eq!(book.by_cloid["0x03"].filled, d("0.2"));
    }

    #[tokio::test]
    async fn unknown_symbol_is_rejected_before_sending() {
        std::env::set_var("MB_TEST_HL_KEY_3", SDK_KEY);
        let h = Hyperliquid::from_config(
            "hyperliquid",
            "hyperliquid",
            Mode::Testnet,
            json!({"symbols":{"ETH-USDC":"ETH"},"agent_key_env":"MB_TEST_HL_KEY_3",
                   "account_address":"0x1d9470d4b963f552e6f671a81619d395877bf409",
                   "rest_url":"http://127.0.0.1:9"}),
        )
        .unwrap();
        let order: moonbus_common::OrderRequest = serde_json::from_value(json!({
            "client_order_id":"c-1","agent":"a","symbol":"BTC-USDC","venue":"hyperliquid","side":"BUY",
            "type":"LIMIT","quantity":"1","limit_price":"100","origin_ts":1,"ts":1})).unwrap();
        let routed = Routed {
            order,
            order_id: "hyperliquid-1".into(),
            timings: Default::default(),
        };
        let nothing_to_store =
            |_: String| -> futures::future::BoxFuture<'static, Result<(), String>> {
                Box::pin(async { Ok(()) })
            };
        match h.submit(&routed, &nothing_to_store).await {
            Submitted::Rejected { reason } => {
                assert!(reason.starts_with("unknown_symbol"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
