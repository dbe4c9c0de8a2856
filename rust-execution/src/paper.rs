//! The paper venue: MARKET orders walk the book when there is one, else fill against
//! the latest tick with a slippage model; LIMIT orders fill against the tick; a fee on
//! every fill.
//!
//! MARKET orders (all sizes exact decimals):
//! - with a fresh book for the order's venue (`md.book.<venue>.<symbol>`, else the
//!   aggregated `md.book.all.<symbol>`; fresh = received within `book_max_age_ms`) the
//!   order walks its levels (walk.rs): one fill at the volume-weighted average price.
//!   What the book cannot fill expires: a PARTIALLY_FILLED report for the part that
//!   executed, then an EXPIRED one for the rest (a MARKET order never rests, whatever
//!   its time in force, as on the exchanges); nothing on that side: EXPIRED.
//!   The depth is the price impact, so no slippage is added on top;
//! - without a book, the slippage model below fills the whole quantity.
//!
//! The slippage model and LIMIT orders (the book's depth is not consulted for them):
//! - a taker pays the quote it crosses: BUY at the ask (the last price when the tick
//!   has no ask), SELL at the bid (or the last price), moved against it by
//!   `slippage_bps`: `ask * (1 + slippage/10000)`, `bid * (1 - slippage/10000)`;
//! - the result is rounded to the tick's price precision (the most decimals among its
//!   price, bid and ask), against the taker: a BUY rounds up, a SELL rounds down (but
//!   never below one price increment), so rounding never flatters paper PnL;
//! - a LIMIT order is marketable when the quote reaches the limit (BUY: quote <= limit,
//!   SELL: quote >= limit); it fills at the better of the limit and the taker price, so
//!   slippage never pushes it past its limit. A resting GTC order fills by the same
//!   rule when a later tick makes it marketable (no maker/taker distinction yet);
//! - fee = fill price * quantity * fee_bps / 10000, exact, not rounded (Decimal keeps
//!   28 decimal places: far more than price and quantity precisions add up to).
//!
//! Every figure of a fill must be money the contract admits (|x| < 1e14, so any two
//! multiply without overflow); a price, notional or fee that is not (a huge order at a
//! huge price, slippage past the range, a book walk whose quantities do not fit 96 bits
//! exactly) REJECTS the order with `notional_overflow`: checked arithmetic, never a panic.

use moonbus_common::{
    now_ns, Book, ClientOrderId, NonNegativeMoney, OrderType, PositiveMoney, Side, Tick,
    TimeInForce, Venue as VenueName,
};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::venue::{Fill, Market, Placement, Routed, Venue};
use crate::walk::{self, Overflow, Walked};

const BPS: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

pub struct PaperVenue {
    venues: Vec<VenueName>,
    fee_bps: Decimal,
    slippage_bps: Decimal,
    /// Resting GTC orders in arrival order (fills on a tick go first come, first served).
    resting: Vec<Routed>,
}

impl PaperVenue {
    pub fn new(venues: Vec<VenueName>, fee_bps: Decimal, slippage_bps: Decimal) -> Self {
        Self {
            venues,
            fee_bps,
            slippage_bps,
            resting: Vec::new(),
        }
    }

    /// The whole order at `price`.
    fn fill(&self, routed: &Routed, price: Decimal) -> Result<Fill, Overflow> {
        self.fill_of(*routed.order.quantity, price)
    }

    fn fill_of(&self, quantity: Decimal, price: Decimal) -> Result<Fill, Overflow> {
        Ok(Fill {
            price: PositiveMoney::new(price).map_err(|_| Overflow)?,
            quantity: PositiveMoney::new(quantity).map_err(|_| Overflow)?,
            fee: NonNegativeMoney::new(fee(price, quantity, self.fee_bps)?)
                .map_err(|_| Overflow)?,
            ts: now_ns(),
        })
    }

