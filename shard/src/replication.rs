//! The replicas this node holds, driven: the protocol of [`crate::replica`] fed with the
//! clock, the frames of other nodes and the writes of the engine, its decisions carried out
//! on the store and the links.
//!
//! One task owns every replica of the node. Each turn it takes what arrived, steps the
//! replicas, and ends with one write of everything they decided (log entries, promises,
//! effects applied) and one frame per peer: the replicas of many slots share each fsync and
//! each frame. Messages that vouch for a write (a promise, an acceptance) leave once it is
//! durable; a primary's appends leave at once, while its own copy is being written.
//!
//! A write of the engine is staged by the store (ids, unique checks, against the applied
//! data) without being written; its effects are the entry the primary proposes. Once a quorum
//! holds the entry, the primary applies it and only then answers: nothing is visible before it
//! commits. A slot has one staged write at a time; the writes that arrive meanwhile are staged
//! together next, after it, so each staging sees every effect before it, and a write sent again
//! (its client id) finds the first attempt, committed, or truly gone.

mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tim_kv::{Applied, Batch, LogWrite, RawEntry, RowId, Slot, SlotDelta, StagedWrite, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::placement::{NodeId, Placement};
use crate::replica::{Ballot, Conf, Index, Kind, Message, Position, Replica, RoleKind, Timing, Write};
use crate::SlotSet;
pub use record::{Effects, Links, RecordError};
use record::{Frame, ReplicaRecord, Snapshot};

/// Why a write or a change was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error("slot {slot} has no serving primary here")]
    NotPrimary { slot: u16 },
    #[error("slot {slot} could not commit in time: its replicas do not answer")]
    Unavailable { slot: u16 },
    #[error("slot {slot} has a replica here already")]
    Exists { slot: u16 },
    #[error("slot {slot}: {reason}")]
    Refused { slot: u16, reason: String },
    #[error("store failed")]
    Store(#[from] StoreError),
    #[error("replication stopped")]
    Closed,
}

/// A slot's replica as others may look at it without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStatus {
    pub role: RoleKind,
    pub promised: Ballot,
    pub commit: Index,
    pub applied: Index,
    /// The configuration in force: its voters (of the set it moves to, while joint) and
    /// learners.
    pub voters: usize,
    pub learners: usize,
    pub joint: bool,
}

