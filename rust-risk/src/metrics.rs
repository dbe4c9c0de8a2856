//! Prometheus metrics of risk (`[risk] metrics_addr`). The money gauges are f64 for
//! display only: the engine's figures stay exact Decimals.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `risk_checks_total` | counter | result (`approved`, `refused`), reason (reason_code; `none` when approved) |
//! | `risk_check_seconds` | histogram | time to decide a check inside risk |
//! | `risk_equity`, `risk_cash`, `risk_realized_pnl`, `risk_unrealized_pnl`, `risk_day_pnl`, `risk_gross_exposure` | gauge | account figures |
//! | `risk_drawdown_pct` | gauge | drawdown from the peak equity, percent |
//! | `risk_open_positions` | gauge | |
//! | `risk_kill_switch` | gauge | 1 = engaged |
//! | `risk_reports_applied_total` | counter | execution reports applied (duplicates not counted) |

use std::sync::LazyLock;

use moonbus_common::metrics::{Counter, Family, FloatGauge, Gauge, Histogram, Text};
use moonbus_common::{AccountState, RiskCheckResult};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

#[derive(Debug, Default)]
pub struct Metrics {
    /// By (result, reason).
    checks: Family<Counter>,
    pub check_seconds: Histogram,
    equity: FloatGauge,
    cash: FloatGauge,
    realized_pnl: FloatGauge,
    unrealized_pnl: FloatGauge,
    day_pnl: FloatGauge,
    drawdown_pct: FloatGauge,
    gross_exposure: FloatGauge,
    open_positions: Gauge,
    kill_switch: Gauge,
    pub reports_applied: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

pub fn global() -> &'static Metrics {
    &METRICS
}

fn display(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::NAN)
}

impl Metrics {
    pub fn count_check(&self, result: &RiskCheckResult) {
        let (outcome, reason) = match (result.approved, &result.reason_code) {
            (true, _) => ("approved", "none"),
            (false, Some(code)) => ("refused", code.as_str()),
            (false, None) => ("refused", "none"),
        };
        self.checks.get(&[outcome, reason]).inc();
    }

    pub fn set_account(&self, account: &AccountState) {
        self.equity.set(display(account.equity.get()));
        self.cash.set(display(account.cash.get()));
        self.realized_pnl.set(display(account.realized_pnl.get()));
        self.unrealized_pnl
            .set(display(account.unrealized_pnl.get()));
        self.day_pnl.set(display(account.day_pnl.get()));
        self.drawdown_pct.set(account.drawdown_pct);
        self.gross_exposure
            .set(display(account.gross_exposure.get()));
        self.open_positions.set(account.open_positions);
        self.kill_switch.set(u64::from(account.kill_switch));
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Text::default();
        out.counters(
            "risk_checks_total",
            "Pre-trade checks decided.",
            &["result", "reason"],
            &self.checks,
        );
        out.histogram(
            "risk_check_seconds",
            "Time to decide a check inside risk.",
            &self.check_seconds,
        );
        for (name, help, gauge) in [
            ("risk_equity", "Equity at the marks.", &self.equity),
            ("risk_cash", "Cash.", &self.cash),
            ("risk_realized_pnl", "Realized PnL.", &self.realized_pnl),
            (
                "risk_unrealized_pnl",
                "Unrealized PnL at the marks.",
                &self.unrealized_pnl,
            ),
            (
                "risk_day_pnl",
                "PnL since the start of the UTC day.",
                &self.day_pnl,
            ),
            (
                "risk_drawdown_pct",
                "Drawdown from the peak equity, percent.",
                &self.drawdown_pct,
            ),
            (
                "risk_gross_exposure",
                "Gross exposure at the marks.",
                &self.gross_exposure,
            ),
        ] {
            out.single(name, "gauge", help, gauge.get());
        }
        out.single(
            "risk_open_positions",
            "gauge",
            "Open positions.",
            self.open_positions.get(),
        );
        out.single(
            "risk_kill_switch",
            "gauge",
            "1 = the kill switch is engaged.",
            self.kill_switch.get(),
        );
        out.single(
            "risk_reports_applied_total",
            "counter",
            "Execution reports applied.",
            self.reports_applied.get(),
        );
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_counted_by_result_and_reason() {
        let m = Metrics::default();
        let mut result: RiskCheckResult = serde_json::from_value(serde_json::json!({
            "client_order_id": "o-1", "approved": true, "state": "ACTIVE", "ts": 1
        }))
        .unwrap();
        m.count_check(&result);
        result.approved = false;
        result.reason_code = Some("stale_market_data".into());
        m.count_check(&result);
        m.count_check(&result);
        let text = m.render();
        assert!(
            text.contains("risk_checks_total{result=\"approved\",reason=\"none\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("risk_checks_total{result=\"refused\",reason=\"stale_market_data\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("risk_kill_switch 0\n"), "{text}");
    }
}
