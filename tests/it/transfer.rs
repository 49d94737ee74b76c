//! `tim export` and `tim import`: a cluster's data to a file and into another cluster, where
//! every client sees what it saw before.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use tim_net::proto::{TimMessage, TimNodes, TimUserBean};
use tim_net::{Encoding, FrameType};

use crate::chat::{befriend, echo, history, text_to};
use crate::cluster::TestCluster;
use crate::groups::{group_history, new_group, nodes, to_group};
use crate::node::{TestNode, WAIT};
use crate::profiles::{modify_user, nodes_request};
use crate::rebalance::{own, wait_for_traffic, Load, BASE};
use crate::roster::{business, drain_offline, pushed, roster_of, user};
use crate::wait::until;

fn tim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tim")).args(args).output().expect("run tim")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn export(admin: SocketAddr, secret: &str, to: &Path, extra: &[&str]) -> Output {
    let (admin, to) = (admin.to_string(), to.display().to_string());
    let mut args = vec!["export", "--to", &to, "--server", &admin, "--secret-file", secret];
    args.extend_from_slice(extra);
    tim(&args)
}

fn import(admin: SocketAddr, secret: &str, from: &Path, extra: &[&str]) -> Output {
    let (admin, from) = (admin.to_string(), from.display().to_string());
    let mut args = vec!["import", "--from", &from, "--server", &admin, "--secret-file", secret];
    args.extend_from_slice(extra);
    tim(&args)
}

/// `export` as a child process, waited for on the blocking pool.
fn export_in_background(admin: SocketAddr, secret: &str, to: &Path) -> JoinHandle<Output> {
    let (admin, to) = (admin.to_string(), to.display().to_string());
    let child = Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["export", "--to", &to, "--server", &admin, "--secret-file", secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tim");
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait for tim"))
}

/// A relay for one connection to `node`: the request goes through at once, the answer once
/// `release` is sent, and only its first `limit` bytes before the relay closes. Its task ends
/// with the number of bytes of the answer passed on.
async fn relay(node: SocketAddr, limit: u64) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = oneshot::channel();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_node, mut to_node) = TcpStream::connect(node).await.unwrap().into_split();
        tokio::spawn(async move { tokio::io::copy(&mut from_client, &mut to_node).await });
        if released.await.is_err() {
            return 0;
        }
        tokio::io::copy(&mut (&mut from_node).take(limit), &mut to_client).await.unwrap_or(0)
    });
    (addr, release, task)
}

/// The number after `label` in a tool's output.
fn count_after(out: &str, label: &str) -> u64 {
    let at = out.find(label).unwrap_or_else(|| panic!("no {label:?} in {out}"));
    out[at + label.len()..].split_whitespace().next().and_then(|n| n.parse().ok()).expect("a count")
}

/// A message as a client sees it in a list.
fn seen(m: &TimMessage) -> String {
    format!(
        "mid={:?} from={:?} room={:?} text={:?}",
        m.mid,
        m.from_tid.as_ref().map(|t| &t.node),
        m.room_tid.as_ref().map(|t| &t.node),
        m.data_string
    )
}

/// Everything `name` sees when it logs in at `node`: friends, blocks, groups and their
/// members, 1:1 and group history, its profile, and its offline queue (drained).
async fn view(node: &TestNode, name: &str, peers: &[String], groups: &[String]) -> Vec<String> {
    let (mut c, ack) = node.login(name, "pw", Encoding::Compact).await;
    assert!(ack.ok, "{name} logs in: {ack:?}");
    let me = ack.n.unwrap();
    let mut v = vec![format!("friends {:?}", roster_of(&mut c, 1).await)];
    v.push(format!("blocks {:?}", roster_of(&mut c, 18).await));
    let mine = nodes(&mut c, 2, None).await;
    v.push(format!("groups {mine:?}"));
    for group in groups.iter().filter(|g| mine.contains(g)) {
        v.push(format!("members of {group} {:?}", nodes(&mut c, 3, Some(group)).await));
        v.extend(group_history(&mut c, group).await.iter().map(seen));
    }
    for peer in peers.iter().filter(|p| **p != me) {
        v.extend(history(&mut c, peer, 0, 100).await.iter().map(|m| format!("with {peer}: {}", seen(m))));
    }
    let profile = nodes_request(&mut c, TimNodes { ntype: 4, nodelist: Some(vec![me]), ..TimNodes::default() }).await;
    v.push(format!("profile {:?}", profile.map(|p| p.usermap)));
    v.extend(drain_offline(&mut c).await.iter().map(|m| format!("offline {}", seen(m))));
    v
}

