//! Leader election over the KV bucket: one ACTIVE instance of a service, any number of
//! STANDBY ones that take over when the active one dies (risk and execution, `[risk]
//! failover` / `[execution] failover`).
//!
//! The lease is the KV key `leader.<service>` (written only by that service's NATS user,
//! proto/nats/moonbus.conf). Its value is a [`LeaseRecord`] (holder, since, takeovers);
//! what makes it a lock is the key's **revision**:
//!
//! - taken with `create` (the key does not exist) or with an `update` that names the
//!   revision the taker saw (compare-and-swap), so of two instances racing for it exactly
//!   one wins: the server refuses the other's "wrong last sequence";
//! - renewed every `ttl / 4` by the holder with an `update` on its own last revision;
//! - taken over by a standby only when the revision has not changed for a whole `ttl`
//!   measured **on the standby's own monotonic clock from when it first saw that
//!   revision** (no wall clock compared across machines), or at once when the holder
//!   released it on a graceful stop;
//! - **fail closed**: the holder acts only until `sent + ttl * 3/4`, where `sent` is when
//!   it sent its last successful renewal (before the server stored it, so before any
//!   standby could have seen it). Past that it stops acting: a watchdog thread (not a
//!   task: a busy or stalled runtime cannot delay it) ends the process (exit code
//!   [`EXIT_LEASE_LOST`]) and the supervisor restarts it as a standby. So the old
//!   holder has stopped a quarter of a ttl before any standby may take over.
//!
//! ```ignore
//! let lease = leader::acquire(&kv, "risk", &settings).await?; // waits while standby
//! lease.exit_when_lost();          // the fail-closed watchdog
//! // ... act ...
//! lease.release().await;           // graceful stop: the standby takes over at once
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::bus;
use crate::messages::now_ns;

/// The exit code of a process that stopped because it could not keep its lease.
pub const EXIT_LEASE_LOST: i32 = 3;

/// Shortest lease accepted: renewals every ttl/4 must fit a KV round trip easily.
pub const MIN_TTL: Duration = Duration::from_millis(400);

/// The KV key of `service`'s lease: `leader.<service>`.
pub fn key(service: &str) -> String {
    format!("leader.{service}")
}

/// The value stored under the lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// The instance id of the holder (`MOONBUS_INSTANCE`, else host-pid-start).
    pub holder: String,
    /// ns since the epoch: when the holder took the lease (active since).
    pub acquired_ts: u64,
    /// ns since the epoch: its last renewal.
    pub renewed_ts: u64,
    /// ns since the epoch: the holder acts no longer than this without renewing (on the
    /// holder's clock; for operators and audits only, never used to decide a takeover).
    pub acting_until_ts: u64,
    pub ttl_ms: u64,
    /// The last time an instance took the lease from another one (dead or released).
    pub takeover_ts: Option<u64>,
    /// Whom the last takeover took it from.
    pub previous_holder: Option<String>,
    /// How many takeovers the key has seen.
    pub takeovers: u64,
    /// Set by the holder on a graceful stop: free to take at once.
    pub released: bool,
}

impl LeaseRecord {
    /// The record `instance` writes when it takes the lease over `previous` (None: the
    /// key was never written or was erased).
    fn taken(instance: &str, ttl: Duration, previous: Option<&LeaseRecord>, now: u64) -> Self {
        let mut record = Self {
            holder: instance.into(),
            acquired_ts: now,
            renewed_ts: now,
            acting_until_ts: now + acting_window(ttl).as_nanos() as u64,
            ttl_ms: ttl.as_millis() as u64,
            takeover_ts: None,
            previous_holder: None,
            takeovers: 0,
            released: false,
        };
        if let Some(previous) = previous {
            record.takeover_ts = Some(now);
            record.previous_holder = Some(previous.holder.clone());
            record.takeovers = previous.takeovers + 1;
        }
        record
    }

    fn renewed(&self, ttl: Duration, now: u64) -> Self {
        Self {
            renewed_ts: now,
            acting_until_ts: now + acting_window(ttl).as_nanos() as u64,
            ..self.clone()
        }
    }
}

/// How long the holder acts after sending a renewal: 3/4 of the ttl, so it has stopped
/// a quarter of a ttl before a standby may take over.
pub fn acting_window(ttl: Duration) -> Duration {
    ttl * 3 / 4
}

/// What to contend with: the lease ttl and this instance's id.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub ttl: Duration,
    pub instance: String,
}

