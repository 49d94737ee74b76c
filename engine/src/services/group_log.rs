//! A group's messages and how far each member has them, on the owner of the group's
//! conversation slot.
//!
//! A group message is one history row; nothing is written per member. Each member has a
//! cursor row in the same slot: `next`, the smallest `mid` of the group the member may not
//! have yet. A message names the group's previous message (`prev`, read under the group's
//! lock, so the chain follows commit order). An acked delivery moves a cursor only over a
//! contiguous prefix: from `prev` (which the cursor must have passed) to the message. An ack
//! that comes before the cursor reaches its `prev` (a live message acked while older ones wait
//! for the drain) is kept, in memory and bounded, until it does; one lost costs a delivery
//! again, which clients drop by `mid`, never a message.
//!
//! A cursor belongs to one membership: it names the member's row of the group (a new row on
//! every join), and a message finding a cursor of an earlier membership starts it anew at
//! itself, so a member who left and came back never gets what was sent meanwhile. A cursor is
//! made by the first message after a join (or after an upgrade from per-member entries), in
//! the same commit as that message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, RowId, Slot, StoreError, TableId};
use tim_net::codec::{decode_body, Encoding};
use tim_net::proto::TimMessage;
use tim_net::report::ErrorChain;
use tim_shard::{Cluster, EngineAnswer};
use tracing::warn;

use crate::error::EngineError;
use crate::model::ident::{group_chat_id, GroupId, UserId};
use crate::model::partition;
use crate::model::tables::{timgroupcursor, timmessage};
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};

/// Most acks kept per member while its cursor has not reached them.
const MAX_WAITING: usize = 64;
/// Most groups, and most cursors of all groups together, kept in memory; past either, the
/// groups nobody uses at the moment are forgotten (and read again when used).
const MAX_GROUPS: usize = 10_000;
const MAX_CURSORS: usize = 1_000_000;
/// Rows read at a time.
const PAGE: usize = 512;
/// How often a member's drain checks whether more than the queue cap waits (a check reads up
/// to the cap's number of index entries).
const CAP_CHECK_EVERY: Duration = Duration::from_secs(60);

/// A group message stored: its `mid` and the group's message before it (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub mid: i64,
    pub prev: i64,
}

/// A member acked the group's messages from after `prev` through `mid` (a delivery of one
/// message, or a drained batch: `prev` is then where the batch began).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub group: GroupId,
    pub prev: i64,
    pub mid: i64,
}

/// What a member has not had yet, oldest first, and the span a drain's ack covers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Waiting {
    /// Thrift-compact messages, with their `mid`s.
    pub messages: Vec<Bytes>,
    /// `None` when nothing waits.
    pub span: Option<Span>,
}

#[derive(Debug, Serialize, Deserialize)]
enum GroupLogOp {
    Append { group: GroupId, from: UserId, stored: Bytes, members: Vec<(UserId, RowId)> },
    Acked { user: UserId, spans: Vec<Span> },
    Waiting { group: GroupId, user: UserId, membership: RowId, limit: usize },
}

impl SlotOp for GroupLogOp {
    fn service(&self) -> Service {
        Service::GroupLog
    }
}

impl Arrivals for GroupLog {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                GroupLogOp::Append { group, from, stored, members } => {
                    seam::answer(self.append_here(group, from, stored, &members).await, "group append")
                }
                GroupLogOp::Acked { user, spans } => seam::answer(self.acked_here(user, spans).await, "group ack"),
                GroupLogOp::Waiting { group, user, membership, limit } => {
                    seam::answer(self.waiting_here(group, user, membership, limit).await, "group drain")
                }
            }
        })
    }
}

/// A member's cursor.
#[derive(Debug, Clone)]
struct MemberCursor {
    row: RowId,
    /// The member's row of the group when the cursor was made.
    membership: RowId,
    next: i64,
    /// Acks the cursor has not reached: `(prev, mid)`.
    waiting: Vec<(i64, i64)>,
    /// When a drain last checked the queue cap.
    capped: Option<Instant>,
}

