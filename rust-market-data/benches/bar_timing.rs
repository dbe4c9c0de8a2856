//! Driver of bench/bar_timing.py (not part of `cargo test`): how late closed bars reach a
//! subscriber after their boundary, printed as one JSON object.
//!
//!   bar_timing <nats-url> <symbols> <seconds>
//!
//! The real engine (engine.rs: the bar clock, market.rs, sim.rs) runs with the sim feed
//! at the default pace (each symbol ticks every 200 ms) and `bar_intervals = ["1s"]`; a
//! second client subscribed to `md.bar.>` takes `received - end_ts` for every bar
//! (wall clock, the same host), and the engine's own `md_bar_lateness_seconds` (boundary
//! -> the bars closed there handed to the client; bucket upper bounds). Baselines in the same process and run, on the same
//! boundaries: tokio's `sleep_until` the boundary (the timer's own lateness), the old bar
//! timer (a sleep to the boundary + 1 ms margin), and the bus: a probe message published
//! on the engine's client mid-second, send -> received by the same subscriber's client, and
//! one published at each boundary by a bar clock of its own (received - boundary).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::config::{Config, SystemConfig};
use moonbus_common::now_ns;
use rust_market_data::config::{MarketDataConfig, Settings};
use rust_market_data::engine::{BarClock, Engine, Publisher};
use rust_market_data::feed;
use rust_market_data::market::Market;
use rust_market_data::metrics::{self, LATENCY_BOUNDS_NS};
use rust_market_data::sim::SimFeed;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, sleep_until, Instant};

const SEC: u64 = 1_000_000_000;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, symbols, seconds] = args.as_slice() else {
        bail!("usage: bar_timing <nats-url> <symbols> <seconds>");
    };
    let symbols: usize = symbols.parse().context("symbols")?;
    let seconds: u64 = seconds.parse().context("seconds")?;
    let names: Vec<String> = (0..symbols).map(|i| format!("S{i:05}-USD")).collect();
    let text = format!(
        "[system]\nsymbols = {names:?}\n[market_data]\nbar_intervals = [\"1s\"]\nmetrics_addr = \"\"\n"
    );
    let config = Config::from_parts(&text, std::iter::empty())?;
    let system: SystemConfig = config.section("system")?;
    let md: MarketDataConfig = config.section("market_data")?;
    let settings = Settings::from_config(&system, &md)?;

    let client = async_nats::connect(url.as_str()).await?;
    let listener = async_nats::connect(url.as_str()).await?;
    let mut bars = listener.subscribe("md.bar.>").await?;
    listener.flush().await?;
    let (sink, events) = feed::channel();
    drop(sink);
    let engine = Engine::new(
        Publisher::new(client.clone(), settings.publish_timeout),
        Some(SimFeed::new(&settings.sim, settings.sim_books)),
        Market::new(settings.market.clone()),
    );
    let (_queries, query_rx) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel();
    let running = tokio::spawn(engine.run(query_rx, events, stopped));

    // The first two boundaries are warm-up (the first bar of each symbol is partial).
    let first = next_second(now_ns()) + 2 * SEC;
    let last = first + seconds * SEC;
    let sleep_until_boundary = tokio::spawn(timer_lateness(first, last, Duration::ZERO));
    let old_timer = tokio::spawn(timer_lateness(first, last, Duration::from_millis(1)));
    let bus = tokio::spawn(probes(client.clone(), listener.clone(), first, last));
    let bus_at_boundaries = tokio::spawn(boundary_probes(
        client.clone(),
        listener.clone(),
        first,
        last,
    ));
    let engine0 = metrics::global().bar_lateness.snapshot();
    let mut lateness = Vec::new();
    // The first bar of each boundary to arrive.
    let mut firsts: Vec<(u64, u64)> = Vec::new();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(5), bars.next())
        .await
        .context("no bar for 5 s")?
    {
        let received = now_ns();
        let bar: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let end = bar["end_ts"].as_u64().context("a bar's end_ts")?;
        if end >= first && end <= last {
            lateness.push(received.saturating_sub(end));
            if firsts.last().is_none_or(|(e, _)| *e != end) {
                firsts.push((end, received.saturating_sub(end)));
            }
        }
        if end > last {
            break;
        }
    }
    let engine1 = metrics::global().bar_lateness.snapshot();
    let _ = stop.send(());
    running.await?;
    let buckets: Vec<u64> = engine1.iter().zip(&engine0).map(|(a, b)| a - b).collect();
    println!(
        "{}",
        json!({
            "symbols": symbols,
            "boundaries": seconds,
            "bar_lateness_us": summary(lateness),
            "first_bar_of_each_boundary_lateness_us": summary(firsts.iter().map(|(_, l)| *l).collect()),
            "engine_bar_lateness_us_at_most": bucket_percentiles(&buckets),
            "baseline_tokio_sleep_until_boundary_us": summary(sleep_until_boundary.await?),
            "baseline_old_bar_timer_us": summary(old_timer.await?),
            "baseline_bus_publish_to_subscriber_us": summary(bus.await??),
            "baseline_bus_at_boundaries_us": summary(bus_at_boundaries.await??),
        })
    );
    Ok(())
}

