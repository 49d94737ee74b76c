//! A connection's messages to one conversation keep the order it sent them in, through moves,
//! leaves and restarts: once one is refused as retryable (5102), the connection's later
//! messages to the same target are refused the same way, until the client sends that one
//! again (the same client `id`) or [`HOLD_FOR`] passes. A client that sends its refused
//! messages again in their order (as a careful TIM client does) has them stored in that order;
//! without the hold, a message sent after the refused one could be stored before it.
//!
//! A message without a client `id` cannot be recognized when sent again: it holds nothing.
//! Nor does a copy of a message stored already on the connection (a client that sent it twice,
//! whose first copy was stored and echoed): the client has no reason to send it again, and
//! waiting for it would refuse every later message to its target until [`HOLD_FOR`] passed.

use std::collections::HashMap;

use tim_net::proto::TimMessage;
use tokio::time::{Duration, Instant};

/// How long a refusal holds a target's later messages when its message is not sent again.
const HOLD_FOR: Duration = Duration::from_secs(30);
/// Most targets held at once per connection.
const MAX_HELD: usize = 256;
/// The latest stored messages a connection remembers (a copy refused after one of them holds
/// nothing): a burst's worth and more.
const RECENT: usize = 64;

/// The targets a connection's refusals hold, with the client id each waits for; and the
/// connection's latest stored messages (target hash, client id).
pub(super) struct Holds {
    held: HashMap<String, (i64, Instant)>,
    stored: [Option<(u64, i64)>; RECENT],
    next: usize,
}

impl Default for Holds {
    fn default() -> Self {
        Self { held: HashMap::new(), stored: [None; RECENT], next: 0 }
    }
}

/// What a hold knows of a message: its target (group or recipient) and client id.
pub(super) struct Key {
    target: String,
    id: i64,
}

impl Key {
    pub(super) fn id(&self) -> i64 {
        self.id
    }

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
        let Some(&(waits_for, since)) = self.held.get(&key.target) else { return true };
        if key.id == waits_for || since.elapsed() > HOLD_FOR {
            self.held.remove(&key.target);
            return true;
        }
        false
    }

    /// The message of `key` was refused as retryable: its target's later messages wait for
    /// it, unless a copy of it was stored on this connection already.
    pub(super) fn hold(&mut self, key: Key) {
        if self.held.contains_key(&key.target) || self.stored.contains(&Some((target_hash(&key.target), key.id))) {
            return;
        }
        if self.held.len() >= MAX_HELD {
            self.held.retain(|_, (_, since)| since.elapsed() <= HOLD_FOR);
            if self.held.len() >= MAX_HELD {
                return;
            }
        }
        self.held.insert(key.target, (key.id, Instant::now()));
    }

    /// The message of `key` was stored (and echoed).
    pub(super) fn stored(&mut self, key: &Key) {
        if let Some(slot) = self.stored.get_mut(self.next % RECENT) {
            *slot = Some((target_hash(&key.target), key.id));
        }
        self.next = self.next.wrapping_add(1);
    }
}

fn target_hash(target: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(target.as_bytes())
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

    /// A client sent a message twice; the first copy was stored and echoed, the second refused:
    /// its later messages go on (it will not send the stored one again). Positive control: a
    /// refused message never stored holds them.
    #[test]
    fn a_refused_copy_of_a_stored_message_holds_nothing() {
        let mut holds = Holds::default();
        holds.stored(&to("bob", 96));
        holds.hold(to("bob", 96));
        assert!(holds.pass(&to("bob", 97)));
        holds.hold(to("bob", 98));
        assert!(!holds.pass(&to("bob", 99)), "98 was never stored");
        assert!(holds.pass(&to("bob", 98)));
    }
}
