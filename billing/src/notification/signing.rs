//! Standard Webhooks signatures (the scheme Svix uses): `webhook-signature: v1,<base64
//! HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the base64-decoded part
//! of the channel's `whsec_…` secret, so receivers verify with off-the-shelf libraries.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The headers of one signed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Signed {
    /// `webhook-id`: the event id, the same on every attempt (receivers dedup by it).
    pub id: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
}

/// Signs `body` for message `id` sent at `timestamp` with `secret` (`whsec_<base64>`, or the
/// bare base64 key).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<Signed, String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|e| format!("signing secret is not base64: {e}"))?;
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(&key).map_err(|e| format!("signing key: {e}"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    Ok(Signed {
        id: id.to_owned(),
        timestamp,
        signature: format!("v1,{}", STANDARD.encode(digest)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (spec/standard-webhooks.md, and the
    /// test vector its reference libraries check).
    #[test]
    fn matches_the_specification_example() {
        let s = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(
            s.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
