//! `tim export` and `tim import`: all of a cluster's data to a file and back, through any
//! node's admin listener, while the cluster serves. The file format is in `format.rs` and
//! `tools/DUMP-FORMAT.md`.
//!
//! Memory stays bounded whatever the size of the data: the export writes each part as it
//! arrives, and the import holds one block and a few requests in flight.

pub mod format;
mod progress;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tim_kv::ExportedRow;
use tokio::task::JoinSet;

use crate::admin_client::{Admin, AdminKey, Target};
use format::{Block, DumpReader, DumpWriter, Header, Summary, FORMAT};
use progress::{human, Progress};
use tim_engine::export_wire::{ExportFrame, ImportOutcome, ImportRequest};

/// Import requests in flight at once.
const IMPORTS_IN_FLIGHT: usize = 4;
/// Bytes of rows per import request.
const IMPORT_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// File to write (`-`: standard output). It appears under its name only once complete.
    #[arg(long, value_name = "FILE", required_unless_present = "verify", conflicts_with = "verify")]
    pub to: Option<String>,
    /// Check a file without importing it: every block and count, and print its records per
    /// table (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub verify: Option<String>,
    /// Seal the file under the passphrase in this file (for backups). Without it the file is
    /// plain, sealed columns opened (for migration): keep it as safe as the data.
    #[arg(long, env = "TIM_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// File to read (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub from: String,
    /// The passphrase of a sealed file.
    #[arg(long, env = "TIM_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

fn passphrase(file: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = file else { return Ok(None) };
    let mut raw = std::fs::read(path).with_context(|| format!("reading the passphrase file {}", path.display()))?;
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    anyhow::ensure!(!raw.is_empty(), "the passphrase file {} is empty", path.display());
    Ok(Some(raw))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: one may block reading the file while the other drives the calls.
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// `tim export`.
pub fn export(args: ExportArgs, key: AdminKey<'_>) -> anyhow::Result<()> {
    let pass = passphrase(args.passphrase_file.as_deref())?;
    if let Some(file) = &args.verify {
        return verify(file, pass.as_deref());
    }
    let to = args.to.as_deref().unwrap_or("-");
    let admin = Admin::new(args.target.server, key(&args.target)?);
    let out = Output::create(to)?;
    let result = runtime()?.block_on(export_into(&admin, out, pass.as_deref()));
    if result.is_err() && to != "-" {
        let _ = std::fs::remove_file(Output::partial(to));
    }
    let (summary, bytes, header, secs) = result?;
    let sealed = if header.sealing.is_some() { "sealed" } else { "plain" };
    eprintln!(
        "exported {} records ({}) of {} slots of cluster {:?} in {secs:.1} s to {to} ({sealed})",
        summary.rows.values().sum::<u64>(),
        human(bytes),
        summary.slots,
        header.source.cluster
    );
    print_counts(&mut std::io::stderr(), &summary.rows)?;
    Ok(())
}

async fn export_into(admin: &Admin, out: Output, pass: Option<&[u8]>) -> anyhow::Result<(Summary, u64, Header, f64)> {
    let mut progress = Progress::new("exported");
    let mut frames = admin.export().await?;
    let source = match frames.next().await? {
        Some(ExportFrame::Begin(source)) => source,
        Some(ExportFrame::Failed(reason)) => bail!("the node could not start the export: {reason}"),
        other => bail!("the export did not start with its description: {other:?}"),
    };
    let created_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let total_slots = f64::from(source.slots.max(1));
    let header = Header {
        format: FORMAT,
        tool: format!("tim {}", crate::VERSION),
        created_unix,
        source,
        sealing: pass.map(|_| format::new_sealing()),
    };
    let mut writer = DumpWriter::new(out, &header, pass)?;
    let (mut slots, mut rows) = (0u32, 0u64);
    loop {
        match frames.next().await? {
            Some(ExportFrame::Rows(part)) => {
                rows += part.len() as u64;
                writer.rows(&part)?;
                progress.show(rows, writer.bytes(), Some(f64::from(slots) / total_slots));
            }
            Some(ExportFrame::SlotDone { .. }) => slots += 1,
            Some(ExportFrame::End { slots: sent_slots, rows: sent_rows }) => {
                anyhow::ensure!(
                    sent_slots == slots && sent_rows == rows,
                    "the node says it sent {sent_rows} rows of {sent_slots} slots, and {rows} rows of {slots} came"
                );
                let bytes = writer.bytes();
                let (out, summary) = writer.finish(slots)?;
                out.complete()?;
                progress.clear();
                return Ok((summary, bytes, header, progress.elapsed().as_secs_f64()));
            }
            Some(ExportFrame::Failed(reason)) => bail!("the export failed on the node: {reason}"),
            Some(ExportFrame::Begin(_)) => bail!("the node started the export twice"),
            None => bail!("the node ended the export before its end"),
        }
    }
}

/// Where an export goes: standard output, or a file written under a temporary name and
/// renamed once complete and synced.
enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File { out: BufWriter<File>, path: String },
}

impl Output {
    fn partial(path: &str) -> String {
        format!("{path}.partial")
    }

    fn create(to: &str) -> anyhow::Result<Self> {
        if to == "-" {
            return Ok(Self::Stdout(BufWriter::new(std::io::stdout())));
        }
        let partial = Self::partial(to);
        let file = File::create(&partial).with_context(|| format!("creating {partial}"))?;
        Ok(Self::File { out: BufWriter::with_capacity(1 << 20, file), path: to.to_owned() })
    }

