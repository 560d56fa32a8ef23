//! OpenMeter's `FilterString` (`advancedMeterGroupByFilters` on meter queries and features):
//! the JSON shape, its validation (one operator per filter object, no empty values, `$and` /
//! `$or` nesting at most [`MAX_DEPTH`] deep) and matching a group-by value against it.
//!
//! Operators as in OpenMeter's v1 spec: `$eq $ne $in $nin $like $nlike $ilike $nilike $gt $gte
//! $lt $lte $and $or`. `$like` patterns are SQL `LIKE` patterns (`%` any run, `_` one character,
//! `\` escapes); `$ilike` ignores case; `$gt`…`$lte` compare strings. A group-by value an event
//! does not have compares as the empty string (as ClickHouse's `JSON_VALUE` yields for OpenMeter).

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Deepest `$and` / `$or` nesting accepted.
pub const MAX_DEPTH: usize = 8;

/// A filter on a string value (`FilterString`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterString {
    /// Equal to.
    #[serde(rename = "$eq", default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<String>,
    /// Not equal to.
    #[serde(rename = "$ne", default, skip_serializing_if = "Option::is_none")]
    pub ne: Option<String>,
    /// One of.
    #[serde(rename = "$in", default, skip_serializing_if = "Option::is_none")]
    pub r#in: Option<Vec<String>>,
    /// None of.
    #[serde(rename = "$nin", default, skip_serializing_if = "Option::is_none")]
    pub nin: Option<Vec<String>>,
    /// Matches a `LIKE` pattern.
    #[serde(rename = "$like", default, skip_serializing_if = "Option::is_none")]
    pub like: Option<String>,
    /// Does not match a `LIKE` pattern.
    #[serde(rename = "$nlike", default, skip_serializing_if = "Option::is_none")]
    pub nlike: Option<String>,
    /// Matches a `LIKE` pattern, ignoring case.
    #[serde(rename = "$ilike", default, skip_serializing_if = "Option::is_none")]
    pub ilike: Option<String>,
    /// Does not match a `LIKE` pattern, ignoring case.
    #[serde(rename = "$nilike", default, skip_serializing_if = "Option::is_none")]
    pub nilike: Option<String>,
    /// Greater than.
    #[serde(rename = "$gt", default, skip_serializing_if = "Option::is_none")]
    pub gt: Option<String>,
    /// Greater than or equal to.
    #[serde(rename = "$gte", default, skip_serializing_if = "Option::is_none")]
    pub gte: Option<String>,
    /// Less than.
    #[serde(rename = "$lt", default, skip_serializing_if = "Option::is_none")]
    pub lt: Option<String>,
    /// Less than or equal to.
    #[serde(rename = "$lte", default, skip_serializing_if = "Option::is_none")]
    pub lte: Option<String>,
    /// All of.
    #[serde(rename = "$and", default, skip_serializing_if = "Option::is_none")]
    pub and: Option<Vec<FilterString>>,
    /// Any of.
    #[serde(rename = "$or", default, skip_serializing_if = "Option::is_none")]
    pub or: Option<Vec<FilterString>>,
}

/// A validated filter, ready to match (patterns compiled once).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// No operator: matches everything.
    Any,
    /// `$eq`.
    Eq(String),
    /// `$ne`.
    Ne(String),
    /// `$in`.
    In(Vec<String>),
    /// `$nin`.
    Nin(Vec<String>),
    /// `$like` / `$ilike` (the regex carries the case rule).
    Like(Regex),
    /// `$nlike` / `$nilike`.
    NotLike(Regex),
    /// `$gt`.
    Gt(String),
    /// `$gte`.
    Gte(String),
    /// `$lt`.
    Lt(String),
    /// `$lte`.
    Lte(String),
    /// `$and`.
    And(Vec<Matcher>),
    /// `$or`.
    Or(Vec<Matcher>),
}

impl FilterString {
    fn operators(&self) -> Vec<&'static str> {
        let mut ops = Vec::new();
        let mut set = |on: bool, name| {
            if on {
                ops.push(name)
            }
        };
        set(self.eq.is_some(), "$eq");
        set(self.ne.is_some(), "$ne");
        set(self.r#in.is_some(), "$in");
        set(self.nin.is_some(), "$nin");
        set(self.like.is_some(), "$like");
        set(self.nlike.is_some(), "$nlike");
        set(self.ilike.is_some(), "$ilike");
        set(self.nilike.is_some(), "$nilike");
        set(self.gt.is_some(), "$gt");
        set(self.gte.is_some(), "$gte");
        set(self.lt.is_some(), "$lt");
        set(self.lte.is_some(), "$lte");
        set(self.and.is_some(), "$and");
        set(self.or.is_some(), "$or");
        ops
    }

