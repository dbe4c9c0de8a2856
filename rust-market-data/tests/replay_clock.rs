//! `replay_clock = "file"`: ticks keep the file's time and the replayed bars follow
//! it, so a replay as fast as the bus takes it publishes exactly the file's bars.
//! A real nats-server, the real binary, a plain NATS client.

mod support;

use std::time::Duration;

use futures::StreamExt;
use moonbus_common::{Bar, FeedState, FeedStatus, Tick};

use support::{next, start_with, TempFile, WAIT};

/// 2025-11-26T04:00:00Z: long ago for the wall clock.
const T0: u64 = 1_764_129_600_000_000_000;
const MIN: u64 = 60_000_000_000;

/// (subject, start_ts, open, high, low, close, volume)
type BarRow = (String, u64, String, String, String, String, String);

fn row(subject: &str, bar: &Bar) -> BarRow {
    (
        subject.to_string(),
        bar.start_ts,
        bar.open.to_string(),
        bar.high.to_string(),
        bar.low.to_string(),
        bar.close.to_string(),
        bar.volume.to_string(),
    )
}

/// Every bar published until `replay_done`, in publication order, and the ticks' times.
async fn replay(file: &TempFile, extra: &[(&str, &str)]) -> (Vec<BarRow>, Vec<u64>, FeedStatus) {
    let files = format!("[{:?}]", file.path);
    let mut env = vec![
        ("MOONBUS__MARKET_DATA__FEEDS", r#"["replay"]"#),
        ("MOONBUS__MARKET_DATA__REPLAY_FILES", files.as_str()),
        ("MOONBUS__MARKET_DATA__REPLAY_SPEED", "0"),
        ("MOONBUS__MARKET_DATA__REPLAY_CLOCK", "\"file\""),
        ("MOONBUS__MARKET_DATA__BAR_INTERVALS", r#"["1m", "5m"]"#),
    ];
    env.extend_from_slice(extra);
    // One subscription for bars, ticks and the status: the order they were published in.
    let (_running, mut subs) = start_with(&["md.>"], &env).await;
    let (mut bars, mut ticks) = (Vec::new(), Vec::new());
    let done = loop {
        let m = tokio::time::timeout(WAIT, subs[0].next())
            .await
            .expect("replay_done in time")
            .expect("open");
        let subject = m.subject.as_str();
        if subject.starts_with("md.bar.") {
            let bar: Bar = serde_json::from_slice(&m.payload).unwrap();
            bars.push(row(subject, &bar));
        } else if subject.starts_with("md.tick.") {
            let tick: Tick = serde_json::from_slice(&m.payload).unwrap();
            ticks.push(tick.ts);
        } else if subject == "md.status.replay" {
            let status: FeedStatus = serde_json::from_slice(&m.payload).unwrap();
            if status.status == FeedState::ReplayDone {
                break status;
            }
        }
    };
    // Nothing more after replay_done (the wall clock closes none of the replayed bars).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), subs[0].next()).await {
        assert!(
            !m.subject.starts_with("md.bar."),
            "a bar after replay_done: {}",
            m.subject
        );
    }
    (bars, ticks, done)
}

#[tokio::test]
async fn a_full_speed_replay_on_the_file_clock_publishes_the_files_bars() {
    // BTC-USD: 12 one-minute bars; ETH-USD: a bar at 0 and one at 10 min only (quiet).
    let mut text = String::from("ts,symbol,interval,open,high,low,close,volume\n");
    let mut expected_btc = Vec::new();
    for i in 0..12u64 {
        let o = 100 + i;
        let (h, l, c) = (o + 3, o - 2, o + 1);
        text += &format!("{},BTC-USD,1m,{o},{h},{l},{c},{i}.5\n", T0 + i * MIN);
        if i == 0 || i == 10 {
            text += &format!("{},ETH-USD,1m,50,51,49,50.5,1\n", T0 + i * MIN);
        }
        let subject = "md.bar.1m.replay.BTC-USD";
        expected_btc.push((
            subject.to_string(),
            T0 + i * MIN,
            o.to_string(),
            h.to_string(),
            l.to_string(),
            c.to_string(),
            format!("{i}.5"),
        ));
    }
    let file = TempFile::new("bars.csv", &text);
    let (bars, ticks, done) = replay(&file, &[]).await;

    assert!(
        done.detail.contains("replayed 56 ticks from 14 rows"),
        "{}",
        done.detail
    );
    assert_eq!(ticks.len(), 56);
    assert!(
        ticks.iter().all(|&ts| (T0..T0 + 12 * MIN).contains(&ts)),
        "the ticks keep the file's time"
    );
    let minute_btc: Vec<BarRow> = bars
        .iter()
        .filter(|b| b.0 == "md.bar.1m.replay.BTC-USD")
        .cloned()
        .collect();
    assert_eq!(minute_btc, expected_btc, "the file's bars, one each");
    let eth: Vec<u64> = bars
        .iter()
        .filter(|b| b.0 == "md.bar.1m.replay.ETH-USD")
        .map(|b| b.1)
        .collect();
    assert_eq!(eth, [T0, T0 + 10 * MIN]);
    // The quiet symbol's bar closes when the file's time passes its end (BTC's next
    // bar), not at its own next tick ten minutes later.
    let position = |subject: &str, start: u64| {
        bars.iter()
            .position(|b| b.0 == subject && b.1 == start)
            .unwrap()
    };
    assert!(
        position("md.bar.1m.replay.ETH-USD", T0) < position("md.bar.1m.replay.BTC-USD", T0 + MIN)
    );
    // 5m bars are built from the 1m bars; the last one (10-12 min) closed at the end.
    let five: Vec<(u64, String, String, String, String)> = bars
        .iter()
        .filter(|b| b.0 == "md.bar.5m.replay.BTC-USD")
        .map(|b| (b.1, b.2.clone(), b.3.clone(), b.4.clone(), b.5.clone()))
        .collect();
    let s = |n: u64| n.to_string();
    assert_eq!(
        five,
        [
            (T0, s(100), s(107), s(98), s(105)),
            (T0 + 5 * MIN, s(105), s(112), s(103), s(110)),
            (T0 + 10 * MIN, s(110), s(114), s(108), s(112)),
        ]
    );
    assert_eq!(bars.len(), 12 + 2 + 3 + 2, "no other bar");
}

#[tokio::test]
async fn the_wall_clock_replay_is_unchanged() {
    // The default clock: stamped when published, so five minutes of file squash into
    // the wall clock's second or two, and the wall clock closes that bar.
    let text: String = (0..5u64)
        .map(|i| format!("{},BTC-USD,{}\n", T0 + i * MIN, 100 + i))
        .collect();
    let file = TempFile::new("ticks.csv", &format!("ts,symbol,price\n{text}"));
    let files = format!("[{:?}]", file.path);
    let started = moonbus_common::now_ns();
    let (_running, mut subs) = start_with(
        &["md.bar.1s.replay.BTC-USD"],
        &[
            ("MOONBUS__MARKET_DATA__FEEDS", r#"["replay"]"#),
            ("MOONBUS__MARKET_DATA__REPLAY_FILES", files.as_str()),
            ("MOONBUS__MARKET_DATA__REPLAY_SPEED", "0"),
            ("MOONBUS__MARKET_DATA__BAR_INTERVALS", r#"["1s"]"#),
        ],
    )
    .await;
    let mut trades = 0;
    while trades < 5 {
        let bar: Bar = next(&mut subs[0]).await;
        assert!(bar.start_ts + 1_000_000_000 > started, "a wall-clock bar");
        trades += bar.trades;
    }
    assert_eq!(trades, 5);
}
