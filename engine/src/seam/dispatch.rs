//! The arriving end of the seam: operations from other nodes, handed by their tag to the
//! service that owns them, without decoding anything else.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use tim_kv::Slot;
use tim_net::report::ErrorChain;
use tim_shard::{EngineAnswer, EngineHandler, HandlerError, NodeId};
use tracing::warn;

use super::Service;

/// A service's end of the seam. A service implements the kinds of operations it has.
pub trait Arrivals: Send + Sync + 'static {
    /// An operation for `slot`, which this node owns (the cluster holds the slot's guard).
    fn at_slot(self: Arc<Self>, slot: Slot, op: Bytes) -> EngineAnswer {
        let _ = (slot, op);
        Box::pin(std::future::ready(Err(HandlerError::Failed("no slot operations for this service".into()))))
    }

    /// A question for this node.
    fn at_node(self: Arc<Self>, op: Bytes) -> EngineAnswer {
        let _ = op;
        Box::pin(std::future::ready(Err(HandlerError::Failed("no questions for this service".into()))))
    }

    /// An operation for this node's sessions, run at once, in the order it was sent.
    fn at_node_now(&self, op: Bytes) -> Result<Bytes, HandlerError> {
        let _ = op;
        Err(HandlerError::Failed("no node operations for this service".into()))
    }
}

/// In-memory state that travels with a slot when it changes hands (the session directory).
pub trait CarriedState: Send + Sync + 'static {
    fn carry(&self, slot: Slot) -> Result<Vec<u8>, postcard::Error>;
    fn adopt(&self, slot: Slot, state: &[u8]) -> Result<(), postcard::Error>;
}

/// Arrived operations, to their services. The services are held weakly: they hold the cluster,
/// which holds this; one that is gone (the node stopping) answers "not ready", retried.
pub struct Dispatch {
    services: [Option<Weak<dyn Arrivals>>; Service::ALL.len()],
    carried: Option<Weak<dyn CarriedState>>,
}

impl Default for Dispatch {
    fn default() -> Self {
        Self { services: std::array::from_fn(|_| None), carried: None }
    }
}

impl Dispatch {
    /// Hands the operations tagged `service` to `arrivals`.
    pub fn serve<A: Arrivals>(mut self, service: Service, arrivals: &Arc<A>) -> Self {
        let weak: Weak<dyn Arrivals> = Arc::downgrade(arrivals) as Weak<dyn Arrivals>;
        if let Some(place) = self.services.get_mut(service.index()) {
            *place = Some(weak);
        }
        self
    }

    /// Takes and gives the state that travels with slots.
    pub fn carry<C: CarriedState>(mut self, carried: &Arc<C>) -> Self {
        self.carried = Some(Arc::downgrade(carried) as Weak<dyn CarriedState>);
        self
    }

    /// The service a call is tagged for, and the operation's bytes.
    fn route(&self, body: Bytes) -> Result<(Arc<dyn Arrivals>, Bytes), HandlerError> {
        let tag = *body.first().ok_or_else(|| HandlerError::Failed("an empty operation".into()))?;
        let service = Service::of(tag).ok_or_else(|| HandlerError::Failed(format!("unknown service tag {tag}")))?;
        let arrivals = self.services.get(service.index()).and_then(Option::as_ref);
        let arrivals = arrivals.ok_or_else(|| HandlerError::Failed(format!("no {service:?} service here")))?;
        Ok((arrivals.upgrade().ok_or(HandlerError::Unready)?, body.slice(1..)))
    }

    fn carried(&self) -> Option<Arc<dyn CarriedState>> {
        self.carried.as_ref().and_then(Weak::upgrade)
    }
}

impl EngineHandler for Dispatch {
    fn at_slot(&self, slot: Slot, body: Bytes) -> EngineAnswer {
        match self.route(body) {
            Ok((service, op)) => service.at_slot(slot, op),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn at_node(&self, _from: NodeId, body: Bytes) -> EngineAnswer {
        match self.route(body) {
            Ok((service, op)) => service.at_node(op),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn at_node_now(&self, _from: NodeId, body: Bytes) -> Result<Bytes, HandlerError> {
        let (service, op) = self.route(body)?;
        service.at_node_now(op)
    }

    fn slot_state(&self, slot: Slot) -> Bytes {
        let Some(carried) = self.carried() else { return Bytes::new() };
        match carried.carry(slot) {
            Ok(raw) => Bytes::from(raw),
            Err(e) => {
                // The receiver asks the nodes for the sessions instead.
                warn!(slot = slot.0, error = %ErrorChain(&e), "session directory not carried with its slot");
                Bytes::new()
            }
        }
    }

    fn adopt_slot_state(&self, slot: Slot, state: Bytes) {
        let Some(carried) = self.carried() else { return };
        if let Err(e) = carried.adopt(slot, &state) {
            warn!(slot = slot.0, error = %ErrorChain(&e), "session directory of an arrived slot undecodable");
        }
    }
}
