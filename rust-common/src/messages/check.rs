//! What every message module shares: [`ValidationError`], the quoting of bad input,
//! the `deserialize_with` helpers for the numeric and length bounds of the models
//! (`Field(ge=..., gt=..., le=..., min_length=..., max_length=...)`), and the macros
//! for wire enums and messages validated on read.

use serde::de::{self, Deserialize, Deserializer};

/// A value that breaks the contract: bad pattern, out of range, inconsistent fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(String);

impl ValidationError {
    /// The error, with `message` saying what is wrong.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The start of an offending input, quoted, for error messages.
pub(super) fn quoted(text: &str) -> String {
    let start: String = text.chars().take(40).collect();
    format!("{start:?}")
}

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

/// Absent, null or a string of MIN ..= MAX characters (`Annotated[str, Field(...)] | None`).
pub fn optional_chars<'de, const MIN: usize, const MAX: usize, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => {
            let n = text.chars().count();
            if (MIN..=MAX).contains(&n) {
                Ok(Some(text))
            } else {
                Err(de::Error::custom(format!(
                    "a string of {MIN} to {MAX} characters expected, got {n}"
                )))
            }
        }
        None => Ok(None),
    }
}

/// A list of at most MAX items (`Field(max_length=MAX)` on a list).
pub fn at_most<'de, const MAX: usize, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let items = Vec::<T>::deserialize(d)?;
    if items.len() <= MAX {
        Ok(items)
    } else {
        Err(de::Error::custom(format!(
            "at most {MAX} items expected, got {}",
            items.len()
        )))
    }
}

/// A list of at most ITEMS strings of at most CHARS characters each.
pub fn short_strings<'de, const ITEMS: usize, const CHARS: usize, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<String>, D::Error> {
    let items = at_most::<ITEMS, String, D>(d)?;
    if let Some(n) = items.iter().map(|s| s.chars().count()).find(|&n| n > CHARS) {
        return Err(de::Error::custom(format!(
            "a string of 0 to {CHARS} characters expected, got {n}"
        )));
    }
    Ok(items)
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

pub(super) use wire_enum;

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

pub(super) use validated_on_read;
