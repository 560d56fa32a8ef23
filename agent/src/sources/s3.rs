//! `[[sources.s3]]`: CloudEvents in S3 objects (AWS or any S3-compatible store), each object
//! read once.
//!
//! Every `interval` the bucket is listed under `prefix` (keys in order); an object not read
//! before is fetched, made into events, stored, and only then recorded as read in sled (key →
//! ETag), so a crash in between reads it again — with the same ids, which dedupe — and an agent
//! restarted later never reads it twice. With `start_after_last_key`, the last key read is kept
//! too and each listing starts after it (S3 `StartAfter`), so a bucket of years of objects costs
//! a listing of what is new, not of everything. `format` is `cloudevents-jsonl` (one CloudEvent a
//! line) or `cloudevents-json` (one array). An event keeps its own `id`; one without gets an id
//! derived from bucket, key and line. A line that is not a usable CloudEvent goes to the dead
//! letters (`GET /v1/dead-letters`) with `s3://bucket/key line N` and what is wrong, and the
//! rest of the object is stored. Credentials come from the usual AWS variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity, ECS or
//! instance metadata), as the `object_store` crate resolves them.

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};
use serde_json::Value;

use super::pull::{Pull, Stopped, derive_id, rfc3339, scalar_text};
use crate::buffer::StoredEvent;
use crate::config::{S3Format, S3Source, pull::duration};

/// Where the last key read is kept (with `start_after_last_key`).
const LAST_KEY: &str = "last-key";

/// A running S3 source.
pub struct S3 {
    config: S3Source,
    store: Arc<dyn ObjectStore>,
    interval: std::time::Duration,
    pull: Pull,
}

/// Why an input could not be made into an event.
struct Unusable {
    /// Where (`line 7`, `element 2`, or empty for the whole object).
    at: String,
    /// The raw input.
    raw: String,
    why: String,
}

