//! The price engine: one task owns the market state. It takes ticks from the sim
//! feed (run in this task: no queue hop on the 10,000-symbol path) and events from
//! every other feed (through the `FeedSink` queue), publishes ticks, books, closed
//! bars, alerts and arbitrage opportunities (each before the books of its turn), closes quiet bars on a timer, sends the sim feed's status
//! heartbeat, and answers the API's queries.
//!
//! Two bar clocks: the wall clock (`BarClock`) closes the bars of every live series
//! at each boundary; a replay on the file's clock (`replay_clock = "file"`,
//! `FeedEvent::ReplayTick`) moves its own clock with its ticks' time: the first tick
//! at or past the next boundary closes the replayed series' bars that ended by then,
//! before it is recorded, and `replay_done` closes the rest before it is published.
//!
//! Why queries go through this task instead of a shared snapshot: the state then
//! needs no lock, the tick path never waits for a reader, and an answer always
//! reflects every tick published before it. The JSON encoding of the answers
//! happens in the API task, off this loop.
//!
//! Slow subscribers and a full client buffer: nats-server keeps a pending buffer
//! per *subscriber* connection and cuts a subscriber that falls too far behind
//! (a "slow consumer"), so a slow reader never pushes back on this publisher.
//! What can push back is our own client: async-nats queues publishes in a bounded
//! channel (`client_capacity`, 2048 messages) that its connection task writes to
//! the socket; when nats-server reads slower than we publish, or the connection is
//! down, that channel fills and `publish().await` waits. `Publisher` bounds that
//! wait: it waits up to `publish_timeout_ms` for room (backpressure at normal load,
//! so nothing is lost in a burst); past it the message is dropped and counted
//! (`md_dropped_total{reason="bus_full"}`), and until the channel has room again
//! every message is dropped without waiting. So a stuck bus costs the engine one
//! timeout, not one per message, memory stays bounded by the channel, and the
//! feed, the timers and the API keep running.

use std::collections::VecDeque;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use moonbus_common::bus::encode;
use moonbus_common::{now_ns, subjects, Bar, ErrorEvent, FeedState, FeedStatus, HistoryRequest};
use moonbus_common::{
    MonitorStartRequest, MonitorStatusReply, PriceRequest, PricesReply, PricesRequest, Symbol,
    Tick, Venue,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{unconstrained, yield_now};
use tokio::time::{interval, sleep, Instant, MissedTickBehavior, Sleep};

use crate::encode::{TickData, TickEncoder};
use crate::feed::{FeedEvent, SeriesId, TickBatch};
use crate::market::{ApiError, BookOut, Market, Outputs};
use crate::metrics;
use crate::sim::SimFeed;
use crate::SERVICE;

/// `md.status.sim` heartbeat period; the stale-symbol gauges are counted then too.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The bar clock (see `BarClock`) sleeps on tokio's timer until this long before a
/// boundary, then watches the clock: tokio's timer has a 1 ms granularity and rounds
/// a deadline up (a sleep ends 0-2 ms late), too coarse for a bar due at its boundary.
/// 4 ms: on a loaded machine tokio's sleeps end up to ~3 ms late (bench/bar_timing.py).
const BAR_CLOCK_LEAD: Duration = Duration::from_millis(4);
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Feed events taken from the queue at a time, and the work done per loop turn: up
/// to this many events, a `TickBatch` counting as its ticks (the rest wait for the
/// next turn, so timers and queries are served in between).
const EVENT_BATCH: usize = 256;
/// One tick in this many is timed for the publish latency histogram (reading the
/// clock twice per tick would cost more than the rest of the bookkeeping).
const LATENCY_SAMPLE: u64 = 8;

/// How many ticks ahead the sim's and a batch's series are prefetched (twice that for
/// the series itself, which must be in cache to find its parts).
const PREFETCH_AHEAD: usize = 4;

/// A question for the engine, with the channel for its answer.
pub enum Query {
    Price(PriceRequest, oneshot::Sender<Result<Tick, ApiError>>),
    Prices(PricesRequest, oneshot::Sender<PricesReply>),
    History(HistoryRequest, oneshot::Sender<Result<Vec<Bar>, ApiError>>),
    MonitorStart(
        MonitorStartRequest,
        oneshot::Sender<Result<MonitorStatusReply, ApiError>>,
    ),
    MonitorStop(
        Symbol,
        oneshot::Sender<Result<MonitorStatusReply, ApiError>>,
    ),
    MonitorStatus(
        Option<Symbol>,
        oneshot::Sender<Result<MonitorStatusReply, ApiError>>,
    ),
}

/// Publishes with a bounded wait for room in the client's buffer (module docs).
pub struct Publisher {
    client: Client,
    timeout: Duration,
    shedding: bool,
}

impl Publisher {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            shedding: false,
        }
    }

    /// True if the message was handed to the client.
    pub async fn publish(&mut self, subject: Subject, payload: Bytes) -> bool {
        // Unconstrained: tokio's cooperative budget must not make a full buffer of a
        // buffer with room (the engine yields after every batch instead).
        let mut publish = pin!(unconstrained(self.client.publish(subject, payload)));
        // One poll: done at once when the buffer has room (the usual case).
        let result = match futures::poll!(publish.as_mut()) {
            Poll::Ready(result) => result,
            Poll::Pending if self.shedding => return self.dropped(),
            Poll::Pending => match tokio::time::timeout(self.timeout, publish).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(timeout = ?self.timeout, "the NATS client's buffer stayed full; dropping messages until it has room");
                    self.shedding = true;
                    return self.dropped();
                }
            },
        };
        if self.shedding {
            tracing::info!("the NATS client's buffer has room again");
            self.shedding = false;
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "publish failed");
                false
            }
        }
    }

    fn dropped(&self) -> bool {
        metrics::global().dropped_bus_full.inc();
        false
    }
}