/// Users with friends, a block, a group with its messages, 1:1 history, a profile and
/// offline queues, spread over the cluster's nodes.
async fn fill(cluster: &TestCluster) -> (Vec<String>, Vec<String>) {
    let at = |i: usize| &cluster.nodes[i % cluster.nodes.len()];
    let (mut ann, ann_node) = user(at(0), "ann", Encoding::Json).await;
    let (mut ben, ben_node) = user(at(1), "ben", Encoding::Compact).await;
    let (mut cid, cid_node) = user(at(0), "cid", Encoding::Compact).await;
    let (mut dot, dot_node) = user(at(1), "dot", Encoding::Compact).await;
    befriend(&mut ann, &ann_node, &mut ben, &ben_node).await;
    befriend(&mut ann, &ann_node, &mut cid, &cid_node).await;
    business(&mut dot, 7, Some(&ann_node), None).await;
    assert!(dot.recv_ack(WAIT).await.unwrap().ok);
    assert_eq!(pushed(&mut ann, true).await.bn_type, Some(7), "ann is told of the block");
    let bean = TimUserBean { nick_name: Some("Annie".into()), ..TimUserBean::default() };
    assert!(modify_user(&mut ann, vec![bean]).await.ok);

    for i in 0..6 {
        ann.send(FrameType::Message, &text_to(&ben_node, &format!("hi ben {i}"), 1)).await.unwrap();
        echo(&mut ann).await;
        pushed(&mut ben, true).await;
        ben.send(FrameType::Message, &text_to(&ann_node, &format!("hi ann {i}"), 1)).await.unwrap();
        echo(&mut ben).await;
        pushed(&mut ann, true).await;
    }
    let group = new_group(&mut ann, "club", false).await;
    for client in [&mut ben, &mut cid] {
        business(client, 9, Some(&group), Some("let me in")).await;
        pushed(client, true).await;
    }
    // cid is away: ann's messages and the group's wait past its cursors.
    drop(cid);
    assert_eq!(ann.recv_within(WAIT).await.unwrap().kind, FrameType::Presence, "ann sees cid go");
    for i in 0..4 {
        ann.send(FrameType::Message, &to_group(&group, &format!("club news {i}"), 1, None)).await.unwrap();
        pushed(&mut ann, true).await;
        pushed(&mut ben, true).await;
        ann.send(FrameType::Message, &text_to(&cid_node, &format!("where are you {i}"), 1)).await.unwrap();
        echo(&mut ann).await;
    }
    (vec![ann_node, ben_node, cid_node, dot_node], vec![group])
}

