//! Reading decK files (`kong-config/deck/*.yaml`) the way Kong would load them: every plugin entry
//! with a given name, wherever it is nested (top level, service, route, consumer), as the plugin
//! entity Kong holds — a fresh id and `__seq__` 1.

use std::path::Path;

use serde_json::Value;

use crate::kong::worker::PluginEntity;

/// Every `name` plugin entry of the decK file at `path`.
pub fn plugins(path: &Path, name: &str) -> anyhow::Result<Vec<PluginEntity>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let doc: Value =
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut found = Vec::new();
    walk(&doc, name, &mut found);
    Ok(found)
}

fn walk(v: &Value, name: &str, out: &mut Vec<PluginEntity>) {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(name) {
                out.push(PluginEntity {
                    name: name.to_owned(),
                    id: uuid::Uuid::new_v4().to_string(),
                    config: m.get("config").cloned().unwrap_or(Value::Null),
                    route_id: None,
                    service_id: None,
                    seq: 1,
                });
            }
            m.values().for_each(|c| walk(c, name, out));
        }
        Value::Array(a) => a.iter().for_each(|c| walk(c, name, out)),
        _ => {}
    }
}
