//! The engine's side of the execution algorithms (algo.rs): accepting a parent, publishing
//! its children to ORDERS when due, following their reports, cancelling, the kill switch
//! and the restore after a restart. The hooks in engine.rs call these.

use async_nats::jetstream::{self, AckKind};
use moonbus_common::{
    now_ns, subjects, CancelRequest, ClientOrderId, ExecutionReport, NonNegativeMoney,
    OrderRequest, OrderStatus, Timings,
};

use super::{Engine, Step};
use crate::algo::{Algo, Published};
use crate::intake;
use crate::jobs::{settle, Done, Recording};
use crate::ledger;
use crate::reports;
use crate::venue::Venue as _;

/// How long a cancel of an algo waits when a report of the algo is being stored.
const CANCEL_WAITS_FOR_WRITE: std::time::Duration = std::time::Duration::from_millis(100);

/// A recording of reports with no ORDERS message behind them (a parent's progress, the
/// cancel of a child): stored in a job, nothing to ack.
fn bare(key: String, reports: Vec<ExecutionReport>) -> Recording {
    Recording {
        message: None,
        lane: None,
        key,
        reports,
        rest: None,
        undo: None,
        holds: None,
        stored: 0,
        dead_letter: None,
        live: false,
    }
}

/// Publish a child to ORDERS with Nats-Msg-Id = its id, waiting for the stream's ack (a
/// duplicate ack counts when the stream has it: jobs.rs `publish_order`).
async fn publish_child(client: async_nats::Client, child: OrderRequest) -> Result<(), String> {
    let js = jetstream::new(client);
    let subject = subjects::orders_submit(&child.agent, &child.symbol);
    crate::jobs::publish_order(&js, subject, &child)
        .await
        .map_err(|e| format!("ORDERS did not store {}: {e:#}", child.client_order_id))
}

impl Engine {
    /// `[execution] algo_quantity_decimals`: the decimals children are split at.
    pub fn set_algo_quantity_decimals(&mut self, decimals: u32) {
        self.algos.decimals = Some(decimals);
    }

    /// A parent order (with `algo`), routed and valid: its ACCEPTED report (or a REJECTED
    /// one if its plan cannot work) is stored, then the message acked; the algo starts once
    /// the ACCEPTED is stored (`after_recorded_algos`). No risk check: the parent goes
    /// nowhere; each child gets its own.
    pub(super) fn begin_algo(
        &mut self,
        lane: &str,
        message: jetstream::Message,
        order: OrderRequest,
        sequence: u64,
        timings: Timings,
    ) -> Step {
        let mut recording =
            Recording::for_message(lane, message, order.client_order_id.to_string());
        recording.holds = Some(order.client_order_id.clone());
        let order_id = format!("{}-{sequence}", order.venue);
        let start = timings.received_ts.unwrap_or_else(now_ns);
        let decimals = self.algos.decimals();
        match Algo::new(
            order.clone(),
            order_id.clone(),
            timings.clone(),
            start,
            decimals,
        ) {
            Ok(algo) => {
                tracing::info!(client_order_id = %order.client_order_id, algo = ?order.algo, "algo order accepted");
                recording.reports.push(algo.report());
                self.algos.add_pending(algo);
            }
            Err(reason) => {
                recording
                    .reports
                    .push(reports::rejected(&order, Some(&order_id), reason, timings))
            }
        }
        self.spawn_record(recording)
    }

