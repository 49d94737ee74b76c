//! The `tim` command line.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use tim_engine::ServeConfig;

/// tim-rs: a decentralized instant-messaging engine that speaks TIM's client protocol.
#[derive(Parser)]
#[command(name = "tim", version = crate::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: client listener (WebSocket /tim, HTTP /tim2) on an embedded RocksDB store.
    Serve(Box<ServeConfig>),
    /// Load generator: measure a running node (loopback only); see benches/README.md.
    Bench(Box<crate::bench::BenchArgs>),
    /// Cluster operations.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Admin accounts of the admin API (`--admin-listen`).
    #[command(subcommand)]
    Admin(crate::admin::AdminCommand),
    /// Writes all of a running cluster's data to a file (or checks a file with `--verify`),
    /// through any node's admin listener, while it serves.
    Export(crate::dump::ExportArgs),
    /// Writes the data of an export file into a running cluster. Rows keep their ids; a row
    /// already there is left alone, so importing a file twice changes nothing.
    Import(crate::dump::ImportArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The members as one node sees them: state, addresses, generation, slots, sessions.
    Status(crate::cluster::StatusArgs),
    /// The slots one node owns, with their epochs, from its own records (JSON).
    Slots(crate::cluster::Target),
    /// Asks a node to leave the cluster for good: it hands its slots to the other members,
    /// then stops. Waits until it is done.
    Leave(crate::cluster::LeaveArgs),
    /// Removes members that are down for good: the others take their slots. With one copy
    /// per slot their slots' data is lost, so that needs `--force`.
    Remove(crate::cluster::RemoveArgs),
    /// Makes a stopped node the founder of a new cluster from its data dir: it keeps the
    /// slots it owns with their data and owns every other one empty. For when most of a
    /// cluster is gone for good; its old members are never heard again.
    Found(crate::found::FoundArgs),
}

/// Entry point of the `tim` binary.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let serve_matches = match (cli.command, matches.subcommand()) {
        (Command::Serve(_), Some(("serve", serve_matches))) => serve_matches,
        (Command::Cluster(ClusterCommand::Status(args)), _) => return crate::cluster::status(args),
        (Command::Cluster(ClusterCommand::Slots(target)), _) => return crate::cluster::slots(target),
        (Command::Cluster(ClusterCommand::Leave(args)), _) => return crate::cluster::leave(args),
        (Command::Cluster(ClusterCommand::Remove(args)), _) => return crate::cluster::remove(args),
        (Command::Cluster(ClusterCommand::Found(args)), _) => return crate::found::found(args),
        (Command::Admin(command), _) => return tool("admin", crate::admin::run(command, &admin_key)),
        (Command::Export(args), _) => return tool("export", crate::dump::export(args, &admin_key)),
        (Command::Import(args), _) => return tool("import", crate::dump::import(args, &admin_key)),
        (Command::Bench(args), _) => return tool("bench", crate::bench::main(*args, &admin_key)),
        // clap matched the subcommand it parsed, so this is unreachable in practice.
        (Command::Serve(_), _) => return ExitCode::FAILURE,
    };
    let cfg = match ServeConfig::from_matches(serve_matches) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tim serve: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_new(&cfg.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tim_engine::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tim serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The key a tool proves the deployment secret with to a node's admin listener.
fn admin_key(target: &crate::admin_client::Target) -> anyhow::Result<[u8; 32]> {
    // The error's text names its cause already.
    let secret = tim_engine::secret::Secret::load(target.secret_file.as_deref(), &target.data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(secret.derive("tim-rs admin"))
}

/// The exit code of an operator tool, its error printed with every cause.
fn tool(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tim {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
