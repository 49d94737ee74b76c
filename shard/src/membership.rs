//! Who is in the cluster and how to reach them: chitchat behind a typed view.
//!
//! Gossip carries a few small facts per node (the keys below): its link and client addresses,
//! its state, the placement version it computed, a counter of changes of the slots it owns,
//! its load. Never sessions or per-slot data. Gossip is a bus, not an authority: the right to
//! serve a slot comes from [`crate::Ownership`], never from what gossip says.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use tokio::sync::watch;

use crate::gossip::{SealedUdp, Sender};
use crate::placement::{NodeId, PlacementVersion};

pub(crate) const KEY_RPC: &str = "rpc";
pub(crate) const KEY_CLIENT: &str = "client";
pub(crate) const KEY_STATE: &str = "state";
pub(crate) const KEY_PLACEMENT: &str = "placement";
pub(crate) const KEY_OWNED: &str = "owned";
pub(crate) const KEY_SLOTS: &str = "slots";
pub(crate) const KEY_SESSIONS: &str = "sessions";
/// Message-class frames per second clients sent to the node, lately.
pub(crate) const KEY_MESSAGE_RATE: &str = "msg_rate";
pub(crate) const KEY_LEAVING_SLOTS: &str = "leaving_slots";
pub(crate) const KEY_WEIGHT: &str = "weight";
/// The nodes this node is handing slots to (it holds them fenced), comma-separated.
pub(crate) const KEY_FENCED_TO: &str = "fenced_to";
/// "1" once this node, leaving, holds nothing and is handed nothing: it stops soon.
pub(crate) const KEY_DRAINED: &str = "drained";
/// What this node's hand-overs did since it started: `slots,bytes,bytes per second`.
pub(crate) const KEY_MOVES: &str = "moves";
/// The nodes this node knows left the cluster for good, comma-separated.
pub(crate) const KEY_RETIRED: &str = "retired";
/// Those of them an operator removed, comma-separated.
pub(crate) const KEY_REMOVED: &str = "removed";

/// A member's part in the cluster, as it says itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Started; does not take slots yet.
    Joining,
    /// Serves and takes slots.
    Ready,
    /// Leaving the cluster for good (`tim cluster leave`): hands its slots to the others, then
    /// stops; no longer a member.
    Leaving,
    /// Stopping, to come back: takes no slots meanwhile, stays a member.
    Stopping,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Ready => "ready",
            Self::Leaving => "leaving",
            Self::Stopping => "stopping",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "joining" => Some(Self::Joining),
            "ready" => Some(Self::Ready),
            "leaving" => Some(Self::Leaving),
            "stopping" => Some(Self::Stopping),
            _ => None,
        }
    }
}

/// One node as gossip shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub node: NodeId,
    pub generation: u64,
    pub gossip: SocketAddr,
    pub rpc: SocketAddr,
    pub client: SocketAddr,
    pub state: MemberState,
    pub weight: u16,
    /// The placement version the node computed, once it has one.
    pub placement: Option<PlacementVersion>,
    /// Changes of the node's owned slots so far.
    pub owned_version: u64,
    pub slots: u32,
    /// Slots this node holds that placement gives to another member (still to be handed
    /// over, or being handed over now).
    pub leaving_slots: u32,
    pub sessions: u64,
    /// Message-class frames per second clients sent to the node, lately.
    pub msg_rate: u64,
    /// The nodes this one knows left the cluster for good.
    pub retired: Vec<NodeId>,
    /// Those of them it knows an operator removed.
    pub removed: Vec<NodeId>,
    /// The nodes this one is handing slots to now.
    pub fenced_to: Vec<NodeId>,
    /// Leaving, it holds nothing and is handed nothing: it stops soon.
    pub drained: bool,
    /// Slots this node handed over since it started.
    pub moved_slots: u64,
    /// Bytes of slot data it sent in hand-overs since it started.
    pub moved_bytes: u64,
    /// Bytes per second it sends in hand-overs, lately.
    pub move_rate: u64,
    pub live: bool,
}

