//! Replicas of real stores in one process, linked through a network that can be cut.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tim_kv::{Batch, ColumnDef, RocksStore, Row, RowId, SealKey, Slot, Store, StoreConfig, TableDef};

use super::*;

const MSG: TableDef = TableDef { id: 1, name: "msg", columns: &[ColumnDef::indexed("chat"), ColumnDef::plain("body")] };

#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<NodeId, Weak<Replication>>>,
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
}

struct NodeLinks {
    me: NodeId,
    net: Arc<Net>,
}

impl Links for NodeLinks {
    fn send(&self, to: NodeId, frame: Bytes) {
        if self.net.cut.lock().unwrap().contains(&(self.me, to)) {
            return;
        }
        let node = self.net.nodes.lock().unwrap().get(&to).and_then(Weak::upgrade);
        if let Some(node) = node {
            node.receive(self.me, &frame).unwrap();
        }
    }
}

struct Node {
    id: NodeId,
    store: Arc<RocksStore>,
    replication: Option<Arc<Replication>>,
    _dir: tempfile::TempDir,
}

struct Cluster {
    net: Arc<Net>,
    nodes: Vec<Node>,
}

/// Looks at `done` every 10 ms for up to `limit`: whether it came true.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config() -> ReplicationConfig {
    ReplicationConfig {
        timing: Timing {
            heartbeat: Duration::from_millis(40),
            idle_heartbeat: Duration::from_secs(1),
            lease: Duration::from_millis(200),
            margin: Duration::from_millis(20),
            election: Duration::from_millis(300),
            rank_step: Duration::from_millis(60),
            step_down: Duration::from_millis(400),
            snapshot_wait: Duration::from_secs(2),
            max_batch: 64,
        },
        tick: Duration::from_millis(5),
        commit_wait: Duration::from_millis(500),
        keep: 8,
        reconcile_every: Duration::from_millis(50),
        ..ReplicationConfig::default()
    }
}

impl Cluster {
    async fn new(n: u64) -> Cluster {
        let net = Arc::new(Net::default());
        let mut nodes = Vec::new();
        for id in (1..=n).map(NodeId) {
            let dir = tempfile::tempdir().unwrap();
            let store =
                Arc::new(RocksStore::open(&StoreConfig::new(dir.path()), SealKey::new(&[7; 32]), &[MSG]).unwrap());
            nodes.push(Node { id, store, replication: None, _dir: dir });
        }
        let mut cluster = Cluster { net, nodes };
        for k in 0..cluster.nodes.len() {
            cluster.start(k);
        }
        cluster
    }

    fn start(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let links = Arc::new(NodeLinks { me: node.id, net: Arc::clone(&self.net) });
        let replication = Arc::new(Replication::start(node.id, node.store.clone(), links, config()).unwrap());
        self.net.nodes.lock().unwrap().insert(node.id, Arc::downgrade(&replication));
        node.replication = Some(replication);
    }

