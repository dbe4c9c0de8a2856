//! Execution algorithms (#14): an order with `algo` (TWAP or ICEBERG) is a PARENT that
//! execution works as CHILD orders, each one an ordinary order through the ordinary path.
//!
//! - The parent is accepted without a risk check (it is never sent anywhere): its
//!   ACCEPTED report (with `algo` progress) is stored in EXEC and the ORDERS message
//!   acked; from then on its schedule runs here.
//! - Each child is PUBLISHED to ORDERS (`orders.submit.<parent's agent>.<symbol>`,
//!   Nats-Msg-Id = the child's id) and comes back through the consumer like any order: its
//!   symbol's lane, risk's pre-trade check, the venue, its reports. Its id is derived from
//!   the parent's ([`child_id`]), so a child published twice (a restart between the publish
//!   and its record) is dropped by the ORDERS duplicate window or, later, by the ledger.
//! - Children's reports carry `parent_order_id` and `child_kind = SLICE` and hold the
//!   fills. The parent's reports carry NO fill (`last_fill_*` none, fee 0): its
//!   `filled_quantity` / `avg_fill_price` are the children's totals, and `algo` its
//!   progress. So whoever books fills from `last_fill_quantity` (risk, backtests) books
//!   each fill once, from the child.
//! - TWAP: `slices` children, child k (1-based) due at start + (k-1) * duration / slices
//!   (start = when execution received the parent); quantities an exact decimal split at
//!   [`QUANTITY_DECIMALS`] (or the quantity's own, if finer), the last taking the
//!   remainder. A child that expires part-filled (a MARKET child on a thin book, an IOC
//!   child) does not stop the schedule; the parent ends FILLED, or EXPIRED with what filled.
//! - ICEBERG: one child of `display_quantity` (the last one the remainder) at a time; the
//!   next when the previous one is final. A child ending without any fill stops it (EXPIRED:
//!   nothing to fill against), as do [`MAX_ICEBERG_CHILDREN`] children.
//! - A child REJECTED (risk, intake, venue) or FAILED, or cancelled by someone else, stops
//!   the algo: the parent ends CANCELLED naming the child and its reason.
//! - A cancel of the parent, or the kill switch, stops it: no new child, the working ones
//!   are cancelled; a "stopping" report (the parent's status so far, with the reason) is
//!   stored first, so a restart finishes the stop instead of resuming. The parent ends
//!   CANCELLED with what filled.
//! - Restart: the parent's open report (from the ledger) and its children's latest reports
//!   (the ledger keeps them while the parent is open, in snapshots too) rebuild the state;
//!   the schedule resumes from the first child not known.

use std::collections::{BTreeMap, HashMap};

use moonbus_common::{
    AlgoKind, AlgoProgress, ChildKind, ClientOrderId, ExecutionReport, NonNegativeMoney,
    OrderRequest, OrderStatus, PositiveMoney, Timings,
};
use rust_decimal::{Decimal, RoundingStrategy};
use sha2::{Digest, Sha256};

use crate::ledger::is_final;
use crate::reports;

/// Children's quantities are multiples of 10^-8 by default (`[execution]
/// algo_quantity_decimals`), or of the parent quantity's own last digit, if finer: the
/// paper venue has no lot size; a live venue's is set there.
pub const QUANTITY_DECIMALS: u32 = 8;
/// An iceberg stops (EXPIRED) after this many children.
pub const MAX_ICEBERG_CHILDREN: u32 = 1000;
/// A child publish that failed is tried again after this long.
const PUBLISH_RETRY_NS: u64 = 1_000_000_000;
/// Average fill prices are rounded to this many decimals.
const AVG_DECIMALS: u32 = 12;
/// Between a parent's id and its child's index.
const SEPARATOR: &str = "__s";
const MAX_ID_CHARS: usize = 64;

/// Child `index` (1-based) of `parent`: `<parent>__s<index>`; when that would be longer
/// than 64 characters, the start of the parent's id, a hash of all of it, and the suffix.
pub fn child_id(parent: &ClientOrderId, index: u32) -> ClientOrderId {
    let suffix = format!("{SEPARATOR}{index}");
    let plain = format!("{parent}{suffix}");
    let id = if plain.len() <= MAX_ID_CHARS {
        plain
    } else {
        let digest = Sha256::digest(parent.as_str().as_bytes());
        let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let keep = MAX_ID_CHARS - suffix.len() - hash.len() - 1;
        // Ids are ASCII ([A-Za-z0-9_-]), so any byte index is a char boundary.
        format!("{}-{hash}{suffix}", &parent.as_str()[..keep])
    };
    ClientOrderId::try_from(id).expect("a child id is made of id characters and fits")
}

