//! [`MessageRing`]: variable-length messages, written and read in place, in a byte buffer of
//! `C` bytes, optionally split into `L` lanes.
//!
//! # Record format
//!
//! A message is a *record*: an 8-byte header followed by the payload rounded up to 8 bytes, at an
//! 8-byte aligned offset. The header is two `u32` words: the *commit word* (bit 0 "published",
//! bit 1 "padding", bits 16..32 the tag; 0 means "nothing here yet") and the payload length.
//! A record never wraps: when it does not fit before the end of the buffer, the producer fills
//! the rest with a padding record that the consumer skips.
//!
//! # Protocol
//!
//! Positions are wrapping `u32` byte counters. The consumer polls the commit word at its position
//! (Acquire); the producer writes the payload and length, then stores the commit word (Release),
//! so a hand-off moves the record's own cache lines and nothing else.
//!
//! Old payload bytes could look like a commit word, so the producer keeps one invariant: *the
//! commit word at its write position is 0*. Before publishing a record it zeroes the commit word
//! just past it (and reserves those 8 bytes);
//! because that store precedes the Release of the commit, a consumer that reads the record also
//! sees the zero behind it. The consumer publishes its position in `head` (Release) after every
//! pop; the producer caches it and reloads it only when its cached view says there is no room.
//!
//! # Lanes
//!
//! With `L > 1` the buffer is `L` lanes of `C / L` bytes, each a byte ring of its own (records,
//! padding, commit-word invariant, consumer index), and message `k` goes to lane `k % L`. A
//! message still costs its header plus its payload rounded up to 8, but consecutive messages
//! never share a cache line: a record's neighbours in memory are the messages `L` before and
//! after it. That is what a round trip needs: a hand-off is slow when it moves a line the other
//! side touched one message earlier, which with packed records in one lane is every hand-off.
//! That held for every size on the project's earlier (Zen 1) machine; on its Zen 4 machine it
//! holds for records of a line or more, while 8-byte messages are faster packed in one lane,
//! whose shared line both cores have just held (BENCHMARKS.md has the figures). The price is the
//! largest message, which is set by a lane.
//!
//! The consumer publishes one index word per lane, all on one line. Bit 0 of each holds the
//! parity of the messages popped from that lane (bit 0 of a position is always 0), so a handle
//! that claims a side later finds where the round stands from the words alone: lanes before the
//! next one have seen one more message than the lanes from it on, so the parities change at most
//! once, at the next lane. The producer finds its own next lane the same way, from the parity of
//! the pops plus the messages still queued in each lane.
//!
//! # Largest message
//!
//! A record of up to `C / L / 2` bytes fits in an *empty* lane wherever the positions stand
//! (padding to the end included), so the largest payload is `C / L / 2 - 8`. That keeps the two
//! errors distinct: `TooLarge` means never, and `Full` means the receiver holds unpopped messages.

use core::fmt;
use core::marker::PhantomData;
use core::mem;
use core::num::NonZeroU32;
use core::ptr::NonNull;

use crate::api::{Message, MessageReceiver, MessageSender, RecvError, SendError, SendSlot};
use crate::layout::{
    check_region, AttachError, ClaimError, RingControl, RingKind, RingLayout, Side,
};
use crate::padded::CachePadded;
use crate::sync::{AtomicU32, Ordering};

/// Size of a record header, and the alignment of every record and payload.
pub(crate) const HEADER: u32 = 8;
const PUBLISHED: u32 = 1;
const PADDING: u32 = 2;
/// The low half of the commit word holds flags; any other bit set there is corruption.
const FLAG_BITS: u32 = 0xFFFF;
/// Most lanes a ring may have: their consumer indices share one 64-byte line.
const MAX_LANES: usize = 16;

/// Bytes a record with a payload of `len` bytes occupies (`len` must be at most `MAX_PAYLOAD`).
#[inline(always)]
const fn record_size(len: u32) -> u32 {
    HEADER + ((len + 7) & !7)
}

#[repr(C, align(128))]
pub(crate) struct Buffer<const C: usize>(core::cell::UnsafeCell<[u8; C]>);

/// Loom cannot see atomics made from raw buffer bytes, nor data races on them: under `--cfg
/// loom` the commit words live in a side table of loom atomics, and every access to a record's
/// bytes is also recorded on a loom cell per 8-byte unit, so loom checks the hand-off ordering.
#[cfg(loom)]
struct LoomShadow<const C: usize> {
    commits: [AtomicU32; C],
    units: [loom::cell::UnsafeCell<()>; C],
}

/// A decoded, bounds-checked record header.
#[derive(Clone, Copy)]
enum Record {
    Padding { size: u32 },
    Message { tag: u16, len: u32, size: u32 },
}

