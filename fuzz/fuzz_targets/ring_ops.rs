//! Arbitrary sequences of producer and consumer operations on a `Ring<_, 8>` and on a
//! `DenseRing<_, 8>`, each checked step by step against a `VecDeque` model: every result must
//! match the model exactly.
//!
//! Both rings run the same sequence with three element types: `u32` (for `Ring`, one block holds
//! the whole ring; it also exercises the `Copy`-only batch calls), `Wide` (three to a block in
//! `Ring`, so batches span blocks), and `Counted`, whose live instances are counted so a leak or
//! double drop (in the ring, in `drain` or `commit`, or when the ring is dropped with elements
//! left) is caught. The ring starts at an arbitrary position so the `u32` position counters wrap
//! within a run, and each handle's `position` is checked against the model's count.
//!
//! `DenseRing` has no `Drain`: `Drain` maps onto `read_chunk` + `commit` (`commit_all` when all
//! of the chunk is taken), and `DrainForget` onto a commit followed by a leaked second chunk
//! (which must remove nothing). Its read chunks are also checked as slices: `as_slices`,
//! concatenated, must equal the model's front, split exactly at the ring's end. `PushInPlace`
//! writes through a dense write chunk's two slices and commits what it wrote (`Ring`, which has
//! no write chunks, pushes as many through `push_iter`).
#![no_main]

use std::cell::Cell;
use std::collections::VecDeque;
use std::num::NonZeroU32;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spsc_core::{
    ClaimError, Consumer, DenseConsumer, DenseProducer, DenseRing, Full, Producer, Ring,
};

const N: usize = 8;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Push(u32),
    PushSlice(Vec<u32>),
    /// Offers `count` values; the ones that do not fit must stay in the iterator.
    PushIter {
        count: u8,
    },
    /// Offers `count` values to be written in place into at most `max` slots (a write chunk of
    /// the dense ring, `push_iter` of that many for `Ring`); the rest stay in the iterator.
    PushInPlace {
        max: u8,
        count: u8,
    },
    Pop,
    Peek,
    PopSlice {
        len: u8,
    },
    /// Drains up to `max`, consumes `take` of them, drops the iterator (`DenseRing`: reads a
    /// chunk of up to `max` and commits `take` of them).
    Drain {
        max: u8,
        take: u8,
    },
    /// As `Drain`, then leaks the iterator (`mem::forget` is safe): what it yielded was moved
    /// out and must never be read (delivered or dropped) again (`DenseRing`: as `Drain`, then
    /// leaks a second chunk, which must remove nothing).
    DrainForget {
        max: u8,
        take: u8,
    },
    /// Borrows up to `max` elements in place, checks them, commits `commit` of them (dropping
    /// them in place), or leaks the chunk when `leak` (which must remove nothing).
    ReadChunk {
        max: u8,
        commit: u8,
        leak: bool,
    },
    Len,
    FreeLen,
    DropProducer,
    ClaimProducer,
    /// Leaks the producer handle (its claim stays recorded) and takes the side over.
    ForgetAndTakeOverProducer,
    DropConsumer,
    ClaimConsumer,
    ForgetAndTakeOverConsumer,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Consumer index the ring starts at (the ring is empty, as if `start` elements had passed).
    start: u32,
    owner: NonZeroU32,
    ops: Vec<Op>,
}