    /// A MARKET order against a book (see the module comment).
    fn walk_book(&self, routed: &Routed, book: &Book) -> Placement {
        let order = &routed.order;
        let wanted = *order.quantity;
        let walked = walk::walk(order.side, book, wanted).and_then(|w| {
            w.map(|w| Ok((w, self.fill_of(w.quantity, w.price)?)))
                .transpose()
        });
        match walked {
            Err(Overflow) => Placement::Rejected {
                reason: overflow_reason(),
            },
            Ok(None) => Placement::Expired {
                reason: format!(
                    "no_liquidity: the {} book of {} has no {}",
                    book.venue,
                    order.symbol,
                    book_side(order.side)
                ),
            },
            Ok(Some((Walked { quantity, .. }, fill))) if quantity == wanted => {
                Placement::Filled(fill)
            }
            Ok(Some((Walked { quantity, levels, .. }, fill))) => Placement::PartiallyFilled {
                fill,
                reason: format!(
                    "book_exhausted: {quantity} of {wanted} filled; the {} book of {} held no more {} ({levels} levels)",
                    book.venue,
                    order.symbol,
                    book_side(order.side)
                ),
            },
        }
    }
}

fn book_side(side: Side) -> &'static str {
    match side {
        Side::Buy => "asks",
        Side::Sell => "bids",
    }
}

impl Venue for PaperVenue {
    fn serves(&self, venue: &VenueName) -> bool {
        self.venues.contains(venue)
    }

    async fn place(&mut self, routed: &Routed, market: &Market) -> Placement {
        let order = &routed.order;
        if order.order_type == OrderType::Market {
            if let Some(book) = market.book(&order.venue, &order.symbol) {
                return self.walk_book(routed, book);
            }
        }
        let tick = market.tick(&order.symbol);
        let price = match (order.order_type, order.limit_price, tick) {
            (OrderType::Market, _, Some(tick)) => {
                taker_price(order.side, tick, self.slippage_bps).map(Some)
            }
            (OrderType::Limit, Some(limit), Some(tick)) => {
                limit_fill_price(order.side, *limit, tick, self.slippage_bps)
            }
            (OrderType::Limit, None, _) => {
                return Placement::Rejected {
                    reason: "invalid_order: a LIMIT order needs limit_price".into(),
                }
            }
            // No market: a GTC limit order waits for one, anything else cannot execute.
            (OrderType::Limit, Some(_), None) if order.time_in_force == TimeInForce::Gtc => {
                Ok(None)
            }
            (_, _, None) => {
                return Placement::Rejected {
                    reason: format!(
                        "no_market_price: no tick for {} received within tick_max_age_ms",
                        order.symbol
                    ),
                }
            }
        };
        match price {
            Err(Overflow) => Placement::Rejected {
                reason: overflow_reason(),
            },
            Ok(Some(price)) => match self.fill(routed, price) {
                Ok(fill) => Placement::Filled(fill),
                Err(Overflow) => Placement::Rejected {
                    reason: overflow_reason(),
                },
            },
            Ok(None) if order.time_in_force == TimeInForce::Ioc => Placement::Expired {
                reason: format!(
                    "not_marketable: IOC {} limit {} does not reach the market",
                    order.side,
                    order.limit_price.map(|p| p.to_string()).unwrap_or_default()
                ),
            },
            Ok(None) => Placement::Resting,
        }
    }

    async fn cancel(&mut self, client_order_id: &ClientOrderId) -> Option<Routed> {
        let at = self
            .resting
            .iter()
            .position(|r| &r.order.client_order_id == client_order_id)?;
        Some(self.resting.remove(at))
    }

    fn resting(&self, client_order_id: &ClientOrderId) -> Option<&Routed> {
        self.resting
            .iter()
            .find(|r| &r.order.client_order_id == client_order_id)
    }

    fn rest(&mut self, routed: Routed) {
        let id = &routed.order.client_order_id;
        match self
            .resting
            .iter_mut()
            .find(|r| &r.order.client_order_id == id)
        {
            Some(known) => *known = routed,
            None => self.resting.push(routed),
        }
    }

    fn on_market(&mut self, tick: &Tick) -> Vec<(Routed, Fill)> {
        let mut fills = Vec::new();
        let mut still_resting = Vec::with_capacity(self.resting.len());
        for routed in std::mem::take(&mut self.resting) {
            let order = &routed.order;
            let price = match order.limit_price {
                Some(limit) if order.symbol == tick.symbol => {
                    limit_fill_price(order.side, *limit, tick, self.slippage_bps)
                }
                _ => Ok(None),
            };
            match price.and_then(|p| p.map(|p| self.fill(&routed, p)).transpose()) {
                Ok(Some(fill)) => fills.push((routed, fill)),
                Ok(None) => still_resting.push(routed),
                Err(Overflow) => {
                    tracing::error!(client_order_id = %order.client_order_id, "fill price overflows; order keeps resting");
                    still_resting.push(routed);
                }
            }
        }
        self.resting = still_resting;
        fills
    }
}

