//! What happened to every client_order_id, rebuilt on start from the latest snapshot
//! (snapshot.rs) plus the EXEC stream after it. This is what makes execution idempotent
//! beyond the streams' 10-minute duplicate window and across restarts: an id with a
//! final report is not executed again for [`outcomes_kept_ns`] (two weeks) after it ended.
//!
//! Then its outcome is forgotten: kept for good, every order's outcome grew the ledger
//! and every snapshot of it without bound (~60-80 bytes an order). Two weeks is twice as
//! long as ORDERS keeps an order (so no delivery of the order can come after it), and a
//! week longer than risk remembers the order's reports (rust-risk applied.rs): an id sent
//! again after it is a new order to both, never a duplicate to one of them only. A venue
//! asks less: Binance's clientOrderId is unique among open orders only. An order that is
//! not final is never forgotten.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use moonbus_common::horizon::{orders_kept_ns, Ended};
use moonbus_common::streams::DirectReader;
use moonbus_common::{
    bus, now_ns, subjects, ClientOrderId, ExecutionReport, NonNegativeMoney, OrderRequest,
    OrderStatus,
};

pub fn is_final(status: OrderStatus) -> bool {
    !matches!(status, OrderStatus::Accepted | OrderStatus::PartiallyFilled)
}

/// How long a final order's outcome is kept: twice as long as ORDERS keeps an order.
pub fn outcomes_kept_ns() -> u64 {
    orders_kept_ns().saturating_mul(2)
}

/// A final order, its status and when it ended (ns).
pub type Final = (ClientOrderId, OrderStatus, u64);

#[derive(Debug)]
pub struct Ledger {
    last_status: HashMap<ClientOrderId, OrderStatus>,
    /// The latest report of every order without a final one: ACCEPTED (resting), or
    /// PARTIALLY_FILLED when a crash or a failed write came between an order's reports.
    open: HashMap<ClientOrderId, ExecutionReport>,
    /// Resting orders as a snapshot kept them, so they rest again without ORDERS.
    restored: HashMap<ClientOrderId, OrderRequest>,
    /// The latest report of each child of an algo parent without a final report, by
    /// parent (algo.rs rebuilds a parent's progress from them after a restart).
    children: HashMap<ClientOrderId, HashMap<ClientOrderId, ExecutionReport>>,
    /// The ids whose reports are agent `protection`'s: only those are a protection's exits
    /// (protect.rs); another agent's order may carry an exit's id.
    by_protection: HashSet<ClientOrderId>,
    /// When each final order ended (its final report's time).
    ended: Ended,
    /// The newest report time recorded (never ahead of this process's clock): outcomes
    /// are forgotten on it, so a rebuild forgets as the run did and nothing is forgotten
    /// while no report comes.
    clock: u64,
    /// Ids forgotten since [`Ledger::take_forgotten`] last asked: what else is kept per
    /// order (protections' exits, algo children) is forgotten with them.
    forgotten: Vec<ClientOrderId>,
    /// What filled of each final order that ended neither FILLED nor without a fill (a part
    /// fill, then EXPIRED or CANCELLED): a protection restored after a crash needs it to
    /// guard that part (protect.rs). Forgotten with the outcome.
    part_filled: HashMap<ClientOrderId, NonNegativeMoney>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::with_horizon(outcomes_kept_ns())
    }
}

impl Ledger {
    /// A ledger that forgets a final order's outcome `keep_ns` after it ended.
    pub fn with_horizon(keep_ns: u64) -> Self {
        Self {
            last_status: HashMap::new(),
            open: HashMap::new(),
            restored: HashMap::new(),
            children: HashMap::new(),
            by_protection: HashSet::new(),
            ended: Ended::new(keep_ns),
            part_filled: HashMap::new(),
            clock: 0,
            forgotten: Vec::new(),
        }
    }

    pub fn status(&self, id: &ClientOrderId) -> Option<OrderStatus> {
        self.last_status.get(id).copied()
    }

