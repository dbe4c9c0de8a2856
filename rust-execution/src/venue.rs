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
#[derive(Debug)]
pub struct Market {
    ticks: HashMap<Symbol, Tick>,
    /// Per symbol, per venue: the book and when it came.
    books: HashMap<Symbol, HashMap<VenueName, (Book, Instant)>>,
    /// A book received longer ago than this is not used (the feed stopped sending books).
    book_max_age: Duration,
}

/// The venue name of aggregated books (`md.book.all.<symbol>`).
pub const AGGREGATED: &str = "all";

impl Default for Market {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl Market {
    pub fn new(book_max_age: Duration) -> Self {
        Self {
            ticks: HashMap::new(),
            books: HashMap::new(),
            book_max_age,
        }
    }

    /// Keep the book unless a newer one of the same venue and symbol is known.
    pub fn update_book(&mut self, book: Book) {
        let venues = self.books.entry(book.symbol.clone()).or_default();
        if venues
            .get(&book.venue)
            .is_some_and(|(known, _)| known.ts > book.ts)
        {
            return;
        }
        venues.insert(book.venue.clone(), (book, Instant::now()));
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

    /// A newer tick for the symbol is already known (ticks can arrive out of order).
    pub fn is_stale(&self, tick: &Tick) -> bool {
        self.ticks
            .get(&tick.symbol)
            .is_some_and(|known| known.ts > tick.ts)
    }

    /// Keep the tick unless it is stale (latest wins).
    pub fn update(&mut self, tick: Tick) {
        if !self.is_stale(&tick) {
            self.ticks.insert(tick.symbol.clone(), tick);
        }
    }

    pub fn tick(&self, symbol: &Symbol) -> Option<&Tick> {
        self.ticks.get(symbol)
    }

    pub fn price(&self, symbol: &Symbol) -> Option<PositiveMoney> {
        self.tick(symbol).map(|t| t.price)
    }
}
