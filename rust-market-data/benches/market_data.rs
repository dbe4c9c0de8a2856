//! Driver of bench/market_data.py (not part of `cargo test`): one measurement per
//! run, printed as one JSON object.
//!
//!   market_data raw    <nats-url> <symbols> <seconds>
//!   market_data sim    <nats-url> <symbols> <seconds>
//!   market_data replay <nats-url> <symbols> <seconds> <file.csv>
//!
//! - `raw`: a bare async-nats publisher, `client.publish(subject, payload)` in a
//!   loop over pre-encoded payloads of the sim's ticks (the same subjects and
//!   bytes market-data publishes): the ceiling of this machine, client and server.
//! - `sim`: the real engine (engine.rs, market.rs, sim.rs: bars, books, alerts and
//!   metrics all on) with the sim feed asked for far more ticks than it can publish,
//!   so it runs flat out.
//! - `replay`: the real engine with the replay feed reading `file.csv` (written
//!   by `replay` first if missing) as fast as possible, looping.
//!
//! `MD_BENCH_EXTRA` adds `[market_data]` lines (e.g. `book_depth = 0`) to see what a
//! feature costs; bench/market_data.py runs the default config. `max_series` is raised
//! to the number of symbols where that is above its default (20,000): a deployment of
//! 100,000 symbols would configure it so.
//!
//! `MD_BENCH_FULL_HISTORY=1` (bench/scaling.py): before the engine starts, every series'
//! history of every interval is filled to its length (`history_len`, capped by
//! `history_budget_mb`) through `Market::restore`, the path a restart's reload of the BARS
//! stream takes, with closed bars ending at the current interval's start. The RSS then is
//! that of the steady state (every history full), which the sim would otherwise reach
//! only after `history` hours of 1 h bars.
//!
//! Each run warms up for one second, then counts for `seconds`: ticks published
//! per second, the engine's tick-in -> handed-to-the-client latency histogram
//! (percentiles are the upper bound of the bucket they fall in), and the RSS.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use moonbus_common::config::{Config, SystemConfig};
use rust_market_data::config::{MarketDataConfig, Settings};
use rust_market_data::encode::TickEncoder;
use rust_market_data::engine::{Engine, Publisher};
use rust_market_data::feed;
use rust_market_data::market::Market;
use rust_market_data::metrics::{self, LATENCY_BOUNDS_NS};
use rust_market_data::replay;
use rust_market_data::sim::SimFeed;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

const WARMUP: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [mode, url, symbols, seconds, rest @ ..] = args.as_slice() else {
        bail!("usage: market_data raw|sim|replay <nats-url> <symbols> <seconds> [file.csv]");
    };
    let symbols: usize = symbols.parse().context("symbols")?;
    let seconds: u64 = seconds.parse().context("seconds")?;
    let window = Duration::from_secs(seconds);
    let result = match (mode.as_str(), rest) {
        ("raw", []) => raw(url, symbols, window).await?,
        ("sim", []) => engine(url, symbols, window, None).await?,
        ("replay", [file]) => engine(url, symbols, window, Some(file)).await?,
        _ => bail!("unknown mode {mode} (or missing file)"),
    };
    println!("{result}");
    Ok(())
}

/// The settings market-data would run with for `symbols` symbols, sim ticking as
/// fast as asked (1 ms per symbol: 10,000 symbols = 10 M ticks/s asked).
fn settings(symbols: usize, replay_file: Option<&String>) -> Result<Settings> {
    let names: Vec<String> = (0..symbols).map(symbol).collect();
    let mut text = format!(
        "[system]\nsymbols = {names:?}\n[market_data]\ntick_interval_ms = 1\nmetrics_addr = \"\"\n"
    );
    if symbols > 20_000 {
        let _ = writeln!(text, "max_series = {symbols}");
    }
    // Extra `[market_data]` keys, to see what each feature costs (bench/market_data.py
    // runs the default config).
    if let Ok(extra) = std::env::var("MD_BENCH_EXTRA") {
        let _ = writeln!(text, "{extra}");
    }
    if let Some(file) = replay_file {
        let _ = write!(text, "feeds = [\"replay\"]\nreplay_files = [{file:?}]\nreplay_speed = 0.0\nreplay_loop = true\n");
    }
    let config = Config::from_parts(&text, std::iter::empty())?;
    let system: SystemConfig = config.section("system")?;
    let md: MarketDataConfig = config.section("market_data")?;
    Settings::from_config(&system, &md)
}