fn next_second(now: u64) -> u64 {
    now - now % SEC + SEC
}

/// How late tokio's timer wakes for each boundary in `[first, last]` (aimed at the
/// boundary + `margin`, as the old bar timer did with 1 ms), in ns after the boundary.
async fn timer_lateness(first: u64, last: u64, margin: Duration) -> Vec<u64> {
    let mut out = Vec::new();
    let mut boundary = first;
    while boundary <= last {
        let now = now_ns();
        if boundary > now {
            sleep_until(Instant::now() + Duration::from_nanos(boundary - now) + margin).await;
            out.push(now_ns() - boundary);
        }
        boundary += SEC;
    }
    out
}

/// The bus alone: once a second at mid-second (away from the boundaries), a probe
/// published by `client` (the engine's) carrying its send time, taken by a subscriber on
/// `listener`: send -> received, the path a bar takes after the engine hands it over.
async fn probes(
    client: async_nats::Client,
    listener: async_nats::Client,
    first: u64,
    last: u64,
) -> Result<Vec<u64>> {
    let mut inbox = listener.subscribe("bench.probe").await?;
    listener.flush().await?;
    let mut out = Vec::new();
    let mut at = first + SEC / 2;
    while at < last {
        let now = now_ns();
        if at > now {
            sleep(Duration::from_nanos(at - now)).await;
            client
                .publish("bench.probe", now_ns().to_string().into())
                .await?;
            let message = tokio::time::timeout(Duration::from_secs(5), inbox.next())
                .await
                .context("probe lost")?
                .context("probe subscription closed")?;
            let sent: u64 = std::str::from_utf8(&message.payload)?.parse()?;
            out.push(now_ns().saturating_sub(sent));
        }
        at += SEC;
    }
    Ok(out)
}

/// The bus at the boundaries: a probe published on the engine's client when a bar clock
/// of its own (the engine's kind) reaches each boundary, `received - boundary`; what the
/// bus adds at the moment bars go out, without the engine's work.
async fn boundary_probes(
    client: async_nats::Client,
    listener: async_nats::Client,
    first: u64,
    last: u64,
) -> Result<Vec<u64>> {
    let mut inbox = listener.subscribe("bench.boundary").await?;
    listener.flush().await?;
    let mut clock = BarClock::new(now_ns());
    let mut out = Vec::new();
    loop {
        let boundary = clock.boundary().await;
        if boundary > last {
            return Ok(out);
        }
        client.publish("bench.boundary", Bytes::new()).await?;
        tokio::time::timeout(Duration::from_secs(5), inbox.next())
            .await
            .context("probe lost")?
            .context("probe subscription closed")?;
        if boundary >= first {
            out.push(now_ns() - boundary);
        }
    }
}

/// Nearest-rank percentiles in µs (0.1 µs).
fn summary(mut samples: Vec<u64>) -> serde_json::Value {
    samples.sort_unstable();
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    let at = |p: f64| {
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        us(samples[rank.clamp(1, samples.len()) - 1])
    };
    if samples.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": samples.len(),
        "min": us(samples[0]),
        "p50": at(50.0),
        "p90": at(90.0),
        "p99": at(99.0),
        "max": us(samples[samples.len() - 1]),
    })
}

/// Nearest-rank percentiles from histogram bucket counts: the upper bound of the bucket
/// the rank falls in (so "p99 <= x µs").
fn bucket_percentiles(buckets: &[u64]) -> serde_json::Value {
    let total: u64 = buckets.iter().sum();
    let mut out = serde_json::Map::new();
    out.insert("count".into(), json!(total));
    for p in [50.0, 90.0, 99.0] {
        let rank = ((p / 100.0) * total as f64).ceil() as u64;
        let mut seen = 0;
        let bound = buckets.iter().enumerate().find_map(|(i, n)| {
            seen += n;
            (seen >= rank.max(1)).then(|| {
                LATENCY_BOUNDS_NS
                    .get(i)
                    .map_or(f64::INFINITY, |ns| *ns as f64 / 1000.0)
            })
        });
        out.insert(format!("p{p}"), json!(bound));
    }
    serde_json::Value::Object(out)
}
