//! Friends and blocks between users (TIMBUSINESS rtypes 1, 4, 6, 7, 18).
//!
//! Each user pair has one `timrelate` row whose status byte holds both sides' state
//! (tim-server.md §3.3): the high nibble is the larger user id's, the low nibble the smaller's;
//! 0 none, 1 wants or accepted friendship, 2 blocked the other. `0x11` means friends, and only
//! then do both `timroster` rows exist. Changes to one pair are serialized by a striped lock,
//! so two users befriending each other at once cannot lose a half.
//!
//! The relation row lives in the pair's slot, each side's roster and block rows in that user's
//! slot, so a change is three single-slot writes: the relation row, marked pending; each side's
//! rows, derived from the relation alone (so writing them again changes nothing); then the mark
//! cleared, or the row deleted when both sides are back to none. A change cut short leaves the
//! mark, and [`Rosters::repair`] derives the rows again.
//!
//! Every 1:1 message checks its pair's relation, so relations are cached. The cache is filled
//! and invalidated only under the pair's lock, so a read racing a change cannot leave a stale
//! entry behind.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, RowId, Slot, StoreError, TableId};
use tim_net::proto::ErrorCode;
use tim_shard::{Cluster, EngineAnswer};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::EngineError;
use crate::model::ident::{pair_id, UserId};
use crate::model::partition;
use crate::model::tables::{pair, timrelate};
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::pairs::PairTable;

const NONE: u8 = 0;
const FRIEND: u8 = 1;
const BLOCKED: u8 = 2;
/// Lock stripes for pair updates.
const STRIPES: usize = 256;
/// Pairs whose relation is cached (about 50 bytes each).
const CACHED_RELATIONS: usize = 1 << 18;
/// The value of the `pending` column of a relation whose change is not finished.
const PENDING: &[u8] = &[1];
/// Most unfinished changes one [`Rosters::repair`] finishes.
const REPAIR_BATCH: usize = 1000;

/// What an ADDROSTER did.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Added {
    /// A request now waits for the other side (push bnType 4).
    Requested,
    /// The other side had asked too: now friends (push bnType 5).
    Friends,
}

/// The operations on a pair, run on the owner of the pair's slot.
#[derive(Debug, Serialize, Deserialize)]
enum RosterOp {
    AreFriends { me: UserId, other: UserId },
    Befriend { me: UserId, other: UserId },
    Unfriend { me: UserId, other: UserId },
    Block { me: UserId, other: UserId },
}

impl SlotOp for RosterOp {
    fn service(&self) -> Service {
        Service::Rosters
    }
}

impl Arrivals for Rosters {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                RosterOp::AreFriends { me, other } => seam::answer(self.are_friends_here(me, other).await, "friends"),
                RosterOp::Befriend { me, other } => seam::answer(self.add_here(me, other).await, "befriend"),
                RosterOp::Unfriend { me, other } => seam::answer(self.remove_here(me, other).await, "unfriend"),
                RosterOp::Block { me, other } => seam::answer(self.block_here(me, other).await, "block"),
            }
        })
    }
}

pub struct Rosters {
    /// Most friends a user may have.
    max_roster: usize,
    data: Arc<Cluster>,
    relate: TableId,
    roster: Arc<PairTable>,
    block: PairTable,
    stripes: Vec<Mutex<()>>,
    /// Pair id → its `timrelate` row and status byte (`None`: no row).
    cache: quick_cache::sync::Cache<[u8; 16], Option<(RowId, u8)>>,
}

/// Both sides of a pair as stored.
struct Relation {
    row: Option<RowId>,
    mine: u8,
    theirs: u8,
}

impl Relation {
    fn of(pair: Pair, stored: Option<(RowId, u8)>) -> Self {
        match stored {
            Some((row, status)) => {
                let (mine, theirs) = pair.split(status);
                Relation { row: Some(row), mine, theirs }
            }
            None => Relation { row: None, mine: NONE, theirs: NONE },
        }
    }
}

/// The ordered pair of two users: its id, and whether `me` holds the high nibble.
#[derive(Clone, Copy)]
struct Pair {
    id: [u8; 16],
    me_high: bool,
}

impl Pair {
    fn of(me: UserId, other: UserId) -> Self {
        Self { id: pair_id(me, other), me_high: me > other }
    }

    /// The two users of a stored pair id: the larger, then the smaller.
    fn users(id: &[u8; 16]) -> (UserId, UserId) {
        let (high, low) = id.split_at(8);
        let read = |b: &[u8]| UserId::from_be_bytes(b.try_into().unwrap_or_default());
        (read(high), read(low))
    }

