//! Acknowledged writes survive `kill -9`, including when the kill lands while more writes are
//! in flight.

use std::sync::{Arc, Mutex};

use tim_net::client::post_tim2;
use tim_net::{Encoding, FrameType};

use crate::cluster::{TestCluster, SETTLE};
use crate::groups::{new_group, notice, request, to_group};
use crate::node::{auth, TestNode, WAIT};
use crate::roster::{batch, pushed, request_offline, user};

const WRITERS: usize = 8;
const PER_WRITER: usize = 40;
/// Acknowledged registrations to wait for before the kill; the rest are in flight or refused.
const KILL_AFTER: usize = 30;

#[tokio::test]
async fn acknowledged_registrations_survive_kill_9_mid_stream() {
    let node = TestNode::start(&[]);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (addr, acked, enough_tx) = (node.addr, acked.clone(), enough_tx.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let name = format!("durable-{w}-{i}");
                // Once the server is killed requests fail: the writer stops.
                let Ok(ack) = post_tim2(addr, FrameType::Register, Encoding::Compact, &auth(&name, "pw")).await else {
                    return;
                };
                assert!(ack.ok, "{ack:?}");
                let mut acked = acked.lock().unwrap();
                acked.push((name, ack.n.unwrap()));
                if acked.len() == KILL_AFTER {
                    let _ = enough_tx.try_send(());
                }
            }
        }));
    }
    drop(enough_tx);
    enough_rx.recv().await.expect("enough registrations acknowledged");
    let dir = node.kill9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);

    let node = TestNode::start_in(dir, &[]);
    for (name, user_node) in &acked {
        let (_client, ack) = node.login(name, "pw", Encoding::Json).await;
        assert!(ack.ok, "{name} was acknowledged, then lost to kill -9: {ack:?}");
        assert_eq!(ack.n.as_deref(), Some(user_node.as_str()), "same id after restart");
    }
}

/// Logs `name` in on `node`, again while it is answered "try again" (a node restarting).
async fn login_when_served(node: &TestNode, name: &str) -> tim_net::client::Client {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (client, ack) = node.login(name, "pw", Encoding::Compact).await;
        if ack.ok {
            return client;
        }
        assert_eq!(ack.error_code(), Some(5102), "{name}: {ack:?}");
        assert!(std::time::Instant::now() < deadline, "{name} still refused");
    }
}

/// An online member's copy of a group message is durable before it is pushed: the node of
/// the member's session is killed (-9) before the member acks, and the member, logging in
/// once that node is back, finds it in the offline queue. The sender's own copy, acked, is
/// no longer queued (the ack removes a member's entry).
#[tokio::test]
async fn a_group_message_whose_member_loses_its_node_before_the_ack_waits_offline() {
    let mut cluster = TestCluster::start(3, &[]);
    let (mut ann, _) = user(&cluster.nodes[0], "ann", Encoding::Json).await;
    let (mut ben, _) = user(&cluster.nodes[1], "ben", Encoding::Compact).await;
    let group = new_group(&mut ann, "g", false).await;
    request(&mut ben, 9, Some(&group), None, None).await;
    assert_eq!(notice(&mut ben).await.0, 10);
    ann.send(FrameType::Message, &to_group(&group, "hello", 1, None)).await.unwrap();
    let echo = pushed(&mut ann, true).await;
    let got = pushed(&mut ben, false).await;
    assert_eq!((got.mid, got.data_string.as_deref()), (echo.mid, Some("hello")));
    // The sender acked its copy: its entry is gone (the drain settles the ack first).
    request_offline(&mut ann).await;
    assert_eq!(ann.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd, "the sender acked its copy");
    drop(ben);
    let node = cluster.nodes.remove(1);
    cluster.nodes.insert(1, node.kill9_and_restart());
    cluster.settle(3);
    let mut ben = login_when_served(&cluster.nodes[2], "ben").await;
    request_offline(&mut ben).await;
    let queued = batch(&mut ben, true).await;
    assert_eq!(queued.iter().map(|m| m.mid).collect::<Vec<_>>(), vec![echo.mid], "{queued:?}");
}
