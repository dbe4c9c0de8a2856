//! rust-market-data end to end, the features of issue 3: replay, books and the
//! aggregate, price alerts and the monitor API, metrics, a stuck subscriber, and
//! the bound on series. A real nats-server, the real binary, a plain NATS client.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::Message;
use futures::StreamExt;
use moonbus_common::{
    Book, Direction, FeedState, FeedStatus, MonitorStatusReply, PriceAlert, PriceReply, Tick,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{ask, error_code, next, start_with, TempFile, WAIT};

const T0: u64 = 1_764_129_600_000_000_000;
const MS: u64 = 1_000_000;

fn replay_env<'a>(files: &'a str, speed: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("MOONBUS__MARKET_DATA__FEEDS", r#"["replay"]"#),
        ("MOONBUS__MARKET_DATA__REPLAY_FILES", files),
        ("MOONBUS__MARKET_DATA__REPLAY_SPEED", speed),
    ]
}

async fn message(sub: &mut async_nats::Subscriber) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("open")
}

fn decode<T: serde::de::DeserializeOwned>(message: &Message) -> T {
    serde_json::from_slice(&message.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&message.payload)))
}

#[tokio::test]
async fn replay_publishes_ticks_and_bars_in_order_alerts_once_per_crossing_then_replay_done() {
    // BTC-USD: +2.5 % (UP), back to +0.9 % (re-arms UP) which is -2.04 % from the
    // high (DOWN), then +3 % again (UP). A bad row in the middle is skipped.
    let ticks = TempFile::new(
        "ticks.csv",
        &format!(
            "# a comment\nts,symbol,price,size\n{},BTC-USD,100,1\n{},BTC-USD,101,1\n{},BTC-USD,102.5,1\n\
             {},BTC-USD,103,1\n{},BTC-USD,102.8,1\n{},BTC-USD,-5,1\n{},BTC-USD,100.9,1\n{},BTC-USD,103,1\n{},ETH-USD,3500,2\n",
            T0,
            T0 + MS,
            T0 + 2 * MS,
            T0 + 3 * MS,
            T0 + 4 * MS,
            T0 + 5 * MS,
            T0 + 6 * MS,
            T0 + 7 * MS,
            T0 + 8 * MS
        ),
    );
    let bars = TempFile::new(
        "bars.jsonl",
        &format!(
            r#"{{"ts":{},"symbol":"SOL-USDC","interval":"1m","open":"150","high":"151","low":149.5,"close":"150.5","volume":"12.5"}}"#,
            T0
        ),
    );
    let files = format!("[{:?}, {:?}]", ticks.path, bars.path);
    let started = moonbus_common::now_ns();
    let (running, mut subs) = start_with(&["md.>"], &replay_env(&files, "0")).await;
    let all = &mut subs[0];
    let mut prices: Vec<(String, String, u64)> = Vec::new();
    let mut alerts: Vec<PriceAlert> = Vec::new();
    let done = loop {
        let m = message(all).await;
        let subject = m.subject.as_str();
        if let Some(symbol) = subject.strip_prefix("md.tick.replay.") {
            let tick: Tick = decode(&m);
            assert_eq!(
                (tick.venue.as_str(), tick.symbol.as_str()),
                ("replay", symbol)
            );
            assert!(
                tick.ts >= started,
                "stamped when published, not with the file's ts"
            );
            prices.push((symbol.into(), tick.price.to_string(), tick.seq));
        } else if subject.starts_with("md.alert.") {
            alerts.push(decode(&m));
        } else if subject == "md.status.replay" {
            let status: FeedStatus = decode(&m);
            if status.status == FeedState::ReplayDone {
                break status;
            }
        }
    };
    let expected: Vec<(String, String, u64)> = [
        ("BTC-USD", "100", 1),
        ("BTC-USD", "101", 2),
        ("BTC-USD", "102.5", 3),
        ("BTC-USD", "103", 4),
        ("BTC-USD", "102.8", 5),
        ("BTC-USD", "100.9", 6),
        ("BTC-USD", "103", 7),
        ("ETH-USD", "3500", 1),
        // The bar: open, the extreme nearer the open, the other, close.
        ("SOL-USDC", "150", 1),
        ("SOL-USDC", "149.5", 2),
        ("SOL-USDC", "151", 3),
        ("SOL-USDC", "150.5", 4),
    ]
    .iter()
    .map(|(s, p, q)| (s.to_string(), p.to_string(), *q))
    .collect();
    assert_eq!(prices, expected);
    let seen: Vec<(Direction, String, String)> = alerts
        .iter()
        .map(|a| (a.direction, a.from_price.to_string(), a.price.to_string()))
        .collect();
    assert_eq!(
        seen,
        [
            (Direction::Up, "100".into(), "102.5".into()),
            (Direction::Down, "103".into(), "100.9".into()),
            (Direction::Up, "100".into(), "103".into()),
        ]
    );
    assert!(alerts
        .iter()
        .all(|a| a.symbol == "BTC-USD" && a.threshold_pct == 2.0 && a.window_s == 60.0));
    assert!(
        (alerts[1].change_pct + 2.0388).abs() < 0.001,
        "{:?}",
        alerts[1]
    );
    assert_eq!(done.symbols, 3);
    assert!(
        done.detail
            .contains("replayed 12 ticks from 9 rows of 2 files, 1 bad rows skipped"),
        "{}",
        done.detail
    );

    // The replayed prices are served like any other.
    let reply: PriceReply = ask(
        &running.client,
        "md.api.price",
        r#"{"symbol":"SOL-USDC","venue":"replay"}"#,
    )
    .await;
    assert_eq!(reply.tick.price.to_string(), "150.5");
}

