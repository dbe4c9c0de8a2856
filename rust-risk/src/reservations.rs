//! In-flight reservations: an approved order holds its share of the limits until its
//! execution report is terminal or its time-to-live passes, so two orders that each
//! fit but together do not cannot both be approved. The time-to-live is for an approved
//! order that never reaches execution; once execution reports the order (ACCEPTED: a
//! limit order resting, a live order sent) it holds its share until its terminal report
//! ([`Reservations::pin`]): a resting order may fill any time.
//!
//! Sums saturate at the end of the decimal range instead of overflowing: a bigger
//! figure in flight only makes the limits refuse sooner (the rules check their own
//! arithmetic and refuse `overflow`).

use std::collections::HashMap;

use moonbus_common::{AgentName, Symbol};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub symbol: Symbol,
    pub agent: AgentName,
    /// Not yet filled quantity, signed: + buy, - sell.
    pub quantity: Decimal,
    /// The price the order was checked at.
    pub price: Decimal,
    /// `u64::MAX` once execution has reported the order (pinned).
    pub expires_ns: u64,
}

impl Reservation {
    pub fn notional(&self) -> Decimal {
        self.quantity.abs().saturating_mul(self.price)
    }

    /// Execution has reported the order: held until its terminal report.
    pub fn is_pinned(&self) -> bool {
        self.expires_ns == u64::MAX
    }
}

/// Unfilled quantities in flight for one symbol (both >= 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pending {
    pub buys: Decimal,
    pub sells: Decimal,
}

