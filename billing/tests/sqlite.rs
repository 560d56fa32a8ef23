//! What an operator of the embedded SQLite database meets: where the file is, one process per
//! data directory, an unwritable database and a schema newer than the binary — each a clear error
//! naming the file — and the durability settings (WAL, synchronous FULL) that ingest relies on.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start(dir: &std::path::Path) -> (std::process::Child, u16) {
    let port = tollgate_e2e::stack::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "billing never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, port)
}

fn start_error(dir: &std::path::Path) -> String {
    let port = tollgate_e2e::stack::free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-billing"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("TOLLGATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "billing started on {}",
        dir.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_database_is_billing_db_in_wal_mode_and_one_process_owns_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start(dir.path());
    let db = dir.path().join("billing.db");
    assert!(db.exists());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("SELECT MAX(version) FROM tollgate_schema", [], |r| r.get(0))
        .unwrap();
    assert!(version >= 1);
    let err = start_error(dir.path());
    assert!(err.contains("another tollgate-billing is using"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start(dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let db = dir.path().join("billing.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO tollgate_schema (version, name, applied_ms) VALUES (999, 'future', 0)",
            [],
        )
        .unwrap();
    let err = start_error(dir.path());
    assert!(err.contains("schema version 999"), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
}

#[test]
fn an_unwritable_database_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start(dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let db = dir.path().join("billing.db");
    // Not a database at all (e.g. a wrong file in data_dir).
    std::fs::write(
        &db,
        b"this is not SQLite, just some text that is long enough",
    )
    .unwrap();
    let _ = std::fs::remove_file(dir.path().join("billing.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("billing.db-shm"));
    let err = start_error(dir.path());
    assert!(err.contains(&db.display().to_string()), "{err}");
    // A data_dir that cannot be created.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = start_error(&file.join("data"));
    assert!(
        err.contains("data_dir") && err.contains("plain-file"),
        "{err}"
    );
}
