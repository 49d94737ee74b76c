//! The engine's one door to data and to other nodes: every read, write and engine operation
//! names its slot and runs on the slot's owner: here, under the slot's guard, when this node
//! owns it, else over the owner's link.
//!
//! Each node keeps a routing table (slot → owner, epoch), seeded from the owners' own lists
//! ([`Cluster::refresh_routes`]) and corrected by refusals: a node that handed a slot over
//! names the receiver; a slot being handed over is waited for (up to `moving_wait`); a slot
//! nobody answers for is [`RouteError::Unavailable`], which clients get as a retryable error.
//! Calls are sent again only when they surely did not run (refused, or not sent): a write
//! whose answer was lost is not repeated here, so callers make writes safe to repeat.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tim_kv::{Batch, Cursor, ExportedRow, RawWrite, Row, RowId, Slot, Store, StoreError, TableId};
use tim_net::rpc::{Handler, RpcClient, RpcError};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::incarnation::Incarnation;
use crate::lease::Leases;
use crate::members::MemberSet;
use crate::membership::{MemberState, Membership};
use crate::ownership::{Ownership, Part, Refusal, SlotState};
use crate::placement::{NodeId, Placement};
use crate::routes::Routes;
use crate::wire::{self, DataOp, Reply, Request};

/// Why a call to a slot's owner failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The owner ran the operation and its store failed.
    #[error("store failed")]
    Store(#[source] StoreError),
    /// Another node ran the operation and it failed there (the node's own log has the cause);
    /// `duplicate` when a unique index refused a write.
    #[error("node {node} failed the call: {reason}")]
    Remote { node: NodeId, reason: String, duplicate: bool },
    /// Nobody serves the slot now (its owner is down or unreachable, or it is moving): retry.
    #[error("slot {slot} is unavailable: {reason}")]
    Unavailable { slot: u16, reason: String },
    /// The node is down or unreachable.
    #[error("node {node} is unreachable")]
    Unreachable {
        node: NodeId,
        #[source]
        source: RpcError,
    },
    /// A message between nodes did not encode or decode.
    #[error("bad node message: {0}")]
    Wire(String),
}

impl RouteError {
    /// Whether the client should simply try again later (no fault of the data).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Unreachable { .. })
    }

    /// Whether a unique index refused the write, here or on the owner.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Self::Store(StoreError::Duplicate { .. }) | Self::Remote { duplicate: true, .. })
    }
}

/// Why the engine did not answer a call from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// The engine is starting or stopping: the caller tries again (clients get 5102).
    Unready,
    /// The operation failed (the engine logged why).
    Failed(String),
}

impl From<String> for HandlerError {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

/// What the engine answers a call from another node with.
pub type EngineAnswer = Pin<Box<dyn Future<Output = Result<Bytes, HandlerError>> + Send>>;

/// The engine's side of calls from other nodes: an operation at a slot this node owns (run
/// under the slot's guard), or at this node.
pub trait EngineHandler: Send + Sync + 'static {
    fn at_slot(&self, slot: Slot, body: Bytes) -> EngineAnswer;
    fn at_node(&self, from: NodeId, body: Bytes) -> EngineAnswer;
    /// An operation at this node that must run in the order the caller sent it (deliveries
    /// to sessions): at once, without waiting for anything.
    fn at_node_now(&self, from: NodeId, body: Bytes) -> Result<Bytes, HandlerError>;
    /// The in-memory state of a slot this node hands over (the session directory of its
    /// users), taken with the slot fenced: it travels with the last part of the copy.
    fn slot_state(&self, slot: Slot) -> Bytes;
    /// Takes the state a slot arrived with, before the slot serves its first request here.
    fn adopt_slot_state(&self, slot: Slot, state: Bytes);
}

/// What this node knows of a member: the generation gossip shows, and whether it is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub generation: u64,
    pub live: bool,
}

/// How long calls wait.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// One call to another node.
    pub call: Duration,
    /// A slot being handed over (or a node starting), before the call fails as unavailable.
    pub moving: Duration,
    /// A node's lease ([`crate::lease`]).
    pub lease: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { call: Duration::from_secs(5), moving: Duration::from_secs(5), lease: Duration::from_secs(4) }
    }
}

/// The store record that says this node is leaving the cluster.
pub(crate) const LEAVING_RECORD: &str = "leaving";

/// Times a part of an export is asked again after its node did not answer.
const EXPORT_RETRIES: u32 = 3;

/// How long sessions of a node that gossip shows down (or that this node has not heard of
/// yet) still count ([`Cluster::runs`]).
pub const SESSION_GRACE: Duration = Duration::from_secs(10);

/// Least time between two rounds of asking the members what they own.
const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// Most owners a call follows before it gives up (each refusal names the next one).
const MAX_HOPS: usize = 4;