    fn complete(self) -> anyhow::Result<()> {
        match self {
            Self::Stdout(mut out) => Ok(out.flush()?),
            Self::File { out, path } => {
                let file = out.into_inner().map_err(|e| e.into_error())?;
                file.sync_all()?;
                std::fs::rename(Self::partial(&path), &path).with_context(|| format!("renaming the file to {path}"))
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Stdout(out) => out.write(buf),
            Self::File { out, .. } => out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::File { out, .. } => out.flush(),
        }
    }
}

fn open_input(from: &str) -> anyhow::Result<(Box<dyn Read + Send>, Option<u64>)> {
    if from == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let file = File::open(from).with_context(|| format!("opening {from}"))?;
    let size = file.metadata().ok().map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, file)), size))
}

fn print_counts(out: &mut dyn Write, rows: &BTreeMap<String, u64>) -> std::io::Result<()> {
    for (table, n) in rows {
        writeln!(out, "  {table:<16} {n:>12}")?;
    }
    Ok(())
}

/// `tim export --verify`.
fn verify(from: &str, pass: Option<&[u8]>) -> anyhow::Result<()> {
    let (input, _) = open_input(from)?;
    let mut reader = DumpReader::open(input, pass).with_context(|| format!("{from} is not a readable export"))?;
    let summary = loop {
        match reader.next_block().with_context(|| format!("{from} is damaged"))? {
            Some(Block::Rows(_)) => {}
            Some(Block::End(summary)) => break summary,
            None => bail!("{from} ends without its end block"),
        }
    };
    reader.next_block().with_context(|| format!("{from} is damaged"))?;
    let h = &reader.header;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{from}: format {}, written by {} at {} (Unix time), cluster {:?}, fingerprint {}, {} ids, {}",
        h.format,
        h.tool,
        h.created_unix,
        h.source.cluster,
        h.source.fingerprint,
        h.source.ids,
        if h.sealing.is_some() { "sealed" } else { "plain" }
    )?;
    writeln!(
        out,
        "{} slots, {} records, every block and count checks:",
        summary.slots,
        summary.rows.values().sum::<u64>()
    )?;
    print_counts(&mut out, &summary.rows)?;
    Ok(())
}

/// `tim import`.
pub fn import(args: ImportArgs, key: AdminKey<'_>) -> anyhow::Result<()> {
    let pass = passphrase(args.passphrase_file.as_deref())?;
    let admin = Admin::new(args.target.server, key(&args.target)?);
    let (input, size) = open_input(&args.from)?;
    let reader =
        DumpReader::open(input, pass.as_deref()).with_context(|| format!("{} is not a readable export", args.from))?;
    let started = std::time::Instant::now();
    let (outcome, read) = runtime()?.block_on(import_from(&admin, reader, size))?;
    eprintln!(
        "imported {} records in {:.1} s: {} written, {} there already, {} skipped",
        read,
        started.elapsed().as_secs_f64(),
        outcome.written,
        outcome.unchanged,
        outcome.skipped_rows()
    );
    for (reason, n) in &outcome.skipped {
        eprintln!("  skipped {n}: {reason}");
    }
    for skip in &outcome.samples {
        eprintln!("  skipped {} row {}: {}", skip.table, skip.id, skip.reason);
    }
    Ok(())
}

async fn import_from<R: Read>(
    admin: &Admin,
    mut reader: DumpReader<R>,
    size: Option<u64>,
) -> anyhow::Result<(ImportOutcome, u64)> {
    let target = admin.info().await?;
    let source = reader.header.source.clone();
    if let Some(why) = source.mismatch(&target) {
        bail!("refusing to import: {why}");
    }
    let tables: Vec<(u32, String)> = source.tables.iter().map(|t| (t.id, t.name.clone())).collect();
    let mut progress = Progress::new("imported");
    let mut outcome = ImportOutcome::default();
    let mut in_flight: JoinSet<anyhow::Result<ImportOutcome>> = JoinSet::new();
    let mut read = 0u64;
    loop {
        let block = match reader.next_block() {
            Ok(block) => block,
            Err(e) => {
                while let Some(done) = in_flight.join_next().await {
                    outcome.add(done??);
                }
                admin.finish_import().await?;
                return Err(anyhow::Error::new(e).context(format!(
                    "the file is damaged; {} records before the damage were imported ({} written), nothing of the damaged block",
                    read, outcome.written
                )));
            }
        };
        match block {
            Some(Block::Rows(rows)) => {
                read += rows.len() as u64;
                for rows in split(rows, IMPORT_BYTES) {
                    while in_flight.len() >= IMPORTS_IN_FLIGHT {
                        if let Some(done) = in_flight.join_next().await {
                            outcome.add(done??);
                        }
                    }
                    let request = ImportRequest {
                        fingerprint: source.fingerprint.clone(),
                        ids: source.ids.clone(),
                        tables: tables.clone(),
                        rows,
                    };
                    let admin = admin.clone();
                    in_flight.spawn(async move { admin.import(&request).await });
                }
                let offset = reader.offset();
                progress.show(read, offset, size.map(|s| offset as f64 / s.max(1) as f64));
            }
            Some(Block::End(_)) | None => break,
        }
    }
    while let Some(done) = in_flight.join_next().await {
        outcome.add(done??);
    }
    // Nothing may follow the end block.
    reader.next_block()?;
    admin.finish_import().await?;
    progress.clear();
    Ok((outcome, read))
}

/// Rows in lists of about `max_bytes` each.
fn split(rows: Vec<ExportedRow>, max_bytes: usize) -> Vec<Vec<ExportedRow>> {
    let mut lists = vec![Vec::new()];
    let mut bytes = 0;
    for row in rows {
        let size = 32 + row.row.size();
        if bytes + size > max_bytes && lists.last().is_some_and(|l| !l.is_empty()) {
            lists.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(list) = lists.last_mut() {
            list.push(row);
        }
    }
    lists
}