pub struct Engine {
    publisher: Publisher,
    /// The sim feed, run in this task; `sim_slots[i]` is the market slot of its symbol i.
    sim: Option<SimFeed>,
    sim_slots: Vec<usize>,
    market: Market,
    encoder: TickEncoder,
    /// Reused buffers: the hot path does not allocate.
    outputs: Outputs,
    books: BookOut,
    /// Ticks taken in, for the latency sampling.
    ticks_in: u64,
    /// The replay file's clock: the next bar boundary (of the shortest interval) of
    /// its ticks' time; 0 before the first replayed tick.
    file_boundary: u64,
    /// Per feed sending `TickBatch`es: its series numbers to market slots.
    feed_series: Vec<FeedSeries>,
}

/// The series a feed numbered (`TickBatch`), by number (`None`: a number not
/// introduced, which no tick names).
struct FeedSeries {
    feed: u32,
    series: Vec<Option<Numbered>>,
}

struct Numbered {
    venue: Venue,
    symbol: Symbol,
    /// Made on its first tick; `None` while `max_series` refuses it: then each of its
    /// ticks asks again, as a tick of a feed task does.
    slot: Option<usize>,
}

impl Engine {
    pub fn new(publisher: Publisher, sim: Option<SimFeed>, mut market: Market) -> Self {
        let sim_slots = sim
            .iter()
            .flat_map(|sim| sim.symbols().iter().map(|s| (sim.venue(), s)))
            .filter_map(|(venue, symbol)| market.slot(venue, symbol))
            .collect();
        Self {
            publisher,
            sim,
            sim_slots,
            market,
            encoder: TickEncoder::default(),
            outputs: Outputs::default(),
            books: BookOut::default(),
            ticks_in: 0,
            file_boundary: 0,
            feed_series: Vec::new(),
        }
    }

