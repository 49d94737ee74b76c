//! 1:1 messages: validation, echo, delivery with ack, offline fallback, history, kinds.

use std::collections::HashSet;

use tim_net::client::Client;
use tim_net::proto::{Tid, TimMessage, TimMessageList, TimPresence, TimReq};
use tim_net::{Encoding, FrameType, ServerFrame};

use crate::admin::figure;
use crate::node::{TestNode, WAIT};
use crate::roster::{batch, business, pushed, request_offline, user};
use crate::topology::topology_test;
use crate::wait::until;

pub fn text_to(to: &str, text: &str, od_type: i8) -> TimMessage {
    TimMessage {
        ms_type: 2,
        od_type,
        to_tid: Some(Tid { node: to.into(), ..Tid::default() }),
        data_string: Some(text.into()),
        ..TimMessage::default()
    }
}

/// Makes the two friends (request, accept, both notices acked).
pub async fn befriend(a: &mut Client, a_node: &str, b: &mut Client, b_node: &str) {
    business(a, 4, Some(b_node), Some("hi")).await;
    pushed(b, true).await;
    business(b, 4, Some(a_node), Some("ok")).await;
    pushed(a, true).await;
}

/// The echo of a sent message: a type-90 frame without ack request, carrying the `mid`.
pub async fn echo(client: &mut Client) -> TimMessage {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!((frame.kind, frame.ack_id), (FrameType::Message, None), "{frame:?}");
    let msg: TimMessage = frame.decode(client.encoding()).unwrap();
    assert!(msg.mid.is_some(), "echo carries the mid");
    msg
}

pub async fn history(client: &mut Client, peer: &str, upto: i64, limit: i64) -> Vec<TimMessage> {
    let req = TimReq {
        rtype: Some(1),
        node: Some(peer.into()),
        req_int: Some(upto),
        req_int2: Some(limit),
        ..TimReq::default()
    };
    client.send(FrameType::PullMessage, &req).await.unwrap();
    let frame: ServerFrame = client.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::PullMessage, "{frame:?}");
    let list: TimMessageList = frame.decode(client.encoding()).unwrap();
    list.message_list.unwrap_or_default()
}

topology_test!(async fn messages_are_validated_in_tim_order(servers, &[]) {

    let (mut alice, _) = user(servers.at(0), "alice", Encoding::Json).await;
    let (_bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    let cases = [
        (text_to(&bob_node, "x", 1), 4105, "not friends"),
        (text_to("0OIl", "x", 1), 4106, "malformed target"),
        (TimMessage { ms_type: 1, ..text_to(&bob_node, "x", 1) }, 4104, "system messages are the server's"),
        (text_to(&bob_node, "x", 4), 4104, "business notices are the server's"),
        (text_to(&bob_node, "x", 9), 4104, "reserved kind"),
        (TimMessage { ms_type: 3, ..text_to(&bob_node, "x", 1) }, 4104, "a group message without roomTid"),
    ];
    for (msg, code, why) in cases {
        alice.send(FrameType::Message, &msg).await.unwrap();
        let ack = alice.recv_ack(WAIT).await.unwrap();
        assert_eq!((ack.ok, ack.tim_type, ack.error_code()), (false, 90, Some(code)), "{why}");
    }
    alice.send_raw(bytes::Bytes::from_static(&[0x5A, 0x13])).await.unwrap();
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4113), "undecodable message");
});

topology_test!(async fn a_message_is_echoed_to_every_sender_session_and_delivered_with_ack(servers, &["--device-limit", "5", "--devicetype-limit", "5"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    let (mut alice2, _) = servers.at(2).login("alice", "pw", Encoding::Compact).await;

    let sent = TimMessage { id: Some(77), ..text_to(&bob_node, "hello bob", 1) };
    alice.send(FrameType::Message, &sent).await.unwrap();
    let mine = echo(&mut alice).await;
    let other_device = echo(&mut alice2).await;
    assert_eq!(mine, other_device, "both sessions of the sender get the same echo");
    assert_eq!((mine.id, mine.data_string.as_deref()), (Some(77), Some("hello bob")));
    let from = mine.from_tid.clone().unwrap();
    assert_eq!((from.node.as_str(), from.domain.as_deref()), (alice_node.as_str(), Some("test")));
    assert!(mine.timestamp.is_some());

    let got = pushed(&mut bob, true).await;
    assert_eq!((got.mid, got.data_string.as_deref()), (mine.mid, Some("hello bob")));
    let page = history(&mut bob, &alice_node, 0, 10).await;
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].mid, page[0].id), (mine.mid, None), "history has the mid, not the client id");
    // Acked: nothing waits offline.
    request_offline(&mut bob).await;
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);
});