    /// Remember a recorded report; a final status is never overwritten.
    pub fn record(&mut self, report: &ExecutionReport) {
        let Some(id) = &report.client_order_id else {
            return;
        };
        // A report dated ahead (a venue's clock) cannot make the ledger forget early.
        let at = report.ts.min(now_ns());
        self.clock = self.clock.max(at);
        self.forget_old();
        match self.last_status.get(id) {
            Some(&known) if is_final(known) => {}
            _ => {
                self.last_status.insert(id.clone(), report.status);
                self.record_child(id, report);
                if report
                    .agent
                    .as_ref()
                    .is_some_and(|a| a.as_str() == subjects::PROTECTION_AGENT)
                {
                    self.by_protection.insert(id.clone());
                }
                if is_final(report.status) {
                    if report.status != OrderStatus::Filled && !report.filled_quantity.is_zero() {
                        self.part_filled.insert(id.clone(), report.filled_quantity);
                    }
                    self.open.remove(id);
                    self.restored.remove(id);
                    self.children.remove(id);
                    self.ended.push(id.clone(), at);
                } else {
                    // The open report keeps the order's fees so far (a live order's part
                    // fills: its next update is the difference from them, router.rs).
                    let mut open = report.clone();
                    if let Some(before) = self.open.get(id) {
                        open.fee = before
                            .fee
                            .checked_add(*report.fee)
                            .and_then(|total| NonNegativeMoney::new(total).ok())
                            .unwrap_or(before.fee);
                    }
                    self.open.insert(id.clone(), open);
                }
            }
        }
    }

    /// Forget the outcomes of orders final for longer than the horizon at `clock`.
    fn forget_old(&mut self) {
        for id in self.ended.expired(self.clock) {
            if self.last_status.get(&id).is_some_and(|s| is_final(*s)) {
                self.last_status.remove(&id);
                self.by_protection.remove(&id);
                self.part_filled.remove(&id);
                self.forgotten.push(id);
            }
        }
    }

    /// The ids whose outcome was forgotten since the last call.
    pub fn take_forgotten(&mut self) -> Vec<ClientOrderId> {
        std::mem::take(&mut self.forgotten)
    }

    /// The outcomes for a snapshot: the orders without a final status, and each final
    /// one with when it ended, oldest first (each id once). While the final outcomes of a
    /// snapshot from before the dates are not dated yet (no report since the restore):
    /// every order in the first list, and `None`.
    pub fn outcomes(&self) -> (Vec<(ClientOrderId, OrderStatus)>, Option<Vec<Final>>) {
        let every = |final_too: bool| {
            (self.last_status.iter())
                .filter(|(_, s)| final_too || !is_final(**s))
                .map(|(id, s)| (id.clone(), *s))
                .collect()
        };
        match self.ended.dates() {
            None => (every(true), None),
            Some(dates) => {
                let finals = (dates.into_iter())
                    .filter_map(|(id, at)| {
                        let status = self
                            .last_status
                            .get(&id)
                            .copied()
                            .filter(|s| is_final(*s))?;
                        Some((id, status, at))
                    })
                    .collect();
                (every(false), Some(finals))
            }
        }
    }

    /// An algo child's report, kept while its parent is open.
    fn record_child(&mut self, id: &ClientOrderId, report: &ExecutionReport) {
        let Some(parent) = &report.parent_order_id else {
            return;
        };
        if self.last_status.get(parent).is_some_and(|s| !is_final(*s)) {
            self.children
                .entry(parent.clone())
                .or_default()
                .insert(id.clone(), report.clone());
        }
    }

