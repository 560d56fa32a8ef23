//! The wasm deployment files in `kong-config/wasm/`, checked as files and against the filter
//! itself: kong.conf turns Wasm on and names the filter, the decK files for 3.4–3.8 (filter
//! chains) and 3.9–3.10 (plugin entries) and the Envoy config name the built filter, and every
//! config they carry is accepted by the filter's parser and by the filter's own `on_configure`
//! in the host. The filter's schema (`tollgate_wasm.meta.json`) knows every field they use.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use serde_json::Value;
use tollgate_wasm::FILTER_NAME;
use tollgate_wasm::config::FilterConfig;
use tollgate_wasm_host::Flavor;
use tollgate_wasm_host::build::workspace_root;

fn dir() -> PathBuf {
    workspace_root().join("kong-config/wasm")
}

fn yaml(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Accepted by the parser, and by the built filter's on_configure.
fn check_config(json: &str, flavor: Flavor, schema: &Value) {
    FilterConfig::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"));
    let value: Value = serde_json::from_str(json).unwrap();
    for key in value.as_object().unwrap().keys() {
        assert!(
            schema["config_schema"]["properties"].get(key).is_some(),
            "tollgate_wasm.meta.json lacks {key}"
        );
    }
    common::vm(&value, flavor);
}

fn schema() -> Value {
    let text = std::fs::read_to_string(
        workspace_root().join("plugin/wasm-filter/tollgate_wasm.meta.json"),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_built_module_has_the_name_the_files_use() {
    let wasm = tollgate_wasm_host::build::filter_wasm().unwrap();
    assert_eq!(wasm.file_stem().unwrap(), FILTER_NAME);
    let size = std::fs::metadata(&wasm).unwrap().len();
    assert!(size > 10_000, "{size} bytes");
}

#[test]
fn kong_conf_turns_wasm_on_and_loads_the_filter() {
    let text = std::fs::read_to_string(dir().join("kong.conf")).unwrap();
    let settings: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key = value: {l}"));
            (k.trim(), v.trim())
        })
        .collect();
    let get = |k: &str| settings.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("wasm"), Some("on"));
    assert!(get("wasm_filters_path").unwrap().starts_with('/'));
    assert!(
        get("wasm_filters")
            .unwrap()
            .split(',')
            .any(|f| f.trim() == FILTER_NAME)
    );
    // Only directives Kong can inject (no shm_queue).
    assert!(settings.iter().all(|(k, _)| !k.contains("shm_queue")));
}

#[test]
fn deck_filter_chains_for_3_4_to_3_8() {
    let schema = schema();
    let doc = yaml("deck-3.4-3.8.yaml");
    assert_eq!(doc["_format_version"], "3.0");
    let mut filters = 0;
    for service in doc["services"].as_array().unwrap() {
        for chain in service["filter_chains"].as_array().into_iter().flatten() {
            assert!(chain["name"].is_string());
            for filter in chain["filters"].as_array().unwrap() {
                assert_eq!(filter["name"], FILTER_NAME);
                // Without a schema Kong wants the config as a string.
                check_config(filter["config"].as_str().unwrap(), Flavor::Kong, &schema);
                filters += 1;
            }
        }
    }
    assert!(filters >= 2);
}

#[test]
fn deck_plugin_entries_for_3_9_and_3_10() {
    let schema = schema();
    let doc = yaml("deck-3.9-3.10.yaml");
    let plugins: Vec<&Value> = doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == FILTER_NAME)
        .collect();
    assert_eq!(plugins.len(), 1);
    let config = plugins[0]["config"].to_string();
    check_config(&config, Flavor::Kong, &schema);
    // Attached to a service the file declares.
    let service = plugins[0]["service"].as_str().unwrap();
    assert!(
        doc["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == service)
    );
}

#[test]
fn envoy_config_loads_the_filter_and_names_the_agent_cluster() {
    let schema = schema();
    let doc = yaml("envoy.yaml");
    let listeners = doc["static_resources"]["listeners"].as_array().unwrap();
    let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
    let wasm = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .unwrap();
    let c = &wasm["typed_config"]["config"];
    assert_eq!(c["name"], FILTER_NAME);
    assert_eq!(c["root_id"], FILTER_NAME);
    let file = c["vm_config"]["code"]["local"]["filename"]
        .as_str()
        .unwrap();
    assert!(file.ends_with(&format!("/{FILTER_NAME}.wasm")));
    let json = c["configuration"]["value"].as_str().unwrap();
    check_config(json, Flavor::Envoy, &schema);
    let cluster = FilterConfig::from_json(json.as_bytes())
        .unwrap()
        .agent
        .upstream;
    assert!(
        doc["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == cluster.as_str()),
        "no cluster {cluster}"
    );
}
