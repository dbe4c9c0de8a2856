//! The request/reply API on the NATS service "market-data": `md.api.price`,
//! `md.api.prices`, `md.api.history`, `md.api.monitor.start` / `.stop` /
//! `.status` (`md.api.version` is answered by moonbus_common::service, as for every
//! service). Every request gets an answer: the reply, or
//! `{"error": {"code", "message"}}`.
//!
//! | code               | when                                                       |
//! |--------------------|------------------------------------------------------------|
//! | `bad_request`      | not JSON, or not the request's schema (serde's message)    |
//! | `unknown_symbol`   | the symbol is neither configured nor sent by a feed        |
//! | `unknown_venue`    | `venue` names a venue with no data for the symbol          |
//! | `unknown_interval` | history for an interval not in `bar_intervals`             |
//! | `no_price`         | a configured symbol that has not ticked yet (just started) |
//! | `unavailable`      | the engine did not answer in time (shutting down)          |

use std::time::Duration;

use anyhow::Result;
use async_nats::service::{Request, Service};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use moonbus_common::bus::{decode, encode, error_reply, ErrorSink};
use moonbus_common::service as skeleton;
use moonbus_common::{
    subjects, HistoryReply, HistoryRequest, MonitorStartRequest, MonitorStatusRequest,
    MonitorStopRequest, PriceReply, PriceRequest, PricesRequest,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Query;
use crate::market::ApiError;

/// How long a request may wait for the engine before it is told `unavailable`.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Price,
    Prices,
    History,
    MonitorStart,
    MonitorStop,
    MonitorStatus,
}

/// All requests of all endpoints, as one stream.
pub struct Requests(BoxStream<'static, (Endpoint, Request)>);

/// Registers the endpoints on the service; requests queue in NATS until `serve` runs.
pub async fn endpoints(service: &Service) -> Result<Requests> {
    let mut streams = Vec::new();
    for (endpoint, name, subject) in [
        (Endpoint::Price, "price", subjects::MD_PRICE),
        (Endpoint::Prices, "prices", subjects::MD_PRICES),
        (Endpoint::History, "history", subjects::MD_HISTORY),
        (
            Endpoint::MonitorStart,
            "monitor-start",
            subjects::MD_MONITOR_START,
        ),
        (
            Endpoint::MonitorStop,
            "monitor-stop",
            subjects::MD_MONITOR_STOP,
        ),
        (
            Endpoint::MonitorStatus,
            "monitor-status",
            subjects::MD_MONITOR_STATUS,
        ),
    ] {
        let requests = skeleton::endpoint(service, name, subject).await?;
        streams.push(requests.map(move |r| (endpoint, r)).boxed());
    }
    Ok(Requests(stream::select_all(streams).boxed()))
}

pub struct Api {
    queries: mpsc::Sender<Query>,
    errors: ErrorSink,
}

impl Api {
    pub fn new(queries: mpsc::Sender<Query>, errors: ErrorSink) -> Self {
        Self { queries, errors }
    }

    /// Answers requests one at a time until the endpoints stop (their streams end)
    /// or `stop` fires; a request being answered then is finished first. One at a
    /// time is enough: an answer is a query to the engine and a JSON encode.
    pub async fn serve(self, mut requests: Requests, mut stop: oneshot::Receiver<()>) {
        loop {
            let (endpoint, request) = tokio::select! {
                _ = &mut stop => break,
                next = requests.0.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            self.handle(endpoint, request).await;
        }
    }

    async fn handle(&self, endpoint: Endpoint, request: Request) {
        let message = &request.message;
        if message.reply.is_none() {
            let reason = "request without a reply subject: nothing to answer to";
            self.errors
                .report(&message.subject, reason, &message.payload)
                .await;
            return;
        }
        let body = self.answer(endpoint, &message.payload).await;
        if let Err(e) = request.respond(Ok(body)).await {
            tracing::warn!(subject = %message.subject, error = %e, "could not reply");
        }
    }

    async fn answer(&self, endpoint: Endpoint, payload: &[u8]) -> Bytes {
        match endpoint {
            Endpoint::Price => match decode::<PriceRequest>(payload) {
                Ok(request) => {
                    let tick = self
                        .ask(|tx| Query::Price(request, tx))
                        .await
                        .and_then(|r| r);
                    reply(tick.map(|tick| PriceReply { tick }))
                }
                Err(e) => error_reply("bad_request", e),
            },
            Endpoint::Prices => match decode::<PricesRequest>(payload) {
                Ok(request) => reply(self.ask(|tx| Query::Prices(request, tx)).await),
                Err(e) => error_reply("bad_request", e),
            },
            Endpoint::History => match decode::<HistoryRequest>(payload) {
                Ok(request) => {
                    let bars = self
                        .ask(|tx| Query::History(request, tx))
                        .await
                        .and_then(|r| r);
                    reply(bars.map(|bars| HistoryReply { bars }))
                }
                Err(e) => error_reply("bad_request", e),
            },
            Endpoint::MonitorStart => match decode::<MonitorStartRequest>(payload) {
                Ok(request) => reply(
                    self.ask(|tx| Query::MonitorStart(request, tx))
                        .await
                        .and_then(|r| r),
                ),
                Err(e) => error_reply("bad_request", e),
            },
            Endpoint::MonitorStop => match decode::<MonitorStopRequest>(payload) {
                Ok(request) => reply(
                    self.ask(|tx| Query::MonitorStop(request.symbol, tx))
                        .await
                        .and_then(|r| r),
                ),
                Err(e) => error_reply("bad_request", e),
            },
            // An empty body means `{}`: every monitor.
            Endpoint::MonitorStatus => match decode::<MonitorStatusRequest>(if payload.is_empty() {
                b"{}"
            } else {
                payload
            }) {
                Ok(request) => reply(
                    self.ask(|tx| Query::MonitorStatus(request.symbol, tx))
                        .await
                        .and_then(|r| r),
                ),
                Err(e) => error_reply("bad_request", e),
            },
        }
    }

    /// Sends a query to the engine and waits (bounded) for its answer.
    async fn ask<T>(&self, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let unavailable = |why: &str| ApiError {
            code: "unavailable",
            message: format!("market-data could not answer: {why}"),
        };
        let asked = async {
            self.queries
                .send(query(tx))
                .await
                .map_err(|_| unavailable("engine stopped"))?;
            rx.await.map_err(|_| unavailable("engine stopped"))
        };
        tokio::time::timeout(ENGINE_TIMEOUT, asked)
            .await
            .unwrap_or_else(|_| Err(unavailable("engine busy, timed out")))
    }
}

fn reply<T: Serialize>(result: Result<T, ApiError>) -> Bytes {
    match result {
        Ok(message) => encode(&message),
        Err(e) => error_reply(e.code, e.message),
    }
}
