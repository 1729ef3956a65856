//! [`Ring`]: a fixed-capacity SPSC ring of `N` elements of type `T`.
//!
//! # Protocol
//!
//! Positions are `u32` counters that wrap; the element at position `p` lives at index `p % N`.
//! Consecutive indices are grouped into *blocks* (see `blocks.rs`: 7 `u64`s or 15 `u32`s share
//! one cache line, a larger element has a block of its own, placed apart from the blocks of the
//! positions next to it), and every block starts with a *stamp*: one past the last position the
//! producer published in that block, stored with Release after the value is written.
//!
//! The consumer, expecting position `p`, loads the stamp of `p`'s block (Acquire): `p` is
//! published exactly when the stamp is ahead of `p` (as a signed 32-bit difference). A stamp left
//! by an earlier lap is behind `p`, and the producer publishes positions in order, so a stamp
//! ahead of `p` means the producer wrote `p` (and everything before it) first. No shared "tail"
//! index is needed: a hand-off moves exactly one cache line, the block's own, and a run of
//! elements in a block costs one stamp check.
//!
//! The consumer publishes its position in `head` (Release) so the producer knows which indices it
//! may reuse. The producer caches the last `head` it read and only reloads it when its cached
//! view says the ring is full, so in steady state the head's cache line stays with the consumer.
//!
//! Because nothing but `head` and the stamps is shared, a producer that attaches to an existing
//! ring (after a restart, say) recovers its position by walking the stamps forward from `head`.

use core::fmt;
use core::marker::PhantomData;
use core::mem;
use core::num::NonZeroU32;
use core::ptr::NonNull;

use crate::blocks::{Blocks, Geometry};
use crate::layout::{
    check_region, AttachError, ClaimError, RingControl, RingKind, RingLayout, Side,
};
use crate::padded::CachePadded;
use crate::sync::{AtomicU32, Ordering};

/// A single-producer single-consumer ring of `N` values of type `T`, usable in place in memory
/// shared by two processes.
///
/// `N` must be a non-zero power of two no larger than 2³¹; anything else fails to compile with a
/// message naming the rule. The ring is `#[repr(C)]`, holds no pointers, and starts with a header
/// ([`RingLayout`]) that [`attach`](Self::attach) checks.
///
/// Use it by splitting it into a [`Producer`] and a [`Consumer`] ([`split`](Self::split)), or by
/// claiming each side separately ([`claim_producer`](Self::claim_producer)) when the two sides
/// are found independently, e.g. in two processes.
///
/// Costs: a `push` or `pop` is a handful of instructions, touches its block's cache line and, only
/// when the producer's cached view of the consumer says the ring is full, the consumer's index
/// line; a batch costs one stamp per block. No allocation, no system call. Memory: the 256-byte
/// header, `N` times the element plus its alignment-padded `u32` stamp, and one spare line
/// (small elements use only about `N · size_of::<T>()` of that, see [`RingLayout::block_len`]).
///
/// ```
/// use spsc_core::Ring;
///
/// let mut ring = Ring::<u64, 8>::new();
/// let (mut tx, mut rx) = ring.split();
/// tx.push(7).unwrap();
/// assert_eq!(rx.pop(), Some(7));
/// assert_eq!(rx.pop(), None);
/// ```
///
/// A capacity that is not a power of two does not compile:
///
/// ```compile_fail
/// let ring = spsc_core::Ring::<u64, 3>::new();
/// ```
#[repr(C)]
pub struct Ring<T, const N: usize> {
    control: CachePadded<RingControl>,
    /// Position of the next element the consumer will read; written only by the consumer.
    pub(crate) head: CachePadded<AtomicU32>,
    pub(crate) blocks: Blocks<T, N>,
}

// SAFETY: the ring hands a `T` from the producer's thread to the consumer's, so `T: Send` is
// needed and sufficient; every value is accessed by one side at a time, as the stamp and head
// protocol (module docs) guarantees, and all other shared state is atomic.
unsafe impl<T: Send, const N: usize> Sync for Ring<T, N> {}

