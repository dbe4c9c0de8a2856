//! `risk.api.check` round trips against the running rust-risk, one request in flight
//! (the way execution asks), and the same round trip to a trivial echo responder through
//! the same nats-server: the difference is risk's own cost, the echo is the bus.
//!
//! The two are measured in alternating blocks (`--blocks` x `--per-block` requests each)
//! so that both see the same machine: this 2-core box is shared and its load drifts.
//! The echo responder is this binary again (`--role echo`), a separate process like
//! rust-risk, connected as `ECHO_USER` (market-data) on `md.api.bench_echo`; the checks go
//! out as `CHECK_USER` (execution, the only user that may call risk.api.check).
//!
//! Prints one JSON object: round-trip samples in µs per target, and risk's answers by
//! outcome. bench/risk_check.py starts nats-server, market-data and risk, runs this with
//! the operator's credentials and turns the samples into percentiles. In Rust rather than
//! nats-py because the client's own overhead must stay far below the 250 µs aimed at.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use moonbus_common::{bus, ErrorReply, PriceReply, RiskCheckResult};
use serde_json::json;

use common::{wall_ns, Args};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    if args.text("role", "driver") == "echo" {
        return common::echo().await;
    }
    let symbol = args.text("symbol", "BTC-USD");
    let quantity = args.text("quantity", "0.001");
    let (blocks, per_block, warmup): (usize, usize, usize) = (
        args.get("blocks", 10)?,
        args.get("per-block", 1000)?,
        args.get("warmup", 500)?,
    );

    let mut echo_process = common::EchoProcess::spawn()?;
    let client = common::connect("NATS_").await?;
    // risk.api.check's only caller is execution: the checks go out as that user.
    let checker = common::connect("CHECK_").await?;
    let price = current_price(&client, &symbol).await?;
    common::wait_for_echo(&client).await?;

    let prefix = format!("rc{}", wall_ns() / 1_000_000);
    let mut sent = 0u64;
    let mut request = |side: &str| {
        sent += 1;
        json!({
            "client_order_id": format!("{prefix}-{sent}"), "agent": "bench", "symbol": symbol,
            "venue": "sim", "side": side, "type": "MARKET", "quantity": quantity,
            "ref_price": price, "ts": wall_ns(),
        })
        .to_string()
        .into_bytes()
    };

    let mut check_us = Vec::with_capacity(blocks * per_block);
    let mut echo_us = Vec::with_capacity(blocks * per_block);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for block in 0..=blocks {
        // Block 0 is the warm-up of both (connections, caches, the allocator).
        let n = if block == 0 { warmup } else { per_block };
        for i in 0..n {
            let body = request(if i % 2 == 0 { "BUY" } else { "SELL" });
            let started = Instant::now();
            let reply = client.request(common::ECHO_SUBJECT, body.into()).await?;
            let took = started.elapsed();
            if reply.payload.is_empty() {
                bail!("the echo responder went away");
            }
            if block > 0 {
                echo_us.push(took.as_secs_f64() * 1e6);
            }
        }
        for i in 0..n {
            let body = request(if i % 2 == 0 { "BUY" } else { "SELL" });
            let started = Instant::now();
            let reply = checker.request("risk.api.check", body.into()).await?;
            let took = started.elapsed();
            if block > 0 {
                check_us.push(took.as_secs_f64() * 1e6);
                *outcomes.entry(outcome(&reply.payload)).or_default() += 1;
            }
        }
    }
    echo_process.stop();
    let result = json!({
        "symbol": symbol,
        "requests_per_target": blocks * per_block,
        "blocks": blocks,
        "check_us": check_us,
        "echo_us": echo_us,
        "check_outcomes": outcomes,
    });
    println!("{result}");
    Ok(())
}

/// approved / refused:<code> / error:<code> / unreadable
fn outcome(payload: &[u8]) -> String {
    if let Ok(result) = bus::decode::<RiskCheckResult>(payload) {
        return match result.approved {
            true => "approved".into(),
            false => format!("refused:{}", result.reason_code.unwrap_or_default()),
        };
    }
    match bus::decode::<ErrorReply>(payload) {
        Ok(reply) => format!("error:{}", reply.error.code),
        Err(_) => "unreadable".into(),
    }
}

async fn current_price(client: &async_nats::Client, symbol: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = json!({ "symbol": symbol }).to_string();
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.request("md.api.price", body.into()),
        )
        .await
        {
            if let Ok(price) = bus::decode::<PriceReply>(&reply.payload) {
                return Ok(price.tick.price.to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("no price for {symbol} from md.api.price");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
