//! The order path, pipelined.
//!
//! One task (this engine) owns all order state: the ledger, the venue (resting orders)
//! and the market. What waits on the network runs in spawned jobs that report back on a
//! channel: the risk check (plus the simulated venue latency), and recording an order's
//! reports in EXEC followed by its ack. So orders of different symbols are in flight at
//! the same time (one risk round trip and one EXEC write each), while:
//!
//! - per symbol, stream order: a symbol's orders and cancels go through its lane
//!   (lanes.rs) one at a time; the next starts only when the previous one's reports are
//!   stored and its message acked. A cancel never overtakes its order, and a symbol's
//!   orders reach risk and the venue in the order they were sent;
//! - ack after the report: a message is acked only once all its reports are stored in
//!   EXEC. A crash re-delivers it; a failed write naks it (back after a growing delay,
//!   jobs.rs Backoff) and says why on errors.execution;
//! - nothing doubled: a client_order_id with a final report is not executed again for
//!   two weeks after it (ledger.rs, rebuilt from EXEC on start), and one in flight right now (the same id
//!   sent on two symbols) is not started twice: the second is nak'ed, comes back later
//!   and finds the first one's outcome;
//! - an order rests on the venue only once its ACCEPTED report is stored, so a tick never
//!   fills an order that was not accepted; a cancel or a tick fill takes the order off
//!   the venue first and puts it back if its report cannot be stored;
//! - every state change happens here, in the order events arrive, ticks and books first
//!   (biased select): a fill uses the freshest market.
//!
//! - back off: while report writes fail, no new order is taken for the backoff of the
//!   failures in a row (the failing ones come back after theirs);
//! - dead letters: an order the server stopped delivering (max_deliver) and that has no
//!   outcome is REJECTED `dead_letter` once (deadletter.rs);
//!
//! The ORDERS consumer's max_ack_pending (`max_in_flight`) bounds what is in hand: in
//! flight plus waiting in lanes.

mod algos;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, stream::LastRawMessageErrorKind, AckKind};
use async_nats::Subscriber;
use futures::{FutureExt, StreamExt};
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::{
    now_ns, subjects, Book, ClientOrderId, ExecutionReport, KillSwitchState, OrderRequest,
    OrderStatus, Tick, Timings,
};
use tokio::sync::mpsc;

use crate::algo::ChildRefusal;
use crate::deadletter::{self, Advisory};
use crate::intake::{self, RawIds};
use crate::jobs::{self, settle, Backoff, CancelAnswer, Checked, Done, Recording};
use crate::lanes::Lanes;
use crate::ledger::{self, is_final, Ledger};
use crate::live::router::{self, Live, LiveEvent, LiveUpdate, Router};
use crate::metrics;
use crate::reports::{self, Recorder};
use crate::risk::RiskClient;
use crate::venue::{Market, Routed, Venue};

/// On shutdown, orders in flight get this long to finish (else they are re-delivered).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine's connections to the rest of the system.
pub struct Bus {
    pub risk: RiskClient,
    pub recorder: Recorder,
    pub errors: ErrorSink,
    /// To find resting orders again after a restart.
    pub orders_stream: jetstream::stream::Stream,
    /// `md.tick.>`
    pub ticks: Subscriber,
    /// `md.book.>`
    pub books: Subscriber,
    /// The ledger's snapshots (snapshot.rs), taken while no job is in flight.
    pub snapshots: crate::snapshot::Snapshotter,
    /// The server's MAX_DELIVERIES advisories of the ORDERS consumer (deadletter.rs).
    pub dead_letters: Subscriber,
    /// Delays of the naks of orders whose outcome could not be stored.
    pub backoff: Backoff,
    /// `risk.events`: an engaged kill switch also cancels every order working at a live venue.
    pub kill_switch: Subscriber,
    /// How often live orders without a venue answer (or with the venue's stream down) are
    /// queried, and failed updates tried again.
    pub live_poll: Duration,
    /// Live venues' accounts are read and published (`exec.venue.<venue>`) this often.
    pub reconcile_interval: Duration,
    /// Core NATS, for the live venues' status.
    pub client: async_nats::Client,
    /// Stop-loss, take-profit and trailing stops (protect.rs).
    pub protect: crate::protect::Protector,
}

pub struct Engine {
    /// The paper venue and the live ones (live/router.rs).
    venue: Router,
    /// What live venues say about our orders (none without live venues).
    live_events: Option<mpsc::UnboundedReceiver<LiveEvent>>,
    market: Market,
    ledger: Ledger,
    bus: Bus,
    /// Simulated venue latency, waited after the risk approval, before the fill.
    latency: Duration,
    lanes: Lanes<Incoming>,
    /// Orders being handled right now, by id.
    in_flight: HashSet<ClientOrderId>,
    /// Jobs spawned and not reported back yet.
    jobs: usize,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Dead letters not settled yet (ORDERS or EXEC could not be read or written), by
    /// ORDERS sequence: tried again every `backoff.max`.
    dead_letters: BTreeMap<u64, Advisory>,
    /// Report writes failed in a row (EXEC full or unwritable), and until when no new
    /// order is taken because of them: the backoff of the failures, so an outage is
    /// not met with every order in the stream.
    write_failures: i64,
    intake_paused_until: Option<tokio::time::Instant>,
    /// Outcomes decided but not stored (EXEC refused them), by order id: when the order
    /// comes back they are stored as they were, never decided again. Subscribers of
    /// exec.report.> may have seen them already, and a second decision would show them a
    /// second, different fill (and at a real venue, place the order twice).
    unsettled: HashMap<String, (Vec<ExecutionReport>, Option<Routed>)>,
    /// Execution algorithms' parents and their children (algo.rs, engine/algos.rs).
    algos: crate::algo::Algos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Submit,
    Cancel,
}

