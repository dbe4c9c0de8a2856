//! The engine as the service drives it, without NATS.

use moonbus_common::config::SystemConfig;
use serde_json::json;

use super::*;
use crate::config::RiskConfig;
use crate::ledger::{d, sym};

/// 2025-11-26T04:26:40Z, and one day of nanoseconds.
const T0: u64 = 1_764_130_000_000_000_000;
const DAY: u64 = 86_400_000_000_000;
const MS: u64 = NS_PER_MS;

fn settings() -> Settings {
    let system = SystemConfig {
        symbols: vec!["BTC-USD".into(), "ETH-USD".into()],
    };
    Settings::from_parts(RiskConfig::default(), system).unwrap()
}

fn ready_engine() -> Engine {
    let mut engine = Engine::new(settings(), T0);
    engine.mark_ready(T0);
    engine
}

fn tick(symbol: &str, price: &str) -> Tick {
    serde_json::from_value(
        json!({"venue": "sim", "symbol": symbol, "price": price, "seq": 1, "ts": T0}),
    )
    .unwrap()
}

/// A report of `id`; `fill` = (quantity, price, fee) of this report's fill.
fn report(
    id: &str,
    side: &str,
    status: &str,
    filled: &str,
    fill: Option<(&str, &str, &str)>,
) -> ExecutionReport {
    let mut value = json!({
        "client_order_id": id, "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
        "side": side, "status": status, "reason": "test", "filled_quantity": filled,
        "timings": {}, "ts": T0,
    });
    if let Some((quantity, price, fee)) = fill {
        value["last_fill_quantity"] = json!(quantity);
        value["last_fill_price"] = json!(price);
        value["fee"] = json!(fee);
    }
    serde_json::from_value(value).unwrap()
}

fn filled(id: &str, side: &str, quantity: &str, price: &str) -> ExecutionReport {
    report(id, side, "FILLED", quantity, Some((quantity, price, "0")))
}

fn request(id: &str, side: &str, quantity: &str) -> RiskCheckRequest {
    serde_json::from_value(json!({
        "client_order_id": id, "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
        "side": side, "type": "MARKET", "quantity": quantity, "ts": T0,
    }))
    .unwrap()
}

fn code(result: &RiskCheckResult) -> &str {
    if result.approved {
        "approved"
    } else {
        result.reason_code.as_deref().unwrap_or("?")
    }
}

fn kill(action: &str, flatten: bool) -> KillSwitchRequest {
    serde_json::from_value(
        json!({"action": action, "actor": "alice", "reason": "incident", "flatten": flatten}),
    )
    .unwrap()
}

#[test]
fn fills_and_marks_give_positions_and_account() {
    let mut engine = ready_engine();
    engine
        .apply_report(&report(
            "a",
            "BUY",
            "FILLED",
            "2",
            Some(("2", "100", "0.2")),
        ))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "110"), T0);
    let positions = engine.positions(None);
    assert_eq!(positions.len(), 1);
    let p = &positions[0];
    assert_eq!((p.quantity.get(), p.avg_price.get()), (d("2"), d("100")));
    assert_eq!(p.mark_price.map(|m| m.get()), Some(d("110")));
    assert_eq!(
        (p.unrealized_pnl.get(), p.notional.get(), p.fees.get()),
        (d("20"), d("220"), d("0.2"))
    );
    let account = engine.account(T0);
    assert_eq!(account.cash.get(), d("9799.8"));
    assert_eq!(account.equity.get(), d("10019.8"));
    assert_eq!(account.peak_equity.get(), d("10019.8"));
    assert_eq!(account.gross_exposure.get(), d("220"));
    assert_eq!(account.day_pnl.get(), d("19.8"));
    assert_eq!(account.open_positions, 1);
    assert_eq!(account.state, TradingState::Active);
    // Sell at 120: realized 20, fees count in cash but not in realized PnL.
    engine
        .apply_report(&report(
            "b",
            "SELL",
            "FILLED",
            "2",
            Some(("2", "120", "0.24")),
        ))
        .unwrap();
    let account = engine.account(T0);
    assert_eq!(account.realized_pnl.get(), d("40"));
    assert_eq!(account.cash.get(), d("10039.56"));
    assert_eq!(account.open_positions, 0);
    assert_eq!(
        engine.positions(Some(&sym("BTC-USD")))[0]
            .realized_pnl
            .get(),
        d("40")
    );
    assert!(engine.positions(Some(&sym("ETH-USD"))).is_empty());
}

