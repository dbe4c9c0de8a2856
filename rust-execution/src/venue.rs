//! The seam between order handling and whoever executes the order. The paper venue
//! (paper.rs) is the only implementation so far; a real venue (exchange API) implements
//! the same trait, and a later change adds an event stream for its asynchronous fills.

use std::collections::HashMap;

use moonbus_common::{
    ClientOrderId, NonNegativeMoney, OrderRequest, PositiveMoney, Symbol, Tick, Timings,
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

/// One execution of (so far: all of) an order.
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
    /// Works at the venue until a later market update fills it or it is cancelled.
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

    /// Put back a resting order: after a restart, or when recording its outcome failed.
    fn restore(&mut self, routed: Routed);

    /// A new tick: the resting orders it fills, taken off the venue.
    fn on_market(&mut self, tick: &Tick) -> Vec<(Routed, Fill)>;
}

/// The latest tick per symbol, from `md.tick.>`: the paper venue's market and the
/// `ref_price` of risk checks.
#[derive(Debug, Default)]
pub struct Market {
    ticks: HashMap<Symbol, Tick>,
}

impl Market {
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
