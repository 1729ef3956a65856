//! [`DenseRing`]: a fixed-capacity SPSC ring of `N` elements of type `T` stored as a plain
//! array and published by index, for batch streaming.
//!
//! # Protocol
//!
//! Positions are `u32` counters that wrap; the element at position `p` lives at index `p % N`.
//! Two shared words, each on its own pair of cache lines: `tail`, one past the last position
//! the producer published (stored with Release after the values are written), and `head`, the
//! next position the consumer will read (stored with Release after the values are read). The
//! consumer may read positions in `head..tail`; the producer may write positions in
//! `tail..head + N`. Each side caches the other's word and reloads it (Acquire) only when its
//! cached view has too few elements or too little room for the operation at hand, so in steady
//! streaming each side touches the other's line about once per batch.
//!
//! This is the classic two-index design (rtrb's, for one). Against [`Ring`](crate::Ring), whose
//! elements carry their own publication stamps, it trades latency for density: a hand-off moves
//! the index line and the element's line (two lines, where `Ring` moves one), but the elements are
//! packed exactly as an array — no stamp word in any line — so a batch copies `N · size_of::<T>()`
//! bytes and nothing else, and a read chunk is two plain slices.
//!
//! Both words are the whole shared state, so a side re-attaching after a restart reads its own
//! word back and carries on; claims check that the two words are at most `N` apart.

use core::fmt;
use core::marker::PhantomData;
use core::mem;
use core::num::NonZeroU32;
#[cfg(not(loom))]
use core::ptr::NonNull;

#[cfg(not(loom))]
use crate::layout::{check_region, AttachError};
use crate::layout::{ClaimError, RingControl, RingKind, RingLayout, Side};
use crate::padded::CachePadded;
use crate::ring::Full;
use crate::sync::{AtomicU32, Ordering};

/// A single-producer single-consumer ring of `N` values of type `T`, stored as a plain array and
/// published by index: the ring for streaming in batches.
///
/// Pick it over [`Ring`](crate::Ring) when throughput in batches matters more than the latency
/// of one hand-off: its elements are packed with no per-line stamp, so a batch of `[u8; 64]`
/// moves 64 bytes per element instead of a 68-byte block, and its chunks are slices both ways
/// ([`DenseWriteChunk::as_mut_slices`], [`DenseReadChunk::as_slices`]). A single hand-off moves
/// two cache lines (the index and the element) where `Ring` moves one, so its ping-pong round
/// trip is about that of `rtrb` (see the crate's README for figures).
///
/// `N` must be a non-zero power of two no larger than 2³¹; anything else fails to compile. The
/// ring is `#[repr(C)]`, holds no pointers, and starts with a header ([`RingLayout`], kind
/// [`RingKind::Dense`]) that [`attach`](Self::attach) checks, so it can live in memory shared
/// by two processes like the other rings.
///
/// Costs: a `push` or `pop` is a value copy and one Release store of the side's own index; the
/// other side's index is read only when the cached view says full (or empty). A batch is at most
/// two `memcpy`s and one index store. No allocation, no system call. Memory: the 384-byte header
/// and indices, then exactly `N · size_of::<T>()` bytes (the whole rounded up to 128).
///
/// ```
/// use spsc_core::DenseRing;
///
/// let mut ring = DenseRing::<u64, 8>::new();
/// let (mut tx, mut rx) = ring.split();
/// assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
/// let mut out = [0; 4];
/// assert_eq!(rx.pop_slice(&mut out), 3);
/// assert_eq!(out[..3], [1, 2, 3]);
/// ```
///
/// A capacity that is not a power of two does not compile:
///
/// ```compile_fail
/// let ring = spsc_core::DenseRing::<u64, 6>::new();
/// ```
#[repr(C)]
pub struct DenseRing<T, const N: usize> {
    control: CachePadded<RingControl>,
    /// Position of the next element the consumer will read; written only by the consumer.
    pub(crate) head: CachePadded<AtomicU32>,
    /// One past the last position the producer published; written only by the producer.
    pub(crate) tail: CachePadded<AtomicU32>,
    pub(crate) slots: Slots<T, N>,
}

// SAFETY: the ring hands a `T` from the producer's thread to the consumer's, so `T: Send` is
// needed and sufficient; every slot is accessed by one side at a time, as the head/tail protocol
// (module docs) guarantees, and all other shared state is atomic.
unsafe impl<T: Send, const N: usize> Sync for DenseRing<T, N> {}

impl<T, const N: usize> DenseRing<T, N> {
    /// Evaluated by every constructor, so a bad `N` is a compile-time error.
    const VALID: () = {
        assert!(
            N.is_power_of_two() && N <= 1 << 31,
            "DenseRing capacity N must be a non-zero power of two no larger than 2^31"
        );
        assert!(
            mem::size_of::<Self>() <= u32::MAX as usize,
            "DenseRing<T, N> must be smaller than 4 GiB"
        );
    };

