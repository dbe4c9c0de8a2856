//! The bus contract in Rust: one type per message of proto/SUBJECTS.md.
//!
//! A mirror of `services/common/models.py` (the source of truth) and of the JSON Schemas
//! generated from it in `proto/schemas`. `tests/vectors.rs` runs every vector of
//! `proto/vectors` through these types, so Rust and Python judge the wire the same way.
//!
//! Rules (DESIGN.md section 2), all enforced while deserializing:
//! - money is a decimal *string* on the wire (`"187.42"`) and a [`Decimal`] in code;
//!   a JSON number where money belongs is rejected; it is written fixed-point, never
//!   with an exponent ([`Money`], [`PositiveMoney`], [`NonNegativeMoney`]); its
//!   magnitude is below 1e14 ([`MONEY_LIMIT`]), so the product of any two money values
//!   fits a `Decimal` (< 1e28 < 7.9e28) and cannot overflow;
//! - time is integer nanoseconds since the epoch (`u64`); integers and bools are never
//!   read from strings, integers never from floats;
//! - symbols are `BASE-QUOTE`, venues lowercase, both single safe subject tokens
//!   ([`Symbol`], [`Venue`], ... check themselves, also when parsed from a subject);
//! - market data, events and replies ignore unknown fields; orders and requests
//!   (`deny_unknown_fields`) reject them;
//! - optional fields that are `None` are left out when writing; missing or `null`
//!   both read as `None`. Fields with a default in the model have the same default here.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Nanoseconds since the Unix epoch, the unit of every `*_ts` field.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A value that breaks the contract: bad pattern, out of range, inconsistent fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(String);

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The start of an offending input, quoted, for error messages.
fn quoted(text: &str) -> String {
    let start: String = text.chars().take(40).collect();
    format!("{start:?}")
}

// ---------------------------------------------------------------- money

const MONEY_MAX_LEN: usize = 40;
const MONEY_NOT_A_NUMBER: &str =
    "money must be a decimal string such as \"187.42\", not a JSON number";

/// At most this many digits before the decimal point: |money| < 1e14.
pub const MONEY_INT_DIGITS: usize = 14;

/// 1e14, the exclusive bound of every money value (|x| < 1e14). Chosen so that the
/// product of any two money values (price x quantity, notional x rate) stays below
/// 1e28, inside `Decimal`'s 96-bit range (7.9e28): multiplying two values read from
/// the wire can never overflow. Sums of many products can: the services use checked
/// arithmetic on top and refuse with a code (never a panic).
pub const MONEY_LIMIT: Decimal = Decimal::from_parts(276_447_232, 23_283, 0, false, 0);

/// The largest money value with 14 decimals: 99999999999999.99999999999999 (what a
/// figure beyond the range is shown as, see [`Money::saturating`]).
pub const MONEY_MAX: Decimal =
    Decimal::from_parts(268_435_455, 1_042_612_833, 542_101_086, false, 14);

fn money_in_range(value: &Decimal) -> bool {
    value.abs() < MONEY_LIMIT
}

fn out_of_range(value: impl fmt::Display) -> ValidationError {
    ValidationError::new(format!(
        "money {value} out of range: |x| must be below 1e14 (at most {MONEY_INT_DIGITS} digits before the point)"
    ))
}

/// `^-?(0|[1-9][0-9]*)(\.[0-9]+)?$`: no exponent, no `+`, no leading zeros, no spaces.
fn is_decimal_literal(text: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match unsigned.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    let fraction_ok = match frac {
        Some(frac) => digits(frac),
        None => true,
    };
    digits(int) && (int == "0" || !int.starts_with('0')) && fraction_ok
}

/// The wire form of money to a `Decimal`: a decimal literal (the schema's pattern
/// `^-?(0|[1-9][0-9]{0,13})(\.[0-9]+)?$`, at most 40 characters), exact (rust_decimal
/// holds 28 fractional digits and a 96-bit mantissa: anything beyond is refused,
/// never rounded).
fn parse_decimal(text: &str) -> Result<Decimal, ValidationError> {
    if text.len() > MONEY_MAX_LEN || !is_decimal_literal(text) {
        return Err(ValidationError::new(format!(
            "not a decimal string: {}",
            quoted(text)
        )));
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let int_digits = unsigned.find('.').unwrap_or(unsigned.len());
    if int_digits > MONEY_INT_DIGITS {
        return Err(out_of_range(quoted(text)));
    }
    Decimal::from_str_exact(text)
        .map_err(|e| ValidationError::new(format!("decimal {text} out of range: {e}")))
}

/// Fixed-point, never exponent notation, never "-0"; the scale is kept ("9500.00").
fn write_decimal(value: &Decimal, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut value = *value;
    if value.is_zero() {
        value.set_sign_positive(true);
    }
    fmt::Display::fmt(&value, f)
}

/// Reads money from a JSON string only; a number gets a message that says why.
struct MoneyVisitor<T>(PhantomData<T>);

impl<T: FromStr<Err = ValidationError>> Visitor<'_> for MoneyVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("money as a decimal string such as \"187.42\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<T, E> {
        Err(E::custom(MONEY_NOT_A_NUMBER))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
        Err(E::custom(MONEY_NOT_A_NUMBER))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Err(E::custom(MONEY_NOT_A_NUMBER))
    }
}

