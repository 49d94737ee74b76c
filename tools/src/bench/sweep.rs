//! `tim bench sweep`: a latency-throughput curve. Each step of a ladder of offered rates runs
//! the chat (or group) scenario against a server the sweep starts for that step alone, on a
//! fresh data dir, so no step inherits another's memtables, compaction debt or caches. The
//! ladder climbs until a step delivers less than 90 % of what it was offered (saturation),
//! then, for chat, ends with a step flat out. The result is a table, JSON, and an SVG plot of
//! server CPU per message and the latency tails against the delivered rate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::chat::ChatArgs;
use super::fanout::{FanoutArgs, Kind};
use super::machine::Machine;
use super::plot::{Chart, Series};
use super::report::Report;
use super::{BenchArgs, Scenario};

/// A step that delivers less than this share of its offered rate is saturated.
const SATURATED: f64 = 0.9;
/// How long a server may take to start, and to stop after SIGTERM.
const START: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Load {
    /// `chat`: pairs exchanging 1:1 messages; rates are messages per second.
    Chat,
    /// `group`: one sender to an open group; rates are deliveries per second.
    Group,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SweepArgs {
    /// The scenario of every step.
    #[arg(long, value_enum, default_value_t = Load::Chat)]
    pub load: Load,
    /// Offered rates, climbed in increasing order: messages per second across all senders
    /// (chat), or deliveries per second (group).
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2500,5000,10000,15000,20000,25000,30000,40000,50000")]
    pub rates: Vec<u64>,
    /// Chat: end with a step flat out (after the ladder saturates or ends).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flat_out: bool,
    /// Chat: sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Group: members besides the sender.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Chat: seconds of sending before each step's measured `duration` (see `tim bench chat`).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Client listener of the servers the sweep starts (a loopback address). The admin,
    /// gossip and node-link listeners take the ports just below and above it.
    #[arg(long, default_value = "127.0.0.1:20103")]
    pub listen: SocketAddr,
    /// Where each step's server keeps its data (a fresh folder per step, removed after it)
    /// and its log (kept).
    #[arg(long, default_value = "/tmp/tim-sweep")]
    pub work_dir: PathBuf,
    /// Pin each server to this core (with `taskset`); run the sweep itself under
    /// `taskset -c <another core>` to keep the generator off it.
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// The `tim` binary the steps run as server; by default the one running the sweep.
    #[arg(long)]
    pub tim: Option<PathBuf>,
    /// The plot to write (SVG).
    #[arg(long, default_value = "sweep.svg")]
    pub plot: PathBuf,
    /// An earlier sweep's JSON report, drawn beside this one in the plot (e.g. the curve
    /// before a change).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Label of this sweep's curves in the plot (default: its commit).
    #[arg(long)]
    pub label: Option<String>,
    /// Flags for every `tim serve` of the sweep, after `--`, e.g. `-- --sync false`.
    #[arg(last = true)]
    pub serve: Vec<String>,
}

/// One step of the curve. Latencies in ms; for the group load, "echo" is absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Offered messages (chat) or deliveries (group) per second; 0 = flat out. A group's
    /// offer is whole messages per second times its members.
    pub offered: u64,
    pub delivered_per_second: f64,
    pub cpu_us_per_message: f64,
    pub echo_ms: Option<Tail>,
    pub delivery_ms: Tail,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tail {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SweepReport {
    pub scenario: String,
    pub load: Load,
    pub commit: String,
    pub label: String,
    pub settings: serde_json::Value,
    pub machine: Machine,
    pub steps: Vec<Step>,
}

pub async fn run(args: &BenchArgs, s: &SweepArgs) -> anyhow::Result<SweepReport> {
    if !s.listen.ip().is_loopback() {
        bail!("tim bench sweep only starts servers on loopback addresses, not {}", s.listen.ip());
    }
    let mut rates = s.rates.clone();
    rates.retain(|r| *r > 0);
    rates.sort_unstable();
    rates.dedup();
    if rates.is_empty() && !(s.flat_out && s.load == Load::Chat) {
        bail!("--rates names no rate above 0");
    }
    let baseline = s.baseline.as_deref().map(read_report).transpose()?;
    let (tim, commit) = match &s.tim {
        Some(path) => (path.clone(), commit_of(path).await?),
        None => (std::env::current_exe().context("finding the tim binary to run as server")?, crate::COMMIT.to_owned()),
    };
    std::fs::create_dir_all(&s.work_dir).with_context(|| format!("creating {}", s.work_dir.display()))?;
    let mut report = SweepReport {
        scenario: "sweep".into(),
        load: s.load,
        commit: commit.clone(),
        label: s.label.clone().unwrap_or(commit),
        settings: serde_json::to_value(s)?,
        machine: Machine::read(),
        steps: Vec::new(),
    };
    let mut ladder: Vec<u64> = rates;
    if s.flat_out && s.load == Load::Chat {
        ladder.push(0);
    }
    let mut saturated = false;
    for (i, offered) in ladder.into_iter().enumerate() {
        if saturated && offered > 0 {
            continue;
        }
        let what = if offered == 0 { "flat out".to_owned() } else { format!("{offered}/s") };
        eprintln!("step {}: {what}", i + 1);
        let server = Server::start(&tim, s, i).await?;
        let outcome = step(args, s, offered, server.pid).await;
        server.stop().await?;
        let step = outcome.with_context(|| format!("step {} ({what})", i + 1))?;
        saturated = offered > 0 && step.delivered_per_second < SATURATED * offered as f64;
        report.steps.push(step);
    }
    write_plot(&report, baseline.as_ref(), &s.plot).with_context(|| format!("writing {}", s.plot.display()))?;
    Ok(report)
}

/// The commit another `tim` binary was built from, as its `--version` says ("unknown" for a
/// build older than the stamp).
async fn commit_of(tim: &Path) -> anyhow::Result<String> {
    let out =
        Command::new(tim).arg("--version").output().await.with_context(|| format!("running {}", tim.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    let commit = version.split_once("(commit ").and_then(|(_, rest)| rest.split_once(')')).map(|(c, _)| c.trim());
    Ok(commit.unwrap_or("unknown").to_owned())
}

/// Runs one step's scenario against the server of pid `pid`.
async fn step(args: &BenchArgs, s: &SweepArgs, offered: u64, pid: u32) -> anyhow::Result<Step> {
    let mut args = args.clone();
    args.server = vec![s.listen];
    args.server_pid = vec![pid];
    args.json = None;
    let (report, offered) = match s.load {
        Load::Chat => {
            let c = ChatArgs {
                pairs: s.pairs,
                rate: offered,
                duration: s.duration,
                size: s.size,
                window: 32,
                together: false,
                warmup: s.warmup,
            };
            args.scenario = Scenario::Chat(c.clone());
            (super::chat::run(&args, &c).await?, offered)
        }
        Load::Group => {
            let members = s.members.max(1) as u64;
            let per_second = u32::try_from((offered / members).max(1)).unwrap_or(u32::MAX);
            let c = FanoutArgs {
                members: s.members,
                messages: usize::try_from(u64::from(per_second) * s.duration).unwrap_or(usize::MAX).max(1),
                rate: per_second,
                size: s.size,
            };
            args.scenario = Scenario::Group(c.clone());
            (super::fanout::run(&args, &c, Kind::Group).await?, u64::from(per_second) * members)
        }
    };
    Step::read(&report, s.load, offered)
}

impl Step {
    /// The step's figures out of its scenario's report.
    fn read(r: &Report, load: Load, offered: u64) -> anyhow::Result<Self> {
        let tail = |name: &str| -> anyhow::Result<Tail> {
            Ok(Tail {
                p50: r.figure(&format!("{name} latency p50"))?,
                p99: r.figure(&format!("{name} latency p99"))?,
                p999: r.figure(&format!("{name} latency p99.9"))?,
                max: r.figure(&format!("{name} latency max"))?,
            })
        };
        let count = |name: &str| r.figure(name).map(|v| v as u64);
        Ok(match load {
            Load::Chat => Self {
                offered,
                delivered_per_second: r.figure("delivered per second")?,
                cpu_us_per_message: r.figure("server cpu per delivered message")?,
                echo_ms: Some(tail("echo")?),
                delivery_ms: tail("delivery")?,
                lost: count("messages lost")?,
                duplicated: count("messages duplicated")?,
                reordered: count("messages reordered")?,
            },
            Load::Group => Self {
                offered,
                delivered_per_second: r.figure("deliveries per second")?,
                cpu_us_per_message: r.figure("server cpu per delivery")?,
                echo_ms: None,
                delivery_ms: tail("delivery")?,
                lost: count("deliveries lost")?,
                duplicated: count("deliveries duplicated")?,
                reordered: 0,
            },
        })
    }
}

/// A server started for one step, on a fresh data dir.
struct Server {
    child: Child,
    pid: u32,
    data: PathBuf,
}

impl Server {
    async fn start(tim: &Path, s: &SweepArgs, step: usize) -> anyhow::Result<Self> {
        let data = s.work_dir.join(format!("step-{}", step + 1));
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
        }
        let log_path = s.work_dir.join(format!("step-{}.log", step + 1));
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let (ip, port) = (s.listen.ip(), s.listen.port());
        let near = |delta: i32| -> anyhow::Result<String> {
            let p = u16::try_from(i32::from(port) + delta).context("--listen's port leaves no room for the others")?;
            Ok(SocketAddr::new(ip, p).to_string())
        };
        let mut command = match s.server_cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(tim);
                c
            }
            None => Command::new(tim),
        };
        command
            .arg("serve")
            .args(["--listen", &s.listen.to_string()])
            .args(["--admin-listen", &near(-1)?, "--gossip-listen", &near(1)?, "--rpc-listen", &near(2)?])
            .arg("--data-dir")
            .arg(&data)
            // Logins cost one cheap hash, and no rate limit holds a bench sender back.
            .args(["--argon2-memory-kib", "8", "--argon2-passes", "1", "--device-limit", "2"])
            .args(["--rate-connection", "0", "--rate-account", "0"])
            .args(&s.serve)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {}", tim.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("tim ready") {
                    return Ok(true);
                }
            }
            anyhow::Ok(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            bail!("the server of step {} did not start: see {}", step + 1, log_path.display());
        }
        // The rest of its stdout is read and dropped, so the server never blocks on the pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, pid, data })
    }

    /// SIGTERM, a wait for the exit (SIGKILL after [`STOP`]), and the data dir removed.
    async fn stop(mut self) -> anyhow::Result<()> {
        terminate(self.pid);
        if tokio::time::timeout(STOP, self.child.wait()).await.is_err() {
            self.child.kill().await?;
        }
        std::fs::remove_dir_all(&self.data).with_context(|| format!("removing {}", self.data.display()))
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill sends a signal to a process this sweep started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn read_report(path: &Path) -> anyhow::Result<SweepReport> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a sweep report", path.display()))
}

