//! Protections (issue #14 part 3): stop-loss, take-profit and trailing stops attached to an
//! entry order (`OrderRequest.protection`), carried out here as reduce-only exits.
//!
//! - Registered when risk approves the entry (before it is placed), stored at once in KV
//!   (bucket `protections`, key = the entry's id) with quantity 0: a crash between the
//!   entry's fill and the next write cannot lose it. A bucket of its own: full, it refuses
//!   only new protections (the entry is REJECTED `protection_unavailable`), never risk's
//!   keys. An ended protection is stored with a per-message TTL ([`ENDED_KEPT`]) and expires
//!   by itself, so the bucket holds the active protections and the last minutes' ended ones.
//! - ARMED once the entry fills, for the filled quantity (it grows with partial fills); a
//!   trailing stop starts at the entry's average fill price less (long) or plus (short)
//!   `trailing_stop_bps`. Every state is published on `exec.protection.<symbol>` and kept
//!   in KV (the bookkeeping fields beside the ProtectionState's: [`Stored`]).
//! - Each tick of the entry's venue and symbol goes through [`Watch::on_tick`] (the trigger
//!   rule, exact decimals). The first leg crossed makes the protection TRIGGERED: the
//!   state, with the exit's id, is stored in KV first, then ONE reduce-only MARKET exit goes
//!   to `orders.submit.protection.<symbol>` (JetStream ORDERS, Nats-Msg-Id = its id), so it
//!   takes the normal order path: intake, risk's pre-trade check, the venue, EXEC. The other
//!   legs are over (OCO). The exit's id is [`exit_id`] (`<parent>-x<attempt>`, hashed when
//!   longer than 64), so a restart or a re-send can never double it: ORDERS dedupes it and
//!   the ledger runs an id once.
//! - The exit FILLED: CLOSED. Refused (risk, the venue) or expired: stays TRIGGERED, an event
//!   on errors.execution, and a new attempt (the next id) after the service's backoff.
//! - A cancel of the entry's id (orders.cancel) cancels the protection, before or after
//!   the fill; an entry that ends without a fill cancels it; an engaged kill switch
//!   cancels every protection (its flatten closes the positions; no exit races it).
//! - Start: every stored protection not CLOSED / CANCELLED (and those stored in bucket
//!   `moonbus` before protections had their own, not overwritten since) is restored and squared with the
//!   ledger (an entry or exit whose report was stored but not its state change). Only an
//!   order the ledger holds as agent `protection`'s is the exit: another agent's order under
//!   the exit's id makes the exit go again under the next id, as at run time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use async_nats::jetstream;
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::streams::DirectReader;
use moonbus_common::{
    now_ns, subjects, AgentName, ChildKind, ClientOrderId, ExecutionReport, NonNegativeMoney,
    OrderRequest, OrderStatus, OrderType, PositiveMoney, ProtectionState, ProtectionStatus, Side,
    Symbol, Tick, TimeInForce,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jobs::Backoff;
use crate::ledger::{is_final, Ledger};

/// The KV stream of the protections bucket, and where they were stored before they had a
/// bucket of their own (bucket `moonbus`, keys `exec.protection.<parent>`): read on start,
/// never written.
pub const KV_STREAM: &str = "KV_protections";
const LEGACY_KV_STREAM: &str = "KV_moonbus";
const LEGACY_KV_FILTER: &str = "$KV.moonbus.exec.protection.>";
/// The subject of the latest record of an entry's protection: `$KV.protections.<parent>`.
fn kv_subject(parent_order_id: impl std::fmt::Display) -> String {
    format!("$KV.{}.{parent_order_id}", subjects::KV_PROTECTIONS_BUCKET)
}
/// A trailing stop's ratchets are stored and published at most this often.
const TRAIL_WRITE_EVERY: Duration = Duration::from_secs(1);
/// On start, protections that ended this recently are published again (their last state
/// may have been stored and not published when the previous run died).
const RETELL: Duration = Duration::from_secs(600);
/// How long an ended protection stays stored (its `Nats-TTL`): past RETELL, so a restart
/// still tells it, and short, so the bucket holds only what is active and just ended.
pub const ENDED_KEPT: Duration = Duration::from_secs(2 * 600);
/// How long a KV write or an ORDERS publish may take before it counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

const BPS: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

// ---------------------------------------------------------------- the trigger rule

/// A leg crossed by a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossed {
    pub kind: ChildKind,
    /// The leg's trigger price.
    pub level: Decimal,
    /// The tick's price.
    pub price: Decimal,
}

/// What a tick did to a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickOutcome {
    /// Not newer than the last tick seen (a duplicate, or older by seq and ts): ignored.
    Stale,
    /// Nothing crossed, nothing moved.
    Unchanged,
    /// The trailing trigger moved in the favourable direction.
    Ratcheted,
    /// A leg was crossed.
    Crossed(Crossed),
}

/// The trigger rule of one protection, exact decimals.
///
/// The price is the tick's last price. For a long (exits SELL) the stop-loss and the
/// trailing stop are crossed at or below their level, the take-profit at or above; for a
/// short (exits BUY) the other way round. A gap through a level crosses it (the exit is a
/// MARKET order: it fills where the market is). Legs are tried in the order stop-loss,
/// trailing stop, take-profit. Only when nothing is crossed does the trailing trigger
/// ratchet: to `price x (10000 - bps) / 10000` for a long when that is higher,
/// `price x (10000 + bps) / 10000` for a short when lower; it never moves back. A tick whose
/// `seq` and `ts` are both not above the last one seen is ignored (a duplicate or a late
/// one); a feed restart (seq from 0 again) has a later ts and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub exit_side: Side,
    pub stop_loss: Option<Decimal>,
    pub take_profit: Option<Decimal>,
    pub trailing_stop_bps: Option<u32>,
    pub trailing_trigger: Option<Decimal>,
    /// The (seq, ts) of the last tick seen.
    pub last_tick: Option<(u64, u64)>,
}

impl Watch {
    fn long(&self) -> bool {
        self.exit_side == Side::Sell
    }

    /// The trailing trigger for a best price of `price` (None without a trailing stop, or
    /// when it does not fit).
    pub fn trail_from(&self, price: Decimal) -> Option<Decimal> {
        let bps = Decimal::from(self.trailing_stop_bps?);
        let factor = if self.long() { BPS - bps } else { BPS + bps };
        let trigger = price.checked_mul(factor)?.checked_div(BPS)?.normalize();
        PositiveMoney::new(trigger).ok().map(|p| p.get())
    }

    pub fn on_tick(&mut self, seq: u64, ts: u64, price: Decimal) -> TickOutcome {
        if let Some((last_seq, last_ts)) = self.last_tick {
            if seq <= last_seq && ts <= last_ts {
                return TickOutcome::Stale;
            }
        }
        self.last_tick = Some((seq, ts));
        let long = self.long();
        // `adverse`: the losing direction (down for a long).
        let reached = |level: Decimal, adverse: bool| {
            if adverse == long {
                price <= level
            } else {
                price >= level
            }
        };
        let legs = [
            (ChildKind::StopLoss, self.stop_loss, true),
            (ChildKind::TrailingStop, self.trailing_trigger, true),
            (ChildKind::TakeProfit, self.take_profit, false),
        ];
        for (kind, level, adverse) in legs {
            if let Some(level) = level {
                if reached(level, adverse) {
                    return TickOutcome::Crossed(Crossed { kind, level, price });
                }
            }
        }
        if let Some(candidate) = self.trail_from(price) {
            let better = match self.trailing_trigger {
                None => true,
                Some(current) if long => candidate > current,
                Some(current) => candidate < current,
            };
            if better {
                self.trailing_trigger = Some(candidate);
                return TickOutcome::Ratcheted;
            }
        }
        TickOutcome::Unchanged
    }
}

