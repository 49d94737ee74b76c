//! Conversations whose messages reach their recipients through cursors, on the owner of the
//! conversation's slot: groups, and 1:1 conversations.
//!
//! A message is one history row; nothing is written per recipient. Each recipient has a
//! cursor row in the same slot: `next`, the smallest `mid` of the conversation it may not have
//! had from the others. A message names its predecessor (`prev`): in a group the group's
//! previous message (every member acks its own, the sender's echo included), in a 1:1
//! conversation the sender's previous message there (a sender never acks its own). Both are
//! read under the conversation's lock, so the chain follows commit order. An acked delivery
//! moves a cursor only over a contiguous prefix: from `prev` (which the cursor must have
//! passed) to the message. An ack that comes before the cursor reaches its `prev` (a live
//! message acked while older ones wait for the drain) is kept, in memory and bounded, until it
//! does; one lost costs a delivery again, which clients drop by `mid`, never a message.
//!
//! A group cursor belongs to one membership: it names the member's row of the group (a new row
//! on every join), and a message finding a cursor of an earlier membership starts it anew at
//! itself, so a member who left and came back never gets what was sent meanwhile. A cursor is
//! made by the first message to its recipient (after a join, or after an upgrade from
//! per-recipient offline entries), in the same commit as that message. A 1:1 recipient's drain
//! finds its conversations through `services::inbox`, marked before the message commits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, RowId, Slot, StoreError, TableId};
use tim_net::codec::{decode_body, Encoding};
use tim_net::proto::TimMessage;
use tim_net::report::ErrorChain;
use tim_shard::{Cluster, EngineAnswer, SlotState};
use tokio::sync::OwnedMutexGuard;
use tracing::warn;

use crate::error::EngineError;
use crate::model::ident::{group_chat_id, pair_id, GroupId, UserId};
use crate::model::partition;
use crate::model::tables::{timchatcursor, timgroupcursor, timmessage};
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::history::{now_ns, History};

/// Most acks kept per recipient while its cursor has not reached them.
const MAX_WAITING: usize = 64;
/// Most conversations, and most cursors of all together, kept in memory; past either, the
/// conversations nobody uses at the moment are forgotten (and read again when used).
const MAX_LOGS: usize = 100_000;
const MAX_CURSORS: usize = 1_000_000;
/// Rows read at a time.
const PAGE: usize = 512;
/// How often a recipient's drain checks whether more than the queue cap waits (a check reads
/// up to the cap's number of index entries).
const CAP_CHECK_EVERY: Duration = Duration::from_secs(60);
/// How long a 1:1 message sent again with the same client `id` and content counts as the same.
const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// A conversation with a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Log {
    Group(GroupId),
    /// A 1:1 conversation, by its id ([`pair_id`]).
    Pair([u8; 16]),
}

impl Log {
    pub fn pair(a: UserId, b: UserId) -> Self {
        Self::Pair(pair_id(a, b))
    }

    /// The conversation id its history rows carry.
    pub fn chat(self) -> [u8; 16] {
        match self {
            Self::Group(group) => group_chat_id(group),
            Self::Pair(chat) => chat,
        }
    }

    fn slot(self) -> Slot {
        partition::conversation(&self.chat())
    }

    /// The value of its cursor rows' indexed column.
    fn cursor_key(self) -> Vec<u8> {
        match self {
            Self::Group(group) => group.to_be_bytes().to_vec(),
            Self::Pair(chat) => chat.to_vec(),
        }
    }
}

/// A message stored: its `mid`, its predecessor (0: none), and whether it was stored now
/// (not a repeat of one sent before: then `prev` is the `mid` before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub mid: i64,
    pub prev: i64,
    pub fresh: bool,
}

/// A recipient acked the conversation's messages from after `prev` through `mid` (a delivery
/// of one message, or a drained batch: `prev` is then where the batch began).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub log: Log,
    pub prev: i64,
    pub mid: i64,
}

/// What a recipient has not had yet, oldest first, and the span a drain's ack covers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Waiting {
    /// Thrift-compact messages, with their `mid`s.
    pub messages: Vec<Bytes>,
    /// `None` when nothing waits.
    pub span: Option<Span>,
}

impl Waiting {
    /// The messages decoded (each was encoded from a decoded one on the log's owner).
    pub fn decoded(&self) -> Vec<TimMessage> {
        self.messages.iter().filter_map(|m| decode_body(m.clone(), Encoding::Compact).ok()).collect()
    }
}

/// A message for a conversation's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub log: Log,
    pub from: UserId,
    /// The message as history keeps it ([`History::stored_form`]).
    pub stored: Bytes,
    /// Its `id`, which the stored form drops.
    pub id: Option<i64>,
    /// Its recipients, each with its membership (its row of the group; 0 in a 1:1).
    pub to: Vec<(UserId, RowId)>,
    /// For a 1:1 message whose client set its `id`: the key that finds it if it comes again.
    pub dedup: Option<[u8; 24]>,
}

#[derive(Debug, Serialize, Deserialize)]
enum ChatLogOp {
    Append { entries: Vec<Entry> },
    Acked { user: UserId, spans: Vec<Span> },
    Waiting { log: Log, user: UserId, membership: RowId, limit: usize, read: Read },
}

/// A drain's read of what waits, which may pass over what is over the cap, or a look, which
/// changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Read {
    Drain,
    Look,
}

impl SlotOp for ChatLogOp {
    fn service(&self) -> Service {
        Service::ChatLog
    }
}

impl Arrivals for ChatLog {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                ChatLogOp::Append { entries } => seam::answer(self.append_here(entries).await, "log append"),
                ChatLogOp::Acked { user, spans } => seam::answer(self.acked_here(user, spans).await, "log ack"),
                ChatLogOp::Waiting { log, user, membership, limit, read } => {
                    seam::answer(self.waiting_here(log, user, membership, limit, read).await, "log drain")
                }
            }
        })
    }
}

