//! API documents (meters, customers, features, entitlements, grants, and any later kind) in their
//! own tables: the whole JSON document in `doc`, plus the fields the database must index or keep
//! unique as columns (a customer's key, a feature's live key, an entitlement's owner…), so
//! uniqueness is decided by the database, not by a read-then-write in the API. The SQL here is the
//! same text on SQLite and PostgreSQL (`$n` parameters, `ON CONFLICT … DO UPDATE`).

use serde_json::Value;

/// Where one kind of document lives.
pub struct DocTable {
    /// The API's kind name.
    pub kind: &'static str,
    /// The table.
    pub table: &'static str,
    /// Indexed columns and the JSON pointer each is read from.
    pub columns: &'static [(&'static str, &'static str)],
    /// Those of `columns` that are BIGINT (bound as text and cast, the same SQL on both backends).
    pub bigint: &'static [&'static str],
}

const TABLES: &[DocTable] = &[
    DocTable {
        kind: "meter",
        table: "meters",
        columns: &[("slug", "/slug")],
        bigint: &[],
    },
    DocTable {
        kind: "customer",
        table: "customers",
        columns: &[("key", "/key")],
        bigint: &[],
    },
    DocTable {
        kind: "feature",
        table: "features",
        columns: &[("key", "/key"), ("archived_at", "/archivedAt")],
        bigint: &[],
    },
    DocTable {
        kind: "entitlement",
        table: "entitlements",
        columns: &[
            ("feature_id", "/featureId"),
            ("customer_id", "/customerId"),
            ("subject_key", "/subjectKey"),
        ],
        bigint: &[],
    },
    DocTable {
        kind: "grant",
        table: "grants",
        columns: &[("entitlement_id", "/entitlementId")],
        bigint: &[],
    },
    DocTable {
        kind: "plan",
        table: "plans",
        columns: &[
            ("key", "/key"),
            ("version", "/version"),
            ("effective_from", "/effectiveFrom"),
            ("deleted_at", "/deletedAt"),
        ],
        bigint: &["version"],
    },
    DocTable {
        kind: "addon",
        table: "addons",
        columns: &[
            ("key", "/key"),
            ("version", "/version"),
            ("effective_from", "/effectiveFrom"),
            ("deleted_at", "/deletedAt"),
        ],
        bigint: &["version"],
    },
    DocTable {
        kind: "plan_addon",
        table: "plan_addons",
        columns: &[
            ("plan_id", "/planId"),
            ("addon_id", "/addonId"),
            ("deleted_at", "/deletedAt"),
        ],
        bigint: &[],
    },
    DocTable {
        kind: "subscription",
        table: "subscriptions",
        columns: &[
            ("customer_id", "/customerId"),
            ("active_from", "/activeFrom"),
            ("active_to", "/activeTo"),
            ("deleted_at", "/deletedAt"),
        ],
        bigint: &[],
    },
    DocTable {
        kind: "subscription_addon",
        table: "subscription_addons",
        columns: &[
            ("subscription_id", "/subscriptionId"),
            ("addon_id", "/addon/id"),
        ],
        bigint: &[],
    },
];

/// A statement and its parameters (all text or NULL).
pub struct Stmt {
    /// SQL with `$n` parameters.
    pub sql: String,
    /// Parameters in order.
    pub params: Vec<Option<String>>,
}

fn table(kind: &str) -> Option<&'static DocTable> {
    TABLES.iter().find(|t| t.kind == kind)
}

