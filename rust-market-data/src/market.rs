//! The market state: per (venue, symbol) the latest tick, the bars, the alert
//! monitor and the latest book; per symbol the monitor setting and the aggregated
//! book. Answers the price/prices/history/monitor queries. Pure data, no I/O: the
//! engine owns the one instance and does the publishing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::Subject;
use bytes::Bytes;
use moonbus_common::{
    subjects, ArbOpportunity, Bar, Book, HistoryRequest, Monitor as MonitorInfo,
    MonitorStartRequest, MonitorStatusReply, PositiveMoney, PriceAlert, PriceRequest, PricesReply,
    PricesRequest, Symbol, Tick, Venue,
};

use crate::alerts::{Monitor, Threshold};
use crate::arb::{self, ArbGate, ArbSettings};
use crate::bars::{self, BarData, Bars, Closed, Intervals};
use crate::books::{self, BookSlot};
use crate::encode::{tick_prefix, TickData, TickEncoder};
use crate::fnv::FnvBuild;
use crate::metrics::{self, VenueMetrics};
use crate::prefetch;

/// A query refused, as the `{"error": {"code", "message"}}` reply will say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: &'static str, message: String) -> Self {
        Self { code, message }
    }
}

/// The market's settings (validated in config.rs).
#[derive(Debug, Clone)]
pub struct MarketSettings {
    pub intervals: Intervals,
    /// Closed bars kept per (venue, symbol, interval).
    pub history: usize,
    /// At most this many (venue, symbol) series; ticks for more are dropped.
    pub max_series: usize,
    pub book_depth: usize,
    pub book_interval_ns: u64,
    /// A venue's book older than this is left out of the aggregate, and a symbol
    /// without a tick for this long counts as stale.
    pub stale_after_ns: u64,
    /// The monitor of a symbol without its own threshold (`None`: no monitor).
    pub default_threshold: Option<Threshold>,
    /// Per-symbol thresholds from the config.
    pub thresholds: HashMap<Symbol, Threshold>,
    /// The symbols known before any tick ([system].symbols): monitors can be set on them.
    pub symbols: Vec<Symbol>,
    /// `[market_data.arb]`: the cross-venue arbitrage detector.
    pub arb: ArbSettings,
}

/// One (venue, symbol), with its subjects built once (cloning a `Subject` does not allocate).
struct Series {
    venue: Venue,
    symbol: Symbol,
    metrics: Arc<VenueMetrics>,
    tick_subject: Subject,
    /// The constant start of this series' tick JSON.
    prefix: Box<[u8]>,
    latest: Option<TickData>,
    bars: Bars,
    bar_subjects: Vec<Subject>,
    monitor: Option<Monitor>,
    book: BookSlot,
    book_subject: Subject,
    /// Its ticks carry a replay file's time (`replay_clock = "file"`): its bars are
    /// closed by `close_replayed`, never by the wall clock's `close_due`.
    file_clock: bool,
}

/// One symbol, across venues.
struct SymbolState {
    /// Its series, one per venue, in order of first appearance.
    slots: Vec<usize>,
    threshold: Option<Threshold>,
    all_subject: Subject,
    all_seq: u64,
    /// The rate limit of its `md.arb.<symbol>`.
    arb_gate: ArbGate,
}

pub struct Market {
    settings: MarketSettings,
    all_metrics: Arc<VenueMetrics>,
    series: Vec<Series>,
    symbols: HashMap<Symbol, SymbolState, FnvBuild>,
}

/// Books to publish, encoded: (subject, JSON).
#[derive(Debug, Default)]
pub struct BookOut {
    pub encoder: TickEncoder,
    pub books: Vec<(Subject, Bytes)>,
    /// Arbitrage opportunities to publish (`md.arb.<symbol>`), before the books.
    pub arbs: Vec<ArbOpportunity>,
}

/// What recording a tick produced, for the engine to publish.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Closed bars: (slot, bar).
    pub bars: Vec<(usize, Closed)>,
    pub alerts: Vec<PriceAlert>,
    /// Reused between calls, so the tick path does not allocate.
    scratch: Vec<Closed>,
}

impl Market {
    pub fn new(settings: MarketSettings) -> Self {
        let mut market = Self {
            all_metrics: metrics::venue("all"),
            series: Vec::new(),
            symbols: HashMap::default(),
            settings,
        };
        for symbol in market.settings.symbols.clone() {
            market.symbol_state(&symbol);
        }
        market
    }

