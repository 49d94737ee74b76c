//! Registration, password checks and tokens (tim-server.md §2.3.1–§2.3.2).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Row, RowId, Slot, StoreError, TableId};
use tim_net::codec::{body_bytes, decode_body, Encoding};
use tim_net::proto::{ErrorCode, TimUserBean};
use tim_shard::{Cluster, EngineAnswer};
use tokio::sync::{Mutex, Semaphore};

use crate::error::EngineError;
use crate::model::ident::{Ids, UserId};
use crate::model::partition;
use crate::model::tables::timuser;
use crate::seam::{self, at_slot, Arrivals, Service, SlotOp};
use crate::services::tokens::Tokens;

/// Id candidates tried per account before giving up (each further one is needed only after a
/// 56-bit hash collision).
const MAX_ATTEMPTS: u8 = 8;

pub struct Accounts {
    data: Arc<Cluster>,
    users: TableId,
    ids: Ids,
    argon2: Argon2<'static>,
    hash_permits: Semaphore,
    tokens: Tokens,
    /// Serializes profile changes (rare) so a read-merge-write cannot lose a concurrent one.
    profile_lock: Mutex<()>,
}

/// The operations on an account or a token, run on the owner of its slot.
#[derive(Debug, Serialize, Deserialize)]
enum AccountOp {
    /// The changes: a thrift-compact `TimUserBean`.
    ModifyProfile {
        user: UserId,
        changes: Bytes,
    },
    HoldToken {
        name_key: [u8; 32],
        token: String,
        user: UserId,
    },
    ConsumeToken {
        name_key: [u8; 32],
        token: String,
    },
}

impl SlotOp for AccountOp {
    fn service(&self) -> Service {
        Service::Accounts
    }
}

impl Arrivals for Accounts {
    fn at_slot(self: Arc<Self>, _slot: Slot, op: Bytes) -> EngineAnswer {
        Box::pin(async move {
            match seam::decode(&op)? {
                AccountOp::ModifyProfile { user, changes } => match decode_body(changes, Encoding::Compact) {
                    Ok(changes) => seam::answer(self.modify_profile_here(user, changes).await, "profile modify"),
                    Err(e) => Err(format!("undecodable profile: {e}").into()),
                },
                AccountOp::HoldToken { name_key, token, user } => {
                    seam::answer(Ok(self.hold_token_here(name_key, token, user)), "token")
                }
                AccountOp::ConsumeToken { name_key, token } => {
                    seam::answer(Ok(self.consume_token_here(name_key, token)), "token")
                }
            }
        })
    }
}

/// Where a login name stands.
enum Lookup {
    Found {
        user: UserId,
        pwd: String,
    },
    /// Not registered; `free` is the first id candidate nobody holds.
    Missing {
        free: Option<UserId>,
    },
}