/// The id of attempt `attempt` (1, 2, ...) at the exit of entry `parent`:
/// `<parent>-x<attempt>`, or `px-<24 hex of sha256(parent)>-x<attempt>` when that would be
/// longer than 64 characters. Deterministic: a restart or a re-send names the same order.
pub fn exit_id(parent: &ClientOrderId, attempt: u32) -> ClientOrderId {
    let direct = format!("{parent}-x{attempt}");
    if direct.len() <= 64 {
        if let Ok(id) = ClientOrderId::try_from(direct) {
            return id;
        }
    }
    let digest = Sha256::digest(parent.as_str().as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    ClientOrderId::try_from(format!("px-{hex}-x{attempt}")).expect("a valid client_order_id")
}

// ---------------------------------------------------------------- what is stored

/// The KV value of `<parent_order_id>` in bucket `protections`: the [`ProtectionState`] (readers of
/// that message ignore the rest) and execution's bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    #[serde(flatten)]
    pub state: ProtectionState,
    /// The entry's side and quantity.
    pub entry_side: Side,
    pub entry_quantity: PositiveMoney,
    /// How much of the entry filled.
    pub entry_filled: NonNegativeMoney,
    /// How much the exits of attempts before the current one filled.
    pub exited: NonNegativeMoney,
    /// The current exit attempt (0: none yet).
    pub attempt: u32,
    /// The leg that triggered, and the current exit's quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_kind: Option<ChildKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_quantity: Option<PositiveMoney>,
    /// When the trigger was crossed (the exits' origin_ts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_ts: Option<u64>,
    /// The (seq, ts) of the last tick evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tick: Option<(u64, u64)>,
}

impl Stored {
    fn is_active(&self) -> bool {
        matches!(
            self.state.state,
            ProtectionStatus::Armed | ProtectionStatus::Triggered
        )
    }

    fn watch(&self) -> Watch {
        Watch {
            exit_side: self.state.side,
            stop_loss: self.state.stop_loss.map(|p| p.get()),
            take_profit: self.state.take_profit.map(|p| p.get()),
            trailing_stop_bps: self.state.trailing_stop_bps,
            trailing_trigger: self.state.trailing_trigger.map(|p| p.get()),
            last_tick: self.last_tick,
        }
    }

    fn set_watch(&mut self, watch: &Watch) {
        self.state.trailing_trigger = watch
            .trailing_trigger
            .and_then(|t| PositiveMoney::new(t).ok());
        self.last_tick = watch.last_tick;
    }

    /// The open quantity: filled on entry less exited (current exit's fills excluded).
    fn open(&self) -> Decimal {
        (self.entry_filled.get() - self.exited.get()).max(Decimal::ZERO)
    }

    fn set_state(&mut self, state: ProtectionStatus, reason: Option<String>, ts: u64) {
        self.state.state = state;
        self.state.reason = reason;
        self.state.ts = ts;
    }

    fn set_quantity(&mut self) {
        self.state.quantity = NonNegativeMoney::new(self.open()).unwrap_or(NonNegativeMoney::ZERO);
    }
}

/// One protection and what is left to do for it. Times are ns on the [`Protections`] clock.
#[derive(Debug, Clone)]
struct Record {
    stored: Stored,
    /// Store and publish the state.
    persist: bool,
    /// Publish the current exit (after `persist`).
    send: bool,
    /// A trailing ratchet not stored yet, and when one was last stored.
    trail_dirty: bool,
    trail_written: Option<u64>,
    /// A new exit attempt is due then.
    retry_at: Option<u64>,
    /// The current exit is sent again then (its publish failed: the same id).
    resend_at: Option<u64>,
    failures: i64,
    /// Whether a ProtectionState was ever published (not before the entry's first fill).
    announced: bool,
}

impl Record {
    fn new(stored: Stored) -> Self {
        Self {
            stored,
            persist: false,
            send: false,
            trail_dirty: false,
            trail_written: None,
            retry_at: None,
            resend_at: None,
            failures: 0,
            announced: false,
        }
    }
}

/// Every protection and their exits: the state machine, without I/O, the same live
/// ([`Protector`]) and in a backtest (rust-backtest's simulator, on event time).
pub struct Protections {
    records: HashMap<ClientOrderId, Record>,
    /// Every exit sent: its parent and kind (their reports carry both).
    exits: HashMap<ClientOrderId, (ClientOrderId, ChildKind)>,
    backoff: Backoff,
    /// Events for errors.execution (subject, reason).
    events: Vec<(String, String)>,
    /// Event time (a backtest); None: the process clocks.
    fixed_now: Option<u64>,
}

fn delay_ns(delay: Duration) -> u64 {
    u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)
}

