//! `kong-config/` stays true: every `tollgate` entry of every decK file passes the schema that
//! `tollgate -dump` prints (as Kong would check it on sync), `kong.conf` names the plugin and its
//! server consistently, and the agent and billing config files pass their own `check-config`.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use serde_json::Value;
use tollgate_e2e::kong::process::query_info;
use tollgate_e2e::kong::schema::validate_plugin_config;
use tollgate_e2e::stack::{binary, workspace_root};

fn plugin_entries<'v>(v: &'v Value, name: &str, out: &mut Vec<&'v Value>) {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(name) {
                out.push(m.get("config").unwrap_or(&Value::Null));
            }
            m.values().for_each(|c| plugin_entries(c, name, out));
        }
        Value::Array(a) => a.iter().for_each(|c| plugin_entries(c, name, out)),
        _ => {}
    }
}

#[test]
fn every_deck_file_passes_the_dumped_schemas() {
    let metering = query_info(&binary("tollgate"), &["-dump"]).unwrap();
    let enforcement =
        query_info(&binary("tollgate"), &["--plugin", "enforcement", "-dump"]).unwrap();
    assert_eq!(enforcement.name, "tollgate-enforcement");
    assert_eq!(enforcement.phases, vec!["access"]);
    let dir = workspace_root().join("kong-config/deck");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["_format_version"], "3.0", "{}", path.display());
        for info in [&metering, &enforcement] {
            let mut configs = Vec::new();
            plugin_entries(&doc, &info.name, &mut configs);
            for config in configs {
                let errors = validate_plugin_config(&info.schema, config);
                assert!(
                    errors.is_empty(),
                    "{}: {}: {errors:?}",
                    path.display(),
                    info.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} tollgate entries found");
    // And the validator does refuse what Kong would.
    let bad: Value =
        serde_json::json!({"subject": {"look_up_value_in": "cookie"}, "meter_api_request": true});
    assert_eq!(validate_plugin_config(&metering.schema, &bad).len(), 2);
    let bad: Value =
        serde_json::json!({"customer": {}, "feature": {"key": "x"}, "fail_policy": "maybe"});
    assert_eq!(validate_plugin_config(&enforcement.schema, &bad).len(), 1);
}

#[test]
fn kong_conf_names_the_plugin_and_its_server() {
    let text = std::fs::read_to_string(workspace_root().join("kong-config/kong.conf")).unwrap();
    let setting = |key: &str| {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find_map(|l| {
                l.split_once('=')
                    .filter(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_owned())
            })
    };
    let plugins = setting("plugins").unwrap();
    assert!(
        plugins.split(',').any(|p| p.trim() == "tollgate"),
        "{plugins}"
    );
    let servers = setting("pluginserver_names").unwrap();
    for server in servers.split(',').map(str::trim) {
        // Kong lowercases the name and turns '-' into '_' in the setting prefix.
        let prefix = format!("pluginserver_{}", server.to_lowercase().replace('-', "_"));
        for suffix in ["socket", "start_cmd", "query_cmd"] {
            assert!(
                setting(&format!("{prefix}_{suffix}")).is_some(),
                "{prefix}_{suffix} missing"
            );
        }
        let socket = setting(&format!("{prefix}_socket")).unwrap();
        assert!(
            socket.ends_with(&format!("/{server}.socket")),
            "{socket}: the server serves <prefix>/<name>.socket"
        );
    }
}

#[test]
fn agent_and_billing_configs_pass_check_config() {
    let dir = workspace_root().join("kong-config");
    let out = Command::new(binary("tollgate-agent"))
        .arg("check-config")
        .arg(dir.join("tollgate-agent.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(binary("tollgate-billing"))
        .arg("check-config")
        .arg(dir.join("tollgate-billing.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("meter api_requests") && text.contains("meter llm_tokens"),
        "{text}"
    );
}
