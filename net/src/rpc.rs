//! Node-to-node calls: one authenticated TCP connection per peer, many calls in flight on it.
//!
//! Frames are length-prefixed (`tokio_util`'s codec, bounded by `max_frame`): after the
//! handshake ([`handshake`]) each is `kind ‖ call id (u64) ‖ body`, the body opaque here
//! (the shard layer encodes its messages with postcard). A link's writer sends every frame
//! queued for the peer with one flush, so calls made together travel together; its queue is
//! bounded, so a slow peer pushes back on its callers. Every call has a deadline. A broken link
//! fails the calls waiting on it and is made again by the next call, after a short pause when
//! connecting failed.

mod handshake;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use handshake::{Challenge, Hello, Transcript, NONCE};

/// The refusal of a peer of another cluster incarnation.
fn other_cluster(peer: u64, transcript: &Transcript) -> RpcError {
    let (ours, theirs) = if peer == transcript.server {
        (transcript.client_incarnation, transcript.server_incarnation)
    } else {
        (transcript.server_incarnation, transcript.client_incarnation)
    };
    RpcError::Handshake(format!(
        "node {peer:016x} belongs to cluster incarnation {theirs:016x}, this node to {ours:016x} (a node that founded \
         its own cluster, or whose data dir belongs to another cluster): never linked"
    ))
}

/// Connects to `addr`, from `bind` when given.
async fn dial(addr: SocketAddr, bind: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = bind.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RpcError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("node link handshake failed: {0}")]
    Handshake(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the link to the peer broke")]
    Broken,
    #[error("frame of {0} bytes over the limit")]
    TooLarge(usize),
    #[error("the peer failed the call: {0}")]
    Remote(String),
    #[error("the node is shutting down")]
    Closed,
}

impl RpcError {
    /// Whether the call surely did not reach the peer's handler (so it is safe to send again
    /// without it being idempotent).
    pub fn not_sent(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake(_) | Self::TooLarge(_))
    }
}

/// Settings of a node's links, shared by its client and server sides.
#[derive(Clone)]
pub struct RpcConfig {
    pub cluster_id: String,
    /// This node's id.
    pub node: u64,
    /// The key both sides prove they hold (derived from the deployment secret).
    pub key: [u8; 32],
    /// Largest frame either way.
    pub max_frame: usize,
    pub connect_timeout: Duration,
    /// Calls a peer may have in flight on one link before its reads wait.
    pub max_inflight: usize,
    /// Frames queued to a peer before callers wait.
    pub queue: usize,
    /// The cluster incarnation this node belongs to, proved in the handshake; 0 while not
    /// known (a joining node, an operator's tool).
    pub incarnation: Arc<AtomicU64>,
    /// The local address links to peers leave from (the node's own link address, so that a
    /// peer, and a firewall, sees where a link comes from); `None`: the system's choice.
    pub bind: Option<std::net::IpAddr>,
}

impl RpcConfig {
    pub fn new(cluster_id: impl Into<String>, node: u64, key: [u8; 32]) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node,
            key,
            max_frame: 16 << 20,
            connect_timeout: Duration::from_secs(3),
            max_inflight: 1024,
            queue: 4096,
            incarnation: Arc::default(),
            bind: None,
        }
    }

    fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    fn codec(&self) -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder().max_frame_length(self.max_frame).new_codec()
    }
}

/// What a node answers calls with: the calling node's id and the body, to a body or an
/// error text.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, from: u64, body: Bytes) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

    /// Answers an ordered call ([`RpcClient::call_in_order`]) at once, in the order the link
    /// brought it: it must not wait for anything.
    fn handle_in_order(&self, from: u64, body: Bytes) -> Result<Bytes, String>;
}

const REQUEST: u8 = 1;
const REPLY_OK: u8 = 2;
const REPLY_ERR: u8 = 3;
const REQUEST_IN_ORDER: u8 = 4;
/// Kind and call id in front of every body.
const HEADER: usize = 9;
/// How long a peer whose connection just failed is not dialed again.
const REDIAL_PAUSE: Duration = Duration::from_millis(200);
/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn frame(kind: u8, id: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + body.len());
    out.put_u8(kind);
    out.put_u64(id);
    out.put_slice(body);
    out.freeze()
}

