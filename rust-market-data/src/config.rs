//! The `[market_data]` section of moonbus.toml, checked once at start-up: a bad
//! value stops the service with a message that names the key.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use moonbus_common::config::SystemConfig;
use moonbus_common::{PositiveMoney, Symbol};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::sim::GbmParams;

/// Start price of a symbol not listed in `[market_data.start_prices]`.
const DEFAULT_START_PRICE: Decimal = Decimal::ONE_HUNDRED;
/// A wider spread is surely a typo (and would let the bid approach zero).
const MAX_SPREAD_BPS: f64 = 1000.0;

/// `[market_data]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketDataConfig {
    pub seed: u64,
    pub tick_interval_ms: u64,
    pub volatility: f64,
    pub drift: f64,
    pub spread_bps: f64,
    pub jump_probability: f64,
    pub jump_pct: f64,
    /// Symbol -> decimal string. Keys are matched case-insensitively, because an
    /// environment override (`MOONBUS__MARKET_DATA__START_PRICES__BTC-USD`) arrives lowercased.
    pub start_prices: BTreeMap<String, String>,
}

impl Default for MarketDataConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            tick_interval_ms: 200,
            volatility: 0.8,
            drift: 0.0,
            spread_bps: 2.0,
            jump_probability: 0.0005,
            jump_pct: 1.5,
            start_prices: BTreeMap::new(),
        }
    }
}

/// The simulated feed's settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    pub seed: u64,
    /// How often each symbol ticks.
    pub tick_interval: Duration,
    pub params: GbmParams,
    /// The symbols in `[system].symbols` order, with their start prices.
    pub symbols: Vec<(Symbol, PositiveMoney)>,
}

impl SimSettings {
    pub fn from_config(system: &SystemConfig, md: &MarketDataConfig) -> Result<Self> {
        let symbols = parse_symbols(&system.symbols)?;
        let start_prices = parse_start_prices(&md.start_prices)?;
        for key in start_prices.keys() {
            if !symbols.iter().any(|s| s.as_str() == key) {
                tracing::warn!(symbol = %key, "[market_data.start_prices] names a symbol not in [system].symbols");
            }
        }
        let default_start = PositiveMoney::new(DEFAULT_START_PRICE)?;
        let symbols = symbols
            .into_iter()
            .map(|s| {
                let start = start_prices
                    .get(s.as_str())
                    .copied()
                    .unwrap_or(default_start);
                (s, start)
            })
            .collect();
        Ok(Self {
            seed: md.seed,
            tick_interval: Duration::from_millis(md.tick_interval_ms),
            params: gbm_params(md)?,
            symbols,
        })
    }
}

fn parse_symbols(names: &[String]) -> Result<Vec<Symbol>> {
    if names.is_empty() {
        bail!("[system].symbols is empty: market-data has nothing to publish");
    }
    let mut seen = HashSet::new();
    names
        .iter()
        .map(|name| {
            let symbol: Symbol = name
                .parse()
                .with_context(|| format!("[system].symbols: {name:?} is not a valid symbol"))?;
            if !seen.insert(name.as_str()) {
                bail!("[system].symbols: {name} is listed twice");
            }
            Ok(symbol)
        })
        .collect()
}

