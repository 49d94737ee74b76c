//! Who may have 1:1 messages waiting for a user: a row per peer in the user's slot, read by
//! the user's offline drain (`services::chat_log` keeps the messages and the cursors).
//!
//! Agreement: before a message from `peer` to `user` commits, a row (`user`, `peer`) marked
//! no longer than [`Inbox::fresh_for`] ago is durable on the owner of `user`'s slot. The
//! sending node remembers the marks it saw, so a conversation is marked once per
//! `fresh_for`, not once per message. A row is pruned only once every message that could
//! rely on it is past the age cap: a message relying on a mark made at `t` was sent before
//! `t + fresh_for` and expires before `t + fresh_for + max_age`; another `fresh_for` covers
//! the clocks of two nodes disagreeing. A prune and a mark of the same row are serialized.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, Slot, StoreError, TableId};
use tim_shard::{Cluster, EngineAnswer};

use crate::error::EngineError;
use crate::model::ident::{directed_pair_id, UserId};
use crate::model::partition;
use crate::model::tables::timinbox;
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::history::now_ns;

/// Marks a sending node remembers; past it, it starts over.
const MAX_REMEMBERED: usize = 1_000_000;
/// Stripes of the locks that serialize a row's mark and prune.
const STRIPES: usize = 256;
/// Rows read at a time.
const PAGE: usize = 512;

#[derive(Debug, Serialize, Deserialize)]
enum InboxOp {
    Mark { user: UserId, peer: UserId },
    Peers { user: UserId },
}

impl SlotOp for InboxOp {
    fn service(&self) -> Service {
        Service::Inbox
    }
}

impl Arrivals for Inbox {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                InboxOp::Mark { user, peer } => seam::answer(self.mark_here(user, peer).await, "inbox mark"),
                InboxOp::Peers { user } => seam::answer(self.peers_here(user).await, "inbox peers"),
            }
        })
    }
}

/// When a row was marked, ns since the epoch (0: unreadable, so as old as can be).
fn marked_at(row: &Row) -> i64 {
    row.u64_at(timinbox::MARKED).and_then(|at| i64::try_from(at).ok()).unwrap_or(0)
}