impl<T, const N: usize> Ring<T, N> {
    /// Evaluated by every constructor, so a bad `N` is a compile-time error.
    const VALID: () = {
        assert!(
            N.is_power_of_two() && N <= 1 << 31,
            "Ring capacity N must be a non-zero power of two no larger than 2^31"
        );
        assert!(
            mem::size_of::<Self>() <= u32::MAX as usize,
            "Ring<T, N> must be smaller than 4 GiB"
        );
        assert!(Geometry::<T, N>::FITS, "blocks outgrow the ring's arena");
    };

    const MASK: u32 = (N as u32).wrapping_sub(1);

    /// Elements per block.
    const BLOCK_LEN: usize = Geometry::<T, N>::LEN;

    /// The layout this type has in memory, as recorded in its header.
    pub const LAYOUT: RingLayout = RingLayout {
        version: crate::layout::RING_FORMAT_VERSION,
        kind: RingKind::Fixed as u32,
        capacity: N as u32,
        elem_size: mem::size_of::<T>() as u32,
        elem_align: mem::align_of::<T>() as u32,
        block_len: Geometry::<T, N>::LEN as u32,
        block_size: Geometry::<T, N>::SIZE as u32,
        block_spread: Geometry::<T, N>::SPREAD as u32,
        data_offset: mem::offset_of!(Self, blocks) as u32,
        total_size: mem::size_of::<Self>() as u32,
    };

    /// The number of elements the ring holds when full.
    pub const CAPACITY: usize = N;

