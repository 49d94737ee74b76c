//! Presence: to named users, to the roster, and the automatic offline presence.

use std::time::Duration;

use tim_net::client::Client;
use tim_net::proto::{Tid, TimPresence};
use tim_net::{Encoding, FrameType};

use crate::chat::befriend;
use crate::node::WAIT;
use crate::roster::user;
use crate::topology::topology_test;

async fn presence(client: &mut Client) -> TimPresence {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!((frame.kind, frame.ack_id), (FrameType::Presence, None), "{frame:?}");
    frame.decode(client.encoding()).unwrap()
}

/// Nothing is queued for `client`: a ping is answered first.
async fn nothing_pending(client: &mut Client) {
    client.ping().await.unwrap();
    assert_eq!(client.recv_within(WAIT).await.unwrap().kind, FrameType::Ping);
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
    nothing_pending(&mut bob).await;
});

topology_test!(async fn broadcast_reaches_friends_and_the_last_session_says_offline(servers, &["--device-limit", "5", "--devicetype-limit", "5"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    let (mut carol, _) = user(servers.at(2), "carol", Encoding::Json).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;

    alice
        .send(FrameType::BroadPresence, &TimPresence { status: Some("here".into()), ..TimPresence::default() })
        .await
        .unwrap();
    assert_eq!(presence(&mut bob).await.status.as_deref(), Some("here"));
    nothing_pending(&mut carol).await;

    // One of two sessions ends: nothing. The last one ends: bob is told.
    let (second, ack) = servers.at(2).login("alice", "pw", Encoding::Compact).await;
    assert!(ack.ok);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    nothing_pending(&mut bob).await;
    drop(alice);
    let gone = presence(&mut bob).await;
    assert_eq!((gone.offline, gone.from_tid.unwrap().node), (Some(true), alice_node));
    nothing_pending(&mut carol).await;
});

topology_test!(async fn offline_presence_can_be_turned_off(servers, &["--presence-offline-block", "true"]) {

    let (mut alice, alice_node) = user(servers.at(0), "alice", Encoding::Json).await;
    let (mut bob, bob_node) = user(servers.at(1), "bob", Encoding::Compact).await;
    befriend(&mut alice, &alice_node, &mut bob, &bob_node).await;
    drop(alice);
    tokio::time::sleep(Duration::from_millis(300)).await;
    nothing_pending(&mut bob).await;
});