impl MemberInfo {
    /// Reads a node's gossiped keys; `None` when a key it must have is missing or malformed.
    fn of(id: &ChitchatId, state: &NodeState, live: bool) -> Option<Self> {
        let num = |key: &str| state.get(key).and_then(|v| v.parse::<u64>().ok());
        let moves: Vec<u64> = state.get(KEY_MOVES).unwrap_or("").split(',').filter_map(|v| v.parse().ok()).collect();
        let moves = |i: usize| moves.get(i).copied().unwrap_or(0);
        Some(Self {
            node: id.node_id.parse().ok()?,
            generation: id.generation_id,
            gossip: id.gossip_advertise_addr,
            rpc: state.get(KEY_RPC)?.parse().ok()?,
            client: state.get(KEY_CLIENT)?.parse().ok()?,
            state: MemberState::parse(state.get(KEY_STATE)?)?,
            weight: state.get(KEY_WEIGHT).and_then(|v| v.parse().ok()).unwrap_or(1),
            placement: state.get(KEY_PLACEMENT).and_then(|v| u64::from_str_radix(v, 16).ok()).map(PlacementVersion),
            owned_version: num(KEY_OWNED).unwrap_or(0),
            slots: num(KEY_SLOTS).unwrap_or(0) as u32,
            leaving_slots: num(KEY_LEAVING_SLOTS).unwrap_or(0) as u32,
            sessions: num(KEY_SESSIONS).unwrap_or(0),
            msg_rate: num(KEY_MESSAGE_RATE).unwrap_or(0),
            retired: state.get(KEY_RETIRED).map(parse_nodes).unwrap_or_default(),
            removed: state.get(KEY_REMOVED).map(parse_nodes).unwrap_or_default(),
            fenced_to: state.get(KEY_FENCED_TO).map(parse_nodes).unwrap_or_default(),
            drained: state.get(KEY_DRAINED) == Some("1"),
            moved_slots: moves(0),
            moved_bytes: moves(1),
            move_rate: moves(2),
            live,
        })
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

/// A list of node ids as [`KEY_RETIRED`] carries it.
pub(crate) fn format_nodes(nodes: impl IntoIterator<Item = NodeId>) -> String {
    nodes.into_iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

fn parse_nodes(list: &str) -> Vec<NodeId> {
    list.split(',').filter_map(|n| n.parse().ok()).collect()
}

/// How this node gossips.
pub struct MembershipConfig {
    pub node: NodeId,
    pub generation: u64,
    pub cluster_id: String,
    /// Bound already (port 0 in tests).
    pub socket: std::net::UdpSocket,
    /// The gossip address other nodes reach this one at.
    pub advertise: SocketAddr,
    /// `host:port` of nodes to gossip with first.
    pub seeds: Vec<String>,
    /// Authenticates every datagram (derived from the deployment secret).
    pub key: [u8; 32],
    /// The cluster incarnation every datagram carries and is checked against.
    pub incarnation: std::sync::Arc<crate::incarnation::Incarnation>,
    pub interval: Duration,
    /// The keys this node starts with.
    pub initial: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("gossip failed to start: {0:#}")]
pub struct MembershipError(anyhow::Error);

/// This node's gossip.
pub struct Membership {
    handle: ChitchatHandle,
    node: NodeId,
}

impl Membership {
    pub async fn start(cfg: MembershipConfig) -> Result<Self, MembershipError> {
        let listen = cfg.socket.local_addr().map_err(|e| MembershipError(e.into()))?;
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(cfg.node.to_string(), cfg.generation, cfg.advertise),
            cluster_id: cfg.cluster_id,
            gossip_interval: cfg.interval,
            listen_addr: listen,
            seed_nodes: cfg.seeds,
            // Dead in about 10 intervals without heartbeats; a dead node's state is kept for
            // a day (it stays a member whatever gossip says).
            failure_detector_config: FailureDetectorConfig {
                initial_interval: cfg.interval,
                max_interval: cfg.interval * 10,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: Some(Box::new(|state: &NodeState| {
                state.get(KEY_RPC).is_some() && state.get(KEY_STATE).is_some()
            })),
        };
        let initial = cfg.initial.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let sender = Sender { node: cfg.node.0, generation: cfg.generation, incarnation: cfg.incarnation };
        let transport = SealedUdp::new(cfg.socket, cfg.key, sender);
        let handle = spawn_chitchat(chitchat_config, initial, &transport).await.map_err(MembershipError)?;
        Ok(Self { handle, node: cfg.node })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Sets one of this node's keys.
    pub async fn set(&self, key: &'static str, value: String) {
        self.handle.with_chitchat(|c| c.self_node_state().set(key, value.clone())).await;
    }

    /// Every node gossip knows of, live or not, that gossips the keys of a member.
    pub async fn members(&self) -> Vec<MemberInfo> {
        self.handle
            .with_chitchat(|c| {
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                c.node_states()
                    .iter()
                    .filter_map(|(id, state)| MemberInfo::of(id, state, live.contains(id)))
                    .collect::<Vec<_>>()
            })
            .await
    }

    /// Fires when a node joins, leaves or changes a key.
    pub async fn changes(&self) -> watch::Receiver<std::collections::BTreeMap<ChitchatId, NodeState>> {
        self.handle.with_chitchat(|c| c.live_nodes_watcher()).await
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}
