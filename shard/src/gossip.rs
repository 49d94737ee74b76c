//! chitchat's datagrams, authenticated: a node without the deployment secret can neither be
//! heard nor be mistaken for a member.
//!
//! ```text
//! version (1) ‖ sent at, ms since the epoch (8) ‖ chitchat message ‖ tag (16)
//! tag = HMAC-SHA256(key, everything before it), truncated
//! ```
//!
//! A datagram whose tag does not check is dropped with a (rate-limited) warning naming the
//! sender; so is one sent more than [`MAX_SKEW`] ago or ahead, which bounds replays to a window
//! where they change nothing (gossip state only moves forward by version). The socket is bound
//! by the node before chitchat starts, so tests can bind port 0 and learn the address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::warn;

const VERSION: u8 = 1;
const HEAD: usize = 1 + 8;
const TAG: usize = 16;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// How far a datagram's send time may be from the receiver's clock.
const MAX_SKEW: Duration = Duration::from_secs(120);
/// One warning per sender per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Senders remembered for rate-limiting warnings.
const MAX_WARNED: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

fn tag(key: &[u8; 32], data: &[u8]) -> [u8; TAG] {
    let mut out = [0u8; TAG];
    // HMAC takes keys of any length: `new_from_slice` does not fail for 32 bytes.
    if let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(key) {
        mac.update(data);
        let full = mac.finalize().into_bytes();
        out.copy_from_slice(full.get(..TAG).unwrap_or(&[0; TAG]));
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq, Eq)]
enum Dropped {
    Malformed,
    BadTag,
    Stale,
    Undecodable,
}

/// Seals a message for sending.
fn seal(key: &[u8; 32], message: &ChitchatMessage, out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    out.extend_from_slice(&now_ms().to_be_bytes());
    message.serialize(out);
    let t = tag(key, out);
    out.extend_from_slice(&t);
}

/// Checks and opens a received datagram.
fn open(key: &[u8; 32], datagram: &[u8]) -> Result<ChitchatMessage, Dropped> {
    let body_len = datagram.len().checked_sub(TAG).filter(|n| *n >= HEAD).ok_or(Dropped::Malformed)?;
    let (body, got) = datagram.split_at(body_len);
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| Dropped::BadTag)?;
    mac.update(body);
    mac.verify_truncated_left(got).map_err(|_| Dropped::BadTag)?;
    let (head, mut payload) = body.split_at(HEAD);
    let Some((&VERSION, sent)) = head.split_first() else { return Err(Dropped::Malformed) };
    let sent = u64::from_be_bytes(sent.try_into().map_err(|_| Dropped::Malformed)?);
    if now_ms().abs_diff(sent) > MAX_SKEW.as_millis() as u64 {
        return Err(Dropped::Stale);
    }
    ChitchatMessage::deserialize(&mut payload).map_err(|_| Dropped::Undecodable)
}

/// A transport over one UDP socket bound beforehand, sealing every datagram.
pub struct SealedUdp {
    socket: Mutex<Option<std::net::UdpSocket>>,
    key: [u8; 32],
}

impl SealedUdp {
    pub fn new(socket: std::net::UdpSocket, key: [u8; 32]) -> Self {
        Self { socket: Mutex::new(Some(socket)), key }
    }
}

#[async_trait::async_trait]
impl Transport for SealedUdp {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket =
            self.socket.lock().unwrap_or_else(|p| p.into_inner()).take().context("the gossip socket is in use")?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        Ok(Box::new(SealedSocket {
            socket,
            key: self.key,
            send_buf: Vec::with_capacity(MAX_DATAGRAM),
            recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            warned: HashMap::new(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    key: [u8; 32],
    send_buf: Vec<u8>,
    recv_buf: Box<[u8]>,
    warned: HashMap<SocketAddr, Instant>,
}

impl SealedSocket {
    fn warn_once(&mut self, from: SocketAddr, why: Dropped) {
        let now = Instant::now();
        if self.warned.get(&from).is_some_and(|at| now.duration_since(*at) < WARN_EVERY) {
            return;
        }
        if self.warned.len() >= MAX_WARNED {
            self.warned.clear();
        }
        self.warned.insert(from, now);
        match why {
            Dropped::BadTag => warn!(
                %from,
                "gossip refused: bad authentication tag (a node with another deployment secret or cluster id?)"
            ),
            Dropped::Stale => {
                warn!(%from, "gossip refused: sent more than 120 s from this node's clock (clock skew or a replay)")
            }
            Dropped::Malformed | Dropped::Undecodable => warn!(%from, "gossip refused: not a tim-rs gossip datagram"),
        }
    }
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        seal(&self.key, &message, &mut self.send_buf);
        if self.send_buf.len() > MAX_DATAGRAM {
            warn!(%to, bytes = self.send_buf.len(), "gossip message over the datagram limit, not sent");
            return Ok(());
        }
        // A peer that is down is no transport failure: gossip goes on with the others.
        if let Err(e) = self.socket.send_to(&self.send_buf, to).await {
            tracing::debug!(%to, error = %e, "gossip send failed");
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(got) => got,
                // ICMP "port unreachable" from a down peer surfaces here on some systems.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e).context("gossip socket failed"),
            };
            match open(&self.key, self.recv_buf.get(..len).unwrap_or_default()) {
                Ok(message) => return Ok((from, message)),
                Err(why) => self.warn_once(from, why),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chitchat::ChitchatMessage;

    use super::*;

    fn message() -> ChitchatMessage {
        ChitchatMessage::BadCluster
    }

    #[test]
    fn sealed_datagrams_open_with_the_key_only() {
        let mut buf = Vec::new();
        seal(&[1; 32], &message(), &mut buf);
        assert_eq!(open(&[1; 32], &buf), Ok(message()));
        assert_eq!(open(&[2; 32], &buf), Err(Dropped::BadTag));
        let mut tampered = buf.clone();
        if let Some(b) = tampered.get_mut(HEAD) {
            *b ^= 1;
        }
        assert_eq!(open(&[1; 32], &tampered), Err(Dropped::BadTag));
        assert_eq!(open(&[1; 32], &buf[..10]), Err(Dropped::Malformed));
        assert_eq!(open(&[1; 32], b""), Err(Dropped::Malformed));
    }

    #[test]
    fn old_datagrams_are_refused() {
        let key = [1; 32];
        let mut old = vec![VERSION];
        old.extend_from_slice(&(now_ms() - 10 * 60 * 1000).to_be_bytes());
        message().serialize(&mut old);
        let t = tag(&key, &old);
        old.extend_from_slice(&t);
        assert_eq!(open(&key, &old), Err(Dropped::Stale));
    }
}