#[tokio::test]
async fn replay_keeps_the_pace_of_the_file_at_the_given_speed() {
    // 0.8 s of file time at 2 x: at least 0.4 s of wall time (an upper bound would
    // be a timing assertion on a loaded machine; the pace itself cannot be early).
    let file = TempFile::new(
        "pace.csv",
        &format!(
            "ts,symbol,price\n{},BTC-USD,1\n{},BTC-USD,2\n{},BTC-USD,3\n",
            T0,
            T0 + 400 * MS,
            T0 + 800 * MS
        ),
    );
    let files = format!("[{:?}]", file.path);
    let (_running, mut subs) =
        start_with(&["md.tick.replay.BTC-USD"], &replay_env(&files, "2.0")).await;
    let first: Tick = next(&mut subs[0]).await;
    let _: Tick = next(&mut subs[0]).await;
    let last: Tick = next(&mut subs[0]).await;
    assert_eq!((first.seq, last.seq), (1, 3));
    let gap = Duration::from_nanos(last.ts - first.ts);
    assert!(gap >= Duration::from_millis(390), "{gap:?}");
}

#[tokio::test]
async fn sim_books_are_top_n_around_the_quote_rate_limited_and_aggregated() {
    // One subscription for both: each venue book is published right before the
    // aggregate it updates.
    let (_running, mut subs) = start_with(
        &["md.book.*.BTC-USD"],
        &[
            ("MOONBUS__MARKET_DATA__BOOK_INTERVAL_MS", "200"),
            ("MOONBUS__MARKET_DATA__BOOK_DEPTH", "5"),
        ],
    )
    .await;
    let mut previous: Option<Book> = None;
    for _ in 0..3 {
        let book: Book = next(&mut subs[0]).await;
        assert_eq!(
            (book.venue.as_str(), book.symbol.as_str()),
            ("sim", "BTC-USD")
        );
        assert_eq!((book.bids.len(), book.asks.len()), (5, 5));
        assert!(
            book.bids.windows(2).all(|w| w[0].0 > w[1].0),
            "bids best first: {book:?}"
        );
        assert!(
            book.asks.windows(2).all(|w| w[0].0 < w[1].0),
            "asks best first: {book:?}"
        );
        assert!(book.bids[0].0 <= book.asks[0].0);
        assert!(book
            .bids
            .iter()
            .chain(&book.asks)
            .all(|(_, size)| size.get() > rust_decimal::Decimal::ZERO));
        if let Some(previous) = &previous {
            assert!(
                book.ts - previous.ts >= 200 * MS,
                "at most one book per 200 ms"
            );
        }
        // One venue: the aggregate is that venue's book, as venue `all`, with its own seq.
        let all: Book = next(&mut subs[0]).await;
        assert_eq!(
            (all.venue.as_str(), all.symbol.as_str()),
            ("all", "BTC-USD")
        );
        assert_eq!((&all.bids, &all.asks), (&book.bids, &book.asks));
        previous = Some(book);
    }
}

