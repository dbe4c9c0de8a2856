//! What every connector does the same way: report its status on `md.status.<venue>`,
//! notice silence (stale data, dead connections), and, for the WebSocket venues,
//! connect, subscribe, read, answer pings and reconnect with backoff.
//!
//! A venue plugs in through [`WsVenue`]: it builds the request and the
//! subscriptions, turns each text frame into events, and says when the stream can
//! no longer be trusted ([`Fault::Reconnect`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use moonbus_common::{now_ns, FeedState, FeedStatus, Venue};
use tokio::net::TcpStream;
use tokio::time::{interval_at, sleep, sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};

use super::link::{Backoff, Link};
use crate::feed::{FeedEvent, FeedSink};
use crate::metrics::{self, VenueMetrics};

/// No venue message comes near this; a bigger one is refused (bounded memory).
const MAX_MESSAGE: usize = 16 << 20;

/// The engine dropped the queue: the connector's signal to end.
#[derive(Debug)]
pub(crate) struct Closed;

/// A connector's way out: events to the engine, its status, its counters.
pub(crate) struct FeedOut {
    venue: Venue,
    sink: FeedSink,
    metrics: Arc<VenueMetrics>,
    symbols: u64,
    state: FeedState,
    detail: String,
    /// Frames skipped so far (the log shows the first few, then every 1000th).
    garbage: u64,
}

impl FeedOut {
    pub fn new(venue: Venue, sink: FeedSink, symbols: usize) -> Self {
        Self {
            metrics: metrics::venue(venue.as_str()),
            venue,
            sink,
            symbols: symbols as u64,
            state: FeedState::Reconnecting,
            detail: String::new(),
            garbage: 0,
        }
    }

    pub fn venue(&self) -> &Venue {
        &self.venue
    }

