//! [`MessageRing`]: variable-length messages, written and read in place, in a byte buffer of
//! `C` bytes.
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
//! # Largest message
//!
//! A record of up to `C / 2` bytes fits in an *empty* ring wherever the positions stand (padding
//! to the end included), so the largest payload is `C / 2 - 8`. That keeps the two errors
//! distinct: `TooLarge` means never, and `Full` means the receiver holds unpopped messages.

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
const HEADER: u32 = 8;
const PUBLISHED: u32 = 1;
const PADDING: u32 = 2;
/// The low half of the commit word holds flags; any other bit set there is corruption.
const FLAG_BITS: u32 = 0xFFFF;

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
/// [`MAX_PAYLOAD`](Self::MAX_PAYLOAD) `= C / 2 - 8`, which an empty ring always accepts. Messages are contiguous and their payloads
/// 8-byte aligned. The handles implement the crate's [`MessageSender`] and [`MessageReceiver`]
/// traits.
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
/// A capacity below 64 bytes, or not a power of two, does not compile:
///
/// ```compile_fail
/// let ring = spsc_core::MessageRing::<100>::new();
/// ```
#[repr(C)]
pub struct MessageRing<const C: usize> {
    control: CachePadded<RingControl>,
    /// Byte position of the next record the consumer reads; written only by the consumer.
    pub(crate) head: CachePadded<AtomicU32>,
    pub(crate) buf: Buffer<C>,
    #[cfg(loom)]
    loom: LoomShadow<C>,
}

// SAFETY: the buffer is accessed by the producer only in the region it owns (between its tail and
// the consumer's head plus C) and by the consumer only in published records, as the protocol in
// the module docs guarantees; all other shared state is atomic. Payloads are plain bytes.
unsafe impl<const C: usize> Sync for MessageRing<C> {}

impl<const C: usize> MessageRing<C> {
    /// Evaluated by every constructor, so a bad `C` is a compile-time error.
    const VALID: () = assert!(
        C.is_power_of_two() && C >= 64 && C <= 1 << 31,
        "MessageRing capacity C must be a power of two from 64 to 2^31 bytes"
    );

    const MASK: u32 = (C as u32).wrapping_sub(1);

    /// The largest payload a message can have: `C / 2 - 8`, the most an empty ring accepts
    /// wherever its positions stand (module docs).
    pub const MAX_PAYLOAD: u32 = (C as u32 / 2).wrapping_sub(HEADER);

    /// The layout this type has in memory, as recorded in its header.
    pub const LAYOUT: RingLayout = RingLayout {
        version: crate::layout::RING_FORMAT_VERSION,
        kind: RingKind::Message as u32,
        capacity: C as u32,
        elem_size: HEADER,
        elem_align: HEADER,
        block_len: 1,
        block_size: HEADER,
        block_spread: 1,
        data_offset: mem::offset_of!(Self, buf) as u32,
        total_size: mem::size_of::<Self>() as u32,
    };

