//! The `tollgate-billing` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tollgate_billing::api::{self, Api};
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
    /// Overrides `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Sub::CheckConfig { file }) = &args.command {
        let config = Config::load(file).map_err(anyhow::Error::msg)?;
        for m in &config.meters {
            tollgate_billing::meter::CompiledMeter::new(m.clone())
                .map_err(|e| anyhow::anyhow!("meters.{}.{e}", m.slug))?;
            println!("meter {}: {:?} of {}", m.slug, m.aggregation, m.event_type);
        }
        println!(
            "{}: ok (listen {}, data_dir {})",
            file.display(),
            config.listen,
            config.data_dir.display()
        );
        return Ok(());
    }
    tollgate_telemetry::logging::init(&args.log)?;
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
    let store = Arc::new(
        Store::open(&config.data_dir)
            .with_context(|| format!("opening {}", config.data_dir.display()))?,
    );
    for meter in config.meters.clone() {
        api::ensure_meter(&store, meter).map_err(anyhow::Error::msg)?;
    }
    store.flush().await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", config.listen))?;
    tracing::info!(addr = %config.listen, data = %config.data_dir.display(), "tollgate-billing listening");
    let app = api::router(Api {
        store: store.clone(),
        tokens: Arc::new(config.api_tokens),
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
    store.flush().await?;
    Ok(())
}
