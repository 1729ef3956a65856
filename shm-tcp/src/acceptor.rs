//! [`Acceptor`]: the listening side. It accepts sockets, reads each client's hello, asks the
//! application's login check, and hands the socket to the pair's [`Connection`], which it keeps
//! (a client that logs in again finds its connection, with everything queued for it).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;

use shm_channel::SegmentName;

use crate::connection::Connection;
use crate::error::{ConnectionError, QueueError};
use crate::frame::{self, Kind, FRAME_OVERHEAD};
use crate::handshake::{Handshake, Step};
use crate::hello::{MAX_HELLO_PAYLOAD, MAX_REJECT_REASON};
use crate::options::ConnectionOptions;

/// Bytes a client may send before its hello is handled: the hello frame and an auth frame.
const PENDING_BUF: usize = frame::frame_size(MAX_HELLO_PAYLOAD as u32) + 128;

/// Identifies a connection of an [`Acceptor`]; stable for the acceptor's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// What a client asks when it logs in, for the acceptor's login check.
#[derive(Debug)]
pub struct LoginRequest<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's name.
    pub client: &'a SegmentName,
    /// The session the client knows (`None` on its first login).
    pub session: Option<&'a SegmentName>,
    /// Whether this pair has a connection already (the client logs in again).
    pub known: bool,
}

/// What happened at the acceptor.
#[non_exhaustive]
#[derive(Debug)]
pub enum AcceptorEvent {
    /// A client's login was accepted and handed to its connection, which completes the
    /// handshake (its `poll` reports a failure).
    LoggedIn {
        /// The pair's connection.
        id: ConnId,
        /// The client's address.
        peer: SocketAddr,
        /// Whether the connection is new (the client's first login since the acceptor started).
        new: bool,
        /// Where a previous session's state file was moved (a new session starts afresh).
        moved_aside: Option<PathBuf>,
    },
    /// The login check refused a client; the client was told the reason.
    Refused {
        /// The client's address.
        peer: SocketAddr,
        /// The name it gave.
        client: String,
        /// The reason, as sent.
        reason: String,
    },
    /// A socket was dropped before or during its hello (malformed, timed out, wrong name, ...).
    Failed {
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        error: ConnectionError,
    },
}

/// How an acceptor listens.
#[derive(Clone, Debug)]
pub struct AcceptorOptions {
    listen: SocketAddr,
    max_pending: usize,
    connection: ConnectionOptions,
}

impl AcceptorOptions {
    /// Listens on `127.0.0.1`, a port the system picks (see [`Acceptor::local_addr`]); at
    /// most 64 sockets in their hello at once; connections made with `connection`.
    pub fn new(connection: ConnectionOptions) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_pending: 64,
            connection,
        }
    }

    /// The address to listen on. Loopback unless set: listening on another interface is a
    /// deliberate choice (use a key, [`ConnectionOptions::key`], on a network).
    pub fn listen_on(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The most sockets kept waiting for their hello; more are closed at once.
    pub fn max_pending(mut self, count: usize) -> Self {
        self.max_pending = count.max(1);
        self
    }
}

struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Box<[u8; PENDING_BUF]>,
    len: usize,
    since: u64,
    handshake: Handshake,
}

/// The listening side of the transport, named `name`, in session `session` (module docs).
///
/// No thread runs behind it: [`poll`](Self::poll) accepts and reads hellos; each
/// connection's own [`Connection::poll`] moves its messages. One thread may do both.
pub struct Acceptor<const C: usize> {
    listener: TcpListener,
    name: SegmentName,
    session: SegmentName,
    options: AcceptorOptions,
    pending: Vec<Pending>,
    connections: Vec<Connection<C>>,
    events: VecDeque<AcceptorEvent>,
}

impl<const C: usize> core::fmt::Debug for Acceptor<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Acceptor")
            .field("name", &self.name)
            .field("session", &self.session)
            .field("addr", &self.listener.local_addr().ok())
            .field("pending", &self.pending.len())
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

fn io_error(
    op: &'static str,
    peer: Option<SocketAddr>,
) -> impl FnOnce(std::io::Error) -> ConnectionError {
    move |error| ConnectionError::Io { op, peer, error }
}

