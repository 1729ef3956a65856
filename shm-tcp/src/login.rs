//! The hello-reading half of the listening side: [`LoginListener`] accepts sockets and reads
//! each client's hello; a completed one is a [`PendingLogin`], an owned value that may cross to
//! the thread owning the pair's [`Connection`](crate::Connection), which applies it
//! ([`Connection::from_login`](crate::Connection::from_login) for the pair's first login,
//! [`Connection::take_login`](crate::Connection::take_login) for the next ones), or refused
//! with a reason ([`PendingLogin::reject`]). [`Acceptor`](crate::Acceptor) is the two halves on
//! one thread.
//!
//! ```
//! use std::sync::mpsc;
//!
//! use shm_tcp::{AcceptorOptions, Connection, ConnectionOptions, ListenerEvent, LoginListener};
//! use spsc_core::{MessageReceiver, MessageSender};
//!
//! # let dir = tempfile::tempdir()?;
//! let options = ConnectionOptions::new().dir(dir.path());
//! let listen = AcceptorOptions::new(options.clone());
//! let mut listener = LoginListener::bind("gateway", "2026-12-02", &listen)?;
//! let now = shm_channel::monotonic_nanos;
//!
//! // A worker thread owns the pair's connection; logins reach it through a channel.
//! let (to_worker, logins) = mpsc::channel();
//! let server_options = options.clone();
//! let worker = std::thread::spawn(move || -> Result<Vec<u8>, shm_tcp::ConnectionError> {
//!     let mut conn: Option<Connection<65536>> = None;
//!     loop {
//!         while let Ok(login) = logins.try_recv() {
//!             match conn.as_mut() {
//!                 None => conn = Some(Connection::from_login(login, &server_options, now())?.0),
//!                 Some(conn) => conn.take_login(login, now())?, // the client logged in again
//!             }
//!         }
//!         if let Some(conn) = conn.as_mut() {
//!             let _ = conn.poll(now());
//!             if let Ok(payload) = conn.recv_with(|m| m.payload().to_vec()) {
//!                 return Ok(payload);
//!             }
//!         }
//!         std::thread::yield_now();
//!     }
//! });
//!
//! let mut client = Connection::<65536>::client(listener.local_addr(), "risk", "gateway", &options)?;
//! client.send(7, b"order #1")?;
//! // This thread reads the logins (and, here, also runs the client).
//! while !worker.is_finished() {
//!     while let Some(event) = listener.poll(now()) {
//!         match event {
//!             ListenerEvent::Login(login) if login.client_name().as_str() == "risk" => {
//!                 to_worker.send(login).expect("the worker runs")
//!             }
//!             ListenerEvent::Login(login) => {
//!                 let _ = login.reject("unknown client"); // the client sees `Rejected`
//!             }
//!             other => println!("{other:?}"),
//!         }
//!     }
//!     let _ = client.poll(now());
//! }
//! assert_eq!(worker.join().expect("no panic")?, b"order #1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use shm_channel::SegmentName;

use crate::acceptor::AcceptorOptions;
use crate::error::{ConnectionError, QueueError};
use crate::frame::{self, Kind, FRAME_OVERHEAD};
use crate::handshake::{Handshake, Step};
use crate::hello::{Hello, MAX_HELLO_PAYLOAD, MAX_REJECT_REASON};

/// Bytes a client may send before its hello is handled: the hello frame and an auth frame.
const PENDING_BUF: usize = frame::frame_size(MAX_HELLO_PAYLOAD as u32) + 128;

/// The most sockets one [`LoginListener::poll`] accepts; the rest wait in the kernel's backlog
/// for the next call.
pub const ACCEPTS_PER_POLL: usize = 16;

struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Box<[u8; PENDING_BUF]>,
    len: usize,
    since: u64,
    handshake: Handshake,
}

