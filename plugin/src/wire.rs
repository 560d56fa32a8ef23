//! Kong's MsgPack-RPC framing: requests, responses and notifications as concatenated msgpack
//! values on a Unix stream, with no length prefix (reference/kong-protocols.md §1.4).
//!
//! [`Decoder`] turns a byte stream that arrives in arbitrary pieces into whole [`rmpv::Value`]s;
//! [`encode_response`] and [`encode_notification`] write the server's side.

use bytes::{Buf, BytesMut};
use rmpv::Value;

/// The largest single message we accept from Kong. A `kong.log.serialize()` string with large
/// headers is tens of KiB; anything near this is a broken peer, and the connection is closed.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Errors of the framing layer. Any of them ends the connection (Kong opens a new one).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not msgpack.
    #[error("malformed msgpack: {0}")]
    Malformed(String),
    /// A message grew past [`MAX_MESSAGE_BYTES`] without completing.
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
}

/// Streaming msgpack decoder over a growable buffer: feed it whatever `read` returned, take out
/// every complete value.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// The buffer to read into; keep at least `additional` bytes of room.
    pub fn buffer(&mut self, additional: usize) -> &mut BytesMut {
        self.buf.reserve(additional);
        &mut self.buf
    }

    /// The next complete value, `Ok(None)` if the buffer holds only part of one.
    pub fn next_value(&mut self) -> Result<Option<Value>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut reader: &[u8] = &self.buf;
        match rmpv::decode::read_value(&mut reader) {
            Ok(value) => {
                let used = self.buf.len() - reader.len();
                self.buf.advance(used);
                Ok(Some(value))
            }
            Err(e) if is_eof(&e) => {
                if self.buf.len() > MAX_MESSAGE_BYTES {
                    Err(WireError::TooLarge)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(WireError::Malformed(e.to_string())),
        }
    }
}

fn is_eof(e: &rmpv::decode::Error) -> bool {
    use rmpv::decode::Error;
    match e {
        Error::InvalidMarkerRead(io) | Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// Appends `[1, msgid, error, result]`: exactly one of `error`/`result` is non-nil.
pub fn encode_response(out: &mut Vec<u8>, msgid: u64, result: Result<Value, String>) {
    let (error, result) = match result {
        Ok(v) => (Value::Nil, v),
        Err(e) => (Value::from(e), Value::Nil),
    };
    let msg = Value::Array(vec![Value::from(1), Value::from(msgid), error, result]);
    write(out, &msg);
}

/// Appends `[2, label, args]`, e.g. the `serverPid` notice Kong uses to spot a restarted server.
pub fn encode_notification(out: &mut Vec<u8>, label: &str, args: Value) {
    let msg = Value::Array(vec![Value::from(2), Value::from(label), args]);
    write(out, &msg);
}

fn write(out: &mut Vec<u8>, msg: &Value) {
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(out, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn values_split_at_every_byte_boundary_come_out_whole() {
        let a = Value::Array(vec![
            Value::from(0),
            Value::from(7),
            Value::from("plugin.HandleEvent"),
            Value::Array(vec![Value::Map(vec![(
                Value::from("InstanceId"),
                Value::from(3),
            )])]),
        ]);
        let b = Value::from("x".repeat(300));
        let mut bytes = encoded(&a);
        bytes.extend(encoded(&b));
        for split in 0..bytes.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in [&bytes[..split], &bytes[split..]] {
                d.buffer(piece.len()).extend_from_slice(piece);
                while let Some(v) = d.next_value().unwrap() {
                    got.push(v);
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "split at {split}");
        }
    }
}