impl Protections {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            records: HashMap::new(),
            exits: HashMap::new(),
            backoff,
            events: Vec::new(),
            fixed_now: None,
        }
    }

    /// Run on event time from now on (a backtest): `now` stamps states and times retries.
    pub fn set_now(&mut self, now: u64) {
        self.fixed_now = Some(now);
    }

    /// A timestamp for states (the wall clock live).
    fn wall(&self) -> u64 {
        self.fixed_now.unwrap_or_else(now_ns)
    }

    /// The clock of retries (one that never steps, live).
    fn mono(&self) -> u64 {
        self.fixed_now.unwrap_or_else(moonbus_common::steady_ns)
    }

    /// Whether anything is watched or waiting (the engine's timer runs only then).
    pub fn is_busy(&self) -> bool {
        !self.records.is_empty()
    }

    /// The record of an entry with a protection, quantity 0 until it fills (None if the
    /// order has none, or it is known already: a re-delivery keeps the first).
    pub fn new_record(&self, order: &OrderRequest) -> Option<Stored> {
        let protection = order.protection.as_ref()?;
        if self.records.contains_key(&order.client_order_id) {
            return None;
        }
        let state = ProtectionState {
            parent_order_id: order.client_order_id.clone(),
            agent: order.agent.clone(),
            symbol: order.symbol.clone(),
            venue: order.venue.clone(),
            side: order.side.opposite(),
            quantity: NonNegativeMoney::ZERO,
            stop_loss: protection.stop_loss,
            take_profit: protection.take_profit,
            trailing_stop_bps: protection.trailing_stop_bps,
            trailing_trigger: None,
            state: ProtectionStatus::Armed,
            exit_order_id: None,
            reason: Some("waiting for the entry to fill".into()),
            ts: self.wall(),
        };
        Some(Stored {
            state,
            entry_side: order.side,
            entry_quantity: order.quantity,
            entry_filled: NonNegativeMoney::ZERO,
            exited: NonNegativeMoney::ZERO,
            attempt: 0,
            exit_kind: None,
            exit_quantity: None,
            triggered_ts: None,
            last_tick: None,
        })
    }

    /// Watch a record (made by [`Protections::new_record`], stored where it must be).
    pub fn insert(&mut self, stored: Stored) {
        self.records
            .insert(stored.state.parent_order_id.clone(), Record::new(stored));
    }

    /// An exit whose outcome the ledger forgot (ledger.rs: two weeks after it ended) is no
    /// longer known as one: no report of it can come any more.
    pub fn forget(&mut self, id: &ClientOrderId) {
        self.exits.remove(id);
    }

    /// Fill in `parent_order_id` and `child_kind` of the reports of exits.
    pub fn tag(&self, reports: &mut [ExecutionReport]) {
        for report in reports {
            if let Some((parent, kind)) = self.exit_of(report) {
                report.parent_order_id.get_or_insert_with(|| parent.clone());
                report.child_kind.get_or_insert(*kind);
            }
        }
    }

    /// The protection (parent, leg) whose exit `report` is about. Only an order of agent
    /// `protection` is an exit: another agent's order may carry an exit's id in its payload
    /// (stored just as the protection triggers, before the exit), and its fills are not
    /// the exit's.
    fn exit_of(&self, report: &ExecutionReport) -> Option<&(ClientOrderId, ChildKind)> {
        let by_protection = report
            .agent
            .as_ref()
            .is_some_and(|a| a.as_str() == subjects::PROTECTION_AGENT);
        self.exits
            .get(report.client_order_id.as_ref()?)
            .filter(|_| by_protection)
    }

    /// A report stored in EXEC: an entry's fill arms (or grows) its protection, an entry
    /// ended without a fill cancels it, an exit's outcome closes it or makes it try again.
    /// What must be written or sent is done by [`Protector::flush`] (live).
    pub fn on_report(&mut self, report: &ExecutionReport) {
        let Some(id) = &report.client_order_id else {
            return;
        };
        if let Some((parent, _)) = self.exit_of(report).cloned() {
            self.on_exit_report(&parent, id, report);
            return;
        }
        if let Some((parent, _)) = self.exits.get(id).cloned() {
            self.on_exit_taken(&parent, id, report);
            return;
        }
        let wall = self.wall();
        let Some(record) = self.records.get_mut(id) else {
            return;
        };
        let stored = &mut record.stored;
        if !stored.is_active() {
            return;
        }
        if report.filled_quantity.get() > stored.entry_filled.get() {
            let first = stored.entry_filled.get().is_zero();
            stored.entry_filled = report.filled_quantity;
            stored.set_quantity();
            if first {
                let mut watch = stored.watch();
                if let Some(price) = report.avg_fill_price {
                    watch.trailing_trigger = watch.trail_from(price.get());
                }
                stored.set_watch(&watch);
            }
            if stored.state.state == ProtectionStatus::Armed {
                let reason = format!(
                    "armed: entry filled {} of {}",
                    stored.entry_filled, stored.entry_quantity
                );
                stored.set_state(ProtectionStatus::Armed, Some(reason), wall);
            }
            record.persist = true;
        } else if is_final(report.status)
            && stored.entry_filled.get().is_zero()
            && stored.state.state == ProtectionStatus::Armed
        {
            let why = report.reason.as_deref().unwrap_or("");
            let reason = format!("entry {} without a fill {why}", report.status);
            stored.set_state(
                ProtectionStatus::Cancelled,
                Some(reason.trim_end().into()),
                wall,
            );
            record.persist = true;
        }
    }

    fn on_exit_report(
        &mut self,
        parent: &ClientOrderId,
        id: &ClientOrderId,
        report: &ExecutionReport,
    ) {
        let (wall, mono) = (self.wall(), self.mono());
        let Some(record) = self.records.get_mut(parent) else {
            return;
        };
        let stored = &mut record.stored;
        if stored.state.exit_order_id.as_ref() != Some(id) || !is_final(report.status) {
            return;
        }
        stored.exited = NonNegativeMoney::new(stored.exited.get() + report.filled_quantity.get())
            .unwrap_or(stored.exited);
        stored.set_quantity();
        if !stored.is_active() {
            record.persist = true; // cancelled meanwhile: its quantity is still told
            return;
        }
        if stored.open().is_zero() {
            let how = match report.avg_fill_price {
                Some(price) if report.status == OrderStatus::Filled => format!("filled at {price}"),
                _ => format!("{}: nothing left open", report.status),
            };
            stored.set_state(
                ProtectionStatus::Closed,
                Some(format!("exit {id} {how}")),
                wall,
            );
            record.persist = true;
            return;
        }
        if report.status == OrderStatus::Filled {
            // The entry filled more meanwhile: the rest goes out at once.
            record.retry_at = Some(mono);
            return;
        }
        record.failures = record.failures.saturating_add(1);
        let delay = self.backoff.delay(record.failures);
        let why = report.reason.clone().unwrap_or_default();
        stored.state.reason = Some(format!("exit {id} {}: {why}", report.status));
        stored.state.ts = wall;
        record.retry_at = Some(mono.saturating_add(delay_ns(delay)));
        record.persist = true;
        let subject = subjects::orders_submit(subjects::PROTECTION_AGENT, &stored.state.symbol);
        let text = format!(
            "protection exit {id} of {parent} {}: {why}; tried again in {delay:?}",
            report.status
        );
        self.events.push((subject, text));
    }

    /// Another agent's order took the id of an exit (stored just as the protection
    /// triggered): the exit sent under it is then a duplicate the ledger drops, so the
    /// protection would wait for it for ever. It goes again at once, under the next id
    /// the ledger does not know (`next_attempt`).
    fn on_exit_taken(
        &mut self,
        parent: &ClientOrderId,
        id: &ClientOrderId,
        report: &ExecutionReport,
    ) {
        let mono = self.mono();
        let Some(record) = self.records.get_mut(parent) else {
            return;
        };
        let stored = &record.stored;
        if stored.state.exit_order_id.as_ref() != Some(id)
            || !stored.is_active()
            || record.retry_at.is_some()
        {
            return;
        }
        record.retry_at = Some(mono);
        let agent = report.agent.as_ref().map_or("?", |a| a.as_str());
        let subject = subjects::orders_submit(subjects::PROTECTION_AGENT, &stored.state.symbol);
        let text = format!("protection exit {id} of {parent}: the id was taken by an order of agent {agent}; sent again under the next id");
        self.events.push((subject, text));
    }

    /// A tick: every armed protection of its venue and symbol is evaluated.
    pub fn on_tick(&mut self, tick: &Tick, ledger: &Ledger) {
        let wall = self.wall();
        for record in self.records.values_mut() {
            let stored = &mut record.stored;
            if stored.state.state != ProtectionStatus::Armed
                || stored.entry_filled.get().is_zero()
                || stored.state.venue != tick.venue
                || stored.state.symbol != tick.symbol
            {
                continue;
            }
            let mut watch = stored.watch();
            let outcome = watch.on_tick(tick.seq, tick.ts, tick.price.get());
            stored.set_watch(&watch);
            match outcome {
                TickOutcome::Stale | TickOutcome::Unchanged => {}
                TickOutcome::Ratcheted => record.trail_dirty = true,
                TickOutcome::Crossed(crossed) => {
                    let reason = format!(
                        "{}: price {} crossed {}",
                        crossed.kind.as_str().to_ascii_lowercase(),
                        crossed.price,
                        crossed.level
                    );
                    stored.exit_kind = Some(crossed.kind);
                    stored.triggered_ts = Some(tick.ts);
                    next_attempt(record, &mut self.exits, ledger, reason, wall);
                }
            }
        }
    }

    /// Whether the protection of `id` has a change its KV write has not stored yet.
    pub fn unsaved(&self, id: &ClientOrderId) -> bool {
        self.records.get(id).is_some_and(|r| r.persist)
    }

    /// `orders.cancel` of an entry with a protection: None if it has none active; Err if
    /// `agent` may not cancel it; Ok: cancelled (the entry's own cancel goes on if it rests).
    pub fn cancel(
        &mut self,
        id: &ClientOrderId,
        agent: &AgentName,
        symbol: &Symbol,
        cancels_any: bool,
    ) -> Option<Result<(), String>> {
        let wall = self.wall();
        let record = self.records.get_mut(id)?;
        let stored = &mut record.stored;
        if !stored.is_active() {
            return None;
        }
        if &stored.state.symbol != symbol {
            return Some(Err(format!(
                "symbol_mismatch: order {id} is for {}",
                stored.state.symbol
            )));
        }
        if &stored.state.agent != agent && !cancels_any {
            return Some(Err(format!(
                "agent_mismatch: order {id} belongs to agent {}",
                stored.state.agent
            )));
        }
        stored.set_state(
            ProtectionStatus::Cancelled,
            Some(format!("cancelled by {agent}")),
            wall,
        );
        record.stop();
        Some(Ok(()))
    }

    /// An engaged kill switch cancels every protection: its flatten closes the positions,
    /// and no exit may race it.
    pub fn kill_switch(&mut self, reason: &str) {
        let wall = self.wall();
        for record in self.records.values_mut() {
            if record.stored.is_active() {
                let why = Some(format!("kill_switch: {reason}"));
                record
                    .stored
                    .set_state(ProtectionStatus::Cancelled, why, wall);
                record.stop();
            }
        }
    }

    /// Due retries, and trailing ratchets not stored for a while.
    pub fn on_timer(&mut self, ledger: &Ledger) {
        let (wall, mono) = (self.wall(), self.mono());
        for record in self.records.values_mut() {
            if record.resend_at.is_some_and(|at| at <= mono) {
                record.resend_at = None;
                record.send = record.stored.state.state == ProtectionStatus::Triggered;
            }
            if record.retry_at.is_some_and(|at| at <= mono) && record.stored.is_active() {
                let reason = record.stored.state.reason.clone().unwrap_or_default();
                next_attempt(record, &mut self.exits, ledger, reason, wall);
            }
            if record.trail_dirty
                && record
                    .trail_written
                    .is_none_or(|at| mono.saturating_sub(at) >= delay_ns(TRAIL_WRITE_EVERY))
            {
                record.persist = true;
            }
        }
    }

    /// The exits due now, taken (a backtest submits them itself); their records count as
    /// stored.
    pub fn take_sends(&mut self) -> Vec<OrderRequest> {
        let mut orders = Vec::new();
        for record in self.records.values_mut() {
            record.persist = false;
            record.trail_dirty = false;
            if std::mem::take(&mut record.send) {
                if let Ok(order) = exit_order(&record.stored, self.fixed_now) {
                    orders.push(order);
                }
            }
        }
        self.records.retain(|_, r| r.stored.is_active());
        self.events.clear();
        orders.sort_by(|a, b| a.client_order_id.as_str().cmp(b.client_order_id.as_str()));
        orders
    }

    /// Every stored record (start-up), squared with the ledger: what the ledger knows and
    /// the record may not (a report stored, the state change not).
    fn restore_record(&mut self, stored: Stored, ledger: &Ledger) {
        let parent = stored.state.parent_order_id.clone();
        if let Some(kind) = stored.exit_kind {
            for attempt in 1..=stored.attempt {
                self.exits
                    .insert(exit_id(&parent, attempt), (parent.clone(), kind));
            }
            if let Some(exit) = &stored.state.exit_order_id {
                self.exits.insert(exit.clone(), (parent.clone(), kind));
            }
        }
        if !stored.is_active() {
            return;
        }
        let (wall, mono) = (self.wall(), self.mono());
        let mut record = Record::new(stored);
        record.announced = !record.stored.entry_filled.get().is_zero();
        let stored = &mut record.stored;
        // The entry may have ended part filled (then EXPIRED or CANCELLED) while the
        // protection's KV write did not come: that part is a position to guard.
        let entry_filled = match ledger.status(&parent) {
            Some(OrderStatus::Filled) => Some(stored.entry_quantity.into()),
            Some(_) => ledger.filled_short(&parent),
            None => None,
        };
        if let Some(filled) = entry_filled.filter(|f| f.get() > stored.entry_filled.get()) {
            stored.entry_filled = filled;
            stored.set_quantity();
            record.persist = true;
        }
        let entry_over = ledger.status(&parent).is_some_and(is_final);
        if stored.state.state == ProtectionStatus::Armed
            && entry_over
            && stored.entry_filled.get().is_zero()
        {
            let reason = Some("entry ended without a fill".into());
            stored.set_state(ProtectionStatus::Cancelled, reason, wall);
            record.persist = true;
        } else if stored.state.state == ProtectionStatus::Triggered {
            if let Some(exit) = stored.state.exit_order_id.clone() {
                match ledger.status(&exit) {
                    // Sent or not before the crash: (again) the same id, never doubled.
                    None => record.send = true,
                    // Another agent's order under the exit's id (stored as the protection
                    // triggered): its outcome is not the exit's, and the exit sent under the
                    // id is a duplicate the ledger drops. It goes again at once under the
                    // next id the ledger does not know, as `on_exit_taken` does at run time.
                    Some(_) if !ledger.is_protections(&exit) => {
                        record.retry_at = Some(mono);
                        let subject = subjects::orders_submit(
                            subjects::PROTECTION_AGENT,
                            &stored.state.symbol,
                        );
                        let text = format!("protection exit {exit} of {parent}: the id was taken by another agent's order (found at start); sent again under the next id");
                        self.events.push((subject, text));
                    }
                    Some(OrderStatus::Filled) => {
                        let filled = stored.exit_quantity.map(|q| q.get()).unwrap_or_default();
                        stored.exited = NonNegativeMoney::new(stored.exited.get() + filled)
                            .unwrap_or(stored.exited);
                        stored.set_quantity();
                        if stored.open().is_zero() {
                            let reason = Some(format!("exit {exit} filled"));
                            stored.set_state(ProtectionStatus::Closed, reason, wall);
                        } else {
                            record.retry_at = Some(mono);
                        }
                        record.persist = true;
                    }
                    Some(status) if is_final(status) => record.retry_at = Some(mono),
                    Some(_) => {} // working: its reports will come
                }
            }
        }
        self.records.insert(parent, record);
    }
}