    /// A parent's open report after a restart: the algo resumes from its children's
    /// reports (or, if the parent cannot be found, it ends FAILED).
    pub(super) async fn restore_algo(&mut self, report: ExecutionReport) -> anyhow::Result<()> {
        let Some(id) = report.client_order_id.clone() else {
            return Ok(());
        };
        let why = match self.find_order(&report).await? {
            Ok(routed) => {
                let start = report.timings.received_ts.unwrap_or(report.ts);
                let decimals = self.algos.decimals();
                match Algo::new(
                    routed.order,
                    routed.order_id,
                    report.timings.clone(),
                    start,
                    decimals,
                ) {
                    Ok(algo) => {
                        let children = self.ledger.children_of(&id);
                        tracing::info!(client_order_id = %id, children = children.len(), "algo order restored; its schedule resumes");
                        self.algos.restore(algo, &report, &children);
                        return Ok(());
                    }
                    Err(why) => why,
                }
            }
            Err(why) => why,
        };
        let failed = ExecutionReport {
            status: OrderStatus::Failed,
            reason: Some(format!("restore_failed: {why}")),
            last_fill_price: None,
            last_fill_quantity: None,
            fee: NonNegativeMoney::ZERO,
            ts: now_ns(),
            ..report
        };
        self.record_now(&failed, id.as_str()).await
    }

    /// Reports just written (`stored` of them): parents start or note their report, the
    /// children's reports move their parent on; then whatever is due now happens.
    pub(super) async fn after_recorded_algos(
        &mut self,
        reports: &[ExecutionReport],
        stored: usize,
    ) {
        if self.algos.is_empty() {
            return;
        }
        for (n, report) in reports.iter().enumerate() {
            let stored = n < stored;
            let Some(id) = &report.client_order_id else {
                continue;
            };
            if report.algo.is_some() {
                if self.algos.is_pending(id) {
                    if stored {
                        self.algos.activate(id, report);
                    }
                } else if let Some(algo) = self.algos.get_mut(id) {
                    algo.recorded(report, stored);
                    self.algos.prune(id);
                }
            } else if stored {
                // A parent whose ACCEPTED was never stored and that ended otherwise (a
                // dead letter's REJECTED) never starts.
                if ledger::is_final(report.status) {
                    self.algos.drop_pending(id);
                }
                self.on_child_report(report);
            }
        }
        self.drive_algos().await;
    }

    pub(super) fn on_child_report(&mut self, report: &ExecutionReport) {
        let (Some(child), Some(parent)) = (&report.client_order_id, &report.parent_order_id) else {
            return;
        };
        let Some(index) = crate::algo::child_index(child.as_str()) else {
            return;
        };
        if let Some(algo) = self.algos.get_mut(parent) {
            algo.on_child(index, report);
        }
    }

    /// The time of the next child due, on the runtime's clock.
    pub(super) fn algo_wake(&self) -> Option<tokio::time::Instant> {
        if self.algos.halted {
            return None;
        }
        let due = self.algos.next_wake()?;
        let wait = due.saturating_sub(now_ns());
        Some(tokio::time::Instant::now() + std::time::Duration::from_nanos(wait))
    }

    /// Publish the children due, cancel the working children of stopping algos, and store
    /// each parent's report if its state changed.
    pub(super) async fn drive_algos(&mut self) {
        if self.algos.halted || self.algos.is_empty() {
            return;
        }
        for (parent, index, child) in self.algos.take_due(now_ns()) {
            tracing::info!(parent = %parent, child = %child.client_order_id, quantity = %child.quantity, "algo child sent");
            let client = self.bus.client.clone();
            self.spawn(async move {
                let id = child.client_order_id.clone();
                let result = publish_child(client, child).await;
                Done::AlgoPublished(Box::new(Published {
                    parent,
                    index,
                    child: id,
                    result,
                }))
            });
        }
        for id in self.algos.ids() {
            let Some(algo) = self.algos.get(&id) else {
                continue;
            };
            if algo.is_stopping() {
                let reason = format!("cancelled: its algo {id} is stopping");
                for child in algo.working() {
                    self.cancel_child(&child, &reason).await;
                }
            }
            if let Some(report) = self.algos.get_mut(&id).and_then(Algo::next_report) {
                if crate::ledger::is_final(report.status) {
                    tracing::info!(client_order_id = %id, status = %report.status, reason = report.reason.as_deref().unwrap_or(""), "algo order ended");
                }
                self.spawn_record(bare(id.to_string(), vec![report]));
            }
        }
    }

