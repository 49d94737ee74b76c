//! The protocol under faults, simulated: replicas exchange messages through a network that
//! delays, reorders, duplicates and drops them, cut links (also non-transitively), crash
//! (keeping only what they wrote), pause past their lease, change their voters, and compact
//! their logs (so that replicas catch up from snapshots). Every run is one seed; a failing
//! seed replays exactly.
//!
//! Checked throughout: no two replicas ever apply different entries at one index; no two
//! replicas hold a lease at once. Checked at the end, after healing: every acknowledged
//! write is applied on every replica exactly once, in one order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::placement::NodeId;

type Data = u64;

/// What a replica wrote, as the driver would keep it on disk.
#[derive(Clone)]
struct Disk {
    promised: Ballot,
    base: Position,
    base_conf: Conf,
    entries: BTreeMap<Index, Entry<Data>>,
    /// The applied data and up to where.
    applied: Vec<(Index, Data)>,
    applied_index: Index,
}

impl Disk {
    fn write(&mut self, write: Write<Data>) {
        match write {
            Write::Promise(b) => {
                assert!(b > self.promised, "a promise is never lowered");
                self.promised = b;
            }
            Write::Truncate(from) => {
                assert!(from > self.applied_index, "an applied entry was truncated");
                self.entries.retain(|i, _| *i < from);
            }
            Write::Append(index, entry) => {
                assert!(index == self.base.index + self.entries.len() as Index + 1, "appends are contiguous");
                self.entries.insert(index, entry);
            }
            Write::Install(base, conf) => {
                self.base = base;
                self.base_conf = conf;
                self.entries.clear();
            }
        }
    }

    fn log(&self) -> Log<Data> {
        let mut log = Log::new(self.base, self.base_conf.clone());
        for entry in self.entries.values() {
            log.push(entry.clone());
        }
        log
    }
}

/// Which messages a script drops: `(from, to, message)`.
type Blocked = dyn Fn(NodeId, NodeId, &Payload) -> bool;

enum Payload {
    Proto(Message<Data>),
    Snapshot { ballot: Ballot, base: Position, conf: Conf, data: Vec<(Index, Data)>, sent: Duration },
}

struct Node {
    id: NodeId,
    disk: Disk,
    replica: Option<Replica<Data>>,
    down_until: Duration,
    paused_until: Duration,
    /// Its place for standing.
    rank: u32,
    /// Writes proposed here and not yet decided: index → (ballot, data).
    pending: BTreeMap<Index, (Ballot, Data)>,
}

struct Sim {
    rng: StdRng,
    seed: u64,
    now: Duration,
    timing: Timing,
    nodes: Vec<Node>,
    queue: BTreeMap<(Duration, u64), (NodeId, NodeId, Payload)>,
    sent: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    drop_rate: f64,
    dup_rate: f64,
    write_rate: f64,
    /// What was applied at each index, by anyone.
    chosen: BTreeMap<Index, (Ballot, Option<Data>)>,
    acked: BTreeSet<Data>,
    next_data: Data,
    faults: bool,
    stats: Stats,
    /// Messages a script drops.
    blocked: Box<Blocked>,
}

/// What the runs went through: the checks had something to check.
#[derive(Default, Debug)]
struct Stats {
    acked: usize,
    /// Primaries that appended their start entry.
    elections: usize,
    truncations: usize,
    snapshots: usize,
    changes: usize,
    transfers: usize,
}

impl Stats {
    fn add(&mut self, other: Stats) {
        self.acked += other.acked;
        self.elections += other.elections;
        self.truncations += other.truncations;
        self.snapshots += other.snapshots;
        self.changes += other.changes;
        self.transfers += other.transfers;
    }

