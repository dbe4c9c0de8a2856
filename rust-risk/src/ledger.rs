//! Positions and cash from fills, in exact decimals.
//!
//! A position keeps the *cost* of its open quantity rather than an average price:
//! closing a position entirely then realizes exactly `proceeds - cost`, with no
//! rounding left behind by a repeating average (1 @ 100 + 2 @ 101 averages to 100.666…).

use std::collections::BTreeMap;

use moonbus_common::Symbol;
use rust_decimal::Decimal;

/// One fill: `quantity` is signed (+ bought, - sold), `fee` is what this fill cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    pub quantity: Decimal,
    pub price: Decimal,
    pub fee: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    /// Signed: + long, - short.
    pub quantity: Decimal,
    /// Entry cost of the open quantity (always >= 0, also for a short).
    pub cost: Decimal,
    pub realized_pnl: Decimal,
    pub fees: Decimal,
    /// Price of the latest fill: values the position until a tick arrives.
    pub last_fill_price: Option<Decimal>,
}

impl Position {
    /// Average entry price of the open quantity; zero when flat.
    pub fn avg_price(&self) -> Decimal {
        if self.quantity.is_zero() {
            Decimal::ZERO
        } else {
            self.cost / self.quantity.abs()
        }
    }

    pub fn unrealized_pnl(&self, mark: Decimal) -> Decimal {
        if self.quantity.is_zero() {
            return Decimal::ZERO;
        }
        self.quantity * mark - self.signed_cost()
    }

    /// Cost with the position's sign: what was paid for a long, received for a short.
    fn signed_cost(&self) -> Decimal {
        if self.quantity.is_sign_negative() {
            -self.cost
        } else {
            self.cost
        }
    }

    pub fn apply(&mut self, fill: &Fill) {
        let old = self.quantity;
        let size = fill.quantity.abs();
        let same_direction =
            old.is_zero() || old.is_sign_positive() == fill.quantity.is_sign_positive();
        if same_direction {
            // Open or increase: the average moves towards the fill price.
            self.cost += size * fill.price;
        } else {
            // Reduce, close or flip: the closed part realizes PnL against its cost.
            let closed = size.min(old.abs());
            let closed_cost = if closed == old.abs() {
                self.cost
            } else {
                self.cost * closed / old.abs()
            };
            let pnl = closed * fill.price - closed_cost;
            self.realized_pnl += if old.is_sign_positive() { pnl } else { -pnl };
            self.cost -= closed_cost;
            // A flip opens the remainder at the fill price.
            self.cost += (size - closed) * fill.price;
        }
        self.quantity = old + fill.quantity;
        if self.quantity.is_zero() {
            // Normalise -0 and drop any residue: flat means no cost.
            self.quantity = Decimal::ZERO;
            self.cost = Decimal::ZERO;
        }
        self.fees += fill.fee;
        self.last_fill_price = Some(fill.price);
    }
}

/// Cash and every position: cash = starting cash - bought + sold - fees.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub cash: Decimal,
    pub fees: Decimal,
    pub positions: BTreeMap<Symbol, Position>,
}

impl Ledger {
    pub fn new(starting_cash: Decimal) -> Self {
        Self {
            cash: starting_cash,
            fees: Decimal::ZERO,
            positions: BTreeMap::new(),
        }
    }

    pub fn apply(&mut self, symbol: &Symbol, fill: &Fill) {
        self.cash -= fill.quantity * fill.price + fill.fee;
        self.fees += fill.fee;
        self.positions
            .entry(symbol.clone())
            .or_default()
            .apply(fill);
    }

    pub fn quantity(&self, symbol: &str) -> Decimal {
        self.positions
            .get(symbol)
            .map_or(Decimal::ZERO, |p| p.quantity)
    }

    pub fn realized_pnl(&self) -> Decimal {
        self.positions.values().map(|p| p.realized_pnl).sum()
    }
}

#[cfg(test)]
pub(crate) fn d(text: &str) -> Decimal {
    text.parse().expect("test decimal")
}