/// A single-producer single-consumer queue of variable-length messages in a `C`-byte buffer,
/// usable in place in memory shared by two processes.
///
/// `C` must be a power of two from 64 to 2³¹ (checked at compile time). A message of `len`
/// bytes costs `8 + len` rounded up to 8 bytes; the largest payload is
/// [`MAX_PAYLOAD`](Self::MAX_PAYLOAD) `= C / L / 2 - 8`, which an empty ring always accepts.
/// Messages are contiguous and their payloads 8-byte aligned. The handles implement the crate's
/// [`MessageSender`] and [`MessageReceiver`] traits.
///
/// `L`, the number of lanes (a power of two up to 16, default 1), trades the largest message for
/// round-trip latency: with `L = 16` consecutive messages never share a cache line, and a 64-byte
/// ping-pong took 10–25% less time than with one lane on a Zen 1 machine and 8–14% less on a
/// Zen 4 one, while streaming ran at about 60% and 75–86% of the one-lane rate; on the Zen 4
/// machine 8-byte messages are slower with 16 lanes (module docs, BENCHMARKS.md). Messages stay
/// in order whatever `L` is.
///
/// ```
/// use spsc_core::{MessageReceiver, MessageRing, MessageSender, SendError};
///
/// let mut ring = MessageRing::<256>::new();
/// let (mut tx, mut rx) = ring.split();
/// tx.send(1, b"order #1").unwrap();
/// assert!(matches!(tx.send(1, &[0; 4096]), Err(SendError::TooLarge { .. })));
/// let text = rx.recv_with(|m| m.payload().to_vec()).unwrap();
/// assert_eq!(text, b"order #1");
/// ```
///
/// Sixteen lanes for the lowest latency; each lane holds 4 KiB, so the largest payload is 2 KiB:
///
/// ```
/// use spsc_core::{MessageReceiver, MessageRing, MessageSender};
///
/// type Ring = MessageRing<{ 1 << 16 }, 16>;
/// assert_eq!(Ring::MAX_PAYLOAD, 2048 - 8);
/// let mut ring = Box::new(Ring::new());
/// let (mut tx, mut rx) = ring.split();
/// for i in 0..100u8 {
///     tx.send(7, &[i; 64]).unwrap();
/// }
/// for i in 0..100u8 {
///     assert_eq!(rx.recv_with(|m| m.payload()[0]).unwrap(), i);
/// }
/// ```
///
/// A capacity below 64 bytes, or not a power of two, does not compile:
///
/// ```compile_fail
/// let ring = spsc_core::MessageRing::<100>::new();
/// ```
///
/// Nor do lanes of less than 64 bytes, or more than 16 lanes:
///
/// ```compile_fail
/// let ring = spsc_core::MessageRing::<512, 16>::new();
/// ```
#[repr(C)]
pub struct MessageRing<const C: usize, const L: usize = 1> {
    control: CachePadded<RingControl>,
    /// Per lane: the byte position of the next record the consumer reads, plus (with more than
    /// one lane) the parity of its pops in bit 0; written only by the consumer.
    pub(crate) heads: CachePadded<[AtomicU32; L]>,
    pub(crate) buf: Buffer<C>,
    #[cfg(loom)]
    loom: LoomShadow<C>,
}

// SAFETY: the buffer is accessed by the producer only in the region it owns (between its tail and
// the consumer's head plus C) and by the consumer only in published records, as the protocol in
// the module docs guarantees; all other shared state is atomic. Payloads are plain bytes.
unsafe impl<const C: usize, const L: usize> Sync for MessageRing<C, L> {}

impl<const C: usize, const L: usize> MessageRing<C, L> {
    /// Evaluated by every constructor, so a bad `C` or `L` is a compile-time error.
    const VALID: () = {
        assert!(
            C.is_power_of_two() && C >= 64 && C <= 1 << 31,
            "MessageRing capacity C must be a power of two from 64 to 2^31 bytes"
        );
        assert!(
            L.is_power_of_two() && L <= MAX_LANES && C / L >= 64,
            "MessageRing lanes L must be a power of two from 1 to 16, each of at least 64 bytes"
        );
    };

    /// Bytes in one lane.
    const LANE: u32 = (C / if L == 0 { 1 } else { L }) as u32;
    const LANE_MASK: u32 = Self::LANE.wrapping_sub(1);
    /// Bit 0 of a lane's consumer index: the parity of its pops, kept only when there are lanes
    /// to tell apart (so a one-lane ring's index is its plain position).
    const POP_PARITY: u32 = if L > 1 { 1 } else { 0 };

    /// The number of lanes, `L`.
    pub const LANES: usize = L;

    /// The largest payload a message can have: `C / L / 2 - 8`, the most an empty lane accepts
    /// wherever its positions stand (module docs).
    pub const MAX_PAYLOAD: u32 = (Self::LANE / 2).wrapping_sub(HEADER);

    /// The layout this type has in memory, as recorded in its header.
    pub const LAYOUT: RingLayout = RingLayout {
        version: crate::layout::RING_FORMAT_VERSION,
        kind: RingKind::Message as u32,
        capacity: C as u32,
        elem_size: HEADER,
        elem_align: HEADER,
        block_len: 1,
        block_size: HEADER,
        block_spread: L as u32,
        data_offset: mem::offset_of!(Self, buf) as u32,
        total_size: mem::size_of::<Self>() as u32,
    };

