//! The account's totals over its positions (value, unrealized and realized PnL, gross
//! exposure, open positions), kept one symbol at a time: at 1,000 held symbols, summing every position
//! again for each tick and each check was most of risk's CPU (issue #17). A position's
//! part is replaced when its mark or the position changes, and the sums move by the
//! difference, in exact decimal arithmetic. A part that does not fit a decimal, or a sum
//! that could only be rounded, makes the sums unusable (`sums` is None): the engine then
//! sums every position as it always did (saturating) until `rebuild` finds them exact.

use std::collections::HashMap;

use moonbus_common::Symbol;
use rust_decimal::Decimal;

/// One position's part of the totals: its value at its valuation price (signed: negative
/// for a short), its unrealized PnL there and its realized PnL; a flat position has only
/// the last. Its gross exposure is |value|.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Part {
    pub value: Decimal,
    pub unrealized_pnl: Decimal,
    pub realized_pnl: Decimal,
    /// Not flat: counted in `Sums::positions`.
    pub open: bool,
}

/// A part whose figures do not fit a decimal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unfit;

/// The sums of every part.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sums {
    pub value: Decimal,
    pub unrealized_pnl: Decimal,
    pub gross_exposure: Decimal,
    pub realized_pnl: Decimal,
    /// Open (not flat) positions.
    pub positions: u64,
}

#[derive(Debug, Default)]
pub struct Valuation {
    parts: HashMap<Symbol, Part>,
    sums: Sums,
    /// The sums are exactly those of the parts: none missing, nothing rounded.
    exact: bool,
}

impl Valuation {
    /// The sums, if they are exact.
    pub fn sums(&self) -> Option<Sums> {
        self.exact.then_some(self.sums)
    }

    /// `symbol`'s part, if it has a position (whether or not the sums are usable).
    pub fn part(&self, symbol: &Symbol) -> Option<&Part> {
        self.parts.get(symbol)
    }

    /// Start again from every position's part.
    pub fn rebuild<'a>(
        &mut self,
        parts: impl IntoIterator<Item = (&'a Symbol, Result<Option<Part>, Unfit>)>,
    ) {
        self.parts.clear();
        self.sums = Sums::default();
        self.exact = true;
        for (symbol, part) in parts {
            self.set(symbol, part);
        }
    }

    /// `symbol`'s part is now `part` (None: no position).
    pub fn set(&mut self, symbol: &Symbol, part: Result<Option<Part>, Unfit>) {
        if !self.exact {
            return; // nothing to keep until a rebuild
        }
        let Ok(part) = part else {
            self.exact = false;
            return;
        };
        let old = match part {
            Some(part) => self.parts.insert(symbol.clone(), part),
            None => self.parts.remove(symbol),
        };
        let moved = self.without(old).and_then(|sums| with(sums, part));
        match moved {
            Some(sums) => self.sums = sums,
            None => self.exact = false,
        }
    }

    fn without(&self, part: Option<Part>) -> Option<Sums> {
        let Some(part) = part else {
            return Some(self.sums);
        };
        Some(Sums {
            value: exact_sub(self.sums.value, part.value)?,
            unrealized_pnl: exact_sub(self.sums.unrealized_pnl, part.unrealized_pnl)?,
            gross_exposure: exact_sub(self.sums.gross_exposure, part.value.abs())?,
            realized_pnl: exact_sub(self.sums.realized_pnl, part.realized_pnl)?,
            positions: self.sums.positions.checked_sub(u64::from(part.open))?,
        })
    }
}

fn with(sums: Sums, part: Option<Part>) -> Option<Sums> {
    let Some(part) = part else {
        return Some(sums);
    };
    Some(Sums {
        value: exact_add(sums.value, part.value)?,
        unrealized_pnl: exact_add(sums.unrealized_pnl, part.unrealized_pnl)?,
        gross_exposure: exact_add(sums.gross_exposure, part.value.abs())?,
        realized_pnl: exact_add(sums.realized_pnl, part.realized_pnl)?,
        positions: sums.positions.checked_add(u64::from(part.open))?,
    })
}

/// `a + b` if it fits a decimal without rounding (a decimal rounds a sum that needs more
/// than its 28 digits by dropping decimal places: the scale then falls short).
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let sum = a.checked_add(b)?;
    (sum.scale() >= a.scale().max(b.scale())).then_some(sum)
}

