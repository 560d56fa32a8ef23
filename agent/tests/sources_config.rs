//! `tollgate-agent check-config` on `[sources.*]`: the effective settings (file, then
//! `TOLLGATE_AGENT__SOURCES__<SOURCE>__<KEY>` from the environment), tokens masked, and every
//! mistake named by its full key.

#![allow(clippy::unwrap_used)]

mod common;

use common::agent_bin;

fn check(text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(agent_bin())
        .args(["check-config", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sources_are_shown_with_env_overrides_and_masked_tokens() {
    let (ok, out, err) = check(
        r#"
[sources.http]
token = "app-secret"
[sources.kong_http_log]
enabled = true
token = "kong-secret"
subject = { look_up_value_in = "header", field = "x-tenant" }
attributes = [{ source = "query", look_up_value_in = "project", event_property_name = "project" }]
[sources.otlp_logs]
enabled = true
event_type = "jobs"
"#,
        &[
            (
                "TOLLGATE_AGENT__SOURCES__OTLP_LOGS__LISTEN",
                "127.0.0.1:14317",
            ),
            ("TOLLGATE_AGENT__SOURCES__HTTP__MAX_BODY_BYTES", "2048"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("[sources.kong_http_log]"), "{out}");
    assert!(out.contains("look_up_value_in = \"header\""), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:14317\""), "{out}");
    assert!(out.contains("max_body_bytes = 2048"), "{out}");
    assert!(
        !out.contains("app-secret") && !out.contains("kong-secret"),
        "{out}"
    );
    let (ok, out, _) = check("", &[]);
    assert!(ok);
    assert!(
        out.contains("[sources.http]\nenabled = true"),
        "the HTTP intake is on by default: {out}"
    );
}

#[test]
fn each_source_mistake_is_named_by_its_key() {
    let (ok, _, err) = check(
        r#"
[sources.http]
max_body_bytes = 10
token = ""
[sources.kong_http_log]
enabled = true
subject = { look_up_value_in = "header" }
[sources.otlp_logs]
enabled = true
listen = "everywhere"
"#,
        &[],
    );
    assert!(!ok);
    for key in [
        "error: sources.http.max_body_bytes",
        "error: sources.http.token",
        "error: sources.kong_http_log.subject.field",
        "error: sources.otlp_logs.listen",
        "error: sources.otlp_logs.event_type",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    for (text, key) in [
        (
            "[sources.kong_http_log]\nsubject = { look_up_value_in = \"cookie\" }\n",
            "sources.kong_http_log.subject.look_up_value_in",
        ),
        (
            "[sources.kong_http_log]\nattributes = [{ source = \"header\", look_up_value_in = \"\", event_property_name = \"team\" }]\n",
            "sources.kong_http_log.attributes[0].look_up_value_in",
        ),
        ("[sources.http]\nenable = true\n", "sources.http"),
        ("[sources.syslog]\nenabled = true\n", "syslog"),
    ] {
        let (ok, _, err) = check(text, &[]);
        assert!(!ok, "{text}");
        assert!(err.contains(key), "{key}: {err}");
    }
}
