//! Offline queues: messages for users who had no session, or never acked, kept in `timoffline`
//! in the recipient's slot and drained oldest first (frame 17).
//!
//! Each queue is capped by entry count and by age; what falls over a cap is dropped oldest
//! first and counted in the log. Counts are cached per user (computed from the index the first
//! time a user's queue grows after start) and checked exactly before anything is dropped, so a
//! stale count can delay a drop but never cause a wrong one. An exact count reads the whole
//! queue's index, so a full queue is trimmed back to its cap once it passes the cap by a 64th
//! ([`trim_slack`]), not at every message that reaches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tim_kv::{Batch, Cursor, Row, RowId, StoreError, TableId};
use tim_net::codec::{decode_body, Encoding};
use tim_net::proto::TimMessage;
use tim_net::report::ErrorChain;
use tim_shard::Cluster;
use tracing::warn;

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::model::partition::{self, Inserts};
use crate::model::tables::timoffline;

/// Entries a queue may hold past a cap of `max` before it is trimmed back to `max`: a 64th of
/// the cap, none below 64 (a queue of 10,000 is counted once per 156 messages it takes, not
/// at each).
fn trim_slack(max: usize) -> usize {
    max / 64
}

/// Most queued copies of one message a user can have (one per delivery of it).
const MAX_COPIES: usize = 64;
/// Most users whose queue length is cached; past it the cache starts over.
const MAX_TRACKED: usize = 100_000;
/// Entries read at a time while looking for a message's copies.
const COPIES_PAGE: usize = 256;

/// The `mid` an entry holds in its row (the stanza of a message stored with its entry has
/// none), in the column of either layout.
fn entry_mid(row: &Row) -> Option<i64> {
    [timoffline::MID, timoffline::INDEXED_MID].into_iter().find_map(|column| row.u64_at(column)).map(|mid| mid as i64)
}

/// A message for a user's queue, encoded (thrift-compact), with its `mid` when it has one.
pub type Stanza = (UserId, Bytes, Option<i64>);

/// Caps of each user's queue.
#[derive(Debug, Clone, Copy)]
pub struct OfflineLimits {
    pub max_entries: usize,
    pub max_age: Duration,
}

pub struct OfflineQueue {
    data: Arc<Cluster>,
    table: TableId,
    limits: OfflineLimits,
    counts: Mutex<HashMap<UserId, usize>>,
    dropped: AtomicU64,
    /// Entries written since the node started (`/metrics`).
    pub queued: AtomicU64,
}

