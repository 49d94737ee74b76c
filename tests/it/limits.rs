//! Abuse limits: message rates per connection and per account, the node's connection limit,
//! group and roster capacities.

use tim_net::proto::{Tid, TimAck, TimMessage, TimReq};
use tim_net::{Encoding, FrameType};

use crate::chat::befriend;
use crate::node::{TestNode, WAIT};
use crate::roster::{business, pushed, user};
use crate::topology::topology_test;

fn text_to(to: &str, i: i64) -> TimMessage {
    TimMessage {
        ms_type: 2,
        od_type: 1,
        id: Some(i),
        to_tid: Some(Tid { node: to.into(), ..Tid::default() }),
        data_string: Some(format!("m{i}")),
        ..TimMessage::default()
    }
}

/// Sends `n` messages without waiting, then counts the echoes and the 5104 refusals.
async fn flood(client: &mut tim_net::client::Client, to: &str, n: i64) -> (usize, usize) {
    for i in 0..n {
        client.send(FrameType::Message, &text_to(to, i)).await.unwrap();
    }
    let (mut echoed, mut refused) = (0, 0);
    while echoed + refused < n as usize {
        let frame = client.recv_within(WAIT).await.unwrap();
        match frame.kind {
            FrameType::Message => echoed += 1,
            FrameType::Ack => {
                let ack: tim_net::proto::TimAck = frame.decode(client.encoding()).unwrap();
                assert_eq!((ack.tim_type, ack.error_code()), (90, Some(5104)), "{ack:?}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (echoed, refused)
}

#[tokio::test]
async fn a_flooding_client_gets_5104_while_others_are_served() {
    let node = TestNode::start(&["--rate-connection", "20", "--burst-connection", "20", "--device-limit", "2"]);
    let (mut flooder, flooder_node) = user(&node, "flooder", Encoding::Compact).await;
    let (mut victim, victim_node) = user(&node, "victim", Encoding::Compact).await;
    let (mut alice, alice_node) = user(&node, "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(&node, "bob", Encoding::Compact).await;
    befriend(&mut flooder, &flooder_node, &mut victim, &victim_node).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;

    let (echoed, refused) = flood(&mut flooder, &victim_node, 100).await;
    assert!((20..40).contains(&echoed), "about the burst of 20 accepted, {echoed} were");
    assert_eq!(echoed + refused, 100, "every frame is either accepted or refused");
    for _ in 0..echoed {
        pushed(&mut victim, true).await;
    }
    // Another client's messages go through at once.
    for i in 0..10 {
        alice.send(FrameType::Message, &text_to(&bob_node, i)).await.unwrap();
        assert_eq!(alice.recv_within(WAIT).await.unwrap().kind, FrameType::Message, "echo {i}");
        assert_eq!(pushed(&mut bob, true).await.id, Some(i));
    }
}

topology_test!(async fn an_account_is_limited_across_its_sessions(servers, &["--rate-account", "20", "--burst-account", "20", "--device-limit", "2"]) {

    let (mut one, one_node) = user(servers.at(0), "one", Encoding::Compact).await;
    let (mut peer, peer_node) = user(servers.at(1), "peer", Encoding::Compact).await;
    befriend(&mut one, &one_node, &mut peer, &peer_node).await;
    // The account's bucket is per node (README, --rate-account): both sessions on one node.
    let (mut two, _) = servers.at(0).login("one", "pw", Encoding::Compact).await;
    let (first, _) = flood(&mut one, &peer_node, 15).await;
    // The first session's echoes also reach the second; skip them.
    for _ in 0..first {
        assert_eq!(two.recv_within(WAIT).await.unwrap().kind, FrameType::Message);
    }
    let (second, refused) = flood(&mut two, &peer_node, 15).await;
    assert!(
        first + second <= 25 && refused >= 5,
        "one bucket for both sessions: {first} + {second}, {refused} refused"
    );
});

#[tokio::test]
async fn a_login_past_the_connect_limit_gets_5104_and_is_closed() {
    let node = TestNode::start(&["--connect-limit", "2"]);
    let (_a, _) = user(&node, "a", Encoding::Compact).await;
    let (_b, _) = user(&node, "b", Encoding::Compact).await;
    node.register("c", "pw", Encoding::Compact).await;
    let (mut c, ack) = node.login("c", "pw", Encoding::Compact).await;
    assert_eq!((ack.ok, ack.error_code()), (false, Some(5104)));
    c.closed_within(WAIT).await.expect("closed after the refusal");
}

topology_test!(async fn groups_and_rosters_have_capacities(servers, &["--max-group-members", "2", "--max-groups-per-user", "2", "--max-roster", "1"]) {

    let (mut ann, ann_node) = user(servers.at(0), "ann", Encoding::Compact).await;
    let (mut ben, ben_node) = user(servers.at(1), "ben", Encoding::Compact).await;
    let (mut cid, cid_node) = user(servers.at(2), "cid", Encoding::Compact).await;
    let new_room =
        |name: &str| TimReq { rtype: Some(8), node: Some(name.into()), req_int: Some(2), ..TimReq::default() };
    ann.send(FrameType::Business, &new_room("g1")).await.unwrap();
    let group = ann.recv_ack(WAIT).await.unwrap().n.unwrap();
    business(&mut ben, 9, Some(&group), Some("hi")).await;
    assert_eq!(pushed(&mut ben, true).await.bn_type, Some(10));
    business(&mut cid, 9, Some(&group), Some("hi")).await;
    let full = cid.recv_ack(WAIT).await.unwrap();
    assert_eq!((full.t, full.error_code()), (Some(9), Some(4105)), "the group is full");
    ann.send(FrameType::Business, &new_room("g2")).await.unwrap();
    assert!(ann.recv_ack(WAIT).await.unwrap().ok);
    ann.send(FrameType::Business, &new_room("g3")).await.unwrap();
    let over = ann.recv_ack(WAIT).await.unwrap();
    assert_eq!((over.t, over.error_code()), (Some(8), Some(4105)), "in as many groups as a user may be");

    befriend(&mut ann, &ann_node, &mut ben, &ben_node).await;
    business(&mut cid, 4, Some(&ann_node), Some("hi")).await;
    assert_eq!(pushed(&mut ann, true).await.bn_type, Some(4));
    business(&mut ann, 4, Some(&cid_node), Some("ok")).await;
    assert_eq!(ann.recv_ack(WAIT).await.unwrap().error_code(), Some(4105), "ann's roster is full");
});

topology_test!(async fn the_groups_per_user_cap_holds_under_concurrent_joins(servers, &["--max-groups-per-user", "2", "--device-limit", "6", "--devicetype-limit", "6"]) {

    let mut groups = Vec::new();
    for i in 0..5 {
        let (mut founder, _) = user(servers.at(i), &format!("f{i}"), Encoding::Compact).await;
        let req = TimReq { rtype: Some(8), node: Some(format!("g{i}")), req_int: Some(2), ..TimReq::default() };
        founder.send(FrameType::Business, &req).await.unwrap();
        groups.push(founder.recv_ack(WAIT).await.unwrap().n.unwrap());
    }
    let (first, _) = user(servers.at(5), "joiner", Encoding::Compact).await;
    let mut sessions = vec![first];
    for k in 1..5 {
        sessions.push(servers.at(5 + k).login("joiner", "pw", Encoding::Compact).await.0);
    }
    // Five sessions of one user join five groups at once: two may succeed. Each session waits
    // for its answer: the notice of its own group (every session gets those of the user's
    // joins), or a refusal.
    let joins = sessions.into_iter().zip(&groups).map(|(mut session, group)| {
        let group = group.clone();
        tokio::spawn(async move {
            business(&mut session, 9, Some(&group), Some("hi")).await;
            let joined = loop {
                let frame = session.recv_within(WAIT).await.unwrap();
                if frame.kind == FrameType::Ack {
                    let refused: TimAck = frame.decode(Encoding::Compact).unwrap();
                    assert_eq!((refused.t, refused.error_code()), (Some(9), Some(4105)), "{refused:?}");
                    break false;
                }
                assert_eq!(frame.kind, FrameType::Message, "{frame:?}");
                session.ack(frame.ack_id.unwrap()).await.unwrap();
                let notice: TimMessage = frame.decode(Encoding::Compact).unwrap();
                if notice.room_tid.as_ref().map(|t| &t.node) == Some(&group) {
                    assert_eq!(notice.bn_type, Some(10), "{notice:?}");
                    break true;
                }
            };
            (session, joined)
        })
    });
    let (mut sessions, mut joined) = (Vec::new(), 0);
    for join in joins.collect::<Vec<_>>() {
        let (session, ok) = join.await.unwrap();
        sessions.push(session);
        joined += usize::from(ok);
    }
    assert_eq!(joined, 2, "as many joins succeed as the cap allows");
    let (mut check, _) = servers.at(5).login("joiner", "pw", Encoding::Compact).await;
    check.send(FrameType::Business, &TimReq { rtype: Some(2), ..TimReq::default() }).await.unwrap();
    let listed = loop {
        let frame = check.recv_within(WAIT).await.unwrap();
        if frame.kind == FrameType::Nodes {
            break frame.decode::<tim_net::proto::TimNodes>(Encoding::Compact).unwrap().nodelist.unwrap_or_default();
        }
    };
    assert_eq!(listed.len(), 2, "in exactly as many groups as the cap allows: {listed:?}");
    drop(sessions);
});
