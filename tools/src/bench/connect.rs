//! `tim bench connect`: open N authenticated connections, hold them idle, and report the
//! server's resident memory per connection and the connect rate.
//!
//! One process may hold only as many connections as its open-file limit allows, so with
//! `--workers W` the connections are opened by W child processes of this binary, each with
//! its share of the accounts and source addresses. A worker reports on stdout once its
//! connections are up, and holds them until its stdin closes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{BenchArgs, Report, Wire, WAIT};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ConnectArgs {
    /// Connections to open (one account each).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds to hold them open before measuring (lets the server settle).
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Child processes that open the connections (each holds at most its open-file limit).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Worker mode (set by the parent): open connections `first..first + connections`.
    #[arg(long, hide = true)]
    pub first: Option<usize>,
}

/// Most workers: each takes its own source addresses.
const MAX_WORKERS: usize = 32;

/// What a worker reports once its connections are up.
#[derive(serde::Serialize, serde::Deserialize)]
struct Connected {
    connections: usize,
    secs: f64,
}

pub async fn run(args: &BenchArgs, c: &ConnectArgs) -> anyhow::Result<Report> {
    if !(1..=MAX_WORKERS).contains(&c.workers) {
        bail!("--workers must be between 1 and {MAX_WORKERS}");
    }
    let mut report = Report::new("connect", serde_json::to_value(args)?);
    let names: Vec<String> = (0..c.connections).map(name).collect();
    args.register(&names).await?;
    let server = args.server_process();
    let before = server.as_ref().map(|s| s.sample()).transpose()?;
    let (opened, elapsed, held) = if c.workers == 1 {
        let started = Instant::now();
        let clients = args.logins(&names, 0).await?;
        (clients.len(), started.elapsed().as_secs_f64(), Held::Here(clients))
    } else {
        let workers = start_workers(args, c).await?;
        let (mut opened, mut slowest) = (0, 0f64);
        let mut children = Vec::with_capacity(workers.len());
        for (mut child, mut lines) in workers {
            let line = tokio::time::timeout(WAIT * 4, lines.next_line()).await.context("a worker timed out")??;
            let connected: Connected = serde_json::from_str(line.as_deref().unwrap_or_default())
                .context("a worker failed (its error is above)")?;
            opened += connected.connections;
            slowest = slowest.max(connected.secs);
            child.stdout = None;
            children.push(child);
        }
        (opened, slowest, Held::InWorkers(children))
    };
    tokio::time::sleep(Duration::from_secs(c.settle)).await;
    let n = opened as f64;
    report.add("connections", n, "");
    report.add("worker processes", c.workers as f64, "");
    report.add("connect + login rate", n / elapsed.max(1e-9), "conn/s");
    if let (Some(server), Some(before)) = (server, before) {
        let after = server.sample()?;
        report.add("server rss before", before.rss_kib as f64, "KiB");
        report.add("server rss after", after.rss_kib as f64, "KiB");
        report.add("server rss per connection", (after.rss_kib as f64 - before.rss_kib as f64) / n.max(1.0), "KiB");
        report.add("server cpu per connect + login", (after.cpu_secs - before.cpu_secs) / n.max(1.0) * 1e6, "us");
    }
    held.release().await;
    Ok(report)
}

/// Worker mode: opens this worker's connections (the parent registered the accounts),
/// reports, and holds them until stdin closes.
pub async fn work(args: &BenchArgs, c: &ConnectArgs, first: usize) -> anyhow::Result<()> {
    let names: Vec<String> = (first..first + c.connections).map(name).collect();
    let started = Instant::now();
    let clients = args.logins(&names, first).await?;
    let connected = Connected { connections: clients.len(), secs: started.elapsed().as_secs_f64() };
    println!("{}", serde_json::to_string(&connected)?);
    let mut rest = Vec::new();
    tokio::io::stdin().read_to_end(&mut rest).await?;
    drop(clients);
    Ok(())
}

fn name(i: usize) -> String {
    format!("c{i}")
}

/// Connections held until the measurement is done.
enum Held {
    Here(Vec<(tim_net::client::Client, String)>),
    InWorkers(Vec<Child>),
}

impl Held {
    async fn release(self) {
        match self {
            Held::Here(clients) => drop(clients),
            Held::InWorkers(children) => {
                for mut child in children {
                    // Closing stdin tells the worker to close its connections and exit.
                    child.stdin = None;
                    if tokio::time::timeout(WAIT, child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                }
            }
        }
    }
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts the workers, each with its share of the connections; they run this very binary.
async fn start_workers(args: &BenchArgs, c: &ConnectArgs) -> anyhow::Result<Vec<(Child, Lines)>> {
    let exe = std::env::current_exe().context("finding the tim binary for the workers")?;
    let mut workers = Vec::with_capacity(c.workers);
    let servers = args.server.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut first = 0;
    for w in 0..c.workers {
        let share = c.connections / c.workers + usize::from(w < c.connections % c.workers);
        let encoding = match args.encoding {
            Wire::Compact => "compact",
            Wire::Json => "json",
        };
        let mut child = Command::new(&exe)
            .args(["bench", "--server", &servers, "--encoding", encoding])
            .args(["--prefix", &args.prefix, "--concurrency", &args.concurrency.to_string()])
            .args(["connect", "--connections", &share.to_string(), "--first", &first.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push((child, BufReader::new(stdout).lines()));
        first += share;
    }
    Ok(workers)
}
