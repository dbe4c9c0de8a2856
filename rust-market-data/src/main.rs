//! rust-market-data: the price engine. Turns a feed (today: the simulated `sim`
//! venue) into ticks and closed OHLCV bars on the bus, and answers price and
//! history questions on the NATS service API.
//!
//! Publishes `md.tick.<venue>.<symbol>`, `md.bar.<interval>.<venue>.<symbol>`
//! (1s, 1m) and `md.status.<venue>`; serves `md.api.price`, `md.api.prices`,
//! `md.api.history`, `md.api.version` (see api.rs). Config: `[system].symbols`
//! and `[market_data]` of moonbus.toml.

mod api;
mod bars;
mod config;
mod engine;
mod feed;
mod market;
mod sim;

use std::time::Duration;

use anyhow::{bail, Result};
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::config::{Config, SystemConfig};
use moonbus_common::telemetry;
use tokio::sync::{mpsc, oneshot};

use crate::api::Api;
use crate::config::{MarketDataConfig, SimSettings};
use crate::engine::Engine;
use crate::feed::{Feed, SimFeed};
use crate::market::Market;

/// NATS user and service name.
const SERVICE: &str = "market-data";
/// Queries waiting for the engine; a full queue makes requests wait (bounded by
/// the API's timeout), never grows memory.
const QUERY_QUEUE: usize = 256;
/// Shutdown: time to answer the requests in hand, then to flush the client.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    telemetry::init_logging();
    let config = Config::load()?;
    let system: SystemConfig = config.section("system")?;
    let market_data: MarketDataConfig = config.section("market_data")?;
    let settings = SimSettings::from_config(&system, &market_data)?;

    let client = bus::connect(SERVICE).await?;
    let feed = Feed::Sim(SimFeed::new(&settings));
    let market = Market::new(feed.venue(), feed.symbols())?;
    let service = bus::start_service(
        &client,
        SERVICE,
        "prices, bars and history from the market feeds",
    )
    .await?;
    let requests = api::endpoints(&service).await?;

    let (query_tx, query_rx) = mpsc::channel(QUERY_QUEUE);
    let (stop_engine, engine_stopped) = oneshot::channel();
    let (stop_api, api_stopped) = oneshot::channel();
    let symbols = feed.symbols().len();
    let mut engine =
        tokio::spawn(Engine::new(client.clone(), feed, market).run(query_rx, engine_stopped));
    let api = Api::new(query_tx, ErrorSink::new(client.clone(), SERVICE), SERVICE);
    let mut api = tokio::spawn(api.serve(requests, api_stopped));
    tracing::info!(
        symbols,
        tick_interval_ms = settings.tick_interval.as_millis() as u64,
        "market-data running"
    );

    tokio::select! {
        () = telemetry::shutdown_signal() => {}
        result = &mut engine => bail!("the engine stopped on its own: {result:?}"),
        result = &mut api => bail!("the API stopped on its own: {result:?}"),
    }

    // Stop taking requests (the endpoints unsubscribe) and answer the ones already
    // received: the API task ends when its streams run dry. Then stop the feed (the
    // engine answers queries until then) and get everything out of the client.
    if let Err(e) = service.stop().await {
        tracing::warn!(error = %e, "stopping the NATS service");
    }
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
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flush failed"),
        Err(_) => tracing::warn!("flush timed out; unsent messages are lost"),
    }
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "drain failed");
    }
    tracing::info!("market-data stopped");
    Ok(())
}