    pub async fn send(&self, events: &mut Vec<FeedEvent>) -> Result<(), Closed> {
        for event in events.drain(..) {
            self.sink.send(event).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    pub fn state(&self) -> FeedState {
        self.state
    }

    /// Sets and sends the status (also when unchanged: the detail may be news).
    pub async fn status(&mut self, state: FeedState, detail: String) -> Result<(), Closed> {
        if state != self.state {
            tracing::info!(venue = %self.venue, status = %state, detail, "feed status");
        }
        self.state = state;
        self.detail = detail;
        self.heartbeat().await
    }

    /// Sends the current status again.
    pub async fn heartbeat(&self) -> Result<(), Closed> {
        let status = FeedStatus {
            venue: self.venue.clone(),
            status: self.state,
            detail: self.detail.clone(),
            symbols: self.symbols,
            ts: now_ns(),
        };
        self.sink
            .send(FeedEvent::Status(status))
            .await
            .map_err(|_| Closed)
    }

    /// Resolves when the engine has dropped the queue.
    pub async fn closed(&self) {
        self.sink.closed().await;
    }

    pub fn count_reconnect(&self) {
        self.metrics.reconnects.inc();
    }

    pub fn count_gaps(&self, gaps: u64) {
        self.metrics.gaps.add(gaps);
    }

    pub fn count_duplicates(&self, duplicates: u64) {
        self.metrics.duplicates.add(duplicates);
    }

    /// Adds the batch's gap and duplicate counts to the metrics and zeroes them.
    pub fn count(&self, batch: &mut Batch) {
        if batch.gaps > 0 {
            self.count_gaps(std::mem::take(&mut batch.gaps));
        }
        if batch.duplicates > 0 {
            self.count_duplicates(std::mem::take(&mut batch.duplicates));
        }
    }

    /// A message the venue should not have sent: logged, reported on
    /// `errors.market-data` and skipped (the first few, then every 1000th, so a
    /// venue sending nothing but garbage cannot flood the log or the bus).
    pub fn garbage(&mut self, reason: &str, frame: &str) {
        self.garbage += 1;
        if self.garbage <= 10 || self.garbage.is_multiple_of(1000) {
            let excerpt: String = frame.chars().take(200).collect();
            let skipped = self.garbage;
            tracing::warn!(venue = %self.venue, reason, excerpt, skipped, "skipped a frame the venue should not send");
            // try_send: reporting must never hold up the link; a full queue drops the report.
            let _ = self.sink.try_send(FeedEvent::Rejected {
                venue: self.venue.to_string(),
                reason: format!("{reason} ({skipped} skipped so far)"),
                excerpt,
            });
        }
    }
}

/// Silence on a link: no market data for `stale_after` is stale; nothing at all
/// for `dead_after` means the connection is dead.
pub(crate) struct Liveness {
    stale_after: Duration,
    dead_after: Duration,
    last_data: Instant,
    last_frame: Instant,
    stale: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Silence {
    Fine,
    WentStale,
    Dead,
}

impl Liveness {
    pub fn new(link: &Link) -> Self {
        let now = Instant::now();
        Self {
            stale_after: link.stale_after,
            dead_after: link.dead_after,
            last_data: now,
            last_frame: now,
            stale: false,
        }
    }

    /// Anything arrived (a frame, a ping, a successful poll).
    pub fn frame(&mut self) {
        self.last_frame = Instant::now();
    }

    /// Market data arrived; true when that ends a stale period.
    pub fn data(&mut self) -> bool {
        self.last_data = Instant::now();
        self.last_frame = self.last_data;
        std::mem::take(&mut self.stale)
    }

    /// When [`Liveness::check`] may next have news.
    pub fn deadline(&self) -> Instant {
        let dead = self.last_frame + self.dead_after;
        if self.stale {
            dead
        } else {
            dead.min(self.last_data + self.stale_after)
        }
    }

    pub fn check(&mut self) -> Silence {
        let now = Instant::now();
        if now >= self.last_frame + self.dead_after {
            Silence::Dead
        } else if !self.stale && now >= self.last_data + self.stale_after {
            self.stale = true;
            Silence::WentStale
        } else {
            Silence::Fine
        }
    }

    pub fn stale_detail(&self) -> String {
        format!("no market data for {} ms", self.stale_after.as_millis())
    }

    pub fn dead_detail(&self) -> String {
        format!("no message for {} ms", self.dead_after.as_millis())
    }
}

/// What one frame produced.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Ticks and books for the engine.
    pub events: Vec<FeedEvent>,
    /// Text frames to send to the venue (subscriptions, resubscriptions).
    pub frames: Vec<String>,
    /// Sequence gaps detected (each followed by a resync).
    pub gaps: u64,
    /// Old or duplicate messages ignored (already applied or superseded).
    pub duplicates: u64,
}

/// How far a [`Batch`] was filled before a frame: what to cut back to when the
/// frame is rejected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    events: usize,
    frames: usize,
    gaps: u64,
    duplicates: u64,
}

impl Batch {
    pub fn mark(&self) -> Mark {
        Mark {
            events: self.events.len(),
            frames: self.frames.len(),
            gaps: self.gaps,
            duplicates: self.duplicates,
        }
    }

    /// Forgets what was added since `mark`: a rejected frame publishes nothing. (The
    /// venues check a whole frame before they change any state; this makes sure
    /// nothing decoded before the bad part leaks out either.)
    pub fn rollback(&mut self, mark: Mark) {
        self.events.truncate(mark.events);
        self.frames.truncate(mark.frames);
        self.gaps = mark.gaps;
        self.duplicates = mark.duplicates;
    }
}

/// A frame or result the venue cannot go on from.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Not a message this venue sends (bad JSON, bad number, unknown shape): the
    /// frame is logged and skipped, the stream goes on.
    Garbage(String),
    /// The stream cannot be trusted any more (or the venue said goodbye):
    /// reconnect, which resubscribes and resyncs every book.
    Reconnect(String),
}

/// A WebSocket venue, driven by [`run_ws`].
pub(crate) trait WsVenue: Send {
    /// What the venue's background work yields (Binance: a depth snapshot).
    type Done: Send;

    /// The request of a new connection: URL and headers.
    fn request(&self) -> Result<Request, String>;

    /// A new connection is open: forget the old connection's state and put the
    /// subscription frames into `out`.
    fn on_open(&mut self, out: &mut Batch);

