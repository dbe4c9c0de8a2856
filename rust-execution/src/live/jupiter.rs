//! Jupiter on Solana: orders are swaps (kind `jupiter`).
//!
//! A BUY of `SOL-USDC` swaps the quote mint (USDC) into the base mint (SOL) for exactly the
//! quantity of base (Jupiter `swapMode=ExactOut`); a SELL swaps exactly the quantity of base
//! into quote (`ExactIn`). One order is one Solana transaction:
//!
//! 1. `GET {jupiter_url}/quote?inputMint&outputMint&amount&slippageBps&swapMode` (amount in
//!    atomic units: the quantity times 10^decimals must be a whole number, else the order is
//!    rejected `lot_size: ...`, never rounded);
//! 2. `POST {jupiter_url}/swap` with the quote, our public key and the priority fee: an
//!    unsigned base64 `VersionedTransaction` and its `lastValidBlockHeight`;
//! 3. the transaction is parsed here (legacy or v0), its fee payer must be our wallet and the
//!    only signer; we sign the message bytes with ed25519 into signature slot 0;
//! 4. the signature (the order's identity at the venue) is stored (the router's write-ahead:
//!    an ACCEPTED report in EXEC that carries it), then the transaction goes out by JSON-RPC
//!    `sendTransaction` (preflight on, `maxRetries: 0`);
//! 5. a watcher polls `getSignatureStatuses`; while the transaction is not seen it re-sends
//!    the SAME signed bytes (same signature: it can land at most once) until the finalized
//!    block height passes `lastValidBlockHeight`: then the order is Expired
//!    `blockhash_expired`, never swapped again. Once confirmed, `getTransaction` (jsonParsed)
//!    gives the amounts: the differences of our wallet's token balances of both mints
//!    (plus, for wrapped SOL, the wallet's lamports net of the transaction fee).
//!
//! Nothing is signed before step 3 and nothing leaves before step 4, so every failure up to
//! the send is a definite rejection. The in-memory map client_order_id -> signature answers
//! `query`; an order not in it is unknown to the venue (`Ok(None)`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use moonbus_common::{now_ns, OrderType, Side, Symbol, TimeInForce};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    AccountState, Exchange, Mode, Submitted, VenueBalance, VenueError, VenueEvent, VenueOrder,
    VenuePosition, VenueStatus,
};
use crate::venue::Routed;

/// The wrapped SOL mint: Jupiter wraps and unwraps native SOL for it.
pub const WSOL_MINT: &str = "So11111111111111111111111111111111111111112";
/// The SPL Token program and Token-2022 (token accounts of either are balances).
const TOKEN_PROGRAMS: [&str; 2] = [
    "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
    "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb",
];
/// Documented base of Jupiter's Swap API (Metis v1, keyless tier): dev.jup.ag/docs/api/swap-api.
pub const DEFAULT_JUPITER_URL: &str = "https://lite-api.jup.ag/swap/v1";
pub const MAINNET_RPC: &str = "https://api.mainnet-beta.solana.com";
pub const DEVNET_RPC: &str = "https://api.devnet.solana.com";

fn default_slippage_bps() -> u16 {
    50
}
fn default_keypair_env() -> String {
    "MOONBUS_JUPITER_KEYPAIR".into()
}
fn default_api_key_env() -> String {
    "JUPITER_API_KEY".into()
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_poll_ms() -> u64 {
    1_000
}
fn default_resend_ms() -> u64 {
    2_000
}
fn default_unknown_deadline_secs() -> u64 {
    120
}
fn default_blockhash_life_secs() -> u64 {
    180
}
fn default_true() -> bool {
    true
}
fn default_priority_level() -> String {
    "high".into()
}

/// `[execution.live.<name>]` for kind `jupiter` (the router's keys removed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `"SOL-USDC" = "<base mint>/<quote mint>"`.
    pub symbols: BTreeMap<String, String>,
    /// Token decimals by mint; a mint left out is read from the chain (getTokenSupply).
    #[serde(default)]
    pub decimals: BTreeMap<String, u8>,
    #[serde(default = "default_slippage_bps")]
    pub slippage_bps: u16,
    /// Priority fee as Jupiter's `priorityLevelWithMaxLamports` (level + cap in lamports)...
    #[serde(default = "default_priority_level")]
    pub priority_level: String,
    pub priority_max_lamports: Option<u64>,
    /// ...or an exact compute-unit price (`computeUnitPriceMicroLamports`); not both.
    pub compute_unit_price_micro_lamports: Option<u64>,
    /// Jupiter `wrapAndUnwrapSol` (native SOL in and out of wrapped-SOL swaps).
    #[serde(default = "default_true")]
    pub wrap_and_unwrap_sol: bool,
    pub jupiter_url: Option<String>,
    pub rpc_url: Option<String>,
    /// A Solana CLI keypair file (JSON array of 64 bytes), mode 0600...
    pub keypair_path: Option<String>,
    /// ...or else this environment variable holds the keypair (JSON array or base58).
    #[serde(default = "default_keypair_env")]
    pub keypair_env: String,
    /// Sent as `x-api-key` when set (api.jup.ag); the keyless lite-api needs none.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often a sent transaction's status is polled.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// How often a transaction not seen yet is sent again (the same signed bytes).
    #[serde(default = "default_resend_ms")]
    pub resend_ms: u64,
    #[serde(default = "default_unknown_deadline_secs")]
    pub unknown_deadline_secs: u64,
    /// A swap found again after a restart (by its signature, from the stored reports) has
    /// lost its blockhash's last valid height: it counts as expired once it has not landed
    /// this long after its signature was stored. A blockhash lives 150 blocks, about a
    /// minute; the default leaves room for slow blocks.
    #[serde(default = "default_blockhash_life_secs")]
    pub blockhash_life_secs: u64,
}

/// One tradable pair.
#[derive(Debug, Clone)]
struct Market {
    venue_symbol: String,
    base_mint: String,
    quote_mint: String,
}

/// The wallet key: Debug never shows it.
struct Wallet {
    key: SigningKey,
    address: String,
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wallet")
            .field("address", &self.address)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Parses a Solana keypair: a JSON array of 64 bytes (Solana CLI) or the same 64 bytes in
/// base58. The last 32 bytes must be the public key of the first 32. Errors never quote
/// the input.
pub fn parse_keypair(text: &str) -> Result<SigningKey, String> {
    let text = text.trim();
    let bytes: Vec<u8> = if text.starts_with('[') {
        serde_json::from_str(text).map_err(|_| "not a JSON array of bytes (0..=255)".to_string())?
    } else {
        bs58::decode(text)
            .into_vec()
            .map_err(|_| "neither a JSON array nor base58".to_string())?
    };
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, a keypair has 64", b.len()))?;
    let key = SigningKey::from_keypair_bytes(&bytes)
        .map_err(|_| "the public half does not match the secret half".to_string())?;
    Ok(key)
}

fn load_wallet(settings: &Settings) -> anyhow::Result<Wallet> {
    let key = if let Some(path) = &settings.keypair_path {
        let meta = std::fs::metadata(path).with_context(|| format!("keypair file {path}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "keypair file {path} has mode {mode:04o}: it must be readable by its owner \
                     only (chmod 600 {path})"
                );
            }
        }
        if !meta.is_file() {
            bail!("keypair file {path} is not a regular file");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading keypair file {path}"))?;
        parse_keypair(&text).map_err(|why| anyhow::anyhow!("keypair file {path}: {why}"))?
    } else {
        let var = &settings.keypair_env;
        let text = std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "no Solana keypair: set keypair_path (a 0600 file) or the environment \
                 variable {var}"
            )
        })?;
        parse_keypair(&text).map_err(|why| anyhow::anyhow!("environment variable {var}: {why}"))?
    };
    let pubkey = key.verifying_key().to_bytes();
    Ok(Wallet {
        key,
        address: bs58::encode(pubkey).into_string(),
    })
}

fn is_pubkey(text: &str) -> bool {
    bs58::decode(text)
        .into_vec()
        .is_ok_and(|bytes| bytes.len() == 32)
}

// ---------------------------------------------------------------------------------------
// Wire format: compact-u16 and transactions (docs.solana.com "Transactions", short_vec.rs)
// ---------------------------------------------------------------------------------------

/// Reads a compact-u16 ("short vec" length) at `*pos`, as Solana's `short_vec` does: 1 to 3
/// bytes of 7 bits, little end first; alias encodings (a trailing zero byte), a value above
/// u16::MAX and a fourth byte are errors.
pub fn read_compact_u16(bytes: &[u8], pos: &mut usize) -> Result<u16, String> {
    let mut value: u32 = 0;
    for nth in 0..3u32 {
        let byte = *bytes
            .get(*pos)
            .ok_or_else(|| format!("compact-u16 cut short at byte {}", *pos))?;
        *pos += 1;
        if byte == 0 && nth > 0 {
            return Err("compact-u16 alias encoding (trailing zero byte)".into());
        }
        value |= u32::from(byte & 0x7f) << (nth * 7);
        if byte & 0x80 == 0 {
            return u16::try_from(value).map_err(|_| "compact-u16 above 65535".to_string());
        }
    }
    Err("compact-u16 longer than 3 bytes".into())
}

/// Writes a compact-u16.
pub fn write_compact_u16(mut value: u16, out: &mut Vec<u8>) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, len: usize, what: &str) -> Result<&'a [u8], String> {
    let end = pos
        .checked_add(len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| format!("{what} cut short at byte {}", *pos))?;
    let slice = &bytes[*pos..end];
    *pos = end;
    Ok(slice)
}

fn take_u8(bytes: &[u8], pos: &mut usize, what: &str) -> Result<u8, String> {
    Ok(take(bytes, pos, 1, what)?[0])
}

/// A transaction as `/swap` returns it, parsed far enough to check and sign it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapTransaction {
    pub signatures: Vec<[u8; 64]>,
    /// The serialized message: what the signatures sign (with the v0 prefix byte).
    pub message: Vec<u8>,
    /// `None` = legacy, `Some(0)` = v0.
    pub version: Option<u8>,
    pub num_required_signatures: u8,
    pub account_keys: Vec<[u8; 32]>,
    pub recent_blockhash: [u8; 32],
}