impl Accounts {
    pub fn new(
        data: Arc<Cluster>,
        ids: Ids,
        argon2_params: Params,
        hash_concurrency: usize,
        tokens: Tokens,
    ) -> Result<Self, StoreError> {
        let users = data.table(timuser::DEF.name).ok_or(StoreError::UnknownTable(0))?;
        Ok(Self {
            data,
            users,
            ids,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params),
            hash_permits: Semaphore::new(hash_concurrency.max(1)),
            tokens,
            profile_lock: Mutex::new(()),
        })
    }

    /// Finds the account of a login name: up to `MAX_ATTEMPTS` reads, each in the slot of
    /// one id candidate.
    async fn lookup(&self, name: &str, domain: &str) -> Result<Lookup, EngineError> {
        let name_key = self.ids.name_key(name, domain);
        for attempt in 0..MAX_ATTEMPTS {
            let Some(user) = self.ids.user_id(name, domain, attempt) else { continue };
            let Some((_, row)) = self.row_of(user).await? else {
                return Ok(Lookup::Missing { free: Some(user) });
            };
            if row.get(timuser::NAMEKEY).map(|k| k.as_ref()) == Some(name_key.as_slice()) {
                let pwd = row.get(timuser::PWD).map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
                return Ok(Lookup::Found { user, pwd });
            }
        }
        Ok(Lookup::Missing { free: None })
    }

    /// Registers an account; its user id. An existing name gets 4101.
    pub async fn register(&self, name: &str, pwd: &str, domain: &str) -> Result<UserId, EngineError> {
        if name.is_empty() || pwd.is_empty() {
            return Err(ErrorCode::ParamIncorrect.into());
        }
        if let Lookup::Found { .. } = self.lookup(name, domain).await? {
            return Err(ErrorCode::HasExist.into());
        }
        let hash = self.hash(pwd).await?;
        let name_key = self.ids.name_key(name, domain);
        let created = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as u64;
        loop {
            // Another registration may have taken a candidate since the lookup: the unique
            // index decides, and the lookup then tells whether it was this very name.
            let free = match self.lookup(name, domain).await? {
                Lookup::Found { .. } => return Err(ErrorCode::HasExist.into()),
                Lookup::Missing { free: None } => {
                    return Err(EngineError::Internal("every id candidate of the name is taken"))
                }
                Lookup::Missing { free: Some(user) } => user,
            };
            let mut row = Row::new(timuser::DEF.columns.len());
            row.set(timuser::UUID, Bytes::copy_from_slice(&free.to_be_bytes()))
                .set(timuser::NAMEKEY, Bytes::copy_from_slice(&name_key))
                .set(timuser::PWD, Bytes::from(hash.clone()))
                .set(timuser::CREATETIME, Bytes::copy_from_slice(&created.to_be_bytes()));
            let mut batch = Batch::new(partition::user(free));
            batch.insert(self.users, row);
            match self.data.write(batch).await {
                Ok(_) => return Ok(free),
                Err(e) if e.is_duplicate() => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Checks a name and password: the user id, or 4105 (wrong name or password alike).
    pub async fn verify(&self, name: &str, pwd: &str, domain: &str) -> Result<UserId, EngineError> {
        if name.is_empty() || pwd.is_empty() {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let Lookup::Found { user, pwd: stored } = self.lookup(name, domain).await? else {
            return Err(ErrorCode::PermissionDenied.into());
        };
        if self.check(pwd, stored).await? {
            Ok(user)
        } else {
            Err(ErrorCode::PermissionDenied.into())
        }
    }

    /// Changes a user's password, after checking the old one when it is given (an operator
    /// resets it without): 4112 when the old password is wrong or the new one empty.
    pub async fn change_password(&self, user: UserId, old: Option<&str>, new: &str) -> Result<(), EngineError> {
        const FAILED: EngineError = EngineError::Refused(ErrorCode::ModifyAuthFailed);
        if new.is_empty() {
            return Err(FAILED);
        }
        let Some((row_id, row)) = self.row_of(user).await? else { return Err(FAILED) };
        let stored = row.get(timuser::PWD).map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
        if let Some(old) = old {
            if !self.check(old, stored).await? {
                return Err(FAILED);
            }
        }
        let hash = self.hash(new).await?;
        let mut batch = Batch::new(partition::user(user));
        batch.update(self.users, row_id, vec![(timuser::PWD, Some(Bytes::from(hash)))]);
        self.data.write(batch).await?;
        Ok(())
    }

    /// Whether `user` is a registered account.
    pub async fn exists(&self, user: UserId) -> Result<bool, EngineError> {
        Ok(self.row_of(user).await?.is_some())
    }

    /// A user's profile with its creation time; `None` for an unknown user.
    pub async fn profile(&self, user: UserId) -> Result<Option<TimUserBean>, EngineError> {
        let Some((id, row)) = self.row_of(user).await? else { return Ok(None) };
        let mut bean = match row.get(timuser::UBEAN) {
            Some(raw) => decode_body::<TimUserBean>(raw.clone(), Encoding::Compact)
                .map_err(|_| StoreError::Corrupt { table: timuser::DEF.name, id: id.0 })?,
            None => TimUserBean::default(),
        };
        bean.createtime = row.get(timuser::CREATETIME).and_then(|c| c.as_ref().try_into().ok()).map(i64::from_be_bytes);
        Ok(Some(bean))
    }

    /// Merges the fields `changes` sets into my profile (the creation time stays the server's).
    /// Changes of one user's profile are serialized, so two devices cannot lose each other's.
    pub async fn modify_profile(&self, user: UserId, changes: TimUserBean) -> Result<(), EngineError> {
        let call = AccountOp::ModifyProfile { user, changes: body_bytes(&changes, Encoding::Compact) };
        at_slot(&self.data, partition::user(user), self.modify_profile_here(user, changes), call).await
    }

    /// [`Accounts::modify_profile`] on the owner of the user's slot, where the lock is.
    async fn modify_profile_here(&self, user: UserId, changes: TimUserBean) -> Result<(), EngineError> {
        let _guard = self.profile_lock.lock().await;
        let (id, _) = self.row_of(user).await?.ok_or(ErrorCode::AccountIncorrect)?;
        let old = self.profile(user).await?.unwrap_or_default();
        let merged = TimUserBean {
            name: changes.name.or(old.name),
            nick_name: changes.nick_name.or(old.nick_name),
            brithday: changes.brithday.or(old.brithday),
            gender: changes.gender.or(old.gender),
            cover: changes.cover.or(old.cover),
            area: changes.area.or(old.area),
            createtime: None,
            photo_tid_album: changes.photo_tid_album.or(old.photo_tid_album),
            extend: changes.extend.or(old.extend),
            extra: changes.extra.or(old.extra),
        };
        let mut batch = Batch::new(partition::user(user));
        batch.update(self.users, id, vec![(timuser::UBEAN, Some(body_bytes(&merged, Encoding::Compact)))]);
        self.data.write(batch).await?;
        Ok(())
    }

    /// The account row of a user id.
    async fn row_of(&self, user: UserId) -> Result<Option<(RowId, Row)>, EngineError> {
        Ok(self.data.find(self.users, partition::user(user), timuser::UUID, &user.to_be_bytes()).await?)
    }

    /// The account of a login name, if it is registered.
    pub async fn user_of(&self, name: &str, domain: &str) -> Result<Option<UserId>, EngineError> {
        match self.lookup(name, domain).await? {
            Lookup::Found { user, .. } => Ok(Some(user)),
            Lookup::Missing { .. } => Ok(None),
        }
    }

    /// Issues a login token for a name: after a password check when `pwd` is given (bad
    /// credentials get 4102), else (an application backend that checked the user itself)
    /// for any registered name (else 4106).
    pub async fn issue_token(&self, name: &str, pwd: Option<&str>, domain: &str) -> Result<String, EngineError> {
        let user = match pwd {
            Some(pwd) => self.verify(name, pwd, domain).await.map_err(|e| match e {
                EngineError::Refused(_) => EngineError::Refused(ErrorCode::NoPass),
                other => other,
            })?,
            None => self.user_of(name, domain).await?.ok_or(ErrorCode::AccountIncorrect)?,
        };
        let name_key = self.ids.name_key(name, domain);
        let token = Tokens::draw();
        let here = async { Ok(self.hold_token_here(name_key, token.clone(), user)) };
        let call = AccountOp::HoldToken { name_key, token: token.clone(), user };
        if at_slot(&self.data, partition::token(&token), here, call).await? {
            Ok(token)
        } else {
            Err(EngineError::Refused(ErrorCode::HeavyLoad))
        }
    }

    /// Holds a token on the owner of its slot; `false` when the node holds its cap of them.
    fn hold_token_here(&self, name_key: [u8; 32], token: String, user: UserId) -> bool {
        self.tokens.hold(&name_key, &token, user)
    }

    /// A token's user, once, on the owner of the token's slot.
    fn consume_token_here(&self, name_key: [u8; 32], token: String) -> Option<UserId> {
        self.tokens.consume(&name_key, &token)
    }

    /// Consumes a token issued for this name and domain; 4115 if it is not one.
    pub async fn consume_token(&self, token: &str, name: &str, domain: &str) -> Result<UserId, EngineError> {
        let name_key = self.ids.name_key(name, domain);
        let here = async { Ok(self.consume_token_here(name_key, token.to_owned())) };
        let call = AccountOp::ConsumeToken { name_key, token: token.to_owned() };
        at_slot(&self.data, partition::token(token), here, call).await?.ok_or(EngineError::Refused(ErrorCode::Token))
    }

    /// An argon2id hash of a password (on the hashing pool).
    pub async fn hash(&self, pwd: &str) -> Result<String, EngineError> {
        let pwd = pwd.to_owned();
        self.on_hash_pool(move |argon2| {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2
                .hash_password(pwd.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| EngineError::PasswordHash(e.to_string()))
        })
        .await
    }

    /// Whether a password matches its stored argon2id hash.
    pub async fn check(&self, pwd: &str, stored: String) -> Result<bool, EngineError> {
        let pwd = pwd.to_owned();
        self.on_hash_pool(move |argon2| {
            let parsed = PasswordHash::new(&stored).map_err(|e| EngineError::PasswordHash(e.to_string()))?;
            Ok(argon2.verify_password(pwd.as_bytes(), &parsed).is_ok())
        })
        .await
    }

    /// Runs password work on the blocking pool, at most `hash_concurrency` at once (each
    /// holds argon2's memory cost).
    async fn on_hash_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let _permit =
            self.hash_permits.acquire().await.map_err(|_| EngineError::PasswordHash("shutting down".into()))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || work(&argon2)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ident::IdScheme;
    use std::time::Duration;

    async fn accounts() -> Accounts {
        let ids = Ids::new(IdScheme::Keyed, [5; 32], String::new());
        let params = Params::new(64, 1, 1, None).unwrap();
        let data = crate::testing::standalone().await;
        Accounts::new(data, ids, params, 1, Tokens::new(Duration::from_secs(60), 10)).unwrap()
    }

    /// An id already held by another name is a collision: the new account takes the next
    /// candidate, and neither account is touched by the other.
    #[tokio::test]
    async fn id_collision_is_detected_never_merged() {
        let accounts = accounts().await;
        let first = accounts.ids.user_id("bob", "d", 0).unwrap();
        let mut squatter = Row::new(timuser::DEF.columns.len());
        squatter
            .set(timuser::UUID, Bytes::copy_from_slice(&first.to_be_bytes()))
            .set(timuser::NAMEKEY, Bytes::copy_from_slice(&accounts.ids.name_key("someone-else", "d")))
            .set(timuser::PWD, Bytes::from_static(b"not-a-hash"));
        let mut batch = Batch::new(partition::user(first));
        batch.insert(accounts.users, squatter);
        accounts.data.write(batch).await.unwrap();

        let bob = accounts.register("bob", "pw", "d").await.unwrap();
        assert_ne!(bob, first, "the held id is not shared");
        assert_eq!(Some(bob), accounts.ids.user_id("bob", "d", 1));
        assert_eq!(accounts.verify("bob", "pw", "d").await.unwrap(), bob);
        assert!(matches!(accounts.register("bob", "pw2", "d").await, Err(EngineError::Refused(ErrorCode::HasExist))));
        assert!(matches!(
            accounts.verify("bob", "wrong", "d").await,
            Err(EngineError::Refused(ErrorCode::PermissionDenied))
        ));
    }

    #[tokio::test]
    async fn concurrent_registrations_of_one_name_make_one_account() {
        let accounts = Arc::new(accounts().await);
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let accounts = accounts.clone();
                tokio::spawn(async move { accounts.register("carol", "pw", "d").await })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(EngineError::Refused(ErrorCode::HasExist)) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 1);
    }
}
