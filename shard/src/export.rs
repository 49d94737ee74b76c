//! Reading whole slots for `tim export`: each slot's rows as one snapshot taken on its owner
//! while it owns the slot, streamed to the caller in parts.
//!
//! The owner keeps an open stream per slot being exported: a reader on the blocking pool walks
//! the snapshot and hands parts over a channel two deep, so an export holds about two parts
//! of memory per slot whatever the slot's size. The caller asks for the parts in order, part 0
//! through the slot's routing (which finds the owner), the rest at the node that answered it:
//! the snapshot outlives a hand-over of the slot, so an export started before a move finishes
//! from the old owner. A part asked again (its answer was lost) is answered again, but for the
//! last, after which the stream is gone. Streams nobody asked for in a while are dropped,
//! which ends their reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tim_kv::{ExportedRow, Slot, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::ownership::Ownership;
use crate::placement::NodeId;
use crate::wire::Reply;

/// Bytes of rows per part.
const PART_BYTES: usize = 1 << 20;
/// Streams a node keeps open at once; a caller past it is refused until one ends.
const MAX_STREAMS: usize = 64;
/// A stream nobody asked for in this long is dropped.
const IDLE: Duration = Duration::from_secs(60);

type Item = Result<(Vec<ExportedRow>, bool), StoreError>;

struct Stream {
    slot: Slot,
    /// The next part to read from the reader.
    next: u32,
    parts: mpsc::Receiver<Item>,
    /// The last part answered, for a caller that asks again.
    answered: Option<(Vec<ExportedRow>, bool)>,
    touched: Instant,
}

type Streams = Arc<Mutex<HashMap<u64, Stream>>>;

/// The export streams a node serves.
#[derive(Default)]
pub(crate) struct Exports {
    streams: Streams,
    /// Whether a task drops idle streams (it runs while there are any).
    sweeping: Arc<AtomicBool>,
}

fn lock(streams: &Streams) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

impl Exports {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
        lock(&self.streams)
    }

    /// Drops the streams nobody asked for in a while (ending their readers and freeing their
    /// snapshots) from now on, while there are streams.
    fn sweep(&self) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (streams, sweeping) = (self.streams.clone(), self.sweeping.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE / 4).await;
                let mut open = lock(&streams);
                open.retain(|_, s| s.touched.elapsed() < IDLE);
                if open.is_empty() {
                    // Under the lock: a stream added after this starts a new sweeper.
                    sweeping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// Answers a request for part `part` of stream `id` over `slot`.
    pub(crate) async fn part(
        &self,
        node: NodeId,
        store: &Arc<dyn Store>,
        ownership: &Ownership,
        id: u64,
        slot: Slot,
        part: u32,
    ) -> Reply {
        let now = Instant::now();
        let taken = {
            let mut streams = self.streams();
            streams.retain(|_, s| now.duration_since(s.touched) < IDLE);
            match streams.remove(&id) {
                Some(stream) if stream.slot == slot => Some(stream),
                Some(_) => return failed(format!("export stream {id} reads another slot than {}", slot.0)),
                None if part > 0 => {
                    return failed(format!(
                        "export stream {id} of slot {} is gone (idle, or the node restarted)",
                        slot.0
                    ))
                }
                None if streams.len() >= MAX_STREAMS => {
                    return failed(format!("this node serves {MAX_STREAMS} export streams already; try again later"))
                }
                None => None,
            }
        };
        let mut stream = match taken {
            Some(stream) => stream,
            None => match open(store, ownership, slot).await {
                Ok(parts) => Stream { slot, next: 0, parts, answered: None, touched: now },
                Err(reply) => return reply,
            },
        };
        let answer = if part.checked_add(1) == Some(stream.next) {
            stream.answered.clone()
        } else if part == stream.next {
            match stream.parts.recv().await {
                Some(Ok(answer)) => {
                    stream.next += 1;
                    stream.answered = Some(answer.clone());
                    Some(answer)
                }
                Some(Err(e)) => return Reply::StoreFailed(e),
                None => return failed(format!("the reader of slot {} stopped", slot.0)),
            }
        } else {
            None
        };
        let Some((rows, last)) = answer else {
            return failed(format!("export stream {id}: part {part} asked, part {} expected", stream.next));
        };
        // A finished stream is dropped: its reader is done, and its last part may be large.
        if !last {
            stream.touched = Instant::now();
            self.streams().insert(id, stream);
            self.sweep();
        }
        Reply::Exported { node, rows, last }
    }
}

/// Starts a reader of `slot`'s rows, taking its snapshot while the slot is owned here.
async fn open(store: &Arc<dyn Store>, ownership: &Ownership, slot: Slot) -> Result<mpsc::Receiver<Item>, Reply> {
    let (tx, rx) = mpsc::channel(2);
    let served = ownership
        .serve(slot, async {
            let (taken_tx, taken_rx) = oneshot::channel();
            let store = store.clone();
            tokio::task::spawn_blocking(move || read(&*store, slot, tx, taken_tx));
            // The slot's guard is held until the snapshot exists, so it is the owner's data.
            taken_rx.await.is_ok()
        })
        .await;
    match served {
        Ok(true) => Ok(rx),
        Ok(false) => Err(failed(format!("the reader of slot {} did not start", slot.0))),
        Err(refusal) => Err(Reply::Refused(refusal)),
    }
}

/// Reads the slot into `tx`, each part sent once the next is known, so the last is marked.
fn read(store: &dyn Store, slot: Slot, tx: mpsc::Sender<Item>, taken: oneshot::Sender<()>) {
    let mut taken = Some(taken);
    let mut pending: Option<Vec<ExportedRow>> = None;
    let result = store.export_rows(
        slot,
        PART_BYTES,
        &mut || {
            if let Some(taken) = taken.take() {
                let _ = taken.send(());
            }
        },
        &mut |rows| match pending.replace(rows) {
            Some(previous) => tx.blocking_send(Ok((previous, false))).is_ok(),
            None => true,
        },
    );
    let last = match result {
        Ok(()) => Ok((pending.unwrap_or_default(), true)),
        Err(e) => Err(e),
    };
    let _ = tx.blocking_send(last);
}

fn failed(reason: String) -> Reply {
    Reply::Failed { reason, duplicate: false }
}
