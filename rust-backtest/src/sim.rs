//! The simulator: rust-risk's engine and rust-execution's paper venue, in one process,
//! on an event-time clock. Nothing here decides anything: every rule is the live one,
//! called the way the services call it (risk.rs / reports.rs of rust-execution, engine.rs
//! of rust-risk); only the transport (NATS, JetStream) and the wall clock are gone.
//!
//! - time is what the caller says it is (`advance`): the bars' times. Every report, fill
//!   and risk decision is stamped with it, so the same inputs give the same outputs;
//! - a tick marks the symbol for risk (valuation, staleness, circuit breakers) and is the
//!   paper venue's market; resting orders it makes marketable fill on it, as live;
//! - an order goes intake -> risk check -> venue -> reports -> risk's books, at once (no
//!   latency: the venue answers at the time of the order);
//! - ages on the venue side (`tick_max_age_ms`, `book_max_age_ms`) are measured on the
//!   process clock live; here the latest tick is always the market (a backtest has no
//!   feed that can stop), while risk's `stale_after_ms` runs on event time as live.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use moonbus_common::config::Config;
use moonbus_common::{
    AccountState, ExecutionReport, OrderRequest, PositiveMoney, Symbol, Tick, Timings,
    Venue as VenueName, Verdict,
};
use rust_decimal::Decimal;
use rust_execution::config::ExecutionConfig;
use rust_execution::ledger::{is_final, Ledger};
use rust_execution::paper::PaperVenue;
use rust_execution::protect::Protections;
use rust_execution::reports;
use rust_execution::risk::{answer, request_for, RiskAnswer};
use rust_execution::venue::{Market, Routed, Venue};
use rust_risk::config::Settings;
use rust_risk::engine::Engine;

/// One symbol's bars, held here so the bars between two decisions run without
/// crossing into Python (`advance_to`).
struct Series {
    venue: VenueName,
    symbol: Symbol,
    start: Vec<u64>,
    open: Vec<PositiveMoney>,
    close: Vec<PositiveMoney>,
    interval_ns: u64,
    /// The next bar to open.
    next: usize,
}

/// How far the current bar time has gone: its opens traded, its closes traded, sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Opened = 1,
    Closed = 2,
    Sampled = 3,
}

fn parse_price(symbol: &Symbol, text: &str) -> Result<PositiveMoney> {
    text.parse::<PositiveMoney>()
        .map_err(|e| anyhow::anyhow!("{symbol} price {text:?}: {e}"))
}

pub struct Simulator {
    risk: Engine,
    venue: PaperVenue,
    market: Market,
    /// Final outcomes by client_order_id: an id seen before is not executed again (for two
    /// weeks of the bars' time after it ended, as live).
    ledger: Ledger,
    now: u64,
    /// Per (venue, symbol) tick sequence, and the venue's order ids.
    seq: u64,
    orders: u64,
    series: Vec<Series>,
    /// The bar time in progress, how far it has gone, and which series have a bar then.
    step: Option<(u64, Phase, Vec<usize>)>,
    /// Equity per sampled bar time.
    curve: Vec<(u64, Decimal)>,
    /// Reports of resting orders filled while bars ran (`advance_to`), for the caller.
    pending_reports: Vec<ExecutionReport>,
    heartbeat_ns: u64,
    last_heartbeat: u64,
    /// Stop-loss, take-profit and trailing stops: rust-execution's state machine and
    /// trigger rule (protect.rs), on event time; their exits are submitted here like any
    /// order (risk's check included).
    protections: Protections,
}