topology_test!(async fn a_device_that_logs_in_later_gets_copies_of_the_messages_its_other_device_sends(servers, &["--device-limit", "5", "--devicetype-limit", "5"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Compact).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    // Each message of the sending device: its echo, the copies on the other devices, Bob's push.
    async fn send(alice: &mut Client, others: &mut [&mut Client], bob: &mut Client, to: &str, text: &str) {
        alice.send(FrameType::Message, &text_to(to, text, 1)).await.unwrap();
        let mine = echo(alice).await;
        for other in others.iter_mut() {
            assert_eq!(echo(other).await, mine, "{text}: every other device gets the copy");
        }
        assert_eq!(pushed(bob, true).await.mid, mine.mid);
    }
    // Alone, then with a second device that logged in after the node learned where Alice's
    // sessions are (the first message), then with a third in place of the second.
    send(&mut alice, &mut [], &mut bob, &bob_node, "alone").await;
    let (mut alice2, _) = servers.at(2).login("alice", "pw", Encoding::Json).await;
    send(&mut alice, &mut [&mut alice2], &mut bob, &bob_node, "two devices").await;
    drop(alice2);
    let (mut alice3, _) = servers.at(1).login("alice", "pw", Encoding::Compact).await;
    send(&mut alice, &mut [&mut alice3], &mut bob, &bob_node, "a third device").await;
    // And the devices that logged in later send too: the first device gets their copies.
    send(&mut alice3, &mut [&mut alice], &mut bob, &bob_node, "from the third").await;
});

topology_test!(async fn pipelined_messages_are_stored_before_a_later_request_and_echoed_in_order(servers, &[]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Compact).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Json).await;
    let (_carol, carol_node) = user(servers.at(2), "carol", Encoding::Compact).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    // Sent without waiting, so the server reads them as one burst: a refused message in the
    // middle, then a history request that must see every message before it.
    for i in 0..30 {
        let to = if i == 10 { &carol_node } else { &bob_node };
        let msg = TimMessage { id: Some(i), ..text_to(to, &format!("m{i}"), 1) };
        alice.send(FrameType::Message, &msg).await.unwrap();
    }
    let req = TimReq {
        rtype: Some(1),
        node: Some(bob_node.clone()),
        req_int: Some(0),
        req_int2: Some(50),
        ..TimReq::default()
    };
    alice.send(FrameType::PullMessage, &req).await.unwrap();
    let (mut echoes, mut refused, mut page) = (Vec::new(), Vec::new(), None);
    while echoes.len() < 29 || refused.is_empty() || page.is_none() {
        let frame = alice.recv_within(WAIT).await.unwrap();
        match frame.kind {
            FrameType::Message => echoes.push(frame.decode::<TimMessage>(Encoding::Compact).unwrap()),
            FrameType::Ack => refused.push(frame.decode::<tim_net::proto::TimAck>(Encoding::Compact).unwrap()),
            FrameType::PullMessage => page = Some(frame.decode::<TimMessageList>(Encoding::Compact).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].error_code(), Some(4105), "the message to a stranger alone is refused");
    let ids: Vec<i64> = echoes.iter().map(|m| m.id.unwrap()).collect();
    assert_eq!(ids, (0..30).filter(|i| *i != 10).collect::<Vec<_>>(), "echoed in the order sent");
    let mids: Vec<i64> = echoes.iter().map(|m| m.mid.unwrap()).collect();
    assert!(mids.windows(2).all(|w| w[0] < w[1]), "mids increase in the order sent");
    let stored = page.unwrap().message_list.unwrap_or_default();
    assert_eq!(stored.len(), 29, "the history request sees every message sent before it");
    for mid in mids {
        let got = pushed(&mut bob, true).await;
        assert_eq!(got.mid, Some(mid), "delivered in order");
    }
});

