//! The lease against a real nats-server: one holder at a time, a released lease taken at
//! once, a dead holder's lease taken only after its ttl, a holder whose key was taken
//! stops holding.

use std::time::{Duration, Instant};

use moonbus_common::leader::{self, LeaseRecord, LeaseSettings};
use moonbus_common::testing::{provision_streams, NatsServer};
use moonbus_common::{bus, streams};

const TTL: Duration = Duration::from_millis(800);

fn settings(instance: &str) -> LeaseSettings {
    LeaseSettings {
        ttl: TTL,
        instance: instance.into(),
    }
}

async fn bucket(server: &NatsServer) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(&server.url).await.unwrap();
    provision_streams(&client).await;
    streams::open_kv(&async_nats::jetstream::new(client))
        .await
        .unwrap()
}

async fn record(kv: &async_nats::jetstream::kv::Store) -> LeaseRecord {
    let value = kv
        .get(leader::key("svc"))
        .await
        .unwrap()
        .expect("a lease record");
    bus::decode(&value).unwrap()
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_graceful_handover() {
    let server = NatsServer::start();
    let kv = bucket(&server).await;
    let a = leader::acquire(&kv, "svc", &settings("a")).await.unwrap();
    assert!(a.is_held());
    assert_eq!((a.record.holder.as_str(), a.record.takeovers), ("a", 0));
    // b stays standby for well past the ttl while a renews.
    let b = tokio::spawn({
        let kv = kv.clone();
        async move { leader::acquire(&kv, "svc", &settings("b")).await.unwrap() }
    });
    tokio::time::sleep(TTL * 3).await;
    assert!(
        !b.is_finished(),
        "a standby took a lease that was being renewed"
    );
    assert!(a.is_held());
    assert!(
        record(&kv).await.renewed_ts > a.record.renewed_ts,
        "a renews"
    );
    let released = Instant::now();
    a.release().await;
    let b = tokio::time::timeout(TTL, b)
        .await
        .expect("a released lease is taken at once")
        .unwrap();
    assert!(released.elapsed() < TTL);
    assert_eq!(b.record.previous_holder.as_deref(), Some("a"));
    assert_eq!(b.record.takeovers, 1);
    assert_eq!(record(&kv).await.holder, "b");
}

#[tokio::test]
async fn a_dead_holders_lease_is_taken_only_after_its_ttl() {
    let server = NatsServer::start();
    let kv = bucket(&server).await;
    let a = leader::acquire(&kv, "svc", &settings("a")).await.unwrap();
    let last_renewal = record(&kv).await;
    a.abandon(); // a crash: no more renewals, no release
    let died = Instant::now();
    let b = leader::acquire(&kv, "svc", &settings("b")).await.unwrap();
    let waited = died.elapsed();
    assert!(
        waited >= TTL,
        "taken after {waited:?}, before the ttl {TTL:?}"
    );
    assert!(waited < TTL * 3, "took {waited:?}");
    assert!(
        b.record.acquired_ts > last_renewal.acting_until_ts,
        "the dead holder's acting window had ended"
    );
    assert_eq!(record(&kv).await.holder, "b");
}

#[tokio::test]
async fn a_holder_whose_key_is_taken_stops_holding() {
    let server = NatsServer::start();
    let kv = bucket(&server).await;
    let a = leader::acquire(&kv, "svc", &settings("a")).await.unwrap();
    // Someone writes the key behind a's back: a's next renewal names a stale revision.
    kv.put(leader::key("svc"), "intruder".into()).await.unwrap();
    let deadline = Instant::now() + TTL * 2;
    while a.is_held() {
        assert!(
            Instant::now() < deadline,
            "a still believes it holds the lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn of_two_racing_for_a_free_lease_exactly_one_wins() {
    let server = NatsServer::start();
    let kv = bucket(&server).await;
    let racers: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let kv = kv.clone();
            tokio::spawn(async move { leader::acquire(&kv, "svc", &settings(name)).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(TTL * 2).await;
    let winners: Vec<_> = racers.iter().filter(|r| r.is_finished()).collect();
    assert_eq!(
        winners.len(),
        1,
        "{} instances hold the lease",
        winners.len()
    );
    for racer in racers {
        racer.abort();
    }
}
