//! Groups (TIMBUSINESS 41): the whole life cycle with its pushes and error codes.

use tim_net::client::Client;
use tim_net::proto::{TimAck, TimNodes, TimReq};
use tim_net::{Encoding, FrameType};

use crate::node::{TestNode, WAIT};
use crate::roster::{pushed, user};

async fn request(client: &mut Client, rtype: i32, node: Option<&str>, node2: Option<&str>, int: Option<i64>) {
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

async fn new_group(client: &mut Client, name: &str, private: bool) -> String {
    request(client, 8, Some(name), None, Some(if private { 1 } else { 2 })).await;
    let ack = client.recv_ack(WAIT).await.unwrap();
    assert!(ack.ok && ack.t == Some(8), "{ack:?}");
    ack.n.unwrap()
}

async fn nodes(client: &mut Client, rtype: i32, group: Option<&str>) -> Vec<String> {
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
async fn notice(client: &mut Client) -> (i32, String, String) {
    let msg = pushed(client, true).await;
    assert_eq!((msg.ms_type, msg.od_type), (2, 4));
    (msg.bn_type.unwrap(), msg.from_tid.unwrap().node, msg.room_tid.unwrap().node)
}

#[tokio::test]
async fn the_group_life_cycle_with_every_push_and_error() {
    let node = TestNode::start(&[]);
    let (mut ann, ann_node) = user(&node, "ann", Encoding::Json).await;
    let (mut ben, ben_node) = user(&node, "ben", Encoding::Compact).await;
    let (mut cid, cid_node) = user(&node, "cid", Encoding::Compact).await;
    let (mut dot, dot_node) = user(&node, "dot", Encoding::Json).await;

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
}
