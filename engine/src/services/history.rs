//! The history of conversations (1:1 and group), in the conversation's slot: a message's row
//! gives its `mid`. A 1:1 message with a client `id` is stored once however often it is sent
//! ([`DEDUP_WINDOW`]), and a message's recipients' offline entries are written in the same
//! commit as its row when this node owns every slot involved.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, RowId, Slot, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::proto::{ErrorCode, Tid, TimMessage};
use tim_shard::{Cluster, EngineAnswer};

use crate::error::EngineError;
use crate::model::ident::{pair_id, UserId};
use crate::model::partition::{self, Inserts};
use crate::model::tables::timmessage;
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::offline::OfflineQueue;

/// How long a message sent again with the same client `id` and content counts as the same.
const DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Most history rows one request looks at when a time bound skips rows.
const MAX_SCAN: usize = 10_000;

/// Stripes of the locks that make "look for the message, else store it" one step.
const DEDUP_STRIPES: usize = 256;

/// A message stored once: its `mid`, whether it was stored now (not a repeat), and its
/// recipient's offline entry when that was written in the same commit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Appended {
    pub mid: i64,
    pub fresh: bool,
    pub entry: Option<RowId>,
}

/// The operations on a conversation, run on the owner of its slot.
#[derive(Debug, Serialize, Deserialize)]
enum HistoryOp {
    /// Stores a 1:1 message with a client id once (the history's idempotent append).
    AppendOnce {
        chat: [u8; 16],
        from: UserId,
        /// The message as stored ([`History::stored_form`]), thrift-compact.
        stored: Bytes,
        key: [u8; 24],
        /// The recipient and the message for its queue (thrift-compact), whose offline entry is
        /// written with the row when its queue is on the same node; `None` when the caller
        /// queues it (after an earlier entry).
        to: Option<(UserId, Bytes)>,
    },
}

impl SlotOp for HistoryOp {
    fn service(&self) -> Service {
        Service::History
    }
}

impl Arrivals for History {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                HistoryOp::AppendOnce { chat, from, stored, key, to } => {
                    seam::answer(self.append_once_here(chat, from, stored, &key, to).await, "append")
                }
            }
        })
    }
}

/// History of 1:1 conversations.
pub struct History {
    data: Arc<Cluster>,
    /// The recipients' queues, written in the same commit as the rows where they can be.
    offline: Arc<OfflineQueue>,
    table: TableId,
    /// Held, on the owner of a conversation, while a message with a client `id` is looked
    /// for and stored: the same message sent again at once (its first attempt still in
    /// flight, from a session that dropped) finds the first rather than racing it.
    dedup_locks: Vec<tokio::sync::Mutex<()>>,
}