    /// Creates an empty ring. `const`, so a ring can be a `static` (claim its sides with
    /// [`claim_producer`](Self::claim_producer) and [`claim_consumer`](Self::claim_consumer)).
    ///
    /// The ring is `size_of::<Ring<T, N>>()` bytes inline: box it (or use
    /// [`init_in_place`](Self::init_in_place)) when that is large.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            head: CachePadded(AtomicU32::new(0)),
            blocks: Blocks::new(),
        }
    }

    /// Creates an empty ring (loom build: not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::VALID;
        Self {
            control: CachePadded(RingControl::new(Self::LAYOUT)),
            head: CachePadded(AtomicU32::new(0)),
            blocks: Blocks::new(),
        }
    }

    /// Initialises an empty ring in the caller's memory (for example a shared-memory mapping) and
    /// returns a reference to it. Any ring previously there is discarded without dropping its
    /// elements.
    ///
    /// # Errors
    /// [`AttachError::Misaligned`] unless `region` is aligned to `align_of::<Self>()` (128), and
    /// [`AttachError::TooSmall`] if `len < size_of::<Self>()`.
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
        // SAFETY: `check_region` proved `ring` aligned and the region large enough; the caller
        // promises exclusive access to valid memory. Each field is written with `ptr::write`
        // (the blocks' stamps one by one), so no reference to uninitialised memory is formed.
        unsafe {
            core::ptr::addr_of_mut!((*ring).control)
                .write(CachePadded(RingControl::new(Self::LAYOUT)));
            core::ptr::addr_of_mut!((*ring).head).write(CachePadded(AtomicU32::new(0)));
            Blocks::init_at(core::ptr::addr_of_mut!((*ring).blocks));
            Ok(&*ring)
        }
    }

    /// Views memory that [`init_in_place`](Self::init_in_place) initialised (possibly in another
    /// process, at another address) as a ring, after checking its header.
    ///
    /// Cost: reads the 128-byte header; the blocks are not touched until a side is claimed.
    ///
    /// # Errors
    /// [`AttachError::Misaligned`] / [`AttachError::TooSmall`] for an unusable region,
    /// [`AttachError::BadMagic`] if it was never initialised as a ring, and
    /// [`AttachError::LayoutMismatch`] if it holds a ring of another capacity, element type or
    /// format version.
    ///
    /// # Safety
    /// `region` must be valid for reads and writes of `len` bytes for `'a`, and be accessed by
    /// others only through this crate's handles. Because the values are read as `T`, every bit
    /// pattern the other side can leave in a slot must be a valid `T`: use plain-old-data element
    /// types (integers, arrays and `#[repr(C)]` structs of them) for rings shared with code you do
    /// not control.
    pub unsafe fn attach<'a>(region: NonNull<u8>, len: usize) -> Result<&'a Self, AttachError> {
        let () = Self::VALID;
        check_region::<Self>(region.as_ptr() as usize, len)?;
        // SAFETY: aligned and large enough (checked above) and valid per the caller. Every field
        // of `Ring` is valid for any bit pattern (integers, atomics, `MaybeUninit`), so viewing
        // arbitrary bytes through this reference is sound before validation.
        let ring = unsafe { &*region.as_ptr().cast::<Self>() };
        ring.control.validate(&Self::LAYOUT)?;
        Ok(ring)
    }

    /// Splits the ring into its producer and consumer. Any claims left by leaked handles are
    /// cleared first: the `&mut` borrow proves no other handle exists.
    pub fn split(&mut self) -> (Producer<'_, T, N>, Consumer<'_, T, N>) {
        self.control.0.reset_owners();
        let ring: &Self = self;
        let owner = NonZeroU32::MIN;
        match (ring.claim_producer(owner), ring.claim_consumer(owner)) {
            (Ok(producer), Ok(consumer)) => (producer, consumer),
            _ => unreachable!("owners were reset under an exclusive borrow"),
        }
    }

    /// Claims the producer side for `owner` (any non-zero id: a process id for shared-memory
    /// users). The handle continues where the previous producer stopped: its position is
    /// recovered by walking the published stamps from the consumer's index, at most `N` elements.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the producer side.
    pub fn claim_producer(&self, owner: NonZeroU32) -> Result<Producer<'_, T, N>, ClaimError> {
        self.control.claim(Side::Producer, 0, owner)?;
        Ok(Producer::attach(self))
    }

    /// Claims the consumer side for `owner`; the handle starts at the oldest unconsumed element.
    ///
    /// # Errors
    /// [`ClaimError::Taken`] while another handle holds the consumer side.
    pub fn claim_consumer(&self, owner: NonZeroU32) -> Result<Consumer<'_, T, N>, ClaimError> {
        self.control.claim(Side::Consumer, 0, owner)?;
        Ok(Consumer::attach(self))
    }

    /// Takes the producer side over from `dead_owner`, which must have been recorded by a
    /// process that no longer runs (it crashed without releasing its claim).
    ///
    /// # Errors
    /// [`ClaimError::Taken`] if the side is not held by `dead_owner` (anymore).
    ///
    /// # Safety
    /// The holder `dead_owner` must not touch the ring again: two live producers corrupt it.
    pub unsafe fn take_over_producer(
        &self,
        dead_owner: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<Producer<'_, T, N>, ClaimError> {
        self.control
            .claim(Side::Producer, dead_owner.get(), owner)?;
        Ok(Producer::attach(self))
    }

    /// Takes the consumer side over from `dead_owner`; see
    /// [`take_over_producer`](Self::take_over_producer).
    ///
    /// # Errors
    /// [`ClaimError::Taken`] if the side is not held by `dead_owner` (anymore).
    ///
    /// # Safety
    /// The holder `dead_owner` must not touch the ring again: two live consumers corrupt it.
    pub unsafe fn take_over_consumer(
        &self,
        dead_owner: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<Consumer<'_, T, N>, ClaimError> {
        self.control
            .claim(Side::Consumer, dead_owner.get(), owner)?;
        Ok(Consumer::attach(self))
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

    /// The block holding `position`, and its offset there (one division by a constant).
    #[inline(always)]
    fn block_and_offset(position: u32) -> (usize, usize) {
        let index = Self::index(position);
        let block = index / Self::BLOCK_LEN;
        (block, index - block * Self::BLOCK_LEN)
    }

    /// The block after `block`, wrapping to the first.
    #[inline(always)]
    fn next_block(block: usize) -> usize {
        if block + 1 == Geometry::<T, N>::COUNT {
            0
        } else {
            block + 1
        }
    }

    /// How many whole blocks, from `block` on, a run of `len` elements starting at `block`'s
    /// first element covers before the ring's last block (which may be short, so the batch loops
    /// leave it to their general step).
    #[inline(always)]
    fn whole_blocks(block: usize, len: usize) -> usize {
        (len / Self::BLOCK_LEN).min(Geometry::<T, N>::COUNT - 1 - block)
    }

    /// The stamp of the block holding position `position`.
    #[inline(always)]
    fn stamp_of(&self, position: u32) -> &AtomicU32 {
        self.blocks.stamp(Self::block_and_offset(position).0)
    }

    /// How far `stamp` is ahead of `position`: positive exactly when the stamp says `position`
    /// is published. Stamps and positions stay within `N + BLOCK_LEN` (well under 2³¹, since the
    /// ring is under 4 GiB) of each other, so the signed difference cannot wrap.
    #[inline(always)]
    fn ahead(stamp: u32, position: u32) -> i32 {
        stamp.wrapping_sub(position) as i32
    }

    /// Whether the element at `position` is published (its block's stamp, read with Acquire, is
    /// ahead of it): its value is then visible.
    #[inline(always)]
    fn is_published_at(&self, position: u32) -> bool {
        Self::ahead(self.stamp_of(position).load(Ordering::Acquire), position) > 0
    }

    /// How many elements from `position`, which sits at `offset` in `block`, to the end of that
    /// block are published (one stamp read, Acquire).
    #[inline(always)]
    fn published_run_at(&self, block: usize, offset: usize, position: u32) -> usize {
        let ahead = Self::ahead(self.blocks.stamp(block).load(Ordering::Acquire), position);
        if ahead <= 0 {
            return 0;
        }
        (ahead as usize).min(Geometry::<T, N>::len_of(block) - offset)
    }

    /// [`published_run_at`](Self::published_run_at) for a position alone.
    #[inline(always)]
    fn published_run(&self, position: u32) -> u32 {
        let (block, offset) = Self::block_and_offset(position);
        self.published_run_at(block, offset, position) as u32
    }

    /// The position after the last published element, found by walking stamps from `head`.
    fn published_end(&self, head: u32) -> u32 {
        let mut end = head;
        while end.wrapping_sub(head) < N as u32 {
            let run = self.published_run(end);
            if run == 0 {
                break;
            }
            end = end.wrapping_add(run);
        }
        // A stamp ahead of the ring's capacity is a corrupt one; never claim more than `N`.
        if end.wrapping_sub(head) > N as u32 {
            end = head.wrapping_add(N as u32);
        }
        end
    }
}

