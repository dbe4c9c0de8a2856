//! The `[execution]` section of moonbus.toml.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::live::router::LiveVenueConfig;
use crate::live::Mode;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Which venue implementation routes orders; only "paper" exists so far.
    pub venue: String,
    /// The `OrderRequest.venue` names this service serves; others are REJECTED `unknown_venue`.
    pub venues: Vec<String>,
    /// Paper fills: fee charged on the fill notional, in basis points.
    pub fee_bps: f64,
    /// Paper fills: how far the fill price moves against the taker, in basis points.
    pub slippage_bps: f64,
    /// No answer from risk within this time = REJECTED `risk_unavailable` (fail closed).
    pub risk_timeout_ms: u64,
    /// How long the ORDERS consumer waits for an ack before re-delivering an order.
    pub ack_wait_ms: u64,
    /// ORDERS messages taken and not yet acked: in flight (different symbols at once)
    /// or waiting behind an earlier order of their symbol (engine.rs).
    pub max_in_flight: u64,
    /// Paper venue: simulated venue latency, waited between the risk approval and the fill.
    pub latency_ms: u64,
    /// Paper venue: a book received longer ago than this is not walked (slippage model).
    pub book_max_age_ms: u64,
    /// Paper venue: a tick received longer ago than this is no price (stale market: a
    /// MARKET order is REJECTED no_market_price, a GTC limit waits). Receive time, on this
    /// process's monotonic clock: the sender's ts is never trusted for age.
    pub tick_max_age_ms: u64,
    /// After a start, orders wait this long for the market's ticks to arrive before
    /// they are taken: a restarted execution has no price yet, and would otherwise
    /// REJECT the first MARKET orders `no_market_price`. 0 = take orders at once.
    pub market_warmup_ms: u64,
    /// An order whose outcome could not be stored comes back after this, doubling with
    /// each delivery up to `retry_max_delay_ms`: with the consumer's max_deliver (10) the
    /// defaults give a failure about 5 minutes before the order is dead-lettered.
    pub retry_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// Prometheus `GET /metrics`; "" or port 0 = off.
    pub metrics_addr: String,
    /// A ledger snapshot (SNAPSHOTS) this often and on a graceful stop; 0 = only on stop.
    pub snapshot_interval_ms: u64,
    /// Active/standby: every instance contends for the lease `leader.execution`; only
    /// its holder takes orders from ORDERS (rust-common leader.rs). false = one instance.
    pub failover: bool,
    /// How long a dead holder's lease blocks a standby (it stops acting at 3/4 of it).
    pub lease_ttl_ms: u64,
    /// Real money: a venue in `mode = "live"` is refused unless this is true as well.
    pub allow_live: bool,
    /// Real venues, by OrderRequest.venue name: `[execution.live.<name>]` (live/router.rs).
    /// In `paper` mode a venue is served by the paper venue like those of `venues`.
    pub live: BTreeMap<String, LiveVenueConfig>,
    /// Live orders without a venue answer (or while a venue's stream is down) are
    /// queried this often.
    pub live_poll_ms: u64,
    /// Every live venue's account (balances, positions, open orders) is read this often
    /// and published on exec.venue.<venue> for risk to reconcile.
    pub reconcile_interval_ms: u64,
    /// Algo orders' children (algo.rs) are split at this many decimals (or the parent
    /// quantity's own, if finer): a venue's lot size, when it is a power of ten.
    pub algo_quantity_decimals: u32,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            venue: "paper".into(),
            venues: vec!["sim".into()],
            fee_bps: 10.0,
            slippage_bps: 5.0,
            risk_timeout_ms: 500,
            ack_wait_ms: 30_000,
            max_in_flight: 32,
            latency_ms: 0,
            book_max_age_ms: 2_000,
            tick_max_age_ms: 5_000,
            market_warmup_ms: 500,
            retry_delay_ms: 1_000,
            retry_max_delay_ms: 60_000,
            metrics_addr: "127.0.0.1:9106".into(),
            snapshot_interval_ms: 60_000,
            failover: false,
            lease_ttl_ms: 3_000,
            allow_live: false,
            live: BTreeMap::new(),
            live_poll_ms: 1_000,
            reconcile_interval_ms: 5_000,
            algo_quantity_decimals: crate::algo::QUANTITY_DECIMALS,
        }
    }
}

