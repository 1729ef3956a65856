//! The `#[repr(C)]` header at the start of every segment, its fixed layout, and its validation.
//!
//! See [`SegmentHeader`] for the layout.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use spsc_core::RingLayout;

use crate::name::{SegmentName, MAX_NAME_LEN};
use crate::pid::is_process_alive;
use crate::wait::{WaitCell, WaitStats};

/// `b"SHMCHAN\0"` as a little-endian `u64`: the first word of every segment.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SHMCHAN\0");

/// Version of the segment format. Bumped on any change to the header layout or to the meaning of
/// a field; a segment of another version is refused, never reinterpreted.
///
/// Version 2: each end's liveness block records its owner's start time (`u64` @16), so that a
/// later process given the same pid (a restarted container's main process, typically) is told
/// apart from the one that died holding the end; a version-1 build neither writes nor honours it.
/// It also covers the wait words' meaning: each direction's block holds two cells, the
/// receiver's @0 and, @64, the one a sender blocked on a full ring parks on, which version-1
/// builds made before that cell existed kept as reserved zeros and never woke.
///
/// Version 3: each ring descriptor records the ring's capacity (`u32` @24) and lanes (`u32` @28)
/// beside its fingerprint, so that two ends built with different `Channel<C, L>` parameters are
/// told which numbers differ; and the creator writes its pid and the `initialising` state before
/// it sizes the file, so a file of full size whose state was never set is refused at once as
/// never initialised rather than waited for.
pub const ABI_VERSION: u32 = 3;

/// Size of the header in bytes; the first ring starts at or after it.
pub const HEADER_SIZE: usize = core::mem::size_of::<SegmentHeader>();

/// Alignment of every ring inside the segment (the rings' own alignment).
pub const RING_ALIGN: u64 = 128;

/// The layout to expect, and record, for a ring the segment does not have: a segment of one ring
/// (the TCP transport's persisted send queue) passes it as the second of the two layouts, with
/// the placement `RingPlacement { offset: 0, size: 0 }`. Every field is 0, so its fingerprint
/// matches no real ring's: a one-ring segment opened as a channel (or the reverse) is refused as
/// a [`HeaderError::LayoutMismatch`].
pub const ABSENT_RING: RingLayout = RingLayout {
    version: 0,
    kind: 0,
    capacity: 0,
    elem_size: 0,
    elem_align: 0,
    block_len: 0,
    block_size: 0,
    block_spread: 0,
    data_offset: 0,
    total_size: 0,
};

const STATE_UNSET: u32 = 0;
const STATE_INITIALISING: u32 = 1;
const STATE_READY: u32 = 2;

/// One of the two ends of a channel. End A sends on ring A→B and receives on ring B→A.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// The end that sends on A→B.
    A,
    /// The end that sends on B→A.
    B,
}

impl End {
    /// The other end.
    pub const fn peer(self) -> End {
        match self {
            End::A => End::B,
            End::B => End::A,
        }
    }

    /// 0 for A, 1 for B: the index of this end's blocks in the header.
    pub const fn index(self) -> usize {
        match self {
            End::A => 0,
            End::B => 1,
        }
    }

    /// The direction this end sends on.
    pub const fn outgoing(self) -> Direction {
        match self {
            End::A => Direction::AToB,
            End::B => Direction::BToA,
        }
    }

    /// The direction this end receives on.
    pub const fn incoming(self) -> Direction {
        self.peer().outgoing()
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::A => "end A",
            End::B => "end B",
        })
    }
}

/// One of the two rings of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Ring 0: sent by end A, received by end B.
    AToB,
    /// Ring 1: sent by end B, received by end A.
    BToA,
}

impl Direction {
    /// 0 for A→B, 1 for B→A: the ring's index in the header.
    pub const fn index(self) -> usize {
        match self {
            Direction::AToB => 0,
            Direction::BToA => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::AToB => "ring A→B",
            Direction::BToA => "ring B→A",
        })
    }
}

/// Where one ring lives in the segment, as recorded by the creator.
#[repr(C)]
#[derive(Debug)]
pub struct RingDescriptor {
    offset: AtomicU64,
    size: AtomicU64,
    fingerprint: AtomicU64,
    /// The ring layout's capacity ([`RingLayout::capacity`]: payload bytes of a message ring).
    capacity: AtomicU32,
    /// The ring layout's lanes ([`RingLayout::block_spread`]: 1 for a one-lane message ring).
    lanes: AtomicU32,
}

