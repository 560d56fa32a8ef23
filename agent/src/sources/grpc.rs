//! The gRPC source: `tollgate.v1.Ingest/Publish`. Each batch is validated, appended to its
//! destination's queue in the disk buffer, and acked `DURABLE` only after the group commit that
//! covers it. Batches of one stream are appended in arrival order without waiting for each
//! other's fsync, so one stream with several batches in flight shares commits too.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::batch_ack::Status;
use tollgate_proto::v1::ingest_server::Ingest;
use tollgate_proto::{BatchAck, EventBatch, UsageEvent};
use tonic::{Request, Response, Status as RpcStatus, Streaming};

use super::{full_warning, high_water_warning};
use crate::buffer::{Append, DiskBuffer, PluginDestination};
use crate::entitlements::Cache;
use crate::metrics::Metrics;

/// The Ingest service.
pub struct IngestService {
    buffer: Arc<DiskBuffer>,
    metrics: Arc<Metrics>,
    entitlements: Option<Arc<Cache>>,
}

impl IngestService {
    /// A service storing into `buffer`.
    pub fn new(buffer: Arc<DiskBuffer>, metrics: Arc<Metrics>) -> Self {
        IngestService {
            buffer,
            metrics,
            entitlements: None,
        }
    }

    /// Also tells the entitlement cache which subjects send traffic and what usage is buffered.
    pub fn with_entitlements(mut self, cache: Arc<Cache>) -> Self {
        self.entitlements = Some(cache);
        self
    }
}

/// Why a batch is malformed, naming the event and field; `None` when it is fine.
pub fn validate(events: &[UsageEvent]) -> Option<String> {
    for (i, e) in events.iter().enumerate() {
        for (field, value) in [
            ("id", &e.id),
            ("source", &e.source),
            ("type", &e.r#type),
            ("subject", &e.subject),
        ] {
            if value.is_empty() {
                return Some(format!("event {i} (id {:?}): {field} is empty", e.id));
            }
        }
        if !e.time.is_empty() && chrono::DateTime::parse_from_rfc3339(&e.time).is_err() {
            return Some(format!(
                "event {i} (id {:?}): time {:?} is not RFC 3339",
                e.id, e.time
            ));
        }
        if !e.data.is_empty() {
            match serde_json::from_slice::<serde_json::Value>(&e.data) {
                Ok(serde_json::Value::Object(_)) => {}
                Ok(_) => {
                    return Some(format!(
                        "event {i} (id {:?}): data is not a JSON object",
                        e.id
                    ));
                }
                Err(err) => {
                    return Some(format!(
                        "event {i} (id {:?}): data is not JSON: {err}",
                        e.id
                    ));
                }
            }
        }
    }
    None
}

fn ack(sequence: u64, status: Status, reason: impl Into<String>) -> BatchAck {
    BatchAck {
        sequence,
        status: status.into(),
        reason: reason.into(),
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type PublishStream = Pin<Box<dyn Stream<Item = Result<BatchAck, RpcStatus>> + Send>>;

    async fn publish(
        &self,
        request: Request<Streaming<EventBatch>>,
    ) -> Result<Response<Self::PublishStream>, RpcStatus> {
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<BatchAck, RpcStatus>>(64);
        let buffer = self.buffer.clone();
        let metrics = self.metrics.clone();
        let entitlements = self.entitlements.clone();
        tokio::spawn(async move {
            while let Some(batch) = batches.next().await {
                let Ok(batch) = batch else { break };
                let n = batch.events.len() as u64;
                metrics.received.inc_by(n);
                if let Some(reason) = validate(&batch.events) {
                    metrics.rejected.inc_by(n);
                    tracing::warn!(sequence = batch.sequence, %reason, "rejected a malformed batch");
                    let _ = tx
                        .send(Ok(ack(batch.sequence, Status::Rejected, reason)))
                        .await;
                    continue;
                }
                let dest = batch
                    .destination
                    .as_ref()
                    .filter(|d| !d.ingest_endpoint.is_empty())
                    .map(|d| PluginDestination {
                        endpoint: d.ingest_endpoint.clone(),
                        token: d.api_token.clone(),
                    });
                let stored = buffer.queue_for(dest.as_ref()).and_then(|q| {
                    buffer.append(q, &batch.events, chrono::Utc::now().timestamp_millis())
                });
                match stored {
                    Ok(Append::Stored) => {
                        high_water_warning(&buffer);
                        if let Some(cache) = &entitlements {
                            for e in &batch.events {
                                cache.observe(&e.subject);
                            }
                            cache.account(
                                batch.events.iter().map(|e| {
                                    (e.subject.as_str(), e.r#type.as_str(), e.data.as_slice())
                                }),
                                false,
                            );
                        }
                        let buffer = buffer.clone();
                        let metrics = metrics.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let reply = match buffer.commit().await {
                                Ok(()) => {
                                    metrics.durable.inc_by(n);
                                    ack(batch.sequence, Status::Durable, "")
                                }
                                // Not durable: the plugin keeps the batch and resends it.
                                Err(e) => return tracing::error!(error = %e, "commit failed"),
                            };
                            let _ = tx.send(Ok(reply)).await;
                        });
                    }
                    Ok(Append::Full) => {
                        metrics.dropped.inc_by(n);
                        full_warning(&buffer);
                        let _ = tx
                            .send(Ok(ack(
                                batch.sequence,
                                Status::Full,
                                "agent disk buffer is full",
                            )))
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "append failed");
                        let _ = tx.send(Err(RpcStatus::unavailable(e.to_string()))).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
