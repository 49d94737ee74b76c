//! Starts `tim serve` as a child process and cleans up after it, even when a test fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tim_net::client::{post_tim2, Client};
use tim_net::proto::{TimAck, TimAuth};
use tim_net::{Encoding, FrameType};

pub const WAIT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Warnings and errors of a failed test's node printed with its failure.
const LOG_TAIL: usize = 30;

pub struct TestNode {
    child: Child,
    pub dir: tempfile::TempDir,
    /// The client listener.
    pub addr: SocketAddr,
    /// The node link and gossip addresses and node id of a cluster member.
    pub rpc: Option<SocketAddr>,
    pub gossip: Option<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    pub id: Option<String>,
    /// The extra `serve` arguments it was started with.
    args: Vec<String>,
    /// The environment variables it was started with, beyond the test's.
    envs: Vec<(String, String)>,
}

/// The fields of the line `tim serve` prints when it is up: `tim ready listen=… rpc=… …`.
fn ready_fields(line: &str) -> Option<Vec<(String, String)>> {
    let rest = line.strip_prefix("tim ready ")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
    )
}

impl TestNode {
    /// A node on a fresh data dir with extra `serve` flags.
    pub fn start(args: &[&str]) -> TestNode {
        Self::start_in(tempfile::tempdir().expect("temp dir"), args)
    }

    /// A node on an existing data dir (a restart).
    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> TestNode {
        Self::start_on([127, 0, 0, 1].into(), dir, args)
    }

    /// A node whose listeners bind `host` (port 0), on an existing data dir.
    pub fn start_on(host: std::net::IpAddr, dir: tempfile::TempDir, args: &[&str]) -> TestNode {
        Self::start_at(SocketAddr::new(host, 0), dir, args)
    }

    /// A node whose client listener binds `listen`, on an existing data dir.
    pub fn start_at(listen: SocketAddr, dir: tempfile::TempDir, args: &[&str]) -> TestNode {
        Self::start_with_env(listen, dir, args, &[])
    }

    /// The same with more environment variables (kept for a restart).
    pub fn start_with_env(
        listen: SocketAddr,
        dir: tempfile::TempDir,
        args: &[&str],
        envs: &[(String, String)],
    ) -> TestNode {
        let host = listen.ip();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("tim.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tim"))
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--admin-listen")
            .arg(SocketAddr::new(host, 0).to_string())
            .args(args)
            .env("TIM_LOG", "debug")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn tim");
        let args = args.iter().map(|a| (*a).to_owned()).collect();
        let mut node = TestNode {
            child,
            dir,
            addr: SocketAddr::new(host, 0),
            rpc: None,
            gossip: None,
            admin: None,
            id: None,
            args,
            envs: envs.to_vec(),
        };
        let stdout = node.child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(fields) = ready_fields(&line) {
                    let _ = ready_tx.send(fields);
                }
            }
        });
        let Ok(fields) = ready_rx.recv_timeout(READY_TIMEOUT) else {
            panic!("tim did not get ready; log:\n{}", node.log());
        };
        for (key, value) in fields {
            match key.as_str() {
                "listen" => node.addr = value.parse().expect("listen address"),
                "rpc" => node.rpc = Some(value.parse().expect("rpc address")),
                "gossip" => node.gossip = Some(value.parse().expect("gossip address")),
                "admin" => node.admin = Some(value.parse().expect("admin address")),
                "node" => node.id = Some(value),
                _ => {}
            }
        }
        node
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tim.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then reap; the data dir, the host and the arguments for a restart.
    pub fn kill9_for_restart(self) -> (tempfile::TempDir, std::net::IpAddr, Vec<String>) {
        let (host, args) = (self.addr.ip(), self.args.clone());
        (self.kill9(), host, args)
    }

    /// SIGKILL, then reap; returns the data dir for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// The exit status of a node that stops by itself, within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the node did not stop within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.child.wait().expect("wait")
    }

    /// SIGTERM, without waiting.
    pub fn signal_term(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        assert_eq!(send_signal(pid, libc::SIGTERM), 0);
    }

    /// Stops the node with SIGTERM and starts it again on its data dir, at the same
    /// addresses (clients and the other members find it where it was).
    pub fn restart(mut self) -> TestNode {
        assert!(self.terminate().success(), "the node stops cleanly: {}", self.log());
        self.start_again()
    }

    /// SIGKILL, then the same as [`TestNode::restart`].
    pub fn kill9_and_restart(mut self) -> TestNode {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again()
    }

    /// Starts a stopped node again on its data dir, at the same addresses.
    fn start_again(mut self) -> TestNode {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        self.start_again_in(dir)
    }

    /// SIGKILL, then a new node on an empty data dir at the same addresses with the same
    /// arguments (a disk replaced, the command line kept).
    pub fn kill9_and_start_wiped(mut self) -> TestNode {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.start_again_in(tempfile::tempdir().expect("temp dir"))
    }

    /// Starts a stopped node on `dir` at its addresses.
    fn start_again_in(&self, dir: tempfile::TempDir) -> TestNode {
        let mut args = self.args.clone();
        for (flag, bound) in [("--rpc-listen", self.rpc), ("--gossip-listen", self.gossip)] {
            let at = args.iter().position(|a| a == flag).map(|i| i + 1);
            if let (Some(value), Some(bound)) = (at.and_then(|i| args.get_mut(i)), bound) {
                *value = bound.to_string();
            }
        }
        TestNode::start_with_env(self.addr, dir, &args.iter().map(String::as_str).collect::<Vec<_>>(), &self.envs)
    }

    pub async fn register(&self, name: &str, pwd: &str, encoding: Encoding) -> TimAck {
        post_tim2(self.addr, FrameType::Register, encoding, &auth(name, pwd)).await.expect("register")
    }

    pub async fn token(&self, name: &str, pwd: &str, encoding: Encoding) -> TimAck {
        post_tim2(self.addr, FrameType::Token, encoding, &auth(name, pwd)).await.expect("token")
    }

    /// A connected, logged-in client.
    pub async fn login(&self, name: &str, pwd: &str, encoding: Encoding) -> (Client, TimAck) {
        let mut client = Client::connect(self.addr, encoding).await.expect("connect");
        let ack = client.login(&auth(name, pwd), WAIT).await.expect("login reply");
        (client, ack)
    }
}

#[allow(unsafe_code)]
pub fn send_signal(pid: libc::pid_t, signal: libc::c_int) -> libc::c_int {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test keeps its nodes' logs (their data dirs go), and prints their last
        // warnings and errors: CI keeps the output, not the files.
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("tim-failed-{}.log", self.child.id()));
            if std::fs::copy(self.dir.path().join("tim.log"), &kept).is_ok() {
                eprintln!("log of the node at {} kept in {}", self.addr, kept.display());
            }
            let log = self.log();
            let alarms: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            let shown = &alarms[alarms.len().saturating_sub(LOG_TAIL)..];
            eprintln!("its last {} warnings and errors (of {}):", shown.len(), alarms.len());
            for line in shown {
                eprintln!("  {line}");
            }
        }
    }
}

pub fn auth(name: &str, pwd: &str) -> TimAuth {
    TimAuth { name: Some(name.into()), pwd: Some(pwd.into()), domain: Some("test".into()), ..TimAuth::default() }
}
