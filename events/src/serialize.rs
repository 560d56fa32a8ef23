//! Reading the JSON string that `kong.log.serialize()` returns, in every shape from Kong 3.4 to
//! 3.9+ (reference/kong-protocols.md §2.2, §2.3, §1.9).
//!
//! The parse borrows from the JSON text wherever it can ([`Cow`] falls back to an owned string
//! only for values with escapes such as `\/`). Header and query maps are read once into a
//! [`FieldMap`] of borrowed names and first values, searched by [`FieldMap::get`]. The `ai` tree
//! is kept as raw JSON and read by [`ai_usages`] whatever its shape.
//!
//! The same types are the typed entry that [`crate::meter::meter_into`] takes, so a caller that
//! saw the request itself (the proxy-wasm filter) builds a [`LogEntry`] directly — headers with
//! [`FieldMap::from_pairs`], usage it read with [`Ai::Read`] — instead of writing serialize JSON
//! to parse it back.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The parts of a serialized log entry that metering reads.
#[derive(Debug, Default, Deserialize)]
pub struct LogEntry<'a> {
    /// `request` (absent only in the stream subsystem).
    #[serde(borrow, default)]
    pub request: Option<Request<'a>>,
    /// `response`.
    #[serde(default)]
    pub response: Option<Response>,
    /// `upstream_status`: a string in Kong (`"200"`, or `"502, 200"` after retries).
    #[serde(borrow, default)]
    pub upstream_status: Option<StrOrNum<'a>>,
    /// `latencies` in ms.
    #[serde(default)]
    pub latencies: Option<Latencies>,
    /// The matched route.
    #[serde(borrow, default)]
    pub route: Option<Entity<'a>>,
    /// The matched service.
    #[serde(borrow, default)]
    pub service: Option<Service<'a>>,
    /// The authenticated consumer.
    #[serde(borrow, default)]
    pub consumer: Option<Consumer<'a>>,
    /// The credential used (`{id}` with key-auth, `{id, consumer_id}` with others).
    #[serde(borrow, default)]
    pub authenticated_entity: Option<Entity<'a>>,
    /// The client address.
    #[serde(borrow, default)]
    pub client_ip: Option<Cow<'a, str>>,
    /// When Kong started the request, ms since the epoch (may be a float).
    #[serde(default)]
    pub started_at: Option<f64>,
    /// `kong` or `upstream` (3.6+).
    #[serde(borrow, default)]
    pub source: Option<Cow<'a, str>>,
    /// Workspace name (3.7+).
    #[serde(borrow, default)]
    pub workspace_name: Option<Cow<'a, str>>,
    /// The AI Gateway's analytics, any shape.
    #[serde(borrow, default)]
    pub ai: Option<Ai<'a>>,
}

/// The `ai` tree: as Kong wrote it, or usage the caller read itself.
#[derive(Debug)]
pub enum Ai<'a> {
    /// The raw JSON of `ai`, read by [`ai_usages`] whatever its shape (what the parser makes).
    Raw(&'a RawValue),
    /// Usage records already read (a proxy-wasm filter reading the response body): used as
    /// given, except that records with no tokens at all are left out as [`ai_usages`] does.
    Read(Vec<AiUsage>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Ai<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(Ai::Raw)
    }
}

impl Ai<'_> {
    /// Every usage record with tokens: [`ai_usages`] of the raw tree, or the records read
    /// (borrowed when all of them count tokens).
    pub fn usages(&self) -> Cow<'_, [AiUsage]> {
        match self {
            Ai::Raw(raw) => Cow::Owned(ai_usages(Some(raw))),
            Ai::Read(read) if read.iter().all(AiUsage::has_tokens) => Cow::Borrowed(read),
            Ai::Read(read) => Cow::Owned(read.iter().filter(|u| u.has_tokens()).cloned().collect()),
        }
    }
}