    /// Creates an empty ring. `const`, so a ring can be a `static`.
    ///
    /// The ring is `C` bytes plus 384 bytes of header inline: box it (or use
    /// [`init_in_place`](Self::init_in_place)) when that is large.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            head: CachePadded(AtomicU32::new(0)),
            buf: Buffer(core::cell::UnsafeCell::new([0; C])),
        }
    }

    /// Creates an empty ring (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            head: CachePadded(AtomicU32::new(0)),
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
            core::ptr::addr_of_mut!((*ring).head).write(CachePadded(AtomicU32::new(0)));
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
    /// [`AttachError::LayoutMismatch`] for another capacity or format version, and
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
        if !ring.head.load(Ordering::Acquire).is_multiple_of(HEADER) {
            return Err(AttachError::Corrupt {
                reason: "consumer index is not 8-byte aligned",
            });
        }
        Ok(ring)
    }

    /// Splits the ring into its producer and consumer. Claims left by leaked handles are cleared
    /// first: the `&mut` borrow proves no other handle exists.
    ///
    /// # Panics
    /// Only if the ring's records are corrupt, which safe code cannot cause (rings attached from
    /// shared memory are used through [`claim_producer`](Self::claim_producer) instead).
    pub fn split(&mut self) -> (MessageProducer<'_, C>, MessageConsumer<'_, C>) {
        self.control.0.reset_owners();
        let ring: &Self = self;
        let owner = NonZeroU32::MIN;
        match (ring.claim_producer(owner), ring.claim_consumer(owner)) {
            (Ok(producer), Ok(consumer)) => (producer, consumer),
            (Err(error), _) | (_, Err(error)) => panic!("MessageRing::split: {error}"),
        }
    }

    /// Claims the producer side for `owner` (any non-zero id: a process id for shared-memory
    /// users). The handle continues after the last published record, found by walking the
    /// records from the consumer's index (at most `C / 8` headers).
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the producer side;
    /// [`ClaimError::Corrupt`] if the published records are impossible (the claim is released).
    pub fn claim_producer(&self, owner: NonZeroU32) -> Result<MessageProducer<'_, C>, ClaimError> {
        self.control.claim(Side::Producer, 0, owner)?;
        MessageProducer::attach(self)
    }

    /// Claims the consumer side for `owner`; the handle starts at the oldest unpopped message.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the consumer side;
    /// [`ClaimError::Corrupt`] for an impossible consumer index (the claim is released).
    pub fn claim_consumer(&self, owner: NonZeroU32) -> Result<MessageConsumer<'_, C>, ClaimError> {
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
    ) -> Result<MessageProducer<'_, C>, ClaimError> {
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
    ) -> Result<MessageConsumer<'_, C>, ClaimError> {
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
    fn base(&self) -> *mut u8 {
        self.buf.0.get().cast()
    }

    /// The commit word of the record at `offset` (8-aligned, below `C`).
    #[inline(always)]
    fn commit_word(&self, offset: u32) -> &AtomicU32 {
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

    /// Checks a published record header against the layout. Anything the other process wrote is
    /// untrusted: an error here means it is buggy or hostile, never that we may read past `C`.
    #[inline(always)]
    fn decode(&self, offset: u32, commit: u32) -> Result<Record, &'static str> {
        if commit & FLAG_BITS & !(PUBLISHED | PADDING) != 0 || commit & PUBLISHED == 0 {
            return Err("record header has unknown flag bits");
        }
        let len = self.read_len(offset);
        let room = C as u32 - offset;
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
    fn track_read(&self, _offset: u32, _size: u32) {
        #[cfg(loom)]
        for unit in _offset / HEADER..(_offset + _size) / HEADER {
            self.loom.units[unit as usize].with(|_| ());
        }
    }
}

#[cfg(not(loom))]
impl<const C: usize> Default for MessageRing<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const C: usize> fmt::Debug for MessageRing<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageRing")
            .field("capacity", &C)
            .field("head", &self.head.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The sending side of a [`MessageRing`]; implements [`MessageSender`]. At most one per ring.
pub struct MessageProducer<'a, const C: usize> {
    ring: &'a MessageRing<C>,
    /// Byte position of the next record; the commit word there is 0 (module docs).
    tail: u32,
    /// The consumer's `head` as last read; it only ever lags the real one.
    cached_head: u32,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, const C: usize> MessageProducer<'a, C> {
    /// Recovers the write position after the last published record.
    fn attach(ring: &'a MessageRing<C>) -> Result<Self, ClaimError> {
        let corrupt = |reason| {
            ring.control.release(Side::Producer);
            Err(ClaimError::Corrupt { reason })
        };
        let head = ring.head.load(Ordering::Acquire);
        if !head.is_multiple_of(HEADER) {
            return corrupt("consumer index is not 8-byte aligned");
        }
        let mut tail = head;
        loop {
            let offset = tail & MessageRing::<C>::MASK;
            let commit = ring.commit_word(offset).load(Ordering::Acquire);
            if commit == 0 {
                break;
            }
            let size = match ring.decode(offset, commit) {
                Ok(Record::Padding { size } | Record::Message { size, .. }) => size,
                Err(reason) => return corrupt(reason),
            };
            tail = tail.wrapping_add(size);
            if tail.wrapping_sub(head) > C as u32 - HEADER {
                return corrupt("published records overrun the buffer");
            }
        }
        Ok(Self {
            ring,
            tail,
            cached_head: head,
            _not_sync: PhantomData,
        })
    }

    /// Whether the producer may own every byte before position `end`, reloading the consumer's
    /// index only if the cached one says no.
    #[inline(always)]
    fn fits(&mut self, end: u32) -> Result<bool, SendError> {
        if end.wrapping_sub(self.cached_head) <= C as u32 {
            return Ok(true);
        }
        let head = self.reload_head()?;
        Ok(end.wrapping_sub(head) <= C as u32)
    }

    /// Reads the consumer's index (Acquire: the records it released are free to reuse), checks
    /// it against our own position, and caches it.
    fn reload_head(&mut self) -> Result<u32, SendError> {
        let head = self.ring.head.load(Ordering::Acquire);
        if !head.is_multiple_of(HEADER) || self.tail.wrapping_sub(head) > C as u32 {
            return Err(SendError::Corrupt {
                reason: "consumer published an impossible index",
            });
        }
        self.cached_head = head;
        Ok(head)
    }

    /// Fills the rest of the buffer with a padding record so the next record starts at offset 0.
    fn pad_to_end(&mut self, offset: u32) {
        let ring = self.ring;
        let size = C as u32 - offset;
        ring.track_write(offset, HEADER);
        ring.write_len(offset, size - HEADER);
        ring.commit_word(0).store(0, Ordering::Relaxed);
        ring.commit_word(offset)
            .store(PUBLISHED | PADDING, Ordering::Release);
        self.tail = self.tail.wrapping_add(size);
    }

    /// The wrapping byte position the next record will be written at. Positions only grow (mod
    /// 2³²) and survive a take-over, so layers above can use them for exactly-once bookkeeping:
    /// a message pushed at position `p` is popped once the consumer's
    /// [`position`](MessageConsumer::position) has moved past `p`.
    pub const fn position(&self) -> u32 {
        self.tail
    }

    /// Bytes of records queued and not yet popped, as of the consumer's index when this producer
    /// last read it (an upper bound of the true depth). Cost: a subtraction; no shared memory is
    /// touched, so it is cheap enough to sample on every push.
    pub fn queued_bytes_cached(&self) -> u32 {
        self.tail.wrapping_sub(self.cached_head).min(C as u32)
    }

    /// Bytes of records queued and not yet popped, as of the consumer's latest index. Cost: one
    /// Acquire load of the consumer's index line.
    pub fn queued_bytes(&mut self) -> u32 {
        // An impossible index leaves the cached one in place: the answer stays within bounds.
        let _ = self.reload_head();
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
        if len > MessageRing::<C>::MAX_PAYLOAD {
            return Ok(false);
        }
        let size = record_size(len);
        let offset = self.tail & MessageRing::<C>::MASK;
        // A record that does not fit before the end needs the padding to the end as well.
        let skip = if offset + size > C as u32 {
            C as u32 - offset
        } else {
            0
        };
        self.fits(self.tail.wrapping_add(skip + size + HEADER))
    }
}

