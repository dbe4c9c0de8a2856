//! The router: one `Venue` for the engine that sends each order where its `venue` says,
//! to the paper venue or to a live adapter (mod.rs), and turns what live venues say
//! about our orders into execution reports.
//!
//! Live orders, in the engine's terms:
//! - Write ahead: after risk's approval and the venue's notional cap, the order's ACCEPTED
//!   report is stored in EXEC *before* anything leaves the machine; only then is it sent
//!   (`take_sends`, in a job). So a crash can never leave an order at a venue that our
//!   record does not have: a restarted execution finds it ACCEPTED and asks the venue, and
//!   an order it would re-deliver is a duplicate of its ledger, never sent again.
//! - Then its fills and end from the venue's state ([`VenueOrder`], cumulative): the answer
//!   to the send, the venue's stream, queries. A refusal (our check of the venue's rules, the
//!   venue itself) is REJECTED with the reason. No answer: the order is unconfirmed, queried
//!   every `poll` until the venue knows it, or, past the adapter's `unknown_deadline`, it is
//!   not there: REJECTED `venue_never_received`. Never sent twice.
//! - A state of one of our working orders becomes reports by [`progress`]: the difference
//!   from what was reported before (PARTIALLY_FILLED / FILLED with the new quantity, its
//!   average price and fee; then CANCELLED / EXPIRED / REJECTED with the venue's reason).
//!   An order has one update being stored at a time; a later state waits (only the latest
//!   matters: figures are cumulative) and an update whose reports were not stored is
//!   rolled back and tried again on the next poll.
//! - Cancels go to the venue; its answer is a state like any other.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use moonbus_common::{
    now_ns, ClientOrderId, ExecutionReport, NonNegativeMoney, OrderStatus, OrderType,
    PositiveMoney, Tick, Venue as VenueName,
};
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::sync::mpsc;

#[allow(unused_imports)] // used by the adapters the macro lists
use super::Exchange;
use super::{
    AccountState, Mode, Submitted, VenueError, VenueEvent, VenueOrder, VenueStatus, WriteAhead,
};
use crate::paper::PaperVenue;
use crate::reports::{self, Recorder};
use crate::venue::{Fill, Market, Placement, Routed, Venue};

/// Adds a live venue kind: `Variant(Type) = "kind" | "other kind"`; `Type` implements
/// [`Exchange`] and has `from_config(name, kind, mode, settings)`.
macro_rules! live_venues {
    ($($variant:ident($ty:ty) = $kinds:pat),* $(,)?) => {
        /// A live adapter, whichever kind.
        #[derive(Clone)]
        pub enum Live {
            $($variant($ty)),*
        }

        impl Live {
            pub fn build(name: &str, kind: &str, mode: Mode, settings: serde_json::Value) -> Result<Self> {
                match kind {
                    $($kinds => Ok(Live::$variant(<$ty>::from_config(name, kind, mode, settings)?)),)*
                    other => bail!("unknown live venue kind {other:?}"),
                }
            }

            pub async fn start(&self, events: mpsc::UnboundedSender<VenueEvent>) -> Result<(), VenueError> {
                let _ = &events;
                match *self { $(Live::$variant(ref v) => v.start(events).await,)* }
            }

            pub async fn submit(&self, order: &Routed, write_ahead: WriteAhead<'_>) -> Submitted {
                let _ = (order, write_ahead);
                match *self { $(Live::$variant(ref v) => v.submit(order, write_ahead).await,)* }
            }

            pub async fn cancel(&self, order: &Routed) -> Result<VenueOrder, VenueError> {
                let _ = order;
                match *self { $(Live::$variant(ref v) => v.cancel(order).await,)* }
            }

            pub async fn query(&self, order: &Routed) -> Result<Option<VenueOrder>, VenueError> {
                let _ = order;
                match *self { $(Live::$variant(ref v) => v.query(order).await,)* }
            }

            pub async fn account(&self) -> Result<AccountState, VenueError> {
                match *self { $(Live::$variant(ref v) => v.account().await,)* }
            }

            pub fn unknown_deadline(&self) -> Duration {
                match *self { $(Live::$variant(ref v) => v.unknown_deadline(),)* }
            }

            pub fn forget(&self, client_order_id: &str) {
                match *self { $(Live::$variant(ref v) => v.forget(client_order_id),)* }
            }

            pub fn finds_orders_by_client_id(&self) -> bool {
                match *self { $(Live::$variant(ref v) => v.finds_orders_by_client_id(),)* }
            }

            pub fn restore(&self, order: &Routed, venue_order_id: &str, since_ns: u64) {
                let _ = (order, venue_order_id, since_ns);
                match *self { $(Live::$variant(ref v) => v.restore(order, venue_order_id, since_ns),)* }
            }
        }
    };
}

live_venues! {
    Binance(super::binance::Binance) = "binance_spot" | "binance_futures" | "aster",
    Jupiter(super::jupiter::Jupiter) = "jupiter",
    Hyperliquid(super::hyperliquid::Hyperliquid) = "hyperliquid",
}

/// `[execution.live.<name>]`: the router's keys; the rest is the adapter's.
#[derive(Debug, Clone, Deserialize)]
pub struct LiveVenueConfig {
    /// binance_spot | binance_futures | aster | hyperliquid | jupiter
    pub kind: String,
    #[serde(default)]
    pub mode: Mode,
    /// The largest notional (quantity x price, quote currency) one order may have at this
    /// venue; bigger ones are REJECTED `venue_notional_cap` before they are sent. Required
    /// for testnet and live: a live venue without a cap is a config error.
    #[serde(default)]
    pub max_notional: Option<String>,
    /// The adapter's own keys (symbols, URLs, key variables...).
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// What has been reported of a live order: cumulative, like the venue's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub filled: Decimal,
    pub notional: Decimal,
    pub fee: Decimal,
    /// The venue's own id of the order, once a stored report carries it.
    pub venue_order_id: Option<String>,
}

impl Progress {
    /// What an open report says was reported (the ledger keeps the order's fee total in
    /// its open report, ledger.rs).
    pub fn of_report(report: &ExecutionReport) -> Self {
        let filled = *report.filled_quantity;
        let notional = report
            .avg_fill_price
            .map(|p| *p * filled)
            .unwrap_or(Decimal::ZERO);
        Self {
            filled,
            notional,
            fee: *report.fee,
            venue_order_id: report.venue_order_id.clone(),
        }
    }
}

