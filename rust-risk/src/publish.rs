//! Publishes `risk.account` and `risk.verdict.<symbol>` when they change (timestamps
//! aside; an account that only marks moved at most every `MARKS_EVERY`), and on every
//! heartbeat the account and each verdict not sent since the last heartbeat (so every
//! verdict goes out at least once a heartbeat); what changed is also stored in the KV
//! bucket (`risk.account`, `risk.verdict.<symbol>`), as is the loss latch. Nothing on
//! change before the rebuild is done: half-rebuilt numbers would flap; the heartbeat
//! says "not_ready".

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use moonbus_common::{
    bus, steady_ns, subjects, AccountState, Reconciliation, Symbol, Venue, Verdict,
};

use crate::engine::Engine;
use crate::limits::LossLatch;
use crate::metrics;
use crate::store::{self, Store};

/// An account that only ticks moved (its state, reasons and loss latch as they were) goes
/// out at most this often; the latest one held back goes out at the next `release_marks`,
/// which the service calls as often. Fills, limits and the kill switch go out at once. At
/// 1,000 held symbols nearly every batch of ticks moved the account: ~1,600 a second to
/// every agent, the gateway and the notifier, each decoding it.
pub const MARKS_EVERY: Duration = Duration::from_millis(100);

pub struct Publisher {
    client: Client,
    store: Store,
    account: Option<AccountState>,
    verdicts: HashMap<Symbol, Verdict>,
    /// Verdicts sent since the last heartbeat, which leaves them out: at 1,000 symbols
    /// with fills, most verdicts had gone out on change within the second, and the
    /// heartbeat sent all 1,000 again at once to every agent, the gateway and the notifier.
    sent_since_heartbeat: HashSet<Symbol>,
    /// The loss latch as last stored.
    loss_latch: Option<LossLatch>,
    /// The reconciliation of each live venue as last stored.
    reconciliations: HashMap<Venue, Reconciliation>,
    /// When the account was last published.
    account_sent: Option<tokio::time::Instant>,
    /// An account that only ticks moved is held back (`MARKS_EVERY`).
    marks_held: bool,
}

impl Publisher {
    pub fn new(client: Client, store: Store, loss_latch: Option<LossLatch>) -> Self {
        Self {
            client,
            store,
            account: None,
            verdicts: HashMap::new(),
            sent_since_heartbeat: HashSet::new(),
            loss_latch,
            reconciliations: HashMap::new(),
            account_sent: None,
            marks_held: false,
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
            self.send(engine, false, None, false).await;
        }
    }

    /// After an event of `symbol` alone (its report): the account, and the
    /// verdict of `symbol` only, unless the account's state, reasons or loss latch moved
    /// (which every verdict carries): then every verdict, as `changes`. A verdict that only
    /// time changes (stale market data, a halt ending) shows at the heartbeat's
    /// `everything` (it used to show at any symbol's next event). Publishing every verdict
    /// on every tick was O(symbols) a tick: at 1,000 symbols, more than risk could do.
    pub async fn changes_of(&mut self, engine: &Engine, symbol: &Symbol) {
        if engine.is_ready() {
            self.send(engine, false, Some(std::slice::from_ref(symbol)), false)
                .await;
        }
    }

    /// `changes_of` for the symbols of a batch of ticks (ticks.rs): the account once, and
    /// held back if only the marks moved it since it was last sent `MARKS_EVERY` ago.
    pub async fn marks_of_symbols(&mut self, engine: &Engine, symbols: &[Symbol]) {
        if engine.is_ready() {
            self.send(engine, false, Some(symbols), true).await;
        }
    }

    /// The account held back by `marks_of_symbols`, if any.
    pub async fn release_marks(&mut self, engine: &Engine) {
        if self.marks_held && engine.is_ready() {
            self.send(engine, false, Some(&[]), false).await;
        }
    }

    pub async fn everything(&mut self, engine: &Engine) {
        self.send(engine, true, None, false).await;
    }

    async fn send(&mut self, engine: &Engine, all: bool, only: Option<&[Symbol]>, marks: bool) {
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
        let hold = marks
            && !verdicts_move
            && self
                .account_sent
                .is_some_and(|sent| sent.elapsed() < MARKS_EVERY);
        // Held back, or nothing left to send: what was sent is the account.
        self.marks_held = changed && hold;
        if !self.marks_held && (all || changed) {
            let body = bus::encode(&account);
            if changed {
                self.store
                    .put_latest(store::ACCOUNT_KEY.to_string(), body.clone());
            }
            self.publish(subjects::ACCOUNT.to_string(), body).await;
            self.account = Some(account.clone());
            self.account_sent = Some(tokio::time::Instant::now());
        }
        let verdicts = match only {
            Some(symbols) => symbols
                .iter()
                .filter_map(|symbol| engine.verdict(symbol, &account, now))
                .collect(),
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
            if changed || (all && !self.sent_since_heartbeat.contains(&verdict.symbol)) {
                let body = bus::encode(&verdict);
                if changed {
                    self.store
                        .put_latest(store::verdict_key(&verdict.symbol), body.clone());
                }
                self.publish(subjects::verdict(&verdict.symbol), body).await;
                if !all {
                    self.sent_since_heartbeat.insert(verdict.symbol.clone());
                }
                self.verdicts.insert(verdict.symbol.clone(), verdict);
            }
        }
        if all {
            self.sent_since_heartbeat.clear();
        }
        let latch = engine.loss_latch();
        if self.loss_latch.as_ref() != latch {
            self.store
                .put_latest(store::LOSS_LATCH_KEY.to_string(), bus::encode(&latch));
            self.loss_latch = latch.cloned();
        }
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

fn same_reconciliation(a: &Reconciliation, b: &Reconciliation) -> bool {
    Reconciliation { ts: 0, ..a.clone() } == Reconciliation { ts: 0, ..b.clone() }
}

fn same_verdict(a: &Verdict, b: &Verdict) -> bool {
    Verdict { ts: 0, ..a.clone() } == Verdict { ts: 0, ..b.clone() }
}
