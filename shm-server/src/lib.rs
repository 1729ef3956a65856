//! A busy-polling server for low-latency clients on the same host: logins by name pair over a
//! Unix socket, one shared-memory channel per session, connections sharded into groups polled
//! by the user's own threads, and a request/reply layer.
//!
//! TODO(crate docs): filled in with the first release.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod client;
mod config;
mod control;
mod error;
mod group;
mod handoff;
pub mod request;
mod server;
pub mod wire;

pub use client::{Client, ClientEvent, ClientOptions};
pub use config::{ServerConfig, MAX_ALLOWED_UIDS, MAX_PENDING_LOGINS};
pub use control::{
    Control, ControlStats, Decision, LoginCheck, LoginRequest, LoginTransport, ServerEvent,
};
pub use error::{ClientError, MoveError, ServerError};
pub use group::{ConnStats, Group, GroupStats, Reply, Request};
pub use handoff::{CloseReason, ConnId};
pub use server::Server;