#[test]
fn partial_fills_apply_each_fill_once() {
    let mut engine = ready_engine();
    let first = report(
        "a",
        "BUY",
        "PARTIALLY_FILLED",
        "1",
        Some(("1", "100", "0.1")),
    );
    assert_eq!(engine.apply_report(&first), Ok(ReportEffect::Applied));
    // Execution republished the same report: skipped.
    assert_eq!(engine.apply_report(&first), Ok(ReportEffect::Duplicate));
    engine
        .apply_report(&report(
            "a",
            "BUY",
            "FILLED",
            "3",
            Some(("2", "103", "0.2")),
        ))
        .unwrap();
    let p = &engine.positions(None)[0];
    assert_eq!(
        (p.quantity.get(), p.avg_price.get(), p.fees.get()),
        (d("3"), d("102"), d("0.3"))
    );
}

#[test]
fn a_fill_without_price_is_refused_and_changes_nothing() {
    let mut engine = ready_engine();
    let mut bad = filled("a", "BUY", "1", "100");
    bad.last_fill_price = None;
    assert!(engine
        .apply_report(&bad)
        .unwrap_err()
        .contains("last_fill_price"));
    assert!(engine.positions(None).is_empty());
    // The good version of the same report is still applied afterwards.
    assert_eq!(
        engine.apply_report(&filled("a", "BUY", "1", "100")),
        Ok(ReportEffect::Applied)
    );
    let mut anonymous = filled("x", "BUY", "1", "100");
    anonymous.client_order_id = None;
    assert_eq!(engine.apply_report(&anonymous), Ok(ReportEffect::NoOrder));
}

#[test]
fn checks_fail_closed_until_ready() {
    let mut engine = Engine::new(settings(), T0);
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    let result = engine.check(&request("a", "BUY", "1"), T0);
    assert_eq!(code(&result), "not_ready");
    assert_eq!(result.state, TradingState::Halted);
    assert_eq!(engine.account(T0).reasons, vec!["not_ready"]);
    engine.mark_ready(T0);
    let result = engine.check(&request("b", "BUY", "1"), T0);
    assert_eq!(code(&result), "approved");
    assert_eq!(result.state, TradingState::Active);
}

#[test]
fn every_rule_has_its_reason_code() {
    let mut engine = ready_engine();
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "1"), T0)),
        "no_market_data"
    );
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    let stale = T0 + 5001 * MS;
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "1"), stale)),
        "stale_market_data"
    );
    assert_eq!(
        code(&engine.check(&request("c", "BUY", "10.5"), T0)),
        "max_order_notional"
    );
    let mut reduce_only = request("d", "SELL", "1");
    reduce_only.reduce_only = true;
    assert_eq!(
        code(&engine.check(&reduce_only, T0)),
        "reduce_only_increases"
    );
    engine
        .apply_report(&filled("f", "BUY", "45", "100"))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("e", "BUY", "6"), T0)),
        "max_position_notional"
    );
    engine
        .set_limits(&LimitsPatch {
            max_gross_exposure: Some("4600".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("g", "BUY", "2"), T0)),
        "max_gross_exposure"
    );
    engine
        .set_limits(&LimitsPatch {
            min_cash: Some("5400".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    engine
        .set_limits(&LimitsPatch {
            max_gross_exposure: Some("20000".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    // cash 5500 - 200 bought - 0.2 estimated fees = 5299.8 < 5400.
    let refused = engine.check(&request("h", "BUY", "2"), T0);
    assert_eq!(code(&refused), "min_cash");
    assert!(refused.reason.as_deref().unwrap().contains("5299.8"));
}

#[test]
fn the_second_of_two_orders_that_only_fit_alone_is_refused() {
    let mut engine = ready_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine
        .apply_report(&filled("f", "BUY", "40", "100"))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "9"), T0)),
        "approved"
    );
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), T0)),
        "max_position_notional"
    );
    // A re-check of the same order replaces its own reservation, it does not double it.
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "9"), T0)),
        "approved"
    );
    // Order a is cancelled unfilled: its reservation is released.
    engine
        .apply_report(&report("a", "BUY", "CANCELLED", "0", None))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), T0)),
        "approved"
    );
}

