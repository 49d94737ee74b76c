//! A node's part in a cluster: its links, its gossip, and the loop that keeps its view of the
//! members current and hands its slots to the members placement gives them to.
//!
//! The member set is every node this node ever saw gossiping (kept in the store), so a node
//! that restarts or drops off for a while stays a member and nothing moves. Placement is a
//! function of the member set; a slot moves only from its owner, only to a member that is
//! live, ready, and computes the same placement version (members that disagree wait), by the
//! hand-over of [`crate::Ownership`]: fence, copy in parts, switch. A hand-over cut short
//! (either node killed, the link cut) stays fenced on the sender, which resumes it; the slot
//! is unavailable meanwhile, never served twice.
//!
//! A node leaves for good when an operator asks (`tim cluster leave`): it says so in gossip,
//! every member retires it (it leaves the member set, and the retirement is kept and gossiped
//! so that no member ever adds it back), it hands every slot to the members placement now
//! gives them to, and it stops. Its records keep it leaving across restarts.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tim_kv::{RawWrite, Store, StoreError};
use tim_net::report::ErrorChain;
use tim_net::rpc::{self, RpcClient, RpcConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub(crate) use crate::cluster::LEAVING_RECORD;
use crate::cluster::{Calls, Cluster, Seen, Timeouts};
use crate::handover::{MoveTotals, Mover, Plan};
use crate::incarnation::{self, Incarnation};
use crate::lease::{needed_for_lease, PING_EVERY};
use crate::members::{MemberSet, Recorded};
use crate::membership::{self, MemberInfo, MemberState, Membership, MembershipConfig, MembershipError};
use crate::ownership::{Ownership, OwnershipError, SlotState};
use crate::placement::{NodeId, Placement, PlacementVersion};
use crate::wire::{Reply, Request};

/// How often the loop looks at the members when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// Least time between two turns of the loop.
const MIN_TURN: Duration = Duration::from_millis(50);
/// How long a node started with seeds may hear nobody before it says so (and serves what
/// it owns without having heard its cluster).
const LONELY_AFTER: Duration = Duration::from_secs(10);
/// Least time a leaving node stays drained (holding nothing, handed nothing) before it stops:
/// a member that fenced a slot towards it just before it saw it leaving has gossiped that by
/// then, and the operator's `tim cluster leave` sees it drained.
const LEFT_GRACE: Duration = Duration::from_secs(2);
/// The same in gossip rounds, for slow gossip.
const LEFT_GRACE_ROUNDS: u32 = 6;
/// The store record that says this node was removed from the cluster.
pub(crate) const REMOVED_RECORD: &str = "removed";
/// How long a ping or a question at start may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the node looks for copies of slots that stopped coming, and how long one must
/// have stopped.
const PARTIAL_EVERY: Duration = Duration::from_secs(30);
const PARTIAL_QUIET: Duration = Duration::from_secs(60);
/// Least time between two writes of the newest owners of the slots.
const ROUTES_EVERY: Duration = Duration::from_secs(1);

/// What a node gossips as its load.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Client sessions connected now.
    pub sessions: u64,
    /// Message-class frames clients sent to this node so far.
    pub messages: u64,
}