thread_local! {
    /// Live `Counted` instances.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// An element that counts its live instances.
#[derive(Debug)]
struct Counted(u32);

impl Counted {
    fn new(value: u32) -> Self {
        LIVE.with(|l| l.set(l.get() + 1));
        Self(value)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

/// What the harness needs from an element type; `u32` and `Wide` use the real batch calls.
trait Elem: Sized {
    fn make(value: u32) -> Self;
    fn value(&self) -> u32;
    fn push_slice(producer: &mut impl Tx<Self>, values: &[u32]) -> usize {
        let mut iter = values.iter().map(|&v| Self::make(v));
        producer.push_iter(&mut iter)
    }
    fn pop_slice(consumer: &mut impl Rx<Self>, len: usize) -> Vec<u32> {
        consumer.take(len)
    }
    /// Live instances that must exist when the ring holds `queued` elements (`None`: not counted).
    fn expected_live(queued: usize) -> Option<isize>;
}

impl Elem for u32 {
    fn make(value: u32) -> Self {
        value
    }
    fn value(&self) -> u32 {
        *self
    }
    fn push_slice(producer: &mut impl Tx<Self>, values: &[u32]) -> usize {
        producer.push_slice(values)
    }
    fn pop_slice(consumer: &mut impl Rx<Self>, len: usize) -> Vec<u32> {
        let mut out = vec![0xDEAD_BEEF; len];
        let n = consumer.pop_slice(&mut out);
        assert!(n <= len);
        assert!(
            out[n..].iter().all(|&v| v == 0xDEAD_BEEF),
            "pop_slice wrote past the count it returned"
        );
        out.truncate(n);
        out
    }
    fn expected_live(_: usize) -> Option<isize> {
        None
    }
}

/// Three to a block in `Ring` (blocks of 3, 3 and 2): batches that start mid-block, span blocks
/// and wrap.
type Wide = [u32; 5];

impl Elem for Wide {
    fn make(value: u32) -> Self {
        [value, !value, value, !value, value]
    }
    fn value(&self) -> u32 {
        assert_eq!(*self, Self::make(self[0]), "an element was torn");
        self[0]
    }
    fn push_slice(producer: &mut impl Tx<Self>, values: &[u32]) -> usize {
        let wide: Vec<Wide> = values.iter().map(|&v| Self::make(v)).collect();
        producer.push_slice(&wide)
    }
    fn pop_slice(consumer: &mut impl Rx<Self>, len: usize) -> Vec<u32> {
        let mut out = vec![[0xDEAD_BEEF; 5]; len];
        let n = consumer.pop_slice(&mut out);
        assert!(n <= len);
        assert!(
            out[n..].iter().all(|&v| v == [0xDEAD_BEEF; 5]),
            "pop_slice wrote past the count it returned"
        );
        out[..n].iter().map(Self::value).collect()
    }
    fn expected_live(_: usize) -> Option<isize> {
        None
    }
}

impl Elem for Counted {
    fn make(value: u32) -> Self {
        Counted::new(value)
    }
    fn value(&self) -> u32 {
        self.0
    }
    fn expected_live(queued: usize) -> Option<isize> {
        Some(queued as isize)
    }
}

/// A ring type under test, `Ring<T, N>` or `DenseRing<T, N>`: what the harness does with the ring
/// itself.
trait Harness: Sized {
    type Elem: Elem;
    type Tx<'a>: Tx<Self::Elem>
    where
        Self: 'a;
    type Rx<'a>: Rx<Self::Elem>
    where
        Self: 'a;

    /// A fresh ring on the heap in the state "empty, consumer index `start`", as it would be after
    /// `start` pushes and pops.
    fn at(start: u32) -> *mut Self;
    fn claim_producer(&self, owner: NonZeroU32) -> Result<Self::Tx<'_>, ClaimError>;
    fn claim_consumer(&self, owner: NonZeroU32) -> Result<Self::Rx<'_>, ClaimError>;
    /// # Safety
    /// As the ring's own `take_over_producer`: `dead` never touches the ring again.
    unsafe fn take_over_producer(
        &self,
        dead: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<Self::Tx<'_>, ClaimError>;
    /// # Safety
    /// As the ring's own `take_over_consumer`: `dead` never touches the ring again.
    unsafe fn take_over_consumer(
        &self,
        dead: NonZeroU32,
        owner: NonZeroU32,
    ) -> Result<Self::Rx<'_>, ClaimError>;
    fn holders(&self) -> (u32, u32);
}

/// The producer calls the harness makes (the same on both rings' handles, but for the in-place
/// write of [`InPlace`]).
trait Tx<T>: InPlace<T> {
    fn push(&mut self, value: T) -> Result<(), Full<T>>;
    fn push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy;
    fn push_iter(&mut self, items: impl Iterator<Item = T>) -> usize;
    fn free_len(&mut self) -> usize;
    fn is_full(&mut self) -> bool;
    fn capacity(&self) -> usize;
    fn position(&self) -> u32;
}

/// The consumer calls the harness makes; the in-place reads, which differ between the rings, as
/// whole operations checked against the model.
trait Rx<T: Elem> {
    fn pop(&mut self) -> Option<T>;
    fn peek(&self) -> Option<&T>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool;
    fn position(&self) -> u32;
    fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy;
    /// Moves up to `len` elements out in one batch (the path for element types that are not
    /// `Copy`) and returns their values.
    fn take(&mut self, len: usize) -> Vec<u32>;
    /// [`Op::Drain`].
    fn drain_op(&mut self, max: usize, take: usize, model: &mut VecDeque<u32>);
    /// [`Op::DrainForget`].
    fn drain_forget_op(&mut self, max: usize, take: usize, model: &mut VecDeque<u32>);
    /// [`Op::ReadChunk`].
    fn read_chunk_op(&mut self, max: usize, commit: usize, leak: bool, model: &mut VecDeque<u32>);
}

/// The claim calls of [`Harness`], forwarded to the ring's own methods of the same names.
macro_rules! forward_claims {
    ($ring:ident) => {
        fn claim_producer(&self, owner: NonZeroU32) -> Result<Self::Tx<'_>, ClaimError> {
            $ring::claim_producer(self, owner)
        }
        fn claim_consumer(&self, owner: NonZeroU32) -> Result<Self::Rx<'_>, ClaimError> {
            $ring::claim_consumer(self, owner)
        }
        unsafe fn take_over_producer(
            &self,
            dead: NonZeroU32,
            owner: NonZeroU32,
        ) -> Result<Self::Tx<'_>, ClaimError> {
            // SAFETY: forwarded from the caller.
            unsafe { $ring::take_over_producer(self, dead, owner) }
        }
        unsafe fn take_over_consumer(
            &self,
            dead: NonZeroU32,
            owner: NonZeroU32,
        ) -> Result<Self::Rx<'_>, ClaimError> {
            // SAFETY: forwarded from the caller.
            unsafe { $ring::take_over_consumer(self, dead, owner) }
        }
        fn holders(&self) -> (u32, u32) {
            $ring::holders(self)
        }
    };
}