/// What the segment is: written once by the creator, before it publishes `ready`.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Identity {
    magic: AtomicU64,
    abi_version: AtomicU32,
    header_size: AtomicU32,
    total_size: AtomicU64,
    state: AtomicU32,
    creator_pid: AtomicU32,
    rings: [RingDescriptor; 2],
    _reserved: [AtomicU64; 4],
}

/// Who holds one end, and whether it is still there. Written only by that end.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Liveness {
    owner_pid: AtomicU32,
    attach_count: AtomicU32,
    heartbeat: AtomicU64,
    /// The owner's start time (clock ticks since boot; 0 = unknown): with `owner_pid`, it names
    /// one process, where the pid alone may since have gone to another.
    owner_start: AtomicU64,
    _reserved: [AtomicU64; 13],
}

/// Counters of one direction kept by its sender (relaxed, single writer).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SendCounters {
    pub(crate) messages: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) full_rejections: AtomicU64,
    pub(crate) high_water_bytes: AtomicU64,
    _reserved: [AtomicU64; 12],
}

/// Counters of one direction kept by its receiver (relaxed, single writer).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RecvCounters {
    pub(crate) messages: AtomicU64,
    pub(crate) bytes: AtomicU64,
    _reserved: [AtomicU64; 14],
}

/// The park/wake words of one direction, two [`WaitCell`]s whose all-zero state (disarmed,
/// nobody asleep) is what a freshly created segment holds: `cell`, which a blocking receiver
/// parks on until its sender publishes a message, and `space`, on its own cache line, which a
/// blocking sender parks on until its receiver frees room.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct WaitWords {
    cell: WaitCell,
    _pad: [AtomicU64; 4],
    space: WaitCell,
    _reserved: [AtomicU64; 4],
}

/// Words of one end's name in the session area: [`MAX_NAME_LEN`] bytes rounded up to 256.
const NAME_WORDS: usize = 32;
const _: () = assert!(NAME_WORDS * 8 >= MAX_NAME_LEN);

/// State that upper layers (`shm-server`) keep in the segment, so that a connection is one file.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SessionArea {
    generation: AtomicU64,
    name_lens: [AtomicU32; 2],
    names: [[AtomicU64; NAME_WORDS]; 2],
    user: [AtomicU64; 62],
}

/// The header at offset 0 of every segment.
///
/// # Layout (ABI version 2; offsets in bytes; each block on its own 128 bytes, i.e. two 64-byte
/// cache lines, since x86 prefetches lines in pairs)
///
/// | offset | size | block | written by |
/// |-------:|-----:|-------|------------|
/// | 0 | 128 | identity: magic, ABI version, header size, total size, state, creator pid, two ring descriptors (offset, size, layout fingerprint) | the creator, before `ready` |
/// | 128 | 2 × 128 | liveness of end A, end B: owner pid `u32` @0, attach count `u32` @4, heartbeat `u64` @8, owner start time `u64` @16 | that end (the start time also by a process taking the end over) |
/// | 384 | 2 × 128 | sender counters of A→B, B→A: messages, bytes, queue-full rejections, depth high-water mark | that direction's sender |
/// | 640 | 2 × 128 | receiver counters of A→B, B→A: messages, bytes | that direction's receiver |
/// | 896 | 2 × 128 | wait words of A→B, B→A: two [`WaitCell`]s (futex word, sleeper flag, armed epoch, acknowledged epoch, wake and park counters), @0 for a receiver waiting for a message, @64 for a sender waiting for room | both sides of that direction |
/// | 1152 | 1024 | session area for upper layers: session generation, both end names, 62 user words | upper layers |
/// | 2176 | 1920 | reserved, zero | nobody yet |
/// | 4096 | | rings (each 128-aligned; offsets recorded in the identity block) | |
///
/// The identity block: magic `u64` @0, ABI version `u32` @8, header size `u32` @12, total size
/// `u64` @16, state `u32` @24, creator pid `u32` @28, ring descriptors @32 and @64 (offset `u64`,
/// size `u64`, layout fingerprint `u64`, reserved `u64`), reserved to 128.
///
/// Every field is an atomic, so a view of the header is sound whatever the bytes are and whatever
/// another process writes concurrently; values that come from the segment are checked before they
/// are used as an offset or a length. The state word goes `unset` (0, a freshly zero-filled file)
/// → `initialising` (1) → `ready` (2); `ready` is stored with Release after everything else, and
/// every reader loads it with Acquire before reading anything the creator wrote.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SegmentHeader {
    identity: Identity,
    liveness: [Liveness; 2],
    send_counters: [SendCounters; 2],
    recv_counters: [RecvCounters; 2],
    wait: [WaitWords; 2],
    session: SessionArea,
    _reserved: [AtomicU64; 240],
}

