//! rust-execution against the numbers of issue 10 ("no input crashes a service"), end to
//! end: a real nats-server, the real binary, orders through the ORDERS stream, a stand-in
//! risk that approves everything (so the extreme orders reach the paper venue's
//! arithmetic; rust-risk/tests/extreme_numbers.rs puts the real risk through the same).
//!
//! Each order gets one REJECTED report with a coded reason, or its fill; nothing panics,
//! and the next ordinary order is filled.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use async_nats::Client;
use futures::StreamExt;
use moonbus_common::testing::{ChildGuard, NatsServer};
use moonbus_common::{
    bus, now_ns, ExecutionReport, OrderStatus, RiskCheckRequest, RiskCheckResult, TradingState,
    VersionReply,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const DECIMAL_MAX: &str = "79228162514264337593543950335";
const MAX: &str = "99999999999999.99999999999999";

struct System {
    client: Client,
    js: jetstream::Context,
    /// Every check the stand-in risk answered.
    checks: Arc<Mutex<Vec<RiskCheckRequest>>>,
    execution: ChildGuard,
    _server: NatsServer,
}

async fn start() -> System {
    let server = NatsServer::start();
    let client = async_nats::connect(&server.url).await.expect("connect");
    let js = jetstream::new(client.clone());
    // BTC-USD ticks: an ordinary market.
    let ticks = client.clone();
    tokio::spawn(async move {
        for seq in 0u64.. {
            let tick = json!({"venue": "sim", "symbol": "BTC-USD", "price": "97000.00",
                              "bid": "96999.00", "ask": "97001.50", "seq": seq, "ts": now_ns()});
            if ticks
                .publish("md.tick.sim.BTC-USD", tick.to_string().into())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let checks = approving_risk(&client).await;
    let env = [
        ("MOONBUS__EXECUTION__FEE_BPS", "10"),
        ("MOONBUS__EXECUTION__SLIPPAGE_BPS", "5"),
        ("MOONBUS__EXECUTION__RISK_TIMEOUT_MS", "500"),
        ("MOONBUS__EXECUTION__ACK_WAIT_MS", "2000"),
        ("MOONBUS__EXECUTION__MAX_IN_FLIGHT", "3"),
        ("MOONBUS__EXECUTION__METRICS_ADDR", "\"\""),
    ];
    let execution = ChildGuard::spawn(env!("CARGO_BIN_EXE_rust-execution"), &server.url, &env);
    let deadline = Instant::now() + WAIT;
    loop {
        let asked = client.request("exec.api.version", "".into());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            if bus::decode::<VersionReply>(&reply.payload).is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "execution did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    System {
        client,
        js,
        checks,
        execution,
        _server: server,
    }
}

/// A stand-in for rust-risk: approves every check, keeps what it saw.
async fn approving_risk(client: &Client) -> Arc<Mutex<Vec<RiskCheckRequest>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut requests = client.subscribe("risk.api.check").await.expect("subscribe");
    client.flush().await.expect("flush");
    let (client, log) = (client.clone(), seen.clone());
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: RiskCheckRequest =
                bus::decode(&message.payload).expect("a valid RiskCheckRequest");
            let result = RiskCheckResult {
                client_order_id: request.client_order_id.clone(),
                approved: true,
                reason_code: None,
                reason: None,
                state: TradingState::Active,
                ts: now_ns(),
            };
            log.lock().unwrap().push(request);
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, bus::encode(&result)).await;
            }
        }
    });
    seen
}

fn order(id: &str, symbol: &str, quantity: &str) -> Value {
    json!({
        "client_order_id": id, "agent": "trading", "symbol": symbol, "venue": "sim",
        "side": "BUY", "type": "MARKET", "quantity": quantity,
        "origin_ts": now_ns() - 1_000, "ts": now_ns(),
    })
}

