//! TIM's client protocol: the frame codec (thrift compact and JSON), and a Rust client that
//! tests and the load generator use to talk to a server.

pub mod admin_auth;
pub mod client;
pub mod codec;
pub mod frame;
pub mod hex;
pub mod proto;
pub mod report;
pub mod rpc;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use codec::{DecodeError, Encoding};
pub use frame::{ClientFrame, FrameType, ServerFrame};

#[cfg(test)]
mod golden_tests;