/// How a node joins its cluster.
pub struct JoinConfig {
    pub node: NodeId,
    pub generation: u64,
    pub cluster_id: String,
    pub weight: u16,
    pub gossip_socket: std::net::UdpSocket,
    pub gossip_advertise: SocketAddr,
    pub rpc_listener: TcpListener,
    pub rpc_advertise: SocketAddr,
    pub client_advertise: SocketAddr,
    pub seeds: Vec<String>,
    pub gossip_key: [u8; 32],
    pub rpc_key: [u8; 32],
    pub gossip_interval: Duration,
    /// Slots handed over at once.
    pub moves_at_once: usize,
    /// Bytes per second all hand-overs send together; `None`: unpaced.
    pub migration_rate: Option<NonZeroU64>,
    pub timeouts: Timeouts,
    /// The incarnation of a data dir written before incarnations existed: the same on every
    /// node of one deployment and cluster id (derived from the secret).
    pub legacy_incarnation: u64,
    /// How long a node that founds a cluster listens first: gossip of another incarnation
    /// heard meanwhile (its address was a member of another cluster's) stops it instead.
    pub found_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the ownership records")]
    Ownership(#[from] OwnershipError),
    #[error("the member set record")]
    Store(#[from] StoreError),
    #[error("gossip")]
    Gossip(#[from] MembershipError),
    #[error("the addresses of the node")]
    Io(#[from] std::io::Error),
    #[error(
        "this node was removed from its cluster (`tim cluster remove`) and the others took its slots: its data dir \
         cannot serve as a member again (start a new node with a new data dir)"
    )]
    Removed,
}

/// Why a node stopped being a member: it left, or it must not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ended {
    #[error("this node left the cluster")]
    Left,
    #[error(
        "this node was removed from the cluster (`tim cluster remove`) while it was away: it stops, and stops again \
         whenever started on this data dir"
    )]
    Removed,
    #[error(
        "the seed {seed} belongs to cluster incarnation {theirs:016x}, and this node's data dir to {ours:016x} (it \
         founded or joined another cluster): it does not start into another cluster. To join the seed's cluster, \
         start on an empty data dir"
    )]
    OtherCluster { ours: u64, theirs: u64, seed: SocketAddr },
    #[error(
        "members of cluster incarnation {theirs:016x} gossip to this node's address ({from} sent some): a member of \
         theirs was here. This node does not found a new cluster over it: join theirs with --seeds (if this is that \
         member with a new disk, remove its old id with `tim cluster remove`), or make another cluster on another \
         address"
    )]
    FoundingRefused { theirs: u64, from: SocketAddr },
    #[error("founding the cluster failed: {0}")]
    Failed(String),
}

impl Ended {
    /// Whether the node stops for a reason the operator must look at.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Left)
    }
}

/// A node in a cluster: stopped with [`ClusterNode::shutdown`].
pub struct ClusterNode {
    cluster: Arc<Cluster>,
    membership: Arc<Membership>,
    stop: CancellationToken,
    tasks: TaskTracker,
    ended: watch::Receiver<Option<Ended>>,
}

