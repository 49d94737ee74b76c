//! One replica of one slot: the protocol's decisions, without IO.
//!
//! Each input (a tick of the clock, a message, a proposal, a durable write) changes the
//! state and collects, in a [`Ready`], what the driver must write, send and apply. The
//! driver makes the writes durable before it sends what vouches for them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tracing::error;

use super::ballot::{Ballot, Index, Position};
use super::conf::{Conf, ConfError};
use super::log::{Entry, Kind, Log};
use super::message::{Ask, Message, Ready, Write};
use crate::placement::NodeId;

/// How long things take.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A primary sends to each replica it has something for (entries, a commit index, a
    /// resend) at least this often.
    pub heartbeat: Duration,
    /// A primary sends an empty append to a replica it has nothing for this often. A driver
    /// that refreshes leases for many slots at once ([`Replica::heard`], [`Replica::answered`])
    /// sets it long; without one it equals `heartbeat`.
    pub idle_heartbeat: Duration,
    /// A voter promises no new ballot for this long after it heard its primary; the primary
    /// serves for this long, less `margin`, after a quorum answered what it sent.
    pub lease: Duration,
    /// Slack for clocks that run at slightly different rates.
    pub margin: Duration,
    /// A voter stands when it has heard no primary for this long, plus `rank_step` per rank.
    pub election: Duration,
    pub rank_step: Duration,
    /// A primary that heard no quorum for this long steps down.
    pub step_down: Duration,
    /// A snapshot asked for and not answered is asked for again after this long.
    pub snapshot_wait: Duration,
    /// Most entries per append.
    pub max_batch: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(250),
            idle_heartbeat: Duration::from_millis(250),
            lease: Duration::from_millis(1000),
            margin: Duration::from_millis(100),
            election: Duration::from_millis(1500),
            rank_step: Duration::from_millis(300),
            step_down: Duration::from_millis(2000),
            snapshot_wait: Duration::from_secs(30),
            max_batch: 256,
        }
    }
}

/// The replica's part now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    Follower,
    Candidate,
    /// `serving` once its start entry is committed.
    Primary {
        serving: bool,
    },
}

/// Why a proposal or a configuration change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the serving primary of the slot")]
    NotServing,
    #[error("a configuration change is under way")]
    ChangeUnderWay,
    #[error("replica {0} has not caught up: it cannot vote yet")]
    NotCaughtUp(NodeId),
    #[error("invalid configuration")]
    Conf(#[from] ConfError),
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    /// The next entry to send (pipelined: may run ahead of what was answered).
    next: Index,
    /// Known held durably.
    matched: Index,
    /// The send time of the newest append it answered.
    answered: Option<Duration>,
    last_send: Option<Duration>,
    /// The commit index last sent to it.
    told: Index,
    /// When a snapshot was asked for, until the replica answers.
    snapshot: Option<Duration>,
}

#[derive(Debug)]
struct Lead {
    ballot: Ballot,
    /// The index of its start entry.
    start: Index,
    serving: bool,
    peers: BTreeMap<NodeId, Peer>,
    /// When it became primary: it counts as heard from a quorum then.
    since: Duration,
    /// The replica it hands the slot to, since when, and whether it was told to stand.
    handing: Option<(NodeId, Duration, bool)>,
}

#[derive(Debug)]
enum Role {
    Follower {
        primary: Option<NodeId>,
        heard: Option<Duration>,
    },
    /// Probing whether a quorum would promise, then asking for the promises.
    Candidate {
        ballot: Ballot,
        probe: bool,
        promises: BTreeSet<NodeId>,
    },
    Primary(Lead),
}

/// One replica of a slot.
pub struct Replica<P> {
    me: NodeId,
    timing: Timing,
    /// Never lowered; written before anything that relies on it is sent.
    promised: Ballot,
    log: Log<P>,
    /// The last index written durably here.
    durable: Index,
    commit: Index,
    role: Role,
    /// This replica's place among the slot's voters for standing: 0 stands first.
    rank: u32,
    /// A follower stands then; a candidate gives up then; a primary looks at its timers then.
    wake: Duration,
    /// The highest ballot seen anywhere: a new one is chosen above it.
    seen: Ballot,
    /// No promise before then: a replica that restarted may have heard a primary within the
    /// lease before it stopped, and that primary counts on it.
    quiet_until: Duration,
    ready: Ready<P>,
}

