//! Groups (TIMBUSINESS rtypes 2, 3, 8, 9, 11–17, 19, 20): the group row with its profile
//! (`TimRoomBean`: founder, managers, topic, …), each member's relation byte, membership rows in
//! both directions and block rows (tim-server.md §2.3.8, §3.3).
//!
//! A group holds at most `--max-group-members` members and a user is in at most
//! `--max-groups-per-user` groups (4105 past either). Changes to one group are serialized by a
//! striped lock on the group.
//!
//! The group row and its member and block rows live in the group's slot, a user's member and
//! block rows in the user's slot, and each group–user relation byte in the slot of that pair.
//! A change of a relation is three single-slot steps, as for friends ([`crate::services::rosters`]): the
//! relation row marked pending, both sides' rows derived from the relation byte alone (member
//! rows while a member, block rows while blocked, no manager role unless a member), then the
//! mark cleared or the row deleted. [`Groups::repair`] finishes changes cut short; the founder's
//! relation ends only by CANCELROOM, so a repair that finds it ended cancels the group. TIM's
//! gaps are closed:
//! only members may pull users into an open group, nobody kicks or blocks the founder, and a
//! manager cannot kick or block another manager.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, Row, RowId, Slot, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::proto::{ErrorCode, TimRoomBean};
use tim_shard::{Cluster, EngineAnswer};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::EngineError;
use crate::model::ident::{directed_pair_id, GroupId, UserId};
use crate::model::partition;
use crate::model::tables::{pair, timgroup, timgrouprelate};
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::history::now_ns;
use crate::services::pairs::PairTable;

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
/// The value of the `pending` column of a relation whose change is not finished.
const PENDING_CHANGE: &[u8] = &[1];
/// Most unfinished changes one [`Groups::repair`] finishes.
const REPAIR_BATCH: usize = 1000;

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
#[derive(Debug, Serialize, Deserialize)]
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

/// The operations on a group, run on the owner of the group's slot.
#[derive(Debug, Serialize, Deserialize)]
enum GroupOp {
    Create {
        id: GroupId,
        founder: UserId,
        topic: String,
        gtype: i8,
    },
    Join {
        me: UserId,
        id: GroupId,
    },
    Pull {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    Reject {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    Kick {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    BlockMember {
        me: UserId,
        id: GroupId,
        user: UserId,
    },
    Leave {
        me: UserId,
        id: GroupId,
    },
    BlockGroup {
        me: UserId,
        id: GroupId,
    },
    Cancel {
        me: UserId,
        id: GroupId,
    },
    /// The changes: a thrift-compact `TimRoomBean`.
    Modify {
        me: UserId,
        id: GroupId,
        changes: Bytes,
    },
}

impl SlotOp for GroupOp {
    fn service(&self) -> Service {
        Service::Groups
    }
}

impl Arrivals for Groups {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                GroupOp::Create { id, founder, topic, gtype } => {
                    seam::answer(self.create_here(id, founder, topic, gtype).await, "group create")
                }
                GroupOp::Join { me, id } => seam::answer(self.join_here(me, id).await, "group join"),
                GroupOp::Pull { me, id, user } => seam::answer(self.pull_here(me, id, user).await, "group pull"),
                GroupOp::Reject { me, id, user } => seam::answer(self.reject_here(me, id, user).await, "group reject"),
                GroupOp::Kick { me, id, user } => seam::answer(self.kick_here(me, id, user).await, "group kick"),
                GroupOp::BlockMember { me, id, user } => {
                    seam::answer(self.block_member_here(me, id, user).await, "group block member")
                }
                GroupOp::Leave { me, id } => seam::answer(self.leave_here(me, id).await, "group leave"),
                GroupOp::BlockGroup { me, id } => seam::answer(self.block_group_here(me, id).await, "group block"),
                GroupOp::Cancel { me, id } => seam::answer(self.cancel_here(me, id).await, "group cancel"),
                GroupOp::Modify { me, id, changes } => match decode_body(changes, Encoding::Compact) {
                    Ok(changes) => seam::answer(self.modify_here(me, id, changes).await, "group modify"),
                    Err(e) => Err(format!("undecodable group changes: {e}").into()),
                },
            }
        })
    }
}