impl MemberCursor {
    /// Applies the acks that continue the cursor; whether it moved.
    fn advance(&mut self, spans: impl IntoIterator<Item = (i64, i64)>) -> bool {
        let before = self.next;
        self.waiting.extend(spans);
        self.waiting.sort_unstable();
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

/// One group's cursors, loaded from the store on first use.
#[derive(Default)]
struct Cursors {
    /// The [`GroupLog::forget`] generation they were read under; `None` before.
    loaded: Option<u64>,
    members: HashMap<UserId, MemberCursor>,
}

pub struct GroupLog {
    data: Arc<Cluster>,
    cursors: TableId,
    history: TableId,
    max_entries: usize,
    max_age: Duration,
    groups: Mutex<HashMap<GroupId, Arc<tokio::sync::Mutex<Cursors>>>>,
    /// Cursors held in `groups`, all together.
    cached: AtomicUsize,
    /// Raised by [`GroupLog::forget`]: cursors loaded under an older one are read again.
    generation: AtomicU64,
}

impl GroupLog {
    pub fn new(data: Arc<Cluster>, max_entries: usize, max_age: Duration) -> Result<Self, StoreError> {
        let cursors = data.table(timgroupcursor::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        let history = data.table(timmessage::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        let groups = Mutex::new(HashMap::new());
        Ok(Self {
            data,
            cursors,
            history,
            max_entries,
            max_age,
            groups,
            cached: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        })
    }

    fn slot(group: GroupId) -> Slot {
        partition::conversation(&group_chat_id(group))
    }

    /// The group's cursors, one lock per group (its messages are stored one at a time).
    fn group(&self, group: GroupId) -> Arc<tokio::sync::Mutex<Cursors>> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let full = groups.len() >= MAX_GROUPS || self.cached.load(Ordering::Relaxed) > MAX_CURSORS;
        if full && !groups.contains_key(&group) {
            groups.retain(|_, cursors| {
                if Arc::strong_count(cursors) > 1 {
                    return true;
                }
                // Unused, so its lock is free.
                if let Ok(forgotten) = cursors.try_lock() {
                    self.cached.fetch_sub(forgotten.members.len(), Ordering::Relaxed);
                }
                false
            });
        }
        groups.entry(group).or_default().clone()
    }

    /// Forgets every group's cursors (rows were written behind them: an import): each is read
    /// again at its next use.
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the group's cursor rows: at first use, after [`GroupLog::forget`], and when a
    /// message finds a cursor of another membership (another owner may have made one).
    async fn load(&self, group: GroupId, cursors: &mut Cursors) -> Result<(), EngineError> {
        let generation = self.generation.load(Ordering::Acquire);
        if cursors.loaded == Some(generation) {
            return Ok(());
        }
        self.data.settle().await?;
        let (slot, key) = (Self::slot(group), group.to_be_bytes());
        let mut members: HashMap<UserId, MemberCursor> = HashMap::new();
        let mut from = Some(Cursor::OLDEST);
        while let Some(at) = from {
            let page = self.data.page(self.cursors, slot, timgroupcursor::GID, &key, at, PAGE).await?;
            for (row_id, row) in &page {
                let (Some(user), Some(membership), Some(next)) = (
                    row.u64_at(timgroupcursor::UID).map(|u| UserId::from_be_bytes(u.to_be_bytes())),
                    row.u64_at(timgroupcursor::MEMBERSHIP).map(RowId),
                    row.u64_at(timgroupcursor::NEXT).and_then(|n| i64::try_from(n).ok()),
                ) else {
                    continue;
                };
                let cursor = MemberCursor { row: *row_id, membership, next, waiting: Vec::new(), capped: None };
                // Two rows of one member (a cache that missed a row made by another owner): the
                // newest membership's, and of one membership the one behind, so nothing is
                // skipped.
                let keep = members.get(&user).is_some_and(|kept| {
                    kept.membership > membership || (kept.membership == membership && kept.next <= next)
                });
                if !keep {
                    members.insert(user, cursor);
                }
            }
            from = Cursor::after(&page, PAGE);
        }
        self.cached.fetch_sub(cursors.members.len(), Ordering::Relaxed);
        self.cached.fetch_add(members.len(), Ordering::Relaxed);
        cursors.members = members;
        cursors.loaded = Some(generation);
        Ok(())
    }

    /// The newest message of the group's history, 0 when there is none.
    async fn newest(&self, group: GroupId) -> Result<i64, EngineError> {
        let chat = group_chat_id(group);
        let ids = self.data.ids(self.history, Self::slot(group), timmessage::CHATID, &chat, Cursor::NEWEST, 1).await?;
        Ok(ids.first().map_or(0, |id| id.0 as i64))
    }

    /// Stores a group message (`stored`, history's thrift-compact form) and makes the cursors
    /// of `members` (each with its row of the group) that have none for this membership, in
    /// one commit on the owner of the group's conversation.
    pub async fn append(
        &self,
        group: GroupId,
        from: UserId,
        stored: Bytes,
        members: Vec<(UserId, RowId)>,
    ) -> Result<Appended, EngineError> {
        let op = GroupLogOp::Append { group, from, stored: stored.clone(), members: members.clone() };
        at_slot(&self.data, Self::slot(group), self.append_here(group, from, stored, &members), op).await
    }

    async fn append_here(
        &self,
        group: GroupId,
        from: UserId,
        stored: Bytes,
        members: &[(UserId, RowId)],
    ) -> Result<Appended, EngineError> {
        let lock = self.group(group);
        let mut cursors = lock.lock().await;
        self.load(group, &mut cursors).await?;
        let prev = self.newest(group).await?;
        // A member without a cursor of this membership: read the store again once, in case
        // another owner made it while this one held the group's cursors in memory.
        let stale = |c: &Cursors| members.iter().any(|(m, r)| c.members.get(m).is_none_or(|c| c.membership != *r));
        if stale(&cursors) {
            cursors.loaded = None;
            self.load(group, &mut cursors).await?;
        }
        let chat = group_chat_id(group);
        let slot = Self::slot(group);
        let mut batch = Batch::new(slot);
        let mut row = Row::new(timmessage::DEF.columns.len());
        row.set(timmessage::CHATID, Bytes::copy_from_slice(&chat))
            .set(timmessage::FID, Bytes::copy_from_slice(&from.to_be_bytes()))
            .set(timmessage::STANZA, stored);
        batch.insert(self.history, row);
        let mut made = Vec::new();
        for (member, membership) in members {
            match cursors.members.get(member) {
                // This membership's cursor, or a newer one's (the member left and came back
                // after the sender read the members).
                Some(c) if c.membership >= *membership => continue,
                Some(c) => {
                    batch.delete(self.cursors, c.row);
                }
                None => {}
            }
            let mut cursor = Row::new(timgroupcursor::DEF.columns.len());
            cursor
                .set(timgroupcursor::GID, Bytes::copy_from_slice(&group.to_be_bytes()))
                .set(timgroupcursor::UID, Bytes::copy_from_slice(&member.to_be_bytes()))
                .set(timgroupcursor::MEMBERSHIP, Bytes::copy_from_slice(&membership.0.to_be_bytes()));
            // The cursor starts at this message: the writer puts its id in `NEXT`.
            batch.insert_with_id(self.cursors, cursor, timgroupcursor::NEXT, 0);
            made.push((*member, *membership));
        }
        // Until the cursors made are in memory, the group's are read again at next use: a write
        // that fails, or whose caller goes away, may still have made them.
        let loaded = cursors.loaded.take();
        let ids = self.data.write(batch).await?;
        let mid = ids.first().map(|id| id.0 as i64).ok_or(EngineError::Internal("a group append returned no id"))?;
        for ((member, membership), row) in made.into_iter().zip(ids.into_iter().skip(1)) {
            if !cursors.members.contains_key(&member) {
                self.cached.fetch_add(1, Ordering::Relaxed);
            }
            cursors
                .members
                .insert(member, MemberCursor { row, membership, next: mid, waiting: Vec::new(), capped: None });
        }
        cursors.loaded = loaded;
        Ok(Appended { mid, prev })
    }

    /// Moves `user`'s cursors by the spans its sessions acked, on the owners of the groups.
    pub async fn acked(&self, user: UserId, spans: Vec<Span>) {
        let mut by_slot: HashMap<Slot, Vec<Span>> = HashMap::new();
        for span in spans {
            by_slot.entry(Self::slot(span.group)).or_default().push(span);
        }
        for (slot, spans) in by_slot {
            let here = self.acked_here(user, spans.clone());
            if let Err(e) = at_slot(&self.data, slot, here, GroupLogOp::Acked { user, spans }).await {
                // The messages come again with the next drain; clients drop them by mid.
                warn!(error = %ErrorChain(&e), uid = %user.node(), "group acks not recorded");
            }
        }
    }

    async fn acked_here(&self, user: UserId, spans: Vec<Span>) -> Result<(), EngineError> {
        let mut by_group: HashMap<GroupId, Vec<(i64, i64)>> = HashMap::new();
        for span in spans {
            by_group.entry(span.group).or_default().push((span.prev, span.mid));
        }
        for (group, spans) in by_group {
            let lock = self.group(group);
            let mut cursors = lock.lock().await;
            self.load(group, &mut cursors).await?;
            let Some(cursor) = cursors.members.get_mut(&user) else { continue };
            if cursor.advance(spans) {
                self.persist(group, cursor).await?;
            }
        }
        Ok(())
    }

    /// Writes a cursor's move with the writer's next group (an ack lost in a power failure
    /// costs a message delivered again).
    async fn persist(&self, group: GroupId, cursor: &MemberCursor) -> Result<(), EngineError> {
        let next = Bytes::copy_from_slice(&(cursor.next as u64).to_be_bytes());
        let mut batch = Batch::new(Self::slot(group));
        batch.update(self.cursors, cursor.row, vec![(timgroupcursor::NEXT, Some(next))]).relaxed();
        if let Err(batch) = self.data.defer_here(batch).await {
            self.data.write(batch).await?;
        }
        Ok(())
    }

    /// Up to `limit` messages of the group that `user` (whose row of the group is
    /// `membership`) has not had: its own, and those past the age cap, are skipped but
    /// covered by the span; when more than the queue cap wait, the oldest are dropped.
    pub async fn waiting(
        &self,
        group: GroupId,
        user: UserId,
        membership: RowId,
        limit: usize,
    ) -> Result<Waiting, EngineError> {
        let here = self.waiting_here(group, user, membership, limit);
        at_slot(&self.data, Self::slot(group), here, GroupLogOp::Waiting { group, user, membership, limit }).await
    }

    async fn waiting_here(
        &self,
        group: GroupId,
        user: UserId,
        membership: RowId,
        limit: usize,
    ) -> Result<Waiting, EngineError> {
        let lock = self.group(group);
        let (mut next, acked, check_cap) = {
            let mut cursors = lock.lock().await;
            self.load(group, &mut cursors).await?;
            match cursors.members.get_mut(&user) {
                Some(c) if c.membership == membership => {
                    let check = c.capped.is_none_or(|at| at.elapsed() > CAP_CHECK_EVERY);
                    if check {
                        c.capped = Some(Instant::now());
                    }
                    (c.next, c.waiting.clone(), check)
                }
                // No cursor of this membership: no message since the member joined.
                _ => return Ok(Waiting::default()),
            }
        };
        // Messages acked already (live, past the cursor): not sent again.
        let acked = |mid: i64| acked.iter().any(|(prev, through)| *prev < mid && mid <= *through);
        let (chat, slot) = (group_chat_id(group), Self::slot(group));
        if check_cap {
            next = self.cap(group, user, membership, next).await?;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let oldest_kept = i64::try_from(now.saturating_sub(self.max_age).as_nanos()).unwrap_or(i64::MAX);
        let me = user.to_be_bytes();
        let mut out = Waiting::default();
        let mut through = None;
        let mut from = Some(Cursor::Asc(RowId(u64::try_from(next).unwrap_or(0))));
        'pages: while let Some(at) = from {
            let page = self.data.page(self.history, slot, timmessage::CHATID, &chat, at, PAGE).await?;
            for (id, row) in &page {
                if out.messages.len() >= limit {
                    break 'pages;
                }
                through = Some(id.0 as i64);
                if acked(id.0 as i64) || row.get(timmessage::FID).is_some_and(|f| f.as_ref() == me) {
                    continue;
                }
                let Some(Ok(msg)) =
                    row.get(timmessage::STANZA).map(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact))
                else {
                    continue;
                };
                if msg.timestamp.is_some_and(|t| t < oldest_kept) {
                    continue;
                }
                let msg = TimMessage { mid: Some(id.0 as i64), is_offline: Some(true), ..msg };
                out.messages.push(tim_net::codec::body_bytes(&msg, Encoding::Compact));
            }
            from = Cursor::after(&page, PAGE);
        }
        out.span = through.map(|mid| Span { group, prev: next.saturating_sub(1), mid });
        Ok(out)
    }

    /// Where `user`'s cursor must be for at most the queue cap of the group's messages to wait:
    /// when more do, the oldest are passed over (logged) and the cursor moved past them.
    async fn cap(&self, group: GroupId, user: UserId, membership: RowId, next: i64) -> Result<i64, EngineError> {
        let (chat, slot, max) = (group_chat_id(group), Self::slot(group), self.max_entries);
        let from = Cursor::Asc(RowId(u64::try_from(next).unwrap_or(0)));
        if self.data.ids(self.history, slot, timmessage::CHATID, &chat, from, max + 1).await?.len() <= max {
            return Ok(next);
        }
        let newest = self.data.ids(self.history, slot, timmessage::CHATID, &chat, Cursor::NEWEST, max).await?;
        let Some(oldest_kept) = newest.last().map(|id| id.0 as i64).filter(|kept| *kept > next) else {
            return Ok(next);
        };
        warn!(uid = %user.node(), why = "over the entry cap", "group messages passed over for a member");
        let lock = self.group(group);
        let mut cursors = lock.lock().await;
        let Some(cursor) = cursors.members.get_mut(&user).filter(|c| c.membership == membership) else {
            return Ok(next);
        };
        if cursor.advance([(cursor.next.saturating_sub(1), oldest_kept.saturating_sub(1))]) {
            self.persist(group, cursor).await?;
        }
        Ok(cursor.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(next: i64) -> MemberCursor {
        MemberCursor { row: RowId(1), membership: RowId(1), next, waiting: Vec::new(), capped: None }
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

    fn user(n: u64) -> UserId {
        UserId::from_be_bytes((n << 8).to_be_bytes())
    }

    /// What a group message costs the store, counted in its memtables: its history row and
    /// index entry, and nothing per member once the members have cursors (made with the first
    /// message after they joined); each member's ack is one overwrite of its cursor row.
    #[tokio::test]
    async fn a_group_message_puts_two_keys_and_an_ack_one() {
        let data = crate::testing::standalone().await;
        let log = GroupLog::new(data.clone(), 1_000, Duration::from_secs(3_600)).unwrap();
        let group = GroupId::from_party(user(5));
        let members: Vec<(UserId, RowId)> = (10..110).map(|n| (user(n), RowId(n))).collect();
        let first = log.append(group, user(10), stored("first"), members.clone()).await.unwrap();
        assert_eq!(first.prev, 0);
        let before = data.store_figures();
        let second = log.append(group, user(10), stored("second"), members.clone()).await.unwrap();
        let puts = data.store_figures().memtable_puts - before.memtable_puts;
        assert_eq!(second.prev, first.mid, "a message names the one before it");
        assert!((2..=3).contains(&puts), "{puts} keys for a message to 100 members");

        let before = data.store_figures();
        for (member, _) in &members {
            log.acked(*member, vec![Span { group, prev: first.mid, mid: second.mid }]).await;
            log.acked(*member, vec![Span { group, prev: first.mid - 1, mid: first.mid }]).await;
        }
        data.settle().await.unwrap();
        let after = data.store_figures();
        assert_eq!(after.memtable_deletes, before.memtable_deletes, "an ack deletes nothing");
        assert_eq!(after.memtable_puts - before.memtable_puts, 100, "one cursor move per member");
        let waiting = log.waiting(group, user(11), RowId(11), 10).await.unwrap();
        assert!(waiting.messages.is_empty() && waiting.span.is_none(), "nothing waits: {waiting:?}");
        let other = log.waiting(group, user(11), RowId(99), 10).await.unwrap();
        assert!(other.span.is_none(), "a cursor of another membership is no one's");
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
        let log = GroupLog::new(data.clone(), 1_000, Duration::from_secs(3_600)).unwrap();
        let group = GroupId::from_party(user(5));
        let (ann, vic) = (user(10), user(11));
        log.append(group, ann, stored("one"), vec![(ann, RowId(1))]).await.unwrap();

        // Behind the cache: "two", and vic's cursor made with it.
        let chat = group_chat_id(group);
        let mut batch = Batch::new(GroupLog::slot(group));
        let mut row = Row::new(timmessage::DEF.columns.len());
        row.set(timmessage::CHATID, Bytes::copy_from_slice(&chat))
            .set(timmessage::FID, Bytes::copy_from_slice(&ann.to_be_bytes()))
            .set(timmessage::STANZA, stored("two"));
        batch.insert(log.history, row);
        let mut cursor = Row::new(timgroupcursor::DEF.columns.len());
        cursor
            .set(timgroupcursor::GID, Bytes::copy_from_slice(&group.to_be_bytes()))
            .set(timgroupcursor::UID, Bytes::copy_from_slice(&vic.to_be_bytes()))
            .set(timgroupcursor::MEMBERSHIP, Bytes::copy_from_slice(&2u64.to_be_bytes()));
        batch.insert_with_id(log.cursors, cursor, timgroupcursor::NEXT, 0);
        data.write(batch).await.unwrap();

        log.append(group, ann, stored("three"), vec![(ann, RowId(1)), (vic, RowId(2))]).await.unwrap();
        let waiting = log.waiting(group, vic, RowId(2), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["two", "three"], "nothing vic has not had is skipped");
    }

    /// A message whose sender read the members before one of them left and came back does not
    /// put that member's cursor back to the earlier membership.
    #[tokio::test]
    async fn an_earlier_membership_never_replaces_a_later_one() {
        let data = crate::testing::standalone().await;
        let log = GroupLog::new(data, 1_000, Duration::from_secs(3_600)).unwrap();
        let group = GroupId::from_party(user(5));
        let (ann, vic) = (user(10), user(11));
        log.append(group, ann, stored("after the rejoin"), vec![(ann, RowId(1)), (vic, RowId(3))]).await.unwrap();
        log.append(group, ann, stored("read before"), vec![(ann, RowId(1)), (vic, RowId(2))]).await.unwrap();
        let waiting = log.waiting(group, vic, RowId(3), 10).await.unwrap();
        assert_eq!(texts(&waiting), ["after the rejoin", "read before"]);
        let earlier = log.waiting(group, vic, RowId(2), 10).await.unwrap();
        assert!(earlier.span.is_none(), "the earlier membership has no cursor");
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
}
