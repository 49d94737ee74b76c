//! Groups (TIMBUSINESS 41): the whole life cycle with its pushes and error codes.

use tim_net::client::Client;
use tim_net::proto::{Tid, TimAck, TimMessage, TimMessageList, TimNodes, TimReq};
use tim_net::{Encoding, FrameType};

use crate::node::WAIT;
use crate::roster::{batch, drain_offline, pushed, request_offline, user};
use crate::topology::topology_test;

pub async fn request(client: &mut Client, rtype: i32, node: Option<&str>, node2: Option<&str>, int: Option<i64>) {
    let req = TimReq {
        rtype: Some(rtype),
        node: node.map(str::to_owned),
        node2: node2.map(str::to_owned),
        req_int: int,
        req_str: Some("please".into()),
        ..TimReq::default()
    };
    client.send(FrameType::Business, &req).await.unwrap();
}

/// Sends a group request and returns its ack (`t` = rtype).
async fn op(client: &mut Client, rtype: i32, group: &str, user: Option<&str>) -> TimAck {
    request(client, rtype, Some(group), user, None).await;
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.tim_type, ack.t), (41, Some(i64::from(rtype))), "{ack:?}");
    ack
}

async fn ok(client: &mut Client, rtype: i32, group: &str, user: Option<&str>) {
    let ack = op(client, rtype, group, user).await;
    assert!(ack.ok, "rtype {rtype} refused: {ack:?}");
    assert_eq!(ack.n.as_deref(), Some(group));
}

async fn refused(client: &mut Client, rtype: i32, group: &str, user: Option<&str>, code: i32) {
    let ack = op(client, rtype, group, user).await;
    assert_eq!((ack.ok, ack.error_code()), (false, Some(code)), "rtype {rtype}");
}

/// A request refused as a whole (a list, or a malformed request): as TIM, without `t`.
async fn refused_bare(client: &mut Client, rtype: i32, group: &str, user: Option<&str>, code: i32) {
    request(client, rtype, Some(group), user, None).await;
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.ok, ack.tim_type, ack.t, ack.error_code()), (false, 41, None, Some(code)), "rtype {rtype}");
}

pub async fn new_group(client: &mut Client, name: &str, private: bool) -> String {
    request(client, 8, Some(name), None, Some(if private { 1 } else { 2 })).await;
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert!(ack.ok && ack.t == Some(8), "{ack:?}");
    ack.n.unwrap()
}

pub async fn nodes(client: &mut Client, rtype: i32, group: Option<&str>) -> Vec<String> {
    request(client, rtype, group, None, None).await;
    let frame = client.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::Nodes, "{frame:?}");
    let nodes: TimNodes = frame.decode(client.encoding()).unwrap();
    let mut list = nodes.nodelist.unwrap_or_default();
    list.sort();
    list
}

fn sorted(mut v: Vec<&String>) -> Vec<String> {
    v.sort();
    v.into_iter().cloned().collect()
}

/// A pushed group notice: its bnType, sender and group.
pub async fn notice(client: &mut Client) -> (i32, String, String) {
    let msg = pushed(client, true).await;
    assert_eq!((msg.ms_type, msg.od_type), (2, 4));
    (msg.bn_type.unwrap(), msg.from_tid.unwrap().node, msg.room_tid.unwrap().node)
}

