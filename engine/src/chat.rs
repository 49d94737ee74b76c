//! 1:1 messages (frame 90; 92 and 93 are aliases: `odType` decides), as tim-server.md §2.3.4
//! describes them.
//!
//! A normal message (odType 1) is stored in the conversation's history, which assigns its
//! `mid`, and in the recipient's offline queue; only then is it echoed, without ack request,
//! to every session of the sender (the sender's proof of acceptance), so an echoed message
//! survives a crash. It is then pushed to the recipient with ack requests; an ack removes the
//! offline entry. Streams (5) reach online sessions only;
//! custom kinds (> 30) are pushed like normal messages but not kept in history; recall (2)
//! and burn (3) delete a stored message.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use tim_kv::{Batch, Cursor, Row, RowId, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::frame::encode_server;
use tim_net::proto::{ErrorCode, Tid, TimAck, TimMessage, TimReq};
use tim_net::report::ErrorChain;
use tim_net::FrameType;
use tim_shard::Cluster;
use tracing::warn;

use crate::calls::{at_slot, SlotCall};
use crate::error::EngineError;
use crate::ident::{pair_id, UserId};
use crate::offline::OfflineQueue;
use crate::partition::{self, Inserts};
use crate::push::{
    locate, push_frames, push_located, push_messages, push_messages_located, push_to_user, queue, Fallback, Located,
};
use crate::server::Server;
use crate::sessions::Known;
use crate::tables::timmessage;

const MS_USER: i8 = 2;
const MS_ROOM: i8 = 3;
pub(crate) const OD_NORMAL: i8 = 1;
pub(crate) const OD_RECALL: i8 = 2;
pub(crate) const OD_BURN: i8 = 3;
pub(crate) const OD_STREAM: i8 = 5;
/// How long a message sent again with the same client `id` and content counts as the same.
const DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Most history rows one request looks at when a time bound skips rows.
const MAX_SCAN: usize = 10_000;
/// `odType`s above this are application-defined.
pub(crate) const OD_CUSTOM_ABOVE: i8 = 30;

/// Stripes of the locks that make "look for the message, else store it" one step.
const DEDUP_STRIPES: usize = 256;

/// A message stored once: its `mid`, whether it was stored now (not a repeat), and its
/// recipient's offline entry when that was written in the same commit.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    pub mid: i64,
    pub fresh: bool,
    pub entry: Option<RowId>,
}

/// History of 1:1 conversations.
pub struct History {
    data: Arc<Cluster>,
    table: TableId,
    /// Held, on the owner of a conversation, while a message with a client `id` is looked
    /// for and stored: the same message sent again at once (its first attempt still in
    /// flight, from a session that dropped) finds the first rather than racing it.
    dedup_locks: Vec<tokio::sync::Mutex<()>>,
}

