//! Friends and blocks between users (TIMBUSINESS rtypes 1, 4, 6, 7, 18).
//!
//! Each user pair has one `timrelate` row whose status byte holds both sides' state
//! (tim-server.md §3.3): the high nibble is the larger user id's, the low nibble the smaller's;
//! 0 none, 1 wants or accepted friendship, 2 blocked the other. `0x11` means friends, and only
//! then do both `timroster` rows exist. Changes to one pair are serialized by a striped lock,
//! so two users befriending each other at once cannot lose a half.
//!
//! Every 1:1 message checks its pair's relation, so relations are cached. The cache is filled
//! and invalidated only under the pair's lock, so a read racing a change cannot leave a stale
//! entry behind.

use std::sync::Arc;

use bytes::Bytes;
use tim_kv::{Batch, Row, RowId, Slot, Store, StoreError, TableId};
use tim_net::proto::ErrorCode;
use tokio::sync::{Mutex, MutexGuard};

use crate::error::EngineError;
use crate::ident::{pair_id, UserId};
use crate::pairs::PairTable;
use crate::tables::{pair, timrelate};

const NONE: u8 = 0;
const FRIEND: u8 = 1;
const BLOCKED: u8 = 2;
/// Lock stripes for pair updates.
const STRIPES: usize = 256;
/// Pairs whose relation is cached (about 50 bytes each).
const CACHED_RELATIONS: usize = 1 << 18;

/// What an ADDROSTER did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// A request now waits for the other side (push bnType 4).
    Requested,
    /// The other side had asked too: now friends (push bnType 5).
    Friends,
}

pub struct Rosters {
    /// Most friends a user may have.
    max_roster: usize,
    store: Arc<dyn Store>,
    relate: TableId,
    roster: PairTable,
    block: PairTable,
    stripes: Vec<Mutex<()>>,
    /// Per-user locks of roster growth ([`Rosters::lock_users`]).
    user_stripes: Vec<Mutex<()>>,
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

    fn slot(&self) -> Slot {
        tim_shard::slot_of(&self.id)
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
    pub fn new(store: Arc<dyn Store>, max_roster: usize) -> Result<Self, StoreError> {
        let table = |name: &str| store.table(name).ok_or(StoreError::UnknownTable(0));
        Ok(Self {
            max_roster,
            relate: table(timrelate::DEF.name)?,
            roster: PairTable::new(store.clone(), &pair::TIMROSTER)?,
            block: PairTable::new(store.clone(), &pair::TIMBLOCK)?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            user_stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            cache: quick_cache::sync::Cache::new(CACHED_RELATIONS),
            store,
        })
    }

    /// Locks the roster growth of two users, so the roster cap holds under concurrent
    /// friendships of one user with different people: one lock when both users share a
    /// stripe, else both in stripe order. Taken after the pair's lock, never before one.
    async fn lock_users(&self, a: UserId, b: UserId) -> Vec<MutexGuard<'_, ()>> {
        let index = |u: UserId| (u64::from_be_bytes(u.to_be_bytes()) % STRIPES as u64) as usize;
        let mut order = vec![index(a).min(index(b)), index(a).max(index(b))];
        order.dedup();
        let mut guards = Vec::with_capacity(order.len());
        for i in order {
            if let Some(stripe) = self.user_stripes.get(i) {
                guards.push(stripe.lock().await);
            }
        }
        guards
    }

