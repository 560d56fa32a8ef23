//! Kong's protocol behaviours against the real `tollgate` binary (reference/kong-protocols.md
//! §1.4–§1.9): the dump Kong validates, instances and config changes, Steps scattered across
//! pooled connections under concurrency, restarts, and bad input that must not stop the server.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rmpv::Value;
use serde_json::json;
use tollgate_e2e::kong::pdk::RequestPdk;
use tollgate_e2e::kong::process::{PluginServer, query_info};
use tollgate_e2e::kong::rpc::RpcError;
use tollgate_e2e::kong::serialize::{KongRequest, KongVersion};
use tollgate_e2e::kong::worker::{PhaseOutcome, Worker};

const BOB: &str = "0b7e4c1a-9d2f-4e3b-8a6c-5f4e3d2c1b0a";

fn request(i: usize) -> KongRequest {
    KongRequest::get(KongVersion::ALL[i % 5], &format!("/orders/{i}")).with_consumer(BOB, "bob")
}

#[test]
fn dump_passes_kongs_checks() {
    for flag in ["-dump", "--dump"] {
        let info = query_info(&tollgate_bin(), &[flag]).unwrap();
        assert_eq!(info.protocol, "MsgPack:1");
        assert_eq!(info.name, "tollgate");
        assert_eq!(
            info.phases,
            vec!["log"],
            "metering costs one round trip per request: log only"
        );
        let config = &info.schema["fields"][1]["config"]["fields"];
        let names: Vec<&str> = config
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_object()?.keys().next().map(String::as_str))
            .collect();
        for kong_field in [
            "meter_api_requests",
            "meter_ai_token_usage",
            "subject",
            "attributes",
            "ingest_endpoint",
            "api_token",
            "queue",
        ] {
            assert!(
                names.contains(&kong_field),
                "{kong_field} missing from {names:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_workers_with_scattered_steps_meter_every_request() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let plugin = Arc::new(metering_plugin(json!({})));
    let per_worker = 150;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let socket = dir.path().join("tollgate.socket");
        let plugin = plugin.clone();
        tasks.push(tokio::spawn(async move {
            let worker = Arc::new(Worker::new(socket));
            worker.rpc().set_scatter(true);
            // Several requests in flight per worker, as nginx runs many timers at once.
            let mut inner = Vec::new();
            for lane in 0..3 {
                let worker = worker.clone();
                let plugin = plugin.clone();
                inner.push(tokio::spawn(async move {
                    for i in (lane..per_worker).step_by(3) {
                        let req = request(w * 1000 + i);
                        let out = worker
                            .run_phase(
                                &plugin,
                                "log",
                                &RequestPdk {
                                    request: &req,
                                    phase: "log",
                                },
                            )
                            .await
                            .unwrap();
                        assert_eq!(out, PhaseOutcome::Returned);
                    }
                }));
            }
            for t in inner {
                t.await.unwrap();
            }
            assert!(
                worker.rpc().idle_connections() >= 2,
                "connections are pooled and reused"
            );
            worker
                .stats
                .starts
                .load(std::sync::atomic::Ordering::Relaxed)
        }));
    }
    let mut starts = 0;
    for t in tasks {
        starts += t.await.unwrap();
    }
    let events = agent.wait_for(4 * per_worker).await;
    assert_eq!(events.len(), 4 * per_worker);
    let mut ids: Vec<_> = events.iter().map(|e| e.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4 * per_worker, "every id distinct");
    assert!(
        starts >= 4,
        "one instance per worker at least, got {starts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_starts_a_new_instance_and_closes_the_old() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let mut plugin = metering_plugin(json!({"subject": {"look_up_value_in": "consumer"}}));
    let old = worker.instance_id(&plugin).await.unwrap();
    let req = request(1).with_header("x-tenant", "t-1");
    worker
        .run_phase(
            &plugin,
            "log",
            &RequestPdk {
                request: &req,
                phase: "log",
            },
        )
        .await
        .unwrap();

    plugin.seq += 1;
    plugin.config = json!({"subject": {"look_up_value_in": "header", "field": "x-tenant"}});
    let new = worker.instance_id(&plugin).await.unwrap();
    assert_ne!(old, new);
    assert_eq!(
        worker
            .stats
            .closes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    worker
        .run_phase(
            &plugin,
            "log",
            &RequestPdk {
                request: &req,
                phase: "log",
            },
        )
        .await
        .unwrap();
    let events = agent.wait_for(2).await;
    assert_eq!(events[0].subject, format!("consumer:{BOB}"));
    assert_eq!(events[1].subject, "t-1", "the new config is in force");

    // The closed instance is gone: Kong gets the error text that makes it restart instances.
    let err = worker
        .rpc()
        .call(
            "plugin.HandleEvent",
            vec![Value::Map(vec![
                (Value::from("InstanceId"), Value::from(old)),
                (Value::from("EventName"), Value::from("log")),
            ])],
        )
        .await
        .unwrap_err();
    assert!(err.is_no_plugin_instance(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("no plugin instance #{old}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_noticed_and_instances_restart() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let plugin = metering_plugin(json!({}));
    for i in 0..5 {
        let req = request(i);
        worker
            .run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            )
            .await
            .unwrap();
    }
    let first_pid = worker.server_pid().unwrap();
    assert_eq!(
        first_pid,
        u64::from(server.pid()),
        "serverPid notice carries the pid"
    );
    agent.wait_for(5).await;

    // Kong respawns a dead plugin server; the stale pooled connections fail once.
    server.kill();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    worker.rpc().drop_pool();
    for i in 5..10 {
        let req = request(i);
        worker
            .run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            )
            .await
            .unwrap();
    }
    assert_ne!(worker.server_pid().unwrap(), first_pid);
    let resets = worker
        .stats
        .pid_resets
        .load(std::sync::atomic::Ordering::Relaxed)
        + worker
            .stats
            .resets
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        resets >= 1,
        "the new server was noticed and instances restarted"
    );
    agent.wait_for(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_an_agent_that_is_down_or_full() {
    // Reserve a port, start the plugin against it with no agent there yet.
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], tollgate_e2e::stack::free_port()).into();
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &format!("http://{addr}"), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let plugin = metering_plugin(json!({}));
    for i in 0..20 {
        let req = request(i);
        let out = tokio::time::timeout(
            Duration::from_secs(2),
            worker.run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            ),
        )
        .await
        .expect("Kong never waits on the agent")
        .unwrap();
        assert_eq!(out, PhaseOutcome::Returned);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = RecordingAgent::start_on(&addr.to_string()).await;
    *agent.mode.lock().unwrap() = AgentMode::Full;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.events().len(), 0, "FULL stores nothing");
    *agent.mode.lock().unwrap() = AgentMode::Durable;
    let events = agent.wait_for(20).await;
    assert_eq!(events.len(), 20, "all delivered once the agent takes them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_queue_drops_the_oldest() {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], tollgate_e2e::stack::free_port()).into();
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(
        dir.path(),
        &format!("http://{addr}"),
        &["--queue-capacity", "10"],
    );
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let plugin = metering_plugin(json!({}));
    let mut sent = Vec::new();
    for i in 0..25 {
        let req = request(i);
        worker
            .run_phase(
                &plugin,
                "log",
                &RequestPdk {
                    request: &req,
                    phase: "log",
                },
            )
            .await
            .unwrap();
        sent.push(req);
    }
    let agent = RecordingAgent::start_on(&addr.to_string()).await;
    let events = agent.wait_for(10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.events().len(), 10, "capacity 10");
    let last: Vec<_> = sent[15..]
        .iter()
        .filter(|r| r.version != KongVersion::V3_4)
        .map(|r| r.request_id.clone())
        .collect();
    for id in last {
        assert!(
            events.iter().any(|e| e.id == id),
            "the newest events are kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let agent = RecordingAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _server = start_tollgate(dir.path(), &agent.url(), &[]);
    let worker = Worker::new(dir.path().join("tollgate.socket"));
    let rpc = worker.rpc();

    // Not msgpack / not a request: the connection is closed, nothing else is affected.
    let answer = rpc.send_raw(&[0xc1, 0xff, 0x00, 0x93]).await.unwrap();
    assert!(answer.is_empty(), "no reply to garbage: {answer:?}");
    // A message that claims 4 GiB: closed rather than buffered forever.
    let answer = rpc
        .send_raw(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'])
        .await
        .unwrap();
    assert!(answer.is_empty());

    // Unknown method.
    let err = rpc.call("plugin.Frobnicate", vec![]).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Server(m) if m.contains("unknown method plugin.Frobnicate")),
        "{err}"
    );

    // Invalid config: the error names the field.
    let bad = metering_plugin(json!({"subject": {"look_up_value_in": "header"}}));
    let err = worker.instance_id(&bad).await.unwrap_err();
    assert!(err.to_string().contains("config.subject.field"), "{err}");
    let bad = metering_plugin(json!({"meter_api_requests": "yes"}));
    let err = worker.instance_id(&bad).await.unwrap_err();
    assert!(
        err.to_string().contains("config.meter_api_requests"),
        "{err}"
    );

    // serialize returning something that is not JSON: the request is not metered, the event
    // still ends with `ret`.
    let plugin = metering_plugin(json!({}));
    struct NotJson;
    impl tollgate_e2e::kong::pdk::Pdk for NotJson {
        fn call(&self, _: &str, _: &[Value]) -> Option<Value> {
            Some(Value::from("<html>oops</html>"))
        }
    }
    assert_eq!(
        worker.run_phase(&plugin, "log", &NotJson).await.unwrap(),
        PhaseOutcome::Returned
    );
    struct Nil;
    impl tollgate_e2e::kong::pdk::Pdk for Nil {
        fn call(&self, _: &str, _: &[Value]) -> Option<Value> {
            None
        }
    }
    assert_eq!(
        worker.run_phase(&plugin, "log", &Nil).await.unwrap(),
        PhaseOutcome::Returned
    );
    // serialize as bin with invalid UTF-8 in it.
    struct BadUtf8;
    impl tollgate_e2e::kong::pdk::Pdk for BadUtf8 {
        fn call(&self, _: &str, _: &[Value]) -> Option<Value> {
            Some(Value::Binary(vec![b'{', 0xff, 0xfe, b'}']))
        }
    }
    assert_eq!(
        worker.run_phase(&plugin, "log", &BadUtf8).await.unwrap(),
        PhaseOutcome::Returned
    );

    // Huge headers (1 MiB) and non-UTF-8 header bytes escaped by cjson still meter.
    let huge = request(1)
        .with_header("x-blob", &"a".repeat(1 << 20))
        .with_header("x-latin1", "caf\u{e9}");
    worker
        .run_phase(
            &plugin,
            "log",
            &RequestPdk {
                request: &huge,
                phase: "log",
            },
        )
        .await
        .unwrap();
    let events = agent.wait_for(1).await;
    assert_eq!(events.len(), 1, "only the good request produced an event");
    assert_eq!(events[0].id, huge.request_id);

    // And a normal request still works on the same server.
    let req = request(2);
    worker
        .run_phase(
            &plugin,
            "log",
            &RequestPdk {
                request: &req,
                phase: "log",
            },
        )
        .await
        .unwrap();
    agent.wait_for(2).await;
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tollgate.socket");
    // A stale socket file from a crashed run.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let args = vec!["--kong-prefix".to_owned(), dir.path().display().to_string()];
    let _first =
        PluginServer::spawn(&tollgate_bin(), &args, &socket, Duration::from_secs(10)).unwrap();
    // A second server on the same live socket refuses, and says why.
    let out = std::process::Command::new(tollgate_bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by a running server"), "{stderr}");
}

#[test]
fn an_uncreatable_socket_path_is_a_clear_error() {
    let out = std::process::Command::new(tollgate_bin())
        .args(["--socket", "/proc/no/such/dir/tollgate.socket"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot serve /proc/no/such/dir/tollgate.socket"),
        "{stderr}"
    );
}

#[test]
fn a_bad_agent_address_is_a_clear_error() {
    let out = std::process::Command::new(tollgate_bin())
        .args(["--agent", "127.0.0.1:7070"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expected http://host:port or unix:"),
        "{stderr}"
    );
}

#[test]
fn replies_wait_for_a_kong_that_stops_reading_and_none_is_lost() {
    // Kong pipelines requests and reads nothing for a while: the replies (over a megabyte) fill
    // the socket buffer, the server must wait for room and then deliver every one, in order.
    const REQUESTS: u64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tollgate.socket");
    let args = vec!["--kong-prefix".to_owned(), dir.path().display().to_string()];
    let _server =
        PluginServer::spawn(&tollgate_bin(), &args, &socket, Duration::from_secs(10)).unwrap();
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        for msgid in 1..=REQUESTS {
            let mut out = Vec::new();
            tollgate_e2e::kong::msgpack::encode_request(
                &mut out,
                msgid,
                "plugin.HandleEvent",
                vec![Value::Map(vec![
                    (Value::from("InstanceId"), Value::from(999_999_999)),
                    (Value::from("EventName"), Value::from("log")),
                ])],
            );
            writer.write_all(&out).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut reader = std::io::BufReader::new(stream);
    let notice = rmpv::decode::read_value(&mut reader).unwrap();
    assert_eq!(
        notice[0],
        Value::from(2),
        "serverPid notice first: {notice}"
    );
    for msgid in 1..=REQUESTS {
        let reply = rmpv::decode::read_value(&mut reader).unwrap();
        assert_eq!(reply[1], Value::from(msgid), "replies in order");
        assert_eq!(
            reply[2].as_str(),
            Some("no plugin instance #999999999"),
            "{reply}"
        );
    }
    sender.join().unwrap();
}
