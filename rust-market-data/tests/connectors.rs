//! The live connectors against local stand-ins of the exchanges: a WebSocket
//! server and a tiny HTTP server on 127.0.0.1 that speak each venue's exact wire
//! format (recorded messages in tests/fixtures/connectors/), including dropped
//! connections, sequence gaps, garbage frames and pings. Each test starts the
//! connector as the service does (`connectors::spawn` with a `[market_data]`
//! config whose URLs point at the stand-ins) and reads the `FeedEvent`s it sends
//! the engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use moonbus_common::config::Config;
use moonbus_common::{Book, FeedState, Tick};
use rust_market_data::config::MarketDataConfig;
use rust_market_data::connectors;
use rust_market_data::feed::{self, FeedEvent, FeedKind};
use rust_market_data::metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(10);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/connectors");
/// Fast retries and a quiet heartbeat, so the tests are quick and the events few.
const FAST_LINK: &str = "backoff_initial_ms = 20\nbackoff_max_ms = 100\nstatus_interval_ms = 60000\nconnect_timeout_ms = 2000\n";

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap()
}

fn lines(path: &str) -> Vec<String> {
    fixture(path).lines().map(str::to_string).collect()
}

/// Starts the connector `kind` with `[market_data.<kind>]` = `section`.
fn start(kind: FeedKind, section: &str) -> Events {
    let text = format!(
        "[market_data.{kind}]\n{FAST_LINK}{section}",
        kind = kind.as_str()
    );
    let config: MarketDataConfig = Config::from_parts(&text, [])
        .unwrap()
        .section("market_data")
        .unwrap();
    let (sink, rx) = feed::channel();
    connectors::spawn(kind, &config, sink).unwrap();
    Events { rx }
}

// ---------------------------------------------------------------- what the engine gets

struct Events {
    rx: mpsc::Receiver<FeedEvent>,
}

impl Events {
    /// The next event matching `want` (others are skipped), within WAIT.
    async fn next(&mut self, what: &str, want: impl Fn(&FeedEvent) -> bool) -> FeedEvent {
        let found = timeout(WAIT, async {
            loop {
                let event = self.rx.recv().await.expect("the connector ended");
                if want(&event) {
                    return event;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
    }

    async fn status(&mut self, state: FeedState) -> String {
        match self
            .next(
                &format!("status {state}"),
                |e| matches!(e, FeedEvent::Status(s) if s.status == state),
            )
            .await
        {
            FeedEvent::Status(s) => s.detail,
            _ => unreachable!(),
        }
    }

    /// The next tick; the next event that is not a status must be one.
    async fn tick(&mut self) -> Tick {
        match self.data().await {
            FeedEvent::Tick(t) => t,
            other => panic!("expected a tick, got {other:?}"),
        }
    }

    /// The next book; the next event that is not a status must be one.
    async fn book(&mut self) -> Book {
        match self.data().await {
            FeedEvent::Book(b) => b,
            other => panic!("expected a book, got {other:?}"),
        }
    }

    /// The next tick or book (statuses and reports of skipped frames pass by).
    async fn data(&mut self) -> FeedEvent {
        self.next("tick or book", |e| {
            matches!(e, FeedEvent::Tick(_) | FeedEvent::Book(_))
        })
        .await
    }
}

fn top(book: &Book) -> (String, String) {
    (book.bids[0].0.to_string(), book.asks[0].0.to_string())
}

fn quote(tick: &Tick) -> (String, String, String) {
    let side = |s: Option<moonbus_common::PositiveMoney>| s.map_or("-".into(), |p| p.to_string());
    (tick.price.to_string(), side(tick.bid), side(tick.ask))
}

// ---------------------------------------------------------------- a WebSocket stand-in

struct WsServer {
    url: String,
    conns: mpsc::Receiver<Conn>,
}

/// One accepted connection, with the request that opened it.
struct Conn {
    ws: WebSocketStream<TcpStream>,
    target: String,
    headers: HashMap<String, String>,
}

impl WsServer {
    /// `subprotocol`: the one to agree to, when the client asks for it (Birdeye).
    async fn start(subprotocol: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, conns) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::new(Mutex::new((String::new(), HashMap::new())));
                let record = seen.clone();
                // The signature (and its large error type) is tungstenite's.
                #[allow(clippy::result_large_err)]
                let callback = move |request: &Request, mut response: Response| {
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    *record.lock().unwrap() = (request.uri().to_string(), headers);
                    if let Some(protocol) = subprotocol {
                        response
                            .headers_mut()
                            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
                    }
                    Ok(response)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                    let (target, headers) = seen.lock().unwrap().clone();
                    let _ = tx
                        .send(Conn {
                            ws,
                            target,
                            headers,
                        })
                        .await;
                }
            }
        });
        Self { url, conns }
    }

    async fn accept(&mut self) -> Conn {
        timeout(WAIT, self.conns.recv())
            .await
            .expect("no connection")
            .unwrap()
    }
}

impl Conn {
    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    async fn send_all(&mut self, frames: &[String]) {
        for frame in frames {
            self.send(frame).await;
        }
    }