    /// Creates an empty ring. `const`, so a ring can be a `static`.
    ///
    /// The ring is `C` bytes plus 256 bytes of header inline: box it (or use
    /// [`init_in_place`](Self::init_in_place)) when that is large.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            heads: CachePadded([const { AtomicU32::new(0) }; L]),
            buf: Buffer(core::cell::UnsafeCell::new([0; C])),
        }
    }

    /// Creates an empty ring (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            heads: CachePadded(core::array::from_fn(|_| AtomicU32::new(0))),
            buf: Buffer(core::cell::UnsafeCell::new([0; C])),
            loom: LoomShadow {
                commits: core::array::from_fn(|_| AtomicU32::new(0)),
                units: core::array::from_fn(|_| loom::cell::UnsafeCell::new(())),
            },
        }
    }

    /// Initialises an empty ring in the caller's memory (for example a shared-memory mapping)
    /// and returns a reference to it. Cost: writes the header and zeroes the `C`-byte buffer.
    ///
    /// # Errors
    /// [`AttachError::Misaligned`] unless `region` is 128-byte aligned, [`AttachError::TooSmall`]
    /// if `len < size_of::<Self>()`.
    ///
    /// # Safety
    /// `region` must be valid for reads and writes of `len` bytes for `'a`, and nothing else may
    /// access those bytes during the call. Afterwards they may be accessed only through this
    /// crate's handles (in any process that maps them).
    pub unsafe fn init_in_place<'a>(
        region: NonNull<u8>,
        len: usize,
    ) -> Result<&'a Self, AttachError> {
        let () = Self::VALID;
        check_region::<Self>(region.as_ptr() as usize, len)?;
        let ring = region.as_ptr().cast::<Self>();
        // SAFETY: aligned and large enough (checked above), exclusively ours per the caller.
        // Every field is written whole, so no reference to uninitialised memory is formed.
        unsafe {
            core::ptr::addr_of_mut!((*ring).control)
                .write(CachePadded(RingControl::new(Self::LAYOUT)));
            #[cfg(not(loom))]
            core::ptr::addr_of_mut!((*ring).heads)
                .write(CachePadded([const { AtomicU32::new(0) }; L]));
            #[cfg(loom)]
            core::ptr::addr_of_mut!((*ring).heads)
                .write(CachePadded(core::array::from_fn(|_| AtomicU32::new(0))));
            core::ptr::addr_of_mut!((*ring).buf).write_bytes(0, 1);
            #[cfg(loom)]
            core::ptr::addr_of_mut!((*ring).loom).write(LoomShadow {
                commits: core::array::from_fn(|_| AtomicU32::new(0)),
                units: core::array::from_fn(|_| loom::cell::UnsafeCell::new(())),
            });
            Ok(&*ring)
        }
    }

    /// Views memory that [`init_in_place`](Self::init_in_place) initialised (possibly in another
    /// process, at another address) as a ring, after checking its header. The records are
    /// checked lazily: a handle reports an impossible one as an error, never reads out of bounds.
    ///
    /// # Errors
    /// [`AttachError::Misaligned`] / [`AttachError::TooSmall`] for an unusable region,
    /// [`AttachError::BadMagic`] if it was never initialised as a ring,
    /// [`AttachError::LayoutMismatch`] for another capacity, lane count or format version, and
    /// [`AttachError::Corrupt`] for an impossible consumer index.
    ///
    /// # Safety
    /// `region` must be valid for reads and writes of `len` bytes for `'a`, and be accessed by
    /// others only through this crate's handles.
    pub unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        let () = Self::VALID;
        check_region::<Self>(region.as_ptr() as usize, len)?;
        // SAFETY: aligned and large enough (checked above) and valid per the caller; every field
        // is valid for any bit pattern (integers, atomics, bytes).
        let ring = unsafe { &*region.as_ptr().cast::<Self>() };
        ring.control.validate(&Self::LAYOUT)?;
        for lane in 0..L {
            if let Err(reason) = ring.load_head(lane) {
                return Err(AttachError::Corrupt { reason });
            }
        }
        Ok(ring)
    }

    /// Reads lane `lane`'s consumer index (Acquire: the records it released are free to reuse)
    /// and checks its form: a multiple of 8, plus the pop parity in bit 0 with several lanes.
    #[inline(always)]
    fn load_head(&self, lane: usize) -> Result<u32, &'static str> {
        let word = self.heads[lane].load(Ordering::Acquire);
        if word & (HEADER - 1) & !Self::POP_PARITY != 0 {
            return Err("consumer index is not 8-byte aligned");
        }
        Ok(word)
    }

    /// The byte position in a lane's consumer index word.
    #[inline(always)]
    const fn head_position(word: u32) -> u32 {
        word & !Self::POP_PARITY
    }

    /// The offset in its lane of a lane position. Lanes are not turned against each other:
    /// with each lane's positions moved by a further 256 bytes, so that lanes moving in step
    /// would not meet in the same L1 set, a 64-byte round trip measured 1.05–1.11× the floor
    /// instead of 0.85–0.96× (far placement, BENCHMARKS.md).
    #[inline(always)]
    pub(crate) const fn offset_in_lane(position: u32) -> u32 {
        position & Self::LANE_MASK
    }

    /// Where byte `offset` of lane `lane` sits in the buffer.
    #[inline(always)]
    pub(crate) const fn at(lane: usize, offset: u32) -> u32 {
        lane as u32 * Self::LANE + offset
    }

    /// Splits the ring into its producer and consumer. Claims left by leaked handles are cleared
    /// first: the `&mut` borrow proves no other handle exists.
    ///
    /// # Panics
    /// Only if the ring's records are corrupt, which safe code cannot cause (rings attached from
    /// shared memory are used through [`claim_producer`](Self::claim_producer) instead).
    pub fn split(&mut self) -> (MessageProducer<'_, C, L>, MessageConsumer<'_, C, L>) {
        self.control.0.reset_owners();
        let ring: &Self = self;
        let owner = NonZeroU32::MIN;
        match (ring.claim_producer(owner), ring.claim_consumer(owner)) {
            (Ok(producer), Ok(consumer)) => (producer, consumer),
            (Err(error), _) | (_, Err(error)) => panic!("MessageRing::split: {error}"),
        }
    }

    /// Claims the producer side for `owner` (any non-zero id: a process id for shared-memory
    /// users). The handle continues after the last published record, found by walking each
    /// lane's records from the consumer's index (at most `C / 8` headers in all).
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the producer side;
    /// [`ClaimError::Corrupt`] if the published records are impossible (the claim is released).
    pub fn claim_producer(
        &self,
        owner: NonZeroU32,
    ) -> Result<MessageProducer<'_, C, L>, ClaimError> {
        self.control.claim(Side::Producer, 0, owner)?;
        MessageProducer::attach(self)
    }

    /// Claims the consumer side for `owner`; the handle starts at the oldest unpopped message.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the consumer side;
    /// [`ClaimError::Corrupt`] for an impossible consumer index (the claim is released).
    pub fn claim_consumer(
        &self,
        owner: NonZeroU32,
    ) -> Result<MessageConsumer<'_, C, L>, ClaimError> {
        self.control.claim(Side::Consumer, 0, owner)?;
        MessageConsumer::attach(self)
    }

    /// Takes the producer side over from `dead_owner`, a holder that crashed without releasing
    /// its claim. A message it had allocated but not pushed is discarded; every pushed one stays.
    ///
    /// # Errors
    /// As [`claim_producer`](Self::claim_producer); [`ClaimError::Taken`] if the side is not held
    /// by `dead_owner`.
    ///
    /// # Safety
    /// `dead_owner` must never touch the ring again: two live producers corrupt it.
    pub unsafe fn take_over_producer(
        &self,
        dead_owner: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<MessageProducer<'_, C, L>, ClaimError> {
        self.control
            .claim(Side::Producer, dead_owner.get(), owner)?;
        MessageProducer::attach(self)
    }

    /// Takes the consumer side over from `dead_owner`. A message it had read with `front` but not
    /// popped is delivered again; a popped one never is.
    ///
    /// # Errors
    /// As [`claim_consumer`](Self::claim_consumer); [`ClaimError::Taken`] if the side is not held
    /// by `dead_owner`.
    ///
    /// # Safety
    /// `dead_owner` must never touch the ring again: two live consumers corrupt it.
    pub unsafe fn take_over_consumer(
        &self,
        dead_owner: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<MessageConsumer<'_, C, L>, ClaimError> {
        self.control
            .claim(Side::Consumer, dead_owner.get(), owner)?;
        MessageConsumer::attach(self)
    }

    /// The ids holding the producer and consumer sides (0 when free).
    pub fn holders(&self) -> (u32, u32) {
        (
            self.control.holder(Side::Producer),
            self.control.holder(Side::Consumer),
        )
    }

    #[inline(always)]
    pub(crate) fn base(&self) -> *mut u8 {
        self.buf.0.get().cast()
    }

    /// The commit word of the record at `offset` (8-aligned, below `C`).
    #[inline(always)]
    pub(crate) fn commit_word(&self, offset: u32) -> &AtomicU32 {
        debug_assert!(offset < C as u32 && offset.is_multiple_of(HEADER));
        #[cfg(loom)]
        {
            &self.loom.commits[(offset / HEADER) as usize]
        }
        #[cfg(not(loom))]
        // SAFETY: `offset` is inside the buffer and 8-aligned in a 128-aligned buffer, so the
        // pointer is valid and aligned for a u32 living as long as `self`. While a word is a
        // record header both sides access it only atomically; the producer overwrites it with
        // payload bytes only after the consumer has released it (head Release/Acquire).
        unsafe {
            AtomicU32::from_ptr(self.base().add(offset as usize).cast())
        }
    }

    /// Reads the length word of the record at `offset` (8-aligned, below `C`).
    #[inline(always)]
    fn read_len(&self, offset: u32) -> u32 {
        debug_assert!(offset < C as u32 && offset.is_multiple_of(HEADER));
        // SAFETY: `offset + 8 <= C` (aligned offset below a multiple of 8) and 4-aligned. The
        // caller read the record's commit word with Acquire (or owns the record), so the
        // producer's write of this word happened before; it is read once, by value.
        unsafe { self.base().add(offset as usize + 4).cast::<u32>().read() }
    }

    /// Writes the length word of a record the producer owns.
    #[inline(always)]
    fn write_len(&self, offset: u32, len: u32) {
        debug_assert!(offset < C as u32 && offset.is_multiple_of(HEADER));
        // SAFETY: in bounds and aligned as in `read_len`; the producer owns this unpublished
        // record, so no one reads the word concurrently.
        unsafe {
            self.base()
                .add(offset as usize + 4)
                .cast::<u32>()
                .write(len)
        }
    }

    /// Checks a published record header at byte `offset` of lane `lane` against the layout.
    /// Anything the other process wrote is untrusted: an error here means it is buggy or hostile,
    /// never that we may read past the lane.
    #[inline(always)]
    fn decode(&self, lane: usize, offset: u32, commit: u32) -> Result<Record, &'static str> {
        if commit & FLAG_BITS & !(PUBLISHED | PADDING) != 0 || commit & PUBLISHED == 0 {
            return Err("record header has unknown flag bits");
        }
        let len = self.read_len(Self::at(lane, offset));
        let room = Self::LANE - offset;
        if commit & PADDING != 0 {
            if offset == 0 || len != room - HEADER {
                return Err("padding record does not end at the end of the buffer");
            }
            return Ok(Record::Padding { size: room });
        }
        if len > Self::MAX_PAYLOAD || record_size(len) > room {
            return Err("message record runs past the end of the buffer");
        }
        Ok(Record::Message {
            tag: (commit >> 16) as u16,
            len,
            size: record_size(len),
        })
    }

    /// [`decode`](Self::decode) for the read-ahead: whether the record is padding, and its size.
    #[inline(always)]
    pub(crate) fn decode_record(
        &self,
        lane: usize,
        offset: u32,
        commit: u32,
    ) -> Result<(bool, u32), &'static str> {
        Ok(match self.decode(lane, offset, commit)? {
            Record::Padding { size } => (true, size),
            Record::Message { size, .. } => (false, size),
        })
    }

    /// Loom bookkeeping of a write to the record bytes `offset..offset + size`.
    #[inline(always)]
    fn track_write(&self, _offset: u32, _size: u32) {
        #[cfg(loom)]
        for unit in _offset / HEADER..(_offset + _size) / HEADER {
            self.loom.units[unit as usize].with_mut(|_| ());
        }
    }

    /// Loom bookkeeping of a read of the record bytes `offset..offset + size`.
    #[inline(always)]
    pub(crate) fn track_read(&self, _offset: u32, _size: u32) {
        #[cfg(loom)]
        for unit in _offset / HEADER..(_offset + _size) / HEADER {
            self.loom.units[unit as usize].with(|_| ());
        }
    }
}