/// What a [`LoginListener::poll`] found.
#[non_exhaustive]
#[derive(Debug)]
pub enum ListenerEvent {
    /// A client's hello arrived whole and well-formed, naming this listener: hand it to the
    /// pair's connection, or refuse it.
    Login(PendingLogin),
    /// A socket was dropped before its hello completed: malformed bytes, a hello naming another
    /// acceptor, a key on one side only (the client was told why when it waits for an answer),
    /// the handshake timeout, or the client closed.
    Failed {
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        error: ConnectionError,
    },
}

/// The hello-reading half of an [`Acceptor`](crate::Acceptor), named `name`, in session
/// `session` (module docs): it owns the listening socket and the sockets whose hello it is
/// reading, and nothing of any pair.
///
/// `Send`: it may live on a thread of its own (a server's control thread) while the pairs'
/// connections live on others. No thread runs behind it: [`poll`](Self::poll) does its work.
pub struct LoginListener {
    listener: TcpListener,
    addr: SocketAddr,
    name: SegmentName,
    session: SegmentName,
    key: Option<Box<[u8]>>,
    handshake_timeout_ns: u64,
    max_pending: usize,
    pending: Vec<Pending>,
    /// Where the next poll starts reading, so that every pending socket is read in turn.
    cursor: usize,
}

impl core::fmt::Debug for LoginListener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoginListener")
            .field("name", &self.name)
            .field("session", &self.session)
            .field("addr", &self.addr)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn io_error(
    op: &'static str,
    peer: Option<SocketAddr>,
) -> impl FnOnce(std::io::Error) -> ConnectionError {
    move |error| ConnectionError::Io { op, peer, error }
}

pub(crate) fn valid_name(text: &str) -> Result<SegmentName, ConnectionError> {
    SegmentName::new(text).map_err(|error| {
        ConnectionError::Queue(QueueError::Name {
            name: text.to_owned(),
            reason: error.to_string(),
        })
    })
}

