//! Where every row lives: the slot of each table's rows, decided here and nowhere else.
//!
//! A slot is the unit that moves between nodes, and an atomic write never spans two slots,
//! so these rules decide which data can be written together:
//!
//! | rows | placed by | function |
//! | --- | --- | --- |
//! | account, profile (`timuser`), offline queue (`timoffline`) | the user's id | [`user`] |
//! | a user's pair rows: friends, blocks, groups, blocked groups | the user's id | [`user`] |
//! | a group (`timgroup`), its member and block rows | the group's id | [`group`] |
//! | a 1:1 conversation's history, and the pair's relation (`timrelate`) | the pair id | [`pair`] |
//! | a group's history | the group's conversation id | [`conversation`] |
//! | a group–user relation (`timgrouprelate`) | the group id, then the user id | [`group_relation`] |
//! | a login token (in memory) | the token | [`token`] |
//!
//! A 1:1 conversation's history and its relation row share a slot: the friendship check and
//! the append of a message happen on one node.

use std::sync::Arc;

use futures_util::future::try_join_all;
use tim_kv::{Batch, Row, RowId, Slot, TableId};
use tim_shard::Cluster;

use crate::error::EngineError;
use crate::model::ident::{GroupId, UserId};

/// The slot of a user's own data, and of the rows of a pair table owned by the id (a user's,
/// or a group's by its party id).
pub fn user(user: UserId) -> Slot {
    tim_shard::slot_of(&user.to_be_bytes())
}

/// The slot of a group's row and of its member and block rows. Groups and users share one id
/// space, so a group is placed as a user of its id would be.
pub fn group(group: GroupId) -> Slot {
    user(group.party())
}

/// The slot of a user pair (by [`crate::model::ident::pair_id`]): their relation and 1:1 history.
pub fn pair(pair: &[u8; 16]) -> Slot {
    tim_shard::slot_of(pair)
}

/// The slot of a conversation's history (1:1: the pair id; group: its conversation id).
pub fn conversation(chat: &[u8; 16]) -> Slot {
    tim_shard::slot_of(chat)
}

/// The slot of a login token, whose owner holds it until it is used.
pub fn token(token: &str) -> Slot {
    tim_shard::slot_of(token.as_bytes())
}

/// The slot of a group–user relation (by the directed pair id, group first).
pub fn group_relation(key: &[u8; 16]) -> Slot {
    tim_shard::slot_of(key)
}

/// Inserts into several slots, one batch per slot, written all at once: the ids come back in
/// the order the rows were added. Each slot's batch is atomic, the whole is not: a failure
/// may leave some slots written, so callers make each slot's part safe to write again.
#[derive(Default)]
pub struct Inserts {
    batches: Vec<(Batch, Vec<usize>)>,
    rows: usize,
}

impl Inserts {
    pub fn add(&mut self, slot: Slot, table: TableId, row: Row) {
        let at = match self.batches.iter().position(|(b, _)| b.slot() == slot) {
            Some(at) => at,
            None => {
                self.batches.push((Batch::new(slot), Vec::new()));
                self.batches.len() - 1
            }
        };
        if let Some((batch, order)) = self.batches.get_mut(at) {
            batch.insert(table, row);
            order.push(self.rows);
            self.rows += 1;
        }
    }

    /// The batches, and where each row's id is among the ids they return written together
    /// (by the order rows were added).
    pub fn into_batches(self) -> (Vec<Batch>, Vec<usize>) {
        let mut at = vec![0; self.rows];
        let mut next = 0;
        let mut batches = Vec::with_capacity(self.batches.len());
        for (batch, order) in self.batches {
            for row in order {
                if let Some(slot) = at.get_mut(row) {
                    *slot = next;
                }
                next += 1;
            }
            batches.push(batch);
        }
        (batches, at)
    }

    pub async fn write(self, data: &Arc<Cluster>) -> Result<Vec<RowId>, EngineError> {
        let (batches, at) = self.into_batches();
        let ids = write_batches(data, batches, at.len()).await?;
        ids_at(&ids, at.iter().copied())
    }
}

/// Writes batches of `rows` inserts in all, each through its slot's owner, all at once: the
/// ids in the order of the batches.
pub async fn write_batches(data: &Arc<Cluster>, batches: Vec<Batch>, rows: usize) -> Result<Vec<RowId>, EngineError> {
    let ids: Vec<RowId> = try_join_all(batches.into_iter().map(|b| data.write(b))).await?.concat();
    if ids.len() != rows {
        return Err(EngineError::Internal("a write returned fewer ids than it inserted"));
    }
    Ok(ids)
}

/// The positions of `items` by the slot `slot_of` gives each, slots in order of first
/// appearance and positions in order within each.
pub fn by_slot<T>(items: &[T], slot_of: impl Fn(&T) -> Slot) -> Vec<(Slot, Vec<usize>)> {
    let mut by_slot: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let slot = slot_of(item);
        match by_slot.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, at)) => at.push(i),
            None => by_slot.push((slot, vec![i])),
        }
    }
    by_slot
}

/// The ids at positions `at` of a write's `ids`.
pub fn ids_at(ids: &[RowId], at: impl Iterator<Item = usize>) -> Result<Vec<RowId>, EngineError> {
    at.map(|i| ids.get(i).copied().ok_or(EngineError::Internal("a write returned fewer ids than it inserted")))
        .collect()
}
