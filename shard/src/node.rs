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

use crate::cluster::{Calls, Cluster, Seen, Timeouts, LEAVING_RECORD};
use crate::handover::{MoveTotals, Mover, Plan};
use crate::membership::{self, MemberInfo, MemberState, Membership, MembershipConfig, MembershipError};
use crate::ownership::{Ownership, OwnershipError, SlotState};
use crate::placement::{Member, NodeId, Placement};

/// How often the loop looks at the members when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// Least time between two turns of the loop.
const MIN_TURN: Duration = Duration::from_millis(50);
/// How long a node started with seeds may hear nobody before it says so.
const LONELY_AFTER: Duration = Duration::from_secs(10);
/// Least time a leaving node stays drained (holding nothing, handed nothing) before it stops:
/// a member that fenced a slot towards it just before it saw it leaving has gossiped that by
/// then, and the operator's `tim cluster leave` sees it drained.
const LEFT_GRACE: Duration = Duration::from_secs(2);
/// The same in gossip rounds, for slow gossip.
const LEFT_GRACE_ROUNDS: u32 = 6;
/// The store record of the member set.
const MEMBERS_RECORD: &str = "members";
/// The store record of the nodes that left the cluster.
const RETIRED_RECORD: &str = "retired";
/// The store record that says this node was removed from the cluster.
const REMOVED_RECORD: &str = "removed";

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

/// A node in a cluster: stopped with [`ClusterNode::shutdown`].
pub struct ClusterNode {
    cluster: Arc<Cluster>,
    membership: Arc<Membership>,
    stop: CancellationToken,
    tasks: TaskTracker,
    left: watch::Receiver<bool>,
}

