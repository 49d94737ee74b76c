//! Cuts the links between test nodes with nftables: the test's own table, on the output hook
//! (every packet between two loopback addresses passes it), removed when the cut is dropped.
//! Nodes' links leave from their own addresses, so a cut between addresses is a cut between
//! nodes; clients of the test connect from 127.0.0.1 and still reach every node.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Cut {
    table: String,
}

impl Cut {
    /// Drops every packet between `one` and each of `others`, both ways.
    pub fn off(one: IpAddr, others: &[IpAddr]) -> Cut {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let table = format!("tim_it_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let others = others.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let rules = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
             ip saddr {one} ip daddr {{ {others} }} drop\n  ip saddr {{ {others} }} ip daddr {one} drop\n }}\n}}\n"
        );
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft (Debian's nftables, which `make test` installs; run as root)");
        nft.stdin.take().expect("stdin").write_all(rules.as_bytes()).expect("rules written");
        let out = nft.wait_with_output().expect("nft ran");
        assert!(out.status.success(), "nft refused the cut: {}", String::from_utf8_lossy(&out.stderr));
        Cut { table }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}