/// Sizes and times of the driver.
#[derive(Debug, Clone, Copy)]
pub struct ReplicationConfig {
    pub timing: Timing,
    /// How often the replicas' clocks advance.
    pub tick: Duration,
    /// A write not committed within this is answered as unavailable.
    pub commit_wait: Duration,
    /// Inputs queued for the driver.
    pub queue: usize,
    /// Most writes of one slot staged together.
    pub max_staged: usize,
    /// Largest snapshot sent in one frame.
    pub max_snapshot: usize,
    /// Applied entries a replica keeps in its log for replicas that lag (more lag gets a
    /// snapshot); the log is compacted when it holds twice as many.
    pub keep: Index,
    /// How often the primaries here move their slots' configurations towards the placement.
    pub reconcile_every: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            // Idle replicas are kept by beats (one message per peer for every slot).
            timing: Timing { idle_heartbeat: Duration::from_secs(5), ..Timing::default() },
            tick: Duration::from_millis(20),
            commit_wait: Duration::from_secs(2),
            queue: 16_384,
            max_staged: 512,
            max_snapshot: 15 << 20,
            keep: 1024,
            reconcile_every: Duration::from_millis(500),
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<RowId>, ReplicationError>>;

enum Input {
    Write { batch: Batch, reply: Reply },
    Frame { from: NodeId, frame: Frame },
    Create { slot: Slot, conf: Conf, reply: oneshot::Sender<Result<(), ReplicationError>> },
    Staged { slot: Slot, result: Result<StagedWrite, StoreError>, replies: Vec<Reply> },
    Placement(Arc<Placement>),
}

/// A turn's write, done: what it made durable, and what waited for that.
struct Written {
    result: Result<(), StoreError>,
    persisted: Vec<(Slot, Position)>,
    applied: Vec<(Slot, Index)>,
    messages: Vec<(NodeId, Slot, Message<Effects>)>,
}

/// The replicas of this node.
pub struct Replication {
    inputs: mpsc::Sender<Input>,
    status: Arc<Mutex<HashMap<Slot, SlotStatus>>>,
}

impl Replication {
    /// Loads the replicas the store holds and starts driving them.
    pub fn start(
        me: NodeId,
        store: Arc<dyn Store>,
        links: Arc<dyn Links>,
        config: ReplicationConfig,
    ) -> Result<Self, RecordError> {
        let started = Instant::now();
        let mut slots = HashMap::new();
        for slot in (0..crate::SLOTS).map(Slot) {
            if let Some(loaded) = record::load(&*store, slot)? {
                let machine =
                    Replica::new(me, loaded.promised, loaded.log, loaded.applied, config.timing, Duration::ZERO);
                slots.insert(slot, SlotReplica::new(machine, loaded.applied));
            }
        }
        let (inputs, inputs_rx) = mpsc::channel(config.queue);
        // Room for every turn queued and the one being written: the turn writer never waits
        // for the driver, which may be waiting for it.
        let (turns, turns_rx) = mpsc::channel(TURNS_QUEUED);
        let (written, written_rx) = mpsc::channel(TURNS_QUEUED + 2);
        tokio::spawn(write_turns(Arc::clone(&store), turns_rx, written));
        let status = Arc::new(Mutex::new(HashMap::new()));
        let actor = Actor {
            me,
            store,
            links,
            config,
            started,
            slots,
            inputs: inputs.downgrade(),
            turns,
            outbox: BTreeMap::new(),
            turn: Turn::default(),
            status: Arc::clone(&status),
            dirty: BTreeSet::new(),
            failed: false,
            placement: None,
            placed: Duration::ZERO,
            beaten: Duration::ZERO,
        };
        tokio::spawn(actor.run(inputs_rx, written_rx));
        Ok(Self { inputs, status })
    }

    /// Writes a batch through its slot's replicas: its ids once a quorum holds it and it is
    /// applied here.
    pub async fn write(&self, batch: Batch) -> Result<Vec<RowId>, ReplicationError> {
        let (reply, done) = oneshot::channel();
        self.inputs.send(Input::Write { batch, reply }).await.map_err(|_| ReplicationError::Closed)?;
        done.await.map_err(|_| ReplicationError::Closed)?
    }

    /// Takes a frame from `from`; dropped when the driver is behind (the protocol sends
    /// again).
    pub fn receive(&self, from: NodeId, raw: &[u8]) -> Result<(), postcard::Error> {
        let frame = postcard::from_bytes(raw)?;
        if self.inputs.try_send(Input::Frame { from, frame }).is_err() {
            warn!(from = %from, "a replication frame was dropped: the driver is behind");
        }
        Ok(())
    }

    /// Creates the replica of a slot this node has none of, with its first configuration.
    pub async fn create(&self, slot: Slot, conf: Conf) -> Result<(), ReplicationError> {
        let (reply, done) = oneshot::channel();
        self.inputs.send(Input::Create { slot, conf, reply }).await.map_err(|_| ReplicationError::Closed)?;
        done.await.map_err(|_| ReplicationError::Closed)?
    }

    /// Where the slots' replicas should be: each primary here moves its slot's configuration
    /// towards the slot's preference list (learners first, voters once they caught up, the
    /// list's first as primary).
    pub async fn place(&self, placement: Arc<Placement>) -> Result<(), ReplicationError> {
        self.inputs.send(Input::Placement(placement)).await.map_err(|_| ReplicationError::Closed)
    }

    /// The slot's replica here, as of the driver's last turn.
    pub fn status(&self, slot: Slot) -> Option<SlotStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).get(&slot).copied()
    }
}

