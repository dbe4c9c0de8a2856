//! Cross-venue arbitrage: `md.arb.<symbol>` when one venue's best ask, bought, and
//! another venue's best bid, sold, leave more than `min_net_bps` after both venues'
//! taker fees.
//!
//! The rule, run on every book a feed hands the engine (not only the books that
//! are due for publication), over the symbol's venues whose latest book is fresh
//! (not older than `stale_after_ms`, like the aggregate `md.book.all`):
//! - every ordered pair (buy venue A, sell venue B), A != B: buying one unit at A's
//!   best ask `a` costs `a x (1 + fee_A)`, selling it at B's best bid `b` brings
//!   `b x (1 - fee_B)` (fees in bps / 10,000); the net spread is
//!   `(b x (1 - fee_B) - a x (1 + fee_A)) / (a x (1 + fee_A))` in bps, the return on
//!   the money spent. The pair with the highest net spread wins; it is an
//!   opportunity when the net spread is above `min_net_bps` (compared without a
//!   division: `edge x 10,000 > min_net_bps x cost`).
//! - the quantity **walks both books**: level by level (best first) it takes the
//!   smaller of the two remaining sizes while that marginal pair of prices still
//!   clears `min_net_bps`, so every unit of `quantity` is itself an opportunity;
//!   `buy_limit` / `sell_limit` are the worst prices it reaches (the limit prices of
//!   two IOC orders that would take it), `profit` the sum over the steps of
//!   `size x (bid x (1 - fee_B) - ask x (1 + fee_A))`, in quote currency.
//! - a venue whose own book is crossed (its best bid above its best ask) is left
//!   out: such a book is broken or half-updated, not a price to trade on. A locked
//!   book (bid = ask) is kept. Zero-size levels are skipped.
//!
//! Arithmetic is rust_decimal, checked: an overflow ends the walk where it is (the
//! quantity so far), and so does a quantity or profit past the wire's money range
//! (1e14); an opportunity whose first step already would is not published. Never
//! a panic, whatever the books hold.
//!
//! Rate limit, per symbol: at most one `md.arb.<symbol>` per `min_interval_ms`,
//! except that an opportunity with a higher net spread than the last one published
//! goes out at once.
//!
//! Cost: a symbol with one venue is skipped after one comparison (the sim alone, or
//! one live venue, pays nothing); with V fresh venues it is V x (V - 1) pairs of top
//! prices, and the walk only for the winner.

use std::collections::HashMap;

use moonbus_common::{
    ArbOpportunity, Book, Money, NonNegativeMoney, PositiveMoney, PriceLevel, Symbol, Venue,
};
use rust_decimal::Decimal;

const BPS: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);
/// Decimals of the published `gross_bps` / `net_bps`.
const BPS_DECIMALS: u32 = 4;

/// `[market_data.arb]`, validated (config.rs).
#[derive(Debug, Clone, PartialEq)]
pub struct ArbSettings {
    pub enabled: bool,
    /// Publish only above this net spread (bps, >= 0).
    pub min_net_bps: Decimal,
    pub min_interval_ns: u64,
    /// The taker fee of a venue not in `fees_bps`.
    pub default_fee_bps: Decimal,
    pub fees_bps: HashMap<Venue, Decimal>,
}

impl Default for ArbSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_net_bps: Decimal::from(5),
            min_interval_ns: 1_000_000_000,
            default_fee_bps: Decimal::from(10),
            fees_bps: HashMap::new(),
        }
    }
}

impl ArbSettings {
    pub fn fee_bps(&self, venue: &Venue) -> Decimal {
        self.fees_bps
            .get(venue)
            .copied()
            .unwrap_or(self.default_fee_bps)
    }
}

/// Per symbol: the last opportunity published, for the rate limit.
#[derive(Debug, Default, Clone)]
pub struct ArbGate {
    last_ns: Option<u64>,
    last_net_bps: Decimal,
}

impl ArbGate {
    /// True if `arb` may be published at `now_ns` (and it is then counted as published).
    pub fn admit(&mut self, arb: &ArbOpportunity, now_ns: u64, interval_ns: u64) -> bool {
        let net = arb.net_bps.get();
        let due = match self.last_ns {
            None => true,
            Some(last) => now_ns.saturating_sub(last) >= interval_ns || net > self.last_net_bps,
        };
        if due {
            self.last_ns = Some(now_ns);
            self.last_net_bps = net;
        }
        due
    }
}