    /// Validates and compiles; the error says what is wrong (the caller prefixes the field).
    pub fn compile(&self) -> Result<Matcher, String> {
        self.compile_at(0)
    }

    fn compile_at(&self, depth: usize) -> Result<Matcher, String> {
        let ops = self.operators();
        if ops.len() > 1 {
            return Err(format!(
                "one operator per filter object, found {} (combine them with $and / $or)",
                ops.join(", ")
            ));
        }
        let nonempty = |op: &str, v: &String| {
            if v.is_empty() {
                Err(format!("{op}: the value must not be empty"))
            } else {
                Ok(v.clone())
            }
        };
        let list = |op: &str, v: &Vec<String>| {
            if v.iter().any(String::is_empty) {
                Err(format!("{op}: values must not be empty"))
            } else {
                Ok(v.clone())
            }
        };
        let nested = |op: &str, v: &Vec<FilterString>| -> Result<Vec<Matcher>, String> {
            if depth + 1 >= MAX_DEPTH {
                return Err(format!(
                    "{op}: filters nest at most {MAX_DEPTH} levels deep"
                ));
            }
            if v.is_empty() {
                return Err(format!("{op}: needs at least one filter"));
            }
            v.iter()
                .enumerate()
                .map(|(i, f)| {
                    f.compile_at(depth + 1)
                        .map_err(|e| format!("{op}[{i}].{e}"))
                })
                .collect()
        };
        Ok(if let Some(v) = &self.eq {
            Matcher::Eq(nonempty("$eq", v)?)
        } else if let Some(v) = &self.ne {
            Matcher::Ne(nonempty("$ne", v)?)
        } else if let Some(v) = &self.r#in {
            Matcher::In(list("$in", v)?)
        } else if let Some(v) = &self.nin {
            Matcher::Nin(list("$nin", v)?)
        } else if let Some(v) = &self.like {
            Matcher::Like(like_regex("$like", &nonempty("$like", v)?, false)?)
        } else if let Some(v) = &self.nlike {
            Matcher::NotLike(like_regex("$nlike", &nonempty("$nlike", v)?, false)?)
        } else if let Some(v) = &self.ilike {
            Matcher::Like(like_regex("$ilike", &nonempty("$ilike", v)?, true)?)
        } else if let Some(v) = &self.nilike {
            Matcher::NotLike(like_regex("$nilike", &nonempty("$nilike", v)?, true)?)
        } else if let Some(v) = &self.gt {
            Matcher::Gt(nonempty("$gt", v)?)
        } else if let Some(v) = &self.gte {
            Matcher::Gte(nonempty("$gte", v)?)
        } else if let Some(v) = &self.lt {
            Matcher::Lt(nonempty("$lt", v)?)
        } else if let Some(v) = &self.lte {
            Matcher::Lte(nonempty("$lte", v)?)
        } else if let Some(v) = &self.and {
            Matcher::And(nested("$and", v)?)
        } else if let Some(v) = &self.or {
            Matcher::Or(nested("$or", v)?)
        } else {
            Matcher::Any
        })
    }
}

/// An anchored regex for a SQL `LIKE` pattern.
fn like_regex(op: &str, pattern: &str, ignore_case: bool) -> Result<Regex, String> {
    let mut re = String::from(if ignore_case { "(?is)^" } else { "(?s)^" });
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            '\\' => match chars.next() {
                Some(escaped) => re.push_str(&regex::escape(&escaped.to_string())),
                None => {
                    return Err(format!(
                        "{op}: pattern {pattern:?} ends with an escape (\\)"
                    ));
                }
            },
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| format!("{op}: pattern {pattern:?}: {e}"))
}

