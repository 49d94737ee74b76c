//! A cluster that changes under load: nodes join, drain and leave, restart one by one, and a
//! dead one is removed, while `tim bench chat` counts every message.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tim_net::client::Client;
use tim_net::{Encoding, FrameType};

use crate::chat::{history, text_to};
use crate::cluster::{chatting_pair, TestCluster, SETTLE};
use crate::node::TestNode;

/// Every node: no message-rate limits (the bench sends steadily).
pub const BASE: &[&str] = &["--rate-connection", "0", "--rate-account", "0"];

/// `tim bench chat` running against some nodes until it is stopped; its JSON report.
pub struct Load {
    child: Child,
    json: tempfile::TempDir,
}

impl Load {
    /// Pairs on different nodes, one message in flight per sender (so a message sent again
    /// cannot overtake the next), for up to ten minutes.
    pub fn start(cluster: &TestCluster) -> Load {
        Self::start_with(cluster, &["--pairs", "12", "--rate", "120", "--window", "1"])
    }

    /// The same with other `tim bench chat` arguments.
    pub fn start_with(cluster: &TestCluster, chat: &[&str]) -> Load {
        let servers: Vec<String> = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
        let json = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tim"))
            .args(["bench", "--server", &servers.join(","), "--prefix", "load", "--json"])
            .arg(json.path().join("report.json"))
            .args(["chat", "--duration", "600"])
            .args(chat)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Load { child, json }
    }

    /// Stops the sending (SIGTERM) and waits for the report: figures by name.
    pub fn finish(mut self) -> std::collections::HashMap<String, f64> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        assert_eq!(crate::node::send_signal(pid, libc::SIGTERM), 0);
        let deadline = Instant::now() + SETTLE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
        }
        let Some(status) = status else { panic!("the bench did not finish: {stderr}") };
        // Shown with a failure: which messages went missing.
        eprintln!("tim bench said: {stderr}");
        assert!(status.success(), "tim bench failed: {stderr}");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.json.path().join("report.json")).unwrap()).unwrap();
        let figures = report["figures"].as_array().unwrap().iter();
        figures.map(|f| (f["name"].as_str().unwrap().to_owned(), f["value"].as_f64().unwrap())).collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until some member says messages flow through it.