    const MASK: u32 = (N as u32).wrapping_sub(1);

    /// The layout this type has in memory, as recorded in its header: one-element blocks of
    /// `size_of::<T>()` bytes in order, so [`RingLayout::block_offset`] gives each slot.
    pub const LAYOUT: RingLayout = RingLayout {
        version: crate::layout::RING_FORMAT_VERSION,
        kind: RingKind::Dense as u32,
        capacity: N as u32,
        elem_size: mem::size_of::<T>() as u32,
        elem_align: mem::align_of::<T>() as u32,
        block_len: 1,
        block_size: mem::size_of::<T>() as u32,
        block_spread: 1,
        data_offset: mem::offset_of!(Self, slots) as u32,
        total_size: mem::size_of::<Self>() as u32,
    };

    /// The number of elements the ring holds when full.
    pub const CAPACITY: usize = N;

    /// Creates an empty ring. `const`, so a ring can be a `static` (claim its sides with
    /// [`claim_producer`](Self::claim_producer) and [`claim_consumer`](Self::claim_consumer)).
    ///
    /// The ring is `size_of::<DenseRing<T, N>>()` bytes inline: box it (or use
    /// [`init_in_place`](Self::init_in_place)) when that is large.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            head: CachePadded(AtomicU32::new(0)),
            tail: CachePadded(AtomicU32::new(0)),
            slots: Slots::new(),
        }
    }

    /// Creates an empty ring (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            head: CachePadded(AtomicU32::new(0)),
            tail: CachePadded(AtomicU32::new(0)),
            slots: Slots::new(),
        }
    }

    /// Initialises an empty ring in the caller's memory (for example a shared-memory mapping)
    /// and returns a reference to it. Any ring previously there is discarded without dropping
    /// its elements. Cost: writes the 384-byte header and indices; the slots are not touched.
    ///
    /// # Errors
    /// [`AttachError::Misaligned`] unless `region` is aligned to `align_of::<Self>()` (128), and
    /// [`AttachError::TooSmall`] if `len < size_of::<Self>()`.
    ///
    /// # Safety
    /// `region` must be valid for reads and writes of `len` bytes for `'a`, and nothing else may
    /// access those bytes during the call. Afterwards they may be accessed only through this
    /// crate's handles (in any process that maps them).
    #[cfg(not(loom))]
    pub unsafe fn init_in_place<'a>(
        region: NonNull<u8>,
        len: usize,
    ) -> Result<&'a Self, AttachError> {
        let () = Self::VALID;
        check_region::<Self>(region.as_ptr() as usize, len)?;
        let ring = region.as_ptr().cast::<Self>();
        // SAFETY: `check_region` proved `ring` aligned and the region large enough; the caller
        // promises exclusive access to valid memory. Each field is written with `ptr::write`,
        // so no reference to uninitialised memory is formed; the slots are `MaybeUninit`
        // inside an `UnsafeCell`, valid for any bytes, so they need no writing.
        unsafe {
            core::ptr::addr_of_mut!((*ring).control)
                .write(CachePadded(RingControl::new(Self::LAYOUT)));
            core::ptr::addr_of_mut!((*ring).head).write(CachePadded(AtomicU32::new(0)));
            core::ptr::addr_of_mut!((*ring).tail).write(CachePadded(AtomicU32::new(0)));
            Ok(&*ring)
        }
    }

    /// Views memory that [`init_in_place`](Self::init_in_place) initialised (possibly in
    /// another process, at another address) as a ring, after checking its header.
    ///
    /// Cost: reads the 128-byte header; the indices are checked when a side is claimed.
    ///
    /// # Errors
    /// [`AttachError::Misaligned`] / [`AttachError::TooSmall`] for an unusable region,
    /// [`AttachError::BadMagic`] if it was never initialised as a ring, and
    /// [`AttachError::LayoutMismatch`] if it holds a ring of another kind, capacity, element
    /// type or format version.
    ///
    /// # Safety
    /// `region` must be valid for reads and writes of `len` bytes for `'a`, and be accessed by
    /// others only through this crate's handles. Because the values are read as `T`, every bit
    /// pattern the other side can leave in a slot must be a valid `T`: use plain-old-data
    /// element types for rings shared with code you do not control.
    #[cfg(not(loom))]
    pub unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        let () = Self::VALID;
        check_region::<Self>(region.as_ptr() as usize, len)?;
        // SAFETY: aligned and large enough (checked above) and valid per the caller. Every field
        // of `DenseRing` is valid for any bit pattern (integers, atomics, `MaybeUninit`), so
        // viewing arbitrary bytes through this reference is sound before validation.
        let ring = unsafe { &*region.as_ptr().cast::<Self>() };
        ring.control.validate(&Self::LAYOUT)?;
        Ok(ring)
    }

    /// Splits the ring into its producer and consumer. Any claims left by leaked handles are
    /// cleared first: the `&mut` borrow proves no other handle exists.
    pub fn split(&mut self) -> (DenseProducer<'_, T, N>, DenseConsumer<'_, T, N>) {
        self.control.0.reset_owners();
        let ring: &Self = self;
        let owner = NonZeroU32::MIN;
        match (ring.claim_producer(owner), ring.claim_consumer(owner)) {
            (Ok(producer), Ok(consumer)) => (producer, consumer),
            // Our own indices are never more than `N` apart, and the owners were just reset.
            _ => unreachable!("a ring held exclusively is consistent and unclaimed"),
        }
    }

    /// Claims the producer side for `owner` (any non-zero id: a process id for shared-memory
    /// users). The handle continues where the previous producer stopped.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the producer side;
    /// [`ClaimError::Corrupt`] (and the claim is released) if the shared indices are more than
    /// `N` apart.
    pub fn claim_producer(&self, owner: NonZeroU32) -> Result<DenseProducer<'_, T, N>, ClaimError> {
        self.control.claim(Side::Producer, 0, owner)?;
        DenseProducer::attach(self)
    }

    /// Claims the consumer side for `owner`; the handle starts at the oldest unconsumed element.
    ///
    /// # Errors
    /// As [`claim_producer`](Self::claim_producer), for the consumer side.
    pub fn claim_consumer(&self, owner: NonZeroU32) -> Result<DenseConsumer<'_, T, N>, ClaimError> {
        self.control.claim(Side::Consumer, 0, owner)?;
        DenseConsumer::attach(self)
    }

    /// Takes the producer side over from `dead_owner`, which must have been recorded by a
    /// process that no longer runs (it crashed without releasing its claim). Elements it wrote
    /// but had not published are discarded; everything it published stays.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] if the side is not held by `dead_owner` (anymore);
    /// [`ClaimError::Corrupt`] as for [`claim_producer`](Self::claim_producer).
    ///
    /// # Safety
    /// The holder `dead_owner` must not touch the ring again: two live producers corrupt it.
    pub unsafe fn take_over_producer(
        &self,
        dead_owner: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<DenseProducer<'_, T, N>, ClaimError> {
        self.control
            .claim(Side::Producer, dead_owner.get(), owner)?;
        DenseProducer::attach(self)
    }

    /// Takes the consumer side over from `dead_owner`; see
    /// [`take_over_producer`](Self::take_over_producer). Elements it read but had not released
    /// are delivered again.
    ///
    /// # Errors
    /// As [`take_over_producer`](Self::take_over_producer).
    ///
    /// # Safety
    /// The holder `dead_owner` must not touch the ring again: two live consumers corrupt it.
    pub unsafe fn take_over_consumer(
        &self,
        dead_owner: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<DenseConsumer<'_, T, N>, ClaimError> {
        self.control
            .claim(Side::Consumer, dead_owner.get(), owner)?;
        DenseConsumer::attach(self)
    }

    /// The ids holding the producer and consumer sides (0 when free). Useful to a supervisor
    /// deciding whether a holder died.
    pub fn holders(&self) -> (u32, u32) {
        (
            self.control.holder(Side::Producer),
            self.control.holder(Side::Consumer),
        )
    }

    /// The index (`< N`) position `position` maps to.
    #[inline(always)]
    fn index(position: u32) -> usize {
        (position & Self::MASK) as usize
    }

    /// The shared indices as a fresh claim of `side` finds them, checked: `(head, tail)` with
    /// `tail - head <= N`. On impossible indices the claim is released again.
    fn claimed_indices(&self, side: Side) -> Result<(u32, u32), ClaimError> {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > N as u32 {
            self.control.release(side);
            return Err(ClaimError::Corrupt {
                reason: "the producer's index is more than the capacity ahead of the consumer's",
            });
        }
        Ok((head, tail))
    }
}

