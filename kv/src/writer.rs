//! The writer thread: applies batches in arrival order and commits every batch that is
//! waiting as one RocksDB write (group commit), so `--sync` costs one fsync per group rather
//! than one per message. It alone issues row ids, so ids increase in commit order and the
//! read-modify-write of updates and unique checks need no locks.
//!
//! Ids are reserved in blocks: the stored counter of a `(table, slot)` is the highest id that
//! may have been issued, written when a block is taken rather than with every insert. A
//! restart continues after the block, so ids are never reissued (a restart may skip some).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::keys;
use crate::rocks::{Family as Cf, Inner};
use crate::schema::IndexKind;
use crate::store::{
    Batch, LogWrite, Op, RawEntry, RawKey, RawWrite, Region, Row, RowId, Slot, SlotDelta, StagedWrite, StoreError,
    TableId,
};

pub(crate) struct WriteRequest {
    pub(crate) work: Work,
    /// `None` for a deferred batch ([`crate::Store::defer`]), whose failure is logged here.
    pub(crate) reply: Option<Reply>,
}

type Reply = oneshot::Sender<Result<Vec<RowId>, StoreError>>;

impl WriteRequest {
    fn answer(self, result: Result<Vec<RowId>, StoreError>) {
        answer(self.reply, result);
    }
}

fn answer(reply: Option<Reply>, result: Result<Vec<RowId>, StoreError>) {
    match reply {
        // A caller that stopped waiting does not undo the write.
        Some(reply) => {
            let _ = reply.send(result);
        }
        None => {
            if let Err(e) = result {
                warn!(error = %e, "a deferred write failed");
            }
        }
    }
}

/// The deferred batches, as requests of the group that takes them.
fn take_deferred(inner: &Inner) -> Vec<WriteRequest> {
    inner.deferred.take().into_iter().map(|b| WriteRequest { work: Work::Batches(vec![b]), reply: None }).collect()
}

pub(crate) enum Work {
    /// Batches of one or several slots, committed together.
    Batches(Vec<Batch>),
    Raw(RawWrite),
    /// Batches of one slot staged, not written ([`crate::Store::stage`]).
    Stage(Vec<Batch>, oneshot::Sender<Result<StagedWrite, StoreError>>),
    Log(LogWrite),
}

impl Work {
    /// Work that goes alone, after the group before it: it writes slot data outside a group
    /// (and drops what the writer caches of the slot), or must see every write before it.
    fn alone(&self) -> bool {
        !matches!(self, Work::Batches(_))
    }
}

/// A write staged by one request, applied to the group's batch only if the request succeeds.
enum Staged {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Every key from the first to (not including) the second.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

type RowKey = (TableId, RowId);
/// A row as the group left it: `None` once deleted.
type StagedRow = Option<Row>;

/// What the group's earlier requests changed, visible to the later ones before the commit.
#[derive(Default)]
struct Overlay {
    rows: HashMap<RowKey, StagedRow>,
    /// Index keys put (`true`) or deleted (`false`).
    idx: BTreeMap<Vec<u8>, bool>,
}

/// Previous overlay and counter values, restored when a request fails half-way.
#[derive(Default)]
struct Undo {
    rows: Vec<(RowKey, Option<StagedRow>)>,
    idx: Vec<(Vec<u8>, Option<bool>)>,
    counters: Vec<((TableId, Slot), Option<Counter>)>,
}

/// Ids reserved per stored counter write.
const ID_BLOCK: u64 = 1024;

/// The id sequence of one `(table, slot)`.
#[derive(Clone, Copy)]
struct Counter {
    last: u64,
    /// Highest sequence the stored counter covers.
    reserved: u64,
}

struct Writer<'a> {
    inner: &'a Inner,
    counters: HashMap<(TableId, Slot), Counter>,
    /// Slots whose staged effects are not applied yet.
    staged: HashSet<Slot>,
    /// Whether a commit that is not relaxed waits for the WAL's fsync (`--sync`).
    sync: bool,
    synced: WriteOptions,
    /// A group of relaxed batches only: its WAL record reaches the disk with the next synced
    /// group (the log is written in order) or with a memtable flush.
    relaxed: WriteOptions,
}

/// How a commit reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Synced when the store syncs.
    Synced,
    /// With the next synced commit.
    Relaxed,
}

