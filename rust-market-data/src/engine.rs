//! The price engine: one task owns the feed and the market state. It publishes
//! every tick and closed bar, closes quiet bars on a timer, sends the feed status
//! heartbeat, and answers the API's queries.
//!
//! Why queries go through this task instead of a shared snapshot: the state then
//! needs no lock, the tick path never waits for a reader, and an answer always
//! reflects every tick published before it. A query costs a lookup and a clone of
//! at most 1000 bars; the JSON encoding happens in the API task, off this loop.

use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use moonbus_common::bus::encode;
use moonbus_common::{now_ns, subjects, Bar, FeedState, FeedStatus, HistoryRequest, PriceRequest};
use moonbus_common::{PricesReply, PricesRequest, Tick};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep, Instant, MissedTickBehavior};

use crate::feed::Feed;
use crate::market::{ApiError, Market};

/// `md.status.<venue>` heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The bar timer wakes on every whole second (the shortest interval), plus this
/// margin so it never wakes a hair early and finds nothing due.
const BAR_TIMER_MARGIN: Duration = Duration::from_millis(1);
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A question for the engine, with the channel for its answer.
pub enum Query {
    Price(PriceRequest, oneshot::Sender<Result<Tick, ApiError>>),
    Prices(PricesRequest, oneshot::Sender<PricesReply>),
    History(HistoryRequest, oneshot::Sender<Result<Vec<Bar>, ApiError>>),
}

pub struct Engine {
    client: Client,
    feed: Feed,
    market: Market,
    status_subject: Subject,
    /// Bars closed by the current step; reused so the hot path does not allocate.
    closed: Vec<(Subject, Bar)>,
}

impl Engine {
    pub fn new(client: Client, feed: Feed, market: Market) -> Self {
        Self {
            status_subject: subjects::feed_status(feed.venue()).into(),
            client,
            feed,
            market,
            closed: Vec::new(),
        }
    }

    /// Runs until `stop` fires (or its sender is dropped), then says so on `md.status`.
    pub async fn run(
        mut self,
        mut queries: mpsc::Receiver<Query>,
        mut stop: oneshot::Receiver<()>,
    ) {
        // The first heartbeat fires at once: `connected` at start.
        let mut heartbeat = interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let bar_timer = sleep(until_next_second(now_ns()));
        tokio::pin!(bar_timer);
        loop {
            // Every branch is cancel-safe: a branch that loses the race has changed nothing.
            tokio::select! {
                _ = &mut stop => break,
                (index, tick) = self.feed.next_tick() => self.on_tick(index, tick).await,
                () = &mut bar_timer => {
                    self.market.close_due(now_ns(), &mut self.closed);
                    self.publish_closed_bars().await;
                    bar_timer.as_mut().reset(Instant::now() + until_next_second(now_ns()));
                }
                _ = heartbeat.tick() => self.publish_status(FeedState::Connected, "simulated").await,
                Some(query) = queries.recv() => self.answer(query),
            }
        }
        self.publish_status(FeedState::Disconnected, "shutting down")
            .await;
    }

    async fn on_tick(&mut self, index: usize, tick: Tick) {
        let Some(subject) = self.market.tick_subject(index) else {
            return;
        };
        publish(&self.client, subject.clone(), encode(&tick)).await;
        self.market.record(index, tick, &mut self.closed);
        self.publish_closed_bars().await;
    }

    async fn publish_closed_bars(&mut self) {
        for (subject, bar) in self.closed.drain(..) {
            publish(&self.client, subject, encode(&bar)).await;
        }
    }

    async fn publish_status(&self, status: FeedState, detail: &str) {
        let symbols = self.feed.symbols().len();
        let message = FeedStatus {
            venue: self.feed.venue().clone(),
            status,
            detail: format!("{detail}, {symbols} symbols"),
            symbols: symbols as u64,
            ts: now_ns(),
        };
        publish(&self.client, self.status_subject.clone(), encode(&message)).await;
    }

    /// The API task may have given up waiting; then the answer is simply dropped.
    fn answer(&self, query: Query) {
        match query {
            Query::Price(request, reply) => {
                let _ = reply.send(self.market.price(&request));
            }
            Query::Prices(request, reply) => {
                let _ = reply.send(self.market.prices(&request));
            }
            Query::History(request, reply) => {
                let _ = reply.send(self.market.history(&request));
            }
        }
    }
}

/// async-nats buffers publishes in the client, so a slow subscriber never blocks
/// this loop. An error means the client is closed; it is logged, not fatal.
async fn publish(client: &Client, subject: Subject, payload: Bytes) {
    if let Err(e) = client.publish(subject, payload).await {
        tracing::warn!(error = %e, "publish failed");
    }
}

/// Time from `now_ns` to the next whole second of the wall clock (+ margin).
fn until_next_second(now_ns: u64) -> Duration {
    Duration::from_nanos(NANOS_PER_SEC - now_ns % NANOS_PER_SEC) + BAR_TIMER_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_timer_aims_at_the_next_whole_second() {
        let t = 1_764_129_600 * NANOS_PER_SEC;
        assert_eq!(
            until_next_second(t + 250_000_000),
            Duration::from_millis(751)
        );
        assert_eq!(until_next_second(t), Duration::from_millis(1001));
    }
}