impl<T, const N: usize> Default for DenseRing<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Drop for DenseRing<T, N> {
    fn drop(&mut self) {
        if !mem::needs_drop::<T>() {
            return;
        }
        let head = self.head.load(Ordering::Acquire);
        // Never more than `N`, even if a peer left impossible indices.
        let len = self
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(head)
            .min(N as u32);
        for i in 0..len {
            // SAFETY: positions in `head..tail` hold published, unconsumed values, and `&mut
            // self` excludes every handle, so each is dropped exactly once.
            unsafe { self.slots.drop_at(Self::index(head.wrapping_add(i))) };
        }
    }
}

impl<T, const N: usize> fmt::Debug for DenseRing<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseRing")
            .field("capacity", &N)
            .field("head", &self.head.load(Ordering::Relaxed))
            .field("tail", &self.tail.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The writing side of a [`DenseRing`]. There is at most one per ring (enforced by the claim).
pub struct DenseProducer<'a, T, const N: usize> {
    ring: &'a DenseRing<T, N>,
    /// Position the next element will be written to; mirrors `ring.tail`, which only we write.
    tail: u32,
    /// The consumer's `head` as last read; it only ever lags the real one.
    cached_head: u32,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, T, const N: usize> DenseProducer<'a, T, N> {
    /// A handle at the shared tail; on corrupt indices the claim is released again.
    fn attach(ring: &'a DenseRing<T, N>) -> Result<Self, ClaimError> {
        let (head, tail) = ring.claimed_indices(Side::Producer)?;
        Ok(Self {
            ring,
            tail,
            cached_head: head,
            _not_sync: PhantomData,
        })
    }

    /// Free slots as far as the cached head knows.
    #[inline(always)]
    fn cached_free(&self) -> u32 {
        // A consumer in another process could publish a head beyond our tail; saturating keeps
        // that from turning into a huge free count (it reads as "full" instead).
        (N as u32).saturating_sub(self.tail.wrapping_sub(self.cached_head))
    }

    /// Free slots, reloading the consumer's index only when the cached view is short of `wanted`.
    #[inline(always)]
    fn free_for(&mut self, wanted: u32) -> u32 {
        let free = self.cached_free();
        if free >= wanted {
            return free;
        }
        self.cached_head = self.ring.head.load(Ordering::Acquire);
        self.cached_free()
    }

    /// Publishes everything written up to `tail`.
    #[inline(always)]
    fn publish(&mut self, tail: u32) {
        self.tail = tail;
        self.ring.tail.store(tail, Ordering::Release);
    }

    /// Appends `value`.
    ///
    /// Cost: one value write and one Release store of the producer's index; the consumer's
    /// index is read only when the cached view says full.
    ///
    /// # Errors
    /// [`Full`] with `value` handed back when all `N` slots hold unconsumed elements.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), Full<T>> {
        if self.free_for(1) == 0 {
            return Err(Full(value));
        }
        let tail = self.tail;
        // SAFETY: `free_for` proved the consumer released this slot (its head, read with
        // Acquire, is more than `tail - N`, so its read of the old value happened before), and
        // we are the only producer; nobody reads the slot until the store below publishes it.
        unsafe { self.ring.slots.write(DenseRing::<T, N>::index(tail), value) };
        self.publish(tail.wrapping_add(1));
        Ok(())
    }

    /// Copies as many elements of `items` as fit and publishes them with one index store.
    ///
    /// Returns how many were pushed (0 when full). The consumer's index is read at most once,
    /// and only when the cached view has no room for all of `items`. Cost: at most two
    /// `memcpy`s (the ring's end splits a batch in two) and one Release store.
    ///
    /// ```
    /// let mut ring = spsc_core::DenseRing::<u64, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// assert_eq!(tx.push_slice(&[1, 2, 3, 4, 5, 6]), 4, "only 4 fit");
    /// let mut out = [0; 8];
    /// assert_eq!(rx.pop_slice(&mut out), 4);
    /// assert_eq!(out[..4], [1, 2, 3, 4]);
    /// ```
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy,
    {
        let wanted = items.len().min(N) as u32;
        let count = (self.free_for(wanted) as usize).min(items.len());
        if count == 0 {
            return 0;
        }
        let tail = self.tail;
        let start = DenseRing::<T, N>::index(tail);
        let first = count.min(N - start);
        // SAFETY: as in `push`, for every slot of `tail..tail + count` (all free, `count` being
        // at most the free count); the two runs are `start..start + first` and `0..count -
        // first`, both inside the array, and `items` is a separate borrow.
        unsafe {
            self.ring.slots.copy_in(start, &items[..first]);
            // Most batches do not wrap: skip the second (empty) `memcpy` call.
            if first < count {
                self.ring.slots.copy_in(0, &items[first..count]);
            }
        }
        self.publish(tail.wrapping_add(count as u32));
        count
    }

    /// Moves elements from `items` into the ring until it is full or the iterator ends, and
    /// publishes them with one index store. Elements the ring had no room for stay in the
    /// iterator. If the iterator panics, nothing it yielded is published (the values written
    /// are forgotten, not dropped).
    ///
    /// Returns how many were pushed. The same as `write_chunk(N).fill_from_iter(items)`.
    pub fn push_iter<I: IntoIterator<Item = T>>(&mut self, items: I) -> usize {
        self.write_chunk(N).fill_from_iter(items)
    }

    /// Reserves up to `max` free slots, oldest first, to be written in place;
    /// [`DenseWriteChunk::fill_from_iter`] or [`DenseWriteChunk::commit`] then publishes some or
    /// all of them with one index store. Dropping (or leaking) the chunk publishes nothing. The
    /// consumer's index is read only when the cached view has fewer than `max` free slots.
    ///
    /// ```
    /// use std::mem::MaybeUninit;
    ///
    /// let mut ring = spsc_core::DenseRing::<u32, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// let mut chunk = tx.write_chunk(3);
    /// let (first, second) = chunk.as_mut_slices();
    /// for (i, slot) in first.iter_mut().chain(second).enumerate() {
    ///     slot.write(10 + i as u32); // e.g. decode straight into the ring
    /// }
    /// // SAFETY: the loop above initialised all 3 slots of the chunk.
    /// unsafe { chunk.commit(3) };
    /// assert_eq!(rx.pop(), Some(10));
    /// ```
    pub fn write_chunk(&mut self, max: usize) -> DenseWriteChunk<'_, 'a, T, N> {
        let max = u32::try_from(max).unwrap_or(u32::MAX).min(N as u32);
        let len = self.free_for(max).min(max);
        DenseWriteChunk {
            producer: self,
            len,
        }
    }

    /// The wrapping position (element count mod 2³²) the next push writes.
    pub const fn position(&self) -> u32 {
        self.tail
    }

    /// Free slots right now (reloads the consumer's index if the cached view says not all are
    /// free).
    pub fn free_len(&mut self) -> usize {
        self.free_for(N as u32) as usize
    }

    /// `true` when a `push` would fail right now.
    pub fn is_full(&mut self) -> bool {
        self.free_for(1) == 0
    }

    /// The ring's capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T, const N: usize> Drop for DenseProducer<'_, T, N> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Producer);
    }
}

