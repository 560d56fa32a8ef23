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
    DocTable {
        kind: "notification_channel",
        table: "notification_channels",
        columns: &[("deleted_at", "/deletedAt")],
        bigint: &[],
    },
    DocTable {
        kind: "notification_rule",
        table: "notification_rules",
        columns: &[("deleted_at", "/deletedAt")],
        bigint: &[],
    },
    DocTable {
        kind: "billing_profile",
        table: "billing_profiles",
        columns: &[("is_default", "/default"), ("deleted_at", "/deletedAt")],
        bigint: &[],
    },
    DocTable {
        kind: "billing_override",
        table: "billing_customer_overrides",
        columns: &[("profile_id", "/billingProfileId")],
        bigint: &[],
    },
    DocTable {
        kind: "app",
        table: "apps",
        columns: &[("type", "/type"), ("deleted_at", "/deletedAt")],
        bigint: &[],
    },
    DocTable {
        kind: "invoice",
        table: "invoices",
        columns: &[
            ("customer_id", "/customer/id"),
            ("currency", "/currency"),
            ("status", "/status"),
            ("gathering_key", "/gatheringKey"),
            ("next_action_at", "/nextActionAt"),
        ],
        bigint: &[],
    },
];

/// A statement and its parameters (all text or NULL). Number the `$n` placeholders in the order
/// they first appear in the text: SQLite takes `$n` as a name and binds names in order of
/// appearance, PostgreSQL by number — the two agree only then.
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
    out.extend(due_stmts(kind, id, doc, None));
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

/// The instants (Unix ms) a subscription or add-on document says something may change at, and the
/// subscription they are for: a subscription's start, end, phase starts and item edit bounds; an
/// add-on's quantity changes. `None` for other kinds (and deleted subscriptions).
fn due_of(kind: &str, id: &str, doc: &Value) -> Option<(String, Vec<i64>)> {
    let ms = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
    };
    let mut out = Vec::new();
    let subscription = match kind {
        "subscription" => {
            if !doc["deletedAt"].is_null() {
                return Some((id.to_owned(), out));
            }
            out.extend(ms(&doc["activeFrom"]));
            out.extend(ms(&doc["activeTo"]));
            for phase in doc["phases"].as_array().into_iter().flatten() {
                out.extend(ms(&phase["activeFrom"]));
                for item in phase["items"].as_array().into_iter().flatten() {
                    out.extend(ms(&item["activeFromOverride"]));
                    out.extend(ms(&item["activeToOverride"]));
                }
            }
            id.to_owned()
        }
        "subscription_addon" => {
            for q in doc["timeline"].as_array().into_iter().flatten() {
                out.extend(ms(&q["activeFrom"]));
            }
            doc["subscriptionId"].as_str()?.to_owned()
        }
        _ => return None,
    };
    out.sort_unstable();
    out.dedup();
    Some((subscription, out))
}

/// The statements that make `subscription_due` hold `doc`'s instants for owner `id`, each run
/// only if `guard` (SQL over `$n` parameters that follow) holds — the state a compare-and-set in
/// the same transaction expects — with its parameters.
fn due_stmts(
    kind: &str,
    id: &str,
    doc: &Value,
    guard: Option<(&str, Vec<Option<String>>)>,
) -> Vec<Stmt> {
    let Some((subscription, instants)) = due_of(kind, id, doc) else {
        return Vec::new();
    };
    let (cond, cond_params) = match &guard {
        Some((sql, params)) => (format!(" AND {sql}"), params.clone()),
        None => (String::new(), Vec::new()),
    };
    // Parameters in order of appearance: SQLite numbers `$n` by first appearance.
    let shift = |sql: &str, by: usize| {
        let mut out = sql.to_owned();
        for n in (1..=cond_params.len()).rev() {
            out = out.replace(&format!("${n}"), &format!("${}", n + by));
        }
        out
    };
    let mut params = vec![Some(id.to_owned())];
    params.extend(cond_params.clone());
    let mut out = vec![Stmt {
        sql: format!(
            "DELETE FROM subscription_due WHERE owner_id = $1{}",
            shift(&cond, 1)
        ),
        params,
    }];
    for at in instants {
        let mut params = vec![
            Some(id.to_owned()),
            Some(subscription.clone()),
            Some(at.to_string()),
        ];
        params.extend(cond_params.clone());
        out.push(Stmt {
            sql: format!(
                "INSERT INTO subscription_due (owner_id, subscription_id, at_ms) \
                 SELECT $1, $2, CAST(CAST($3 AS TEXT) AS BIGINT) WHERE TRUE{} \
                 ON CONFLICT (owner_id, at_ms) DO NOTHING",
                shift(&cond, 3)
            ),
            params,
        });
    }
    out
}

