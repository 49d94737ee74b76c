//! What the message flows share: the kinds of messages a client sends, the sender as the
//! server states it, and what became of a message frame.

use tim_net::proto::{Tid, TimAck};

use crate::model::ident::UserId;
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
