//! A throwaway PostgreSQL cluster for tests: Debian's `initdb` and `postgres` (installed by
//! `scripts/install-test-deps`) run as an unprivileged user in a folder under `target/`, listening
//! on a loopback port and a socket in that folder, trust authentication, `fsync` on. Tests get a
//! fresh database each ([`Cluster::database`]) and can stop and restart the server to play an
//! outage ([`Cluster::stop`], [`Cluster::start`]).
//!
//! The server is started with `setpriv --pdeathsig SIGKILL` from a thread that lives as long as
//! the test process, so a cluster never outlives the tests that started it, even on a panic or
//! a kill.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::stack::{free_port, workspace_root};

/// A running (or stopped) cluster.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    user: Option<String>,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The directory holding `initdb`, `postgres`, `createdb` (the newest installed version).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            anyhow::anyhow!(
                "PostgreSQL is not installed (/usr/lib/postgresql: {e}): run scripts/install-test-deps"
            )
        })?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().ok_or_else(|| {
        anyhow::anyhow!("no initdb under /usr/lib/postgresql: run scripts/install-test-deps")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `cmd` as the unprivileged user when we are root (initdb and postgres refuse root).
fn as_user(user: &Option<String>, program: &Path) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--init-groups",
                "--pdeathsig",
                "SIGKILL",
                "--",
            ])
            .arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Cluster {
    /// The cluster shared by every test of this process, started on first use.
    pub fn shared() -> anyhow::Result<&'static Cluster> {
        if let Some(c) = SHARED.get() {
            return Ok(c);
        }
        let c = Cluster::create()?;
        c.start()?;
        Ok(SHARED.get_or_init(|| c))
    }

    /// A new cluster (initdb), not started.
    pub fn create() -> anyhow::Result<Cluster> {
        let bin = bin_dir()?;
        let root = workspace_root().join("target/test-postgres");
        std::fs::create_dir_all(&root)?;
        // Clusters of test processes that are gone.
        for entry in std::fs::read_dir(&root)?.flatten() {
            let pid = entry
                .file_name()
                .to_string_lossy()
                .split('-')
                .next()
                .map(str::to_owned);
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let data = root.join(format!(
            "{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        let user = is_root().then(|| "postgres".to_owned());
        if let Some(u) = &user {
            let ok = Command::new("chown")
                .args([&format!("{u}:{u}")])
                .arg(&data)
                .status()?;
            anyhow::ensure!(ok.success(), "chown {} to {u} failed", data.display());
            // The user must reach the folder.
            let mut p = data.parent();
            while let Some(dir) = p {
                let _ = Command::new("chmod").arg("o+x").arg(dir).status();
                p = dir.parent();
            }
        }
        let out = as_user(&user, &bin.join("initdb"))
            .args(["-D"])
            .arg(data.join("db"))
            .args(["-U", "tollgate", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Cluster {
            bin,
            data,
            port: free_port(),
            user,
            child: Mutex::new(None),
        })
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut cmd = as_user(&self.user, &self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data.join("db"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.data.join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        // From a thread that never ends: the server's parent-death signal follows that thread.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        });
        let child = rx.recv()??;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open connections are cut, as in an outage).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // setpriv exec'd postgres, so the child is the postmaster: SIGINT = fast shutdown.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// A new empty database; its URL.
    pub fn database(&self) -> anyhow::Result<String> {
        let name = format!("t{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "tollgate",
                &name,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "createdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(self.url(&name))
    }

    /// The URL of database `name` (a password is accepted and ignored: trust authentication).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://tollgate@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs SQL with `psql` against database `name`; its output.
    pub fn psql(&self, name: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "tollgate",
                "-d",
                name,
                "-At",
                "-c",
                sql,
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