impl Record {
    /// Nothing more to send for it (cancelled).
    fn stop(&mut self) {
        self.persist = true;
        self.send = false;
        self.retry_at = None;
        self.resend_at = None;
    }
}

/// A new exit for the open quantity: the next attempt's id (skipping any id the ledger
/// already knows: an agent may have used it), stored first, then sent.
fn next_attempt(
    record: &mut Record,
    exits: &mut HashMap<ClientOrderId, (ClientOrderId, ChildKind)>,
    ledger: &Ledger,
    reason: String,
    wall: u64,
) {
    let stored = &mut record.stored;
    let Ok(quantity) = PositiveMoney::new(stored.open()) else {
        stored.set_state(
            ProtectionStatus::Closed,
            Some("nothing left open".into()),
            wall,
        );
        record.persist = true;
        return;
    };
    let parent = stored.state.parent_order_id.clone();
    let mut attempt = stored.attempt.saturating_add(1);
    while ledger.status(&exit_id(&parent, attempt)).is_some() {
        attempt = attempt.saturating_add(1);
    }
    let id = exit_id(&parent, attempt);
    let kind = stored.exit_kind.unwrap_or(ChildKind::StopLoss);
    exits.insert(id.clone(), (parent, kind));
    stored.attempt = attempt;
    stored.exit_quantity = Some(quantity);
    stored.state.exit_order_id = Some(id);
    stored.set_state(ProtectionStatus::Triggered, Some(reason), wall);
    record.retry_at = None;
    record.persist = true;
    record.send = true;
}

// ---------------------------------------------------------------- live: KV, ORDERS, NATS

/// [`Protections`] with their I/O: each record in KV, each state on
/// `exec.protection.<symbol>`, each exit into ORDERS.
pub struct Protector {
    book: Protections,
    /// Entries whose active protection was read from bucket `moonbus` at start: their
    /// records never expire, or that older record would come back at the next start.
    legacy: HashSet<ClientOrderId>,
    js: jetstream::Context,
    client: async_nats::Client,
    errors: ErrorSink,
}

impl std::ops::Deref for Protector {
    type Target = Protections;
    fn deref(&self) -> &Protections {
        &self.book
    }
}

impl std::ops::DerefMut for Protector {
    fn deref_mut(&mut self) -> &mut Protections {
        &mut self.book
    }
}

impl Protector {
    pub fn new(
        js: jetstream::Context,
        client: async_nats::Client,
        errors: ErrorSink,
        backoff: Backoff,
    ) -> Self {
        Self {
            book: Protections::new(backoff),
            legacy: HashSet::new(),
            js,
            client,
            errors,
        }
    }

    /// Risk approved an entry with a protection: store it (quantity 0 until the entry
    /// fills) before the entry is placed. An Err is the entry's REJECTED reason.
    pub async fn register(&mut self, order: &OrderRequest) -> Result<(), String> {
        let Some(stored) = self.book.new_record(order) else {
            return Ok(());
        };
        self.put(&stored).await.map_err(|e| {
            format!("protection_unavailable: the protection could not be stored ({e:#})")
        })?;
        self.book.insert(stored);
        Ok(())
    }

