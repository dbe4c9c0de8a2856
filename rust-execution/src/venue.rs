//! The seam between order handling and whoever executes the order. The paper venue
//! (paper.rs) is the only implementation so far; a real venue (exchange API) implements
//! the same trait, and a later change adds an event stream for its asynchronous fills.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use moonbus_common::caps::{KeyCap, MAX_BOOK_LEVELS};
use moonbus_common::{
    steady_ns, Book, ClientOrderId, NonNegativeMoney, OrderRequest, PositiveMoney, Symbol, Tick,
    Timings, Venue as VenueName,
};

/// An order that passed validation and the risk check, as handed to a venue.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub order: OrderRequest,
    /// `<venue>-<ORDERS stream sequence>`: unique, the same on a re-delivery, and the key
    /// to find the order again in the ORDERS stream after a restart (see ledger.rs).
    pub order_id: String,
    /// Hops reached so far (origin, received, risk checked).
    pub timings: Timings,
}

/// One execution of an order: all of it, or (a MARKET order the book could not fill)
/// the part that did execute. `price` is the average over the book levels taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    pub price: PositiveMoney,
    pub quantity: PositiveMoney,
    pub fee: NonNegativeMoney,
    pub ts: u64,
}

/// What the venue did with a new order.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    Filled(Fill),
    /// Part filled; the rest expired (`reason`): a MARKET order never rests.
    PartiallyFilled {
        fill: Fill,
        reason: String,
    },
    /// To work at the venue until a market update fills it or it is cancelled, from the
    /// moment it is handed to `rest` (once its ACCEPTED report is recorded, so no fill
    /// can ever be reported before the acceptance).
    Resting,
    /// An IOC order that could not execute at once.
    Expired {
        reason: String,
    },
    Rejected {
        reason: String,
    },
}

/// Where orders go. `place` and `cancel` are async because a real venue is a network
/// call away; the paper venue answers at once.
#[allow(async_fn_in_trait)] // one venue per process, used through generics, never `dyn`
pub trait Venue {
    /// Does this venue serve orders addressed to `venue` (`OrderRequest.venue`)?
    fn serves(&self, venue: &VenueName) -> bool;

    /// Execute a risk-approved order against the current market.
    async fn place(&mut self, routed: &Routed, market: &Market) -> Placement;

    /// Take a resting order off the venue; `None` if it is not resting here.
    async fn cancel(&mut self, client_order_id: &ClientOrderId) -> Option<Routed>;

    /// The resting order with this id, if any.
    fn resting(&self, client_order_id: &ClientOrderId) -> Option<&Routed>;

    /// Put an order on the venue's book: a new one once its ACCEPTED report is recorded,
    /// a resting one after a restart, or when recording its fill or cancel failed.
    fn rest(&mut self, routed: Routed);

    /// A new tick: the resting orders it fills, taken off the venue.
    fn on_market(&mut self, tick: &Tick) -> Vec<(Routed, Fill)>;
}

/// The latest tick per symbol (`md.tick.>`: the `ref_price` of risk checks and the paper
/// venue's quotes) and the latest book per venue and symbol (`md.book.>`: the depth a
/// paper MARKET order walks).
///
/// Clocks: the last one RECEIVED wins and its age is measured from when it arrived, on
/// this process's monotonic clock; the sender's `ts` is never compared. A tick dated in
/// the future (a skewed or stepped clock at market-data) would otherwise make every later
/// tick look older and freeze the price; core NATS delivers one publisher's messages in
/// the order they were sent, so arrival order is the publisher's order.
#[derive(Debug)]
pub struct Market {
    /// Per symbol: the tick and when it came.
    ticks: HashMap<Symbol, (Tick, Instant)>,
    /// Per symbol, per venue: the book and when it came.
    books: HashMap<Symbol, HashMap<VenueName, (Book, Instant)>>,
    /// How many books `books` holds, of every symbol and venue.
    book_count: usize,
    /// At most `MAX_MARKET_SYMBOLS` ticks and as many books (moonbus_common::caps): a
    /// stolen market-data credential naming made-up symbols cannot grow them without end.
    tick_cap: KeyCap,
    book_cap: KeyCap,
    /// A book received longer ago than this is not used (the feed stopped sending books).
    book_max_age: Duration,
    /// A tick received longer ago than this is no price at all (the feed stopped).
    tick_max_age: Duration,
}

/// The venue name of aggregated books (`md.book.all.<symbol>`).
pub const AGGREGATED: &str = "all";

impl Default for Market {
    fn default() -> Self {
        Self::new(Duration::from_secs(2), Duration::from_secs(5))
    }
}

impl Market {
    pub fn new(book_max_age: Duration, tick_max_age: Duration) -> Self {
        Self {
            ticks: HashMap::new(),
            books: HashMap::new(),
            book_count: 0,
            tick_cap: KeyCap::default(),
            book_cap: KeyCap::default(),
            book_max_age,
            tick_max_age,
        }
    }

