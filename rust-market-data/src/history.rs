//! Bar history across restarts. The stream BARS (proto/nats/jetstream.json, created
//! only by admin) captures every closed bar market-data publishes on `md.bar.>` and
//! keeps the last 1000 per subject. On start, before the API answers, market-data
//! reads them back by batched direct gets (no consumer: its user may not create one)
//! into each series' history, so `md.api.history` answers with full history at once.
//!
//! Bars are captured by the publish itself (no ack): a bar the server missed (it was
//! down) is missing from the history after the next restart, as an interval without
//! ticks is. Nothing is made up for the time market-data was down: that stays a gap in
//! `start_ts`, and the bar that was open at the stop is lost.

use anyhow::Result;
use async_nats::{jetstream, Client};
use moonbus_common::bus::decode;
use moonbus_common::streams::{self, DirectReader};
use moonbus_common::Bar;

use crate::market::Market;

/// The stream of closed bars.
pub const STREAM: &str = "BARS";
/// What it captures.
const SUBJECTS: &str = "md.bar.>";

/// What a reload found.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Bars taken back into the history.
    pub bars: usize,
    /// Stored messages refused (not a bar, not a configured interval, out of order),
    /// with the first one's subject and reason.
    pub refused: usize,
    pub first_refusal: Option<(String, String)>,
}

/// Reads every bar stored in BARS into `market`, oldest first; call before any tick.
pub async fn reload(client: &Client, market: &mut Market) -> Result<Reloaded> {
    streams::open_stream(&jetstream::new(client.clone()), STREAM).await?;
    let mut reader = DirectReader::new(client.clone(), STREAM, SUBJECTS, 1);
    let mut out = Reloaded::default();
    while let Some(message) = reader.next().await? {
        let restored =
            decode::<Bar>(&message.payload).and_then(|bar| market.restore(&message.subject, &bar));
        match restored {
            Ok(()) => out.bars += 1,
            Err(reason) => {
                out.refused += 1;
                out.first_refusal
                    .get_or_insert_with(|| (message.subject.clone(), reason));
            }
        }
    }
    Ok(out)
}