/// A money newtype: `$ok` is the bound `new` checks; `unsigned` types also refuse a
/// leading `-` on the wire (as their schema pattern does, so `"-0"` is not a size).
macro_rules! money_type {
    (
        $(#[$doc:meta])*
        pub struct $name:ident($field_vis:vis Decimal);
        unsigned: $unsigned:literal, rule: $rule:literal, check: $ok:expr
    ) => {
        $(#[$doc])*
        ///
        /// Derefs to [`Decimal`] for arithmetic; `Display` and the wire form are
        /// fixed-point strings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name($field_vis Decimal);

        impl $name {
            /// Checks the range (|x| < [`MONEY_LIMIT`]) and the bound.
            pub fn new(value: Decimal) -> Result<Self, ValidationError> {
                let ok: fn(&Decimal) -> bool = $ok;
                if !money_in_range(&value) {
                    Err(out_of_range(value))
                } else if ok(&value) {
                    Ok(Self(value))
                } else {
                    Err(ValidationError::new(format!("{value}: {}", $rule)))
                }
            }

            pub const fn get(self) -> Decimal {
                self.0
            }
        }

        impl Deref for $name {
            type Target = Decimal;
            fn deref(&self) -> &Decimal {
                &self.0
            }
        }

        impl From<$name> for Decimal {
            fn from(value: $name) -> Decimal {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(text: &str) -> Result<Self, ValidationError> {
                let value = parse_decimal(text)?;
                if $unsigned && text.starts_with('-') {
                    return Err(ValidationError::new(format!("{text}: {}", $rule)));
                }
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValidationError;
            fn try_from(text: &str) -> Result<Self, ValidationError> {
                text.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_decimal(&self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(MoneyVisitor::<Self>(PhantomData))
            }
        }
    };
}

money_type! {
    /// Any exact decimal within the range, may be negative: PnL, cash, positions.
    pub struct Money(Decimal);
    unsigned: false, rule: "any decimal", check: |_| true
}
money_type! {
    /// Prices and order quantities: `> 0`.
    pub struct PositiveMoney(Decimal);
    unsigned: true, rule: "must be greater than zero", check: |v| *v > Decimal::ZERO
}
money_type! {
    /// Sizes, fees, notionals, filled quantities: `>= 0`.
    pub struct NonNegativeMoney(Decimal);
    unsigned: true, rule: "must not be negative", check: |v| *v >= Decimal::ZERO
}

impl Money {
    pub const ZERO: Self = Self(Decimal::ZERO);
}

impl NonNegativeMoney {
    pub const ZERO: Self = Self(Decimal::ZERO);
}

impl Default for Money {
    fn default() -> Self {
        Self::ZERO
    }
}

impl Default for NonNegativeMoney {
    fn default() -> Self {
        Self::ZERO
    }
}

impl TryFrom<Decimal> for Money {
    type Error = ValidationError;
    fn try_from(value: Decimal) -> Result<Self, ValidationError> {
        Self::new(value)
    }
}

impl Money {
    /// `value`, or the nearest end of the range (-MONEY_MAX or MONEY_MAX) for a figure
    /// beyond it: for reports of computed figures (equity, PnL) that must stay readable.
    pub fn saturating(value: Decimal) -> Self {
        Self(value.clamp(-MONEY_MAX, MONEY_MAX))
    }
}

impl NonNegativeMoney {
    /// `value` clamped into 0 ..= MONEY_MAX (a negative figure is 0).
    pub fn saturating(value: Decimal) -> Self {
        Self(value.clamp(Decimal::ZERO, MONEY_MAX))
    }
}

impl TryFrom<Decimal> for PositiveMoney {
    type Error = ValidationError;
    fn try_from(value: Decimal) -> Result<Self, ValidationError> {
        Self::new(value)
    }
}

impl TryFrom<Decimal> for NonNegativeMoney {
    type Error = ValidationError;
    fn try_from(value: Decimal) -> Result<Self, ValidationError> {
        Self::new(value)
    }
}

impl From<PositiveMoney> for Money {
    fn from(value: PositiveMoney) -> Self {
        Self(value.0)
    }
}

impl From<NonNegativeMoney> for Money {
    fn from(value: NonNegativeMoney) -> Self {
        Self(value.0)
    }
}

impl From<PositiveMoney> for NonNegativeMoney {
    fn from(value: PositiveMoney) -> Self {
        Self(value.0)
    }
}

// ---------------------------------------------------------------- tokens

fn is_symbol(text: &str) -> bool {
    let part = |p: &str| {
        (1..=20).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    text.split_once('-')
        .is_some_and(|(base, quote)| part(base) && part(quote))
}

fn is_venue(text: &str) -> bool {
    (1..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_client_order_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_agent_name(text: &str) -> bool {
    (1..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_interval(text: &str) -> bool {
    match text.as_bytes().split_last() {
        Some((unit, count)) => {
            b"smhd".contains(unit)
                && (1..=4).contains(&count.len())
                && count.iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

/// `^[a-z][a-z0-9_]*$`, the `code` of an [`ErrorBody`].
fn is_error_code(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $pattern:literal, $valid:ident) => {
        $(#[$doc])*
        ///
        /// Checked when built (`parse`, `TryFrom`) and when deserialized.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("`", $pattern, "`, as in the JSON Schema.")]
            pub const PATTERN: &'static str = $pattern;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(text: String) -> Result<Self, ValidationError> {
                if $valid(&text) {
                    Ok(Self(text))
                } else {
                    Err(ValidationError::new(format!(
                        concat!("invalid ", $what, " {} (must match {})"),
                        quoted(&text),
                        $pattern
                    )))
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValidationError;
            fn try_from(text: &str) -> Result<Self, ValidationError> {
                Self::try_from(text.to_owned())
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(text: &str) -> Result<Self, ValidationError> {
                Self::try_from(text)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

token_type! {
    /// `BASE-QUOTE`, e.g. `BTC-USD`: one safe subject token.
    Symbol, "symbol", "^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$", is_symbol
}
token_type! {
    /// A venue, lowercase, e.g. `sim`, `binance`; `all` = aggregated.
    Venue, "venue", "^[a-z0-9_]{1,32}$", is_venue
}
token_type! {
    /// The id the agent gives its order; the JetStream dedup key (`Nats-Msg-Id`).
    ClientOrderId, "client_order_id", "^[A-Za-z0-9_-]{1,64}$", is_client_order_id
}
token_type! {
    /// An agent's name, e.g. `trading`.
    AgentName, "agent name", "^[a-z0-9_-]{1,32}$", is_agent_name
}
token_type! {
    /// A bar interval: a count and a unit, `30s`, `1m`, `4h`, `1d`.
    Interval, "interval", "^[0-9]{1,4}[smhd]$", is_interval
}

impl Symbol {
    /// `BTC` of `BTC-USD`.
    pub fn base(&self) -> &str {
        self.0.split_once('-').map_or("", |(base, _)| base)
    }

    /// `USD` of `BTC-USD`.
    pub fn quote(&self) -> &str {
        self.0.split_once('-').map_or("", |(_, quote)| quote)
    }
}

impl Venue {
    /// The default venue of an order.
    pub fn sim() -> Self {
        Self("sim".into())
    }
}

impl Interval {
    /// The length in seconds (`0s` is 0).
    pub fn seconds(&self) -> u64 {
        let (count, unit) = self.0.split_at(self.0.len() - 1);
        let count: u64 = count.parse().unwrap_or(0);
        count
            * match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                _ => 86_400,
            }
    }
}

// ---------------------------------------------------------------- bounds

/// `deserialize_with` helpers for the numeric and length bounds of the models
/// (`Field(ge=..., gt=..., le=..., min_length=..., max_length=...)`).
mod check {
    use super::*;

    fn float<'de, D: Deserializer<'de>>(
        deserializer: D,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) -> Result<f64, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if ok(value) {
            Ok(value)
        } else {
            Err(de::Error::custom(format!("{value} {rule}")))
        }
    }

    /// Score: -1 ..= 1.
    pub fn score<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        float(d, |v| (-1.0..=1.0).contains(&v), "is not in [-1, 1]")
    }

    /// Confidence, agreement: 0 ..= 1.
    pub fn unit<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        float(d, |v| (0.0..=1.0).contains(&v), "is not in [0, 1]")
    }

    pub fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        float(d, |v| v >= 0.0, "must not be negative")
    }

    pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        float(d, |v| v > 0.0, "must be greater than zero")
    }

    /// MonitorStartRequest.threshold_pct: 0 < x <= 100.
    pub fn threshold_pct<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        float(d, |v| v > 0.0 && v <= 100.0, "is not in (0, 100]")
    }

    /// MonitorStartRequest.window_s: 0 < x <= 86400 (a day).
    pub fn window_s<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        float(d, |v| v > 0.0 && v <= 86_400.0, "is not in (0, 86400]")
    }

    /// LimitsPatch.max_drawdown_pct: absent, null or 0 ..= 100.
    pub fn optional_percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(v) if !(0.0..=100.0).contains(&v) => {
                Err(de::Error::custom(format!("{v} is not in [0, 100]")))
            }
            value => Ok(value),
        }
    }

    /// A string of MIN ..= MAX characters (Unicode scalar values, as Python counts).
    pub fn chars<'de, const MIN: usize, const MAX: usize, D: Deserializer<'de>>(
        d: D,
    ) -> Result<String, D::Error> {
        let text = String::deserialize(d)?;
        let n = text.chars().count();
        if (MIN..=MAX).contains(&n) {
            Ok(text)
        } else {
            Err(de::Error::custom(format!(
                "a string of {MIN} to {MAX} characters expected, got {n}"
            )))
        }
    }

    pub fn error_code<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let code = String::deserialize(d)?;
        if is_error_code(&code) {
            Ok(code)
        } else {
            Err(de::Error::custom(format!(
                "invalid error code {} (must match ^[a-z][a-z0-9_]*$)",
                quoted(&code)
            )))
        }
    }

    /// HistoryRequest.limit: 1 ..= 5000.
    pub fn history_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let limit = u32::deserialize(d)?;
        if (1..=5000).contains(&limit) {
            Ok(limit)
        } else {
            Err(de::Error::custom(format!(
                "limit {limit} is not in [1, 5000]"
            )))
        }
    }

    /// PricesRequest.symbols: 1 ..= 10000 symbols.
    pub fn symbol_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Symbol>, D::Error> {
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
}

// ---------------------------------------------------------------- enums

macro_rules! wire_enum {
    (
        $(#[$meta:meta])* $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $wire:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$variant_meta])* #[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            /// The wire form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $wire,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(text: &str) -> Result<Self, ValidationError> {
                match text {
                    $($wire => Ok(Self::$variant),)+
                    _ => Err(ValidationError::new(format!(
                        concat!("invalid ", stringify!($name), " {}"),
                        quoted(text)
                    ))),
                }
            }
        }
    };
}

wire_enum! {
    Side { Buy = "BUY", Sell = "SELL" }
}
wire_enum! {
    #[derive(Default)]
    OrderType { #[default] Market = "MARKET", Limit = "LIMIT" }
}
wire_enum! {
    #[derive(Default)]
    TimeInForce { #[default] Gtc = "GTC", Ioc = "IOC" }
}
wire_enum! {
    OrderStatus {
        Accepted = "ACCEPTED",
        Rejected = "REJECTED",
        PartiallyFilled = "PARTIALLY_FILLED",
        Filled = "FILLED",
        Cancelled = "CANCELLED",
        Expired = "EXPIRED",
        Failed = "FAILED",
    }
}
wire_enum! {
    /// What risk allows: trade, only reduce positions, nothing.
    TradingState { Active = "ACTIVE", ReduceOnly = "REDUCE_ONLY", Halted = "HALTED" }
}
wire_enum! {
    /// The decision of a [`Signal`].
    Action { Buy = "BUY", Sell = "SELL", Hold = "HOLD" }
}
wire_enum! {
    /// A swarm member's vote; ABSTAIN when it failed or timed out.
    VoteAction { Buy = "BUY", Sell = "SELL", Hold = "HOLD", Abstain = "ABSTAIN" }
}
wire_enum! {
    /// [`PriceAlert::direction`].
    Direction { Up = "UP", Down = "DOWN" }
}
wire_enum! {
    /// [`FeedStatus::status`].
    FeedState {
        Connected = "connected",
        Stale = "stale",
        Reconnecting = "reconnecting",
        Disconnected = "disconnected",
        ReplayDone = "replay_done",
    }
}
wire_enum! {
    /// [`KillSwitchRequest::action`].
    KillSwitchAction { Engage = "engage", Release = "release", Status = "status" }
}
wire_enum! {
    /// [`Consensus::method`].
    ConsensusMethod { Majority = "majority", Weighted = "weighted", Quorum = "quorum" }
}

impl Side {
    /// +1 for BUY, -1 for SELL: the sign of the position change.
    pub fn sign(self) -> Decimal {
        match self {
            Side::Buy => Decimal::ONE,
            Side::Sell => Decimal::NEGATIVE_ONE,
        }
    }

    pub fn opposite(self) -> Self {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

// ---------------------------------------------------------------- defaults

fn default_actor() -> String {
    "operator".into()
}

fn default_interval() -> Interval {
    Interval("1m".into())
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

/// For the messages with a cross-field rule: derived with `#[serde(remote = "Self")]`
/// (which makes the derive produce inherent fns instead of trait impls), the serde
/// traits are implemented here and run `validate()` after reading, so a message that
/// breaks its rule fails to deserialize. Use the traits (`serde_json::from_slice`,
/// `bus::decode`), not the inherent `Type::deserialize`, which skips the check.
macro_rules! validated_on_read {
    ($($name:ident),+) => {$(
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $name::serialize(self, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let message = $name::deserialize(deserializer)?;
                message.validate().map_err(de::Error::custom)?;
                Ok(message)
            }
        }
    )+};
}

// ---------------------------------------------------------------- market data

/// `md.tick.<venue>.<symbol>`: one price update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    pub venue: Venue,
    pub symbol: Symbol,
    pub price: PositiveMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bid: Option<PositiveMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<PositiveMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<NonNegativeMoney>,
    pub seq: u64,
    pub ts: u64,
}

/// `md.bar.<interval>.<venue>.<symbol>`: one closed OHLCV bar [start_ts, end_ts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bar {
    pub venue: Venue,
    pub symbol: Symbol,
    pub interval: Interval,
    pub open: PositiveMoney,
    pub high: PositiveMoney,
    pub low: PositiveMoney,
    pub close: PositiveMoney,
    pub volume: NonNegativeMoney,
    pub trades: u64,
    pub start_ts: u64,
    pub end_ts: u64,
}

/// One book level on the wire: `["price", "size"]`.
pub type PriceLevel = (PositiveMoney, NonNegativeMoney);

/// `md.book.<venue>.<symbol>`: top N levels, best first. venue `all` = aggregated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Book {
    pub venue: Venue,
    pub symbol: Symbol,
    pub bids: Vec<PriceLevel>,
    pub asks: Vec<PriceLevel>,
    pub seq: u64,
    pub ts: u64,
}

/// `md.alert.<symbol>`: the price moved >= threshold_pct within window_s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceAlert {
    pub venue: Venue,
    pub symbol: Symbol,
    pub direction: Direction,
    pub change_pct: f64,
    #[serde(deserialize_with = "check::positive")]
    pub threshold_pct: f64,
    #[serde(deserialize_with = "check::positive")]
    pub window_s: f64,
    pub from_price: PositiveMoney,
    pub price: PositiveMoney,
    pub ts: u64,
}

/// `md.status.<venue>`: health of one feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedStatus {
    pub venue: Venue,
    pub status: FeedState,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub symbols: u64,
    pub ts: u64,
}

// ---------------------------------------------------------------- risk

/// `risk.verdict.<symbol>`: may agents trade this symbol, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub symbol: Symbol,
    pub state: TradingState,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub position: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<NonNegativeMoney>,
    /// Why, in words (e.g. the move that tripped the circuit breaker).
    #[serde(default)]
    pub detail: String,
    /// While a circuit breaker halts the symbol: when the halt ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_until: Option<u64>,
    pub ts: u64,
}

/// `risk.account`: the account as risk sees it (on change and as a heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub state: TradingState,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub cash: Money,
    pub equity: Money,
    pub peak_equity: Money,
    #[serde(deserialize_with = "check::non_negative")]
    pub drawdown_pct: f64,
    pub realized_pnl: Money,
    pub unrealized_pnl: Money,
    pub day_pnl: Money,
    pub fees: NonNegativeMoney,
    pub gross_exposure: NonNegativeMoney,
    pub open_positions: u64,
    pub kill_switch: bool,
    pub ts: u64,
}

/// One position, in [`PositionsReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub symbol: Symbol,
    pub quantity: Money,
    pub avg_price: NonNegativeMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_price: Option<NonNegativeMoney>,
    pub realized_pnl: Money,
    pub unrealized_pnl: Money,
    pub fees: NonNegativeMoney,
    pub notional: NonNegativeMoney,
}

/// `risk.api.check` request: may this order be routed? Sent by execution only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskCheckRequest {
    pub client_order_id: ClientOrderId,
    pub agent: AgentName,
    pub symbol: Symbol,
    pub venue: Venue,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub quantity: PositiveMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_price: Option<PositiveMoney>,
    #[serde(default)]
    pub reduce_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_price: Option<PositiveMoney>,
    pub ts: u64,
}

/// `risk.api.check` reply. approved=false always carries reason_code and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RiskCheckResult {
    pub client_order_id: ClientOrderId,
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub state: TradingState,
    pub ts: u64,
}

