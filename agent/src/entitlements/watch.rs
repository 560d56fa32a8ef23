//! `tollgate.v1.Entitlements/Watch`: a plugin subscribes with the features it enforces and gets a
//! full snapshot first, then every change as it happens (a sync that moved a value, or local usage
//! that moved a balance). A watcher that falls behind gets a fresh snapshot instead of the changes
//! it missed.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::entitlements_server::Entitlements;
use tollgate_proto::v1::{EntitlementUpdate, LookupRequest, LookupResponse, WatchRequest};
use tonic::{Request, Response, Status};

use super::sync::Syncer;
use super::{Cache, now_ms, to_wire};

/// The Entitlements service.
pub struct WatchService {
    cache: Arc<Cache>,
    /// Asks the syncer for a full refresh (new features).
    refresh: mpsc::UnboundedSender<()>,
    /// For lookups of subjects not seen yet.
    syncer: Syncer,
}

impl WatchService {
    /// A service over `cache`.
    pub fn new(cache: Arc<Cache>, refresh: mpsc::UnboundedSender<()>, syncer: Syncer) -> Self {
        WatchService {
            cache,
            refresh,
            syncer,
        }
    }
}

fn snapshot(cache: &Cache, features: &[String]) -> EntitlementUpdate {
    EntitlementUpdate {
        snapshot: true,
        entries: cache
            .all()
            .iter()
            .filter(|v| features.is_empty() || features.contains(&v.feature))
            .map(to_wire)
            .collect(),
        removed: Vec::new(),
        sent_at_unix_ms: now_ms(),
    }
}

#[tonic::async_trait]
impl Entitlements for WatchService {
    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        let req = request.into_inner();
        let value =
            super::http::lookup(&self.cache, &self.syncer, &req.subject, &req.feature_key).await;
        Ok(Response::new(match value {
            Some(v) if v.kind != "none" => LookupResponse {
                found: true,
                entitlement: Some(to_wire(&v)),
            },
            _ => LookupResponse {
                found: false,
                entitlement: None,
            },
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<EntitlementUpdate, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        if self.cache.track_features(&req.feature_keys) {
            let _ = self.refresh.send(());
        }
        tracing::info!(client = %req.client, features = ?req.feature_keys, "entitlement watcher connected");
        let mut changes = self.cache.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let cache = self.cache.clone();
        let features = req.feature_keys;
        tokio::spawn(async move {
            if tx.send(Ok(snapshot(&cache, &features))).await.is_err() {
                return;
            }
            loop {
                let update = match changes.recv().await {
                    Ok(entries) => EntitlementUpdate {
                        snapshot: false,
                        entries: entries
                            .into_iter()
                            .filter(|e| features.is_empty() || features.contains(&e.feature_key))
                            .collect(),
                        removed: Vec::new(),
                        sent_at_unix_ms: now_ms(),
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => snapshot(&cache, &features),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if (update.snapshot || !update.entries.is_empty())
                    && tx.send(Ok(update)).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
