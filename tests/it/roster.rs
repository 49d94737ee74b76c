//! Friends and blocks, their pushes, and the offline queue those pushes fall back to.

use tim_net::client::Client;
use tim_net::proto::{TimMessage, TimMessageList, TimNodes, TimReq};
use tim_net::{Encoding, FrameType, ServerFrame};

use crate::node::{TestNode, WAIT};
use crate::topology::topology_test;
use crate::wait::until;

pub async fn business(client: &mut Client, rtype: i32, node: Option<&str>, text: Option<&str>) {
    let req = TimReq {
        rtype: Some(rtype),
        node: node.map(str::to_owned),
        req_str: text.map(str::to_owned),
        ..TimReq::default()
    };
    client.send(FrameType::Business, &req).await.unwrap();
}

/// The next frame must be a pushed message asking for an ack; it is acked when `ack`.
pub async fn pushed(client: &mut Client, ack: bool) -> TimMessage {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::Message, "{frame:?}");
    let id = frame.ack_id.expect("a push asks for an ack");
    if ack {
        client.ack(id).await.unwrap();
    }
    frame.decode(client.encoding()).unwrap()
}

pub async fn roster_of(client: &mut Client, rtype: i32) -> Vec<String> {
    business(client, rtype, None, None).await;
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::Nodes);
    let nodes: TimNodes = frame.decode(client.encoding()).unwrap();
    assert_eq!(nodes.ntype, if rtype == 1 { 1 } else { 8 });
    nodes.nodelist.unwrap_or_default()
}

pub async fn user(node: &TestNode, name: &str, encoding: Encoding) -> (Client, String) {
    assert!(node.register(name, "pw", encoding).await.ok);
    let (client, ack) = node.login(name, "pw", encoding).await;
    assert!(ack.ok);
    (client, ack.n.unwrap())
}

topology_test!(async fn friend_request_accept_block_and_remove(servers, &[]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;

    // Request: bob is told (bnType 4, with the text); alice gets no reply.
    business(&mut alice, 4, Some(&bob_node), Some("hi bob")).await;
    let push = pushed(&mut bob, true).await;
    assert_eq!((push.ms_type, push.od_type, push.bn_type), (2, 4, Some(4)));
    assert_eq!(push.from_tid.unwrap().node, alice_node);
    assert_eq!(push.data_string.as_deref(), Some("hi bob"));
    assert!(roster_of(&mut alice, 1).await.is_empty(), "not friends before the answer");

    // Accept: alice is told (bnType 5); both rosters list the other.
    business(&mut bob, 4, Some(&alice_node), Some("sure")).await;
    let push = pushed(&mut alice, true).await;
    assert_eq!((push.od_type, push.bn_type), (4, Some(5)));
    assert_eq!(roster_of(&mut alice, 1).await, vec![bob_node.clone()]);
    assert_eq!(roster_of(&mut bob, 1).await, vec![alice_node.clone()]);
    business(&mut alice, 4, Some(&bob_node), Some("again")).await;
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4117));

    // Block: the friendship ends on both sides; a blocked user cannot ask again.
    business(&mut bob, 7, Some(&alice_node), None).await;
    let ack = bob.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.ok, ack.t, ack.n.as_deref()), (true, Some(7), Some(alice_node.as_str())));
    assert_eq!(roster_of(&mut bob, 18).await, vec![alice_node.clone()]);
    assert!(roster_of(&mut alice, 1).await.is_empty());
    business(&mut alice, 4, Some(&bob_node), Some("please")).await;
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4110));

    // Remove: bob lifts the block; the pair has no relation left and alice is told (bnType 6).
    business(&mut bob, 6, Some(&alice_node), None).await;
    let ack = bob.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.ok, ack.t), (true, Some(6)));
    assert_eq!(pushed(&mut alice, true).await.bn_type, Some(6));
    assert!(roster_of(&mut bob, 18).await.is_empty());
    business(&mut bob, 6, Some(&alice_node), None).await;
    assert_eq!(bob.recv_ack(WAIT).await.unwrap().error_code(), Some(4104), "no relation left");

    // Bad requests.
    business(&mut alice, 4, Some(&bob_node), None).await;
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4104), "request text missing");
    business(&mut alice, 4, Some("not-a-node"), Some("x")).await;
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4106));
    business(&mut alice, 4, Some(&alice_node), Some("me")).await;
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4105));
});

/// The next frame must be an offline batch; it is acked when `ack`.
pub async fn batch(client: &mut Client, ack: bool) -> Vec<TimMessage> {
    let frame = client.recv_within(WAIT).await.unwrap();
    batch_in(client, frame, ack).await
}

