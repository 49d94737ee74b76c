//! Frames that ask the client for an ack (tim-protocol.md §2.3): chat deliveries and offline
//! batches. A [`Delivery`] is handed to each target session
//! ([`crate::session::outbound::start`]); each session sends it with a fresh ack id per
//! attempt, retries on timeout, and reports whether the client acked. Its [`Outcome`] waits
//! for the first ack, or for every session to give up (or to end, which drops its copy).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tim_kv::RowId;
use tim_net::codec::{body_bytes, Encoding};
use tim_net::frame::ack_frame;
use tim_net::proto::{TimMessage, TimMessageList};
use tim_net::FrameType;
use tokio::sync::mpsc;

use crate::services::chat_log::Span;

/// What a delivery carries.
pub enum Payload {
    Message(Box<TimMessage>),
    Batch(TimMessageList),
}

/// A payload with its encodings, made once per encoding however many users, sessions and
/// attempts need it (a group message shares one among all members).
pub struct Body {
    payload: Payload,
    compact: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Body {
    pub fn new(payload: Payload) -> Arc<Self> {
        Arc::new(Self { payload, compact: OnceLock::new(), json: OnceLock::new() })
    }

    /// A message, for its users' sessions (one body however many users get it).
    pub fn message(msg: TimMessage) -> Arc<Self> {
        Self::new(Payload::Message(Box::new(msg)))
    }

    /// A message that arrived encoded (thrift-compact) from another node: compact sessions
    /// get those bytes as they came.
    pub fn arrived(msg: TimMessage, compact: Bytes) -> Arc<Self> {
        Arc::new(Self {
            payload: Payload::Message(Box::new(msg)),
            compact: OnceLock::from(compact),
            json: OnceLock::new(),
        })
    }

    /// The thrift-compact encoding, made once.
    pub fn compact(&self) -> &Bytes {
        self.encoded(Encoding::Compact)
    }

    /// The message's `mid` (none for a batch).
    pub fn mid(&self) -> Option<i64> {
        match &self.payload {
            Payload::Message(m) => m.mid,
            Payload::Batch(_) => None,
        }
    }

    fn encoded(&self, encoding: Encoding) -> &Bytes {
        let cell = match encoding {
            Encoding::Compact => &self.compact,
            Encoding::Json => &self.json,
        };
        cell.get_or_init(|| match &self.payload {
            Payload::Message(m) => body_bytes(&**m, encoding),
            Payload::Batch(b) => body_bytes(b, encoding),
        })
    }
}

/// What a delivery's ack settles besides itself, before the acking session reads the client's
/// next frame (so an ack followed by an offline request cannot get the same message twice).
#[derive(Debug, Default)]
pub struct Stands {
    /// Offline-queue entries, deleted.
    pub entries: Vec<RowId>,
    /// A span of a conversation's messages: the recipient's cursor moves over it.
    pub span: Option<Span>,
}

impl Stands {
    pub fn entries(entries: Vec<RowId>) -> Self {
        Self { entries, span: None }
    }

    pub fn span(span: Span) -> Self {
        Self { entries: Vec::new(), span: Some(span) }
    }
}

pub struct Delivery {
    kind: FrameType,
    body: Arc<Body>,
    stands: Stands,
    report_tx: mpsc::Sender<bool>,
}

impl Delivery {
    /// A delivery for `targets` sessions, and its outcome: once each session has reported (or
    /// dropped its copy), the outcome is decided.
    pub fn new(kind: FrameType, body: Arc<Body>, stands: Stands, targets: usize) -> (Arc<Self>, Outcome) {
        let (report_tx, reports) = mpsc::channel(targets.max(1));
        (Arc::new(Self { kind, body, stands, report_tx }), Outcome { reports })
    }

    /// The frame for one attempt: type with the ack bit, the ack id, the body.
    pub fn frame(&self, ack_id: u32, encoding: Encoding) -> Bytes {
        ack_frame(self.kind, ack_id, self.body.encoded(encoding))
    }

    pub fn stands(&self) -> &Stands {
        &self.stands
    }

    /// A session's outcome: acked, or given up after its last attempt.
    pub fn report(&self, acked: bool) {
        // The channel holds one report per target session, so it cannot be full; a closed
        // channel means the outcome is already decided.
        let _ = self.report_tx.try_send(acked);
    }
}

/// The outcome of a delivery handed to its sessions.
pub struct Outcome {
    reports: mpsc::Receiver<bool>,
}

impl Outcome {
    /// Whether any session acked: waits for the first ack, or until every session gave up or
    /// ended.
    pub async fn acked(mut self) -> bool {
        while let Some(acked) = self.reports.recv().await {
            if acked {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message that crossed a node link goes to compact sessions as the bytes it came in
    /// (not encoded again), and to JSON sessions encoded from the decoded message.
    #[test]
    fn an_arrived_message_is_sent_as_it_came() {
        let msg = TimMessage { mid: Some(7), data_string: Some("hi".into()), ..TimMessage::default() };
        let wire = body_bytes(&msg, Encoding::Compact);
        let body = Body::arrived(msg.clone(), wire.clone());
        assert_eq!(body.compact().as_ptr(), wire.as_ptr(), "the same bytes, not a new encoding");
        assert_eq!(body.encoded(Encoding::Json), &body_bytes(&msg, Encoding::Json));
        assert_eq!(body.mid(), Some(7));
        // Positive control: a body made here encodes its message.
        let made = Body::new(Payload::Message(Box::new(msg)));
        assert_eq!(made.compact(), &wire);
        assert_ne!(made.compact().as_ptr(), wire.as_ptr());
    }
}