impl<T, const N: usize> fmt::Debug for DenseProducer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseProducer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish_non_exhaustive()
    }
}

/// The reading side of a [`DenseRing`]. There is at most one per ring (enforced by the claim).
pub struct DenseConsumer<'a, T, const N: usize> {
    ring: &'a DenseRing<T, N>,
    /// Position of the next element to read; mirrors `ring.head`, which only we write.
    head: u32,
    /// The producer's `tail` as last read; it only ever lags the real one.
    cached_tail: u32,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, T, const N: usize> DenseConsumer<'a, T, N> {
    /// A handle at the shared head; on corrupt indices the claim is released again.
    fn attach(ring: &'a DenseRing<T, N>) -> Result<Self, ClaimError> {
        let (head, tail) = ring.claimed_indices(Side::Consumer)?;
        Ok(Self {
            ring,
            head,
            cached_tail: tail,
            _not_sync: PhantomData,
        })
    }

    /// Ready elements as far as the cached tail knows.
    #[inline(always)]
    fn cached_ready(&self) -> u32 {
        // A producer in another process could publish a tail more than `N` ahead; never read
        // more than the ring holds.
        self.cached_tail.wrapping_sub(self.head).min(N as u32)
    }

    /// Ready elements, reloading the producer's index only when the cached view is short of
    /// `wanted`.
    #[inline(always)]
    fn ready_for(&mut self, wanted: u32) -> u32 {
        let ready = self.cached_ready();
        if ready >= wanted {
            return ready;
        }
        self.cached_tail = self.ring.tail.load(Ordering::Acquire);
        self.cached_ready()
    }

    /// Releases everything read up to `head` to the producer.
    #[inline(always)]
    fn release(&mut self, head: u32) {
        self.head = head;
        self.ring.head.store(head, Ordering::Release);
    }

    /// Removes and returns the oldest element, or `None` if the ring is empty.
    ///
    /// Cost: the value read and one Release store of the consumer's index; the producer's index
    /// is read only when the cached view says empty.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.ready_for(1) == 0 {
            return None;
        }
        let head = self.head;
        // SAFETY: the producer's tail, read with Acquire, is past `head`, so the value is
        // published and its write visible; the slot stays ours until the store below releases
        // it, and it is read once.
        let value = unsafe { self.ring.slots.read(DenseRing::<T, N>::index(head)) };
        self.release(head.wrapping_add(1));
        Some(value)
    }

    /// Ready elements, reading the producer's index only when the cached view says none, and
    /// without updating the cache (for the `&self` queries).
    #[inline(always)]
    fn ready_now(&self) -> u32 {
        match self.cached_ready() {
            0 => self
                .ring
                .tail
                .load(Ordering::Acquire)
                .wrapping_sub(self.head)
                .min(N as u32),
            ready => ready,
        }
    }

    /// Borrows the oldest element without removing it, or `None` if the ring is empty.
    #[inline]
    pub fn peek(&self) -> Option<&T> {
        if self.ready_now() == 0 {
            return None;
        }
        // SAFETY: published (see `pop`); the producer cannot reuse the slot until `head` moves,
        // which takes `&mut self`, so the borrow cannot outlive the value.
        Some(unsafe { self.ring.slots.get(DenseRing::<T, N>::index(self.head)) })
    }

    /// The wrapping position (element count mod 2³²) of the next element to pop.
    pub const fn position(&self) -> u32 {
        self.head
    }

    /// Number of elements ready to be read (at most `N`). Cost: one load of the producer's
    /// index.
    pub fn len(&self) -> usize {
        self.ring
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
            .min(N as u32) as usize
    }

    /// `true` if there is nothing to read right now.
    pub fn is_empty(&self) -> bool {
        self.ready_now() == 0
    }

    /// Copies up to `out.len()` of the oldest elements into `out`, removes them, and publishes
    /// the new index once. Returns how many were copied. Cost: at most two `memcpy`s and one
    /// Release store; the producer's index is read only when the cached view has fewer than
    /// `out.len()` elements.
    #[inline]
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        let wanted = out.len().min(N) as u32;
        let count = (self.ready_for(wanted) as usize).min(out.len());
        if count == 0 {
            return 0;
        }
        let head = self.head;
        let start = DenseRing::<T, N>::index(head);
        let first = count.min(N - start);
        // SAFETY: as in `pop`, for every position of `head..head + count` (all published); the
        // two runs lie inside the array, `out` is a separate exclusive borrow, and `T: Copy`
        // leaves nothing to drop in the slots.
        unsafe {
            self.ring.slots.copy_out(start, &mut out[..first]);
            if first < count {
                self.ring.slots.copy_out(0, &mut out[first..count]);
            }
        }
        self.release(head.wrapping_add(count as u32));
        count
    }

    /// Borrows up to `max` of the ready elements in place, oldest first, without removing them;
    /// [`DenseReadChunk::commit`] then removes some or all of them with one index store.
    /// Dropping (or leaking) the chunk removes nothing.
    ///
    /// ```
    /// let mut ring = spsc_core::DenseRing::<String, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// tx.push_iter(["a", "b", "c"].map(String::from));
    /// let chunk = rx.read_chunk(8);
    /// let (first, second) = chunk.as_slices();
    /// assert_eq!([first, second].concat(), ["a", "b", "c"]);
    /// chunk.commit(2); // drops "a" and "b" in place
    /// assert_eq!(rx.pop().as_deref(), Some("c"));
    /// ```
    pub fn read_chunk(&mut self, max: usize) -> DenseReadChunk<'_, 'a, T, N> {
        let max = u32::try_from(max).unwrap_or(u32::MAX).min(N as u32);
        let len = self.ready_for(max).min(max);
        DenseReadChunk {
            consumer: self,
            len,
        }
    }

    /// The ring's capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T, const N: usize> Drop for DenseConsumer<'_, T, N> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Consumer);
    }
}