    fn assert_exercised(&self, changes: bool) {
        eprintln!("{self:?}");
        assert!(self.acked > 1000, "writes acknowledged: {self:?}");
        assert!(self.elections > 300, "primaries elected: {self:?}");
        assert!(self.truncations > 10, "uncommitted entries truncated: {self:?}");
        assert!(self.snapshots > 10, "snapshots installed: {self:?}");
        assert!(!changes || self.changes > 10, "voter changes committed: {self:?}");
        assert!(self.transfers > 20, "primaries handed over: {self:?}");
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Sim {
    fn new(seed: u64, members: u64, voters: u64) -> Self {
        let ids: Vec<NodeId> = (1..=members).map(NodeId).collect();
        let conf = Conf::new(
            ids.iter().take(voters as usize).copied().collect(),
            ids.iter().skip(voters as usize).copied().collect(),
        )
        .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        // One entry per append makes replicas hold different prefixes of one primary's log.
        let max_batch = [1, 3, 16][rng.gen_range(0..3)];
        let timing = Timing { snapshot_wait: ms(1000), max_batch, ..Timing::default() };
        let disk = Disk {
            promised: Ballot::ZERO,
            base: Position::START,
            base_conf: conf,
            entries: BTreeMap::new(),
            applied: Vec::new(),
            applied_index: 0,
        };
        let nodes = ids
            .iter()
            .map(|id| {
                let rank = rng.gen_range(0..3);
                let mut replica = Replica::new(*id, Ballot::ZERO, disk.log(), 0, timing, Duration::ZERO);
                replica.set_rank(rank, Duration::ZERO);
                Node {
                    id: *id,
                    disk: disk.clone(),
                    replica: Some(replica),
                    down_until: Duration::ZERO,
                    paused_until: Duration::ZERO,
                    rank,
                    pending: BTreeMap::new(),
                }
            })
            .collect();
        let drop_rate = [0.0, 0.02, 0.1][rng.gen_range(0..3)];
        let dup_rate = [0.0, 0.05][rng.gen_range(0..2)];
        // Idle stretches let a replica that missed writes win an election.
        let write_rate = [0.3, 0.05, 0.005][rng.gen_range(0..3)];
        Sim {
            rng,
            seed,
            now: Duration::ZERO,
            timing,
            nodes,
            queue: BTreeMap::new(),
            sent: 0,
            cut: BTreeSet::new(),
            drop_rate,
            dup_rate,
            write_rate,
            chosen: BTreeMap::new(),
            acked: BTreeSet::new(),
            next_data: 1,
            faults: true,
            stats: Stats::default(),
            blocked: Box::new(|_, _, _| false),
        }
    }

    fn index_of(&self, id: NodeId) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    fn runs(&self, k: usize) -> bool {
        let node = &self.nodes[k];
        node.replica.is_some() && self.now >= node.paused_until
    }

    fn enqueue(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        let blocked = (self.blocked)(from, to, &payload);
        if blocked || self.cut.contains(&(from, to)) || (self.faults && self.rng.gen_bool(self.drop_rate)) {
            return;
        }
        let delay =
            if self.faults && self.rng.gen_bool(0.05) { self.rng.gen_range(20..300) } else { self.rng.gen_range(1..8) };
        self.sent += 1;
        self.queue.insert((self.now + ms(delay), self.sent), (from, to, payload));
    }

    /// Carries out what node `k`'s replica asked for, until it asks nothing more.
    fn drain(&mut self, k: usize) {
        loop {
            let Some(replica) = self.nodes[k].replica.as_mut() else { return };
            let ready = replica.take_ready();
            if ready.is_empty() {
                return;
            }
            let id = self.nodes[k].id;
            let node = &mut self.nodes[k];
            for write in ready.writes {
                match &write {
                    Write::Truncate(_) => self.stats.truncations += 1,
                    Write::Install(..) => self.stats.snapshots += 1,
                    Write::Append(_, Entry { ballot, kind: Kind::Start }) if ballot.node == id => {
                        self.stats.elections += 1;
                    }
                    _ => {}
                }
                node.disk.write(write);
            }
            let replica = node.replica.as_mut().unwrap();
            let last = replica.log().last();
            replica.persisted(last, self.now);
            if let Some(commit) = ready.commit {
                self.apply(k, commit);
            }
            for (to, message) in ready.messages {
                let copies = if self.faults && self.rng.gen_bool(self.dup_rate) { 2 } else { 1 };
                for _ in 0..copies {
                    self.enqueue(id, to, Payload::Proto(message.clone()));
                }
            }
            for to in ready.snapshots {
                let node = &self.nodes[k];
                let replica = node.replica.as_ref().unwrap();
                let Some(ballot) = replica.leads() else { continue };
                let (base, conf) = replica.snapshot_point(node.disk.applied_index);
                assert_eq!(base.index, node.disk.applied_index, "seed {}: a snapshot is of applied data", self.seed);
                let data = node.disk.applied.clone();
                self.enqueue(id, to, Payload::Snapshot { ballot, base, conf, data, sent: self.now });
            }
        }
    }

    fn apply(&mut self, k: usize, commit: Index) {
        let seed = self.seed;
        let node = &mut self.nodes[k];
        let replica = node.replica.as_ref().unwrap();
        while node.disk.applied_index < commit {
            let index = node.disk.applied_index + 1;
            let entry = replica
                .log()
                .entry(index)
                .unwrap_or_else(|| panic!("seed {seed}: committed entry {index} is in the log"));
            let data = match &entry.kind {
                Kind::Data(d) => Some(*d),
                Kind::Conf(conf) => {
                    self.stats.changes += usize::from(!conf.is_joint() && conf.gen > 1);
                    None
                }
                Kind::Start => None,
            };
            let chosen = *self.chosen.entry(index).or_insert((entry.ballot, data));
            assert_eq!(chosen, (entry.ballot, data), "seed {seed}: two different entries applied at index {index}");
            if let Some(d) = data {
                node.disk.applied.push((index, d));
            }
            node.disk.applied_index = index;
        }
        // Writes proposed here are answered once committed: acknowledged when the entry at
        // their index is still theirs.
        let decided: Vec<Index> = node.pending.range(..=commit).map(|(i, _)| *i).collect();
        for index in decided {
            let (ballot, data) = node.pending.remove(&index).unwrap();
            if self.chosen.get(&index) == Some(&(ballot, Some(data))) {
                self.acked.insert(data);
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        let k = self.index_of(to);
        let now = self.now;
        let Some(replica) = self.nodes[k].replica.as_mut() else { return };
        match payload {
            Payload::Proto(message) => replica.step(from, message, now),
            Payload::Snapshot { ballot, base, conf, data, sent } => {
                if replica.install(from, ballot, base, conf, sent, now) {
                    for (index, d) in &data {
                        assert_eq!(
                            self.chosen.get(index),
                            Some(&(self.chosen[index].0, Some(*d))),
                            "seed {}: snapshot data",
                            self.seed
                        );
                    }
                    let disk = &mut self.nodes[k].disk;
                    disk.applied = data;
                    disk.applied_index = base.index;
                }
            }
        }
        self.drain(k);
    }

    fn crash(&mut self, k: usize, for_ms: u64) {
        let node = &mut self.nodes[k];
        node.replica = None;
        node.pending.clear();
        node.down_until = self.now + ms(for_ms);
    }

    fn restart(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let disk = &node.disk;
        let mut replica = Replica::new(node.id, disk.promised, disk.log(), disk.applied_index, self.timing, self.now);
        replica.set_rank(node.rank, self.now);
        node.replica = Some(replica);
    }

    fn compact(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let Some(replica) = node.replica.as_mut() else { return };
        let upto = node.disk.applied_index.saturating_sub(self.rng.gen_range(0..4));
        if upto <= replica.log().base().index {
            return;
        }
        let (Some(ballot), conf) = (replica.log().ballot_at(upto), replica.log().conf_at(upto).clone()) else { return };
        replica.compact(upto);
        node.disk.base = Position { ballot, index: upto };
        node.disk.base_conf = conf;
        node.disk.entries.retain(|i, _| *i > upto);
    }

    fn fault(&mut self) {
        let n = self.nodes.len();
        let k = self.rng.gen_range(0..n);
        let id = self.nodes[k].id;
        match self.rng.gen_range(0..7) {
            0 if self.nodes[k].replica.is_some() => {
                let for_ms = self.rng.gen_range(10..3000);
                self.crash(k, for_ms);
            }
            1 => {
                // Isolated.
                for other in self.nodes.iter().map(|n| n.id).filter(|o| *o != id).collect::<Vec<_>>() {
                    self.cut.insert((id, other));
                    self.cut.insert((other, id));
                }
            }
            2 => {
                // One link, both ways: a non-transitive partition.
                let other = self.nodes[(k + 1 + self.rng.gen_range(0..n - 1)) % n].id;
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
            3 => self.cut.clear(),
            4 => {
                // Paused (SIGSTOP), past the lease sometimes.
                let for_ms = self.rng.gen_range(100..2500);
                self.nodes[k].paused_until = self.now + ms(for_ms);
            }
            5 if self.nodes[k].replica.is_some() => {
                // The primary hands the slot to another replica.
                let to = self.nodes[self.rng.gen_range(0..n)].id;
                let now = self.now;
                if self.nodes[k].replica.as_mut().unwrap().transfer(to, now).is_ok() {
                    self.stats.transfers += 1;
                }
                self.drain(k);
            }
            _ => {
                let voters = self.nodes.len().min(3);
                if self.nodes[k].replica.is_some() {
                    let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
                    for i in (1..ids.len()).rev() {
                        ids.swap(i, self.rng.gen_range(0..=i));
                    }
                    let (v, l) = ids.split_at(voters);
                    let replica = self.nodes[k].replica.as_mut().unwrap();
                    let _ = replica.change(v.to_vec(), l.to_vec(), self.now);
                    self.drain(k);
                }
            }
        }
    }

    fn step_ms(&mut self) {
        self.now += ms(1);
        let now = self.now;
        for k in 0..self.nodes.len() {
            if self.nodes[k].replica.is_none() && now >= self.nodes[k].down_until {
                self.restart(k);
            }
        }
        while let Some(((at, _), _)) = self.queue.first_key_value() {
            if *at > now {
                break;
            }
            let ((at, seq), (from, to, payload)) = self.queue.pop_first().unwrap();
            let k = self.index_of(to);
            if now < self.nodes[k].paused_until {
                // A paused process reads its socket when it resumes.
                self.queue.insert((self.nodes[k].paused_until, seq), (from, to, payload));
                let _ = at;
                continue;
            }
            self.deliver(from, to, payload);
        }
        if now.as_millis() % 10 == 0 {
            for k in 0..self.nodes.len() {
                if self.runs(k) {
                    self.nodes[k].replica.as_mut().unwrap().tick(now);
                    self.drain(k);
                }
            }
        }
        let leases: Vec<NodeId> = (0..self.nodes.len())
            .filter(|k| self.runs(*k) && self.nodes[*k].replica.as_ref().unwrap().has_lease(now))
            .map(|k| self.nodes[k].id)
            .collect();
        assert!(leases.len() <= 1, "seed {}: two leases at once at {now:?}: {leases:?}", self.seed);
    }

    fn propose(&mut self) {
        let k = self.rng.gen_range(0..self.nodes.len());
        if !self.runs(k) {
            return;
        }
        let data = self.next_data;
        let now = self.now;
        let replica = self.nodes[k].replica.as_mut().unwrap();
        if let (Ok(index), Some(ballot)) = (replica.propose(data, now), replica.leads()) {
            self.next_data += 1;
            self.nodes[k].pending.insert(index, (ballot, data));
            self.drain(k);
        }
    }

    fn run(&mut self, for_ms: u64) {
        for _ in 0..for_ms {
            self.step_ms();
            if self.rng.gen_bool(self.write_rate) {
                self.propose();
            }
            if self.faults && self.rng.gen_bool(0.002) {
                self.fault();
            }
            if self.rng.gen_bool(0.01) {
                let k = self.rng.gen_range(0..self.nodes.len());
                self.compact(k);
            }
        }
    }

    /// Heals everything and runs until one primary serves and every replica applied all of
    /// its log; then checks every acknowledged write.
    fn heal_and_check(&mut self) {
        self.faults = false;
        self.cut.clear();
        self.blocked = Box::new(|_, _, _| false);
        for k in 0..self.nodes.len() {
            self.nodes[k].paused_until = self.now;
            self.nodes[k].down_until = self.now;
        }
        let mut settled = false;
        for _ in 0..60_000 {
            self.step_ms();
            if self.now.as_millis() % 50 == 0 && self.settled() {
                settled = true;
                break;
            }
        }
        assert!(
            settled,
            "seed {}: no primary served with every replica caught up within 60 s of healing:\n{}",
            self.seed,
            self.describe()
        );
        let first = &self.nodes[0].disk.applied;
        for node in &self.nodes {
            assert_eq!(&node.disk.applied, first, "seed {}: replicas applied different data", self.seed);
        }
        let applied: Vec<Data> = first.iter().map(|(_, d)| *d).collect();
        let distinct: BTreeSet<Data> = applied.iter().copied().collect();
        assert_eq!(distinct.len(), applied.len(), "seed {}: a write applied twice", self.seed);
        let lost: Vec<&Data> = self.acked.iter().filter(|d| !distinct.contains(d)).collect();
        assert!(lost.is_empty(), "seed {}: acknowledged writes lost: {lost:?}", self.seed);
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let Some(r) = &node.replica else {
                out += &format!("{}: down\n", node.id);
                continue;
            };
            out += &format!(
                "{}: {:?} lease {} promised {:?} last {:?} base {:?} commit {} applied {} conf {:?}\n",
                node.id,
                r.role(),
                r.has_lease(self.now),
                r.promised(),
                r.log().last(),
                r.log().base(),
                r.commit(),
                node.disk.applied_index,
                r.log().conf()
            );
        }
        out
    }

    fn settled(&mut self) -> bool {
        let Some(primary) = self.nodes.iter().find(|n| n.replica.as_ref().is_some_and(|r| r.has_lease(self.now)))
        else {
            return false;
        };
        let replica = primary.replica.as_ref().unwrap();
        let (commit, last) = (replica.commit(), replica.log().last().index);
        let members = replica.log().conf().members();
        commit == last && self.nodes.iter().filter(|n| members.contains(&n.id)).all(|n| n.disk.applied_index == commit)
    }
}

/// Scripted runs: no random faults, writes or compaction; the script says who stands.
impl Sim {
    fn scripted(members: u64) -> Sim {
        let mut sim = Sim::new(0, members, 3);
        sim.faults = false;
        sim.timing.max_batch = 1;
        let now = sim.now;
        for node in &mut sim.nodes {
            let mut replica = Replica::new(node.id, Ballot::ZERO, node.disk.log(), 0, sim.timing, now);
            // Nobody stands on its own within a script's steps.
            node.rank = 30;
            replica.set_rank(node.rank, now);
            node.replica = Some(replica);
        }
        // Past the lease that started replicas keep quiet for.
        for _ in 0..1100 {
            sim.step_ms();
        }
        sim
    }

    fn replica(&self, id: NodeId) -> &Replica<Data> {
        self.nodes[self.index_of(id)].replica.as_ref().unwrap()
    }

    /// Makes `id` stand once the lease of a primary cut off has passed, and waits up to 5 s
    /// for `done`.
    fn stand(&mut self, id: NodeId, done: impl Fn(&Sim) -> bool) {
        for _ in 0..1100 {
            self.step_ms();
        }
        let k = self.index_of(id);
        let now = self.now;
        self.nodes[k].replica.as_mut().unwrap().stand_now(now);
        self.drain(k);
        self.wait(5000, done);
    }

    fn wait(&mut self, max_ms: u64, done: impl Fn(&Sim) -> bool) {
        for _ in 0..max_ms {
            if done(self) {
                return;
            }
            self.step_ms();
        }
        panic!("the script's state was not reached within {max_ms} ms:\n{}", self.describe());
    }

    fn propose_at(&mut self, id: NodeId) -> Data {
        let k = self.index_of(id);
        let data = self.next_data;
        self.next_data += 1;
        let now = self.now;
        let replica = self.nodes[k].replica.as_mut().unwrap();
        let index = replica.propose(data, now).unwrap();
        let ballot = replica.leads().unwrap();
        self.nodes[k].pending.insert(index, (ballot, data));
        self.drain(k);
        data
    }

    fn block(&mut self, blocked: impl Fn(NodeId, NodeId, &Payload) -> bool + 'static) {
        self.blocked = Box::new(blocked);
    }
}

fn serving(id: NodeId) -> impl Fn(&Sim) -> bool {
    move |sim| sim.replica(id).role() == RoleKind::Primary { serving: true }
}

/// An append that carries its primary's own start entry.
fn carries_start(payload: &Payload) -> bool {
    let Payload::Proto(Message::Append { ballot, entries, .. }) = payload else { return false };
    entries.iter().any(|e| e.kind == Kind::Start && e.ballot == *ballot)
}

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

/// Raft's figure 8: an entry of an earlier primary that a later one copied to a majority is
/// not committed by being counted, since a third primary may still replace it.
#[test]
fn an_earlier_primarys_entry_is_not_committed_by_counting_copies() {
    let mut sim = Sim::scripted(3);
    sim.stand(N1, |sim| sim.nodes.iter().all(|n| n.disk.applied_index == 1));
    // x reaches n1 alone.
    sim.block(|from, _, _| from == N1);
    let x = sim.propose_at(N1);
    sim.wait(20, |_| true);
    // n3 leads with n2's promise; its start entry reaches no one.
    sim.block(|from, to, p| from == N1 || to == N1 || (from == N3 && carries_start(p)));
    sim.stand(N3, |sim| sim.replica(N3).leads().is_some());
    // n1 leads again with n2's promise and copies x to n2, but not its own start entry.
    sim.block(|from, to, p| from == N3 || to == N3 || (from == N1 && carries_start(p)));
    sim.stand(N1, |sim| sim.replica(N2).log().entry(2).is_some_and(|e| e.kind == Kind::Data(x)));
    assert_eq!(sim.replica(N1).commit(), 1, "x is on a majority but not committed");
    // n3 leads again with n2 (its log is the more advanced) and replaces x everywhere.
    sim.block(|from, to, _| from == N1 || to == N1);
    sim.stand(N3, |sim| serving(N3)(sim) && sim.nodes[1].disk.applied_index == sim.replica(N3).commit());
    assert!(!sim.acked.contains(&x));
    sim.heal_and_check();
}

/// A voter that restarts promises nobody for a lease: before it stopped it may have answered
/// a primary, which serves on that answer.
#[test]
fn a_restarted_voter_keeps_the_lease_it_gave() {
    let mut sim = Sim::scripted(3);
    sim.stand(N1, |sim| sim.replica(N1).has_lease(sim.now) && sim.nodes.iter().all(|n| n.disk.applied_index == 1));
    // n2 is cut off from n1; n3 stops hearing n1 and restarts.
    sim.block(|from, to, _| (from == N1 && to != N1) || (to == N1 && from == N2));
    let k3 = sim.index_of(N3);
    sim.crash(k3, 0);
    sim.restart(k3);
    assert!(sim.replica(N1).has_lease(sim.now), "n1 serves on n3's earlier answer");
    // n2 stands while n1's lease lasts: n3 refuses it (two leases at once fail the run).
    let k2 = sim.index_of(N2);
    let now = sim.now;
    sim.nodes[k2].replica.as_mut().unwrap().stand_now(now);
    sim.drain(k2);
    for _ in 0..500 {
        sim.step_ms();
    }
    assert!(sim.replica(N2).leads().is_none(), "n2 got no promise while n1's lease lasted");
    // Later n2 wins, once n1's lease is over.
    sim.stand(N2, serving(N2));
    sim.heal_and_check();
}

/// A primary hands its slot to a caught-up voter: that voter leads at once (no election
/// timeout, no lease to wait out), and the old primary serves no more.
#[test]
fn a_primary_hands_its_slot_to_another_replica_without_two_leases() {
    let mut sim = Sim::scripted(3);
    sim.stand(N1, |sim| sim.replica(N1).has_lease(sim.now) && sim.nodes.iter().all(|n| n.disk.applied_index == 1));
    let x = sim.propose_at(N1);
    sim.wait(100, |sim| sim.acked.contains(&x));
    let now = sim.now;
    let k1 = sim.index_of(N1);
    sim.nodes[k1].replica.as_mut().unwrap().transfer(N3, now).unwrap();
    sim.drain(k1);
    assert!(!sim.replica(N1).has_lease(sim.now), "a primary handing over serves no more");
    // Well within an election timeout: n3 stood on n1's word.
    sim.wait(100, serving(N3));
    let y = sim.propose_at(N3);
    sim.wait(100, |sim| sim.acked.contains(&y));
    sim.heal_and_check();
}

fn seeds() -> u64 {
    std::env::var("TIM_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

fn runs(first_seed: u64, members: u64) -> Stats {
    let mut stats = Stats::default();
    for seed in first_seed..first_seed + seeds() {
        let mut sim = Sim::new(seed, members, 3);
        sim.run(15_000);
        sim.heal_and_check();
        sim.stats.acked = sim.acked.len();
        stats.add(std::mem::take(&mut sim.stats));
    }
    stats
}

#[test]
fn three_voters_keep_every_acknowledged_write_through_faults() {
    runs(0, 3).assert_exercised(false);
}

#[test]
fn voter_changes_among_four_replicas_keep_every_acknowledged_write() {
    runs(1000, 4).assert_exercised(true);
}

/// Among five replicas, a change may swap two voters of three at once: only the joint step
/// keeps the old and the new majorities overlapping.
#[test]
fn voter_changes_among_five_replicas_keep_every_acknowledged_write() {
    runs(2000, 5).assert_exercised(true);
}