/// [`swap`] with what must change with the document in the same transaction: a subscription's
/// or add-on's due instants, written after the swap and only where the document now is the new
/// text (so a swap that lost to a concurrent one changes nothing), then a statement that touches
/// the row only if the document is the new text — the transaction's row count, like the swap's,
/// says whether the value was stored.
pub fn swap_all(
    kind: &str,
    id: &str,
    expected: Option<&str>,
    doc: &Value,
) -> Result<Vec<Stmt>, String> {
    let first = swap(kind, id, expected, doc)?;
    let Some(t) = table(kind) else {
        return Ok(vec![first]);
    };
    let text = doc.to_string();
    let due = due_stmts(
        kind,
        id,
        doc,
        Some((
            &format!(
                "EXISTS (SELECT 1 FROM {} WHERE id = $1 AND doc = $2)",
                t.table
            ),
            vec![Some(id.to_owned()), Some(text.clone())],
        )),
    );
    if due.is_empty() {
        return Ok(vec![first]);
    }
    let mut out = vec![first];
    out.extend(due);
    out.push(Stmt {
        sql: format!(
            "UPDATE {} SET doc = doc WHERE id = $1 AND doc = $2",
            t.table
        ),
        params: vec![Some(id.to_owned()), Some(text)],
    });
    Ok(out)
}

/// The statement that lists the subscriptions with something due in `(after_ms, until_ms]`.
pub fn due_between(after_ms: i64, until_ms: i64) -> Stmt {
    Stmt {
        sql: "SELECT DISTINCT subscription_id FROM subscription_due \
              WHERE at_ms > CAST(CAST($1 AS TEXT) AS BIGINT) \
              AND at_ms <= CAST(CAST($2 AS TEXT) AS BIGINT) ORDER BY subscription_id"
            .into(),
        params: vec![Some(after_ms.to_string()), Some(until_ms.to_string())],
    }
}

/// The compare-and-set statement: stores `doc` as `kind`/`id` only if the stored document's text
/// is exactly `expected`, or, with `expected` `None`, only if there is none. Its row count (0 or 1)
/// says whether it was stored. One statement, so the database decides it atomically: on PostgreSQL
/// a concurrent `UPDATE` of the row waits for the first to commit and re-checks the `WHERE` against
/// the new text. Customers are refused (their subjects live in a second table).
pub fn swap(kind: &str, id: &str, expected: Option<&str>, doc: &Value) -> Result<Stmt, String> {
    let values = table(kind)
        .map(|t| {
            t.columns
                .iter()
                .map(|(_, p)| column_value(doc, p))
                .collect()
        })
        .unwrap_or_default();
    swap_stmt(kind, id, expected, doc.to_string(), values)
}

/// [`swap`] of a document given as its JSON text (as `serde_json::to_string` of a typed value
/// writes it, without building a `Value` first): the indexed columns are read from the text.
pub fn swap_text(
    kind: &str,
    id: &str,
    expected: Option<&str>,
    text: String,
) -> Result<Stmt, String> {
    let values = match table(kind) {
        Some(t) => columns_of_text(&text, t.columns)?,
        None => Vec::new(),
    };
    swap_stmt(kind, id, expected, text, values)
}

/// The indexed columns' values (as [`column_value`] reads them) from a document's JSON text,
/// its top level parsed once without copying the values.
fn columns_of_text(text: &str, columns: &[(&str, &str)]) -> Result<Vec<Option<String>>, String> {
    use serde_json::value::RawValue;
    type Fields<'a> = std::collections::HashMap<String, &'a RawValue>;
    let top: Fields<'_> =
        serde_json::from_str(text).map_err(|e| format!("document is not a JSON object: {e}"))?;
    let leaf = |raw: &RawValue| -> Option<String> {
        match raw.get() {
            "null" => None,
            s if s.starts_with('"') => serde_json::from_str::<String>(s).ok(),
            s => Some(s.to_owned()),
        }
    };
    Ok(columns
        .iter()
        .map(|(_, pointer)| {
            let mut keys = pointer.split('/').skip(1);
            let mut cur: &RawValue = top.get(keys.next()?)?;
            for k in keys {
                let fields: Fields<'_> = serde_json::from_str(cur.get()).ok()?;
                cur = fields.get(k)?;
            }
            leaf(cur)
        })
        .collect())
}

