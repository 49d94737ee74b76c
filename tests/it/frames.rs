//! Session rules and frame handling: ping, frames before login, timeouts, bad and oversize
//! frames, fragmentation and big-data reassembly.

use std::time::Duration;

use bytes::Bytes;
use tim_net::client::Client;
use tim_net::frame::encode_client;
use tim_net::proto::{Tid, TimMessage};
use tim_net::{Encoding, FrameType};

use crate::node::{auth, TestNode, WAIT};

fn hi() -> TimMessage {
    TimMessage {
        ms_type: 2,
        od_type: 1,
        to_tid: Some(Tid { node: "B".into(), ..Tid::default() }),
        data_string: Some("hi".into()),
        ..TimMessage::default()
    }
}

#[tokio::test]
async fn ping_is_answered_after_login_only() {
    let node = TestNode::start(&[]);
    assert!(node.register("pinger", "pw", Encoding::Compact).await.ok);
    let mut client = Client::connect(node.addr, Encoding::Compact).await.unwrap();
    client.ping().await.unwrap();
    // Before login a ping gets nothing and does not close the socket: the login still works.
    assert!(client.login(&auth("pinger", "pw"), WAIT).await.unwrap().ok);
    client.ping().await.unwrap();
    let pong = client.recv_within(WAIT).await.unwrap();
    assert_eq!((pong.kind, pong.ack_id, pong.body.len()), (FrameType::Ping, None, 0));
}

#[tokio::test]
async fn frame_before_login_closes_the_socket() {
    let node = TestNode::start(&[]);
    for encoding in [Encoding::Compact, Encoding::Json] {
        let mut client = Client::connect(node.addr, encoding).await.unwrap();
        client.send(FrameType::Message, &hi()).await.unwrap();
        client.closed_within(WAIT).await.expect("closed");
    }
    let mut garbage = Client::connect(node.addr, Encoding::Compact).await.unwrap();
    garbage.send_raw(Bytes::from_static(&[0x7F, 1, 2, 3])).await.unwrap();
    garbage.closed_within(WAIT).await.expect("garbage before login closes");
}

#[tokio::test]
async fn unauthenticated_socket_is_closed_after_the_auth_timeout() {
    let node = TestNode::start(&["--auth-timeout", "1"]);
    let mut client = Client::connect(node.addr, Encoding::Json).await.unwrap();
    let started = std::time::Instant::now();
    client.closed_within(Duration::from_secs(10)).await.expect("closed by the auth timeout");
    assert!(started.elapsed() >= Duration::from_millis(500), "not long before the timeout");
}

#[tokio::test]
async fn ping_timeout_closes_a_silent_session() {
    let node = TestNode::start(&["--ping-timeout", "1"]);
    assert!(node.register("quiet", "pw", Encoding::Json).await.ok);
    let (mut client, ack) = node.login("quiet", "pw", Encoding::Json).await;
    assert!(ack.ok);
    client.closed_within(Duration::from_secs(10)).await.expect("closed by the ping timeout");
}

#[tokio::test]
async fn garbage_and_oversize_frames_do_not_hurt_the_server() {
    let mut node = TestNode::start(&["--max-frame", "4096", "--device-limit", "10", "--devicetype-limit", "10"]);
    assert!(node.register("fuzzy", "pw", Encoding::Compact).await.ok);
    let (mut client, _) = node.login("fuzzy", "pw", Encoding::Compact).await;

    // Unknown type code and undecodable bodies: 4104, the session lives on.
    client.send_raw(Bytes::from_static(&[0x7F, 0xFF])).await.unwrap();
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.error_code()), (0x7F, Some(4104)));
    client.send_raw(Bytes::from_static(&[0x10, 0x18, 0xFF, 0xFF, 0xFF])).await.unwrap();
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.ok), (16, true), "repeated auth re-acks even when its body is junk");
    client.send_raw(Bytes::from_static(b"\xDAnot json")).await.unwrap();
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert!(!ack.ok && ack.tim_type == 90);
    client.send_raw(Bytes::new()).await.unwrap();
    client.ping().await.unwrap();
    assert_eq!(client.recv_within(WAIT).await.unwrap().kind, FrameType::Ping, "still alive");

    // A message over the limit closes only that socket.
    let (mut other, _) = node.login("fuzzy", "pw", Encoding::Json).await;
    client.send_raw(Bytes::from(vec![0x5A; 5000])).await.unwrap();
    client.closed_within(WAIT).await.expect("oversize closes the socket");
    other.ping().await.unwrap();
    assert_eq!(other.recv_within(WAIT).await.unwrap().kind, FrameType::Ping, "other session unaffected");
    assert!(node.log().contains("frame over the size limit"), "clear log line");

    // So does a big-data frame that declares more than the limit.
    let mut big = vec![0xE0, 0x00, 0x00, 0x20, 0x00];
    big.extend_from_slice(b"abc\x83xyz");
    other.send_raw(Bytes::from(big)).await.unwrap();
    other.closed_within(WAIT).await.expect("declared oversize closes the socket");

    let (_, ack) = node.login("fuzzy", "pw", Encoding::Compact).await;
    assert!(ack.ok, "server still serves");
    assert!(node.alive());
}

