//! A session's outbound queue, bounded in frames and in bytes: a frame count alone would let
//! a slow reader hold hundreds of multi-megabyte frames (big data, streams).
//!
//! Written here rather than taken from tokio's bounded channel, which allocates a block of 32
//! slots (about 1.3 KiB with its semaphore) when it is made: most sessions are idle, and this
//! queue holds no items memory until a frame comes, and gives it back when it drains.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tim_net::{Encoding, FrameType};
use tokio_util::sync::CancellationToken;

use crate::session::delivery::{Body, Delivery, Outcome, Stands};

/// What other tasks hand a session to send.
pub enum Outbound {
    /// A frame already encoded in the session's encoding, sent without ack request.
    Frame(Bytes),
    /// A frame to send with ack requests and retries.
    Delivery(Arc<Delivery>),
    /// A last frame, after which the session closes (TIMLOGOUT).
    Last(Bytes),
}

/// A handle to one session: queue frames to it, or close it.
#[derive(Clone)]
pub struct SessionHandle {
    conn_id: u64,
    termtyp: Option<i8>,
    encoding: Encoding,
    outlet: Outlet,
    kick: CancellationToken,
}

impl SessionHandle {
    pub fn new(conn_id: u64, termtyp: Option<i8>, encoding: Encoding, outlet: Outlet, kick: CancellationToken) -> Self {
        Self { conn_id, termtyp, encoding, outlet, kick }
    }

    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    pub fn termtyp(&self) -> Option<i8> {
        self.termtyp
    }

    /// The encoding frames to this session must use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues without waiting. A full queue means a slow reader: the session is cut off (its
    /// undelivered frames then take the offline path) and the push fails.
    pub fn push(&self, out: Outbound) -> Result<(), Outbound> {
        self.outlet.try_send(out).inspect_err(|_| self.kick.cancel())
    }

    /// Queues without waiting and without cutting a slow session off: `false` when the queue
    /// is full (or the session ended) and the frame is dropped (best-effort streams).
    pub fn offer(&self, out: Outbound) -> bool {
        self.outlet.try_send(out).is_ok()
    }

    pub fn push_delivery(&self, delivery: Arc<Delivery>) -> Result<(), Outbound> {
        self.push(Outbound::Delivery(delivery))
    }

    pub fn close(&self) {
        self.kick.cancel();
    }
}

/// Hands `body` to `sessions` to send as a frame of `kind` with ack requests, now: deliveries
/// started in order reach each session's queue in that order. An ack settles what the
/// delivery `stands` for.
pub fn start(sessions: &[SessionHandle], kind: FrameType, body: Arc<Body>, stands: Stands) -> Outcome {
    let (delivery, outcome) = Delivery::new(kind, body, stands, sessions.len());
    for session in sessions {
        // A session whose queue is full is cut off; it simply does not report.
        let _ = session.push_delivery(delivery.clone());
    }
    // From here only the sessions hold the delivery: when the last one reports or drops it,
    // the outcome is decided.
    outcome
}

/// Bytes an item holds in the queue: encoded frames count, deliveries (encoded when sent,
/// bounded by the frame count and the unacked limit) do not.
fn weight(out: &Outbound) -> usize {
    match out {
        Outbound::Frame(frame) | Outbound::Last(frame) => frame.len(),
        Outbound::Delivery(_) => 0,
    }
}

/// Capacity a drained queue keeps; past it, the memory goes back.
const KEPT_CAPACITY: usize = 16;

#[derive(Default)]
struct Items {
    queued: VecDeque<Outbound>,
    bytes: usize,
    /// The session ended: nothing more is taken.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    items: Mutex<Items>,
    /// The session's task, woken when an item comes.
    receiver: AtomicWaker,
}

impl Shared {
    fn items(&self) -> MutexGuard<'_, Items> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side, held by every handle of the session.
#[derive(Clone)]
pub struct Outlet {
    shared: Arc<Shared>,
    frames: usize,
    budget: usize,
}

/// The receiving side, held by the session; dropping it ends the queue.
pub struct Inlet {
    shared: Arc<Shared>,
}

/// A queue of at most `frames` items and `bytes` bytes of encoded frames.
pub fn queue(frames: usize, bytes: usize) -> (Outlet, Inlet) {
    let shared = Arc::new(Shared::default());
    (Outlet { shared: shared.clone(), frames: frames.max(1), budget: bytes }, Inlet { shared })
}

impl Outlet {
    /// Queues without waiting; `Err` (with the item) when the queue is full in frames or in
    /// bytes, or the session ended.
    pub fn try_send(&self, out: Outbound) -> Result<(), Outbound> {
        let weight = weight(&out);
        {
            let mut items = self.shared.items();
            if items.closed || items.queued.len() >= self.frames || items.bytes + weight > self.budget {
                return Err(out);
            }
            items.bytes += weight;
            items.queued.push_back(out);
        }
        self.shared.receiver.wake();
        Ok(())
    }
}

impl Inlet {
    /// The next item, once there is one.
    pub async fn recv(&mut self) -> Outbound {
        poll_fn(|cx| {
            if let Some(out) = self.try_recv() {
                return Poll::Ready(out);
            }
            self.shared.receiver.register(cx.waker());
            // An item queued between the look and the registration woke nobody.
            self.try_recv().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut items = self.shared.items();
        let out = items.queued.pop_front()?;
        items.bytes -= weight(&out);
        if items.queued.is_empty() && items.queued.capacity() > KEPT_CAPACITY {
            items.queued = VecDeque::new();
        }
        Some(out)
    }
}

impl Drop for Inlet {
    fn drop(&mut self) {
        let left = {
            let mut items = self.shared.items();
            items.closed = true;
            items.bytes = 0;
            std::mem::take(&mut items.queued)
        };
        // Dropped outside the lock: an item's drop may reach other sessions.
        drop(left);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_frees_what_is_taken() {
        let (outlet, mut inlet) = queue(10, 100);
        let frame = |n: usize| Outbound::Frame(Bytes::from(vec![0u8; n]));
        assert!(outlet.try_send(frame(60)).is_ok());
        assert!(outlet.try_send(frame(60)).is_err(), "120 bytes would pass the budget of 100");
        assert!(outlet.try_send(frame(40)).is_ok(), "a refused frame takes nothing");
        assert!(matches!(inlet.recv().await, Outbound::Frame(f) if f.len() == 60));
        assert!(outlet.try_send(frame(60)).is_ok(), "taken frames free their bytes");
        assert!(inlet.try_recv().is_some() && inlet.try_recv().is_some() && inlet.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_frames_wakes_its_receiver_and_ends_with_it() {
        let (outlet, mut inlet) = queue(2, 1000);
        let frame = || Outbound::Frame(Bytes::from_static(b"f"));
        assert!(outlet.try_send(frame()).is_ok() && outlet.try_send(frame()).is_ok());
        assert!(outlet.try_send(frame()).is_err(), "a third frame passes the count of 2");
        assert!(inlet.try_recv().is_some() && inlet.try_recv().is_some());
        // A receiver waiting on an empty queue is woken by the next frame, from another task.
        let waiting = tokio::spawn(async move {
            let out = inlet.recv().await;
            (out, inlet)
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "nothing queued yet");
        assert!(outlet.try_send(Outbound::Last(Bytes::from_static(b"bye"))).is_ok());
        let (out, inlet) = waiting.await.unwrap();
        assert!(matches!(out, Outbound::Last(f) if f.as_ref() == b"bye"));
        drop(inlet);
        assert!(outlet.try_send(frame()).is_err(), "the session ended");
    }
}
