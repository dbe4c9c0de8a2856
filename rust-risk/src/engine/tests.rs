//! The engine as the service drives it, without NATS.

use moonbus_common::config::SystemConfig;
use serde_json::json;

use super::*;
use crate::config::RiskConfig;
use crate::ledger::{d, sym};
use crate::limits::LossLatch;

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

/// A ready engine without circuit breakers, for big moves that test other rules.
fn no_breaker_engine() -> Engine {
    let mut settings = settings();
    settings.breaker.pct = Decimal::ZERO;
    let mut engine = Engine::new(settings, T0);
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

/// One row of the reason-code table: a config change, then a setup that brings a
/// fresh ready engine (BTC-USD marked at 100 at T0) to the brink and returns the
/// order that trips the rule and the time it is checked at.
struct Case {
    code: &'static str,
    config: fn(&mut RiskConfig),
    setup: fn(&mut Engine) -> (RiskCheckRequest, u64),
}

fn no_change(_: &mut RiskConfig) {}

fn approve(engine: &mut Engine, request: &RiskCheckRequest, now: u64) {
    let result = engine.check(request, now);
    assert!(result.approved, "setup order {result:?}");
}

fn with_agent(mut request: RiskCheckRequest, agent: &str) -> RiskCheckRequest {
    request.agent = agent.parse().unwrap();
    request
}

fn limit_request(id: &str, side: &str, quantity: &str, price: &str) -> RiskCheckRequest {
    let mut request = request(id, side, quantity);
    request.order_type = OrderType::Limit;
    request.limit_price = Some(price.parse().unwrap());
    request
}

fn reduce_only(mut request: RiskCheckRequest) -> RiskCheckRequest {
    request.reduce_only = true;
    request
}

/// BTC-USD bought 45 @ 100 then marked at 88.5: day PnL -517.5, past max_daily_loss.
fn lose_the_daily_limit(engine: &mut Engine) {
    engine
        .apply_report(&filled("f", "BUY", "45", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "88.5"), T0);
}

const CASES: &[Case] = &[
    Case {
        code: "not_ready",
        config: no_change,
        setup: |engine| {
            *engine = Engine::new(settings(), T0);
            engine.apply_tick(&tick("BTC-USD", "100"), T0);
            (request("o", "BUY", "1"), T0)
        },
    },
    Case {
        code: "kill_switch",
        config: no_change,
        setup: |engine| {
            let state = engine
                .kill_switch_change(&kill("engage", false), T0)
                .unwrap();
            engine.set_kill_switch(state.unwrap());
            (request("o", "BUY", "1"), T0)
        },
    },
    Case {
        code: "account_halted",
        config: |c| c.on_limit_breach = BreachAction::Halted,
        setup: |engine| {
            lose_the_daily_limit(engine);
            (request("o", "SELL", "1"), T0)
        },
    },
    Case {
        code: "account_reduce_only",
        config: no_change,
        setup: |engine| {
            lose_the_daily_limit(engine);
            (request("o", "BUY", "1"), T0)
        },
    },
    Case {
        code: "circuit_breaker",
        config: no_change,
        setup: |engine| {
            engine.apply_tick(&tick("BTC-USD", "94.9"), T0 + 1000 * MS);
            (request("o", "BUY", "1"), T0 + 1000 * MS)
        },
    },
    Case {
        code: "reduce_only_increases",
        config: no_change,
        setup: |_| (reduce_only(request("o", "SELL", "1")), T0),
    },
    Case {
        code: "no_market_data",
        config: no_change,
        setup: |_| {
            let mut eth = request("o", "BUY", "1");
            eth.symbol = sym("ETH-USD");
            (eth, T0)
        },
    },
    Case {
        code: "stale_market_data",
        config: no_change,
        setup: |_| (request("o", "BUY", "1"), T0 + 5001 * MS),
    },
    Case {
        code: "price_band",
        config: no_change,
        setup: |_| (limit_request("o", "BUY", "1", "105.01"), T0),
    },
    Case {
        code: "max_order_notional",
        config: no_change,
        setup: |_| (request("o", "BUY", "10.5"), T0),
    },
    Case {
        code: "max_position_notional",
        config: no_change,
        setup: |engine| {
            engine
                .apply_report(&filled("f", "BUY", "45", "100"))
                .unwrap();
            (request("o", "BUY", "6"), T0)
        },
    },
    Case {
        code: "max_gross_exposure",
        config: |c| c.max_gross_exposure = "300".parse().unwrap(),
        setup: |_| (request("o", "BUY", "4"), T0),
    },
    Case {
        code: "min_cash",
        config: |c| c.starting_cash = "500".parse().unwrap(),
        // 500 - 450 - 0.45 estimated fees = 49.55 < 100.
        setup: |_| (request("o", "BUY", "4.5"), T0),
    },
    Case {
        code: "max_open_orders",
        config: |c| c.max_open_orders = 2,
        setup: |engine| {
            // One resting at the venue (ACCEPTED, no terminal report), one in flight.
            engine
                .apply_report(&report("resting", "BUY", "ACCEPTED", "0", None))
                .unwrap();
            approve(engine, &request("a", "BUY", "1"), T0);
            (request("o", "BUY", "1"), T0)
        },
    },
    Case {
        code: "max_open_orders_agent",
        config: |c| c.max_open_orders_per_agent = 2,
        setup: |engine| {
            // This agent's: one resting (from its report), one in flight. Another agent's
            // order still passes: the cap is a share, not a lock on everyone.
            engine
                .apply_report(&report("resting", "BUY", "ACCEPTED", "0", None))
                .unwrap();
            approve(engine, &request("a", "BUY", "1"), T0);
            approve(engine, &with_agent(request("b", "BUY", "1"), "swarm"), T0);
            (request("o", "BUY", "1"), T0)
        },
    },
    Case {
        code: "max_open_orders_symbol",
        config: |c| c.max_open_orders_per_symbol = 1,
        setup: |engine| {
            approve(engine, &request("a", "BUY", "1"), T0);
            (request("o", "BUY", "1"), T0)
        },
    },
    Case {
        code: "rate_limit_agent",
        config: |c| c.rate_limit_agent = 2,
        setup: |engine| {
            approve(engine, &request("a", "BUY", "1"), T0);
            approve(engine, &request("b", "BUY", "1"), T0);
            // Another agent still has budget.
            approve(engine, &with_agent(request("c", "BUY", "1"), "swarm"), T0);
            (request("o", "BUY", "1"), T0 + 999 * MS)
        },
    },
    Case {
        code: "rate_limit_global",
        config: |c| c.rate_limit_global = 2,
        setup: |engine| {
            approve(engine, &request("a", "BUY", "1"), T0);
            approve(engine, &with_agent(request("b", "BUY", "1"), "swarm"), T0);
            (with_agent(request("o", "BUY", "1"), "gateway"), T0)
        },
    },
    Case {
        code: "rate_limit_reduce_only",
        config: |c| {
            c.rate_limit_reduce_only = 2;
            c.rate_limit_agent = 1;
        },
        setup: |engine| {
            engine
                .apply_report(&filled("f", "BUY", "5", "100"))
                .unwrap();
            approve(engine, &request("a", "BUY", "1"), T0);
            // The normal budget is spent: closing orders use their own.
            approve(engine, &reduce_only(request("c1", "SELL", "1")), T0);
            approve(engine, &request("c2", "SELL", "1"), T0);
            (request("o", "SELL", "1"), T0)
        },
    },
];

/// Every reason code the check can answer, each tripped by one row of `CASES`.
#[test]
fn every_rule_trips_with_its_own_reason_code() {
    for case in CASES {
        let mut config = RiskConfig::default();
        (case.config)(&mut config);
        let system = SystemConfig {
            symbols: vec!["BTC-USD".into(), "ETH-USD".into()],
        };
        let mut engine = Engine::new(Settings::from_parts(config, system).unwrap(), T0);
        engine.mark_ready(T0);
        engine.apply_tick(&tick("BTC-USD", "100"), T0);
        let (order, now) = (case.setup)(&mut engine);
        let result = engine.check(&order, now);
        assert_eq!(code(&result), case.code, "{result:?}");
        assert!(
            result.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{}: a refusal says why",
            case.code
        );
        result.validate().unwrap();
    }
    let codes: BTreeSet<&str> = CASES.iter().map(|c| c.code).collect();
    assert_eq!(codes.len(), CASES.len(), "one row per code");
    assert_eq!(codes.len(), 19);
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
fn a_resting_order_holds_its_reservation_past_the_ttl() {
    let mut engine = ready_engine();
    engine
        .apply_report(&filled("f", "BUY", "40", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    approve(&mut engine, &limit_request("a", "BUY", "9", "99"), T0);
    // Execution has it: a limit order resting at the venue (it may fill any time).
    engine
        .apply_report(&report("a", "BUY", "ACCEPTED", "0", None))
        .unwrap();
    let later = T0 + 60_000 * MS;
    engine.apply_tick(&tick("BTC-USD", "100"), later);
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), later)),
        "max_position_notional"
    );
    // A re-check of the resting order keeps it held (and does not count it twice).
    approve(&mut engine, &limit_request("a", "BUY", "9", "99"), later);
    let much_later = later + 60_000 * MS;
    engine.apply_tick(&tick("BTC-USD", "100"), much_later);
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), much_later)),
        "max_position_notional"
    );
    // Its end frees the room.
    engine
        .apply_report(&report("a", "BUY", "CANCELLED", "0", None))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "9"), much_later)),
        "approved"
    );
}

