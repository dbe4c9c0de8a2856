//! What runs beside the engine (engine.rs) while it goes on with other symbols: the
//! risk round trip of an order, and storing an order's reports in EXEC followed by its
//! ack. Each job takes what it needs and hands everything back in a `Done`; no job
//! touches the engine's state.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use moonbus_common::bus::ErrorSink;
use moonbus_common::{ClientOrderId, ExecutionReport, OrderRequest, PositiveMoney, Timings};

use crate::deadletter::Advisory;
use crate::reports::Recorder;
use crate::risk::{RiskAnswer, RiskClient};
use crate::venue::Routed;

/// Publish an order execution makes itself (an algo's child, a protection's exit) to
/// ORDERS under `subject`, Nats-Msg-Id = its client_order_id, and wait for the stream's
/// ack. A duplicate ack counts only when the message ORDERS kept under that id is on
/// `subject` (an earlier try of ours: only execution and that subject's agent may publish
/// there). ORDERS de-duplicates on the message id whatever the subject, and any order
/// publisher may set any id: a thief that read the parent's id (exec.protection.>,
/// exec.report.>) could store a message under the exit's or child's id first, and the
/// stream would drop ours in silence (a stop-loss never sent, an iceberg stalled). Then it
/// goes again without a message id: the ledger still runs a client_order_id once.
pub async fn publish_order(
    js: &jetstream::Context,
    subject: String,
    order: &OrderRequest,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use async_nats::jetstream::message::PublishMessage;
    let payload = moonbus_common::bus::encode(order);
    let message = PublishMessage::build()
        .payload(payload.clone())
        .message_id(order.client_order_id.as_str());
    let ack = js.send_publish(subject.clone(), message).await?.await?;
    if !ack.duplicate {
        return Ok(());
    }
    let kept = js
        .get_stream_no_info(moonbus_common::subjects::ORDERS_STREAM)
        .await?
        .get_raw_message(ack.sequence)
        .await
        .with_context(|| format!("reading ORDERS message {}", ack.sequence))?;
    if kept.subject.as_str() == subject {
        return Ok(());
    }
    tracing::warn!(
        client_order_id = %order.client_order_id, foreign_subject = %kept.subject,
        sequence = ack.sequence, "ORDERS holds a foreign message under this order's id; sent without one"
    );
    js.send_publish(subject, PublishMessage::build().payload(payload))
        .await?
        .await?;
    Ok(())
}

/// How long a message whose outcome could not be stored (or whose id is busy) waits
/// before it comes back: `first`, doubling with each delivery, at most `max`. Each nak
/// uses a delivery of the consumer's max_deliver, so the delays decide how long a failure
/// may last before the server gives up on the order (deadletter.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after the `delivered`-th delivery (1 = the first) failed.
    pub fn delay(&self, delivered: i64) -> Duration {
        let doublings = delivered.clamp(1, 31) - 1;
        self.first.saturating_mul(1_u32 << doublings).min(self.max)
    }

    /// From the first delivery until the server gives up, when every one of
    /// `max_deliver` deliveries fails: the sum of the delays.
    pub fn until_dead_letter(&self, max_deliver: i64) -> Duration {
        (1..=max_deliver.max(1)).map(|n| self.delay(n)).sum()
    }

    /// The delay for this message, by how often it was delivered.
    pub fn for_message(&self, message: &jetstream::Message) -> Duration {
        self.delay(message.info().map(|info| info.delivered).unwrap_or(1))
    }
}

