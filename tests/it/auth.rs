//! Register, tokens, logins and device limits.

use std::time::{Duration, Instant};

use tim_net::client::{post_raw, Client, ClientError};
use tim_net::proto::{TimAuth, TimReq};
use tim_net::{Encoding, FrameType};

use crate::node::{auth, TestNode, WAIT};
use crate::topology::topology_test;

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::Compact];

topology_test!(async fn register_token_and_logins_in_both_encodings(servers, &["--device-limit", "50", "--devicetype-limit", "50"]) {

    for encoding in ENCODINGS {
        let name = format!("alice-{encoding:?}");
        let reg = servers.at(0).register(&name, "pw-1", encoding).await;
        assert!(reg.ok, "{reg:?}");
        assert_eq!(reg.tim_type, 14);
        let user_node = reg.n.clone().expect("node in n");
        let again = servers.at(1).register(&name, "other", encoding).await;
        assert_eq!((again.ok, again.error_code()), (false, Some(4101)), "register again");

        // Token: issued for the right password only, bound to its name, single use.
        let bad = servers.at(0).token(&name, "wrong", encoding).await;
        assert_eq!(bad.error_code(), Some(4102));
        let token = servers.at(0).token(&name, "pw-1", encoding).await;
        assert!(token.ok && token.tim_type == 15, "{token:?}");
        let token = token.n.expect("token in n");
        let token_auth = |who: &str| TimAuth { token: Some(token.clone()), ..auth(who, "") };

        let mut other_name = Client::connect(servers.at(1).addr, encoding).await.unwrap();
        let ack = other_name.login(&token_auth("mallory"), WAIT).await.unwrap();
        assert_eq!(ack.error_code(), Some(4115), "token is bound to its name");

        let mut by_token = Client::connect(servers.at(2).addr, encoding).await.unwrap();
        let ack = by_token.login(&token_auth(&name), WAIT).await.unwrap();
        assert!(ack.ok, "{ack:?}");
        assert_eq!((ack.tim_type, ack.n.as_deref()), (16, Some(user_node.as_str())));
        assert!(ack.n2.is_some() && ack.t.is_some());

        let mut reuse = Client::connect(servers.at(1).addr, encoding).await.unwrap();
        assert_eq!(reuse.login(&token_auth(&name), WAIT).await.unwrap().error_code(), Some(4115), "token reuse");

        // Password logins; a failed one leaves the socket open for another try.
        let (mut client, ack) = servers.at(0).login(&name, "nope", encoding).await;
        assert_eq!((ack.ok, ack.tim_type, ack.error_code()), (false, 16, Some(4105)));
        let ack = client.login(&auth("nobody-at-all", "pw-1"), WAIT).await.unwrap();
        assert_eq!(ack.error_code(), Some(4105), "unknown name looks like a wrong password");
        let ack = client.login(&auth(&name, "pw-1"), WAIT).await.unwrap();
        assert!(ack.ok && ack.n.as_deref() == Some(user_node.as_str()), "{ack:?}");
        // Repeated auth on a logged-in socket re-acks without a node.
        let again = client.login(&auth(&name, "pw-1"), WAIT).await.unwrap();
        assert!(again.ok && again.n.is_none(), "{again:?}");
        // Missing credentials.
        let mut empty = Client::connect(servers.at(0).addr, encoding).await.unwrap();
        assert_eq!(empty.login(&TimAuth::default(), WAIT).await.unwrap().error_code(), Some(4105));
    }
    // Names are per domain, and long passwords are fine.
    let long_pwd = "p".repeat(10_000);
    let mut other_domain = auth("alice-Json", &long_pwd);
    other_domain.domain = Some("elsewhere".into());
    let ack = tim_net::client::post_tim2(servers.at(2).addr, FrameType::Register, Encoding::Json, &other_domain).await.unwrap();
    assert!(ack.ok, "same name in another domain registers: {ack:?}");
    let mut client = Client::connect(servers.at(2).addr, Encoding::Json).await.unwrap();
    assert!(client.login(&other_domain, WAIT).await.unwrap().ok);
});

