//! AES-256-GCM sealing of column values at rest. Each value gets a fresh random 96-bit nonce
//! and is bound to its place (table, row, column) as associated data, so a sealed value copied
//! into another row or column does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;

const NONCE: usize = 12;

/// The key that seals and opens column values.
#[derive(Clone)]
pub struct SealKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    pub fn new(key: &[u8; 32]) -> Self {
        Self { cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)) }
    }

    /// `nonce ‖ ciphertext ‖ tag`; `None` only for inputs over 64 GiB.
    pub(crate) fn seal(&self, place: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self.cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: place }).ok()?;
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Some(out)
    }

    pub(crate) fn open(&self, place: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ct) = sealed.split_at_checked(NONCE)?;
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: place }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_place() {
        let key = SealKey::new(&[7; 32]);
        let sealed = key.seal(b"place-a", b"secret").unwrap();
        assert_eq!(key.open(b"place-a", &sealed).as_deref(), Some(&b"secret"[..]));
        assert_eq!(key.open(b"place-b", &sealed), None);
        assert_eq!(SealKey::new(&[8; 32]).open(b"place-a", &sealed), None);
        assert_eq!(key.open(b"place-a", &sealed[..5]), None);
    }
}
