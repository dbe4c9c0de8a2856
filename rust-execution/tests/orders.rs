//! rust-execution end to end: a real nats-server, the real binary, a fake risk responder
//! (a plain subscriber on risk.api.check) and ticks published by the test.
//!
//! Every outcome is read back from the EXEC stream, the durable record, so "exactly one
//! report" means exactly one stored report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use async_nats::Client;
use futures::StreamExt;
use moonbus_common::testing::{self, ChildGuard, NatsServer};
use moonbus_common::{
    bus, now_ns, ErrorEvent, ExecutionReport, OrderStatus, RiskCheckRequest, RiskCheckResult,
    TradingState, VersionReply,
};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- fixtures

/// Fields drop in order: the binary goes before the server it talks to.
struct System {
    execution: Option<ChildGuard>,
    client: Client,
    js: jetstream::Context,
    quote: watch::Sender<Quote>,
    /// Settings of this test on top of the common ones.
    env: Vec<(&'static str, &'static str)>,
    server: NatsServer,
}

/// The market the test publishes on md.tick.sim.BTC-USD, every 20 ms.
#[derive(Clone, Copy)]
struct Quote {
    price: &'static str,
    bid: &'static str,
    ask: &'static str,
}

const START_QUOTE: Quote = Quote {
    price: "97000.00",
    bid: "96999.00",
    ask: "97001.50",
};

impl System {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(env: &[(&'static str, &'static str)]) -> Self {
        let server = NatsServer::start();
        let client = async_nats::connect(&server.url).await.expect("connect");
        let js = jetstream::new(client.clone());
        let (quote, quotes) = watch::channel(START_QUOTE);
        tokio::spawn(publish_ticks(client.clone(), quotes));
        let mut system = Self {
            execution: None,
            client,
            js,
            quote,
            env: env.to_vec(),
            server,
        };
        system.start_execution().await;
        system
    }

    async fn start_execution(&mut self) {
        let binary = env!("CARGO_BIN_EXE_rust-execution");
        let mut env = vec![
            ("MOONBUS__EXECUTION__FEE_BPS", "10"),
            ("MOONBUS__EXECUTION__SLIPPAGE_BPS", "5"),
            ("MOONBUS__EXECUTION__RISK_TIMEOUT_MS", "500"),
            // A killed instance's orders in hand come back after this; it must
            // outlast a full queue of one symbol: 3 x risk_timeout_ms.
            ("MOONBUS__EXECUTION__ACK_WAIT_MS", "2000"),
            ("MOONBUS__EXECUTION__MAX_IN_FLIGHT", "3"),
            ("MOONBUS__EXECUTION__METRICS_ADDR", "\"\""),
        ];
        env.extend(self.env.iter().copied());
        self.execution = Some(ChildGuard::spawn(binary, &self.server.url, &env));
        wait_ready(&self.client).await;
    }

    fn kill_execution(&mut self) {
        if let Some(mut child) = self.execution.take() {
            child.kill();
        }
    }

    fn set_quote(&self, quote: Quote) {
        self.quote.send_replace(quote);
    }

    /// On `orders.submit.<the body's agent>.<symbol>`, as that agent's NATS user may.
    async fn submit(&self, symbol: &str, body: &Value, msg_id: Option<&str>) {
        let agent = body["agent"].as_str().unwrap_or("trading");
        self.submit_raw(
            &format!("orders.submit.{agent}.{symbol}"),
            body.to_string().into_bytes(),
            msg_id,
        )
        .await;
    }

    async fn submit_raw(&self, subject: &str, payload: Vec<u8>, msg_id: Option<&str>) {
        let mut message = PublishMessage::build().payload(payload.into());
        if let Some(id) = msg_id {
            message = message.message_id(id);
        }
        self.js
            .send_publish(subject.to_string(), message)
            .await
            .expect("publish order")
            .await
            .expect("ORDERS stored the order");
    }

    /// Wait until execution has acked every order in the ORDERS stream; fails when no
    /// order is settled for WAIT (a slow machine is allowed, a stuck service is not).
    async fn wait_orders_done(&self) {
        let mut deadline = Instant::now() + WAIT;
        let mut left = u64::MAX;
        loop {
            let stream = self.js.get_stream("ORDERS").await.expect("ORDERS");
            let info = stream
                .consumer_info("execution")
                .await
                .expect("consumer execution");
            let now_left = info.num_pending + info.num_ack_pending as u64;
            if now_left == 0 {
                return;
            }
            if now_left < left {
                (left, deadline) = (now_left, Instant::now() + WAIT);
            }
            assert!(
                Instant::now() < deadline,
                "orders not all handled, no progress for {WAIT:?}: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every report in the EXEC stream, with its subject, in order.
    async fn stored_reports(&self) -> Vec<(String, ExecutionReport)> {
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
            let report: ExecutionReport =
                bus::decode(&message.payload).expect("a valid ExecutionReport");
            reports.push((message.subject.to_string(), report));
            if message.info().expect("info").pending == 0 {
                break;
            }
        }
        reports
    }

    /// Wait for a stored report that matches; returns it with its subject.
    async fn wait_report(
        &self,
        what: &str,
        matches: impl Fn(&ExecutionReport) -> bool,
    ) -> (String, ExecutionReport) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self
                .stored_reports()
                .await
                .into_iter()
                .find(|(_, r)| matches(r))
            {
                return found;
            }
            assert!(Instant::now() < deadline, "no report: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reports_for(&self, client_order_id: &str) -> Vec<ExecutionReport> {
        self.stored_reports()
            .await
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| {
                r.client_order_id
                    .as_ref()
                    .is_some_and(|id| id == client_order_id)
            })
            .collect()
    }
}

async fn publish_ticks(client: Client, quotes: watch::Receiver<Quote>) {
    for seq in 0u64.. {
        let quote = *quotes.borrow();
        let tick = json!({
            "venue": "sim", "symbol": "BTC-USD", "price": quote.price, "bid": quote.bid,
            "ask": quote.ask, "seq": seq, "ts": now_ns(),
        });
        if client
            .publish("md.tick.sim.BTC-USD", tick.to_string().into())
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ready = answers exec.api.version (a reply that is not a VersionReply is ignored).
async fn wait_ready(client: &Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        let asked = client.request("exec.api.version", "".into());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), asked).await {
            if let Ok(version) = bus::decode::<VersionReply>(&reply.payload) {
                assert_eq!(version.service, "execution");
                return;
            }
        }
        assert!(Instant::now() < deadline, "execution did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum RiskMode {
    Approve,
    /// Approves after 5 ms, so a stream of orders takes a while.
    ApproveSlowly,
    Refuse,
    /// Takes the request and never answers.
    Silent,
    /// Approves the orders of this symbol after 300 ms, the others at once.
    SlowFor(&'static str),
}

/// A stand-in for rust-risk on risk.api.check; keeps every request it saw.
async fn fake_risk(client: &Client, mode: RiskMode) -> Arc<Mutex<Vec<RiskCheckRequest>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut requests = client
        .subscribe("risk.api.check")
        .await
        .expect("subscribe risk");
    client.flush().await.expect("flush");
    let (client, log) = (client.clone(), seen.clone());
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: RiskCheckRequest =
                bus::decode(&message.payload).expect("a valid RiskCheckRequest");
            let result = RiskCheckResult {
                client_order_id: request.client_order_id.clone(),
                approved: !matches!(mode, RiskMode::Refuse | RiskMode::Silent),
                reason_code: (mode == RiskMode::Refuse).then(|| "max_order_notional".into()),
                reason: (mode == RiskMode::Refuse).then(|| "notional 970.50 > limit 500".into()),
                state: TradingState::Active,
                ts: now_ns(),
            };
            let delay = match mode {
                RiskMode::ApproveSlowly => Duration::from_millis(5),
                RiskMode::SlowFor(symbol) if request.symbol == symbol => Duration::from_millis(300),
                _ => Duration::ZERO,
            };
            log.lock().unwrap().push(request);
            let Some(reply) = message.reply.filter(|_| mode != RiskMode::Silent) else {
                continue;
            };
            let answer = {
                let client = client.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    client
                        .publish(reply, bus::encode(&result))
                        .await
                        .expect("reply");
                }
            };
            // One symbol's slow answers must not hold up the others'.
            if matches!(mode, RiskMode::SlowFor(_)) {
                tokio::spawn(answer);
            } else {
                answer.await;
            }
        }
    });
    seen
}