/// `a - b` if it fits a decimal without rounding.
pub fn exact_sub(a: Decimal, b: Decimal) -> Option<Decimal> {
    exact_add(a, -b)
}

/// Two figures of one sum made in different orders: equal but for the rounding of a
/// decimal's 28 digits (the kept sums are exact; a sum over every position in turn may
/// round a partial sum). For the debug builds' check of the kept sums against a full sum.
pub fn agree(a: Decimal, b: Decimal) -> bool {
    let tolerance = a
        .abs()
        .max(b.abs())
        .saturating_mul(Decimal::new(1, 24))
        .max(Decimal::new(1, 26));
    a.checked_sub(b)
        .is_some_and(|difference| difference.abs() <= tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{d, sym};

    fn part(value: &str, pnl: &str) -> Result<Option<Part>, Unfit> {
        Ok(Some(Part {
            value: d(value),
            unrealized_pnl: d(pnl),
            realized_pnl: d("1"),
            open: !d(value).is_zero(),
        }))
    }

    #[test]
    fn figures_agree_but_for_the_rounding_of_the_28th_digit() {
        assert!(agree(
            d("-79010134.81591945484790916597"),
            d("-79010134.8159194548479091660")
        ));
        assert!(agree(d("0.0000000000000000000000000001"), d("0")));
        assert!(!agree(d("1.0000000001"), d("1.0000000002")));
        assert!(!agree(d("1.5"), d("1.6")));
    }

    #[test]
    fn a_sum_that_would_round_is_not_exact() {
        assert_eq!(exact_add(d("1.10"), d("2.205")), Some(d("3.305")));
        assert_eq!(exact_add(d("-1.5"), d("1.5")), Some(d("0.0")));
        // 29 significant digits: a decimal keeps 28.
        assert_eq!(
            exact_add(d("100000000000000000000"), d("0.000000001")),
            None
        );
        assert_eq!(exact_add(Decimal::MAX, d("1")), None);
        assert_eq!(exact_add(Decimal::MAX, d("0.5")), None);
    }

    #[test]
    fn sums_follow_each_part_replaced_and_removed() {
        let mut v = Valuation::default();
        v.rebuild([
            (&sym("BTC-USD"), part("970.5", "10.5")),
            (&sym("ETH-USD"), part("-350", "-5")),
        ]);
        let sums = v.sums().expect("exact");
        let figures = |s: Sums| {
            (
                s.value,
                s.unrealized_pnl,
                s.gross_exposure,
                s.realized_pnl,
                s.positions,
            )
        };
        assert_eq!(
            figures(sums),
            (d("620.5"), d("5.5"), d("1320.5"), d("2"), 2)
        );
        v.set(&sym("BTC-USD"), part("980.25", "20.25"));
        v.set(&sym("ETH-USD"), part("0", "0"));
        v.set(&sym("SOL-USDC"), part("150", "0"));
        let sums = v.sums().expect("exact");
        // ETH-USD is flat: only its realized PnL counts.
        assert_eq!(
            figures(sums),
            (d("1130.25"), d("20.25"), d("1130.25"), d("3"), 2)
        );
        // A symbol that had no part changes nothing.
        v.set(&sym("XRP-USD"), Ok(None));
        assert_eq!(v.sums().expect("exact").positions, 2);
    }

    #[test]
    fn an_unfit_part_or_a_rounded_sum_leaves_no_sums_until_a_rebuild() {
        let mut v = Valuation::default();
        v.rebuild([(&sym("BTC-USD"), part("1", "0"))]);
        v.set(&sym("ETH-USD"), Err(Unfit));
        assert_eq!(v.sums(), None);
        v.set(&sym("ETH-USD"), part("2", "0"));
        assert_eq!(v.sums(), None, "kept unusable until rebuilt");
        v.rebuild([(&sym("BTC-USD"), part("1", "0"))]);
        assert!(v.sums().is_some());
        v.set(&sym("ETH-USD"), part("100000000000000000000", "0"));
        v.set(&sym("SOL-USDC"), part("0.000000001", "0"));
        assert_eq!(v.sums(), None, "a sum of 29 digits");
    }
}