impl<T, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Drop for Ring<T, N> {
    fn drop(&mut self) {
        if !mem::needs_drop::<T>() {
            return;
        }
        let head = self.head.load(Ordering::Acquire);
        let end = self.published_end(head);
        let mut position = head;
        while position != end {
            // SAFETY: positions in `head..end` hold published, unconsumed values (their stamps
            // say so), and `&mut self` excludes every handle, so each is dropped exactly once.
            self.blocks
                .with_value_mut(Self::index(position), |value| unsafe {
                    (*value).assume_init_drop()
                });
            position = position.wrapping_add(1);
        }
    }
}

impl<T, const N: usize> fmt::Debug for Ring<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &N)
            .field("head", &self.head.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The error of [`Producer::push`]: the ring is full; the value is handed back.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> fmt::Debug for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Full(..)")
    }
}

impl<T> core::error::Error for Full<T> {}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring is full; try again after the consumer pops")
    }
}

/// The writing side of a [`Ring`]. There is at most one per ring (enforced by the claim).
pub struct Producer<'a, T, const N: usize> {
    ring: &'a Ring<T, N>,
    /// Position the next element will be written to.
    tail: u32,
    /// The consumer's `head` as last read; it only ever lags the real one.
    cached_head: u32,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, T, const N: usize> Producer<'a, T, N> {
    /// Continues after the last published element. A producer that died inside `push_slice`
    /// can leave the batch's later blocks stamped but its first block not (the first stamp is
    /// stored last); those stamps would let the consumer read values we are about to overwrite,
    /// so every block past the gap whose stamp reads as published is set back to "nothing
    /// published from here". Cost: one pass over the blocks, at claim time only.
    fn attach(ring: &'a Ring<T, N>) -> Self {
        let head = ring.head.load(Ordering::Acquire);
        let tail = ring.published_end(head);
        // The gap's own block is consistent (its stamp is not ahead of `tail`, or `tail` would
        // be published); every other block is visited once, at the first position the next
        // lap will write there.
        let (mut block, offset) = Ring::<T, N>::block_and_offset(tail);
        let mut position = tail.wrapping_add((Geometry::<T, N>::len_of(block) - offset) as u32);
        for _ in 1..Geometry::<T, N>::COUNT {
            block = Ring::<T, N>::next_block(block);
            // A read-modify-write sees the dead producer's last store to the stamp. Relaxed is
            // enough: the consumer reads this stamp only after the one of `tail`'s block, which
            // our first push stores with Release after this.
            let _ = ring.blocks.stamp(block).fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |found| (Ring::<T, N>::ahead(found, position) > 0).then_some(position),
            );
            position = position.wrapping_add(Geometry::<T, N>::len_of(block) as u32);
        }
        Self {
            ring,
            tail,
            cached_head: head,
            _not_sync: PhantomData,
        }
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

    /// Appends `value`.
    ///
    /// Cost: one value write and one Release store of its block's stamp, in the same cache line;
    /// the consumer's index is read only when the cached view says full.
    ///
    /// # Errors
    /// [`Full`] with `value` handed back when all `N` slots hold unconsumed elements.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), Full<T>> {
        if self.free_for(1) == 0 {
            return Err(Full(value));
        }
        self.write_and_publish(value);
        Ok(())
    }

    /// Writes `value` at `tail`, then publishes it with a Release store of its block's stamp
    /// (same cache line). The caller has checked that `tail` is free.
    #[inline(always)]
    fn write_and_publish(&mut self, value: T) {
        let ring = self.ring;
        // SAFETY: the caller's `free_for` proved the consumer has released this index (head >
        // tail - N, read with Acquire, so its last read of the value happened before), and we
        // are the only producer; nobody else touches the value until the stamp below publishes
        // it.
        ring.blocks
            .with_value_mut(Ring::<T, N>::index(self.tail), |cell| unsafe {
                (*cell).write(value);
            });
        let stamp = ring.stamp_of(self.tail);
        self.tail = self.tail.wrapping_add(1);
        // A Release store (a plain `mov` on x86); a fence followed by Relaxed stores would save
        // barriers on ARM in batches, but ThreadSanitizer cannot see fences.
        stamp.store(self.tail, Ordering::Release);
    }

    /// Copies as many elements of `items` as fit, in one pass, and publishes them as one batch.
    ///
    /// Returns how many were pushed (0 when full). The consumer's index is read at most once (and
    /// only when the cached view has no room for all of `items`); each block the batch touches
    /// gets one stamp store. The first block's stamp is stored last: the consumer, which polls
    /// that stamp, sees the batch only once it is whole, so it never pulls a line the producer is
    /// still writing (streaming 64-byte elements in batches this way is about 1.5× faster than
    /// publishing each block as it is written).
    ///
    /// ```
    /// let mut ring = spsc_core::Ring::<u64, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// assert_eq!(tx.push_slice(&[1, 2, 3, 4, 5, 6]), 4, "only 4 fit");
    /// let mut out = [0; 8];
    /// assert_eq!(rx.pop_slice(&mut out), 4);
    /// assert_eq!(out[..4], [1, 2, 3, 4]);
    /// ```
    pub fn push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy,
    {
        // Ask only for what is offered: the consumer's index line is then read only when the
        // cached view is short of this batch, not on every call.
        let wanted = items.len().min(N) as u32;
        let count = (self.free_for(wanted) as usize).min(items.len());
        if count == 0 {
            return 0;
        }
        let ring = self.ring;
        let (first_block, offset) = Ring::<T, N>::block_and_offset(self.tail);
        // A batch that wraps all the way round into its first block again must publish in
        // order: its first stamp stored last would move that block's stamp backwards.
        let defer_first = count <= N - offset;
        let items = &items[..count];
        let run = (Geometry::<T, N>::len_of(first_block) - offset).min(count);
        // SAFETY: as in `push`, `free_for` proved these positions released by the consumer, and
        // they are unpublished, so only this producer accesses them; `run` stops at the block's
        // end.
        unsafe { ring.blocks.write_run(first_block, offset, &items[..run]) };
        let mut done = run;
        let mut position = self.tail.wrapping_add(run as u32);
        let first_end = position;
        if !defer_first {
            ring.blocks
                .stamp(first_block)
                .store(position, Ordering::Release);
        }
        let mut block = first_block;
        while done < count {
            block = Ring::<T, N>::next_block(block);
            // Whole blocks before the ring's last one: a constant-length copy and a stamp each,
            // with no per-block length arithmetic (this loop is most of a long batch's cost).
            for _ in 0..Ring::<T, N>::whole_blocks(block, count - done) {
                let end = done + Ring::<T, N>::BLOCK_LEN;
                // SAFETY: as for the first block; a whole block, inside the ring (`block` is
                // below the last block) and inside the batch (`end <= count`).
                unsafe { ring.blocks.write_run(block, 0, &items[done..end]) };
                done = end;
                position = position.wrapping_add(Ring::<T, N>::BLOCK_LEN as u32);
                ring.blocks.stamp(block).store(position, Ordering::Release);
                block += 1;
            }
            if done == count {
                break;
            }
            // The batch's last, partial block, or the ring's last block.
            let run = Geometry::<T, N>::len_of(block).min(count - done);
            // SAFETY: as for the first block; `run` stops at the block's end.
            unsafe { ring.blocks.write_run(block, 0, &items[done..done + run]) };
            done += run;
            position = position.wrapping_add(run as u32);
            ring.blocks.stamp(block).store(position, Ordering::Release);
        }
        if defer_first {
            ring.blocks
                .stamp(first_block)
                .store(first_end, Ordering::Release);
        }
        self.tail = position;
        count
    }

    /// Moves elements from `items` into the ring until it is full or the iterator ends, and
    /// publishes them together. Elements the ring had no room for stay in the iterator.
    ///
    /// Returns how many were pushed. Each element is published as soon as it is written, so if
    /// the iterator panics, the elements it yielded before are in the ring, whole and in order.
    pub fn push_iter<I: IntoIterator<Item = T>>(&mut self, items: I) -> usize {
        let free = self.free_for(N as u32);
        let mut count = 0;
        let mut items = items.into_iter();
        while count < free {
            let Some(value) = items.next() else { break };
            // Value then stamp, element by element, so a panicking iterator leaves only whole
            // elements behind. `count < free` keeps `tail` free, as `push` checks.
            self.write_and_publish(value);
            count += 1;
        }
        count as usize
    }

    /// The wrapping position (element count mod 2³²) the next push writes.
    pub const fn position(&self) -> u32 {
        self.tail
    }

    /// Free slots right now (reloads the consumer's index if the cached view says not all are free).
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

