//! `tim bench` against a real server: the scenarios run, stop by themselves, account for every
//! message and write their JSON report.

use std::process::Command;

use crate::node::TestNode;

/// A server as the bench guide starts one: cheap password hashing, no message-rate limits.
const BENCH_SERVER: &[&str] =
    &["--argon2-memory-kib", "8", "--argon2-passes", "1", "--rate-connection", "0", "--rate-account", "0"];

fn bench(node: &TestNode, json: &std::path::Path, scenario: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["bench", "--server", &node.addr.to_string(), "--json"])
        .arg(json)
        .args(scenario)
        .output()
        .unwrap();
    assert!(output.status.success(), "tim bench failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

fn figure(report: &serde_json::Value, name: &str) -> f64 {
    report["figures"].as_array().unwrap().iter().find(|f| f["name"] == name).unwrap()["value"].as_f64().unwrap()
}

#[test]
fn connect_and_chat_scenarios_report_every_message() {
    let node = TestNode::start(BENCH_SERVER);
    let dir = tempfile::tempdir().unwrap();
    let connect = bench(&node, &dir.path().join("connect.json"), &["connect", "--connections", "20", "--settle", "0"]);
    assert_eq!(connect["scenario"], "connect");
    assert_eq!(figure(&connect, "connections"), 20.0);
    assert!(connect["machine"]["cores"].as_u64().unwrap() >= 1);

    let args = ["chat", "--pairs", "3", "--duration", "1", "--rate", "300"];
    let chat = bench(&node, &dir.path().join("chat.json"), &args);
    let sent = figure(&chat, "messages sent");
    assert!(sent > 100.0, "about 300 offered, {sent} sent");
    assert_eq!(figure(&chat, "messages delivered"), sent);
    assert_eq!(figure(&chat, "messages echoed"), sent);
    assert_eq!(figure(&chat, "messages lost") + figure(&chat, "messages duplicated"), 0.0);
    assert_eq!(figure(&chat, "messages reordered"), 0.0, "a conversation is delivered in order");
    // The first second warms up: its messages are checked but not measured.
    let measured = figure(&chat, "messages measured");
    assert!(measured > 100.0 && measured < sent - 100.0, "{measured} of {sent} measured after a warm-up of 1 s");
    let cold = ["chat", "--pairs", "3", "--duration", "1", "--rate", "300", "--warmup", "0"];
    let cold = bench(&node, &dir.path().join("cold.json"), &cold);
    assert_eq!(figure(&cold, "messages measured"), figure(&cold, "messages delivered"), "no warm-up: all measured");
    let offline = bench(&node, &dir.path().join("offline.json"), &["offline", "--users", "4", "--messages", "25"]);
    assert_eq!(figure(&offline, "messages queued"), 100.0);
    assert_eq!(figure(&offline, "messages drained"), 100.0);
    assert_eq!(figure(&offline, "users drained completely and in order"), 4.0);
    // A second run finds the accounts and friendships of the first.
    let again = bench(&node, &dir.path().join("again.json"), &args);
    assert_eq!(figure(&again, "messages lost"), 0.0);
}

#[test]
fn connect_spreads_connections_over_worker_processes() {
    let node = TestNode::start(BENCH_SERVER);
    let dir = tempfile::tempdir().unwrap();
    let pid = node.pid().to_string();
    let args = ["--server-pid", &pid, "connect", "--connections", "31", "--workers", "3", "--settle", "0"];
    let report = bench(&node, &dir.path().join("connect.json"), &args);
    assert_eq!(figure(&report, "connections"), 31.0, "every worker's share is connected and counted");
    assert_eq!(figure(&report, "worker processes"), 3.0);
    assert!(figure(&report, "server rss after") > 0.0);
    let refused = Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["bench", "--server", &node.addr.to_string(), "connect", "--workers", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--workers"));
}

#[test]
fn group_and_room_scenarios_count_every_delivery() {
    let node = TestNode::start(BENCH_SERVER);
    let dir = tempfile::tempdir().unwrap();
    for scenario in ["group", "room"] {
        let args = [scenario, "--members", "5", "--messages", "20", "--rate", "50"];
        let report = bench(&node, &dir.path().join(format!("{scenario}.json")), &args);
        assert_eq!(report["scenario"], scenario);
        assert_eq!(figure(&report, "deliveries expected"), 100.0);
        assert_eq!(figure(&report, "deliveries"), 100.0, "{scenario}: every member got every message");
        assert_eq!(figure(&report, "deliveries duplicated"), 0.0);
        assert!(figure(&report, "delivery latency p50") > 0.0);
    }
}

#[test]
fn bench_refuses_non_loopback_targets() {
    let output = Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["bench", "--server", "10.0.0.1:20003", "connect"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

/// Runs `tim bench --json JSON sweep ARGS` and reads its report.
fn sweep(json: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tim"))
        .args(["bench", "--json"])
        .arg(json)
        .arg("sweep")
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "tim bench sweep failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

#[test]
fn a_sweep_starts_a_fresh_server_per_rate_and_writes_table_json_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let (plot, json) = (dir.path().join("sweep.svg"), dir.path().join("sweep.json"));
    // Its own listeners (client port and the three beside it), apart from other tests' nodes.
    let listen = format!("127.0.77.1:{}", 30_000 + std::process::id() % 20_000);
    let common = ["--pairs", "3", "--duration", "1", "--listen", &listen, "--work-dir", work.to_str().unwrap()];
    let mut args = vec!["--rates", "200,100", "--plot", plot.to_str().unwrap()];
    args.extend(common);
    args.extend(["--", "--sync", "false"]);
    let report = sweep(&json, &args);

    let version = Command::new(env!("CARGO_BIN_EXE_tim")).arg("--version").output().unwrap();
    let commit = report["commit"].as_str().unwrap();
    assert!(commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()), "stamped at build time: {commit}");
    assert!(String::from_utf8_lossy(&version.stdout).contains(&format!("(commit {commit})")));
    let steps = report["steps"].as_array().unwrap();
    let offered: Vec<u64> = steps.iter().map(|s| s["offered"].as_u64().unwrap()).collect();
    assert_eq!(offered, [100, 200, 0], "the ladder climbs, then runs flat out");
    for step in steps {
        for count in ["lost", "duplicated", "reordered"] {
            assert_eq!(step[count], 0, "{step}");
        }
        assert!(step["cpu_us_per_message"].as_f64().unwrap() > 0.0, "{step}");
        assert!(step["echo_ms"]["p99"].as_f64().unwrap() > 0.0, "{step}");
    }
    for step in &steps[..2] {
        let (offered, delivered) = (step["offered"].as_f64().unwrap(), step["delivered_per_second"].as_f64().unwrap());
        assert!(delivered > 0.9 * offered, "{step}");
    }
    // Every step's data dir is gone, its log kept.
    let mut left: Vec<String> =
        std::fs::read_dir(&work).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["step-1.log", "step-2.log", "step-3.log"]);
    let svg = std::fs::read_to_string(&plot).unwrap();
    // Three points on the CPU curve and on each of three latency curves.
    assert_eq!(svg.matches("<circle").count(), 12);

    // A second sweep is drawn beside the first, which is dashed and labelled.
    let mut args = vec!["--rates", "100", "--flat-out", "false", "--label", "after", "--plot", plot.to_str().unwrap()];
    args.extend(["--baseline", json.to_str().unwrap()]);
    args.extend(common);
    let second = sweep(&dir.path().join("second.json"), &args);
    assert_eq!(second["steps"].as_array().unwrap().len(), 1);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<circle").count(), 12 + 4);
    assert!(
        svg.contains("stroke-dasharray")
            && svg.contains(&format!("{commit} echo p99"))
            && svg.contains("after echo p99")
    );
}
