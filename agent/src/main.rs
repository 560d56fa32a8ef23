//! The `tollgate-agent` binary: `run` (the default), `check-config FILE`, and
//! `dead-letters list|replay|drop` against a running agent's admin endpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_agent::config::Config;
use tollgate_telemetry::{logging, redact};

/// Tollgate's sidecar: a durable buffer between Kong and the billing service.
#[derive(Parser, Debug)]
#[command(name = "tollgate-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    log: logging::LogArgs,
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// TOML config file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Overrides grpc.listen.
    #[arg(long)]
    grpc_listen: Option<String>,
    /// Overrides grpc.unix_socket.
    #[arg(long)]
    grpc_unix_socket: Option<PathBuf>,
    /// Overrides http.listen.
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// Overrides buffer.path.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides destination.url.
    #[arg(long)]
    destination_url: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Print the effective configuration of FILE (with env overrides), or each error with its key.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Inspect or act on events the destination refused.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
        /// The agent's admin URL.
        #[arg(long, global = true, default_value = "http://127.0.0.1:7071")]
        admin: String,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterAction {
    /// List them as JSON.
    List,
    /// Put them back in their queues.
    Replay,
    /// Delete them.
    Drop,
}

fn load(file: Option<&std::path::Path>, overrides: &RunArgs) -> Result<Config, ExitCode> {
    let mut config = match Config::load(file, std::env::vars()) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return Err(ExitCode::from(2));
        }
    };
    if let Some(v) = &overrides.grpc_listen {
        config.grpc.listen = v.clone();
    }
    if let Some(v) = &overrides.grpc_unix_socket {
        config.grpc.unix_socket = Some(v.clone());
    }
    if let Some(v) = overrides.http_listen {
        config.http.listen = v;
    }
    if let Some(v) = &overrides.data_dir {
        config.buffer.path = v.clone();
    }
    if let Some(v) = &overrides.destination_url {
        config.destination.url = v.clone();
    }
    for note in config.settle() {
        eprintln!("note: {note}");
    }
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match load(Some(&file), &RunArgs::default()) {
            Ok(config) => {
                print!("{}", config.to_toml_masked());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::DeadLetters { action, admin }) => dead_letters(&admin, action),
        Some(Command::Run) | None => {
            let config = match load(cli.run.config.as_deref(), &cli.run) {
                Ok(c) => c,
                Err(code) => return code,
            };
            for token in [&config.destination.token, &config.entitlements.token]
                .into_iter()
                .flatten()
            {
                redact::hide(token);
            }
            if !config.sources.runai.app_secret.is_empty() {
                redact::hide(&config.sources.runai.app_secret);
            }
            if let Err(e) = logging::init(&cli.log) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(tollgate_agent::app::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    logging::fatal(&e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn dead_letters(admin: &str, action: DeadLetterAction) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = format!("{}/v1/dead-letters", admin.trim_end_matches('/'));
    let result = runtime.block_on(async {
        let client = reqwest::Client::new();
        let req = match action {
            DeadLetterAction::List => client.get(&url),
            DeadLetterAction::Replay => client.post(format!("{url}/replay")),
            DeadLetterAction::Drop => client.delete(&url),
        };
        let resp = req.send().await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    match result {
        Ok((status, body)) if status.is_success() => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("error: {url}: HTTP {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