impl OfflineQueue {
    pub fn new(data: Arc<Cluster>, limits: OfflineLimits) -> Result<Self, StoreError> {
        let table = data.table(timoffline::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        Ok(Self {
            data,
            table,
            limits,
            counts: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the cached queue lengths (rows were written behind the cache: an import).
    pub fn forget_counts(&self) {
        self.counts().clear();
    }

    /// Up to `limit` entry ids of `user`'s queue, oldest first (index only).
    async fn entry_ids(&self, user: UserId, limit: usize) -> Result<Vec<RowId>, EngineError> {
        let table = self.table;
        let ids = self
            .data
            .ids(table, partition::user(user), timoffline::UUID, &user.to_be_bytes(), Cursor::OLDEST, limit)
            .await?;
        Ok(ids)
    }

    /// Appends each message (encoded, with its `mid`) to its user's queue, one write per user
    /// slot, all at once; the entries' ids, in order. A queue over `max_entries` loses its
    /// oldest entries.
    pub async fn push_all(&self, entries: &[Stanza]) -> Result<Vec<RowId>, EngineError> {
        let mut inserts = Inserts::default();
        for (user, stanza, mid) in entries {
            inserts.add(partition::user(*user), self.table, Self::entry(*user, stanza.clone(), *mid));
        }
        let ids = inserts.write(&self.data).await?;
        self.written(entries.iter().map(|(user, _, _)| *user)).await;
        Ok(ids)
    }

    /// The row of `user`'s entry for a message (its `mid`, when it has one, in the MID column).
    fn entry(user: UserId, stanza: Bytes, mid: Option<i64>) -> Row {
        let mut row = Row::new(timoffline::DEF.columns.len());
        row.set(timoffline::UUID, Bytes::copy_from_slice(&user.to_be_bytes())).set(timoffline::STANZA, stanza);
        if let Some(mid) = mid {
            row.set(timoffline::MID, Bytes::copy_from_slice(&mid.to_be_bytes()));
        }
        row
    }

    /// Counts entries written to the queues of `users` (one per entry).
    async fn written(&self, users: impl Iterator<Item = UserId>) {
        for user in users {
            self.queued.fetch_add(1, Ordering::Relaxed);
            self.pushed(user).await;
        }
    }

    /// Counts an entry written to `user`'s queue; a queue over `max_entries` loses its oldest
    /// entries. The entry is written already, so a failure here is logged, not returned: the
    /// cap is then enforced at the next push.
    async fn pushed(&self, user: UserId) {
        if let Err(e) = self.count_and_trim(user).await {
            warn!(error = %ErrorChain(&e), uid = %user.node(), "offline queue cap not checked");
        }
    }

    async fn count_and_trim(&self, user: UserId) -> Result<(), EngineError> {
        let cached = self.counts().get_mut(&user).map(|n| {
            *n += 1;
            *n
        });
        let count = match cached {
            Some(n) => n,
            None => {
                let n = self.entry_ids(user, self.limits.max_entries + 1).await?.len();
                let mut counts = self.counts();
                if counts.len() >= MAX_TRACKED {
                    counts.clear();
                }
                counts.insert(user, n);
                n
            }
        };
        if count > self.limits.max_entries + trim_slack(self.limits.max_entries) {
            self.trim(user).await?;
        }
        Ok(())
    }

    /// Drops the oldest entries over `max_entries`, after counting them exactly.
    async fn trim(&self, user: UserId) -> Result<(), EngineError> {
        self.settle(user).await?;
        let max = self.limits.max_entries;
        let ids = self.entry_ids(user, max.saturating_add(MAX_COPIES * 16)).await?;
        let excess = ids.len().saturating_sub(max);
        self.counts().insert(user, ids.len().min(max));
        if let Some(oldest) = ids.get(..excess).filter(|o| !o.is_empty()) {
            self.data.write(self.relaxed_deletion(user, oldest)).await?;
            self.count_dropped(user, oldest.len(), "over the entry cap");
        }
        Ok(())
    }

    fn count_dropped(&self, user: UserId, n: usize, why: &'static str) {
        let total = self.dropped.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        warn!(uid = %user.node(), dropped = n, dropped_total = total, why, "offline entries dropped");
    }

    /// The oldest `limit` entries of `user`'s queue. Entries past `max_age`, and entries that
    /// no longer decode, are dropped (logged) rather than left to block the queue.
    pub async fn oldest(&self, user: UserId, limit: usize) -> Result<Vec<(RowId, TimMessage)>, EngineError> {
        self.settle(user).await?;
        let table = self.table;
        let rows = self
            .data
            .page(table, partition::user(user), timoffline::UUID, &user.to_be_bytes(), Cursor::OLDEST, limit)
            .await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let oldest_kept = i64::try_from(now.saturating_sub(self.limits.max_age).as_nanos()).unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(rows.len());
        let (mut expired, mut broken) = (Vec::new(), Vec::new());
        for (id, row) in rows {
            // An entry written in one commit with its message's history row (before the
            // conversations had logs) has its mid in the entry's row only.
            let mid = entry_mid(&row);
            let decoded = row.get(timoffline::STANZA).map(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact));
            match decoded.map(|d| d.map(|msg| TimMessage { mid: msg.mid.or(mid), ..msg })) {
                Some(Ok(msg)) if msg.timestamp.is_some_and(|t| t < oldest_kept) => expired.push(id),
                Some(Ok(msg)) => out.push((id, msg)),
                _ => broken.push(id),
            }
        }
        for (ids, why) in [(expired, "older than the age cap"), (broken, "undecodable")] {
            if !ids.is_empty() {
                self.remove(user, &ids).await?;
                self.count_dropped(user, ids.len(), why);
            }
        }
        Ok(out)
    }

    /// Deletes `user`'s queued copies of message `mid` (a recalled or burned message).
    pub async fn remove_message(&self, user: UserId, mid: i64) -> Result<(), EngineError> {
        let ids = self.copies(user, mid).await?;
        if ids.is_empty() {
            return Ok(());
        }
        self.remove(user, &ids).await
    }

    /// The entries of `user`'s queue that hold message `mid`, read page by page from the
    /// oldest (no index by `mid`: recall, burn and a message sent again are rare, and a queue
    /// is short but for users long away).
    pub async fn copies(&self, user: UserId, mid: i64) -> Result<Vec<RowId>, EngineError> {
        let (table, slot, key) = (self.table, partition::user(user), user.to_be_bytes());
        let most = self.limits.max_entries.saturating_add(trim_slack(self.limits.max_entries) + MAX_COPIES);
        let (mut found, mut read, mut from) = (Vec::new(), 0, Some(Cursor::OLDEST));
        while let Some(at) = from.filter(|_| read < most && found.len() < MAX_COPIES) {
            let page = self.data.page(table, slot, timoffline::UUID, &key, at, COPIES_PAGE).await?;
            read += page.len();
            found.extend(page.iter().filter(|(_, row)| entry_mid(row) == Some(mid)).map(|(id, _)| *id));
            from = Cursor::after(&page, COPIES_PAGE);
        }
        Ok(found)
    }

    /// Deletes those of `ids` that are entries of `user`'s queue (an operator names them);
    /// how many there were.
    pub async fn remove_listed(&self, user: UserId, ids: &[RowId]) -> Result<usize, EngineError> {
        let owner = user.to_be_bytes();
        let mut own = Vec::with_capacity(ids.len());
        for id in ids {
            let row = self.data.get(self.table, *id).await?;
            if row.is_some_and(|row| row.get(timoffline::UUID).is_some_and(|u| u.as_ref() == owner)) {
                own.push(*id);
            }
        }
        if !own.is_empty() {
            self.remove(user, &own).await?;
        }
        Ok(own.len())
    }

    /// Deletes entries of `user`'s queue (expired, recalled, burned, or named by an operator):
    /// written when this returns, so any read after it, on any node, no longer finds them, and
    /// synced, so a recalled message does not come back after a power loss.
    pub async fn remove(&self, user: UserId, ids: &[RowId]) -> Result<(), EngineError> {
        self.data.write(self.deletion(user, ids)).await?;
        self.forget(user, ids.len());
        Ok(())
    }

    /// Deletes entries of `user`'s queue that its client acked. On the queue's owner the
    /// deletion is deferred to the writer's next group rather than waited for (a writer
    /// hand-off and a wake-up less per acked message); the reads that must not see an acked
    /// entry settle first ([`OfflineQueue::oldest`], the exact count before a trim).
    pub async fn remove_acked(&self, user: UserId, ids: &[RowId]) -> Result<(), EngineError> {
        if let Err(batch) = self.data.defer_here(self.relaxed_deletion(user, ids)).await {
            self.data.write(batch).await?;
        }
        self.forget(user, ids.len());
        Ok(())
    }

    fn forget(&self, user: UserId, removed: usize) {
        if let Some(n) = self.counts().get_mut(&user) {
            *n = n.saturating_sub(removed);
        }
    }

    /// Waits, when this node owns `user`'s queue, for the deletions it deferred there: a read
    /// after this sees them. Deletions made on other nodes are written through the owner and
    /// waited for; a drain on another node reads through the owner without settling, so for a
    /// user with sessions on two nodes it may, within [`tim_kv::DEFER_FOR`] of an ack on the
    /// owner, send an acked message again (clients drop it by `mid`).
    async fn settle(&self, user: UserId) -> Result<(), EngineError> {
        if self.data.owner_of(partition::user(user)) == Some(self.data.node()) {
            self.data.settle().await?;
        }
        Ok(())
    }

    fn deletion(&self, user: UserId, ids: &[RowId]) -> Batch {
        let mut batch = Batch::new(partition::user(user));
        for id in ids {
            batch.delete(self.table, *id);
        }
        batch
    }

    /// A deletion that reaches the disk with the next synced write: for entries that may come
    /// back once after a power loss, as an acked message (clients drop a message they have by
    /// its `mid`) or one over the cap (trimmed again).
    fn relaxed_deletion(&self, user: UserId, ids: &[RowId]) -> Batch {
        let mut batch = self.deletion(user, ids);
        batch.relaxed();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::history::now_ns;
    use crate::testing::user;

    async fn queue() -> OfflineQueue {
        let limits = OfflineLimits { max_entries: 1_000, max_age: Duration::from_secs(3_600) };
        OfflineQueue::new(crate::testing::standalone().await, limits).unwrap()
    }

    fn message(mid: i64) -> Bytes {
        let msg = TimMessage { mid: Some(mid), timestamp: Some(now_ns()), ..TimMessage::default() };
        tim_net::codec::body_bytes(&msg, Encoding::Compact)
    }

    /// The ids of `queue`'s entries indexed under `mid` in the earlier layout's column.
    async fn indexed_by(queue: &OfflineQueue, user: UserId, mid: i64) -> Vec<RowId> {
        let slot = partition::user(user);
        let key = mid.to_be_bytes();
        queue.data.ids(queue.table, slot, timoffline::INDEXED_MID, &key, Cursor::OLDEST, 8).await.unwrap()
    }

    /// An entry is its row and the queue's index entry: nothing is indexed by `mid`, and the
    /// copies of a message are found by reading the queue, past a page of others.
    #[tokio::test]
    async fn entries_are_not_indexed_by_mid_and_copies_are_found_in_the_queue() {
        let queue = queue().await;
        let ann = user(7);
        let others: Vec<Stanza> = (1..=300).map(|mid| (ann, message(mid), Some(mid))).collect();
        queue.push_all(&others).await.unwrap();
        let copy = queue.push_all(&[(ann, message(999), Some(999))]).await.unwrap();
        assert!(indexed_by(&queue, ann, 999).await.is_empty(), "no index entry by mid");
        assert_eq!(queue.copies(ann, 999).await.unwrap(), copy, "found after more than a page of others");
        assert_eq!(queue.copies(ann, 150).await.unwrap().len(), 1);
        assert!(queue.copies(user(8), 999).await.unwrap().is_empty(), "only the user's own queue");

        queue.remove_message(ann, 999).await.unwrap();
        assert!(queue.copies(ann, 999).await.unwrap().is_empty());
        assert_eq!(queue.oldest(ann, 1_000).await.unwrap().len(), 300, "the others stay");
    }

    /// A data dir written before: entries with their `mid` in the indexed column are drained
    /// with it, and recall finds and removes them.
    #[tokio::test]
    async fn entries_of_the_earlier_layout_are_drained_and_recalled() {
        let queue = queue().await;
        let ann = user(7);
        let mut row = Row::new(timoffline::DEF.columns.len());
        let stanza = tim_net::codec::body_bytes(
            &TimMessage { timestamp: Some(now_ns()), ..TimMessage::default() },
            Encoding::Compact,
        );
        row.set(timoffline::UUID, Bytes::copy_from_slice(&ann.to_be_bytes()))
            .set(timoffline::STANZA, stanza)
            .set(timoffline::INDEXED_MID, Bytes::copy_from_slice(&42i64.to_be_bytes()));
        let mut batch = Batch::new(partition::user(ann));
        batch.insert(queue.table, row);
        let old = queue.data.write(batch).await.unwrap();
        queue.push_all(&[(ann, message(43), Some(43))]).await.unwrap();

        let drained = queue.oldest(ann, 10).await.unwrap();
        let mids: Vec<_> = drained.iter().map(|(_, msg)| msg.mid).collect();
        assert_eq!(mids, [Some(42), Some(43)], "the earlier entry keeps its mid");
        assert_eq!(indexed_by(&queue, ann, 42).await, old, "the earlier layout is indexed by mid");
        assert_eq!(queue.copies(ann, 42).await.unwrap(), old);
        queue.remove_message(ann, 42).await.unwrap();
        assert!(indexed_by(&queue, ann, 42).await.is_empty(), "its index entry went with it");
        assert_eq!(queue.oldest(ann, 10).await.unwrap().len(), 1);
    }
}
