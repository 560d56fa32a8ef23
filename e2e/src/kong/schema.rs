//! Validating a plugin's `config` against the schema its `-dump` printed, the way Kong's schema
//! library does when decK syncs a file (types, `one_of`, `between`, `required` after defaults,
//! unknown fields refused). Enough of `kong/db/schema/init.lua` for the field kinds plugin
//! servers emit: string, boolean, number, integer, array, set, map, record.

use serde_json::Value;

/// Every problem in `config` under the schema's `config` record, as `config.path: message`.
pub fn validate_plugin_config(schema: &Value, config: &Value) -> Vec<String> {
    let record = schema["fields"]
        .as_array()
        .and_then(|f| f.iter().find_map(|f| f.get("config")))
        .cloned()
        .unwrap_or(Value::Null);
    let mut errors = Vec::new();
    check(&record, config, "config", &mut errors);
    errors
}

fn check(spec: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let ty = spec["type"].as_str().unwrap_or("");
    if value.is_null() {
        if spec["required"].as_bool() == Some(true)
            && spec.get("default").is_none()
            && ty != "record"
        {
            errors.push(format!("{path}: required field missing"));
        }
        return;
    }
    let ok = match ty {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "array" | "set" => value.is_array(),
        "map" | "record" => value.is_object(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{path}: expected a {ty}"));
        return;
    }
    if let Some(allowed) = spec["one_of"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!(
            "{path}: expected one of: {}",
            allowed
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some([lo, hi]) = spec["between"].as_array().map(Vec::as_slice)
        && let (Some(v), Some(lo), Some(hi)) = (value.as_f64(), lo.as_f64(), hi.as_f64())
        && (v < lo || v > hi)
    {
        errors.push(format!("{path}: value should be between {lo} and {hi}"));
    }
    match ty {
        "record" => {
            let fields: Vec<(&String, &Value)> = spec["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_object()?.iter().next())
                .collect();
            let obj = value.as_object().cloned().unwrap_or_default();
            for key in obj.keys() {
                if !fields.iter().any(|(name, _)| *name == key) {
                    errors.push(format!("{path}.{key}: unknown field"));
                }
            }
            for (name, field) in fields {
                check(
                    field,
                    obj.get(name).unwrap_or(&Value::Null),
                    &format!("{path}.{name}"),
                    errors,
                );
            }
        }
        "array" | "set" => {
            for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                check(&spec["elements"], item, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kong_style_checks() {
        let schema = json!({"name": "p", "fields": [{"config": {"type": "record", "fields": [
            {"mode": {"type": "string", "one_of": ["a", "b"], "required": true, "default": "a"}},
            {"n": {"type": "integer", "between": [1, 10]}},
            {"items": {"type": "array", "elements": {"type": "record", "fields": [{"k": {"type": "string", "required": true}}]}}}
        ]}}]});
        assert!(validate_plugin_config(&schema, &json!({"mode": "b", "n": 3})).is_empty());
        let errs = validate_plugin_config(
            &schema,
            &json!({"mode": "c", "n": 30, "extra": 1, "items": [{}]}),
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("config.items[0].k")));
    }
}