impl<T, const N: usize> Drop for Producer<'_, T, N> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Producer);
    }
}

impl<T, const N: usize> fmt::Debug for Producer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish_non_exhaustive()
    }
}

/// The reading side of a [`Ring`]. There is at most one per ring (enforced by the claim).
pub struct Consumer<'a, T, const N: usize> {
    ring: &'a Ring<T, N>,
    /// Position of the next element to read; mirrors `ring.head`, which only we write.
    head: u32,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl<'a, T, const N: usize> Consumer<'a, T, N> {
    fn attach(ring: &'a Ring<T, N>) -> Self {
        Self {
            ring,
            head: ring.head.load(Ordering::Acquire),
            _not_sync: PhantomData,
        }
    }

    /// Removes and returns the oldest element, or `None` if the ring is empty.
    ///
    /// Cost: one Acquire load of the block's stamp (the only cache line that moves), the value
    /// read, and one Release store of the consumer's own index.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        // Locals, as in `pop_slice`: fields would be re-read after the Acquire load, and the
        // element's address computed twice.
        let (ring, head) = (self.ring, self.head);
        if !ring.is_published_at(head) {
            return None;
        }
        // SAFETY: the stamp says the producer published this position (Acquire makes its write
        // visible) and it stays ours until `head` moves past it below; the value is read once.
        let value = ring
            .blocks
            .with_value(Ring::<T, N>::index(head), |cell| unsafe {
                (*cell).assume_init_read()
            });
        self.head = head.wrapping_add(1);
        ring.head.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Borrows the oldest element without removing it, or `None` if the ring is empty.
    #[inline]
    pub fn peek(&self) -> Option<&T> {
        if !self.ring.is_published_at(self.head) {
            return None;
        }
        // SAFETY: published (see `pop`); the producer cannot reuse the index until `head`
        // moves, which takes `&mut self`, so the borrow cannot outlive the value.
        Some(
            self.ring
                .blocks
                .with_value(Ring::<T, N>::index(self.head), |cell| unsafe {
                    (*cell).assume_init_ref()
                }),
        )
    }

    /// The wrapping position (element count mod 2³²) of the next element to pop.
    pub const fn position(&self) -> u32 {
        self.head
    }

    /// Number of elements ready to be read (at most `N`). Cost: one stamp read per block.
    pub fn len(&self) -> usize {
        self.ready_upto(N as u32) as usize
    }

    /// `true` if there is nothing to read right now.
    pub fn is_empty(&self) -> bool {
        !self.ring.is_published_at(self.head)
    }

    /// Counts published elements from `head`, up to `max`.
    fn ready_upto(&self, max: u32) -> u32 {
        // A local `head`: as in `pop_slice`, a field would be re-read after every Acquire load.
        let (ring, head) = (self.ring, self.head);
        let mut count = 0;
        while count < max {
            let run = ring.published_run(head.wrapping_add(count));
            if run == 0 {
                break;
            }
            count += run;
        }
        count.min(max)
    }

    /// Copies up to `out.len()` of the oldest elements into `out`, removes them, and publishes
    /// the new index once. Returns how many were copied.
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        let max = out.len().min(N);
        let mut count = 0;
        // Locals, not fields: the compiler may not move a read of `self` across an Acquire load,
        // and re-reading them for every block costs more than the copy.
        let (ring, head) = (self.ring, self.head);
        let (mut block, mut offset) = Ring::<T, N>::block_and_offset(head);
        // One pass: check a block's stamp (Acquire) and copy the published run behind it.
        while count < max {
            if offset == 0 {
                // Whole blocks before the ring's last one, while fully published: one stamp
                // check and a constant-length copy each, with no per-block length arithmetic.
                // A block found partly published is left to the general step below.
                let whole = Ring::<T, N>::whole_blocks(block, max - count);
                let mut taken = 0;
                while taken < whole {
                    let position = head.wrapping_add(count as u32);
                    let stamp = ring.blocks.stamp(block).load(Ordering::Acquire);
                    if Ring::<T, N>::ahead(stamp, position) < Ring::<T, N>::BLOCK_LEN as i32 {
                        break;
                    }
                    let end = count + Ring::<T, N>::BLOCK_LEN;
                    // SAFETY: as in the general step below, for a whole block whose stamp covers
                    // all of it.
                    unsafe { ring.blocks.read_run(block, 0, &mut out[count..end]) };
                    count = end;
                    block += 1;
                    taken += 1;
                }
                if count == max {
                    break;
                }
            }
            let position = head.wrapping_add(count as u32);
            let published = ring.published_run_at(block, offset, position);
            if published == 0 {
                break;
            }
            let in_block = Geometry::<T, N>::len_of(block) - offset;
            let run = published.min(max - count);
            // SAFETY: the stamp just read says the producer published these positions (their
            // value writes are visible), they lie in one block, and they stay ours until the
            // index is published below; `T: Copy`, so reading leaves nothing to drop.
            unsafe {
                ring.blocks
                    .read_run(block, offset, &mut out[count..count + run])
            };
            count += run;
            if run < in_block {
                break;
            }
            (block, offset) = (Ring::<T, N>::next_block(block), 0);
        }
        if count > 0 {
            self.head = self.head.wrapping_add(count as u32);
            self.ring.head.store(self.head, Ordering::Release);
        }
        count
    }

    /// Borrows up to `max` of the ready elements in place, oldest first, without removing them;
    /// [`ReadChunk::commit`] then removes some or all of them with one publication of the
    /// consumer's index. Dropping (or leaking) the chunk removes nothing.
    ///
    /// ```
    /// let mut ring = spsc_core::Ring::<String, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// tx.push_iter(["a", "b", "c"].map(String::from));
    /// let chunk = rx.read_chunk(8);
    /// assert_eq!(chunk.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
    /// chunk.commit(2); // drops "a" and "b" in place
    /// assert_eq!(rx.pop().as_deref(), Some("c"));
    /// ```
    pub fn read_chunk(&mut self, max: usize) -> ReadChunk<'_, 'a, T, N> {
        let len = self.ready_upto(u32::try_from(max).unwrap_or(u32::MAX).min(N as u32));
        ReadChunk {
            consumer: self,
            len,
        }
    }

    /// An iterator that removes up to `max` of the ready elements, oldest first, moving them out.
    ///
    /// Each element's removal is published as it is yielded, so a leaked iterator can neither
    /// make a value be dropped twice nor hold back the producer; for one publication per batch
    /// use [`pop_slice`](Self::pop_slice) or [`read_chunk`](Self::read_chunk).
    pub fn drain(&mut self, max: usize) -> Drain<'_, 'a, T, N> {
        let ready = self.ready_upto(u32::try_from(max).unwrap_or(u32::MAX).min(N as u32));
        Drain {
            end: self.head.wrapping_add(ready),
            consumer: self,
        }
    }

    /// The ring's capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T, const N: usize> Drop for Consumer<'_, T, N> {
    fn drop(&mut self) {
        self.ring.control.release(Side::Consumer);
    }
}

