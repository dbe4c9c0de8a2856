//! The engine with live venues: fills booked per venue, the reconciliation's gate on
//! checks, verdicts and the account, the venues' cash and equity in the account, and
//! the per-venue books through a snapshot.

use moonbus_common::config::SystemConfig;
use moonbus_common::{LiveVenueKind, ReconAction, ReconState};
use serde_json::json;

use super::*;
use crate::config::RiskConfig;
use crate::ledger::d;

const T0: u64 = 1_764_130_000_000_000_000;
const MS: u64 = NS_PER_MS;

fn engine_with(config: RiskConfig) -> Engine {
    let system = SystemConfig {
        symbols: vec!["BTC-USDT".into()],
    };
    let mut engine = Engine::new(Settings::from_parts(config, system).unwrap(), T0);
    engine.mark_ready(T0);
    engine
}

fn engine() -> Engine {
    engine_with(RiskConfig {
        recon_grace_ms: 0,
        ..RiskConfig::default()
    })
}

fn fill(
    id: &str,
    venue: &str,
    side: &str,
    quantity: &str,
    price: &str,
    fee: &str,
) -> ExecutionReport {
    serde_json::from_value(json!({
        "client_order_id": id, "agent": "trading", "symbol": "BTC-USDT", "venue": venue,
        "side": side, "status": "FILLED", "filled_quantity": quantity,
        "last_fill_quantity": quantity, "last_fill_price": price, "fee": fee,
        "timings": {}, "ts": T0,
    }))
    .unwrap()
}

fn status(
    positions: serde_json::Value,
    cash: Option<&str>,
    equity: Option<&str>,
) -> LiveVenueStatus {
    let mut account = json!({"positions": positions});
    if let Some(cash) = cash {
        account["cash"] = json!(cash);
    }
    if let Some(equity) = equity {
        account["equity"] = json!(equity);
    }
    serde_json::from_value(json!({
        "venue": "binance", "kind": "binance_futures", "mode": "testnet", "connected": true,
        "account": account, "ts": T0,
    }))
    .unwrap()
}

fn tick(price: &str) -> Tick {
    serde_json::from_value(
        json!({"venue": "binance", "symbol": "BTC-USDT", "price": price, "seq": 1, "ts": T0}),
    )
    .unwrap()
}

fn buy(id: &str, quantity: &str) -> RiskCheckRequest {
    serde_json::from_value(json!({
        "client_order_id": id, "agent": "trading", "symbol": "BTC-USDT", "venue": "binance",
        "side": "BUY", "type": "MARKET", "quantity": quantity, "ts": T0,
    }))
    .unwrap()
}

fn sell(id: &str, quantity: &str) -> RiskCheckRequest {
    RiskCheckRequest {
        side: Side::Sell,
        ..buy(id, quantity)
    }
}

#[test]
fn only_the_fills_on_the_venue_are_compared_with_it() {
    let mut e = engine();
    e.apply_tick(&tick("100"), T0);
    // A paper fill of the same symbol is not the venue's business.
    e.apply_report(&fill("p", "sim", "BUY", "3", "100", "0"))
        .unwrap();
    e.apply_report(&fill("l", "binance", "BUY", "0.5", "100", "0"))
        .unwrap();
    let r = e
        .apply_venue_status(
            &status(
                json!([{"symbol": "BTC-USDT", "quantity": "0.5"}]),
                None,
                None,
            ),
            T0,
        )
        .unwrap();
    assert_eq!(
        (r.state, r.action),
        (ReconState::Matched, ReconAction::None)
    );
    assert_eq!(e.account(T0).state, TradingState::Active);
}