impl ExecutionConfig {
    pub fn validate(&self) -> Result<()> {
        if self.venue != "paper" {
            bail!(
                "[execution] venue = {:?}: only \"paper\" is implemented",
                self.venue
            );
        }
        if self.venues.is_empty() {
            bail!("[execution] venues must name at least one venue");
        }
        for venue in &self.venues {
            moonbus_common::Venue::from_str(venue)
                .map_err(|e| anyhow::anyhow!("[execution] venues: {venue:?}: {e}"))?;
        }
        if self.risk_timeout_ms == 0 || self.ack_wait_ms == 0 || self.tick_max_age_ms == 0 {
            bail!("[execution] risk_timeout_ms, ack_wait_ms and tick_max_age_ms must be positive");
        }
        if self.market_warmup_ms > self.tick_max_age_ms {
            bail!("[execution] market_warmup_ms must be at most tick_max_age_ms");
        }
        if self.retry_delay_ms == 0 || self.retry_max_delay_ms < self.retry_delay_ms {
            bail!("[execution] retry_delay_ms must be positive and at most retry_max_delay_ms");
        }
        if self.algo_quantity_decimals > 18 {
            bail!("[execution] algo_quantity_decimals must be within 0..=18");
        }
        if self.max_in_flight == 0 || self.max_in_flight > 10_000 {
            bail!("[execution] max_in_flight must be within 1..=10000");
        }
        // Orders of one symbol wait for each other: the last of a full queue must be
        // done before ack_wait, or it is re-delivered while it waits (harmless, wasted).
        let worst = self
            .max_in_flight
            .saturating_mul(self.risk_timeout_ms.saturating_add(self.latency_ms));
        if worst >= self.ack_wait_ms {
            bail!(
                "[execution] max_in_flight x (risk_timeout_ms + latency_ms) = {worst} ms must be shorter than ack_wait_ms ({} ms)",
                self.ack_wait_ms
            );
        }
        self.fee_rate()?;
        self.slippage_rate()?;
        self.lease()?;
        if self.live_poll_ms == 0 || self.reconcile_interval_ms == 0 {
            bail!("[execution] live_poll_ms and reconcile_interval_ms must be positive");
        }
        for (name, venue) in &self.live {
            moonbus_common::Venue::from_str(name)
                .map_err(|e| anyhow::anyhow!("[execution.live.{name}]: {e}"))?;
            if venue.mode == Mode::Live && !self.allow_live {
                bail!(
                    "[execution.live.{name}] mode = \"live\" trades real money: it also needs [execution] allow_live = true"
                );
            }
            if venue.mode != Mode::Paper && self.venues.contains(name) {
                bail!("[execution.live.{name}] is {} but {name:?} is also in [execution] venues (paper)", venue.mode);
            }
        }
        Ok(())
    }

    /// `Some` with `failover = true`: wait for the lease before taking orders.
    pub fn lease(&self) -> Result<Option<moonbus_common::leader::LeaseSettings>> {
        moonbus_common::leader::LeaseSettings::from_config(
            "execution",
            self.failover,
            self.lease_ttl_ms,
        )
    }

    /// fee_bps as an exact decimal (10.0 -> 10).
    pub fn fee_rate(&self) -> Result<Decimal> {
        bps(self.fee_bps, "fee_bps", Decimal::from(10_000))
    }

    /// slippage_bps as an exact decimal; at most 1000 bps (10 %) so a SELL stays positive.
    pub fn slippage_rate(&self) -> Result<Decimal> {
        bps(self.slippage_bps, "slippage_bps", Decimal::from(1_000))
    }

    pub fn risk_timeout(&self) -> Duration {
        Duration::from_millis(self.risk_timeout_ms)
    }

