//! A paper MARKET order against a book: it takes the levels of the other side, best
//! price first, until it is filled or the book runs out.
//!
//! - BUY takes the asks from the lowest price up, SELL the bids from the highest down
//!   (sorted here, so a feed that sends levels out of order cannot make us take a worse
//!   level first); levels of size 0 are skipped.
//! - The fill is one execution at the volume-weighted average price of the levels taken,
//!   rounded against the taker (BUY up, SELL down) to 4 decimals finer than the finest
//!   level price taken: 1 @ 100 + 2 @ 101 = 100.6667 for a BUY, 100.6666 for a SELL. The
//!   quantity times that price is then exactly what is booked; rounding costs the taker
//!   at most 1/10000 of a price increment per unit and never flatters paper PnL.
//! - The book is a snapshot: our own fills do not deplete it (the next order walks the
//!   same levels until the feed sends a new book).
//! - Quantities are exact and costs precise, or the walk is refused ([`Overflow`]):
//!   rust_decimal rounds a result that needs more than 96 bits or 28 decimals, and a filled
//!   quantity must never be rounded (99999999999999.99999999999999 - 1e-15), nor a cost
//!   lose its digits below 1e-28 (1.1 x 1e-28), nor pass 7.9e28.

use moonbus_common::{Book, PriceLevel, Side};
use rust_decimal::{Decimal, RoundingStrategy};

/// A result of the paper venue's arithmetic (a book walk here, a taker price or a fee in
/// paper.rs) does not fit a Decimal (|x| >= 7.9e28), or is beyond the contract's money
/// range (|x| >= 1e14): the order is refused, never rounded. Defined here, the lower of
/// the two modules, so that paper.rs uses walk.rs and never the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Decimals beyond the finest level price taken, for the average price.
const EXTRA_DECIMALS: u32 = 4;

/// What walking the book gave: `quantity` > 0 filled at `price` (the rounded average).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub quantity: Decimal,
    pub price: Decimal,
    /// Levels taken, the last one possibly in part.
    pub levels: usize,
}

/// Walk the side of `book` a `side` order takes for `quantity`; `None` when that side
/// holds nothing.
pub fn walk(side: Side, book: &Book, quantity: Decimal) -> Result<Option<Walked>, Overflow> {
    let mut levels: Vec<&PriceLevel> = match side {
        Side::Buy => book.asks.iter().collect(),
        Side::Sell => book.bids.iter().collect(),
    };
    match side {
        Side::Buy => levels.sort_by_key(|level| level.0),
        Side::Sell => levels.sort_by_key(|level| std::cmp::Reverse(level.0)),
    }
    let (mut left, mut cost, mut taken, mut scale) = (quantity, Decimal::ZERO, 0usize, 0u32);
    let (mut lowest, mut highest) = (Decimal::MAX, Decimal::MIN);
    for (price, size) in levels {
        if left.is_zero() {
            break;
        }
        if size.is_zero() {
            continue;
        }
        let take = left.min(**size);
        cost = cost.checked_add(product(**price, take)?).ok_or(Overflow)?;
        left = exact_sub(left, take)?;
        taken += 1;
        scale = scale.max(price.scale());
        (lowest, highest) = (lowest.min(**price), highest.max(**price));
    }
    let filled = exact_sub(quantity, left)?;
    if filled.is_zero() {
        return Ok(None);
    }
    // Within the prices taken, as an average is: a cost of more than 28 digits was rounded
    // (`product`), and the quotient with it could fall a hair outside them.
    let average = cost
        .checked_div(filled)
        .ok_or(Overflow)?
        .clamp(lowest, highest);
    let rounding = match side {
        Side::Buy => RoundingStrategy::ToPositiveInfinity,
        Side::Sell => RoundingStrategy::ToNegativeInfinity,
    };
    let price = average
        .round_dp_with_strategy((scale + EXTRA_DECIMALS).min(28), rounding)
        .normalize();
    Ok(Some(Walked {
        quantity: filled,
        price,
        levels: taken,
    }))
}

/// Proptest strategies shared by the property tests of the paper venue.
/// `a - b`, refused unless exact: rust_decimal keeps the larger scale of the two when the
/// difference fits 96 bits and rounds (to a smaller scale) when it does not. A zero
/// operand comes back as is (any scale). Conservative: a rounding that only dropped
/// trailing zeros is refused too.
fn exact_sub(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    let difference = a.checked_sub(b).ok_or(Overflow)?;
    if a.is_zero() || b.is_zero() || difference.scale() >= a.scale().max(b.scale()) {
        Ok(difference)
    } else {
        Err(Overflow)
    }
}

