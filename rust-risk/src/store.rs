//! What risk keeps in the KV bucket `moonbus`: the kill switch, the loss latch and the
//! limits changed through `risk.api.limits` (so a restart keeps them), and the latest account and verdicts (so a starting
//! agent reads them at once instead of waiting for the next heartbeat).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use moonbus_common::{streams, LimitsPatch, RiskLimits};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const KILL_SWITCH_KEY: &str = "risk.killswitch";
pub const LOSS_LATCH_KEY: &str = "risk.loss_latch";
pub const ACCOUNT_KEY: &str = "risk.account";
/// The limits as last changed through the API; they override the config file's.
pub const LIMITS_KEY: &str = "risk.limits";

/// The value of `LIMITS_KEY`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLimits {
    pub limits: RiskLimits,
    pub actor: String,
    pub reason: String,
    pub changed_ts: u64,
}

impl StoredLimits {
    /// As a patch that sets every limit.
    pub fn patch(&self) -> LimitsPatch {
        let l = self.limits.clone();
        LimitsPatch {
            max_order_notional: Some(l.max_order_notional),
            max_position_notional: Some(l.max_position_notional),
            max_gross_exposure: Some(l.max_gross_exposure),
            min_cash: Some(l.min_cash),
            max_daily_loss: Some(l.max_daily_loss),
            max_drawdown_pct: Some(l.max_drawdown_pct),
        }
    }
}

pub fn verdict_key(symbol: impl std::fmt::Display) -> String {
    format!("risk.verdict.{symbol}")
}

/// A write that must be stored before risk goes on gives up after this long.
const PUT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the bucket holds for a key.
pub enum Stored {
    Value(Bytes),
    /// A delete (or purge) marker: the key was written once.
    Erased,
    Never,
}

#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
    latest: mpsc::UnboundedSender<(String, Bytes)>,
}

impl Store {
    /// Open the provisioned bucket; `Writer` stores the `put_latest` values.
    pub async fn open(js: &jetstream::Context) -> Result<(Self, Writer)> {
        let kv = streams::open_kv(js).await?;
        let (latest, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_latest(kv.clone(), queue));
        Ok((Self { kv, latest }, Writer(task)))
    }

    /// The value of `key`; None if it was never written. Err if the bucket cannot
    /// be read: the caller decides how to fail closed.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        tokio::time::timeout(PUT_TIMEOUT, self.kv.get(key))
            .await
            .with_context(|| format!("reading KV {key}: timed out"))?
            .with_context(|| format!("reading KV {key}"))
    }

    /// What the bucket holds for `key`: a value, a delete marker, or nothing ever.
    /// Err if the bucket cannot be read: the caller decides how to fail closed.
    pub async fn entry(&self, key: &str) -> Result<Stored> {
        let entry = tokio::time::timeout(PUT_TIMEOUT, self.kv.entry(key))
            .await
            .with_context(|| format!("reading KV {key}: timed out"))?
            .with_context(|| format!("reading KV {key}"))?;
        Ok(match entry {
            None => Stored::Never,
            Some(e) if e.operation == kv::Operation::Put => Stored::Value(e.value),
            Some(_) => Stored::Erased,
        })
    }

    /// Store now and wait for the server to confirm.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<()> {
        tokio::time::timeout(PUT_TIMEOUT, self.kv.put(key, value))
            .await
            .with_context(|| format!("storing KV {key}: timed out"))?
            .with_context(|| format!("storing KV {key}"))?;
        Ok(())
    }

    /// Store in the background without holding up the caller; if several values of
    /// one key queue up, only the latest is written.
    pub fn put_latest(&self, key: String, value: Bytes) {
        if self.latest.send((key, value)).is_err() {
            tracing::warn!("the KV writer has stopped");
        }
    }
}

/// The background writer; `finish` writes what is queued and stops it.
pub struct Writer(JoinHandle<()>);

impl Writer {
    /// Call after every `Store` clone is dropped (the queue then ends).
    pub async fn finish(self) {
        if tokio::time::timeout(PUT_TIMEOUT, self.0).await.is_err() {
            tracing::warn!("the KV writer did not finish in time");
        }
    }
}

/// How long the writes of views (the account, the verdicts) are gathered before they are
/// stored, the latest value of each key: a fill changes both, and storing each change
/// would add two JetStream writes to every order (issue #17). Agents read these keys only
/// when they start; the loss latch and the reconciliations are never held back.
pub const VIEW_WINDOW: Duration = Duration::from_millis(100);

/// A key whose value is only a view of risk's state (nothing restores from it).
fn is_view(key: &str) -> bool {
    key == ACCOUNT_KEY || key.starts_with("risk.verdict.")
}

async fn write_latest(kv: kv::Store, mut queue: mpsc::UnboundedReceiver<(String, Bytes)>) {
    while let Some((key, value)) = queue.recv().await {
        let mut batch = BTreeMap::from([(key, value)]);
        let deadline = tokio::time::Instant::now() + VIEW_WINDOW;
        while batch.keys().all(|key| is_view(key)) {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some((key, value))) => {
                    batch.insert(key, value);
                }
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok((key, value)) = queue.try_recv() {
            batch.insert(key, value);
        }
        for (key, value) in batch {
            if let Err(e) = kv.put(&key, value).await {
                tracing::warn!(key, error = %e, "could not store in KV");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_account_and_the_verdicts_are_held_back() {
        assert!(is_view(ACCOUNT_KEY));
        assert!(is_view(&verdict_key("BTC-USD")));
        for key in [
            LOSS_LATCH_KEY,
            KILL_SWITCH_KEY,
            LIMITS_KEY,
            "risk.recon.binance",
        ] {
            assert!(!is_view(key), "{key}");
        }
    }
}