/// Reports to record for one live order, and whether it still works at the venue after.
#[derive(Debug, Clone)]
pub struct LiveUpdate {
    pub routed: Routed,
    pub reports: Vec<ExecutionReport>,
    pub working: bool,
}

/// A live venue's event, named by the venue it came from.
pub type LiveEvent = (VenueName, VenueEvent);

/// The reports that take a live order from what was reported (`before`) to the venue's
/// `state`; `None` when there is nothing new. Errors: a state that cannot be ours (less
/// filled than reported, more than ordered, a negative or unrepresentable figure).
///
/// Every report carries the venue's id of the order once the venue gave one. With
/// `tell_venue_id` (a venue that cannot find an order by our id: a Solana swap is known
/// by its signature only), the id's first sight is news of its own, an ACCEPTED that
/// carries it, so that a restarted execution can still ask after the order.
pub fn progress(
    routed: &Routed,
    before: &Progress,
    state: &VenueOrder,
    tell_venue_id: bool,
) -> Result<Option<(Vec<ExecutionReport>, Progress, bool)>, String> {
    let ordered = *routed.order.quantity;
    if state.filled < before.filled {
        return Err(format!(
            "stale: the venue says {} filled, {} was reported",
            state.filled, before.filled
        ));
    }
    if state.filled > ordered {
        return Err(format!(
            "overfill: the venue says {} filled of {ordered}",
            state.filled
        ));
    }
    let mut reports = Vec::new();
    let venue_order_id = before
        .venue_order_id
        .clone()
        .or_else(|| state.venue_order_id.clone());
    let mut after = Progress {
        venue_order_id: venue_order_id.clone(),
        ..before.clone()
    };
    let done = !matches!(state.status, VenueStatus::Open) || state.filled == ordered;
    if state.filled > before.filled {
        let quantity = state.filled - before.filled;
        let notional = state
            .filled_notional
            .checked_sub(before.notional)
            .filter(|n| n.is_sign_positive() && !n.is_zero())
            .ok_or_else(|| {
                format!(
                    "bad notional {} after {}",
                    state.filled_notional, before.notional
                )
            })?;
        let price = notional.checked_div(quantity).ok_or("price overflow")?;
        let fee = state.fee.checked_sub(before.fee).unwrap_or(Decimal::ZERO);
        let fill = Fill {
            price: PositiveMoney::new(price).map_err(|e| format!("fill price: {e}"))?,
            quantity: PositiveMoney::new(quantity).map_err(|e| format!("fill quantity: {e}"))?,
            fee: NonNegativeMoney::new(fee.max(Decimal::ZERO)).map_err(|e| format!("fee: {e}"))?,
            ts: if state.ts > 0 { state.ts } else { now_ns() },
        };
        let status = if state.filled == ordered {
            OrderStatus::Filled
        } else {
            OrderStatus::PartiallyFilled
        };
        let mut report = reports::with_fill(routed, &fill, status);
        report.filled_quantity =
            NonNegativeMoney::new(state.filled).map_err(|e| format!("filled: {e}"))?;
        let average = state
            .filled_notional
            .checked_div(state.filled)
            .ok_or("average overflow")?;
        report.avg_fill_price =
            Some(PositiveMoney::new(average).map_err(|e| format!("average: {e}"))?);
        reports.push(report);
        after = Progress {
            filled: state.filled,
            notional: state.filled_notional,
            fee: before.fee.max(state.fee),
            venue_order_id: venue_order_id.clone(),
        };
    }
    if done && state.filled < ordered {
        let status = match state.status {
            VenueStatus::Cancelled => OrderStatus::Cancelled,
            VenueStatus::Rejected if state.filled.is_zero() => OrderStatus::Rejected,
            // Filled below the quantity (a venue that rounds) or rejected after a part
            // filled: the rest will not execute.
            _ => OrderStatus::Expired,
        };
        let reason = state
            .reason
            .clone()
            .unwrap_or_else(|| format!("venue: {}", format!("{:?}", state.status).to_lowercase()));
        let mut report = reports::routed(routed, status, Some(reason));
        report.filled_quantity =
            NonNegativeMoney::new(state.filled).map_err(|e| format!("filled: {e}"))?;
        if !state.filled.is_zero() {
            let average = state
                .filled_notional
                .checked_div(state.filled)
                .ok_or("average overflow")?;
            report.avg_fill_price =
                Some(PositiveMoney::new(average).map_err(|e| format!("average: {e}"))?);
        }
        reports.push(report);
    }
    if reports.is_empty() && tell_venue_id && before.venue_order_id.is_none() {
        if let Some(venue_id) = &venue_order_id {
            reports.push(venue_id_report(routed, before, venue_id)?);
        }
    }
    if reports.is_empty() {
        return Ok(None);
    }
    for report in &mut reports {
        report.venue_order_id = venue_order_id.clone();
    }
    Ok(Some((reports, after, !done)))
}

/// The ACCEPTED that tells the venue's id of an order (what was reported before carried
/// on): all a restarted execution needs to find an order the venue knows by that id only.
pub fn venue_id_report(
    routed: &Routed,
    before: &Progress,
    venue_id: &str,
) -> Result<ExecutionReport, String> {
    let mut report = reports::routed(routed, OrderStatus::Accepted, None);
    report.filled_quantity =
        NonNegativeMoney::new(before.filled).map_err(|e| format!("filled: {e}"))?;
    if let Some(average) = before.notional.checked_div(before.filled) {
        report.avg_fill_price = PositiveMoney::new(average).ok();
    }
    report.venue_order_id = Some(venue_id.to_string());
    tracing::debug!(client_order_id = %routed.order.client_order_id, %venue_id, "the venue's id of the order");
    Ok(report)
}