impl SweepReport {
    pub fn print(&self) {
        println!("tim bench sweep, {:?} (commit {})", self.load, self.commit);
        println!("machine: {} cores, {} MiB", self.machine.cores, self.machine.memory_kib / 1024);
        println!(
            "{:>9} {:>11} {:>9}  {:>24}  {:>24}  {:>4} {:>4} {:>4}",
            "offered",
            "delivered/s",
            "cpu µs",
            "echo p50/p99/p99.9 ms",
            "delivery p50/p99/p99.9 ms",
            "lost",
            "dup",
            "ord"
        );
        for step in &self.steps {
            let offered = if step.offered == 0 { "flat out".to_owned() } else { step.offered.to_string() };
            let tail = |t: &Tail| format!("{:.2}/{:.2}/{:.2}", t.p50, t.p99, t.p999);
            println!(
                "{offered:>9} {:>11.0} {:>9.1}  {:>24}  {:>24}  {:>4} {:>4} {:>4}",
                step.delivered_per_second,
                step.cpu_us_per_message,
                step.echo_ms.as_ref().map_or_else(|| "-".to_owned(), tail),
                tail(&step.delivery_ms),
                step.lost,
                step.duplicated,
                step.reordered
            );
        }
    }
}

/// Two charts against the delivered rate: server CPU per message, and the p99 and p99.9
/// latencies (log scale); a baseline sweep is drawn beside in dashes.
fn write_plot(report: &SweepReport, baseline: Option<&SweepReport>, path: &Path) -> anyhow::Result<()> {
    let unit = if report.load == Load::Chat { "messages" } else { "deliveries" };
    let mut cpu = Chart::new("server CPU per message", &format!("delivered {unit} per second"), "µs", false);
    let mut tails = Chart::new("latency tails", &format!("delivered {unit} per second"), "ms", true);
    for (sweep, dashed) in [(Some(report), false), (baseline, true)] {
        let Some(sweep) = sweep else { continue };
        let points = |f: &dyn Fn(&Step) -> Option<f64>| -> Vec<(f64, f64)> {
            sweep.steps.iter().filter_map(|s| Some((s.delivered_per_second, f(s)?))).collect()
        };
        let label = &sweep.label;
        cpu.add(Series::new(label, 0, dashed, points(&|s| Some(s.cpu_us_per_message))));
        let latency = if sweep.load == Load::Chat { "echo" } else { "delivery" };
        let tail = |s: &Step| if sweep.load == Load::Chat { s.echo_ms } else { Some(s.delivery_ms) };
        tails.add(Series::new(&format!("{label} {latency} p99"), 0, dashed, points(&|s| Some(tail(s)?.p99))));
        tails.add(Series::new(&format!("{label} {latency} p99.9"), 1, dashed, points(&|s| Some(tail(s)?.p999))));
        if sweep.load == Load::Chat {
            tails.add(Series::new(&format!("{label} delivery p99"), 2, dashed, points(&|s| Some(s.delivery_ms.p99))));
        }
    }
    let title = format!("tim bench sweep ({:?}), commit {}", report.load, report.commit);
    std::fs::write(path, super::plot::render(&title, &[cpu, tails]))?;
    Ok(())
}