#[test]
fn a_mismatch_gates_checks_verdicts_and_the_account_until_it_matches() {
    let mut e = engine();
    e.apply_tick(&tick("100"), T0);
    e.apply_report(&fill("l", "binance", "BUY", "0.5", "100", "0"))
        .unwrap();
    let r = e
        .apply_venue_status(
            &status(
                json!([{"symbol": "BTC-USDT", "quantity": "0.7"}]),
                None,
                None,
            ),
            T0,
        )
        .unwrap();
    assert_eq!(
        (r.state, r.action),
        (ReconState::Mismatch, ReconAction::ReduceOnly)
    );
    assert_eq!(r.differences[0].difference.get(), d("0.2"));
    let account = e.account(T0);
    assert_eq!(account.state, TradingState::ReduceOnly);
    assert!(account
        .reasons
        .contains(&"recon_mismatch:binance".to_string()));
    let verdict = &e.verdicts(T0)[0];
    assert_eq!(verdict.state, TradingState::ReduceOnly);
    assert!(verdict
        .reasons
        .contains(&"recon_mismatch:binance".to_string()));
    let refused = e.check(&buy("b1", "0.1"), T0 + MS);
    assert_eq!(refused.reason_code.as_deref(), Some("account_reduce_only"));
    let reason = refused.reason.unwrap();
    assert!(
        reason.contains("recon_mismatch:binance")
            && reason.contains("BTC-USDT: venue 0.7, risk 0.5"),
        "{reason}"
    );
    assert!(
        e.check(&sell("s1", "0.1"), T0 + MS).approved,
        "reducing orders pass"
    );
    // The fill that was missing arrives; the next report matches: the gate opens.
    e.apply_report(&fill("l2", "binance", "BUY", "0.2", "100", "0"))
        .unwrap();
    let r = e
        .apply_venue_status(
            &status(
                json!([{"symbol": "BTC-USDT", "quantity": "0.7"}]),
                None,
                None,
            ),
            T0 + 2 * MS,
        )
        .unwrap();
    assert_eq!(r.state, ReconState::Matched);
    let account = e.account(T0 + 2 * MS);
    assert_eq!(account.state, TradingState::Active);
    assert!(account.reasons.iter().all(|r| !r.starts_with("recon_")));
}

#[test]
fn halted_on_mismatch_refuses_even_reducing_orders() {
    let mut e = engine_with(RiskConfig {
        recon_grace_ms: 0,
        on_recon_mismatch: BreachAction::Halted,
        ..RiskConfig::default()
    });
    e.apply_tick(&tick("100"), T0);
    e.apply_report(&fill("l", "binance", "BUY", "0.5", "100", "0"))
        .unwrap();
    e.apply_venue_status(&status(json!([]), None, None), T0)
        .unwrap();
    assert_eq!(e.account(T0).state, TradingState::Halted);
    let refused = e.check(&sell("s", "0.1"), T0);
    assert_eq!(refused.reason_code.as_deref(), Some("account_halted"));
}

#[test]
fn an_unreadable_account_past_the_stale_time_fails_closed() {
    let mut e = engine();
    e.apply_tick(&tick("100"), T0);
    e.apply_venue_status(&status(json!([]), None, None), T0)
        .unwrap();
    let mut broken = status(json!([]), None, None);
    broken.account = None;
    broken.account_error = Some("401 invalid API key".into());
    let r = e.apply_venue_status(&broken, T0 + 31_000 * MS).unwrap();
    assert_eq!(
        (r.state, r.action),
        (ReconState::Unavailable, ReconAction::ReduceOnly)
    );
    let account = e.account(T0 + 31_000 * MS);
    assert!(account
        .reasons
        .contains(&"recon_unavailable:binance".to_string()));
    assert_eq!(account.state, TradingState::ReduceOnly);
}

#[test]
fn statuses_during_the_rebuild_are_not_reconciled() {
    let system = SystemConfig { symbols: vec![] };
    let mut e = Engine::new(
        Settings::from_parts(RiskConfig::default(), system).unwrap(),
        T0,
    );
    assert!(e
        .apply_venue_status(
            &status(json!([{"symbol": "BTC-USDT", "quantity": "1"}]), None, None),
            T0
        )
        .is_none());
    assert!(e.recon_heartbeat(T0 + 100_000 * MS).is_empty());
    assert!(e.reconciliations().is_empty());
}

