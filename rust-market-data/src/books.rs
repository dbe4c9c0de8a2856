//! Order books: the latest book of each (venue, symbol), published at most once
//! per `book_interval_ms` each (latest wins), and the aggregated book of a symbol
//! across venues, `md.book.all.<symbol>`.
//!
//! Aggregation: the latest book of every venue of the symbol that is not older
//! than `stale_after_ms`; bids (asks) at the same price are summed into one level;
//! the best `book_depth` levels each side, best first. So the best bid is the best
//! bid of any venue; the aggregate may be crossed (one venue's bid above another's
//! ask), which is what the venues say, and is left as is.

use std::collections::BTreeMap;

use moonbus_common::{Book, NonNegativeMoney, PriceLevel};
use rust_decimal::Decimal;

/// Publication state of one (venue, symbol)'s book.
#[derive(Debug, Default)]
pub struct BookSlot {
    /// The latest book received (published or waiting for its turn).
    pub latest: Option<Book>,
    /// When it was last published (ns), and whether `latest` is newer than that.
    pub published_ns: u64,
    pub pending: bool,
}

impl BookSlot {
    /// Keeps `book` as the latest; true if it may be published now
    /// (`interval_ns` since the last publication), else it waits (`pending`).
    pub fn offer(&mut self, book: Book, now_ns: u64, interval_ns: u64) -> bool {
        self.latest = Some(book);
        let due = self.published_ns == 0 || now_ns.saturating_sub(self.published_ns) >= interval_ns;
        self.pending = !due;
        due
    }

    pub fn published(&mut self, now_ns: u64) {
        self.published_ns = now_ns;
        self.pending = false;
    }
}

/// The levels of `books` summed per price, best `depth` first: bids high to low,
/// asks low to high.
pub fn aggregate<'a>(
    books: impl IntoIterator<Item = &'a Book>,
    depth: usize,
) -> (Vec<PriceLevel>, Vec<PriceLevel>) {
    let mut bids: BTreeMap<_, Decimal> = BTreeMap::new();
    let mut asks: BTreeMap<_, Decimal> = BTreeMap::new();
    for book in books {
        for (price, size) in &book.bids {
            *bids.entry(*price).or_default() += size.get();
        }
        for (price, size) in &book.asks {
            *asks.entry(*price).or_default() += size.get();
        }
    }
    let level = |(price, size): (_, Decimal)| {
        (
            price,
            NonNegativeMoney::new(size).unwrap_or(NonNegativeMoney::ZERO),
        )
    };
    (
        bids.into_iter().rev().take(depth).map(level).collect(),
        asks.into_iter().take(depth).map(level).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{PositiveMoney, Venue};

    fn level(price: &str, size: &str) -> PriceLevel {
        (
            price.parse::<PositiveMoney>().unwrap(),
            size.parse().unwrap(),
        )
    }

    fn book(venue: &str, bids: &[(&str, &str)], asks: &[(&str, &str)]) -> Book {
        Book {
            venue: venue.parse::<Venue>().unwrap(),
            symbol: "BTC-USD".parse().unwrap(),
            bids: bids.iter().map(|(p, s)| level(p, s)).collect(),
            asks: asks.iter().map(|(p, s)| level(p, s)).collect(),
            seq: 1,
            ts: 1,
        }
    }

    #[test]
    fn best_prices_across_venues_and_summed_depth() {
        let a = book(
            "binance",
            &[("100.0", "1"), ("99.5", "2")],
            &[("100.5", "1"), ("101", "3")],
        );
        let b = book(
            "coinbase",
            &[("100.1", "0.5"), ("99.50", "1.5")],
            &[("100.4", "2"), ("101", "1")],
        );
        let (bids, asks) = aggregate([&a, &b], 10);
        // 99.5 and 99.50 are one price level.
        assert_eq!(
            bids,
            [
                level("100.1", "0.5"),
                level("100.0", "1"),
                level("99.5", "3.5")
            ]
        );
        assert_eq!(
            asks,
            [level("100.4", "2"), level("100.5", "1"), level("101", "4")]
        );
        let (bids, asks) = aggregate([&a, &b], 1);
        assert_eq!((bids.len(), asks.len()), (1, 1));
        let (bids, asks) = aggregate(std::iter::empty(), 5);
        assert!(bids.is_empty() && asks.is_empty());
    }

    #[test]
    fn a_book_waits_for_its_interval_and_the_latest_wins() {
        let mut slot = BookSlot::default();
        let b = |seq| Book {
            seq,
            ..book("sim", &[], &[])
        };
        assert!(
            slot.offer(b(1), 1_000, 100),
            "the first book goes out at once"
        );
        slot.published(1_000);
        assert!(!slot.offer(b(2), 1_050, 100));
        assert!(!slot.offer(b(3), 1_080, 100));
        assert!(slot.pending);
        assert_eq!(slot.latest.as_ref().map(|b| b.seq), Some(3));
        assert!(slot.offer(b(4), 1_100, 100));
    }
}