    #[cfg(test)]
    fn with_cap(mut self, limit: usize) -> Self {
        self.tick_cap = KeyCap::new(limit);
        self.book_cap = KeyCap::new(limit);
        self
    }

    /// The latest book of its venue and symbol, whatever its `ts`; refused (with the
    /// reason) when a side has more than `MAX_BOOK_LEVELS` levels, or when it is the first
    /// of its venue and symbol and the books are at their cap with none stale.
    pub fn update_book(&mut self, book: Book) -> Result<(), String> {
        self.update_book_at(book, Instant::now())
    }

    fn update_book_at(&mut self, book: Book, received: Instant) -> Result<(), String> {
        let levels = book.bids.len().max(book.asks.len());
        if levels > MAX_BOOK_LEVELS {
            return Err(format!(
                "book of {} {} refused: {levels} levels a side, more than a book may have \
                 (MAX_BOOK_LEVELS {MAX_BOOK_LEVELS})",
                book.venue, book.symbol
            ));
        }
        let kept = self
            .books
            .get(&book.symbol)
            .is_some_and(|venues| venues.contains_key(&book.venue));
        if !kept && self.book_cap.full(self.book_count) {
            if self.book_cap.may_sweep(steady_ns()) {
                self.drop_stale_books();
            }
            if self.book_cap.full(self.book_count) {
                let key = format!("{} {}", book.venue, book.symbol);
                return Err(self.book_cap.refusal("book of", &key));
            }
        }
        let venues = self.books.entry(book.symbol.clone()).or_default();
        if venues
            .insert(book.venue.clone(), (book, received))
            .is_none()
        {
            self.book_count += 1;
        }
        Ok(())
    }

    /// Drops the books too old to be used (`book_max_age`), to make room.
    fn drop_stale_books(&mut self) {
        let max_age = self.book_max_age;
        for venues in self.books.values_mut() {
            venues.retain(|_, (_, received)| received.elapsed() <= max_age);
        }
        self.books.retain(|_, venues| !venues.is_empty());
        self.book_count = self.books.values().map(HashMap::len).sum();
    }

    /// The book an order for `venue` fills against: that venue's own, else the aggregated
    /// one; only if it is fresh.
    pub fn book(&self, venue: &VenueName, symbol: &Symbol) -> Option<&Book> {
        let venues = self.books.get(symbol)?;
        [venue.as_str(), AGGREGATED]
            .into_iter()
            .filter_map(|name| venues.get(name))
            .find(|(_, received)| received.elapsed() <= self.book_max_age)
            .map(|(book, _)| book)
    }

    /// The latest tick of its symbol, whatever its `ts`; refused (with the reason) when it
    /// is the first of its symbol and the ticks are at their cap with none stale.
    pub fn update(&mut self, tick: Tick) -> Result<(), String> {
        self.update_at(tick, Instant::now())
    }

    fn update_at(&mut self, tick: Tick, received: Instant) -> Result<(), String> {
        if self.tick_cap.full(self.ticks.len()) && !self.ticks.contains_key(&tick.symbol) {
            if self.tick_cap.may_sweep(steady_ns()) {
                // Ticks too old to price with (`tick_max_age`) make room.
                let max_age = self.tick_max_age;
                self.ticks
                    .retain(|_, (_, received)| received.elapsed() <= max_age);
            }
            if self.tick_cap.full(self.ticks.len()) {
                return Err(self.tick_cap.refusal("tick of", tick.symbol.as_str()));
            }
        }
        self.ticks.insert(tick.symbol.clone(), (tick, received));
        Ok(())
    }

    /// The latest tick, if received within the tick max age (else the market is stale).
    pub fn tick(&self, symbol: &Symbol) -> Option<&Tick> {
        self.ticks
            .get(symbol)
            .filter(|(_, received)| received.elapsed() <= self.tick_max_age)
            .map(|(tick, _)| tick)
    }

    /// How long ago the latest tick of `symbol` arrived (fresh or not).
    #[cfg(test)]
    pub fn tick_age(&self, symbol: &Symbol) -> Option<Duration> {
        self.ticks
            .get(symbol)
            .map(|(_, received)| received.elapsed())
    }

