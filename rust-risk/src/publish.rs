//! Publishes `risk.account` and `risk.verdict.<symbol>` when they change (timestamps
//! aside) and all of them on every heartbeat; what changed is also stored in the KV
//! bucket (`risk.account`, `risk.verdict.<symbol>`), as is the loss latch. Nothing on
//! change before the rebuild is done: half-rebuilt numbers would flap; the heartbeat
//! says "not_ready".
//!
//! An account change of its marked figures alone (equity, PnL, drawdown, exposure: a
//! tick revaluing a position) waits until `account_marks_ms` after the last account sent:
//! every tick of every held symbol moves them, which made one `risk.account` per tick
//! (468/s at 100 symbols) for every agent to read. Its state, reasons, kill switch,
//! cash, realized PnL, fees and open positions go out at once, with the latest marks.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use moonbus_common::{
    bus, steady_ns, subjects, AccountState, Reconciliation, Symbol, Venue, Verdict,
};
use tokio::time::{Instant, Sleep};

use crate::engine::Engine;
use crate::limits::LossLatch;
use crate::metrics;
use crate::store::{self, Store};

pub struct Publisher {
    client: Client,
    store: Store,
    account: Option<AccountState>,
    verdicts: HashMap<Symbol, Verdict>,
    /// The loss latch as last stored.
    loss_latch: Option<LossLatch>,
    /// The reconciliation of each live venue as last stored.
    reconciliations: HashMap<Venue, Reconciliation>,
    /// How long a change of the account's marks alone may wait (zero: none waits).
    marks_every: Duration,
    /// When the account was last sent.
    account_sent: Instant,
    /// Armed while a marks-only change waits (`marks_owed`): its send (`send_owed`).
    pub marks_timer: Pin<Box<Sleep>>,
    pub marks_owed: bool,
}

impl Publisher {
    pub fn new(
        client: Client,
        store: Store,
        loss_latch: Option<LossLatch>,
        marks_every: Duration,
    ) -> Self {
        Self {
            client,
            store,
            account: None,
            verdicts: HashMap::new(),
            loss_latch,
            reconciliations: HashMap::new(),
            marks_every,
            account_sent: Instant::now(),
            marks_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            marks_owed: false,
        }
    }

    /// The marks-only account change that waited (`marks_timer` fired).
    pub async fn send_owed(&mut self, engine: &Engine) {
        self.marks_owed = false;
        if engine.is_ready() {
            let account = engine.account(steady_ns());
            if self
                .account
                .as_ref()
                .is_none_or(|last| !same_account(last, &account))
            {
                self.send_account(account, true).await;
            }
        }
    }

    /// A tick for a symbol whose last verdict said there was no market data.
    pub fn lacks_mark(&self, symbol: &Symbol) -> bool {
        self.verdicts.get(symbol).is_some_and(|v| {
            v.reasons
                .iter()
                .any(|r| r == "no_market_data" || r == "stale_market_data")
        })
    }

    pub async fn changes(&mut self, engine: &Engine) {
        if engine.is_ready() {
            self.send(engine, false, None).await;
        }
    }

    /// After an event of `symbol` alone (its tick, its report): the account, and the
    /// verdict of `symbol` only, unless the account's state, reasons or loss latch moved
    /// (which every verdict carries): then every verdict, as `changes`. A verdict that only
    /// time changes (stale market data, a halt ending) shows at the heartbeat's
    /// `everything` (it used to show at any symbol's next event). Publishing every verdict
    /// on every tick was O(symbols) a tick: at 1,000 symbols, more than risk could do.
    pub async fn changes_of(&mut self, engine: &Engine, symbol: &Symbol) {
        if engine.is_ready() {
            self.send(engine, false, Some(symbol)).await;
        }
    }

    pub async fn everything(&mut self, engine: &Engine) {
        self.send(engine, true, None).await;
    }

