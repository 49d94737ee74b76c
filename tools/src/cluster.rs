//! `tim cluster …`: an operator's calls to a node of a running cluster, over its node link
//! (the tool proves the deployment secret like a node).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tim_net::report::ErrorChain;
use tim_shard::{MemberInfo, OperatorError};

use tim_engine::secret::Secret;

/// The node an operator's call goes to, and how to prove the deployment secret to it.
#[derive(clap::Args)]
pub struct Target {
    /// Node link address (`--rpc-listen`) of the member to ask.
    #[arg(long)]
    server: SocketAddr,
    /// The deployment secret of the cluster.
    #[arg(long, env = "TIM_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Data dir of a node of the cluster, whose `secret.key` is used without `--secret-file`.
    #[arg(long, env = "TIM_DATA_DIR", default_value = "./tim-data")]
    data_dir: PathBuf,
    #[arg(long, env = "TIM_CLUSTER_ID", default_value = "tim")]
    cluster_id: String,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds to wait for the node to hand its slots over (it goes on after that).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The ids of the members to remove (as `tim cluster status` shows them). They must be
    /// down, and a majority of the members (them counted) up.
    #[arg(required = true)]
    nodes: Vec<tim_shard::NodeId>,
    #[command(flatten)]
    target: Target,
    /// Remove them even though the data of their slots is lost with them (one copy per slot).
    #[arg(long)]
    force: bool,
}

/// Prints why `tim cluster {command}` failed; its exit code.
fn fail(command: &str, why: impl std::fmt::Display) -> ExitCode {
    eprintln!("tim cluster {command}: {why}");
    ExitCode::FAILURE
}

impl Target {
    /// Runs `call` with the target's address, cluster id and link key; the exit code of a
    /// secret that cannot be read (2) or of a failed call.
    fn run<F, Fut>(&self, command: &str, call: F) -> ExitCode
    where
        F: FnOnce(SocketAddr, String, [u8; 32]) -> Fut,
        Fut: Future<Output = Result<ExitCode, OperatorError>>,
    {
        let secret = match Secret::load(self.secret_file.as_deref(), &self.data_dir) {
            Ok(secret) => secret,
            Err(e) => {
                eprintln!("tim cluster {command}: {e}");
                return ExitCode::from(2);
            }
        };
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return fail(command, e),
        };
        let call = call(self.server, self.cluster_id.clone(), secret.derive("tim-rs rpc"));
        runtime.block_on(call).unwrap_or_else(|e| fail(command, ErrorChain(&e)))
    }
}

/// `tim cluster slots`: the slots one node owns, as JSON `[[slot, epoch], …]`.
pub fn slots(target: Target) -> ExitCode {
    target.run("slots", |addr, cluster_id, key| async move {
        let slots = tim_shard::owned(addr, &cluster_id, key).await?;
        Ok(match serde_json::to_string(&slots) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("slots", e),
        })
    })
}

/// `tim cluster status`: the members as one node sees them.
pub fn status(args: StatusArgs) -> ExitCode {
    args.target.run("status", |addr, cluster_id, key| async move {
        let members = tim_shard::status(addr, &cluster_id, key).await?;
        if !args.json {
            print!("{}", table(&members));
            return Ok(ExitCode::SUCCESS);
        }
        Ok(match serde_json::to_string_pretty(&members) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("status", e),
        })
    })
}

