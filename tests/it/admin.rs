//! Admin accounts: created with the deployment secret, signed in for a bearer token on any
//! node, rights by role, and no default account.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tim_net::{Encoding, FrameType};

use crate::chat::{befriend, echo, text_to};
use crate::cluster::TestCluster;
use crate::roster::{pushed, user};

/// One HTTP/1.1 request; the status and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `tim admin …` against `admin`, the password (if any) on standard input.
pub fn tim_admin(args: &[&str], admin: SocketAddr, secret: &str, password: Option<&str>) -> std::process::Output {
    let admin = admin.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tim"))
        .arg("admin")
        .args(args)
        .args(["--server", &admin, "--secret-file", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(password) = password {
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    }
    child.wait_with_output().unwrap()
}

pub async fn sign_in(addr: SocketAddr, name: &str, password: &str) -> (u16, Option<String>) {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let (status, answer) = http(addr, "POST", "/v1/login", None, &body).await;
    let token =
        serde_json::from_str::<serde_json::Value>(&answer).ok().and_then(|v| v["token"].as_str().map(str::to_owned));
    (status, token)
}

/// A token of a read-only admin account made for it, to scrape any node's `/metrics` with.
pub async fn read_token(admin: SocketAddr, secret: &str) -> String {
    let out = tim_admin(&["create-user", "scraper", "--role", "read"], admin, secret, Some("scraper password"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sign_in(admin, "scraper", "scraper password").await.1.expect("a token")
}

/// One figure of a node's `/metrics` (0 while it has none).
pub async fn figure(admin: SocketAddr, token: &str, name: &str) -> f64 {
    scrape(admin, token).await.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_are_created_with_the_secret_and_sign_in_anywhere_with_their_role() {
    let cluster = TestCluster::start(2, &[]);
    let secret = cluster.secret_file();
    let (a, b) = (cluster.nodes[0].admin.unwrap(), cluster.nodes[1].admin.unwrap());

    // No default account: TIM's admin/123 opens nothing.
    assert_eq!(sign_in(a, "admin", "123").await, (401, None));
    assert_eq!(http(a, "GET", "/v1/admins", None, "").await.0, 401, "no token, no list");

    // Created with the deployment secret; short passwords and second accounts of a name are
    // refused.
    let out = tim_admin(&["create-user", "root", "--role", "write"], a, &secret, Some("root password"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tim_admin(&["create-user", "viewer", "--role", "read"], b, &secret, Some("short"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("at least 8"));
    let out = tim_admin(&["create-user", "root", "--role", "read"], b, &secret, Some("another password"));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("409"));
    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), [1u8; 32]).unwrap();
    let out = tim_admin(&["list-users"], a, &wrong.path().display().to_string(), None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"), "another secret");

    // A token from one node works on the other.
    assert_eq!(sign_in(b, "root", "wrong password").await, (401, None));
    let (status, root) = sign_in(a, "root", "root password").await;
    assert_eq!(status, 200);
    let root = root.unwrap();
    let viewer = serde_json::json!({ "name": "viewer", "password": "viewer password", "role": "read" }).to_string();
    assert_eq!(http(b, "POST", "/v1/admins", Some(&root), &viewer).await.0, 201);
    let (status, list) = http(b, "GET", "/v1/admins", Some(&root), "").await;
    assert_eq!(status, 200);
    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list)
        .unwrap()
        .iter()
        .map(|a| format!("{}:{}", a["name"].as_str().unwrap(), a["role"].as_str().unwrap()))
        .collect();
    assert_eq!(names, ["root:write", "viewer:read"]);

    // Read rights read; they neither change nor export. Nobody's token exports: that takes
    // the secret.
    let (_, viewer_token) = sign_in(b, "viewer", "viewer password").await;
    let viewer_token = viewer_token.unwrap();
    assert_eq!(http(a, "GET", "/v1/admins", Some(&viewer_token), "").await.0, 200);
    assert_eq!(http(a, "GET", "/v1/info", Some(&viewer_token), "").await.0, 200);
    let other = serde_json::json!({ "name": "other", "password": "other password", "role": "write" }).to_string();
    assert_eq!(http(a, "POST", "/v1/admins", Some(&viewer_token), &other).await.0, 403);
    assert_eq!(http(a, "GET", "/v1/export", Some(&root), "").await.0, 403);
    assert_eq!(http(a, "GET", "/v1/admins", Some("00.00"), "").await.0, 401, "a forged token");

    // Deleting an account ends its tokens on every node.
    let out = tim_admin(&["delete-user", "viewer"], b, &secret, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(http(a, "GET", "/v1/admins", Some(&viewer_token), "").await.0, 401);
    assert_eq!(http(b, "GET", "/v1/admins", Some(&root), "").await.0, 200, "the other account's token still works");
    let out = tim_admin(&["list-users"], a, &secret, None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"root\"")
            && !String::from_utf8_lossy(&out.stdout).contains("viewer")
    );
}

/// A scrape of `/metrics`: each sample line's value by its name and labels.
pub async fn scrape(addr: SocketAddr, token: &str) -> std::collections::HashMap<String, f64> {
    let (status, text) = http(addr, "GET", "/metrics", Some(token), "").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap_or_else(|_| panic!("a number in {l:?}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_with_a_read_token_and_move_with_traffic() {
    let cluster = TestCluster::start(2, &[]);
    let secret = cluster.secret_file();
    let admin = cluster.nodes[0].admin.unwrap();
    let out = tim_admin(&["create-user", "scraper", "--role", "read"], admin, &secret, Some("scraper password"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, token) = sign_in(admin, "scraper", "scraper password").await;
    let token = token.unwrap();
    assert_eq!(http(admin, "GET", "/metrics", None, "").await.0, 401, "no token, no figures");

    let other = cluster.nodes[1].admin.unwrap();
    let before = scrape(admin, &token).await;
    let other_before = scrape(other, &token).await;
    let figure = |m: &std::collections::HashMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
    assert_eq!(figure(&before, "tim_cluster_members"), 2.0);
    assert_eq!(figure(&before, "tim_cluster_live_members"), 2.0);
    assert!(figure(&before, "tim_slots_owned") > 0.0);
    assert_eq!(figure(&before, "tim_sessions"), 0.0);

    // Two users on this node chat: logins, frames, stored and acked messages, store writes.
    let node = &cluster.nodes[0];
    let (mut ann, ann_node) = user(node, "ann", Encoding::Compact).await;
    let (mut ben, ben_node) = user(node, "ben", Encoding::Json).await;
    befriend(&mut ann, &ann_node, &mut ben, &ben_node).await;
    for i in 0..5 {
        ann.send(FrameType::Message, &text_to(&ben_node, &format!("m{i}"), 1)).await.unwrap();
        echo(&mut ann).await;
        pushed(&mut ben, true).await;
    }
    // A wrong password is counted by its code.
    assert!(!node.login("ann", "wrong", Encoding::Compact).await.1.ok);
    // An ack is settled when the session's next frame comes: one more round trip.
    ann.send(FrameType::Message, &text_to(&ben_node, "last", 1)).await.unwrap();
    echo(&mut ann).await;
    pushed(&mut ben, false).await;
    ben.ping().await.unwrap();

    let after = scrape(admin, &token).await;
    let grew = |name: &str| figure(&after, name) - figure(&before, name);
    assert_eq!(figure(&after, "tim_sessions"), 2.0);
    assert_eq!(grew("tim_logins_total"), 2.0);
    assert_eq!(grew("tim_login_failures_total{code=\"4105\"}"), 1.0, "{after:?}");
    assert_eq!(grew("tim_frames_in_total{type=\"message\",code=\"90\"}"), 6.0);
    assert_eq!(grew("tim_messages_stored_total"), 6.0);
    assert!(grew("tim_deliveries_acked_total") >= 5.0, "{after:?}");
    assert!(grew("tim_frames_out_total{type=\"message\",code=\"90\"}") >= 6.0);
    // Each message is written on its conversation's owner, one node or the other.
    let other_after = scrape(other, &token).await;
    let both_grew = |name: &str| {
        figure(&after, name) - figure(&before, name) + figure(&other_after, name) - figure(&other_before, name)
    };
    assert!(both_grew("tim_store_commit_seconds_count") >= 6.0);
    // Each message is stored by a synced commit (it waits for its echo before the next is sent).
    assert!(both_grew("tim_store_synced_commits_total") >= 6.0);
    assert!(figure(&after, "tim_store_synced_commits_total") <= figure(&after, "tim_store_commit_seconds_count"));
    assert!(both_grew("tim_store_write_seconds_count") >= 6.0);
    assert_eq!(
        figure(&after, "tim_store_commit_seconds_bucket{le=\"+Inf\"}"),
        figure(&after, "tim_store_commit_seconds_count")
    );
    assert!(figure(&after, "tim_rocksdb_memtable_bytes") > 0.0);
    assert!(figure(&after, "tim_node_call_seconds_count") > 0.0, "the two nodes called each other");
}