impl<T: Elem> Harness for Ring<T, N> {
    type Elem = T;
    type Tx<'a>
        = Producer<'a, T, N>
    where
        Self: 'a;
    type Rx<'a>
        = Consumer<'a, T, N>
    where
        Self: 'a;

    /// Every block's stamp is one past the last position of the previous lap (all consumed) that
    /// it held.
    fn at(start: u32) -> *mut Self {
        let ring = Box::into_raw(Box::new(Ring::<T, N>::new()));
        let layout = Ring::<T, N>::LAYOUT;
        let base = ring.cast::<u8>();
        // SAFETY: no reference to the ring exists yet; the offsets come from the ring's own
        // recorded layout (head at 128, each block's stamp at `block_offset`) and are in bounds of
        // the allocation; all written words are atomics' u32 representation.
        unsafe {
            base.add(128).cast::<u32>().write(start);
            // Oldest first, so each block keeps the stamp of its latest position.
            for back in (1..=N as u32).rev() {
                let position = start.wrapping_sub(back);
                let block = (position as usize % N) / layout.block_len as usize;
                let stamp = base.add(layout.block_offset(block as u32)).cast::<u32>();
                stamp.write(position.wrapping_add(1));
            }
        }
        ring
    }
    forward_claims!(Ring);
}

impl<T: Elem> Harness for DenseRing<T, N> {
    type Elem = T;
    type Tx<'a>
        = DenseProducer<'a, T, N>
    where
        Self: 'a;
    type Rx<'a>
        = DenseConsumer<'a, T, N>
    where
        Self: 'a;

    /// Both index words hold `start`.
    fn at(start: u32) -> *mut Self {
        let ring = Box::into_raw(Box::new(DenseRing::<T, N>::new()));
        let base = ring.cast::<u8>();
        // SAFETY: no reference to the ring exists yet; the consumer's index word is at 128 and
        // the producer's at 256 (locked by the crate's layout assertions), in bounds of the
        // allocation and aligned; both are atomics' u32 representation.
        unsafe {
            base.add(128).cast::<u32>().write(start);
            base.add(256).cast::<u32>().write(start);
        }
        ring
    }
    forward_claims!(DenseRing);
}

/// Both producers' calls have the same names and meaning: one body for both.
macro_rules! impl_tx {
    ($producer:ident) => {
        impl<T> Tx<T> for $producer<'_, T, N> {
            fn push(&mut self, value: T) -> Result<(), Full<T>> {
                $producer::push(self, value)
            }
            fn push_slice(&mut self, items: &[T]) -> usize
            where
                T: Copy,
            {
                $producer::push_slice(self, items)
            }
            fn push_iter(&mut self, items: impl Iterator<Item = T>) -> usize {
                $producer::push_iter(self, items)
            }
            fn free_len(&mut self) -> usize {
                $producer::free_len(self)
            }
            fn is_full(&mut self) -> bool {
                $producer::is_full(self)
            }
            fn capacity(&self) -> usize {
                $producer::capacity(self)
            }
            fn position(&self) -> u32 {
                $producer::position(self)
            }
        }
    };
}

