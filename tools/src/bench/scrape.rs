//! `tim bench scrape`: what a `/metrics` scrape costs the node. It calls `/metrics`, then
//! `/v1/info` (the same connection set-up, HTTP and secret-proof check, with a small answer
//! and no rendering) as often, one call at a time, and reads the node's CPU time around each
//! series: the difference per call is what rendering the figures costs.

use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;

use super::{BenchArgs, Report};
use crate::admin_client::{Admin, AdminKey, Target};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ScrapeArgs {
    /// Calls of each kind (CPU time is read in 10 ms ticks: thousands of calls keep the
    /// figure per call within a few µs).
    #[arg(long, default_value_t = 2000)]
    pub scrapes: usize,
    /// The node's admin listener, and its deployment secret.
    #[arg(long, default_value = "127.0.0.1:20002")]
    pub admin: std::net::SocketAddr,
    #[arg(long, env = "TIM_SECRET_FILE")]
    #[serde(skip)]
    pub secret_file: Option<std::path::PathBuf>,
    #[arg(long, env = "TIM_DATA_DIR", default_value = "./tim-data")]
    #[serde(skip)]
    pub data_dir: std::path::PathBuf,
}

/// Most calls of one kind.
const MAX_SCRAPES: usize = 100_000;

pub async fn run(args: &BenchArgs, s: &ScrapeArgs, key: AdminKey<'_>) -> anyhow::Result<Report> {
    if !(1..=MAX_SCRAPES).contains(&s.scrapes) {
        bail!("--scrapes must be between 1 and {MAX_SCRAPES}");
    }
    if !s.admin.ip().is_loopback() {
        bail!("tim bench only targets loopback addresses, not {}", s.admin.ip());
    }
    let Some(server) = args.server_process() else { bail!("tim bench scrape needs the node's --server-pid") };
    let target = Target { server: s.admin, secret_file: s.secret_file.clone(), data_dir: s.data_dir.clone() };
    let admin = Admin::new(s.admin, key(&target)?);
    let mut report = Report::new("scrape", serde_json::to_value(args)?);
    let mut per_call = Vec::new();
    for path in ["/metrics", "/v1/info"] {
        let before = server.sample()?;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..s.scrapes {
            bytes = admin.whole("GET", path, Bytes::new()).await?.len();
        }
        let wall = started.elapsed().as_secs_f64() / s.scrapes as f64;
        let cpu = (server.sample()?.cpu_secs - before.cpu_secs) / s.scrapes as f64;
        report.add(format!("{path} server CPU per call"), cpu * 1e6, "µs");
        report.add(format!("{path} time per call"), wall * 1e6, "µs");
        report.add(format!("{path} answer"), bytes as f64, "bytes");
        per_call.push(cpu);
    }
    if let [scrape, baseline] = per_call[..] {
        report.add("rendering the figures, server CPU per scrape", (scrape - baseline) * 1e6, "µs");
    }
    Ok(report)
}