topology_test!(async fn an_offline_recipient_gets_messages_from_the_offline_queue_in_order(servers, &["--message-noauth", "true", "--rate-connection", "0", "--rate-account", "0"]) {

    let (mut alice, _) = user(servers.at(0), "alice", Encoding::Compact).await;
    let bob_node = servers.at(1).register("bob", "pw", Encoding::Json).await.n.unwrap();
    // Sent without waiting, so they are stored as bursts; every third has a client id (stored
    // once, at its conversation's owner) and the others not: the queue keeps the order anyway.
    for i in 0..13 {
        let msg = TimMessage { id: (i % 3 == 1).then_some(i), ..text_to(&bob_node, &format!("m{i}"), 1) };
        alice.send(FrameType::Message, &msg).await.unwrap();
    }
    let mut mids = Vec::new();
    for _ in 0..13 {
        mids.push(echo(&mut alice).await.mid.unwrap());
    }
    assert!(mids.windows(2).all(|w| w[0] < w[1]), "mids follow the order sent: {mids:?}");
    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Json).await;
    request_offline(&mut bob).await;
    let first = batch(&mut bob, true).await;
    let second = batch(&mut bob, true).await;
    assert_eq!((first.len(), second.len()), (10, 3), "batches of at most 10");
    let texts: Vec<_> = first.iter().chain(&second).map(|m| m.data_string.clone().unwrap()).collect();
    assert_eq!(texts, (0..13).map(|i| format!("m{i}")).collect::<Vec<_>>(), "oldest first");
    assert_eq!(first.iter().chain(&second).map(|m| m.mid.unwrap()).collect::<Vec<_>>(), mids);
    assert!(first.iter().all(|m| m.is_offline == Some(true) && m.mid.is_some()));
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);
    // Asked again as soon as each end frame is read, every request is answered (a drain used
    // to count as running until just after its end frame went out, and ignored such a request).
    for _ in 0..20 {
        request_offline(&mut bob).await;
        assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd, "drained");
    }
});

topology_test!(async fn history_pages_through_250_messages_without_gap_or_duplicate(servers, &["--message-noauth", "true", "--rate-connection", "0", "--rate-account", "0"]) {

    // 250 messages as fast as echoes come back: over the default message rate.
    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Compact).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Json).await;
    let mut mids = Vec::new();
    for i in 0..250 {
        alice.send(FrameType::Message, &text_to(&bob_node, &format!("n{i}"), 1)).await.unwrap();
        mids.push(echo(&mut alice).await.mid.unwrap());
        pushed(&mut bob, true).await;
    }
    assert!(mids.windows(2).all(|w| w[0] < w[1]), "mids increase");
    assert!(mids.iter().all(|m| *m > 0 && *m < 1 << 53));

    let mut seen = Vec::new();
    let mut upto = 0;
    loop {
        let page = history(&mut bob, &alice_node, upto, 100).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 100);
        seen.extend(page.iter().map(|m| m.mid.unwrap()));
        upto = page.last().unwrap().mid.unwrap() - 1;
    }
    assert_eq!(seen.len(), 250);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first, no duplicate");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), mids.iter().copied().collect(), "no gap");
    assert_eq!(history(&mut alice, &bob_node, 0, 1000).await.len(), 200, "page size is capped");
    let upto_exact = mids[9];
    let page = history(&mut alice, &bob_node, upto_exact, 3).await;
    assert_eq!(page.iter().map(|m| m.mid.unwrap()).collect::<Vec<_>>(), [mids[9], mids[8], mids[7]], "inclusive bound");
});

topology_test!(async fn streams_reach_online_sessions_only_and_custom_kinds_skip_history(servers, &["--message-noauth", "true"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    // Friends, so that alice is told when bob's session ends.
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;

    alice.send(FrameType::Message, &text_to(&bob_node, "live", 5)).await.unwrap();
    let frame = bob.recv_within(WAIT).await.unwrap();
    assert_eq!((frame.kind, frame.ack_id), (FrameType::Message, None), "stream: no ack request");
    let custom = text_to(&bob_node, "custom", 31);
    alice.send(FrameType::Message, &custom).await.unwrap();
    assert_eq!(pushed(&mut bob, true).await.od_type, 31);
    assert!(history(&mut bob, &alice_node, 0, 10).await.is_empty(), "neither is in history");

    drop(bob);
    // The server saw bob's session end once his offline presence, sent then, reaches alice.
    let frame = alice.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::Presence, "{frame:?}");
    let gone: TimPresence = frame.decode(alice.encoding()).unwrap();
    assert_eq!((gone.offline, gone.from_tid.unwrap().node), (Some(true), bob_node.clone()));
    // Bob is offline now: a stream is dropped, a custom message waits offline. Alice's next
    // request is answered once both were handled.
    alice.send(FrameType::Message, &text_to(&bob_node, "lost", 5)).await.unwrap();
    alice.send(FrameType::Message, &text_to(&bob_node, "kept", 31)).await.unwrap();
    assert!(history(&mut alice, &bob_node, 0, 10).await.is_empty(), "neither is in history");
    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Compact).await;
    request_offline(&mut bob).await;
    let queued = batch(&mut bob, true).await;
    assert_eq!(queued.iter().map(|m| m.data_string.clone().unwrap()).collect::<Vec<_>>(), ["kept"]);
});