fn order(client_order_id: &str, side: &str) -> Value {
    json!({
        "client_order_id": client_order_id, "agent": "trading", "symbol": "BTC-USD",
        "venue": "sim", "side": side, "type": "MARKET", "quantity": "0.01",
        "decision_price": "97000", "origin_ts": now_ns() - 1_000, "ts": now_ns(),
    })
}

fn limit(client_order_id: &str, side: &str, price: &str, tif: &str) -> Value {
    let mut body = order(client_order_id, side);
    body["type"] = json!("LIMIT");
    body["limit_price"] = json!(price);
    body["time_in_force"] = json!(tif);
    body
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

/// Collects ErrorEvents from errors.execution.
async fn error_events(client: &Client) -> Arc<Mutex<Vec<ErrorEvent>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut sub = client
        .subscribe("errors.execution")
        .await
        .expect("subscribe errors");
    client.flush().await.expect("flush");
    let log = events.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            log.lock()
                .unwrap()
                .push(bus::decode(&message.payload).expect("a valid ErrorEvent"));
        }
    });
    events
}

async fn wait_error_event(events: &Arc<Mutex<Vec<ErrorEvent>>>, reason_start: &str) -> ErrorEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(event) = events
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.reason.starts_with(reason_start))
        {
            return event.clone();
        }
        assert!(Instant::now() < deadline, "no ErrorEvent {reason_start}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn market_buy_fills_at_the_ask_plus_slippage_with_the_fee() {
    let system = System::start().await;
    let checks = fake_risk(&system.client, RiskMode::Approve).await;
    let sent = order("buy-1", "BUY");
    system.submit("BTC-USD", &sent, Some("buy-1")).await;

    let (subject, report) = system
        .wait_report("buy-1", |r| {
            r.client_order_id.as_ref().is_some_and(|id| id == "buy-1")
        })
        .await;
    assert_eq!(subject, "exec.report.BTC-USD");
    assert_eq!(report.status, OrderStatus::Filled, "{report:?}");
    // ask 97001.50 * 1.0005 = 97050.00075 -> rounded up to the tick's 2 decimals
    assert_eq!(report.last_fill_price.map(|p| *p), Some(dec("97050.01")));
    assert_eq!(report.avg_fill_price.map(|p| *p), Some(dec("97050.01")));
    assert_eq!(*report.filled_quantity, dec("0.01"));
    assert_eq!(report.last_fill_quantity.map(|q| *q), Some(dec("0.01")));
    assert_eq!(report.quantity.map(|q| *q), Some(dec("0.01")));
    // 97050.01 * 0.01 * 10 / 10000
    assert_eq!(*report.fee, dec("0.9705001"));
    // (97050.01 - 97000) / 97000 * 10000, worse for us = positive
    assert_eq!(report.slippage_bps, Some(5.1557));
    assert_eq!(report.agent.as_ref().map(|a| a.as_str()), Some("trading"));
    assert_eq!(report.venue.as_ref().map(|v| v.as_str()), Some("sim"));
    assert_eq!(report.symbol.as_ref().map(|s| s.as_str()), Some("BTC-USD"));
    assert!(
        report
            .order_id
            .as_deref()
            .is_some_and(|id| id.starts_with("sim-")),
        "{:?}",
        report.order_id
    );
    let t = &report.timings;
    assert_eq!(t.origin_ts, sent["origin_ts"].as_u64());
    let (received, checked, filled) = (
        t.received_ts.unwrap(),
        t.risk_checked_ts.unwrap(),
        t.filled_ts.unwrap(),
    );
    assert!(
        t.origin_ts.unwrap() <= received
            && received <= checked
            && checked <= filled
            && filled <= report.ts,
        "{t:?}"
    );

    // One round trip: no separate ACCEPTED, and risk saw the market price.
    system.wait_orders_done().await;
    assert_eq!(system.reports_for("buy-1").await.len(), 1);
    let checks = checks.lock().unwrap();
    assert_eq!(checks.len(), 1);
    assert_eq!(
        checks[0].ref_price.map(|p| p.to_string()).as_deref(),
        Some("97000.00")
    );
    assert_eq!(checks[0].quantity.to_string(), "0.01");
}

