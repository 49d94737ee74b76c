//! The mutual authentication of a node link, from the deployment secret every node of a
//! cluster shares.
//!
//! ```text
//! client → server  Hello     "TIMR" ‖ version ‖ client node ‖ client nonce (32) ‖ cluster id
//! server → client  Challenge server node ‖ server nonce (32) ‖ HMAC(key, "server" ‖ transcript)
//! client → server  Proof     HMAC(key, "client" ‖ transcript)
//! server → client  Welcome   empty (or the connection closes)
//! ```
//!
//! The transcript holds the cluster id, both node ids and both nonces, so a proof is good for
//! one connection only: replaying a recorded handshake fails against the server's fresh nonce,
//! and neither side can answer without the key (derived from the secret). After the handshake
//! the link carries frames in the clear: node links belong on a private network.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::RpcError;

const MAGIC: &[u8; 4] = b"TIMR";
const VERSION: u8 = 1;
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
}

/// HMAC-SHA256 keyed with `key`. HMAC takes keys of any length, so `new_from_slice` cannot
/// fail here; the fallback (an all-zero key) is never taken.
fn hmac_with(key: &[u8; 32]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => <HmacSha256 as Mac>::new(&Default::default()),
    }
}

pub(crate) fn hello(node: u64, nonce: &[u8; NONCE], cluster_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + 1 + 8 + NONCE + cluster_id.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u64(node);
    out.put_slice(nonce);
    out.put_slice(cluster_id.as_bytes());
    out.freeze()
}

/// The client's node id, nonce and cluster id from a hello.
pub(crate) fn parse_hello(raw: &[u8]) -> Result<(u64, [u8; NONCE], String), RpcError> {
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
    let (nonce, cluster) = rest.split_first_chunk::<NONCE>().ok_or_else(bad)?;
    if cluster.len() > MAX_CLUSTER_ID {
        return Err(bad());
    }
    let cluster = std::str::from_utf8(cluster).map_err(|_| bad())?.to_owned();
    Ok((u64::from_be_bytes(*node), *nonce, cluster))
}

pub(crate) fn challenge(node: u64, nonce: &[u8; NONCE], proof: &[u8; PROOF]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + NONCE + PROOF);
    out.put_u64(node);
    out.put_slice(nonce);
    out.put_slice(proof);
    out.freeze()
}

/// The server's node id, nonce and proof from a challenge.
pub(crate) fn parse_challenge(raw: &[u8]) -> Result<(u64, [u8; NONCE], [u8; PROOF]), RpcError> {
    let bad = || RpcError::Handshake("malformed challenge".into());
    let (node, rest) = raw.split_first_chunk::<8>().ok_or_else(bad)?;
    let (nonce, rest) = rest.split_first_chunk::<NONCE>().ok_or_else(bad)?;
    let proof: [u8; PROOF] = rest.try_into().map_err(|_| bad())?;
    Ok((u64::from_be_bytes(*node), *nonce, proof))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        Transcript { cluster_id: "c".into(), client: 1, server: 2, client_nonce: [3; NONCE], server_nonce: [4; NONCE] }
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
    }

    #[test]
    fn hellos_round_trip_and_junk_is_refused() {
        let raw = hello(7, &[1; NONCE], "prod");
        assert_eq!(parse_hello(&raw).unwrap(), (7, [1; NONCE], "prod".into()));
        assert!(parse_hello(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_hello(&raw[..10]).is_err());
        let raw = challenge(8, &[2; NONCE], &[3; PROOF]);
        assert_eq!(parse_challenge(&raw).unwrap(), (8, [2; NONCE], [3; PROOF]));
        assert!(parse_challenge(&raw[..40]).is_err());
    }
}
