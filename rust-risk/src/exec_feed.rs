//! Reads `exec.report.>` from the EXEC stream, from the first message, with an ordered
//! consumer, and keeps reading it live: the rebuild and the live feed are one consumer,
//! so no report falls between them. Raw messages go to the engine task in stream order.

use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::Context;
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::subjects;
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum FeedEvent {
    Report {
        subject: String,
        payload: Bytes,
    },
    /// Everything that was in the stream at start has been sent.
    CaughtUp,
}

/// Where the feed is: the next stream sequence to read, and the rebuild target.
struct Position {
    next_sequence: u64,
    /// The stream's last sequence when risk started; None until first read.
    target: Option<u64>,
    caught_up: bool,
}

/// Runs until the receiver is dropped. If the consumer fails it is opened again at
/// the next unread sequence: nothing skipped, nothing applied twice.
pub async fn run(js: Context, events: mpsc::Sender<FeedEvent>) {
    let mut position = Position {
        next_sequence: 1,
        target: None,
        caught_up: false,
    };
    loop {
        match follow(&js, &events, &mut position).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), next_sequence = position.next_sequence, "EXEC feed failed; reopening");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Ok(()) = the engine is gone (shutting down); Err = reopen.
async fn follow(
    js: &Context,
    events: &mpsc::Sender<FeedEvent>,
    position: &mut Position,
) -> Result<()> {
    let stream = js
        .get_stream(subjects::EXEC_STREAM)
        .await
        .context("EXEC stream")?;
    let target = *position
        .target
        .get_or_insert(stream.cached_info().state.last_sequence);
    let deliver_policy = if position.next_sequence <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: position.next_sequence,
        }
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::ALL_REPORTS.into(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("creating the ordered EXEC consumer")?;
    if !position.caught_up && consumer.cached_info().num_pending == 0 {
        position.caught_up = true;
        if events.send(FeedEvent::CaughtUp).await.is_err() {
            return Ok(());
        }
    }
    let mut messages = consumer.messages().await.context("reading EXEC")?;
    while let Some(message) = messages.next().await {
        let message = message.context("EXEC message")?;
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => anyhow::bail!("EXEC message without metadata: {e}"),
        };
        position.next_sequence = sequence + 1;
        let report = FeedEvent::Report {
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        };
        if events.send(report).await.is_err() {
            return Ok(());
        }
        if !position.caught_up && (pending == 0 || sequence >= target) {
            position.caught_up = true;
            tracing::info!(sequence, "EXEC rebuilt");
            if events.send(FeedEvent::CaughtUp).await.is_err() {
                return Ok(());
            }
        }
    }
    anyhow::bail!("EXEC consumer ended")
}
