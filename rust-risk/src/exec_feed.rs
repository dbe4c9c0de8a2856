//! Reads `exec.report.>` from the EXEC stream in sequence order, from the first message
//! not in the snapshot risk started from (service.rs), and keeps reading it live. Risk may create no consumer (SECURITY.md): the rebuild, and
//! any gap, is read by batched direct gets; the live reports come from risk's provisioned
//! durable pull consumer `EXEC/risk`. Every report carries its stream sequence, so the
//! two meet exactly: what the durable delivers at or below the next sequence wanted is
//! already applied and skipped; one above it means something was missed (a delivery
//! lost in a reconnect), which is read by direct gets first. Nothing skipped, nothing
//! applied twice. Raw messages go to the engine task in stream order.

use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::streams::DirectReader;
use moonbus_common::subjects;
use tokio::sync::mpsc;

/// Risk's durable pull consumer on EXEC (proto/nats/jetstream.json).
pub const CONSUMER: &str = "risk";

#[derive(Debug)]
pub enum FeedEvent {
    Report {
        sequence: u64,
        subject: String,
        payload: Bytes,
    },
    /// Everything that was in the stream at start has been sent.
    CaughtUp,
}

/// Runs until the receiver is dropped, from EXEC sequence `from_sequence`. If reading
/// fails it starts again at the next unread sequence.
pub async fn run(
    client: Client,
    consumer: Consumer<pull::Config>,
    events: mpsc::Sender<FeedEvent>,
    from_sequence: u64,
) {
    let mut next_sequence = from_sequence;
    let mut caught_up = false;
    loop {
        match follow(
            &client,
            &consumer,
            &events,
            &mut next_sequence,
            &mut caught_up,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), next_sequence, "EXEC feed failed; reopening");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Ok(()) = the engine is gone (shutting down); Err = start again.
async fn follow(
    client: &Client,
    consumer: &Consumer<pull::Config>,
    events: &mpsc::Sender<FeedEvent>,
    next_sequence: &mut u64,
    caught_up: &mut bool,
) -> Result<()> {
    // Open the live feed first: whatever is stored after the catch-up below is then
    // either read by it or delivered by the durable.
    let mut live = consumer.messages().await.context("reading EXEC/risk")?;
    if !catch_up(client, events, next_sequence).await? {
        return Ok(());
    }
    if !*caught_up {
        *caught_up = true;
        tracing::info!(next_sequence = *next_sequence, "EXEC rebuilt");
        if events.send(FeedEvent::CaughtUp).await.is_err() {
            return Ok(());
        }
    }
    while let Some(message) = live.next().await {
        let message = message.context("EXEC/risk message")?;
        let sequence = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => anyhow::bail!("EXEC message without metadata: {e}"),
        };
        if sequence > *next_sequence && !catch_up(client, events, next_sequence).await? {
            return Ok(());
        }
        if sequence < *next_sequence {
            continue; // read already
        }
        *next_sequence = sequence + 1;
        let report = FeedEvent::Report {
            sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        };
        if events.send(report).await.is_err() {
            return Ok(());
        }
    }
    anyhow::bail!("EXEC/risk consumer ended")
}

/// Send everything stored from `next_sequence` on; false = the engine is gone.
async fn catch_up(
    client: &Client,
    events: &mpsc::Sender<FeedEvent>,
    next_sequence: &mut u64,
) -> Result<bool> {
    let mut reader = DirectReader::new(
        client.clone(),
        subjects::EXEC_STREAM,
        subjects::ALL_REPORTS,
        *next_sequence,
    );
    while let Some(message) = reader.next().await.context("reading EXEC")? {
        *next_sequence = message.sequence + 1;
        let report = FeedEvent::Report {
            sequence: message.sequence,
            subject: message.subject,
            payload: message.payload,
        };
        if events.send(report).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}