pub(crate) fn run(inner: Arc<Inner>, mut requests: mpsc::Receiver<WriteRequest>, sync: bool, max_group: usize) {
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    let mut relaxed = WriteOptions::default();
    relaxed.set_sync(false);
    let mut writer = Writer { inner: &inner, counters: HashMap::new(), staged: HashSet::new(), sync, synced, relaxed };
    // A raw write that ended the previous group starts the next one.
    let mut held: Option<WriteRequest> = None;
    loop {
        let first = held.take().or_else(|| requests.blocking_recv());
        // Batches deferred before this request was queued go first (a raw write may hand
        // their slot over).
        let mut group = take_deferred(&inner);
        let Some(first) = first else {
            writer.commit_group(group);
            break;
        };
        if first.work.alone() {
            writer.commit_group(group);
            writer.alone(first);
            continue;
        }
        group.push(first);
        while group.len() < max_group {
            match requests.try_recv() {
                Ok(request) if request.work.alone() => {
                    held = Some(request);
                    break;
                }
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        writer.commit_group(group);
    }
}

impl Writer<'_> {
    /// Carries out work that goes alone and answers it.
    fn alone(&mut self, request: WriteRequest) {
        let WriteRequest { work, reply } = request;
        let result = match work {
            Work::Stage(batches, staged) => {
                // A caller that stopped waiting forgets nothing: its driver does that.
                let _ = staged.send(self.stage(&batches));
                return;
            }
            Work::Raw(raw) => self.raw(&raw),
            Work::Log(log) => self.log(&log),
            Work::Batches(_) => Ok(()),
        };
        answer(reply, result.map(|()| Vec::new()));
    }

    /// Stages one request's batches after the group's earlier ones (`overlay`): its ids, its
    /// writes added to `staged`; on failure, nothing of it stays.
    fn stage_request(
        &mut self,
        batches: &[Batch],
        overlay: &mut Overlay,
        staged: &mut Vec<Staged>,
    ) -> Result<Vec<RowId>, StoreError> {
        if let Some(batch) = batches.iter().find(|b| self.staged.contains(&b.slot())) {
            return Err(StoreError::StagedAlready { slot: batch.slot().0 });
        }
        let mut undo = Undo::default();
        let mut mine = Vec::new();
        let mut ids = Vec::new();
        let applied = batches.iter().try_for_each(|batch| self.apply(batch, overlay, &mut undo, &mut mine, &mut ids));
        match applied {
            Ok(()) => {
                staged.append(&mut mine);
                Ok(ids)
            }
            Err(e) => {
                self.revert(undo, overlay);
                Err(e)
            }
        }
    }

    /// Applies a group's requests in order and commits what succeeded as one write: synced
    /// unless every batch is relaxed. Each request gets its ids or its error.
    fn commit_group(&mut self, group: Vec<WriteRequest>) {
        if group.is_empty() {
            return;
        }
        let mut overlay = Overlay::default();
        let mut staged = Vec::new();
        let results: Vec<_> = group
            .iter()
            .map(|request| match &request.work {
                Work::Batches(batches) => self.stage_request(batches, &mut overlay, &mut staged),
                _ => Err(StoreError::Interrupted),
            })
            .collect();
        let all_relaxed = group.iter().all(|r| matches!(&r.work, Work::Batches(b) if b.iter().all(Batch::is_relaxed)));
        let commit = self.commit(staged, if all_relaxed { Durability::Relaxed } else { Durability::Synced });
        for (request, result) in group.into_iter().zip(results) {
            let result = match &commit {
                Ok(()) => result,
                Err(e) => {
                    // The group's ids were not persisted: forget the counters so they are
                    // reloaded from disk.
                    self.counters.clear();
                    Err(e.clone())
                }
            };
            request.answer(result);
        }
    }

    fn commit(&self, staged: Vec<Staged>, durability: Durability) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        if self.inner.changes.active() {
            self.inner.changes.record(staged.iter().filter_map(|s| match s {
                Staged::Put(c, k, _) | Staged::Delete(c, k) => c.region().map(|r| (r, k.as_slice())),
                Staged::DeleteRange(..) => None,
            }));
        }
        let handles = [
            self.inner.cf(Cf::Meta.name())?,
            self.inner.cf(Cf::Rows.name())?,
            self.inner.cf(Cf::Idx.name())?,
            self.inner.cf(Cf::Log.name())?,
        ];
        let [meta, rows, idx, log] = handles;
        let cf = |c: Cf| match c {
            Cf::Meta => meta,
            Cf::Rows => rows,
            Cf::Idx => idx,
            Cf::Log => log,
        };
        let mut batch = WriteBatch::default();
        for s in staged {
            match s {
                Staged::Put(c, k, v) => batch.put_cf(cf(c), k, v),
                Staged::Delete(c, k) => batch.delete_cf(cf(c), k),
                Staged::DeleteRange(c, from, to) => batch.delete_range_cf(cf(c), from, to),
            }
        }
        let synced = self.sync && durability == Durability::Synced;
        let options = if synced { &self.synced } else { &self.relaxed };
        let started = std::time::Instant::now();
        let result = self.inner.db.write_opt(batch, options).map_err(|e| StoreError::Rocks(e.into_string()));
        self.inner.commits.observe(started.elapsed());
        if synced && result.is_ok() {
            self.inner.synced_commits.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Writes raw entries of one slot (and node-local records) in one commit. The cached id
    /// counters of the slot are dropped: the slot's counters may have come with the entries.
    fn raw(&mut self, raw: &RawWrite) -> Result<(), StoreError> {
        let touches_slot = raw.clear || !raw.entries.is_empty() || !raw.removed.is_empty();
        if touches_slot && keys::slot_prefix(raw.slot) == keys::GLOBAL {
            return Err(StoreError::OtherSlot { slot: raw.slot.0, id: 0 });
        }
        let prefix = keys::slot_prefix(raw.slot);
        let mut staged = Vec::with_capacity(raw.entries.len() + raw.local.len() + 3);
        if raw.clear {
            let end = keys::prefix_end(&prefix).ok_or(StoreError::OtherSlot { slot: raw.slot.0, id: 0 })?;
            // A region that holds nothing of the slot gets no range tombstone: thousands of
            // empty slots move while a cluster forms, and after each tombstone added to the
            // memtable, the next read sorts all of them again.
            for region in Cf::ALL {
                if self.inner.may_hold(region, &prefix, &end)? {
                    staged.push(Staged::DeleteRange(region, prefix.to_vec(), end.clone()));
                }
            }
        }
        stage_delta(raw.slot, &raw.removed, &raw.entries, &mut staged)?;
        stage_local(&raw.local, &mut staged);
        if touches_slot {
            self.forget(raw.slot);
            self.inner.changes.replaced(raw.slot);
        }
        self.commit(staged, Durability::Synced)
    }

    /// Forgets what the writer caches of a slot's ids and staging.
    fn forget(&mut self, slot: Slot) {
        self.counters.retain(|(_, s), _| *s != slot);
        self.staged.remove(&slot);
    }

    /// Stages batches of one slot without writing them; the slot's effects, to be applied by
    /// [`Writer::log`].
    fn stage(&mut self, batches: &[Batch]) -> Result<StagedWrite, StoreError> {
        let Some(slot) = batches.first().map(Batch::slot) else { return Ok(StagedWrite::default()) };
        if batches.iter().any(|b| b.slot() != slot) {
            return Err(StoreError::StagedSlots { slot: slot.0 });
        }
        if self.staged.contains(&slot) {
            return Err(StoreError::StagedAlready { slot: slot.0 });
        }
        let mut overlay = Overlay::default();
        let mut staged = Vec::new();
        let results: Vec<_> = batches
            .iter()
            .map(|batch| self.stage_request(std::slice::from_ref(batch), &mut overlay, &mut staged))
            .collect();
        let delta = effects(staged);
        if !delta.is_empty() {
            self.staged.insert(slot);
        }
        Ok(StagedWrite { results, delta })
    }

    /// Writes replication state: log entries, applied effects and records, in one commit.
    fn log(&mut self, write: &LogWrite) -> Result<(), StoreError> {
        let mut staged = Vec::new();
        for (slot, from) in &write.truncated {
            staged.push(Staged::DeleteRange(Cf::Log, keys::log_key(*slot, *from).to_vec(), log_end(*slot)?));
        }
        for (slot, index, entry) in &write.appended {
            staged.push(Staged::Put(Cf::Log, keys::log_key(*slot, *index).to_vec(), entry.clone()));
        }
        for (slot, upto) in &write.compacted {
            let end = match upto.checked_add(1) {
                Some(next) => keys::log_key(*slot, next).to_vec(),
                None => log_end(*slot)?,
            };
            staged.push(Staged::DeleteRange(Cf::Log, keys::log_key(*slot, 0).to_vec(), end));
        }
        for applied in &write.applied {
            if applied.replaces {
                let prefix = keys::slot_prefix(applied.slot).to_vec();
                let end = log_end(applied.slot)?;
                for family in [Cf::Meta, Cf::Rows, Cf::Idx] {
                    staged.push(Staged::DeleteRange(family, prefix.clone(), end.clone()));
                }
                self.inner.changes.replaced(applied.slot);
            }
            stage_delta(applied.slot, &applied.delta.removed, &applied.delta.entries, &mut staged)?;
        }
        stage_local(&write.local, &mut staged);
        let durability = if write.relaxed { Durability::Relaxed } else { Durability::Synced };
        let result = self.commit(staged, durability);
        for applied in &write.applied {
            if applied.staged_here {
                self.staged.remove(&applied.slot);
            } else {
                self.forget(applied.slot);
            }
        }
        for slot in &write.forgotten {
            self.forget(*slot);
        }
        if result.is_err() {
            // What was applied may not be there: read the ids again.
            for applied in &write.applied {
                self.forget(applied.slot);
            }
        }
        result
    }

    /// Stages a batch; the ids it issues are added to `ids`, the write's ids so far.
    fn apply(
        &mut self,
        batch: &Batch,
        overlay: &mut Overlay,
        undo: &mut Undo,
        staged: &mut Vec<Staged>,
        ids: &mut Vec<RowId>,
    ) -> Result<(), StoreError> {
        let slot = batch.slot();
        let in_slot = |id: &RowId| {
            if id.slot() == slot {
                Ok(())
            } else {
                Err(StoreError::OtherSlot { slot: slot.0, id: id.0 })
            }
        };
        for op in &batch.ops {
            match op {
                Op::Insert { table, row } => {
                    let id = self.next_id(*table, slot, undo, staged)?;
                    self.put_row(*table, id, None, row.clone(), overlay, undo, staged)?;
                    ids.push(id);
                }
                Op::InsertWithId { table, row, column, earlier } => {
                    let earlier_id = *ids.get(*earlier).ok_or(StoreError::NoEarlierId { earlier: *earlier })?;
                    let mut row = row.clone();
                    row.set(*column, Bytes::copy_from_slice(&earlier_id.to_be_bytes()));
                    let id = self.next_id(*table, slot, undo, staged)?;
                    self.put_row(*table, id, None, row, overlay, undo, staged)?;
                    ids.push(id);
                }
                Op::Put { table, id, row } => {
                    in_slot(id)?;
                    self.pass_id(*table, *id, undo, staged)?;
                    let old = self.row(*table, *id, overlay)?;
                    self.put_row(*table, *id, old.as_ref(), row.clone(), overlay, undo, staged)?;
                }
                Op::Restore { table, id, row } => {
                    in_slot(id)?;
                    match self.row(*table, *id, overlay)? {
                        None => {
                            self.pass_id(*table, *id, undo, staged)?;
                            self.put_row(*table, *id, None, row.clone(), overlay, undo, staged)?;
                            ids.push(*id);
                        }
                        Some(old) if same_row(&old, row) => {}
                        Some(_) => {
                            let name = self.inner.def(*table)?.name;
                            return Err(StoreError::Occupied { table: name, id: id.0 });
                        }
                    }
                }
                Op::Update { table, id, changes } => {
                    in_slot(id)?;
                    let def = self.inner.def(*table)?;
                    let old =
                        self.row(*table, *id, overlay)?.ok_or(StoreError::NotFound { table: def.name, id: id.0 })?;
                    let mut new = old.clone();
                    for (column, value) in changes {
                        if *column >= def.columns.len() {
                            return Err(StoreError::UnknownColumn { table: def.name, column: *column });
                        }
                        match value {
                            Some(v) => {
                                new.set(*column, v.clone());
                            }
                            None => {
                                if let Some(c) = new.cols.get_mut(*column) {
                                    *c = None;
                                }
                            }
                        }
                    }
                    self.put_row(*table, *id, Some(&old), new, overlay, undo, staged)?;
                }
                Op::Delete { table, id } => {
                    in_slot(id)?;
                    let Some(old) = self.row(*table, *id, overlay)? else {
                        continue;
                    };
                    let def = self.inner.def(*table)?;
                    for (column, col) in def.columns.iter().enumerate() {
                        if let (IndexKind::Plain | IndexKind::Unique, Some(v)) = (col.index, old.get(column)) {
                            let prefix = keys::index_prefix(id.slot(), *table, column as u16, v);
                            Self::set_idx(keys::index_key(&prefix, *id), false, overlay, undo, staged);
                        }
                    }
                    staged.push(Staged::Delete(Cf::Rows, keys::row_key(*table, *id).to_vec()));
                    Self::set_row(*table, *id, None, overlay, undo);
                }
            }
        }
        Ok(())
    }

    /// Writes `new` as row `id`, moving the index entries of the columns that changed from
    /// `old` and enforcing unique indexes.
    #[allow(clippy::too_many_arguments)]
    fn put_row(
        &mut self,
        table: TableId,
        id: RowId,
        old: Option<&Row>,
        new: Row,
        overlay: &mut Overlay,
        undo: &mut Undo,
        staged: &mut Vec<Staged>,
    ) -> Result<(), StoreError> {
        let def = self.inner.def(table)?;
        let record = self.inner.encode_row(table, def, id, &new)?;
        for (column, col) in def.columns.iter().enumerate() {
            if col.index == IndexKind::None {
                continue;
            }
            let before = old.and_then(|r| r.get(column));
            let after = new.get(column);
            if before == after {
                continue;
            }
            if let Some(v) = before {
                let prefix = keys::index_prefix(id.slot(), table, column as u16, v);
                Self::set_idx(keys::index_key(&prefix, id), false, overlay, undo, staged);
            }
            if let Some(v) = after {
                let prefix = keys::index_prefix(id.slot(), table, column as u16, v);
                if col.index == IndexKind::Unique && self.index_taken(&prefix, overlay)? {
                    return Err(StoreError::Duplicate { table: def.name, column: col.name });
                }
                Self::set_idx(keys::index_key(&prefix, id), true, overlay, undo, staged);
            }
        }
        staged.push(Staged::Put(Cf::Rows, keys::row_key(table, id).to_vec(), record));
        Self::set_row(table, id, Some(new), overlay, undo);
        Ok(())
    }

    fn row(&self, table: TableId, id: RowId, overlay: &Overlay) -> Result<Option<Row>, StoreError> {
        match overlay.rows.get(&(table, id)) {
            Some(row) => Ok(row.clone()),
            None => self.inner.read_row(table, id),
        }
    }

    fn index_taken(&self, prefix: &[u8], overlay: &Overlay) -> Result<bool, StoreError> {
        let staged_put =
            overlay.idx.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)).any(|(_, put)| *put);
        if staged_put {
            return Ok(true);
        }
        self.inner.index_has(prefix, |key| overlay.idx.get(key) == Some(&false))
    }

    fn counter(&self, table: TableId, slot: Slot) -> Result<Counter, StoreError> {
        match self.counters.get(&(table, slot)) {
            Some(counter) => Ok(*counter),
            None => {
                let last = self.inner.load_counter(table, slot)?;
                Ok(Counter { last, reserved: last })
            }
        }
    }

    /// Moves the counter of `id`'s slot past a given id, so no insert reissues it.
    fn pass_id(
        &mut self,
        table: TableId,
        id: RowId,
        undo: &mut Undo,
        staged: &mut Vec<Staged>,
    ) -> Result<(), StoreError> {
        let slot = id.slot();
        let counter = self.counter(table, slot)?;
        if id.seq() <= counter.last {
            return Ok(());
        }
        let next = Counter { last: id.seq(), reserved: counter.reserved.max(id.seq()) };
        if next.reserved > counter.reserved {
            staged.push(Staged::Put(
                Cf::Meta,
                keys::counter_key(slot, table).to_vec(),
                next.reserved.to_be_bytes().to_vec(),
            ));
        }
        let previous = self.counters.insert((table, slot), next);
        undo.counters.push(((table, slot), previous));
        Ok(())
    }

    fn next_id(
        &mut self,
        table: TableId,
        slot: Slot,
        undo: &mut Undo,
        staged: &mut Vec<Staged>,
    ) -> Result<RowId, StoreError> {
        let counter = self.counter(table, slot)?;
        let seq = counter.last + 1;
        // An era's sequences end where the next era's begin: that one belongs to an adoption.
        if seq & RowId::MAX_SEQ == 0 || seq >> 33 > RowId::MAX_ERA {
            let name = self.inner.def(table)?.name;
            return Err(StoreError::SequenceExhausted { table: name, slot: slot.0 });
        }
        let mut next = Counter { last: seq, reserved: counter.reserved };
        if seq > counter.reserved {
            next.reserved = (seq + ID_BLOCK - 1).min(seq | RowId::MAX_SEQ);
            let value = next.reserved.to_be_bytes().to_vec();
            staged.push(Staged::Put(Cf::Meta, keys::counter_key(slot, table).to_vec(), value));
        }
        let previous = self.counters.insert((table, slot), next);
        undo.counters.push(((table, slot), previous));
        Ok(RowId::new(slot, seq))
    }

    fn set_idx(key: Vec<u8>, put: bool, overlay: &mut Overlay, undo: &mut Undo, staged: &mut Vec<Staged>) {
        staged.push(if put {
            Staged::Put(Cf::Idx, key.clone(), Vec::new())
        } else {
            Staged::Delete(Cf::Idx, key.clone())
        });
        let previous = overlay.idx.insert(key.clone(), put);
        undo.idx.push((key, previous));
    }

    fn set_row(table: TableId, id: RowId, row: Option<Row>, overlay: &mut Overlay, undo: &mut Undo) {
        let previous = overlay.rows.insert((table, id), row);
        undo.rows.push(((table, id), previous));
    }

    fn revert(&mut self, undo: Undo, overlay: &mut Overlay) {
        for (key, previous) in undo.rows.into_iter().rev() {
            match previous {
                Some(row) => overlay.rows.insert(key, row),
                None => overlay.rows.remove(&key),
            };
        }
        for (key, previous) in undo.idx.into_iter().rev() {
            match previous {
                Some(put) => overlay.idx.insert(key, put),
                None => overlay.idx.remove(&key),
            };
        }
        for (key, previous) in undo.counters.into_iter().rev() {
            match previous {
                Some(counter) => self.counters.insert(key, counter),
                None => self.counters.remove(&key),
            };
        }
    }
}

