//! A node as a value: [`start`] builds it from its config and returns a [`NodeHandle`] that
//! stops it, so one process can run several nodes (tests) and the `tim serve` command is a
//! thin loop around one ([`run`]).

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tim_kv::{RocksStore, SealKey, StoreConfig};
use tim_net::report::ErrorChain;
use tim_shard::{Cluster, ClusterNode, Ended, JoinConfig, Load, Member, NodeId, Ownership, Placement, Timeouts};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::ServeConfig;
use crate::listeners::inbound::{LargeFrames, MeteredListener};
use crate::model::ident::Ids;
use crate::model::tables;
use crate::seam::{Dispatch, Service};
use crate::secret::Secret;
use crate::server::Server;
use crate::services::accounts::Accounts;
use crate::services::chat_log::ChatLog;
use crate::services::directory::{DeviceLimits, Directory};
use crate::services::groups::{GroupLimits, Groups};
use crate::services::history::History;
use crate::services::inbox::Inbox;
use crate::services::offline::{OfflineLimits, OfflineQueue};
use crate::services::push::Push;
use crate::services::restore::Restorer;
use crate::services::rooms::Rooms;
use crate::services::rosters::Rosters;
use crate::services::tokens::Tokens;
use crate::session::registry::{Limits, Sessions};

/// A running node.
pub struct NodeHandle {
    client_addr: SocketAddr,
    /// The admin listener's address, unless it is off.
    admin_addr: Option<SocketAddr>,
    server: Arc<Server>,
    store: Arc<RocksStore>,
    serving: JoinHandle<std::io::Result<()>>,
    /// The node's links and gossip, when it is a cluster member.
    member: Option<Membership>,
}

/// A cluster member's parts.
struct Membership {
    node: ClusterNode,
    rpc_addr: SocketAddr,
    gossip_addr: SocketAddr,
}

impl NodeHandle {
    /// The address the client listener is bound to.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The line `tim serve` prints when the node is up: its bound addresses.
    pub fn ready_line(&self) -> String {
        let mut line = format!("tim ready listen={}", self.client_addr);
        if let Some(admin) = self.admin_addr {
            line.push_str(&format!(" admin={admin}"));
        }
        if let Some(m) = &self.member {
            line.push_str(&format!(" rpc={} gossip={} node={}", m.rpc_addr, m.gossip_addr, self.server.data.node()));
        }
        line
    }

    /// Resolves once the node stopped being a member of its cluster: it left (`tim cluster
    /// leave`), or it must not go on (removed, or of another cluster); it should stop then.
    /// Pending forever for a node that runs alone or stays.
    pub async fn ended(&self) -> Ended {
        match &self.member {
            Some(member) => member.node.ended().await,
            None => std::future::pending().await,
        }
    }

    /// Starts leaving the cluster for good, as `tim cluster leave` does: the node hands its
    /// slots to the others, then [`NodeHandle::left`] resolves. The slots it owns now.
    pub async fn leave(&self) -> anyhow::Result<u32> {
        match &self.member {
            Some(_) => self.server.data.ask_to_leave().await.map_err(|why| anyhow::anyhow!(why)),
            None => Err(anyhow::anyhow!("this node runs alone")),
        }
    }

    /// Stops the node: sessions get `--shutdown-grace` to close, the listener and the node's
    /// tasks end, and the store is flushed and closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let NodeHandle { server, store, serving, member, .. } = self;
        server.shutdown.cancel();
        server.tasks.close();
        if tokio::time::timeout(Duration::from_secs(server.cfg.shutdown_grace), server.tasks.wait()).await.is_err() {
            warn!("sessions outlived the shutdown grace");
        }
        match serving.await {
            Ok(Err(e)) => warn!(error = %ErrorChain(&e), "listener ended with an error"),
            Err(e) => warn!(error = %ErrorChain(&e), "listener task failed"),
            Ok(Ok(())) => {}
        }
        // Gossip last: peers go on routing to this node until its sessions are closed.
        if let Some(member) = member {
            member.node.shutdown().await;
        }
        store.flush()?;
        info!("stopped");
        Ok(())
    }
}

