//! `tim admin …`: admin accounts of the admin API, managed with the deployment secret (there
//! is no default account), and sign-in for a bearer token.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;

use crate::admin_client::{Admin, AdminKey, Target};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Creates an admin account: `read` may look (lists, metrics), `write` may change. The
    /// password comes from `--password-file`, else from the first line of standard input.
    CreateUser {
        name: String,
        #[arg(long, value_parser = ["read", "write"])]
        role: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Deletes an admin account; its tokens stop working at once.
    DeleteUser {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Lists the admin accounts (JSON).
    ListUsers {
        #[command(flatten)]
        target: Target,
    },
}

/// The password of `file`, or the first line of standard input.
fn password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let raw = match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("password (shown as typed; --password-file keeps it off the screen): ");
                std::io::stderr().flush()?;
            }
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line
        }
    };
    Ok(raw.trim_end_matches(['\n', '\r']).to_owned())
}

/// `tim admin`.
pub fn run(command: AdminCommand, key: AdminKey<'_>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        AdminCommand::CreateUser { name, role, password_file, target } => {
            let password = password(password_file.as_deref())?;
            let body = serde_json::json!({ "name": name, "password": password, "role": role });
            let admin = Admin::new(target.server, key(&target)?);
            runtime.block_on(admin.whole("POST", "/v1/admins", Bytes::from(body.to_string())))?;
            eprintln!("created admin {name:?} ({role})");
        }
        AdminCommand::DeleteUser { name, target } => {
            let admin = Admin::new(target.server, key(&target)?);
            runtime.block_on(admin.whole("DELETE", &format!("/v1/admins/{name}"), Bytes::new()))?;
            eprintln!("deleted admin {name:?}");
        }
        AdminCommand::ListUsers { target } => {
            let admin = Admin::new(target.server, key(&target)?);
            let list = runtime.block_on(admin.whole("GET", "/v1/admins", Bytes::new()))?;
            let mut out = std::io::stdout().lock();
            out.write_all(&list)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
