//! Reconciliation of the live venues: execution's `exec.venue.<venue>`
//! ([`LiveVenueStatus`], with the account read from the venue) against risk's own books,
//! published as `risk.recon.<venue>` ([`Reconciliation`]).
//!
//! - Risk books every fill per (venue, symbol) as well as per symbol: the quantity it
//!   compares with a venue is the one its fills on *that* venue built ([`VenueBooks`]).
//! - Compared: every symbol in the venue's report and every symbol risk holds (non-zero)
//!   on that venue; a difference beyond `max(recon_tolerance, recon_tolerance_rel x
//!   max(|venue|, |risk|))` is a difference, and so is an order open at the venue that
//!   execution does not know (`unknown_orders`).
//! - A difference (or unknown order) that persists for `recon_grace_ms` (fills race the
//!   account reads) gates the whole account: `on_recon_mismatch` (REDUCE_ONLY or HALTED),
//!   reason `recon_mismatch:<venue>`, until a later report of that venue matches.
//! - A venue with no account read for longer than `recon_stale_ms` (the reports say
//!   `account_error`, or no report comes at all) is UNAVAILABLE: the same gate, reason
//!   `recon_unavailable:<venue>` (fail closed), until an account is read again.
//!
//! Nothing here panics on a number: a sum that overflows a decimal is a difference.

use std::collections::BTreeMap;

use moonbus_common::{
    LiveVenueStatus, Money, ReconAction, ReconDifference, ReconState, Reconciliation, Symbol,
    Venue, VenueAccount,
};
use rust_decimal::Decimal;

use crate::limits::BreachAction;

const NS_PER_MS: u64 = 1_000_000;

/// The state of a venue that matches.
pub const MATCHED: ReconState = ReconState::Matched;

/// The `[risk] recon_*` settings, checked.
#[derive(Debug, Clone)]
pub struct ReconSettings {
    /// Absolute quantity tolerance (>= 0).
    pub tolerance: Decimal,
    /// Relative tolerance, a fraction of the larger quantity (>= 0).
    pub tolerance_rel: Decimal,
    /// No account read for this long: UNAVAILABLE.
    pub stale_ms: u64,
    /// A difference must persist this long before the gate closes.
    pub grace_ms: u64,
    /// The gate of a mismatched or unavailable venue.
    pub action: BreachAction,
    /// Venues risk does not reconcile (retired ones): their statuses and stored
    /// reconciliations are ignored.
    pub ignore: Vec<Venue>,
}

impl Default for ReconSettings {
    fn default() -> Self {
        Self {
            tolerance: Decimal::new(1, 8),
            tolerance_rel: Decimal::new(1, 8),
            stale_ms: 30_000,
            grace_ms: 4_000,
            action: BreachAction::ReduceOnly,
            ignore: Vec::new(),
        }
    }
}

/// Risk's books per venue: the signed quantity its fills on each venue built per symbol,
/// and the cash those fills moved (-quantity x price - fee). Nested maps: booking a fill
/// of a known venue and symbol allocates nothing (the backtester books millions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VenueBooks {
    pub positions: BTreeMap<Venue, BTreeMap<Symbol, Decimal>>,
    pub cash_flow: BTreeMap<Venue, Decimal>,
}

impl VenueBooks {
    /// Book a fill of `quantity` (signed) at `price` with `fee` on `venue`. The ledger has
    /// booked it already, so its figures fit; a sum that still does not saturates.
    pub fn book(
        &mut self,
        venue: &Venue,
        symbol: &Symbol,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
    ) {
        if !self.positions.contains_key(venue) {
            self.positions.insert(venue.clone(), BTreeMap::new());
        }
        if !self.cash_flow.contains_key(venue) {
            self.cash_flow.insert(venue.clone(), Decimal::ZERO);
        }
        if let Some(symbols) = self.positions.get_mut(venue) {
            match symbols.get_mut(symbol) {
                Some(position) => *position = position.saturating_add(quantity),
                None => {
                    symbols.insert(symbol.clone(), quantity);
                }
            }
        }
        let flow = quantity
            .checked_mul(price)
            .and_then(|v| v.checked_add(fee))
            .map_or(Decimal::MIN, |v| -v);
        if let Some(cash) = self.cash_flow.get_mut(venue) {
            *cash = cash.saturating_add(flow);
        }
    }

    pub fn quantity(&self, venue: &Venue, symbol: &Symbol) -> Decimal {
        self.positions
            .get(venue)
            .and_then(|symbols| symbols.get(symbol))
            .copied()
            .unwrap_or_default()
    }