    /// Store and publish what changed, then send the exits due; errors go to
    /// errors.execution (and are tried again on the timer).
    pub async fn flush(&mut self) {
        for (subject, reason) in std::mem::take(&mut self.book.events) {
            self.errors.report(&subject, &reason, b"").await;
        }
        let ids: Vec<ClientOrderId> = self
            .book
            .records
            .iter()
            .filter(|(_, r)| r.persist || r.send)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let Some(record) = self.book.records.get(&id).cloned() else {
                continue;
            };
            let mut persisted = !record.persist;
            if record.persist {
                match self.put(&record.stored).await {
                    Ok(()) => {
                        persisted = true;
                        let announce = !record.stored.entry_filled.get().is_zero()
                            || record.announced
                            || !record.stored.is_active();
                        if announce {
                            self.publish(&record.stored.state).await;
                        }
                        let mono = self.book.mono();
                        if let Some(r) = self.book.records.get_mut(&id) {
                            r.persist = false;
                            r.trail_dirty = false;
                            r.trail_written = Some(mono);
                            r.announced |= announce;
                        }
                    }
                    Err(e) => {
                        let reason = format!("protection of {id} not stored: {e:#}");
                        let subject = kv_subject(&id);
                        self.errors.report(&subject, &reason, b"").await;
                    }
                }
            }
            if record.send && persisted {
                let subject = subjects::orders_submit(
                    subjects::PROTECTION_AGENT,
                    &record.stored.state.symbol,
                );
                match self.send_exit(&record.stored).await {
                    Ok(()) => {
                        if let Some(r) = self.book.records.get_mut(&id) {
                            r.send = false;
                        }
                    }
                    Err(e) => {
                        let reason = format!("protection exit of {id} not sent: {e:#}");
                        self.errors.report(&subject, &reason, b"").await;
                        let mono = self.book.mono();
                        let backoff = self.book.backoff;
                        if let Some(r) = self.book.records.get_mut(&id) {
                            r.failures = r.failures.saturating_add(1);
                            r.send = false;
                            // The same exit again (same id: never doubled).
                            r.resend_at =
                                Some(mono.saturating_add(delay_ns(backoff.delay(r.failures))));
                        }
                    }
                }
            }
        }
        // Over and told: no longer watched (their exits keep their tags).
        self.book
            .records
            .retain(|_, r| r.stored.is_active() || r.persist || r.send);
    }

    async fn put(&self, stored: &Stored) -> Result<()> {
        let parent = &stored.state.parent_order_id;
        let value = serde_json::to_vec(stored).context("encoding the protection")?;
        let mut headers = async_nats::HeaderMap::new();
        if !stored.is_active() && !self.legacy.contains(parent) {
            headers.insert("Nats-TTL", format!("{}s", ENDED_KEPT.as_secs()).as_str());
        }
        let subject = kv_subject(parent);
        let stored = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, value.into())
                .await?;
            ack.await
        };
        tokio::time::timeout(IO_TIMEOUT, stored)
            .await
            .map_err(|_| anyhow!("KV write timed out"))??;
        Ok(())
    }

    async fn publish(&self, state: &ProtectionState) {
        let subject = subjects::exec_protection(&state.symbol);
        if let Err(e) = self.client.publish(subject, bus::encode(state)).await {
            tracing::warn!(error = %e, "publishing a protection state");
        }
        tracing::info!(
            parent_order_id = %state.parent_order_id, state = %state.state,
            quantity = %state.quantity, reason = state.reason.as_deref().unwrap_or(""),
            "protection"
        );
    }

    /// The current exit into ORDERS (Nats-Msg-Id = its id), as agent `protection`.
    async fn send_exit(&self, stored: &Stored) -> Result<()> {
        let order = exit_order(stored, None)?;
        let subject = subjects::orders_submit(&order.agent, &order.symbol);
        let sent = crate::jobs::publish_order(&self.js, subject, &order);
        tokio::time::timeout(IO_TIMEOUT, sent)
            .await
            .map_err(|_| anyhow!("ORDERS did not acknowledge within {IO_TIMEOUT:?}"))??;
        tracing::warn!(
            client_order_id = %order.client_order_id, parent = %stored.state.parent_order_id,
            side = %order.side, quantity = %order.quantity, "protection exit sent"
        );
        Ok(())
    }

    async fn stream_exists(&self, name: &str) -> Result<bool> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        use async_nats::jetstream::ErrorCode;
        match self.js.get_stream(name).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(e).with_context(|| format!("reading stream {name}")),
            },
        }
    }

    /// Every stored protection back (start-up), squared with the ledger: bucket
    /// `protections`, then those stored in `moonbus` before it existed that it does not hold.
    pub async fn restore(&mut self, client: &async_nats::Client, ledger: &Ledger) -> Result<()> {
        let mut seen = HashSet::new();
        let mut read = 0;
        // Stored but perhaps never published (a crash between the two): every active
        // state, and those that ended within RETELL, are published again.
        let mut retell = Vec::new();
        let recent = now_ns().saturating_sub(delay_ns(RETELL));
        let sources = [
            (KV_STREAM, kv_subject(">")),
            (LEGACY_KV_STREAM, LEGACY_KV_FILTER.to_string()),
        ];
        for (stream, filter) in sources {
            let legacy = stream == LEGACY_KV_STREAM;
            if legacy && !self.stream_exists(stream).await? {
                continue; // never provisioned here: nothing was stored in it
            }
            let mut reader = DirectReader::new(client.clone(), stream, &filter, 1);
            while let Some(message) = reader.next().await? {
                let stored = match serde_json::from_slice::<Stored>(&message.payload) {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracing::error!(subject = %message.subject, error = %e, "a stored protection is unreadable; ignored");
                        continue;
                    }
                };
                let parent = stored.state.parent_order_id.clone();
                if legacy && stored.is_active() {
                    self.legacy.insert(parent.clone());
                }
                if !seen.insert(parent.clone()) {
                    continue; // the bucket's own record is the latest
                }
                let announced = !stored.entry_filled.get().is_zero() || !stored.is_active();
                if announced && (stored.is_active() || stored.state.ts >= recent) {
                    retell.push(parent);
                }
                if !stored.is_active() && stored.state.ts >= recent {
                    self.publish(&stored.state).await;
                }
                self.book.restore_record(stored, ledger);
                read += 1;
            }
        }
        tracing::info!(
            read,
            active = self.book.records.len(),
            from_moonbus = self.legacy.len(),
            "protections restored"
        );
        for id in retell {
            if let Some(record) = self.book.records.get_mut(&id) {
                record.persist = true; // stored again (unchanged or squared) and published
            }
        }
        self.flush().await;
        Ok(())
    }
}

