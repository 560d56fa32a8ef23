//! The traffic mix the end-to-end tests and the demo push through Kong's side: consumers taking
//! turns, every Kong version's serialize shape, and every 4th request an AI Gateway chat call.
//! Request `k` is always the same request, so what was sent can be recomputed.

use crate::kong::serialize::{AiCall, KongRequest, KongVersion};

/// One generated request.
pub struct Generated {
    /// The request as Kong would log it.
    pub request: KongRequest,
    /// An AI Gateway request (metered by the AI plugin config).
    pub ai: bool,
    /// Prompt + completion tokens Kong's serialize carries for it (0 when none: not AI, or 3.4).
    pub tokens: u64,
    /// `consumer:<uuid>`.
    pub subject: String,
}

/// Request number `k` from `consumers` (`(uuid, username)`), started at `started_at_ms` (`None`:
/// the fixtures' fixed time).
pub fn request(k: usize, consumers: &[(&str, &str)], started_at_ms: Option<u64>) -> Generated {
    let version = KongVersion::ALL[k % KongVersion::ALL.len()];
    let (id, name) = consumers[k % consumers.len()];
    let mut request = KongRequest::get(version, &format!("/orders/{k}")).with_consumer(id, name);
    if let Some(t) = started_at_ms {
        request.started_at_ms = t;
    }
    let ai = k.is_multiple_of(4);
    let mut tokens = 0;
    if ai {
        let (prompt, completion) = (100 + (k % 7) as u64, 20 + (k % 5) as u64);
        request = request.with_ai(AiCall {
            plugin: "ai-proxy".into(),
            provider: "openai".into(),
            request_model: "gpt-4o".into(),
            response_model: "gpt-4o-2024-08-06".into(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost: Some(0.0004),
        });
        if version != KongVersion::V3_4 {
            tokens = prompt + completion;
        }
    }
    Generated {
        request,
        ai,
        tokens,
        subject: format!("consumer:{id}"),
    }
}

/// Now, in Unix ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