/// A (buy venue, sell venue) pair with its fees as factors: buying costs
/// `ask x buy_factor` (1 + fee), selling brings `bid x sell_factor` (1 - fee).
#[derive(Debug, Clone, Copy)]
struct Pair<'a> {
    buy: &'a Book,
    sell: &'a Book,
    buy_fee_bps: Decimal,
    sell_fee_bps: Decimal,
    buy_factor: Decimal,
    sell_factor: Decimal,
}

impl Pair<'_> {
    /// Net edge per unit and cost per unit at (ask, bid); `None` on overflow.
    fn edge(&self, ask: Decimal, bid: Decimal) -> Option<(Decimal, Decimal)> {
        let cost = ask.checked_mul(self.buy_factor)?;
        let got = bid.checked_mul(self.sell_factor)?;
        Some((got.checked_sub(cost)?, cost))
    }

    /// True if (ask, bid) clears `min_net_bps`: `edge x 10,000 > min x cost`.
    fn clears(&self, ask: Decimal, bid: Decimal, min_net_bps: Decimal) -> bool {
        let Some((edge, cost)) = self.edge(ask, bid) else {
            return false;
        };
        match (edge.checked_mul(BPS), min_net_bps.checked_mul(cost)) {
            (Some(left), Some(right)) => left > right,
            _ => false,
        }
    }

    /// The net spread at (ask, bid), bps (full precision, for ranking).
    fn net_bps(&self, ask: Decimal, bid: Decimal) -> Option<Decimal> {
        let (edge, cost) = self.edge(ask, bid)?;
        edge.checked_mul(BPS)?.checked_div(cost)
    }
}

/// The best price of a side, skipping zero-size levels.
fn best(levels: &[PriceLevel]) -> Option<Decimal> {
    levels
        .iter()
        .find(|(_, size)| !size.get().is_zero())
        .map(|(price, _)| price.get())
}

/// True if the venue's own best bid is above its best ask (a broken book).
fn crossed(book: &Book) -> bool {
    matches!((best(&book.bids), best(&book.asks)), (Some(bid), Some(ask)) if bid > ask)
}

/// The best opportunity among `books` (the fresh latest book of each venue of
/// `symbol`), if its net spread is above `min_net_bps`. `source_ts`: the arrival of
/// the book that triggered the look; `now_ns`: the message's `ts`.
pub fn detect(
    symbol: &Symbol,
    books: &[&Book],
    settings: &ArbSettings,
    source_ts: u64,
    now_ns: u64,
) -> Option<ArbOpportunity> {
    let factor = |fee_bps: Decimal, sign: Decimal| -> Option<Decimal> {
        Decimal::ONE.checked_add(sign.checked_mul(fee_bps.checked_div(BPS)?)?)
    };
    let usable: Vec<&Book> = books.iter().copied().filter(|b| !crossed(b)).collect();
    let mut winner: Option<(Decimal, Pair)> = None;
    for buy in &usable {
        let Some(ask) = best(&buy.asks) else { continue };
        let buy_fee_bps = settings.fee_bps(&buy.venue);
        let Some(buy_factor) = factor(buy_fee_bps, Decimal::ONE) else {
            continue;
        };
        for sell in &usable {
            if sell.venue == buy.venue {
                continue;
            }
            let Some(bid) = best(&sell.bids) else {
                continue;
            };
            let sell_fee_bps = settings.fee_bps(&sell.venue);
            let Some(sell_factor) = factor(sell_fee_bps, Decimal::NEGATIVE_ONE) else {
                continue;
            };
            let pair = Pair {
                buy,
                sell,
                buy_fee_bps,
                sell_fee_bps,
                buy_factor,
                sell_factor,
            };
            if !pair.clears(ask, bid, settings.min_net_bps) {
                continue;
            }
            let Some(net) = pair.net_bps(ask, bid) else {
                continue;
            };
            if winner.as_ref().is_none_or(|(best, _)| net > *best) {
                winner = Some((net, pair));
            }
        }
    }
    let (net, pair) = winner?;
    opportunity(symbol, &pair, net, settings.min_net_bps, source_ts, now_ns)
}

