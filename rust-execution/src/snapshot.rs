//! Execution's ledger in SNAPSHOTS (moonbus_common::snapshot): the latest status of every
//! client_order_id, and the open orders with their latest report and, for those resting,
//! the order itself, so a restart rests them again without reading ORDERS. A start
//! rebuilds from the latest valid snapshot plus the EXEC tail after it, from EXEC alone if
//! there is no snapshot and EXEC still starts at 1, else refuses to start: an order whose
//! outcome was lost could be executed twice.
//!
//! A snapshot is taken only while no job is in flight (engine.rs), so every report stored
//! in EXEC up to its last sequence at that moment is in the ledger.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream;
use async_nats::Client;
use futures::FutureExt as _;
use moonbus_common::snapshot::{Snapshots, Start};
use moonbus_common::{
    now_ns, subjects, ClientOrderId, ExecutionReport, NonNegativeMoney, OrderRequest, OrderStatus,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::ledger::{self, Ledger};

pub const SERVICE: &str = "execution";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The orders without a final status; in snapshots from before `finals`, every order.
    pub outcomes: Vec<(ClientOrderId, OrderStatus)>,
    pub open: Vec<OpenOrder>,
    /// The latest reports of open algo parents' children (algo.rs); absent in older snapshots.
    #[serde(default)]
    pub children: Vec<ExecutionReport>,
    /// The ids of agent `protection`'s orders (ledger.rs `is_protections`). Absent in older
    /// snapshots, which did not say whose an id was: there every id named like an exit
    /// (`…-x<n>`) counts as the protection's, as before, so that an upgrade does not send
    /// again an exit that had filled.
    #[serde(default)]
    pub protection_orders: Option<Vec<ClientOrderId>>,
    /// Every final order, its status and when it ended, oldest first (ledger.rs: its
    /// outcome is forgotten two weeks after). Absent in older snapshots, whose final
    /// outcomes are in `outcomes` and dated by the next report (so forgotten two weeks
    /// after the upgrade, never early).
    #[serde(default)]
    pub finals: Option<Vec<ledger::Final>>,
    /// What filled of final orders that ended part filled (ledger.rs `filled_short`).
    /// Absent in older snapshots, and left out when there is none, so that a snapshot
    /// without one stays readable by the binaries before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_filled: Vec<(ClientOrderId, NonNegativeMoney)>,
}