impl<T, const N: usize> fmt::Debug for Consumer<'_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Removes ready elements from a [`Consumer`]; see [`Consumer::drain`].
pub struct Drain<'c, 'a, T, const N: usize> {
    consumer: &'c mut Consumer<'a, T, N>,
    /// One past the last position this drain may yield (all of them were seen published).
    end: u32,
}

impl<T, const N: usize> Iterator for Drain<'_, '_, T, N> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        let position = self.consumer.head;
        if position == self.end {
            return None;
        }
        // SAFETY: `drain` saw this position published with an Acquire load, and the head has
        // not been published past it, so the value is initialised and still ours; read once.
        let value = self
            .consumer
            .ring
            .blocks
            .with_value(Ring::<T, N>::index(position), |cell| unsafe {
                (*cell).assume_init_read()
            });
        self.consumer.head = position.wrapping_add(1);
        self.consumer
            .ring
            .head
            .store(self.consumer.head, Ordering::Release);
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end.wrapping_sub(self.consumer.head) as usize;
        (left, Some(left))
    }
}

impl<T, const N: usize> ExactSizeIterator for Drain<'_, '_, T, N> {}

/// Ready elements of a [`Consumer`], borrowed in place; see [`Consumer::read_chunk`].
pub struct ReadChunk<'c, 'a, T, const N: usize> {
    consumer: &'c mut Consumer<'a, T, N>,
    /// Elements from the consumer's position on that were seen published.
    len: u32,
}

