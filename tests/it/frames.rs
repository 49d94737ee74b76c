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

#[tokio::test]
async fn big_data_is_reassembled_by_its_length() {
    let node = TestNode::start(&[]);
    assert!(node.register("big", "pw", Encoding::Compact).await.ok);
    let (mut client, _) = node.login("big", "pw", Encoding::Compact).await;
    let data = vec![7u8; 3000];
    let mut frame = vec![0xE0];
    frame.extend_from_slice(&((5 + 3 + 1 + data.len()) as u32).to_be_bytes());
    frame.extend_from_slice(b"abc\x83");
    frame.extend_from_slice(&data);
    // Three WebSocket messages make one frame: one answer, not three.
    for part in frame.chunks(1100) {
        client.send_raw(Bytes::copy_from_slice(part)).await.unwrap();
    }
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.error_code()), (96, Some(4107)), "parsed whole; delivery not built yet");
    // Declared length smaller than what arrived: 4114, as TIM answers.
    client.send_raw(Bytes::from_static(&[0xE0, 0, 0, 0, 6, b'a', b'b', 0x83, 1])).await.unwrap();
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!(ack.error_code(), Some(4114));
    client.ping().await.unwrap();
    assert_eq!(client.recv_within(WAIT).await.unwrap().kind, FrameType::Ping);
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
