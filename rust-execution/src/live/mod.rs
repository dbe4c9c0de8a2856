//! Live venues: real exchanges behind one seam.
//!
//! Each venue of `[execution.live.<name>]` (moonbus.toml) has a mode: `paper` (the paper
//! venue fills its orders, as always), `testnet` or `live` (an [`Exchange`] adapter sends
//! them: binance.rs for Binance spot, USDⓈ-M futures and Aster, hyperliquid.rs, jupiter.rs).
//!
//! The contract between the router (router.rs) and an adapter:
//! - `submit` sends a risk-approved order once. The venue's answer is the order's state
//!   ([`Submitted`]); no answer at all is [`Submitted::Unknown`]: the order is never sent
//!   again, it is queried (by its client order id) until the venue knows it or it can no
//!   longer reach the venue (`unknown_deadline` after the send, e.g. Binance's recvWindow).
//! - Orders carry our `client_order_id` to the venue (Binance `newClientOrderId`,
//!   Hyperliquid a `cloid` derived from it, Jupiter none: the transaction signature is kept),
//!   so a retry can never double at the venue.
//! - A venue that cannot find an order by our id (a Solana swap is known by its signature)
//!   hands the venue's id to the [`WriteAhead`] before the order leaves: the router stores
//!   it on an ACCEPTED report, so a crash at any point after the send still leaves the
//!   record a restarted execution needs to find the order ([`Exchange::restore`]).
//! - Fills arrive as [`VenueEvent::Order`] with CUMULATIVE figures (filled quantity,
//!   notional, fee): the router reports the difference from what it reported before, so a
//!   duplicate or replayed event changes nothing and a missed one is caught up by the next.
//! - Adapters are cheap to clone (an `Arc` inside) and their futures are `Send`, so the
//!   router may run them in spawned jobs.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use moonbus_common::Symbol;
use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::venue::Routed;

pub mod binance;
pub mod hyperliquid;
pub mod jupiter;

/// Where a venue's orders go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The paper venue fills them (default): nothing leaves the machine.
    #[default]
    Paper,
    /// The venue's test network, with test keys.
    Testnet,
    /// Real money: needs `[execution] allow_live = true` as well.
    Live,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Paper => "paper",
            Mode::Testnet => "testnet",
            Mode::Live => "live",
        })
    }
}

/// Why a venue call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VenueError {
    /// The venue answered and refused (bad symbol, filter, insufficient balance, unknown
    /// order...): final, the reason is the venue's own words, prefixed with its code.
    Refused(String),
    /// No usable answer (timeout, connection, 5xx, rate limited, malformed): the state at
    /// the venue is unknown; try again later, never assume.
    Transient(String),
}

impl fmt::Display for VenueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VenueError::Refused(why) => write!(f, "refused: {why}"),
            VenueError::Transient(why) => write!(f, "transient: {why}"),
        }
    }
}

impl std::error::Error for VenueError {}

/// What the venue said to a new order.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// The venue has the order; its fills and end come as events (or by `query`). `state`
    /// is what the answer already said (an order can fill in part before the answer).
    Accepted(VenueOrder),
    /// Refused before it reached the book, by our own check of the venue's rules (tick
    /// size, lot size, min notional, notional cap) or by the venue: REJECTED with reason.
    Rejected { reason: String },
    /// No answer: it may or may not be at the venue. Queried, never resent.
    Unknown { reason: String },
}

/// An order's state at the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VenueStatus {
    /// Working (possibly part filled).
    Open,
    /// Entirely filled.
    Filled,
    /// Cancelled (by us, the kill switch or the venue), possibly part filled.
    Cancelled,
    /// Ended by its time in force (IOC remainder, expiry, a swap whose blockhash expired).
    Expired,
    /// Refused by the venue after it was acknowledged.
    Rejected,
}

