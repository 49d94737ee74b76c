//! `tim bench connect`: open N authenticated connections, hold them idle, and report the
//! server's resident memory per connection and the connect rate.

use std::time::{Duration, Instant};

use super::{BenchArgs, Report};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ConnectArgs {
    /// Connections to open (one account each).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them open before measuring (lets the server settle).
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
}

pub async fn run(args: &BenchArgs, c: &ConnectArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("connect", serde_json::to_value(args)?);
    let names: Vec<String> = (0..c.connections).map(|i| format!("c{i}")).collect();
    args.register(&names).await?;
    let server = args.server_process();
    let before = server.map(|s| s.sample()).transpose()?;
    let started = Instant::now();
    let clients = args.logins(&names).await?;
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(c.settle)).await;
    let n = clients.len() as f64;
    report.add("connections", n, "");
    report.add("connect + login rate", n / elapsed.max(1e-9), "conn/s");
    if let (Some(server), Some(before)) = (server, before) {
        let after = server.sample()?;
        report.add("server rss before", before.rss_kib as f64, "KiB");
        report.add("server rss after", after.rss_kib as f64, "KiB");
        report.add("server rss per connection", (after.rss_kib as f64 - before.rss_kib as f64) / n.max(1.0), "KiB");
        report.add("server cpu per connect + login", (after.cpu_secs - before.cpu_secs) / n.max(1.0) * 1e6, "us");
    }
    drop(clients);
    Ok(report)
}
