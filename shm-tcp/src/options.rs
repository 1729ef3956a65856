//! What a connection is configured with.

use std::path::PathBuf;

use crate::queue::Durability;

/// The largest payload any send queue has (`MessageRing<{1 << 31}>`'s, less the frame header).
const MAX_QUEUE_PAYLOAD: u32 = (1 << 30) - 8 - 16;

/// What happens when the two sides' persisted states cannot both be right
/// ([`RecoveryError`](crate::RecoveryError)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryPolicy {
    /// Refuse the connection and touch no file: an operator inspects both sides' files (the
    /// error has every number) and decides. The default: nothing is ever lost silently.
    #[default]
    Refuse,
    /// Move this side's file aside (renamed `<name>.<nanoseconds>.stale`, kept for inspection)
    /// and start the pair afresh: sequence numbers from 0, nothing queued. What a client that
    /// should follow its acceptor into each new session (a new trading day) configures. The
    /// pair resumes once both sides agree: a peer under `Refuse` keeps refusing.
    StartAfresh,
}

/// The settings of a connection, for both roles.
#[derive(Clone, Debug)]
pub struct ConnectionOptions {
    pub(crate) dir: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) recv_buffer: usize,
    pub(crate) max_recv_payload: u32,
    pub(crate) heartbeat_interval_ns: u64,
    pub(crate) peer_timeout_ns: u64,
    pub(crate) handshake_timeout_ns: u64,
    pub(crate) connect_timeout_ns: u64,
    pub(crate) reconnect_min_ns: u64,
    pub(crate) reconnect_max_ns: u64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) policy: RecoveryPolicy,
    pub(crate) max_write: usize,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionOptions {
    /// Defaults: state files in the current folder, [`Durability::ProcessCrash`], a 1 MiB receive
    /// buffer accepting payloads of up to 64 KiB, a heartbeat every 100 ms, a peer silent for 3 s
    /// disconnected, handshakes and connects given 2 s, reconnects from 10 ms backing off to 1 s,
    /// no key, [`RecoveryPolicy::Refuse`].
    pub fn new() -> Self {
        Self {
            dir: PathBuf::from("."),
            durability: Durability::ProcessCrash,
            recv_buffer: 1 << 20,
            max_recv_payload: 64 << 10,
            heartbeat_interval_ns: 100_000_000,
            peer_timeout_ns: 3_000_000_000,
            handshake_timeout_ns: 2_000_000_000,
            connect_timeout_ns: 2_000_000_000,
            reconnect_min_ns: 10_000_000,
            reconnect_max_ns: 1_000_000_000,
            key: None,
            policy: RecoveryPolicy::Refuse,
            max_write: 256 << 10,
        }
    }

    /// The folder of the persisted state files (`<local>_<remote>` and its `.lock`). It must
    /// exist. A folder on a disk for [`Durability::PowerLoss`]; `/dev/shm` is fine for process
    /// crashes.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// How far the persisted state survives ([`Durability`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The receive buffer's size in bytes and the largest payload accepted from the peer. A
    /// peer whose queue allows larger messages is refused at the handshake
    /// ([`ConnectionError::MessageSizeMismatch`](crate::ConnectionError::MessageSizeMismatch)).
    ///
    /// The buffer is made at least as large as the largest peer queue accepted (a queue of `C`
    /// bytes sends payloads of up to `C / 2 - 24`, so `2 × (max_payload + 24)` bytes) plus two of
    /// the largest frames: then everything the peer may have unacknowledged fits, its
    /// acknowledgements (which travel behind its data) are always read, and an application that
    /// holds a message at the front while it waits for room to push never deadlocks. The default
    /// (64 KiB payloads, 1 MiB) is above that bound.
    pub fn receive_buffer(mut self, bytes: usize, max_payload: u32) -> Self {
        self.recv_buffer = bytes;
        // A queue's largest payload is below 2^30 (`C <= 2^31`): more could never be sent, and
        // the bound keeps every frame size computation far from overflowing.
        self.max_recv_payload = max_payload.min(MAX_QUEUE_PAYLOAD);
        self
    }

    /// How long this side may stay silent before it sends a heartbeat, in nanoseconds.
    pub fn heartbeat_interval_ns(mut self, ns: u64) -> Self {
        self.heartbeat_interval_ns = ns;
        self
    }

    /// How long the peer may stay silent before it is disconnected, in nanoseconds (a few
    /// heartbeat intervals).
    pub fn peer_timeout_ns(mut self, ns: u64) -> Self {
        self.peer_timeout_ns = ns;
        self
    }

    /// How long a handshake may take before the socket is dropped, in nanoseconds.
    pub fn handshake_timeout_ns(mut self, ns: u64) -> Self {
        self.handshake_timeout_ns = ns;
        self
    }

    /// How long a (re)connect attempt may take, in nanoseconds.
    pub fn connect_timeout_ns(mut self, ns: u64) -> Self {
        self.connect_timeout_ns = ns;
        self
    }

    /// The client's reconnect back-off: the first retry after `min_ns`, doubling up to `max_ns`.
    pub fn reconnect_backoff_ns(mut self, min_ns: u64, max_ns: u64) -> Self {
        self.reconnect_min_ns = min_ns.max(1);
        self.reconnect_max_ns = max_ns.max(min_ns);
        self
    }

    /// A pre-shared key: each hello is then authenticated with HMAC-SHA256, so a process
    /// without the key can neither take the pair over nor receive its queued messages. Both
    /// sides need the same key. Use 32 random bytes: HMAC treats a key and the same key with
    /// trailing zero bytes as one key, and hashes keys longer than 64 bytes.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// What happens when the two sides' states cannot both be right ([`RecoveryPolicy`]).
    pub fn recovery_policy(mut self, policy: RecoveryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The most bytes one `write` sends (a resend goes out in pieces of this size).
    pub fn max_write(mut self, bytes: usize) -> Self {
        self.max_write = bytes.max(4096);
        self
    }
}
