//! Money on the wire: exact decimal strings within |x| < 1e14, as [`Money`],
//! [`PositiveMoney`] and [`NonNegativeMoney`].

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::check::{quoted, ValidationError};

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

/// 10^0 ..= 10^38: every power of ten a `u128` holds.
const POW10_U128: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// |value| < [`MONEY_LIMIT`], on the integers: |mantissa| x 10^-scale < 10^14 exactly
/// when |mantissa| < 10^(14 + scale) (comparing the `Decimal`s would rescale one of
/// them, several times slower: this check runs on every money value built). A
/// mantissa is below 2^96 < 10^29: past the table, every value is in range.
fn money_in_range(value: &Decimal) -> bool {
    match POW10_U128.get(MONEY_INT_DIGITS + value.scale() as usize) {
        Some(limit) => value.mantissa().unsigned_abs() < *limit,
        None => true,
    }
}

fn out_of_range(value: impl fmt::Display) -> ValidationError {
    ValidationError::new(format!(
        "money {value} out of range: |x| must be below 1e14 (at most {MONEY_INT_DIGITS} digits before the point)"
    ))
}

/// The wire form of money to a `Decimal`: a decimal literal (the schema's pattern
/// `^-?(0|[1-9][0-9]{0,13})(\.[0-9]{1,28})?$`: no exponent, no `+`, no leading zeros, no
/// spaces; at most 40 characters), exact (rust_decimal holds 28 fractional digits and a
/// 96-bit mantissa: anything beyond is refused, never rounded; the contract says the
/// same, and the Python models refuse it too).
///
/// One pass over the bytes checks the form and gathers the digits; a literal of at most
/// 19 digits (every price and quantity seen in practice: they fit a `u64`) is built
/// from them directly, bit for bit what `Decimal::from_str_exact` makes of it, at half
/// the cost of checking and parsing separately (13 against 25 ns a price; every money
/// field of every message read goes through here; tested against that reference).
fn parse_decimal(text: &str) -> Result<Decimal, ValidationError> {
    let not_decimal = || ValidationError::new(format!("not a decimal string: {}", quoted(text)));
    if text.len() > MONEY_MAX_LEN {
        return Err(not_decimal());
    }
    let negative = text.starts_with('-');
    let unsigned = &text.as_bytes()[usize::from(negative)..];
    let (mut int_digits, mut frac_digits, mut point, mut mantissa) = (0usize, 0u32, false, 0u64);
    for &b in unsigned {
        match b {
            b'0'..=b'9' => {
                if point {
                    frac_digits += 1;
                } else {
                    int_digits += 1;
                }
                // Wraps past 19 digits; such a literal is parsed by rust_decimal below.
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            }
            b'.' if !point => point = true,
            _ => return Err(not_decimal()),
        }
    }
    let leading_zero = int_digits > 1 && unsigned[0] == b'0';
    if int_digits == 0 || (point && frac_digits == 0) || leading_zero {
        return Err(not_decimal());
    }
    if int_digits > MONEY_INT_DIGITS {
        return Err(out_of_range(quoted(text)));
    }
    if int_digits + frac_digits as usize <= 19 {
        let (lo, mid) = (mantissa as u32, (mantissa >> 32) as u32);
        return Ok(Decimal::from_parts(lo, mid, 0, negative, frac_digits));
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

            /// The value as a [`Decimal`].
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
    /// Zero (`"0"` on the wire).
    pub const ZERO: Self = Self(Decimal::ZERO);
}

impl NonNegativeMoney {
    /// Zero (`"0"` on the wire).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    /// parse_decimal as it was before its one-pass form: the form checked first, then
    /// rust_decimal's exact parser. The reference the one-pass parser must equal.
    fn reference_parse(text: &str) -> Result<Decimal, ValidationError> {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let (int, frac) = match unsigned.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (unsigned, None),
        };
        let literal =
            digits(int) && (int == "0" || !int.starts_with('0')) && frac.is_none_or(digits);
        if text.len() > MONEY_MAX_LEN || !literal {
            return Err(ValidationError::new(format!(
                "not a decimal string: {}",
                quoted(text)
            )));
        }
        if int.len() > MONEY_INT_DIGITS {
            return Err(out_of_range(quoted(text)));
        }
        Decimal::from_str_exact(text)
            .map_err(|e| ValidationError::new(format!("decimal {text} out of range: {e}")))
    }

    /// The one-pass parser against the reference, bit for bit (sign of zero and trailing
    /// zeros kept) and message for message: on the edges and on random strings of digits,
    /// points, signs and other characters.
    #[test]
    fn the_one_pass_parser_is_the_reference_parser() {
        let same = |text: &str| {
            let got = parse_decimal(text)
                .map(|d| d.serialize())
                .map_err(|e| e.to_string());
            let want = reference_parse(text)
                .map(|d| d.serialize())
                .map_err(|e| e.to_string());
            assert_eq!(got, want, "{text:?}");
            got.is_ok()
        };
        for text in [
            "0",
            "-0",
            "0.0",
            "-0.000",
            "1",
            "-1",
            "101.2300",
            "0.00000001",
            "9999999999999.999999",
            "99999999999999.99999",
            "-99999999999999.9999999999999",
            "0.0000000000000000000000000001",
            "12345678901234.12345678901234",
        ] {
            assert!(same(text), "{text}");
        }
        for text in [
            "",
            "-",
            ".",
            "1.",
            ".5",
            "-.5",
            "+1",
            "1e5",
            "1_000",
            " 1",
            "1 ",
            "1.2.3",
            "--1",
            "007.50",
            "00",
            "-00.1",
            "NaN",
            "\u{661}",
            "100000000000000",
            "1.0.",
            "1-",
            "0x10",
            "0.000000000000000000000000000000000001",
            "0.00000000000000000000000000001",
        ] {
            assert!(!same(text), "{text}");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let alphabet = b"0123456789012345678901234567890123456789.-+e ";
        for _ in 0..50_000 {
            let len = next(34);
            let text: String = (0..len)
                .map(|_| char::from(alphabet[next(alphabet.len() as u64) as usize]))
                .collect();
            same(&text);
            // and literals proper, most of them valid
            let mut text = String::from(if next(2) == 0 { "-" } else { "" });
            text.push(char::from(b'1' + next(9) as u8));
            (0..next(16)).for_each(|_| text.push(char::from(b'0' + next(10) as u8)));
            if next(3) > 0 {
                text.push('.');
                (0..=next(24)).for_each(|_| text.push(char::from(b'0' + next(10) as u8)));
            }
            same(&text);
        }
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

    /// The range check on the integers agrees with comparing the `Decimal`s, at every
    /// scale, on both sides of the bound and at the ends of the mantissa.
    #[test]
    fn the_range_check_on_integers_is_the_decimal_comparison() {
        let mut checked = 0;
        for scale in 0..=28u32 {
            let limit = POW10_U128.get(14 + scale as usize).copied();
            let mut mantissas: Vec<i128> = vec![0, 1, 7, 99_999, (1 << 96) - 1];
            if let Some(limit) = limit.filter(|l| *l < 1 << 96) {
                let limit = limit as i128;
                mantissas.extend([limit - 1, limit, limit + 1, limit / 10, limit * 3 / 2]);
            }
            for m in mantissas.into_iter().filter(|m| *m < 1 << 96) {
                for m in [m, -m] {
                    let value = Decimal::from_i128_with_scale(m, scale);
                    assert_eq!(
                        money_in_range(&value),
                        value.abs() < MONEY_LIMIT,
                        "{value} (scale {scale})"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 400);
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
}
