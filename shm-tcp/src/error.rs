//! The crate's errors: each names the file, the peer or the numbers involved, so a user can act
//! on it without reading the source.

use core::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use rustix::io::Errno;
use shm_channel::SegmentError;

use crate::frame::FrameError;
use crate::hello::{HelloError, RecoveryError};

/// Why a pair's persisted send queue could not be opened or used. The file is left as it was.
#[non_exhaustive]
#[derive(Debug)]
pub enum QueueError {
    /// Another live process (or another connection of this one) has the pair open.
    InUse {
        /// The pair's lock file.
        path: PathBuf,
    },
    /// The file is not a valid segment, or not one of this size and format: wrong, truncated or
    /// corrupt ([`SegmentError`] says which, and which file).
    Segment(SegmentError),
    /// The file is a segment, but not this pair's send queue.
    Foreign {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: &'static str,
        /// What the file holds.
        found: String,
        /// What this side expected.
        expected: String,
    },
    /// The queue's ring refused to attach or be claimed.
    Ring {
        /// The file.
        path: PathBuf,
        /// The ring's reason.
        reason: String,
    },
    /// A queued record is impossible.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        reason: &'static str,
    },
    /// The queued records' sequence numbers are not consecutive from the acknowledged one.
    SequenceGap {
        /// The file.
        path: PathBuf,
        /// The sequence number the record should have.
        expected: u64,
        /// The one it has.
        found: u64,
    },
    /// The peer acknowledged a count outside the unacknowledged range: it claims to have popped
    /// messages never sent, or went back on an earlier acknowledgement. Nothing was dropped.
    BadAck {
        /// The file.
        path: PathBuf,
        /// The peer's pop count.
        acked: u64,
        /// Our first unacknowledged sequence number.
        first_unacked: u64,
        /// Our next sequence number.
        next_seq: u64,
    },
    /// A name, or the pair name made of two, is invalid.
    Name {
        /// The name.
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A system call failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse { path } => write!(
                f,
                "the name pair is in use: another live connection holds the lock {}",
                path.display()
            ),
            Self::Segment(error) => write!(f, "send queue file: {error}"),
            Self::Foreign {
                path,
                what,
                found,
                expected,
            } => write!(
                f,
                "{} is not this pair's send queue: its {what} is {found}, expected {expected}",
                path.display()
            ),
            Self::Ring { path, reason } => {
                write!(f, "send queue {}: {reason}", path.display())
            }
            Self::Corrupt { path, reason } => {
                write!(f, "send queue {} is corrupt: {reason}", path.display())
            }
            Self::SequenceGap {
                path,
                expected,
                found,
            } => write!(
                f,
                "send queue {} is corrupt: a record has sequence number {found} where {expected} \
                 belongs",
                path.display()
            ),
            Self::BadAck {
                path,
                acked,
                first_unacked,
                next_seq,
            } => write!(
                f,
                "the peer acknowledged {acked} messages, outside the unacknowledged range \
                 {first_unacked}..={next_seq} of {}; nothing was dropped",
                path.display()
            ),
            Self::Name { name, reason } => write!(f, "invalid name \"{name}\": {reason}"),
            Self::Io { op, path, errno } => {
                write!(f, "{op} {} failed: {errno}", path.display())
            }
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Segment(error) => Some(error),
            _ => None,
        }
    }
}

impl From<SegmentError> for QueueError {
    fn from(error: SegmentError) -> Self {
        Self::Segment(error)
    }
}