pub struct Groups {
    limits: GroupLimits,
    data: Arc<Cluster>,
    groups: TableId,
    relate: TableId,
    members: Arc<PairTable>,
    blocks: PairTable,
    stripes: Vec<Mutex<()>>,
}

/// A group and its relation to one user, read under the group's lock.
struct Locked<'a> {
    _guard: MutexGuard<'a, ()>,
    group: Group,
    key: [u8; 16],
    row: Option<RowId>,
    status: u8,
}

impl Groups {
    pub fn new(data: Arc<Cluster>, limits: GroupLimits) -> Result<Self, StoreError> {
        let table = |name: &str| data.table(name).ok_or(StoreError::UnknownTable(0));
        Ok(Self {
            limits,
            groups: table(timgroup::DEF.name)?,
            relate: table(timgrouprelate::DEF.name)?,
            members: Arc::new(PairTable::capped(data.clone(), &pair::TIMMUCROSTER, Service::MemberPlaces)?),
            blocks: PairTable::new(data.clone(), &pair::TIMBLOCKROOM)?,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            data,
        })
    }

    #[allow(clippy::indexing_slicing)]
    fn stripe(&self, group: GroupId) -> &Mutex<()> {
        // In bounds: the index is taken modulo `STRIPES`, the length of `stripes`.
        &self.stripes[(u64::from_be_bytes(group.to_be_bytes()) % STRIPES as u64) as usize]
    }

    /// NEWROOM: a group founded by `founder`, who is its first member. Its id is drawn here;
    /// the group is made on the owner of its slot, which refuses an id already taken.
    pub async fn create(&self, founder: UserId, topic: String, gtype: i8) -> Result<GroupId, EngineError> {
        loop {
            let id = GroupId::random();
            let here = self.create_here(id, founder, topic.clone(), gtype);
            let call = GroupOp::Create { id, founder, topic: topic.clone(), gtype };
            if at_slot(&self.data, partition::group(id), here, call).await? {
                return Ok(id);
            }
        }
    }