impl SwapTransaction {
    /// Parses a wire transaction; every byte must be accounted for. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut pos = 0usize;
        let count = read_compact_u16(bytes, &mut pos)?;
        let mut signatures = Vec::with_capacity(usize::from(count).min(16));
        for _ in 0..count {
            let sig = take(bytes, &mut pos, 64, "signature")?;
            let mut array = [0u8; 64];
            array.copy_from_slice(sig);
            signatures.push(array);
        }
        let message = bytes[pos..].to_vec();
        let mut m = 0usize;
        let first = take_u8(&message, &mut m, "message header")?;
        let (version, num_required_signatures) = if first & 0x80 != 0 {
            let version = first & 0x7f;
            if version != 0 {
                return Err(format!("unsupported transaction version {version}"));
            }
            (Some(0), take_u8(&message, &mut m, "message header")?)
        } else {
            (None, first)
        };
        let _readonly_signed = take_u8(&message, &mut m, "message header")?;
        let _readonly_unsigned = take_u8(&message, &mut m, "message header")?;
        let key_count = read_compact_u16(&message, &mut m)?;
        let mut account_keys = Vec::with_capacity(usize::from(key_count).min(256));
        for _ in 0..key_count {
            let key = take(&message, &mut m, 32, "account key")?;
            let mut array = [0u8; 32];
            array.copy_from_slice(key);
            account_keys.push(array);
        }
        let mut recent_blockhash = [0u8; 32];
        recent_blockhash.copy_from_slice(take(&message, &mut m, 32, "recent blockhash")?);
        let instructions = read_compact_u16(&message, &mut m)?;
        for _ in 0..instructions {
            let _program = take_u8(&message, &mut m, "instruction")?;
            let accounts = read_compact_u16(&message, &mut m)?;
            take(
                &message,
                &mut m,
                usize::from(accounts),
                "instruction accounts",
            )?;
            let data = read_compact_u16(&message, &mut m)?;
            take(&message, &mut m, usize::from(data), "instruction data")?;
        }
        if version.is_some() {
            let tables = read_compact_u16(&message, &mut m)?;
            for _ in 0..tables {
                take(&message, &mut m, 32, "lookup table")?;
                let writable = read_compact_u16(&message, &mut m)?;
                take(&message, &mut m, usize::from(writable), "lookup indexes")?;
                let readonly = read_compact_u16(&message, &mut m)?;
                take(&message, &mut m, usize::from(readonly), "lookup indexes")?;
            }
        }
        if m != message.len() {
            return Err(format!(
                "{} trailing bytes after the message",
                message.len() - m
            ));
        }
        if usize::from(num_required_signatures) != signatures.len() {
            return Err(format!(
                "{} signature slots for {} required signatures",
                signatures.len(),
                num_required_signatures
            ));
        }
        if usize::from(num_required_signatures) > account_keys.len() {
            return Err("more required signatures than account keys".into());
        }
        Ok(Self {
            signatures,
            message,
            version,
            num_required_signatures,
            account_keys,
            recent_blockhash,
        })
    }

    /// Checks that `payer` is the fee payer and the only signer, then signs slot 0.
    pub fn sign_as_only_signer(&mut self, wallet_key: &SigningKey) -> Result<(), String> {
        let payer = wallet_key.verifying_key().to_bytes();
        if self.num_required_signatures != 1 {
            return Err(format!(
                "the transaction needs {} signers; we sign alone",
                self.num_required_signatures
            ));
        }
        if self.account_keys.first() != Some(&payer) {
            return Err(format!(
                "the fee payer is {}, not our wallet",
                self.account_keys
                    .first()
                    .map_or_else(String::new, |k| bs58::encode(k).into_string())
            ));
        }
        self.signatures[0] = wallet_key.sign(&self.message).to_bytes();
        Ok(())
    }

    /// The first signature in base58: the transaction's id.
    pub fn id(&self) -> String {
        self.signatures
            .first()
            .map_or_else(String::new, |s| bs58::encode(s).into_string())
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.signatures.len() * 64 + self.message.len());
        write_compact_u16(
            u16::try_from(self.signatures.len()).unwrap_or(u16::MAX),
            &mut out,
        );
        for sig in &self.signatures {
            out.extend_from_slice(sig);
        }
        out.extend_from_slice(&self.message);
        out
    }
}

// ---------------------------------------------------------------------------------------
// Amounts
// ---------------------------------------------------------------------------------------

/// `quantity` in atomic units of a token with `decimals`: exact, or an error (more decimals
/// than the token has, not positive, beyond u64).
pub fn to_atomic(quantity: Decimal, decimals: u8) -> Result<u64, String> {
    if quantity <= Decimal::ZERO {
        return Err(format!("{quantity} is not positive"));
    }
    let q = quantity.normalize();
    if q.scale() > u32::from(decimals) {
        return Err(format!(
            "{quantity} has more than the token's {decimals} decimals"
        ));
    }
    let shift = u32::from(decimals) - q.scale();
    let factor = 10i128
        .checked_pow(shift)
        .ok_or_else(|| format!("{quantity} is too large"))?;
    let atomic = q
        .mantissa()
        .checked_mul(factor)
        .ok_or_else(|| format!("{quantity} is too large"))?;
    u64::try_from(atomic).map_err(|_| format!("{quantity} is too large for a token amount"))
}

/// Atomic units back to a decimal (exact for decimals <= 28).
pub fn from_atomic(atomic: i128, decimals: u8) -> Result<Decimal, String> {
    Decimal::try_from_i128_with_scale(atomic, u32::from(decimals))
        .map(|d| d.normalize())
        .map_err(|_| format!("{atomic} with {decimals} decimals does not fit a decimal"))
}

fn atomic_str(value: &Value, what: &str) -> Result<i128, String> {
    match value {
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse::<i128>()
            .map_err(|_| format!("{what}: {s} out of range")),
        Value::Number(n) => n
            .as_u64()
            .map(i128::from)
            .ok_or_else(|| format!("{what}: {n} is not a whole amount")),
        other => Err(format!("{what}: {other} is not an amount")),
    }
}

/// What a landed swap did to our wallet, from `getTransaction` (jsonParsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Signed change of the base mint, atomic units (+ received).
    pub base: i128,
    /// Signed change of the quote mint, atomic units.
    pub quote: i128,
    /// The transaction fee in lamports (base + priority).
    pub fee_lamports: u64,
    /// `meta.err` (null = success).
    pub err: Option<Value>,
    pub block_time: Option<i64>,
}

/// Sums `post - pre` of the token balances owned by `owner` in `mint`; for wrapped SOL also
/// the owner's lamports (post - pre, plus the fee if the owner paid it): with
/// `wrapAndUnwrapSol` Jupiter moves native SOL through a temporary token account.
pub fn settlement(
    result: &Value,
    owner: &str,
    base_mint: &str,
    quote_mint: &str,
) -> Result<Settlement, String> {
    let meta = result
        .get("meta")
        .filter(|m| m.is_object())
        .ok_or("no meta in the transaction")?;
    let fee_lamports = meta
        .get("fee")
        .and_then(Value::as_u64)
        .ok_or("no meta.fee")?;
    let err = meta.get("err").filter(|e| !e.is_null()).cloned();
    let keys = result
        .pointer("/transaction/message/accountKeys")
        .and_then(Value::as_array)
        .ok_or("no transaction.message.accountKeys")?;
    let owner_index = keys.iter().position(|k| {
        k.get("pubkey")
            .and_then(Value::as_str)
            .or_else(|| k.as_str())
            == Some(owner)
    });
    let diff = |mint: &str| -> Result<i128, String> {
        let mut total: i128 = 0;
        for (field, sign) in [("postTokenBalances", 1i128), ("preTokenBalances", -1)] {
            let list = match meta.get(field) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(list)) => list,
                Some(_) => return Err(format!("meta.{field} is not a list")),
            };
            for entry in list {
                if entry.get("owner").and_then(Value::as_str) != Some(owner)
                    || entry.get("mint").and_then(Value::as_str) != Some(mint)
                {
                    continue;
                }
                let amount = atomic_str(
                    entry
                        .pointer("/uiTokenAmount/amount")
                        .ok_or_else(|| format!("meta.{field}: no uiTokenAmount.amount"))?,
                    field,
                )?;
                total = total
                    .checked_add(sign * amount)
                    .ok_or("token balance overflow")?;
            }
        }
        if mint == WSOL_MINT {
            if let Some(i) = owner_index {
                let lamports = |field: &str| -> Result<i128, String> {
                    meta.get(field)
                        .and_then(|v| v.get(i))
                        .and_then(Value::as_u64)
                        .map(i128::from)
                        .ok_or_else(|| format!("meta.{field}[{i}] missing"))
                };
                let paid = if i == 0 { i128::from(fee_lamports) } else { 0 };
                total = total
                    .checked_add(lamports("postBalances")? - lamports("preBalances")? + paid)
                    .ok_or("lamport overflow")?;
            }
        }
        Ok(total)
    };
    Ok(Settlement {
        base: diff(base_mint)?,
        quote: diff(quote_mint)?,
        fee_lamports,
        err,
        block_time: result.get("blockTime").and_then(Value::as_i64),
    })
}

/// Words for a failed swap: Jupiter's custom errors that matter, else the raw error.
fn failure_reason(err: &Value) -> String {
    let custom = err
        .pointer("/InstructionError/1/Custom")
        .and_then(Value::as_u64);
    match custom {
        Some(6001) => format!("slippage_exceeded: {err}"),
        _ => format!("transaction_failed: {err}"),
    }
}

// ---------------------------------------------------------------------------------------
// The adapter
// ---------------------------------------------------------------------------------------

/// A swap we signed: its identity and where it stands.
#[derive(Debug, Clone)]
struct Sent {
    symbol: Symbol,
    market: Market,
    side: Side,
    quantity: Decimal,
    signature: String,
    /// The signed bytes, sent again until it lands; empty once ended or after a restart.
    tx_base64: String,
    /// The blockhash's last valid block height; `None` for a swap found again after a
    /// restart, which expires by time instead (`blockhash_life_secs` after `since_ns`).
    last_valid_block_height: Option<u64>,
    since_ns: u64,
    terminal: Option<VenueOrder>,
}

#[derive(Debug, Clone)]
enum Slot {
    /// Quote/swap/sign in progress: nothing has left the machine.
    Preparing,
    /// Signed and stored before the first send.
    Sent(Box<Sent>),
    /// Ended without a transaction (an IOC limit the quote did not meet).
    Ended(VenueOrder),
}