topology_test!(async fn the_group_life_cycle_with_every_push_and_error(servers, &[]) {

    let (mut ann, ann_node) = user(servers.at(0), "ann", Encoding::Json).await;
    let (mut ben, ben_node) = user(servers.at(1), "ben", Encoding::Compact).await;
    let (mut cid, cid_node) = user(servers.at(2), "cid", Encoding::Compact).await;
    let (mut dot, dot_node) = user(servers.at(3), "dot", Encoding::Json).await;

    // An open group: anyone may join, members may pull others in, strangers may not.
    let open = new_group(&mut ann, "open one", false).await;
    assert_eq!(nodes(&mut ann, 2, None).await, vec![open.clone()], "USERROOM");
    request(&mut ben, 9, Some(&open), None, None).await;
    assert_eq!(notice(&mut ben).await, (10, ben_node.clone(), open.clone()), "joined: PASSROOM");
    refused(&mut ben, 9, &open, None, 4101).await;
    refused(&mut cid, 12, &open, Some(&dot_node), 4105).await;
    ok(&mut ben, 12, &open, Some(&cid_node)).await;
    assert_eq!(notice(&mut cid).await, (12, ben_node.clone(), open.clone()), "pulled in: PULLROOM");
    assert_eq!(nodes(&mut cid, 3, Some(&open)).await, sorted(vec![&ann_node, &ben_node, &cid_node]));
    refused_bare(&mut dot, 3, &open, None, 4104).await;
    refused(&mut ben, 12, &open, Some(&cid_node), 4101).await;

    // Kicks: nobody kicks the founder; a member who is no admin kicks nobody.
    refused(&mut ben, 13, &open, Some(&ann_node), 4105).await;
    refused(&mut ben, 13, &open, Some(&cid_node), 4105).await;
    ok(&mut ann, 13, &open, Some(&cid_node)).await;
    assert_eq!(notice(&mut cid).await, (13, ann_node.clone(), open.clone()), "kicked: KICKROOM");
    refused(&mut ann, 13, &open, Some(&cid_node), 4104).await;

    // The group blocks dot: dot cannot join until an admin pulls dot in.
    ok(&mut ann, 15, &open, Some(&dot_node)).await;
    assert_eq!(nodes(&mut ann, 20, Some(&open)).await, vec![dot_node.clone()], "BLOCKROOMMEMBERLIST");
    refused_bare(&mut ben, 20, &open, None, 4105).await;
    refused(&mut ben, 12, &open, Some(&dot_node), 4110).await;
    request(&mut dot, 9, Some(&open), None, None).await;
    let ack = dot.recv_ack(WAIT).await.unwrap();
    assert_eq!((ack.ok, ack.t, ack.error_code(), ack.n.as_deref()), (false, Some(9), Some(4110), Some(open.as_str())));
    ok(&mut ann, 12, &open, Some(&dot_node)).await;
    assert_eq!(notice(&mut dot).await.0, 12);
    assert!(nodes(&mut ann, 20, Some(&open)).await.is_empty(), "an admin's pull lifts the group's block");

    // Users block groups; the founder may not leave or block their own group.
    ok(&mut dot, 14, &open, None).await;
    assert_eq!(nodes(&mut dot, 19, None).await, vec![open.clone()], "BLOCKROOMLIST");
    refused(&mut ben, 12, &open, Some(&dot_node), 4110).await;
    refused(&mut ann, 16, &open, None, 4105).await;
    refused(&mut ann, 14, &open, None, 4105).await;
    ok(&mut ben, 16, &open, None).await;
    refused(&mut ben, 16, &open, None, 4104).await;

    // A private group: requests go to the founder; approve one, reject another.
    let private = new_group(&mut ann, "private one", true).await;
    request(&mut ben, 9, Some(&private), None, None).await;
    let asked = pushed(&mut ann, true).await;
    assert_eq!((asked.bn_type, asked.data_string.as_deref()), (Some(9), Some("please")));
    assert_eq!(asked.from_tid.unwrap().node, ben_node);
    request(&mut cid, 9, Some(&private), None, None).await;
    assert_eq!(notice(&mut ann).await, (9, cid_node.clone(), private.clone()));
    request(&mut cid, 9, Some(&private), None, None).await;
    let again = cid.recv_ack(WAIT).await.unwrap();
    assert_eq!((again.t, again.error_code()), (Some(9), Some(4117)), "asking again notifies nobody");
    refused(&mut ben, 12, &private, Some(&cid_node), 4105).await;
    ok(&mut ann, 12, &private, Some(&ben_node)).await;
    assert_eq!(notice(&mut ben).await, (10, ann_node.clone(), private.clone()), "approved: PASSROOM");
    ok(&mut ann, 11, &private, Some(&cid_node)).await;
    assert_eq!(notice(&mut cid).await, (11, ann_node.clone(), private.clone()), "rejected: NOPASSROOM");
    refused(&mut ann, 11, &private, Some(&cid_node), 4104).await;
    assert_eq!(nodes(&mut ben, 3, Some(&private)).await, sorted(vec![&ann_node, &ben_node]));

    // Cancelling needs the founder alone in the group; a cancelled group is gone.
    refused(&mut ben, 17, &private, None, 4105).await;
    refused(&mut ann, 17, &private, None, 4105).await;
    ok(&mut ann, 13, &private, Some(&ben_node)).await;
    assert_eq!(notice(&mut ben).await.0, 13);
    ok(&mut ann, 17, &private, None).await;
    refused(&mut ben, 9, &private, None, 4108).await;
    assert_eq!(nodes(&mut ann, 2, None).await, vec![open.clone()], "a cancelled group is not listed");
    refused_bare(&mut ann, 12, "0OIl", Some(&ben_node), 4106).await;
});