impl<T, const N: usize> fmt::Debug for DenseConsumer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseConsumer")
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .finish_non_exhaustive()
    }
}

/// Free slots of a [`DenseProducer`], reserved to be written in place; see
/// [`DenseProducer::write_chunk`]. Nothing is published until a `fill_from_iter` or `commit`.
pub struct DenseWriteChunk<'p, 'a, T, const N: usize> {
    producer: &'p mut DenseProducer<'a, T, N>,
    /// Slots from the producer's position on that the consumer was seen to have released.
    len: u32,
}

impl<T, const N: usize> DenseWriteChunk<'_, '_, T, N> {
    /// How many slots the chunk holds.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// `true` if the chunk holds no slot (the ring was full).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk's slots, oldest first, as the two runs they occupy (the second is empty unless
    /// the chunk wraps round the ring's end). They may hold anything, values of an earlier lap
    /// included (already moved out or dropped): write before [`commit`](Self::commit). Not in
    /// loom builds, whose cells are not laid out as arrays.
    #[cfg(not(loom))]
    pub fn as_mut_slices(&mut self) -> (&mut [mem::MaybeUninit<T>], &mut [mem::MaybeUninit<T>]) {
        let start = DenseRing::<T, N>::index(self.producer.tail);
        let len = self.len as usize;
        let first = len.min(N - start);
        let slots = &self.producer.ring.slots;
        // SAFETY: both runs lie inside the array and do not overlap (`len <= N`); the slots were
        // released by the consumer and are unpublished, so only this producer, borrowed
        // exclusively by the chunk, reaches them until `commit` publishes them.
        unsafe {
            (
                slots.slice_mut(start, first),
                slots.slice_mut(0, len - first),
            )
        }
    }

