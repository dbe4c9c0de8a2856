//! The `[risk]` section of moonbus.toml. Money keys are decimal strings, as on the
//! bus; a number, a typo'd key or an out-of-range value stops the start with a clear error.

use anyhow::{bail, Context, Result};
use moonbus_common::config::{Config, SystemConfig};
use moonbus_common::leader::LeaseSettings;
use moonbus_common::metrics;
use moonbus_common::{Money, NonNegativeMoney, Symbol, Venue};
use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::breaker::BreakerConfig;
use crate::limits::{BreachAction, Limits};
use crate::rate::RateLimits;
use crate::recon::ReconSettings;
use crate::rules::OrderGuards;
use crate::shorts::ShortVenues;

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
    /// Approved orders per window; 0 = no limit.
    pub rate_limit_window_ms: u64,
    pub rate_limit_agent: u64,
    pub rate_limit_global: u64,
    pub rate_limit_reduce_only: u64,
    /// A LIMIT order this far on the aggressive side of the mark is refused; 0 = off.
    pub price_band_pct: f64,
    /// In-flight plus resting orders; 0 = no limit.
    pub max_open_orders: u64,
    pub max_open_orders_per_symbol: u64,
    /// In-flight plus resting orders of one agent (its share of max_open_orders); 0 = off.
    pub max_open_orders_per_agent: u64,
    /// A move of more than this within the window halts the symbol; 0 = off.
    pub circuit_breaker_pct: f64,
    pub circuit_breaker_window_s: u64,
    pub circuit_breaker_halt_s: u64,
    /// Venue of the orders a kill switch flatten sends.
    pub flatten_venue: String,
    /// Prometheus `GET /metrics`; "" or port 0 = off.
    pub metrics_addr: String,
    /// A state snapshot (SNAPSHOTS) this often, after this many reports, and on a
    /// graceful stop; 0 turns each trigger off.
    pub snapshot_interval_ms: u64,
    pub snapshot_every_reports: u64,
    /// Active/standby: every instance contends for the lease `leader.risk`; only its
    /// holder answers checks (rust-common leader.rs). false = one instance, no lease.
    pub failover: bool,
    /// How long a dead holder's lease blocks a standby (it stops acting at 3/4 of it).
    pub lease_ttl_ms: u64,
    /// Live venue reconciliation (recon.rs): a position differs when |venue - risk| is
    /// above both this quantity and `recon_tolerance_rel` x the larger of the two.
    pub recon_tolerance: NonNegativeMoney,
    pub recon_tolerance_rel: NonNegativeMoney,
    /// No account read from a live venue for this long: UNAVAILABLE (gated).
    pub recon_stale_ms: u64,
    /// A difference must persist this long before it gates the account (fills race the reads).
    pub recon_grace_ms: u64,
    /// The account's gate while a live venue is mismatched or unavailable.
    pub on_recon_mismatch: BreachAction,
    /// Live venues not reconciled (retired): their statuses and stored reconciliations are ignored.
    pub recon_ignore_venues: Vec<String>,
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
            rate_limit_window_ms: 1000,
            rate_limit_agent: 20,
            rate_limit_global: 50,
            rate_limit_reduce_only: 200,
            price_band_pct: 5.0,
            max_open_orders: 50,
            max_open_orders_per_symbol: 10,
            max_open_orders_per_agent: 25,
            circuit_breaker_pct: 5.0,
            circuit_breaker_window_s: 60,
            circuit_breaker_halt_s: 300,
            flatten_venue: "sim".into(),
            metrics_addr: "127.0.0.1:9105".into(),
            snapshot_interval_ms: 60_000,
            snapshot_every_reports: 10_000,
            failover: false,
            lease_ttl_ms: 3_000,
            recon_tolerance: non_negative("0.00000001"),
            recon_tolerance_rel: non_negative("0.00000001"),
            recon_stale_ms: 30_000,
            recon_grace_ms: 4_000,
            on_recon_mismatch: BreachAction::ReduceOnly,
            recon_ignore_venues: Vec::new(),
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
    pub rate: RateLimits,
    pub guards: OrderGuards,
    pub breaker: BreakerConfig,
    pub flatten_venue: Venue,
    /// `[system].symbols`: a verdict is published for each, position or not.
    pub symbols: Vec<Symbol>,
    /// `None`: no metrics endpoint.
    pub metrics_addr: Option<String>,
    /// 0 = off.
    pub snapshot_interval_ms: u64,
    pub snapshot_every_reports: u64,
    /// `Some` with `failover = true`: wait for the lease before acting.
    pub lease: Option<LeaseSettings>,
    /// Live venue reconciliation.
    pub recon: ReconSettings,
    /// The venues that cannot hold a short (`[execution.live.<name>] kind`, shorts.rs).
    pub short_venues: ShortVenues,
}