enum RpcError {
    /// Nothing reached the node (connection refused, 429): definitely not processed.
    NotSent(String),
    /// The node answered with a JSON-RPC error.
    Rpc { code: i64, message: String },
    /// No usable answer: the request may or may not have been processed.
    Unknown(String),
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpcError::NotSent(why) | RpcError::Unknown(why) => f.write_str(why),
            RpcError::Rpc { code, message } => write!(f, "rpc error {code}: {message}"),
        }
    }
}

impl From<RpcError> for VenueError {
    fn from(e: RpcError) -> Self {
        VenueError::Transient(e.to_string())
    }
}

enum Check {
    Pending,
    Terminal(VenueOrder),
}

struct Inner {
    name: String,
    settings: Settings,
    wallet: Wallet,
    http: reqwest::Client,
    jupiter_url: String,
    rpc_url: String,
    api_key: Option<String>,
    markets: BTreeMap<Symbol, Market>,
    decimals: Mutex<HashMap<String, u8>>,
    orders: Mutex<HashMap<String, Slot>>,
    events: Mutex<Option<mpsc::UnboundedSender<VenueEvent>>>,
}

/// The Jupiter adapter; clones share everything.
#[derive(Clone)]
pub struct Jupiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for Jupiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jupiter")
            .field("name", &self.inner.name)
            .field("wallet", &self.inner.wallet)
            .field("jupiter_url", &self.inner.jupiter_url)
            .field("rpc_url", &self.inner.rpc_url)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Parses `symbols` into markets: `"SOL-USDC" = "<base mint>/<quote mint>"`.
fn parse_markets(symbols: &BTreeMap<String, String>) -> anyhow::Result<BTreeMap<Symbol, Market>> {
    if symbols.is_empty() {
        bail!("symbols is empty: map \"BASE-QUOTE\" = \"<base mint>/<quote mint>\"");
    }
    let mut markets = BTreeMap::new();
    let mut asset_mint: BTreeMap<String, String> = BTreeMap::new();
    for (ours, theirs) in symbols {
        let symbol: Symbol = ours
            .parse()
            .map_err(|e| anyhow::anyhow!("symbols: {ours}: {e}"))?;
        let (base_mint, quote_mint) = theirs.split_once('/').with_context(|| {
            format!("symbols: {ours} = {theirs:?}: expected \"<base mint>/<quote mint>\"")
        })?;
        for mint in [base_mint, quote_mint] {
            if !is_pubkey(mint) {
                bail!("symbols: {ours}: {mint:?} is not a base58 mint address");
            }
        }
        if base_mint == quote_mint {
            bail!("symbols: {ours}: the base and quote mints are the same");
        }
        for (asset, mint) in [(symbol.base(), base_mint), (symbol.quote(), quote_mint)] {
            if let Some(other) = asset_mint.insert(asset.to_string(), mint.to_string()) {
                if other != mint {
                    bail!("symbols: {asset} is mapped to two mints ({other} and {mint})");
                }
            }
        }
        markets.insert(
            symbol,
            Market {
                venue_symbol: theirs.clone(),
                base_mint: base_mint.to_string(),
                quote_mint: quote_mint.to_string(),
            },
        );
    }
    Ok(markets)
}