impl_tx!(Producer);
impl_tx!(DenseProducer);

impl<T> InPlace<T> for Producer<'_, T, N> {
    /// `Ring` has no write chunks: the same number of elements through `push_iter`.
    fn push_in_place(&mut self, max: usize, items: &mut dyn Iterator<Item = T>) -> usize {
        Producer::push_iter(self, items.take(max))
    }
}

impl<T> InPlace<T> for DenseProducer<'_, T, N> {
    /// A write chunk of `max` slots, written through its two slices (stopping early when the
    /// iterator ends) and committed for what was written.
    fn push_in_place(&mut self, max: usize, items: &mut dyn Iterator<Item = T>) -> usize {
        let mut chunk = self.write_chunk(max);
        let (first, second) = chunk.as_mut_slices();
        let mut written = 0;
        for slot in first.iter_mut().chain(second.iter_mut()) {
            let Some(value) = items.next() else { break };
            slot.write(value);
            written += 1;
        }
        // SAFETY: the loop initialised exactly the chunk's first `written` slots.
        unsafe { chunk.commit(written) };
        written
    }
}

/// The in-place write, which differs between the rings: [`Op::PushInPlace`].
trait InPlace<T> {
    fn push_in_place(&mut self, max: usize, items: &mut dyn Iterator<Item = T>) -> usize;
}

impl<T: Elem> Rx<T> for Consumer<'_, T, N> {
    fn pop(&mut self) -> Option<T> {
        Consumer::pop(self)
    }
    fn peek(&self) -> Option<&T> {
        Consumer::peek(self)
    }
    fn len(&self) -> usize {
        Consumer::len(self)
    }
    fn is_empty(&self) -> bool {
        Consumer::is_empty(self)
    }
    fn position(&self) -> u32 {
        Consumer::position(self)
    }
    fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        Consumer::pop_slice(self, out)
    }
    fn take(&mut self, len: usize) -> Vec<u32> {
        self.drain(len).map(|v| v.value()).collect()
    }
    fn drain_op(&mut self, max: usize, take: usize, model: &mut VecDeque<u32>) {
        let ready = max.min(model.len());
        let mut drain = self.drain(max);
        assert_eq!(drain.len(), ready, "drain length");
        for _ in 0..take {
            match drain.next() {
                Some(v) => assert_eq!(Some(v.value()), model.pop_front(), "drain"),
                None => break,
            }
        }
        let left = drain.len();
        assert!(drain.size_hint() == (left, Some(left)));
        // `Drain` has no `Drop` (it publishes as it yields); the drop only ends the borrow.
        #[allow(clippy::drop_non_drop)]
        drop(drain);
        // Unconsumed elements stay in the ring.
        assert_eq!(self.len(), model.len(), "len after partial drain");
    }
    fn drain_forget_op(&mut self, max: usize, take: usize, model: &mut VecDeque<u32>) {
        let mut drain = self.drain(max);
        for _ in 0..take {
            match drain.next() {
                Some(v) => assert_eq!(Some(v.value()), model.pop_front(), "drain"),
                None => break,
            }
        }
        // Leaking must be as harmless as dropping: `Drain` publishes as it yields.
        #[allow(clippy::forget_non_drop)]
        std::mem::forget(drain);
        assert_eq!(
            self.peek().map(Elem::value),
            model.front().copied(),
            "consumer after a forgotten drain"
        );
    }
    fn read_chunk_op(&mut self, max: usize, commit: usize, leak: bool, model: &mut VecDeque<u32>) {
        let chunk = self.read_chunk(max);
        assert_eq!(chunk.len(), max.min(model.len()), "chunk length");
        for (i, v) in chunk.iter().enumerate() {
            assert_eq!(Some(v.value()), model.get(i).copied(), "chunk element {i}");
        }
        assert!(chunk.get(chunk.len()).is_none(), "element past the end");
        if leak {
            // A leaked chunk must commit nothing.
            #[allow(clippy::forget_non_drop)]
            std::mem::forget(chunk);
        } else {
            let removed = commit.min(chunk.len());
            chunk.commit(commit);
            model.drain(..removed);
        }
        assert_eq!(self.len(), model.len(), "len after a read chunk");
    }
}

