//! Wiring: opens the buffer, starts the flushers, the sources (gRPC ingest, OTLP, and the HTTP
//! intakes on the admin HTTP server), and shuts them down in order (stop accepting, deliver for
//! up to the grace period, commit, exit).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tollgate_proto::v1::entitlements_server::EntitlementsServer;
use tollgate_proto::v1::ingest_server::IngestServer;
use tollgate_telemetry::redact;
use tracing::Instrument;

use crate::admin::{AdminState, router};
use crate::buffer::DiskBuffer;
use crate::config::Config;
use crate::entitlements::http::EntitlementApi;
use crate::entitlements::sync::Syncer;
use crate::entitlements::watch::WatchService;
use crate::entitlements::{self, Cache};
use crate::metrics::Metrics;
use crate::sink::{Flusher, client};
use crate::sources::grpc::IngestService;
use crate::sources::kong_http_log::KongHttpLog;
use crate::sources::otlp_logs::OtlpLogs;
use crate::sources::{self, Intake};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer;

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let (buffer, report, mut new_queues) =
        DiskBuffer::open(&config.buffer.path, config.buffer.max_bytes)
            .with_context(|| format!("opening the buffer at {}", config.buffer.path.display()))?;
    if report.quarantined.is_some() {
        metrics.quarantined.inc();
    }
    tracing::info!(path = %config.buffer.path.display(), resumed_events = report.resumed_events, "buffer open");

    let (stop_tx, stop_rx) = watch::channel(false);
    let http = client(&config).context("building the HTTP client")?;

    // Entitlements: the cache, its syncer, the Watch service and the local endpoint.
    let mut entitlements = None;
    if config.entitlements.enabled {
        let (cache, new_subjects) = Cache::new(
            &config.entitlements.features,
            config.entitlements.stale_after_ms as i64,
        );
        let cache = Arc::new(cache);
        let base = if config.entitlements.url.is_empty() {
            config.destination.url.clone()
        } else {
            config.entitlements.url.clone()
        };
        let syncer = Syncer {
            cache: cache.clone(),
            client: http.clone(),
            base,
            token: config
                .entitlements
                .token
                .clone()
                .or_else(|| config.destination.token.clone()),
            interval: std::time::Duration::from_millis(config.entitlements.sync_interval_ms),
        };
        let (refresh_tx, refresh_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(
            syncer
                .clone()
                .run(new_subjects, refresh_rx, stop_rx.clone()),
        );
        entitlements = Some((cache, syncer, refresh_tx));
    }
    let cache = entitlements.as_ref().map(|(c, _, _)| c.clone());
    // One flusher per queue, now and for every destination a plugin names later.
    let flusher_for = {
        let (http, config, buffer, metrics, cache) = (
            http.clone(),
            config.clone(),
            buffer.clone(),
            metrics.clone(),
            cache.clone(),
        );
        move |id: u32| {
            Flusher::for_queue(
                id,
                http.clone(),
                config.clone(),
                buffer.clone(),
                metrics.clone(),
            )
            .map(|mut f| {
                f.entitlements = cache.clone();
                // A plugin's own `api_token` is a secret like `destination.token`.
                if let Some(token) = &f.target.token {
                    redact::hide(token);
                }
                f
            })
        }
    };
    let mut flushers = JoinSet::new();
    for id in buffer.queue_ids() {
        if let Some(f) = flusher_for(id) {
            let span = destination_span(&f);
            span.in_scope(|| tracing::info!("delivering"));
            flushers.spawn(f.run(stop_rx.clone()).instrument(span));
        }
    }

    // gRPC: TCP and/or Unix socket, both stopping on the same signal.
    let (grpc_stop_tx, grpc_stop_rx) = watch::channel(false);
    let mut ingest = IngestService::new(buffer.clone(), metrics.clone());
    if let Some(c) = &cache {
        ingest = ingest.with_entitlements(c.clone());
    }
    let service = IngestServer::new(ingest).max_decoding_message_size(64 << 20);
    let watch_service = entitlements.as_ref().map(|(c, syncer, refresh)| {
        EntitlementsServer::new(WatchService::new(
            c.clone(),
            refresh.clone(),
            syncer.clone(),
        ))
    });
    let mut servers = JoinSet::new();
    if !config.grpc.listen.is_empty() {
        let listener = TcpListener::bind(&config.grpc.listen)
            .await
            .with_context(|| format!("grpc.listen: cannot bind {}", config.grpc.listen))?;
        tracing::info!(addr = %config.grpc.listen, "gRPC ingest listening");
        let mut stop = grpc_stop_rx.clone();
        servers.spawn(
            tonic::transport::Server::builder()
                .add_service(service.clone())
                .add_optional_service(watch_service.clone())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
        );
    }
    if let Some(path) = &config.grpc.unix_socket {
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("grpc.unix_socket: removing stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("grpc.unix_socket: cannot bind {}", path.display()))?;
        tracing::info!(path = %path.display(), "gRPC ingest listening");
        let mut stop = grpc_stop_rx.clone();
        servers.spawn(
            tonic::transport::Server::builder()
                .add_service(service.clone())
                .add_optional_service(watch_service.clone())
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
        );
    }

    let ready = Arc::new(AtomicBool::new(true));
    let mut admin = router(AdminState {
        buffer: buffer.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
    });
    // The push sources: HTTP ones on the same server, OTLP on its own gRPC port.
    let intake = Intake {
        buffer: buffer.clone(),
        metrics: metrics.clone(),
        entitlements: cache.clone(),
    };
    if config.sources.http.enabled {
        admin = admin.merge(sources::http::router(intake.clone(), &config.sources.http));
        tracing::info!(addr = %config.http.listen, "HTTP intake (OpenMeter API) on /api/v1/events and /api/v3/openmeter/events");
    }
    let kong = &config.sources.kong_http_log;
    if kong.enabled {
        let rules = kong.rules().map_err(anyhow::Error::msg)?;
        admin = admin.merge(sources::kong_http_log::router(
            intake.clone(),
            KongHttpLog {
                rules: Arc::new(rules),
                source: kong.source().into(),
                token: kong.token.as_deref().map(Arc::from),
                max_body_bytes: kong.max_body_bytes,
            },
        ));
        tracing::info!(addr = %config.http.listen, source = %kong.source(), "Kong http-log intake on /kong/http-log");
    }
    let otlp = &config.sources.otlp_logs;
    if otlp.enabled {
        let listener = TcpListener::bind(&otlp.listen)
            .await
            .with_context(|| format!("sources.otlp_logs.listen: cannot bind {}", otlp.listen))?;
        tracing::info!(addr = %otlp.listen, "OTLP/gRPC logs intake listening");
        let mut stop = grpc_stop_rx.clone();
        let service = LogsServiceServer::new(OtlpLogs::new(intake.clone(), otlp.clone()))
            .max_decoding_message_size(64 << 20);
        servers.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                }),
        );
    }
    // The pull sources: tasks of their own, stopping with the other sources.
    let mut pulls = sources::spawn_pull_sources(&config.sources, &intake, &grpc_stop_rx)?;
    if let Some((cache, syncer, _)) = &entitlements {
        admin = admin.merge(entitlements::http::router(EntitlementApi {
            cache: cache.clone(),
            syncer: syncer.clone(),
        }));
    }
    let admin_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot bind {}", config.http.listen))?;
    tracing::info!(addr = %config.http.listen, "admin HTTP listening");
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let spawner = {
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut flushers = JoinSet::new();
            while let Some(id) = new_queues.recv().await {
                if let Some(f) = flusher_for(id) {
                    let span = destination_span(&f);
                    span.in_scope(|| tracing::info!("new destination"));
                    flushers.spawn(f.run(stop_rx.clone()).instrument(span));
                }
            }
            flushers.join_all().await;
        })
    };

    shutdown.await;
    tracing::info!("shutting down: no new batches; delivering what is queued");
    ready.store(false, Ordering::Release);
    let _ = grpc_stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    // A pull source mid-request stops at its next await; past a moment it is aborted (safe: its
    // ids are derived and its progress is saved only after its events are stored).
    let drained = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while pulls.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        pulls.abort_all();
    }
    let _ = stop_tx.send(true);
    while flushers.join_next().await.is_some() {}
    spawner.abort();
    let _ = admin_task.await;
    buffer.commit().await.context("final commit")?;
    tracing::info!(left_on_disk = buffer.depth(), "stopped");
    Ok(())
}

/// The span a flusher's log lines carry: which queue and where it delivers (password blanked).
fn destination_span(f: &Flusher) -> tracing::Span {
    tracing::info_span!("destination", queue = f.queue, url = %redact::url(&f.target.url))
}
