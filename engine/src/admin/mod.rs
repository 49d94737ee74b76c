//! The admin listener (`--admin-listen`, loopback by default): HTTP for operator tools.
//!
//! A request proves the deployment secret (`tim_net::admin_auth`: operator tools), or
//! carries an admin's bearer token from `POST /v1/login` ([`crate::admin::admins`]), whose role
//! decides what it may do. It serves:
//! - `POST /v1/login`: an admin's name and password for a token (no proof needed);
//! - `GET /v1/admins` (read), `POST /v1/admins` and `DELETE /v1/admins/{name}` (write);
//! - `GET /metrics` (read): the node's figures in Prometheus' text format;
//! - `GET /v1/info` (read): what the cluster is (JSON), so a tool can check that data fits;
//! - `GET /v1/export`, `POST /v1/import` (secret): all data out and in ([`transfer`]);
//! - the operations of TIM's server API for an application's backend ([`users`], [`ops`],
//!   [`reads`]), described by `GET /v1/openapi.json`;
//! - the web console at `/` ([`files`]).
//!
//! Any node answers for the whole cluster: it routes each slot to its owner.

// The routes answer `Err(response)` early with `?`; a response is large, and an error here is
// answered once per request, so boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub mod admins;
mod files;
#[allow(clippy::result_large_err)]
mod ops;
#[allow(clippy::result_large_err)]
mod reads;
mod transfer;
#[allow(clippy::result_large_err)]
mod users;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tim_net::admin_auth;
use tim_net::codec::{body_bytes, decode_body, Encoding, TimStruct};
use tim_net::proto::ErrorCode;
use tim_net::report::ErrorChain;
use tokio::net::TcpListener;
use tracing::{info, warn};
use wire::{Source, TableSchema};

use crate::admin::admins::{AdminError, Admins, Role};
use crate::error::EngineError;
use crate::model::ident::{GroupId, UserId};
use crate::model::tables;
use crate::server::Server;

/// Most entries of one page of a list (online users, history, offline entries).
pub const MAX_PAGE: usize = 1000;
/// Most users one request names.
const MAX_USERS: usize = 10_000;

/// What the admin listener needs beyond the server.
pub struct Admin {
    pub server: Arc<Server>,
    /// The key requests prove the deployment secret with.
    pub key: [u8; 32],
    /// Digest of the deployment secret (see [`Source::fingerprint`]).
    pub fingerprint: String,
    pub admins: Admins,
    /// Secret proofs seen lately: each is accepted once.
    pub proofs: admin_auth::Seen,
}

/// Who sent a request.
#[derive(Debug, Clone)]
enum Caller {
    /// A tool that proved the deployment secret: may do anything.
    Secret,
    Admin {
        name: String,
        role: Role,
    },
    Nobody,
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy)]
enum Need {
    Read,
    Write,
    Secret,
}

impl Caller {
    /// Who it is, for the log.
    fn who(&self) -> &str {
        match self {
            Self::Secret => "a holder of the deployment secret",
            Self::Admin { name, .. } => name,
            Self::Nobody => "nobody",
        }
    }

    /// `Err` with the answer for a caller who may not.
    #[allow(clippy::result_large_err)]
    fn may(&self, need: Need) -> Result<(), Response> {
        let allowed = match (self, need) {
            (Self::Secret, _) => true,
            (Self::Admin { role, .. }, Need::Read) => *role >= Role::Read,
            (Self::Admin { role, .. }, Need::Write) => *role >= Role::Write,
            (Self::Admin { .. }, Need::Secret) | (Self::Nobody, _) => false,
        };
        match (allowed, self) {
            (true, _) => Ok(()),
            (false, Self::Nobody) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "sign in (POST /v1/login, then Authorization: Bearer <token>), or prove the deployment secret \
                 (Authorization: Tim-Secret <time>.<nonce>.<HMAC>, as tim export/import do)"
                    .into(),
            )),
            (false, _) => {
                Err(refuse(StatusCode::FORBIDDEN, format!("this needs {need:?} rights; the caller is {self:?}")))
            }
        }
    }
}

/// The caller of a route, allowed `need` (else 401 or 403).
#[allow(clippy::result_large_err)]
fn allowed(parts: &Parts, need: Need) -> Result<Caller, Response> {
    let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller::Nobody);
    caller.may(need)?;
    Ok(caller)
}

/// A caller with read rights: routes that read take it first, so a caller without them
/// learns nothing, not even whether a user exists.
struct Reader;

/// A caller with write rights, kept for the log.
struct Writer(Caller);

impl<S: Sync> FromRequestParts<S> for Reader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        allowed(parts, Need::Read).map(|_| Self)
    }
}

/// A tool that proved the deployment secret (export and import).
struct SecretHolder;

impl<S: Sync> FromRequestParts<S> for SecretHolder {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        allowed(parts, Need::Secret).map(|_| Self)
    }
}

impl<S: Sync> FromRequestParts<S> for Writer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        allowed(parts, Need::Write).map(Self)
    }
}

/// The registered user a route's `{node}` names (else 400 or 404). Routes take it after the
/// caller's rights.
struct Named(UserId);