/// Stages a slot's deleted keys, then its entries; each key must be of the slot and of its
/// data (an index key long enough to end with a row id: the index filters take the value
/// part before it).
fn stage_delta(
    slot: Slot,
    removed: &[RawKey],
    entries: &[RawEntry],
    staged: &mut Vec<Staged>,
) -> Result<(), StoreError> {
    let prefix = keys::slot_prefix(slot);
    let check = |region: Region, key: &[u8]| {
        if !(key.starts_with(&prefix) && key.len() > prefix.len()) || prefix == keys::GLOBAL {
            Err(StoreError::OtherSlot { slot: slot.0, id: 0 })
        } else if region == Region::Idx && !keys::is_index_key(key) {
            Err(StoreError::ShortIndexKey { slot: slot.0 })
        } else {
            Ok(())
        }
    };
    for removed in removed {
        check(removed.region, &removed.key)?;
        staged.push(Staged::Delete(removed.region.into(), removed.key.clone()));
    }
    for entry in entries {
        check(entry.region, &entry.key)?;
        staged.push(Staged::Put(entry.region.into(), entry.key.clone(), entry.value.clone()));
    }
    Ok(())
}

/// Stages node-local records set (`Some`) or deleted (`None`).
fn stage_local(records: &[(String, Option<Vec<u8>>)], staged: &mut Vec<Staged>) {
    for (name, value) in records {
        let key = keys::local_key(name);
        staged.push(match value {
            Some(v) => Staged::Put(Cf::Meta, key, v.clone()),
            None => Staged::Delete(Cf::Meta, key),
        });
    }
}

