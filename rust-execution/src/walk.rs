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

use moonbus_common::{Book, PriceLevel, Side};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::paper::Overflow;

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
    for (price, size) in levels {
        if left.is_zero() {
            break;
        }
        if size.is_zero() {
            continue;
        }
        let take = left.min(**size);
        cost = price
            .checked_mul(take)
            .and_then(|notional| cost.checked_add(notional))
            .ok_or(Overflow)?;
        left -= take;
        taken += 1;
        scale = scale.max(price.scale());
    }
    let filled = quantity - left;
    if filled.is_zero() {
        return Ok(None);
    }
    let average = cost.checked_div(filled).ok_or(Overflow)?;
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
        let b = book(&[], &[("70000000000000000000000000000", "2")]);
        assert_eq!(walk(Side::Buy, &b, dec("2")), Err(Overflow));
    }
}
