//! [`Acceptor`]: the listening side on one thread. It is the two halves of [`crate::login`]
//! together: a [`LoginListener`] accepts sockets and reads each client's hello, the
//! application's login check is asked, and the login goes to the pair's [`Connection`], which
//! the acceptor keeps (a client that logs in again finds its connection, with everything queued
//! for it).

use std::net::SocketAddr;
use std::path::PathBuf;

use shm_channel::SegmentName;

use crate::connection::Connection;
use crate::error::ConnectionError;
use crate::login::{ListenerEvent, LoginListener};
use crate::options::ConnectionOptions;

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

/// How an [`Acceptor`] (or a [`LoginListener`]) listens, and (for an acceptor) the options of
/// the connections it makes.
#[derive(Clone, Debug)]
pub struct AcceptorOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) max_pending: usize,
    pub(crate) connection: ConnectionOptions,
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

    /// The options of the connections made from its logins (for a [`LoginListener`]'s owner
    /// calling [`Connection::from_login`]).
    pub fn connection(&self) -> &ConnectionOptions {
        &self.connection
    }
}

/// The listening side of the transport, named `name`, in session `session` (module docs).
///
/// No thread runs behind it: [`poll`](Self::poll) accepts and reads hellos; each
/// connection's own [`Connection::poll`] moves its messages. One thread may do both. To read
/// logins on one thread and own the connections on others, use its halves instead:
/// [`LoginListener`], [`PendingLogin`](crate::PendingLogin), [`Connection::from_login`] and
/// [`Connection::take_login`].
pub struct Acceptor<const C: usize> {
    listener: LoginListener,
    options: ConnectionOptions,
    connections: Vec<Connection<C>>,
}

impl<const C: usize> core::fmt::Debug for Acceptor<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Acceptor")
            .field("name", self.listener.name())
            .field("session", self.listener.session())
            .field("addr", &self.listener.local_addr())
            .field("pending", &self.listener.pending())
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
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
        let listener = LoginListener::bind(name, session, &options)?;
        Ok(Self {
            listener,
            options: options.connection,
            connections: Vec::new(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Its name.
    pub fn name(&self) -> &SegmentName {
        self.listener.name()
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
    /// in its hello (the bounds of [`LoginListener::poll`]).
    pub fn poll(
        &mut self,
        now: u64,
        mut check: impl FnMut(&LoginRequest<'_>) -> Result<(), String>,
    ) -> Option<AcceptorEvent> {
        let login = match self.listener.poll(now)? {
            ListenerEvent::Login(login) => login,
            ListenerEvent::Failed { peer, error } => {
                return Some(AcceptorEvent::Failed { peer, error })
            }
        };
        let peer = login.peer();
        let existing = self.find(login.client_name().as_str());
        let request = LoginRequest {
            peer,
            client: login.client_name(),
            session: login.session(),
            known: existing.is_some(),
        };
        if let Err(reason) = check(&request) {
            let client = login.client_name().to_string();
            let _ = login.reject(&reason); // best effort: the client sees a close otherwise
            return Some(AcceptorEvent::Refused {
                peer,
                client,
                reason,
            });
        }
        let (id, new, moved_aside, result) = match existing {
            Some(id) => {
                let result = self.connections[id.0].take_login(login, now);
                (id, false, None, result)
            }
            None => match Connection::from_login(login, &self.options, now) {
                Ok((conn, moved)) => {
                    self.connections.push(conn);
                    (ConnId(self.connections.len() - 1), true, moved, Ok(()))
                }
                Err(error) => return Some(AcceptorEvent::Failed { peer, error }),
            },
        };
        Some(match result {
            Ok(()) => AcceptorEvent::LoggedIn {
                id,
                peer,
                new,
                moved_aside,
            },
            Err(error) => AcceptorEvent::Failed { peer, error },
        })
    }
}