impl History {
    pub fn new(data: Arc<Cluster>, offline: Arc<OfflineQueue>) -> Result<Self, StoreError> {
        let table = data.table(timmessage::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        let dedup_locks = (0..DEDUP_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Self { data, offline, table, dedup_locks })
    }

    /// On the owner of `chat`'s slot: the message stored with `key` in the last
    /// [`DEDUP_WINDOW`], or the one stored now, with its entry in the queue of `to` (when
    /// given) if this node owns that queue too ([`History::store`]).
    async fn append_once_here(
        &self,
        chat: [u8; 16],
        from: UserId,
        stored: Bytes,
        key: &[u8; 24],
        to: Option<(UserId, Bytes)>,
    ) -> Result<Appended, EngineError> {
        let [a, b, ..] = *key;
        let stripe = usize::from(u16::from_be_bytes([a, b])) % DEDUP_STRIPES;
        let _one_at_a_time = self.dedup_locks.get(stripe).ok_or(EngineError::Internal("no dedup stripe"))?.lock().await;
        if let Some(mid) = self.stored_as(chat, key).await? {
            return Ok(Appended { mid, fresh: false, entry: None });
        }
        let mut rows = Inserts::default();
        rows.add(partition::conversation(&chat), self.table, Self::row(chat, from, stored, Some(key)));
        let (to, msg) = to.unzip();
        let entry = to.map(|to| (0, to));
        let (ids, entries) = self.store(rows, entry.as_slice(), |_| msg.clone().unwrap_or_default()).await?;
        let id = *ids.first().ok_or(EngineError::Internal("a message write returned no id"))?;
        Ok(Appended { mid: mid_of(id)?, fresh: true, entry: entries.and_then(|e| e.first().copied()) })
    }

    /// [`History::append_once_here`], wherever the conversation's slot is.
    async fn append_once(
        &self,
        chat: [u8; 16],
        from: UserId,
        msg: &TimMessage,
        key: [u8; 24],
        to: Option<UserId>,
    ) -> Result<Appended, EngineError> {
        let stored = Self::stored_form(msg);
        let to = to.map(|to| (to, body_bytes(msg, Encoding::Compact)));
        let here = self.append_once_here(chat, from, stored.clone(), &key, to.clone());
        let call = HistoryOp::AppendOnce { chat, from, stored, key, to };
        at_slot(&self.data, partition::conversation(&chat), here, call).await
    }

    /// Writes history rows (`rows`, by conversation slot) and, when this node owns every slot
    /// involved, offline entries (`(row, to)`: the message of the `row`-th row, queued for
    /// `to`) in the same commit: one fsync rather than two in a row, and never a row without
    /// its entries; the writer gives each entry its row's id as `mid`. `message` gives the
    /// `row`-th message for the queues (thrift-compact), asked once per row and only when the
    /// entries are written here. The rows' ids, and the entries' ids when they were written
    /// (else the caller queues them through their owners, after the rows).
    async fn store(
        &self,
        rows: Inserts,
        entries: &[(usize, UserId)],
        message: impl Fn(usize) -> Bytes,
    ) -> Result<(Vec<RowId>, Option<Vec<RowId>>), EngineError> {
        let (mut batches, row_at) = rows.into_batches();
        let node = self.data.node();
        let here = |slot| self.data.owner_of(slot) == Some(node);
        let all_here =
            batches.iter().all(|b| here(b.slot())) && entries.iter().all(|(_, to)| here(partition::user(*to)));
        if all_here && !entries.is_empty() {
            let row_batches = batches.len();
            let mut queued = Inserts::default();
            let mut encoded: Vec<Option<Bytes>> = vec![None; row_at.len()];
            for (row, to) in entries {
                let earlier = *row_at.get(*row).ok_or(EngineError::Internal("an offline entry names no row"))?;
                let stanza = match encoded.get_mut(*row) {
                    Some(cell) => cell.get_or_insert_with(|| message(*row)).clone(),
                    None => message(*row),
                };
                self.offline.add_for_row(&mut queued, *to, stanza, earlier);
            }
            let (entry_batches, entry_at) = queued.into_batches();
            batches.extend(entry_batches);
            match self.data.write_here(batches).await {
                Ok(written) => {
                    let ids = written?;
                    self.offline.written(entries.iter().map(|(_, to)| *to)).await;
                    let entry_ids = partition::ids_at(&ids, entry_at.iter().map(|at| row_at.len() + at))?;
                    return Ok((partition::ids_at(&ids, row_at.iter().copied())?, Some(entry_ids)));
                }
                // A slot that moved since the look-up: the rows go through their owners.
                Err(mut back) => {
                    back.truncate(row_batches);
                    batches = back;
                }
            }
        }
        let ids = partition::write_batches(&self.data, batches, row_at.len()).await?;
        Ok((partition::ids_at(&ids, row_at.iter().copied())?, None))
    }

    /// `msg` as history keeps it, thrift-compact: the sender reduced to its node, no client
    /// id (TIM keeps the same).
    pub fn stored_form(msg: &TimMessage) -> Bytes {
        let stored = TimMessage {
            id: None,
            from_tid: msg.from_tid.as_ref().map(|t| Tid { node: t.node.clone(), ..Tid::default() }),
            ..msg.clone()
        };
        body_bytes(&stored, Encoding::Compact)
    }

    /// The history row of a message in conversation `chat` (`stored`: [`History::stored_form`]).
    fn row(chat: [u8; 16], from: UserId, stored: Bytes, dedup: Option<&[u8; 24]>) -> Row {
        let mut row = Row::new(timmessage::DEF.columns.len());
        row.set(timmessage::CHATID, Bytes::copy_from_slice(&chat))
            .set(timmessage::FID, Bytes::copy_from_slice(&from.to_be_bytes()))
            .set(timmessage::STANZA, stored);
        if let Some(key) = dedup {
            row.set(timmessage::DEDUP, Bytes::copy_from_slice(key));
        }
        row
    }

    /// The `mid` of a message of `chat` stored with `key` in the last [`DEDUP_WINDOW`]: the
    /// same message sent again.
    async fn stored_as(&self, chat: [u8; 16], key: &[u8; 24]) -> Result<Option<i64>, EngineError> {
        let slot = partition::conversation(&chat);
        let found = self.data.page(self.table, slot, timmessage::DEDUP, key, Cursor::NEWEST, 1).await?;
        let Some((mid, row)) = found.into_iter().next() else { return Ok(None) };
        let sent = row
            .get(timmessage::STANZA)
            .and_then(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact).ok())
            .and_then(|m| m.timestamp)
            .unwrap_or(0);
        let recent = now_ns().saturating_sub(sent) < DEDUP_WINDOW.as_nanos() as i64;
        Ok(if recent { Some(mid_of(mid)?) } else { None })
    }

