//! Several `tim` processes on 127.0.0.x as one server.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tim_net::client::Client;
use tim_net::proto::{TimMessage, TimPresence};
use tim_net::{Encoding, FrameType};

use crate::chat::{echo, history, text_to};
use crate::node::{TestNode, WAIT};
use crate::roster::{drain_offline, pushed};
use crate::topology::topology_test;

/// Slots of a cluster (tim_shard::SLOTS).
const SLOTS: u64 = 4096;

/// How long a cluster may take to form, or to settle after a change.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Nodes that share one deployment secret, each on its own loopback address.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    secret: tempfile::TempDir,
    /// The first three bytes of the nodes' addresses (node `i` is on `.i+1`).
    net: [u8; 3],
    /// Nodes added so far, for the next address.
    added: u8,
}

impl TestCluster {
    /// `n` nodes: the first founds the cluster, the others join through it; returns once
    /// every slot is owned by a live member that agrees on the placement.
    pub fn start(n: usize, extra: &[&str]) -> TestCluster {
        Self::start_in([127, 0, 0], n, extra)
    }

    /// The same on addresses of `net` (a test that cuts links between them owns its `net`).
    pub fn start_in(net: [u8; 3], n: usize, extra: &[&str]) -> TestCluster {
        let secret = tempfile::tempdir().expect("temp dir");
        std::fs::write(secret.path().join("secret.key"), [7u8; 32]).expect("secret");
        let mut cluster = TestCluster { nodes: Vec::new(), secret, net, added: 0 };
        for _ in 0..n {
            cluster.add(extra);
        }
        cluster.settle(n);
        cluster
    }

    /// The address of the next node added.
    pub fn next_host(&self) -> IpAddr {
        let [a, b, c] = self.net;
        IpAddr::from([a, b, c, self.added + 1])
    }

