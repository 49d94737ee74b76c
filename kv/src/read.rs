//! Reads from async code without a thread hop when the data is in memory.
//!
//! A read that finds everything in the memtables and the block cache takes a few microseconds;
//! handing it to the blocking pool costs two context switches, more than the read itself. So
//! [`read`] first runs the closure on the calling thread with RocksDB's block-cache read tier,
//! under which a read that would touch the disk fails at once instead of blocking; only then
//! does it run the closure again on the blocking pool, where disk reads are allowed.

use std::cell::Cell;
use std::sync::Arc;

use crate::store::{Store, StoreError};

thread_local! {
    /// Set while an in-memory attempt runs on this thread; the store consults it when it
    /// builds its read options. The attempt is synchronous, so no other task can see it.
    static MEMORY_ONLY: Cell<bool> = const { Cell::new(false) };
    /// Set by the store when a read of the attempt needed the disk.
    static MISSED: Cell<bool> = const { Cell::new(false) };
}

/// Whether reads on this thread must be served from memory.
pub(crate) fn memory_only() -> bool {
    MEMORY_ONLY.with(Cell::get)
}

/// Records that a memory-only read needed the disk; its error is [`StoreError::NotInMemory`].
pub(crate) fn missed() -> StoreError {
    MISSED.with(|m| m.set(true));
    StoreError::NotInMemory
}

/// Clears the flags when the attempt ends, also by unwinding.
struct Attempt;

impl Attempt {
    fn start() -> Self {
        MEMORY_ONLY.with(|m| m.set(true));
        MISSED.with(|m| m.set(false));
        Attempt
    }

    fn missed(&self) -> bool {
        MISSED.with(Cell::get)
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        MEMORY_ONLY.with(|m| m.set(false));
        MISSED.with(|m| m.set(false));
    }
}

/// Runs the reads of `f`: on this thread when all of them are served from memory, else again
/// on the blocking pool. `f` may map store errors into its own error type; whether a read
/// needed the disk is tracked apart from its result.
pub async fn read<T, E, F>(store: &Arc<dyn Store>, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: Fn(&dyn Store) -> Result<T, E> + Send + 'static,
{
    {
        let attempt = Attempt::start();
        let result = f(&**store);
        if !attempt.missed() {
            return result;
        }
    }
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&*store)).await.map_err(|_| E::from(StoreError::Interrupted))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{Batch, ColumnDef, RocksStore, Row, SealKey, Slot, StoreConfig, TableDef};

    const T: TableDef = TableDef { id: 1, name: "t", columns: &[ColumnDef::indexed("k")] };

    fn open(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(RocksStore::open(&StoreConfig::new(dir), SealKey::new(&[7; 32]), &[T]).unwrap())
    }

    #[tokio::test]
    async fn reads_from_disk_leave_the_calling_thread() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = open(dir.path());
            let t = store.table("t").unwrap();
            let mut b = Batch::new(Slot(1));
            let mut row = Row::new(1);
            row.set(0, Bytes::from_static(b"v"));
            b.insert(t, row);
            store.write(b).await.unwrap()[0]
        };
        // Reopened: the row is in a table file only, not in a memtable or the block cache.
        let store = open(dir.path());
        let t = store.table("t").unwrap();
        {
            let attempt = Attempt::start();
            assert_eq!(store.get(t, id), Err(StoreError::NotInMemory));
            assert!(attempt.missed());
        }
        assert!(!memory_only(), "the attempt ends with its guard");
        let row = read(&store, move |s| s.get(t, id)).await.unwrap().unwrap();
        assert_eq!(row.get(0).unwrap().as_ref(), b"v");
        // Now cached: served in memory.
        let _attempt = Attempt::start();
        assert!(store.get(t, id).unwrap().is_some());
    }
}
