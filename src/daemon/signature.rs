//! HMAC-SHA256 signatures in hex, as webhooks carry them: GitHub's `X-Hub-Signature-256`, Slack's
//! `X-Slack-Signature`, berth's own `X-Berth-Signature-256`. Checked in constant time.

/// Lower-case hex of HMAC-SHA256(`secret`, the concatenated `message` parts).
pub fn hmac_hex(secret: &[u8], message: &[&[u8]]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    for part in message {
        context.update(part);
    }
    context.sign().as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Whether `hex` is HMAC-SHA256(`secret`, the concatenated `message` parts), in constant time.
pub fn hmac_matches(secret: &[u8], message: &[&[u8]], hex: &str) -> bool {
    let Some(expected) = decode_hex(hex) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &message.concat(), &expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_refuse_anything_else() {
        let hex = hmac_hex(b"key", &[b"v0:", b"body"]);
        assert_eq!(hex.len(), 64);
        assert!(hmac_matches(b"key", &[b"v0:body"], &hex));
        assert!(!hmac_matches(b"key", &[b"v0:body!"], &hex));
        assert!(!hmac_matches(b"other", &[b"v0:body"], &hex));
        assert!(!hmac_matches(b"key", &[b"v0:body"], &hex[..63]));
        assert!(!hmac_matches(b"key", &[b"v0:body"], "zz"));
    }
}