/// The write of the engine a slot's primary proposed and has not answered.
struct InFlight {
    index: Index,
    ballot: Ballot,
    replies: Vec<(Reply, Vec<RowId>)>,
    since: Duration,
}

struct SlotReplica {
    machine: Replica<Effects>,
    /// Applied durably.
    applied: Index,
    /// Applied by a write issued.
    applying: Index,
    waiting: VecDeque<(Batch, Reply)>,
    staging: bool,
    in_flight: Option<InFlight>,
    /// The role last published.
    role: RoleKind,
}

impl SlotReplica {
    fn new(machine: Replica<Effects>, applied: Index) -> Self {
        let role = machine.role();
        Self { machine, applied, applying: applied, waiting: VecDeque::new(), staging: false, in_flight: None, role }
    }

    fn status(&self) -> SlotStatus {
        let conf = self.machine.log().conf();
        SlotStatus {
            role: self.machine.role(),
            promised: self.machine.promised(),
            commit: self.machine.commit(),
            applied: self.applied,
            voters: conf.next.as_ref().unwrap_or(&conf.voters).len(),
            learners: conf.learners.len(),
            joint: conf.is_joint(),
        }
    }
}

/// What a turn collects for its one write, and what waits for it.
#[derive(Default)]
struct Turn {
    write: LogWrite,
    persisted: BTreeMap<Slot, Position>,
    applied: BTreeMap<Slot, Index>,
    messages: Vec<(NodeId, Slot, Message<Effects>)>,
}

impl Turn {
    fn is_empty(&self) -> bool {
        self.write == LogWrite::default() && self.messages.is_empty()
    }
}

struct Actor {
    me: NodeId,
    store: Arc<dyn Store>,
    links: Arc<dyn Links>,
    config: ReplicationConfig,
    started: Instant,
    slots: HashMap<Slot, SlotReplica>,
    /// For the tasks that report back; the driver ends when every handle is dropped.
    inputs: mpsc::WeakSender<Input>,
    /// To the task that writes the turns, in order.
    turns: mpsc::Sender<Turn>,
    /// Messages that may leave at the end of the turn.
    outbox: BTreeMap<NodeId, Vec<(Slot, Message<Effects>)>>,
    turn: Turn,
    status: Arc<Mutex<HashMap<Slot, SlotStatus>>>,
    /// Slots whose state changed this turn.
    dirty: BTreeSet<Slot>,
    /// A write of the store failed: the driver stops.
    failed: bool,
    /// Where the replicas should be, and when the primaries here last moved towards it.
    placement: Option<Arc<Placement>>,
    placed: Duration,
    /// When the peers were last told which slots this node leads.
    beaten: Duration,
}

/// Most inputs taken in one turn.
const TURN_INPUTS: usize = 512;