/// The walk over the winning pair's levels, and the message.
fn opportunity(
    symbol: &Symbol,
    pair: &Pair,
    net: Decimal,
    min_net_bps: Decimal,
    source_ts: u64,
    now_ns: u64,
) -> Option<ArbOpportunity> {
    let asks: Vec<(Decimal, Decimal)> = levels(&pair.buy.asks);
    let bids: Vec<(Decimal, Decimal)> = levels(&pair.sell.bids);
    let (&(top_ask, _), &(top_bid, _)) = (asks.first()?, bids.first()?);
    let (mut i, mut j) = (0, 0);
    let (mut ask_left, mut bid_left) = (asks[0].1, bids[0].1);
    let mut quantity = Decimal::ZERO;
    let mut profit = Decimal::ZERO;
    let (mut buy_limit, mut sell_limit) = (top_ask, top_bid);
    while i < asks.len() && j < bids.len() {
        let (ask, bid) = (asks[i].0, bids[j].0);
        if !pair.clears(ask, bid, min_net_bps) {
            break;
        }
        let step = ask_left.min(bid_left);
        let next = pair.edge(ask, bid).and_then(|(edge, _)| {
            let quantity = quantity.checked_add(step)?;
            let profit = profit.checked_add(step.checked_mul(edge)?)?;
            // Both must fit the wire (|x| < 1e14).
            PositiveMoney::new(quantity).ok()?;
            NonNegativeMoney::new(profit).ok()?;
            Some((quantity, profit))
        });
        let Some((q, p)) = next else { break };
        (quantity, profit, buy_limit, sell_limit) = (q, p, ask, bid);
        ask_left -= step;
        bid_left -= step;
        if ask_left.is_zero() {
            i += 1;
            ask_left = asks.get(i).map_or(Decimal::ZERO, |l| l.1);
        }
        if bid_left.is_zero() {
            j += 1;
            bid_left = bids.get(j).map_or(Decimal::ZERO, |l| l.1);
        }
    }
    let gross = top_bid
        .checked_sub(top_ask)?
        .checked_mul(BPS)?
        .checked_div(top_ask)?;
    let rounded = |bps: Decimal| Money::new(bps.round_dp(BPS_DECIMALS)).ok();
    Some(ArbOpportunity {
        symbol: symbol.clone(),
        buy_venue: pair.buy.venue.clone(),
        sell_venue: pair.sell.venue.clone(),
        buy_price: PositiveMoney::new(top_ask).ok()?,
        sell_price: PositiveMoney::new(top_bid).ok()?,
        buy_fee_bps: NonNegativeMoney::new(pair.buy_fee_bps).ok()?,
        sell_fee_bps: NonNegativeMoney::new(pair.sell_fee_bps).ok()?,
        gross_bps: rounded(gross)?,
        net_bps: rounded(net)?,
        quantity: PositiveMoney::new(quantity).ok()?,
        buy_limit: PositiveMoney::new(buy_limit).ok()?,
        sell_limit: PositiveMoney::new(sell_limit).ok()?,
        profit: NonNegativeMoney::new(profit).ok()?,
        source_ts,
        ts: now_ns,
    })
}