    /// [`Groups::create`] with a drawn id, on the owner of its slot: `false` when the id is
    /// taken.
    async fn create_here(&self, id: GroupId, founder: UserId, topic: String, gtype: i8) -> Result<bool, EngineError> {
        let gtype = if gtype == PRIVATE { PRIVATE } else { OPEN };
        let created = now_ns();
        let bean = TimRoomBean {
            founder: Some(founder.node()),
            topic: Some(topic),
            gtype: Some(gtype),
            createtime: Some(created),
            ..TimRoomBean::default()
        };
        if self.get(id).await?.is_some() {
            return Ok(false);
        }
        let mut row = Row::new(timgroup::DEF.columns.len());
        row.set(timgroup::GTYPE, Bytes::copy_from_slice(&gtype.to_be_bytes()))
            .set(timgroup::UUID, Bytes::copy_from_slice(&id.to_be_bytes()))
            .set(timgroup::CREATETIME, Bytes::copy_from_slice(&created.to_be_bytes()))
            .set(timgroup::STATUS, Bytes::copy_from_slice(&[ACTIVE]))
            .set(timgroup::RBEAN, body_bytes(&bean, Encoding::Compact));
        let mut batch = Batch::new(partition::group(id));
        batch.insert(self.groups, row);
        match self.data.write(batch).await {
            // The group row first: a creation cut short leaves a group nobody knows the id
            // of, never a member of a group that does not exist.
            Ok(_) => {}
            // Drawn by a concurrent creation between the check and the write.
            Err(e) if e.is_duplicate() => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let _guard = self.stripe(id).lock().await;
        let group = self.get(id).await?.ok_or(EngineError::Internal("a created group is not found"))?;
        let key = directed_pair_id(id.party(), founder);
        self.admit(&group, id, founder, key, None).await?;
        Ok(true)
    }

    /// A group by id.
    pub async fn get(&self, id: GroupId) -> Result<Option<Group>, EngineError> {
        let table = self.groups;
        let found = self.data.find(table, partition::group(id), timgroup::UUID, &id.to_be_bytes()).await?;
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
        let found = self.data.find(relate, partition::group_relation(&key), timgrouprelate::UUID, &key).await?;
        Ok(match found {
            Some((row, r)) => (Some(row), r.get(timgrouprelate::STATUS).and_then(|v| v.first().copied()).unwrap_or(0)),
            None => (None, 0),
        })
    }

    /// The membership table (for places held by other nodes).
    pub fn member_table(&self) -> &Arc<PairTable> {
        &self.members
    }

    /// Whether `user` is a member of the group.
    pub async fn is_member(&self, id: GroupId, user: UserId) -> Result<bool, EngineError> {
        Ok(self.relation(directed_pair_id(id.party(), user)).await?.1 == MEMBER)
    }

    /// Makes `user` a member of the group (the group's lock held), if the group has room
    /// (counted here, where every change of the group runs) and the user does (a place held
    /// on the owner of the user's slot, whichever groups' nodes add the user meanwhile):
    /// else 4105.
    async fn admit(
        &self,
        group: &Group,
        id: GroupId,
        user: UserId,
        key: [u8; 16],
        row: Option<RowId>,
    ) -> Result<(), EngineError> {
        let max = self.limits.max_members;
        if self.members.count(id.party(), max).await? >= max {
            return Err(ErrorCode::PermissionDenied.into());
        }
        self.members.hold(user, id.party(), self.limits.max_groups_per_user).await?;
        let changed = self.change(group, id, user, key, row, MEMBER).await;
        self.members.release(user, id.party()).await;
        changed
    }

    /// Sets the relation byte of `user` in the group (the group's lock held): the relation
    /// row, marked pending; both sides' rows; then the mark cleared, or the row deleted at 0.
    async fn change(
        &self,
        group: &Group,
        id: GroupId,
        user: UserId,
        key: [u8; 16],
        row: Option<RowId>,
        status: u8,
    ) -> Result<(), EngineError> {
        let mut batch = Batch::new(partition::group_relation(&key));
        let value = Bytes::copy_from_slice(&[status]);
        match row {
            Some(row) => {
                let pending = Some(Bytes::from_static(PENDING_CHANGE));
                batch.update(
                    self.relate,
                    row,
                    vec![(timgrouprelate::STATUS, Some(value)), (timgrouprelate::PENDING, pending)],
                );
            }
            None => {
                let mut r = Row::new(timgrouprelate::DEF.columns.len());
                r.set(timgrouprelate::UUID, Bytes::copy_from_slice(&key))
                    .set(timgrouprelate::STATUS, value)
                    .set(timgrouprelate::PENDING, Bytes::from_static(PENDING_CHANGE));
                batch.insert(self.relate, r);
            }
        }
        let written = self.data.write(batch).await?;
        let row = match (row, written.first()) {
            (Some(row), _) | (None, Some(&row)) => row,
            (None, None) => return Err(EngineError::Internal("a relation write returned no id")),
        };
        self.derive(group, id, user, row, status).await
    }

    /// Steps two and three of a change: the group's and the user's rows from the relation
    /// byte, then the relation row unmarked (or deleted at 0). Idempotent.
    async fn derive(
        &self,
        group: &Group,
        id: GroupId,
        user: UserId,
        row: RowId,
        status: u8,
    ) -> Result<(), EngineError> {
        let member = status == MEMBER;
        let mut on_group = Batch::new(partition::group(id));
        self.sync_rows(&mut on_group, id.party(), user, member, status & 0xF0 == GROUP_BLOCKED).await?;
        if !member && group.is_manager(user) {
            let managers = group.bean.managers.iter().flatten().filter(|m| UserId::parse(m) != Some(user)).cloned();
            let bean = TimRoomBean { managers: Some(managers.collect()), ..group.bean.clone() };
            on_group.update(
                self.groups,
                group.row,
                vec![(timgroup::RBEAN, Some(body_bytes(&bean, Encoding::Compact)))],
            );
        }
        let mut on_user = Batch::new(partition::user(user));
        self.sync_rows(&mut on_user, user, id.party(), member, status & 0x0F == USER_BLOCKED).await?;
        for batch in [on_group, on_user] {
            if !batch.is_empty() {
                self.data.write(batch).await?;
            }
        }
        let mut finish = Batch::new(partition::group_relation(&directed_pair_id(id.party(), user)));
        if status == 0 {
            finish.delete(self.relate, row);
        } else {
            finish.update(self.relate, row, vec![(timgrouprelate::PENDING, None)]);
        }
        self.data.write(finish).await?;
        Ok(())
    }

    /// Stages `owner`'s member and block rows about `other` to match the relation.
    async fn sync_rows(
        &self,
        batch: &mut Batch,
        owner: UserId,
        other: UserId,
        member: bool,
        blocked: bool,
    ) -> Result<(), EngineError> {
        if member {
            self.members.stage_add(batch, owner, other).await?;
        } else {
            self.members.stage_remove(batch, owner, other).await?;
        }
        if blocked {
            self.blocks.stage_add(batch, owner, other).await
        } else {
            self.blocks.stage_remove(batch, owner, other).await
        }
    }

    /// Finishes the relation changes of `slot` that were cut short (rows still marked
    /// pending), under each group's lock; a founder's relation found ended completes the
    /// group's cancellation. Returns how many.
    pub async fn repair(&self, slot: Slot) -> Result<usize, EngineError> {
        let relate = self.relate;
        let pending =
            self.data.page(relate, slot, timgrouprelate::PENDING, PENDING_CHANGE, Cursor::OLDEST, REPAIR_BATCH).await?;
        let mut repaired = 0;
        for (_, row) in pending {
            let Some(key) = row.get(timgrouprelate::UUID).and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok()) else {
                continue;
            };
            let (party, user) = key.split_at(8);
            let id = GroupId::from_party(UserId::from_be_bytes(party.try_into().unwrap_or_default()));
            let user = UserId::from_be_bytes(user.try_into().unwrap_or_default());
            let _guard = self.stripe(id).lock().await;
            let Some(group) = self.get(id).await? else { continue };
            let (Some(row), status) = self.relation(key).await? else { continue };
            if status == 0 && group.founder() == Some(user) && !group.cancelled {
                self.mark_cancelled(&group, id).await?;
            }
            self.derive(&group, id, user, row, status).await?;
            repaired += 1;
        }
        Ok(repaired)
    }