#[tokio::test]
async fn an_echoed_message_survives_kill_9() {
    let node = TestNode::start(&["--message-noauth", "true"]);
    let (mut alice, alice_node) = user(&node, "alice", Encoding::Compact).await;
    let bob_node = node.register("bob", "pw", Encoding::Compact).await.n.unwrap();
    alice.send(FrameType::Message, &text_to(&bob_node, "durable", 1)).await.unwrap();
    let mid = echo(&mut alice).await.mid;
    let dir = node.kill9();
    let node = TestNode::start_in(dir, &["--message-noauth", "true"]);
    let (mut bob, ack) = node.login("bob", "pw", Encoding::Compact).await;
    assert!(ack.ok);
    let page = history(&mut bob, &alice_node, 0, 10).await;
    assert_eq!((page.len(), page[0].mid), (1, mid));
    request_offline(&mut bob).await;
    let queued = batch(&mut bob, true).await;
    assert_eq!((queued.len(), queued[0].mid), (1, mid));
}

topology_test!(async fn a_slow_consumer_is_cut_off_without_delaying_others_and_loses_nothing(servers, &["--message-noauth", "true", "--outbound-queue", "4", "--ack-timeout", "30"]) {

    let (mut alice, _) = user(servers.at(0), "alice", Encoding::Compact).await;
    // Bob reads nothing and acks nothing; carol keeps up.
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    let (mut carol, carol_node) = user(servers.at(2), "carol", Encoding::Json).await;
    let big = "x".repeat(100_000);
    for i in 0..20 {
        alice.send(FrameType::Message, &text_to(&bob_node, &format!("{i}:{big}"), 1)).await.unwrap();
        echo(&mut alice).await;
        alice.send(FrameType::Message, &text_to(&carol_node, &format!("c{i}"), 1)).await.unwrap();
        echo(&mut alice).await;
        let got = pushed(&mut carol, true).await;
        assert_eq!(got.data_string, Some(format!("c{i}")), "carol is served in step");
    }
    // Bob's session was cut off once four frames waited for his acks; nothing was lost.
    bob.closed_within(WAIT).await.expect("slow reader cut off");
    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Compact).await;
    request_offline(&mut bob).await;
    let mut texts = Vec::new();
    for _ in 0..2 {
        texts.extend(batch(&mut bob, true).await.into_iter().map(|m| m.data_string.unwrap()));
    }
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);
    let expected: Vec<_> = (0..20).map(|i| format!("{i}:{big}")).collect();
    assert_eq!(texts, expected, "every message once, in order");
});

fn recall_or_burn(to: &str, mid: Option<i64>, od_type: i8) -> TimMessage {
    TimMessage { mid, data_string: None, ..text_to(to, "", od_type) }
}

