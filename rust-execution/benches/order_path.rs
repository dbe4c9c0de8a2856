//! Order -> report latency of the running system, measured from outside like an agent
//! sees it: publish an OrderRequest on `orders.submit.operator.<symbol>` (JetStream, Nats-Msg-Id),
//! time until its terminal report arrives on `exec.report.>`.
//!
//!   --mode rate   open loop: `--rate` orders/s, paced on an absolute schedule (a late
//!                 order does not delay the next), for `--seconds` (+ `--warmup` seconds
//!                 sent first and left out of the figures);
//!   --mode burst  `--orders` orders as fast as they can be published: the rate at which
//!                 reports come out is the most the order path sustains.
//!
//! Orders are MARKET, round-robin over `--symbols SYM:QTY,...`, BUY and SELL in turn per
//! symbol so positions stay flat. In rate mode the same schedule first drives a trivial
//! echo responder (request/reply through the same server, a separate process): the bus
//! baseline of this run. Prints one JSON object (latencies in µs, per status, the hops
//! read off each FILLED report's timings, the baseline). bench/order_path.py starts
//! nats-server and the services, runs this with the operator's credentials and turns
//! the samples into percentiles.
//!
//! Written in Rust, not nats-py: the figures aimed at are below a millisecond, and a
//! request/reply echo from nats-py measured p50 300-324 µs where async-nats measured
//! 190-212 µs against the same server in the same run: the client would be a large share
//! of what is measured.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use futures::StreamExt;
use moonbus_common::{bus, ExecutionReport, OrderStatus};
use serde_json::json;
use tokio::sync::mpsc;

use common::{wall_ns, Args};

/// What the receiver learnt about one order.
#[derive(Default)]
struct Outcomes {
    /// Terminal reports: (status, latency µs).
    terminal: Vec<(OrderStatus, f64)>,
    /// Per hop, from the FILLED reports' timings (µs).
    hops: BTreeMap<&'static str, Vec<f64>>,
    /// A second terminal report for the same order.
    doubled: u64,
    /// Terminal reports that are not FILLED, by the reason's code (`risk_unavailable`, ...).
    reasons: BTreeMap<String, u64>,
    /// Reports for orders of this run that were not terminal (ACCEPTED, PARTIALLY_FILLED).
    interim: u64,
    /// (arrival since start, ns) of every terminal report, for the burst rate.
    arrivals: Vec<u64>,
}

struct Run {
    prefix: String,
    start: Instant,
    /// ns since `start` at which order i was published; 0 = not (yet) sent.
    sent_at: Vec<AtomicU64>,
    /// Orders sent during the warm-up are reported but not counted.
    counted_from: AtomicU64,
    done: Vec<AtomicU64>,
    outcomes: Mutex<Outcomes>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    if args.text("role", "driver") == "echo" {
        return common::echo().await;
    }
    let mode = args.text("mode", "rate");
    let symbols: Vec<(String, String)> = args
        .text("symbols", "BTC-USD:0.001,ETH-USD:0.01,SOL-USDC:0.5")
        .split(',')
        .map(|pair| {
            pair.split_once(':')
                .map(|(s, q)| (s.to_string(), q.to_string()))
                .with_context(|| format!("--symbols wants SYMBOL:QTY, got {pair:?}"))
        })
        .collect::<Result<_>>()?;
    let (rate, seconds, warmup): (f64, f64, f64) = (
        args.get("rate", 1000.0)?,
        args.get("seconds", 10.0)?,
        args.get("warmup", 1.0)?,
    );
    let (total, warm, period) = match mode.as_str() {
        "rate" => {
            if rate.is_nan() || rate <= 0.0 {
                bail!("--rate must be positive");
            }
            let warm = (warmup * rate) as u64;
            (
                warm + (seconds * rate) as u64,
                warm,
                Some(Duration::from_secs_f64(1.0 / rate)),
            )
        }
        "burst" => (args.get("orders", 20_000u64)?, 0, None),
        other => bail!("--mode {other:?}: rate or burst"),
    };
    let grace = Duration::from_secs_f64(args.get("grace", 10.0)?);

