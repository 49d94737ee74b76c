//! What `tim export` and `tim import` exchange with a node's admin listener.
//!
//! `GET /v1/export` answers with a stream of frames, each a 4-byte big-endian length and a
//! postcard-encoded [`ExportFrame`]: `Begin`, then `Rows` and `SlotDone` for every slot in
//! any order, then `End` (or `Failed`, after which nothing follows). `GET /v1/info` answers
//! with the [`Source`] as JSON; `POST /v1/import` takes an [`ImportRequest`] (postcard) and
//! answers with an [`ImportOutcome`] (JSON); `POST /v1/import/finish`, sent once the rows are
//! in, finishes the relation changes the export caught half done.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tim_kv::ExportedRow;

/// Largest export frame a tool accepts (a part is about 1 MiB of rows).
pub const MAX_FRAME: usize = 64 << 20;
/// Largest import request a node accepts.
pub const MAX_IMPORT_BODY: usize = 16 << 20;

/// A table as a node declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub id: u32,
    pub name: String,
    /// Column names, in column order.
    pub columns: Vec<String>,
    /// Which columns the store seals at rest (they travel opened).
    pub sealed: Vec<bool>,
}

/// What a cluster is, as its data depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub cluster: String,
    /// Digest of the deployment secret: account ids, name keys and sealing derive from the
    /// secret, so data moves only between clusters that share it.
    pub fingerprint: String,
    /// How account ids are derived from names (`keyed` or `tim`).
    pub ids: String,
    pub slots: u16,
    pub tables: Vec<TableSchema>,
    /// The node that answered, and the members it knows.
    pub node: u64,
    pub members: Vec<u64>,
    /// The `tim` version that answered.
    pub version: String,
}

impl Source {
    /// Why data of `self` cannot go into `target`, if it cannot.
    pub fn mismatch(&self, target: &Source) -> Option<String> {
        if self.fingerprint != target.fingerprint {
            return Some(format!(
                "the data comes from a deployment with another secret (fingerprint {} here, {} in the target): \
                 account ids, name keys and sealing derive from it; start the target with the source's secret file",
                self.fingerprint, target.fingerprint
            ));
        }
        if self.ids != target.ids {
            return Some(format!(
                "the data has account ids of the `{}` scheme and the target derives `{}` ids (--node-ids)",
                self.ids, target.ids
            ));
        }
        if self.slots != target.slots {
            return Some(format!("the data has {} slots and the target {}", self.slots, target.slots));
        }
        None
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExportFrame {
    Begin(Source),
    Rows(Vec<ExportedRow>),
    /// Every row of the slot was sent: this many.
    SlotDone {
        slot: u16,
        rows: u64,
    },
    End {
        slots: u32,
        rows: u64,
    },
    Failed(String),
}

impl From<Vec<ExportedRow>> for ExportFrame {
    fn from(rows: Vec<ExportedRow>) -> Self {
        Self::Rows(rows)
    }
}

/// Rows to write back, with the names of the tables their table ids stand for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The source's fingerprint and id scheme, checked again by the node.
    pub fingerprint: String,
    pub ids: String,
    /// Table id in the rows → table name.
    pub tables: Vec<(u32, String)>,
    pub rows: Vec<ExportedRow>,
}

/// A row the node did not write, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub table: String,
    pub id: u64,
    pub reason: String,
}

/// Skipped rows named one by one in an outcome (all are counted by reason).
pub const SKIP_SAMPLES: usize = 10;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportOutcome {
    /// Rows written.
    pub written: u64,
    /// Rows that were there already, the same.
    pub unchanged: u64,
    /// Rows skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// The first few skipped rows.
    pub samples: Vec<Skipped>,
}

impl ImportOutcome {
    pub fn skip(&mut self, skipped: Skipped) {
        *self.skipped.entry(skipped.reason.clone()).or_default() += 1;
        if self.samples.len() < SKIP_SAMPLES {
            self.samples.push(skipped);
        }
    }

    pub fn add(&mut self, other: ImportOutcome) {
        self.written += other.written;
        self.unchanged += other.unchanged;
        for (reason, n) in other.skipped {
            *self.skipped.entry(reason).or_default() += n;
        }
        let room = SKIP_SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    pub fn skipped_rows(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// The name of table `id` in `names`, or `table N` for a table it does not name.
pub fn table_name(names: &BTreeMap<u32, String>, id: u32) -> String {
    names.get(&id).cloned().unwrap_or_else(|| format!("table {id}"))
}

/// A frame with its length in front.
pub fn frame(value: &ExportFrame) -> Result<Vec<u8>, postcard::Error> {
    let body = postcard::to_stdvec(value)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}
