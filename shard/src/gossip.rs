//! chitchat's datagrams, authenticated: a node without the deployment secret can neither be
//! heard nor be mistaken for a member, and a node of another cluster incarnation is not heard.
//!
//! ```text
//! version (1) ‖ incarnation (8) ‖ sender node (8) ‖ sender generation (8)
//!   ‖ sent at, ms since the sender started (8) ‖ chitchat message ‖ tag (16)
//! tag = HMAC-SHA256(key, everything before it), truncated
//! ```
//!
//! A datagram whose tag does not check is dropped with a (rate-limited) warning naming the
//! sender, and so is one of another incarnation ([`crate::incarnation`]). Replays are bounded
//! without comparing clocks: the send time is the sender's own monotonic clock, so a receiver
//! drops a datagram of an older generation of its sender than one it heard, or sent more than
//! [`REPLAY_WINDOW`] before the newest it heard from that generation (a replay changes nothing
//! within the window: gossip state only moves forward by version). A wall clock stepped by
//! minutes on either side changes nothing. The socket is bound by the node before chitchat
//! starts, so tests can bind port 0 and learn the address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::warn;

use crate::incarnation::{Admitted, Incarnation};

const VERSION: u8 = 2;
const HEAD: usize = 1 + 8 + 8 + 8 + 8;
const TAG: usize = 16;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// How much older than the newest datagram heard from a sender (same generation) one may be.
const REPLAY_WINDOW: Duration = Duration::from_secs(120);
/// One warning per sender per this long.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Senders remembered for rate-limiting warnings, and for bounding replays.
const MAX_WARNED: usize = 1024;
const MAX_SENDERS: usize = 4096;

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

/// Why a datagram was dropped.
#[derive(Debug, PartialEq, Eq)]
enum Dropped {
    Malformed,
    BadTag,
    Stale,
    Undecodable,
    OtherCluster(u64),
}

/// Who sent a datagram, and when by its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    incarnation: u64,
    node: u64,
    generation: u64,
    at_ms: u64,
}

/// Seals a message for sending.
fn seal(key: &[u8; 32], sent: Sent, message: &ChitchatMessage, out: &mut Vec<u8>) {
    out.clear();
    out.push(VERSION);
    for field in [sent.incarnation, sent.node, sent.generation, sent.at_ms] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    message.serialize(out);
    let t = tag(key, out);
    out.extend_from_slice(&t);
}

/// Checks a received datagram's tag; its sender and message.
fn open(key: &[u8; 32], datagram: &[u8]) -> Result<(Sent, ChitchatMessage), Dropped> {
    let body_len = datagram.len().checked_sub(TAG).filter(|n| *n >= HEAD).ok_or(Dropped::Malformed)?;
    let (body, got) = datagram.split_at(body_len);
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| Dropped::BadTag)?;
    mac.update(body);
    mac.verify_truncated_left(got).map_err(|_| Dropped::BadTag)?;
    let Some((&VERSION, rest)) = body.split_first() else { return Err(Dropped::Malformed) };
    let mut fields = [0u64; 4];
    let mut rest = rest;
    for field in &mut fields {
        let (raw, tail) = rest.split_first_chunk::<8>().ok_or(Dropped::Malformed)?;
        *field = u64::from_be_bytes(*raw);
        rest = tail;
    }
    let [incarnation, node, generation, at_ms] = fields;
    let mut payload = rest;
    let message = ChitchatMessage::deserialize(&mut payload).map_err(|_| Dropped::Undecodable)?;
    Ok((Sent { incarnation, node, generation, at_ms }, message))
}

/// The newest datagram heard from each sender: its generation and send time.
#[derive(Default)]
struct Newest(HashMap<u64, (u64, u64)>);

impl Newest {
    /// Whether `sent` is new enough to be heard (and remembers it).
    fn admits(&mut self, sent: Sent) -> bool {
        let window = REPLAY_WINDOW.as_millis() as u64;
        match self.0.get_mut(&sent.node) {
            Some((generation, at)) if sent.generation == *generation => {
                if sent.at_ms.saturating_add(window) < *at {
                    return false;
                }
                *at = (*at).max(sent.at_ms);
                true
            }
            Some((generation, _)) if sent.generation < *generation => false,
            _ => {
                if self.0.len() >= MAX_SENDERS {
                    self.0.clear();
                }
                self.0.insert(sent.node, (sent.generation, sent.at_ms));
                true
            }
        }
    }
}

/// This node as its datagrams name it.
pub struct Sender {
    pub node: u64,
    pub generation: u64,
    pub incarnation: Arc<Incarnation>,
}

