//! Prometheus metrics: counters kept in atomics (the hot path pays one relaxed
//! add), rendered in the text exposition format on `GET /metrics` by a tiny HTTP
//! server (`[market_data] metrics_addr`).
//!
//! For the feeds (connectors included): `metrics::venue("binance")` gives that
//! venue's counters, e.g. `metrics::venue(name).reconnects.inc()` after a reconnect
//! and `.gaps.inc()` on a sequence gap; ticks in/out are counted by the engine.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `md_ticks_in_total` | counter | venue: ticks received from the feed |
//! | `md_ticks_out_total` | counter | venue: ticks published |
//! | `md_books_out_total` | counter | venue (`all` = aggregated): books published |
//! | `md_reconnects_total` | counter | venue |
//! | `md_gaps_total` | counter | venue: sequence gaps detected |
//! | `md_stale_symbols` | gauge | venue: symbols without a tick for `stale_after_ms` |
//! | `md_dropped_total` | counter | reason: `bus_full` (client buffer full past `publish_timeout_ms`), `max_series` |
//! | `md_bars_out_total` | counter | closed bars published |
//! | `md_alerts_total` | counter | price alerts published |
//! | `md_publish_latency_seconds` | histogram | tick in -> handed to the NATS client (1 tick in 8 timed) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, value: u64) {
        self.0.store(value, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The counters of one venue.
#[derive(Debug, Default)]
pub struct VenueMetrics {
    pub ticks_in: Counter,
    pub ticks_out: Counter,
    pub books_out: Counter,
    pub reconnects: Counter,
    pub gaps: Counter,
    pub stale_symbols: Gauge,
}

/// Reads one figure of a venue.
type VenueValue = fn(&VenueMetrics) -> u64;

/// Upper bounds of the latency histogram's buckets, in nanoseconds (1 µs .. 100 ms).
pub const LATENCY_BOUNDS_NS: [u64; 22] = [
    1_000,
    2_000,
    3_000,
    5_000,
    7_500,
    10_000,
    15_000,
    20_000,
    30_000,
    50_000,
    75_000,
    100_000,
    150_000,
    200_000,
    300_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), plus the +Inf bucket last.
    buckets: [Counter; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: Counter,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket].inc();
        self.sum_ns.add(ns);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Counter::get).sum()
    }

    /// The count of each bucket (not cumulative; the last is +Inf).
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets.iter().map(Counter::get).collect()
    }
}

/// Everything the process counts.
#[derive(Debug, Default)]
pub struct Metrics {
    venues: Mutex<BTreeMap<String, Arc<VenueMetrics>>>,
    pub bars_out: Counter,
    pub alerts: Counter,
    pub dropped_bus_full: Counter,
    pub dropped_max_series: Counter,
    pub publish_latency: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// The counters of `venue` (created on first use; keep the `Arc` on a hot path).
pub fn venue(venue: &str) -> Arc<VenueMetrics> {
    let mut venues = METRICS.venues.lock().unwrap_or_else(|e| e.into_inner());
    venues.entry(venue.to_string()).or_default().clone()
}

impl Metrics {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let venues: Vec<(String, Arc<VenueMetrics>)> = {
            let venues = self.venues.lock().unwrap_or_else(|e| e.into_inner());
            venues.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out = String::with_capacity(4096);
        let per_venue: [(&str, &str, &str, VenueValue); 6] = [
            (
                "md_ticks_in_total",
                "counter",
                "Ticks received from the feed.",
                |v| v.ticks_in.get(),
            ),
            ("md_ticks_out_total", "counter", "Ticks published.", |v| {
                v.ticks_out.get()
            }),
            (
                "md_books_out_total",
                "counter",
                "Books published (venue all = aggregated).",
                |v| v.books_out.get(),
            ),
            (
                "md_reconnects_total",
                "counter",
                "Feed reconnections.",
                |v| v.reconnects.get(),
            ),
            ("md_gaps_total", "counter", "Sequence gaps detected.", |v| {
                v.gaps.get()
            }),
            (
                "md_stale_symbols",
                "gauge",
                "Symbols without a recent tick.",
                |v| v.stale_symbols.get(),
            ),
        ];
        for (name, kind, help, value) in per_venue {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (venue, metrics) in &venues {
                let _ = writeln!(out, "{name}{{venue=\"{venue}\"}} {}", value(metrics));
            }
        }
        let _ = writeln!(
            out,
            "# HELP md_dropped_total Messages dropped to keep the engine running.\n\
             # TYPE md_dropped_total counter\n\
             md_dropped_total{{reason=\"bus_full\"}} {}\n\
             md_dropped_total{{reason=\"max_series\"}} {}",
            self.dropped_bus_full.get(),
            self.dropped_max_series.get()
        );
        for (name, help, counter) in [
            (
                "md_bars_out_total",
                "Closed bars published.",
                &self.bars_out,
            ),
            ("md_alerts_total", "Price alerts published.", &self.alerts),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        let name = "md_publish_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Tick in to handed to the NATS client.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        let histogram = &self.publish_latency;
        for (i, bound) in LATENCY_BOUNDS_NS.iter().enumerate() {
            cumulative += histogram.buckets[i].get();
            let le = *bound as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += histogram.buckets[LATENCY_BOUNDS_NS.len()].get();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", histogram.sum_ns.get() as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
}

/// A request larger than this is refused (a scrape is a few hundred bytes).
const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (port 0 = any free port) and returns the bound address and the
/// server, to be spawned. HTTP/1.0 style: one request per connection.
pub async fn bind(addr: &str) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("[market_data] metrics_addr = {addr:?}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let serve = async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(IO_TIMEOUT, answer(stream)).await {
                            tracing::debug!(error = %e, "metrics request timed out");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    Ok((bound, serve))
}

async fn answer(mut stream: TcpStream) {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            global().render(),
        ),
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "400 Bad Request",
            "text/plain",
            "GET /metrics\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let m = Metrics::default();
        m.publish_latency.observe(Duration::from_nanos(500));
        m.publish_latency.observe(Duration::from_micros(3));
        m.publish_latency.observe(Duration::from_secs(1));
        let text = m.render();
        assert!(
            text.contains("md_publish_latency_seconds_bucket{le=\"0.000001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("md_publish_latency_seconds_bucket{le=\"0.000003\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("md_publish_latency_seconds_bucket{le=\"0.1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("md_publish_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("md_publish_latency_seconds_count 3\n"),
            "{text}"
        );
        assert_eq!(m.publish_latency.count(), 3);
    }

    #[test]
    fn a_bound_is_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(1));
        assert_eq!(h.buckets[0].get(), 1, "1 µs is in the le=1µs bucket");
    }
}
