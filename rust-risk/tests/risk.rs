//! rust-risk end to end: a real nats-server with JetStream, the real binary, ticks on
//! core NATS and execution reports in the EXEC stream, as execution would publish them.

use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;
use moonbus_common::testing::{self, ChildGuard, NatsServer};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_rust-risk");
const WAIT: Duration = Duration::from_secs(20);

struct Bus {
    client: Client,
    js: async_nats::jetstream::Context,
    ticks: JoinHandle<()>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.ticks.abort();
    }
}

/// Connect, create the streams, and keep ticks flowing for BTC-USD (99000) and ETH-USD
/// (3600): core NATS keeps nothing, so risk sees them whenever it starts.
async fn bus(server: &NatsServer) -> Bus {
    let client = async_nats::connect(server.url.as_str())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    moonbus_common::testing::provision_streams(&client).await;
    let publisher = client.clone();
    let ticks = tokio::spawn(async move {
        for seq in 0u64.. {
            for (symbol, price) in [("BTC-USD", "99000"), ("ETH-USD", "3600")] {
                let tick =
                    json!({"venue": "sim", "symbol": symbol, "price": price, "seq": seq, "ts": 1});
                let _ = publisher
                    .publish(format!("md.tick.sim.{symbol}"), body(&tick))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    Bus { client, js, ticks }
}

fn start_risk(server: &NatsServer) -> ChildGuard {
    start_risk_with(server, "\"\"")
}

/// `metrics_addr`: a TOML string (`"\"\""` = no metrics endpoint).
fn start_risk_with(server: &NatsServer, metrics_addr: &str) -> ChildGuard {
    let env = [
        ("MOONBUS__RISK__HEARTBEAT_MS", "200"),
        ("MOONBUS__RISK__METRICS_ADDR", metrics_addr),
    ];
    ChildGuard::spawn(BIN, &server.url, &env)
}

fn body(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap())
}

fn report(id: &str, side: &str, quantity: &str, price: &str, fee: &str) -> Value {
    json!({
        "client_order_id": id, "order_id": format!("sim-{id}"), "agent": "trading",
        "symbol": "BTC-USD", "venue": "sim", "side": side, "status": "FILLED",
        "quantity": quantity, "filled_quantity": quantity, "last_fill_price": price,
        "last_fill_quantity": quantity, "avg_fill_price": price, "fee": fee,
        "timings": {}, "ts": 1_764_130_000_000_000_000u64,
    })
}

async fn publish_report(bus: &Bus, payload: Bytes) {
    bus.js
        .publish("exec.report.BTC-USD", payload)
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

fn check(id: &str, side: &str, quantity: &str) -> Value {
    json!({
        "client_order_id": id, "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
        "side": side, "type": "MARKET", "quantity": quantity, "ref_price": "99000",
        "ts": 1_764_130_000_000_000_000u64,
    })
}

/// One request; None if nobody answered (yet) or the reply is not JSON.
async fn try_request(client: &Client, subject: &str, payload: Bytes) -> Option<Value> {
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(subject.to_string(), payload),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

async fn request(client: &Client, subject: &str, payload: &Value) -> Value {
    try_request(client, subject, body(payload))
        .await
        .unwrap_or_else(|| panic!("no reply on {subject}"))
}

/// Poll `probe` until it gives a value, for at most WAIT.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A BTC-USD check once risk has a tick for it (after a restart the first may
/// not have arrived yet); each attempt is a new order `<prefix>-<n>`.
async fn check_with_a_mark(client: &Client, prefix: &str) -> Value {
    let mut attempt = 0;
    eventually("a check with a mark", || {
        attempt += 1;
        let order = check(&format!("{prefix}-{attempt}"), "BUY", "0.001");
        async move {
            let reply = request(client, "risk.api.check", &order).await;
            (code(&reply) != "no_market_data").then_some(reply)
        }
    })
    .await
}

/// The positions reply once risk is rebuilt from EXEC.
async fn rebuilt(client: &Client) -> Value {
    eventually("the rebuild", || async {
        let reply = try_request(client, "risk.api.positions", Bytes::from_static(b"{}")).await?;
        reply.get("positions").is_some().then_some(reply)
    })
    .await
}

/// The positions reply once risk is rebuilt and has a mark for every position.
async fn ready_positions(client: &Client) -> Value {
    eventually("positions with a mark", || async {
        let reply = try_request(client, "risk.api.positions", Bytes::from_static(b"{}")).await?;
        let marked = reply["positions"]
            .as_array()?
            .iter()
            .all(|p| p.get("mark_price").is_some());
        marked.then_some(reply)
    })
    .await
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

async fn next_json(subscriber: &mut async_nats::Subscriber) -> Value {
    next_where(subscriber, "a message", |_| true).await
}

/// The next message on `subscriber` that satisfies `wanted`, within WAIT.
async fn next_where(
    subscriber: &mut async_nats::Subscriber,
    what: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("subscription open");
        let value: Value = serde_json::from_slice(&message.payload).expect("JSON");
        if wanted(&value) {
            return value;
        }
    }
}

#[tokio::test]
async fn positions_checks_kill_switch_and_bad_input() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    publish_report(&bus, body(&report("t-1", "BUY", "0.02", "97000", "1.94"))).await;
    publish_report(&bus, body(&report("t-2", "SELL", "0.01", "98000", "0.98"))).await;
    let mut accounts = client.subscribe("risk.account").await.unwrap();
    let mut verdicts = client.subscribe("risk.verdict.BTC-USD").await.unwrap();
    let _risk = start_risk(&server);

    // Positions and PnL, rebuilt from EXEC and marked at the tick.
    let reply = ready_positions(client).await;
    let p = &reply["positions"][0];
    assert_eq!(reply["positions"].as_array().unwrap().len(), 1);
    assert_eq!(p["symbol"], "BTC-USD");
    assert_eq!(p["quantity"], "0.01");
    assert_eq!(p["avg_price"], "97000");
    assert_eq!(p["mark_price"], "99000");
    assert_eq!(p["realized_pnl"], "10");
    assert_eq!(p["unrealized_pnl"], "20");
    assert_eq!(p["fees"], "2.92");
    assert_eq!(p["notional"], "990");
    let account = &reply["account"];
    // 10000 - 1940 + 980 - 2.92 = 9037.08; + 0.01 * 99000 = 10027.08.
    assert_eq!(account["cash"], "9037.08");
    assert_eq!(account["equity"], "10027.08");
    assert_eq!(account["state"], "ACTIVE");
    assert_eq!(account["open_positions"], 1);

    // risk.account and risk.verdict.<symbol> are published.
    let account = next_where(&mut accounts, "risk.account with the position", |a| {
        a["equity"] == "10027.08"
    })
    .await;
    assert_eq!(account["gross_exposure"], "990");
    let verdict = next_where(&mut verdicts, "an ACTIVE verdict", |v| {
        v["state"] == "ACTIVE"
    })
    .await;
    assert_eq!(verdict["position"], "0.01");

    // Checks: a small order passes, an oversized one is refused.
    let small = request(client, "risk.api.check", &check("c-small", "BUY", "0.001")).await;
    assert_eq!(
        (code(&small), small["client_order_id"].as_str()),
        ("approved", Some("c-small"))
    );
    let big = request(client, "risk.api.check", &check("c-big", "BUY", "0.02")).await;
    assert_eq!(code(&big), "max_order_notional");
    assert!(big["reason"].as_str().unwrap().contains("1980"), "{big}");

    // The kill switch: effective on the very next check; an event on risk.events.
    let mut events = client.subscribe("risk.events").await.unwrap();
    client.flush().await.unwrap();
    let engage = json!({"action": "engage", "actor": "alice", "reason": "exchange incident"});
    let state = request(client, "risk.api.killswitch.operator", &engage).await;
    assert_eq!(
        (state["engaged"].as_bool(), state["actor"].as_str()),
        (Some(true), Some("operator (alice)"))
    );
    let refused = request(client, "risk.api.check", &check("c-k1", "BUY", "0.001")).await;
    assert_eq!(
        (code(&refused), refused["state"].as_str()),
        ("kill_switch", Some("HALTED"))
    );
    let reducing = request(client, "risk.api.check", &check("c-k2", "SELL", "0.005")).await;
    assert_eq!(code(&reducing), "approved");
    let event = next_json(&mut events).await;
    assert_eq!(
        (event["engaged"].as_bool(), event["reason"].as_str()),
        (Some(true), Some("exchange incident"))
    );
    let flatten = json!({"action": "release", "flatten": true});
    assert_eq!(
        code(&request(client, "risk.api.killswitch.operator", &flatten).await),
        "bad_request"
    );
    let release = request(
        client,
        "risk.api.killswitch.operator",
        &json!({"action": "release", "actor": "bob"}),
    )
    .await;
    assert_eq!(release["engaged"], false);
    assert_eq!(next_json(&mut events).await["actor"], "operator (bob)");
    assert_eq!(
        code(&request(client, "risk.api.check", &check("c-k3", "BUY", "0.001")).await),
        "approved"
    );

    // Limits: read, change, refuse a bad change.
    let limits = request(client, "risk.api.limits.operator", &json!({})).await;
    assert_eq!(limits["limits"]["max_order_notional"], "1000");
    let changed = request(
        client,
        "risk.api.limits.operator",
        &json!({"set": {"max_order_notional": "50"}}),
    )
    .await;
    assert_eq!(changed["limits"]["max_order_notional"], "50");
    assert_eq!(
        code(&request(client, "risk.api.check", &check("c-l1", "BUY", "0.001")).await),
        "max_order_notional"
    );
    let bad = request(
        client,
        "risk.api.limits.operator",
        &json!({"set": {"max_order_notional": 50}}),
    )
    .await;
    assert_eq!(code(&bad), "bad_request");
    let release = json!({"set": {"max_order_notional": "1000"}, "release_loss_latch": true, "actor": "alice"});
    let released = request(client, "risk.api.limits.operator", &release).await;
    assert_eq!(released["limits"]["max_order_notional"], "1000");

    // Bad input: a reply with the serde message, and the service keeps answering.
    let reply = try_request(client, "risk.api.check", Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    assert_eq!(code(&reply), "bad_request");
    let mut unknown_field = check("c-x", "BUY", "0.001");
    unknown_field["reduce_onyl"] = json!(true);
    let reply = request(client, "risk.api.check", &unknown_field).await;
    assert_eq!(code(&reply), "bad_request");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reduce_onyl"),
        "{reply}"
    );
    let version = request(client, "risk.api.version", &json!({})).await;
    assert_eq!(version["service"], "risk");

    // A malformed report in EXEC and a malformed tick go to errors.risk, nothing breaks.
    let mut errors = client.subscribe("errors.risk").await.unwrap();
    client.flush().await.unwrap();
    publish_report(&bus, Bytes::from_static(b"{\"status\": \"FILLED\"")).await;
    let error = next_json(&mut errors).await;
    assert_eq!(
        (error["service"].as_str(), error["subject"].as_str()),
        (Some("risk"), Some("exec.report.BTC-USD"))
    );
    client
        .publish("md.tick.sim.BTC-USD", Bytes::from_static(b"{\"price\": 1}"))
        .await
        .unwrap();
    let error = next_json(&mut errors).await;
    assert_eq!(error["subject"], "md.tick.sim.BTC-USD");
    let reply = ready_positions(client).await;
    assert_eq!(reply["positions"][0]["quantity"], "0.01");

    // The NATS service API.
    let ping = try_request(client, "$SRV.PING.risk", Bytes::new())
        .await
        .expect("ping reply");
    assert_eq!(ping["name"], "risk");
}

#[tokio::test]
async fn restart_rebuilds_the_same_positions_from_exec() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let eth = |id: &str, side: &str, quantity: &str, price: &str, fee: &str| {
        let mut r = report(id, side, quantity, price, fee);
        r["symbol"] = json!("ETH-USD");
        body(&r)
    };
    publish_report(&bus, body(&report("r-1", "BUY", "0.01", "97000", "0.97"))).await;
    publish_report(&bus, eth("r-2", "BUY", "0.3", "3500", "1.05")).await;
    let mut risk = start_risk(&server);
    let first = ready_positions(client).await;
    assert_eq!(first["positions"].as_array().unwrap().len(), 2);

    // Live reports after the rebuild, on the same consumer; one republished twice.
    let flip = body(&report("r-3", "SELL", "0.015", "98000", "1.47"));
    publish_report(&bus, flip.clone()).await;
    publish_report(&bus, flip).await;
    publish_report(&bus, eth("r-4", "SELL", "0.1", "3550", "0.35")).await;
    let before = eventually("the live reports applied", || async {
        let reply = ready_positions(client).await;
        (reply["positions"][1]["quantity"] == "0.2").then_some(reply)
    })
    .await;
    let btc = &before["positions"][0];
    // Long 0.01 @ 97000, sold 0.015 @ 98000 once (the copy is skipped): +10, short 0.005 @ 98000.
    assert_eq!(
        (btc["symbol"].as_str(), btc["quantity"].as_str()),
        (Some("BTC-USD"), Some("-0.005"))
    );
    assert_eq!(
        (btc["avg_price"].as_str(), btc["realized_pnl"].as_str()),
        (Some("98000"), Some("10"))
    );
    let eth_position = &before["positions"][1];
    assert_eq!(
        (
            eth_position["avg_price"].as_str(),
            eth_position["realized_pnl"].as_str()
        ),
        (Some("3500"), Some("5"))
    );

    risk.kill();
    let _risk = start_risk(&server);
    let after = ready_positions(client).await;
    assert_eq!(after["positions"], before["positions"]);
    for key in ["cash", "realized_pnl", "fees", "open_positions"] {
        assert_eq!(after["account"][key], before["account"][key], "{key}");
    }
    assert_eq!(after["account"]["realized_pnl"], "15");
}

#[tokio::test]
async fn metrics_count_checks_reports_and_show_the_account() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    publish_report(&bus, body(&report("t-1", "BUY", "0.02", "97000", "1.94"))).await;
    publish_report(&bus, body(&report("t-2", "SELL", "0.01", "98000", "0.98"))).await;
    let port = testing::free_port();
    let _risk = start_risk_with(&server, &format!("\"127.0.0.1:{port}\""));
    ready_positions(client).await;
    let small = request(client, "risk.api.check", &check("m-small", "BUY", "0.001")).await;
    assert_eq!(code(&small), "approved");
    let big = request(client, "risk.api.check", &check("m-big", "BUY", "0.02")).await;
    assert_eq!(code(&big), "max_order_notional");

    // Counted before the reply; the gauges follow the published account.
    let text = eventually("the account in the metrics", || async move {
        let text = testing::scrape(port).await?;
        (testing::sample(&text, "risk_equity") == Some(10027.08)).then_some(text)
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let value =
        |name: &str| testing::sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
    assert_eq!(
        value("risk_checks_total{result=\"approved\",reason=\"none\"}"),
        1.0
    );
    assert_eq!(
        value("risk_checks_total{result=\"refused\",reason=\"max_order_notional\"}"),
        1.0
    );
    assert_eq!(value("risk_check_seconds_count"), 2.0);
    assert_eq!(value("risk_reports_applied_total"), 2.0);
    assert_eq!(value("risk_cash"), 9037.08);
    assert_eq!(value("risk_realized_pnl"), 10.0);
    assert_eq!(value("risk_unrealized_pnl"), 20.0);
    assert_eq!(value("risk_gross_exposure"), 990.0);
    assert_eq!(value("risk_open_positions"), 1.0);
    assert_eq!(value("risk_kill_switch"), 0.0);
}

#[tokio::test]
async fn checks_during_the_rebuild_fail_closed() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    // A backlog long enough that the rebuild outlasts a round trip by far.
    const REPORTS: usize = 20_000;
    for batch in 0..REPORTS / 1000 {
        // Acks awaited per batch: the client allows only so many in flight.
        let mut acks = Vec::with_capacity(1000);
        for i in batch * 1000..(batch + 1) * 1000 {
            // SOL-USDC has no ticks here: valued at its fill price, 20 * 100.
            let mut r = report(&format!("b-{i}"), "BUY", "0.001", "100", "0");
            r["symbol"] = json!("SOL-USDC");
            acks.push(
                bus.js
                    .publish("exec.report.SOL-USDC", body(&r))
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("stream ack");
        }
    }
    let _risk = start_risk(&server);
    let first = eventually("the check endpoint", || {
        try_request(
            client,
            "risk.api.check",
            body(&check("early", "BUY", "0.001")),
        )
    })
    .await;
    assert_eq!(
        (code(&first), first["state"].as_str()),
        ("not_ready", Some("HALTED"))
    );
    let early_positions = try_request(client, "risk.api.positions", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let rebuilt = rebuilt(client).await;
    assert!(
        early_positions.get("error").is_some() || early_positions == rebuilt,
        "positions must not be half-rebuilt: {early_positions}"
    );
    assert_eq!(rebuilt["positions"][0]["quantity"], "20");
    assert_eq!(
        code(&request(client, "risk.api.check", &check("late", "BUY", "0.001")).await),
        "approved"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let mut risk = start_risk(&server);
    ready_positions(&bus.client).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &risk.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = eventually("risk to exit", || {
        let exit = risk.0.try_wait().expect("wait");
        async move { exit }
    })
    .await;
    assert!(exit.success(), "exit status {exit}");
}

/// The value of `key` in the KV bucket `moonbus`, as JSON, once it satisfies `wanted`.
async fn kv_value(bus: &Bus, key: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let store = bus
        .js
        .get_key_value("moonbus")
        .await
        .expect("KV bucket moonbus");
    eventually(key, || async {
        let value = store.get(key).await.ok()??;
        let json: Value = serde_json::from_slice(&value).ok()?;
        wanted(&json).then_some(json)
    })
    .await
}

#[tokio::test]
async fn the_kill_switch_survives_a_sigkill_restart() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let mut risk = start_risk(&server);
    ready_positions(client).await;
    let engage = json!({"action": "engage", "actor": "alice", "reason": "venue outage"});
    assert_eq!(
        request(client, "risk.api.killswitch.operator", &engage).await["engaged"],
        true
    );
    let stored = kv_value(&bus, "risk.killswitch", |v| v["engaged"] == true).await;
    assert_eq!(stored["actor"], "operator (alice)");

    // A crash, not a clean stop; the new process starts engaged.
    risk.kill();
    let mut risk = start_risk(&server);
    ready_positions(client).await;
    let refused = request(client, "risk.api.check", &check("after-1", "BUY", "0.001")).await;
    assert_eq!(code(&refused), "kill_switch");
    let status = request(
        client,
        "risk.api.killswitch.operator",
        &json!({"action": "status"}),
    )
    .await;
    assert_eq!(
        (
            status["engaged"].as_bool(),
            status["actor"].as_str(),
            status["reason"].as_str()
        ),
        (Some(true), Some("operator (alice)"), Some("venue outage"))
    );
    let account = next_where(
        &mut client.subscribe("risk.account").await.unwrap(),
        "the account after the restart",
        |a| a["kill_switch"] == true,
    )
    .await;
    assert_eq!(account["state"], "HALTED");

    // A release is stored too: the next restart trades again.
    let release = json!({"action": "release", "actor": "bob", "reason": "venue back"});
    assert_eq!(
        request(client, "risk.api.killswitch.operator", &release).await["engaged"],
        false
    );
    kv_value(&bus, "risk.killswitch", |v| v["engaged"] == false).await;
    risk.kill();
    let _risk = start_risk(&server);
    ready_positions(client).await;
    let last = check_with_a_mark(client, "after-2").await;
    assert_eq!(code(&last), "approved");
}

#[tokio::test]
async fn flatten_sends_one_reduce_only_order_per_position_through_orders() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    publish_report(&bus, body(&report("p-1", "BUY", "0.02", "97000", "1.94"))).await;
    let mut eth = report("p-2", "SELL", "0.3", "3500", "1.05");
    eth["symbol"] = json!("ETH-USD");
    publish_report(&bus, body(&eth)).await;
    let _risk = start_risk(&server);
    ready_positions(client).await;
    let mut events = client.subscribe("risk.events").await.unwrap();
    client.flush().await.unwrap();

    let engage =
        json!({"action": "engage", "actor": "alice", "reason": "flatten all", "flatten": true});
    let state = request(client, "risk.api.killswitch.operator", &engage).await;
    assert_eq!(
        (state["engaged"].as_bool(), state["flatten_orders"].as_u64()),
        (Some(true), Some(2)),
        "{state}"
    );
    let event = next_json(&mut events).await;
    assert_eq!(
        (event["actor"].as_str(), event["flatten_orders"].as_u64()),
        (Some("operator (alice)"), Some(2))
    );

    // The orders are in the ORDERS stream, deduplicated on their client_order_id.
    let mut orders = bus.js.get_stream("ORDERS").await.expect("ORDERS");
    for (symbol, side, quantity, mark) in [
        ("BTC-USD", "SELL", "0.02", "99000"),
        ("ETH-USD", "BUY", "0.3", "3600"),
    ] {
        let stored = orders
            .get_last_raw_message_by_subject(&format!("orders.submit.killswitch.{symbol}"))
            .await
            .unwrap_or_else(|e| panic!("no flatten order for {symbol}: {e}"));
        let order: Value = serde_json::from_slice(&stored.payload).unwrap();
        let id = order["client_order_id"].as_str().unwrap();
        assert!(id.starts_with("ks-") && id.ends_with(symbol), "{id}");
        assert_eq!(
            stored.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(id)
        );
        let fields = [
            "agent",
            "symbol",
            "venue",
            "side",
            "type",
            "quantity",
            "reduce_only",
            "decision_price",
        ]
        .map(|k| order[k].clone());
        assert_eq!(
            fields,
            [
                json!("killswitch"),
                json!(symbol),
                json!("sim"),
                json!(side),
                json!("MARKET"),
                json!(quantity),
                json!(true),
                json!(mark)
            ]
        );
        // What execution does next: the check passes, kill switch or not.
        let mut check = check(id, side, quantity);
        check["symbol"] = json!(symbol);
        check["agent"] = json!("killswitch");
        check["reduce_only"] = json!(true);
        check["ref_price"] = json!(mark);
        assert_eq!(
            code(&request(client, "risk.api.check", &check).await),
            "approved"
        );
    }
    assert_eq!(orders.info().await.unwrap().state.messages, 2);
}

#[tokio::test]
async fn circuit_breaker_verdicts_and_the_account_are_kept_in_kv() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let _risk = start_risk(&server);
    ready_positions(client).await;
    let account = kv_value(&bus, "risk.account", |a| a["state"] == "ACTIVE").await;
    assert_eq!(account["cash"], "10000");
    // The bucket has proto/nats/jetstream.json's settings; opening it again (as the
    // next service to start does) changes nothing.
    let created = bus
        .js
        .get_stream("KV_moonbus")
        .await
        .unwrap()
        .cached_info()
        .clone();
    moonbus_common::streams::open_kv(&bus.js)
        .await
        .expect("open_kv again");
    let mut stream = bus.js.get_stream("KV_moonbus").await.unwrap();
    let config = &stream.info().await.unwrap().config;
    assert_eq!(
        (
            config.max_messages_per_subject,
            config.storage,
            config.allow_direct
        ),
        (1, async_nats::jetstream::stream::StorageType::File, true)
    );
    assert_eq!(stream.cached_info().created, created.created);
    kv_value(&bus, "risk.verdict.BTC-USD", |v| v["state"] == "ACTIVE").await;

    // SOL-USDC falls 6.7% at once: halted for circuit_breaker_halt_s (300 s).
    let mut verdicts = client.subscribe("risk.verdict.SOL-USDC").await.unwrap();
    client.flush().await.unwrap();
    for (seq, price) in [(1, "150"), (2, "140")] {
        let tick =
            json!({"venue": "sim", "symbol": "SOL-USDC", "price": price, "seq": seq, "ts": 1});
        client
            .publish("md.tick.sim.SOL-USDC", body(&tick))
            .await
            .unwrap();
    }
    let halted = next_where(&mut verdicts, "a circuit breaker halt", |v| {
        v["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("circuit_breaker")))
    })
    .await;
    assert_eq!(halted["state"], "HALTED");
    assert!(
        halted["detail"]
            .as_str()
            .unwrap()
            .contains("SOL-USDC moved -6.67% within 60 s"),
        "{halted}"
    );
    let until = halted["halted_until"].as_u64().unwrap();
    assert!(until > halted["ts"].as_u64().unwrap(), "{halted}");
    // Before the first tick the symbol was already HALTED (no_market_data): wait for the
    // breaker's verdict, not merely a HALTED one.
    let stored = kv_value(&bus, "risk.verdict.SOL-USDC", |v| {
        v["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("circuit_breaker")))
    })
    .await;
    assert_eq!(stored["halted_until"].as_u64(), Some(until));
    let mut buy = check("cb-1", "BUY", "1");
    buy["symbol"] = json!("SOL-USDC");
    buy["ref_price"] = json!("140");
    assert_eq!(
        code(&request(client, "risk.api.check", &buy).await),
        "circuit_breaker"
    );
    // Other symbols trade on.
    assert_eq!(
        code(&request(client, "risk.api.check", &check("cb-2", "BUY", "0.001")).await),
        "approved"
    );
}

/// A filled BUY of 30 SOL-USDC at 150 in EXEC: past max_daily_loss (500) once marked 20 lower.
async fn long_30_sol_at_150(bus: &Bus, id: &str) {
    let mut sol = report(id, "BUY", "30", "150", "0");
    sol["symbol"] = json!("SOL-USDC");
    bus.js
        .publish("exec.report.SOL-USDC", body(&sol))
        .await
        .expect("publish")
        .await
        .expect("stream ack");
}

/// Risk rebuilt with 30 SOL-USDC bought at 150 (`long_30_sol_at_150`) and a heartbeat of
/// 10 minutes: whatever it publishes during a test is what the test's input moved.
async fn rebuilt_long_sol_without_heartbeats(
    server: &NatsServer,
    bus: &Bus,
    id: &str,
) -> ChildGuard {
    long_30_sol_at_150(bus, id).await;
    let risk = start_risk_env(server, &[("MOONBUS__RISK__HEARTBEAT_MS", "600000")]);
    rebuilt(&bus.client).await;
    risk
}

fn tick(symbol: &str, seq: u64, price: &str) -> Value {
    json!({"venue": "sim", "symbol": symbol, "price": price, "seq": seq, "ts": 1})
}

#[tokio::test]
async fn a_tripped_loss_limit_stays_latched_across_a_restart_until_released() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    long_30_sol_at_150(&bus, "l-1").await;
    let sol_tick = |seq: u64, price: &str| tick("SOL-USDC", seq, price);
    let mut risk = start_risk(&server);
    rebuilt(client).await;
    let mut accounts = client.subscribe("risk.account").await.unwrap();
    client.flush().await.unwrap();
    // 30 SOL marked 20 lower: day PnL -600, past max_daily_loss 500.
    client
        .publish("md.tick.sim.SOL-USDC", body(&sol_tick(1, "130")))
        .await
        .unwrap();
    next_where(&mut accounts, "the loss limit", |a| {
        a["state"] == "REDUCE_ONLY"
    })
    .await;
    // The bounce: day PnL -30. Still reduce-only, latched.
    client
        .publish("md.tick.sim.SOL-USDC", body(&sol_tick(2, "149")))
        .await
        .unwrap();
    let bounced = next_where(&mut accounts, "the bounce", |a| a["day_pnl"] == "-30").await;
    assert_eq!(bounced["state"], "REDUCE_ONLY");
    assert_eq!(bounced["reasons"], json!(["max_daily_loss"]));
    let latch = kv_value(&bus, "risk.loss_latch", |v| v.is_object()).await;
    assert_eq!(latch["breaches"], json!(["max_daily_loss"]));

    risk.kill();
    // Only what the new process publishes from here on.
    let mut accounts = client.subscribe("risk.account").await.unwrap();
    client.flush().await.unwrap();
    let _risk = start_risk(&server);
    rebuilt(client).await;
    let after = next_where(&mut accounts, "the account after the restart", |a| {
        a["reasons"] != json!(["not_ready"])
    })
    .await;
    // No loss now (the fill is of an earlier day and SOL-USDC has no tick since the
    // restart: day PnL 0), yet the latch holds.
    assert_eq!(
        (
            after["state"].as_str(),
            after["reasons"].clone(),
            after["day_pnl"].as_str()
        ),
        (Some("REDUCE_ONLY"), json!(["max_daily_loss"]), Some("0"))
    );
    assert_eq!(
        code(&request(client, "risk.api.check", &check("l-2", "BUY", "0.001")).await),
        "account_reduce_only"
    );

    let release = json!({"release_loss_latch": true, "actor": "alice", "reason": "reviewed"});
    request(client, "risk.api.limits.operator", &release).await;
    next_where(&mut accounts, "the release", |a| a["state"] == "ACTIVE").await;
    kv_value(&bus, "risk.loss_latch", Value::is_null).await;
    assert_eq!(code(&check_with_a_mark(client, "l-3").await), "approved");
}

/// A report dated 1,000 days ahead (what a stolen execution credential may store in EXEC)
/// does not move risk's UTC day: a loss limit tripped after it latches for today, so the
/// next real day ends it (and measures its own loss from its own start).
#[tokio::test]
async fn a_report_dated_ahead_does_not_move_the_day() {
    const DAY: u64 = 86_400_000_000_000;
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let _risk = rebuilt_long_sol_without_heartbeats(&server, &bus, "ah-1").await;
    let today = moonbus_common::now_ns() / DAY;
    let mut ahead = report("ah-2", "BUY", "1", "150", "0");
    ahead["symbol"] = json!("SOL-USDC");
    ahead["ts"] = json!(moonbus_common::now_ns() + 1000 * DAY);
    bus.js
        .publish("exec.report.SOL-USDC", body(&ahead))
        .await
        .expect("publish")
        .await
        .expect("stream ack");
    eventually("the report dated ahead applied", || async {
        let reply = try_request(client, "risk.api.positions", Bytes::from_static(b"{}")).await?;
        let sol = reply["positions"]
            .as_array()?
            .iter()
            .find(|p| p["symbol"] == "SOL-USDC")?
            .clone();
        (sol["quantity"] == "31").then_some(())
    })
    .await;
    // 31 SOL marked 20 lower: past max_daily_loss, latched for today.
    client
        .publish("md.tick.sim.SOL-USDC", body(&tick("SOL-USDC", 1, "130")))
        .await
        .unwrap();
    let latch = kv_value(&bus, "risk.loss_latch", |v| v.is_object()).await;
    assert_eq!(latch["breaches"], json!(["max_daily_loss"]));
    assert!(latch["day"].as_u64().unwrap() <= today + 1, "{latch}");
    assert!(
        latch["since_ts"].as_u64().unwrap() < moonbus_common::now_ns() + DAY,
        "{latch}"
    );
}

/// Ticks that arrive together are applied in batches (rust-risk/src/ticks.rs), one
/// account sum per batch, but a symbol's second tick waits for the next batch: a dip
/// past the loss limit and its recovery published back to back, inside a burst of other
/// symbols' ticks, still latch the limit, and the account ends at the last marks.
#[tokio::test]
async fn a_dip_and_its_recovery_in_one_burst_of_ticks_still_latch_the_loss_limit() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let _risk = rebuilt_long_sol_without_heartbeats(&server, &bus, "b-1").await;
    let mut accounts = client.subscribe("risk.account").await.unwrap();
    client.flush().await.unwrap();
    // One write: 200 ticks of other symbols around SOL at 130 (day PnL -600, past 500)
    // and then at 150 (day PnL 0).
    let mut burst = Vec::new();
    for i in 0..200u64 {
        let symbol = format!("B{i:03}-USD");
        burst.push((format!("md.tick.sim.{symbol}"), tick(&symbol, 1, "10")));
        if i == 100 {
            burst.push(("md.tick.sim.SOL-USDC".into(), tick("SOL-USDC", 1, "130")));
            burst.push(("md.tick.sim.SOL-USDC".into(), tick("SOL-USDC", 2, "150")));
        }
    }
    for (subject, payload) in burst {
        client.publish(subject, body(&payload)).await.unwrap();
    }
    client.flush().await.unwrap();
    let settled = next_where(&mut accounts, "the account at the last marks", |a| {
        a["day_pnl"] == "0" && a["unrealized_pnl"] == "0"
    })
    .await;
    assert_eq!(
        (settled["state"].as_str(), settled["reasons"].clone()),
        (Some("REDUCE_ONLY"), json!(["max_daily_loss"])),
        "the dip to 130 was not seen: {settled}"
    );
    let latch = kv_value(&bus, "risk.loss_latch", |v| v.is_object()).await;
    assert_eq!(latch["breaches"], json!(["max_daily_loss"]));
}

/// An account that only ticks move goes out at most every 100 ms (publish.rs MARKS_EVERY),
/// and the latest one always goes out: 40 marks in 200 ms are not 40 accounts.
#[tokio::test]
async fn an_account_only_ticks_move_goes_out_at_most_every_100_ms_and_the_latest_always() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let _risk = rebuilt_long_sol_without_heartbeats(&server, &bus, "m-1").await;
    let mut accounts = client.subscribe("risk.account").await.unwrap();
    client.flush().await.unwrap();
    for i in 1..=40u64 {
        let price = format!("150.{i:02}");
        client
            .publish("md.tick.sim.SOL-USDC", body(&tick("SOL-USDC", i, &price)))
            .await
            .unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(600);
    while let Ok(Some(message)) = tokio::time::timeout_at(until, accounts.next()).await {
        seen.push(serde_json::from_slice::<Value>(&message.payload).unwrap());
    }
    let last = seen.last().expect("the account after the marks");
    // 30 SOL bought at 150, marked at 150.40 last.
    assert_eq!(last["unrealized_pnl"], "12", "{last}");
    assert!(
        (2..=6).contains(&seen.len()),
        "{} accounts for 40 marks in ~200 ms",
        seen.len()
    );
}

/// A tick moves only its own symbol's verdict, unless it moves the account's state: then
/// every verdict follows at once, not at the next heartbeat (10 minutes here).
#[tokio::test]
async fn an_account_state_moved_by_one_symbols_tick_reaches_every_verdict_at_once() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let _risk = rebuilt_long_sol_without_heartbeats(&server, &bus, "v-1").await;
    let mut btc = client.subscribe("risk.verdict.BTC-USD").await.unwrap();
    client.flush().await.unwrap();
    // BTC-USD marked by the bus's ticks (before or after risk was ready: its verdict is
    // published only when it changes, so the latest is the one in KV).
    kv_value(&bus, "risk.verdict.BTC-USD", |v| v["state"] == "ACTIVE").await;
    // 30 SOL marked 20 lower: day PnL -600, past max_daily_loss 500. No BTC-USD tick.
    client
        .publish("md.tick.sim.SOL-USDC", body(&tick("SOL-USDC", 1, "130")))
        .await
        .unwrap();
    let verdict = next_where(&mut btc, "BTC-USD following the account", |v| {
        v["state"] == "REDUCE_ONLY"
    })
    .await;
    assert_eq!(verdict["reasons"], json!(["max_daily_loss"]));
}

#[tokio::test]
async fn the_caller_is_the_subject_and_the_risk_agent_may_only_engage() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let _risk = start_risk(&server);
    ready_positions(client).await;
    // The risk agent engages (the payload claims to be the operator: recorded as a claim).
    let engage = json!({"action": "engage", "actor": "operator", "reason": "max loss"});
    let state = request(client, "risk.api.killswitch.risk-agent", &engage).await;
    assert_eq!(
        (state["engaged"].as_bool(), state["actor"].as_str()),
        (Some(true), Some("risk-agent"))
    );
    // ...but may not release it, change limits or release the loss latch.
    let release = json!({"action": "release", "actor": "operator"});
    let refused = request(client, "risk.api.killswitch.risk-agent", &release).await;
    assert_eq!(code(&refused), "forbidden", "{refused}");
    let raise = json!({"set": {"max_order_notional": "1000000"}});
    assert_eq!(
        code(&request(client, "risk.api.limits.risk-agent", &raise).await),
        "forbidden"
    );
    let unlatch = json!({"release_loss_latch": true});
    assert_eq!(
        code(&request(client, "risk.api.limits.risk-agent", &unlatch).await),
        "forbidden"
    );
    // Nothing changed: still engaged, limits as configured; reading is open.
    let status = request(
        client,
        "risk.api.killswitch.risk-agent",
        &json!({"action": "status"}),
    )
    .await;
    assert_eq!(status["engaged"], true);
    let limits = request(client, "risk.api.limits.risk-agent", &json!({})).await;
    assert_eq!(limits["limits"]["max_order_notional"], "1000");
    // A subject token no permission grants gets nothing but status.
    let stranger = request(client, "risk.api.killswitch.trading-agent", &engage).await;
    assert_eq!(code(&stranger), "forbidden");
    // The operator releases.
    let released = request(client, "risk.api.killswitch.operator", &release).await;
    assert_eq!(
        (released["engaged"].as_bool(), released["actor"].as_str()),
        (Some(false), Some("operator"))
    );
}

#[tokio::test]
async fn a_kill_switch_gone_from_kv_reads_as_engaged() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let mut risk = start_risk(&server);
    ready_positions(client).await;
    // The first start stores the released state, so the key exists from then on.
    kv_value(&bus, "risk.killswitch", |v| v["engaged"] == false).await;
    kv_value(&bus, "risk.account", |a| a["state"] == "ACTIVE").await;
    risk.kill();

    // Erased (a delete marker): engaged at the next start.
    let store = bus.js.get_key_value("moonbus").await.unwrap();
    store.delete("risk.killswitch").await.unwrap();
    let mut risk = start_risk(&server);
    ready_positions(client).await;
    let status = request(
        client,
        "risk.api.killswitch.operator",
        &json!({"action": "status"}),
    )
    .await;
    assert_eq!(status["engaged"], true, "{status}");
    assert!(
        status["reason"].as_str().unwrap().contains("erased"),
        "{status}"
    );
    let refused = request(client, "risk.api.check", &check("erased-1", "BUY", "0.001")).await;
    assert_eq!(code(&refused), "kill_switch");
    risk.kill();

    // Missing altogether while the account shows risk ran here before: a store that lost
    // the key. (The bucket denies purges, and no update may lift that, so a fresh bucket
    // with an account and no kill switch stands in for it.)
    let server = NatsServer::start();
    let fresh = self::bus(&server).await;
    let client = &fresh.client;
    let store = fresh.js.get_key_value("moonbus").await.unwrap();
    store
        .put("risk.account", Bytes::from_static(br#"{"state":"ACTIVE"}"#))
        .await
        .unwrap();
    let _risk = start_risk(&server);
    ready_positions(client).await;
    let status = request(
        client,
        "risk.api.killswitch.operator",
        &json!({"action": "status"}),
    )
    .await;
    assert_eq!(status["engaged"], true, "{status}");
    assert!(
        status["reason"].as_str().unwrap().contains("missing"),
        "{status}"
    );
}

// ------------------------------------------------------------ snapshots (issue 11)

fn start_risk_env(server: &NatsServer, extra: &[(&str, &str)]) -> ChildGuard {
    let mut env = vec![
        ("MOONBUS__RISK__HEARTBEAT_MS", "200"),
        ("MOONBUS__RISK__METRICS_ADDR", "\"\""),
    ];
    env.extend_from_slice(extra);
    ChildGuard::spawn(BIN, &server.url, &env)
}

/// Snapshots after every `n` reports only (no timer), so a test knows what each covers.
fn snapshot_every(n: &'static str) -> [(&'static str, &'static str); 2] {
    [
        ("MOONBUS__RISK__SNAPSHOT_INTERVAL_MS", "0"),
        ("MOONBUS__RISK__SNAPSHOT_EVERY_REPORTS", n),
    ]
}

/// Retention as an operator would bound it: EXEC keeps only its last `keep` reports.
async fn shrink_exec(bus: &Bus, keep: i64) {
    let mut config = bus
        .js
        .get_stream("EXEC")
        .await
        .expect("EXEC")
        .cached_info()
        .config
        .clone();
    config.max_messages = keep;
    bus.js.update_stream(config).await.expect("update EXEC");
}

/// The newest manifest of `service` once it covers EXEC up to `sequence`.
async fn manifest_covering(bus: &Bus, service: &str, sequence: u64) -> Value {
    let stream = bus.js.get_stream("SNAPSHOTS").await.expect("SNAPSHOTS");
    let subject = format!("snapshot.{service}.manifest");
    eventually(
        &format!("a {service} snapshot covering {sequence}"),
        || async {
            let message = stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .ok()?;
            let manifest: Value = serde_json::from_slice(&message.payload).ok()?;
            (manifest["exec_sequence"] == json!(sequence)).then_some(manifest)
        },
    )
    .await
}

#[tokio::test]
async fn a_snapshot_outlives_exec_retention_and_a_gap_fails_closed() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    // Reports of now: a final order's reports are remembered for a week after it ended
    // (applied.rs), and the copy of r-1 below must come within it.
    let report = |id: &str, side: &str, quantity: &str, price: &str, fee: &str| {
        let mut value = report(id, side, quantity, price, fee);
        value["ts"] = json!(moonbus_common::now_ns());
        value
    };
    let mut eth = report("r-2", "BUY", "0.3", "3500", "1.05");
    eth["symbol"] = json!("ETH-USD");
    publish_report(&bus, body(&report("r-1", "BUY", "0.01", "97000", "0.97"))).await;
    publish_report(&bus, body(&eth)).await;
    let mut risk = start_risk_env(&server, &snapshot_every("2"));
    ready_positions(client).await;
    // Ready: the state covering EXEC 1..2 is stored; the next report is only in EXEC.
    manifest_covering(&bus, "risk", 2).await;
    publish_report(&bus, body(&report("r-3", "SELL", "0.004", "98000", "0.39"))).await;
    let before = eventually("r-3 applied", || async {
        let reply = ready_positions(client).await;
        (reply["positions"][0]["quantity"] == "0.006").then_some(reply)
    })
    .await;
    risk.kill();

    // Retention removes reports 1 and 2: only the snapshot has them.
    shrink_exec(&bus, 1).await;
    let mut risk = start_risk_env(&server, &snapshot_every("2"));
    let after = ready_positions(client).await;
    assert_eq!(after["positions"], before["positions"]);
    for key in ["cash", "realized_pnl", "fees", "open_positions"] {
        assert_eq!(after["account"][key], before["account"][key], "{key}");
    }
    assert_eq!(after["account"]["realized_pnl"], "4");
    // A copy of r-1 (in the snapshot, gone from EXEC) is still a duplicate.
    shrink_exec(&bus, -1).await;
    publish_report(&bus, body(&report("r-1", "BUY", "0.01", "97000", "0.97"))).await;
    publish_report(&bus, body(&report("r-4", "BUY", "0.001", "97000", "0.1"))).await;
    eventually("r-4 applied, the copy of r-1 skipped", || async {
        let reply = ready_positions(client).await;
        (reply["positions"][0]["quantity"] == "0.007").then_some(())
    })
    .await;
    // The restart's snapshot covers EXEC 1..5 (written once ready, then after 2 reports).
    manifest_covering(&bus, "risk", 5).await;
    risk.kill();

    // Reports 6 and 7 arrive while risk is down, and retention removes 6: a gap.
    publish_report(&bus, body(&report("r-5", "BUY", "0.001", "97000", "0.1"))).await;
    publish_report(&bus, body(&report("r-6", "BUY", "0.001", "97000", "0.1"))).await;
    shrink_exec(&bus, 1).await;
    let mut errors = client.subscribe("errors.risk").await.unwrap();
    let _risk = start_risk_env(&server, &snapshot_every("2"));
    let event = next_where(&mut errors, "the fail-closed event", |e| {
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cannot rebuild")
    })
    .await;
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("reports 6..6 were removed"),
        "{event}"
    );
    let reply = eventually("a check answered", || async {
        let order = check("after-gap", "SELL", "0.001");
        try_request(client, "risk.api.check", body(&order)).await
    })
    .await;
    assert_eq!(code(&reply), "risk_unavailable", "{reply}");
    assert!(reply["reason"]
        .as_str()
        .unwrap()
        .contains("EXEC starts at sequence 7"));
    let positions = request(client, "risk.api.positions", &json!({})).await;
    assert_eq!(
        positions["error"]["code"], "risk_unavailable",
        "{positions}"
    );
}