impl<const C: usize, const L: usize> Default for MessageRing<C, L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const C: usize, const L: usize> fmt::Debug for MessageRing<C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let heads: [u32; L] = core::array::from_fn(|lane| self.heads[lane].load(Ordering::Relaxed));
        f.debug_struct("MessageRing")
            .field("capacity", &C)
            .field("lanes", &L)
            .field("heads", &heads)
            .finish_non_exhaustive()
    }
}

/// Finds the lane a round stands at from one bit per lane, the parity of the messages that went
/// through it. Lanes before the next one have seen one message more than the lanes from it on, so
/// the bits change at most once, and there; any other pattern is corruption.
fn next_lane<const L: usize>(parities: &[u32; L]) -> Result<usize, &'static str> {
    let mut next = 0;
    for lane in 1..L {
        if parities[lane] != parities[lane - 1] {
            if next != 0 {
                return Err("lanes' message counts are out of round-robin order");
            }
            next = lane;
        }
    }
    Ok(next)
}

/// The sending side of a [`MessageRing`]; implements [`MessageSender`]. At most one per ring.
pub struct MessageProducer<'a, const C: usize, const L: usize = 1> {
    ring: &'a MessageRing<C, L>,
    /// The lane the next message goes to (below `L`).
    lane: usize,
    /// Per lane: byte position of the next record; the commit word there is 0 (module docs).
    tails: [u32; L],
    /// Per lane: the consumer's position as last read; it only ever lags the real one.
    cached_heads: [u32; L],
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, const C: usize, const L: usize> MessageProducer<'a, C, L> {
    /// Recovers every lane's write position after its last published record, and the lane the
    /// round stands at; releases the claim if the records are impossible.
    fn attach(ring: &'a MessageRing<C, L>) -> Result<Self, ClaimError> {
        Self::recover(ring).map_err(|reason| {
            ring.control.release(Side::Producer);
            ClaimError::Corrupt { reason }
        })
    }

    fn recover(ring: &'a MessageRing<C, L>) -> Result<Self, &'static str> {
        let mut tails = [0; L];
        let mut cached_heads = [0; L];
        let mut parities = [0; L];
        for lane in 0..L {
            let word = ring.load_head(lane)?;
            let head = MessageRing::<C, L>::head_position(word);
            let mut tail = head;
            let mut messages = 0u32;
            loop {
                let offset = MessageRing::<C, L>::offset_in_lane(tail);
                let commit = ring
                    .commit_word(MessageRing::<C, L>::at(lane, offset))
                    .load(Ordering::Acquire);
                if commit == 0 {
                    break;
                }
                match ring.decode(lane, offset, commit)? {
                    Record::Padding { size } => tail = tail.wrapping_add(size),
                    Record::Message { size, .. } => {
                        tail = tail.wrapping_add(size);
                        messages += 1;
                    }
                }
                if tail.wrapping_sub(head) > MessageRing::<C, L>::LANE - HEADER {
                    return Err("published records overrun the buffer");
                }
            }
            tails[lane] = tail;
            cached_heads[lane] = head;
            // Messages pushed to the lane: those popped (parity in the index) plus those queued.
            parities[lane] = (word ^ messages) & 1;
        }
        Ok(Self {
            ring,
            lane: next_lane(&parities)?,
            tails,
            cached_heads,
            _not_sync: PhantomData,
        })
    }

    /// The lane the next message goes to, masked so the compiler sees every index in bounds.
    #[inline(always)]
    fn lane(&self) -> usize {
        self.lane & L.wrapping_sub(1)
    }

    /// Whether the producer may own every byte of `lane` before position `end`, reloading the
    /// consumer's index only if the cached one says no.
    #[inline(always)]
    fn fits(&mut self, lane: usize, end: u32) -> Result<bool, SendError> {
        if end.wrapping_sub(self.cached_heads[lane]) <= MessageRing::<C, L>::LANE {
            return Ok(true);
        }
        let head = self.reload_head(lane)?;
        Ok(end.wrapping_sub(head) <= MessageRing::<C, L>::LANE)
    }

    /// Reads a lane's consumer index (Acquire: the records it released are free to reuse), checks
    /// it against our own position there, and caches it.
    fn reload_head(&mut self, lane: usize) -> Result<u32, SendError> {
        let corrupt = SendError::Corrupt {
            reason: "consumer published an impossible index",
        };
        let word = self.ring.load_head(lane).map_err(|_| corrupt)?;
        let head = MessageRing::<C, L>::head_position(word);
        if self.tails[lane].wrapping_sub(head) > MessageRing::<C, L>::LANE {
            return Err(corrupt);
        }
        self.cached_heads[lane] = head;
        Ok(head)
    }

    /// Fills the rest of a lane with a padding record so its next record starts at offset 0.
    fn pad_to_end(&mut self, lane: usize, offset: u32) {
        let ring = self.ring;
        let size = MessageRing::<C, L>::LANE - offset;
        let at = MessageRing::<C, L>::at(lane, offset);
        ring.track_write(at, HEADER);
        ring.write_len(at, size - HEADER);
        ring.commit_word(MessageRing::<C, L>::at(lane, 0))
            .store(0, Ordering::Relaxed);
        ring.commit_word(at)
            .store(PUBLISHED | PADDING, Ordering::Release);
        self.tails[lane] = self.tails[lane].wrapping_add(size);
    }

    /// The wrapping byte position the next record will be written at: the sum of the lanes'
    /// positions (with one lane, simply its position), that is every byte of records and padding
    /// written so far. Positions only grow (mod 2³²) and survive a take-over, so layers above can
    /// use them for exactly-once bookkeeping: read just after a `push`, the position marks the end
    /// of that message, and the message has been popped exactly when the consumer's
    /// [`position`](MessageConsumer::position) has reached it. (Read before `alloc`, it can fall
    /// short of the message's start by the padding `alloc` may insert at the end of a lane, and
    /// the consumer's position passes it when it skips that padding, before the pop.) Cost: a sum
    /// over the lanes' local positions.
    pub const fn position(&self) -> u32 {
        let mut sum = 0u32;
        let mut lane = 0;
        while lane < L {
            sum = sum.wrapping_add(self.tails[lane]);
            lane += 1;
        }
        sum
    }

    /// Bytes of records queued and not yet popped, as of the consumer's indices when this
    /// producer last read them (an upper bound of the true depth). Cost: a subtraction per lane;
    /// no shared memory is touched, so it is cheap enough to sample on every push.
    pub fn queued_bytes_cached(&self) -> u32 {
        let mut queued = 0u32;
        for lane in 0..L {
            let in_lane = self.tails[lane].wrapping_sub(self.cached_heads[lane]);
            queued += in_lane.min(MessageRing::<C, L>::LANE);
        }
        queued
    }

    /// Bytes of records queued and not yet popped, as of the consumer's latest indices. Cost: one
    /// Acquire load of the consumer's index line per lane.
    pub fn queued_bytes(&mut self) -> u32 {
        for lane in 0..L {
            // An impossible index leaves the cached one in place: the answer stays within bounds.
            let _ = self.reload_head(lane);
        }
        self.queued_bytes_cached()
    }

    /// The ring's byte capacity, `C`.
    pub const fn capacity(&self) -> usize {
        C
    }

    /// Whether [`alloc`](MessageSender::alloc) of a `len`-byte message would find room now
    /// (`false` too for a message larger than [`MAX_PAYLOAD`](MessageRing::MAX_PAYLOAD)): what a
    /// sender waiting for the receiver to make room checks. Cost: arithmetic, plus one Acquire
    /// load of the consumer's index when the cached one says no.
    ///
    /// # Errors
    /// [`SendError::Corrupt`] if the consumer published an impossible index.
    pub fn has_room(&mut self, len: u32) -> Result<bool, SendError> {
        if len > MessageRing::<C, L>::MAX_PAYLOAD {
            return Ok(false);
        }
        let lane = self.lane();
        let tail = self.tails[lane];
        let size = record_size(len);
        let offset = MessageRing::<C, L>::offset_in_lane(tail);
        // A record that does not fit before the end needs the padding to the end as well.
        let skip = if offset + size > MessageRing::<C, L>::LANE {
            MessageRing::<C, L>::LANE - offset
        } else {
            0
        };
        self.fits(lane, tail.wrapping_add(skip + size + HEADER))
    }
}