    /// Publishes the chunk's first `count` slots (all of them if `count` is larger) with one
    /// Release store; the rest stay free.
    ///
    /// # Safety
    /// Each of those slots must have been initialised with a `T` through
    /// [`as_mut_slices`](Self::as_mut_slices): the consumer will read them as `T`s and drop them.
    pub unsafe fn commit(self, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX).min(self.len);
        if count > 0 {
            let tail = self.producer.tail.wrapping_add(count);
            self.producer.publish(tail);
        }
    }

    /// Moves elements from `items` into the chunk's slots until they are all written or the
    /// iterator ends, and publishes them with one index store. Elements beyond the chunk stay in
    /// the iterator; if it panics, nothing it yielded is published (the values written are
    /// forgotten, not dropped). Returns how many were written.
    pub fn fill_from_iter<I: IntoIterator<Item = T>>(self, items: I) -> usize {
        let mut items = items.into_iter();
        let mut count = 0;
        while count < self.len {
            let Some(value) = items.next() else { break };
            let index = DenseRing::<T, N>::index(self.producer.tail.wrapping_add(count));
            // SAFETY: `count < len`, so the slot is one `write_chunk` saw released by the
            // consumer (head read with Acquire) and it is unpublished: ours alone.
            unsafe { self.producer.ring.slots.write(index, value) };
            count += 1;
        }
        // SAFETY: the loop initialised exactly the first `count` slots of the chunk.
        unsafe { self.commit(count as usize) };
        count as usize
    }
}