impl<'a, const C: usize> MessageSender for MessageProducer<'a, C> {
    type Slot<'s>
        = MessageSlot<'s, 'a, C>
    where
        Self: 's;

    /// Reserves a record. Cost: arithmetic on local indices; the consumer's index is read only
    /// when the cached one says there is no room. Wrapping past the buffer's end publishes a
    /// padding record (invisible to the receiver) even if the message itself then reports `Full`.
    #[inline]
    fn alloc(&mut self, len: u32, tag: u16) -> Result<MessageSlot<'_, 'a, C>, SendError> {
        if len > MessageRing::<C>::MAX_PAYLOAD {
            return Err(SendError::TooLarge {
                len: u64::from(len),
                max: MessageRing::<C>::MAX_PAYLOAD,
            });
        }
        let size = record_size(len);
        let mut offset = self.tail & MessageRing::<C>::MASK;
        if offset + size > C as u32 {
            let lap_start = self.tail.wrapping_add(C as u32 - offset);
            if !self.fits(lap_start.wrapping_add(HEADER))? {
                return Err(SendError::Full);
            }
            self.pad_to_end(offset);
            offset = 0;
        }
        if !self.fits(self.tail.wrapping_add(size + HEADER))? {
            return Err(SendError::Full);
        }
        self.ring.track_write(offset, size);
        Ok(MessageSlot {
            producer: self,
            offset,
            len,
            tag,
        })
    }

    fn max_payload(&self) -> u32 {
        MessageRing::<C>::MAX_PAYLOAD
    }
}

impl<const C: usize> Drop for MessageProducer<'_, C> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Producer);
    }
}

impl<const C: usize> fmt::Debug for MessageProducer<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageProducer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish_non_exhaustive()
    }
}

/// A reserved message of a [`MessageProducer`]: fill [`payload_mut`](SendSlot::payload_mut), then
/// [`push`](SendSlot::push). Dropping it publishes nothing.
pub struct MessageSlot<'s, 'a, const C: usize> {
    producer: &'s mut MessageProducer<'a, C>,
    offset: u32,
    len: u32,
    tag: u16,
}

impl<const C: usize> SendSlot for MessageSlot<'_, '_, C> {
    #[inline(always)]
    fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: `alloc` checked that the record lies inside the buffer and in the region the
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

