//! The seam between order handling and whoever executes the order. The paper venue
//! (paper.rs) is the only implementation so far; a real venue (exchange API) implements
//! the same trait, and a later change adds an event stream for its asynchronous fills.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use moonbus_common::{
    Book, ClientOrderId, NonNegativeMoney, OrderRequest, PositiveMoney, Symbol, Tick, Timings,
    Venue as VenueName,
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
            book_max_age,
            tick_max_age,
        }
    }

    /// The latest book of its venue and symbol, whatever its `ts`.
    pub fn update_book(&mut self, book: Book) {
        self.update_book_at(book, Instant::now());
    }

    fn update_book_at(&mut self, book: Book, received: Instant) {
        let venues = self.books.entry(book.symbol.clone()).or_default();
        venues.insert(book.venue.clone(), (book, received));
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

    /// The latest tick of its symbol, whatever its `ts`.
    pub fn update(&mut self, tick: Tick) {
        self.update_at(tick, Instant::now());
    }

    fn update_at(&mut self, tick: Tick, received: Instant) {
        self.ticks.insert(tick.symbol.clone(), (tick, received));
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
        market.update(tick("100", NOW + HOUR));
        market.update(tick("101", NOW));
        market.update(tick("102", NOW + 1));
        assert_eq!(market.price(&symbol), Some("102".parse().unwrap()));
    }

    #[test]
    fn a_sender_clock_stepping_back_keeps_fresh_prices() {
        let mut market = Market::default();
        let symbol: Symbol = "BTC-USD".parse().unwrap();
        market.update(tick("100", NOW));
        market.update(tick("99", NOW - HOUR));
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
        market.update_at(tick("100", NOW + HOUR), long_ago);
        assert_eq!(market.price(&symbol), None);
        assert!(market.tick_age(&symbol).unwrap() >= Duration::from_millis(200));
        market.update(tick("101", NOW - HOUR));
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
        market.update_book(book(NOW + HOUR, "100"));
        market.update_book(book(NOW, "101"));
        let best = |m: &Market| {
            m.book(&VenueName::sim(), &symbol)
                .map(|b| b.bids[0].0.to_string())
        };
        assert_eq!(best(&market).as_deref(), Some("101"));
        let long_ago = Instant::now()
            .checked_sub(Duration::from_millis(200))
            .unwrap();
        market.update_book_at(book(NOW + HOUR, "102"), long_ago);
        assert_eq!(
            best(&market),
            None,
            "received too long ago, whatever its ts"
        );
    }
}
