//! Where market data comes from, and the seam between the feeds and the engine.
//!
//! The engine task owns all market state. Feeds that run in their own tasks (the
//! replay, the live connectors in `connectors/`) hand it `FeedEvent`s through a
//! `FeedSink`: a bounded queue, so a flooding feed cannot grow memory. The sim feed
//! runs inside the engine task instead (no queue hop: it is the 10,000-symbol,
//! 500,000 ticks/s path).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use moonbus_common::{Book, FeedStatus, Symbol, Tick, Venue};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::encode::TickData;

/// One thing a feed observed. Ticks and books carry their venue and canonical
/// symbol; the engine publishes them on `md.tick.<venue>.<symbol>` and
/// `md.book.<venue>.<symbol>`, and a status on `md.status.<venue>`.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    Tick(Tick),
    /// A replayed tick stamped with the file's time (`replay_clock = "file"`): its
    /// series' bars follow the ticks' time, not the wall clock (engine.rs).
    ReplayTick(Tick),
    /// Many ticks of one feed thread at once (the replay): one queue slot, no
    /// strings per tick.
    Ticks(TickBatch),
    Book(Book),
    Status(FeedStatus),
    /// Input the feed skipped (a frame not in the venue's format): the engine
    /// reports it on `errors.market-data` so it can be seen without the logs.
    Rejected {
        venue: String,
        reason: String,
        excerpt: String,
    },
}

/// At most this many ticks in a `TickBatch`.
pub const TICK_BATCH: usize = 256;

/// Ticks of one feed, in order, handed to the engine as one event. Each names its
/// (venue, symbol) by a number the feed assigned on first sight (`SeriesId`), so the
/// engine finds its slot by index instead of hashing two strings per tick; `series`
/// introduces the numbers first used in this batch, before any tick of theirs.
///
/// The tick buffer goes back to the feed when the engine drops the batch (`Drop`): the
/// feed reuses it, and holding a fixed number of buffers bounds its ticks in flight.
#[derive(Debug)]
pub struct TickBatch {
    /// Whose numbers these are (`feed_number`): each feed numbers its series from 0.
    pub feed: u32,
    /// (number, venue, symbol) of the series first seen in this batch.
    pub series: Vec<(SeriesId, Venue, Symbol)>,
    pub ticks: Vec<(SeriesId, TickData)>,
    /// Stamped with a replay file's time (`replay_clock = "file"`), like `ReplayTick`.
    pub file_clock: bool,
    /// Where the tick buffer goes back to.
    home: Option<std::sync::mpsc::Sender<Vec<(SeriesId, TickData)>>>,
}

/// A feed's number for one of its (venue, symbol) series.
pub type SeriesId = u32;

impl TickBatch {
    /// An empty batch of feed `feed` that returns its tick buffer to `home` when dropped.
    pub fn new(
        feed: u32,
        file_clock: bool,
        ticks: Vec<(SeriesId, TickData)>,
        home: std::sync::mpsc::Sender<Vec<(SeriesId, TickData)>>,
    ) -> Self {
        Self {
            feed,
            series: Vec::new(),
            ticks,
            file_clock,
            home: Some(home),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.ticks.is_empty()
    }

    /// A feed's own number, unique in this process.
    pub fn feed_number() -> u32 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for TickBatch {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let mut ticks = std::mem::take(&mut self.ticks);
            ticks.clear();
            // The feed may have ended: then the buffer is simply freed.
            let _ = home.send(ticks);
        }
    }
}

/// A copy that returns no buffer.
impl Clone for TickBatch {
    fn clone(&self) -> Self {
        Self {
            feed: self.feed,
            series: self.series.clone(),
            ticks: self.ticks.clone(),
            file_clock: self.file_clock,
            home: None,
        }
    }
}

impl PartialEq for TickBatch {
    fn eq(&self, other: &Self) -> bool {
        (self.feed, &self.series, &self.ticks, self.file_clock)
            == (other.feed, &other.series, &other.ticks, other.file_clock)
    }
}

/// Capacity of the queue from all the feeds to the engine, in events.
///
/// When it is full, `FeedSink::send(event).await` waits until the engine has taken
/// events out: the feed is slowed down to the engine's pace (a WebSocket reader
/// stops reading, and the exchange's TCP window closes), memory stays bounded, and
/// nothing already queued is lost. A feed that must not wait uses `try_send` and
/// decides itself what to drop (e.g. an intermediate book update). When the engine
/// stops, the receiver is dropped and `send` fails: that is the feed's signal to end.
pub const FEED_QUEUE: usize = 16_384;

/// Where a feed task sends its events: one clone per feed, any number of feeds.
pub type FeedSink = mpsc::Sender<FeedEvent>;

/// The queue from the feeds to the engine.
pub fn channel() -> (FeedSink, mpsc::Receiver<FeedEvent>) {
    mpsc::channel(FEED_QUEUE)
}

/// The values of `[market_data] feeds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    Sim,
    Replay,
    Binance,
    Aster,
    Coinbase,
    Hyperliquid,
    Birdeye,
}

impl FeedKind {
    pub const ALL: [FeedKind; 7] = [
        FeedKind::Sim,
        FeedKind::Replay,
        FeedKind::Binance,
        FeedKind::Aster,
        FeedKind::Coinbase,
        FeedKind::Hyperliquid,
        FeedKind::Birdeye,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Sim => "sim",
            FeedKind::Replay => "replay",
            FeedKind::Binance => "binance",
            FeedKind::Aster => "aster",
            FeedKind::Coinbase => "coinbase",
            FeedKind::Hyperliquid => "hyperliquid",
            FeedKind::Birdeye => "birdeye",
        }
    }

    /// A live exchange connector (src/connectors/), as opposed to sim and replay.
    pub fn is_live(self) -> bool {
        !matches!(self, FeedKind::Sim | FeedKind::Replay)
    }
}

impl fmt::Display for FeedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FeedKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FeedKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FeedKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown feed {s:?}; the feeds are {}", names.join(", "))
            })
    }
}
