//! The risk state and every change to it. One task owns the engine (service.rs), so
//! there are no locks: reports, ticks and requests are applied one at a time, in the
//! order they arrive. Time is always passed in, which keeps all of this testable.
//!
//! Nothing here panics on a number: the rules and the ledger check their arithmetic
//! (an order is refused `overflow`, a fill that cannot be booked is an error), the
//! account's totals saturate and then halt the account (`overflow`), and figures
//! beyond the contract's money range (|x| < 1e14) are written as its end.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};

use moonbus_common::caps::KeyCap;
use moonbus_common::{
    AccountState, AgentName, ClientOrderId, ExecutionReport, KillSwitchAction, KillSwitchRequest,
    KillSwitchState, LimitsPatch, LiveVenueStatus, Money, NonNegativeMoney, OrderRequest,
    OrderType, Position, PositiveMoney, Reconciliation, RiskCheckRequest, RiskCheckResult,
    RiskLimits, Side, Symbol, Tick, TimeInForce, TradingState, Venue, Verdict,
};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::applied::Applied;
use crate::breaker::CircuitBreakers;
use crate::config::Settings;
use crate::ledger::{Fill, Ledger, Overflow, Position as LedgerPosition};
use crate::limits::{BreachAction, Limits, LossLatch};
use crate::open_orders::{is_terminal, OpenOrders};
use crate::rate::RateLimiter;
use crate::recon::Recon;
use crate::reservations::{Reservation, Reservations};
use crate::rules::{self, Gate, MarketData, OpenOrderCounts, Refusal};
use crate::valuation::{self, Part, Unfit, Valuation};
use crate::watermarks::Watermarks;
use moonbus_common::horizon::orders_kept_ns;

/// The agent name of the orders risk itself sends (kill switch flatten).
pub const RISK_AGENT: &str = moonbus_common::subjects::KILLSWITCH_AGENT;

const NS_PER_MS: u64 = 1_000_000;

/// The latest tick price of a symbol, and when risk received it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    price: Decimal,
    received_ns: u64,
}

/// What applying an execution report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportEffect {
    /// Positions, cash or reservations may have changed.
    Applied,
    /// The same (client_order_id, status, filled_quantity) was applied before.
    Duplicate,
    /// A report about an order too malformed to have an id: nothing to apply.
    NoOrder,
}

/// Account figures at the current marks.
#[derive(Debug, Clone, Copy)]
struct Totals {
    equity: Decimal,
    unrealized_pnl: Decimal,
    gross_exposure: Decimal,
    open_positions: u64,
    /// A figure did not fit a decimal (the others saturated): the account halts.
    overflow: bool,
}

impl Totals {
    /// The same figures, but for the rounding of a sum in another order (valuation.rs).
    fn agrees_with(&self, other: &Totals) -> bool {
        valuation::agree(self.equity, other.equity)
            && valuation::agree(self.unrealized_pnl, other.unrealized_pnl)
            && valuation::agree(self.gross_exposure, other.gross_exposure)
            && (self.open_positions, self.overflow) == (other.open_positions, other.overflow)
    }
}

/// The refusal code (and account reason) while the state cannot be rebuilt.
pub const UNAVAILABLE: &str = "risk_unavailable";

/// The account-state reason (and breach name) of books that no longer fit a decimal.
const OVERFLOW: &str = "overflow";

pub struct Engine {
    settings: Settings,
    ledger: Ledger,
    marks: HashMap<Symbol, Mark>,
    /// At most `MAX_MARKET_SYMBOLS` marks (moonbus_common::caps): a stolen market-data
    /// credential naming made-up symbols cannot grow them without end.
    mark_cap: KeyCap,
    /// Ticks of new symbols refused, with the reason, since the service last took them
    /// (`take_refused`).
    refused_ticks: Vec<(Tick, String)>,
    reservations: Reservations,
    open_orders: OpenOrders,
    rate: RateLimiter,
    breakers: CircuitBreakers,
    watermarks: Watermarks,
    loss_latch: Option<LossLatch>,
    kill_switch: KillSwitchState,
    ready: bool,
    /// The reports applied, by order (applied.rs): one sent again is a duplicate.
    applied: Applied,
    /// A fill that could not be booked (its figures overflow a decimal): the books miss
    /// it, so the account stays HALTED (fail closed) for the life of the process.
    unbooked_fill: Option<String>,
    /// The state cannot be rebuilt (reports lost to retention, no snapshot covers
    /// them): every check is refused `risk_unavailable` with this reason.
    unavailable: Option<String>,
    /// The live venues' reconciliation (recon.rs) and risk's books per venue.
    recon: Recon,
    /// Each position's part of the totals (a flat one: its realized PnL), and their sums
    /// (valuation.rs): kept by `revalue` whenever a position, its mark or readiness changes.
    valuation: Valuation,
    /// `totals()` as last made: cleared by whatever changes what it reads (the books, a
    /// position's mark, readiness; `invalidate_totals`), so a check, its heartbeat and the
    /// account published after an event share one.
    totals_cache: Cell<Option<Totals>>,
}

impl Engine {
    pub fn new(settings: Settings, now_ns: u64) -> Self {
        Self {
            ledger: Ledger::new(settings.starting_cash),
            watermarks: Watermarks::new(settings.starting_cash),
            marks: HashMap::new(),
            mark_cap: KeyCap::default(),
            refused_ticks: Vec::new(),
            reservations: Reservations::default(),
            open_orders: OpenOrders::default(),
            rate: RateLimiter::new(settings.rate),
            breakers: CircuitBreakers::new(settings.breaker),
            loss_latch: None,
            kill_switch: KillSwitchState {
                engaged: false,
                actor: RISK_AGENT.into(),
                reason: "released at start".into(),
                changed_ts: now_ns,
                flatten_orders: None,
            },
            ready: false,
            applied: Applied::new(orders_kept_ns()),
            unbooked_fill: None,
            unavailable: None,
            recon: Recon::new(settings.recon.clone()),
            settings,
            valuation: Valuation::default(),
            totals_cache: Cell::new(None),
        }
    }

    /// State kept in the KV bucket across restarts; call before `mark_ready`.
    pub fn restore(&mut self, kill_switch: Option<KillSwitchState>, loss_latch: Option<LossLatch>) {
        if let Some(state) = kill_switch {
            self.kill_switch = state;
        }
        self.loss_latch = loss_latch;
    }

