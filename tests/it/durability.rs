//! Acknowledged writes survive `kill -9`.

use tim_net::Encoding;

use crate::node::TestNode;

#[tokio::test]
async fn acknowledged_registrations_survive_kill_9() {
    let node = TestNode::start(&[]);
    let mut nodes = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = node.addr;
        tasks.push(tokio::spawn(async move {
            let auth = crate::node::auth(&format!("durable-{i}"), "pw");
            tim_net::client::post_tim2(addr, tim_net::FrameType::Register, Encoding::Compact, &auth)
                .await
        }));
    }
    for task in tasks {
        let ack = task.await.unwrap().unwrap();
        assert!(ack.ok, "{ack:?}");
        nodes.push(ack.n.unwrap());
    }
    let data = node.data_dir();
    let dir = node.kill9();
    assert!(data.join("store").is_dir());
    let node = TestNode::start_in(dir, &[]);
    for (i, user_node) in nodes.iter().enumerate() {
        let (_client, ack) = node
            .login(&format!("durable-{i}"), "pw", Encoding::Json)
            .await;
        assert!(ack.ok, "user {i} lost after kill -9: {ack:?}");
        assert_eq!(
            ack.n.as_deref(),
            Some(user_node.as_str()),
            "same id after restart"
        );
    }
}