    fn slot(&self) -> Slot {
        partition::pair(&self.id)
    }

    fn status(&self, mine: u8, theirs: u8) -> u8 {
        if self.me_high {
            (mine << 4) | theirs
        } else {
            (theirs << 4) | mine
        }
    }

    fn split(&self, status: u8) -> (u8, u8) {
        let (hi, lo) = (status >> 4, status & 0x0F);
        if self.me_high {
            (hi, lo)
        } else {
            (lo, hi)
        }
    }
}

impl Rosters {
    pub fn new(data: Arc<Cluster>, max_roster: usize) -> Result<Self, StoreError> {
        let table = |name: &str| data.table(name).ok_or(StoreError::UnknownTable(0));
        Ok(Self {
            max_roster,
            relate: table(timrelate::DEF.name)?,
            roster: Arc::new(PairTable::capped(data.clone(), &pair::TIMROSTER, Service::FriendPlaces)?),
            block: PairTable::new(data.clone(), &pair::TIMBLOCK)?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            cache: quick_cache::sync::Cache::new(CACHED_RELATIONS),
            data,
        })
    }

    #[allow(clippy::indexing_slicing)]
    fn stripe(&self, pair: &Pair) -> &Mutex<()> {
        let index = pair.id.iter().fold(0usize, |acc, b| acc.wrapping_mul(31).wrapping_add(usize::from(*b)));
        // In bounds: `stripes` has `STRIPES` entries and the index is taken modulo `STRIPES`.
        &self.stripes[index % STRIPES]
    }

    /// The pair's relation; the caller holds the pair's lock (a miss fills the cache).
    async fn locked_relation(&self, pair: Pair) -> Result<Relation, EngineError> {
        if let Some(stored) = self.cache.get(&pair.id) {
            return Ok(Relation::of(pair, stored));
        }
        let found = self.data.find(self.relate, pair.slot(), timrelate::UUID, &pair.id).await?;
        let stored =
            found.map(|(row, r)| (row, r.get(timrelate::STATUS).and_then(|v| v.first().copied()).unwrap_or(0)));
        self.cache.insert(pair.id, stored);
        Ok(Relation::of(pair, stored))
    }

    /// The pair's relation, from the cache when it is there.
    async fn relation(&self, pair: Pair) -> Result<Relation, EngineError> {
        if let Some(stored) = self.cache.get(&pair.id) {
            return Ok(Relation::of(pair, stored));
        }
        let _guard = self.stripe(&pair).lock().await;
        self.locked_relation(pair).await
    }

    /// Applies the pair's new relation (its lock held): the relation row, marked pending; both
    /// sides' rows; then the mark cleared (or the row deleted when both sides are none). The
    /// cached relation is dropped after each write, so the next read takes it from the store.
    async fn change(
        &self,
        pair: Pair,
        me: UserId,
        other: UserId,
        rel: &Relation,
        mine: u8,
        theirs: u8,
    ) -> Result<(), EngineError> {
        let status = Bytes::copy_from_slice(&[pair.status(mine, theirs)]);
        let mut batch = Batch::new(pair.slot());
        match rel.row {
            Some(row) => {
                let pending = Some(Bytes::from_static(PENDING));
                batch.update(self.relate, row, vec![(timrelate::STATUS, Some(status)), (timrelate::PENDING, pending)]);
            }
            None => {
                let mut row = Row::new(timrelate::DEF.columns.len());
                row.set(timrelate::UUID, Bytes::copy_from_slice(&pair.id))
                    .set(timrelate::STATUS, status)
                    .set(timrelate::PENDING, Bytes::from_static(PENDING));
                batch.insert(self.relate, row);
            }
        }
        let written = self.data.write(batch).await;
        self.cache.remove(&pair.id);
        let row = match (rel.row, written?.first()) {
            (Some(row), _) | (None, Some(&row)) => row,
            (None, None) => return Err(EngineError::Internal("a relation write returned no id")),
        };
        self.derive(pair, me, other, row, mine, theirs).await
    }

