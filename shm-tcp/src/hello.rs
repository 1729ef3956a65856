//! The handshake's hello: who each side is, the session it knows, where its streams stand, and
//! the checks that decide what to resend, or that the two sides' states cannot both be right.
//!
//! # Hello payload (inside a [`Kind::Hello`](crate::frame::Kind::Hello) frame)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `SHMTCPH\0` |
//! | 8 | 4 | flags: bit 0 = the sender authenticates with a pre-shared key |
//! | 12 | 4 | the largest payload the sender will send |
//! | 16 | 8 | the sender's first unacknowledged sequence number |
//! | 24 | 8 | the sender's next sequence number |
//! | 32 | 8 | the sender's pop count of the receiver's stream |
//! | 40 | 16 | nonce (random, fresh for every hello) |
//! | 56 | 2 ×3 | lengths of the sender's name, the name it expects the receiver to have, and the session name it knows (0: none yet) |
//! | 62 | 2 | reserved, zero |
//! | 64 | | the three names' bytes, one after the other |
//!
//! With a key, each side then sends an [`Kind::Auth`](crate::frame::Kind::Auth) frame: the
//! HMAC-SHA256 under the key of a label, its own hello's payload and the peer's. The peer's
//! nonce makes the code fresh: a recorded handshake replayed later fails.

use core::fmt;

use hmac::{KeyInit, Mac};
use shm_channel::{SegmentName, MAX_NAME_LEN};

/// The hello's magic.
const MAGIC: [u8; 8] = *b"SHMTCPH\0";
const FIXED: usize = 64;
/// The longest hello payload: the fixed part and three names of the longest length.
pub const MAX_HELLO_PAYLOAD: usize = FIXED + 3 * MAX_NAME_LEN;
/// Bytes of an authentication code (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// The longest reject reason sent or accepted, in bytes.
pub const MAX_REJECT_REASON: usize = 256;
const FLAG_AUTH: u32 = 1;
const AUTH_LABEL: &[u8] = b"shm-tcp hello authentication v1";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// One side's hello, decoded and checked for form (not yet against the receiver's state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Whether the sender authenticates with a pre-shared key.
    pub authenticated: bool,
    /// The largest payload the sender will send.
    pub max_payload: u32,
    /// The sender's first unacknowledged sequence number.
    pub first_unacked: u64,
    /// The sender's next sequence number (one past the last message it queued).
    pub next_seq: u64,
    /// The sender's pop count of the receiver's stream: every message below it was popped.
    pub popped: u64,
    /// Fresh random bytes.
    pub nonce: [u8; 16],
    /// The sender's name.
    pub name: SegmentName,
    /// The name the sender expects the receiver to have.
    pub peer_name: SegmentName,
    /// The session name the sender knows (`None`: it has never completed a handshake).
    pub session: Option<SegmentName>,
}

/// Why a hello payload is malformed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    /// Shorter than the fixed part, or than the names it announces, or longer than that.
    BadLength {
        /// The payload's length.
        len: usize,
    },
    /// The magic is wrong: the peer does not speak this protocol.
    BadMagic,
    /// A name is empty (where required), too long or not a valid name.
    BadName {
        /// Which name.
        which: &'static str,
    },
    /// Unknown flags or non-zero reserved bytes.
    Reserved,
    /// The sender's first unacknowledged sequence number is past its next one.
    Inverted {
        /// The first unacknowledged sequence number.
        first_unacked: u64,
        /// The next sequence number.
        next_seq: u64,
    },
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadLength { len } => write!(
                f,
                "hello of {len} bytes does not match the lengths of the names it announces \
                 (a hello is {FIXED} bytes plus the names)"
            ),
            Self::BadMagic => {
                f.write_str("hello lacks the shm-tcp magic: not a peer of this protocol")
            }
            Self::BadName { which } => write!(f, "hello carries an invalid {which}"),
            Self::Reserved => f.write_str("hello has unknown flags or non-zero reserved bytes"),
            Self::Inverted {
                first_unacked,
                next_seq,
            } => write!(
                f,
                "hello's first unacknowledged sequence number {first_unacked} is past its next \
                 sequence number {next_seq}"
            ),
        }
    }
}

impl core::error::Error for HelloError {}

