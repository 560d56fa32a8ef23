//! The whole Tollgate stack as real processes on loopback: `tollgate-billing`, `tollgate-agent`
//! and the `tollgate` plugin server, configured from the files in `kong-config/` with only ports
//! and data directories overridden, each on a free port in its own folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (where `kong-config/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a workspace binary: next to the running executable (`target/<profile>/`), built with
/// cargo first if it is not there or is older than its crate's sources (so `cargo test -p
/// tollgate-e2e` after a change to another crate does not test a stale binary).
pub fn binary(name: &str) -> PathBuf {
    // `TOLLGATE_BILLING_BIN=/path` (`tollgate-billing`), `TOLLGATE_AGENT_BIN`, `TOLLGATE_BIN`:
    // another build of that binary, to compare two builds in one run.
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() || older_than_its_sources(&path, name) {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--bin", name])
            .current_dir(workspace_root());
        if release {
            cmd.arg("--release");
        }
        let _ = cmd.status();
    }
    path
}

/// Whether a source file of the crate that builds `name` (or of `proto/` or `telemetry/`, which
/// all three use) changed after `bin` was linked.
fn older_than_its_sources(bin: &Path, name: &str) -> bool {
    let crate_dir = match name {
        "tollgate" => "plugin",
        "tollgate-agent" => "agent",
        "tollgate-billing" => "billing",
        _ => return false,
    };
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let mut dirs = vec![
        root.join(crate_dir).join("src"),
        root.join("proto"),
        root.join("telemetry"),
        // Shared by the plugin and the agent (Kong request → events).
        root.join("events"),
        root.join(crate_dir).join("Cargo.toml"),
        root.join(crate_dir).join("migrations"),
    ];
    while let Some(p) = dirs.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                dirs.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.modified().is_ok_and(|m| m > built) {
            return true;
        }
    }
    false
}

/// A free loopback port for a server a test starts, picked at random below the kernel's
/// ephemeral range (32768–60999 on Linux). A port the kernel hands out for `:0` is one it may also
/// give the next outgoing connection of any process before the server binds it — a test that
/// failed with "Address already in use" now and then.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 20_000 + (random % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process killed (-9) when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its command line, for restarts.
    pub cmd: Vec<String>,
}

impl Proc {
    /// Spawns `bin args…` with extra environment.
    pub fn spawn(bin: &Path, args: &[String], env: &[(&str, &str)]) -> std::io::Result<Proc> {
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "TOLLGATE_LOG",
                std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .spawn()?;
        let mut cmd = vec![bin.display().to_string()];
        cmd.extend(args.iter().cloned());
        Ok(Proc { child, cmd })
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// kill -9, then start the same command again.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill9();
        let (bin, args) = self
            .cmd
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        self.child = Command::new(bin)
            .args(args)
            .env(
                "TOLLGATE_LOG",
                std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null())
            .spawn()?;
        Ok(())
    }

    /// Stops with SIGTERM and waits.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{addr} never listened"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Waits until a Unix socket accepts connections.
pub fn wait_unix(path: &Path, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} never listened", path.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A further gateway node: agent and both plugin servers.
pub struct Gateway {
    /// Its agent.
    pub agent: Proc,
    /// Its metering and enforcement plugin servers.
    pub plugins: Vec<Proc>,
    /// Its Kong prefix (sockets).
    pub kong_prefix: PathBuf,
}

/// billing + agent + plugin server.
pub struct Stack {
    /// `tollgate-billing`.
    pub billing: Proc,
    /// `tollgate-agent`.
    pub agent: Proc,
    /// `tollgate`.
    pub plugin: Proc,
    /// Billing's address.
    pub billing_addr: SocketAddr,
    /// Agent gRPC address.
    pub agent_grpc: SocketAddr,
    /// Agent admin HTTP address.
    pub agent_http: SocketAddr,
    /// Kong's prefix: the plugin's socket is `<prefix>/tollgate.socket`.
    pub kong_prefix: PathBuf,
}

impl Stack {
    /// Starts all three under `dir` from `kong-config/tollgate-billing.toml` and
    /// `kong-config/tollgate-agent.toml`.
    pub fn start(dir: &Path) -> std::io::Result<Stack> {
        Self::start_with_agent_env(dir, &[])
    }

    /// As [`Stack::start`], with extra environment for the agent (`TOLLGATE_AGENT__…` overrides).
    pub fn start_with_agent_env(dir: &Path, agent_env: &[(&str, &str)]) -> std::io::Result<Stack> {
        Self::start_with_env(dir, &[], agent_env)
    }

