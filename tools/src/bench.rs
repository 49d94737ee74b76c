//! `tim bench`: a load generator that speaks TIM's protocol through the `tim-net` client, for
//! repeatable figures. It only targets loopback addresses, every scenario is bounded in time
//! and connections, and with `--server-pid` it reads the server's memory and CPU time from
//! `/proc`, figures that do not depend on how fast the generator is.

mod chat;
mod connect;
mod fanout;
mod machine;
mod offline;
mod plot;
mod report;
mod scrape;
mod sweep;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tim_net::client::{post_tim2, Client};
use tim_net::proto::{TimAck, TimAuth};
use tim_net::{Encoding, FrameType};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::admin_client::AdminKey;
use machine::ServerProcess;
use report::Report;

/// Password of the bench's accounts.
const PASSWORD: &str = "bench-password";
/// Connections per source address (an address has ~28k ephemeral ports per destination).
const PER_SOURCE_ADDRESS: usize = 20_000;
/// How long one connect, login or reply may take.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// The servers' client listeners (comma separated: the nodes of a cluster), loopback
    /// addresses only. Users are spread over them: user `i` connects to server `i mod n`.
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:20003")]
    pub server: Vec<SocketAddr>,
    /// The servers' process ids (comma separated), to report their memory and CPU time,
    /// summed over all of them.
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Wire encoding of the generated clients.
    #[arg(long, global = true, value_enum, default_value_t = Wire::Compact)]
    pub encoding: Wire,
    /// Prefix of the bench's account names (accounts are registered when missing).
    #[arg(long, global = true, default_value = "bench")]
    pub prefix: String,
    /// Registrations, connects and logins in flight at once.
    #[arg(long, global = true, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, clap::Subcommand, serde::Serialize)]
pub enum Scenario {
    /// Open N authenticated connections and hold them idle: memory per connection, connect rate.
    Connect(connect::ConnectArgs),
    /// N pairs of friends exchange 1:1 messages: throughput, echo and delivery latency.
    Chat(chat::ChatArgs),
    /// Fill N users' offline queues, then log them in and drain them: the drain rate.
    Offline(offline::OfflineArgs),
    /// One sender posts to an open group of N members, all online: deliveries per second, latency.
    Group(fanout::FanoutArgs),
    /// One pusher streams to a virtual room with N subscribers: deliveries per second, latency.
    Room(fanout::FanoutArgs),
    /// Calls a node's `/metrics` and, for comparison, `/v1/info`: server CPU per scrape.
    Scrape(scrape::ScrapeArgs),
    /// Chat or group over a ladder of offered rates, a fresh server per step: a table, JSON
    /// and an SVG plot of CPU per message and latency tails against load.
    Sweep(sweep::SweepArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, serde::Serialize)]
pub enum Wire {
    Compact,
    Json,
}

impl From<Wire> for Encoding {
    fn from(w: Wire) -> Self {
        match w {
            Wire::Compact => Encoding::Compact,
            Wire::Json => Encoding::Json,
        }
    }
}

/// Runs `tim bench`; `key` derives a node's admin key (the scrape scenario proves the
/// deployment secret to the admin listener).
pub fn main(args: BenchArgs, key: AdminKey<'_>) -> anyhow::Result<()> {
    if args.server.is_empty() {
        bail!("tim bench needs a --server");
    }
    if let Some(server) = args.server.iter().find(|s| !s.ip().is_loopback()) {
        bail!("tim bench only targets loopback addresses (127.0.0.0/8, ::1), not {}", server.ip());
    }
    machine::raise_open_files();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Scenario::Connect(c @ connect::ConnectArgs { first: Some(first), .. }) = &args.scenario {
        return runtime.block_on(connect::work(&args, c, *first));
    }
    if let Scenario::Sweep(sweep) = &args.scenario {
        let report = runtime.block_on(sweep::run(&args, sweep))?;
        report.print();
        return report::write_json(&report, args.json.as_deref());
    }
    let report = runtime.block_on(async {
        match &args.scenario {
            Scenario::Connect(c) => connect::run(&args, c).await,
            Scenario::Chat(c) => chat::run(&args, c).await,
            Scenario::Offline(c) => offline::run(&args, c).await,
            Scenario::Group(c) => fanout::run(&args, c, fanout::Kind::Group).await,
            Scenario::Room(c) => fanout::run(&args, c, fanout::Kind::Room).await,
            Scenario::Scrape(c) => scrape::run(&args, c, key).await,
            Scenario::Sweep(_) => bail!("the sweep runs above"),
        }
    })?;
    report.print();
    report::write_json(&report, args.json.as_deref())
}

impl BenchArgs {
    fn server_process(&self) -> Option<ServerProcess> {
        (!self.server_pid.is_empty()).then(|| ServerProcess::new(self.server_pid.clone()))
    }