impl Jupiter {
    pub fn from_config(
        name: &str,
        kind: &str,
        mode: Mode,
        settings: Value,
    ) -> anyhow::Result<Self> {
        if kind != "jupiter" {
            bail!("{name}: kind {kind:?} is not jupiter");
        }
        let settings: Settings = serde_json::from_value(settings)
            .with_context(|| format!("[execution.live.{name}] (kind jupiter)"))?;
        let markets =
            parse_markets(&settings.symbols).with_context(|| format!("[execution.live.{name}]"))?;
        for (mint, d) in &settings.decimals {
            if !is_pubkey(mint) {
                bail!("[execution.live.{name}] decimals: {mint:?} is not a mint address");
            }
            if *d > 18 {
                bail!("[execution.live.{name}] decimals: {mint} has {d} decimals (at most 18)");
            }
        }
        if settings.priority_max_lamports.is_some()
            && settings.compute_unit_price_micro_lamports.is_some()
        {
            bail!(
                "[execution.live.{name}]: set priority_max_lamports or \
                 compute_unit_price_micro_lamports, not both"
            );
        }
        if !["medium", "high", "veryHigh"].contains(&settings.priority_level.as_str()) {
            bail!(
                "[execution.live.{name}] priority_level {:?}: medium, high or veryHigh",
                settings.priority_level
            );
        }
        if settings.timeout_ms == 0 || settings.poll_ms == 0 || settings.resend_ms == 0 {
            bail!("[execution.live.{name}]: timeout_ms, poll_ms and resend_ms must be > 0");
        }
        let rpc_url = match (&settings.rpc_url, mode) {
            (Some(url), _) => url.clone(),
            (None, Mode::Live) => MAINNET_RPC.into(),
            (None, Mode::Testnet) => DEVNET_RPC.into(),
            (None, Mode::Paper) => bail!("{name}: paper mode has no Jupiter adapter"),
        };
        let jupiter_url = settings
            .jupiter_url
            .clone()
            .unwrap_or_else(|| DEFAULT_JUPITER_URL.into())
            .trim_end_matches('/')
            .to_string();
        let wallet = load_wallet(&settings).with_context(|| format!("[execution.live.{name}]"))?;
        let api_key = std::env::var(&settings.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .context("HTTP client")?;
        let decimals = settings
            .decimals
            .iter()
            .map(|(m, d)| (m.clone(), *d))
            .collect();
        tracing::info!(venue = name, wallet = %wallet.address, %rpc_url, %jupiter_url, %mode, "jupiter adapter");
        Ok(Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                settings,
                wallet,
                http,
                jupiter_url,
                rpc_url,
                api_key,
                markets,
                decimals: Mutex::new(decimals),
                orders: Mutex::new(HashMap::new()),
                events: Mutex::new(None),
            }),
        })
    }

    /// Our wallet's address (base58).
    pub fn address(&self) -> &str {
        &self.inner.wallet.address
    }

    // -- transport ------------------------------------------------------------------------

    async fn rpc(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response = self
            .inner
            .http
            .post(&self.inner.rpc_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RpcError::NotSent(format!("{method}: cannot connect: {e}"))
                } else {
                    RpcError::Unknown(format!("{method}: {e}"))
                }
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(RpcError::NotSent(format!("{method}: rate limited (429)")));
        }
        let text = response
            .text()
            .await
            .map_err(|e| RpcError::Unknown(format!("{method}: {e}")))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            RpcError::Unknown(format!(
                "{method}: HTTP {status}, not JSON-RPC: {}",
                clip(&text)
            ))
        })?;
        if !status.is_success() {
            // A node answers JSON-RPC errors with 200; anything else (a proxy's 5xx) says
            // nothing sure about what happened.
            return Err(RpcError::Unknown(format!(
                "{method}: HTTP {status}: {}",
                clip(&text)
            )));
        }
        if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
            return Err(RpcError::Rpc {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            });
        }
        value
            .get("result")
            .cloned()
            .ok_or_else(|| RpcError::Unknown(format!("{method}: no result")))
    }

    fn jupiter_request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.inner.api_key {
            Some(key) => builder.header("x-api-key", key),
            None => builder,
        }
    }

    /// Jupiter's answer or why not (every failure here is before anything is signed).
    async fn jupiter(&self, what: &str, builder: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = self
            .jupiter_request(builder)
            .send()
            .await
            .map_err(|e| format!("jupiter_unavailable: {what}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("jupiter_unavailable: {what}: {e}"))?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let detail = value
                .as_ref()
                .map(|v| {
                    let code = v.get("errorCode").and_then(Value::as_str).unwrap_or("");
                    let error = v.get("error").and_then(Value::as_str).unwrap_or("");
                    format!("{code} {error}").trim().to_string()
                })
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| clip(&text));
            return Err(format!(
                "jupiter: {what} HTTP {}: {detail}",
                status.as_u16()
            ));
        }
        value.ok_or_else(|| format!("jupiter: {what}: not JSON: {}", clip(&text)))
    }

    // -- rules ----------------------------------------------------------------------------

    async fn decimals_of(&self, mint: &str) -> Result<u8, VenueError> {
        if let Some(d) = lock(&self.inner.decimals).get(mint) {
            return Ok(*d);
        }
        let result = self.rpc("getTokenSupply", json!([mint])).await?;
        let d = result
            .pointer("/value/decimals")
            .and_then(Value::as_u64)
            .and_then(|d| u8::try_from(d).ok())
            .filter(|d| *d <= 18)
            .ok_or_else(|| {
                VenueError::Transient(format!("getTokenSupply {mint}: no usable decimals"))
            })?;
        lock(&self.inner.decimals).insert(mint.to_string(), d);
        Ok(d)
    }

    fn order_snapshot(&self, cid: &str, sent: &Sent) -> VenueOrder {
        VenueOrder {
            client_order_id: Some(cid.to_string()),
            venue_order_id: Some(sent.signature.clone()),
            symbol: Some(sent.symbol.clone()),
            venue_symbol: sent.market.venue_symbol.clone(),
            status: VenueStatus::Open,
            filled: Decimal::ZERO,
            filled_notional: Decimal::ZERO,
            fee: Decimal::ZERO,
            reason: None,
            ts: now_ns(),
        }
    }

    fn emit(&self, order: VenueOrder) {
        if let Some(events) = lock(&self.inner.events).as_ref() {
            let _ = events.send(VenueEvent::Order(order));
        }
    }

    /// Records a terminal state once; the first one recorded wins and is returned.
    fn finish(&self, cid: &str, order: VenueOrder) -> VenueOrder {
        let mut orders = lock(&self.inner.orders);
        if let Some(Slot::Sent(sent)) = orders.get_mut(cid) {
            if let Some(done) = &sent.terminal {
                return done.clone();
            }
            sent.terminal = Some(order.clone());
            // Never sent again: the signed bytes are no longer needed.
            sent.tx_base64 = String::new();
        }
        order
    }

    // -- submit ---------------------------------------------------------------------------

    async fn submit_order(&self, routed: &Routed, write_ahead: super::WriteAhead<'_>) -> Submitted {
        let order = &routed.order;
        let cid = order.client_order_id.as_str().to_string();
        {
            let mut orders = lock(&self.inner.orders);
            match orders.get(&cid) {
                Some(Slot::Sent(sent)) => {
                    return Submitted::Accepted(
                        sent.terminal
                            .clone()
                            .unwrap_or_else(|| self.order_snapshot(&cid, sent)),
                    );
                }
                Some(Slot::Ended(done)) => return Submitted::Accepted(done.clone()),
                Some(Slot::Preparing) => {
                    return Submitted::Rejected {
                        reason: format!("duplicate_client_order_id: {cid} is being submitted"),
                    };
                }
                None => {
                    orders.insert(cid.clone(), Slot::Preparing);
                }
            }
        }
        let outcome = self.prepare_and_send(routed, &cid, write_ahead).await;
        if matches!(outcome, Submitted::Rejected { .. }) {
            let mut orders = lock(&self.inner.orders);
            if matches!(orders.get(&cid), Some(Slot::Preparing)) {
                orders.remove(&cid);
            }
        }
        outcome
    }

    async fn prepare_and_send(
        &self,
        routed: &Routed,
        cid: &str,
        write_ahead: super::WriteAhead<'_>,
    ) -> Submitted {
        let reject = |reason: String| Submitted::Rejected { reason };
        let order = &routed.order;
        let Some(market) = self.inner.markets.get(&order.symbol).cloned() else {
            return reject(format!(
                "unknown_symbol: {} is not in [execution.live.{}] symbols",
                order.symbol, self.inner.name
            ));
        };
        let limit = match (order.order_type, order.time_in_force) {
            (OrderType::Market, _) => None,
            (OrderType::Limit, TimeInForce::Ioc) => match order.limit_price {
                Some(p) => Some(p.get()),
                None => return reject("unsupported: a LIMIT order without limit_price".into()),
            },
            (OrderType::Limit, TimeInForce::Gtc) => {
                return reject(
                    "unsupported: a swap cannot rest on a book; send MARKET, or LIMIT with IOC"
                        .into(),
                )
            }
        };
        if order.reduce_only && order.side == Side::Buy {
            return reject(
                "unsupported: reduce_only BUY (a spot swap holds no short to reduce)".into(),
            );
        }
        let (base_decimals, quote_decimals) = match (
            self.decimals_of(&market.base_mint).await,
            self.decimals_of(&market.quote_mint).await,
        ) {
            (Ok(b), Ok(q)) => (b, q),
            (Err(e), _) | (_, Err(e)) => return reject(format!("token_decimals: {e}")),
        };
        let quantity = order.quantity.get();
        let atomic = match to_atomic(quantity, base_decimals) {
            Ok(a) => a,
            Err(why) => return reject(format!("lot_size: {why} ({})", market.base_mint)),
        };
        if order.reduce_only {
            match self.balances().await {
                Ok(b) => {
                    let held = b.get(&market.base_mint).copied().unwrap_or(0);
                    if i128::from(atomic) > held {
                        return reject(format!(
                            "reduce_only: selling {quantity} but the wallet holds {}",
                            from_atomic(held, base_decimals).unwrap_or_default()
                        ));
                    }
                }
                Err(e) => return reject(format!("reduce_only: balance unreadable: {e}")),
            }
        }
        let (input, output, swap_mode) = match order.side {
            Side::Buy => (&market.quote_mint, &market.base_mint, "ExactOut"),
            Side::Sell => (&market.base_mint, &market.quote_mint, "ExactIn"),
        };
        let url = format!(
            "{}/quote?inputMint={input}&outputMint={output}&amount={atomic}&slippageBps={}&swapMode={swap_mode}",
            self.inner.jupiter_url, self.inner.settings.slippage_bps
        );
        let quote = match self.jupiter("quote", self.inner.http.get(&url)).await {
            Ok(q) => q,
            Err(why) => return reject(why),
        };
        let worst = match check_quote(&quote, input, output, swap_mode, atomic) {
            Ok(w) => w,
            Err(why) => return reject(format!("jupiter: bad quote: {why}")),
        };
        if let Some(limit) = limit {
            let (ok, worst_price) =
                match limit_met(order.side, worst, quote_decimals, quantity, limit) {
                    Ok(x) => x,
                    Err(why) => return reject(format!("jupiter: bad quote: {why}")),
                };
            if !ok {
                let done = VenueOrder {
                    client_order_id: Some(cid.to_string()),
                    venue_order_id: None,
                    symbol: Some(order.symbol.clone()),
                    venue_symbol: market.venue_symbol.clone(),
                    status: VenueStatus::Expired,
                    filled: Decimal::ZERO,
                    filled_notional: Decimal::ZERO,
                    fee: Decimal::ZERO,
                    reason: Some(format!(
                        "limit_price: the quote's worst price {} (slippage {} bps) is {} than the limit {limit}",
                        worst_price.round_dp(12).normalize(),
                        self.inner.settings.slippage_bps,
                        if order.side == Side::Buy { "higher" } else { "lower" }
                    )),
                    ts: now_ns(),
                };
                lock(&self.inner.orders).insert(cid.to_string(), Slot::Ended(done.clone()));
                return Submitted::Accepted(done);
            }
        }
        let mut body = json!({
            "quoteResponse": quote,
            "userPublicKey": self.inner.wallet.address,
            "wrapAndUnwrapSol": self.inner.settings.wrap_and_unwrap_sol,
            "dynamicComputeUnitLimit": true,
        });
        if let Some(price) = self.inner.settings.compute_unit_price_micro_lamports {
            body["computeUnitPriceMicroLamports"] = json!(price);
        } else if let Some(max) = self.inner.settings.priority_max_lamports {
            body["prioritizationFeeLamports"] = json!({"priorityLevelWithMaxLamports": {
                "priorityLevel": self.inner.settings.priority_level,
                "maxLamports": max,
            }});
        }
        let url = format!("{}/swap", self.inner.jupiter_url);
        let swap = match self
            .jupiter("swap", self.inner.http.post(&url).json(&body))
            .await
        {
            Ok(s) => s,
            Err(why) => return reject(why),
        };
        let (mut tx, last_valid) = match read_swap(&swap) {
            Ok(t) => t,
            Err(why) => return reject(format!("jupiter: bad swap transaction: {why}")),
        };
        if let Err(why) = tx.sign_as_only_signer(&self.inner.wallet.key) {
            return reject(format!("jupiter: refusing to sign: {why}"));
        }
        let signature = tx.id();
        let tx_base64 = base64::engine::general_purpose::STANDARD.encode(tx.to_bytes());
        let sent = Sent {
            symbol: order.symbol.clone(),
            market,
            side: order.side,
            quantity,
            signature: signature.clone(),
            tx_base64: tx_base64.clone(),
            last_valid_block_height: Some(last_valid),
            since_ns: now_ns(),
            terminal: None,
        };
        let snapshot = self.order_snapshot(cid, &sent);
        // The identity is stored before anything leaves: in EXEC (a crash after the send
        // leaves the signature a restarted execution watches again), then here.
        if let Err(why) = write_ahead(signature.clone()).await {
            return reject(format!(
                "write_ahead_failed: the swap's signature could not be stored, so it was not \
                 sent: {why}"
            ));
        }
        lock(&self.inner.orders).insert(cid.to_string(), Slot::Sent(Box::new(sent)));
        tracing::info!(venue = %self.inner.name, client_order_id = cid, %signature, last_valid, "sending swap");
        let params = json!([tx_base64, {
            "encoding": "base64",
            "skipPreflight": false,
            "preflightCommitment": "confirmed",
            "maxRetries": 0,
        }]);
        match self.rpc("sendTransaction", params).await {
            Ok(result) => {
                if result.as_str() != Some(signature.as_str()) {
                    tracing::warn!(client_order_id = cid, %signature, answer = %result, "sendTransaction answered another signature");
                }
                self.spawn_watcher(cid);
                Submitted::Accepted(snapshot)
            }
            Err(RpcError::Rpc { code, message }) => {
                // Preflight refused it: the node did not forward it.
                let reason = format!("preflight: {code} {message}");
                self.finish(
                    cid,
                    VenueOrder {
                        status: VenueStatus::Rejected,
                        reason: Some(reason.clone()),
                        ..snapshot
                    },
                );
                Submitted::Rejected { reason }
            }
            Err(RpcError::NotSent(why)) => {
                let reason = format!("rpc_unavailable: {why}");
                self.finish(
                    cid,
                    VenueOrder {
                        status: VenueStatus::Rejected,
                        reason: Some(reason.clone()),
                        ..snapshot
                    },
                );
                Submitted::Rejected { reason }
            }
            Err(RpcError::Unknown(why)) => {
                // It may be out there: watch it (re-sending the same bytes is safe).
                self.spawn_watcher(cid);
                Submitted::Unknown {
                    reason: format!("{why} (signature {signature})"),
                }
            }
        }
    }

    // -- confirmation ---------------------------------------------------------------------

    fn spawn_watcher(&self, cid: &str) {
        let this = self.clone();
        let cid = cid.to_string();
        tokio::spawn(async move { this.watch(cid).await });
    }

    async fn watch(self, cid: String) {
        let poll = Duration::from_millis(self.inner.settings.poll_ms);
        let resend = Duration::from_millis(self.inner.settings.resend_ms);
        let mut last_send = Instant::now();
        let mut delay = poll;
        loop {
            tokio::time::sleep(delay).await;
            match self.check(&cid).await {
                Ok(Check::Terminal(order)) => {
                    self.emit(order);
                    return;
                }
                Ok(Check::Pending) => {
                    delay = poll;
                    if last_send.elapsed() >= resend {
                        self.resend(&cid).await;
                        last_send = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::warn!(venue = %self.inner.name, client_order_id = %cid, error = %e, "swap status");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn resend(&self, cid: &str) {
        let tx = match lock(&self.inner.orders).get(cid) {
            Some(Slot::Sent(sent)) if sent.terminal.is_none() && !sent.tx_base64.is_empty() => {
                sent.tx_base64.clone()
            }
            _ => return,
        };
        let params = json!([tx, {"encoding": "base64", "skipPreflight": true, "maxRetries": 0}]);
        if let Err(e) = self.rpc("sendTransaction", params).await {
            tracing::debug!(client_order_id = cid, error = %e, "re-send");
        }
    }

    /// Where a sent swap stands at the chain; a terminal state is recorded.
    async fn check(&self, cid: &str) -> Result<Check, VenueError> {
        let sent = match lock(&self.inner.orders).get(cid) {
            Some(Slot::Sent(sent)) => (**sent).clone(),
            Some(Slot::Ended(done)) => return Ok(Check::Terminal(done.clone())),
            _ => return Err(VenueError::Refused(format!("unknown order {cid}"))),
        };
        if let Some(done) = sent.terminal.clone() {
            return Ok(Check::Terminal(done));
        }
        let status = self.status(&sent.signature).await?;
        let status = match status {
            Some(s) => s,
            None => {
                let why = match sent.last_valid_block_height {
                    Some(last_valid) => {
                        let height = self
                            .rpc("getBlockHeight", json!([{"commitment": "finalized"}]))
                            .await?
                            .as_u64()
                            .ok_or_else(|| {
                                VenueError::Transient("getBlockHeight: not a number".into())
                            })?;
                        if height <= last_valid {
                            return Ok(Check::Pending);
                        }
                        format!("blockhash_expired: not landed by block height {last_valid} (now {height})")
                    }
                    None => {
                        let life = self.inner.settings.blockhash_life_secs;
                        if now_ns().saturating_sub(sent.since_ns)
                            <= life.saturating_mul(1_000_000_000)
                        {
                            return Ok(Check::Pending);
                        }
                        format!("blockhash_expired: not landed within {life} s of its signature being stored (found again after a restart)")
                    }
                };
                // Past the blockhash's life: one last look, since it may have landed
                // between the two calls.
                match self.status(&sent.signature).await? {
                    Some(s) => s,
                    None => {
                        let order = VenueOrder {
                            status: VenueStatus::Expired,
                            reason: Some(why),
                            ..self.order_snapshot(cid, &sent)
                        };
                        return Ok(Check::Terminal(self.finish(cid, order)));
                    }
                }
            }
        };
        let level = status
            .get("confirmationStatus")
            .and_then(Value::as_str)
            .unwrap_or("");
        if level != "confirmed" && level != "finalized" {
            return Ok(Check::Pending);
        }
        if let Some(err) = status.get("err").filter(|e| !e.is_null()) {
            let order = VenueOrder {
                status: VenueStatus::Rejected,
                reason: Some(failure_reason(err)),
                ..self.order_snapshot(cid, &sent)
            };
            return Ok(Check::Terminal(self.finish(cid, order)));
        }
        let tx = self
            .rpc(
                "getTransaction",
                json!([sent.signature, {
                    "encoding": "jsonParsed",
                    "maxSupportedTransactionVersion": 0,
                    "commitment": "confirmed",
                }]),
            )
            .await?;
        if tx.is_null() {
            return Ok(Check::Pending);
        }
        let order = self.settle(cid, &sent, &tx).await?;
        Ok(Check::Terminal(self.finish(cid, order)))
    }

    async fn status(&self, signature: &str) -> Result<Option<Value>, VenueError> {
        let result = self
            .rpc(
                "getSignatureStatuses",
                json!([[signature], {"searchTransactionHistory": true}]),
            )
            .await?;
        let entry = result
            .pointer("/value/0")
            .ok_or_else(|| VenueError::Transient("getSignatureStatuses: no value".into()))?;
        Ok(if entry.is_null() {
            None
        } else {
            Some(entry.clone())
        })
    }

    /// The order's end from the landed transaction.
    async fn settle(&self, cid: &str, sent: &Sent, tx: &Value) -> Result<VenueOrder, VenueError> {
        let base_d = self.decimals_of(&sent.market.base_mint).await?;
        let quote_d = self.decimals_of(&sent.market.quote_mint).await?;
        let snapshot = self.order_snapshot(cid, sent);
        let s = match settlement(
            tx,
            &self.inner.wallet.address,
            &sent.market.base_mint,
            &sent.market.quote_mint,
        ) {
            Ok(s) => s,
            Err(why) => {
                tracing::error!(client_order_id = cid, signature = %sent.signature, %why, "landed swap unreadable: reconciliation will see the balances");
                return Ok(VenueOrder {
                    status: VenueStatus::Expired,
                    reason: Some(format!("settled_unreadable: {why}")),
                    ..snapshot
                });
            }
        };
        let ts = s
            .block_time
            .and_then(|t| u64::try_from(t).ok())
            .and_then(|t| t.checked_mul(1_000_000_000))
            .unwrap_or_else(now_ns);
        if let Some(err) = &s.err {
            return Ok(VenueOrder {
                status: VenueStatus::Rejected,
                reason: Some(failure_reason(err)),
                ts,
                ..snapshot
            });
        }
        let (base, quote) = match sent.side {
            Side::Buy => (s.base, -s.quote),
            Side::Sell => (-s.base, s.quote),
        };
        if base <= 0 || quote <= 0 {
            tracing::error!(client_order_id = cid, signature = %sent.signature, base = s.base, quote = s.quote, "landed swap moved no balance the expected way");
            return Ok(VenueOrder {
                status: VenueStatus::Expired,
                reason: Some(format!(
                    "settled_unreadable: balance changes base {} quote {} (atomic) do not match a {}",
                    s.base,
                    s.quote,
                    if sent.side == Side::Buy { "BUY" } else { "SELL" }
                )),
                ts,
                ..snapshot
            });
        }
        let filled = from_atomic(base, base_d).map_err(VenueError::Transient)?;
        let notional = from_atomic(quote, quote_d).map_err(VenueError::Transient)?;
        let fee = match quote_fee(
            s.fee_lamports,
            &sent.market.base_mint,
            &sent.market.quote_mint,
            filled,
            notional,
            quote_d,
        ) {
            Some(fee) => fee,
            None => {
                tracing::info!(
                    client_order_id = cid,
                    fee_lamports = s.fee_lamports,
                    "SOL fee not convertible to the quote token: reported as 0"
                );
                Decimal::ZERO
            }
        };
        let (status, reason, filled) = if filled < sent.quantity {
            (
                VenueStatus::Expired,
                Some(format!("partial_swap: {filled} of {}", sent.quantity)),
                filled,
            )
        } else {
            if filled > sent.quantity {
                // ExactIn/ExactOut fix the base amount: more can only be a balance moved by
                // something else in the same transaction. Reported as the ordered quantity
                // (the notional is what was paid or received); reconciliation sees the rest.
                tracing::warn!(client_order_id = cid, %filled, quantity = %sent.quantity, "the wallet's base balance moved more than ordered: reported as the ordered quantity");
            }
            (VenueStatus::Filled, None, sent.quantity)
        };
        Ok(VenueOrder {
            status,
            filled,
            filled_notional: notional,
            fee,
            reason,
            ts,
            ..snapshot
        })
    }

    // -- balances -------------------------------------------------------------------------

    /// Atomic balances by mint (configured mints; wrapped SOL includes native lamports).
    async fn balances(&self) -> Result<HashMap<String, i128>, VenueError> {
        let owner = &self.inner.wallet.address;
        let lamports = self
            .rpc("getBalance", json!([owner, {"commitment": "confirmed"}]))
            .await?
            .pointer("/value")
            .and_then(Value::as_u64)
            .ok_or_else(|| VenueError::Transient("getBalance: no value".into()))?;
        let mut out: HashMap<String, i128> = HashMap::new();
        out.insert(WSOL_MINT.to_string(), i128::from(lamports));
        for program in TOKEN_PROGRAMS {
            let result = self
                .rpc(
                    "getTokenAccountsByOwner",
                    json!([owner, {"programId": program}, {"encoding": "jsonParsed", "commitment": "confirmed"}]),
                )
                .await?;
            for (mint, amount) in parse_token_accounts(&result).map_err(VenueError::Transient)? {
                let slot = out.entry(mint).or_insert(0);
                *slot = slot
                    .checked_add(amount)
                    .ok_or_else(|| VenueError::Transient("balance overflow".into()))?;
            }
        }
        Ok(out)
    }
}

/// `(mint, atomic amount)` of each token account in a jsonParsed getTokenAccountsByOwner.
pub fn parse_token_accounts(result: &Value) -> Result<Vec<(String, i128)>, String> {
    let list = result
        .get("value")
        .and_then(Value::as_array)
        .ok_or("getTokenAccountsByOwner: no value list")?;
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let info = entry
            .pointer("/account/data/parsed/info")
            .ok_or("getTokenAccountsByOwner: an account without parsed info")?;
        let mint = info
            .get("mint")
            .and_then(Value::as_str)
            .ok_or("getTokenAccountsByOwner: no mint")?;
        let amount = atomic_str(
            info.pointer("/tokenAmount/amount")
                .ok_or("getTokenAccountsByOwner: no tokenAmount.amount")?,
            "tokenAmount",
        )?;
        out.push((mint.to_string(), amount));
    }
    Ok(out)
}

/// Checks a `/quote` answer against what we asked; returns `otherAmountThreshold` (the
/// most we pay for ExactOut, the least we get for ExactIn), atomic.
pub fn check_quote(
    quote: &Value,
    input: &str,
    output: &str,
    swap_mode: &str,
    amount: u64,
) -> Result<u64, String> {
    let field = |name: &str| -> Result<&str, String> {
        quote
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no {name}"))
    };
    let atomic = |name: &str| -> Result<u64, String> {
        let text = field(name)?;
        text.parse::<u64>()
            .map_err(|_| format!("{name} {text:?} is not an amount"))
    };
    if field("inputMint")? != input || field("outputMint")? != output {
        return Err("the mints are not the ones asked for".into());
    }
    if field("swapMode")? != swap_mode {
        return Err(format!(
            "swapMode {} (asked {swap_mode})",
            field("swapMode")?
        ));
    }
    let fixed = if swap_mode == "ExactOut" {
        "outAmount"
    } else {
        "inAmount"
    };
    if atomic(fixed)? != amount {
        return Err(format!("{fixed} {} (asked {amount})", atomic(fixed)?));
    }
    let other = if swap_mode == "ExactOut" {
        "inAmount"
    } else {
        "outAmount"
    };
    let quoted = atomic(other)?;
    let threshold = atomic("otherAmountThreshold")?;
    if quoted == 0 || threshold == 0 {
        return Err("a zero amount".into());
    }
    Ok(threshold)
}

/// The transaction fee in the quote token: exact when the quote is SOL, at the swap's own
/// price (rounded to the quote token's decimals) when the base is SOL; `None` otherwise.
pub fn quote_fee(
    fee_lamports: u64,
    base_mint: &str,
    quote_mint: &str,
    filled: Decimal,
    notional: Decimal,
    quote_decimals: u8,
) -> Option<Decimal> {
    let fee_sol = from_atomic(i128::from(fee_lamports), 9).ok()?;
    if quote_mint == WSOL_MINT {
        Some(fee_sol)
    } else if base_mint == WSOL_MINT {
        fee_sol
            .checked_mul(notional)
            .and_then(|x| x.checked_div(filled))
            .map(|x| {
                x.round_dp_with_strategy(
                    u32::from(quote_decimals),
                    RoundingStrategy::MidpointAwayFromZero,
                )
                .normalize()
            })
    } else {
        None
    }
}

/// The IOC limit rule: the quote's worst price within the slippage (`worst`, atomic quote:
/// the most paid for a BUY, the least received for a SELL, per `quantity` of base) must be
/// at or better than `limit`. Returns whether it is, and that worst price.
pub fn limit_met(
    side: Side,
    worst: u64,
    quote_decimals: u8,
    quantity: Decimal,
    limit: Decimal,
) -> Result<(bool, Decimal), String> {
    let worst_quote = from_atomic(i128::from(worst), quote_decimals)?;
    let price = worst_quote
        .checked_div(quantity)
        .ok_or_else(|| format!("{worst_quote} / {quantity} does not fit a decimal"))?;
    let ok = match side {
        Side::Buy => price <= limit,
        Side::Sell => price >= limit,
    };
    Ok((ok, price))
}

/// The transaction and `lastValidBlockHeight` of a `/swap` answer.
pub fn read_swap(swap: &Value) -> Result<(SwapTransaction, u64), String> {
    let text = swap
        .get("swapTransaction")
        .and_then(Value::as_str)
        .ok_or("no swapTransaction")?;
    let last_valid = swap
        .get("lastValidBlockHeight")
        .and_then(Value::as_u64)
        .ok_or("no lastValidBlockHeight")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("swapTransaction is not base64: {e}"))?;
    Ok((SwapTransaction::parse(&bytes)?, last_valid))
}

impl Exchange for Jupiter {
    async fn start(&self, events: mpsc::UnboundedSender<VenueEvent>) -> Result<(), VenueError> {
        *lock(&self.inner.events) = Some(events.clone());
        let health = match self.rpc("getHealth", json!([])).await {
            Ok(h) => h.as_str().unwrap_or("").to_string(),
            Err(RpcError::Rpc { code, message }) => {
                return Err(VenueError::Transient(format!(
                    "{}: getHealth: {code} {message}",
                    self.inner.rpc_url
                )))
            }
            Err(e) => {
                return Err(VenueError::Transient(format!(
                    "{}: {e}",
                    self.inner.rpc_url
                )))
            }
        };
        let version = self
            .rpc("getVersion", json!([]))
            .await
            .ok()
            .and_then(|v| {
                v.get("solana-core")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default();
        let mints: Vec<String> = self
            .inner
            .markets
            .values()
            .flat_map(|m| [m.base_mint.clone(), m.quote_mint.clone()])
            .collect();
        for mint in mints {
            self.decimals_of(&mint).await?;
        }
        if self.inner.rpc_url == DEVNET_RPC && self.inner.jupiter_url == DEFAULT_JUPITER_URL {
            tracing::warn!(venue = %self.inner.name, "Jupiter routes mainnet liquidity only: its swaps do not land on devnet");
        }
        let _ = events.send(VenueEvent::Health {
            connected: true,
            detail: format!(
                "solana rpc {} {health} (solana-core {version}), wallet {}",
                self.inner.rpc_url, self.inner.wallet.address
            ),
        });
        Ok(())
    }

    async fn submit(&self, order: &Routed, write_ahead: super::WriteAhead<'_>) -> Submitted {
        self.submit_order(order, write_ahead).await
    }

    async fn cancel(&self, order: &Routed) -> Result<VenueOrder, VenueError> {
        match self.query(order).await? {
            Some(state) if state.status != VenueStatus::Open => Ok(state),
            Some(_) => Err(VenueError::Refused(
                "not_cancellable: a sent swap lands or its blockhash expires (within about a \
                 minute)"
                    .into(),
            )),
            None => Err(VenueError::Refused(format!(
                "unknown_order: {}",
                order.order.client_order_id
            ))),
        }
    }

    async fn query(&self, order: &Routed) -> Result<Option<VenueOrder>, VenueError> {
        let cid = order.order.client_order_id.as_str();
        let sent = match lock(&self.inner.orders).get(cid) {
            None | Some(Slot::Preparing) => return Ok(None),
            Some(Slot::Ended(done)) => return Ok(Some(done.clone())),
            Some(Slot::Sent(sent)) => (**sent).clone(),
        };
        match self.check(cid).await? {
            Check::Terminal(done) => Ok(Some(done)),
            Check::Pending => Ok(Some(self.order_snapshot(cid, &sent))),
        }
    }

    async fn account(&self) -> Result<AccountState, VenueError> {
        let balances = self.balances().await?;
        let mut assets: BTreeMap<String, String> = BTreeMap::new();
        for (symbol, market) in &self.inner.markets {
            assets.insert(symbol.base().to_string(), market.base_mint.clone());
            assets.insert(symbol.quote().to_string(), market.quote_mint.clone());
        }
        let mut state = AccountState::default();
        let mut by_mint: HashMap<String, Decimal> = HashMap::new();
        for (asset, mint) in &assets {
            let d = self.decimals_of(mint).await?;
            let total = from_atomic(balances.get(mint).copied().unwrap_or(0), d)
                .map_err(VenueError::Transient)?;
            by_mint.insert(mint.clone(), total);
            state.balances.push(VenueBalance {
                asset: asset.clone(),
                total,
            });
        }
        if !assets.values().any(|m| m == WSOL_MINT) {
            // Native SOL pays the fees: shown even when no symbol trades it.
            let native = from_atomic(balances.get(WSOL_MINT).copied().unwrap_or(0), 9)
                .map_err(VenueError::Transient)?;
            let asset = if assets.contains_key("SOL") {
                "SOL_NATIVE"
            } else {
                "SOL"
            };
            state.balances.push(VenueBalance {
                asset: asset.into(),
                total: native,
            });
        }
        for (symbol, market) in &self.inner.markets {
            state.positions.push(VenuePosition {
                symbol: symbol.clone(),
                quantity: by_mint.get(&market.base_mint).copied().unwrap_or_default(),
                entry_price: None,
            });
        }
        let quotes: std::collections::BTreeSet<&String> =
            self.inner.markets.values().map(|m| &m.quote_mint).collect();
        if quotes.len() == 1 {
            state.cash = quotes
                .into_iter()
                .next()
                .and_then(|mint| by_mint.get(mint).copied());
        }
        Ok(state)
    }

    fn unknown_deadline(&self) -> Duration {
        Duration::from_secs(self.inner.settings.unknown_deadline_secs)
    }

    /// A swap is known by its signature only.
    fn finds_orders_by_client_id(&self) -> bool {
        false
    }

    /// The swap's signature was stored before the restart: watch it again. Sent or not
    /// (a crash between storing and sending), it lands or expires; its bytes are gone, so
    /// it is not sent again.
    fn restore(&self, order: &Routed, venue_order_id: &str, since_ns: u64) {
        let cid = order.order.client_order_id.as_str().to_string();
        let Some(market) = self.inner.markets.get(&order.order.symbol).cloned() else {
            tracing::warn!(client_order_id = %cid, "restored swap of a symbol no longer configured: not watched");
            return;
        };
        let sent = Sent {
            symbol: order.order.symbol.clone(),
            market,
            side: order.order.side,
            quantity: order.order.quantity.get(),
            signature: venue_order_id.to_string(),
            tx_base64: String::new(),
            last_valid_block_height: None,
            since_ns,
            terminal: None,
        };
        tracing::info!(venue = %self.inner.name, client_order_id = %cid, signature = venue_order_id, "watching a swap again after a restart");
        lock(&self.inner.orders).insert(cid.clone(), Slot::Sent(Box::new(sent)));
        self.spawn_watcher(&cid);
    }

    fn forget(&self, client_order_id: &str) {
        let mut orders = lock(&self.inner.orders);
        // Only an order that ended here: one still being sent or watched stays.
        let ended = match orders.get(client_order_id) {
            Some(Slot::Ended(_)) => true,
            Some(Slot::Sent(sent)) => sent.terminal.is_some(),
            _ => false,
        };
        if ended {
            orders.remove(client_order_id);
        }
    }
}

fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    /// RFC 8032 section 7.1, TEST 1..3 (Ed25519): secret key, public key, message, signature.
    const RFC8032: [(&str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn ed25519_rfc8032_vectors() {
        for (secret, public, message, signature) in RFC8032 {
            let key = SigningKey::from_bytes(&unhex(secret).try_into().unwrap());
            assert_eq!(key.verifying_key().to_bytes().to_vec(), unhex(public));
            assert_eq!(
                key.sign(&unhex(message)).to_bytes().to_vec(),
                unhex(signature)
            );
        }
    }

    // Fixture made once with solders 0.29 (Python), kept here verbatim:
    //   kp = Keypair.from_seed(bytes(range(32)))   # FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF
    //   program = Pubkey([5]*32); other = Pubkey([7]*32); alt = Pubkey([9]*32) holding Pubkey([11]*32)
    //   ix = Instruction(program, b"moonbus swap 1", [kp signer+writable, other writable, [11]*32 readonly])
    //   m0 = MessageV0.try_compile(kp.pubkey(), [ix], [alt], Hash([3]*32))
    //   unsigned = VersionedTransaction.populate(m0, [Signature.default()]); signed = VersionedTransaction(m0, [kp])
    //   legacy: Message.new_with_blockhash([Instruction(program, b"legacy", [kp signer+writable])], kp.pubkey(), Hash([3]*32))
    const FIXTURE_PUBKEY: &str = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF";
    const V0_UNSIGNED: &str = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACAAQABAwOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAQIDAAEDDm1vb25idXMgc3dhcCAxAQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJAAEA";
    const V0_SIGNED: &str = "Ac6xs2M1gK9iGowU0oWNU7/SnLmBt4O/yLx8s2+e2MG9qPjnruvhVlKceRpjlDZbyfbqLjD52h+KzZEzUI9UlgaAAQABAwOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAQIDAAEDDm1vb25idXMgc3dhcCAxAQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJAAEA";
    const V0_SIGNATURE: &str =
        "58gf3KBzvGmjiqnbBJAaK38SXyUforQ8TNm9UTBNqf6ox7WZep1ob6V5F8d1KUT3NNDBELfyrZHCW49LdJiQkqw3";
    const LEGACY_UNSIGNED: &str = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABAAECA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbgFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAQEBAAZsZWdhY3k=";
    const LEGACY_SIGNED: &str = "AQtRyS0ImlWxLG+AwPqsl1MUYi3ra8J/3OWkHqM93vB7EO1jv8bzrWcZS+xhRRpfUwH+8NBXSpwGaVQRiCwSBAsBAAECA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbgFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAQEBAAZsZWdhY3k=";

    fn fixture_key() -> SigningKey {
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8);
        SigningKey::from_bytes(&bytes)
    }

    #[test]
    fn signs_a_v0_swap_like_solders() {
        let key = fixture_key();
        assert_eq!(
            bs58::encode(key.verifying_key().to_bytes()).into_string(),
            FIXTURE_PUBKEY
        );
        let mut tx = SwapTransaction::parse(&b64(V0_UNSIGNED)).unwrap();
        assert_eq!(tx.version, Some(0));
        assert_eq!(tx.num_required_signatures, 1);
        assert_eq!(tx.account_keys.len(), 3);
        assert_eq!(tx.recent_blockhash, [3u8; 32]);
        assert_eq!(tx.to_bytes(), b64(V0_UNSIGNED), "round trip");
        tx.sign_as_only_signer(&key).unwrap();
        assert_eq!(tx.to_bytes(), b64(V0_SIGNED));
        assert_eq!(tx.id(), V0_SIGNATURE);
    }

    #[test]
    fn signs_a_legacy_transaction_like_solders() {
        let mut tx = SwapTransaction::parse(&b64(LEGACY_UNSIGNED)).unwrap();
        assert_eq!(tx.version, None);
        tx.sign_as_only_signer(&fixture_key()).unwrap();
        assert_eq!(tx.to_bytes(), b64(LEGACY_SIGNED));
    }

    #[test]
    fn refuses_to_sign_for_another_payer_or_with_cosigners() {
        let other = SigningKey::from_bytes(&[42u8; 32]);
        let mut tx = SwapTransaction::parse(&b64(V0_UNSIGNED)).unwrap();
        let err = tx.sign_as_only_signer(&other).unwrap_err();
        assert!(
            err.contains("fee payer is FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"),
            "{err}"
        );
        assert_eq!(tx.signatures[0], [0u8; 64], "nothing signed");
        // Two required signatures (header byte after the version prefix) and two slots.
        let mut bytes = b64(V0_UNSIGNED);
        bytes[0] = 2;
        bytes.splice(1..1, [0u8; 64]);
        bytes[1 + 128 + 1] = 2;
        let mut two = SwapTransaction::parse(&bytes).unwrap();
        assert!(two
            .sign_as_only_signer(&fixture_key())
            .unwrap_err()
            .contains("2 signers"));
    }

    #[test]
    fn compact_u16_known_encodings() {
        // solana-sdk short_vec.rs tests.
        let cases: [(u16, &[u8]); 8] = [
            (0x0000, &[0x00]),
            (0x007f, &[0x7f]),
            (0x0080, &[0x80, 0x01]),
            (0x00ff, &[0xff, 0x01]),
            (0x0100, &[0x80, 0x02]),
            (0x07ff, &[0xff, 0x0f]),
            (0x3fff, &[0xff, 0x7f]),
            (0xffff, &[0xff, 0xff, 0x03]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            write_compact_u16(value, &mut out);
            assert_eq!(out, bytes, "{value:#x}");
            let mut pos = 0;
            assert_eq!(read_compact_u16(bytes, &mut pos), Ok(value));
            assert_eq!(pos, bytes.len());
        }
        for value in 0..=u16::MAX {
            let mut out = Vec::new();
            write_compact_u16(value, &mut out);
            let mut pos = 0;
            assert_eq!(read_compact_u16(&out, &mut pos), Ok(value));
        }
        for bad in [
            &[0x80, 0x00][..],       // alias of 0
            &[0xff, 0x80, 0x00][..], // alias
            &[0xff, 0xff, 0x04][..], // 0x10000
            &[0x80, 0x80, 0x80][..], // a 4th byte
            &[0x80][..],             // cut short
            &[][..],
        ] {
            let mut pos = 0;
            assert!(read_compact_u16(bad, &mut pos).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_transactions_are_errors_never_panics() {
        for fixture in [V0_UNSIGNED, LEGACY_UNSIGNED, V0_SIGNED] {
            let bytes = b64(fixture);
            for cut in 0..bytes.len() {
                assert!(
                    SwapTransaction::parse(&bytes[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(SwapTransaction::parse(&longer)
                .unwrap_err()
                .contains("trailing"));
            // Every single-byte change parses or fails, never panics.
            for i in 0..bytes.len() {
                for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                    let mut changed = bytes.clone();
                    changed[i] = v;
                    let _ = SwapTransaction::parse(&changed);
                }
            }
        }
        let mut v1 = b64(V0_UNSIGNED);
        v1[65] = 0x81;
        assert!(SwapTransaction::parse(&v1)
            .unwrap_err()
            .contains("version 1"));
        let mut no_slot = b64(V0_UNSIGNED);
        no_slot.drain(0..65);
        no_slot.insert(0, 0);
        assert!(SwapTransaction::parse(&no_slot)
            .unwrap_err()
            .contains("0 signature slots"));
        assert!(SwapTransaction::parse(&[0xff, 0xff, 0x03]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = SwapTransaction::parse(&bytes);
        }
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn atomic_amounts_are_exact() {
        assert_eq!(to_atomic(dec("1.5"), 9), Ok(1_500_000_000));
        assert_eq!(to_atomic(dec("0.000000001"), 9), Ok(1));
        assert_eq!(
            to_atomic(dec("2.500000"), 6),
            Ok(2_500_000),
            "trailing zeros are fine"
        );
        assert_eq!(to_atomic(dec("7"), 0), Ok(7));
        assert!(to_atomic(dec("0.0000000001"), 9)
            .unwrap_err()
            .contains("more than the token's 9 decimals"));
        assert!(to_atomic(dec("1.0000001"), 6).is_err());
        assert!(to_atomic(dec("0"), 6).is_err());
        assert!(to_atomic(dec("-1"), 6).is_err());
        assert!(to_atomic(dec("18446744073709551616"), 0)
            .unwrap_err()
            .contains("too large"));
        assert_eq!(to_atomic(dec("18446744073.709551615"), 9), Ok(u64::MAX));
        assert!(to_atomic(dec("99999999999999"), 18).is_err());
        assert_eq!(from_atomic(1_500_000_000, 9), Ok(dec("1.5")));
        assert_eq!(from_atomic(-12, 6), Ok(dec("-0.000012")));
        assert_eq!(from_atomic(0, 6), Ok(Decimal::ZERO));
    }

    const USDC: &str = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v";
    const JUP: &str = "JUPyiwrYJFskUPiHa7hkeR8VUtAeFoSYbKedZNsDvCN";

    fn token_balance(index: u64, mint: &str, owner: &str, amount: &str, decimals: u8) -> Value {
        json!({"accountIndex": index, "mint": mint, "owner": owner,
               "programId": TOKEN_PROGRAMS[0],
               "uiTokenAmount": {"amount": amount, "decimals": decimals, "uiAmount": null, "uiAmountString": "ignored"}})
    }

    #[test]
    fn settlement_of_a_token_swap() {
        let other = "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin";
        let tx = json!({
            "blockTime": 1_700_000_000,
            "meta": {
                "err": null, "fee": 15000,
                "preBalances": [1_000_000_000u64, 0], "postBalances": [999_985_000u64, 0],
                "preTokenBalances": [
                    token_balance(1, USDC, FIXTURE_PUBKEY, "100000000", 6),
                    token_balance(3, USDC, other, "5", 6),
                ],
                "postTokenBalances": [
                    token_balance(1, USDC, FIXTURE_PUBKEY, "98765433", 6),
                    token_balance(2, JUP, FIXTURE_PUBKEY, "2000000", 6),
                    token_balance(3, USDC, other, "1234572", 6),
                ],
            },
            "transaction": {"message": {"accountKeys": [{"pubkey": FIXTURE_PUBKEY, "signer": true}]}},
        });
        let s = settlement(&tx, FIXTURE_PUBKEY, JUP, USDC).unwrap();
        assert_eq!(s.base, 2_000_000, "a new token account: absent before = 0");
        assert_eq!(s.quote, -1_234_567);
        assert_eq!(s.fee_lamports, 15000);
        assert_eq!(s.err, None);
        assert_eq!(s.block_time, Some(1_700_000_000));
    }

    #[test]
    fn settlement_of_native_sol_counts_lamports_net_of_the_fee() {
        // SELL 0.5 SOL for USDC with wrapAndUnwrapSol: the temporary wSOL account is
        // created and closed in the transaction, so only lamports show the SOL.
        let tx = json!({
            "meta": {
                "err": null, "fee": 5000,
                "preBalances": [2_000_000_000u64, 7], "postBalances": [1_499_995_000u64, 7],
                "preTokenBalances": [token_balance(2, USDC, FIXTURE_PUBKEY, "0", 6)],
                "postTokenBalances": [token_balance(2, USDC, FIXTURE_PUBKEY, "75125000", 6)],
            },
            "transaction": {"message": {"accountKeys": [{"pubkey": FIXTURE_PUBKEY}, {"pubkey": USDC}]}},
        });
        let s = settlement(&tx, FIXTURE_PUBKEY, WSOL_MINT, USDC).unwrap();
        assert_eq!(s.base, -500_000_000);
        assert_eq!(s.quote, 75_125_000);
    }

    #[test]
    fn settlement_reports_failures_and_malformed_meta() {
        let failed = json!({
            "meta": {"err": {"InstructionError": [3, {"Custom": 6001}]}, "fee": 5000,
                     "preBalances": [10u64], "postBalances": [5u64],
                     "preTokenBalances": [], "postTokenBalances": []},
            "transaction": {"message": {"accountKeys": [FIXTURE_PUBKEY]}},
        });
        let s = settlement(&failed, FIXTURE_PUBKEY, JUP, USDC).unwrap();
        assert_eq!(
            s.err,
            Some(json!({"InstructionError": [3, {"Custom": 6001}]}))
        );
        assert!(failure_reason(s.err.as_ref().unwrap()).starts_with("slippage_exceeded"));
        for bad in [
            json!({}),
            json!({"meta": null}),
            json!({"meta": {"fee": 1}, "transaction": {}}),
            json!({"meta": {"fee": 1, "preTokenBalances": 3}, "transaction": {"message": {"accountKeys": []}}}),
            json!({"meta": {"fee": 1, "postTokenBalances": [token_balance(0, USDC, FIXTURE_PUBKEY, "1.5", 6)]},
                   "transaction": {"message": {"accountKeys": []}}}),
            json!({"meta": {"fee": 1, "postTokenBalances": [token_balance(0, USDC, FIXTURE_PUBKEY, "-1", 6)]},
                   "transaction": {"message": {"accountKeys": []}}}),
            json!({"meta": {"fee": 1, "preBalances": []},
                   "transaction": {"message": {"accountKeys": [FIXTURE_PUBKEY]}}}),
        ] {
            assert!(
                settlement(&bad, FIXTURE_PUBKEY, WSOL_MINT, USDC).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn quotes_are_checked_against_the_request() {
        let quote = json!({"inputMint": USDC, "outputMint": JUP, "inAmount": "1234567",
            "outAmount": "2000000", "otherAmountThreshold": "1240739", "swapMode": "ExactOut",
            "slippageBps": 50});
        assert_eq!(
            check_quote(&quote, USDC, JUP, "ExactOut", 2_000_000),
            Ok(1_240_739)
        );
        assert!(check_quote(&quote, USDC, JUP, "ExactOut", 2_000_001)
            .unwrap_err()
            .contains("outAmount"));
        assert!(check_quote(&quote, JUP, USDC, "ExactOut", 2_000_000).is_err());
        assert!(check_quote(&quote, USDC, JUP, "ExactIn", 1_234_567)
            .unwrap_err()
            .contains("swapMode"));
        let mut odd = quote.clone();
        odd["otherAmountThreshold"] = json!("1e6");
        assert!(check_quote(&odd, USDC, JUP, "ExactOut", 2_000_000).is_err());
        odd["otherAmountThreshold"] = json!(1240739);
        assert!(
            check_quote(&odd, USDC, JUP, "ExactOut", 2_000_000).is_err(),
            "a number, not a string"
        );
    }

    #[test]
    fn fees_in_the_quote_token() {
        // SOL-USDC: 15000 lamports at 15.025 USDC for 0.1 SOL = 0.00225375 -> 0.002254.
        let fee = quote_fee(15_000, WSOL_MINT, USDC, dec("0.1"), dec("15.025"), 6);
        assert_eq!(fee, Some(dec("0.002254")));
        // USDC-SOL style (SOL quote): the fee in SOL, exact.
        assert_eq!(
            quote_fee(15_000, USDC, WSOL_MINT, dec("1"), dec("0.0066"), 9),
            Some(dec("0.000015"))
        );
        assert_eq!(
            quote_fee(15_000, JUP, USDC, dec("2"), dec("1.625"), 6),
            None
        );
    }

    #[test]
    fn the_ioc_limit_rule_uses_the_worst_price_within_slippage() {
        // BUY 0.1 SOL, at most 15.100125 USDC: 151.00125 per SOL.
        let worst = 15_100_125;
        assert_eq!(
            limit_met(Side::Buy, worst, 6, dec("0.1"), dec("151.01")),
            Ok((true, dec("151.00125")))
        );
        assert!(
            !limit_met(Side::Buy, worst, 6, dec("0.1"), dec("151"))
                .unwrap()
                .0
        );
        assert!(
            limit_met(Side::Buy, worst, 6, dec("0.1"), dec("151.00125"))
                .unwrap()
                .0
        );
        // SELL 0.1 SOL, at least 14.949875 USDC.
        assert!(
            limit_met(Side::Sell, 14_949_875, 6, dec("0.1"), dec("149.49875"))
                .unwrap()
                .0
        );
        assert!(
            !limit_met(Side::Sell, 14_949_875, 6, dec("0.1"), dec("149.5"))
                .unwrap()
                .0
        );
    }

    #[test]
    fn swap_answers_are_read() {
        let ok = json!({"swapTransaction": V0_UNSIGNED, "lastValidBlockHeight": 279_000_150u64});
        let (tx, last) = read_swap(&ok).unwrap();
        assert_eq!(last, 279_000_150);
        assert_eq!(tx.account_keys[0], fixture_key().verifying_key().to_bytes());
        assert!(read_swap(&json!({"swapTransaction": "!!", "lastValidBlockHeight": 1})).is_err());
        assert!(read_swap(&json!({"swapTransaction": V0_UNSIGNED})).is_err());
        assert!(read_swap(&json!({"swapTransaction": "AAAA", "lastValidBlockHeight": 1})).is_err());
    }

    #[test]
    fn token_accounts_are_parsed() {
        let result = json!({"context": {"slot": 1}, "value": [
            {"pubkey": "x", "account": {"data": {"parsed": {"info": {"mint": USDC, "owner": FIXTURE_PUBKEY,
                "tokenAmount": {"amount": "98765433", "decimals": 6}}, "type": "account"}, "program": "spl-token"}}},
            {"pubkey": "y", "account": {"data": {"parsed": {"info": {"mint": JUP, "owner": FIXTURE_PUBKEY,
                "tokenAmount": {"amount": "0", "decimals": 6}}}}}},
        ]});
        assert_eq!(
            parse_token_accounts(&result).unwrap(),
            vec![(USDC.to_string(), 98_765_433), (JUP.to_string(), 0)]
        );
        assert!(parse_token_accounts(
            &json!({"value": [{"account": {"data": ["AA==", "base64"]}}]})
        )
        .is_err());
        assert!(parse_token_accounts(&json!({})).is_err());
    }

    const FIXTURE_KEYPAIR: &str = "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,3,161,7,191,243,206,16,190,29,112,221,24,231,75,192,153,103,228,214,48,155,165,13,95,29,220,134,100,18,85,49,184]";

    #[test]
    fn keypairs_are_checked() {
        let key = parse_keypair(FIXTURE_KEYPAIR).unwrap();
        assert_eq!(key.to_bytes(), fixture_key().to_bytes());
        let bytes: Vec<u8> = serde_json::from_str(FIXTURE_KEYPAIR).unwrap();
        let b58 = bs58::encode(&bytes).into_string();
        assert_eq!(parse_keypair(&b58).unwrap().to_bytes(), key.to_bytes());
        let mut wrong = bytes.clone();
        wrong[63] ^= 1;
        assert!(parse_keypair(&serde_json::to_string(&wrong).unwrap())
            .unwrap_err()
            .contains("does not match"));
        assert!(parse_keypair("[1,2,3]").unwrap_err().contains("3 bytes"));
        let err = parse_keypair("[0,1,2,300]").unwrap_err();
        assert!(!err.contains("300"), "errors never quote the key: {err}");
    }

    fn temp_keypair(mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("moonbus-jup-{}-{n}.json", std::process::id()));
        std::fs::write(&path, FIXTURE_KEYPAIR).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn settings(path: &str) -> Value {
        json!({"symbols": {"SOL-USDC": format!("{WSOL_MINT}/{USDC}"), "JUP-USDC": format!("{JUP}/{USDC}")},
               "keypair_path": path, "rpc_url": "http://127.0.0.1:9"})
    }

    #[test]
    fn an_ended_order_is_forgotten_one_in_progress_is_not() {
        let path = temp_keypair(0o600);
        let venue =
            Jupiter::from_config("jupiter", "jupiter", Mode::Testnet, settings(&path)).unwrap();
        let ended = VenueOrder {
            client_order_id: Some("done".into()),
            venue_order_id: None,
            symbol: None,
            venue_symbol: String::new(),
            status: VenueStatus::Expired,
            filled: Decimal::ZERO,
            filled_notional: Decimal::ZERO,
            fee: Decimal::ZERO,
            reason: None,
            ts: 1,
        };
        {
            let mut orders = lock(&venue.inner.orders);
            orders.insert("done".into(), Slot::Ended(ended));
            orders.insert("sending".into(), Slot::Preparing);
        }
        venue.forget("done");
        venue.forget("sending");
        let orders = lock(&venue.inner.orders);
        assert!(!orders.contains_key("done"));
        assert!(orders.contains_key("sending"), "still being sent: kept");
    }

    #[tokio::test]
    async fn config_is_checked_and_the_key_never_shown() {
        let path = temp_keypair(0o600);
        let venue =
            Jupiter::from_config("jupiter", "jupiter", Mode::Testnet, settings(&path)).unwrap();
        assert_eq!(venue.address(), FIXTURE_PUBKEY);
        let shown = format!("{venue:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("[0, 1, 2"),
            "{shown}"
        );
        assert_eq!(venue.unknown_deadline(), Duration::from_secs(120));
        assert_eq!(venue.inner.settings.slippage_bps, 50);
        assert_eq!(venue.inner.jupiter_url, DEFAULT_JUPITER_URL);

        let loose = temp_keypair(0o644);
        let err =
            Jupiter::from_config("jupiter", "jupiter", Mode::Live, settings(&loose)).unwrap_err();
        assert!(format!("{err:#}").contains("mode 0644"), "{err:#}");

        let mut unknown = settings(&path);
        unknown["slipage_bps"] = json!(10);
        assert!(Jupiter::from_config("j", "jupiter", Mode::Live, unknown).is_err());
        let mut both = settings(&path);
        both["priority_max_lamports"] = json!(1000);
        both["compute_unit_price_micro_lamports"] = json!(1000);
        assert!(format!(
            "{:#}",
            Jupiter::from_config("j", "jupiter", Mode::Live, both).unwrap_err()
        )
        .contains("not both"));
        for bad in [
            json!({"SOL-USDC": USDC}),
            json!({"SOL-USDC": format!("{USDC}/{USDC}")}),
            json!({"SOL-USDC": "abc/def"}),
            json!({"sol/usdc": format!("{WSOL_MINT}/{USDC}")}),
            json!({"SOL-USDC": format!("{WSOL_MINT}/{USDC}"), "SOL-JUP": format!("{USDC}/{JUP}")}),
        ] {
            let mut s = settings(&path);
            s["symbols"] = bad.clone();
            assert!(
                Jupiter::from_config("j", "jupiter", Mode::Live, s).is_err(),
                "{bad}"
            );
        }
        let mut no_key = settings(&path);
        no_key.as_object_mut().unwrap().remove("keypair_path");
        no_key["keypair_env"] = json!("MOONBUS_TEST_JUPITER_KEYPAIR_NOT_SET");
        let err = Jupiter::from_config("j", "jupiter", Mode::Live, no_key).unwrap_err();
        assert!(
            format!("{err:#}").contains("MOONBUS_TEST_JUPITER_KEYPAIR_NOT_SET"),
            "{err:#}"
        );
        std::fs::remove_file(path).ok();
        std::fs::remove_file(loose).ok();
    }
}
