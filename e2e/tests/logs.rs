//! The logs of a full run, read as an operator's log shipper would: `tollgate-billing`,
//! `tollgate-agent` and the `tollgate` plugin server started with known secrets configured
//! (billing `api_tokens`, the agent's `destination.token`, a plugin's own `api_token`, URL
//! passwords), traffic driven through Kong's side including a destination that refuses, everything
//! logged at `trace` to files, once in each format. Then: no secret in any line, no ANSI escape
//! (stderr is a file, not a terminal), every text line one event starting with its timestamp and
//! level, every JSON line an object with the required fields; and the traffic really flowed
//! (billing counted it), so a quiet run cannot pass.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::worker::{PluginEntity, Worker};
use tollgate_e2e::stack::{Proc, binary, free_port, wait_tcp, wait_unix, workspace_root};

/// Accepted by billing; the agent's `destination.token`.
const TOKEN_AGENT: &str = "om_agent_Zx81Jq4TQmLw";
/// Accepted by billing; one plugin config's own `api_token`.
const TOKEN_PLUGIN: &str = "om_plugin_Hq27Rk9VvPaN";
/// Not accepted by billing: the `api_token` of a plugin config whose endpoint refuses.
const TOKEN_REFUSED: &str = "om_refused_Tb55Wd3MmKcE";
/// The password in that plugin config's `ingest_endpoint` URL.
const URL_PASSWORD: &str = "urlpw-Fk73Ns0Lq";
/// The password in the plugin server's `--agent` URL.
const AGENT_URL_PASSWORD: &str = "agentpw-Pc19Yx6Ge";
/// A wrong token a stranger presents to billing.
const STRANGER_TOKEN: &str = "stranger-Vn42Sj8Ou";

const SECRETS: [&str; 6] = [
    TOKEN_AGENT,
    TOKEN_PLUGIN,
    TOKEN_REFUSED,
    URL_PASSWORD,
    AGENT_URL_PASSWORD,
    STRANGER_TOKEN,
];

const CONSUMERS: [(&str, &str); 2] = [
    ("5d1b8c3e-2a4f-4b6d-9e8a-7c6b5a4d3e2f", "acme"),
    ("0b7e4c1a-9d2f-4e3b-8a6c-5f4e3d2c1b0a", "globex"),
];

/// How the format is chosen for a run: the flag on every binary, or the environment variable.
#[derive(Clone, Copy)]
enum Choice {
    TextByFlag,
    JsonByEnv,
}

/// Spawns `bin` with stdout and stderr into `log`, `TOLLGATE_LOG=trace`, no `NO_COLOR` (colour
/// must be off because stderr is a file, not because of it).
fn spawn_logged(bin: &str, args: &[String], env: &[(&str, String)], log: &Path) -> Proc {
    let file = File::create(log).unwrap();
    let path = binary(bin);
    let child = Command::new(&path)
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("TOLLGATE_LOG_FORMAT")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TOLLGATE_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut cmd = vec![path.display().to_string()];
    cmd.extend(args.iter().cloned());
    Proc { child, cmd }
}