topology_test!(async fn recall_and_burn_delete_the_message_and_tell_both_sides(servers, &["--message-noauth", "true"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;

    // Recall, online: only the sender may; both sides get the notice; history loses it.
    alice.send(FrameType::Message, &text_to(&bob_node, "oops", 1)).await.unwrap();
    let mid = echo(&mut alice).await.mid;
    assert_eq!(pushed(&mut bob, true).await.mid, mid);
    bob.send(FrameType::RevokeMessage, &recall_or_burn(&alice_node, mid, 2)).await.unwrap();
    assert_eq!(bob.recv_ack(WAIT).await.unwrap().error_code(), Some(4105), "only the sender recalls");
    alice.send(FrameType::Message, &recall_or_burn(&bob_node, None, 2)).await.unwrap();
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4104), "mid required");
    alice.send(FrameType::RevokeMessage, &recall_or_burn(&bob_node, mid, 2)).await.unwrap();
    let to_bob = pushed(&mut bob, true).await;
    let to_alice = pushed(&mut alice, true).await;
    assert_eq!((to_bob.od_type, to_bob.mid), (2, mid));
    assert_eq!((to_alice.od_type, to_alice.mid), (2, mid));
    assert!(history(&mut bob, &alice_node, 0, 10).await.is_empty());
    alice.send(FrameType::RevokeMessage, &recall_or_burn(&bob_node, mid, 2)).await.unwrap();
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4104), "already gone");

    // Burn: only the recipient may.
    alice.send(FrameType::Message, &text_to(&bob_node, "read once", 1)).await.unwrap();
    let mid = echo(&mut alice).await.mid;
    pushed(&mut bob, true).await;
    alice.send(FrameType::BurnMessage, &recall_or_burn(&bob_node, mid, 3)).await.unwrap();
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4105), "the sender cannot burn");
    bob.send(FrameType::BurnMessage, &recall_or_burn(&alice_node, mid, 3)).await.unwrap();
    assert_eq!((pushed(&mut bob, true).await.od_type, pushed(&mut alice, true).await.od_type), (3, 3));
    assert!(history(&mut alice, &bob_node, 0, 10).await.is_empty());
});

topology_test!(async fn a_recalled_message_never_reaches_an_offline_recipient(servers, &["--message-noauth", "true"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Compact).await;
    let bob_node = servers.at(1).register("bob", "pw", Encoding::Json).await.n.unwrap();
    alice.send(FrameType::Message, &text_to(&bob_node, "keep", 1)).await.unwrap();
    echo(&mut alice).await;
    alice.send(FrameType::Message, &text_to(&bob_node, "take back", 1)).await.unwrap();
    let mid = echo(&mut alice).await.mid;
    alice.send(FrameType::Message, &recall_or_burn(&bob_node, mid, 2)).await.unwrap();
    assert_eq!(pushed(&mut alice, true).await.od_type, 2);

    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Json).await;
    let drained = crate::roster::drain_offline(&mut bob).await;
    let kinds: Vec<_> = drained.iter().map(|m| (m.od_type, m.data_string.clone())).collect();
    // The notice waits in bob's queue, drained before the conversations.
    assert_eq!(kinds, [(2, None), (1, Some("keep".to_owned()))], "the original is gone, the notice remains");
    assert_eq!(drained[0].from_tid.clone().unwrap().node, alice_node);
});

topology_test!(async fn a_message_never_acked_is_queued_once_and_history_honours_a_time_bound(servers, &["--message-noauth", "true", "--ack-timeout", "1", "--ack-tries", "2"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    let (token, bobs) = (servers.read_token().await, servers.at(1).admin.unwrap());
    let given_up = figure(bobs, &token, "tim_ack_timeouts_total").await;
    alice.send(FrameType::Message, &text_to(&bob_node, "unacked", 1)).await.unwrap();
    let sent = echo(&mut alice).await;
    // Two attempts, never acked; then bob's session gives the push up.
    let (a, b) = (pushed(&mut bob, false).await, pushed(&mut bob, false).await);
    assert_eq!((a.mid, b.mid), (sent.mid, sent.mid));
    until("bob's session to give the push up", WAIT, async || {
        (figure(bobs, &token, "tim_ack_timeouts_total").await > given_up).then_some(())
    })
    .await;
    request_offline(&mut bob).await;
    let queued = batch(&mut bob, true).await;
    assert_eq!(queued.iter().map(|m| m.mid).collect::<Vec<_>>(), [sent.mid], "exactly one offline copy");
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);

    // node2 bounds the timestamp: nothing is older than the first message's time minus 1 ns.
    let before_first = (sent.timestamp.unwrap() - 1).to_string();
    let req = TimReq {
        rtype: Some(1),
        node: Some(alice_node.clone()),
        node2: Some(before_first),
        req_int: Some(0),
        req_int2: Some(10),
        ..TimReq::default()
    };
    bob.send(FrameType::PullMessage, &req).await.unwrap();
    let list: TimMessageList = bob.recv_within(WAIT).await.unwrap().decode(Encoding::Compact).unwrap();
    assert!(list.message_list.unwrap_or_default().is_empty());
    assert_eq!(history(&mut bob, &alice_node, 0, 10).await.len(), 1);
});