    async fn mark_cancelled(&self, group: &Group, id: GroupId) -> Result<(), EngineError> {
        let mut batch = Batch::new(partition::group(id));
        batch.update(self.groups, group.row, vec![(timgroup::STATUS, Some(Bytes::copy_from_slice(&[CANCELLED])))]);
        self.data.write(batch).await?;
        Ok(())
    }

    /// ADDROOM: joins an open group, or asks to join a private one. Blocked by the group: 4110;
    /// already a member: 4101; already asked: 4117. Joining lifts my own block of the group.
    pub async fn join(&self, me: UserId, id: GroupId) -> Result<Joined, EngineError> {
        let here = self.join_here(me, id);
        at_slot(&self.data, partition::group(id), here, GroupOp::Join { me, id }).await
    }

    /// [`Groups::join`] on the owner of the group's slot.
    async fn join_here(&self, me: UserId, id: GroupId) -> Result<Joined, EngineError> {
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
        // Asking or joining lifts my own block of the group (the low nibble is replaced).
        if l.group.private {
            self.change(&l.group, id, me, l.key, l.row, PENDING).await?;
            Ok(Joined::Asked(l.group.admins()))
        } else {
            self.admit(&l.group, id, me, l.key, l.row).await?;
            Ok(Joined::Member)
        }
    }

