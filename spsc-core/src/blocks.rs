//! Where a [`Ring`](crate::Ring) keeps its elements and stamps: the block layout.
//!
//! Elements are grouped in *blocks* of [`Geometry::LEN`] consecutive elements, each block led by
//! one stamp word. Small elements share one 64-byte cache line per block (7 `u64`s, 15 `u32`s,
//! 60 `u8`s), so publishing costs one word per line instead of one per element, and a line
//! carries nearly as many elements as a plain array would. An element too large to share a line
//! with a sibling gets a block of its own: its stamp, then the element, exactly
//! [`SlotShape<T>`].
//!
//! A ring reserves `N` slot shapes plus one spare line, which always holds the blocks: for a
//! dense layout `K · size_of::<SlotShape<T>>() >= 64` is required, so `⌈N/K⌉` lines take at
//! most `N` slot shapes plus one line (checked at compile time by [`Geometry::FITS`]).
//!
//! One-element blocks of a line or more (stamp, padding and element take 64 bytes or more, as
//! for any element larger than 56 bytes) are *spread*: in a ring of more than [`MAX_SPREAD`] of
//! them, block `b` sits in region `b % 16` of 16 equal regions, at place `b / 16` in it, so two
//! consecutive positions never share a cache line (a 68-byte block shares one with each
//! neighbour in memory, which now holds the position 16 earlier or later). A hand-off then
//! moves lines that neither side has touched for 16 messages, and on this project's earlier
//! machine (Zen 1) that took a `[u8; 64]` round trip from 1.22-1.28× the two-line floor to
//! 0.96-1.02× (0.83-0.89× in the machine's far placement, where blocks in order measured 1.20×);
//! spreading by 8 gave 1.07-1.13×. On its Zen 4 machine the walk of a 1024-slot ring past the L1
//! cache weighs more than the layout (a side experiment measured bare 72-byte stamped slots at
//! 1.79× the two-line floor in order and 1.50-1.79× spread; BENCHMARKS.md). The price is in batches: 64 consecutive positions are 16 runs of 4 blocks instead
//! of one run, so they share 16 lines with the neighbouring batches instead of one (two-thread
//! 64-byte batches went from 0.79-0.90× to 0.73-0.76× `rtrb`). Dense blocks are not spread:
//! their elements share lines by design, and their round trip is already within 1.1× the floor.
//! Nor are smaller one-element blocks (`[u8; 16]` takes 20 bytes): their round trip is already
//! within 1.15× the floor in order, while a batch's runs of 4 of them would be shorter than two
//! lines. Measured (far placement, rings of 1024, two threads): spread, `[u8; 16]` went from
//! 1.04-1.07× to 0.76-0.78× the floor but its batches from 0.79-0.82× to 0.59-0.61× `rtrb`;
//! `[u8; 32]` from 1.08-1.12× to 0.80-0.82×, batches from 0.79-0.83× to 0.70-0.73×.
//!
//! Normal builds address the blocks by byte offsets in one arena, because that is the layout
//! two processes share. Loom builds keep the same geometry but store stamps and values in two
//! arrays of loom's model types (loom's cells are not the size of what they hold); the protocol
//! code in `ring.rs` is the same for both.

use core::marker::PhantomData;
use core::mem::{self, MaybeUninit};

use crate::sync::AtomicU32;

/// The cache-line size the dense layout packs for.
pub(crate) const LINE: usize = 64;

/// Regions that consecutive one-element blocks are spread over (module docs).
pub(crate) const MAX_SPREAD: usize = 16;

/// One element in a block of its own: the stamp, then the value aligned for `T`. Its size is what
/// a ring reserves per element.
#[repr(C)]
pub(crate) struct SlotShape<T> {
    _stamp: u32,
    _value: MaybeUninit<T>,
}

/// How `N` elements of `T` are grouped into blocks.
pub(crate) struct Geometry<T, const N: usize>(PhantomData<T>);

impl<T, const N: usize> Geometry<T, N> {
    /// Offset of a block's first element from the block's start: after the `u32` stamp, aligned
    /// for `T`.
    pub(crate) const VALUE_OFFSET: usize = mem::offset_of!(SlotShape<T>, _value);

    const SLOT_SIZE: usize = mem::size_of::<SlotShape<T>>();