    /// Stores normal messages of `from` in their conversations' histories, which gives each
    /// its `mid`, and in their recipients' offline queues when this node owns every slot
    /// involved: both in one commit ([`History::store`]). The messages stored with their
    /// entries (into the first list), and the others, stored in history only, whose entries
    /// [`queue_rest`] writes next (their `mid`, and whether each is a repeat, in the second).
    ///
    /// A message the client sent again (same `id` and content, within [`DEDUP_WINDOW`]) is not
    /// stored again: it gets its first `mid`, and its offline entry unless one is queued still
    /// (an entry already acked is queued again: the client drops the repeat by `mid`).
    pub async fn append(
        &self,
        from: UserId,
        accepted: &[Accepted],
    ) -> Result<(Vec<Option<Stored>>, Vec<Option<(i64, bool)>>), EngineError> {
        let mut out: Vec<Option<Stored>> = vec![None; accepted.len()];
        // Stored in history only, to be queued next: the mid, and whether it is a repeat (its
        // first entry may be queued still; a message stored now has none, so it is not looked
        // for). A queue takes its entries in the burst's order: once one waits here, later
        // ones wait too rather than being written with their rows.
        let mut unqueued: Vec<Option<(i64, bool)>> = vec![None; accepted.len()];
        // Messages without a client id are written together; one with an id is stored once,
        // on its conversation's owner, after the ones before it (mids follow the burst).
        let mut plain = Vec::new();
        for (i, Accepted { to, msg, dedup }) in accepted.iter().enumerate() {
            let Some(key) = dedup else {
                plain.push(i);
                continue;
            };
            self.append_plain(from, accepted, std::mem::take(&mut plain), &mut out, &mut unqueued).await?;
            let chat = pair_id(from, *to);
            let to_now = unqueued.iter().all(Option::is_none).then_some(*to);
            let Appended { mid, fresh, entry } = self.append_once(chat, from, msg, *key, to_now).await?;
            match entry {
                Some(entry) => set(&mut out, i, Stored { mid, entry, repeat: false }),
                None => set(&mut unqueued, i, (mid, !fresh)),
            }
        }
        self.append_plain(from, accepted, plain, &mut out, &mut unqueued).await?;
        Ok((out, unqueued))
    }