/// An ORDERS message waiting for, or in, its lane.
struct Incoming {
    kind: Kind,
    message: jetstream::Message,
}

/// Whether handling a message went on in a job, or is over.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Started,
    Over,
}

impl Engine {
    pub fn new(
        mut venue: Router,
        market: Market,
        ledger: Ledger,
        bus: Bus,
        latency: Duration,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            live_events: venue.take_events(),
            venue,
            market,
            ledger,
            bus,
            latency,
            lanes: Lanes::default(),
            in_flight: HashSet::new(),
            jobs: 0,
            done_tx,
            done_rx,
            dead_letters: BTreeMap::new(),
            write_failures: 0,
            intake_paused_until: None,
            unsettled: HashMap::new(),
            algos: crate::algo::Algos::default(),
        }
    }

    /// Finish what a previous run left open: resting orders go back on the venue (their
    /// ACCEPTED report names the ORDERS message, order_id `<venue>-<sequence>`, that holds
    /// the limit price and time in force); an order cut off between its PARTIALLY_FILLED
    /// and EXPIRED reports gets the EXPIRED one. A resting order that cannot be found any
    /// more gets a FAILED report: it no longer works anywhere.
    pub async fn restore(&mut self) -> Result<()> {
        // Algo parents first, so their children's reports below name them (algos.rs).
        let (parents, open): (Vec<_>, Vec<_>) = self
            .ledger
            .open_reports()
            .into_iter()
            .partition(|report| report.algo.is_some());
        for report in parents {
            self.restore_algo(report).await?;
        }
        for report in open {
            let key = report
                .client_order_id
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            let live = report.venue.as_ref().is_some_and(|v| self.venue.is_live(v));
            if report.status == OrderStatus::PartiallyFilled && !live {
                let expired = reports::rest_expired(&report, interrupted_reason());
                self.record_now(&expired, &key).await?;
                continue;
            }
            match self.find_order(&report).await? {
                Ok(routed) if live => {
                    tracing::info!(client_order_id = %key, venue = %routed.order.venue, "live order restored; the venue is asked about it");
                    self.venue.restore_live(routed, &report);
                }
                Ok(routed) => {
                    tracing::info!(client_order_id = %key, "resting order restored");
                    self.venue.rest(routed);
                }
                Err(why) => {
                    // No new fill: the open report's fee is the order's total so far (ledger.rs).
                    let failed = ExecutionReport {
                        status: OrderStatus::Failed,
                        reason: Some(format!("restore_failed: {why}")),
                        last_fill_price: None,
                        last_fill_quantity: None,
                        fee: moonbus_common::NonNegativeMoney::ZERO,
                        ts: now_ns(),
                        ..report
                    };
                    self.record_now(&failed, &key)
                        .await
                        .context("recording a FAILED restore")?;
                }
            }
        }
        self.bus
            .protect
            .restore(&self.bus.client, &self.ledger)
            .await
            .context("restoring the protections")?;
        Ok(())
    }

    /// The order behind an ACCEPTED report (the snapshot's, else ORDERS'); the outer error
    /// is a transient failure.
    async fn find_order(&self, accepted: &ExecutionReport) -> Result<Result<Routed, String>> {
        let Some(order_id) = accepted.order_id.clone() else {
            return Ok(Err("the ACCEPTED report has no order_id".into()));
        };
        // Kept by the snapshot the ledger was rebuilt from: ORDERS may not have it any more.
        let restored = accepted
            .client_order_id
            .as_ref()
            .and_then(|id| self.ledger.restored_order(id));
        if let Some(order) = restored {
            return Ok(Ok(Routed {
                order: order.clone(),
                order_id,
                timings: accepted.timings.clone(),
            }));
        }
        let Some(sequence) = ledger::orders_sequence(&order_id) else {
            return Ok(Err(format!("order_id {order_id} names no ORDERS sequence")));
        };
        let message = match self.bus.orders_stream.get_raw_message(sequence).await {
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

    /// Handle market data, orders and job results until `shutdown`; then hand back the
    /// orders not started and let those in flight finish. Returns the market data
    /// subscriptions so the caller can wait for the drain to close them, and whether
    /// every job finished (else one may still write a report: keep the failover lease).
    pub async fn run(
        mut self,
        mut orders: pull::Stream,
        market_warmup: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<([Subscriber; 2], bool)> {
        tokio::pin!(shutdown);
        // Ticks first: no order is taken before the market had `market_warmup` to arrive.
        if !market_warmup.is_zero() {
            self.intake_paused_until = Some(tokio::time::Instant::now() + market_warmup);
        }
        let mut protect_timer = tokio::time::interval(Duration::from_millis(100));
        protect_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(self.bus.backoff.max);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut live_poll = tokio::time::interval(self.bus.live_poll);
        live_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_live = self.live_events.is_some() && !self.venue.views().is_empty();
        let mut reconcile = tokio::time::interval(self.bus.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Restored algos: what became due or final while execution was down.
        self.drive_algos().await;
        loop {
            let algo_wake = self.algo_wake();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(message) = self.bus.ticks.next() => self.on_tick_message(message).await,
                Some(message) = self.bus.books.next() => self.on_book_message(message).await,
                Some(done) = self.done_rx.recv() => self.on_done(done).await,
                Some(event) = next_live_event(&mut self.live_events), if has_live => {
                    let updates = self.venue.on_event(event);
                    self.record_live(updates);
                }
                Some(message) = self.bus.kill_switch.next() => self.on_kill_switch(message).await,
                _ = live_poll.tick(), if has_live => {
                    let (updates, queries) = self.venue.poll();
                    self.record_live(updates);
                    for query in queries {
                        self.spawn(async move { Done::Queried(Box::new(query.run().await)) });
                    }
                }
                _ = reconcile.tick(), if has_live => self.read_accounts(),
                _ = protect_timer.tick(), if self.bus.protect.is_busy() => {
                    self.bus.protect.on_timer(&self.ledger);
                    self.bus.protect.flush().await;
                }
                Some(message) = self.bus.dead_letters.next() => self.on_dead_letter_message(message).await,
                _ = retry.tick(), if !self.dead_letters.is_empty() => self.retry_dead_letters().await,
                () = sleep_until(algo_wake), if algo_wake.is_some() => self.drive_algos().await,
                () = sleep_until(self.intake_paused_until), if self.intake_paused_until.is_some() => {
                    self.intake_paused_until = None;
                }
                // Only with nothing in flight: every report in EXEC is then in the ledger.
                _ = self.bus.snapshots.timer.tick(), if self.jobs == 0 => {
                    let (venue, algos) = (&self.venue, &self.algos);
                    let kept = |id: &ClientOrderId| kept_order(venue, algos, id);
                    self.bus.snapshots.write(&self.ledger, kept).await;
                }
                next = orders.next(), if self.intake_paused_until.is_none() => match next {
                    Some(Ok(message)) => self.on_order_message(message).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "ORDERS consumer"),
                    None => return Err(anyhow!("the ORDERS consumer stream ended")),
                },
            }
        }
        // No algo sends a child any more; those in flight finish.
        self.algos.halted = true;
        // Not started: straight back to the stream, not after ack_wait.
        let mut unstarted: Vec<jetstream::Message> = self
            .lanes
            .take_waiting()
            .into_iter()
            .map(|incoming| incoming.message)
            .collect();
        while let Some(Some(Ok(message))) = orders.next().now_or_never() {
            unstarted.push(message);
        }
        for message in unstarted {
            settle(&message, AckKind::Nak(None)).await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.jobs > 0 {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(done)) => self.on_done(done).await,
                _ => {
                    tracing::warn!(
                        orders = self.lanes.held(),
                        "stopping with orders in flight; they will be re-delivered"
                    );
                    break;
                }
            }
        }
        let drained = self.jobs == 0;
        if drained {
            let (venue, algos) = (&self.venue, &self.algos);
            let kept = |id: &ClientOrderId| kept_order(venue, algos, id);
            self.bus.snapshots.finish(&self.ledger, kept).await;
        }
        Ok(([self.bus.ticks, self.bus.books], drained))
    }

    async fn on_order_message(&mut self, message: jetstream::Message) {
        let Some((kind, _, symbol)) = order_subject(&message.subject) else {
            self.bus
                .errors
                .report(&message.subject, "not an order subject", &message.payload)
                .await;
            settle(&message, AckKind::Ack).await;
            return;
        };
        let lane = symbol.to_string();
        if let Some(incoming) = self.lanes.admit(&lane, Incoming { kind, message }) {
            self.start(lane, incoming).await;
        }
    }

    /// Begin the lane's messages until one goes on in a job (or the lane is empty).
    async fn start(&mut self, lane: String, mut incoming: Incoming) {
        loop {
            let step = match incoming.kind {
                Kind::Submit => self.begin_submit(&lane, incoming.message).await,
                Kind::Cancel => self.begin_cancel(&lane, incoming.message).await,
            };
            if step == Step::Started {
                return;
            }
            match self.lanes.next(&lane) {
                Some(next) => incoming = next,
                None => return,
            }
        }
    }

    async fn begin_submit(&mut self, lane: &str, message: jetstream::Message) -> Step {
        let received_ts = now_ns();
        let sequence = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => {
                tracing::error!(error = %e, subject = %message.subject, "not a JetStream message; dropped");
                return Step::Over;
            }
        };
        let raw = RawIds::peek(&message.payload);
        if let Some(id) = &raw.client_order_id {
            if self.in_flight.contains(id) {
                tracing::info!(client_order_id = %id, "the same order id is in flight; this one comes back later");
                let delay = self.bus.backoff.for_message(&message);
                settle(&message, AckKind::Nak(Some(delay))).await;
                return Step::Over;
            }
            if let Some((reports, rest)) = self.unsettled.remove(id.as_str()) {
                // Decided before, not stored: store that outcome, decide nothing again.
                let mut recording = Recording::for_message(lane, message, id.to_string());
                recording.reports = reports;
                recording.rest = rest;
                recording.holds = Some(id.clone());
                return self.spawn_record(recording);
            }
            if let Some(open) = self.ledger.open_report(id) {
                let live = open.venue.as_ref().is_some_and(|v| self.venue.is_live(v));
                if open.status == OrderStatus::PartiallyFilled && !live && open.algo.is_none() {
                    // Cut off between its reports (a failed write): finish it.
                    let expired = reports::rest_expired(open, interrupted_reason());
                    let mut recording = Recording::for_message(lane, message, id.to_string());
                    recording.reports.push(expired);
                    recording.holds = Some(id.clone());
                    return self.spawn_record(recording);
                }
            }
            if let Some(status) = self.ledger.status(id) {
                // Seen before (re-delivery or resubmission): the first outcome stands. An
                // ACCEPTED order is resting and carries on there.
                tracing::info!(client_order_id = %id, %status, "duplicate order ignored");
                settle(&message, AckKind::Ack).await;
                return Step::Over;
            }
        }
        let key = match &raw.client_order_id {
            Some(id) => id.to_string(),
            None => format!("invalid-{sequence}"),
        };
        let order = match intake::decode_order(&message.payload) {
            Ok(order) => order,
            Err(reason) => {
                let mut recording = Recording::for_message(lane, message, key);
                recording.holds = raw.client_order_id.clone();
                let report = reports::invalid(raw.client_order_id, raw.symbol, reason, received_ts);
                recording.reports.push(report);
                return self.spawn_record(recording);
            }
        };
        let timings = Timings {
            origin_ts: Some(order.origin_ts),
            received_ts: Some(received_ts),
            ..Timings::default()
        };
        let agent = subject_agent(&message.subject);
        let route = intake::check_route(&order, agent, lane, &self.venue)
            .map_err(ChildRefusal::Rejected)
            .and_then(|()| self.algos.admit_child(&order));
        match route {
            Ok(()) => {}
            Err(ChildRefusal::Forged(reason)) => {
                // No report: it would take the id from the child the algo sends later.
                self.bus
                    .errors
                    .report(&message.subject, &reason, &message.payload)
                    .await;
                settle(&message, AckKind::Ack).await;
                return Step::Over;
            }
            Err(ChildRefusal::Rejected(reason)) => {
                let mut recording = Recording::for_message(lane, message, key);
                recording.holds = Some(order.client_order_id.clone());
                recording
                    .reports
                    .push(reports::rejected(&order, None, reason, timings));
                return self.spawn_record(recording);
            }
        }
        if order.algo.is_some() {
            return self.begin_algo(lane, message, order, sequence, timings);
        }
        self.spawn_check(lane, message, order, sequence, timings)
    }

    /// The risk round trip (then the venue latency) in a job.
    fn spawn_check(
        &mut self,
        lane: &str,
        message: jetstream::Message,
        order: OrderRequest,
        sequence: u64,
        timings: Timings,
    ) -> Step {
        self.in_flight.insert(order.client_order_id.clone());
        let ref_price = self.market.price(&order.symbol);
        let checked = Checked {
            message,
            lane: lane.to_string(),
            order_id: format!("{}-{sequence}", order.venue),
            order,
            timings,
            refusal: None,
        };
        self.spawn(jobs::check(
            self.bus.risk.clone(),
            self.latency,
            checked,
            ref_price,
        ))
    }

    /// Risk has spoken: route the order to the venue, then record what became of it
    /// (MARKET orders get no separate ACCEPTED: one round trip).
    async fn on_checked(&mut self, checked: Checked) {
        let Checked {
            message,
            lane,
            order,
            order_id,
            timings,
            refusal,
        } = checked;
        let key = order.client_order_id.to_string();
        let mut recording = Recording::for_message(&lane, message, key);
        recording.holds = Some(order.client_order_id.clone());
        if let Some(reason) = refusal {
            recording
                .reports
                .push(reports::rejected(&order, Some(&order_id), reason, timings));
            self.spawn_record(recording);
            return;
        }
        if let Err(reason) = self.bus.protect.register(&order).await {
            recording
                .reports
                .push(reports::rejected(&order, Some(&order_id), reason, timings));
            self.spawn_record(recording);
            return;
        }
        let routed = Routed {
            order,
            order_id,
            timings,
        };
        let placement = self.venue.place(&routed, &self.market).await;
        (recording.reports, recording.rest) = reports::placed(routed, placement);
        self.spawn_record(recording);
    }

    async fn begin_cancel(&mut self, lane: &str, message: jetstream::Message) -> Step {
        let refusal = match intake::decode_cancel(&message.payload) {
            Err(reason) => reason,
            Ok(cancel) => 'check: {
                let id = &cancel.client_order_id;
                let agent = subject_agent(&message.subject);
                if cancel.agent.as_str() != agent {
                    break 'check format!(
                        "agent_mismatch: subject agent {:?} but cancel agent {}",
                        agent.chars().take(64).collect::<String>(),
                        cancel.agent
                    );
                }
                if cancel.symbol != lane {
                    break 'check format!(
                        "symbol_mismatch: subject token {lane:?} but cancel symbol {}",
                        cancel.symbol
                    );
                }
                if self.algos.get(id).is_some() {
                    match self.algo_cancel_refusal(&cancel) {
                        Some(reason) => break 'check reason,
                        None => return self.cancel_algo(lane, message, &cancel).await,
                    }
                }
                let cancels_any = intake::CANCELS_ANY_ORDER.contains(&cancel.agent.as_str());
                let protection_cancelled =
                    match self
                        .bus
                        .protect
                        .cancel(id, &cancel.agent, &cancel.symbol, cancels_any)
                    {
                        Some(Err(reason)) => break 'check reason,
                        Some(Ok(())) => true,
                        // Cancelled by an earlier delivery whose write failed.
                        None => self.bus.protect.unsaved(id),
                    };
                if protection_cancelled {
                    self.bus.protect.flush().await;
                    if self.bus.protect.unsaved(id) {
                        // CANCELLED is not stored: a restart would read the protection armed
                        // and fire its exit. The cancel comes back.
                        let delay = self.bus.backoff.for_message(&message);
                        settle(&message, AckKind::Nak(Some(delay))).await;
                        return Step::Over;
                    }
                    if self.venue.resting(id).is_none() {
                        settle(&message, AckKind::Ack).await;
                        return Step::Over;
                    }
                }
                match self.ledger.status(id) {
                    None => break 'check format!("unknown_order: no order {id}"),
                    Some(status) if is_final(status) => {
                        break 'check format!("already_final: order {id} is {status}")
                    }
                    Some(_) => {}
                }
                let Some(resting) = self.venue.resting(id) else {
                    break 'check format!("not_resting: order {id} is not resting on the venue");
                };
                if resting.order.symbol != cancel.symbol {
                    break 'check format!(
                        "symbol_mismatch: order {id} is for {}",
                        resting.order.symbol
                    );
                }
                if resting.order.agent != cancel.agent
                    && !intake::CANCELS_ANY_ORDER.contains(&cancel.agent.as_str())
                {
                    break 'check format!(
                        "agent_mismatch: order {id} belongs to agent {}",
                        resting.order.agent
                    );
                }
                if self.venue.is_live(&resting.order.venue) {
                    match self.venue.cancel_request(id) {
                        Ok(at) => {
                            let message = Some((lane.to_string(), message));
                            return self.spawn_live_cancel(id.clone(), at, message);
                        }
                        Err(reason) => break 'check reason,
                    }
                }
                let Some(routed) = self.venue.cancel(id).await else {
                    break 'check format!("not_resting: order {id} is not resting on the venue");
                };
                let report = reports::routed(
                    &routed,
                    OrderStatus::Cancelled,
                    Some(format!("cancelled by {}", cancel.agent)),
                );
                let mut recording = Recording::for_message(lane, message, id.to_string());
                recording.reports.push(report);
                recording.undo = Some(routed);
                return self.spawn_record(recording);
            }
        };
        self.bus
            .errors
            .report(&message.subject, &refusal, &message.payload)
            .await;
        settle(&message, AckKind::Ack).await;
        Step::Over
    }

    /// Store the reports in a job, in order, then ack (or nak) the message.
    fn spawn_record(&mut self, mut recording: Recording) -> Step {
        self.algos.tag(&mut recording.reports);
        self.bus.protect.tag(&mut recording.reports);
        if let Some(id) = &recording.holds {
            self.in_flight.insert(id.clone());
        }
        self.spawn(jobs::record(
            self.bus.recorder.clone(),
            self.bus.errors.clone(),
            self.bus.backoff,
            recording,
        ))
    }

    /// Ask a live venue to cancel order `id` in a job beside the engine (its answer comes
    /// back as `Done::CancelAnswered`, with the cancel message to ack when there is one).
    fn spawn_live_cancel(
        &mut self,
        id: ClientOrderId,
        (exchange, routed): (Live, Routed),
        message: Option<(String, jetstream::Message)>,
    ) -> Step {
        self.spawn(async move {
            let result = exchange.cancel(&routed).await;
            Done::CancelAnswered(Box::new(CancelAnswer {
                id,
                result,
                message,
            }))
        })
    }

    fn spawn(&mut self, job: impl Future<Output = Done> + Send + 'static) -> Step {
        let done = self.done_tx.clone();
        self.jobs += 1;
        metrics::global().in_flight.set(self.in_flight.len() as u64);
        tokio::spawn(async move {
            // The engine only stops listening after every job reported back.
            let _ = done.send(job.await);
        });
        Step::Started
    }

    /// Record the reports of live orders' updates (their venue's state).
    fn record_live(&mut self, updates: Vec<LiveUpdate>) {
        for update in updates {
            self.spawn_record(Recording::live(update));
        }
        self.report_refusals();
    }

    /// A venue state the router refused (more filled than ordered, less than reported, a
    /// figure it cannot read) is an event on errors.execution, not only a log line: the
    /// order stays working as last reported, and reconciliation compares the positions.
    fn report_refusals(&mut self) {
        for (venue, id, why) in self.venue.take_refusals() {
            let errors = self.bus.errors.clone();
            tokio::spawn(async move {
                let reason = if id.is_empty() {
                    why
                } else {
                    format!("venue state of {id} not applied: {why}")
                };
                errors
                    .report(&subjects::exec_venue(&venue), &reason, b"")
                    .await;
            });
        }
    }

    /// The same, the first one acking `message` (the cancel that caused them) once
    /// stored; no update at all: the message is acked now.
    async fn record_live_with(
        &mut self,
        updates: Vec<LiveUpdate>,
        mut message: Option<(&str, jetstream::Message)>,
    ) {
        for update in updates {
            let mut recording = Recording::live(update);
            if let Some((lane, message)) = message.take() {
                recording.message = Some(message);
                recording.lane = Some(lane.to_string());
            }
            self.spawn_record(recording);
        }
        self.report_refusals();
        if let Some((lane, message)) = message {
            settle(&message, AckKind::Ack).await;
            if let Some(next) = self.lanes.next(lane) {
                Box::pin(self.start(lane.to_string(), next)).await;
            }
        }
    }

    /// Read every live venue's account beside the engine; each is published when read.
    fn read_accounts(&mut self) {
        for (venue, exchange) in self.venue.account_requests() {
            self.spawn(async move {
                let account = exchange.account().await;
                Done::Account(Box::new((venue, account)))
            });
        }
    }

    /// A venue's status for risk to reconcile (`exec.venue.<venue>`).
    async fn publish_live_status(&mut self, venue: &moonbus_common::Venue) {
        for view in self.venue.views().into_iter().filter(|v| &v.venue == venue) {
            match view.status() {
                Ok(status) => {
                    let subject = subjects::exec_venue(&view.venue);
                    if let Err(e) = self.bus.client.publish(subject, bus::encode(&status)).await {
                        tracing::warn!(venue = %view.venue, error = %e, "publishing the venue status");
                    }
                }
                Err(reason) => {
                    tracing::error!(venue = %view.venue, %reason, "venue status not publishable")
                }
            }
        }
    }

    /// An engaged kill switch cancels every order working at a live venue (risk already
    /// refuses new risk; these would still fill).
    async fn on_kill_switch(&mut self, message: async_nats::Message) {
        let state = match bus::decode::<KillSwitchState>(&message.payload) {
            Ok(state) => state,
            Err(reason) => {
                self.bus
                    .errors
                    .report(message.subject.as_str(), &reason, &message.payload)
                    .await;
                return;
            }
        };
        if !state.engaged {
            return;
        }
        self.stop_algos("kill switch engaged").await;
        self.bus.protect.kill_switch(&state.reason);
        self.bus.protect.flush().await;
        for id in self.venue.working_ids() {
            match self.venue.cancel_request(&id) {
                Ok(at) => {
                    self.spawn_live_cancel(id, at, None);
                }
                Err(reason) => {
                    tracing::error!(client_order_id = %id, %reason, "kill switch: a live order could not be cancelled");
                    self.bus
                        .errors
                        .report(
                            message.subject.as_str(),
                            &format!("kill switch cancel of {id}: {reason}"),
                            b"",
                        )
                        .await;
                }
            }
        }
    }

    async fn on_done(&mut self, done: Done) {
        self.jobs -= 1;
        match done {
            Done::Checked(checked) => self.on_checked(*checked).await,
            Done::Recorded(recording) => self.on_recorded(*recording).await,
            Done::Queried(queried) => {
                let updates = self.venue.on_queried(*queried);
                self.record_live(updates);
            }
            Done::Account(read) => {
                let (venue, account) = *read;
                self.venue.set_account(&venue, account);
                self.publish_live_status(&venue).await;
            }
            Done::CancelAnswered(answer) => {
                let CancelAnswer {
                    id,
                    result,
                    message,
                } = *answer;
                match self.venue.on_cancelled(&id, result) {
                    Ok(updates) => {
                        let message = message.as_ref().map(|(lane, m)| (lane.as_str(), m.clone()));
                        self.record_live_with(updates, message).await;
                    }
                    Err(reason) => {
                        tracing::warn!(client_order_id = %id, %reason, "cancel at the venue failed");
                        let subject = message
                            .as_ref()
                            .map(|(_, m)| m.subject.to_string())
                            .unwrap_or_else(|| subjects::RISK_EVENTS.to_string());
                        self.bus
                            .errors
                            .report(&subject, &format!("cancel of {id}: {reason}"), b"")
                            .await;
                        if let Some((lane, message)) = message {
                            settle(&message, AckKind::Ack).await;
                            if let Some(next) = self.lanes.next(&lane) {
                                Box::pin(self.start(lane, next)).await;
                            }
                        }
                    }
                }
            }
            Done::Submitted(submitted) => {
                let (routed, submitted, stored) = *submitted;
                let venue_id = stored.as_ref().and_then(|r| r.venue_order_id.clone());
                if let Some(report) = &stored {
                    self.remember(report, routed.order.client_order_id.as_str());
                }
                let updates = self.venue.on_submitted(&routed, submitted, venue_id);
                self.record_live(updates);
            }
            Done::AlgoPublished(published) => self.on_algo_published(*published).await,
        }
    }

    async fn on_recorded(&mut self, recording: Recording) {
        for report in &recording.reports[..recording.stored] {
            self.remember(report, &recording.key);
        }
        if recording.stored < recording.reports.len() {
            self.write_failures = self.write_failures.saturating_add(1);
            let pause = self.bus.backoff.delay(self.write_failures);
            tracing::warn!(
                ?pause,
                failures = self.write_failures,
                "report writes failing: no new order for a while"
            );
            self.intake_paused_until = Some(tokio::time::Instant::now() + pause);
        } else if !recording.reports.is_empty() {
            self.write_failures = 0;
        }
        if let Some(advisory) = &recording.dead_letter {
            if recording.stored < recording.reports.len() {
                self.dead_letters
                    .insert(advisory.stream_seq, advisory.clone());
            }
        }
        if recording.stored < recording.reports.len()
            && recording.message.is_some()
            && recording.undo.is_none()
            && recording
                .holds
                .as_ref()
                .is_some_and(|id| id.as_str() == recording.key)
        {
            let unstored = recording.reports[recording.stored..].to_vec();
            self.unsettled
                .insert(recording.key.clone(), (unstored, recording.rest.clone()));
        }
        if recording.stored == recording.reports.len() {
            if let Some(routed) = recording.rest {
                self.venue.rest(routed);
            }
        } else if let Some(routed) = recording.undo {
            tracing::warn!(client_order_id = %routed.order.client_order_id, "outcome not recorded; the order keeps resting");
            self.venue.rest(routed);
        }
        if let Some(id) = &recording.holds {
            self.in_flight.remove(id);
            metrics::global().in_flight.set(self.in_flight.len() as u64);
        }
        if recording.live {
            if let Some(id) = &recording.holds {
                let stored = recording.stored == recording.reports.len();
                self.venue.settled(id, stored);
            }
        }
        // A live order that started working, or whose update was stored, may have a
        // venue state waiting.
        let ready = self.venue.ready();
        self.record_live(ready);
        // Live orders whose ACCEPTED is stored: sent now, beside the engine.
        for (exchange, routed) in self.venue.take_sends() {
            let recorder = self.bus.recorder.clone();
            self.spawn(async move {
                Done::Submitted(Box::new(router::send(exchange, routed, recorder).await))
            });
        }
        Box::pin(self.after_recorded_algos(&recording.reports, recording.stored)).await;
        self.bus.protect.flush().await;
        if let Some(lane) = recording.lane {
            if let Some(next) = self.lanes.next(&lane) {
                self.start(lane, next).await;
            }
        }
    }

    async fn on_tick_message(&mut self, message: async_nats::Message) {
        let tick = match bus::decode::<Tick>(&message.payload) {
            Ok(tick) => tick,
            Err(reason) => {
                self.bus
                    .errors
                    .report(message.subject.as_str(), &reason, &message.payload)
                    .await;
                return;
            }
        };
        // The last tick received wins, whatever its ts says (venue.rs Market: clocks).
        let fills = self.venue.on_market(&tick);
        self.bus.protect.on_tick(&tick, &self.ledger);
        if let Err(reason) = self.market.update(tick) {
            let subject = message.subject.as_str();
            self.bus
                .errors
                .report(subject, &reason, &message.payload)
                .await;
        }
        for (routed, fill) in fills {
            let report = reports::filled(&routed, &fill);
            self.spawn_record(Recording::tick_fill(report, routed));
        }
        self.bus.protect.flush().await;
    }

    async fn on_book_message(&mut self, message: async_nats::Message) {
        match bus::decode::<Book>(&message.payload).and_then(|book| self.market.update_book(book)) {
            Ok(()) => {}
            Err(reason) => {
                self.bus
                    .errors
                    .report(message.subject.as_str(), &reason, &message.payload)
                    .await
            }
        }
    }

    /// The dead letters kept in DEADLETTER (those missed while execution was down): each
    /// is settled as if it came now; those already settled are left alone.
    pub async fn settle_dead_letters(&mut self, advisories: Vec<Advisory>) {
        for advisory in advisories {
            self.on_dead_letter(advisory).await;
        }
    }

    async fn on_dead_letter_message(&mut self, message: async_nats::Message) {
        match deadletter::parse(&message.payload) {
            Ok(advisory) => self.on_dead_letter(advisory).await,
            Err(reason) => {
                self.bus
                    .errors
                    .report(message.subject.as_str(), &reason, &message.payload)
                    .await
            }
        }
    }

    async fn retry_dead_letters(&mut self) {
        for advisory in std::mem::take(&mut self.dead_letters).into_values() {
            self.on_dead_letter(advisory).await;
        }
    }

    /// The server gave up on ORDERS message `stream_seq`: an order without an outcome gets
    /// a REJECTED dead_letter report (the rest of a part-filled one an EXPIRED one) and an
    /// event on errors.execution; one with an outcome, or in flight right now under the
    /// same id (its outcome is on the way), is left alone. Idempotent: the ledger holds
    /// every recorded outcome, and the report's message id is the outcome's.
    async fn on_dead_letter(&mut self, advisory: Advisory) {
        let sequence = advisory.stream_seq;
        let message = match self.bus.orders_stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                tracing::warn!(sequence, "dead letter: the ORDERS message no longer exists");
                return;
            }
            Err(e) => {
                tracing::warn!(sequence, error = %e, "dead letter: ORDERS unreadable; tried again later");
                self.dead_letters.insert(sequence, advisory);
                return;
            }
        };
        // ORDERS drops an order long before the ledger forgets its outcome (ledger.rs);
        // one kept longer (its max_age raised by hand) may have had an outcome that is
        // forgotten: a second report could contradict it.
        let stored_ns = u64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(0);
        if now_ns().saturating_sub(stored_ns) > ledger::outcomes_kept_ns() {
            tracing::warn!(
                sequence,
                "dead letter: the order is older than the ledger keeps outcomes; left alone"
            );
            return;
        }
        let reason = deadletter::reason(&advisory);
        let subject = message.subject.to_string();
        let Some((kind, _, symbol)) = order_subject(&subject) else {
            return;
        };
        let raw = RawIds::peek(&message.payload);
        let Some(id) = raw.client_order_id.clone() else {
            // No id, so no ledger entry to tell a second report from the first: said only.
            self.bus
                .errors
                .report(&subject, &reason, &message.payload)
                .await;
            return;
        };
        if kind == Kind::Cancel {
            self.bus
                .errors
                .report(&subject, &reason, &message.payload)
                .await;
            return;
        }
        if self.in_flight.contains(&id) {
            // Its outcome is on the way; should that write fail, nothing delivers the order
            // again (its deliveries are spent): looked at again on the retry timer.
            self.dead_letters.insert(sequence, advisory);
            return;
        }
        if let Some((reports, _)) = self.unsettled.remove(id.as_str()) {
            // Ten deliveries could not store the outcome decided first; the dead letter is
            // what is recorded (subscribers may have seen that outcome: logged here).
            let abandoned: Vec<String> = reports.iter().map(|r| r.status.to_string()).collect();
            tracing::warn!(client_order_id = %id, ?abandoned, "dead letter: the outcome decided first was never stored");
        }
        let report = match (self.ledger.status(&id), self.ledger.open_report(&id)) {
            (None, _) => match intake::decode_order(&message.payload) {
                Ok(order) => {
                    let timings = Timings {
                        origin_ts: Some(order.origin_ts),
                        received_ts: Some(now_ns()),
                        ..Timings::default()
                    };
                    reports::rejected(
                        &order,
                        Some(&format!("{}-{sequence}", order.venue)),
                        reason.clone(),
                        timings,
                    )
                }
                Err(_) => reports::invalid(Some(id.clone()), raw.symbol, reason.clone(), now_ns()),
            },
            (Some(OrderStatus::PartiallyFilled), Some(open))
                if !open.venue.as_ref().is_some_and(|v| self.venue.is_live(v))
                    && open.algo.is_none() =>
            {
                reports::rest_expired(open, reason.clone())
            }
            _ => return, // an outcome, or resting (ACCEPTED): settled
        };
        tracing::warn!(client_order_id = %id, sequence, symbol, %reason, "dead letter");
        self.bus
            .errors
            .report(&subject, &reason, &message.payload)
            .await;
        let mut recording = Recording::dead_letter(id.to_string(), report);
        recording.holds = Some(id);
        recording.dead_letter = Some(advisory);
        self.spawn_record(recording);
    }

    /// Store a report now (start-up, before any order is taken).
    async fn record_now(&mut self, report: &ExecutionReport, key: &str) -> Result<()> {
        let mut tagged = [report.clone()];
        self.algos.tag(&mut tagged);
        self.bus.protect.tag(&mut tagged);
        self.bus.recorder.record(&tagged[0], key).await?;
        self.remember(&tagged[0], key);
        self.on_child_report(&tagged[0]);
        Ok(())
    }

    fn remember(&mut self, report: &ExecutionReport, key: &str) {
        self.ledger.record(report);
        self.bus.protect.on_report(report);
        for id in self.ledger.take_forgotten() {
            self.bus.protect.forget(&id);
            self.algos.forget(&id);
        }
        metrics::global().stored(report);
        tracing::info!(
            client_order_id = report.client_order_id.as_ref().map(|id| id.as_str()).unwrap_or(key),
            status = %report.status,
            reason = report.reason.as_deref().unwrap_or(""),
            "order report recorded"
        );
    }
}