impl LoginListener {
    /// Listens as `name` in session `session` (both validated like segment names) on
    /// `options`' address. Of the options' [`ConnectionOptions`](crate::ConnectionOptions) it
    /// uses the key (a client's hello must be authenticated exactly when there is one) and the
    /// handshake timeout; the connections the logins are handed to must be made with the same
    /// key. The session goes with every login: a pair's first login makes its connection in it
    /// ([`Connection::from_login`](crate::Connection::from_login)).
    ///
    /// # Errors
    /// [`ConnectionError::Queue`] ([`QueueError::Name`]) for an invalid name;
    /// [`ConnectionError::Io`] if the address cannot be bound.
    pub fn bind(
        name: &str,
        session: &str,
        options: &AcceptorOptions,
    ) -> Result<Self, ConnectionError> {
        let (name, session) = (valid_name(name)?, valid_name(session)?);
        let listen = options.listen;
        let listener = TcpListener::bind(listen).map_err(io_error("binding", Some(listen)))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("setting the listener non-blocking", Some(listen)))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("reading the listener's address", Some(listen)))?;
        Ok(Self {
            listener,
            addr,
            name,
            session,
            key: options.connection.key.as_deref().map(Box::from),
            handshake_timeout_ns: options.connection.handshake_timeout_ns,
            max_pending: options.max_pending,
            pending: Vec::with_capacity(options.max_pending.min(1024)),
            cursor: 0,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name: the one clients' hellos must expect.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The session its logins carry.
    pub fn session(&self) -> &SegmentName {
        &self.session
    }

    /// Sockets accepted whose hello has not completed yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Accepts new sockets (at most [`ACCEPTS_PER_POLL`]; a socket beyond the options'
    /// `max_pending` is closed at once), then reads the pending ones in turn, one `read` each,
    /// until one has a whole hello or fails. Returns that event, if any: call until `None`.
    /// `now`: the caller's clock in nanoseconds; a socket whose hello is not whole a handshake
    /// timeout after it was accepted is dropped (a [`ListenerEvent::Failed`]).
    ///
    /// Cost when nothing happens: one `accept` that finds nothing and one `read` per pending
    /// socket; no allocation. Each accepted socket allocates its buffers (about 2 KiB) once.
    pub fn poll(&mut self, now: u64) -> Option<ListenerEvent> {
        self.accept_new(now);
        let total = self.pending.len();
        for _ in 0..total {
            if self.pending.is_empty() {
                break;
            }
            let i = self.cursor % self.pending.len();
            match self.advance(i, now) {
                Ok(None) => self.cursor = i + 1,
                Ok(Some(hello)) => {
                    self.cursor = i;
                    let login = self.complete(i, hello);
                    return Some(ListenerEvent::Login(login));
                }
                Err(error) => {
                    self.cursor = i;
                    let pending = self.pending.swap_remove(i);
                    return Some(ListenerEvent::Failed {
                        peer: pending.peer,
                        error,
                    });
                }
            }
        }
        None
    }

    fn accept_new(&mut self, now: u64) {
        for _ in 0..ACCEPTS_PER_POLL {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.pending.len() >= self.max_pending {
                        continue; // dropped: closed at once
                    }
                    if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    self.pending.push(Pending {
                        stream,
                        peer,
                        buf: Box::new([0; PENDING_BUF]),
                        len: 0,
                        since: now,
                        handshake: Handshake::acceptor(self.key.as_deref()),
                    });
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock, or a transient accept error
            }
        }
    }

    /// Reads pending socket `i` once. `Ok(Some(hello))`: its hello is whole, checked and names
    /// this listener.
    fn advance(&mut self, i: usize, now: u64) -> Result<Option<Hello>, ConnectionError> {
        let pending = &mut self.pending[i];
        let peer = Some(pending.peer);
        if now.saturating_sub(pending.since) > self.handshake_timeout_ns {
            return Err(ConnectionError::TimedOut {
                peer,
                waiting_for: "the client's hello",
                waited_ns: now - pending.since,
            });
        }
        match pending.stream.read(&mut pending.buf[pending.len..]) {
            Ok(0) => return Err(ConnectionError::Closed { peer }),
            Ok(n) => pending.len += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
            Err(error) => return Err(io_error("reading the hello", peer)(error)),
        }
        let bytes = &pending.buf[..pending.len];
        let Some(info) =
            frame::decode(bytes, 0).map_err(|error| ConnectionError::Frame { peer, error })?
        else {
            if pending.len == PENDING_BUF {
                return Err(ConnectionError::Protocol {
                    peer,
                    reason: "sent more than a hello without completing one".into(),
                });
            }
            return Ok(None);
        };
        let payload = &bytes[FRAME_OVERHEAD..FRAME_OVERHEAD + info.payload_len as usize];
        let step = match pending.handshake.on_frame(&info, payload) {
            Ok(step) => step,
            Err(error) => {
                let error = crate::connection::handshake_error(peer, error);
                if let ConnectionError::Authentication { reason, .. } = &error {
                    send_reject(&mut pending.stream, reason);
                }
                return Err(error);
            }
        };
        let Some(hello) = pending
            .handshake
            .peer()
            .filter(|_| step == Step::NeedAnswer)
            .cloned()
        else {
            // An acceptor's handshake answers its first frame with `NeedAnswer` or an error.
            return Err(ConnectionError::Protocol {
                peer,
                reason: "the first frame was not a hello".into(),
            });
        };
        if hello.peer_name != self.name {
            let reason = format!(
                "this acceptor is \"{}\", not \"{}\"",
                self.name, hello.peer_name
            );
            send_reject(&mut pending.stream, &reason);
            return Err(ConnectionError::WrongPeer {
                peer,
                expected: self.name.to_string(),
                found: hello.peer_name.to_string(),
            });
        }
        pending.len -= info.size; // what is left: the bytes after the hello
        pending
            .buf
            .copy_within(info.size..info.size + pending.len, 0);
        Ok(Some(hello))
    }

    /// Turns pending socket `i`, whose hello `advance` found whole, into a login.
    fn complete(&mut self, i: usize, hello: Hello) -> PendingLogin {
        let pending = self.pending.swap_remove(i);
        PendingLogin(Box::new(LoginParts {
            stream: pending.stream,
            peer: pending.peer,
            hello,
            handshake: pending.handshake,
            rest: pending.buf,
            rest_len: pending.len,
            acceptor: self.name.clone(),
            session: self.session.clone(),
            accepted_at: pending.since,
        }))
    }
}