    /// Stores messages `which` of a burst that have no client id: with their offline entries
    /// when every slot is here and no earlier entry waits (into `out`), else in history only
    /// (into `unqueued`).
    async fn append_plain(
        &self,
        from: UserId,
        accepted: &[Accepted],
        which: Vec<usize>,
        out: &mut [Option<Stored>],
        unqueued: &mut [Option<(i64, bool)>],
    ) -> Result<(), EngineError> {
        let mut rows = Inserts::default();
        let mut entries = Vec::with_capacity(which.len());
        let mut messages = Vec::with_capacity(which.len());
        for (row, Accepted { to, msg, .. }) in which.iter().filter_map(|i| accepted.get(*i)).enumerate() {
            let chat = pair_id(from, *to);
            rows.add(partition::conversation(&chat), self.table, Self::row(chat, from, Self::stored_form(msg), None));
            entries.push((row, *to));
            messages.push(msg);
        }
        if entries.is_empty() {
            return Ok(());
        }
        let entries = if unqueued.iter().all(Option::is_none) { entries.as_slice() } else { &[] };
        let message = |row: usize| messages.get(row).map(|m| body_bytes(*m, Encoding::Compact)).unwrap_or_default();
        match self.store(rows, entries, message).await? {
            (ids, Some(entry_ids)) => {
                for ((id, entry), i) in ids.into_iter().zip(entry_ids).zip(which) {
                    set(out, i, Stored { mid: mid_of(id)?, entry, repeat: false });
                }
            }
            (ids, None) => {
                for (id, i) in ids.into_iter().zip(which) {
                    set(unqueued, i, (mid_of(id)?, false));
                }
            }
        }
        Ok(())
    }

