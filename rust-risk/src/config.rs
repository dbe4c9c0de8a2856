//! The `[risk]` section of moonbus.toml. Money keys are decimal strings, as on the
//! bus; a number, a typo'd key or an out-of-range value stops the start with a clear error.

use anyhow::{bail, Context, Result};
use moonbus_common::config::{Config, SystemConfig};
use moonbus_common::{Money, NonNegativeMoney, Symbol};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::limits::{BreachAction, Limits};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    pub starting_cash: Money,
    pub max_order_notional: NonNegativeMoney,
    pub max_position_notional: NonNegativeMoney,
    pub max_gross_exposure: NonNegativeMoney,
    pub min_cash: Money,
    pub max_daily_loss: NonNegativeMoney,
    pub max_drawdown_pct: f64,
    pub stale_after_ms: u64,
    pub heartbeat_ms: u64,
    pub reservation_ttl_ms: u64,
    pub on_limit_breach: BreachAction,
    /// Fee rate assumed for the min_cash check (basis points of notional).
    pub fee_bps: f64,
}

impl Default for RiskConfig {
    fn default() -> Self {
        let money = |text: &str| text.parse::<Money>().expect("valid default");
        let non_negative = |text: &str| text.parse::<NonNegativeMoney>().expect("valid default");
        Self {
            starting_cash: money("10000"),
            max_order_notional: non_negative("1000"),
            max_position_notional: non_negative("5000"),
            max_gross_exposure: non_negative("20000"),
            min_cash: money("100"),
            max_daily_loss: non_negative("500"),
            max_drawdown_pct: 10.0,
            stale_after_ms: 5000,
            heartbeat_ms: 1000,
            reservation_ttl_ms: 10_000,
            on_limit_breach: BreachAction::ReduceOnly,
            fee_bps: 10.0,
        }
    }
}

/// Everything the engine needs to start, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    pub starting_cash: Decimal,
    pub stale_after_ms: u64,
    pub heartbeat_ms: u64,
    pub reservation_ttl_ms: u64,
    pub on_limit_breach: BreachAction,
    pub fee_bps: Decimal,
    /// `[system].symbols`: a verdict is published for each, position or not.
    pub symbols: Vec<Symbol>,
}

impl Settings {
    pub fn load(config: &Config) -> Result<Self> {
        let risk: RiskConfig = config.section("risk")?;
        let system: SystemConfig = config.section("system")?;
        Self::from_parts(risk, system).context("invalid [risk] section")
    }

    pub fn from_parts(risk: RiskConfig, system: SystemConfig) -> Result<Self> {
        let limits = Limits {
            max_order_notional: risk.max_order_notional.get(),
            max_position_notional: risk.max_position_notional.get(),
            max_gross_exposure: risk.max_gross_exposure.get(),
            min_cash: risk.min_cash.get(),
            max_daily_loss: risk.max_daily_loss.get(),
            max_drawdown_pct: risk.max_drawdown_pct,
        };
        limits.validate().map_err(anyhow::Error::msg)?;
        if risk.heartbeat_ms == 0 {
            bail!("heartbeat_ms must be greater than zero");
        }
        if risk.reservation_ttl_ms == 0 {
            bail!("reservation_ttl_ms must be greater than zero");
        }
        let fee_bps = Decimal::from_f64(risk.fee_bps)
            .filter(|fee| !fee.is_sign_negative())
            .with_context(|| {
                format!(
                    "fee_bps must be a non-negative number, got {}",
                    risk.fee_bps
                )
            })?;
        let symbols = system
            .symbols
            .into_iter()
            .map(Symbol::try_from)
            .collect::<Result<Vec<_>, _>>()
            .context("[system] symbols")?;
        Ok(Self {
            limits,
            starting_cash: risk.starting_cash.get(),
            stale_after_ms: risk.stale_after_ms,
            heartbeat_ms: risk.heartbeat_ms,
            reservation_ttl_ms: risk.reservation_ttl_ms,
            on_limit_breach: risk.on_limit_breach,
            fee_bps,
            symbols,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings> {
        Settings::load(&Config::from_parts(text, Vec::new())?)
    }

    fn error(text: &str) -> String {
        format!("{:#}", load(text).unwrap_err())
    }

    #[test]
    fn the_shipped_config_loads() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml"))
            .unwrap();
        let settings = load(&text).unwrap();
        assert_eq!(settings.limits.max_order_notional, "1000".parse().unwrap());
        assert_eq!(settings.starting_cash, "10000".parse().unwrap());
        assert_eq!(settings.on_limit_breach, BreachAction::ReduceOnly);
        assert_eq!(settings.symbols.len(), 3);
    }

    #[test]
    fn missing_section_means_defaults() {
        let settings = load("").unwrap();
        assert_eq!(settings.reservation_ttl_ms, 10_000);
        assert_eq!(settings.fee_bps, "10".parse().unwrap());
    }

    #[test]
    fn money_must_be_a_decimal_string() {
        assert!(
            error("[risk]\nmax_order_notional = 1000\n").contains("money must be a decimal string")
        );
        assert!(error("[risk]\nmin_cash = \"1e3\"\n").contains("not a decimal string"));
        assert!(error("[risk]\nmax_daily_loss = \"-5\"\n").contains("must not be negative"));
        let settings = load("[risk]\nmin_cash = \"-250.5\"\n").unwrap();
        assert_eq!(settings.limits.min_cash, "-250.5".parse().unwrap());
    }

    #[test]
    fn bad_values_and_unknown_keys_are_start_up_errors() {
        assert!(error("[risk]\nmax_drawdown_pct = 150.0\n").contains("max_drawdown_pct"));
        assert!(error("[risk]\nheartbeat_ms = 0\n").contains("heartbeat_ms"));
        assert!(error("[risk]\non_limit_breach = \"panic\"\n").contains("unknown variant"));
        assert!(error("[risk]\nmax_order_notionl = \"5\"\n").contains("unknown field"));
        assert!(error("[system]\nsymbols = [\"BTC.USD\"]\n").contains("invalid symbol"));
        let halted = load("[risk]\non_limit_breach = \"halted\"\n").unwrap();
        assert_eq!(halted.on_limit_breach, BreachAction::Halted);
    }
}
