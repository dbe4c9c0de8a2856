//! rust-market-data: the price engine. Turns the feeds of `[market_data] feeds`
//! (sim, replay, live connectors) into ticks, books, closed OHLCV bars and price
//! alerts on the bus, and answers price, history and monitor requests on the NATS
//! service API.
//!
//! Publishes `md.tick.<venue>.<symbol>`, `md.bar.<interval>.<venue>.<symbol>`,
//! `md.book.<venue>.<symbol>`, `md.book.all.<symbol>`, `md.alert.<symbol>`,
//! `md.arb.<symbol>` (cross-venue arbitrage, arb.rs) and `md.status.<venue>`; serves `md.api.price`, `.prices`, `.history`,
//! `.monitor.start/stop/status`, `.version` (see api.rs); Prometheus metrics on
//! `metrics_addr` (metrics.rs). Config: `[system].symbols` and `[market_data]`. On
//! start it reloads its bar history from the stream BARS (history.rs).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use moonbus_common::bus::ErrorSink;
use moonbus_common::config::SystemConfig;
use moonbus_common::service::{self, Base};
use moonbus_common::{subjects, Venue};
use tokio::sync::{mpsc, oneshot};

use rust_market_data::api::{self, Api};
use rust_market_data::config::{MarketDataConfig, Settings};
use rust_market_data::engine::{Engine, Publisher};
use rust_market_data::feed::{self, FeedKind, FeedSink};
use rust_market_data::market::Market;
use rust_market_data::sim::SimFeed;
use rust_market_data::{connectors, history, metrics, replay, SERVICE};

/// Queries waiting for the engine; a full queue makes requests wait (bounded by
/// the API's timeout), never grows memory.
const QUERY_QUEUE: usize = 256;
/// Shutdown: time to answer the requests in hand.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    service::exit(run().await)
}

async fn run() -> Result<()> {
    let (base, (settings, market_data)) = Base::start(SERVICE, |config| {
        let system: SystemConfig = config.section("system")?;
        let market_data: MarketDataConfig = config.section("market_data")?;
        Ok((Settings::from_config(&system, &market_data)?, market_data))
    })
    .await?;
    let metrics_addr = settings.metrics_addr.as_deref().unwrap_or("");
    base.serve_metrics(metrics_addr, || metrics::global().render())
        .await;
    let client = base.client.clone();
    let mut market = Market::new(settings.market.clone());
    restore_history(&client, &mut market).await;
    // The sim goes on from the last closes it left in the history (same seed, same
    // steps), not back from its configured start: no made-up jump across a restart.
    let mut sim_settings = settings.sim.clone();
    for (symbol, start) in &mut sim_settings.symbols {
        if let Some(close) = market.last_close(&Venue::sim(), symbol) {
            *start = close;
        }
    }
    let sim = settings
        .feeds
        .contains(&FeedKind::Sim)
        .then(|| SimFeed::new(&sim_settings, settings.sim_books));
    let symbols = settings.sim.symbols.len();
    let (sink, events) = feed::channel();
    for &kind in &settings.feeds {
        spawn_feed(kind, &settings, &market_data, &sink)?;
    }
    // The engine's queue ends when every feed has dropped its sink.
    drop(sink);
    let service = base
        .register(
            "prices, bars and history from the market feeds",
            subjects::MD_VERSION,
        )
        .await?;
    let requests = api::endpoints(&service).await?;

    let (query_tx, query_rx) = mpsc::channel(QUERY_QUEUE);
    let (stop_engine, engine_stopped) = oneshot::channel();
    let (stop_api, api_stopped) = oneshot::channel();
    let mut engine = tokio::spawn(
        Engine::new(
            Publisher::new(client.clone(), settings.publish_timeout),
            sim,
            market,
        )
        .run(query_rx, events, engine_stopped),
    );
    let api = Api::new(query_tx, ErrorSink::new(client.clone(), SERVICE));
    let mut api = tokio::spawn(api.serve(requests, api_stopped));
    tracing::info!(
        symbols,
        feeds = ?settings.feeds,
        tick_interval_ms = settings.sim.tick_interval.as_millis() as u64,
        history_bars = settings.market.history,
        "market-data running"
    );

    tokio::select! {
        () = service::shutdown_signal() => {}
        result = &mut engine => bail!("the engine stopped on its own: {result:?}"),
        result = &mut api => bail!("the API stopped on its own: {result:?}"),
    }

    // Stop taking requests (the endpoints unsubscribe) and answer the ones already
    // received: the API task ends when its streams run dry. Then stop the feed (the
    // engine answers queries until then) and get everything out of the client.
    service::stop_service(service).await;
    let api_result = match tokio::time::timeout(DRAIN_TIMEOUT, &mut api).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("requests still arriving after the endpoints stopped; stopping the API");
            let _ = stop_api.send(());
            api.await
        }
    };
    if let Err(e) = api_result {
        tracing::error!(error = %e, "API task failed");
    }
    let _ = stop_engine.send(());
    if let Err(e) = engine.await {
        tracing::error!(error = %e, "engine task failed");
    }
    base.stop(None).await
}

/// Takes back the bars stored in BARS (history.rs) before the API answers. Without
/// them market-data still runs, its history starting empty as before BARS existed:
/// prices matter more than history; the reason goes to the log and `errors.market-data`.
async fn restore_history(client: &async_nats::Client, market: &mut Market) {
    let errors = ErrorSink::new(client.clone(), SERVICE);
    let started = std::time::Instant::now();
    match history::reload(client, market).await {
        Ok(reloaded) => {
            tracing::info!(
                bars = reloaded.bars,
                series = market.len(),
                refused = reloaded.refused,
                ms = started.elapsed().as_millis() as u64,
                "bar history reloaded from stream {}",
                history::STREAM
            );
            if let Some((subject, reason)) = reloaded.first_refusal {
                let reason = format!(
                    "{} stored bar(s) not taken back into the history; the first: {reason}",
                    reloaded.refused
                );
                errors.report(&subject, &reason, b"").await;
            }
        }
        Err(e) => {
            let reason = format!("bar history not reloaded, starting without it: {e:#}");
            errors.report(history::STREAM, &reason, b"").await;
        }
    }
}

/// Starts one feed of `[market_data] feeds`: the one place the feeds are built.
/// Each feed task owns a clone of `sink` and ends when the engine drops the queue.
fn spawn_feed(
    kind: FeedKind,
    settings: &Settings,
    config: &MarketDataConfig,
    sink: &FeedSink,
) -> Result<()> {
    match kind {
        // The sim feed runs inside the engine task (see engine.rs).
        FeedKind::Sim => Ok(()),
        FeedKind::Replay => replay::spawn(settings.replay.clone(), sink.clone()),
        FeedKind::Binance
        | FeedKind::Aster
        | FeedKind::Coinbase
        | FeedKind::Hyperliquid
        | FeedKind::Birdeye => connectors::spawn(kind, config, sink.clone()),
    }
}