impl FromRequestParts<Arc<Admin>> for Named {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, admin: &Arc<Admin>) -> Result<Self, Response> {
        let Path(params) = Path::<BTreeMap<String, String>>::from_request_parts(parts, admin)
            .await
            .map_err(IntoResponse::into_response)?;
        let node = params.get("node").ok_or_else(|| refuse(StatusCode::NOT_FOUND, "no user in the path".into()))?;
        existing_user(&admin.server, node).await.map(Self)
    }
}

/// Serves the admin listener until the node shuts down.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = admin.server.shutdown.clone();
    let app = Router::new()
        .route("/v1/login", post(login))
        .route("/v1/admins", get(list_admins).post(create_admin))
        .route("/v1/admins/{name}", delete(delete_admin))
        .route("/v1/info", get(info))
        .route("/metrics", get(metrics))
        .merge(transfer::routes())
        .merge(users::routes())
        .merge(ops::routes())
        .merge(reads::routes())
        .merge(files::routes())
        .layer(middleware::from_fn_with_state(admin.clone(), authenticate))
        .with_state(admin);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Tells who sent a request (a secret proof covers the body too, read here up to the
/// largest body any route takes); the routes decide what the caller may do.
async fn authenticate(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let proof = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (caller, body) = if let Some(token) = proof.strip_prefix("Bearer ") {
        match admin.admins.check_token(token.trim()).await {
            Ok(Some((name, role))) => (Caller::Admin { name, role }, body),
            Ok(None) => (Caller::Nobody, body),
            Err(e) => return failed(&e),
        }
    } else if proof.starts_with(admin_auth::SCHEME) {
        // The proof covers the body: read it (up to the largest any route takes) first.
        let Ok(bytes) = axum::body::to_bytes(body, wire::MAX_IMPORT_BODY).await else {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("bodies have at most {} bytes", wire::MAX_IMPORT_BODY),
            );
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let caller = match admin.proofs.verify(&admin.key, parts.method.as_str(), path, &bytes, &proof) {
            true => Caller::Secret,
            false => Caller::Nobody,
        };
        (caller, Body::from(bytes))
    } else {
        (Caller::Nobody, body)
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// The answer to an admin operation that failed.
fn failed(e: &AdminError) -> Response {
    let status = match e {
        AdminError::Exists(_) => StatusCode::CONFLICT,
        AdminError::BadName | AdminError::BadPassword | AdminError::Full => StatusCode::BAD_REQUEST,
        AdminError::Engine(_) => {
            warn!(error = %ErrorChain(e), "admin operation failed");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    refuse(status, ErrorChain(e).to_string())
}

/// A JSON body, or the answer that says why it is not one.
#[allow(clippy::result_large_err)]
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("the body does not decode: {e}")))
}

#[derive(serde::Deserialize)]
struct SignIn {
    name: String,
    password: String,
    /// Seconds the token lives (default one hour).
    ttl_secs: Option<u64>,
}

async fn login(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let request: SignIn = match parse(&body) {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let ttl = request.ttl_secs.unwrap_or(3600);
    match admin.admins.sign_in(&admin.server.accounts, &request.name, &request.password, ttl).await {
        Ok(Some(issued)) => {
            info!(admin = %request.name, "admin signed in");
            json(&issued)
        }
        Ok(None) => {
            info!(admin = %request.name, "admin sign-in refused");
            refuse(StatusCode::UNAUTHORIZED, "wrong name or password".into())
        }
        Err(e) => failed(&e),
    }
}

async fn list_admins(State(admin): State<Arc<Admin>>, _: Reader) -> Response {
    match admin.admins.list().await {
        Ok(list) => json(&list),
        Err(e) => failed(&e),
    }
}

#[derive(serde::Deserialize)]
struct NewAdmin {
    name: String,
    password: String,
    role: Role,
}

async fn create_admin(State(admin): State<Arc<Admin>>, Writer(caller): Writer, body: Bytes) -> Response {
    let new: NewAdmin = match parse(&body) {
        Ok(new) => new,
        Err(answer) => return answer,
    };
    match admin.admins.create(&admin.server.accounts, &new.name, &new.password, new.role).await {
        Ok(()) => {
            info!(admin = %new.name, role = ?new.role, by = caller.who(), "admin created");
            (StatusCode::CREATED, "created").into_response()
        }
        Err(e) => failed(&e),
    }
}

async fn delete_admin(State(admin): State<Arc<Admin>>, Writer(caller): Writer, Path(name): Path<String>) -> Response {
    match admin.admins.delete(&name).await {
        Ok(true) => {
            info!(admin = %name, by = caller.who(), "admin deleted");
            (StatusCode::OK, "deleted").into_response()
        }
        Ok(false) => refuse(StatusCode::NOT_FOUND, format!("no admin named {name:?}")),
        Err(e) => failed(&e),
    }
}

impl Admin {
    fn source(&self) -> Source {
        let server = &self.server;
        let tables = tables::ALL
            .iter()
            .filter_map(|def| {
                let id = server.data.table(def.name)?;
                Some(TableSchema {
                    id: id.0,
                    name: def.name.to_owned(),
                    columns: def.columns.iter().map(|c| c.name.to_owned()).collect(),
                    sealed: def.columns.iter().map(|c| c.sealed).collect(),
                })
            })
            .collect();
        Source {
            cluster: server.cfg.cluster_id.clone(),
            fingerprint: self.fingerprint.clone(),
            ids: server.cfg.node_ids.name().to_owned(),
            slots: tim_shard::SLOTS,
            tables,
            node: server.data.node().0,
            members: server.data.placement().members().iter().map(|m| m.id.0).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// A JSON answer.
fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("the answer did not encode: {e}")),
    }
}

async fn metrics(State(admin): State<Arc<Admin>>, _: Reader) -> Response {
    let server = &admin.server;
    let gauges = crate::metrics::Gauges {
        sessions: server.sessions.online() as u64,
        offline_queued: server.offline.queued.load(std::sync::atomic::Ordering::Relaxed),
        data: &server.data,
    };
    let text = crate::metrics::render(&server.metrics, gauges).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn info(State(admin): State<Arc<Admin>>, _: Reader) -> Response {
    json(&admin.source())
}

/// An error answer: `{"error": why, "code": TIM's code or null}`.
fn refuse(status: StatusCode, why: String) -> Response {
    refuse_with(status, why, None)
}

fn refuse_with(status: StatusCode, why: String, code: Option<ErrorCode>) -> Response {
    let body = serde_json::json!({ "error": why, "code": code.map(|c| c as i32) });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The answer to an engine operation that failed: a refusal with its TIM code (the status
/// says what kind), data out of reach (503, worth a retry), or an internal fault (500, logged
/// with its causes).
fn engine_failed(e: &EngineError, op: &'static str) -> Response {
    let code = e.answer(op);
    let status = match e {
        EngineError::Refused(code) => match code {
            ErrorCode::PermissionDenied | ErrorCode::Blocked | ErrorCode::NoPass => StatusCode::FORBIDDEN,
            ErrorCode::AccountIncorrect | ErrorCode::NotExist | ErrorCode::Cancelled => StatusCode::NOT_FOUND,
            ErrorCode::HasExist | ErrorCode::Repetitive => StatusCode::CONFLICT,
            ErrorCode::HeavyLoad | ErrorCode::BlockingOperation => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::FreqOutOfLimit => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Undefined | ErrorCode::Database => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        },
        EngineError::Route(r) if r.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let why = match e {
        EngineError::Refused(code) => format!("refused: {} ({})", code.info(), *code as i32),
        _ => ErrorChain(e).to_string(),
    };
    refuse_with(status, why, Some(code))
}

/// A user named by a path or body: a well-formed node (else 400).
#[allow(clippy::result_large_err)]
fn user_node(node: &str) -> Result<UserId, Response> {
    UserId::parse(node).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("{node:?} is not a user node")))
}

/// A group named by a path or body: a well-formed node (else 400).
#[allow(clippy::result_large_err)]
fn group_node(node: &str) -> Result<GroupId, Response> {
    GroupId::parse(node).ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("{node:?} is not a group node")))
}

/// A registered user (else 404).
async fn existing_user(server: &Server, node: &str) -> Result<UserId, Response> {
    let user = user_node(node)?;
    match server.accounts.exists(user).await {
        Ok(true) => Ok(user),
        Ok(false) => {
            Err(refuse_with(StatusCode::NOT_FOUND, format!("no user {node}"), Some(ErrorCode::AccountIncorrect)))
        }
        Err(e) => Err(engine_failed(&e, "admin")),
    }
}

/// The registered users among the nodes a request names (at most [`MAX_USERS`], each
/// well-formed), each once, and the nodes that are no user.
async fn registered(server: &Server, nodes: &[String]) -> Result<(Vec<UserId>, Vec<String>), Response> {
    if nodes.len() > MAX_USERS {
        return Err(refuse(StatusCode::BAD_REQUEST, format!("at most {MAX_USERS} users per request")));
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    let mut named = std::collections::HashSet::new();
    for node in nodes {
        let user = user_node(node)?;
        if !named.insert(user) {
            continue;
        }
        match server.accounts.exists(user).await {
            Ok(true) => known.push(user),
            Ok(false) => unknown.push(user.node()),
            Err(e) => return Err(engine_failed(&e, "admin")),
        }
    }
    Ok((known, unknown))
}

/// A TIM struct as JSON, in TIM's JSON client encoding.
fn tim_json<T: TimStruct>(value: &T) -> serde_json::Value {
    serde_json::from_slice(&body_bytes(value, Encoding::Json)).unwrap_or(serde_json::Value::Null)
}

/// A TIM struct from JSON in TIM's JSON client encoding (else 400).
#[allow(clippy::result_large_err)]
fn from_tim_json<T: TimStruct>(value: &serde_json::Value) -> Result<T, Response> {
    decode_body(Bytes::from(value.to_string()), Encoding::Json).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("not a {}: {e}", std::any::type_name::<T>().rsplit("::").next().unwrap_or("TIM struct")),
        )
    })
}