    pub fn price(&self, symbol: &Symbol) -> Option<PositiveMoney> {
        self.tick(symbol).map(|t| t.price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(price: &str, ts: u64) -> Tick {
        Tick {
            venue: VenueName::sim(),
            symbol: "BTC-USD".parse().unwrap(),
            price: price.parse().unwrap(),
            bid: None,
            ask: None,
            size: None,
            seq: 0,
            ts,
        }
    }

    const NOW: u64 = 1_796_000_000_000_000_000;
    const HOUR: u64 = 3_600_000_000_000;

    #[test]
    fn a_future_dated_tick_does_not_freeze_the_price() {
        let mut market = Market::default();
        let symbol: Symbol = "BTC-USD".parse().unwrap();
        market.update(tick("100", NOW + HOUR)).unwrap();
        market.update(tick("101", NOW)).unwrap();
        market.update(tick("102", NOW + 1)).unwrap();
        assert_eq!(market.price(&symbol), Some("102".parse().unwrap()));
    }

    #[test]
    fn a_sender_clock_stepping_back_keeps_fresh_prices() {
        let mut market = Market::default();
        let symbol: Symbol = "BTC-USD".parse().unwrap();
        market.update(tick("100", NOW)).unwrap();
        market.update(tick("99", NOW - HOUR)).unwrap();
        assert_eq!(market.price(&symbol), Some("99".parse().unwrap()));
        // ... and a tick dated an hour ago but just received is fresh.
        assert!(market.tick_age(&symbol).unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn no_tick_received_within_the_max_age_is_no_price() {
        let mut market = Market::new(Duration::from_secs(2), Duration::from_millis(100));
        let symbol: Symbol = "BTC-USD".parse().unwrap();
        // Dated now, but received 200 ms ago: stale, whatever its ts says.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_millis(200))
            .unwrap();
        market.update_at(tick("100", NOW + HOUR), long_ago).unwrap();
        assert_eq!(market.price(&symbol), None);
        assert!(market.tick_age(&symbol).unwrap() >= Duration::from_millis(200));
        market.update(tick("101", NOW - HOUR)).unwrap();
        assert_eq!(market.price(&symbol), Some("101".parse().unwrap()));
    }

    #[test]
    fn the_last_book_received_wins_and_ages_on_receive_time() {
        let mut market = Market::new(Duration::from_millis(100), Duration::from_secs(5));
        let symbol: Symbol = "BTC-USD".parse().unwrap();
        let book = |ts: u64, price: &str| -> Book {
            serde_json::from_value(serde_json::json!({
                "venue": "sim", "symbol": "BTC-USD", "bids": [[price, "1"]], "asks": [],
                "seq": 1, "ts": ts
            }))
            .unwrap()
        };
        market.update_book(book(NOW + HOUR, "100")).unwrap();
        market.update_book(book(NOW, "101")).unwrap();
        let best = |m: &Market| {
            m.book(&VenueName::sim(), &symbol)
                .map(|b| b.bids[0].0.to_string())
        };
        assert_eq!(best(&market).as_deref(), Some("101"));
        let long_ago = Instant::now()
            .checked_sub(Duration::from_millis(200))
            .unwrap();
        market
            .update_book_at(book(NOW + HOUR, "102"), long_ago)
            .unwrap();
        assert_eq!(
            best(&market),
            None,
            "received too long ago, whatever its ts"
        );
    }

    #[test]
    fn ticks_and_books_of_made_up_symbols_stop_at_the_cap_and_stale_ones_make_room() {
        let mut market =
            Market::new(Duration::from_millis(100), Duration::from_millis(100)).with_cap(2);
        let of = |symbol: &str| -> Tick {
            Tick {
                symbol: symbol.parse().unwrap(),
                ..tick("100", NOW)
            }
        };
        let book_of = |venue: &str, symbol: &str| -> Book {
            serde_json::from_value(serde_json::json!({
                "venue": venue, "symbol": symbol, "bids": [["100", "1"]], "asks": [],
                "seq": 1, "ts": NOW
            }))
            .unwrap()
        };
        market.update(of("AAA-USD")).unwrap();
        market.update(of("BBB-USD")).unwrap();
        let refused = market.update(of("CCC-USD")).unwrap_err();
        assert!(refused.contains("MAX_MARKET_SYMBOLS 2"), "{refused}");
        assert!(market.tick_age(&"CCC-USD".parse().unwrap()).is_none());
        market.update(of("AAA-USD")).unwrap(); // a kept symbol still updates

        market.update_book(book_of("sim", "AAA-USD")).unwrap();
        market.update_book(book_of("binance", "AAA-USD")).unwrap();
        let refused = market
            .update_book(book_of("made_up", "AAA-USD"))
            .unwrap_err();
        assert!(refused.contains("book of made_up AAA-USD"), "{refused}");
        market.update_book(book_of("sim", "AAA-USD")).unwrap();

        // Once stale (and a second after the last sweep), the old ones make room.
        std::thread::sleep(Duration::from_millis(150));
        market.tick_cap = KeyCap::new(2);
        market.book_cap = KeyCap::new(2);
        market.update(of("CCC-USD")).unwrap();
        market.update_book(book_of("made_up", "AAA-USD")).unwrap();
        assert_eq!(market.ticks.len(), 1);
        assert_eq!(market.book_count, 1);
    }

    #[test]
    fn a_book_deeper_than_market_data_publishes_is_refused() {
        let mut market = Market::default();
        let levels: Vec<(String, String)> = (1..=MAX_BOOK_LEVELS + 1)
            .map(|i| (i.to_string(), "1".to_string()))
            .collect();
        let book: Book = serde_json::from_value(serde_json::json!({
            "venue": "sim", "symbol": "BTC-USD", "bids": [], "asks": levels, "seq": 1, "ts": NOW
        }))
        .unwrap();
        let refused = market.update_book(book).unwrap_err();
        assert!(refused.contains("MAX_BOOK_LEVELS 1000"), "{refused}");
        assert_eq!(market.book_count, 0);
    }
}
