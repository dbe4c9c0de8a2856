//! Positions and cash from fills, in exact decimals.
//!
//! A position keeps the *cost* of its open quantity rather than an average price:
//! closing a position entirely then realizes exactly `proceeds - cost`, with no
//! rounding left behind by a repeating average (1 @ 100 + 2 @ 101 averages to 100.666…).
//!
//! All arithmetic is checked: a fill whose figures would leave the exact decimal range
//! (7.9e28) is not applied at all ([`Overflow`]), never half-applied, never a panic.

use std::collections::BTreeMap;

use moonbus_common::Symbol;
use rust_decimal::Decimal;

/// A figure beyond the exact decimal range (|x| < 7.9e28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

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
    /// Average entry price of the open quantity; zero when flat (Decimal::MAX for a
    /// cost so large against a quantity so small that the quotient does not fit).
    pub fn avg_price(&self) -> Decimal {
        if self.quantity.is_zero() {
            Decimal::ZERO
        } else {
            self.cost
                .checked_div(self.quantity.abs())
                .unwrap_or(Decimal::MAX)
        }
    }

    /// `None` when it does not fit a decimal.
    pub fn unrealized_pnl(&self, mark: Decimal) -> Option<Decimal> {
        if self.quantity.is_zero() {
            return Some(Decimal::ZERO);
        }
        self.quantity
            .checked_mul(mark)?
            .checked_sub(self.signed_cost())
    }

    /// Cost with the position's sign: what was paid for a long, received for a short.
    fn signed_cost(&self) -> Decimal {
        if self.quantity.is_sign_negative() {
            -self.cost
        } else {
            self.cost
        }
    }

    /// Apply a fill; on `Err` nothing changed.
    pub fn apply(&mut self, fill: &Fill) -> Result<(), Overflow> {
        let old = self.quantity;
        let size = fill.quantity.abs();
        let same_direction =
            old.is_zero() || old.is_sign_positive() == fill.quantity.is_sign_positive();
        let mut cost = self.cost;
        let mut realized_pnl = self.realized_pnl;
        if same_direction {
            // Open or increase: the average moves towards the fill price.
            cost = add(cost, mul(size, fill.price)?)?;
        } else {
            // Reduce, close or flip: the closed part realizes PnL against its cost.
            let closed = size.min(old.abs());
            let closed_cost = if closed == old.abs() {
                cost
            } else {
                // cost * closed / |old| (closed < |old|: a share of the cost), exact when
                // the product fits, else through the average price.
                mul(cost, closed)
                    .ok()
                    .and_then(|x| x.checked_div(old.abs()))
                    .or_else(|| cost.checked_div(old.abs())?.checked_mul(closed))
                    .ok_or(Overflow)?
            };
            let pnl = sub(mul(closed, fill.price)?, closed_cost)?;
            realized_pnl = if old.is_sign_positive() {
                add(realized_pnl, pnl)?
            } else {
                sub(realized_pnl, pnl)?
            };
            cost = sub(cost, closed_cost)?;
            // A flip opens the remainder at the fill price.
            cost = add(cost, mul(sub(size, closed)?, fill.price)?)?;
        }
        let mut quantity = add(old, fill.quantity)?;
        if quantity.is_zero() {
            // Normalise -0 and drop any residue: flat means no cost.
            quantity = Decimal::ZERO;
            cost = Decimal::ZERO;
        }
        let fees = add(self.fees, fill.fee)?;
        *self = Position {
            quantity,
            cost,
            realized_pnl,
            fees,
            last_fill_price: Some(fill.price),
        };
        Ok(())
    }
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

