//! Account ids and their "node" strings.
//!
//! A user id is 64 bits whose last byte is a CRC-8 check over the first seven (after TIM's
//! mask, which with TIM's default seed flips bit 4 of byte 2), written in base58 (Bitcoin
//! alphabet, big-endian, no padding). Malformed node strings are refused without a lookup.
//! The first seven bytes come from an HMAC of domain and name under the deployment secret
//! (default), or from TIM's CRC-64 derivation for deployments that keep TIM's ids.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
/// Longest node string accepted (`node_maxlength`).
const NODE_MAX_LEN: usize = 64;
/// TIM's default salt (`sys/var.go`), used by the TIM-compatible id scheme.
pub const TIM_DEFAULT_SALT: &str = "#@*=+-<>?:|$&()%$#{]aQkLIPM79643028U'TRKF_}";

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
const CRC8: crc::Crc<u8> = crc::Crc::<u8>::new(&crc::CRC_8_SMBUS);

/// A user id: the hash with its check byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct UserId(u64);

impl UserId {
    /// Replaces the last byte with the check byte; `None` if the id would be zero.
    fn with_check(raw: u64) -> Option<Self> {
        let mut b = raw.to_be_bytes();
        let mut masked = b;
        masked[2] ^= 0x10;
        b[7] = CRC8.checksum(masked.get(..7).unwrap_or_default());
        let id = u64::from_be_bytes(b);
        (id != 0).then_some(Self(id))
    }

    /// Parses a node string: base58 of a non-zero id whose check byte holds.
    pub fn parse(node: &str) -> Option<Self> {
        if node.is_empty() || node.len() > NODE_MAX_LEN {
            return None;
        }
        let mut v: u64 = 0;
        for c in node.bytes() {
            let digit = BASE58.iter().position(|&d| d == c)?;
            v = v.checked_mul(58)?.checked_add(digit as u64)?;
        }
        Self::with_check(v).filter(|id| id.0 == v)
    }

    pub fn node(self) -> String {
        encode_base58(self.0)
    }

    /// An id as stored (8 bytes big-endian); only for ids the store holds.
    pub fn from_be_bytes(bytes: [u8; 8]) -> Self {
        Self(u64::from_be_bytes(bytes))
    }

    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

/// A group id: the shape of a user id (a node string with its check byte), drawn at random.
/// Groups and users share the pair tables, as owners and other parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct GroupId(UserId);

impl GroupId {
    pub fn random() -> Self {
        loop {
            if let Some(id) = UserId::with_check(rand::random()) {
                return Self(id);
            }
        }
    }

    pub fn parse(node: &str) -> Option<Self> {
        UserId::parse(node).map(Self)
    }

    pub fn node(self) -> String {
        self.0.node()
    }

    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// The group as a party of the pair tables.
    pub fn party(self) -> UserId {
        self.0
    }

    /// A group id as stored.
    pub fn from_party(id: UserId) -> Self {
        Self(id)
    }
}

/// The id of an unordered user pair: the larger id, then the smaller, big-endian. Keys the
/// pair's relation and their 1:1 conversation.
pub fn pair_id(a: UserId, b: UserId) -> [u8; 16] {
    if a > b {
        directed_pair_id(a, b)
    } else {
        directed_pair_id(b, a)
    }
}

/// The conversation id of a group: its id, then eight zero bytes (TIM's layout).
pub fn group_chat_id(group: GroupId) -> [u8; 16] {
    let mut chat = [0u8; 16];
    let (id, _) = chat.split_at_mut(8);
    id.copy_from_slice(&group.to_be_bytes());
    chat
}

/// The id of `first` then `second`, big-endian: keys one direction of a pair (roster and
/// block rows).
pub fn directed_pair_id(first: UserId, second: UserId) -> [u8; 16] {
    let mut id = [0u8; 16];
    let (a, b) = id.split_at_mut(8);
    a.copy_from_slice(&first.to_be_bytes());
    b.copy_from_slice(&second.to_be_bytes());
    id
}

/// base58 of a u64, most significant digit first, no padding (0 is the empty string).
/// Hand-written: the general-purpose crates work on byte arrays and would pad leading zeros.
pub fn encode_base58(mut v: u64) -> String {
    let mut digits = Vec::with_capacity(11);
    while v > 0 {
        digits.push(BASE58.get((v % 58) as usize).copied().unwrap_or(b'1'));
        v /= 58;
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// How user ids are derived from login names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdScheme {
    /// HMAC-SHA256 under the deployment secret: ids cannot be computed from names by others.
    Keyed,
    /// TIM's CRC-64 of name + salt + domain: the same ids TIM gives, for migrations.
    Tim,
}

impl IdScheme {
    /// The scheme's name, as `--node-ids` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Keyed => "keyed",
            Self::Tim => "tim",
        }
    }
}

