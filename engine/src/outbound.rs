//! A session's outbound queue, bounded in frames and in bytes: a frame count alone would let
//! a slow reader hold hundreds of multi-megabyte frames (big data, streams).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::sessions::Outbound;

/// Bytes an item holds in the queue: encoded frames count, deliveries (encoded when sent,
/// bounded by the frame count and the unacked limit) do not.
fn weight(out: &Outbound) -> usize {
    match out {
        Outbound::Frame(frame) | Outbound::Last(frame) => frame.len(),
        Outbound::Delivery(_) => 0,
    }
}

/// The sending side, held by every handle of the session.
#[derive(Clone)]
pub struct Outlet {
    tx: mpsc::Sender<Outbound>,
    queued: Arc<AtomicUsize>,
    budget: usize,
}

/// The receiving side, held by the session.
pub struct Inlet {
    rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
}

/// A queue of at most `frames` items and `bytes` bytes of encoded frames.
pub fn queue(frames: usize, bytes: usize) -> (Outlet, Inlet) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    (Outlet { tx, queued: queued.clone(), budget: bytes }, Inlet { rx, queued })
}

impl Outlet {
    /// Queues without waiting; `Err` (with the item) when the queue is full in frames or in
    /// bytes, or the session ended.
    pub fn try_send(&self, out: Outbound) -> Result<(), Outbound> {
        let weight = weight(&out);
        if self.queued.fetch_add(weight, Ordering::AcqRel) + weight > self.budget {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            return Err(out);
        }
        self.tx.try_send(out).map_err(|e| {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
            e.into_inner()
        })
    }
}

impl Inlet {
    fn release(&self, out: Outbound) -> Outbound {
        self.queued.fetch_sub(weight(&out), Ordering::AcqRel);
        out
    }

    pub async fn recv(&mut self) -> Option<Outbound> {
        let out = self.rx.recv().await?;
        Some(self.release(out))
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        let out = self.rx.try_recv().ok()?;
        Some(self.release(out))
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
        assert!(matches!(inlet.recv().await, Some(Outbound::Frame(f)) if f.len() == 60));
        assert!(outlet.try_send(frame(60)).is_ok(), "taken frames free their bytes");
        assert!(inlet.try_recv().is_some() && inlet.try_recv().is_some() && inlet.try_recv().is_none());
    }
}
