//! Catalog as code: a YAML file of features, plans and add-ons (the API's own JSON shapes) applied
//! to a running billing service, the way decK applies Kong routes — `tollgate-billing catalog
//! apply FILE [--publish]` and `tollgate-billing catalog dump`.
//!
//! Applying is idempotent and says what it did per item: `created`, `new draft vN`, `updated
//! draft vN` (each followed by the fields that differ, `path: old → new`), `published vN`,
//! `unchanged`. A plan or add-on is compared with the stored version
//! it would replace (its draft, else its active version) after both went through the same
//! typed model, so defaults the server fills in never count as a change. Features cannot change
//! once created (OpenMeter's rule): a differing one is reported and left alone. `planAddons`
//! offer an add-on's active version with a plan's newest version (draft, else active).

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::model::{Phase, ProRatingConfig, RateCard};

/// The YAML file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Features (`key`, `name`, `meterSlug`, `meterGroupByFilters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureSpec>,
    /// Add-ons, as `POST /api/v1/addons` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addons: Vec<AddonSpec>,
    /// Plans, as `POST /api/v1/plans` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<PlanSpec>,
    /// Add-ons offered with plans (on each plan's newest version).
    #[serde(default, rename = "planAddons", skip_serializing_if = "Vec::is_empty")]
    pub plan_addons: Vec<PlanAddonSpec>,
}

/// An add-on offered with a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanAddonSpec {
    /// The plan's key.
    pub plan: String,
    /// The add-on's key (its active version is offered).
    pub addon: String,
    /// The plan phase from which it can be bought.
    pub from_plan_phase: String,
    /// Most instances (multiple-instance add-ons only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_quantity: Option<i64>,
}

/// A feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSpec {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// The meter it counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_slug: Option<String>,
    /// Group-by filters on that meter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_group_by_filters: Option<BTreeMap<String, String>>,
}

/// A plan's content: what a version is compared on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// ISO 4217.
    #[serde(default = "usd")]
    pub currency: String,
    /// ISO 8601.
    pub billing_cadence: String,
    /// Proration.
    #[serde(default)]
    pub pro_rating_config: ProRatingConfig,
    /// Settlement.
    #[serde(default = "settlement")]
    pub settlement_mode: String,
    /// Phases.
    pub phases: Vec<Phase>,
}

/// An add-on's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddonSpec {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// ISO 4217.
    #[serde(default = "usd")]
    pub currency: String,
    /// `single` or `multiple`.
    pub instance_type: String,
    /// Rate cards.
    #[serde(default)]
    pub rate_cards: Vec<RateCard>,
}

fn usd() -> String {
    "USD".into()
}

fn settlement() -> String {
    "credit_then_invoice".into()
}

/// A running billing service.
pub struct Remote {
    base: String,
    http: reqwest::Client,
}

impl Remote {
    /// `base` like `http://127.0.0.1:8888`; `token` sent as Bearer when given.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Remote> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().context("token")?,
            );
        }
        Ok(Remote {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()?,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: is tollgate-billing running there?"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let mut msg = format!(
                "{method} {path}: {status}: {}",
                value["detail"].as_str().unwrap_or(&text)
            );
            for e in value["extensions"]["validationErrors"]
                .as_array()
                .into_iter()
                .flatten()
            {
                msg.push_str(&format!(
                    "\n  {} [{}]: {}",
                    e["field"].as_str().unwrap_or("?"),
                    e["code"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                ));
            }
            bail!(msg);
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// `GET path`, or `None` on 404.
    async fn find(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}: is tollgate-billing running there?"))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.get(path).await.map(Some)
    }
}

/// Reads and checks the YAML file (unknown top-level sections and malformed items are errors
/// naming their place).
pub fn parse_file(text: &str) -> anyhow::Result<CatalogFile> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| anyhow!("{}: {}", e.path(), e.inner()))
}

fn to_value<T: Serialize>(t: &T) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(t)?)
}

/// The comparable content of a stored version (or a file entry) of kind `T`.
fn canonical<T: Serialize + for<'de> Deserialize<'de>>(v: &Value) -> anyhow::Result<Value> {
    let typed: T = serde_json::from_value(v.clone())?;
    to_value(&typed)
}

