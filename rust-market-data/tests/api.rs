//! rust-market-data end to end: a real nats-server, the real binary (simulated feed
//! at 20 ms per symbol), and a plain NATS client asking and listening.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use moonbus_common::testing::{ChildGuard, NatsServer};
use moonbus_common::{
    Bar, FeedState, FeedStatus, HistoryReply, PriceReply, PricesReply, Tick, VersionReply,
};
use rust_decimal::Decimal;

use support::{ask, error_code, next, request, start, start_with, BINARY, WAIT};

#[tokio::test]
async fn ticks_status_and_bars_flow_and_bars_match_the_ticks() {
    let (running, mut subs) = start(&[
        "md.status.sim",
        "md.tick.sim.BTC-USD",
        "md.bar.1s.sim.BTC-USD",
    ])
    .await;
    let mut bars = subs.pop().unwrap();
    let mut ticks = subs.pop().unwrap();
    let mut status = subs.pop().unwrap();

    let first: FeedStatus = next(&mut status).await;
    assert_eq!(
        (first.venue.as_str(), first.status),
        ("sim", FeedState::Connected)
    );
    assert_eq!(first.symbols, 3);

    // Every tick parses, is for its subject, and seq counts up from 1 with none lost.
    // Collect until a 1s bar closed; then rebuild that bar from the same ticks.
    let mut seen: Vec<Tick> = Vec::new();
    let bar: Bar = loop {
        tokio::select! {
            tick = next::<Tick>(&mut ticks) => {
                assert_eq!((tick.venue.as_str(), tick.symbol.as_str()), ("sim", "BTC-USD"));
                assert_eq!(tick.seq, seen.len() as u64 + 1, "seq increases by one");
                let (bid, ask) = (tick.bid.unwrap(), tick.ask.unwrap());
                assert!(bid < tick.price && tick.price < ask, "{tick:?}");
                seen.push(tick);
            }
            bar = next::<Bar>(&mut bars) => break bar,
        }
    };
    // The bar was published after its ticks; collect the ones still in flight.
    while !matches!(seen.last(), Some(t) if t.ts >= bar.end_ts) {
        seen.push(next(&mut ticks).await);
    }
    let in_bar: Vec<&Tick> = seen
        .iter()
        .filter(|t| (bar.start_ts..bar.end_ts).contains(&t.ts))
        .collect();
    assert!(!in_bar.is_empty());
    assert_eq!(bar.end_ts - bar.start_ts, 1_000_000_000);
    assert_eq!(bar.start_ts % 1_000_000_000, 0);
    assert_eq!(bar.open, in_bar[0].price);
    assert_eq!(bar.close, in_bar[in_bar.len() - 1].price);
    assert_eq!(bar.high, in_bar.iter().map(|t| t.price).max().unwrap());
    assert_eq!(bar.low, in_bar.iter().map(|t| t.price).min().unwrap());
    let volume: Decimal = in_bar.iter().map(|t| t.size.unwrap().get()).sum();
    assert_eq!(bar.volume.get(), volume);
    assert_eq!(bar.trades, in_bar.len() as u64);

    // History has that bar; an interval that is not built is refused.
    let history: HistoryReply = ask(
        &running.client,
        "md.api.history",
        r#"{"symbol":"BTC-USD","interval":"1s","limit":5}"#,
    )
    .await;
    assert!(history.bars.contains(&bar), "{history:?}");
    assert!(
        history
            .bars
            .windows(2)
            .all(|w| w[0].end_ts <= w[1].start_ts),
        "oldest first"
    );
    let (code, _) = error_code(
        &running.client,
        "md.api.history",
        r#"{"symbol":"BTC-USD","interval":"2m"}"#,
    )
    .await;
    assert_eq!(code, "unknown_interval");
}

#[tokio::test]
async fn a_quiet_symbols_bar_is_closed_by_the_timer() {
    // Each symbol ticks every 3 s, so a 1s bar can only close by the timer. One
    // subscription for everything keeps the order in which the service published.
    let (_running, mut subs) = start_with(
        &["md.>"],
        &[("MOONBUS__MARKET_DATA__TICK_INTERVAL_MS", "3000")],
    )
    .await;
    let mut first: Option<Tick> = None;
    let bar = loop {
        let message = tokio::time::timeout(WAIT, subs[0].next())
            .await
            .expect("in time")
            .expect("open");
        match message.subject.as_str() {
            "md.tick.sim.BTC-USD" => {
                let tick: Tick = serde_json::from_slice(&message.payload).expect("a Tick");
                assert!(
                    first.is_none(),
                    "a second tick came before the first bar closed: {tick:?}"
                );
                first = Some(tick);
            }
            "md.bar.1s.sim.BTC-USD" => {
                break serde_json::from_slice::<Bar>(&message.payload).expect("a Bar")
            }
            _ => {}
        }
    };
    let first = first.expect("the bar's tick came first");
    assert_eq!(
        (bar.trades, bar.open, bar.close),
        (1, first.price, first.price)
    );
    assert!((bar.start_ts..bar.end_ts).contains(&first.ts));
}

#[tokio::test]
async fn the_feed_status_is_a_heartbeat_every_five_seconds() {
    let (_running, mut subs) = start(&["md.status.sim"]).await;
    let first: FeedStatus = next(&mut subs[0]).await;
    let second: FeedStatus = next(&mut subs[0]).await;
    assert_eq!(
        (first.status, second.status),
        (FeedState::Connected, FeedState::Connected)
    );
    let gap = Duration::from_nanos(second.ts - first.ts);
    assert!(gap >= Duration::from_millis(4900) && gap < WAIT, "{gap:?}");
}

