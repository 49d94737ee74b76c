//! The keys of slots being moved that writes changed: an online move copies a slot while it
//! serves, then sends what changed meanwhile, in rounds, until the rest is small enough to
//! send with the slot fenced.
//!
//! The writer records a changed key before it commits the write, so a record taken after a
//! write returned holds its keys. Keys only, not values: the sender reads each key's value
//! when it sends the round, so a key changed many times costs one entry.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::store::{RawKey, Region, Slot};

/// Most bytes of keys recorded per slot: a slot written faster than it moves overflows, and
/// its move starts over later rather than holding ever more memory.
const MAX_RECORDED_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Record {
    keys: HashSet<(Region, Vec<u8>)>,
    bytes: usize,
    /// More keys changed than a record holds, or a raw write replaced the slot's data.
    overflow: bool,
}

/// What changed in the tracked slots.
#[derive(Default)]
pub(crate) struct Changes {
    /// How many slots are tracked: the writer's check when none is.
    tracked: AtomicUsize,
    slots: Mutex<HashMap<Slot, Record>>,
}

/// The slot changed in a way a record cannot follow: its move must start over.
#[derive(Debug)]
pub(crate) struct Overflow;

impl Changes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, Record>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts, empty) recording the changes of `slot`.
    pub(crate) fn track(&self, slot: Slot) {
        let mut slots = self.lock();
        slots.insert(slot, Record::default());
        self.tracked.store(slots.len(), Ordering::SeqCst);
    }

    pub(crate) fn untrack(&self, slot: Slot) {
        let mut slots = self.lock();
        slots.remove(&slot);
        self.tracked.store(slots.len(), Ordering::SeqCst);
    }

    /// Whether any slot is tracked (read by the writer for every group).
    pub(crate) fn active(&self) -> bool {
        self.tracked.load(Ordering::SeqCst) > 0
    }

    /// Records changed keys (each starts with its slot's prefix).
    pub(crate) fn record<'a>(&self, keys: impl Iterator<Item = (Region, &'a [u8])>) {
        let mut slots = self.lock();
        for (region, key) in keys {
            let Some(slot) = key.first_chunk::<2>().map(|p| Slot(u16::from_be_bytes(*p))) else { continue };
            let Some(record) = slots.get_mut(&slot) else { continue };
            if record.overflow {
                continue;
            }
            if record.keys.insert((region, key.to_vec())) {
                record.bytes += key.len() + 16;
                if record.bytes > MAX_RECORDED_BYTES {
                    *record = Record { overflow: true, ..Record::default() };
                }
            }
        }
    }

    /// Marks the slot's record as unable to follow (a raw write replaced its data).
    pub(crate) fn replaced(&self, slot: Slot) {
        if let Some(record) = self.lock().get_mut(&slot) {
            *record = Record { overflow: true, ..Record::default() };
        }
    }

    /// The keys changed since tracking started or since the last take; recording goes on.
    pub(crate) fn take(&self, slot: Slot) -> Result<Vec<RawKey>, Overflow> {
        let mut slots = self.lock();
        let record = slots.get_mut(&slot).ok_or(Overflow)?;
        if record.overflow {
            return Err(Overflow);
        }
        let keys = std::mem::take(&mut record.keys);
        record.bytes = 0;
        let mut keys: Vec<_> = keys.into_iter().map(|(region, key)| RawKey { region, key }).collect();
        keys.sort_unstable_by(|a, b| (a.region, &a.key).cmp(&(b.region, &b.key)));
        Ok(keys)
    }
}
