//! The `tollgate` binary: `tollgate -dump` for Kong's query command, `tollgate [flags]` for its
//! start command.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tollgate::enforcement::Snapshot;
use tollgate::publisher::{AgentAddr, Publisher, PublisherConfig};
use tollgate::{info, server};
use tollgate_telemetry::{logging, redact};

/// Kong external plugin server for Tollgate metering.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version)]
struct Args {
    /// Print Kong's plugin-info JSON and exit (Kong's query command: `tollgate -dump`).
    #[arg(long)]
    dump: bool,
    /// Which plugin to serve: `metering` (`tollgate`, log phase) or `enforcement`
    /// (`tollgate-enforcement`, access phase). Default: `enforcement` when started as
    /// `tollgate-enforcement` (a symlink), else `metering`.
    #[arg(long, value_parser = ["metering", "enforcement"])]
    plugin: Option<String>,
    /// Kong's prefix; the socket is `<prefix>/tollgate.socket`.
    #[arg(long, env = "KONG_PREFIX", default_value = "/usr/local/kong")]
    kong_prefix: PathBuf,
    /// Serve this socket path instead of `<prefix>/tollgate.socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The agent: `http://host:port` or `unix:/path/to/agent.sock`.
    #[arg(long, env = "TOLLGATE_AGENT", default_value = "http://127.0.0.1:7070")]
    agent: String,
    /// CloudEvents `source` of the events (default `kong-gateway/<hostname>`).
    #[arg(long, env = "TOLLGATE_SOURCE")]
    source: Option<String>,
    /// Events held in memory while the agent is unreachable; past it the oldest are dropped.
    #[arg(long, default_value_t = 100_000)]
    queue_capacity: usize,
    /// Worker threads. 1 (the default) runs everything on one thread: no cross-thread wakeups,
    /// which on a gateway host is the cheapest per event; more spread parsing over cores.
    #[arg(long, env = "TOLLGATE_THREADS", default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    log: logging::LogArgs,
}

/// Kong's docs and go-pdk spell flags with one dash (`-dump`, `-kong-prefix`); accept both.
fn normalise_args() -> Vec<String> {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            if i > 0 && a.starts_with('-') && !a.starts_with("--") && a.len() > 2 {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line in Kong's error log, not anyhow's multi-line report.
            logging::fatal(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse_from(normalise_args());
    let invoked_as = std::env::args().next().unwrap_or_default();
    let plugin = match args.plugin.as_deref() {
        Some("enforcement") => info::ENFORCEMENT_PLUGIN,
        Some(_) => info::METERING_PLUGIN,
        None if invoked_as.ends_with(info::ENFORCEMENT_PLUGIN) => info::ENFORCEMENT_PLUGIN,
        None => info::METERING_PLUGIN,
    };
    if args.dump {
        println!("{}", info::dump(plugin));
        return Ok(());
    }
    // Kong copies our stderr into its error log, prefixed with our name and pid: one line per
    // event, never coloured there (it is not a terminal).
    logging::init(&args.log)?;
    let agent: AgentAddr = args.agent.parse().map_err(anyhow::Error::msg)?;
    let socket = args
        .socket
        .unwrap_or_else(|| args.kong_prefix.join(format!("{plugin}.socket")));
    let source = args.source.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("kong-gateway/{host}")
    });
    let runtime = match args.threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .context("starting the runtime")?;
    runtime.block_on(async move {
        let agent_addr = agent.clone();
        let mut config = PublisherConfig::new(agent);
        config.queue_capacity = args.queue_capacity;
        let publisher = Publisher::start(config);
        let snapshot = (plugin == info::ENFORCEMENT_PLUGIN).then(|| {
            let snapshot = Snapshot::new(agent_addr.clone());
            let name = format!("{plugin}@{}", std::process::id());
            tokio::spawn(snapshot.clone().run(name));
            snapshot
        });
        let state = server::State::serving(plugin, publisher.clone(), source, snapshot);
        let listener = server::bind(&socket)
            .await
            .with_context(|| format!("cannot serve {}", socket.display()))?;
        tracing::info!(plugin, socket = %socket.display(), agent = %redact::url(&args.agent), "tollgate plugin server ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = server::serve(listener, state.clone()) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = parent_gone() => tracing::info!("parent process exited"),
        }
        // Stop taking calls, then give queued events a moment to reach the agent.
        let _ = std::fs::remove_file(&socket);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while publisher.queued() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let s = publisher.stats();
        tracing::info!(
            submitted = s.submitted.load(std::sync::atomic::Ordering::Relaxed),
            acked = s.acked.load(std::sync::atomic::Ordering::Relaxed),
            dropped = s.dropped.load(std::sync::atomic::Ordering::Relaxed),
            unsent = publisher.queued(),
            "tollgate plugin server stopped"
        );
        Ok(())
    })
}

/// Resolves when the process that started us (Kong) is gone and we were re-parented.
async fn parent_gone() {
    let parent = std::os::unix::process::parent_id();
    if parent == 1 {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}
