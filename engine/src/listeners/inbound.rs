//! Memory of frames on their way in: a node-wide bound on large inbound frames.
//!
//! A WebSocket message is read whole before it is decoded, so every connection may hold up to
//! `--max-frame` bytes of a message in progress, and its decode up to a few times more
//! (`tim_net::codec::decode_body`). Left alone, N connections sending a large frame at once
//! take N times that. Here each connection's socket counts the bytes read since its session
//! last finished a message; past [`LARGE_FRAME`] the connection must hold one of the node's
//! `--large-frames` slots to read on, and gives it back when its session has handled the
//! message. A connection without a slot waits (its socket is not read, TCP pushes back on the
//! sender); one that holds a slot must finish the frame within `--large-frame-timeout` or is
//! closed, so slow senders cannot keep the slots. Before login no frame may be large.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;
use tracing::debug;

/// Bytes of one message in progress past which it counts as large. Chat, acks, pings and
/// business requests are far below it.
pub const LARGE_FRAME: usize = 64 << 10;

/// The node's large-frame slots and how long a holder may take.
pub struct LargeFrames {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl LargeFrames {
    pub fn new(slots: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Self { slots: Arc::new(Semaphore::new(slots)), timeout })
    }
}

/// What a connection's session tells its socket: the message in progress is handled, and
/// whether the client has logged in.
#[derive(Default)]
pub struct Inflight {
    /// Bytes read since the last handled message; the session sets it back to 0.
    bytes: AtomicUsize,
    /// Set when the connection becomes a WebSocket session: HTTP requests before it are
    /// bounded by the body limit instead.
    armed: AtomicBool,
    logged_in: AtomicBool,
}

impl Inflight {
    /// The connection is now a WebSocket session: its messages are counted from here.
    pub fn arm(&self) {
        self.bytes.store(0, Ordering::Relaxed);
        self.armed.store(true, Ordering::Release);
    }

    pub fn logged_in(&self) {
        self.logged_in.store(true, Ordering::Release);
    }

    /// The session handled a message and holds nothing of the next one: the socket gives
    /// its slot back at its next read.
    pub fn message_done(&self) {
        self.bytes.store(0, Ordering::Release);
    }
}

/// The client listener's sockets, each counted by its [`Inflight`].
pub struct MeteredListener {
    tcp: TcpListener,
    frames: Arc<LargeFrames>,
}

impl MeteredListener {
    pub fn new(tcp: TcpListener, frames: Arc<LargeFrames>) -> Self {
        Self { tcp, frames }
    }
}

impl axum::serve::Listener for MeteredListener {
    type Io = MeteredStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (MeteredStream, SocketAddr) {
        let (tcp, peer) = axum::serve::Listener::accept(&mut self.tcp).await;
        // Frames are small and latency matters: no Nagle delay.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let stream = MeteredStream {
            tcp,
            inflight: Arc::default(),
            frames: self.frames.clone(),
            waiting: None,
            slot: None,
            deadline: None,
        };
        (stream, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A client socket that takes a large-frame slot before reading past [`LARGE_FRAME`] bytes of
/// one message.
pub struct MeteredStream {
    tcp: TcpStream,
    inflight: Arc<Inflight>,
    frames: Arc<LargeFrames>,
    /// Made when the first large frame begins: an idle connection carries no acquire future.
    waiting: Option<PollSemaphore>,
    slot: Option<OwnedSemaphorePermit>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl MeteredStream {
    /// Ready when this read may go ahead: a slot held if the message is large, its deadline
    /// not passed.
    fn poll_slot(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let bytes = self.inflight.bytes.load(Ordering::Acquire);
        if bytes == 0 && self.slot.is_some() {
            self.slot = None;
            self.deadline = None;
        }
        if bytes < LARGE_FRAME || !self.inflight.armed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        if self.slot.is_none() {
            if !self.inflight.logged_in.load(Ordering::Acquire) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a frame over {LARGE_FRAME} bytes before login"),
                )));
            }
            let slots = self.frames.slots.clone();
            let waiting = self.waiting.get_or_insert_with(|| PollSemaphore::new(slots));
            let Some(permit) = ready!(waiting.poll_acquire(cx)) else {
                return Poll::Ready(Err(io::Error::other("the node is shutting down")));
            };
            self.slot = Some(permit);
            self.deadline = Some(Box::pin(tokio::time::sleep(self.frames.timeout)));
        }
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("a large frame took longer than {} s to arrive", self.frames.timeout.as_secs()),
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for MeteredStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_slot(cx))?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        self.inflight.bytes.fetch_add(read, Ordering::AcqRel);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// What a request handler learns of its connection: the peer and the connection's counter.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub inflight: Arc<Inflight>,
}

impl Connected<IncomingStream<'_, MeteredListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, MeteredListener>) -> Self {
        Self { peer: *stream.remote_addr(), inflight: stream.io().inflight.clone() }
    }
}
