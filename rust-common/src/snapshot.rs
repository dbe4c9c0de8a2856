//! State snapshots in the SNAPSHOTS stream, so a service can rebuild from its latest
//! snapshot plus the EXEC tail instead of the whole of EXEC (whose retention is bounded).
//!
//! A snapshot is a payload (the service's own encoding) cut into chunks of at most
//! [`CHUNK_BYTES`] on `snapshot.<service>.chunk.<n>`, then a [`Manifest`] on
//! `snapshot.<service>.manifest` naming the chunks' stream sequences, the EXEC sequence the
//! state covers and a sha256 of the whole payload. The manifest is written last, so a
//! snapshot cut off half-way has none and is never read. SNAPSHOTS keeps 3 messages per
//! subject: the reader takes the newest manifest whose chunks are all there and hash right,
//! else an older one. Read back by direct gets only (no consumer).

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream;
use async_nats::Client;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::streams::DirectReader;

pub const STREAM: &str = "SNAPSHOTS";
/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;
/// A chunk's payload; the streams' max_msg_size is 64 KiB, headers included.
pub const CHUNK_BYTES: usize = 60 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub service: String,
    /// Every EXEC message up to and including this sequence is in the state.
    pub exec_sequence: u64,
    pub created_ts: u64,
    /// SNAPSHOTS sequences of the chunks, in payload order.
    pub chunks: Vec<u64>,
    pub bytes: u64,
    /// Lowercase hex sha256 of the whole payload.
    pub sha256: String,
}

/// A verified snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub manifest: Manifest,
    /// The manifest's SNAPSHOTS sequence.
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// What the reader found: the newest valid snapshot, and why any newer one was passed over.
#[derive(Debug, Default)]
pub struct Found {
    pub snapshot: Option<Snapshot>,
    pub rejected: Vec<String>,
}

/// Where a service's rebuild starts.
#[derive(Debug)]
pub enum Start {
    /// From this snapshot, then EXEC after `manifest.exec_sequence`.
    Snapshot(Snapshot),
    /// From EXEC sequence 1: no snapshot, and EXEC still holds all it ever had.
    Scratch,
    /// Neither is possible without missing reports: fail closed, for this reason.
    Refuse(String),
}

/// The EXEC stream's extent (stream info `state`).
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// Decide where to rebuild from: the snapshot found (if any) and EXEC's extent.
/// Reading from `from` misses nothing iff EXEC starts at or before it (when EXEC is empty
/// its first sequence is the next one to be written), and a snapshot must not claim more
/// of EXEC than EXEC ever held (a recreated stream is another history).
pub fn plan(found: Found, exec: Extent) -> Start {
    let why_not = |rejected: &[String]| {
        if rejected.is_empty() {
            "no snapshot".to_string()
        } else {
            format!("no valid snapshot ({})", rejected.join("; "))
        }
    };
    match found.snapshot {
        Some(snapshot) => {
            let covered = snapshot.manifest.exec_sequence;
            if covered > exec.last_sequence {
                Start::Refuse(format!(
                    "the snapshot covers EXEC up to sequence {covered} but EXEC ends at {}: the \
                     stream was recreated, the snapshot belongs to another history",
                    exec.last_sequence
                ))
            } else if exec.first_sequence > covered.saturating_add(1) {
                Start::Refuse(format!(
                    "EXEC starts at sequence {} but the latest valid snapshot covers only up to {covered}: \
                     reports {}..{} were removed by retention and are in no snapshot",
                    exec.first_sequence,
                    covered + 1,
                    exec.first_sequence - 1
                ))
            } else {
                Start::Snapshot(snapshot)
            }
        }
        None if exec.first_sequence > 1 => Start::Refuse(format!(
            "{} and EXEC starts at sequence {}: reports 1..{} were removed by retention",
            why_not(&found.rejected),
            exec.first_sequence,
            exec.first_sequence - 1
        )),
        None => Start::Scratch,
    }
}