fn format_args(choice: Choice) -> (Vec<String>, Vec<(&'static str, String)>) {
    match choice {
        Choice::TextByFlag => (vec!["--log-format".into(), "text".into()], vec![]),
        Choice::JsonByEnv => (vec![], vec![("TOLLGATE_LOG_FORMAT", "json".into())]),
    }
}

/// The tollgate plugin entry of the example decK file, with `id` and extra config.
fn plugin_entity(id: &str, extra: Value) -> PluginEntity {
    let path = workspace_root().join("kong-config/deck/01-consumers-key-auth.yaml");
    let mut entity = tollgate_e2e::deck::plugins(&path, "tollgate")
        .unwrap()
        .remove(0);
    entity.id = id.into();
    if let (Some(config), Some(extra)) = (entity.config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    entity
}

/// Total `api_requests` at billing (0 when billing cannot answer yet).
async fn billed(billing: SocketAddr) -> f64 {
    let resp = reqwest::Client::new()
        .get(format!("http://{billing}/api/v1/meters/api_requests/query"))
        .bearer_auth(TOKEN_AGENT)
        .send()
        .await;
    let Ok(v) = (match resp {
        Ok(r) => r.json::<Value>().await,
        Err(e) => Err(e),
    }) else {
        return 0.0;
    };
    v["data"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["value"].as_f64()).sum())
        .unwrap_or(0.0)
}

/// One full run in one format; returns the three log files (billing, agent, plugin).
async fn run(dir: &Path, choice: Choice) -> [PathBuf; 3] {
    let (flags, env) = format_args(choice);
    let config = workspace_root().join("kong-config");
    let billing_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let agent_grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let agent_http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let kong_prefix = dir.join("kong");
    std::fs::create_dir_all(&kong_prefix).unwrap();
    let logs = [
        dir.join("billing.log"),
        dir.join("agent.log"),
        dir.join("plugin.log"),
    ];

    // Billing, from the example config with two accepted tokens.
    let example = std::fs::read_to_string(config.join("tollgate-billing.toml")).unwrap();
    let billing_toml = dir.join("billing.toml");
    std::fs::write(
        &billing_toml,
        format!("api_tokens = [\"{TOKEN_AGENT}\", \"{TOKEN_PLUGIN}\"]\n{example}"),
    )
    .unwrap();
    let s = |p: &Path| p.display().to_string();
    let mut args = vec![
        "--config".into(),
        s(&billing_toml),
        "--listen".into(),
        billing_addr.to_string(),
        "--data-dir".into(),
        s(&dir.join("billing-data")),
    ];
    args.extend(flags.clone());
    let mut billing = spawn_logged("tollgate-billing", &args, &env, &logs[0]);
    wait_tcp(billing_addr, Duration::from_secs(20)).unwrap();

    // The agent, its token from the environment as a systemd EnvironmentFile would give it.
    let mut args = vec![
        "--config".into(),
        s(&config.join("tollgate-agent.toml")),
        "--grpc-listen".into(),
        agent_grpc.to_string(),
        "--http-listen".into(),
        agent_http.to_string(),
        "--data-dir".into(),
        s(&dir.join("agent-data")),
        "--destination-url".into(),
        format!("http://{billing_addr}"),
    ];
    args.extend(flags.clone());
    let mut agent_env = env.clone();
    agent_env.push(("TOLLGATE_AGENT__DESTINATION__TOKEN", TOKEN_AGENT.into()));
    let mut agent = spawn_logged("tollgate-agent", &args, &agent_env, &logs[1]);
    wait_tcp(agent_grpc, Duration::from_secs(20)).unwrap();
    wait_tcp(agent_http, Duration::from_secs(20)).unwrap();

    // The plugin server as Kong starts it (one-dash flags), the agent URL carrying a password.
    let mut args = vec![
        "-kong-prefix".into(),
        s(&kong_prefix),
        "--agent".into(),
        format!("http://kong:{AGENT_URL_PASSWORD}@{agent_grpc}"),
    ];
    if matches!(choice, Choice::TextByFlag) {
        args.extend(["-log-format".into(), "text".into()]);
    }
    let mut plugin = spawn_logged("tollgate", &args, &env, &logs[2]);
    let socket = kong_prefix.join("tollgate.socket");
    wait_unix(&socket, Duration::from_secs(20)).unwrap();

    // Traffic: the default destination, a plugin config with its own accepted token, and one
    // whose endpoint (with a password in its URL) refuses its token: dead letters, error lines.
    let default_dest = plugin_entity("7f0c8a2e-1b3d-4c5e-9f6a-0b1c2d3e4f5a", json!({}));
    let own_token = plugin_entity(
        "8a1d9b3f-2c4e-4d6f-8a7b-1c2d3e4f5a6b",
        json!({
            "ingest_endpoint": format!("http://{billing_addr}/api/v1/events"),
            "api_token": TOKEN_PLUGIN,
        }),
    );
    let refused = plugin_entity(
        "9b2eac40-3d5f-4e70-9b8c-2d3e4f5a6b7c",
        json!({
            "ingest_endpoint": format!("http://ops:{URL_PASSWORD}@{billing_addr}/api/v1/events"),
            "api_token": TOKEN_REFUSED,
        }),
    );
    let worker = Worker::new(&socket);
    let mut metered = 0.0;
    for k in 0..60 {
        let g = tollgate_e2e::traffic::request(k, &CONSUMERS, None);
        let entity = match k % 6 {
            0 => &refused,
            1 | 3 => &own_token,
            _ => &default_dest,
        };
        let pdk = RequestPdk {
            request: &g.request,
            phase: "log",
        };
        if worker.run_phase(entity, "log", &pdk).await.is_ok() && k % 6 != 0 {
            metered += 1.0;
        }
    }
    assert!(metered >= 45.0, "most requests were metered ({metered})");

    // A stranger with a wrong token at billing: 401, and the token is not echoed into the log.
    let stranger = reqwest::Client::new()
        .get(format!("http://{billing_addr}/api/v1/meters"))
        .bearer_auth(STRANGER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);

    // Everything accepted reaches billing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let total = billed(billing_addr).await;
        if total == metered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "billing counted {total} of {metered} api_requests"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The refused events are in the agent's dead-letter tree (their error lines were written).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead: Value = reqwest::get(format!("http://{agent_http}/v1/dead-letters"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let n = dead
            .as_array()
            .or_else(|| dead["dead_letters"].as_array())
            .or_else(|| dead["items"].as_array())
            .map_or(0, Vec::len);
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letters for the refused destination: {dead}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM, so every process writes its shutdown lines.
    plugin.terminate();
    agent.terminate();
    billing.terminate();
    logs
}

/// Checks common to both formats.
fn assert_clean(name: &str, text: &str) {
    assert!(
        text.lines().count() >= 5,
        "{name}: too few lines to mean anything:\n{text}"
    );
    for secret in SECRETS {
        if let Some(line) = text.lines().find(|l| l.contains(secret)) {
            panic!("{name}: a secret ({secret}) was logged:\n{line}");
        }
    }
    if let Some(line) = text.lines().find(|l| l.contains('\u{1b}')) {
        panic!("{name}: an ANSI escape although stderr is a file:\n{line:?}");
    }
    eprintln!(
        "{name}: {} lines, {} blanked secrets",
        text.lines().count(),
        text.matches("***").count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_are_one_line_per_event_without_secrets_or_colour() {
    let dir = tempfile::tempdir().unwrap();
    let logs = run(dir.path(), Choice::TextByFlag).await;
    for (log, name) in logs.iter().zip(["billing", "agent", "plugin"]) {
        let text = std::fs::read_to_string(log).unwrap();
        assert_clean(name, &text);
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(time), Some(level)) = (words.next(), words.next()) else {
                panic!("{name}: not an event line: {line:?}");
            };
            assert!(
                chrono::DateTime::parse_from_rfc3339(time).is_ok()
                    && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
                "{name}: a line that does not start an event (a multi-line message?): {line:?}"
            );
        }
    }
    let plugin = std::fs::read_to_string(&logs[2]).unwrap();
    assert!(
        plugin.contains("tollgate plugin server ready")
            && plugin.contains("agent=http://kong:***@127.0.0.1:"),
        "the plugin names its agent, password blanked:\n{plugin}"
    );
    let agent = std::fs::read_to_string(&logs[1]).unwrap();
    assert!(
        agent.contains("destination{queue=") && agent.contains("ops:***@127.0.0.1"),
        "the refused destination's lines carry its span, password blanked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_objects_with_the_required_fields_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let logs = run(dir.path(), Choice::JsonByEnv).await;
    let mut destination_spans = 0;
    for (log, name) in logs.iter().zip(["billing", "agent", "plugin"]) {
        let text = std::fs::read_to_string(log).unwrap();
        assert_clean(name, &text);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(
                    v.get(key).is_some_and(|x| x.is_string()),
                    "{name}: no string `{key}` in {line}"
                );
            }
            let time = v["timestamp"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(time).is_ok(),
                "{name}: timestamp {time:?}"
            );
            if v["span"]["name"] == "destination" {
                assert!(v["span"]["url"].is_string() && v["span"]["queue"].is_number());
                destination_spans += 1;
            }
        }
    }
    assert!(
        destination_spans > 0,
        "the agent's delivery lines carry the destination span's fields"
    );
}

