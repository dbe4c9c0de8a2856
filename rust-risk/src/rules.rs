//! The pre-trade check: a fixed sequence of rules, the first failure wins. Pure: the
//! caller gathers everything the rules look at into a `Context`.

use rust_decimal::Decimal;

use crate::limits::Limits;
use crate::reservations::Pending;

/// What the account's limits allow (the kill switch is separate: it lets reducing
/// orders through even when the account is past a limit set to halt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Active,
    ReduceOnly,
    Halted,
}

#[derive(Debug, Clone)]
pub struct Order {
    /// > 0.
    pub quantity: Decimal,
    pub buy: bool,
    pub reduce_only: bool,
    /// The limit price, else the reference price execution sent; None = use the mark.
    pub price: Option<Decimal>,
}

#[derive(Debug, Clone, Copy)]
pub struct MarketData {
    pub price: Decimal,
    pub age_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub ready: bool,
    pub kill_switch: bool,
    pub gate: Gate,
    pub limits: &'a Limits,
    pub stale_after_ms: u64,
    pub fee_bps: Decimal,
    /// This symbol's position and what is in flight for it.
    pub position: Decimal,
    pub pending: Pending,
    pub market: Option<MarketData>,
    pub cash: Decimal,
    /// Notional of every buy in flight (all symbols).
    pub buys_in_flight: Decimal,
    /// Worst-case gross exposure of every other symbol.
    pub other_exposure: Decimal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Approval {
    /// The price the order was checked at, and its notional there.
    pub price: Decimal,
    pub notional: Decimal,
}

fn refuse(code: &'static str, reason: impl Into<String>) -> Result<Approval, Refusal> {
    Err(Refusal {
        code,
        reason: reason.into(),
    })
}

/// Does the order only shrink the position, even if every same-side order in flight
/// fills first? (A sell against a long of 10 with a sell of 8 in flight may sell 2.)
pub fn reduces(position: Decimal, pending: Pending, order: &Order) -> bool {
    let available = if order.buy && position.is_sign_negative() {
        -position - pending.buys
    } else if !order.buy && position.is_sign_positive() {
        position - pending.sells
    } else {
        Decimal::ZERO
    };
    !order.quantity.is_zero() && order.quantity <= available
}

/// The largest |position| the symbol can reach if the in-flight orders of one side fill.
pub fn worst_case_quantity(position: Decimal, pending: Pending) -> Decimal {
    (position + pending.buys)
        .abs()
        .max((position - pending.sells).abs())
}

pub fn check(ctx: &Context, order: &Order) -> Result<Approval, Refusal> {
    let limits = ctx.limits;
    if !ctx.ready {
        return refuse(
            "not_ready",
            "risk is still rebuilding its state from the EXEC stream",
        );
    }
    let reducing = reduces(ctx.position, ctx.pending, order);
    if ctx.kill_switch && !reducing {
        return refuse(
            "kill_switch",
            "the kill switch is engaged: only orders that reduce a position pass",
        );
    }
    match ctx.gate {
        Gate::Halted => {
            return refuse(
                "account_halted",
                "the account is past a loss limit and halted",
            )
        }
        Gate::ReduceOnly if !reducing => {
            return refuse(
                "account_reduce_only",
                "the account is past a loss limit: only orders that reduce a position pass",
            )
        }
        _ => {}
    }
    if order.reduce_only && !reducing {
        return refuse(
            "reduce_only_increases",
            format!(
                "reduce_only order would increase or flip the position {} (in flight: buys {}, sells {})",
                ctx.position, ctx.pending.buys, ctx.pending.sells
            ),
        );
    }
    let Some(market) = ctx.market else {
        return refuse("no_market_data", "no tick received for this symbol yet");
    };
    if market.age_ms > ctx.stale_after_ms {
        return refuse(
            "stale_market_data",
            format!(
                "latest tick is {} ms old (stale after {} ms)",
                market.age_ms, ctx.stale_after_ms
            ),
        );
    }
    let price = order.price.unwrap_or(market.price);
    let notional = order.quantity * price;
    if notional > limits.max_order_notional {
        return refuse(
            "max_order_notional",
            format!(
                "order notional {notional} exceeds max_order_notional {}",
                limits.max_order_notional
            ),
        );
    }
    // Closing risk must stay possible: the exposure and cash limits only stop growth.
    if !reducing {
        let mut pending = ctx.pending;
        let projected = if order.buy {
            pending.buys += order.quantity;
            ctx.position + pending.buys
        } else {
            pending.sells += order.quantity;
            ctx.position - pending.sells
        };
        let position_notional = projected.abs() * price;
        if position_notional > limits.max_position_notional {
            return refuse(
                "max_position_notional",
                format!(
                    "position after the order and those in flight would be {projected} ({position_notional}), over max_position_notional {}",
                    limits.max_position_notional
                ),
            );
        }
        let gross = ctx.other_exposure + worst_case_quantity(ctx.position, pending) * price;
        if gross > limits.max_gross_exposure {
            return refuse(
                "max_gross_exposure",
                format!(
                    "gross exposure would be {gross}, over max_gross_exposure {}",
                    limits.max_gross_exposure
                ),
            );
        }
        if order.buy {
            let buys = ctx.buys_in_flight + notional;
            let fee = buys * ctx.fee_bps / Decimal::from(10_000);
            let cash_after = ctx.cash - buys - fee;
            if cash_after < limits.min_cash {
                return refuse(
                    "min_cash",
                    format!(
                        "cash {} - buys in flight and this one {buys} - estimated fees {fee} = {cash_after}, under min_cash {}",
                        ctx.cash, limits.min_cash
                    ),
                );
            }
        }
    }
    Ok(Approval { price, notional })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::d;
    use crate::limits;

    fn ctx(limits: &Limits) -> Context<'_> {
        Context {
            ready: true,
            kill_switch: false,
            gate: Gate::Active,
            limits,
            stale_after_ms: 5000,
            fee_bps: d("10"),
            position: d("0"),
            pending: Pending::default(),
            market: Some(MarketData {
                price: d("100"),
                age_ms: 10,
            }),
            cash: d("10000"),
            buys_in_flight: d("0"),
            other_exposure: d("0"),
        }
    }

