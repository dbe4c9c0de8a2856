//! Prometheus metrics for the Rust services: counters, gauges and histograms kept in
//! atomics (the hot path pays one relaxed add), labelled families, the text
//! exposition format (version 0.0.4) and a tiny HTTP server for `GET /metrics`.
//! Each service defines its own metrics and `render` function on top of these.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
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

/// A count that goes up and down.
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

/// A float value that goes up and down (for display: money stays exact elsewhere).
#[derive(Debug, Default)]
pub struct FloatGauge(AtomicU64);

impl FloatGauge {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// A float total that only grows (for display).
#[derive(Debug, Default)]
pub struct FloatCounter(AtomicU64);

impl FloatCounter {
    pub fn add(&self, value: f64) {
        let add = |bits| Some((f64::from_bits(bits) + value).to_bits());
        let _ = self.0.fetch_update(Relaxed, Relaxed, add);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// Upper bounds of the latency histogram's buckets, in nanoseconds (1 µs .. 100 ms).
pub const LATENCY_BOUNDS_NS: &[u64] = &[
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

/// Bounds for what waits on the network (100 µs .. 10 s).
pub const ROUND_TRIP_BOUNDS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Per bucket (not cumulative), plus the +Inf bucket last.
    buckets: Box<[Counter]>,
    sum_ns: Counter,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(LATENCY_BOUNDS_NS)
    }
}

impl Histogram {
    /// `bounds`: ascending upper bounds in nanoseconds.
    pub fn with_bounds(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum_ns: Counter::default(),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self.bounds.partition_point(|&bound| bound < ns);
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

/// Metrics of one kind by label values, created on first use. Keep the `Arc` on a
/// hot path; a lookup takes a lock that only a scrape contends.
#[derive(Debug, Default)]
pub struct Family<T>(Mutex<BTreeMap<Vec<String>, Arc<T>>>);

impl<T: Default> Family<T> {
    pub fn get(&self, labels: &[&str]) -> Arc<T> {
        let key = labels.iter().map(|l| l.to_string()).collect();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    }

    /// Every member, in label order.
    pub fn members(&self) -> Vec<(Vec<String>, Arc<T>)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Builds the text exposition format.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    /// `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` are (name, value) pairs.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(self.0, "{sep}{label}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A metric with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family of counters; `label_names` in the order of the family's label values.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label_names: &[&str],
        family: &Family<Counter>,
    ) {
        self.header(name, "counter", help);
        for (values, counter) in family.members() {
            let labels: Vec<(&str, &str)> = label_names
                .iter()
                .zip(&values)
                .map(|(label, value)| (*label, value.as_str()))
                .collect();
            self.sample(name, &labels, counter.get());
        }
    }

    /// A histogram in seconds, buckets cumulative.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (i, bound) in histogram.bounds.iter().enumerate() {
            cumulative += histogram.buckets[i].get();
            let le = *bound as f64 / 1e9;
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += histogram.buckets[histogram.bounds.len()].get();
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(self.0, "{name}_sum {}", histogram.sum_ns.get() as f64 / 1e9);
        let _ = writeln!(self.0, "{name}_count {cumulative}");
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// Label values may hold anything; the format needs `\`, `"` and newlines escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// A request larger than this is refused (a scrape is a few hundred bytes).
const MAX_REQUEST: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (port 0 = any free port) and returns the bound address and the
/// server, to be spawned, answering `GET /metrics` with `render()`. HTTP/1.0 style:
/// one request per connection.
pub async fn bind(
    addr: &str,
    render: fn() -> String,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_addr = {addr:?}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let serve = async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        let answer = answer(stream, render);
                        if let Err(e) = tokio::time::timeout(IO_TIMEOUT, answer).await {
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

/// Serves the metrics on `addr` if it is set (`None` = off). Metrics are not worth
/// refusing to run for (a second instance on one machine finds the port taken): an
/// error in the log, and no endpoint.
pub async fn serve(addr: Option<&str>, render: fn() -> String) {
    let Some(addr) = addr else { return };
    match bind(addr, render).await {
        Ok((bound, serve)) => {
            tracing::info!(%bound, "metrics on http://{bound}/metrics");
            tokio::spawn(serve);
        }
        Err(e) => tracing::error!(error = %format!("{e:#}"), "no metrics endpoint"),
    }
}

/// A `metrics_addr` setting: "" or port 0 = off.
pub fn enabled_addr(addr: &str) -> Option<&str> {
    let addr = addr.trim();
    let off = addr.is_empty() || addr.rsplit_once(':').is_some_and(|(_, port)| port == "0");
    (!off).then_some(addr)
}

async fn answer(mut stream: TcpStream, render: fn() -> String) {
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
            render(),
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
    fn a_bound_is_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(1));
        assert_eq!(h.snapshot()[0], 1, "1 µs is in the le=1µs bucket");
        let wide = Histogram::with_bounds(ROUND_TRIP_BOUNDS_NS);
        wide.observe(Duration::from_secs(20));
        assert_eq!(
            wide.snapshot().last(),
            Some(&1),
            "past the last bound: +Inf"
        );
    }

    #[test]
    fn families_keep_one_member_per_label_set() {
        let family: Family<Counter> = Family::default();
        family.get(&["refused", "stale"]).inc();
        family.get(&["refused", "stale"]).inc();
        family.get(&["approved", "none"]).inc();
        let members = family.members();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].0, ["approved", "none"]);
        assert_eq!(members[1].1.get(), 2);
    }

    #[test]
    fn samples_escape_label_values() {
        let mut text = Text::default();
        text.single("x_total", "counter", "X.", 3);
        text.sample("y", &[("a", "q\"b\\")], 1.5);
        assert_eq!(
            text.finish(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\ny{a=\"q\\\"b\\\\\"} 1.5\n"
        );
    }

    #[test]
    fn metrics_addr_off() {
        assert_eq!(enabled_addr(" "), None);
        assert_eq!(enabled_addr("127.0.0.1:0"), None);
        assert_eq!(enabled_addr("0.0.0.0:9105"), Some("0.0.0.0:9105"));
    }
}
