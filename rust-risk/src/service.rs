//! The NATS side: one task owns the engine and `select!`s over the EXEC feed, ticks,
//! the service endpoints and a heartbeat, so every check sees every change before it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::service::Request;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::service::{self as skeleton, Base};
use moonbus_common::streams;
use moonbus_common::{
    now_ns, subjects, ExecutionReport, KillSwitchRequest, KillSwitchState, LimitsReply,
    LimitsRequest, PositionsReply, PositionsRequest, RiskCheckRequest, Tick, Venue,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::access;
use crate::config::Settings;
use crate::engine::{Engine, ReportEffect};
use crate::exec_feed::{self, FeedEvent};
use crate::flatten;
use crate::limits::LossLatch;
use crate::metrics;
use crate::publish::Publisher;
use crate::store::{self, Store};

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

    let (feed_tx, mut feed) = mpsc::channel(1024);
    let exec_consumer = streams::open_consumer(&exec_stream, exec_feed::CONSUMER, |_| {}).await?;
    let feed_task = tokio::spawn(exec_feed::run(client.clone(), exec_consumer, feed_tx));
    let mut heartbeat = tokio::time::interval(Duration::from_millis(settings.heartbeat_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
    let mut engine = Engine::new(settings, base.started_ts);
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
                Some(FeedEvent::Report { subject, payload }) => {
                    on_report(&mut engine, &errors, &subject, &payload).await;
                    publisher.changes(&engine).await;
                }
                Some(FeedEvent::CaughtUp) => {
                    engine.mark_ready(now_ns());
                    let account = engine.account(now_ns());
                    tracing::info!(
                        positions = account.open_positions, equity = %account.equity,
                        realized_pnl = %account.realized_pnl, "ready"
                    );
                    publisher.everything(&engine).await;
                }
                None => bail!("the EXEC feed stopped"),
            },
            request = checks.next() => {
                let request = request.context("check endpoint closed")?;
                let reply = match bus::decode::<RiskCheckRequest>(&request.message.payload) {
                    Ok(check) => {
                        let started = Instant::now();
                        let result = engine.check(&check, now_ns());
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
                    Ok(change) => match limits_request(&mut engine, &caller, change) {
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
                    // Half-rebuilt positions would be wrong numbers, not a view.
                    Ok(_) if !engine.is_ready() => {
                        bus::error_reply("not_ready", "risk is still rebuilding its state from the EXEC stream")
                    }
                    Ok(query) => bus::encode(&PositionsReply {
                        positions: engine.positions(query.symbol.as_ref()),
                        account: engine.account(now_ns()),
                    }),
                    Err(e) => bad_request(&request, e),
                };
                respond(&request, reply).await;
            }
            message = ticks.next() => {
                let message = message.context("tick subscription closed")?;
                match bus::decode::<Tick>(&message.payload) {
                    Ok(tick) => {
                        if engine.apply_tick(&tick, now_ns()) || publisher.lacks_mark(&tick.symbol) {
                            publisher.changes(&engine).await;
                        }
                    }
                    Err(e) => errors.report(&message.subject, &e, &message.payload).await,
                }
            }
            _ = heartbeat.tick() => {
                engine.heartbeat(now_ns());
                publisher.everything(&engine).await;
            }
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
    // The last KV values are written before the connection closes.
    drop((publisher, io));
    kv_writer.finish().await;
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
fn limits_request(
    engine: &mut Engine,
    caller: &str,
    mut change: LimitsRequest,
) -> Result<(), (&'static str, String)> {
    access::limits(caller, change.set.is_some() || change.release_loss_latch)
        .map_err(|reason| ("forbidden", reason))?;
    change.actor = access::actor(caller, &change.actor);
    on_limits(engine, &change).map_err(|reason| ("bad_request", reason))
}

/// Change limits (all or nothing) and / or release the loss latch, in that order, so
/// one request can raise a limit and release the latch it tripped.
fn on_limits(engine: &mut Engine, change: &LimitsRequest) -> Result<(), String> {
    if let Some(patch) = &change.set {
        engine.set_limits(patch)?;
        tracing::warn!(actor = %change.actor, reason = %change.reason, "limits changed");
    }
    if change.release_loss_latch {
        let released = engine.release_loss_latch(now_ns());
        tracing::warn!(actor = %change.actor, reason = %change.reason, ?released, "loss latch released");
    }
    Ok(())
}

async fn on_report(engine: &mut Engine, errors: &ErrorSink, subject: &str, payload: &[u8]) {
    let report = match bus::decode::<ExecutionReport>(payload) {
        Ok(report) => report,
        Err(e) => return errors.report(subject, &e, payload).await,
    };
    match engine.apply_report(&report) {
        Ok(ReportEffect::Duplicate) => {
            tracing::debug!(subject, client_order_id = ?report.client_order_id, "duplicate report skipped");
        }
        Ok(ReportEffect::Applied) => metrics::global().reports_applied.inc(),
        Ok(ReportEffect::NoOrder) => {}
        Err(e) => errors.report(subject, &e, payload).await,
    }
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