    fn on_text(&mut self, text: &str, out: &mut Batch) -> Result<(), Fault>;

    /// A frame to send every so often to keep the connection open, if the venue wants one.
    fn keepalive(&self) -> Option<(Duration, Message)> {
        None
    }

    /// Work beside the socket; pending when there is none. Must be cancel-safe.
    fn background(&mut self) -> impl Future<Output = Self::Done> + Send {
        std::future::pending()
    }

    /// Background work done (never called for a venue without any).
    fn on_done(&mut self, _done: Self::Done, _out: &mut Batch) -> Result<(), Fault> {
        Ok(())
    }
}

/// The request of a plain `ws://` / `wss://` URL, no extra headers.
pub(crate) fn plain_request(url: &str) -> Result<Request, String> {
    url.into_client_request()
        .map_err(|e| format!("bad ws_url: {e}"))
}

/// Sends a REST request; the body of a 2xx answer, else an error with the status
/// and the start of the body. Errors never show the URL (it may carry a query
/// the venue treats as secret).
pub(crate) async fn http_body(request: reqwest::RequestBuilder) -> Result<bytes::Bytes, String> {
    let response = request
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    response_body(response).await
}

/// The body of an answer already received; not 2xx is an error with an excerpt.
pub(crate) async fn response_body(response: reqwest::Response) -> Result<bytes::Bytes, String> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !status.is_success() {
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(format!("HTTP {status}: {excerpt}"));
    }
    Ok(body)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Runs a WebSocket venue until the engine drops the queue: connect, subscribe,
/// read; on any failure report `reconnecting`, wait the backoff, and start over.
pub(crate) async fn run_ws<V: WsVenue>(mut venue: V, link: Link, mut out: FeedOut) {
    let mut backoff = Backoff::new(&link);
    let mut failure: Option<String> = None;
    loop {
        let reported = match failure.take() {
            None => {
                out.status(FeedState::Reconnecting, "connecting".into())
                    .await
            }
            Some(why) => {
                let delay = backoff.next_delay();
                let detail = format!("{why}; next attempt in {} ms", delay.as_millis());
                let reported = out.status(FeedState::Reconnecting, detail).await;
                tokio::select! {
                    () = out.closed() => return,
                    () = sleep(delay) => {}
                }
                reported
            }
        };
        if reported.is_err() {
            return;
        }
        let ended = match connect(&venue, &link).await {
            Ok((socket, host)) => {
                session(&mut venue, socket, &host, &link, &mut out, &mut backoff).await
            }
            Err(e) => Ok(e),
        };
        match ended {
            Ok(why) => {
                tracing::warn!(venue = %out.venue(), reason = why, "connection lost");
                out.count_reconnect();
                failure = Some(why);
            }
            Err(Closed) => return,
        }
    }
}

/// The socket and the host it is connected to.
async fn connect<V: WsVenue>(venue: &V, link: &Link) -> Result<(Socket, String), String> {
    let request = venue.request()?;
    // The host alone: the URL may carry a key.
    let host = request.uri().host().unwrap_or("?").to_string();
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let connecting = connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(link.connect_timeout, connecting).await {
        Err(_) => Err(format!(
            "connect timed out after {} ms",
            link.connect_timeout.as_millis()
        )),
        // The error names the failure (refused, TLS, HTTP status), never the URL,
        // which may carry a key.
        Ok(Err(e)) => Err(format!("connect failed: {e}")),
        Ok(Ok((socket, _response))) => Ok((socket, host)),
    }
}

