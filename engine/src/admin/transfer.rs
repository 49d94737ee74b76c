//! `tim export` and `tim import` on the node: every slot's rows streamed out, each slot read
//! as one snapshot on its owner, and rows written back on their slots' owners. Both prove the
//! deployment secret.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use super::wire::{self, ExportFrame, ImportOutcome, ImportRequest, Skipped, Source};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tim_kv::{ExportedRow, Slot};
use tim_net::report::ErrorChain;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{json, refuse, Admin, SecretHolder};
use crate::error::EngineError;
use crate::model::tables;

pub(super) fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/v1/export", get(export))
        .route("/v1/import", post(import).layer(DefaultBodyLimit::max(wire::MAX_IMPORT_BODY)))
        .route("/v1/import/finish", post(finish_import))
}

/// Slots read at once by an export (each holds about two parts on its owner).
const EXPORT_SLOTS_AT_ONCE: usize = 4;
/// Slots written at once by one import request.
const IMPORT_SLOTS_AT_ONCE: usize = 8;
/// Frames an export keeps queued for a slow reader before its slots wait.
const EXPORT_QUEUE: usize = 8;

async fn export(State(admin): State<Arc<Admin>>, _: SecretHolder) -> Response {
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
                // Not waiting for a reader that may be stalled.
                let _ = tx.try_send(ExportFrame::Failed("the node is shutting down".into()));
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

async fn import(State(admin): State<Arc<Admin>>, _: SecretHolder, body: Bytes) -> Response {
    let request: ImportRequest = match postcard::from_bytes(&body) {
        Ok(request) => request,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the import request does not decode: {e}")),
    };
    let here = admin.source();
    let theirs = Source { fingerprint: request.fingerprint.clone(), ids: request.ids.clone(), ..here.clone() };
    if let Some(why) = theirs.mismatch(&here) {
        return refuse(StatusCode::CONFLICT, why);
    }
    // The file's table ids → this node's, by name.
    let names: BTreeMap<u32, String> = request.tables.into_iter().collect();
    let mut outcome = ImportOutcome::default();
    let mut by_slot: BTreeMap<u16, Vec<ExportedRow>> = BTreeMap::new();
    for mut row in request.rows {
        let (name, id) = (wire::table_name(&names, row.table.0), row.id.0);
        let reason = match admin.server.data.table(&name) {
            _ if row.id.slot().0 >= tim_shard::SLOTS => "its id names no slot",
            Some(local) => {
                row.table = local;
                by_slot.entry(row.id.slot().0).or_default().push(row);
                continue;
            }
            None => "the table does not exist here",
        };
        outcome.skip(Skipped { table: name, id, reason: reason.into() });
    }
    let local_names: BTreeMap<u32, String> =
        tables::ALL.iter().filter_map(|d| Some((admin.server.data.table(d.name)?.0, d.name.to_owned()))).collect();
    let server = admin.server.clone();
    let mut restores = futures_util::stream::iter(by_slot)
        .map(|(slot, rows)| {
            let server = server.clone();
            async move { server.restorer.restore(Slot(slot), rows).await }
        })
        .buffer_unordered(IMPORT_SLOTS_AT_ONCE);
    while let Some(result) = restores.next().await {
        match result {
            Ok(restored) => {
                outcome.written += restored.written;
                outcome.unchanged += restored.unchanged;
                for (table, id, reason) in restored.skipped {
                    outcome.skip(Skipped { table: wire::table_name(&local_names, table), id, reason });
                }
            }
            Err(e) => return write_failed(&e),
        }
    }
    json(&outcome)
}

fn write_failed(e: &EngineError) -> Response {
    warn!(error = %ErrorChain(e), "import failed");
    let transient = matches!(e, EngineError::Route(r) if r.is_transient());
    let status = if transient { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::INTERNAL_SERVER_ERROR };
    refuse(status, format!("writing rows failed (the request may be sent again): {}", ErrorChain(e)))
}

/// After the last rows of an import: finishes, on every slot's owner, the relation changes
/// the export caught half done.
async fn finish_import(State(admin): State<Arc<Admin>>, _: SecretHolder) -> Response {
    let server = admin.server.clone();
    let mut repairs = futures_util::stream::iter(0..tim_shard::SLOTS)
        .map(|slot| {
            let server = server.clone();
            async move { server.restorer.finish(Slot(slot)).await }
        })
        .buffer_unordered(IMPORT_SLOTS_AT_ONCE);
    let mut repaired = 0;
    while let Some(result) = repairs.next().await {
        match result {
            Ok(n) => repaired += n,
            Err(e) => return write_failed(&e),
        }
    }
    info!(repaired, "import finished");
    json(&serde_json::json!({ "repaired": repaired }))
}
