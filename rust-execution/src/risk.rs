//! The pre-trade check: one `risk.api.check` round trip per order. Risk fails closed:
//! no answer in time, an error reply or an unreadable one all mean REJECTED.

use std::time::{Duration, Instant};

use async_nats::{Client, RequestErrorKind};
use moonbus_common::{
    bus, now_ns, subjects, ClientOrderId, ErrorReply, OrderRequest, PositiveMoney,
    RiskCheckRequest, RiskCheckResult,
};

use crate::metrics;

#[derive(Debug, Clone, PartialEq)]
pub enum RiskAnswer {
    Approved {
        ts: u64,
    },
    /// `reason` is `<reason_code>: <reason>`.
    Refused {
        reason: String,
        ts: u64,
    },
    /// `reason` is `risk_unavailable: ...`.
    Unavailable {
        reason: String,
    },
}

#[derive(Clone)]
pub struct RiskClient {
    client: Client,
    timeout: Duration,
}

impl RiskClient {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    pub async fn check(
        &self,
        order: &OrderRequest,
        ref_price: Option<PositiveMoney>,
    ) -> RiskAnswer {
        let request = request_for(order, ref_price, now_ns());
        let asked = self
            .client
            .request(subjects::RISK_CHECK, bus::encode(&request));
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, asked).await;
        metrics::global()
            .risk_check_seconds
            .observe(started.elapsed());
        match answer {
            Err(_) => unavailable(format!("no answer within {} ms", self.timeout.as_millis())),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                unavailable(format!("no responders on {}", subjects::RISK_CHECK))
            }
            Ok(Err(e)) => unavailable(e.to_string()),
            Ok(Ok(reply)) => interpret(&order.client_order_id, &reply.payload),
        }
    }
}

fn unavailable(why: String) -> RiskAnswer {
    RiskAnswer::Unavailable {
        reason: format!("risk_unavailable: {why}"),
    }
}

/// The pre-trade check of `order` at time `ts`; `ref_price` prices a MARKET order.
pub fn request_for(
    order: &OrderRequest,
    ref_price: Option<PositiveMoney>,
    ts: u64,
) -> RiskCheckRequest {
    RiskCheckRequest {
        client_order_id: order.client_order_id.clone(),
        agent: order.agent.clone(),
        symbol: order.symbol.clone(),
        venue: order.venue.clone(),
        side: order.side,
        order_type: order.order_type,
        quantity: order.quantity,
        limit_price: order.limit_price,
        reduce_only: order.reduce_only,
        ref_price,
        ts,
    }
}

/// What risk's answer means for the order, answered at `ts`.
pub fn answer(result: RiskCheckResult, ts: u64) -> RiskAnswer {
    if result.approved {
        return RiskAnswer::Approved { ts };
    }
    RiskAnswer::Refused {
        reason: format!(
            "{}: {}",
            result.reason_code.unwrap_or_default(),
            result.reason.unwrap_or_default()
        ),
        ts,
    }
}

/// What a reply means for the order `client_order_id`.
pub fn interpret(client_order_id: &ClientOrderId, payload: &[u8]) -> RiskAnswer {
    if let Ok(ErrorReply { error }) = bus::decode::<ErrorReply>(payload) {
        return unavailable(format!("{}: {}", error.code, error.message));
    }
    match bus::decode::<RiskCheckResult>(payload) {
        Err(e) => unavailable(format!("unreadable answer: {e}")),
        Ok(result) if &result.client_order_id != client_order_id => unavailable(format!(
            "answer is for order {}, not {client_order_id}",
            result.client_order_id
        )),
        Ok(result) => answer(result, now_ns()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ClientOrderId {
        ClientOrderId::try_from("trd-1").unwrap()
    }

    #[test]
    fn approved_and_refused_answers() {
        let ok = br#"{"client_order_id":"trd-1","approved":true,"state":"ACTIVE","ts":1}"#;
        assert!(matches!(interpret(&id(), ok), RiskAnswer::Approved { .. }));
        let refused = br#"{"client_order_id":"trd-1","approved":false,"reason_code":"max_order_notional","reason":"970 > 500","state":"ACTIVE","ts":1}"#;
        assert!(matches!(interpret(&id(), refused),
            RiskAnswer::Refused { reason, .. } if reason == "max_order_notional: 970 > 500"));
    }

    #[test]
    fn anything_else_fails_closed() {
        let cases: [(&[u8], &str); 4] = [
            (
                br#"{"error":{"code":"bad_request","message":"nope"}}"#,
                "risk_unavailable: bad_request: nope",
            ),
            (b"garbage", "risk_unavailable: unreadable answer: "),
            // refused without a reason breaks the contract
            (
                br#"{"client_order_id":"trd-1","approved":false,"state":"HALTED","ts":1}"#,
                "risk_unavailable: unreadable answer: ",
            ),
            (
                br#"{"client_order_id":"other","approved":true,"state":"ACTIVE","ts":1}"#,
                "risk_unavailable: answer is for order other",
            ),
        ];
        for (payload, expected) in cases {
            match interpret(&id(), payload) {
                RiskAnswer::Unavailable { reason } => {
                    assert!(reason.starts_with(expected), "{reason}")
                }
                other => panic!("{} -> {other:?}", String::from_utf8_lossy(payload)),
            }
        }
    }
}