impl Hello {
    /// Encodes the hello into `out` (at least [`MAX_HELLO_PAYLOAD`] bytes), returning its length.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let session = self.session.as_ref().map_or("", |s| s.as_str());
        let names = [self.name.as_str(), self.peer_name.as_str(), session];
        out[..8].copy_from_slice(&MAGIC);
        let flags = if self.authenticated { FLAG_AUTH } else { 0 };
        out[8..12].copy_from_slice(&flags.to_le_bytes());
        out[12..16].copy_from_slice(&self.max_payload.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_unacked.to_le_bytes());
        out[24..32].copy_from_slice(&self.next_seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.popped.to_le_bytes());
        out[40..56].copy_from_slice(&self.nonce);
        let mut at = FIXED;
        for (i, name) in names.iter().enumerate() {
            out[56 + 2 * i..58 + 2 * i].copy_from_slice(&(name.len() as u16).to_le_bytes());
            out[at..at + name.len()].copy_from_slice(name.as_bytes());
            at += name.len();
        }
        out[62..64].fill(0);
        at
    }

    /// Decodes and checks a hello payload. Cost: name validation; no allocation.
    ///
    /// # Errors
    /// A [`HelloError`] for any malformed field.
    pub fn decode(payload: &[u8]) -> Result<Self, HelloError> {
        let len = payload.len();
        if len < FIXED {
            return Err(HelloError::BadLength { len });
        }
        if payload[..8] != MAGIC {
            return Err(HelloError::BadMagic);
        }
        let u16_at = |at: usize| u16::from_le_bytes([payload[at], payload[at + 1]]) as usize;
        let u32_at = |at: usize| u32::from_le_bytes(payload[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(payload[at..at + 8].try_into().unwrap());
        let flags = u32_at(8);
        if flags & !FLAG_AUTH != 0 || payload[62] != 0 || payload[63] != 0 {
            return Err(HelloError::Reserved);
        }
        let lens = [u16_at(56), u16_at(58), u16_at(60)];
        if FIXED + lens.iter().sum::<usize>() != len {
            return Err(HelloError::BadLength { len });
        }
        let mut at = FIXED;
        let mut names: [Option<SegmentName>; 3] = [None, None, None];
        for (i, (which, &n)) in ["sender name", "receiver name", "session name"]
            .iter()
            .zip(&lens)
            .enumerate()
        {
            let bytes = &payload[at..at + n];
            at += n;
            if n == 0 && i == 2 {
                continue;
            }
            let text = core::str::from_utf8(bytes).map_err(|_| HelloError::BadName { which })?;
            names[i] = Some(SegmentName::new(text).map_err(|_| HelloError::BadName { which })?);
        }
        let [Some(name), Some(peer_name), session] = names else {
            unreachable!("the first two names were required above")
        };
        let (first_unacked, next_seq) = (u64_at(16), u64_at(24));
        if first_unacked > next_seq {
            return Err(HelloError::Inverted {
                first_unacked,
                next_seq,
            });
        }
        let mut nonce = [0; 16];
        nonce.copy_from_slice(&payload[40..56]);
        Ok(Self {
            authenticated: flags & FLAG_AUTH != 0,
            max_payload: u32_at(12),
            first_unacked,
            next_seq,
            popped: u64_at(32),
            nonce,
            name,
            peer_name,
            session,
        })
    }
}

/// The authentication code a side sends: over its own hello's payload, then the peer's.
pub(crate) fn auth_code(key: &[u8], own_hello: &[u8], peer_hello: &[u8]) -> [u8; MAC_LEN] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(AUTH_LABEL);
    mac.update(&(own_hello.len() as u32).to_le_bytes());
    mac.update(own_hello);
    mac.update(peer_hello);
    mac.finalize().into_bytes().into()
}

/// Checks the peer's authentication code in constant time.
pub(crate) fn auth_matches(key: &[u8], peer_hello: &[u8], own_hello: &[u8], code: &[u8]) -> bool {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(AUTH_LABEL);
    mac.update(&(peer_hello.len() as u32).to_le_bytes());
    mac.update(peer_hello);
    mac.update(own_hello);
    mac.verify_slice(code).is_ok()
}

/// One side's stream positions, as its hello reports them and as the checks compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// First sequence number not yet acknowledged (the oldest message still queued).
    pub first_unacked: u64,
    /// One past the last sequence number queued.
    pub next_seq: u64,
    /// This side's pop count of the other side's stream.
    pub popped: u64,
}