    fn stop(&mut self, k: usize) {
        self.nodes[k].replication = None;
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    async fn create(&self, slot: Slot) {
        self.create_on(slot, &self.ids()).await;
    }

    /// Creates `slot` with `voters` on those nodes alone.
    async fn create_on(&self, slot: Slot, voters: &[NodeId]) {
        let conf = Conf::new(voters.to_vec(), vec![]).unwrap();
        for node in self.nodes.iter().filter(|n| voters.contains(&n.id)) {
            node.replication.as_ref().unwrap().create(slot, conf.clone()).await.unwrap();
        }
    }

    /// Gives every running node the placement of `members` with three replicas per slot.
    async fn place(&self, members: &[NodeId]) -> Arc<Placement> {
        let placement = Arc::new(Placement::new(members.iter().map(|id| crate::Member { id: *id, weight: 1 }), 3));
        for node in self.nodes.iter().filter_map(|n| n.replication.as_ref()) {
            node.place(Arc::clone(&placement)).await.unwrap();
        }
        placement
    }

    fn index(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// The node whose replica of `slot` serves now, if any.
    fn serving(&self, slot: Slot) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.replication
                .as_ref()
                .and_then(|r| r.status(slot))
                .is_some_and(|s| s.role == RoleKind::Primary { serving: true })
        })
    }

    /// The node whose replica of `slot` serves, waiting up to 10 s for one.
    async fn primary(&self, slot: Slot) -> usize {
        let mut found = None;
        eventually(Duration::from_secs(10), || {
            found = self.serving(slot);
            found.is_some()
        })
        .await;
        found.unwrap_or_else(|| panic!("no primary of slot {slot:?} within 10 s"))
    }

    /// Writes a message through the primary of `slot`, trying again while there is none.
    async fn send(&self, slot: Slot, body: &str) -> RowId {
        for _ in 0..100 {
            let k = self.primary(slot).await;
            let mut batch = Batch::new(slot);
            let mut row = Row::new(2);
            row.set(0, Bytes::from_static(b"chat")).set(1, Bytes::copy_from_slice(body.as_bytes()));
            batch.insert(tim_kv::TableId(1), row);
            match self.nodes[k].replication.as_ref().unwrap().write(batch).await {
                Ok(ids) => return ids[0],
                Err(ReplicationError::NotPrimary { .. } | ReplicationError::Unavailable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("write failed: {e}"),
            }
        }
        panic!("no write of {body} went through");
    }

    fn bodies(&self, k: usize, slot: Slot) -> Vec<String> {
        let rows =
            self.nodes[k].store.page(tim_kv::TableId(1), slot, 0, b"chat", tim_kv::Cursor::OLDEST, 10_000).unwrap();
        rows.iter().map(|(_, r)| String::from_utf8(r.get(1).unwrap().to_vec()).unwrap()).collect()
    }

    /// Waits until every running node applied exactly `bodies`.
    async fn converged(&self, slot: Slot, bodies: &[String]) {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|k| self.nodes[*k].replication.is_some()).collect();
        if eventually(Duration::from_secs(10), || running.iter().all(|k| self.bodies(*k, slot) == bodies)).await {
            return;
        }
        let seen: Vec<_> = (0..self.nodes.len()).map(|k| self.bodies(k, slot)).collect();
        panic!("replicas did not converge on {bodies:?}: {seen:?}");
    }

    /// Waits until node `k` applied exactly `bodies` (its replica may be new).
    async fn holds(&self, k: usize, slot: Slot, bodies: &[String]) {
        eventually(Duration::from_secs(5), || self.bodies(k, slot) == bodies).await;
        assert_eq!(self.bodies(k, slot), bodies);
    }

    fn cut_off(&self, k: usize) {
        let me = self.nodes[k].id;
        let mut cut = self.net.cut.lock().unwrap();
        for other in self.ids().into_iter().filter(|o| *o != me) {
            cut.insert((me, other));
            cut.insert((other, me));
        }
    }

    fn heal(&self) {
        self.net.cut.lock().unwrap().clear();
    }
}

#[tokio::test]
async fn a_write_is_answered_once_a_majority_holds_it_and_every_replica_applies_it() {
    let cluster = Cluster::new(3).await;
    let slot = Slot(7);
    cluster.create(slot).await;
    let mut sent = Vec::new();
    let mut last = RowId(0);
    for i in 0..50 {
        let body = format!("m{i}");
        let id = cluster.send(slot, &body).await;
        assert!(id > last, "ids increase");
        last = id;
        sent.push(body);
        // Answered means applied on the primary.
        let k = cluster.primary(slot).await;
        assert_eq!(cluster.bodies(k, slot).last(), sent.last());
    }
    cluster.converged(slot, &sent).await;
}

#[tokio::test]
async fn a_killed_primary_is_replaced_and_nothing_answered_is_lost() {
    let mut cluster = Cluster::new(3).await;
    let slot = Slot(3);
    cluster.create(slot).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(format!("a{i}"));
        cluster.send(slot, sent.last().unwrap()).await;
    }
    let first = cluster.primary(slot).await;
    let before = cluster.send(slot, "a20").await;
    sent.push("a20".into());
    cluster.stop(first);
    let second = cluster.primary(slot).await;
    assert_ne!(first, second);
    for i in 21..40 {
        sent.push(format!("a{i}"));
        let id = cluster.send(slot, sent.last().unwrap()).await;
        assert!(id > before, "ids go on above the ones issued before the fail-over");
    }
    cluster.converged(slot, &sent).await;
    // The old primary comes back from its disk and catches up.
    cluster.start(first);
    cluster.converged(slot, &sent).await;
}