pub struct Cluster {
    node: NodeId,
    store: Arc<dyn Store>,
    ownership: Arc<Ownership>,
    placement: RwLock<Arc<Placement>>,
    /// Where the slots are.
    routes: Routes,
    /// The member set, as the node's loop keeps it.
    members: RwLock<MemberSet>,
    leases: Leases,
    /// The cluster incarnation of a member (none for a node that runs alone).
    incarnation: OnceLock<Arc<Incarnation>>,
    /// The link addresses of the other members.
    peers: RwLock<HashMap<NodeId, SocketAddr>>,
    /// Every member's generation and liveness, as gossip shows them.
    seen: RwLock<HashMap<NodeId, Seen>>,
    /// Since when each member gossip shows down has been down, as this node saw it.
    down_since: Mutex<HashMap<NodeId, Instant>>,
    /// When this node started (a member it has not heard of yet may be up).
    started: Instant,
    /// This node's generation.
    generation: u64,
    rpc: Option<RpcClient>,
    engine: OnceLock<Arc<dyn EngineHandler>>,
    membership: OnceLock<Arc<Membership>>,
    /// Set once an operator asked this node to leave the cluster.
    leave: watch::Sender<bool>,
    /// Set once this node knows what it owns (a member learns it from its peers at start).
    ready: watch::Sender<bool>,
    /// The nodes retired from the cluster, as far as this node knows (it only grows): kept
    /// by the loop, added to by a removal.
    retired: watch::Sender<BTreeSet<NodeId>>,
    /// Those of them removed by an operator (`tim cluster remove`), not left: never answered.
    removed: watch::Sender<BTreeSet<NodeId>>,
    /// When the members were last asked what they own.
    refreshed_at: Mutex<Option<Instant>>,
    timeouts: Timeouts,
    exports: crate::export::Exports,
    /// Calls to other nodes, from the request to its answer.
    calls: tim_kv::Latency,
}

