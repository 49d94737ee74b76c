//! The pair tables (friends, blocks, group membership, group blocks): one row per direction
//! of a pair, `owner → other`, in the owner's slot, found by the directed pair id. Groups and
//! users share the id space, so one shape serves all four tables.

use std::sync::Arc;

use bytes::Bytes;
use tim_kv::{Batch, Cursor, Row, RowId, StoreError, TableDef, TableId};
use tim_shard::Cluster;

use crate::error::EngineError;
use crate::ident::{directed_pair_id, UserId};
use crate::partition;
use crate::tables::pair;

/// Most entries a list returns.
pub const MAX_LIST: usize = 10_000;

pub struct PairTable {
    data: Arc<Cluster>,
    table: TableId,
}

impl PairTable {
    pub fn new(data: Arc<Cluster>, def: &TableDef) -> Result<Self, StoreError> {
        let table = data.table(def.name).ok_or(StoreError::UnknownTable(0))?;
        Ok(Self { data, table })
    }

    /// The row of `owner → other`, if any (index only).
    pub async fn row(&self, owner: UserId, other: UserId) -> Result<Option<RowId>, EngineError> {
        let (table, key) = (self.table, directed_pair_id(owner, other));
        let found = self.data.ids(table, partition::user(owner), pair::UNIKID, &key, Cursor::OLDEST, 1).await?;
        Ok(found.first().copied())
    }

    /// Adds the insert of `owner → other` to `batch` (of the owner's slot) unless the row exists.
    pub async fn stage_add(&self, batch: &mut Batch, owner: UserId, other: UserId) -> Result<(), EngineError> {
        if self.row(owner, other).await?.is_none() {
            let mut row = Row::new(pair::COLUMNS.len());
            row.set(pair::UNIKID, Bytes::copy_from_slice(&directed_pair_id(owner, other)))
                .set(pair::UUID, Bytes::copy_from_slice(&owner.to_be_bytes()))
                .set(pair::TUUID, Bytes::copy_from_slice(&other.to_be_bytes()));
            batch.insert(self.table, row);
        }
        Ok(())
    }

    /// Adds the delete of `owner → other` to `batch` if the row exists.
    pub async fn stage_remove(&self, batch: &mut Batch, owner: UserId, other: UserId) -> Result<(), EngineError> {
        if let Some(id) = self.row(owner, other).await? {
            batch.delete(self.table, id);
        }
        Ok(())
    }

    /// How many rows `owner` has, counting up to `limit` (index only).
    pub async fn count(&self, owner: UserId, limit: usize) -> Result<usize, EngineError> {
        let table = self.table;
        let ids = self
            .data
            .ids(table, partition::user(owner), pair::UUID, &owner.to_be_bytes(), Cursor::OLDEST, limit)
            .await?;
        Ok(ids.len())
    }

    /// The others of `owner`'s rows, oldest first, at most [`MAX_LIST`].
    pub async fn list(&self, owner: UserId) -> Result<Vec<UserId>, EngineError> {
        let table = self.table;
        let rows = self
            .data
            .page(table, partition::user(owner), pair::UUID, &owner.to_be_bytes(), Cursor::OLDEST, MAX_LIST)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(_, row)| {
                row.get(pair::TUUID).and_then(|v| v.as_ref().try_into().ok()).map(UserId::from_be_bytes)
            })
            .collect())
    }
}
