//! The engine's state as a snapshot (rust-common snapshot.rs stores it in SNAPSHOTS):
//! everything the EXEC rebuild produces (cash, positions, the reports applied, open
//! orders, watermarks, an unbooked fill) plus what checks and ticks built up and a restart
//! would otherwise lose (reservations, circuit breaker halts). Not in it: marks (ticks
//! come again within a second), the rate windows (shorter than a restart), and the kill
//! switch, loss latch and limits, which live in KV (store.rs). Decimals are strings, exact.

use std::fmt;

use moonbus_common::{AgentName, ClientOrderId, NonNegativeMoney, OrderStatus, Symbol, Venue};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Engine;
use crate::breaker::Halt;
use crate::ledger::Position;
use crate::reservations::Reservation;
use crate::watermarks::Watermarks;

/// A decimal written as its exact string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dec(pub Decimal);

impl Serialize for Dec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map(Dec)
            .map_err(|e| serde::de::Error::custom(format!("decimal {text:?}: {e}")))
    }
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionState {
    pub symbol: Symbol,
    pub quantity: Dec,
    pub cost: Dec,
    pub realized_pnl: Dec,
    pub fees: Dec,
    pub last_fill_price: Option<Dec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationState {
    pub client_order_id: String,
    pub symbol: Symbol,
    pub agent: AgentName,
    pub quantity: Dec,
    pub price: Dec,
    pub expires_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The starting cash the books began with (a changed config shifts them).
    pub starting_cash: Dec,
    pub cash: Dec,
    pub fees: Dec,
    pub positions: Vec<PositionState>,
    /// (client_order_id, status, filled_quantity) of every report remembered
    /// (applied.rs): duplicates in the tail are skipped as before.
    pub applied: Vec<(ClientOrderId, OrderStatus, NonNegativeMoney)>,
    /// (client_order_id, when it became final) of the final orders remembered, oldest
    /// first: each is forgotten as long after as ORDERS keeps an order. Absent in a
    /// snapshot from before they were dated: its final orders are dated by the next report.
    #[serde(default)]
    pub applied_finals: Option<Vec<(ClientOrderId, u64)>>,
    pub open_orders: Vec<(String, Symbol, Option<AgentName>)>,
    pub reservations: Vec<ReservationState>,
    pub peak_equity: Dec,
    pub day: Option<u64>,
    pub day_start_equity: Dec,
    pub unbooked_fill: Option<String>,
    /// (symbol, until_ns, detail) of every circuit breaker halt.
    pub halts: Vec<(Symbol, u64, String)>,
    /// Risk's books per venue (recon.rs): (venue, symbol, quantity) and (venue, cash flow).
    /// Absent in a snapshot from before live venues: empty, as the fills then were.
    #[serde(default)]
    pub venue_positions: Vec<(Venue, Symbol, Dec)>,
    #[serde(default)]
    pub venue_cash_flow: Vec<(Venue, Dec)>,
}

impl Engine {
    /// The state to snapshot (called on the engine task: a copy, encoded elsewhere).
    pub fn snapshot_state(&self) -> State {
        let (peak_equity, day, day_start_equity) = self.watermarks.parts();
        // Unsorted: sorting 10^5 ids would hold up the checks for nothing.
        let applied = self.applied.reports();
        let mut open_orders: Vec<_> = self
            .open_orders
            .iter()
            .map(|(id, s, a)| (id.to_string(), s.clone(), a.cloned()))
            .collect();
        open_orders.sort_by(|a, b| a.0.cmp(&b.0));
        let mut reservations: Vec<_> = self
            .reservations
            .entries()
            .map(|(id, r)| ReservationState {
                client_order_id: id.to_string(),
                symbol: r.symbol.clone(),
                agent: r.agent.clone(),
                quantity: Dec(r.quantity),
                price: Dec(r.price),
                expires_ns: r.expires_ns,
            })
            .collect();
        reservations.sort_by(|a, b| a.client_order_id.cmp(&b.client_order_id));
        let mut halts: Vec<_> = self
            .breakers
            .halts()
            .map(|(s, h)| (s.clone(), h.until_ns, h.detail.clone()))
            .collect();
        halts.sort_by(|a, b| a.0.cmp(&b.0));
        State {
            starting_cash: Dec(self.settings.starting_cash),
            cash: Dec(self.ledger.cash),
            fees: Dec(self.ledger.fees),
            positions: self
                .ledger
                .positions
                .iter()
                .map(|(symbol, p)| PositionState {
                    symbol: symbol.clone(),
                    quantity: Dec(p.quantity),
                    cost: Dec(p.cost),
                    realized_pnl: Dec(p.realized_pnl),
                    fees: Dec(p.fees),
                    last_fill_price: p.last_fill_price.map(Dec),
                })
                .collect(),
            applied,
            applied_finals: self.applied.finals(),
            open_orders,
            reservations,
            peak_equity: Dec(peak_equity),
            day,
            day_start_equity: Dec(day_start_equity),
            unbooked_fill: self.unbooked_fill.clone(),
            halts,
            venue_positions: self
                .recon
                .books
                .positions
                .iter()
                .flat_map(|(v, symbols)| {
                    symbols
                        .iter()
                        .map(move |(s, q)| (v.clone(), s.clone(), Dec(*q)))
                })
                .collect(),
            venue_cash_flow: self
                .recon
                .books
                .cash_flow
                .iter()
                .map(|(v, c)| (v.clone(), Dec(*c)))
                .collect(),
        }
    }

    /// Start from a snapshot instead of nothing (before any report; not ready yet).
    /// A starting cash changed in the config since shifts cash and the equity marks by
    /// the difference, as a rebuild from EXEC would. Err: figures beyond a decimal.
    pub fn restore_state(&mut self, state: State) -> Result<(), String> {
        let shift = self
            .settings
            .starting_cash
            .checked_sub(state.starting_cash.0)
            .ok_or("starting cash difference overflows")?;
        let shifted = |d: Dec| {
            d.0.checked_add(shift)
                .ok_or_else(|| format!("{d} shifted by {shift} overflows"))
        };
        if !shift.is_zero() {
            tracing::warn!(snapshot = %state.starting_cash, config = %self.settings.starting_cash,
                "starting_cash changed since the snapshot: cash and equity marks shifted by the difference");
        }
        self.ledger.cash = shifted(state.cash)?;
        self.ledger.fees = state.fees.0;
        self.ledger.positions = state
            .positions
            .into_iter()
            .map(|p| {
                let position = Position {
                    quantity: p.quantity.0,
                    cost: p.cost.0,
                    realized_pnl: p.realized_pnl.0,
                    fees: p.fees.0,
                    last_fill_price: p.last_fill_price.map(|d| d.0),
                };
                (p.symbol, position)
            })
            .collect();
        self.revalue_all();
        self.applied.restore(state.applied, state.applied_finals);
        for (id, symbol, agent) in state.open_orders {
            self.open_orders
                .on_report(&id, Some(&symbol), agent.as_ref(), OrderStatus::Accepted);
        }
        for r in state.reservations {
            let reservation = Reservation {
                symbol: r.symbol,
                agent: r.agent,
                quantity: r.quantity.0,
                price: r.price.0,
                expires_ns: r.expires_ns,
            };
            self.reservations.reserve(&r.client_order_id, reservation);
        }
        self.watermarks = Watermarks::from_parts(
            shifted(state.peak_equity)?,
            state.day,
            shifted(state.day_start_equity)?,
        );
        self.unbooked_fill = state.unbooked_fill;
        self.recon.books.positions.clear();
        for (venue, symbol, quantity) in state.venue_positions {
            self.recon
                .books
                .positions
                .entry(venue)
                .or_default()
                .insert(symbol, quantity.0);
        }
        self.recon.books.cash_flow = state
            .venue_cash_flow
            .into_iter()
            .map(|(v, c)| (v, c.0))
            .collect();
        for (symbol, until_ns, detail) in state.halts {
            self.breakers
                .restore_halt(symbol, Halt { until_ns, detail });
        }
        Ok(())
    }
}
