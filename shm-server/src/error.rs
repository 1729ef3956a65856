//! The server's and the client's errors.

use std::fmt;
use std::io;
use std::path::PathBuf;

use shm_channel::ChannelError;

use crate::handoff::ConnId;
use crate::wire::WireError;

/// Why a [`Server`](crate::Server) could not start or go on.
#[derive(Debug)]
pub enum ServerError {
    /// A configuration value out of range.
    Config {
        /// Which value and its limits.
        reason: String,
    },
    /// Another live server holds this folder (its lock file `login.lock` is locked).
    AlreadyRunning {
        /// The folder.
        folder: PathBuf,
    },
    /// The TCP listener could not start ([`ServerConfig::tcp`](crate::ServerConfig::tcp)).
    Tcp {
        /// `shm-tcp`'s error (the address, the system's error).
        source: shm_tcp::ConnectionError,
    },
    /// A system call on the folder, the socket or the lock failed.
    Io {
        /// What the server was doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config { reason } => write!(f, "server configuration: {reason}"),
            Self::AlreadyRunning { folder } => write!(
                f,
                "another live server already serves {} (its lock file login.lock is held): stop it or use another folder",
                folder.display()
            ),
            Self::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
            Self::Tcp { source } => write!(f, "the server's TCP listener: {source}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Tcp { source } => Some(source),
            _ => None,
        }
    }
}

/// Why [`Control::move_connection`](crate::Control::move_connection) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    /// No live connection has this id (it closed, or never existed).
    NoSuchConnection(ConnId),
    /// The group index is past the last group.
    NoSuchGroup {
        /// The index asked for.
        group: usize,
        /// How many groups there are.
        groups: usize,
    },
    /// The target group is at its connection limit.
    GroupFull {
        /// The group.
        group: usize,
        /// Its limit.
        limit: usize,
    },
    /// The connection is already being moved or closed.
    Busy(ConnId),
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchConnection(id) => write!(f, "no live connection {id}"),
            Self::NoSuchGroup { group, groups } => {
                write!(
                    f,
                    "no group {group}: the server has groups 0 to {}",
                    groups - 1
                )
            }
            Self::GroupFull { group, limit } => {
                write!(
                    f,
                    "group {group} already holds its limit of {limit} connections"
                )
            }
            Self::Busy(id) => write!(f, "connection {id} is already being moved or closed"),
        }
    }
}

impl std::error::Error for MoveError {}

/// Why a [`Client`](crate::Client) could not log in or lost its server.
#[derive(Debug)]
pub enum ClientError {
    /// The server's login check (or one of its limits) refused, with its reason.
    Rejected {
        /// The server's name.
        server: String,
        /// The reason it gave.
        reason: String,
    },
    /// The server cannot take this login right now (the previous connection of this name is
    /// still closing, or too many logins are in progress); a retry shortly will do.
    /// [`Client::connect`](crate::Client::connect) retries it until its timeout.
    RetryLater {
        /// The server's name.
        server: String,
        /// Why, as the server said.
        reason: String,
    },
    /// A live connection already holds this client name on the server.
    AlreadyLoggedIn {
        /// The client name.
        name: String,
        /// The pid of the process logged in under it.
        holder_pid: u32,
    },
    /// The client was built with another channel capacity than the server.
    CapacityMismatch {
        /// The client's capacity.
        client: u64,
        /// The server's.
        server: u64,
    },
    /// No server listens on the folder's login socket (none started, or it died).
    ServerGone {
        /// The socket's path.
        socket: PathBuf,
        /// The system's error (`ENOENT`, `ECONNREFUSED`, an end of stream...).
        source: io::Error,
    },
    /// The server did not answer within the login timeout.
    Timeout {
        /// The socket's path.
        socket: PathBuf,
        /// The timeout, in milliseconds.
        millis: u64,
    },
    /// The server's answer broke the login protocol.
    Protocol {
        /// The socket's path.
        socket: PathBuf,
        /// What was wrong.
        error: WireError,
    },
    /// The session's segment could not be opened.
    Channel(ChannelError),
    /// A system call on the login socket failed.
    Io {
        /// What the client was doing.
        what: &'static str,
        /// The socket's path.
        socket: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected { server, reason } => {
                write!(f, "server {server} refused the login: {reason}")
            }
            Self::RetryLater { server, reason } => {
                write!(f, "server {server} asks to log in again shortly: {reason}")
            }
            Self::AlreadyLoggedIn { name, holder_pid } => write!(
                f,
                "client name {name} is already logged in from pid {holder_pid}: one live login per name"
            ),
            Self::CapacityMismatch { client, server } => write!(
                f,
                "this client was built with channel capacity {client}, the server with {server}: rebuild one of them"
            ),
            Self::ServerGone { socket, source } => {
                write!(f, "no server at {}: {source}", socket.display())
            }
            Self::Timeout { socket, millis } => write!(
                f,
                "the server at {} did not answer the login within {millis} ms",
                socket.display()
            ),
            Self::Protocol { socket, error } => {
                write!(f, "the server at {} broke the login protocol: {error}", socket.display())
            }
            Self::Channel(error) => write!(f, "session segment: {error}"),
            Self::Io {
                what,
                socket,
                source,
            } => write!(f, "{what} {}: {source}", socket.display()),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::ServerGone { source, .. } | Self::Io { source, .. } => Some(source),
            Self::Protocol { error, .. } => Some(error),
            Self::Channel(error) => Some(error),
            _ => None,
        }
    }
}

impl ClientError {
    /// `true` for errors a retry may cure (server not there yet, busy, timed out); `false` for
    /// refusals and mismatches that will recur until someone changes something.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::ServerGone { .. }
                | Self::Timeout { .. }
                | Self::Io { .. }
                | Self::RetryLater { .. }
        )
    }
}