    let client = common::connect("NATS_").await?;
    let js = jetstream::new(client.clone());
    let baseline_us = match period {
        Some(period) => Some(echo_baseline(&client, period, (seconds * rate) as usize).await?),
        None => None,
    };
    let run = Arc::new(Run {
        prefix: args.text("run", &format!("bench{}", wall_ns() / 1_000_000)),
        start: Instant::now(),
        sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        counted_from: AtomicU64::new(warm),
        done: (0..total).map(|_| AtomicU64::new(0)).collect(),
        outcomes: Mutex::new(Outcomes::default()),
    });

    let mut reports = client.subscribe("exec.report.>").await?;
    client.flush().await?;
    let receiver = {
        let run = run.clone();
        tokio::spawn(async move {
            while let Some(message) = reports.next().await {
                run.on_report(&message.payload);
            }
        })
    };

    // PubAcks are awaited off the send path, so a slow ack never delays the schedule.
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<PublishAckFuture>();
    let acks = tokio::spawn(async move {
        let (mut stored, mut failed) = (0u64, 0u64);
        while let Some(ack) = acks_rx.recv().await {
            match ack.await {
                Ok(_) => stored += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("order not stored: {e}");
                }
            }
        }
        (stored, failed)
    });

    let mut max_lag = Duration::ZERO;
    let mut sides = vec![0u64; symbols.len()];
    for i in 0..total {
        if let Some(period) = period {
            let due = run.start + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            }
            max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        }
        let n = i as usize % symbols.len();
        let (symbol, quantity) = &symbols[n];
        let side = if sides[n].is_multiple_of(2) {
            "BUY"
        } else {
            "SELL"
        };
        sides[n] += 1;
        let id = format!("{}-{i}", run.prefix);
        let ts = wall_ns();
        let order = json!({
            "client_order_id": id, "agent": "operator", "symbol": symbol, "side": side,
            "type": "MARKET", "quantity": quantity, "origin_ts": ts, "ts": ts,
        });
        run.sent_at[i as usize].store(run.start.elapsed().as_nanos() as u64, Ordering::Release);
        let ack = js
            .send_publish(
                format!("orders.submit.operator.{symbol}"),
                PublishMessage::build()
                    .payload(serde_json::to_vec(&order)?.into())
                    .message_id(&id),
            )
            .await
            .with_context(|| format!("publishing order {i}"))?;
        acks_tx.send(ack).ok();
    }
    let send_seconds = run.start.elapsed().as_secs_f64();
    drop(acks_tx);
    let (stored, not_stored) = acks.await?;

    // Wait for the last reports: until all are in, or no progress for `grace`.
    let (mut seen, mut last_progress) = (0, Instant::now());
    loop {
        let now_seen = run
            .done
            .iter()
            .filter(|d| d.load(Ordering::Acquire) > 0)
            .count();
        if now_seen as u64 == total || last_progress.elapsed() > grace {
            break;
        }
        if now_seen > seen {
            (seen, last_progress) = (now_seen, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.abort();

    let outcomes = run.outcomes.lock().unwrap();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut latency_us: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (status, us) in &outcomes.terminal {
        *statuses.entry(status.to_string()).or_default() += 1;
        latency_us.entry(status.to_string()).or_default().push(*us);
    }
    let reported = run
        .done
        .iter()
        .filter(|d| d.load(Ordering::Acquire) > 0)
        .count() as u64;
    let mut result = json!({
        "mode": mode,
        "orders": total,
        "warmup_orders": warm,
        "symbols": symbols.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
        "send_seconds": send_seconds,
        "stored": stored,
        "not_stored": not_stored,
        "without_terminal_report": total - reported,
        "doubled": outcomes.doubled,
        "interim_reports": outcomes.interim,
        "statuses": statuses,
        "reasons": outcomes.reasons,
        "latency_us": latency_us,
        "hops_us": outcomes.hops,
    });
    if period.is_some() {
        result["offered_rate"] = json!(rate);
        result["echo_baseline_us"] = json!(baseline_us);
        result["max_send_lag_us"] = json!(max_lag.as_secs_f64() * 1e6);
        // Terminal reports per second in the steady middle of the run (warm-up included,
        // sent at the same rate): below `offered_rate` once the path saturates.
        result["achieved_rate"] = json!(steady_rate(&outcomes.arrivals));
    } else {
        result["sustained_rate"] = json!(steady_rate(&outcomes.arrivals));
    }
    println!("{result}");
    Ok(())
}

impl Run {
    fn on_report(&self, payload: &[u8]) {
        let arrived = self.start.elapsed().as_nanos() as u64;
        let arrived_wall = wall_ns();
        let Ok(report) = bus::decode::<ExecutionReport>(payload) else {
            return;
        };
        let Some(i) = report
            .client_order_id
            .as_ref()
            .and_then(|id| id.as_str().strip_prefix(&self.prefix))
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < self.sent_at.len())
        else {
            return;
        };
        let mut outcomes = self.outcomes.lock().unwrap();
        if matches!(
            report.status,
            OrderStatus::Accepted | OrderStatus::PartiallyFilled
        ) {
            outcomes.interim += 1;
            return;
        }
        if self.done[i].swap(arrived, Ordering::AcqRel) > 0 {
            outcomes.doubled += 1;
            return;
        }
        if (i as u64) < self.counted_from.load(Ordering::Acquire) {
            return;
        }
        let sent = self.sent_at[i].load(Ordering::Acquire);
        let latency_us = arrived.saturating_sub(sent) as f64 / 1e3;
        outcomes.terminal.push((report.status, latency_us));
        if let Some(reason) = &report.reason {
            let code = reason.split(':').next().unwrap_or_default().to_string();
            *outcomes.reasons.entry(code).or_default() += 1;
        }
        outcomes.arrivals.push(arrived);
        if report.status == OrderStatus::Filled {
            let t = &report.timings;
            let hop = |from: Option<u64>, to: Option<u64>| match (from, to) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e3),
                _ => None,
            };
            let hops = [
                ("intake", hop(t.origin_ts, t.received_ts)),
                ("risk_check", hop(t.received_ts, t.risk_checked_ts)),
                ("fill", hop(t.risk_checked_ts, t.filled_ts)),
                ("report", hop(t.filled_ts, Some(report.ts))),
                ("delivery", hop(Some(report.ts), Some(arrived_wall))),
            ];
            for (name, us) in hops {
                if let Some(us) = us {
                    outcomes.hops.entry(name).or_default().push(us);
                }
            }
        }
    }
}

