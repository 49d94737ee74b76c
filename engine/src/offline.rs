//! Offline queues: messages for users who had no session, or never acked, kept in `timoffline`
//! in the recipient's slot and drained oldest first (frame 17).

use std::sync::Arc;

use bytes::Bytes;
use tim_kv::{Batch, Cursor, Row, RowId, Store, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::proto::TimMessage;
use tracing::warn;

use crate::error::EngineError;
use crate::ident::UserId;
use crate::tables::timoffline;

/// Most queued copies of one message a user can have (one per delivery of it).
const MAX_COPIES: usize = 64;

pub struct OfflineQueue {
    store: Arc<dyn Store>,
    table: TableId,
}

impl OfflineQueue {
    pub fn new(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let table = store.table(timoffline::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        Ok(Self { store, table })
    }

    /// Appends a message to `user`'s queue; the entry's id.
    pub async fn push(&self, user: UserId, msg: &TimMessage) -> Result<RowId, EngineError> {
        let mut row = Row::new(timoffline::DEF.columns.len());
        row.set(timoffline::UUID, Bytes::copy_from_slice(&user.to_be_bytes()))
            .set(timoffline::STANZA, body_bytes(msg, Encoding::Compact));
        if let Some(mid) = msg.mid {
            row.set(timoffline::MID, Bytes::copy_from_slice(&mid.to_be_bytes()));
        }
        let mut batch = Batch::new();
        batch.insert(self.table, tim_shard::slot_of(&user.to_be_bytes()), row);
        let ids = self.store.write(batch).await?;
        ids.first().copied().ok_or(EngineError::Refused(tim_net::proto::ErrorCode::Database))
    }

    /// The oldest `limit` entries of `user`'s queue. An entry that no longer decodes is
    /// dropped (logged) rather than left to block the queue.
    pub async fn oldest(&self, user: UserId, limit: usize) -> Result<Vec<(RowId, TimMessage)>, EngineError> {
        let (store, table) = (self.store.clone(), self.table);
        let slot = tim_shard::slot_of(&user.to_be_bytes());
        let rows = tokio::task::spawn_blocking(move || {
            store.page(table, slot, timoffline::UUID, &user.to_be_bytes(), Cursor::OLDEST, limit)
        })
        .await??;
        let mut out = Vec::with_capacity(rows.len());
        let mut broken = Vec::new();
        for (id, row) in rows {
            match row.get(timoffline::STANZA).map(|s| decode_body::<TimMessage>(s.clone(), Encoding::Compact)) {
                Some(Ok(msg)) => out.push((id, msg)),
                _ => broken.push(id),
            }
        }
        if !broken.is_empty() {
            warn!(count = broken.len(), "dropping undecodable offline entries");
            self.remove(&broken).await?;
        }
        Ok(out)
    }

    /// Deletes `user`'s queued copies of message `mid` (a recalled or burned message).
    pub async fn remove_message(&self, user: UserId, mid: i64) -> Result<(), EngineError> {
        let (store, table) = (self.store.clone(), self.table);
        let slot = tim_shard::slot_of(&user.to_be_bytes());
        let rows = tokio::task::spawn_blocking(move || {
            store.page(table, slot, timoffline::MID, &mid.to_be_bytes(), Cursor::OLDEST, MAX_COPIES)
        })
        .await??;
        let owner = user.to_be_bytes();
        let ids: Vec<RowId> = rows
            .into_iter()
            .filter(|(_, row)| row.get(timoffline::UUID).is_some_and(|u| u.as_ref() == owner))
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.remove(&ids).await
    }

    /// Deletes delivered entries.
    pub async fn remove(&self, ids: &[RowId]) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        for id in ids {
            batch.delete(self.table, *id);
        }
        self.store.write(batch).await?;
        Ok(())
    }
}
