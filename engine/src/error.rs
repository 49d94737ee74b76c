//! Engine errors, mapped to TIM's wire codes in one place.

use tim_kv::StoreError;
use tim_net::proto::ErrorCode;
use tim_net::report::ErrorChain;
use tim_shard::RouteError;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request TIM refuses with this code.
    #[error("refused: {}", .0.info())]
    Refused(ErrorCode),
    #[error("store failed")]
    Store(#[from] StoreError),
    /// The data's node could not be reached, or failed: transient ones (the owner down or the
    /// slot moving) are answered 5102, the client may retry.
    #[error("data access failed")]
    Route(#[from] RouteError),
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    /// Another node failed an operation for this one (its log has the causes).
    #[error("a peer node failed the operation: {0}")]
    Peer(String),
    /// A state the server's own logic should never reach (a write returning fewer ids than it
    /// inserted, an id space used up).
    #[error("internal fault: {0}")]
    Internal(&'static str),
}

impl EngineError {
    /// The code the client sees. Internal failures read as TIM's "database error" (5103);
    /// their cause goes to the log ([`Self::answer`]), not the wire.
    fn wire_code(&self) -> ErrorCode {
        match self {
            Self::Refused(code) => *code,
            Self::Route(e) if e.is_transient() => ErrorCode::BlockingOperation,
            Self::Store(_)
            | Self::Route(_)
            | Self::Peer(_)
            | Self::PasswordHash(_)
            | Self::Join(_)
            | Self::Internal(_) => ErrorCode::Database,
        }
    }

    /// Whether the failure is the server's (worth a log line), not the client's.
    pub fn is_internal(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }

    /// The code to answer `op` with. Every refusal goes through here, so an internal fault
    /// answered as a database error is always logged, with its whole cause chain; so is data
    /// that is out of reach for a while (5102), as such.
    pub fn answer(&self, op: &'static str) -> ErrorCode {
        match self {
            Self::Route(e) if e.is_transient() => {
                info!(error = %ErrorChain(self), op, "data out of reach: answered as retryable");
            }
            _ if self.is_internal() => {
                warn!(error = %ErrorChain(self), op, "internal fault answered as a database error");
            }
            _ => {}
        }
        self.wire_code()
    }
}

impl From<ErrorCode> for EngineError {
    fn from(code: ErrorCode) -> Self {
        Self::Refused(code)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Runs `f` with a subscriber that writes the log into the returned buffer.
    fn logged(f: impl FnOnce()) -> String {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || Sink(sink.clone())).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_store_failure_is_answered_as_database_and_logged_with_its_cause() {
        let e = EngineError::Store(StoreError::Rocks("IO error: No space left on device".into()));
        let log = logged(|| assert_eq!(e.answer("login"), ErrorCode::Database));
        assert!(log.contains("internal fault"), "{log}");
        assert!(log.contains("store failed: rocksdb failed: IO error: No space left on device"), "{log}");
        assert!(log.contains("op=\"login\""), "{log}");
    }

    #[test]
    fn a_refusal_is_not_logged() {
        let refused = EngineError::Refused(ErrorCode::PermissionDenied);
        let internal = EngineError::Internal("a message write returned no id");
        // Positive control in the same capture: the internal fault is logged.
        let log = logged(|| {
            assert_eq!(refused.answer("request"), ErrorCode::PermissionDenied);
            assert_eq!(internal.answer("request"), ErrorCode::Database);
        });
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("internal fault: a message write returned no id"), "{log}");
    }
}
