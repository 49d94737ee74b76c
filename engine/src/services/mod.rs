//! The services: each owns its state and its slot operations, runs them where their slot's
//! owner is through the seam ([`crate::seam`]), and answers the ones that arrive from other
//! nodes. A service never sees the composition of services; the few it builds on are given to
//! it when the node starts ([`crate::node`]).

pub mod accounts;
pub mod bans;
pub mod chat_log;
pub mod directory;
pub mod groups;
pub mod history;
pub mod inbox;
pub mod offline;
pub mod pairs;
pub mod push;
pub mod restore;
pub mod rooms;
pub mod rosters;
pub mod tokens;
