//! The pair tables (friends, blocks, group membership, group blocks): one row per direction
//! of a pair, `owner → other`, in the owner's slot, found by the directed pair id. Groups and
//! users share the id space, so one shape serves all four tables.
//!
//! Caps on an owner's rows (friends, groups per user) are checked where the owner's slot is,
//! whichever node runs the change that adds the row: the change first holds a place there
//! ([`PairTable::hold`]), which counts until the row is written or the change lets it go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, RowId, Slot, StoreError, TableDef, TableId};
use tim_net::proto::ErrorCode;
use tim_shard::{Cluster, EngineAnswer};

use crate::error::EngineError;
use crate::model::ident::{directed_pair_id, UserId};
use crate::model::partition;
use crate::model::tables::pair;
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};

/// Most entries a list returns.
pub const MAX_LIST: usize = 10_000;

pub struct PairTable {
    data: Arc<Cluster>,
    table: TableId,
    /// The service its holds travel as (capped tables only).
    places: Option<Service>,
    /// Places held for rows to come, by owner, on the owner of the owner's slot.
    held: std::sync::Mutex<HashMap<UserId, Vec<(UserId, Instant)>>>,
    /// Serialize the holds of one owner (check and hold in one step).
    stripes: Vec<tokio::sync::Mutex<()>>,
}

/// The operations on the places of a capped table, run on the owner of the owner's slot.
#[derive(Debug, Serialize, Deserialize)]
enum PlaceOp {
    Hold { owner: UserId, other: UserId, max: usize },
    Release { owner: UserId, other: UserId },
}

/// A [`PlaceOp`] of one table.
#[derive(Serialize)]
#[serde(transparent)]
struct Place {
    #[serde(skip)]
    table: Service,
    op: PlaceOp,
}

impl SlotOp for Place {
    fn service(&self) -> Service {
        self.table
    }
}

impl Arrivals for PairTable {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                PlaceOp::Hold { owner, other, max } => seam::answer(self.hold_here(owner, other, max).await, "hold"),
                PlaceOp::Release { owner, other } => {
                    self.release_here(owner, other);
                    seam::answer(Ok(()), "release")
                }
            }
        })
    }
}

/// How long a place is held when the change that holds it never lets it go (its node died).
const HOLD_FOR: Duration = Duration::from_secs(30);
const STRIPES: u64 = 256;

impl PairTable {
    pub fn new(data: Arc<Cluster>, def: &TableDef) -> Result<Self, StoreError> {
        let table = data.table(def.name).ok_or(StoreError::UnknownTable(0))?;
        let stripes = (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Self { data, table, places: None, held: Default::default(), stripes })
    }

    /// A table whose rows are capped: places are held through `places`.
    pub fn capped(data: Arc<Cluster>, def: &TableDef, places: Service) -> Result<Self, StoreError> {
        Ok(Self { places: Some(places), ..Self::new(data, def)? })
    }

    fn place(&self, op: PlaceOp) -> Result<Place, EngineError> {
        let table = self.places.ok_or(EngineError::Internal("a place held in a table that is not capped"))?;
        Ok(Place { table, op })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Vec<(UserId, Instant)>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a place for the row `owner → other` unless `owner` has `max` rows and places
    /// held already (4105); a row that exists needs no place.
    pub async fn hold(&self, owner: UserId, other: UserId, max: usize) -> Result<(), EngineError> {
        let place = self.place(PlaceOp::Hold { owner, other, max })?;
        at_slot(&self.data, partition::user(owner), self.hold_here(owner, other, max), place).await
    }

    /// [`PairTable::hold`] on the owner of `owner`'s slot.
    async fn hold_here(&self, owner: UserId, other: UserId, max: usize) -> Result<(), EngineError> {
        let stripe = (u64::from_be_bytes(owner.to_be_bytes()) % STRIPES) as usize;
        let _guard = match self.stripes.get(stripe) {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        if self.row(owner, other).await?.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        let mut pending: Vec<(UserId, Instant)> = self.held().get(&owner).cloned().unwrap_or_default();
        pending.retain(|(o, at)| *o != other && now.duration_since(*at) < HOLD_FOR);
        // A place whose row is written counts as the row.
        let mut still = Vec::with_capacity(pending.len());
        for (o, at) in pending {
            if self.row(owner, o).await?.is_none() {
                still.push((o, at));
            }
        }
        if self.count(owner, max).await? + still.len() >= max {
            return Err(ErrorCode::PermissionDenied.into());
        }
        still.push((other, now));
        self.held().insert(owner, still);
        Ok(())
    }

    /// Lets a held place go (its row is written, or its change failed).
    pub async fn release(&self, owner: UserId, other: UserId) {
        let Ok(place) = self.place(PlaceOp::Release { owner, other }) else { return };
        let here = async {
            self.release_here(owner, other);
            Ok(())
        };
        // A place that is not let go expires.
        let _ = at_slot(&self.data, partition::user(owner), here, place).await;
    }

    /// [`PairTable::release`] on the owner of `owner`'s slot.
    fn release_here(&self, owner: UserId, other: UserId) {
        let mut held = self.held();
        if let Some(places) = held.get_mut(&owner) {
            places.retain(|(o, _)| *o != other);
            if places.is_empty() {
                held.remove(&owner);
            }
        }
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
        Ok(self.list_rows(owner).await?.into_iter().map(|(other, _)| other).collect())
    }

    /// [`PairTable::list`], with each pair's row.
    pub async fn list_rows(&self, owner: UserId) -> Result<Vec<(UserId, RowId)>, EngineError> {
        let table = self.table;
        let rows = self
            .data
            .page(table, partition::user(owner), pair::UUID, &owner.to_be_bytes(), Cursor::OLDEST, MAX_LIST)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, row)| {
                let other = row.get(pair::TUUID).and_then(|v| v.as_ref().try_into().ok()).map(UserId::from_be_bytes)?;
                Some((other, id))
            })
            .collect())
    }
}
