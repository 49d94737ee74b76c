//! The admin listener (`--admin-listen`, loopback by default): HTTP for operator tools.
//!
//! Every request proves the deployment secret (`tim_tools::admin_auth`). It serves:
//! - `GET /v1/info`: what the cluster is (JSON), so a tool can check that data fits it;
//! - `GET /v1/export`: every slot's rows, each slot read as one snapshot on its owner,
//!   streamed as frames (`tim_tools::dump::wire`);
//! - `POST /v1/import`: rows written back on their slots' owners.
//!
//! Any node answers for the whole cluster: it routes each slot to its owner.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tim_kv::{ExportedRow, Slot, TableId};
use tim_net::report::ErrorChain;
use tim_tools::admin_auth;
use tim_tools::dump::wire::{self, ExportFrame, ImportOutcome, ImportRequest, Skipped, Source, TableSchema};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::server::Server;
use crate::tables;

/// Slots read at once by an export (each holds about two parts on its owner).
const EXPORT_SLOTS_AT_ONCE: usize = 4;
/// Slots written at once by one import request.
const IMPORT_SLOTS_AT_ONCE: usize = 8;
/// Frames an export keeps queued for a slow reader before its slots wait.
const EXPORT_QUEUE: usize = 8;

/// What the admin listener needs beyond the server.
pub struct Admin {
    pub server: Arc<Server>,
    /// The key requests prove the deployment secret with.
    pub key: [u8; 32],
    /// Digest of the deployment secret (see [`Source::fingerprint`]).
    pub fingerprint: String,
}

/// Serves the admin listener until the node shuts down.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = admin.server.shutdown.clone();
    let app = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/export", get(export))
        .route("/v1/import", post(import).layer(DefaultBodyLimit::max(wire::MAX_IMPORT_BODY)))
        .layer(middleware::from_fn_with_state(admin.clone(), authenticate))
        .with_state(admin);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Lets a request through when it proves the deployment secret (over its body too, read
/// here up to the largest body any route takes).
async fn authenticate(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, wire::MAX_IMPORT_BODY).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("bodies have at most {} bytes", wire::MAX_IMPORT_BODY));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let proof = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !admin_auth::verify(&admin.key, parts.method.as_str(), path, &body, proof) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "prove the deployment secret: Authorization: Tim-Secret <time>.<HMAC> (tim export/import do)".into(),
        );
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
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

async fn info(State(admin): State<Arc<Admin>>) -> Response {
    json(&admin.source())
}

async fn export(State(admin): State<Arc<Admin>>) -> Response {
    let (tx, rx) = mpsc::channel::<ExportFrame>(EXPORT_QUEUE);
    info!("export started");
    admin.server.tasks.spawn(run_export(admin.clone(), tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let frame = rx.recv().await?;
        let bytes = wire::frame(&frame).unwrap_or_else(|e| {
            warn!(error = %e, "an export frame did not encode");
            wire::frame(&ExportFrame::Failed(format!("a frame did not encode: {e}"))).unwrap_or_default()
        });
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), rx))
    });
    ([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(body)).into_response()
}

