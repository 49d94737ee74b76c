//! The data model every service shares: ids, the tables TIM's data lives in, and which slot
//! each kind of key is placed in.

pub mod ident;
pub mod lease;
pub mod partition;
pub mod tables;