#[tokio::test]
async fn metrics_count_orders_by_status_and_reason() {
    let port = testing::free_port();
    let addr: &'static str = Box::leak(format!("\"127.0.0.1:{port}\"").into_boxed_str());
    let system = System::start_with(&[("MOONBUS__EXECUTION__METRICS_ADDR", addr)]).await;
    fake_risk(&system.client, RiskMode::Approve).await;
    system
        .submit("BTC-USD", &order("m-1", "BUY"), Some("m-1"))
        .await;
    let (_, report) = system
        .wait_report("m-1", |r| r.client_order_id.is_some())
        .await;
    assert_eq!(report.status, OrderStatus::Filled);

    let filled = "exec_orders_total{status=\"FILLED\",reason=\"none\"}";
    let deadline = Instant::now() + WAIT;
    let text = loop {
        if let Some(text) = testing::scrape(port).await {
            if testing::sample(&text, filled) == Some(1.0) {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "no FILLED order in the metrics");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let value =
        |name: &str| testing::sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
    assert_eq!(value("exec_order_seconds_count"), 1.0);
    assert_eq!(value("exec_risk_check_seconds_count"), 1.0);
    assert_eq!(value("exec_fees_total"), 0.9705001);
    assert_eq!(value("exec_in_flight"), 0.0);
}

#[tokio::test]
async fn a_refused_check_is_rejected_with_the_risk_reason() {
    let system = System::start().await;
    fake_risk(&system.client, RiskMode::Refuse).await;
    system
        .submit("BTC-USD", &order("big-1", "BUY"), Some("big-1"))
        .await;
    let (subject, report) = system
        .wait_report("big-1", |r| r.client_order_id.is_some())
        .await;
    assert_eq!(subject, "exec.report.BTC-USD");
    assert_eq!(report.status, OrderStatus::Rejected);
    assert_eq!(
        report.reason.as_deref(),
        Some("max_order_notional: notional 970.50 > limit 500")
    );
    assert_eq!(*report.filled_quantity, Decimal::ZERO);
    assert!(report.timings.risk_checked_ts.is_some());
    assert!(report.timings.filled_ts.is_none());
}

#[tokio::test]
async fn without_risk_nothing_is_routed() {
    let system = System::start().await;
    // Nobody on risk.api.check: refused at once.
    system
        .submit("BTC-USD", &order("alone-1", "BUY"), Some("alone-1"))
        .await;
    let (_, report) = system
        .wait_report("alone-1", |r| r.client_order_id.is_some())
        .await;
    assert_eq!(report.status, OrderStatus::Rejected);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .starts_with("risk_unavailable: "),
        "{report:?}"
    );
    assert!(report.timings.risk_checked_ts.is_none());

    // Risk takes the request and never answers: refused after risk_timeout_ms (500).
    let checks = fake_risk(&system.client, RiskMode::Silent).await;
    system
        .submit("BTC-USD", &order("silent-1", "BUY"), Some("silent-1"))
        .await;
    let (_, report) = system
        .wait_report("silent-1", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "silent-1")
        })
        .await;
    assert_eq!(report.status, OrderStatus::Rejected);
    assert_eq!(
        report.reason.as_deref(),
        Some("risk_unavailable: no answer within 500 ms")
    );
    let waited = Duration::from_nanos(report.ts - report.timings.received_ts.unwrap());
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(checks.lock().unwrap().len(), 1);
    system.wait_orders_done().await;
    assert!(system
        .stored_reports()
        .await
        .iter()
        .all(|(_, r)| r.status == OrderStatus::Rejected));
}

#[tokio::test]
async fn bad_orders_are_rejected_with_a_reason_where_they_belong() {
    let system = System::start().await;
    let checks = fake_risk(&system.client, RiskMode::Approve).await;

    let mut unknown_field = order("bad-field", "BUY");
    unknown_field["reduce_onyl"] = json!(true);
    system
        .submit("BTC-USD", &unknown_field, Some("bad-field"))
        .await;
    let mut float_money = order("bad-float", "BUY");
    float_money["quantity"] = json!(0.01);
    system
        .submit("BTC-USD", &float_money, Some("bad-float"))
        .await;
    let mut bad_symbol = order("bad-symbol", "BUY");
    bad_symbol["symbol"] = json!("BTC.USD");
    system
        .submit("BTC-USD", &bad_symbol, Some("bad-symbol"))
        .await;
    let mut no_id = order("x", "BUY");
    no_id.as_object_mut().unwrap().remove("client_order_id");
    system.submit("BTC-USD", &no_id, None).await;
    system
        .submit_raw(
            "orders.submit.trading.ETH-USD",
            b"not json at all".to_vec(),
            None,
        )
        .await;
    system
        .submit(
            "ETH-USD",
            &order("wrong-subject", "BUY"),
            Some("wrong-subject"),
        )
        .await;
    let mut elsewhere = order("elsewhere", "BUY");
    elsewhere["venue"] = json!("binance");
    system
        .submit("BTC-USD", &elsewhere, Some("elsewhere"))
        .await;
    let mut limit_without_price = order("no-price", "BUY");
    limit_without_price["type"] = json!("LIMIT");
    system
        .submit("BTC-USD", &limit_without_price, Some("no-price"))
        .await;
    // Another agent's name in the payload, on the gateway's own subject (all the
    // gateway's NATS user may publish): the subject is who sent it.
    system
        .submit_raw(
            "orders.submit.gateway.BTC-USD",
            order("impostor", "BUY").to_string().into_bytes(),
            Some("impostor"),
        )
        .await;
    system.wait_orders_done().await;

    let reports = system.stored_reports().await;
    assert_eq!(reports.len(), 9, "one report per bad order: {reports:#?}");
    let impostor = reports
        .iter()
        .find(|(_, r)| {
            r.reason
                .as_deref()
                .unwrap_or_default()
                .starts_with("agent_mismatch: ")
        })
        .unwrap_or_else(|| panic!("no agent_mismatch report: {reports:#?}"));
    assert_eq!(
        impostor.1.client_order_id.as_ref().map(|i| i.as_str()),
        Some("impostor")
    );
    assert!(reports
        .iter()
        .all(|(_, r)| r.status == OrderStatus::Rejected && *r.filled_quantity == Decimal::ZERO));
    let find = |reason: &str| {
        reports
            .iter()
            .find(|(_, r)| r.reason.as_deref().unwrap_or_default().contains(reason))
            .unwrap_or_else(|| panic!("no report with reason {reason}: {reports:#?}"))
    };
    let id = |r: &ExecutionReport| r.client_order_id.as_ref().map(|i| i.to_string());
    let symbol = |r: &ExecutionReport| r.symbol.as_ref().map(|s| s.to_string());

    let (subject, r) = find("unknown field `reduce_onyl`");
    assert_eq!(
        (subject.as_str(), id(r).as_deref()),
        ("exec.report.BTC-USD", Some("bad-field"))
    );
    let (subject, r) = find("not a JSON number");
    assert_eq!(
        (subject.as_str(), id(r).as_deref()),
        ("exec.report.BTC-USD", Some("bad-float"))
    );
    let (subject, r) = find("invalid symbol");
    assert_eq!(
        (subject.as_str(), id(r).as_deref(), symbol(r)),
        ("exec.report._invalid", Some("bad-symbol"), None)
    );
    let (subject, r) = find("missing field `client_order_id`");
    assert_eq!(
        (subject.as_str(), id(r), symbol(r).as_deref()),
        ("exec.report.BTC-USD", None, Some("BTC-USD"))
    );
    let (subject, r) = find("expected ident");
    assert_eq!(
        (subject.as_str(), id(r), symbol(r)),
        ("exec.report._invalid", None, None)
    );
    let (subject, r) = find("symbol_mismatch: ");
    assert_eq!(
        (subject.as_str(), id(r).as_deref()),
        ("exec.report.BTC-USD", Some("wrong-subject"))
    );
    let (_, r) = find("unknown_venue: ");
    assert_eq!(id(r).as_deref(), Some("elsewhere"));
    let (_, r) = find("a LIMIT order needs limit_price");
    assert_eq!(id(r).as_deref(), Some("no-price"));
    assert!(
        checks.lock().unwrap().is_empty(),
        "a bad order never reaches risk"
    );

    // Still serving.
    system
        .submit("BTC-USD", &order("good-1", "SELL"), Some("good-1"))
        .await;
    let (_, r) = system
        .wait_report("good-1", |r| {
            r.client_order_id.as_ref().is_some_and(|i| i == "good-1")
        })
        .await;
    assert_eq!(r.status, OrderStatus::Filled);
    // bid 96999.00 * 0.9995 = 96950.5005 -> rounded down; SELL slippage vs 97000 is positive
    assert_eq!(r.last_fill_price.map(|p| *p), Some(dec("96950.50")));
    assert_eq!(r.slippage_bps, Some(5.1031));
}

