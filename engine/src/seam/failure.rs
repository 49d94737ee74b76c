//! How an operation that ran on another node failed, as its caller learns it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tim_kv::Slot;
use tim_net::proto::ErrorCode;
use tim_net::report::ErrorChain;
use tim_shard::{HandlerError, RouteError};
use tracing::warn;

use crate::error::EngineError;

#[derive(Debug, Serialize, Deserialize)]
pub enum Failure {
    /// A refusal with TIM's code, for the client.
    Refused(ErrorCode),
    /// The data was out of reach for a while.
    Transient(String),
    /// An internal fault (logged on that node with its causes).
    Internal(String),
}

impl Failure {
    fn from_error(e: &EngineError, op: &'static str) -> Self {
        match e {
            EngineError::Refused(code) => Self::Refused(*code),
            EngineError::Route(route) if route.is_transient() => Self::Transient(ErrorChain(e).to_string()),
            _ => {
                warn!(error = %ErrorChain(e), op, "internal fault in an operation for another node");
                Self::Internal(ErrorChain(e).to_string())
            }
        }
    }

    fn into_error(self, slot: Slot) -> EngineError {
        match self {
            Self::Refused(code) => EngineError::Refused(code),
            Self::Transient(reason) => EngineError::Route(RouteError::Unavailable { slot: slot.0, reason }),
            Self::Internal(reason) => EngineError::Peer(reason),
        }
    }

    /// The result of an operation that ran here, for the node that sent it.
    pub(super) fn pack<T: Serialize>(result: Result<T, EngineError>, op: &'static str) -> Result<Bytes, HandlerError> {
        let result = result.map_err(|e| Self::from_error(&e, op));
        postcard::to_stdvec(&result).map(Bytes::from).map_err(|e| HandlerError::Failed(format!("{op}: {e}")))
    }

    /// The result of an operation that ran on another node, for the service that sent it.
    pub(super) fn unpack<T: DeserializeOwned>(raw: &[u8], slot: Slot) -> Result<T, EngineError> {
        let answer: Result<T, Failure> =
            postcard::from_bytes(raw).map_err(|_| EngineError::Internal("an answer did not decode"))?;
        answer.map_err(|f| f.into_error(slot))
    }
}