    /// Runs until `stop` fires (or its sender is dropped), then says so on `md.status`.
    pub async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        mut events: mpsc::Receiver<FeedEvent>,
        mut stop: oneshot::Receiver<()>,
    ) {
        // The first heartbeat fires at once: `connected` at start.
        let mut heartbeat = interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut book_timer = interval(Duration::from_nanos(
            self.market.settings().book_interval_ns,
        ));
        book_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut bar_clock = BarClock::new(now_ns());
        let mut batch = Vec::with_capacity(EVENT_BATCH);
        // Events taken from the queue, not yet handled.
        let mut pending = VecDeque::with_capacity(EVENT_BATCH);
        // False once every feed task has ended (all sinks dropped); the sim goes on.
        let mut feeds_open = true;
        loop {
            // Every branch is cancel-safe: a branch that loses the race has changed nothing.
            tokio::select! {
                _ = &mut stop => break,
                due = sim_due(&mut self.sim) => {
                    self.sim_ticks(due).await;
                    // Let the other tasks of this worker (the NATS connection, the
                    // API) run between batches, whatever the feed's pace.
                    yield_now().await;
                }
                n = events.recv_many(&mut batch, EVENT_BATCH), if feeds_open && pending.is_empty() => {
                    feeds_open = n > 0;
                    pending.extend(batch.drain(..));
                    self.on_events(&mut pending).await;
                    yield_now().await;
                }
                () = std::future::ready(()), if !pending.is_empty() => {
                    self.on_events(&mut pending).await;
                    yield_now().await;
                }
                boundary = bar_clock.boundary() => {
                    self.market.close_due(now_ns(), &mut self.outputs);
                    if !self.outputs.bars.is_empty() {
                        self.publish_outputs().await;
                        let late = now_ns().saturating_sub(boundary);
                        metrics::global().bar_lateness.observe(Duration::from_nanos(late));
                    }
                }
                _ = book_timer.tick() => {
                    self.market.flush_books(now_ns(), &mut self.books);
                    self.publish_books().await;
                }
                _ = heartbeat.tick() => {
                    self.market.count_stale(now_ns());
                    self.publish_status(FeedState::Connected, "simulated").await;
                }
                Some(query) = queries.recv() => self.answer(query),
            }
        }
        self.publish_status(FeedState::Disconnected, "shutting down")
            .await;
    }

    /// Generates and publishes `due` sim ticks. They are stamped with one clock
    /// reading per batch: they were all due by then, a batch has at most one tick
    /// per symbol (sim.rs) and takes well under a millisecond.
    async fn sim_ticks(&mut self, due: u64) {
        let now = now_ns();
        if let Some(&slot) = self.sim_slots.first() {
            self.market.tick_route(slot).2.ticks_in.add(due);
        }
        for _ in 0..due {
            let received = self.received();
            let Some(sim) = &mut self.sim else { return };
            let Some((index, tick, book)) = sim.tick(now) else {
                continue;
            };
            let slot = self.sim_slots[index];
            // The sim goes round its symbols in turn: the next ones are known.
            let ahead = |n: usize| self.sim_slots[(index + n) % self.sim_slots.len()];
            self.market.prefetch_series(ahead(PREFETCH_AHEAD * 2));
            self.market.prefetch_parts(ahead(PREFETCH_AHEAD));
            self.publish_tick(slot, tick, received).await;
            if let Some(book) = book {
                self.market.offer_book(slot, book, now, &mut self.books);
                self.publish_books().await;
            }
        }
    }

    /// Handles the first of `pending` up to one turn's work (`EVENT_BATCH`).
    async fn on_events(&mut self, pending: &mut VecDeque<FeedEvent>) {
        let mut work = 0;
        while work < EVENT_BATCH {
            let Some(event) = pending.pop_front() else {
                return;
            };
            work += match &event {
                FeedEvent::Ticks(batch) => batch.ticks.len().max(1),
                _ => 1,
            };
            self.on_event(event).await;
        }
    }

    async fn on_event(&mut self, event: FeedEvent) {
        match event {
            FeedEvent::Tick(tick) => self.feed_tick(tick, false).await,
            FeedEvent::ReplayTick(tick) => self.feed_tick(tick, true).await,
            FeedEvent::Ticks(batch) => self.feed_batch(batch).await,
            FeedEvent::Book(book) => {
                if let Some(slot) = self.market.slot(&book.venue, &book.symbol) {
                    self.market
                        .offer_book(slot, book, now_ns(), &mut self.books);
                    self.publish_books().await;
                }
            }
            FeedEvent::Status(status) => {
                if status.status == FeedState::ReplayDone {
                    // The replay's last bars, before anyone hears it is done.
                    self.market.close_replayed(u64::MAX, &mut self.outputs);
                    self.publish_outputs().await;
                }
                let subject = subjects::feed_status(&status.venue);
                self.publisher
                    .publish(subject.into(), encode(&status))
                    .await;
            }
            FeedEvent::Rejected {
                venue,
                reason,
                excerpt,
            } => {
                let event = ErrorEvent {
                    service: SERVICE.into(),
                    subject: format!("feed:{venue}"),
                    reason,
                    excerpt,
                    ts: now_ns(),
                };
                self.publisher
                    .publish(subjects::errors(SERVICE).into(), encode(&event))
                    .await;
            }
        }
    }

    /// A tick of a feed task; `file_clock`: stamped with a replay file's time, which
    /// moves the file's bar clock (module docs).
    async fn feed_tick(&mut self, tick: Tick, file_clock: bool) {
        let received = self.received();
        let Some(slot) = self.market.slot(&tick.venue, &tick.symbol) else {
            return;
        };
        self.slot_tick(slot, TickData::from(&tick), file_clock, received)
            .await;
    }

    /// The ticks of a batch, as `feed_tick` each, their slots found by number.
    async fn feed_batch(&mut self, batch: TickBatch) {
        let feed = match self.feed_series.iter().position(|f| f.feed == batch.feed) {
            Some(feed) => feed,
            None => {
                self.feed_series.push(FeedSeries {
                    feed: batch.feed,
                    series: Vec::new(),
                });
                self.feed_series.len() - 1
            }
        };
        for (number, venue, symbol) in &batch.series {
            let table = &mut self.feed_series[feed].series;
            let number = *number as usize;
            if table.len() <= number {
                table.resize_with(number + 1, || None);
            }
            table[number] = Some(Numbered {
                venue: venue.clone(),
                symbol: symbol.clone(),
                slot: None,
            });
        }
        for (i, &(number, tick)) in batch.ticks.iter().enumerate() {
            // The batch says which series come next: their memory is fetched meanwhile.
            let ahead = |n: usize| {
                let (number, _) = batch.ticks.get(i + n)?;
                self.feed_series[feed]
                    .series
                    .get(*number as usize)?
                    .as_ref()?
                    .slot
            };
            if let Some(slot) = ahead(PREFETCH_AHEAD * 2) {
                self.market.prefetch_series(slot);
            }
            if let Some(slot) = ahead(PREFETCH_AHEAD) {
                self.market.prefetch_parts(slot);
            }
            let received = self.received();
            let Some(slot) = self.batch_slot(feed, number) else {
                continue;
            };
            self.slot_tick(slot, tick, batch.file_clock, received).await;
        }
    }

    /// The slot of series `number` of `self.feed_series[feed]`, made on its first tick.
    fn batch_slot(&mut self, feed: usize, number: SeriesId) -> Option<usize> {
        let named = self.feed_series[feed]
            .series
            .get_mut(number as usize)?
            .as_mut()?;
        if named.slot.is_none() {
            named.slot = self.market.slot(&named.venue, &named.symbol);
        }
        named.slot
    }

    async fn slot_tick(
        &mut self,
        slot: usize,
        data: TickData,
        file_clock: bool,
        received: Option<std::time::Instant>,
    ) {
        let ts = data.ts;
        if file_clock {
            self.market.use_file_clock(slot);
            if ts >= self.file_boundary {
                self.market.close_replayed(ts, &mut self.outputs);
                self.publish_outputs().await;
                let base = self
                    .market
                    .settings()
                    .intervals
                    .len_ns(0)
                    .unwrap_or(NANOS_PER_SEC);
                self.file_boundary = next_boundary(ts, base);
            }
        }
        self.market.tick_route(slot).2.ticks_in.inc();
        self.publish_tick(slot, data, received).await;
    }

    /// When a tick came in, for one tick in `LATENCY_SAMPLE`.
    fn received(&mut self) -> Option<std::time::Instant> {
        self.ticks_in += 1;
        self.ticks_in
            .is_multiple_of(LATENCY_SAMPLE)
            .then(std::time::Instant::now)
    }

    /// The hot path: encode, publish, then bars and alerts.
    async fn publish_tick(
        &mut self,
        slot: usize,
        tick: TickData,
        received: Option<std::time::Instant>,
    ) {
        let (subject, prefix, _) = self.market.tick_route(slot);
        let subject = subject.clone();
        let payload = self.encoder.encode(prefix, &tick);
        if self.publisher.publish(subject, payload).await {
            if let Some(received) = received {
                metrics::global()
                    .publish_latency
                    .observe(received.elapsed());
            }
            self.market.tick_route(slot).2.ticks_out.inc();
        }
        self.market.record(slot, tick, &mut self.outputs);
        if !self.outputs.bars.is_empty() || !self.outputs.alerts.is_empty() {
            self.publish_outputs().await;
        }
    }

    async fn publish_outputs(&mut self) {
        let mut bars = std::mem::take(&mut self.outputs.bars);
        for (slot, closed) in bars.drain(..) {
            let (subject, bar) = self.market.bar_out(slot, &closed);
            let payload = self.encoder.bar(&bar);
            if self.publisher.publish(subject, payload).await {
                metrics::global().bars_out.inc();
            }
        }
        self.outputs.bars = bars;
        let mut alerts = std::mem::take(&mut self.outputs.alerts);
        for alert in alerts.drain(..) {
            tracing::info!(symbol = %alert.symbol, venue = %alert.venue, change_pct = alert.change_pct, "price alert");
            let subject = subjects::alert(&alert.symbol);
            if self.publisher.publish(subject.into(), encode(&alert)).await {
                metrics::global().alerts.inc();
            }
        }
        self.outputs.alerts = alerts;
    }

    async fn publish_books(&mut self) {
        let mut arbs = std::mem::take(&mut self.books.arbs);
        for arb in arbs.drain(..) {
            tracing::info!(symbol = %arb.symbol, buy = %arb.buy_venue, sell = %arb.sell_venue, net_bps = %arb.net_bps, quantity = %arb.quantity, "arbitrage");
            let subject = subjects::arb(&arb.symbol);
            if self.publisher.publish(subject.into(), encode(&arb)).await {
                metrics::global().arbs.inc();
                let latency = now_ns().saturating_sub(arb.source_ts);
                metrics::global()
                    .arb_latency
                    .observe(Duration::from_nanos(latency));
            }
        }
        self.books.arbs = arbs;
        let mut books = std::mem::take(&mut self.books.books);
        for (subject, payload) in books.drain(..) {
            self.publisher.publish(subject, payload).await;
        }
        self.books.books = books;
    }

    /// The sim feed's status (the other feeds send their own).
    async fn publish_status(&mut self, status: FeedState, detail: &str) {
        let Some(sim) = &self.sim else {
            return;
        };
        let symbols = sim.symbols().len();
        let message = FeedStatus {
            venue: sim.venue().clone(),
            status,
            detail: format!("{detail}, {symbols} symbols"),
            symbols: symbols as u64,
            ts: now_ns(),
        };
        let subject = subjects::feed_status(sim.venue());
        self.publisher
            .publish(subject.into(), encode(&message))
            .await;
    }

    /// The API task may have given up waiting; then the answer is simply dropped.
    fn answer(&mut self, query: Query) {
        let market = &mut self.market;
        match query {
            Query::Price(request, reply) => {
                let _ = reply.send(market.price(&request));
            }
            Query::Prices(request, reply) => {
                let _ = reply.send(market.prices(&request));
            }
            Query::History(request, reply) => {
                let _ = reply.send(market.history(&request));
            }
            Query::MonitorStart(request, reply) => {
                let _ = reply.send(market.monitor_start(&request));
            }
            Query::MonitorStop(symbol, reply) => {
                let _ = reply.send(market.monitor_stop(&symbol));
            }
            Query::MonitorStatus(symbol, reply) => {
                let _ = reply.send(market.monitor_status(symbol.as_ref()));
            }
        }
    }
}