/// A side's levels as (price, size), zero sizes left out.
fn levels(side: &[PriceLevel]) -> Vec<(Decimal, Decimal)> {
    side.iter()
        .map(|(price, size)| (price.get(), size.get()))
        .filter(|(_, size)| !size.is_zero())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_129_600_000_000_000;

    fn level(price: &str, size: &str) -> PriceLevel {
        (price.parse().unwrap(), size.parse().unwrap())
    }

    fn book(venue: &str, bids: &[(&str, &str)], asks: &[(&str, &str)]) -> Book {
        Book {
            venue: venue.parse().unwrap(),
            symbol: "BTC-USD".parse().unwrap(),
            bids: bids.iter().map(|(p, s)| level(p, s)).collect(),
            asks: asks.iter().map(|(p, s)| level(p, s)).collect(),
            seq: 1,
            ts: T0,
        }
    }

    fn settings(min_net_bps: &str, fees: &[(&str, &str)]) -> ArbSettings {
        ArbSettings {
            enabled: true,
            min_net_bps: min_net_bps.parse().unwrap(),
            min_interval_ns: 1_000_000_000,
            default_fee_bps: Decimal::from(10),
            fees_bps: fees
                .iter()
                .map(|(v, f)| (v.parse().unwrap(), f.parse().unwrap()))
                .collect(),
        }
    }

    fn run(books: &[Book], settings: &ArbSettings) -> Option<ArbOpportunity> {
        let refs: Vec<&Book> = books.iter().collect();
        detect(&"BTC-USD".parse().unwrap(), &refs, settings, T0, T0 + 7)
    }

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn net_of_both_fees_exactly() {
        // Buy on coinbase at 100 (60 bps), sell on sim at 101.5 (10 bps):
        // cost 100.6, proceeds 101.3985, edge 0.7985 per unit, 79.3737... bps.
        let books = [
            book("coinbase", &[("99", "5")], &[("100.00", "2")]),
            book("sim", &[("101.50", "3")], &[("102", "5")]),
        ];
        let s = settings("5", &[("coinbase", "60"), ("sim", "10")]);
        let arb = run(&books, &s).expect("an opportunity");
        assert_eq!(
            (arb.buy_venue.as_str(), arb.sell_venue.as_str()),
            ("coinbase", "sim")
        );
        assert_eq!(arb.buy_price.get(), d("100"));
        assert_eq!(arb.sell_price.get(), d("101.5"));
        assert_eq!(arb.gross_bps.get(), d("150"));
        assert_eq!(arb.net_bps.get(), d("79.3738"));
        assert_eq!(
            arb.quantity.get(),
            d("2"),
            "the ask's size: the smaller top"
        );
        assert_eq!(arb.profit.get(), d("1.597"), "2 x 0.7985, exact");
        assert_eq!(
            (arb.buy_fee_bps.get(), arb.sell_fee_bps.get()),
            (d("60"), d("10"))
        );
        assert_eq!((arb.source_ts, arb.ts), (T0, T0 + 7));
        // The message is valid on the wire and reads back the same.
        let wire = serde_json::to_vec(&arb).unwrap();
        assert_eq!(
            serde_json::from_slice::<ArbOpportunity>(&wire).unwrap(),
            arb
        );
    }

    #[test]
    fn fees_decide_and_unlisted_venues_pay_the_default() {
        // 30 bps gross. With 10 + 10 (defaults) the net is ~9.96 bps: above 5.
        let books = [
            book("binance", &[("99", "1")], &[("100", "1")]),
            book("aster", &[("100.3", "1")], &[("101", "1")]),
        ];
        let arb = run(&books, &settings("5", &[])).unwrap();
        assert_eq!(arb.net_bps.get(), d("9.9600"));
        assert_eq!(
            (arb.buy_fee_bps.get(), arb.sell_fee_bps.get()),
            (d("10"), d("10"))
        );
        // With binance at 20 and aster at 4.5 the net is ~5.48: still above 5...
        let arb = run(
            &books,
            &settings("5", &[("binance", "20"), ("aster", "4.5")]),
        )
        .unwrap();
        assert_eq!(arb.net_bps.get(), d("5.4755"));
        // ...and at 25 it is ~0.49: nothing.
        assert!(run(
            &books,
            &settings("5", &[("binance", "25"), ("aster", "4.5")])
        )
        .is_none());
        // A threshold of exactly the net spread is not "above" it.
        let exact = settings("0", &[("binance", "0"), ("aster", "0")]);
        let arb = run(&books, &exact).unwrap();
        assert_eq!(arb.net_bps.get(), d("30"));
        assert!(run(&books, &settings("30", &[("binance", "0"), ("aster", "0")])).is_none());
        assert!(run(
            &books,
            &settings("29.99", &[("binance", "0"), ("aster", "0")])
        )
        .is_some());
    }

    #[test]
    fn the_best_pair_wins_and_a_venue_is_never_paired_with_itself() {
        // One venue alone with a bid above another venue's... no: one venue only.
        let lone = [book("binance", &[("101", "1")], &[("101", "1")])];
        assert!(run(&lone, &settings("0", &[("binance", "0")])).is_none());
        // Two books of the same venue (cannot happen in the market, checked anyway).
        let twins = [
            book("binance", &[("99", "1")], &[("100", "1")]),
            book("binance", &[("105", "1")], &[("106", "1")]),
        ];
        assert!(run(&twins, &settings("0", &[])).is_none());
        // Three venues: hyperliquid -> coinbase is the widest after fees.
        let books = [
            book("binance", &[("100.2", "1")], &[("100.4", "1")]),
            book("hyperliquid", &[("99.9", "1")], &[("100", "1")]),
            book("coinbase", &[("101", "1")], &[("101.2", "1")]),
        ];
        let s = settings(
            "5",
            &[
                ("binance", "10"),
                ("hyperliquid", "4.5"),
                ("coinbase", "10"),
            ],
        );
        let arb = run(&books, &s).unwrap();
        assert_eq!(
            (arb.buy_venue.as_str(), arb.sell_venue.as_str()),
            ("hyperliquid", "coinbase")
        );
    }

    #[test]
    fn crossed_books_are_left_out_and_locked_ones_give_nothing() {
        // Locked across venues (ask = bid): no gross spread, never an opportunity.
        let locked = [
            book("binance", &[("99", "1")], &[("100", "1")]),
            book("coinbase", &[("100", "1")], &[("101", "1")]),
        ];
        assert!(run(
            &locked,
            &settings("0", &[("binance", "0"), ("coinbase", "0")])
        )
        .is_none());
        // A venue locked on itself (bid = ask) is kept.
        let self_locked = [
            book("binance", &[("99", "1")], &[("100", "1")]),
            book("coinbase", &[("101", "1")], &[("101", "1")]),
        ];
        let arb = run(&self_locked, &settings("5", &[])).unwrap();
        assert_eq!(arb.sell_venue.as_str(), "coinbase");
        // A venue crossed on itself (bid 103 > ask 102) is broken: left out, though
        // its bid would be the best opportunity.
        let broken = [
            book("binance", &[("99", "1")], &[("100", "1")]),
            book("coinbase", &[("103", "1")], &[("102", "1")]),
            book("aster", &[("100.5", "1")], &[("101", "1")]),
        ];
        let arb = run(&broken, &settings("5", &[])).unwrap();
        assert_eq!(
            (arb.buy_venue.as_str(), arb.sell_venue.as_str()),
            ("binance", "aster")
        );
        // Empty sides and zero-size levels.
        let empty = [
            book("binance", &[], &[("100", "0"), ("100.1", "2")]),
            book("coinbase", &[("101", "0"), ("102", "0")], &[]),
        ];
        assert!(run(&empty, &settings("0", &[])).is_none());
        let zero_top = [
            book("binance", &[], &[("100", "0"), ("100.1", "2")]),
            book("coinbase", &[("101", "0"), ("100.9", "1")], &[]),
        ];
        let arb = run(&zero_top, &settings("5", &[])).unwrap();
        assert_eq!(
            (arb.buy_price.get(), arb.sell_price.get()),
            (d("100.1"), d("100.9"))
        );
        assert_eq!(arb.quantity.get(), d("1"));
    }

    #[test]
    fn the_quantity_walks_the_levels_while_each_step_clears_the_threshold() {
        let books = [
            book(
                "binance",
                &[],
                &[("100", "1"), ("100.2", "2"), ("100.8", "5")],
            ),
            book(
                "coinbase",
                &[("101", "0.5"), ("100.9", "3"), ("100.3", "9")],
                &[],
            ),
        ];
        let s = settings("5", &[("binance", "0"), ("coinbase", "0")]);
        let arb = run(&books, &s).unwrap();
        // 0.5 @100/101, 0.5 @100/100.9, 2 @100.2/100.9; then 100.8/100.9 is ~9.9 bps:
        // 0.5 more; then 100.8/100.3 loses: stop.
        assert_eq!(arb.quantity.get(), d("3.5"));
        assert_eq!(
            (arb.buy_limit.get(), arb.sell_limit.get()),
            (d("100.8"), d("100.9"))
        );
        // 0.5 x 1 + 0.5 x 0.9 + 2 x 0.7 + 0.5 x 0.1
        assert_eq!(arb.profit.get(), d("2.4"));
        // A higher threshold stops earlier: 100.8/100.9 (9.9 bps) no longer clears 20.
        let arb = run(
            &books,
            &settings("20", &[("binance", "0"), ("coinbase", "0")]),
        )
        .unwrap();
        assert_eq!(arb.quantity.get(), d("3"));
        assert_eq!(arb.sell_limit.get(), d("100.9"));
    }

    #[test]
    fn tiny_and_huge_quantities_never_panic() {
        // Tiny: 1e-18 of a unit. The profit rounds to what Decimal holds (>= 0).
        let tiny = [
            book("binance", &[], &[("100", "0.000000000000000001")]),
            book("coinbase", &[("101", "5")], &[]),
        ];
        let arb = run(&tiny, &settings("5", &[])).unwrap();
        assert_eq!(arb.quantity.get(), d("0.000000000000000001"));
        assert!(arb.profit.get() >= Decimal::ZERO);
        // Huge: sizes and prices near the money range; the profit of the first step
        // (~9e13 x 9e12) would not fit the wire: nothing is published, nothing panics.
        let big = "99999999999999.99999999";
        let huge = [
            book("binance", &[], &[("1", big)]),
            book("coinbase", &[(big, big)], &[]),
        ];
        assert!(run(&huge, &settings("5", &[])).is_none());
        // Huge sizes at small prices: the profit fits for a while, the walk stops
        // where the quantity would leave the money range.
        let many = [
            book(
                "binance",
                &[],
                &[("1", "60000000000000"), ("1", "60000000000000")],
            ),
            book(
                "coinbase",
                &[("1.1", "60000000000000"), ("1.1", "60000000000000")],
                &[],
            ),
        ];
        let arb = run(
            &many,
            &settings("5", &[("binance", "0"), ("coinbase", "0")]),
        );
        // The first step alone: 6e13 x 0.1 = 6e12 of profit.
        let arb = arb.unwrap();
        assert_eq!(arb.quantity.get(), d("60000000000000"));
        assert_eq!(arb.profit.get(), d("6000000000000"));
        // Extreme fees and prices, smallest and largest: no panic either way.
        let odd = [
            book(
                "binance",
                &[("0.000000000000000001", "1")],
                &[("0.000000000000000001", big)],
            ),
            book("coinbase", &[(big, "0.000000000000000001")], &[(big, "1")]),
        ];
        let _ = run(
            &odd,
            &settings("0", &[("binance", "1000"), ("coinbase", "1000")]),
        );
        let _ = run(&odd, &settings("1000000", &[]));
    }

    #[test]
    fn the_rate_limit_lets_improvements_through() {
        let books = [
            book("binance", &[], &[("100", "1")]),
            book("coinbase", &[("101", "1")], &[]),
        ];
        let s = settings("5", &[]);
        let arb = run(&books, &s).unwrap();
        let better = run(
            &[book("binance", &[], &[("99", "1")]), books[1].clone()],
            &s,
        )
        .unwrap();
        let mut gate = ArbGate::default();
        let sec = 1_000_000_000;
        assert!(gate.admit(&arb, T0, sec), "the first goes out");
        assert!(!gate.admit(&arb, T0 + sec / 2, sec), "the same, too soon");
        assert!(
            gate.admit(&better, T0 + sec / 2, sec),
            "an improvement, at once"
        );
        assert!(
            !gate.admit(&better, T0 + sec / 2 + 1, sec),
            "no better than the last"
        );
        assert!(
            !gate.admit(&arb, T0 + sec, sec),
            "worse, too soon after the improvement"
        );
        assert!(
            gate.admit(&arb, T0 + sec / 2 + sec, sec),
            "the interval passed"
        );
    }

    #[test]
    fn a_message_pairing_a_venue_with_itself_is_refused_on_read() {
        let books = [
            book("binance", &[], &[("100", "1")]),
            book("coinbase", &[("101", "1")], &[]),
        ];
        let arb = run(&books, &settings("5", &[])).unwrap();
        let mut wire: serde_json::Value = serde_json::to_value(&arb).unwrap();
        wire["sell_venue"] = "binance".into();
        let error = serde_json::from_value::<ArbOpportunity>(wire).unwrap_err();
        assert!(
            error.to_string().contains("two different venues"),
            "{error}"
        );
    }
}
