//! Admin accounts of the admin API and the bearer tokens they sign in with.
//!
//! Accounts are rows of `timadmin`, all in one slot so they can be listed, and reach every
//! node like any data. There is no default account (TIM's `admin`/`123` is a known hole):
//! the first is created with `tim admin create-user`, which proves the deployment secret.
//! Passwords are argon2id hashes. A token is signed, not stored: it names the account, its
//! role, an expiry and the account's epoch (random, set with the password), and holds only
//! while the account exists with that epoch, so deleting the account ends its tokens on
//! every node.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tim_kv::{Batch, Cursor, Row, Slot, TableId};
use tim_net::admin_auth::now;
use tim_net::hex;
use tim_shard::Cluster;

use crate::error::EngineError;
use crate::model::tables::timadmin;
use crate::services::accounts::Accounts;

/// Most admin accounts (one slot holds them all).
const MAX_ADMINS: usize = 1000;
/// Shortest password accepted.
const MIN_PASSWORD: usize = 8;
/// Longest token text looked at.
const MAX_TOKEN_LEN: usize = 1024;
/// Longest a token may live (a scraper's read token lives long; deleting its account ends it).
pub const MAX_TOKEN_SECS: u64 = 366 * 24 * 3600;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: lists, lookups, metrics.
    Read = 1,
    /// Read and change.
    Write = 2,
}

impl Role {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Read),
            2 => Some(Self::Write),
            _ => None,
        }
    }
}

/// An account as it is listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminInfo {
    pub name: String,
    pub role: Role,
    pub created_unix: u64,
}