#[test]
fn the_venues_cash_and_equity_replace_what_their_fills_booked() {
    let mut e = engine();
    e.apply_tick(&tick("110"), T0);
    // Paper: starting cash 10000, buy 1 at 100 (fee 1) -> paper cash 9899, paper equity 10009.
    e.apply_report(&fill("p", "sim", "BUY", "1", "100", "1"))
        .unwrap();
    // Live: buy 2 at 100 (fee 0.5) -> the ledger's cash falls by 200.5 more.
    e.apply_report(&fill("l", "binance", "BUY", "2", "100", "0.5"))
        .unwrap();
    let ledger_only = e.account(T0);
    assert_eq!(ledger_only.cash.get(), d("9698.5"));
    assert_eq!(ledger_only.equity.get(), d("10028.5"));
    // The venue says cash 5000, equity 5230: paper + venue.
    e.apply_venue_status(
        &status(
            json!([{"symbol": "BTC-USDT", "quantity": "2"}]),
            Some("5000"),
            Some("5230"),
        ),
        T0,
    )
    .unwrap();
    let account = e.account(T0);
    assert_eq!(account.cash.get(), d("14899"));
    assert_eq!(account.equity.get(), d("15239"));
    // A venue with cash only: its cash replaces its fills' cash flow; positions at the marks.
    e.apply_venue_status(
        &status(
            json!([{"symbol": "BTC-USDT", "quantity": "2"}]),
            Some("5000"),
            None,
        ),
        T0,
    )
    .unwrap();
    assert_eq!(e.account(T0).equity.get(), d("15229"));
    // Once the venue's account is stale, the ledger's figures are back.
    let mut broken = status(json!([]), None, None);
    broken.account = None;
    e.apply_venue_status(&broken, T0 + 31_000 * MS).unwrap();
    let stale = e.account(T0 + 31_000 * MS);
    assert_eq!(
        (stale.cash.get(), stale.equity.get()),
        (d("9698.5"), d("10028.5"))
    );
}

#[test]
fn the_books_per_venue_survive_a_snapshot() {
    let mut e = engine();
    e.apply_report(&fill("l", "binance", "BUY", "0.5", "100", "0.1"))
        .unwrap();
    let state = e.snapshot_state();
    let json = serde_json::to_string(&state).unwrap();
    let mut restored = Engine::new(e.settings.clone(), T0);
    restored
        .restore_state(serde_json::from_str(&json).unwrap())
        .unwrap();
    restored.mark_ready(T0);
    assert_eq!(restored.recon.books, e.recon.books);
    // A snapshot from before live venues reads with empty books.
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("venue_positions");
    old.as_object_mut().unwrap().remove("venue_cash_flow");
    let mut older = Engine::new(e.settings.clone(), T0);
    older
        .restore_state(serde_json::from_value(old).unwrap())
        .unwrap();
    assert!(older.recon.books.positions.is_empty());
}

/// Risk's config does not declare `binance`: it is paper to risk until execution's status
/// says it is a spot venue; from then on a sell-to-open there is refused (shorts.rs).
#[test]
fn a_spot_kind_heard_from_execution_closes_shorts_there() {
    let mut e = engine();
    e.apply_tick(&tick("100"), T0);
    assert!(e.check(&sell("s1", "0.1"), T0).approved);
    e.apply_report(&fill("s1", "binance", "SELL", "0.1", "100", "0"))
        .unwrap();
    let mut spot = status(
        json!([{"symbol": "BTC-USDT", "quantity": "-0.1"}]),
        None,
        None,
    );
    spot.kind = LiveVenueKind::BinanceSpot;
    e.apply_venue_status(&spot, T0);
    let refused = e.check(&sell("s2", "0.1"), T0);
    assert_eq!(
        refused.reason_code.as_deref(),
        Some("short_not_allowed"),
        "{refused:?}"
    );
    // A later status of another kind does not open it again.
    e.apply_venue_status(
        &status(
            json!([{"symbol": "BTC-USDT", "quantity": "-0.1"}]),
            None,
            None,
        ),
        T0,
    );
    assert!(!e.check(&sell("s3", "0.1"), T0).approved);
    // Buying there still may; then selling what was bought.
    assert!(e.check(&buy("b1", "0.3"), T0).approved);
    e.apply_report(&fill("b1", "binance", "BUY", "0.3", "100", "0"))
        .unwrap();
    assert!(e.check(&sell("s4", "0.2"), T0).approved);
}