impl ClusterNode {
    /// Joins (or, for the first node, founds) the cluster: loads the member set, serves the
    /// node's links, starts gossip, the loop and the lease. A node that never belonged to a
    /// cluster and has no seeds founds a new one (after listening for
    /// [`JoinConfig::found_after`]) and owns every slot; with seeds it takes its seeds'
    /// incarnation and waits for slots. The node serves nothing until it knows what it owns
    /// and holds its lease.
    pub async fn start(
        store: Arc<dyn Store>,
        ownership: Arc<Ownership>,
        cfg: JoinConfig,
    ) -> Result<(Self, Arc<Cluster>), JoinError> {
        if store.local(REMOVED_RECORD)?.is_some() {
            return Err(JoinError::Removed);
        }
        // A node that left never founds a cluster, whatever it holds.
        let leaving = store.local(LEAVING_RECORD)?.is_some();
        let mut members = MemberSet::load(&*store)?;
        let kept = match incarnation::load(&*store)? {
            Some(kept) => kept,
            // Written before incarnations existed: the deployment's legacy one.
            None if !ownership.is_empty() || !members.members.is_empty() || leaving => {
                incarnation::save(&*store, cfg.legacy_incarnation).await?;
                cfg.legacy_incarnation
            }
            None => 0,
        };
        let founding = kept == 0 && cfg.seeds.is_empty() && !leaving;
        let seeds = resolve(&cfg.seeds);
        let incarnation = Arc::new(Incarnation::new(kept, seeds.iter().copied()));
        // The node's own weight is the newest word on it.
        let me = Recorded { id: cfg.node, weight: cfg.weight, since: cfg.generation };
        if !leaving && members.merge([me], [], []) {
            members.save(&*store).await?;
        }
        ownership.gate().close();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut rpc_cfg = RpcConfig::new(cfg.cluster_id.clone(), cfg.node.0, cfg.rpc_key);
        rpc_cfg.incarnation = incarnation.shared();
        rpc_cfg.bind = Some(cfg.rpc_listener.local_addr()?.ip());
        let rpc = RpcClient::new(rpc_cfg.clone(), stop.clone(), tasks.clone());
        let placement = Placement::new(members.placement_members(), 1);
        let cluster = Arc::new(Cluster::new(
            cfg.node,
            cfg.generation,
            store.clone(),
            ownership.clone(),
            placement,
            Some(rpc),
            cfg.timeouts,
        )?);
        cluster.set_incarnation(incarnation.clone());
        cluster.set_members(members.clone());
        if leaving {
            info!("this node is leaving the cluster (its records say so): handing its slots over");
            cluster.resume_leaving();
        }
        let state = if leaving { MemberState::Leaving } else { MemberState::Joining };
        tasks.spawn(rpc::serve(
            cfg.rpc_listener,
            rpc_cfg,
            Arc::new(Calls(cluster.clone())),
            stop.clone(),
            tasks.clone(),
        ));

        let owned = ownership.owned().len();
        let initial = vec![
            (membership::KEY_RPC, cfg.rpc_advertise.to_string()),
            (membership::KEY_CLIENT, cfg.client_advertise.to_string()),
            (membership::KEY_STATE, state.as_str().to_owned()),
            (membership::KEY_WEIGHT, cfg.weight.to_string()),
            (membership::KEY_PLACEMENT, cluster.placement().version().to_string()),
            (membership::KEY_OWNED, "0".to_owned()),
            (membership::KEY_SLOTS, owned.to_string()),
            (membership::KEY_SESSIONS, "0".to_owned()),
            (membership::KEY_MESSAGE_RATE, "0".to_owned()),
            (membership::KEY_LEAVING_SLOTS, "0".to_owned()),
            (membership::KEY_RETIRED, membership::format_nodes(members.retired.iter().copied())),
            (membership::KEY_REMOVED, membership::format_nodes(members.removed.iter().copied())),
        ];
        let membership = Arc::new(
            Membership::start(MembershipConfig {
                node: cfg.node,
                generation: cfg.generation,
                cluster_id: cfg.cluster_id,
                socket: cfg.gossip_socket,
                advertise: cfg.gossip_advertise,
                seeds: cfg.seeds.clone(),
                key: cfg.gossip_key,
                incarnation: incarnation.clone(),
                interval: cfg.gossip_interval,
                initial,
            })
            .await?,
        );
        cluster.set_membership(membership.clone());
        cluster.retire_all(members.retired.iter().copied());
        cluster.remove_all(members.removed.iter().copied());
        let (ended_tx, ended) = watch::channel(None);
        let mover = Arc::new(Mover::new(cluster.clone(), store.clone(), cfg.migration_rate));
        let plan = Arc::new(Plan::default());
        for _ in 0..cfg.moves_at_once.max(1) {
            let (mover, plan, stop) = (mover.clone(), plan.clone(), stop.clone());
            tasks.spawn(mover.run(plan, stop).instrument(tracing::info_span!("mover", node = %cfg.node)));
        }
        let span = tracing::info_span!("cluster", node = %cfg.node);
        let lease = Lease { cluster: cluster.clone(), incarnation: incarnation.clone(), seeded: !seeds.is_empty() };
        tasks.spawn(lease.keep(stop.clone()).instrument(span.clone()));
        let driver = Driver {
            cluster: cluster.clone(),
            membership: membership.clone(),
            store: store.clone(),
            incarnation,
            seeds,
            founding: founding.then_some(cfg.found_after),
            members,
            fetched_sets: HashMap::new(),
            leaving: false,
            fenced_to: BTreeSet::new(),
            drained_since: None,
            alone: false,
            grace: LEFT_GRACE.max(cfg.gossip_interval * LEFT_GRACE_ROUNDS),
            ended: ended_tx,
            seeded: !cfg.seeds.is_empty(),
            plan: plan.clone(),
            mover: mover.clone(),
            told_moves: (MoveTotals::default(), 0),
            moves_sampled: (MoveTotals::default(), Instant::now()),
            partials_at: None,
            routes_at: None,
            stop: stop.clone(),
        };
        tasks.spawn(driver.run().instrument(span));
        Ok((Self { cluster: cluster.clone(), membership, stop, tasks, ended }, cluster))
    }