impl<const C: usize> Acceptor<C> {
    /// Listens as `name` in session `session` (both validated like segment names). A session
    /// name other than the one a pair's state file records starts that pair afresh (the old file
    /// is moved aside): a new trading day, say.
    ///
    /// # Errors
    /// [`ConnectionError::Queue`] for an invalid name; [`ConnectionError::Io`] if the address
    /// cannot be bound.
    pub fn bind(
        name: &str,
        session: &str,
        options: AcceptorOptions,
    ) -> Result<Self, ConnectionError> {
        let valid = |text: &str| {
            SegmentName::new(text).map_err(|error| {
                ConnectionError::Queue(QueueError::Name {
                    name: text.to_owned(),
                    reason: error.to_string(),
                })
            })
        };
        let (name, session) = (valid(name)?, valid(session)?);
        let listener =
            TcpListener::bind(options.listen).map_err(io_error("binding", Some(options.listen)))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("setting the listener non-blocking", None))?;
        Ok(Self {
            listener,
            name,
            session,
            options,
            pending: Vec::new(),
            connections: Vec::new(),
            events: VecDeque::new(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Its name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The pair connection with `id`.
    pub fn connection(&mut self, id: ConnId) -> Option<&mut Connection<C>> {
        self.connections.get_mut(id.0)
    }

    /// The connection of the client named `client`, if it ever logged in.
    pub fn find(&self, client: &str) -> Option<ConnId> {
        self.connections
            .iter()
            .position(|c| c.remote_name().as_str() == client)
            .map(ConnId)
    }

    /// Every connection, for the application's poll loop.
    pub fn connections(&mut self) -> impl Iterator<Item = (ConnId, &mut Connection<C>)> {
        self.connections
            .iter_mut()
            .enumerate()
            .map(|(i, c)| (ConnId(i), c))
    }

    /// Accepts new sockets, reads the hellos that arrived, applies `check` to each login
    /// (`Err(reason)` refuses it: the client receives the reason as
    /// [`ConnectionError::Rejected`]), and hands accepted logins to their connections. Returns
    /// the next event, if any: call until `None`. `now`: the caller's clock in nanoseconds.
    /// Cost when nothing happens: one `accept` that finds nothing, and one `read` per socket
    /// in its hello.
    pub fn poll(
        &mut self,
        now: u64,
        mut check: impl FnMut(&LoginRequest<'_>) -> Result<(), String>,
    ) -> Option<AcceptorEvent> {
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        self.accept_new(now);
        let mut i = 0;
        while i < self.pending.len() {
            match self.advance(i, now, &mut check) {
                Ok(false) => i += 1,
                Ok(true) => {} // handed over: `advance` removed it
                Err(error) => {
                    let pending = self.pending.swap_remove(i);
                    self.events.push_back(AcceptorEvent::Failed {
                        peer: pending.peer,
                        error,
                    });
                }
            }
        }
        self.events.pop_front()
    }

    fn accept_new(&mut self, now: u64) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.pending.len() >= self.options.max_pending {
                        continue; // dropped: closed at once
                    }
                    if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                        continue;
                    }
                    let handshake = Handshake::acceptor(self.options.connection.key.as_deref());
                    self.pending.push(Pending {
                        stream,
                        peer,
                        buf: Box::new([0; PENDING_BUF]),
                        len: 0,
                        since: now,
                        handshake,
                    });
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return, // WouldBlock, or a transient accept error
            }
        }
    }

    /// Reads pending socket `i` and handles its hello once whole. `Ok(true)`: handed over.
    fn advance(
        &mut self,
        i: usize,
        now: u64,
        check: &mut impl FnMut(&LoginRequest<'_>) -> Result<(), String>,
    ) -> Result<bool, ConnectionError> {
        let pending = &mut self.pending[i];
        let peer = Some(pending.peer);
        if now.saturating_sub(pending.since) > self.options.connection.handshake_timeout_ns {
            return Err(ConnectionError::TimedOut {
                peer,
                waiting_for: "the client's hello",
                waited_ns: now - pending.since,
            });
        }
        match pending.stream.read(&mut pending.buf[pending.len..]) {
            Ok(0) => return Err(ConnectionError::Closed { peer }),
            Ok(n) => pending.len += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(false),
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
            return Ok(false);
        };
        let payload = &bytes[FRAME_OVERHEAD..FRAME_OVERHEAD + info.payload_len as usize];
        let step = pending
            .handshake
            .on_frame(&info, payload)
            .map_err(|error| crate::connection::handshake_error(peer, error));
        let step = match step {
            Ok(step) => step,
            Err(error) => {
                if let ConnectionError::Authentication { reason, .. } = &error {
                    send_reject(&mut self.pending[i].stream, reason);
                }
                return Err(error);
            }
        };
        debug_assert_eq!(step, Step::NeedAnswer);
        let hello = pending
            .handshake
            .peer()
            .cloned()
            .expect("NeedAnswer follows a hello");
        if hello.peer_name != self.name {
            let reason = format!(
                "this acceptor is \"{}\", not \"{}\"",
                self.name, hello.peer_name
            );
            send_reject(&mut self.pending[i].stream, &reason);
            return Err(ConnectionError::WrongPeer {
                peer,
                expected: self.name.to_string(),
                found: hello.peer_name.to_string(),
            });
        }
        let existing = self.find(hello.name.as_str());
        let request = LoginRequest {
            peer: self.pending[i].peer,
            client: &hello.name,
            session: hello.session.as_ref(),
            known: existing.is_some(),
        };
        if let Err(reason) = check(&request) {
            let mut pending = self.pending.swap_remove(i);
            send_reject(&mut pending.stream, &reason);
            self.events.push_back(AcceptorEvent::Refused {
                peer: pending.peer,
                client: hello.name.to_string(),
                reason,
            });
            return Ok(true);
        }
        let (id, new, moved_aside) = match existing {
            Some(id) => (id, false, None),
            None => {
                let made = Connection::accepted(
                    self.name.clone(),
                    hello.name.clone(),
                    &self.session,
                    &self.options.connection,
                );
                let (conn, moved) = match made {
                    Ok(made) => made,
                    Err(error) => {
                        send_reject(&mut self.pending[i].stream, &error.to_string());
                        return Err(error);
                    }
                };
                self.connections.push(conn);
                (ConnId(self.connections.len() - 1), true, moved)
            }
        };
        let pending = self.pending.swap_remove(i);
        let rest = &pending.buf[info.size..pending.len];
        let result = self.connections[id.0].take_login(
            pending.stream,
            pending.peer,
            pending.handshake,
            rest,
            now,
        );
        match result {
            Ok(()) => self.events.push_back(AcceptorEvent::LoggedIn {
                id,
                peer: pending.peer,
                new,
                moved_aside,
            }),
            Err(error) => self.events.push_back(AcceptorEvent::Failed {
                peer: pending.peer,
                error,
            }),
        }
        Ok(true)
    }
}

/// Tells a client why it is refused (best effort: the socket is dropped right after).
fn send_reject(stream: &mut TcpStream, reason: &str) {
    let mut buf = [0u8; frame::frame_size(MAX_REJECT_REASON as u32)];
    let size = frame::write_control(&mut buf, Kind::Reject, 0, frame::reject_reason(reason));
    let _ = stream.write(&buf[..size]);
}
