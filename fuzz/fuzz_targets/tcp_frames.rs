//! `shm_tcp::frame::decode` as a stream decoder uses it: bytes arrive in fuzzer-chosen pieces
//! into an accumulating buffer, and after every piece the decoder takes frames from the front,
//! advancing by `info.size`, until it needs more bytes or meets an error (which ends the
//! connection, so the stream stops there). The data frames' payload limit is fuzzer-chosen.
//!
//! The stream is a sequence of chunks: arbitrary bytes, frames built here from the wire format
//! documented in `frame.rs` (the crate has no public encoder), possibly with a wrong kind, a tag
//! on a control frame or a payload over the kind's limit, and bare 24-byte headers announcing any
//! length (so sizes near `u32::MAX` are reached without inputs that large). A built frame may
//! have bytes of its header flipped afterwards, and every valid one is also checked with each
//! header byte flipped in turn, so every rule is broken one at a time.
//!
//! Checked:
//! - no panic;
//! - every frame returned: its size is `8 + round_up(length field, 8)`, a multiple of 8, at least
//!   24 and at most the bytes available; its payload is within the limit of its kind; its fields
//!   are the header's; a control frame has tag 0;
//! - `decode` agrees with a decoder written here from the documented format: with 24 bytes or
//!   more, a frame exactly when the header breaks no rule and the whole frame has arrived,
//!   `Ok(None)` exactly when it is valid but incomplete, and otherwise an error that names a rule
//!   the header really breaks; with fewer than 24 bytes, `Ok(None)` or such an error;
//! - decoding the same bytes twice gives the same answer; every proper prefix of a frame decodes
//!   to `Ok(None)`; the frame decodes the same with any bytes after it;
//! - the frames and the error the stream decoder sees do not depend on how the stream was cut:
//!   the same as decoding it with all bytes at once;
//! - every frame built here from valid fields round-trips: it decodes alone to exactly its
//!   fields and size, with the payload bytes in place and zero padding, and wherever the stream
//!   decoder meets it in the stream it yields the same frame; a frame built with a broken rule
//!   is refused.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shm_tcp::frame::{self, FrameError, FrameInfo, Kind, FRAME_OVERHEAD, PROTOCOL_VERSION};
use shm_tcp::hello::{MAC_LEN, MAX_HELLO_PAYLOAD, MAX_REJECT_REASON};

const MAX_CHUNKS: usize = 64;
const MAX_CUTS: usize = 256;
const MAX_PATCHES: usize = 8;

/// A kind byte: the five kinds, or any byte at all (which may also be one of them).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum KindByte {
    Data,
    Ack,
    Hello,
    Auth,
    Reject,
    Any(u8),
}