    /// As [`Stack::start`], with extra environment for billing (e.g.
    /// `TOLLGATE_BILLING_DATABASE_URL`) and for the agent.
    pub fn start_with_env(
        dir: &Path,
        billing_env: &[(&str, &str)],
        agent_env: &[(&str, &str)],
    ) -> std::io::Result<Stack> {
        let config = workspace_root().join("kong-config");
        let billing_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let agent_grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let agent_http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let kong_prefix = dir.join("kong");
        std::fs::create_dir_all(&kong_prefix)?;
        let s = |p: &Path| p.display().to_string();
        let billing = Proc::spawn(
            &binary("tollgate-billing"),
            &[
                "--config".into(),
                s(&config.join("tollgate-billing.toml")),
                "--listen".into(),
                billing_addr.to_string(),
                "--data-dir".into(),
                s(&dir.join("billing-data")),
            ],
            billing_env,
        )?;
        wait_tcp(billing_addr, Duration::from_secs(20))?;
        let agent = Proc::spawn(
            &binary("tollgate-agent"),
            &[
                "--config".into(),
                s(&config.join("tollgate-agent.toml")),
                "--grpc-listen".into(),
                agent_grpc.to_string(),
                "--http-listen".into(),
                agent_http.to_string(),
                "--data-dir".into(),
                s(&dir.join("agent-data")),
                "--destination-url".into(),
                format!("http://{billing_addr}"),
            ],
            agent_env,
        )?;
        wait_tcp(agent_grpc, Duration::from_secs(20))?;
        wait_tcp(agent_http, Duration::from_secs(20))?;
        let plugin = Proc::spawn(
            &binary("tollgate"),
            &[
                "-kong-prefix".into(),
                s(&kong_prefix),
                "--agent".into(),
                format!("http://{agent_grpc}"),
            ],
            &[],
        )?;
        wait_unix(
            &kong_prefix.join("tollgate.socket"),
            Duration::from_secs(20),
        )?;
        Ok(Stack {
            billing,
            agent,
            plugin,
            billing_addr,
            agent_grpc,
            agent_http,
            kong_prefix,
        })
    }

    /// Another gateway node against the same billing service: its own agent, metering and
    /// enforcement plugin servers under `dir`.
    pub fn add_gateway(&self, dir: &Path, agent_env: &[(&str, &str)]) -> std::io::Result<Gateway> {
        let config = workspace_root().join("kong-config");
        let agent_grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let agent_http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let kong_prefix = dir.join("kong");
        std::fs::create_dir_all(&kong_prefix)?;
        let s = |p: &Path| p.display().to_string();
        let agent = Proc::spawn(
            &binary("tollgate-agent"),
            &[
                "--config".into(),
                s(&config.join("tollgate-agent.toml")),
                "--grpc-listen".into(),
                agent_grpc.to_string(),
                "--http-listen".into(),
                agent_http.to_string(),
                "--data-dir".into(),
                s(&dir.join("agent-data")),
                "--destination-url".into(),
                format!("http://{}", self.billing_addr),
            ],
            agent_env,
        )?;
        wait_tcp(agent_grpc, Duration::from_secs(20))?;
        wait_tcp(agent_http, Duration::from_secs(20))?;
        let mut plugins = Vec::new();
        for plugin in ["metering", "enforcement"] {
            plugins.push(Proc::spawn(
                &binary("tollgate"),
                &[
                    "--plugin".into(),
                    plugin.into(),
                    "-kong-prefix".into(),
                    s(&kong_prefix),
                    "--agent".into(),
                    format!("http://{agent_grpc}"),
                ],
                &[],
            )?);
        }
        wait_unix(
            &kong_prefix.join("tollgate.socket"),
            Duration::from_secs(20),
        )?;
        wait_unix(
            &kong_prefix.join("tollgate-enforcement.socket"),
            Duration::from_secs(20),
        )?;
        Ok(Gateway {
            agent,
            plugins,
            kong_prefix,
        })
    }

    /// Starts `tollgate --plugin enforcement` (Kong's second plugin-server entry) on
    /// `<prefix>/tollgate-enforcement.socket`.
    pub fn start_enforcement(&self) -> std::io::Result<Proc> {
        let proc = Proc::spawn(
            &binary("tollgate"),
            &[
                "--plugin".into(),
                "enforcement".into(),
                "-kong-prefix".into(),
                self.kong_prefix.display().to_string(),
                "--agent".into(),
                format!("http://{}", self.agent_grpc),
            ],
            &[],
        )?;
        wait_unix(&self.enforcement_socket(), Duration::from_secs(20))?;
        Ok(proc)
    }

    /// The enforcement plugin server's socket.
    pub fn enforcement_socket(&self) -> PathBuf {
        self.kong_prefix.join("tollgate-enforcement.socket")
    }

    /// The plugin server's socket.
    pub fn socket(&self) -> PathBuf {
        self.kong_prefix.join("tollgate.socket")
    }

    /// A URL on the billing service.
    pub fn billing_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.billing_addr)
    }
}
