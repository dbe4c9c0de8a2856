//! What runs beside the engine (engine.rs) while it goes on with other symbols: the
//! risk round trip of an order, and storing an order's reports in EXEC followed by its
//! ack. Each job takes what it needs and hands everything back in a `Done`; no job
//! touches the engine's state.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use moonbus_common::{ClientOrderId, ExecutionReport, OrderRequest, PositiveMoney, Timings};

use crate::reports::Recorder;
use crate::risk::{RiskAnswer, RiskClient};
use crate::venue::Routed;

/// A message whose outcome could not be stored, or whose id is busy, comes back after this.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What a job hands back (boxed: they are large and go through a channel).
pub enum Done {
    Checked(Box<Checked>),
    Recorded(Box<Recording>),
}

/// An order through its risk check (and the venue latency after an approval).
pub struct Checked {
    pub message: jetstream::Message,
    pub lane: String,
    pub order: OrderRequest,
    pub order_id: String,
    pub timings: Timings,
    /// None = approved.
    pub refusal: Option<String>,
}

/// Reports to store in EXEC, in order, and what to do once they are (or are not).
pub struct Recording {
    /// The ORDERS message to ack once every report is stored (none for a tick fill).
    pub message: Option<jetstream::Message>,
    pub lane: Option<String>,
    /// The client_order_id, or `invalid-<sequence>` (reports::message_id).
    pub key: String,
    pub reports: Vec<ExecutionReport>,
    /// Rests on the venue once all reports are stored (an ACCEPTED order).
    pub rest: Option<Routed>,
    /// Goes back on the venue if they are not (a cancelled or a tick-filled order).
    pub undo: Option<Routed>,
    /// The id kept in the engine's `in_flight` meanwhile.
    pub holds: Option<ClientOrderId>,
    /// How many reports were stored: all of them unless the EXEC stream failed.
    pub stored: usize,
}

impl Recording {
    pub fn for_message(lane: &str, message: jetstream::Message, key: String) -> Self {
        Self {
            message: Some(message),
            lane: Some(lane.to_string()),
            key,
            reports: Vec::new(),
            rest: None,
            undo: None,
            holds: None,
            stored: 0,
        }
    }

    /// A resting order filled by a tick: no message; back on the venue if not stored.
    pub fn tick_fill(report: ExecutionReport, routed: Routed) -> Self {
        Self {
            message: None,
            lane: None,
            key: routed.order.client_order_id.to_string(),
            reports: vec![report],
            rest: None,
            undo: Some(routed),
            holds: None,
            stored: 0,
        }
    }
}

/// Ask risk about `checked.order`; after an approval wait the venue latency.
pub async fn check(
    risk: RiskClient,
    latency: Duration,
    mut checked: Checked,
    ref_price: Option<PositiveMoney>,
) -> Done {
    checked.refusal = match risk.check(&checked.order, ref_price).await {
        RiskAnswer::Approved { ts } => {
            checked.timings.risk_checked_ts = Some(ts);
            None
        }
        RiskAnswer::Refused { reason, ts } => {
            checked.timings.risk_checked_ts = Some(ts);
            Some(reason)
        }
        RiskAnswer::Unavailable { reason } => Some(reason),
    };
    if checked.refusal.is_none() && !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    Done::Checked(Box::new(checked))
}

/// Store the reports one after the other (stop at the first failure), then ack the
/// message if all are stored, else nak it so it comes back.
pub async fn record(recorder: Recorder, mut recording: Recording) -> Done {
    for report in &recording.reports {
        if let Err(e) = recorder.record(report, &recording.key).await {
            tracing::error!(key = %recording.key, error = format!("{e:#}"),
                "report not recorded; the order will be re-delivered");
            break;
        }
        recording.stored += 1;
    }
    if let Some(message) = &recording.message {
        let kind = if recording.stored == recording.reports.len() {
            AckKind::Ack
        } else {
            AckKind::Nak(Some(RETRY_DELAY))
        };
        settle(message, kind).await;
    }
    Done::Recorded(Box::new(recording))
}

/// Ack or nak; a failure is harmless (the re-delivered order finds its outcome).
pub async fn settle(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(subject = %message.subject, error = %e, "could not settle an order message");
    }
}
