//! Presence: to named users, to the roster, and the automatic offline presence.
//!
//! A presence that must not come is checked with one that must, sent after it the same way:
//! it is the client's next presence.

use tim_net::client::Client;
use tim_net::proto::{Tid, TimPresence};
use tim_net::{Encoding, FrameType};

use crate::admin::figure;
use crate::chat::befriend;
use crate::node::WAIT;
use crate::roster::user;
use crate::topology::topology_test;
use crate::wait::until;

async fn presence(client: &mut Client) -> TimPresence {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!((frame.kind, frame.ack_id), (FrameType::Presence, None), "{frame:?}");
    frame.decode(client.encoding()).unwrap()
}

/// The sender, status and offline flag of the next presence.
async fn next(client: &mut Client) -> (String, Option<String>, Option<bool>) {
    let got = presence(client).await;
    (got.from_tid.unwrap().node, got.status, got.offline)
}

fn status(status: &str) -> TimPresence {
    TimPresence { status: Some(status.into()), ..TimPresence::default() }
}

topology_test!(async fn presence_goes_to_named_online_users(servers, &[]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    let to_bob = TimPresence {
        to_tid: Some(Tid { node: bob_node.clone(), ..Tid::default() }),
        show: Some(2),
        status: Some("away".into()),
        offline: Some(true),
        ..TimPresence::default()
    };
    alice.send(FrameType::Presence, &to_bob).await.unwrap();
    let got = presence(&mut bob).await;
    assert_eq!(
        (got.show, got.status.as_deref(), got.offline),
        (Some(2), Some("away"), None),
        "offline is the server's"
    );
    assert_eq!(got.from_tid.unwrap().node, alice_node);
    assert!(got.id.is_some());

    let bad = TimPresence { to_list: Some(vec![bob_node.clone(), "bad-node".into()]), ..TimPresence::default() };
    alice.send(FrameType::Presence, &bad).await.unwrap();
    let ack = alice.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.error_code()), (91, Some(4106)));
    alice.send(FrameType::Presence, &TimPresence::default()).await.unwrap();
    assert_eq!(alice.recv_ack(WAIT).await.unwrap().error_code(), Some(4106), "no target");
    // The refused ones reached nobody: bob's next presence is one sent after them.
    let later = TimPresence { to_tid: Some(Tid { node: bob_node.clone(), ..Tid::default() }), ..status("back") };
    alice.send(FrameType::Presence, &later).await.unwrap();
    assert_eq!(next(&mut bob).await, (alice_node, Some("back".into()), None));
});

topology_test!(async fn broadcast_reaches_friends_and_the_last_session_says_offline(servers, &["--device-limit", "5", "--devicetype-limit", "5"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    let (mut carol, carol_node) = user(servers.at(2), "carol", Encoding::Json).await;
    // The controls, whose presences go the ways alice's would: dan on alice's node, friends
    // with bob and carol, and eve on the node of alice's second session, friends with bob.
    let (mut dan, dan_node) = user(servers.at(0), "dan", Encoding::Compact).await;
    let (mut eve, eve_node) = user(servers.at(2), "eve", Encoding::Compact).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    befriend(&mut dan, &dan_node, &mut bob, &bob_node).await;
    befriend(&mut dan, &dan_node, &mut carol, &carol_node).await;
    befriend(&mut eve, &eve_node, &mut bob, &bob_node).await;
    let token = servers.read_token().await;

    alice.send(FrameType::BroadPresence, &status("here")).await.unwrap();
    assert_eq!(next(&mut bob).await, (alice_node.clone(), Some("here".into()), None));
    // Carol, no friend of alice's, got none of it (and bob no second copy): dan's broadcast
    // from the same node after it is their next presence.
    dan.send(FrameType::BroadPresence, &status("dan here")).await.unwrap();
    assert_eq!(next(&mut carol).await, (dan_node.clone(), Some("dan here".into()), None));
    assert_eq!(next(&mut bob).await, (dan_node.clone(), Some("dan here".into()), None));

    // One of two sessions ends: nothing. Once its node counts it gone, eve's session there
    // ends, and her offline presence, on the way alice's would take, is bob's next.
    let admin = servers.at(2).admin.unwrap();
    let (second, ack) = servers.at(2).login("alice", "pw", Encoding::Compact).await;
    assert!(ack.ok);
    let sessions = figure(admin, &token, "tim_sessions").await;
    drop(second);
    until("the node to see alice's second session end", WAIT, async || {
        (figure(admin, &token, "tim_sessions").await < sessions).then_some(())
    })
    .await;
    drop(eve);
    assert_eq!(next(&mut bob).await, (eve_node, None, Some(true)));

    // The last one ends: bob is told. Then dan's session on that node ends: bob got alice's
    // once, carol none of it.
    drop(alice);
    assert_eq!(next(&mut bob).await, (alice_node, None, Some(true)));
    drop(dan);
    assert_eq!(next(&mut bob).await, (dan_node.clone(), None, Some(true)));
    assert_eq!(next(&mut carol).await, (dan_node, None, Some(true)));
});

topology_test!(async fn offline_presence_can_be_turned_off(servers, &["--presence-offline-block", "true", "--auth-min-unix", "3600"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    drop(alice);
    // One device: alice logs in again once her directory saw that session end (4111 before),
    // when an offline presence would be on its way. Her presence from the same node, after
    // it the same way, is bob's next.
    let mut alice = until("alice's directory to see her session end", WAIT, async || {
        let (client, ack) = servers.at(0).login("alice", "pw", Encoding::Json).await;
        if ack.ok {
            return Some(client);
        }
        assert_eq!(ack.error_code(), Some(4111), "{ack:?}");
        None
    })
    .await;
    alice.send(FrameType::BroadPresence, &status("back")).await.unwrap();
    assert_eq!(next(&mut bob).await, (alice_node, Some("back".into()), None));
});
