//! How operator tools prove the deployment secret to a node's admin listener: the header
//! `Authorization: Tim-Secret <unix seconds>.<hex HMAC-SHA256>` over the method, the path
//! with its query, the time and the body, under a key derived from the secret. A proof is
//! accepted within [`MAX_SKEW`] of the node's clock, so a captured header goes stale within
//! minutes and opens no other request.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Name of the scheme in the `Authorization` header.
pub const SCHEME: &str = "Tim-Secret";
/// Largest difference between the tool's clock and the node's that a proof survives.
pub const MAX_SKEW: u64 = 300;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The MAC of a request (HMAC takes keys of any length: this never is `None`).
fn mac(key: &[u8; 32], method: &str, path: &str, at: u64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(format!("{method} {path} {at}\n").as_bytes());
    mac.update(body);
    Some(mac)
}

/// The `Authorization` header value for a request.
pub fn sign(key: &[u8; 32], method: &str, path: &str, body: &[u8]) -> String {
    let at = now();
    let tag = mac(key, method, path, at, body).map(|m| m.finalize().into_bytes().to_vec()).unwrap_or_default();
    format!("{SCHEME} {at}.{}", crate::hex::encode(&tag))
}

/// Whether `header` proves the secret for this request.
pub fn verify(key: &[u8; 32], method: &str, path: &str, body: &[u8], header: &str) -> bool {
    let Some(proof) = header.strip_prefix(SCHEME).and_then(|p| p.strip_prefix(' ')) else {
        return false;
    };
    let Some((at, hex)) = proof.split_once('.') else {
        return false;
    };
    let Ok(at) = at.parse::<u64>() else {
        return false;
    };
    if now().abs_diff(at) > MAX_SKEW || hex.len() != 64 {
        return false;
    }
    let tag = crate::hex::decode(hex);
    match (tag, mac(key, method, path, at, body)) {
        (Some(tag), Some(mac)) => mac.verify_slice(&tag).is_ok(),
        _ => false,
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
        let stale = format!("{SCHEME} {}.{}", now() - MAX_SKEW - 5, "0".repeat(64));
        assert!(!verify(&key, "POST", "/v1/import", b"rows", &stale));
    }
}