#[tokio::test]
async fn a_primary_cut_off_stops_answering_and_the_majority_goes_on() {
    let cluster = Cluster::new(3).await;
    let slot = Slot(11);
    cluster.create(slot).await;
    cluster.send(slot, "before").await;
    let cut = cluster.primary(slot).await;
    cluster.cut_off(cut);
    // The minority primary answers no write.
    let mut batch = Batch::new(slot);
    batch.insert(tim_kv::TableId(1), Row::new(2));
    let refused = cluster.nodes[cut].replication.as_ref().unwrap().write(batch).await;
    assert!(
        matches!(refused, Err(ReplicationError::Unavailable { .. } | ReplicationError::NotPrimary { .. })),
        "{refused:?}"
    );
    // The others elect and serve.
    let mut sent = vec!["before".to_string()];
    for i in 0..10 {
        sent.push(format!("b{i}"));
        cluster.send(slot, sent.last().unwrap()).await;
    }
    assert_ne!(cluster.primary(slot).await, cut);
    cluster.heal();
    cluster.converged(slot, &sent).await;
}

#[tokio::test]
async fn a_replica_back_after_the_log_moved_on_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::new(3).await;
    let slot = Slot(21);
    cluster.create(slot).await;
    let mut sent = vec!["first".to_string()];
    cluster.send(slot, "first").await;
    let primary = cluster.primary(slot).await;
    let away = (primary + 1) % 3;
    cluster.stop(away);
    // Far more than the logs keep.
    for i in 0..60 {
        sent.push(format!("c{i}"));
        cluster.send(slot, sent.last().unwrap()).await;
    }
    // The primary's log starts after everything the stopped replica applied: only a
    // snapshot brings that replica up to date.
    let k = cluster.primary(slot).await;
    let oldest = cluster.nodes[k].store.log_entries(slot, 0, 1).unwrap()[0].0;
    let applied = applied(&cluster.nodes[away].store, slot);
    assert!(oldest > applied + 1, "log from {oldest}, the replica applied {applied}");
    cluster.start(away);
    cluster.converged(slot, &sent).await;
    assert!(self::applied(&cluster.nodes[away].store, slot) >= oldest);
}

fn applied(store: &RocksStore, slot: Slot) -> u64 {
    let raw = store.local(&record::applied_name(slot)).unwrap().unwrap();
    u64::from_be_bytes(raw.try_into().unwrap())
}

#[tokio::test]
async fn concurrent_writes_of_one_slot_commit_together_in_order_of_their_ids() {
    let cluster = Arc::new(Cluster::new(3).await);
    let slot = Slot(30);
    cluster.create(slot).await;
    cluster.send(slot, "start").await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let cluster = Arc::clone(&cluster);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(cluster.send(slot, &format!("t{t}-{i}")).await);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let ids = task.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "each sender's ids increase");
        all.extend(ids);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 200, "every write got its own id");
    let k = cluster.primary(slot).await;
    let bodies = cluster.bodies(k, slot);
    assert_eq!(bodies.len(), 201);
    cluster.converged(slot, &bodies).await;
}

#[tokio::test]
async fn a_slot_of_one_replica_grows_to_its_placement_and_its_primary_moves_to_the_first() {
    let mut cluster = Cluster::new(3).await;
    let members = cluster.ids();
    let placement = Placement::new(members.iter().map(|id| crate::Member { id: *id, weight: 1 }), 3);
    // A slot whose preferred primary is not the node that holds it now.
    let slot = (0..crate::SLOTS).map(Slot).find(|s| placement.owner(*s) != Some(NodeId(1))).unwrap();
    cluster.create_on(slot, &[NodeId(1)]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(format!("d{i}"));
        cluster.send(slot, sent.last().unwrap()).await;
    }
    cluster.place(&members).await;
    let first = cluster.index(placement.owner(slot).unwrap());
    eventually(Duration::from_secs(5), || cluster.serving(slot) == Some(first)).await;
    assert_eq!(cluster.primary(slot).await, first, "the slot moved to its preferred primary");
    sent.push("after".into());
    cluster.send(slot, "after").await;
    cluster.converged(slot, &sent).await;
    // The others are voters now: without node 1 a majority remains.
    cluster.stop(0);
    sent.push("without 1".into());
    cluster.send(slot, "without 1").await;
    cluster.converged(slot, &sent).await;
}