    /// Resolves once this node stopped being a member: asked to leave, it handed every slot
    /// over; or it learned it must not go on (removed, or another cluster's). Pending forever
    /// otherwise.
    pub async fn ended(&self) -> Ended {
        let mut ended = self.ended.clone();
        let why = ended.wait_for(Option::is_some).await.map(|why| why.clone());
        match why {
            Ok(why) => why.unwrap_or(Ended::Left),
            Err(_) => std::future::pending().await,
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The members as gossip shows them.
    pub async fn members(&self) -> Vec<MemberInfo> {
        crate::membership::newest(self.membership.members().await)
    }

    /// Gossips this node's load every `every`, until the node stops: its sessions, and the
    /// rate of its message count since the last time (keys are set only when they change).
    pub fn gossip_load(&self, every: Duration, load: impl Fn() -> Load + Send + 'static) {
        let (membership, stop) = (self.membership.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            let (mut told, mut last) = ((0, 0), (load().messages, Instant::now()));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let now = load();
                let elapsed = last.1.elapsed().as_secs_f64().max(1e-3);
                let rate = (now.messages.saturating_sub(last.0) as f64 / elapsed).round() as u64;
                last = (now.messages, Instant::now());
                if now.sessions != told.0 {
                    membership.set(membership::KEY_SESSIONS, now.sessions.to_string()).await;
                }
                if rate != told.1 {
                    membership.set(membership::KEY_MESSAGE_RATE, rate.to_string()).await;
                }
                told = (now.sessions, rate);
            }
        });
    }

    /// Says it is stopping (unless it is leaving), stops the loop, the links and gossip.
    pub async fn shutdown(self) {
        if !self.cluster.leaving() {
            self.membership.set(membership::KEY_STATE, MemberState::Stopping.as_str().to_owned()).await;
        }
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Ok(membership) = Arc::try_unwrap(self.membership) {
            membership.shutdown().await;
        }
    }
}

/// The seeds' addresses, as far as they resolve now.
fn resolve(seeds: &[String]) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    seeds.iter().filter_map(|seed| seed.to_socket_addrs().ok()).flatten().collect()
}

/// Keeps this node's lease ([`crate::lease`]): pings the other members and opens the gate of
/// its slots while half of them answer. First, before it serves anything, it learns from as
/// many members what moved while it was away (a slot owned elsewhere at a higher
/// epoch is given up: a data dir restored from an old copy serves nothing that moved since),
/// and, started with seeds, it waits to hear its own cluster (a node whose seeds turn out to
/// be another cluster's stops instead, in the loop).
struct Lease {
    cluster: Arc<Cluster>,
    incarnation: Arc<Incarnation>,
    seeded: bool,
}