#[test]
fn fills_use_up_reservations_as_they_come() {
    let mut engine = ready_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine
        .apply_report(&filled("f", "BUY", "40", "100"))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "9"), T0)),
        "approved"
    );
    // 6 of 9 filled: position 46, 3 still in flight -> 49 (+1 fits, +2 does not).
    engine
        .apply_report(&report(
            "a",
            "BUY",
            "PARTIALLY_FILLED",
            "6",
            Some(("6", "100", "0")),
        ))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "2"), T0)),
        "max_position_notional"
    );
    assert_eq!(
        code(&engine.check(&request("c", "BUY", "1"), T0)),
        "approved"
    );
}

#[test]
fn reservations_expire_after_their_ttl() {
    let mut engine = ready_engine();
    engine
        .apply_report(&filled("f", "BUY", "40", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "9"), T0)),
        "approved"
    );
    let before_ttl = T0 + 9_999 * MS;
    engine.apply_tick(&tick("BTC-USD", "100"), before_ttl);
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), before_ttl)),
        "max_position_notional"
    );
    let after_ttl = T0 + 10_000 * MS;
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), after_ttl)),
        "approved"
    );
}

#[test]
fn daily_loss_makes_the_account_reduce_only() {
    let mut engine = ready_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine
        .apply_report(&filled("f", "BUY", "40", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "87.5"), T0);
    let account = engine.account(T0);
    assert_eq!(account.day_pnl.get(), d("-500"));
    assert_eq!(account.state, TradingState::ReduceOnly);
    assert_eq!(account.reasons, vec!["max_daily_loss"]);
    let buy = engine.check(&request("a", "BUY", "1"), T0);
    assert_eq!(
        (code(&buy), buy.state),
        ("account_reduce_only", TradingState::ReduceOnly)
    );
    assert_eq!(
        code(&engine.check(&request("b", "SELL", "10"), T0)),
        "approved"
    );
    let verdict = engine
        .verdicts(T0)
        .into_iter()
        .find(|v| v.symbol == "BTC-USD")
        .unwrap();
    assert_eq!(verdict.state, TradingState::ReduceOnly);
    // The next UTC day measures from that day's first equity: trading resumes.
    let tomorrow = T0 + DAY;
    engine.apply_tick(&tick("BTC-USD", "87.5"), tomorrow);
    assert_eq!(engine.account(tomorrow).day_pnl.get(), d("0"));
    // Drawdown is 5% (peak 10000, equity 9500): under 10%, so active again.
    assert_eq!(engine.account(tomorrow).state, TradingState::Active);
}