async fn views(node: &TestNode, users: &[String], groups: &[String]) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    // No two friends one after the other: a friend's presence would come between answers.
    for name in ["ben", "cid", "dot", "ann"] {
        all.push(view(node, name, users, groups).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_exported_and_imported_elsewhere_answers_every_client_alike() {
    let source = TestCluster::start(2, &[]);
    let secret = source.secret_file();
    let (users, groups) = fill(&source).await;
    let files = tempfile::tempdir().unwrap();
    let (plain, sealed) = (files.path().join("plain.timdump"), files.path().join("sealed.timdump"));
    let pass = files.path().join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let pass = pass.display().to_string();

    // Export through either node: plain, and sealed under a passphrase.
    let out = export(source.nodes[1].admin.unwrap(), &secret, &plain, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let exported = count_after(&text(&out), "exported");
    assert!(exported > 40, "{}", text(&out));
    let out = export(source.nodes[0].admin.unwrap(), &secret, &sealed, &["--passphrase-file", &pass]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!files.path().join("plain.timdump.partial").exists());

    // A file appears under its name only once complete: while the node's answer is held back,
    // the export writes `.partial` alone; released, the file is renamed; an answer cut short
    // leaves neither.
    let (held, partial) = (files.path().join("held.timdump"), files.path().join("held.timdump.partial"));
    let (through, release, relayed) = relay(source.nodes[0].admin.unwrap(), u64::MAX).await;
    let run = export_in_background(through, &secret, &held);
    until("the held export's .partial file", WAIT, async || partial.exists().then_some(())).await;
    assert!(!held.exists(), "no file under its name before the end");
    release.send(()).unwrap();
    let out = run.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(held.exists() && !partial.exists(), "renamed once complete");
    let answer = tokio::time::timeout(WAIT, relayed).await.expect("the relay ends").unwrap();
    let (through, release, _) = relay(source.nodes[0].admin.unwrap(), answer / 2).await;
    std::fs::remove_file(&held).unwrap();
    let run = export_in_background(through, &secret, &held);
    release.send(()).unwrap();
    let out = run.await.unwrap();
    assert!(!out.status.success(), "an answer cut short fails the export: {}", text(&out));
    assert!(!held.exists() && !partial.exists(), "a failed export leaves nothing: {}", text(&out));
    let bytes = std::fs::read(&plain).unwrap();
    assert!(bytes.windows(8).any(|w| w == b"hi ben 0"), "plain files hold the bodies opened");
    assert!(!std::fs::read(&sealed).unwrap().windows(8).any(|w| w == b"hi ben 0"), "sealed files hide bodies");

    // --verify reads every block and prints the counts per table.
    let out = tim(&["export", "--verify", &plain.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let verified = text(&out);
    assert_eq!(count_after(&verified, "timuser"), 4, "{verified}");
    assert_eq!(count_after(&verified, "slots,"), exported, "{verified}");
    // ann's 1:1 messages and the group's wait in their conversations' history, past cid's
    // cursors; cid's inbox names ann.
    assert!(count_after(&verified, "timchatcursor") >= 1, "{verified}");
    assert!(count_after(&verified, "timinbox") >= 1, "{verified}");
    assert!(count_after(&verified, "timgroupcursor") >= 3, "every member has a cursor: {verified}");
    let out = tim(&["export", "--verify", &sealed.display().to_string()]);
    assert!(!out.status.success() && text(&out).contains("passphrase"), "{}", text(&out));
    let out = tim(&["export", "--verify", &sealed.display().to_string(), "--passphrase-file", &pass]);
    assert!(out.status.success() && text(&out).contains("sealed"), "{}", text(&out));

    // Into a fresh cluster of another size, from the sealed file; then once more, which
    // changes nothing.
    let target = TestCluster::start(3, &[]);
    let out = import(target.nodes[2].admin.unwrap(), &target.secret_file(), &sealed, &["--passphrase-file", &pass]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count_after(&text(&out), "imported"), exported, "{}", text(&out));
    assert_eq!(count_after(&text(&out), "s:"), exported, "all written: {}", text(&out));
    let out = import(target.nodes[0].admin.unwrap(), &target.secret_file(), &plain, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(": 0 written"), "{}", text(&out));
    assert!(text(&out).contains(&format!("{exported} there already, 0 skipped")), "{}", text(&out));

    // Every client sees the same in both.
    let before = views(&source.nodes[0], &users, &groups).await;
    let after = views(&target.nodes[1], &users, &groups).await;
    assert!(before[1].iter().any(|l| l.starts_with("offline")), "cid's queue is in the views: {:?}", before[1]);
    assert!(before[3].iter().any(|l| l.contains("club news 3")), "group history is in the views");
    assert!(before[3].iter().filter(|l| l.starts_with("with")).count() >= 16, "1:1 history: {:?}", before[3]);
    assert!(before[3].iter().any(|l| l.contains("Annie")), "ann's profile: {:?}", before[3]);
    assert!(before[2].iter().any(|l| l.starts_with("blocks [\"")), "dot's block: {:?}", before[2]);
    assert_eq!(before, after);

    // The target goes on: a new message gets a mid after the imported ones. (ann's session
    // of the views may still count for her device limit until its end reaches her directory.)
    let deadline = std::time::Instant::now() + crate::cluster::SETTLE;
    let mut ann = loop {
        let (ann, ack) = target.nodes[0].login("ann", "pw", Encoding::Compact).await;
        if ack.ok {
            break ann;
        }
        assert_eq!(ack.error_code(), Some(4111), "{ack:?}");
        assert!(std::time::Instant::now() < deadline, "ann cannot log in again");
    };
    ann.send(FrameType::Message, &text_to(&users[1], "after the move", 1)).await.unwrap();
    let mid = echo(&mut ann).await.mid.unwrap();
    let last = history(&mut ann, &users[1], 0, 1).await;
    assert_eq!(last[0].mid, Some(mid));
    let older = history(&mut ann, &users[1], 0, 2).await;
    assert!(older[1].mid.unwrap() < mid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_and_other_deployments_are_refused() {
    let source = TestCluster::start(1, &[]);
    let secret = source.secret_file();
    fill(&source).await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("data.timdump");
    let out = export(source.nodes[0].admin.unwrap(), &secret, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let total = count_after(&text(&out), "exported");
    let bytes = std::fs::read(&file).unwrap();

    // Cut short: refused by --verify with where and why.
    let cut = files.path().join("cut.timdump");
    std::fs::write(&cut, &bytes[..bytes.len() - 20]).unwrap();
    let out = tim(&["export", "--verify", &cut.display().to_string()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("at byte") && text(&out).contains("truncated"), "{}", text(&out));

    // A byte flipped in the last rows block (the byte before the end block, whose JSON body
    // starts with `{"rows"` 5 bytes after its start): the import writes the blocks before it,
    // nothing of the damaged one, and says where it stopped.
    let mut flipped = bytes.clone();
    let end_body = bytes.windows(7).rposition(|w| w == b"{\"rows\"").expect("the end block");
    flipped[end_body - 6] ^= 0x40;
    let broken = files.path().join("broken.timdump");
    std::fs::write(&broken, &flipped).unwrap();
    let target = TestNode::start(&["--secret-file", &secret]);
    let out = import(target.admin.unwrap(), &secret, &broken, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("at byte") && said.contains("checksum"), "{said}");
    let before_damage = count_after(&said, "damaged;");
    assert!(before_damage > 0 && before_damage < total, "{said}");
    let again = files.path().join("again.timdump");
    let out = export(target.admin.unwrap(), &secret, &again, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count_after(&text(&out), "exported"), before_damage, "exactly the whole blocks: {}", text(&out));

    // A deployment with another secret is refused before anything is written.
    let other = TestNode::start(&[]);
    let other_secret = other.dir.path().join("data").join("secret.key").display().to_string();
    let out = import(other.admin.unwrap(), &other_secret, &file, &[]);
    assert!(!out.status.success() && text(&out).contains("another secret"), "{}", text(&out));
    let empty = files.path().join("empty.timdump");
    let out = export(other.admin.unwrap(), &other_secret, &empty, &[]);
    assert_eq!(count_after(&text(&out), "exported"), 0, "{}", text(&out));

    // Without the secret the admin listener answers nothing.
    let wrong = files.path().join("wrong.key");
    std::fs::write(&wrong, [9u8; 32]).unwrap();
    let out = export(other.admin.unwrap(), &wrong.display().to_string(), &empty, &[]);
    assert!(!out.status.success() && text(&out).contains("401"), "{}", text(&out));
}

/// Slots node `i` still has to hand over, and has handed over so far.
fn moves(cluster: &TestCluster, i: usize) -> (u64, u64) {
    (own(cluster, i, "leaving_slots"), own(cluster, i, "moved_slots"))
}

#[test]
fn an_export_under_load_while_a_node_joins_reads_every_slot() {
    let mut cluster = TestCluster::start(2, BASE);
    let secret = cluster.secret_file();
    let load = Load::start(&cluster);
    wait_for_traffic(&cluster);
    let formed = moves(&cluster, 0).1;
    let mut joiner = BASE.to_vec();
    joiner.extend(["--migration-slots", "1"]);
    cluster.add(&joiner);
    // Export while the first node hands slots to the joiner, one at a time.
    let deadline = std::time::Instant::now() + crate::cluster::SETTLE;
    let before = loop {
        let (leaving, moved) = moves(&cluster, 0);
        if leaving > 0 && moved > formed {
            break moved;
        }
        assert!(std::time::Instant::now() < deadline, "no hand-over started");
    };
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("live.timdump");
    let out = export(cluster.nodes[1].admin.unwrap(), &secret, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let after = moves(&cluster, 0).1;
    assert!(after > before, "slots moved during the export ({before} then {after})");
    let exported = count_after(&text(&out), "exported");

    cluster.settle(3);
    let figures = load.finish();
    for bad in ["messages lost", "messages duplicated", "messages reordered"] {
        assert_eq!(figures.get(bad), Some(&0.0), "{bad}: {figures:?}");
    }
    let out = tim(&["export", "--verify", &file.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count_after(&text(&out), "timuser"), 24, "every bench user: {}", text(&out));

    // The file goes into a fresh node whole.
    let target = TestNode::start(&["--secret-file", &secret]);
    let out = import(target.admin.unwrap(), &secret, &file, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("{exported} written, 0 there already, 0 skipped")), "{}", text(&out));
}
