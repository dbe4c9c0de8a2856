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
//! | `md_duplicates_total` | counter | venue: old or duplicate messages ignored (already applied) |
//! | `md_stale_symbols` | gauge | venue: symbols without a tick for `stale_after_ms` |
//! | `md_dropped_total` | counter | reason: `bus_full` (client buffer full past `publish_timeout_ms`), `max_series` |
//! | `md_bars_out_total` | counter | closed bars published |
//! | `md_alerts_total` | counter | price alerts published |
//! | `md_arbs_total` | counter | arbitrage opportunities published (`md.arb.<symbol>`) |
//! | `md_publish_latency_seconds` | histogram | tick in -> handed to the NATS client (1 tick in 8 timed) |
//! | `md_arb_latency_seconds` | histogram | the book update's `source_ts` -> its `md.arb` handed to the NATS client |
//! | `md_bar_lateness_seconds` | histogram | a bar boundary -> the bars the bar clock closed there handed to the NATS client |

use std::sync::{Arc, LazyLock};

pub use moonbus_common::metrics::{Counter, Gauge, Histogram, LATENCY_BOUNDS_NS};
use moonbus_common::metrics::{Family, Text};

/// The counters of one venue.
#[derive(Debug, Default)]
pub struct VenueMetrics {
    pub ticks_in: Counter,
    pub ticks_out: Counter,
    pub books_out: Counter,
    pub reconnects: Counter,
    pub gaps: Counter,
    pub duplicates: Counter,
    pub stale_symbols: Gauge,
}

/// Reads one figure of a venue.
type VenueValue = fn(&VenueMetrics) -> u64;

/// Everything the process counts.
#[derive(Debug, Default)]
pub struct Metrics {
    venues: Family<VenueMetrics>,
    pub bars_out: Counter,
    pub alerts: Counter,
    pub arbs: Counter,
    pub dropped_bus_full: Counter,
    pub dropped_max_series: Counter,
    pub publish_latency: Histogram,
    pub bar_lateness: Histogram,
    pub arb_latency: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// The counters of `venue` (created on first use; keep the `Arc` on a hot path).
pub fn venue(venue: &str) -> Arc<VenueMetrics> {
    METRICS.venues.get(&[venue])
}

impl Metrics {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let venues = self.venues.members();
        let mut out = Text::default();
        let per_venue: [(&str, &str, &str, VenueValue); 7] = [
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
                "md_duplicates_total",
                "counter",
                "Old or duplicate venue messages ignored.",
                |v| v.duplicates.get(),
            ),
            (
                "md_stale_symbols",
                "gauge",
                "Symbols without a recent tick.",
                |v| v.stale_symbols.get(),
            ),
        ];
        for (name, kind, help, value) in per_venue {
            out.header(name, kind, help);
            for (labels, metrics) in &venues {
                out.sample(name, &[("venue", &labels[0])], value(metrics));
            }
        }
        let name = "md_dropped_total";
        out.header(
            name,
            "counter",
            "Messages dropped to keep the engine running.",
        );
        out.sample(name, &[("reason", "bus_full")], self.dropped_bus_full.get());
        out.sample(
            name,
            &[("reason", "max_series")],
            self.dropped_max_series.get(),
        );
        out.single(
            "md_bars_out_total",
            "counter",
            "Closed bars published.",
            self.bars_out.get(),
        );
        out.single(
            "md_alerts_total",
            "counter",
            "Price alerts published.",
            self.alerts.get(),
        );
        out.single(
            "md_arbs_total",
            "counter",
            "Arbitrage opportunities published.",
            self.arbs.get(),
        );
        out.histogram(
            "md_arb_latency_seconds",
            "A book update's arrival to its arbitrage opportunity handed to the NATS client.",
            &self.arb_latency,
        );
        out.histogram(
            "md_publish_latency_seconds",
            "Tick in to handed to the NATS client.",
            &self.publish_latency,
        );
        out.histogram(
            "md_bar_lateness_seconds",
            "A bar boundary to the bars the bar clock closed there handed to the NATS client.",
            &self.bar_lateness,
        );
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