/// Opens the node's store, binds its listener and starts serving.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<NodeHandle> {
    let secret = Secret::load_or_create(cfg.secret_file.as_deref(), &cfg.data_dir)?;
    let mut store_cfg = StoreConfig::new(cfg.data_dir.join("store"));
    store_cfg.sync = cfg.sync;
    store_cfg.cache_bytes = cfg.cache_mb << 20;
    store_cfg.max_open_files = cfg.max_open_files;
    let store = Arc::new(open_store(&store_cfg, &secret)?);
    let node_id = tim_shard::identity::load_or_create(&cfg.data_dir)
        .with_context(|| format!("reading the node id in {}", cfg.data_dir.display()))?;
    let generation = tim_shard::identity::next_generation(&cfg.data_dir)
        .with_context(|| format!("keeping the generation in {}", cfg.data_dir.display()))?;
    let ownership = Arc::new(Ownership::load(store.clone())?);
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let client_addr = listener.local_addr()?;
    let admin_listener = match crate::config::admin_listen_addr(&cfg.admin_listen).map_err(|e| anyhow::anyhow!(e))? {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("binding the admin listener to {addr}"))?)
        }
        None => None,
    };
    let admin_addr = admin_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let (data, member) = match cfg.gossip_listen {
        None => {
            // A node running alone owns every slot from its first start.
            if ownership.is_empty() {
                ownership.bootstrap(Vec::new()).await?;
            }
            let placement = Placement::new([Member { id: node_id, weight: cfg.weight }], 1);
            let cluster =
                Cluster::new(node_id, generation, store.clone(), ownership, placement, None, Timeouts::default())?;
            (Arc::new(cluster), None)
        }
        Some(gossip_listen) => {
            let me = Identity { node: node_id, generation, client: client_addr };
            let (cluster, member) = join(&cfg, &secret, me, gossip_listen, store.clone(), ownership).await?;
            (cluster, Some(member))
        }
    };
    let ids = Ids::new(cfg.node_ids, secret.derive("tim-rs ids"), cfg.tim_salt.clone());
    let argon2 = argon2::Params::new(cfg.argon2_memory_kib, cfg.argon2_passes, 1, None)
        .map_err(|e| anyhow::anyhow!("argon2 settings: {e}"))?;
    let hash_concurrency = match cfg.hash_concurrency {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let tokens = Tokens::new(Duration::from_secs(cfg.token_timeout), cfg.max_tokens);
    let tasks = TaskTracker::new();
    let accounts = Arc::new(Accounts::new(data.clone(), ids, argon2, hash_concurrency, tokens)?);
    let offline = Arc::new(OfflineQueue::new(
        data.clone(),
        OfflineLimits { max_entries: cfg.offline_max_entries, max_age: Duration::from_secs(cfg.offline_max_age) },
    )?);
    let rosters = Arc::new(Rosters::new(data.clone(), cfg.max_roster)?);
    let groups = Arc::new(Groups::new(
        data.clone(),
        GroupLimits { max_members: cfg.max_group_members, max_groups_per_user: cfg.max_groups_per_user },
    )?);
    let history = Arc::new(History::new(data.clone())?);
    let offline_max_age = Duration::from_secs(cfg.offline_max_age);
    let chat_log = Arc::new(ChatLog::new(data.clone(), cfg.offline_max_entries, offline_max_age)?);
    let inbox = Arc::new(Inbox::new(data.clone(), offline_max_age)?);
    let bans = crate::services::bans::Bans::new(data.clone())?;
    let limits = Limits { connect_limit: cfg.connect_limit, account_rate: cfg.account_rate() };
    let sessions = Arc::new(Sessions::new(limits, data.node(), data.generation()));
    let device_limits = DeviceLimits {
        device_limit: cfg.device_limit,
        devicetype_limit: cfg.devicetype_limit,
        auth_min: Duration::from_secs(cfg.auth_min_unix),
    };
    let directory = Arc::new(Directory::new(data.clone(), sessions.clone(), device_limits, tasks.clone()));
    let push = Arc::new(Push::new(data.clone(), directory.clone(), sessions.clone(), offline.clone(), tasks.clone()));
    let rooms = Arc::new(Rooms::new(data.clone(), sessions.clone(), Duration::from_secs(cfg.vroom_idle)));
    let restorer = Arc::new(Restorer::new(
        data.clone(),
        offline.clone(),
        chat_log.clone(),
        inbox.clone(),
        rosters.clone(),
        groups.clone(),
    ));
    let dispatch = Dispatch::default()
        .serve(Service::Inbox, &inbox)
        .serve(Service::ChatLog, &chat_log)
        .serve(Service::Push, &push)
        .serve(Service::Rosters, &rosters)
        .serve(Service::Groups, &groups)
        .serve(Service::FriendPlaces, rosters.roster_table())
        .serve(Service::MemberPlaces, groups.member_table())
        .serve(Service::Directory, &directory)
        .serve(Service::Accounts, &accounts)
        .serve(Service::Rooms, &rooms)
        .serve(Service::Restore, &restorer)
        .serve(Service::Sessions, &sessions)
        .carry(&directory);
    data.set_engine(Arc::new(dispatch));
    let server = Arc::new(Server {
        data,
        accounts,
        bans,
        sessions,
        directory,
        offline,
        rosters,
        groups,
        rooms,
        history,
        chat_log,
        inbox,
        push,
        restorer,
        metrics: Default::default(),
        shutdown: CancellationToken::new(),
        tasks,
        cfg,
    });

    info!(node = %node_id, addr = %client_addr, data_dir = %server.cfg.data_dir.display(), sync = server.cfg.sync, "tim node listening");
    let large_frames = LargeFrames::new(server.cfg.large_frames, Duration::from_secs(server.cfg.large_frame_timeout));
    let listener = MeteredListener::new(listener, large_frames);

    server.tasks.spawn(follow_slots(server.clone()));
    // Idle rooms are looked for every tenth of the idle time (at least every second).
    let sweep_every = Duration::from_secs(server.cfg.vroom_idle / 10).max(Duration::from_secs(1));
    server.tasks.spawn(crate::services::rooms::sweep_every(
        Arc::downgrade(&server.rooms),
        sweep_every,
        server.shutdown.clone(),
    ));
    if let Some(member) = &member {
        let counted = Arc::downgrade(&server);
        member.node.gossip_load(Duration::from_secs(2), move || {
            counted.upgrade().map_or(Load::default(), |server| Load {
                sessions: server.sessions.online() as u64,
                messages: server.metrics.load.load(Ordering::Relaxed),
            })
        });
    }
    if let Some(admin_listener) = admin_listener {
        let fingerprint = tim_net::hex::encode(secret.derive("tim-rs fingerprint").get(..8).unwrap_or_default());
        let admins = crate::admin::admins::Admins::new(server.data.clone(), secret.derive("tim-rs admin tokens"))?;
        let key = secret.derive("tim-rs admin");
        let proofs = Default::default();
        let admin = Arc::new(crate::admin::Admin { server: server.clone(), key, fingerprint, admins, proofs });
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(admin, admin_listener).await {
                warn!(error = %ErrorChain(&e), "the admin listener stopped");
            }
        });
    }
    let serving = tokio::spawn(crate::listeners::serve(server.clone(), listener));
    Ok(NodeHandle { client_addr, admin_addr, server, store, serving, member })
}