/// An impossible combination of the two sides' states: resuming would lose or duplicate
/// messages. Every number is in the error; [`RecoveryPolicy`](crate::RecoveryPolicy) decides
/// what happens next.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryError {
    /// The peer says it popped more of our messages than we ever sent: our state is older than
    /// the peer's (our file was restored from a backup, or replaced).
    PeerPoppedUnsent {
        /// The peer's pop count of our stream.
        peer_popped: u64,
        /// Our next sequence number.
        our_next: u64,
    },
    /// The peer has not popped messages we already dropped as acknowledged: the peer's state is
    /// older than what it acknowledged before (its file was lost or restored).
    PeerForgotPopped {
        /// The peer's pop count of our stream.
        peer_popped: u64,
        /// Our first unacknowledged sequence number: everything below it was acknowledged.
        our_first_unacked: u64,
    },
    /// We popped more of the peer's messages than it ever sent.
    WePoppedUnsent {
        /// Our pop count of the peer's stream.
        our_popped: u64,
        /// The peer's next sequence number.
        peer_next: u64,
    },
    /// The peer dropped messages we never popped.
    PeerDroppedUnpopped {
        /// Our pop count of the peer's stream.
        our_popped: u64,
        /// The peer's first unacknowledged sequence number.
        peer_first_unacked: u64,
    },
    /// The two sides know different sessions: the acceptor started a new session, or the file
    /// belongs to another one.
    SessionMismatch {
        /// The session this side's file belongs to.
        ours: String,
        /// The session the peer announced.
        theirs: String,
    },
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerPoppedUnsent {
                peer_popped,
                our_next,
            } => write!(
                f,
                "the peer has popped {peer_popped} of our messages, but we have sent only \
                 {our_next}: our persisted state is older than the peer's (restored or replaced \
                 file?)"
            ),
            Self::PeerForgotPopped {
                peer_popped,
                our_first_unacked,
            } => write!(
                f,
                "the peer reports {peer_popped} of our messages popped, but it acknowledged \
                 {our_first_unacked} before: its persisted state is older than what it \
                 acknowledged (lost or restored file?)"
            ),
            Self::WePoppedUnsent {
                our_popped,
                peer_next,
            } => write!(
                f,
                "we have popped {our_popped} of the peer's messages, but it has sent only \
                 {peer_next}: its persisted state is older than ours"
            ),
            Self::PeerDroppedUnpopped {
                our_popped,
                peer_first_unacked,
            } => write!(
                f,
                "the peer no longer holds its messages {our_popped}..{peer_first_unacked}, \
                 which we never popped"
            ),
            Self::SessionMismatch { ours, theirs } => write!(
                f,
                "this side's state belongs to session \"{ours}\", the peer is in session \
                 \"{theirs}\""
            ),
        }
    }
}

impl core::error::Error for RecoveryError {}

/// The recovery checks, exact on `u64`: the peer's pop count of our stream must lie in our
/// `[first_unacked, next_seq]`, and ours of theirs in their range. Returns the first violation.
pub fn check_streams(ours: &StreamState, theirs: &StreamState) -> Result<(), RecoveryError> {
    if theirs.popped > ours.next_seq {
        return Err(RecoveryError::PeerPoppedUnsent {
            peer_popped: theirs.popped,
            our_next: ours.next_seq,
        });
    }
    if theirs.popped < ours.first_unacked {
        return Err(RecoveryError::PeerForgotPopped {
            peer_popped: theirs.popped,
            our_first_unacked: ours.first_unacked,
        });
    }
    if ours.popped > theirs.next_seq {
        return Err(RecoveryError::WePoppedUnsent {
            our_popped: ours.popped,
            peer_next: theirs.next_seq,
        });
    }
    if ours.popped < theirs.first_unacked {
        return Err(RecoveryError::PeerDroppedUnpopped {
            our_popped: ours.popped,
            peer_first_unacked: theirs.first_unacked,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            authenticated: true,
            max_payload: 1000,
            first_unacked: 3,
            next_seq: 9,
            popped: 4,
            nonce: [7; 16],
            name: SegmentName::new("client").unwrap(),
            peer_name: SegmentName::new("server").unwrap(),
            session: Some(SegmentName::new("day1").unwrap()),
        }
    }

    #[test]
    fn hello_round_trips_and_every_truncation_is_refused() {
        let mut buf = [0u8; MAX_HELLO_PAYLOAD];
        let len = hello().encode(&mut buf);
        assert_eq!(Hello::decode(&buf[..len]), Ok(hello()));
        for cut in 0..len {
            assert!(Hello::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut none = hello();
        none.session = None;
        let len = none.encode(&mut buf);
        assert_eq!(Hello::decode(&buf[..len]), Ok(none));
    }

    #[test]
    fn authentication_codes_bind_both_hellos() {
        let (a, b) = (b"hello a".as_slice(), b"hello b".as_slice());
        let code = auth_code(b"key", a, b);
        assert!(auth_matches(b"key", a, b, &code));
        assert!(!auth_matches(b"other key", a, b, &code));
        assert!(!auth_matches(b"key", b, a, &code));
        assert!(!auth_matches(b"key", a, b"hello c", &code));
    }

    #[test]
    fn impossible_states_are_named() {
        let s = |first_unacked, next_seq, popped| StreamState {
            first_unacked,
            next_seq,
            popped,
        };
        assert_eq!(check_streams(&s(5, 10, 3), &s(3, 4, 7)), Ok(()));
        assert!(matches!(
            check_streams(&s(5, 10, 0), &s(0, 0, 11)),
            Err(RecoveryError::PeerPoppedUnsent {
                peer_popped: 11,
                our_next: 10
            })
        ));
        assert!(matches!(
            check_streams(&s(5, 10, 0), &s(0, 0, 4)),
            Err(RecoveryError::PeerForgotPopped { .. })
        ));
        assert!(matches!(
            check_streams(&s(0, 0, 9), &s(0, 8, 0)),
            Err(RecoveryError::WePoppedUnsent { .. })
        ));
        assert!(matches!(
            check_streams(&s(0, 0, 2), &s(3, 8, 0)),
            Err(RecoveryError::PeerDroppedUnpopped { .. })
        ));
        assert_eq!(
            check_streams(&s(u64::MAX, u64::MAX, 0), &s(0, 0, u64::MAX)),
            Ok(())
        );
    }
}