/// Derives user ids and login-name keys.
#[derive(Clone)]
pub struct Ids {
    scheme: IdScheme,
    key: [u8; 32],
    tim_salt: String,
}

impl Ids {
    pub fn new(scheme: IdScheme, key: [u8; 32], tim_salt: String) -> Self {
        Self { scheme, key, tim_salt }
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length, so construction cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return [0; 32];
        };
        mac.update(label);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The id candidate number `attempt` for an account; later attempts are taken only when an
    /// earlier id belongs to another account (a hash collision, detected, never merged).
    pub fn user_id(&self, name: &str, domain: &str, attempt: u8) -> Option<UserId> {
        let raw = match self.scheme {
            IdScheme::Keyed => {
                let mac = self.mac(b"tim-rs user id", &[domain.as_bytes(), name.as_bytes(), &[attempt]]);
                u64::from_be_bytes(*mac.first_chunk::<8>()?)
            }
            IdScheme::Tim => {
                let mut digest = CRC64.digest();
                digest.update(name.as_bytes());
                if attempt > 0 {
                    digest.update(&[0, attempt]);
                }
                digest.update(self.tim_salt.as_bytes());
                digest.update(domain.as_bytes());
                digest.finalize()
            }
        };
        UserId::with_check(raw)
    }

    /// The key that identifies a login name within its domain (names are not stored).
    pub fn name_key(&self, name: &str, domain: &str) -> [u8; 32] {
        self.mac(b"tim-rs login name", &[domain.as_bytes(), name.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tim() -> Ids {
        Ids::new(IdScheme::Tim, [0; 32], TIM_DEFAULT_SALT.to_owned())
    }

    /// Golden vector G18: TIM's node derivation with the default salt and mask seed.
    #[test]
    fn g18_tim_node_derivation() {
        assert_eq!(TIM_DEFAULT_SALT.len(), 43);
        let ids = tim();
        for (name, domain, node) in [
            ("u1", "d", "YpzSs1zsa8j"),
            ("u2", "d", "LPabwAA4mm4"),
            ("tim1", "tlnet.top", "UHuS8PoK2LX"),
            ("alice", "", "KrffBZqyqTL"),
        ] {
            let id = ids.user_id(name, domain, 0).unwrap();
            assert_eq!(id.node(), node, "{name}@{domain}");
            assert_eq!(UserId::parse(node), Some(id));
        }
    }

    #[test]
    fn node_strings_are_checked() {
        let id = tim().user_id("u1", "d", 0).unwrap();
        assert_eq!(UserId::parse("YpzSs1zsa8k"), None, "check byte fails");
        assert_eq!(UserId::parse("Ypz0s1zsa8j"), None, "0 is not base58");
        assert_eq!(UserId::parse(""), None);
        assert_eq!(UserId::parse(&"z".repeat(65)), None);
        assert_eq!(UserId::parse("zzzzzzzzzzzzzzzz"), None, "overflows u64");
        assert_eq!(UserId::parse(&id.node()), Some(id));
    }

    #[test]
    fn keyed_ids_depend_on_the_secret_and_attempt() {
        let a = Ids::new(IdScheme::Keyed, [1; 32], String::new());
        let b = Ids::new(IdScheme::Keyed, [2; 32], String::new());
        let id = a.user_id("u1", "d", 0).unwrap();
        assert_ne!(Some(id), b.user_id("u1", "d", 0));
        assert_ne!(Some(id), a.user_id("u1", "d", 1));
        assert_ne!(Some(id), a.user_id("u1", "", 0));
        assert_eq!(UserId::parse(&id.node()), Some(id));
        assert_ne!(a.name_key("u1", "d"), a.name_key("u1d", ""), "domain and name are length-framed");
    }
}
