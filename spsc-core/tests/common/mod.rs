//! Helpers shared by the integration tests: owner ids, iteration counts scaled down for Miri,
//! caller-owned aligned memory, drop-counting elements, the property tests' configuration and
//! start positions, and the two element rings (`Ring` and `DenseRing`) behind one set of traits,
//! so that a test body written once runs against both.
//!
//! Also compiled into the loom models (`--cfg loom`), so it uses only what loom builds have.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use spsc_core::{
    ClaimError, Consumer, DenseConsumer, DenseProducer, DenseRing, Full, Producer, Ring,
};

pub fn owner(id: u32) -> NonZeroU32 {
    NonZeroU32::new(id).expect("owner ids in these tests are non-zero")
}

/// Iteration counts shrink under Miri, which runs every operation thousands of times slower.
pub fn scaled<N>(normal: N, miri: N) -> N {
    if cfg!(miri) {
        miri
    } else {
        normal
    }
}

/// The property tests' configuration: 256 cases, 4 under Miri (which also gets no regression
/// files: its isolation forbids the file access).
pub fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: if cfg!(miri) {
            None
        } else {
            ProptestConfig::default().failure_persistence
        },
        ..ProptestConfig::default()
    }
}

/// Where a property test's positions start: at zero, near the `u32` wrap, anywhere.
pub fn start_position() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), u32::MAX - 40..=u32::MAX, any::<u32>()]
}

/// A 128-byte line: a `Vec` of them is memory aligned as the rings need.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
pub struct Line(pub [u8; 128]);

/// Caller-owned, zeroed, 128-aligned memory to initialise rings in.
pub struct Region {
    lines: Vec<Line>,
}

impl Region {
    pub fn new(bytes: usize) -> Self {
        Self {
            lines: vec![Line([0; 128]); bytes.div_ceil(128)],
        }
    }

    pub fn len(&self) -> usize {
        self.lines.len() * 128
    }

    pub fn base(&mut self) -> NonNull<u8> {
        NonNull::new(self.lines.as_mut_ptr().cast::<u8>()).expect("Vec pointers are non-null")
    }

    /// The region's first 128 bytes, where every ring keeps its header.
    pub fn first_line(&mut self) -> &mut [u8; 128] {
        &mut self.lines[0].0
    }

    /// Writes `value` at byte `offset` (4-aligned, inside the region).
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        assert!(offset + 4 <= self.len() && offset.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked above); the region is exclusively borrowed.
        unsafe { self.base().as_ptr().add(offset).cast::<u32>().write(value) };
    }
}

/// An element that counts its drops in a per-test table: a double drop shows up as a count of 2
/// rather than as undefined behaviour, so the check works for any bug.
#[derive(Debug)]
pub struct Tracked<'t> {
    pub id: usize,
    pub drops: &'t [AtomicUsize],
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.drops[self.id].fetch_add(1, Ordering::Relaxed);
    }
}

pub fn drop_table(len: usize) -> Vec<AtomicUsize> {
    (0..len).map(|_| AtomicUsize::new(0)).collect()
}

