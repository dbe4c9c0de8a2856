//! Orders resting at the venue: ACCEPTED (or partly filled) with no terminal report
//! yet. Rebuilt from the EXEC stream like the positions, so a restart still knows them.
//! With the in-flight reservations they make up the open orders `max_open_orders` counts.

use std::collections::HashMap;

use moonbus_common::{AgentName, OrderStatus, Symbol};

#[derive(Debug, Clone, Default)]
pub struct OpenOrders {
    /// The symbol and the agent (None: a report without one) of each open order.
    by_order: HashMap<String, (Symbol, Option<AgentName>)>,
}

impl OpenOrders {
    pub fn on_report(
        &mut self,
        client_order_id: &str,
        symbol: Option<&Symbol>,
        agent: Option<&AgentName>,
        status: OrderStatus,
    ) {
        if is_terminal(status) {
            self.by_order.remove(client_order_id);
        } else if let Some(symbol) = symbol {
            self.by_order.insert(
                client_order_id.to_string(),
                (symbol.clone(), agent.cloned()),
            );
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Symbol, Option<&AgentName>)> {
        self.by_order
            .iter()
            .map(|(id, (s, a))| (id.as_str(), s, a.as_ref()))
    }
}

pub fn is_terminal(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Filled
            | OrderStatus::Rejected
            | OrderStatus::Cancelled
            | OrderStatus::Expired
            | OrderStatus::Failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::sym;

    #[test]
    fn open_until_a_terminal_report() {
        let mut open = OpenOrders::default();
        let btc = sym("BTC-USD");
        open.on_report("a", Some(&btc), None, OrderStatus::Accepted);
        open.on_report("b", Some(&btc), None, OrderStatus::PartiallyFilled);
        open.on_report("c", Some(&btc), None, OrderStatus::Rejected);
        let mut ids: Vec<&str> = open.iter().map(|(id, _, _)| id).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b"]);
        for status in [OrderStatus::Filled, OrderStatus::Cancelled] {
            open.on_report(
                if status == OrderStatus::Filled {
                    "a"
                } else {
                    "b"
                },
                Some(&btc),
                None,
                status,
            );
        }
        assert_eq!(open.iter().count(), 0);
        // Expired and failed are terminal too; a report without a symbol opens nothing.
        assert!(is_terminal(OrderStatus::Expired) && is_terminal(OrderStatus::Failed));
        open.on_report("d", None, None, OrderStatus::Accepted);
        assert_eq!(open.iter().count(), 0);
    }
}
