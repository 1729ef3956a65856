//! A busy-polling server for low-latency clients: logins by name pair, one channel per session
//! (shared memory on the same host, [`shm_tcp`] across hosts), connections sharded into groups
//! polled by the user's own threads, and a request/reply layer ([`request`]).
//!
//! # The pieces
//!
//! - [`Server`] holds a [`Control`] (the login socket `login.sock` in the server's folder, the
//!   directory of connections) and its [`Group`]s (the connections each thread polls). It starts
//!   no thread: the user calls [`Server::poll_control`] and [`Server::poll_group`] from one
//!   thread, or [`Server::split`]s it and gives control and each group a thread of their own.
//!   Every call takes `now` ([`shm_channel::monotonic_nanos`]); nothing reads a clock.
//! - [`Client`] logs in from another process of the same host and is a
//!   [`MessageSender`](spsc_core::MessageSender) / [`MessageReceiver`](spsc_core::MessageReceiver)
//!   over its session's channel, with [`Client::poll`] for heartbeats and reconnects. A TCP
//!   client is a [`shm_tcp::Connection`] connecting to the server's name
//!   ([`ServerConfig::tcp`]); the handler cannot tell the two apart.
//! - The handler given to a poll sees each message in place ([`Request`]) and may answer it in
//!   place ([`Reply`]). [`request`] adds request ids, timeouts and late-reply detection.
//! - [`pubsub`] publishes topics as journals ([`shm_channel::journal`]): one append per
//!   publication whatever the number of subscribers; subscriptions checked by the server;
//!   shared-memory subscribers read the topic directly, remote ones get it forwarded over their
//!   connection and resume after a reconnect without loss or duplicates.
//!
//! # Logins and sessions
//!
//! A client connects to `<folder>/login.sock` and sends one fixed-size record ([`wire`]): the
//! protocol version, its name, the server name it last knew and the channel capacity it was
//! built with. The server reads the client's uid and pid from the socket (`SO_PEERCRED`) and by
//! default admits only its own uid ([`ServerConfig::allow_uid`] widens that); then it refuses a
//! capacity mismatch, a name that is already logged in (never two holders of one end), and a
//! full server, and asks the user's login check ([`Decision`]) for a group or a refusal with a
//! reason, which the client receives as [`ClientError::Rejected`]. Everything is bounded: logins
//! handled per poll, logins in progress ([`MAX_PENDING_LOGINS`]), a login timeout that drops a
//! client sending nothing or half a record, connections per group.
//!
//! A name pair is a session: the channel segment is `<folder>/<server name>/<client name>`.
//! Logging in again with the same pair, after a crash of either side, re-attaches to the same
//! segment with every unconsumed message; a server started under a new name (a date in it, say)
//! starts every pair afresh. The login socket stays open for the life of the connection, so the
//! death of either process is seen at once; heartbeats written into the segment cover a hung or
//! stopped (`SIGSTOP`) peer, which its group closes after [`ServerConfig::heartbeat_timeout`].
//!
//! # Groups and the hand-off
//!
//! A connection belongs to exactly one party at a time. Control makes it at login and hands it
//! to its group through a ring of connection events (one [`spsc_core::Ring`] each way per
//! group, carrying the connection itself); moving it ([`Control::move_connection`]) asks the
//! group to give it back and forwards it; closing it asks the group to drop it and waits for the
//! answer before the name is free again. There is no shared table and no benign race: the loom
//! models in `src/handoff.rs` check this protocol.
//!
//! A poll gives each connection a budget ([`ServerConfig::budget`]) of messages, so a client
//! flooding its channel never starves the others of its group; a client that stops reading gets
//! [`SendError::Full`](spsc_core::SendError::Full) on the server's replies (counted in
//! [`ConnStats::replies_full`]), never a stall of the group.
//!
//! # Pop the request, then push the reply
//!
//! For each message the group runs the handler (the request in place, the reply written in
//! place), then pops the request (the commit), then pushes the reply: tcpshm's rule. A crash
//! of the server between the two loses at most that reply, which the client sees as a timeout
//! ([`request::Requests::expire`]); the request is never delivered again, so its work is never
//! done twice. A client that needs the answer asks again with a new request id.
//!
//! # Costs
//!
//! - [`Group::poll`] on idle shared-memory connections: one Acquire load per connection and one
//!   for the event ring; no syscall, no allocation. A TCP connection adds its link's `poll` (a
//!   `read`) once a millisecond.
//! - [`Control::poll_control`] when idle: one `epoll_wait` that returns at once (about 260 ns
//!   here, more than a whole echo through a group): call it at most once a millisecond from the
//!   loop that polls the groups, or from a thread of its own. Logins allocate (a segment is
//!   opened); the groups' polls never do.
//! - `BENCHMARKS.md` has the measured figures (echo through the server against the bare
//!   channel and the cross-process floor).
//!
//! ```
//! use shm_channel::monotonic_nanos;
//! use shm_server::{Client, ClientOptions, Decision, Server, ServerConfig};
//! use spsc_core::{MessageReceiver, MessageSender};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! // One thread for control, one for the only group.
//! let config = ServerConfig::new("matcher", dir.path())?.groups(1, 64);
//! let server = Server::<65536>::new(config, |_| Decision::Accept { group: 0 })?;
//! let (mut control, mut groups) = server.split();
//! let mut group = groups.pop().unwrap();
//! let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
//! let (stop_control, stop_group) = (stop.clone(), stop.clone());
//! let control = std::thread::spawn(move || {
//!     while !stop_control.load(std::sync::atomic::Ordering::Relaxed) {
//!         control.poll_control(monotonic_nanos());
//!     }
//! });
//! let group = std::thread::spawn(move || {
//!     while !stop_group.load(std::sync::atomic::Ordering::Relaxed) {
//!         group.poll(monotonic_nanos(), |request, reply| {
//!             // Answer in place: the reply goes out after the request is popped.
//!             if let Ok(body) = reply.alloc(request.payload().len() as u32, request.tag()) {
//!                 body.copy_from_slice(request.payload());
//!             }
//!         });
//!     }
//! });
//!
//! // Normally another process.
//! let mut client = Client::<65536>::connect(dir.path(), "trader-7", &ClientOptions::new())?;
//! client.send(3, b"order")?;
//! let echoed = loop {
//!     client.poll(monotonic_nanos())?;
//!     if let Ok(message) = client.front() {
//!         break (message.tag(), message.payload().to_vec());
//!     }
//! };
//! client.pop()?;
//! assert_eq!(echoed, (3, b"order".to_vec()));
//! stop.store(true, std::sync::atomic::Ordering::Relaxed);
//! control.join().unwrap();
//! group.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod client;
mod config;
mod control;
mod error;
mod group;
mod handoff;
// The journal is not built under `--cfg loom` (its shared layouts hold loom's atomics there).
#[cfg(not(loom))]
pub mod pubsub;
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