/// How many sim ticks are due; never, without a sim feed.
async fn sim_due(sim: &mut Option<SimFeed>) -> u64 {
    match sim {
        Some(sim) => sim.due().await,
        None => std::future::pending().await,
    }
}

/// Wakes the engine at each whole second of the wall clock (every bar boundary: the
/// shortest interval is a whole number of seconds) within microseconds: a tokio sleep
/// to `BAR_CLOCK_LEAD` before it, then the clock read between yields until the
/// boundary. The last stretch keeps one core polling for ~3-4 ms per second; it
/// yields after every look, so ticks and queries are served meanwhile.
pub struct BarClock {
    sleep: Pin<Box<Sleep>>,
    boundary_ns: u64,
}

impl BarClock {
    pub fn new(now_ns: u64) -> Self {
        let boundary_ns = next_second(now_ns);
        Self {
            sleep: Box::pin(sleep(coarse_wait(now_ns, boundary_ns))),
            boundary_ns,
        }
    }

    /// Ready once the wall clock reaches the next boundary, which it returns.
    /// Cancel-safe (a `select!` branch): nothing changes until the boundary is reached,
    /// and a finished sleep stays ready, so a dropped call resumes where it was.
    pub async fn boundary(&mut self) -> u64 {
        self.sleep.as_mut().await;
        while now_ns() < self.boundary_ns {
            yield_now().await;
        }
        let boundary = self.boundary_ns;
        let now = now_ns();
        self.boundary_ns = next_second(now);
        self.sleep
            .as_mut()
            .reset(Instant::now() + coarse_wait(now, self.boundary_ns));
        boundary
    }
}

