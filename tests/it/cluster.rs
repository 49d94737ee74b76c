//! Several `tim` processes on 127.0.0.x as one server.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tim_net::client::Client;
use tim_net::proto::{TimMessage, TimPresence};
use tim_net::{Encoding, FrameType};

use crate::chat::{echo, history, text_to};
use crate::node::{TestNode, WAIT};
use crate::roster::{pushed, request_offline};

/// Slots of a cluster (tim_shard::SLOTS).
const SLOTS: u64 = 4096;

/// How long a cluster may take to form, or to settle after a change.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Nodes that share one deployment secret, each on its own loopback address.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    secret: tempfile::TempDir,
}

impl TestCluster {
    /// `n` nodes: the first founds the cluster, the others join through it; returns once
    /// every slot is owned by a live member that agrees on the placement.
    pub fn start(n: usize, extra: &[&str]) -> TestCluster {
        let secret = tempfile::tempdir().expect("temp dir");
        std::fs::write(secret.path().join("secret.key"), [7u8; 32]).expect("secret");
        let mut cluster = TestCluster { nodes: Vec::new(), secret };
        for _ in 0..n {
            cluster.add(extra);
        }
        cluster.settle(n);
        cluster
    }

    fn secret_file(&self) -> String {
        self.secret.path().join("secret.key").display().to_string()
    }

    /// Starts one more node (on the next loopback address), joining through the first.
    pub fn add(&mut self, extra: &[&str]) -> &TestNode {
        let host = IpAddr::from([127, 0, 0, self.nodes.len() as u8 + 1]);
        let gossip = format!("{host}:0");
        let rpc = format!("{host}:0");
        let secret = self.secret_file();
        let seeds = self.nodes.first().and_then(|n| n.gossip).map(|g| g.to_string());
        let mut args = vec![
            "--gossip-listen",
            &gossip,
            "--rpc-listen",
            &rpc,
            "--secret-file",
            &secret,
            "--gossip-interval-ms",
            "50",
            "--argon2-memory-kib",
            "1024",
        ];
        if let Some(seeds) = &seeds {
            args.extend(["--seeds", seeds]);
        }
        args.extend_from_slice(extra);
        let node = TestNode::start_on(host, tempfile::tempdir().expect("temp dir"), &args);
        self.nodes.push(node);
        self.nodes.last().expect("a node")
    }

    /// The members as node `i` sees them (`tim cluster status --json`).
    pub fn status(&self, i: usize) -> serde_json::Value {
        let rpc = self.nodes[i].rpc.expect("a cluster member").to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tim"))
            .args(["cluster", "status", "--json", "--server", &rpc, "--secret-file", &self.secret_file()])
            .output()
            .expect("tim cluster status");
        assert!(out.status.success(), "tim cluster status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Waits until `n` members are live, agree on the placement and own every slot.
    pub fn settle(&self, n: usize) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let status = self.status(0);
            let members = status.as_array().expect("members");
            let live: Vec<_> = members.iter().filter(|m| m["live"] == true).collect();
            let slots: u64 = live.iter().map(|m| m["slots"].as_u64().unwrap_or(0)).sum();
            let versions: std::collections::HashSet<_> = live.iter().map(|m| m["placement"].to_string()).collect();
            if live.len() == n && slots == SLOTS && versions.len() == 1 {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle: {status:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Users on different nodes of a 3-node cluster befriend each other and chat: each message
/// is echoed to its sender, kept in history (read from a third node) and, for a recipient
/// who was not connected, drained from the offline queue on yet another node.
#[tokio::test]
async fn users_on_different_nodes_chat_as_on_one() {
    let cluster = TestCluster::start(3, &[]);
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let (mut alice, alice_node) = crate::roster::user(a, "alice", Encoding::Json).await;
    let (mut bob, bob_node) = crate::roster::user(b, "bob", Encoding::Compact).await;
    crate::chat::befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    // Live: each message echoed on node A, pushed to Bob on node B, acked there.
    for i in 0..10 {
        alice.send(FrameType::Message, &text_to(&bob_node, &format!("m{i}"), 1)).await.unwrap();
        let echo = echo(&mut alice).await;
        let got = pushed(&mut bob, true).await;
        assert_eq!((got.mid, got.data_string), (echo.mid, Some(format!("m{i}"))));
    }
    drop(bob);
    // His last session ended (on node B): Alice, his friend on node A, is told.
    let frame = alice.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::Presence, "{frame:?}");
    let presence: TimPresence = frame.decode(alice.encoding()).unwrap();
    assert_eq!((presence.offline, presence.from_tid.map(|t| t.node)), (Some(true), Some(bob_node.clone())));
    // Offline: Bob's session is gone; the next ten wait for him.
    for i in 10..20 {
        alice.send(FrameType::Message, &text_to(&bob_node, &format!("m{i}"), 1)).await.unwrap();
        assert!(echo(&mut alice).await.mid.is_some());
    }
    // Bob logs in on the third node: the ten are waiting for him there.
    let (mut bob, _) = c.login("bob", "pw", Encoding::Compact).await;
    let drained = drain_offline(&mut bob).await;
    let texts: Vec<_> = drained.iter().filter_map(|m| m.data_string.clone()).filter(|t| t.starts_with('m')).collect();
    assert_eq!(texts, (10..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let page = history(&mut bob, &alice_node, 0, 50).await;
    assert_eq!(page.len(), 20, "history read through another node");
    let mids: Vec<i64> = page.iter().map(|m| m.mid.unwrap()).collect();
    assert!(mids.windows(2).all(|w| w[0] > w[1]), "newest first, strictly decreasing mids: {mids:?}");
}

/// Everything in the client's offline queue, batch by batch, each acked.
async fn drain_offline(client: &mut Client) -> Vec<TimMessage> {
    let mut all = Vec::new();
    request_offline(client).await;
    loop {
        let frame = client.recv_within(WAIT).await.unwrap();
        match frame.kind {
            FrameType::OfflineMsgEnd => return all,
            FrameType::OfflineMsg => {
                client.ack(frame.ack_id.expect("a batch asks for an ack")).await.unwrap();
                let list: tim_net::proto::TimMessageList = frame.decode(client.encoding()).unwrap();
                all.extend(list.message_list.unwrap_or_default());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