    /// PULLROOM: adds `user` (or approves their request). Into a private group only the
    /// founder or a manager may pull, into an open one only members (4105). A user who blocked
    /// the group, or whom the group blocked and the caller is no admin: 4110; already a member:
    /// 4101. `Ok(true)` when it approved a request.
    pub async fn pull(&self, me: UserId, id: GroupId, user: UserId) -> Result<bool, EngineError> {
        let here = self.pull_here(me, id, user);
        at_slot(&self.data, partition::group(id), here, GroupOp::Pull { me, id, user }).await
    }

    /// [`Groups::pull`] on the owner of the group's slot.
    async fn pull_here(&self, me: UserId, id: GroupId, user: UserId) -> Result<bool, EngineError> {
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
        self.admit(&l.group, id, user, l.key, l.row).await?;
        Ok(l.status == PENDING)
    }

    /// NOPASSROOM: the founder or a manager turns a request down; no request: 4104.
    pub async fn reject(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let here = self.reject_here(me, id, user);
        at_slot(&self.data, partition::group(id), here, GroupOp::Reject { me, id, user }).await
    }

    /// [`Groups::reject`] on the owner of the group's slot.
    async fn reject_here(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let l = self.lock(id, user).await?;
        if !l.group.is_admin(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status != PENDING {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        self.change(&l.group, id, user, l.key, l.row, 0).await
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
        let here = self.kick_here(me, id, user);
        at_slot(&self.data, partition::group(id), here, GroupOp::Kick { me, id, user }).await
    }

    /// [`Groups::kick`] on the owner of the group's slot.
    async fn kick_here(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let l = self.lock(id, user).await?;
        if !Self::may_remove(&l.group, me, user) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status != MEMBER {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        self.change(&l.group, id, user, l.key, l.row, 0).await
    }

    /// BLOCKROOMMEMBER: the group blocks `user` (removed if a member; may not join or be
    /// pulled in by a member until an admin pulls them).
    pub async fn block_member(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let here = self.block_member_here(me, id, user);
        at_slot(&self.data, partition::group(id), here, GroupOp::BlockMember { me, id, user }).await
    }

    /// [`Groups::block_member`] on the owner of the group's slot.
    async fn block_member_here(&self, me: UserId, id: GroupId, user: UserId) -> Result<(), EngineError> {
        let l = self.lock(id, user).await?;
        if !Self::may_remove(&l.group, me, user) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let status = GROUP_BLOCKED | (l.status & USER_BLOCKED);
        self.change(&l.group, id, user, l.key, l.row, status).await
    }

    /// LEAVEROOM: the founder cannot leave (4105); not a member: 4104.
    pub async fn leave(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let here = self.leave_here(me, id);
        at_slot(&self.data, partition::group(id), here, GroupOp::Leave { me, id }).await
    }

    /// [`Groups::leave`] on the owner of the group's slot.
    async fn leave_here(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        if l.group.founder() == Some(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        if l.status != MEMBER {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        self.change(&l.group, id, me, l.key, l.row, 0).await
    }

    /// BLOCKROOM: I block the group (leaving it); the founder cannot (4105).
    pub async fn block_group(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let here = self.block_group_here(me, id);
        at_slot(&self.data, partition::group(id), here, GroupOp::BlockGroup { me, id }).await
    }

    /// [`Groups::block_group`] on the owner of the group's slot.
    async fn block_group_here(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        if l.group.founder() == Some(me) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let status = (l.status & GROUP_BLOCKED) | USER_BLOCKED;
        self.change(&l.group, id, me, l.key, l.row, status).await
    }

    /// CANCELROOM: the founder dissolves the group once they are its only member (else 4105).
    pub async fn cancel(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let here = self.cancel_here(me, id);
        at_slot(&self.data, partition::group(id), here, GroupOp::Cancel { me, id }).await
    }

    /// [`Groups::cancel`] on the owner of the group's slot.
    async fn cancel_here(&self, me: UserId, id: GroupId) -> Result<(), EngineError> {
        let l = self.lock(id, me).await?;
        if l.group.founder() != Some(me) || self.members.list(id.party()).await? != [me] {
            return Err(ErrorCode::PermissionDenied.into());
        }
        // The founder's relation ends first: a cancellation cut short is finished by a repair.
        let mut batch = Batch::new(partition::group_relation(&l.key));
        let Some(row) = l.row else { return Err(EngineError::Internal("a founder without a relation row")) };
        let pending = Some(Bytes::from_static(PENDING_CHANGE));
        batch.update(
            self.relate,
            row,
            vec![(timgrouprelate::STATUS, Some(Bytes::copy_from_slice(&[0]))), (timgrouprelate::PENDING, pending)],
        );
        self.data.write(batch).await?;
        self.mark_cancelled(&l.group, id).await?;
        self.derive(&l.group, id, me, row, 0).await
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

    /// The members of a group, each with its row of the group (a new one at every join).
    pub async fn memberships(&self, id: GroupId) -> Result<Vec<(UserId, RowId)>, EngineError> {
        self.members.list_rows(id.party()).await
    }

    /// `user`'s row of the group, while a member.
    pub async fn membership(&self, id: GroupId, user: UserId) -> Result<Option<RowId>, EngineError> {
        self.members.row(id.party(), user).await
    }

    /// MODIFYROOM: merges the profile fields `changes` sets (cover, topic, label, kind, extend,
    /// extra) for the founder or a manager; the managers list, members only (else 4104), for
    /// the founder only (4105).
    pub async fn modify(&self, me: UserId, id: GroupId, changes: TimRoomBean) -> Result<(), EngineError> {
        let call = GroupOp::Modify { me, id, changes: body_bytes(&changes, Encoding::Compact) };
        at_slot(&self.data, partition::group(id), self.modify_here(me, id, changes), call).await
    }

    /// [`Groups::modify`] on the owner of the group's slot.
    async fn modify_here(&self, me: UserId, id: GroupId, changes: TimRoomBean) -> Result<(), EngineError> {
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
        let mut batch = Batch::new(partition::group(id));
        batch.update(self.groups, group.row, vec![(timgroup::RBEAN, Some(body_bytes(&bean, Encoding::Compact)))]);
        self.data.write(batch).await?;
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
        self.blocked_by(id).await
    }

    /// The users group `id` blocked (for an operator: no member check).
    pub async fn blocked_by(&self, id: GroupId) -> Result<Vec<UserId>, EngineError> {
        self.blocks.list(id.party()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn groups() -> Groups {
        let data = crate::testing::standalone().await;
        Groups::new(data, GroupLimits { max_members: 10, max_groups_per_user: 10 }).unwrap()
    }

    /// A CANCELROOM cut short after its first step (the founder's relation ended, marked
    /// pending): the repair cancels the group and removes the founder's rows.
    #[tokio::test]
    async fn a_cancel_cut_short_is_finished_by_the_repair() {
        let groups = groups().await;
        let founder = GroupId::random().party();
        let id = groups.create(founder, "topic".into(), OPEN).await.unwrap();
        assert_eq!(groups.groups_of(founder).await.unwrap(), [id]);
        let key = directed_pair_id(id.party(), founder);
        let (Some(row), MEMBER) = groups.relation(key).await.unwrap() else { panic!("the founder is a member") };
        assert_eq!(groups.repair(partition::group_relation(&key)).await.unwrap(), 0, "a finished creation");

        let mut batch = Batch::new(partition::group_relation(&key));
        let ended = vec![
            (timgrouprelate::STATUS, Some(Bytes::from_static(&[0]))),
            (timgrouprelate::PENDING, Some(Bytes::from_static(PENDING_CHANGE))),
        ];
        batch.update(groups.relate, row, ended);
        groups.data.write(batch).await.unwrap();
        assert!(!groups.get(id).await.unwrap().unwrap().cancelled);

        assert_eq!(groups.repair(partition::group_relation(&key)).await.unwrap(), 1);
        assert!(groups.get(id).await.unwrap().unwrap().cancelled, "the cancellation is finished");
        assert!(groups.groups_of(founder).await.unwrap().is_empty());
        assert!(groups.members_of(id).await.unwrap().is_empty());
        assert_eq!(groups.relation(key).await.unwrap(), (None, 0), "the relation row is gone");
    }
}