impl RiskCheckResult {
    /// A refused check must carry a non-empty reason_code and reason.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let missing = |s: &Option<String>| s.as_deref().unwrap_or_default().is_empty();
        if !self.approved && (missing(&self.reason_code) || missing(&self.reason)) {
            return Err(ValidationError::new(
                "a refused check must carry reason_code and reason",
            ));
        }
        Ok(())
    }
}

/// `risk.api.killswitch` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchRequest {
    pub action: KillSwitchAction,
    /// 1 to 64 characters.
    #[serde(
        default = "default_actor",
        deserialize_with = "check::chars::<1, 64, _>"
    )]
    pub actor: String,
    /// At most 500 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 500, _>")]
    pub reason: String,
    #[serde(default)]
    pub flatten: bool,
}

/// `risk.api.killswitch` reply and `risk.events` kill-switch event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillSwitchState {
    pub engaged: bool,
    pub actor: String,
    pub reason: String,
    pub changed_ts: u64,
    /// engage + flatten: reduce-only orders stored in ORDERS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten_orders: Option<u64>,
}

/// The limits rust-risk enforces (all present in replies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskLimits {
    pub max_order_notional: NonNegativeMoney,
    pub max_position_notional: NonNegativeMoney,
    pub max_gross_exposure: NonNegativeMoney,
    pub min_cash: Money,
    pub max_daily_loss: NonNegativeMoney,
    #[serde(deserialize_with = "check::non_negative")]
    pub max_drawdown_pct: f64,
}