pub struct Inbox {
    data: Arc<Cluster>,
    table: TableId,
    /// How long a mark counts, in ns: a quarter of the age cap.
    fresh_for: i64,
    /// How old a row is when it is pruned, in ns.
    prune_after: i64,
    /// Marks seen by this node, as sender: `(user, peer)` to when the row was marked.
    remembered: Mutex<HashMap<(UserId, UserId), i64>>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Inbox {
    pub fn new(data: Arc<Cluster>, max_age: Duration) -> Result<Self, StoreError> {
        let table = data.table(timinbox::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        let max_age = i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX);
        let fresh_for = max_age / 4;
        let prune_after = max_age.saturating_add(fresh_for.saturating_mul(2));
        let locks = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Self { data, table, fresh_for, prune_after, remembered: Mutex::new(HashMap::new()), locks })
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<(UserId, UserId), i64>> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the marks seen (rows were written behind them: an import).
    pub fn forget(&self) {
        self.remembered().clear();
    }

    fn lock(&self, pair: &[u8; 16]) -> Result<&tokio::sync::Mutex<()>, EngineError> {
        let stripe = (xxhash_rust::xxh3::xxh3_64(pair) % STRIPES as u64) as usize;
        self.locks.get(stripe).ok_or(EngineError::Internal("no inbox stripe"))
    }

    /// Makes sure each `(user, peer)` is marked fresh, all at once: before a message from
    /// `peer` to `user` is stored.
    pub async fn ensure(&self, marks: &[(UserId, UserId)]) -> Result<(), EngineError> {
        let now = now_ns();
        let stale: Vec<(UserId, UserId)> = {
            let remembered = self.remembered();
            let mut stale: Vec<_> = marks
                .iter()
                .copied()
                .filter(|m| remembered.get(m).is_none_or(|at| now >= at.saturating_add(self.fresh_for)))
                .collect();
            stale.sort_unstable();
            stale.dedup();
            stale
        };
        if stale.is_empty() {
            return Ok(());
        }
        let calls = stale.iter().map(|&(user, peer)| {
            at_slot(&self.data, partition::user(user), self.mark_here(user, peer), InboxOp::Mark { user, peer })
        });
        let marked: Vec<i64> = try_join_all(calls).await?;
        let mut remembered = self.remembered();
        if remembered.len() + stale.len() > MAX_REMEMBERED {
            remembered.clear();
        }
        remembered.extend(stale.into_iter().zip(marked));
        Ok(())
    }

    /// On the owner of `user`'s slot: marks `peer` for `user` unless it was marked less than
    /// [`Inbox::fresh_for`] ago (synced: a message relies on it); when the row was marked.
    async fn mark_here(&self, user: UserId, peer: UserId) -> Result<i64, EngineError> {
        let pair = directed_pair_id(user, peer);
        let _serial = self.lock(&pair)?.lock().await;
        let slot = partition::user(user);
        let found = self.data.find(self.table, slot, timinbox::PAIR, &pair).await?;
        let now = now_ns();
        let marked = Bytes::copy_from_slice(&now.to_be_bytes());
        let mut batch = Batch::new(slot);
        match found {
            Some((_, row)) if now < marked_at(&row).saturating_add(self.fresh_for) => return Ok(marked_at(&row)),
            Some((id, _)) => {
                batch.update(self.table, id, vec![(timinbox::MARKED, Some(marked))]);
            }
            None => {
                let mut row = Row::new(timinbox::DEF.columns.len());
                row.set(timinbox::UID, Bytes::copy_from_slice(&user.to_be_bytes()))
                    .set(timinbox::PAIR, Bytes::copy_from_slice(&pair))
                    .set(timinbox::MARKED, marked);
                batch.insert(self.table, row);
            }
        }
        self.data.write(batch).await?;
        Ok(now)
    }

    /// The peers whose 1:1 messages `user` may not have had; rows past the prune age go.
    pub async fn peers(&self, user: UserId) -> Result<Vec<UserId>, EngineError> {
        at_slot(&self.data, partition::user(user), self.peers_here(user), InboxOp::Peers { user }).await
    }

    async fn peers_here(&self, user: UserId) -> Result<Vec<UserId>, EngineError> {
        let slot = partition::user(user);
        let key = user.to_be_bytes();
        let now = now_ns();
        let (mut peers, mut old) = (Vec::new(), Vec::new());
        let mut from = Some(Cursor::OLDEST);
        while let Some(at) = from {
            let page = self.data.page(self.table, slot, timinbox::UID, &key, at, PAGE).await?;
            for (_, row) in &page {
                let Some(pair) = row.get(timinbox::PAIR).and_then(|p| <[u8; 16]>::try_from(p.as_ref()).ok()) else {
                    continue;
                };
                let (_, peer) = pair.split_at(8);
                let peer = UserId::from_be_bytes(peer.try_into().unwrap_or_default());
                if now >= marked_at(row).saturating_add(self.prune_after) {
                    old.push(pair);
                } else {
                    peers.push(peer);
                }
            }
            from = Cursor::after(&page, PAGE);
        }
        for pair in old {
            self.prune(slot, &pair, now).await?;
        }
        Ok(peers)
    }

    /// Deletes an old row, unless a mark made it fresh meanwhile.
    async fn prune(&self, slot: Slot, pair: &[u8; 16], now: i64) -> Result<(), EngineError> {
        let _serial = self.lock(pair)?.lock().await;
        let Some((id, row)) = self.data.find(self.table, slot, timinbox::PAIR, pair).await? else { return Ok(()) };
        if now >= marked_at(&row).saturating_add(self.prune_after) {
            let mut batch = Batch::new(slot);
            batch.delete(self.table, id).relaxed();
            self.data.write(batch).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::user;

    /// A conversation is marked once while the mark is fresh, whichever node sends; a row past
    /// the prune age goes when the user's peers are read, and a fresh one stays.
    #[tokio::test]
    async fn marks_are_written_once_while_fresh_and_old_ones_pruned() {
        let data = crate::testing::standalone().await;
        let inbox = Inbox::new(data.clone(), Duration::from_secs(3_600)).unwrap();
        let (ben, ann, vic) = (user(9), user(7), user(5));
        inbox.ensure(&[(ben, ann), (ben, ann)]).await.unwrap();
        let before = data.store_figures();
        inbox.ensure(&[(ben, ann)]).await.unwrap();
        let elsewhere = Inbox::new(data.clone(), Duration::from_secs(3_600)).unwrap();
        elsewhere.ensure(&[(ben, ann)]).await.unwrap();
        assert_eq!(data.store_figures().memtable_puts, before.memtable_puts, "a fresh mark is not written again");
        assert_eq!(inbox.peers(ben).await.unwrap(), [ann]);
        assert!(inbox.peers(ann).await.unwrap().is_empty(), "a mark is one direction");

        let mut row = Row::new(timinbox::DEF.columns.len());
        row.set(timinbox::UID, Bytes::copy_from_slice(&ben.to_be_bytes()))
            .set(timinbox::PAIR, Bytes::copy_from_slice(&directed_pair_id(ben, vic)))
            .set(timinbox::MARKED, Bytes::copy_from_slice(&1i64.to_be_bytes()));
        let mut batch = Batch::new(partition::user(ben));
        batch.insert(inbox.table, row);
        data.write(batch).await.unwrap();
        assert_eq!(inbox.peers(ben).await.unwrap(), [ann], "the old row is not listed");
        let pair = directed_pair_id(ben, vic);
        let left = data.find(inbox.table, partition::user(ben), timinbox::PAIR, &pair).await.unwrap();
        assert!(left.is_none(), "and it is gone");

        // A mark on a pruned conversation writes it anew.
        elsewhere.ensure(&[(ben, vic)]).await.unwrap();
        let mut peers = inbox.peers(ben).await.unwrap();
        peers.sort_unstable();
        let mut expected = vec![ann, vic];
        expected.sort_unstable();
        assert_eq!(peers, expected);
    }
}