impl Simulator {
    /// From the text of moonbus.toml and `MOONBUS__SECTION__KEY` overrides, read and
    /// checked exactly as the services read them ([system], [risk], [execution]).
    pub fn new(config_toml: &str, env: Vec<(String, String)>) -> Result<Self> {
        let config = Config::from_parts(config_toml, env)?;
        let settings = Settings::load(&config)?;
        let execution: ExecutionConfig = config.section("execution")?;
        execution.validate()?;
        let venues = execution
            .venues
            .iter()
            .map(|v| VenueName::try_from(v.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)
            .context("[execution] venues")?;
        let heartbeat_ns = settings.heartbeat_ms.saturating_mul(1_000_000);
        let mut risk = Engine::new(settings, 0);
        risk.mark_ready(0);
        let mut protections = Protections::new(execution.backoff());
        protections.set_now(0);
        Ok(Self {
            risk,
            venue: PaperVenue::new(venues, execution.fee_rate()?, execution.slippage_rate()?),
            market: Market::new(Duration::MAX, Duration::MAX),
            ledger: Ledger::default(),
            now: 0,
            seq: 0,
            orders: 0,
            series: Vec::new(),
            step: None,
            curve: Vec::new(),
            pending_reports: Vec::new(),
            heartbeat_ns,
            last_heartbeat: 0,
            protections,
        })
    }

    /// Moves the clock to `ts` (ns since the epoch); time never goes back. Risk's
    /// heartbeat (reservations expire, the UTC day rolls) runs as live: when
    /// `heartbeat_ms` has passed since the last one (a tick rolls the day itself).
    pub fn advance(&mut self, ts: u64) -> Result<()> {
        if ts < self.now {
            bail!("time goes back: {ts} is before {}", self.now);
        }
        self.now = ts;
        self.protections.set_now(ts);
        if ts.saturating_sub(self.last_heartbeat) >= self.heartbeat_ns {
            self.last_heartbeat = ts;
            self.risk.heartbeat(ts);
        }
        Ok(())
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// A trade at `price` at the current time: the mark for risk and the venue's
    /// market. Returns the reports of resting orders it filled.
    pub fn tick(&mut self, venue: &str, symbol: &str, price: &str) -> Result<Vec<ExecutionReport>> {
        let venue = VenueName::try_from(venue).map_err(anyhow::Error::msg)?;
        let symbol = Symbol::try_from(symbol).map_err(anyhow::Error::msg)?;
        let price = parse_price(&symbol, price)?;
        self.trade(venue, symbol, price)
    }

    fn trade(
        &mut self,
        venue: VenueName,
        symbol: Symbol,
        price: PositiveMoney,
    ) -> Result<Vec<ExecutionReport>> {
        self.seq += 1;
        let tick = Tick {
            venue,
            symbol,
            price,
            bid: None,
            ask: None,
            size: None,
            seq: self.seq,
            ts: self.now,
        };
        // A symbol beyond the live services' cap (moonbus_common::caps) is refused here as
        // there, before risk or the venue sees its price.
        self.market
            .update(tick.clone())
            .map_err(anyhow::Error::msg)?;
        self.risk.apply_tick(&tick, self.now);
        let fills = self.venue.on_market(&tick);
        let mut out: Vec<ExecutionReport> = fills
            .iter()
            .map(|(routed, fill)| reports::filled(routed, fill))
            .collect();
        self.book(&mut out);
        // The protections of the symbol watch the same tick, as live: at most one exit
        // each, submitted now (and a refused one tried again after the backoff).
        self.protections.on_tick(&tick, &self.ledger);
        self.protections.on_timer(&self.ledger);
        for exit in self.protections.take_sends() {
            out.extend(self.submit(exit));
        }
        Ok(out)
    }

    /// An order from an agent, handled as rust-execution handles one from ORDERS.
    pub fn submit(&mut self, order: OrderRequest) -> Vec<ExecutionReport> {
        if self
            .ledger
            .status(&order.client_order_id)
            .is_some_and(is_final)
        {
            return Vec::new(); // executed before: never again (execution's ledger.rs)
        }
        self.orders += 1;
        let order_id = format!("{}-{}", order.venue, self.orders);
        let timings = Timings {
            origin_ts: Some(order.origin_ts),
            received_ts: Some(self.now),
            ..Timings::default()
        };
        let mut out = if !self.venue.serves(&order.venue) {
            let reason = format!("unknown_venue: venue {} is not served here", order.venue);
            vec![reports::rejected(&order, Some(&order_id), reason, timings)]
        } else {
            let ref_price = self.market.price(&order.symbol);
            let request = request_for(&order, ref_price, self.now);
            match answer(self.risk.check(&request, self.now), self.now) {
                RiskAnswer::Refused { reason, .. } | RiskAnswer::Unavailable { reason } => {
                    vec![reports::rejected(&order, Some(&order_id), reason, timings)]
                }
                RiskAnswer::Approved { ts } => {
                    if let Some(record) = self.protections.new_record(&order) {
                        self.protections.insert(record);
                    }
                    let routed = Routed {
                        order,
                        order_id,
                        timings: Timings {
                            risk_checked_ts: Some(ts),
                            ..timings
                        },
                    };
                    // The paper venue answers at once: its future is ready when polled.
                    let placement =
                        futures::executor::block_on(self.venue.place(&routed, &self.market));
                    let (reports, rest) = reports::placed(routed, placement);
                    if let Some(routed) = rest {
                        self.venue.rest(routed);
                    }
                    reports
                }
            }
        };
        self.book(&mut out);
        out
    }

    /// Stamps reports with the event time and books them: execution's ledger, risk's books.
    fn book(&mut self, reports: &mut [ExecutionReport]) {
        self.protections.tag(reports);
        for report in reports.iter_mut() {
            report.ts = self.now;
            if report.last_fill_quantity.is_some() {
                report.timings.filled_ts = Some(self.now);
            }
            self.ledger.record(report);
            if let Err(why) = self.risk.apply_report(report) {
                // Only a fill that does not fit a decimal: risk halts the account, as live.
                report.reason = Some(why);
            }
            self.protections.on_report(report);
            for id in self.ledger.take_forgotten() {
                self.protections.forget(&id);
            }
        }
    }

    /// Adds one symbol's bars (start times strictly increasing, prices as decimal text).
    pub fn add_series(
        &mut self,
        venue: &str,
        symbol: &str,
        start: Vec<u64>,
        open: Vec<String>,
        close: Vec<String>,
        interval_ns: u64,
    ) -> Result<()> {
        if self.step.is_some() {
            bail!("series must be added before the bars run");
        }
        if open.len() != start.len() || close.len() != start.len() {
            bail!(
                "{symbol}: {} start times, {} opens, {} closes",
                start.len(),
                open.len(),
                close.len()
            );
        }
        if start.windows(2).any(|w| w[0] >= w[1]) || interval_ns == 0 {
            bail!("{symbol}: bar times must increase and the interval be positive");
        }
        let symbol = Symbol::try_from(symbol).map_err(anyhow::Error::msg)?;
        let parse = |prices: Vec<String>| -> Result<Vec<PositiveMoney>> {
            prices.iter().map(|p| parse_price(&symbol, p)).collect()
        };
        let (open, close) = (parse(open)?, parse(close)?);
        self.series.push(Series {
            venue: VenueName::try_from(venue).map_err(anyhow::Error::msg)?,
            symbol,
            start,
            open,
            close,
            interval_ns,
            next: 0,
        });
        Ok(())
    }

    /// Runs the added series' bars, in time order, up to bar time `t` having reached
    /// `phase` (or up to the last bar when `t` is beyond it). Per bar time: every due
    /// symbol's open trades at the bar's start, then (Closed) its close at the bar's
    /// last nanosecond, then (Sampled) the equity is recorded. The caller acts
    /// between phases: an order planned at the open, or at the close.
    pub fn advance_to(&mut self, t: u64, phase: Phase) -> Result<()> {
        loop {
            let (time, done, due) = match self.step.take() {
                Some((time, done, due)) if done < Phase::Sampled => (time, done, due),
                _ => {
                    let next = self
                        .series
                        .iter()
                        .filter_map(|s| s.start.get(s.next).copied())
                        .min();
                    let Some(time) = next.filter(|&n| n <= t) else {
                        return Ok(());
                    };
                    let due: Vec<usize> = (0..self.series.len())
                        .filter(|&k| self.series[k].start.get(self.series[k].next) == Some(&time))
                        .collect();
                    self.advance(time)?;
                    self.trade_bars(&due, |s, i| s.open[i])?;
                    self.step = Some((time, Phase::Opened, due));
                    continue;
                }
            };
            if time == t && done >= phase {
                self.step = Some((time, done, due));
                return Ok(());
            }
            let done = match done {
                Phase::Opened => {
                    let end = due
                        .iter()
                        .map(|&k| time.saturating_add(self.series[k].interval_ns - 1))
                        .max()
                        .unwrap_or(time);
                    self.advance(end)?;
                    self.trade_bars(&due, |s, i| s.close[i])?;
                    for &k in &due {
                        self.series[k].next += 1;
                    }
                    Phase::Closed
                }
                _ => {
                    self.curve.push((time, self.risk.equity()));
                    Phase::Sampled
                }
            };
            self.step = Some((time, done, due));
        }
    }

    /// Trades each due series' bar at the price `price` picks (its open or its close).
    fn trade_bars(
        &mut self,
        due: &[usize],
        price: fn(&Series, usize) -> PositiveMoney,
    ) -> Result<()> {
        for &k in due {
            let s = &self.series[k];
            let (venue, symbol, price) = (s.venue.clone(), s.symbol.clone(), price(s, s.next));
            let reports = self.trade(venue, symbol, price)?;
            self.pending_reports.extend(reports);
        }
        Ok(())
    }

    /// The reports of resting orders that bars filled since the last call.
    pub fn take_reports(&mut self) -> Vec<ExecutionReport> {
        std::mem::take(&mut self.pending_reports)
    }

    /// The equity at each sampled bar time since the last call.
    pub fn take_curve(&mut self) -> Vec<(u64, Decimal)> {
        std::mem::take(&mut self.curve)
    }

    /// Records the equity now (a caller running bars itself, with `tick`).
    pub fn sample(&mut self) {
        self.curve.push((self.now, self.risk.equity()));
    }

    pub fn account(&self) -> AccountState {
        self.risk.account(self.now)
    }

    pub fn verdict(&self, symbol: &str) -> Option<Verdict> {
        self.risk
            .verdicts(self.now)
            .into_iter()
            .find(|v| v.symbol.as_str() == symbol)
    }

    pub fn equity(&self) -> Decimal {
        self.risk.equity()
    }
}
