//! Exact numbers from the venues' JSON: prices and sizes go from their text
//! straight into `Decimal`, never through a binary float.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Parses a decimal as the venue wrote it ("0.00100000", "1.5e-7"), exactly: a
/// value that does not fit a Decimal is an error, never rounded. Trailing zeros
/// are dropped ("25.35190000" -> 25.3519).
pub(crate) fn decimal(text: &str) -> Result<Decimal, String> {
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    };
    parsed
        .map(|d| d.normalize())
        .map_err(|e| format!("{:?} is not an exact decimal: {e}", excerpt(text)))
}

/// A JSON number (Birdeye's prices), read from its text; `null` is `None`. A
/// decimal string is accepted too.
pub(crate) fn json_number(raw: &RawValue) -> Result<Option<Decimal>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if text.starts_with('"') {
        let inner: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
        return decimal(&inner).map(Some);
    }
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(format!("{:?} is not a number", excerpt(text)));
    }
    decimal(text).map(Some)
}

fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

/// A decimal string field of a venue message (`"price": "97000.10"`). A JSON
/// number is refused: these venues always quote their decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Dec(pub Decimal);

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DecVisitor;
        impl Visitor<'_> for DecVisitor {
            type Value = Dec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Dec, E> {
                decimal(text).map(Dec).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DecVisitor)
    }
}

impl FromStr for Dec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        decimal(text).map(Dec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

    #[test]
    fn decimals_are_exact_and_normalized() {
        assert_eq!(decimal("25.35190000").unwrap().to_string(), "25.3519");
        assert_eq!(decimal("0.00000001").unwrap().to_string(), "0.00000001");
        assert_eq!(decimal("1.5e-7").unwrap().to_string(), "0.00000015");
        // 0.1 + 0.2 stays 0.3: no float on the way.
        let sum = decimal("0.1").unwrap() + decimal("0.2").unwrap();
        assert_eq!(sum.to_string(), "0.3");
        assert!(decimal("abc").is_err());
        assert!(decimal("").is_err());
        // 29 decimal places do not fit: refused, not rounded.
        assert!(decimal("0.12345678901234567890123456789").is_err());
    }

    #[test]
    fn json_numbers_keep_every_digit_of_their_text() {
        // As a float this would print 24.586420063533236 too, but the sum below would not be exact.
        let price = json_number(&raw("24.586420063533236")).unwrap().unwrap();
        assert_eq!(price.to_string(), "24.586420063533236");
        assert_eq!(
            (price + decimal("0.000000000000001").unwrap()).to_string(),
            "24.586420063533237"
        );
        assert_eq!(
            json_number(&raw("1.2345e-7")).unwrap().unwrap().to_string(),
            "0.00000012345"
        );
        assert_eq!(json_number(&raw("null")).unwrap(), None);
        assert_eq!(
            json_number(&raw("\"1.50\"")).unwrap().unwrap().to_string(),
            "1.5"
        );
        assert!(json_number(&raw("true")).is_err());
        assert!(json_number(&raw("{}")).is_err());
    }

    #[test]
    fn dec_fields_take_strings_only() {
        let dec: Dec = serde_json::from_str("\"97000.10\"").unwrap();
        assert_eq!(dec.0.to_string(), "97000.1");
        assert!(serde_json::from_str::<Dec>("97000.10").is_err());
        assert!(serde_json::from_str::<Dec>("\"1,5\"").is_err());
    }
}