pub fn wait_for_traffic(cluster: &TestCluster) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = cluster.status(0);
        if status.as_array().unwrap().iter().any(|m| m["msg_rate"].as_u64() > Some(0)) {
            return;
        }
        assert!(Instant::now() < deadline, "no traffic in the status: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Under a steady chat across three nodes: a fourth joins; one of the four (with
/// `--drain-on-stop`) gets SIGTERM, hands every slot over and stops; then each remaining node
/// restarts in turn. After every step every slot has exactly one owner; at the end the bench
/// counts no message lost, duplicated or reordered, and its clients did log in again (the
/// drained and restarted nodes' clients moved).
#[test]
fn the_cluster_grows_shrinks_and_restarts_under_load_losing_nothing() {
    let mut cluster = TestCluster::start(1, BASE);
    cluster.add(&[BASE, &["--drain-on-stop"]].concat());
    cluster.add(BASE);
    cluster.settle(3);
    let load = Load::start(&cluster);
    wait_for_traffic(&cluster);

    cluster.add(BASE);
    cluster.settle(4);
    cluster.assert_each_slot_owned_once();
    let moved: u64 = cluster.status(0).as_array().unwrap().iter().map(|m| m["moved_slots"].as_u64().unwrap()).sum();
    assert!(moved > 0, "the join moved slots, and the status counts them");

    let mut drained = cluster.nodes.remove(1);
    drained.signal_term();
    assert!(drained.exit_within(SETTLE).success(), "{}", drained.log());
    assert!(drained.log().contains("drained: shutting down"), "{}", drained.log());
    cluster.settle(3);
    cluster.assert_each_slot_owned_once();

    for i in 0..cluster.nodes.len() {
        let node = cluster.nodes.remove(i);
        cluster.nodes.insert(i, node.restart());
        cluster.settle(3);
        cluster.assert_each_slot_owned_once();
    }

    let figures = load.finish();
    let figure = |name: &str| figures.get(name).copied().unwrap_or_else(|| panic!("no figure {name}: {figures:?}"));
    assert!(figure("messages sent") > 100.0, "{figures:?}");
    assert_eq!(figure("messages lost"), 0.0, "{figures:?}");
    assert_eq!(figure("messages duplicated"), 0.0, "{figures:?}");
    assert_eq!(figure("messages reordered"), 0.0, "{figures:?}");
    assert_eq!(figure("messages refused"), 0.0, "{figures:?}");
    assert_eq!(figure("messages echoed"), figure("messages sent"), "{figures:?}");
    assert!(figure("logins again") > 0.0, "clients of the stopped nodes logged in again: {figures:?}");
}

/// Senders keep up to 32 messages in flight (the bench's default window) while a fourth node
/// joins and then a member leaves: every message is delivered once, in the order its sender
/// sent it, and within seconds.
#[test]
fn messages_keep_their_order_through_a_join_and_a_leave() {
    let mut cluster = TestCluster::start(3, BASE);
    let load = Load::start_with(&cluster, &["--pairs", "24", "--rate", "400", "--window", "32"]);
    wait_for_traffic(&cluster);
    cluster.add(BASE);
    cluster.settle(4);
    let out = cluster.leave(1);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut left = cluster.nodes.remove(1);
    assert!(left.exit_within(SETTLE).success(), "{}", left.log());
    cluster.settle(3);
    let figures = load.finish();
    let figure = |name: &str| figures.get(name).copied().unwrap_or_else(|| panic!("no figure {name}: {figures:?}"));
    assert!(figure("messages sent") > 1000.0, "{figures:?}");
    let bad = ["messages lost", "messages duplicated", "messages reordered", "messages refused"].map(figure);
    assert_eq!(bad, [0.0; 4], "{figures:?}");
    assert!(figure("delivery latency max") < 10_000.0, "delivered within seconds: {figures:?}");
}

/// A figure of node `i`'s own line in the status.
pub fn own(cluster: &TestCluster, i: usize, key: &str) -> u64 {
    let id = cluster.nodes[i].id.clone().expect("a member");
    let status = cluster.status(i);
    let me = status.as_array().unwrap().iter().find(|m| m["node"] == id.as_str()).cloned().expect("itself");
    me[key].as_u64().unwrap_or(0)
}

/// How long a join may take to reach its big slot: the empty slots before it go one fenced
/// switch each, slow on a loaded 2-core machine (two rebalance tests side by side).
const MOVE_WAIT: Duration = Duration::from_secs(180);

/// Waits until node `i` has sent `bytes` more of its hand-overs than `from`, with slots still
/// to hand over: a move is under way.
fn wait_mid_move(cluster: &TestCluster, i: usize, from: u64, bytes: u64) -> u64 {
    let deadline = Instant::now() + MOVE_WAIT;
    loop {
        let sent = own(cluster, i, "moved_bytes");
        if sent >= from + bytes && own(cluster, i, "leaving_slots") > 0 {
            return sent;
        }
        if Instant::now() > deadline {
            let log = cluster.nodes[i].log();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!("no move under way: {sent} bytes sent; status {:#}\n{tail}", cluster.status(i));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` messages `m{i}` to `to`, up to 256 in flight (other frames, like the
/// recipient's presence, pass by).
async fn fill(client: &mut Client, to: &str, n: usize) {
    let (mut sent, mut echoed) = (0, 0);
    while echoed < n {
        while sent < n && sent - echoed < 256 {
            client.send(FrameType::Message, &text_to(to, &format!("m{sent}"), 1)).await.unwrap();
            sent += 1;
        }
        let frame = client.recv_within(crate::node::WAIT).await.unwrap();
        assert_ne!(frame.kind, FrameType::Ack, "a message refused: {frame:?}");
        if (frame.kind, frame.ack_id) == (FrameType::Message, None) {
            echoed += 1;
        }
    }
}

/// The whole history with `peer`, newest first, as (mid, text).
async fn whole_history(client: &mut Client, peer: &str) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = Vec::new();
    loop {
        let upto = out.last().map_or(0, |(mid, _)| mid - 1);
        let page = history(client, peer, upto, 100).await;
        if page.is_empty() {
            return out;
        }
        out.extend(page.into_iter().map(|m| (m.mid.unwrap(), m.data_string.unwrap_or_default())));
    }
}

/// A conversation of 100,000 messages moves, paced, to a joining node that weighs 1000 to
/// the founder's 1 (so it takes nearly every slot, that one with them), under a steady chat.
/// The receiving node is killed (-9) mid-move and started again (it removes the part of the
/// slot it held: the copy starts over), then the sending one. The move completes: every slot
/// has one owner, the conversation's history pages are what they were, read through either
/// node, and the bench counts nothing lost, duplicated or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_of_100000_messages_moves_across_kills_of_either_node() {
    // Unsynced writes survive a killed process (the kernel has them): the fill goes faster.
    let mut cluster = TestCluster::start(1, &[BASE, &["--migration-rate", "3000000", "--sync", "false"]].concat());
    let (mut alice, bob_node, bob_acks) = chatting_pair(&cluster).await;
    fill(&mut alice, &bob_node, 100_000).await;
    let before = whole_history(&mut alice, &bob_node).await;
    assert_eq!(before.len(), 100_000);
    drop(alice);
    bob_acks.abort();
    let load = Load::start(&cluster);
    wait_for_traffic(&cluster);

    cluster.add(&[BASE, &["--weight", "1000", "--sync", "false"]].concat());
    let sent = wait_mid_move(&cluster, 0, 0, 1 << 20);
    let receiver = cluster.nodes.pop().unwrap();
    cluster.nodes.push(receiver.kill9_and_restart());
    crate::split::logs(cluster.nodes.last().unwrap(), "removed copies of slots whose hand-over to this node stopped");
    wait_mid_move(&cluster, 0, sent, 1 << 20);
    let sender = cluster.nodes.remove(0);
    cluster.nodes.insert(0, sender.kill9_and_restart());
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
    assert!(own(&cluster, 0, "slots") < 100, "the joining node took nearly every slot");

    for i in 0..2 {
        let (mut alice, ack) = cluster.nodes[i].login("alice", "pw", Encoding::Compact).await;
        assert!(ack.ok, "{ack:?}");
        assert_eq!(whole_history(&mut alice, &bob_node).await, before, "history read through node {i}");
    }
    let figures = load.finish();
    let figure = |name: &str| figures.get(name).copied().unwrap_or_else(|| panic!("no figure {name}: {figures:?}"));
    assert!(figure("messages sent") > 100.0, "{figures:?}");
    let bad = ["messages lost", "messages duplicated", "messages reordered", "messages refused"].map(figure);
    assert_eq!(bad, [0.0; 4], "{figures:?}");
    assert!(figure("logins again") > 0.0, "the sender's clients logged in again: {figures:?}");
}

/// A member killed for good is removed. Without `--force` the command refuses (its slots'
/// data would be lost) and says so; with it, the two others take its slots: every slot has
/// one owner again, accounts stored on the others log in, and the lost ones register anew.
/// Started again on its data, the removed node learns it was removed and stops; after that
/// it refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_removed_and_the_others_take_its_slots() {
    let mut cluster = TestCluster::start(3, BASE);
    let names: Vec<String> = (0..48).map(|i| format!("user{i}")).collect();
    for name in &names {
        assert!(cluster.nodes[0].register(name, "pw", Encoding::Compact).await.ok);
    }
    let dead = cluster.nodes.remove(2);
    let dead_id = dead.id.clone().expect("a member");
    let (dir, host, args) = dead.kill9_for_restart();
    let deadline = Instant::now() + SETTLE;
    let sees_live = |i: usize| {
        cluster.status(i).as_array().unwrap().iter().any(|m| m["node"] == dead_id.as_str() && m["live"] == true)
    };
    while sees_live(0) || sees_live(1) {
        assert!(Instant::now() < deadline, "the killed node still shows live");
        std::thread::sleep(Duration::from_millis(100));
    }

    let refused = cluster.remove(0, &dead_id, false);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "removal without --force refused");
    assert!(said.contains("lost") && said.contains("--force"), "{said}");
    let removed = cluster.remove(1, &dead_id, true);
    let said = String::from_utf8_lossy(&removed.stdout).into_owned();
    assert!(removed.status.success(), "{said}{}", String::from_utf8_lossy(&removed.stderr));
    assert!(said.contains("removed: the other members took its") && said.contains("empty"), "{said}");
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
    let again = cluster.remove(0, &dead_id, false);
    assert!(again.status.success(), "removing it again changes nothing: {}", String::from_utf8_lossy(&again.stderr));

    let (mut kept, mut lost) = (0, 0);
    for name in &names {
        let (_, ack) = cluster.nodes[0].login(name, "pw", Encoding::Compact).await;
        if ack.ok {
            kept += 1;
        } else {
            lost += 1;
            assert!(cluster.nodes[1].register(name, "pw", Encoding::Compact).await.ok, "{name} registers anew");
            assert!(cluster.nodes[0].login(name, "pw", Encoding::Compact).await.1.ok);
        }
    }
    assert!(kept > 0 && lost > 0, "accounts on the survivors kept ({kept}), on the dead node lost ({lost})");

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut back = TestNode::start_on(host, dir, &args);
    back.exit_within(SETTLE);
    assert!(back.log().contains("was removed from the cluster"), "{}", back.log());
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
    let dir = back.kill9();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["serve", "--listen", &format!("{host}:0"), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("removed from its cluster"), "{refused:?}");
}