#[test]
fn drawdown_makes_the_account_reduce_only_or_halted() {
    let mut config = RiskConfig {
        max_daily_loss: "100000".parse().unwrap(),
        max_position_notional: "100000".parse().unwrap(),
        max_order_notional: "100000".parse().unwrap(),
        ..RiskConfig::default()
    };
    let mut engine = Engine::new(
        Settings::from_parts(config.clone(), SystemConfig::default()).unwrap(),
        T0,
    );
    engine.mark_ready(T0);
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine
        .apply_report(&filled("f", "BUY", "50", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "110"), T0); // peak 10500
    engine.apply_tick(&tick("BTC-USD", "89"), T0); // equity 9450: 10% below the peak
    let account = engine.account(T0);
    assert_eq!(account.peak_equity.get(), d("10500"));
    assert_eq!(account.drawdown_pct, 10.0);
    assert_eq!(
        (account.state, account.reasons.clone()),
        (TradingState::ReduceOnly, vec!["max_drawdown".to_string()])
    );
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "1"), T0)),
        "account_reduce_only"
    );

    config.on_limit_breach = BreachAction::Halted;
    let mut halted = Engine::new(
        Settings::from_parts(config, SystemConfig::default()).unwrap(),
        T0,
    );
    halted.mark_ready(T0);
    halted.apply_tick(&tick("BTC-USD", "100"), T0);
    halted
        .apply_report(&filled("f", "BUY", "50", "100"))
        .unwrap();
    halted.apply_tick(&tick("BTC-USD", "80"), T0);
    assert_eq!(halted.account(T0).state, TradingState::Halted);
    assert_eq!(
        code(&halted.check(&request("a", "SELL", "1"), T0)),
        "account_halted"
    );
}

#[test]
fn kill_switch_halts_all_but_reducing_orders() {
    let mut engine = ready_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine
        .apply_report(&filled("f", "BUY", "5", "100"))
        .unwrap();
    let (state, changed) = engine.kill_switch(&kill("engage", false), T0 + 1).unwrap();
    assert!(state.engaged && changed);
    assert_eq!(
        (
            state.actor.as_str(),
            state.reason.as_str(),
            state.changed_ts
        ),
        ("alice", "incident", T0 + 1)
    );
    assert!(
        !engine
            .kill_switch(&kill("engage", false), T0 + 2)
            .unwrap()
            .1,
        "already engaged"
    );
    let buy = engine.check(&request("a", "BUY", "1"), T0);
    assert_eq!(
        (code(&buy), buy.state),
        ("kill_switch", TradingState::Halted)
    );
    assert_eq!(
        code(&engine.check(&request("b", "SELL", "6"), T0)),
        "kill_switch"
    );
    assert_eq!(
        code(&engine.check(&request("c", "SELL", "5"), T0)),
        "approved"
    );
    let account = engine.account(T0);
    assert!(account.kill_switch);
    assert_eq!(
        (account.state, account.reasons),
        (TradingState::Halted, vec!["kill_switch".to_string()])
    );
    // flatten is refused outright, nothing changes.
    let refusal = engine.kill_switch(&kill("release", true), T0).unwrap_err();
    assert_eq!(refusal.code, "unsupported");
    assert!(
        engine
            .kill_switch(&kill("status", false), T0)
            .unwrap()
            .0
            .engaged
    );
    let (state, changed) = engine.kill_switch(&kill("release", false), T0 + 3).unwrap();
    assert!(!state.engaged && changed);
    assert_eq!(
        code(&engine.check(&request("d", "BUY", "1"), T0)),
        "approved"
    );
    assert!(!engine.kill_switch(&kill("status", false), T0).unwrap().1);
}

#[test]
fn limits_change_all_or_nothing() {
    let mut engine = ready_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    let patch = LimitsPatch {
        max_order_notional: Some("50".parse().unwrap()),
        ..Default::default()
    };
    engine.set_limits(&patch).unwrap();
    assert_eq!(engine.limits().max_order_notional.get(), d("50"));
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "1"), T0)),
        "max_order_notional"
    );
    let bad = LimitsPatch {
        max_order_notional: Some("70".parse().unwrap()),
        max_drawdown_pct: Some(150.0),
        ..Default::default()
    };
    assert!(engine
        .set_limits(&bad)
        .unwrap_err()
        .contains("max_drawdown_pct"));
    assert_eq!(engine.limits().max_order_notional.get(), d("50"));
}

