//! `tollgate-agent check-config` on the pull sources: the example config in `kong-config/`
//! passes with its secret masked, and every mistake is named by its full key
//! (`sources.prometheus[0].queries[1].name`, `sources.runai.page_size`, …).

#![allow(clippy::unwrap_used)]

mod common;

use common::agent_bin;

fn check_file(path: &std::path::Path) -> (bool, String, String) {
    let out = std::process::Command::new(agent_bin())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    check_file(&path)
}

#[test]
fn the_example_pull_config_passes_with_its_secret_masked() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kong-config/tollgate-agent-pull.toml");
    let (ok, out, err) = check_file(&path);
    assert!(ok, "{err}");
    for shown in [
        "[[sources.prometheus]]",
        "egress-bytes",
        "[[sources.s3]]",
        "format = \"cloudevents-jsonl\"",
        "[sources.kubernetes]",
        "label_selector = \"billing=metered\"",
        "[sources.runai]",
        "resource_type = \"workload\"",
    ] {
        assert!(out.contains(shown), "{shown}: {out}");
    }
    assert!(
        !out.contains("change-me"),
        "the Run:ai secret is shown: {out}"
    );
}

#[test]
fn each_pull_source_mistake_is_named_by_its_key() {
    let (ok, _, err) = check(
        r#"
[[sources.prometheus]]
url = "prometheus:9090"
schedule = "every minute"
query_offset = "soon"
queries = [{ name = "cpu", promql = "up" }, { name = "cpu", promql = "" }]

[[sources.prometheus]]
url = "http://127.0.0.1:9090"

[[sources.s3]]
interval = "1 fortnight"
format = "cloudevents-jsonl"
endpoint = "minio"

[sources.kubernetes]
enabled = true
interval = "100ms"

[sources.runai]
enabled = true
url = "https://runai.example.com"
app_id = "meter"
page_size = 1000
metrics = ["gpu allocation"]
"#,
    );
    assert!(!ok);
    for key in [
        "error: sources.prometheus[0].url",
        "error: sources.prometheus[0].schedule",
        "error: sources.prometheus[0].query_offset",
        "error: sources.prometheus[0].queries[1].name",
        "error: sources.prometheus[0].queries[1].promql",
        "error: sources.prometheus[1].queries",
        "error: sources.s3[0].bucket",
        "error: sources.s3[0].interval",
        "error: sources.s3[0].endpoint",
        "error: sources.kubernetes.interval",
        "error: sources.runai.app_secret",
        "error: sources.runai.page_size",
        "error: sources.runai.metrics[0]",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    for (text, key) in [
        (
            "[[sources.s3]]\nbucket = \"b\"\nformat = \"csv\"\n",
            "sources.s3[0].format",
        ),
        (
            "[sources.kubernetes]\nenabled = true\ninterval = \"1500ms\"\n",
            "sources.kubernetes.interval",
        ),
        (
            "[sources.runai]\nresource_type = \"node\"\n",
            "sources.runai.resource_type",
        ),
        (
            "[[sources.prometheus]]\nurl = \"http://p\"\nqueries = [{ name = \"a\", query = \"up\" }]\n",
            "sources.prometheus[0].queries[0]",
        ),
    ] {
        let (ok, _, err) = check(text);
        assert!(!ok, "{text}");
        assert!(err.contains(key), "{key}: {err}");
    }
    // The environment reaches single sections, not the lists.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[[sources.prometheus]]\nurl = \"http://p\"\nqueries = [{ name = \"a\", promql = \"up\" }]\n[sources.runai]\nenabled = true\nurl = \"http://r\"\napp_id = \"a\"\n").unwrap();
    let out = std::process::Command::new(agent_bin())
        .args(["check-config", path.to_str().unwrap()])
        .env("TOLLGATE_AGENT__SOURCES__RUNAI__APP_SECRET", "from-env")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("app_secret = \"********\"") && !stdout.contains("from-env"),
        "{stdout}"
    );
    let out = std::process::Command::new(agent_bin())
        .args(["check-config", path.to_str().unwrap()])
        .env("TOLLGATE_AGENT__SOURCES__PROMETHEUS__URL", "http://q")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[[sources.prometheus]] is a list"),
        "{stderr}"
    );
    // Off by default: a [sources.kubernetes] table without `enabled` checks nothing else.
    let (ok, _, err) = check("[sources.kubernetes]\ninterval = \"15s\"\n");
    assert!(ok, "{err}");
}

#[test]
fn the_readme_pull_sources_example_passes() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let section = readme
        .split("#### Pull sources")
        .nth(1)
        .expect("README has a Pull sources section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let (ok, out, err) = check(block);
    assert!(ok, "{err}\n{block}");
    assert!(
        out.contains("X-Scope-OrgID = \"********\""),
        "headers are masked: {out}"
    );
}
