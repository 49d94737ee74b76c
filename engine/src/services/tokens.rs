//! Single-use login tokens: issued over `/tim2` (type 15) after a password check, bound to the
//! login name and domain they were issued for, valid for `token_timeout`. Held in memory by the
//! owner of the token's slot (so any node can issue one and any node consume it), with a cap
//! per node: a restart, or the slot moving, invalidates outstanding tokens, which clients
//! simply request again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::model::ident::UserId;

struct Entry {
    user: UserId,
    expires: Instant,
}

pub struct Tokens {
    /// Keyed by SHA-256(name key ‖ token): a token looked up under another name is not found.
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    lifetime: Duration,
    cap: usize,
}

fn entry_key(name_key: &[u8; 32], token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(name_key);
    h.update(token.as_bytes());
    h.finalize().into()
}

impl Tokens {
    pub fn new(lifetime: Duration, cap: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), lifetime, cap }
    }

    /// A new token: 128 random bits in hex.
    pub fn draw() -> String {
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Holds `token` for `user`; `false` when `cap` unexpired tokens are outstanding.
    pub fn hold(&self, name_key: &[u8; 32], token: &str, user: UserId) -> bool {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.cap {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.cap {
                return false;
            }
        }
        entries.insert(entry_key(name_key, token), Entry { user, expires: now + self.lifetime });
        true
    }

    /// Consumes a token issued for this name key: the user, once; `None` if unknown, expired,
    /// used, or issued for another name.
    pub fn consume(&self, name_key: &[u8; 32], token: &str) -> Option<UserId> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.remove(&entry_key(name_key, token))?;
        (entry.expires > Instant::now()).then_some(entry.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_bound_and_capped() {
        let tokens = Tokens::new(Duration::from_secs(60), 2);
        let user = UserId::parse("YpzSs1zsa8j").unwrap();
        let t = Tokens::draw();
        assert!(tokens.hold(&[1; 32], &t, user));
        assert_eq!(tokens.consume(&[2; 32], &t), None, "bound to its name");
        assert_eq!(tokens.consume(&[1; 32], &t), Some(user));
        assert_eq!(tokens.consume(&[1; 32], &t), None, "single use");
        assert!(tokens.hold(&[1; 32], &Tokens::draw(), user));
        assert!(tokens.hold(&[1; 32], &Tokens::draw(), user));
        assert!(!tokens.hold(&[1; 32], &Tokens::draw(), user), "capped");
        let expired = Tokens::new(Duration::ZERO, 2);
        let t = Tokens::draw();
        assert!(expired.hold(&[1; 32], &t, user));
        assert_eq!(expired.consume(&[1; 32], &t), None, "expired");
    }
}