    fn buy(quantity: &str) -> Order {
        Order {
            quantity: d(quantity),
            buy: true,
            reduce_only: false,
            price: None,
        }
    }

    fn sell(quantity: &str) -> Order {
        Order {
            buy: false,
            ..buy(quantity)
        }
    }

    fn code(result: Result<Approval, Refusal>) -> &'static str {
        match result {
            Ok(_) => "approved",
            Err(refusal) => refusal.code,
        }
    }

    #[test]
    fn a_small_order_is_approved_at_the_mark() {
        let l = limits::sample();
        assert_eq!(
            check(&ctx(&l), &buy("2")),
            Ok(Approval {
                price: d("100"),
                notional: d("200")
            })
        );
    }

    #[test]
    fn not_ready_refuses_everything_first() {
        let l = limits::sample();
        let c = Context {
            ready: false,
            kill_switch: true,
            market: None,
            ..ctx(&l)
        };
        assert_eq!(code(check(&c, &buy("1"))), "not_ready");
        let reducing = Context {
            ready: false,
            position: d("5"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&reducing, &sell("1"))), "not_ready");
    }

    #[test]
    fn kill_switch_lets_only_reducing_orders_through() {
        let l = limits::sample();
        let c = Context {
            kill_switch: true,
            position: d("3"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&c, &buy("1"))), "kill_switch");
        assert_eq!(
            code(check(&c, &sell("4"))),
            "kill_switch",
            "a flip is not a reduction"
        );
        assert_eq!(code(check(&c, &sell("3"))), "approved");
        let flat = Context {
            kill_switch: true,
            ..ctx(&l)
        };
        assert_eq!(code(check(&flat, &sell("1"))), "kill_switch");
    }

    #[test]
    fn account_gates() {
        let l = limits::sample();
        let halted = Context {
            gate: Gate::Halted,
            position: d("3"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&halted, &sell("1"))), "account_halted");
        let reduce_only = Context {
            gate: Gate::ReduceOnly,
            position: d("3"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&reduce_only, &buy("1"))), "account_reduce_only");
        assert_eq!(code(check(&reduce_only, &sell("1"))), "approved");
    }

    #[test]
    fn reduce_only_order_that_would_increase_or_flip() {
        let l = limits::sample();
        let c = Context {
            position: d("2"),
            ..ctx(&l)
        };
        let increase = Order {
            reduce_only: true,
            ..buy("1")
        };
        assert_eq!(code(check(&c, &increase)), "reduce_only_increases");
        let flip = Order {
            reduce_only: true,
            ..sell("2.5")
        };
        assert_eq!(code(check(&c, &flip)), "reduce_only_increases");
        let close = Order {
            reduce_only: true,
            ..sell("2")
        };
        assert_eq!(code(check(&c, &close)), "approved");
        // A sell of 1.5 already in flight leaves only 0.5 to reduce.
        let in_flight = Context {
            pending: Pending {
                buys: d("0"),
                sells: d("1.5"),
            },
            ..c
        };
        assert_eq!(code(check(&in_flight, &close)), "reduce_only_increases");
        let rest = Order {
            reduce_only: true,
            ..sell("0.5")
        };
        assert_eq!(code(check(&in_flight, &rest)), "approved");
    }

    #[test]
    fn market_data_missing_or_stale() {
        let l = limits::sample();
        let none = Context {
            market: None,
            ..ctx(&l)
        };
        assert_eq!(code(check(&none, &buy("1"))), "no_market_data");
        let stale = Context {
            market: Some(MarketData {
                price: d("100"),
                age_ms: 5001,
            }),
            ..ctx(&l)
        };
        assert_eq!(code(check(&stale, &buy("1"))), "stale_market_data");
        let edge = Context {
            market: Some(MarketData {
                price: d("100"),
                age_ms: 5000,
            }),
            ..ctx(&l)
        };
        assert_eq!(code(check(&edge, &buy("1"))), "approved");
    }

    #[test]
    fn max_order_notional_uses_limit_or_ref_price_before_the_mark() {
        let l = limits::sample();
        assert_eq!(code(check(&ctx(&l), &buy("10"))), "approved");
        assert_eq!(code(check(&ctx(&l), &buy("10.01"))), "max_order_notional");
        let priced = Order {
            price: Some(d("101")),
            ..buy("10")
        };
        assert_eq!(code(check(&ctx(&l), &priced)), "max_order_notional");
    }

    #[test]
    fn max_position_notional_counts_orders_in_flight() {
        let l = limits::sample();
        let c = Context {
            position: d("45"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&c, &buy("5"))), "approved");
        let in_flight = Context {
            pending: Pending {
                buys: d("1"),
                sells: d("0"),
            },
            ..c
        };
        let refusal = check(&in_flight, &buy("5")).unwrap_err();
        assert_eq!(refusal.code, "max_position_notional");
        assert!(refusal.reason.contains("51"), "{}", refusal.reason);
        // Short side: -45 with -6 more would be -51.
        let short = Context {
            position: d("-45"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&short, &sell("6"))), "max_position_notional");
        // Reducing an oversized position is always allowed.
        let big = Context {
            position: d("80"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&big, &sell("5"))), "approved");
    }

    #[test]
    fn max_gross_exposure_adds_other_symbols() {
        let l = limits::sample();
        let c = Context {
            other_exposure: d("19500"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&c, &buy("5"))), "approved");
        assert_eq!(code(check(&c, &buy("5.01"))), "max_gross_exposure");
    }

    #[test]
    fn min_cash_counts_buys_in_flight_and_the_fee() {
        let l = limits::sample();
        // 1000 cash - 800 in flight - 100 this buy - 0.9 fees = 99.1 < 100.
        let c = Context {
            cash: d("1000"),
            buys_in_flight: d("800"),
            ..ctx(&l)
        };
        let refusal = check(&c, &buy("1")).unwrap_err();
        assert_eq!(refusal.code, "min_cash");
        assert!(refusal.reason.contains("99.1"), "{}", refusal.reason);
        let enough = Context {
            cash: d("1000.9"),
            ..c.clone()
        };
        assert_eq!(code(check(&enough, &buy("1"))), "approved");
        // Selling brings cash in: never refused for cash.
        assert_eq!(code(check(&c, &sell("1"))), "approved");
    }

    #[test]
    fn rules_run_in_the_documented_order() {
        let l = limits::sample();
        // Everything is wrong at once: the kill switch is reported, not the rest.
        let c = Context {
            kill_switch: true,
            gate: Gate::Halted,
            market: None,
            cash: d("0"),
            ..ctx(&l)
        };
        let order = Order {
            reduce_only: true,
            ..buy("1000")
        };
        assert_eq!(code(check(&c, &order)), "kill_switch");
        let c = Context {
            kill_switch: false,
            ..c
        };
        assert_eq!(code(check(&c, &order)), "account_halted");
        let c = Context {
            gate: Gate::Active,
            ..c
        };
        assert_eq!(code(check(&c, &order)), "reduce_only_increases");
        let order = Order {
            reduce_only: false,
            ..order
        };
        assert_eq!(code(check(&c, &order)), "no_market_data");
        let c = Context {
            market: Some(MarketData {
                price: d("100"),
                age_ms: 0,
            }),
            ..c
        };
        assert_eq!(code(check(&c, &order)), "max_order_notional");
        let order = buy("10");
        let c = Context {
            position: d("45"),
            ..c
        };
        assert_eq!(code(check(&c, &order)), "max_position_notional");
        let c = Context {
            position: d("0"),
            other_exposure: d("19500"),
            ..c
        };
        assert_eq!(code(check(&c, &order)), "max_gross_exposure");
        let c = Context {
            other_exposure: d("0"),
            ..c
        };
        assert_eq!(code(check(&c, &order)), "min_cash");
    }
}