/// A token handed out at sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub token: String,
    pub role: Role,
    pub expires_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    name: String,
    role: Role,
    epoch: u64,
    expires: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("an admin named {0:?} exists already")]
    Exists(String),
    #[error("admin names have 1 to 64 letters, digits, `.`, `_`, `-` or `@`")]
    BadName,
    #[error("admin passwords have at least {MIN_PASSWORD} characters")]
    BadPassword,
    #[error("there are {MAX_ADMINS} admins already")]
    Full,
    #[error("admin data failed")]
    Engine(#[from] EngineError),
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// The admin accounts, cluster-wide.
pub struct Admins {
    data: Arc<Cluster>,
    table: TableId,
    /// Signs tokens (derived from the deployment secret: every node checks every token).
    token_key: [u8; 32],
}

/// The slot of every admin account.
fn slot() -> Slot {
    tim_shard::slot_of(b"tim-rs admins")
}

impl Admins {
    pub fn new(data: Arc<Cluster>, token_key: [u8; 32]) -> Result<Self, EngineError> {
        let table = data.table(timadmin::DEF.name).ok_or(EngineError::Internal("table timadmin not declared"))?;
        Ok(Self { data, table, token_key })
    }

    async fn row(&self, name: &str) -> Result<Option<(tim_kv::RowId, Row)>, EngineError> {
        Ok(self.data.find(self.table, slot(), timadmin::NAME, name.as_bytes()).await?)
    }

    /// Creates an account.
    pub async fn create(&self, accounts: &Accounts, name: &str, password: &str, role: Role) -> Result<(), AdminError> {
        if !valid_name(name) {
            return Err(AdminError::BadName);
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(AdminError::BadPassword);
        }
        if self.row(name).await?.is_some() {
            return Err(AdminError::Exists(name.to_owned()));
        }
        if self.list().await?.len() >= MAX_ADMINS {
            return Err(AdminError::Full);
        }
        let hash = accounts.hash(password).await?;
        let mut row = Row::new(timadmin::DEF.columns.len());
        row.set(timadmin::NAME, Bytes::copy_from_slice(name.as_bytes()))
            .set(timadmin::PWD, Bytes::from(hash))
            .set(timadmin::ROLE, Bytes::copy_from_slice(&[role as u8]))
            .set(timadmin::CREATETIME, Bytes::copy_from_slice(&now().to_be_bytes()))
            .set(timadmin::EPOCH, Bytes::copy_from_slice(&rand::random::<u64>().to_be_bytes()))
            .set(timadmin::ALL, Bytes::from_static(&[1]));
        let mut batch = Batch::new(slot());
        batch.insert(self.table, row);
        match self.data.write(batch).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another call: the unique name decides.
            Err(e) if e.is_duplicate() => Err(AdminError::Exists(name.to_owned())),
            Err(e) => Err(EngineError::from(e).into()),
        }
    }

    /// Deletes an account (its tokens stop working); whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, AdminError> {
        let Some((id, _)) = self.row(name).await? else { return Ok(false) };
        let mut batch = Batch::new(slot());
        batch.delete(self.table, id);
        self.data.write(batch).await.map_err(EngineError::from)?;
        Ok(true)
    }

    /// Every account, oldest first.
    pub async fn list(&self) -> Result<Vec<AdminInfo>, AdminError> {
        let rows = self.data.page(self.table, slot(), timadmin::ALL, &[1], Cursor::OLDEST, MAX_ADMINS).await;
        Ok(rows.map_err(EngineError::from)?.iter().filter_map(|(_, row)| info(row)).collect())
    }

    /// Signs in: a token living `ttl` seconds (at most [`MAX_TOKEN_SECS`]), or `None` for a
    /// wrong name or password alike.
    pub async fn sign_in(
        &self,
        accounts: &Accounts,
        name: &str,
        password: &str,
        ttl: u64,
    ) -> Result<Option<Issued>, AdminError> {
        let Some((_, row)) = self.row(name).await? else {
            // As long as a wrong password takes, so the time does not tell which names exist.
            accounts.hash(password).await?;
            return Ok(None);
        };
        let (Some(info), Some(stored), Some(epoch)) = (info(&row), row.get(timadmin::PWD), row.u64_at(timadmin::EPOCH))
        else {
            return Ok(None);
        };
        if !accounts.check(password, String::from_utf8_lossy(stored).into_owned()).await? {
            return Ok(None);
        }
        let expires = now() + ttl.clamp(1, MAX_TOKEN_SECS);
        let claims = Claims { name: info.name, role: info.role, epoch, expires };
        let payload = postcard::to_stdvec(&claims).map_err(|_| EngineError::Internal("a token did not encode"))?;
        let token = format!("{}.{}", hex::encode(&payload), hex::encode(&self.tag(&payload)));
        Ok(Some(Issued { token, role: info.role, expires_unix: expires }))
    }

    /// The account and role a token stands for, if it is genuine, unexpired, and its account
    /// still exists with the password it was issued under.
    pub async fn check_token(&self, token: &str) -> Result<Option<(String, Role)>, AdminError> {
        let Some((payload, tag)) = token.split_once('.').filter(|_| token.len() <= MAX_TOKEN_LEN) else {
            return Ok(None);
        };
        let (Some(payload), Some(tag)) = (hex::decode(payload), hex::decode(tag)) else { return Ok(None) };
        if self.mac(&payload).is_none_or(|mac| mac.verify_slice(&tag).is_err()) {
            return Ok(None);
        }
        let Ok(claims) = postcard::from_bytes::<Claims>(&payload) else { return Ok(None) };
        if claims.expires < now() {
            return Ok(None);
        }
        let Some((_, row)) = self.row(&claims.name).await? else { return Ok(None) };
        let current = row.u64_at(timadmin::EPOCH);
        let role = info(&row).map(|i| i.role);
        Ok((current == Some(claims.epoch) && role == Some(claims.role)).then_some((claims.name, claims.role)))
    }

    /// The MAC of a token's payload (HMAC takes keys of any length: this never is `None`).
    fn mac(&self, payload: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.token_key).ok()?;
        mac.update(payload);
        Some(mac)
    }

    fn tag(&self, payload: &[u8]) -> Vec<u8> {
        self.mac(payload).map(|m| m.finalize().into_bytes().to_vec()).unwrap_or_default()
    }
}

fn info(row: &Row) -> Option<AdminInfo> {
    let name = String::from_utf8(row.get(timadmin::NAME)?.to_vec()).ok()?;
    let role = Role::from_byte(*row.get(timadmin::ROLE)?.first()?)?;
    let created_unix = row.u64_at(timadmin::CREATETIME).unwrap_or(0);
    Some(AdminInfo { name, role, created_unix })
}
