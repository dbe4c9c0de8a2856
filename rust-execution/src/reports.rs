//! Execution reports: building them and recording them durably in the EXEC stream.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, message::PublishMessage};
use moonbus_common::{
    bus, now_ns, subjects, ClientOrderId, ExecutionReport, NonNegativeMoney, OrderRequest,
    OrderStatus, PositiveMoney, Side, Symbol, Timings,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::venue::{Fill, Placement, Routed};

/// A report about a valid order, with every field the order gives; status-specific
/// fields are filled in by the callers.
pub fn for_order(
    order: &OrderRequest,
    order_id: Option<&str>,
    status: OrderStatus,
    timings: Timings,
) -> ExecutionReport {
    ExecutionReport {
        client_order_id: Some(order.client_order_id.clone()),
        order_id: order_id.map(str::to_owned),
        venue_order_id: None,
        agent: Some(order.agent.clone()),
        symbol: Some(order.symbol.clone()),
        venue: Some(order.venue.clone()),
        side: Some(order.side),
        parent_order_id: None,
        child_kind: None,
        status,
        reason: None,
        quantity: Some(order.quantity.into()),
        filled_quantity: NonNegativeMoney::ZERO,
        last_fill_price: None,
        last_fill_quantity: None,
        avg_fill_price: None,
        fee: NonNegativeMoney::ZERO,
        slippage_bps: None,
        timings,
        ts: now_ns(),
        algo: None,
    }
}

pub fn rejected(
    order: &OrderRequest,
    order_id: Option<&str>,
    reason: String,
    timings: Timings,
) -> ExecutionReport {
    let mut report = for_order(order, order_id, OrderStatus::Rejected, timings);
    report.reason = Some(reason);
    report
}

/// A report about the order in a venue's hands (ACCEPTED, EXPIRED, CANCELLED, FAILED...).
pub fn routed(routed: &Routed, status: OrderStatus, reason: Option<String>) -> ExecutionReport {
    let mut report = for_order(
        &routed.order,
        Some(&routed.order_id),
        status,
        routed.timings.clone(),
    );
    report.reason = reason;
    report
}

/// The whole order filled at once.
pub fn filled(routed: &Routed, fill: &Fill) -> ExecutionReport {
    with_fill(routed, fill, OrderStatus::Filled)
}

/// A report of one fill (its fee is that fill's: an order's fees are the sum over its
/// reports): FILLED, or PARTIALLY_FILLED for the part of an order that executed.
pub fn with_fill(routed: &Routed, fill: &Fill, status: OrderStatus) -> ExecutionReport {
    let mut report = self::routed(routed, status, None);
    report.filled_quantity = fill.quantity.into();
    report.last_fill_price = Some(fill.price);
    report.last_fill_quantity = Some(fill.quantity.into());
    report.avg_fill_price = Some(fill.price);
    report.fee = fill.fee;
    report.slippage_bps = routed
        .order
        .decision_price
        .and_then(|decision| slippage_bps(routed.order.side, fill.price, decision));
    report.timings.filled_ts = Some(fill.ts);
    report
}

/// The rest of a partly filled order expired: what was filled stays (filled_quantity,
/// avg_fill_price), and there is no new fill (no last_fill_*, fee 0).
/// The reports of what the venue did with a new order (MARKET orders get no separate
/// ACCEPTED: one round trip), and the order to rest on the venue once they are stored.
pub fn placed(routed: Routed, placement: Placement) -> (Vec<ExecutionReport>, Option<Routed>) {
    match placement {
        Placement::Filled(fill) => (vec![filled(&routed, &fill)], None),
        Placement::PartiallyFilled { fill, reason } => {
            let part = with_fill(&routed, &fill, OrderStatus::PartiallyFilled);
            let rest = rest_expired(&part, reason);
            (vec![part, rest], None)
        }
        Placement::Resting => (
            vec![self::routed(&routed, OrderStatus::Accepted, None)],
            Some(routed),
        ),
        Placement::Expired { reason } => (
            vec![self::routed(&routed, OrderStatus::Expired, Some(reason))],
            None,
        ),
        Placement::Rejected { reason } => (
            vec![self::routed(&routed, OrderStatus::Rejected, Some(reason))],
            None,
        ),
    }
}

pub fn rest_expired(partial: &ExecutionReport, reason: String) -> ExecutionReport {
    ExecutionReport {
        status: OrderStatus::Expired,
        reason: Some(reason),
        last_fill_price: None,
        last_fill_quantity: None,
        fee: NonNegativeMoney::ZERO,
        ts: now_ns(),
        ..partial.clone()
    }
}

/// An order that could not be read: only the id and symbol, and only if they are
/// themselves valid (the report then goes to `exec.report._invalid` when no symbol).
pub fn invalid(
    client_order_id: Option<ClientOrderId>,
    symbol: Option<Symbol>,
    reason: String,
    received_ts: u64,
) -> ExecutionReport {
    ExecutionReport {
        client_order_id,
        order_id: None,
        venue_order_id: None,
        agent: None,
        symbol,
        venue: None,
        side: None,
        parent_order_id: None,
        child_kind: None,
        status: OrderStatus::Rejected,
        reason: Some(reason),
        quantity: None,
        filled_quantity: NonNegativeMoney::ZERO,
        last_fill_price: None,
        last_fill_quantity: None,
        avg_fill_price: None,
        fee: NonNegativeMoney::ZERO,
        slippage_bps: None,
        timings: Timings {
            received_ts: Some(received_ts),
            ..Timings::default()
        },
        ts: now_ns(),
        algo: None,
    }
}

/// Fill price versus the agent's decision price in basis points, signed so that
/// positive = worse for us (paid more on a BUY, got less on a SELL).
pub fn slippage_bps(side: Side, fill: PositiveMoney, decision: PositiveMoney) -> Option<f64> {
    let worse_by = match side {
        Side::Buy => *fill - *decision,
        Side::Sell => *decision - *fill,
    };
    worse_by
        .checked_mul(Decimal::from(10_000))?
        .checked_div(*decision)?
        .round_dp(4)
        .to_f64()
}

/// `<key>:<status>:<filled_quantity>`: the same outcome recorded twice (a retry after a
/// crash) is dropped by the EXEC stream's duplicate window. `key` is the client_order_id,
/// or `invalid-<ORDERS sequence>` for an order without a valid one. An algo parent's
/// progress reports (algo.rs) add their progress: children sent, filled, the working
/// one, and whether it is stopping.
pub fn message_id(key: &str, report: &ExecutionReport) -> String {
    let mut id = format!("{key}:{}:{}", report.status, report.filled_quantity);
    // The ACCEPTED that tells the venue's id (live/router.rs `progress`) is not the
    // written-ahead ACCEPTED again.
    if let (OrderStatus::Accepted, Some(venue_id)) = (report.status, &report.venue_order_id) {
        id = format!("{id}:{venue_id}");
    }
    match &report.algo {
        None => id,
        Some(progress) => format!(
            "{id}:{}:{}:{}:{}",
            progress.slices_sent,
            progress.slices_filled,
            progress
                .working_child_id
                .as_ref()
                .map_or("-", |c| c.as_str()),
            u8::from(report.reason.is_some())
        ),
    }
}

/// Writes reports to `exec.report.<symbol>` (or `exec.report._invalid`) and waits for
/// the stream's acknowledgement: a report is recorded only once the stream has it.
#[derive(Clone)]
pub struct Recorder {
    js: jetstream::Context,
}

impl Recorder {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    pub async fn record(&self, report: &ExecutionReport, key: &str) -> Result<()> {
        let subject = match &report.symbol {
            Some(symbol) => subjects::exec_report(symbol),
            None => subjects::exec_report(subjects::INVALID_TOKEN),
        };
        let id = message_id(key, report);
        let ack = self
            .js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(bus::encode(report))
                    .message_id(&id),
            )
            .await
            .with_context(|| format!("publishing report {id}"))?
            .await
            .with_context(|| format!("waiting for the EXEC stream to store report {id}"))?;
        if ack.duplicate {
            tracing::info!(%id, "report was already recorded");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(text: &str) -> PositiveMoney {
        text.parse().unwrap()
    }

    #[test]
    fn slippage_is_positive_when_worse_for_us() {
        // paid 100.10 for a BUY decided at 100: 10 bps worse
        assert_eq!(
            slippage_bps(Side::Buy, money("100.10"), money("100")),
            Some(10.0)
        );
        assert_eq!(
            slippage_bps(Side::Buy, money("99.95"), money("100")),
            Some(-5.0)
        );
        // got 99.90 for a SELL decided at 100: 10 bps worse
        assert_eq!(
            slippage_bps(Side::Sell, money("99.90"), money("100")),
            Some(10.0)
        );
        assert_eq!(
            slippage_bps(Side::Sell, money("100.02"), money("100")),
            Some(-2.0)
        );
        // rounded to 4 decimals of a basis point
        assert_eq!(
            slippage_bps(Side::Buy, money("97050.01"), money("97000.5")),
            Some(5.1041)
        );
    }

    #[test]
    fn message_id_names_the_outcome() {
        let report = invalid(None, None, "bad".into(), 1);
        assert_eq!(message_id("invalid-7", &report), "invalid-7:REJECTED:0");
        let mut filled = report.clone();
        filled.status = OrderStatus::Filled;
        filled.filled_quantity = "0.010".parse().unwrap();
        assert_eq!(message_id("trd-1", &filled), "trd-1:FILLED:0.010");
    }

    #[test]
    fn invalid_reports_are_valid_messages() {
        let report = invalid(None, None, "unknown field `x`".into(), 5);
        let wire = bus::encode(&report);
        let back: ExecutionReport = bus::decode(&wire).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.timings.received_ts, Some(5));
    }
}
