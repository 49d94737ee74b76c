//! The history of conversations (1:1 and group), in the conversation's slot: a message's row
//! gives its `mid`. Messages are stored through their conversation's log
//! (`services::chat_log`); this reads and deletes them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tim_kv::{Batch, Cursor, Row, RowId, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::proto::{ErrorCode, Tid, TimMessage};
use tim_shard::Cluster;

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::model::partition;
use crate::model::tables::timmessage;

/// Most history rows one request looks at when a time bound skips rows.
const MAX_SCAN: usize = 10_000;

/// History of conversations.
pub struct History {
    data: Arc<Cluster>,
    table: TableId,
}

impl History {
    pub fn new(data: Arc<Cluster>) -> Result<Self, StoreError> {
        let table = data.table(timmessage::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        Ok(Self { data, table })
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

    /// The history row of a message in conversation `chat` (`stored`: [`History::stored_form`];
    /// `id`: the message's, which the stored form drops).
    pub fn row(chat: [u8; 16], from: UserId, stored: Bytes, id: Option<i64>, dedup: Option<&[u8; 24]>) -> Row {
        let mut row = Row::new(timmessage::DEF.columns.len());
        row.set(timmessage::CHATID, Bytes::copy_from_slice(&chat))
            .set(timmessage::FID, Bytes::copy_from_slice(&from.to_be_bytes()))
            .set(timmessage::STANZA, stored);
        if let Some(id) = id {
            row.set(timmessage::ID, Bytes::copy_from_slice(&id.to_be_bytes()));
        }
        if let Some(key) = dedup {
            row.set(timmessage::DEDUP, Bytes::copy_from_slice(key));
        }
        row
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