impl History {
    pub fn new(data: Arc<Cluster>) -> Result<Self, StoreError> {
        let table = data.table(timmessage::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        let dedup_locks = (0..DEDUP_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Self { data, table, dedup_locks })
    }

    /// On the owner of `chat`'s slot: the message stored with `key` in the last
    /// [`DEDUP_WINDOW`], or the one stored now, with its entry in the queue of `to` (when
    /// given) if this node owns that queue too ([`History::store`]).
    pub async fn append_once_here(
        &self,
        chat: [u8; 16],
        from: UserId,
        msg: &TimMessage,
        key: &[u8; 24],
        to: Option<UserId>,
        offline: &OfflineQueue,
    ) -> Result<Appended, EngineError> {
        let [a, b, ..] = *key;
        let stripe = usize::from(u16::from_be_bytes([a, b])) % DEDUP_STRIPES;
        let _one_at_a_time = self.dedup_locks.get(stripe).ok_or(EngineError::Internal("no dedup stripe"))?.lock().await;
        if let Some(mid) = self.stored_as(chat, key).await? {
            return Ok(Appended { mid, fresh: false, entry: None });
        }
        let mut rows = Inserts::default();
        rows.add(partition::conversation(&chat), self.table, Self::row(chat, from, msg, Some(key)));
        let entry = to.map(|to| (0, to, msg));
        let (ids, entries) = self.store(rows, entry.as_slice(), offline).await?;
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
        offline: &OfflineQueue,
    ) -> Result<Appended, EngineError> {
        let here = self.append_once_here(chat, from, msg, &key, to, offline);
        let call = SlotCall::AppendOnce { chat, from, msg: body_bytes(msg, Encoding::Compact), key, to };
        at_slot(&self.data, partition::conversation(&chat), here, call).await
    }

    /// Writes history rows (`rows`, by conversation slot) and, when this node owns every slot
    /// involved, offline entries (`(row, to, msg)`: `msg`, the message of the `row`-th row,
    /// queued for `to`) in the same commit: one fsync rather than two in a row, and never a
    /// row without its entries; the writer gives each entry its row's id as `mid`. The rows'
    /// ids, and the entries' ids when they were written (else the caller queues them through
    /// their owners, after the rows).
    async fn store(
        &self,
        rows: Inserts,
        entries: &[(usize, UserId, &TimMessage)],
        offline: &OfflineQueue,
    ) -> Result<(Vec<RowId>, Option<Vec<RowId>>), EngineError> {
        let (mut batches, row_at) = rows.into_batches();
        let node = self.data.node();
        let here = |slot| self.data.owner_of(slot) == Some(node);
        let all_here =
            batches.iter().all(|b| here(b.slot())) && entries.iter().all(|(_, to, _)| here(partition::user(*to)));
        if all_here && !entries.is_empty() {
            let row_batches = batches.len();
            let mut queued = Inserts::default();
            for (row, to, msg) in entries {
                let earlier = *row_at.get(*row).ok_or(EngineError::Internal("an offline entry names no row"))?;
                offline.add_for_row(&mut queued, *to, msg, earlier);
            }
            let (entry_batches, entry_at) = queued.into_batches();
            batches.extend(entry_batches);
            match self.data.write_here(batches).await {
                Ok(written) => {
                    let ids = written?;
                    offline.written(entries.iter().map(|(_, to, _)| *to)).await;
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

    /// The history row of `msg` in conversation `chat`.
    fn row(chat: [u8; 16], from: UserId, msg: &TimMessage, dedup: Option<&[u8; 24]>) -> Row {
        // As stored: the sender reduced to its node, no client id (TIM keeps the same).
        let stored = TimMessage {
            id: None,
            from_tid: msg.from_tid.as_ref().map(|t| Tid { node: t.node.clone(), ..Tid::default() }),
            ..msg.clone()
        };
        let mut row = Row::new(timmessage::DEF.columns.len());
        row.set(timmessage::CHATID, Bytes::copy_from_slice(&chat))
            .set(timmessage::FID, Bytes::copy_from_slice(&from.to_be_bytes()))
            .set(timmessage::STANZA, body_bytes(&stored, Encoding::Compact));
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

    /// Stores a group message in the group's history and queues it for every one of
    /// `members`, in one commit when every slot is here: an online member's session acks
    /// its entry away, and a member whose session is lost before that (its node killed) finds
    /// it offline. Its `mid`, and the members' entries in their order.
    pub async fn append_to_group(
        &self,
        chat: [u8; 16],
        from: UserId,
        msg: &TimMessage,
        members: &[UserId],
        offline: &OfflineQueue,
    ) -> Result<(i64, Vec<RowId>), EngineError> {
        let mut rows = Inserts::default();
        rows.add(partition::conversation(&chat), self.table, Self::row(chat, from, msg, None));
        let entries: Vec<_> = members.iter().map(|user| (0, *user, msg)).collect();
        let (ids, queued) = self.store(rows, &entries, offline).await?;
        let mid = mid_of(*ids.first().ok_or(EngineError::Internal("a message write returned no id"))?)?;
        if let Some(queued) = queued {
            return Ok((mid, queued));
        }
        let queued = TimMessage { mid: Some(mid), ..msg.clone() };
        let entries: Vec<_> = members.iter().map(|user| (*user, queued.clone())).collect();
        Ok((mid, offline.push_all(&entries).await?))
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
    async fn append(
        &self,
        from: UserId,
        accepted: &[Accepted],
        offline: &OfflineQueue,
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
            self.append_plain(from, accepted, std::mem::take(&mut plain), offline, &mut out, &mut unqueued).await?;
            let chat = pair_id(from, *to);
            let to_now = unqueued.iter().all(Option::is_none).then_some(*to);
            let Appended { mid, fresh, entry } = self.append_once(chat, from, msg, *key, to_now, offline).await?;
            match entry {
                Some(entry) => set(&mut out, i, Stored { mid, entry, repeat: false }),
                None => set(&mut unqueued, i, (mid, !fresh)),
            }
        }
        self.append_plain(from, accepted, plain, offline, &mut out, &mut unqueued).await?;
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
        offline: &OfflineQueue,
        out: &mut [Option<Stored>],
        unqueued: &mut [Option<(i64, bool)>],
    ) -> Result<(), EngineError> {
        let mut rows = Inserts::default();
        let mut entries = Vec::with_capacity(which.len());
        for (row, Accepted { to, msg, .. }) in which.iter().filter_map(|i| accepted.get(*i)).enumerate() {
            let chat = pair_id(from, *to);
            rows.add(partition::conversation(&chat), self.table, Self::row(chat, from, msg, None));
            entries.push((row, *to, msg));
        }
        if entries.is_empty() {
            return Ok(());
        }
        let entries = if unqueued.iter().all(Option::is_none) { entries.as_slice() } else { &[] };
        match self.store(rows, entries, offline).await? {
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

/// The sender as the server states it.
pub struct Sender {
    pub user: UserId,
    pub tid: Tid,
}

/// A normal 1:1 message (odType 1) that passed every check, to be stored with the others of
/// its sender's burst ([`store_and_push`]).
pub struct Accepted {
    to: UserId,
    msg: TimMessage,
    /// When the client set the message's `id`: the key that finds it if it comes again.
    dedup: Option<[u8; 24]>,
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
struct Stored {
    mid: i64,
    /// Its entry in the recipient's offline queue.
    entry: RowId,
    /// Sent before (the same client id and content) and still queued.
    repeat: bool,
}

/// What became of an accepted message frame.
pub enum Next {
    /// A normal 1:1 message, to be stored with the others of the burst ([`store_and_push`]).
    Store(Box<Accepted>),
    /// Handled.
    Done,
    /// Handled; the sending session gets this ack (a group recall).
    Reply(TimAck),
}

/// Checks and stamps a message frame; `Err` carries the code for the sender's error ack.
/// Normal 1:1 messages are returned for [`store_and_push`]; other kinds are handled here, so
/// the caller stores the normal messages before it hands over a frame that could refer to them.
///
/// The other kinds' futures are boxed: inline, their size would be allocated and copied for
/// every message.
pub async fn accept(server: &Arc<Server>, from: &Sender, mut msg: TimMessage) -> Result<Next, EngineError> {
    let od = msg.od_type;
    let custom = od > OD_CUSTOM_ABOVE;
    match msg.ms_type {
        MS_USER | MS_ROOM => {}
        // msType 1 (system) is the server's alone.
        _ => return Err(ErrorCode::ParamIncorrect.into()),
    }
    if !(matches!(od, OD_NORMAL | OD_RECALL | OD_BURN | OD_STREAM) || custom) {
        // 4 is server-made only; 6–30 are reserved.
        return Err(ErrorCode::ParamIncorrect.into());
    }
    if msg.ms_type == MS_ROOM {
        stamp(&mut msg, from);
        return Box::pin(crate::group_chat::send(server, from, msg)).await;
    }
    let to_node = msg.to_tid.as_ref().map(|t| t.node.clone()).ok_or(ErrorCode::AccountIncorrect)?;
    let to = UserId::parse(&to_node).ok_or(ErrorCode::AccountIncorrect)?;
    // A private message inside a group (roomTid set) needs both in the group, not friendship.
    if let Some(room) = msg.room_tid.as_ref().map(|t| t.node.clone()) {
        Box::pin(crate::group_chat::check_private(server, &room, from.user, to)).await?;
        return accepted(server, from, to, msg).await;
    }
    may_message(server, from.user, to).await?;
    accepted(server, from, to, msg).await
}

/// Whether `from` may send to `to`: mutual friends, or anyone existing with
/// `--message-noauth`. Unknown target 4106, not friends 4105.
pub async fn may_message(server: &Server, from: UserId, to: UserId) -> Result<(), EngineError> {
    // Friends exist (a roster entry is made for an existing account only), so the common case
    // reads the relation alone; the existence check keeps TIM's order of error codes.
    let friends = !server.cfg.message_noauth && server.rosters.are_friends(from, to).await?;
    if !friends {
        if !server.accounts.exists(to).await? {
            return Err(ErrorCode::AccountIncorrect.into());
        }
        if !server.cfg.message_noauth {
            return Err(ErrorCode::PermissionDenied.into());
        }
    }
    Ok(())
}

/// The server's stamp on an accepted message: sender, time, and an id when the client gave none.
pub fn stamp(msg: &mut TimMessage, from: &Sender) {
    msg.from_tid = Some(from.tid.clone());
    msg.timestamp = Some(now_ns());
    if msg.id.is_none() {
        msg.id = Some(rand::thread_rng().gen());
    }
    msg.is_offline = None;
}

/// A 1:1 message that passed its checks.
async fn accepted(server: &Arc<Server>, from: &Sender, to: UserId, mut msg: TimMessage) -> Result<Next, EngineError> {
    let dedup = msg.id.map(|id| dedup_key(from.user, id, &msg));
    stamp(&mut msg, from);
    let od = msg.od_type;
    if od == OD_RECALL || od == OD_BURN {
        Box::pin(recall_or_burn(server, from, to, msg)).await?;
        return Ok(Next::Done);
    }
    msg.mid = None;
    match od {
        OD_NORMAL => return Ok(Next::Store(Box::new(Accepted { to, msg, dedup }))),
        OD_STREAM => {
            Box::pin(push_frames(server, &[to], FrameType::Message, &msg, None)).await;
        }
        _ => Box::pin(push_to_user(server, to, msg, Fallback::Store)).await,
    }
    Ok(Next::Done)
}

/// The key of a message as its client sent it: the sender, the client's id, and a digest of
/// everything else the client set (a client that reuses ids for other messages does not
/// have them taken for repeats).
fn dedup_key(from: UserId, id: i64, msg: &TimMessage) -> [u8; 24] {
    let sent = TimMessage { id: None, mid: None, from_tid: None, timestamp: None, is_offline: None, ..msg.clone() };
    let digest = xxhash_rust::xxh3::xxh3_64(&body_bytes(&sent, Encoding::Compact));
    let mut key = [0u8; 24];
    let (a, rest) = key.split_at_mut(8);
    let (b, c) = rest.split_at_mut(8);
    a.copy_from_slice(&from.to_be_bytes());
    b.copy_from_slice(&id.to_be_bytes());
    c.copy_from_slice(&digest.to_be_bytes());
    key
}

/// Whether a message frame may join a burst of normal 1:1 messages: it cannot refer to them.
pub fn joins_burst(msg: &TimMessage) -> bool {
    msg.od_type == OD_NORMAL && msg.ms_type == MS_USER
}

/// Stores accepted messages of one sender in one write, then echoes each to the sender's
/// sessions and pushes it to its recipient, in order. Durable before the echo: the history
/// row (which gives the mid) and the recipient's offline entry, which an ack removes. A failed
/// write refuses all of them.
///
/// The sending session (`own`, in `encoding`) gets its echoes back to write itself rather than
/// through its own outbound queue, which it does not drain while it handles a burst.
pub async fn store_and_push(
    server: &Arc<Server>,
    from: UserId,
    own: u64,
    encoding: Encoding,
    accepted: Vec<Accepted>,
) -> Result<Vec<Bytes>, EngineError> {
    let (stored, unqueued) = server.history.append(from, &accepted, &server.offline).await?;
    let (stored, mut located) = queue_rest(server, &accepted, stored, unqueued).await?;
    let fresh = stored.iter().filter(|s| !s.repeat).count();
    crate::metrics::add(&server.metrics.messages, fresh as u64);
    // The sender's sessions (its other sessions get a copy, like the echo, without ack), as
    // this node knows them or else looked up, and the recipients' that queueing did not tell,
    // in one look-up.
    let mut wanted: Vec<UserId> = accepted.iter().map(|a| a.to).filter(|to| !located.contains_key(to)).collect();
    let ticket = match server.sessions.known(from) {
        Known::Sessions(mut leases) => {
            leases.retain(server.live());
            located.entry(from).or_insert(leases);
            None
        }
        Known::Ask(ticket) => {
            wanted.push(from);
            Some(ticket)
        }
    };
    if !wanted.is_empty() {
        match locate(server, &wanted).await {
            Ok(found) => located.extend(found),
            Err(e) => warn!(error = %ErrorChain(&e), "sessions not found; messages wait in the offline queue"),
        }
    }
    if let (Some(ticket), Some(leases)) = (ticket, located.get(&from)) {
        server.sessions.remember(from, ticket, leases.clone());
    }
    let others = located.get(&from).is_some_and(|l| l.iter().any(|l| l.node != server.data.node() || l.conn != own));
    let mine: Located = located.get(&from).map(|l| (from, l.clone())).into_iter().collect();
    let mut echoes = Vec::with_capacity(accepted.len());
    let mut pushes = Vec::with_capacity(accepted.len());
    for (Accepted { to, mut msg, .. }, Stored { mid, entry, repeat }) in accepted.into_iter().zip(stored) {
        msg.mid = Some(mid);
        echoes.push(encode_server(FrameType::Message, encoding, &msg));
        if others {
            let (compact, json) = (
                encode_server(FrameType::Message, Encoding::Compact, &msg),
                encode_server(FrameType::Message, Encoding::Json, &msg),
            );
            push_located(server, &mine, compact, json, Some(own)).await;
        }
        // A repeat still queued was pushed when it came first: it waits in the queue.
        if !repeat {
            pushes.push((to, msg, Fallback::Queued(entry)));
        }
    }
    push_messages_located(server, pushes, &located).await;
    Ok(echoes)
}

/// Writes the offline entries of messages stored in history only (`unqueued`: the mid, and
/// whether it is a repeat) through their recipients' owners ([`queue`]), which also say
/// where those recipients' sessions are. Every message's [`Stored`], in order, and the
/// sessions learned.
async fn queue_rest(
    server: &Server,
    accepted: &[Accepted],
    mut out: Vec<Option<Stored>>,
    unqueued: Vec<Option<(i64, bool)>>,
) -> Result<(Vec<Stored>, Located), EngineError> {
    let mut entries = Vec::new();
    let mut queued_for = Vec::new();
    for (i, (Accepted { to, msg, .. }, stored)) in accepted.iter().zip(&unqueued).enumerate() {
        let Some((mid, repeat)) = *stored else { continue };
        if repeat {
            if let Some(entry) = server.offline.copies(*to, mid).await?.first() {
                set(&mut out, i, Stored { mid, entry: *entry, repeat: true });
                continue;
            }
        }
        entries.push((*to, TimMessage { mid: Some(mid), ..msg.clone() }));
        queued_for.push((i, mid));
    }
    let mut located = Located::new();
    if !entries.is_empty() {
        let (ids, found) = queue(server, entries).await?;
        located = found;
        for (entry, (i, mid)) in ids.into_iter().zip(queued_for) {
            set(&mut out, i, Stored { mid, entry, repeat: false });
        }
    }
    let stored: Result<Vec<Stored>, _> =
        out.into_iter().map(|o| o.ok_or(EngineError::Internal("a message was not queued"))).collect();
    Ok((stored?, located))
}

/// Recall (odType 2, by the message's sender) and burn-after-reading (odType 3, by its
/// recipient): the stored message is deleted, along with copies still waiting in the
/// recipient's offline queue (who then never receives it), and both sides are told with the
/// same frame, offline sides included.
async fn recall_or_burn(server: &Arc<Server>, from: &Sender, to: UserId, msg: TimMessage) -> Result<(), EngineError> {
    let mid = msg.mid.filter(|m| *m > 0).ok_or(ErrorCode::ParamIncorrect)?;
    // Recall: I sent it and the peer holds it; burn: the peer sent it and I hold it.
    let (author, holder) = if msg.od_type == OD_RECALL { (from.user, to) } else { (to, from.user) };
    server.history.remove(pair_id(from.user, to), author, mid).await?;
    server.offline.remove_message(holder, mid).await?;
    push_messages(server, vec![(from.user, msg.clone(), Fallback::Store), (to, msg, Fallback::Store)]).await;
    Ok(())
}

/// PULLMESSAGE (21) of a 1:1 chat: `node` = peer, `reqInt` = newest `mid` wanted (0: the
/// newest), `reqInt2` = how many (capped), `node2` = optional ns timestamp bound.
pub async fn pull(server: &Server, me: UserId, req: &TimReq) -> Result<Vec<TimMessage>, EngineError> {
    let (Some(rtype), Some(node), Some(upto), Some(limit)) =
        (req.rtype, req.node.as_deref(), req.req_int, req.req_int2)
    else {
        return Err(ErrorCode::ParamIncorrect.into());
    };
    let chat = match rtype {
        1 => pair_id(me, UserId::parse(node).ok_or(ErrorCode::AccountIncorrect)?),
        2 => crate::group_chat::history_of(server, node, me).await?,
        _ => return Err(ErrorCode::ParamIncorrect.into()),
    };
    let before_ns = match req.node2.as_deref().filter(|s| !s.is_empty()) {
        Some(ns) => Some(ns.parse::<i64>().map_err(|_| ErrorCode::ParamIncorrect)?),
        None => None,
    };
    let limit = usize::try_from(limit).unwrap_or(0).min(server.cfg.max_history_page);
    if limit == 0 {
        return Ok(Vec::new());
    }
    server.history.page(chat, upto, limit, before_ns).await
}

/// Sets `items[i]`, which exists.
fn set<T>(items: &mut [Option<T>], i: usize, value: T) {
    if let Some(item) = items.get_mut(i) {
        *item = Some(value);
    }
}

/// A stored message's `mid` as the wire carries it; ids stay below 2^53 by construction.
fn mid_of(id: RowId) -> Result<i64, EngineError> {
    i64::try_from(id.0).map_err(|_| EngineError::Internal("a message id is out of the wire's range"))
}