fn hex_sha256(payload: &[u8]) -> String {
    Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One service's snapshots.
#[derive(Clone)]
pub struct Snapshots {
    client: Client,
    js: jetstream::Context,
    service: String,
}

impl Snapshots {
    pub fn new(client: Client, service: &str) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            client,
            service: service.into(),
        }
    }

    fn manifest_subject(&self) -> String {
        format!("snapshot.{}.manifest", self.service)
    }

    fn chunk_subject(&self, n: usize) -> String {
        format!("snapshot.{}.chunk.{n}", self.service)
    }

    /// Store `payload` as the state covering EXEC up to `exec_sequence`; each message is
    /// confirmed by the stream before the next, the manifest last.
    pub async fn write(
        &self,
        exec_sequence: u64,
        created_ts: u64,
        payload: &[u8],
    ) -> Result<Manifest> {
        let mut chunks = Vec::new();
        // An empty payload is still one (empty) chunk, so every snapshot has a chunk 0.
        let parts: Vec<&[u8]> = if payload.is_empty() {
            vec![payload]
        } else {
            payload.chunks(CHUNK_BYTES).collect()
        };
        for (n, part) in parts.into_iter().enumerate() {
            chunks.push(
                self.publish(self.chunk_subject(n), Bytes::copy_from_slice(part))
                    .await?,
            );
        }
        let manifest = Manifest {
            format: FORMAT,
            service: self.service.clone(),
            exec_sequence,
            created_ts,
            chunks,
            bytes: payload.len() as u64,
            sha256: hex_sha256(payload),
        };
        let body = serde_json::to_vec(&manifest).context("encoding the manifest")?;
        self.publish(self.manifest_subject(), body.into()).await?;
        Ok(manifest)
    }

    async fn publish(&self, subject: String, payload: Bytes) -> Result<u64> {
        let ack = tokio::time::timeout(TIMEOUT, async {
            self.js.publish(subject.clone(), payload).await?.await
        })
        .await
        .map_err(|_| anyhow!("storing {subject}: no stream ack within {TIMEOUT:?}"))?
        .with_context(|| format!("storing {subject}"))?;
        Ok(ack.sequence)
    }

    /// The newest snapshot that is whole and hashes right. Err only if SNAPSHOTS cannot be
    /// read at all (the caller stops: a restart tries again).
    pub async fn latest(&self) -> Result<Found> {
        let mut manifests = Vec::new();
        let mut reader =
            DirectReader::new(self.client.clone(), STREAM, &self.manifest_subject(), 1);
        while let Some(message) = reader.next().await.context("reading snapshot manifests")? {
            manifests.push((message.sequence, message.payload));
        }
        let mut found = Found::default();
        for (sequence, body) in manifests.into_iter().rev() {
            match self.verify(sequence, &body).await? {
                Ok(snapshot) => {
                    found.snapshot = Some(snapshot);
                    break;
                }
                Err(why) => {
                    tracing::warn!(service = %self.service, manifest = sequence, reason = %why, "snapshot passed over");
                    found.rejected.push(format!("manifest {sequence}: {why}"));
                }
            }
        }
        Ok(found)
    }

    /// Where to rebuild from: the newest valid snapshot against EXEC's extent now.
    pub async fn start(&self) -> Result<Start> {
        // Provisioned; created from the spec only where permitted (the crates' tests).
        crate::streams::open_stream(&self.js, STREAM).await?;
        let found = self.latest().await?;
        let info = self
            .js
            .get_stream(crate::subjects::EXEC_STREAM)
            .await
            .context("reading the EXEC stream's info")?
            .cached_info()
            .state
            .clone();
        let exec = Extent {
            first_sequence: info.first_sequence,
            last_sequence: info.last_sequence,
        };
        tracing::info!(service = %self.service, ?exec, snapshot = ?found.snapshot.as_ref().map(|s| &s.manifest), "planning the rebuild");
        Ok(plan(found, exec))
    }

    /// Ok(Err(why)): this snapshot is not usable; Err: SNAPSHOTS cannot be read.
    async fn verify(&self, sequence: u64, body: &[u8]) -> Result<Result<Snapshot, String>> {
        let manifest: Manifest = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("unreadable manifest ({e})"))),
        };
        if manifest.format != FORMAT {
            return Ok(Err(format!(
                "format {} (this build reads {FORMAT})",
                manifest.format
            )));
        }
        if manifest.service != self.service {
            return Ok(Err(format!("manifest of service {:?}", manifest.service)));
        }
        let mut payload =
            Vec::with_capacity(usize::try_from(manifest.bytes).unwrap_or(0).min(1 << 30));
        for (n, &chunk) in manifest.chunks.iter().enumerate() {
            let Some((subject, part)) = self.get(chunk).await? else {
                return Ok(Err(format!("chunk {n} (sequence {chunk}) is gone")));
            };
            if subject != self.chunk_subject(n) {
                return Ok(Err(format!("sequence {chunk} is {subject}, not chunk {n}")));
            }
            payload.extend_from_slice(&part);
        }
        if payload.len() as u64 != manifest.bytes || hex_sha256(&payload) != manifest.sha256 {
            return Ok(Err(format!(
                "the chunks ({} bytes) do not match the manifest's size ({}) and sha256",
                payload.len(),
                manifest.bytes
            )));
        }
        Ok(Ok(Snapshot {
            manifest,
            sequence,
            payload,
        }))
    }

    /// SNAPSHOTS message `sequence` by direct get; None if it no longer exists.
    async fn get(&self, sequence: u64) -> Result<Option<(String, Bytes)>> {
        let body = serde_json::json!({ "seq": sequence }).to_string();
        let message = tokio::time::timeout(
            TIMEOUT,
            self.client
                .request(format!("$JS.API.DIRECT.GET.{STREAM}"), body.into()),
        )
        .await
        .map_err(|_| anyhow!("{STREAM} did not answer a direct get within {TIMEOUT:?}"))?
        .with_context(|| format!("direct get from {STREAM}"))?;
        if let Some(status) = message.status {
            if status.as_u16() == 404 {
                return Ok(None);
            }
            bail!(
                "cannot read {STREAM} message {sequence}: {} {}",
                status.as_u16(),
                message.description.unwrap_or_default()
            );
        }
        let subject = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Subject"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        Ok(Some((subject, message.payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(covered: u64) -> Found {
        Found {
            snapshot: Some(Snapshot {
                manifest: Manifest {
                    format: FORMAT,
                    service: "risk".into(),
                    exec_sequence: covered,
                    created_ts: 1,
                    chunks: vec![1],
                    bytes: 0,
                    sha256: hex_sha256(b""),
                },
                sequence: 2,
                payload: Vec::new(),
            }),
            rejected: Vec::new(),
        }
    }

    fn extent(first_sequence: u64, last_sequence: u64) -> Extent {
        Extent {
            first_sequence,
            last_sequence,
        }
    }

    #[test]
    fn plan_rebuilds_only_without_a_gap() {
        // No snapshot: EXEC from 1, fresh (first 0) or whole (first 1).
        assert!(matches!(
            plan(Found::default(), extent(0, 0)),
            Start::Scratch
        ));
        assert!(matches!(
            plan(Found::default(), extent(1, 9)),
            Start::Scratch
        ));
        let Start::Refuse(why) = plan(Found::default(), extent(5, 9)) else {
            panic!("a gap must refuse")
        };
        assert!(why.contains("reports 1..4 were removed"), "{why}");
        // A snapshot covering 10: EXEC may start anywhere up to 11.
        assert!(matches!(
            plan(snapshot(10), extent(1, 20)),
            Start::Snapshot(_)
        ));
        assert!(matches!(
            plan(snapshot(10), extent(11, 20)),
            Start::Snapshot(_)
        ));
        // Emptied by retention right after the snapshot: first = last + 1.
        assert!(matches!(
            plan(snapshot(10), extent(11, 10)),
            Start::Snapshot(_)
        ));
        let Start::Refuse(why) = plan(snapshot(10), extent(12, 20)) else {
            panic!("a gap after the snapshot must refuse")
        };
        assert!(why.contains("reports 11..11"), "{why}");
        let Start::Refuse(why) = plan(snapshot(10), extent(0, 0)) else {
            panic!("a snapshot ahead of EXEC must refuse")
        };
        assert!(why.contains("recreated"), "{why}");
    }

    #[test]
    fn hash_is_lowercase_hex_sha256() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