impl<T: Elem> Rx<T> for DenseConsumer<'_, T, N> {
    fn pop(&mut self) -> Option<T> {
        DenseConsumer::pop(self)
    }
    fn peek(&self) -> Option<&T> {
        DenseConsumer::peek(self)
    }
    fn len(&self) -> usize {
        DenseConsumer::len(self)
    }
    fn is_empty(&self) -> bool {
        DenseConsumer::is_empty(self)
    }
    fn position(&self) -> u32 {
        DenseConsumer::position(self)
    }
    fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        DenseConsumer::pop_slice(self, out)
    }
    fn take(&mut self, len: usize) -> Vec<u32> {
        let chunk = self.read_chunk(len);
        let values = (0..chunk.len())
            .map(|i| chunk.get(i).expect("inside the chunk").value())
            .collect();
        chunk.commit_all();
        values
    }
    fn drain_op(&mut self, max: usize, take: usize, model: &mut VecDeque<u32>) {
        let chunk = dense_chunk(self, max, model);
        let removed = take.min(chunk.len());
        if removed == chunk.len() {
            chunk.commit_all();
        } else {
            chunk.commit(take);
        }
        model.drain(..removed);
        assert_eq!(self.len(), model.len(), "len after a commit");
    }
    fn drain_forget_op(&mut self, max: usize, take: usize, model: &mut VecDeque<u32>) {
        let chunk = dense_chunk(self, max, model);
        let removed = take.min(chunk.len());
        chunk.commit(take);
        model.drain(..removed);
        // A leaked chunk must remove nothing (it has no `Drop`: commits are explicit).
        #[allow(clippy::forget_non_drop)]
        std::mem::forget(dense_chunk(self, max, model));
        assert_eq!(
            self.peek().map(Elem::value),
            model.front().copied(),
            "consumer after a leaked chunk"
        );
        assert_eq!(self.len(), model.len(), "len after a leaked chunk");
    }
    fn read_chunk_op(&mut self, max: usize, commit: usize, leak: bool, model: &mut VecDeque<u32>) {
        let chunk = dense_chunk(self, max, model);
        if leak {
            // A leaked chunk must commit nothing.
            #[allow(clippy::forget_non_drop)]
            std::mem::forget(chunk);
        } else {
            let removed = commit.min(chunk.len());
            chunk.commit(commit);
            model.drain(..removed);
        }
        assert_eq!(self.len(), model.len(), "len after a read chunk");
    }
}

/// `read_chunk(max)` on a dense ring, checked against the model: its length, each element by
/// `get`, and `as_slices`, which must hold the model's front in order, split at the ring's end.
fn dense_chunk<'c, 'a, T: Elem>(
    consumer: &'c mut DenseConsumer<'a, T, N>,
    max: usize,
    model: &VecDeque<u32>,
) -> spsc_core::DenseReadChunk<'c, 'a, T, N> {
    let index = consumer.position() as usize % N;
    let chunk = consumer.read_chunk(max);
    let len = max.min(model.len());
    assert_eq!(chunk.len(), len, "chunk length");
    assert_eq!(chunk.is_empty(), len == 0);
    for i in 0..len {
        let got = chunk.get(i).map(Elem::value);
        assert_eq!(got, model.get(i).copied(), "chunk element {i}");
    }
    assert!(chunk.get(len).is_none(), "element past the end");
    let (first, second) = chunk.as_slices();
    assert_eq!(first.len(), len.min(N - index), "split at the end");
    let values: Vec<u32> = first.iter().chain(second).map(Elem::value).collect();
    assert!(values.iter().eq(model.iter().take(len)), "as_slices");
    chunk
}

