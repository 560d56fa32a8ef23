//! Kong's MsgPack-RPC framing: requests, responses and notifications as concatenated msgpack
//! values on a Unix stream, with no length prefix (reference/kong-protocols.md §1.4).
//!
//! [`Decoder`] turns a byte stream that arrives in arbitrary pieces into whole messages, read in
//! place: a [`Frame`] borrows its strings from the read buffer, so the `kong.log.serialize`
//! string a Step carries is never copied. [`encode_response`] and [`encode_notification`] write
//! the server's side; the replies of the hot path ([`Reply::Ret`], [`Reply::Call`]) are written
//! straight to bytes without building a value tree.

use rmpv::{Value, ValueRef};

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

/// One whole message at the head of the [`Decoder`]'s buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The message, borrowing from the buffer.
    pub value: ValueRef<'a>,
    /// Its length in bytes: pass it to [`Decoder::consume`] once done with `value`.
    pub len: usize,
}

/// Streaming msgpack decoder over a growable buffer: read into [`Decoder::read_space`], take out
/// every complete message with [`Decoder::peek`] and [`Decoder::consume`].
///
/// The buffer is plain initialised memory with a filled window `start..end`, so a socket can
/// read straight into it with no copy and no `unsafe`; the window moves back to the front when
/// it empties or runs out of room.
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Room kept free for one read.
const READ_CHUNK: usize = 16 * 1024;

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }
}