    /// The EXEC stream has been read up to where it was at start: checks may pass,
    /// and from now on the marks value positions and time is the wall clock.
    pub fn mark_ready(&mut self, now_ns: u64) {
        self.ready = true;
        self.revalue_all();
        self.roll_day(now_ns);
        let totals = self.totals();
        self.watermarks.observe(totals.equity);
        self.latch(&totals, now_ns);
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Never ready: the state cannot be rebuilt, for `why`.
    pub fn fail_closed(&mut self, why: String) {
        self.ready = false;
        self.revalue_all();
        self.unavailable = Some(why);
    }

    /// Why the state cannot be rebuilt, if it cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    // ------------------------------------------------------------ inputs

    /// Apply one report of the EXEC stream. Err = a report that claims a fill but
    /// lacks what a fill needs, or whose fill does not fit a decimal (it goes to
    /// errors.risk; nothing was changed; the latter halts the account).
    ///
    /// On the report's own clock (`ts`): a backtest, whose reports carry the simulated time.
    /// The service uses `apply_report_at`.
    pub fn apply_report(&mut self, report: &ExecutionReport) -> Result<ReportEffect, String> {
        self.apply_report_at(report, report.ts)
    }

    /// `apply_report` of a report received at `now_ns` (risk's clock). The UTC day and the
    /// loss latch move on the reports' clock during the rebuild and on risk's once ready,
    /// and never past `now_ns`: a report dated ahead (execution's clock, or its stolen
    /// credential) would push the day start ahead, and no real day would roll it again
    /// (daily loss measured from a stale start: a real day's loss missed, a latch kept).
    pub fn apply_report_at(
        &mut self,
        report: &ExecutionReport,
        now_ns: u64,
    ) -> Result<ReportEffect, String> {
        let clock = if self.ready {
            now_ns
        } else {
            report.ts.min(now_ns)
        };
        let Some(order_id) = &report.client_order_id else {
            return Ok(ReportEffect::NoOrder);
        };
        let fill_quantity = report.last_fill_quantity.map_or(Decimal::ZERO, |q| q.get());
        let fill = if fill_quantity.is_zero() {
            None
        } else {
            let (Some(symbol), Some(side), Some(price)) =
                (&report.symbol, report.side, report.last_fill_price)
            else {
                return Err(format!(
                    "report of order {order_id} fills {fill_quantity} but lacks symbol, side or last_fill_price"
                ));
            };
            let fill = Fill {
                quantity: side.sign() * fill_quantity,
                price: price.get(),
                fee: report.fee.get(),
            };
            Some((symbol, fill))
        };
        // Forgotten first: an id used again after its horizon (execution ran it again)
        // is a new order, not a duplicate of the forgotten one.
        self.applied.forget_old(clock);
        let key = (report.status, report.filled_quantity);
        if self.applied.contains(order_id, &key) {
            return Ok(ReportEffect::Duplicate);
        }
        self.roll_day(clock);
        if let Some((symbol, fill)) = fill {
            self.invalidate_totals();
            if let Err(Overflow) = self.ledger.apply(symbol, &fill) {
                let why = format!(
                    "the fill of order {order_id} ({} {symbol} at {}, fee {}) does not fit the books' \
                     exact decimals: not booked, account HALTED",
                    fill.quantity, fill.price, fill.fee
                );
                tracing::error!(reason = %why, "overflow");
                self.unbooked_fill = Some(why.clone());
                return Err(format!("{OVERFLOW}: {why}"));
            }
            self.revalue(symbol);
            self.reservations.fill(order_id.as_str(), fill_quantity);
            if let Some(venue) = &report.venue {
                self.recon
                    .books
                    .book(venue, symbol, fill.quantity, fill.price, fill.fee);
            }
        }
        self.applied.insert(order_id, key, clock);
        if is_terminal(report.status) {
            self.reservations.release(order_id.as_str());
        } else {
            // Execution has it (resting, or sent to a venue): no longer "maybe never sent".
            self.reservations.pin(order_id.as_str());
        }
        self.open_orders.on_report(
            order_id.as_str(),
            report.symbol.as_ref(),
            report.agent.as_ref(),
            report.status,
        );
        self.watermarks.observe(self.totals().equity);
        self.latch_breaches(clock);
        Ok(ReportEffect::Applied)
    }

    /// A new mark; returns whether the account's valuation changed or the circuit
    /// breaker halted the symbol.
    pub fn apply_tick(&mut self, tick: &Tick, now_ns: u64) -> bool {
        self.apply_ticks(std::slice::from_ref(tick), now_ns)[0]
    }

    /// The marks of ticks found waiting together, each of a different symbol (service.rs
    /// `TickBatch`), then the account summed once for the peak and the loss latch; for
    /// each tick, whether it changed the account's valuation or halted its symbol. A
    /// batch of one is `apply_tick`. Every mark still meets the peak and the latch: a
    /// symbol's next tick goes in the next batch, so a dip and its recovery cannot cancel
    /// out unseen. At 1,000 held symbols a sum per tick was most of risk's time.
    pub fn apply_ticks(&mut self, ticks: &[Tick], now_ns: u64) -> Vec<bool> {
        // The day rolls at the marks before the event; during the rebuild history runs on
        // the reports' clock, and the marks are only kept for later.
        let new_day = self.ready && self.roll_day(now_ns);
        let mut revalued_any = false;
        let mut moved = Vec::with_capacity(ticks.len());
        for tick in ticks {
            if !self.admits_mark(&tick.symbol, now_ns) {
                let reason = self.mark_cap.refusal("mark of", tick.symbol.as_str());
                self.refused_ticks.push((tick.clone(), reason));
                moved.push(false);
                continue;
            }
            let mark = Mark {
                price: tick.price.get(),
                received_ns: now_ns,
            };
            let tripped = self.breakers.observe(&tick.symbol, mark.price, now_ns);
            let previous = self.marks.insert(tick.symbol.clone(), mark);
            let revalued = self.ledger.quantity(tick.symbol.as_str()) != Decimal::ZERO
                && previous.is_none_or(|p| p.price != mark.price);
            if revalued && self.ready {
                self.revalue(&tick.symbol);
            }
            revalued_any |= revalued;
            moved.push(self.ready && (revalued || tripped));
        }
        if !self.ready {
            self.invalidate_totals();
            return moved;
        }
        // The peak and the loss latch only when the totals moved: a tick of a symbol
        // without a position, or at the same price, changes no figure they read.
        if revalued_any || new_day {
            let totals = self.totals();
            self.watermarks.observe(totals.equity);
            self.latch(&totals, now_ns);
        }
        moved
    }

    /// Whether a tick of `symbol` may be kept: always for a symbol already marked or held;
    /// a new one while fewer than the cap are marked, after dropping the marks gone stale
    /// if there is no room (at most once a second: `KeyCap::may_sweep`).
    fn admits_mark(&mut self, symbol: &Symbol, now_ns: u64) -> bool {
        if !self.mark_cap.full(self.marks.len())
            || self.marks.contains_key(symbol)
            || self.ledger.quantity(symbol.as_str()) != Decimal::ZERO
        {
            return true;
        }
        if self.mark_cap.may_sweep(now_ns) {
            self.drop_stale_marks(now_ns);
        }
        !self.mark_cap.full(self.marks.len())
    }

    /// Drops the marks that no check would price with (older than `stale_after_ms`), and
    /// their breaker windows, but never those of a symbol held, configured or halted.
    fn drop_stale_marks(&mut self, now_ns: u64) {
        let (ledger, settings, breakers) = (&self.ledger, &self.settings, &mut self.breakers);
        let before = self.marks.len();
        self.marks.retain(|symbol, mark| {
            let keep = now_ns.saturating_sub(mark.received_ns) / NS_PER_MS
                <= settings.stale_after_ms
                || ledger.quantity(symbol.as_str()) != Decimal::ZERO
                || settings.symbols.contains(symbol)
                || breakers.halt(symbol, now_ns).is_some();
            if !keep {
                breakers.forget(symbol);
            }
            keep
        });
        tracing::info!(
            dropped = before - self.marks.len(),
            kept = self.marks.len(),
            "stale marks dropped to make room"
        );
    }

    /// The ticks of new symbols refused since the last call (the cap was reached and no
    /// mark was stale), each with the reason, for `errors.risk`.
    pub fn take_refused(&mut self) -> Vec<(Tick, String)> {
        std::mem::take(&mut self.refused_ticks)
    }

    #[cfg(test)]
    fn with_mark_cap(mut self, limit: usize) -> Self {
        self.mark_cap = KeyCap::new(limit);
        self
    }

    /// Starts a new UTC day at `now_ns` if it is one (its equity recorded, at the marks
    /// before the event); returns whether it did.
    fn roll_day(&mut self, now_ns: u64) -> bool {
        if !self.watermarks.rolls_over(now_ns) {
            return false;
        }
        let equity = self.totals().equity;
        self.watermarks.roll_day(now_ns, equity);
        true
    }

    /// A live venue's status from execution: the reconciliation to publish (None while
    /// risk's books are still being rebuilt: they would differ for no reason).
    pub fn apply_venue_status(
        &mut self,
        status: &LiveVenueStatus,
        now_ns: u64,
    ) -> Option<Reconciliation> {
        // The venue's kind as execution runs it: a spot kind refuses shorts even where
        // risk's own config does not declare the venue (shorts.rs).
        self.settings.short_venues.learn(&status.venue, status.kind);
        if self.recon.settings.ignore.contains(&status.venue) {
            return None;
        }
        if !self.ready {
            self.recon.heard(status, now_ns);
            return None;
        }
        let reconciliation = self.recon.apply_status(status, now_ns);
        if reconciliation.state != crate::recon::MATCHED {
            tracing::warn!(venue = %status.venue, state = %reconciliation.state,
                action = %reconciliation.action, detail = %reconciliation.detail, "reconciliation");
        }
        Some(reconciliation)
    }

    /// The reconciliations stored before a restart (recon.rs `Recon::restore`).
    pub fn restore_reconciliations(&mut self, stored: Vec<Reconciliation>, now_ns: u64) {
        for r in &stored {
            tracing::info!(venue = %r.venue, state = %r.state, action = %r.action,
                "live venue known from before the restart");
        }
        self.recon.restore(stored, now_ns);
    }

    /// Live venues whose account went stale since the last call (UNAVAILABLE, gated).
    pub fn recon_heartbeat(&mut self, now_ns: u64) -> Vec<Reconciliation> {
        if !self.ready {
            return Vec::new();
        }
        let changed = self.recon.heartbeat(now_ns);
        for r in &changed {
            tracing::warn!(venue = %r.venue, detail = %r.detail, "live venue unavailable");
        }
        changed
    }

    /// The latest reconciliation of every live venue heard from.
    pub fn reconciliations(&self) -> Vec<Reconciliation> {
        self.recon.latest().cloned().collect()
    }

    /// Time passes: reservations expire, a new UTC day starts.
    pub fn heartbeat(&mut self, now_ns: u64) {
        for order in self.reservations.expire(now_ns) {
            tracing::info!(client_order_id = %order, "reservation expired without a terminal report");
        }
        if self.valuation.sums().is_none() {
            self.revalue_all();
        }
        if self.ready {
            self.roll_day(now_ns);
            self.latch_breaches(now_ns);
        }
    }

    // ------------------------------------------------------------ requests

    /// The pre-trade check. An approval reserves the order's share of the limits.
    pub fn check(&mut self, request: &RiskCheckRequest, now_ns: u64) -> RiskCheckResult {
        if let Some(why) = &self.unavailable {
            return RiskCheckResult {
                client_order_id: request.client_order_id.clone(),
                approved: false,
                reason_code: Some(UNAVAILABLE.into()),
                reason: Some(why.clone()),
                state: TradingState::Halted,
                ts: now_ns,
            };
        }
        self.heartbeat(now_ns);
        // A re-check of the same order (execution retrying) replaces the earlier one,
        // so the order is neither counted twice nor against itself. One execution has
        // reported (pinned) stays pinned, and stays whatever the re-check says: the order
        // is out there.
        let earlier = self.reservations.take(request.client_order_id.as_str());
        let symbol = &request.symbol;
        let order = rules::Order {
            quantity: request.quantity.get(),
            buy: request.side == Side::Buy,
            reduce_only: request.reduce_only,
            price: request.limit_price.or(request.ref_price).map(|p| p.get()),
            limit_price: request
                .limit_price
                .filter(|_| request.order_type == OrderType::Limit)
                .map(|p| p.get()),
        };
        let totals = self.totals();
        let (gate, _) = self.gate(&totals);
        let pending = self.reservations.pending(symbol.as_str());
        let context = rules::Context {
            ready: self.ready,
            kill_switch: self.kill_switch.engaged,
            gate,
            limits: &self.settings.limits,
            guards: &self.settings.guards,
            halt: self.breakers.halt(symbol, now_ns),
            open_orders: self.open_order_counts(
                symbol,
                &request.agent,
                request.client_order_id.as_str(),
            ),
            stale_after_ms: self.settings.stale_after_ms,
            fee_bps: self.settings.fee_bps,
            position: self.ledger.quantity(symbol.as_str()),
            pending,
            market: self.marks.get(symbol).map(|mark| MarketData {
                price: mark.price,
                age_ms: now_ns.saturating_sub(mark.received_ns) / NS_PER_MS,
            }),
            cash: self.ledger.cash,
            buys_in_flight: self.reservations.buy_notional(),
            other_exposure: self.exposure_except(symbol),
            venue: rules::VenueView {
                name: request.venue.as_str(),
                kind: self.settings.short_venues.kind(&request.venue),
                allows_short: self.settings.short_venues.allows_short(&request.venue),
                held: self.recon.books.quantity(&request.venue, symbol),
            },
        };
        // Books that do not fit a decimal (the account is HALTED for it) refuse with
        // their own code, so it is not mistaken for a loss limit.
        let books = self.books_overflow(&totals).filter(|_| self.ready);
        // Last, and only for an order every other rule approves: the rate budgets
        // count orders that would be routed, not every attempt.
        let outcome = match books {
            Some(reason) => Err(Refusal {
                code: rules::OVERFLOW,
                reason,
            }),
            None => rules::check(&context, &order).map_err(|r| self.recon_refusal(r)),
        }
        .and_then(|approval| {
            self.rate
                .admit(
                    request.agent.as_str(),
                    request.client_order_id.as_str(),
                    approval.reducing,
                    now_ns,
                )
                .map(|()| approval)
        });
        let state = self.trading_state(&totals);
        let (approved, reason_code, reason) = match outcome {
            Ok(approval) => {
                self.reservations.reserve(
                    request.client_order_id.as_str(),
                    Reservation {
                        symbol: symbol.clone(),
                        agent: request.agent.clone(),
                        quantity: request.side.sign() * order.quantity,
                        price: approval.price,
                        expires_ns: if earlier.as_ref().is_some_and(Reservation::is_pinned) {
                            u64::MAX
                        } else {
                            now_ns.saturating_add(
                                self.settings.reservation_ttl_ms.saturating_mul(NS_PER_MS),
                            )
                        },
                    },
                );
                tracing::debug!(
                    client_order_id = %request.client_order_id, %symbol, side = %request.side,
                    quantity = %order.quantity, notional = %approval.notional, "approved"
                );
                (true, None, None)
            }
            Err(Refusal { code, reason }) => {
                tracing::info!(
                    client_order_id = %request.client_order_id, %symbol, side = %request.side,
                    quantity = %order.quantity, code, %reason, "refused"
                );
                if let Some(earlier) = earlier.filter(Reservation::is_pinned) {
                    self.reservations
                        .reserve(request.client_order_id.as_str(), earlier);
                }
                (false, Some(code.to_string()), Some(reason))
            }
        };
        RiskCheckResult {
            client_order_id: request.client_order_id.clone(),
            approved,
            reason_code,
            reason,
            state,
            ts: now_ns,
        }
    }

    pub fn kill_switch_state(&self) -> KillSwitchState {
        self.kill_switch.clone()
    }

    /// The kill switch state a request asks for, not yet applied (the service stores
    /// it first when releasing). None = nothing changes (status, or already so).
    /// An engage with flatten is always a change: a new action by its actor.
    pub fn kill_switch_change(
        &self,
        request: &KillSwitchRequest,
        now_ns: u64,
    ) -> Result<Option<KillSwitchState>, Refusal> {
        let engage = match request.action {
            KillSwitchAction::Engage => true,
            _ if request.flatten => {
                return Err(Refusal {
                    code: "bad_request",
                    reason: "flatten goes with action \"engage\" (nothing was changed)".into(),
                })
            }
            KillSwitchAction::Status => return Ok(None),
            KillSwitchAction::Release => false,
        };
        if request.flatten && !self.ready {
            return Err(Refusal {
                code: "not_ready",
                reason: "positions are still being rebuilt from EXEC, so flatten cannot size its \
                         orders (nothing was changed): engage without flatten now, flatten when ready"
                    .into(),
            });
        }
        if self.kill_switch.engaged == engage && !request.flatten {
            return Ok(None);
        }
        Ok(Some(KillSwitchState {
            engaged: engage,
            actor: request.actor.clone(),
            reason: request.reason.clone(),
            changed_ts: now_ns,
            flatten_orders: None,
        }))
    }

    pub fn set_kill_switch(&mut self, state: KillSwitchState) {
        tracing::warn!(engaged = state.engaged, actor = %state.actor, reason = %state.reason, "kill switch changed");
        self.kill_switch = KillSwitchState {
            flatten_orders: None,
            ..state
        };
    }

    /// One reduce-only MARKET order per open position, closing what the orders in
    /// flight do not close already (so it passes the reduce-only check). Ids are
    /// `ks-<now_ns>-<symbol>`: unique per flatten, and the JetStream dedupe key.
    pub fn flatten_orders(&self, venue: &Venue, now_ns: u64) -> Vec<OrderRequest> {
        let agent = AgentName::try_from(RISK_AGENT).expect("a valid agent name");
        self.ledger
            .positions
            .iter()
            .filter_map(|(symbol, p)| {
                let pending = self.reservations.pending(symbol.as_str());
                let (side, open) = if p.quantity.is_sign_positive() {
                    (Side::Sell, p.quantity.saturating_sub(pending.sells))
                } else {
                    (Side::Buy, (-p.quantity).saturating_sub(pending.buys))
                };
                let quantity = PositiveMoney::new(open).ok()?;
                let client_order_id =
                    ClientOrderId::try_from(format!("ks-{now_ns}-{symbol}")).ok()?;
                Some(OrderRequest {
                    client_order_id,
                    agent: agent.clone(),
                    symbol: symbol.clone(),
                    venue: venue.clone(),
                    side,
                    order_type: OrderType::Market,
                    quantity,
                    limit_price: None,
                    time_in_force: TimeInForce::default(),
                    algo: None,
                    reduce_only: true,
                    decision_price: self
                        .valuation_price(symbol)
                        .and_then(|p| PositiveMoney::new(p).ok()),
                    protection: None,
                    origin_ts: now_ns,
                    ts: now_ns,
                })
            })
            .collect()
    }

    /// The latched loss limits, if any (stored so a restart keeps them).
    pub fn loss_latch(&self) -> Option<&LossLatch> {
        self.loss_latch.as_ref()
    }

    /// An operator ends the loss latch; a limit still breached latches again at once.
    /// Returns the limits that were latched.
    pub fn release_loss_latch(&mut self, now_ns: u64) -> Vec<String> {
        let released = self
            .loss_latch
            .take()
            .map(|l| l.breaches)
            .unwrap_or_default();
        self.latch_breaches(now_ns);
        released
    }

    /// Change some limits; all or nothing.
    pub fn set_limits(&mut self, patch: &LimitsPatch) -> Result<(), String> {
        let limits = self.patched_limits(patch)?;
        self.apply_limits(limits);
        Ok(())
    }

    pub fn apply_limits(&mut self, limits: Limits) {
        tracing::warn!(?limits, "limits changed");
        self.settings.limits = limits;
    }

    /// The limits `patch` would make, checked; nothing applied.
    pub fn patched_limits(&self, patch: &LimitsPatch) -> Result<Limits, String> {
        let current = &self.settings.limits;
        let limits = Limits {
            max_order_notional: patch
                .max_order_notional
                .map_or(current.max_order_notional, |v| v.get()),
            max_position_notional: patch
                .max_position_notional
                .map_or(current.max_position_notional, |v| v.get()),
            max_gross_exposure: patch
                .max_gross_exposure
                .map_or(current.max_gross_exposure, |v| v.get()),
            min_cash: patch.min_cash.map_or(current.min_cash, |v| v.get()),
            max_daily_loss: patch
                .max_daily_loss
                .map_or(current.max_daily_loss, |v| v.get()),
            max_drawdown_pct: patch.max_drawdown_pct.unwrap_or(current.max_drawdown_pct),
        };
        limits.validate()?;
        Ok(limits)
    }

    // ------------------------------------------------------------ views

    pub fn limits(&self) -> RiskLimits {
        limits_view(&self.settings.limits)
    }

    /// Every symbol ever traded (flat ones keep their realized PnL), or just one.
    pub fn positions(&self, only: Option<&Symbol>) -> Vec<Position> {
        self.ledger
            .positions
            .iter()
            .filter(|(symbol, _)| only.is_none_or(|s| s == *symbol))
            .map(|(symbol, p)| {
                let price = self
                    .valuation_price_of(symbol, Some(p))
                    .unwrap_or(Decimal::ZERO);
                Position {
                    symbol: symbol.clone(),
                    quantity: money(p.quantity),
                    avg_price: non_negative(p.avg_price()),
                    mark_price: self.marks.get(symbol).map(|m| non_negative(m.price)),
                    realized_pnl: money(p.realized_pnl),
                    unrealized_pnl: money(p.unrealized_pnl(price).unwrap_or(
                        if p.quantity.is_sign_positive() == (price > Decimal::ZERO) {
                            Decimal::MAX
                        } else {
                            Decimal::MIN
                        },
                    )),
                    fees: non_negative(p.fees),
                    notional: non_negative(p.quantity.abs().saturating_mul(price)),
                }
            })
            .collect()
    }

    pub fn account(&self, now_ns: u64) -> AccountState {
        let totals = self.totals();
        let drawdown = self.watermarks.drawdown_pct(totals.equity);
        AccountState {
            state: self.trading_state(&totals),
            reasons: self.account_reasons(&totals),
            cash: money(self.live_cash()),
            equity: money(self.live_equity(&totals)),
            peak_equity: money(self.watermarks.peak_equity),
            drawdown_pct: drawdown.to_f64().unwrap_or(0.0),
            realized_pnl: money(self.realized_pnl()),
            unrealized_pnl: money(totals.unrealized_pnl),
            day_pnl: money(self.watermarks.day_pnl(totals.equity)),
            fees: non_negative(self.ledger.fees),
            gross_exposure: non_negative(totals.gross_exposure),
            open_positions: totals.open_positions,
            kill_switch: self.kill_switch.engaged,
            ts: now_ns,
        }
    }

    /// Cash plus positions at the current marks (what `account` reports as equity).
    pub fn equity(&self) -> Decimal {
        self.totals().equity
    }

    /// A verdict for every configured symbol and every symbol with a position.
    pub fn verdicts(&self, now_ns: u64) -> Vec<Verdict> {
        let totals = self.totals();
        let account_state = self.trading_state(&totals);
        let account_reasons = self.account_reasons(&totals);
        let mut symbols: BTreeSet<&Symbol> = self.settings.symbols.iter().collect();
        symbols.extend(
            self.ledger
                .positions
                .iter()
                .filter(|(_, p)| !p.quantity.is_zero())
                .map(|(s, _)| s),
        );
        symbols
            .into_iter()
            .map(|symbol| self.verdict_with(symbol, account_state, &account_reasons, now_ns))
            .collect()
    }

    /// The verdict of `symbol` alone, as `verdicts` would give it, with the account's state
    /// and reasons from `account` (this engine's `account()` of the same moment): None when
    /// `verdicts` gives none for it (not configured, no position). A symbol's own event
    /// (its tick, its report) changes no other symbol's verdict unless the account's state,
    /// reasons or loss latch change (Publisher).
    pub fn verdict(&self, symbol: &Symbol, account: &AccountState, now_ns: u64) -> Option<Verdict> {
        let listed = self.ledger.quantity(symbol.as_str()) != Decimal::ZERO
            || self.settings.symbols.contains(symbol);
        listed.then(|| self.verdict_with(symbol, account.state, &account.reasons, now_ns))
    }

    fn verdict_with(
        &self,
        symbol: &Symbol,
        account_state: TradingState,
        account_reasons: &[String],
        now_ns: u64,
    ) -> Verdict {
        let mut state = account_state;
        let mut reasons = account_reasons.to_vec();
        let mut details = Vec::new();
        let mut halted_until = None;
        if let Some(latch) = self.loss_latch.as_ref().filter(|_| self.ready) {
            details.push(format!(
                "{} latched since ts {} until the UTC day rolls over or an operator releases it",
                latch.breaches.join(", "),
                latch.since_ts
            ));
        }
        if let Some(halt) = self.breakers.halt(symbol, now_ns) {
            state = TradingState::Halted;
            reasons.push("circuit_breaker".into());
            details.push(halt.detail.clone());
            halted_until = Some(halt.until_ns);
        }
        let position = self.ledger.quantity(symbol.as_str());
        match self.marks.get(symbol) {
            None => {
                state = TradingState::Halted;
                reasons.push("no_market_data".into());
            }
            Some(mark)
                if now_ns.saturating_sub(mark.received_ns) / NS_PER_MS
                    > self.settings.stale_after_ms =>
            {
                state = TradingState::Halted;
                reasons.push("stale_market_data".into());
            }
            Some(mark) => {
                if position.abs().saturating_mul(mark.price)
                    >= self.settings.limits.max_position_notional
                {
                    if state == TradingState::Active {
                        state = TradingState::ReduceOnly;
                    }
                    reasons.push("max_position_notional".into());
                }
            }
        }
        Verdict {
            symbol: symbol.clone(),
            state,
            reasons,
            position: money(position),
            max_order_notional: Some(non_negative(self.settings.limits.max_order_notional)),
            detail: details.join("; "),
            halted_until,
            ts: now_ns,
        }
    }

    // ------------------------------------------------------------ internals

    /// A refusal for the account's gate says so when a live venue's reconciliation
    /// closed it (rules.rs words it for the loss limits).
    fn recon_refusal(&self, refusal: Refusal) -> Refusal {
        let (recon, reasons) = self.recon.gate();
        if recon.is_none() || !matches!(refusal.code, "account_halted" | "account_reduce_only") {
            return refusal;
        }
        let details: Vec<String> = self
            .recon
            .latest()
            .filter(|r| r.action != moonbus_common::ReconAction::None)
            .map(|r| format!("{}: {} ({})", r.venue, r.state, r.detail))
            .collect();
        let allowed = if refusal.code == "account_halted" {
            "no order passes"
        } else {
            "only orders that reduce a position pass"
        };
        Refusal {
            code: refusal.code,
            reason: format!(
                "{} ({}): {allowed} until the venue's account matches risk's books again; {}",
                reasons.join(", "),
                details.join("; "),
                refusal.reason
            ),
        }
    }

    /// Cash as the account shows it: the paper part from the ledger (its cash less what
    /// the fills on each live venue that reports cash moved), plus each such venue's cash.
    /// A figure that does not fit: the ledger's cash.
    fn live_cash(&self) -> Decimal {
        let mut cash = Some(self.ledger.cash);
        for live in self.recon.live_figures() {
            let Some(venue_cash) = live.cash else {
                continue;
            };
            let flow = self.recon.books.cash_flow.get(live.venue).copied();
            cash = cash
                .and_then(|c| c.checked_sub(flow.unwrap_or_default()))
                .and_then(|c| c.checked_add(venue_cash));
        }
        cash.unwrap_or(self.ledger.cash)
    }

    /// Equity as the account shows it: the ledger's equity less, for each live venue
    /// that reports equity, what its fills contribute (their cash flow plus their
    /// positions at the marks), plus the venue's equity; for a venue that reports only
    /// cash, its cash replaces the fills' cash flow. A figure that does not fit: the
    /// ledger's equity.
    fn live_equity(&self, totals: &Totals) -> Decimal {
        let mut equity = Some(totals.equity);
        for live in self.recon.live_figures() {
            let flow = self
                .recon
                .books
                .cash_flow
                .get(live.venue)
                .copied()
                .unwrap_or_default();
            equity = match (live.equity, live.cash) {
                (Some(venue_equity), _) => {
                    let mut booked = Some(flow);
                    for (symbol, quantity) in self.recon.books.held_on(live.venue) {
                        let price = self.valuation_price(symbol).unwrap_or(Decimal::ZERO);
                        booked = booked
                            .zip(quantity.checked_mul(price))
                            .and_then(|(b, v)| b.checked_add(v));
                    }
                    equity
                        .zip(booked)
                        .and_then(|(e, b)| e.checked_sub(b))
                        .and_then(|e| e.checked_add(venue_equity))
                }
                (None, Some(venue_cash)) => equity
                    .and_then(|e| e.checked_sub(flow))
                    .and_then(|e| e.checked_add(venue_cash)),
                (None, None) => equity,
            };
        }
        equity.unwrap_or(totals.equity)
    }

    /// The tick mark, else the last fill price (a position rebuilt before any tick).
    /// While rebuilding, only fill prices: today's mark on a half-replayed history
    /// would record a peak (or a day start) the account never had.
    fn valuation_price(&self, symbol: &Symbol) -> Option<Decimal> {
        self.valuation_price_of(symbol, self.ledger.positions.get(symbol))
    }

    /// `valuation_price` with the symbol's position at hand (no lookup of it by name).
    fn valuation_price_of(
        &self,
        symbol: &Symbol,
        position: Option<&LedgerPosition>,
    ) -> Option<Decimal> {
        let mark = self.marks.get(symbol).filter(|_| self.ready);
        mark.map(|m| m.price)
            .or_else(|| position.and_then(|p| p.last_fill_price))
    }

    /// The books, a position's mark or readiness changed: `totals()` is made again.
    pub(crate) fn invalidate_totals(&self) {
        self.totals_cache.set(None);
    }

    /// `symbol`'s position or its valuation price changed.
    fn revalue(&mut self, symbol: &Symbol) {
        let part = match self.ledger.positions.get(symbol) {
            Some(position) => self.part_of(symbol, position),
            None => Ok(None),
        };
        self.valuation.set(symbol, part);
        self.invalidate_totals();
    }

    /// Every position again: the books were replaced, or readiness (what values them)
    /// changed, or the sums were left unusable by a figure too big.
    pub(crate) fn revalue_all(&mut self) {
        let parts: Vec<_> = self
            .ledger
            .positions
            .iter()
            .map(|(symbol, position)| (symbol, self.part_of(symbol, position)))
            .collect();
        self.valuation.rebuild(parts);
        self.invalidate_totals();
    }

    /// A position's part of the totals at its valuation price.
    fn part_of(&self, symbol: &Symbol, position: &LedgerPosition) -> Result<Option<Part>, Unfit> {
        let realized_pnl = position.realized_pnl;
        if position.quantity.is_zero() {
            let flat = Part {
                value: Decimal::ZERO,
                unrealized_pnl: Decimal::ZERO,
                realized_pnl,
                open: false,
            };
            return Ok(Some(flat));
        }
        let price = self
            .valuation_price_of(symbol, Some(position))
            .unwrap_or(Decimal::ZERO);
        Ok(Some(Part {
            value: position.quantity.checked_mul(price).ok_or(Unfit)?,
            unrealized_pnl: position.unrealized_pnl(price).ok_or(Unfit)?,
            realized_pnl,
            open: true,
        }))
    }

    /// Every position's realized PnL: kept (valuation.rs), else summed (saturating).
    fn realized_pnl(&self) -> Decimal {
        let kept = self.valuation.sums().map(|sums| sums.realized_pnl);
        debug_assert!(kept
            .zip(self.ledger.realized_pnl())
            .is_none_or(|(kept, summed)| valuation::agree(kept, summed)));
        kept.or_else(|| self.ledger.realized_pnl())
            .unwrap_or_else(|| {
                // Only a sum that large: the sign of its biggest part.
                self.ledger
                    .positions
                    .values()
                    .map(|p| p.realized_pnl)
                    .fold(Decimal::ZERO, Decimal::saturating_add)
            })
    }

    /// The totals from the kept sums; summed over every position when those are unusable
    /// (checked sums: a figure that does not fit saturates and sets `overflow`).
    fn totals(&self) -> Totals {
        if let Some(totals) = self.totals_cache.get() {
            return totals;
        }
        let kept = self.valuation.sums().and_then(|sums| {
            Some(Totals {
                equity: valuation::exact_add(self.ledger.cash, sums.value)?,
                unrealized_pnl: sums.unrealized_pnl,
                gross_exposure: sums.gross_exposure,
                open_positions: sums.positions,
                overflow: false,
            })
        });
        let totals = kept.unwrap_or_else(|| self.sum_totals());
        debug_assert!(kept.is_none_or(|kept| kept.agrees_with(&self.sum_totals())));
        self.totals_cache.set(Some(totals));
        totals
    }

    fn sum_totals(&self) -> Totals {
        let mut totals = Totals {
            equity: self.ledger.cash,
            unrealized_pnl: Decimal::ZERO,
            gross_exposure: Decimal::ZERO,
            open_positions: 0,
            overflow: false,
        };
        let mut overflow = false;
        for (symbol, p) in self
            .ledger
            .positions
            .iter()
            .filter(|(_, p)| !p.quantity.is_zero())
        {
            let price = self
                .valuation_price_of(symbol, Some(p))
                .unwrap_or(Decimal::ZERO);
            let value = p.quantity.checked_mul(price);
            let long = p.quantity.is_sign_positive();
            overflow |= saturating_add(&mut totals.equity, value, long);
            overflow |= saturating_add(&mut totals.unrealized_pnl, p.unrealized_pnl(price), long);
            overflow |= saturating_add(&mut totals.gross_exposure, value.map(|v| v.abs()), true);
            totals.open_positions += 1;
        }
        totals.overflow = overflow;
        totals
    }

    /// Worst-case exposure of every symbol but `symbol`, if all in-flight orders fill
    /// (saturating: a figure too big for a decimal is the biggest one).
    fn exposure_except(&self, symbol: &Symbol) -> Decimal {
        let kept = self.kept_exposure_except(symbol);
        debug_assert!(
            kept.is_none_or(|kept| valuation::agree(kept, self.summed_exposure_except(symbol)))
        );
        kept.unwrap_or_else(|| self.summed_exposure_except(symbol))
    }

    /// `exposure_except` from the kept gross exposure (every open position at its
    /// valuation price), less `symbol`'s, with each other symbol that has orders in
    /// flight taken at its worst case instead: a pass over the reservations, not over
    /// every position. None when the sums are unusable or a figure is not exact.
    fn kept_exposure_except(&self, symbol: &Symbol) -> Option<Decimal> {
        let held = |s: &Symbol| {
            self.valuation
                .part(s)
                .map_or(Decimal::ZERO, |p| p.value.abs())
        };
        let mut total = valuation::exact_sub(self.valuation.sums()?.gross_exposure, held(symbol))?;
        let pending = self.reservations.pending_by_symbol();
        for (s, checked_at) in self.reservations.checked_prices() {
            if s == symbol {
                continue;
            }
            // As `summed_exposure_except`: a symbol never filled at its checked price.
            let (quantity, price) = match self.ledger.positions.get(s) {
                Some(p) => (
                    p.quantity,
                    self.valuation_price_of(s, Some(p)).unwrap_or(checked_at),
                ),
                None => (Decimal::ZERO, checked_at),
            };
            let worst =
                rules::worst_case_quantity(quantity, pending.get(s).copied().unwrap_or_default())?
                    .checked_mul(price)?;
            total = valuation::exact_add(valuation::exact_sub(total, held(s))?, worst)?;
        }
        Some(total)
    }

    /// `exposure_except` summed over every position and reservation.
    fn summed_exposure_except(&self, symbol: &Symbol) -> Decimal {
        // One pass over the reservations and one over the positions: a scan of every
        // reservation for each position, and a lookup of each position's quantity by
        // name, were most of a check at 1,000 positions.
        let pending = self.reservations.pending_by_symbol();
        // A symbol's price: its valuation price, else the price it was last checked at.
        let mut reserved = self.reservations.checked_prices();
        let exposure = |s: &Symbol, quantity: Decimal, price: Decimal| {
            let pending = pending.get(s).copied().unwrap_or_default();
            rules::worst_case_quantity(quantity, pending)
                .map_or(Decimal::MAX, |worst| worst.saturating_mul(price))
        };
        let mut total = Decimal::ZERO;
        for (s, position) in &self.ledger.positions {
            let checked_at = reserved.remove(s);
            if s == symbol {
                continue;
            }
            if let Some(price) = self.valuation_price_of(s, Some(position)).or(checked_at) {
                total = total.saturating_add(exposure(s, position.quantity, price));
            }
        }
        for (s, price) in reserved {
            if s != symbol {
                total = total.saturating_add(exposure(s, Decimal::ZERO, price));
            }
        }
        total
    }

    /// Orders open now (reservations in flight and resting orders, once each),
    /// for the account, for `symbol` and for `agent`, not counting `client_order_id` itself.
    fn open_order_counts(
        &self,
        symbol: &Symbol,
        agent: &AgentName,
        client_order_id: &str,
    ) -> OpenOrderCounts {
        let open: HashMap<&str, (&Symbol, Option<&AgentName>)> = self
            .reservations
            .orders()
            .chain(self.open_orders.iter())
            .filter(|(id, _, _)| *id != client_order_id)
            .map(|(id, s, a)| (id, (s, a)))
            .collect();
        OpenOrderCounts {
            account: open.len() as u64,
            symbol: open.values().filter(|(s, _)| *s == symbol).count() as u64,
            agent: open.values().filter(|(_, a)| *a == Some(agent)).count() as u64,
        }
    }

    /// The loss and drawdown limits past right now (not the latch).
    fn breaches(&self, totals: &Totals) -> Vec<&'static str> {
        self.settings.limits.breaches(
            self.watermarks.day_pnl(totals.equity),
            self.watermarks.drawdown_pct(totals.equity),
        )
    }