impl Matcher {
    /// Whether `value` (`None`: the event has no such group-by value) passes.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match self {
            Matcher::Any => true,
            Matcher::Eq(x) => v == x,
            Matcher::Ne(x) => v != x,
            Matcher::In(xs) => xs.iter().any(|x| x == v),
            Matcher::Nin(xs) => !xs.iter().any(|x| x == v),
            Matcher::Like(re) => re.is_match(v),
            Matcher::NotLike(re) => !re.is_match(v),
            Matcher::Gt(x) => v > x.as_str(),
            Matcher::Gte(x) => v >= x.as_str(),
            Matcher::Lt(x) => v < x.as_str(),
            Matcher::Lte(x) => v <= x.as_str(),
            Matcher::And(ms) => ms.iter().all(|m| m.matches(value)),
            Matcher::Or(ms) => ms.iter().any(|m| m.matches(value)),
        }
    }
}

/// Filters per group-by key, compiled.
pub type GroupFilters = BTreeMap<String, Matcher>;

/// Compiles `filters`, checking each key is one of `group_by`; errors name
/// `field.key.operator`.
pub fn compile_group_filters<'a>(
    field: &str,
    filters: &BTreeMap<String, FilterString>,
    mut is_group_by: impl FnMut(&str) -> bool + 'a,
) -> Result<GroupFilters, String> {
    filters
        .iter()
        .map(|(k, f)| {
            if !is_group_by(k) {
                return Err(format!("{field}.{k}: not a group-by of the meter"));
            }
            f.compile()
                .map(|m| (k.clone(), m))
                .map_err(|e| format!("{field}.{k}.{e}"))
        })
        .collect()
}

/// Whether a usage row's group-by values pass every filter.
pub fn group_passes(filters: &GroupFilters, group: &BTreeMap<String, String>) -> bool {
    filters
        .iter()
        .all(|(k, m)| m.matches(group.get(k).map(String::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(json: &str) -> Result<Matcher, String> {
        serde_json::from_str::<FilterString>(json)
            .map_err(|e| e.to_string())?
            .compile()
    }

    #[test]
    fn operators_match_as_documented() {
        let m = f(r#"{"$in": ["gpt-4", "gpt-4o"]}"#).unwrap();
        assert!(m.matches(Some("gpt-4o")) && !m.matches(Some("gpt-3")) && !m.matches(None));
        let m = f(r#"{"$nin": ["a"]}"#).unwrap();
        assert!(m.matches(Some("b")) && m.matches(None) && !m.matches(Some("a")));
        let m = f(r#"{"$like": "gpt-4%"}"#).unwrap();
        assert!(
            m.matches(Some("gpt-4o")) && m.matches(Some("gpt-4")) && !m.matches(Some("GPT-4o"))
        );
        let m = f(r#"{"$ilike": "GPT\\_4_"}"#).unwrap();
        assert!(m.matches(Some("gpt_4o")) && !m.matches(Some("gpt-4o")));
        let m = f(r#"{"$nilike": "%mini%"}"#).unwrap();
        assert!(m.matches(Some("gpt-4o")) && !m.matches(Some("GPT-4o-MINI")));
        let m = f(r#"{"$and": [{"$gte": "b"}, {"$lt": "d"}]}"#).unwrap();
        assert!(m.matches(Some("b")) && m.matches(Some("cz")) && !m.matches(Some("d")));
        let m = f(r#"{"$or": [{"$eq": "x"}, {"$ne": "y"}]}"#).unwrap();
        assert!(m.matches(Some("x")) && m.matches(Some("z")) && !m.matches(Some("y")));
        assert!(f("{}").unwrap().matches(None));
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        assert!(
            f(r#"{"$eq": "a", "$ne": "b"}"#)
                .unwrap_err()
                .contains("$eq, $ne")
        );
        assert!(f(r#"{"$eq": ""}"#).unwrap_err().contains("$eq"));
        assert!(f(r#"{"$in": ["a", ""]}"#).unwrap_err().contains("$in"));
        assert!(f(r#"{"$regex": "a"}"#).unwrap_err().contains("$regex"));
        assert!(f(r#"{"$or": []}"#).unwrap_err().contains("$or"));
        assert!(
            f(r#"{"$and": [{"$eq": "a", "$gt": "b"}]}"#)
                .unwrap_err()
                .contains("$and[0]")
        );
        let mut deep = String::from(r#"{"$eq": "a"}"#);
        for _ in 0..MAX_DEPTH {
            deep = format!(r#"{{"$and": [{deep}]}}"#);
        }
        assert!(f(&deep).unwrap_err().contains("nest"));
    }
}