/// What a node reports of the cluster for `/metrics`.
#[derive(Debug, Clone)]
pub struct ClusterFigures {
    /// Members this node knows (those that left for good excluded), and how many are live.
    pub members: u64,
    pub live: u64,
    pub slots_owned: u64,
    /// Slots and bytes this node handed over since it started.
    pub moved_slots: u64,
    pub moved_bytes: u64,
    pub calls: tim_kv::LatencySnapshot,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// A node's view of the cluster; `rpc` is `None` for a node that runs alone.
    pub fn new(
        node: NodeId,
        generation: u64,
        store: Arc<dyn Store>,
        ownership: Arc<Ownership>,
        placement: Placement,
        rpc: Option<RpcClient>,
        timeouts: Timeouts,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            node,
            ready: watch::Sender::new(rpc.is_none()),
            routes: Routes::load(&*store)?,
            members: RwLock::new(MemberSet::default()),
            leases: Leases::new(timeouts.lease),
            incarnation: OnceLock::new(),
            store,
            ownership,
            placement: RwLock::new(Arc::new(placement)),
            peers: RwLock::new(HashMap::new()),
            seen: RwLock::new(HashMap::new()),
            down_since: Mutex::new(HashMap::new()),
            started: Instant::now(),
            generation,
            rpc,
            engine: OnceLock::new(),
            membership: OnceLock::new(),
            leave: watch::Sender::new(false),
            retired: watch::Sender::new(BTreeSet::new()),
            removed: watch::Sender::new(BTreeSet::new()),
            refreshed_at: Mutex::new(None),
            timeouts,
            exports: Default::default(),
            calls: Default::default(),
        })
    }

    /// Resolves once this node knows what it owns: a member, once it learned from its peers
    /// what moved while it was away (a node that runs alone, at once).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub(crate) fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    pub(crate) fn leases(&self) -> &Leases {
        &self.leases
    }

    pub(crate) fn set_incarnation(&self, incarnation: Arc<Incarnation>) {
        let _ = self.incarnation.set(incarnation);
    }

    /// Sets the member set, as the node's loop keeps it.
    pub(crate) fn set_members(&self, members: MemberSet) {
        *write(&self.members) = members;
    }

    /// Whether this node may take a slot: a member must know (and keep) its cluster's
    /// incarnation first.
    fn may_take_slots(&self) -> bool {
        self.incarnation.get().is_none_or(|incarnation| incarnation.is_saved())
    }

    /// Sets the engine's handler of calls from other nodes (once, at start-up).
    pub fn set_engine(&self, engine: Arc<dyn EngineHandler>) {
        let _ = self.engine.set(engine);
    }

    /// Sets the node's gossip (once, at start-up), for status requests.
    pub(crate) fn set_membership(&self, membership: Arc<Membership>) {
        let _ = self.membership.set(membership);
    }

    /// Whether this node is a cluster member (it has node links), not a node that runs alone.
    pub fn is_member(&self) -> bool {
        self.rpc.is_some()
    }

    pub(crate) fn membership(&self) -> Option<&Arc<Membership>> {
        self.membership.get()
    }

    /// Adds nodes to the retired set (never removes any).
    pub(crate) fn retire_all(&self, nodes: impl IntoIterator<Item = NodeId>) {
        self.retired.send_if_modified(|retired| {
            let before = retired.len();
            retired.extend(nodes);
            retired.len() != before
        });
    }

    /// Adds nodes to the removed set, and so to the retired one (never removes any).
    pub(crate) fn remove_all(&self, nodes: impl IntoIterator<Item = NodeId> + Clone) {
        self.retire_all(nodes.clone());
        self.removed.send_if_modified(|removed| {
            let before = removed.len();
            removed.extend(nodes);
            removed.len() != before
        });
    }

    pub(crate) fn removed(&self) -> watch::Receiver<BTreeSet<NodeId>> {
        self.removed.subscribe()
    }

    pub(crate) fn is_removed(&self, node: NodeId) -> bool {
        self.removed.borrow().contains(&node)
    }

    pub(crate) fn retired(&self) -> watch::Receiver<BTreeSet<NodeId>> {
        self.retired.subscribe()
    }

    pub(crate) fn is_retired(&self, node: NodeId) -> bool {
        self.retired.borrow().contains(&node)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether this node is leaving the cluster (or has left it).
    pub fn leaving(&self) -> bool {
        *self.leave.borrow()
    }

    /// Starts leaving the cluster, recorded before it answers: refused while no other member
    /// is live and ready to take the slots, or while another live member is leaving (two
    /// members leaving at once could leave nobody). The number of slots this node owns now.
    pub async fn ask_to_leave(&self) -> Result<u32, String> {
        let Some(membership) = self.membership.get() else { return Err("this node runs alone".into()) };
        if !self.leaving() {
            let members = crate::membership::newest(membership.members().await);
            let others = || members.iter().filter(|m| m.node != self.node && m.live);
            if let Some(m) = others().find(|m| m.state == MemberState::Leaving) {
                return Err(format!("member {} is leaving now: ask again once it has left", m.node));
            }
            if !others().any(|m| m.state == MemberState::Ready) {
                return Err("no other member is live and ready to take this node's slots".into());
            }
            let record = RawWrite::local(vec![(LEAVING_RECORD.to_owned(), Some(Vec::new()))]);
            self.store.write_raw(record).await.map_err(|e| tim_net::report::ErrorChain(&e).to_string())?;
            self.leave.send_replace(true);
        }
        Ok(self.ownership.owned().len() as u32)
    }

    pub(crate) fn leave_requests(&self) -> watch::Receiver<bool> {
        self.leave.subscribe()
    }

    /// Marks this node as leaving, as its records say at start-up.
    pub(crate) fn resume_leaving(&self) {
        self.leave.send_replace(true);
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    pub fn placement(&self) -> Arc<Placement> {
        read(&self.placement).clone()
    }

    pub fn set_placement(&self, placement: Placement) {
        *write(&self.placement) = Arc::new(placement);
    }

    /// Sets the link addresses of the other members.
    pub fn set_peers(&self, peers: HashMap<NodeId, SocketAddr>) {
        *write(&self.peers) = peers;
    }

    /// Sets what gossip shows of the members.
    pub fn set_seen(&self, seen: HashMap<NodeId, Seen>) {
        {
            let mut down = lock(&self.down_since);
            down.retain(|node, _| seen.get(node).is_some_and(|s| !s.live));
            for (node, s) in &seen {
                if !s.live {
                    down.entry(*node).or_insert_with(Instant::now);
                }
            }
        }
        *write(&self.seen) = seen;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the sessions `node` reported in `generation` may still run: not once it runs
    /// a newer generation, left the cluster, or has been down (or unheard of) for longer than
    /// [`SESSION_GRACE`]. The grace keeps a session through a moment in which this node's
    /// view of its node lags (a node that joined, gossip that hiccups): a session dropped
    /// from a directory by mistake would miss its pushes until it logs in again.
    pub fn runs(&self, node: NodeId, generation: u64) -> bool {
        if node == self.node {
            return generation == self.generation;
        }
        if self.is_retired(node) {
            return false;
        }
        match read(&self.seen).get(&node) {
            Some(s) if s.generation > generation => false,
            Some(s) if s.live => true,
            Some(_) => lock(&self.down_since).get(&node).is_none_or(|since| since.elapsed() < SESSION_GRACE),
            None => self.started.elapsed() < SESSION_GRACE,
        }
    }

    /// Whether gossip shows `node` live now (this node always is).
    pub fn is_live(&self, node: NodeId) -> bool {
        node == self.node || read(&self.seen).get(&node).is_some_and(|s| s.live)
    }

    /// The other members that are live.
    pub fn live_peers(&self) -> Vec<NodeId> {
        read(&self.seen).iter().filter(|(n, s)| s.live && **n != self.node).map(|(n, _)| *n).collect()
    }

    /// The other members whose sessions may still run ([`Cluster::runs`]), live or not.
    pub fn session_peers(&self) -> Vec<NodeId> {
        let seen = read(&self.seen).clone();
        let peers: Vec<NodeId> = read(&self.peers).keys().copied().collect();
        peers.into_iter().filter(|n| seen.get(n).is_none_or(|s| self.runs(*n, s.generation))).collect()
    }

    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        read(&self.peers).get(&node).copied()
    }

    /// A table's id (the same on every node: it is part of the declarations).
    pub fn table(&self, name: &str) -> Option<TableId> {
        self.store.table(name)
    }

    /// The node that serves `slot`, as far as this node knows.
    ///
    /// A slot fenced here is asked here (it answers *moving* until the hand-over ends); a
    /// slot given away goes where it was given, unless a newer route is known.
    pub fn owner_of(&self, slot: Slot) -> Option<NodeId> {
        let route = || self.routes.get(slot);
        match self.ownership.state(slot) {
            Some(SlotState::Owned { .. } | SlotState::Fenced { .. }) => Some(self.node),
            Some(SlotState::Given { to, epoch }) => match route().filter(|(_, known)| *known > epoch) {
                Some((node, _)) => Some(node),
                None => {
                    // Given to a node that has left since: placement knows better.
                    let placement = self.placement();
                    let member = placement.members().iter().any(|m| m.id == to);
                    if member {
                        Some(to)
                    } else {
                        placement.owner(slot)
                    }
                }
            },
            None => route().map(|(node, _)| node).or_else(|| self.placement().owner(slot)),
        }
    }

    pub async fn get(&self, table: TableId, id: RowId) -> Result<Option<Row>, RouteError> {
        match self.at(id.slot(), Request::Data { slot: id.slot().0, op: DataOp::Get { table, id } }).await? {
            Reply::Row(row) => Ok(row),
            other => Err(failed(self.node, other)),
        }
    }

    /// The ids of up to `limit` rows of `slot` whose indexed `column` equals `value`.
    pub async fn ids(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<RowId>, RouteError> {
        let op = DataOp::Ids { table, column, value: Bytes::copy_from_slice(value), cursor, limit };
        match self.at(slot, Request::Data { slot: slot.0, op }).await? {
            Reply::Ids(ids) => Ok(ids),
            other => Err(failed(self.node, other)),
        }
    }

    /// Up to `limit` rows of `slot` whose indexed `column` equals `value`, from the cursor.
    pub async fn page(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<(RowId, Row)>, RouteError> {
        let op = DataOp::Page { table, column, value: Bytes::copy_from_slice(value), cursor, limit };
        match self.at(slot, Request::Data { slot: slot.0, op }).await? {
            Reply::Page(rows) => Ok(rows),
            other => Err(failed(self.node, other)),
        }
    }

    /// The oldest row of `slot` whose indexed `column` equals `value`.
    pub async fn find(
        &self,
        table: TableId,
        slot: Slot,
        column: usize,
        value: &[u8],
    ) -> Result<Option<(RowId, Row)>, RouteError> {
        Ok(self.page(table, slot, column, value, Cursor::OLDEST, 1).await?.into_iter().next())
    }

    /// Applies a batch on its slot's owner.
    pub async fn write(&self, batch: Batch) -> Result<Vec<RowId>, RouteError> {
        let slot = batch.slot();
        match self.at(slot, Request::Data { slot: slot.0, op: DataOp::Write(batch) }).await? {
            Reply::Written(ids) => Ok(ids),
            other => Err(failed(self.node, other)),
        }
    }

    /// Applies batches of several slots as one commit (atomic, one fsync) when this node owns
    /// every one of them, holding their guards meanwhile; the batches back when it does not,
    /// for the caller to write through their owners.
    pub async fn write_here(&self, batches: Vec<Batch>) -> Result<Result<Vec<RowId>, RouteError>, Vec<Batch>> {
        let slots: Vec<Slot> = batches.iter().map(Batch::slot).collect();
        match self.ownership.hold(&slots).await {
            Ok(held) => Ok(match held.run(self.store.write_all(batches)).await {
                Ok(written) => written.map_err(RouteError::Store),
                Err(refusal) => Err(RouteError::Unavailable { slot: refusal.slot(), reason: refusal.to_string() }),
            }),
            Err(_) => Err(batches),
        }
    }

    /// Defers a relaxed batch ([`tim_kv::Store::defer`]) when this node owns its slot, under
    /// the slot's guard: a fence that follows finds it committed first. The batch back when
    /// it is not deferred, for the caller to [`Cluster::write`].
    pub async fn defer_here(&self, batch: Batch) -> Result<(), Batch> {
        match self.ownership.hold(&[batch.slot()]).await {
            Ok(_held) => self.store.defer(batch),
            Err(_) => Err(batch),
        }
    }

    /// Resolves once the writes this node queued before it, deferred ones included, are
    /// committed: for a read that must see them.
    pub async fn settle(&self) -> Result<(), RouteError> {
        self.store.barrier().await.map(drop).map_err(RouteError::Store)
    }

    /// Runs an engine operation on the owner of `slot`.
    pub async fn call(&self, slot: Slot, body: Bytes) -> Result<Bytes, RouteError> {
        match self.at(slot, Request::AtSlot { slot: slot.0, body }).await? {
            Reply::Engine(body) => Ok(body),
            other => Err(failed(self.node, other)),
        }
    }

    /// Runs an engine operation on `node` (which may be this one).
    pub async fn call_node(&self, node: NodeId, body: Bytes) -> Result<Bytes, RouteError> {
        let request = Request::AtNode { body };
        let reply =
            if node == self.node { self.run(self.node, request).await } else { self.send(node, &request).await? };
        match reply {
            Reply::Engine(body) => Ok(body),
            other => Err(failed(node, other)),
        }
    }

    /// Runs an engine operation on `node` in the order of this node's other ordered calls
    /// to it ([`EngineHandler::at_node_now`]).
    pub async fn call_node_in_order(&self, node: NodeId, body: Bytes) -> Result<Bytes, RouteError> {
        if node == self.node {
            let Some(engine) = self.engine.get() else { return Err(failed(node, not_ready(0))) };
            return match engine_reply(engine.at_node_now(node, body), 0) {
                Reply::Engine(body) => Ok(body),
                other => Err(failed(node, other)),
            };
        }
        let (Some(rpc), Some(addr)) = (&self.rpc, self.peer_addr(node)) else {
            return Err(unknown_peer(node));
        };
        let request = wire::encode(&Request::AtNodeNow { body }).map_err(RouteError::Wire)?;
        let raw = rpc
            .call_in_order(addr, Some(node.0), request, self.timeouts.call)
            .await
            .map_err(|source| RouteError::Unreachable { node, source })?;
        match wire::decode(&raw).map_err(RouteError::Wire)? {
            Reply::Engine(body) => Ok(body),
            other => Err(failed(node, other)),
        }
    }

    /// Sends a part of a copy of a slot to its next owner; `Ok(false)` when it owned the slot
    /// already.
    pub(crate) async fn send_part(&self, to: NodeId, slot: Slot, part: Part, state: Bytes) -> Result<bool, RouteError> {
        match self.send(to, &Request::Import { slot: slot.0, part, state }).await? {
            Reply::Imported(done) => Ok(done),
            other => Err(failed(to, other)),
        }
    }

    /// The engine's in-memory state of a slot handed over now (empty without an engine).
    pub(crate) fn slot_state(&self, slot: Slot) -> Bytes {
        self.engine.get().map(|engine| engine.slot_state(slot)).unwrap_or_default()
    }

    /// Reads `slot` for an export: its rows as one snapshot on its owner, sent into `rows`
    /// in parts (sealed columns opened). Returns the number of rows.
    pub async fn export_slot<T: From<Vec<ExportedRow>>>(
        &self,
        slot: Slot,
        rows: &mpsc::Sender<T>,
    ) -> Result<u64, RouteError> {
        let stream = rand::random::<u64>();
        let (mut node, mut count) = (None, 0u64);
        for part in 0u32.. {
            let request = Request::Export { stream, slot: slot.0, part };
            let reply = match node {
                None => self.at(slot, request).await?,
                Some(node) => self.ask_again(node, &request).await?,
            };
            let Reply::Exported { node: from, rows: part_rows, last } = reply else {
                return Err(failed(node.unwrap_or(self.node()), reply));
            };
            node = Some(from);
            count += part_rows.len() as u64;
            if !part_rows.is_empty() && rows.send(T::from(part_rows)).await.is_err() {
                return Err(RouteError::Unavailable { slot: slot.0, reason: "the export was cancelled".into() });
            }
            if last {
                break;
            }
        }
        Ok(count)
    }

    /// Sends `request` to `node` (this one included), asking again when it went unanswered.
    async fn ask_again(&self, node: NodeId, request: &Request) -> Result<Reply, RouteError> {
        let mut tries = 0;
        loop {
            let result = if node == self.node() {
                Ok(self.run(node, request.clone()).await)
            } else {
                self.send(node, request).await
            };
            match result {
                Err(RouteError::Unreachable { .. }) if tries < EXPORT_RETRIES => tries += 1,
                Ok(Reply::StoreFailed(e)) => return Err(RouteError::Store(e)),
                Ok(Reply::Failed { reason, duplicate }) => return Err(RouteError::Remote { node, reason, duplicate }),
                other => return other,
            }
        }
    }

    /// Learns every live member's owned slots from the member itself; the members whose
    /// lists it got. A slot this node holds at a lower epoch than a member owns it at is
    /// superseded here ([`Cluster::learn_owner`]).
    ///
    /// At most once per [`REFRESH_EVERY`]: callers that find a node down all at once ask once.
    pub async fn refresh_routes(&self) -> Vec<NodeId> {
        {
            let mut last = lock(&self.refreshed_at);
            if last.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return Vec::new();
            }
            *last = Some(Instant::now());
        }
        let peers: Vec<NodeId> = read(&self.peers).keys().copied().collect();
        let seen = read(&self.seen).clone();
        let mut fetched = Vec::with_capacity(peers.len());
        for node in peers.into_iter().filter(|n| seen.get(n).is_none_or(|s| s.live)) {
            match self.send(node, &Request::Owned).await {
                Ok(Reply::Owned(slots)) => {
                    for (slot, epoch) in slots {
                        self.learn_owner(Slot(slot), node, epoch).await;
                    }
                    fetched.push(node);
                }
                Ok(other) => debug!(%node, reply = ?other, "unexpected answer to an owned-slots request"),
                Err(e) => debug!(%node, error = %e, "owned slots not fetched"),
            }
        }
        fetched
    }

    /// Learns that `node` owns (or owned) `slot` at `epoch`. A slot this node owns (or hands
    /// over) at a lower epoch was taken without it (an adoption, or this node restarted from
    /// an old copy of its data dir): it stops serving it before it answers another request
    /// for it.
    pub(crate) async fn learn_owner(&self, slot: Slot, node: NodeId, epoch: u64) {
        if node == self.node {
            return;
        }
        self.routes.learn(slot, node, epoch);
        match self.ownership.supersede(slot, node, epoch).await {
            Ok(true) => tracing::warn!(
                slot = slot.0,
                owner = %node,
                epoch,
                "slot superseded: another member owns it at a higher epoch (an adoption, or this node's data is an \
                 old copy); this node no longer serves it"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(slot = slot.0, error = %tim_net::report::ErrorChain(&e), "a superseded slot was not given up")
            }
        }
    }

    /// Learns the owned slots and the newest owners `peer` knows, superseding what must be;
    /// whether `peer` answered within `timeout`.
    pub(crate) async fn learn_epochs(&self, peer: NodeId, timeout: Duration) -> bool {
        match self.send_within(peer, &Request::Epochs, timeout).await {
            Ok(Reply::Epochs { owned, newest }) => {
                let owned = owned.into_iter().map(|(slot, epoch)| (slot, peer, epoch));
                for (slot, node, epoch) in owned.chain(newest) {
                    self.learn_owner(Slot(slot), node, epoch).await;
                }
                true
            }
            Ok(other) => {
                debug!(%peer, reply = ?other, "unexpected answer to an epochs request");
                false
            }
            Err(e) => {
                debug!(%peer, error = %e, "epochs not fetched");
                false
            }
        }
    }

    /// Pings `peer` for this node's lease; whether it answered.
    pub(crate) async fn ping(&self, peer: NodeId, timeout: Duration) -> bool {
        matches!(self.send_within(peer, &Request::Ping, timeout).await, Ok(Reply::Pong))
    }

    /// Runs `request` on the owner of `slot`, following refusals.
    pub(crate) async fn at(&self, slot: Slot, request: Request) -> Result<Reply, RouteError> {
        let started = Instant::now();
        // A slot is fenced for the last round of its move, a few ms: look again soon.
        let mut pause = Duration::from_millis(2);
        let mut hops = 0;
        let mut refreshed = false;
        loop {
            let target = self.owner_of(slot);
            let reply = match target {
                Some(node) if node == self.node => self.run(self.node, request.clone()).await,
                Some(node) => match self.send(node, &request).await {
                    Ok(reply) => reply,
                    // Not sent: nothing ran, and the route may be stale (the node left, or
                    // restarted and this one does not know where its slots went): ask the
                    // members what they own.
                    Err(RouteError::Unreachable { source, .. }) if source.not_sent() && !refreshed => {
                        self.routes.forget(slot);
                        refreshed = true;
                        self.refresh_routes().await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => return Err(RouteError::Unavailable { slot: slot.0, reason: "no member owns it".into() }),
            };
            match reply {
                Reply::Refused(Refusal::NotOwner { moved_to: Some((node, epoch)), .. }) if hops < MAX_HOPS => {
                    hops += 1;
                    self.learn_owner(slot, node, epoch).await;
                }
                Reply::Refused(Refusal::NotOwner { moved_to: None, .. }) if !refreshed => {
                    // The guess was wrong (a new member that does not hold the slot yet):
                    // ask the members what they own.
                    refreshed = true;
                    self.routes.forget(slot);
                    self.refresh_routes().await;
                }
                // Asked again after the members said what they own: nobody owns the slot
                // now, so it is on its way (fenced on its sender, not yet owned by the next);
                // or its owner is starting, or waits for its lease.
                Reply::Refused(
                    refusal @ (Refusal::Moving { .. }
                    | Refusal::Unready { .. }
                    | Refusal::NotOwner { moved_to: None, .. }),
                ) if started.elapsed() < self.timeouts.moving => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                    if matches!(refusal, Refusal::NotOwner { .. }) {
                        self.refresh_routes().await;
                    }
                }
                Reply::Refused(refusal) => {
                    return Err(RouteError::Unavailable { slot: slot.0, reason: refusal.to_string() });
                }
                Reply::Failed { reason, duplicate } => {
                    return Err(RouteError::Remote { node: target.unwrap_or(self.node), reason, duplicate });
                }
                Reply::StoreFailed(e) => return Err(RouteError::Store(e)),
                reply => return Ok(reply),
            }
        }
    }

    /// Sends a request to another node.
    pub(crate) async fn send(&self, node: NodeId, request: &Request) -> Result<Reply, RouteError> {
        self.send_within(node, request, self.timeouts.call).await
    }

    /// Sends a request to another node, answered within `timeout`.
    pub(crate) async fn send_within(
        &self,
        node: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, RouteError> {
        let Some(rpc) = &self.rpc else {
            return Err(RouteError::Unavailable { slot: 0, reason: "this node runs alone".into() });
        };
        let Some(addr) = self.peer_addr(node) else {
            return Err(unknown_peer(node));
        };
        let body = wire::encode(request).map_err(RouteError::Wire)?;
        let started = Instant::now();
        let raw = rpc.call(addr, Some(node.0), body, timeout).await;
        self.calls.observe(started.elapsed());
        let raw = raw.map_err(|source| RouteError::Unreachable { node, source })?;
        wire::decode(&raw).map_err(RouteError::Wire)
    }

    /// The store's figures, for `/metrics`.
    pub fn store_figures(&self) -> tim_kv::StoreFigures {
        self.store.figures()
    }

    /// The members as gossip shows them (the newest generation of each); `None` for a node
    /// that runs alone, without membership.
    pub async fn members(&self) -> Option<Vec<crate::membership::MemberInfo>> {
        Some(crate::membership::newest(self.membership.get()?.members().await))
    }

    /// The cluster as this node sees it, for `/metrics`.
    pub async fn figures(&self) -> ClusterFigures {
        let slots_owned = self.ownership.owned().len() as u64;
        let calls = self.calls.snapshot();
        let Some(membership) = self.membership.get() else {
            return ClusterFigures { members: 1, live: 1, slots_owned, moved_slots: 0, moved_bytes: 0, calls };
        };
        let retired = self.retired.borrow().clone();
        let members: Vec<_> = crate::membership::newest(membership.members().await)
            .into_iter()
            .filter(|m| !retired.contains(&m.node))
            .collect();
        let me = members.iter().find(|m| m.node == self.node);
        ClusterFigures {
            members: members.len() as u64,
            live: members.iter().filter(|m| m.live).count() as u64,
            slots_owned,
            moved_slots: me.map_or(0, |m| m.moved_slots),
            moved_bytes: me.map_or(0, |m| m.moved_bytes),
            calls,
        }
    }

    /// Answers a request, from another node or this one.
    pub(crate) async fn run(&self, from: NodeId, request: Request) -> Reply {
        match request {
            Request::Data { slot, op } => {
                let served = self.ownership.serve(Slot(slot), self.data(Slot(slot), op)).await;
                served.unwrap_or_else(Reply::Refused)
            }
            Request::AtSlot { slot, body } => {
                let Some(engine) = self.engine.get() else { return not_ready(slot) };
                match self.ownership.serve(Slot(slot), engine.at_slot(Slot(slot), body)).await {
                    Ok(answer) => engine_reply(answer, slot),
                    Err(refusal) => Reply::Refused(refusal),
                }
            }
            Request::AtNode { body } => {
                let Some(engine) = self.engine.get() else { return not_ready(0) };
                engine_reply(engine.at_node(from, body).await, 0)
            }
            Request::Import { .. } | Request::Adopt { .. } if !self.may_take_slots() => Reply::Failed {
                reason: "this node does not know its cluster incarnation yet: try again".into(),
                duplicate: false,
            },
            Request::Import { slot, part, state } => {
                let last = part.last;
                let adopt = || {
                    if let Some(engine) = self.engine.get().filter(|_| !state.is_empty()) {
                        engine.adopt_slot_state(Slot(slot), state);
                    }
                };
                match self.ownership.receive(Slot(slot), part, adopt).await {
                    Ok(imported) => {
                        if imported && last {
                            self.routes.forget(Slot(slot));
                        }
                        Reply::Imported(imported)
                    }
                    Err(e) => Reply::Failed { reason: tim_net::report::ErrorChain(&e).to_string(), duplicate: false },
                }
            }
            Request::AtNodeNow { body } => now_reply(self, from, body),
            Request::Export { stream, slot, part } => {
                self.exports.part(self.node, &self.store, &self.ownership, stream, Slot(slot), part).await
            }
            Request::Owned => Reply::Owned(self.ownership.owned().into_iter().map(|(s, e)| (s.0, e)).collect()),
            Request::Status => match self.members().await {
                Some(members) => Reply::Status(members),
                None => Reply::Failed { reason: "this node runs alone".into(), duplicate: false },
            },
            Request::Holdings => Reply::Holdings(self.holdings()),
            Request::Remove { nodes, force } => match self.remove(nodes, force).await {
                Ok(cost) => Reply::Removed(cost),
                Err(reason) => Reply::Failed { reason, duplicate: false },
            },
            Request::Ping if self.is_removed(from) => {
                Reply::Failed { reason: format!("node {from} was removed from the cluster"), duplicate: false }
            }
            Request::Ping => {
                self.leases.answer(from);
                Reply::Pong
            }
            Request::Silence { node } => Reply::Silence { ms: self.leases.silence(node).as_millis() as u64 },
            Request::Epochs => Reply::Epochs {
                owned: self.ownership.owned().into_iter().map(|(s, e)| (s.0, e)).collect(),
                newest: self.routes.newest(),
            },
            Request::Members => {
                let members = read(&self.members);
                Reply::Members {
                    members: members.members.clone(),
                    retired: members.retired.iter().copied().collect(),
                    removed: members.removed.iter().copied().collect(),
                }
            }
            Request::Adopt { slot, epoch, from: removed } => self.adopt(Slot(slot), epoch, removed).await,
            Request::Leave => match self.ask_to_leave().await {
                Ok(slots) => Reply::Leaving { node: self.node, slots },
                Err(reason) => Reply::Failed { reason, duplicate: false },
            },
        }
    }

    /// Owns `slot` from `epoch` on, its owner `removed` being retired here.
    pub(crate) async fn adopt(&self, slot: Slot, epoch: u64, removed: NodeId) -> Reply {
        if !self.is_retired(removed) {
            return Reply::Failed { reason: format!("node {removed} is not retired here yet"), duplicate: false };
        }
        match self.ownership.adopt(slot, epoch, removed).await {
            Ok(()) => {
                self.routes.forget(slot);
                Reply::Adopted
            }
            Err(e) => Reply::Failed { reason: tim_net::report::ErrorChain(&e).to_string(), duplicate: false },
        }
    }

    /// A data operation on a slot owned here (its guard held by the caller). A store error
    /// stays typed for a caller on this node ([`Reply::StoreFailed`], never sent).
    async fn data(&self, slot: Slot, op: DataOp) -> Reply {
        let store = &self.store;
        let result = match op {
            DataOp::Get { table, id } => tim_kv::read(store, move |s| s.get(table, id)).await.map(Reply::Row),
            DataOp::Ids { table, column, value, cursor, limit } => {
                tim_kv::read(store, move |s| s.ids(table, slot, column, &value, cursor, limit)).await.map(Reply::Ids)
            }
            DataOp::Page { table, column, value, cursor, limit } => {
                tim_kv::read(store, move |s| s.page(table, slot, column, &value, cursor, limit)).await.map(Reply::Page)
            }
            DataOp::Write(batch) => store.write(batch).await.map(Reply::Written),
        };
        result.unwrap_or_else(Reply::StoreFailed)
    }
}

fn unknown_peer(node: NodeId) -> RouteError {
    let addr = SocketAddr::from(([0, 0, 0, 0], 0));
    RouteError::Unreachable { node, source: RpcError::Connect { addr, reason: "address unknown".into() } }
}

/// The reply of an engine operation at this node.
fn now_reply(cluster: &Cluster, from: NodeId, body: Bytes) -> Reply {
    match cluster.engine.get() {
        Some(engine) => engine_reply(engine.at_node_now(from, body), 0),
        None => not_ready(0),
    }
}

/// The reply of an engine's answer about `slot` (0: about the node).
fn engine_reply(answer: Result<Bytes, HandlerError>, slot: u16) -> Reply {
    match answer {
        Ok(body) => Reply::Engine(body),
        Err(HandlerError::Unready) => not_ready(slot),
        Err(HandlerError::Failed(reason)) => Reply::Failed { reason, duplicate: false },
    }
}

/// The engine is starting or stopping: retryable.
fn not_ready(slot: u16) -> Reply {
    Reply::Refused(Refusal::Unready { slot })
}

/// The error of an answer that is not the one the call expects.
pub(crate) fn failed(node: NodeId, reply: Reply) -> RouteError {
    match reply {
        Reply::Failed { reason, duplicate } => RouteError::Remote { node, reason, duplicate },
        Reply::StoreFailed(e) => RouteError::Store(e),
        Reply::Refused(refusal) => RouteError::Unavailable { slot: refusal.slot(), reason: refusal.to_string() },
        other => RouteError::Wire(format!("unexpected answer {other:?}")),
    }
}

/// The calls of other nodes, on the node's link listener.
pub struct Calls(pub Arc<Cluster>);

impl Handler for Calls {
    fn handle_in_order(&self, from: u64, body: Bytes) -> Result<Bytes, String> {
        let Request::AtNodeNow { body } = wire::decode(&body)? else {
            return Err("only node operations come in order".into());
        };
        wire::encode(&now_reply(&self.0, NodeId(from), body))
    }

    fn handle(&self, from: u64, body: Bytes) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> {
        let cluster = self.0.clone();
        Box::pin(async move {
            let request: Request = wire::decode(&body)?;
            let reply = match cluster.run(NodeId(from), request).await {
                // A store error crosses the link as text; a duplicate stays recognizable.
                Reply::StoreFailed(e) => {
                    Reply::Failed { duplicate: matches!(e, StoreError::Duplicate { .. }), reason: e.to_string() }
                }
                reply => reply,
            };
            wire::encode(&reply)
        })
    }
}

#[cfg(test)]
mod tests {
    use tim_kv::{RocksStore, SealKey, StoreConfig};

    use super::*;
    use crate::placement::Member;

    /// A node that runs alone and owns every slot, without an engine yet.
    async fn alone() -> Cluster {
        let store: Arc<dyn Store> =
            Arc::new(RocksStore::open(&StoreConfig::in_memory(), SealKey::new(&[1; 32]), &[]).unwrap());
        let ownership = Arc::new(Ownership::load(store.clone()).unwrap());
        ownership.bootstrap(Vec::new()).await.unwrap();
        let placement = Placement::new([Member { id: NodeId(1), weight: 1 }], 1);
        let timeouts = Timeouts { moving: Duration::from_millis(50), ..Timeouts::default() };
        Cluster::new(NodeId(1), 1, store, ownership, placement, None, timeouts).unwrap()
    }

    struct Stopping;

    impl EngineHandler for Stopping {
        fn at_slot(&self, _: Slot, _: Bytes) -> EngineAnswer {
            Box::pin(std::future::ready(Err(HandlerError::Unready)))
        }
        fn at_node(&self, _: NodeId, _: Bytes) -> EngineAnswer {
            Box::pin(std::future::ready(Err(HandlerError::Unready)))
        }
        fn at_node_now(&self, _: NodeId, _: Bytes) -> Result<Bytes, HandlerError> {
            Err(HandlerError::Unready)
        }
        fn slot_state(&self, _: Slot) -> Bytes {
            Bytes::new()
        }
        fn adopt_slot_state(&self, _: Slot, _: Bytes) {}
    }

    /// A node whose engine is not running yet (starting) or any more (stopping) answers
    /// operations as retryable: clients get 5102, never a database error.
    #[tokio::test]
    async fn an_engine_that_is_not_running_is_a_retryable_condition() {
        let cluster = alone().await;
        let starting = cluster.call(Slot(3), Bytes::from_static(b"op")).await.unwrap_err();
        assert!(starting.is_transient(), "{starting:?}");
        let (node, body) = (cluster.node(), Bytes::from_static(b"op"));
        assert!(cluster.call_node_in_order(node, body.clone()).await.unwrap_err().is_transient());
        cluster.set_engine(Arc::new(Stopping));
        let stopping = cluster.call(Slot(3), body.clone()).await.unwrap_err();
        assert!(stopping.is_transient(), "{stopping:?}");
        assert!(cluster.call_node(node, body.clone()).await.unwrap_err().is_transient());
        assert!(cluster.call_node_in_order(node, body).await.unwrap_err().is_transient());
    }

    /// A node whose lease ended refuses its slots as retryable, and serves them again once
    /// the gate opens.
    #[tokio::test]
    async fn a_closed_gate_refuses_every_slot_as_retryable() {
        let cluster = alone().await;
        cluster.ownership().gate().close();
        let refused = cluster.get(TableId(1), RowId::new(Slot(5), 1)).await.unwrap_err();
        assert!(refused.is_transient(), "{refused:?}");
        cluster.ownership().gate().open_until(None);
        assert!(matches!(cluster.get(TableId(1), RowId::new(Slot(5), 1)).await, Err(RouteError::Store(_))));
    }
}