impl<'a, const C: usize, const L: usize> MessageSender for MessageProducer<'a, C, L> {
    type Slot<'s>
        = MessageSlot<'s, 'a, C, L>
    where
        Self: 's;

    /// Reserves a record in the next lane. Cost: arithmetic on local indices; the consumer's
    /// index is read only when the cached one says there is no room. Wrapping past the lane's
    /// end publishes a padding record (invisible to the receiver) even if the message itself then
    /// reports `Full`.
    #[inline]
    fn alloc(&mut self, len: u32, tag: u16) -> Result<MessageSlot<'_, 'a, C, L>, SendError> {
        if len > MessageRing::<C, L>::MAX_PAYLOAD {
            return Err(SendError::TooLarge {
                len: u64::from(len),
                max: MessageRing::<C, L>::MAX_PAYLOAD,
            });
        }
        let lane = self.lane();
        let size = record_size(len);
        let mut offset = MessageRing::<C, L>::offset_in_lane(self.tails[lane]);
        if offset + size > MessageRing::<C, L>::LANE {
            let lap_start = self.tails[lane].wrapping_add(MessageRing::<C, L>::LANE - offset);
            if !self.fits(lane, lap_start.wrapping_add(HEADER))? {
                return Err(SendError::Full);
            }
            self.pad_to_end(lane, offset);
            offset = 0;
        }
        if !self.fits(lane, self.tails[lane].wrapping_add(size + HEADER))? {
            return Err(SendError::Full);
        }
        let at = MessageRing::<C, L>::at(lane, offset);
        self.ring.track_write(at, size);
        Ok(MessageSlot {
            producer: self,
            offset: at,
            len,
            tag,
        })
    }