#[tokio::test]
async fn monitor_api_sets_thresholds_at_run_time_and_refuses_bad_requests() {
    let (running, mut subs) = start_with(&["md.alert.BTC-USD"], &[]).await;
    let client = &running.client;
    let monitors = |reply: &MonitorStatusReply| -> Vec<(String, f64, f64)> {
        reply
            .monitors
            .iter()
            .map(|m| (m.symbol.to_string(), m.threshold_pct, m.window_s))
            .collect()
    };
    // Configured symbols start with the default monitor (2 % in 60 s).
    let all: MonitorStatusReply = ask(client, "md.api.monitor.status", "{}").await;
    let default = |s: &str| (s.to_string(), 2.0, 60.0);
    assert_eq!(
        monitors(&all),
        [default("BTC-USD"), default("ETH-USD"), default("SOL-USDC")]
    );
    let empty_body: MonitorStatusReply = ask(client, "md.api.monitor.status", "").await;
    assert_eq!(empty_body, all);

    let started: MonitorStatusReply = ask(
        client,
        "md.api.monitor.start",
        r#"{"symbol":"ETH-USD","threshold_pct":0.5,"window_s":30}"#,
    )
    .await;
    assert_eq!(monitors(&started), [("ETH-USD".to_string(), 0.5, 30.0)]);
    let one: MonitorStatusReply =
        ask(client, "md.api.monitor.status", r#"{"symbol":"ETH-USD"}"#).await;
    assert_eq!(one, started);
    let stopped: MonitorStatusReply =
        ask(client, "md.api.monitor.stop", r#"{"symbol":"ETH-USD"}"#).await;
    assert!(stopped.monitors.is_empty());
    let all: MonitorStatusReply = ask(client, "md.api.monitor.status", "{}").await;
    assert_eq!(monitors(&all), [default("BTC-USD"), default("SOL-USDC")]);
    let again: MonitorStatusReply =
        ask(client, "md.api.monitor.stop", r#"{"symbol":"ETH-USD"}"#).await;
    assert!(again.monitors.is_empty(), "stopping twice is not an error");

    for (subject, body, code, needle) in [
        (
            "md.api.monitor.start",
            r#"{"symbol":"XRP-USD"}"#,
            "unknown_symbol",
            "XRP-USD",
        ),
        (
            "md.api.monitor.start",
            r#"{"symbol":"BTC-USD","threshold_pct":0}"#,
            "bad_request",
            "0 is not in (0, 100]",
        ),
        (
            "md.api.monitor.start",
            r#"{"symbol":"BTC-USD","threshold_pct":101}"#,
            "bad_request",
            "101 is not in (0, 100]",
        ),
        (
            "md.api.monitor.start",
            r#"{"symbol":"BTC-USD","window_s":0}"#,
            "bad_request",
            "0 is not in (0, 86400]",
        ),
        (
            "md.api.monitor.start",
            r#"{"symbol":"BTC-USD","treshold_pct":1}"#,
            "bad_request",
            "unknown field",
        ),
        (
            "md.api.monitor.start",
            "{nope",
            "bad_request",
            "key must be a string",
        ),
        (
            "md.api.monitor.stop",
            "{}",
            "bad_request",
            "missing field `symbol`",
        ),
        (
            "md.api.monitor.stop",
            r#"{"symbol":"XRP-USD"}"#,
            "unknown_symbol",
            "XRP-USD",
        ),
        (
            "md.api.monitor.status",
            r#"{"symbol":"XRP-USD"}"#,
            "unknown_symbol",
            "XRP-USD",
        ),
        (
            "md.api.monitor.status",
            r#"{"symbol":"btc-usd"}"#,
            "bad_request",
            "symbol",
        ),
    ] {
        let (got, message) = error_code(client, subject, body).await;
        assert_eq!(got, code, "{subject} {body}: {message}");
        assert!(message.contains(needle), "{subject} {body}: {message}");
    }

    // A tiny threshold alerts within moments; after `stop` is answered, no more.
    let _: MonitorStatusReply = ask(
        client,
        "md.api.monitor.start",
        r#"{"symbol":"BTC-USD","threshold_pct":0.0001,"window_s":60}"#,
    )
    .await;
    let alert: PriceAlert = next(&mut subs[0]).await;
    assert_eq!(
        (
            alert.symbol.as_str(),
            alert.venue.as_str(),
            alert.threshold_pct
        ),
        ("BTC-USD", "sim", 0.0001)
    );
    assert!(alert.change_pct.abs() >= 0.0001, "{alert:?}");
    let _: MonitorStatusReply = ask(client, "md.api.monitor.stop", r#"{"symbol":"BTC-USD"}"#).await;
    // Alerts published before the stop reply arrived before it (one connection, in
    // order) and wait in the subscription already: drain them (briefly), then no
    // alert comes within a second of ticks.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_until {
        match tokio::time::timeout(Duration::from_millis(100), subs[0].next()).await {
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    let quiet = tokio::time::timeout(Duration::from_millis(1000), subs[0].next()).await;
    assert!(
        quiet.is_err(),
        "an alert after the monitor stopped: {quiet:?}"
    );
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let port = moonbus_common::testing::free_port();
    let addr = format!("\"127.0.0.1:{port}\"");
    let (_running, mut subs) = start_with(
        &["md.tick.sim.ETH-USD"],
        &[("MOONBUS__MARKET_DATA__METRICS_ADDR", addr.as_str())],
    )
    .await;
    for _ in 0..20 {
        let _: Tick = next(&mut subs[0]).await;
    }
    let get = |path: &'static str| async move {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to metrics");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
            .await
            .expect("in time")
            .unwrap();
        text
    };
    let text = get("/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(value("md_ticks_out_total{venue=\"sim\"}") >= 20.0);
    assert!(
        value("md_ticks_in_total{venue=\"sim\"}") >= value("md_ticks_out_total{venue=\"sim\"}")
    );
    assert!(value("md_publish_latency_seconds_count") >= 1.0);
    assert_eq!(value("md_reconnects_total{venue=\"sim\"}"), 0.0);
    for name in [
        "md_gaps_total",
        "md_stale_symbols",
        "md_alerts_total",
        "md_bars_out_total",
        "md_dropped_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}: {text}");
    }
    assert!(get("/other").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_stall_the_feed() {
    // 1000 symbols at 1 ms each: as much as the engine can publish.
    let symbols: Vec<String> = (0..1000).map(|i| format!("S{i:04}-USD")).collect();
    let symbols = serde_json::to_string(&symbols).unwrap();
    let (running, mut subs) = start_with(
        &["md.tick.sim.S0001-USD"],
        &[
            ("MOONBUS__SYSTEM__SYMBOLS", symbols.as_str()),
            ("MOONBUS__MARKET_DATA__TICK_INTERVAL_MS", "1"),
        ],
    )
    .await;
    // A raw client subscribed to everything that never reads its socket.
    let mut stuck = TcpStream::connect(("127.0.0.1", running.server.port))
        .await
        .unwrap();
    stuck
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB md.> 1\r\nPING\r\n")
        .await
        .unwrap();
    // For five seconds (long enough to fill its buffers), every second brings fresh
    // ticks to the reader that keeps up, and the API answers.
    let mut last_seq = 0;
    for _ in 0..5 {
        let until = Instant::now() + Duration::from_secs(1);
        let mut seen = 0;
        while Instant::now() < until {
            let tick: Tick = next(&mut subs[0]).await;
            assert!(tick.seq > last_seq);
            last_seq = tick.seq;
            seen += 1;
        }
        assert!(seen > 0);
        let reply: PriceReply =
            ask(&running.client, "md.api.price", r#"{"symbol":"S0999-USD"}"#).await;
        assert_eq!(reply.tick.symbol, "S0999-USD");
    }
    drop(stuck);
}

#[tokio::test]
async fn series_are_bounded_by_max_series() {
    let rows: String = (0..30)
        .map(|i| format!("{},N{i:02}-USD,1\n", T0 + i * MS))
        .collect();
    let file = TempFile::new("many.csv", &format!("ts,symbol,price\n{rows}"));
    let files = format!("[{:?}]", file.path);
    let mut env = replay_env(&files, "0");
    env.push(("MOONBUS__MARKET_DATA__MAX_SERIES", "10"));
    let (running, mut subs) = start_with(&["md.tick.replay.>", "md.status.replay"], &env).await;
    loop {
        let status: FeedStatus = next(&mut subs[1]).await;
        if status.status == FeedState::ReplayDone {
            break;
        }
    }
    let mut published = BTreeSet::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), subs[0].next()).await {
        published.insert(m.subject.to_string());
    }
    assert_eq!(published.len(), 10, "{published:?}");
    assert!(
        published.contains("md.tick.replay.N00-USD")
            && published.contains("md.tick.replay.N09-USD")
    );
    let (code, _) = error_code(&running.client, "md.api.price", r#"{"symbol":"N20-USD"}"#).await;
    assert_eq!(code, "unknown_symbol");
}
