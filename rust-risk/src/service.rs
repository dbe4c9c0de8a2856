//! The NATS side: one task owns the engine and `select!`s over the EXEC feed, ticks,
//! the service endpoints and a heartbeat, so every check sees every change before it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_nats::service::Request;
use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::{
    now_ns, subjects, telemetry, AccountState, ExecutionReport, KillSwitchRequest, LimitsReply,
    LimitsRequest, PositionsReply, PositionsRequest, RiskCheckRequest, Symbol, Tick, Verdict,
    VersionReply,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::engine::{Engine, ReportEffect};
use crate::exec_feed::{self, FeedEvent};

pub const SERVICE: &str = "risk";

pub async fn run(settings: Settings, client: Client) -> Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    // Risk reads EXEC only; ORDERS belongs to execution and the agents.
    bus::ensure_stream(&js, bus::exec_stream_config()).await?;
    let errors = ErrorSink::new(client.clone(), SERVICE);
    let mut ticks = client
        .subscribe(subjects::ALL_TICKS)
        .await
        .context("subscribing to ticks")?;
    let service = bus::start_service(
        &client,
        SERVICE,
        "positions, PnL, limits, kill switch, pre-trade checks",
    )
    .await?;
    let endpoint = |name: &'static str, subject: &'static str| {
        let builder = service.endpoint_builder().name(name);
        async move {
            builder
                .add(subject)
                .await
                .map_err(|e| anyhow::anyhow!("adding endpoint {subject}: {e}"))
        }
    };
    let mut checks = endpoint("check", subjects::RISK_CHECK).await?;
    let mut killswitch = endpoint("killswitch", subjects::RISK_KILLSWITCH).await?;
    let mut limits = endpoint("limits", subjects::RISK_LIMITS).await?;
    let mut positions = endpoint("positions", subjects::RISK_POSITIONS).await?;
    let mut version = endpoint("version", subjects::RISK_VERSION).await?;

    let (feed_tx, mut feed) = mpsc::channel(1024);
    let feed_task = tokio::spawn(exec_feed::run(js, feed_tx));
    let mut heartbeat = tokio::time::interval(Duration::from_millis(settings.heartbeat_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started_ts = now_ns();
    let mut engine = Engine::new(settings, started_ts);
    let mut publisher = Publisher::new(client.clone());
    let shutdown = telemetry::shutdown_signal();
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
                    Ok(check) => bus::encode(&engine.check(&check, now_ns())),
                    Err(e) => bad_request(&request, e),
                };
                respond(&request, reply).await;
            }
            request = killswitch.next() => {
                let request = request.context("killswitch endpoint closed")?;
                let reply = match bus::decode::<KillSwitchRequest>(&request.message.payload) {
                    Ok(change) => match engine.kill_switch(&change, now_ns()) {
                        Ok((state, changed)) => {
                            let body = bus::encode(&state);
                            if changed {
                                publisher.publish(subjects::RISK_EVENTS.to_string(), body.clone()).await;
                                publisher.changes(&engine).await;
                            }
                            body
                        }
                        Err(refusal) => bus::error_reply(refusal.code, refusal.reason),
                    },
                    Err(e) => bad_request(&request, e),
                };
                respond(&request, reply).await;
            }
            request = limits.next() => {
                let request = request.context("limits endpoint closed")?;
                let reply = match decode_or_default::<LimitsRequest>(&request.message.payload) {
                    Ok(LimitsRequest { set: Some(patch) }) => match engine.set_limits(&patch) {
                        Ok(()) => {
                            publisher.changes(&engine).await;
                            bus::encode(&LimitsReply { limits: engine.limits() })
                        }
                        Err(e) => bad_request(&request, e),
                    },
                    Ok(LimitsRequest { set: None }) => bus::encode(&LimitsReply { limits: engine.limits() }),
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
            request = version.next() => {
                let request = request.context("version endpoint closed")?;
                let reply = VersionReply {
                    service: SERVICE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    started_ts,
                };
                respond(&request, bus::encode(&reply)).await;
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
    for endpoint in [
        &mut checks,
        &mut killswitch,
        &mut limits,
        &mut positions,
        &mut version,
    ] {
        if let Err(e) = endpoint.stop().await {
            tracing::warn!(error = %e, "stopping an endpoint");
        }
    }
    if let Err(e) = service.stop().await {
        tracing::warn!(error = %e, "stopping the service");
    }
    if engine.is_ready() {
        publisher.everything(&engine).await;
    }
    client
        .drain()
        .await
        .context("draining the NATS connection")?;
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
        Ok(_) => {}
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

/// Publishes `risk.account` and `risk.verdict.<symbol>` when they change (timestamps
/// aside) and all of them on every heartbeat. Nothing on change before the rebuild
/// is done: half-rebuilt numbers would flap; the heartbeat says "not_ready".
struct Publisher {
    client: Client,
    account: Option<AccountState>,
    verdicts: HashMap<Symbol, Verdict>,
}

impl Publisher {
    fn new(client: Client) -> Self {
        Self {
            client,
            account: None,
            verdicts: HashMap::new(),
        }
    }

    /// A tick for a symbol whose last verdict said there was no market data.
    fn lacks_mark(&self, symbol: &Symbol) -> bool {
        self.verdicts.get(symbol).is_some_and(|v| {
            v.reasons
                .iter()
                .any(|r| r == "no_market_data" || r == "stale_market_data")
        })
    }

    async fn changes(&mut self, engine: &Engine) {
        if engine.is_ready() {
            self.send(engine, false).await;
        }
    }

    async fn everything(&mut self, engine: &Engine) {
        self.send(engine, true).await;
    }

    async fn send(&mut self, engine: &Engine, all: bool) {
        let now = now_ns();
        let account = engine.account(now);
        if all
            || self
                .account
                .as_ref()
                .is_none_or(|last| !same_account(last, &account))
        {
            self.publish(subjects::ACCOUNT.to_string(), bus::encode(&account))
                .await;
            self.account = Some(account);
        }
        for verdict in engine.verdicts(now) {
            let last = self.verdicts.get(&verdict.symbol);
            let changed = last.is_none_or(|last| !same_verdict(last, &verdict));
            if last
                .is_none_or(|last| last.state != verdict.state || last.reasons != verdict.reasons)
            {
                tracing::info!(symbol = %verdict.symbol, state = %verdict.state, reasons = ?verdict.reasons, "verdict");
            }
            if all || changed {
                self.publish(subjects::verdict(&verdict.symbol), bus::encode(&verdict))
                    .await;
                self.verdicts.insert(verdict.symbol.clone(), verdict);
            }
        }
    }

    async fn publish(&self, subject: String, body: Bytes) {
        if let Err(e) = self.client.publish(subject.clone(), body).await {
            tracing::warn!(subject, error = %e, "could not publish");
        }
    }
}

fn same_account(a: &AccountState, b: &AccountState) -> bool {
    AccountState { ts: 0, ..a.clone() } == AccountState { ts: 0, ..b.clone() }
}

fn same_verdict(a: &Verdict, b: &Verdict) -> bool {
    Verdict { ts: 0, ..a.clone() } == Verdict { ts: 0, ..b.clone() }
}
