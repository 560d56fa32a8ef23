//! The plugin's hot path to `Ingest/Publish`: usage events written straight to protobuf bytes
//! once, when they are made, and batches sent as those bytes.
//!
//! An [`EncodedEvent`] is the wire form of one [`UsageEvent`](crate::UsageEvent), built with
//! prost's field encoders from borrowed strings: one allocation per event instead of six, and
//! nothing to re-encode (or clone) when a batch is sent again after a reconnect.
//! [`encode_batch`] concatenates them into an [`EventBatch`](crate::EventBatch) message, and
//! [`publish`] streams such pre-encoded batches with a codec that writes the bytes as they are.
//! The agent decodes them as ordinary `EventBatch`es: the `.proto` stays the only contract.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::tokio_stream::Stream;
use tonic_prost::ProstDecoder;

use crate::{BatchAck, Destination};

/// `UsageEvent` field numbers.
const ID: u32 = 1;
const SOURCE: u32 = 2;
const TYPE: u32 = 3;
const SUBJECT: u32 = 4;
const TIME: u32 = 5;
const DATA: u32 = 6;
/// `EventBatch` field numbers.
const SEQUENCE: u32 = 1;
const EVENTS: u32 = 2;
const DESTINATION: u32 = 3;

/// One `tollgate.v1.UsageEvent`, already encoded. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent(Bytes);

/// The fields of a usage event, borrowed (see `UsageEvent` in the `.proto`).
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    /// CloudEvents `id`.
    pub id: &'a str,
    /// CloudEvents `source`.
    pub source: &'a str,
    /// CloudEvents `type`.
    pub r#type: &'a str,
    /// The billed subject.
    pub subject: &'a str,
    /// RFC 3339 time.
    pub time: &'a str,
    /// The `data` object as JSON.
    pub data: &'a [u8],
}

/// Bytes of a length-delimited field of `len` bytes (the tags here are all below 16: a one-byte
/// key).
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_bytes_field(buf: &mut BytesMut, tag: u32, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

impl EncodedEvent {
    /// Encodes one event.
    pub fn new(f: EventFields<'_>) -> EncodedEvent {
        let fields: [(u32, &[u8]); 6] = [
            (ID, f.id.as_bytes()),
            (SOURCE, f.source.as_bytes()),
            (TYPE, f.r#type.as_bytes()),
            (SUBJECT, f.subject.as_bytes()),
            (TIME, f.time.as_bytes()),
            (DATA, f.data),
        ];
        // proto3 leaves empty fields out.
        let len = fields
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(_, v)| delimited_len(v.len()))
            .sum();
        let mut buf = BytesMut::with_capacity(len);
        for (tag, value) in fields {
            put_bytes_field(&mut buf, tag, value);
        }
        EncodedEvent(buf.freeze())
    }

    /// Its size on the wire (without the batch's field header).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether every field is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded `UsageEvent`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Encodes a `tollgate.v1.EventBatch` from pre-encoded events.
pub fn encode_batch(
    sequence: u64,
    events: &[EncodedEvent],
    destination: Option<&Destination>,
) -> Bytes {
    let len = 1
        + encoded_len_varint(sequence)
        + events.iter().map(|e| delimited_len(e.len())).sum::<usize>()
        + destination.map_or(0, |d| delimited_len(d.encoded_len()));
    let mut buf = BytesMut::with_capacity(len);
    if sequence != 0 {
        encode_key(SEQUENCE, WireType::Varint, &mut buf);
        encode_varint(sequence, &mut buf);
    }
    for event in events {
        // A repeated message field is written even when the message is empty.
        encode_key(EVENTS, WireType::LengthDelimited, &mut buf);
        encode_varint(event.len() as u64, &mut buf);
        buf.put_slice(event.as_bytes());
    }
    if let Some(d) = destination {
        encode_key(DESTINATION, WireType::LengthDelimited, &mut buf);
        encode_varint(d.encoded_len() as u64, &mut buf);
        // Encoding into a buffer with room for it cannot fail.
        let _ = d.encode(&mut buf);
    }
    buf.freeze()
}

/// The `Publish` codec for pre-encoded batches: writes them as they are, reads `BatchAck`s.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreEncodedCodec;

/// Writes a pre-encoded message.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreEncodedEncoder;

impl Encoder for PreEncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = BatchAck;
    type Encoder = PreEncodedEncoder;
    type Decoder = ProstDecoder<BatchAck>;

    fn encoder(&mut self) -> PreEncodedEncoder {
        PreEncodedEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<BatchAck> {
        ProstDecoder::default()
    }
}

/// Opens `tollgate.v1.Ingest/Publish` on `channel`, sending the pre-encoded `EventBatch`es of
/// `batches` and returning the stream of acks.
pub async fn publish<S>(
    channel: tonic::transport::Channel,
    batches: S,
) -> Result<tonic::codec::Streaming<BatchAck>, Status>
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("agent not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/tollgate.v1.Ingest/Publish");
    let response = grpc
        .streaming(tonic::Request::new(batches), path, PreEncodedCodec)
        .await?;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventBatch, UsageEvent};

    #[test]
    fn events_and_batches_decode_as_the_generated_messages() {
        let data = br#"{"request_method":"GET"}"#;
        let fields = EventFields {
            id: "f4d9aac1ca404e4983960dbd4835c317",
            source: "kong-gateway/host",
            r#type: "kong.api_request",
            subject: "consumer:5d1b",
            time: "2026-11-24T10:00:00.123Z",
            data,
        };
        let event = EncodedEvent::new(fields);
        let expected = UsageEvent {
            id: fields.id.into(),
            source: fields.source.into(),
            r#type: fields.r#type.into(),
            subject: fields.subject.into(),
            time: fields.time.into(),
            data: data.to_vec(),
        };
        assert_eq!(event.as_bytes(), expected.encode_to_vec());

        // A field left empty is left out, as prost does.
        let sparse = EncodedEvent::new(EventFields {
            subject: "",
            ..fields
        });
        let expected_sparse = UsageEvent {
            subject: String::new(),
            ..expected.clone()
        };
        assert_eq!(sparse.as_bytes(), expected_sparse.encode_to_vec());

        let destination = Destination {
            ingest_endpoint: "https://billing.example/api/v1/events".into(),
            api_token: "t".into(),
        };
        for (sequence, dest) in [(7, Some(&destination)), (0, None), (u64::MAX, None)] {
            let bytes = encode_batch(sequence, &[event.clone(), sparse.clone()], dest);
            let batch = EventBatch {
                sequence,
                events: vec![expected.clone(), expected_sparse.clone()],
                destination: dest.cloned(),
            };
            assert_eq!(bytes, batch.encode_to_vec(), "sequence {sequence}");
            assert_eq!(EventBatch::decode(bytes).unwrap(), batch);
        }
        let big = vec![b'x'; 300_000];
        let event = EncodedEvent::new(EventFields {
            data: &big,
            ..fields
        });
        let decoded = UsageEvent::decode(event.as_bytes()).unwrap();
        assert_eq!(decoded.data.len(), 300_000);
    }
}
