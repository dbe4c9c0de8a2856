//! The pre-trade check: a fixed sequence of rules, the first failure wins. Pure: the
//! caller gathers everything the rules look at into a `Context`.
//!
//! Every sum and product is checked: a figure beyond the exact decimal range
//! (7.9e28) is a refusal with code `overflow`, never a panic. Money read from the bus
//! is below 1e14 (the contract), so one product cannot overflow; sums over many
//! orders in flight, and inputs that did not come through the contract, can.

#[cfg(test)]
use moonbus_common::MONEY_MAX;
use moonbus_common::{LiveVenueKind, MONEY_LIMIT};
use rust_decimal::Decimal;

use crate::breaker::Halt;
use crate::limits::Limits;
use crate::reservations::Pending;
use crate::shorts::SHORT_NOT_ALLOWED;

/// The order-flow guards of [risk] (fixed at start; 0 = off).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderGuards {
    /// Percent from the mark a LIMIT order may reach on its aggressive side.
    pub price_band_pct: Decimal,
    pub max_open_orders: u64,
    pub max_open_orders_per_symbol: u64,
    /// One agent's share of max_open_orders: no agent can take all of it and so lock
    /// the others out (the agent is its NATS credential: SECURITY.md).
    pub max_open_orders_per_agent: u64,
}

/// Orders open now (in flight or resting), not counting the one being checked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpenOrderCounts {
    pub account: u64,
    pub symbol: u64,
    /// The checked order's agent's.
    pub agent: u64,
}

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
    /// Set for a LIMIT order only: the price band applies to it.
    pub limit_price: Option<Decimal>,
}

#[derive(Debug, Clone, Copy)]
pub struct MarketData {
    pub price: Decimal,
    pub age_ms: u64,
}

/// The venue the order goes to, as the short rule sees it (shorts.rs).
#[derive(Debug, Clone, Copy)]
pub struct VenueView<'a> {
    pub name: &'a str,
    /// Its live kind (None: the paper venue).
    pub kind: Option<LiveVenueKind>,
    /// Whether the venue can hold a short (paper and perps can, spot cannot).
    pub allows_short: bool,
    /// What risk's fills on this venue hold of the symbol (its books per venue).
    pub held: Decimal,
}

#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub ready: bool,
    pub kill_switch: bool,
    pub gate: Gate,
    pub limits: &'a Limits,
    pub guards: &'a OrderGuards,
    /// The circuit breaker's halt of this symbol, if one is in force.
    pub halt: Option<&'a Halt>,
    pub open_orders: OpenOrderCounts,
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
    pub venue: VenueView<'a>,
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
    /// It only shrinks a position (the reduce-only rate budget applies).
    pub reducing: bool,
}

fn refuse(code: &'static str, reason: impl Into<String>) -> Result<Approval, Refusal> {
    Err(Refusal {
        code,
        reason: reason.into(),
    })
}

/// The refusal of a figure that does not fit an exact decimal.
pub const OVERFLOW: &str = "overflow";

/// `value`, or an `overflow` refusal naming `what` overflowed.
fn checked(value: Option<Decimal>, what: &str) -> Result<Decimal, Refusal> {
    value.ok_or_else(|| Refusal {
        code: OVERFLOW,
        reason: format!("{what} is beyond the exact decimal range (|x| < 7.9e28): refused"),
    })
}

/// Does the order only shrink the position, even if every same-side order in flight
/// fills first? (A sell against a long of 10 with a sell of 8 in flight may sell 2.)
pub fn reduces(position: Decimal, pending: Pending, order: &Order) -> bool {
    let available = if order.buy && position.is_sign_negative() {
        (-position).checked_sub(pending.buys)
    } else if !order.buy && position.is_sign_positive() {
        position.checked_sub(pending.sells)
    } else {
        None
    };
    // Beyond the decimal range counts as not reducing: the order meets every rule.
    let available = available.unwrap_or(Decimal::ZERO);
    !order.quantity.is_zero() && order.quantity <= available
}