#[tokio::test]
async fn a_graceful_stop_writes_a_snapshot() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    publish_report(&bus, body(&report("r-1", "BUY", "0.01", "97000", "0.97"))).await;
    publish_report(&bus, body(&report("r-2", "SELL", "0.004", "98000", "0.39"))).await;
    let mut risk = start_risk_env(&server, &snapshot_every("0"));
    let before = ready_positions(&bus.client).await;
    assert!(risk.terminate().success());
    manifest_covering(&bus, "risk", 2).await;
    // EXEC keeps only report 2: the restart needs that snapshot.
    shrink_exec(&bus, 1).await;
    let _risk = start_risk_env(&server, &snapshot_every("0"));
    let after = ready_positions(&bus.client).await;
    assert_eq!(after["positions"], before["positions"]);
}

#[tokio::test]
async fn a_graceful_stop_stores_the_state_though_no_report_came_since_the_last_snapshot() {
    // Ticks alone move halts, the peak and the day's start, and checks the reservations:
    // the snapshot at the stop was skipped when no report had come since the last one.
    let server = NatsServer::start();
    let bus = bus(&server).await;
    publish_report(&bus, body(&report("r-1", "BUY", "0.01", "97000", "0.97"))).await;
    let mut risk = start_risk_env(&server, &snapshot_every("1"));
    ready_positions(&bus.client).await;
    let first = manifest_covering(&bus, "risk", 1).await;
    assert!(risk.terminate().success());
    let last = manifest_covering(&bus, "risk", 1).await;
    assert!(
        last["created_ts"].as_u64() > first["created_ts"].as_u64(),
        "no snapshot at the stop: {first} then {last}"
    );
}