fn sub(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_sub(b).ok_or(Overflow)
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
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

    /// Apply a fill to the cash, the fees and the symbol's position; on `Err` nothing
    /// changed.
    pub fn apply(&mut self, symbol: &Symbol, fill: &Fill) -> Result<(), Overflow> {
        let paid = add(mul(fill.quantity, fill.price)?, fill.fee)?;
        let cash = sub(self.cash, paid)?;
        let fees = add(self.fees, fill.fee)?;
        let mut position = self.positions.get(symbol).cloned().unwrap_or_default();
        position.apply(fill)?;
        self.cash = cash;
        self.fees = fees;
        self.positions.insert(symbol.clone(), position);
        Ok(())
    }

    pub fn quantity(&self, symbol: &str) -> Decimal {
        self.positions
            .get(symbol)
            .map_or(Decimal::ZERO, |p| p.quantity)
    }

    /// `None` when the sum does not fit a decimal.
    pub fn realized_pnl(&self) -> Option<Decimal> {
        self.positions
            .values()
            .try_fold(Decimal::ZERO, |sum, p| sum.checked_add(p.realized_pnl))
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

/// Proptest strategies for decimals, shared by the property tests of the crate.
#[cfg(test)]
pub(crate) mod strategies {
    use moonbus_common::MONEY_MAX;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    /// Any decimal at all: every mantissa, sign and scale, and the ends of the range.
    pub fn any_decimal() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            3 => (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0u32..=28)
                .prop_map(|(lo, mid, hi, negative, scale)| {
                    Decimal::from_parts(lo, mid, hi, negative, scale)
                }),
            2 => (-100_000i64..100_000, 0u32..8).prop_map(|(n, scale)| Decimal::new(n, scale)),
            1 => prop::sample::select(vec![
                Decimal::MAX,
                Decimal::MIN,
                Decimal::ZERO,
                MONEY_MAX,
                -MONEY_MAX,
                Decimal::new(1, 28),
                Decimal::new(-1, 28),
            ]),
        ]
    }

    /// Any decimal > 0.
    pub fn positive_decimal() -> impl Strategy<Value = Decimal> {
        any_decimal()
            .prop_map(|d| d.abs())
            .prop_filter("greater than zero", |d| !d.is_zero())
    }

    /// Money as the contract admits it, as wire text (shared with the other crates).
    pub use moonbus_common::testing::money_text;
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Position {
        fn apply_ok(&mut self, fill: &Fill) {
            self.apply(fill).expect("no overflow");
        }
    }

    impl Ledger {
        fn apply_ok(&mut self, symbol: &Symbol, fill: &Fill) {
            self.apply(symbol, fill).expect("no overflow");
        }
    }

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
        p.apply_ok(&fill("2", "100", "0.2"));
        p.apply_ok(&fill("2", "101", "0.2"));
        assert_eq!(p.quantity, d("4"));
        assert_eq!(p.avg_price(), d("100.5"));
        assert_eq!(p.realized_pnl, d("0"));
        assert_eq!(p.fees, d("0.4"));
        assert_eq!(p.unrealized_pnl(d("102")), Some(d("6")));
    }

    #[test]
    fn reduce_keeps_the_average_and_realizes_pnl() {
        let mut p = Position::default();
        p.apply_ok(&fill("2", "100", "0"));
        p.apply_ok(&fill("2", "101", "0"));
        p.apply_ok(&fill("-1", "103.25", "0.1"));
        assert_eq!(p.quantity, d("3"));
        assert_eq!(p.avg_price(), d("100.5"));
        assert_eq!(p.realized_pnl, d("2.75"));
        assert_eq!(p.unrealized_pnl(d("100")), Some(d("-1.5")));
    }

    #[test]
    fn closing_a_repeating_average_realizes_exactly() {
        // 1 @ 100 + 2 @ 101: the average 100.666… does not terminate.
        let mut p = Position::default();
        p.apply_ok(&fill("1", "100", "0"));
        p.apply_ok(&fill("2", "101", "0"));
        p.apply_ok(&fill("-1", "102", "0"));
        p.apply_ok(&fill("-2", "102", "0"));
        assert_eq!(p.quantity, d("0"));
        assert_eq!(p.realized_pnl, d("4"));
        assert_eq!(p.avg_price(), d("0"));
        assert_eq!(p.cost, d("0"));
    }

    #[test]
    fn flip_realizes_the_closed_part_and_resets_the_average() {
        let mut p = Position::default();
        p.apply_ok(&fill("1.5", "200", "0"));
        p.apply_ok(&fill("-2.5", "190", "0"));
        assert_eq!(p.quantity, d("-1"));
        assert_eq!(p.realized_pnl, d("-15"));
        assert_eq!(p.avg_price(), d("190"));
        // Short 1 @ 190: a lower mark is a gain.
        assert_eq!(p.unrealized_pnl(d("185.5")), Some(d("4.5")));
    }

    #[test]
    fn short_positions_average_and_realize_with_the_right_sign() {
        let mut p = Position::default();
        p.apply_ok(&fill("-1", "50", "0"));
        p.apply_ok(&fill("-1", "52", "0"));
        assert_eq!(p.avg_price(), d("51"));
        p.apply_ok(&fill("0.5", "49", "0"));
        assert_eq!(p.quantity, d("-1.5"));
        assert_eq!(p.avg_price(), d("51"));
        assert_eq!(p.realized_pnl, d("1"));
        p.apply_ok(&fill("2.5", "60", "0"));
        assert_eq!(p.quantity, d("1"));
        assert_eq!(p.realized_pnl, d("-12.5"));
        assert_eq!(p.avg_price(), d("60"));
    }

    #[test]
    fn a_fill_that_overflows_changes_nothing() {
        let mut ledger = Ledger::new(d("10000"));
        ledger.apply_ok(&sym("BTC-USD"), &fill("2", "100", "0.2"));
        let before = (ledger.cash, ledger.fees, ledger.positions.clone());
        let max = Decimal::MAX.to_string();
        for bad in [
            fill("2", &max, "0"),
            fill("-2", &max, "0"),
            fill("1", "1", &max),
            fill(&max, "1", "0"),
        ] {
            assert_eq!(
                ledger.apply(&sym("BTC-USD"), &bad),
                Err(Overflow),
                "{bad:?}"
            );
            assert_eq!((ledger.cash, ledger.fees, ledger.positions.clone()), before);
        }
        // Views of figures at the end of the range do not panic either.
        let p = Position {
            quantity: Decimal::new(1, 28),
            cost: d("10"),
            ..Position::default()
        };
        assert_eq!(p.avg_price(), Decimal::MAX, "10 / 1e-28 does not fit");
        let big = Position {
            quantity: d("2"),
            ..Position::default()
        };
        assert_eq!(big.unrealized_pnl(Decimal::MAX), None);
        assert_eq!(big.unrealized_pnl(d("3")), Some(d("6")));
    }

    #[test]
    fn ledger_cash_is_starting_cash_minus_buys_plus_sells_minus_fees() {
        let mut ledger = Ledger::new(d("10000"));
        ledger.apply_ok(&sym("BTC-USD"), &fill("0.01", "97000", "0.97"));
        ledger.apply_ok(&sym("ETH-USD"), &fill("1", "3500", "3.5"));
        ledger.apply_ok(&sym("BTC-USD"), &fill("-0.01", "98000", "0.98"));
        assert_eq!(
            ledger.cash,
            d("10000") - d("970") - d("3500") + d("980") - d("5.45")
        );
        assert_eq!(ledger.fees, d("5.45"));
        assert_eq!(ledger.realized_pnl(), Some(d("10")));
        assert_eq!(ledger.quantity("BTC-USD"), d("0"));
        assert_eq!(ledger.quantity("ETH-USD"), d("1"));
        assert_eq!(ledger.quantity("SOL-USDC"), d("0"));
    }

    mod properties {
        use super::super::strategies::any_decimal;
        use super::*;
        use proptest::prelude::*;

        fn any_fill() -> impl Strategy<Value = Fill> {
            (any_decimal(), any_decimal(), any_decimal()).prop_map(|(quantity, price, fee)| Fill {
                quantity,
                price,
                fee,
            })
        }

        proptest! {
            /// Any fills at all (far beyond what the contract lets in): each is booked
            /// exactly, or refused with nothing changed; never a panic.
            #[test]
            fn fills_are_booked_exactly_or_not_at_all(
                cash in any_decimal(),
                fills in proptest::collection::vec((0usize..3, any_fill()), 1..12),
            ) {
                let symbols = [sym("BTC-USD"), sym("ETH-USD"), sym("SOL-USDC")];
                let mut ledger = Ledger::new(cash);
                for (which, fill) in &fills {
                    let symbol = &symbols[*which];
                    let before = (ledger.cash, ledger.fees, ledger.positions.clone());
                    match ledger.apply(symbol, fill) {
                        Ok(()) => {
                            let paid = fill.quantity * fill.price + fill.fee;
                            prop_assert_eq!(ledger.cash, before.0 - paid);
                            prop_assert_eq!(ledger.fees, before.1 + fill.fee);
                            let old = before.2.get(symbol).map_or(Decimal::ZERO, |p| p.quantity);
                            prop_assert_eq!(ledger.quantity(symbol.as_str()), old + fill.quantity);
                        }
                        Err(Overflow) => {
                            prop_assert_eq!(
                                (ledger.cash, ledger.fees, ledger.positions.clone()),
                                before
                            );
                        }
                    }
                    // The views of whatever was booked do not panic.
                    for p in ledger.positions.values() {
                        let _ = (p.avg_price(), p.unrealized_pnl(fill.price));
                    }
                    let _ = ledger.realized_pnl();
                }
            }
        }
    }
}