/// A new live order sent once (a job beside the engine): the venue's answer, and the
/// report that stored the venue's id before the send when the adapter wrote one ahead.
pub async fn send(
    exchange: Live,
    routed: Routed,
    recorder: Recorder,
) -> (Routed, Submitted, Option<ExecutionReport>) {
    let stored = std::sync::Arc::new(std::sync::Mutex::new(None));
    let write_ahead = {
        let (routed, stored) = (routed.clone(), stored.clone());
        move |venue_id: String| -> futures::future::BoxFuture<'static, Result<(), String>> {
            let (routed, stored, recorder) = (routed.clone(), stored.clone(), recorder.clone());
            Box::pin(async move {
                let report = venue_id_report(&routed, &Progress::default(), &venue_id)?;
                recorder
                    .record(&report, routed.order.client_order_id.as_str())
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                *stored
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report);
                Ok(())
            })
        }
    };
    let submitted = exchange.submit(&routed, &write_ahead).await;
    let stored = stored
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    (routed, submitted, stored)
}

/// One of our orders at a live venue.
#[derive(Debug, Clone)]
struct Working {
    routed: Routed,
    /// Reported and stored.
    stored: Progress,
    /// Reported, being stored (one update at a time): the progress it makes, whether the
    /// order ends with it, and the venue's state it came from.
    storing: Option<(Progress, bool, VenueOrder)>,
    /// A state that came while an update was being stored, or whose update failed.
    later: Option<VenueOrder>,
    /// The last update's reports could not be stored: tried again at the next poll (not
    /// at once: EXEC is failing).
    failed: bool,
    /// Sent without an answer: since when (queried until known or past the deadline).
    unconfirmed_since: Option<Instant>,
    /// A query is on its way.
    querying: bool,
    /// Ask the venue once (its stream came back, a cancel failed).
    recheck: bool,
    /// ACCEPTED and stored, not sent yet.
    to_send: bool,
    /// Why the venue's last state was refused (`progress`), once reported: the same
    /// state polled again is not reported again.
    refused: Option<String>,
}

/// A query of one live order, made beside the engine.
pub struct Query {
    pub venue: VenueName,
    pub routed: Routed,
    pub exchange: Live,
}

impl Query {
    pub async fn run(self) -> Queried {
        let result = self.exchange.query(&self.routed).await;
        Queried {
            venue: self.venue,
            id: self.routed.order.client_order_id,
            result,
        }
    }
}

/// Its answer.
pub struct Queried {
    pub venue: VenueName,
    pub id: ClientOrderId,
    pub result: Result<Option<VenueOrder>, VenueError>,
}

/// A live venue: its adapter, mode, cap and our orders there.
struct Slot {
    kind: String,
    mode: Mode,
    exchange: Live,
    max_notional: Decimal,
    working: HashMap<ClientOrderId, Working>,
    connected: bool,
    detail: String,
    account: Option<Result<AccountState, VenueError>>,
    /// Venue states refused and venue problems told since the engine last took them
    /// (`take_refusals`): (what, why).
    refusals: Vec<(String, String)>,
    /// Which venue problems were told lately (`VenueEvent::Problem`).
    problems: Problems,
}

/// How long a venue problem told on errors.execution is not told again.
const PROBLEM_WINDOW: Duration = Duration::from_secs(600);
/// At most this many venue problems told per venue and window.
const PROBLEMS_TOLD: usize = 20;

/// Venue problems ([`VenueEvent::Problem`]: a malformed fill, frame or event) reach
/// errors.execution without flooding it: each distinct one once per `PROBLEM_WINDOW` (a
/// venue repeats them: its snapshot after every reconnect, the catch-up of every query), at
/// most `PROBLEMS_TOLD` per window; beyond that they are only counted, and the count is told
/// once the window is over. Every one is in the log (warn) regardless.
#[derive(Debug)]
struct Problems {
    since: Instant,
    told: HashSet<String>,
    untold: u64,
}

impl Problems {
    fn new(now: Instant) -> Self {
        Problems {
            since: now,
            told: Default::default(),
            untold: 0,
        }
    }

    /// A window over starts the next: how many were not told in it, if any.
    fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.since) < PROBLEM_WINDOW {
            return None;
        }
        self.since = now;
        self.told.clear();
        Some(std::mem::take(&mut self.untold)).filter(|n| *n > 0)
    }

    /// Whether this problem is told now (not told in this window yet, and room left).
    fn admit(&mut self, of: &str, why: &str) -> bool {
        let key = format!("{of}\n{why}");
        if self.told.contains(&key) {
            return false;
        }
        if self.told.len() >= PROBLEMS_TOLD {
            self.untold += 1;
            return false;
        }
        self.told.insert(key);
        true
    }

    /// The refusal that tells how many were not told (of no one item: `what` is empty).
    fn untold_refusal(untold: u64) -> (String, String) {
        (
            String::new(),
            format!(
                "{untold} more venue problems in {} min, beyond the {PROBLEMS_TOLD} told, were counted, \
                 not told one by one: see the execution log",
                PROBLEM_WINDOW.as_secs() / 60
            ),
        )
    }
}

pub struct Router {
    paper: PaperVenue,
    live: HashMap<VenueName, Slot>,
    events_tx: mpsc::UnboundedSender<LiveEvent>,
    events_rx: Option<mpsc::UnboundedReceiver<LiveEvent>>,
}

/// The live venues' public view (LiveVenueStatus, `moon status`).
#[derive(Debug, Clone)]
pub struct SlotView {
    pub venue: VenueName,
    pub kind: String,
    pub mode: Mode,
    pub connected: bool,
    pub detail: String,
    pub working_orders: usize,
    pub unconfirmed_orders: usize,
    pub account: Option<Result<AccountState, VenueError>>,
    /// Open at the venue, not ours.
    pub unknown_orders: Vec<VenueOrder>,
}