/// Bytes of a segment's start that say what the file is without mapping it: the magic @0, the
/// state @24 and the creator's pid @28 (see [`classify_prefix`]).
pub(crate) const PREFIX_LEN: usize = 32;

/// What a file's first [`PREFIX_LEN`] bytes (fewer if it is shorter) say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FilePrefix {
    /// Empty: what a creator that died right after creating the file leaves. Holds nothing.
    Empty,
    /// A published or half-written segment of this format (the magic is there).
    Segment,
    /// A segment being created (or whose creator died before writing the magic): zeros where
    /// the magic goes, state `initialising` and the creator's pid, as [`creation_marker`] writes.
    Creating {
        /// The creator's pid.
        creator_pid: u32,
    },
    /// Anything else: not a segment.
    Foreign {
        /// The first 8 bytes as a little-endian word, if the file has 8.
        first_word: Option<u64>,
    },
}

/// Reads what `prefix` (a file's first bytes, at most [`PREFIX_LEN`]) says the file is.
pub(crate) fn classify_prefix(prefix: &[u8]) -> FilePrefix {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(prefix.get(at..at + 8)?.try_into().ok()?))
    };
    if prefix.is_empty() {
        return FilePrefix::Empty;
    }
    let first_word = word(0);
    if first_word == Some(SEGMENT_MAGIC) {
        return FilePrefix::Segment;
    }
    if let (Some(0), Some(marker)) = (first_word, word(24)) {
        let (state, creator_pid) = (marker as u32, (marker >> 32) as u32);
        if state == STATE_INITIALISING && creator_pid != 0 {
            return FilePrefix::Creating { creator_pid };
        }
    }
    FilePrefix::Foreign { first_word }
}

/// What a creator writes at offset [`CREATION_MARKER_OFFSET`] of a brand-new, empty file before
/// it sizes it: state `initialising` and its pid, as the identity block holds them. An opener
/// that finds a file of full size without them knows no creator is at work on it.
pub(crate) fn creation_marker(creator_pid: u32) -> [u8; 8] {
    (u64::from(STATE_INITIALISING) | (u64::from(creator_pid) << 32)).to_le_bytes()
}

/// Where [`creation_marker`] goes: the identity block's `state` (followed by `creator_pid`).
pub(crate) const CREATION_MARKER_OFFSET: u64 = 24;

/// Compile-time locks: a change that moves any field fails the build here, and must come with a
/// bump of [`ABI_VERSION`]. (Loom builds put larger model types in the wait words, so the checks
/// apply to real builds.)
#[cfg(not(loom))]
mod locked {
    use core::mem::{align_of, offset_of, size_of};

    use static_assertions::const_assert_eq;

    use super::*;

    const_assert_eq!(size_of::<SegmentHeader>(), 4096);
    const_assert_eq!(align_of::<SegmentHeader>(), 128);
    const_assert_eq!(offset_of!(SegmentHeader, identity), 0);
    const_assert_eq!(offset_of!(SegmentHeader, liveness), 128);
    const_assert_eq!(offset_of!(SegmentHeader, send_counters), 384);
    const_assert_eq!(offset_of!(SegmentHeader, recv_counters), 640);
    const_assert_eq!(offset_of!(SegmentHeader, wait), 896);
    const_assert_eq!(offset_of!(SegmentHeader, session), 1152);
    const_assert_eq!(offset_of!(SegmentHeader, _reserved), 2176);

    const_assert_eq!(size_of::<Identity>(), 128);
    const_assert_eq!(offset_of!(Identity, magic), 0);
    const_assert_eq!(offset_of!(Identity, abi_version), 8);
    const_assert_eq!(offset_of!(Identity, header_size), 12);
    const_assert_eq!(offset_of!(Identity, total_size), 16);
    const_assert_eq!(offset_of!(Identity, state), 24);
    const_assert_eq!(offset_of!(Identity, creator_pid), 28);
    const_assert_eq!(offset_of!(Identity, rings), 32);
    const_assert_eq!(size_of::<RingDescriptor>(), 32);
    const_assert_eq!(offset_of!(RingDescriptor, offset), 0);
    const_assert_eq!(offset_of!(RingDescriptor, size), 8);
    const_assert_eq!(offset_of!(RingDescriptor, fingerprint), 16);
    const_assert_eq!(offset_of!(RingDescriptor, capacity), 24);
    const_assert_eq!(offset_of!(RingDescriptor, lanes), 28);
    // What a creator writes before it sizes the file (`creation_marker`).
    const_assert_eq!(offset_of!(Identity, state), CREATION_MARKER_OFFSET as usize);
    const_assert_eq!(
        offset_of!(Identity, state) + 4,
        offset_of!(Identity, creator_pid)
    );
    const_assert_eq!(offset_of!(Identity, rings), PREFIX_LEN);

