//! No Docker engine runs here, so the images and the compose file are checked as files: the
//! compose file parses and wires billing ← agent ← Kong with healthchecks and data volumes; every
//! file it or a Dockerfile refers to exists; every binary a Dockerfile builds is a real binary of
//! this workspace; the ports a Dockerfile exposes are the ones its entrypoint listens on.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tollgate_e2e::stack::workspace_root;

fn compose() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("docker/compose.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn compose_wires_the_stack_with_healthchecks_and_volumes() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for name in ["billing", "agent", "kong"] {
        let s = &services[name];
        assert!(
            s["healthcheck"]["test"].is_array(),
            "{name} has a healthcheck"
        );
        let dockerfile = s["build"]["dockerfile"].as_str().unwrap();
        assert!(workspace_root().join(dockerfile).exists(), "{dockerfile}");
    }
    assert_eq!(
        services["agent"]["depends_on"]["billing"]["condition"],
        "service_healthy"
    );
    assert_eq!(
        services["kong"]["depends_on"]["agent"]["condition"],
        "service_healthy"
    );
    for (svc, volume) in [
        ("billing", "billing-data:/data"),
        ("agent", "agent-data:/data"),
    ] {
        let vols: Vec<&str> = services[svc]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(vols.contains(&volume), "{svc}: {vols:?}");
    }
    // PostgreSQL is there on request (profile), billing waits for it when it is, and billing's
    // database URL comes from the environment (empty: SQLite on its volume).
    let pg = &services["postgres"];
    assert_eq!(pg["profiles"][0], "postgres");
    assert!(pg["healthcheck"]["test"].is_array());
    assert_eq!(
        services["billing"]["depends_on"]["postgres"]["required"],
        false
    );
    assert!(
        services["billing"]["environment"]["TOLLGATE_BILLING_DATABASE_URL"]
            .as_str()
            .unwrap()
            .contains("TOLLGATE_BILLING_DATABASE_URL")
    );
    // The agent delivers to the billing service by its compose name.
    let cmd: Vec<&str> = services["agent"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(cmd, ["--destination-url", "http://billing:8888"]);
    // Kong's declarative config is a decK file of ours.
    let mount = services["kong"]["volumes"][0].as_str().unwrap();
    let host = mount.split(':').next().unwrap().trim_start_matches("../");
    assert!(workspace_root().join(host).exists(), "{host}");
}

#[test]
fn dockerfiles_build_real_binaries_copy_real_files_and_expose_what_they_listen_on() {
    let dir = workspace_root().join("docker");
    let bins = ["tollgate", "tollgate-agent", "tollgate-billing"];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("Dockerfile")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("RUN cargo build") {
                for word in rest
                    .split_whitespace()
                    .skip_while(|w| *w != "--bin")
                    .skip(1)
                    .step_by(2)
                {
                    assert!(
                        bins.contains(&word),
                        "{}: unknown binary {word}",
                        path.display()
                    );
                }
            }
            if let Some(rest) = line.strip_prefix("COPY ")
                && !rest.starts_with("--from")
                && !rest.starts_with(". ")
            {
                let src = rest.split_whitespace().next().unwrap();
                assert!(
                    workspace_root().join(src).exists(),
                    "{}: COPY {src}",
                    path.display()
                );
            }
            if let Some(ports) = line.strip_prefix("EXPOSE ") {
                for port in ports.split_whitespace() {
                    assert!(
                        text.contains(&format!("0.0.0.0:{port}")),
                        "{}: exposes {port} but does not listen on it",
                        path.display()
                    );
                }
            }
        }
    }
}