impl Router {
    /// Orders for venues without a live adapter go to `paper`.
    pub fn new(paper: PaperVenue) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            paper,
            live: HashMap::new(),
            events_tx,
            events_rx: Some(events_rx),
        }
    }

    /// Add a live venue (testnet or live mode) and start its adapter: rules, clock, stream.
    pub async fn add_live(&mut self, name: VenueName, config: LiveVenueConfig) -> Result<()> {
        let max_notional: Decimal = config
            .max_notional
            .as_deref()
            .with_context(|| {
                format!(
                    "[execution.live.{name}] needs max_notional in {} mode",
                    config.mode
                )
            })?
            .parse()
            .with_context(|| format!("[execution.live.{name}] max_notional"))?;
        if max_notional <= Decimal::ZERO {
            bail!("[execution.live.{name}] max_notional must be > 0");
        }
        let exchange = Live::build(
            name.as_str(),
            &config.kind,
            config.mode,
            serde_json::Value::Object(config.settings),
        )
        .with_context(|| format!("[execution.live.{name}] ({})", config.kind))?;
        // The adapter's events, named by their venue, into the engine's one channel.
        let (tx, mut rx) = mpsc::unbounded_channel::<VenueEvent>();
        let forward = self.events_tx.clone();
        let venue = name.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if forward.send((venue.clone(), event)).is_err() {
                    break;
                }
            }
        });
        exchange
            .start(tx)
            .await
            .map_err(|e| anyhow::anyhow!("[execution.live.{name}] start: {e}"))?;
        tracing::info!(venue = %name, kind = %config.kind, mode = %config.mode, %max_notional, "live venue ready");
        self.live.insert(
            name,
            Slot {
                kind: config.kind,
                mode: config.mode,
                exchange,
                max_notional,
                working: HashMap::new(),
                connected: true,
                detail: "started".into(),
                account: None,
                refusals: Vec::new(),
                problems: Problems::new(Instant::now()),
            },
        );
        Ok(())
    }

    pub fn is_live(&self, venue: &VenueName) -> bool {
        self.live.contains_key(venue)
    }

    /// The events of every live venue (taken once, by the engine).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<LiveEvent>> {
        self.events_rx.take()
    }

    /// A live order that is working; its venue.
    fn find(&self, id: &ClientOrderId) -> Option<(&VenueName, &Working)> {
        self.live
            .iter()
            .find_map(|(name, slot)| slot.working.get(id).map(|w| (name, w)))
    }

    /// Before a live order is accepted: the venue's notional cap, checked at the limit
    /// price or the latest tick. `Err` is the placement (REJECTED).
    pub fn prepare_live(&self, routed: &Routed, market: &Market) -> Result<(), Placement> {
        let Some(slot) = self.live.get(&routed.order.venue) else {
            return Err(Placement::Rejected {
                reason: format!("unknown_venue: {}", routed.order.venue),
            });
        };
        let order = &routed.order;
        let price = match order.order_type {
            OrderType::Limit => order.limit_price.map(|p| *p),
            OrderType::Market => market.price(&order.symbol).map(|p| *p),
        };
        let Some(price) = price else {
            return Err(Placement::Rejected {
                reason: format!(
                    "no_market_price: no tick for {} to check the venue_notional_cap against",
                    order.symbol
                ),
            });
        };
        match order.quantity.checked_mul(price) {
            Some(notional) if notional <= slot.max_notional => Ok(()),
            Some(notional) => Err(Placement::Rejected {
                reason: format!(
                    "venue_notional_cap: {notional} over the {} cap of {}",
                    order.venue, slot.max_notional
                ),
            }),
            None => Err(Placement::Rejected {
                reason: "notional_overflow".into(),
            }),
        }
    }

    /// The live orders whose ACCEPTED report is stored and that are not sent yet: each
    /// with its adapter, sent once in a job (`on_submitted` takes the answer).
    pub fn take_sends(&mut self) -> Vec<(Live, Routed)> {
        let mut sends = Vec::new();
        for slot in self.live.values_mut() {
            for working in slot.working.values_mut().filter(|w| w.to_send) {
                working.to_send = false;
                working.querying = true; // no query while the send is on its way
                sends.push((slot.exchange.clone(), working.routed.clone()));
            }
        }
        sends
    }

    /// What the venue answered to a new order: its state (as reports), a refusal
    /// (REJECTED), or no answer (unconfirmed: queried, never resent). `venue_id_stored`:
    /// the venue's id the send stored ahead of itself ([`send`]), told no more.
    pub fn on_submitted(
        &mut self,
        routed: &Routed,
        submitted: Submitted,
        venue_id_stored: Option<String>,
    ) -> Vec<LiveUpdate> {
        let id = &routed.order.client_order_id;
        let Some(slot) = self.live.get_mut(&routed.order.venue) else {
            return Vec::new();
        };
        let Some(working) = slot.working.get_mut(id) else {
            return Vec::new(); // ended meanwhile (its stream was quicker)
        };
        working.querying = false;
        if venue_id_stored.is_some() && working.stored.venue_order_id.is_none() {
            working.stored.venue_order_id = venue_id_stored;
        }
        let state = match submitted {
            Submitted::Accepted(state) => state,
            Submitted::Rejected { reason } => VenueOrder {
                client_order_id: Some(id.to_string()),
                venue_order_id: None,
                symbol: Some(routed.order.symbol.clone()),
                venue_symbol: String::new(),
                status: VenueStatus::Rejected,
                filled: Decimal::ZERO,
                filled_notional: Decimal::ZERO,
                fee: Decimal::ZERO,
                reason: Some(reason),
                ts: now_ns(),
            },
            Submitted::Unknown { reason } => {
                tracing::warn!(client_order_id = %id, venue = %routed.order.venue, %reason, "no answer from the venue: the order is queried, never resent");
                working.unconfirmed_since = Some(Instant::now());
                return Vec::new();
            }
        };
        slot.apply(id, state).into_iter().collect()
    }

    /// A live venue's event: the reports it means for our orders.
    pub fn on_event(&mut self, (venue, event): LiveEvent) -> Vec<LiveUpdate> {
        let Some(slot) = self.live.get_mut(&venue) else {
            return Vec::new();
        };
        match event {
            VenueEvent::Health { connected, detail } => {
                if connected != slot.connected {
                    tracing::warn!(%venue, connected, %detail, "live venue stream");
                }
                if connected && !slot.connected {
                    // Back: what happened while it was down is asked for.
                    for working in slot.working.values_mut() {
                        working.recheck = true;
                    }
                }
                slot.connected = connected;
                slot.detail = detail;
                Vec::new()
            }
            VenueEvent::Problem { of, why } => {
                tracing::warn!(%venue, %of, %why, "venue data not applied");
                if let Some(untold) = slot.problems.roll(Instant::now()) {
                    slot.refusals.push(Problems::untold_refusal(untold));
                }
                if slot.problems.admit(&of, &why) {
                    slot.refusals.push((of, why));
                }
                Vec::new()
            }
            VenueEvent::Order(state) => {
                let Some(id) = state
                    .client_order_id
                    .as_deref()
                    .and_then(|id| ClientOrderId::try_from(id).ok())
                else {
                    return Vec::new(); // not ours: reconciliation reports it
                };
                slot.apply(&id, state).into_iter().collect()
            }
        }
    }

    /// The reports of an update were stored (`true`) or not: commit (an order that
    /// ended leaves) or roll back (its state is applied again at the next poll).
    pub fn settled(&mut self, id: &ClientOrderId, stored: bool) {
        for slot in self.live.values_mut() {
            let Some(working) = slot.working.get_mut(id) else {
                continue;
            };
            let Some((progress, ends, state)) = working.storing.take() else {
                continue;
            };
            if !stored {
                working.failed = true;
                keep_latest(&mut working.later, state);
            } else if ends {
                slot.working.remove(id);
                slot.exchange.forget(id.as_str());
            } else {
                working.stored = progress;
            }
            return;
        }
    }

    /// The updates that can go now without asking a venue: states that came while an
    /// update of their order was being stored (and answers queued at placement).
    pub fn ready(&mut self) -> Vec<LiveUpdate> {
        let mut updates = Vec::new();
        for slot in self.live.values_mut() {
            let due: Vec<ClientOrderId> = slot
                .working
                .iter()
                .filter(|(_, w)| w.storing.is_none() && !w.failed && w.later.is_some())
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                if let Some(state) = slot.working.get_mut(&id).and_then(|w| w.later.take()) {
                    updates.extend(slot.apply(&id, state));
                }
            }
        }
        updates
    }

    /// Orders waiting on the venue: states that came while an update was stored (or
    /// whose update failed) applied now, and the queries to make beside the engine:
    /// orders without a venue answer, and every working order while its venue's stream
    /// is down or just came back (fills may have been missed).
    pub fn poll(&mut self) -> (Vec<LiveUpdate>, Vec<Query>) {
        let mut updates = Vec::new();
        let mut queries = Vec::new();
        for (venue, slot) in self.live.iter_mut() {
            let ids: Vec<ClientOrderId> = slot.working.keys().cloned().collect();
            for id in ids {
                let Some(working) = slot.working.get_mut(&id) else {
                    continue;
                };
                if working.storing.is_some() || working.querying {
                    continue;
                }
                working.failed = false;
                if let Some(state) = working.later.take() {
                    updates.extend(slot.apply(&id, state));
                    continue;
                }
                if working.unconfirmed_since.is_none() && slot.connected && !working.recheck {
                    continue;
                }
                working.querying = true;
                queries.push(Query {
                    venue: venue.clone(),
                    routed: working.routed.clone(),
                    exchange: slot.exchange.clone(),
                });
            }
        }
        (updates, queries)
    }

    /// A query's answer: the order's state, or (unconfirmed, past the adapter's
    /// deadline, unknown to the venue) REJECTED `venue_never_received`.
    pub fn on_queried(&mut self, queried: Queried) -> Vec<LiveUpdate> {
        let Queried { venue, id, result } = queried;
        let Some(slot) = self.live.get_mut(&venue) else {
            return Vec::new();
        };
        let deadline = slot.exchange.unknown_deadline();
        let Some(working) = slot.working.get_mut(&id) else {
            return Vec::new();
        };
        working.querying = false;
        let unconfirmed = working.unconfirmed_since;
        let state = match result {
            Ok(Some(state)) => {
                working.recheck = false;
                state
            }
            Ok(None) => match unconfirmed {
                Some(since) if since.elapsed() > deadline => VenueOrder {
                    client_order_id: Some(id.to_string()),
                    venue_order_id: None,
                    symbol: Some(working.routed.order.symbol.clone()),
                    venue_symbol: String::new(),
                    status: VenueStatus::Rejected,
                    filled: Decimal::ZERO,
                    filled_notional: Decimal::ZERO,
                    fee: Decimal::ZERO,
                    reason: Some(format!(
                        "venue_never_received: {venue} has no such order {} s after it was sent",
                        deadline.as_secs()
                    )),
                    ts: now_ns(),
                },
                Some(_) => return Vec::new(), // it may still arrive: asked again
                None => {
                    working.recheck = false;
                    tracing::warn!(%venue, client_order_id = %id, "a working order is unknown to the venue; reconciliation will say");
                    return Vec::new();
                }
            },
            Err(e) => {
                tracing::debug!(%venue, client_order_id = %id, error = %e, "query failed; asked again");
                return Vec::new();
            }
        };
        slot.apply(&id, state).into_iter().collect()
    }

    /// What a cancel of a live order needs: its adapter and the order.
    pub fn cancel_request(&self, id: &ClientOrderId) -> Result<(Live, Routed), String> {
        match self.find(id) {
            Some((venue, working)) => {
                Ok((self.live[venue].exchange.clone(), working.routed.clone()))
            }
            None => Err(format!(
                "not_resting: order {id} is not working at a live venue"
            )),
        }
    }

    /// The venue's answer to a cancel: the order's state after it, as reports.
    pub fn on_cancelled(
        &mut self,
        id: &ClientOrderId,
        result: Result<VenueOrder, VenueError>,
    ) -> Result<Vec<LiveUpdate>, String> {
        let Some(venue) = self.find(id).map(|(venue, _)| venue.clone()) else {
            return Ok(Vec::new()); // ended meanwhile (a fill): nothing left to cancel
        };
        let slot = self.live.get_mut(&venue).expect("found above");
        match result {
            Ok(state) => Ok(slot.apply(id, state).into_iter().collect()),
            Err(e) => {
                // Whatever the venue did, ask it.
                if let Some(working) = slot.working.get_mut(id) {
                    working.recheck = true;
                }
                Err(format!("venue_cancel_failed: {venue}: {e}"))
            }
        }
    }

    /// The adapters whose accounts to read (reconciliation), beside the engine.
    pub fn account_requests(&self) -> Vec<(VenueName, Live)> {
        self.live
            .iter()
            .map(|(venue, slot)| (venue.clone(), slot.exchange.clone()))
            .collect()
    }

    /// A venue's account as read (or why not).
    pub fn set_account(&mut self, venue: &VenueName, account: Result<AccountState, VenueError>) {
        if let Some(slot) = self.live.get_mut(venue) {
            slot.account = Some(account);
        }
    }

    /// Every order working at a live venue (the kill switch cancels them).
    pub fn working_ids(&self) -> Vec<ClientOrderId> {
        self.live
            .values()
            .flat_map(|slot| slot.working.keys().cloned())
            .collect()
    }

    /// A live order restored after a restart, with what its last stored report said.
    pub fn restore_live(&mut self, routed: Routed, open: &ExecutionReport) {
        let id = routed.order.client_order_id.clone();
        if let Some(slot) = self.live.get_mut(&routed.order.venue) {
            if let Some(venue_id) = &open.venue_order_id {
                slot.exchange.restore(&routed, venue_id, open.ts);
            }
            slot.working.insert(
                id,
                Working {
                    routed,
                    stored: Progress::of_report(open),
                    storing: None,
                    later: None,
                    failed: false,
                    querying: false,
                    recheck: false,
                    to_send: false,
                    refused: None,
                    // Sent or not (a crash between its ACCEPTED and the send): ask the venue at the first poll.
                    unconfirmed_since: Some(Instant::now()),
                },
            );
        }
    }

    /// The venue states refused since the last call (stale, overfill, unreadable
    /// figures), each reason once per order, and the venue problems told (a malformed
    /// fill, frame or event; see [`Problems`]): (venue, what, why); `what` is empty for the
    /// count of problems not told one by one.
    pub fn take_refusals(&mut self) -> Vec<(VenueName, String, String)> {
        let mut taken = Vec::new();
        let now = Instant::now();
        for (venue, slot) in &mut self.live {
            if let Some(untold) = slot.problems.roll(now) {
                slot.refusals.push(Problems::untold_refusal(untold));
            }
            taken.extend(
                slot.refusals
                    .drain(..)
                    .map(|(id, why)| (venue.clone(), id, why)),
            );
        }
        taken
    }

    pub fn views(&self) -> Vec<SlotView> {
        let mut views: Vec<SlotView> = self
            .live
            .iter()
            .map(|(venue, slot)| {
                let unknown_orders = match &slot.account {
                    Some(Ok(account)) => account
                        .open_orders
                        .iter()
                        .filter(|o| {
                            !o.client_order_id
                                .as_deref()
                                .and_then(|id| ClientOrderId::try_from(id).ok())
                                .is_some_and(|id| slot.working.contains_key(&id))
                        })
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                };
                SlotView {
                    venue: venue.clone(),
                    kind: slot.kind.clone(),
                    mode: slot.mode,
                    connected: slot.connected,
                    detail: slot.detail.clone(),
                    working_orders: slot.working.len(),
                    unconfirmed_orders: slot
                        .working
                        .values()
                        .filter(|w| w.unconfirmed_since.is_some())
                        .count(),
                    account: slot.account.clone(),
                    unknown_orders,
                }
            })
            .collect();
        views.sort_by(|a, b| a.venue.as_str().cmp(b.venue.as_str()));
        views
    }
}

