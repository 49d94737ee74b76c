//! The mutual authentication of a node link, from the deployment secret every node of a
//! cluster shares.
//!
//! ```text
//! client → server  Hello     "TIMR" ‖ version ‖ client node ‖ client incarnation (8)
//!                            ‖ client nonce (32) ‖ cluster id
//! server → client  Challenge server node ‖ server incarnation (8) ‖ server nonce (32)
//!                            ‖ HMAC(key, "server" ‖ transcript)
//! client → server  Proof     HMAC(key, "client" ‖ transcript)
//! server → client  Welcome   empty (or the connection closes)
//! ```
//!
//! The transcript holds the cluster id, both node ids, both cluster incarnations and both
//! nonces, so a proof is good for one connection only: replaying a recorded handshake fails
//! against the server's fresh nonce, and neither side can answer without the key (derived from
//! the secret). Each side refuses a peer of another cluster incarnation (0, "not known yet",
//! conflicts with none), after the proofs, so the refusal names a peer that proved the secret.
//! After the handshake the link carries frames in the clear: node links belong on a private
//! network.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::RpcError;

const MAGIC: &[u8; 4] = b"TIMR";
const VERSION: u8 = 2;
pub(crate) const NONCE: usize = 32;
const PROOF: usize = 32;
/// Longest cluster id accepted in a hello.
pub(crate) const MAX_CLUSTER_ID: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// What both sides know once the hello and the challenge are exchanged.
pub(crate) struct Transcript {
    pub cluster_id: String,
    pub client: u64,
    pub server: u64,
    pub client_incarnation: u64,
    pub server_incarnation: u64,
    pub client_nonce: [u8; NONCE],
    pub server_nonce: [u8; NONCE],
}

impl Transcript {
    fn mac(&self, key: &[u8; 32], label: &[u8]) -> HmacSha256 {
        let mut mac = hmac_with(key);
        mac.update(label);
        mac.update(&(self.cluster_id.len() as u32).to_be_bytes());
        mac.update(self.cluster_id.as_bytes());
        mac.update(&self.client.to_be_bytes());
        mac.update(&self.server.to_be_bytes());
        mac.update(&self.client_incarnation.to_be_bytes());
        mac.update(&self.server_incarnation.to_be_bytes());
        mac.update(&self.client_nonce);
        mac.update(&self.server_nonce);
        mac
    }

    pub fn server_proof(&self, key: &[u8; 32]) -> [u8; PROOF] {
        self.mac(key, b"tim-rs rpc server").finalize().into_bytes().into()
    }

    pub fn client_proof(&self, key: &[u8; 32]) -> [u8; PROOF] {
        self.mac(key, b"tim-rs rpc client").finalize().into_bytes().into()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, key: &[u8; 32], server_side: bool, proof: &[u8]) -> bool {
        let label: &[u8] = if server_side { b"tim-rs rpc server" } else { b"tim-rs rpc client" };
        self.mac(key, label).verify_slice(proof).is_ok()
    }

    /// Whether the two sides belong to two different incarnations of the cluster.
    pub fn other_clusters(&self) -> bool {
        self.client_incarnation != 0
            && self.server_incarnation != 0
            && self.client_incarnation != self.server_incarnation
    }
}

/// A hello's content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub node: u64,
    pub incarnation: u64,
    pub nonce: [u8; NONCE],
    pub cluster_id: String,
}

/// A challenge's content.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub node: u64,
    pub incarnation: u64,
    pub nonce: [u8; NONCE],
    pub proof: [u8; PROOF],
}

/// HMAC-SHA256 keyed with `key`. HMAC takes keys of any length, so `new_from_slice` cannot
/// fail here; the fallback (an all-zero key) is never taken.
fn hmac_with(key: &[u8; 32]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => <HmacSha256 as Mac>::new(&Default::default()),
    }
}

pub(crate) fn hello(hello: &Hello) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + 1 + 8 + 8 + NONCE + hello.cluster_id.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u64(hello.node);
    out.put_u64(hello.incarnation);
    out.put_slice(&hello.nonce);
    out.put_slice(hello.cluster_id.as_bytes());
    out.freeze()
}

