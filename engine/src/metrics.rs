//! The node's figures for `/metrics`, in Prometheus' text format (version 0.0.4).
//!
//! Counts are relaxed atomic adds where they happen; gauges (sessions, the store's and the
//! cluster's figures) are read at the scrape. Hand-written rather than a metrics registry: a
//! count on the message path is one atomic add with no lookup, and a scrape formats a few
//! hundred lines into one buffer.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tim_kv::{LatencySnapshot, BOUNDS_US};
use tim_net::FrameType;
use tim_shard::Cluster;

/// Frame types are 7 bits.
const FRAME_TYPES: usize = 128;

#[derive(Debug)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub logins: AtomicU64,
    /// Refused logins by the TIM error code they got.
    login_failures: Mutex<BTreeMap<i32, u64>>,
    frames_in: [AtomicU64; FRAME_TYPES],
    frames_out: [AtomicU64; FRAME_TYPES],
    /// Messages stored (1:1 and group), each once however often it was sent.
    pub messages: AtomicU64,
    /// Deliveries acked by a session.
    pub delivered: AtomicU64,
    /// Deliveries that ran out of ack tries (they stay or go to the offline queue).
    pub ack_timeouts: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Message-class frames clients sent to this node (its load, as gossip carries it).
    pub load: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            login_failures: Mutex::new(BTreeMap::new()),
            frames_in: std::array::from_fn(|_| AtomicU64::new(0)),
            frames_out: std::array::from_fn(|_| AtomicU64::new(0)),
            messages: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            ack_timeouts: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            load: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a count.
pub fn add(count: &AtomicU64, n: u64) {
    count.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn frame_in(&self, head: u8) {
        if let Some(c) = self.frames_in.get(usize::from(head & 0x7F)) {
            add(c, 1);
        }
    }

    /// A frame written to a client (its first byte is its type).
    pub fn frame_out(&self, frame: &[u8]) {
        if let Some(c) = frame.first().and_then(|h| self.frames_out.get(usize::from(h & 0x7F))) {
            add(c, 1);
        }
    }

    pub fn login_failed(&self, code: i32) {
        *self.login_failures.lock().unwrap_or_else(|p| p.into_inner()).entry(code).or_default() += 1;
    }
}

/// What a scrape reads besides the counts: gauges of the node's services.
pub struct Gauges<'a> {
    pub sessions: u64,
    pub offline_queued: u64,
    pub data: &'a Cluster,
}

/// The text of one scrape.
pub async fn render(m: &Metrics, gauges: Gauges<'_>) -> String {
    let mut out = String::with_capacity(16 << 10);
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    gauge(&mut out, "tim_sessions", "client sessions logged in on this node", gauges.sessions);
    counter(&mut out, "tim_connections_total", "client connections accepted", load(&m.connections));
    counter(&mut out, "tim_logins_total", "logins accepted", load(&m.logins));
    head(&mut out, "tim_login_failures_total", "counter", "logins refused, by the TIM error code answered");
    for (code, n) in m.login_failures.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "tim_login_failures_total{{code=\"{code}\"}} {n}");
    }
    for (name, help, counts) in [
        ("tim_frames_in_total", "frames clients sent, by TIM frame type", &m.frames_in),
        ("tim_frames_out_total", "frames sent to clients, by TIM frame type", &m.frames_out),
    ] {
        head(&mut out, name, "counter", help);
        for (code, c) in counts.iter().enumerate() {
            let n = load(c);
            if n > 0 {
                let kind =
                    u8::try_from(code).ok().and_then(|c| FrameType::try_from(c).ok()).map_or("other", frame_name);
                let _ = writeln!(out, "{name}{{type=\"{kind}\",code=\"{code}\"}} {n}");
            }
        }
    }
    counter(&mut out, "tim_messages_stored_total", "messages accepted and stored (1:1 and group)", load(&m.messages));
    counter(&mut out, "tim_deliveries_acked_total", "pushes a session acked", load(&m.delivered));
    counter(&mut out, "tim_ack_timeouts_total", "pushes that ran out of ack tries", load(&m.ack_timeouts));
    counter(&mut out, "tim_offline_queued_total", "entries written to offline queues", gauges.offline_queued);
    counter(&mut out, "tim_rate_limited_total", "message frames refused by a rate limit (5104)", load(&m.rate_limited));

    let store = gauges.data.store_figures();
    histogram(
        &mut out,
        "tim_store_commit_seconds",
        "RocksDB writes, one per group of batches, sync included",
        &store.commits,
    );
    counter(
        &mut out,
        "tim_store_synced_commits_total",
        "RocksDB writes that waited for the write-ahead log's fsync (the rest ride on a later one)",
        store.synced_commits,
    );
    histogram(
        &mut out,
        "tim_store_write_seconds",
        "store writes as callers wait: queued, grouped, committed",
        &store.writes,
    );
    gauge(&mut out, "tim_rocksdb_memtable_bytes", "bytes in memtables", store.memtable_bytes);
    gauge(
        &mut out,
        "tim_rocksdb_pending_compaction_bytes",
        "bytes compaction estimates it has to rewrite",
        store.pending_compaction_bytes,
    );
    gauge(&mut out, "tim_rocksdb_running_compactions", "compactions running", store.running_compactions);
    gauge(&mut out, "tim_rocksdb_running_flushes", "memtable flushes running", store.running_flushes);
    gauge(&mut out, "tim_rocksdb_live_data_bytes", "estimated bytes of live data", store.live_data_bytes);
    gauge(&mut out, "tim_rocksdb_block_cache_bytes", "bytes in the block cache", store.block_cache_bytes);

    let cluster = gauges.data.figures().await;
    gauge(&mut out, "tim_cluster_members", "members this node knows", cluster.members);
    gauge(&mut out, "tim_cluster_live_members", "members this node sees live", cluster.live);
    gauge(&mut out, "tim_slots_owned", "slots this node owns", cluster.slots_owned);
    counter(&mut out, "tim_slots_moved_total", "slots this node handed over since it started", cluster.moved_slots);
    counter(
        &mut out,
        "tim_slot_bytes_moved_total",
        "bytes of slot data this node sent in hand-overs",
        cluster.moved_bytes,
    );
    histogram(&mut out, "tim_node_call_seconds", "calls to other nodes, request to answer", &cluster.calls);
    out
}

fn frame_name(kind: FrameType) -> &'static str {
    match kind {
        FrameType::Ack => "ack",
        FrameType::Ping => "ping",
        FrameType::Register => "register",
        FrameType::Token => "token",
        FrameType::Auth => "auth",
        FrameType::OfflineMsg => "offline",
        FrameType::OfflineMsgEnd => "offline_end",
        FrameType::BroadPresence => "broadpresence",
        FrameType::PullMessage => "pullmessage",
        FrameType::VRoom => "vroom",
        FrameType::Business => "business",
        FrameType::Nodes => "nodes",
        FrameType::Message => "message",
        FrameType::Presence => "presence",
        FrameType::RevokeMessage => "revoke",
        FrameType::BurnMessage => "burn",
        FrameType::Stream => "stream",
        FrameType::BigString => "bigstring",
        FrameType::BigBinary => "bigbinary",
        FrameType::BigBinaryStream => "bigbinarystream",
        FrameType::Logout => "logout",
    }
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    head(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    head(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &LatencySnapshot) {
    head(out, name, "histogram", help);
    for (bound, n) in BOUNDS_US.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", *bound as f64 / 1e6);
    }
    let count = h.cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}