impl Pending {
    /// A reservation's signed quantity: a buy (> 0) or a sell (< 0).
    fn add(&mut self, quantity: Decimal) {
        if quantity.is_sign_negative() {
            self.sells = self.sells.saturating_sub(quantity);
        } else {
            self.buys = self.buys.saturating_add(quantity);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Reservations {
    by_order: HashMap<String, Reservation>,
}

impl Reservations {
    /// Reserve for `client_order_id`; a re-check of the same order replaces, never adds.
    pub fn reserve(&mut self, client_order_id: &str, reservation: Reservation) {
        self.by_order
            .insert(client_order_id.to_string(), reservation);
    }

    /// A fill of `quantity` (> 0) uses up that much of the order's reservation.
    pub fn fill(&mut self, client_order_id: &str, quantity: Decimal) {
        if let Some(r) = self.by_order.get_mut(client_order_id) {
            let left = (r.quantity.abs() - quantity).max(Decimal::ZERO);
            if left.is_zero() {
                self.by_order.remove(client_order_id);
            } else {
                r.quantity = if r.quantity.is_sign_negative() {
                    -left
                } else {
                    left
                };
            }
        }
    }

    /// Execution reported the order (not terminal): it holds its share until it ends.
    pub fn pin(&mut self, client_order_id: &str) {
        if let Some(r) = self.by_order.get_mut(client_order_id) {
            r.expires_ns = u64::MAX;
        }
    }

    /// Take the order's reservation out (a re-check replaces it).
    pub fn take(&mut self, client_order_id: &str) -> Option<Reservation> {
        self.by_order.remove(client_order_id)
    }

    /// The order is done (terminal report): nothing of it is in flight any more.
    pub fn release(&mut self, client_order_id: &str) {
        self.by_order.remove(client_order_id);
    }

    /// Drop reservations whose TTL passed; returns the orders dropped.
    pub fn expire(&mut self, now_ns: u64) -> Vec<String> {
        let expired: Vec<String> = self
            .by_order
            .iter()
            .filter(|(_, r)| r.expires_ns <= now_ns)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.by_order.remove(id);
        }
        expired
    }

    pub fn pending(&self, symbol: &str) -> Pending {
        let mut pending = Pending::default();
        for r in self
            .by_order
            .values()
            .filter(|r| r.symbol.as_str() == symbol)
        {
            pending.add(r.quantity);
        }
        pending
    }

    /// `pending` of every symbol with something in flight, in one pass.
    pub fn pending_by_symbol(&self) -> HashMap<&Symbol, Pending> {
        let mut all: HashMap<&Symbol, Pending> = HashMap::new();
        for r in self.by_order.values() {
            all.entry(&r.symbol).or_default().add(r.quantity);
        }
        all
    }

    /// Notional of every buy in flight: cash it may still take.
    pub fn buy_notional(&self) -> Decimal {
        self.by_order
            .values()
            .filter(|r| r.quantity.is_sign_positive())
            .map(Reservation::notional)
            .fold(Decimal::ZERO, Decimal::saturating_add)
    }

    /// The orders in flight and their symbols.
    pub fn orders(&self) -> impl Iterator<Item = (&str, &Symbol, Option<&AgentName>)> {
        self.by_order
            .iter()
            .map(|(id, r)| (id.as_str(), &r.symbol, Some(&r.agent)))
    }

    /// Every reservation, for a snapshot.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Reservation)> {
        self.by_order.iter().map(|(id, r)| (id.as_str(), r))
    }

    /// Symbols with something in flight, each with the highest price one of its orders
    /// was checked at (the worst case, and the same whatever order the map is read in).
    pub fn checked_prices(&self) -> HashMap<&Symbol, Decimal> {
        let mut prices: HashMap<&Symbol, Decimal> = HashMap::new();
        for r in self.by_order.values() {
            let price = prices.entry(&r.symbol).or_insert(r.price);
            *price = (*price).max(r.price);
        }
        prices
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{d, sym};

    fn reservation(symbol: &str, quantity: &str, price: &str, expires_ns: u64) -> Reservation {
        Reservation {
            symbol: sym(symbol),
            agent: AgentName::try_from("trading").unwrap(),
            quantity: d(quantity),
            price: d(price),
            expires_ns,
        }
    }

    #[test]
    fn pending_sums_buys_and_sells_per_symbol() {
        let mut r = Reservations::default();
        r.reserve("a", reservation("BTC-USD", "0.5", "100", 10));
        r.reserve("b", reservation("BTC-USD", "-0.25", "100", 10));
        r.reserve("c", reservation("ETH-USD", "2", "10", 10));
        assert_eq!(
            r.pending("BTC-USD"),
            Pending {
                buys: d("0.5"),
                sells: d("0.25")
            }
        );
        assert_eq!(r.buy_notional(), d("70"));
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        let mut r = Reservations::default();
        let max = Decimal::MAX.to_string();
        r.reserve("a", reservation("BTC-USD", &max, "2", 10));
        r.reserve("b", reservation("BTC-USD", &max, "1", 10));
        r.reserve("c", reservation("BTC-USD", &format!("-{max}"), "1", 10));
        r.reserve("d", reservation("BTC-USD", &format!("-{max}"), "1", 10));
        assert_eq!(
            r.pending("BTC-USD"),
            Pending {
                buys: Decimal::MAX,
                sells: Decimal::MAX
            }
        );
        assert_eq!(r.buy_notional(), Decimal::MAX);
    }

    #[test]
    fn recheck_of_the_same_order_replaces_its_reservation() {
        let mut r = Reservations::default();
        r.reserve("a", reservation("BTC-USD", "1", "100", 10));
        r.reserve("a", reservation("BTC-USD", "1", "100", 10));
        assert_eq!(r.pending("BTC-USD").buys, d("1"));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn fills_use_up_the_reservation_and_release_ends_it() {
        let mut r = Reservations::default();
        r.reserve("a", reservation("BTC-USD", "-1", "100", 10));
        r.fill("a", d("0.4"));
        assert_eq!(r.pending("BTC-USD").sells, d("0.6"));
        r.fill("a", d("0.6"));
        assert_eq!(r.len(), 0);
        r.reserve("b", reservation("BTC-USD", "1", "100", 10));
        r.release("b");
        assert_eq!(r.pending("BTC-USD"), Pending::default());
        // Reports of unknown orders (e.g. placed before a restart) change nothing.
        r.fill("zzz", d("1"));
        r.release("zzz");
    }

    #[test]
    fn expire_drops_only_what_is_past_its_ttl() {
        let mut r = Reservations::default();
        r.reserve("old", reservation("BTC-USD", "1", "100", 100));
        r.reserve("new", reservation("BTC-USD", "2", "100", 200));
        assert!(r.expire(99).is_empty());
        assert_eq!(r.expire(100), vec!["old".to_string()]);
        assert_eq!(r.pending("BTC-USD").buys, d("2"));
    }
}