impl<P: Clone> Replica<P> {
    /// A replica with its durable state: the promise and the log, everything of which is
    /// durable, committed at least up to `commit` (what it applied).
    pub fn new(me: NodeId, promised: Ballot, log: Log<P>, commit: Index, timing: Timing, now: Duration) -> Self {
        let durable = log.last().index;
        let commit = commit.clamp(log.base().index, durable);
        let seen = promised.max(log.last().ballot);
        let mut replica = Self {
            me,
            timing,
            promised,
            log,
            durable,
            commit,
            role: Role::Follower { primary: None, heard: None },
            rank: 0,
            wake: now,
            seen,
            quiet_until: now + timing.lease,
            ready: Ready::default(),
        };
        replica.wake = replica.stand_time(now);
        replica
    }

    pub fn log(&self) -> &Log<P> {
        &self.log
    }

    pub fn promised(&self) -> Ballot {
        self.promised
    }

    pub fn commit(&self) -> Index {
        self.commit
    }

    pub fn role(&self) -> RoleKind {
        match &self.role {
            Role::Follower { .. } => RoleKind::Follower,
            Role::Candidate { .. } => RoleKind::Candidate,
            Role::Primary(lead) => RoleKind::Primary { serving: lead.serving },
        }
    }

    /// The ballot it leads at, when primary.
    pub fn leads(&self) -> Option<Ballot> {
        match &self.role {
            Role::Primary(lead) => Some(lead.ballot),
            _ => None,
        }
    }

    /// Sets the replica's place among the voters for standing (0 first); a follower's wait
    /// starts again.
    pub fn set_rank(&mut self, rank: u32, now: Duration) {
        self.rank = rank;
        if matches!(self.role, Role::Follower { .. }) {
            self.wake = self.stand_time(now);
        }
    }

    /// Whether it may answer reads and accept writes now: the serving primary, within the
    /// lease a quorum of voters gave it by answering.
    pub fn has_lease(&self, now: Duration) -> bool {
        match &self.role {
            Role::Primary(lead) if lead.serving => self
                .quorum_heard(lead, now)
                .is_some_and(|at| now < at + self.timing.lease.saturating_sub(self.timing.margin)),
            _ => false,
        }
    }

    /// Whether `node` holds this primary's whole log and answered within a lease: the replica
    /// a slot may be handed to, or that may vote.
    pub fn is_caught_up(&self, node: NodeId, now: Duration) -> bool {
        let Role::Primary(lead) = &self.role else { return false };
        lead.peers.get(&node).is_some_and(|p| {
            p.matched == self.log.last().index
                && p.answered.is_some_and(|at| now.saturating_sub(at) < self.timing.lease)
        })
    }

    /// Whether this replica is out of its slot: the configuration in force, committed, counts
    /// it neither as a voter nor as a learner. Its state may be removed.
    pub fn is_dropped(&self) -> bool {
        !self.log.conf().members().contains(&self.me) && self.log.conf_index() <= self.commit
    }

    /// Whether the last steps asked for anything.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Records that `from` was heard as this replica's primary, by a message that stands for
    /// many slots' appends: whether it is this replica's primary (then its lease goes on).
    pub fn heard(&mut self, from: NodeId, now: Duration) -> bool {
        let Role::Follower { primary: Some(primary), heard } = &mut self.role else { return false };
        if *primary != from {
            return false;
        }
        *heard = Some(now);
        self.wake = now + self.timing.election + self.timing.rank_step * self.rank;
        true
    }

    /// Records that `peer` answered, as this primary's follower, a message sent at `sent`
    /// that stands for many slots' appends ([`Replica::heard`] on its side).
    pub fn answered(&mut self, peer: NodeId, sent: Duration) {
        if let Role::Primary(lead) = &mut self.role {
            if let Some(p) = lead.peers.get_mut(&peer) {
                p.answered = p.answered.max(Some(sent));
            }
        }
    }

    /// What the last steps asked for.
    pub fn take_ready(&mut self) -> Ready<P> {
        std::mem::take(&mut self.ready)
    }

    /// The position and configuration a snapshot of the data applied up to `applied` stands
    /// for (applied data is committed, and not below the base).
    pub fn snapshot_point(&self, applied: Index) -> (Position, Conf) {
        let at = applied.clamp(self.log.base().index, self.commit);
        let ballot = self.log.ballot_at(at).unwrap_or(self.log.base().ballot);
        (Position { ballot, index: at }, self.log.conf_at(at).clone())
    }