    const_assert_eq!(size_of::<Liveness>(), 128);
    const_assert_eq!(offset_of!(Liveness, owner_pid), 0);
    const_assert_eq!(offset_of!(Liveness, attach_count), 4);
    const_assert_eq!(offset_of!(Liveness, heartbeat), 8);
    const_assert_eq!(offset_of!(Liveness, owner_start), 16);

    const_assert_eq!(size_of::<SendCounters>(), 128);
    const_assert_eq!(offset_of!(SendCounters, messages), 0);
    const_assert_eq!(offset_of!(SendCounters, bytes), 8);
    const_assert_eq!(offset_of!(SendCounters, full_rejections), 16);
    const_assert_eq!(offset_of!(SendCounters, high_water_bytes), 24);
    const_assert_eq!(size_of::<RecvCounters>(), 128);
    const_assert_eq!(offset_of!(RecvCounters, messages), 0);
    const_assert_eq!(offset_of!(RecvCounters, bytes), 8);

    const_assert_eq!(size_of::<WaitWords>(), 128);
    const_assert_eq!(offset_of!(WaitWords, cell), 0);
    const_assert_eq!(offset_of!(WaitWords, space), 64);

    const_assert_eq!(size_of::<SessionArea>(), 1024);
    const_assert_eq!(offset_of!(SessionArea, generation), 0);
    const_assert_eq!(offset_of!(SessionArea, name_lens), 8);
    const_assert_eq!(offset_of!(SessionArea, names), 16);
    const_assert_eq!(offset_of!(SessionArea, user), 528);

    // The atomics have the size and alignment of the integers they wrap on every target this
    // crate builds for, so the layout is the same in every process.
    const_assert_eq!(size_of::<AtomicU64>(), 8);
    const_assert_eq!(align_of::<AtomicU64>(), 8);
}