impl<'c, 'a, T, const N: usize> ReadChunk<'c, 'a, T, N> {
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
        // SAFETY: positions head..head+len were seen published (Acquire) by `read_chunk`, and
        // the producer cannot reuse them before the index moves, which needs `commit(self)`.
        Some(
            self.consumer
                .ring
                .blocks
                .with_value(Ring::<T, N>::index(position), |cell| unsafe {
                    (*cell).assume_init_ref()
                }),
        )
    }

    /// The chunk's elements, oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> + use<'_, 'c, 'a, T, N> {
        (0..self.len as usize).map(move |index| match self.get(index) {
            Some(value) => value,
            None => unreachable!("index below len"),
        })
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
                let position = consumer.head.wrapping_add(i);
                // SAFETY: published and unconsumed (see `get`); dropped once, and the index is
                // published past it right after, before anyone can read it again.
                consumer
                    .ring
                    .blocks
                    .with_value_mut(Ring::<T, N>::index(position), |cell| unsafe {
                        (*cell).assume_init_drop()
                    });
            }
        }
        consumer.head = consumer.head.wrapping_add(count);
        consumer.ring.head.store(consumer.head, Ordering::Release);
    }

    /// Removes every element of the chunk; see [`commit`](Self::commit).
    pub fn commit_all(self) {
        let len = self.len as usize;
        self.commit(len);
    }
}

impl<T, const N: usize> fmt::Debug for ReadChunk<'_, '_, T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
