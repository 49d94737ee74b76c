//! Chat messages that arrive together are stored together: one write for an inbound burst.

use tracing::{debug, warn};

use super::order::Key;
use super::{Close, Session};
use crate::flows::message;

impl Session {
    /// Stores the burst's accepted chat messages in one write, then echoes and pushes them;
    /// a failed write refuses each of them.
    pub(super) async fn store_burst(&mut self) -> Result<(), Close> {
        let Some(login) = &self.login else { return Ok(()) };
        if self.burst.is_empty() {
            return Ok(());
        }
        let (sent, accepted): (Vec<_>, Vec<_>) = std::mem::take(&mut self.burst)
            .into_iter()
            .map(|(code, encoding, a)| ((code, encoding, a.sent_with_id().then(|| Key::of(a.message())).flatten()), a))
            .unzip();
        match message::store_and_push(&self.server, login.user, self.conn_id, login.encoding, accepted).await {
            Ok(echoes) => {
                debug!(messages = echoes.len(), "messages stored");
                for (_, _, key) in &sent {
                    if let Some(key) = key {
                        self.holds.get_or_insert_with(Box::default).stored(key);
                    }
                }
                for echo in echoes {
                    self.feed(echo).await?;
                }
                self.flush().await
            }
            Err(e) => {
                warn!(messages = sent.len(), "storing messages failed");
                let code = e.answer("store messages");
                for (tim_type, encoding, key) in sent {
                    self.refuse_message(key, tim_type, encoding, code).await?;
                }
                Ok(())
            }
        }
    }
}
