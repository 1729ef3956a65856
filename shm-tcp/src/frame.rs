//! The wire format: every frame is a record as the persisted send queue holds it, so that queued
//! messages go to the socket straight from the queue's memory.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 4 | commit word: `1` (published) `| tag << 16`; bits 1–15 zero |
//! | 4 | 4 | length `n`: the bytes after these 8, frame header included (`n >= 16`) |
//! | 8 | 8 | sequence number (data), the sender's pop count of the peer's stream (ack), or 0 |
//! | 16 | 1 | [`Kind`] |
//! | 17 | 1 | protocol version ([`PROTOCOL_VERSION`]) |
//! | 18 | 2 | reserved, zero |
//! | 20 | 4 | reserved for a payload checksum, zero in this version |
//! | 24 | `n - 16` | payload, then zero padding to a multiple of 8 |
//!
//! All integers are little-endian. A frame occupies `8 + round_up(n, 8)` bytes, so consecutive
//! frames stay 8-byte aligned and a payload can be read in place as a `#[repr(C)]` struct.

use core::fmt;

/// The version of the wire format and handshake this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of a frame before its payload: the 8-byte record header and the 16-byte frame header.
pub const FRAME_OVERHEAD: usize = 24;

/// The record header's "published" flag: the only flag a frame may carry.
const PUBLISHED: u32 = 1;

/// Bytes of the frame header (inside the record's payload).
pub(crate) const FRAME_HEADER: u32 = 16;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A message of the application: the sequence field is its sequence number.
    Data = 1,
    /// The sender's pop count of the peer's stream, alone: an acknowledgement, and when idle a
    /// heartbeat.
    Ack = 2,
    /// The handshake's hello ([`crate::hello`]).
    Hello = 3,
    /// The handshake's authentication code (with a pre-shared key).
    Auth = 4,
    /// The peer refuses the connection; the payload is the reason, in UTF-8.
    Reject = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Data,
            2 => Self::Ack,
            3 => Self::Hello,
            4 => Self::Auth,
            5 => Self::Reject,
            _ => return None,
        })
    }
}

/// A frame header that passed every check, at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// What the frame carries.
    pub kind: Kind,
    /// The message's tag (data frames; 0 otherwise).
    pub tag: u16,
    /// The sequence field.
    pub seq: u64,
    /// Payload bytes (after [`FRAME_OVERHEAD`]).
    pub payload_len: u32,
    /// Bytes the whole frame occupies, padding included.
    pub size: usize,
}

/// Why bytes from the peer are not a frame. Every case ends the connection: the stream cannot be
/// resynchronised.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The record header's flags are not exactly "published".
    BadFlags {
        /// The commit word found.
        commit: u32,
    },
    /// The length is below the frame header's 16 bytes.
    TooShort {
        /// The length found.
        len: u32,
    },
    /// The payload is longer than this side accepts from the peer.
    TooLarge {
        /// The payload length announced.
        len: u64,
        /// The largest payload accepted.
        max: u32,
    },
    /// An unknown frame kind.
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },
    /// A frame of another protocol version.
    Version {
        /// The version byte found.
        found: u8,
    },
    /// Reserved bytes are not zero, or a control frame carries a tag.
    Reserved,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadFlags { commit } => write!(
                f,
                "frame header has flags {:#06x} where only 0x0001 (published) may be",
                commit & 0xFFFF
            ),
            Self::TooShort { len } => write!(
                f,
                "frame length {len} is shorter than the 16-byte frame header"
            ),
            Self::TooLarge { len, max } => write!(
                f,
                "frame announces a payload of {len} bytes, more than the {max} bytes accepted \
                 from this peer"
            ),
            Self::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            Self::Version { found } => write!(
                f,
                "frame of protocol version {found}, but this side speaks version \
                 {PROTOCOL_VERSION}"
            ),
            Self::Reserved => f.write_str("frame has non-zero reserved bytes"),
        }
    }
}

impl core::error::Error for FrameError {}

