//! When orders ended, oldest first, so that what a service remembers about a final order
//! (risk: the reports it applied; execution: the order's outcome) is forgotten once the
//! order has been final for a set time. Without it those sets, and every snapshot with
//! them, grew by every order forever.
//!
//! The clock is the caller's (a service's engine clock, or the reports' during a rebuild,
//! so a backtest or a replay forgets on the time it replays). A clock that goes back
//! forgets nothing; an end dated before the newest one counts as the newest, so an order
//! is never forgotten earlier than `keep_ns` after the date it was given.

use std::collections::VecDeque;

use crate::ClientOrderId;

/// How long ORDERS keeps an order (its `max_age`, read from `proto/nats/jetstream.json`;
/// `u64::MAX` if it kept them forever). After that no message can deliver an order to
/// execution again. The spec is compiled in, so only a broken build fails to read it.
pub fn orders_kept_ns() -> u64 {
    match crate::streams::stream_config("ORDERS") {
        Ok(orders) if !orders.max_age.is_zero() => {
            u64::try_from(orders.max_age.as_nanos()).unwrap_or(u64::MAX)
        }
        _ => u64::MAX,
    }
}

#[derive(Debug)]
pub struct Ended {
    /// (when the order ended, the order), oldest first.
    queue: VecDeque<(u64, ClientOrderId)>,
    /// Ended orders from a snapshot that did not say when they ended: dated by the first
    /// clock after the restore (so forgotten `keep_ns` after it, never early).
    undated: Vec<ClientOrderId>,
    keep_ns: u64,
}

impl Ended {
    /// Orders are forgotten `keep_ns` after they ended.
    pub fn new(keep_ns: u64) -> Self {
        Self {
            queue: VecDeque::new(),
            undated: Vec::new(),
            keep_ns,
        }
    }

    /// `id` ended at `at_ns` (the caller says so once per end).
    pub fn push(&mut self, id: ClientOrderId, at_ns: u64) {
        let at = self
            .queue
            .back()
            .map_or(at_ns, |(last, _)| at_ns.max(*last));
        self.queue.push_back((at, id));
    }

    /// An ended order whose end date is not known (a snapshot from before the dates).
    pub fn push_undated(&mut self, id: ClientOrderId) {
        self.undated.push(id);
    }

    /// The orders ended more than `keep_ns` before `now_ns`, taken out, oldest first.
    pub fn expired(&mut self, now_ns: u64) -> Vec<ClientOrderId> {
        for id in std::mem::take(&mut self.undated) {
            self.push(id, now_ns);
        }
        let mut expired = Vec::new();
        while let Some((at, _)) = self.queue.front() {
            if now_ns.saturating_sub(*at) <= self.keep_ns {
                break;
            }
            if let Some((_, id)) = self.queue.pop_front() {
                expired.push(id);
            }
        }
        expired
    }

    /// When each order ended (for a snapshot), oldest first; `None` while orders of a
    /// snapshot from before the dates are not dated yet (no clock since the restore).
    pub fn dates(&self) -> Option<Vec<(ClientOrderId, u64)>> {
        self.undated.is_empty().then(|| {
            self.queue
                .iter()
                .map(|(at, id)| (id.clone(), *at))
                .collect()
        })
    }

    /// From a snapshot's `dates` (any order); what was here before is dropped.
    pub fn restore(&mut self, mut dates: Vec<(ClientOrderId, u64)>) {
        dates.sort_by_key(|(_, at)| *at);
        self.undated.clear();
        self.queue = dates.into_iter().map(|(id, at)| (at, id)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000_000_000;

    fn id(s: &str) -> ClientOrderId {
        ClientOrderId::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn orders_are_kept_as_long_as_orders_keeps_an_order() {
        assert_eq!(orders_kept_ns(), 7 * DAY);
    }

    #[test]
    fn an_order_expires_only_after_the_horizon_and_once() {
        let mut ended = Ended::new(7 * DAY);
        ended.push(id("a"), DAY);
        ended.push(id("b"), 2 * DAY);
        assert!(ended.expired(8 * DAY).is_empty(), "exactly 7 days: kept");
        assert_eq!(ended.expired(8 * DAY + 1), vec![id("a")]);
        assert!(ended.expired(8 * DAY + 1).is_empty());
        assert_eq!(ended.expired(100 * DAY), vec![id("b")]);
        assert_eq!(ended.dates(), Some(vec![]), "none left");
    }

    #[test]
    fn a_clock_that_goes_back_forgets_nothing_and_an_early_date_counts_as_the_newest() {
        let mut ended = Ended::new(DAY);
        ended.push(id("late"), 5 * DAY);
        assert!(ended.expired(0).is_empty());
        ended.push(id("early"), 0);
        assert_eq!(
            ended.dates(),
            Some(vec![(id("late"), 5 * DAY), (id("early"), 5 * DAY)])
        );
        assert!(ended.expired(6 * DAY).is_empty());
        assert_eq!(ended.expired(6 * DAY + 1), vec![id("late"), id("early")]);
    }

    #[test]
    fn dates_survive_a_snapshot_and_undated_orders_are_dated_at_the_next_clock() {
        let mut ended = Ended::new(DAY);
        ended.push(id("old"), 0);
        ended.push(id("new"), DAY);
        let mut restored = Ended::new(DAY);
        restored.restore(ended.dates().unwrap().into_iter().rev().collect());
        assert_eq!(restored.expired(DAY + 1), vec![id("old")]);

        let mut undated = Ended::new(DAY);
        undated.push_undated(id("x"));
        assert_eq!(undated.dates(), None, "not dated yet");
        assert!(undated.expired(10 * DAY).is_empty());
        assert_eq!(undated.dates(), Some(vec![(id("x"), 10 * DAY)]));
        assert_eq!(undated.expired(11 * DAY + 1), vec![id("x")]);
    }
}