/// The fields where `stored` and `wanted` differ, one `path: old → new` line each (at most
/// `limit`); array items that have a `key` are named by it (`phases[paid].rateCards[api]`).
pub fn diff(stored: &Value, wanted: &Value, limit: usize) -> Vec<String> {
    fn walk(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &sub,
                        out,
                    );
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    let name = match (u["key"].as_str(), v["key"].as_str()) {
                        (Some(k), Some(l)) if k == l => k.to_owned(),
                        _ => i.to_string(),
                    };
                    walk(u, v, &format!("{path}[{name}]"), out);
                }
            }
            _ if a != b => out.push(format!("{path}: {a} → {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(stored, wanted, "", &mut out);
    if out.len() > limit {
        let more = out.len() - limit;
        out.truncate(limit);
        out.push(format!("… and {more} more"));
    }
    out
}

/// Which `/api/v1/...` collection and how to say it.
struct Kind {
    path: &'static str,
    noun: &'static str,
}

const PLANS: Kind = Kind {
    path: "/api/v1/plans",
    noun: "plan",
};
const ADDONS: Kind = Kind {
    path: "/api/v1/addons",
    noun: "addon",
};

/// Applies `file`, printing one line per item through `out`; publishes drafts when `publish`.
pub async fn apply(
    remote: &Remote,
    file: &CatalogFile,
    publish: bool,
    out: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let existing = remote.get("/api/v1/features").await?;
    let existing: Vec<Value> = match existing {
        Value::Array(a) => a,
        other => other["items"].as_array().cloned().unwrap_or_default(),
    };
    for f in &file.features {
        match existing.iter().find(|e| e["key"] == f.key.as_str()) {
            None => {
                remote.post("/api/v1/features", &to_value(f)?).await?;
                out(format!("feature {}: created", f.key));
            }
            Some(e) => {
                let stored: FeatureSpec = serde_json::from_value(e.clone())?;
                let same = stored.name == f.name
                    && stored.meter_slug == f.meter_slug
                    && (f.meter_group_by_filters.is_none()
                        || stored.meter_group_by_filters == f.meter_group_by_filters);
                if same {
                    out(format!("feature {}: unchanged", f.key));
                } else {
                    out(format!(
                        "feature {}: differs from the stored feature, left as is (features cannot change: archive it to redefine it)",
                        f.key
                    ));
                }
            }
        }
    }
    for a in &file.addons {
        let desired = to_value(a)?;
        versioned::<AddonSpec>(remote, &ADDONS, &a.key, &desired, publish, out).await?;
    }
    for p in &file.plans {
        let desired = to_value(p)?;
        versioned::<PlanSpec>(remote, &PLANS, &p.key, &desired, publish, out).await?;
    }
    for pa in &file.plan_addons {
        plan_addon(remote, pa, out).await?;
    }
    Ok(())
}

/// The newest live version of a plan (its draft, else its active version).
async fn newest_plan(remote: &Remote, key: &str) -> anyhow::Result<Option<Value>> {
    let listed = remote
        .get(&format!("{}?key={key}&pageSize=1000", PLANS.path))
        .await?;
    Ok(listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| matches!(v["status"].as_str(), Some("draft" | "active" | "scheduled")))
        .max_by_key(|v| v["version"].as_i64())
        .cloned())
}

