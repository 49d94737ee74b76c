//! A connection's messages to one conversation keep the order it sent them in, through moves,
//! leaves and restarts: once one is refused as retryable (5102), the connection's later
//! messages to the same target are refused the same way, until the client sends that one
//! again (the same client `id`) or [`HOLD_FOR`] passes. A client that sends its refused
//! messages again in their order (as a careful TIM client does) has them stored in that order;
//! without the hold, a message sent after the refused one could be stored before it.
//!
//! A message without a client `id` cannot be recognized when sent again: it holds nothing.

use std::collections::HashMap;

use tim_net::proto::TimMessage;
use tokio::time::{Duration, Instant};

/// How long a refusal holds a target's later messages when its message is not sent again.
const HOLD_FOR: Duration = Duration::from_secs(30);
/// Most targets held at once per connection.
const MAX_HELD: usize = 256;

/// The targets a connection's refusals hold, with the client id each waits for.
#[derive(Default)]
pub(super) struct Holds(HashMap<String, (i64, Instant)>);

/// What a hold knows of a message: its target (group or recipient) and client id.
pub(super) struct Key {
    target: String,
    id: i64,
}

impl Key {
    /// The key of a message with a target and a client id.
    pub(super) fn of(msg: &TimMessage) -> Option<Key> {
        let target = msg.room_tid.as_ref().or(msg.to_tid.as_ref())?;
        Some(Key { target: target.node.clone(), id: msg.id? })
    }
}

impl Holds {
    /// Whether a message may go on: its target is not held, or it is the message the hold
    /// waits for (which lifts the hold).
    pub(super) fn pass(&mut self, key: &Key) -> bool {
        let Some(&(waits_for, since)) = self.0.get(&key.target) else { return true };
        if key.id == waits_for || since.elapsed() > HOLD_FOR {
            self.0.remove(&key.target);
            return true;
        }
        false
    }

    /// The message of `key` was refused as retryable: its target's later messages wait for
    /// it.
    pub(super) fn hold(&mut self, key: Key) {
        if self.0.contains_key(&key.target) {
            return;
        }
        if self.0.len() >= MAX_HELD {
            self.0.retain(|_, (_, since)| since.elapsed() <= HOLD_FOR);
            if self.0.len() >= MAX_HELD {
                return;
            }
        }
        self.0.insert(key.target, (key.id, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use tim_net::proto::Tid;

    use super::*;

    fn to(node: &str, id: i64) -> Key {
        let msg = TimMessage {
            id: Some(id),
            to_tid: Some(Tid { node: node.into(), ..Tid::default() }),
            ..TimMessage::default()
        };
        Key::of(&msg).unwrap()
    }

    #[test]
    fn a_refusal_holds_its_targets_later_messages_until_it_is_sent_again() {
        let mut holds = Holds::default();
        holds.hold(to("bob", 1));
        assert!(!holds.pass(&to("bob", 2)), "sent after the refused one");
        assert!(holds.pass(&to("carol", 3)), "another conversation");
        holds.hold(to("bob", 2));
        assert!(!holds.pass(&to("bob", 2)), "still waits for the first one");
        assert!(holds.pass(&to("bob", 1)), "the refused one again");
        assert!(holds.pass(&to("bob", 2)), "then the ones after it");
        let anonymous =
            TimMessage { to_tid: Some(Tid { node: "bob".into(), ..Tid::default() }), ..TimMessage::default() };
        assert!(Key::of(&anonymous).is_none(), "a message without an id holds nothing");
    }
}
