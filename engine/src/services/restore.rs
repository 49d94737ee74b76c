//! Rows of an export written back (`tim import`), each slot's on the slot's owner.
//!
//! A row goes back under its own id only where that id is free, and is left alone where the
//! same row is there already, so importing a file twice changes nothing the second time. A
//! row that would replace another, or repeat another row's unique value, is skipped and
//! reported. The owner then drops what it cached of the rows' kind (relations, queue
//! lengths). Once every row is in, [`Restorer::finish`] finishes the relation changes
//! the export caught half done (before, a repair's new rows could take ids the file's rows
//! still need).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, ExportedRow, Slot, StoreError};
use tim_shard::{Cluster, EngineAnswer, RouteError};

use crate::error::EngineError;
use crate::model::tables;
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::chat_log::ChatLog;
use crate::services::groups::Groups;
use crate::services::inbox::Inbox;
use crate::services::offline::OfflineQueue;
use crate::services::rosters::Rosters;

/// The operations of an import on the owner of a slot.
#[derive(Debug, Serialize, Deserialize)]
enum RestoreOp {
    /// Rows of an export written back.
    Restore { rows: Vec<ExportedRow> },
    /// Finishes the relation changes of the slot left half done.
    Repair,
}

impl SlotOp for RestoreOp {
    fn service(&self) -> Service {
        Service::Restore
    }
}

impl Arrivals for Restorer {
    fn at_slot(self: Arc<Self>, slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                RestoreOp::Restore { rows } => seam::answer(self.restore_here(slot, rows).await, "restore"),
                RestoreOp::Repair => seam::answer(self.repair_here(slot).await, "repair"),
            }
        })
    }
}

/// Writes an export's rows back, and drops what the services cached of them.
pub struct Restorer {
    data: Arc<Cluster>,
    offline: Arc<OfflineQueue>,
    chat_log: Arc<ChatLog>,
    inbox: Arc<Inbox>,
    rosters: Arc<Rosters>,
    groups: Arc<Groups>,
}

/// What a slot's owner did with rows given back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Restored {
    pub written: u64,
    pub unchanged: u64,
    /// Table id, row id, why.
    pub skipped: Vec<(u32, u64, String)>,
}

/// Why the store refused a row, for the operator; `None` for failures that are not the
/// row's (the import stops on those).
fn refusal(e: &EngineError) -> Option<String> {
    let store = match e {
        EngineError::Store(e) | EngineError::Route(RouteError::Store(e)) => e,
        _ => return None,
    };
    match store {
        StoreError::Occupied { .. } => Some("another row holds its id".into()),
        StoreError::Duplicate { column, .. } => Some(format!("another row has the same `{column}`")),
        StoreError::UnknownColumn { .. } => Some("it has more columns than the table here".into()),
        StoreError::OtherSlot { .. } => Some("its id is not of the slot it came in".into()),
        StoreError::UnknownTable(_) => Some("the table does not exist here".into()),
        _ => None,
    }
}

impl Restorer {
    pub fn new(
        data: Arc<Cluster>,
        offline: Arc<OfflineQueue>,
        chat_log: Arc<ChatLog>,
        inbox: Arc<Inbox>,
        rosters: Arc<Rosters>,
        groups: Arc<Groups>,
    ) -> Self {
        Self { data, offline, chat_log, inbox, rosters, groups }
    }

    /// Writes `rows` of `slot` back, on the slot's owner.
    pub async fn restore(&self, slot: Slot, rows: Vec<ExportedRow>) -> Result<Restored, EngineError> {
        at_slot(&self.data, slot, self.restore_here(slot, rows.clone()), RestoreOp::Restore { rows }).await
    }

    /// [`Restorer::restore`] on the owner (under the slot's guard).
    async fn restore_here(&self, slot: Slot, rows: Vec<ExportedRow>) -> Result<Restored, EngineError> {
        let mut restored = Restored::default();
        let mut batch = Batch::new(slot);
        for row in &rows {
            batch.restore(row.table, row.id, row.row.clone());
        }
        match self.data.write(batch).await.map_err(EngineError::from) {
            Ok(written) => {
                restored.written = written.len() as u64;
                restored.unchanged = (rows.len() - written.len()) as u64;
            }
            Err(e) if refusal(&e).is_some() => {
                // One row refused fails the batch: find which, one at a time.
                for row in &rows {
                    let mut one = Batch::new(slot);
                    one.restore(row.table, row.id, row.row.clone());
                    match self.data.write(one).await.map_err(EngineError::from) {
                        Ok(written) if written.is_empty() => restored.unchanged += 1,
                        Ok(_) => restored.written += 1,
                        Err(e) => match refusal(&e) {
                            Some(why) => restored.skipped.push((row.table.0, row.id.0, why)),
                            None => return Err(e),
                        },
                    }
                }
            }
            Err(e) => return Err(e),
        }
        if restored.written > 0 {
            self.forget_restored(&rows);
        }
        Ok(restored)
    }

    /// Drops what this owner cached of the kinds of rows written.
    fn forget_restored(&self, rows: &[ExportedRow]) {
        let has = |name: &str| self.data.table(name).is_some_and(|t| rows.iter().any(|r| r.table == t));
        if has(tables::timoffline::DEF.name) {
            self.offline.forget_counts();
        }
        if has(tables::timgroupcursor::DEF.name) || has(tables::timchatcursor::DEF.name) {
            self.chat_log.forget();
        }
        if has(tables::timinbox::DEF.name) {
            self.inbox.forget();
        }
        if has(tables::timrelate::DEF.name) {
            self.rosters.forget_cache();
        }
    }

    /// Finishes the relation changes of `slot` left half done (after an import), on the
    /// slot's owner; how many.
    pub async fn finish(&self, slot: Slot) -> Result<usize, EngineError> {
        at_slot(&self.data, slot, self.repair_here(slot), RestoreOp::Repair).await
    }

    /// [`Restorer::finish`] on the owner.
    async fn repair_here(&self, slot: Slot) -> Result<usize, EngineError> {
        Ok(self.rosters.repair(slot).await? + self.groups.repair(slot).await?)
    }
}