    async fn send(&mut self, engine: &Engine, all: bool, only: Option<&Symbol>) {
        let now = steady_ns();
        let account = engine.account(now);
        metrics::global().set_account(&account);
        let changed = self
            .account
            .as_ref()
            .is_none_or(|last| !same_account(last, &account));
        // What every verdict carries of the account: its state, reasons and loss latch.
        let verdicts_move = self
            .account
            .as_ref()
            .is_none_or(|last| last.state != account.state || last.reasons != account.reasons)
            || self.loss_latch.as_ref() != engine.loss_latch();
        let only = only.filter(|_| !verdicts_move);
        let marks_only = changed
            && self
                .account
                .as_ref()
                .is_some_and(|last| same_but_marks(last, &account));
        let wait = self.marks_every.saturating_sub(self.account_sent.elapsed());
        if !all && marks_only && !wait.is_zero() {
            if !self.marks_owed {
                self.marks_owed = true;
                self.marks_timer.as_mut().reset(Instant::now() + wait);
            }
        } else if all || changed {
            self.send_account(account.clone(), changed).await;
        }
        let verdicts = match only {
            Some(symbol) => engine.verdict(symbol, &account, now).into_iter().collect(),
            None => engine.verdicts(now),
        };
        for verdict in verdicts {
            let last = self.verdicts.get(&verdict.symbol);
            let changed = last.is_none_or(|last| !same_verdict(last, &verdict));
            if last
                .is_none_or(|last| last.state != verdict.state || last.reasons != verdict.reasons)
            {
                tracing::info!(symbol = %verdict.symbol, state = %verdict.state, reasons = ?verdict.reasons, "verdict");
            }
            if all || changed {
                let body = bus::encode(&verdict);
                if changed {
                    self.store
                        .put_latest(store::verdict_key(&verdict.symbol), body.clone());
                }
                self.publish(subjects::verdict(&verdict.symbol), body).await;
                self.verdicts.insert(verdict.symbol.clone(), verdict);
            }
        }
        let latch = engine.loss_latch();
        if self.loss_latch.as_ref() != latch {
            self.store
                .put_latest(store::LOSS_LATCH_KEY.to_string(), bus::encode(&latch));
            self.loss_latch = latch.cloned();
        }
    }

    async fn send_account(&mut self, account: AccountState, changed: bool) {
        let body = bus::encode(&account);
        if changed {
            self.store
                .put_latest(store::ACCOUNT_KEY.to_string(), body.clone());
        }
        self.publish(subjects::ACCOUNT.to_string(), body).await;
        self.account = Some(account);
        self.account_sent = Instant::now();
        self.marks_owed = false;
    }

    /// A live venue's reconciliation: always published (`risk.recon.<venue>`), stored in
    /// KV (`risk.recon.<venue>`) when it changed (timestamps aside).
    pub async fn reconciliation(&mut self, reconciliation: Reconciliation) {
        let body = bus::encode(&reconciliation);
        let last = self.reconciliations.get(&reconciliation.venue);
        if last.is_none_or(|last| !same_reconciliation(last, &reconciliation)) {
            let key = subjects::risk_recon(&reconciliation.venue);
            self.store.put_latest(key, body.clone());
        }
        self.publish(subjects::risk_recon(&reconciliation.venue), body)
            .await;
        self.reconciliations
            .insert(reconciliation.venue.clone(), reconciliation);
    }

    pub async fn publish(&self, subject: String, body: Bytes) {
        if let Err(e) = self.client.publish(subject.clone(), body).await {
            tracing::warn!(subject, error = %e, "could not publish");
        }
    }
}

fn same_account(a: &AccountState, b: &AccountState) -> bool {
    AccountState { ts: 0, ..a.clone() } == AccountState { ts: 0, ..b.clone() }
}

/// The same but for the figures a new mark moves (and the timestamp); any other field,
/// one added later included, counts.
fn same_but_marks(a: &AccountState, b: &AccountState) -> bool {
    *a == AccountState {
        equity: a.equity,
        peak_equity: a.peak_equity,
        drawdown_pct: a.drawdown_pct,
        unrealized_pnl: a.unrealized_pnl,
        day_pnl: a.day_pnl,
        gross_exposure: a.gross_exposure,
        ts: a.ts,
        ..b.clone()
    }
}

fn same_reconciliation(a: &Reconciliation, b: &Reconciliation) -> bool {
    Reconciliation { ts: 0, ..a.clone() } == Reconciliation { ts: 0, ..b.clone() }
}

fn same_verdict(a: &Verdict, b: &Verdict) -> bool {
    Verdict { ts: 0, ..a.clone() } == Verdict { ts: 0, ..b.clone() }
}