    fn max_payload(&self) -> u32 {
        MessageRing::<C, L>::MAX_PAYLOAD
    }
}

impl<const C: usize, const L: usize> Drop for MessageProducer<'_, C, L> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Producer);
    }
}

impl<const C: usize, const L: usize> fmt::Debug for MessageProducer<'_, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageProducer")
            .field("lane", &self.lane)
            .field("tails", &self.tails)
            .field("cached_heads", &self.cached_heads)
            .finish_non_exhaustive()
    }
}

/// A reserved message of a [`MessageProducer`]: fill [`payload_mut`](SendSlot::payload_mut), then
/// [`push`](SendSlot::push). Dropping it publishes nothing.
pub struct MessageSlot<'s, 'a, const C: usize, const L: usize = 1> {
    producer: &'s mut MessageProducer<'a, C, L>,
    /// Where the record starts in the buffer.
    offset: u32,
    len: u32,
    tag: u16,
}

impl<const C: usize, const L: usize> SendSlot for MessageSlot<'_, '_, C, L> {
    #[inline(always)]
    fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: `alloc` checked that the record lies inside its lane and in the part of it the
        // consumer has released; the record is unpublished and we hold the only producer
        // exclusively, so nobody else accesses these bytes until `push`. Bytes are always
        // initialised (the buffer is zeroed at creation).
        unsafe {
            core::slice::from_raw_parts_mut(
                self.producer
                    .ring
                    .base()
                    .add((self.offset + HEADER) as usize),
                self.len as usize,
            )
        }
    }

    fn tag(&self) -> u16 {
        self.tag
    }

    /// Publishes the message; the next one goes to the next lane. Cost: two plain stores and one
    /// Release store.
    #[inline]
    fn push(self) {
        let producer = self.producer;
        let ring = producer.ring;
        let lane = producer.lane();
        let size = record_size(self.len);
        ring.write_len(self.offset, self.len);
        let next = producer.tails[lane].wrapping_add(size);
        // Keep the invariant: the commit word at the lane's next write position reads 0 before
        // this record becomes visible (`alloc` reserved those 8 bytes).
        let successor = MessageRing::<C, L>::at(lane, MessageRing::<C, L>::offset_in_lane(next));
        ring.commit_word(successor).store(0, Ordering::Relaxed);
        ring.track_write(self.offset, size);
        ring.commit_word(self.offset)
            .store(PUBLISHED | (u32::from(self.tag) << 16), Ordering::Release);
        producer.tails[lane] = next;
        producer.lane = (lane + 1) & L.wrapping_sub(1);
    }
}