/// The compare-and-set statement of [`swap`] for a document's `text` and its indexed columns'
/// `values`.
fn swap_stmt(
    kind: &str,
    id: &str,
    expected: Option<&str>,
    text: String,
    values: Vec<Option<String>>,
) -> Result<Stmt, String> {
    if kind == "customer" {
        return Err("compare-and-set is not available for customers".into());
    }
    let values = values.into_iter();
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

/// The statement that lists the documents of a kind whose indexed `column` is one of `values`,
/// in id order; `None` when the kind has no such column. `values` should be at most a few
/// thousand (one placeholder each).
pub fn list_where_in(kind: &str, column: &str, values: &[String]) -> Option<Stmt> {
    let t = table(kind)?;
    t.columns.iter().find(|(c, _)| *c == column)?;
    let marks: Vec<String> = (1..=values.len()).map(|i| format!("${i}")).collect();
    Some(Stmt {
        sql: format!(
            "SELECT doc FROM {} WHERE {column} IN ({}) ORDER BY id",
            t.table,
            if marks.is_empty() {
                "NULL".to_owned()
            } else {
                marks.join(", ")
            }
        ),
        params: values.iter().map(|v| Some(v.clone())).collect(),
    })
}

/// The statement that reads the documents of a kind with the given ids (those that exist, in
/// id order).
pub fn get_many(kind: &str, ids: &[String]) -> Stmt {
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let set = if marks.is_empty() {
        "NULL".to_owned()
    } else {
        marks.join(", ")
    };
    match table(kind) {
        Some(t) => Stmt {
            sql: format!(
                "SELECT doc FROM {} WHERE id IN ({set}) ORDER BY id",
                t.table
            ),
            params: ids.iter().map(|v| Some(v.clone())).collect(),
        },
        None => {
            let mut params: Vec<Option<String>> = ids.iter().map(|v| Some(v.clone())).collect();
            params.push(Some(kind.into()));
            Stmt {
                sql: format!(
                    "SELECT doc FROM documents WHERE id IN ({set}) AND kind = ${} ORDER BY id",
                    ids.len() + 1
                ),
                params,
            }
        }
    }
}

/// The statement that lists invoices whose next action falls due at or before `until` (RFC 3339
/// text with milliseconds, the form `nextActionAt` is stored in), earliest first.
pub fn invoices_due(until: &str, limit: usize) -> Stmt {
    Stmt {
        sql: format!(
            "SELECT doc FROM invoices WHERE next_action_at IS NOT NULL AND next_action_at <= $1 \
             ORDER BY next_action_at, id LIMIT {limit}"
        ),
        params: vec![Some(until.into())],
    }
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
            if kind == "subscription" || kind == "subscription_addon" {
                out.push(Stmt {
                    sql: "DELETE FROM subscription_due WHERE owner_id = $1".into(),
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
    fn a_swap_from_text_binds_what_a_swap_from_a_value_binds() {
        let doc = json!({"id": "i1", "customer": {"id": "c\"1", "key": "k"}, "currency": "USD",
            "status": "paid", "gatheringKey": null, "nextActionAt": "2026-01-01T00:00:00.000Z",
            "lines": [{"status": "x"}], "n": 3});
        for expected in [None, Some("old")] {
            let from_value = swap("invoice", "i1", expected, &doc).unwrap();
            let text = serde_json::to_string(&doc).unwrap();
            let from_text = swap_text("invoice", "i1", expected, text).unwrap();
            assert_eq!(from_value.sql, from_text.sql);
            assert_eq!(from_value.params, from_text.params);
        }
        assert!(swap_text("invoice", "i1", None, "[1]".into()).is_err());
    }

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
    fn subscriptions_write_their_due_instants_with_them() {
        let doc = json!({"customerId": "c1", "activeFrom": "2026-01-01T00:00:00Z", "activeTo": null,
            "phases": [{"activeFrom": "2026-01-01T00:00:00Z", "items": []},
                       {"activeFrom": "2026-01-15T00:00:00Z",
                        "items": [{"activeToOverride": "2026-01-20T00:00:00Z"}]}]});
        let stmts = put("subscription", "s1", &doc);
        let due: Vec<_> = stmts[2..]
            .iter()
            .map(|s| s.params[2].clone().unwrap())
            .collect();
        assert_eq!(due, ["1767225600000", "1768435200000", "1768867200000"]);
        let cas = swap_all("subscription", "s1", Some("old"), &doc).unwrap();
        assert!(
            cas[0].sql.starts_with("UPDATE subscriptions SET"),
            "the swap first"
        );
        assert!(
            cas[1]
                .sql
                .ends_with("AND EXISTS (SELECT 1 FROM subscriptions WHERE id = $2 AND doc = $3)"),
            "{}",
            cas[1].sql
        );
        let text = doc.to_string();
        assert_eq!(
            cas[2].params[4].as_deref(),
            Some(text.as_str()),
            "only if it won"
        );
        assert!(
            cas[2].sql.contains("WHERE id = $4 AND doc = $5"),
            "{}",
            cas[2].sql
        );
        assert_eq!(
            cas.last().unwrap().sql,
            "UPDATE subscriptions SET doc = doc WHERE id = $1 AND doc = $2",
            "the row count says whether it won"
        );
        let addon =
            json!({"subscriptionId": "s1", "timeline": [{"activeFrom": "2026-02-01T00:00:00Z"}]});
        let stmts = put("subscription_addon", "a1", &addon);
        assert_eq!(
            stmts[2].params[1].as_deref(),
            Some("s1"),
            "an add-on's instants are its subscription's"
        );
        assert!(put("grant", "g1", &json!({})).len() == 1);
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
