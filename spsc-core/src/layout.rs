//! The self-description every ring carries at the start of its memory, and the checks made when
//! a handle attaches to memory that another process (or a crashed run) prepared.

use core::fmt;
use core::num::NonZeroU32;

use crate::sync::{AtomicU32, Ordering};

/// `b"SPSC"` read as a little-endian `u32`: the first word of every ring region.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"SPSC");

/// Version of the in-memory format of the rings. Bumped on any change a peer built from older
/// sources would misread; attaching across versions is refused.
pub const RING_FORMAT_VERSION: u32 = 3;

/// Which ring family a region holds.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    /// [`Ring`](crate::Ring): `N` slots of one element type.
    Fixed = 1,
    /// [`MessageRing`](crate::MessageRing): variable-length messages in a byte buffer.
    Message = 2,
    /// [`DenseRing`](crate::DenseRing): `N` elements of one type as a plain array, published
    /// by index.
    Dense = 3,
}

/// The numbers that determine how a ring's bytes are laid out.
///
/// Stored verbatim in the ring's header when it is initialised, compared field by field when a
/// handle attaches, and summarised by [`fingerprint`](Self::fingerprint) for containers (such as a
/// shared-memory segment header) that want to record what they hold in one word.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingLayout {
    /// [`RING_FORMAT_VERSION`] of the code that laid the ring out.
    pub version: u32,
    /// [`RingKind`] as its `u32` discriminant.
    pub kind: u32,
    /// Slots (`Ring`, `DenseRing`) or payload bytes (`MessageRing`).
    pub capacity: u32,
    /// Size of one element (`Ring`, `DenseRing`), or of one message header (`MessageRing`).
    pub elem_size: u32,
    /// Alignment of one element (`Ring`, `DenseRing`), or of every message (`MessageRing`).
    pub elem_align: u32,
    /// Elements per block (`Ring`; every block starts with its `u32` stamp, then the elements,
    /// aligned for their type), or 1 (`DenseRing`, whose elements have no stamp; `MessageRing`).
    pub block_len: u32,
    /// Bytes from one block's start to the next (`Ring`: 64 when several elements share a
    /// cache line, else the stamp and one element), or the message alignment unit
    /// (`MessageRing`), or the element's size (`DenseRing`: a plain array).
    pub block_size: u32,
    /// Regions the blocks are spread over (`Ring` with one-element blocks of 64 bytes or more,
    /// in a ring of more than 16 of them), or 1. With `s` regions of `c / s` blocks
    /// each (`c` blocks in all), block `b` sits at place `(b % s) · (c / s) + b / s`, so
    /// consecutive blocks are never neighbours in memory; 1 means blocks in order. See
    /// [`block_offset`](Self::block_offset). For a `MessageRing`: its lanes `L` (message `k` in
    /// lane `k % L`, each lane `capacity / L` bytes), 1 for one byte ring. Always 1 for a
    /// `DenseRing`.
    pub block_spread: u32,
    /// Offset of the first block or buffer byte from the start of the ring.
    pub data_offset: u32,
    /// Total size of the ring in bytes, header included.
    pub total_size: u32,
}

impl RingLayout {
    /// A 64-bit FNV-1a hash of every field: equal layouts have equal fingerprints, and a segment
    /// header can record it to refuse a peer compiled with other capacities or element types.
    pub const fn fingerprint(&self) -> u64 {
        let fields = [
            self.version,
            self.kind,
            self.capacity,
            self.elem_size,
            self.elem_align,
            self.block_len,
            self.block_size,
            self.block_spread,
            self.data_offset,
            self.total_size,
        ];
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < fields.len() {
            let bytes = fields[i].to_le_bytes();
            let mut j = 0;
            while j < 4 {
                hash ^= bytes[j] as u64;
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                j += 1;
            }
            i += 1;
        }
        hash
    }

    /// Byte offset from the ring's start of block `block` of a `Ring` (its stamp; the elements
    /// follow, aligned for their type), or of element `block` of a `DenseRing`: what a tool
    /// reading a ring's memory from outside needs. Meaningless for a `MessageRing`. Cost: a few integer operations.
    ///
    /// ```
    /// let layout = spsc_core::Ring::<[u8; 64], 1024>::LAYOUT;
    /// assert_eq!(layout.block_spread, 16);
    /// // Block 1 sits in the second of 16 regions of 64 blocks, not next to block 0.
    /// assert_eq!(layout.block_offset(1), layout.data_offset as usize + 64 * 68);
    /// ```
    pub const fn block_offset(&self, block: u32) -> usize {
        let blocks = self.capacity.div_ceil(if self.block_len == 0 {
            1
        } else {
            self.block_len
        });
        let spread = if self.block_spread == 0 {
            1
        } else {
            self.block_spread
        };
        let place = spread_place(block as usize, blocks as usize, spread as usize);
        self.data_offset as usize + place * self.block_size as usize
    }
}

/// Where block `block` of `blocks` sits, in blocks from the first, when they are spread over
/// `spread` regions (which divides `blocks`): region `block % spread`, place `block / spread` in
/// it. The one formula behind both the ring's own addressing and [`RingLayout::block_offset`].
#[inline(always)]
pub(crate) const fn spread_place(block: usize, blocks: usize, spread: usize) -> usize {
    (block % spread) * (blocks / spread) + block / spread
}

