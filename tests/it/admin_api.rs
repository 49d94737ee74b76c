//! The admin API of an application's backend (TIM's server API), against two nodes: every
//! call is made on one node about users connected to the other as often as not.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tim_net::client::Client;
use tim_net::proto::{TimAck, TimAuth, TimPresence};
use tim_net::{Encoding, FrameType};

use crate::admin::{http, scrape, sign_in, tim_admin};
use crate::chat::text_to;
use crate::cluster::TestCluster;
use crate::node::{auth, TestNode, WAIT};
use crate::roster::{pushed, request_offline, user};

/// One call: the status and the JSON answer (`null` for an empty one).
async fn api(addr: SocketAddr, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let (status, answer) = http(addr, method, path, Some(token), &body).await;
    let answer = if answer.is_empty() { Value::Null } else { serde_json::from_str(&answer).unwrap_or(json!(answer)) };
    (status, answer)
}

/// A write and a read token on a new cluster's first node.
async fn tokens(cluster: &TestCluster) -> (String, String) {
    let admin = cluster.nodes[0].admin.unwrap();
    let secret = cluster.secret_file();
    let out = tim_admin(&["create-user", "root", "--role", "write"], admin, &secret, Some("root password"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tim_admin(&["create-user", "viewer", "--role", "read"], admin, &secret, Some("viewer password"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        sign_in(admin, "root", "root password").await.1.unwrap(),
        sign_in(admin, "viewer", "viewer password").await.1.unwrap(),
    )
}

async fn login(node: &TestNode, auth: &TimAuth) -> (Client, TimAck) {
    let mut client = Client::connect(node.addr, Encoding::Json).await.unwrap();
    let ack = client.login(auth, WAIT).await.unwrap();
    (client, ack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_tokens_profiles_passwords_bans_and_the_online_list() {
    // Users here keep two sessions at once.
    let cluster = TestCluster::start(2, &["--device-limit", "2"]);
    let (root, viewer) = tokens(&cluster).await;
    let (a, b) = (cluster.nodes[0].admin.unwrap(), cluster.nodes[1].admin.unwrap());

    // Register: the node back; a second account of the name is refused with TIM's code.
    let (status, answer) =
        api(a, "POST", "/v1/users", &root, json!({ "name": "ann", "password": "pw", "domain": "test" })).await;
    assert_eq!(status, 201, "{answer}");
    let ann = answer["node"].as_str().unwrap().to_owned();
    let (status, answer) =
        api(b, "POST", "/v1/users", &root, json!({ "name": "ann", "password": "x", "domain": "test" })).await;
    assert_eq!((status, answer["code"].as_i64()), (409, Some(4101)), "{answer}");
    assert_eq!(api(a, "POST", "/v1/users", &viewer, json!({ "name": "x", "password": "x" })).await.0, 403);
    assert_eq!(api(a, "POST", "/v1/users", &root, json!({ "name": "x" })).await.0, 400, "no password");

    // Look-ups by node and by name; unknown and malformed nodes.
    let (status, info) = api(b, "GET", &format!("/v1/users/{ann}"), &viewer, Value::Null).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!((info["node"].as_str(), info["sessions"].as_array().map(Vec::len)), (Some(ann.as_str()), Some(0)));
    assert!(info["banned_until_unix"].is_null());
    assert_eq!(api(a, "GET", "/v1/users?name=ann&domain=test", &viewer, Value::Null).await.1["node"], json!(ann));
    assert_eq!(api(a, "GET", "/v1/users?name=nobody", &viewer, Value::Null).await.0, 404);
    assert_eq!(api(a, "GET", "/v1/users/not-a-node!", &viewer, Value::Null).await.0, 400);

    // A login token minted for the backend's own login path: once, on any node.
    let (status, minted) = api(a, "POST", "/v1/tokens", &root, json!({ "name": "ann", "domain": "test" })).await;
    assert_eq!((status, minted["node"].as_str()), (200, Some(ann.as_str())), "{minted}");
    let with_token = TimAuth { token: minted["token"].as_str().map(str::to_owned), ..auth("ann", "") };
    let (mut ann_client, ack) = login(&cluster.nodes[1], &with_token).await;
    assert!(ack.ok, "{ack:?}");
    assert_eq!(login(&cluster.nodes[0], &with_token).await.1.error_code(), Some(4115), "a token is used once");
    let (status, answer) =
        api(a, "POST", "/v1/tokens", &root, json!({ "name": "ann", "domain": "test", "password": "wrong" })).await;
    assert_eq!((status, answer["code"].as_i64()), (403, Some(4102)));
    assert_eq!(api(a, "POST", "/v1/tokens", &root, json!({ "name": "nobody" })).await.0, 404);

    // Her session shows on the node she is connected to.
    let (_, info) = api(a, "GET", &format!("/v1/users/{ann}"), &viewer, Value::Null).await;
    let me = api(b, "GET", "/v1/cluster", &viewer, Value::Null).await.1["node"].clone();
    assert_eq!(info["sessions"].as_array().unwrap().iter().map(|s| s["node"].clone()).collect::<Vec<_>>(), [me]);

    // Profile: merged like the client's own change.
    let path = format!("/v1/users/{ann}");
    assert_eq!(api(b, "PATCH", &path, &root, json!({ "nickName": "Annie", "area": "north" })).await.0, 204);
    assert_eq!(api(a, "PATCH", &path, &root, json!({ "area": "south" })).await.0, 204);
    let profile = api(a, "GET", &path, &viewer, Value::Null).await.1["profile"].clone();
    assert_eq!((profile["nickName"].as_str(), profile["area"].as_str()), (Some("Annie"), Some("south")), "{profile}");
    assert_eq!(api(a, "PATCH", &path, &viewer, json!({ "area": "x" })).await.0, 403);

    // Password: a change checks the old one (4112), a reset does not.
    let password = format!("/v1/users/{ann}/password");
    let (status, answer) = api(a, "PUT", &password, &root, json!({ "password": "new", "old_password": "bad" })).await;
    assert_eq!((status, answer["code"].as_i64()), (400, Some(4112)));
    assert_eq!(api(a, "PUT", &password, &root, json!({ "password": "new", "old_password": "pw" })).await.0, 204);
    assert_eq!(api(b, "PUT", &password, &root, json!({ "password": "newer" })).await.0, 204);
    assert_eq!(login(&cluster.nodes[0], &auth("ann", "new")).await.1.error_code(), Some(4105));
    let (mut second, ack) = login(&cluster.nodes[0], &auth("ann", "newer")).await;
    assert!(ack.ok, "{ack:?}");

    // Ban: both her sessions, on two nodes, get TIMLOGOUT and close; logins are refused
    // (4105) until the ban is lifted.
    let (status, answer) = api(a, "POST", "/v1/bans", &root, json!({ "nodes": [ann], "seconds": 3600 })).await;
    assert_eq!(
        (status, answer["banned"].as_u64(), answer["sessions_closed"].as_u64()),
        (200, Some(1), Some(2)),
        "{answer}"
    );
    for client in [&mut ann_client, &mut second] {
        let logout = client.recv_ack(WAIT).await.unwrap();
        assert_eq!((logout.ok, logout.tim_type), (true, 20), "{logout:?}");
        client.closed_within(WAIT).await.unwrap();
    }
    assert_eq!(login(&cluster.nodes[1], &auth("ann", "newer")).await.1.error_code(), Some(4105), "banned");
    let until = api(b, "GET", &path, &viewer, Value::Null).await.1["banned_until_unix"].as_u64().unwrap();
    assert!(until > 0);
    assert_eq!(api(a, "POST", "/v1/bans", &root, json!({ "nodes": [ann], "seconds": 0 })).await.0, 400);
    assert_eq!(api(b, "DELETE", &format!("/v1/bans/{ann}"), &root, Value::Null).await.0, 204);
    assert_eq!(api(b, "DELETE", &format!("/v1/bans/{ann}"), &root, Value::Null).await.0, 404, "lifted already");
    let (mut ann_client, ack) = login(&cluster.nodes[1], &auth("ann", "newer")).await;
    assert!(ack.ok, "the ban is lifted: {ack:?}");

    // Online users, cluster-wide, paged by cursor: each once, in order, whatever page size.
    let mut online = vec![ann.clone()];
    let mut clients = Vec::new();
    for i in 0..7 {
        let (client, node) = user(&cluster.nodes[i % 2], &format!("user{i}"), Encoding::Compact).await;
        clients.push(client);
        online.push(node);
    }
    // A second session of a user counts once, with two sessions.
    let (extra, _) = cluster.nodes[0].login("user1", "pw", Encoding::Compact).await;
    clients.push(extra);
    // One page holds them all; smaller pages, from either node, give the same list.
    let (_, page) = api(a, "GET", "/v1/online?limit=1000", &viewer, Value::Null).await;
    assert!(page["next"].is_null(), "{page}");
    let all: Vec<String> =
        page["users"].as_array().unwrap().iter().map(|u| u["node"].as_str().unwrap().to_owned()).collect();
    let mut sorted_online = online.clone();
    sorted_online.sort();
    let mut sorted_all = all.clone();
    sorted_all.sort();
    assert_eq!(sorted_all, sorted_online);
    for limit in [1, 3, 8] {
        let (mut seen, mut after) = (Vec::new(), String::new());
        loop {
            let path = format!("/v1/online?limit={limit}&after={after}");
            let (status, page) = api(if seen.len() % 2 == 0 { a } else { b }, "GET", &path, &viewer, Value::Null).await;
            assert_eq!(status, 200, "{page}");
            for u in page["users"].as_array().unwrap() {
                let sessions = if u["node"] == json!(online[2]) { 2 } else { 1 }; // user1
                assert_eq!(u["sessions"].as_u64(), Some(sessions), "{u}");
                seen.push(u["node"].as_str().unwrap().to_owned());
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen, all, "limit {limit}");
    }

    // The cluster map: two live members owning every slot once.
    let (status, map) = api(b, "GET", "/v1/cluster", &viewer, Value::Null).await;
    assert_eq!(status, 200, "{map}");
    let members = map["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m["live"] == json!(true)));
    assert_eq!(members.iter().map(|m| m["slots"].as_u64().unwrap()).sum::<u64>(), 4096);
    ann_client.ping().await.unwrap();

    // The description of all this, served to anyone.
    let (status, spec) = http(b, "GET", "/v1/openapi.json", None, "").await;
    assert_eq!(status, 200);
    let spec: Value = serde_json::from_str(&spec).unwrap();
    assert!(spec["paths"]["/v1/bans"]["post"]["operationId"].is_string(), "{}", spec["paths"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_presence_pings_rooms_and_operations_as_a_user() {
    let cluster = TestCluster::start(2, &[]);
    let (root, viewer) = tokens(&cluster).await;
    let (a, b) = (cluster.nodes[0].admin.unwrap(), cluster.nodes[1].admin.unwrap());
    let (mut ann, ann_node) = user(&cluster.nodes[0], "ann", Encoding::Json).await;
    let (mut ben, ben_node) = user(&cluster.nodes[1], "ben", Encoding::Compact).await;
    let cat_node = cluster.nodes[1].register("cat", "pw", Encoding::Json).await.n.unwrap();
    let business = |node: &str| format!("/v1/as/{node}/business");

    // Friends, as the users: the same pushes their clients would cause.
    let request = json!({ "rtype": 4, "node": ben_node, "reqStr": "hi" });
    assert_eq!(api(a, "POST", &business(&ann_node), &root, request).await, (200, json!({})));
    assert_eq!(pushed(&mut ben, true).await.bn_type, Some(4));
    let accept = json!({ "rtype": 4, "node": ann_node, "reqStr": "ok" });
    api(b, "POST", &business(&ben_node), &root, accept).await;
    assert_eq!(pushed(&mut ann, true).await.bn_type, Some(5));
    let (_, roster) = api(b, "GET", &format!("/v1/users/{ann_node}/roster"), &viewer, Value::Null).await;
    assert_eq!(roster, json!({ "nodes": [ben_node] }));
    let friends = format!("/v1/users/{ann_node}/friends/{ben_node}");
    assert_eq!(api(a, "GET", &friends, &viewer, Value::Null).await.1, json!({ "friends": true }));
    let strangers = format!("/v1/users/{ann_node}/friends/{cat_node}");
    assert_eq!(api(a, "GET", &strangers, &viewer, Value::Null).await.1, json!({ "friends": false }));
    assert_eq!(api(a, "POST", &business(&ann_node), &viewer, json!({ "rtype": 1 })).await.0, 403, "read role");

    // A message as ann: stored (a mid), pushed to ben, copied to ann's session, in history.
    let text = serde_json::from_slice::<Value>(&tim_net::codec::body_bytes(
        &text_to(&ben_node, "from the backend", 1),
        Encoding::Json,
    ))
    .unwrap();
    let (status, sent) = api(b, "POST", &format!("/v1/as/{ann_node}/message"), &root, text).await;
    assert_eq!(status, 200, "{sent}");
    let mid = sent["message"]["mid"].as_i64().unwrap();
    let got = pushed(&mut ben, true).await;
    assert_eq!((got.mid, got.from_tid.unwrap().node), (Some(mid), ann_node.clone()));
    let copy = ann.recv_within(WAIT).await.unwrap();
    assert_eq!(copy.kind, FrameType::Message);
    let history = format!("/v1/users/{ben_node}/history/{ann_node}?limit=10");
    let (_, page) = api(a, "GET", &history, &viewer, Value::Null).await;
    assert_eq!(page["messages"][0]["mid"].as_i64(), Some(mid), "{page}");
    assert_eq!(page["messages"][0]["dataString"], json!("from the backend"));
    let to_cat =
        serde_json::from_slice::<Value>(&tim_net::codec::body_bytes(&text_to(&cat_node, "x", 1), Encoding::Json))
            .unwrap();
    let (status, answer) = api(a, "POST", &format!("/v1/as/{ann_node}/message"), &root, to_cat).await;
    assert_eq!((status, answer["code"].as_i64()), (403, Some(4105)), "the client's checks hold: not friends");

    // A system message: pushed to the online, queued for the offline, in nobody's history.
    let request = json!({ "nodes": [ann_node, cat_node], "message": { "dataString": "maintenance at noon" } });
    let (status, answer) = api(a, "POST", "/v1/system-messages", &root, request).await;
    assert_eq!((status, answer["sent"].as_u64()), (200, Some(2)), "{answer}");
    let notice = pushed(&mut ann, true).await;
    assert_eq!((notice.ms_type, notice.data_string.as_deref()), (1, Some("maintenance at noon")));
    let offline = format!("/v1/users/{cat_node}/offline");
    let (_, queue) = api(b, "GET", &offline, &viewer, Value::Null).await;
    let entries = queue["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1, "{queue}");
    assert_eq!(entries[0]["message"]["msType"], json!(1));
    assert_eq!(api(a, "GET", &history, &viewer, Value::Null).await.1["messages"].as_array().unwrap().len(), 1);
    // Deleting entries: only the user's own; another user's id deletes nothing.
    let ids = json!({ "ids": [entries[0]["id"]] });
    let bens = format!("/v1/users/{ben_node}/offline");
    assert_eq!(api(a, "DELETE", &bens, &root, ids.clone()).await.1, json!({ "deleted": 0 }));
    // The deletion is synced: a removed entry does not come back after a power loss.
    let synced = || async {
        let mut n = 0.0;
        for node in [a, b] {
            n += scrape(node, &viewer).await.get("tim_store_synced_commits_total").copied().unwrap_or(0.0);
        }
        n
    };
    let before = synced().await;
    assert_eq!(api(a, "DELETE", &offline, &root, ids).await.1, json!({ "deleted": 1 }));
    assert!(synced().await > before, "the deletion waited for a sync");
    assert_eq!(api(b, "GET", &offline, &viewer, Value::Null).await.1, json!({ "entries": [], "waiting": [] }));
    let (mut cat, ack) = cluster.nodes[0].login("cat", "pw", Encoding::Json).await;
    assert!(ack.ok);
    request_offline(&mut cat).await;
    let end = cat.recv_within(WAIT).await.unwrap();
    assert_eq!(end.kind, FrameType::OfflineMsgEnd, "the deleted entry is not delivered: {end:?}");

    // Presence from ann to ben, and a ping to both of cat's... one session.
    let request = json!({ "nodes": [ben_node], "from": ann_node, "presence": { "show": 2, "status": "busy" } });
    assert_eq!(api(a, "POST", "/v1/presence", &root, request).await.1["sessions"], json!(1));
    let frame = ben.recv_within(WAIT).await.unwrap();
    assert_eq!(frame.kind, FrameType::Presence);
    let presence: TimPresence = frame.decode(Encoding::Compact).unwrap();
    assert_eq!((presence.from_tid.unwrap().node, presence.status.as_deref()), (ann_node.clone(), Some("busy")));
    assert_eq!(api(b, "POST", "/v1/ping", &root, json!({ "nodes": [cat_node] })).await.1["sessions"], json!(1));
    assert_eq!(cat.recv_within(WAIT).await.unwrap().kind, FrameType::Ping);

    // A virtual room owned by ben.
    let (status, ack) = api(a, "POST", "/v1/vrooms", &root, json!({ "owner": ben_node })).await;
    assert_eq!((status, ack["ok"].as_bool()), (200, Some(true)), "{ack}");
    assert!(ack["n"].as_str().is_some_and(|n| !n.is_empty()));

    // A group made and filled as ann; a group message as ben; the group's reads.
    let (_, made) =
        api(b, "POST", &business(&ann_node), &root, json!({ "rtype": 8, "node": "team", "reqInt": 2 })).await;
    assert_eq!(made["t"], json!(8), "{made}");
    let group = made["n"].as_str().unwrap().to_owned();
    let pull = json!({ "rtype": 12, "node": group, "node2": ben_node, "reqStr": "join us" });
    assert_eq!(api(a, "POST", &business(&ann_node), &root, pull).await.1["ok"], json!(true));
    assert_eq!(pushed(&mut ben, true).await.bn_type, Some(12));
    let (_, members) = api(b, "GET", &format!("/v1/groups/{group}/members"), &viewer, Value::Null).await;
    let mut listed: Vec<&str> = members["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    listed.sort();
    let mut expected = [ann_node.as_str(), ben_node.as_str()];
    expected.sort();
    assert_eq!(listed, expected);
    let member = |u: &str| format!("/v1/groups/{group}/members/{u}");
    assert_eq!(api(a, "GET", &member(&ben_node), &viewer, Value::Null).await.1, json!({ "member": true }));
    assert_eq!(api(a, "GET", &member(&cat_node), &viewer, Value::Null).await.1, json!({ "member": false }));
    assert_eq!(
        api(a, "GET", &format!("/v1/users/{ben_node}/groups"), &viewer, Value::Null).await.1,
        json!({ "nodes": [group] })
    );
    let to_group = json!({ "msType": 3, "odType": 1, "roomTid": { "node": group }, "dataString": "hello team" });
    assert_eq!(api(b, "POST", &format!("/v1/as/{ben_node}/message"), &root, to_group).await.0, 200);
    assert_eq!(pushed(&mut ann, true).await.data_string.as_deref(), Some("hello team"));
    assert_eq!(pushed(&mut ben, true).await.data_string.as_deref(), Some("hello team"));
    let (_, page) = api(a, "GET", &format!("/v1/groups/{group}/history"), &viewer, Value::Null).await;
    assert_eq!(page["messages"][0]["dataString"], json!("hello team"), "{page}");
    for list in ["blocks", "blocked-groups"] {
        let (_, answer) = api(a, "GET", &format!("/v1/users/{ben_node}/{list}"), &viewer, Value::Null).await;
        assert_eq!(answer, json!({ "nodes": [] }), "{list}");
    }
    // Kicked and blocked as ann, ben shows in the group's blocked list.
    let block = json!({ "rtype": 15, "node": group, "node2": ben_node });
    assert_eq!(api(a, "POST", &business(&ann_node), &root, block).await.1["ok"], json!(true));
    let (_, blocked) = api(b, "GET", &format!("/v1/groups/{group}/blocked-members"), &viewer, Value::Null).await;
    assert_eq!(blocked, json!({ "nodes": [ben_node] }));

    // Profiles as a user (the NODES operation): ben's read by ann; the group's changed by its
    // founder, which only she may do.
    let as_nodes = |node: &str| format!("/v1/as/{node}/nodes");
    let ask = json!({ "ntype": 4, "nodelist": [ben_node] });
    let (_, answer) = api(a, "POST", &as_nodes(&ann_node), &root, ask).await;
    assert!(answer["usermap"][&ben_node].is_object(), "{answer}");
    let change = json!({ "ntype": 7, "roommap": { (group.as_str()): { "topic": "the A team" } } });
    let (_, answer) = api(b, "POST", &as_nodes(&cat_node), &root, change.clone()).await;
    assert_eq!((answer["ok"].as_bool(), answer["error"]["code"].as_i64()), (Some(false), Some(4105)), "{answer}");
    assert_eq!(api(b, "POST", &as_nodes(&ann_node), &root, change).await.1["ok"], json!(true));
    let ask = json!({ "ntype": 5, "nodelist": [group] });
    let (_, answer) = api(a, "POST", &as_nodes(&cat_node), &root, ask).await;
    assert_eq!(answer["roommap"][&group]["topic"], json!("the A team"), "{answer}");

    // What a read token may not do, and what nobody may do without one.
    let request = json!({ "nodes": [ann_node], "message": { "dataString": "x" } });
    assert_eq!(api(a, "POST", "/v1/system-messages", &viewer, request).await.0, 403);
    assert_eq!(http(a, "GET", &format!("/v1/users/{ann_node}/roster"), None, "").await.0, 401);
}

/// A user's offline messages as an operator sees them: queue entries, and the 1:1 and group
/// messages waiting in their conversations past the user's place, left in place until the
/// user drains them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_the_messages_waiting_for_a_user_without_taking_them() {
    let cluster = TestCluster::start(2, &[]);
    let (_, viewer) = tokens(&cluster).await;
    let (mut ann, ann_node) = user(&cluster.nodes[0], "ann", Encoding::Json).await;
    let (mut ben, ben_node) = user(&cluster.nodes[1], "ben", Encoding::Compact).await;
    crate::chat::befriend(&mut ann, &ann_node, &mut ben, &ben_node).await;
    drop(ben);
    assert_eq!(ann.recv_within(WAIT).await.unwrap().kind, FrameType::Presence, "ann sees ben go");
    let mut mids = Vec::new();
    for text in ["one", "two"] {
        ann.send(FrameType::Message, &text_to(&ben_node, text, 1)).await.unwrap();
        mids.push(crate::chat::echo(&mut ann).await.mid);
    }
    let offline = format!("/v1/users/{ben_node}/offline?limit=10");
    let look = || async {
        let (status, answer) = api(cluster.nodes[0].admin.unwrap(), "GET", &offline, &viewer, Value::Null).await;
        assert_eq!(status, 200, "{answer}");
        answer["waiting"].as_array().unwrap().clone()
    };
    let waiting = look().await;
    let seen: Vec<_> = waiting.iter().map(|w| (w["conversation"].clone(), w["message"]["mid"].as_i64())).collect();
    assert_eq!(seen, [(json!(ann_node), mids[0]), (json!(ann_node), mids[1])], "{waiting:?}");
    assert_eq!(waiting[0]["message"]["dataString"], json!("one"));
    assert_eq!(look().await, waiting, "a look takes nothing");

    let (mut ben, ack) = cluster.nodes[1].login("ben", "pw", Encoding::Compact).await;
    assert!(ack.ok);
    let drained = crate::roster::drain_offline(&mut ben).await;
    assert_eq!(drained.iter().map(|m| m.mid).collect::<Vec<_>>(), mids, "drained after the looks");
    assert!(look().await.is_empty(), "nothing waits once drained");
}
