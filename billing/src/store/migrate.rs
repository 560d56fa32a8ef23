//! Versioned schema migrations, forward only, embedded in the binary: one list per backend (the
//! same versions, each in its dialect). At start the store applies what the database lacks, in
//! order, each in its own transaction with its row in `tollgate_schema`; a database whose schema
//! is newer than this binary knows is refused with a message saying so, before anything is touched.

use super::StoreError;

/// One migration.
#[derive(Debug)]
pub struct Migration {
    /// Its version (1, 2, …).
    pub version: i64,
    /// A short name.
    pub name: &'static str,
    /// The SQL, several statements.
    pub sql: &'static str,
}

/// SQLite's migrations.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "catalog",
        sql: include_str!("../../migrations/sqlite/0002_catalog.sql"),
    },
    Migration {
        version: 3,
        name: "subscriptions",
        sql: include_str!("../../migrations/sqlite/0003_subscriptions.sql"),
    },
    Migration {
        version: 4,
        name: "notifications",
        sql: include_str!("../../migrations/sqlite/0004_notifications.sql"),
    },
    Migration {
        version: 5,
        name: "invoicing",
        sql: include_str!("../../migrations/sqlite/0005_invoicing.sql"),
    },
    Migration {
        version: 6,
        name: "usage_totals",
        sql: include_str!("../../migrations/sqlite/0006_usage_totals.sql"),
    },
    Migration {
        version: 9,
        name: "notification_queue",
        sql: include_str!("../../migrations/sqlite/0009_notification_queue.sql"),
    },
];

/// PostgreSQL's migrations.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "catalog",
        sql: include_str!("../../migrations/postgres/0002_catalog.sql"),
    },
    Migration {
        version: 3,
        name: "subscriptions",
        sql: include_str!("../../migrations/postgres/0003_subscriptions.sql"),
    },
    Migration {
        version: 4,
        name: "notifications",
        sql: include_str!("../../migrations/postgres/0004_notifications.sql"),
    },
    Migration {
        version: 5,
        name: "invoicing",
        sql: include_str!("../../migrations/postgres/0005_invoicing.sql"),
    },
    Migration {
        version: 6,
        name: "usage_totals",
        sql: include_str!("../../migrations/postgres/0006_usage_totals.sql"),
    },
    Migration {
        version: 9,
        name: "notification_queue",
        sql: include_str!("../../migrations/postgres/0009_notification_queue.sql"),
    },
];

/// The table that records applied versions (same text on both backends).
pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS tollgate_schema (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)";

/// What is left to apply on a database that has `applied`, in order, or why the binary must not
/// touch it. Every known version not yet applied is pending, not only those above the highest
/// applied one: versions are reserved per branch (0006, 0007 …), so a database may have met a
/// later one first.
pub fn pending(
    applied: &[i64],
    known: &'static [Migration],
    database: &str,
) -> Result<Vec<&'static Migration>, StoreError> {
    let latest = known.last().map_or(0, |m| m.version);
    if let Some(current) = applied.iter().copied().filter(|v| *v > latest).max() {
        return Err(StoreError::Schema(format!(
            "the database {database} has schema version {current}, newer than this \
             tollgate-billing knows (up to {latest}): run a newer tollgate-billing against it \
             (migrations only go forward)"
        )));
    }
    Ok(known
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_in_order_and_the_same_on_both_backends() {
        for list in [SQLITE, POSTGRES] {
            // Increasing; numbers may be reserved for migrations on other branches (3, 4).
            for pair in list.windows(2) {
                assert!(pair[0].version < pair[1].version);
            }
        }
        let v = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(v(SQLITE), v(POSTGRES));
    }

    #[test]
    fn a_newer_schema_is_refused_by_name() {
        assert_eq!(pending(&[], SQLITE, "x").unwrap().len(), SQLITE.len());
        let all: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
        assert!(pending(&all, SQLITE, "x").unwrap().is_empty());
        // A version missing below the highest applied one is still applied.
        let gap: Vec<i64> = all[..all.len() - 2]
            .iter()
            .chain(all.last())
            .copied()
            .collect();
        let left = pending(&gap, SQLITE, "x").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].version, all[all.len() - 2]);
        let err = pending(&[1, 99], SQLITE, "/data/billing.db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/data/billing.db") && err.contains("version 99"),
            "{err}"
        );
    }
}