    /// Publishes the message. Cost: two plain stores and one Release store.
    #[inline]
    fn push(self) {
        let producer = self.producer;
        let ring = producer.ring;
        let size = record_size(self.len);
        ring.write_len(self.offset, self.len);
        let next = producer.tail.wrapping_add(size);
        // Keep the invariant: the commit word at the next write position reads 0 before this
        // record becomes visible (`alloc` reserved those 8 bytes).
        ring.commit_word(next & MessageRing::<C>::MASK)
            .store(0, Ordering::Relaxed);
        ring.track_write(self.offset, size);
        ring.commit_word(self.offset)
            .store(PUBLISHED | (u32::from(self.tag) << 16), Ordering::Release);
        producer.tail = next;
    }
}

impl<const C: usize> fmt::Debug for MessageSlot<'_, '_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSlot")
            .field("len", &self.len)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// The receiving side of a [`MessageRing`]; implements [`MessageReceiver`]. At most one per ring.
pub struct MessageConsumer<'a, const C: usize> {
    ring: &'a MessageRing<C>,
    /// Byte position of the next record; mirrors `ring.head`, which only we write.
    head: u32,
    /// The validated record at `head`, once `front` has seen it.
    front: Option<(u16, u32)>,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, const C: usize> MessageConsumer<'a, C> {
    fn attach(ring: &'a MessageRing<C>) -> Result<Self, ClaimError> {
        let head = ring.head.load(Ordering::Acquire);
        if !head.is_multiple_of(HEADER) {
            ring.control.release(Side::Consumer);
            return Err(ClaimError::Corrupt {
                reason: "consumer index is not 8-byte aligned",
            });
        }
        Ok(Self {
            ring,
            head,
            front: None,
            _not_sync: PhantomData,
        })
    }

    /// Finds and validates the record at `head`, skipping padding.
    #[inline]
    fn load_front(&mut self) -> Result<(u16, u32), RecvError> {
        if let Some(front) = self.front {
            return Ok(front);
        }
        let ring = self.ring;
        loop {
            let offset = self.head & MessageRing::<C>::MASK;
            let commit = ring.commit_word(offset).load(Ordering::Acquire);
            if commit == 0 {
                return Err(RecvError::Empty);
            }
            match ring.decode(offset, commit) {
                Err(reason) => return Err(RecvError::Corrupt { reason }),
                Ok(Record::Padding { size }) => {
                    ring.track_read(offset, HEADER);
                    self.head = self.head.wrapping_add(size);
                    ring.head.store(self.head, Ordering::Release);
                }
                Ok(Record::Message { tag, len, size }) => {
                    ring.track_read(offset, size);
                    self.front = Some((tag, len));
                    return Ok((tag, len));
                }
            }
        }
    }

    /// The wrapping byte position of the next record to read (the oldest unpopped message, or
    /// the padding before it). Every pop moves it past the popped record; see
    /// [`MessageProducer::position`].
    pub const fn position(&self) -> u32 {
        self.head
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

impl<const C: usize> MessageReceiver for MessageConsumer<'_, C> {
    /// Cost: one Acquire load of the commit word (the record's own cache line) and header checks;
    /// repeated calls before `pop` reuse the validated header.
    #[inline]
    fn front(&mut self) -> Result<Message<'_>, RecvError> {
        let (tag, len) = self.load_front()?;
        let offset = self.head & MessageRing::<C>::MASK;
        // SAFETY: `decode` checked the record lies inside the buffer; the producer published it
        // (Acquire on its commit word) and cannot reuse it before `pop` moves `head`, which needs
        // `&mut self` and so ends this borrow first.
        let payload = unsafe {
            core::slice::from_raw_parts(
                self.ring.base().add((offset + HEADER) as usize),
                len as usize,
            )
        };
        Ok(Message::new(tag, payload))
    }

    /// Cost: one Release store of the consumer's own index.
    #[inline]
    fn pop(&mut self) -> Result<(), RecvError> {
        let (_, len) = self.load_front()?;
        let size = record_size(len);
        self.ring
            .track_read(self.head & MessageRing::<C>::MASK, size);
        self.head = self.head.wrapping_add(size);
        self.front = None;
        self.ring.head.store(self.head, Ordering::Release);
        Ok(())
    }
}

impl<const C: usize> Drop for MessageConsumer<'_, C> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Consumer);
    }
}

impl<const C: usize> fmt::Debug for MessageConsumer<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageConsumer")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}
