//! Reading orders and cancels off the bus, strictly. A bad order becomes a REJECTED
//! report whose reason is the decoder's message; the id and symbol for that report are
//! taken from the raw JSON only when they are valid themselves.

use moonbus_common::{bus, CancelRequest, ClientOrderId, OrderRequest, Symbol};
use serde::Deserialize;

use crate::venue::Venue;

/// The id and symbol of a message that may not decode as a whole.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RawIds {
    pub client_order_id: Option<ClientOrderId>,
    pub symbol: Option<Symbol>,
}

impl RawIds {
    pub fn peek(payload: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Peek {
            client_order_id: Option<serde_json::Value>,
            symbol: Option<serde_json::Value>,
        }
        let Ok(peek) = serde_json::from_slice::<Peek>(payload) else {
            return Self::default();
        };
        let text = |v: Option<serde_json::Value>| v.and_then(|v| v.as_str().map(str::to_owned));
        Self {
            client_order_id: text(peek.client_order_id)
                .and_then(|s| ClientOrderId::try_from(s).ok()),
            symbol: text(peek.symbol).and_then(|s| Symbol::try_from(s).ok()),
        }
    }
}

/// Decode an order strictly; the error text is the REJECTED reason.
pub fn decode_order(payload: &[u8]) -> Result<OrderRequest, String> {
    bus::decode::<OrderRequest>(payload)
}

pub fn decode_cancel(payload: &[u8]) -> Result<CancelRequest, String> {
    bus::decode::<CancelRequest>(payload)
}

/// Agents that may cancel any agent's order: the humans' (operator, the gateway's
/// token-guarded writes). Every other agent cancels only its own.
pub const CANCELS_ANY_ORDER: [&str; 2] = ["operator", "gateway"];

/// Checks beyond the message itself: the subject it came on (whose agent token the
/// publisher's NATS permissions pin, so it is who sent it) and the venue it names.
pub fn check_route(
    order: &OrderRequest,
    subject_agent: &str,
    subject_symbol: &str,
    venue: &impl Venue,
) -> Result<(), String> {
    if order.agent.as_str() != subject_agent {
        return Err(format!(
            "agent_mismatch: subject agent {:?} but order agent {}",
            subject_agent.chars().take(64).collect::<String>(),
            order.agent
        ));
    }
    if order.symbol != subject_symbol {
        return Err(format!(
            "symbol_mismatch: subject token {:?} but order symbol {}",
            subject_symbol.chars().take(64).collect::<String>(),
            order.symbol
        ));
    }
    if !venue.serves(&order.venue) {
        return Err(format!(
            "unknown_venue: venue {} is not served here",
            order.venue
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paper::PaperVenue;
    use moonbus_common::Venue as VenueName;
    use rust_decimal::Decimal;

    const VALID: &str = r#"{"client_order_id":"trd-1","agent":"trading","symbol":"BTC-USD","side":"BUY","quantity":"0.01","origin_ts":1,"ts":2}"#;

    fn with(field: &str, value: &str) -> String {
        let mut order: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(VALID).unwrap();
        order.insert(field.into(), serde_json::from_str(value).unwrap());
        serde_json::Value::Object(order).to_string()
    }

    fn without(field: &str) -> String {
        let mut order: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(VALID).unwrap();
        order.remove(field);
        serde_json::Value::Object(order).to_string()
    }

    fn reason(payload: &str) -> String {
        decode_order(payload.as_bytes()).expect_err("must be rejected")
    }

    #[test]
    fn a_valid_order_decodes_with_defaults() {
        let order = decode_order(VALID.as_bytes()).unwrap();
        assert_eq!(order.venue, VenueName::sim());
        assert_eq!(order.quantity.to_string(), "0.01");
    }

    #[test]
    fn each_kind_of_bad_order_is_rejected_with_the_decoders_reason() {
        assert!(reason(&with("reduce_onyl", "true")).starts_with("unknown field `reduce_onyl`"));
        assert!(reason(&with("quantity", "0.01")).contains("not a JSON number"));
        assert!(reason(&with("symbol", r#""BTC.USD""#)).contains("invalid symbol"));
        assert!(reason(&with("quantity", r#""0""#)).contains("must be greater than zero"));
        assert!(reason(&with("quantity", r#""-1""#)).contains("must be greater than zero"));
        assert!(reason(&without("client_order_id")).starts_with("missing field `client_order_id`"));
        assert!(reason(&with("type", r#""LIMIT""#)).contains("a LIMIT order needs limit_price"));
        assert!(
            reason(&with("limit_price", r#""1""#)).contains("a MARKET order takes no limit_price")
        );
        assert!(reason("not json").starts_with("expected ident"));
    }

    #[test]
    fn raw_ids_are_kept_only_when_valid() {
        let ids = RawIds::peek(with("quantity", "0.01").as_bytes());
        assert_eq!(ids.client_order_id.unwrap().as_str(), "trd-1");
        assert_eq!(ids.symbol.unwrap().as_str(), "BTC-USD");
        let ids = RawIds::peek(with("symbol", r#""BTC-USD.>""#).as_bytes());
        assert_eq!(ids.symbol, None);
        assert!(ids.client_order_id.is_some());
        let ids = RawIds::peek(with("client_order_id", "42").as_bytes());
        assert_eq!(ids.client_order_id, None);
        assert_eq!(RawIds::peek(b"[1,2]"), RawIds::default());
        assert_eq!(
            RawIds::peek(without("client_order_id").as_bytes()).client_order_id,
            None
        );
    }

    #[test]
    fn route_checks_subject_symbol_and_venue() {
        let venue = PaperVenue::new(vec![VenueName::sim()], Decimal::ZERO, Decimal::ZERO);
        let order = decode_order(VALID.as_bytes()).unwrap();
        assert_eq!(check_route(&order, "trading", "BTC-USD", &venue), Ok(()));
        assert!(check_route(&order, "trading", "ETH-USD", &venue)
            .unwrap_err()
            .starts_with("symbol_mismatch: "));
        // The publisher may only publish its own agent token: a payload claiming another
        // agent is refused.
        assert!(check_route(&order, "gateway", "BTC-USD", &venue)
            .unwrap_err()
            .starts_with("agent_mismatch: "));
        let elsewhere = decode_order(with("venue", r#""binance""#).as_bytes()).unwrap();
        assert!(check_route(&elsewhere, "trading", "BTC-USD", &venue)
            .unwrap_err()
            .starts_with("unknown_venue: "));
    }
}
