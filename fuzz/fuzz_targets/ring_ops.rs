//! Arbitrary sequences of producer and consumer operations on a `Ring<_, 8>`, checked step by
//! step against a `VecDeque` model: every result must match the model exactly.
//!
//! Three element types run the same sequence: `u32` (one block holds the whole ring; it also
//! exercises the `Copy`-only batch calls), `Wide` (three to a block, so batches span blocks),
//! and `Counted`, whose live instances are counted so a leak or double drop (in the ring,
//! in `drain`, or when the ring is dropped with elements left) is caught. The ring starts at an
//! arbitrary position so the `u32` position counters wrap within a run.
#![no_main]

use std::cell::Cell;
use std::collections::VecDeque;
use std::num::NonZeroU32;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use spsc_core::{ClaimError, Consumer, Full, Producer, Ring};

const N: usize = 8;

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Push(u32),
    PushSlice(Vec<u32>),
    /// Offers `count` values; the ones that do not fit must stay in the iterator.
    PushIter {
        count: u8,
    },
    Pop,
    Peek,
    PopSlice {
        len: u8,
    },
    /// Drains up to `max`, consumes `take` of them, drops the iterator.
    Drain {
        max: u8,
        take: u8,
    },
    /// As `Drain`, then leaks the iterator (`mem::forget` is safe): what it yielded was moved
    /// out and must never be read (delivered or dropped) again.
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

