//! rust-risk against the numbers of issue 10 ("no input crashes a service"), end to end:
//! a real nats-server, the real binary, checks on `risk.api.check`, ticks on core NATS
//! and fills in the EXEC stream.
//!
//! The attack: an order whose quantity x price overflows a 96-bit decimal panicked the
//! check, and every later order was REJECTED risk_unavailable. Now the contract refuses
//! money past 1e14 at the edge (a `bad_request` reply), the largest figures it admits
//! are refused by the rules with a code, risk keeps approving the next order, and a fill
//! too large to book halts the account with the code `overflow` instead of a panic.

use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::testing::{self, ChildGuard, NatsServer};
use moonbus_common::{bus, PositionsReply};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_rust-risk");
const WAIT: Duration = Duration::from_secs(20);
const TS: u64 = 1_764_130_000_000_000_000;
/// The largest money the contract admits, and the attack's quantity (Decimal::MAX).
const MAX: &str = "99999999999999.99999999999999";
const DECIMAL_MAX: &str = "79228162514264337593543950335";

struct System {
    client: Client,
    js: async_nats::jetstream::Context,
    ticks: JoinHandle<()>,
    risk: ChildGuard,
    _server: NatsServer,
}

impl Drop for System {
    fn drop(&mut self) {
        self.ticks.abort();
    }
}

