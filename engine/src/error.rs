//! Engine errors, mapped to TIM's wire codes in one place.

use tim_kv::StoreError;
use tim_net::proto::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request TIM refuses with this code.
    #[error("refused: {}", .0.info())]
    Refused(ErrorCode),
    #[error("store failed")]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl EngineError {
    /// The code the client sees. Internal failures read as TIM's "database error" (5103);
    /// their cause goes to the log, not the wire.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            Self::Refused(code) => *code,
            Self::Store(_) | Self::PasswordHash(_) | Self::Join(_) => ErrorCode::Database,
        }
    }

    /// Whether the failure is the server's (worth a log line), not the client's.
    pub fn is_internal(&self) -> bool {
        !matches!(self, Self::Refused(_))
    }
}

impl From<ErrorCode> for EngineError {
    fn from(code: ErrorCode) -> Self {
        Self::Refused(code)
    }
}