    /// Drops the log up to `index`, which must be applied here.
    pub fn compact(&mut self, index: Index) {
        self.log.compact(index.min(self.commit));
    }

    fn stand_time(&self, now: Duration) -> Duration {
        now + self.timing.election + self.timing.rank_step * self.rank
    }

    fn send(&mut self, to: NodeId, message: Message<P>) {
        self.ready.messages.push((to, message));
    }

    /// Tells `to` its ballot is refused, with this replica's promise and the end of its log.
    fn refuse(&mut self, to: NodeId, ballot: Ballot) {
        let (promised, last) = (self.promised, self.log.last());
        self.send(to, Message::Refuse { ballot, promised, last });
    }

    fn promise(&mut self, ballot: Ballot) {
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.writes.push(Write::Promise(ballot));
        }
        self.seen = self.seen.max(ballot);
    }

    fn follow(&mut self, primary: Option<NodeId>, now: Duration) {
        let heard = primary.map(|_| now);
        self.role = Role::Follower { primary, heard };
        self.wake = self.stand_time(now);
    }

    fn set_commit(&mut self, commit: Index) {
        let commit = commit.min(self.log.last().index);
        if commit > self.commit {
            self.commit = commit;
            self.ready.commit = Some(commit);
        }
    }

    /// Stands for election at once, rather than when no primary was heard for a while (the
    /// voters still refuse it while they hear a live primary).
    pub fn stand_now(&mut self, now: Duration) {
        if !matches!(self.role, Role::Primary(_)) {
            self.stand(now);
        }
    }

    /// Advances the clock: a follower that heard no primary stands, a candidate gives up, a
    /// primary sends what is due and steps down when no quorum answers.
    pub fn tick(&mut self, now: Duration) {
        match &self.role {
            Role::Follower { .. } if now >= self.wake => self.stand(now),
            Role::Candidate { .. } if now >= self.wake => {
                self.follow(None, now);
                self.wake = now + self.timing.election / 2 + self.timing.rank_step * self.rank;
            }
            Role::Primary(lead) => {
                let heard = self.quorum_heard(lead, now).unwrap_or(lead.since);
                let handing_failed =
                    lead.handing.is_some_and(|(_, since, _)| now.saturating_sub(since) > self.timing.election);
                if now.saturating_sub(heard) > self.timing.step_down || handing_failed {
                    self.follow(None, now);
                    return;
                }
                let (last, commit) = (self.log.last().index, self.commit);
                let due: Vec<NodeId> = lead
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        let every = if p.matched < last || p.told < commit {
                            self.timing.heartbeat
                        } else {
                            self.timing.idle_heartbeat
                        };
                        p.last_send.is_none_or(|at| now.saturating_sub(at) >= every)
                    })
                    .map(|(n, _)| *n)
                    .collect();
                let wait = self.timing.snapshot_wait;
                for node in due {
                    if let Role::Primary(lead) = &mut self.role {
                        let Some(peer) = lead.peers.get_mut(&node) else { continue };
                        if peer.snapshot.is_some_and(|at| now.saturating_sub(at) < wait) {
                            continue;
                        }
                        // Unanswered appends may be lost: send again from what it holds.
                        peer.next = peer.matched + 1;
                        peer.snapshot = None;
                    }
                    self.send_append(node, now);
                }
                self.wake = now + self.timing.heartbeat / 4;
            }
            _ => {}
        }
    }

    /// Whether a tick would do anything now: drivers of many replicas tick only those.
    pub fn is_due(&self, now: Duration) -> bool {
        now >= self.wake
    }

    /// The newest send time that a quorum of voters (this one counted as now) answered.
    fn quorum_heard(&self, lead: &Lead, now: Duration) -> Option<Duration> {
        let reached = self.log.conf().quorum_value(|n| {
            if n == self.me {
                now.as_micros() as u64
            } else {
                lead.peers.get(&n).and_then(|p| p.answered).map_or(0, |t| t.as_micros() as u64)
            }
        });
        (reached > 0).then(|| Duration::from_micros(reached))
    }

    fn stand(&mut self, now: Duration) {
        let conf = self.log.conf().clone();
        if !conf.is_voter(self.me) {
            self.wake = self.stand_time(now);
            return;
        }
        let ballot = Ballot::above(self.seen.max(self.promised).max(self.log.last().ballot), self.me);
        self.role = Role::Candidate { ballot, probe: true, promises: BTreeSet::from([self.me]) };
        self.wake = now + self.timing.election;
        self.ask(ballot, Ask::Probe);
        self.count_promises(now);
    }

    /// Stands at once for the promises, handed the slot by its primary.
    fn stand_handed(&mut self, now: Duration) {
        if !self.log.conf().is_voter(self.me) {
            return;
        }
        let ballot = Ballot::above(self.seen.max(self.promised).max(self.log.last().ballot), self.me);
        self.promise(ballot);
        self.role = Role::Candidate { ballot, probe: false, promises: BTreeSet::from([self.me]) };
        self.wake = now + self.timing.election;
        self.ask(ballot, Ask::Transfer);
        self.count_promises(now);
    }

    fn ask(&mut self, ballot: Ballot, ask: Ask) {
        let conf = self.log.conf().clone();
        let last = self.log.last();
        let me = self.me;
        for voter in conf.members().into_iter().filter(|n| *n != me && conf.is_voter(*n)) {
            self.send(voter, Message::Prepare { ballot, last, ask });
        }
    }

    /// With a quorum of probes, asks for the promises (promising itself first); with a
    /// quorum of promises, leads.
    fn count_promises(&mut self, now: Duration) {
        let Role::Candidate { ballot, probe, promises } = &self.role else { return };
        if !self.log.conf().is_quorum(|n| promises.contains(&n)) {
            return;
        }
        let (ballot, probe) = (*ballot, *probe);
        if probe {
            if ballot <= self.promised {
                return self.follow(None, now);
            }
            self.promise(ballot);
            self.role = Role::Candidate { ballot, probe: false, promises: BTreeSet::from([self.me]) };
            self.ask(ballot, Ask::Promise);
            self.count_promises(now);
        } else {
            self.lead(ballot, now);
        }
    }

    /// Becomes primary at `ballot`: appends its start entry and sends the log to everyone.
    fn lead(&mut self, ballot: Ballot, now: Duration) {
        self.wake = now;
        let start = self.append(Entry { ballot, kind: Kind::Start });
        let peers = self.peers_for(start, &BTreeMap::new());
        self.role = Role::Primary(Lead { ballot, start, serving: false, peers, since: now, handing: None });
        self.broadcast(now);
    }

    /// A peer entry for every other member of the configuration in force, keeping those known.
    /// A replica the configuration dropped stays a peer until it holds the configuration and
    /// knows it committed: it then removes its replica of the slot.
    fn peers_for(&self, next: Index, known: &BTreeMap<NodeId, Peer>) -> BTreeMap<NodeId, Peer> {
        let mut peers = BTreeMap::new();
        for node in self.log.conf().members().into_iter().filter(|n| *n != self.me) {
            let peer = match known.get(&node) {
                Some(p) => Peer { ..*p },
                None => Peer { next, matched: 0, answered: None, last_send: None, told: 0, snapshot: None },
            };
            peers.insert(node, peer);
        }
        let changed_at = self.log.conf_index();
        for (node, peer) in known {
            if !peers.contains_key(node) && (peer.matched < changed_at || peer.told < changed_at) {
                peers.insert(*node, Peer { ..*peer });
            }
        }
        peers
    }

    fn append(&mut self, entry: Entry<P>) -> Index {
        let index = self.log.push(entry.clone());
        self.ready.writes.push(Write::Append(index, entry));
        index
    }

    fn broadcast(&mut self, now: Duration) {
        let Role::Primary(lead) = &self.role else { return };
        let nodes: Vec<NodeId> = lead.peers.keys().copied().collect();
        for node in nodes {
            self.send_append(node, now);
        }
    }

    /// Sends a replica the entries after the ones sent to it, or asks for a snapshot when the
    /// log no longer holds them.
    fn send_append(&mut self, node: NodeId, now: Duration) {
        let base = self.log.base().index;
        let last = self.log.last().index;
        let commit = self.commit;
        let Role::Primary(lead) = &mut self.role else { return };
        let ballot = lead.ballot;
        let Some(peer) = lead.peers.get_mut(&node) else { return };
        if peer.next <= base {
            if peer.snapshot.is_none() {
                peer.snapshot = Some(now);
                peer.last_send = Some(now);
                self.ready.snapshots.push(node);
            }
            return;
        }
        let prev_index = peer.next - 1;
        let Some(prev_ballot) = self.log.ballot_at(prev_index) else { return };
        let entries = self.log.entries_from(peer.next, self.timing.max_batch);
        peer.next = (peer.next + entries.len() as Index).min(last + 1);
        peer.last_send = Some(now);
        peer.told = commit;
        let prev = Position { ballot: prev_ballot, index: prev_index };
        self.send(node, Message::Append { ballot, prev, entries, commit, sent: now });
    }

    /// Takes what `from` sent.
    pub fn step(&mut self, from: NodeId, message: Message<P>, now: Duration) {
        match message {
            Message::Prepare { ballot, last, ask } => self.on_prepare(from, ballot, last, ask, now),
            Message::StandNow { ballot } => {
                let from_primary = matches!(self.role, Role::Follower { primary: Some(p), .. } if p == from);
                if from_primary && ballot == self.promised {
                    self.stand_handed(now);
                }
            }
            Message::Promise { ballot, probe } => {
                if let Role::Candidate { ballot: mine, probe: probing, promises } = &mut self.role {
                    if *mine == ballot && *probing == probe {
                        promises.insert(from);
                        self.count_promises(now);
                    }
                }
            }
            Message::Refuse { ballot, promised, .. } => {
                self.seen = self.seen.max(promised);
                let mine = match &self.role {
                    Role::Candidate { ballot, .. } => Some(*ballot),
                    Role::Primary(lead) => Some(lead.ballot),
                    Role::Follower { .. } => None,
                };
                // A promise above its ballot: someone stands or leads later. Other refusals
                // leave a campaign to its timeout.
                if mine == Some(ballot) && promised > ballot {
                    self.follow(None, now);
                }
            }
            Message::Append { ballot, prev, entries, commit, sent } => {
                self.on_append(from, ballot, prev, entries, commit, sent, now)
            }
            Message::Accepted { ballot, matched, sent } => self.on_accepted(from, ballot, matched, sent, now),
            Message::Mismatch { ballot, at, sent } => self.on_mismatch(from, ballot, at, sent, now),
        }
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, last: Position, ask: Ask, now: Duration) {
        let probe = ask == Ask::Probe;
        if !probe {
            self.seen = self.seen.max(ballot);
        }
        let mine = self.log.last();
        let refuse = |this: &mut Self| this.refuse(from, ballot);
        // A handed slot: its primary serves no more, so no lease holds the voter back.
        let handed = ask == Ask::Transfer;
        if ballot <= self.promised || !self.log.conf().is_voter(from) || (now < self.quiet_until && !handed) {
            return refuse(self);
        }
        // A live primary keeps its slot: a voter that heard it within the lease promises
        // nobody else, which is what the primary's own lease counts on.
        let lease_holds = !handed
            && match &self.role {
                Role::Follower { primary: Some(p), heard: Some(at) } => *p != from && now < *at + self.timing.lease,
                Role::Primary(_) => self.has_lease(now),
                _ => false,
            };
        if lease_holds {
            return refuse(self);
        }
        if last < mine {
            // The candidate lacks entries this voter holds: it cannot win here, so this voter
            // stands soon itself.
            if matches!(self.role, Role::Follower { .. }) && self.log.conf().is_voter(self.me) {
                self.wake = self.wake.min(now + self.timing.rank_step);
            }
            return refuse(self);
        }
        if probe {
            return self.send(from, Message::Promise { ballot, probe });
        }
        self.promise(ballot);
        if !matches!(self.role, Role::Follower { .. }) {
            self.follow(None, now);
        } else {
            self.wake = self.stand_time(now);
        }
        self.send(from, Message::Promise { ballot, probe });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        prev: Position,
        entries: Vec<Entry<P>>,
        commit: Index,
        sent: Duration,
        now: Duration,
    ) {
        if ballot < self.promised {
            return self.refuse(from, ballot);
        }
        self.promise(ballot);
        self.follow(Some(from), now);
        let base = self.log.base();
        if prev.index >= base.index && !self.log.holds(prev) {
            let at = self.log.before_run(prev.index);
            return self.send(from, Message::Mismatch { ballot, at, sent });
        }
        let count = entries.len() as Index;
        for (index, entry) in (prev.index + 1..).zip(entries) {
            if index <= base.index {
                continue;
            }
            match self.log.ballot_at(index) {
                Some(held) if held == entry.ballot => continue,
                Some(_) => {
                    if index <= self.commit {
                        error!(
                            node = %self.me, index, commit = self.commit,
                            "a primary sent an entry that differs from a committed one: the append is refused"
                        );
                        return;
                    }
                    self.log.truncate_from(index);
                    self.durable = self.durable.min(index - 1);
                    self.ready.writes.push(Write::Truncate(index));
                    self.append(entry);
                }
                None => {
                    self.append(entry);
                }
            }
        }
        let matched = prev.index + count;
        self.set_commit(commit.min(matched));
        self.send(from, Message::Accepted { ballot, matched, sent });
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, matched: Index, sent: Duration, now: Duration) {
        let last = self.log.last().index;
        let Role::Primary(lead) = &mut self.role else { return };
        if lead.ballot != ballot {
            return;
        }
        let Some(peer) = lead.peers.get_mut(&from) else { return };
        peer.matched = peer.matched.max(matched.min(last));
        peer.next = peer.next.max(peer.matched + 1);
        peer.answered = peer.answered.max(Some(sent));
        peer.snapshot = None;
        let behind = peer.next <= last;
        self.advance_commit(now);
        if behind {
            self.send_append(from, now);
        }
        self.hand_over();
    }

    /// Hands the slot to `to`, a voter: the primary serves no more at its ballot, catches `to`
    /// up, and tells it to stand. Given up (the primary steps down) when `to` has not stood
    /// within an election timeout; the voters then elect as after any primary's loss.
    pub fn transfer(&mut self, to: NodeId, now: Duration) -> Result<(), ProposeError> {
        let voter = self.log.conf().is_voter(to) && to != self.me;
        match &mut self.role {
            Role::Primary(lead) if lead.serving && voter => {
                lead.serving = false;
                lead.handing = Some((to, now, false));
            }
            _ => return Err(ProposeError::NotServing),
        }
        self.send_append(to, now);
        self.hand_over();
        Ok(())
    }

    /// Tells the replica the slot is handed to to stand, once it holds the whole log.
    fn hand_over(&mut self) {
        let last = self.log.last().index;
        let Role::Primary(lead) = &mut self.role else { return };
        let ballot = lead.ballot;
        let Some((to, _, told)) = &mut lead.handing else { return };
        let to = *to;
        if *told || lead.peers.get(&to).is_none_or(|p| p.matched < last) {
            return;
        }
        *told = true;
        self.send(to, Message::StandNow { ballot });
    }

    fn on_mismatch(&mut self, from: NodeId, ballot: Ballot, at: Position, sent: Duration, now: Duration) {
        let end = self.log.end_of(at.ballot);
        let base = self.log.base().index;
        let Role::Primary(lead) = &mut self.role else { return };
        if lead.ballot != ballot {
            return;
        }
        let Some(peer) = lead.peers.get_mut(&from) else { return };
        peer.answered = peer.answered.max(Some(sent));
        // Where the two logs may still agree: the replica's entries up to `at` came under
        // `at.ballot` or earlier, this log's up to `end` too. Below the base: a snapshot.
        peer.next = end.map_or(base, |end| end.min(at.index) + 1);
        peer.matched = peer.matched.min(peer.next.saturating_sub(1));
        peer.snapshot = None;
        self.send_append(from, now);
    }

    /// Commits what a quorum holds, when the newest such entry is of this primary's ballot
    /// (an earlier ballot's entries commit with it, never by being counted alone).
    fn advance_commit(&mut self, now: Duration) {
        let Role::Primary(lead) = &self.role else { return };
        let ballot = lead.ballot;
        let durable = self.durable;
        let reached = self.log.conf().quorum_value(|n| {
            if n == self.me {
                durable
            } else {
                lead.peers.get(&n).map_or(0, |p| p.matched)
            }
        });
        if reached <= self.commit || self.log.ballot_at(reached) != Some(ballot) {
            return;
        }
        self.set_commit(reached);
        if let Role::Primary(lead) = &mut self.role {
            lead.serving |= self.commit >= lead.start && lead.handing.is_none();
        }
        self.finish_change(now);
    }

    /// The steps after a committed configuration: a joint one is followed by the one it
    /// ends in; a primary that is not a voter of a settled one steps down.
    fn finish_change(&mut self, now: Duration) {
        let conf = self.log.conf().clone();
        if self.log.conf_index() > self.commit {
            return;
        }
        if let Some(settled) = conf.settled() {
            let Role::Primary(lead) = &self.role else { return };
            let ballot = lead.ballot;
            self.append(Entry { ballot, kind: Kind::Conf(settled) });
            self.refresh_peers();
            self.broadcast(now);
        } else if !conf.is_voter(self.me) {
            self.follow(None, now);
        } else {
            self.refresh_peers();
        }
    }

    fn refresh_peers(&mut self) {
        let next = self.log.last().index;
        if let Role::Primary(lead) = &self.role {
            let peers = self.peers_for(next, &lead.peers);
            if let Role::Primary(lead) = &mut self.role {
                lead.peers = peers;
            }
        }
    }

    /// Records that the log up to `at` is durable here.
    pub fn persisted(&mut self, at: Position, now: Duration) {
        if self.log.holds(at) && at.index > self.durable {
            self.durable = at.index;
            self.advance_commit(now);
        }
    }

    /// Appends a write of the slot's data; its index, or why not.
    pub fn propose(&mut self, data: P, now: Duration) -> Result<Index, ProposeError> {
        let ballot = match &self.role {
            Role::Primary(lead) if lead.serving => lead.ballot,
            _ => return Err(ProposeError::NotServing),
        };
        let index = self.append(Entry { ballot, kind: Kind::Data(data) });
        self.send_new(index, now);
        Ok(index)
    }

    /// Sends the entry at `index` to the replicas that have everything before it in flight.
    fn send_new(&mut self, index: Index, now: Duration) {
        let Role::Primary(lead) = &self.role else { return };
        let ready: Vec<NodeId> = lead.peers.iter().filter(|(_, p)| p.next == index).map(|(n, _)| *n).collect();
        for node in ready {
            self.send_append(node, now);
        }
    }

    /// Starts changing the voters to `voters` (with `learners` beside): a joint configuration
    /// first, then, once committed, the new one alone. Learners alone change in one step.
    /// Every new voter must hold the log up to the commit index.
    pub fn change(&mut self, voters: Vec<NodeId>, learners: Vec<NodeId>, now: Duration) -> Result<Index, ProposeError> {
        let (ballot, lead_peers) = match &self.role {
            Role::Primary(lead) if lead.serving => (lead.ballot, &lead.peers),
            _ => return Err(ProposeError::NotServing),
        };
        let conf = self.log.conf();
        if conf.is_joint() || self.log.conf_index() > self.commit {
            return Err(ProposeError::ChangeUnderWay);
        }
        let mut wanted = voters.clone();
        wanted.sort_unstable();
        wanted.dedup();
        let next = if wanted == conf.voters {
            let mut same = Conf::new(wanted, learners)?;
            same.gen = conf.gen + 1;
            same
        } else {
            for node in wanted.iter().filter(|n| !conf.is_voter(**n)) {
                let caught_up = *node == self.me || lead_peers.get(node).is_some_and(|p| p.matched >= self.commit);
                if !caught_up {
                    return Err(ProposeError::NotCaughtUp(*node));
                }
            }
            conf.towards(wanted, learners)?
        };
        let index = self.append(Entry { ballot, kind: Kind::Conf(next) });
        self.refresh_peers();
        self.broadcast(now);
        Ok(index)
    }

    /// Takes a snapshot of the slot at `base` (with its configuration) from the primary at
    /// `ballot`: whether the driver is to write the snapshot's data (the log starts over at
    /// `base`). Answered like an append.
    pub fn install(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        base: Position,
        conf: Conf,
        sent: Duration,
        now: Duration,
    ) -> bool {
        if ballot < self.promised {
            self.refuse(from, ballot);
            return false;
        }
        self.promise(ballot);
        self.follow(Some(from), now);
        if base.index <= self.commit {
            let matched = self.commit;
            self.send(from, Message::Accepted { ballot, matched, sent });
            return false;
        }
        self.log = Log::new(base, conf.clone());
        self.durable = base.index;
        self.commit = base.index;
        self.ready.writes.push(Write::Install(base, conf));
        self.send(from, Message::Accepted { ballot, matched: base.index, sent });
        true
    }
}