/// `request`.
#[derive(Debug, Default, Deserialize)]
pub struct Request<'a> {
    /// Kong's request id (3.6+).
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// The path and query as received.
    #[serde(borrow, default)]
    pub uri: Option<Cow<'a, str>>,
    /// Full URL.
    #[serde(borrow, default)]
    pub url: Option<Cow<'a, str>>,
    /// HTTP method.
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    /// Request size in bytes.
    #[serde(default)]
    pub size: Option<f64>,
    /// Header map, values a string or an array of strings (lowercase names).
    #[serde(borrow, default)]
    pub headers: FieldMap<'a>,
    /// Query map, values a string, `true`, or an array.
    #[serde(borrow, default)]
    pub querystring: FieldMap<'a>,
}

/// `response`.
#[derive(Debug, Default, Deserialize)]
pub struct Response {
    /// Status sent to the client.
    #[serde(default)]
    pub status: Option<f64>,
    /// Response size in bytes.
    #[serde(default)]
    pub size: Option<f64>,
}

/// `latencies` (ms).
#[derive(Debug, Deserialize, Default)]
pub struct Latencies {
    /// Time spent in Kong.
    #[serde(default)]
    pub kong: Option<f64>,
    /// Time waiting for the upstream (-1 when none).
    #[serde(default)]
    pub proxy: Option<f64>,
    /// Whole request.
    #[serde(default)]
    pub request: Option<f64>,
    /// Time receiving the request body (3.7+).
    #[serde(default)]
    pub receive: Option<f64>,
}

/// A route or credential: id and name.
#[derive(Debug, Default, Deserialize)]
pub struct Entity<'a> {
    /// UUID.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// Name (routes).
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
}

/// `service`.
#[derive(Debug, Default, Deserialize)]
pub struct Service<'a> {
    /// UUID.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// Name.
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// Upstream port.
    #[serde(default)]
    pub port: Option<f64>,
    /// Upstream protocol.
    #[serde(borrow, default)]
    pub protocol: Option<Cow<'a, str>>,
}

/// `consumer`.
#[derive(Debug, Default, Deserialize)]
pub struct Consumer<'a> {
    /// UUID.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// Username.
    #[serde(borrow, default)]
    pub username: Option<Cow<'a, str>>,
    /// Custom id.
    #[serde(borrow, default)]
    pub custom_id: Option<Cow<'a, str>>,
}

/// A JSON value that Kong sends as a string in some versions and a number in others.
#[derive(Debug)]
pub enum StrOrNum<'a> {
    /// A number.
    Num(f64),
    /// A string.
    Str(Cow<'a, str>),
}

// By hand rather than `#[serde(untagged)]`, which buffers the value and builds an error for
// every variant that does not match: this field is in every request.
impl<'de: 'a, 'a> Deserialize<'de> for StrOrNum<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrNum<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrNum::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrNum::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StrOrNum::Str(Cow::Owned(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(StrOrNum::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StrOrNum::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StrOrNum::Num(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

impl StrOrNum<'_> {
    /// The integer it holds, taking the last of a comma list (`"502, 200"` → 200).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            StrOrNum::Num(n) => Some(*n as i64),
            StrOrNum::Str(s) => s.rsplit(',').next()?.trim().parse().ok(),
        }
    }
}

/// Parses a serialized log entry. `#[inline]`: the parser is instantiated in the caller's crate,
/// so the plugin's hot path is compiled as it was when this code lived in the plugin.
#[inline]
pub fn parse(json: &str) -> Result<LogEntry<'_>, serde_json::Error> {
    serde_json::from_str(json)
}