/// Request/reply round trips to the echo responder on the orders' schedule (open loop:
/// each request in its own task), with a payload the size of an order.
async fn echo_baseline(
    client: &async_nats::Client,
    period: Duration,
    count: usize,
) -> Result<Vec<f64>> {
    let mut responder = common::EchoProcess::spawn()?;
    common::wait_for_echo(client).await?;
    let payload = serde_json::to_vec(&json!({
        "client_order_id": "baseline-0000", "agent": "operator", "symbol": "BTC-USD", "side": "BUY",
        "type": "MARKET", "quantity": "0.001", "origin_ts": wall_ns(), "ts": wall_ns(),
    }))?;
    let start = Instant::now();
    let mut asked = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until((start + period.mul_f64(i as f64)).into()).await;
        let (client, payload) = (client.clone(), payload.clone());
        asked.push(tokio::spawn(async move {
            let sent = Instant::now();
            client
                .request(common::ECHO_SUBJECT, payload.into())
                .await
                .map(|_| sent.elapsed().as_secs_f64() * 1e6)
        }));
    }
    let mut samples = Vec::with_capacity(count);
    for task in asked {
        samples.push(task.await??);
    }
    responder.stop();
    Ok(samples)
}

/// Reports per second between the 10th and the 90th percentile of arrivals: the steady
/// state of a burst, without its ramp-up and tail.
fn steady_rate(arrivals: &[u64]) -> f64 {
    let mut sorted = arrivals.to_vec();
    sorted.sort_unstable();
    if sorted.len() < 10 {
        return 0.0;
    }
    let (a, b) = (sorted.len() / 10, sorted.len() * 9 / 10);
    let span = (sorted[b] - sorted[a]) as f64 / 1e9;
    if span <= 0.0 {
        return 0.0;
    }
    (b - a) as f64 / span
}
