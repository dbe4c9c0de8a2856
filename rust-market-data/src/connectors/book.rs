//! A venue's local order book for one symbol, and the per-symbol state that turns
//! venue updates into `Tick`s and `Book`s (sequence numbers, last trade, best
//! bid and ask).

use std::collections::BTreeMap;

use moonbus_common::{
    now_ns, Book, NonNegativeMoney, PositiveMoney, PriceLevel, Symbol, Tick, Venue,
};
use rust_decimal::Decimal;

use crate::feed::FeedEvent;

/// A local book keeps at most this many levels a side; the far ones go first
/// (diff streams also add levels far from the top, and memory must stay bounded).
const MAX_LEVELS: usize = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Bid,
    Ask,
}

/// Price -> size, per side. Sizes are absolute (not deltas); 0 removes a level.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LocalBook {
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
}

/// A price level as a venue sent it, checked: price > 0, size >= 0.
pub(crate) fn level(price: Decimal, size: Decimal) -> Result<(Decimal, Decimal), String> {
    if price <= Decimal::ZERO {
        return Err(format!("book level price {price} is not positive"));
    }
    if size < Decimal::ZERO {
        return Err(format!("book level size {size} is negative"));
    }
    Ok((price, size))
}

impl LocalBook {
    /// A book from a full snapshot (levels checked with [`level`]).
    pub fn from_levels(bids: &[(Decimal, Decimal)], asks: &[(Decimal, Decimal)]) -> Self {
        let mut book = Self::default();
        for &(price, size) in bids {
            book.set(Side::Bid, price, size);
        }
        for &(price, size) in asks {
            book.set(Side::Ask, price, size);
        }
        book
    }

    pub fn set(&mut self, side: Side, price: Decimal, size: Decimal) {
        let levels = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if size.is_zero() {
            // Removing a level the book does not have is normal (Binance says so).
            levels.remove(&price);
            return;
        }
        levels.insert(price, size);
        if levels.len() > MAX_LEVELS {
            // The worst level: the lowest bid, the highest ask.
            let worst = match side {
                Side::Bid => levels.keys().next().copied(),
                Side::Ask => levels.keys().next_back().copied(),
            };
            if let Some(worst) = worst {
                levels.remove(&worst);
            }
        }
    }

    pub fn best_bid(&self) -> Option<Decimal> {
        self.bids.keys().next_back().copied()
    }

    pub fn best_ask(&self) -> Option<Decimal> {
        self.asks.keys().next().copied()
    }

    /// Best bid at or above best ask: a book that missed an update.
    pub fn is_crossed(&self) -> bool {
        matches!((self.best_bid(), self.best_ask()), (Some(b), Some(a)) if b >= a)
    }

    /// The best `depth` levels a side, best first.
    fn top(&self, depth: usize) -> (Vec<PriceLevel>, Vec<PriceLevel>) {
        let wire = |(price, size): (&Decimal, &Decimal)| {
            Some((
                PositiveMoney::new(*price).ok()?,
                NonNegativeMoney::new(*size).ok()?,
            ))
        };
        let bids = self
            .bids
            .iter()
            .rev()
            .filter_map(wire)
            .take(depth)
            .collect();
        let asks = self.asks.iter().filter_map(wire).take(depth).collect();
        (bids, asks)
    }
}

/// A trade's price and size, checked. Connectors check every trade of a frame
/// before they change any state, so that a frame is taken whole or not at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Trade {
    price: PositiveMoney,
    size: Option<NonNegativeMoney>,
}

impl Trade {
    pub fn new(price: Decimal, size: Option<Decimal>) -> Result<Self, String> {
        let price =
            PositiveMoney::new(price).map_err(|_| format!("price {price} is not positive"))?;
        let size = size
            .map(|s| NonNegativeMoney::new(s).map_err(|_| format!("size {s} is negative")))
            .transpose()?;
        Ok(Self { price, size })
    }
}

/// One symbol of one venue: what its next tick and book carry.
#[derive(Debug, Clone)]
pub(crate) struct Instrument {
    pub venue: Venue,
    pub symbol: Symbol,
    /// The last tick's and book's seq; each counts from 1 per run of the service.
    tick_seq: u64,
    book_seq: u64,
    last_price: Option<PositiveMoney>,
    bid: Option<PositiveMoney>,
    ask: Option<PositiveMoney>,
}

impl Instrument {
    pub fn new(venue: Venue, symbol: Symbol) -> Self {
        Self {
            venue,
            symbol,
            tick_seq: 0,
            book_seq: 0,
            last_price: None,
            bid: None,
            ask: None,
        }
    }

    /// A trade (or a venue's last/mid price), checked beforehand with [`Trade::new`]:
    /// a tick with the last known bid and ask.
    pub fn trade(&mut self, trade: Trade) -> FeedEvent {
        self.last_price = Some(trade.price);
        self.tick(trade.price, trade.size)
    }

    /// A new best bid and ask: a tick when either changed, priced at the last trade
    /// (or the mid before any trade). A side at 0 or missing is "no quote".
    pub fn quote(&mut self, bid: Option<Decimal>, ask: Option<Decimal>) -> Option<FeedEvent> {
        if !self.set_quote(bid, ask) {
            return None;
        }
        let price = self.last_price.or_else(|| self.mid())?;
        Some(self.tick(price, None))
    }