/// A recipient's cursor.
#[derive(Debug, Clone)]
struct RecipientCursor {
    row: RowId,
    /// The member's row of the group when the cursor was made (0 in a 1:1).
    membership: RowId,
    next: i64,
    /// Acks the cursor has not reached: `(prev, mid)`.
    waiting: Vec<(i64, i64)>,
    /// When a drain last checked the queue cap.
    capped: Option<Instant>,
}

impl RecipientCursor {
    /// Applies the acks that continue the cursor; whether it moved. An ack `(prev, mid)` says
    /// the recipient has every message for it after `prev` through `mid`: acks that touch are
    /// kept as one (a gap followed by a run of live acks is one entry, however long the run).
    fn advance(&mut self, spans: impl IntoIterator<Item = (i64, i64)>) -> bool {
        let before = self.next;
        self.waiting.extend(spans);
        self.waiting.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.waiting.len());
        for (prev, mid) in self.waiting.drain(..) {
            match merged.last_mut() {
                Some((_, through)) if prev <= *through => *through = (*through).max(mid),
                _ => merged.push((prev, mid)),
            }
        }
        self.waiting = merged;
        loop {
            let next = self.next;
            let Some(reach) = self.waiting.iter().filter(|(prev, _)| *prev < next).map(|(_, mid)| *mid).max() else {
                break;
            };
            self.waiting.retain(|(prev, _)| *prev >= next);
            self.next = self.next.max(reach.saturating_add(1));
            if self.next == next {
                break;
            }
        }
        self.waiting.retain(|(_, mid)| *mid >= self.next);
        // Past the bound, the acks farthest from the cursor go: they are the last to apply.
        self.waiting.truncate(MAX_WAITING);
        self.next != before
    }
}

/// One conversation's cursors, loaded from the store on first use.
#[derive(Default)]
struct Cursors {
    /// What they were read under: the [`ChatLog::forget`] generation and the epoch of this
    /// node's ownership of the slot (a slot that left and came back may have had messages
    /// and acks elsewhere); `None` before, and while a write that may change them is open.
    loaded: Option<(u64, u64)>,
    recipients: HashMap<UserId, RecipientCursor>,
    /// In a 1:1 conversation, the newest message each side sent, where known.
    last_from: HashMap<UserId, i64>,
}

/// Where a kind of conversation keeps its cursor rows: the table, the indexed column naming the
/// conversation, and the other columns.
struct CursorRows {
    table: TableId,
    key: usize,
    uid: usize,
    /// Groups only.
    membership: Option<usize>,
    next: usize,
    columns: usize,
}

/// Sets `items[i]`, which exists.
fn set<T>(items: &mut [Option<T>], i: usize, value: T) {
    if let Some(item) = items.get_mut(i) {
        *item = Some(value);
    }
}

/// Where the predecessor of a message stored in a batch is.
#[derive(Clone, Copy)]
enum Prev {
    Mid(i64),
    /// The message of the batch's `n`-th inserted row.
    Row(usize),
}

/// What became of an entry of an append.
enum Outcome {
    Stored {
        row: usize,
        prev: Prev,
    },
    /// Stored before, with this `mid`.
    Repeat(i64),
    /// The same as an earlier entry of the batch.
    SameAs(usize),
}

pub struct ChatLog {
    data: Arc<Cluster>,
    groups: CursorRows,
    pairs: CursorRows,
    history: TableId,
    max_entries: usize,
    max_age: Duration,
    logs: Mutex<HashMap<Log, Arc<tokio::sync::Mutex<Cursors>>>>,
    /// Cursors held in `logs`, all together.
    cached: AtomicUsize,
    /// Raised by [`ChatLog::forget`]: cursors loaded under an older one are read again.
    generation: AtomicU64,
}

impl ChatLog {
    pub fn new(data: Arc<Cluster>, max_entries: usize, max_age: Duration) -> Result<Self, StoreError> {
        let table = |name| data.table(name).ok_or(StoreError::UnknownTable(0));
        let groups = CursorRows {
            table: table(timgroupcursor::DEF.name)?,
            key: timgroupcursor::GID,
            uid: timgroupcursor::UID,
            membership: Some(timgroupcursor::MEMBERSHIP),
            next: timgroupcursor::NEXT,
            columns: timgroupcursor::DEF.columns.len(),
        };
        let pairs = CursorRows {
            table: table(timchatcursor::DEF.name)?,
            key: timchatcursor::CHATID,
            uid: timchatcursor::UID,
            membership: None,
            next: timchatcursor::NEXT,
            columns: timchatcursor::DEF.columns.len(),
        };
        let history = table(timmessage::DEF.name)?;
        Ok(Self {
            data,
            groups,
            pairs,
            history,
            max_entries,
            max_age,
            logs: Mutex::new(HashMap::new()),
            cached: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        })
    }

    /// Where `log` keeps its cursors.
    fn rows(&self, log: Log) -> &CursorRows {
        match log {
            Log::Group(_) => &self.groups,
            Log::Pair(_) => &self.pairs,
        }
    }

    /// The conversation's cursors, one lock per conversation (its messages are stored one at
    /// a time).
    fn log(&self, log: Log) -> Arc<tokio::sync::Mutex<Cursors>> {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let full = logs.len() >= MAX_LOGS || self.cached.load(Ordering::Relaxed) > MAX_CURSORS;
        if full && !logs.contains_key(&log) {
            logs.retain(|_, cursors| {
                if Arc::strong_count(cursors) > 1 {
                    return true;
                }
                // Unused, so its lock is free.
                if let Ok(forgotten) = cursors.try_lock() {
                    self.cached.fetch_sub(forgotten.recipients.len(), Ordering::Relaxed);
                }
                false
            });
        }
        logs.entry(log).or_default().clone()
    }