/// The limits to change; the ones left out keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_notional: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gross_exposure: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cash: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_daily_loss: Option<NonNegativeMoney>,
    /// 0 ..= 100.
    #[serde(
        default,
        deserialize_with = "check::optional_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_drawdown_pct: Option<f64>,
}

/// `risk.api.limits` request: read (no `set`) or change some limits; optionally
/// release the loss latch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<LimitsPatch>,
    /// End the loss latch (REDUCE_ONLY / HALTED after a loss or drawdown limit tripped).
    #[serde(default)]
    pub release_loss_latch: bool,
    /// 1 to 64 characters.
    #[serde(
        default = "default_actor",
        deserialize_with = "check::chars::<1, 64, _>"
    )]
    pub actor: String,
    /// At most 500 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 500, _>")]
    pub reason: String,
}

/// `{}`: read the limits, change nothing.
impl Default for LimitsRequest {
    fn default() -> Self {
        Self {
            set: None,
            release_loss_latch: false,
            actor: default_actor(),
            reason: String::new(),
        }
    }
}

/// `risk.api.limits` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsReply {
    pub limits: RiskLimits,
}

/// `risk.api.positions` request; no symbol = all positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
}

/// `risk.api.positions` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionsReply {
    pub positions: Vec<Position>,
    pub account: AccountState,
}