    /// The latest reports of the children of an open parent.
    pub fn children_of(&self, parent: &ClientOrderId) -> Vec<ExecutionReport> {
        self.children
            .get(parent)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every kept child report (for a snapshot).
    pub fn child_reports(&self) -> Vec<ExecutionReport> {
        self.children
            .values()
            .flat_map(|c| c.values().cloned())
            .collect()
    }

    /// Child reports from a snapshot.
    pub fn add_child_reports(&mut self, reports: Vec<ExecutionReport>) {
        for report in reports {
            if let (Some(id), Some(parent)) = (&report.client_order_id, &report.parent_order_id) {
                self.children
                    .entry(parent.clone())
                    .or_default()
                    .insert(id.clone(), report);
            }
        }
    }

    /// Whether the order under `id` is agent `protection`'s (a protection's exit): false
    /// for another agent's, and for an id the ledger does not know.
    pub fn is_protections(&self, id: &ClientOrderId) -> bool {
        self.by_protection.contains(id)
    }

    /// The ids of agent `protection`'s orders (for a snapshot).
    pub fn protection_orders(&self) -> Vec<ClientOrderId> {
        self.by_protection.iter().cloned().collect()
    }

    /// Agent `protection`'s order ids from a snapshot.
    pub fn add_protection_orders(&mut self, ids: Vec<ClientOrderId>) {
        self.by_protection.extend(ids);
    }

    /// The latest report of an order that has no final one yet.
    pub fn open_report(&self, id: &ClientOrderId) -> Option<&ExecutionReport> {
        self.open.get(id)
    }

    /// What filled of an order not FILLED: its open report's, or, ended, its part fill
    /// (None: nothing filled, or an order the ledger does not know).
    pub fn filled_short(&self, id: &ClientOrderId) -> Option<NonNegativeMoney> {
        match self.open.get(id) {
            Some(open) => Some(open.filled_quantity),
            None => self.part_filled.get(id).copied(),
        }
    }

    /// The part fills of final orders (for a snapshot).
    pub fn part_fills(&self) -> Vec<(ClientOrderId, NonNegativeMoney)> {
        self.part_filled
            .iter()
            .map(|(id, q)| (id.clone(), *q))
            .collect()
    }

    /// Part fills from a snapshot (of orders whose outcome it keeps).
    pub fn add_part_fills(&mut self, fills: Vec<(ClientOrderId, NonNegativeMoney)>) {
        for (id, filled) in fills {
            if self.last_status.get(&id).is_some_and(|s| is_final(*s)) {
                self.part_filled.insert(id, filled);
            }
        }
    }

    /// The latest reports of all orders without a final one, oldest first.
    pub fn open_reports(&self) -> Vec<ExecutionReport> {
        let mut open: Vec<ExecutionReport> = self.open.values().cloned().collect();
        open.sort_by_key(|r| r.ts);
        open
    }

    pub fn len(&self) -> usize {
        self.last_status.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_status.is_empty()
    }

    /// From a snapshot: the outcomes ([`Ledger::outcomes`]: `finals` `None` for a
    /// snapshot from before the dates, whose final outcomes, in `outcomes`, are dated by
    /// the next report), the open orders' latest reports, and the resting orders.
    pub fn from_parts(
        outcomes: Vec<(ClientOrderId, OrderStatus)>,
        finals: Option<Vec<Final>>,
        open: Vec<ExecutionReport>,
        restored: Vec<(ClientOrderId, OrderRequest)>,
    ) -> Self {
        let mut ledger = Self::default();
        if let Some(finals) = finals {
            let mut dates = Vec::with_capacity(finals.len());
            for (id, status, at) in finals {
                ledger.last_status.insert(id.clone(), status);
                dates.push((id, at));
            }
            ledger.ended.restore(dates);
        }
        for (id, status) in outcomes {
            // Only a snapshot from before the dates has final outcomes here.
            if is_final(status) {
                ledger.ended.push_undated(id.clone());
            }
            ledger.last_status.insert(id, status);
        }
        ledger.open = (open.into_iter())
            .filter_map(|r| Some((r.client_order_id.clone()?, r)))
            .collect();
        ledger.restored = restored.into_iter().collect();
        ledger
    }

    /// A resting order kept by the snapshot the ledger was rebuilt from.
    pub fn restored_order(&self, id: &ClientOrderId) -> Option<&OrderRequest> {
        self.restored.get(id)
    }
}

/// `ledger` after reading the reports in the EXEC stream from `from_sequence` on (batched
/// direct gets: no consumer, see moonbus_common::streams).
pub async fn replay(
    client: &async_nats::Client,
    mut ledger: Ledger,
    from_sequence: u64,
) -> Result<Ledger> {
    let mut reader = DirectReader::new(
        client.clone(),
        subjects::EXEC_STREAM,
        subjects::ALL_REPORTS,
        from_sequence,
    );
    while let Some(message) = reader.next().await.context("reading the EXEC stream")? {
        match bus::decode::<ExecutionReport>(&message.payload) {
            Ok(report) => ledger.record(&report),
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "unreadable report in EXEC skipped")
            }
        }
    }
    tracing::info!(
        orders = ledger.len(),
        open = ledger.open.len(),
        from_sequence,
        "rebuilt order outcomes from EXEC"
    );
    Ok(ledger)
}