    /// Steps two and three of a change: both sides' rows from the relation, then the relation
    /// row unmarked, or deleted when both sides are none.
    async fn derive(
        &self,
        pair: Pair,
        me: UserId,
        other: UserId,
        row: RowId,
        mine: u8,
        theirs: u8,
    ) -> Result<(), EngineError> {
        let friends = mine == FRIEND && theirs == FRIEND;
        self.sync_side(me, other, mine, friends).await?;
        self.sync_side(other, me, theirs, friends).await?;
        let mut batch = Batch::new(pair.slot());
        if mine == NONE && theirs == NONE {
            batch.delete(self.relate, row);
        } else {
            batch.update(self.relate, row, vec![(timrelate::PENDING, None)]);
        }
        let written = self.data.write(batch).await;
        self.cache.remove(&pair.id);
        written?;
        Ok(())
    }

    /// Makes `owner`'s rows about `other` match the relation: a roster row while they are
    /// friends, a block row while `owner` blocks `other`. Idempotent.
    async fn sync_side(&self, owner: UserId, other: UserId, side: u8, friends: bool) -> Result<(), EngineError> {
        let mut batch = Batch::new(partition::user(owner));
        if friends {
            self.roster.stage_add(&mut batch, owner, other).await?;
        } else {
            self.roster.stage_remove(&mut batch, owner, other).await?;
        }
        if side == BLOCKED {
            self.block.stage_add(&mut batch, owner, other).await?;
        } else {
            self.block.stage_remove(&mut batch, owner, other).await?;
        }
        if !batch.is_empty() {
            self.data.write(batch).await?;
        }
        Ok(())
    }

