//! The messages of publish/subscribe on a client's connection, under reserved tags
//! ([`FIRST_RESERVED_TAG`] and up). Little-endian, fixed offsets, every length checked on decode.
//!
//! | tag | from | payload |
//! |---|---|---|
//! | [`TAG_SUBSCRIBE`] | client | `sub u32` @0, `start kind u8` @4 (0 oldest, 1 seq, 2 time, 3 end), `flags u8` @5 (bit 0 forward, bit 1 resume), `topic len u16` @6, `start value u64` @8, topic bytes @16 |
//! | [`TAG_UNSUBSCRIBE`] | client | `sub u32` @0 |
//! | [`TAG_SUBSCRIBED`] | server | `sub u32` @0, `folder len u16` @4, `journal id u64` @8, `start seq u64` @16, the journal's folder @24 |
//! | [`TAG_REFUSED`] | server | `sub u32` @0, `reason len u16` @4, reason @8 |
//! | [`TAG_TOPIC_FRAME`] | server | `sub u32` @0, `tag u16` @4, `seq u64` @8, `time u64` @16, payload @24 |
//! | [`TAG_LAGGED`] | server | `sub u32` @0, `missed u64` @8, `resume at u64` @16 |

use shm_channel::journal::ReadFrom;

/// Tags from here up are publish/subscribe's own; an application's messages use lower tags.
pub const FIRST_RESERVED_TAG: u16 = 0xFF00;
/// Client → server: subscribe.
pub const TAG_SUBSCRIBE: u16 = 0xFF10;
/// Client → server: unsubscribe.
pub const TAG_UNSUBSCRIBE: u16 = 0xFF11;
/// Server → client: subscription accepted.
pub const TAG_SUBSCRIBED: u16 = 0xFF12;
/// Server → client: subscription refused, with a reason.
pub const TAG_REFUSED: u16 = 0xFF13;
/// Server → client: a topic's frame, forwarded.
pub const TAG_TOPIC_FRAME: u16 = 0xFF14;
/// Server → client: frames were removed before they could be forwarded.
pub const TAG_LAGGED: u16 = 0xFF15;

/// Bytes before a forwarded frame's payload.
pub const FRAME_PREFIX: usize = 24;

/// A subscribe request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// The client's number for the subscription (echoed in every answer).
    pub sub: u32,
    /// The topic.
    pub topic: &'a str,
    /// Where to start.
    pub from: ReadFrom,
    /// Whether the server forwards frames over the connection (a remote subscriber), rather
    /// than the client reading the topic's journal itself.
    pub forward: bool,
    /// A forwarded subscription asked again by a client whose state is intact (its link came
    /// back): if the server still has it, it goes on where it is, since everything forwarded
    /// before is in the connection's persisted queue. Without it (a client that restarted), the
    /// server starts the subscription afresh at `from`.
    pub resume: bool,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Subscribe<'a> {
    /// The encoded length.
    pub fn len(&self) -> usize {
        16 + self.topic.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Encodes into `out` (at least [`len`](Self::len) bytes).
    pub fn encode(&self, out: &mut [u8]) {
        let (kind, value) = match self.from {
            ReadFrom::Oldest => (0u8, 0),
            ReadFrom::Seq(seq) => (1, seq),
            ReadFrom::Time(time) => (2, time),
            ReadFrom::End => (3, 0),
        };
        out[0..4].copy_from_slice(&self.sub.to_le_bytes());
        out[4] = kind;
        out[5] = u8::from(self.forward) | (u8::from(self.resume) << 1);
        out[6..8].copy_from_slice(&(self.topic.len() as u16).to_le_bytes());
        out[8..16].copy_from_slice(&value.to_le_bytes());
        out[16..16 + self.topic.len()].copy_from_slice(self.topic.as_bytes());
    }

    /// Decodes, or says what is wrong.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, &'static str> {
        let sub = u32_at(bytes, 0).ok_or("a subscribe request shorter than its header")?;
        let value = u64_at(bytes, 8).ok_or("a subscribe request shorter than its header")?;
        let topic_len = u16_at(bytes, 6).unwrap_or(0) as usize;
        let topic = bytes
            .get(16..16 + topic_len)
            .ok_or("a subscribe request whose topic runs past its end")?;
        let topic = core::str::from_utf8(topic).map_err(|_| "a topic name that is not UTF-8")?;
        let from = match bytes[4] {
            0 => ReadFrom::Oldest,
            1 => ReadFrom::Seq(value),
            2 => ReadFrom::Time(value),
            3 => ReadFrom::End,
            _ => return Err("an unknown start kind"),
        };
        let (forward, resume) = match bytes[5] {
            0 => (false, false),
            1 => (true, false),
            3 => (true, true),
            _ => return Err("subscribe flags other than direct, forward, or forward and resume"),
        };
        Ok(Self {
            sub,
            topic,
            from,
            forward,
            resume,
        })
    }
}

