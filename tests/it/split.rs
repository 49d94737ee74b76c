//! Ownership that cannot split: every path on which a slot could change hands without its old
//! owner's consent, tried with real processes that disagree (shard/README.md, "Who must
//! agree").

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tim_net::client::Client;
use tim_net::proto::{TimAck, TimMessage};
use tim_net::{Encoding, FrameType};
use tokio::sync::watch;

use crate::chat::text_to;
use crate::cluster::{TestCluster, SETTLE};
use crate::cut::Cut;
use crate::node::TestNode;
use crate::rebalance::{own, BASE};

/// Waits until `node` stops by itself, with a failure, having logged `why`.
fn stops_refusing(node: &mut TestNode, why: &str) {
    let status = node.exit_within(SETTLE);
    assert!(!status.success(), "the node stops with a failure: {}", node.log());
    assert!(node.log().contains(why), "the node says why ({why}):\n{}", node.log());
}

/// Waits until some node's log says `what`.
pub fn logs(node: &TestNode, what: &str) {
    let deadline = Instant::now() + SETTLE;
    while !node.log().contains(what) {
        assert!(Instant::now() < deadline, "no `{what}` in the log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node that once founded a cluster of its own, started again with seeds of another cluster
/// (same secret), is refused by the cluster and stops: both sides say so, and the cluster stays
/// as it was. A node on a fresh data dir joins through the same seed (the positive control).
#[tokio::test]
async fn a_node_that_founded_its_own_cluster_is_not_taken_into_another() {
    let mut cluster = TestCluster::start(3, &[]);
    let host = cluster.next_host();
    let args = cluster.node_args(host, None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loner = TestNode::start_on(host, tempfile::tempdir().unwrap(), &args);
    cluster.nodes.push(loner);
    let deadline = Instant::now() + SETTLE;
    while cluster.owned(3).len() < 4096 {
        assert!(Instant::now() < deadline, "the loner did not found its cluster");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = cluster.nodes.pop().unwrap().kill9();
    let seed = cluster.nodes[0].gossip.unwrap();
    let seeded = cluster.node_args(host, Some(seed));
    let seeded: Vec<&str> = seeded.iter().map(String::as_str).collect();
    let mut again = TestNode::start_on(host, dir, &seeded);
    stops_refusing(&mut again, "belongs to cluster incarnation");
    logs(&cluster.nodes[0], "gossip refused: a node of another cluster incarnation");
    let status = cluster.status(0);
    assert_eq!(status.as_array().unwrap().len(), 3, "{status:#}");
    cluster.settle(3);
    cluster.assert_each_slot_owned_once();
    cluster.add(&[]);
    cluster.settle(4);
    cluster.assert_each_slot_owned_once();
}

/// The founder's disk is wiped and it is started again with its seedless command line: it
/// does not found a second cluster over the first (whose members still gossip to its
/// address), and the others keep it out.
#[tokio::test]
async fn a_seed_whose_disk_was_wiped_does_not_found_a_cluster_over_its_own() {
    let mut cluster = TestCluster::start(3, &[]);
    let founder = cluster.nodes.remove(0);
    let mut wiped = founder.kill9_and_start_wiped();
    stops_refusing(&mut wiped, "does not found a new cluster");
    assert!(!wiped.log().contains("founded a new cluster"), "{}", wiped.log());
}

/// A member restarted with another weight, then a fourth node joins: every live member ends
/// with one placement version, and the joiner takes its share.
#[tokio::test]
async fn a_weight_change_and_a_join_end_with_one_placement() {
    let mut cluster = TestCluster::start(3, &[]);
    let third = cluster.nodes.pop().unwrap();
    let (dir, host, args) = third.kill9_for_restart();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--weight", "3"]);
    cluster.nodes.push(TestNode::start_on(host, dir, &args));
    cluster.settle(3);
    let heavy = own(&cluster, 2, "slots");
    assert!(heavy > 1600, "weight 3 of 5 takes about 60% of the slots: {heavy}");
    cluster.add(&[]);
    cluster.settle(4);
    cluster.assert_each_slot_owned_once();
    assert!(own(&cluster, 3, "slots") > 300, "the joiner took its share");
}

/// Two of five members die at once: each is removed with `--force` (one, then both named
/// in one command), saying what it costs; without `--force` the removal refuses. The three
/// left own every slot, once.
#[tokio::test]
async fn two_dead_members_are_removed_with_force() {
    let mut cluster = TestCluster::start(5, BASE);
    let ids: Vec<String> = cluster.nodes[3..].iter().map(|n| n.id.clone().unwrap()).collect();
    for node in cluster.nodes.drain(3..) {
        node.kill9();
    }
    wait_dead(&cluster, &ids, 3);
    let refused = cluster.remove(0, &ids[0], false);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(said.contains("lost") && said.contains("--force"), "{said}");
    let first = cluster.remove(0, &ids[0], true);
    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first.status.success(), "{said}{}", String::from_utf8_lossy(&first.stderr));
    assert!(said.contains("empty") && said.contains("lost"), "says what it cost: {said}");
    let both = cluster.remove_all(1, &ids, true);
    assert!(both.status.success(), "{}", String::from_utf8_lossy(&both.stderr));
    cluster.settle(3);
    cluster.assert_each_slot_owned_once();
}

/// Waits until the first `viewers` nodes of `cluster` see the nodes `ids` dead.
pub fn wait_dead(cluster: &TestCluster, ids: &[String], viewers: usize) {
    let deadline = Instant::now() + SETTLE;
    for i in 0..viewers {
        while cluster
            .status(i)
            .as_array()
            .unwrap()
            .iter()
            .any(|m| ids.contains(&m["node"].as_str().unwrap().to_owned()) && m["live"] == true)
        {
            assert!(Instant::now() < deadline, "the killed nodes still show live");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A node killed -9 while it leaves (slow moves, data in its slots) is not removed without
/// `--force`: it holds slots whose data no live member has. Started again on its data it goes
/// on leaving, hands everything over and stops; every slot is owned once, every account logs
/// in.
#[tokio::test]
async fn a_node_killed_while_leaving_is_not_removed_without_force() {
    let slow = ["--migration-rate", "2000", "--migration-slots", "1"];
    let mut cluster = TestCluster::start(3, &[BASE, &slow].concat());
    let names: Vec<String> = (0..150).map(|i| format!("user{i}")).collect();
    for name in &names {
        assert!(cluster.nodes[0].register(name, "pw", Encoding::Compact).await.ok);
    }
    let leaving_id = cluster.nodes[2].id.clone().unwrap();
    let rpc = cluster.nodes[2].rpc.unwrap().to_string();
    let secret = cluster.secret_file();
    let mut leave = std::process::Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["cluster", "leave", "--server", &rpc, "--secret-file", &secret])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    while !(own(&cluster, 2, "moved_slots") > 0 && own(&cluster, 2, "slots") > 100) {
        assert!(Instant::now() < deadline, "the node did not start leaving");
        std::thread::sleep(Duration::from_millis(20));
    }
    let node = cluster.nodes.pop().unwrap();
    let (dir, host, args) = node.kill9_for_restart();
    let _ = leave.kill();
    let _ = leave.wait();
    wait_dead(&cluster, std::slice::from_ref(&leaving_id), 2);
    let refused = cluster.remove(0, &leaving_id, false);
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "a leaving node with data is not removed without --force");
    assert!(said.contains("hold") && said.contains("--force"), "{said}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut again = TestNode::start_on(host, dir, &args);
    assert!(again.exit_within(Duration::from_secs(180)).success(), "it finishes leaving: {}", again.log());
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
    for name in &names {
        let (_, ack) = cluster.nodes[0].login(name, "pw", Encoding::Compact).await;
        assert!(ack.ok, "{name}: {ack:?}");
    }
}

/// A member restarted on an old copy of its data dir serves nothing that moved since: a
/// heavy fourth node took nearly every slot in between, and the restored node learns it from
/// the others before it serves.
#[tokio::test]
async fn a_node_restarted_from_an_old_copy_of_its_data_serves_nothing_that_moved() {
    let mut cluster = TestCluster::start(3, &[]);
    let third = cluster.nodes.pop().unwrap();
    let (dir, host, args) = third.kill9_for_restart();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("data"), &copy.path().join("data"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.nodes.push(TestNode::start_on(host, dir, &args));
    cluster.settle(3);
    let before = cluster.owned(2);
    cluster.add(&["--weight", "1000"]);
    cluster.settle(4);
    let moved = before.iter().filter(|s| !cluster.owned(2).contains(s)).count();
    assert!(moved > before.len() / 2, "most of its slots moved: {moved} of {}", before.len());
    let third = cluster.nodes.remove(2);
    let (_, host, args) = third.kill9_for_restart();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let restored = TestNode::start_on(host, copy, &args);
    cluster.nodes.insert(2, restored);
    cluster.settle(4);
    cluster.assert_each_slot_owned_once();
    assert!(cluster.nodes[2].log().contains("slot superseded"), "{}", cluster.nodes[2].log());
}

/// Copies a directory tree (a stopped node's data dir).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What a sender's message got, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Echoed(Instant),
    Refused(Instant),
}

type Answers = Arc<Mutex<Vec<Answer>>>;

/// Sends messages to `to` one after the other (each waits for its answer) until `stop`,
/// recording what each got.
async fn keep_sending(mut client: Client, to: String, answers: Answers, stop: watch::Receiver<bool>) {
    let mut id = 0;
    while !*stop.borrow() {
        id += 1;
        let msg = TimMessage { id: Some(id), ..text_to(&to, &format!("m{id}"), 1) };
        client.send(FrameType::Message, &msg).await.unwrap();
        let answer = loop {
            // The connection ends when the node stops (removed, after the test's checks).
            let Ok(frame) = client.recv_within(SETTLE).await else { return };
            match (frame.kind, frame.ack_id) {
                (FrameType::Message, None) => break Answer::Echoed(Instant::now()),
                (FrameType::Ack, _) => {
                    let ack: TimAck = frame.decode(client.encoding()).unwrap();
                    assert_eq!(ack.error_code(), Some(5102), "only 'try again': {ack:?}");
                    break Answer::Refused(Instant::now());
                }
                _ => {}
            }
        };
        answers.lock().unwrap().push(answer);
    }
}

/// `remove --force` of a node that is alive, with its clients, but cut off from the other
/// members: it stops acknowledging writes within its lease of the cut, and `remove` returns
/// only after that, so no client is acknowledged a write by it once the removal returned
/// (its clients go on sending, and each of their messages gets an answer: a refusal). Once
/// the cut heals, it learns it was removed and stops; the others own every slot, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_stops_acknowledging_before_its_removal_returns() {
    let net = [127, 0, 9];
    let mut cluster = TestCluster::start_in(net, 3, BASE);
    let lease = Duration::from_secs(4);
    let stop = watch::Sender::new(false);
    let mut senders = Vec::new();
    for i in 0..8 {
        let (mut a, a_node) = crate::roster::user(&cluster.nodes[2], &format!("a{i}"), Encoding::Compact).await;
        let (mut b, b_node) = crate::roster::user(&cluster.nodes[2], &format!("b{i}"), Encoding::Compact).await;
        crate::chat::befriend(&mut a, &a_node, &mut b, &b_node).await;
        tokio::spawn(async move {
            while let Ok(frame) = b.recv_within(SETTLE).await {
                if let Some(id) = frame.ack_id {
                    let _ = b.ack(id).await;
                }
            }
        });
        let answers = Answers::default();
        senders.push((tokio::spawn(keep_sending(a, b_node, answers.clone(), stop.subscribe())), answers));
    }
    let count = |from: Instant, echoed: bool| {
        let after = |a: &&Answer| match **a {
            Answer::Echoed(at) => at > from,
            Answer::Refused(at) => !echoed && at > from,
        };
        senders.iter().map(|(_, answers)| answers.lock().unwrap().iter().filter(after).count()).collect::<Vec<_>>()
    };
    // The positive control: the node's clients are acknowledged while it is connected.
    let started = Instant::now();
    let deadline = started + SETTLE;
    while count(started, true).iter().sum::<usize>() < 20 {
        assert!(Instant::now() < deadline, "no echoes before the cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_off = cluster.nodes[2].id.clone().unwrap();
    let cut = Cut::off(host_in(net, 2), &[host_in(net, 0), host_in(net, 1)]);
    let cut_at = Instant::now();
    wait_dead(&cluster, std::slice::from_ref(&cut_off), 2);
    let removed = cluster.remove(0, &cut_off, true);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let removed_at = Instant::now();
    assert!(removed_at - cut_at > lease + Duration::from_secs(1), "the removal waited past the node's lease");
    // Every sender is answered three times more after the removal returned.
    let deadline = Instant::now() + SETTLE;
    while count(removed_at, false).iter().any(|n| *n < 3) {
        assert!(Instant::now() < deadline, "senders not answered: {:?}", count(removed_at, false));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send_replace(true);
    assert_eq!(count(removed_at, true).iter().sum::<usize>(), 0, "echoes after the removal returned");
    let late = count(cut_at + lease + Duration::from_secs(2), true).iter().sum::<usize>();
    assert_eq!(late, 0, "echoes after the lease of the cut ended");
    for (sender, _) in senders {
        sender.await.unwrap();
    }
    drop(cut);
    let mut gone = cluster.nodes.pop().unwrap();
    stops_refusing(&mut gone, "was removed from the cluster");
    cluster.settle(2);
    cluster.assert_each_slot_owned_once();
}

/// A slot adopted after its owner was removed issues ids above every id it issued before, on
/// any node: conversations whose history was on the removed node go on with `mid`s above the
/// ones their users saw (some do: their history is empty after the removal). A pair counts
/// when both accounts survive and the conversation did not, about one pair in seven: of 64
/// pairs, none counts once in 30,000 runs.
#[tokio::test]
async fn ids_keep_increasing_through_an_adoption() {
    let mut cluster = TestCluster::start(3, &[BASE, &["--message-noauth", "true"]].concat());
    let mut pairs = Vec::new();
    for i in 0..64 {
        let (mut a, _) = crate::roster::user(&cluster.nodes[0], &format!("a{i}"), Encoding::Compact).await;
        let b_node = cluster.nodes[1].register(&format!("b{i}"), "pw", Encoding::Compact).await.n.unwrap();
        let mut mids = Vec::new();
        for m in 0..3 {
            a.send(FrameType::Message, &text_to(&b_node, &format!("m{m}"), 1)).await.unwrap();
            mids.push(crate::chat::echo(&mut a).await.mid.unwrap());
        }
        pairs.push((format!("a{i}"), b_node, mids));
    }
    let dead = cluster.nodes.pop().unwrap();
    let dead_id = dead.id.clone().unwrap();
    dead.kill9();
    wait_dead(&cluster, std::slice::from_ref(&dead_id), 2);
    let removed = cluster.remove(0, &dead_id, true);
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let mut started_over = 0;
    for (a, b_node, mids) in &pairs {
        let (mut a, ack) = cluster.nodes[0].login(a, "pw", Encoding::Compact).await;
        if !ack.ok {
            continue; // its account was on the removed node
        }
        let forgotten = crate::chat::history(&mut a, b_node, 0, 10).await.is_empty();
        a.send(FrameType::Message, &text_to(b_node, "after", 1)).await.unwrap();
        let frame = a.recv_within(crate::node::WAIT).await.unwrap();
        if frame.kind == FrameType::Ack {
            let ack: TimAck = frame.decode(a.encoding()).unwrap();
            assert_eq!(ack.error_code(), Some(4106), "only a recipient lost with the node: {ack:?}");
            continue;
        }
        let mid = frame.decode::<TimMessage>(a.encoding()).unwrap().mid.unwrap();
        assert!(mids.iter().all(|old| *old < mid), "mid {mid} after {mids:?}");
        assert!(mid < 1 << 53);
        started_over += usize::from(forgotten);
    }
    assert!(started_over > 0, "some conversations were on the removed node");
}

/// The shared library that fakes a process's wall clock (Debian's libfaketime).
fn faketime() -> String {
    let paths = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    ];
    let found = paths.into_iter().find(|p| std::path::Path::new(p).exists());
    found.expect("libfaketime (Debian's package, which `make test` installs)").to_owned()
}

/// A member's wall clock steps ten minutes ahead while it runs: the others go on hearing it
/// (what it gossips after the step reaches them), so it cannot be removed while it serves.
/// Started again with its clock ten minutes behind, it is the same member, newer: the others
/// take its new generation and it serves.
#[tokio::test]
async fn a_clock_step_of_minutes_neither_hides_a_node_nor_lets_it_be_removed() {
    let mut cluster = TestCluster::start(2, &[]);
    let clock = tempfile::tempdir().unwrap();
    let offset = clock.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let envs: Vec<(String, String)> = [
        ("LD_PRELOAD", faketime()),
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_CACHE_DURATION", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    cluster.add_with_env(&[], &envs);
    cluster.settle(3);
    let id = cluster.nodes[2].id.clone().unwrap();
    let seen = |cluster: &TestCluster, key: &str| {
        let status = cluster.status(0);
        let me = status.as_array().unwrap().iter().find(|m| m["node"] == id.as_str()).cloned().unwrap();
        (me["live"] == true, me[key].as_u64().unwrap_or(0))
    };
    let before = seen(&cluster, "generation").1;
    std::fs::write(&offset, "+10m\n").unwrap();
    // What the node gossips after the step (a session of its own) reaches the others.
    let (_client, _) = crate::roster::user(&cluster.nodes[2], "clocked", Encoding::Compact).await;
    let deadline = Instant::now() + SETTLE;
    while seen(&cluster, "sessions") != (true, 1) {
        assert!(Instant::now() < deadline, "the others do not hear the node after its clock step");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = cluster.remove(0, &id, true);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is live"), "{refused:?}");
    std::fs::write(&offset, "-10m\n").unwrap();
    let node = cluster.nodes.pop().unwrap();
    cluster.nodes.push(node.restart());
    cluster.settle(3);
    assert!(seen(&cluster, "generation").1 > before, "a newer generation, although the clock went back");
    cluster.assert_each_slot_owned_once();
}

/// The address of node `i` of a cluster started in `net`.
pub fn host_in(net: [u8; 3], i: u8) -> IpAddr {
    IpAddr::from([net[0], net[1], net[2], i + 1])
}