    /// Elements that fit in one line after the stamp (0 for zero-sized or over-aligned `T`).
    const PER_LINE: usize = if mem::size_of::<T>() == 0 || mem::align_of::<T>() > LINE {
        0
    } else {
        LINE.saturating_sub(Self::VALUE_OFFSET) / mem::size_of::<T>()
    };

    /// Whether blocks are whole lines of several elements.
    const DENSE: bool = Self::PER_LINE >= 2 && Self::PER_LINE * Self::SLOT_SIZE >= LINE;

    /// Elements per block (the last block may hold fewer: `N` need not be a multiple).
    pub(crate) const LEN: usize = if !Self::DENSE {
        1
    } else if Self::PER_LINE < N {
        Self::PER_LINE
    } else {
        N
    };

    /// Bytes from one block's start to the next.
    pub(crate) const SIZE: usize = if Self::DENSE { LINE } else { Self::SLOT_SIZE };

    /// Bytes a block spends on other than its elements (the stamp, alignment, the line's
    /// unused tail).
    #[cfg_attr(loom, allow(dead_code))] // loom's blocks address values by index
    pub(crate) const GAP: usize = Self::SIZE - Self::LEN * mem::size_of::<T>();

    /// Number of blocks.
    pub(crate) const COUNT: usize = N.div_ceil(Self::LEN);

    /// Elements in the last block (`LEN` unless `N` is not a multiple of it).
    pub(crate) const LAST_LEN: usize = N - (Self::COUNT - 1) * Self::LEN;

    /// Elements in block `block`.
    #[inline(always)]
    pub(crate) const fn len_of(block: usize) -> usize {
        if block + 1 == Self::COUNT {
            Self::LAST_LEN
        } else {
            Self::LEN
        }
    }

    /// Regions the blocks are spread over: [`MAX_SPREAD`] for one-element blocks of a line or
    /// more in a ring of more than that many, else 1 (blocks in order). Always divides `COUNT`,
    /// both being powers of two when it is above 1.
    pub(crate) const SPREAD: usize = if Self::LEN == 1 && Self::SIZE >= LINE && N > MAX_SPREAD {
        MAX_SPREAD
    } else {
        1
    };

    /// Where block `block` (`< COUNT`) sits in memory, in blocks from the first: a bijection of
    /// `0..COUNT` that puts consecutive blocks in consecutive regions (module docs).
    #[cfg_attr(loom, allow(dead_code))] // loom's blocks are indexed, not placed
    #[inline(always)]
    pub(crate) const fn place(block: usize) -> usize {
        if Self::SPREAD == 1 {
            block
        } else {
            crate::layout::spread_place(block, Self::COUNT, Self::SPREAD)
        }
    }

    /// Whether the blocks fit the arena (`N` slot shapes and a spare line).
    pub(crate) const FITS: bool = Self::COUNT * Self::SIZE <= N * Self::SLOT_SIZE + LINE;
}

/// The bytes a ring reserves for its blocks.
#[cfg(not(loom))]
#[repr(C)]
struct Arena<T, const N: usize> {
    _slots: [SlotShape<T>; N],
    _spare: [u8; LINE],
}

/// A ring's blocks: stamps and element values, laid out as [`Geometry`] says.
///
/// Every byte is inside one `UnsafeCell`, so the stamps (viewed as atomics) and the values
/// (written through raw pointers) may both be accessed through a shared reference.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct Blocks<T, const N: usize>(core::cell::UnsafeCell<MaybeUninit<Arena<T, N>>>);

#[cfg(not(loom))]
impl<T, const N: usize> Blocks<T, N> {
    /// All stamps zero: no position published.
    pub(crate) const fn new() -> Self {
        Self(core::cell::UnsafeCell::new(MaybeUninit::zeroed()))
    }

    /// Zeroes every stamp of the blocks at `blocks`; the values are left uninitialised.
    ///
    /// # Safety
    /// `blocks` must be valid for writes of `size_of::<Self>()` bytes and aligned, with no other
    /// access during the call.
    pub(crate) unsafe fn init_at(blocks: *mut Self) {
        let base = blocks.cast::<u8>();
        // Every place holds one block (`place` is a bijection), so this zeroes every stamp.
        for block in 0..Geometry::<T, N>::COUNT {
            // SAFETY: `Geometry::FITS` (asserted by every ring constructor) keeps each stamp
            // inside the arena; block starts are multiples of the block size from an arena
            // aligned at least for `u32`; the caller grants exclusive write access.
            unsafe {
                base.add(block * Geometry::<T, N>::SIZE)
                    .cast::<u32>()
                    .write(0)
            };
        }
    }