/// `tim cluster leave`: asks a node to leave the cluster for good, then follows it until it
/// is drained: it owns nothing and nobody hands it a slot (it stops by itself then).
pub fn leave(args: LeaveArgs) -> ExitCode {
    args.target.run("leave", |addr, cluster_id, key| async move {
        let (node, slots) = tim_shard::leave(addr, &cluster_id, key).await?;
        println!("node {node} is leaving the cluster: {slots} slots to hand over");
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let mut told = slots;
        loop {
            // A node busy handing slots over may miss a poll: only the deadline ends the wait.
            let error = match tim_shard::status(addr, &cluster_id, key).await {
                Ok(members) => {
                    let Some(me) = members.iter().find(|m| m.node == node) else {
                        return Ok(fail("leave", format!("node {node} no longer lists itself")));
                    };
                    if me.drained {
                        println!("node {node} has handed every slot over and stops");
                        return Ok(ExitCode::SUCCESS);
                    }
                    let left = me.slots.max(me.leaving_slots);
                    if left != told {
                        println!("{left} slots to go");
                        told = left;
                    }
                    None
                }
                Err(e) => Some(ErrorChain(&e).to_string()),
            };
            if Instant::now() > deadline {
                let why = match error {
                    Some(e) => {
                        format!("{e}; node {node} may still be leaving: see `tim cluster status` on another member")
                    }
                    None => format!("{told} slots still to hand over after {} s; it goes on", args.timeout),
                };
                return Ok(fail("leave", why));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Bytes as a short figure: `512B`, `3.2K`, `48.0M`, `1.5G`.
fn short_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    match UNITS.iter().find(|(size, _)| bytes >= *size) {
        Some((size, unit)) => format!("{:.1}{unit}", bytes as f64 / *size as f64),
        None => format!("{bytes}B"),
    }
}

/// `tim cluster remove`: removes members that are down for good; their slots go to the
/// others. Says what it cost.
pub fn remove(args: RemoveArgs) -> ExitCode {
    let (nodes, force) = (args.nodes, args.force);
    args.target.run("remove", |addr, cluster_id, key| async move {
        let cost = tim_shard::remove(addr, &cluster_id, key, nodes.clone(), force).await?;
        println!("{}", removal_report(&nodes, cost));
        Ok(ExitCode::SUCCESS)
    })
}

/// What `tim cluster remove` says it did.
fn removal_report(nodes: &[tim_shard::NodeId], cost: tim_shard::Removed) -> String {
    let names = nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let (node, its) = if nodes.len() == 1 { ("node", "its") } else { ("nodes", "their") };
    let taken = cost.with_data + cost.empty;
    let mut out = format!("{node} {names} removed: the other members took {its} {taken} slots");
    if cost.empty > 0 {
        out.push_str(&format!(
            "; {} of them empty (their data was on {names} alone and is lost: accounts, friendships, groups and \
             history stored there are gone)",
            cost.empty
        ));
    }
    if cost.with_data > 0 {
        out.push_str(&format!(
            "; {} of them with the data of a hand-over to {names} that never finished (what {names} took after it \
             is lost)",
            cost.with_data
        ));
    }
    if cost.waiting > 0 {
        out.push_str(&format!(
            "\n{} slots may be on a member that is down and was not removed: they are not served until it is back, \
             or removed too (then run this again to take them)",
            cost.waiting
        ));
    }
    out
}

fn table(members: &[MemberInfo]) -> String {
    let row = |cells: [&str; 14]| {
        let [node, state, live, client, rpc, slots, moving, moved, sent, rate, sessions, msg_rate, placement, generation] =
            cells;
        format!(
            "{node:<16}  {state:<8}  {live:<4}  {client:<21}  {rpc:<21}  {slots:>5}  {moving:>6}  {moved:>5}  \
             {sent:>6}  {rate:>6}  {sessions:>8}  {msg_rate:>6}  {placement:<16}  {generation}\n"
        )
    };
    let mut out = row([
        "node",
        "state",
        "live",
        "client",
        "rpc",
        "slots",
        "moving",
        "moved",
        "sent",
        "sent/s",
        "sessions",
        "msg/s",
        "placement",
        "generation",
    ]);
    for m in members {
        let placement = m.placement.map_or_else(|| "-".to_owned(), |p| p.to_string());
        out.push_str(&row([
            &m.node.to_string(),
            m.state.as_str(),
            if m.live { "yes" } else { "no" },
            &m.client.to_string(),
            &m.rpc.to_string(),
            &m.slots.to_string(),
            &m.leaving_slots.to_string(),
            &m.moved_slots.to_string(),
            &short_bytes(m.moved_bytes),
            &short_bytes(m.move_rate),
            &m.sessions.to_string(),
            &m.msg_rate.to_string(),
            &placement,
            &m.generation.to_string(),
        ]));
    }
    let total: u32 = members.iter().filter(|m| m.live).map(|m| m.slots).sum();
    let retired: std::collections::HashSet<_> = members.iter().flat_map(|m| &m.retired).collect();
    let left = members.iter().filter(|m| retired.contains(&m.node)).count();
    out.push_str(&format!(
        "{} nodes known ({left} of them left the cluster), {} live, {total} of {} slots owned by live members\n",
        members.len(),
        members.iter().filter(|m| m.live).count(),
        tim_shard::SLOTS
    ));
    out
}