    #[allow(clippy::indexing_slicing)]
    fn stripe(&self, pair: &Pair) -> &Mutex<()> {
        let index = pair.id.iter().fold(0usize, |acc, b| acc.wrapping_mul(31).wrapping_add(usize::from(*b)));
        // In bounds: `stripes` has `STRIPES` entries and the index is taken modulo `STRIPES`.
        &self.stripes[index % STRIPES]
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, EngineError> {
        Ok(tim_kv::read(&self.store, f).await?)
    }

    /// The pair's relation; the caller holds the pair's lock (a miss fills the cache).
    async fn locked_relation(&self, pair: Pair) -> Result<Relation, EngineError> {
        if let Some(stored) = self.cache.get(&pair.id) {
            return Ok(Relation::of(pair, stored));
        }
        let relate = self.relate;
        let found = self.read(move |s| s.find(relate, pair.slot(), timrelate::UUID, &pair.id)).await?;
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

    /// Commits a change of the pair (its lock held) and drops its cached relation, which
    /// the next read takes from the store.
    async fn commit(&self, pair: Pair, batch: Batch) -> Result<(), EngineError> {
        let written = self.store.write(batch).await;
        self.cache.remove(&pair.id);
        written?;
        Ok(())
    }

    /// Writes the pair's status, or deletes the row when both sides are back to none.
    fn set_relation(&self, batch: &mut Batch, pair: Pair, rel: &Relation, mine: u8, theirs: u8) {
        match (rel.row, mine == NONE && theirs == NONE) {
            (Some(row), true) => {
                batch.delete(self.relate, row);
            }
            (Some(row), false) => {
                let status = Bytes::copy_from_slice(&[pair.status(mine, theirs)]);
                batch.update(self.relate, row, vec![(timrelate::STATUS, Some(status))]);
            }
            (None, true) => {}
            (None, false) => {
                let mut row = Row::new(timrelate::DEF.columns.len());
                row.set(timrelate::UUID, Bytes::copy_from_slice(&pair.id))
                    .set(timrelate::STATUS, Bytes::copy_from_slice(&[pair.status(mine, theirs)]));
                batch.insert(self.relate, pair.slot(), row);
            }
        }
    }

    /// Removes both roster rows: a friendship ends on both sides. The other side's half that
    /// remains: its block, if it blocked me, else nothing.
    async fn end_friendship(
        &self,
        batch: &mut Batch,
        me: UserId,
        other: UserId,
        rel: &Relation,
    ) -> Result<u8, EngineError> {
        self.roster.stage_remove(batch, me, other).await?;
        self.roster.stage_remove(batch, other, me).await?;
        Ok(if rel.theirs == BLOCKED { BLOCKED } else { NONE })
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
        let mut batch = Batch::new();
        if rel.mine == BLOCKED {
            self.block.stage_remove(&mut batch, me, other).await?;
        }
        self.set_relation(&mut batch, pair, &rel, FRIEND, rel.theirs);
        let mut _users = Vec::new();
        let added = if rel.theirs == FRIEND {
            _users = self.lock_users(me, other).await;
            for user in [me, other] {
                if self.roster.count(user, self.max_roster).await? >= self.max_roster {
                    return Err(ErrorCode::PermissionDenied.into());
                }
            }
            self.roster.stage_add(&mut batch, me, other).await?;
            self.roster.stage_add(&mut batch, other, me).await?;
            Added::Friends
        } else {
            Added::Requested
        };
        self.commit(pair, batch).await?;
        Ok(added)
    }

    /// REMOVEROSTER: ends a friendship (or my request, or my block). The other side's block,
    /// if any, stays. `Ok(true)` when the other side is to be told (bnType 6); no relation at
    /// all is 4104.
    pub async fn remove(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        let (_guard, pair, rel) = self.lock_pair(me, other).await?;
        if rel.row.is_none() {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        let mut batch = Batch::new();
        let theirs = self.end_friendship(&mut batch, me, other, &rel).await?;
        self.block.stage_remove(&mut batch, me, other).await?;
        self.set_relation(&mut batch, pair, &rel, NONE, theirs);
        self.commit(pair, batch).await?;
        Ok(theirs == NONE)
    }

    /// BLOCKROSTER: ends a friendship and blocks `other`. `Ok(true)` when the pair had no
    /// relation before (TIM tells the other side, bnType 7, only then).
    pub async fn block(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
        if me == other {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let (_guard, pair, rel) = self.lock_pair(me, other).await?;
        let mut batch = Batch::new();
        let theirs = self.end_friendship(&mut batch, me, other, &rel).await?;
        self.block.stage_add(&mut batch, me, other).await?;
        self.set_relation(&mut batch, pair, &rel, BLOCKED, theirs);
        self.commit(pair, batch).await?;
        Ok(rel.row.is_none())
    }

    /// Whether the two are friends (both halves 1).
    pub async fn are_friends(&self, me: UserId, other: UserId) -> Result<bool, EngineError> {
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
