//! The engine under the most extreme figures the contract lets in (money up to
//! 99999999999999.99999999999999 and down to 1e-28, on ticks, fills and checks, in any
//! order): no panic, every check answered (a refusal with a code), and everything risk
//! publishes (positions, account, verdicts, limits) readable by the contract's own
//! decoders. Proptest's default 256 cases (`PROPTEST_CASES` overrides).

use moonbus_common::config::SystemConfig;
use moonbus_common::{bus, PositionsReply, MONEY_MAX};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::config::RiskConfig;
use crate::ledger::strategies::money_text;

const T0: u64 = 1_764_130_000_000_000_000;
const SYMBOLS: [&str; 2] = ["BTC-USD", "ETH-USD"];

#[derive(Debug, Clone)]
enum Event {
    Tick {
        symbol: usize,
        price: String,
    },
    /// A tick of each symbol, found waiting together (`Engine::apply_ticks`).
    Ticks {
        prices: (String, String),
    },
    /// A FILLED report of `quantity` at `price` with `fee`.
    Fill {
        symbol: usize,
        buy: bool,
        quantity: String,
        price: String,
        fee: String,
    },
    Check {
        symbol: usize,
        buy: bool,
        quantity: String,
        limit: Option<String>,
        ref_price: Option<String>,
        reduce_only: bool,
    },
    Heartbeat,
    /// A live venue's status for the fills' venue: a position, cash and equity (recon.rs).
    VenueStatus {
        symbol: usize,
        quantity: String,
        cash: Option<String>,
        equity: Option<String>,
    },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (0..SYMBOLS.len(), money_text()).prop_map(|(symbol, price)| Event::Tick { symbol, price }),
        1 => (money_text(), money_text()).prop_map(|prices| Event::Ticks { prices }),
        3 => (0..SYMBOLS.len(), any::<bool>(), money_text(), money_text(), money_text()).prop_map(
            |(symbol, buy, quantity, price, fee)| Event::Fill { symbol, buy, quantity, price, fee },
        ),
        4 => (
            0..SYMBOLS.len(),
            any::<bool>(),
            money_text(),
            proptest::option::of(money_text()),
            proptest::option::of(money_text()),
            any::<bool>(),
        )
            .prop_map(|(symbol, buy, quantity, limit, ref_price, reduce_only)| Event::Check {
                symbol,
                buy,
                quantity,
                limit,
                ref_price,
                reduce_only,
            }),
        1 => Just(Event::Heartbeat),
        2 => (
            0..SYMBOLS.len(),
            money_text(),
            any::<bool>(),
            proptest::option::of(money_text()),
            proptest::option::of(money_text()),
        )
            .prop_map(|(symbol, quantity, short, cash, equity)| Event::VenueStatus {
                symbol,
                quantity: if short { format!("-{quantity}") } else { quantity },
                cash: cash.map(|c| format!("-{c}")),
                equity,
            }),
    ]
}

/// Limits off (as large as the contract allows), so that the extreme orders get as far
/// as the arithmetic; or the shipped defaults.
fn engine(wide_open: bool) -> Engine {
    let system = SystemConfig {
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
    };
    let mut config = RiskConfig::default();
    if wide_open {
        let max = NonNegativeMoney::new(MONEY_MAX).expect("in range");
        config.starting_cash = "99999999999999".parse().expect("in range");
        config.max_order_notional = max;
        config.max_position_notional = max;
        config.max_gross_exposure = max;
        config.min_cash = Money::new(-MONEY_MAX).expect("in range");
        config.max_daily_loss = max;
        config.max_drawdown_pct = 100.0;
        config.fee_bps = 10_000.0;
        config.rate_limit_agent = 0;
        config.rate_limit_global = 0;
        config.rate_limit_reduce_only = 0;
        config.max_open_orders = 0;
        config.max_open_orders_per_symbol = 0;
        config.price_band_pct = 0.0;
        config.circuit_breaker_pct = 0.0;
    }
    let mut engine = Engine::new(Settings::from_parts(config, system).unwrap(), T0);
    engine.mark_ready(T0);
    engine
}