fn symbol(i: usize) -> String {
    format!("S{i:05}-USD")
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

async fn raw(url: &str, symbols: usize, window: Duration) -> Result<serde_json::Value> {
    // The sim's own ticks, encoded once: 4 per symbol, then published in a loop.
    let settings = settings(symbols, None)?;
    let mut sim = SimFeed::new(&settings.sim, None);
    let mut encoder = TickEncoder::default();
    let prefixes: Vec<Box<[u8]>> = sim
        .symbols()
        .iter()
        .map(|s| rust_market_data::encode::tick_prefix(sim.venue(), s))
        .collect();
    let subjects: Vec<async_nats::Subject> = sim
        .symbols()
        .iter()
        .map(|s| moonbus_common::subjects::tick(sim.venue(), s).into())
        .collect();
    let mut messages = Vec::with_capacity(symbols * 4);
    while messages.len() < symbols * 4 {
        if let Some((i, tick, _)) = sim.tick(moonbus_common::now_ns()) {
            messages.push((subjects[i].clone(), encoder.encode(&prefixes[i], &tick)));
        }
    }
    let client = connect(url).await?;
    let mut count = 0u64;
    let mut counted = 0u64;
    let start = Instant::now();
    let mut measuring: Option<Instant> = None;
    'run: loop {
        for (subject, payload) in &messages {
            client.publish(subject.clone(), payload.clone()).await?;
            count += 1;
            if count.is_multiple_of(1024) {
                match measuring {
                    None if start.elapsed() >= WARMUP => {
                        measuring = Some(Instant::now());
                        counted = count;
                    }
                    Some(t) if t.elapsed() >= window => break 'run,
                    _ => {}
                }
            }
        }
    }
    client.flush().await?;
    let elapsed = measuring.map_or(window, |t| t.elapsed()).as_secs_f64();
    Ok(json!({
        "mode": "raw",
        "symbols": symbols,
        "ticks_per_s": (count - counted) as f64 / elapsed,
        "bytes_per_tick": messages.iter().map(|(_, p)| p.len()).sum::<usize>() / messages.len(),
        "rss_mb": rss_mb(),
    }))
}

async fn engine(
    url: &str,
    symbols: usize,
    window: Duration,
    replay_file: Option<&String>,
) -> Result<serde_json::Value> {
    if let Some(file) = replay_file {
        if !std::path::Path::new(file).exists() {
            write_replay_file(file, symbols)?;
        }
    }
    let settings = settings(symbols, replay_file)?;
    let client = connect(url).await?;
    let (sink, events) = feed::channel();
    let (venue, sim) = match replay_file {
        Some(_) => {
            replay::spawn(settings.replay.clone(), sink)?;
            ("replay", None)
        }
        None => {
            drop(sink);
            ("sim", Some(SimFeed::new(&settings.sim, settings.sim_books)))
        }
    };
    let mut market = Market::new(settings.market.clone());
    let full_history = std::env::var("MD_BENCH_FULL_HISTORY").is_ok_and(|v| v == "1");
    let prefilled = if full_history {
        let names: Vec<String> = (0..symbols).map(symbol).collect();
        fill_history(&mut market, &settings, venue, &names)?
    } else {
        0
    };
    let engine = Engine::new(
        Publisher::new(client.clone(), settings.publish_timeout),
        sim,
        market,
    );
    let (_queries, query_rx) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel();
    let running = tokio::spawn(engine.run(query_rx, events, stopped));

    tokio::time::sleep(WARMUP).await;
    let counters = metrics::venue(venue);
    let latency = &metrics::global().publish_latency;
    let (ticks0, latency0, t0) = (counters.ticks_out.get(), latency.snapshot(), Instant::now());
    tokio::time::sleep(window).await;
    let (ticks1, latency1, elapsed) = (counters.ticks_out.get(), latency.snapshot(), t0.elapsed());
    let rss = rss_mb();
    let _ = stop.send(());
    running.await?;
    client.flush().await?;
    let buckets: Vec<u64> = latency1.iter().zip(&latency0).map(|(a, b)| a - b).collect();
    Ok(json!({
        "mode": venue,
        "symbols": symbols,
        "ticks_per_s": (ticks1 - ticks0) as f64 / elapsed.as_secs_f64(),
        "latency_us_at_most": percentiles(&buckets),
        "bars_out": metrics::global().bars_out.get(),
        "books_out": counters.books_out.get(),
        "alerts": metrics::global().alerts.get(),
        "dropped_bus_full": metrics::global().dropped_bus_full.get(),
        "history_bars_per_series": settings.market.history,
        "intervals": settings.market.intervals.names(),
        "history_full": full_history,
        "bars_prefilled": prefilled,
        "rss_mb": rss,
    }))
}

