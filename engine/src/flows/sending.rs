//! What the message flows share: the kinds of messages a client sends, the sender as the
//! server states it, and what became of a message frame.

use tim_net::proto::{ErrorCode, Tid, TimAck};

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::server::Server;
use crate::services::history::Accepted;

/// `msType`s a client sends: to a user, to a group.
pub const MS_USER: i8 = 2;
pub const MS_ROOM: i8 = 3;
/// `odType`s: a normal message, a recall, a burn (after reading), a stream.
pub const OD_NORMAL: i8 = 1;
pub const OD_RECALL: i8 = 2;
pub const OD_BURN: i8 = 3;
pub const OD_STREAM: i8 = 5;
/// `odType`s above this are application-defined.
pub const OD_CUSTOM_ABOVE: i8 = 30;

/// Refused (5102, try again) when this node's lease ended since the message was stored: no
/// echo or delivery goes out from a node the others may have removed meanwhile (as when the
/// lease ends during the write itself). The message stays stored: a 1:1 retry with its client
/// `id` finds it.
pub fn still_serving(server: &Server) -> Result<(), EngineError> {
    if server.data.ownership().gate().is_open() {
        Ok(())
    } else {
        Err(ErrorCode::BlockingOperation.into())
    }
}

/// The sender as the server states it.
pub struct Sender {
    pub user: UserId,
    pub tid: Tid,
}

/// What became of an accepted message frame.
pub enum Next {
    /// A normal 1:1 message, to be stored with the others of the burst
    /// ([`crate::flows::message::store_and_push`]).
    Store(Box<Accepted>),
    /// Handled.
    Done,
    /// Handled; the sending session gets this ack (a group recall).
    Reply(TimAck),
}