#[tokio::test]
async fn a_client_order_id_fills_once_whatever_is_resent() {
    let mut system = System::start().await;
    let checks = fake_risk(&system.client, RiskMode::Approve).await;
    system
        .submit("BTC-USD", &order("dup-1", "BUY"), Some("dup-1"))
        .await;
    system
        .wait_report("dup-1 filled", |r| r.status == OrderStatus::Filled)
        .await;
    // Within the duplicate window the stream drops it; beyond it (no Nats-Msg-Id here)
    // it is stored and delivered, with a different body even: the first outcome stands.
    system
        .submit("BTC-USD", &order("dup-1", "BUY"), Some("dup-1"))
        .await;
    let mut other_body = order("dup-1", "SELL");
    other_body["quantity"] = json!("5");
    system.submit("BTC-USD", &other_body, None).await;
    system.wait_orders_done().await;
    assert_eq!(system.reports_for("dup-1").await.len(), 1);

    // Across a graceful restart the ledger comes back from EXEC.
    let status = system.execution.as_mut().unwrap().terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    system.start_execution().await;
    system.submit("BTC-USD", &order("dup-1", "BUY"), None).await;
    system
        .submit("BTC-USD", &order("dup-2", "BUY"), Some("dup-2"))
        .await;
    system
        .wait_report("dup-2", |r| {
            r.client_order_id.as_ref().is_some_and(|i| i == "dup-2")
        })
        .await;
    system.wait_orders_done().await;
    let reports = system.reports_for("dup-1").await;
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(reports[0].status, OrderStatus::Filled);
    assert_eq!(
        checks
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.client_order_id == "dup-1")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_crash_mid_stream_loses_and_doubles_nothing() {
    let mut system = System::start().await;
    let checks = fake_risk(&system.client, RiskMode::ApproveSlowly).await;
    const ORDERS: usize = 200;
    for n in 0..ORDERS {
        let id = format!("crash-{n}");
        system
            .submit("BTC-USD", &order(&id, "BUY"), Some(&id))
            .await;
    }
    // SIGKILL somewhere in the middle of the stream.
    let deadline = Instant::now() + WAIT;
    while checks.lock().unwrap().len() < ORDERS / 4 {
        assert!(Instant::now() < deadline, "orders are not being handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    system.kill_execution();
    let handled_before = system.stored_reports().await.len();
    assert!(handled_before < ORDERS, "killed too late to prove anything");
    system.start_execution().await;
    system.wait_orders_done().await;

    let reports = system.stored_reports().await;
    for n in 0..ORDERS {
        let id = format!("crash-{n}");
        let mine: Vec<_> = reports
            .iter()
            .filter(|(_, r)| r.client_order_id.as_ref().is_some_and(|i| *i == *id))
            .collect();
        assert_eq!(mine.len(), 1, "{id}: {mine:#?}");
        assert_eq!(mine[0].1.status, OrderStatus::Filled, "{id}");
    }
    assert_eq!(reports.len(), ORDERS);
}

#[tokio::test]
async fn limit_orders_rest_fill_expire_cancel_and_survive_a_restart() {
    let mut system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    let errors = error_events(&system.client).await;
    let is = |id: &'static str, status: OrderStatus| {
        move |r: &ExecutionReport| {
            r.status == status && r.client_order_id.as_ref().is_some_and(|i| i == id)
        }
    };

    // Marketable limit: fills at once at the better of limit and market.
    system
        .submit(
            "BTC-USD",
            &limit("lim-now", "BUY", "98000", "GTC"),
            Some("lim-now"),
        )
        .await;
    let (_, r) = system
        .wait_report("lim-now", is("lim-now", OrderStatus::Filled))
        .await;
    assert_eq!(r.last_fill_price.map(|p| *p), Some(dec("97050.01")));
    // Not marketable, IOC: expires.
    system
        .submit(
            "BTC-USD",
            &limit("lim-ioc", "BUY", "96000", "IOC"),
            Some("lim-ioc"),
        )
        .await;
    system
        .wait_report("lim-ioc", is("lim-ioc", OrderStatus::Expired))
        .await;
    // Not marketable, GTC: rests, then fills when a tick crosses.
    system
        .submit(
            "BTC-USD",
            &limit("lim-gtc", "BUY", "96000", "GTC"),
            Some("lim-gtc"),
        )
        .await;
    system
        .submit(
            "BTC-USD",
            &limit("lim-cxl", "BUY", "90000", "GTC"),
            Some("lim-cxl"),
        )
        .await;
    system
        .submit(
            "BTC-USD",
            &limit("lim-rest", "SELL", "99000", "GTC"),
            Some("lim-rest"),
        )
        .await;
    system
        .wait_report("lim-rest accepted", is("lim-rest", OrderStatus::Accepted))
        .await;
    system.set_quote(Quote {
        price: "95900.00",
        bid: "95899.00",
        ask: "95901.00",
    });
    let (_, r) = system
        .wait_report("lim-gtc filled", is("lim-gtc", OrderStatus::Filled))
        .await;
    // 95901.00 * 1.0005 = 95948.9505 -> 95948.96 (under the 96000 limit)
    assert_eq!(r.last_fill_price.map(|p| *p), Some(dec("95948.96")));
    assert_eq!(*r.fee, dec("0.9594896"));
    assert!(r.timings.filled_ts.is_some() && r.timings.risk_checked_ts.is_some());
    let gtc = system.reports_for("lim-gtc").await;
    assert_eq!(
        gtc.iter().map(|r| r.status).collect::<Vec<_>>(),
        [OrderStatus::Accepted, OrderStatus::Filled]
    );

    // Cancels: someone else's, the right one, again, unknown, unreadable.
    let cancel = |id: &str, agent: &str| json!({"client_order_id": id, "agent": agent, "symbol": "BTC-USD", "ts": now_ns()});
    let cancel_subject = "orders.cancel.trading.BTC-USD";
    system
        .submit_raw(
            "orders.cancel.other.BTC-USD",
            cancel("lim-cxl", "other").to_string().into_bytes(),
            None,
        )
        .await;
    wait_error_event(
        &errors,
        "agent_mismatch: order lim-cxl belongs to agent trading",
    )
    .await;
    // A payload claiming the owner on another agent's subject: refused too.
    system
        .submit_raw(
            "orders.cancel.other.BTC-USD",
            cancel("lim-cxl", "trading").to_string().into_bytes(),
            None,
        )
        .await;
    wait_error_event(&errors, "agent_mismatch: subject agent \"other\"").await;
    system
        .submit_raw(
            cancel_subject,
            cancel("lim-cxl", "trading").to_string().into_bytes(),
            None,
        )
        .await;
    system
        .wait_report("lim-cxl cancelled", is("lim-cxl", OrderStatus::Cancelled))
        .await;
    system
        .submit_raw(
            cancel_subject,
            cancel("lim-cxl", "trading").to_string().into_bytes(),
            None,
        )
        .await;
    wait_error_event(&errors, "already_final: ").await;
    system
        .submit_raw(
            cancel_subject,
            cancel("nope", "trading").to_string().into_bytes(),
            None,
        )
        .await;
    wait_error_event(&errors, "unknown_order: ").await;
    system
        .submit_raw(cancel_subject, b"{\"client_order_id\": 1}".to_vec(), None)
        .await;
    let unreadable = wait_error_event(&errors, "invalid type").await;
    assert_eq!(unreadable.subject, cancel_subject);
    system.wait_orders_done().await;
    assert_eq!(
        system.reports_for("lim-cxl").await.len(),
        2,
        "ACCEPTED and CANCELLED only"
    );

    // A resting order survives a crash: rebuilt from EXEC + ORDERS, filled afterwards.
    system.kill_execution();
    system.start_execution().await;
    system.set_quote(Quote {
        price: "99100.00",
        bid: "99100.00",
        ask: "99102.00",
    });
    let (_, r) = system
        .wait_report("lim-rest filled", is("lim-rest", OrderStatus::Filled))
        .await;
    // 99100.00 * 0.9995 = 99050.45, above the 99000 limit
    assert_eq!(r.last_fill_price.map(|p| *p), Some(dec("99050.45")));
    assert!(
        r.timings.received_ts.is_some(),
        "timings restored from the ACCEPTED report"
    );
    assert!(system
        .reports_for("lim-cxl")
        .await
        .iter()
        .all(|r| r.status != OrderStatus::Filled));
}

/// A book on md.book.sim.<symbol>, as market-data publishes it.
async fn publish_book(client: &Client, symbol: &str, bids: Value, asks: Value) {
    let book = json!({
        "venue": "sim", "symbol": symbol, "bids": bids, "asks": asks, "seq": now_ns(), "ts": now_ns(),
    });
    client
        .publish(format!("md.book.sim.{symbol}"), book.to_string().into())
        .await
        .expect("publish book");
    client.flush().await.expect("flush");
}

#[tokio::test]
async fn market_orders_walk_the_book_and_expire_what_it_cannot_fill() {
    let system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    let is = |id: &'static str| {
        move |r: &ExecutionReport| r.client_order_id.as_ref().is_some_and(|i| i == id)
    };

    publish_book(
        &system.client,
        "BTC-USD",
        json!([["96999.00", "0.004"]]),
        json!([["97001.50", "0.004"], ["97002.00", "0.01"]]),
    )
    .await;
    system
        .submit("BTC-USD", &order("walk-buy", "BUY"), Some("walk-buy"))
        .await;
    let (_, r) = system.wait_report("walk-buy", is("walk-buy")).await;
    assert_eq!(r.status, OrderStatus::Filled, "{r:?}");
    // (0.004 * 97001.50 + 0.006 * 97002.00) / 0.01, no slippage on top of the depth
    assert_eq!(r.avg_fill_price.map(|p| *p), Some(dec("97001.8")));
    assert_eq!(r.last_fill_price, r.avg_fill_price);
    assert_eq!(*r.filled_quantity, dec("0.01"));
    assert_eq!(*r.fee, dec("0.970018"));
    assert_eq!(r.slippage_bps, Some(0.1856));

    // Only 0.004 bid: that part fills, the rest of the MARKET order expires.
    system
        .submit("BTC-USD", &order("walk-sell", "SELL"), Some("walk-sell"))
        .await;
    system
        .wait_report("walk-sell expired", |r| {
            is("walk-sell")(r) && r.status == OrderStatus::Expired
        })
        .await;
    let sell = system.reports_for("walk-sell").await;
    assert_eq!(
        sell.iter().map(|r| r.status).collect::<Vec<_>>(),
        [OrderStatus::PartiallyFilled, OrderStatus::Expired]
    );
    let (part, rest) = (&sell[0], &sell[1]);
    assert_eq!(part.last_fill_quantity.map(|q| *q), Some(dec("0.004")));
    assert_eq!(part.last_fill_price.map(|p| *p), Some(dec("96999")));
    assert_eq!(*part.fee, dec("0.387996"));
    assert!(rest
        .reason
        .as_deref()
        .unwrap()
        .starts_with("book_exhausted: 0.004 of 0.01 filled"));
    assert_eq!(*rest.filled_quantity, dec("0.004"), "what did fill stays");
    assert_eq!(rest.avg_fill_price.map(|p| *p), Some(dec("96999")));
    assert_eq!(rest.last_fill_quantity, None, "no second fill");
    assert_eq!(*rest.fee, Decimal::ZERO, "the fee was on the fill's report");

    // Nothing on the bid side: expires unfilled.
    publish_book(
        &system.client,
        "BTC-USD",
        json!([]),
        json!([["97001.50", "1"]]),
    )
    .await;
    system
        .submit("BTC-USD", &order("walk-none", "SELL"), Some("walk-none"))
        .await;
    let (_, r) = system.wait_report("walk-none", is("walk-none")).await;
    assert_eq!(r.status, OrderStatus::Expired);
    assert_eq!(
        r.reason.as_deref(),
        Some("no_liquidity: the sim book of BTC-USD has no bids")
    );
    assert_eq!(*r.filled_quantity, Decimal::ZERO);
}

#[tokio::test]
async fn symbols_run_side_by_side_each_in_stream_order() {
    let system = System::start().await;
    let errors = error_events(&system.client).await;
    // Risk takes 300 ms for every BTC-USD order, ETH-USD orders pass at once.
    fake_risk(&system.client, RiskMode::SlowFor("BTC-USD")).await;
    publish_book(
        &system.client,
        "ETH-USD",
        json!([]),
        json!([["3500.10", "5"]]),
    )
    .await;
    let mut eth = order("fast-eth", "BUY");
    eth["symbol"] = json!("ETH-USD");

    system
        .submit("BTC-USD", &order("slow-btc", "BUY"), Some("slow-btc"))
        .await;
    system.submit("ETH-USD", &eth, Some("fast-eth")).await;
    system
        .submit(
            "BTC-USD",
            &limit("rest-btc", "BUY", "90000", "GTC"),
            Some("rest-btc"),
        )
        .await;
    // The operator may cancel any agent's order.
    let cancel = json!({"client_order_id": "rest-btc", "agent": "operator", "symbol": "BTC-USD", "ts": now_ns()});
    system
        .submit_raw(
            "orders.cancel.operator.BTC-USD",
            cancel.to_string().into_bytes(),
            None,
        )
        .await;
    let (_, cancelled) = system
        .wait_report("rest-btc cancelled", |r| {
            r.status == OrderStatus::Cancelled
                && r.client_order_id.as_ref().is_some_and(|i| i == "rest-btc")
        })
        .await;
    assert_eq!(cancelled.reason.as_deref(), Some("cancelled by operator"));
    system.wait_orders_done().await;

    let order_of = |reports: &[(String, ExecutionReport)]| {
        reports
            .iter()
            .map(|(_, r)| format!("{}:{}", r.client_order_id.as_ref().unwrap(), r.status))
            .collect::<Vec<_>>()
    };
    // ETH did not wait for the slow BTC check; BTC kept its order, and the cancel came
    // after the order it cancels was accepted.
    assert_eq!(
        order_of(&system.stored_reports().await),
        [
            "fast-eth:FILLED",
            "slow-btc:FILLED",
            "rest-btc:ACCEPTED",
            "rest-btc:CANCELLED"
        ]
    );
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}

#[tokio::test]
async fn the_simulated_venue_latency_comes_before_the_fill() {
    let system = System::start_with(&[
        ("MOONBUS__EXECUTION__LATENCY_MS", "200"),
        // 2 x (500 + 200) ms stays within ack_wait_ms (validated at start)
        ("MOONBUS__EXECUTION__MAX_IN_FLIGHT", "2"),
    ])
    .await;
    fake_risk(&system.client, RiskMode::Approve).await;
    system
        .submit("BTC-USD", &order("late-1", "BUY"), Some("late-1"))
        .await;
    let (_, r) = system
        .wait_report("late-1", |r| r.client_order_id.is_some())
        .await;
    assert_eq!(r.status, OrderStatus::Filled);
    let t = &r.timings;
    let waited = Duration::from_nanos(t.filled_ts.unwrap() - t.risk_checked_ts.unwrap());
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
}

// ---------------------------------------------------------------- message ids and reserved ids

/// ORDERS de-duplicates on Nats-Msg-Id whatever the subject, and any order publisher may
/// set any message id. The trading agent reads `exec.protection.>`, so it knows the
/// gateway's protected entry and its exit's id (`<parent>-x1`): a junk order of its own
/// stored under that message id must not make the stream drop the stop-loss exit.
#[tokio::test]
async fn a_foreign_message_id_cannot_drop_a_protection_exit() {
    let system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    let mut entry = order("gw-prot-1", "BUY");
    entry["agent"] = json!("gateway");
    entry["protection"] = json!({"stop_loss": "96000"});
    system.submit("BTC-USD", &entry, Some("gw-prot-1")).await;
    system
        .wait_report("the entry filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-1")
                && r.status == OrderStatus::Filled
        })
        .await;
    // The thief's own order, stored under the exit's message id.
    let burn = limit("trd-burn-1", "BUY", "1", "GTC");
    system.submit("BTC-USD", &burn, Some("gw-prot-1-x1")).await;
    system.wait_orders_done().await;
    system.set_quote(Quote {
        price: "95000.00",
        bid: "94999.00",
        ask: "95001.00",
    });
    let (_, exit) = system
        .wait_report("the stop-loss exit ended", |r| {
            r.parent_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-1")
                && ledger_final(r.status)
        })
        .await;
    assert_eq!(exit.status, OrderStatus::Filled, "{exit:?}");
    assert_eq!(exit.agent.as_ref().unwrap().as_str(), "protection");
    assert_eq!(exit.client_order_id.unwrap().as_str(), "gw-prot-1-x1");
}