/// One order as the venue reports it (answer, query, stream, open orders). Figures are
/// cumulative since the order was placed and exact decimals.
#[derive(Debug, Clone, PartialEq)]
pub struct VenueOrder {
    /// The client order id as WE know it (adapters map a derived id back to ours); `None`
    /// for an order the venue has that did not come from us (reconciliation reports it).
    pub client_order_id: Option<String>,
    /// The venue's own id (Binance orderId, Hyperliquid oid, Solana transaction signature).
    pub venue_order_id: Option<String>,
    /// The symbol in our form (BASE-QUOTE); `None` if the venue's symbol maps to none.
    pub symbol: Option<Symbol>,
    /// The venue's own symbol (BTCUSDT, BTC, a mint pair).
    pub venue_symbol: String,
    pub status: VenueStatus,
    /// Filled quantity so far.
    pub filled: Decimal,
    /// Sum of price x quantity over the fills so far (quote currency).
    pub filled_notional: Decimal,
    /// Fees so far, in the quote currency (converted by the adapter if the venue charges
    /// them in another asset, e.g. BNB; an unconvertible fee is left out and logged).
    pub fee: Decimal,
    /// The venue's reason for a Cancelled/Expired/Rejected end, if it gave one.
    pub reason: Option<String>,
    /// When the venue last changed it (ns since the epoch; the venue's clock).
    pub ts: u64,
}

/// A signed quantity of a symbol at the venue (perps: the position; spot: the base asset).
#[derive(Debug, Clone, PartialEq)]
pub struct VenuePosition {
    pub symbol: Symbol,
    /// Long > 0, short < 0.
    pub quantity: Decimal,
    pub entry_price: Option<Decimal>,
}

/// A balance of one asset.
#[derive(Debug, Clone, PartialEq)]
pub struct VenueBalance {
    pub asset: String,
    /// Free + locked.
    pub total: Decimal,
}

/// Everything reconciliation reads from a venue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountState {
    pub balances: Vec<VenueBalance>,
    pub positions: Vec<VenuePosition>,
    pub open_orders: Vec<VenueOrder>,
    /// The account's value in the quote currency when the venue states it (perps margin
    /// account value; spot: the quote balance plus positions at the venue's prices).
    pub equity: Option<Decimal>,
    /// Free cash in the quote currency (what risk uses as cash when the venue is live).
    pub cash: Option<Decimal>,
}

/// What an adapter's private stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum VenueEvent {
    /// An order changed (fill, cancel, expiry, rejection).
    Order(VenueOrder),
    /// The private stream is up (`true`) or lost (`false`, with why); while it is down
    /// the router polls open orders with `query`.
    Health { connected: bool, detail: String },
    /// Something the venue sent that could not be read, so it was not applied (a malformed
    /// fill in a list whose other fills were applied, a malformed frame or event): money at
    /// the venue the system may not see. `of` names it (our client order id when the
    /// adapter could tell whose it is, else what it was), `why` says what was wrong (with an
    /// excerpt). The router tells it on errors.execution (`exec.venue.<venue>`), throttled.
    Problem { of: String, why: String },
}

/// A private stream's read deadline (Binance user data stream, Hyperliquid user feeds). A
/// half-open connection (the peer gone without FIN/RST: a NAT timeout, a dead link) reads
/// nothing and errs never, so without it a dead stream looks up forever: no fills, no REST
/// fallback. Every frame heard (text, ping, pong) pushes the deadline back; `ping_after` of
/// silence first asks the venue once (the caller sends its ping), `idle` of silence and the
/// connection is dead: the caller drops it and reconnects as after a disconnect.
#[derive(Debug)]
pub(crate) struct ReadDeadline {
    idle: Duration,
    ping_after: Option<Duration>,
    last_heard: tokio::time::Instant,
    pinged: bool,
}

/// What a [`ReadDeadline`] says is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing heard for `ping_after`: send a ping.
    Ping,
    /// Nothing heard for this long (at least `idle`): the connection is dead.
    Dead(Duration),
}

