//! The limits risk enforces, and the account-level breaches they define.

use rust_decimal::prelude::FromPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;

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