/// Reads every slot into `tx`: `Begin`, rows and `SlotDone` per slot, then `End`, or
/// `Failed` at the first slot that cannot be read. Stops when the reader goes away.
async fn run_export(admin: Arc<Admin>, tx: mpsc::Sender<ExportFrame>) {
    if tx.send(ExportFrame::Begin(admin.source())).await.is_err() {
        return;
    }
    let data = admin.server.data.clone();
    let mut slots = futures_util::stream::iter(0..tim_shard::SLOTS)
        .map(|slot| {
            let (data, tx) = (data.clone(), tx.clone());
            async move {
                let rows = data.export_slot(Slot(slot), &tx).await?;
                let _ = tx.send(ExportFrame::SlotDone { slot, rows }).await;
                Ok::<_, tim_shard::RouteError>(rows)
            }
        })
        .buffer_unordered(EXPORT_SLOTS_AT_ONCE);
    let (mut done, mut rows) = (0u32, 0u64);
    let shutdown = admin.server.shutdown.clone();
    loop {
        let next = tokio::select! {
            next = slots.next() => next,
            () = shutdown.cancelled() => {
                let _ = tx.send(ExportFrame::Failed("the node is shutting down".into())).await;
                return;
            }
        };
        let Some(result) = next else { break };
        match result {
            Ok(n) => {
                done += 1;
                rows += n;
            }
            Err(e) => {
                if tx.is_closed() {
                    info!(slots = done, "export abandoned by its reader");
                } else {
                    warn!(error = %ErrorChain(&e), "export failed");
                    let why = ErrorChain(&e).to_string();
                    let _ = tx.send(ExportFrame::Failed(why)).await;
                }
                return;
            }
        }
    }
    info!(slots = done, rows, "export finished");
    let _ = tx.send(ExportFrame::End { slots: done, rows }).await;
}

fn refuse(status: StatusCode, why: String) -> Response {
    (status, why).into_response()
}

async fn import(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let request: ImportRequest = match postcard::from_bytes(&body) {
        Ok(request) => request,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the import request does not decode: {e}")),
    };
    let here = admin.source();
    if request.fingerprint != here.fingerprint || request.ids != here.ids {
        return refuse(
            StatusCode::CONFLICT,
            format!(
                "the rows come from a deployment with another secret or id scheme (fingerprint {} {} here, {} {} in the rows)",
                here.fingerprint, here.ids, request.fingerprint, request.ids
            ),
        );
    }
    // The file's table ids → this node's, by name.
    let names: BTreeMap<u32, String> = request.tables.into_iter().collect();
    let mut outcome = ImportOutcome::default();
    let mut by_slot: BTreeMap<u16, Vec<ExportedRow>> = BTreeMap::new();
    for mut row in request.rows {
        let name = names.get(&row.table.0).cloned().unwrap_or_else(|| format!("table {}", row.table.0));
        match admin.server.data.table(&name) {
            Some(local) => {
                row.table = local;
                by_slot.entry(row.id.slot().0).or_default().push(row);
            }
            None => outcome.skipped.push(Skipped {
                table: name,
                id: row.id.0,
                reason: "the table does not exist here".into(),
            }),
        }
    }
    let server = admin.server.clone();
    let mut restores = futures_util::stream::iter(by_slot)
        .map(|(slot, rows)| {
            let server = server.clone();
            async move { server.restore(Slot(slot), rows).await }
        })
        .buffer_unordered(IMPORT_SLOTS_AT_ONCE);
    let name_of = |table: u32| tables::ALL.iter().find(|d| admin.server.data.table(d.name) == Some(TableId(table)));
    while let Some(result) = restores.next().await {
        match result {
            Ok(restored) => {
                outcome.written += restored.written;
                outcome.unchanged += restored.unchanged;
                outcome.skipped.extend(restored.skipped.into_iter().map(|(table, id, reason)| Skipped {
                    table: name_of(table).map_or_else(|| format!("table {table}"), |d| d.name.to_owned()),
                    id,
                    reason,
                }));
            }
            Err(e) => {
                warn!(error = %ErrorChain(&e), "import failed");
                let transient = matches!(&e, crate::error::EngineError::Route(r) if r.is_transient());
                let status =
                    if transient { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
                return refuse(
                    status,
                    format!("writing rows failed (the request may be sent again): {}", ErrorChain(&e)),
                );
            }
        }
    }
    json(&outcome)
}

/// The admin listener's address from `--admin-listen` (`off`: none).
pub fn listen_addr(setting: &str) -> Result<Option<SocketAddr>, String> {
    match setting {
        "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|e| format!("{addr:?} is not `off` or an address: {e}")),
    }
}