/// The trading agent's own order whose payload id is a protection's exit id
/// (`<parent>-x1`, under a message id of its own), stored just as the stop triggers: its
/// fill is not the exit's. Neither its reports nor the protection may count it as the
/// exit (a BUY, it would mark the long "closed" while doubling it); and the exit goes
/// again under the next id, since the ledger now drops the one sent under the taken id.
#[tokio::test]
async fn a_forged_order_named_like_a_protection_exit_is_not_counted_as_the_exit() {
    let system = System::start().await;
    // Every BTC-USD check takes 300 ms: the forged order waits for risk while the stop
    // triggers (ticks every 20 ms) and names its exit.
    fake_risk(&system.client, RiskMode::SlowFor("BTC-USD")).await;
    let mut entry = order("gw-prot-2", "BUY");
    entry["agent"] = json!("gateway");
    entry["protection"] = json!({"stop_loss": "96000"});
    system.submit("BTC-USD", &entry, Some("gw-prot-2")).await;
    system
        .wait_report("the entry filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-2")
                && r.status == OrderStatus::Filled
        })
        .await;
    let forged = order("gw-prot-2-x1", "BUY");
    system.submit("BTC-USD", &forged, Some("trd-forge-1")).await;
    system.set_quote(Quote {
        price: "95000.00",
        bid: "94999.00",
        ask: "95001.00",
    });
    let (_, forged_fill) = system
        .wait_report("the forged order filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-2-x1")
                && r.agent.as_ref().is_some_and(|a| a.as_str() == "trading")
                && ledger_final(r.status)
        })
        .await;
    assert_eq!(forged_fill.parent_order_id, None, "{forged_fill:?}");
    assert_eq!(forged_fill.child_kind, None, "{forged_fill:?}");
    // The protection does not take the forged fill for its exit's, and its exit, whose id
    // was taken (the one sent under it is a duplicate the ledger drops), goes again under
    // the next id and closes it.
    let (_, exit) = system
        .wait_report("the exit under the next id filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-2-x2")
                && r.status == OrderStatus::Filled
        })
        .await;
    assert_eq!(exit.agent.as_ref().map(|a| a.as_str()), Some("protection"));
    assert_eq!(
        exit.parent_order_id.as_ref().map(|p| p.as_str()),
        Some("gw-prot-2")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = stored_protection(&system, "gw-prot-2").await;
    // Ended: it expires by itself (a bucket of active protections and the last minutes' ended).
    assert_eq!(ttl_of(&stored).as_deref(), Some("1200s"));
    let state: Value = serde_json::from_slice(&stored.payload).expect("json");
    assert_eq!(state["state"], json!("CLOSED"), "{state}");
    assert_eq!(state["exit_order_id"], json!("gw-prot-2-x2"), "{state}");
    assert_eq!(
        state["exited"],
        json!(exit.filled_quantity.get().to_string()),
        "{state}"
    );
}