impl Actor {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut written: mpsc::Receiver<Written>) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.handle(input),
                    None => break,
                },
                Some(done) = written.recv() => self.written(done),
                _ = tick.tick() => self.tick(),
            }
            for _ in 0..TURN_INPUTS {
                match written.try_recv() {
                    Ok(done) => self.written(done),
                    Err(_) => break,
                }
            }
            for _ in 0..TURN_INPUTS {
                match inputs.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            if self.failed {
                break;
            }
            self.end_turn().await;
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Write { batch, reply } => self.write(batch, reply),
            Input::Frame { from, frame } => self.frame(from, frame),
            Input::Create { slot, conf, reply } => {
                let _ = reply.send(self.create(slot, conf));
            }
            Input::Staged { slot, result, replies } => self.staged(slot, result, replies),
            Input::Placement(placement) => {
                self.placement = Some(placement);
                self.reconcile_all();
            }
        }
    }

    /// Moves the configuration of every slot served here one step towards its placement.
    fn reconcile_all(&mut self) {
        self.placed = self.now();
        let Some(placement) = self.placement.clone() else { return };
        let serving: Vec<Slot> = self
            .slots
            .iter()
            .filter(|(_, r)| r.machine.role() == RoleKind::Primary { serving: true })
            .map(|(s, _)| *s)
            .collect();
        for slot in serving {
            self.reconcile(slot, placement.preference(slot));
            self.after_step(slot);
        }
    }

    /// One step towards `target` (voters, the primary first), when no change is under way:
    /// missing replicas are added as learners; once they caught up, the voters change
    /// (through a joint configuration); learners no longer wanted are dropped; last, the slot
    /// is handed to the list's first when that one is caught up. A step refused (a change
    /// under way, a replica still catching up) is tried again next round.
    fn reconcile(&mut self, slot: Slot, target: &[NodeId]) {
        let now = self.now();
        let Some(replica) = self.slots.get_mut(&slot) else { return };
        let machine = &mut replica.machine;
        let Some(first) = target.first().copied() else { return };
        let conf = machine.log().conf().clone();
        let mut voters = target.to_vec();
        voters.sort_unstable();
        if conf.voters != voters {
            let missing: Vec<NodeId> = voters.iter().filter(|n| !conf.voters.contains(n)).copied().collect();
            if missing.iter().all(|n| conf.learners.contains(n)) {
                let learners = conf.learners.iter().filter(|n| !voters.contains(n)).copied().collect();
                let _ = machine.change(voters, learners, now);
            } else {
                let mut learners = conf.learners.clone();
                learners.extend(missing);
                let _ = machine.change(conf.voters.clone(), learners, now);
            }
        } else if !conf.learners.is_empty() {
            let _ = machine.change(voters, Vec::new(), now);
        } else if first != self.me && machine.is_caught_up(first, now) {
            let _ = machine.transfer(first, now);
        }
    }

    fn create(&mut self, slot: Slot, conf: Conf) -> Result<(), ReplicationError> {
        if self.slots.contains_key(&slot) {
            return Err(ReplicationError::Exists { slot: slot.0 });
        }
        let log = crate::replica::Log::new(Position::START, conf.clone());
        let machine = Replica::new(self.me, Ballot::ZERO, log, 0, self.config.timing, self.now());
        let record = ReplicaRecord { promised: Ballot::ZERO, base: Position::START, base_conf: conf };
        let record = record::record(slot, &record)
            .map_err(|e| ReplicationError::Refused { slot: slot.0, reason: e.to_string() })?;
        self.turn.write.local.push(record);
        self.slots.insert(slot, SlotReplica::new(machine, 0));
        self.after_step(slot);
        Ok(())
    }

    fn tick(&mut self) {
        let now = self.now();
        if now.saturating_sub(self.placed) >= self.config.reconcile_every {
            self.reconcile_all();
        }
        if now.saturating_sub(self.beaten) >= self.config.timing.heartbeat {
            self.beat(now);
        }
        let slots: Vec<Slot> = self.slots.keys().copied().collect();
        for slot in slots {
            let Some(replica) = self.slots.get_mut(&slot) else { continue };
            let busy = replica.in_flight.is_some() || !replica.waiting.is_empty();
            if !busy && !replica.machine.is_due(now) {
                continue;
            }
            replica.machine.tick(now);
            if !busy && !replica.machine.has_ready() && replica.machine.role() == replica.role {
                continue;
            }
            // Writes that did not commit in time are answered: the client sends them again.
            if let Some(in_flight) = &mut replica.in_flight {
                if now.saturating_sub(in_flight.since) > self.config.commit_wait && !in_flight.replies.is_empty() {
                    for (reply, _) in in_flight.replies.drain(..) {
                        let _ = reply.send(Err(ReplicationError::Unavailable { slot: slot.0 }));
                    }
                }
            }
            self.after_step(slot);
        }
    }

    fn write(&mut self, batch: Batch, reply: Reply) {
        let slot = batch.slot();
        let now = self.now();
        match self.slots.get_mut(&slot) {
            Some(replica) if replica.machine.has_lease(now) => {
                if replica.waiting.len() >= self.config.queue {
                    let _ = reply.send(Err(ReplicationError::Unavailable { slot: slot.0 }));
                    return;
                }
                replica.waiting.push_back((batch, reply));
                self.stage_next(slot);
            }
            _ => {
                let _ = reply.send(Err(ReplicationError::NotPrimary { slot: slot.0 }));
            }
        }
    }

    /// Stages the slot's waiting writes when nothing of it is staged or in flight.
    fn stage_next(&mut self, slot: Slot) {
        let max = self.config.max_staged;
        let Some(replica) = self.slots.get_mut(&slot) else { return };
        if replica.staging || replica.in_flight.is_some() || replica.waiting.is_empty() {
            return;
        }
        let take = replica.waiting.len().min(max);
        let (batches, replies): (Vec<Batch>, Vec<Reply>) = replica.waiting.drain(..take).unzip();
        replica.staging = true;
        let (store, inputs) = (Arc::clone(&self.store), self.inputs.clone());
        tokio::spawn(async move {
            let result = store.stage(batches).await;
            if let Some(inputs) = inputs.upgrade() {
                let _ = inputs.send(Input::Staged { slot, result, replies }).await;
            }
        });
    }

    fn staged(&mut self, slot: Slot, result: Result<StagedWrite, StoreError>, replies: Vec<Reply>) {
        let now = self.now();
        let Some(replica) = self.slots.get_mut(&slot) else { return };
        replica.staging = false;
        let staged = match result {
            Ok(staged) => staged,
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone().into()));
                }
                return self.stage_next(slot);
            }
        };
        let mut done = Vec::new();
        for (reply, result) in replies.into_iter().zip(staged.results) {
            match result {
                Ok(ids) => done.push((reply, ids)),
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            }
        }
        if staged.delta.is_empty() {
            for (reply, ids) in done {
                let _ = reply.send(Ok(ids));
            }
            return self.stage_next(slot);
        }
        let ballot = replica.machine.leads();
        match (replica.machine.propose(staged.delta, now), ballot) {
            (Ok(index), Some(ballot)) => {
                replica.in_flight = Some(InFlight { index, ballot, replies: done, since: now });
            }
            _ => {
                for (reply, _) in done {
                    let _ = reply.send(Err(ReplicationError::NotPrimary { slot: slot.0 }));
                }
                self.turn.write.forgotten.push(slot);
            }
        }
        self.after_step(slot);
    }

    fn frame(&mut self, from: NodeId, frame: Frame) {
        let now = self.now();
        match frame {
            Frame::Messages(messages) => {
                for (slot, message) in messages {
                    if slot.0 >= crate::SLOTS {
                        warn!(from = %from, slot = slot.0, "a replication message for a slot past the cluster's: dropped");
                        continue;
                    }
                    let Some(replica) = self.slots.get_mut(&slot) else {
                        // A replica this node does not hold yet: it is made on the first
                        // append of a primary that counts it as a member, empty (a snapshot
                        // follows).
                        if let Message::Append { .. } = message {
                            self.join(slot, from, message, now);
                        }
                        continue;
                    };
                    replica.machine.step(from, message, now);
                    self.after_step(slot);
                }
            }
            Frame::Snapshot(snapshot) => self.install(from, *snapshot, now),
            Frame::Beat { sent, slots } => {
                let mut following = SlotSet::default();
                for slot in SlotSet::from_words(&slots).iter() {
                    if self.slots.get_mut(&slot).is_some_and(|r| r.machine.heard(from, now)) {
                        following.put(slot, true);
                    }
                }
                self.send(to_frame(from, Frame::BeatAck { sent, slots: following.to_words() }));
            }
            Frame::BeatAck { sent, slots } => {
                for slot in SlotSet::from_words(&slots).iter() {
                    if let Some(replica) = self.slots.get_mut(&slot) {
                        replica.machine.answered(from, sent);
                    }
                }
            }
        }
    }

    /// Tells each peer, in one message, which slots this node leads for it: the peer's
    /// replicas go on hearing their primary, and their answers keep the primaries' leases.
    fn beat(&mut self, now: Duration) {
        self.beaten = now;
        let mut beats: BTreeMap<NodeId, SlotSet> = BTreeMap::new();
        for (slot, replica) in &self.slots {
            if replica.machine.leads().is_none() {
                continue;
            }
            for peer in replica.machine.log().conf().members().into_iter().filter(|n| *n != self.me) {
                beats.entry(peer).or_default().put(*slot, true);
            }
        }
        for (peer, slots) in beats {
            self.send(to_frame(peer, Frame::Beat { sent: now, slots: slots.to_words() }));
        }
    }

    fn send(&self, frame: Option<(NodeId, Bytes)>) {
        if let Some((to, raw)) = frame {
            self.links.send(to, raw);
        }
    }

    /// Takes the first append of a slot this node holds nothing of: a learner with an empty
    /// log, which asks for a snapshot.
    fn join(&mut self, slot: Slot, from: NodeId, message: Message<Effects>, now: Duration) {
        let conf = Conf { gen: 0, voters: Vec::new(), next: None, learners: vec![self.me] };
        let log = crate::replica::Log::new(Position::START, conf);
        let mut machine = Replica::new(self.me, Ballot::ZERO, log, 0, self.config.timing, now);
        machine.step(from, message, now);
        self.slots.insert(slot, SlotReplica::new(machine, 0));
        self.after_step(slot);
    }

    fn install(&mut self, from: NodeId, snapshot: Snapshot, now: Duration) {
        let Snapshot { slot, ballot, base, conf, data, sent } = snapshot;
        let Some(replica) = self.slots.get_mut(&slot) else { return };
        if !replica.machine.install(from, ballot, base, conf, sent, now) {
            return self.after_step(slot);
        }
        // The log starts over at the snapshot: what this turn wrote of it before is void.
        let turn = &mut self.turn;
        turn.write.appended.retain(|(s, _, _)| *s != slot);
        turn.write.applied.retain(|a| a.slot != slot);
        turn.write.truncated.push((slot, 0));
        turn.write.applied.push(Applied {
            slot,
            delta: SlotDelta { entries: data, removed: Vec::new() },
            staged_here: false,
            replaces: true,
        });
        turn.write.local.push(record::applied(slot, base.index));
        turn.applied.insert(slot, base.index);
        replica.applied = base.index;
        replica.applying = base.index;
        self.after_step(slot);
    }

    /// Carries out what the slot's replica decided: its writes into the turn's write, its
    /// messages out (now, or once the write is durable), its commits applied, its snapshots
    /// sent; and answers the engine's writes that can be answered.
    fn after_step(&mut self, slot: Slot) {
        let now = self.now();
        let Some(replica) = self.slots.get_mut(&slot) else { return };
        self.dirty.insert(slot);
        replica.role = replica.machine.role();
        // Entries applied durably and kept long enough are dropped from the log.
        let (base, keep) = (replica.machine.log().base().index, self.config.keep);
        let compact = replica.applied > base + 2 * keep;
        if compact {
            replica.machine.compact(replica.applied - keep);
            self.turn.write.compacted.push((slot, replica.applied - keep));
        }
        let ready = replica.machine.take_ready();
        let mut record_changed = compact;
        for write in ready.writes {
            match write {
                Write::Promise(_) | Write::Install(..) => record_changed = true,
                Write::Truncate(from) => self.turn.write.truncated.push((slot, from)),
                Write::Append(index, entry) => match record::encode_entry(slot, index, &entry) {
                    Ok(raw) => {
                        self.turn.write.appended.push((slot, index, raw));
                        let position = Position { ballot: entry.ballot, index };
                        self.turn.persisted.insert(slot, position);
                    }
                    Err(e) => error!(error = %e, "a log entry does not encode"),
                },
            }
        }
        if record_changed {
            let log = replica.machine.log();
            let record = ReplicaRecord {
                promised: replica.machine.promised(),
                base: log.base(),
                base_conf: log.base_conf().clone(),
            };
            match record::record(slot, &record) {
                Ok(record) => self.turn.write.local.push(record),
                Err(e) => error!(error = %e, "a replica record does not encode"),
            }
        }
        for (to, message) in ready.messages {
            if message.needs_durable_writes() {
                self.turn.messages.push((to, slot, message));
            } else {
                self.outbox.entry(to).or_default().push((slot, message));
            }
        }
        // Committed entries are applied (after their own appends, in the same write or an
        // earlier one).
        let commit = replica.machine.commit();
        if commit > replica.applying {
            let log = replica.machine.log();
            let in_flight = replica.in_flight.as_ref().map(|f| f.index);
            for index in replica.applying + 1..=commit {
                match log.entry(index).map(|e| &e.kind) {
                    Some(Kind::Data(delta)) => self.turn.write.applied.push(Applied {
                        slot,
                        delta: delta.clone(),
                        staged_here: in_flight == Some(index),
                        replaces: false,
                    }),
                    Some(_) => {}
                    None => break,
                }
                replica.applying = index;
            }
            self.turn.write.local.push(record::applied(slot, replica.applying));
            self.turn.applied.insert(slot, replica.applying);
        }
        // A primary that lost its ballot gives up its write in flight.
        if let Some(in_flight) = &replica.in_flight {
            if replica.machine.leads() != Some(in_flight.ballot) && in_flight.index > replica.applying {
                if let Some(in_flight) = replica.in_flight.take() {
                    for (reply, _) in in_flight.replies {
                        let _ = reply.send(Err(ReplicationError::Unavailable { slot: slot.0 }));
                    }
                }
                self.turn.write.forgotten.push(slot);
            }
        }
        if !replica.machine.has_lease(now) && !matches!(replica.machine.role(), RoleKind::Primary { .. }) {
            for (_, reply) in replica.waiting.drain(..) {
                let _ = reply.send(Err(ReplicationError::NotPrimary { slot: slot.0 }));
            }
        }
        let dropped = replica.machine.is_dropped() && replica.machine.leads().is_none();
        for to in ready.snapshots {
            self.send_snapshot(slot, to, now);
        }
        if dropped {
            self.drop_replica(slot);
        }
    }

    /// Removes the replica of a slot whose configuration no longer has it: its data, log and
    /// records, in this turn's write.
    fn drop_replica(&mut self, slot: Slot) {
        let Some(replica) = self.slots.remove(&slot) else { return };
        for (_, reply) in replica.waiting {
            let _ = reply.send(Err(ReplicationError::NotPrimary { slot: slot.0 }));
        }
        let write = &mut self.turn.write;
        write.appended.retain(|(s, _, _)| *s != slot);
        write.applied.retain(|a| a.slot != slot);
        write.truncated.push((slot, 0));
        write.applied.push(Applied { slot, delta: SlotDelta::default(), staged_here: false, replaces: true });
        write.local.push((record::record_name(slot), None));
        write.local.push((record::applied_name(slot), None));
        self.turn.persisted.remove(&slot);
        self.turn.applied.remove(&slot);
        self.dirty.insert(slot);
        tracing::info!(slot = slot.0, "this node's replica of the slot was removed from its configuration: dropped");
    }

    fn send_snapshot(&mut self, slot: Slot, to: NodeId, now: Duration) {
        let Some(replica) = self.slots.get(&slot) else { return };
        let Some(ballot) = replica.machine.leads() else { return };
        let (base, conf) = replica.machine.snapshot_point(replica.applied);
        let (store, links, max) = (Arc::clone(&self.store), Arc::clone(&self.links), self.config.max_snapshot);
        // The data may be ahead of `base` when it is read: replaying the entries after `base`
        // on it ends in the same state, since an entry's effects are the values its keys take.
        tokio::task::spawn_blocking(move || {
            let mut data: Vec<RawEntry> = Vec::new();
            let mut size = 0;
            let read = store.export_slot(slot, 1 << 20, &mut |part| {
                size += part.iter().map(|e| e.key.len() + e.value.len()).sum::<usize>();
                data.extend(part);
                size <= max
            });
            if let Err(e) = read {
                return warn!(slot = slot.0, error = %e, "a snapshot of the slot could not be read");
            }
            if size > max {
                return warn!(slot = slot.0, size, "the slot is too large for a snapshot in one frame");
            }
            let frame = Frame::Snapshot(Box::new(Snapshot { slot, ballot, base, conf, data, sent: now }));
            match postcard::to_stdvec(&frame) {
                Ok(raw) => links.send(to, Bytes::from(raw)),
                Err(e) => warn!(slot = slot.0, error = %e, "a snapshot does not encode"),
            }
        });
    }

    /// Ends a turn: sends what may leave now, issues the turn's write, and publishes the
    /// replicas' states.
    async fn end_turn(&mut self) {
        for (to, messages) in std::mem::take(&mut self.outbox) {
            self.send_frame(to, messages);
        }
        let turn = std::mem::take(&mut self.turn);
        // The turn writer stops only when the driver does.
        if !turn.is_empty() && self.turns.send(turn).await.is_err() {
            self.failed = true;
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        for slot in std::mem::take(&mut self.dirty) {
            match self.slots.get(&slot) {
                Some(replica) => status.insert(slot, replica.status()),
                None => status.remove(&slot),
            };
        }
    }

    fn send_frame(&self, to: NodeId, messages: Vec<(Slot, Message<Effects>)>) {
        self.send(to_frame(to, Frame::Messages(messages)));
    }

    fn written(&mut self, written: Written) {
        let now = self.now();
        if let Err(e) = &written.result {
            // What the replicas decided is not durable: they must not act on it. A store that
            // fails writes fails the node's replicas; the writes waiting get `Closed`.
            error!(error = %tim_net::report::ErrorChain(e), "a replication write failed: replication stops on this node");
            self.failed = true;
            return;
        }
        let mut out: BTreeMap<NodeId, Vec<(Slot, Message<Effects>)>> = BTreeMap::new();
        for (to, slot, message) in written.messages {
            out.entry(to).or_default().push((slot, message));
        }
        for (to, messages) in out {
            self.send_frame(to, messages);
        }
        for (slot, position) in written.persisted {
            if let Some(replica) = self.slots.get_mut(&slot) {
                replica.machine.persisted(position, now);
            }
            self.after_step(slot);
        }
        for (slot, index) in written.applied {
            let Some(replica) = self.slots.get_mut(&slot) else { continue };
            replica.applied = replica.applied.max(index);
            if replica.in_flight.as_ref().is_some_and(|f| f.index <= replica.applied) {
                if let Some(in_flight) = replica.in_flight.take() {
                    for (reply, ids) in in_flight.replies {
                        let _ = reply.send(Ok(ids));
                    }
                }
            }
            self.stage_next(slot);
        }
    }
}

/// A frame for `to`, encoded; `None` (logged) when it does not encode.
fn to_frame(to: NodeId, frame: Frame) -> Option<(NodeId, Bytes)> {
    match postcard::to_stdvec(&frame) {
        Ok(raw) => Some((to, Bytes::from(raw))),
        Err(e) => {
            error!(to = %to, error = %e, "a replication frame does not encode");
            None
        }
    }
}

/// Turns written at once, at most, before the driver waits for the store.
const TURNS_QUEUED: usize = 16;

/// Writes the turns one after the other, each once the one before is durable: a turn's
/// messages may vouch for what an earlier turn wrote (an acceptance covers every entry up to
/// an index), and a turn may apply an entry an earlier one appended.
async fn write_turns(store: Arc<dyn Store>, mut turns: mpsc::Receiver<Turn>, written: mpsc::Sender<Written>) {
    while let Some(turn) = turns.recv().await {
        let Turn { write, persisted, applied, messages } = turn;
        let result = if write == LogWrite::default() { Ok(()) } else { store.write_log(write).await.map(drop) };
        let done = Written {
            result,
            persisted: persisted.into_iter().collect(),
            applied: applied.into_iter().collect(),
            messages,
        };
        if written.send(done).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests;
