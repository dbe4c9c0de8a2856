//! The equity marks the loss limits are measured from: the peak (for drawdown) and
//! the equity at the start of the current UTC day (for day PnL).

use rust_decimal::Decimal;

const NS_PER_DAY: u64 = 86_400 * 1_000_000_000;

#[derive(Debug, Clone)]
pub struct Watermarks {
    pub peak_equity: Decimal,
    /// UTC day number (days since the epoch) the day start below belongs to.
    day: Option<u64>,
    day_start_equity: Decimal,
}

impl Watermarks {
    pub fn new(starting_equity: Decimal) -> Self {
        Self {
            peak_equity: starting_equity,
            day: None,
            day_start_equity: starting_equity,
        }
    }

    /// Call before applying an event at `now_ns`: the first event of a new UTC day
    /// records the equity the day starts from. Time never runs back a day.
    pub fn roll_day(&mut self, now_ns: u64, equity: Decimal) {
        if self.rolls_over(now_ns) {
            self.day = Some(now_ns / NS_PER_DAY);
            self.day_start_equity = equity;
        }
    }

    /// Whether an event at `now_ns` starts a new UTC day (`roll_day` would record one).
    pub fn rolls_over(&self, now_ns: u64) -> bool {
        let day = now_ns / NS_PER_DAY;
        self.day.is_none_or(|current| day > current)
    }

    /// The UTC day (days since the epoch) the day start belongs to.
    /// (peak equity, UTC day, equity at the day's start), for a snapshot.
    pub fn parts(&self) -> (Decimal, Option<u64>, Decimal) {
        (self.peak_equity, self.day, self.day_start_equity)
    }

    pub fn from_parts(peak_equity: Decimal, day: Option<u64>, day_start_equity: Decimal) -> Self {
        Self {
            peak_equity,
            day,
            day_start_equity,
        }
    }

    pub fn day(&self) -> Option<u64> {
        self.day
    }

    /// Call after applying an event.
    pub fn observe(&mut self, equity: Decimal) {
        self.peak_equity = self.peak_equity.max(equity);
    }

    /// Saturates at the end of the decimal range (a loss that large breaches any limit).
    pub fn day_pnl(&self, equity: Decimal) -> Decimal {
        equity.saturating_sub(self.day_start_equity)
    }

    /// Percent below the peak (0 at or above it, and when the peak is not positive);
    /// Decimal::MAX when it does not fit a decimal (a fall from a tiny peak).
    pub fn drawdown_pct(&self, equity: Decimal) -> Decimal {
        if self.peak_equity <= Decimal::ZERO || equity >= self.peak_equity {
            return Decimal::ZERO;
        }
        self.peak_equity
            .checked_sub(equity)
            .and_then(|x| x.checked_div(self.peak_equity))
            .and_then(|x| x.checked_mul(Decimal::ONE_HUNDRED))
            .unwrap_or(Decimal::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::d;

    #[test]
    fn day_pnl_is_measured_from_the_first_equity_of_the_utc_day() {
        let mut w = Watermarks::new(d("1000"));
        w.roll_day(NS_PER_DAY * 10 + 5, d("1000"));
        assert_eq!(w.day_pnl(d("900")), d("-100"));
        // Later the same day: still measured from 1000.
        w.roll_day(NS_PER_DAY * 11 - 1, d("900"));
        assert_eq!(w.day_pnl(d("950")), d("-50"));
        // Next day starts at 950; an older timestamp does not roll back.
        w.roll_day(NS_PER_DAY * 11, d("950"));
        w.roll_day(NS_PER_DAY * 10, d("1"));
        assert_eq!(w.day_pnl(d("940")), d("-10"));
    }

    #[test]
    fn drawdown_from_the_peak() {
        let mut w = Watermarks::new(d("1000"));
        w.observe(d("1200"));
        w.observe(d("1100"));
        assert_eq!(w.peak_equity, d("1200"));
        assert_eq!(w.drawdown_pct(d("1080")), d("10"));
        assert_eq!(w.drawdown_pct(d("1300")), d("0"));
        let broke = Watermarks::new(d("0"));
        assert_eq!(broke.drawdown_pct(d("-5")), d("0"));
        // Beyond the decimal range: the largest figure, no panic.
        let tiny = Watermarks::new(Decimal::new(1, 28));
        assert_eq!(tiny.drawdown_pct(Decimal::MIN), Decimal::MAX);
        assert_eq!(tiny.day_pnl(Decimal::MIN), Decimal::MIN);
    }
}