/// `<parent>-x<attempt>`, the form of protect.rs `exit_id`.
fn named_like_an_exit(id: &ClientOrderId) -> bool {
    id.as_str()
        .rsplit_once("-x")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenOrder {
    pub report: ExecutionReport,
    /// The order, if it was resting on the venue.
    pub order: Option<OrderRequest>,
}

impl State {
    pub fn of(ledger: &Ledger, resting: impl Fn(&ClientOrderId) -> Option<OrderRequest>) -> Self {
        let open = ledger
            .open_reports()
            .into_iter()
            .map(|report| OpenOrder {
                order: report.client_order_id.as_ref().and_then(&resting),
                report,
            })
            .collect();
        let (outcomes, finals) = ledger.outcomes();
        Self {
            outcomes,
            open,
            children: ledger.child_reports(),
            protection_orders: Some(ledger.protection_orders()),
            finals,
            part_filled: ledger.part_fills(),
        }
    }

    pub fn into_ledger(self) -> Ledger {
        let mut reports = Vec::new();
        let mut orders = Vec::new();
        for open in self.open {
            if let (Some(order), Some(id)) = (open.order, open.report.client_order_id.clone()) {
                orders.push((id, order));
            }
            reports.push(open.report);
        }
        let exits = match self.protection_orders {
            Some(ids) => ids,
            None => (self.outcomes.iter().map(|(id, _)| id))
                .chain(self.finals.iter().flatten().map(|(id, _, _)| id))
                .chain(reports.iter().filter_map(|r| r.client_order_id.as_ref()))
                .filter(|id| named_like_an_exit(id))
                .cloned()
                .collect(),
        };
        let mut ledger = Ledger::from_parts(self.outcomes, self.finals, reports, orders);
        ledger.add_child_reports(self.children);
        ledger.add_protection_orders(exits);
        ledger.add_part_fills(self.part_filled);
        ledger
    }
}

/// The ledger from the latest valid snapshot plus the EXEC tail, or from EXEC alone;
/// Err (execution does not start) if reports were lost to retention.
pub async fn rebuild(client: &Client) -> Result<Ledger> {
    let snapshots = Snapshots::new(client.clone(), SERVICE);
    let (ledger, from) = match snapshots.start().await? {
        Start::Refuse(why) => bail!(
            "execution refuses to start: its order ledger cannot be rebuilt ({why}); an order \
             whose outcome was lost could be executed twice"
        ),
        Start::Scratch => (Ledger::default(), 1),
        Start::Snapshot(snapshot) => {
            let covered = snapshot.manifest.exec_sequence;
            let state: State = serde_json::from_slice(&snapshot.payload).with_context(|| {
                format!(
                    "snapshot {} (EXEC up to {covered}) cannot be restored",
                    snapshot.sequence
                )
            })?;
            tracing::info!(
                exec_sequence = covered,
                manifest = snapshot.sequence,
                orders = state.outcomes.len(),
                open = state.open.len(),
                "order ledger restored from a snapshot"
            );
            (state.into_ledger(), covered + 1)
        }
    };
    ledger::replay(client, ledger, from).await
}

/// Writes the ledger to SNAPSHOTS every `interval` and on a graceful stop, in the
/// background; the engine calls `write` only while no job is in flight.
pub struct Snapshotter {
    snapshots: Snapshots,
    js: jetstream::Context,
    pub timer: tokio::time::Interval,
    /// The EXEC sequence the last write covers.
    covered: u64,
    /// The write under way; it answers whether it stored the snapshot.
    writing: Option<JoinHandle<bool>>,
}

impl Snapshotter {
    /// `interval_ms` 0 = only on a graceful stop.
    pub fn new(client: Client, interval_ms: u64) -> Self {
        let period = match interval_ms {
            0 => Duration::from_secs(86_400 * 365 * 100),
            ms => Duration::from_millis(ms),
        };
        let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            snapshots: Snapshots::new(client.clone(), SERVICE),
            js: jetstream::new(client),
            timer,
            covered: 0,
            writing: None,
        }
    }

    /// Snapshot `ledger` as covering EXEC up to its last sequence now; call only with no
    /// report being written. Skipped if EXEC has not grown or a write is under way.
    pub async fn write(
        &mut self,
        ledger: &Ledger,
        resting: impl Fn(&ClientOrderId) -> Option<OrderRequest>,
    ) {
        if let Some(task) = self.writing.take_if(|t| t.is_finished()) {
            if !matches!(task.now_or_never(), Some(Ok(true))) {
                self.covered = 0; // not stored: the next tick tries again
            }
        }
        if self.writing.is_some() {
            return;
        }
        let last = match self.js.get_stream(subjects::EXEC_STREAM).await {
            Ok(stream) => stream.cached_info().state.last_sequence,
            Err(e) => return tracing::warn!(error = %e, "no snapshot: EXEC info unreadable"),
        };
        if last == self.covered {
            return;
        }
        // Copied here, encoded and stored beside the engine.
        let state = State::of(ledger, resting);
        self.covered = last;
        let snapshots = self.snapshots.clone();
        self.writing = Some(tokio::spawn(async move {
            let payload = match serde_json::to_vec(&state) {
                Ok(payload) => payload,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode the ledger snapshot");
                    return false;
                }
            };
            match snapshots.write(last, now_ns(), &payload).await {
                Ok(m) => {
                    tracing::info!(
                        exec_sequence = last,
                        chunks = m.chunks.len(),
                        bytes = m.bytes,
                        "ledger snapshot stored"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), exec_sequence = last, "ledger snapshot not stored");
                    false
                }
            }
        }));
    }

    /// On a graceful stop (nothing in flight): the final snapshot, waited for.
    pub async fn finish(
        &mut self,
        ledger: &Ledger,
        resting: impl Fn(&ClientOrderId) -> Option<OrderRequest>,
    ) {
        for _ in 0..2 {
            if let Some(task) = self.writing.take() {
                match tokio::time::timeout(Duration::from_secs(10), task).await {
                    Ok(Ok(true)) => {}
                    Ok(_) => self.covered = 0,
                    Err(_) => tracing::warn!("the ledger snapshot did not finish in time"),
                }
            }
            self.write(ledger, &resting).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::outcomes_kept_ns as outcomes_kept;
    use crate::reports;

    #[test]
    fn the_ledger_round_trips_with_its_resting_orders() {
        let id = |s: &str| ClientOrderId::try_from(s).unwrap();
        let mut ledger = Ledger::default();
        let mut done = reports::invalid(Some(id("done")), None, "x".into(), 1);
        done.status = OrderStatus::Filled;
        let mut resting = reports::invalid(Some(id("rest")), None, "x".into(), 2);
        resting.status = OrderStatus::Accepted;
        let mut exit = reports::invalid(Some(id("p-x1")), None, "x".into(), 3);
        exit.status = OrderStatus::Filled;
        exit.agent = Some(moonbus_common::AgentName::try_from("protection").unwrap());
        ledger.record(&done);
        ledger.record(&resting);
        ledger.record(&exit);
        let order: OrderRequest = serde_json::from_value(serde_json::json!({
            "client_order_id": "rest", "agent": "trading", "symbol": "BTC-USD", "venue": "sim",
            "side": "BUY", "type": "LIMIT", "quantity": "0.01", "limit_price": "90000",
            "origin_ts": 1, "ts": 1,
        }))
        .unwrap();
        let keep = order.clone();
        let state = State::of(&ledger, move |i| {
            (i.as_str() == "rest").then(|| keep.clone())
        });
        let json = serde_json::to_vec(&state).unwrap();
        let back = serde_json::from_slice::<State>(&json)
            .unwrap()
            .into_ledger();
        assert_eq!(back.status(&id("done")), Some(OrderStatus::Filled));
        assert_eq!(back.status(&id("rest")), Some(OrderStatus::Accepted));
        assert_eq!(back.open_reports().len(), 1);
        assert_eq!(back.restored_order(&id("rest")), Some(&order));
        assert_eq!(back.restored_order(&id("done")), None);
        // Which orders were agent protection's (its exits) survives too.
        assert!(back.is_protections(&id("p-x1")));
        assert!(!back.is_protections(&id("done")));
    }

    #[test]
    fn final_outcomes_keep_their_end_dates_and_an_older_snapshot_dates_them_at_the_next_report() {
        let id = |s: &str| ClientOrderId::try_from(s).unwrap();
        let day = 86_400_000_000_000u64;
        let at = |name: &str, status: OrderStatus, ts: u64| {
            let mut r = reports::invalid(Some(id(name)), None, "x".into(), ts);
            r.status = status;
            r.ts = ts;
            r
        };
        let mut ledger = Ledger::with_horizon(outcomes_kept());
        ledger.record(&at("old", OrderStatus::Filled, day));
        ledger.record(&at("new", OrderStatus::Cancelled, 5 * day));
        ledger.record(&at("rest", OrderStatus::Accepted, 5 * day));
        let state = State::of(&ledger, |_| None);
        assert_eq!(state.outcomes, vec![(id("rest"), OrderStatus::Accepted)]);
        assert_eq!(
            state.finals,
            Some(vec![
                (id("old"), OrderStatus::Filled, day),
                (id("new"), OrderStatus::Cancelled, 5 * day)
            ]),
            "each final order once, with its date, oldest first"
        );
        let json = serde_json::to_value(&state).unwrap();
        let mut back = serde_json::from_value::<State>(json.clone())
            .unwrap()
            .into_ledger();
        // Forgotten on the dates the run gave them.
        back.record(&at("x", OrderStatus::Accepted, day + outcomes_kept() + 1));
        assert_eq!(back.status(&id("old")), None);
        assert_eq!(back.status(&id("new")), Some(OrderStatus::Cancelled));

        assert_eq!(back.status(&id("rest")), Some(OrderStatus::Accepted));

        // Written before the dates: every outcome in `outcomes`, the final ones dated by
        // the next report.
        let old = serde_json::json!({
            "outcomes": [["old", "FILLED"], ["new", "CANCELLED"], ["rest", "ACCEPTED"]],
            "open": [],
        });
        let mut back = serde_json::from_value::<State>(old).unwrap().into_ledger();
        assert_eq!(back.outcomes().1, None, "not dated yet");
        assert_eq!(back.outcomes().0.len(), 3);
        back.record(&at("x", OrderStatus::Accepted, 100 * day));
        assert_eq!(back.status(&id("old")), Some(OrderStatus::Filled));
        let (open, finals) = back.outcomes();
        assert_eq!(finals.map(|f| f.len()), Some(2));
        assert_eq!(open.len(), 2, "rest and x");
        back.record(&at("x", OrderStatus::Filled, 100 * day + outcomes_kept()));
        assert_eq!(back.status(&id("old")), Some(OrderStatus::Filled));
        back.record(&at(
            "y",
            OrderStatus::Filled,
            100 * day + outcomes_kept() + 1,
        ));
        assert_eq!(
            (back.status(&id("old")), back.status(&id("new"))),
            (None, None)
        );
        assert_eq!(back.status(&id("rest")), Some(OrderStatus::Accepted));
    }

    #[test]
    fn an_older_snapshot_counts_the_ids_named_like_exits_as_the_protections() {
        let id = |s: &str| ClientOrderId::try_from(s).unwrap();
        // Written before snapshots said whose an id was: a filled exit must not be sent
        // again after the upgrade (restore_record would take it for another agent's).
        let old = serde_json::json!({
            "outcomes": [["trd-1-x2", "FILLED"], ["trd-2", "FILLED"], ["trd-3-x", "FILLED"],
                         ["px-0a1b-x10", "CANCELLED"], ["trd-4-xy", "FILLED"]],
            "open": [],
        });
        let back = serde_json::from_value::<State>(old).unwrap().into_ledger();
        assert!(back.is_protections(&id("trd-1-x2")));
        assert!(back.is_protections(&id("px-0a1b-x10")));
        for other in ["trd-2", "trd-3-x", "trd-4-xy"] {
            assert!(!back.is_protections(&id(other)), "{other}");
        }
        // A snapshot that says (even that there are none) is taken at its word.
        let new = serde_json::json!({
            "outcomes": [["trd-1-x2", "FILLED"]], "open": [], "protection_orders": [],
        });
        let back = serde_json::from_value::<State>(new).unwrap().into_ledger();
        assert!(!back.is_protections(&id("trd-1-x2")));
    }
}