fn parse_start_prices(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, PositiveMoney>> {
    raw.iter()
        .map(|(key, value)| {
            let symbol: Symbol = key.to_ascii_uppercase().parse().with_context(|| {
                format!("[market_data.start_prices]: {key:?} is not a valid symbol")
            })?;
            let price: PositiveMoney = value.parse().with_context(|| {
                format!(
                    "[market_data.start_prices] {key} = {value:?}: not a positive decimal string"
                )
            })?;
            Ok((symbol.into(), price))
        })
        .collect()
}

fn gbm_params(md: &MarketDataConfig) -> Result<GbmParams> {
    let check = |ok: bool, key: &str, rule: &str, value: f64| -> Result<()> {
        if ok {
            Ok(())
        } else {
            bail!("[market_data] {key} = {value}: {rule}")
        }
    };
    if md.tick_interval_ms == 0 {
        bail!("[market_data] tick_interval_ms = 0: must be at least 1");
    }
    let v = md.volatility;
    check(
        v.is_finite() && v >= 0.0,
        "volatility",
        "must be a finite number >= 0",
        v,
    )?;
    let v = md.drift;
    check(v.is_finite(), "drift", "must be a finite number", v)?;
    let v = md.spread_bps;
    check(
        v.is_finite() && (0.0..=MAX_SPREAD_BPS).contains(&v),
        "spread_bps",
        "must be between 0 and 1000",
        v,
    )?;
    let v = md.jump_probability;
    check(
        (0.0..=1.0).contains(&v),
        "jump_probability",
        "must be between 0 and 1",
        v,
    )?;
    let v = md.jump_pct;
    check(
        (0.0..100.0).contains(&v),
        "jump_pct",
        "must be >= 0 and < 100",
        v,
    )?;
    let spread_bps = Decimal::from_f64(md.spread_bps)
        .with_context(|| format!("[market_data] spread_bps = {}", md.spread_bps))?;
    Ok(GbmParams {
        step_ms: md.tick_interval_ms,
        volatility: md.volatility,
        drift: md.drift,
        spread_bps,
        jump_probability: md.jump_probability,
        jump_pct: md.jump_pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::config::Config;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<SimSettings> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = Config::from_parts(text, env)?;
        SimSettings::from_config(&cfg.section("system")?, &cfg.section("market_data")?)
    }

    fn error_of(text: &str, env: &[(&str, &str)]) -> String {
        format!("{:#}", load(text, env).unwrap_err())
    }

    #[test]
    fn the_project_config_is_valid() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml"))
            .unwrap();
        let settings = load(&text, &[]).unwrap();
        assert_eq!(settings.symbols.len(), 3);
        assert_eq!(settings.symbols[0].0, "BTC-USD");
        assert_eq!(settings.symbols[0].1.to_string(), "97000");
        assert_eq!(settings.params.spread_bps, Decimal::TWO);
    }

    #[test]
    fn defaults_and_overrides() {
        let text = "[system]\nsymbols = [\"BTC-USD\", \"DOGE-USD\"]\n[market_data.start_prices]\nBTC-USD = \"97000\"\n";
        let settings = load(
            text,
            &[
                ("MOONBUS__MARKET_DATA__TICK_INTERVAL_MS", "20"),
                ("MOONBUS__MARKET_DATA__START_PRICES__DOGE-USD", "\"0.25\""),
            ],
        )
        .unwrap();
        assert_eq!(settings.tick_interval, Duration::from_millis(20));
        assert_eq!(settings.params.step_ms, 20);
        assert_eq!(settings.seed, 42);
        let prices: Vec<String> = settings
            .symbols
            .iter()
            .map(|(_, p)| p.to_string())
            .collect();
        assert_eq!(prices, ["97000", "0.25"]);
        let unlisted = load("[system]\nsymbols = [\"ETH-USD\"]\n", &[]).unwrap();
        assert_eq!(unlisted.symbols[0].1.get(), DEFAULT_START_PRICE);
    }

    #[test]
    fn bad_values_are_clear_start_up_errors() {
        let err = error_of("[system]\nsymbols = [\"BTC.USD\"]\n", &[]);
        assert!(
            err.contains("[system].symbols: \"BTC.USD\" is not a valid symbol"),
            "{err}"
        );
        let err = error_of("[system]\nsymbols = []\n", &[]);
        assert!(err.contains("[system].symbols is empty"), "{err}");
        let err = error_of("[system]\nsymbols = [\"A-B\", \"A-B\"]\n", &[]);
        assert!(err.contains("A-B is listed twice"), "{err}");
        let err = error_of("[market_data.start_prices]\nBTC-USD = \"-5\"\n", &[]);
        assert!(
            err.contains("BTC-USD = \"-5\": not a positive decimal string"),
            "{err}"
        );
        let err = error_of("[market_data]\nspread_bps = 5000.0\n", &[]);
        assert!(
            err.contains("spread_bps = 5000: must be between 0 and 1000"),
            "{err}"
        );
        let err = error_of("[market_data]\njump_pct = 100.0\n", &[]);
        assert!(err.contains("jump_pct"), "{err}");
        let err = error_of("[market_data]\ntick_interval_ms = 0\n", &[]);
        assert!(err.contains("tick_interval_ms = 0"), "{err}");
        let err = error_of("[market_data]\nvolatilty = 0.5\n", &[]);
        assert!(err.contains("unknown field `volatilty`"), "{err}");
    }
}