/// The first whole second of the wall clock after `now_ns`.
fn next_second(now_ns: u64) -> u64 {
    now_ns - now_ns % NANOS_PER_SEC + NANOS_PER_SEC
}

/// The first multiple of `len_ns` after `ts` (a replay file's time), or u64::MAX: a
/// file's ts may be in the last interval before it.
fn next_boundary(ts: u64, len_ns: u64) -> u64 {
    (ts - ts % len_ns).saturating_add(len_ns)
}

/// How long tokio's timer may sleep towards `boundary_ns`: up to the lead.
fn coarse_wait(now_ns: u64, boundary_ns: u64) -> Duration {
    Duration::from_nanos(boundary_ns.saturating_sub(now_ns)).saturating_sub(BAR_CLOCK_LEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_clock_aims_at_the_next_whole_second_minus_the_lead() {
        let t = 1_764_129_600 * NANOS_PER_SEC;
        assert_eq!(next_second(t + 250_000_000), t + NANOS_PER_SEC);
        assert_eq!(next_second(t), t + NANOS_PER_SEC);
        assert_eq!(
            coarse_wait(t + 250_000_000, t + NANOS_PER_SEC),
            Duration::from_millis(746)
        );
        // Within the lead (or past the boundary): no sleep, straight to the clock.
        assert_eq!(
            coarse_wait(t + 999_000_000, t + NANOS_PER_SEC),
            Duration::ZERO
        );
        assert_eq!(
            coarse_wait(t + 2 * NANOS_PER_SEC, t + NANOS_PER_SEC),
            Duration::ZERO
        );
    }

    /// A replay file's tick in the last interval before u64::MAX: the next boundary is
    /// u64::MAX, not an overflow (a panic in debug builds; in release a boundary wrapped
    /// back to 1970, so every later tick closed bars again).
    #[test]
    fn the_file_clock_boundary_stops_at_the_end_of_time() {
        let t = 1_764_129_600 * NANOS_PER_SEC;
        assert_eq!(
            next_boundary(t + 250_000_000, NANOS_PER_SEC),
            t + NANOS_PER_SEC
        );
        assert_eq!(next_boundary(t, 60 * NANOS_PER_SEC), t + 60 * NANOS_PER_SEC);
        assert_eq!(next_boundary(u64::MAX, NANOS_PER_SEC), u64::MAX);
        assert_eq!(next_boundary(u64::MAX - 5, 60 * NANOS_PER_SEC), u64::MAX);
    }

    /// On the real clock: each boundary is returned at or just after the wall clock
    /// reaches it (never before), whole seconds in a row, and a call dropped half-way
    /// (a `select!` branch that lost) leaves the next call on the same boundary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bar_clock_is_never_early_and_survives_cancellation() {
        let mut clock = BarClock::new(now_ns());
        let first = clock.boundary_ns;
        // Polled into its last stretch (the sleep over), then dropped: the boundary stays.
        {
            let mut call = pin!(clock.boundary());
            while now_ns() + 200_000 < first {
                if let Poll::Ready(boundary) = futures::poll!(call.as_mut()) {
                    // Only if this thread was held up past the boundary.
                    assert!(now_ns() >= boundary && boundary == first);
                    return;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        assert_eq!(clock.boundary_ns, first);
        let mut last = 0;
        for i in 0..2 {
            let boundary = clock.boundary().await;
            let now = now_ns();
            assert!(now >= boundary, "woken {} ns early", boundary - now);
            assert_eq!(boundary, first + i * NANOS_PER_SEC);
            assert_eq!(boundary % NANOS_PER_SEC, 0);
            last = boundary;
        }
        assert_eq!(clock.boundary_ns, last + NANOS_PER_SEC);
    }
}