impl<const C: usize, const L: usize> fmt::Debug for MessageSlot<'_, '_, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSlot")
            .field("len", &self.len)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// The receiving side of a [`MessageRing`]; implements [`MessageReceiver`]. At most one per ring.
pub struct MessageConsumer<'a, const C: usize, const L: usize = 1> {
    pub(crate) ring: &'a MessageRing<C, L>,
    /// The lane the next message comes from (below `L`).
    lane: usize,
    /// Per lane: the index word (position, and pop parity with several lanes); mirrors
    /// `ring.heads`, which only we write.
    pub(crate) heads: [u32; L],
    /// The validated record at the lane's head, once `front` has seen it.
    pub(crate) front: Option<(u16, u32)>,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, const C: usize, const L: usize> MessageConsumer<'a, C, L> {
    /// Reads every lane's index and finds the lane the round stands at; releases the claim if
    /// they are impossible.
    fn attach(ring: &'a MessageRing<C, L>) -> Result<Self, ClaimError> {
        let recover = || -> Result<Self, &'static str> {
            let mut heads = [0; L];
            let mut parities = [0; L];
            for lane in 0..L {
                heads[lane] = ring.load_head(lane)?;
                parities[lane] = heads[lane] & MessageRing::<C, L>::POP_PARITY;
            }
            Ok(Self {
                ring,
                lane: next_lane(&parities)?,
                heads,
                front: None,
                _not_sync: PhantomData,
            })
        };
        recover().map_err(|reason| {
            ring.control.release(Side::Consumer);
            ClaimError::Corrupt { reason }
        })
    }

    /// The lane the next message comes from, masked so the compiler sees every index in bounds.
    #[inline(always)]
    fn lane(&self) -> usize {
        self.lane & L.wrapping_sub(1)
    }

    /// The offset in lane `lane` of the record at its head.
    #[inline(always)]
    fn head_offset_in_lane(&self, lane: usize) -> u32 {
        MessageRing::<C, L>::offset_in_lane(MessageRing::<C, L>::head_position(self.heads[lane]))
    }

    /// Where the record at lane `lane`'s head starts in the buffer.
    #[inline(always)]
    fn head_offset(&self, lane: usize) -> u32 {
        MessageRing::<C, L>::at(lane, self.head_offset_in_lane(lane))
    }

    /// Finds and validates the record at the current lane's head, skipping padding.
    #[inline]
    fn load_front(&mut self) -> Result<(u16, u32), RecvError> {
        if let Some(front) = self.front {
            return Ok(front);
        }
        let ring = self.ring;
        let lane = self.lane();
        loop {
            let offset = self.head_offset_in_lane(lane);
            let at = MessageRing::<C, L>::at(lane, offset);
            let commit = ring.commit_word(at).load(Ordering::Acquire);
            if commit == 0 {
                return Err(RecvError::Empty);
            }
            match ring.decode(lane, offset, commit) {
                Err(reason) => return Err(RecvError::Corrupt { reason }),
                Ok(Record::Padding { size }) => {
                    ring.track_read(at, HEADER);
                    self.heads[lane] = self.heads[lane].wrapping_add(size);
                    ring.heads[lane].store(self.heads[lane], Ordering::Release);
                }
                Ok(Record::Message { tag, len, size }) => {
                    ring.track_read(at, size);
                    self.front = Some((tag, len));
                    return Ok((tag, len));
                }
            }
        }
    }

    /// The wrapping byte position of the next record to read: the sum of the lanes' positions
    /// (with one lane, simply its position). Every pop moves it past the popped record; see
    /// [`MessageProducer::position`]. Cost: a sum over the lanes' local positions.
    pub const fn position(&self) -> u32 {
        let mut sum = 0u32;
        let mut lane = 0;
        while lane < L {
            sum = sum.wrapping_add(MessageRing::<C, L>::head_position(self.heads[lane]));
            lane += 1;
        }
        sum
    }

    /// The address of the ring this consumer reads, telling rings apart.
    pub(crate) fn ring_address(&self) -> usize {
        core::ptr::from_ref(self.ring) as usize
    }

    /// `true` if there is no message to read right now.
    pub fn is_empty(&mut self) -> bool {
        matches!(self.load_front(), Err(RecvError::Empty))
    }

    /// The ring's byte capacity, `C`.
    pub const fn capacity(&self) -> usize {
        C
    }
}