fn run<R: Harness>(input: &Input) {
    let raw = R::at(input.start);
    // SAFETY: `raw` is a live, initialised ring from `Box::into_raw`; freed only at the end,
    // after every handle borrowing it is gone.
    let ring: &R = unsafe { &*raw };
    let owner = input.owner;
    let other = NonZeroU32::new(owner.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
    let mut model: VecDeque<u32> = VecDeque::new();
    // Elements popped so far: the consumer's position is `start + popped`.
    let mut popped = 0u32;
    let mut next = 0u32;
    let mut fresh = || {
        next = next.wrapping_add(1);
        next
    };

    let mut tx = Some(ring.claim_producer(owner).expect("fresh producer claim"));
    let mut rx = Some(ring.claim_consumer(owner).expect("fresh consumer claim"));
    assert_eq!(ring.holders(), (owner.get(), owner.get()));

    for op in &input.ops {
        let queued = model.len();
        match op {
            Op::Push(v) => {
                if let Some(tx) = tx.as_mut() {
                    match tx.push(R::Elem::make(*v)) {
                        Ok(()) => {
                            assert!(model.len() < N, "push succeeded on a full ring");
                            model.push_back(*v);
                        }
                        Err(Full(back)) => {
                            assert_eq!(model.len(), N, "push said Full with room left");
                            assert_eq!(back.value(), *v, "Full handed back another value");
                        }
                    }
                }
            }
            Op::PushSlice(values) => {
                if let Some(tx) = tx.as_mut() {
                    let n = R::Elem::push_slice(tx, values);
                    assert_eq!(n, values.len().min(N - model.len()), "push_slice count");
                    model.extend(&values[..n]);
                }
            }
            Op::PushIter { count } => {
                if let Some(tx) = tx.as_mut() {
                    let values: Vec<u32> = (0..*count).map(|_| fresh()).collect();
                    let mut iter = values.iter().map(|&v| R::Elem::make(v));
                    let n = tx.push_iter(&mut iter);
                    assert_eq!(n, values.len().min(N - model.len()), "push_iter count");
                    // Whatever did not fit is still in the iterator, in order.
                    let rest: Vec<u32> = iter.map(|v| v.value()).collect();
                    assert_eq!(rest, values[n..], "push_iter consumed unpushed items");
                    model.extend(&values[..n]);
                }
            }
            Op::PushInPlace { max, count } => {
                if let Some(tx) = tx.as_mut() {
                    let values: Vec<u32> = (0..*count).map(|_| fresh()).collect();
                    let mut iter = values.iter().map(|&v| R::Elem::make(v));
                    let n = tx.push_in_place(usize::from(*max), &mut iter);
                    let expected = values.len().min(usize::from(*max)).min(N - model.len());
                    assert_eq!(n, expected, "push_in_place count");
                    let rest: Vec<u32> = iter.map(|v| v.value()).collect();
                    assert_eq!(rest, values[n..], "push_in_place consumed unpushed items");
                    model.extend(&values[..n]);
                }
            }
            Op::Pop => {
                if let Some(rx) = rx.as_mut() {
                    assert_eq!(rx.pop().map(|v| v.value()), model.pop_front(), "pop");
                }
            }
            Op::Peek => {
                if let Some(rx) = rx.as_ref() {
                    assert_eq!(rx.peek().map(Elem::value), model.front().copied(), "peek");
                    assert_eq!(rx.is_empty(), model.is_empty(), "is_empty");
                }
            }
            Op::PopSlice { len } => {
                if let Some(rx) = rx.as_mut() {
                    let got = R::Elem::pop_slice(rx, usize::from(*len));
                    let want: Vec<u32> =
                        model.drain(..usize::from(*len).min(model.len())).collect();
                    assert_eq!(got, want, "pop_slice");
                }
            }
            Op::Drain { max, take } => {
                if let Some(rx) = rx.as_mut() {
                    rx.drain_op(usize::from(*max), usize::from(*take), &mut model);
                }
            }
            Op::DrainForget { max, take } => {
                if let Some(rx) = rx.as_mut() {
                    rx.drain_forget_op(usize::from(*max), usize::from(*take), &mut model);
                }
            }
            Op::ReadChunk { max, commit, leak } => {
                if let Some(rx) = rx.as_mut() {
                    rx.read_chunk_op(usize::from(*max), usize::from(*commit), *leak, &mut model);
                }
            }
            Op::Len => {
                if let Some(rx) = rx.as_ref() {
                    assert_eq!(rx.len(), model.len(), "len");
                }
                if let Some(tx) = tx.as_mut() {
                    assert_eq!(tx.is_full(), model.len() == N, "is_full");
                }
            }
            Op::FreeLen => {
                if let Some(tx) = tx.as_mut() {
                    assert_eq!(tx.free_len(), N - model.len(), "free_len");
                    assert_eq!(tx.capacity(), N);
                }
            }
            Op::DropProducer => {
                if tx.take().is_some() {
                    assert_eq!(
                        ring.holders().0,
                        0,
                        "dropped producer still holds its claim"
                    );
                }
            }
            Op::ClaimProducer => match ring.claim_producer(other) {
                Ok(handle) => {
                    assert!(tx.is_none(), "two producers claimed");
                    tx = Some(handle);
                    assert_eq!(ring.holders().0, other.get());
                }
                Err(ClaimError::Taken { owner: held }) => {
                    assert!(tx.is_some(), "claim refused on a free producer side");
                    assert_eq!(held, ring.holders().0);
                }
                Err(e) => panic!("unexpected claim error {e:?}"),
            },
            Op::ForgetAndTakeOverProducer => {
                if let Some(handle) = tx.take() {
                    let dead = NonZeroU32::new(ring.holders().0).expect("held side has an owner");
                    std::mem::forget(handle);
                    assert!(ring.claim_producer(owner).is_err(), "leaked claim was lost");
                    // SAFETY: the forgotten handle is never used again.
                    tx = Some(unsafe { ring.take_over_producer(dead, owner) }.expect("take over"));
                    assert_eq!(ring.holders().0, owner.get());
                }
            }
            Op::DropConsumer => {
                if rx.take().is_some() {
                    assert_eq!(
                        ring.holders().1,
                        0,
                        "dropped consumer still holds its claim"
                    );
                }
            }
            Op::ClaimConsumer => match ring.claim_consumer(other) {
                Ok(handle) => {
                    assert!(rx.is_none(), "two consumers claimed");
                    rx = Some(handle);
                    assert_eq!(ring.holders().1, other.get());
                }
                Err(ClaimError::Taken { owner: held }) => {
                    assert!(rx.is_some(), "claim refused on a free consumer side");
                    assert_eq!(held, ring.holders().1);
                }
                Err(e) => panic!("unexpected claim error {e:?}"),
            },
            Op::ForgetAndTakeOverConsumer => {
                if let Some(handle) = rx.take() {
                    let dead = NonZeroU32::new(ring.holders().1).expect("held side has an owner");
                    std::mem::forget(handle);
                    assert!(ring.claim_consumer(owner).is_err(), "leaked claim was lost");
                    // SAFETY: the forgotten handle is never used again.
                    rx = Some(unsafe { ring.take_over_consumer(dead, owner) }.expect("take over"));
                    assert_eq!(ring.holders().1, owner.get());
                }
            }
        }
        // Only consumer operations shrink the model, and only from the front.
        popped = popped.wrapping_add(queued.saturating_sub(model.len()) as u32);
        let head = input.start.wrapping_add(popped);
        if let Some(rx) = rx.as_ref() {
            assert_eq!(rx.position(), head, "consumer position after {op:?}");
        }
        if let Some(tx) = tx.as_ref() {
            let tail = head.wrapping_add(model.len() as u32);
            assert_eq!(tx.position(), tail, "producer position after {op:?}");
        }
        if let Some(expected) = R::Elem::expected_live(model.len()) {
            assert_eq!(
                live(),
                expected,
                "live elements differ from the model after {op:?}"
            );
        }
    }

    // A freshly claimed pair sees exactly what the model holds.
    drop(tx.take());
    drop(rx.take());
    let mut tx = ring.claim_producer(owner).expect("claim after release");
    let rx = ring.claim_consumer(owner).expect("claim after release");
    assert_eq!(rx.len(), model.len(), "len after re-claiming both sides");
    assert_eq!(tx.free_len(), N - model.len(), "free_len after re-claiming");
    assert_eq!(rx.peek().map(Elem::value), model.front().copied());
    assert_eq!(rx.position(), input.start.wrapping_add(popped));
    drop((tx, rx));

    let before = live();
    // SAFETY: every handle borrowing the ring is gone; `raw` came from `Box::into_raw`.
    drop(unsafe { Box::from_raw(raw) });
    if R::Elem::expected_live(0).is_some() {
        assert_eq!(
            before - live(),
            model.len() as isize,
            "dropping the ring dropped the wrong number of elements"
        );
        assert_eq!(live(), 0, "leaked or double-dropped elements");
    }
}

fuzz_target!(|input: Input| {
    LIVE.with(|l| l.set(0));
    run::<Ring<u32, N>>(&input);
    run::<Ring<Wide, N>>(&input);
    run::<Ring<Counted, N>>(&input);
    run::<DenseRing<u32, N>>(&input);
    run::<DenseRing<Wide, N>>(&input);
    run::<DenseRing<Counted, N>>(&input);
});