/// BTC-USD ticks at 99000 every 50 ms; limits wide open so that the extreme orders get
/// as far as the arithmetic, rate limits off; `fills` are in EXEC before risk starts.
async fn start(fills: &[Value], circuit_breaker_pct: &str) -> System {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url.as_str())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    testing::provision_streams(&client).await;
    for fill in fills {
        publish_report(&js, fill).await;
    }
    let publisher = client.clone();
    let ticks = tokio::spawn(async move {
        for seq in 0u64.. {
            let tick =
                json!({"venue": "sim", "symbol": "BTC-USD", "price": "99000", "seq": seq, "ts": 1});
            let _ = publisher.publish("md.tick.sim.BTC-USD", body(&tick)).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let env = [
        ("MOONBUS__RISK__HEARTBEAT_MS", "200"),
        ("MOONBUS__RISK__METRICS_ADDR", "\"\""),
        ("MOONBUS__RISK__STARTING_CASH", "\"1000000\""),
        ("MOONBUS__RISK__MAX_POSITION_NOTIONAL", "\"99999999999999\""),
        ("MOONBUS__RISK__MAX_GROSS_EXPOSURE", "\"99999999999999\""),
        ("MOONBUS__RISK__MAX_DAILY_LOSS", "\"99999999999999\""),
        ("MOONBUS__RISK__MAX_DRAWDOWN_PCT", "100"),
        ("MOONBUS__RISK__MIN_CASH", "\"-99999999999999\""),
        ("MOONBUS__RISK__CIRCUIT_BREAKER_PCT", circuit_breaker_pct),
        ("MOONBUS__RISK__RATE_LIMIT_AGENT", "0"),
        ("MOONBUS__RISK__RATE_LIMIT_GLOBAL", "0"),
        ("MOONBUS__RISK__MAX_OPEN_ORDERS", "0"),
        ("MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL", "0"),
    ];
    let risk = ChildGuard::spawn(BIN, &server.url, &env);
    System {
        client,
        js,
        ticks,
        risk,
        _server: server,
    }
}

fn body(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap())
}

async fn publish_report(js: &async_nats::jetstream::Context, report: &Value) {
    let symbol = report["symbol"].as_str().unwrap_or("BTC-USD").to_string();
    js.publish(format!("exec.report.{symbol}"), body(report))
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

fn fill(id: &str, symbol: &str, side: &str, quantity: &str, price: &str, fee: &str) -> Value {
    json!({
        "client_order_id": id, "order_id": format!("sim-{id}"), "agent": "trading",
        "symbol": symbol, "venue": "sim", "side": side, "status": "FILLED",
        "quantity": quantity, "filled_quantity": quantity, "last_fill_price": price,
        "last_fill_quantity": quantity, "avg_fill_price": price, "fee": fee,
        "timings": {}, "ts": TS,
    })
}

fn check(id: &str, side: &str, quantity: &str, ref_price: &str) -> Value {
    json!({
        "client_order_id": id, "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
        "side": side, "type": "MARKET", "quantity": quantity, "ref_price": ref_price, "ts": TS,
    })
}

async fn ask(client: &Client, payload: Bytes) -> Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("risk.api.check", payload),
    )
    .await
    .expect("risk answers within 5 s")
    .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

fn code(reply: &Value) -> &str {
    if reply["approved"] == json!(true) {
        "approved"
    } else if let Some(code) = reply["reason_code"].as_str() {
        code
    } else {
        reply["error"]["code"].as_str().unwrap_or("?")
    }
}

/// The first normal order that gets past "no tick yet" (risk is up and has a mark).
async fn approved_once_ready(client: &Client, prefix: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    for attempt in 0.. {
        let id = format!("{prefix}-{attempt}");
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            client.request("risk.api.check", body(&check(&id, "BUY", "0.001", "99000"))),
        )
        .await;
        if let Ok(Ok(reply)) = reply {
            let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON");
            if !matches!(code(&reply), "no_market_data" | "not_ready") {
                return reply;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "risk never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

fn assert_alive(system: &mut System) {
    assert!(
        system.risk.0.try_wait().expect("child status").is_none(),
        "rust-risk exited"
    );
}

#[tokio::test]
async fn the_overflow_attack_is_refused_with_a_code_and_the_next_order_approved() {
    let mut system = start(&[], "0").await;
    let client = system.client.clone();
    assert_eq!(
        code(&approved_once_ready(&client, "before").await),
        "approved"
    );

    // The attack: Decimal::MAX x a price that overflows. Refused at the edge.
    for (id, quantity, price) in [
        ("attack-1", DECIMAL_MAX, "99000"),
        ("attack-2", DECIMAL_MAX, DECIMAL_MAX),
        ("attack-3", "1", DECIMAL_MAX),
        ("attack-4", "100000000000000", "100000000000000"),
    ] {
        let reply = ask(&client, body(&check(id, "BUY", quantity, price))).await;
        assert_eq!(code(&reply), "bad_request", "{id}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("out of range"), "{id}: {message}");
    }
    // The largest figures the contract admits: 1e28 of notional, refused by a rule.
    for side in ["BUY", "SELL"] {
        let reply = ask(
            &client,
            body(&check(&format!("max-{side}"), side, MAX, MAX)),
        )
        .await;
        assert_eq!(code(&reply), "max_order_notional", "{reply}");
        assert!(
            reply["reason"].as_str().unwrap().contains("9999999999999"),
            "{reply}"
        );
    }
    // A LIMIT at the top of the range is a fat finger: the price band (off 1e11 %).
    let mut limit = check("max-limit", "BUY", "0.001", MAX);
    limit["type"] = json!("LIMIT");
    limit["limit_price"] = json!(MAX);
    assert_eq!(
        code(&ask(&client, body(&limit)).await),
        "price_band",
        "the band's percentage of a 1e14 limit fits"
    );
    // A position the contract could not carry is refused before it exists.
    let tiny = "0.0000000000000000000000000001";
    let big = ask(
        &client,
        body(&check("max-qty", "BUY", "99999999999999", tiny)),
    )
    .await;
    assert_eq!(
        code(&big),
        "approved",
        "1e14 at 1e-28 is 1e-14 of notional: {big}"
    );
    let over = ask(&client, body(&check("over-qty", "BUY", "1", tiny))).await;
    assert_eq!(code(&over), "overflow", "{over}");
    assert!(over["reason"].as_str().unwrap().contains("1e14"), "{over}");

    // What no decimal or integer holds, NaN, exponents, nesting and huge strings.
    // A check whose `field` is the raw JSON `value` (what a `Value` cannot hold).
    let order = |field: &str, value: &str| {
        let mut fields = check("bad", "BUY", "1", "99000")
            .as_object()
            .cloned()
            .unwrap();
        fields.remove(field);
        let rest = Value::Object(fields).to_string();
        Bytes::from(format!("{{\"{field}\":{value},{}", &rest[1..]))
    };
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!("\"{}\"", "9".repeat(500_000));
    for (field, value) in [
        ("quantity", "\"NaN\""),
        ("quantity", "\"Infinity\""),
        ("quantity", "\"1e400\""),
        ("quantity", "1e400"),
        ("quantity", "\"-1\""),
        ("quantity", "\"0\""),
        ("quantity", deep.as_str()),
        ("quantity", huge.as_str()),
        ("ref_price", "\"0.00000000000000000000000000001\""),
        ("ts", "18446744073709551616"),
        ("ts", "-1"),
        ("ts", "1.5"),
        ("client_order_id", huge.as_str()),
    ] {
        let reply = ask(&client, order(field, value)).await;
        assert_eq!(
            code(&reply),
            "bad_request",
            "{field} = {:.40}: {reply:.200}",
            value
        );
        assert!(
            reply["error"]["message"].as_str().unwrap().len() < 300,
            "the reply quotes at most a short excerpt"
        );
    }
    assert_eq!(code(&ask(&client, Bytes::from(deep)).await), "bad_request");

    // Risk is still there and approves the next normal order, once execution's report
    // ends the huge order it approved (whose reservation holds the position limit).
    assert_alive(&mut system);
    let rejected = json!({
        "client_order_id": "max-qty", "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
        "side": "BUY", "status": "REJECTED", "reason": "test: not routed", "timings": {}, "ts": TS,
    });
    publish_report(&system.js, &rejected).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    for n in 0.. {
        let next = ask(
            &client,
            body(&check(&format!("after-{n}"), "BUY", "0.001", "99000")),
        )
        .await;
        if code(&next) == "approved" {
            break;
        }
        assert_eq!(code(&next), "max_position_notional", "{next}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never approved again: {next}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn extreme_ticks_and_fills_keep_risk_answering_and_an_unbookable_fill_halts() {
    // In EXEC before risk starts: the largest fill the contract admits (1e28 notional),
    // and the rebuild books it.
    let first = fill("f-0", "ETH-USD", "BUY", MAX, MAX, MAX);
    let mut system = start(&[first], "5").await;
    let client = system.client.clone();
    let mut errors = client.subscribe("errors.risk").await.unwrap();
    client.flush().await.unwrap();
    approved_once_ready(&client, "ready").await;

    // Marks from 1e-28 to 1e14 and back (a move of 1e44 %, past any decimal): the
    // circuit breaker trips, nothing panics.
    for price in [
        "0.0000000000000000000000000001",
        MAX,
        "0.0000000000000000000000000001",
        "3600",
    ] {
        let tick = json!({"venue": "sim", "symbol": "ETH-USD", "price": price, "seq": 1, "ts": 1});
        client
            .publish("md.tick.sim.ETH-USD", body(&tick))
            .await
            .unwrap();
    }
    // Positions, account and verdicts stay readable by the contract's decoders: figures
    // past 1e14 (the -1e28 cash) are written as the end of the range.
    let positions = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("risk.api.positions", Bytes::from_static(b"{}")),
    )
    .await
    .unwrap()
    .unwrap();
    let reply: PositionsReply = bus::decode(&positions.payload).expect("a valid PositionsReply");
    assert_eq!(reply.account.cash.to_string(), format!("-{MAX}"));
    assert_eq!(reply.positions[0].quantity.to_string(), MAX);

    // Sales of 1e28 each: the first closes the long, the next seven take the cash to
    // 7e28, the ninth would pass 7.9e28 and cannot be booked. errors.risk says so, the
    // account halts with `overflow`, and risk keeps answering.
    for n in 1..=9 {
        publish_report(
            &system.js,
            &fill(&format!("s-{n}"), "ETH-USD", "SELL", MAX, MAX, "0"),
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, errors.next())
            .await
            .expect("an overflow on errors.risk")
            .expect("subscription open");
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        if event["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("overflow: ")
        {
            break;
        }
    }
    let reply = ask(&client, body(&check("halted", "BUY", "0.001", "99000"))).await;
    assert_eq!(code(&reply), "overflow", "{reply}");
    assert_eq!(reply["state"], "HALTED");
    assert_alive(&mut system);
}