    /// The symbols risk holds (non-zero) on `venue`, with their quantities.
    pub fn held_on<'a>(
        &'a self,
        venue: &Venue,
    ) -> impl Iterator<Item = (&'a Symbol, Decimal)> + 'a {
        self.positions
            .get(venue)
            .into_iter()
            .flat_map(|symbols| symbols.iter())
            .filter(|(_, q)| !q.is_zero())
            .map(|(s, q)| (s, *q))
    }
}

/// What risk knows of one live venue.
#[derive(Debug, Clone)]
struct VenueRecon {
    /// When the last status arrived (risk's steady clock).
    last_status_ns: u64,
    /// When the last account was read (a status with `account`), or the first status.
    last_account_ns: u64,
    /// The latest account read, while it is not stale.
    account: Option<VenueAccount>,
    /// Since when the venue differs (reset by a match).
    mismatch_since: Option<u64>,
    latest: Reconciliation,
}

/// One live venue's figures for the account view: what it reports of cash and equity.
#[derive(Debug, Clone)]
pub struct LiveFigures<'a> {
    pub venue: &'a Venue,
    pub cash: Option<Decimal>,
    pub equity: Option<Decimal>,
}

#[derive(Debug, Clone, Default)]
pub struct Recon {
    pub settings: ReconSettings,
    pub books: VenueBooks,
    venues: BTreeMap<Venue, VenueRecon>,
}

impl Recon {
    pub fn new(settings: ReconSettings) -> Self {
        Self {
            settings,
            books: VenueBooks::default(),
            venues: BTreeMap::new(),
        }
    }

    /// The reconciliations stored before a restart (KV `risk.recon.<venue>`): every venue
    /// risk reconciled is known again, so one that does not report within `stale_ms` is
    /// UNAVAILABLE, and a venue that was gated stays gated until a report matches (fail
    /// closed across restarts). Ignored venues are left out.
    pub fn restore(&mut self, stored: Vec<Reconciliation>, now_ns: u64) {
        for latest in stored {
            if self.settings.ignore.contains(&latest.venue) {
                continue;
            }
            let gated_mismatch =
                latest.state == ReconState::Mismatch && latest.action != ReconAction::None;
            self.venues.insert(
                latest.venue.clone(),
                VenueRecon {
                    last_status_ns: now_ns,
                    last_account_ns: now_ns,
                    account: None,
                    // A gated mismatch has outlasted its grace already.
                    mismatch_since: gated_mismatch.then_some(0),
                    latest,
                },
            );
        }
    }

    /// A status that arrived while risk's books were being rebuilt: not reconciled (the
    /// books are partial), but a known venue that reports is not silent.
    pub fn heard(&mut self, status: &LiveVenueStatus, now_ns: u64) {
        if let Some(entry) = self.venues.get_mut(&status.venue) {
            entry.last_status_ns = now_ns;
            if status.account.is_some() {
                entry.last_account_ns = now_ns;
            }
        }
    }