    /// Forgets every conversation's cursors (rows were written behind them: an import): each
    /// is read again at its next use.
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the conversation's cursor rows: at first use, after [`ChatLog::forget`], after
    /// the slot came back to this node, after a write that may have changed them failed, and
    /// when a message finds no cursor of its recipient's membership (another owner may have
    /// made one).
    async fn load(&self, log: Log, cursors: &mut Cursors) -> Result<(), EngineError> {
        let generation = self.generation.load(Ordering::Acquire);
        let epoch = match self.data.ownership().state(log.slot()) {
            Some(SlotState::Owned { epoch }) => Some(epoch),
            _ => None,
        };
        let under = epoch.map(|epoch| (generation, epoch));
        if under.is_some() && cursors.loaded == under {
            return Ok(());
        }
        self.data.settle().await?;
        let (rows, key) = (self.rows(log), log.cursor_key());
        let mut recipients: HashMap<UserId, RecipientCursor> = HashMap::new();
        let mut from = Some(Cursor::OLDEST);
        while let Some(at) = from {
            let page = self.data.page(rows.table, log.slot(), rows.key, &key, at, PAGE).await?;
            for (row_id, row) in &page {
                let membership = match rows.membership {
                    Some(column) => row.u64_at(column).map(RowId),
                    None => Some(RowId(0)),
                };
                let (Some(user), Some(membership), Some(next)) = (
                    row.u64_at(rows.uid).map(|u| UserId::from_be_bytes(u.to_be_bytes())),
                    membership,
                    row.u64_at(rows.next).and_then(|n| i64::try_from(n).ok()),
                ) else {
                    continue;
                };
                let cursor = RecipientCursor { row: *row_id, membership, next, waiting: Vec::new(), capped: None };
                // Two rows of one recipient (a cache that missed a row made by another owner):
                // the newest membership's, and of one membership the one behind, so nothing
                // is skipped.
                let keep = recipients.get(&user).is_some_and(|kept| {
                    kept.membership > membership || (kept.membership == membership && kept.next <= next)
                });
                if !keep {
                    recipients.insert(user, cursor);
                }
            }
            from = Cursor::after(&page, PAGE);
        }
        self.cached.fetch_sub(cursors.recipients.len(), Ordering::Relaxed);
        self.cached.fetch_add(recipients.len(), Ordering::Relaxed);
        cursors.recipients = recipients;
        cursors.last_from.clear();
        cursors.loaded = under;
        Ok(())
    }

    /// The predecessor of a message of `from` for `to`: in a group the group's newest
    /// message; in a 1:1 conversation `from`'s newest there, or, when none is in sight, a
    /// point after which `from` sent nothing (0 when `to` has no cursor yet: one is made at
    /// the message).
    async fn prev(&self, log: Log, from: UserId, to: Option<UserId>, cursors: &Cursors) -> Result<i64, EngineError> {
        let (chat, slot) = (log.chat(), log.slot());
        let newest = |limit| self.data.page(self.history, slot, timmessage::CHATID, &chat, Cursor::NEWEST, limit);
        if let Log::Group(_) = log {
            return Ok(newest(1).await?.first().map_or(0, |(id, _)| id.0 as i64));
        }
        if let Some(last) = cursors.last_from.get(&from) {
            return Ok(*last);
        }
        let Some(stop) = to.and_then(|to| cursors.recipients.get(&to)).map(|c| c.next) else { return Ok(0) };
        let page = newest(PAGE).await?;
        let sender = from.to_be_bytes();
        for (id, row) in &page {
            let id = id.0 as i64;
            if id < stop {
                break;
            }
            if row.get(timmessage::FID).is_some_and(|f| f.as_ref() == sender) {
                return Ok(id);
            }
        }
        // Nothing of `from` in the rows read: from below the oldest of them when there may be
        // more, else from below the cursor.
        let lowest = page.last().map(|(id, _)| id.0 as i64).filter(|_| page.len() == PAGE);
        Ok(lowest.filter(|l| *l > stop).unwrap_or(stop).saturating_sub(1))
    }

