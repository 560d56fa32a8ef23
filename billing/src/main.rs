//! The `tollgate-billing` binary.

/// mimalloc: ingest parses, copies and frees many small JSON values per event on every request
/// thread; glibc's allocator was a quarter of the request side's CPU under load (perf), and
/// mimalloc halves that. (The agent, a sidecar where memory counts more, keeps glibc's.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tollgate_billing::api::{self, Api};
use tollgate_billing::clock::Clock;
use tollgate_billing::config::Config;
use tollgate_billing::store::Store;

/// OpenMeter-compatible metering and entitlements with an embedded store.
#[derive(Parser, Debug)]
#[command(name = "tollgate-billing", version)]
struct Args {
    /// TOML config file (listen, data_dir, api_tokens, meters).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `data_dir` (SQLite's directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `database_url`: PostgreSQL (`postgres://user:password@host:port/database`)
    /// instead of SQLite, so several billing processes can serve one database.
    #[arg(long, env = "TOLLGATE_BILLING_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Run on a simulated clock kept in the database (as `simulated_clock = true`): it starts
    /// at the real time of the first start and moves only forward, by
    /// `POST /api/tollgate/v1/clock`.
    #[arg(
        long,
        env = "TOLLGATE_BILLING_SIMULATED_CLOCK",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    simulated_clock: bool,
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    log: tollgate_telemetry::logging::LogArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Validate FILE (keys, meters, JSONPaths) and print the meters it declares.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// The product catalog as code, against a running tollgate-billing.
    Catalog {
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(subcommand)]
        command: CatalogSub,
    },
}

/// Where the running service is.
#[derive(clap::Args, Debug)]
struct RemoteArgs {
    /// Base URL of the billing API.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8888",
        env = "TOLLGATE_BILLING_URL"
    )]
    url: String,
    /// Bearer token (one of the service's `api_tokens`).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_BILLING_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum CatalogSub {
    /// Create or update the features, add-ons and plans in FILE (YAML); idempotent. Prints what
    /// changed per item: created, new draft, updated draft, published, unchanged.
    Apply {
        /// The YAML file.
        file: PathBuf,
        /// Publish every draft the file leaves (archiving the versions they replace).
        #[arg(long)]
        publish: bool,
    },
    /// Write today's catalog (live features; active, else draft, plans and add-ons) as YAML.
    Dump {
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

async fn catalog(remote: &RemoteArgs, command: &CatalogSub) -> anyhow::Result<()> {
    use tollgate_billing::catalog::as_code;
    let client = as_code::Remote::new(&remote.url, remote.token.as_deref())?;
    match command {
        CatalogSub::Apply { file, publish } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed = as_code::parse_file(&text)
                .with_context(|| format!("{} is not a catalog file", file.display()))?;
            as_code::apply(&client, &parsed, *publish, &mut |line| println!("{line}")).await
        }
        CatalogSub::Dump { output } => {
            let yaml = serde_yaml_ng::to_string(&as_code::dump(&client).await?)?;
            match output {
                Some(path) => std::fs::write(path, yaml)
                    .with_context(|| format!("writing {}", path.display())),
                None => {
                    print!("{yaml}");
                    Ok(())
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Sub::Catalog { remote, command }) = &args.command {
        return catalog(remote, command).await;
    }
    if let Some(Sub::CheckConfig { file }) = &args.command {
        let config = Config::load(file).map_err(anyhow::Error::msg)?;
        for m in &config.meters {
            tollgate_billing::meter::CompiledMeter::new(m.clone())
                .map_err(|e| anyhow::anyhow!("meters.{}.{e}", m.slug))?;
            println!("meter {}: {:?} of {}", m.slug, m.aggregation, m.event_type);
        }
        println!(
            "{}: ok (listen {}, database {}{})",
            file.display(),
            config.listen,
            config.location().describe(),
            if config.simulated_clock {
                ", simulated clock"
            } else {
                ""
            }
        );
        return Ok(());
    }
    tollgate_telemetry::logging::init(&args.log)?;
    if let Err(e) = serve(args).await {
        // One event in the chosen log format, not anyhow's multi-line report.
        tollgate_telemetry::logging::fatal(&e);
        std::process::exit(1);
    }
    Ok(())
}

/// Opens the database and serves the API until SIGTERM or Ctrl-C.
async fn serve(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(anyhow::Error::msg)?,
        None => Config::default(),
    };
    config
        .api_tokens
        .iter()
        .for_each(|t| tollgate_telemetry::redact::hide(t));
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(url) = args.database_url.filter(|u| !u.trim().is_empty()) {
        config.database_url = Some(url);
    }
    if args.simulated_clock {
        config.simulated_clock = true;
    }
    let location = config.location();
    let store = Arc::new(Store::open(&location).await.map_err(|e| match e {
        tollgate_billing::store::StoreError::Open(_)
        | tollgate_billing::store::StoreError::Schema(_) => {
            anyhow::anyhow!("{e}")
        }
        other => anyhow::anyhow!("opening the database {}: {other}", location.describe()),
    })?);
    let clock = Arc::new(if config.simulated_clock {
        Clock::simulated(store.clone()).await?
    } else {
        Clock::real(store.clone()).await?
    });
    let now = clock.now().await?;
    for meter in config.meters.clone() {
        api::ensure_meter(&store, meter, now)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    // The sandbox app and the default billing profile, once (also with replicas starting at once).
    tollgate_billing::invoice::profile::provision(&store, now).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    tracing::info!(addr = %config.listen, database = %store.describe(), "tollgate-billing listening");
    let _runner = (!clock.is_simulated()).then(|| {
        tollgate_billing::scheduler::runner::spawn(
            clock.clone(),
            std::time::Duration::from_millis(config.scheduler_interval_ms),
        )
    });
    if clock.is_simulated() {
        tracing::info!(now = %now, "simulated clock: advance it with POST /api/tollgate/v1/clock");
    }
    // Notifications: the threshold evaluator and the delivery worker, each on its own task.
    let deliveries = Arc::new(tokio::sync::Notify::new());
    let notifications = tollgate_billing::notification::threshold::Evaluator::new(
        store.clone(),
        clock.clone(),
        deliveries.clone(),
    );
    tokio::spawn(notifications.clone().run());
    let worker = tollgate_billing::notification::delivery::Worker::new(
        store.clone(),
        clock.clone(),
        deliveries,
    )
    .context("notification delivery: building the HTTP client")?;
    tokio::spawn(worker.run());
    let app = api::router(Api {
        store: store.clone(),
        tokens: Arc::new(config.api_tokens),
        clock: clock.clone(),
        notifications,
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
