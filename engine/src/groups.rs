//! Groups (TIMBUSINESS rtypes 2, 3, 8, 9, 11–17, 19, 20): the group row with its profile
//! (`TimRoomBean`: founder, managers, topic, …), each member's relation byte, membership rows in
//! both directions and block rows (tim-server.md §2.3.8, §3.3).
//!
//! A group holds at most `--max-group-members` members and a user is in at most
//! `--max-groups-per-user` groups (4105 past either). Changes to one group are serialized by a
//! striped lock on the group. TIM's gaps are closed:
//! only members may pull users into an open group, nobody kicks or blocks the founder, and a
//! manager cannot kick or block another manager.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tim_kv::{Batch, Row, RowId, Slot, Store, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::proto::{ErrorCode, TimRoomBean};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::EngineError;
use crate::ident::{directed_pair_id, GroupId, UserId};
use crate::pairs::{self, PairTable};
use crate::tables::{pair, timgroup, timgrouprelate};

/// The group's side (high nibble) and the user's side (low nibble) of a relation byte.
const GROUP_ACCEPTED: u8 = 0x10;
const GROUP_BLOCKED: u8 = 0x20;
const USER_JOINED: u8 = 0x01;
const USER_BLOCKED: u8 = 0x02;
const MEMBER: u8 = GROUP_ACCEPTED | USER_JOINED;
/// Asked to join a private group, not yet accepted.
const PENDING: u8 = USER_JOINED;

const ACTIVE: u8 = 0;
const CANCELLED: u8 = 1;
/// `gtype` of a private group (joining needs approval); anything else is open (2).
pub const PRIVATE: i8 = 1;
const OPEN: i8 = 2;

const STRIPES: usize = 256;

/// A group as stored.
pub struct Group {
    row: RowId,
    pub private: bool,
    pub cancelled: bool,
    pub bean: TimRoomBean,
}

impl Group {
    pub fn founder(&self) -> Option<UserId> {
        self.bean.founder.as_deref().and_then(UserId::parse)
    }

    fn is_manager(&self, user: UserId) -> bool {
        self.bean.managers.iter().flatten().any(|m| UserId::parse(m) == Some(user))
    }

    /// The founder or a manager.
    pub fn is_admin(&self, user: UserId) -> bool {
        self.founder() == Some(user) || self.is_manager(user)
    }

    /// The founder and the managers.
    pub fn admins(&self) -> Vec<UserId> {
        let mut admins: Vec<UserId> = self.founder().into_iter().collect();
        admins.extend(self.bean.managers.iter().flatten().filter_map(|m| UserId::parse(m)));
        admins.sort_unstable();
        admins.dedup();
        admins
    }
}

/// What ADDROOM did.
pub enum Joined {
    /// An open group: now a member (bnType 10 to the user).
    Member,
    /// A private group: asked; these admins are told (bnType 9).
    Asked(Vec<UserId>),
}

/// Capacity limits.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    pub max_members: usize,
    pub max_groups_per_user: usize,
}

pub struct Groups {
    limits: GroupLimits,
    store: Arc<dyn Store>,
    groups: TableId,
    relate: TableId,
    members: PairTable,
    blocks: PairTable,
    stripes: Vec<Mutex<()>>,
    /// Serialize joining groups per user, so the groups-per-user cap holds under concurrent
    /// joins to different groups. Taken after a group's stripe, never before one.
    user_stripes: Vec<Mutex<()>>,
}

/// A group and its relation to one user, read under the group's lock.
struct Locked<'a> {
    _guard: MutexGuard<'a, ()>,
    group: Group,
    key: [u8; 16],
    row: Option<RowId>,
    status: u8,
}