impl<const C: usize, const L: usize> MessageReceiver for MessageConsumer<'_, C, L> {
    /// Cost: one Acquire load of the commit word (the record's own cache line) and header checks;
    /// repeated calls before `pop` reuse the validated header.
    #[inline]
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        let (tag, len) = self.load_front()?;
        let at = self.head_offset(self.lane());
        // SAFETY: `decode` checked the record lies inside its lane; the producer published it
        // (Acquire on its commit word) and cannot reuse it before `pop` moves the lane's head,
        // which needs `&mut self` and so ends this borrow first.
        let payload = unsafe {
            core::slice::from_raw_parts(self.ring.base().add((at + HEADER) as usize), len as usize)
        };
        Ok(Message::new(tag, payload))
    }

    /// Cost: one Release store of the lane's index, on the consumer's own line.
    #[inline]
    fn pop(&mut self) -> Result<(), RecvError> {
        let (_, len) = self.load_front()?;
        let lane = self.lane();
        let size = record_size(len);
        self.ring.track_read(self.head_offset(lane), size);
        let next = self.heads[lane].wrapping_add(size) ^ MessageRing::<C, L>::POP_PARITY;
        self.heads[lane] = next;
        self.lane = (lane + 1) & L.wrapping_sub(1);
        self.front = None;
        self.ring.heads[lane].store(next, Ordering::Release);
        Ok(())
    }
}

impl<const C: usize, const L: usize> Drop for MessageConsumer<'_, C, L> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Consumer);
    }
}

impl<const C: usize, const L: usize> fmt::Debug for MessageConsumer<'_, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageConsumer")
            .field("lane", &self.lane)
            .field("heads", &self.heads)
            .finish_non_exhaustive()
    }
}