#[test]
fn a_resting_reduce_only_sell_is_not_counted_as_reducing_twice() {
    let mut engine = ready_engine();
    engine
        .apply_report(&filled("f", "BUY", "10", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    let mut sell = limit_request("s1", "SELL", "10", "101");
    sell.reduce_only = true;
    approve(&mut engine, &sell, T0);
    engine
        .apply_report(&report("s1", "SELL", "ACCEPTED", "0", None))
        .unwrap();
    let later = T0 + 60_000 * MS;
    engine.apply_tick(&tick("BTC-USD", "100"), later);
    let mut again = limit_request("s2", "SELL", "10", "101");
    again.reduce_only = true;
    assert_ne!(code(&engine.check(&again, later)), "approved");
}

#[test]
fn daily_loss_makes_the_account_reduce_only() {
    let mut engine = no_breaker_engine();
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
    let state = engine
        .kill_switch_change(&kill("engage", false), T0 + 1)
        .unwrap()
        .expect("a change");
    assert!(!engine.kill_switch_state().engaged, "not applied yet");
    engine.set_kill_switch(state);
    let state = engine.kill_switch_state();
    assert_eq!(
        (
            state.engaged,
            state.actor.as_str(),
            state.reason.as_str(),
            state.changed_ts
        ),
        (true, "alice", "incident", T0 + 1)
    );
    assert_eq!(
        engine.kill_switch_change(&kill("engage", false), T0 + 2),
        Ok(None),
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
    // flatten goes with engage only; status changes nothing.
    let refusal = engine
        .kill_switch_change(&kill("release", true), T0)
        .unwrap_err();
    assert_eq!(refusal.code, "bad_request");
    assert_eq!(
        engine.kill_switch_change(&kill("status", false), T0),
        Ok(None)
    );
    // A second engage with flatten is a new action: a change, with the new actor.
    let mut again = kill("engage", true);
    again.actor = "bob".into();
    let state = engine.kill_switch_change(&again, T0 + 5).unwrap().unwrap();
    assert_eq!((state.actor.as_str(), state.changed_ts), ("bob", T0 + 5));
    let released = engine
        .kill_switch_change(&kill("release", false), T0 + 3)
        .unwrap()
        .unwrap();
    engine.set_kill_switch(released);
    assert!(!engine.kill_switch_state().engaged);
    assert_eq!(
        code(&engine.check(&request("d", "BUY", "1"), T0)),
        "approved"
    );
}

#[test]
fn flatten_waits_for_the_rebuild_engage_does_not() {
    let engine = Engine::new(settings(), T0);
    let refusal = engine
        .kill_switch_change(&kill("engage", true), T0)
        .unwrap_err();
    assert_eq!(refusal.code, "not_ready");
    assert!(engine
        .kill_switch_change(&kill("engage", false), T0)
        .unwrap()
        .is_some_and(|s| s.engaged));
}

#[test]
fn a_restart_restores_the_kill_switch_and_the_loss_latch() {
    let mut engine = Engine::new(settings(), T0);
    let engaged = KillSwitchState {
        engaged: true,
        actor: "alice".into(),
        reason: "before the restart".into(),
        changed_ts: T0 - 5,
        flatten_orders: None,
    };
    let today = LossLatch {
        breaches: vec!["max_daily_loss".into()],
        day: T0 / DAY,
        since_ts: T0 - 5,
    };
    engine.restore(Some(engaged.clone()), Some(today.clone()));
    engine.mark_ready(T0);
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    assert_eq!(engine.kill_switch_state(), engaged);
    assert_eq!(engine.loss_latch(), Some(&today));
    let account = engine.account(T0);
    assert_eq!(account.reasons, ["kill_switch", "max_daily_loss"]);
    // Yesterday's latch is over by the time risk is back.
    let mut engine = Engine::new(settings(), T0);
    let yesterday = LossLatch {
        day: T0 / DAY - 1,
        ..today
    };
    engine.restore(None, Some(yesterday));
    engine.mark_ready(T0);
    assert_eq!(engine.loss_latch(), None);
    assert_eq!(engine.account(T0).state, TradingState::Active);
}

#[test]
fn flatten_closes_what_the_orders_in_flight_do_not() {
    let mut engine = ready_engine();
    let eth = |mut r: ExecutionReport| {
        r.symbol = Some(sym("ETH-USD"));
        r
    };
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine.apply_tick(&tick("ETH-USD", "30"), T0);
    engine
        .apply_report(&filled("f1", "BUY", "5", "100"))
        .unwrap();
    engine
        .apply_report(&eth(filled("f2", "SELL", "2", "31")))
        .unwrap();
    // SOL-USDC traded and closed: nothing to flatten there.
    let mut sol = filled("f3", "BUY", "1", "150");
    sol.symbol = Some(sym("SOL-USDC"));
    engine.apply_report(&sol).unwrap();
    let mut sol_close = filled("f4", "SELL", "1", "150");
    sol_close.symbol = Some(sym("SOL-USDC"));
    engine.apply_report(&sol_close).unwrap();
    // A sell of 1 BTC already in flight.
    approve(&mut engine, &request("in-flight", "SELL", "1"), T0);
    let state = engine
        .kill_switch_change(&kill("engage", true), T0 + 7)
        .unwrap()
        .unwrap();
    engine.set_kill_switch(state);
    let venue: Venue = "sim".parse().unwrap();
    let orders = engine.flatten_orders(&venue, T0 + 7);
    let summary: Vec<(String, Side, Decimal)> = orders
        .iter()
        .map(|o| (o.symbol.to_string(), o.side, o.quantity.get()))
        .collect();
    assert_eq!(
        summary,
        [
            ("BTC-USD".to_string(), Side::Sell, d("4")),
            ("ETH-USD".to_string(), Side::Buy, d("2"))
        ]
    );
    let btc = &orders[0];
    assert_eq!(
        btc.client_order_id,
        format!("ks-{}-BTC-USD", T0 + 7).as_str()
    );
    assert_eq!(
        (btc.agent.as_str(), btc.venue.as_str(), btc.order_type),
        ("killswitch", "sim", OrderType::Market)
    );
    assert!(btc.reduce_only && btc.limit_price.is_none());
    assert_eq!(btc.decision_price.map(|p| p.get()), Some(d("100")));
    assert_eq!((btc.origin_ts, btc.ts), (T0 + 7, T0 + 7));
    btc.validate().unwrap();
    // With the kill switch engaged, execution's check of each passes.
    for order in &orders {
        let check: RiskCheckRequest = serde_json::from_value(json!({
            "client_order_id": order.client_order_id, "agent": order.agent,
            "symbol": order.symbol, "venue": order.venue, "side": order.side,
            "type": "MARKET", "quantity": order.quantity, "reduce_only": true, "ts": T0 + 8,
        }))
        .unwrap();
        assert_eq!(code(&engine.check(&check, T0 + 8)), "approved");
    }
    // Everything closing is in flight now: a second flatten has nothing left to send.
    assert!(engine.flatten_orders(&venue, T0 + 9).is_empty());
}

#[test]
fn open_orders_count_resting_and_in_flight_orders_once() {
    let mut config = RiskConfig {
        max_open_orders: 3,
        ..RiskConfig::default()
    };
    config.max_open_orders_per_symbol = 3;
    let mut engine = Engine::new(
        Settings::from_parts(config, SystemConfig::default()).unwrap(),
        T0,
    );
    engine.mark_ready(T0);
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    // Approved (in flight), then ACCEPTED by the venue (resting): one order, not two.
    approve(&mut engine, &limit_request("a", "BUY", "1", "99"), T0);
    engine
        .apply_report(&report("a", "BUY", "ACCEPTED", "0", None))
        .unwrap();
    approve(&mut engine, &limit_request("b", "BUY", "1", "99"), T0);
    approve(&mut engine, &limit_request("c", "BUY", "1", "99"), T0);
    assert_eq!(
        code(&engine.check(&request("d", "BUY", "1"), T0)),
        "max_open_orders"
    );
    // A re-check of an open order does not count itself.
    assert_eq!(
        code(&engine.check(&limit_request("c", "BUY", "1", "99"), T0)),
        "approved"
    );
    // The resting order outlives its reservation's TTL: still open.
    let later = T0 + 11_000 * MS;
    engine.apply_tick(&tick("BTC-USD", "100"), later);
    approve(&mut engine, &request("e", "BUY", "1"), later);
    approve(&mut engine, &request("f", "BUY", "1"), later);
    assert_eq!(
        code(&engine.check(&request("g", "BUY", "1"), later)),
        "max_open_orders"
    );
    engine
        .apply_report(&report("a", "BUY", "CANCELLED", "0", None))
        .unwrap();
    assert_eq!(
        code(&engine.check(&request("g", "BUY", "1"), later)),
        "approved"
    );
}

#[test]
fn the_circuit_breaker_halts_the_symbol_in_its_verdict() {
    let mut engine = ready_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine.apply_tick(&tick("ETH-USD", "3000"), T0);
    engine
        .apply_report(&filled("f", "BUY", "2", "100"))
        .unwrap();
    assert!(
        engine.apply_tick(&tick("BTC-USD", "94"), T0 + 30_000 * MS),
        "a trip is a change"
    );
    let now = T0 + 31_000 * MS;
    engine.apply_tick(&tick("ETH-USD", "3000"), now);
    engine.apply_tick(&tick("BTC-USD", "94"), now);
    let verdicts = engine.verdicts(now);
    let btc = verdicts.iter().find(|v| v.symbol == "BTC-USD").unwrap();
    assert_eq!(btc.state, TradingState::Halted);
    assert_eq!(btc.reasons, ["circuit_breaker"]);
    assert_eq!(btc.halted_until, Some(T0 + 330_000 * MS));
    assert!(
        btc.detail.contains("BTC-USD moved -6% within 60 s"),
        "{}",
        btc.detail
    );
    let eth = verdicts.iter().find(|v| v.symbol == "ETH-USD").unwrap();
    assert_eq!((eth.state, eth.halted_until), (TradingState::Active, None));
    // Nothing new in BTC-USD; closing the position is allowed.
    let refused = engine.check(&request("a", "BUY", "1"), now);
    assert_eq!(code(&refused), "circuit_breaker");
    assert!(refused.reason.unwrap().contains("halted for 300 s"));
    assert_eq!(
        code(&engine.check(&request("b", "SELL", "2"), now)),
        "approved"
    );
    // After the halt, on a calm market: active again.
    let after = T0 + 330_000 * MS;
    engine.apply_tick(&tick("BTC-USD", "94.1"), after);
    let btc = engine
        .verdicts(after)
        .into_iter()
        .find(|v| v.symbol == "BTC-USD")
        .unwrap();
    assert_eq!(
        (btc.state, btc.halted_until, btc.detail.as_str()),
        (TradingState::Active, None, "")
    );
}

#[test]
fn a_tripped_loss_limit_stays_latched_until_released() {
    let mut engine = no_breaker_engine();
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    lose_the_daily_limit(&mut engine);
    assert_eq!(engine.account(T0).state, TradingState::ReduceOnly);
    // A small bounce: day PnL -495, under the limit again. Still reduce-only.
    engine.apply_tick(&tick("BTC-USD", "89"), T0 + MS);
    let account = engine.account(T0 + MS);
    assert_eq!(account.day_pnl.get(), d("-495"));
    assert_eq!(
        (account.state, account.reasons),
        (TradingState::ReduceOnly, vec!["max_daily_loss".to_string()])
    );
    assert_eq!(
        code(&engine.check(&request("a", "BUY", "1"), T0 + MS)),
        "account_reduce_only"
    );
    let verdict = &engine.verdicts(T0 + MS)[0];
    assert!(
        verdict.detail.contains("max_daily_loss latched since"),
        "{}",
        verdict.detail
    );
    // Released by an operator while still breached: latched again at once.
    engine.apply_tick(&tick("BTC-USD", "88"), T0 + 2 * MS);
    assert_eq!(engine.release_loss_latch(T0 + 2 * MS), ["max_daily_loss"]);
    assert_eq!(engine.account(T0 + 2 * MS).state, TradingState::ReduceOnly);
    // Released after the bounce: trading resumes.
    engine.apply_tick(&tick("BTC-USD", "89"), T0 + 3 * MS);
    engine.release_loss_latch(T0 + 3 * MS);
    assert_eq!(engine.loss_latch(), None);
    assert_eq!(engine.account(T0 + 3 * MS).state, TradingState::Active);
    assert_eq!(
        code(&engine.check(&request("b", "BUY", "1"), T0 + 3 * MS)),
        "approved"
    );
    // Or wait for the next UTC day.
    engine.apply_tick(&tick("BTC-USD", "88"), T0 + 4 * MS);
    assert!(engine.loss_latch().is_some());
    engine.apply_tick(&tick("BTC-USD", "89"), T0 + 5 * MS);
    assert_eq!(engine.account(T0 + 5 * MS).state, TradingState::ReduceOnly);
    engine.heartbeat(T0 + DAY);
    assert_eq!(engine.loss_latch(), None);
    assert_eq!(engine.account(T0 + DAY).state, TradingState::Active);
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

/// A snapshot, then the tail, gives the very state the whole history gives; a duplicate
/// of a report before the snapshot is still skipped after it.
#[test]
fn snapshot_plus_tail_equals_the_whole_history() {
    let history = [
        filled("a", "BUY", "0.01", "97000"),
        report(
            "b",
            "BUY",
            "PARTIALLY_FILLED",
            "0.01",
            Some(("0.01", "97100", "0.1")),
        ),
        report("c", "SELL", "ACCEPTED", "0", None),
        filled("d", "SELL", "0.005", "98000"),
        report("b", "BUY", "FILLED", "0.02", Some(("0.01", "97200", "0.1"))),
    ];
    for cut in 0..=history.len() {
        let mut whole = Engine::new(settings(), T0);
        for r in &history {
            whole.apply_report(r).unwrap();
        }
        let mut before = Engine::new(settings(), T0);
        assert!(before
            .check(&request("r1", "BUY", "0.001"), T0)
            .reason_code
            .is_some());
        for r in &history[..cut] {
            before.apply_report(r).unwrap();
        }
        let json = serde_json::to_vec(&before.snapshot_state()).unwrap();
        let mut after = Engine::new(settings(), T0);
        after
            .restore_state(serde_json::from_slice(&json).unwrap())
            .unwrap();
        if cut > 0 {
            assert_eq!(
                after.apply_report(&history[0]).unwrap(),
                ReportEffect::Duplicate
            );
        }
        for r in &history[cut..] {
            after.apply_report(r).unwrap();
        }
        let sorted = |engine: &Engine| {
            let mut state = engine.snapshot_state();
            state
                .applied
                .sort_by_cached_key(|(id, s, q)| (id.to_string(), s.to_string(), q.get()));
            state
        };
        assert_eq!(sorted(&after), sorted(&whole), "cut at {cut}");
        whole.mark_ready(T0);
        after.mark_ready(T0);
        assert_eq!(
            serde_json::to_value(after.account(T0)).unwrap(),
            serde_json::to_value(whole.account(T0)).unwrap()
        );
        assert_eq!(after.positions(None), whole.positions(None));
    }
}

#[test]
fn a_changed_starting_cash_shifts_the_restored_books() {
    let mut engine = ready_engine();
    engine
        .apply_report(&filled("a", "BUY", "0.01", "97000"))
        .unwrap();
    let state = engine.snapshot_state();
    let mut richer = settings();
    richer.starting_cash = d("12000");
    let mut restored = Engine::new(richer, T0);
    restored.restore_state(state).unwrap();
    assert_eq!(restored.ledger.cash, d("12000") - d("970"));
    assert_eq!(restored.snapshot_state().peak_equity.0, d("12000"));
}

#[test]
fn fail_closed_refuses_every_check_with_the_reason() {
    let mut engine = ready_engine();
    engine.fail_closed("EXEC starts at 9".into());
    let result = engine.check(&request("x", "SELL", "0.001"), T0);
    assert!(!result.approved);
    assert_eq!(result.reason_code.as_deref(), Some(UNAVAILABLE));
    assert_eq!(result.reason.as_deref(), Some("EXEC starts at 9"));
    assert_eq!(result.state, TradingState::Halted);
    let account = engine.account(T0);
    assert_eq!(account.state, TradingState::Halted);
    assert!(account.reasons.contains(&UNAVAILABLE.to_string()));
}

/// Not a check: the size of a snapshot after 100,000 orders (two reports each), printed.
/// The reports applied are remembered while a resent one could still come: a final
/// order for as long as ORDERS keeps an order, an open one for as long as it is open.
#[test]
fn final_orders_are_forgotten_a_week_after_they_ended() {
    let mut engine = Engine::new(settings(), T0);
    engine.mark_ready(T0);
    let resting = report("resting", "BUY", "ACCEPTED", "0", None);
    engine.apply_report_at(&resting, T0).unwrap();
    // An order filled every 6 hours for 10 days.
    let at = |n: u64| T0 + n * DAY / 4;
    for n in 0..40 {
        let fill = filled(&format!("o{n}"), "BUY", "0.001", "97000");
        assert_eq!(
            engine.apply_report_at(&fill, at(n)),
            Ok(ReportEffect::Applied)
        );
    }
    let state = engine.snapshot_state();
    // The last 7 days (28 fills, and the one exactly a week before the last) and the
    // resting order, however old.
    let mut kept: Vec<_> = state
        .applied
        .iter()
        .map(|(id, _, _)| id.to_string())
        .collect();
    kept.sort_by_key(|id| id.trim_start_matches('o').parse::<u64>().unwrap_or(0));
    assert_eq!(kept.len(), 30, "{kept:?}");
    assert_eq!((kept[0].as_str(), kept[1].as_str()), ("resting", "o11"));
    let finals = state.applied_finals.clone().unwrap();
    assert_eq!(finals.len(), 29);
    assert!(finals.windows(2).all(|w| w[0].1 <= w[1].1), "oldest first");

    // A report of a remembered order sent again is still not booked twice, and the
    // restored engine forgets on the same schedule.
    let quantity = |e: &Engine| e.ledger.quantity("BTC-USD");
    let before = quantity(&engine);
    // (o11 ended exactly 7 days before the last fill: still remembered then.)
    let again = filled("o11", "BUY", "0.001", "97000");
    assert_eq!(
        engine.apply_report_at(&again, at(39)),
        Ok(ReportEffect::Duplicate)
    );
    assert_eq!(quantity(&engine), before);
    let json = serde_json::to_vec(&state).unwrap();
    let mut restored = Engine::new(settings(), T0);
    restored
        .restore_state(serde_json::from_slice(&json).unwrap())
        .unwrap();
    restored.mark_ready(at(39));
    assert_eq!(
        restored.apply_report_at(&again, at(39)),
        Ok(ReportEffect::Duplicate)
    );
    // Past its horizon (and before anything else moved the clock), an id used again is
    // a new order (execution ran it again: its ledger forgets a week later than this),
    // booked, not taken for the forgotten one.
    let before = quantity(&restored);
    assert_eq!(
        restored.apply_report_at(&again, at(40)),
        Ok(ReportEffect::Applied)
    );
    assert_eq!(quantity(&restored), before + d("0.001"));
    let later = filled("o40", "BUY", "0.001", "97000");
    restored.apply_report_at(&later, at(40) + 1).unwrap();
    let kept = restored.snapshot_state().applied;
    assert_eq!(kept.len(), 30, "o12 forgotten, o11 again, o40");
    assert!(!kept.iter().any(|(id, _, _)| id.as_str() == "o12"));
}

/// A snapshot written before the final orders were dated: they are dated by the first
/// report after the restore, and forgotten a week after it.
#[test]
fn a_snapshot_without_dates_dates_its_final_orders_at_the_next_report() {
    let mut engine = ready_engine();
    engine
        .apply_report_at(&filled("old", "BUY", "0.001", "97000"), T0)
        .unwrap();
    let mut old = serde_json::to_value(engine.snapshot_state()).unwrap();
    old.as_object_mut().unwrap().remove("applied_finals");
    let mut restored = Engine::new(settings(), T0);
    restored
        .restore_state(serde_json::from_value(old).unwrap())
        .unwrap();
    restored.mark_ready(T0);
    assert_eq!(restored.snapshot_state().applied_finals, None);
    let next = T0 + 30 * DAY;
    restored
        .apply_report_at(&filled("a", "BUY", "0.001", "97000"), next)
        .unwrap();
    assert_eq!(
        restored.snapshot_state().applied.len(),
        2,
        "dated now, not 30 days ago"
    );
    let ids = |e: &Engine| {
        let mut ids: Vec<_> = (e.snapshot_state().applied.iter())
            .map(|(id, _, _)| id.to_string())
            .collect();
        ids.sort();
        ids
    };
    let week = next + 7 * DAY;
    restored
        .apply_report_at(&filled("b", "BUY", "0.001", "97000"), week)
        .unwrap();
    assert_eq!(ids(&restored), ["a", "b", "old"]);
    restored
        .apply_report_at(&filled("c", "BUY", "0.001", "97000"), week + 1)
        .unwrap();
    assert_eq!(ids(&restored), ["b", "c"]);
}

/// `cargo test -p rust-risk --bin rust-risk snapshot_size -- --ignored --nocapture`
#[test]
#[ignore]
fn snapshot_size_after_many_orders() {
    let mut engine = ready_engine();
    for n in 0..100_000 {
        let id = format!("trd-{n:020}");
        engine
            .apply_report(&report(&id, "BUY", "ACCEPTED", "0", None))
            .unwrap();
        let side = if n % 2 == 0 { "BUY" } else { "SELL" };
        engine
            .apply_report(&filled(&id, side, "0.001", "97000"))
            .unwrap();
    }
    let started = std::time::Instant::now();
    let state = engine.snapshot_state();
    let copied = started.elapsed();
    let started = std::time::Instant::now();
    let json = serde_json::to_vec(&state).unwrap();
    let encoded = started.elapsed();
    let started = std::time::Instant::now();
    let mut restored = Engine::new(settings(), T0);
    restored
        .restore_state(serde_json::from_slice(&json).unwrap())
        .unwrap();
    println!(
        "100000 orders: snapshot {} bytes ({} chunks), copied on the engine task in {copied:?}, \
         encoded in {encoded:?} (beside it), decoded and restored in {:?}",
        json.len(),
        json.len().div_ceil(moonbus_common::snapshot::CHUNK_BYTES),
        started.elapsed()
    );
}

/// A tick with the sender's clock `ts` (market-data skewed or stepped).
fn tick_at(price: &str, ts: u64) -> Tick {
    let mut t = tick("BTC-USD", price);
    t.ts = ts;
    t
}

#[test]
fn marks_follow_receive_time_never_the_senders_clock() {
    const HOUR: u64 = 3_600_000 * MS;
    let mut engine = no_breaker_engine();
    // A tick dated an hour ahead, then ordinary ones: the last received is the mark.
    engine.apply_tick(&tick_at("150", T0 + HOUR), T0);
    engine.apply_tick(&tick_at("101", T0), T0 + 10 * MS);
    let mark = |engine: &Engine| engine.marks.get(&sym("BTC-USD")).map(|m| m.price);
    assert_eq!(mark(&engine), Some(d("101")));
    // market-data's clock steps back an hour: its ticks are fresh, orders pass.
    engine.apply_tick(&tick_at("102", T0 - HOUR), T0 + 20 * MS);
    assert_eq!(mark(&engine), Some(d("102")));
    let at = T0 + 4000 * MS;
    assert_eq!(
        code(&engine.check(&request("o1", "BUY", "1"), at)),
        "approved"
    );
    // Nothing received for longer than stale_after_ms (5 s), the last tick dated ahead:
    // stale, whatever its ts says.
    engine.apply_tick(&tick_at("103", T0 + HOUR), T0 + 5000 * MS);
    let late = T0 + 10_001 * MS;
    assert_eq!(
        code(&engine.check(&request("o2", "BUY", "1"), late)),
        "stale_market_data"
    );
}

/// Shorts (shorts.rs): on a spot venue a SELL needs what risk's fills there hold; the
/// paper venue and a perp take a sell-to-open; the symbol's long held on another venue
/// does not count on the spot one. And a short on the paper venue is booked and marked.
#[test]
fn a_sell_to_open_is_refused_on_spot_venues_only() {
    let mut settings = settings();
    settings.short_venues =
        crate::shorts::ShortVenues::from_kinds([("jup", "jupiter"), ("hl", "hyperliquid")])
            .unwrap();
    let mut engine = Engine::new(settings, T0);
    engine.mark_ready(T0);
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    let at = |venue: &str, id: &str, side: &str, quantity: &str| {
        let mut r = request(id, side, quantity);
        r.venue = Venue::try_from(venue.to_string()).unwrap();
        r
    };
    let refused = engine.check(&at("jup", "s1", "SELL", "1"), T0);
    assert_eq!(code(&refused), "short_not_allowed");
    assert!(
        refused
            .reason
            .as_deref()
            .unwrap()
            .contains("on jup (jupiter)"),
        "{refused:?}"
    );
    assert_eq!(
        code(&engine.check(&at("hl", "s2", "SELL", "1"), T0)),
        "approved"
    );
    assert_eq!(
        code(&engine.check(&at("sim", "s3", "SELL", "1"), T0)),
        "approved"
    );
    // Sells of s2 and s3 are in flight (reserved): release them by their terminal reports.
    for id in ["s2", "s3"] {
        engine
            .apply_report(&report(id, "SELL", "REJECTED", "0", None))
            .unwrap();
    }
    // 2 bought on the paper venue: the symbol is long 2, but jup holds none of it.
    engine
        .apply_report(&filled("b1", "BUY", "2", "100"))
        .unwrap();
    assert_eq!(
        code(&engine.check(&at("jup", "s4", "SELL", "1"), T0)),
        "short_not_allowed"
    );
    // 1.5 bought on jup: selling 1.5 there passes, 1.6 does not.
    let mut on_jup = filled("b2", "BUY", "1.5", "100");
    on_jup.venue = Some(Venue::try_from("jup".to_string()).unwrap());
    engine.apply_report(&on_jup).unwrap();
    assert_eq!(
        code(&engine.check(&at("jup", "s5", "SELL", "1.6"), T0)),
        "short_not_allowed"
    );
    assert_eq!(
        code(&engine.check(&at("jup", "s6", "SELL", "1.5"), T0)),
        "approved"
    );
    // s6 in flight: nothing more may be sold on jup.
    assert_eq!(
        code(&engine.check(&at("jup", "s7", "SELL", "0.1"), T0)),
        "short_not_allowed"
    );

    // A short on the paper venue: sold 5 at 100 from long 3.5 (flat first), marked at 90.
    engine
        .apply_report(&report(
            "s6",
            "SELL",
            "FILLED",
            "1.5",
            Some(("1.5", "100", "0")),
        ))
        .unwrap();
    engine
        .apply_report(&filled("s8", "SELL", "7", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "90"), T0);
    let p = &engine.positions(Some(&sym("BTC-USD")))[0];
    assert_eq!(
        (p.quantity.get(), p.unrealized_pnl.get()),
        (d("-5"), d("50"))
    );
}

#[test]
fn a_batch_of_ticks_ends_where_the_same_ticks_one_by_one_end() {
    let ticks = [
        tick("BTC-USD", "87.5"),
        tick("ETH-USD", "3000"),
        tick("SOL-USDC", "150"),
    ];
    let booked = || {
        let mut engine = no_breaker_engine();
        engine.apply_tick(&tick("BTC-USD", "100"), T0);
        engine
            .apply_report(&filled("f", "BUY", "40", "100"))
            .unwrap();
        engine
    };
    let mut one_by_one = booked();
    let moved: Vec<bool> = ticks.iter().map(|t| one_by_one.apply_tick(t, T0)).collect();
    let mut batched = booked();
    // Only BTC-USD is held: only its tick revalues the account.
    assert_eq!(batched.apply_ticks(&ticks, T0), moved);
    assert_eq!(moved, vec![true, false, false]);
    assert_eq!(batched.account(T0), one_by_one.account(T0));
    assert_eq!(batched.verdicts(T0), one_by_one.verdicts(T0));
    // The batch's end met the loss latch (day PnL -500).
    let account = batched.account(T0);
    assert_eq!(
        (account.state, account.reasons),
        (TradingState::ReduceOnly, vec!["max_daily_loss".to_string()])
    );
    assert!(batched.loss_latch().is_some());
}

/// `exposure_except` as it was: a scan of every reservation for each position, and each
/// position's quantity looked up by name.
fn exposure_by_scan(engine: &Engine, symbol: &Symbol) -> Decimal {
    let mut prices: HashMap<&Symbol, Decimal> = engine.reservations.checked_prices();
    for s in engine.ledger.positions.keys() {
        if let Some(price) = engine.valuation_price(s) {
            prices.insert(s, price);
        }
    }
    prices
        .into_iter()
        .filter(|(s, _)| *s != symbol)
        .map(|(s, price)| {
            rules::worst_case_quantity(
                engine.ledger.quantity(s.as_str()),
                engine.reservations.pending(s.as_str()),
            )
            .map_or(Decimal::MAX, |worst| worst.saturating_mul(price))
        })
        .fold(Decimal::ZERO, Decimal::saturating_add)
}

#[test]
fn the_exposure_of_the_other_symbols_is_what_a_scan_of_every_reservation_gives() {
    let mut engine = no_breaker_engine();
    let fill = |id: &str, symbol: &str, side: &str, quantity: &str, price: &str| {
        let mut report = filled(id, side, quantity, price);
        report.symbol = Some(sym(symbol));
        report
    };
    // BTC-USD long 2, marked at 110; ETH-USD short 3 with no tick (its fill price, 50,
    // values it); SOL-USDC only reserved; XRP-USD flat (bought and sold back) with a buy in
    // flight; ADA-USD unknown.
    engine.apply_tick(&tick("BTC-USD", "100"), T0);
    engine
        .apply_report(&fill("b", "BTC-USD", "BUY", "2", "100"))
        .unwrap();
    engine.apply_tick(&tick("BTC-USD", "110"), T0);
    engine
        .apply_report(&fill("e", "ETH-USD", "SELL", "3", "50"))
        .unwrap();
    engine
        .apply_report(&fill("x1", "XRP-USD", "BUY", "5", "2"))
        .unwrap();
    engine
        .apply_report(&fill("x2", "XRP-USD", "SELL", "5", "2"))
        .unwrap();
    let reserve = |engine: &mut Engine, id: &str, symbol: &str, quantity: &str, price: &str| {
        engine.reservations.reserve(
            id,
            Reservation {
                symbol: sym(symbol),
                agent: "trading".parse().unwrap(),
                quantity: d(quantity),
                price: d(price),
                expires_ns: T0 + DAY,
            },
        );
    };
    reserve(&mut engine, "r1", "BTC-USD", "1", "109");
    reserve(&mut engine, "r2", "BTC-USD", "-4", "109");
    reserve(&mut engine, "r3", "ETH-USD", "1", "51");
    reserve(&mut engine, "r4", "SOL-USDC", "10", "150");
    reserve(&mut engine, "r5", "SOL-USDC", "-2", "150");
    reserve(&mut engine, "r6", "XRP-USD", "7", "2");
    for symbol in ["BTC-USD", "ETH-USD", "SOL-USDC", "XRP-USD", "ADA-USD"] {
        let symbol = sym(symbol);
        assert_eq!(
            engine.exposure_except(&symbol),
            exposure_by_scan(&engine, &symbol),
            "{symbol}"
        );
    }
    // Worst cases: BTC max(|2+1|, |2-4|) = 3 x 110; ETH max(|-3+1|, |-3|) = 3 x 50; SOL
    // max(10, 2) = 10 x 150; XRP (flat) 7 x 2 at its fill price.
    assert_eq!(engine.exposure_except(&sym("ADA-USD")), d("1994"));
    assert_eq!(engine.exposure_except(&sym("SOL-USDC")), d("494"));
}

/// A report dated far ahead (execution's clock, or a stolen execution credential), in
/// the rebuild or once ready, must not move the UTC day: the next real day starts the
/// day's PnL again, so its loss trips max_daily_loss (else it was measured from the
/// equity of the day the report named, and a real day's loss passed unseen).
#[test]
fn a_report_dated_ahead_moves_no_day() {
    for ready_first in [true, false] {
        let mut engine = Engine::new(no_breaker_engine().settings.clone(), T0);
        if ready_first {
            engine.mark_ready(T0);
        }
        let mut ahead = report("ahead", "BUY", "ACCEPTED", "0", None);
        ahead.ts = T0 + 1000 * DAY;
        engine.apply_report_at(&ahead, T0 + MS).unwrap();
        engine.mark_ready(T0 + MS);
        // The day goes up 975: 39 bought at 100, marked 125.
        engine
            .apply_report_at(&filled("f", "BUY", "39", "100"), T0 + 2 * MS)
            .unwrap();
        engine.apply_tick(&tick("BTC-USD", "125"), T0 + 3 * MS);
        // The next real day starts at 10975 and loses 585.
        engine.heartbeat(T0 + DAY);
        engine.apply_tick(&tick("BTC-USD", "110"), T0 + DAY + MS);
        let account = engine.account(T0 + DAY + MS);
        assert_eq!(
            account.day_pnl.get(),
            d("-585"),
            "ready first: {ready_first}"
        );
        assert_eq!(account.state, TradingState::ReduceOnly);
        assert_eq!(
            code(&engine.check(&request("b", "BUY", "1"), T0 + DAY + 2 * MS)),
            "account_reduce_only"
        );
    }
}

#[test]
fn marks_of_made_up_symbols_stop_at_the_cap_and_stale_ones_make_room() {
    // BTC-USD and ETH-USD are configured; the cap is 4 marks.
    let mut engine = ready_engine().with_mark_cap(4);
    for symbol in ["BTC-USD", "ETH-USD", "AAA-USD", "BBB-USD"] {
        engine.apply_ticks(&[tick(symbol, "100")], T0);
    }
    // Full, nothing stale: the new symbol is refused, with the reason; no mark, no window.
    assert_eq!(engine.apply_ticks(&[tick("CCC-USD", "100")], T0), [false]);
    let refused = engine.take_refused();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0.symbol, sym("CCC-USD"));
    assert!(
        refused[0].1.contains("MAX_MARKET_SYMBOLS 4"),
        "{}",
        refused[0].1
    );
    assert!(!engine.marks.contains_key(&sym("CCC-USD")));
    assert!(engine.take_refused().is_empty(), "taken once");
    // A symbol already marked still updates.
    engine.apply_ticks(&[tick("AAA-USD", "101")], T0 + MS);
    assert_eq!(engine.marks[&sym("AAA-USD")].price, d("101"));

    // AAA-USD halts (a 20% move), then everything but it goes stale.
    engine.apply_ticks(&[tick("AAA-USD", "125")], T0 + 2 * MS);
    assert!(engine.breakers.halt(&sym("AAA-USD"), T0 + 2 * MS).is_some());
    let later = T0 + (engine.settings.stale_after_ms + 1) * MS + 2 * MS;
    // The stale BBB-USD makes room; configured symbols and the halted one are kept.
    assert_eq!(
        engine.apply_ticks(&[tick("CCC-USD", "100")], later).len(),
        1
    );
    assert!(engine.take_refused().is_empty());
    let mut marked: Vec<&str> = engine.marks.keys().map(|s| s.as_str()).collect();
    marked.sort();
    assert_eq!(marked, ["AAA-USD", "BTC-USD", "CCC-USD", "ETH-USD"]);
    assert!(engine.breakers.halt(&sym("AAA-USD"), later).is_some());

    // Full again and the sweep just ran: the next new symbol waits for the next second.
    engine.apply_ticks(&[tick("DDD-USD", "100")], later + MS);
    assert_eq!(engine.take_refused().len(), 1);
}

#[test]
fn a_held_symbol_is_marked_whatever_the_cap() {
    let mut engine = ready_engine().with_mark_cap(2);
    engine.apply_ticks(&[tick("BTC-USD", "100"), tick("ETH-USD", "100")], T0);
    let mut fill = filled("held-1", "BUY", "1", "100");
    fill.symbol = Some(sym("XYZ-USD"));
    assert_eq!(engine.apply_report(&fill), Ok(ReportEffect::Applied));
    engine.apply_ticks(&[tick("XYZ-USD", "101")], T0 + MS);
    assert!(engine.take_refused().is_empty());
    assert_eq!(engine.marks[&sym("XYZ-USD")].price, d("101"));
}