/// The end of a slot's log entries.
fn log_end(slot: Slot) -> Result<Vec<u8>, StoreError> {
    keys::prefix_end(&keys::slot_prefix(slot)).ok_or(StoreError::OtherSlot { slot: slot.0, id: 0 })
}

/// What staged writes leave: each key's last write, as entries with their values and keys
/// removed.
fn effects(staged: Vec<Staged>) -> SlotDelta {
    let mut last: BTreeMap<(Region, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
    for write in staged {
        match write {
            Staged::Put(c, key, value) => {
                if let Some(region) = c.region() {
                    last.insert((region, key), Some(value));
                }
            }
            Staged::Delete(c, key) => {
                if let Some(region) = c.region() {
                    last.insert((region, key), None);
                }
            }
            // Batches stage no ranges.
            Staged::DeleteRange(..) => {}
        }
    }
    let mut delta = SlotDelta::default();
    for ((region, key), value) in last {
        match value {
            Some(value) => delta.entries.push(RawEntry { region, key, value }),
            None => delta.removed.push(RawKey { region, key }),
        }
    }
    delta
}

/// Whether two rows hold the same values (a row read back may be wider or narrower by absent
/// trailing columns).
fn same_row(a: &Row, b: &Row) -> bool {
    let width = a.cols.len().max(b.cols.len());
    (0..width).all(|column| a.get(column) == b.get(column))
}