    /// Finishes the changes of `slot`'s pairs that were cut short (their relation rows still
    /// marked pending): derives both sides' rows again under each pair's lock. Returns how many.
    pub async fn repair(&self, slot: Slot) -> Result<usize, EngineError> {
        let relate = self.relate;
        let pending = self.data.page(relate, slot, timrelate::PENDING, PENDING, Cursor::OLDEST, REPAIR_BATCH).await?;
        let mut repaired = 0;
        for (_, row) in pending {
            let Some(id) = row.get(timrelate::UUID).and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok()) else {
                continue;
            };
            let (high, low) = Pair::users(&id);
            let (_guard, pair, rel) = self.lock_pair(high, low).await?;
            let Some(row) = rel.row else { continue };
            self.derive(pair, high, low, row, rel.mine, rel.theirs).await?;
            repaired += 1;
        }
        Ok(repaired)
    }

    /// Locks the pair against concurrent changes and reads its relation.
    async fn lock_pair(&self, me: UserId, other: UserId) -> Result<(MutexGuard<'_, ()>, Pair, Relation), EngineError> {
        let pair = Pair::of(me, other);
        let guard = self.stripe(&pair).lock().await;
        let rel = self.locked_relation(pair).await?;
        Ok((guard, pair, rel))
    }

    /// ADDROSTER: asks `other` for friendship, or accepts their request. Asking someone who
    /// blocked me is 4110; asking a friend again 4117; asking myself 4105. Asking someone I
    /// blocked lifts my block.
    pub async fn add(&self, me: UserId, other: UserId) -> Result<Added, EngineError> {
        let here = self.add_here(me, other);
        at_slot(&self.data, Pair::of(me, other).slot(), here, RosterOp::Befriend { me, other }).await
    }

    /// [`Rosters::add`] on the owner of the pair's slot.
    async fn add_here(&self, me: UserId, other: UserId) -> Result<Added, EngineError> {
        if me == other {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let (_guard, pair, rel) = self.lock_pair(me, other).await?;
        if rel.theirs == BLOCKED {
            return Err(ErrorCode::Blocked.into());
        }
        if rel.mine == FRIEND && rel.theirs == FRIEND {
            return Err(ErrorCode::Repetitive.into());
        }
        if rel.theirs != FRIEND {
            self.change(pair, me, other, &rel, FRIEND, rel.theirs).await?;
            return Ok(Added::Requested);
        }
        // Both rosters grow: each must have room, counted on the owner of its user's slot.
        self.roster.hold(me, other, self.max_roster).await?;
        if let Err(e) = self.roster.hold(other, me, self.max_roster).await {
            self.roster.release(me, other).await;
            return Err(e);
        }
        let changed = self.change(pair, me, other, &rel, FRIEND, rel.theirs).await;
        self.roster.release(me, other).await;
        self.roster.release(other, me).await;
        changed.map(|()| Added::Friends)
    }

    /// REMOVEROSTER: ends a friendship (or my request, or my block). The other side's block,
    /// if any, stays. `Ok(true)` when the other side is to be told (bnType 6); no relation at
    /// all is 4104.
    pub async fn remove(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        let here = self.remove_here(me, other);
        at_slot(&self.data, Pair::of(me, other).slot(), here, RosterOp::Unfriend { me, other }).await
    }

    /// [`Rosters::remove`] on the owner of the pair's slot.
    async fn remove_here(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        let (_guard, pair, rel) = self.lock_pair(me, other).await?;
        if rel.row.is_none() {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        let theirs = Self::after_end(&rel);
        self.change(pair, me, other, &rel, NONE, theirs).await?;
        Ok(theirs == NONE)
    }

    /// BLOCKROSTER: ends a friendship and blocks `other`. `Ok(true)` when the pair had no
    /// relation before (TIM tells the other side, bnType 7, only then).
    pub async fn block(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        let here = self.block_here(me, other);
        at_slot(&self.data, Pair::of(me, other).slot(), here, RosterOp::Block { me, other }).await
    }

    /// [`Rosters::block`] on the owner of the pair's slot.
    async fn block_here(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        if me == other {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let (_guard, pair, rel) = self.lock_pair(me, other).await?;
        self.change(pair, me, other, &rel, BLOCKED, Self::after_end(&rel)).await?;
        Ok(rel.row.is_none())
    }

    /// The other side's half once I end our relation: its block, if it blocked me, else none.
    fn after_end(rel: &Relation) -> u8 {
        if rel.theirs == BLOCKED {
            BLOCKED
        } else {
            NONE
        }
    }

    /// The friends table (for places held by other nodes).
    pub fn roster_table(&self) -> &Arc<PairTable> {
        &self.roster
    }

    /// Drops the cached relations: they are valid on the owner of their pair's slot only, and
    /// slots moved.
    pub fn forget_cache(&self) {
        self.cache.clear();
    }

    /// Whether the two are friends (both halves 1), from the relation cache of the owner of
    /// the pair's slot (the only node that changes the pair).
    pub async fn are_friends(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        let here = self.are_friends_here(me, other);
        at_slot(&self.data, Pair::of(me, other).slot(), here, RosterOp::AreFriends { me, other }).await
    }

    /// [`Rosters::are_friends`] on the owner of the pair's slot.
    async fn are_friends_here(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        let rel = self.relation(Pair::of(me, other)).await?;
        Ok(rel.mine == FRIEND && rel.theirs == FRIEND)
    }

    /// My friends.
    pub async fn friends(&self, me: UserId) -> Result<Vec<UserId>, EngineError> {
        self.roster.list(me).await
    }

    /// The users I blocked.
    pub async fn blocked(&self, me: UserId) -> Result<Vec<UserId>, EngineError> {
        self.block.list(me).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::user;

    async fn rosters() -> Rosters {
        Rosters::new(crate::testing::standalone().await, 100).unwrap()
    }

    /// A friendship whose change stopped after its first step (the relation row, marked
    /// pending): the repair writes both roster rows and clears the mark; running it again
    /// changes nothing.
    #[tokio::test]
    async fn a_change_cut_short_is_finished_by_the_repair() {
        let rosters = rosters().await;
        let (a, b) = (user(7), user(9));
        let pair = Pair::of(a, b);
        let mut row = Row::new(timrelate::DEF.columns.len());
        row.set(timrelate::UUID, Bytes::copy_from_slice(&pair.id))
            .set(timrelate::STATUS, Bytes::copy_from_slice(&[pair.status(FRIEND, FRIEND)]))
            .set(timrelate::PENDING, Bytes::from_static(PENDING));
        let mut batch = Batch::new(pair.slot());
        batch.insert(rosters.relate, row);
        rosters.data.write(batch).await.unwrap();
        assert!(rosters.are_friends(a, b).await.unwrap(), "the relation decides at once");
        assert!(rosters.friends(a).await.unwrap().is_empty(), "the derived rows are not there yet");

        assert_eq!(rosters.repair(pair.slot()).await.unwrap(), 1);
        assert_eq!(rosters.friends(a).await.unwrap(), [b]);
        assert_eq!(rosters.friends(b).await.unwrap(), [a]);
        assert_eq!(rosters.repair(pair.slot()).await.unwrap(), 0, "nothing left pending");
        // A finished change leaves no mark either.
        assert!(!rosters.block(a, b).await.unwrap(), "the pair had a relation");
        assert_eq!(rosters.blocked(a).await.unwrap(), [b]);
        assert!(rosters.friends(b).await.unwrap().is_empty());
        assert_eq!(rosters.repair(pair.slot()).await.unwrap(), 0);
    }
}