#[tokio::test]
async fn price_prices_version_and_ping() {
    let (running, mut subs) = start(&["md.tick.sim.BTC-USD"]).await;
    let client = &running.client;
    let ticks = &mut subs[0];
    let mut seen: Tick = next(ticks).await;
    while seen.seq < 5 {
        seen = next(ticks).await;
    }

    // The reply is the latest tick: at least as new as one already seen, and
    // exactly the tick published with its seq.
    let reply: PriceReply = ask(client, "md.api.price", r#"{"symbol":"BTC-USD"}"#).await;
    assert!(
        reply.tick.seq >= seen.seq,
        "stale: {:?} after seq {}",
        reply.tick,
        seen.seq
    );
    let mut published = seen;
    while published.seq < reply.tick.seq {
        published = next(ticks).await;
    }
    assert_eq!(reply.tick, published);
    let reply: PriceReply = ask(
        client,
        "md.api.price",
        r#"{"symbol":"BTC-USD","venue":"sim"}"#,
    )
    .await;
    assert_eq!(reply.tick.symbol, "BTC-USD");

    let (code, message) = error_code(client, "md.api.price", r#"{"symbol":"DOGE-USD"}"#).await;
    assert_eq!(code, "unknown_symbol");
    assert!(message.contains("DOGE-USD"), "{message}");

    let prices: PricesReply = ask(
        client,
        "md.api.prices",
        r#"{"symbols":["BTC-USD","DOGE-USD","SOL-USDC","ETH-USD"]}"#,
    )
    .await;
    assert_eq!(
        prices.prices.keys().collect::<Vec<_>>(),
        ["BTC-USD", "ETH-USD", "SOL-USDC"]
    );
    assert_eq!(prices.prices["SOL-USDC"].symbol, "SOL-USDC");
    assert_eq!(prices.missing, ["DOGE-USD"]);

    let version: VersionReply = ask(client, "md.api.version", "").await;
    assert_eq!(
        (version.service.as_str(), version.version.as_str()),
        ("market-data", env!("CARGO_PKG_VERSION"))
    );

    let ping = request(client, "$SRV.PING.market-data", "").await;
    assert_eq!(ping["name"], "market-data", "{ping}");
    let info = request(client, "$SRV.INFO.market-data", "").await;
    let mut served: Vec<&str> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    served.sort();
    assert_eq!(
        served,
        [
            "md.api.history",
            "md.api.monitor.start",
            "md.api.monitor.status",
            "md.api.monitor.stop",
            "md.api.price",
            "md.api.prices",
            "md.api.version"
        ]
    );
}

#[tokio::test]
async fn bad_requests_get_bad_request_and_the_service_keeps_answering() {
    let (running, _) = start(&[]).await;
    let client = &running.client;
    for (subject, body, expected) in [
        ("md.api.price", "{not json", "key must be a string"),
        ("md.api.price", "", "EOF"),
        ("md.api.price", r#"{"symbol":"BTC.USD"}"#, "invalid symbol"),
        (
            "md.api.price",
            r#"{"symbol":"BTC-USD","extra":1}"#,
            "unknown field `extra`",
        ),
        ("md.api.prices", r#"{"symbols":[]}"#, "1 to 10000 symbols"),
        (
            "md.api.history",
            r#"{"symbol":"BTC-USD","limit":"5"}"#,
            "invalid type",
        ),
        (
            "md.api.history",
            r#"{"symbol":"BTC-USD","limit":0}"#,
            "limit 0",
        ),
    ] {
        let (code, message) = error_code(client, subject, body).await;
        assert_eq!(code, "bad_request", "{subject} {body}");
        assert!(message.contains(expected), "{subject} {body}: {message}");
    }
    let reply: PriceReply = ask(client, "md.api.price", r#"{"symbol":"ETH-USD"}"#).await;
    assert_eq!(reply.tick.symbol, "ETH-USD");
}

#[tokio::test]
async fn sigterm_says_disconnected_and_exits_cleanly() {
    let (mut running, mut subs) = start(&["md.status.sim"]).await;
    let connected: FeedStatus = next(&mut subs[0]).await;
    assert_eq!(connected.status, FeedState::Connected);
    let pid = running.service.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    // Heartbeats may still be queued; the first other status must be `disconnected`.
    let status = loop {
        let status: FeedStatus = next(&mut subs[0]).await;
        if status.status != FeedState::Connected {
            break status;
        }
    };
    assert_eq!(status.status, FeedState::Disconnected, "{status:?}");
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = running.service.0.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn an_invalid_configured_symbol_stops_start_up_with_a_clear_message() {
    let server = NatsServer::start();
    let child = Command::new(BINARY)
        .env("NATS_URL", &server.url)
        .env(
            "MOONBUS_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml"),
        )
        .env("MOONBUS__SYSTEM__SYMBOLS", r#"["BTC-USD", "ETH.USD"]"#)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Guarded, so a binary that wrongly starts is killed instead of hanging the test.
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = guard.0.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "started with an invalid symbol");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!exit.success());
    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(
        stderr.contains("[system].symbols: \"ETH.USD\" is not a valid symbol"),
        "{stderr}"
    );
}