/// Why a segment's header was refused. Nothing in the segment was modified.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The file is shorter than a segment header: truncated, or not a segment.
    TooShort {
        /// The file's length in bytes.
        len: u64,
        /// The header's size.
        required: u64,
    },
    /// The first word is not [`SEGMENT_MAGIC`]: the file is not a channel segment.
    BadMagic {
        /// The word found.
        found: u64,
    },
    /// The segment was made by a build with another segment format.
    VersionMismatch {
        /// The version recorded in the segment.
        found: u32,
        /// This build's [`ABI_VERSION`].
        expected: u32,
    },
    /// A ring in the segment has another layout (capacity, lanes, format) than this build
    /// expects: the two ends were built with different `Channel<C, L>` parameters or crate
    /// versions.
    LayoutMismatch {
        /// Which ring.
        direction: Direction,
        /// Fingerprint recorded in the segment.
        found: u64,
        /// Fingerprint this build expects.
        expected: u64,
        /// (capacity, lanes) recorded in the segment: payload bytes and lanes of its message
        /// ring.
        found_shape: (u32, u32),
        /// (capacity, lanes) this build expects.
        expected_shape: (u32, u32),
    },
    /// The file has a segment's size but its header was never written (all zeros where the
    /// magic and state should be): no creator of this format made it, or one crashed before
    /// writing anything. It holds no messages.
    NeverInitialised {
        /// The file's length in bytes.
        len: u64,
    },
    /// The file is shorter than the size its header records: it was truncated.
    Truncated {
        /// Size recorded in the header.
        recorded: u64,
        /// The file's length.
        actual: u64,
    },
    /// The file is longer than the size its header records.
    SizeMismatch {
        /// Size recorded in the header.
        recorded: u64,
        /// The file's length.
        actual: u64,
    },
    /// The creator died while initialising the segment (state still `initialising`, creator's
    /// process gone). The segment holds no messages; remove it and create it again.
    HalfInitialised {
        /// The dead creator's process id.
        creator_pid: u32,
    },
    /// The creator is still initialising the segment (or has not written its pid yet); retry.
    NotReady {
        /// The creator's process id, 0 if not written yet.
        creator_pid: u32,
    },
    /// The state word holds a value no build writes.
    BadState {
        /// The value found.
        found: u32,
    },
    /// An offset or size in the header is impossible (overlapping or misaligned rings, a ring
    /// past the end of the file, ...): the segment is corrupt.
    Impossible {
        /// Which check failed.
        reason: &'static str,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len, required } => write!(
                f,
                "segment file is {len} bytes, shorter than the {required}-byte header: it is \
                 truncated or not a channel segment"
            ),
            Self::BadMagic { found } => write!(
                f,
                "file is not a channel segment (magic {found:#018x}, expected {SEGMENT_MAGIC:#018x})"
            ),
            Self::VersionMismatch { found, expected } => write!(
                f,
                "segment has format version {found} but this build uses {expected}: rebuild both \
                 sides from the same version, or remove the segment"
            ),
            Self::LayoutMismatch {
                direction,
                found,
                expected,
                found_shape: (found_capacity, found_lanes),
                expected_shape: (expected_capacity, expected_lanes),
            } => {
                if (found_capacity, found_lanes) != (expected_capacity, expected_lanes) {
                    write!(
                        f,
                        "{direction} was created with a capacity of {found_capacity} bytes in \
                         {found_lanes} lane(s), but this end was built for {expected_capacity} \
                         bytes in {expected_lanes} lane(s): both ends must use the same \
                         Channel<C, L> (capacity C and lanes L)"
                    )
                } else {
                    write!(
                        f,
                        "{direction} has the capacity ({found_capacity} bytes) and lanes \
                         ({found_lanes}) this end expects but another ring format (layout \
                         fingerprint {found:#018x}, expected {expected:#018x}): both ends must be \
                         built from the same crate version"
                    )
                }
            }
            Self::NeverInitialised { len } => write!(
                f,
                "segment file is {len} bytes but its header was never written (zeros where the \
                 magic and state should be): it was not created by this library, or its creator \
                 crashed before initialising it; it holds no messages, remove it"
            ),
            Self::Truncated { recorded, actual } => write!(
                f,
                "segment file is {actual} bytes but its header says {recorded}: it was truncated"
            ),
            Self::SizeMismatch { recorded, actual } => write!(
                f,
                "segment file is {actual} bytes but its header says {recorded}"
            ),
            Self::HalfInitialised { creator_pid } => write!(
                f,
                "segment is half-initialised: its creator (pid {creator_pid}) died while setting \
                 it up; it holds no messages, remove it and create it again"
            ),
            Self::NotReady { creator_pid } => write!(
                f,
                "segment is still being initialised by its creator (pid {creator_pid})"
            ),
            Self::BadState { found } => {
                write!(f, "segment state word is {found}, which no build writes: it is corrupt")
            }
            Self::Impossible { reason } => write!(f, "segment header is corrupt: {reason}"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// A ring's place in the mapping, checked against the header's bounds by
/// [`SegmentHeader::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPlacement {
    /// Offset from the start of the segment, a multiple of [`RING_ALIGN`].
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A snapshot of one direction's counters, as a monitor reads them. The two halves are read
/// separately, so `depth` is approximate while traffic flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Messages the sender pushed.
    pub sent_messages: u64,
    /// Payload bytes the sender pushed.
    pub sent_bytes: u64,
    /// Times `alloc` reported the ring full.
    pub full_rejections: u64,
    /// Highest number of queued bytes (records included) the sender observed; sampled every 64
    /// messages and on every full ring, so a short peak may be missed.
    pub high_water_bytes: u64,
    /// Messages the receiver popped.
    pub received_messages: u64,
    /// Payload bytes the receiver popped.
    pub received_bytes: u64,
}

impl DirectionStats {
    /// Messages pushed and not yet popped, as of the snapshot.
    pub fn depth(&self) -> u64 {
        self.sent_messages.saturating_sub(self.received_messages)
    }
}

