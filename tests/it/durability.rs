//! Acknowledged writes survive `kill -9`, including when the kill lands while more writes are
//! in flight.

use std::sync::{Arc, Mutex};

use tim_net::client::post_tim2;
use tim_net::{Encoding, FrameType};

use crate::node::{auth, TestNode};

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
