//! The contract works over both transports the agent serves: an `EventBatch` goes through a real
//! tonic server and client, over a Unix socket and over TCP loopback, and its ack comes back
//! naming the batch's sequence number.

#![allow(clippy::unwrap_used)]

use std::pin::Pin;

use futures::Stream;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tollgate_proto::v1::batch_ack::Status;
use tollgate_proto::v1::ingest_client::IngestClient;
use tollgate_proto::v1::ingest_server::{Ingest, IngestServer};
use tollgate_proto::{BatchAck, EventBatch, UsageEvent};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status as RpcStatus, Streaming};

/// Acks each batch: durable when every event has an id, rejected (naming the event) otherwise.
struct AckingIngest;

#[tonic::async_trait]
impl Ingest for AckingIngest {
    type PublishStream = Pin<Box<dyn Stream<Item = Result<BatchAck, RpcStatus>> + Send>>;

    async fn publish(
        &self,
        request: Request<Streaming<EventBatch>>,
    ) -> Result<Response<Self::PublishStream>, RpcStatus> {
        let acks = request.into_inner().map(|batch| {
            let batch = batch?;
            let missing = batch.events.iter().position(|e| e.id.is_empty());
            Ok(match missing {
                None => BatchAck {
                    sequence: batch.sequence,
                    status: Status::Durable.into(),
                    reason: String::new(),
                },
                Some(i) => BatchAck {
                    sequence: batch.sequence,
                    status: Status::Rejected.into(),
                    reason: format!("event {i} has no id"),
                },
            })
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

fn event(id: &str) -> UsageEvent {
    UsageEvent {
        id: id.into(),
        source: "kong-test".into(),
        r#type: "kong.api_request".into(),
        subject: "consumer:4f3c".into(),
        time: "2026-11-24T10:00:00.000Z".into(),
        data: br#"{"request_method":"GET"}"#.to_vec(),
    }
}

/// Publishes two batches on one stream and returns the acks in order.
async fn publish_two(channel: Channel) -> Vec<BatchAck> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(EventBatch {
        sequence: 7,
        events: vec![event("a"), event("b")],
        destination: None,
    })
    .await
    .unwrap();
    tx.send(EventBatch {
        sequence: 8,
        events: vec![event("c"), event("")],
        destination: None,
    })
    .await
    .unwrap();
    drop(tx);
    let mut acks = client
        .publish(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(ack) = acks.next().await {
        out.push(ack.unwrap());
    }
    out
}

fn assert_acks(acks: &[BatchAck]) {
    assert_eq!(acks.len(), 2, "one ack per batch: {acks:?}");
    assert_eq!(acks[0].sequence, 7);
    assert_eq!(acks[0].status(), Status::Durable);
    assert_eq!(acks[1].sequence, 8);
    assert_eq!(acks[1].status(), Status::Rejected);
    assert_eq!(acks[1].reason, "event 1 has no id");
}

#[tokio::test]
async fn batch_round_trip_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(IngestServer::new(AckingIngest))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_acks(&publish_two(channel).await);
}

#[tokio::test]
async fn batch_round_trip_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(IngestServer::new(AckingIngest))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    assert_acks(&publish_two(channel).await);
}