topology_test!(async fn device_limit_refuses_then_kicks_the_oldest(servers, &["--device-limit", "1", "--auth-min-unix", "1"]) {

    assert!(servers.at(0).register("bob", "pw", Encoding::Compact).await.ok);
    let (mut first, ack) = servers.at(0).login("bob", "pw", Encoding::Compact).await;
    assert!(ack.ok);
    let (_second, ack) = servers.at(1).login("bob", "pw", Encoding::Json).await;
    assert_eq!((ack.ok, ack.error_code()), (false, Some(4111)), "within auth_min_unix");

    // Once auth_min_unix has passed since the last successful login, the newest login wins.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut newest = loop {
        let (client, ack) = servers.at(2).login("bob", "pw", Encoding::Compact).await;
        if ack.ok {
            break client;
        }
        assert_eq!(ack.error_code(), Some(4111));
        assert!(Instant::now() < deadline, "no kick-oldest within 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    first.closed_within(WAIT).await.expect("oldest session closed");
    newest.ping().await.unwrap();
    assert_eq!(newest.recv_within(WAIT).await.unwrap().kind, FrameType::Ping, "newest session alive");
});

topology_test!(async fn device_type_limit_counts_per_termtyp(servers, &["--device-limit", "3", "--devicetype-limit", "1", "--auth-min-unix", "60"]) {

    assert!(servers.at(0).register("carol", "pw", Encoding::Json).await.ok);
    let typed = |t: i8| TimAuth { termtyp: Some(t), ..auth("carol", "pw") };
    let mut web = Client::connect(servers.at(0).addr, Encoding::Json).await.unwrap();
    assert!(web.login(&typed(1), WAIT).await.unwrap().ok);
    let mut phone = Client::connect(servers.at(1).addr, Encoding::Json).await.unwrap();
    assert!(phone.login(&typed(2), WAIT).await.unwrap().ok, "another device type fits");
    let mut web2 = Client::connect(servers.at(2).addr, Encoding::Json).await.unwrap();
    assert_eq!(web2.login(&typed(1), WAIT).await.unwrap().error_code(), Some(4111), "second web session");
});

#[tokio::test]
async fn origin_allow_list() {
    let node = TestNode::start(&["--origin", "https://good.example"]);
    let bad = Client::connect_with_origin(node.addr, Encoding::Json, Some("https://evil.example")).await;
    match bad {
        Err(ClientError::Ws(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 403);
        }
        Err(other) => panic!("expected 403, got {other:?}"),
        Ok(_) => panic!("expected 403, got a session"),
    }
    Client::connect_with_origin(node.addr, Encoding::Json, Some("https://good.example")).await.expect("allowed origin");
    Client::connect_with_origin(node.addr, Encoding::Json, None).await.expect("no origin: non-browser client");
    let body = tim_net::frame::encode_client(FrameType::Register, Encoding::Json, &auth("x", "y"));
    let (status, _) = post_raw(node.addr, "/tim2", Some("https://evil.example"), body).await.unwrap();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn tim2_answers_other_types_and_garbage_with_an_empty_200() {
    let node = TestNode::start(&[]);
    for body in [vec![0x0D], vec![], vec![0xFF, 1, 2], vec![0x0E, 0xFF, 0xFF]] {
        let (status, reply) = post_raw(node.addr, "/tim2", None, body.clone().into()).await.unwrap();
        if body.first() == Some(&0x0E) {
            // A register frame whose body does not decode gets 4104.
            assert_eq!(status, 200);
            assert_eq!(reply.first(), Some(&0x0C));
        } else {
            assert_eq!((status, reply.len()), (200, 0), "body {body:?}");
        }
    }
}

topology_test!(async fn modify_auth_changes_the_password(servers, &["--device-limit", "20", "--devicetype-limit", "20"]) {

    for encoding in ENCODINGS {
        let name = format!("dave-{encoding:?}");
        assert!(servers.at(0).register(&name, "old-pw", encoding).await.ok);
        let (mut client, ack) = servers.at(0).login(&name, "old-pw", encoding).await;
        assert!(ack.ok);
        let change = |old: Option<&str>, new: Option<&str>| TimReq {
            rtype: Some(21),
            req_str: old.map(str::to_owned),
            req_str2: new.map(str::to_owned),
            ..TimReq::default()
        };
        client.send(FrameType::Business, &change(Some("wrong"), Some("new-pw"))).await.unwrap();
        let ack = client.recv_ack(WAIT).await.unwrap();
        assert_eq!((ack.ok, ack.tim_type, ack.t, ack.error_code()), (false, 41, Some(21), Some(4112)));
        client.send(FrameType::Business, &change(Some("old-pw"), None)).await.unwrap();
        let ack = client.recv_ack(WAIT).await.unwrap();
        assert_eq!((ack.ok, ack.t, ack.error_code()), (false, None, Some(4104)), "missing field");
        client.send(FrameType::Business, &change(Some("old-pw"), Some("new-pw"))).await.unwrap();
        let ack = client.recv_ack(WAIT).await.unwrap();
        assert_eq!((ack.ok, ack.tim_type, ack.t), (true, 41, Some(21)), "{ack:?}");

        let (_, ack) = servers.at(1).login(&name, "old-pw", encoding).await;
        assert_eq!(ack.error_code(), Some(4105), "old password no longer works");
        let (_, ack) = servers.at(2).login(&name, "new-pw", encoding).await;
        assert!(ack.ok, "new password works");
        // Notification codes (FRIEND, PASSROOM) and no operation at all.
        for rtype in [5, 10, 99] {
            client.send(FrameType::Business, &TimReq { rtype: Some(rtype), ..TimReq::default() }).await.unwrap();
            assert_eq!(client.recv_ack(WAIT).await.unwrap().error_code(), Some(4104), "rtype {rtype}");
        }
    }
});