// ---------------------------------------------------------------- agents

/// `agent.sentiment.<symbol>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    pub symbol: Symbol,
    /// -1 ..= 1.
    #[serde(deserialize_with = "check::score")]
    pub score: f64,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    pub items: u64,
    #[serde(default)]
    pub sources: Vec<String>,
    pub model: String,
    pub ts: u64,
}

/// `agent.signal.<agent>.<symbol>`: one decision, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub agent: AgentName,
    pub symbol: Symbol,
    pub action: Action,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    pub reasoning: String,
    pub model: String,
    #[serde(default)]
    pub fallback: bool,
    /// Time the model took (LLM call or rule), milliseconds.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    /// Estimated LLM cost of this decision, USD.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    pub origin_ts: u64,
    pub ts: u64,
}

/// One swarm member's answer, in [`Consensus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub model: String,
    pub action: VoteAction,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    #[serde(default)]
    pub reasoning: String,
    #[serde(deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `agent.swarm.<symbol>` and the `agent.api.swarm.ask` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    pub symbol: Symbol,
    pub question: String,
    pub votes: Vec<Vote>,
    pub action: VoteAction,
    pub method: ConsensusMethod,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub agreement: f64,
    pub summary: String,
    pub ts: u64,
}

/// `agent.api.swarm.ask` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmAskRequest {
    pub symbol: Symbol,
    /// At most 2000 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 2000, _>")]
    pub question: String,
}