    #[inline(always)]
    fn base(&self) -> *mut u8 {
        self.0.get().cast()
    }

    /// The stamp of block `block` (`< Geometry::COUNT`).
    #[inline(always)]
    pub(crate) fn stamp(&self, block: usize) -> &AtomicU32 {
        debug_assert!(block < Geometry::<T, N>::COUNT);
        // SAFETY: in bounds (`block < COUNT`, so `place(block) < COUNT`, and `Geometry::FITS`),
        // 4-aligned (see `init_at`), inside the `UnsafeCell`, and only ever accessed atomically:
        // values never overlap a stamp, because each block's values start at
        // `VALUE_OFFSET >= 4`. Any bit pattern is a valid `AtomicU32`.
        unsafe {
            &*self
                .base()
                .add(Geometry::<T, N>::place(block) * Geometry::<T, N>::SIZE)
                .cast()
        }
    }

    /// Where the element at `offset` in block `block` lives.
    #[inline(always)]
    fn value_ptr_at(&self, block: usize, offset: usize) -> *mut MaybeUninit<T> {
        debug_assert!(block < Geometry::<T, N>::COUNT && offset < Geometry::<T, N>::len_of(block));
        let byte = Geometry::<T, N>::place(block) * Geometry::<T, N>::SIZE
            + Geometry::<T, N>::VALUE_OFFSET
            + offset * mem::size_of::<T>();
        // SAFETY: `place(block) < COUNT` like `block`, and an offset below the block's length
        // puts the value inside its block, inside the arena (`FITS`).
        unsafe { self.base().add(byte).cast() }
    }

    /// Where the element of index `index` (`< N`) lives.
    #[inline(always)]
    fn value_ptr(&self, index: usize) -> *mut MaybeUninit<T> {
        debug_assert!(index < N);
        if Geometry::<T, N>::LEN == 1 {
            // One element per block: the block is the index, and may be spread.
            return self.value_ptr_at(index, 0);
        }
        // `value_ptr_at(block, index - block * LEN)`, regrouped so the offset in the block is
        // never computed: each block adds its gap (stamp and padding) to the plain array offset.
        let block = index / Geometry::<T, N>::LEN;
        let byte = block * Geometry::<T, N>::GAP
            + index * mem::size_of::<T>()
            + Geometry::<T, N>::VALUE_OFFSET;
        debug_assert_eq!(
            self.base().wrapping_add(byte).cast(),
            self.value_ptr_at(block, index - block * Geometry::<T, N>::LEN)
        );
        // SAFETY: the same address as `value_ptr_at(block, index % LEN)`, which is in bounds.
        unsafe { self.base().add(byte).cast() }
    }

    /// Calls `f` with a pointer to the value of index `index`, for reading.
    #[inline(always)]
    pub(crate) fn with_value<R>(
        &self,
        index: usize,
        f: impl FnOnce(*const MaybeUninit<T>) -> R,
    ) -> R {
        f(self.value_ptr(index))
    }

    /// Calls `f` with a pointer to the value of index `index`, for writing.
    #[inline(always)]
    pub(crate) fn with_value_mut<R>(
        &self,
        index: usize,
        f: impl FnOnce(*mut MaybeUninit<T>) -> R,
    ) -> R {
        f(self.value_ptr(index))
    }

    /// Copies `items` into block `block` from `offset` on; they must fit in the block.
    ///
    /// # Safety
    /// The caller must have exclusive access to those values (released by the consumer, not
    /// yet published).
    #[inline(always)]
    pub(crate) unsafe fn write_run(&self, block: usize, offset: usize, items: &[T])
    where
        T: Copy,
    {
        debug_assert!(offset + items.len() <= Geometry::<T, N>::len_of(block));
        let to = self.value_ptr_at(block, offset).cast::<T>();
        // SAFETY: a block's values are contiguous `T`s, so the run stays inside the block; the
        // caller grants exclusive access; `items` is a separate borrow, so they cannot overlap.
        // A whole block is copied with a constant length, which compiles to a few moves.
        unsafe { copy_run::<T, N>(items.as_ptr(), to, items.len()) };
    }

