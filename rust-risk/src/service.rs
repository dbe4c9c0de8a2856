//! The NATS side: one task owns the engine and `select!`s over the EXEC feed, ticks,
//! the service endpoints and a heartbeat, so every check sees every change before it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::service::Request;
use async_nats::Client;
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt};
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::leader::{self, Role};
use moonbus_common::service::{self as skeleton, Base};
use moonbus_common::snapshot::{Snapshots, Start};
use moonbus_common::streams;
use moonbus_common::{
    now_ns, steady_ns, subjects, ExecutionReport, KillSwitchRequest, KillSwitchState, LimitsReply,
    LimitsRequest, LiveVenueStatus, PositionsReply, PositionsRequest, Reconciliation,
    RiskCheckRequest, Symbol, Tick, Venue,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::access;
use crate::config::Settings;
use crate::engine::{Engine, ReportEffect};
use crate::exec_feed::{self, FeedEvent};
use crate::flatten;
use crate::limits::LossLatch;
use crate::metrics;
use crate::publish::Publisher;
use crate::store::{self, Store, StoredLimits};
use crate::ticks::{TickBatch, MAX_BATCH};

pub const SERVICE: &str = "risk";

/// What the kill switch handler needs besides the engine (cheap to clone into a task).
#[derive(Clone)]
struct Io {
    client: Client,
    js: async_nats::jetstream::Context,
    errors: ErrorSink,
    store: Store,
    flatten_venue: Venue,
}

pub async fn run(base: Base, settings: Settings) -> Result<()> {
    let client = base.client.clone();
    let js = async_nats::jetstream::new(client.clone());
    // With failover, a standby waits here: it reads, answers and publishes nothing until
    // it holds the lease, then rebuilds from the snapshot + EXEC like any start.
    let role = match leader::take_role(&js, SERVICE, settings.lease.as_ref()).await? {
        Role::Stopped => return base.stop(None).await,
        role => role,
    };
    // Provisioned (proto/nats/jetstream.json): risk reads EXEC and publishes flatten
    // orders into ORDERS, and may configure neither.
    let exec_stream = streams::open_stream(&js, subjects::EXEC_STREAM).await?;
    let errors = ErrorSink::new(client.clone(), SERVICE);
    let (store, kv_writer) = Store::open(&js).await?;
    let (kill_switch, loss_latch) = restore(&store).await?;
    let mut ticks = client
        .subscribe(subjects::ALL_TICKS)
        .await
        .context("subscribing to ticks")?;
    // The live venues' accounts (only execution may publish them: proto/nats/moonbus.conf).
    let mut venue_statuses = client
        .subscribe(subjects::ALL_VENUE_STATUS)
        .await
        .context("subscribing to the live venues' status")?;
    let service = base
        .register(
            "positions, PnL, limits, kill switch, pre-trade checks",
            subjects::RISK_VERSION,
        )
        .await?;
    let endpoint = |name, subject| skeleton::endpoint(&service, name, subject);
    let mut checks = endpoint("check", subjects::RISK_CHECK).await?;
    let mut killswitch = endpoint("killswitch", subjects::RISK_KILLSWITCH).await?;
    let mut limits = endpoint("limits", subjects::RISK_LIMITS).await?;
    let mut positions = endpoint("positions", subjects::RISK_POSITIONS).await?;

    let mut engine = Engine::new(settings.clone(), base.started_ts);
    restore_limits(&mut engine, &store).await?;
    engine.restore_reconciliations(stored_reconciliations(&client, &errors).await?, steady_ns());
    let snapshots = Snapshots::new(client.clone(), SERVICE);
    let mut snapshotter = Snapshotter::new(snapshots.clone(), &settings);
    let (feed_tx, mut feed) = mpsc::channel(1024);
    let exec_consumer = streams::open_consumer(&exec_stream, exec_feed::CONSUMER, |_| {}).await?;
    let feed_task = match snapshots.start().await? {
        Start::Refuse(why) => {
            let why = format!("risk cannot rebuild its state: {why}");
            tracing::error!(reason = %why, "failing closed: every check is refused");
            errors.report(subjects::EXEC_STREAM, &why, b"").await;
            engine.fail_closed(why);
            // No reports will come; the sender is kept so the feed is not "stopped".
            tokio::spawn(async move { feed_tx.closed().await })
        }
        start => {
            let from = match start {
                Start::Snapshot(snapshot) => {
                    let covered = snapshot.manifest.exec_sequence;
                    let state = serde_json::from_slice(&snapshot.payload)
                        .map_err(|e| e.to_string())
                        .and_then(|state| engine.restore_state(state));
                    if let Err(e) = state {
                        // Verified by its hash, so written by a build that disagrees.
                        bail!(
                            "snapshot {} (EXEC up to {covered}) cannot be restored: {e}",
                            snapshot.sequence
                        );
                    }
                    tracing::info!(
                        exec_sequence = covered,
                        manifest = snapshot.sequence,
                        "state restored from a snapshot"
                    );
                    snapshotter.restored(covered);
                    covered + 1
                }
                _ => 1,
            };
            tokio::spawn(exec_feed::run(client.clone(), exec_consumer, feed_tx, from))
        }
    };
    let mut heartbeat = tokio::time::interval(Duration::from_millis(settings.heartbeat_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut marks_timer = tokio::time::interval(crate::publish::MARKS_EVERY);
    marks_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let io = Io {
        client: client.clone(),
        js: js.clone(),
        errors: errors.clone(),
        store: store.clone(),
        flatten_venue: settings.flatten_venue.clone(),
    };
    let metrics_addr = settings.metrics_addr.as_deref().unwrap_or("");
    base.serve_metrics(metrics_addr, || metrics::global().render())
        .await;
    if kill_switch.as_ref().is_some_and(|k| k.engaged) {
        tracing::warn!(
            ?kill_switch,
            "the kill switch is engaged (kept from before the restart)"
        );
    }
    engine.restore(kill_switch, loss_latch.clone());
    let mut publisher = Publisher::new(client.clone(), store, loss_latch);
    let shutdown = skeleton::shutdown_signal();
    tokio::pin!(shutdown);
    tracing::info!("risk started; rebuilding from EXEC");

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = feed.recv() => match event {
                Some(FeedEvent::Report { sequence, subject, payload }) => {
                    match on_report(&mut engine, &errors, &subject, &payload).await {
                        Some(symbol) => publisher.changes_of(&engine, &symbol).await,
                        None => publisher.changes(&engine).await,
                    }
                    snapshotter.applied(sequence, &engine);
                }
                Some(FeedEvent::CaughtUp) => {
                    engine.mark_ready(steady_ns());
                    let account = engine.account(steady_ns());
                    tracing::info!(
                        positions = account.open_positions, equity = %account.equity,
                        realized_pnl = %account.realized_pnl, "ready"
                    );
                    publisher.everything(&engine).await;
                    snapshotter.write(&engine, false);
                }
                None => bail!("the EXEC feed stopped"),
            },
            request = checks.next() => {
                let request = request.context("check endpoint closed")?;
                let reply = match bus::decode::<RiskCheckRequest>(&request.message.payload) {
                    Ok(check) => {
                        let started = Instant::now();
                        let result = engine.check(&check, steady_ns());
                        metrics::global().check_seconds.observe(started.elapsed());
                        metrics::global().count_check(&result);
                        bus::encode(&result)
                    }
                    Err(e) => bad_request(&request, e),
                };
                respond(&request, reply).await;
            }
            request = killswitch.next() => {
                let request = request.context("killswitch endpoint closed")?;
                let caller = subjects::last_token(&request.message.subject).to_string();
                match bus::decode::<KillSwitchRequest>(&request.message.payload) {
                    Ok(mut change) => match access::kill_switch(&caller, change.action, change.flatten) {
                        Err(reason) => {
                            tracing::warn!(%caller, %reason, "kill switch request refused");
                            respond(&request, bus::error_reply("forbidden", reason)).await;
                        }
                        Ok(()) => {
                            change.actor = access::actor(&caller, &change.actor);
                            on_kill_switch(&mut engine, &mut publisher, &io, request, change).await;
                        }
                    },
                    Err(e) => {
                        let reply = bad_request(&request, e);
                        respond(&request, reply).await;
                    }
                }
            }
            request = limits.next() => {
                let request = request.context("limits endpoint closed")?;
                let caller = subjects::last_token(&request.message.subject).to_string();
                let reply = match decode_or_default::<LimitsRequest>(&request.message.payload) {
                    Ok(change) => match limits_request(&mut engine, &io.store, &caller, change).await {
                        Ok(()) => {
                            publisher.changes(&engine).await;
                            bus::encode(&LimitsReply { limits: engine.limits() })
                        }
                        Err((code, reason)) => {
                            tracing::warn!(%caller, code, %reason, "limits request refused");
                            bus::error_reply(code, reason)
                        }
                    },
                    Err(e) => bad_request(&request, e),
                };
                respond(&request, reply).await;
            }
            request = positions.next() => {
                let request = request.context("positions endpoint closed")?;
                let reply = match decode_or_default::<PositionsRequest>(&request.message.payload) {
                    Ok(_) if engine.unavailable().is_some() => {
                        bus::error_reply(crate::engine::UNAVAILABLE, engine.unavailable().unwrap_or_default())
                    }
                    // Half-rebuilt positions would be wrong numbers, not a view.
                    Ok(_) if !engine.is_ready() => {
                        bus::error_reply("not_ready", "risk is still rebuilding its state from the EXEC stream")
                    }
                    Ok(query) => bus::encode(&PositionsReply {
                        positions: engine.positions(query.symbol.as_ref()),
                        account: engine.account(steady_ns()),
                    }),
                    Err(e) => bad_request(&request, e),
                };
                respond(&request, reply).await;
            }
            message = ticks.next() => {
                let message = message.context("tick subscription closed")?;
                on_ticks(message, &mut ticks, &mut engine, &mut publisher, &errors).await?;
            }
            message = venue_statuses.next() => {
                let message = message.context("venue status subscription closed")?;
                match bus::decode::<LiveVenueStatus>(&message.payload) {
                    Ok(status) if subjects::last_token(&message.subject) != status.venue.as_str() => {
                        let why = format!("venue {} on the subject of another venue", status.venue);
                        errors.report(&message.subject, &why, &message.payload).await;
                    }
                    Ok(status) => {
                        if let Some(reconciliation) = engine.apply_venue_status(&status, steady_ns()) {
                            publisher.reconciliation(reconciliation).await;
                            publisher.changes(&engine).await;
                        }
                    }
                    Err(e) => errors.report(&message.subject, &e, &message.payload).await,
                }
            }
            _ = heartbeat.tick() => {
                engine.heartbeat(steady_ns());
                for reconciliation in engine.recon_heartbeat(steady_ns()) {
                    publisher.reconciliation(reconciliation).await;
                }
                publisher.everything(&engine).await;
                snapshotter.owed(&engine);
            }
            // Even without a new report: ticks and checks move state a restart needs.
            _ = snapshotter.timer.tick() => snapshotter.write(&engine, true),
            _ = marks_timer.tick() => publisher.release_marks(&engine).await,
        }
    }

    // Stop taking input, then send what is in hand and close the connection.
    tracing::info!("stopping");
    feed_task.abort();
    for endpoint in [&mut checks, &mut killswitch, &mut limits, &mut positions] {
        if let Err(e) = endpoint.stop().await {
            tracing::warn!(error = %e, "stopping an endpoint");
        }
    }
    skeleton::stop_service(service).await;
    if engine.is_ready() {
        publisher.everything(&engine).await;
    }
    snapshotter.finish(&engine).await;
    // The last KV values are written before the connection closes.
    drop((publisher, io));
    kv_writer.finish().await;
    // Nothing more is answered or written: a standby may take over at once.
    leader::release(role).await;
    base.stop(None).await
}

/// The kill switch and loss latch stored before the restart. A kill switch that
/// cannot be read stops the start (the launcher restarts risk); one that is stored
/// but unreadable counts as engaged: fail closed.
///
/// An absent kill switch counts as released only on a system risk has never run on (no
/// account stored either), and that first start stores the released state, so the key
/// exists from then on: a key that was written and is gone (erased, or a store that lost
/// it) reads as engaged.
async fn restore(store: &Store) -> Result<(Option<KillSwitchState>, Option<LossLatch>)> {
    let engaged_to_be_safe = |why: String| KillSwitchState {
        engaged: true,
        actor: SERVICE.into(),
        reason: format!("{why}: engaged to be safe; an operator may release it"),
        changed_ts: now_ns(),
        flatten_orders: None,
    };
    let kill_switch = match store.entry(store::KILL_SWITCH_KEY).await? {
        store::Stored::Value(value) => bus::decode::<KillSwitchState>(&value).unwrap_or_else(|e| {
            engaged_to_be_safe(format!("the stored kill switch state is unreadable ({e})"))
        }),
        store::Stored::Erased => {
            engaged_to_be_safe("the stored kill switch state was erased".into())
        }
        store::Stored::Never => match store.entry(store::ACCOUNT_KEY).await? {
            store::Stored::Never => {
                let first = KillSwitchState {
                    engaged: false,
                    actor: SERVICE.into(),
                    reason: "first start".into(),
                    changed_ts: now_ns(),
                    flatten_orders: None,
                };
                store
                    .put(store::KILL_SWITCH_KEY, bus::encode(&first))
                    .await?;
                first
            }
            _ => engaged_to_be_safe(
                "the kill switch state is missing from KV although risk has run here before".into(),
            ),
        },
    };
    let kill_switch = Some(kill_switch);
    let loss_latch = match store.get(store::LOSS_LATCH_KEY).await? {
        None => None,
        Some(value) => bus::decode::<Option<LossLatch>>(&value)
            .map_err(|e| anyhow::anyhow!("the stored loss latch is unreadable: {e}"))?,
    };
    Ok((kill_switch, loss_latch))
}

/// The reconciliations of the live venues stored before the restart (KV
/// `risk.recon.<venue>`, read by direct gets). A bucket that cannot be read stops the start
/// (fail closed: a gated venue must not come back ungated); a value that does not parse is
/// reported on errors.risk and skipped.
async fn stored_reconciliations(
    client: &Client,
    errors: &ErrorSink,
) -> Result<Vec<Reconciliation>> {
    let prefix = format!("$KV.{}.", subjects::KV_BUCKET);
    let filter = format!("{prefix}{}", subjects::risk_recon(">"));
    let mut reader = streams::DirectReader::new(
        client.clone(),
        &format!("KV_{}", subjects::KV_BUCKET),
        &filter,
        1,
    );
    let mut found = Vec::new();
    while let Some(message) = reader
        .next()
        .await
        .context("reading the stored reconciliations")?
    {
        if message.payload.is_empty() {
            continue; // a deleted key
        }
        match bus::decode::<Reconciliation>(&message.payload) {
            Ok(reconciliation) => found.push(reconciliation),
            Err(e) => errors.report(&message.subject, &e, &message.payload).await,
        }
    }
    Ok(found)
}

/// Engage, release or read the kill switch. Engaging takes effect at once, before
/// it is stored (a slow KV must not delay it; if storing fails the reply says so).
/// Releasing takes effect only once stored: a release that cannot be stored leaves
/// the switch engaged. Every change is an event on `risk.events`.
async fn on_kill_switch(
    engine: &mut Engine,
    publisher: &mut Publisher,
    io: &Io,
    request: Request,
    change: KillSwitchRequest,
) {
    let now = now_ns();
    let mut state = match engine.kill_switch_change(&change, now) {
        Ok(Some(state)) => state,
        Ok(None) => return respond(&request, bus::encode(&engine.kill_switch_state())).await,
        Err(refusal) => {
            return respond(&request, bus::error_reply(refusal.code, refusal.reason)).await
        }
    };
    if state.engaged {
        engine.set_kill_switch(state.clone());
    }
    let stored = io
        .store
        .put(store::KILL_SWITCH_KEY, bus::encode(&state))
        .await;
    if !state.engaged {
        if let Err(e) = stored {
            let message =
                format!("the kill switch stays ENGAGED: its release could not be stored ({e:#})");
            return respond(&request, bus::error_reply("not_persisted", message)).await;
        }
        engine.set_kill_switch(state.clone());
    }
    publisher.changes(engine).await;
    let orders = if change.flatten {
        engine.flatten_orders(&io.flatten_venue, now)
    } else {
        Vec::new()
    };
    let in_background = !orders.is_empty();
    let io = io.clone();
    let finish = async move {
        if change.flatten {
            state.flatten_orders = Some(flatten::send(&io.js, &orders, &io.errors).await);
        }
        let event = bus::encode(&state);
        if let Err(e) = io
            .client
            .publish(subjects::RISK_EVENTS, event.clone())
            .await
        {
            tracing::warn!(error = %e, "could not publish the kill switch event");
        }
        let reply = match stored {
            Ok(()) => event,
            Err(e) => bus::error_reply(
                "not_persisted",
                format!(
                    "the kill switch is ENGAGED (flatten orders sent: {}) but could not be stored ({e:#}): \
                     a restart would release it; engage again",
                    state.flatten_orders.unwrap_or(0)
                ),
            ),
        };
        respond(&request, reply).await;
    };
    // Waiting for ORDERS to store the flatten orders must not hold up the checks.
    if in_background {
        tokio::spawn(finish);
    } else {
        finish.await;
    }
}

/// A limits request from `caller` (the NATS user): reading is open; a change is
/// `forbidden` unless the caller's role may make it (access.rs), else applied.
async fn limits_request(
    engine: &mut Engine,
    store: &Store,
    caller: &str,
    mut change: LimitsRequest,
) -> Result<(), (&'static str, String)> {
    access::limits(caller, change.set.is_some() || change.release_loss_latch)
        .map_err(|reason| ("forbidden", reason))?;
    change.actor = access::actor(caller, &change.actor);
    on_limits(engine, store, &change).await
}

/// Change limits (all or nothing) and / or release the loss latch, in that order, so
/// one request can raise a limit and release the latch it tripped. New limits take
/// effect only once stored in KV, so a restart keeps them.
async fn on_limits(
    engine: &mut Engine,
    store: &Store,
    change: &LimitsRequest,
) -> Result<(), (&'static str, String)> {
    if let Some(patch) = &change.set {
        let limits = engine
            .patched_limits(patch)
            .map_err(|reason| ("bad_request", reason))?;
        let stored = StoredLimits {
            limits: crate::engine::limits_view(&limits),
            actor: change.actor.clone(),
            reason: change.reason.clone(),
            changed_ts: now_ns(),
        };
        store
            .put(store::LIMITS_KEY, bus::encode(&stored))
            .await
            .map_err(|e| {
                let why = format!("the limits were NOT changed: they could not be stored ({e:#})");
                ("not_persisted", why)
            })?;
        engine.apply_limits(limits);
        tracing::warn!(actor = %change.actor, reason = %change.reason, "limits changed");
    }
    if change.release_loss_latch {
        let released = engine.release_loss_latch(steady_ns());
        tracing::warn!(actor = %change.actor, reason = %change.reason, ?released, "loss latch released");
    }
    Ok(())
}

/// Limits changed through the API before the restart override the config file's. A
/// stored value that cannot be read or applied stops the start (fail closed).
async fn restore_limits(engine: &mut Engine, store: &Store) -> Result<()> {
    let Some(value) = store.get(store::LIMITS_KEY).await? else {
        return Ok(());
    };
    let stored: StoredLimits = bus::decode(&value).map_err(|e| {
        anyhow::anyhow!(
            "the stored limits ({}) are unreadable: {e}",
            store::LIMITS_KEY
        )
    })?;
    engine.set_limits(&stored.patch()).map_err(|e| {
        anyhow::anyhow!("the stored limits ({}) are invalid: {e}", store::LIMITS_KEY)
    })?;
    tracing::warn!(
        limits = ?stored.limits, actor = %stored.actor, reason = %stored.reason, changed_ts = stored.changed_ts,
        "limits from KV {} (changed through risk.api.limits) override the config file's", store::LIMITS_KEY
    );
    Ok(())
}

/// Writes the engine's state to SNAPSHOTS: every `interval`, after `every` reports, on a
/// graceful stop; one write at a time, in the background (the checks go on).
struct Snapshotter {
    snapshots: Snapshots,
    timer: tokio::time::Interval,
    every: u64,
    /// The last EXEC sequence applied, the one the last write started covers, and the
    /// one the last stored snapshot covers.
    covered: u64,
    requested: u64,
    stored: u64,
    writing: Option<JoinHandle<Result<u64>>>,
    /// A write was due while another was under way: start it once that one is over.
    owed: bool,
}

impl Snapshotter {
    fn new(snapshots: Snapshots, settings: &Settings) -> Self {
        // Interval 0 = off: a timer that never fires within a process's life.
        let period = match settings.snapshot_interval_ms {
            0 => Duration::from_secs(86_400 * 365 * 100),
            ms => Duration::from_millis(ms),
        };
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            snapshots,
            timer,
            every: settings.snapshot_every_reports,
            covered: 0,
            requested: 0,
            stored: 0,
            writing: None,
            owed: false,
        }
    }

    /// From a restored snapshot covering `covered`.
    fn restored(&mut self, covered: u64) {
        (self.covered, self.requested, self.stored) = (covered, covered, covered);
    }

    fn applied(&mut self, sequence: u64, engine: &Engine) {
        self.covered = sequence;
        if self.every > 0 && self.covered.saturating_sub(self.requested) >= self.every {
            self.write(engine, false);
        }
    }

    /// Called every heartbeat: a write that was due while another ran.
    fn owed(&mut self, engine: &Engine) {
        if self.owed {
            self.write(engine, false);
        }
    }

    /// Start writing the state now, unless no report came since the last snapshot
    /// (`always`: even then) or the state is not (yet) whole; while a write is under
    /// way, once it is over.
    fn write(&mut self, engine: &Engine, always: bool) {
        if let Some(task) = self.writing.take_if(|t| t.is_finished()) {
            if let Some(Ok(Ok(covered))) = task.now_or_never() {
                self.stored = self.stored.max(covered);
            }
        }
        self.owed = self.writing.is_some();
        if !engine.is_ready() || self.owed || (self.covered == self.stored && !always) {
            return;
        }
        self.requested = self.covered;
        // Copied here, encoded and stored beside the engine: the checks go on meanwhile.
        let state = engine.snapshot_state();
        let (snapshots, covered) = (self.snapshots.clone(), self.covered);
        self.writing = Some(tokio::spawn(async move {
            // Encoded on the blocking pool: the runtime has one thread, the checks'.
            let payload = tokio::task::spawn_blocking(move || serde_json::to_vec(&state))
                .await
                .context("encoding the state snapshot")?
                .context("encoding the state snapshot")?;
            match snapshots.write(covered, now_ns(), &payload).await {
                Ok(manifest) => {
                    tracing::info!(
                        exec_sequence = covered,
                        chunks = manifest.chunks.len(),
                        bytes = manifest.bytes,
                        "state snapshot stored"
                    );
                    Ok(covered)
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), exec_sequence = covered, "state snapshot not stored");
                    Err(e)
                }
            }
        }));
    }

    /// On a graceful stop: wait for a write under way, then store the final state, even
    /// when no report came since the last snapshot: ticks alone move circuit-breaker
    /// halts, the equity peak and the day's start, and checks the reservations, which a
    /// restart would otherwise not know.
    async fn finish(&mut self, engine: &Engine) {
        self.wait().await;
        self.write(engine, true);
        self.wait().await;
    }

    async fn wait(&mut self) {
        if let Some(task) = self.writing.take() {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(covered))) => self.stored = self.stored.max(covered),
                Ok(_) => {}
                Err(_) => tracing::warn!("the state snapshot did not finish in time"),
            }
        }
    }
}

