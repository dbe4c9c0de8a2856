//! The validated tokens of the contract: [`Symbol`], [`Venue`], [`ClientOrderId`],
//! [`AgentName`] and [`Interval`]; each is one safe NATS subject token.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

use super::check::{quoted, ValidationError};

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

            /// The token as text.
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

/// The default interval of a history request (`1m`).
pub(super) fn default_interval() -> Interval {
    Interval("1m".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