    /// Copies block `block`'s values from `offset` on into `out`; they must be in the block.
    ///
    /// # Safety
    /// Those values must be initialised (published) and not written during the call.
    #[inline(always)]
    pub(crate) unsafe fn read_run(&self, block: usize, offset: usize, out: &mut [T])
    where
        T: Copy,
    {
        debug_assert!(offset + out.len() <= Geometry::<T, N>::len_of(block));
        let from = self.value_ptr_at(block, offset).cast::<T>();
        // SAFETY: contiguous inside one block (see `write_run`); initialised and stable per the
        // caller; `out` is a separate exclusive borrow.
        unsafe { copy_run::<T, N>(from, out.as_mut_ptr(), out.len()) };
    }
}

/// Copies `len` (at most a block's worth of) `T`s from `from` to `to`.
///
/// A whole block is copied with a constant length, which compiles to a few vector moves; only a
/// part of one (at the ends of a batch) costs a call. The two paths use different intrinsics on
/// purpose: two `copy_nonoverlapping`s would be merged into one `memcpy` call of a variable
/// length, and that call for every block costs more than the copy.
///
/// # Safety
/// As `ptr::copy_nonoverlapping` for `len` elements.
#[cfg(not(loom))]
#[inline(always)]
unsafe fn copy_run<T: Copy, const N: usize>(from: *const T, to: *mut T, len: usize) {
    if len == Geometry::<T, N>::LEN {
        // SAFETY: forwarded from the caller.
        unsafe { core::ptr::copy_nonoverlapping(from, to, Geometry::<T, N>::LEN) };
    } else {
        // A loop of constant trip count with a guard unrolls into a few compares and moves;
        // a plain `0..len` loop would become a `memcpy` call.
        for k in 0..Geometry::<T, N>::LEN {
            if k < len {
                // SAFETY: `k < len`, forwarded from the caller.
                unsafe { to.add(k).write(from.add(k).read()) };
            }
        }
    }
}

/// Loom build: the same geometry over loom's model types, so every access is tracked.
#[cfg(loom)]
pub(crate) struct Blocks<T, const N: usize> {
    stamps: [AtomicU32; N],
    values: [loom::cell::UnsafeCell<MaybeUninit<T>>; N],
}

#[cfg(loom)]
impl<T, const N: usize> Blocks<T, N> {
    pub(crate) fn new() -> Self {
        Self {
            stamps: core::array::from_fn(|_| AtomicU32::new(0)),
            values: core::array::from_fn(|_| loom::cell::UnsafeCell::new(MaybeUninit::uninit())),
        }
    }

    pub(crate) unsafe fn init_at(blocks: *mut Self) {
        // SAFETY: the caller grants exclusive write access to valid memory.
        unsafe { blocks.write(Self::new()) };
    }

    pub(crate) fn stamp(&self, block: usize) -> &AtomicU32 {
        assert!(block < Geometry::<T, N>::COUNT);
        &self.stamps[block]
    }

    pub(crate) fn with_value<R>(
        &self,
        index: usize,
        f: impl FnOnce(*const MaybeUninit<T>) -> R,
    ) -> R {
        self.values[index].with(f)
    }

    pub(crate) fn with_value_mut<R>(
        &self,
        index: usize,
        f: impl FnOnce(*mut MaybeUninit<T>) -> R,
    ) -> R {
        self.values[index].with_mut(f)
    }

    pub(crate) unsafe fn write_run(&self, block: usize, offset: usize, items: &[T])
    where
        T: Copy,
    {
        assert!(offset + items.len() <= Geometry::<T, N>::len_of(block));
        let index = block * Geometry::<T, N>::LEN + offset;
        for (k, &item) in items.iter().enumerate() {
            // SAFETY: the caller grants exclusive access to the run.
            self.with_value_mut(index + k, |cell| unsafe { (*cell).write(item) });
        }
    }

    pub(crate) unsafe fn read_run(&self, block: usize, offset: usize, out: &mut [T])
    where
        T: Copy,
    {
        assert!(offset + out.len() <= Geometry::<T, N>::len_of(block));
        let index = block * Geometry::<T, N>::LEN + offset;
        for (k, slot) in out.iter_mut().enumerate() {
            // SAFETY: the caller guarantees the run is initialised and stable.
            *slot = self.with_value(index + k, |cell| unsafe { (*cell).assume_init_read() });
        }
    }
}