impl S3 {
    /// A source from its (validated) settings; credentials and region from the environment.
    pub fn new(config: S3Source, pull: Pull) -> anyhow::Result<S3> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&config.bucket);
        if !config.region.is_empty() {
            b = b.with_region(&config.region);
        }
        if !config.endpoint.is_empty() {
            b = b
                .with_endpoint(&config.endpoint)
                .with_allow_http(config.endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().context("sources.s3: building the S3 client")?;
        let interval = duration("interval", &config.interval).map_err(anyhow::Error::msg)?;
        Ok(S3 {
            config,
            store: Arc::new(store),
            interval,
            pull,
        })
    }

    /// Lists and reads until the agent stops.
    pub async fn run(mut self) {
        tracing::info!(name = %self.pull.name, bucket = %self.config.bucket, prefix = %self.config.prefix, "S3 source started");
        loop {
            let started = Utc::now();
            match self.tick().await {
                Ok(()) => self.pull.tick_done(started),
                Err(Outcome::Stopped) => return,
                Err(Outcome::Failed(e)) => {
                    self.pull.errors(1);
                    tracing::warn!(name = %self.pull.name, error = %format!("{e:#}"), "S3 listing or read failed; trying again next interval");
                }
            }
            let next = started + chrono::TimeDelta::from_std(self.interval).unwrap_or_default();
            if self.pull.sleep_until(next).await.is_err() {
                return;
            }
        }
    }

    fn read_key(&self, key: &str) -> String {
        self.pull.key(&format!("object/{key}"))
    }

    /// One listing: every object not read yet, in key order.
    async fn tick(&mut self) -> Result<(), Outcome> {
        // object_store lists by path segments; a prefix that ends inside a segment is matched
        // on the keys afterwards.
        let dir = match self.config.prefix.rfind('/') {
            Some(i) => Some(ObjectPath::from(&self.config.prefix[..i])),
            None => None,
        };
        let after = match self.config.start_after_last_key {
            true => self
                .pull
                .intake
                .buffer
                .progress_get(&self.pull.key(LAST_KEY))
                .map_err(|e| Outcome::Failed(e.into()))?
                .map(|k| ObjectPath::from(String::from_utf8_lossy(&k).into_owned())),
            false => None,
        };
        let listing = match &after {
            Some(last) => self.store.list_with_offset(dir.as_ref(), last),
            None => self.store.list(dir.as_ref()),
        };
        let mut metas: Vec<ObjectMeta> = listing
            .try_filter(|m| {
                futures::future::ready(m.location.as_ref().starts_with(&self.config.prefix))
            })
            .try_collect()
            .await
            .map_err(|e| Outcome::Failed(e.into()))?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        for meta in metas {
            if self.pull.stopping() {
                return Err(Outcome::Stopped);
            }
            let key = meta.location.to_string();
            let seen = self
                .pull
                .intake
                .buffer
                .progress_get(&self.read_key(&key))
                .map_err(|e| Outcome::Failed(e.into()))?;
            if seen.is_some() {
                continue;
            }
            self.read_object(&meta).await?;
        }
        Ok(())
    }

    async fn read_object(&mut self, meta: &ObjectMeta) -> Result<(), Outcome> {
        let key = meta.location.to_string();
        let body = self
            .store
            .get(&meta.location)
            .await
            .map_err(|e| Outcome::Failed(e.into()))?
            .bytes()
            .await
            .map_err(|e| Outcome::Failed(e.into()))?;
        let (events, unusable) = self.parse(&key, meta.last_modified, &body);
        self.pull.store(&events).await?;
        for u in &unusable {
            let place = if u.at.is_empty() {
                format!("s3://{}/{key}", self.config.bucket)
            } else {
                format!("s3://{}/{key} {}", self.config.bucket, u.at)
            };
            let letter = StoredEvent {
                id: derive_id(&["s3", &self.config.bucket, &key, &u.at]),
                source: format!("s3://{}/{key}", self.config.bucket),
                ty: String::new(),
                subject: String::new(),
                time: String::new(),
                data: Value::String(u.raw.chars().take(65_536).collect()).to_string(),
                received_ms: Utc::now().timestamp_millis(),
            };
            let why = format!("{place}: {}", u.why);
            tracing::warn!(name = %self.pull.name, "{why}; sent to the dead letters");
            self.pull.errors(1);
            self.pull
                .intake
                .buffer
                .dead_letter_input(&letter, &why)
                .await
                .map_err(|e| Outcome::Failed(e.into()))?;
            self.pull.intake.metrics.dead_lettered.inc();
        }
        let etag = meta.e_tag.clone().unwrap_or_default();
        self.pull
            .intake
            .buffer
            .progress_put(&self.read_key(&key), etag.as_bytes())
            .await
            .map_err(|e| Outcome::Failed(e.into()))?;
        if self.config.start_after_last_key {
            // After the object's own mark: a crash in between lists it again, and skips it.
            self.pull
                .intake
                .buffer
                .progress_put(&self.pull.key(LAST_KEY), key.as_bytes())
                .await
                .map_err(|e| Outcome::Failed(e.into()))?;
        }
        tracing::debug!(name = %self.pull.name, key, events = events.len(), unusable = unusable.len(), "object read");
        Ok(())
    }

    /// The events of one object and the inputs that are not usable events.
    fn parse(
        &self,
        key: &str,
        modified: DateTime<Utc>,
        body: &[u8],
    ) -> (Vec<StoredEvent>, Vec<Unusable>) {
        let mut events = Vec::new();
        let mut unusable = Vec::new();
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(e) => {
                unusable.push(Unusable {
                    at: String::new(),
                    raw: String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned(),
                    why: format!("not UTF-8 text: {e}"),
                });
                return (events, unusable);
            }
        };
        let mut take = |at: String, raw: &str, value: Result<Value, String>| match value
            .and_then(|v| self.event(key, &at, modified, v))
        {
            Ok(e) => events.push(e),
            Err(why) => unusable.push(Unusable {
                at,
                raw: raw.to_owned(),
                why,
            }),
        };
        match self.config.format {
            S3Format::CloudeventsJsonl => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"));
                    take(format!("line {}", i + 1), line, v);
                }
            }
            S3Format::CloudeventsJson => match serde_json::from_str::<Vec<Value>>(text) {
                Ok(items) => {
                    for (i, v) in items.into_iter().enumerate() {
                        let raw = v.to_string();
                        take(format!("element {i}"), &raw, Ok(v));
                    }
                }
                Err(e) => unusable.push(Unusable {
                    at: String::new(),
                    raw: text.chars().take(4096).collect(),
                    why: format!("not a JSON array of CloudEvents (format cloudevents-json): {e}"),
                }),
            },
        }
        (events, unusable)
    }

    fn event(
        &self,
        key: &str,
        at: &str,
        modified: DateTime<Utc>,
        v: Value,
    ) -> Result<StoredEvent, String> {
        let Value::Object(mut o) = v else {
            return Err("not a JSON object (a CloudEvent)".into());
        };
        let field =
            |o: &serde_json::Map<String, Value>, name: &str| o.get(name).and_then(scalar_text);
        let ty = field(&o, "type").ok_or("no \"type\" (every event needs a type)")?;
        let subject = field(&o, "subject").ok_or("no \"subject\" (every event needs one)")?;
        let time = match o.get("time") {
            None | Some(Value::Null) => rfc3339(modified),
            Some(Value::String(t)) => DateTime::parse_from_rfc3339(t)
                .map(|_| t.clone())
                .map_err(|e| format!("\"time\" {t:?} is not RFC 3339: {e}"))?,
            Some(other) => return Err(format!("\"time\" {other} is not an RFC 3339 string")),
        };
        let id =
            field(&o, "id").unwrap_or_else(|| derive_id(&["s3", &self.config.bucket, key, at]));
        let source = field(&o, "source").unwrap_or_else(|| self.config.source.clone());
        let data = match o.remove("data") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(d) => d.to_string(),
        };
        Ok(StoredEvent {
            id,
            source,
            ty,
            subject,
            time,
            data,
            received_ms: Utc::now().timestamp_millis(),
        })
    }
}

/// How a listing ended early.
enum Outcome {
    Stopped,
    Failed(anyhow::Error),
}

impl From<Stopped> for Outcome {
    fn from(_: Stopped) -> Self {
        Outcome::Stopped
    }
}