fn parse(mut raw: BytesMut) -> Option<(u8, u64, Bytes)> {
    if raw.len() < HEADER {
        return None;
    }
    let kind = raw.get_u8();
    let id = raw.get_u64();
    Some((kind, id, raw.freeze()))
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, RpcError>>>>>;

/// One connected, authenticated link to a peer.
struct Link {
    out_tx: mpsc::Sender<Bytes>,
    waiters: Waiters,
    next_id: AtomicU64,
    broken: CancellationToken,
}

enum Peer {
    Up(Arc<Link>),
    /// Connecting failed at this instant: calls fail fast until [`REDIAL_PAUSE`] has passed.
    Down(Instant, RpcError),
}

/// The calling side: links to peers by address, made on first use and remade after a break.
pub struct RpcClient {
    cfg: RpcConfig,
    peers: tokio::sync::Mutex<HashMap<SocketAddr, Peer>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl RpcClient {
    pub fn new(cfg: RpcConfig, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        Self { cfg, peers: tokio::sync::Mutex::new(HashMap::new()), shutdown, tasks }
    }

    /// Calls the node at `addr` (which must be `node`, when given) with `body`. Calls made
    /// together are answered concurrently, in no set order.
    pub async fn call(
        &self,
        addr: SocketAddr,
        node: Option<u64>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        self.send(REQUEST, addr, node, body, timeout).await
    }

    /// Like [`RpcClient::call`], but the peer handles the calls of one link one after the
    /// other, in the order they were sent (deliveries to sessions keep their order).
    pub async fn call_in_order(
        &self,
        addr: SocketAddr,
        node: Option<u64>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        self.send(REQUEST_IN_ORDER, addr, node, body, timeout).await
    }

    async fn send(
        &self,
        kind: u8,
        addr: SocketAddr,
        node: Option<u64>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        if body.len() + HEADER > self.cfg.max_frame {
            return Err(RpcError::TooLarge(body.len()));
        }
        let link = self.link(addr, node).await?;
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        lock(&link.waiters).insert(id, reply_tx);
        let result = tokio::time::timeout(timeout, async {
            link.out_tx.send(frame(kind, id, &body)).await.map_err(|_| RpcError::Broken)?;
            reply_rx.await.map_err(|_| RpcError::Broken)?
        })
        .await;
        lock(&link.waiters).remove(&id);
        result.unwrap_or(Err(RpcError::Timeout(timeout)))
    }

    async fn link(&self, addr: SocketAddr, node: Option<u64>) -> Result<Arc<Link>, RpcError> {
        let mut peers = self.peers.lock().await;
        match peers.get(&addr) {
            Some(Peer::Up(link)) if !link.broken.is_cancelled() => return Ok(link.clone()),
            Some(Peer::Down(at, e)) if at.elapsed() < REDIAL_PAUSE => return Err(e.clone()),
            _ => {}
        }
        // Dialing under the map's lock: calls to any peer wait for at most one connect
        // timeout, and a peer is never dialed twice at once.
        match self.connect(addr, node).await {
            Ok(link) => {
                peers.insert(addr, Peer::Up(link.clone()));
                Ok(link)
            }
            Err(e) => {
                warn!(%addr, error = %e, "node link failed");
                peers.insert(addr, Peer::Down(Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn connect(&self, addr: SocketAddr, node: Option<u64>) -> Result<Arc<Link>, RpcError> {
        let connect_error = |reason: String| RpcError::Connect { addr, reason };
        let tcp = tokio::time::timeout(self.cfg.connect_timeout, dial(addr, self.cfg.bind))
            .await
            .map_err(|_| connect_error("timed out".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut framed = Framed::new(tcp, self.cfg.codec());
        let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.client_handshake(&mut framed, node))
            .await
            .map_err(|_| RpcError::Handshake("timed out".into()))??;
        debug!(%addr, peer = format_args!("{peer:016x}"), "node link up");
        let (out_tx, out_rx) = mpsc::channel(self.cfg.queue);
        let link = Arc::new(Link {
            out_tx,
            waiters: Arc::default(),
            next_id: AtomicU64::new(1),
            broken: self.shutdown.child_token(),
        });
        self.tasks.spawn(run_client_link(framed, out_rx, link.clone()));
        Ok(link)
    }

    async fn client_handshake(
        &self,
        framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
        expect: Option<u64>,
    ) -> Result<u64, RpcError> {
        let client_nonce: [u8; NONCE] = rand::random();
        let io = |e: std::io::Error| RpcError::Handshake(e.to_string());
        let hello = Hello {
            node: self.cfg.node,
            incarnation: self.cfg.incarnation(),
            nonce: client_nonce,
            cluster_id: self.cfg.cluster_id.clone(),
        };
        framed.send(handshake::hello(&hello)).await.map_err(io)?;
        let raw = framed.next().await.ok_or_else(|| RpcError::Handshake("refused by the peer".into()))?.map_err(io)?;
        let challenge = handshake::parse_challenge(&raw)?;
        let server = challenge.node;
        if expect.is_some_and(|n| n != server) {
            return Err(RpcError::Handshake(format!("the peer is node {server:016x}, not the one expected")));
        }
        let transcript = Transcript {
            cluster_id: hello.cluster_id,
            client: self.cfg.node,
            server,
            client_incarnation: hello.incarnation,
            server_incarnation: challenge.incarnation,
            client_nonce,
            server_nonce: challenge.nonce,
        };
        if !transcript.verify(&self.cfg.key, true, &challenge.proof) {
            return Err(RpcError::Handshake(
                "the peer's proof is wrong (another deployment secret or cluster id?)".into(),
            ));
        }
        if transcript.other_clusters() {
            return Err(other_cluster(server, &transcript));
        }
        framed.send(Bytes::copy_from_slice(&transcript.client_proof(&self.cfg.key))).await.map_err(io)?;
        match framed.next().await {
            Some(Ok(welcome)) if welcome.is_empty() => Ok(server),
            _ => Err(RpcError::Handshake("refused by the peer (another deployment secret?)".into())),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes queued frames in bursts with one flush, and hands replies to their callers, until
/// the link breaks; then fails every waiting call.
async fn run_client_link(
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    mut out_rx: mpsc::Receiver<Bytes>,
    link: Arc<Link>,
) {
    let (mut sink, mut stream) = framed.split();
    let writer = write_bursts(&mut sink, &mut out_rx);
    let reader = async {
        while let Some(Ok(raw)) = stream.next().await {
            let Some((kind, id, body)) = parse(raw) else { return };
            let reply = match kind {
                REPLY_OK => Ok(body),
                REPLY_ERR => Err(RpcError::Remote(String::from_utf8_lossy(&body).into_owned())),
                _ => return,
            };
            if let Some(waiter) = lock(&link.waiters).remove(&id) {
                let _ = waiter.send(reply);
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = link.broken.cancelled() => {}
    }
    link.broken.cancel();
    for (_, waiter) in lock(&link.waiters).drain() {
        let _ = waiter.send(Err(RpcError::Broken));
    }
}

/// Serves calls on `listener` until `shutdown`: every connection is authenticated first, then
/// its calls are handled concurrently, at most `max_inflight` at a time per connection.
pub async fn serve(
    listener: TcpListener,
    cfg: RpcConfig,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "node link accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (cfg, handler, stop, calls) = (cfg.clone(), handler.clone(), shutdown.child_token(), tasks.clone());
        tasks.spawn(async move {
            let mut framed = Framed::new(tcp, cfg.codec());
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_handshake(&mut framed, &cfg)).await {
                Ok(Ok(node)) => {
                    debug!(%peer, node = format_args!("{node:016x}"), "node link accepted");
                    serve_link(framed, node, &cfg, handler, stop, calls).await;
                }
                Ok(Err(e)) => warn!(%peer, error = %e, "node link refused"),
                Err(_) => info!(%peer, "node link refused: handshake timed out"),
            }
        });
    }
}

async fn server_handshake(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    cfg: &RpcConfig,
) -> Result<u64, RpcError> {
    let io = |e: std::io::Error| RpcError::Handshake(e.to_string());
    let raw = framed.next().await.ok_or_else(|| RpcError::Handshake("closed before hello".into()))?.map_err(io)?;
    let hello = handshake::parse_hello(&raw)?;
    if hello.cluster_id != cfg.cluster_id {
        let theirs = hello.cluster_id;
        return Err(RpcError::Handshake(format!("cluster id `{theirs}`, this node is in `{}`", cfg.cluster_id)));
    }
    let client = hello.node;
    let server_nonce: [u8; NONCE] = rand::random();
    let transcript = Transcript {
        cluster_id: hello.cluster_id,
        client,
        server: cfg.node,
        client_incarnation: hello.incarnation,
        server_incarnation: cfg.incarnation(),
        client_nonce: hello.nonce,
        server_nonce,
    };
    let challenge = Challenge {
        node: cfg.node,
        incarnation: transcript.server_incarnation,
        nonce: server_nonce,
        proof: transcript.server_proof(&cfg.key),
    };
    framed.send(handshake::challenge(&challenge)).await.map_err(io)?;
    let proof = framed.next().await.ok_or_else(|| RpcError::Handshake("closed before proof".into()))?.map_err(io)?;
    if !transcript.verify(&cfg.key, false, &proof) {
        return Err(RpcError::Handshake(format!(
            "node {client:016x} failed to prove the deployment secret (another secret, or a forged or replayed handshake)"
        )));
    }
    if transcript.other_clusters() {
        return Err(other_cluster(client, &transcript));
    }
    framed.send(Bytes::new()).await.map_err(io)?;
    Ok(client)
}

/// Handles one authenticated connection's calls (on the node's tracker, so the node's
/// shutdown waits for them); replies go through one writer. The connection closes when the
/// peer closes it or the node stops, whatever calls are still running.
async fn serve_link(
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    node: u64,
    cfg: &RpcConfig,
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
    calls: TaskTracker,
) {
    let (mut sink, mut stream) = framed.split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<Bytes>(cfg.queue);
    let inflight = Arc::new(Semaphore::new(cfg.max_inflight));
    let writer = write_bursts(&mut sink, &mut reply_rx);
    let reader = async {
        while let Some(Ok(raw)) = stream.next().await {
            let (id, body) = match parse(raw) {
                Some((REQUEST, id, body)) => (id, body),
                Some((REQUEST_IN_ORDER, id, body)) => {
                    let reply = reply_frame(id, handler.handle_in_order(node, body), cfg.max_frame);
                    if reply_tx.send(reply).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ => return,
            };
            // At most `max_inflight` calls at once: past it the connection is not read.
            let Ok(permit): Result<OwnedSemaphorePermit, _> = inflight.clone().acquire_owned().await else { return };
            let (handler, reply_tx, max_frame) = (handler.clone(), reply_tx.clone(), cfg.max_frame);
            calls.spawn(async move {
                let reply = reply_frame(id, handler.handle(node, body).await, max_frame);
                let _ = reply_tx.send(reply).await;
                drop(permit);
            });
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = stop.cancelled() => {}
    }
}

/// Writes the frames `queue` brings, each burst of queued ones with one flush, until the
/// queue closes or the link fails.
async fn write_bursts(
    sink: &mut futures_util::stream::SplitSink<Framed<TcpStream, LengthDelimitedCodec>, Bytes>,
    queue: &mut mpsc::Receiver<Bytes>,
) {
    while let Some(first) = queue.recv().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        while let Ok(more) = queue.try_recv() {
            if sink.feed(more).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The reply frame of call `id`; a reply over the frame limit becomes an error.
fn reply_frame(id: u64, result: Result<Bytes, String>, max_frame: usize) -> Bytes {
    match result {
        Ok(body) if body.len() + HEADER <= max_frame => frame(REPLY_OK, id, &body),
        Ok(body) => frame(REPLY_ERR, id, format!("reply of {} bytes over the frame limit", body.len()).as_bytes()),
        Err(text) => frame(REPLY_ERR, id, text.as_bytes()),
    }
}

#[cfg(test)]
mod tests;
