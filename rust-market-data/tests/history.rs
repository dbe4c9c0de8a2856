//! Bar history across restarts (history.rs): the real binary on a real nats-server
//! with JetStream (the stream BARS created from proto/nats/jetstream.json, as the
//! test server has no permissions), stopped and started again.

mod support;

use std::time::Duration;

use async_nats::jetstream;
use moonbus_common::{Bar, ErrorEvent, HistoryReply, Tick};
use rust_decimal::Decimal;

use support::{ask, next, spawn, start, wait_serving};

const HISTORY: &str = r#"{"symbol":"BTC-USD","interval":"1s","limit":1000}"#;

fn starts(bars: &[Bar]) -> Vec<u64> {
    bars.iter().map(|b| b.start_ts).collect()
}

#[tokio::test]
async fn a_restarted_market_data_answers_history_with_the_bars_from_before() {
    let (mut running, mut subs) = start(&["md.bar.1s.sim.BTC-USD", "errors.market-data"]).await;
    let mut errors = subs.pop().unwrap();
    let mut bars = subs.pop().unwrap();
    // Three closed 1s bars, then stop (SIGTERM).
    let mut published: Vec<Bar> = Vec::new();
    while published.len() < 3 {
        published.push(next(&mut bars).await);
    }
    let before: HistoryReply = ask(&running.client, "md.api.history", HISTORY).await;
    assert!(before.bars.len() >= 3);
    assert!(running.service.terminate().success());
    // Nothing runs for over a second: a gap, which must stay one.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A stored message that is no bar of its subject (junk, or another series' bar):
    // refused on reload, the rest still taken back.
    let js = jetstream::new(running.client.clone());
    let mut wrong = published[0].clone();
    wrong.start_ts += 500_000_000;
    wrong.end_ts += 500_000_000;
    js.publish(
        "md.bar.1s.sim.BTC-USD",
        serde_json::to_vec(&wrong).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .expect("stored in BARS");

    // Started again with another configured start price: the sim goes on from the last
    // close in the history instead (no made-up jump for the strategies across a restart).
    let mut ticks = running
        .client
        .subscribe("md.tick.sim.BTC-USD")
        .await
        .unwrap();
    running.service = spawn(
        &running.server.url,
        &[("MOONBUS__MARKET_DATA__START_PRICES__BTC-USD", "\"1000\"")],
    );
    wait_serving(&running.client).await;
    // The first answer already has every bar from before the stop, as they were.
    let after: HistoryReply = ask(&running.client, "md.api.history", HISTORY).await;
    assert!(
        after.bars.starts_with(&before.bars),
        "before: {:?}\nafter: {:?}",
        starts(&before.bars),
        starts(&after.bars)
    );
    for bar in &published {
        assert!(after.bars.contains(bar), "{bar:?} lost");
    }
    let tick: Tick = next(&mut ticks).await;
    let last_close = before.bars.last().unwrap().close.get();
    let moved = (tick.price.get() - last_close).abs() / last_close;
    assert!(
        moved < Decimal::new(1, 2),
        "first tick {} after a last close of {last_close}",
        tick.price
    );
    let event: ErrorEvent = next(&mut errors).await;
    assert!(
        event.reason.contains("1 stored bar(s) not taken back")
            && event.reason.contains("misaligned"),
        "{event:?}"
    );

    // New bars follow the old ones: strictly later starts, no second bar for any
    // start, and no bar made up for the seconds it was down.
    let last_before = before.bars.last().unwrap().start_ts;
    let first_after: Bar = loop {
        let bar: Bar = next(&mut bars).await;
        if bar.start_ts > last_before {
            break bar;
        }
    };
    let history: HistoryReply = ask(&running.client, "md.api.history", HISTORY).await;
    let got = starts(&history.bars);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert!(history.bars.contains(&first_after));
    let at = got.iter().position(|&s| s == first_after.start_ts).unwrap();
    assert!(
        got[at] - got[at - 1] >= 2_000_000_000,
        "the stop left a gap of at least one second: {got:?}"
    );
}