    /// The next text frame from the client (its pings are answered on the way).
    async fn recv(&mut self) -> String {
        loop {
            match timeout(WAIT, self.ws.next())
                .await
                .expect("no frame from the client")
            {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv_json(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.recv().await).unwrap()
    }

    /// Pings the client and waits for its pong, which must carry the same payload.
    async fn ping(&mut self, payload: &'static [u8]) {
        self.ws.send(Message::Ping(payload.into())).await.unwrap();
        loop {
            match timeout(WAIT, self.ws.next()).await.expect("no pong") {
                Some(Ok(Message::Pong(got))) => {
                    assert_eq!(&got[..], payload, "the pong must echo the ping");
                    return;
                }
                Some(Ok(_)) => continue,
                other => panic!("connection ended while waiting for a pong: {other:?}"),
            }
        }
    }

    /// Waits for the client's next WebSocket ping.
    async fn client_ping(&mut self) {
        loop {
            match timeout(WAIT, self.ws.next())
                .await
                .expect("no ping from the client")
            {
                Some(Ok(Message::Ping(_))) => return,
                Some(Ok(_)) => continue,
                other => panic!("connection ended while waiting for a ping: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------- an HTTP stand-in

#[derive(Debug, Clone)]
struct HttpRequest {
    target: String,
    headers: HashMap<String, String>,
    at: std::time::Instant,
}

/// An answer: status, extra headers, body.
struct Reply(u16, Vec<(&'static str, String)>, String);

impl From<(u16, String)> for Reply {
    fn from((status, body): (u16, String)) -> Self {
        Reply(status, Vec::new(), body)
    }
}

type Responder = dyn Fn(usize, &HttpRequest) -> Reply + Send + Sync;

/// Answers each request with `respond(n, request)` (n counts from 1), one request
/// a connection, and keeps every request.
struct HttpServer {
    url: String,
    requests: Arc<Mutex<Vec<HttpRequest>>>,
}

impl HttpServer {
    async fn start<R: Into<Reply>>(
        respond: impl Fn(usize, &HttpRequest) -> R + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let respond: Arc<Responder> = Arc::new(move |n, request| respond(n, request).into());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, respond) = (kept.clone(), respond.clone());
                tokio::spawn(answer(stream, kept, respond));
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<HttpRequest> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(
    mut stream: TcpStream,
    kept: Arc<Mutex<Vec<HttpRequest>>>,
    respond: Arc<Responder>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let target = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_string();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let request = HttpRequest {
        target,
        headers,
        at: std::time::Instant::now(),
    };
    let n = {
        let mut kept = kept.lock().unwrap();
        kept.push(request.clone());
        kept.len()
    };
    let Reply(status, extra, body) = respond(n, &request);
    let extra: String = extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------- Binance

/// The metrics are per venue and per process: the Binance tests that count take
/// turns.
static BINANCE_METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn binance_syncs_its_book_resyncs_after_a_gap_and_survives_drops_garbage_and_pings() {
    let _turn = BINANCE_METRICS.lock().await;
    let counters = metrics::venue("binance");
    let (gaps, reconnects) = (counters.gaps.get(), counters.reconnects.get());
    // The first snapshot is at 160, every later one at 165.
    let rest = HttpServer::start(|n, _| {
        let name = if n == 1 {
            "depth_snapshot_160.json"
        } else {
            "depth_snapshot_165.json"
        };
        (200, fixture(&format!("binance/{name}")))
    })
    .await;
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Binance,
        &format!(
            "ws_url = \"{}\"\nrest_url = \"{}\"\nsymbols = [\"BNBBTC\"]\nsnapshot_limit = 5\nbook_depth = 5\n",
            ws.url, rest.url
        ),
    );
    assert_eq!(events.status(FeedState::Reconnecting).await, "connecting");
    let mut conn = ws.accept().await;
    assert_eq!(
        conn.target,
        "/stream?streams=bnbbtc@trade/bnbbtc@bookTicker/bnbbtc@depth@100ms"
    );
    events.status(FeedState::Connected).await;

    // 157-160 and 161-163: buffered until the snapshot (160), then 161-163 applies.
    let diffs = lines("binance/depth_stream.jsonl");
    conn.send_all(&diffs[..2]).await;
    let snapshot = events.book().await;
    assert_eq!(
        (snapshot.seq, top(&snapshot)),
        (160, ("0.0024".into(), "0.0026".into()))
    );
    let next = events.book().await;
    assert_eq!((next.seq, next.bids[0].1.to_string()), (163, "10.5".into()));
    assert_eq!(next.asks.len(), 1, "0.0027 was removed");
    let request = &rest.requests()[0];
    assert_eq!(request.target, "/api/v3/depth?symbol=BNBBTC&limit=5");

    // 166 after 163: 164-165 is missing -> a gap, a new snapshot (165), then 166.
    conn.send(&diffs[3]).await;
    let resynced = events.book().await;
    assert_eq!(
        (resynced.seq, top(&resynced)),
        (165, ("0.0021".into(), "0.0029".into()))
    );
    assert_eq!(events.book().await.seq, 166);
    assert_eq!(rest.requests().len(), 2);
    assert_eq!(counters.gaps.get(), gaps + 1);

    // Garbage is skipped; the trade after it still arrives. Pings get their pong.
    conn.send("this is not JSON").await;
    conn.send(
        r#"{"stream":"bnbbtc@trade","data":{"e":"trade","s":"BNBBTC","t":1,"p":"abc","q":"1"}}"#,
    )
    .await;
    conn.send(r#"{"stream":"bnbbtc@trade","data":{"e":"trade","s":"<>.*","t":1,"p":"1","q":"1"}}"#)
        .await;
    conn.ping(b"are you there").await;
    conn.send_all(&lines("binance/ticks.jsonl")).await;
    let quoted = events.tick().await;
    assert_eq!(
        quote(&quoted),
        ("25.35855".into(), "25.3519".into(), "25.3652".into())
    );
    let traded = events.tick().await;
    assert_eq!(
        (traded.price.to_string(), traded.size.unwrap().to_string()),
        ("25.3601".into(), "100".into())
    );
    assert_eq!((traded.symbol.as_str(), traded.seq), ("BNB-BTC", 2));

    // The server drops the connection: reconnecting, connected, and a fresh book.
    drop(conn);
    let why = events.status(FeedState::Reconnecting).await;
    assert!(why.contains("next attempt in"), "{why}");
    let mut conn = ws.accept().await;
    events.status(FeedState::Connected).await;
    conn.send(&diffs[3]).await;
    assert_eq!(events.book().await.seq, 165);
    assert_eq!(events.book().await.seq, 166);
    assert_eq!(rest.requests().len(), 3);
    assert!(counters.reconnects.get() > reconnects);
}

#[tokio::test]
async fn binance_replays_the_diffs_behind_a_gap_after_the_resync_and_ignores_old_diffs() {
    let _turn = BINANCE_METRICS.lock().await;
    let counters = metrics::venue("binance");
    let (gaps, duplicates) = (counters.gaps.get(), counters.duplicates.get());
    let rest = HttpServer::start(|n, _| {
        let name = if n == 1 {
            "depth_snapshot_160.json"
        } else {
            "depth_snapshot_165.json"
        };
        (200, fixture(&format!("binance/{name}")))
    })
    .await;
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Binance,
        &format!(
            "ws_url = \"{}\"\nrest_url = \"{}\"\nsymbols = [\"BNBBTC\"]\nbook_depth = 5\n",
            ws.url, rest.url
        ),
    );
    let mut conn = ws.accept().await;
    events.status(FeedState::Connected).await;
    // 161-163 is lost: 157-160, 164-165, 166. Whether the first snapshot (160)
    // comes before 164-165 or after all three, 164-165 is a gap and the second
    // snapshot (165) is followed by the buffered 166.
    let diffs = lines("binance/depth_stream.jsonl");
    conn.send_all(&[diffs[0].clone(), diffs[2].clone(), diffs[3].clone()])
        .await;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&166) {
        seqs.push(events.book().await.seq);
    }
    assert!(seqs.ends_with(&[165, 166]), "{seqs:?}");
    assert_eq!(rest.requests().len(), 2);
    assert_eq!(counters.gaps.get(), gaps + 1);
    // In sync at 166: 164-165 again is old (ignored, no resync); 167-168 follows.
    conn.send(&diffs[2]).await;
    conn.send(&lines("binance/depth_after_gap.jsonl")[0]).await;
    let next = events.book().await;
    // 167-168 removes the only ask of the snapshot at 165.
    assert_eq!(
        (next.seq, next.bids[0].0.to_string(), next.asks.len()),
        (168, "0.0022".into(), 0)
    );
    assert_eq!(rest.requests().len(), 2, "no resync for an old diff");
    assert_eq!(counters.gaps.get(), gaps + 1);
    assert!(counters.duplicates.get() > duplicates);
}

/// A failed snapshot is fetched again after the symbol's retry delay (20 ms here);
/// a 429 or 418 stops every snapshot for its Retry-After first: asking again during
/// it is what turns Binance's 429 into a ban.
#[tokio::test]
async fn binance_retries_a_failed_snapshot_and_waits_out_a_rate_limit() {
    let rest = HttpServer::start(|n, _| match n {
        1 => Reply(
            418,
            vec![("Retry-After", "2".into())],
            r#"{"code":-1003,"msg":"Way too many requests; IP banned until 1700000000000."}"#
                .into(),
        ),
        2 => (
            429,
            r#"{"code":-1003,"msg":"Too many requests."}"#.to_string(),
        )
            .into(),
        _ => (200, fixture("binance/depth_snapshot_160.json")).into(),
    })
    .await;
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Binance,
        &format!(
            "ws_url = \"{}\"\nrest_url = \"{}\"\nsymbols = [\"BNBBTC\"]\n",
            ws.url, rest.url
        ),
    );
    let mut conn = ws.accept().await;
    conn.send(&lines("binance/depth_stream.jsonl")[1]).await;
    assert_eq!(events.book().await.seq, 160);
    assert_eq!(events.book().await.seq, 163);
    let requests = rest.requests();
    assert_eq!(requests.len(), 3);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "asked again after {waited:?}"
    );
}

/// A quiet connection is kept alive by the connector's own pings (Aster pings
/// only every 5 minutes; a connection without a frame for dead_after_ms is dead).
#[tokio::test]
async fn aster_pings_a_quiet_connection_and_its_pongs_keep_it_alive() {
    let rest = HttpServer::start(|_, _| (200, fixture("aster/depth_snapshot_1000.json"))).await;
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Aster,
        &format!(
            "ws_url = \"{}\"\nrest_url = \"{}\"\nsymbols = [\"BTCUSDT\"]\nping_interval_ms = 100\ndead_after_ms = 400\nstale_after_ms = 200\n",
            ws.url, rest.url
        ),
    );
    let conn = ws.accept().await;
    events.status(FeedState::Connected).await;
    // The venue reads (and so answers every ping: tungstenite pongs on the next
    // read) and sends nothing else for 1.2 s, three times dead_after_ms.
    let pings = tokio::spawn(async move {
        let mut conn = conn;
        let mut pings = 0;
        let end = tokio::time::Instant::now() + Duration::from_millis(1200);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(end, conn.ws.next()).await {
            if matches!(frame, Message::Ping(_)) {
                pings += 1;
            }
        }
        (pings, conn)
    });
    assert_eq!(
        events.status(FeedState::Stale).await,
        "no market data for 200 ms"
    );
    assert!(
        timeout(Duration::from_millis(1000), ws.accept())
            .await
            .is_err(),
        "the connector reconnected though the venue answered its pings"
    );
    let (pings, _conn) = pings.await.unwrap();
    assert!(
        pings >= 5,
        "{pings} pings in 1.2 s at ping_interval_ms = 100"
    );
}

// ---------------------------------------------------------------- Aster

/// Aster's perpetual futures speak Binance USDⓈ-M futures: aggTrade, futures
/// bookTicker, depth diffs chained by `pu`, snapshots from /fapi/v1/depth.
#[tokio::test]
async fn aster_chains_diffs_by_pu_resyncs_on_a_mismatch_and_survives_drops_garbage_and_pings() {
    let counters = metrics::venue("aster");
    let (gaps, duplicates, reconnects) = (
        counters.gaps.get(),
        counters.duplicates.get(),
        counters.reconnects.get(),
    );
    // The first snapshot is at 1000, every later one at 1012.
    let rest = HttpServer::start(|n, _| {
        let id = if n == 1 { 1000 } else { 1012 };
        (200, fixture(&format!("aster/depth_snapshot_{id}.json")))
    })
    .await;
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Aster,
        &format!(
            "ws_url = \"{}\"\nrest_url = \"{}\"\nsymbols = [\"BTCUSDT\"]\nsnapshot_limit = 5\nbook_depth = 5\n",
            ws.url, rest.url
        ),
    );
    let mut conn = ws.accept().await;
    assert_eq!(
        conn.target,
        "/stream?streams=btcusdt@aggTrade/btcusdt@bookTicker/btcusdt@depth@100ms"
    );
    events.status(FeedState::Connected).await;

    // 990-995 and 996-1003 buffered until the snapshot (1000): 996-1003 straddles it.
    let diffs = lines("aster/depth_stream.jsonl");
    conn.send_all(&diffs[..2]).await;
    let snapshot = events.book().await;
    assert_eq!(
        (snapshot.seq, top(&snapshot)),
        (1000, ("97000".into(), "97010".into()))
    );
    let next = events.book().await;
    assert_eq!((next.seq, next.bids[0].1.to_string()), (1003, "1.5".into()));
    assert_eq!(
        rest.requests()[0].target,
        "/fapi/v1/depth?symbol=BTCUSDT&limit=5"
    );

    // 1010-1012 is lost: 1020-1025 (pu 1012) does not follow 1003. A new snapshot
    // (1012), which 1020-1025 starts right after.
    conn.send(&diffs[3]).await;
    let resynced = events.book().await;
    assert_eq!(
        (resynced.seq, top(&resynced)),
        (1012, ("97005".into(), "97010".into()))
    );
    let after = events.book().await;
    assert_eq!(
        (after.seq, top(&after)),
        (1025, ("97000".into(), "97008".into()))
    );
    assert_eq!(rest.requests().len(), 2);
    assert_eq!(counters.gaps.get(), gaps + 1);

    // 1010-1012, late, is stale; a frame without pu and garbage are skipped; the
    // next diff (pu 1025) still follows, with no resync.
    conn.send(&diffs[2]).await;
    conn.send(r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"T":1,"s":"BTCUSDT","U":1030,"u":1031,"b":[],"a":[]}}"#).await;
    conn.send("this is not JSON").await;
    conn.ping(b"are you there").await;
    conn.send(&diffs[4]).await;
    let last = events.book().await;
    assert_eq!(
        (last.seq, top(&last)),
        (1031, ("97001".into(), "97008".into()))
    );
    assert_eq!(rest.requests().len(), 2, "no resync for a stale diff");
    assert_eq!(counters.gaps.get(), gaps + 1);
    assert!(counters.duplicates.get() > duplicates);

    // bookTicker, then aggTrade.
    conn.send_all(&lines("aster/ticks.jsonl")).await;
    let quoted = events.tick().await;
    assert_eq!(
        quote(&quoted),
        ("97000.2".into(), "97000.1".into(), "97000.3".into())
    );
    let traded = events.tick().await;
    assert_eq!(
        (traded.price.to_string(), traded.size.unwrap().to_string()),
        ("97000.25".into(), "0.015".into())
    );
    assert_eq!(
        (traded.venue.as_str(), traded.symbol.as_str()),
        ("aster", "BTC-USDT")
    );

    // The server drops the connection: a fresh snapshot (1012) on the new one.
    drop(conn);
    events.status(FeedState::Reconnecting).await;
    let mut conn = ws.accept().await;
    events.status(FeedState::Connected).await;
    conn.send(&diffs[3]).await;
    assert_eq!(events.book().await.seq, 1012);
    assert_eq!(events.book().await.seq, 1025);
    assert_eq!(rest.requests().len(), 3);
    assert!(counters.reconnects.get() > reconnects);
}

// ---------------------------------------------------------------- Coinbase

/// The metrics are per venue and per process: the Coinbase tests take turns so
/// that each counts only its own gaps.
static COINBASE_METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn coinbase_exchange_checks_sequences_and_resubscribes_a_book_out_of_sync() {
    let _turn = COINBASE_METRICS.lock().await;
    let counters = metrics::venue("coinbase");
    let gaps = counters.gaps.get();
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Coinbase,
        &format!(
            "api = \"exchange\"\nws_url = \"{}\"\nsymbols = [\"BTC-USD\"]\nbook_depth = 3\n",
            ws.url
        ),
    );
    let mut conn = ws.accept().await;
    let subscribe = conn.recv_json().await;
    assert_eq!(
        subscribe,
        serde_json::json!({"type": "subscribe", "product_ids": ["BTC-USD"], "channels": ["ticker", "level2_batch", "heartbeat"]})
    );
    events.status(FeedState::Connected).await;
    conn.send_all(&lines("coinbase/exchange.jsonl")).await;
    let snapshot = events.book().await;
    assert_eq!(top(&snapshot), ("10101.1".into(), "10102.55".into()));
    let updated = events.book().await;
    assert_eq!(top(&updated), ("10101.8".into(), "10103".into()));
    let first = events.tick().await;
    assert_eq!(
        quote(&first),
        ("10101.8".into(), "10101.8".into(), "10103".into())
    );
    assert_eq!(first.size.unwrap().to_string(), "0.001");
    // The ticker with an older sequence was dropped; the next is the newer one.
    let second = events.tick().await;
    assert_eq!((second.price.to_string(), second.seq), ("10102".into(), 2));

    // Garbage is skipped. An update that crosses the book: resubscribe level2.
    conn.send("{]").await;
    conn.send_all(&lines("coinbase/exchange_resync.jsonl")[..2])
        .await;
    let unsubscribe = conn.recv_json().await;
    assert_eq!(
        unsubscribe,
        serde_json::json!({"type": "unsubscribe", "product_ids": ["BTC-USD"], "channels": ["level2_batch"]})
    );
    assert_eq!(conn.recv_json().await["type"], "subscribe");
    // The update after the crossing one is ignored; the new snapshot is the book.
    conn.send(&lines("coinbase/exchange_resync.jsonl")[2]).await;
    let resynced = events.book().await;
    assert_eq!(top(&resynced), ("10103.5".into(), "10104.5".into()));
    assert_eq!(counters.gaps.get(), gaps + 1);
}

#[tokio::test]
async fn coinbase_advanced_resubscribes_after_a_sequence_num_gap() {
    let _turn = COINBASE_METRICS.lock().await;
    let counters = metrics::venue("coinbase");
    let gaps = counters.gaps.get();
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Coinbase,
        &format!(
            "api = \"advanced\"\nws_url = \"{}\"\nsymbols = [\"BTC-USD\"]\n",
            ws.url
        ),
    );
    let mut conn = ws.accept().await;
    let frames = [
        conn.recv_json().await,
        conn.recv_json().await,
        conn.recv_json().await,
    ];
    assert_eq!(
        frames[0],
        serde_json::json!({"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "ticker"})
    );
    assert_eq!(frames[1]["channel"], "level2");
    assert_eq!(
        frames[2],
        serde_json::json!({"type": "subscribe", "channel": "heartbeats"})
    );
    conn.send_all(&lines("coinbase/advanced.jsonl")).await;
    let snapshot = events.book().await;
    assert_eq!(top(&snapshot), ("21921.73".into(), "21921.74".into()));
    let tick = events.tick().await;
    assert_eq!(
        quote(&tick),
        ("21932.98".into(), "21921.73".into(), "21921.74".into())
    );
    let update = events.book().await;
    assert_eq!(top(&update), ("21921.3".into(), "21921.74".into()));

    // sequence_num 7 after 4: messages were lost.
    conn.send(&lines("coinbase/advanced_gap.jsonl")[0]).await;
    let unsubscribe = conn.recv_json().await;
    assert_eq!(
        unsubscribe,
        serde_json::json!({"type": "unsubscribe", "product_ids": ["BTC-USD"], "channel": "level2"})
    );
    assert_eq!(conn.recv_json().await["type"], "subscribe");
    conn.send_all(&lines("coinbase/advanced_gap.jsonl")[1..])
        .await;
    let resynced = events.book().await;
    assert_eq!(top(&resynced), ("21925.5".into(), "21926".into()));
    assert_eq!(counters.gaps.get(), gaps + 1);
}

#[tokio::test]
async fn coinbase_advanced_skips_a_rejected_message_without_a_resync_and_ignores_old_ones() {
    let _turn = COINBASE_METRICS.lock().await;
    let counters = metrics::venue("coinbase");
    let (gaps, duplicates) = (counters.gaps.get(), counters.duplicates.get());
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Coinbase,
        &format!(
            "api = \"advanced\"\nws_url = \"{}\"\nsymbols = [\"BTC-USD\"]\n",
            ws.url
        ),
    );
    let mut conn = ws.accept().await;
    for _ in 0..3 {
        conn.recv_json().await;
    }
    conn.send_all(&lines("coinbase/advanced.jsonl")).await;
    for _ in 0..3 {
        events.data().await; // snapshot, ticker, update (as in the test above)
    }
    // sequence_num 999, a good first event and a bad second one: reported, skipped
    // whole, and the counter stays at 5.
    conn.send(r#"{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:54.000Z","sequence_num":999,"events":[{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2023-02-09T20:32:53.999Z","price_level":"21921.6","new_quantity":"1"}]},{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2023-02-09T20:32:53.999Z","price_level":"21921.7","new_quantity":"-1"}]}]}"#).await;
    let rejected = events
        .next("a rejected frame", |e| {
            matches!(e, FeedEvent::Rejected { .. })
        })
        .await;
    let FeedEvent::Rejected { reason, .. } = rejected else {
        unreachable!()
    };
    assert!(reason.contains("negative"), "{reason}");
    // 3 again (old), then the genuine 5.
    conn.send(&lines("coinbase/advanced.jsonl")[3]).await;
    conn.send(r#"{"channel":"l2_data","client_id":"","timestamp":"2023-02-09T20:32:54.100Z","sequence_num":5,"events":[{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"2023-02-09T20:32:54.099Z","price_level":"21921.5","new_quantity":"0.1"}]}]}"#).await;
    let book = events.book().await;
    assert_eq!(top(&book), ("21921.5".into(), "21921.74".into()));
    assert_eq!(
        book.bids.len(),
        2,
        "21921.6 of the rejected message is not in the book"
    );
    assert_eq!(counters.gaps.get(), gaps, "no resync");
    assert_eq!(counters.duplicates.get(), duplicates + 1);
}

// ---------------------------------------------------------------- Hyperliquid

#[tokio::test]
async fn hyperliquid_streams_mids_trades_and_books_pings_and_notices_silence() {
    let mut ws = WsServer::start(None).await;
    let mut events = start(
        FeedKind::Hyperliquid,
        &format!(
            "ws_url = \"{}\"\nsymbols = [\"BTC\", \"ETH\"]\nping_interval_ms = 100\nstale_after_ms = 300\ndead_after_ms = 1500\n",
            ws.url
        ),
    );
    let mut conn = ws.accept().await;
    let mut subscriptions = Vec::new();
    for _ in 0..5 {
        subscriptions.push(conn.recv_json().await["subscription"].clone());
    }
    assert_eq!(subscriptions[0], serde_json::json!({"type": "allMids"}));
    assert_eq!(
        subscriptions[1],
        serde_json::json!({"type": "trades", "coin": "BTC"})
    );
    assert_eq!(
        subscriptions[4],
        serde_json::json!({"type": "l2Book", "coin": "ETH"})
    );
    // The application-level ping, answered as Hyperliquid does.
    assert_eq!(
        conn.recv_json().await,
        serde_json::json!({"method": "ping"})
    );
    conn.send(r#"{"channel":"pong"}"#).await;

    conn.send_all(&lines("hyperliquid/stream.jsonl")).await;
    let mut ticks = Vec::new();
    let mut books = Vec::new();
    while ticks.len() < 4 || books.is_empty() {
        match events.data().await {
            FeedEvent::Tick(t) => ticks.push((
                t.symbol.to_string(),
                t.price.to_string(),
                t.size.map(|s| s.to_string()),
            )),
            FeedEvent::Book(b) => books.push(b),
            other => unreachable!("data() yields ticks and books only, got {other:?}"),
        }
    }
    assert_eq!(
        ticks,
        [
            ("BTC-USD".into(), "97012.5".into(), None),
            ("ETH-USD".into(), "3501.15".into(), None),
            ("BTC-USD".into(), "97013".into(), Some("0.01234".into())),
            ("BTC-USD".into(), "97013.25".into(), None),
        ]
    );
    assert_eq!(books.len(), 1, "the older l2Book was dropped");
    assert_eq!(top(&books[0]), ("97012".into(), "97013".into()));

    // Quiet: stale. A moved mid: connected again.
    assert_eq!(
        events.status(FeedState::Stale).await,
        "no market data for 300 ms"
    );
    conn.send(r#"{"channel":"allMids","data":{"mids":{"BTC":"97100"}}}"#)
        .await;
    assert_eq!(
        events.status(FeedState::Connected).await,
        "market data again"
    );
    let tick = events.tick().await;
    assert_eq!(
        (tick.price.to_string(), tick.bid.unwrap().to_string()),
        ("97100".into(), "97012".into())
    );

    // Silent altogether (pings unanswered): dead, reconnect.
    let why = events.status(FeedState::Reconnecting).await;
    assert!(why.starts_with("no message for 1500 ms"), "{why}");
    let _conn = ws.accept().await;
    events.status(FeedState::Connected).await;
}

// ---------------------------------------------------------------- Birdeye

/// Cargo sets CARGO_PKG_NAME for every test process: an "API key" in the
/// environment without `set_var` (unsound while other test threads run).
const KEY_ENV: &str = "CARGO_PKG_NAME";
const KEY: &str = env!("CARGO_PKG_NAME");
const SOL: &str = "So11111111111111111111111111111111111111112";
const MSOL: &str = "mSoLzYCxHdYgdzU16g5QSh3i5K3z3KZK7ytfqcJm7So";

#[tokio::test]
async fn birdeye_polls_with_the_key_backs_off_on_errors_and_keeps_every_digit() {
    let rest = HttpServer::start(|n, request| {
        if request.headers.get("x-api-key").map(String::as_str) != Some(KEY) {
            return (401, fixture("birdeye/unauthorized.json"));
        }
        match n {
            1 => (401, fixture("birdeye/unauthorized.json")),
            2 | 3 => (200, fixture("birdeye/multi_price.json")),
            _ => (200, fixture("birdeye/multi_price_later.json")),
        }
    })
    .await;
    let mut events = start(
        FeedKind::Birdeye,
        &format!(
            "mode = \"poll\"\nrest_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\nsymbols = [\"{SOL}\", \"{MSOL}\"]\npoll_interval_ms = 50\n",
            rest.url
        ),
    );
    let failed = events.status(FeedState::Reconnecting).await;
    assert_eq!(failed, "first poll");
    let failed = events.status(FeedState::Reconnecting).await;
    assert!(
        failed.contains("HTTP 401") && failed.contains("next attempt in"),
        "{failed}"
    );
    assert!(!failed.contains(KEY), "the key must never show");
    events.status(FeedState::Connected).await;
    let mut first: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let t = events.tick().await;
        first.push((t.symbol.to_string(), t.price.to_string()));
    }
    first.sort();
    assert_eq!(
        first,
        [
            ("MSOL-USD".into(), "26.419009478261618".into()),
            ("SOL-USD".into(), "23.40138801321701".into())
        ]
    );
    // Poll 3 repeats poll 2: no tick. Poll 4 moves SOL only.
    let moved = events.tick().await;
    assert_eq!(
        (moved.symbol.as_str(), moved.price.to_string(), moved.seq),
        ("SOL-USD", "0.00000012345".into(), 2)
    );
    let requests = rest.requests();
    let request = &requests[1];
    assert_eq!(
        request.target,
        format!("/defi/multi_price?list_address={SOL}%2C{MSOL}")
    );
    assert_eq!(
        request.headers.get("x-chain").map(String::as_str),
        Some("solana")
    );
}

#[tokio::test]
async fn birdeye_refuses_a_token_s_odd_price_and_takes_the_rest_of_the_round() {
    // Round 1: SOL is good, mSOL's value is negative; round 2: mSOL's value needs
    // more decimal places than a decimal holds. Each time mSOL is refused (reported,
    // its last value unmoved) and SOL is taken: one odd token must not freeze the
    // others. Round 3 (the fixture): mSOL ticks, SOL has not moved.
    let rest = HttpServer::start(|n, _| {
        let msol = match n {
            1 => "-1",
            2 => "1.2345678901234567e-13",
            _ => return (200, fixture("birdeye/multi_price.json")),
        };
        (
            200,
            format!(
                r#"{{"data":{{"{SOL}":{{"value":23.40138801321701,"updateUnixTime":1692181644}},"{MSOL}":{{"value":{msol},"updateUnixTime":1692181652}}}},"success":true}}"#
            ),
        )
    })
    .await;
    let mut events = start(
        FeedKind::Birdeye,
        &format!(
            "mode = \"poll\"\nrest_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\nsymbols = [\"{SOL}\", \"{MSOL}\"]\npoll_interval_ms = 50\n",
            rest.url
        ),
    );
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match events
            .next("a tick or a refusal", |e| {
                matches!(e, FeedEvent::Rejected { .. } | FeedEvent::Tick(_))
                    || matches!(e, FeedEvent::Status(s) if s.status == FeedState::Reconnecting && s.detail != "first poll")
            })
            .await
        {
            FeedEvent::Rejected {
                reason, excerpt, ..
            } => {
                assert!(reason.contains(MSOL), "{reason}");
                seen.push(format!("refused {excerpt}: {}", reason.contains("not positive") || reason.contains("not an exact decimal")));
            }
            FeedEvent::Tick(t) => seen.push(format!("{} {} {}", t.symbol, t.price, t.seq)),
            FeedEvent::Status(s) => panic!("a refused token failed the round: {}", s.detail),
            other => unreachable!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "refused -1: true",
            "SOL-USD 23.40138801321701 1",
            "refused 1.2345678901234567e-13: true",
            "MSOL-USD 26.419009478261618 1",
        ]
    );
}

#[tokio::test]
async fn birdeye_socket_subscribes_with_its_handshake_and_pings() {
    let mut ws = WsServer::start(Some("echo-protocol")).await;
    let mut events = start(
        FeedKind::Birdeye,
        &format!(
            "mode = \"ws\"\nws_url = \"{}/socket/solana\"\napi_key_env = \"{KEY_ENV}\"\nsymbols = [\"{SOL}\", \"{MSOL}\"]\nping_interval_ms = 100\n",
            ws.url
        ),
    );
    let mut conn = ws.accept().await;
    assert_eq!(conn.target, format!("/socket/solana?x-api-key={KEY}"));
    assert_eq!(
        conn.headers.get("origin").map(String::as_str),
        Some("ws://public-api.birdeye.so")
    );
    assert_eq!(
        conn.headers
            .get("sec-websocket-protocol")
            .map(String::as_str),
        Some("echo-protocol")
    );
    let subscribe = conn.recv_json().await;
    let query = format!(
        "(address = {SOL} AND chartType = 1m AND currency = usd) OR (address = {MSOL} AND chartType = 1m AND currency = usd)"
    );
    assert_eq!(
        subscribe,
        serde_json::json!({"type": "SUBSCRIBE_PRICE", "data": {"queryType": "complex", "query": query}})
    );
    let connected = events.status(FeedState::Connected).await;
    assert!(!connected.contains(KEY));
    conn.client_ping().await;
    conn.send_all(&lines("birdeye/socket.jsonl")).await;
    let sol = events.tick().await;
    assert_eq!(
        (sol.symbol.as_str(), sol.price.to_string()),
        ("SOL-USD", "24.586420063533236".into())
    );
    let msol = events.tick().await;
    assert_eq!(
        (msol.symbol.as_str(), msol.price.to_string()),
        ("MSOL-USD", "26.4213".into())
    );
}

// ---------------------------------------------------------------- the service

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    timeout(WAIT, sub.next())
        .await
        .expect("nothing on the bus")
        .unwrap()
}

#[tokio::test]
async fn the_service_runs_a_connector_from_its_config_and_publishes_on_the_bus() {
    use moonbus_common::testing::{ChildGuard, NatsServer};
    use moonbus_common::FeedStatus;

    let rest = HttpServer::start(|_, _| (200, fixture("binance/depth_snapshot_160.json"))).await;
    let mut ws = WsServer::start(None).await;
    let nats = NatsServer::start();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut status = client.subscribe("md.status.binance").await.unwrap();
    let mut books = client.subscribe("md.book.binance.BNB-BTC").await.unwrap();
    let mut ticks = client.subscribe("md.tick.binance.BNB-BTC").await.unwrap();
    let mut errors = client.subscribe("errors.market-data").await.unwrap();
    client.flush().await.unwrap();
    let mut service = ChildGuard::spawn(
        env!("CARGO_BIN_EXE_rust-market-data"),
        &nats.url,
        &[
            ("MOONBUS__MARKET_DATA__FEEDS", r#"["binance"]"#),
            ("MOONBUS__MARKET_DATA__METRICS_ADDR", "127.0.0.1:0"),
            ("MOONBUS__MARKET_DATA__BINANCE__WS_URL", &ws.url),
            ("MOONBUS__MARKET_DATA__BINANCE__REST_URL", &rest.url),
            ("MOONBUS__MARKET_DATA__BINANCE__SYMBOLS", r#"["BNBBTC"]"#),
        ],
    );
    let mut conn = ws.accept().await;
    loop {
        let message: FeedStatus = serde_json::from_slice(&next(&mut status).await.payload).unwrap();
        if message.status == FeedState::Connected {
            assert_eq!(message.symbols, 1);
            break;
        }
    }
    conn.send_all(&lines("binance/depth_stream.jsonl")[..2])
        .await;
    let first: Book = serde_json::from_slice(&next(&mut books).await.payload).unwrap();
    assert_eq!(
        (first.venue.as_str(), first.seq, top(&first)),
        ("binance", 160, ("0.0024".into(), "0.0026".into()))
    );
    let second: Book = serde_json::from_slice(&next(&mut books).await.payload).unwrap();
    assert_eq!(second.seq, 163);
    conn.send_all(&lines("binance/ticks.jsonl")).await;
    let tick: Tick = serde_json::from_slice(&next(&mut ticks).await.payload).unwrap();
    assert_eq!(
        quote(&tick),
        ("25.35855".into(), "25.3519".into(), "25.3652".into())
    );
    let tick: Tick = serde_json::from_slice(&next(&mut ticks).await.payload).unwrap();
    assert_eq!(tick.price.to_string(), "25.3601");
    // A frame that is not Binance's format is reported on errors.market-data, and
    // the link carries on.
    conn.send("this is not json").await;
    let error: moonbus_common::ErrorEvent =
        serde_json::from_slice(&next(&mut errors).await.payload).unwrap();
    assert_eq!(
        (
            error.service.as_str(),
            error.subject.as_str(),
            error.excerpt.as_str()
        ),
        ("market-data", "feed:binance", "this is not json")
    );
    service.kill(); // before the stand-in goes, so that it logs no lost connection
}

#[tokio::test]
async fn bad_sections_are_start_up_errors_that_name_the_key() {
    // Reading the section (serde) or starting the connector: both happen at start-up.
    let error = |kind: FeedKind, section: &str| {
        let text = format!("[market_data.{}]\n{section}", kind.as_str());
        let config: MarketDataConfig = match Config::from_parts(&text, [])
            .unwrap()
            .section("market_data")
        {
            Ok(config) => config,
            Err(e) => return format!("{e:#}"),
        };
        let (sink, _rx) = feed::channel();
        format!("{:#}", connectors::spawn(kind, &config, sink).unwrap_err())
    };
    let err = error(FeedKind::Binance, "symbol = [\"BTCUSDT\"]\n");
    assert!(
        err.contains("[market_data.binance]: unknown key `symbol`"),
        "{err}"
    );
    let err = error(FeedKind::Binance, "symbols = [\"BTC/USDT\"]\n");
    assert!(
        err.contains("\"BTC/USDT\" is not a binance symbol"),
        "{err}"
    );
    let err = error(FeedKind::Binance, "ws_url = \"http://x\"\n");
    assert!(
        err.contains("[market_data.binance] ws_url = \"http://x\": must be a ws:// or wss:// URL"),
        "{err}"
    );
    let err = error(FeedKind::Aster, "snapshot_limit = 5000\n");
    assert!(
        err.contains("[market_data.aster] snapshot_limit = 5000: must be one of 5, 10, 20"),
        "{err}"
    );
    let err = error(
        FeedKind::Coinbase,
        "symbols = [\"BTC-USD\"]\nsymbol_map = { BTC-USD = \"BTC USD\" }\n",
    );
    assert!(
        err.contains("BTC-USD -> \"BTC USD\" is not a canonical symbol"),
        "{err}"
    );
    let err = error(FeedKind::Coinbase, "api = \"pro\"\n");
    assert!(err.contains("unknown variant `pro`"), "{err}");
    let err = error(FeedKind::Hyperliquid, "symbols = [\"@107\"]\n");
    assert!(
        err.contains("@107: no canonical symbol known; add it to symbol_map"),
        "{err}"
    );
    let err = error(
        FeedKind::Birdeye,
        "api_key_env = \"MOONBUS_TEST_NO_SUCH_VARIABLE\"\n",
    );
    assert!(
        err.contains("needs an API key in the environment variable MOONBUS_TEST_NO_SUCH_VARIABLE"),
        "{err}"
    );
    // 0 is not a base58 digit.
    let err = error(
        FeedKind::Birdeye,
        &format!("api_key_env = \"{KEY_ENV}\"\nsymbols = [\"{SOL}0\"]\n"),
    );
    assert!(err.contains("is not a birdeye symbol"), "{err}");
    let err = error(FeedKind::Hyperliquid, "stale_after_ms = 0\n");
    assert!(
        err.contains("stale_after_ms = 0: must be at least 1"),
        "{err}"
    );
}
