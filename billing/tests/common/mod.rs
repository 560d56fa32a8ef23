//! The harness the billing suites on the real binary share (`api.rs`, `clock.rs`,
//! `subscriptions.rs`, `invoices.rs`, `notifications.rs` and their PostgreSQL twins): the backend
//! a suite runs on, a `tollgate-billing` process with its config written on first start (or a
//! bare [`Replica`] on a database URL), JSON calls with the API token, event ingest, and the
//! Python interpreter that has OpenMeter's SDK and `standardwebhooks`. A suite's crate root
//! defines `fn backend() -> Backend` (SQLite in the suite file, PostgreSQL in its `_postgres.rs`
//! twin).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The API token every suite's billing is configured with.
pub const TOKEN: &str = "billing_test_token";

/// The database a suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// A database on the shared test cluster.
    Postgres,
}

/// A running `tollgate-billing`, killed (-9) when dropped.
pub struct Billing {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Billing {
    /// Billing with its config in `dir` (written on the first start: `extra` lines, and the
    /// backend's database), reused as it is on a restart; `listen` overrides the address (a
    /// second replica on the same config).
    pub fn start(dir: &Path, extra: &str, listen: Option<u16>) -> Billing {
        let config = dir.join("billing.toml");
        if !config.exists() {
            let port = tollgate_e2e::stack::free_port();
            let database = match crate::backend() {
                Backend::Sqlite => String::new(),
                Backend::Postgres => {
                    let url = tollgate_e2e::postgres::Cluster::shared()
                        .unwrap()
                        .database()
                        .unwrap();
                    format!("database_url = \"{url}\"\n")
                }
            };
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{database}api_tokens = [\"{TOKEN}\"]\n{extra}",
                    dir.join("data").display()
                ),
            )
            .unwrap();
        }
        let text = std::fs::read_to_string(&config).unwrap();
        let mut addr: SocketAddr = text
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"));
        cmd.args(["--config", config.to_str().unwrap()]);
        if let Some(port) = listen {
            addr.set_port(port);
            cmd.args(["--listen", &addr.to_string()]);
        }
        // `TOLLGATE_TEST_LOG` (e.g. `tollgate_billing=debug`) shows billing's log when chasing a
        // failure.
        let child = cmd
            .env(
                "TOLLGATE_LOG",
                std::env::var("TOLLGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("TOLLGATE_BILLING_SIMULATED_CLOCK")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "billing never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Billing {
            child,
            addr,
            dir: dir.to_owned(),
        }
    }

    /// Billing on its simulated clock, config in `dir`.
    pub fn simulated(dir: &Path) -> Billing {
        Billing::start(dir, "simulated_clock = true\n", None)
    }

    /// The directory holding its config (and its SQLite data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Billing {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `tollgate-billing` on a database URL with no config file and no API token (another
/// replica of a PostgreSQL-backed billing), killed (-9) when dropped.
pub struct Replica {
    child: Child,
    /// Its base URL.
    pub base: String,
}

impl Replica {
    /// Starts one on the database at `url`, on a free port, and waits until it listens.
    pub fn start(url: &str) -> Replica {
        let port = tollgate_e2e::stack::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                url,
            ])
            .env("TOLLGATE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "billing never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Replica {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a billing started in `dir` keeps its data, to open the store in process once that billing
/// has stopped (SQLite takes one process).
pub fn store_location(dir: &Path) -> tollgate_billing::store::Location {
    use tollgate_billing::store::Location;
    match crate::backend() {
        Backend::Sqlite => Location::Sqlite(dir.join("data")),
        Backend::Postgres => {
            let config = std::fs::read_to_string(dir.join("billing.toml")).unwrap();
            Location::Postgres(
                config
                    .lines()
                    .find_map(|l| l.strip_prefix("database_url = "))
                    .unwrap()
                    .trim_matches('"')
                    .to_owned(),
            )
        }
    }
}

/// The Python with OpenMeter's SDK and `standardwebhooks` (`TOLLGATE_PYTHON`, else the venv
/// `scripts/install-test-deps` makes — made here on a fresh clone).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_PYTHON") {
        return PathBuf::from(p);
    }
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import openmeter, standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-test-deps");
        assert!(
            Command::new("bash").arg(script).status().unwrap().success(),
            "installing the test dependencies (OpenMeter's Python SDK) failed"
        );
    }
    py
}

/// Runs the SDK script `tests/sdk/<script>` against `b` (its base URL and the token, then
/// `args`) and asserts it succeeded and printed `<done>`; its stdout.
pub fn run_sdk(b: &Billing, script: &str, args: &[&str], done: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .args([b.url(""), TOKEN.to_owned()])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(done),
        "{script} failed\n{stdout}\n{stderr}"
    );
    stdout
}

/// An HTTP client sending the API token.
pub fn client() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Status, content type and JSON body.
pub async fn call(
    b: &Billing,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut req = client().request(method.parse().unwrap(), b.url(path));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (
        status,
        kind,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// POSTs `body`; status and JSON body.
pub async fn post(b: &Billing, path: &str, body: Value) -> (u16, Value) {
    let (s, _, v) = call(b, "POST", path, Some(body)).await;
    (s, v)
}

/// GETs `path`, asserting 200; the JSON body.
pub async fn get(b: &Billing, path: &str) -> Value {
    let (s, _, v) = call(b, "GET", path, None).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

/// Status and JSON body of a GET, whatever the status.
pub async fn get_any(b: &Billing, path: &str) -> (u16, Value) {
    let (s, _, v) = call(b, "GET", path, None).await;
    (s, v)
}

/// Ingests a CloudEvents batch; the status.
pub async fn ingest(b: &Billing, events: Value) -> u16 {
    client()
        .post(b.url("/api/v1/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(events.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