impl SlotView {
    /// `exec.venue.<venue>`: what risk reconciles and users see. A figure the contract
    /// cannot carry (out of range) is left out and named in `account_error`.
    pub fn status(&self) -> Result<moonbus_common::LiveVenueStatus, String> {
        use moonbus_common::{
            LiveVenueStatus, Money, NonNegativeMoney, PositiveMoney, UnknownVenueOrder,
            VenueAccount, VenueBalanceEntry, VenueMode, VenuePositionEntry,
        };
        let money = |v: Decimal| Money::new(v).map_err(|e| e.to_string());
        let (account, account_error) = match &self.account {
            None => (None, Some("not read yet".to_string())),
            Some(Err(e)) => (None, Some(e.to_string())),
            Some(Ok(state)) => {
                let read = || -> Result<VenueAccount, String> {
                    Ok(VenueAccount {
                        cash: state.cash.map(money).transpose()?,
                        equity: state.equity.map(money).transpose()?,
                        balances: state
                            .balances
                            .iter()
                            .map(|b| {
                                Ok(VenueBalanceEntry {
                                    asset: b.asset.chars().take(128).collect(),
                                    total: money(b.total)?,
                                })
                            })
                            .collect::<Result<_, String>>()?,
                        positions: state
                            .positions
                            .iter()
                            .map(|p| {
                                Ok(VenuePositionEntry {
                                    symbol: p.symbol.clone(),
                                    quantity: money(p.quantity)?,
                                    entry_price: p
                                        .entry_price
                                        .and_then(|e| PositiveMoney::new(e).ok()),
                                })
                            })
                            .collect::<Result<_, String>>()?,
                    })
                };
                match read() {
                    Ok(account) => (Some(account), None),
                    Err(e) => (None, Some(format!("a figure out of range: {e}"))),
                }
            }
        };
        let unknown_orders = self
            .unknown_orders
            .iter()
            .map(|o| UnknownVenueOrder {
                venue_order_id: o
                    .venue_order_id
                    .as_ref()
                    .map(|s| s.chars().take(128).collect()),
                client_order_id: o
                    .client_order_id
                    .as_ref()
                    .map(|s| s.chars().take(128).collect()),
                venue_symbol: if o.venue_symbol.is_empty() {
                    "?".into()
                } else {
                    o.venue_symbol.chars().take(128).collect()
                },
                symbol: o.symbol.clone(),
                status: format!("{:?}", o.status).to_uppercase(),
                filled: NonNegativeMoney::new(o.filled).unwrap_or(NonNegativeMoney::ZERO),
            })
            .collect();
        Ok(LiveVenueStatus {
            venue: self.venue.clone(),
            kind: self
                .kind
                .parse()
                .map_err(|e| format!("kind {}: {e:?}", self.kind))?,
            mode: match self.mode {
                Mode::Live => VenueMode::Live,
                _ => VenueMode::Testnet,
            },
            connected: self.connected,
            detail: (!self.detail.is_empty()).then(|| self.detail.chars().take(512).collect()),
            working_orders: self.working_orders as u64,
            unconfirmed_orders: self.unconfirmed_orders as u64,
            account,
            account_error,
            unknown_orders,
            ts: now_ns(),
        })
    }
}