/// A server's answer or forwarded frame, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// Accepted: the journal's folder (read it directly unless forwarded), its id, the first
    /// sequence number the subscription gets.
    Subscribed {
        /// The subscription.
        sub: u32,
        /// The topic journal's folder.
        folder: &'a str,
        /// The journal's id.
        journal_id: u64,
        /// The first sequence number.
        start_seq: u64,
    },
    /// Refused.
    Refused {
        /// The subscription.
        sub: u32,
        /// Why.
        reason: &'a str,
    },
    /// A forwarded frame.
    Frame {
        /// The subscription.
        sub: u32,
        /// Its tag.
        tag: u16,
        /// Its sequence number in the topic.
        seq: u64,
        /// The publisher's timestamp.
        time: u64,
        /// Its payload.
        payload: &'a [u8],
    },
    /// Frames the server could not forward, removed by retention first.
    Lagged {
        /// The subscription.
        sub: u32,
        /// How many.
        missed: u64,
        /// The next frame's sequence number.
        resume_at: u64,
    },
}

impl<'a> ServerMessage<'a> {
    /// Decodes a message with a reserved tag; `Ok(None)` for a tag that is not a server's
    /// publish/subscribe message.
    pub fn decode(tag: u16, bytes: &'a [u8]) -> Result<Option<Self>, &'static str> {
        let short = "a publish/subscribe message shorter than its header";
        let sub = || u32_at(bytes, 0).ok_or(short);
        Ok(Some(match tag {
            TAG_SUBSCRIBED => {
                let len = u16_at(bytes, 4).ok_or(short)? as usize;
                let folder = bytes.get(24..24 + len).ok_or(short)?;
                Self::Subscribed {
                    sub: sub()?,
                    folder: core::str::from_utf8(folder)
                        .map_err(|_| "a folder that is not UTF-8")?,
                    journal_id: u64_at(bytes, 8).ok_or(short)?,
                    start_seq: u64_at(bytes, 16).ok_or(short)?,
                }
            }
            TAG_REFUSED => {
                let len = u16_at(bytes, 4).ok_or(short)? as usize;
                let reason = bytes.get(8..8 + len).ok_or(short)?;
                Self::Refused {
                    sub: sub()?,
                    reason: core::str::from_utf8(reason).unwrap_or("(not UTF-8)"),
                }
            }
            TAG_TOPIC_FRAME => Self::Frame {
                sub: sub()?,
                tag: u16_at(bytes, 4).ok_or(short)?,
                seq: u64_at(bytes, 8).ok_or(short)?,
                time: u64_at(bytes, 16).ok_or(short)?,
                payload: bytes.get(FRAME_PREFIX..).ok_or(short)?,
            },
            TAG_LAGGED => Self::Lagged {
                sub: sub()?,
                missed: u64_at(bytes, 8).ok_or(short)?,
                resume_at: u64_at(bytes, 16).ok_or(short)?,
            },
            _ => return Ok(None),
        }))
    }
}

/// Encodes a `Subscribed` answer into `out` (24 + folder bytes); returns the length.
pub(crate) fn encode_subscribed(
    out: &mut [u8],
    sub: u32,
    folder: &str,
    journal_id: u64,
    start_seq: u64,
) -> usize {
    out[..24].fill(0);
    out[0..4].copy_from_slice(&sub.to_le_bytes());
    out[4..6].copy_from_slice(&(folder.len() as u16).to_le_bytes());
    out[8..16].copy_from_slice(&journal_id.to_le_bytes());
    out[16..24].copy_from_slice(&start_seq.to_le_bytes());
    out[24..24 + folder.len()].copy_from_slice(folder.as_bytes());
    24 + folder.len()
}

/// Encodes a `Refused` answer; returns the length.
pub(crate) fn encode_refused(out: &mut [u8], sub: u32, reason: &str) -> usize {
    let reason = &reason.as_bytes()[..reason.len().min(out.len() - 8)];
    out[..8].fill(0);
    out[0..4].copy_from_slice(&sub.to_le_bytes());
    out[4..6].copy_from_slice(&(reason.len() as u16).to_le_bytes());
    out[8..8 + reason.len()].copy_from_slice(reason);
    8 + reason.len()
}

/// The 24-byte prefix of a forwarded frame.
pub(crate) fn encode_frame_prefix(out: &mut [u8], sub: u32, tag: u16, seq: u64, time: u64) {
    out[..FRAME_PREFIX].fill(0);
    out[0..4].copy_from_slice(&sub.to_le_bytes());
    out[4..6].copy_from_slice(&tag.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&time.to_le_bytes());
}

/// A `Lagged` notice (24 bytes).
pub(crate) fn encode_lagged(out: &mut [u8], sub: u32, missed: u64, resume_at: u64) {
    out[..24].fill(0);
    out[0..4].copy_from_slice(&sub.to_le_bytes());
    out[8..16].copy_from_slice(&missed.to_le_bytes());
    out[16..24].copy_from_slice(&resume_at.to_le_bytes());
}