/// A tick and the ticks already waiting behind it (up to `MAX_WAITING`), applied in
/// batches of one tick per symbol (ticks.rs): when risk keeps up there is nothing waiting
/// and each tick is applied alone, as it comes.
async fn on_ticks(
    first: async_nats::Message,
    ticks: &mut async_nats::Subscriber,
    engine: &mut Engine,
    publisher: &mut Publisher,
    errors: &ErrorSink,
) -> Result<()> {
    /// Ticks taken at one go before the other inputs (checks first) get their turn.
    const MAX_WAITING: usize = 4 * MAX_BATCH;
    let mut batch = TickBatch::default();
    let mut next = Some(first);
    let mut taken = 1;
    while let Some(message) = next.take() {
        match bus::decode::<Tick>(&message.payload) {
            Ok(tick) => {
                if !batch.takes(&tick) {
                    apply_ticks(&batch, engine, publisher, errors).await;
                    batch.clear();
                }
                batch.push(tick);
            }
            Err(e) => errors.report(&message.subject, &e, &message.payload).await,
        }
        if taken < MAX_WAITING {
            if let Some(waiting) = ticks.next().now_or_never() {
                next = Some(waiting.context("tick subscription closed")?);
                taken += 1;
            }
        }
    }
    apply_ticks(&batch, engine, publisher, errors).await;
    Ok(())
}