/// What risk publishes must read back through the contract's decoders.
fn views_are_readable(engine: &Engine, now: u64) -> Result<(), TestCaseError> {
    let positions = bus::encode(&PositionsReply {
        positions: engine.positions(None),
        account: engine.account(now),
    });
    bus::decode::<PositionsReply>(&positions).map_err(TestCaseError::fail)?;
    for verdict in engine.verdicts(now) {
        bus::decode::<Verdict>(&bus::encode(&verdict)).map_err(TestCaseError::fail)?;
    }
    bus::decode::<RiskLimits>(&bus::encode(&engine.limits())).map_err(TestCaseError::fail)?;
    Ok(())
}

fn run(mut engine: Engine, events: &[Event]) -> Result<(), TestCaseError> {
    for (n, event) in events.iter().enumerate() {
        let now = T0 + n as u64 * 1_000_000;
        let side = |buy: bool| if buy { "BUY" } else { "SELL" };
        match event {
            Event::Tick { symbol, price } => {
                let tick: Tick = serde_json::from_value(json!({
                    "venue": "sim", "symbol": SYMBOLS[*symbol], "price": price, "seq": n, "ts": now,
                }))
                .expect("a valid tick");
                engine.apply_tick(&tick, now);
            }
            Event::Ticks { prices } => {
                let ticks: Vec<Tick> = [&prices.0, &prices.1]
                    .into_iter()
                    .zip(SYMBOLS)
                    .map(|(price, symbol)| {
                        serde_json::from_value(json!({
                            "venue": "sim", "symbol": symbol, "price": price, "seq": n, "ts": now,
                        }))
                        .expect("a valid tick")
                    })
                    .collect();
                engine.apply_ticks(&ticks, now);
            }
            Event::Fill {
                symbol,
                buy,
                quantity,
                price,
                fee,
            } => {
                let report: ExecutionReport = serde_json::from_value(json!({
                    "client_order_id": format!("f-{n}"), "agent": "trading",
                    "symbol": SYMBOLS[*symbol], "venue": "sim", "side": side(*buy),
                    "status": "FILLED", "quantity": quantity, "filled_quantity": quantity,
                    "last_fill_price": price, "last_fill_quantity": quantity,
                    "avg_fill_price": price, "fee": fee, "timings": {}, "ts": now,
                }))
                .expect("a valid report");
                if let Err(e) = engine.apply_report(&report) {
                    prop_assert!(e.starts_with("overflow: "), "{}", e);
                }
            }
            Event::Check {
                symbol,
                buy,
                quantity,
                limit,
                ref_price,
                reduce_only,
            } => {
                let mut request = json!({
                    "client_order_id": format!("c-{n}"), "agent": "trading",
                    "symbol": SYMBOLS[*symbol], "venue": "sim", "side": side(*buy),
                    "type": if limit.is_some() { "LIMIT" } else { "MARKET" },
                    "quantity": quantity, "reduce_only": reduce_only, "ts": now,
                });
                if let Some(limit) = limit {
                    request["limit_price"] = json!(limit);
                }
                if let Some(ref_price) = ref_price {
                    request["ref_price"] = json!(ref_price);
                }
                let request: RiskCheckRequest =
                    serde_json::from_value(request).expect("a valid request");
                let result = engine.check(&request, now);
                prop_assert!(result.validate().is_ok(), "{:?}", result);
                // What goes back to execution reads back.
                let wire = bus::encode(&result);
                prop_assert_eq!(
                    bus::decode::<RiskCheckResult>(&wire).map_err(TestCaseError::fail)?,
                    result
                );
            }
            Event::Heartbeat => engine.heartbeat(now),
            Event::VenueStatus {
                symbol,
                quantity,
                cash,
                equity,
            } => {
                let status: LiveVenueStatus = serde_json::from_value(json!({
                    "venue": "sim", "kind": "binance_futures", "mode": "testnet", "connected": true,
                    "account": {"cash": cash, "equity": equity,
                                "positions": [{"symbol": SYMBOLS[*symbol], "quantity": quantity}]},
                    "ts": now,
                }))
                .map_err(|e| TestCaseError::fail(format!("{e}: {quantity}")))?;
                let reconciliation = engine
                    .apply_venue_status(&status, now)
                    .expect("ready: reconciled");
                let wire = bus::encode(&reconciliation);
                prop_assert_eq!(
                    bus::decode::<Reconciliation>(&wire).map_err(TestCaseError::fail)?,
                    reconciliation
                );
            }
        }
        views_are_readable(&engine, now)?;
        // The kept totals are the sum of the books as they are now (nothing changed them
        // without revaluing), but for a full sum's rounding of a partial sum.
        let (kept, fresh) = (engine.totals(), engine.sum_totals());
        prop_assert!(
            kept.agrees_with(&fresh),
            "kept {:?}, summed {:?}",
            kept,
            fresh
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn extreme_figures_never_panic_and_every_answer_is_readable(
        wide_open in any::<bool>(),
        events in proptest::collection::vec(event(), 1..24),
    ) {
        run(engine(wide_open), &events)?;
    }
}

/// The attack, inside the contract's range: the largest quantity at the largest
/// price (1e28 notional) is refused with a code, and the engine approves the next order.
#[test]
fn the_largest_order_the_contract_admits_is_refused_and_the_next_one_passes() {
    let mut engine = engine(true);
    let max = "99999999999999.99999999999999";
    let tick: Tick = serde_json::from_value(json!({
        "venue": "sim", "symbol": "BTC-USD", "price": max, "seq": 1, "ts": T0,
    }))
    .unwrap();
    engine.apply_tick(&tick, T0);
    let request = |id: &str, quantity: &str| -> RiskCheckRequest {
        serde_json::from_value(json!({
            "client_order_id": id, "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
            "side": "BUY", "type": "MARKET", "quantity": quantity, "ts": T0,
        }))
        .unwrap()
    };
    let refused = engine.check(&request("huge", max), T0);
    assert!(!refused.approved);
    assert_eq!(
        refused.reason_code.as_deref(),
        Some("max_order_notional"),
        "{refused:?}"
    );
    let tiny = engine.check(&request("tiny", "0.0000000000000000000000000001"), T0);
    assert!(tiny.approved, "{tiny:?}");
    let ok = engine.check(&request("next", "0.5"), T0);
    assert!(ok.approved, "{ok:?}");
}

/// A fill risk cannot book (it would take a figure past 7.9e28) halts the account with
/// code `overflow`, and risk keeps answering.
#[test]
fn a_fill_that_cannot_be_booked_halts_the_account() {
    let mut engine = engine(true);
    let max = "99999999999999.99999999999999";
    let fill = |id: &str| -> ExecutionReport {
        serde_json::from_value(json!({
            "client_order_id": id, "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
            "side": "SELL", "status": "FILLED", "quantity": max, "filled_quantity": max,
            "last_fill_price": max, "last_fill_quantity": max, "avg_fill_price": max,
            "fee": "0", "timings": {}, "ts": T0,
        }))
        .unwrap()
    };
    // Each sale brings in ~1e28 cash; the eighth does not fit.
    let mut refused = None;
    for n in 0..10 {
        if let Err(e) = engine.apply_report(&fill(&format!("s-{n}"))) {
            refused = Some((n, e));
            break;
        }
    }
    let (n, error) = refused.expect("a fill past the range");
    assert!(n >= 7 && error.starts_with("overflow: "), "{n}: {error}");
    let account = engine.account(T0);
    assert_eq!(account.state, TradingState::Halted);
    assert!(
        account.reasons.contains(&"overflow".to_string()),
        "{account:?}"
    );
    let check: RiskCheckRequest = serde_json::from_value(json!({
        "client_order_id": "after", "agent": "trading", "symbol": "ETH-USD", "venue": "sim",
        "side": "BUY", "type": "MARKET", "quantity": "1", "ref_price": "1", "ts": T0,
    }))
    .unwrap();
    let result = engine.check(&check, T0);
    assert_eq!(
        result.reason_code.as_deref(),
        Some("overflow"),
        "{result:?}"
    );
    views_are_readable(&engine, T0).unwrap();
}
