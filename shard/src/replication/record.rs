//! What a replica keeps of a slot besides its log entries: node-local records, and the
//! encoding of entries and frames.

use serde::{Deserialize, Serialize};
use tim_kv::{RawEntry, Slot, SlotDelta, Store, StoreError};

use crate::placement::NodeId;
use crate::replica::{Ballot, Conf, Entry, Index, Log, Message, Position};

/// A log entry's payload: the writes of the slot's data.
pub type Effects = SlotDelta;

/// The promise and the log's base of one slot, rewritten when either changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplicaRecord {
    pub promised: Ballot,
    pub base: Position,
    pub base_conf: Conf,
}

/// What a replica holds of a slot when it starts.
pub(crate) struct Loaded {
    pub promised: Ballot,
    pub log: Log<Effects>,
    pub applied: Index,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the replica record of slot {0} does not decode")]
    Record(u16),
    #[error("log entry {index} of slot {slot} does not decode")]
    Entry { slot: u16, index: Index },
    #[error("the log of slot {slot} has a gap before entry {index}")]
    Gap { slot: u16, index: Index },
    #[error("store failed")]
    Store(#[from] StoreError),
}

pub(crate) fn record_name(slot: Slot) -> String {
    format!("rep/{}", slot.0)
}

pub(crate) fn applied_name(slot: Slot) -> String {
    format!("rep/{}/applied", slot.0)
}

pub(crate) fn record(slot: Slot, record: &ReplicaRecord) -> Result<(String, Option<Vec<u8>>), RecordError> {
    let raw = postcard::to_stdvec(record).map_err(|_| RecordError::Record(slot.0))?;
    Ok((record_name(slot), Some(raw)))
}

pub(crate) fn applied(slot: Slot, index: Index) -> (String, Option<Vec<u8>>) {
    (applied_name(slot), Some(index.to_be_bytes().to_vec()))
}

pub(crate) fn encode_entry(slot: Slot, index: Index, entry: &Entry<Effects>) -> Result<Vec<u8>, RecordError> {
    postcard::to_stdvec(entry).map_err(|_| RecordError::Entry { slot: slot.0, index })
}

/// Most log entries read at once while loading.
const LOAD_PAGE: usize = 1024;

/// The replica of `slot` this store holds, if any.
pub(crate) fn load(store: &dyn Store, slot: Slot) -> Result<Option<Loaded>, RecordError> {
    let Some(raw) = store.local(&record_name(slot))? else { return Ok(None) };
    let record: ReplicaRecord = postcard::from_bytes(&raw).map_err(|_| RecordError::Record(slot.0))?;
    let mut log = Log::new(record.base, record.base_conf);
    loop {
        let from = log.last().index + 1;
        let page = store.log_entries(slot, from, LOAD_PAGE)?;
        let full = page.len() == LOAD_PAGE;
        for (index, raw) in page {
            // Entries at or below the base are left from before a compaction that was cut short.
            if index <= log.base().index {
                continue;
            }
            if index != log.last().index + 1 {
                return Err(RecordError::Gap { slot: slot.0, index });
            }
            let entry = postcard::from_bytes(&raw).map_err(|_| RecordError::Entry { slot: slot.0, index })?;
            log.push(entry);
        }
        if !full {
            break;
        }
    }
    let applied = match store.local(&applied_name(slot))? {
        Some(raw) => {
            <[u8; 8]>::try_from(raw.as_slice()).map(u64::from_be_bytes).map_err(|_| RecordError::Record(slot.0))?
        }
        None => record.base.index,
    };
    Ok(Some(Loaded { promised: record.promised, log, applied }))
}

/// What one node sends another for the replicas they share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Frame {
    Messages(Vec<(Slot, Message<Effects>)>),
    /// A slot's data as of `base`, for a replica whose next entries the primary's log no
    /// longer holds.
    Snapshot(Box<Snapshot>),
    /// The sender leads these slots (a [`crate::SlotSet`]'s words): one message instead of an
    /// empty append per slot, answered with the slots whose replica follows the sender.
    Beat {
        sent: std::time::Duration,
        slots: Vec<u64>,
    },
    BeatAck {
        sent: std::time::Duration,
        slots: Vec<u64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub slot: Slot,
    pub ballot: Ballot,
    pub base: Position,
    pub conf: Conf,
    pub data: Vec<RawEntry>,
    pub sent: std::time::Duration,
}

/// Where frames go: fire and forget (the protocol sends again what is lost).
pub trait Links: Send + Sync + 'static {
    fn send(&self, to: NodeId, frame: bytes::Bytes);
}