// ---------------------------------------------------------------- orders

/// `orders.submit.<symbol>` (JetStream ORDERS, Nats-Msg-Id = client_order_id).
///
/// A LIMIT order needs `limit_price`, a MARKET order takes none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct OrderRequest {
    pub client_order_id: ClientOrderId,
    pub agent: AgentName,
    pub symbol: Symbol,
    #[serde(default = "Venue::sim")]
    pub venue: Venue,
    pub side: Side,
    #[serde(rename = "type", default)]
    pub order_type: OrderType,
    pub quantity: PositiveMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_price: Option<PositiveMoney>,
    #[serde(default)]
    pub time_in_force: TimeInForce,
    #[serde(default)]
    pub reduce_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_price: Option<PositiveMoney>,
    pub origin_ts: u64,
    pub ts: u64,
}

impl OrderRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (self.order_type, &self.limit_price) {
            (OrderType::Limit, None) => {
                Err(ValidationError::new("a LIMIT order needs limit_price"))
            }
            (OrderType::Market, Some(_)) => {
                Err(ValidationError::new("a MARKET order takes no limit_price"))
            }
            _ => Ok(()),
        }
    }
}

/// `orders.cancel.<symbol>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub client_order_id: ClientOrderId,
    pub agent: AgentName,
    pub symbol: Symbol,
    pub ts: u64,
}

/// Each hop of an order, nanoseconds since the epoch; None = hop not reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_checked_ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled_ts: Option<u64>,
}

/// `exec.report.<symbol>` (JetStream EXEC).
///
/// For an order so malformed that its id or symbol cannot be trusted, those
/// fields are None and the report goes to `exec.report._invalid`.
/// A REJECTED or FAILED report carries a non-empty reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ExecutionReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<NonNegativeMoney>,
    #[serde(default)]
    pub filled_quantity: NonNegativeMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fill_price: Option<PositiveMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fill_quantity: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_fill_price: Option<PositiveMoney>,
    #[serde(default)]
    pub fee: NonNegativeMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slippage_bps: Option<f64>,
    pub timings: Timings,
    pub ts: u64,
}

impl ExecutionReport {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let refused = matches!(self.status, OrderStatus::Rejected | OrderStatus::Failed);
        if refused && self.reason.as_deref().unwrap_or_default().is_empty() {
            return Err(ValidationError::new(format!(
                "a {} report must carry a reason",
                self.status
            )));
        }
        Ok(())
    }
}

validated_on_read!(RiskCheckResult, OrderRequest, ExecutionReport);

// ---------------------------------------------------------------- errors and APIs

/// `errors.<service>`: input a service rejected (not a request; those get an ErrorReply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub service: String,
    pub subject: String,
    pub reason: String,
    /// At most 256 characters of the rejected input.
    #[serde(default, deserialize_with = "check::chars::<0, 256, _>")]
    pub excerpt: String,
    pub ts: u64,
}

/// The body of an [`ErrorReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `^[a-z][a-z0-9_]*$`, e.g. `unknown_symbol`.
    #[serde(deserialize_with = "check::error_code")]
    pub code: String,
    pub message: String,
}

/// Every `*.api.*` endpoint answers this on failure, never silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

impl ErrorReply {
    /// `code` must match `^[a-z][a-z0-9_]*$` (checked in debug builds).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        debug_assert!(is_error_code(&code), "invalid error code {code:?}");
        Self {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

/// `md.api.price`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceRequest {
    pub symbol: Symbol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
}

/// `md.api.price` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceReply {
    pub tick: Tick,
}

/// `md.api.prices`: many symbols at once; the unknown ones are named in `missing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesRequest {
    /// 1 to 10000 symbols.
    #[serde(deserialize_with = "check::symbol_list")]
    pub symbols: Vec<Symbol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
}

/// `md.api.prices` reply: symbol -> last tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricesReply {
    pub prices: BTreeMap<String, Tick>,
    pub missing: Vec<String>,
}

/// `md.api.history`: the last `limit` closed bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    pub symbol: Symbol,
    #[serde(default = "default_interval")]
    pub interval: Interval,
    /// 1 ..= 5000.
    #[serde(
        default = "default_history_limit",
        deserialize_with = "check::history_limit"
    )]
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
}

/// `md.api.history` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    pub bars: Vec<Bar>,
}

/// `md.api.monitor.start`: alert when `symbol` moves >= threshold_pct within window_s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorStartRequest {
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
    pub symbol: Symbol,
}

/// `md.api.monitor.status`; no symbol = all monitors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorStatusRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
}

/// One active price monitor, in [`MonitorStatusReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    pub symbol: Symbol,
    #[serde(deserialize_with = "check::positive")]
    pub threshold_pct: f64,
    #[serde(deserialize_with = "check::positive")]
    pub window_s: f64,
}

/// `md.api.monitor.status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorStatusReply {
    pub monitors: Vec<Monitor>,
}

