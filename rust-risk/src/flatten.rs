//! Kill switch flatten: the closing orders go to `orders.submit.killswitch.<symbol>` (agent
//! `killswitch`, the only order subject risk may publish) through the
//! ORDERS stream like any agent's order (`Nats-Msg-Id` = client_order_id, so a
//! re-send is stored once), and execution checks and routes them as usual.

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context;
use moonbus_common::bus::{self, ErrorSink};
use moonbus_common::{subjects, OrderRequest};

/// Publish every order, then wait for the stream to store each; returns how many
/// are stored (a duplicate of an already stored id counts: it is there).
pub async fn send(js: &Context, orders: &[OrderRequest], errors: &ErrorSink) -> u64 {
    let mut pending = Vec::with_capacity(orders.len());
    for order in orders {
        let subject = subjects::orders_submit(&order.agent, &order.symbol);
        let message = PublishMessage::build()
            .payload(bus::encode(order))
            .message_id(order.client_order_id.as_str());
        match js.send_publish(subject.clone(), message).await {
            Ok(ack) => pending.push((subject, order, ack)),
            Err(e) => report(errors, &subject, order, e.to_string()).await,
        }
    }
    let mut stored = 0;
    for (subject, order, ack) in pending {
        match ack.await {
            Ok(_) => {
                tracing::warn!(
                    client_order_id = %order.client_order_id, symbol = %order.symbol,
                    side = %order.side, quantity = %order.quantity, "flatten order sent"
                );
                stored += 1;
            }
            Err(e) => report(errors, &subject, order, e.to_string()).await,
        }
    }
    stored
}

async fn report(errors: &ErrorSink, subject: &str, order: &OrderRequest, error: String) {
    let reason = format!(
        "kill switch flatten order {} not stored in ORDERS: {error}",
        order.client_order_id
    );
    errors.report(subject, &reason, &bus::encode(order)).await;
}