fn column_value(doc: &Value, pointer: &str) -> Option<String> {
    match doc.pointer(pointer)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The statements that store `doc` as `kind`/`id` (insert or replace), in order.
pub fn put(kind: &str, id: &str, doc: &Value) -> Vec<Stmt> {
    let text = doc.to_string();
    let Some(t) = table(kind) else {
        return vec![Stmt {
            sql: "INSERT INTO documents (kind, id, doc) VALUES ($1, $2, $3) \
                  ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc"
                .into(),
            params: vec![Some(kind.into()), Some(id.into()), Some(text)],
        }];
    };
    let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    let placeholders: Vec<String> = (2..names.len() + 3)
        .map(|i| match names.get(i - 2) {
            Some(name) if t.bigint.contains(name) => format!("CAST(CAST(${i} AS TEXT) AS BIGINT)"),
            _ => format!("${i}"),
        })
        .collect();
    let updates: Vec<String> = names
        .iter()
        .chain(std::iter::once(&"doc"))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let mut params = vec![Some(id.to_owned())];
    params.extend(t.columns.iter().map(|(_, p)| column_value(doc, p)));
    params.push(Some(text));
    let mut out = vec![Stmt {
        sql: format!(
            "INSERT INTO {} (id, {}, doc) VALUES ($1, {}) ON CONFLICT (id) DO UPDATE SET {}",
            t.table,
            names.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        ),
        params,
    }];
    if kind == "customer" {
        // The customer's subjects: its key and usageAttribution.subjectKeys, each owned once.
        out.push(Stmt {
            sql: "DELETE FROM customer_subjects WHERE customer_id = $1".into(),
            params: vec![Some(id.into())],
        });
        let mut subjects: Vec<String> = doc["usageAttribution"]["subjectKeys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        subjects.extend(doc["key"].as_str().map(str::to_owned));
        subjects.sort();
        subjects.dedup();
        for s in subjects {
            out.push(Stmt {
                sql: "INSERT INTO customer_subjects (subject, customer_id) VALUES ($1, $2)".into(),
                params: vec![Some(s), Some(id.into())],
            });
        }
    }
    out
}

/// The compare-and-set statement: stores `doc` as `kind`/`id` only if the stored document's text
/// is exactly `expected`, or, with `expected` `None`, only if there is none. Its row count (0 or 1)
/// says whether it was stored. One statement, so the database decides it atomically: on PostgreSQL
/// a concurrent `UPDATE` of the row waits for the first to commit and re-checks the `WHERE` against
/// the new text. Customers are refused (their subjects live in a second table).
pub fn swap(kind: &str, id: &str, expected: Option<&str>, doc: &Value) -> Result<Stmt, String> {
    if kind == "customer" {
        return Err("compare-and-set is not available for customers".into());
    }
    let text = doc.to_string();
    let Some(t) = table(kind) else {
        return Ok(match expected {
            None => Stmt {
                sql: "INSERT INTO documents (kind, id, doc) VALUES ($1, $2, $3) \
                      ON CONFLICT (kind, id) DO NOTHING"
                    .into(),
                params: vec![Some(kind.into()), Some(id.into()), Some(text)],
            },
            // Parameters in order of appearance: SQLite numbers `$n` by first appearance.
            Some(old) => Stmt {
                sql: "UPDATE documents SET doc = $1 WHERE kind = $2 AND id = $3 AND doc = $4"
                    .into(),
                params: vec![
                    Some(text),
                    Some(kind.into()),
                    Some(id.into()),
                    Some(old.into()),
                ],
            },
        });
    };
    let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    let values = t.columns.iter().map(|(_, p)| column_value(doc, p));
    Ok(match expected {
        None => {
            let mut params = vec![Some(id.to_owned())];
            params.extend(values);
            params.push(Some(text));
            let placeholders: Vec<String> = (2..names.len() + 3).map(|i| format!("${i}")).collect();
            Stmt {
                sql: format!(
                    "INSERT INTO {} (id, {}, doc) VALUES ($1, {}) ON CONFLICT (id) DO NOTHING",
                    t.table,
                    names.join(", "),
                    placeholders.join(", ")
                ),
                params,
            }
        }
        Some(old) => {
            // Parameters in order of appearance: SQLite numbers `$n` by first appearance.
            let sets: Vec<String> = names
                .iter()
                .chain(std::iter::once(&"doc"))
                .enumerate()
                .map(|(i, c)| format!("{c} = ${}", i + 1))
                .collect();
            let mut params: Vec<Option<String>> = values.collect();
            params.push(Some(text));
            let n = params.len();
            params.push(Some(id.to_owned()));
            params.push(Some(old.into()));
            Stmt {
                sql: format!(
                    "UPDATE {} SET {} WHERE id = ${} AND doc = ${}",
                    t.table,
                    sets.join(", "),
                    n + 1,
                    n + 2
                ),
                params,
            }
        }
    })
}

/// The statement that reads one document (`doc` column).
pub fn get(kind: &str, id: &str) -> Stmt {
    match table(kind) {
        Some(t) => Stmt {
            sql: format!("SELECT doc FROM {} WHERE id = $1", t.table),
            params: vec![Some(id.into())],
        },
        None => Stmt {
            sql: "SELECT doc FROM documents WHERE kind = $1 AND id = $2".into(),
            params: vec![Some(kind.into()), Some(id.into())],
        },
    }
}

/// The statement that lists every document of a kind in id order.
pub fn list(kind: &str) -> Stmt {
    match table(kind) {
        Some(t) => Stmt {
            sql: format!("SELECT doc FROM {} ORDER BY id", t.table),
            params: vec![],
        },
        None => Stmt {
            sql: "SELECT doc FROM documents WHERE kind = $1 ORDER BY id".into(),
            params: vec![Some(kind.into())],
        },
    }
}

/// The statement that lists the documents of a kind whose indexed `column` equals `value`, in id
/// order; `None` when the kind has no such column.
pub fn list_where(kind: &str, column: &str, value: &str) -> Option<Stmt> {
    let t = table(kind)?;
    t.columns.iter().find(|(c, _)| *c == column)?;
    Some(Stmt {
        sql: format!(
            "SELECT doc FROM {} WHERE {column} = $1 ORDER BY id",
            t.table
        ),
        params: vec![Some(value.into())],
    })
}

/// The statements that delete one document; the last one's row count says whether it existed.
pub fn delete(kind: &str, id: &str) -> Vec<Stmt> {
    match table(kind) {
        Some(t) => {
            let mut out = Vec::new();
            if kind == "customer" {
                out.push(Stmt {
                    sql: "DELETE FROM customer_subjects WHERE customer_id = $1".into(),
                    params: vec![Some(id.into())],
                });
            }
            out.push(Stmt {
                sql: format!("DELETE FROM {} WHERE id = $1", t.table),
                params: vec![Some(id.into())],
            });
            out
        }
        None => vec![Stmt {
            sql: "DELETE FROM documents WHERE kind = $1 AND id = $2".into(),
            params: vec![Some(kind.into()), Some(id.into())],
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn customers_own_their_key_and_subject_keys() {
        let stmts = put(
            "customer",
            "c1",
            &json!({"key": "acme", "usageAttribution": {"subjectKeys": ["s1", "acme"]}}),
        );
        assert!(
            stmts[0]
                .sql
                .starts_with("INSERT INTO customers (id, key, doc)")
        );
        assert_eq!(stmts[0].params[1].as_deref(), Some("acme"));
        let subjects: Vec<_> = stmts[2..]
            .iter()
            .map(|s| s.params[0].clone().unwrap())
            .collect();
        assert_eq!(subjects, ["acme", "s1"]);
    }

    #[test]
    fn compare_and_set_names_the_old_text() {
        let s = swap("clock", "billing", Some("{\"a\":1}"), &json!({"a": 2})).unwrap();
        assert!(s.sql.starts_with("UPDATE documents SET doc = $1"));
        assert_eq!(s.params[3].as_deref(), Some("{\"a\":1}"));
        let s = swap("clock", "billing", None, &json!({"a": 1})).unwrap();
        assert!(s.sql.ends_with("DO NOTHING"));
        let s = swap("grant", "g1", Some("old"), &json!({"entitlementId": "e1"})).unwrap();
        assert_eq!(
            s.sql,
            "UPDATE grants SET entitlement_id = $1, doc = $2 WHERE id = $3 AND doc = $4"
        );
        assert_eq!(s.params[0].as_deref(), Some("e1"));
        assert_eq!(s.params[2].as_deref(), Some("g1"));
        assert!(swap("customer", "c1", None, &json!({})).is_err());
    }

    #[test]
    fn unknown_kinds_go_to_documents() {
        let s = &put("widget", "s1", &json!({}))[0];
        assert!(s.sql.contains("documents"));
        assert_eq!(s.params[0].as_deref(), Some("widget"));
    }

    #[test]
    fn plan_versions_are_bigint_columns() {
        let s = &put("plan", "p1", &json!({"key": "pro", "version": 2}))[0];
        assert!(
            s.sql.starts_with(
                "INSERT INTO plans (id, key, version, effective_from, deleted_at, doc)"
            )
        );
        assert!(
            s.sql.contains("CAST(CAST($3 AS TEXT) AS BIGINT)"),
            "{}",
            s.sql
        );
        assert_eq!(s.params[2].as_deref(), Some("2"));
    }
}