/// Who a node is: its id, this start's generation, its client listener.
struct Identity {
    node: NodeId,
    generation: u64,
    client: SocketAddr,
}

/// Opens a node's store with its tables and sealing key.
pub(crate) fn open_store(store_cfg: &StoreConfig, secret: &Secret) -> anyhow::Result<RocksStore> {
    RocksStore::open(store_cfg, SealKey::new(&secret.derive("tim-rs seal")), tables::ALL)
        .with_context(|| format!("opening the store in {}", store_cfg.path.display()))
}

/// Binds the node's gossip and link sockets and joins (or founds) the cluster.
async fn join(
    cfg: &ServeConfig,
    secret: &Secret,
    me: Identity,
    gossip_listen: SocketAddr,
    store: Arc<dyn tim_kv::Store>,
    ownership: Arc<Ownership>,
) -> anyhow::Result<(Arc<Cluster>, Membership)> {
    let Identity { node, generation, client: client_addr } = me;
    let gossip_socket =
        std::net::UdpSocket::bind(gossip_listen).with_context(|| format!("binding gossip to {gossip_listen}"))?;
    let gossip_addr = gossip_socket.local_addr()?;
    let rpc_listener =
        TcpListener::bind(cfg.rpc_listen).await.with_context(|| format!("binding node links to {}", cfg.rpc_listen))?;
    let rpc_addr = rpc_listener.local_addr()?;
    let advertise = |bound: SocketAddr| -> anyhow::Result<SocketAddr> {
        match cfg.advertise_host {
            Some(host) => Ok(SocketAddr::new(host, bound.port())),
            None if bound.ip().is_unspecified() => Err(anyhow::anyhow!(
                "{bound} is no address other nodes can reach: set --advertise-host (or listen on a specific address)"
            )),
            None => Ok(bound),
        }
    };
    let interval = Duration::from_millis(cfg.gossip_interval_ms);
    let legacy = secret.derive(&format!("tim-rs incarnation {}", cfg.cluster_id));
    let legacy_incarnation = legacy.first_chunk::<8>().map_or(1, |b| u64::from_be_bytes(*b)).max(1);
    let join = JoinConfig {
        node,
        generation,
        cluster_id: cfg.cluster_id.clone(),
        weight: cfg.weight,
        gossip_socket,
        gossip_advertise: advertise(gossip_addr)?,
        rpc_listener,
        rpc_advertise: advertise(rpc_addr)?,
        client_advertise: advertise(client_addr)?,
        seeds: cfg.seeds.clone(),
        gossip_key: secret.derive("tim-rs gossip"),
        rpc_key: secret.derive("tim-rs rpc"),
        gossip_interval: interval,
        moves_at_once: cfg.migration_slots,
        migration_rate: NonZeroU64::new(cfg.migration_rate),
        timeouts: Timeouts { lease: Duration::from_millis(cfg.lease_ms), ..Timeouts::default() },
        legacy_incarnation,
        // Long enough that the members of a cluster this address belonged to gossip to it.
        found_after: (interval * FOUND_AFTER_ROUNDS).max(FOUND_AFTER),
    };
    let (cluster_node, cluster) = ClusterNode::start(store, ownership, join).await?;
    info!(%node, rpc = %rpc_addr, gossip = %gossip_addr, seeds = ?cfg.seeds, "cluster member");
    Ok((cluster, Membership { node: cluster_node, rpc_addr, gossip_addr }))
}

