//! `tim cluster status`: the members as one node sees them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tim_shard::MemberInfo;

use crate::secret::Secret;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Node link address (`--rpc-listen`) of any member.
    #[arg(long)]
    server: SocketAddr,
    /// The deployment secret of the cluster (the tool proves it like a node).
    #[arg(long, env = "TIM_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Data dir of a node of the cluster, whose `secret.key` is used without `--secret-file`.
    #[arg(long, env = "TIM_DATA_DIR", default_value = "./tim-data")]
    data_dir: PathBuf,
    #[arg(long, env = "TIM_CLUSTER_ID", default_value = "tim")]
    cluster_id: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The key and runtime of an operator's call, or the exit code of why there are none.
fn prepare(args: &StatusArgs, command: &str) -> Result<([u8; 32], tokio::runtime::Runtime), ExitCode> {
    let secret = Secret::load(args.secret_file.as_deref(), &args.data_dir).map_err(|e| {
        eprintln!("tim cluster {command}: {e}");
        ExitCode::from(2)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("tim cluster {command}: {e}");
        ExitCode::FAILURE
    })?;
    Ok((secret.derive("tim-rs rpc"), runtime))
}

/// `tim cluster slots`: the slots one node owns, as JSON `[[slot, epoch], …]`.
pub fn slots(args: StatusArgs) -> ExitCode {
    let (key, runtime) = match prepare(&args, "slots") {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    match runtime.block_on(tim_shard::owned(args.server, &args.cluster_id, key)) {
        Ok(slots) => match serde_json::to_string(&slots) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tim cluster slots: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("tim cluster slots: {}", tim_net::report::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}

pub fn main(args: StatusArgs) -> ExitCode {
    let (key, runtime) = match prepare(&args, "status") {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    match runtime.block_on(tim_shard::status(args.server, &args.cluster_id, key)) {
        Ok(members) if args.json => match serde_json::to_string_pretty(&members) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tim cluster status: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(members) => {
            print!("{}", table(&members));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tim cluster status: {}", tim_net::report::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}

fn table(members: &[MemberInfo]) -> String {
    let mut out = format!(
        "{:<16}  {:<7}  {:<4}  {:<21}  {:<21}  {:>5}  {:>6}  {:>8}  {:<16}  {}\n",
        "node", "state", "live", "client", "rpc", "slots", "moving", "sessions", "placement", "generation"
    );
    for m in members {
        out.push_str(&format!(
            "{:<16}  {:<7}  {:<4}  {:<21}  {:<21}  {:>5}  {:>6}  {:>8}  {:<16}  {}\n",
            m.node.to_string(),
            m.state.as_str(),
            if m.live { "yes" } else { "no" },
            m.client.to_string(),
            m.rpc.to_string(),
            m.slots,
            m.leaving_slots,
            m.sessions,
            m.placement.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            m.generation,
        ));
    }
    let total: u32 = members.iter().filter(|m| m.live).map(|m| m.slots).sum();
    out.push_str(&format!(
        "{} members, {} live, {total} of {} slots owned by live members\n",
        members.len(),
        members.iter().filter(|m| m.live).count(),
        tim_shard::SLOTS
    ));
    out
}
