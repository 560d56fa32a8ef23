//! `tollgate-billing`'s config file (TOML): where to listen, where the data lives (SQLite under
//! `data_dir`, or PostgreSQL at `database_url`), optional Bearer tokens, and meters declared at
//! start (like OpenMeter's `meters:` config list), and whether the clock is simulated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::meter::Meter;
use crate::store::Location;

/// The config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address (loopback by default, port 8888 like OpenMeter).
    pub listen: SocketAddr,
    /// The SQLite database's directory (`billing.db` in it), used unless `database_url` is set.
    pub data_dir: PathBuf,
    /// PostgreSQL (`postgres://user:password@host:port/database`): several billing processes
    /// can share it.
    pub database_url: Option<String>,
    /// Accepted Bearer tokens; none means no authentication.
    pub api_tokens: Vec<String>,
    /// Meters created at start if missing.
    pub meters: Vec<Meter>,
    /// Billing's "now" from a clock kept in the database that moves only when advanced
    /// (`POST /api/tollgate/v1/clock`), for sandboxes, demos and tests; real time when false.
    pub simulated_clock: bool,
    /// On real time, how often due work (subscription phases, changes, cancelations…) is run,
    /// in milliseconds.
    pub scheduler_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8888)),
            data_dir: PathBuf::from("tollgate-billing-data"),
            database_url: None,
            api_tokens: Vec::new(),
            meters: Vec::new(),
            simulated_clock: false,
            scheduler_interval_ms: 1000,
        }
    }
}

impl Config {
    /// Where the data lives: PostgreSQL when `database_url` is set, else SQLite in `data_dir`.
    pub fn location(&self) -> Location {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => Location::Postgres(url.trim().to_owned()),
            _ => Location::Sqlite(self.data_dir.clone()),
        }
    }

    /// Reads `path`; errors name the key.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e))
    }
}