    /// Stores messages (each in its conversation, with its recipients' cursors made where they
    /// have none for their membership), one commit per conversation slot, all at once; what
    /// became of each, in order.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Vec<Appended>, EngineError> {
        let by_slot = partition::by_slot(&entries, |e| e.log.slot());
        let calls = by_slot.iter().map(|(slot, at)| {
            let part: Vec<Entry> = at.iter().filter_map(|i| entries.get(*i)).cloned().collect();
            at_slot(&self.data, *slot, self.append_here(part.clone()), ChatLogOp::Append { entries: part })
        });
        let answers: Vec<Vec<Appended>> = try_join_all(calls).await?;
        let mut out = vec![None; entries.len()];
        for ((_, at), answer) in by_slot.iter().zip(answers) {
            if answer.len() != at.len() {
                return Err(EngineError::Internal("an append answered fewer messages than it was given"));
            }
            for (i, appended) in at.iter().zip(answer) {
                set(&mut out, *i, appended);
            }
        }
        out.into_iter().map(|a| a.ok_or(EngineError::Internal("a message was not appended"))).collect()
    }

    /// [`ChatLog::append`] on the owner of the entries' slot (one for all).
    async fn append_here(&self, entries: Vec<Entry>) -> Result<Vec<Appended>, EngineError> {
        let Some(slot) = entries.first().map(|e| e.log.slot()) else { return Ok(Vec::new()) };
        // Each conversation's lock, in one order (two appends lock alike), held to the end.
        let mut logs: Vec<Log> = entries.iter().map(|e| e.log).collect();
        logs.sort_unstable_by_key(|l| l.chat());
        logs.dedup();
        let mut held: HashMap<Log, OwnedMutexGuard<Cursors>> = HashMap::with_capacity(logs.len());
        for log in logs {
            let mut cursors = self.log(log).lock_owned().await;
            self.load(log, &mut cursors).await?;
            // A recipient without a cursor of its membership: read the store again once, in
            // case another owner made it while this one held the cursors in memory.
            let stale = entries
                .iter()
                .filter(|e| e.log == log)
                .flat_map(|e| &e.to)
                .any(|(to, membership)| cursors.recipients.get(to).is_none_or(|c| c.membership != *membership));
            if stale {
                cursors.loaded = None;
                self.load(log, &mut cursors).await?;
            }
            held.insert(log, cursors);
        }
        let mut batch = Batch::new(slot);
        let mut rows = 0usize;
        let mut outcomes = Vec::with_capacity(entries.len());
        // The newest message stored in the batch of each chain (a group; a 1:1 sender).
        let mut chains: HashMap<(Log, Option<UserId>), usize> = HashMap::new();
        let mut keys: HashMap<[u8; 24], usize> = HashMap::new();
        // Cursors made: conversation, recipient, membership, their row, the message's row.
        let mut made: Vec<(Log, UserId, RowId, usize, usize)> = Vec::new();
        let mut making: HashSet<(Log, UserId)> = HashSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let cursors = held.get(&entry.log).ok_or(EngineError::Internal("an append lost a lock"))?;
            if let Some(key) = entry.dedup {
                if let Some(first) = keys.get(&key) {
                    outcomes.push(Outcome::SameAs(*first));
                    continue;
                }
                if let Some(mid) = self.stored_as(entry.log, &key).await? {
                    outcomes.push(Outcome::Repeat(mid));
                    continue;
                }
                keys.insert(key, i);
            }
            let chain = (entry.log, matches!(entry.log, Log::Pair(_)).then_some(entry.from));
            let prev = match chains.get(&chain) {
                Some(row) => Prev::Row(*row),
                None => {
                    let to = entry.to.first().map(|(to, _)| *to);
                    Prev::Mid(self.prev(entry.log, entry.from, to, cursors).await?)
                }
            };
            let (chat, stored) = (entry.log.chat(), entry.stored.clone());
            let row = History::row(chat, entry.from, stored, entry.id, entry.dedup.as_ref());
            batch.insert(self.history, row);
            let at = rows;
            rows += 1;
            chains.insert(chain, at);
            let cursor_rows = self.rows(entry.log);
            for (to, membership) in &entry.to {
                if making.contains(&(entry.log, *to)) {
                    continue;
                }
                match cursors.recipients.get(to) {
                    // This membership's cursor, or a newer one's (the member left and came back
                    // after the sender read the members).
                    Some(c) if c.membership >= *membership => continue,
                    Some(c) => {
                        batch.delete(cursor_rows.table, c.row);
                    }
                    None => {}
                }
                let mut cursor = Row::new(cursor_rows.columns);
                cursor.set(cursor_rows.key, entry.log.cursor_key());
                cursor.set(cursor_rows.uid, Bytes::copy_from_slice(&to.to_be_bytes()));
                if let Some(column) = cursor_rows.membership {
                    cursor.set(column, Bytes::copy_from_slice(&membership.0.to_be_bytes()));
                }
                // The cursor starts at this message: the writer puts its id in `next`.
                batch.insert_with_id(cursor_rows.table, cursor, cursor_rows.next, at);
                making.insert((entry.log, *to));
                made.push((entry.log, *to, *membership, rows, at));
                rows += 1;
            }
            outcomes.push(Outcome::Stored { row: at, prev });
        }
        let ids = if rows > 0 {
            // Until the write's cursors and messages are in memory, the conversations are read
            // again at next use: a write that fails, or whose caller goes away, may still have
            // made cursors and stored messages their senders' next ones must follow.
            let loaded: Vec<_> = held.iter_mut().map(|(log, cursors)| (*log, cursors.loaded.take())).collect();
            let ids = self.data.write(batch).await?;
            for (log, under) in loaded {
                if let Some(cursors) = held.get_mut(&log) {
                    cursors.loaded = under;
                }
            }
            ids
        } else {
            Vec::new()
        };
        let mid = |row: usize| {
            ids.get(row)
                .map(|id| id.0 as i64)
                .ok_or(EngineError::Internal("an append returned fewer ids than it inserted"))
        };
        for (log, to, membership, cursor_row, message_row) in made {
            let (Some(cursors), Some(row)) = (held.get_mut(&log), ids.get(cursor_row)) else { continue };
            let cursor =
                RecipientCursor { row: *row, membership, next: mid(message_row)?, waiting: Vec::new(), capped: None };
            if cursors.recipients.insert(to, cursor).is_none() {
                self.cached.fetch_add(1, Ordering::Relaxed);
            }
        }
        for ((log, sender), row) in chains {
            if let (Some(sender), Some(cursors)) = (sender, held.get_mut(&log)) {
                cursors.last_from.insert(sender, mid(row)?);
            }
        }
        let mut out: Vec<Appended> = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            out.push(match outcome {
                Outcome::Stored { row, prev } => {
                    let prev = match prev {
                        Prev::Mid(prev) => prev,
                        Prev::Row(row) => mid(row)?,
                    };
                    Appended { mid: mid(row)?, prev, fresh: true }
                }
                Outcome::Repeat(mid) => Appended { mid, prev: mid.saturating_sub(1), fresh: false },
                Outcome::SameAs(first) => {
                    let first = out.get(first).ok_or(EngineError::Internal("a repeat of a later message"))?;
                    Appended { mid: first.mid, prev: first.mid.saturating_sub(1), fresh: false }
                }
            });
        }
        Ok(out)
    }

    /// The `mid` of a message of the 1:1 conversation stored with `key` in the last
    /// [`DEDUP_WINDOW`]: the same message sent again.
    async fn stored_as(&self, log: Log, key: &[u8; 24]) -> Result<Option<i64>, EngineError> {
        let found = self.data.page(self.history, log.slot(), timmessage::DEDUP, key, Cursor::NEWEST, 1).await?;
        let Some((mid, row)) = found.into_iter().next() else { return Ok(None) };
        let sent = row
            .get(timmessage::STANZA)
            .and_then(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact).ok())
            .and_then(|m| m.timestamp)
            .unwrap_or(0);
        let recent = now_ns().saturating_sub(sent) < DEDUP_WINDOW.as_nanos() as i64;
        Ok(recent.then_some(mid.0 as i64))
    }

    /// Moves `user`'s cursors by the spans its sessions acked, on the owners of the
    /// conversations.
    pub async fn acked(&self, user: UserId, spans: Vec<Span>) {
        for (slot, at) in partition::by_slot(&spans, |s| s.log.slot()) {
            let spans: Vec<Span> = at.iter().filter_map(|i| spans.get(*i)).copied().collect();
            let here = self.acked_here(user, spans.clone());
            if let Err(e) = at_slot(&self.data, slot, here, ChatLogOp::Acked { user, spans }).await {
                // The messages come again with the next drain; clients drop them by mid.
                warn!(error = %ErrorChain(&e), uid = %user.node(), "acks not recorded");
            }
        }
    }

    async fn acked_here(&self, user: UserId, spans: Vec<Span>) -> Result<(), EngineError> {
        let mut by_log: HashMap<Log, Vec<(i64, i64)>> = HashMap::new();
        for span in spans {
            by_log.entry(span.log).or_default().push((span.prev, span.mid));
        }
        for (log, spans) in by_log {
            let lock = self.log(log);
            let mut cursors = lock.lock().await;
            self.load(log, &mut cursors).await?;
            let Some(cursor) = cursors.recipients.get_mut(&user) else { continue };
            if cursor.advance(spans) {
                self.persist(log, cursor).await?;
            }
        }
        Ok(())
    }

    /// Writes a cursor's move with the writer's next group (an ack lost in a power failure
    /// costs a message delivered again).
    async fn persist(&self, log: Log, cursor: &RecipientCursor) -> Result<(), EngineError> {
        let rows = self.rows(log);
        let next = Bytes::copy_from_slice(&(cursor.next as u64).to_be_bytes());
        let mut batch = Batch::new(log.slot());
        batch.update(rows.table, cursor.row, vec![(rows.next, Some(next))]).relaxed();
        if let Err(batch) = self.data.defer_here(batch).await {
            self.data.write(batch).await?;
        }
        Ok(())
    }

    /// Up to `limit` messages of the conversation that `user` (whose row of the group is
    /// `membership`; 0 in a 1:1) has not had, for its drain: its own, and those past the age
    /// cap, are skipped but covered by the span; when more than the queue cap wait, the
    /// oldest are passed over.
    pub async fn waiting(
        &self,
        log: Log,
        user: UserId,
        membership: RowId,
        limit: usize,
    ) -> Result<Waiting, EngineError> {
        self.read(log, user, membership, limit, Read::Drain).await
    }

    /// [`ChatLog::waiting`] for a look that changes nothing (an operator's): nothing is passed
    /// over.
    pub async fn look(&self, log: Log, user: UserId, membership: RowId, limit: usize) -> Result<Waiting, EngineError> {
        self.read(log, user, membership, limit, Read::Look).await
    }

    async fn read(
        &self,
        log: Log,
        user: UserId,
        membership: RowId,
        limit: usize,
        read: Read,
    ) -> Result<Waiting, EngineError> {
        let here = self.waiting_here(log, user, membership, limit, read);
        at_slot(&self.data, log.slot(), here, ChatLogOp::Waiting { log, user, membership, limit, read }).await
    }

    async fn waiting_here(
        &self,
        log: Log,
        user: UserId,
        membership: RowId,
        limit: usize,
        read: Read,
    ) -> Result<Waiting, EngineError> {
        let lock = self.log(log);
        let (mut next, acked, check_cap) = {
            let mut cursors = lock.lock().await;
            self.load(log, &mut cursors).await?;
            match cursors.recipients.get_mut(&user) {
                Some(c) if c.membership == membership => {
                    let check = read == Read::Drain && c.capped.is_none_or(|at| at.elapsed() > CAP_CHECK_EVERY);
                    if check {
                        c.capped = Some(Instant::now());
                    }
                    (c.next, c.waiting.clone(), check)
                }
                // No cursor of this membership: no message for it since the member joined.
                _ => return Ok(Waiting::default()),
            }
        };
        // Messages acked already (live, past the cursor): not sent again.
        let acked = |mid: i64| acked.iter().any(|(prev, through)| *prev < mid && mid <= *through);
        let (chat, slot) = (log.chat(), log.slot());
        if check_cap {
            next = self.cap(log, user, membership, next).await?;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let oldest_kept = i64::try_from(now.saturating_sub(self.max_age).as_nanos()).unwrap_or(i64::MAX);
        let me = user.to_be_bytes();
        // Own messages are skipped (their sender had them), but for a user writing to itself.
        let own =
            |row: &Row| log != Log::pair(user, user) && row.get(timmessage::FID).is_some_and(|f| f.as_ref() == me);
        let mut out = Waiting::default();
        let mut through = None;
        let mut expired = 0usize;
        let mut from = Some(Cursor::Asc(RowId(u64::try_from(next).unwrap_or(0))));
        'pages: while let Some(at) = from {
            let page = self.data.page(self.history, slot, timmessage::CHATID, &chat, at, PAGE).await?;
            for (id, row) in &page {
                if out.messages.len() >= limit {
                    break 'pages;
                }
                through = Some(id.0 as i64);
                if acked(id.0 as i64) || own(row) {
                    continue;
                }
                let Some(Ok(msg)) =
                    row.get(timmessage::STANZA).map(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact))
                else {
                    continue;
                };
                if msg.timestamp.is_some_and(|t| t < oldest_kept) {
                    expired += 1;
                    continue;
                }
                let client_id = row.u64_at(timmessage::ID).map(|id| id as i64).or(msg.id);
                let msg = TimMessage { mid: Some(id.0 as i64), id: client_id, is_offline: Some(true), ..msg };
                out.messages.push(tim_net::codec::body_bytes(&msg, Encoding::Compact));
            }
            from = Cursor::after(&page, PAGE);
        }
        if expired > 0 && read == Read::Drain {
            // Passed over by the span: logged by each drain that reads them until an ack moves
            // the cursor past them.
            warn!(uid = %user.node(), dropped = expired, why = "older than the age cap", "offline entries dropped");
        }
        out.span = through.map(|mid| Span { log, prev: next.saturating_sub(1), mid });
        Ok(out)
    }

    /// Where `user`'s cursor must be for at most the queue cap of the conversation's messages
    /// to wait: when more do, the oldest are passed over (logged) and the cursor moved past
    /// them.
    async fn cap(&self, log: Log, user: UserId, membership: RowId, next: i64) -> Result<i64, EngineError> {
        let (chat, slot, max) = (log.chat(), log.slot(), self.max_entries);
        let from = Cursor::Asc(RowId(u64::try_from(next).unwrap_or(0)));
        if self.data.ids(self.history, slot, timmessage::CHATID, &chat, from, max + 1).await?.len() <= max {
            return Ok(next);
        }
        let newest = self.data.ids(self.history, slot, timmessage::CHATID, &chat, Cursor::NEWEST, max).await?;
        let Some(oldest_kept) = newest.last().map(|id| id.0 as i64).filter(|kept| *kept > next) else {
            return Ok(next);
        };
        let dropped = self.data.ids(self.history, slot, timmessage::CHATID, &chat, from, max).await?;
        let dropped = dropped.iter().take_while(|id| (id.0 as i64) < oldest_kept).count();
        warn!(uid = %user.node(), dropped, why = "over the entry cap", "offline entries dropped");
        let lock = self.log(log);
        let mut cursors = lock.lock().await;
        let Some(cursor) = cursors.recipients.get_mut(&user).filter(|c| c.membership == membership) else {
            return Ok(next);
        };
        if cursor.advance([(cursor.next.saturating_sub(1), oldest_kept.saturating_sub(1))]) {
            self.persist(log, cursor).await?;
        }
        Ok(cursor.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::user;

    fn cursor(next: i64) -> RecipientCursor {
        RecipientCursor { row: RowId(1), membership: RowId(1), next, waiting: Vec::new(), capped: None }
    }

    /// Acks move a cursor over a contiguous prefix only: an ack past a gap waits until the gap
    /// is acked, then both count.
    #[test]
    fn a_cursor_moves_over_contiguous_acks_only() {
        let mut c = cursor(10);
        assert!(c.advance([(9, 10)]), "the next message, acked");
        assert_eq!(c.next, 11);
        assert!(!c.advance([(14, 20)]), "20 follows 14, which is not acked yet");
        assert_eq!(c.next, 11);
        assert!(c.advance([(10, 14)]), "14 follows 10: the gap closes, and 20 counts too");
        assert_eq!(c.next, 21);
        assert!(c.waiting.is_empty());
        assert!(!c.advance([(3, 7)]), "an ack behind the cursor changes nothing");
        assert_eq!(c.next, 21);
    }

    /// What a group message costs the store, counted in its memtables: its history row and
    /// index entry, and nothing per member once the members have cursors (made with the first
    /// message after they joined); each member's ack is one overwrite of its cursor row.
    #[tokio::test]
    async fn a_group_message_puts_two_keys_and_an_ack_one() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data.clone(), 1_000, Duration::from_secs(3_600)).unwrap();
        let group = GroupId::from_party(user(5));
        let members: Vec<(UserId, RowId)> = (10..110).map(|n| (user(n), RowId(n))).collect();
        let first = append(&log, group, user(10), "first", &members).await;
        assert_eq!(first.prev, 0);
        let before = data.store_figures();
        let second = append(&log, group, user(10), "second", &members).await;
        let puts = data.store_figures().memtable_puts - before.memtable_puts;
        assert_eq!(second.prev, first.mid, "a message names the one before it");
        assert!((2..=3).contains(&puts), "{puts} keys for a message to 100 members");

        let before = data.store_figures();
        for (member, _) in &members {
            log.acked(*member, vec![Span { log: Log::Group(group), prev: first.mid, mid: second.mid }]).await;
            log.acked(*member, vec![Span { log: Log::Group(group), prev: first.mid - 1, mid: first.mid }]).await;
        }
        data.settle().await.unwrap();
        let after = data.store_figures();
        assert_eq!(after.memtable_deletes, before.memtable_deletes, "an ack deletes nothing");
        assert_eq!(after.memtable_puts - before.memtable_puts, 100, "one cursor move per member");
        let waiting = log.waiting(Log::Group(group), user(11), RowId(11), 10).await.unwrap();
        assert!(waiting.messages.is_empty() && waiting.span.is_none(), "nothing waits: {waiting:?}");
        let other = log.waiting(Log::Group(group), user(11), RowId(99), 10).await.unwrap();
        assert!(other.span.is_none(), "a cursor of another membership is no one's");
    }

    async fn append(log: &ChatLog, group: GroupId, from: UserId, text: &str, to: &[(UserId, RowId)]) -> Appended {
        let entry =
            Entry { log: Log::Group(group), from, stored: stored(text), id: None, to: to.to_vec(), dedup: None };
        log.append(vec![entry]).await.unwrap().pop().unwrap()
    }

    fn stored(text: &str) -> Bytes {
        let msg = TimMessage { ms_type: 3, data_string: Some(text.into()), ..TimMessage::default() };
        tim_net::codec::body_bytes(&msg, Encoding::Compact)
    }

    fn texts(waiting: &Waiting) -> Vec<String> {
        let decoded = waiting.messages.iter().map(|m| decode_body::<TimMessage>(m.clone(), Encoding::Compact).unwrap());
        decoded.filter_map(|m| m.data_string).collect()
    }

    /// A cursor another owner made while this one held the group's cursors in memory (the
    /// group's slot went away and came back): the next message finds it rather than making
    /// one that starts after the messages the member has not had.
    #[tokio::test]
    async fn a_cursor_made_behind_the_cache_is_found() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data.clone(), 1_000, Duration::from_secs(3_600)).unwrap();
        let group = GroupId::from_party(user(5));
        let (ann, vic) = (user(10), user(11));
        append(&log, group, ann, "one", &[(ann, RowId(1))]).await;

        // Behind the cache: "two", and vic's cursor made with it.
        let chat = group_chat_id(group);
        let mut batch = Batch::new(Log::Group(group).slot());
        batch.insert(log.history, History::row(chat, ann, stored("two"), None, None));
        let mut cursor = Row::new(timgroupcursor::DEF.columns.len());
        cursor
            .set(timgroupcursor::GID, Bytes::copy_from_slice(&group.to_be_bytes()))
            .set(timgroupcursor::UID, Bytes::copy_from_slice(&vic.to_be_bytes()))
            .set(timgroupcursor::MEMBERSHIP, Bytes::copy_from_slice(&2u64.to_be_bytes()));
        batch.insert_with_id(log.groups.table, cursor, timgroupcursor::NEXT, 0);
        data.write(batch).await.unwrap();

        append(&log, group, ann, "three", &[(ann, RowId(1)), (vic, RowId(2))]).await;
        let waiting = log.waiting(Log::Group(group), vic, RowId(2), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["two", "three"], "nothing vic has not had is skipped");
    }

    /// A message whose sender read the members before one of them left and came back does not
    /// put that member's cursor back to the earlier membership.
    #[tokio::test]
    async fn an_earlier_membership_never_replaces_a_later_one() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data, 1_000, Duration::from_secs(3_600)).unwrap();
        let group = GroupId::from_party(user(5));
        let (ann, vic) = (user(10), user(11));
        append(&log, group, ann, "after the rejoin", &[(ann, RowId(1)), (vic, RowId(3))]).await;
        append(&log, group, ann, "read before", &[(ann, RowId(1)), (vic, RowId(2))]).await;
        let waiting = log.waiting(Log::Group(group), vic, RowId(3), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["after the rejoin", "read before"]);
        let earlier = log.waiting(Log::Group(group), vic, RowId(2), 10).await.unwrap();
        assert!(earlier.span.is_none(), "the earlier membership has no cursor");
    }

    /// A gap followed by a long run of live acks: the run is kept as one entry, not cut at
    /// the bound, and the cursor passes all of it once the gap is acked.
    #[test]
    fn a_run_of_acks_after_a_gap_is_one_entry() {
        let mut c = cursor(5);
        for mid in 11..1_000 {
            assert!(!c.advance([(mid - 1, mid)]));
        }
        assert_eq!(c.waiting, [(10, 999)]);
        assert!(c.advance([(4, 10)]));
        assert_eq!(c.next, 1_000);
        // Positive control: acks that do not touch stay apart.
        assert!(!c.advance([(1_001, 1_002), (1_003, 1_004)]));
        assert_eq!(c.waiting.len(), 2);
    }

    /// A drained batch covers from where the cursor was; the live acks that waited for it
    /// follow on.
    #[test]
    fn a_drain_closes_the_gap_live_acks_wait_on() {
        let mut c = cursor(5);
        assert!(!c.advance([(30, 31), (31, 33)]));
        assert!(c.advance([(4, 30)]));
        assert_eq!(c.next, 34);
    }

    /// A 1:1 message from `from` to `to`, with a client id's key when `id` is given.
    fn pair_entry(from: UserId, to: UserId, text: &str, id: Option<u64>) -> Entry {
        let dedup = id.map(|id| {
            let mut key = [0u8; 24];
            key[..8].copy_from_slice(&id.to_be_bytes());
            key
        });
        let msg = TimMessage { timestamp: Some(now_ns()), data_string: Some(text.into()), ..TimMessage::default() };
        let stored = tim_net::codec::body_bytes(&msg, Encoding::Compact);
        Entry { log: Log::pair(from, to), from, stored, id: id.map(|id| id as i64), to: vec![(to, RowId(0))], dedup }
    }

    async fn send(log: &ChatLog, from: UserId, to: UserId, text: &str) -> Appended {
        log.append(vec![pair_entry(from, to, text, None)]).await.unwrap().pop().unwrap()
    }

    /// What a delivered 1:1 message costs the store, counted in its memtables: its history row
    /// and the conversation's index entry (and the client id's when the client set one), then
    /// the ack's overwrite of the recipient's cursor; nothing is deleted.
    #[tokio::test]
    async fn a_message_and_its_ack_put_three_keys_and_delete_none() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data.clone(), 1_000, Duration::from_secs(3_600)).unwrap();
        let (ann, ben) = (user(7), user(9));
        // The first message makes ben's cursor.
        let first = send(&log, ann, ben, "first").await;
        log.acked(ben, vec![Span { log: Log::pair(ann, ben), prev: first.prev, mid: first.mid }]).await;
        for (with_id, per_message) in [(false, 3), (true, 4)] {
            data.settle().await.unwrap();
            let before = data.store_figures();
            const N: u64 = 100;
            for n in 0..N {
                let entry = pair_entry(ann, ben, &format!("{n}"), with_id.then_some(n));
                let sent = log.append(vec![entry]).await.unwrap().pop().unwrap();
                assert!(sent.fresh);
                log.acked(ben, vec![Span { log: Log::pair(ann, ben), prev: sent.prev, mid: sent.mid }]).await;
            }
            data.settle().await.unwrap();
            let after = data.store_figures();
            let puts = after.memtable_puts - before.memtable_puts;
            // Besides: the id counter of the slot, reserved a block at a time.
            assert!((per_message * N..=per_message * N + 2).contains(&puts), "{puts} keys put for {N} messages");
            assert_eq!(after.memtable_deletes, before.memtable_deletes, "nothing deleted");
            let waiting = log.waiting(Log::pair(ann, ben), ben, RowId(0), 10).await.unwrap();
            assert!(waiting.messages.is_empty(), "every message acked: {waiting:?}");
        }
    }

    /// In a 1:1 conversation a message's predecessor is its sender's previous one there, read
    /// again from the history when the conversation was forgotten; an ack moves the cursor over
    /// the other side's messages in between, and one before its predecessor waits for it.
    #[tokio::test]
    async fn a_message_follows_its_senders_previous_one() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data, 1_000, Duration::from_secs(3_600)).unwrap();
        let (ann, ben) = (user(7), user(9));
        let pair = Log::pair(ann, ben);
        let one = send(&log, ann, ben, "one").await;
        let reply = send(&log, ben, ann, "reply").await;
        let two = send(&log, ann, ben, "two").await;
        assert_eq!(two.prev, one.mid, "ben's reply is not ann's");
        assert_eq!(reply.prev, 0, "ann had no cursor: made at the reply");
        log.forget();
        let three = send(&log, ann, ben, "three").await;
        assert_eq!(three.prev, two.mid, "read again from the history");

        log.acked(ben, vec![Span { log: pair, prev: two.prev, mid: two.mid }]).await;
        let waiting = log.waiting(pair, ben, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["one", "three"], "two waits for one");
        log.acked(ben, vec![Span { log: pair, prev: one.prev, mid: one.mid }]).await;
        let waiting = log.waiting(pair, ben, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["three"], "one closed the gap before two");
        let for_ann = log.waiting(pair, ann, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&for_ann), ["reply"], "each side waits for the other's messages only");
    }

    /// A 1:1 message sent again with the same client id is stored once, in one burst or in two.
    #[tokio::test]
    async fn a_message_sent_again_is_stored_once() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data, 1_000, Duration::from_secs(3_600)).unwrap();
        let (ann, ben) = (user(7), user(9));
        let burst = vec![pair_entry(ann, ben, "hi", Some(1)), pair_entry(ann, ben, "hi", Some(1))];
        let stored = log.append(burst).await.unwrap();
        assert!(stored[0].fresh && !stored[1].fresh);
        assert_eq!(stored[0].mid, stored[1].mid);
        let again = log.append(vec![pair_entry(ann, ben, "hi", Some(1))]).await.unwrap();
        assert_eq!((again[0].mid, again[0].fresh), (stored[0].mid, false));
        let other = log.append(vec![pair_entry(ann, ben, "hi", Some(2))]).await.unwrap();
        assert!(other[0].fresh, "another id is another message");
        let waiting = log.waiting(Log::pair(ann, ben), ben, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["hi", "hi"]);
    }

    /// A conversation from before the logs: what its recipient's queue holds stays there,
    /// drained first, and its log starts with the first message after the upgrade, so nothing
    /// comes twice; a history row written without the `id` column keeps the stanza's.
    #[tokio::test]
    async fn a_conversation_from_before_the_logs_starts_its_log_after_the_queue() {
        use crate::services::offline::{OfflineLimits, OfflineQueue};
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data.clone(), 1_000, Duration::from_secs(3_600)).unwrap();
        let limits = OfflineLimits { max_entries: 1_000, max_age: Duration::from_secs(3_600) };
        let queue = OfflineQueue::new(data.clone(), limits).unwrap();
        let (ann, ben) = (user(7), user(9));
        // As the earlier release wrote a message: its history row, and ben's queue entry.
        let old = TimMessage {
            id: Some(41),
            timestamp: Some(now_ns()),
            data_string: Some("before".into()),
            ..TimMessage::default()
        };
        let mut batch = Batch::new(Log::pair(ann, ben).slot());
        batch
            .insert(log.history, History::row(Log::pair(ann, ben).chat(), ann, History::stored_form(&old), None, None));
        let mid = data.write(batch).await.unwrap()[0].0 as i64;
        let entry = TimMessage { mid: Some(mid), ..old };
        queue.push_all(&[(ben, tim_net::codec::body_bytes(&entry, Encoding::Compact), Some(mid))]).await.unwrap();

        let after = send(&log, ann, ben, "after").await;
        assert!(after.mid > mid);
        let queued = queue.oldest(ben, 10).await.unwrap();
        assert_eq!(queued.iter().map(|(_, m)| (m.mid, m.id)).collect::<Vec<_>>(), [(Some(mid), Some(41))]);
        let waiting = log.waiting(Log::pair(ann, ben), ben, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["after"], "the queued message is not in the log too");
        let decoded = decode_body::<TimMessage>(waiting.messages[0].clone(), Encoding::Compact).unwrap();
        assert_eq!(decoded.mid, Some(after.mid));

        // Positive control: the old message is in the conversation the log reads.
        let page = History::new(data).unwrap().page(Log::pair(ann, ben).chat(), 0, 10, None).await.unwrap();
        let texts: Vec<_> = page.iter().filter_map(|m| m.data_string.as_deref()).collect();
        assert_eq!(texts, ["after", "before"]);
    }

    /// A user writing to itself (with `--message-noauth`) gets its messages offline like any
    /// recipient; in a conversation with another, its own are skipped.
    #[tokio::test]
    async fn messages_to_oneself_wait_for_ones_drain() {
        let data = crate::testing::standalone().await;
        let log = ChatLog::new(data, 1_000, Duration::from_secs(3_600)).unwrap();
        let (ann, ben) = (user(7), user(9));
        send(&log, ann, ann, "note").await;
        send(&log, ann, ben, "hi").await;
        let to_self = log.waiting(Log::pair(ann, ann), ann, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&to_self), ["note"]);
        send(&log, ben, ann, "hello").await;
        let from_ben = log.waiting(Log::pair(ann, ben), ann, RowId(0), 10).await.unwrap();
        assert_eq!(texts(&from_ben), ["hello"], "not ann's own");
    }
}