/// Cumulative states: the one with more filled (or a final one) is the latest.
fn keep_latest(slot: &mut Option<VenueOrder>, state: VenueOrder) {
    let newer = match slot {
        None => true,
        Some(old) => {
            state.filled > old.filled
                || (state.filled == old.filled && old.status == VenueStatus::Open)
        }
    };
    if newer {
        *slot = Some(state);
    }
}

impl Slot {
    /// A state of a working order: its update, unless one is being stored (then later).
    fn apply(&mut self, id: &ClientOrderId, state: VenueOrder) -> Option<LiveUpdate> {
        let working = self.working.get_mut(id)?;
        if working.storing.is_some() {
            keep_latest(&mut working.later, state);
            return None;
        }
        working.unconfirmed_since = None;
        let tell_venue_id = !self.exchange.finds_orders_by_client_id();
        match progress(&working.routed, &working.stored, &state, tell_venue_id) {
            Ok(None) => None,
            Ok(Some((reports, after, still_working))) => {
                working.storing = Some((after, !still_working, state));
                let update = LiveUpdate {
                    routed: working.routed.clone(),
                    reports,
                    working: still_working,
                };
                Some(update)
            }
            Err(why) => {
                tracing::warn!(client_order_id = %id, %why, "venue state not applied");
                // Told once per reason (the engine, on errors.execution): an overfill is
                // money at the venue that no report shows, and every poll brings it again.
                if working.refused.as_ref() != Some(&why) {
                    working.refused = Some(why.clone());
                    self.refusals.push((id.to_string(), why));
                }
                None
            }
        }
    }
}