/// How long a node that founds a cluster listens first, at least, and in gossip rounds.
const FOUND_AFTER: Duration = Duration::from_secs(2);
const FOUND_AFTER_ROUNDS: u32 = 6;

/// Runs a node until SIGINT or SIGTERM, or until it has left its cluster (`tim serve`); an
/// error when it had to stop as a member (removed, or of another cluster).
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let node = start(cfg).await?;
    // One line on stdout for scripts and tests: the bound address.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", node.ready_line())?;
    stdout.flush()?;
    let ended = tokio::select! {
        _ = shutdown_signal() => {
            if node.server.cfg.drain_on_stop {
                drain_then_stop(&node).await;
            } else {
                info!("shutting down");
            }
            None
        }
        ended = node.ended() => {
            info!("{ended}: shutting down");
            Some(ended)
        }
    };
    node.shutdown().await?;
    match ended {
        Some(ended) if ended.is_failure() => Err(anyhow::anyhow!(ended)),
        _ => Ok(()),
    }
}

/// `--drain-on-stop`: leaves the cluster, handing every slot over, before stopping; a second
/// signal stops at once (the node goes on leaving when started again).
async fn drain_then_stop(node: &NodeHandle) {
    match node.leave().await {
        Ok(slots) => {
            info!(
                slots,
                "draining before stopping: handing every slot to the other members (a second signal stops now)"
            );
            tokio::select! {
                _ = node.ended() => info!("drained: shutting down"),
                _ = shutdown_signal() => warn!("stopping before drained: the node goes on leaving when started again"),
            }
        }
        Err(e) => warn!(error = %ErrorChain(&*e), "cannot drain before stopping: shutting down with the slots here"),
    }
}