impl KindByte {
    fn byte(self) -> u8 {
        match self {
            Self::Data => Kind::Data as u8,
            Self::Ack => Kind::Ack as u8,
            Self::Hello => Kind::Hello as u8,
            Self::Auth => Kind::Auth as u8,
            Self::Reject => Kind::Reject as u8,
            Self::Any(byte) => byte,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Chunk {
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// A whole frame built from the documented format. With `clamp`, the payload is cut to the
    /// kind's limit and a control frame's tag is dropped, so the frame is valid whenever the
    /// kind byte is a kind. Then each patch xors a byte of its header.
    Frame {
        kind: KindByte,
        tag: u16,
        seq: u64,
        payload: Vec<u8>,
        clamp: bool,
        patches: Vec<Patch>,
    },
    /// Only the 24-byte header of a frame whose length field is `len`; the bytes after it in the
    /// stream are its payload.
    Header {
        kind: KindByte,
        tag: u16,
        seq: u64,
        len: u32,
    },
}

/// `header[at % 24] ^= xor`.
#[derive(Arbitrary, Debug)]
struct Patch {
    at: u8,
    xor: u8,
}

#[derive(Arbitrary, Debug)]
enum MaxPayload {
    Exact(u32),
    Small(u8),
    Max,
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_payload: MaxPayload,
    /// Every valid frame built is also decoded with each header byte in turn xored with this
    /// (0 counts as 0x80), against the format.
    sweep: u8,
    /// The lengths of the pieces the stream arrives in (the rest arrives last, at once).
    cuts: Vec<u8>,
    chunks: Vec<Chunk>,
}

fn kind_of(byte: u8) -> Option<Kind> {
    Some(match byte {
        1 => Kind::Data,
        2 => Kind::Ack,
        3 => Kind::Hello,
        4 => Kind::Auth,
        5 => Kind::Reject,
        _ => return None,
    })
}

/// The largest payload a frame of `kind` may carry (data frames: the configured limit).
fn limit(kind: Kind, max_payload: u32) -> u32 {
    match kind {
        Kind::Data => max_payload,
        Kind::Ack => 0,
        Kind::Hello => MAX_HELLO_PAYLOAD as u32,
        Kind::Auth => MAC_LEN as u32,
        Kind::Reject => MAX_REJECT_REASON as u32,
    }
}

/// The 24 header bytes of a frame, per the documented format.
fn header(kind: u8, tag: u16, seq: u64, len: u32) -> [u8; FRAME_OVERHEAD] {
    let mut out = [0u8; FRAME_OVERHEAD];
    out[..4].copy_from_slice(&(1 | (u32::from(tag) << 16)).to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16] = kind;
    out[17] = PROTOCOL_VERSION;
    out
}

/// A whole frame: header, payload, zero padding to a multiple of 8.
fn encode(kind: u8, tag: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len() as u32;
    let mut out = header(kind, tag, seq, len).to_vec();
    out.extend_from_slice(payload);
    out.resize(8 + (len as usize).next_multiple_of(8), 0);
    out
}

/// What the documented format says of bytes at the start of a buffer.
#[derive(Debug)]
enum Spec {
    /// A whole, valid frame.
    Frame(FrameInfo),
    /// Valid so far; more bytes are needed.
    Incomplete,
    /// The header breaks these rules (any one may be reported).
    Invalid(Vec<FrameError>),
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The rules the first 24 bytes break.
fn violations(h: &[u8], max_payload: u32) -> Vec<FrameError> {
    let mut found = Vec::new();
    let commit = u32_at(h, 0);
    if commit & 0xFFFF != 1 {
        found.push(FrameError::BadFlags { commit });
    }
    let len = u32_at(h, 4);
    if len < 16 {
        found.push(FrameError::TooShort { len });
    }
    let kind = kind_of(h[16]);
    if kind.is_none() {
        found.push(FrameError::UnknownKind { kind: h[16] });
    }
    if h[17] != PROTOCOL_VERSION {
        found.push(FrameError::Version { found: h[17] });
    }
    let tag = (commit >> 16) as u16;
    if h[18..24].iter().any(|&b| b != 0) || (kind.is_some_and(|k| k != Kind::Data) && tag != 0) {
        found.push(FrameError::Reserved);
    }
    if let Some(kind) = kind {
        let max = limit(kind, max_payload);
        if len >= 16 && len - 16 > max {
            found.push(FrameError::TooLarge {
                len: u64::from(len - 16),
                max,
            });
        }
    }
    found
}

fn spec(bytes: &[u8], max_payload: u32) -> Spec {
    if bytes.len() < FRAME_OVERHEAD {
        // Only the commit word can be judged for sure before the header is whole; a decoder may
        // refuse earlier on any rule, which `check_against_spec` allows.
        if bytes.len() >= 4 && u32_at(bytes, 0) & 0xFFFF != 1 {
            return Spec::Invalid(vec![FrameError::BadFlags {
                commit: u32_at(bytes, 0),
            }]);
        }
        return Spec::Incomplete;
    }
    let found = violations(bytes, max_payload);
    if !found.is_empty() {
        return Spec::Invalid(found);
    }
    let len = u32_at(bytes, 4);
    let size = 8 + u64::from(len).next_multiple_of(8);
    if (bytes.len() as u64) < size {
        return Spec::Incomplete;
    }
    Spec::Frame(FrameInfo {
        kind: kind_of(bytes[16]).unwrap(),
        tag: (u32_at(bytes, 0) >> 16) as u16,
        seq: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        payload_len: len - 16,
        size: size as usize,
    })
}

/// An error truthfully describes bytes shorter than a header: it names a rule that the bytes
/// present already break.
fn truthful_early(err: &FrameError, bytes: &[u8], max_payload: u32) -> bool {
    let mut padded = bytes.to_vec();
    // Pad with bytes that break no rule by themselves, then see whether the rule is broken.
    let valid = header(Kind::Data as u8, 0, 0, 16);
    padded.extend_from_slice(&valid[bytes.len()..]);
    violations(&padded, max_payload).contains(err)
}

fn check_against_spec(got: &Result<Option<FrameInfo>, FrameError>, bytes: &[u8], max_payload: u32) {
    let expected = spec(bytes, max_payload);
    match (&expected, got) {
        (Spec::Frame(want), Ok(Some(info))) => assert_eq!(want, info, "decoded fields"),
        (Spec::Incomplete, Ok(None)) => {}
        (Spec::Incomplete, Err(err)) if bytes.len() < FRAME_OVERHEAD => assert!(
            truthful_early(err, bytes, max_payload),
            "{err:?} for the {} bytes {bytes:02x?}, which break no such rule",
            bytes.len()
        ),
        (Spec::Invalid(rules), Err(err)) => assert!(
            rules.contains(err),
            "{err:?} is not among the rules broken: {rules:?}"
        ),
        _ => panic!(
            "decode of {} bytes (max_payload {max_payload}) gave {got:?}, the format says \
             {expected:?}; header {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(FRAME_OVERHEAD)]
        ),
    }
}

/// The invariants of a frame returned for `bytes` (the brief's list, checked on their own).
fn check_frame(info: &FrameInfo, bytes: &[u8], max_payload: u32) {
    assert_eq!(info.size % 8, 0, "{info:?}");
    assert!(info.size >= FRAME_OVERHEAD, "{info:?}");
    assert!(
        info.size <= bytes.len(),
        "{info:?} from {} bytes",
        bytes.len()
    );
    assert!(
        info.payload_len <= limit(info.kind, max_payload),
        "{info:?} over the limit (max_payload {max_payload})"
    );
    assert_eq!(info.size, frame::frame_size(info.payload_len), "{info:?}");
    assert!(FRAME_OVERHEAD + info.payload_len as usize <= info.size);
    if info.kind != Kind::Data {
        assert_eq!(info.tag, 0, "{info:?}");
    }
    // Every proper prefix is incomplete; any bytes after the frame change nothing.
    for cut in 0..info.size {
        assert_eq!(
            frame::decode(&bytes[..cut], max_payload),
            Ok(None),
            "prefix of {cut} bytes of {info:?}"
        );
    }
    assert_eq!(
        frame::decode(&bytes[..info.size], max_payload),
        Ok(Some(*info))
    );
}

/// Decodes once, checks the answer is deterministic and agrees with the format.
fn decode_checked(bytes: &[u8], max_payload: u32) -> Result<Option<FrameInfo>, FrameError> {
    let got = frame::decode(bytes, max_payload);
    assert_eq!(
        got,
        frame::decode(bytes, max_payload),
        "decode is not deterministic"
    );
    if let Err(err) = &got {
        let _ = err.to_string();
    }
    check_against_spec(&got, bytes, max_payload);
    if let Ok(Some(info)) = &got {
        check_frame(info, bytes, max_payload);
    }
    got
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Each frame with its offset in the stream.
    frames: Vec<(usize, FrameInfo)>,
    /// The error that ended the stream, at its offset.
    error: Option<(usize, FrameError)>,
    /// Bytes taken by frames.
    consumed: usize,
}

/// A stream decoder: appends each piece, then takes every whole frame from the front.
fn run_stream<'a>(
    pieces: impl Iterator<Item = &'a [u8]>,
    max_payload: u32,
    expect_frames: &dyn Fn(usize, &FrameInfo, &[u8]),
) -> Outcome {
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode_checked(&buf[pos..], max_payload) {
                Ok(Some(info)) => {
                    expect_frames(pos, &info, &buf[pos..]);
                    frames.push((pos, info));
                    pos += info.size;
                }
                Ok(None) => break,
                Err(err) => {
                    return Outcome {
                        frames,
                        error: Some((pos, err)),
                        consumed: pos,
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
        consumed: pos,
    }
}

/// A frame built from fields that break no rule: what it must decode to.
struct Built {
    offset: usize,
    info: FrameInfo,
    payload: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let max_payload = match input.max_payload {
        MaxPayload::Exact(max) => max,
        MaxPayload::Small(max) => u32::from(max),
        MaxPayload::Max => u32::MAX,
    };
    let mut stream = Vec::new();
    let mut built = Vec::new();
    for chunk in input.chunks.iter().take(MAX_CHUNKS) {
        let offset = stream.len();
        match chunk {
            Chunk::Raw(bytes) => stream.extend_from_slice(bytes),
            Chunk::Header {
                kind,
                tag,
                seq,
                len,
            } => stream.extend_from_slice(&header(kind.byte(), *tag, *seq, *len)),
            &Chunk::Frame {
                kind,
                mut tag,
                seq,
                ref payload,
                clamp,
                ref patches,
            } => {
                let kind_byte = kind.byte();
                let mut payload = &payload[..];
                if clamp {
                    if let Some(kind) = kind_of(kind_byte) {
                        let max = limit(kind, max_payload) as usize;
                        payload = &payload[..payload.len().min(max)];
                        if kind != Kind::Data {
                            tag = 0;
                        }
                    }
                }
                let mut bytes = encode(kind_byte, tag, seq, payload);
                let built_bytes = bytes.clone();
                for patch in patches.iter().take(MAX_PATCHES) {
                    bytes[usize::from(patch.at) % FRAME_OVERHEAD] ^= patch.xor;
                }
                if bytes != built_bytes {
                    // No longer the frame built: only the checks against the format apply.
                    stream.extend_from_slice(&bytes);
                    continue;
                }
                let valid = kind_of(kind_byte).filter(|&kind| {
                    payload.len() <= limit(kind, max_payload) as usize
                        && (kind == Kind::Data || tag == 0)
                });
                // Round trip, alone and followed by other bytes.
                let alone = frame::decode(&bytes, max_payload);
                let mut longer = bytes.clone();
                longer.extend_from_slice(&[0xA5; 17]);
                assert_eq!(alone, frame::decode(&longer, max_payload));
                match valid {
                    Some(kind) => {
                        let info = FrameInfo {
                            kind,
                            tag,
                            seq,
                            payload_len: payload.len() as u32,
                            size: bytes.len(),
                        };
                        assert_eq!(alone, Ok(Some(info)), "a valid frame built from {chunk:?}");
                        let xor = if input.sweep == 0 { 0x80 } else { input.sweep };
                        for at in 0..FRAME_OVERHEAD {
                            let mut flipped = bytes.clone();
                            flipped[at] ^= xor;
                            let _ = decode_checked(&flipped, max_payload);
                        }
                        built.push(Built {
                            offset,
                            info,
                            payload: payload.to_vec(),
                        });
                    }
                    None => assert!(alone.is_err(), "{alone:?} for an invalid {chunk:?}"),
                }
                stream.extend_from_slice(&bytes);
            }
        }
    }

    // Wherever the decoder meets a frame built here, it yields exactly that frame.
    // (Built frames are at least 24 bytes each, so their offsets are strictly increasing.)
    let expect_frames = |pos: usize, info: &FrameInfo, bytes: &[u8]| {
        if let Ok(i) = built.binary_search_by_key(&pos, |b| b.offset) {
            let b = &built[i];
            assert_eq!(*info, b.info, "the frame built at offset {pos}");
            assert_eq!(&bytes[FRAME_OVERHEAD..][..b.payload.len()], &b.payload[..]);
            assert!(bytes[FRAME_OVERHEAD + b.payload.len()..info.size]
                .iter()
                .all(|&x| x == 0));
        }
    };
    let whole = run_stream(std::iter::once(&stream[..]), max_payload, &expect_frames);

    let mut pieces = Vec::new();
    let mut at = 0;
    for &cut in input.cuts.iter().take(MAX_CUTS) {
        let end = (at + usize::from(cut)).min(stream.len());
        pieces.push(&stream[at..end]);
        at = end;
    }
    pieces.push(&stream[at..]);
    let split = run_stream(pieces.into_iter(), max_payload, &expect_frames);
    assert_eq!(split, whole, "the frames depend on how the stream was cut");

    // What is left after the last frame is an incomplete frame (or nothing).
    if whole.error.is_none() {
        assert!(matches!(
            frame::decode(&stream[whole.consumed..], max_payload),
            Ok(None)
        ));
    }
});