/// `a * b` for a cost, refused when the exact product has digits below 1e-28, which
/// rust_decimal rounds away (1.1 x 1e-28 = 1e-28: 9 % off). A product rounded for its
/// length (more than 28 significant digits) is off by at most 1e-27 of itself: kept.
fn product(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    if a.normalize().scale() + b.normalize().scale() > 28 {
        return Err(Overflow);
    }
    a.checked_mul(b).ok_or(Overflow)
}

#[cfg(test)]
pub(crate) mod strategies {
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    /// Money as the contract admits it, as wire text (shared with the other crates).
    pub use moonbus_common::testing::money_text;

    /// Any decimal at all: every mantissa, sign and scale.
    pub fn any_decimal() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
                0u32..=28
            )
                .prop_map(|(lo, mid, hi, negative, scale)| Decimal::from_parts(
                    lo, mid, hi, negative, scale
                )),
            prop::sample::select(vec![
                Decimal::MAX,
                Decimal::MIN,
                Decimal::ZERO,
                Decimal::new(1, 28)
            ]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{Symbol, Venue};

    fn dec(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn book(bids: &[(&str, &str)], asks: &[(&str, &str)]) -> Book {
        let levels = |side: &[(&str, &str)]| {
            side.iter()
                .map(|(p, s)| (p.parse().unwrap(), s.parse().unwrap()))
                .collect()
        };
        Book {
            venue: Venue::sim(),
            symbol: Symbol::try_from("BTC-USD").unwrap(),
            bids: levels(bids),
            asks: levels(asks),
            seq: 1,
            ts: 1,
        }
    }

    fn walked(quantity: &str, price: &str, levels: usize) -> Option<Walked> {
        Some(Walked {
            quantity: dec(quantity),
            price: dec(price),
            levels,
        })
    }

    #[test]
    fn one_level_fills_at_its_price() {
        let b = book(&[("99", "5")], &[("101.50", "5")]);
        assert_eq!(
            walk(Side::Buy, &b, dec("2")).unwrap(),
            walked("2", "101.5", 1)
        );
        assert_eq!(
            walk(Side::Sell, &b, dec("5")).unwrap(),
            walked("5", "99", 1)
        );
    }

    #[test]
    fn several_levels_give_the_volume_weighted_average() {
        let b = book(
            &[("99.5", "1"), ("99", "2"), ("98", "10")],
            &[("100", "1"), ("101", "2"), ("105", "10")],
        );
        // (1*100 + 1*101) / 2 = 100.5 exactly
        assert_eq!(
            walk(Side::Buy, &b, dec("2")).unwrap(),
            walked("2", "100.5", 2)
        );
        // (100 + 2*101) / 3 = 100.666.. -> up at 0+4 decimals for a BUY
        assert_eq!(
            walk(Side::Buy, &b, dec("3")).unwrap(),
            walked("3", "100.6667", 2)
        );
        // (99.5 + 2*99) / 3 = 99.1666.. -> down at 1+4 decimals for a SELL
        assert_eq!(
            walk(Side::Sell, &b, dec("3")).unwrap(),
            walked("3", "99.16666", 2)
        );
        // into the third level: (100 + 202 + 4*105) / 7 = 103.142857.. -> 103.1429
        assert_eq!(
            walk(Side::Buy, &b, dec("7")).unwrap(),
            walked("7", "103.1429", 3)
        );
    }

    #[test]
    fn an_exhausted_book_fills_what_it_holds() {
        let b = book(&[], &[("100", "0.4"), ("100.5", "0.1")]);
        // 0.4*100 + 0.1*100.5 = 50.05 for 0.5 -> 100.1
        assert_eq!(
            walk(Side::Buy, &b, dec("2")).unwrap(),
            walked("0.5", "100.1", 2)
        );
        assert_eq!(walk(Side::Sell, &b, dec("1")).unwrap(), None);
    }

    #[test]
    fn levels_out_of_order_and_empty_levels_do_not_cost_the_taker() {
        let b = book(
            &[("98", "1"), ("99", "1"), ("99.5", "0")],
            &[("103", "1"), ("100", "0"), ("101", "1")],
        );
        assert_eq!(
            walk(Side::Buy, &b, dec("1")).unwrap(),
            walked("1", "101", 1)
        );
        assert_eq!(
            walk(Side::Sell, &b, dec("1")).unwrap(),
            walked("1", "99", 1)
        );
    }

    #[test]
    fn overflow_is_an_error() {
        // Each level is 1e28 of notional, inside a decimal; eight of them are not.
        let max = "99999999999999.99999999999999";
        let levels = vec![(max, max); 8];
        let b = book(&[], &levels);
        assert_eq!(walk(Side::Buy, &b, dec("800000000000000")), Err(Overflow));
        assert!(
            walk(Side::Buy, &b, dec(max)).unwrap().is_some(),
            "one level fits"
        );
    }

    mod properties {
        use super::super::strategies::money_text;
        use super::*;
        use proptest::prelude::*;

        /// Figures of ordinary precision: up to 10 digits before the point, 8 after.
        fn plain_money() -> impl Strategy<Value = String> {
            (1u64..10_000_000_000, 0u32..=8)
                .prop_map(|(units, scale)| Decimal::new(units as i64, scale).to_string())
        }

        fn levels(money: BoxedStrategy<String>) -> impl Strategy<Value = Vec<(String, String)>> {
            let size = prop_oneof![3 => money.clone(), 1 => Just("0".to_string())];
            proptest::collection::vec((money, size), 0..10)
        }

        fn pairs(side: &[(String, String)]) -> Vec<(&str, &str)> {
            side.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect()
        }

        /// Walk, then check what came out: `exact` = the figures are ordinary, so the walk
        /// must succeed.
        fn judge(
            asks: &[(String, String)],
            bids: &[(String, String)],
            quantity: &str,
            buy: bool,
            exact: bool,
        ) -> Result<(), TestCaseError> {
            let b = book(&pairs(bids), &pairs(asks));
            let (side, levels) = if buy {
                (Side::Buy, &b.asks)
            } else {
                (Side::Sell, &b.bids)
            };
            let wanted = dec(quantity);
            let walked = match walk(side, &b, wanted) {
                Ok(walked) => walked,
                Err(Overflow) => {
                    prop_assert!(!exact, "ordinary figures are walked exactly");
                    return Ok(());
                }
            };
            let depth: Decimal = levels.iter().map(|(_, s)| **s).sum();
            match walked {
                None => prop_assert!(depth.is_zero()),
                Some(w) => {
                    prop_assert!(!w.quantity.is_zero() && w.quantity <= wanted);
                    if exact {
                        prop_assert_eq!(w.quantity, wanted.min(depth));
                    }
                    let prices = levels
                        .iter()
                        .filter(|(_, s)| !s.is_zero())
                        .map(|(p, _)| **p);
                    let (low, high) =
                        (prices.clone().min().unwrap(), prices.clone().max().unwrap());
                    // The average is rounded against the taker 4 decimals finer than the
                    // prices taken: at most one such unit past the levels.
                    let coarsest = prices.map(|p| p.scale()).min().unwrap();
                    let unit = Decimal::new(1, (coarsest + EXTRA_DECIMALS).min(28));
                    prop_assert!(
                        low - unit <= w.price && w.price <= high + unit,
                        "{} not in [{}, {}]",
                        w.price,
                        low,
                        high
                    );
                    prop_assert!(w.levels >= 1);
                }
            }
            Ok(())
        }

        proptest! {
            /// Any book of valid levels (the extremes of the money range included), in
            /// any order, any quantity the contract admits: a fill of at most what was
            /// asked, at a price within the levels, or a refusal; never a panic.
            #[test]
            fn a_walk_fills_within_the_book_or_is_refused(
                asks in levels(money_text().boxed()),
                bids in levels(money_text().boxed()),
                quantity in money_text(),
                buy in any::<bool>(),
            ) {
                judge(&asks, &bids, &quantity, buy, false)?;
            }

            /// Ordinary figures: always walked, exactly what the book holds.
            #[test]
            fn ordinary_figures_fill_exactly_what_the_book_holds(
                asks in levels(plain_money().boxed()),
                bids in levels(plain_money().boxed()),
                quantity in plain_money(),
                buy in any::<bool>(),
            ) {
                judge(&asks, &bids, &quantity, buy, true)?;
            }
        }

        /// The cases proptest found: a 1e-15 level against a quantity of 28 digits (the
        /// rest does not fit 96 bits), a cost below 1e-28. Refused, not reported empty
        /// or filled at a rounded-away price.
        #[test]
        fn figures_too_fine_for_28_decimals_are_refused() {
            let max = "99999999999999.99999999999999";
            let b = book(&[], &[("2", "0.000000000000001")]);
            assert_eq!(walk(Side::Buy, &b, dec(max)), Err(Overflow));
            assert_eq!(
                walk(Side::Buy, &b, dec("1")).unwrap(),
                walked("0.000000000000001", "2", 1)
            );
            // A cost of 29 digits, rounded: the average fell 6e-17 below the only bid taken.
            let b = book(&[("2300000000000.0000000000002", "3501")], &[]);
            assert_eq!(
                walk(Side::Sell, &b, dec("10000")).unwrap(),
                walked("3501", "2300000000000.0000000000002", 1)
            );
            let tiny = book(&[], &[("1.1", "1")]);
            assert_eq!(
                walk(Side::Buy, &tiny, dec("0.0000000000000000000000000001")),
                Err(Overflow)
            );
        }
    }
}