impl Settings {
    pub fn load(config: &Config) -> Result<Self> {
        let risk: RiskConfig = config.section("risk")?;
        let system: SystemConfig = config.section("system")?;
        let mut settings = Self::from_parts(risk, system).context("invalid [risk] section")?;
        settings.short_venues = ShortVenues::load(config)?;
        Ok(settings)
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
        // At most 100 % of the notional (and so a fee estimate never overflows).
        let fee_bps = non_negative("fee_bps", risk.fee_bps, 10_000.0)?;
        if risk.rate_limit_window_ms == 0 {
            bail!("rate_limit_window_ms must be greater than zero");
        }
        let breaker = BreakerConfig {
            pct: non_negative("circuit_breaker_pct", risk.circuit_breaker_pct, 100.0)?,
            window_ns: risk.circuit_breaker_window_s.saturating_mul(NS_PER_S),
            halt_ns: risk.circuit_breaker_halt_s.saturating_mul(NS_PER_S),
        };
        if !breaker.pct.is_zero() && (breaker.window_ns == 0 || breaker.halt_ns == 0) {
            bail!("circuit_breaker_window_s and circuit_breaker_halt_s must be greater than zero (or circuit_breaker_pct 0: off)");
        }
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let rate = RateLimits {
            window_ns: risk.rate_limit_window_ms.saturating_mul(1_000_000),
            per_agent: count(risk.rate_limit_agent),
            global: count(risk.rate_limit_global),
            reduce_only: count(risk.rate_limit_reduce_only),
        };
        let guards = OrderGuards {
            price_band_pct: non_negative("price_band_pct", risk.price_band_pct, 100.0)?,
            max_open_orders: risk.max_open_orders,
            max_open_orders_per_symbol: risk.max_open_orders_per_symbol,
            max_open_orders_per_agent: risk.max_open_orders_per_agent,
        };
        let flatten_venue = Venue::try_from(risk.flatten_venue).context("flatten_venue")?;
        if risk.recon_stale_ms == 0 {
            bail!("recon_stale_ms must be greater than zero");
        }
        let recon = ReconSettings {
            tolerance: risk.recon_tolerance.get(),
            tolerance_rel: risk.recon_tolerance_rel.get(),
            stale_ms: risk.recon_stale_ms,
            grace_ms: risk.recon_grace_ms,
            action: risk.on_recon_mismatch,
            ignore: risk
                .recon_ignore_venues
                .into_iter()
                .map(Venue::try_from)
                .collect::<Result<Vec<_>, _>>()
                .context("recon_ignore_venues")?,
        };
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
            rate,
            guards,
            breaker,
            flatten_venue,
            symbols,
            metrics_addr: metrics::enabled_addr(&risk.metrics_addr).map(str::to_string),
            snapshot_interval_ms: risk.snapshot_interval_ms,
            snapshot_every_reports: risk.snapshot_every_reports,
            lease: LeaseSettings::from_config("risk", risk.failover, risk.lease_ttl_ms)?,
            recon,
            short_venues: ShortVenues::default(),
        })
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// A percentage or rate from the config as an exact decimal within 0 ..= `max`.
fn non_negative(name: &str, value: f64, max: f64) -> Result<Decimal> {
    Decimal::from_f64(value)
        .filter(|v| !v.is_sign_negative() && value <= max)
        .with_context(|| format!("{name} must be a number within 0 ..= {max}, got {value}"))
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
        assert_eq!(settings.rate.window_ns, 1_000_000_000);
        assert_eq!(settings.guards.price_band_pct, "5".parse().unwrap());
        assert_eq!(settings.breaker.halt_ns, 300 * NS_PER_S);
        assert_eq!(settings.flatten_venue, "sim");
        assert_eq!(settings.metrics_addr.as_deref(), Some("127.0.0.1:9105"));
        assert_eq!(settings.snapshot_interval_ms, 60_000);
        assert_eq!(settings.snapshot_every_reports, 10_000);
    }

    #[test]
    fn missing_section_means_defaults() {
        let settings = load("").unwrap();
        assert_eq!(settings.reservation_ttl_ms, 10_000);
        assert_eq!(settings.fee_bps, "10".parse().unwrap());
        let off = load("[risk]\nmetrics_addr = \"\"\n").unwrap();
        assert_eq!(off.metrics_addr, None);
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
        assert!(error("[risk]\nprice_band_pct = -1.0\n").contains("price_band_pct"));
        assert!(error("[risk]\ncircuit_breaker_pct = 101.0\n").contains("circuit_breaker_pct"));
        assert!(error("[risk]\ncircuit_breaker_halt_s = 0\n").contains("circuit_breaker_halt_s"));
        assert!(error("[risk]\nrate_limit_window_ms = 0\n").contains("rate_limit_window_ms"));
        assert!(error("[risk]\nflatten_venue = \"Sim!\"\n").contains("flatten_venue"));
        assert!(error("[risk]\nfee_bps = -3.0\n").contains("fee_bps"));
        assert!(error("[risk]\nfee_bps = 1e30\n").contains("fee_bps"));
        assert!(error("[risk]\nfee_bps = 10000.5\n").contains("fee_bps"));
        assert!(error("[risk]\nfee_bps = nan\n").contains("fee_bps"));
        assert!(
            error("[risk]\nmax_order_notional = \"100000000000000\"\n").contains("out of range")
        );
    }

    #[test]
    fn recon_settings_and_their_defaults() {
        let settings = load("").unwrap();
        assert_eq!(settings.recon.tolerance, "0.00000001".parse().unwrap());
        assert_eq!(settings.recon.tolerance_rel, "0.00000001".parse().unwrap());
        assert_eq!(
            (settings.recon.stale_ms, settings.recon.grace_ms),
            (30_000, 4_000)
        );
        assert_eq!(settings.recon.action, BreachAction::ReduceOnly);
        let text = "[risk]\nrecon_tolerance = \"0.001\"\non_recon_mismatch = \"halted\"\nrecon_grace_ms = 0\n";
        let settings = load(text).unwrap();
        assert_eq!(settings.recon.tolerance, "0.001".parse().unwrap());
        assert_eq!(settings.recon.action, BreachAction::Halted);
        assert_eq!(settings.recon.grace_ms, 0);
        assert!(error("[risk]\nrecon_tolerance = \"-1\"\n").contains("must not be negative"));
        assert!(error("[risk]\nrecon_tolerance = 0.1\n").contains("decimal string"));
        assert!(error("[risk]\nrecon_stale_ms = 0\n").contains("recon_stale_ms"));
        assert!(error("[risk]\non_recon_mismatch = \"ignore\"\n").contains("unknown variant"));
        assert!(error("[risk]\nrecon_ignore_venues = [\"Bad Venue\"]\n")
            .contains("recon_ignore_venues"));
        let ignoring = load("[risk]\nrecon_ignore_venues = [\"aster\"]\n").unwrap();
        assert_eq!(ignoring.recon.ignore, vec!["aster"]);
    }

    #[test]
    fn zero_turns_the_order_flow_guards_off() {
        // (An integer where a percentage goes is fine: MOONBUS__RISK__PRICE_BAND_PCT=0.)
        let text = "[risk]\ncircuit_breaker_pct = 0.0\ncircuit_breaker_halt_s = 0\n\
                    price_band_pct = 0\nrate_limit_agent = 0\nmax_open_orders = 0\n";
        let settings = load(text).unwrap();
        assert!(settings.breaker.pct.is_zero() && settings.guards.price_band_pct.is_zero());
        assert_eq!((settings.rate.per_agent, settings.rate.global), (0, 50));
        assert_eq!(settings.guards.max_open_orders, 0);
    }
}