/// The ORDERS stream sequence inside an order_id `<venue>-<sequence>`.
pub fn orders_sequence(order_id: &str) -> Option<u64> {
    order_id.rsplit_once('-')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports;

    fn report(id: &str, status: OrderStatus) -> ExecutionReport {
        let mut r = reports::invalid(
            Some(ClientOrderId::try_from(id).unwrap()),
            None,
            "x".into(),
            1,
        );
        r.status = status;
        r
    }

    #[test]
    fn final_status_sticks() {
        let mut ledger = Ledger::default();
        let id = ClientOrderId::try_from("a").unwrap();
        ledger.record(&report("a", OrderStatus::Accepted));
        assert_eq!(ledger.status(&id), Some(OrderStatus::Accepted));
        assert_eq!(ledger.open_reports().len(), 1);
        ledger.record(&report("a", OrderStatus::PartiallyFilled));
        assert_eq!(
            ledger.open_report(&id).map(|r| r.status),
            Some(OrderStatus::PartiallyFilled)
        );
        ledger.record(&report("a", OrderStatus::Filled));
        assert!(ledger.open_report(&id).is_none());
        ledger.record(&report("a", OrderStatus::Accepted));
        assert_eq!(ledger.status(&id), Some(OrderStatus::Filled));
        ledger.record(&reports::invalid(None, None, "x".into(), 1));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn it_knows_which_orders_are_agent_protections() {
        let id = |s: &str| ClientOrderId::try_from(s).unwrap();
        let by = |id: &str, agent: &str| {
            let mut r = report(id, OrderStatus::Filled);
            r.agent = Some(moonbus_common::AgentName::try_from(agent).unwrap());
            r
        };
        let mut ledger = Ledger::default();
        ledger.record(&by("p-x1", "trading"));
        // The exit sent under that id afterwards is a duplicate: it changes nothing.
        ledger.record(&by("p-x1", "protection"));
        ledger.record(&by("p-x2", "protection"));
        assert!(!ledger.is_protections(&id("p-x1")));
        assert!(ledger.is_protections(&id("p-x2")));
        assert!(!ledger.is_protections(&id("p-x3")), "unknown");
    }

    const DAY: u64 = 86_400_000_000_000;

    fn at(id: &str, status: OrderStatus, ts: u64) -> ExecutionReport {
        let mut r = report(id, status);
        r.ts = ts;
        r
    }

    #[test]
    fn outcomes_are_kept_twice_as_long_as_orders_keeps_an_order() {
        assert_eq!(outcomes_kept_ns(), 14 * DAY);
        assert_eq!(outcomes_kept_ns(), 2 * orders_kept_ns());
    }

    #[test]
    fn a_final_outcome_is_forgotten_after_the_horizon_and_an_open_order_never() {
        let id = |s: &str| ClientOrderId::try_from(s).unwrap();
        let mut ledger = Ledger::with_horizon(7 * DAY);
        ledger.record(&at("a", OrderStatus::Accepted, 0));
        ledger.record(&at("a", OrderStatus::Filled, DAY));
        ledger.record(&at("rest", OrderStatus::Accepted, DAY));
        let mut exit = at("p-x1", OrderStatus::Filled, 2 * DAY);
        exit.agent = Some(moonbus_common::AgentName::try_from("protection").unwrap());
        ledger.record(&exit);
        // Exactly 7 days after "a" ended: still a duplicate.
        ledger.record(&at("b", OrderStatus::Rejected, 8 * DAY));
        assert_eq!(ledger.status(&id("a")), Some(OrderStatus::Filled));
        // A report after that (any order's) moves the clock: "a" is forgotten, and the
        // same id sent again is a new order.
        assert!(ledger.take_forgotten().is_empty());
        ledger.record(&at("c", OrderStatus::Accepted, 8 * DAY + 1));
        assert_eq!(ledger.status(&id("a")), None);
        assert_eq!(ledger.take_forgotten(), vec![id("a")]);
        assert!(ledger.take_forgotten().is_empty(), "taken");
        ledger.record(&at("a", OrderStatus::Accepted, 8 * DAY + 2));
        assert_eq!(ledger.status(&id("a")), Some(OrderStatus::Accepted));
        assert!(ledger.is_protections(&id("p-x1")));
        ledger.record(&at("c", OrderStatus::Cancelled, 9 * DAY + 1));
        assert_eq!(ledger.status(&id("p-x1")), None);
        assert!(
            !ledger.is_protections(&id("p-x1")),
            "forgotten with its outcome"
        );
        // A resting order stays, however old.
        ledger.record(&at("d", OrderStatus::Filled, 1000 * DAY));
        assert_eq!(ledger.status(&id("rest")), Some(OrderStatus::Accepted));
        assert_eq!(ledger.open_reports().len(), 2, "rest and the new a");
        assert_eq!(
            (ledger.status(&id("b")), ledger.status(&id("c"))),
            (None, None)
        );
        assert_eq!(ledger.len(), 3, "rest, a, d");
    }

    #[test]
    fn a_report_dated_ahead_forgets_nothing_early() {
        let id = ClientOrderId::try_from("a").unwrap();
        let mut ledger = Ledger::with_horizon(DAY);
        ledger.record(&at("a", OrderStatus::Filled, now_ns()));
        // A venue whose clock is years ahead: the ledger's clock stays at this process's.
        ledger.record(&at("b", OrderStatus::Filled, u64::MAX));
        ledger.record(&at("c", OrderStatus::Filled, now_ns() + 365 * DAY));
        assert_eq!(ledger.status(&id), Some(OrderStatus::Filled));
    }

    #[test]
    fn order_id_carries_the_orders_sequence() {
        assert_eq!(orders_sequence("sim-42"), Some(42));
        assert_eq!(orders_sequence("my_venue-7"), Some(7));
        assert_eq!(orders_sequence("sim"), None);
        assert_eq!(orders_sequence("sim-x"), None);
    }
}
