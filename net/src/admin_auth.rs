//! How operator tools prove the deployment secret to a node's admin listener: the header
//! `Authorization: Tim-Secret <unix seconds>.<nonce>.<hex HMAC-SHA256>` over the method, the
//! path with its query, the time, a random nonce and the body, under a key derived from the
//! secret. A node accepts a proof within [`MAX_SKEW`] of its clock and only once ([`Seen`]),
//! so a captured header opens no other request and cannot be sent to that node again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the scheme in the `Authorization` header.
pub const SCHEME: &str = "Tim-Secret";
/// Largest difference between the tool's clock and the node's that a proof survives.
pub const MAX_SKEW: u64 = 300;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The MAC of a request (HMAC takes keys of any length: this never is `None`).
fn mac(key: &[u8; 32], method: &str, path: &str, at: &str, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(format!("{method} {path} {at}\n").as_bytes());
    mac.update(body);
    Some(mac)
}

/// The `Authorization` header value for a request.
pub fn sign(key: &[u8; 32], method: &str, path: &str, body: &[u8]) -> String {
    let at = format!("{}.{}", now(), crate::hex::encode(&rand::random::<[u8; 8]>()));
    let tag = mac(key, method, path, &at, body).map(|m| m.finalize().into_bytes().to_vec()).unwrap_or_default();
    format!("{SCHEME} {at}.{}", crate::hex::encode(&tag))
}

/// Whether `header` proves the secret for this request.
pub fn verify(key: &[u8; 32], method: &str, path: &str, body: &[u8], header: &str) -> bool {
    let Some(proof) = header.strip_prefix(SCHEME).and_then(|p| p.strip_prefix(' ')) else {
        return false;
    };
    let Some((at, hex)) = proof.rsplit_once('.') else {
        return false;
    };
    let Some(time) = at.split_once('.').and_then(|(t, _)| t.parse::<u64>().ok()) else {
        return false;
    };
    if now().abs_diff(time) > MAX_SKEW || hex.len() != 64 || at.len() > 64 {
        return false;
    }
    let tag = crate::hex::decode(hex);
    match (tag, mac(key, method, path, at, body)) {
        (Some(tag), Some(mac)) => mac.verify_slice(&tag).is_ok(),
        _ => false,
    }
}

/// The proofs a node accepted lately, so it accepts each once.
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<String, u64>>);

impl Seen {
    /// [`verify`], and the proof not seen before.
    pub fn verify(&self, key: &[u8; 32], method: &str, path: &str, body: &[u8], header: &str) -> bool {
        if !verify(key, method, path, body, header) {
            return false;
        }
        let now = now();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Older ones are refused by their time anyway.
        seen.retain(|_, at| now.abs_diff(*at) <= MAX_SKEW);
        seen.insert(header.to_owned(), now).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_opens_its_own_request_only() {
        let key = [7; 32];
        let header = sign(&key, "POST", "/v1/import", b"rows");
        assert!(verify(&key, "POST", "/v1/import", b"rows", &header));
        assert!(!verify(&key, "POST", "/v1/import", b"other rows", &header));
        assert!(!verify(&key, "GET", "/v1/import", b"rows", &header));
        assert!(!verify(&key, "POST", "/v1/export", b"rows", &header));
        assert!(!verify(&[8; 32], "POST", "/v1/import", b"rows", &header));
        assert!(!verify(&key, "POST", "/v1/import", b"rows", "Bearer x"));
        assert!(!verify(&key, "POST", "/v1/import", b"rows", "Tim-Secret 1.00"));
        let stale = format!("{SCHEME} {}.00.{}", now() - MAX_SKEW - 5, "0".repeat(64));
        assert!(!verify(&key, "POST", "/v1/import", b"rows", &stale));
        assert_ne!(header, sign(&key, "POST", "/v1/import", b"rows"), "two proofs of one request differ");
        let seen = Seen::default();
        assert!(seen.verify(&key, "POST", "/v1/import", b"rows", &header));
        assert!(!seen.verify(&key, "POST", "/v1/import", b"rows", &header), "a proof is taken once");
    }
}