    /// The server user (or connection) `i` goes to.
    fn server_for(&self, i: usize) -> SocketAddr {
        let n = self.server.len().max(1);
        self.server.get(i % n).copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 20003)))
    }

    fn auth(&self, name: &str) -> TimAuth {
        TimAuth {
            name: Some(format!("{}-{name}", self.prefix)),
            pwd: Some(PASSWORD.into()),
            domain: Some("bench".into()),
            ..TimAuth::default()
        }
    }

    /// Registers the named accounts; an existing one (from an earlier run) is fine.
    async fn register(&self, names: &[String]) -> anyhow::Result<()> {
        self.in_parallel(names.iter().map(|name| {
            let (server, auth) = (self.server_for(0), self.auth(name));
            async move {
                let ack = post_tim2(server, FrameType::Register, Encoding::Json, &auth).await?;
                if ack.ok || ack.error_code() == Some(4101) {
                    Ok(())
                } else {
                    bail!("registration refused: {:?}", ack.error)
                }
            }
        }))
        .await?;
        Ok(())
    }

    /// Logs each named account in on its own connection, to the servers in turn; clients and
    /// nodes, in order. The connections' source addresses are those of connections
    /// `first..` of the run.
    async fn logins(&self, names: &[String], first: usize) -> anyhow::Result<Vec<(Client, String)>> {
        self.logins_on(names, first, |i| self.server_for(first + i)).await
    }

    /// [`BenchArgs::logins`], account `i` on server `server_of(i)`.
    async fn logins_on(
        &self,
        names: &[String],
        first: usize,
        server_of: impl Fn(usize) -> SocketAddr,
    ) -> anyhow::Result<Vec<(Client, String)>> {
        let encoding = Encoding::from(self.encoding);
        self.in_parallel(names.iter().enumerate().map(|(i, name)| {
            let (server, auth) = (server_of(i), self.auth(name));
            async move {
                let mut client = Client::connect_from(server, source_address(first + i), encoding).await?;
                let ack = client.login(&auth, WAIT).await?;
                let node = node_of(ack)?;
                Ok((client, node))
            }
        }))
        .await
    }

    /// How account `name`, logged in as connection `i` of the run, logs in again.
    fn relogin(&self, name: &str, i: usize) -> Relogin {
        Relogin {
            servers: self.server.clone(),
            auth: self.auth(name),
            encoding: Encoding::from(self.encoding),
            source: source_address(i),
        }
    }

    /// Runs the futures with at most `concurrency` at once; their results in order.
    async fn in_parallel<T, F>(&self, futures: impl Iterator<Item = F>) -> anyhow::Result<Vec<T>>
    where
        T: Send + 'static,
        F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut set = JoinSet::new();
        for (i, future) in futures.enumerate() {
            let permit = permits.clone().acquire_owned().await?;
            set.spawn(async move {
                let out = future.await;
                drop(permit);
                (i, out)
            });
        }
        let mut out: Vec<Option<T>> = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (i, result) = joined?;
            if out.len() <= i {
                out.resize_with(i + 1, || None);
            }
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(result?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// How a client logs in again when its server goes away (a node restarts or leaves the
/// cluster): on the servers in turn, from the one after the server it was on.
#[derive(Clone)]
struct Relogin {
    servers: Vec<SocketAddr>,
    auth: TimAuth,
    encoding: Encoding,
    source: IpAddr,
}

impl Relogin {
    /// A new session, retried until `until`; and the index of its server.
    async fn login(&self, after: usize, until: tokio::time::Instant) -> anyhow::Result<(Client, usize)> {
        let n = self.servers.len().max(1);
        let mut i = after;
        loop {
            i = (i + 1) % n;
            let server = self.servers.get(i).copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 20003)));
            let attempt = async {
                let mut client = Client::connect_from(server, self.source, self.encoding).await?;
                let ack = client.login(&self.auth, Duration::from_secs(2)).await?;
                node_of(ack)?;
                anyhow::Ok(client)
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(client)) => return Ok((client, i)),
                Ok(Err(e)) if tokio::time::Instant::now() > until => return Err(e.context("logging in again")),
                Err(_) if tokio::time::Instant::now() > until => bail!("logging in again: no server answered"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The node in a successful login ack.
fn node_of(ack: TimAck) -> anyhow::Result<String> {
    match (ack.ok, ack.n) {
        (true, Some(node)) => Ok(node),
        _ => bail!("login refused: {:?}", ack.error),
    }
}

/// Source address of connection `i`: 127.0.0.1, then 127.0.0.2, … every `PER_SOURCE_ADDRESS`.
fn source_address(i: usize) -> IpAddr {
    let n = u32::try_from(i / PER_SOURCE_ADDRESS).unwrap_or(0).min(250);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + n))
}
