//! One lane per symbol: the orders and cancels of a symbol are handled one at a time,
//! in the order the ORDERS stream delivered them; different symbols run side by side.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub struct Lanes<T> {
    lanes: HashMap<String, Lane<T>>,
}

#[derive(Debug)]
struct Lane<T> {
    /// An item of this lane is being handled.
    busy: bool,
    waiting: VecDeque<T>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
        }
    }
}

impl<T> Lanes<T> {
    /// A new item for lane `key`: handed back when the lane is free (it is now busy with
    /// it), else kept until its turn.
    pub fn admit(&mut self, key: &str, item: T) -> Option<T> {
        let lane = self.lanes.entry(key.to_string()).or_insert_with(|| Lane {
            busy: false,
            waiting: VecDeque::new(),
        });
        if lane.busy {
            lane.waiting.push_back(item);
            None
        } else {
            lane.busy = true;
            Some(item)
        }
    }

    /// The item in hand of lane `key` is done: the next one to handle (the lane stays
    /// busy), or `None` and the lane is free (and forgotten).
    pub fn next(&mut self, key: &str) -> Option<T> {
        let lane = self.lanes.get_mut(key)?;
        let next = lane.waiting.pop_front();
        if next.is_none() {
            self.lanes.remove(key);
        }
        next
    }

    /// Every item still waiting, in lane order (on shutdown: they go back to the stream).
    pub fn take_waiting(&mut self) -> Vec<T> {
        self.lanes
            .values_mut()
            .flat_map(|lane| lane.waiting.drain(..))
            .collect()
    }

    /// Items held: in hand or waiting.
    pub fn held(&self) -> usize {
        self.lanes
            .values()
            .map(|lane| usize::from(lane.busy) + lane.waiting.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_hands_out_one_item_at_a_time_in_order() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("BTC-USD", 1), Some(1));
        assert_eq!(lanes.admit("BTC-USD", 2), None);
        assert_eq!(lanes.admit("BTC-USD", 3), None);
        // another symbol does not wait
        assert_eq!(lanes.admit("ETH-USD", 10), Some(10));
        assert_eq!(lanes.held(), 4);
        assert_eq!(lanes.next("BTC-USD"), Some(2));
        assert_eq!(lanes.next("BTC-USD"), Some(3));
        assert_eq!(lanes.next("BTC-USD"), None);
        // free again: the next item goes straight through
        assert_eq!(lanes.admit("BTC-USD", 4), Some(4));
        assert_eq!(lanes.next("ETH-USD"), None);
        assert_eq!(lanes.held(), 1);
    }

    #[test]
    fn waiting_items_can_be_taken_back() {
        let mut lanes = Lanes::default();
        lanes.admit("A-B", 1);
        lanes.admit("A-B", 2);
        lanes.admit("A-B", 3);
        lanes.admit("C-D", 4);
        assert_eq!(lanes.take_waiting(), vec![2, 3]);
        assert_eq!(lanes.next("A-B"), None);
        assert_eq!(lanes.held(), 1);
    }
}
