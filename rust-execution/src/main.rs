//! rust-execution: order intake, pre-trade risk check, venue (paper), execution reports.
//!
//! Consumes `orders.submit.>` / `orders.cancel.>` from the ORDERS stream (durable pull
//! consumer `execution`), asks `risk.api.check` before routing, fills on the paper venue
//! against `md.book.>` / `md.tick.>`, and records every outcome on `exec.report.<symbol>`
//! (EXEC stream) before acking the order; orders of different symbols are pipelined
//! (engine.rs). Answers `exec.api.version` on the NATS service API.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use moonbus_common::bus::ErrorSink;
use moonbus_common::leader::{self, Role};
use moonbus_common::service::{self, Base};
use moonbus_common::streams;
use moonbus_common::{subjects, Venue as VenueName};

use rust_execution::config::ExecutionConfig;
use rust_execution::engine::{Bus, Engine};
use rust_execution::live::router::Router;
use rust_execution::paper::PaperVenue;
use rust_execution::protect::Protector;
use rust_execution::reports::Recorder;
use rust_execution::risk::RiskClient;
use rust_execution::venue::Market;
use rust_execution::{deadletter, metrics, snapshot};

const SERVICE: &str = "execution";
/// The durable ORDERS consumer; its position survives restarts.
const CONSUMER: &str = "execution";
/// Every book: the paper venue walks them (`md.book.<venue>.<symbol>`).
const ALL_BOOKS: &str = "md.book.>";

// One thread: the work is a few microseconds per order between network waits, and on a
// small machine cross-thread wake-ups cost more than they give (bench/order_path.py).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    service::exit(run().await)
}

async fn run() -> Result<()> {
    let (base, cfg) = Base::start(SERVICE, |config| {
        let cfg: ExecutionConfig = config.section("execution")?;
        cfg.validate()?;
        Ok(cfg)
    })
    .await?;
    let client = base.client.clone();
    let js = jetstream::new(client.clone());
    // With failover, a standby waits here: it takes no order (never pulls ORDERS) until
    // it holds the lease, then rebuilds its ledger from the snapshot + EXEC like any start,
    // so an order the dead instance decided is never decided again.
    let role = match leader::take_role(&js, SERVICE, cfg.lease()?.as_ref()).await? {
        Role::Stopped => return base.stop(None).await,
        role => role,
    };
    base.serve_metrics(&cfg.metrics_addr, || metrics::global().render())
        .await;
    // Provisioned as proto/nats/jetstream.json says (execution may not create them).
    streams::open_stream(&js, subjects::EXEC_STREAM).await?;
    let orders_stream = streams::open_stream(&js, subjects::ORDERS_STREAM).await?;
    streams::open_stream(&js, deadletter::STREAM).await?;
    streams::open_stream(&js, rust_execution::protect::KV_STREAM).await?;

    // The latest snapshot plus the EXEC tail; refuses to start if reports were lost.
    let ledger = snapshot::rebuild(&client).await?;
    let ticks = client
        .subscribe(subjects::ALL_TICKS)
        .await
        .context("subscribing to ticks")?;
    let books = client
        .subscribe(ALL_BOOKS)
        .await
        .context("subscribing to books")?;
    // Before the scan of DEADLETTER, so no advisory falls between the two.
    let dead_letters = client
        .subscribe(deadletter::ADVISORY_SUBJECT)
        .await
        .context("subscribing to the dead-letter advisories")?;
    let venues = cfg
        .paper_venues()
        .iter()
        .map(|v| VenueName::from_str(v))
        .collect::<Result<Vec<_>, _>>()?;
    let bus = Bus {
        risk: RiskClient::new(client.clone(), cfg.risk_timeout()),
        recorder: Recorder::new(js.clone()),
        errors: ErrorSink::new(client.clone(), SERVICE),
        orders_stream: orders_stream.clone(),
        ticks,
        books,
        dead_letters,
        backoff: cfg.backoff(),
        snapshots: snapshot::Snapshotter::new(client.clone(), cfg.snapshot_interval_ms),
        kill_switch: client
            .subscribe(subjects::RISK_EVENTS)
            .await
            .context("subscribing to the kill switch events")?,
        live_poll: Duration::from_millis(cfg.live_poll_ms),
        reconcile_interval: Duration::from_millis(cfg.reconcile_interval_ms),
        client: client.clone(),
        protect: Protector::new(
            js.clone(),
            client.clone(),
            ErrorSink::new(client.clone(), SERVICE),
            cfg.backoff(),
        ),
    };
    // Real venues: keys from the environment, rules and clock read, private streams up,
    // before any order is taken (a venue that cannot start stops the service: fail closed).
    let mut router = Router::new(PaperVenue::new(
        venues,
        cfg.fee_rate()?,
        cfg.slippage_rate()?,
    ));
    for (name, venue) in cfg.real_venues() {
        router
            .add_live(VenueName::from_str(name)?, venue.clone())
            .await?;
    }
    let mut engine = Engine::new(
        router,
        Market::new(cfg.book_max_age(), cfg.tick_max_age()),
        ledger,
        bus,
        cfg.latency(),
    );
    engine.set_algo_quantity_decimals(cfg.algo_quantity_decimals);
    engine.restore().await?;

    let consumer = streams::open_consumer(&orders_stream, CONSUMER, |c| {
        c.ack_wait = cfg.ack_wait();
        c.max_ack_pending = cfg.max_in_flight as i64;
    })
    .await?;
    cfg.check_consumer(&consumer.cached_info().config)?;
    let max_deliver = consumer.cached_info().config.max_deliver;
    tracing::info!(
        max_deliver,
        until_dead_letter = ?cfg.backoff().until_dead_letter(max_deliver),
        "an order whose outcome cannot be stored is dead-lettered after this"
    );
    engine
        .settle_dead_letters(deadletter::stored(&client).await?)
        .await;
    let orders = consumer
        .stream()
        .max_messages_per_batch(cfg.max_in_flight as usize)
        .messages()
        .await
        .context("reading the ORDERS consumer")?;

    let api = base
        .register(
            "order intake, pre-trade check, paper venue, reports",
            subjects::EXEC_VERSION,
        )
        .await?;
    tracing::info!(venues = ?cfg.venues, max_in_flight = cfg.max_in_flight, "execution ready");

    let (market_data, drained) = engine
        .run(orders, cfg.market_warmup(), service::shutdown_signal())
        .await?;

    // Off the service API first, so the next active is the only one there. Every order
    // taken is settled: a standby may take over at once. Else a job may still store a
    // report; the lease is kept until the process is gone (the standby waits a ttl).
    service::stop_service(api).await;
    if drained {
        leader::release(role).await;
    }
    base.stop(None).await?;
    // The drain closes the subscriptions once the server confirmed it; wait for that.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        for mut subscription in market_data {
            while subscription.next().await.is_some() {}
        }
    });
    if drained.await.is_err() {
        tracing::warn!("NATS drain did not finish within 5 s");
    }
    Ok(())
}
