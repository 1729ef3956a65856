//! The workspace's message API ([`spsc_core::MessageSender`] / [`spsc_core::MessageReceiver`])
//! over TCP, with what plain TCP does not give: a message pushed is delivered exactly once and
//! in order, across disconnects and `kill -9` of either process.
//!
//! (Crate documentation continues in the README; this is the first version.)
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod acceptor;
mod connection;
mod error;
pub mod frame;
pub mod handshake;
pub mod hello;
mod options;
mod queue;
mod recv_buf;

pub use acceptor::{Acceptor, AcceptorEvent, AcceptorOptions, ConnId, LoginRequest};
pub use connection::{Connection, ConnectionStats, LinkState, TcpSlot};
pub use error::{ConnectionError, QueueError};
pub use hello::RecoveryError;
pub use options::{ConnectionOptions, RecoveryPolicy};
pub use queue::{Durability, FILE_KIND};