/// `frame` must be an offline batch; it is acked when `ack`.
pub async fn batch_in(client: &mut Client, frame: ServerFrame, ack: bool) -> Vec<TimMessage> {
    assert_eq!(frame.kind, FrameType::OfflineMsg, "{frame:?}");
    let id = frame.ack_id.expect("an offline batch asks for an ack");
    if ack {
        client.ack(id).await.unwrap();
    }
    let list: TimMessageList = frame.decode(client.encoding()).unwrap();
    list.message_list.unwrap_or_default()
}

pub async fn request_offline(client: &mut Client) {
    client.send_empty(FrameType::OfflineMsg).await.unwrap();
}

/// Everything the offline drain sends `client`, to its end frame, each batch acked.
pub async fn drain_offline(client: &mut Client) -> Vec<TimMessage> {
    request_offline(client).await;
    let mut all = Vec::new();
    loop {
        let frame = client.recv_within(WAIT).await.unwrap();
        match frame.kind {
            FrameType::OfflineMsgEnd => return all,
            FrameType::OfflineMsg => all.extend(batch_in(client, frame, true).await),
            other => panic!("unexpected {other:?} while draining"),
        }
    }
}

topology_test!(async fn pushes_to_an_offline_user_wait_in_the_offline_queue(servers, &["--ack-timeout", "1", "--ack-tries", "1"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Compact).await;
    let (mut dave, dave_node) = user(servers.at(1), "dave", Encoding::Json).await;
    let carol_node = servers.at(2).register("carol", "pw", Encoding::Json).await.n.unwrap();

    // Pushes from different sessions are not ordered among themselves: each sender's next
    // request is answered once its friend request was handled, the push to carol queued.
    business(&mut alice, 4, Some(&carol_node), Some("from alice")).await;
    assert!(roster_of(&mut alice, 1).await.is_empty());
    business(&mut dave, 4, Some(&carol_node), Some("from dave")).await;
    assert!(roster_of(&mut dave, 1).await.is_empty());

    let (mut carol, _) = servers.at(2).login("carol", "pw", Encoding::Json).await;
    request_offline(&mut carol).await;
    // Not acked: the batch stays queued.
    let first = batch(&mut carol, false).await;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|m| m.is_offline == Some(true) && m.bn_type == Some(4)));
    let senders: Vec<_> = first.iter().map(|m| m.from_tid.clone().unwrap().node).collect();
    assert_eq!(senders, [alice_node.clone(), dave_node.clone()], "oldest first");

    // Asked again while the drain still waits for the ack, the request is ignored; once the
    // drain gave up, the batch comes again. A ping after each request tells when it was (no
    // batch before the ping's answer); a batch that comes after it is read by the next round.
    let again = until("the unacked batch to be sent again", WAIT, async || {
        request_offline(&mut carol).await;
        carol.ping().await.unwrap();
        let mut sent = None;
        loop {
            let frame = carol.recv_within(WAIT).await.unwrap();
            match frame.kind {
                FrameType::Ping => return sent,
                FrameType::OfflineMsg if sent.is_none() => sent = Some(frame),
                _ => panic!("unexpected {frame:?}"),
            }
        }
    })
    .await;
    assert_eq!(batch_in(&mut carol, again, true).await, first, "the unacked batch comes again");
    let end = carol.recv_within(WAIT).await.unwrap();
    assert_eq!((end.kind, end.body.len()), (FrameType::OfflineMsgEnd, 0));
    request_offline(&mut carol).await;
    assert_eq!(carol.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd, "nothing more");
});

topology_test!(async fn a_push_never_acked_is_retried_then_queued_once(servers, &["--ack-timeout", "1", "--ack-tries", "2", "--device-limit", "5"]) {

    let (mut alice, _) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    business(&mut alice, 4, Some(&bob_node), Some("ping me")).await;
    let first = bob.recv_within(WAIT).await.unwrap();
    let second = bob.recv_within(WAIT).await.unwrap();
    assert_eq!((first.kind, second.kind), (FrameType::Message, FrameType::Message));
    assert_ne!(first.ack_id, second.ack_id, "each attempt has its own ack id");
    assert_eq!(first.body, second.body);
    // Given up, then in the offline queue, exactly once (a drain before finds it empty).
    let queued = until("the given-up push to be queued", WAIT, async || {
        request_offline(&mut bob).await;
        let frame = bob.recv_within(WAIT).await.unwrap();
        (frame.kind != FrameType::OfflineMsgEnd).then_some(frame)
    })
    .await;
    let queued = batch_in(&mut bob, queued, true).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].data_string.as_deref(), Some("ping me"));
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);
});