    /// The provisioned ORDERS consumer must be the one this config expects
    /// (`make run` provisions it from [execution]): ack_wait and max_ack_pending are
    /// what keeps an order in flight from being re-delivered while it is handled.
    pub fn check_consumer(&self, live: &async_nats::jetstream::consumer::Config) -> Result<()> {
        if live.ack_wait != self.ack_wait() || live.max_ack_pending != self.max_in_flight as i64 {
            bail!(
                "the provisioned ORDERS consumer has ack_wait {:?} and max_ack_pending {}, but [execution] \
                 says ack_wait_ms {} and max_in_flight {}: provision again with this config \
                 (make run and the compose provision service do)",
                live.ack_wait,
                live.max_ack_pending,
                self.ack_wait_ms,
                self.max_in_flight
            );
        }
        Ok(())
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }

    /// The venue names the paper venue serves: `venues` and the live ones in paper mode.
    pub fn paper_venues(&self) -> Vec<String> {
        let mut names = self.venues.clone();
        names.extend(
            self.live
                .iter()
                .filter(|(_, v)| v.mode == Mode::Paper)
                .map(|(name, _)| name.clone()),
        );
        names
    }

    /// The venues that trade for real (testnet or live mode).
    pub fn real_venues(&self) -> impl Iterator<Item = (&String, &LiveVenueConfig)> {
        self.live.iter().filter(|(_, v)| v.mode != Mode::Paper)
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    pub fn book_max_age(&self) -> Duration {
        Duration::from_millis(self.book_max_age_ms)
    }

    pub fn backoff(&self) -> crate::jobs::Backoff {
        crate::jobs::Backoff {
            first: Duration::from_millis(self.retry_delay_ms),
            max: Duration::from_millis(self.retry_max_delay_ms),
        }
    }

    pub fn market_warmup(&self) -> Duration {
        Duration::from_millis(self.market_warmup_ms)
    }

    pub fn tick_max_age(&self) -> Duration {
        Duration::from_millis(self.tick_max_age_ms)
    }
}

/// A basis-point setting as the decimal it was written as: f64's shortest display form
/// ("5", "0.1") parses back exactly, so no binary-float noise enters money maths.
fn bps(value: f64, name: &str, max: Decimal) -> Result<Decimal> {
    if !value.is_finite() {
        bail!("[execution] {name} must be a finite number");
    }
    let exact = Decimal::from_str(&value.to_string())
        .with_context(|| format!("[execution] {name} = {value}"))?;
    if exact < Decimal::ZERO || exact > max {
        bail!("[execution] {name} = {value} is outside 0..={max}");
    }
    Ok(exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bps_settings_become_exact_decimals() {
        let cfg = ExecutionConfig {
            fee_bps: 0.1,
            slippage_bps: 7.5,
            ..Default::default()
        };
        assert_eq!(cfg.fee_rate().unwrap(), Decimal::from_str("0.1").unwrap());
        assert_eq!(
            cfg.slippage_rate().unwrap(),
            Decimal::from_str("7.5").unwrap()
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused() {
        let negative = ExecutionConfig {
            fee_bps: -1.0,
            ..Default::default()
        };
        assert!(negative.validate().is_err());
        let huge_slippage = ExecutionConfig {
            slippage_bps: 2000.0,
            ..Default::default()
        };
        assert!(huge_slippage.validate().is_err());
        let other_venue = ExecutionConfig {
            venue: "binance".into(),
            ..Default::default()
        };
        assert!(other_venue.validate().is_err());
        let bad_name = ExecutionConfig {
            venues: vec!["s.m".into()],
            ..Default::default()
        };
        assert!(bad_name.validate().is_err());
        let no_flight = ExecutionConfig {
            max_in_flight: 0,
            ..Default::default()
        };
        assert!(no_flight.validate().is_err());
        // 64 x (500 + 0) ms would outlast ack_wait_ms 30000
        let queue_outlives_ack_wait = ExecutionConfig {
            max_in_flight: 64,
            ..Default::default()
        };
        assert!(queue_outlives_ack_wait.validate().is_err());
        let backwards = ExecutionConfig {
            retry_delay_ms: 5_000,
            retry_max_delay_ms: 1_000,
            ..Default::default()
        };
        assert!(backwards.validate().is_err());
        let slow_venue = ExecutionConfig {
            latency_ms: 500,
            ..Default::default()
        };
        assert!(slow_venue.validate().is_err());
    }
}