/// What a job hands back (boxed: they are large and go through a channel).
pub enum Done {
    Checked(Box<Checked>),
    Recorded(Box<Recording>),
    /// A live venue answered a new order (or did not).
    /// A live order's send: the venue's answer, and the report stored ahead of it.
    Submitted(Box<(Routed, crate::live::Submitted, Option<ExecutionReport>)>),
    /// A live order's state, asked for (live/router.rs `poll`).
    Queried(Box<crate::live::router::Queried>),
    /// A live venue's account, read for reconciliation.
    Account(
        Box<(
            moonbus_common::Venue,
            Result<crate::live::AccountState, crate::live::VenueError>,
        )>,
    ),
    /// A live venue answered a cancel (from a cancel message, or the kill switch).
    CancelAnswered(Box<CancelAnswer>),
    /// An algo's child was published to ORDERS, or not (algo.rs).
    AlgoPublished(Box<crate::algo::Published>),
}

/// A live venue's answer to a cancel.
pub struct CancelAnswer {
    pub id: ClientOrderId,
    pub result: Result<crate::live::VenueOrder, crate::live::VenueError>,
    /// The cancel message and its lane (none for the kill switch's cancels).
    pub message: Option<(String, jetstream::Message)>,
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
    /// The advisory this settles (a dead letter), tried again if not stored.
    pub dead_letter: Option<Advisory>,
    /// A live venue's update: the router is told whether it was stored.
    pub live: bool,
}

impl Recording {
    /// A live order's update (live/router.rs): its reports; the order keeps working, or ended.
    pub fn live(update: crate::live::router::LiveUpdate) -> Self {
        let id = update.routed.order.client_order_id.clone();
        Self {
            message: None,
            lane: None,
            key: id.to_string(),
            reports: update.reports,
            rest: update.working.then_some(update.routed),
            undo: None,
            holds: Some(id),
            stored: 0,
            dead_letter: None,
            live: true,
        }
    }

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
            dead_letter: None,
            live: false,
        }
    }

    /// The outcome of a dead-lettered order: no message to ack (the server gave up on it).
    pub fn dead_letter(key: String, report: ExecutionReport) -> Self {
        Self {
            message: None,
            lane: None,
            key,
            reports: vec![report],
            rest: None,
            undo: None,
            holds: None,
            stored: 0,
            dead_letter: None,
            live: false,
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
            dead_letter: None,
            live: false,
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
/// message if all are stored, else nak it so it comes back after the backoff (never acked
/// unstored); a failure is said on errors.execution with the stream's reason (e.g. a full
/// store, a report over the stream's max_msg_size).
pub async fn record(
    recorder: Recorder,
    errors: ErrorSink,
    backoff: Backoff,
    mut recording: Recording,
) -> Done {
    let mut failure = None;
    for report in &recording.reports {
        if let Err(e) = recorder.record(report, &recording.key).await {
            failure = Some(format!("{e:#}"));
            break;
        }
        recording.stored += 1;
    }
    let delay = recording.message.as_ref().map(|m| backoff.for_message(m));
    if let Some(error) = failure {
        let (subject, payload) = match &recording.message {
            Some(message) => (message.subject.to_string(), message.payload.to_vec()),
            None => (recording.key.clone(), Vec::new()),
        };
        let then = match (delay, &recording.dead_letter) {
            (Some(delay), _) => format!("the order comes back in {delay:?}"),
            (None, Some(_)) => "the dead letter is settled again later".into(),
            (None, None) => "the order keeps resting".into(),
        };
        tracing::error!(key = %recording.key, %error, "report not recorded; {then}");
        errors
            .report(
                &subject,
                &format!("report_not_stored: {error}; {then}"),
                &payload,
            )
            .await;
    }
    if let Some(message) = &recording.message {
        let kind = if recording.stored == recording.reports.len() {
            AckKind::Ack
        } else {
            AckKind::Nak(delay)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_max_and_spans_minutes_before_a_dead_letter() {
        let backoff = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=10).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // The defaults with max_deliver 10: about 5 minutes of failures before giving up.
        assert_eq!(backoff.until_dead_letter(10), Duration::from_secs(303));
        assert_eq!(backoff.delay(0), Duration::from_secs(1));
        assert_eq!(backoff.delay(i64::MAX), Duration::from_secs(60));
    }
}
