//! Error reports for logs: an error with every cause under it.

use std::error::Error;
use std::fmt;

/// Displays an error followed by its whole `source()` chain, `outer: cause: root cause`, so a
/// log line names what really failed (`store failed: rocksdb failed: IO error: …`) and not
/// only the outermost layer.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("store failed")]
        Store(#[source] Middle),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("write of slot 7 failed")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn names_every_cause() {
        let e = Outer::Store(Middle(std::io::Error::other("disk full")));
        assert_eq!(ErrorChain(&e).to_string(), "store failed: write of slot 7 failed: disk full");
        let plain = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&plain).to_string(), "alone");
    }
}