/// What the harness needs from an element type; `u32` uses the real batch calls.
trait Elem: Sized {
    fn make(value: u32) -> Self;
    fn value(&self) -> u32;
    fn push_slice(producer: &mut Producer<'_, Self, N>, values: &[u32]) -> usize {
        let mut iter = values.iter().map(|&v| Self::make(v));
        producer.push_iter(&mut iter)
    }
    fn pop_slice(consumer: &mut Consumer<'_, Self, N>, len: usize) -> Vec<u32> {
        consumer.drain(len).map(|v| v.value()).collect()
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
    fn push_slice(producer: &mut Producer<'_, Self, N>, values: &[u32]) -> usize {
        producer.push_slice(values)
    }
    fn pop_slice(consumer: &mut Consumer<'_, Self, N>, len: usize) -> Vec<u32> {
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

/// Three to a block (blocks of 3, 3 and 2): batches that start mid-block, span blocks and wrap.
type Wide = [u32; 5];

impl Elem for Wide {
    fn make(value: u32) -> Self {
        [value, !value, value, !value, value]
    }
    fn value(&self) -> u32 {
        assert_eq!(*self, Self::make(self[0]), "an element was torn");
        self[0]
    }
    fn push_slice(producer: &mut Producer<'_, Self, N>, values: &[u32]) -> usize {
        let wide: Vec<Wide> = values.iter().map(|&v| Self::make(v)).collect();
        producer.push_slice(&wide)
    }
    fn pop_slice(consumer: &mut Consumer<'_, Self, N>, len: usize) -> Vec<u32> {
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

/// Puts a fresh ring into the state "empty, consumer index `start`": every block's stamp is one
/// past the last position of the previous lap (all consumed) that it held, as it would be after
/// `start` pushes and pops.
fn ring_at<T>(start: u32) -> *mut Ring<T, N> {
    let ring = Box::into_raw(Box::new(Ring::<T, N>::new()));
    let layout = Ring::<T, N>::LAYOUT;
    let base = ring.cast::<u8>();
    // SAFETY: no reference to the ring exists yet; the offsets come from the ring's own recorded
    // layout (head at 128, each block's stamp at `block_offset`) and are in bounds of the
    // allocation; all written words are atomics' u32 representation.
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

fn run<T: Elem>(input: &Input) {
    let raw = ring_at::<T>(input.start);
    // SAFETY: `raw` is a live, initialised ring from `Box::into_raw`; freed only at the end,
    // after every handle borrowing it is gone.
    let ring: &Ring<T, N> = unsafe { &*raw };
    let owner = input.owner;
    let other = NonZeroU32::new(owner.get().wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
    let mut model: VecDeque<u32> = VecDeque::new();
    let mut next = 0u32;
    let mut fresh = || {
        next = next.wrapping_add(1);
        next
    };

    let mut tx = Some(ring.claim_producer(owner).expect("fresh producer claim"));
    let mut rx = Some(ring.claim_consumer(owner).expect("fresh consumer claim"));
    assert_eq!(ring.holders(), (owner.get(), owner.get()));

    for op in &input.ops {
        match op {
            Op::Push(v) => {
                if let Some(tx) = tx.as_mut() {
                    match tx.push(T::make(*v)) {
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
                    let n = T::push_slice(tx, values);
                    assert_eq!(n, values.len().min(N - model.len()), "push_slice count");
                    model.extend(&values[..n]);
                }
            }
            Op::PushIter { count } => {
                if let Some(tx) = tx.as_mut() {
                    let values: Vec<u32> = (0..*count).map(|_| fresh()).collect();
                    let mut iter = values.iter().map(|&v| T::make(v));
                    let n = tx.push_iter(&mut iter);
                    assert_eq!(n, values.len().min(N - model.len()), "push_iter count");
                    // Whatever did not fit is still in the iterator, in order.
                    let rest: Vec<u32> = iter.map(|v| v.value()).collect();
                    assert_eq!(rest, values[n..], "push_iter consumed unpushed items");
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
                    let got = T::pop_slice(rx, usize::from(*len));
                    let want: Vec<u32> =
                        model.drain(..usize::from(*len).min(model.len())).collect();
                    assert_eq!(got, want, "pop_slice");
                }
            }
            Op::Drain { max, take } => {
                if let Some(rx) = rx.as_mut() {
                    let ready = usize::from(*max).min(model.len());
                    let mut drain = rx.drain(usize::from(*max));
                    assert_eq!(drain.len(), ready, "drain length");
                    for _ in 0..*take {
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
                    assert_eq!(rx.len(), model.len(), "len after partial drain");
                }
            }
            Op::DrainForget { max, take } => {
                if let Some(rx) = rx.as_mut() {
                    let mut drain = rx.drain(usize::from(*max));
                    for _ in 0..*take {
                        match drain.next() {
                            Some(v) => assert_eq!(Some(v.value()), model.pop_front(), "drain"),
                            None => break,
                        }
                    }
                    // Leaking must be as harmless as dropping: `Drain` publishes as it yields.
                    #[allow(clippy::forget_non_drop)]
                    std::mem::forget(drain);
                    assert_eq!(
                        rx.peek().map(Elem::value),
                        model.front().copied(),
                        "consumer after a forgotten drain"
                    );
                }
            }
            Op::ReadChunk { max, commit, leak } => {
                if let Some(rx) = rx.as_mut() {
                    let chunk = rx.read_chunk(usize::from(*max));
                    assert_eq!(
                        chunk.len(),
                        usize::from(*max).min(model.len()),
                        "chunk length"
                    );
                    for (i, v) in chunk.iter().enumerate() {
                        assert_eq!(Some(v.value()), model.get(i).copied(), "chunk element {i}");
                    }
                    if *leak {
                        // A leaked chunk must commit nothing.
                        #[allow(clippy::forget_non_drop)]
                        std::mem::forget(chunk);
                    } else {
                        let removed = usize::from(*commit).min(chunk.len());
                        chunk.commit(usize::from(*commit));
                        model.drain(..removed);
                    }
                    assert_eq!(rx.len(), model.len(), "len after a read chunk");
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
        if let Some(expected) = T::expected_live(model.len()) {
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
    drop((tx, rx));

    let before = live();
    // SAFETY: every handle borrowing the ring is gone; `raw` came from `Box::into_raw`.
    drop(unsafe { Box::from_raw(raw) });
    if T::expected_live(0).is_some() {
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
    run::<u32>(&input);
    run::<Wide>(&input);
    run::<Counted>(&input);
});
