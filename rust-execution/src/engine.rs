//! The order path. One task owns all order state (ledger, venue, market), so orders are
//! handled strictly one after another, in stream order, without locks.
//!
//! For every ORDERS message: decide the outcome, record the report(s) in EXEC (the
//! stream's ack is awaited), then ack the order. A crash anywhere re-delivers the order,
//! and the ledger (rebuilt from EXEC) makes the second delivery a no-op once a final
//! report exists. Invariant: an order is ACCEPTED in the ledger exactly when it rests on
//! the venue (resting orders are put back from EXEC + ORDERS on start, see `restore`).

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, stream::LastRawMessageErrorKind, AckKind};
use async_nats::Subscriber;
use futures::{FutureExt, StreamExt};
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::{now_ns, subjects, ExecutionReport, OrderRequest, OrderStatus, Tick, Timings};

use crate::intake::{self, RawIds};
use crate::ledger::{self, is_final, Ledger};
use crate::reports::{self, Recorder};
use crate::risk::{RiskAnswer, RiskClient};
use crate::venue::{Market, Placement, Routed, Venue};

/// When recording an outcome fails (EXEC unavailable), the order comes back after this.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// At most this many buffered ticks are applied before a fill (the rest wait their turn).
const MAX_CATCH_UP_TICKS: usize = 10_000;

pub struct Engine<V: Venue> {
    pub venue: V,
    pub market: Market,
    pub ledger: Ledger,
    pub risk: RiskClient,
    pub recorder: Recorder,
    pub errors: ErrorSink,
    /// To find resting orders again after a restart.
    pub orders_stream: jetstream::stream::Stream,
    /// `md.tick.>`
    pub ticks: Subscriber,
}

impl<V: Venue> Engine<V> {
    /// Put the orders that were resting before a restart back on the venue. Their
    /// ACCEPTED report names the ORDERS message (order_id `<venue>-<sequence>`) that holds
    /// the limit price and time in force, which ExecutionReport does not carry. An order
    /// that cannot be found any more gets a FAILED report: it no longer works anywhere.
    pub async fn restore(&mut self, accepted: Vec<ExecutionReport>) -> Result<()> {
        for report in accepted {
            match self.find_order(&report).await? {
                Ok(routed) => {
                    tracing::info!(client_order_id = %routed.order.client_order_id, "resting order restored");
                    self.venue.restore(routed);
                }
                Err(why) => {
                    let key = report
                        .client_order_id
                        .as_ref()
                        .map(|id| id.to_string())
                        .unwrap_or_default();
                    let failed = ExecutionReport {
                        status: OrderStatus::Failed,
                        reason: Some(format!("restore_failed: {why}")),
                        ts: now_ns(),
                        ..report
                    };
                    self.record(&failed, &key)
                        .await
                        .context("recording a FAILED restore")?;
                }
            }
        }
        Ok(())
    }

