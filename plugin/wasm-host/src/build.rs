//! Building the filter: `cargo build -p tollgate-wasm-filter --target wasm32-wasip1 --profile
//! wasm` in the workspace, once per test process, so tests and benchmarks always load the filter
//! of the sources they were built with (CI builds the `.wasm` this way too).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of the built filter, building it first (once per process). `TOLLGATE_WASM_FILTER=/path`
/// loads another build instead.
pub fn filter_wasm() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("TOLLGATE_WASM_FILTER") {
                return Ok(PathBuf::from(p));
            }
            let root = workspace_root();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "tollgate-wasm-filter",
                    "--target",
                    "wasm32-wasip1",
                    "--profile",
                    "wasm",
                ])
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "building the filter failed ({status}); is the target installed? rustup target add wasm32-wasip1"
                ));
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"));
            Ok(target.join("wasm32-wasip1/wasm/tollgate_wasm.wasm"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