/// Why a connection (or a handshake) ended, or could not start. After any of these the
/// connection is disconnected; everything queued stays queued, and a client reconnects.
#[non_exhaustive]
#[derive(Debug)]
pub enum ConnectionError {
    /// A socket call failed (`op` says which) or the peer closed the connection.
    Io {
        /// What was being done.
        op: &'static str,
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// The error.
        error: std::io::Error,
    },
    /// The peer closed the connection.
    Closed {
        /// The peer's address.
        peer: Option<SocketAddr>,
    },
    /// The peer sent bytes that are not a frame of this protocol.
    Frame {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// What is wrong.
        error: FrameError,
    },
    /// The peer's hello is malformed.
    Hello {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// What is wrong.
        error: HelloError,
    },
    /// The peer broke the protocol: a frame out of order or of the wrong kind for the moment.
    Protocol {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// What it did.
        reason: String,
    },
    /// The two sides' persisted states cannot both be right. Under
    /// [`RecoveryPolicy::Refuse`](crate::RecoveryPolicy::Refuse) no file was touched.
    Recovery {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// The numbers.
        error: RecoveryError,
        /// Where the old state went, under
        /// [`RecoveryPolicy::StartAfresh`](crate::RecoveryPolicy::StartAfresh).
        moved_to: Option<PathBuf>,
    },
    /// The peer refused the connection, with its reason.
    Rejected {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// The reason it gave.
        reason: String,
    },
    /// Authentication failed: a wrong key, or one side has a key and the other none.
    Authentication {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// What failed.
        reason: &'static str,
    },
    /// The peer's names are not the ones expected.
    WrongPeer {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// The name expected.
        expected: String,
        /// The name it gave.
        found: String,
    },
    /// The peer sends larger messages than this side's receive buffer can take.
    MessageSizeMismatch {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// The largest payload the peer sends.
        peer_max: u32,
        /// The largest this side accepts.
        our_max: u32,
    },
    /// Nothing arrived from the peer for longer than the configured timeout.
    TimedOut {
        /// The peer's address.
        peer: Option<SocketAddr>,
        /// What was awaited.
        waiting_for: &'static str,
        /// How long it waited, in nanoseconds.
        waited_ns: u64,
    },
    /// The persisted send queue refused an operation (a bad acknowledgement, corruption).
    Queue(QueueError),
    /// A [`PendingLogin`](crate::PendingLogin) was handed to a connection that is not its
    /// pair's accepting side ([`Connection::take_login`](crate::Connection::take_login)): an
    /// application's routing mistake. The client was refused; the connection is untouched.
    Misrouted {
        /// The client's address.
        peer: Option<SocketAddr>,
        /// The login's pair, `<acceptor>_<client>`.
        login: String,
        /// The connection's pair, `<local>_<remote>`.
        connection: String,
    },
}

fn peer_text(peer: &Option<SocketAddr>) -> String {
    peer.map_or_else(|| "the peer".to_owned(), |p| format!("peer {p}"))
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { op, peer, error } => {
                write!(f, "{op} ({}) failed: {error}", peer_text(peer))
            }
            Self::Closed { peer } => write!(f, "{} closed the connection", peer_text(peer)),
            Self::Frame { peer, error } => {
                write!(f, "{} sent an invalid frame: {error}", peer_text(peer))
            }
            Self::Hello { peer, error } => {
                write!(f, "{} sent an invalid hello: {error}", peer_text(peer))
            }
            Self::Protocol { peer, reason } => {
                write!(f, "{} broke the protocol: {reason}", peer_text(peer))
            }
            Self::Recovery {
                peer,
                error,
                moved_to,
            } => {
                write!(f, "cannot resume with {}: {error}", peer_text(peer))?;
                match moved_to {
                    Some(path) => write!(
                        f,
                        "; the old state was moved to {} and the pair starts afresh",
                        path.display()
                    ),
                    None => f.write_str(
                        "; no file was touched (RecoveryPolicy::Refuse): inspect both sides' \
                         files, or configure RecoveryPolicy::StartAfresh",
                    ),
                }
            }
            Self::Rejected { peer, reason } => {
                write!(f, "{} refused the connection: {reason}", peer_text(peer))
            }
            Self::Authentication { peer, reason } => {
                write!(
                    f,
                    "authentication with {} failed: {reason}",
                    peer_text(peer)
                )
            }
            Self::WrongPeer {
                peer,
                expected,
                found,
            } => write!(
                f,
                "{} is \"{found}\", but this side expected \"{expected}\"",
                peer_text(peer)
            ),
            Self::MessageSizeMismatch {
                peer,
                peer_max,
                our_max,
            } => write!(
                f,
                "{} sends payloads of up to {peer_max} bytes, but this side accepts at most \
                 {our_max} (raise the receive buffer, or lower the peer's queue capacity)",
                peer_text(peer)
            ),
            Self::TimedOut {
                peer,
                waiting_for,
                waited_ns,
            } => write!(
                f,
                "{} sent nothing for {} ms while this side waited for {waiting_for}",
                peer_text(peer),
                waited_ns / 1_000_000
            ),
            Self::Queue(error) => write!(f, "{error}"),
            Self::Misrouted {
                peer,
                login,
                connection,
            } => write!(
                f,
                "the login of {} for pair {login} was handed to the connection of pair \
                 {connection}, not its pair's accepting one; the client was refused",
                peer_text(peer)
            ),
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            Self::Queue(error) => Some(error),
            Self::Recovery { error, .. } => Some(error),
            Self::Frame { error, .. } => Some(error),
            Self::Hello { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<QueueError> for ConnectionError {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}
