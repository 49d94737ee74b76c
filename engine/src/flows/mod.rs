//! The flows: what a client's frame or an operator's request sets going, composed of the
//! services ([`crate::server::Server`] holds them). Only flows and the listeners see that
//! composition.

pub mod big_data;
pub mod business;
pub mod group_message;
pub mod login;
pub mod message;
pub mod offline;
pub mod presence;
pub mod profiles;
pub mod sending;