/// The largest |position| the symbol can reach if the in-flight orders of one side
/// fill; `None` if that is beyond the decimal range.
pub fn worst_case_quantity(position: Decimal, pending: Pending) -> Option<Decimal> {
    let long = position.checked_add(pending.buys)?;
    let short = position.checked_sub(pending.sells)?;
    Some(long.abs().max(short.abs()))
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
                "a loss limit tripped and the account is halted (latched until the UTC day \
                 rolls over or an operator releases it)",
            )
        }
        Gate::ReduceOnly if !reducing => {
            return refuse(
                "account_reduce_only",
                "a loss limit tripped: only orders that reduce a position pass (latched until \
                 the UTC day rolls over or an operator releases it)",
            )
        }
        _ => {}
    }
    if let Some(halt) = ctx.halt.filter(|_| !reducing) {
        return refuse(
            "circuit_breaker",
            format!("{}: only orders that reduce a position pass", halt.detail),
        );
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
    if let Some(refusal) = short_on_spot(ctx, order) {
        return Err(refusal);
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
    if let Some(refusal) = price_band(ctx.guards.price_band_pct, market.price, order) {
        return Err(refusal);
    }
    let price = order.price.unwrap_or(market.price);
    let notional = checked(order.quantity.checked_mul(price), "the order notional")?;
    // A reducing order can at most close the position, which the position limit
    // already bounds: a mass close (kill switch flatten) is never split or refused.
    if !reducing && notional > limits.max_order_notional {
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
            pending.buys = checked(pending.buys.checked_add(order.quantity), "buys in flight")?;
            ctx.position.checked_add(pending.buys)
        } else {
            pending.sells = checked(pending.sells.checked_add(order.quantity), "sells in flight")?;
            ctx.position.checked_sub(pending.sells)
        };
        let projected = checked(projected, "the projected position")?;
        // Positions are money on the bus (risk.api.positions, verdicts): one that could
        // not be written is refused before it exists.
        if projected.abs() >= MONEY_LIMIT {
            return refuse(
                OVERFLOW,
                format!(
                    "position after the order and those in flight would be {projected}, beyond the \
                     contract's money range (|x| < 1e14)"
                ),
            );
        }
        let position_notional =
            checked(projected.abs().checked_mul(price), "the position notional")?;
        if position_notional > limits.max_position_notional {
            return refuse(
                "max_position_notional",
                format!(
                    "position after the order and those in flight would be {projected} ({position_notional}), over max_position_notional {}",
                    limits.max_position_notional
                ),
            );
        }
        let worst = checked(
            worst_case_quantity(ctx.position, pending),
            "the worst-case position",
        )?;
        let gross = checked(
            worst
                .checked_mul(price)
                .and_then(|own| own.checked_add(ctx.other_exposure)),
            "the gross exposure",
        )?;
        if gross > limits.max_gross_exposure {
            return refuse(
                "max_gross_exposure",
                format!(
                    "gross exposure would be {gross}, over max_gross_exposure {}",
                    limits.max_gross_exposure
                ),
            );
        }
        let guards = ctx.guards;
        if guards.max_open_orders_per_agent > 0
            && ctx.open_orders.agent >= guards.max_open_orders_per_agent
        {
            return refuse(
                "max_open_orders_agent",
                format!(
                    "{} orders of this agent open already, max_open_orders_per_agent {}",
                    ctx.open_orders.agent, guards.max_open_orders_per_agent
                ),
            );
        }
        if guards.max_open_orders > 0 && ctx.open_orders.account >= guards.max_open_orders {
            return refuse(
                "max_open_orders",
                format!(
                    "{} orders open (in flight or resting) already, max_open_orders {}",
                    ctx.open_orders.account, guards.max_open_orders
                ),
            );
        }
        if guards.max_open_orders_per_symbol > 0
            && ctx.open_orders.symbol >= guards.max_open_orders_per_symbol
        {
            return refuse(
                "max_open_orders_symbol",
                format!(
                    "{} orders open for this symbol already, max_open_orders_per_symbol {}",
                    ctx.open_orders.symbol, guards.max_open_orders_per_symbol
                ),
            );
        }
        if order.buy {
            let buys = checked(
                ctx.buys_in_flight.checked_add(notional),
                "the buys in flight",
            )?;
            let fee = checked(
                buys.checked_mul(ctx.fee_bps)
                    .and_then(|x| x.checked_div(Decimal::from(10_000))),
                "the estimated fees",
            )?;
            let cash_after = checked(
                ctx.cash.checked_sub(buys).and_then(|x| x.checked_sub(fee)),
                "the cash after the buys in flight",
            )?;
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
    Ok(Approval {
        price,
        notional,
        reducing,
    })
}

/// A sell-to-open on a venue that cannot hold a short (shorts.rs): a SELL must be covered
/// by what risk's fills on that venue hold of the symbol, less every sell of it in flight.
fn short_on_spot(ctx: &Context, order: &Order) -> Option<Refusal> {
    if order.buy || ctx.venue.allows_short {
        return None;
    }
    // Beyond the decimal range counts as nothing held: refused (fail closed).
    let covered = ctx
        .venue
        .held
        .checked_sub(ctx.pending.sells)
        .unwrap_or(Decimal::MIN);
    (order.quantity > covered).then(|| Refusal {
        code: SHORT_NOT_ALLOWED,
        reason: format!(
            "SELL {} would open or add to a short on {} ({}), a spot venue that cannot hold one: \
             risk's fills there hold {} of the symbol, sells in flight {} (shorts: the paper venue \
             and perps only)",
            order.quantity,
            ctx.venue.name,
            ctx.venue
                .kind
                .map_or("paper".to_string(), |k| k.to_string()),
            ctx.venue.held,
            ctx.pending.sells
        ),
    })
}

/// The fat-finger check: a LIMIT order priced more than `band_pct` past the mark on
/// its aggressive side (a BUY above, a SELL below) is refused. Only that side: a BUY
/// far below the market (or a SELL far above) just rests and cannot fill at a bad
/// price, while an aggressive one would cross the book up to its limit. The same
/// choice as exchange price banding (CME Globex bands bids above and offers below).
fn price_band(band_pct: Decimal, mark: Decimal, order: &Order) -> Option<Refusal> {
    let limit = order.limit_price?;
    if band_pct.is_zero() || mark.is_zero() {
        return None;
    }
    // The percentage off a tiny mark may not fit a decimal: then it is as far off as a
    // decimal goes, on the limit's side of the mark.
    let off_pct = limit
        .checked_sub(mark)
        .and_then(|x| x.checked_mul(Decimal::ONE_HUNDRED))
        .and_then(|x| x.checked_div(mark))
        .unwrap_or(if limit < mark {
            Decimal::MIN
        } else {
            Decimal::MAX
        });
    let aggressive = if order.buy { off_pct } else { -off_pct };
    (aggressive > band_pct).then(|| Refusal {
        code: "price_band",
        reason: format!(
            "{} limit {limit} is {}% {} the mark {mark}, past price_band_pct {band_pct} (fat finger?)",
            if order.buy { "BUY" } else { "SELL" },
            off_pct.abs().round_dp(2).normalize(),
            if order.buy { "above" } else { "below" },
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::d;
    use crate::limits;

    /// As in moonbus.toml: band 5%, 50 open orders, 10 per symbol.
    const GUARDS: OrderGuards = OrderGuards {
        price_band_pct: Decimal::from_parts(5, 0, 0, false, 0),
        max_open_orders: 50,
        max_open_orders_per_symbol: 10,
        max_open_orders_per_agent: 25,
    };

    fn ctx(limits: &Limits) -> Context<'_> {
        Context {
            ready: true,
            kill_switch: false,
            gate: Gate::Active,
            limits,
            guards: &GUARDS,
            halt: None,
            open_orders: OpenOrderCounts::default(),
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
            venue: VenueView {
                name: "sim",
                kind: None,
                allows_short: true,
                held: d("0"),
            },
        }
    }

    fn buy(quantity: &str) -> Order {
        Order {
            quantity: d(quantity),
            buy: true,
            reduce_only: false,
            price: None,
            limit_price: None,
        }
    }

    fn limit(order: Order, price: &str) -> Order {
        Order {
            price: Some(d(price)),
            limit_price: Some(d(price)),
            ..order
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
                notional: d("200"),
                reducing: false,
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

    /// On a spot venue (no shorts) a SELL must be covered by what the venue holds less the
    /// sells in flight; on paper and perps a sell-to-open passes as any risk-increasing order.
    #[test]
    fn a_sell_to_open_is_refused_on_a_spot_venue_only() {
        let l = limits::sample();
        let spot = |position: &str, held: &str| Context {
            position: d(position),
            venue: VenueView {
                name: "jup",
                kind: Some(LiveVenueKind::Jupiter),
                allows_short: false,
                held: d(held),
            },
            ..ctx(&l)
        };
        // Flat: a SELL would open a short.
        let refused = check(&spot("0", "0"), &sell("1")).unwrap_err();
        assert_eq!(refused.code, "short_not_allowed");
        assert!(
            refused.reason.contains("jup (jupiter)") && refused.reason.contains("SELL 1"),
            "{}",
            refused.reason
        );
        // Long 3 held there: selling 3 passes, 3.5 (a flip) does not; a BUY always may.
        assert_eq!(code(check(&spot("3", "3"), &sell("3"))), "approved");
        assert_eq!(
            code(check(&spot("3", "3"), &sell("3.5"))),
            "short_not_allowed"
        );
        assert_eq!(code(check(&spot("0", "0"), &buy("1"))), "approved");
        // The symbol is long 3, but held on another venue: nothing to sell here.
        assert_eq!(
            code(check(&spot("3", "0"), &sell("1"))),
            "short_not_allowed"
        );
        // Sells in flight count against what is held.
        let in_flight = Context {
            pending: Pending {
                buys: d("0"),
                sells: d("2.5"),
            },
            ..spot("3", "3")
        };
        assert_eq!(code(check(&in_flight, &sell("1"))), "short_not_allowed");
        assert_eq!(code(check(&in_flight, &sell("0.5"))), "approved");
        // Paper and perps: the same sell-to-open passes, and flips too.
        let hl = Some(LiveVenueKind::Hyperliquid);
        for (name, kind, position) in [("sim", None, "0"), ("hl", hl, "0"), ("hl", hl, "3")] {
            let c = Context {
                position: d(position),
                venue: VenueView {
                    name,
                    kind,
                    allows_short: true,
                    held: d(position),
                },
                ..ctx(&l)
            };
            assert_eq!(code(check(&c, &sell("5"))), "approved", "{name}");
        }
        // The short's size still meets the limits: max_order_notional (1000 at 100).
        let perp = Context {
            venue: VenueView {
                name: "hl",
                kind: hl,
                allows_short: true,
                held: d("0"),
            },
            ..ctx(&l)
        };
        assert_eq!(code(check(&perp, &sell("11"))), "max_order_notional");
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
        // Closing a position bigger than one order's notional is one order.
        let long = Context {
            position: d("40"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&long, &sell("40"))), "approved");
        assert_eq!(code(check(&long, &sell("41"))), "max_order_notional");
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
    fn price_band_refuses_only_the_aggressive_side() {
        let l = limits::sample();
        let c = Context {
            position: d("5"),
            ..ctx(&l)
        };
        // Mark 100, band 5%: a BUY may bid up to 105, a SELL offer down to 95.
        assert_eq!(code(check(&c, &limit(buy("1"), "105"))), "approved");
        let refusal = check(&c, &limit(buy("1"), "105.01")).unwrap_err();
        assert_eq!(refusal.code, "price_band");
        assert!(
            refusal
                .reason
                .contains("BUY limit 105.01 is 5.01% above the mark 100"),
            "{}",
            refusal.reason
        );
        assert_eq!(code(check(&c, &limit(sell("1"), "95"))), "approved");
        assert_eq!(code(check(&c, &limit(sell("1"), "94.99"))), "price_band");
        // The passive side rests and cannot fill at a bad price: not banded.
        assert_eq!(code(check(&c, &limit(buy("1"), "50"))), "approved");
        assert_eq!(code(check(&c, &limit(sell("1"), "200"))), "approved");
        // A reducing order is banded too: a fat-fingered close dumps the position.
        assert_eq!(code(check(&c, &limit(sell("5"), "60"))), "price_band");
        // Market orders (a ref_price is no limit) and a zero band are not checked.
        let market = Order {
            price: Some(d("300")),
            ..buy("1")
        };
        assert_eq!(code(check(&c, &market)), "approved");
        let off = OrderGuards {
            price_band_pct: Decimal::ZERO,
            ..GUARDS
        };
        let unbanded = Context { guards: &off, ..c };
        assert_eq!(code(check(&unbanded, &limit(buy("1"), "500"))), "approved");
    }

    #[test]
    fn circuit_breaker_halts_all_but_reducing_orders() {
        let l = limits::sample();
        let halt = Halt {
            until_ns: 99,
            detail: "circuit_breaker: BTC-USD moved -6%".into(),
        };
        let c = Context {
            halt: Some(&halt),
            position: d("2"),
            ..ctx(&l)
        };
        let refusal = check(&c, &buy("1")).unwrap_err();
        assert_eq!(refusal.code, "circuit_breaker");
        assert!(refusal.reason.contains("moved -6%"), "{}", refusal.reason);
        assert_eq!(
            code(check(&c, &sell("3"))),
            "circuit_breaker",
            "a flip adds risk"
        );
        assert_eq!(code(check(&c, &sell("2"))), "approved");
    }

    #[test]
    fn max_open_orders_account_and_symbol() {
        let l = limits::sample();
        let at = |account, symbol| Context {
            open_orders: OpenOrderCounts {
                account,
                symbol,
                agent: 0,
            },
            position: d("3"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&at(49, 9), &buy("1"))), "approved");
        let refusal = check(&at(50, 0), &buy("1")).unwrap_err();
        assert_eq!(refusal.code, "max_open_orders");
        assert!(
            refusal.reason.contains("50 orders open"),
            "{}",
            refusal.reason
        );
        assert_eq!(
            code(check(&at(10, 10), &buy("1"))),
            "max_open_orders_symbol"
        );
        // One agent's share: it cannot take the whole account's budget.
        let own = |agent| Context {
            open_orders: OpenOrderCounts {
                account: agent,
                symbol: 0,
                agent,
            },
            position: d("3"),
            ..ctx(&l)
        };
        assert_eq!(code(check(&own(24), &buy("1"))), "approved");
        let refusal = check(&own(25), &buy("1")).unwrap_err();
        assert_eq!(refusal.code, "max_open_orders_agent");
        assert!(
            refusal.reason.contains("25 orders of this agent"),
            "{}",
            refusal.reason
        );
        // Closing is never blocked by the count.
        assert_eq!(code(check(&at(50, 10), &sell("3"))), "approved");
        assert_eq!(code(check(&own(25), &sell("3"))), "approved");
        let off = OrderGuards {
            max_open_orders: 0,
            max_open_orders_per_symbol: 0,
            max_open_orders_per_agent: 0,
            ..GUARDS
        };
        let unlimited = Context {
            guards: &off,
            ..at(1000, 1000)
        };
        assert_eq!(code(check(&unlimited, &buy("1"))), "approved");
    }

    #[test]
    fn approval_says_whether_the_order_reduces() {
        let l = limits::sample();
        let c = Context {
            position: d("3"),
            ..ctx(&l)
        };
        assert!(check(&c, &sell("3")).unwrap().reducing);
        assert!(!check(&c, &buy("1")).unwrap().reducing);
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
        let halt = Halt {
            until_ns: 1,
            detail: "circuit_breaker".into(),
        };
        let c = Context {
            gate: Gate::Active,
            halt: Some(&halt),
            ..c
        };
        assert_eq!(code(check(&c, &order)), "circuit_breaker");
        let c = Context { halt: None, ..c };
        assert_eq!(code(check(&c, &order)), "reduce_only_increases");
        let order = Order {
            reduce_only: false,
            ..order
        };
        // A SELL on a spot venue that holds nothing: before the market data is looked at.
        let spot = Context {
            venue: VenueView {
                name: "jup",
                kind: Some(LiveVenueKind::Jupiter),
                allows_short: false,
                held: d("0"),
            },
            ..c.clone()
        };
        let sell = Order {
            buy: false,
            ..order.clone()
        };
        assert_eq!(code(check(&spot, &sell)), "short_not_allowed");
        assert_eq!(code(check(&c, &sell)), "no_market_data");
        assert_eq!(code(check(&c, &order)), "no_market_data");
        let c = Context {
            market: Some(MarketData {
                price: d("100"),
                age_ms: 0,
            }),
            ..c
        };
        assert_eq!(code(check(&c, &limit(buy("1000"), "200"))), "price_band");
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
            open_orders: OpenOrderCounts {
                account: 50,
                symbol: 10,
                agent: 25,
            },
            ..c
        };
        assert_eq!(code(check(&c, &order)), "max_open_orders_agent");
        let c = Context {
            open_orders: OpenOrderCounts {
                account: 50,
                symbol: 10,
                agent: 0,
            },
            ..c
        };
        assert_eq!(code(check(&c, &order)), "max_open_orders");
        let c = Context {
            open_orders: OpenOrderCounts {
                account: 0,
                symbol: 10,
                agent: 0,
            },
            ..c
        };
        assert_eq!(code(check(&c, &order)), "max_open_orders_symbol");
        let c = Context {
            open_orders: OpenOrderCounts::default(),
            ..c
        };
        assert_eq!(code(check(&c, &order)), "min_cash");
    }

    mod properties {
        use super::*;
        use crate::ledger::strategies::{any_decimal, positive_decimal};
        use proptest::prelude::*;

        /// Every code `check` may answer with.
        const CODES: &[&str] = &[
            "not_ready",
            "kill_switch",
            "account_halted",
            "account_reduce_only",
            "circuit_breaker",
            "reduce_only_increases",
            "short_not_allowed",
            "no_market_data",
            "stale_market_data",
            "price_band",
            "max_order_notional",
            "max_position_notional",
            "max_gross_exposure",
            "max_open_orders",
            "max_open_orders_symbol",
            "min_cash",
            OVERFLOW,
        ];

        fn any_limits() -> impl Strategy<Value = Limits> {
            (
                any_decimal(),
                any_decimal(),
                any_decimal(),
                any_decimal(),
                any_decimal(),
                0.0f64..=100.0,
            )
                .prop_map(|(order, position, gross, min_cash, loss, drawdown)| {
                    Limits {
                        max_order_notional: order.abs(),
                        max_position_notional: position.abs(),
                        max_gross_exposure: gross.abs(),
                        min_cash,
                        max_daily_loss: loss.abs(),
                        max_drawdown_pct: drawdown,
                    }
                })
        }

        fn any_order() -> impl Strategy<Value = Order> {
            (
                positive_decimal(),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(positive_decimal()),
                any::<bool>(),
            )
                .prop_map(|(quantity, buy, reduce_only, price, is_limit)| Order {
                    quantity,
                    buy,
                    reduce_only,
                    price,
                    limit_price: price.filter(|_| is_limit),
                })
        }

        /// Everything but the limits and guards, which `Context` borrows.
        #[derive(Debug, Clone)]
        struct Rest {
            gate: Gate,
            fee_bps: Decimal,
            position: Decimal,
            pending: Pending,
            market: Option<MarketData>,
            cash: Decimal,
            buys_in_flight: Decimal,
            other_exposure: Decimal,
            band: Decimal,
        }

        fn any_rest() -> impl Strategy<Value = Rest> {
            (
                prop::sample::select(vec![Gate::Active, Gate::ReduceOnly, Gate::Halted]),
                any_decimal(),
                any_decimal(),
                (any_decimal(), any_decimal()),
                proptest::option::of((positive_decimal(), 0u64..10_000)),
                any_decimal(),
                (any_decimal(), any_decimal()),
                any_decimal(),
            )
                .prop_map(
                    |(
                        gate,
                        fee_bps,
                        position,
                        (buys, sells),
                        market,
                        cash,
                        (in_flight, other),
                        band,
                    )| {
                        Rest {
                            gate,
                            fee_bps: fee_bps.abs(),
                            position,
                            pending: Pending {
                                buys: buys.abs(),
                                sells: sells.abs(),
                            },
                            market: market.map(|(price, age_ms)| MarketData { price, age_ms }),
                            cash,
                            buys_in_flight: in_flight.abs(),
                            other_exposure: other.abs(),
                            band: band.abs(),
                        }
                    },
                )
        }

        proptest! {
            /// Any figures at all, also those the contract keeps out: an approval with
            /// the exact notional, or a refusal with a known code and a reason.
            #[test]
            fn check_answers_every_input_with_a_code(
                limits in any_limits(),
                rest in any_rest(),
                order in any_order(),
                kill_switch in any::<bool>(),
                venue in proptest::option::of(any_decimal()),
            ) {
                let guards = OrderGuards {
                    price_band_pct: rest.band,
                    max_open_orders: 0,
                    max_open_orders_per_symbol: 0,
                    max_open_orders_per_agent: 0,
                };
                let ctx = Context {
                    ready: true,
                    kill_switch,
                    gate: rest.gate,
                    limits: &limits,
                    guards: &guards,
                    halt: None,
                    open_orders: OpenOrderCounts::default(),
                    stale_after_ms: 5_000,
                    fee_bps: rest.fee_bps,
                    position: rest.position,
                    pending: rest.pending,
                    market: rest.market,
                    cash: rest.cash,
                    buys_in_flight: rest.buys_in_flight,
                    other_exposure: rest.other_exposure,
                    // None: the paper venue; Some(held): a spot venue holding that much
                    venue: VenueView {
                        name: "v",
                        kind: venue.map(|_| LiveVenueKind::BinanceSpot),
                        allows_short: venue.is_none(),
                        held: venue.unwrap_or_default(),
                    },
                };
                match check(&ctx, &order) {
                    Ok(approval) => {
                        prop_assert_eq!(Some(approval.notional), order.quantity.checked_mul(approval.price));
                    }
                    Err(refusal) => {
                        prop_assert!(CODES.contains(&refusal.code), "{}", refusal.code);
                        prop_assert!(!refusal.reason.is_empty());
                    }
                }
            }

            /// With the contract's figures (< 1e14) and limits, an approved order that
            /// adds risk keeps the position writable on the bus.
            #[test]
            fn approvals_keep_positions_inside_the_contract(
                quantity in 1u64..100_000_000_000_000u64,
                price_units in 1u64..100_000_000_000_000u64,
                scale in 0u32..=14,
                position in -99_999_999_999_999i64..99_999_999_999_999i64,
                buy in any::<bool>(),
            ) {
                let limits = Limits {
                    max_order_notional: MONEY_MAX,
                    max_position_notional: MONEY_MAX,
                    max_gross_exposure: MONEY_MAX,
                    min_cash: -MONEY_MAX,
                    max_daily_loss: MONEY_MAX,
                    max_drawdown_pct: 100.0,
                };
                let guards = OrderGuards {
                    price_band_pct: Decimal::ZERO,
                    max_open_orders: 0,
                    max_open_orders_per_symbol: 0,
                    max_open_orders_per_agent: 0,
                };
                let price = Decimal::new(price_units as i64, scale);
                let ctx = Context {
                    ready: true,
                    kill_switch: false,
                    gate: Gate::Active,
                    limits: &limits,
                    guards: &guards,
                    halt: None,
                    open_orders: OpenOrderCounts::default(),
                    stale_after_ms: 5_000,
                    fee_bps: Decimal::from(10_000),
                    position: Decimal::from(position),
                    pending: Pending::default(),
                    market: Some(MarketData { price, age_ms: 0 }),
                    cash: MONEY_MAX,
                    buys_in_flight: Decimal::ZERO,
                    other_exposure: Decimal::ZERO,
                    venue: VenueView {
                        name: "sim",
                        kind: None,
                        allows_short: true,
                        held: Decimal::ZERO,
                    },
                };
                let order = Order {
                    quantity: Decimal::from(quantity),
                    buy,
                    reduce_only: false,
                    price: None,
                    limit_price: None,
                };
                if let Ok(approval) = check(&ctx, &order) {
                    let signed = if buy { order.quantity } else { -order.quantity };
                    prop_assert!((ctx.position + signed).abs() < MONEY_LIMIT);
                    prop_assert!(approval.reducing || approval.notional <= MONEY_MAX);
                }
            }
        }
    }
}