/// Follows the slots this node owns: for each slot that arrives, finishes the relation
/// changes a crash cut short there (friends, groups; a change cut short on the old owner came
/// along with the data) and fills the directory with the sessions of its users; for each slot
/// that leaves, drops its directory and the relation cache (it is valid only on the owner).
/// A member that starts fills the directory of every slot it owns from the other members,
/// once it knows what it owns: its users may be connected elsewhere.
async fn follow_slots(server: Arc<Server>) {
    let ownership = server.data.ownership().clone();
    let mut changes = ownership.version();
    let (mut owned, mut held) = (tim_shard::SlotSet::default(), tim_shard::SlotSet::default());
    let mut first = true;
    let mut ready = server.data.ready();
    if server.data.is_member() {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = ready.wait_for(|ready| *ready) => {}
        }
        let owned: Vec<_> = ownership.owned().into_iter().map(|(slot, _)| slot).collect();
        server.directory.restore(&owned).await;
    }
    loop {
        // A slot arrives when it is owned (a fenced one adopted back included); it leaves once
        // it is no longer held: fenced for its hand-over, its directory goes with the last part
        // (taken after the fence). Forgotten at the fence, it would arrive empty, and its users'
        // pushes would wait in their offline queues until they log in again.
        let (owned_now, held_now) = (ownership.owned_set(), ownership.held_set());
        let arrived: Vec<_> = owned_now.difference(&owned).collect();
        let left: Vec<_> = held.difference(&held_now).collect();
        if !left.is_empty() {
            for slot in &left {
                server.directory.forget(*slot);
                server.rooms.forget(*slot);
            }
            server.rosters.forget_cache();
        }
        // At start a member filled the directory from the others (above); on a node that runs
        // alone nobody is connected yet.
        if !arrived.is_empty() && !first {
            server.rosters.forget_cache();
            // A slot that came with its directory needs nothing from the nodes.
            let asked: Vec<_> = arrived.iter().copied().filter(|s| !server.directory.take_carried(*s)).collect();
            if !asked.is_empty() {
                server.directory.restore(&asked).await;
            }
        }
        let mut repaired = 0;
        for slot in &arrived {
            if server.shutdown.is_cancelled() {
                return;
            }
            for result in [server.rosters.repair(*slot).await, server.groups.repair(*slot).await] {
                match result {
                    Ok(n) => repaired += n,
                    Err(e) => warn!(error = %ErrorChain(&e), slot = slot.0, "relation repair failed"),
                }
            }
        }
        if repaired > 0 {
            info!(repaired, "finished relation changes cut short");
        }
        (owned, held) = (owned_now, held_now);
        first = false;
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %ErrorChain(&e), "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