impl Venue for Router {
    fn serves(&self, venue: &VenueName) -> bool {
        self.live.contains_key(venue) || self.paper.serves(venue)
    }

    /// Paper orders. A live order is ACCEPTED (stored) first and sent after
    /// (`prepare_live`, `take_sends`): here it only passes the cap and rests.
    async fn place(&mut self, routed: &Routed, market: &Market) -> Placement {
        if !self.is_live(&routed.order.venue) {
            return self.paper.place(routed, market).await;
        }
        match self.prepare_live(routed, market) {
            Err(placement) => placement,
            Ok(()) => Placement::Resting,
        }
    }

    async fn cancel(&mut self, client_order_id: &ClientOrderId) -> Option<Routed> {
        self.paper.cancel(client_order_id).await
    }

    fn resting(&self, client_order_id: &ClientOrderId) -> Option<&Routed> {
        self.paper
            .resting(client_order_id)
            .or_else(|| self.find(client_order_id).map(|(_, w)| &w.routed))
    }

    /// A live order whose ACCEPTED report is stored starts working, to be sent
    /// (`take_sends`). A live order already working (an update was stored) is left as it
    /// is; a paper order rests on the paper venue.
    fn rest(&mut self, routed: Routed) {
        let Some(slot) = self.live.get_mut(&routed.order.venue) else {
            self.paper.rest(routed);
            return;
        };
        let id = routed.order.client_order_id.clone();
        if slot.working.contains_key(&id) {
            return;
        }
        slot.working.insert(
            id,
            Working {
                routed,
                stored: Progress::default(),
                storing: None,
                later: None,
                failed: false,
                querying: false,
                recheck: false,
                to_send: true,
                refused: None,
                unconfirmed_since: None,
            },
        );
    }

    fn on_market(&mut self, tick: &Tick) -> Vec<(Routed, Fill)> {
        self.paper.on_market(tick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{AgentName, OrderRequest, Side, Symbol, TimeInForce, Timings};

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn routed(quantity: &str) -> Routed {
        Routed {
            order: OrderRequest {
                client_order_id: ClientOrderId::try_from("trd-1").unwrap(),
                agent: AgentName::try_from("trading").unwrap(),
                symbol: Symbol::try_from("BTC-USDT").unwrap(),
                venue: VenueName::try_from("binance").unwrap(),
                side: Side::Buy,
                order_type: OrderType::Limit,
                quantity: quantity.parse().unwrap(),
                limit_price: Some("100".parse().unwrap()),
                time_in_force: TimeInForce::Gtc,
                reduce_only: false,
                decision_price: None,
                protection: None,
                origin_ts: 1,
                ts: 1,
                algo: None,
            },
            order_id: "binance-7".into(),
            timings: Timings::default(),
        }
    }

    fn state(status: VenueStatus, filled: &str, notional: &str, fee: &str) -> VenueOrder {
        VenueOrder {
            client_order_id: Some("trd-1".into()),
            venue_order_id: Some("42".into()),
            symbol: None,
            venue_symbol: "BTCUSDT".into(),
            status,
            filled: dec(filled),
            filled_notional: dec(notional),
            fee: dec(fee),
            reason: None,
            ts: 5,
        }
    }

    #[test]
    fn part_fills_report_the_difference_and_the_cumulative_figures() {
        let order = routed("3");
        let first = state(VenueStatus::Open, "1", "99", "0.1");
        let (reports, after, working) = progress(&order, &Progress::default(), &first, false)
            .unwrap()
            .unwrap();
        assert!(working);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].status, OrderStatus::PartiallyFilled);
        assert_eq!(*reports[0].last_fill_quantity.unwrap(), dec("1"));
        assert_eq!(*reports[0].last_fill_price.unwrap(), dec("99"));
        assert_eq!(*reports[0].fee, dec("0.1"));
        // The same state again (a duplicate event): nothing.
        assert!(progress(&order, &after, &first, false).unwrap().is_none());
        // The rest at 102: the new part at 102, average over all, only the new fee.
        let done = state(VenueStatus::Filled, "3", "303", "0.4");
        let (reports, after, working) = progress(&order, &after, &done, false).unwrap().unwrap();
        assert!(!working);
        assert_eq!(reports[0].status, OrderStatus::Filled);
        assert_eq!(*reports[0].last_fill_quantity.unwrap(), dec("2"));
        assert_eq!(*reports[0].last_fill_price.unwrap(), dec("102"));
        assert_eq!(*reports[0].filled_quantity, dec("3"));
        assert_eq!(*reports[0].avg_fill_price.unwrap(), dec("101"));
        assert_eq!(*reports[0].fee, dec("0.3"));
        assert_eq!(after.filled, dec("3"));
    }

