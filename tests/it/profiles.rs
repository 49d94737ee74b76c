//! Profiles (TIMNODES 42): users' and groups' profiles, read by anyone, changed by their owners.

use std::collections::BTreeMap;

use tim_net::client::Client;
use tim_net::proto::{TimAck, TimNodes, TimReq, TimRoomBean, TimUserBean};
use tim_net::{Encoding, FrameType};

use crate::node::WAIT;
use crate::roster::{pushed, user};
use crate::topology::topology_test;

pub async fn nodes_request(client: &mut Client, req: TimNodes) -> Result<TimNodes, TimAck> {
    client.send(FrameType::Nodes, &req).await.unwrap();
    let frame = client.recv_within(WAIT).await.unwrap();
    match frame.kind {
        FrameType::Nodes => Ok(frame.decode(client.encoding()).unwrap()),
        FrameType::Ack => Err(frame.decode(client.encoding()).unwrap()),
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn modify_user(client: &mut Client, beans: Vec<TimUserBean>) -> TimAck {
    let usermap: BTreeMap<String, TimUserBean> =
        beans.into_iter().enumerate().map(|(i, b)| (i.to_string(), b)).collect();
    nodes_request(client, TimNodes { ntype: 6, usermap: Some(usermap), ..TimNodes::default() }).await.unwrap_err()
}

async fn modify_room(client: &mut Client, group: &str, bean: TimRoomBean) -> TimAck {
    let roommap = BTreeMap::from([(group.to_owned(), bean)]);
    nodes_request(client, TimNodes { ntype: 7, roommap: Some(roommap), ..TimNodes::default() }).await.unwrap_err()
}

async fn business(client: &mut Client, rtype: i32, node: &str, int: Option<i64>) -> Option<TimAck> {
    let req = TimReq {
        rtype: Some(rtype),
        node: Some(node.into()),
        req_int: int,
        req_str: Some("hi".into()),
        ..TimReq::default()
    };
    client.send(FrameType::Business, &req).await.unwrap();
    if rtype == 9 {
        return None;
    }
    Some(client.recv_ack(WAIT).await.unwrap())
}

topology_test!(async fn profiles_are_read_by_anyone_and_changed_by_their_owners(servers, &[]) {

    let (mut ann, ann_node) = user(servers.at(0), "ann", Encoding::Json).await;
    let (mut ben, ben_node) = user(servers.at(1), "ben", Encoding::Compact).await;
    let (mut cid, _) = user(servers.at(2), "cid", Encoding::Compact).await;

    // My own profile, merged field by field.
    let first = TimUserBean { nick_name: Some("Annie".into()), area: Some("north".into()), ..TimUserBean::default() };
    let ack = modify_user(&mut ann, vec![first]).await;
    assert_eq!((ack.ok, ack.tim_type, ack.t), (true, 42, Some(6)), "{ack:?}");
    let ack = modify_user(&mut ann, vec![TimUserBean { cover: Some("c.png".into()), ..TimUserBean::default() }]).await;
    assert!(ack.ok);
    let two = vec![TimUserBean::default(), TimUserBean::default()];
    assert_eq!(modify_user(&mut ann, two).await.error_code(), Some(4104), "exactly one entry");
    let info = TimNodes { ntype: 4, nodelist: Some(vec![ann_node.clone(), "0OIl".into()]), ..TimNodes::default() };
    let got = nodes_request(&mut ben, info).await.unwrap();
    let usermap = got.usermap.unwrap();
    assert_eq!(usermap.len(), 1, "malformed nodes are left out");
    let bean = &usermap[&ann_node];
    assert_eq!(
        (bean.nick_name.as_deref(), bean.area.as_deref(), bean.cover.as_deref()),
        (Some("Annie"), Some("north"), Some("c.png"))
    );
    assert!(bean.createtime.is_some_and(|t| t > 0), "the server's creation time");

    // A group's profile: founder and managers change it, the managers only the founder.
    let group = business(&mut ann, 8, "first topic", Some(2)).await.unwrap().n.unwrap();
    let promote = TimRoomBean { managers: Some(vec![ben_node.clone()]), ..TimRoomBean::default() };
    assert_eq!(modify_room(&mut ann, &group, promote.clone()).await.error_code(), Some(4104), "managers are members");
    business(&mut ben, 9, &group, None).await;
    assert_eq!(pushed(&mut ben, true).await.bn_type, Some(10));
    business(&mut cid, 9, &group, None).await;
    assert_eq!(pushed(&mut cid, true).await.bn_type, Some(10));
    assert!(modify_room(&mut ann, &group, promote).await.ok);
    let retitle = TimRoomBean { topic: Some("second topic".into()), label: Some("l".into()), ..TimRoomBean::default() };
    let ack = modify_room(&mut ben, &group, retitle.clone()).await;
    assert_eq!((ack.ok, ack.t), (true, Some(7)), "{ack:?}");
    let demote = TimRoomBean { managers: Some(vec![]), ..TimRoomBean::default() };
    assert_eq!(
        modify_room(&mut ben, &group, demote).await.error_code(),
        Some(4105),
        "managers change for the founder only"
    );
    assert_eq!(modify_room(&mut cid, &group, retitle).await.error_code(), Some(4105));

    let gone = business(&mut cid, 8, "short-lived", None).await.unwrap().n.unwrap();
    assert!(business(&mut cid, 17, &gone, None).await.unwrap().ok);
    let info = TimNodes { ntype: 5, nodelist: Some(vec![group.clone(), gone]), ..TimNodes::default() };
    let roommap = nodes_request(&mut cid, info).await.unwrap().roommap.unwrap();
    assert_eq!(roommap.len(), 1, "a cancelled group is left out");
    let bean = &roommap[&group];
    assert_eq!((bean.topic.as_deref(), bean.label.as_deref()), (Some("second topic"), Some("l")));
    assert_eq!((bean.founder.as_deref(), bean.managers.clone()), (Some(ann_node.as_str()), Some(vec![ben_node])));
    assert_eq!(bean.gtype, Some(2));
});
