//! Prometheus metrics of execution (`[execution] metrics_addr`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `exec_orders_total` | counter | status (final: `FILLED`, `REJECTED`, `EXPIRED`, ...), reason (the reason's code prefix, `none` without one: free text such as `cancelled by <agent>`) |
//! | `exec_order_seconds` | histogram | order received -> its final report stored in EXEC |
//! | `exec_risk_check_seconds` | histogram | the `risk.api.check` round trip |
//! | `exec_in_flight` | gauge | orders being handled right now |
//! | `exec_fees_total` | counter | fees of the fills stored (f64, for display) |

use std::sync::LazyLock;

use moonbus_common::metrics::{
    Counter, Family, FloatCounter, Gauge, Histogram, Text, ROUND_TRIP_BOUNDS_NS,
};
use moonbus_common::{now_ns, ExecutionReport};
use rust_decimal::prelude::ToPrimitive;

use crate::ledger::is_final;

#[derive(Debug)]
pub struct Metrics {
    /// By (status, reason code).
    orders: Family<Counter>,
    order_seconds: Histogram,
    pub risk_check_seconds: Histogram,
    pub in_flight: Gauge,
    fees: FloatCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    orders: Family::default(),
    order_seconds: Histogram::with_bounds(ROUND_TRIP_BOUNDS_NS),
    risk_check_seconds: Histogram::with_bounds(ROUND_TRIP_BOUNDS_NS),
    in_flight: Gauge::default(),
    fees: FloatCounter::default(),
});

pub fn global() -> &'static Metrics {
    &METRICS
}

/// `"max_order_notional: 970 > 500"` -> `"max_order_notional"`; no reason, or free
/// text (`"cancelled by trader"`), -> `"none"`.
fn reason_code(reason: Option<&str>) -> &str {
    let code = reason.and_then(|r| r.split_once(':')).map(|(code, _)| code);
    code.filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or("none")
}

impl Metrics {
    /// A report was stored in EXEC.
    pub fn stored(&self, report: &ExecutionReport) {
        if !report.fee.get().is_zero() {
            self.fees.add(report.fee.get().to_f64().unwrap_or(0.0));
        }
        if !is_final(report.status) {
            return;
        }
        let status = report.status.to_string();
        let reason = reason_code(report.reason.as_deref());
        self.orders.get(&[&status, reason]).inc();
        if let Some(received) = report.timings.received_ts {
            let elapsed = now_ns().saturating_sub(received);
            self.order_seconds
                .observe(std::time::Duration::from_nanos(elapsed));
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Text::default();
        out.counters(
            "exec_orders_total",
            "Orders by final status and reason code.",
            &["status", "reason"],
            &self.orders,
        );
        out.histogram(
            "exec_order_seconds",
            "Order received to its final report stored.",
            &self.order_seconds,
        );
        out.histogram(
            "exec_risk_check_seconds",
            "The risk check round trip.",
            &self.risk_check_seconds,
        );
        out.single(
            "exec_in_flight",
            "gauge",
            "Orders being handled.",
            self.in_flight.get(),
        );
        out.single(
            "exec_fees_total",
            "counter",
            "Fees of the fills stored.",
            self.fees.get(),
        );
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_label_is_the_code_prefix() {
        assert_eq!(reason_code(None), "none");
        assert_eq!(
            reason_code(Some("max_order_notional: 970 > 500")),
            "max_order_notional"
        );
        assert_eq!(
            reason_code(Some("risk_unavailable: no answer within 500 ms")),
            "risk_unavailable"
        );
        assert_eq!(reason_code(Some("cancelled by trader")), "none");
        assert_eq!(reason_code(Some("Venue says: no")), "none");
    }
}