/// The risk agent reads `exec.report.>`, so it sees the gateway's algo parent and how many
/// children it sent: an order of its own named like the next child (`<parent>__s2`) is
/// refused, but must not take that id away from the child the algo sends next (the
/// iceberg would wait for it for ever).
#[tokio::test]
async fn a_forged_child_id_cannot_stall_another_agents_algo() {
    let system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    // The book is thin, so each 0.01 child fills and the next goes after it.
    let mut parent = order("gw-ice-1", "BUY");
    parent["agent"] = json!("gateway");
    parent["quantity"] = json!("0.03");
    parent["type"] = json!("LIMIT");
    parent["limit_price"] = json!("90000");
    parent["algo"] = json!({"kind": "ICEBERG", "display_quantity": "0.01"});
    system.submit("BTC-USD", &parent, Some("gw-ice-1")).await;
    system
        .wait_report("the first child rests", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-ice-1__s1")
                && r.status == OrderStatus::Accepted
        })
        .await;
    // The thief names its own orders like the children still to come, and burns their
    // message ids too.
    for n in 2..=3 {
        let mut forged = order(&format!("gw-ice-1__s{n}"), "BUY");
        forged["agent"] = json!("risk");
        system
            .submit("BTC-USD", &forged, Some(&format!("gw-ice-1__s{n}")))
            .await;
    }
    system.wait_orders_done().await;
    // Every child fills now, one after the other.
    system.set_quote(Quote {
        price: "89000.00",
        bid: "88999.00",
        ask: "89001.00",
    });
    let (_, done) = system
        .wait_report("the parent ended", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-ice-1")
                && ledger_final(r.status)
        })
        .await;
    assert_eq!(done.status, OrderStatus::Filled, "{done:?}");
    assert_eq!(done.filled_quantity.get(), dec("0.03"));
}