#[tokio::test]
async fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    publish_report(&bus, body(&report("r-1", "BUY", "0.01", "97000", "0.97"))).await;
    let mut risk = start_risk_env(&server, &snapshot_every("1"));
    ready_positions(client).await;
    manifest_covering(&bus, "risk", 1).await;
    publish_report(&bus, body(&report("r-2", "BUY", "0.01", "98000", "0.98"))).await;
    let good = manifest_covering(&bus, "risk", 2).await;
    let before = ready_positions(client).await;
    risk.terminate();

    // Newer than the good one: a manifest whose chunk does not hash right, then one that
    // is not even JSON. (A snapshot cut off before its manifest is never seen at all.)
    let junk = bus
        .js
        .publish(
            "snapshot.risk.chunk.0",
            Bytes::from_static(b"{\"cash\":\"1e9\"}"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut forged = good.clone();
    forged["chunks"] = json!([junk.sequence]);
    forged["exec_sequence"] = json!(2);
    for manifest in [body(&forged), Bytes::from_static(b"not json")] {
        bus.js
            .publish("snapshot.risk.manifest", manifest)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // And EXEC keeps only report 2, so a rebuild from EXEC alone is impossible.
    shrink_exec(&bus, 1).await;
    let _risk = start_risk_env(&server, &snapshot_every("1"));
    let after = ready_positions(client).await;
    assert_eq!(after["positions"], before["positions"]);
    assert_eq!(after["account"]["cash"], before["account"]["cash"]);
}

#[tokio::test]
async fn limits_changed_through_the_api_survive_a_restart() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    let mut risk = start_risk(&server);
    rebuilt(client).await;
    let change = json!({"set": {"max_order_notional": "250", "min_cash": "-50"}, "reason": "test"});
    let changed = request(client, "risk.api.limits.operator", &change).await;
    assert_eq!(changed["limits"]["max_order_notional"], "250", "{changed}");
    let stored = kv_value(&bus, "risk.limits", |v| {
        v["limits"]["max_order_notional"] == "250"
    })
    .await;
    assert_eq!(stored["actor"], "operator");
    risk.kill();

    let _risk = start_risk(&server);
    rebuilt(client).await;
    let limits = request(client, "risk.api.limits.operator", &json!({})).await;
    assert_eq!(limits["limits"]["max_order_notional"], "250");
    assert_eq!(limits["limits"]["min_cash"], "-50");
    // The config file's value for what was not changed.
    assert_eq!(limits["limits"]["max_position_notional"], "5000");
    // And the limit is enforced: 0.003 BTC at 99000 is 297 > 250.
    let reply = check_with_a_mark(client, "big").await;
    assert_eq!(code(&reply), "approved");
    let big = request(client, "risk.api.check", &check("big-x", "BUY", "0.003")).await;
    assert_eq!(code(&big), "max_order_notional", "{big}");
}

/// The snapshot store alone: chunks beyond one message, a snapshot cut off before its
/// manifest is never read, a chunk that is gone makes the reader fall back.
#[tokio::test]
async fn snapshots_are_chunked_verified_and_fall_back() {
    use moonbus_common::snapshot::{Snapshots, CHUNK_BYTES};
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let snapshots = Snapshots::new(bus.client.clone(), "probe");
    assert!(snapshots.latest().await.unwrap().snapshot.is_none());
    let big: Vec<u8> = (0..CHUNK_BYTES * 3 + 17).map(|i| (i % 251) as u8).collect();
    let first = snapshots.write(7, 1, &big).await.unwrap();
    assert_eq!(first.chunks.len(), 4);
    let found = snapshots.latest().await.unwrap().snapshot.unwrap();
    assert_eq!(
        (found.payload == big, found.manifest.exec_sequence),
        (true, 7)
    );

    snapshots.write(8, 2, b"small").await.unwrap();
    // Cut off: a chunk without a manifest.
    bus.js
        .publish("snapshot.probe.chunk.0", Bytes::from_static(b"partial"))
        .await
        .unwrap()
        .await
        .unwrap();
    let found = snapshots.latest().await.unwrap();
    assert_eq!(found.snapshot.unwrap().payload, b"small");
    assert!(found.rejected.is_empty());

    // Two more writes push snapshot 8's chunk 0 out (3 per subject): its manifest is
    // passed over, and so is the forged one pointing at a chunk of another index.
    snapshots.write(9, 3, b"nine").await.unwrap();
    let mut forged = serde_json::to_value(&first).unwrap();
    forged["chunks"] = json!([first.chunks[1]]);
    bus.js
        .publish("snapshot.probe.manifest", body(&forged))
        .await
        .unwrap()
        .await
        .unwrap();
    let found = snapshots.latest().await.unwrap();
    assert_eq!(found.snapshot.unwrap().payload, b"nine");
    assert_eq!(found.rejected.len(), 1, "{:?}", found.rejected);
    assert!(
        found.rejected[0].contains("not chunk 0"),
        "{:?}",
        found.rejected
    );
}

/// Not a check: the time to store and read back a 10 MB snapshot on a local nats-server,
/// printed. `cargo test --release -p rust-risk --test risk snapshot_io -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn snapshot_io_time() {
    use moonbus_common::snapshot::Snapshots;
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let snapshots = Snapshots::new(bus.client.clone(), "probe");
    let payload: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
    let started = std::time::Instant::now();
    let manifest = snapshots.write(1, 1, &payload).await.unwrap();
    let written = started.elapsed();
    let started = std::time::Instant::now();
    let found = snapshots.latest().await.unwrap().snapshot.unwrap();
    assert_eq!(found.payload.len(), payload.len());
    println!(
        "10 MB snapshot: {} chunks written in {written:?}, read and verified in {:?}",
        manifest.chunks.len(),
        started.elapsed()
    );
}