    /// Deletes message `mid` of conversation `chat`, which `author` must have sent: 4104 when
    /// the conversation has no such message, 4105 when someone else sent it.
    pub async fn remove(&self, chat: [u8; 16], author: UserId, mid: i64) -> Result<(), EngineError> {
        let table = self.table;
        let id = RowId(u64::try_from(mid).map_err(|_| ErrorCode::ParamIncorrect)?);
        // A conversation's mids are ids of its slot.
        if id.slot() != partition::conversation(&chat) {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        let row = self.data.get(table, id).await?;
        let Some(row) = row.filter(|r| r.get(timmessage::CHATID).is_some_and(|c| c.as_ref() == chat)) else {
            return Err(ErrorCode::ParamIncorrect.into());
        };
        if row.get(timmessage::FID).is_none_or(|f| f.as_ref() != author.to_be_bytes()) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let mut batch = Batch::new(id.slot());
        batch.delete(self.table, id);
        self.data.write(batch).await?;
        Ok(())
    }

    /// Up to `limit` messages of `chat`, newest first, with `mid` at most `upto` (0: newest)
    /// and, when given, a timestamp at most `before_ns`.
    pub async fn page(
        &self,
        chat: [u8; 16],
        upto: i64,
        limit: usize,
        before_ns: Option<i64>,
    ) -> Result<Vec<TimMessage>, EngineError> {
        let table = self.table;
        let start = if upto <= 0 { Cursor::NEWEST } else { Cursor::Desc(RowId(upto as u64)) };
        // A time bound can skip rows, so read ahead in pages until `limit` are found, looking
        // at no more than `MAX_SCAN` rows (a bound before the conversation began must not make
        // one request read all of it).
        let slot = partition::conversation(&chat);
        let mut out = Vec::new();
        let mut cursor = start;
        let mut scanned = 0;
        while scanned < MAX_SCAN {
            let page = self.data.page(table, slot, timmessage::CHATID, &chat, cursor, limit.max(1)).await?;
            let Some(last) = page.last().map(|(id, _)| *id) else { break };
            scanned += page.len();
            for (mid, row) in page {
                let Some(Ok(msg)) =
                    row.get(timmessage::STANZA).map(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact))
                else {
                    continue;
                };
                if before_ns.is_some_and(|b| msg.timestamp.unwrap_or(0) > b) {
                    continue;
                }
                out.push(TimMessage { mid: Some(mid.0 as i64), ..msg });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            if last.0 <= 1 {
                break;
            }
            cursor = Cursor::Desc(RowId(last.0 - 1));
        }
        Ok(out)
    }
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
/// A normal 1:1 message (odType 1) that passed every check, to be stored with the others of
/// its sender's burst ([`store_and_push`]).
pub struct Accepted {
    pub to: UserId,
    pub msg: TimMessage,
    /// When the client set the message's `id`: the key that finds it if it comes again.
    pub dedup: Option<[u8; 24]>,
}

impl Accepted {
    /// The message as accepted (stamped by the server: an `id` the client did not set is the
    /// server's).
    pub fn message(&self) -> &TimMessage {
        &self.msg
    }

    /// Whether the client set the message's `id`.
    pub fn sent_with_id(&self) -> bool {
        self.dedup.is_some()
    }
}

/// A stored 1:1 message.
#[derive(Clone, Copy)]
pub struct Stored {
    pub mid: i64,
    /// Its entry in the recipient's offline queue.
    pub entry: RowId,
    /// Sent before (the same client id and content) and still queued.
    pub repeat: bool,
}
/// Sets `items[i]`, which exists.
pub fn set<T>(items: &mut [Option<T>], i: usize, value: T) {
    if let Some(item) = items.get_mut(i) {
        *item = Some(value);
    }
}

/// A stored message's `mid` as the wire carries it; ids stay below 2^53 by construction.
fn mid_of(id: RowId) -> Result<i64, EngineError> {
    i64::try_from(id.0).map_err(|_| EngineError::Internal("a message id is out of the wire's range"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::services::offline::OfflineLimits;

    fn user(n: u64) -> UserId {
        UserId::from_be_bytes((n << 8).to_be_bytes())
    }

    /// What a delivered 1:1 message costs the store, counted in its memtables: its history row
    /// with the conversation's and the client id's index entries, and its recipient's offline
    /// entry (row and queue index), in one commit; the ack deletes the entry's two keys. (Issue
    /// 27 aims at three keys and no deletion.)
    #[tokio::test]
    async fn a_message_and_its_ack_put_five_keys_and_delete_two() {
        let data = crate::testing::standalone().await;
        let limits = OfflineLimits { max_entries: 1_000, max_age: Duration::from_secs(3_600) };
        let offline = Arc::new(OfflineQueue::new(data.clone(), limits).unwrap());
        let history = History::new(data.clone(), offline.clone()).unwrap();
        let (ann, ben) = (user(7), user(9));
        let before = data.store_figures();
        const N: u64 = 100;
        for n in 0..N {
            let msg =
                TimMessage { timestamp: Some(now_ns()), data_string: Some(format!("{n}")), ..TimMessage::default() };
            let mut dedup = [0u8; 24];
            dedup[..8].copy_from_slice(&n.to_be_bytes());
            let (stored, unqueued) =
                history.append(ann, &[Accepted { to: ben, msg, dedup: Some(dedup) }]).await.unwrap();
            assert!(unqueued.iter().all(Option::is_none), "stored with its entry in one commit");
            let entry = stored.first().copied().flatten().unwrap().entry;
            offline.remove_acked(ben, &[entry]).await.unwrap();
        }
        assert!(offline.oldest(ben, 10).await.unwrap().is_empty(), "every entry acked away");
        let after = data.store_figures();
        let puts = after.memtable_puts - before.memtable_puts;
        let deletes = after.memtable_deletes - before.memtable_deletes;
        // Besides: the id counters of the two tables' slots, reserved a block at a time.
        assert!((5 * N..=5 * N + 4).contains(&puts), "{puts} keys put for {N} messages");
        assert_eq!(deletes, 2 * N, "the ack deletes the entry's row and its queue index entry");
    }
}