fn slot_of_key(key: &[u8]) -> Slot {
    tim_shard::slot_of(key)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl Groups {
    pub fn new(store: Arc<dyn Store>, limits: GroupLimits) -> Result<Self, StoreError> {
        let table = |name: &str| store.table(name).ok_or(StoreError::UnknownTable(0));
        Ok(Self {
            limits,
            groups: table(timgroup::DEF.name)?,
            relate: table(timgrouprelate::DEF.name)?,
            members: PairTable::new(store.clone(), &pair::TIMMUCROSTER)?,
            blocks: PairTable::new(store.clone(), &pair::TIMBLOCKROOM)?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            user_stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            store,
        })
    }

    #[allow(clippy::indexing_slicing)]
    fn stripe(&self, group: GroupId) -> &Mutex<()> {
        // In bounds: the index is taken modulo `STRIPES`, the length of `stripes`.
        &self.stripes[(u64::from_be_bytes(group.to_be_bytes()) % STRIPES as u64) as usize]
    }

    #[allow(clippy::indexing_slicing)]
    fn user_stripe(&self, user: UserId) -> &Mutex<()> {
        // In bounds: the index is taken modulo `STRIPES`, the length of `user_stripes`.
        &self.user_stripes[(u64::from_be_bytes(user.to_be_bytes()) % STRIPES as u64) as usize]
    }

    /// NEWROOM: a group founded by `founder`, who is its first member.
    pub async fn create(&self, founder: UserId, topic: String, gtype: i8) -> Result<GroupId, EngineError> {
        let gtype = if gtype == PRIVATE { PRIVATE } else { OPEN };
        let created = now_ns();
        let bean = TimRoomBean {
            founder: Some(founder.node()),
            topic: Some(topic),
            gtype: Some(gtype),
            createtime: Some(created),
            ..TimRoomBean::default()
        };
        let _founder = self.user_has_room(founder).await?;
        loop {
            // A fresh id needs no group lock: the unique index refuses a duplicate.
            let id = GroupId::random();
            if self.get(id).await?.is_some() {
                continue;
            }
            let mut row = Row::new(timgroup::DEF.columns.len());
            row.set(timgroup::GTYPE, Bytes::copy_from_slice(&gtype.to_be_bytes()))
                .set(timgroup::UUID, Bytes::copy_from_slice(&id.to_be_bytes()))
                .set(timgroup::CREATETIME, Bytes::copy_from_slice(&created.to_be_bytes()))
                .set(timgroup::STATUS, Bytes::copy_from_slice(&[ACTIVE]))
                .set(timgroup::RBEAN, body_bytes(&bean, Encoding::Compact));
            let mut batch = Batch::new();
            batch.insert(self.groups, pairs::slot_of(id.party()), row);
            let key = directed_pair_id(id.party(), founder);
            self.stage_relation(&mut batch, key, None, MEMBER);
            self.stage_membership(&mut batch, id, founder, true).await?;
            match self.store.write(batch).await {
                Ok(_) => return Ok(id),
                // Drawn by a concurrent creation between the check and the write.
                Err(StoreError::Duplicate { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A group by id.
    pub async fn get(&self, id: GroupId) -> Result<Option<Group>, EngineError> {
        let table = self.groups;
        let found = tim_kv::read(&self.store, move |s| {
            s.find(table, pairs::slot_of(id.party()), timgroup::UUID, &id.to_be_bytes())
        })
        .await?;
        let Some((row, r)) = found else { return Ok(None) };
        let byte = |c: usize| r.get(c).and_then(|v| v.first().copied()).unwrap_or(0);
        let bean = match r.get(timgroup::RBEAN) {
            Some(raw) => decode_body::<TimRoomBean>(raw.clone(), Encoding::Compact)
                .map_err(|_| StoreError::Corrupt { table: timgroup::DEF.name, id: row.0 })?,
            None => TimRoomBean::default(),
        };
        Ok(Some(Group {
            row,
            private: byte(timgroup::GTYPE) as i8 == PRIVATE,
            cancelled: byte(timgroup::STATUS) == CANCELLED,
            bean,
        }))
    }

    /// Locks the group, reads it (unknown: 4106, cancelled: 4108) and its relation to `user`.
    async fn lock(&self, id: GroupId, user: UserId) -> Result<Locked<'_>, EngineError> {
        let guard = self.stripe(id).lock().await;
        let group = self.get(id).await?.ok_or(ErrorCode::AccountIncorrect)?;
        if group.cancelled {
            return Err(ErrorCode::Cancelled.into());
        }
        let key = directed_pair_id(id.party(), user);
        let (row, status) = self.relation(key).await?;
        Ok(Locked { _guard: guard, group, key, row, status })
    }

    async fn relation(&self, key: [u8; 16]) -> Result<(Option<RowId>, u8), EngineError> {
        let relate = self.relate;
        let found =
            tim_kv::read(&self.store, move |s| s.find(relate, slot_of_key(&key), timgrouprelate::UUID, &key)).await?;
        Ok(match found {
            Some((row, r)) => (Some(row), r.get(timgrouprelate::STATUS).and_then(|v| v.first().copied()).unwrap_or(0)),
            None => (None, 0),
        })
    }

    /// Whether `user` is a member of the group.
    pub async fn is_member(&self, id: GroupId, user: UserId) -> Result<bool, EngineError> {
        Ok(self.relation(directed_pair_id(id.party(), user)).await?.1 == MEMBER)
    }

    /// Locks `user`'s joining and refuses (4105) when they are in as many groups as a user may
    /// be; the guard is held until the joining write is done.
    async fn user_has_room(&self, user: UserId) -> Result<MutexGuard<'_, ()>, EngineError> {
        let guard = self.user_stripe(user).lock().await;
        let max = self.limits.max_groups_per_user;
        if self.members.count(user, max).await? >= max {
            return Err(ErrorCode::PermissionDenied.into());
        }
        Ok(guard)
    }

    /// As [`Groups::user_has_room`], and refuses (4105) when the group is full; the caller
    /// holds the group's lock.
    async fn has_room(&self, id: GroupId, user: UserId) -> Result<MutexGuard<'_, ()>, EngineError> {
        let max = self.limits.max_members;
        if self.members.count(id.party(), max).await? >= max {
            return Err(ErrorCode::PermissionDenied.into());
        }
        self.user_has_room(user).await
    }

    /// Writes a relation byte; 0 deletes the row.
    fn stage_relation(&self, batch: &mut Batch, key: [u8; 16], row: Option<RowId>, status: u8) {
        match (row, status) {
            (Some(row), 0) => {
                batch.delete(self.relate, row);
            }
            (Some(row), status) => {
                batch.update(self.relate, row, vec![(timgrouprelate::STATUS, Some(Bytes::copy_from_slice(&[status])))]);
            }
            (None, 0) => {}
            (None, status) => {
                let mut r = Row::new(timgrouprelate::DEF.columns.len());
                r.set(timgrouprelate::UUID, Bytes::copy_from_slice(&key))
                    .set(timgrouprelate::STATUS, Bytes::copy_from_slice(&[status]));
                batch.insert(self.relate, slot_of_key(&key), r);
            }
        }
    }

    /// Adds (or removes) both membership rows of `user` in the group.
    async fn stage_membership(
        &self,
        batch: &mut Batch,
        id: GroupId,
        user: UserId,
        add: bool,
    ) -> Result<(), EngineError> {
        for (owner, other) in [(id.party(), user), (user, id.party())] {
            if add {
                self.members.stage_add(batch, owner, other).await?;
            } else {
                self.members.stage_remove(batch, owner, other).await?;
            }
        }
        Ok(())
    }

    /// Removes `user` from the managers, when they are one.
    fn stage_demotion(&self, batch: &mut Batch, group: &Group, user: UserId) {
        if !group.is_manager(user) {
            return;
        }
        let managers = group.bean.managers.iter().flatten().filter(|m| UserId::parse(m) != Some(user)).cloned();
        let bean = TimRoomBean { managers: Some(managers.collect()), ..group.bean.clone() };
        batch.update(self.groups, group.row, vec![(timgroup::RBEAN, Some(body_bytes(&bean, Encoding::Compact)))]);
    }

    /// ADDROOM: joins an open group, or asks to join a private one. Blocked by the group: 4110;
    /// already a member: 4101; already asked: 4117. Joining lifts my own block of the group.
    pub async fn join(&self, me: UserId, id: GroupId) -> Result<Joined, EngineError> {
        let l = self.lock(id, me).await?;
        if l.status & 0xF0 == GROUP_BLOCKED {
            return Err(ErrorCode::Blocked.into());
        }
        if l.status == MEMBER {
            return Err(ErrorCode::HasExist.into());
        }
        // Asking again would only notify the admins again.
        if l.status == PENDING {
            return Err(ErrorCode::Repetitive.into());
        }
        let mut batch = Batch::new();
        self.blocks.stage_remove(&mut batch, me, id.party()).await?;
        let (joined, _user) = if l.group.private {
            self.stage_relation(&mut batch, l.key, l.row, PENDING);
            (Joined::Asked(l.group.admins()), None)
        } else {
            let guard = self.has_room(id, me).await?;
            self.stage_relation(&mut batch, l.key, l.row, MEMBER);
            self.stage_membership(&mut batch, id, me, true).await?;
            (Joined::Member, Some(guard))
        };
        self.store.write(batch).await?;
        Ok(joined)
    }

    /// PULLROOM: adds `user` (or approves their request). Into a private group only the
    /// founder or a manager may pull, into an open one only members (4105). A user who blocked
    /// the group, or whom the group blocked and the caller is no admin: 4110; already a member:
    /// 4101. `Ok(true)` when it approved a request.
    pub async fn pull(&self, me: UserId, id: GroupId, user: UserId) -> Result<bool, EngineError> {
        let l = self.lock(id, user).await?;
        let allowed = if l.group.private { l.group.is_admin(me) } else { self.is_member(id, me).await? };
        if !allowed {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status & 0x0F == USER_BLOCKED {
            return Err(ErrorCode::Blocked.into());
        }
        // Only an admin lifts the group's block of a user.
        if l.status & 0xF0 == GROUP_BLOCKED && !l.group.is_admin(me) {
            return Err(ErrorCode::Blocked.into());
        }
        if l.status == MEMBER {
            return Err(ErrorCode::HasExist.into());
        }
        let _user = self.has_room(id, user).await?;
        let mut batch = Batch::new();
        self.blocks.stage_remove(&mut batch, id.party(), user).await?;
        self.stage_relation(&mut batch, l.key, l.row, MEMBER);
        self.stage_membership(&mut batch, id, user, true).await?;
        self.store.write(batch).await?;
        Ok(l.status == PENDING)
    }

    /// NOPASSROOM: the founder or a manager turns a request down; no request: 4104.
    pub async fn reject(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let l = self.lock(id, user).await?;
        if !l.group.is_admin(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status != PENDING {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        let mut batch = Batch::new();
        self.stage_relation(&mut batch, l.key, l.row, 0);
        self.store.write(batch).await?;
        Ok(())
    }

    /// Whether `me` may remove `user` from the group (kick or block): the founder anyone but
    /// themself, a manager members who are not managers.
    fn may_remove(group: &Group, me: UserId, user: UserId) -> bool {
        let founder = group.founder();
        if founder == Some(user) || me == user {
            return false;
        }
        founder == Some(me) || (group.is_manager(me) && !group.is_manager(user))
    }

    /// KICKROOM: removes a member (a kicked manager is no longer one); not a member: 4104.
    pub async fn kick(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let l = self.lock(id, user).await?;
        if !Self::may_remove(&l.group, me, user) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status != MEMBER {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        self.take_out(&l, id, user, 0, None).await
    }

    /// Takes `user` out of the group (membership rows, manager role), leaving the relation
    /// byte `status` (0: no relation) and, when given, the block row `owner → other`.
    async fn take_out(
        &self,
        l: &Locked<'_>,
        id: GroupId,
        user: UserId,
        status: u8,
        block: Option<(UserId, UserId)>,
    ) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        self.stage_relation(&mut batch, l.key, l.row, status);
        self.stage_membership(&mut batch, id, user, false).await?;
        if let Some((owner, other)) = block {
            self.blocks.stage_add(&mut batch, owner, other).await?;
        }
        self.stage_demotion(&mut batch, &l.group, user);
        self.store.write(batch).await?;
        Ok(())
    }

    /// BLOCKROOMMEMBER: the group blocks `user` (removed if a member; may not join or be
    /// pulled in by a member until an admin pulls them).
    pub async fn block_member(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let l = self.lock(id, user).await?;
        if !Self::may_remove(&l.group, me, user) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let status = GROUP_BLOCKED | (l.status & USER_BLOCKED);
        self.take_out(&l, id, user, status, Some((id.party(), user))).await
    }

    /// LEAVEROOM: the founder cannot leave (4105); not a member: 4104.
    pub async fn leave(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        if l.group.founder() == Some(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status != MEMBER {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        self.take_out(&l, id, me, 0, None).await
    }

    /// BLOCKROOM: I block the group (leaving it); the founder cannot (4105).
    pub async fn block_group(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        if l.group.founder() == Some(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let status = (l.status & GROUP_BLOCKED) | USER_BLOCKED;
        self.take_out(&l, id, me, status, Some((me, id.party()))).await
    }

    /// CANCELROOM: the founder dissolves the group once they are its only member (else 4105).
    pub async fn cancel(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        if l.group.founder() != Some(me) || self.members.list(id.party()).await? != [me] {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let mut batch = Batch::new();
        batch.update(self.groups, l.group.row, vec![(timgroup::STATUS, Some(Bytes::copy_from_slice(&[CANCELLED])))]);
        self.stage_relation(&mut batch, l.key, l.row, 0);
        self.stage_membership(&mut batch, id, me, false).await?;
        self.store.write(batch).await?;
        Ok(())
    }

    /// USERROOM: my groups.
    pub async fn groups_of(&self, me: UserId) -> Result<Vec<GroupId>, EngineError> {
        Ok(self.members.list(me).await?.into_iter().map(GroupId::from_party).collect())
    }

    /// ROOMUSERS: the members, for a member (else 4104); unknown group: 4106.
    pub async fn members(&self, me: UserId, id: GroupId) -> Result<Vec<UserId>, EngineError> {
        self.get(id).await?.ok_or(ErrorCode::AccountIncorrect)?;
        if !self.is_member(id, me).await? {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        self.members.list(id.party()).await
    }

    /// The members of a group (at most [`pairs::MAX_LIST`]).
    pub async fn members_of(&self, id: GroupId) -> Result<Vec<UserId>, EngineError> {
        self.members.list(id.party()).await
    }

    /// MODIFYROOM: merges the profile fields `changes` sets (cover, topic, label, kind, extend,
    /// extra) for the founder or a manager; the managers list, members only (else 4104), for
    /// the founder only (4105).
    pub async fn modify(&self, me: UserId, id: GroupId, changes: TimRoomBean) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        let group = &l.group;
        if !group.is_admin(me) || (changes.managers.is_some() && group.founder() != Some(me)) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let old = group.bean.clone();
        if let Some(list) = &changes.managers {
            // Managers are members: a stranger cannot be made one.
            for node in list {
                let manager = UserId::parse(node).ok_or(ErrorCode::AccountIncorrect)?;
                if !self.is_member(id, manager).await? {
                    return Err(ErrorCode::ParamIncorrect.into());
                }
            }
        }
        let managers = changes.managers.or(old.managers);
        let bean = TimRoomBean {
            founder: old.founder,
            managers,
            cover: changes.cover.or(old.cover),
            topic: changes.topic.or(old.topic),
            label: changes.label.or(old.label),
            gtype: old.gtype,
            kind: changes.kind.or(old.kind),
            createtime: old.createtime,
            extend: changes.extend.or(old.extend),
            extra: changes.extra.or(old.extra),
        };
        let mut batch = Batch::new();
        batch.update(self.groups, group.row, vec![(timgroup::RBEAN, Some(body_bytes(&bean, Encoding::Compact)))]);
        self.store.write(batch).await?;
        Ok(())
    }

    /// BLOCKROOMLIST: the groups I blocked.
    pub async fn blocked_groups(&self, me: UserId) -> Result<Vec<GroupId>, EngineError> {
        Ok(self.blocks.list(me).await?.into_iter().map(GroupId::from_party).collect())
    }

    /// BLOCKROOMMEMBERLIST: the users the group blocked, for its founder or a manager (4105).
    pub async fn blocked_members(&self, me: UserId, id: GroupId) -> Result<Vec<UserId>, EngineError> {
        let group = self.get(id).await?.ok_or(ErrorCode::AccountIncorrect)?;
        if !group.is_admin(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        self.blocks.list(id.party()).await
    }
}