impl Lease {
    async fn keep(self, stop: CancellationToken) {
        let started = Instant::now();
        let me = self.cluster.node();
        let timeout = ASK_TIMEOUT.min(self.cluster.leases().length() / 2);
        loop {
            let round = tokio::time::Instant::now();
            let voters: Vec<NodeId> = self.cluster.placement().members().iter().map(|m| m.id).collect();
            let peers: Vec<NodeId> = voters.iter().copied().filter(|v| *v != me).collect();
            let sent = Instant::now();
            let cluster = &self.cluster;
            let pings = peers.iter().map(|peer| async move { (*peer, cluster.ping(*peer, timeout).await) });
            for (peer, answered) in futures_util::future::join_all(pings).await {
                if answered {
                    self.cluster.leases().acked(peer, sent);
                }
            }
            if !self.cluster.is_ready() && self.incarnation.is_saved() {
                let waits = self.seeded && !self.incarnation.heard_own() && started.elapsed() < LONELY_AFTER;
                if !waits && self.confirm(&peers, needed_for_lease(me, &voters), timeout).await {
                    info!("this node knows what it owns: it serves its slots while half of the members answer it");
                    self.cluster.set_ready();
                }
            }
            if self.cluster.is_ready() {
                let gate = self.cluster.ownership().gate();
                match self.cluster.leases().until(me, &voters) {
                    Ok(until) => gate.open_until(until),
                    Err(()) => gate.close(),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(round + PING_EVERY) => {}
            }
        }
    }

    /// Learns the owned slots and the newest owners of `peers` (what moved while this node
    /// was away is superseded here); whether `needed` of them answered, as many as its lease
    /// needs.
    async fn confirm(&self, peers: &[NodeId], needed: usize, timeout: Duration) -> bool {
        let asks = peers.iter().map(|peer| self.cluster.learn_epochs(*peer, timeout));
        let answered = futures_util::future::join_all(asks).await.into_iter().filter(|ok| *ok).count();
        answered >= needed
    }
}

struct Driver {
    cluster: Arc<Cluster>,
    membership: Arc<Membership>,
    store: Arc<dyn Store>,
    incarnation: Arc<Incarnation>,
    /// The seeds' addresses: gossip of another cluster from one stops this node.
    seeds: Vec<SocketAddr>,
    /// Founding a cluster, after listening this long.
    founding: Option<Duration>,
    members: MemberSet,
    /// The placement version each member had when its member set was fetched.
    fetched_sets: HashMap<NodeId, Option<PlacementVersion>>,
    /// Whether this node has started leaving (said so in gossip, retired itself).
    leaving: bool,
    /// The nodes this node holds slots fenced towards, as last gossiped.
    fenced_to: BTreeSet<NodeId>,
    /// Since when this node, leaving, holds nothing and is handed nothing.
    drained_since: Option<Instant>,
    /// How long it stays drained before it has left.
    grace: Duration,
    /// Leaving with no member left to take its slots (said once).
    alone: bool,
    /// Set once this node stops being a member.
    ended: watch::Sender<Option<Ended>>,
    seeded: bool,
    /// The hand-overs to make, taken by the movers.
    plan: Arc<Plan>,
    mover: Arc<Mover>,
    /// The hand-over totals and rate last gossiped.
    told_moves: (MoveTotals, u64),
    /// The totals at the last rate sample, and when.
    moves_sampled: (MoveTotals, Instant),
    /// When partial copies were last looked for (`None`: not yet; at start, any partial copy
    /// is one that stopped: a copy that goes on starts over with its first part).
    partials_at: Option<Instant>,
    /// When the newest owners of the slots were last kept.
    routes_at: Option<Instant>,
    stop: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        // Subscribed first: founding changes the owned slots, which gossip then tells.
        let mut owned = self.cluster.ownership().version();
        if let Some(after) = self.founding {
            if let Err(why) = self.found(after).await {
                tracing::error!(error = %why, "no cluster founded: this node stops");
                self.end(why);
                return;
            }
        }
        let mut changes = self.membership.changes().await;
        let started = Instant::now();
        let mut heard = !self.seeded;
        let mut seen_owned: HashMap<NodeId, u64> = HashMap::new();
        let mut told_leaving = 0;
        let mut leave = self.cluster.leave_requests();
        let mut removals = self.cluster.retired();
        let mut strangers = self.incarnation.strangers();
        let mut learned = self.incarnation.learned();
        let mut ready = self.cluster.ready();
        let mut told_ready = false;
        let mut turned: Option<tokio::time::Instant> = None;
        loop {
            // A turn looks at every slot, and every slot moved here or by a member wakes the
            // loop: the wakes of one MIN_TURN are taken in one turn.
            if let Some(at) = turned {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at + MIN_TURN) => {}
                }
            }
            turned = Some(tokio::time::Instant::now());
            if let Some(stranger) = *strangers.borrow_and_update() {
                if self.seeds.contains(&stranger.from) && !self.incarnation.heard_own() {
                    let ended = Ended::OtherCluster {
                        ours: self.incarnation.get(),
                        theirs: stranger.incarnation,
                        seed: stranger.from,
                    };
                    tracing::error!(error = %ended, "this node stops");
                    self.end(ended);
                    return;
                }
            }
            self.save_incarnation().await;
            if *leave.borrow_and_update() && !self.leaving {
                self.start_leaving().await;
            }
            if *ready.borrow_and_update() && !told_ready && !self.leaving {
                self.membership.set(membership::KEY_STATE, MemberState::Ready.as_str().to_owned()).await;
                told_ready = true;
            }
            let members = crate::membership::newest(self.membership.members().await);
            let others: Vec<&MemberInfo> = members.iter().filter(|m| m.node != self.cluster.node()).collect();
            if !heard && others.iter().any(|m| m.live) {
                heard = true;
            } else if !heard && started.elapsed() > LONELY_AFTER {
                warn!(
                    "no member answered gossip from the seeds: check that every node shares the deployment secret \
                     (--secret-file) and --cluster-id, and that the gossip port is reachable"
                );
                heard = true;
            }
            match self.learn(&members).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => warn!(error = %ErrorChain(&e), "member set not saved"),
            }
            // A retired node is a peer only while it is leaving (it passes on the slots still
            // handed to it); one that was removed and came back is nobody's peer.
            let retired = &self.members.retired;
            let peers = others.iter().filter(|m| !retired.contains(&m.node) || m.state == MemberState::Leaving);
            self.cluster.set_peers(peers.map(|m| (m.node, m.rpc)).collect());
            let seen = members.iter().map(|m| (m.node, Seen { generation: m.generation, live: m.live }));
            self.cluster.set_seen(seen.collect());
            // Live members whose list of owned slots changed since it was last fetched (a
            // failed fetch is tried again next time).
            let changed_owners = others.iter().any(|m| m.live && seen_owned.get(&m.node) != Some(&m.owned_version));
            if changed_owners {
                let fetched = self.cluster.refresh_routes().await;
                for m in others.iter().filter(|m| fetched.contains(&m.node)) {
                    seen_owned.insert(m.node, m.owned_version);
                }
            }
            self.save_routes().await;
            self.drop_partial_copies().await;
            let (leaving, fenced_to) = self.hand_over(&members);
            if leaving != told_leaving {
                self.membership.set(membership::KEY_LEAVING_SLOTS, leaving.to_string()).await;
                told_leaving = leaving;
            }
            self.gossip_fenced(fenced_to).await;
            self.gossip_moves().await;
            if self.leaving {
                self.follow_leave(&members, leaving).await;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = changes.changed() => {}
                _ = leave.changed() => {}
                _ = removals.changed() => {}
                _ = strangers.changed() => {}
                _ = learned.changed() => {}
                _ = ready.changed() => {}
                _ = owned.changed() => {
                    let version = *owned.borrow_and_update();
                    self.membership.set(membership::KEY_OWNED, version.to_string()).await;
                    let slots = self.cluster.ownership().owned_set().len();
                    self.membership.set(membership::KEY_SLOTS, slots.to_string()).await;
                }
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    fn end(&self, why: Ended) {
        self.ended.send_replace(Some(why));
    }

    /// Founds a new cluster after listening for `after`: a new incarnation, kept with the
    /// ownership of every slot. Refused when gossip of another incarnation arrives meanwhile.
    async fn found(&mut self, after: Duration) -> Result<(), Ended> {
        let mut strangers = self.incarnation.strangers();
        let deadline = tokio::time::Instant::now() + after;
        loop {
            if let Some(stranger) = *strangers.borrow_and_update() {
                return Err(Ended::FoundingRefused { theirs: stranger.incarnation, from: stranger.from });
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => break,
                _ = strangers.changed() => {}
            }
        }
        let id = incarnation::new_id();
        let record = incarnation::record(id);
        self.cluster
            .ownership()
            .bootstrap(vec![record])
            .await
            .map_err(|e| Ended::Failed(ErrorChain(&e).to_string()))?;
        self.incarnation.set(id);
        info!(incarnation = %format_args!("{id:016x}"), "no seeds and no data: founded a new cluster");
        Ok(())
    }

    /// Keeps the incarnation this node took from its seeds, before it takes any slot.
    async fn save_incarnation(&self) {
        let id = self.incarnation.get();
        if id == 0 || self.incarnation.is_saved() {
            return;
        }
        match incarnation::save(&*self.store, id).await {
            Ok(()) => {
                self.incarnation.mark_saved();
                info!(incarnation = %format_args!("{id:016x}"), "joined the cluster of the seeds");
            }
            Err(e) => warn!(error = %ErrorChain(&e), "the cluster incarnation not saved: tried again"),
        }
    }

    /// Says in gossip that this node leaves the cluster (its record is written already) and
    /// retires itself: placement then gives its slots to the others.
    async fn start_leaving(&mut self) {
        self.leaving = true;
        info!("leaving the cluster: handing every slot to the other members");
        self.membership.set(membership::KEY_STATE, MemberState::Leaving.as_str().to_owned()).await;
    }

    /// This node was removed from the cluster while it was away (`tim cluster remove`): the
    /// others adopted its slots, so it must serve none of them. It records that, and stops
    /// (started again on this data, it refuses to start).
    async fn removed(&mut self) -> Result<(), StoreError> {
        self.cluster.ownership().gate().close();
        tracing::error!(error = %Ended::Removed, "this node stops");
        let record = RawWrite::local(vec![(REMOVED_RECORD.to_owned(), Some(Vec::new()))]);
        self.store.write_raw(record).await?;
        self.end(Ended::Removed);
        Ok(())
    }

    /// Gossips the nodes this node holds slots fenced towards, when they changed: a leaving
    /// node waits until nobody hands it a slot.
    async fn gossip_fenced(&mut self, fenced_to: BTreeSet<NodeId>) {
        if fenced_to != self.fenced_to {
            self.membership.set(membership::KEY_FENCED_TO, membership::format_nodes(fenced_to.iter().copied())).await;
            self.fenced_to = fenced_to;
        }
    }

    /// Gossips what this node's hand-overs did (slots, bytes) and their rate over the last
    /// second or more, when they changed.
    async fn gossip_moves(&mut self) {
        let now = self.mover.totals();
        let (then, at) = self.moves_sampled;
        let elapsed = at.elapsed();
        let mut rate = self.told_moves.1;
        if elapsed >= Duration::from_secs(1) {
            rate = (now.bytes.saturating_sub(then.bytes) as f64 / elapsed.as_secs_f64()).round() as u64;
            self.moves_sampled = (now, Instant::now());
        }
        if (now, rate) != self.told_moves {
            let value = format!("{},{},{}", now.slots, now.bytes, rate);
            self.membership.set(membership::KEY_MOVES, value).await;
            self.told_moves = (now, rate);
        }
    }

    /// Keeps the newest owners of the slots, at most once per [`ROUTES_EVERY`] (a synced
    /// write of the whole table, while slots move every turn): a node that restarts learns
    /// the last moments again from its peers.
    async fn save_routes(&mut self) {
        if self.routes_at.is_some_and(|at| at.elapsed() < ROUTES_EVERY) {
            return;
        }
        self.routes_at = Some(Instant::now());
        if let Err(e) = self.cluster.routes().save(&*self.store).await {
            warn!(error = %ErrorChain(&e), "the newest owners of the slots not saved");
        }
    }

    /// Removes, now and then, what this node holds of slots whose copy to it stopped coming.
    async fn drop_partial_copies(&mut self) {
        if self.partials_at.is_some_and(|at| at.elapsed() < PARTIAL_EVERY) {
            return;
        }
        self.partials_at = Some(Instant::now());
        match self.cluster.ownership().drop_partial_copies(PARTIAL_QUIET).await {
            Ok(dropped) if !dropped.is_empty() => {
                info!(slots = dropped.len(), "removed copies of slots whose hand-over to this node stopped")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %ErrorChain(&e), "copies of slots whose hand-over stopped not removed"),
        }
    }

    /// A leaving node is drained once it owns nothing, has nothing to hand over, and no
    /// member (live or not: one that is down resumes its hand-over when back) holds a slot
    /// fenced towards it. It says so in gossip, and has left once it stayed drained for the
    /// grace.
    async fn follow_leave(&mut self, members: &[MemberInfo], to_hand: usize) {
        let me = self.cluster.node();
        let handed_to_me = members.iter().any(|m| m.node != me && m.fenced_to.contains(&me));
        let drained = to_hand == 0 && self.cluster.ownership().owned_set().is_empty() && !handed_to_me;
        let alone = !drained && self.cluster.placement().members().is_empty();
        if alone && !self.alone {
            warn!("leaving, but no member is left to take the slots: add a node");
        }
        self.alone = alone;
        match self.drained_since {
            None if drained => {
                self.drained_since = Some(Instant::now());
                self.membership.set(membership::KEY_DRAINED, "1".to_owned()).await;
            }
            Some(_) if !drained => {
                info!("a member hands this leaving node a slot again: waiting for it");
                self.drained_since = None;
                self.membership.set(membership::KEY_DRAINED, "0".to_owned()).await;
            }
            Some(since) if since.elapsed() >= self.grace && self.ended.borrow().is_none() => {
                info!("every slot is handed over: this node has left the cluster and stops");
                self.end(Ended::Left);
            }
            _ => {}
        }
    }

    /// Brings the member set up to date ([`crate::members`]): from gossip (members, their
    /// weights, retirements), and from the member sets of live members that compute another
    /// placement. Placement is recomputed when the set changed. `Ok(false)`: this node
    /// learned it was removed, and stops.
    async fn learn(&mut self, seen: &[MemberInfo]) -> Result<bool, StoreError> {
        let me = self.cluster.node();
        let mut set = self.members.clone();
        // Nodes an operator removed through this node, nodes any member says left or were
        // removed, and this node once it leaves.
        let mut retired: Vec<NodeId> = self.cluster.retired().borrow().iter().copied().collect();
        retired.extend(seen.iter().flat_map(|m| m.retired.iter().copied()));
        if self.leaving {
            retired.push(me);
        }
        let mut removed: Vec<NodeId> = self.cluster.removed().borrow().iter().copied().collect();
        removed.extend(seen.iter().flat_map(|m| m.removed.iter().copied()));
        let gossiped = seen.iter().map(|m| Recorded { id: m.node, weight: m.weight, since: m.generation });
        let mut changed = set.merge(gossiped, retired, removed);
        let version = Some(self.cluster.placement().version());
        let differ: Vec<&MemberInfo> = seen
            .iter()
            .filter(|m| m.live && m.node != me && m.placement.is_some() && m.placement != version)
            .filter(|m| self.fetched_sets.get(&m.node) != Some(&m.placement))
            .collect();
        for m in differ {
            match self.cluster.send_within(m.node, &Request::Members, ASK_TIMEOUT).await {
                Ok(Reply::Members { members, retired, removed }) => {
                    changed |= set.merge(members, retired, removed);
                    self.fetched_sets.insert(m.node, m.placement);
                }
                Ok(other) => {
                    tracing::debug!(member = %m.node, reply = ?other, "unexpected answer to a member set request")
                }
                Err(e) => tracing::debug!(member = %m.node, error = %e, "member set not fetched"),
            }
        }
        if !changed {
            return Ok(true);
        }
        // Removed (even while it was leaving: the others took its slots), or retired while
        // it does not know it left (a data dir from before it left).
        if set.removed.contains(&me) || (set.retired.contains(&me) && !self.leaving) {
            self.removed().await?;
            return Ok(false);
        }
        for m in set.members.iter().filter(|m| !self.members.contains(m.id)) {
            info!(member = %m.id, weight = m.weight, "new member");
        }
        for node in set.retired.difference(&self.members.retired) {
            info!(member = %node, "member left the cluster");
        }
        set.save(&*self.store).await?;
        self.cluster.retire_all(set.retired.iter().copied());
        self.cluster.remove_all(set.removed.iter().copied());
        if set.retired != self.members.retired {
            self.membership.set(membership::KEY_RETIRED, membership::format_nodes(set.retired.iter().copied())).await;
        }
        if set.removed != self.members.removed {
            self.membership.set(membership::KEY_REMOVED, membership::format_nodes(set.removed.iter().copied())).await;
        }
        let placement = Placement::new(set.placement_members(), 1);
        if placement.version() != self.cluster.placement().version() {
            info!(members = set.members.len(), version = %placement.version(), "placement changed");
            self.membership.set(membership::KEY_PLACEMENT, placement.version().to_string()).await;
            self.cluster.set_placement(placement);
        }
        self.cluster.set_members(set.clone());
        self.members = set;
        Ok(true)
    }

    /// Plans the hand-overs placement asks for (the movers make them, a few at a time):
    /// fenced ones (cut short before) to a live receiver that is not stopping, even one
    /// leaving itself (it passes the slot on); owned slots placement gives to a ready member,
    /// once every live member agrees on placement. A member that is down holds up only the
    /// slots it is to receive.
    /// Returns how many slots held here are to be handed over, started or not, and the nodes
    /// slots are held fenced towards.
    fn hand_over(&self, members: &[MemberInfo]) -> (usize, BTreeSet<NodeId>) {
        let placement = self.cluster.placement();
        let me = self.cluster.node();
        // New moves start once every live member computes this placement: a view that flaps
        // moves nothing until it settles.
        let agreed = members
            .iter()
            .filter(|m| m.live && m.state != MemberState::Stopping && !self.members.retired.contains(&m.node))
            .all(|m| m.node == me || m.placement == Some(placement.version()));
        let takes = |node: NodeId, resumed: bool| {
            members.iter().any(|m| {
                m.node == node
                    && m.live
                    && match m.state {
                        MemberState::Ready => resumed || agreed,
                        MemberState::Leaving => resumed,
                        MemberState::Joining | MemberState::Stopping => false,
                    }
            })
        };
        let mut todo = Vec::new();
        let mut leaving = 0;
        let mut fenced_to = BTreeSet::new();
        for (slot, state) in self.cluster.ownership().all() {
            let (target, resumed) = match state {
                SlotState::Fenced { to, .. } => (Some(to), true),
                SlotState::Owned { .. } => (placement.owner(slot).filter(|owner| *owner != me), false),
                SlotState::Given { .. } => (None, false),
            };
            leaving += usize::from(target.is_some());
            if let (Some(to), true) = (target, resumed) {
                fenced_to.insert(to);
            }
            if let Some(to) = target.filter(|to| takes(*to, resumed)) {
                todo.push((slot, to));
            }
        }
        self.plan.replace(todo);
        (leaving, fenced_to)
    }
}

#[cfg(test)]
mod tests;