/// Why a region could not be initialised as, or attached to as, a ring.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The region's start is not aligned to the ring's alignment (128 bytes).
    Misaligned {
        /// The alignment the ring needs.
        required: usize,
        /// The region's address.
        address: usize,
    },
    /// The region is smaller than the ring.
    TooSmall {
        /// Bytes the ring needs.
        required: usize,
        /// Bytes the region has.
        actual: usize,
    },
    /// The first word is not [`RING_MAGIC`]: this is not a ring, or it was never initialised.
    BadMagic {
        /// The word found.
        found: u32,
    },
    /// The region holds a ring of another format version, kind, capacity or element type.
    LayoutMismatch {
        /// The layout this handle's type describes.
        expected: RingLayout,
        /// The layout recorded in the region.
        found: RingLayout,
    },
    /// The ring's indices or records are impossible for its layout: written by a buggy or hostile
    /// peer, or torn by a crash outside the ring's protocol.
    Corrupt {
        /// Which check failed.
        reason: &'static str,
    },
}

impl core::error::Error for AttachError {}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned { required, address } => write!(
                f,
                "ring region at {address:#x} is not aligned to {required} bytes"
            ),
            Self::TooSmall { required, actual } => write!(
                f,
                "ring region has {actual} bytes but the ring needs {required}"
            ),
            Self::BadMagic { found } => write!(
                f,
                "region does not hold an initialised ring (magic {found:#010x}, expected {RING_MAGIC:#010x})"
            ),
            Self::LayoutMismatch { expected, found } => write!(
                f,
                "region holds a ring of another layout (found {found:?}, expected {expected:?}): \
                 both sides must be built with the same ring type and crate version"
            ),
            Self::Corrupt { reason } => write!(f, "ring region is corrupt: {reason}"),
        }
    }
}

/// Why a producer or consumer handle could not be claimed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Another handle holds that side; `owner` is the id it claimed with (a process id, for
    /// shared-memory users).
    Taken {
        /// The id recorded by the current holder.
        owner: u32,
    },
    /// The ring's shared indices or records are impossible (see [`AttachError::Corrupt`]).
    Corrupt {
        /// Which check failed.
        reason: &'static str,
    },
}

impl core::error::Error for ClaimError {}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Taken { owner } => write!(f, "that side of the ring is held by owner {owner}"),
            Self::Corrupt { reason } => write!(f, "ring is corrupt: {reason}"),
        }
    }
}

/// The first 128 bytes of every ring: what it is, and who holds each side.
///
/// Written once by `init`, read by `attach`; the owner words change only when a handle is
/// claimed or released, never on the data path.
#[repr(C)]
pub(crate) struct RingControl {
    magic: u32,
    layout: RingLayout,
    producer_owner: AtomicU32,
    consumer_owner: AtomicU32,
}

/// Which side of a ring a claim is for.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Producer,
    Consumer,
}

impl RingControl {
    #[cfg(not(loom))]
    pub(crate) const fn new(layout: RingLayout) -> Self {
        Self {
            magic: RING_MAGIC,
            layout,
            producer_owner: AtomicU32::new(0),
            consumer_owner: AtomicU32::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new(layout: RingLayout) -> Self {
        Self {
            magic: RING_MAGIC,
            layout,
            producer_owner: AtomicU32::new(0),
            consumer_owner: AtomicU32::new(0),
        }
    }

    /// Checks that this control block describes exactly `expected`.
    pub(crate) fn validate(&self, expected: &RingLayout) -> Result<(), AttachError> {
        if self.magic != RING_MAGIC {
            return Err(AttachError::BadMagic { found: self.magic });
        }
        if self.layout != *expected {
            return Err(AttachError::LayoutMismatch {
                expected: *expected,
                found: self.layout,
            });
        }
        Ok(())
    }

    fn owner(&self, side: Side) -> &AtomicU32 {
        match side {
            Side::Producer => &self.producer_owner,
            Side::Consumer => &self.consumer_owner,
        }
    }

    /// Records `owner` as the holder of `side` if it was free (or held by `from`).
    ///
    /// Acquire on success pairs with the Release in [`release`](Self::release): the new holder
    /// sees every index the previous holder published.
    pub(crate) fn claim(&self, side: Side, from: u32, owner: NonZeroU32) -> Result<(), ClaimError> {
        self.owner(side)
            .compare_exchange(from, owner.get(), Ordering::Acquire, Ordering::Acquire)
            .map(|_| ())
            .map_err(|owner| ClaimError::Taken { owner })
    }

    /// Frees `side` for the next claim.
    pub(crate) fn release(&self, side: Side) {
        self.owner(side).store(0, Ordering::Release);
    }

    /// The id currently holding `side`, 0 when free.
    pub(crate) fn holder(&self, side: Side) -> u32 {
        self.owner(side).load(Ordering::Acquire)
    }

    /// Forgets both holders: only for callers that own the ring exclusively.
    pub(crate) fn reset_owners(&mut self) {
        self.producer_owner = AtomicU32::new(0);
        self.consumer_owner = AtomicU32::new(0);
    }
}

/// Checks a caller-supplied region's address and size before it is viewed as a `T`.
pub(crate) fn check_region<T>(address: usize, len: usize) -> Result<(), AttachError> {
    let required = core::mem::align_of::<T>();
    if !address.is_multiple_of(required) {
        return Err(AttachError::Misaligned { required, address });
    }
    let size = core::mem::size_of::<T>();
    if len < size {
        return Err(AttachError::TooSmall {
            required: size,
            actual: len,
        });
    }
    Ok(())
}