#[tokio::test]
async fn a_dead_replica_is_replaced_by_the_one_the_placement_names_and_nothing_is_lost() {
    let mut cluster = Cluster::new(4).await;
    let slot = Slot(40);
    let three = [NodeId(1), NodeId(2), NodeId(3)];
    cluster.create_on(slot, &three).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(format!("e{i}"));
        cluster.send(slot, sent.last().unwrap()).await;
    }
    cluster.stop(2);
    cluster.place(&[NodeId(1), NodeId(2), NodeId(4)]).await;
    sent.push("while replacing".into());
    cluster.send(slot, "while replacing").await;
    // Node 4 holds the slot once it caught up, and votes: with node 1 gone too, 2 and 4
    // are a majority.
    cluster.holds(3, slot, &sent).await;
    // The joint change ends once node 4 caught up; until then node 1 is needed.
    let settled = || {
        let status = cluster.serving(slot).and_then(|k| cluster.nodes[k].replication.as_ref().unwrap().status(slot));
        status.is_some_and(|s| s.voters == 3 && !s.joint && s.learners == 0)
    };
    let voting = eventually(Duration::from_secs(10), settled).await;
    assert!(voting, "the configuration settled on three voters");
    cluster.stop(0);
    sent.push("without 1 and 3".into());
    cluster.send(slot, "without 1 and 3").await;
    cluster.converged(slot, &sent).await;
}

#[tokio::test]
async fn idle_slots_keep_their_primaries_through_beats_alone() {
    let cluster = Cluster::new(3).await;
    let slots: Vec<Slot> = (100..140).map(Slot).collect();
    for slot in &slots {
        cluster.create(*slot).await;
    }
    for slot in &slots {
        cluster.send(*slot, "x").await;
    }
    let promised = |cluster: &Cluster| -> Vec<Ballot> {
        slots.iter().map(|s| cluster.nodes[0].replication.as_ref().unwrap().status(*s).unwrap().promised).collect()
    };
    let before = promised(&cluster);
    // Five leases long, shorter than the idle appends' interval: only the beats speak.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(promised(&cluster), before, "no election while the primaries live");
    for slot in &slots {
        let k = cluster.primary(*slot).await;
        let status = cluster.nodes[k].replication.as_ref().unwrap().status(*slot).unwrap();
        assert_eq!(status.role, RoleKind::Primary { serving: true });
    }
    // And a write goes through at once, under the lease the beats kept.
    for slot in &slots {
        let k = cluster.primary(*slot).await;
        let mut batch = Batch::new(*slot);
        batch.insert(tim_kv::TableId(1), Row::new(2));
        cluster.nodes[k].replication.as_ref().unwrap().write(batch).await.unwrap();
    }
}

#[tokio::test]
async fn a_replica_the_placement_drops_while_it_runs_removes_its_copy_of_the_slot() {
    let cluster = Cluster::new(4).await;
    let slot = Slot(50);
    cluster.create_on(slot, &[NodeId(1), NodeId(2), NodeId(3)]).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(format!("f{i}"));
        cluster.send(slot, sent.last().unwrap()).await;
    }
    cluster.place(&[NodeId(1), NodeId(2), NodeId(4)]).await;
    let dropped = || cluster.nodes[2].replication.as_ref().unwrap().status(slot).is_none();
    eventually(Duration::from_secs(5), dropped).await;
    assert!(dropped(), "node 3 keeps no replica of the slot");
    let store = &cluster.nodes[2].store;
    eventually(Duration::from_secs(1), || !store.holds(slot).unwrap()).await;
    assert!(!store.holds(slot).unwrap(), "nor its data and log");
    assert!(store.local(&record::record_name(slot)).unwrap().is_none());
    // The others go on with node 4.
    sent.push("after".into());
    cluster.send(slot, "after").await;
    cluster.holds(3, slot, &sent).await;
}

#[tokio::test]
async fn an_append_for_a_slot_past_the_clusters_makes_no_replica() {
    let cluster = Cluster::new(1).await;
    let node = cluster.nodes[0].replication.as_ref().unwrap();
    let append = |slot: u16| {
        let message = Message::Append {
            ballot: Ballot { epoch: 1, node: NodeId(9) },
            prev: Position::START,
            entries: Vec::new(),
            commit: 0,
            sent: Duration::ZERO,
        };
        postcard::to_stdvec(&record::Frame::Messages(vec![(Slot(slot), message)])).unwrap()
    };
    node.receive(NodeId(9), &append(crate::SLOTS)).unwrap();
    node.receive(NodeId(9), &append(7)).unwrap();
    // The slot of the cluster gets an empty learner (the positive control); the other nothing.
    assert!(eventually(Duration::from_secs(5), || node.status(Slot(7)).is_some()).await);
    assert!(node.status(Slot(crate::SLOTS)).is_none());
    assert!(cluster.nodes[0].store.local(&record::record_name(Slot(crate::SLOTS))).unwrap().is_none());
}
