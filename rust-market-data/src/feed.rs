//! Where market data comes from, and the seam between the feeds and the engine.
//!
//! The engine task owns all market state. Feeds that run in their own tasks (the
//! replay, the live connectors in `connectors/`) hand it `FeedEvent`s through a
//! `FeedSink`: a bounded queue, so a flooding feed cannot grow memory. The sim feed
//! runs inside the engine task instead (no queue hop: it is the 10,000-symbol,
//! 500,000 ticks/s path).

use std::fmt;
use std::str::FromStr;

use moonbus_common::{Book, FeedStatus, Tick};
use serde::Deserialize;
use tokio::sync::mpsc;

/// One thing a feed observed. Ticks and books carry their venue and canonical
/// symbol; the engine publishes them on `md.tick.<venue>.<symbol>` and
/// `md.book.<venue>.<symbol>`, and a status on `md.status.<venue>`.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    Tick(Tick),
    /// A replayed tick stamped with the file's time (`replay_clock = "file"`): its
    /// series' bars follow the ticks' time, not the wall clock (engine.rs).
    ReplayTick(Tick),
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
