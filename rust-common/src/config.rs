//! One config file for the whole system (`moonbus.toml`), shared with the Python
//! services (services/common/config.py implements the same rules):
//!
//! - the file is `$MOONBUS_CONFIG`, else `./moonbus.toml`; a missing default file means
//!   built-in defaults, a missing explicit file is an error;
//! - every key can be overridden by `MOONBUS__<SECTION>__<KEY>=<value>` (any depth,
//!   case-insensitive names); the value is read as a TOML value when it parses as one
//!   (`10`, `true`, `["A-B"]`, `"x"`) and as a plain string otherwise.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use toml::{Table, Value};

const ENV_PREFIX: &str = "MOONBUS__";

/// The merged configuration: file + environment overrides.
#[derive(Debug, Clone, Default)]
pub struct Config {
    table: Table,
}

impl Config {
    /// Load from `$MOONBUS_CONFIG` / `./moonbus.toml` and the process environment.
    pub fn load() -> Result<Self> {
        let (path, explicit) = match std::env::var_os("MOONBUS_CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (PathBuf::from("moonbus.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading config {}", path.display())),
        };
        Self::from_parts(&text, std::env::vars())
            .with_context(|| format!("config {}", path.display()))
    }

    /// Parse `text` and apply `MOONBUS__*` overrides from `env` (testable without globals).
    pub fn from_parts(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut table: Table = toml::from_str(text).context("invalid TOML")?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (key, raw) in overrides {
            let path: Vec<String> = key[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                bail!("bad override variable name {key}");
            }
            set_path(&mut table, &path, parse_env_value(&raw))
                .with_context(|| format!("applying {key}"))?;
        }
        Ok(Self { table })
    }

    /// Deserialize one section (`[risk]`, `[market_data]`, ...); absent = defaults.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let value = self
            .table
            .get(name)
            .cloned()
            .unwrap_or_else(|| Value::Table(Table::new()));
        value
            .try_into()
            .with_context(|| format!("invalid [{name}] section"))
    }
}

fn parse_env_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<()> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut current = table;
    for key in parents {
        // Keys are matched case-insensitively so MOONBUS__RISK__X finds [risk] x.
        let existing = current
            .keys()
            .find(|k| k.eq_ignore_ascii_case(key))
            .cloned();
        let entry = current
            .entry(existing.unwrap_or_else(|| key.clone()))
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(t) => t,
            _ => bail!("{key} is not a section"),
        };
    }
    let existing = current
        .keys()
        .find(|k| k.eq_ignore_ascii_case(last))
        .cloned();
    current.insert(existing.unwrap_or_else(|| last.clone()), value);
    Ok(())
}

/// `[system]`: what every service shares.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    /// Canonical `BASE-QUOTE` symbols the system trades.
    pub symbols: Vec<String>,
}

impl Default for SystemConfig {
    fn default() -> Self {
        Self {
            symbols: vec!["BTC-USD".into(), "ETH-USD".into(), "SOL-USDC".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default)]
    struct Risk {
        max_order_notional: String,
        heartbeat_ms: u64,
        symbols: Vec<String>,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_values_with_typed_values() {
        let text = "[risk]\nmax_order_notional = \"1000\"\nheartbeat_ms = 1000\n";
        let cfg = Config::from_parts(
            text,
            env(&[
                ("MOONBUS__RISK__HEARTBEAT_MS", "250"),
                ("MOONBUS__RISK__SYMBOLS", "[\"BTC-USD\"]"),
                ("MOONBUS__RISK__MAX_ORDER_NOTIONAL", "\"50\""),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        let risk: Risk = cfg.section("risk").unwrap();
        assert_eq!(risk.heartbeat_ms, 250);
        assert_eq!(risk.symbols, vec!["BTC-USD"]);
        assert_eq!(risk.max_order_notional, "50");
    }

    #[test]
    fn unparsable_env_value_is_a_string_and_missing_section_is_default() {
        let cfg = Config::from_parts("", env(&[("MOONBUS__GATEWAY__HOST", "0.0.0.0")])).unwrap();
        let risk: Risk = cfg.section("risk").unwrap();
        assert_eq!(risk.heartbeat_ms, 0);
        assert_eq!(
            cfg.table["gateway"]["host"],
            Value::String("0.0.0.0".into())
        );
    }

    #[test]
    fn wrong_type_is_a_clear_error() {
        let cfg = Config::from_parts("[risk]\nheartbeat_ms = \"soon\"\n", env(&[])).unwrap();
        let err = cfg.section::<Risk>("risk").unwrap_err();
        assert!(format!("{err:#}").contains("invalid [risk] section"));
    }
}