    /// The order behind an ACCEPTED report; the outer error is a transient failure.
    async fn find_order(&self, accepted: &ExecutionReport) -> Result<Result<Routed, String>> {
        let Some(order_id) = accepted.order_id.clone() else {
            return Ok(Err("the ACCEPTED report has no order_id".into()));
        };
        let Some(sequence) = ledger::orders_sequence(&order_id) else {
            return Ok(Err(format!("order_id {order_id} names no ORDERS sequence")));
        };
        let message = match self.orders_stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Err(format!("ORDERS message {sequence} no longer exists")))
            }
            Err(e) => return Err(anyhow!("reading ORDERS message {sequence}: {e}")),
        };
        let order = match intake::decode_order(&message.payload) {
            Ok(order) => order,
            Err(e) => return Ok(Err(format!("ORDERS message {sequence}: {e}"))),
        };
        if accepted.client_order_id.as_ref() != Some(&order.client_order_id) {
            return Ok(Err(format!(
                "ORDERS message {sequence} is order {}",
                order.client_order_id
            )));
        }
        Ok(Ok(Routed {
            order,
            order_id,
            timings: accepted.timings.clone(),
        }))
    }

    /// Handle ticks and orders until `shutdown`; the order in hand is finished and acked.
    /// Returns the tick subscription so the caller can wait for the drain to close it.
    pub async fn run(
        mut self,
        mut orders: pull::Stream,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Subscriber> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(message) = self.ticks.next() => self.on_tick_message(message).await,
                next = orders.next() => match next {
                    Some(Ok(message)) => self.on_order_message(message).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "ORDERS consumer"),
                    None => return Err(anyhow!("the ORDERS consumer stream ended")),
                },
            }
        }
        // An order delivered but not started goes straight back, not after ack_wait.
        if let Some(Some(Ok(message))) = orders.next().now_or_never() {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(error = %e, "could not hand back an unstarted order");
            }
        }
        Ok(self.ticks)
    }

    async fn on_order_message(&mut self, message: jetstream::Message) {
        let subject = message.subject.as_str();
        let submit_prefix = subjects::ORDERS_SUBMIT_ALL.trim_end_matches('>');
        let cancel_prefix = subjects::ORDERS_CANCEL_ALL.trim_end_matches('>');
        let outcome = if let Some(symbol) = subject.strip_prefix(submit_prefix) {
            self.on_submit(&message, symbol).await
        } else if let Some(symbol) = subject.strip_prefix(cancel_prefix) {
            self.on_cancel(&message, symbol).await
        } else {
            self.errors
                .report(subject, "not an order subject", &message.payload)
                .await;
            Ok(())
        };
        let settled = match outcome {
            Ok(()) => message.ack().await,
            Err(e) => {
                tracing::error!(%subject, error = format!("{e:#}"), "outcome not recorded; the order will be re-delivered");
                message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await
            }
        };
        if let Err(e) = settled {
            // Harmless: the re-delivered order finds its outcome in the ledger.
            tracing::warn!(%subject, error = %e, "could not ack an order");
        }
    }

    async fn on_submit(
        &mut self,
        message: &jetstream::Message,
        subject_symbol: &str,
    ) -> Result<()> {
        let received_ts = now_ns();
        let sequence = message
            .info()
            .map_err(|e| anyhow!("not a JetStream message: {e}"))?
            .stream_sequence;
        let payload = &message.payload;
        let raw = RawIds::peek(payload);
        if let Some(id) = &raw.client_order_id {
            if let Some(status) = self.ledger.status(id) {
                // Seen before (re-delivery or resubmission): the first outcome stands. An
                // ACCEPTED order is resting and carries on there.
                tracing::info!(client_order_id = %id, %status, "duplicate order ignored");
                return Ok(());
            }
        }
        let order = match intake::decode_order(payload) {
            Ok(order) => order,
            Err(reason) => {
                let key = match &raw.client_order_id {
                    Some(id) => id.to_string(),
                    None => format!("invalid-{sequence}"),
                };
                let report = reports::invalid(raw.client_order_id, raw.symbol, reason, received_ts);
                return self.record(&report, &key).await;
            }
        };
        let key = order.client_order_id.to_string();
        let report = self
            .execute(order, subject_symbol, sequence, received_ts)
            .await;
        let recorded = self.record(&report, &key).await;
        if recorded.is_err() && report.status == OrderStatus::Accepted {
            // Not resting unless recorded; the re-delivery places it again.
            if let Some(id) = &report.client_order_id {
                self.venue.cancel(id).await;
            }
        }
        recorded
    }

    /// Route check, risk check, venue: the one report that says what became of a
    /// readable order (MARKET orders get no separate ACCEPTED: one round trip).
    async fn execute(
        &mut self,
        order: OrderRequest,
        subject_symbol: &str,
        sequence: u64,
        received_ts: u64,
    ) -> ExecutionReport {
        let mut timings = Timings {
            origin_ts: Some(order.origin_ts),
            received_ts: Some(received_ts),
            ..Timings::default()
        };
        if let Err(reason) = intake::check_route(&order, subject_symbol, &self.venue) {
            return reports::rejected(&order, None, reason, timings);
        }
        let order_id = format!("{}-{sequence}", order.venue);
        let ref_price = self.market.price(&order.symbol);
        let refusal = match self.risk.check(&order, ref_price).await {
            RiskAnswer::Approved { ts } => {
                timings.risk_checked_ts = Some(ts);
                None
            }
            RiskAnswer::Refused { reason, ts } => {
                timings.risk_checked_ts = Some(ts);
                Some(reason)
            }
            RiskAnswer::Unavailable { reason } => Some(reason),
        };
        if let Some(reason) = refusal {
            return reports::rejected(&order, Some(&order_id), reason, timings);
        }
        // Ticks that came in during the risk round trip: fill against the freshest market.
        self.catch_up_ticks().await;
        let routed = Routed {
            order,
            order_id,
            timings,
        };
        match self.venue.place(&routed, &self.market).await {
            Placement::Filled(fill) => reports::filled(&routed, &fill),
            Placement::Resting => reports::routed(&routed, OrderStatus::Accepted, None),
            Placement::Expired { reason } => {
                reports::routed(&routed, OrderStatus::Expired, Some(reason))
            }
            Placement::Rejected { reason } => {
                reports::routed(&routed, OrderStatus::Rejected, Some(reason))
            }
        }
    }

    async fn on_cancel(
        &mut self,
        message: &jetstream::Message,
        subject_symbol: &str,
    ) -> Result<()> {
        let subject = message.subject.as_str();
        let payload = &message.payload;
        let refusal = match intake::decode_cancel(payload) {
            Err(reason) => Some(reason),
            Ok(cancel) => 'check: {
                let id = &cancel.client_order_id;
                if cancel.symbol != subject_symbol {
                    break 'check Some(format!(
                        "symbol_mismatch: subject token {subject_symbol:?} but cancel symbol {}",
                        cancel.symbol
                    ));
                }
                match self.ledger.status(id) {
                    None => break 'check Some(format!("unknown_order: no order {id}")),
                    Some(status) if is_final(status) => {
                        break 'check Some(format!("already_final: order {id} is {status}"))
                    }
                    Some(_) => {}
                }
                let Some(resting) = self.venue.resting(id) else {
                    break 'check Some(format!(
                        "not_resting: order {id} is not resting on the venue"
                    ));
                };
                if resting.order.symbol != cancel.symbol {
                    break 'check Some(format!(
                        "symbol_mismatch: order {id} is for {}",
                        resting.order.symbol
                    ));
                }
                if resting.order.agent != cancel.agent {
                    break 'check Some(format!(
                        "agent_mismatch: order {id} belongs to agent {}",
                        resting.order.agent
                    ));
                }
                let Some(routed) = self.venue.cancel(id).await else {
                    break 'check Some(format!(
                        "not_resting: order {id} is not resting on the venue"
                    ));
                };
                let report = reports::routed(
                    &routed,
                    OrderStatus::Cancelled,
                    Some(format!("cancelled by {}", cancel.agent)),
                );
                if let Err(e) = self.record(&report, id.as_str()).await {
                    self.venue.restore(routed);
                    return Err(e);
                }
                None
            }
        };
        if let Some(reason) = refusal {
            self.errors.report(subject, &reason, payload).await;
        }
        Ok(())
    }

    async fn on_tick_message(&mut self, message: async_nats::Message) {
        let tick = match bus::decode::<Tick>(&message.payload) {
            Ok(tick) => tick,
            Err(reason) => {
                self.errors
                    .report(message.subject.as_str(), &reason, &message.payload)
                    .await;
                return;
            }
        };
        if self.market.is_stale(&tick) {
            return;
        }
        let fills = self.venue.on_market(&tick);
        self.market.update(tick);
        for (routed, fill) in fills {
            let report = reports::filled(&routed, &fill);
            if let Err(e) = self
                .record(&report, routed.order.client_order_id.as_str())
                .await
            {
                tracing::error!(client_order_id = %routed.order.client_order_id, error = format!("{e:#}"),
                    "fill not recorded; the order keeps resting");
                self.venue.restore(routed);
            }
        }
    }

    async fn catch_up_ticks(&mut self) {
        for _ in 0..MAX_CATCH_UP_TICKS {
            match self.ticks.next().now_or_never() {
                Some(Some(message)) => self.on_tick_message(message).await,
                _ => break,
            }
        }
    }

    async fn record(&mut self, report: &ExecutionReport, key: &str) -> Result<()> {
        self.recorder.record(report, key).await?;
        self.ledger.record(report);
        tracing::info!(
            client_order_id = report.client_order_id.as_ref().map(|id| id.as_str()).unwrap_or(key),
            status = %report.status,
            reason = report.reason.as_deref().unwrap_or(""),
            "order report recorded"
        );
        Ok(())
    }
}