    /// Latch the limits past now; a new UTC day ends the old latch. Only once ready:
    /// during the rebuild the history is valued at fill prices only.
    fn latch_breaches(&mut self, now_ns: u64) {
        if self.ready {
            let totals = self.totals();
            self.latch(&totals, now_ns);
        }
    }

    /// `latch_breaches` with the totals at hand.
    fn latch(&mut self, totals: &Totals, now_ns: u64) {
        if !self.ready {
            return;
        }
        let Some(day) = self.watermarks.day() else {
            return;
        };
        let breaches = self.breaches(totals);
        let latch = LossLatch::update(self.loss_latch.as_ref(), &breaches, day, now_ns);
        if latch != self.loss_latch {
            tracing::warn!(?latch, "loss latch changed");
            self.loss_latch = latch;
        }
    }

    /// Why the books cannot be trusted, if they cannot: a fill that was not booked, or
    /// totals beyond the decimal range.
    fn books_overflow(&self, totals: &Totals) -> Option<String> {
        if let Some(why) = &self.unbooked_fill {
            return Some(why.clone());
        }
        totals.overflow.then(|| {
            "the account's totals (equity, exposure) do not fit an exact decimal: account HALTED"
                .to_string()
        })
    }

    /// The account's limits (not the kill switch): what they allow, and which are
    /// past or latched.
    fn gate(&self, totals: &Totals) -> (Gate, Vec<String>) {
        let mut breaches: Vec<String> = self
            .breaches(totals)
            .into_iter()
            .map(String::from)
            .collect();
        let today = self.watermarks.day();
        if let Some(latch) = self
            .loss_latch
            .as_ref()
            .filter(|l| self.ready && Some(l.day) >= today)
        {
            for breach in &latch.breaches {
                if !breaches.contains(breach) {
                    breaches.push(breach.clone());
                }
            }
        }
        // Books that do not fit a decimal are no basis for any decision: fail closed.
        if self.books_overflow(totals).is_some() {
            breaches.push(OVERFLOW.to_string());
            return (Gate::Halted, breaches);
        }
        let gate = match (breaches.is_empty(), self.settings.on_limit_breach) {
            (true, _) => Gate::Active,
            (false, BreachAction::ReduceOnly) => Gate::ReduceOnly,
            (false, BreachAction::Halted) => Gate::Halted,
        };
        // A live venue that differs from the books, or cannot be read: on_recon_mismatch.
        let (recon, reasons) = self.recon.gate();
        breaches.extend(reasons);
        let gate = match (gate, recon) {
            (Gate::Halted, _) | (_, Some(BreachAction::Halted)) => Gate::Halted,
            (Gate::ReduceOnly, _) | (_, Some(BreachAction::ReduceOnly)) => Gate::ReduceOnly,
            (Gate::Active, None) => Gate::Active,
        };
        (gate, breaches)
    }