/// `tollgate` started with a filter that does not parse and an agent address that is wrong: a
/// warning, then the fatal error as one event, not anyhow's multi-line report.
fn failing_plugin(format: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary("tollgate"));
    cmd.args(["--agent", "nope", "--log-format", format])
        .env("TOLLGATE_LOG", "info,tollgate=loud")
        .env_remove("NO_COLOR")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(env.iter().copied());
    cmd
}

/// Runs `cmd` under `script`, on a pseudo-terminal, and returns what the terminal showed.
fn on_a_terminal(cmd: &Command) -> String {
    let (mut unset, mut set) = (String::new(), String::new());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => set += &format!("{}='{}' ", k.display(), v.display()),
            None => unset += &format!("-u {} ", k.display()),
        }
    }
    let mut line = format!("{unset}{set}");
    line = format!("env {line}{}", cmd.get_program().display());
    for a in cmd.get_args() {
        line += &format!(" '{}'", a.display());
    }
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run script (util-linux): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fatal_errors_are_one_event_and_colour_is_for_terminals_without_no_color() {
    // Not a terminal: two plain lines, text or JSON.
    let out = failing_plugin("text", &[]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "a warning and the error, one line each:\n{text}"
    );
    assert!(
        lines[0].contains(" WARN ") && lines[0].contains("TOLLGATE_LOG is not a valid filter"),
        "{text}"
    );
    assert!(
        lines[1].contains(" ERROR ") && lines[1].contains("bad agent address \"nope\""),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "{text:?}");

    let out = failing_plugin("json", &[]).output().unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    let levels: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["level"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(levels, ["WARN", "ERROR"], "{text}");

    // A format variable that is not a format: one line naming the variable.
    let out = Command::new(binary("tollgate"))
        .args(["--socket", "/nonexistent/never.socket"])
        .env("TOLLGATE_LOG_FORMAT", "xml")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("TOLLGATE_LOG_FORMAT=\"xml\": expected `text` or `json`"),
        "{text}"
    );

    // A terminal gets colour, unless NO_COLOR says otherwise; JSON never has any.
    let coloured = on_a_terminal(&failing_plugin("text", &[]));
    assert!(
        coloured.contains("\u{1b}["),
        "no colour on a terminal: {coloured:?}"
    );
    assert!(coloured.contains("bad agent address"), "{coloured:?}");
    for (format, env) in [("text", [("NO_COLOR", "1")]), ("json", [("NO_COLOR", "")])] {
        let plain = on_a_terminal(&failing_plugin(format, &env));
        assert!(plain.contains("bad agent address"), "{plain:?}");
        assert!(!plain.contains('\u{1b}'), "{format} {env:?}: {plain:?}");
    }
}