#[cfg(test)]
pub(crate) fn sym(text: &str) -> Symbol {
    text.parse().expect("test symbol")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(quantity: &str, price: &str, fee: &str) -> Fill {
        Fill {
            quantity: d(quantity),
            price: d(price),
            fee: d(fee),
        }
    }

    #[test]
    fn increase_averages_the_entry_price() {
        let mut p = Position::default();
        p.apply(&fill("2", "100", "0.2"));
        p.apply(&fill("2", "101", "0.2"));
        assert_eq!(p.quantity, d("4"));
        assert_eq!(p.avg_price(), d("100.5"));
        assert_eq!(p.realized_pnl, d("0"));
        assert_eq!(p.fees, d("0.4"));
        assert_eq!(p.unrealized_pnl(d("102")), d("6"));
    }

    #[test]
    fn reduce_keeps_the_average_and_realizes_pnl() {
        let mut p = Position::default();
        p.apply(&fill("2", "100", "0"));
        p.apply(&fill("2", "101", "0"));
        p.apply(&fill("-1", "103.25", "0.1"));
        assert_eq!(p.quantity, d("3"));
        assert_eq!(p.avg_price(), d("100.5"));
        assert_eq!(p.realized_pnl, d("2.75"));
        assert_eq!(p.unrealized_pnl(d("100")), d("-1.5"));
    }

    #[test]
    fn closing_a_repeating_average_realizes_exactly() {
        // 1 @ 100 + 2 @ 101: the average 100.666… does not terminate.
        let mut p = Position::default();
        p.apply(&fill("1", "100", "0"));
        p.apply(&fill("2", "101", "0"));
        p.apply(&fill("-1", "102", "0"));
        p.apply(&fill("-2", "102", "0"));
        assert_eq!(p.quantity, d("0"));
        assert_eq!(p.realized_pnl, d("4"));
        assert_eq!(p.avg_price(), d("0"));
        assert_eq!(p.cost, d("0"));
    }

    #[test]
    fn flip_realizes_the_closed_part_and_resets_the_average() {
        let mut p = Position::default();
        p.apply(&fill("1.5", "200", "0"));
        p.apply(&fill("-2.5", "190", "0"));
        assert_eq!(p.quantity, d("-1"));
        assert_eq!(p.realized_pnl, d("-15"));
        assert_eq!(p.avg_price(), d("190"));
        // Short 1 @ 190: a lower mark is a gain.
        assert_eq!(p.unrealized_pnl(d("185.5")), d("4.5"));
    }

    #[test]
    fn short_positions_average_and_realize_with_the_right_sign() {
        let mut p = Position::default();
        p.apply(&fill("-1", "50", "0"));
        p.apply(&fill("-1", "52", "0"));
        assert_eq!(p.avg_price(), d("51"));
        p.apply(&fill("0.5", "49", "0"));
        assert_eq!(p.quantity, d("-1.5"));
        assert_eq!(p.avg_price(), d("51"));
        assert_eq!(p.realized_pnl, d("1"));
        p.apply(&fill("2.5", "60", "0"));
        assert_eq!(p.quantity, d("1"));
        assert_eq!(p.realized_pnl, d("-12.5"));
        assert_eq!(p.avg_price(), d("60"));
    }

    #[test]
    fn ledger_cash_is_starting_cash_minus_buys_plus_sells_minus_fees() {
        let mut ledger = Ledger::new(d("10000"));
        ledger.apply(&sym("BTC-USD"), &fill("0.01", "97000", "0.97"));
        ledger.apply(&sym("ETH-USD"), &fill("1", "3500", "3.5"));
        ledger.apply(&sym("BTC-USD"), &fill("-0.01", "98000", "0.98"));
        assert_eq!(
            ledger.cash,
            d("10000") - d("970") - d("3500") + d("980") - d("5.45")
        );
        assert_eq!(ledger.fees, d("5.45"));
        assert_eq!(ledger.realized_pnl(), d("10"));
        assert_eq!(ledger.quantity("BTC-USD"), d("0"));
        assert_eq!(ledger.quantity("ETH-USD"), d("1"));
        assert_eq!(ledger.quantity("SOL-USDC"), d("0"));
    }
}