/// A transport over one UDP socket bound beforehand, sealing every datagram.
pub struct SealedUdp {
    socket: Mutex<Option<std::net::UdpSocket>>,
    key: [u8; 32],
    sender: Arc<Sender>,
}

impl SealedUdp {
    pub fn new(socket: std::net::UdpSocket, key: [u8; 32], sender: Sender) -> Self {
        Self { socket: Mutex::new(Some(socket)), key, sender: Arc::new(sender) }
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
            sender: self.sender.clone(),
            started: Instant::now(),
            newest: Newest::default(),
            send_buf: Vec::with_capacity(MAX_DATAGRAM),
            recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            warned: HashMap::new(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    key: [u8; 32],
    sender: Arc<Sender>,
    /// The start of this node's send times.
    started: Instant,
    newest: Newest,
    send_buf: Vec<u8>,
    recv_buf: Box<[u8]>,
    warned: HashMap<SocketAddr, Instant>,
}

impl SealedSocket {
    /// Warns of a dropped datagram, at most once per sender per [`WARN_EVERY`]; whether it
    /// did.
    fn warn_once(&mut self, from: SocketAddr, why: Dropped) -> bool {
        let now = Instant::now();
        if self.warned.get(&from).is_some_and(|at| now.duration_since(*at) < WARN_EVERY) {
            return false;
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
                warn!(%from, "gossip refused: older than what its sender sent since (a replay, or a node restarted from an old copy)")
            }
            Dropped::OtherCluster(theirs) => warn!(
                %from,
                theirs = %format_args!("{theirs:016x}"),
                ours = %format_args!("{:016x}", self.sender.incarnation.get()),
                "gossip refused: a node of another cluster incarnation (a node that founded its own cluster, or whose \
                 data dir belongs to another cluster); it is never heard here"
            ),
            Dropped::Malformed | Dropped::Undecodable => warn!(%from, "gossip refused: not a tim-rs gossip datagram"),
        }
        true
    }

    /// Tells a node of another cluster incarnation that it is not heard (a node that was
    /// given a seed of another cluster learns it this way, and stops), as often as it is
    /// warned of.
    async fn answer_stranger(&mut self, to: SocketAddr) {
        seal(&self.key, self.sent_now(), &ChitchatMessage::BadCluster, &mut self.send_buf);
        if let Err(e) = self.socket.send_to(&self.send_buf, to).await {
            tracing::debug!(%to, error = %e, "gossip refusal not sent");
        }
    }

    /// This node as its next datagram names it.
    fn sent_now(&self) -> Sent {
        Sent {
            incarnation: self.sender.incarnation.get(),
            node: self.sender.node,
            generation: self.sender.generation,
            at_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        seal(&self.key, self.sent_now(), &message, &mut self.send_buf);
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
            let why = match open(&self.key, self.recv_buf.get(..len).unwrap_or_default()) {
                Ok((sent, message)) => match self.sender.incarnation.admits(sent.incarnation, from) {
                    Admitted::Heard if self.newest.admits(sent) => return Ok((from, message)),
                    Admitted::Heard => Dropped::Stale,
                    Admitted::NotYet => continue,
                    Admitted::Stranger => Dropped::OtherCluster(sent.incarnation),
                },
                Err(why) => why,
            };
            let stranger = matches!(why, Dropped::OtherCluster(_));
            if self.warn_once(from, why) && stranger {
                self.answer_stranger(from).await;
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

    fn sent(at_ms: u64) -> Sent {
        Sent { incarnation: 5, node: 9, generation: 3, at_ms }
    }

    #[test]
    fn sealed_datagrams_open_with_the_key_only() {
        let mut buf = Vec::new();
        seal(&[1; 32], sent(10), &message(), &mut buf);
        assert_eq!(open(&[1; 32], &buf), Ok((sent(10), message())));
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
    fn old_datagrams_of_a_sender_are_refused_whatever_the_clocks_say() {
        let mut newest = Newest::default();
        let window = REPLAY_WINDOW.as_millis() as u64;
        assert!(newest.admits(sent(window * 10)));
        assert!(newest.admits(sent(window * 10 - 5)), "a little late: reordered by the network");
        assert!(!newest.admits(sent(window * 8)), "far older than the newest: a replay");
        assert!(newest.admits(Sent { generation: 4, at_ms: 0, ..sent(0) }), "the sender restarted");
        assert!(!newest.admits(sent(window * 10)), "its earlier generation is over");
        assert!(newest.admits(Sent { node: 10, ..sent(0) }), "another sender");
    }
}
