//! Virtual rooms (22) and streams (94, 97): founder, granted and refused pushers, both kinds of
//! subscriber, removal, idle expiry.

use std::time::Duration;

use bytes::Bytes;
use tim_net::client::Client;
use tim_net::proto::{TimAck, TimReq, TimStream};
use tim_net::{Encoding, FrameType};

use crate::node::WAIT;
use crate::roster::user;
use crate::topology::topology_test;
use crate::wait::until;

async fn vroom(client: &mut Client, rtype: i32, room: Option<&str>, node2: Option<&str>, raw: bool) -> TimAck {
    let req = TimReq {
        rtype: Some(rtype),
        node: room.map(str::to_owned),
        node2: node2.map(str::to_owned),
        req_int: raw.then_some(1),
        ..TimReq::default()
    };
    client.send(FrameType::VRoom, &req).await.unwrap();
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.t), (22, Some(i64::from(rtype))), "{ack:?}");
    ack
}

fn stream(room: &str, body: &[u8]) -> TimStream {
    TimStream {
        id: 0,
        vnode: room.into(),
        dtype: Some(3),
        body: Some(tim_net::codec::Binary(Bytes::copy_from_slice(body))),
        from_node: String::new(),
    }
}

/// A raw push (97) in the form with the length.
fn raw_push(room: &str, body: &[u8]) -> Bytes {
    let mut frame = vec![0xE1];
    frame.extend_from_slice(&((5 + room.len() + 1 + body.len()) as u32).to_be_bytes());
    frame.extend_from_slice(room.as_bytes());
    frame.push(0x83);
    frame.extend_from_slice(body);
    Bytes::from(frame)
}

async fn got_stream(client: &mut Client) -> TimStream {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!((frame.kind, frame.ack_id), (FrameType::Stream, None), "{frame:?}");
    frame.decode(client.encoding()).unwrap()
}

async fn got_raw(client: &mut Client, room: &str) -> Vec<u8> {
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::BigBinaryStream);
    let prefix = [room.as_bytes(), &[0x83]].concat();
    assert!(frame.body.starts_with(&prefix), "raw delivery names the room");
    frame.body[prefix.len()..].to_vec()
}

topology_test!(async fn a_room_fans_out_pushes_of_its_founder_and_granted_users(servers, &[]) {

    let (mut ann, ann_node) = user(servers.at(0), "ann", Encoding::Json).await;
    let (mut ben, _) = user(servers.at(1), "ben", Encoding::Compact).await;
    let (mut cid, _) = user(servers.at(2), "cid", Encoding::Compact).await;
    let (mut dot, dot_node) = user(servers.at(3), "dot", Encoding::Json).await;

    let new = vroom(&mut ann, 1, None, None, false).await;
    let room = new.n.clone().unwrap();
    assert!(new.ok);
    assert!(vroom(&mut ben, 5, Some(&room), None, false).await.ok, "a TimStream subscriber");
    assert!(vroom(&mut cid, 5, Some(&room), None, true).await.ok, "a raw subscriber");
    assert_eq!(vroom(&mut ben, 5, Some("3yQ"), None, false).await.error_code(), Some(5101), "unknown room");

    ann.send(FrameType::Stream, &stream(&room, b"frame-1")).await.unwrap();
    let first = got_stream(&mut ben).await;
    assert_eq!(
        (first.vnode.as_str(), first.from_node.as_str(), first.dtype),
        (room.as_str(), ann_node.as_str(), Some(3))
    );
    assert_eq!(first.body.unwrap().0.as_ref(), b"frame-1");
    assert_eq!(got_raw(&mut cid, &room).await, b"frame-1");
    ann.send_raw(raw_push(&room, b"frame-2")).await.unwrap();
    let second = got_stream(&mut ben).await;
    assert!(second.id > first.id, "the server numbers the pushes");
    assert_eq!(second.body.unwrap().0.as_ref(), b"frame-2");
    assert_eq!(got_raw(&mut cid, &room).await, b"frame-2");

    // A user without the right is refused; granted, they push; revoked, refused again.
    dot.send(FrameType::Stream, &stream(&room, b"x")).await.unwrap();
    let refused = dot.recv_ack(WAIT).await.unwrap();
    assert_eq!((refused.tim_type, refused.error_code(), refused.n.as_deref()), (94, Some(4105), Some(room.as_str())));
    assert_eq!(vroom(&mut ben, 3, Some(&room), Some(&dot_node), false).await.error_code(), Some(4105), "founder only");
    assert!(vroom(&mut ann, 3, Some(&room), Some(&dot_node), false).await.ok);
    dot.send(FrameType::Stream, &stream(&room, b"from dot")).await.unwrap();
    assert_eq!(got_stream(&mut ben).await.from_node, dot_node);
    assert_eq!(got_raw(&mut cid, &room).await, b"from dot");
    assert!(vroom(&mut ann, 4, Some(&room), Some(&dot_node), false).await.ok);
    dot.send(FrameType::Stream, &stream(&room, b"x")).await.unwrap();
    assert_eq!(dot.recv_ack(WAIT).await.unwrap().error_code(), Some(4105));

    // An unsubscribed session gets nothing more: subscribed again, the next frame it gets is
    // the ack, then a push made after, which would come after frame-3 the same way.
    assert!(vroom(&mut cid, 6, Some(&room), None, false).await.ok);
    ann.send(FrameType::Stream, &stream(&room, b"frame-3")).await.unwrap();
    assert_eq!(got_stream(&mut ben).await.body.unwrap().0.as_ref(), b"frame-3");
    assert!(vroom(&mut cid, 5, Some(&room), None, true).await.ok, "nothing after UNSUB");
    ann.send(FrameType::Stream, &stream(&room, b"frame-4")).await.unwrap();
    assert_eq!(got_stream(&mut ben).await.body.unwrap().0.as_ref(), b"frame-4");
    assert_eq!(got_raw(&mut cid, &room).await, b"frame-4", "nothing after UNSUB");

    // Only the founder removes the room; the subscribers are told.
    assert_eq!(vroom(&mut ben, 2, Some(&room), None, false).await.error_code(), Some(4105));
    assert!(vroom(&mut ann, 2, Some(&room), None, false).await.ok);
    for subscriber in [&mut ben, &mut cid] {
        let gone = subscriber.recv_ack(WAIT).await.unwrap();
        assert_eq!((gone.ok, gone.tim_type, gone.t, gone.n.as_deref()), (true, 22, Some(2), Some(room.as_str())));
    }
    ann.send(FrameType::Stream, &stream(&room, b"late")).await.unwrap();
    assert_eq!(ann.recv_ack(WAIT).await.unwrap().error_code(), Some(5101));
});