impl<T, const N: usize> fmt::Debug for DenseWriteChunk<'_, '_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseWriteChunk")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Ready elements of a [`DenseConsumer`], borrowed in place; see
/// [`DenseConsumer::read_chunk`].
pub struct DenseReadChunk<'c, 'a, T, const N: usize> {
    consumer: &'c mut DenseConsumer<'a, T, N>,
    /// Elements from the consumer's position on that were seen published.
    len: u32,
}

impl<T, const N: usize> DenseReadChunk<'_, '_, T, N> {
    /// How many elements the chunk holds.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// `true` if the chunk holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `index`-th oldest element of the chunk.
    pub fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len as usize {
            return None;
        }
        let position = self.consumer.head.wrapping_add(index as u32);
        // SAFETY: positions `head..head + len` were seen published (Acquire) by `read_chunk`,
        // and the producer cannot reuse them before the index moves, which needs `commit(self)`.
        Some(unsafe {
            self.consumer
                .ring
                .slots
                .get(DenseRing::<T, N>::index(position))
        })
    }

    /// The chunk's elements, oldest first, as the two runs they occupy (the second is empty
    /// unless the chunk wraps round the ring's end). Not in loom builds, whose cells are not
    /// laid out as arrays.
    #[cfg(not(loom))]
    pub fn as_slices(&self) -> (&[T], &[T]) {
        let start = DenseRing::<T, N>::index(self.consumer.head);
        let len = self.len as usize;
        let first = len.min(N - start);
        // SAFETY: as in `get`, for each run: both lie inside the array and hold published
        // values that stay unwritten while the chunk borrows the consumer.
        unsafe {
            (
                self.consumer.ring.slots.slice(start, first),
                self.consumer.ring.slots.slice(0, len - first),
            )
        }
    }

    /// Removes the `count` oldest elements of the chunk (all of them if `count` is larger),
    /// dropping them in place, and publishes the consumer's index once.
    pub fn commit(self, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX).min(self.len);
        if count == 0 {
            return;
        }
        let consumer = self.consumer;
        if mem::needs_drop::<T>() {
            for i in 0..count {
                let index = DenseRing::<T, N>::index(consumer.head.wrapping_add(i));
                // SAFETY: published and unconsumed (see `get`); dropped once, and the index is
                // released past it right after, before anyone can read it again.
                unsafe { consumer.ring.slots.drop_at(index) };
            }
        }
        consumer.release(consumer.head.wrapping_add(count));
    }

    /// Removes every element of the chunk; see [`commit`](Self::commit).
    pub fn commit_all(self) {
        let len = self.len as usize;
        self.commit(len);
    }
}

impl<T, const N: usize> fmt::Debug for DenseReadChunk<'_, '_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenseReadChunk")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The slots: `N` values of `T` as one array, every byte inside one `UnsafeCell`, so values
/// written and read through raw pointers may be reached through a shared reference.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct Slots<T, const N: usize>(core::cell::UnsafeCell<mem::MaybeUninit<[T; N]>>);

#[cfg(not(loom))]
impl<T, const N: usize> Slots<T, N> {
    const fn new() -> Self {
        Self(core::cell::UnsafeCell::new(mem::MaybeUninit::uninit()))
    }

    /// Where the value of index `index` (`<= N`: one past the end is a valid run start) lives.
    #[inline(always)]
    fn ptr(&self, index: usize) -> *mut T {
        debug_assert!(index <= N);
        // SAFETY: `index <= N`, so the result is inside the array or one past its end.
        unsafe { self.0.get().cast::<T>().add(index) }
    }

    /// # Safety
    /// The slot must be free (released by the consumer, unpublished) and ours alone.
    #[inline(always)]
    unsafe fn write(&self, index: usize, value: T) {
        debug_assert!(index < N);
        // SAFETY: in bounds and aligned (an array element); exclusive per the caller.
        unsafe { self.ptr(index).write(value) }
    }