pub fn drop_counts(table: &[AtomicUsize]) -> Vec<usize> {
    table.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// An element ring as the shared test bodies use it: `Ring` and `DenseRing` alike.
pub trait ElementRing<T>: Sync + Sized {
    type Producer<'a>: ElementProducer<T>
    where
        Self: 'a;
    type Consumer<'a>: ElementConsumer<T>
    where
        Self: 'a;
    /// A new, empty ring on the heap.
    fn boxed() -> Box<Self>;
    fn claim_producer(&self, owner: NonZeroU32) -> Result<Self::Producer<'_>, ClaimError>;
    fn claim_consumer(&self, owner: NonZeroU32) -> Result<Self::Consumer<'_>, ClaimError>;
    /// # Safety
    /// As the rings' `take_over_producer`: `dead` never touches the ring again.
    unsafe fn take_over_producer(
        &self,
        dead: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<Self::Producer<'_>, ClaimError>;
    /// # Safety
    /// As the rings' `take_over_consumer`: `dead` never touches the ring again.
    unsafe fn take_over_consumer(
        &self,
        dead: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<Self::Consumer<'_>, ClaimError>;
    fn holders(&self) -> (u32, u32);
}

/// The producer calls of both element rings.
pub trait ElementProducer<T> {
    fn push(&mut self, value: T) -> Result<(), Full<T>>;
    fn push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy;
    fn push_iter<I: IntoIterator<Item = T>>(&mut self, items: I) -> usize;
    fn position(&self) -> u32;
}

/// The consumer calls of both element rings.
pub trait ElementConsumer<T> {
    fn position(&self) -> u32;
    fn pop(&mut self) -> Option<T>;
    fn peek(&self) -> Option<&T>;
    fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy;
    /// Looks at up to `max` ready elements through the ring's in-place batch read (a `drain` of
    /// a `Ring`, a read chunk of a `DenseRing`, read as its two slices), hands the first half
    /// (rounded up) of them to `each` and removes only those: the rest stay for the next read.
    /// Returns how many were removed.
    fn take_half(&mut self, max: usize, each: impl FnMut(T)) -> usize
    where
        T: Copy;
}

/// Implements [`ElementRing`] and the handle traits by forwarding to each type's own methods.
macro_rules! element_ring {
    ($ring:ident, $producer:ident, $consumer:ident) => {
        impl<T: Send, const N: usize> ElementRing<T> for $ring<T, N> {
            type Producer<'a>
                = $producer<'a, T, N>
            where
                Self: 'a;
            type Consumer<'a>
                = $consumer<'a, T, N>
            where
                Self: 'a;
            fn boxed() -> Box<Self> {
                Box::new($ring::new())
            }
            fn claim_producer(&self, owner: NonZeroU32) -> Result<Self::Producer<'_>, ClaimError> {
                $ring::claim_producer(self, owner)
            }
            fn claim_consumer(&self, owner: NonZeroU32) -> Result<Self::Consumer<'_>, ClaimError> {
                $ring::claim_consumer(self, owner)
            }
            unsafe fn take_over_producer(
                &self,
                dead: NonZeroU32,
                owner: NonZeroU32,
            ) -> Result<Self::Producer<'_>, ClaimError> {
                // SAFETY: forwarded from the caller.
                unsafe { $ring::take_over_producer(self, dead, owner) }
            }
            unsafe fn take_over_consumer(
                &self,
                dead: NonZeroU32,
                owner: NonZeroU32,
            ) -> Result<Self::Consumer<'_>, ClaimError> {
                // SAFETY: forwarded from the caller.
                unsafe { $ring::take_over_consumer(self, dead, owner) }
            }
            fn holders(&self) -> (u32, u32) {
                $ring::holders(self)
            }
        }

        impl<T, const N: usize> ElementProducer<T> for $producer<'_, T, N> {
            fn push(&mut self, value: T) -> Result<(), Full<T>> {
                $producer::push(self, value)
            }
            fn push_slice(&mut self, items: &[T]) -> usize
            where
                T: Copy,
            {
                $producer::push_slice(self, items)
            }
            fn push_iter<I: IntoIterator<Item = T>>(&mut self, items: I) -> usize {
                $producer::push_iter(self, items)
            }
            fn position(&self) -> u32 {
                $producer::position(self)
            }
        }
    };
}

element_ring!(Ring, Producer, Consumer);
element_ring!(DenseRing, DenseProducer, DenseConsumer);

impl<T, const N: usize> ElementConsumer<T> for Consumer<'_, T, N> {
    fn position(&self) -> u32 {
        Consumer::position(self)
    }
    fn pop(&mut self) -> Option<T> {
        Consumer::pop(self)
    }
    fn peek(&self) -> Option<&T> {
        Consumer::peek(self)
    }
    fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        Consumer::pop_slice(self, out)
    }
    fn take_half(&mut self, max: usize, each: impl FnMut(T)) -> usize
    where
        T: Copy,
    {
        // A drain stopped early publishes only what it yielded.
        let mut drain = self.drain(max);
        let take = drain.len().div_ceil(2);
        drain.by_ref().take(take).for_each(each);
        take
    }
}

impl<T, const N: usize> ElementConsumer<T> for DenseConsumer<'_, T, N> {
    fn position(&self) -> u32 {
        DenseConsumer::position(self)
    }
    fn pop(&mut self) -> Option<T> {
        DenseConsumer::pop(self)
    }
    fn peek(&self) -> Option<&T> {
        DenseConsumer::peek(self)
    }
    fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        DenseConsumer::pop_slice(self, out)
    }
    fn take_half(&mut self, max: usize, mut each: impl FnMut(T)) -> usize
    where
        T: Copy,
    {
        let chunk = self.read_chunk(max);
        let take = chunk.len().div_ceil(2);
        // Loom builds have no `as_slices` (their cells are not an array): read one by one.
        #[cfg(not(loom))]
        {
            let (first, second) = chunk.as_slices();
            first.iter().chain(second).take(take).for_each(|&v| each(v));
        }
        #[cfg(loom)]
        (0..take).for_each(|i| each(*chunk.get(i).expect("below the chunk's length")));
        chunk.commit(take);
        take
    }
}
