//! Waiting for a state rather than for a time: a test polls what it can observe until the
//! state holds, and fails naming it once a deadline passes.

use std::time::Duration;

use tokio::time::Instant;

/// Between two probes: short, as most states come within milliseconds.
const POLL: Duration = Duration::from_millis(20);

/// What `probe` finds once it finds something, probing every [`POLL`]; panics naming `what`
/// when nothing is found within `deadline`.
pub async fn until<T>(what: &str, deadline: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < end, "waited {deadline:?} for {what} in vain");
        tokio::time::sleep(POLL).await;
    }
}
