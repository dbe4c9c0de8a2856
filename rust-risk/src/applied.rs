//! The reports risk has applied, by order, so that a report sent again is not booked
//! twice: (client_order_id, status, filled_quantity) names a report. EXEC's sequence
//! already skips a redelivery (exec_feed.rs); this catches the same report published
//! again under a new sequence.
//!
//! A final order's reports are forgotten once it has been final for as long as ORDERS
//! keeps an order (`ORDERS` max_age, 7 days): without that the set, and every snapshot
//! with it, grew by a report for every report, forever (~110 bytes each: ~1 GB a day at
//! 50 orders/s). Execution publishes nothing for an order after its final report (its
//! ledger keeps the final status a week longer than this), and an order whose message
//! ORDERS no longer holds cannot be delivered to it again, so no resent report comes that
//! late. An order that is not final is never forgotten. The dates: moonbus_common::horizon.

use std::collections::HashMap;

use moonbus_common::horizon::Ended;
use moonbus_common::{ClientOrderId, NonNegativeMoney, OrderStatus};

use crate::open_orders::is_terminal;

pub type ReportKey = (OrderStatus, NonNegativeMoney);

#[derive(Debug)]
pub struct Applied {
    by_order: HashMap<ClientOrderId, Vec<ReportKey>>,
    /// When each final order's final report was applied.
    finals: Ended,
}

impl Applied {
    /// Final orders are remembered for `keep_ns` after their final report.
    pub fn new(keep_ns: u64) -> Self {
        Self {
            by_order: HashMap::new(),
            finals: Ended::new(keep_ns),
        }
    }

    pub fn contains(&self, id: &ClientOrderId, key: &ReportKey) -> bool {
        self.by_order.get(id).is_some_and(|keys| keys.contains(key))
    }

    /// A report applied at `now_ns` (a final status dates the order's end).
    pub fn insert(&mut self, id: &ClientOrderId, key: ReportKey, now_ns: u64) {
        self.by_order.entry(id.clone()).or_default().push(key);
        if is_terminal(key.0) {
            self.finals.push(id.clone(), now_ns);
        }
    }

    /// Forget the orders final for longer than `keep_ns` at `now_ns` (the engine's clock:
    /// never ahead of risk's own, so a report dated ahead cannot make it forget early).
    /// Returns how many were forgotten.
    pub fn forget_old(&mut self, now_ns: u64) -> usize {
        let expired = self.finals.expired(now_ns);
        (expired.iter())
            .filter(|id| self.by_order.remove(*id).is_some())
            .count()
    }

    /// How many orders are remembered.
    #[cfg(test)]
    fn orders(&self) -> usize {
        self.by_order.len()
    }

    /// Every report remembered (for a snapshot), unsorted.
    pub fn reports(&self) -> Vec<(ClientOrderId, OrderStatus, NonNegativeMoney)> {
        self.by_order
            .iter()
            .flat_map(|(id, keys)| keys.iter().map(move |(s, f)| (id.clone(), *s, *f)))
            .collect()
    }

    /// When each final order became final (for a snapshot), oldest first; `None` while
    /// the orders of a snapshot from before the dates are not dated yet (no report since
    /// the restore: the dates are then all still unknown, and stay so).
    pub fn finals(&self) -> Option<Vec<(ClientOrderId, u64)>> {
        self.finals.dates()
    }

    /// Restore from a snapshot: its reports, and when its final orders became final
    /// (`None`: a snapshot from before they were dated, whose orders with a final report
    /// are dated by the next clock).
    pub fn restore(
        &mut self,
        reports: Vec<(ClientOrderId, OrderStatus, NonNegativeMoney)>,
        finals: Option<Vec<(ClientOrderId, u64)>>,
    ) {
        self.by_order.clear();
        let dated = finals.is_some();
        self.finals.restore(finals.unwrap_or_default());
        for (id, status, filled) in reports {
            if !dated && is_terminal(status) {
                self.finals.push_undated(id.clone());
            }
            self.by_order.entry(id).or_default().push((status, filled));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    const DAY: u64 = 86_400_000_000_000;

    fn id(s: &str) -> ClientOrderId {
        ClientOrderId::try_from(s.to_string()).unwrap()
    }

    fn filled(q: i64) -> NonNegativeMoney {
        NonNegativeMoney::new(Decimal::from(q)).unwrap()
    }

    #[test]
    fn a_final_order_is_forgotten_only_after_the_horizon() {
        let mut applied = Applied::new(7 * DAY);
        let (a, b) = (id("a"), id("b"));
        applied.insert(&a, (OrderStatus::Accepted, filled(0)), 0);
        applied.insert(&a, (OrderStatus::Filled, filled(1)), DAY);
        applied.insert(&b, (OrderStatus::Accepted, filled(0)), DAY);
        assert_eq!(applied.forget_old(8 * DAY), 0, "exactly 7 days: still kept");
        assert!(applied.contains(&a, &(OrderStatus::Filled, filled(1))));
        assert_eq!(applied.forget_old(8 * DAY + 1), 1);
        assert!(!applied.contains(&a, &(OrderStatus::Filled, filled(1))));
        assert!(!applied.contains(&a, &(OrderStatus::Accepted, filled(0))));
        // An order that is not final stays, however old.
        assert_eq!(applied.forget_old(1000 * DAY), 0);
        assert!(applied.contains(&b, &(OrderStatus::Accepted, filled(0))));
        assert_eq!(applied.orders(), 1);
    }

    #[test]
    fn a_clock_that_goes_back_forgets_nothing() {
        let mut applied = Applied::new(DAY);
        applied.insert(&id("a"), (OrderStatus::Filled, filled(1)), 5 * DAY);
        assert_eq!(applied.forget_old(0), 0);
        assert_eq!(applied.orders(), 1);
    }

    #[test]
    fn a_snapshot_keeps_the_dates_and_an_old_one_is_dated_at_the_next_clock() {
        let mut applied = Applied::new(DAY);
        applied.insert(&id("old"), (OrderStatus::Filled, filled(1)), 0);
        applied.insert(&id("new"), (OrderStatus::Cancelled, filled(0)), DAY);
        applied.insert(&id("open"), (OrderStatus::Accepted, filled(0)), DAY);

        let mut restored = Applied::new(DAY);
        restored.restore(applied.reports(), applied.finals());
        assert_eq!(
            restored.forget_old(DAY + 1),
            1,
            "the old order's date was kept"
        );
        assert_eq!(restored.orders(), 2);

        // A snapshot from before the dates: its final orders are dated by the next clock.
        let mut undated = Applied::new(DAY);
        undated.restore(applied.reports(), None);
        assert_eq!(undated.finals(), None, "not dated yet");
        assert_eq!(undated.forget_old(10 * DAY), 0);
        assert_eq!(undated.finals().map(|f| f.len()), Some(2));
        assert_eq!(undated.forget_old(11 * DAY), 0);
        assert_eq!(undated.forget_old(11 * DAY + 1), 2);
        assert!(undated.contains(&id("open"), &(OrderStatus::Accepted, filled(0))));
    }
}
