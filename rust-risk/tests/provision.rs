//! The JetStream state is provisioned the same way by both languages: rust-common
//! `streams::provision` and services/common/streams.py `provision` read the same
//! proto/nats/jetstream.json and leave the same state, each finding nothing to change
//! after the other. (Here because rust-risk's tests have the nats-server fixture.)

use std::path::Path;
use std::process::Command;

use moonbus_common::streams::{self, ExecutionSettings};
use moonbus_common::testing::NatsServer;

/// `python -m services.common.streams [--check]` against `url`: (exit code, output).
fn python_provision(url: &str, check: bool) -> (i32, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = repo.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.current_dir(&repo)
        .args(["-m", "services.common.streams"])
        .env("NATS_URL", url)
        .env("NATS_PASSWORD", "unused: the test server has no users")
        .env("MOONBUS_CONFIG", repo.join("moonbus.toml"));
    if check {
        cmd.arg("--check");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {} (make setup): {e}", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn rust_and_python_provision_the_same_state() {
    // Rust first: Python then finds nothing to change.
    let server = NatsServer::start();
    let client = async_nats::connect(server.url.as_str()).await.unwrap();
    let made = streams::provision(&client, ExecutionSettings::default())
        .await
        .unwrap();
    assert_eq!(
        made.len(),
        5,
        "three streams and two consumers created: {made:?}"
    );
    assert!(streams::provision(&client, ExecutionSettings::default())
        .await
        .unwrap()
        .is_empty());
    let (code, said) = python_provision(&server.url, true);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("nothing to change"), "{said}");

    // Python first: Rust then finds nothing to change, and a setting that drifted is put
    // back by either the same way.
    let server = NatsServer::start();
    let client = async_nats::connect(server.url.as_str()).await.unwrap();
    let (code, said) = python_provision(&server.url, false);
    assert_eq!(code, 0, "{said}");
    assert!(streams::provision(&client, ExecutionSettings::default())
        .await
        .unwrap()
        .is_empty());
    let moved = ExecutionSettings {
        ack_wait_ms: Some(2000),
        max_in_flight: Some(7),
    };
    assert_eq!(
        streams::provision(&client, moved).await.unwrap(),
        [
            "ORDERS/execution: ack_wait: 30000000000 -> 2000000000",
            "ORDERS/execution: max_ack_pending: 32 -> 7"
        ]
    );
    let (code, said) = python_provision(&server.url, true);
    assert_eq!(code, 3, "python sees the drift from moonbus.toml: {said}");
    assert!(
        said.contains("ack_wait: 2000000000 -> 30000000000"),
        "{said}"
    );
    let (code, said) = python_provision(&server.url, false);
    assert_eq!(code, 0, "{said}");
    assert!(streams::provision(&client, ExecutionSettings::default())
        .await
        .unwrap()
        .is_empty());
}