impl System {
    async fn submit(&self, body: &Value) {
        let subject = format!("orders.submit.trading.{}", body["symbol"].as_str().unwrap());
        let id = body["client_order_id"].as_str().unwrap().to_string();
        self.js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(body.to_string().into())
                    .message_id(id),
            )
            .await
            .expect("publish order")
            .await
            .expect("ORDERS stored the order");
    }

    /// The stored reports of `id`, once it has a final one.
    async fn outcome(&self, id: &str) -> Vec<ExecutionReport> {
        let deadline = Instant::now() + WAIT;
        loop {
            let reports: Vec<ExecutionReport> = self
                .stored_reports()
                .await
                .into_iter()
                .filter(|r| r.client_order_id.as_ref().is_some_and(|i| i == id))
                .collect();
            if reports
                .iter()
                .any(|r| r.status != OrderStatus::PartiallyFilled)
            {
                return reports;
            }
            assert!(Instant::now() < deadline, "no final report for {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stored_reports(&self) -> Vec<ExecutionReport> {
        let stream = self.js.get_stream("EXEC").await.expect("EXEC");
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: "exec.report.>".into(),
                ..Default::default()
            })
            .await
            .expect("EXEC reader");
        let mut reports = Vec::new();
        if reader.cached_info().num_pending == 0 {
            return reports;
        }
        let mut messages = reader.messages().await.expect("EXEC messages");
        while let Some(message) = messages.next().await {
            let message = message.expect("EXEC message");
            reports.push(bus::decode(&message.payload).expect("a valid ExecutionReport"));
            if message.info().expect("info").pending == 0 {
                break;
            }
        }
        reports
    }
}

/// The one report of a refused order: REJECTED, nothing filled, reason `<code>: ...`.
fn rejected(reports: &[ExecutionReport], code: &str) -> String {
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(report.status, OrderStatus::Rejected, "{report:?}");
    assert!(report.filled_quantity.is_zero() && report.last_fill_quantity.is_none());
    let reason = report.reason.clone().unwrap_or_default();
    assert!(reason.starts_with(code), "{code}: {reason}");
    reason
}

#[tokio::test]
async fn the_overflow_attack_is_rejected_with_a_code_and_the_next_order_filled() {
    let mut system = start().await;

    // The order: Decimal::MAX as the quantity. Refused when read, never routed.
    system
        .submit(&order("attack", "BTC-USD", DECIMAL_MAX))
        .await;
    let reason = rejected(&system.outcome("attack").await, "money ");
    assert!(reason.contains("out of range"), "{reason}");
    let mut limit = order("attack-limit", "BTC-USD", "1");
    limit["type"] = json!("LIMIT");
    limit["limit_price"] = json!(DECIMAL_MAX);
    system.submit(&limit).await;
    assert!(rejected(&system.outcome("attack-limit").await, "money ").contains("out of range"));

    // The largest quantity the contract admits, approved: 1e14 x 97050.01 fits a decimal,
    // its fee (9.7e15) is no money the contract can carry. REJECTED, coded.
    system.submit(&order("max", "BTC-USD", MAX)).await;
    rejected(&system.outcome("max").await, "notional_overflow: ");

    // A book whose walk cannot keep the quantity exact (1e14 - 1e-15 needs 29 digits).
    let book = json!({"venue": "sim", "symbol": "ETH-USD", "bids": [],
                      "asks": [["2", "0.000000000000001"]], "seq": 1, "ts": now_ns()});
    system
        .client
        .publish("md.book.sim.ETH-USD", book.to_string().into())
        .await
        .unwrap();
    system.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    system.submit(&order("fine", "ETH-USD", MAX)).await;
    rejected(&system.outcome("fine").await, "notional_overflow: ");
    // The same book, a quantity it can walk exactly: the part it holds fills.
    system.submit(&order("walkable", "ETH-USD", "1")).await;
    let reports = system.outcome("walkable").await;
    let statuses: Vec<OrderStatus> = reports.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [OrderStatus::PartiallyFilled, OrderStatus::Expired],
        "{reports:#?}"
    );
    assert_eq!(reports[0].filled_quantity.to_string(), "0.000000000000001");

    // Still running, and the next ordinary order fills.
    assert!(
        system.execution.0.try_wait().unwrap().is_none(),
        "rust-execution exited"
    );
    system.submit(&order("next", "BTC-USD", "0.01")).await;
    let reports = system.outcome("next").await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, OrderStatus::Filled, "{:?}", reports[0]);
    // Orders refused when read never reached risk.
    let checked: Vec<String> = system
        .checks
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.client_order_id.to_string())
        .collect();
    assert!(
        !checked.iter().any(|id| id.starts_with("attack")),
        "{checked:?}"
    );
    assert!(checked.contains(&"max".to_string()) && checked.contains(&"next".to_string()));
}