    pub fn settings(&self) -> &MarketSettings {
        &self.settings
    }

    fn symbol_state(&mut self, symbol: &Symbol) -> &mut SymbolState {
        let settings = &self.settings;
        self.symbols
            .entry(symbol.clone())
            .or_insert_with(|| SymbolState {
                slots: Vec::new(),
                threshold: settings
                    .thresholds
                    .get(symbol)
                    .copied()
                    .or(settings.default_threshold),
                all_subject: subjects::book("all", symbol).into(),
                all_seq: 0,
                arb_gate: ArbGate::default(),
            })
    }

    /// The slot of (venue, symbol), created on first sight; `None` once
    /// `max_series` slots exist (memory stays bounded whatever a feed sends).
    pub fn slot(&mut self, venue: &Venue, symbol: &Symbol) -> Option<usize> {
        if let Some(slot) = self.find(venue, symbol) {
            return Some(slot);
        }
        if self.series.len() >= self.settings.max_series {
            metrics::global().dropped_max_series.inc();
            return None;
        }
        let slot = self.series.len();
        let state = self.symbol_state(symbol);
        state.slots.push(slot);
        let monitor = state.threshold.map(Monitor::new);
        let settings = &self.settings;
        self.series.push(Series {
            venue: venue.clone(),
            symbol: symbol.clone(),
            metrics: metrics::venue(venue.as_str()),
            tick_subject: lasting(subjects::tick(venue, symbol)),
            prefix: tick_prefix(venue, symbol),
            latest: None,
            bars: Bars::new(&settings.intervals, settings.history),
            bar_subjects: settings
                .intervals
                .iter()
                .map(|i| lasting(subjects::bar(i, venue, symbol)))
                .collect(),
            monitor,
            book: BookSlot::default(),
            book_subject: lasting(subjects::book(venue, symbol)),
            file_clock: false,
        });
        Some(slot)
    }