/// `<service>.api.version` (md.api.version, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    pub service: String,
    pub version: String,
    pub started_ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    #[test]
    fn money_reads_strings_only() {
        let err = serde_json::from_str::<Money>("187.42")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("money must be a decimal string"), "{err}");
        let err = serde_json::from_str::<PositiveMoney>("1")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("money must be a decimal string"), "{err}");
        assert_eq!(
            serde_json::from_str::<Money>("\"-12.50\"").unwrap().get(),
            dec("-12.50")
        );
        for bad in [
            "1e-2", "1E5", "+1", "01", "1.", ".5", " 1", "1 ", "", "-", "0x1", "1_000", "1.5\n",
        ] {
            assert!(bad.parse::<Money>().is_err(), "{bad:?} accepted");
        }
        assert!("1".repeat(41).parse::<Money>().is_err());
        // Python accepts these 40-character decimals; a 96-bit Decimal cannot hold them.
        assert!(format!("0.{}", "0".repeat(38)).parse::<Money>().is_err());
    }

    #[test]
    fn money_bounds() {
        assert!("0".parse::<PositiveMoney>().is_err());
        assert!("0.000".parse::<PositiveMoney>().is_err());
        assert!("-1".parse::<PositiveMoney>().is_err());
        assert!("0.001".parse::<PositiveMoney>().is_ok());
        assert!("0".parse::<NonNegativeMoney>().is_ok());
        assert!(
            "-0".parse::<NonNegativeMoney>().is_err(),
            "the schema pattern refuses -0"
        );
        assert!("-0.01".parse::<NonNegativeMoney>().is_err());
        assert!("-0".parse::<Money>().is_ok());
        assert!(NonNegativeMoney::new(-Decimal::ZERO).is_ok());
        assert!(PositiveMoney::new(Decimal::ZERO).is_err());
    }

    #[test]
    fn money_is_written_fixed_point() {
        let write = |m: Money| serde_json::to_string(&m).unwrap();
        assert_eq!(write("97000.5".parse().unwrap()), "\"97000.5\"");
        assert_eq!(write("9500.00".parse().unwrap()), "\"9500.00\"");
        let money = |d: Decimal| Money::try_from(d).unwrap();
        assert_eq!(write(money(Decimal::new(1, 7))), "\"0.0000001\"");
        assert_eq!(write("-0.0".parse().unwrap()), "\"0.0\"");
        assert_eq!(
            write(money(Decimal::from(10_000_000_000_i64))),
            "\"10000000000\""
        );
        assert_eq!(write(Money::default()), "\"0\"");
        let huge = Money::saturating(Decimal::MAX);
        assert_eq!(write(huge), "\"99999999999999.99999999999999\"");
        let tiny = Money::try_from(Decimal::new(1, 28)).unwrap();
        assert_eq!(write(tiny), format!("\"0.{}1\"", "0".repeat(27)));
    }

    #[test]
    fn money_range_is_below_1e14() {
        assert_eq!(MONEY_LIMIT, dec("100000000000000"));
        assert_eq!(MONEY_MAX, dec("99999999999999.99999999999999"));
        // 14 digits before the point are fine, 15 are not, whatever the sign and type.
        for ok in [
            "99999999999999",
            "99999999999999.999999",
            "-99999999999999.5",
        ] {
            assert!(ok.parse::<Money>().is_ok(), "{ok}");
        }
        for bad in [
            "100000000000000",
            "-100000000000000",
            "100000000000000.0",
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
        ] {
            let err = bad.parse::<Money>().unwrap_err().to_string();
            assert!(err.contains("out of range"), "{bad}: {err}");
        }
        assert!("99999999999999.9".parse::<PositiveMoney>().is_ok());
        assert!("100000000000000".parse::<PositiveMoney>().is_err());
        assert!("100000000000000".parse::<NonNegativeMoney>().is_err());
        // Built in code, the same range: Rust never writes what it cannot read.
        assert!(PositiveMoney::new(MONEY_LIMIT).is_err());
        assert!(PositiveMoney::new(MONEY_MAX).is_ok());
        assert!(NonNegativeMoney::new(Decimal::MAX).is_err());
        assert!(Money::try_from(Decimal::MIN).is_err());
        assert!(Money::try_from(-MONEY_MAX).is_ok());
        assert_eq!(Money::saturating(Decimal::MIN).get(), -MONEY_MAX);
        assert_eq!(Money::saturating(dec("-12.5")).get(), dec("-12.5"));
        assert_eq!(
            NonNegativeMoney::saturating(dec("-1")),
            NonNegativeMoney::ZERO
        );
        assert_eq!(NonNegativeMoney::saturating(Decimal::MAX).get(), MONEY_MAX);
        // The point of the bound: any two values multiply without overflow.
        let biggest = MONEY_MAX;
        assert!(biggest.checked_mul(biggest).is_some());
        assert!((-biggest).checked_mul(biggest).is_some());
        assert!(biggest.checked_mul(Decimal::new(1, 28)).is_some());
    }

    #[test]
    fn tokens() {
        assert!("BTC-USD".parse::<Symbol>().is_ok());
        for bad in [
            "BTC.USD",
            "BTC-USD.>",
            "btc-usd",
            "BTC",
            "-USD",
            "BTC-",
            "A-B-C",
            "BTC-USD\n",
            "BTC USD",
        ] {
            assert!(bad.parse::<Symbol>().is_err(), "{bad:?} accepted");
        }
        assert!(format!("{}-USD", "A".repeat(21)).parse::<Symbol>().is_err());
        let symbol: Symbol = "SOL-USDC".parse().unwrap();
        assert_eq!((symbol.base(), symbol.quote()), ("SOL", "USDC"));
        assert_eq!(symbol, "SOL-USDC");
        assert!("binance_us".parse::<Venue>().is_ok());
        assert!("SIM".parse::<Venue>().is_err());
        assert!("sim-1".parse::<Venue>().is_err());
        assert!("trd-7f3a9c_X".parse::<ClientOrderId>().is_ok());
        assert!("a.b".parse::<ClientOrderId>().is_err());
        assert!("x".repeat(65).parse::<ClientOrderId>().is_err());
        assert!("news-bot_2".parse::<AgentName>().is_ok());
        assert!("Trading".parse::<AgentName>().is_err());
        for ok in ["1m", "30s", "4h", "1d", "9999s", "0s"] {
            assert!(ok.parse::<Interval>().is_ok(), "{ok}");
        }
        for bad in ["m", "1", "10000s", "1w", "1M", "-1m"] {
            assert!(bad.parse::<Interval>().is_err(), "{bad:?} accepted");
        }
        assert_eq!("4h".parse::<Interval>().unwrap().seconds(), 14_400);
        let err = serde_json::from_str::<Symbol>("\"BTC.USD\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid symbol \"BTC.USD\""), "{err}");
    }

    #[test]
    fn order_defaults_and_rules() {
        let order: OrderRequest = serde_json::from_str(
            r#"{"client_order_id":"a","agent":"trading","symbol":"SOL-USDC","side":"SELL",
                "quantity":"1","origin_ts":0,"ts":1}"#,
        )
        .unwrap();
        assert_eq!(order.venue, "sim");
        assert_eq!(order.order_type, OrderType::Market);
        assert_eq!(order.time_in_force, TimeInForce::Gtc);
        assert!(!order.reduce_only);
        let wire = serde_json::to_value(&order).unwrap();
        assert_eq!(wire["type"], "MARKET");
        assert!(wire.get("limit_price").is_none(), "None is left out");

        let mut limit = order.clone();
        limit.order_type = OrderType::Limit;
        let err = serde_json::from_value::<OrderRequest>(serde_json::to_value(&limit).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a LIMIT order needs limit_price"), "{err}");
        // null reads as None (pydantic agrees; the schema's `else: not required` does not).
        let mut nulled = wire.clone();
        nulled["limit_price"] = serde_json::Value::Null;
        assert!(serde_json::from_value::<OrderRequest>(nulled).is_ok());
    }

    #[test]
    fn refusals_need_a_reason() {
        let report = r#"{"status":"FAILED","reason":"","timings":{},"ts":1}"#;
        assert!(serde_json::from_str::<ExecutionReport>(report).is_err());
        let check = r#"{"client_order_id":"x","approved":false,"reason_code":"a","reason":"",
                        "state":"ACTIVE","ts":1}"#;
        assert!(serde_json::from_str::<RiskCheckResult>(check).is_err());
    }

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
    fn string_lengths_count_characters() {
        let request = format!(r#"{{"action":"engage","actor":"{}"}}"#, "é".repeat(64));
        assert!(serde_json::from_str::<KillSwitchRequest>(&request).is_ok());
        let request = format!(r#"{{"action":"engage","actor":"{}"}}"#, "é".repeat(65));
        assert!(serde_json::from_str::<KillSwitchRequest>(&request).is_err());
        assert!(
            serde_json::from_str::<KillSwitchRequest>(r#"{"action":"status","actor":""}"#).is_err()
        );
        let request: KillSwitchRequest = serde_json::from_str(r#"{"action":"status"}"#).unwrap();
        assert_eq!(
            (request.actor.as_str(), request.reason.as_str()),
            ("operator", "")
        );
    }

    #[test]
    fn error_reply() {
        let reply = ErrorReply::new("unknown_symbol", "no price for DOGE-USD");
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"error":{"code":"unknown_symbol","message":"no price for DOGE-USD"}}"#
        );
        assert!(
            serde_json::from_str::<ErrorReply>(r#"{"error":{"code":"Bad","message":""}}"#).is_err()
        );
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
        let patch = |pct: &str| {
            serde_json::from_str::<LimitsPatch>(&format!(r#"{{"max_drawdown_pct":{pct}}}"#))
        };
        assert!(patch("100").is_ok() && patch("0").is_ok() && patch("null").is_ok());
        assert!(patch("100.1").is_err() && patch("-1").is_err());
        let score = |s: &str| {
            let text = format!(
                r#"{{"symbol":"BTC-USD","score":{s},"confidence":1,"items":0,"model":"m","ts":0}}"#
            );
            serde_json::from_str::<Sentiment>(&text)
        };
        assert!(score("-1").is_ok() && score("-0.5").is_ok() && score("1").is_ok());
        assert!(score("-1.01").is_err() && score("true").is_err());
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

    #[test]
    fn side_sign() {
        assert_eq!(Side::Buy.sign() * dec("2"), dec("2"));
        assert_eq!(Side::Sell.sign() * dec("2"), dec("-2"));
        assert_eq!("SELL".parse::<Side>().unwrap().opposite(), Side::Buy);
    }

    #[test]
    fn now_is_nanoseconds() {
        assert!(now_ns() > 1_700_000_000_000_000_000);
    }
}