impl LeaseSettings {
    /// From a service's `failover` / `lease_ttl_ms` keys: None when failover is off (one
    /// instance, no lease, as before).
    pub fn from_config(section: &str, failover: bool, lease_ttl_ms: u64) -> Result<Option<Self>> {
        if !failover {
            return Ok(None);
        }
        let ttl = Duration::from_millis(lease_ttl_ms);
        if ttl < MIN_TTL {
            bail!(
                "[{section}] lease_ttl_ms = {lease_ttl_ms} is shorter than {} ms",
                MIN_TTL.as_millis()
            );
        }
        Ok(Some(Self {
            ttl,
            instance: instance_id(),
        }))
    }
}

/// This process's instance id: `MOONBUS_INSTANCE` (the launcher names them `risk-a`,
/// `risk-b`) plus the pid and start time, so a restarted process is a new instance.
pub fn instance_id() -> String {
    let name = std::env::var("MOONBUS_INSTANCE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "instance".into());
    format!(
        "{name}-{}-{}",
        std::process::id(),
        now_ns() / 1_000_000 % 100_000_000
    )
}

/// What a standby saw of the key: the revision and when (its monotonic clock) it first
/// saw it. The lease is free once that revision is `ttl` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    revision: u64,
    since: Instant,
}

/// The standby's view of the key: the decision whether it may take the lease now.
#[derive(Debug, Default)]
struct Observer {
    seen: Option<Seen>,
}

impl Observer {
    /// May the lease at `revision` (released or not) be taken at `now`?
    fn may_take(&mut self, revision: u64, released: bool, now: Instant, ttl: Duration) -> bool {
        if released {
            return true;
        }
        match self.seen {
            Some(seen) if seen.revision == revision => now.duration_since(seen.since) >= ttl,
            _ => {
                // A new revision (a renewal, or another taker): the clock starts again.
                self.seen = Some(Seen {
                    revision,
                    since: now,
                });
                false
            }
        }
    }
}

/// The holder's fail-closed deadline, shared with the watchdog thread: ns after
/// `base` (u64::MAX = not armed; 0 = lost at once).
#[derive(Debug)]
struct Deadline {
    base: Instant,
    ns: AtomicU64,
}

impl Deadline {
    fn set(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.ns.store(ns.max(1), Ordering::SeqCst);
    }

    fn lose(&self) {
        self.ns.store(0, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.ns.store(u64::MAX, Ordering::SeqCst);
    }

    fn passed(&self) -> bool {
        let ns = self.ns.load(Ordering::SeqCst);
        ns != u64::MAX && self.base.elapsed().as_nanos() as u64 >= ns
    }
}

/// A held lease, renewed in the background until released, lost or dropped.
pub struct Lease {
    /// The record as taken (holder, since, takeover).
    pub record: LeaseRecord,
    deadline: Arc<Deadline>,
    release: Option<oneshot::Sender<oneshot::Sender<()>>>,
    keeper: JoinHandle<()>,
}

impl Lease {
    /// Still acting: the last renewal is recent enough and nobody took the key.
    pub fn is_held(&self) -> bool {
        !self.deadline.passed()
    }

    /// The fail-closed watchdog: a thread that ends the process (exit code
    /// [`EXIT_LEASE_LOST`]) as soon as the lease is not held any more.
    pub fn exit_when_lost(&self, service: &'static str) {
        let deadline = self.deadline.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(5));
            if deadline.passed() {
                tracing::error!(service, "the lease was not renewed in time: stopping (fail closed); a standby takes over");
                eprintln!("{service}: lease lost, stopping (fail closed)");
                std::process::exit(EXIT_LEASE_LOST);
            }
        });
    }

    /// Graceful stop: mark the lease released (a standby takes it at once) and stop
    /// renewing. Call once nothing more will be done as the active instance.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let (done, wait) = oneshot::channel();
            if release.send(done).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
            }
        }
        self.deadline.disarm();
    }

    /// Stop renewing without releasing, as a crash would (tests).
    pub fn abandon(self) {
        self.keeper.abort();
        self.deadline.disarm();
    }
}

/// What a starting service is: the only instance (failover off), the active one (it holds
/// the lease), or stopped by a signal while it was standby.
pub enum Role {
    Single,
    Active(Lease),
    Stopped,
}