    /// The arguments every node of this cluster takes, on `host`, joining through `seed`.
    pub fn node_args(&self, host: IpAddr, seed: Option<std::net::SocketAddr>) -> Vec<String> {
        let mut args: Vec<String> = [
            "--gossip-listen",
            &format!("{host}:0"),
            "--rpc-listen",
            &format!("{host}:0"),
            "--secret-file",
            &self.secret_file(),
            "--gossip-interval-ms",
            "50",
            "--argon2-memory-kib",
            "1024",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        if let Some(seed) = seed {
            args.extend(["--seeds".to_owned(), seed.to_string()]);
        }
        args
    }

    pub fn secret_file(&self) -> String {
        self.secret.path().join("secret.key").display().to_string()
    }

    /// Starts one more node (on the next address), joining through the first.
    pub fn add(&mut self, extra: &[&str]) -> &TestNode {
        self.add_with_env(extra, &[])
    }

    /// The same, with more environment variables for the node.
    pub fn add_with_env(&mut self, extra: &[&str], envs: &[(String, String)]) -> &TestNode {
        let host = self.next_host();
        self.added += 1;
        let mut args = self.node_args(host, self.nodes.first().and_then(|n| n.gossip));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let node = TestNode::start_with_env(std::net::SocketAddr::new(host, 0), dir, &args, envs);
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

    /// Waits until `n` members are live and ready (a member that starts says `joining` until it
    /// learned from its peers what moved and serves), agree on the placement, own every slot,
    /// and have no slot left to hand over.
    pub fn settle(&self, n: usize) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let status = self.status(0);
            let members = status.as_array().expect("members");
            let live: Vec<_> = members.iter().filter(|m| m["live"] == true).collect();
            let slots: u64 = live.iter().map(|m| m["slots"].as_u64().unwrap_or(0)).sum();
            let versions: std::collections::HashSet<_> = live.iter().map(|m| m["placement"].to_string()).collect();
            let moving: u64 = live.iter().map(|m| m["leaving_slots"].as_u64().unwrap_or(0)).sum();
            let ready = live.iter().all(|m| m["state"] == "ready");
            if live.len() == n && ready && slots == SLOTS && versions.len() == 1 && moving == 0 {
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

topology_test!(
    /// A message sent again with its client `id` (its echo was lost) is stored once and echoed
    /// with its first `mid`; a new message reusing the id is a new message.
    async fn a_message_sent_again_is_stored_once(servers, &[]) {
        let (mut alice, alice_node) = crate::roster::user(servers.at(0), "alice", Encoding::Compact).await;
        let (mut bob, bob_node) = crate::roster::user(servers.at(1), "bob", Encoding::Json).await;
        crate::chat::befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
        let msg = TimMessage { id: Some(4242), ..text_to(&bob_node, "hello", 1) };
        alice.send(FrameType::Message, &msg).await.unwrap();
        let first = echo(&mut alice).await;
        let pushed_first = crate::roster::pushed(&mut bob, false).await;
        assert_eq!(pushed_first.mid, first.mid);
        // The same message again: the same mid, and Bob is not pushed a second copy.
        alice.send(FrameType::Message, &msg).await.unwrap();
        let again = echo(&mut alice).await;
        assert_eq!(again.mid, first.mid, "stored once");
        // The same id with other content is another message (positive control for Bob's side).
        alice.send(FrameType::Message, &TimMessage { id: Some(4242), ..text_to(&bob_node, "other", 1) }).await.unwrap();
        let other = echo(&mut alice).await;
        assert_ne!(other.mid, first.mid);
        let next = crate::roster::pushed(&mut bob, true).await;
        assert_eq!((next.mid, next.data_string.as_deref()), (other.mid, Some("other")), "no repeat pushed before it");
        let page = history(&mut bob, &alice_node, 0, 10).await;
        let texts: Vec<_> = page.iter().filter_map(|m| m.data_string.as_deref()).collect();
        assert_eq!(texts, ["other", "hello"]);
    }
);

impl TestCluster {
    /// The slots node `i` owns, from its own records.
    pub fn owned(&self, i: usize) -> Vec<u64> {
        let rpc = self.nodes[i].rpc.expect("a cluster member").to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tim"))
            .args(["cluster", "slots", "--server", &rpc, "--secret-file", &self.secret_file()])
            .output()
            .expect("tim cluster slots");
        assert!(out.status.success(), "tim cluster slots: {}", String::from_utf8_lossy(&out.stderr));
        let slots: Vec<(u64, u64)> = serde_json::from_slice(&out.stdout).expect("slots JSON");
        slots.into_iter().map(|(slot, _)| slot).collect()
    }

    /// `tim cluster leave` for node `i`: its output once the node said it handed every slot
    /// over (or failed).
    pub fn leave(&self, i: usize) -> std::process::Output {
        let rpc = self.nodes[i].rpc.expect("a cluster member").to_string();
        std::process::Command::new(env!("CARGO_BIN_EXE_tim"))
            .args(["cluster", "leave", "--timeout", "120", "--server", &rpc, "--secret-file", &self.secret_file()])
            .output()
            .expect("tim cluster leave")
    }

    /// `tim cluster remove NODE` asked of node `via`.
    pub fn remove(&self, via: usize, node: &str, force: bool) -> std::process::Output {
        self.remove_all(via, &[node.to_owned()], force)
    }

    /// `tim cluster remove NODE…` asked of node `via`.
    pub fn remove_all(&self, via: usize, nodes: &[String], force: bool) -> std::process::Output {
        let rpc = self.nodes[via].rpc.expect("a cluster member").to_string();
        let mut args = vec!["cluster", "remove"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--server", &rpc]);
        if force {
            args.push("--force");
        }
        let secret = self.secret_file();
        args.extend(["--secret-file", &secret]);
        std::process::Command::new(env!("CARGO_BIN_EXE_tim")).args(args).output().expect("tim cluster remove")
    }

    /// Every slot is owned by exactly one node, by the nodes' own records. The nodes are read
    /// one after another, so a move finishing between two reads would count its slot twice
    /// (or not at all): they are read until two rounds agree, the moves over.
    pub fn assert_each_slot_owned_once(&self) {
        let round = || (0..self.nodes.len()).map(|i| self.owned(i)).collect::<Vec<_>>();
        let deadline = Instant::now() + SETTLE;
        let mut last = round();
        loop {
            let now = round();
            if now == last {
                break;
            }
            assert!(Instant::now() < deadline, "slot ownership still changing after {SETTLE:?}");
            last = now;
        }
        let mut owners = vec![0u32; SLOTS as usize];
        for slot in last.into_iter().flatten() {
            owners[slot as usize] += 1;
        }
        let wrong: Vec<_> = owners.iter().enumerate().filter(|(_, n)| **n != 1).take(10).collect();
        assert!(wrong.is_empty(), "slots not owned exactly once (slot, owners): {wrong:?}");
    }
}

/// Sends `text` to `to` with client id `id` until it is echoed (a refusal 5102, the slot
/// being moved, is answered by sending the same message again); the echo.
async fn send_until_echoed(client: &mut Client, to: &str, id: i64, text: &str) -> TimMessage {
    let deadline = Instant::now() + SETTLE;
    loop {
        client.send(FrameType::Message, &TimMessage { id: Some(id), ..text_to(to, text, 1) }).await.unwrap();
        let frame = client.recv_within(WAIT).await.unwrap();
        match frame.kind {
            FrameType::Message => return frame.decode(client.encoding()).unwrap(),
            FrameType::Ack => {
                let ack: tim_net::proto::TimAck = frame.decode(client.encoding()).unwrap();
                assert_eq!(ack.error_code(), Some(5102), "only 'try again' while slots move: {ack:?}");
                assert!(Instant::now() < deadline, "message {id} never accepted");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A fourth node joins a cluster while a conversation goes on across nodes: every message
/// is stored once, in order, with no gap; afterwards every slot has exactly one owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_while_messages_flow() {
    let mut cluster = TestCluster::start(3, &[]);
    let (mut alice, bob_node, bob_acks) = chatting_pair(&cluster).await;
    const N: i64 = 150;
    let to = bob_node.clone();
    let sender = tokio::spawn(async move {
        let mut mids = Vec::new();
        for i in 0..N {
            let echo = send_until_echoed(&mut alice, &to, 1000 + i, &format!("m{i}")).await;
            mids.push(echo.mid.unwrap());
        }
        (alice, mids)
    });
    cluster.add(&[]);
    let (mut alice, mids) = sender.await.unwrap();
    cluster.settle(4);
    cluster.assert_each_slot_owned_once();
    assert_history(&mut alice, &bob_node, &mids).await;
    bob_acks.abort();
}

/// Mids increase in the order of sending, and the history, paged from the newest, holds
/// message `m{i}` for each of them: once, in order, nothing else.
async fn assert_history(client: &mut Client, with: &str, mids: &[i64]) {
    assert!(mids.windows(2).all(|w| w[0] < w[1]), "mids increase in the order of sending: {mids:?}");
    let mut texts = Vec::new();
    let mut upto = 0;
    loop {
        let page = history(client, with, upto, 50).await;
        let Some(last) = page.last().and_then(|m| m.mid) else { break };
        texts.extend(page.iter().filter_map(|m| m.data_string.clone()));
        upto = last - 1;
    }
    texts.reverse();
    assert_eq!(texts, (0..mids.len()).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

/// Alice (on node 0) and Bob (on node 1, the last one if there is one node) as friends, Bob acking his pushes in the background.
pub async fn chatting_pair(cluster: &TestCluster) -> (Client, String, tokio::task::JoinHandle<()>) {
    let (mut alice, alice_node) = crate::roster::user(&cluster.nodes[0], "alice", Encoding::Compact).await;
    let bob_at = cluster.nodes.len().min(2) - 1;
    let (mut bob, bob_node) = crate::roster::user(&cluster.nodes[bob_at], "bob", Encoding::Json).await;
    crate::chat::befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    let bob_acks = tokio::spawn(async move {
        while let Ok(frame) = bob.recv_within(SETTLE).await {
            if let Some(id) = frame.ack_id {
                let _ = bob.ack(id).await;
            }
        }
    });
    (alice, bob_node, bob_acks)
}

/// A node leaves the cluster (`tim cluster leave`) while a conversation goes on across the
/// others: it hands every slot over and stops by itself; every message is stored once, in
/// order; every account survives; every slot has one owner. Started again on its old data,
/// it stays out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_leaves_while_messages_flow() {
    // Alice sends for as long as the leave takes: no message-rate limits.
    let mut cluster = TestCluster::start(3, &["--rate-connection", "0", "--rate-account", "0"]);
    let names: Vec<String> = (0..48).map(|i| format!("user{i}")).collect();
    for name in &names {
        assert!(cluster.nodes[0].register(name, "pw", Encoding::Compact).await.ok);
    }
    assert!(!cluster.owned(2).is_empty(), "the leaving node owns slots");
    let (mut alice, bob_node, bob_acks) = chatting_pair(&cluster).await;
    let (done, mut stop) = tokio::sync::watch::channel(false);
    let to = bob_node.clone();
    let sender = tokio::spawn(async move {
        let mut mids = Vec::new();
        while mids.len() < 50 || !*stop.borrow_and_update() {
            let i = mids.len();
            let echo = send_until_echoed(&mut alice, &to, 1000 + i as i64, &format!("m{i}")).await;
            mids.push(echo.mid.unwrap());
        }
        (alice, mids)
    });
    // The status shows the load: Alice's node has her session and her messages.
    let alice_node_id = cluster.nodes[0].id.clone().expect("a member");
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = cluster.status(1);
        let me = status.as_array().unwrap().iter().find(|m| m["node"] == alice_node_id.as_str()).cloned();
        let me = me.expect("node 0 in the status");
        if me["sessions"].as_u64() >= Some(1) && me["msg_rate"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "no load in the status: {me:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = cluster.leave(2);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tim cluster leave: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("has handed every slot over"), "{said}");
    let mut gone = cluster.nodes.remove(2);
    assert!(gone.exit_within(SETTLE).success(), "the node that left stops cleanly: {}", gone.log());
    done.send_replace(true);
    let (mut alice, mids) = sender.await.unwrap();
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
    assert_history(&mut alice, &bob_node, &mids).await;
    for (i, name) in names.iter().enumerate() {
        let (_, ack) = cluster.nodes[i % 2].login(name, "pw", Encoding::Compact).await;
        assert!(ack.ok, "{name} after the leave: {ack:?}");
    }
    // Its records keep it leaving: started again, it takes nothing and stops by itself.
    let (dir, host, args) = gone.kill9_for_restart();
    let mut again = TestNode::start_on(host, dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.exit_within(SETTLE).success(), "{}", again.log());
    assert!(again.log().contains("its records say so"), "{}", again.log());
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
    bob_acks.abort();
}

/// A node killed with SIGKILL: users whose data it owns get "try again" (5102) at once, the
/// others are served; after its restart everyone is.
#[tokio::test]
async fn a_killed_node_fails_only_its_own_users_until_it_is_back() {
    let mut cluster = TestCluster::start(3, &[]);
    let names: Vec<String> = (0..24).map(|i| format!("user{i}")).collect();
    for name in &names {
        assert!(cluster.nodes[0].register(name, "pw", Encoding::Compact).await.ok);
    }
    let dead = cluster.nodes.remove(2);
    let (dir, host, args) = dead.kill9_for_restart();
    let mut refused = Vec::new();
    for name in &names {
        let (_, ack) = cluster.nodes[0].login(name, "pw", Encoding::Compact).await;
        if !ack.ok {
            assert_eq!(ack.error_code(), Some(5102), "{name}: {ack:?}");
            refused.push(name.clone());
        }
    }
    assert!(
        !refused.is_empty() && refused.len() < names.len(),
        "some users are on the dead node, not all: {refused:?}"
    );
    // Back: the same data dir, the same member; everyone logs in (a login may still get "try
    // again" until gossip has spread the restarted node's new addresses: a client retries).
    cluster.nodes.push(TestNode::start_on(host, dir, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    cluster.settle(3);
    let deadline = Instant::now() + SETTLE;
    for name in &refused {
        loop {
            let (_, ack) = cluster.nodes[0].login(name, "pw", Encoding::Compact).await;
            if ack.ok {
                break;
            }
            assert_eq!(ack.error_code(), Some(5102), "{name} after the restart: {ack:?}");
            assert!(Instant::now() < deadline, "{name} still refused after the restart");
        }
    }
}

/// A node started with another deployment secret cannot join: the cluster refuses its
/// gossip and says so, the newcomer says nobody answered, and the members stay as they were.
#[tokio::test]
async fn a_node_with_another_secret_is_refused() {
    let cluster = TestCluster::start(1, &[]);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("other.key"), [9u8; 32]).unwrap();
    let seeds = cluster.nodes[0].gossip.unwrap().to_string();
    let secret = other.path().join("other.key").display().to_string();
    let stranger = TestNode::start_on(
        IpAddr::from([127, 0, 0, 2]),
        tempfile::tempdir().unwrap(),
        &[
            "--gossip-listen",
            "127.0.0.2:0",
            "--rpc-listen",
            "127.0.0.2:0",
            "--secret-file",
            &secret,
            "--seeds",
            &seeds,
            "--gossip-interval-ms",
            "50",
        ],
    );
    let deadline = Instant::now() + SETTLE;
    while !cluster.nodes[0].log().contains("gossip refused: bad authentication tag") {
        assert!(Instant::now() < deadline, "the cluster did not log the refusal:\n{}", cluster.nodes[0].log());
        std::thread::sleep(Duration::from_millis(100));
    }
    while !stranger.log().contains("no member answered gossip") {
        assert!(Instant::now() < deadline, "the newcomer did not log it was not heard:\n{}", stranger.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let members = cluster.status(0);
    assert_eq!(members.as_array().unwrap().len(), 1, "{members:#}");
}