async fn apply_ticks(
    batch: &TickBatch,
    engine: &mut Engine,
    publisher: &mut Publisher,
    errors: &ErrorSink,
) {
    if batch.is_empty() {
        return;
    }
    let moved = engine.apply_ticks(batch.ticks(), steady_ns());
    for (tick, reason) in engine.take_refused() {
        let subject = subjects::tick(&tick.venue, &tick.symbol);
        errors.report(&subject, &reason, &bus::encode(&tick)).await;
    }
    let symbols: Vec<Symbol> = batch
        .ticks()
        .iter()
        .zip(moved)
        .filter(|(tick, moved)| *moved || publisher.lacks_mark(&tick.symbol))
        .map(|(tick, _)| tick.symbol.clone())
        .collect();
    if !symbols.is_empty() {
        publisher.marks_of_symbols(engine, &symbols).await;
    }
}

/// Applies one EXEC report; returns its symbol, the only one whose own verdict it can
/// change (None: no decodable report with a symbol, so publish as for anything).
async fn on_report(
    engine: &mut Engine,
    errors: &ErrorSink,
    subject: &str,
    payload: &[u8],
) -> Option<moonbus_common::Symbol> {
    let report = match bus::decode::<ExecutionReport>(payload) {
        Ok(report) => report,
        Err(e) => {
            errors.report(subject, &e, payload).await;
            return None;
        }
    };
    match engine.apply_report_at(&report, steady_ns()) {
        Ok(ReportEffect::Duplicate) => {
            tracing::debug!(subject, client_order_id = ?report.client_order_id, "duplicate report skipped");
        }
        Ok(ReportEffect::Applied) => metrics::global().reports_applied.inc(),
        Ok(ReportEffect::NoOrder) => {}
        Err(e) => errors.report(subject, &e, payload).await,
    }
    report.symbol
}

/// An empty body reads as `{}`, for the requests whose fields are all optional.
fn decode_or_default<T: DeserializeOwned + Default>(payload: &[u8]) -> Result<T, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    bus::decode(payload)
}

fn bad_request(request: &Request, error: String) -> Bytes {
    tracing::info!(subject = %request.message.subject, %error, "bad request");
    bus::error_reply("bad_request", error)
}

async fn respond(request: &Request, body: Bytes) {
    if let Err(e) = request.respond(Ok(body)).await {
        tracing::warn!(subject = %request.message.subject, error = %e, "could not reply");
    }
}