/// A client's login whose hello a [`LoginListener`] read: the socket, the client's address and
/// hello, the handshake's first half, and the bytes the client sent after its hello (at most
/// about 130: an authentication code). An owned, `Send` value, for the thread owning the pair's
/// connection: [`Connection::from_login`](crate::Connection::from_login) (the pair's first
/// login), [`Connection::take_login`](crate::Connection::take_login) (a login again), or
/// [`reject`](Self::reject). Dropping it closes the socket without a word to the client.
///
/// The client waits for the acceptor's hello meanwhile: hand it over well within the client's
/// handshake timeout (2 s by default).
///
/// One pointer wide (its parts are boxed): cheap to move through a channel or a ring.
pub struct PendingLogin(pub(crate) Box<LoginParts>);

pub(crate) struct LoginParts {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) hello: Hello,
    pub(crate) handshake: Handshake,
    pub(crate) rest: Box<[u8; PENDING_BUF]>,
    pub(crate) rest_len: usize,
    pub(crate) acceptor: SegmentName,
    pub(crate) session: SegmentName,
    pub(crate) accepted_at: u64,
}

impl core::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("peer", &self.0.peer)
            .field("client", &self.0.hello.name)
            .field("session", &self.0.hello.session)
            .field("acceptor", &self.0.acceptor)
            .finish_non_exhaustive()
    }
}

impl PendingLogin {
    /// The client's name (validated, as every name of the hello).
    pub fn client_name(&self) -> &SegmentName {
        &self.0.hello.name
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// The session the client knows (`None` on its first login, or after it started afresh).
    pub fn session(&self) -> Option<&SegmentName> {
        self.0.hello.session.as_ref()
    }

    /// The client's whole hello: its numbers (first unacknowledged, next, popped), its largest
    /// payload, whether it is authenticated. Checked against the pair's state only when the
    /// login is applied to its connection.
    pub fn hello(&self) -> &Hello {
        &self.0.hello
    }

    /// The listener's name, which the client's hello expects: the accepting side's name of the
    /// pair.
    pub fn acceptor_name(&self) -> &SegmentName {
        &self.0.acceptor
    }

    /// The listener's session: the one a pair's first login makes its connection in.
    pub fn acceptor_session(&self) -> &SegmentName {
        &self.0.session
    }

    /// The `now` of the listener's `poll` that accepted the socket.
    pub fn accepted_at(&self) -> u64 {
        self.0.accepted_at
    }

    /// Refuses the login: sends `reason` (cut to 256 bytes at a character boundary), which the
    /// client receives as [`ConnectionError::Rejected`], and closes the socket. One `write`; the
    /// client retries after its back-off.
    ///
    /// # Errors
    /// [`ConnectionError::Io`] if the refusal could not be written whole (the client then sees
    /// the socket closed instead); the socket is closed either way.
    pub fn reject(mut self, reason: &str) -> Result<(), ConnectionError> {
        let peer = Some(self.0.peer);
        let mut buf = [0u8; frame::frame_size(MAX_REJECT_REASON as u32)];
        let size = frame::write_control(&mut buf, Kind::Reject, 0, frame::reject_reason(reason));
        let written = self
            .0
            .stream
            .write(&buf[..size])
            .map_err(io_error("sending the refusal", peer))?;
        if written < size {
            return Err(ConnectionError::Io {
                op: "sending the refusal",
                peer,
                error: std::io::ErrorKind::WriteZero.into(),
            });
        }
        Ok(())
    }
}

/// Tells a client why it is refused (best effort: the socket is dropped right after).
fn send_reject(stream: &mut TcpStream, reason: &str) {
    let mut buf = [0u8; frame::frame_size(MAX_REJECT_REASON as u32)];
    let size = frame::write_control(&mut buf, Kind::Reject, 0, frame::reject_reason(reason));
    let _ = stream.write(&buf[..size]);
}