    /// A status from execution, received at `now_ns`: the reconciliation it makes. Only
    /// call it once risk's books are whole (after the EXEC rebuild).
    pub fn apply_status(&mut self, status: &LiveVenueStatus, now_ns: u64) -> Reconciliation {
        let entry = self
            .venues
            .entry(status.venue.clone())
            .or_insert_with(|| VenueRecon {
                last_status_ns: now_ns,
                last_account_ns: now_ns,
                account: None,
                mismatch_since: None,
                latest: blank(&status.venue, now_ns),
            });
        entry.last_status_ns = now_ns;
        let reconciliation = match &status.account {
            Some(account) => {
                entry.last_account_ns = now_ns;
                entry.account = Some(account.clone());
                let (differences, overflow) =
                    compare(&self.settings, &self.books, &status.venue, account);
                let unknown = status.unknown_orders.len() as u64;
                if differences.is_empty() && unknown == 0 && overflow.is_none() {
                    entry.mismatch_since = None;
                    Reconciliation {
                        venue: status.venue.clone(),
                        state: ReconState::Matched,
                        action: ReconAction::None,
                        differences,
                        unknown_orders: 0,
                        cash: account.cash,
                        equity: account.equity,
                        detail: format!(
                            "{} position(s) match risk's books",
                            account.positions.len()
                        ),
                        ts: now_ns,
                    }
                } else {
                    let since = *entry.mismatch_since.get_or_insert(now_ns);
                    let lasted_ms = now_ns.saturating_sub(since) / NS_PER_MS;
                    let acting = lasted_ms >= self.settings.grace_ms;
                    let mut parts: Vec<String> = differences
                        .iter()
                        .map(|d| format!("{}: venue {}, risk {}", d.symbol, d.venue, d.ledger))
                        .collect();
                    parts.extend(overflow);
                    if unknown > 0 {
                        let orders: Vec<String> = status
                            .unknown_orders
                            .iter()
                            .take(5)
                            .map(|o| {
                                format!(
                                    "{} {} {}",
                                    o.venue_symbol,
                                    o.venue_order_id.as_deref().unwrap_or("?"),
                                    o.status
                                )
                            })
                            .collect();
                        parts.push(format!(
                            "{unknown} order(s) open at the venue that execution does not know ({})",
                            orders.join(", ")
                        ));
                    }
                    if !acting {
                        parts.push(format!(
                            "for {lasted_ms} ms; acted on after {} ms (recon_grace_ms)",
                            self.settings.grace_ms
                        ));
                    }
                    Reconciliation {
                        venue: status.venue.clone(),
                        state: ReconState::Mismatch,
                        action: if acting {
                            action_of(self.settings.action)
                        } else {
                            ReconAction::None
                        },
                        differences,
                        unknown_orders: unknown,
                        cash: account.cash,
                        equity: account.equity,
                        detail: parts.join("; "),
                        ts: now_ns,
                    }
                }
            }
            None => {
                let why = status
                    .account_error
                    .as_deref()
                    .unwrap_or("no account in the venue's status");
                let age_ms = now_ns.saturating_sub(entry.last_account_ns) / NS_PER_MS;
                if age_ms > self.settings.stale_ms {
                    entry.account = None;
                    unavailable(&status.venue, age_ms, why, self.settings.action, now_ns)
                } else {
                    // Not stale yet: the last verdict stands, with why no new one came.
                    let mut kept = entry.latest.clone();
                    let first = entry.account.is_none() && kept.detail.is_empty();
                    kept.detail = format!(
                        "account not read for {age_ms} ms ({why}); {}",
                        if first {
                            "none read yet".to_string()
                        } else {
                            format!("last: {}", entry.latest.state)
                        }
                    );
                    kept.ts = now_ns;
                    if first {
                        kept.state = ReconState::Unavailable;
                    }
                    kept
                }
            }
        };
        entry.latest = reconciliation.clone();
        reconciliation
    }

    /// Time passes: the venues whose account went stale become UNAVAILABLE (returned,
    /// once each, to be published).
    pub fn heartbeat(&mut self, now_ns: u64) -> Vec<Reconciliation> {
        let mut changed = Vec::new();
        for (venue, entry) in &mut self.venues {
            let age_ms = now_ns.saturating_sub(entry.last_account_ns) / NS_PER_MS;
            if age_ms <= self.settings.stale_ms
                || (entry.latest.state == ReconState::Unavailable
                    && entry.latest.action != ReconAction::None)
            {
                continue;
            }
            let silent_ms = now_ns.saturating_sub(entry.last_status_ns) / NS_PER_MS;
            let why = if silent_ms > self.settings.stale_ms {
                format!("no status from execution for {silent_ms} ms")
            } else {
                "the venue's account cannot be read".to_string()
            };
            entry.account = None;
            entry.latest = unavailable(venue, age_ms, &why, self.settings.action, now_ns);
            changed.push(entry.latest.clone());
        }
        changed
    }

    /// The account's gate from the live venues and the reasons for it.
    pub fn gate(&self) -> (Option<BreachAction>, Vec<String>) {
        let mut reasons = Vec::new();
        let mut gate = None;
        for (venue, entry) in &self.venues {
            let reason = match (entry.latest.state, entry.latest.action) {
                (_, ReconAction::None) => continue,
                (ReconState::Unavailable, _) => format!("recon_unavailable:{venue}"),
                _ => format!("recon_mismatch:{venue}"),
            };
            reasons.push(reason);
            gate = Some(match (gate, entry.latest.action) {
                (Some(BreachAction::Halted), _) | (_, ReconAction::Halted) => BreachAction::Halted,
                _ => BreachAction::ReduceOnly,
            });
        }
        (gate, reasons)
    }

