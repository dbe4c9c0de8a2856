//! The JetStream state is provisioned the same way by both languages: rust-common
//! `streams::provision` and services/common/streams.py `provision` read the same
//! proto/nats/jetstream.json and leave the same state, each finding nothing to change
//! after the other. (Here because rust-risk's tests have the nats-server fixture.)

use std::path::Path;
use std::process::Command;

use moonbus_common::config::Config;
use moonbus_common::streams::{self, ExecutionSettings, Settings};
use moonbus_common::testing::NatsServer;

/// `python -m services.common.streams [--check]` against `url`: (exit code, output).
fn python_provision(url: &str, check: bool) -> (i32, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    python_provision_with(url, check, &repo.join("moonbus.toml"))
}

fn python_provision_with(url: &str, check: bool, config: &Path) -> (i32, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = repo.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.current_dir(&repo)
        .args(["-m", "services.common.streams"])
        .env("NATS_URL", url)
        .env("NATS_PASSWORD", "unused: the test server has no users")
        .env("MOONBUS_CONFIG", config);
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
        11,
        "nine streams (the object store's included) and two consumers created: {made:?}"
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

#[tokio::test]
async fn stream_limits_of_the_config_are_applied_alike() {
    // [jetstream.<STREAM>] limits: Rust applies them, Python with the same file finds
    // nothing to change, and both refuse the same nonsense.
    let text = "[jetstream.ORDERS]\nmax_bytes = \"512MiB\"\nmax_msg_size = \"32KiB\"\n[jetstream.exec]\nmax_bytes = 3000000000\n";
    let dir = std::env::temp_dir().join(format!("moonbus-provision-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("moonbus.toml");
    std::fs::write(&file, text).unwrap();
    let server = NatsServer::start();
    let client = async_nats::connect(server.url.as_str()).await.unwrap();
    let settings = Settings::from_config(&Config::from_parts(text, []).unwrap()).unwrap();
    let made = streams::provision_with(&client, &settings).await.unwrap();
    assert_eq!(made.len(), 11, "{made:?}");
    let (code, said) = python_provision_with(&server.url, true, &file);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("nothing to change"), "{said}");
    // Python's defaults (no [jetstream]) put the spec's values back; Rust agrees after.
    let (code, said) = python_provision(&server.url, false);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("max_bytes: 536870912 -> 1073741824"),
        "{said}"
    );
    assert!(streams::provision(&client, ExecutionSettings::default())
        .await
        .unwrap()
        .is_empty());

    std::fs::write(&file, "[jetstream.ORDERS]\nmax_bytes = \"1 parsec\"\n").unwrap();
    let (code, said) = python_provision_with(&server.url, true, &file);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("[jetstream.ORDERS] max_bytes: '1 parsec' is not a size"),
        "{said}"
    );
    let rust = Config::from_parts("[jetstream.ORDERS]\nmax_bytes = \"1 parsec\"\n", []).unwrap();
    let error = format!("{:#}", Settings::from_config(&rust).unwrap_err());
    assert!(
        error.contains("[jetstream.ORDERS] max_bytes: \"1 parsec\" is not a size"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