impl ClusterNode {
    /// Joins (or, for the first node, founds) the cluster: loads the member set, serves the
    /// node's links, starts gossip and the loop. A node that never held a slot and has no
    /// seeds founds a new cluster and owns every slot; with seeds it waits for slots.
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
        if ownership.is_empty() && cfg.seeds.is_empty() && !leaving {
            info!("no seeds and no slots: founding a new cluster");
            ownership.bootstrap().await?;
        }
        let (mut members, retired) = load_members(&*store)?;
        if !leaving && !members.iter().any(|m| m.id == cfg.node) {
            members.push(Member { id: cfg.node, weight: cfg.weight });
            save_members(&*store, &members, &retired).await?;
        }
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let rpc_cfg = RpcConfig::new(cfg.cluster_id.clone(), cfg.node.0, cfg.rpc_key);
        let rpc = RpcClient::new(rpc_cfg.clone(), stop.clone(), tasks.clone());
        let placement = Placement::new(members.iter().copied(), 1);
        let cluster = Arc::new(Cluster::new(
            cfg.node,
            cfg.generation,
            store.clone(),
            ownership.clone(),
            placement,
            Some(rpc),
            cfg.timeouts,
        ));
        if leaving {
            info!("this node is leaving the cluster (its records say so): handing its slots over");
            cluster.resume_leaving();
        }
        let state = if leaving { MemberState::Leaving } else { MemberState::Ready };
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
            (membership::KEY_RETIRED, membership::format_nodes(retired.iter().copied())),
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
                interval: cfg.gossip_interval,
                initial,
            })
            .await?,
        );
        cluster.set_membership(membership.clone());
        cluster.retire_all(retired.iter().copied());
        let (left_tx, left) = watch::channel(false);
        let mover = Arc::new(Mover::new(cluster.clone(), store.clone(), cfg.migration_rate));
        let plan = Arc::new(Plan::default());
        for _ in 0..cfg.moves_at_once.max(1) {
            let (mover, plan, stop) = (mover.clone(), plan.clone(), stop.clone());
            tasks.spawn(mover.run(plan, stop).instrument(tracing::info_span!("mover", node = %cfg.node)));
        }
        let driver = Driver {
            cluster: cluster.clone(),
            membership: membership.clone(),
            store: store.clone(),
            members,
            retired,
            leaving: false,
            fenced_to: BTreeSet::new(),
            drained_since: None,
            alone: false,
            grace: LEFT_GRACE.max(cfg.gossip_interval * LEFT_GRACE_ROUNDS),
            left: Some(left_tx),
            seeded: !cfg.seeds.is_empty(),
            plan: plan.clone(),
            mover: mover.clone(),
            told_moves: (MoveTotals::default(), 0),
            moves_sampled: (MoveTotals::default(), Instant::now()),
            stop: stop.clone(),
        };
        tasks.spawn(driver.run().instrument(tracing::info_span!("cluster", node = %cfg.node)));
        Ok((Self { cluster: cluster.clone(), membership, stop, tasks, left }, cluster))
    }

    /// Resolves once this node has left the cluster: asked to leave, it handed every slot
    /// over. Pending forever otherwise.
    pub async fn left(&self) {
        let mut left = self.left.clone();
        if left.wait_for(|left| *left).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The members as gossip shows them.
    pub async fn members(&self) -> Vec<MemberInfo> {
        newest(self.membership.members().await)
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

/// The newest generation of each node.
pub(crate) fn newest(members: Vec<MemberInfo>) -> Vec<MemberInfo> {
    let mut by_node: HashMap<NodeId, MemberInfo> = HashMap::new();
    for m in members {
        match by_node.get(&m.node) {
            Some(known) if known.generation >= m.generation => {}
            _ => {
                by_node.insert(m.node, m);
            }
        }
    }
    let mut out: Vec<_> = by_node.into_values().collect();
    out.sort_by_key(|m| m.node);
    out
}

/// The member set and the retired nodes, from the store.
fn load_members(store: &dyn Store) -> Result<(Vec<Member>, BTreeSet<NodeId>), StoreError> {
    fn record<T: for<'de> serde::Deserialize<'de> + Default>(
        store: &dyn Store,
        name: &'static str,
    ) -> Result<T, StoreError> {
        match store.local(name)? {
            Some(raw) => postcard::from_bytes(&raw).map_err(|_| StoreError::Corrupt { table: name, id: 0 }),
            None => Ok(T::default()),
        }
    }
    Ok((record(store, MEMBERS_RECORD)?, record(store, RETIRED_RECORD)?))
}

/// Saves the member set and the retired nodes in one write.
async fn save_members(store: &dyn Store, members: &[Member], retired: &BTreeSet<NodeId>) -> Result<(), StoreError> {
    let corrupt = |table| move |_| StoreError::Corrupt { table, id: 0 };
    let members = postcard::to_stdvec(members).map_err(corrupt("members"))?;
    let retired = postcard::to_stdvec(retired).map_err(corrupt("retired"))?;
    let records = vec![(MEMBERS_RECORD.to_owned(), Some(members)), (RETIRED_RECORD.to_owned(), Some(retired))];
    store.write_raw(RawWrite::local(records)).await?;
    Ok(())
}

struct Driver {
    cluster: Arc<Cluster>,
    membership: Arc<Membership>,
    store: Arc<dyn Store>,
    members: Vec<Member>,
    /// Nodes that left the cluster: never members again.
    retired: BTreeSet<NodeId>,
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
    /// Set once this node has left; taken then.
    left: Option<watch::Sender<bool>>,
    seeded: bool,
    /// The hand-overs to make, taken by the movers.
    plan: Arc<Plan>,
    mover: Arc<Mover>,
    /// The hand-over totals and rate last gossiped.
    told_moves: (MoveTotals, u64),
    /// The totals at the last rate sample, and when.
    moves_sampled: (MoveTotals, Instant),
    stop: CancellationToken,
}

impl Driver {
    async fn run(mut self) {
        let mut changes = self.membership.changes().await;
        let mut owned = self.cluster.ownership().version();
        let started = Instant::now();
        let mut heard = !self.seeded;
        let mut seen_owned: HashMap<NodeId, u64> = HashMap::new();
        let mut told_leaving = 0;
        let mut leave = self.cluster.leave_requests();
        let mut removals = self.cluster.retired();
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
            if *leave.borrow_and_update() && !self.leaving {
                self.start_leaving().await;
            }
            let members = newest(self.membership.members().await);
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
            if let Err(e) = self.learn(&members).await {
                warn!(error = %ErrorChain(&e), "member set not saved");
            }
            // A retired node is a peer only while it is leaving (it passes on the slots still
            // handed to it); one that was removed and came back is nobody's peer.
            let peers = others.iter().filter(|m| !self.retired.contains(&m.node) || m.state == MemberState::Leaving);
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
        tracing::error!(
            "this node was removed from the cluster (`tim cluster remove`) while it was away: it stops, and stops \
             again whenever started on this data dir"
        );
        let record = RawWrite::local(vec![(REMOVED_RECORD.to_owned(), Some(Vec::new()))]);
        self.store.write_raw(record).await?;
        if let Some(left) = self.left.take() {
            left.send_replace(true);
        }
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
            Some(since) if since.elapsed() >= self.grace => {
                if let Some(left) = self.left.take() {
                    info!("every slot is handed over: this node has left the cluster and stops");
                    left.send_replace(true);
                }
            }
            _ => {}
        }
    }

    /// Brings the member set up to date with gossip: nodes seen for the first time join it,
    /// nodes that leave (or that any member says left) are retired for good; placement is
    /// recomputed when the set changed.
    async fn learn(&mut self, seen: &[MemberInfo]) -> Result<(), StoreError> {
        let mut retired = self.retired.clone();
        if self.leaving {
            retired.insert(self.cluster.node());
        }
        // Nodes an operator removed through this node.
        retired.extend(self.cluster.retired().borrow().iter().copied());
        // A leaving node lists itself: state `leaving` alone meant a restart, once.
        for m in seen {
            retired.extend(m.retired.iter().copied());
        }
        let mut members: Vec<Member> = self.members.iter().filter(|m| !retired.contains(&m.id)).copied().collect();
        for m in seen {
            if !retired.contains(&m.node) && !members.iter().any(|known| known.id == m.node) {
                info!(member = %m.node, rpc = %m.rpc, "new member");
                members.push(Member { id: m.node, weight: m.weight });
            }
        }
        if members == self.members && retired == self.retired {
            return Ok(());
        }
        let me = self.cluster.node();
        if retired.contains(&me) && !self.leaving {
            self.removed().await?;
        }
        for node in retired.difference(&self.retired) {
            info!(member = %node, "member left the cluster");
        }
        save_members(&*self.store, &members, &retired).await?;
        self.cluster.retire_all(retired.iter().copied());
        if retired != self.retired {
            self.membership.set(membership::KEY_RETIRED, membership::format_nodes(retired.iter().copied())).await;
        }
        let placement = Placement::new(members.iter().copied(), 1);
        info!(members = members.len(), version = %placement.version(), "placement changed");
        self.membership.set(membership::KEY_PLACEMENT, placement.version().to_string()).await;
        self.cluster.set_placement(placement);
        (self.members, self.retired) = (members, retired);
        Ok(())
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
            .filter(|m| m.live && m.state != MemberState::Stopping && !self.retired.contains(&m.node))
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
