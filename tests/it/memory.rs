//! Memory under hostile frames: a frame's decode is bounded by its size, and large frames are
//! taken a few at a time, so a flood of them cannot grow the node without bound.

use std::time::Duration;

use bytes::Bytes;
use tim_net::client::Client;
use tim_net::{Encoding, FrameType};

use crate::node::{TestNode, WAIT};

const MIB: u64 = 1 << 20;
/// The frame size: the default `--max-frame`.
const FRAME: usize = 8 << 20;
/// Large frames received and decoded at once in these tests (`--large-frames`).
const SLOTS: u64 = 4;
/// Growth of the node's peak RSS that one such frame may cause (issue: at most 64 MiB; it
/// was 162 MiB when a list header could reserve 24 bytes per announced element).
const ONE_FRAME_GROWTH: u64 = 64 * MIB;
/// Growth of the peak RSS under 50 such frames at once: each slot holds one frame as it
/// arrives (the socket's buffer and the message: about 3× its size) and its decode (within
/// its budget), and each waiting connection at most 64 KiB read ahead. 4 slots × 3 × 8 MiB
/// plus 64 MiB of slack for the allocator and the runtime.
const FLOOD_GROWTH: u64 = SLOTS * 3 * FRAME as u64 + 64 * MIB;

/// The node's peak resident set (VmHWM) in bytes.
fn peak_rss(node: &TestNode) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A USERINFO frame (42) of exactly `size` bytes whose `nodelist` is empty strings, one per
/// byte: the most elements a body of this size can announce. Compact: `2A 29 F8 <n> 00… 00`.
fn empty_strings_compact(size: usize) -> Bytes {
    let mut n = size - 4;
    loop {
        let mut frame = vec![0x2A, 0x29, 0xF8];
        let mut v = n as u64;
        while v >= 0x80 {
            frame.push((v as u8) | 0x80);
            v >>= 7;
        }
        frame.push(v as u8);
        if frame.len() + n < size {
            frame.resize(frame.len() + n, 0);
            frame.push(0); // STOP
            return Bytes::from(frame);
        }
        n -= 1;
    }
}

/// The same in JSON: `AA {"nodelist":["","",…,""]}` of at most `size` bytes.
fn empty_strings_json(size: usize) -> Bytes {
    let head = b"\xAA{\"nodelist\":[\"\"";
    let n = (size - head.len() - 2) / 3;
    let mut frame = Vec::with_capacity(size);
    frame.extend_from_slice(head);
    for _ in 0..n {
        frame.extend_from_slice(b",\"\"");
    }
    frame.extend_from_slice(b"]}");
    Bytes::from(frame)
}

/// Sends the frame and expects the node to refuse it as undecodable (4104), not to die.
async fn refused(client: &mut Client, frame: Bytes, wait: Duration) {
    client.send_raw(frame).await.unwrap();
    let ack = client.recv_ack(wait).await.unwrap();
    assert_eq!((ack.tim_type, ack.error_code()), (FrameType::Nodes as i8, Some(4104)), "{ack:?}");
}

#[tokio::test]
async fn hostile_frames_are_bounded_in_memory() {
    let slots = SLOTS.to_string();
    let mut node = TestNode::start(&[
        "--argon2-memory-kib",
        "1024",
        "--device-limit",
        "100",
        "--devicetype-limit",
        "100",
        "--large-frames",
        &slots,
    ]);
    assert!(node.register("flood", "pw", Encoding::Compact).await.ok);
    let mut clients = Vec::new();
    for i in 0..50 {
        let encoding = if i % 2 == 0 { Encoding::Compact } else { Encoding::Json };
        let (client, ack) = node.login("flood", "pw", encoding).await;
        assert!(ack.ok);
        clients.push(client);
    }
    let (mut control, _) = node.login("flood", "pw", Encoding::Compact).await;
    let compact = empty_strings_compact(FRAME);
    let json = empty_strings_json(FRAME);
    assert_eq!(compact.len(), FRAME);
    assert!(json.len() > FRAME - 4);

    // One frame of each encoding: refused, and the peak grows by less than the bound.
    let base = peak_rss(&node);
    refused(&mut clients[0], compact.clone(), WAIT).await;
    refused(&mut clients[1], json.clone(), WAIT).await;
    let one = peak_rss(&node) - base;
    assert!(one <= ONE_FRAME_GROWTH, "one 8 MiB frame grew the peak RSS by {} MiB", one / MIB);

    // 50 at once: every one refused, the node answers another session meanwhile.
    let base = peak_rss(&node);
    let flood: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let frame = if i % 2 == 0 { compact.clone() } else { json.clone() };
            tokio::spawn(async move { refused(&mut client, frame, Duration::from_secs(120)).await })
        })
        .collect();
    control.ping().await.unwrap();
    assert_eq!(control.recv_within(WAIT).await.unwrap().kind, FrameType::Ping, "the node answers others");
    for sender in flood {
        sender.await.unwrap();
    }
    let grown = peak_rss(&node) - base;
    assert!(
        grown <= FLOOD_GROWTH,
        "50 frames at once grew the peak RSS by {} MiB (bound {} MiB)",
        grown / MIB,
        FLOOD_GROWTH / MIB
    );
    assert!(node.alive());
    let ack = node.login("flood", "pw", Encoding::Compact).await.1;
    assert!(ack.ok, "still serving");
    eprintln!("peak RSS growth: one frame {} MiB, 50 at once {} MiB", one / MIB, grown / MIB);
}

#[tokio::test]
async fn no_large_frame_before_login() {
    let node = TestNode::start(&[]);
    let mut client = Client::connect(node.addr, Encoding::Compact).await.unwrap();
    client.send_raw(Bytes::from(vec![0x10; 1 << 20])).await.unwrap();
    client.closed_within(WAIT).await.expect("a large frame before login closes the socket");
    assert!(node.log().contains("before login"), "the log says why");
    // Positive control: a small frame before login (a login) is served.
    assert!(node.register("small", "pw", Encoding::Compact).await.ok);
    let (_, ack) = node.login("small", "pw", Encoding::Compact).await;
    assert!(ack.ok);
}

#[tokio::test]
async fn a_slow_large_frame_loses_its_slot() {
    let node = TestNode::start(&["--large-frame-timeout", "1", "--large-frames", "1"]);
    assert!(node.register("slow", "pw", Encoding::Compact).await.ok);
    let (mut slow, _) = node.login("slow", "pw", Encoding::Compact).await;
    // A WebSocket frame header announcing 1 MiB, then only 128 KiB of it: the sender holds
    // the one slot and stalls.
    slow.send_partial(1 << 20, 128 << 10).await.unwrap();
    slow.closed_within(WAIT).await.expect("closed once the large-frame timeout passes");
    assert!(node.log().contains("took longer than 1 s"), "the log says why");
    // The slot is free again: another client's large frame goes through.
    let (mut next, _) = node.login("slow", "pw", Encoding::Compact).await;
    refused(&mut next, empty_strings_compact(1 << 20), WAIT).await;
}