/// Every (symbol, interval) history of `venue` filled to `settings.market.history`
/// closed bars through `Market::restore` (a restart's reload path), the last one ending
/// where the current interval starts. Returns the bars restored.
fn fill_history(
    market: &mut Market,
    settings: &Settings,
    venue: &str,
    names: &[String],
) -> Result<usize> {
    let now = moonbus_common::now_ns();
    let history = settings.market.history as u64;
    let mut restored = 0;
    for (index, interval) in settings.market.intervals.iter().enumerate() {
        let len = settings
            .market
            .intervals
            .len_ns(index)
            .context("interval length")?;
        let current = now - now % len;
        for name in names {
            let subject = moonbus_common::subjects::bar(interval.as_str(), venue, name);
            let mut bar: moonbus_common::Bar = serde_json::from_value(json!({
                "venue": venue, "symbol": name, "interval": interval.as_str(),
                "open": "100", "high": "100.5", "low": "99.5", "close": "100.25",
                "volume": "12.5", "trades": 40, "start_ts": 0, "end_ts": len,
            }))?;
            for k in (1..=history).rev() {
                bar.start_ts = current - k * len;
                bar.end_ts = bar.start_ts + len;
                market
                    .restore(&subject, &bar)
                    .map_err(|e| anyhow::anyhow!("restoring {subject}: {e}"))?;
                restored += 1;
            }
        }
    }
    Ok(restored)
}

/// Nearest-rank percentiles from bucket counts: the upper bound of the bucket the
/// rank falls in (so "p99 <= x µs").
fn percentiles(buckets: &[u64]) -> serde_json::Value {
    let total: u64 = buckets.iter().sum();
    let mut out = serde_json::Map::new();
    out.insert("count".into(), json!(total));
    for p in [50.0, 90.0, 99.0, 99.9] {
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

/// 20 ticks per symbol, symbols in turn, 1 ms of source time apart (the pace is
/// ignored: replay_speed = 0).
fn write_replay_file(path: &str, symbols: usize) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {path}"))?,
    );
    writeln!(out, "ts,symbol,price,bid,ask,size")?;
    let mut ts = 1_764_129_600_000_000_000u64;
    for round in 0..20u64 {
        for i in 0..symbols {
            ts += 1_000_000;
            // Within 0.5 %: no price alerts, like a quiet market.
            let cents = 10_000 + (i as u64 * 7 + round * 13) % 50;
            writeln!(
                out,
                "{ts},{},{}.{:02},{}.{:02},{}.{:02},0.5",
                symbol(i),
                cents / 100,
                cents % 100,
                (cents - 1) / 100,
                (cents - 1) % 100,
                (cents + 1) / 100,
                (cents + 1) % 100
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