impl ReadDeadline {
    /// `ping_after` at or beyond `idle` is no ping at all.
    pub(crate) fn new(idle: Duration, ping_after: Option<Duration>) -> Self {
        ReadDeadline {
            idle,
            ping_after: ping_after.filter(|p| *p < idle),
            last_heard: tokio::time::Instant::now(),
            pinged: false,
        }
    }

    /// A frame arrived.
    pub(crate) fn heard(&mut self) {
        self.last_heard = tokio::time::Instant::now();
        self.pinged = false;
    }

    /// Resolves when a ping or the end is due (cancel-safe: a `select!` branch).
    pub(crate) async fn due(&mut self) -> Due {
        if let Some(ping_after) = self.ping_after.filter(|_| !self.pinged) {
            tokio::time::sleep_until(self.last_heard + ping_after).await;
            self.pinged = true;
            return Due::Ping;
        }
        tokio::time::sleep_until(self.last_heard + self.idle).await;
        Due::Dead(self.last_heard.elapsed())
    }
}

/// Stores the venue's id of an order (`Ok`: stored) before the order is sent; an `Err`
/// says why it could not be, and the order must then not be sent.
pub type WriteAhead<'a> =
    &'a (dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send + Sync);

/// A real venue. Methods take `&self`: adapters keep their state (symbol rules, time
/// offset, rate-limit budget) behind an `Arc`, so clones share it.
pub trait Exchange: Clone + Send + Sync + 'static {
    /// Read the venue's rules (exchangeInfo, meta, token decimals), sync the clock, and
    /// start the private stream (user data stream, WebSocket user feeds, signature
    /// subscriptions) that sends `events` until the sender is dropped; it reconnects
    /// by itself and says so with [`VenueEvent::Health`].
    fn start(
        &self,
        events: mpsc::UnboundedSender<VenueEvent>,
    ) -> impl std::future::Future<Output = Result<(), VenueError>> + Send;

    /// Send a risk-approved order once (see the module comment). A venue that finds
    /// orders only by its own id gives that id to `write_ahead` before anything leaves,
    /// and does not send when it fails.
    fn submit(
        &self,
        order: &Routed,
        write_ahead: WriteAhead<'_>,
    ) -> impl std::future::Future<Output = Submitted> + Send;

    /// Cancel a working order; the order's state after the cancel (it may have filled
    /// meanwhile: then Filled, not Cancelled).
    fn cancel(
        &self,
        order: &Routed,
    ) -> impl std::future::Future<Output = Result<VenueOrder, VenueError>> + Send;

    /// The order's state by its client order id; `Ok(None)` if the venue has no such order.
    fn query(
        &self,
        order: &Routed,
    ) -> impl std::future::Future<Output = Result<Option<VenueOrder>, VenueError>> + Send;

    /// Balances, positions, open orders (reconciliation).
    fn account(&self)
        -> impl std::future::Future<Output = Result<AccountState, VenueError>> + Send;

    /// How long after a send without answer the order can no longer reach the venue.
    fn unknown_deadline(&self) -> Duration;

    /// The order's final report is stored and the router follows it no more: drop what
    /// the adapter kept for it (its fees so far, id mappings), so a long run does not keep
    /// every order it ever sent. A later event about it is ignored, as the router's is.
    fn forget(&self, client_order_id: &str);

    /// Whether `query` finds an order by our client order id alone (Binance, Hyperliquid).
    /// A venue that cannot (a Solana swap is known by its signature only) has the router
    /// store the venue's id as soon as it is known, and gets it back with [`Exchange::restore`].
    fn finds_orders_by_client_id(&self) -> bool {
        true
    }

    /// After a restart: a working order whose stored reports carry the venue's id
    /// (`venue_order_id`, first stored at `since_ns`), so that `query` can find it again.
    fn restore(&self, _order: &Routed, _venue_order_id: &str, _since_ns: u64) {}
}
pub mod router;
