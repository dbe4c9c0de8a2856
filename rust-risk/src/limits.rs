//! The limits risk enforces, and the account-level breaches they define.

use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_order_notional: Decimal,
    pub max_position_notional: Decimal,
    pub max_gross_exposure: Decimal,
    /// May be negative (an account allowed to borrow).
    pub min_cash: Decimal,
    pub max_daily_loss: Decimal,
    pub max_drawdown_pct: f64,
}

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_order_notional", self.max_order_notional),
            ("max_position_notional", self.max_position_notional),
            ("max_gross_exposure", self.max_gross_exposure),
            ("max_daily_loss", self.max_daily_loss),
        ] {
            if value.is_sign_negative() && !value.is_zero() {
                return Err(format!("{name} must not be negative, got {value}"));
            }
        }
        if !(0.0..=100.0).contains(&self.max_drawdown_pct) {
            return Err(format!(
                "max_drawdown_pct must be within 0..=100, got {}",
                self.max_drawdown_pct
            ));
        }
        Ok(())
    }

    /// The limits an account is past, by name (empty = none).
    pub fn breaches(&self, day_pnl: Decimal, drawdown_pct: Decimal) -> Vec<&'static str> {
        let mut breached = Vec::new();
        if day_pnl <= -self.max_daily_loss {
            breached.push("max_daily_loss");
        }
        // validate() keeps the percentage finite, so the conversion cannot fail.
        let max_drawdown = Decimal::from_f64(self.max_drawdown_pct).unwrap_or(Decimal::ZERO);
        if drawdown_pct >= max_drawdown {
            breached.push("max_drawdown");
        }
        breached
    }
}

/// A loss or drawdown limit that tripped keeps gating the account, so it does not
/// flap back to ACTIVE on a small bounce: until the UTC day rolls over (a new day's
/// loss budget) or an operator releases it (`risk.api.limits` `release_loss_latch`).
/// A limit still breached at that moment trips again at once. Stored in the KV bucket
/// so a restart keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossLatch {
    /// The limits that tripped, by name, sorted.
    pub breaches: Vec<String>,
    /// The UTC day (days since the epoch) it holds for.
    pub day: u64,
    pub since_ts: u64,
}

impl LossLatch {
    /// Latch `breaches` on `day`: a latch of an earlier day is over, one of the same
    /// day gathers the new names. Returns the latch to keep (None = nothing latched).
    pub fn update(
        current: Option<&LossLatch>,
        breaches: &[&str],
        day: u64,
        now_ns: u64,
    ) -> Option<LossLatch> {
        let mut latch = current
            .filter(|l| l.day >= day)
            .cloned()
            .unwrap_or(LossLatch {
                breaches: Vec::new(),
                day,
                since_ts: now_ns,
            });
        for breach in breaches {
            if !latch.breaches.iter().any(|b| b == breach) {
                latch.breaches.push(breach.to_string());
            }
        }
        latch.breaches.sort();
        (!latch.breaches.is_empty()).then_some(latch)
    }
}

/// What a breached limit does to the account (`on_limit_breach` in [risk]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachAction {
    /// Only orders that reduce a position pass.
    #[default]
    ReduceOnly,
    /// No order passes.
    Halted,
}

/// The limits of moonbus.toml, for tests.
#[cfg(test)]
pub(crate) fn sample() -> Limits {
    use crate::ledger::d;
    Limits {
        max_order_notional: d("1000"),
        max_position_notional: d("5000"),
        max_gross_exposure: d("20000"),
        min_cash: d("100"),
        max_daily_loss: d("500"),
        max_drawdown_pct: 10.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::d;

    fn limits() -> Limits {
        sample()
    }

    #[test]
    fn daily_loss_breaches_at_the_limit() {
        assert!(limits().breaches(d("-499.99"), d("0")).is_empty());
        assert_eq!(limits().breaches(d("-500"), d("0")), vec!["max_daily_loss"]);
    }

    #[test]
    fn drawdown_breaches_at_the_limit() {
        assert!(limits().breaches(d("0"), d("9.999")).is_empty());
        assert_eq!(limits().breaches(d("0"), d("10")), vec!["max_drawdown"]);
        assert_eq!(
            limits().breaches(d("-600"), d("12")),
            vec!["max_daily_loss", "max_drawdown"]
        );
    }

    #[test]
    fn loss_latch_holds_for_the_day_and_gathers_breaches() {
        let latch = LossLatch::update(None, &["max_daily_loss"], 10, 5).unwrap();
        assert_eq!(
            (latch.breaches.clone(), latch.day, latch.since_ts),
            (vec!["max_daily_loss".to_string()], 10, 5)
        );
        // The bounce: no breach now, the latch stays.
        let same_day = LossLatch::update(Some(&latch), &[], 10, 6);
        assert_eq!(same_day.as_ref(), Some(&latch));
        let more =
            LossLatch::update(Some(&latch), &["max_drawdown", "max_daily_loss"], 10, 7).unwrap();
        assert_eq!(more.breaches, ["max_daily_loss", "max_drawdown"]);
        assert_eq!(more.since_ts, 5);
        // The next UTC day ends it; a limit still breached then latches anew.
        assert_eq!(LossLatch::update(Some(&more), &[], 11, 8), None);
        let again = LossLatch::update(Some(&more), &["max_drawdown"], 11, 8).unwrap();
        assert_eq!(
            (again.breaches.len(), again.day, again.since_ts),
            (1, 11, 8)
        );
        assert_eq!(LossLatch::update(None, &[], 11, 9), None);
    }

    #[test]
    fn validate_rejects_negative_notionals_and_bad_percentages() {
        assert!(limits().validate().is_ok());
        let negative = Limits {
            max_order_notional: d("-1"),
            ..limits()
        };
        assert!(negative
            .validate()
            .unwrap_err()
            .contains("max_order_notional"));
        let percent = Limits {
            max_drawdown_pct: 101.0,
            ..limits()
        };
        assert!(percent.validate().unwrap_err().contains("max_drawdown_pct"));
        let nan = Limits {
            max_drawdown_pct: f64::NAN,
            ..limits()
        };
        assert!(nan.validate().is_err());
        let borrow = Limits {
            min_cash: d("-500"),
            ..limits()
        };
        assert!(borrow.validate().is_ok());
    }
}