/// At a service's start, before it reads or acts on anything: with failover on
/// (`settings` Some) wait as standby until the lease is held, then turn the fail-closed
/// watchdog on. SIGINT/SIGTERM while standby is `Role::Stopped`.
pub async fn take_role(
    js: &async_nats::jetstream::Context,
    service: &'static str,
    settings: Option<&LeaseSettings>,
) -> Result<Role> {
    let Some(settings) = settings else {
        return Ok(Role::Single);
    };
    let kv = crate::streams::open_kv(js).await?;
    tokio::select! {
        // A stop that came with the lease (the whole system stopping) wins.
        biased;
        _ = crate::telemetry::shutdown_signal() => Ok(Role::Stopped),
        lease = acquire(&kv, service, settings) => {
            let lease = lease?;
            lease.exit_when_lost(service);
            Ok(Role::Active(lease))
        }
    }
}

/// Graceful stop of an active instance: release its lease, if it holds one.
pub async fn release(role: Role) {
    if let Role::Active(lease) = role {
        lease.release().await;
    }
}

/// Wait until this instance holds `service`'s lease (a standby waits here), then keep it.
/// Errors only when the bucket cannot be used at all (not provisioned, no permission).
pub async fn acquire(kv: &kv::Store, service: &str, settings: &LeaseSettings) -> Result<Lease> {
    let key = key(service);
    let poll = (settings.ttl / 10).max(Duration::from_millis(20));
    let mut observer = Observer::default();
    let mut said_standby = false;
    loop {
        let sent = Instant::now();
        let taken = match kv.entry(key.clone()).await {
            Ok(None) => try_take(kv, &key, settings, None, 0).await,
            Ok(Some(entry)) if entry.operation != kv::Operation::Put => {
                try_take(kv, &key, settings, None, entry.revision).await
            }
            Ok(Some(entry)) => {
                // A value that does not decode is nobody's valid lease; it still
                // must age a full ttl, as a live holder's would.
                let current = bus::decode::<LeaseRecord>(&entry.value).ok();
                let released = current.as_ref().is_some_and(|r| r.released);
                if observer.may_take(entry.revision, released, Instant::now(), settings.ttl) {
                    try_take(kv, &key, settings, current.as_ref(), entry.revision).await
                } else {
                    if !said_standby {
                        let holder = current.map(|r| r.holder).unwrap_or_default();
                        tracing::info!(%key, %holder, instance = %settings.instance, "standby: another instance holds the lease");
                        said_standby = true;
                    }
                    None
                }
            }
            // NATS down or restarting: keep trying (the revision clock is kept: the
            // holder stops acting on its own deadline whatever we see meanwhile).
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read the lease; retrying");
                tokio::time::sleep(poll * 5).await;
                None
            }
        };
        if let Some((revision, record)) = taken {
            tracing::warn!(%key, instance = %settings.instance, previous = ?record.previous_holder, "ACTIVE: lease taken");
            return Ok(keep(kv.clone(), key, settings.ttl, revision, record, sent));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Create (revision 0) or compare-and-swap the key; Some on success. Losing the race
/// (wrong last sequence) is None: someone else took it.
async fn try_take(
    kv: &kv::Store,
    key: &str,
    settings: &LeaseSettings,
    previous: Option<&LeaseRecord>,
    revision: u64,
) -> Option<(u64, LeaseRecord)> {
    let record = LeaseRecord::taken(&settings.instance, settings.ttl, previous, now_ns());
    let written = if revision == 0 {
        kv.create(key, bus::encode(&record))
            .await
            .map_err(|e| e.to_string())
    } else {
        kv.update(key, bus::encode(&record), revision)
            .await
            .map_err(|e| e.to_string())
    };
    match written {
        Ok(revision) => Some((revision, record)),
        Err(e) => {
            tracing::debug!(key, error = %e, "lease not taken");
            None
        }
    }
}

/// Renew every ttl/4 until released; a renewal refused (someone else wrote the key) or
/// not stored by the deadline loses the lease.
fn keep(
    kv: kv::Store,
    key: String,
    ttl: Duration,
    mut revision: u64,
    mut record: LeaseRecord,
    sent: Instant,
) -> Lease {
    let deadline = Arc::new(Deadline {
        base: Instant::now(),
        ns: AtomicU64::new(u64::MAX),
    });
    deadline.set(sent + acting_window(ttl));
    let (release_tx, mut release_rx) = oneshot::channel::<oneshot::Sender<()>>();
    let shared = deadline.clone();
    let taken = record.clone();
    let keeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                done = &mut release_rx => {
                    if let Ok(done) = done {
                        let released = LeaseRecord { released: true, ..record.renewed(ttl, now_ns()) };
                        match kv.update(&key, bus::encode(&released), revision).await {
                            Ok(_) => tracing::info!(%key, "lease released"),
                            Err(e) => tracing::warn!(%key, error = %e, "lease not released: a standby waits out its ttl"),
                        }
                        let _ = done.send(());
                    }
                    return;
                }
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            let next = record.renewed(ttl, now_ns());
            match tokio::time::timeout(ttl / 4, kv.update(&key, bus::encode(&next), revision)).await
            {
                Ok(Ok(new_revision)) => {
                    revision = new_revision;
                    record = next;
                    shared.set(sent + acting_window(ttl));
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A renewal of ours that timed out here and was stored after all moved
                    // the revision: still ours (nobody wrote after it), so carry on from it.
                    // Anything else: another instance has it.
                    match own_revision(&kv, &key, &record).await {
                        Some(stored) => revision = stored,
                        None => {
                            tracing::error!(%key, error = %e, "the lease was taken by another instance");
                            shared.lose();
                            return;
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(%key, error = %e, "lease renewal failed; retrying"),
                Err(_) => tracing::warn!(%key, "lease renewal timed out; retrying"),
            }
        }
    });
    Lease {
        record: taken,
        deadline,
        release: Some(release_tx),
        keeper,
    }
}

/// The key's revision if its value is still our lease (same holder, same term).
async fn own_revision(kv: &kv::Store, key: &str, ours: &LeaseRecord) -> Option<u64> {
    let entry = kv.entry(key).await.ok()??;
    let stored = bus::decode::<LeaseRecord>(&entry.value).ok()?;
    (entry.operation == kv::Operation::Put
        && stored.holder == ours.holder
        && stored.acquired_ts == ours.acquired_ts
        && !stored.released)
        .then_some(entry.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(1000);

    #[test]
    fn a_standby_takes_a_lease_only_once_its_revision_is_a_ttl_old() {
        let mut observer = Observer::default();
        let t0 = Instant::now();
        assert!(
            !observer.may_take(5, false, t0, TTL),
            "first sight starts the clock"
        );
        assert!(!observer.may_take(5, false, t0 + TTL / 2, TTL));
        // A renewal: the clock starts again from when it is seen.
        assert!(!observer.may_take(6, false, t0 + TTL - Duration::from_millis(1), TTL));
        assert!(!observer.may_take(6, false, t0 + TTL + TTL / 2, TTL));
        assert!(observer.may_take(6, false, t0 + 2 * TTL, TTL));
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let mut observer = Observer::default();
        assert!(observer.may_take(9, true, Instant::now(), TTL));
    }

    #[test]
    fn the_holder_stops_a_quarter_ttl_before_a_standby_may_take_over() {
        // The holder acts until sent + 3/4 ttl; a standby sees the revision after it was
        // sent and waits a whole ttl from then.
        assert_eq!(acting_window(TTL), Duration::from_millis(750));
        assert!(acting_window(TTL) + TTL / 4 <= TTL);
    }

    #[test]
    fn a_takeover_is_recorded_and_a_renewal_keeps_the_since() {
        let first = LeaseRecord::taken("a", TTL, None, 100);
        assert_eq!((first.takeovers, first.takeover_ts), (0, None));
        let renewed = first.renewed(TTL, 200);
        assert_eq!((renewed.acquired_ts, renewed.renewed_ts), (100, 200));
        assert_eq!(renewed.acting_until_ts, 200 + 750_000_000);
        let second = LeaseRecord::taken("b", TTL, Some(&renewed), 5_000);
        assert_eq!(second.holder, "b");
        assert_eq!(second.previous_holder.as_deref(), Some("a"));
        assert_eq!((second.takeover_ts, second.takeovers), (Some(5_000), 1));
        let third = LeaseRecord::taken("c", TTL, Some(&second), 9_000);
        assert_eq!(third.takeovers, 2);
    }

    #[test]
    fn the_deadline_passes_when_lost_and_never_when_disarmed() {
        let deadline = Deadline {
            base: Instant::now(),
            ns: AtomicU64::new(u64::MAX),
        };
        assert!(!deadline.passed());
        deadline.set(Instant::now() + Duration::from_secs(60));
        assert!(!deadline.passed());
        deadline.set(Instant::now() - Duration::from_millis(1));
        assert!(deadline.passed());
        deadline.disarm();
        assert!(!deadline.passed());
        deadline.lose();
        assert!(deadline.passed());
    }

    #[test]
    fn failover_settings_are_checked() {
        assert!(LeaseSettings::from_config("risk", false, 0)
            .unwrap()
            .is_none());
        assert!(LeaseSettings::from_config("risk", true, 100).is_err());
        let settings = LeaseSettings::from_config("risk", true, 2000)
            .unwrap()
            .unwrap();
        assert_eq!(settings.ttl, Duration::from_secs(2));
        assert!(!settings.instance.is_empty());
    }
}