/// The bytes a frame with `payload_len` payload bytes occupies.
pub const fn frame_size(payload_len: u32) -> usize {
    8 + (FRAME_HEADER as usize + payload_len as usize).next_multiple_of(8)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Decodes the frame at the start of `bytes`: `Ok(None)` while fewer than its header's 24
/// bytes or its whole size have arrived, else its checked header. `max_payload` bounds the
/// payload the peer may announce, so a length in a header never sizes anything. Cost: a few
/// loads and compares; nothing is copied.
///
/// # Errors
/// A [`FrameError`] for anything but a well-formed frame of this protocol version.
pub fn decode(bytes: &[u8], max_payload: u32) -> Result<Option<FrameInfo>, FrameError> {
    if bytes.len() < FRAME_OVERHEAD {
        // Check what has arrived, so garbage is refused as soon as it can be told.
        if bytes.len() >= 4 {
            check_commit(u32_at(bytes, 0))?;
        }
        return Ok(None);
    }
    let commit = u32_at(bytes, 0);
    check_commit(commit)?;
    let len = u32_at(bytes, 4);
    if len < FRAME_HEADER {
        return Err(FrameError::TooShort { len });
    }
    let payload_len = len - FRAME_HEADER;
    let kind_byte = bytes[16];
    let kind = Kind::from_byte(kind_byte).ok_or(FrameError::UnknownKind { kind: kind_byte })?;
    if bytes[17] != PROTOCOL_VERSION {
        return Err(FrameError::Version { found: bytes[17] });
    }
    if bytes[18] != 0 || bytes[19] != 0 || u32_at(bytes, 20) != 0 {
        return Err(FrameError::Reserved);
    }
    let tag = (commit >> 16) as u16;
    let limit = match kind {
        Kind::Data => max_payload,
        Kind::Ack => 0,
        Kind::Hello => crate::hello::MAX_HELLO_PAYLOAD as u32,
        Kind::Auth => crate::hello::MAC_LEN as u32,
        Kind::Reject => crate::hello::MAX_REJECT_REASON as u32,
    };
    if payload_len > limit {
        return Err(FrameError::TooLarge {
            len: u64::from(payload_len),
            max: limit,
        });
    }
    if kind != Kind::Data && tag != 0 {
        return Err(FrameError::Reserved);
    }
    let size = frame_size(payload_len);
    if bytes.len() < size {
        return Ok(None);
    }
    Ok(Some(FrameInfo {
        kind,
        tag,
        seq: u64_at(bytes, 8),
        payload_len,
        size,
    }))
}

fn check_commit(commit: u32) -> Result<(), FrameError> {
    if commit & 0xFFFF != PUBLISHED {
        return Err(FrameError::BadFlags { commit });
    }
    Ok(())
}

/// Writes the 16-byte frame header of a frame into `out[..16]` (the start of a record's
/// payload: the ring writes the record header itself).
pub(crate) fn write_frame_header(out: &mut [u8], kind: Kind, seq: u64) {
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8] = kind as u8;
    out[9] = PROTOCOL_VERSION;
    out[10..16].fill(0);
}

/// Writes a whole control frame (record header, frame header, payload, padding) into `out`,
/// returning its size. `out` must hold [`frame_size`]`(payload.len())` bytes.
pub(crate) fn write_control(out: &mut [u8], kind: Kind, seq: u64, payload: &[u8]) -> usize {
    let size = frame_size(payload.len() as u32);
    out[..4].copy_from_slice(&PUBLISHED.to_le_bytes());
    out[4..8].copy_from_slice(&(FRAME_HEADER + payload.len() as u32).to_le_bytes());
    write_frame_header(&mut out[8..24], kind, seq);
    out[24..24 + payload.len()].copy_from_slice(payload);
    out[24 + payload.len()..size].fill(0);
    size
}

/// The bytes a frame (or queued record) occupies, read from its length word at bytes 4..8 of
/// `header`. For frames already checked by [`decode`] (or records the ring checked).
pub(crate) fn size_from_header(header: &[u8]) -> usize {
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    8 + (len as usize).next_multiple_of(8)
}

/// `reason` cut to at most [`MAX_REJECT_REASON`](crate::hello::MAX_REJECT_REASON) bytes, at a
/// character boundary: the payload of a reject frame.
pub(crate) fn reject_reason(reason: &str) -> &[u8] {
    let mut end = reason.len().min(crate::hello::MAX_REJECT_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// The size of an ack frame.
pub(crate) const ACK_SIZE: usize = frame_size(0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_round_trip() {
        let mut buf = [0u8; 64];
        let size = write_control(&mut buf, Kind::Reject, 0, b"no");
        assert_eq!(size, 32);
        let info = decode(&buf[..size], 100).unwrap().unwrap();
        assert_eq!(
            (info.kind, info.payload_len, info.size),
            (Kind::Reject, 2, 32)
        );
        assert_eq!(decode(&buf[..size - 1], 100), Ok(None));
        let size = write_control(&mut buf, Kind::Ack, 77, &[]);
        assert_eq!(size, ACK_SIZE);
        let info = decode(&buf[..size], 0).unwrap().unwrap();
        assert_eq!((info.kind, info.seq), (Kind::Ack, 77));
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut buf = [0u8; 32];
        write_control(&mut buf, Kind::Ack, 1, &[]);
        let mut bad = buf;
        bad[0] = 3;
        assert!(matches!(
            decode(&bad[..4], 0),
            Err(FrameError::BadFlags { .. })
        ));
        let mut bad = buf;
        bad[4] = 15;
        assert_eq!(decode(&bad, 0), Err(FrameError::TooShort { len: 15 }));
        let mut bad = buf;
        bad[16] = 9;
        assert_eq!(decode(&bad, 0), Err(FrameError::UnknownKind { kind: 9 }));
        let mut bad = buf;
        bad[17] = 2;
        assert_eq!(decode(&bad, 0), Err(FrameError::Version { found: 2 }));
        let mut bad = buf;
        bad[21] = 1;
        assert_eq!(decode(&bad, 0), Err(FrameError::Reserved));
        let mut bad = buf;
        bad[4..8].copy_from_slice(&(16u32 + 1000).to_le_bytes());
        bad[16] = Kind::Data as u8;
        assert!(matches!(
            decode(&bad, 999),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 999
            })
        ));
        // A length near u32::MAX never overflows the size computation.
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bad, u32::MAX), Ok(None)));
    }
}