/// Bob, registered but away while alice sends him `m0`… `m{n-1}` one by one, logged in and
/// asking for his offline queue.
async fn offline_for_bob(servers: &crate::topology::Servers, n: usize) -> Client {
    let (mut alice, _) = user(servers.at(0), "alice", Encoding::Compact).await;
    let bob_node = servers.at(1).register("bob", "pw", Encoding::Compact).await.n.unwrap();
    for i in 0..n {
        alice.send(FrameType::Message, &text_to(&bob_node, &format!("m{i}"), 1)).await.unwrap();
        echo(&mut alice).await;
    }
    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Compact).await;
    request_offline(&mut bob).await;
    bob
}

topology_test!(async fn offline_queues_are_capped_by_count(servers, &["--message-noauth", "true", "--offline-max-entries", "5"]) {

    let mut bob = offline_for_bob(&servers, 8).await;
    let texts: Vec<_> = batch(&mut bob, true).await.into_iter().map(|m| m.data_string.unwrap()).collect();
    assert_eq!(texts, ["m3", "m4", "m5", "m6", "m7"], "the oldest were dropped");
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);
    assert!(servers.log().contains("offline entries dropped"), "drops are logged");
});

topology_test!(async fn a_full_offline_queue_is_trimmed_in_steps_keeping_the_newest(servers, &["--message-noauth", "true", "--offline-max-entries", "128"]) {

    // A cap of 128 lets a queue pass it by 2 (a 64th) before it is counted and trimmed back.
    let mut bob = offline_for_bob(&servers, 150).await;
    let mut texts = Vec::new();
    loop {
        let frame = bob.recv_within(WAIT).await.unwrap();
        if frame.kind == FrameType::OfflineMsgEnd {
            break;
        }
        assert_eq!(frame.kind, FrameType::OfflineMsg, "{frame:?}");
        let list: TimMessageList = frame.decode(Encoding::Compact).unwrap();
        texts.extend(list.message_list.unwrap_or_default().into_iter().map(|m| m.data_string.unwrap()));
        bob.ack(frame.ack_id.unwrap()).await.unwrap();
    }
    assert!((128..=130).contains(&texts.len()), "{} entries kept", texts.len());
    let newest: Vec<_> = (150 - texts.len()..150).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, newest, "the newest are kept, in order");
    let trims = servers.log().matches("offline entries dropped").count();
    assert!((1..=8).contains(&trims), "trimmed {trims} times: in steps, not at every message");
});

topology_test!(async fn offline_queues_are_capped_by_age(servers, &["--message-noauth", "true", "--offline-max-age", "1"]) {

    let (mut alice, _) = user(servers.at(0), "alice", Encoding::Compact).await;
    let bob_node = servers.at(1).register("bob", "pw", Encoding::Compact).await.n.unwrap();
    alice.send(FrameType::Message, &text_to(&bob_node, "stale", 1)).await.unwrap();
    let stamped = echo(&mut alice).await.timestamp.unwrap();
    // Past the cap once this clock is more than a second past the message's time (the server
    // reads the same clock, later).
    until("the message to be older than the age cap", WAIT, async || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (i64::try_from(now.as_nanos()).unwrap() - stamped > 1_000_000_000).then_some(())
    })
    .await;
    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Compact).await;
    request_offline(&mut bob).await;
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd, "expired entries dropped");
    assert!(servers.log().contains("older than the age cap"));
});

topology_test!(async fn a_message_burned_while_queued_is_never_delivered(servers, &["--message-noauth", "true"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let bob_node = servers.at(1).register("bob", "pw", Encoding::Compact).await.n.unwrap();
    alice.send(FrameType::Message, &text_to(&bob_node, "burn me", 1)).await.unwrap();
    let mid = echo(&mut alice).await.mid;
    // Bob logs in and burns it (he knows its mid from history) before draining his queue.
    let (mut bob, _) = servers.at(1).login("bob", "pw", Encoding::Compact).await;
    assert_eq!(history(&mut bob, &alice_node, 0, 1).await[0].mid, mid);
    bob.send(FrameType::BurnMessage, &recall_or_burn(&alice_node, mid, 3)).await.unwrap();
    assert_eq!(pushed(&mut bob, true).await.od_type, 3);
    assert_eq!(pushed(&mut alice, true).await.od_type, 3);
    request_offline(&mut bob).await;
    assert_eq!(bob.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd, "the original is gone");
});