#[test]
fn verdicts_cover_configured_symbols_and_positions() {
    let mut engine = ready_engine();
    engine
        .apply_report(
            &serde_json::from_value(json!({
                "client_order_id": "s", "symbol": "SOL-USDC", "side": "BUY", "status": "FILLED",
                "filled_quantity": "40", "last_fill_quantity": "40", "last_fill_price": "150",
                "timings": {}, "ts": T0,
            }))
            .unwrap(),
        )
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine.apply_tick(&tick("SOL-USDC", "150"), T0);
    let verdicts = engine.verdicts(T0 + 6000 * MS);
    let by_symbol = |s: &str| verdicts.iter().find(|v| v.symbol == s).unwrap().clone();
    assert_eq!(verdicts.len(), 3);
    assert_eq!(by_symbol("ETH-USD").reasons, vec!["no_market_data"]);
    assert_eq!(by_symbol("BTC-USD").reasons, vec!["stale_market_data"]);
    assert_eq!(by_symbol("BTC-USD").state, TradingState::Halted);
    let verdicts = engine.verdicts(T0);
    let sol = verdicts.iter().find(|v| v.symbol == "SOL-USDC").unwrap();
    // 40 * 150 = 6000 >= max_position_notional 5000.
    assert_eq!(
        (sol.state, sol.position.get()),
        (TradingState::ReduceOnly, d("40"))
    );
    assert_eq!(sol.reasons, vec!["max_position_notional"]);
    let btc = verdicts.iter().find(|v| v.symbol == "BTC-USD").unwrap();
    assert_eq!(
        (btc.state, btc.max_order_notional.map(|m| m.get())),
        (TradingState::Active, Some(d("1000")))
    );
}

#[test]
fn replaying_the_same_reports_rebuilds_the_same_state() {
    let reports = [
        filled("a", "BUY", "1.5", "200"),
        report(
            "b",
            "SELL",
            "PARTIALLY_FILLED",
            "1",
            Some(("1", "210", "0.21")),
        ),
        report("b", "SELL", "FILLED", "2.5", Some(("1.5", "190", "0.19"))),
    ];
    let build = || {
        let mut engine = ready_engine();
        for r in &reports {
            engine.apply_report(r).unwrap();
        }
        engine
    };
    let (first, second) = (build(), build());
    assert_eq!(first.positions(None), second.positions(None));
    let p = &first.positions(None)[0];
    // Long 1.5 @ 200: sold 1 @ 210 (+10), 0.5 @ 190 (-5), flipped to -1 @ 190.
    assert_eq!(
        (p.quantity.get(), p.avg_price.get(), p.realized_pnl.get()),
        (d("-1"), d("190"), d("5"))
    );
}

#[test]
fn the_rebuild_runs_on_the_reports_clock_and_fill_prices() {
    let yesterday = |mut r: ExecutionReport| {
        r.ts = T0 - DAY;
        r
    };
    let mut engine = Engine::new(settings(), T0);
    engine
        .apply_report(&yesterday(filled("a", "BUY", "10", "100")))
        .unwrap();
    // A tick arriving mid-rebuild must not value yesterday's position at today's price.
    engine.apply_tick(&tick("BTC-USD", "150"), T0);
    engine
        .apply_report(&yesterday(filled("b", "SELL", "10", "90")))
        .unwrap();
    engine.mark_ready(T0);
    let account = engine.account(T0);
    assert_eq!(account.equity.get(), d("9900"));
    assert_eq!(account.peak_equity.get(), d("10000"));
    assert_eq!(account.drawdown_pct, 1.0);
    // Yesterday's loss is not today's.
    assert_eq!(account.day_pnl.get(), d("0"));
    assert_eq!(account.state, TradingState::Active);
    // The mark received during the rebuild is used once ready.
    assert_eq!(
        code(&engine.check(&request("c", "BUY", "1"), T0)),
        "approved"
    );
}