    /// Cancel a working child if it rests on a venue now (else it is refused or
    /// cancelled when it gets there: `admit_child`, the next drive).
    async fn cancel_child(&mut self, child: &ClientOrderId, reason: &str) {
        if self.in_flight.contains(child) || self.algos.cancel_sent.contains(child) {
            return;
        }
        let Some(resting) = self.venue.resting(child) else {
            return;
        };
        if self.venue.is_live(&resting.order.venue) {
            match self.venue.cancel_request(child) {
                Ok(at) => {
                    self.algos.cancel_sent.insert(child.clone());
                    self.spawn_live_cancel(child.clone(), at, None);
                }
                Err(why) => {
                    tracing::warn!(client_order_id = %child, %why, "algo child not cancelled yet")
                }
            }
            return;
        }
        if let Some(routed) = self.venue.cancel(child).await {
            let report = reports::routed(&routed, OrderStatus::Cancelled, Some(reason.to_string()));
            self.spawn_record(Recording::tick_fill(report, routed));
        }
    }

    /// A child's publish ended.
    pub(super) async fn on_algo_published(&mut self, published: Published) {
        let now = now_ns();
        let ok = published.result.is_ok();
        if let Err(why) = &published.result {
            tracing::warn!(parent = %published.parent, child = %published.child, %why, "algo child not published; tried again");
            self.bus
                .errors
                .report(
                    published.child.as_str(),
                    &format!("algo_publish_failed: {why} (parent {})", published.parent),
                    b"",
                )
                .await;
        }
        if let Some(algo) = self.algos.get_mut(&published.parent) {
            algo.published(published.index, ok, now);
        }
        self.drive_algos().await;
    }

    /// Why a cancel of a working parent is refused, if it is.
    pub(super) fn algo_cancel_refusal(&self, cancel: &CancelRequest) -> Option<String> {
        let algo = self.algos.get(&cancel.client_order_id)?;
        if algo.parent.symbol != cancel.symbol {
            return Some(format!(
                "symbol_mismatch: order {} is for {}",
                cancel.client_order_id, algo.parent.symbol
            ));
        }
        if algo.parent.agent != cancel.agent
            && !intake::CANCELS_ANY_ORDER.contains(&cancel.agent.as_str())
        {
            return Some(format!(
                "agent_mismatch: order {} belongs to agent {}",
                cancel.client_order_id, algo.parent.agent
            ));
        }
        None
    }

    /// Cancel a working parent: it stops (no new child, the working ones cancelled); the
    /// cancel message is acked once its "stopping" (or final) report is stored, so a
    /// restart finishes the stop.
    pub(super) async fn cancel_algo(
        &mut self,
        lane: &str,
        message: jetstream::Message,
        cancel: &CancelRequest,
    ) -> Step {
        let id = &cancel.client_order_id;
        let mut busy = false;
        let report = self.algos.get_mut(id).and_then(|algo| {
            algo.stop(
                OrderStatus::Cancelled,
                format!("cancelled by {}", cancel.agent),
            );
            busy = algo.is_recording();
            algo.next_report()
        });
        if busy {
            // A report of it is being stored: the stop is in memory only until its own report
            // is. Acked now, a crash before that would resume the algo after the restart; the
            // cancel comes back once that write is done.
            settle(&message, AckKind::Nak(Some(CANCEL_WAITS_FOR_WRITE))).await;
            return Step::Over;
        }
        let Some(report) = report else {
            // Already stopping, its stopping report stored: the next drive ends it.
            settle(&message, AckKind::Ack).await;
            self.drive_algos().await;
            return Step::Over;
        };
        tracing::info!(client_order_id = %id, agent = %cancel.agent, "algo order cancelled");
        let mut recording = Recording::for_message(lane, message, id.to_string());
        recording.reports.push(report);
        self.spawn_record(recording)
    }

    /// The kill switch stops every algo.
    pub(super) async fn stop_algos(&mut self, reason: &str) {
        for id in self.algos.ids() {
            if let Some(algo) = self.algos.get_mut(&id) {
                algo.stop(OrderStatus::Cancelled, reason.to_string());
            }
        }
        self.drive_algos().await;
    }
}