    #[test]
    fn the_venues_id_is_told_once_where_only_it_finds_the_order_and_carried_after() {
        let order = routed("3");
        let sent = VenueOrder {
            venue_order_id: Some("5sig".into()),
            ..state(VenueStatus::Open, "0", "0", "0")
        };
        // A venue that finds orders by our id: nothing new to report.
        assert!(progress(&order, &Progress::default(), &sent, false)
            .unwrap()
            .is_none());
        // One that cannot: an ACCEPTED that carries the id, stored with it (a distinct
        // EXEC message id from the written-ahead ACCEPTED's).
        let (reports, after, working) = progress(&order, &Progress::default(), &sent, true)
            .unwrap()
            .unwrap();
        assert!(working);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].status, OrderStatus::Accepted);
        assert_eq!(reports[0].venue_order_id.as_deref(), Some("5sig"));
        let written_ahead = reports::routed(&order, OrderStatus::Accepted, None);
        assert_ne!(
            reports::message_id("c-1", &reports[0]),
            reports::message_id("c-1", &written_ahead)
        );
        assert_eq!(after.venue_order_id.as_deref(), Some("5sig"));
        assert_eq!(Progress::of_report(&reports[0]), after);
        // Told once; the fill after carries it, though the venue's state does not.
        assert!(progress(&order, &after, &sent, true).unwrap().is_none());
        let filled = state(VenueStatus::Filled, "3", "300", "0.3");
        let (reports, _, working) = progress(&order, &after, &filled, true).unwrap().unwrap();
        assert!(!working);
        assert_eq!(reports[0].status, OrderStatus::Filled);
        assert_eq!(reports[0].venue_order_id.as_deref(), Some("5sig"));
    }

    #[test]
    fn a_cancel_after_a_part_fill_reports_the_fill_then_the_cancel() {
        let order = routed("3");
        let cancelled = VenueOrder {
            reason: Some("cancelled by operator".into()),
            ..state(VenueStatus::Cancelled, "1", "100", "0")
        };
        let (reports, _, working) = progress(&order, &Progress::default(), &cancelled, false)
            .unwrap()
            .unwrap();
        assert!(!working);
        let statuses: Vec<_> = reports.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [OrderStatus::PartiallyFilled, OrderStatus::Cancelled]
        );
        assert_eq!(*reports[1].filled_quantity, dec("1"));
        assert_eq!(*reports[1].fee, Decimal::ZERO);
        assert_eq!(reports[1].reason.as_deref(), Some("cancelled by operator"));
    }

    #[test]
    fn a_rejection_without_fills_is_rejected_and_with_fills_expires_the_rest() {
        let order = routed("3");
        let rejected = state(VenueStatus::Rejected, "0", "0", "0");
        let (reports, _, _) = progress(&order, &Progress::default(), &rejected, false)
            .unwrap()
            .unwrap();
        assert_eq!(reports[0].status, OrderStatus::Rejected);
        let before = Progress {
            filled: dec("1"),
            notional: dec("100"),
            fee: Decimal::ZERO,
            venue_order_id: None,
        };
        let (reports, _, _) = progress(
            &order,
            &before,
            &VenueOrder {
                status: VenueStatus::Rejected,
                ..state(VenueStatus::Rejected, "1", "100", "0")
            },
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(reports[0].status, OrderStatus::Expired);
    }

    #[test]
    fn impossible_states_are_refused_not_reported() {
        let order = routed("3");
        let before = Progress {
            filled: dec("2"),
            notional: dec("200"),
            fee: Decimal::ZERO,
            venue_order_id: None,
        };
        assert!(progress(
            &order,
            &before,
            &state(VenueStatus::Open, "1", "100", "0"),
            false
        )
        .unwrap_err()
        .starts_with("stale"));
        assert!(progress(
            &order,
            &before,
            &state(VenueStatus::Open, "4", "400", "0"),
            false
        )
        .unwrap_err()
        .starts_with("overfill"));
        // More filled but no more notional: no price can be derived.
        assert!(progress(
            &order,
            &before,
            &state(VenueStatus::Open, "3", "200", "0"),
            false
        )
        .is_err());
    }

    #[test]
    fn venue_problems_are_told_once_per_window_and_counted_beyond_the_cap() {
        let start = Instant::now();
        let mut problems = Problems::new(start);
        assert!(problems.admit("c-1", "malformed fill tid 2"));
        // The same again (a snapshot, a catch-up): not told again in the window.
        assert!(!problems.admit("c-1", "malformed fill tid 2"));
        // Another fill, another order: told.
        assert!(problems.admit("c-1", "malformed fill tid 3"));
        assert!(problems.admit("c-2", "malformed fill tid 2"));
        assert_eq!(problems.roll(start + PROBLEM_WINDOW / 2), None);
        // Beyond the cap: counted, not told.
        for n in 0..PROBLEMS_TOLD + 5 {
            problems.admit("the stream", &format!("malformed frame {n}"));
        }
        assert_eq!(problems.told.len(), PROBLEMS_TOLD);
        assert!(!problems.admit("the stream", "malformed frame 999"));
        // The window over: the count, and the same problem told again.
        assert_eq!(problems.roll(start + PROBLEM_WINDOW), Some(9));
        let (of, why) = Problems::untold_refusal(9);
        assert_eq!(of, "");
        assert!(
            why.starts_with("9 more venue problems in 10 min, beyond the 20 told"),
            "{why}"
        );
        assert!(problems.admit("c-1", "malformed fill tid 2"));
        assert_eq!(problems.roll(start + PROBLEM_WINDOW * 2), None);
    }

    #[test]
    fn the_latest_state_is_the_most_filled_or_the_final_one() {
        let mut slot = None;
        keep_latest(&mut slot, state(VenueStatus::Open, "2", "200", "0"));
        keep_latest(&mut slot, state(VenueStatus::Open, "1", "100", "0"));
        assert_eq!(slot.as_ref().unwrap().filled, dec("2"));
        keep_latest(&mut slot, state(VenueStatus::Cancelled, "2", "200", "0"));
        assert_eq!(slot.as_ref().unwrap().status, VenueStatus::Cancelled);
        keep_latest(&mut slot, state(VenueStatus::Open, "2", "200", "0"));
        assert_eq!(slot.as_ref().unwrap().status, VenueStatus::Cancelled);
    }
}