#[tokio::test]
async fn fragmented_and_text_messages_are_reassembled() {
    let node = TestNode::start(&[]);
    assert!(node.register("frag", "pw", Encoding::Json).await.ok);
    let mut client = Client::connect(node.addr, Encoding::Json).await.unwrap();
    let login = encode_client(FrameType::Auth, Encoding::Json, &auth("frag", "pw"));
    client.send_fragmented(&login, 3).await.unwrap();
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert!(ack.ok, "{ack:?}");
    let mut text = Client::connect(node.addr, Encoding::Json).await.unwrap();
    let json = String::from_utf8(login[1..].to_vec()).unwrap();
    text.send_text(&format!("\u{10}{json}")).await.unwrap();
    let reply = text.recv_within(WAIT).await.unwrap();
    assert_eq!(reply.kind, FrameType::Ack, "text frame accepted");
}

/// A client → server big-data frame; `with_length`: the form with the 4-byte total length
/// (timjs), else the legacy form without it (timgo, atim).
fn big_frame(kind: u8, target: &str, sep: u8, data: &[u8], with_length: bool) -> Vec<u8> {
    let mut frame = vec![kind | 0x80];
    if with_length {
        frame.extend_from_slice(&((5 + target.len() + 1 + data.len()) as u32).to_be_bytes());
    }
    frame.extend_from_slice(target.as_bytes());
    frame.push(sep);
    frame.extend_from_slice(data);
    frame
}

/// The next frame the client gets, as bytes: a big-data delivery `[type][origin]sep[data]`.
async fn big_delivery(client: &mut Client) -> Vec<u8> {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.ack_id, None, "big data asks for no ack");
    let mut raw = vec![frame.kind as u8];
    raw.extend_from_slice(&frame.body);
    raw
}

#[tokio::test]
async fn big_data_of_1_mib_reaches_a_friend_in_both_forms() {
    let node = TestNode::start(&[]);
    let (mut ann, ann_node) = crate::roster::user(&node, "ann", Encoding::Compact).await;
    let (mut ben, ben_node) = crate::roster::user(&node, "ben", Encoding::Json).await;
    let (mut cid, _) = crate::roster::user(&node, "cid", Encoding::Compact).await;
    crate::chat::befriend(&mut ann, &ann_node, &mut ben, &ben_node).await;
    let binary: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let text = "ünïcode ".repeat((1 << 20) / 10);

    // With its length, split over several WebSocket messages: reassembled by the length.
    let frame = big_frame(96, &ben_node, 0x83, &binary, true);
    for part in frame.chunks(300_000) {
        ann.send_raw(Bytes::copy_from_slice(part)).await.unwrap();
    }
    let mut expected = vec![0x60];
    expected.extend_from_slice(ann_node.as_bytes());
    expected.push(0x83);
    expected.extend_from_slice(&binary);
    assert!(big_delivery(&mut ben).await == expected, "the binary arrives whole");
    // Big strings, with both separators ('|' and timjs's 0x00), in the legacy form without a
    // length: one WebSocket message in several WebSocket frames.
    for sep in [b'|', 0] {
        ann.send_fragmented(&big_frame(95, &ben_node, sep, text.as_bytes(), false), 200_000).await.unwrap();
        let got = big_delivery(&mut ben).await;
        let mut expected = vec![0x5F];
        expected.extend_from_slice(ann_node.as_bytes());
        expected.push(b'|');
        expected.extend_from_slice(text.as_bytes());
        assert!(got == expected, "the string arrives whole (separator {sep})");
    }

    // Not to strangers (TIM lets anyone send big data to anyone), not to unknown nodes.
    cid.send_raw(Bytes::from(big_frame(96, &ben_node, 0x83, b"hi", true))).await.unwrap();
    let ack = cid.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.error_code()), (96, Some(4105)));
    cid.send_raw(Bytes::from(big_frame(95, "0OIl", b'|', b"hi", true))).await.unwrap();
    assert_eq!(cid.recv_ack(WAIT).await.unwrap().error_code(), Some(4106));
    // Declared length smaller than what arrived: 4114, as TIM answers.
    ann.send_raw(Bytes::from_static(&[0xE0, 0, 0, 0, 6, b'a', b'b', 0x83, 1])).await.unwrap();
    assert_eq!(ann.recv_ack(WAIT).await.unwrap().error_code(), Some(4114));
    ann.ping().await.unwrap();
    assert_eq!(ann.recv_within(WAIT).await.unwrap().kind, FrameType::Ping);
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let mut node = TestNode::start(&[]);
    assert!(node.register("term", "pw", Encoding::Json).await.ok);
    let (mut client, _) = node.login("term", "pw", Encoding::Json).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = node.terminate();
        (status, node)
    });
    client.closed_within(WAIT).await.expect("session closed at shutdown");
    let (status, _node) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}