fn overflow_reason() -> String {
    "notional_overflow: the fill's price, quantity, notional or fee cannot be computed exactly \
     within the money range (|x| < 1e14)"
        .into()
}

/// The quote a taker crosses: the ask for a BUY, the bid for a SELL, else the last price.
pub fn quote(side: Side, tick: &Tick) -> Decimal {
    let quote = match side {
        Side::Buy => tick.ask,
        Side::Sell => tick.bid,
    };
    *quote.unwrap_or(tick.price)
}

/// The number of decimals the tick is quoted in (the most among price, bid and ask).
pub fn tick_precision(tick: &Tick) -> u32 {
    [Some(tick.price), tick.bid, tick.ask]
        .into_iter()
        .flatten()
        .map(|p| p.scale())
        .max()
        .unwrap_or(0)
}

/// The price a MARKET order fills at: the quote moved against the taker by the slippage,
/// rounded to the tick's precision against the taker.
pub fn taker_price(side: Side, tick: &Tick, slippage_bps: Decimal) -> Result<Decimal, Overflow> {
    let shift = slippage_bps.checked_div(BPS).ok_or(Overflow)?;
    let factor = match side {
        Side::Buy => Decimal::ONE + shift,
        Side::Sell => Decimal::ONE - shift,
    };
    let raw = quote(side, tick).checked_mul(factor).ok_or(Overflow)?;
    let scale = tick_precision(tick);
    Ok(match side {
        Side::Buy => raw.round_dp_with_strategy(scale, RoundingStrategy::ToPositiveInfinity),
        Side::Sell => raw
            .round_dp_with_strategy(scale, RoundingStrategy::ToNegativeInfinity)
            .max(Decimal::new(1, scale)),
    })
}

/// The fill price of a LIMIT order against this tick, `None` if it is not marketable.
pub fn limit_fill_price(
    side: Side,
    limit: Decimal,
    tick: &Tick,
    slippage_bps: Decimal,
) -> Result<Option<Decimal>, Overflow> {
    let quote = quote(side, tick);
    let marketable = match side {
        Side::Buy => quote <= limit,
        Side::Sell => quote >= limit,
    };
    if !marketable {
        return Ok(None);
    }
    let market = taker_price(side, tick, slippage_bps)?;
    Ok(Some(match side {
        Side::Buy => market.min(limit),
        Side::Sell => market.max(limit),
    }))
}

