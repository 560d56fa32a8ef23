//! LLM token usage read from response bodies, as they stream through the filter: OpenAI (chat
//! completions and the Responses API) and Anthropic (Messages), in JSON and in SSE streams
//! (reference/collectors-wasm.md §B.7).
//!
//! * JSON: the body is kept (up to a bound) and read once at its end.
//! * SSE: never buffered whole; a line reader takes `data:` lines across chunk boundaries (any
//!   split, `\r\n` or `\n`) and keeps the last usage seen: OpenAI's usage chunk
//!   (`stream_options.include_usage`), `response.completed`, Anthropic's `message_start` (input
//!   tokens) and `message_delta` (output tokens).
//!
//! A stream that ends before its final usage (cut, or a client that did not ask for usage) is
//! reported with what was seen and `complete: false`: the caller counts and flags it, never
//! guessing tokens.

use serde::Deserialize;

/// Tokens of one LLM response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// `openai` or `anthropic`.
    pub provider: Option<&'static str>,
    /// The model the response names.
    pub model: Option<String>,
    /// Prompt (input) tokens.
    pub prompt_tokens: i64,
    /// Completion (output) tokens.
    pub completion_tokens: i64,
    /// Total tokens (the provider's, or prompt + completion).
    pub total_tokens: i64,
    /// Whether the final usage arrived (false: a stream cut before it, a body too large or not
    /// JSON).
    pub complete: bool,
}

#[derive(Deserialize, Default)]
struct RawTokens {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<i64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
}

#[derive(Deserialize, Default)]
struct RawMessage {
    model: Option<String>,
    usage: Option<RawTokens>,
}

/// One JSON body or SSE `data:` payload, any of the shapes.
#[derive(Deserialize, Default)]
struct RawBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    object: Option<String>,
    model: Option<String>,
    usage: Option<RawTokens>,
    /// Anthropic `message_start`.
    message: Option<RawMessage>,
    /// OpenAI Responses `response.completed`.
    response: Option<RawMessage>,
}

/// Reads one response body, chunk by chunk.
#[derive(Debug)]
pub struct UsageReader {
    sse: bool,
    max_bytes: usize,
    /// JSON: the body so far. SSE: the unfinished line.
    buf: Vec<u8>,
    overflow: bool,
    usage: Usage,
    /// Some usage was seen (a stream may report input tokens before the final usage).
    seen: bool,
}

impl UsageReader {
    /// A reader for a body of `content_type`; `max_bytes` bounds what is held (a JSON body, or
    /// one SSE line).
    pub fn new(content_type: &str, max_bytes: usize) -> UsageReader {
        let sse = content_type
            .split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"));
        UsageReader {
            sse,
            max_bytes,
            buf: Vec::new(),
            overflow: false,
            usage: Usage::default(),
            seen: false,
        }
    }

