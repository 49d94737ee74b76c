//! What nodes send each other over their links, encoded with postcard.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tim_kv::{Batch, Cursor, ExportedRow, Row, RowId, StoreError, TableId};

use crate::members::Recorded;
use crate::membership::MemberInfo;
use crate::ownership::SlotState;
use crate::ownership::{Part, Refusal};
use crate::placement::NodeId;

/// A call from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A data operation, for the owner of the slot.
    Data { slot: u16, op: DataOp },
    /// An engine operation, for the owner of the slot.
    AtSlot { slot: u16, body: Bytes },
    /// An engine operation for the receiving node itself (the sessions it holds).
    AtNode { body: Bytes },
    /// The same, handled in the order the link brought it.
    AtNodeNow { body: Bytes },
    /// A part of a slot handed to the receiver; the last one carries the engine's in-memory
    /// state of the slot.
    Import { slot: u16, part: Part, state: Bytes },
    /// The slots the receiver owns, with their epochs.
    Owned,
    /// The members as the receiver sees them (`tim cluster status`).
    Status,
    /// The receiver leaves the cluster (`tim cluster leave`).
    Leave,
    /// The receiver removes members that are down for good (`tim cluster remove`).
    Remove { nodes: Vec<NodeId>, force: bool },
    /// What the receiver holds, for a removal.
    Holdings,
    /// The receiver owns `slot` from `epoch` on: its owner `from` was removed.
    Adopt { slot: u16, epoch: u64, from: NodeId },
    /// Part `part` of an export stream over `slot` (part 0 opens it on the slot's owner).
    Export { stream: u64, slot: u16, part: u32 },
    /// The caller's lease: answered unless the caller was removed ([`crate::lease`]).
    Ping,
    /// How long the receiver has answered no ping of `node`.
    Silence { node: NodeId },
    /// The slots the receiver owns, and the newest owner it learned of every slot.
    Epochs,
    /// The member set as the receiver records it.
    Members,
    // New variants go last: postcard numbers them by position.
}

/// The store operations a node runs for another on a slot it owns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum DataOp {
    Get { table: TableId, id: RowId },
    Ids { table: TableId, column: usize, value: Bytes, cursor: Cursor, limit: usize },
    Page { table: TableId, column: usize, value: Bytes, cursor: Cursor, limit: usize },
    Write(Batch),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Reply {
    Row(Option<Row>),
    Ids(Vec<RowId>),
    Page(Vec<(RowId, Row)>),
    Written(Vec<RowId>),
    Engine(Bytes),
    /// `false`: the receiver owned the slot already (an import repeated).
    Imported(bool),
    Owned(Vec<(u16, u64)>),
    Status(Vec<MemberInfo>),
    /// The receiver is leaving; the slots it owned when asked.
    Leaving {
        node: NodeId,
        slots: u32,
    },
    /// Members were removed: what it cost.
    Removed(Removed),
    Holdings(Holdings),
    Adopted,
    /// The slot is not served here.
    Refused(Refusal),
    /// The operation ran and failed (a store error, an engine error), as text; `duplicate`
    /// when a unique index refused a write.
    Failed {
        reason: String,
        duplicate: bool,
    },
    /// A part of an export stream, read on `node`. (New variants go last, before the
    /// unencoded one: postcard numbers them by position.)
    Exported {
        node: NodeId,
        rows: Vec<ExportedRow>,
        last: bool,
    },
    Pong,
    /// Milliseconds since the receiver last answered a ping of the node asked about.
    Silence {
        ms: u64,
    },
    Epochs {
        owned: Vec<(u16, u64)>,
        newest: Vec<(u16, NodeId, u64)>,
    },
    Members {
        members: Vec<Recorded>,
        retired: Vec<NodeId>,
        removed: Vec<NodeId>,
    },
    /// A store error on this node, for a caller on this node: never encoded.
    #[serde(skip)]
    StoreFailed(StoreError),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    postcard::to_stdvec(value).map(Bytes::from).map_err(|e| format!("encoding failed: {e}"))
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8]) -> Result<T, String> {
    postcard::from_bytes(raw).map_err(|e| format!("undecodable message: {e}"))
}

/// What one member holds: every slot state it records, and the newest owner it learned of
/// every slot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Holdings {
    pub(crate) states: Vec<(u16, SlotState)>,
    pub(crate) newest: Vec<(u16, NodeId, u64)>,
}

/// What a removal did, and what it cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Slots adopted with the data a member held of them (a hand-over to a removed node that
    /// never finished: the writes the removed node took after it, if it got the slot, are
    /// lost).
    pub with_data: u32,
    /// Slots adopted empty: their data was on the removed nodes alone, and is lost.
    pub empty: u32,
    /// Slots that may be on a member that is down and was not removed: not adopted, and not
    /// served until that member is back (or removed too, and this removal run again).
    pub waiting: u32,
}
