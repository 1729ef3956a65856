//! The workspace's message API ([`spsc_core::MessageSender`] / [`spsc_core::MessageReceiver`])
//! over TCP, with what plain TCP does not give: **a message pushed is delivered exactly once and
//! in order, across dropped connections and `kill -9` of either process.** Generic code written
//! for the in-process ring or the shared-memory channel runs over it unchanged: an engine moves
//! from one host to two by changing one constructor.
//!
//! # How
//!
//! - Every message pushed is first committed to a **persisted send queue**: a file per name
//!   pair (`<folder>/<local>_<remote>`, in `shm-channel`'s validated segment format), which a
//!   crash of the process leaves intact. It stays there until the peer has **popped** it.
//! - Each side persists its **pop count** of the peer's stream; pop is the commit. The count
//!   travels back as the acknowledgement, in front of each write and in heartbeats.
//! - On every (re)connect a **hello** exchange compares both sides' numbers with exact
//!   arithmetic, drops what the peer popped and resends the rest in order. An impossible
//!   combination (a restored backup, a lost file, another session) is a typed
//!   [`RecoveryError`] with every number, and the [`RecoveryPolicy`] decides: refuse and touch
//!   nothing (the default), or move the old file aside and start afresh.
//! - A frame on the wire is the queued record byte for byte, so a burst goes to the socket
//!   straight from the queue's memory in one write; the receiver reads into a fixed buffer
//!   and hands out each message in place ([`frame`] has the format).
//!
//! # Use
//!
//! - The side that connects: [`Connection::connect`] (blocks up to its timeout) or
//!   [`Connection::client`] (returns at once; the first `poll` connects).
//! - The side that listens: [`Acceptor`], which reads each client's hello, asks the
//!   application's login check (the peer's address and name; a refusal's reason reaches the
//!   client as [`ConnectionError::Rejected`]) and keeps one [`Connection`] per client name.
//! - Logins on one thread, connections on others (a server's control and worker threads): the
//!   acceptor's two halves, public. A [`LoginListener`] reads each hello (bounded work per
//!   `poll`, sockets that never finish their hello dropped after the handshake timeout) and
//!   yields a [`PendingLogin`]: owned, `Send`, one pointer wide, carrying the socket, the
//!   client's address, name and session. The thread owning the pair applies it with
//!   [`Connection::from_login`] (the pair's first login: opens its state file) or
//!   [`Connection::take_login`] (a login again: the old socket is dropped, nothing queued is
//!   lost), or refuses it with [`PendingLogin::reject`] (the client receives the reason as
//!   [`ConnectionError::Rejected`]). [`Acceptor`] is these halves on one thread.
//! - No thread runs behind any of them: call [`Connection::poll`] (and [`Acceptor::poll`] or
//!   [`LoginListener::poll`]) with the time from the thread that owns them. `poll` completes connects and handshakes, reads,
//!   writes, sends heartbeats, drops a silent peer and reconnects (client) with back-off. The
//!   hot path reads no clock: [`shm_channel::monotonic_nanos`] is a fine `now`.
//! - Sending: `alloc` reserves room in the queue, you write the payload in place, `push`
//!   commits it and writes it to the socket at once (one `send`, or a `writev` when an ack
//!   goes in front). For bursts, [`TcpSlot::push_more`] commits without writing and
//!   [`Connection::flush_queued`] sends them all in one write. `alloc` works while disconnected: messages wait in the queue. A full
//!   queue is [`SendError::Full`](spsc_core::SendError::Full), never a drop.
//! - Receiving: `front` borrows the oldest complete message in place (8-byte aligned), `pop`
//!   commits it. When nothing is buffered, `front` reads the socket once.
//!
//! ```
//! use shm_tcp::{Acceptor, AcceptorOptions, Connection, ConnectionOptions};
//! use spsc_core::{MessageReceiver, MessageSender};
//!
//! # let dir = tempfile::tempdir()?;
//! // The state files' folder (normally each side has its own, on its own host).
//! let options = ConnectionOptions::new().dir(dir.path());
//! let mut server = Acceptor::<65536>::bind("gateway", "2026-12-02", AcceptorOptions::new(options.clone()))?;
//! let mut client = Connection::<65536>::client(server.local_addr(), "risk", "gateway", &options)?;
//!
//! // Queued at once, sent once connected.
//! client.send(7, b"order #1")?;
//!
//! // Both sides' poll loops (normally in two processes).
//! let now = shm_channel::monotonic_nanos;
//! let mut received = None;
//! while received.is_none() {
//!     while let Some(event) = server.poll(now(), |login| {
//!         // The login check: refuse unknown clients with a reason they will see.
//!         if login.client.as_str() == "risk" { Ok(()) } else { Err("unknown client".into()) }
//!     }) {
//!         println!("{event:?}");
//!     }
//!     for (_, conn) in server.connections() {
//!         let _ = conn.poll(now());
//!         if let Ok(message) = conn.front() {
//!             received = Some((message.tag(), message.payload().to_vec()));
//!             conn.pop()?; // the commit: from here on the client drops it from its queue
//!         }
//!     }
//!     let _ = client.poll(now());
//! }
//! assert_eq!(received, Some((7, b"order #1".to_vec())));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Programs to run, kill and restart at will: `examples/echo_server.rs` and
//! `examples/echo_client.rs` (each prints a line on any gap or duplicate).
//!
//! # Costs and choices
//!
//! - Per message: the ring's push into the mapped file (no system call), one `send` when
//!   connected; per receive, one `recv` when nothing is buffered, and one 8-byte store into the
//!   file per pop. The acknowledgement rides in front of a write once a sixty-fourth of the
//!   peer's queue was popped since the last one; alone, it is sent after a quarter, or as the
//!   heartbeat. (One per message would make both sides parse and apply one per message; the
//!   hello's exact numbers make resends exact whatever the acknowledgements' pace.)
//! - Memory is fixed when a connection is made: the queue file (`C` bytes plus 4 KiB), a
//!   receive buffer ([`ConnectionOptions::receive_buffer`], at least two of the largest
//!   frames). A peer faster than the application is held back by TCP's flow control.
//! - [`Durability::ProcessCrash`] (default) survives any crash of the process; with
//!   [`Durability::PowerLoss`] each push and pop also `msync`s (a system call and a disk write
//!   per message; `BENCHMARKS.md` has its cost).
//! - Security: an [`Acceptor`] listens on loopback unless told otherwise; a pre-shared key
//!   ([`ConnectionOptions::key`]) authenticates both hellos with HMAC-SHA256 over fresh nonces,
//!   so a process without the key can neither take a name pair over nor receive what is queued
//!   for it; a socket that never completes its hello is dropped after the handshake timeout.
//!   Without a key, anyone who can reach the port and knows a client's name can log in as it.
//! - A client that logs in while its earlier socket still looks alive replaces it (the earlier
//!   one is closed first, so the two never interleave).
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod acceptor;
mod connection;
mod error;
pub mod frame;
pub mod handshake;
pub mod hello;
pub mod login;
mod options;
mod queue;
mod recv_buf;

pub use acceptor::{Acceptor, AcceptorEvent, AcceptorOptions, ConnId, LoginRequest};
pub use connection::{Connection, ConnectionStats, LinkState, TcpSlot};
pub use error::{ConnectionError, QueueError};
pub use hello::RecoveryError;
pub use login::{ListenerEvent, LoginListener, PendingLogin};
pub use options::{ConnectionOptions, RecoveryPolicy};
pub use queue::{Durability, FILE_KIND};
