//! Venue symbols -> canonical `BASE-QUOTE`. Each connector subscribes to the venue
//! symbols of its config and knows each one's canonical symbol from this table,
//! built once at start-up: a message about any other venue symbol is ignored, and
//! nothing a venue sends is ever turned into a subject by itself.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Context, Result};
use moonbus_common::Symbol;

/// How one venue names its markets.
pub(crate) struct Naming {
    /// `[market_data.<venue>]`, for messages.
    pub venue: &'static str,
    /// The rule venue symbols must follow, for messages.
    pub pattern: &'static str,
    /// Is this a venue symbol that is safe to put in a URL or a frame?
    pub valid: fn(&str) -> bool,
}

/// `(venue symbol, canonical symbol)` for every symbol of `symbols`: from
/// `symbol_map` when listed there (keys matched case-insensitively, because an
/// environment override arrives lowercased), else from the venue's convention
/// `default`, when it gives one.
pub(crate) fn map(
    naming: &Naming,
    symbols: &[String],
    symbol_map: &BTreeMap<String, String>,
    default: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Symbol)>> {
    let venue = naming.venue;
    if symbols.is_empty() {
        bail!("[market_data.{venue}] symbols is empty");
    }
    for key in symbol_map.keys() {
        if !symbols.iter().any(|s| s.eq_ignore_ascii_case(key)) {
            tracing::warn!(venue, symbol = %key, "symbol_map names a symbol not in symbols");
        }
    }
    let mut seen_venue = HashSet::new();
    let mut seen_canonical = HashSet::new();
    let mut mapped = Vec::with_capacity(symbols.len());
    for name in symbols {
        if !(naming.valid)(name) {
            bail!(
                "[market_data.{venue}] symbols: {name:?} is not a {venue} symbol ({})",
                naming.pattern
            );
        }
        if !seen_venue.insert(name.as_str()) {
            bail!("[market_data.{venue}] symbols: {name} is listed twice");
        }
        let canonical = match symbol_map
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, canonical)) => canonical.clone(),
            None => default(name).with_context(|| {
                format!(
                    "[market_data.{venue}] {name}: no canonical symbol known; add it to symbol_map"
                )
            })?,
        };
        let symbol: Symbol = canonical.parse().with_context(|| {
            format!("[market_data.{venue}] {name} -> {canonical:?} is not a canonical symbol")
        })?;
        if !seen_canonical.insert(symbol.clone()) {
            bail!("[market_data.{venue}] two symbols map to {symbol}");
        }
        mapped.push((name.clone(), symbol));
    }
    Ok(mapped)
}

/// `^[A-Z0-9]{min,max}$`
pub(crate) fn upper_alnum(text: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// Quote currencies recognised at the end of a concatenated symbol (`BTCUSDT`),
/// longest first so `FDUSD` wins over `USD`.
const QUOTES: [&str; 16] = [
    "FDUSD", "USDT", "USDC", "TUSD", "BUSD", "EURI", "USD", "EUR", "TRY", "BRL", "JPY", "GBP",
    "BTC", "ETH", "BNB", "DAI",
];

/// `BTCUSDT` -> `BTC-USDT`, when it ends in a known quote currency.
pub(crate) fn split_known_quote(name: &str) -> Option<String> {
    QUOTES.iter().find_map(|quote| {
        let base = name.strip_suffix(quote)?;
        (!base.is_empty()).then(|| format!("{base}-{quote}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Naming = Naming {
        venue: "binance",
        pattern: "^[A-Z0-9]{2,20}$",
        valid: |s| upper_alnum(s, 2, 20),
    };

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_convention_and_the_map_give_canonical_symbols() {
        let overrides = BTreeMap::from([("btcusdt".to_string(), "BTC-USD".to_string())]);
        let mapped = map(
            &TEST,
            &names(&["BTCUSDT", "ETHFDUSD", "SOLBTC"]),
            &overrides,
            split_known_quote,
        )
        .unwrap();
        let pairs: Vec<(&str, &str)> = mapped
            .iter()
            .map(|(v, s)| (v.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("BTCUSDT", "BTC-USD"),
                ("ETHFDUSD", "ETH-FDUSD"),
                ("SOLBTC", "SOL-BTC")
            ]
        );
    }

    #[test]
    fn unsafe_unknown_and_ambiguous_symbols_are_refused() {
        let none = BTreeMap::new();
        let err = |list: &[&str], m: &BTreeMap<String, String>| {
            format!(
                "{:#}",
                map(&TEST, &names(list), m, split_known_quote).unwrap_err()
            )
        };
        assert!(err(&["BTC.USDT"], &none).contains("\"BTC.USDT\" is not a binance symbol"));
        assert!(err(&["BTC*"], &none).contains("is not a binance symbol"));
        assert!(err(&["btcusdt"], &none).contains("is not a binance symbol"));
        assert!(err(&["BTCXYZ"], &none).contains("BTCXYZ: no canonical symbol known"));
        assert!(err(&["USDT"], &none).contains("no canonical symbol known"));
        assert!(err(&["BTCUSDT", "BTCUSDT"], &none).contains("BTCUSDT is listed twice"));
        assert!(err(&[], &none).contains("symbols is empty"));
        let bad = BTreeMap::from([("BTCUSDT".to_string(), "BTC.USD>".to_string())]);
        assert!(
            err(&["BTCUSDT"], &bad).contains("BTCUSDT -> \"BTC.USD>\" is not a canonical symbol")
        );
        let twice = BTreeMap::from([("BTCUSDC".to_string(), "BTC-USDT".to_string())]);
        assert!(err(&["BTCUSDT", "BTCUSDC"], &twice).contains("two symbols map to BTC-USDT"));
    }
}