    /// # Safety
    /// The slot must hold a published value that the caller then treats as moved out.
    #[inline(always)]
    unsafe fn read(&self, index: usize) -> T {
        debug_assert!(index < N);
        // SAFETY: in bounds, aligned, initialised and not written concurrently, per the caller.
        unsafe { self.ptr(index).read() }
    }

    /// # Safety
    /// The slot must hold a published value that is not written or moved out while the
    /// reference lives.
    #[inline(always)]
    unsafe fn get(&self, index: usize) -> &T {
        debug_assert!(index < N);
        // SAFETY: in bounds, aligned and initialised, and stable while the borrow lasts, per the caller.
        unsafe { &*self.ptr(index) }
    }

    /// # Safety
    /// `start..start + len` must lie in the array and hold published values that stay
    /// unwritten while the slice lives.
    #[inline(always)]
    unsafe fn slice(&self, start: usize, len: usize) -> &[T] {
        debug_assert!(start + len <= N);
        // SAFETY: a run of initialised, contiguous, aligned array elements, stable while the borrow lasts.
        unsafe { core::slice::from_raw_parts(self.ptr(start), len) }
    }

    /// # Safety
    /// `start..start + len` must lie in the array, be free (released by the consumer,
    /// unpublished) and reached by no one else while the slice lives.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // the slots are behind an `UnsafeCell`; exclusivity is the caller's
    unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [mem::MaybeUninit<T>] {
        debug_assert!(start + len <= N);
        // SAFETY: a run of contiguous, aligned array elements; `MaybeUninit` accepts any bytes;
        // exclusive while the borrow lasts, per the caller.
        unsafe { core::slice::from_raw_parts_mut(self.ptr(start).cast(), len) }
    }

    /// # Safety
    /// The slot must hold a published value that nothing reads again.
    #[inline(always)]
    unsafe fn drop_at(&self, index: usize) {
        debug_assert!(index < N);
        // SAFETY: initialised and never used again, per the caller.
        unsafe { self.ptr(index).drop_in_place() }
    }

    /// Copies `items` into the slots from `start` on.
    ///
    /// # Safety
    /// `start + items.len() <= N`, and those slots must be free and ours alone.
    #[inline(always)]
    unsafe fn copy_in(&self, start: usize, items: &[T])
    where
        T: Copy,
    {
        debug_assert!(start + items.len() <= N);
        // SAFETY: in bounds per the caller, exclusive per the caller, and `items` is a separate
        // borrow, so the two cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(items.as_ptr(), self.ptr(start), items.len()) }
    }

    /// Copies the slots from `start` on into `out`.
    ///
    /// # Safety
    /// `start + out.len() <= N`, and those slots must hold published values not written
    /// during the call.
    #[inline(always)]
    unsafe fn copy_out(&self, start: usize, out: &mut [T])
    where
        T: Copy,
    {
        debug_assert!(start + out.len() <= N);
        // SAFETY: in bounds, initialised and stable per the caller; `out` is a separate
        // exclusive borrow.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(start), out.as_mut_ptr(), out.len()) }
    }
}

/// Loom build: one loom cell per slot, so every access is tracked.
#[cfg(loom)]
pub(crate) struct Slots<T, const N: usize>([loom::cell::UnsafeCell<mem::MaybeUninit<T>>; N]);

#[cfg(loom)]
impl<T, const N: usize> Slots<T, N> {
    fn new() -> Self {
        Self(core::array::from_fn(|_| {
            loom::cell::UnsafeCell::new(mem::MaybeUninit::uninit())
        }))
    }

    unsafe fn write(&self, index: usize, value: T) {
        // SAFETY: exclusive per the caller.
        self.0[index].with_mut(|cell| unsafe { (*cell).write(value) });
    }

    unsafe fn read(&self, index: usize) -> T {
        // SAFETY: initialised and stable per the caller.
        self.0[index].with(|cell| unsafe { (*cell).assume_init_read() })
    }

    unsafe fn get(&self, index: usize) -> &T {
        // SAFETY: initialised and stable per the caller.
        self.0[index].with(|cell| unsafe { (*cell).assume_init_ref() })
    }

    unsafe fn drop_at(&self, index: usize) {
        // SAFETY: initialised and never used again per the caller.
        self.0[index].with_mut(|cell| unsafe { (*cell).assume_init_drop() });
    }

    unsafe fn copy_in(&self, start: usize, items: &[T])
    where
        T: Copy,
    {
        for (k, &item) in items.iter().enumerate() {
            // SAFETY: forwarded from the caller, slot by slot.
            unsafe { self.write(start + k, item) };
        }
    }

    unsafe fn copy_out(&self, start: usize, out: &mut [T])
    where
        T: Copy,
    {
        for (k, slot) in out.iter_mut().enumerate() {
            // SAFETY: forwarded from the caller, slot by slot.
            *slot = unsafe { self.read(start + k) };
        }
    }
}