/// One connection, until it fails (`Ok(why)`) or the engine is gone.
async fn session<V: WsVenue>(
    venue: &mut V,
    mut socket: Socket,
    host: &str,
    link: &Link,
    out: &mut FeedOut,
    backoff: &mut Backoff,
) -> Result<String, Closed> {
    let mut batch = Batch::default();
    venue.on_open(&mut batch);
    if let Err(e) = flush(&mut socket, out, &mut batch).await? {
        return Ok(e);
    }
    out.status(FeedState::Connected, format!("subscribed at {host}"))
        .await?;
    let mut liveness = Liveness::new(link);
    let keepalive = venue.keepalive();
    // Without a keepalive the timer is disabled (the branch's guard) and only
    // needs a period that `Instant` can add.
    let every = keepalive
        .as_ref()
        .map_or(Duration::from_secs(86_400), |(every, _)| *every);
    let mut keepalive_timer = interval_at(Instant::now() + every, every);
    keepalive_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status_timer = interval_at(Instant::now() + link.status_interval, link.status_interval);
    status_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            () = out.closed() => return Err(Closed),
            frame = socket.next() => {
                liveness.frame();
                match frame {
                    None => return Ok("the venue closed the connection".into()),
                    Some(Err(e)) => return Ok(format!("read failed: {e}")),
                    Some(Ok(Message::Text(text))) => {
                        let mark = batch.mark();
                        match venue.on_text(&text, &mut batch) {
                            Err(Fault::Garbage(reason)) => {
                                batch.rollback(mark);
                                out.garbage(&reason, &text);
                                Ok(())
                            }
                            other => other,
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        out.garbage("a binary frame", &String::from_utf8_lossy(&bytes));
                        Ok(())
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(match frame {
                            Some(f) => format!("the venue closed the connection: {} {}", f.code, f.reason),
                            None => "the venue closed the connection".into(),
                        });
                    }
                    // tungstenite queues the pong (same payload) and sends it on the next read.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                }
            }
            done = venue.background() => {
                let mark = batch.mark();
                let result = venue.on_done(done, &mut batch);
                if result.is_err() {
                    batch.rollback(mark);
                }
                result
            }
            _ = keepalive_timer.tick(), if keepalive.is_some() => {
                if let Some((_, frame)) = &keepalive {
                    if let Err(e) = socket.send(frame.clone()).await {
                        return Ok(format!("keepalive failed: {e}"));
                    }
                }
                Ok(())
            }
            () = sleep_until(liveness.deadline()) => match liveness.check() {
                Silence::Dead => return Ok(liveness.dead_detail()),
                Silence::WentStale => {
                    out.status(FeedState::Stale, liveness.stale_detail()).await?;
                    Ok(())
                }
                Silence::Fine => Ok(()),
            },
            _ = status_timer.tick() => {
                out.heartbeat().await?;
                Ok(())
            }
        };
        out.count(&mut batch);
        match result {
            Ok(()) => {}
            Err(Fault::Garbage(reason)) => out.garbage(&reason, ""),
            Err(Fault::Reconnect(reason)) => return Ok(reason),
        }
        if !batch.events.is_empty() {
            backoff.reset();
            if liveness.data() && out.state() == FeedState::Stale {
                out.status(FeedState::Connected, "market data again".into())
                    .await?;
            }
        }
        if let Err(e) = flush(&mut socket, out, &mut batch).await? {
            return Ok(e);
        }
    }
}

/// Sends the batch's frames to the venue and its events to the engine.
/// Outer error: the engine is gone; inner: the socket failed.
async fn flush(
    socket: &mut Socket,
    out: &FeedOut,
    batch: &mut Batch,
) -> Result<Result<(), String>, Closed> {
    for frame in batch.frames.drain(..) {
        if let Err(e) = socket.send(Message::text(frame)).await {
            return Ok(Err(format!("send failed: {e}")));
        }
    }
    out.send(&mut batch.events).await?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_forgets_what_a_rejected_frame_added() {
        let mut batch = Batch {
            events: vec![FeedEvent::Rejected {
                venue: "x".into(),
                reason: "kept".into(),
                excerpt: String::new(),
            }],
            frames: vec!["kept".into()],
            gaps: 1,
            duplicates: 2,
        };
        let mark = batch.mark();
        batch.events.push(batch.events[0].clone());
        batch.frames.push("dropped".into());
        batch.gaps += 1;
        batch.duplicates += 1;
        batch.rollback(mark);
        assert_eq!((batch.events.len(), batch.frames.len()), (1, 1));
        assert_eq!(
            (batch.frames[0].as_str(), batch.gaps, batch.duplicates),
            ("kept", 1, 2)
        );
    }
}