    /// Remembers the best bid and ask for the next ticks; true when they changed.
    pub fn set_quote(&mut self, bid: Option<Decimal>, ask: Option<Decimal>) -> bool {
        let bid = bid.and_then(|b| PositiveMoney::new(b).ok());
        let ask = ask.and_then(|a| PositiveMoney::new(a).ok());
        let changed = (bid, ask) != (self.bid, self.ask);
        self.bid = bid;
        self.ask = ask;
        changed
    }

    /// Remembers the book's best levels for the next ticks (no tick of its own).
    pub fn touch(&mut self, book: &LocalBook) {
        self.set_quote(book.best_bid(), book.best_ask());
    }

    /// The top `depth` levels of `book`; `seq` is the venue's own update id when it
    /// has one (Binance), else the next of this symbol's count.
    pub fn book(&mut self, book: &LocalBook, depth: usize, seq: Option<u64>) -> FeedEvent {
        self.book_seq = seq.unwrap_or(self.book_seq + 1);
        let (bids, asks) = book.top(depth);
        FeedEvent::Book(Book {
            venue: self.venue.clone(),
            symbol: self.symbol.clone(),
            bids,
            asks,
            seq: self.book_seq,
            ts: now_ns(),
        })
    }

    fn mid(&self) -> Option<PositiveMoney> {
        let (bid, ask) = (self.bid?.get(), self.ask?.get());
        PositiveMoney::new(((bid + ask) / Decimal::TWO).normalize()).ok()
    }

    fn tick(&mut self, price: PositiveMoney, size: Option<NonNegativeMoney>) -> FeedEvent {
        self.tick_seq += 1;
        FeedEvent::Tick(Tick {
            venue: self.venue.clone(),
            symbol: self.symbol.clone(),
            price,
            bid: self.bid,
            ask: self.ask,
            size,
            seq: self.tick_seq,
            ts: now_ns(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn instrument() -> Instrument {
        Instrument::new("binance".parse().unwrap(), "BTC-USDT".parse().unwrap())
    }

    fn levels(book: &[PriceLevel]) -> Vec<(String, String)> {
        book.iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn a_book_keeps_absolute_sizes_and_serves_the_best_levels_first() {
        let mut book = LocalBook::from_levels(
            &[(d("99"), d("1")), (d("100"), d("2")), (d("98"), d("3"))],
            &[(d("101"), d("1")), (d("103"), d("5")), (d("102"), d("4"))],
        );
        book.set(Side::Bid, d("100"), d("7"));
        book.set(Side::Ask, d("101"), d("0"));
        book.set(Side::Ask, d("150"), d("0"));
        let FeedEvent::Book(msg) = instrument().book(&book, 2, None) else {
            panic!()
        };
        assert_eq!(
            levels(&msg.bids),
            [("100".into(), "7".into()), ("99".into(), "1".into())]
        );
        assert_eq!(
            levels(&msg.asks),
            [("102".into(), "4".into()), ("103".into(), "5".into())]
        );
        assert_eq!(msg.seq, 1);
        assert!(!book.is_crossed());
        book.set(Side::Bid, d("102"), d("1"));
        assert!(book.is_crossed());
    }

    #[test]
    fn a_book_drops_its_worst_levels_past_the_limit() {
        let mut book = LocalBook::default();
        for i in 1..=(MAX_LEVELS as i64 + 10) {
            book.set(Side::Bid, Decimal::from(i), d("1"));
            book.set(Side::Ask, Decimal::from(100_000 + i), d("1"));
        }
        assert_eq!(book.bids.len(), MAX_LEVELS);
        assert_eq!(book.best_bid(), Some(Decimal::from(MAX_LEVELS as i64 + 10)));
        assert_eq!(book.asks.len(), MAX_LEVELS);
        assert_eq!(book.best_ask(), Some(d("100001")));
    }

    #[test]
    fn levels_must_be_positive_prices_and_non_negative_sizes() {
        assert!(level(d("1"), d("0")).is_ok());
        assert!(level(d("0"), d("1")).is_err());
        assert!(level(d("1"), d("-1")).is_err());
    }

    #[test]
    fn ticks_carry_the_last_trade_and_quote_with_counting_seqs() {
        let mut btc = instrument();
        // A quote before any trade is priced at the mid.
        let Some(FeedEvent::Tick(t1)) = btc.quote(Some(d("100")), Some(d("101"))) else {
            panic!()
        };
        assert_eq!((t1.price.to_string(), t1.seq), ("100.5".into(), 1));
        assert!(
            btc.quote(Some(d("100")), Some(d("101"))).is_none(),
            "unchanged quote"
        );
        let FeedEvent::Tick(t2) = btc.trade(Trade::new(d("100.75"), Some(d("0.5"))).unwrap())
        else {
            panic!()
        };
        assert_eq!(t2.price.to_string(), "100.75");
        assert_eq!(t2.size.map(|s| s.to_string()), Some("0.5".into()));
        assert_eq!(
            (t2.bid.unwrap().to_string(), t2.ask.unwrap().to_string()),
            ("100".into(), "101".into())
        );
        assert_eq!(t2.seq, 2);
        let Some(FeedEvent::Tick(t3)) = btc.quote(Some(d("100.5")), Some(d("101"))) else {
            panic!()
        };
        assert_eq!(
            (t3.price.to_string(), t3.seq, t3.size),
            ("100.75".into(), 3, None)
        );
        assert!(Trade::new(d("0"), None).is_err());
        assert!(Trade::new(d("1"), Some(d("-1"))).is_err());
    }
}
