//! Account bans set by the admin API (TIM's `SysBlockUser`): a banned user's logins are
//! refused with 4105 until the ban ends. A ban is a row of `timban` in the user's slot, so it
//! holds on every node and outlives restarts (TIM kept it in a cache of the node that set it).

use std::sync::Arc;

use bytes::Bytes;
use tim_kv::{Batch, Row, TableId};
use tim_net::admin_auth::now;
use tim_net::proto::ErrorCode;
use tim_shard::Cluster;

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::model::partition;
use crate::model::tables::timban;

/// The longest ban (a hundred years: "for good").
pub const MAX_BAN_SECS: u64 = 100 * 365 * 24 * 3600;

pub struct Bans {
    data: Arc<Cluster>,
    table: TableId,
}

impl Bans {
    pub fn new(data: Arc<Cluster>) -> Result<Self, EngineError> {
        let table = data.table(timban::DEF.name).ok_or(EngineError::Internal("table timban not declared"))?;
        Ok(Self { data, table })
    }

    async fn row(&self, user: UserId) -> Result<Option<(tim_kv::RowId, Row)>, EngineError> {
        Ok(self.data.find(self.table, partition::user(user), timban::UUID, &user.to_be_bytes()).await?)
    }

    /// Bans `user` for `secs` seconds from now (replacing a ban it has); the end, in seconds
    /// since the epoch.
    pub async fn ban(&self, user: UserId, secs: u64) -> Result<u64, EngineError> {
        let until = now().saturating_add(secs.min(MAX_BAN_SECS));
        let until_bytes = Bytes::copy_from_slice(&until.to_be_bytes());
        loop {
            let mut batch = Batch::new(partition::user(user));
            match self.row(user).await? {
                Some((id, _)) => batch.update(self.table, id, vec![(timban::UNTIL, Some(until_bytes.clone()))]),
                None => {
                    let mut row = Row::new(timban::DEF.columns.len());
                    row.set(timban::UUID, Bytes::copy_from_slice(&user.to_be_bytes()))
                        .set(timban::UNTIL, until_bytes.clone());
                    batch.insert(self.table, row)
                }
            };
            match self.data.write(batch).await {
                Ok(_) => return Ok(until),
                // Another ban of the user was written meanwhile: update that one.
                Err(e) if e.is_duplicate() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Lifts a ban; whether there was one (ended or not).
    pub async fn lift(&self, user: UserId) -> Result<bool, EngineError> {
        let Some((id, _)) = self.row(user).await? else { return Ok(false) };
        let mut batch = Batch::new(partition::user(user));
        batch.delete(self.table, id);
        self.data.write(batch).await?;
        Ok(true)
    }

    /// When the user's ban ends (seconds since the epoch), if one holds now.
    pub async fn until(&self, user: UserId) -> Result<Option<u64>, EngineError> {
        let Some((_, row)) = self.row(user).await? else { return Ok(None) };
        let until = row.u64_at(timban::UNTIL);
        Ok(until.filter(|until| *until > now()))
    }

    /// Refuses a banned user's login with 4105, as TIM does.
    pub async fn check_login(&self, user: UserId) -> Result<(), EngineError> {
        match self.until(user).await? {
            Some(_) => Err(ErrorCode::PermissionDenied.into()),
            None => Ok(()),
        }
    }
}
