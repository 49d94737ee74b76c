//! `tim cluster found`: makes a stopped node the founder of a new cluster, from its data dir.
//!
//! The way out when a cluster cannot go on as it is: most of its members are gone for good
//! (a removal needs a majority), or a node holds the only copy of data its cluster lost. The
//! node gets a new cluster incarnation, so its old cluster's members and it never hear each
//! other again (a member of the old cluster that comes back is refused, both ways); it is the
//! only member; it keeps the slots it owned, with their data; and it owns every other slot,
//! empty, from the next id era of everything it knew of that slot, so ids stay above every id
//! it saw issued. It is an operator's explicit step, never taken by a node by itself: a node
//! that once belonged to a cluster never founds one on its own.

use std::sync::Arc;

use tim_kv::{RawWrite, Store};

use crate::incarnation;
use crate::members::{MemberSet, Recorded};
use crate::node::{JoinError, LEAVING_RECORD, REMOVED_RECORD};
use crate::ownership::Ownership;
use crate::placement::NodeId;
use crate::routes::Routes;

/// What founding a cluster anew did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Founded {
    pub incarnation: u64,
    /// Slots the node owned, kept with their data.
    pub kept: usize,
    /// Slots it owns now, empty.
    pub taken: usize,
}

/// Makes `node`, stopped, with its store open here, the founder of a new cluster (see the
/// module).
pub async fn found_again(store: Arc<dyn Store>, node: NodeId) -> Result<Founded, JoinError> {
    let ownership = Ownership::load(store.clone())?;
    let routes = Routes::load(&*store)?;
    let newest: std::collections::HashMap<u16, u64> =
        routes.newest().into_iter().map(|(slot, _, epoch)| (slot, epoch)).collect();
    let kept = ownership.owned().len();
    let taken = ownership.found_again(|slot| newest.get(&slot.0).copied().unwrap_or(0)).await?.len();
    let old = MemberSet::load(&*store)?;
    let me = old.members.iter().find(|m| m.id == node).copied();
    let me = me.unwrap_or(Recorded { id: node, weight: 1, since: 0 });
    let retired = old.members.iter().map(|m| m.id).filter(|id| *id != node).chain(old.retired.iter().copied());
    let members = MemberSet { members: vec![me], retired: retired.collect(), removed: old.removed };
    members.save(&*store).await?;
    let id = incarnation::new_id();
    let records = vec![
        incarnation::record(id),
        (LEAVING_RECORD.to_owned(), None),
        (REMOVED_RECORD.to_owned(), None),
        Routes::cleared(),
    ];
    store.write_raw(RawWrite::local(records)).await?;
    Ok(Founded { incarnation: id, kept, taken })
}