    fn trading_state(&self, totals: &Totals) -> TradingState {
        if !self.ready || self.kill_switch.engaged {
            return TradingState::Halted;
        }
        match self.gate(totals).0 {
            Gate::Active => TradingState::Active,
            Gate::ReduceOnly => TradingState::ReduceOnly,
            Gate::Halted => TradingState::Halted,
        }
    }

    fn account_reasons(&self, totals: &Totals) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.unavailable.is_some() {
            reasons.push(UNAVAILABLE.to_string());
        } else if !self.ready {
            reasons.push("not_ready".to_string());
        }
        if self.kill_switch.engaged {
            reasons.push("kill_switch".to_string());
        }
        reasons.extend(self.gate(totals).1);
        reasons
    }
}

/// `sum += value`; a value that is `None` (did not fit) or a sum that does not fit
/// saturates towards `up` (true: Decimal::MAX, false: Decimal::MIN). True = overflowed.
fn saturating_add(sum: &mut Decimal, value: Option<Decimal>, up: bool) -> bool {
    match value.and_then(|v| sum.checked_add(v)) {
        Some(next) => {
            *sum = next;
            false
        }
        None => {
            *sum = if up { Decimal::MAX } else { Decimal::MIN };
            true
        }
    }
}

/// Wire form: trailing zeros of products and quotients dropped (970.0000 -> 970); a
/// figure beyond the contract's money range (|x| < 1e14) is written as its end.
fn money(value: Decimal) -> Money {
    Money::saturating(value.normalize())
}

/// The wire form of limits.
pub fn limits_view(l: &Limits) -> RiskLimits {
    RiskLimits {
        max_order_notional: non_negative(l.max_order_notional),
        max_position_notional: non_negative(l.max_position_notional),
        max_gross_exposure: non_negative(l.max_gross_exposure),
        min_cash: money(l.min_cash),
        max_daily_loss: non_negative(l.max_daily_loss),
        max_drawdown_pct: l.max_drawdown_pct,
    }
}

/// For values that are never negative by construction (prices, fees, |notional|).
fn non_negative(value: Decimal) -> NonNegativeMoney {
    NonNegativeMoney::saturating(value.normalize())
}

mod snapshot;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod recon_tests;
#[cfg(test)]
mod tests;