/// fee = price * quantity * fee_bps / 10000, exact (trailing zeros dropped).
pub fn fee(price: Decimal, quantity: Decimal, fee_bps: Decimal) -> Result<Decimal, Overflow> {
    price
        .checked_mul(quantity)
        .and_then(|notional| notional.checked_mul(fee_bps))
        .and_then(|x| x.checked_div(BPS))
        .map(|fee| fee.normalize())
        .ok_or(Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{AgentName, OrderRequest, Symbol, Timings};

    fn dec(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn tick(price: &str, bid: Option<&str>, ask: Option<&str>) -> Tick {
        Tick {
            venue: VenueName::sim(),
            symbol: Symbol::try_from("BTC-USD").unwrap(),
            price: price.parse().unwrap(),
            bid: bid.map(|b| b.parse().unwrap()),
            ask: ask.map(|a| a.parse().unwrap()),
            size: None,
            seq: 1,
            ts: 1,
        }
    }

    fn routed(
        id: &str,
        side: Side,
        order_type: OrderType,
        limit: Option<&str>,
        tif: TimeInForce,
    ) -> Routed {
        Routed {
            order: OrderRequest {
                client_order_id: ClientOrderId::try_from(id).unwrap(),
                agent: AgentName::try_from("trading").unwrap(),
                symbol: Symbol::try_from("BTC-USD").unwrap(),
                venue: VenueName::sim(),
                side,
                order_type,
                quantity: "0.01".parse().unwrap(),
                limit_price: limit.map(|l| l.parse().unwrap()),
                time_in_force: tif,
                reduce_only: false,
                decision_price: None,
                protection: None,
                origin_ts: 1,
                ts: 1,
                algo: None,
            },
            order_id: format!("sim-{id}"),
            timings: Timings::default(),
        }
    }

    fn venue() -> PaperVenue {
        PaperVenue::new(vec![VenueName::sim()], dec("10"), dec("5"))
    }

    fn market(t: Tick) -> Market {
        let mut m = Market::default();
        m.update(t).unwrap();
        m
    }

    #[test]
    fn buy_pays_the_ask_plus_slippage_rounded_up_to_tick_precision() {
        let t = tick("97000.00", Some("96999.00"), Some("97001.50"));
        // 97001.50 * 1.0005 = 97050.00075 -> 2 decimals, up
        assert_eq!(
            taker_price(Side::Buy, &t, dec("5")).unwrap(),
            dec("97050.01")
        );
        // exact when no rounding is needed
        assert_eq!(
            taker_price(Side::Buy, &t, dec("0")).unwrap(),
            dec("97001.50")
        );
    }

    #[test]
    fn sell_gets_the_bid_minus_slippage_rounded_down() {
        let t = tick("97000.00", Some("96999.00"), Some("97001.50"));
        // 96999 * 0.9995 = 96950.5005 -> 96950.50
        assert_eq!(
            taker_price(Side::Sell, &t, dec("5")).unwrap(),
            dec("96950.50")
        );
    }

    #[test]
    fn without_bid_or_ask_the_last_price_is_the_quote() {
        let t = tick("150", None, None);
        // 150 * 1.0005 = 150.075 -> 0 decimals, up = 151; down = 149
        assert_eq!(taker_price(Side::Buy, &t, dec("5")).unwrap(), dec("151"));
        assert_eq!(taker_price(Side::Sell, &t, dec("5")).unwrap(), dec("149"));
    }

    #[test]
    fn precision_is_the_finest_of_price_bid_and_ask() {
        assert_eq!(
            tick_precision(&tick("97000", Some("96999.5"), Some("97000.125"))),
            3
        );
        assert_eq!(tick_precision(&tick("150", None, None)), 0);
    }

    #[test]
    fn a_sell_never_rounds_to_zero() {
        let t = tick("0.01", None, None);
        assert_eq!(taker_price(Side::Sell, &t, dec("5")).unwrap(), dec("0.01"));
    }

    #[test]
    fn fee_is_exact() {
        // 97050.01 * 0.01 = 970.5001; * 10 / 10000 = 0.9705001
        assert_eq!(
            fee(dec("97050.01"), dec("0.01"), dec("10")).unwrap(),
            dec("0.9705001")
        );
        assert_eq!(
            fee(dec("150"), dec("3"), dec("0.1")).unwrap().to_string(),
            "0.0045"
        );
        assert_eq!(fee(dec("150"), dec("3"), dec("0")).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let huge = dec("70000000000000000000000000000");
        assert_eq!(fee(huge, dec("2"), dec("10")), Err(Overflow));
        assert_eq!(fee(Decimal::MAX, Decimal::MAX, dec("10")), Err(Overflow));
        assert_eq!(fee(huge, dec("1"), dec("0")), Ok(Decimal::ZERO));
    }

    /// The largest order at the largest price the contract admits: 1e28 notional fits a
    /// decimal, but its fee (1e25) is no money the contract can carry: REJECTED with a
    /// code. Slippage that takes the price past the range is refused the same way.
    #[tokio::test]
    async fn a_fill_beyond_the_money_range_is_rejected_with_a_code() {
        let max = "99999999999999.99999999999999";
        let mut v = venue();
        let mut order = routed("big", Side::Buy, OrderType::Market, None, TimeInForce::Gtc);
        order.order.quantity = max.parse().unwrap();
        let placed = v.place(&order, &market(tick(max, None, None))).await;
        assert!(
            matches!(&placed, Placement::Rejected { reason } if reason.starts_with("notional_overflow: ")),
            "{placed:?}"
        );
        // 99999999999999 * 1.0005 is past 1e14: no price to fill at.
        let small = routed("slip", Side::Buy, OrderType::Market, None, TimeInForce::Gtc);
        let placed = v
            .place(&small, &market(tick("99999999999999", None, None)))
            .await;
        assert!(matches!(placed, Placement::Rejected { .. }), "{placed:?}");
        // The same market, an ordinary order: filled.
        let placed = v.place(&small, &market(tick("97000", None, None))).await;
        assert!(matches!(placed, Placement::Filled(_)), "{placed:?}");
    }

    #[test]
    fn limit_fills_at_the_better_of_limit_and_market() {
        let t = tick("100.00", Some("99.90"), Some("100.10"));
        // BUY limit 100.50 crosses the ask; market 100.10*1.0005 = 100.15005 -> 100.16 < limit
        assert_eq!(
            limit_fill_price(Side::Buy, dec("100.50"), &t, dec("5")).unwrap(),
            Some(dec("100.16"))
        );
        // BUY limit 100.12 crosses, but slippage would go past it: capped at the limit
        assert_eq!(
            limit_fill_price(Side::Buy, dec("100.12"), &t, dec("5")).unwrap(),
            Some(dec("100.12"))
        );
        // BUY limit below the ask: not marketable
        assert_eq!(
            limit_fill_price(Side::Buy, dec("100.00"), &t, dec("5")).unwrap(),
            None
        );
        // SELL limit 99.80 <= bid; market 99.90*0.9995 = 99.85005 -> 99.85
        assert_eq!(
            limit_fill_price(Side::Sell, dec("99.80"), &t, dec("5")).unwrap(),
            Some(dec("99.85"))
        );
        assert_eq!(
            limit_fill_price(Side::Sell, dec("99.88"), &t, dec("5")).unwrap(),
            Some(dec("99.88"))
        );
        assert_eq!(
            limit_fill_price(Side::Sell, dec("99.95"), &t, dec("5")).unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn market_order_fills_with_fee() {
        let mut v = venue();
        let m = market(tick("97000.00", Some("96999.00"), Some("97001.50")));
        let placed = v
            .place(
                &routed("a", Side::Buy, OrderType::Market, None, TimeInForce::Gtc),
                &m,
            )
            .await;
        let Placement::Filled(fill) = placed else {
            panic!("not filled: {placed:?}")
        };
        assert_eq!(*fill.price, dec("97050.01"));
        assert_eq!(*fill.quantity, dec("0.01"));
        assert_eq!(*fill.fee, dec("0.9705001"));
    }

    #[tokio::test]
    async fn no_tick_means_no_market_price_except_for_resting_gtc() {
        let mut v = venue();
        let empty = Market::default();
        let market_order = v
            .place(
                &routed("a", Side::Buy, OrderType::Market, None, TimeInForce::Gtc),
                &empty,
            )
            .await;
        assert!(
            matches!(market_order, Placement::Rejected { ref reason } if reason.starts_with("no_market_price"))
        );
        let ioc = v
            .place(
                &routed(
                    "b",
                    Side::Buy,
                    OrderType::Limit,
                    Some("1"),
                    TimeInForce::Ioc,
                ),
                &empty,
            )
            .await;
        assert!(
            matches!(ioc, Placement::Rejected { ref reason } if reason.starts_with("no_market_price"))
        );
        let gtc = v
            .place(
                &routed(
                    "c",
                    Side::Buy,
                    OrderType::Limit,
                    Some("1"),
                    TimeInForce::Gtc,
                ),
                &empty,
            )
            .await;
        assert_eq!(gtc, Placement::Resting);
    }

    #[tokio::test]
    async fn unmarketable_ioc_expires_and_gtc_rests_until_a_tick_crosses() {
        let mut v = venue();
        let m = market(tick("100.00", Some("99.90"), Some("100.10")));
        let ioc = v
            .place(
                &routed(
                    "i",
                    Side::Buy,
                    OrderType::Limit,
                    Some("99.00"),
                    TimeInForce::Ioc,
                ),
                &m,
            )
            .await;
        assert!(
            matches!(ioc, Placement::Expired { ref reason } if reason.starts_with("not_marketable"))
        );
        assert!(v.resting(&ClientOrderId::try_from("i").unwrap()).is_none());

        let gtc = routed(
            "g",
            Side::Buy,
            OrderType::Limit,
            Some("99.00"),
            TimeInForce::Gtc,
        );
        assert_eq!(v.place(&gtc, &m).await, Placement::Resting);
        assert!(
            v.on_market(&tick("98.90", Some("98.80"), Some("98.95")))
                .is_empty(),
            "not resting before the engine rests it"
        );
        v.rest(gtc.clone());
        assert!(v
            .on_market(&tick("99.50", Some("99.40"), Some("99.60")))
            .is_empty());
        let fills = v.on_market(&tick("98.90", Some("98.80"), Some("98.95")));
        assert_eq!(fills.len(), 1);
        let (filled, fill) = &fills[0];
        assert_eq!(filled, &gtc);
        // 98.95 * 1.0005 = 98.999475 -> 99.00, capped at the limit 99.00
        assert_eq!(*fill.price, dec("99.00"));
        assert!(
            v.on_market(&tick("90", None, None)).is_empty(),
            "filled only once"
        );
    }

    #[tokio::test]
    async fn cancel_takes_a_resting_order_off_and_rest_puts_it_back() {
        let mut v = venue();
        let gtc = routed(
            "g",
            Side::Sell,
            OrderType::Limit,
            Some("200"),
            TimeInForce::Gtc,
        );
        let id = gtc.order.client_order_id.clone();
        assert_eq!(
            v.place(&gtc, &market(tick("100", None, None))).await,
            Placement::Resting
        );
        v.rest(gtc.clone());
        assert_eq!(v.cancel(&id).await, Some(gtc.clone()));
        assert_eq!(v.cancel(&id).await, None);
        v.rest(gtc.clone());
        v.rest(gtc.clone());
        assert_eq!(
            v.on_market(&tick("201", None, None)).len(),
            1,
            "rested once, filled once"
        );
    }

    fn book(venue: &str, bids: &[(&str, &str)], asks: &[(&str, &str)]) -> Book {
        let levels = |side: &[(&str, &str)]| {
            side.iter()
                .map(|(p, s)| (p.parse().unwrap(), s.parse().unwrap()))
                .collect()
        };
        Book {
            venue: VenueName::try_from(venue).unwrap(),
            symbol: Symbol::try_from("BTC-USD").unwrap(),
            bids: levels(bids),
            asks: levels(asks),
            seq: 1,
            ts: 1,
        }
    }

    #[tokio::test]
    async fn a_market_order_walks_the_book_without_slippage_on_top() {
        let mut v = venue();
        let mut m = market(tick("97000.00", Some("96999.00"), Some("97001.50")));
        m.update_book(book(
            "sim",
            &[("96999.00", "0.004")],
            &[("97001.50", "0.004"), ("97002.00", "0.01")],
        ))
        .unwrap();
        let buy = routed("a", Side::Buy, OrderType::Market, None, TimeInForce::Gtc);
        let Placement::Filled(fill) = v.place(&buy, &m).await else {
            panic!("not filled")
        };
        // (0.004 * 97001.50 + 0.006 * 97002.00) / 0.01 = 97001.8
        assert_eq!(*fill.price, dec("97001.8"));
        assert_eq!(*fill.quantity, dec("0.01"));
        // 97001.8 * 0.01 * 10 / 10000
        assert_eq!(*fill.fee, dec("0.970018"));
    }

    #[tokio::test]
    async fn what_the_book_cannot_fill_expires() {
        let mut v = venue();
        let mut m = Market::default();
        m.update_book(book("sim", &[("96999.00", "0.004")], &[]))
            .unwrap();
        let sell = routed("s", Side::Sell, OrderType::Market, None, TimeInForce::Gtc);
        let Placement::PartiallyFilled { fill, reason } = v.place(&sell, &m).await else {
            panic!("not partially filled")
        };
        assert_eq!((*fill.price, *fill.quantity), (dec("96999"), dec("0.004")));
        assert!(
            reason.starts_with("book_exhausted: 0.004 of 0.01 filled"),
            "{reason}"
        );
        let buy = routed("b", Side::Buy, OrderType::Market, None, TimeInForce::Gtc);
        assert!(matches!(v.place(&buy, &m).await,
            Placement::Expired { reason } if reason == "no_liquidity: the sim book of BTC-USD has no asks"));
        assert!(v.resting(&buy.order.client_order_id).is_none());
    }

    #[tokio::test]
    async fn the_aggregated_book_serves_when_the_venue_has_none_and_stale_books_are_ignored() {
        let mut v = venue();
        let mut m = market(tick("100.00", Some("99.90"), Some("100.10")));
        m.update_book(book("all", &[], &[("100.20", "1")])).unwrap();
        let buy = routed("a", Side::Buy, OrderType::Market, None, TimeInForce::Gtc);
        let Placement::Filled(fill) = v.place(&buy, &m).await else {
            panic!("not filled")
        };
        assert_eq!(*fill.price, dec("100.2"));

        let mut stale = Market::new(std::time::Duration::ZERO, std::time::Duration::from_secs(5));
        stale
            .update(tick("100.00", Some("99.90"), Some("100.10")))
            .unwrap();
        stale
            .update_book(book("sim", &[], &[("100.20", "1")]))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let Placement::Filled(fill) = v.place(&buy, &stale).await else {
            panic!("not filled")
        };
        // the slippage model: 100.10 * 1.0005 = 100.15005 -> 100.16
        assert_eq!(*fill.price, dec("100.16"));
        // LIMIT orders do not walk the book
        let mut limit = routed(
            "l",
            Side::Buy,
            OrderType::Limit,
            Some("101"),
            TimeInForce::Ioc,
        );
        limit.order.quantity = "5".parse().unwrap();
        let Placement::Filled(fill) = v.place(&limit, &m).await else {
            panic!("not filled")
        };
        assert_eq!((*fill.price, *fill.quantity), (dec("100.16"), dec("5")));
    }

    mod properties {
        use super::*;
        use crate::reports;
        use crate::walk::strategies::{any_decimal, money_text};
        use moonbus_common::{bus, ExecutionReport, OrderStatus};
        use proptest::prelude::*;

        proptest! {
            /// The paper venue's arithmetic on any decimals at all: a value or Overflow.
            #[test]
            fn fee_and_prices_never_panic(
                price in any_decimal(),
                quantity in any_decimal(),
                bps in any_decimal(),
            ) {
                let _ = fee(price, quantity, bps);
                if let Ok(fee) = fee(price, quantity, bps) {
                    prop_assert_eq!(Some(fee), price.checked_mul(quantity).and_then(|n| n.checked_mul(bps)).and_then(|n| n.checked_div(BPS)).map(|f| f.normalize()));
                }
            }

            /// Any order the contract admits against any market it admits (tick, book,
            /// slippage and fee as configured up to their maxima): a placement whose
            /// fill makes a valid report, or a refusal with a code. Never a panic.
            #[test]
            fn every_order_is_placed_or_refused_with_a_code(
                (price, bid, ask) in (money_text(), proptest::option::of(money_text()), proptest::option::of(money_text())),
                quantity in money_text(),
                limit in proptest::option::of(money_text()),
                book_levels in proptest::option::of(proptest::collection::vec((money_text(), money_text()), 0..6)),
                buy in any::<bool>(),
                ioc in any::<bool>(),
                (fee_bps, slippage_bps) in (0u32..=10_000, 0u32..=1_000),
            ) {
                let mut v = PaperVenue::new(vec![VenueName::sim()], Decimal::from(fee_bps), Decimal::from(slippage_bps));
                let t = tick(&price, bid.as_deref(), ask.as_deref());
                let mut m = market(t.clone());
                if let Some(levels) = &book_levels {
                    let pairs: Vec<(&str, &str)> = levels.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
                    m.update_book(book("sim", &pairs, &pairs)).unwrap();
                }
                let side = if buy { Side::Buy } else { Side::Sell };
                let tif = if ioc { TimeInForce::Ioc } else { TimeInForce::Gtc };
                let order_type = if limit.is_some() { OrderType::Limit } else { OrderType::Market };
                let mut r = routed("p", side, order_type, limit.as_deref(), tif);
                r.order.quantity = quantity.parse().unwrap();
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let placed = runtime.block_on(v.place(&r, &m));
                let fills = match &placed {
                    Placement::Filled(fill) => vec![reports::filled(&r, fill)],
                    Placement::PartiallyFilled { fill, reason } => {
                        prop_assert!(reason.starts_with("book_exhausted: "), "{}", reason);
                        vec![reports::with_fill(&r, fill, OrderStatus::PartiallyFilled)]
                    }
                    Placement::Resting => {
                        v.rest(r.clone());
                        v.on_market(&t).into_iter().map(|(r, fill)| reports::filled(&r, &fill)).collect()
                    }
                    Placement::Expired { reason } | Placement::Rejected { reason } => {
                        let code = reason.split(':').next().unwrap_or_default();
                        prop_assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", reason);
                        Vec::new()
                    }
                };
                for report in fills {
                    let again: ExecutionReport = bus::decode(&bus::encode(&report)).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(&again, &report);
                    let (fill_price, filled) = (report.last_fill_price.unwrap(), report.filled_quantity);
                    prop_assert!(*filled <= *r.order.quantity);
                    if let Some(limit) = r.order.limit_price {
                        let within = if buy { *fill_price <= *limit } else { *fill_price >= *limit };
                        prop_assert!(within, "fill {} past limit {}", fill_price, limit);
                    }
                    prop_assert_eq!(Ok(*report.fee), fee(*fill_price, *filled, Decimal::from(fee_bps)));
                }
            }
        }
    }
}