impl Decoder {
    /// Free space to read into: at least [`READ_CHUNK`] bytes, and at least as much as is already
    /// pending, so that a large message is re-parsed only a logarithmic number of times while it
    /// arrives. Report what was read with [`Decoder::filled`].
    pub fn read_space(&mut self) -> &mut [u8] {
        let want = READ_CHUNK.max(self.end - self.start);
        if self.buf.len() - self.end < want {
            // Slide the unread bytes to the front, then grow if that is not enough.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() - self.end < want {
                self.buf.resize(self.end + want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Decoder::read_space`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends bytes (for callers that do not read from a socket).
    pub fn extend(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = self.read_space();
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            self.filled(n);
            rest = &rest[n..];
        }
    }

    /// Bytes received and not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The message at the head of the buffer, `Ok(None)` if the buffer holds only part of one.
    /// The buffer is left as it is: call [`Decoder::consume`] with the frame's `len` after use.
    pub fn peek(&self) -> Result<Option<Frame<'_>>, WireError> {
        let pending = self.pending();
        if pending.is_empty() {
            return Ok(None);
        }
        let mut reader: &[u8] = pending;
        match rmpv::decode::read_value_ref(&mut reader) {
            Ok(value) => Ok(Some(Frame {
                value,
                len: pending.len() - reader.len(),
            })),
            Err(e) if is_eof(&e) => {
                if pending.len() > MAX_MESSAGE_BYTES {
                    Err(WireError::TooLarge)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(WireError::Malformed(e.to_string())),
        }
    }

    /// Drops the first `len` bytes (a frame that has been answered).
    pub fn consume(&mut self, len: usize) {
        self.start = (self.start + len).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
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

/// The result of one call, as the server hands it to the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Any value (instance info): the rare calls.
    Value(Value),
    /// `{"EventId": id, "Data": "ret"}`: the handler is done with this event.
    Ret {
        /// The event.
        event_id: i64,
    },
    /// `{"EventId": id, "Data": {"Method": method, "Args": args}}`: a PDK call for Kong to run.
    Call {
        /// The event.
        event_id: i64,
        /// PDK function, e.g. `kong.log.serialize`.
        method: &'static str,
        /// Its arguments.
        args: Vec<Value>,
    },
}

/// Appends `[1, msgid, error, result]`: exactly one of `error`/`result` is non-nil.
pub fn encode_response(out: &mut Vec<u8>, msgid: u64, result: &Result<Reply, String>) {
    // Writing into a Vec cannot fail: the results of the rmp writers are ignored throughout.
    let _ = rmp::encode::write_array_len(out, 4);
    let _ = rmp::encode::write_uint(out, 1);
    let _ = rmp::encode::write_uint(out, msgid);
    match result {
        Err(e) => {
            let _ = rmp::encode::write_str(out, e);
            let _ = rmp::encode::write_nil(out);
        }
        Ok(reply) => {
            let _ = rmp::encode::write_nil(out);
            write_reply(out, reply);
        }
    }
}

fn write_reply(out: &mut Vec<u8>, reply: &Reply) {
    match reply {
        Reply::Value(v) => {
            let _ = rmpv::encode::write_value(out, v);
        }
        Reply::Ret { event_id } => {
            step_head(out, *event_id);
            let _ = rmp::encode::write_str(out, "ret");
        }
        Reply::Call {
            event_id,
            method,
            args,
        } => {
            step_head(out, *event_id);
            let _ = rmp::encode::write_map_len(out, 2);
            let _ = rmp::encode::write_str(out, "Method");
            let _ = rmp::encode::write_str(out, method);
            let _ = rmp::encode::write_str(out, "Args");
            let _ = rmp::encode::write_array_len(out, args.len() as u32);
            for arg in args {
                let _ = rmpv::encode::write_value(out, arg);
            }
        }
    }
}

/// `{"EventId": id, "Data": ` — the value of `Data` follows.
fn step_head(out: &mut Vec<u8>, event_id: i64) {
    let _ = rmp::encode::write_map_len(out, 2);
    let _ = rmp::encode::write_str(out, "EventId");
    let _ = rmp::encode::write_sint(out, event_id);
    let _ = rmp::encode::write_str(out, "Data");
}

/// Appends `[2, label, args]`, e.g. the `serverPid` notice Kong uses to spot a restarted server.
pub fn encode_notification(out: &mut Vec<u8>, label: &str, args: Value) {
    let msg = Value::Array(vec![Value::from(2), Value::from(label), args]);
    let _ = rmpv::encode::write_value(out, &msg);
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
                d.extend(piece);
                while let Some(frame) = d.peek().unwrap() {
                    got.push(frame.value.to_owned());
                    let len = frame.len;
                    d.consume(len);
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "split at {split}");
        }
    }

    #[test]
    fn a_message_larger_than_one_read_grows_the_buffer_and_stays_whole() {
        let big = Value::from("y".repeat(100_000));
        let bytes = encoded(&big);
        let mut d = Decoder::default();
        let mut got = None;
        for piece in bytes.chunks(5000) {
            let space = d.read_space();
            space[..piece.len()].copy_from_slice(piece);
            d.filled(piece.len());
            if let Some(frame) = d.peek().unwrap() {
                got = Some(frame.value.to_owned());
                let len = frame.len;
                d.consume(len);
            }
        }
        assert_eq!(got, Some(big));
        assert!(d.pending().is_empty());
    }

    #[test]
    fn hot_path_replies_are_the_same_bytes_as_the_value_tree() {
        let step = |event_id: i64, data: Value| {
            Value::Map(vec![
                (Value::from("EventId"), Value::from(event_id)),
                (Value::from("Data"), data),
            ])
        };
        let response = |result: Value| {
            encoded(&Value::Array(vec![
                Value::from(1),
                Value::from(42),
                Value::Nil,
                result,
            ]))
        };
        let mut out = Vec::new();
        encode_response(&mut out, 42, &Ok(Reply::Ret { event_id: 70_000 }));
        assert_eq!(out, response(step(70_000, Value::from("ret"))));

        let mut out = Vec::new();
        let args = vec![Value::from(429), Value::from("x")];
        encode_response(
            &mut out,
            42,
            &Ok(Reply::Call {
                event_id: 3,
                method: "kong.response.exit",
                args: args.clone(),
            }),
        );
        let call = Value::Map(vec![
            (Value::from("Method"), Value::from("kong.response.exit")),
            (Value::from("Args"), Value::Array(args)),
        ]);
        assert_eq!(out, response(step(3, call)));

        let mut out = Vec::new();
        encode_response(&mut out, 42, &Err("no plugin instance #9".into()));
        let expected = encoded(&Value::Array(vec![
            Value::from(1),
            Value::from(42),
            Value::from("no plugin instance #9"),
            Value::Nil,
        ]));
        assert_eq!(out, expected);
    }
}