/// A header or query map: each name with its first value (`{"k": "v"}`, `{"k": ["v1","v2"]}`
/// → `v1`, or `{"flag": true}` for a bare query flag, read as `""`). Names and values borrow from
/// the JSON; `null` or a missing map reads as empty.
#[derive(Debug, Default)]
pub struct FieldMap<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> FieldMap<'a> {
    /// A map of `(name, value)` pairs in order (duplicates allowed: [`FieldMap::get`] takes the
    /// first), for a caller that has the headers or query itself.
    pub fn from_pairs(pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Self {
        FieldMap(pairs)
    }

    /// The first value of `name`, compared ASCII case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FieldMap<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FieldMap<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a header or query map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    if let FirstValue(Some(value)) = map.next_value()? {
                        fields.push((name, value));
                    }
                }
                Ok(FieldMap(fields))
            }
            // Kong's cjson writes an empty table as `{}`, but `[]` and `null` mean the same.
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FieldMap::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FieldMap::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// A map value: a string, an array whose first string is taken, or `true` (a bare flag).
struct FirstValue<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstValue<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array of strings or a flag")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FirstValue(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FirstValue(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut first = None;
                while let Some(FirstValue(v)) = seq.next_element::<FirstValue<'de>>()? {
                    first = first.or(v);
                }
                Ok(FirstValue(first))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(FirstValue(v.then_some(Cow::Borrowed(""))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FirstValue(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstValue(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(FirstValue(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(FirstValue(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(FirstValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// One AI plugin's analytics for one request, normalised across Kong versions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AiUsage {
    /// The key under `ai` (`proxy` in 3.9+, `ai-proxy` etc. in 3.7/3.8, empty for 3.6's flat shape).
    pub plugin_name: String,
    /// `meta.plugin_id`.
    pub plugin_id: Option<String>,
    /// `meta.provider_name`.
    pub provider: Option<String>,
    /// `meta.request_model`.
    pub request_model: Option<String>,
    /// `meta.response_model`.
    pub response_model: Option<String>,
    /// Prompt tokens (`prompt_tokens`, or 3.7's `prompt_token`).
    pub prompt_tokens: i64,
    /// Completion tokens (`completion_tokens`, or 3.7's `completion_token`).
    pub completion_tokens: i64,
    /// `total_tokens`, or prompt + completion.
    pub total_tokens: i64,
    /// `usage.cost` when Kong computed it.
    pub cost: Option<f64>,
    /// `meta.llm_latency` (ms).
    pub llm_latency_ms: Option<f64>,
    /// `cache.cache_status`.
    pub cache_status: Option<String>,
}

#[derive(Deserialize, Default)]
struct AiNode {
    #[serde(default)]
    meta: Option<AiMeta>,
    #[serde(default)]
    usage: Option<AiTokens>,
    #[serde(default)]
    cache: Option<AiCache>,
}

#[derive(Deserialize, Default)]
struct AiMeta {
    plugin_id: Option<String>,
    provider_name: Option<String>,
    request_model: Option<String>,
    response_model: Option<String>,
    llm_latency: Option<f64>,
}

#[derive(Deserialize, Default)]
struct AiTokens {
    #[serde(alias = "prompt_token")]
    prompt_tokens: Option<f64>,
    #[serde(alias = "completion_token")]
    completion_tokens: Option<f64>,
    total_tokens: Option<f64>,
    cost: Option<f64>,
}

#[derive(Deserialize, Default)]
struct AiCache {
    cache_status: Option<String>,
}

/// Every AI usage record in the `ai` tree: the 3.6 flat shape (`ai.usage`) and every child of `ai`
/// that has a `usage` key (3.7 `ai.<plugin>`, 3.8 `ai.<plugin>`, 3.9+ `ai.proxy`). Records with
/// no tokens at all are left out.
pub fn ai_usages(ai: Option<&RawValue>) -> Vec<AiUsage> {
    let Some(ai) = ai else { return Vec::new() };
    let Ok(tree) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(ai.get())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if tree.contains_key("usage")
        && let Ok(node) = serde_json::from_value::<AiNode>(serde_json::Value::Object(tree.clone()))
    {
        out.extend(normalise(String::new(), node));
    }
    for (name, child) in tree {
        if name == "usage" || name == "meta" || name == "payload" || name == "cache" {
            continue;
        }
        if child.get("usage").is_some()
            && let Ok(node) = serde_json::from_value::<AiNode>(child)
        {
            out.extend(normalise(name, node));
        }
    }
    out
}

impl AiUsage {
    /// Whether the record counts any token (records without are not usage).
    pub fn has_tokens(&self) -> bool {
        self.prompt_tokens != 0 || self.completion_tokens != 0 || self.total_tokens != 0
    }
}

fn normalise(plugin_name: String, node: AiNode) -> Option<AiUsage> {
    let usage = node.usage.unwrap_or_default();
    let meta = node.meta.unwrap_or_default();
    let prompt = usage.prompt_tokens.unwrap_or(0.0) as i64;
    let completion = usage.completion_tokens.unwrap_or(0.0) as i64;
    let total = usage
        .total_tokens
        .map(|t| t as i64)
        .unwrap_or(prompt + completion);
    Some(AiUsage {
        plugin_name,
        plugin_id: meta.plugin_id,
        provider: meta.provider_name,
        request_model: meta.request_model,
        response_model: meta.response_model,
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: total,
        cost: usage.cost,
        llm_latency_ms: meta.llm_latency,
        cache_status: node.cache.and_then(|c| c.cache_status),
    })
    .filter(AiUsage::has_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive_and_takes_the_first_of_many() {
        let map: FieldMap =
            serde_json::from_str(r#"{"x-tenant":["t1","t2"],"User-Agent":"curl\/8"}"#).unwrap();
        assert_eq!(map.get("X-Tenant"), Some("t1"));
        assert_eq!(map.get("user-agent"), Some("curl/8"));
        assert_eq!(map.get("missing"), None);
    }

    #[test]
    fn a_bare_query_flag_reads_as_empty_and_odd_values_are_skipped() {
        let map: FieldMap = serde_json::from_str(
            r#"{"debug":true,"off":false,"n":"1","obj":{"a":1},"num":5,"nil":null,"list":[1,"x"]}"#,
        )
        .unwrap();
        assert_eq!(map.get("debug"), Some(""));
        assert_eq!(map.get("off"), None);
        assert_eq!(map.get("n"), Some("1"));
        assert_eq!(map.get("obj"), None);
        assert_eq!(map.get("num"), None);
        assert_eq!(map.get("nil"), None);
        assert_eq!(map.get("list"), Some("x"));
        for empty in ["{}", "[]", "null"] {
            let map: FieldMap = serde_json::from_str(empty).unwrap();
            assert_eq!(map.get("x"), None);
        }
    }

    #[test]
    fn every_ai_shape_is_read() {
        let v36 = r#"{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15},
                      "meta":{"request_model":"gpt-4","response_model":"gpt-4-0613","provider_name":"openai"}}"#;
        let v37 = r#"{"ai-proxy":{"usage":{"prompt_token":10,"completion_token":5,"total_tokens":15},
                      "meta":{"request_model":"gpt-4","provider_name":"openai","plugin_id":"p1"}}}"#;
        let v38 = r#"{"ai-proxy-advanced":{"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.1},
                      "meta":{"request_model":"gpt-4","provider_name":"openai","llm_latency":120},
                      "cache":{"cache_status":"Hit"}}}"#;
        let v39 = r#"{"proxy":{"usage":{"prompt_tokens":10,"completion_tokens":5,"time_per_token":2.5},
                      "meta":{"plugin_id":"p9","provider_name":"anthropic","request_model":"claude"}}}"#;
        for (shape, name) in [
            (v36, ""),
            (v37, "ai-proxy"),
            (v38, "ai-proxy-advanced"),
            (v39, "proxy"),
        ] {
            let raw: &RawValue = serde_json::from_str(shape).unwrap();
            let got = ai_usages(Some(raw));
            assert_eq!(got.len(), 1, "{shape}");
            assert_eq!(got[0].plugin_name, name);
            assert_eq!((got[0].prompt_tokens, got[0].completion_tokens), (10, 5));
            assert_eq!(
                got[0].total_tokens, 15,
                "total defaults to prompt + completion"
            );
        }
    }

    #[test]
    fn upstream_status_after_retries_takes_the_last() {
        let s: StrOrNum = serde_json::from_str(r#""502, 200""#).unwrap();
        assert_eq!(s.as_int(), Some(200));
        let n: StrOrNum = serde_json::from_str("200").unwrap();
        assert_eq!(n.as_int(), Some(200));
        let escaped: StrOrNum = serde_json::from_str(r#""\u0032""#).unwrap();
        assert_eq!(escaped.as_int(), Some(2));
        assert!(serde_json::from_str::<StrOrNum>("[1]").is_err());
    }
}
