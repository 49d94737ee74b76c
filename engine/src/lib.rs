//! The IM engine of tim-rs: the services that own TIM's data and their slot operations, the
//! flows that compose them, the sessions of clients and the listeners. engine/README.md is
//! the map.

mod admin;
mod config;
mod error;
mod flows;
pub mod founding;
mod listeners;
mod metrics;
mod model;
mod node;
mod seam;
pub mod secret;
mod server;
mod services;
mod session;
#[cfg(test)]
mod testing;

pub use admin::wire as export_wire;
pub use config::ServeConfig;
pub use node::{run, start, NodeHandle};
