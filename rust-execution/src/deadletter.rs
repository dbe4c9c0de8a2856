//! Orders the server gave up on: the ORDERS/execution consumer has max_deliver 10, and a
//! message delivered that often without an ack is not delivered again. The server then
//! publishes a MAX_DELIVERIES advisory (naming the message's ORDERS sequence), which the
//! DEADLETTER stream keeps. Execution settles each such order (engine.rs): an order with
//! no outcome gets a REJECTED report `dead_letter: not settled after N deliveries` and an
//! event on errors.execution; one with an outcome is left alone (never a second report).
//! Advisories come live (a core subscription) and, for those missed while execution was
//! down, from a scan of DEADLETTER at start.
//!
//! How soon: a message whose reports cannot be stored is nak'd with a delay that doubles
//! per delivery (jobs.rs Backoff: 1 s, 2 s, 4 s ... at most 60 s by default), so the 10
//! deliveries span about 5 minutes (`Backoff::until_dead_letter`, logged at start): a
//! transient failure (EXEC briefly unwritable) does not dead-letter an order. Risk being
//! down is no retry at all: that order is REJECTED risk_unavailable (fail closed).

use anyhow::{Context, Result};
use moonbus_common::streams::DirectReader;
use serde::Deserialize;

/// The server's advisory for execution's ORDERS consumer giving up on a message.
pub const ADVISORY_SUBJECT: &str = moonbus_common::subjects::DEAD_LETTER_ADVISORY;
/// The stream that keeps those advisories (proto/nats/jetstream.json).
pub const STREAM: &str = "DEADLETTER";

/// `io.nats.jetstream.advisory.v1.max_deliver` (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Advisory {
    pub stream: String,
    pub consumer: String,
    /// The ORDERS sequence of the message given up on.
    pub stream_seq: u64,
    /// How often it was delivered.
    pub deliveries: u64,
}

/// An advisory about ORDERS/execution, or why the payload is not one.
pub fn parse(payload: &[u8]) -> Result<Advisory, String> {
    let advisory: Advisory = moonbus_common::bus::decode(payload)?;
    if advisory.stream != "ORDERS" || advisory.consumer != "execution" {
        return Err(format!(
            "advisory about {}/{}, not ORDERS/execution",
            advisory.stream, advisory.consumer
        ));
    }
    Ok(advisory)
}

/// The REJECTED reason of a dead-lettered order.
pub fn reason(advisory: &Advisory) -> String {
    format!(
        "dead_letter: not settled after {} deliveries (ORDERS sequence {})",
        advisory.deliveries, advisory.stream_seq
    )
}

/// Every advisory kept in DEADLETTER, oldest first (batched direct gets).
pub async fn stored(client: &async_nats::Client) -> Result<Vec<Advisory>> {
    let mut reader = DirectReader::new(client.clone(), STREAM, ADVISORY_SUBJECT, 1);
    let mut found = Vec::new();
    while let Some(message) = reader
        .next()
        .await
        .context("reading the DEADLETTER stream")?
    {
        match parse(&message.payload) {
            Ok(advisory) => found.push(advisory),
            Err(e) => {
                tracing::warn!(sequence = message.sequence, error = %e, "unreadable advisory in DEADLETTER skipped")
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    // As nats-server 2.x writes it.
    const ADVISORY: &str = r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-12-05T05:00:00Z","stream":"ORDERS","consumer":"execution","stream_seq":42,"deliveries":10,"domain":""}"#;

    #[test]
    fn advisories_parse_and_name_the_order() {
        let advisory = parse(ADVISORY.as_bytes()).unwrap();
        assert_eq!(advisory.stream_seq, 42);
        assert_eq!(
            reason(&advisory),
            "dead_letter: not settled after 10 deliveries (ORDERS sequence 42)"
        );
        let other = ADVISORY.replace("\"execution\"", "\"someone\"");
        assert!(parse(other.as_bytes())
            .unwrap_err()
            .contains("not ORDERS/execution"));
        assert!(parse(b"{}").is_err());
    }
}