/// A hello's fields.
pub(crate) fn parse_hello(raw: &[u8]) -> Result<Hello, RpcError> {
    let bad = || RpcError::Handshake("malformed hello (not a tim-rs node?)".into());
    let (magic, rest) = raw.split_first_chunk::<4>().ok_or_else(bad)?;
    if magic != MAGIC {
        return Err(bad());
    }
    let (&version, rest) = rest.split_first().ok_or_else(bad)?;
    if version != VERSION {
        return Err(RpcError::Handshake(format!("protocol version {version}, this node speaks {VERSION}")));
    }
    let (node, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    let (incarnation, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    let (nonce, cluster) = rest.split_first_chunk::<NONCE>().ok_or_else(bad)?;
    if cluster.len() > MAX_CLUSTER_ID {
        return Err(bad());
    }
    let cluster_id = std::str::from_utf8(cluster).map_err(|_| bad())?.to_owned();
    Ok(Hello {
        node: u64::from_be_bytes(*node),
        incarnation: u64::from_be_bytes(*incarnation),
        nonce: *nonce,
        cluster_id,
    })
}

pub(crate) fn challenge(challenge: &Challenge) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + 8 + NONCE + PROOF);
    out.put_u64(challenge.node);
    out.put_u64(challenge.incarnation);
    out.put_slice(&challenge.nonce);
    out.put_slice(&challenge.proof);
    out.freeze()
}

/// A challenge's fields.
pub(crate) fn parse_challenge(raw: &[u8]) -> Result<Challenge, RpcError> {
    let bad = || RpcError::Handshake("malformed challenge".into());
    let (node, rest) = raw.split_first_chunk::<8>().ok_or_else(bad)?;
    let (incarnation, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    let (nonce, rest) = rest.split_first_chunk::<NONCE>().ok_or_else(bad)?;
    let proof: [u8; PROOF] = rest.try_into().map_err(|_| bad())?;
    Ok(Challenge {
        node: u64::from_be_bytes(*node),
        incarnation: u64::from_be_bytes(*incarnation),
        nonce: *nonce,
        proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        Transcript {
            cluster_id: "c".into(),
            client: 1,
            server: 2,
            client_incarnation: 5,
            server_incarnation: 5,
            client_nonce: [3; NONCE],
            server_nonce: [4; NONCE],
        }
    }

    #[test]
    fn proofs_bind_the_key_the_side_and_the_connection() {
        let key = [9; 32];
        let t = transcript();
        assert!(t.verify(&key, true, &t.server_proof(&key)));
        assert!(t.verify(&key, false, &t.client_proof(&key)));
        assert!(!t.verify(&key, false, &t.server_proof(&key)), "a server proof is no client proof");
        assert!(!t.verify(&[8; 32], true, &t.server_proof(&key)), "another secret");
        let replayed = Transcript { server_nonce: [5; NONCE], ..transcript() };
        assert!(!replayed.verify(&key, false, &t.client_proof(&key)), "another connection's nonce");
        let other = Transcript { server_incarnation: 6, ..transcript() };
        assert!(!other.verify(&key, false, &t.client_proof(&key)), "the incarnations are proved too");
        assert!(other.other_clusters());
        assert!(!Transcript { client_incarnation: 0, ..other }.other_clusters(), "0: not known yet");
    }

    #[test]
    fn hellos_round_trip_and_junk_is_refused() {
        let sent = Hello { node: 7, incarnation: 9, nonce: [1; NONCE], cluster_id: "prod".into() };
        let raw = hello(&sent);
        assert_eq!(parse_hello(&raw).unwrap(), sent);
        assert!(parse_hello(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_hello(&raw[..10]).is_err());
        let sent = Challenge { node: 8, incarnation: 9, nonce: [2; NONCE], proof: [3; PROOF] };
        let raw = challenge(&sent);
        assert_eq!(parse_challenge(&raw).unwrap(), sent);
        assert!(parse_challenge(&raw[..40]).is_err());
    }
}