pub fn to_group(group: &str, text: &str, od_type: i8, mid: Option<i64>) -> TimMessage {
    TimMessage {
        ms_type: 3,
        od_type,
        mid,
        room_tid: Some(Tid { node: group.into(), ..Tid::default() }),
        data_string: Some(text.into()),
        ..TimMessage::default()
    }
}

pub async fn group_history(client: &mut Client, group: &str) -> Vec<TimMessage> {
    let req =
        TimReq { rtype: Some(2), node: Some(group.into()), req_int: Some(0), req_int2: Some(20), ..TimReq::default() };
    client.send(FrameType::PullMessage, &req).await.unwrap();
    let frame = client.recv_within(WAIT).await.unwrap();
    if frame.kind == FrameType::Ack {
        let ack: TimAck = frame.decode(client.encoding()).unwrap();
        panic!("history refused: {ack:?}");
    }
    let list: TimMessageList = frame.decode(client.encoding()).unwrap();
    list.message_list.unwrap_or_default()
}

topology_test!(async fn group_messages_reach_members_online_and_offline_and_can_be_recalled(servers, &[]) {

    let (mut ann, ann_node) = user(servers.at(0), "ann", Encoding::Json).await;
    let (mut ben, _) = user(servers.at(1), "ben", Encoding::Compact).await;
    let (mut cid, _) = user(servers.at(2), "cid", Encoding::Compact).await;
    let (mut dot, dot_node) = user(servers.at(3), "dot", Encoding::Compact).await;
    let group = new_group(&mut ann, "chat", false).await;
    for client in [&mut ben, &mut cid] {
        request(client, 9, Some(&group), None, None).await;
        assert_eq!(notice(client).await.0, 10);
    }
    drop(cid);

    // Everyone gets it with an ack request, the sender too (that copy is the echo).
    ann.send(FrameType::Message, &TimMessage { id: Some(5), ..to_group(&group, "hello all", 1, None) }).await.unwrap();
    let echo = pushed(&mut ann, true).await;
    let got = pushed(&mut ben, true).await;
    assert_eq!((echo.mid, echo.id, echo.data_string.as_deref()), (got.mid, Some(5), Some("hello all")));
    assert_eq!(
        (got.ms_type, got.from_tid.unwrap().node, got.room_tid.unwrap().node),
        (3, ann_node.clone(), group.clone())
    );
    let mid = got.mid.expect("a stored group message has a mid");

    // The member who was away finds it in the offline queue.
    let (mut cid, _) = servers.at(2).login("cid", "pw", Encoding::Compact).await;
    request_offline(&mut cid).await;
    let queued = batch(&mut cid, true).await;
    assert_eq!((queued.len(), queued[0].mid, queued[0].data_string.as_deref()), (1, Some(mid), Some("hello all")));
    assert_eq!(cid.recv_within(WAIT).await.unwrap().kind, FrameType::OfflineMsgEnd);

    // Custom kinds are for users, not groups (as TIM).
    ann.send(FrameType::Message, &to_group(&group, "custom", 31, None)).await.unwrap();
    assert_eq!(ann.recv_ack(WAIT).await.unwrap().error_code(), Some(4104));

    // Outsiders may neither post nor read.
    dot.send(FrameType::Message, &to_group(&group, "let me in", 1, None)).await.unwrap();
    assert_eq!(dot.recv_ack(WAIT).await.unwrap().error_code(), Some(4105));
    let req =
        TimReq { rtype: Some(2), node: Some(group.clone()), req_int: Some(0), req_int2: Some(20), ..TimReq::default() };
    dot.send(FrameType::PullMessage, &req).await.unwrap();
    assert_eq!(dot.recv_ack(WAIT).await.unwrap().error_code(), Some(4105));
    let page = group_history(&mut ben, &group).await;
    assert_eq!((page.len(), page[0].mid, page[0].id), (1, Some(mid), None));

    // A private message inside the group needs no friendship, only both in the group.
    let private = TimMessage {
        room_tid: Some(Tid { node: group.clone(), ..Tid::default() }),
        ..TimMessage {
            ms_type: 2,
            to_tid: Some(Tid { node: ann_node.clone(), ..Tid::default() }),
            ..to_group(&group, "psst", 1, None)
        }
    };
    ben.send(FrameType::Message, &private).await.unwrap();
    let echoed = ben.recv_within(WAIT).await.unwrap();
    assert_eq!((echoed.kind, echoed.ack_id), (FrameType::Message, None), "the 1:1 echo");
    assert_eq!(pushed(&mut ann, true).await.data_string.as_deref(), Some("psst"));
    let to_outsider = TimMessage { to_tid: Some(Tid { node: dot_node.clone(), ..Tid::default() }), ..private };
    ben.send(FrameType::Message, &to_outsider).await.unwrap();
    assert_eq!(ben.recv_ack(WAIT).await.unwrap().error_code(), Some(4105));

    // Only its sender recalls it; every member is told and the history forgets it.
    ben.send(FrameType::RevokeMessage, &to_group(&group, "", 2, Some(mid))).await.unwrap();
    assert_eq!(ben.recv_ack(WAIT).await.unwrap().error_code(), Some(4105));
    ann.send(FrameType::RevokeMessage, &to_group(&group, "", 2, Some(mid))).await.unwrap();
    let mut acked = None;
    let mut told_ann = None;
    while acked.is_none() || told_ann.is_none() {
        let frame = ann.recv_within(WAIT).await.unwrap();
        match frame.kind {
            FrameType::Ack => acked = Some(frame.decode::<TimAck>(ann.encoding()).unwrap()),
            FrameType::Message => {
                ann.ack(frame.ack_id.unwrap()).await.unwrap();
                told_ann = Some(frame.decode::<TimMessage>(ann.encoding()).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let ack = acked.unwrap();
    assert_eq!(
        (ack.ok, ack.tim_type, ack.n.as_deref(), ack.t, ack.t2),
        (true, 92, Some(group.as_str()), Some(3), Some(mid))
    );
    assert_eq!((told_ann.unwrap().od_type, pushed(&mut ben, true).await.od_type), (2, 2));
    assert_eq!(pushed(&mut cid, true).await.mid, Some(mid), "the recall reaches every member");
    assert!(group_history(&mut ben, &group).await.is_empty());
});

/// The next group message pushed to `client`, acked; other pushes (notices) on the way are
/// acked and passed over.
async fn next_group_message(client: &mut Client) -> TimMessage {
    loop {
        let frame = client.recv_within(WAIT).await.unwrap();
        if let Some(id) = frame.ack_id {
            client.ack(id).await.unwrap();
        }
        if frame.kind == FrameType::Message {
            let msg: TimMessage = frame.decode(client.encoding()).unwrap();
            if msg.ms_type == 3 {
                return msg;
            }
        }
    }
}

/// The texts of everything the offline drain sends `client`, to its end.
async fn drain_texts(client: &mut Client) -> Vec<String> {
    drain_offline(client).await.into_iter().filter_map(|m| m.data_string).collect()
}

// A member's place in a group's messages: what was sent while it was away comes from the
// drain, in order, with a message acked live meanwhile neither skipping the older ones nor
// coming twice; a member who left and came back gets what was sent after it came back, and
// nothing of the time it was out.
topology_test!(async fn a_member_gets_what_was_sent_while_away_but_not_while_out(servers, &[]) {
    let (mut ann, _) = user(servers.at(0), "ann", Encoding::Compact).await;
    let (mut cid, _) = user(servers.at(1), "cid", Encoding::Compact).await;
    let group = new_group(&mut ann, "cursors", false).await;
    request(&mut cid, 9, Some(&group), None, None).await;
    assert_eq!(notice(&mut cid).await.0, 10);
    drop(cid);
    let send = |text: &str| TimMessage { id: Some(1), ..to_group(&group, text, 1, None) };
    for text in ["one", "two"] {
        ann.send(FrameType::Message, &send(text)).await.unwrap();
        assert_eq!(next_group_message(&mut ann).await.data_string.as_deref(), Some(text), "the echo");
    }

    // Back, but not draining yet: a message acked live leaves the older two waiting.
    let (mut cid, _) = servers.at(1).login("cid", "pw", Encoding::Compact).await;
    ann.send(FrameType::Message, &send("three")).await.unwrap();
    next_group_message(&mut ann).await;
    assert_eq!(next_group_message(&mut cid).await.data_string.as_deref(), Some("three"));
    assert_eq!(drain_texts(&mut cid).await, ["one", "two"], "the older ones, once, in order");
    assert!(drain_texts(&mut cid).await.is_empty(), "the cursor is past all three");

    // Out of the group while "four" is sent, back for "five", away when it comes.
    ok(&mut cid, 16, &group, None).await;
    ann.send(FrameType::Message, &send("four")).await.unwrap();
    next_group_message(&mut ann).await;
    request(&mut cid, 9, Some(&group), None, None).await;
    assert_eq!(notice(&mut cid).await.0, 10);
    drop(cid);
    ann.send(FrameType::Message, &send("five")).await.unwrap();
    next_group_message(&mut ann).await;
    let (mut cid, _) = servers.at(1).login("cid", "pw", Encoding::Compact).await;
    assert_eq!(drain_texts(&mut cid).await, ["five"], "what was sent while out of the group never comes");
});