/// Adds `n` to a counter with a single writer: a relaxed load and store, cheaper than a locked
/// read-modify-write, and exact because nobody else writes it.
#[inline(always)]
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl SegmentHeader {
    /// The id of the process that created the segment (0 if it never recorded it).
    pub fn creator_pid(&self) -> u32 {
        self.identity.creator_pid.load(Ordering::Acquire)
    }

    /// `true` once the creator has published the segment.
    pub fn is_ready(&self) -> bool {
        self.identity.state.load(Ordering::Acquire) == STATE_READY
    }

    /// Writes the identity block of a freshly created (zero-filled) segment, leaving it in state
    /// `initialising`. Only the creator calls this, before anyone else can read a ready state.
    pub(crate) fn begin_init(&self, creator_pid: u32) {
        let id = &self.identity;
        id.creator_pid.store(creator_pid, Ordering::Relaxed);
        id.state.store(STATE_INITIALISING, Ordering::Release);
    }

    /// Records the segment's identity and ring placements (creator only, while initialising).
    pub(crate) fn write_identity(&self, total_size: u64, rings: &[(RingPlacement, RingLayout); 2]) {
        let id = &self.identity;
        id.magic.store(SEGMENT_MAGIC, Ordering::Relaxed);
        id.abi_version.store(ABI_VERSION, Ordering::Relaxed);
        id.header_size.store(HEADER_SIZE as u32, Ordering::Relaxed);
        id.total_size.store(total_size, Ordering::Relaxed);
        for (desc, (placement, layout)) in id.rings.iter().zip(rings) {
            desc.offset
                .store(placement.offset as u64, Ordering::Relaxed);
            desc.size.store(placement.size as u64, Ordering::Relaxed);
            desc.fingerprint
                .store(layout.fingerprint(), Ordering::Relaxed);
            desc.capacity.store(layout.capacity, Ordering::Relaxed);
            desc.lanes.store(layout.block_spread, Ordering::Relaxed);
        }
    }

    /// Publishes the segment: everything written before becomes visible to whoever loads the
    /// state with Acquire and sees `ready`.
    pub(crate) fn publish_ready(&self) {
        self.identity.state.store(STATE_READY, Ordering::Release);
    }

    /// Checks everything about the segment before any ring is touched: that a segment of
    /// `file_len` bytes with this header holds two rings of the `expected` layouts, in bounds,
    /// aligned and apart. Returns where the rings are.
    ///
    /// # Errors
    /// One [`HeaderError`] per kind of problem; [`HeaderError::NotReady`] is the only transient
    /// one (the creator is alive and still initialising).
    pub fn validate(
        &self,
        file_len: u64,
        expected: &[RingLayout; 2],
    ) -> Result<[RingPlacement; 2], HeaderError> {
        if file_len < HEADER_SIZE as u64 {
            return Err(HeaderError::TooShort {
                len: file_len,
                required: HEADER_SIZE as u64,
            });
        }
        let id = &self.identity;
        // Acquire first: if it reads `ready`, every field below was written before it.
        let state = id.state.load(Ordering::Acquire);
        let magic = id.magic.load(Ordering::Relaxed);
        let starting = state == STATE_UNSET || state == STATE_INITIALISING;
        if magic != SEGMENT_MAGIC && !(magic == 0 && starting) {
            return Err(HeaderError::BadMagic { found: magic });
        }
        match state {
            STATE_READY => {}
            // A creator writes `initialising` before it sizes the file (`creation_marker`), so a
            // file long enough to hold a header whose state was never set is no creation in
            // progress: waiting for it would only delay the same answer.
            STATE_UNSET if magic == 0 => {
                return Err(HeaderError::NeverInitialised { len: file_len })
            }
            STATE_UNSET | STATE_INITIALISING => {
                let creator_pid = id.creator_pid.load(Ordering::Relaxed);
                return Err(if creator_pid != 0 && !is_process_alive(creator_pid) {
                    HeaderError::HalfInitialised { creator_pid }
                } else {
                    HeaderError::NotReady { creator_pid }
                });
            }
            found => return Err(HeaderError::BadState { found }),
        }
        self.check_layout(file_len, expected)
    }

    /// Everything [`validate`](Self::validate) checks after the state: version, fingerprints,
    /// sizes and offsets. The creator runs it before publishing `ready`.
    pub(crate) fn check_layout(
        &self,
        file_len: u64,
        expected: &[RingLayout; 2],
    ) -> Result<[RingPlacement; 2], HeaderError> {
        let id = &self.identity;
        let version = id.abi_version.load(Ordering::Relaxed);
        if version != ABI_VERSION {
            return Err(HeaderError::VersionMismatch {
                found: version,
                expected: ABI_VERSION,
            });
        }
        if id.header_size.load(Ordering::Relaxed) != HEADER_SIZE as u32 {
            return Err(HeaderError::Impossible {
                reason: "recorded header size differs from this format version's",
            });
        }
        let mut descs = [(0u64, 0u64); 2];
        for (i, (desc, layout)) in id.rings.iter().zip(expected).enumerate() {
            let found = desc.fingerprint.load(Ordering::Relaxed);
            if found != layout.fingerprint() {
                return Err(HeaderError::LayoutMismatch {
                    direction: if i == 0 {
                        Direction::AToB
                    } else {
                        Direction::BToA
                    },
                    found,
                    expected: layout.fingerprint(),
                    found_shape: (
                        desc.capacity.load(Ordering::Relaxed),
                        desc.lanes.load(Ordering::Relaxed),
                    ),
                    expected_shape: (layout.capacity, layout.block_spread),
                });
            }
            descs[i] = (
                desc.offset.load(Ordering::Relaxed),
                desc.size.load(Ordering::Relaxed),
            );
        }
        let total = id.total_size.load(Ordering::Relaxed);
        if file_len < total {
            return Err(HeaderError::Truncated {
                recorded: total,
                actual: file_len,
            });
        }
        if file_len > total {
            return Err(HeaderError::SizeMismatch {
                recorded: total,
                actual: file_len,
            });
        }
        let mut placements = [RingPlacement { offset: 0, size: 0 }; 2];
        for (i, (&(offset, size), layout)) in descs.iter().zip(expected).enumerate() {
            if *layout == ABSENT_RING {
                // Matched fingerprints: the creator recorded the ring as absent too.
                if (offset, size) != (0, 0) {
                    return Err(HeaderError::Impossible {
                        reason: "an absent ring has a recorded place",
                    });
                }
                continue;
            }
            if size != u64::from(layout.total_size) {
                return Err(HeaderError::Impossible {
                    reason: "recorded ring size does not match the ring's layout",
                });
            }
            if offset % RING_ALIGN != 0 {
                return Err(HeaderError::Impossible {
                    reason: "ring offset is not 128-byte aligned",
                });
            }
            if offset < HEADER_SIZE as u64 {
                return Err(HeaderError::Impossible {
                    reason: "ring overlaps the segment header",
                });
            }
            match offset.checked_add(size) {
                Some(end) if end <= total => {}
                _ => {
                    return Err(HeaderError::Impossible {
                        reason: "ring runs past the end of the segment",
                    })
                }
            }
            // In bounds of a file we mapped, so both fit in usize.
            let (Ok(offset), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
                return Err(HeaderError::Impossible {
                    reason: "ring offset does not fit in memory",
                });
            };
            placements[i] = RingPlacement { offset, size };
        }
        let [a, b] = placements;
        if a.size != 0
            && b.size != 0
            && a.offset < b.offset + b.size
            && b.offset < a.offset + a.size
        {
            return Err(HeaderError::Impossible {
                reason: "the two rings overlap",
            });
        }
        Ok(placements)
    }

    /// The process id holding `end` (0 when nobody does).
    pub fn owner_pid(&self, end: End) -> u32 {
        self.liveness[end.index()].owner_pid.load(Ordering::Acquire)
    }

    /// How many times `end` has been attached since the segment was created: a restart of that
    /// end shows as an increase.
    pub fn attach_count(&self, end: End) -> u32 {
        self.liveness[end.index()]
            .attach_count
            .load(Ordering::Acquire)
    }

    /// The last heartbeat `end` recorded (a timestamp in the unit its owner chose; 0 if none).
    pub fn heartbeat(&self, end: End) -> u64 {
        self.liveness[end.index()].heartbeat.load(Ordering::Acquire)
    }

    /// The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`) of the process
    /// recorded as holding `end`; 0 when unknown. Together with
    /// [`owner_pid`](Self::owner_pid) it names one process: a different start time under the same
    /// pid is a later process that was given that pid.
    pub fn owner_start(&self, end: End) -> u64 {
        self.liveness[end.index()]
            .owner_start
            .load(Ordering::Acquire)
    }

    /// `end`'s owner record as one consistent (pid, start time) pair: the start time is read
    /// before and after the pid and the read repeats until both agree, and an attaching process
    /// zeroes the start time before it changes the pid, so a new pid is never paired with its
    /// predecessor's start time (at worst with 0, unknown).
    pub fn owner(&self, end: End) -> (u32, u64) {
        let live = &self.liveness[end.index()];
        loop {
            let before = live.owner_start.load(Ordering::Acquire);
            let pid = live.owner_pid.load(Ordering::Acquire);
            if live.owner_start.load(Ordering::Acquire) == before {
                return (pid, before);
            }
        }
    }

    /// Records that process (`pid`, `start`) now holds `end`.
    pub(crate) fn mark_attached(&self, end: End, pid: u32, start: u64) {
        let live = &self.liveness[end.index()];
        // Unknown first, so nobody pairs the new pid with the old start time (see `owner`).
        live.owner_start.store(0, Ordering::Release);
        live.owner_pid.store(pid, Ordering::Release);
        live.owner_start.store(start, Ordering::Release);
        live.attach_count.fetch_add(1, Ordering::AcqRel);
    }

    /// Replaces `end`'s recorded owner start time `current` with `new`, if it is still `current`:
    /// the step that makes one process, among all that found the same dead owner recorded, the
    /// only one to take the end over (see `Claimant` in the channel module). Returns whether it
    /// did.
    pub(crate) fn swap_owner_start(&self, end: End, current: u64, new: u64) -> bool {
        self.liveness[end.index()]
            .owner_start
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Clears `end`'s owner if it is still `pid`.
    pub(crate) fn mark_detached(&self, end: End, pid: u32) {
        let _ = self.liveness[end.index()].owner_pid.compare_exchange(
            pid,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Records a heartbeat of `end`.
    pub(crate) fn set_heartbeat(&self, end: End, now: u64) {
        self.liveness[end.index()]
            .heartbeat
            .store(now, Ordering::Release);
    }

    pub(crate) fn send_counters(&self, direction: Direction) -> &SendCounters {
        &self.send_counters[direction.index()]
    }

    pub(crate) fn recv_counters(&self, direction: Direction) -> &RecvCounters {
        &self.recv_counters[direction.index()]
    }

    /// A snapshot of one direction's counters; reading never disturbs either side's hot path
    /// more than a cache-line transfer of the counter lines.
    pub fn stats(&self, direction: Direction) -> DirectionStats {
        let send = self.send_counters(direction);
        let recv = self.recv_counters(direction);
        DirectionStats {
            sent_messages: send.messages.load(Ordering::Relaxed),
            sent_bytes: send.bytes.load(Ordering::Relaxed),
            full_rejections: send.full_rejections.load(Ordering::Relaxed),
            high_water_bytes: send.high_water_bytes.load(Ordering::Relaxed),
            received_messages: recv.messages.load(Ordering::Relaxed),
            received_bytes: recv.bytes.load(Ordering::Relaxed),
        }
    }

    /// The session generation upper layers keep here.
    pub fn session_generation(&self) -> u64 {
        self.session.generation.load(Ordering::Acquire)
    }

    /// Sets the session generation (upper layers).
    pub fn set_session_generation(&self, generation: u64) {
        self.session.generation.store(generation, Ordering::Release);
    }

    /// One of the 62 words of the session area free for upper layers; `None` past the last.
    pub fn user_word(&self, index: usize) -> Option<&AtomicU64> {
        self.session.user.get(index)
    }

    /// Records `end`'s name (creator, while initialising; later writers must make sure nobody
    /// reads concurrently, as a reader may otherwise see a mix of two names and reject it). The
    /// length is stored last, so a writer killed half-way leaves a name that reads as invalid
    /// or as the old one's length over new bytes, which [`end_name`](Self::end_name)'s checks
    /// catch only if the mix is not itself a valid name: upper layers that rewrite a name after
    /// creation must tolerate that.
    pub fn set_end_name(&self, end: End, name: &SegmentName) {
        let bytes = name.as_str().as_bytes();
        let words = &self.session.names[end.index()];
        for (word, chunk) in words.iter().zip(bytes.chunks(8)) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(buf), Ordering::Relaxed);
        }
        self.session.name_lens[end.index()].store(bytes.len() as u32, Ordering::Release);
    }

    /// `end`'s name as recorded by the creator, if any, validated like any name that comes from
    /// another process (`None` when absent or invalid).
    pub fn end_name(&self, end: End) -> Option<SegmentName> {
        let len = self.session.name_lens[end.index()].load(Ordering::Acquire) as usize;
        if len == 0 || len > MAX_NAME_LEN {
            return None;
        }
        let mut bytes = [0u8; NAME_WORDS * 8];
        for (word, chunk) in self.session.names[end.index()]
            .iter()
            .zip(bytes.chunks_mut(8))
        {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        let text = core::str::from_utf8(&bytes[..len]).ok()?;
        SegmentName::new(text).ok()
    }

    /// The park/wake words of `direction`.
    pub(crate) fn wait_cell(&self, direction: Direction) -> &WaitCell {
        &self.wait[direction.index()].cell
    }

    /// A snapshot of `direction`'s park/wake words: how often its receiver prepared to sleep and
    /// its sender woke it, and whether it may block now.
    pub fn wait_stats(&self, direction: Direction) -> WaitStats {
        self.wait_cell(direction).stats()
    }

    /// The words a sender of `direction` blocked on a full ring parks on.
    pub(crate) fn space_cell(&self, direction: Direction) -> &WaitCell {
        &self.wait[direction.index()].space
    }

    /// A snapshot of the words `direction`'s sender parks on while its ring is full
    /// ([`Sender::alloc_wait`](crate::Sender::alloc_wait)): how often it prepared to sleep, how
    /// often the receiver woke it, and whether it may block now.
    pub fn space_wait_stats(&self, direction: Direction) -> WaitStats {
        self.space_cell(direction).stats()
    }
}