    fn find(&self, venue: &Venue, symbol: &Symbol) -> Option<usize> {
        self.symbols
            .get(symbol.as_str())?
            .slots
            .iter()
            .copied()
            .find(|&i| self.series[i].venue == *venue)
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The subject, JSON prefix and counters of a slot's ticks.
    pub fn tick_route(&self, slot: usize) -> (&Subject, &[u8], &VenueMetrics) {
        let s = &self.series[slot];
        (&s.tick_subject, &s.prefix, &s.metrics)
    }

    /// Asks the CPU to bring `slot`'s series into cache ahead of its tick: at thousands
    /// of symbols in turn, each tick's series is cold, and waiting for it was a good
    /// part of a tick's time. Call a few ticks ahead of `prefetch_parts`, which reads
    /// the series to find what it points to.
    pub fn prefetch_series(&self, slot: usize) {
        if let Some(series) = self.series.get(slot) {
            prefetch::value(series);
        }
    }

    /// What a tick of `slot` reads behind the series' pointers: its subject, its JSON
    /// prefix, its base interval's open bar and its monitor's latest bucket.
    pub fn prefetch_parts(&self, slot: usize) {
        if let Some(series) = self.series.get(slot) {
            let subject = series.tick_subject.as_str();
            prefetch::bytes(subject.as_ptr(), subject.len());
            prefetch::bytes(series.prefix.as_ptr(), series.prefix.len());
            series.bars.prefetch();
            if let Some(monitor) = &series.monitor {
                monitor.prefetch();
            }
        }
    }

    /// Keeps `tick` as the latest of its slot, feeds its bars and its monitor.
    pub fn record(&mut self, slot: usize, tick: TickData, out: &mut Outputs) {
        let series = &mut self.series[slot];
        series
            .bars
            .on_tick(tick.ts, tick.price, tick.size, &mut out.scratch);
        out.bars.extend(out.scratch.drain(..).map(|c| (slot, c)));
        series.latest = Some(tick);
        if let Some(monitor) = &mut series.monitor {
            if let Some(alert) =
                monitor.on_price(&series.venue, &series.symbol, tick.price, tick.ts)
            {
                out.alerts.push(alert);
            }
        }
    }

    /// Closes every open bar whose interval ended by `now_ns` on the wall clock (the
    /// series on a replay file's clock are left to `close_replayed`).
    pub fn close_due(&mut self, now_ns: u64, out: &mut Outputs) {
        self.close_where(now_ns, false, out);
    }

    /// Puts a slot on the replay file's clock (its ticks carry the file's time). Its bars
    /// start afresh: bars kept from before (reloaded from BARS after an earlier replay of
    /// the same file) are of another timeline, and their end would pull every replayed
    /// tick into one bar.
    pub fn use_file_clock(&mut self, slot: usize) {
        let series = &mut self.series[slot];
        if !series.file_clock {
            series.file_clock = true;
            series.bars = Bars::new(&self.settings.intervals, self.settings.history);
        }
    }

    /// Closes the bars of the series on the replay file's clock whose interval ended by
    /// `file_ns` (`u64::MAX`: all of them, at the end of the replay).
    pub fn close_replayed(&mut self, file_ns: u64, out: &mut Outputs) {
        self.close_where(file_ns, true, out);
    }

    fn close_where(&mut self, now_ns: u64, file_clock: bool, out: &mut Outputs) {
        for (slot, series) in self.series.iter_mut().enumerate() {
            if series.file_clock == file_clock {
                series.bars.close_due(now_ns, &mut out.scratch);
                out.bars.extend(out.scratch.drain(..).map(|c| (slot, c)));
            }
        }
    }

    /// The subject and wire form of a closed bar.
    pub fn bar_out(&self, slot: usize, closed: &Closed) -> (Subject, Bar) {
        let s = &self.series[slot];
        let bar = bars::to_bar(&s.venue, &s.symbol, &self.settings.intervals, closed);
        (s.bar_subjects[closed.0].clone(), bar)
    }

    /// Takes back a bar closed before a restart, stored on `subject` (see history.rs);
    /// the reason if it is refused.
    pub fn restore(&mut self, subject: &str, bar: &Bar) -> Result<(), String> {
        let intervals = &self.settings.intervals;
        let index = intervals
            .iter()
            .position(|i| *i == bar.interval)
            .ok_or_else(|| {
                format!(
                    "interval {} is not one of {}",
                    bar.interval,
                    intervals.names()
                )
            })?;
        if bar.end_ts.checked_sub(bar.start_ts) != intervals.len_ns(index) {
            return Err(format!(
                "start_ts..end_ts is not one {} interval",
                bar.interval
            ));
        }
        let slot = self
            .slot(&bar.venue, &bar.symbol)
            .ok_or("max_series reached")?;
        let series = &mut self.series[slot];
        if series.bar_subjects[index].as_str() != subject {
            return Err(format!("stored on {subject}, not on its own subject"));
        }
        let data = BarData {
            open: bar.open,
            high: bar.high,
            low: bar.low,
            close: bar.close,
            volume: bar.volume,
            trades: bar.trades,
            start_ts: bar.start_ts,
        };
        if series.bars.restore(index, data) {
            Ok(())
        } else {
            Err("misaligned, or not later than the bar before it".into())
        }
    }

    /// The close of the last closed bar of (venue, symbol) in the shortest interval.
    pub fn last_close(&self, venue: &Venue, symbol: &Symbol) -> Option<PositiveMoney> {
        let slot = self.find(venue, symbol)?;
        self.series[slot]
            .bars
            .last(0, 1)
            .first()
            .map(|bar| bar.close)
    }

    /// Counts, per venue, the series without a tick for `stale_after`, and sets the gauges
    /// (not the series on a replay file's clock: their ticks are old by design).
    pub fn count_stale(&self, now_ns: u64) {
        let mut stale: HashMap<&str, (u64, &VenueMetrics)> = HashMap::new();
        for s in self.series.iter().filter(|s| !s.file_clock) {
            let entry = stale.entry(s.venue.as_str()).or_insert((0, &s.metrics));
            let last = s.latest.map_or(0, |t| t.ts);
            if now_ns.saturating_sub(last) >= self.settings.stale_after_ns {
                entry.0 += 1;
            }
        }
        for (count, metrics) in stale.values() {
            metrics.stale_symbols.set(*count);
        }
    }

    // ------------------------------------------------------------------ books

    /// Takes a venue's book; returns the books to publish now: the venue's (if its
    /// interval has passed, else it waits for `flush_books`) and the aggregate.
    /// Every book offered is also looked at for a cross-venue arbitrage (arb.rs).
    pub fn offer_book(&mut self, slot: usize, book: Book, now_ns: u64, out: &mut BookOut) {
        let interval = self.settings.book_interval_ns;
        let source_ts = book.ts;
        let due = self.series[slot].book.offer(book, now_ns, interval);
        self.detect_arb(slot, source_ts, now_ns, out);
        if due {
            self.publish_book(slot, now_ns, out);
        }
    }

    /// Publishes the books that waited for their interval.
    pub fn flush_books(&mut self, now_ns: u64, out: &mut BookOut) {
        let interval = self.settings.book_interval_ns;
        for slot in 0..self.series.len() {
            let book = &self.series[slot].book;
            if book.pending && now_ns.saturating_sub(book.published_ns) >= interval {
                self.publish_book(slot, now_ns, out);
            }
        }
    }

    fn publish_book(&mut self, slot: usize, now_ns: u64, out: &mut BookOut) {
        let series = &mut self.series[slot];
        series.book.published(now_ns);
        let Some(book) = &series.book.latest else {
            return;
        };
        series.metrics.books_out.inc();
        let payload = out.encoder.book(series.venue.as_str(), book);
        out.books.push((series.book_subject.clone(), payload));
        self.aggregate(slot, now_ns, out);
    }

    /// `md.arb.<symbol>` if the fresh books of the symbol of `slot` (two venues or
    /// more) hold an opportunity that the symbol's rate limit lets through.
    fn detect_arb(&mut self, slot: usize, source_ts: u64, now_ns: u64, out: &mut BookOut) {
        let settings = &self.settings.arb;
        if !settings.enabled {
            return;
        }
        let series = &self.series;
        let symbol = &series[slot].symbol;
        let Some(state) = self.symbols.get_mut(symbol.as_str()) else {
            return;
        };
        if state.slots.len() < 2 {
            return;
        }
        let since = now_ns.saturating_sub(self.settings.stale_after_ns);
        let fresh: Vec<&Book> = state
            .slots
            .iter()
            .filter_map(|&i| series[i].book.latest.as_ref())
            .filter(|b| b.ts >= since)
            .collect();
        if fresh.len() < 2 {
            return;
        }
        let Some(found) = arb::detect(symbol, &fresh, settings, source_ts, now_ns) else {
            return;
        };
        if state
            .arb_gate
            .admit(&found, now_ns, settings.min_interval_ns)
        {
            out.arbs.push(found);
        }
    }

    /// `md.book.all.<symbol>` for the symbol of `slot`.
    fn aggregate(&mut self, slot: usize, now_ns: u64, out: &mut BookOut) {
        let since = now_ns.saturating_sub(self.settings.stale_after_ns);
        let depth = self.settings.book_depth;
        let series = &self.series;
        let symbol = &series[slot].symbol;
        let state = self
            .symbols
            .get_mut(symbol.as_str())
            .expect("a slot's symbol is known");
        let fresh: Vec<&Book> = state
            .slots
            .iter()
            .filter_map(|&i| series[i].book.latest.as_ref())
            .filter(|b| b.ts >= since)
            .collect();
        state.all_seq += 1;
        self.all_metrics.books_out.inc();
        let payload = match fresh.as_slice() {
            // One venue: its levels as they are (the common case: no merge).
            [book] => {
                let (bids, asks) = (
                    &book.bids[..depth.min(book.bids.len())],
                    &book.asks[..depth.min(book.asks.len())],
                );
                out.encoder
                    .levels("all", symbol, bids, asks, state.all_seq, now_ns)
            }
            books => {
                let (bids, asks) = books::aggregate(books.iter().copied(), depth);
                out.encoder
                    .levels("all", symbol, &bids, &asks, state.all_seq, now_ns)
            }
        };
        out.books.push((state.all_subject.clone(), payload));
    }

    // ------------------------------------------------------------------ queries

    /// `md.api.price`: the latest tick on `venue`, or without a venue the most
    /// recent tick of any venue.
    pub fn price(&self, request: &PriceRequest) -> Result<Tick, ApiError> {
        self.latest(&request.symbol, request.venue.as_ref())?
            .ok_or_else(|| ApiError::new("no_price", format!("no tick for {} yet", request.symbol)))
    }

    /// `md.api.prices`: every symbol with a price; the others (unknown, or no tick
    /// yet) are named once each in `missing`, in request order.
    pub fn prices(&self, request: &PricesRequest) -> PricesReply {
        let mut reply = PricesReply {
            prices: Default::default(),
            missing: Vec::new(),
        };
        let mut missing = HashSet::new();
        for symbol in &request.symbols {
            match self.latest(symbol, request.venue.as_ref()).ok().flatten() {
                Some(tick) => {
                    reply.prices.insert(symbol.to_string(), tick);
                }
                None => {
                    if missing.insert(symbol.as_str()) {
                        reply.missing.push(symbol.to_string());
                    }
                }
            }
        }
        reply
    }

    /// `md.api.history`: the last `limit` closed bars, oldest first, of `venue`
    /// (default: the symbol's first venue).
    pub fn history(&self, request: &HistoryRequest) -> Result<Vec<Bar>, ApiError> {
        let slot = match &request.venue {
            Some(venue) => self.slot_on(&request.symbol, venue)?,
            None => *self
                .slots_of(&request.symbol)?
                .first()
                .ok_or_else(|| no_data(&request.symbol))?,
        };
        let intervals = &self.settings.intervals;
        let index = intervals
            .iter()
            .position(|i| *i == request.interval)
            .ok_or_else(|| {
                ApiError::new(
                    "unknown_interval",
                    format!(
                        "interval {} is not served; the intervals are {}",
                        request.interval,
                        intervals.names()
                    ),
                )
            })?;
        let s = &self.series[slot];
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        Ok(s.bars
            .last(index, limit)
            .into_iter()
            .map(|bar| bars::to_bar(&s.venue, &s.symbol, intervals, &(index, bar)))
            .collect())
    }

    /// `md.api.monitor.start`: set (or replace) the symbol's monitor on every venue.
    pub fn monitor_start(
        &mut self,
        request: &MonitorStartRequest,
    ) -> Result<MonitorStatusReply, ApiError> {
        let threshold = Threshold {
            threshold_pct: request.threshold_pct,
            window_s: request.window_s,
        };
        self.set_monitor(&request.symbol, Some(threshold))?;
        Ok(self
            .monitor_status(Some(&request.symbol))
            .unwrap_or_else(|_| MonitorStatusReply {
                monitors: Vec::new(),
            }))
    }

    /// `md.api.monitor.stop`: no alerts for the symbol until the next start.
    /// Stopping a symbol without a monitor is not an error (the reply is empty).
    pub fn monitor_stop(&mut self, symbol: &Symbol) -> Result<MonitorStatusReply, ApiError> {
        self.set_monitor(symbol, None)?;
        Ok(MonitorStatusReply {
            monitors: Vec::new(),
        })
    }

    /// `md.api.monitor.status`: the symbol's monitor, or every monitor (by symbol).
    pub fn monitor_status(&self, symbol: Option<&Symbol>) -> Result<MonitorStatusReply, ApiError> {
        let info = |symbol: &Symbol, state: &SymbolState| {
            state.threshold.map(|t| MonitorInfo {
                symbol: symbol.clone(),
                threshold_pct: t.threshold_pct,
                window_s: t.window_s,
            })
        };
        let mut monitors: Vec<MonitorInfo> = match symbol {
            Some(symbol) => {
                let state = self
                    .symbols
                    .get(symbol.as_str())
                    .ok_or_else(|| unknown_symbol(symbol))?;
                info(symbol, state).into_iter().collect()
            }
            None => self
                .symbols
                .iter()
                .filter_map(|(s, state)| info(s, state))
                .collect(),
        };
        monitors.sort_by(|a, b| a.symbol.cmp(&b.symbol));
        Ok(MonitorStatusReply { monitors })
    }

    fn set_monitor(
        &mut self,
        symbol: &Symbol,
        threshold: Option<Threshold>,
    ) -> Result<(), ApiError> {
        let state = self
            .symbols
            .get_mut(symbol.as_str())
            .ok_or_else(|| unknown_symbol(symbol))?;
        state.threshold = threshold;
        for &slot in &state.slots {
            self.series[slot].monitor = threshold.map(Monitor::new);
        }
        Ok(())
    }

    /// The latest tick of `symbol` on `venue`, or the most recent of any venue.
    fn latest(&self, symbol: &Symbol, venue: Option<&Venue>) -> Result<Option<Tick>, ApiError> {
        let slot = match venue {
            Some(venue) => Some(self.slot_on(symbol, venue)?),
            None => self
                .slots_of(symbol)?
                .iter()
                .copied()
                .filter(|&i| self.series[i].latest.is_some())
                .max_by_key(|&i| self.series[i].latest.map(|t| t.ts)),
        };
        Ok(slot.and_then(|i| {
            let s = &self.series[i];
            s.latest.map(|t| Tick {
                venue: s.venue.clone(),
                symbol: s.symbol.clone(),
                price: t.price,
                bid: t.bid,
                ask: t.ask,
                size: t.size,
                seq: t.seq,
                ts: t.ts,
            })
        }))
    }

    fn slots_of(&self, symbol: &Symbol) -> Result<&[usize], ApiError> {
        self.symbols
            .get(symbol.as_str())
            .map(|s| s.slots.as_slice())
            .ok_or_else(|| unknown_symbol(symbol))
    }

    fn slot_on(&self, symbol: &Symbol, venue: &Venue) -> Result<usize, ApiError> {
        let slots = self.slots_of(symbol)?;
        slots
            .iter()
            .copied()
            .find(|&i| self.series[i].venue == *venue)
            .ok_or_else(|| {
                let venues: Vec<&str> = slots
                    .iter()
                    .map(|&i| self.series[i].venue.as_str())
                    .collect();
                let on = if venues.is_empty() {
                    "no venue yet".to_string()
                } else {
                    venues.join(", ")
                };
                ApiError::new(
                    "unknown_venue",
                    format!("no {symbol} on venue {venue}; it is on {on}"),
                )
            })
    }
}

/// A subject for as long as the process runs. A series is never removed (and there
/// are at most `max_series`), so its subjects are leaked once, a few hundred bytes a
/// series: cloning a static `Subject` is free, where a shared one would bounce its
/// reference count between this thread and the NATS connection's on every message.
fn lasting(subject: String) -> Subject {
    Subject::from_static(Box::leak(subject.into_boxed_str()))
}

fn unknown_symbol(symbol: &Symbol) -> ApiError {
    ApiError::new(
        "unknown_symbol",
        format!("{symbol} is not a configured symbol and no feed has sent it"),
    )
}

fn no_data(symbol: &Symbol) -> ApiError {
    ApiError::new("no_price", format!("no tick for {symbol} yet"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::{PositiveMoney, PriceLevel};

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_764_129_600 * SEC;

    fn market() -> Market {
        let names: Vec<String> = ["1s", "1m"].iter().map(|s| s.to_string()).collect();
        Market::new(MarketSettings {
            intervals: Intervals::parse(&names).unwrap(),
            history: 100,
            max_series: 3,
            book_depth: 3,
            book_interval_ns: SEC,
            stale_after_ns: 10 * SEC,
            default_threshold: None,
            thresholds: HashMap::new(),
            symbols: vec!["BTC-USD".parse().unwrap()],
            arb: ArbSettings::default(),
        })
    }

    fn data(price: &str, seq: u64, ts: u64) -> TickData {
        TickData {
            price: price.parse().unwrap(),
            bid: None,
            ask: None,
            size: None,
            seq,
            ts,
        }
    }

    fn venue(name: &str) -> Venue {
        name.parse().unwrap()
    }

    fn level(p: &str, s: &str) -> PriceLevel {
        (p.parse::<PositiveMoney>().unwrap(), s.parse().unwrap())
    }

    #[test]
    fn venues_of_a_symbol_price_history_and_the_series_bound() {
        let mut m = market();
        let btc: Symbol = "BTC-USD".parse().unwrap();
        let a = m.slot(&venue("sim"), &btc).unwrap();
        let b = m.slot(&venue("binance"), &btc).unwrap();
        assert_eq!(
            m.slot(&venue("sim"), &btc),
            Some(a),
            "a slot is found again"
        );
        let mut out = Outputs::default();
        m.record(a, data("100", 1, T0), &mut out);
        m.record(b, data("101", 1, T0 + 1), &mut out);
        m.record(a, data("102", 2, T0 + SEC), &mut out);
        assert_eq!(out.bars.len(), 1, "sim's first 1s bar closed");
        let price = |json: &str| m.price(&serde_json::from_str(json).unwrap());
        assert_eq!(
            price(r#"{"symbol":"BTC-USD"}"#).unwrap().price.to_string(),
            "102",
            "the most recent of any venue"
        );
        let on_binance = price(r#"{"symbol":"BTC-USD","venue":"binance"}"#).unwrap();
        assert_eq!(
            (on_binance.venue.as_str(), on_binance.price.to_string()),
            ("binance", "101".to_string())
        );
        assert_eq!(
            price(r#"{"symbol":"BTC-USD","venue":"coinbase"}"#)
                .unwrap_err()
                .code,
            "unknown_venue"
        );
        let history = m
            .history(&serde_json::from_str(r#"{"symbol":"BTC-USD","interval":"1s"}"#).unwrap())
            .unwrap();
        assert_eq!(
            (
                history.len(),
                history[0].venue.as_str(),
                history[0].close.to_string()
            ),
            (1, "sim", "100".to_string())
        );
        let err = m
            .history(&serde_json::from_str(r#"{"symbol":"BTC-USD","interval":"5m"}"#).unwrap())
            .unwrap_err();
        assert_eq!(
            (err.code, err.message.contains("1s, 1m")),
            ("unknown_interval", true)
        );
        // max_series = 3: a third pair fits, a fourth is refused.
        assert!(m.slot(&venue("sim"), &"ETH-USD".parse().unwrap()).is_some());
        assert!(m.slot(&venue("sim"), &"SOL-USD".parse().unwrap()).is_none());
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn the_wall_clock_leaves_the_bars_on_a_replay_files_clock_alone() {
        let mut m = market();
        let btc: Symbol = "BTC-USD".parse().unwrap();
        let (live, replayed) = (
            m.slot(&venue("sim"), &btc).unwrap(),
            m.slot(&venue("replay"), &btc).unwrap(),
        );
        let request: HistoryRequest =
            serde_json::from_str(r#"{"symbol":"BTC-USD","interval":"1s","venue":"replay"}"#)
                .unwrap();
        // A bar from before (an earlier replay, reloaded from BARS) is of another timeline:
        // it is dropped when the series goes on the file's clock.
        let mut out = Outputs::default();
        m.record(replayed, data("80", 1, T0 + 10 * SEC), &mut out);
        m.close_due(T0 + 11 * SEC, &mut out);
        assert_eq!(m.history(&request).unwrap().len(), 1);
        m.use_file_clock(replayed);
        assert!(m.history(&request).unwrap().is_empty());
        out.bars.clear();

        m.record(live, data("100", 1, T0), &mut out);
        m.record(replayed, data("90", 1, T0), &mut out);
        m.close_due(T0 + 3600 * SEC, &mut out);
        let closed: Vec<usize> = out.bars.iter().map(|(slot, _)| *slot).collect();
        assert_eq!(closed, [live, live], "the live 1s and 1m bars only");
        out.bars.clear();
        m.close_replayed(T0 + SEC, &mut out);
        let closed: Vec<(usize, usize)> = out.bars.iter().map(|(s, (i, _))| (*s, *i)).collect();
        assert_eq!(closed, [(replayed, 0)], "its 1s bar, on the file's time");
        out.bars.clear();
        m.close_replayed(u64::MAX, &mut out);
        assert_eq!(out.bars.len(), 1, "the rest at the end: its 1m bar");
    }

    #[test]
    fn every_book_offered_is_looked_at_for_an_arbitrage_among_fresh_books() {
        let mut m = market();
        let btc: Symbol = "BTC-USD".parse().unwrap();
        let (a, b) = (
            m.slot(&venue("sim"), &btc).unwrap(),
            m.slot(&venue("binance"), &btc).unwrap(),
        );
        let book = |v: &str, bid: &str, ask: &str, ts| Book {
            venue: venue(v),
            symbol: btc.clone(),
            bids: vec![level(bid, "1")],
            asks: vec![level(ask, "1")],
            seq: 1,
            ts,
        };
        let mut out = BookOut::default();
        // The sim alone: nothing to pair.
        m.offer_book(a, book("sim", "100", "100.1", T0), T0, &mut out);
        assert!(out.arbs.is_empty());
        // binance bids 101 while the sim asks 100.1: ~69.9 bps net of 10 + 10.
        m.offer_book(b, book("binance", "101", "101.2", T0 + 5), T0 + 5, &mut out);
        let arbs: Vec<_> = out.arbs.drain(..).collect();
        assert_eq!(arbs.len(), 1);
        let arb = &arbs[0];
        assert_eq!(
            (arb.buy_venue.as_str(), arb.sell_venue.as_str()),
            ("sim", "binance")
        );
        assert_eq!((arb.source_ts, arb.ts), (T0 + 5, T0 + 5));
        // Within the interval (1 s): the same opportunity waits...
        m.offer_book(
            b,
            book("binance", "101", "101.2", T0 + 9),
            T0 + SEC / 2,
            &mut out,
        );
        assert!(out.arbs.is_empty());
        // ...a better one does not; and a new book arriving during the book interval (not
        // yet published on md.book) is looked at all the same.
        m.offer_book(
            b,
            book("binance", "101.5", "101.6", T0 + 10),
            T0 + SEC / 2,
            &mut out,
        );
        assert_eq!(out.arbs.drain(..).count(), 1);
        // The sim's book goes stale (10 s): no pair left, though binance is fresh.
        let later = T0 + 12 * SEC;
        m.offer_book(b, book("binance", "102", "102.1", later), later, &mut out);
        assert!(out.arbs.is_empty(), "the sim's book is 12 s old");
        // Off: nothing.
        m.settings.arb.enabled = false;
        m.offer_book(a, book("sim", "100", "100.1", later), later, &mut out);
        assert!(out.arbs.is_empty());
        m.settings.arb.enabled = true;
        m.offer_book(a, book("sim", "100", "100.1", later), later + 1, &mut out);
        assert_eq!(
            out.arbs.len(),
            1,
            "both fresh again, a second after the last"
        );
    }

    #[test]
    fn the_aggregate_merges_the_fresh_books_of_every_venue() {
        let mut m = market();
        let btc: Symbol = "BTC-USD".parse().unwrap();
        let (a, b) = (
            m.slot(&venue("sim"), &btc).unwrap(),
            m.slot(&venue("binance"), &btc).unwrap(),
        );
        let book = |v: &str, bids: Vec<PriceLevel>, asks: Vec<PriceLevel>, ts| Book {
            venue: venue(v),
            symbol: btc.clone(),
            bids,
            asks,
            seq: 1,
            ts,
        };
        let mut out = BookOut::default();
        m.offer_book(
            a,
            book(
                "sim",
                vec![level("100", "1"), level("99", "2")],
                vec![level("101", "1")],
                T0,
            ),
            T0,
            &mut out,
        );
        m.offer_book(
            b,
            book(
                "binance",
                vec![level("100.5", "3"), level("99", "1")],
                vec![level("100.9", "2")],
                T0,
            ),
            T0,
            &mut out,
        );
        let subjects: Vec<&str> = out.books.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "md.book.sim.BTC-USD",
                "md.book.all.BTC-USD",
                "md.book.binance.BTC-USD",
                "md.book.all.BTC-USD"
            ]
        );
        let all: Book = serde_json::from_slice(&out.books[3].1).unwrap();
        assert_eq!(
            all.bids,
            [level("100.5", "3"), level("100", "1"), level("99", "3")]
        );
        assert_eq!(all.asks, [level("100.9", "2"), level("101", "1")]);
        assert_eq!((all.venue.as_str(), all.seq), ("all", 2));
        // Within the interval a new book waits (latest wins); the flush sends it.
        out.books.clear();
        m.offer_book(
            b,
            book("binance", vec![level("100.6", "1")], vec![], T0 + 1),
            T0 + 1,
            &mut out,
        );
        assert!(out.books.is_empty());
        m.flush_books(T0 + SEC / 2, &mut out);
        assert!(out.books.is_empty(), "not due yet");
        m.flush_books(T0 + SEC, &mut out);
        assert_eq!(out.books.len(), 2);
        // Much later the sim book is stale and left out of the aggregate.
        out.books.clear();
        m.offer_book(
            b,
            book("binance", vec![level("50", "1")], vec![], T0 + 20 * SEC),
            T0 + 20 * SEC,
            &mut out,
        );
        let all: Book = serde_json::from_slice(&out.books[1].1).unwrap();
        assert_eq!(all.bids, [level("50", "1")]);
    }
}