fn ledger_final(status: OrderStatus) -> bool {
    !matches!(status, OrderStatus::Accepted | OrderStatus::PartiallyFilled)
}

/// A protection's stored record, read back (KV bucket `protections`, key = the entry's id).
async fn protection_record(system: &System, parent: &str) -> Value {
    serde_json::from_slice(&stored_protection(system, parent).await.payload).expect("json")
}

/// The stored message of a protection's record, headers included.
async fn stored_protection(system: &System, parent: &str) -> async_nats::Message {
    system
        .client
        .request(
            format!("$JS.API.DIRECT.GET.KV_protections.$KV.protections.{parent}"),
            "".into(),
        )
        .await
        .expect("the protection's record")
}

fn ttl_of(message: &async_nats::Message) -> Option<String> {
    let headers = message.headers.as_ref()?;
    headers.get("Nats-TTL").map(|v| v.as_str().to_string())
}

/// The trading agent's order named like a protection's exit (`<parent>-x1`) filled, and
/// execution died before the exit went again under the next id: its stored record still
/// names `-x1`, TRIGGERED. On restart that fill is not the exit's either (the ledger knows
/// the order under the id is not agent protection's): the exit goes under the next id and
/// closes the protection.
#[tokio::test]
async fn after_a_restart_a_forged_order_named_like_the_exit_is_not_counted_as_the_exit() {
    let mut system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    let mut entry = order("gw-prot-3", "BUY");
    entry["agent"] = json!("gateway");
    entry["protection"] = json!({"stop_loss": "96000"});
    system.submit("BTC-USD", &entry, Some("gw-prot-3")).await;
    system
        .wait_report("the entry filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-3")
                && r.status == OrderStatus::Filled
        })
        .await;
    let forged = order("gw-prot-3-x1", "BUY");
    system.submit("BTC-USD", &forged, Some("trd-forge-3")).await;
    system
        .wait_report("the forged order filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-3-x1")
                && r.status == OrderStatus::Filled
        })
        .await;
    system.wait_orders_done().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    system.kill_execution();
    // As the crash left it: the stop triggered and stored its exit's id, `-x1`, which the
    // forged order (in flight at that moment) had taken.
    let stored = stored_protection(&system, "gw-prot-3").await;
    assert_eq!(ttl_of(&stored), None, "an active protection never expires");
    let mut record: Value = serde_json::from_slice(&stored.payload).expect("json");
    assert_eq!(record["state"], json!("ARMED"), "{record}");
    record["state"] = json!("TRIGGERED");
    record["exit_order_id"] = json!("gw-prot-3-x1");
    record["attempt"] = json!(1);
    record["exit_kind"] = json!("STOP_LOSS");
    record["exit_quantity"] = record["entry_filled"].clone();
    record["triggered_ts"] = json!(now_ns());
    record["reason"] = json!("stop_loss: price 95000.00 crossed 96000");
    let kv = system
        .js
        .get_key_value("protections")
        .await
        .expect("bucket");
    kv.put("gw-prot-3", record.to_string().into())
        .await
        .expect("record stored");
    system.set_quote(Quote {
        price: "95000.00",
        bid: "94999.00",
        ask: "95001.00",
    });
    system.start_execution().await;
    let (_, exit) = system
        .wait_report("the exit under the next id filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-3-x2")
                && r.status == OrderStatus::Filled
        })
        .await;
    assert_eq!(exit.agent.as_ref().map(|a| a.as_str()), Some("protection"));
    assert_eq!(
        exit.parent_order_id.as_ref().map(|p| p.as_str()),
        Some("gw-prot-3")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = protection_record(&system, "gw-prot-3").await;
    assert_eq!(state["state"], json!("CLOSED"), "{state}");
    assert_eq!(state["exit_order_id"], json!("gw-prot-3-x2"), "{state}");
    assert_eq!(
        state["exited"],
        json!(exit.filled_quantity.get().to_string()),
        "{state}"
    );
}