    /// Every live venue whose account is read (not stale): its cash and equity.
    pub fn live_figures(&self) -> impl Iterator<Item = LiveFigures<'_>> {
        self.venues.iter().filter_map(|(venue, entry)| {
            entry.account.as_ref().map(|account| LiveFigures {
                venue,
                cash: account.cash.map(Money::get),
                equity: account.equity.map(Money::get),
            })
        })
    }

    /// The latest reconciliation of every venue.
    pub fn latest(&self) -> impl Iterator<Item = &Reconciliation> {
        self.venues.values().map(|e| &e.latest)
    }
}

fn blank(venue: &Venue, now_ns: u64) -> Reconciliation {
    Reconciliation {
        venue: venue.clone(),
        state: ReconState::Unavailable,
        action: ReconAction::None,
        differences: Vec::new(),
        unknown_orders: 0,
        cash: None,
        equity: None,
        detail: String::new(),
        ts: now_ns,
    }
}

fn unavailable(
    venue: &Venue,
    age_ms: u64,
    why: &str,
    action: BreachAction,
    now_ns: u64,
) -> Reconciliation {
    Reconciliation {
        detail: format!(
            "no account read from {venue} for {age_ms} ms ({why}): its positions cannot be checked"
        ),
        action: action_of(action),
        ..blank(venue, now_ns)
    }
}

fn action_of(action: BreachAction) -> ReconAction {
    match action {
        BreachAction::ReduceOnly => ReconAction::ReduceOnly,
        BreachAction::Halted => ReconAction::Halted,
    }
}