topology_test!(async fn an_idle_room_expires_only_without_subscribers(servers, &["--vroom-idle", "1"]) {

    let (mut ann, _) = user(servers.at(0), "ann", Encoding::Compact).await;
    let (mut ben, ben_node) = user(servers.at(1), "ben", Encoding::Compact).await;
    let watched = vroom(&mut ann, 1, None, None, false).await.n.unwrap();
    assert!(vroom(&mut ben, 5, Some(&watched), None, false).await.ok);
    // Rooms without subscribers made after it, one at a time, each waited for until it is gone
    // (revoking a right nobody has changes nothing, and is refused with 5101 then). Owners
    // sweep every second: once the second room is gone, over two idle times have passed since
    // the watched one was made, so its own owner has swept it while it was idle.
    for _ in 0..2 {
        let lonely = vroom(&mut ann, 1, None, None, false).await.n.unwrap();
        let code = until("an idle room without subscribers to expire", WAIT, async || {
            let ack = vroom(&mut ann, 4, Some(&lonely), Some(&ben_node), false).await;
            (!ack.ok).then(|| ack.error_code())
        })
        .await;
        assert_eq!(code, Some(5101));
        assert_eq!(vroom(&mut ben, 5, Some(&lonely), None, false).await.error_code(), Some(5101), "expired");
    }
    ann.send(FrameType::Stream, &stream(&watched, b"still here")).await.unwrap();
    assert_eq!(got_stream(&mut ben).await.body.unwrap().0.as_ref(), b"still here");
});

topology_test!(async fn a_subscriber_that_does_not_read_misses_frames_without_slowing_the_room(servers, &["--max-frame", "1048576", "--outbound-bytes", "1048576"]) {

    // Its queue holds 1 MiB of frames (and 256 frames, the default).
    let (mut ann, _) = user(servers.at(0), "ann", Encoding::Compact).await;
    let (mut ben, _) = user(servers.at(1), "ben", Encoding::Compact).await;
    let (mut sleepy, _) = user(servers.at(2), "sleepy", Encoding::Compact).await;
    let room = vroom(&mut ann, 1, None, None, false).await.n.unwrap();
    assert!(vroom(&mut ben, 5, Some(&room), None, true).await.ok);
    assert!(vroom(&mut sleepy, 5, Some(&room), None, true).await.ok);
    // 80 pushes of 256 KiB: far more than the sleeper's socket buffers and queue hold.
    let body = vec![9u8; 256 << 10];
    for _ in 0..80 {
        ann.send_raw(raw_push(&room, &body)).await.unwrap();
        assert_eq!(got_raw(&mut ben, &room).await.len(), body.len(), "the reader keeps up");
    }
    // The sleeper was not cut off for it: it wakes up and gets what its queue kept, then
    // new pushes again. A push that finds its queue still full is dropped, so "after" is
    // pushed again whenever the sleeper has nothing to read, until one arrives.
    let deadline = std::time::Instant::now() + WAIT;
    let prefix = [room.as_bytes(), &[0x83]].concat();
    let mut kept = 0;
    loop {
        assert!(std::time::Instant::now() < deadline, "no push reached the sleeper ({kept} kept)");
        let Ok(frame) = sleepy.recv_within(Duration::from_millis(200)).await else {
            ann.send_raw(raw_push(&room, b"after")).await.unwrap();
            continue;
        };
        assert_eq!(frame.kind, FrameType::BigBinaryStream);
        if frame.body.strip_prefix(prefix.as_slice()) == Some(b"after".as_slice()) {
            break;
        }
        kept += 1;
    }
    assert!(kept < 80, "frames over its queue were dropped ({kept} kept)");
});