/// Protections stored in bucket `moonbus` (before they had a bucket of their own) are
/// restored at start and carried on in `protections`; their records there never expire (the
/// older one in `moonbus`, which nothing may delete, would come back at the next start),
/// while a protection of the new bucket that ends expires by itself.
#[tokio::test]
async fn protections_stored_in_the_shared_bucket_before_carry_on_after_an_upgrade() {
    let mut system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    let mut entry = order("gw-prot-4", "BUY");
    entry["agent"] = json!("gateway");
    entry["protection"] = json!({"stop_loss": "96000"});
    system.submit("BTC-USD", &entry, Some("gw-prot-4")).await;
    system
        .wait_report("the entry filled", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "gw-prot-4")
                && r.status == OrderStatus::Filled
        })
        .await;
    system.wait_orders_done().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    system.kill_execution();
    // As an older execution stored an armed protection: in `moonbus`, key exec.protection.<id>.
    let mut legacy = protection_record(&system, "gw-prot-4").await;
    assert_eq!(legacy["state"], json!("ARMED"), "{legacy}");
    legacy["parent_order_id"] = json!("gw-prot-old");
    legacy["ts"] = json!(now_ns());
    let shared = moonbus_common::streams::open_kv(&system.js)
        .await
        .expect("bucket moonbus");
    shared
        .put("exec.protection.gw-prot-old", legacy.to_string().into())
        .await
        .expect("legacy record stored");
    system.set_quote(Quote {
        price: "95000.00",
        bid: "94999.00",
        ask: "95001.00",
    });
    system.start_execution().await;
    for parent in ["gw-prot-4", "gw-prot-old"] {
        let exit = format!("{parent}-x1");
        system
            .wait_report("the stop's exit filled", |r| {
                r.client_order_id
                    .as_ref()
                    .is_some_and(|id| id.as_str() == exit)
                    && r.status == OrderStatus::Filled
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = stored_protection(&system, "gw-prot-4").await;
    let old = stored_protection(&system, "gw-prot-old").await;
    for stored in [&new, &old] {
        let state: Value = serde_json::from_slice(&stored.payload).expect("json");
        assert_eq!(state["state"], json!("CLOSED"), "{state}");
    }
    assert_eq!(ttl_of(&new).as_deref(), Some("1200s"));
    assert_eq!(ttl_of(&old), None, "carried over from moonbus: kept");
    // Restarted again, the ended protection from `moonbus` is not armed again: no second exit.
    system.kill_execution();
    system.start_execution().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let exits = system.reports_for("gw-prot-old-x2").await;
    assert!(exits.is_empty(), "{exits:?}");
}

/// Execution published an algo's next child to ORDERS and died before the parent's report
/// counting it (`slices_sent`) was stored. On restart the child comes back from ORDERS: it
/// is exactly the algo's next child, so it goes on and counts (refused as an orphan, the
/// algo would wait for it: its own publish of that child is a duplicate ORDERS drops). The
/// child is due a minute on here (as to a restarted execution whose clock is behind), so it
/// arrives from ORDERS before the algo would send it itself.
#[tokio::test]
async fn after_a_restart_the_algo_child_published_before_the_crash_goes_on() {
    let mut system = System::start().await;
    fake_risk(&system.client, RiskMode::Approve).await;
    let errors = error_events(&system.client).await;
    let mut parent = order("trd-twap-r1", "BUY");
    parent["quantity"] = json!("0.02");
    parent["algo"] = json!({"kind": "TWAP", "duration_ms": 120000, "slices": 2});
    system.submit("BTC-USD", &parent, Some("trd-twap-r1")).await;
    system
        .wait_report("the parent counted its first child's fill", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "trd-twap-r1")
                && r.status == OrderStatus::PartiallyFilled
                && r.algo.as_ref().is_some_and(|a| a.slices_sent == 1)
        })
        .await;
    system.wait_orders_done().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    system.kill_execution();
    // What execution had published just before it died: the second child.
    let mut child = parent.clone();
    child.as_object_mut().unwrap().remove("algo");
    child["client_order_id"] = json!("trd-twap-r1__s2");
    child["quantity"] = json!("0.01");
    child["ts"] = json!(now_ns());
    system
        .submit("BTC-USD", &child, Some("trd-twap-r1__s2"))
        .await;
    system.start_execution().await;
    let (_, done) = system
        .wait_report("the parent ended", |r| {
            r.client_order_id
                .as_ref()
                .is_some_and(|id| id == "trd-twap-r1")
                && ledger_final(r.status)
        })
        .await;
    assert_eq!(done.status, OrderStatus::Filled, "{done:?}");
    assert_eq!(done.filled_quantity.get(), dec("0.02"));
    let progress = done.algo.expect("progress");
    assert_eq!((progress.slices_sent, progress.slices_filled), (2, 2));
    for n in 1..=2 {
        let id = format!("trd-twap-r1__s{n}");
        let finals: Vec<_> = system
            .reports_for(&id)
            .await
            .into_iter()
            .filter(|r| ledger_final(r.status))
            .collect();
        assert_eq!(finals.len(), 1, "{id}: {finals:?}");
        assert_eq!(
            finals[0].parent_order_id.as_ref().map(|p| p.as_str()),
            Some("trd-twap-r1")
        );
    }
    assert!(
        !errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.reason.starts_with("orphan_slice")),
        "the child was refused"
    );
}