/// The differences beyond the tolerance between the venue's positions and risk's books of
/// that venue, and a note if a figure overflowed (then it counts as a difference).
fn compare(
    settings: &ReconSettings,
    books: &VenueBooks,
    venue: &Venue,
    account: &VenueAccount,
) -> (Vec<ReconDifference>, Option<String>) {
    let mut reported: BTreeMap<&Symbol, Option<Decimal>> = BTreeMap::new();
    for position in &account.positions {
        let sum = reported
            .entry(&position.symbol)
            .or_insert(Some(Decimal::ZERO));
        *sum = sum.and_then(|s| s.checked_add(position.quantity.get()));
    }
    for (symbol, _) in books.held_on(venue) {
        reported.entry(symbol).or_insert(Some(Decimal::ZERO));
    }
    let mut differences = Vec::new();
    let mut overflow = None;
    for (symbol, at_venue) in reported {
        let ledger = books.quantity(venue, symbol);
        let Some(at_venue) = at_venue else {
            overflow = Some(format!("{symbol}: the venue's positions do not add up"));
            continue;
        };
        let Some(difference) = at_venue.checked_sub(ledger) else {
            overflow = Some(format!("{symbol}: venue {at_venue}, risk {ledger}"));
            continue;
        };
        let relative = at_venue
            .abs()
            .max(ledger.abs())
            .checked_mul(settings.tolerance_rel)
            .unwrap_or(Decimal::MAX);
        if difference.abs() > settings.tolerance.max(relative) {
            differences.push(ReconDifference {
                symbol: symbol.clone(),
                venue: Money::saturating(at_venue.normalize()),
                ledger: Money::saturating(ledger.normalize()),
                difference: Money::saturating(difference.normalize()),
            });
        }
    }
    (differences, overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{LiveVenueKind, UnknownVenueOrder, VenueMode, VenuePositionEntry};

    const MS: u64 = NS_PER_MS;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn venue() -> Venue {
        Venue::try_from("binance").unwrap()
    }

    fn symbol(s: &str) -> Symbol {
        Symbol::try_from(s).unwrap()
    }

    fn status(positions: &[(&str, &str)]) -> LiveVenueStatus {
        LiveVenueStatus {
            venue: venue(),
            kind: LiveVenueKind::BinanceFutures,
            mode: VenueMode::Testnet,
            connected: true,
            detail: None,
            working_orders: 0,
            unconfirmed_orders: 0,
            account: Some(VenueAccount {
                cash: Some("900".parse().unwrap()),
                equity: Some("1010".parse().unwrap()),
                balances: Vec::new(),
                positions: positions
                    .iter()
                    .map(|(s, q)| VenuePositionEntry {
                        symbol: symbol(s),
                        quantity: q.parse().unwrap(),
                        entry_price: None,
                    })
                    .collect(),
            }),
            account_error: None,
            unknown_orders: Vec::new(),
            ts: 1,
        }
    }

    fn strict() -> Recon {
        Recon::new(ReconSettings {
            grace_ms: 0,
            ..ReconSettings::default()
        })
    }

    #[test]
    fn matching_positions_within_the_tolerance_match() {
        let mut recon = strict();
        recon
            .books
            .book(&venue(), &symbol("BTC-USDT"), d("0.5"), d("100"), d("0.05"));
        let r = recon.apply_status(&status(&[("BTC-USDT", "0.500000001")]), 10 * MS);
        assert_eq!(
            (r.state, r.action),
            (ReconState::Matched, ReconAction::None)
        );
        assert_eq!(recon.gate(), (None, vec![]));
        // Cash flow of the fill: -(0.5 x 100) - 0.05.
        assert_eq!(recon.books.cash_flow[&venue()], d("-50.05"));
    }

    #[test]
    fn a_difference_gates_the_account_until_a_report_matches() {
        let mut recon = strict();
        recon
            .books
            .book(&venue(), &symbol("BTC-USDT"), d("0.5"), d("100"), d("0"));
        // The venue holds ETH risk never bought and lacks the BTC risk has.
        let r = recon.apply_status(&status(&[("ETH-USDT", "-2")]), 10 * MS);
        assert_eq!(
            (r.state, r.action),
            (ReconState::Mismatch, ReconAction::ReduceOnly)
        );
        let diffs: Vec<_> = r
            .differences
            .iter()
            .map(|x| {
                (
                    x.symbol.as_str(),
                    x.venue.to_string(),
                    x.ledger.to_string(),
                    x.difference.to_string(),
                )
            })
            .collect();
        assert_eq!(
            diffs,
            vec![
                ("BTC-USDT", "0".into(), "0.5".into(), "-0.5".into()),
                ("ETH-USDT", "-2".into(), "0".into(), "-2".into())
            ]
        );
        assert_eq!(
            recon.gate(),
            (
                Some(BreachAction::ReduceOnly),
                vec!["recon_mismatch:binance".to_string()]
            )
        );
        let r = recon.apply_status(&status(&[("BTC-USDT", "0.5")]), 20 * MS);
        assert_eq!(r.state, ReconState::Matched);
        assert_eq!(recon.gate(), (None, vec![]));
    }

    #[test]
    fn unknown_orders_are_a_mismatch_and_halted_is_configurable() {
        let mut recon = Recon::new(ReconSettings {
            grace_ms: 0,
            action: BreachAction::Halted,
            ..ReconSettings::default()
        });
        let mut s = status(&[]);
        s.unknown_orders.push(UnknownVenueOrder {
            venue_order_id: Some("77".into()),
            client_order_id: None,
            venue_symbol: "BTCUSDT".into(),
            symbol: None,
            status: "NEW".into(),
            filled: Default::default(),
        });
        let r = recon.apply_status(&s, MS);
        assert_eq!(
            (r.state, r.action, r.unknown_orders),
            (ReconState::Mismatch, ReconAction::Halted, 1)
        );
        assert!(r.detail.contains("BTCUSDT 77 NEW"), "{}", r.detail);
        assert_eq!(recon.gate().0, Some(BreachAction::Halted));
    }

    #[test]
    fn a_mismatch_acts_only_once_it_outlasts_the_grace() {
        let mut recon = Recon::new(ReconSettings::default()); // grace 4000 ms
        let r = recon.apply_status(&status(&[("BTC-USDT", "1")]), 1_000 * MS);
        assert_eq!(
            (r.state, r.action),
            (ReconState::Mismatch, ReconAction::None)
        );
        assert_eq!(recon.gate().0, None);
        let r = recon.apply_status(&status(&[("BTC-USDT", "1")]), 5_000 * MS);
        assert_eq!(r.action, ReconAction::ReduceOnly);
        // A match resets the clock.
        recon.apply_status(&status(&[]), 6_000 * MS);
        let r = recon.apply_status(&status(&[("BTC-USDT", "1")]), 7_000 * MS);
        assert_eq!(r.action, ReconAction::None);
    }

    #[test]
    fn the_relative_tolerance_scales_with_the_position() {
        let mut recon = strict();
        recon.books.book(
            &venue(),
            &symbol("DOGE-USDT"),
            d("1000000"),
            d("0.1"),
            d("0"),
        );
        // 0.005 off in a million: within 1e-8 relative (0.01).
        let r = recon.apply_status(&status(&[("DOGE-USDT", "1000000.005")]), MS);
        assert_eq!(r.state, ReconState::Matched);
        let r = recon.apply_status(&status(&[("DOGE-USDT", "1000000.02")]), 2 * MS);
        assert_eq!(r.state, ReconState::Mismatch);
    }

    #[test]
    fn an_account_unread_past_the_stale_time_is_unavailable() {
        let mut recon = strict();
        recon.apply_status(&status(&[]), MS);
        let mut broken = status(&[]);
        broken.account = None;
        broken.account_error = Some("HTTP 502".into());
        // Within recon_stale_ms: the last verdict (MATCHED) stands.
        let r = recon.apply_status(&broken, 10_000 * MS);
        assert_eq!(
            (r.state, r.action),
            (ReconState::Matched, ReconAction::None)
        );
        assert!(r.detail.contains("HTTP 502"), "{}", r.detail);
        assert_eq!(recon.live_figures().count(), 1);
        let r = recon.apply_status(&broken, 40_000 * MS);
        assert_eq!(
            (r.state, r.action),
            (ReconState::Unavailable, ReconAction::ReduceOnly)
        );
        assert_eq!(
            recon.gate().1,
            vec!["recon_unavailable:binance".to_string()]
        );
        // A stale account's figures are not used.
        assert_eq!(recon.live_figures().count(), 0);
        let r = recon.apply_status(&status(&[]), 41_000 * MS);
        assert_eq!(r.state, ReconState::Matched);
        assert_eq!(recon.gate().0, None);
    }

    #[test]
    fn a_venue_that_falls_silent_goes_unavailable_on_the_heartbeat() {
        let mut recon = strict();
        recon.apply_status(&status(&[]), MS);
        assert!(recon.heartbeat(30_000 * MS).is_empty());
        let changed = recon.heartbeat(31_002 * MS);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].state, ReconState::Unavailable);
        assert!(changed[0].detail.contains("no status from execution"));
        // Once: a later heartbeat has nothing new.
        assert!(recon.heartbeat(40_000 * MS).is_empty());
        assert_eq!(recon.gate().0, Some(BreachAction::ReduceOnly));
    }

    #[test]
    fn a_first_status_without_an_account_is_unavailable_but_not_yet_gated() {
        let mut recon = strict();
        let mut s = status(&[]);
        s.account = None;
        let r = recon.apply_status(&s, MS);
        assert_eq!(
            (r.state, r.action),
            (ReconState::Unavailable, ReconAction::None)
        );
        assert_eq!(recon.gate().0, None);
        let r = recon.apply_status(&s, 31_002 * MS);
        assert_eq!(r.action, ReconAction::ReduceOnly);
    }

    #[test]
    fn a_restart_keeps_the_gate_and_knows_every_venue_again() {
        let mut recon = strict();
        let stored = |venue: &str, state, action| Reconciliation {
            venue: Venue::try_from(venue).unwrap(),
            state,
            action,
            differences: Vec::new(),
            unknown_orders: 0,
            cash: None,
            equity: None,
            detail: "before the restart".into(),
            ts: 1,
        };
        recon.settings.ignore = vec![Venue::try_from("retired").unwrap()];
        recon.restore(
            vec![
                stored("binance", ReconState::Mismatch, ReconAction::ReduceOnly),
                stored("hyperliquid", ReconState::Matched, ReconAction::None),
                stored("retired", ReconState::Unavailable, ReconAction::Halted),
            ],
            MS,
        );
        assert_eq!(
            recon.gate(),
            (
                Some(BreachAction::ReduceOnly),
                vec!["recon_mismatch:binance".to_string()]
            )
        );
        // hyperliquid says nothing within recon_stale_ms: UNAVAILABLE; "retired" is forgotten.
        let changed = recon.heartbeat(31_002 * MS);
        let venues: Vec<_> = changed.iter().map(|r| r.venue.as_str()).collect();
        assert_eq!(venues, vec!["binance", "hyperliquid"]);
        assert!(recon.latest().all(|r| r.venue != "retired"));
        // binance reports and matches: only hyperliquid gates now.
        recon.apply_status(&status(&[]), 32_000 * MS);
        assert_eq!(
            recon.gate().1,
            vec!["recon_unavailable:hyperliquid".to_string()]
        );
    }

    #[test]
    fn huge_positions_are_a_difference_not_a_panic() {
        let mut recon = strict();
        let max = "99999999999999.9";
        let r = recon.apply_status(&status(&[("BTC-USDT", max), ("BTC-USDT", max)]), MS);
        assert_eq!(r.state, ReconState::Mismatch);
    }
}