/// The index of a child id (`...__s<digits>`), or None for any other id.
pub fn child_index(id: &str) -> Option<u32> {
    let (_, digits) = id.rsplit_once(SEPARATOR)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The decimals of a parent's children: `decimals`, or the quantity's own if finer.
pub fn quantity_scale(quantity: Decimal, decimals: u32) -> u32 {
    quantity.scale().max(decimals)
}

/// `quantity` in `slices` parts at `scale` decimals: equal parts rounded down, the last
/// one taking the remainder, so they add up exactly. Err if a part would be zero.
pub fn twap_split(quantity: Decimal, slices: u32, scale: u32) -> Result<Vec<Decimal>, String> {
    if slices == 0 {
        return Err("no slices".into());
    }
    let base = quantity
        .checked_div(Decimal::from(slices))
        .ok_or("the split does not fit a decimal")?
        .round_dp_with_strategy(scale, RoundingStrategy::ToZero);
    if base <= Decimal::ZERO {
        return Err(format!(
            "quantity {quantity} is too small for {slices} slices of at least {}",
            Decimal::new(1, scale)
        ));
    }
    let others = base
        .checked_mul(Decimal::from(slices - 1))
        .ok_or("the split does not fit a decimal")?;
    let last = (quantity - others).normalize();
    let mut parts = vec![base.normalize(); slices as usize - 1];
    parts.push(last);
    Ok(parts)
}

/// When TWAP child `k` (0-based) is due: `start + k * duration / slices`, in ns.
pub fn slice_ts(start_ts: u64, duration_ms: u64, slices: u32, k: u32) -> u64 {
    let offset = u128::from(duration_ms) * 1_000_000 * u128::from(k) / u128::from(slices.max(1));
    start_ts.saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Twap {
        quantities: Vec<Decimal>,
        times: Vec<u64>,
    },
    Iceberg {
        display: Decimal,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Child {
    id: ClientOrderId,
    /// None: published, no report stored yet.
    status: Option<OrderStatus>,
    filled: Decimal,
    avg: Option<Decimal>,
}

impl Child {
    fn working(&self) -> bool {
        self.status.is_none_or(|s| !is_final(s))
    }

    fn notional(&self) -> Decimal {
        self.avg
            .and_then(|avg| avg.checked_mul(self.filled))
            .unwrap_or(Decimal::ZERO)
    }
}

/// One parent order being worked.
#[derive(Debug, Clone)]
pub struct Algo {
    pub parent: OrderRequest,
    /// The parent's `<venue>-<ORDERS sequence>`.
    pub order_id: String,
    pub timings: Timings,
    kind: AlgoKind,
    plan: Plan,
    /// Children published (acknowledged by ORDERS), the highest index.
    sent: u32,
    /// A child publish is in flight.
    publishing: bool,
    /// A failed publish is tried again from then on (ns).
    retry_at: u64,
    children: BTreeMap<u32, Child>,
    /// The quantity of each child made in this process (a child arriving in ORDERS must
    /// carry it).
    expected: BTreeMap<u32, PositiveMoney>,
    /// Stopping: no new child; the final status and reason once no child works.
    stop: Option<(OrderStatus, String)>,
    /// A parent report is being stored (one at a time, so they stay in order).
    recording: bool,
    /// The parent's last stored report (its message id), to skip repeats.
    last_stored: Option<String>,
    /// The final report is stored: nothing more happens.
    ended: bool,
}

impl Algo {
    /// A new parent received at `start_ts` (ns): its plan, or why it cannot be worked.
    pub fn new(
        parent: OrderRequest,
        order_id: String,
        timings: Timings,
        start_ts: u64,
        decimals: u32,
    ) -> Result<Self, String> {
        let spec = parent
            .algo
            .clone()
            .ok_or("algo_invalid: the order has no algo")?;
        let quantity = *parent.quantity;
        let scale = quantity_scale(quantity, decimals);
        let plan = match spec.kind {
            AlgoKind::Twap => {
                let (Some(duration_ms), Some(slices)) = (spec.duration_ms, spec.slices) else {
                    return Err("algo_invalid: a TWAP algo needs duration_ms and slices".into());
                };
                let quantities = twap_split(quantity, slices, scale)
                    .map_err(|why| format!("algo_invalid: {why}"))?;
                let times = (0..slices)
                    .map(|k| slice_ts(start_ts, duration_ms, slices, k))
                    .collect();
                Plan::Twap { quantities, times }
            }
            AlgoKind::Iceberg => {
                let Some(display) = spec.display_quantity else {
                    return Err("algo_invalid: an ICEBERG algo needs display_quantity".into());
                };
                let display = display.round_dp_with_strategy(scale, RoundingStrategy::ToZero);
                if display <= Decimal::ZERO || display >= quantity {
                    return Err(format!(
                        "algo_invalid: display_quantity {display} must be above zero and below the quantity {quantity}"
                    ));
                }
                Plan::Iceberg { display }
            }
        };
        Ok(Self {
            parent,
            order_id,
            timings,
            kind: spec.kind,
            plan,
            sent: 0,
            publishing: false,
            retry_at: 0,
            children: BTreeMap::new(),
            expected: BTreeMap::new(),
            stop: None,
            recording: false,
            last_stored: None,
            ended: false,
        })
    }

    pub fn id(&self) -> &ClientOrderId {
        &self.parent.client_order_id
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_some()
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    fn filled(&self) -> Decimal {
        self.children.values().map(|c| c.filled).sum()
    }

    fn remaining(&self) -> Decimal {
        *self.parent.quantity - self.filled()
    }

    fn working_child(&self) -> Option<&Child> {
        self.children.values().rev().find(|c| c.working())
    }

    /// The children working (published and not final), to cancel when stopping.
    pub fn working(&self) -> Vec<ClientOrderId> {
        self.children
            .values()
            .filter(|c| c.working())
            .map(|c| c.id.clone())
            .collect()
    }

    /// The quantity of the next child, if the schedule has one (whenever it is due).
    fn next_quantity(&self) -> Option<Decimal> {
        match &self.plan {
            Plan::Twap { quantities, .. } => quantities.get(self.sent as usize).copied(),
            Plan::Iceberg { display } => {
                let remaining = self.remaining();
                (remaining > Decimal::ZERO && self.sent < MAX_ICEBERG_CHILDREN)
                    .then(|| (*display).min(remaining))
            }
        }
    }

    /// When the next child is due (ns), if one can be sent now or later.
    pub fn next_due(&self) -> Option<u64> {
        if self.ended || self.stop.is_some() || self.publishing {
            return None;
        }
        self.next_quantity()?;
        let at = match &self.plan {
            Plan::Twap { times, .. } => times[self.sent as usize],
            Plan::Iceberg { .. } => {
                if self.working_child().is_some() {
                    return None;
                }
                0
            }
        };
        Some(at.max(self.retry_at))
    }

    /// The next child if it is due at `now`; the algo then waits for its publish.
    pub fn take_due(&mut self, now: u64) -> Option<(u32, OrderRequest)> {
        if self.next_due()? > now {
            return None;
        }
        let quantity = PositiveMoney::new(self.next_quantity()?).ok()?;
        let index = self.sent + 1;
        self.publishing = true;
        self.expected.insert(index, quantity);
        let child = OrderRequest {
            client_order_id: child_id(self.id(), index),
            quantity,
            ts: now,
            algo: None,
            protection: None,
            ..self.parent.clone()
        };
        Some((index, child))
    }

    /// Whether `order` is, but for its `ts`, the child this algo would send next.
    fn is_next(&self, order: &OrderRequest) -> bool {
        let Some(quantity) = self
            .next_quantity()
            .and_then(|q| PositiveMoney::new(q).ok())
        else {
            return false;
        };
        let expected = OrderRequest {
            client_order_id: child_id(self.id(), self.sent.saturating_add(1)),
            quantity,
            ts: order.ts,
            algo: None,
            protection: None,
            ..self.parent.clone()
        };
        *order == expected
    }

    /// The publish of child `index` ended (`ok`: ORDERS has it).
    pub fn published(&mut self, index: u32, ok: bool, now: u64) {
        self.publishing = false;
        if ok {
            self.note_child(index);
        } else {
            self.retry_at = now.saturating_add(PUBLISH_RETRY_NS);
        }
    }

    fn note_child(&mut self, index: u32) {
        self.sent = self.sent.max(index);
        let id = child_id(self.id(), index);
        self.children.entry(index).or_insert(Child {
            id,
            status: None,
            filled: Decimal::ZERO,
            avg: None,
        });
    }

    /// A stored report of child `index`.
    pub fn on_child(&mut self, index: u32, report: &ExecutionReport) {
        self.note_child(index);
        let Some(child) = self.children.get_mut(&index) else {
            return;
        };
        if child.status.is_some_and(is_final) {
            return;
        }
        child.status = Some(report.status);
        child.filled = *report.filled_quantity;
        child.avg = report.avg_fill_price.map(|p| *p);
        let id = child.id.clone();
        let why = report.reason.as_deref().unwrap_or("no reason given");
        let unfilled = child.filled.is_zero();
        if self.stop.is_some() {
            return;
        }
        match report.status {
            OrderStatus::Rejected | OrderStatus::Failed => {
                self.stop = Some((
                    OrderStatus::Cancelled,
                    format!("child {id} {}: {why}", report.status),
                ));
            }
            OrderStatus::Cancelled => {
                self.stop = Some((
                    OrderStatus::Cancelled,
                    format!("child {id} was cancelled: {why}"),
                ));
            }
            OrderStatus::Expired if unfilled && self.kind == AlgoKind::Iceberg => {
                self.stop = Some((
                    OrderStatus::Expired,
                    format!("child {id} expired unfilled: {why}"),
                ));
            }
            _ => {}
        }
    }

    /// Stop: no new child; the working ones are to be cancelled. The first stop stands.
    pub fn stop(&mut self, status: OrderStatus, reason: String) {
        if self.stop.is_none() && !self.ended {
            self.stop = Some((status, reason));
        }
    }

    /// Whether nothing works and nothing more will be sent.
    fn finished(&self) -> bool {
        if self.publishing || self.working_child().is_some() {
            return false;
        }
        self.stop.is_some() || self.next_quantity().is_none()
    }

    fn progress(&self) -> AlgoProgress {
        AlgoProgress {
            kind: self.kind,
            slices_total: match &self.plan {
                Plan::Twap { quantities, .. } => Some(quantities.len() as u64),
                Plan::Iceberg { .. } => None,
            },
            slices_sent: u64::from(self.sent),
            slices_filled: self
                .children
                .values()
                .filter(|c| c.status == Some(OrderStatus::Filled))
                .count() as u64,
            working_child_id: self.working_child().map(|c| c.id.clone()),
            // An iceberg's next child is due "now" (0) once the previous one ends: none shown.
            next_slice_ts: self.next_due().filter(|&ts| ts > 0),
        }
    }

    /// The parent's report of its state now: final once nothing works and nothing more
    /// will be sent; while stopping, its status so far with the stop's reason.
    pub fn report(&self) -> ExecutionReport {
        let filled = self.filled();
        let quantity = *self.parent.quantity;
        let (status, reason) = if self.finished() {
            if filled == quantity {
                (OrderStatus::Filled, None)
            } else if let Some((status, reason)) = &self.stop {
                (
                    *status,
                    Some(format!("{reason}; filled {filled} of {quantity}")),
                )
            } else if self.sent >= MAX_ICEBERG_CHILDREN && self.kind == AlgoKind::Iceberg {
                (
                    OrderStatus::Expired,
                    Some(format!(
                        "{MAX_ICEBERG_CHILDREN} children sent; filled {filled} of {quantity}"
                    )),
                )
            } else {
                (
                    OrderStatus::Expired,
                    Some(format!("the schedule ended; filled {filled} of {quantity}")),
                )
            }
        } else {
            let status = if filled > Decimal::ZERO {
                OrderStatus::PartiallyFilled
            } else {
                OrderStatus::Accepted
            };
            let reason = self
                .stop
                .as_ref()
                .map(|(_, reason)| format!("{STOPPING}{reason}"));
            (status, reason)
        };
        let mut report = reports::for_order(
            &self.parent,
            Some(&self.order_id),
            status,
            self.timings.clone(),
        );
        report.reason = reason;
        report.filled_quantity =
            NonNegativeMoney::new(filled.normalize()).unwrap_or(NonNegativeMoney::ZERO);
        report.avg_fill_price = self.avg_fill_price(filled);
        report.algo = Some(self.progress());
        report
    }

    fn avg_fill_price(&self, filled: Decimal) -> Option<PositiveMoney> {
        if filled.is_zero() {
            return None;
        }
        let notional: Decimal = self.children.values().map(Child::notional).sum();
        let avg = notional
            .checked_div(filled)?
            .round_dp(AVG_DECIMALS)
            .normalize();
        PositiveMoney::new(avg).ok()
    }

    /// The next parent report to store, if the state changed since the last one and
    /// none is being stored.
    pub fn next_report(&mut self) -> Option<ExecutionReport> {
        if self.ended || self.recording {
            return None;
        }
        let report = self.report();
        let id = reports::message_id(self.id().as_str(), &report);
        if self.last_stored.as_deref() == Some(id.as_str()) {
            return None;
        }
        self.recording = true;
        Some(report)
    }

    /// A parent report is being stored (one at a time).
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// A parent report's write ended (`stored` or not).
    pub fn recorded(&mut self, report: &ExecutionReport, stored: bool) {
        self.recording = false;
        if stored {
            self.last_stored = Some(reports::message_id(self.id().as_str(), report));
            if is_final(report.status) {
                self.ended = true;
            }
        }
    }
}

/// What the parent's reason starts with while it is stopping (not final yet).
pub const STOPPING: &str = "stopping: ";

/// A child's publish to ORDERS, done (a job's answer).
#[derive(Debug)]
pub struct Published {
    pub parent: ClientOrderId,
    pub index: u32,
    pub child: ClientOrderId,
    pub result: Result<(), String>,
}

/// Every algo of this process: the working ones, those whose ACCEPTED is being stored,
/// and which parent each child belongs to.
#[derive(Debug, Default)]
pub struct Algos {
    /// Shutting down: nothing new is sent.
    pub halted: bool,
    /// `[execution] algo_quantity_decimals` (0 until set: then QUANTITY_DECIMALS).
    pub decimals: Option<u32>,
    /// Live-venue children whose cancel was sent.
    pub cancel_sent: std::collections::HashSet<ClientOrderId>,
    active: HashMap<ClientOrderId, Algo>,
    /// Accepted, the ACCEPTED report not stored yet.
    pending: HashMap<ClientOrderId, Algo>,
    /// Child id -> parent id (kept after the parent ended, for late reports).
    parent_of: HashMap<ClientOrderId, ClientOrderId>,
}

impl Algos {
    /// The decimals children are split at.
    pub fn decimals(&self) -> u32 {
        self.decimals.unwrap_or(QUANTITY_DECIMALS)
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.pending.is_empty()
    }

    /// A new parent, until its ACCEPTED report is stored.
    pub fn add_pending(&mut self, algo: Algo) {
        self.pending.insert(algo.id().clone(), algo);
    }

    /// Its ACCEPTED report is stored: it starts.
    pub fn activate(&mut self, id: &ClientOrderId, accepted: &ExecutionReport) {
        if let Some(mut algo) = self.pending.remove(id) {
            algo.last_stored = Some(reports::message_id(id.as_str(), accepted));
            self.active.insert(id.clone(), algo);
        }
    }

    /// A pending parent that ended before its ACCEPTED was stored: it never starts.
    pub fn drop_pending(&mut self, id: &ClientOrderId) {
        self.pending.remove(id);
    }

    pub fn is_pending(&self, id: &ClientOrderId) -> bool {
        self.pending.contains_key(id)
    }

    /// A parent working here (not ended).
    pub fn get_mut(&mut self, id: &ClientOrderId) -> Option<&mut Algo> {
        self.active.get_mut(id).filter(|a| !a.ended)
    }

    pub fn get(&self, id: &ClientOrderId) -> Option<&Algo> {
        self.active.get(id).filter(|a| !a.ended)
    }

    /// Forget an ended parent (its children's ids still name it: late reports are tagged,
    /// and a late child is refused `parent_ended`).
    pub fn prune(&mut self, id: &ClientOrderId) {
        if self.active.get(id).is_some_and(|a| a.ended) {
            self.active.remove(id);
        }
    }

    /// The working parents' ids.
    pub fn ids(&self) -> Vec<ClientOrderId> {
        self.active
            .iter()
            .filter(|(_, a)| !a.ended)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A restored parent (restart) with its children's latest reports.
    pub fn restore(
        &mut self,
        mut algo: Algo,
        open: &ExecutionReport,
        children: &[ExecutionReport],
    ) {
        let id = algo.id().clone();
        let from_report = open.algo.as_ref().map_or(0, |p| p.slices_sent);
        for index in 1..=u32::try_from(from_report).unwrap_or(0) {
            algo.note_child(index);
        }
        let mut children: Vec<&ExecutionReport> = children.iter().collect();
        children.sort_by_key(|r| r.ts);
        for report in children {
            let Some(index) = report
                .client_order_id
                .as_ref()
                .and_then(|c| child_index(c.as_str()))
            else {
                continue;
            };
            if report.client_order_id.as_ref() == Some(&child_id(&id, index)) {
                algo.on_child(index, report);
            }
        }
        if let Some(reason) = open
            .reason
            .as_deref()
            .and_then(|r| r.strip_prefix(STOPPING))
        {
            algo.stop(OrderStatus::Cancelled, reason.to_string());
        }
        algo.last_stored = Some(reports::message_id(id.as_str(), open));
        for index in 1..=algo.sent {
            self.parent_of.insert(child_id(&id, index), id.clone());
        }
        self.active.insert(id, algo);
    }

    /// The earliest time a child is due (ns).
    pub fn next_wake(&self) -> Option<u64> {
        self.active.values().filter_map(Algo::next_due).min()
    }

    /// Every child due at `now`: (parent, index, child order), each parent now waiting
    /// for its publish.
    pub fn take_due(&mut self, now: u64) -> Vec<(ClientOrderId, u32, OrderRequest)> {
        let mut due = Vec::new();
        for (id, algo) in &mut self.active {
            if let Some((index, child)) = algo.take_due(now) {
                self.parent_of
                    .insert(child.client_order_id.clone(), id.clone());
                due.push((id.clone(), index, child));
            }
        }
        due
    }

    /// A child whose outcome the ledger forgot (ledger.rs: two weeks after it ended): no
    /// report of it can come any more, and its parent ended long before.
    pub fn forget(&mut self, id: &ClientOrderId) {
        self.parent_of.remove(id);
        self.cancel_sent.remove(id);
    }

    /// The parent of a child id, if it is one of ours.
    pub fn parent_of(&self, child: &ClientOrderId) -> Option<&ClientOrderId> {
        self.parent_of.get(child)
    }

    /// Children's reports name their parent (`parent_order_id`, `child_kind` SLICE).
    pub fn tag(&self, reports: &mut [ExecutionReport]) {
        for report in reports {
            let parent = report
                .client_order_id
                .as_ref()
                .and_then(|id| self.parent_of.get(id));
            if let Some(parent) = parent {
                report.parent_order_id = Some(parent.clone());
                report.child_kind = Some(ChildKind::Slice);
            }
        }
    }

    /// Whether a child order may go on: a child id belongs to a parent working here, is
    /// the child that parent published, and the parent is not stopping. Any other order
    /// whose id looks like a child's (`...__s<n>`) is refused: those ids are reserved.
    /// After a restart, a child published just before the crash, whose parent's progress
    /// (`slices_sent`) was not stored, is admitted if it is exactly the next child of a
    /// working algo ([`Algos::admit_unrecorded_child`]); the algo then counts it as sent.
    pub fn admit_child(&mut self, order: &OrderRequest) -> Result<(), ChildRefusal> {
        let id = &order.client_order_id;
        let Some(index) = child_index(id.as_str()) else {
            return Ok(());
        };
        let Some(parent) = self.parent_of.get(id) else {
            return self.admit_unrecorded_child(index, order);
        };
        let Some(algo) = self.get(parent) else {
            return Err(ChildRefusal::Rejected(format!(
                "parent_ended: the algo {parent} of {id} has ended"
            )));
        };
        if order.agent != algo.parent.agent {
            return Err(ChildRefusal::Forged(format!(
                "orphan_slice: {id} is named like a child of algo {parent}, which agent {} did not send",
                order.agent
            )));
        }
        if let Some((_, reason)) = &algo.stop {
            return Err(ChildRefusal::Rejected(format!(
                "parent_stopping: the algo {parent} is stopping: {reason}"
            )));
        }
        let expected = &algo.parent;
        let quantity_differs = algo
            .expected
            .get(&index)
            .is_some_and(|q| *q != order.quantity);
        if index > algo.sent + 1
            || quantity_differs
            || order.side != expected.side
            || order.order_type != expected.order_type
            || order.limit_price != expected.limit_price
            || order.venue != expected.venue
        {
            return Err(ChildRefusal::Rejected(format!(
                "not_a_slice: {id} is not the child algo {parent} sent"
            )));
        }
        Ok(())
    }

    /// A child id no algo here sent (`parent_of` does not know it). After a restart it may
    /// be the child published to ORDERS just before the crash, whose parent's report with
    /// `slices_sent` was not stored: refused, the algo would stay short of it (its own
    /// publish of that child later is a duplicate ORDERS drops). So it is admitted, and
    /// counted as sent, when it is exactly the child a working (not stopping) algo would
    /// send next: index `sent + 1`, the algo's agent, and the order that algo makes (side,
    /// type, price, venue, quantity ...: all but `ts`). Anything else is refused as an
    /// orphan (no report). A child already in the ledger never gets here (a duplicate).
    fn admit_unrecorded_child(
        &mut self,
        index: u32,
        order: &OrderRequest,
    ) -> Result<(), ChildRefusal> {
        let id = &order.client_order_id;
        let next = self.active.values_mut().find(|algo| {
            algo.sent.checked_add(1) == Some(index) && child_id(algo.id(), index) == *id
        });
        let Some(algo) = next.filter(|algo| algo.next_due().is_some() && algo.is_next(order))
        else {
            return Err(ChildRefusal::Forged(format!(
                "orphan_slice: {id} is named like an algo's child (…{SEPARATOR}<n>) but no working algo sent it"
            )));
        };
        algo.note_child(index);
        let parent = algo.id().clone();
        tracing::warn!(parent = %parent, child = %id, "algo child published before a restart, its parent's progress not stored: counted as sent");
        self.parent_of.insert(id.clone(), parent);
        Ok(())
    }
}

/// Why an order named like an algo's child may not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildRefusal {
    /// REJECTED, reported as any refused order.
    Rejected(String),
    /// No working algo of its agent sent it: refused without a report (engine.rs), since a
    /// REJECTED report would put the id in the ledger and the genuine child, sent later
    /// under it, would be dropped as its duplicate (the algo waiting for it for ever). The
    /// risk agent and the gateway read every parent's id on exec.report.>.
    Forged(String),
}

impl ChildRefusal {
    pub fn reason(&self) -> &str {
        match self {
            ChildRefusal::Rejected(reason) | ChildRefusal::Forged(reason) => reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{AgentName, ExecAlgo, OrderType, Side, Symbol, TimeInForce, Venue};

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn decs(texts: &[&str]) -> Vec<Decimal> {
        texts.iter().map(|t| dec(t)).collect()
    }

    fn parent(id: &str, quantity: &str, algo: ExecAlgo) -> OrderRequest {
        OrderRequest {
            client_order_id: ClientOrderId::try_from(id).unwrap(),
            agent: AgentName::try_from("trading").unwrap(),
            symbol: Symbol::try_from("BTC-USD").unwrap(),
            venue: Venue::sim(),
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
            algo: Some(algo),
        }
    }

    fn twap(duration_ms: u64, slices: u32) -> ExecAlgo {
        ExecAlgo {
            kind: AlgoKind::Twap,
            duration_ms: Some(duration_ms),
            slices: Some(slices),
            display_quantity: None,
        }
    }

    fn iceberg(display: &str) -> ExecAlgo {
        ExecAlgo {
            kind: AlgoKind::Iceberg,
            duration_ms: None,
            slices: None,
            display_quantity: Some(display.parse().unwrap()),
        }
    }

    fn child_report(
        child: &OrderRequest,
        status: OrderStatus,
        filled: &str,
        price: Option<&str>,
    ) -> ExecutionReport {
        let mut report = reports::for_order(child, Some("sim-9"), status, Timings::default());
        report.filled_quantity = filled.parse().unwrap();
        report.avg_fill_price = price.map(|p| p.parse().unwrap());
        if matches!(status, OrderStatus::Rejected | OrderStatus::Failed) {
            report.reason = Some("max_order_notional: too big".into());
        }
        report
    }

    #[test]
    fn twap_split_is_exact_and_the_last_slice_takes_the_remainder() {
        assert_eq!(
            twap_split(dec("1"), 3, 8).unwrap(),
            decs(&["0.33333333", "0.33333333", "0.33333334"])
        );
        assert_eq!(
            twap_split(dec("0.5"), 6, 8)
                .unwrap()
                .iter()
                .sum::<Decimal>(),
            dec("0.5")
        );
        assert_eq!(
            twap_split(dec("10"), 4, 8).unwrap(),
            decs(&["2.5", "2.5", "2.5", "2.5"])
        );
        // A coarser step: whole units, the remainder on the last.
        assert_eq!(twap_split(dec("10"), 3, 0).unwrap(), decs(&["3", "3", "4"]));
        assert_eq!(twap_split(dec("7"), 2, 0).unwrap(), decs(&["3", "4"]));
        // Too small to give every slice one step.
        let err = twap_split(dec("0.00000002"), 3, 8).unwrap_err();
        assert!(
            err.contains("too small for 3 slices of at least 0.00000001"),
            "{err}"
        );
        // Every part sums back exactly, for many quantities and counts.
        for (q, n) in [
            ("97000.123456789", 7),
            ("0.001", 500),
            ("99999999999999.99999999", 13),
        ] {
            let q = dec(q);
            let parts = twap_split(q, n, quantity_scale(q, 8)).unwrap();
            assert_eq!(parts.len(), n as usize);
            assert_eq!(parts.iter().sum::<Decimal>(), q);
            assert!(parts.iter().all(|p| *p > Decimal::ZERO));
            assert!(parts.iter().all(|p| p.scale() <= quantity_scale(q, 8)));
        }
    }

    #[test]
    fn the_quantity_keeps_its_own_precision_when_finer() {
        assert_eq!(quantity_scale(dec("1.5"), 8), 8);
        assert_eq!(quantity_scale(dec("1.0000000001"), 8), 10);
        assert_eq!(
            twap_split(
                dec("1.0000000001"),
                2,
                quantity_scale(dec("1.0000000001"), 8)
            )
            .unwrap(),
            decs(&["0.5", "0.5000000001"])
        );
    }

    #[test]
    fn a_venue_lot_size_is_respected() {
        // [execution] algo_quantity_decimals = 3 (a venue whose step is 0.001).
        let order = parent("lot", "0.01", twap(3_000, 3));
        let mut algo = Algo::new(order, "sim-1".into(), Timings::default(), 0, 3).unwrap();
        let mut quantities = Vec::new();
        for k in 0..3u32 {
            let (index, child) = algo.take_due(u64::from(k) * 1_000_000_000).unwrap();
            algo.published(index, true, 0);
            quantities.push(child.quantity.to_string());
        }
        assert_eq!(quantities, ["0.003", "0.003", "0.004"]);
        let err = Algo::new(
            parent("lot2", "0.002", twap(3_000, 3)),
            "sim-1".into(),
            Timings::default(),
            0,
            3,
        )
        .unwrap_err();
        assert!(
            err.contains("too small for 3 slices of at least 0.001"),
            "{err}"
        );
    }

    #[test]
    fn slices_are_due_evenly_over_the_duration() {
        let times: Vec<u64> = (0..4).map(|k| slice_ts(1_000, 2_000, 4, k)).collect();
        assert_eq!(times, [1_000, 500_001_000, 1_000_001_000, 1_500_001_000]);
        // No overflow at the bounds.
        assert_eq!(slice_ts(u64::MAX - 5, 86_400_000, 500, 499), u64::MAX);
    }

    #[test]
    fn child_ids_are_deterministic_and_fit() {
        let parent = ClientOrderId::try_from("trd-1").unwrap();
        assert_eq!(child_id(&parent, 3).as_str(), "trd-1__s3");
        assert_eq!(child_index("trd-1__s3"), Some(3));
        for bad in ["trd-1", "trd-1__s", "trd-1__s03", "trd-1__sx", "trd-1__s-1"] {
            assert_eq!(child_index(bad), None, "{bad}");
        }
        let long = ClientOrderId::try_from("a".repeat(64)).unwrap();
        let other = ClientOrderId::try_from(format!("{}b", "a".repeat(63))).unwrap();
        let child = child_id(&long, 500);
        assert!(child.as_str().len() <= 64, "{child}");
        assert_eq!(child_id(&long, 500), child, "deterministic");
        assert_ne!(
            child_id(&other, 500),
            child,
            "the hash tells long ids apart"
        );
        assert_eq!(child_index(child.as_str()), Some(500));
    }

    #[test]
    fn a_twap_sends_its_slices_on_schedule_and_fills() {
        let order = parent("p1", "1", twap(3_000, 3));
        let mut algo = Algo::new(order, "sim-1".into(), Timings::default(), 10, 8).unwrap();
        assert_eq!(algo.report().status, OrderStatus::Accepted);
        assert_eq!(algo.next_due(), Some(10));
        let (i1, c1) = algo.take_due(10).unwrap();
        assert_eq!(
            (
                i1,
                c1.client_order_id.as_str(),
                c1.quantity.to_string().as_str()
            ),
            (1, "p1__s1", "0.33333333")
        );
        assert_eq!(c1.order_type, OrderType::Limit);
        assert_eq!(c1.limit_price, algo.parent.limit_price);
        assert!(c1.algo.is_none());
        assert_eq!(algo.take_due(10), None, "waits for the publish");
        algo.published(1, true, 10);
        assert_eq!(algo.next_due(), Some(1_000_000_010));
        assert_eq!(algo.take_due(1_000_000_009), None);
        algo.on_child(
            1,
            &child_report(&c1, OrderStatus::Filled, "0.33333333", Some("100")),
        );
        let progress = algo.report();
        assert_eq!(progress.status, OrderStatus::PartiallyFilled);
        assert_eq!(
            progress.last_fill_quantity, None,
            "the parent carries no fill"
        );
        assert_eq!(progress.fee, NonNegativeMoney::ZERO);
        let p = progress.algo.unwrap();
        assert_eq!(
            (p.slices_total, p.slices_sent, p.slices_filled),
            (Some(3), 1, 1)
        );
        let (_, c2) = algo.take_due(1_000_000_010).unwrap();
        algo.published(2, true, 0);
        algo.on_child(
            2,
            &child_report(&c2, OrderStatus::Filled, "0.33333333", Some("101")),
        );
        let (_, c3) = algo.take_due(2_000_000_010).unwrap();
        assert_eq!(c3.quantity.to_string(), "0.33333334");
        algo.published(3, true, 0);
        assert_eq!(
            algo.report()
                .algo
                .unwrap()
                .working_child_id
                .unwrap()
                .as_str(),
            "p1__s3"
        );
        algo.on_child(
            3,
            &child_report(&c3, OrderStatus::Filled, "0.33333334", Some("102")),
        );
        let last = algo.report();
        assert_eq!(last.status, OrderStatus::Filled);
        assert_eq!(last.filled_quantity.to_string(), "1");
        // (33.333333 + 33.6666663 + 34.00000068) / 1
        assert_eq!(last.avg_fill_price.unwrap().to_string(), "101.00000001");
        assert_eq!(last.algo.unwrap().next_slice_ts, None);
    }

    /// A TWAP parent `name` whose ACCEPTED is being stored, and its ACCEPTED report.
    fn pending(name: &str) -> (Algos, ClientOrderId, ExecutionReport) {
        let mut algos = Algos::default();
        let order = parent(name, "1", twap(3_000, 3));
        let algo = Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap();
        let (id, accepted) = (algo.id().clone(), algo.report());
        algos.add_pending(algo);
        (algos, id, accepted)
    }

    #[test]
    fn a_child_is_forgotten_with_its_outcome() {
        let (mut algos, id, accepted) = pending("p11");
        algos.activate(&id, &accepted);
        let child = algos.take_due(0)[0].2.clone();
        let child_id = child.client_order_id.clone();
        algos.cancel_sent.insert(child_id.clone());
        assert_eq!(algos.parent_of(&child_id), Some(&id));
        algos.forget(&child_id);
        assert_eq!(algos.parent_of(&child_id), None);
        assert!(!algos.cancel_sent.contains(&child_id));
        let mut reports = vec![child_report(&child, OrderStatus::Filled, "0.1", Some("1"))];
        algos.tag(&mut reports);
        assert_eq!(
            reports[0].parent_order_id, None,
            "no longer known as a child"
        );
    }

    #[test]
    fn a_pending_parent_that_ended_before_it_started_is_dropped() {
        let (mut algos, id, accepted) = pending("p12");
        assert!(!algos.is_empty());
        algos.drop_pending(&id);
        assert!(algos.is_empty());
        algos.activate(&id, &accepted);
        assert!(
            algos.get(&id).is_none(),
            "a late ACCEPTED does not start it"
        );
        assert!(algos.take_due(0).is_empty());
    }

    #[test]
    fn a_refused_child_stops_the_algo_and_names_it() {
        let order = parent("p2", "1", twap(3_000, 3));
        let mut algo = Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap();
        let (_, c1) = algo.take_due(0).unwrap();
        algo.published(1, true, 0);
        algo.on_child(1, &child_report(&c1, OrderStatus::Rejected, "0", None));
        assert_eq!(algo.next_due(), None, "no new child");
        let last = algo.report();
        assert_eq!(last.status, OrderStatus::Cancelled);
        let reason = last.reason.unwrap();
        assert!(
            reason.contains("child p2__s1 REJECTED: max_order_notional: too big"),
            "{reason}"
        );
        assert!(reason.ends_with("filled 0 of 1"), "{reason}");
    }

    #[test]
    fn a_cancel_waits_for_the_working_child_then_ends_with_what_filled() {
        let order = parent("p3", "1", twap(3_000, 3));
        let mut algo = Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap();
        let (_, c1) = algo.take_due(0).unwrap();
        algo.published(1, true, 0);
        algo.on_child(
            1,
            &child_report(&c1, OrderStatus::Filled, "0.33333333", Some("100")),
        );
        let (_, c2) = algo.take_due(1_000_000_000).unwrap();
        algo.published(2, true, 0);
        algo.on_child(2, &child_report(&c2, OrderStatus::Accepted, "0", None));
        algo.stop(OrderStatus::Cancelled, "cancelled by trading".into());
        assert_eq!(algo.working(), vec![child_id(algo.id(), 2)]);
        let stopping = algo.report();
        assert_eq!(stopping.status, OrderStatus::PartiallyFilled);
        assert_eq!(
            stopping.reason.as_deref(),
            Some("stopping: cancelled by trading")
        );
        let mut cancelled = child_report(&c2, OrderStatus::Cancelled, "0", None);
        cancelled.reason = Some("cancelled by the algo".into());
        algo.on_child(2, &cancelled);
        let last = algo.report();
        assert_eq!(last.status, OrderStatus::Cancelled);
        assert_eq!(
            last.reason.as_deref(),
            Some("cancelled by trading; filled 0.33333333 of 1")
        );
        assert_eq!(last.filled_quantity.to_string(), "0.33333333");
    }

    #[test]
    fn an_iceberg_sends_one_child_at_a_time() {
        let mut order = parent("p4", "1", iceberg("0.4"));
        order.order_type = OrderType::Market;
        order.limit_price = None;
        let mut algo = Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap();
        // Due "now": no next_slice_ts of 0 (1970) in its progress.
        assert_eq!(algo.report().algo.unwrap().next_slice_ts, None);
        let (_, c1) = algo.take_due(5).unwrap();
        assert_eq!(c1.quantity.to_string(), "0.4");
        algo.published(1, true, 5);
        assert_eq!(algo.next_due(), None, "the first child works");
        // A thin book: part filled, the rest expired; the next child takes what is left.
        algo.on_child(
            1,
            &child_report(&c1, OrderStatus::Expired, "0.3", Some("100")),
        );
        let (_, c2) = algo.take_due(6).unwrap();
        assert_eq!(c2.quantity.to_string(), "0.4");
        algo.published(2, true, 6);
        algo.on_child(
            2,
            &child_report(&c2, OrderStatus::Filled, "0.4", Some("100")),
        );
        let (_, c3) = algo.take_due(7).unwrap();
        assert_eq!(c3.quantity.to_string(), "0.3", "the remainder");
        algo.published(3, true, 7);
        algo.on_child(
            3,
            &child_report(&c3, OrderStatus::Filled, "0.3", Some("100")),
        );
        let last = algo.report();
        assert_eq!(last.status, OrderStatus::Filled);
        let p = last.algo.unwrap();
        assert_eq!(
            (p.slices_total, p.slices_sent, p.slices_filled),
            (None, 3, 2)
        );
        assert_eq!(p.next_slice_ts, None);
        // A child that expires unfilled stops an iceberg.
        let mut order = parent("p5", "1", iceberg("0.4"));
        order.order_type = OrderType::Market;
        order.limit_price = None;
        let mut algo = Algo::new(order, "sim-2".into(), Timings::default(), 0, 8).unwrap();
        let (_, c1) = algo.take_due(0).unwrap();
        algo.published(1, true, 0);
        algo.on_child(1, &child_report(&c1, OrderStatus::Expired, "0", None));
        assert_eq!(algo.report().status, OrderStatus::Expired);
    }

    #[test]
    fn plans_that_cannot_work_are_refused() {
        let err = Algo::new(
            parent("p6", "0.00000002", twap(3_000, 3)),
            "sim-1".into(),
            Timings::default(),
            0,
            8,
        )
        .unwrap_err();
        assert!(
            err.starts_with("algo_invalid: quantity 0.00000002 is too small"),
            "{err}"
        );
        let err = Algo::new(
            parent("p7", "1", iceberg("0.000000001")),
            "sim-1".into(),
            Timings::default(),
            0,
            8,
        )
        .unwrap_err();
        assert!(err.starts_with("algo_invalid: display_quantity 0"), "{err}");
        assert!(
            err.contains("must be above zero and below the quantity 1"),
            "{err}"
        );
    }

    #[test]
    fn restore_resumes_from_the_children_known() {
        let order = parent("p8", "1", twap(3_000, 3));
        let mut first = Algo::new(order.clone(), "sim-1".into(), Timings::default(), 0, 8).unwrap();
        let (_, c1) = first.take_due(0).unwrap();
        first.published(1, true, 0);
        let open = first.report();
        let (_, c2) = first.take_due(1_000_000_000).unwrap();
        // Crash: child 2 was published (and filled) but the parent's report says 1 sent.
        let reports = vec![
            child_report(&c1, OrderStatus::Filled, "0.33333333", Some("100")),
            child_report(&c2, OrderStatus::Filled, "0.33333333", Some("100")),
        ];
        let mut algos = Algos::default();
        let again = Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap();
        algos.restore(again, &open, &reports);
        let id = ClientOrderId::try_from("p8").unwrap();
        let algo = algos.get(&id).unwrap();
        assert_eq!(algo.sent, 2);
        assert_eq!(algo.report().filled_quantity.to_string(), "0.66666666");
        assert_eq!(algos.next_wake(), Some(2_000_000_000));
        let due = algos.take_due(2_000_000_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].2.client_order_id.as_str(), "p8__s3");
        assert_eq!(due[0].2.quantity.to_string(), "0.33333334");
        // A stopping parent stays stopped.
        let mut stopping = first.clone();
        stopping.stop(OrderStatus::Cancelled, "cancelled by operator".into());
        let open = stopping.report();
        let mut algos = Algos::default();
        let order = stopping.parent.clone();
        algos.restore(
            Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap(),
            &open,
            &[],
        );
        assert!(algos.get(&id).unwrap().is_stopping());
        assert_eq!(algos.next_wake(), None);
    }

    #[test]
    fn after_a_restart_the_child_published_before_the_crash_is_admitted_once() {
        // Child 2 went into ORDERS, then execution died before the parent's report saying
        // 2 sent was stored: the restored algo has 1 sent, and child 2 comes back from
        // ORDERS before its own (duplicate) publish.
        let order = parent("p10", "1", twap(3_000, 3));
        let mut first = Algo::new(order.clone(), "sim-1".into(), Timings::default(), 0, 8).unwrap();
        let (_, c1) = first.take_due(0).unwrap();
        first.published(1, true, 0);
        let open = first.report();
        let (_, c2) = first.take_due(1_000_000_000).unwrap();
        let filled = [child_report(
            &c1,
            OrderStatus::Filled,
            "0.33333333",
            Some("100"),
        )];
        let restored = || {
            let mut algos = Algos::default();
            let again = Algo::new(order.clone(), "sim-1".into(), Timings::default(), 0, 8).unwrap();
            algos.restore(again, &open, &filled);
            algos
        };
        let id = ClientOrderId::try_from("p10").unwrap();
        let orphan = |refused: Result<(), ChildRefusal>| matches!(refused, Err(ChildRefusal::Forged(r)) if r.starts_with("orphan_slice: "));

        // Not the child the algo would send next: refused as before, nothing counted.
        let mut algos = restored();
        let mut foreign = c2.clone();
        foreign.agent = AgentName::try_from("risk").unwrap();
        assert!(orphan(algos.admit_child(&foreign)), "another agent's");
        let (_, c3) = {
            let mut ahead = first.clone();
            ahead.published(2, true, 0);
            ahead.take_due(2_000_000_000).unwrap()
        };
        assert!(orphan(algos.admit_child(&c3)), "not the next index");
        for change in [
            |o: &mut OrderRequest| o.side = Side::Sell,
            |o: &mut OrderRequest| o.quantity = "0.5".parse().unwrap(),
            |o: &mut OrderRequest| o.limit_price = Some("101".parse().unwrap()),
            |o: &mut OrderRequest| o.venue = Venue::try_from("other").unwrap(),
            |o: &mut OrderRequest| o.order_type = OrderType::Market,
        ] {
            let mut other = c2.clone();
            change(&mut other);
            assert!(orphan(algos.admit_child(&other)), "{other:?}");
        }
        assert_eq!(algos.get(&id).unwrap().sent, 1);
        assert!(algos.parent_of(&c2.client_order_id).is_none());

        // The child itself: admitted, counted as sent, its reports name the parent.
        assert_eq!(algos.admit_child(&c2), Ok(()));
        let algo = algos.get(&id).unwrap();
        assert_eq!(algo.sent, 2);
        assert_eq!(algo.report().algo.unwrap().slices_sent, 2);
        let mut reports = vec![child_report(
            &c2,
            OrderStatus::Filled,
            "0.33333333",
            Some("100"),
        )];
        algos.tag(&mut reports);
        assert_eq!(reports[0].parent_order_id.as_ref(), Some(&id));
        algos.get_mut(&id).unwrap().on_child(2, &reports[0]);
        // Never doubled: the algo does not send child 2 again; child 3 goes on schedule.
        assert!(algos.take_due(1_999_999_999).is_empty());
        let due = algos.take_due(2_000_000_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].2.client_order_id.as_str(), "p10__s3");

        // A parent that is not working: stopping, or ended.
        let mut algos = restored();
        let algo = algos.get_mut(&id).unwrap();
        algo.stop(OrderStatus::Cancelled, "cancelled by trading".into());
        assert!(orphan(algos.admit_child(&c2)), "stopping");
        let algo = algos.get_mut(&id).unwrap();
        let last = algo.report();
        assert_eq!(last.status, OrderStatus::Cancelled);
        algo.recorded(&last, true);
        assert!(orphan(algos.admit_child(&c2)), "ended");
        assert!(orphan(Algos::default().admit_child(&c2)), "unknown");
    }

    #[test]
    fn only_the_childs_own_orders_are_admitted() {
        let mut algos = Algos::default();
        let order = parent("p9", "1", twap(3_000, 3));
        let algo = Algo::new(order, "sim-1".into(), Timings::default(), 0, 8).unwrap();
        let id = algo.id().clone();
        algos.add_pending(algo);
        let accepted = algos.pending[&id].report();
        algos.activate(&id, &accepted);
        let due = algos.take_due(0);
        let child = due[0].2.clone();
        assert_eq!(algos.admit_child(&child), Ok(()));
        let mut reports = vec![child_report(&child, OrderStatus::Filled, "0.1", Some("1"))];
        algos.tag(&mut reports);
        assert_eq!(reports[0].parent_order_id.as_ref(), Some(&id));
        assert_eq!(reports[0].child_kind, Some(ChildKind::Slice));
        let mut forged = child.clone();
        forged.side = Side::Sell;
        assert!(algos
            .admit_child(&forged)
            .unwrap_err()
            .reason()
            .starts_with("not_a_slice: "));
        let mut forged = child.clone();
        forged.quantity = "0.9".parse().unwrap();
        assert!(algos
            .admit_child(&forged)
            .unwrap_err()
            .reason()
            .starts_with("not_a_slice: "));
        let mut orphan = child.clone();
        orphan.client_order_id = ClientOrderId::try_from("x__s1").unwrap();
        assert!(matches!(
            algos.admit_child(&orphan),
            Err(ChildRefusal::Forged(r)) if r.starts_with("orphan_slice: ")
        ));
        let mut foreign = child.clone();
        foreign.agent = AgentName::try_from("risk").unwrap();
        assert!(matches!(
            algos.admit_child(&foreign),
            Err(ChildRefusal::Forged(r)) if r.starts_with("orphan_slice: ")
        ));
        let plain = parent("plain-1", "1", twap(3_000, 3));
        assert_eq!(algos.admit_child(&plain), Ok(()));
        algos
            .get_mut(&id)
            .unwrap()
            .stop(OrderStatus::Cancelled, "kill switch engaged".into());
        assert!(algos
            .admit_child(&child)
            .unwrap_err()
            .reason()
            .starts_with("parent_stopping: "));
        // Ended and forgotten: its late children are refused, their reports still tagged.
        let algo = algos.get_mut(&id).unwrap();
        algo.published(1, true, 0);
        algo.on_child(1, &child_report(&child, OrderStatus::Cancelled, "0", None));
        let last = algo.report();
        assert_eq!(last.status, OrderStatus::Cancelled);
        algo.recorded(&last, true);
        algos.prune(&id);
        assert!(algos.get(&id).is_none() && algos.ids().is_empty());
        assert!(algos
            .admit_child(&child)
            .unwrap_err()
            .reason()
            .starts_with("parent_ended: "));
        let mut late = vec![child_report(&child, OrderStatus::Rejected, "0", None)];
        algos.tag(&mut late);
        assert_eq!(late[0].parent_order_id.as_ref(), Some(&id));
    }
}