/// `orders.<submit|cancel>.<agent>.<symbol>` -> the kind and the agent and symbol tokens.
fn order_subject(subject: &str) -> Option<(Kind, &str, &str)> {
    let (kind, agent, symbol) = subjects::parse_order_subject(subject)?;
    let kind = match kind {
        subjects::OrderKind::Submit => Kind::Submit,
        subjects::OrderKind::Cancel => Kind::Cancel,
    };
    Some((kind, agent, symbol))
}

/// The agent token of an order subject ("" if it has none: never equal to a valid agent).
fn subject_agent(subject: &str) -> &str {
    order_subject(subject)
        .map(|(_, agent, _)| agent)
        .unwrap_or("")
}

/// Sleeps until `until` (for ever without one: the select branch is off then anyway).
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

fn interrupted_reason() -> String {
    "interrupted: the rest of the order expired after a failure between its reports".into()
}

/// The next live venue event; never, without live venues.
async fn next_live_event(
    events: &mut Option<mpsc::UnboundedReceiver<LiveEvent>>,
) -> Option<LiveEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// The order a snapshot keeps beside an open report: a resting order's, and an algo
/// parent's, which may work longer than ORDERS keeps its message (7 days): without it a
/// restart could not find the parent, would end it FAILED and leave its child working alone.
fn kept_order(
    venue: &Router,
    algos: &crate::algo::Algos,
    id: &ClientOrderId,
) -> Option<OrderRequest> {
    (venue.resting(id).map(|r| r.order.clone())).or_else(|| algos.get(id).map(|a| a.parent.clone()))
}