    /// Whether the body is an SSE stream.
    pub fn is_stream(&self) -> bool {
        self.sse
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.buf.len() + chunk.len() > self.max_bytes {
                self.overflow = true;
                self.buf = Vec::new();
            }
            if !self.overflow {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.overflow {
                // The end of a line too long to keep: skip it.
                self.overflow = false;
                self.buf.clear();
                continue;
            }
            if self.buf.is_empty() {
                self.sse_line(line);
            } else {
                self.buf.extend_from_slice(line);
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
        }
        if !rest.is_empty() && !self.overflow {
            if self.buf.len() + rest.len() > self.max_bytes {
                self.overflow = true;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(rest);
            }
        }
    }

    /// The body ended: the usage found, or `None` when the body is not an LLM response (a JSON
    /// body without usage, such as an error).
    pub fn finish(mut self) -> Option<Usage> {
        if self.sse {
            if !self.buf.is_empty() && !self.overflow {
                // A last line without its newline.
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            // A stream is an LLM response whether or not usage came: without it, it is flagged.
            return Some(self.usage);
        }
        if self.overflow {
            return Some(self.usage);
        }
        match serde_json::from_slice::<RawBody>(&self.buf) {
            Ok(body) => {
                self.apply(body);
                self.seen.then_some(self.usage)
            }
            // Not JSON (or cut): not something we can read usage from.
            Err(_) => None,
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" || data.is_empty() {
            return;
        }
        if let Ok(body) = serde_json::from_slice::<RawBody>(data) {
            self.apply(body);
        }
    }

    fn apply(&mut self, body: RawBody) {
        let u = &mut self.usage;
        match body.kind.as_deref() {
            // Anthropic streaming: input tokens first, output tokens in message_delta.
            Some("message_start") => {
                u.provider = Some("anthropic");
                if let Some(m) = body.message {
                    u.model = m.model.or(u.model.take());
                    if let Some(t) = m.usage {
                        u.prompt_tokens = t.prompt_tokens.unwrap_or(0);
                        u.completion_tokens = t.completion_tokens.unwrap_or(0);
                        u.total_tokens = u.prompt_tokens + u.completion_tokens;
                        self.seen = true;
                    }
                }
            }
            Some("message_delta") => {
                u.provider = Some("anthropic");
                if let Some(t) = body.usage {
                    if let Some(p) = t.prompt_tokens {
                        u.prompt_tokens = p;
                    }
                    u.completion_tokens = t.completion_tokens.unwrap_or(u.completion_tokens);
                    u.total_tokens = u.prompt_tokens + u.completion_tokens;
                    u.complete = true;
                    self.seen = true;
                }
            }
            // OpenAI Responses API.
            Some("response.completed") => {
                u.provider = Some("openai");
                if let Some(r) = body.response {
                    u.model = r.model.or(u.model.take());
                    if let Some(t) = r.usage {
                        set_final(u, t);
                        self.seen = true;
                    }
                }
            }
            // Anthropic's non-streaming message.
            Some("message") => {
                u.provider = Some("anthropic");
                u.model = body.model.or(u.model.take());
                if let Some(t) = body.usage {
                    set_final(u, t);
                    self.seen = true;
                }
            }
            _ => {
                if u.provider.is_none() {
                    u.provider = Some("openai");
                }
                if let Some(m) = body.model {
                    u.model = Some(m);
                }
                // Chat completions (JSON, or the stream's usage chunk), the Responses API's JSON.
                if let Some(t) = body.usage {
                    set_final(u, t);
                    self.seen = true;
                } else if body.object.as_deref() == Some("response")
                    && let Some(r) = body.response
                    && let Some(t) = r.usage
                {
                    set_final(u, t);
                    self.seen = true;
                }
            }
        }
    }
}

fn set_final(u: &mut Usage, t: RawTokens) {
    u.prompt_tokens = t.prompt_tokens.unwrap_or(0);
    u.completion_tokens = t.completion_tokens.unwrap_or(0);
    u.total_tokens = t
        .total_tokens
        .unwrap_or(u.prompt_tokens + u.completion_tokens);
    u.complete = true;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(content_type: &str, chunks: &[&[u8]]) -> Option<Usage> {
        let mut r = UsageReader::new(content_type, 1 << 20);
        for c in chunks {
            r.feed(c);
        }
        r.finish()
    }

    const OPENAI_SSE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}\r\n\r\ndata: [DONE]\r\n\r\n";

    const ANTHROPIC_SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn openai_and_anthropic_json() {
        let u = read(
            "application/json",
            &[br#"{"id":"c","object":"chat.completion","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":10,"#, br#""completion_tokens":5,"total_tokens":15}}"#],
        )
        .unwrap();
        assert_eq!(
            u,
            Usage {
                provider: Some("openai"),
                model: Some("gpt-4o".into()),
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                complete: true
            }
        );
        let u = read(
            "application/json; charset=utf-8",
            &[br#"{"id":"msg_1","type":"message","model":"claude-sonnet-4","content":[],"usage":{"input_tokens":9,"output_tokens":4}}"#],
        )
        .unwrap();
        assert_eq!(
            (
                u.provider,
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens
            ),
            (Some("anthropic"), 9, 4, 13)
        );
        // An error body has no usage: not an LLM completion.
        assert_eq!(
            read("application/json", &[br#"{"error":{"message":"x"}}"#]),
            None
        );
    }

    #[test]
    fn sse_split_at_every_byte_boundary_gives_the_same_usage() {
        for (body, want) in [
            (OPENAI_SSE, (Some("openai"), "gpt-4o-mini", 12, 7, 19)),
            (
                ANTHROPIC_SSE,
                (Some("anthropic"), "claude-sonnet-4", 25, 15, 40),
            ),
        ] {
            let bytes = body.as_bytes();
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    if j != i && j != bytes.len() && (j - i) % 7 != 0 {
                        continue; // every single split, and a second split at a spread of places
                    }
                    let u = read(
                        "text/event-stream",
                        &[&bytes[..i], &bytes[i..j], &bytes[j..]],
                    )
                    .unwrap();
                    assert_eq!(
                        (
                            u.provider,
                            u.model.as_deref().unwrap(),
                            u.prompt_tokens,
                            u.completion_tokens,
                            u.total_tokens,
                            u.complete
                        ),
                        (want.0, want.1, want.2, want.3, want.4, true),
                        "split at {i},{j}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_stream_cut_before_its_usage_is_flagged_incomplete() {
        let cut = OPENAI_SSE.find("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],").unwrap();
        let u = read("text/event-stream", &[&OPENAI_SSE.as_bytes()[..cut]]).unwrap();
        assert!(!u.complete);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (0, 0));
        // Anthropic cut after message_start: input tokens are known, the output is not final.
        let cut = ANTHROPIC_SSE.find("event: message_delta").unwrap();
        let u = read("text/event-stream", &[&ANTHROPIC_SSE.as_bytes()[..cut]]).unwrap();
        assert!(!u.complete);
        assert_eq!(u.prompt_tokens, 25);
        // Cut in the middle of the usage line itself.
        let mid = OPENAI_SSE.find("\"total_tokens\"").unwrap();
        let u = read("text/event-stream", &[&OPENAI_SSE.as_bytes()[..mid]]).unwrap();
        assert!(!u.complete);
    }

    #[test]
    fn an_oversized_json_body_is_reported_incomplete() {
        let mut r = UsageReader::new("application/json", 8);
        r.feed(br#"{"usage":{"prompt_tokens":1}}"#);
        assert!(!r.finish().unwrap().complete);
    }
}