/// A heartbeat sends the account and each verdict not sent since the last heartbeat: a
/// verdict that changes faster than the heartbeat (fills here) goes out once per change,
/// not once more per heartbeat, and one that does not change still goes out each heartbeat.
#[tokio::test]
async fn a_heartbeat_leaves_out_the_verdicts_sent_since_the_last_one() {
    let server = NatsServer::start();
    let bus = bus(&server).await;
    let client = &bus.client;
    long_30_sol_at_150(&bus, "h-0").await;
    let _risk = start_risk(&server); // a heartbeat every 200 ms
    rebuilt(client).await;
    let mut btc = client.subscribe("risk.verdict.BTC-USD").await.unwrap();
    let mut sol = client.subscribe("risk.verdict.SOL-USDC").await.unwrap();
    client.flush().await.unwrap();
    // 25 fills of BTC-USD 40 ms apart (~5 heartbeats): each moves its verdict's position.
    for i in 1..=25 {
        let fill = report(&format!("h-{i}"), "BUY", "0.001", "100", "0");
        publish_report(&bus, body(&fill)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Every BTC-USD verdict until the last fill's has come twice: once on the change, then
    // from a heartbeat (it no longer changes).
    let mut positions: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while positions.iter().filter(|p| *p == "0.025").count() < 2 {
        let message = tokio::time::timeout_at(deadline, btc.next())
            .await
            .expect("BTC-USD's verdicts within the wait")
            .expect("the subscription is open");
        let verdict: Value = serde_json::from_slice(&message.payload).unwrap();
        positions.push(verdict["position"].as_str().unwrap_or_default().to_string());
    }
    // During the fills, a verdict came again only if a heartbeat found no fill since the
    // last one (a slow machine); the old heartbeat sent one more every 200 ms (~5).
    let first = positions
        .iter()
        .position(|p| p == "0.001")
        .expect("the first fill's verdict");
    let during = &positions[first..positions.iter().position(|p| p == "0.025").unwrap() + 1];
    let repeats = during.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        repeats <= 1,
        "{repeats} heartbeat repeats during the fills: {positions:?}"
    );
    assert_eq!(
        during.len() - repeats,
        25,
        "each fill's verdict: {positions:?}"
    );
    // SOL-USDC never changed: it goes out on every heartbeat.
    for n in 1..=5 {
        tokio::time::timeout(Duration::from_millis(1_000), sol.next())
            .await
            .unwrap_or_else(|_| panic!("SOL-USDC's unchanged verdict, heartbeat {n}"))
            .expect("the subscription is open");
    }
}