/// The reduce-only MARKET exit of a TRIGGERED protection.
/// `now`: event time (a backtest), else the wall clock.
pub fn exit_order(stored: &Stored, now: Option<u64>) -> Result<OrderRequest> {
    let state = &stored.state;
    let client_order_id = state
        .exit_order_id
        .clone()
        .ok_or_else(|| anyhow!("no exit id"))?;
    let quantity = stored
        .exit_quantity
        .ok_or_else(|| anyhow!("no exit quantity"))?;
    let decision_price = match stored.exit_kind {
        Some(ChildKind::StopLoss) => state.stop_loss,
        Some(ChildKind::TakeProfit) => state.take_profit,
        Some(ChildKind::TrailingStop) => state.trailing_trigger,
        _ => None,
    };
    let now = now.unwrap_or_else(now_ns);
    Ok(OrderRequest {
        client_order_id,
        agent: AgentName::try_from(subjects::PROTECTION_AGENT).expect("a valid agent name"),
        symbol: state.symbol.clone(),
        venue: state.venue.clone(),
        side: state.side,
        order_type: OrderType::Market,
        quantity,
        limit_price: None,
        time_in_force: TimeInForce::Gtc,
        reduce_only: true,
        decision_price,
        protection: None,
        algo: None,
        origin_ts: stored.triggered_ts.unwrap_or(now),
        ts: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    fn long() -> Watch {
        Watch {
            exit_side: Side::Sell,
            stop_loss: Some(d("95")),
            take_profit: Some(d("110")),
            trailing_stop_bps: None,
            trailing_trigger: None,
            last_tick: None,
        }
    }

    fn short() -> Watch {
        Watch {
            exit_side: Side::Buy,
            stop_loss: Some(d("105")),
            take_profit: Some(d("90")),
            ..long()
        }
    }

    fn crossed(outcome: TickOutcome) -> (ChildKind, Decimal) {
        match outcome {
            TickOutcome::Crossed(c) => (c.kind, c.level),
            other => panic!("not crossed: {other:?}"),
        }
    }

    #[test]
    fn long_stop_and_take_profit() {
        let mut w = long();
        assert_eq!(w.on_tick(1, 1, d("100")), TickOutcome::Unchanged);
        assert_eq!(w.on_tick(2, 2, d("95.0001")), TickOutcome::Unchanged);
        assert_eq!(
            crossed(w.on_tick(3, 3, d("95"))),
            (ChildKind::StopLoss, d("95"))
        );
        let mut w = long();
        assert_eq!(w.on_tick(1, 1, d("109.99999999")), TickOutcome::Unchanged);
        assert_eq!(
            crossed(w.on_tick(2, 2, d("110"))),
            (ChildKind::TakeProfit, d("110"))
        );
    }

    #[test]
    fn short_stop_and_take_profit_are_mirrored() {
        let mut w = short();
        assert_eq!(w.on_tick(1, 1, d("100")), TickOutcome::Unchanged);
        assert_eq!(
            w.on_tick(2, 2, d("95")),
            TickOutcome::Unchanged,
            "a long's stop is no short's"
        );
        assert_eq!(
            crossed(w.on_tick(3, 3, d("105"))),
            (ChildKind::StopLoss, d("105"))
        );
        let mut w = short();
        assert_eq!(
            w.on_tick(1, 1, d("104.99")),
            TickOutcome::Unchanged,
            "above a short's take-profit, below its stop"
        );
        assert_eq!(
            crossed(w.on_tick(2, 2, d("89.5"))),
            (ChildKind::TakeProfit, d("90"))
        );
    }

    #[test]
    fn a_gap_through_the_stop_crosses_it() {
        let mut w = long();
        assert_eq!(w.on_tick(1, 1, d("100")), TickOutcome::Unchanged);
        let (kind, level) = crossed(w.on_tick(2, 2, d("50")));
        assert_eq!((kind, level), (ChildKind::StopLoss, d("95")));
        let mut w = short();
        let TickOutcome::Crossed(c) = w.on_tick(1, 1, d("200")) else {
            panic!()
        };
        assert_eq!((c.kind, c.price), (ChildKind::StopLoss, d("200")));
    }

    #[test]
    fn trailing_ratchets_only_in_the_favourable_direction_exactly() {
        let mut w = Watch {
            stop_loss: None,
            take_profit: None,
            trailing_stop_bps: Some(150),
            ..long()
        };
        w.trailing_trigger = w.trail_from(d("100"));
        assert_eq!(w.trailing_trigger, Some(d("98.5")));
        assert_eq!(w.on_tick(1, 1, d("101.33")), TickOutcome::Ratcheted);
        // 101.33 x 9850 / 10000 = 99.81005, exact.
        assert_eq!(w.trailing_trigger, Some(d("99.81005")));
        assert_eq!(
            w.on_tick(2, 2, d("100.5")),
            TickOutcome::Unchanged,
            "never moves back"
        );
        assert_eq!(w.trailing_trigger, Some(d("99.81005")));
        let (kind, level) = crossed(w.on_tick(3, 3, d("99.81005")));
        assert_eq!((kind, level), (ChildKind::TrailingStop, d("99.81005")));

        let mut s = Watch {
            trailing_stop_bps: Some(5000),
            ..short()
        };
        s.stop_loss = None;
        s.take_profit = None;
        s.trailing_trigger = s.trail_from(d("100"));
        assert_eq!(s.trailing_trigger, Some(d("150")));
        assert_eq!(s.on_tick(1, 1, d("80")), TickOutcome::Ratcheted);
        assert_eq!(s.trailing_trigger, Some(d("120")));
        assert_eq!(s.on_tick(2, 2, d("90")), TickOutcome::Unchanged);
        assert_eq!(
            crossed(s.on_tick(3, 3, d("120.01"))).0,
            ChildKind::TrailingStop
        );
    }

    #[test]
    fn duplicate_and_late_ticks_are_ignored_a_feed_restart_is_not() {
        let mut w = Watch {
            trailing_stop_bps: Some(100),
            stop_loss: None,
            take_profit: None,
            ..long()
        };
        assert_eq!(w.on_tick(10, 1000, d("100")), TickOutcome::Ratcheted);
        assert_eq!(
            w.on_tick(10, 1000, d("200")),
            TickOutcome::Stale,
            "duplicate"
        );
        assert_eq!(w.on_tick(9, 999, d("200")), TickOutcome::Stale, "late");
        assert_eq!(w.trailing_trigger, Some(d("99")));
        assert_eq!(
            w.on_tick(11, 1001, d("50")),
            TickOutcome::Crossed(Crossed {
                kind: ChildKind::TrailingStop,
                level: d("99"),
                price: d("50"),
            })
        );
        let mut w = long();
        assert_eq!(w.on_tick(500, 1000, d("100")), TickOutcome::Unchanged);
        // market-data restarted: seq from 1 again, a later ts.
        assert_eq!(
            crossed(w.on_tick(1, 2000, d("94"))) /* counts */
                .0,
            ChildKind::StopLoss
        );
    }

    #[test]
    fn stop_loss_wins_over_a_trailing_stop_crossed_by_the_same_tick() {
        let mut w = Watch {
            trailing_stop_bps: Some(100),
            trailing_trigger: Some(d("99")),
            ..long()
        };
        assert_eq!(crossed(w.on_tick(1, 1, d("90"))).0, ChildKind::StopLoss);
    }

    #[test]
    fn exit_ids_are_deterministic_and_bounded() {
        let parent = ClientOrderId::try_from("trd-42").unwrap();
        assert_eq!(exit_id(&parent, 1).as_str(), "trd-42-x1");
        assert_eq!(exit_id(&parent, 1), exit_id(&parent, 1));
        let long_id = ClientOrderId::try_from("a".repeat(64)).unwrap();
        let id = exit_id(&long_id, 12);
        assert!(
            id.as_str().len() <= 64 && id.as_str().starts_with("px-"),
            "{id}"
        );
        assert_eq!(id, exit_id(&long_id, 12));
        assert_ne!(id, exit_id(&long_id, 13));
        let other = ClientOrderId::try_from(format!("{}b", "a".repeat(63))).unwrap();
        assert_ne!(exit_id(&other, 12), id);
    }

    #[test]
    fn the_exit_is_a_reduce_only_market_order_of_the_open_quantity() {
        let stored: Stored = serde_json::from_str(
            r#"{"parent_order_id":"p-1","agent":"trading","symbol":"BTC-USD","venue":"sim",
                "side":"SELL","quantity":"0.3","stop_loss":"95","state":"TRIGGERED",
                "exit_order_id":"p-1-x1","ts":1,"entry_side":"BUY","entry_quantity":"0.5",
                "entry_filled":"0.3","exited":"0","attempt":1,"exit_kind":"STOP_LOSS",
                "exit_quantity":"0.3","triggered_ts":7}"#,
        )
        .unwrap();
        // A reader of ProtectionState reads the stored value too.
        let state: ProtectionState =
            serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(state.state, ProtectionStatus::Triggered);
        let order = exit_order(&stored, None).unwrap();
        assert!(order.reduce_only);
        assert_eq!(order.order_type, OrderType::Market);
        assert_eq!(order.side, Side::Sell);
        assert_eq!(order.quantity.to_string(), "0.3");
        assert_eq!(order.agent.as_str(), "protection");
        assert_eq!(order.client_order_id.as_str(), "p-1-x1");
        assert_eq!(order.decision_price.unwrap().to_string(), "95");
        assert_eq!(order.origin_ts, 7);
        // It passes the contract's own rules (a reduce-only order takes no protection).
        let wire = serde_json::to_vec(&order).unwrap();
        assert!(serde_json::from_slice::<OrderRequest>(&wire).is_ok());
    }

    // ---------------------------------------------------------------- the state machine

    fn backoff() -> Backoff {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(400),
        }
    }

    fn entry(id: &str, side: &str, quantity: &str, protection: &str) -> OrderRequest {
        serde_json::from_str(&format!(
            r#"{{"client_order_id":"{id}","agent":"trading","symbol":"BTC-USD","side":"{side}",
                "quantity":"{quantity}","protection":{protection},"origin_ts":1,"ts":1}}"#
        ))
        .unwrap()
    }

    fn report(id: &str, status: &str, filled: &str, avg: Option<&str>) -> ExecutionReport {
        let avg = avg
            .map(|p| format!(r#","avg_fill_price":"{p}""#))
            .unwrap_or_default();
        let reason = if matches!(status, "REJECTED" | "FAILED") {
            r#","reason":"reduce_only_increases: no position""#
        } else {
            ""
        };
        // An exit's reports are of agent `protection` (its exits), the entry's of its own.
        let agent = if id.contains("-x") {
            "protection"
        } else {
            "trading"
        };
        serde_json::from_str(&format!(
            r#"{{"client_order_id":"{id}","agent":"{agent}","symbol":"BTC-USD","status":"{status}",
                "filled_quantity":"{filled}"{avg}{reason},"timings":{{}},"ts":1}}"#
        ))
        .unwrap()
    }

    fn tick(seq: u64, price: &str) -> Tick {
        serde_json::from_str(&format!(
            r#"{{"venue":"sim","symbol":"BTC-USD","price":"{price}","seq":{seq},"ts":{seq}}}"#
        ))
        .unwrap()
    }

    fn book() -> (Protections, Ledger) {
        let mut p = Protections::new(backoff());
        p.set_now(1_000);
        (p, Ledger::default())
    }

    fn state(p: &Protections, parent: &str) -> ProtectionState {
        p.records[&ClientOrderId::try_from(parent).unwrap()]
            .stored
            .state
            .clone()
    }

    /// Books a report as execution does: the ledger, then the protections.
    fn stored(p: &mut Protections, ledger: &mut Ledger, mut r: ExecutionReport) {
        p.tag(std::slice::from_mut(&mut r));
        ledger.record(&r);
        p.on_report(&r);
    }

    #[test]
    fn an_exit_is_forgotten_with_its_outcome() {
        let (mut p, _) = book();
        let mut ledger = Ledger::with_horizon(10);
        let order = entry("e-1", "BUY", "1", r#"{"stop_loss":"95"}"#);
        let record = p.new_record(&order).unwrap();
        p.insert(record);
        stored(
            &mut p,
            &mut ledger,
            report("e-1", "FILLED", "1", Some("100")),
        );
        p.on_tick(&tick(1, "90"), &ledger);
        assert_eq!(p.take_sends().len(), 1);
        let mut exit = report("e-1-x1", "FILLED", "1", Some("90"));
        exit.ts = 2;
        stored(&mut p, &mut ledger, exit.clone());
        let tagged = |p: &Protections| {
            let mut again = exit.clone();
            again.parent_order_id = None;
            p.tag(std::slice::from_mut(&mut again));
            again.parent_order_id.is_some()
        };
        assert!(tagged(&p), "known as the exit of e-1");
        // Past the horizon, as the engine does: what the ledger forgot, the book forgets.
        let mut later = report("other", "FILLED", "1", Some("90"));
        later.ts = 13;
        ledger.record(&later);
        let forgotten = ledger.take_forgotten();
        assert!(
            forgotten.iter().any(|id| id.as_str() == "e-1-x1"),
            "{forgotten:?}"
        );
        for id in &forgotten {
            p.forget(id);
        }
        assert!(!tagged(&p), "no longer an exit of anything");
    }

    #[test]
    fn arms_with_each_fill_and_sends_one_exit_for_the_open_quantity() {
        let (mut p, mut ledger) = book();
        let order = entry(
            "e-1",
            "BUY",
            "1",
            r#"{"stop_loss":"95","take_profit":"110"}"#,
        );
        let record = p.new_record(&order).unwrap();
        assert_eq!(record.state.quantity.to_string(), "0");
        p.insert(record);
        assert!(
            p.new_record(&order).is_none(),
            "a re-delivered entry keeps its record"
        );
        p.on_tick(&tick(1, "90"), &ledger);
        assert!(
            p.take_sends().is_empty(),
            "nothing filled: nothing to protect"
        );
        stored(
            &mut p,
            &mut ledger,
            report("e-1", "PARTIALLY_FILLED", "0.4", Some("100")),
        );
        assert_eq!(state(&p, "e-1").quantity.to_string(), "0.4");
        stored(
            &mut p,
            &mut ledger,
            report("e-1", "FILLED", "1", Some("100")),
        );
        let armed = state(&p, "e-1");
        assert_eq!(
            (armed.state, armed.side),
            (ProtectionStatus::Armed, Side::Sell)
        );
        assert_eq!(armed.quantity.to_string(), "1");
        p.on_tick(&tick(2, "96"), &ledger);
        assert!(p.take_sends().is_empty());
        p.on_tick(&tick(3, "94.99"), &ledger);
        p.on_tick(&tick(4, "80"), &ledger);
        p.on_tick(&tick(5, "120"), &ledger);
        let sends = p.take_sends();
        assert_eq!(sends.len(), 1, "one exit, whatever comes after (OCO)");
        assert_eq!(sends[0].client_order_id.as_str(), "e-1-x1");
        assert_eq!(sends[0].quantity.to_string(), "1");
        assert!(sends[0].reduce_only);
        let mut exit = report("e-1-x1", "FILLED", "1", Some("94.9"));
        p.tag(std::slice::from_mut(&mut exit));
        assert_eq!(exit.parent_order_id.as_ref().unwrap().as_str(), "e-1");
        assert_eq!(exit.child_kind, Some(ChildKind::StopLoss));
        stored(&mut p, &mut ledger, exit);
        assert!(p.records.is_empty() || state(&p, "e-1").state == ProtectionStatus::Closed);
    }

    #[test]
    fn a_refused_exit_stays_triggered_and_the_next_attempt_waits_for_the_backoff() {
        let (mut p, mut ledger) = book();
        let order = entry("e-2", "SELL", "2", r#"{"stop_loss":"105"}"#);
        let record = p.new_record(&order).unwrap();
        p.insert(record);
        stored(
            &mut p,
            &mut ledger,
            report("e-2", "FILLED", "2", Some("100")),
        );
        p.on_tick(&tick(1, "105"), &ledger);
        let first = p.records[&ClientOrderId::try_from("e-2").unwrap()].clone();
        assert!(first.send && first.persist);
        assert_eq!(exit_order(&first.stored, None).unwrap().side, Side::Buy);
        stored(&mut p, &mut ledger, report("e-2-x1", "REJECTED", "0", None));
        let refused = state(&p, "e-2");
        assert_eq!(refused.state, ProtectionStatus::Triggered);
        assert!(refused.reason.unwrap().contains("reduce_only_increases"));
        assert_eq!(p.events.len(), 1, "said on errors.execution");
        p.on_timer(&ledger);
        assert_eq!(
            state(&p, "e-2").exit_order_id.unwrap().as_str(),
            "e-2-x1",
            "not before the backoff"
        );
        p.set_now(1_000 + 100_000_000);
        p.on_timer(&ledger);
        assert_eq!(state(&p, "e-2").exit_order_id.unwrap().as_str(), "e-2-x2");
        stored(
            &mut p,
            &mut ledger,
            report("e-2-x2", "FILLED", "2", Some("105.1")),
        );
        assert_eq!(state(&p, "e-2").state, ProtectionStatus::Closed);
    }

    #[test]
    fn the_entrys_cancel_and_the_kill_switch_cancel_it() {
        let (mut p, mut ledger) = book();
        for id in ["c-1", "c-2"] {
            let record = p
                .new_record(&entry(id, "BUY", "1", r#"{"trailing_stop_bps":100}"#))
                .unwrap();
            p.insert(record);
            stored(&mut p, &mut ledger, report(id, "FILLED", "1", Some("100")));
        }
        assert_eq!(state(&p, "c-1").trailing_trigger.unwrap().to_string(), "99");
        let id = ClientOrderId::try_from("c-1").unwrap();
        let symbol = Symbol::try_from("BTC-USD").unwrap();
        let stranger = AgentName::try_from("gateway").unwrap();
        assert!(p.cancel(&id, &stranger, &symbol, false).unwrap().is_err());
        let owner = AgentName::try_from("trading").unwrap();
        assert_eq!(p.cancel(&id, &owner, &symbol, false), Some(Ok(())));
        assert_eq!(state(&p, "c-1").state, ProtectionStatus::Cancelled);
        assert_eq!(p.cancel(&id, &owner, &symbol, false), None, "over already");
        p.kill_switch("operator: test");
        let killed = state(&p, "c-2");
        assert_eq!(killed.state, ProtectionStatus::Cancelled);
        assert_eq!(
            killed.reason.as_deref(),
            Some("kill_switch: operator: test")
        );
        p.on_tick(&tick(1, "1"), &ledger);
        assert!(p.take_sends().is_empty());
    }

    #[test]
    fn an_entry_that_never_fills_cancels_its_protection() {
        let (mut p, mut ledger) = book();
        let record = p
            .new_record(&entry("n-1", "BUY", "1", r#"{"stop_loss":"1"}"#))
            .unwrap();
        p.insert(record);
        stored(&mut p, &mut ledger, report("n-1", "REJECTED", "0", None));
        assert_eq!(state(&p, "n-1").state, ProtectionStatus::Cancelled);
    }

    #[test]
    fn a_restart_guards_an_entry_that_ended_part_filled() {
        // The entry filled 0.3 of 1 and then expired; the protection's writes after its
        // ARMED-with-nothing record never came. Restored: armed for the 0.3, not cancelled
        // as an entry that ended without a fill (the 0.3 would be left without its stop).
        let (mut p, mut ledger) = book();
        let armed = p
            .new_record(&entry("pf-1", "BUY", "1", r#"{"stop_loss":"95"}"#))
            .unwrap();
        ledger.record(&report("pf-1", "PARTIALLY_FILLED", "0.3", Some("100")));
        ledger.record(&report("pf-1", "EXPIRED", "0.3", Some("100")));
        // As a snapshot keeps the ledger, too.
        let ledger = crate::snapshot::State::of(&ledger, |_| None).into_ledger();
        p.restore_record(armed, &ledger);
        let restored = state(&p, "pf-1");
        assert_eq!(restored.state, ProtectionStatus::Armed);
        assert_eq!(restored.quantity.to_string(), "0.3");
        // Ended without a fill: cancelled, as before.
        let (mut q, mut ledger) = book();
        let armed = q
            .new_record(&entry("pf-2", "BUY", "1", r#"{"stop_loss":"95"}"#))
            .unwrap();
        ledger.record(&report("pf-2", "EXPIRED", "0", None));
        q.restore_record(armed, &ledger);
        assert_eq!(state(&q, "pf-2").state, ProtectionStatus::Cancelled);
    }

    #[test]
    fn a_restart_squares_the_record_with_the_ledger() {
        let (mut p, mut ledger) = book();
        let armed = p
            .new_record(&entry("r-1", "BUY", "0.5", r#"{"stop_loss":"95"}"#))
            .unwrap();
        // Stored with quantity 0; the entry's FILLED report made it to EXEC, not the state.
        ledger.record(&report("r-1", "FILLED", "0.5", Some("100")));
        p.restore_record(armed, &ledger);
        assert_eq!(state(&p, "r-1").quantity.to_string(), "0.5");
        // Triggered, exit never stored: sent again under the same id.
        let (mut q, mut ledger) = book();
        let mut record = q
            .new_record(&entry("r-2", "BUY", "0.5", r#"{"stop_loss":"95"}"#))
            .unwrap();
        ledger.record(&report("r-2", "FILLED", "0.5", Some("100")));
        record.entry_filled = NonNegativeMoney::new(d("0.5")).unwrap();
        record.state.state = ProtectionStatus::Triggered;
        record.state.exit_order_id = Some(exit_id(&record.state.parent_order_id, 1));
        record.attempt = 1;
        record.exit_kind = Some(ChildKind::StopLoss);
        record.exit_quantity = Some(PositiveMoney::new(d("0.5")).unwrap());
        q.restore_record(record.clone(), &ledger);
        let sends = q.take_sends();
        assert_eq!(sends.len(), 1);
        assert_eq!(
            sends[0].client_order_id.as_str(),
            "r-2-x1",
            "the same exit, never a second"
        );
        // Triggered, exit filled before the crash: closed, nothing sent.
        let (mut q, _) = book();
        ledger.record(&report("r-2-x1", "FILLED", "0.5", Some("94")));
        q.restore_record(record, &ledger);
        assert_eq!(state(&q, "r-2").state, ProtectionStatus::Closed);
        assert!(q.take_sends().is_empty());
    }

    /// A TRIGGERED record naming exit `<parent>-x1`, the entry filled.
    fn triggered(p: &Protections, ledger: &mut Ledger, parent: &str) -> Stored {
        let mut record = p
            .new_record(&entry(parent, "BUY", "0.5", r#"{"stop_loss":"95"}"#))
            .unwrap();
        ledger.record(&report(parent, "FILLED", "0.5", Some("100")));
        record.entry_filled = NonNegativeMoney::new(d("0.5")).unwrap();
        record.set_quantity();
        record.state.state = ProtectionStatus::Triggered;
        record.state.exit_order_id = Some(exit_id(&record.state.parent_order_id, 1));
        record.attempt = 1;
        record.exit_kind = Some(ChildKind::StopLoss);
        record.exit_quantity = Some(PositiveMoney::new(d("0.5")).unwrap());
        record
    }

    #[test]
    fn a_restart_does_not_take_another_agents_order_under_the_exit_id_for_the_exit() {
        // The trading agent's order named `f-1-x1` (stored as the stop triggered) filled;
        // execution died before the exit went again under the next id.
        let (mut p, mut ledger) = book();
        let record = triggered(&p, &mut ledger, "f-1");
        let mut forged = report("f-1-x1", "FILLED", "0.5", Some("94"));
        forged.agent = Some(AgentName::try_from("trading").unwrap());
        ledger.record(&forged);
        p.restore_record(record, &ledger);
        let restored = state(&p, "f-1");
        assert_eq!(
            restored.state,
            ProtectionStatus::Triggered,
            "the forged fill is not the exit's: {restored:?}"
        );
        assert_eq!(restored.quantity.to_string(), "0.5", "still open");
        assert_eq!(p.events.len(), 1, "said on errors.execution");
        assert!(
            p.events[0].1.contains("taken by another agent's order"),
            "{:?}",
            p.events
        );
        p.on_timer(&ledger);
        let sends = p.take_sends();
        assert_eq!(sends.len(), 1);
        assert_eq!(
            sends[0].client_order_id.as_str(),
            "f-1-x2",
            "the exit goes again under the next free id"
        );
        assert_eq!(sends[0].quantity.to_string(), "0.5");
        stored(
            &mut p,
            &mut ledger,
            report("f-1-x2", "FILLED", "0.5", Some("94.9")),
        );
        let closed = state(&p, "f-1");
        assert_eq!(closed.state, ProtectionStatus::Closed);
        assert_eq!(closed.exit_order_id.unwrap().as_str(), "f-1-x2");

        // The same for another agent's order still resting under the exit's id (its
        // reports may never come).
        let (mut q, mut ledger) = book();
        let record = triggered(&q, &mut ledger, "f-2");
        let mut resting = report("f-2-x1", "ACCEPTED", "0", None);
        resting.agent = Some(AgentName::try_from("trading").unwrap());
        ledger.record(&resting);
        q.restore_record(record, &ledger);
        q.on_timer(&ledger);
        let sends = q.take_sends();
        assert_eq!(sends.len(), 1);
        assert_eq!(sends[0].client_order_id.as_str(), "f-2-x2");

        // Its own exit, filled before the crash, still closes it (nothing sent).
        let (mut q, mut ledger) = book();
        let record = triggered(&q, &mut ledger, "f-3");
        ledger.record(&report("f-3-x1", "FILLED", "0.5", Some("94")));
        q.restore_record(record, &ledger);
        assert_eq!(state(&q, "f-3").state, ProtectionStatus::Closed);
        q.on_timer(&ledger);
        assert!(q.take_sends().is_empty());
    }
}