async fn plan_addon(
    remote: &Remote,
    pa: &PlanAddonSpec,
    out: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let label = format!("plan {} add-on {}", pa.plan, pa.addon);
    let Some(plan) = newest_plan(remote, &pa.plan).await? else {
        bail!("{label}: plan {} is not in the catalog", pa.plan);
    };
    let plan_id = plan["id"].as_str().unwrap_or_default();
    let Some(addon) = remote
        .find(&format!("{}/{}", ADDONS.path, pa.addon))
        .await?
    else {
        out(format!(
            "{label}: skipped (add-on {} has no active version: apply with --publish)",
            pa.addon
        ));
        return Ok(());
    };
    let addon_id = addon["id"].as_str().unwrap_or_default();
    let path = format!("{}/{plan_id}/addons", PLANS.path);
    let offered = remote.get(&path).await?;
    let current = offered["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["addon"]["key"] == pa.addon.as_str())
        .cloned();
    let body = json!({"addonId": addon_id, "fromPlanPhase": pa.from_plan_phase, "maxQuantity": pa.max_quantity});
    let version = plan["version"].as_i64().unwrap_or_default();
    match current {
        Some(c)
            if c["addon"]["id"] == addon_id
                && c["fromPlanPhase"] == pa.from_plan_phase.as_str()
                && c["maxQuantity"].as_i64() == pa.max_quantity =>
        {
            out(format!("{label}: unchanged (plan v{version})"));
        }
        Some(c) if c["addon"]["id"] == addon_id => {
            remote.put(&format!("{path}/{addon_id}"), &body).await?;
            out(format!("{label}: updated (plan v{version})"));
        }
        Some(c) => {
            // A newer add-on version: offer it instead of the old one.
            let old = c["addon"]["id"].as_str().unwrap_or_default();
            remote.delete(&format!("{path}/{old}")).await?;
            remote.post(&path, &body).await?;
            out(format!(
                "{label}: now offers v{} (plan v{version})",
                addon["version"]
            ));
        }
        None => {
            remote.post(&path, &body).await?;
            out(format!("{label}: offered (plan v{version})"));
        }
    }
    Ok(())
}

async fn versioned<T: Serialize + for<'de> Deserialize<'de>>(
    remote: &Remote,
    kind: &Kind,
    key: &str,
    desired: &Value,
    publish: bool,
    out: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let listed = remote
        .get(&format!("{}?key={key}&pageSize=1000", kind.path))
        .await?;
    let versions = listed["items"].as_array().cloned().unwrap_or_default();
    let with = |status: &str| versions.iter().find(|v| v["status"] == status).cloned();
    let want = canonical::<T>(desired)?;
    let noun = kind.noun;
    let draft = with("draft");
    let active = with("active");
    let (id, version, is_draft) = match (&draft, &active) {
        (Some(d), _) => {
            let v = d["version"].as_i64().unwrap_or_default();
            let id = d["id"].as_str().unwrap_or_default().to_owned();
            let stored = canonical::<T>(d)?;
            if stored == want {
                out(format!("{noun} {key}: unchanged (draft v{v})"));
            } else {
                remote.put(&format!("{}/{id}", kind.path), desired).await?;
                out(format!("{noun} {key}: updated draft v{v}"));
                diff(&stored, &want, 20)
                    .into_iter()
                    .for_each(|l| out(format!("    {l}")));
            }
            (id, v, true)
        }
        (None, Some(a)) if canonical::<T>(a)? == want => {
            let v = a["version"].as_i64().unwrap_or_default();
            out(format!("{noun} {key}: unchanged (v{v} active)"));
            (String::new(), v, false)
        }
        (None, active) => {
            let created = remote.post(kind.path, desired).await?;
            let v = created["version"].as_i64().unwrap_or_default();
            let id = created["id"].as_str().unwrap_or_default().to_owned();
            match active {
                None if v == 1 => out(format!("{noun} {key}: created (draft v1)")),
                None => out(format!("{noun} {key}: new draft v{v}")),
                Some(a) => {
                    out(format!(
                        "{noun} {key}: new draft v{v} (differs from active v{})",
                        a["version"].as_i64().unwrap_or_default()
                    ));
                    let stored = canonical::<T>(a)?;
                    diff(&stored, &want, 20)
                        .into_iter()
                        .for_each(|l| out(format!("    {l}")));
                }
            }
            (id, v, true)
        }
    };
    if publish && is_draft {
        remote
            .post(&format!("{}/{id}/publish", kind.path), &json!({}))
            .await?;
        out(format!("{noun} {key}: published v{version}"));
    }
    Ok(())
}

/// Today's catalog: live features, and per key the active version of each plan and add-on (the
/// newest draft where none is active).
pub async fn dump(remote: &Remote) -> anyhow::Result<CatalogFile> {
    let features = remote.get("/api/v1/features").await?;
    let features: Vec<FeatureSpec> = features
        .as_array()
        .or_else(|| features["items"].as_array())
        .into_iter()
        .flatten()
        .map(|f| serde_json::from_value(f.clone()))
        .collect::<Result<_, _>>()?;
    let plans = current(remote, &PLANS).await?;
    let mut plan_addons = Vec::new();
    for plan in &plans {
        let plan_id = plan["id"].as_str().unwrap_or_default();
        let offered = remote
            .get(&format!("{}/{plan_id}/addons", PLANS.path))
            .await?;
        for o in offered["items"].as_array().into_iter().flatten() {
            plan_addons.push(PlanAddonSpec {
                plan: plan["key"].as_str().unwrap_or_default().to_owned(),
                addon: o["addon"]["key"].as_str().unwrap_or_default().to_owned(),
                from_plan_phase: o["fromPlanPhase"].as_str().unwrap_or_default().to_owned(),
                max_quantity: o["maxQuantity"].as_i64(),
            });
        }
    }
    Ok(CatalogFile {
        features,
        addons: typed(current(remote, &ADDONS).await?)?,
        plans: typed(plans)?,
        plan_addons,
    })
}

fn typed<T: for<'de> Deserialize<'de>>(items: Vec<Value>) -> anyhow::Result<Vec<T>> {
    items
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(Into::into))
        .collect()
}

/// Per key, the active version (else the newest draft), as the API returned it.
async fn current(remote: &Remote, kind: &Kind) -> anyhow::Result<Vec<Value>> {
    let listed = remote.get(&format!("{}?pageSize=1000", kind.path)).await?;
    let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
    for v in listed["items"].as_array().into_iter().flatten() {
        let key = v["key"].as_str().unwrap_or_default().to_owned();
        let rank = |v: &Value| match v["status"].as_str() {
            Some("active") => 2,
            Some("draft") => 1,
            _ => 0,
        };
        let better = by_key.get(&key).is_none_or(|cur| {
            (rank(v), v["version"].as_i64()) > (rank(cur), cur["version"].as_i64())
        });
        if rank(v) > 0 && better {
            by_key.insert(key, v.clone());
        }
    }
    Ok(by_key.into_values().collect())
}
