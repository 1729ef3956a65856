//! Loom models of the rings' concurrent protocols (`Ring`, `DenseRing`, `MessageRing` and its
//! read-ahead).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/tmp/target-loom cargo test -p spsc-core --test loom --release`.
//!
//! Under `--cfg loom` the crate's atomics and cells are loom's (`src/sync.rs`): loom explores the
//! interleavings of the threads below and the values every Relaxed/Acquire load may return, and
//! reports any access to a `Ring` or `DenseRing` slot value, or to an 8-byte unit of a
//! `MessageRing` record (header or payload), that is not ordered after the other side's last
//! access. Every model also checks the data received: values, order, payload bytes, and drop
//! counts.
//!
//! Size: the models use the smallest capacities that still wrap (a `Ring` or `DenseRing` of 2
//! slots, a `MessageRing` of 64 bytes, or of 128 in two lanes of 64), two threads (three in
//! one), and a handful of operations. The small models are explored exhaustively, the larger ones with a
//! preemption bound ([`BOUNDED`], whose comment says why it suffices); `LOOM_MAX_PREEMPTIONS`
//! overrides both.
#![cfg(loom)]
// These tests leak or drop `Drain`s on purpose: leaking one must stay harmless whatever its
// implementation (today it has no `Drop`, which these lints point out).
#![allow(clippy::forget_non_drop, clippy::drop_non_drop)]

use std::sync::atomic::{AtomicUsize, Ordering};

use loom::sync::Arc;
use loom::thread;
use spsc_core::{
    spin_hint, ClaimError, DenseReadChunk, DenseRing, Full, MessageConsumer, MessageProducer,
    MessageReceiver, MessageRing, MessageSender, Producer, PublishedRun, RecvError, Ring,
    SendError, SendSlot,
};

mod common;
use common::{owner, ElementConsumer, ElementProducer, ElementRing};

/// Exploration without a preemption bound: every interleaving loom can distinguish. Used by the
/// models small enough to finish within seconds.
const EXHAUSTIVE: Option<usize> = None;

/// The preemption bound of the larger models: at most this many context switches per execution
/// at points where the running thread could have continued (switches at a spinning wait, where
/// `spin_hint` is a loom yield, cost nothing). Why 4 suffices: each protocol step is one atomic
/// access guarded by a few plain ones, and the bug patterns of these rings (a value or payload
/// read before its stamp or commit word, a slot or record reused before the consumer released
/// it, a stale index after a re-claim) need a preemption inside the producer's
/// write-then-publish window and one inside the consumer's read-then-release window, once per
/// lap at most, which 4 covers for the two laps these models run. For every schedule loom still
/// explores every value each load may return under the memory model, which is what exposes a
/// missing ordering. With 4 the whole file runs in about two and a half minutes on two
/// cores.
const BOUNDED: Option<usize> = Some(4);

/// Runs `f` under loom with `preemption_bound` (`LOOM_MAX_PREEMPTIONS` overrides it) and prints
/// how many executions were explored (visible with `--nocapture`).
fn model<F>(preemption_bound: Option<usize>, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemption_bound;
    }
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    println!(
        "{}: {} executions explored (preemption bound {:?})",
        std::thread::current().name().unwrap_or("model"),
        executions.load(Ordering::Relaxed),
        builder.preemption_bound
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers for the fixed-element rings (`Ring` and `DenseRing`).

fn claim_producer_spin<T, const N: usize>(ring: &Ring<T, N>, id: u32) -> Producer<'_, T, N> {
    loop {
        match ring.claim_producer(owner(id)) {
            Ok(producer) => return producer,
            Err(ClaimError::Taken { .. }) => spin_hint(),
            Err(error) => panic!("claim_producer: {error}"),
        }
    }
}

fn push_spin<T>(tx: &mut impl ElementProducer<T>, mut value: T) {
    loop {
        match tx.push(value) {
            Ok(()) => return,
            Err(Full(back)) => {
                value = back;
                spin_hint();
            }
        }
    }
}

fn pop_spin<T>(rx: &mut impl ElementConsumer<T>) -> T {
    loop {
        if let Some(value) = rx.pop() {
            return value;
        }
        spin_hint();
    }
}

/// Pushes all of `items` with `push_slice`, spinning while the ring is full.
fn push_slice_spin<T: Copy>(tx: &mut impl ElementProducer<T>, items: &[T]) {
    let mut sent = 0;
    while sent < items.len() {
        let pushed = tx.push_slice(&items[sent..]);
        sent += pushed;
        if pushed == 0 {
            spin_hint();
        }
    }
}

/// Pops `count` elements with `pop_slice` in batches of up to `OUT`, spinning while the ring is
/// empty, and returns `first(element)` of each.
fn pop_slice_spin<T: Copy + Default, const OUT: usize>(
    rx: &mut impl ElementConsumer<T>,
    count: usize,
    first: impl Fn(&T) -> u32,
) -> Vec<u32> {
    let mut received = Vec::new();
    while received.len() < count {
        let mut out = [T::default(); OUT];
        let popped = rx.pop_slice(&mut out);
        received.extend(out[..popped].iter().map(&first));
        if popped == 0 {
            spin_hint();
        }
    }
    received
}

/// An element that counts its drops in a per-test table (loom runs every thread of a model on
/// one OS thread, so std atomics are plain counters here; each model resets its table).
struct Counted {
    id: usize,
    drops: &'static [AtomicUsize; 4],
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops[self.id].fetch_add(1, Ordering::Relaxed);
    }
}

fn drop_counts(drops: &[AtomicUsize; 4]) -> [usize; 4] {
    core::array::from_fn(|i| drops[i].load(Ordering::Relaxed))
}

fn reset(drops: &[AtomicUsize; 4]) {
    for count in drops {
        count.store(0, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Single push/pop through wrap-around.

/// Four values through two slots: the producer must wait for the consumer to release each slot
/// (`Full`, then a reload of the consumer's index) and write it again only after the consumer's
/// read of the previous lap's value. One body for both element rings.
fn push_pop_wraps_in_order<R: ElementRing<u32> + Send + 'static>() {
    let ring = Arc::new(*R::boxed());
    let producer_ring = ring.clone();
    let producer = thread::spawn(move || {
        let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
        for value in 1..=4 {
            push_spin(&mut tx, value);
        }
    });
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let received: Vec<u32> = (0..4).map(|_| pop_spin(&mut rx)).collect();
    assert_eq!(received, [1, 2, 3, 4]);
    producer.join().unwrap();
    assert_eq!(rx.pop(), None, "nothing beyond what was pushed");
}

/// `Ring`: each slot's stamp carries the next lap's publication.
#[test]
fn ring_push_pop_wraps_in_order() {
    model(EXHAUSTIVE, push_pop_wraps_in_order::<Ring<u32, 2>>);
}

/// `DenseRing` publishes by two indices instead of per-block stamps, so the model checks the
/// other pairing: a slot value written before the Release store of `tail` that the consumer's
/// Acquire load (of its cache's refill) sees, and read before the Release store of `head` that
/// the producer's reload sees before it writes the slot again. Bounded: exhaustive took 46 s.
#[test]
fn dense_push_pop_wraps_in_order() {
    model(BOUNDED, push_pop_wraps_in_order::<DenseRing<u32, 2>>);
}

// ---------------------------------------------------------------------------------------------
// 2. Batch paths.

/// `push_slice` publishes a batch (partially, when the ring is short of room) while `pop_slice`
/// takes what is ready and publishes the consumer index once.
#[test]
fn ring_push_slice_vs_pop_slice() {
    model(BOUNDED, || {
        let ring = Arc::new(Ring::<u32, 2>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            let data = [10, 20, 30];
            let mut sent = 0;
            while sent < data.len() {
                let pushed = tx.push_slice(&data[sent..]);
                assert!(pushed <= 2, "a batch never exceeds the capacity");
                sent += pushed;
                if sent < data.len() {
                    spin_hint();
                }
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut received = Vec::new();
        while received.len() < 3 {
            let mut out = [0u32; 2];
            let count = rx.pop_slice(&mut out);
            received.extend_from_slice(&out[..count]);
            if count == 0 {
                spin_hint();
            }
        }
        assert_eq!(received, [10, 20, 30]);
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
    });
}

/// Three elements share a block here (blocks of 3 and 1 in a ring of 4), so batches start
/// mid-block, span blocks (the first block's stamp stored last), and wrap into the block they
/// started in (stamped in order); the consumer's batches and the producer's second one cover a
/// whole block (the whole-block paths of both). Half-way the producer is leaked and taken over:
/// its successor walks the stamps and resets the blocks ahead while the consumer reads.
#[test]
fn ring_batches_across_blocks_and_take_over() {
    assert_eq!(Ring::<[u32; 5], 4>::LAYOUT.block_len, 3);
    seven_through_batches::<5, 3>(|ring, data| {
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        push_slice_spin(&mut tx, &data[..3]);
        core::mem::forget(tx);
        // SAFETY: the handle of owner 1 was forgotten above and is never used again.
        let mut tx = unsafe { ring.take_over_producer(owner(1), owner(2)) }.unwrap();
        push_slice_spin(&mut tx, &data[3..]);
    });
}

/// Blocks of two (`[u32; 7]` in a ring of 4). The first block is published in part before the
/// rest of it, so the consumer's whole-block path must fall back to the published part. The last
/// batch, offered when the consumer may have emptied the ring, wraps all the way round into the
/// block it started in: it is stamped in order, so every whole block between must have its values
/// written before its stamp.
#[test]
fn ring_whole_blocks_and_a_batch_round_the_ring() {
    assert_eq!(Ring::<[u32; 7], 4>::LAYOUT.block_len, 2);
    seven_through_batches::<7, 4>(|ring, data| {
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        for batch in [&data[..1], &data[1..3], &data[3..]] {
            push_slice_spin(&mut tx, batch);
        }
    });
}

/// The two batch models' frame: `produce` pushes the seven elements `[i; W]` (`i` in `1..=7`)
/// into a fresh `Ring<[u32; W], 4>` on its own thread, while the consumer pops them with
/// `pop_slice` in batches of up to `OUT`; all seven must arrive in order, and nothing after.
fn seven_through_batches<const W: usize, const OUT: usize>(
    produce: fn(&Ring<[u32; W], 4>, &[[u32; W]]),
) where
    [u32; W]: Default,
{
    model(BOUNDED, move || {
        let ring = Arc::new(Ring::<[u32; W], 4>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let data: Vec<[u32; W]> = (1..=7).map(|i| [i; W]).collect();
            produce(&producer_ring, &data);
        });
        let mut rx = ring.claim_consumer(owner(9)).unwrap();
        let received = pop_slice_spin::<[u32; W], OUT>(&mut rx, 7, |element| element[0]);
        assert_eq!(received, [1, 2, 3, 4, 5, 6, 7]);
        producer.join().unwrap();
        assert!(rx.pop().is_none());
    });
}

/// `push_iter` of owned (heap) values leaves what did not fit in the iterator; `drain` moves the
/// ready ones out. Owned values make a double read or a lost element visible as a wrong result.
#[test]
fn ring_push_iter_vs_drain() {
    model(BOUNDED, || {
        let ring = Arc::new(Ring::<Box<u32>, 2>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            let mut items = (1..=3).map(Box::new);
            let mut sent = 0;
            while sent < 3 {
                sent += tx.push_iter(&mut items);
                if sent < 3 {
                    spin_hint();
                }
            }
            assert!(items.next().is_none());
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut received = Vec::new();
        while received.len() < 3 {
            let before = received.len();
            received.extend(rx.drain(usize::MAX).map(|value| *value));
            if received.len() == before {
                spin_hint();
            }
        }
        assert_eq!(received, [1, 2, 3]);
        producer.join().unwrap();
        assert!(rx.pop().is_none());
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Handles re-attached mid-stream.

/// Two producer handles, each on its own thread, race for the producer side (the loser spins on
/// `Taken` until the winner's handle is dropped). The second must resume exactly after the
/// first's last published value, without overwriting it. The consumer pops concurrently, but
/// without waiting (loom schedules unfairly: two threads spinning at once could starve the
/// third forever), and takes the rest after the join: each value once, each producer's values
/// in order, one batch after the other.
#[test]
fn ring_producer_handoff_between_threads() {
    model(EXHAUSTIVE, || {
        let ring = Arc::new(Ring::<u32, 4>::new());
        let spawn_producer = |id: u32, values: &'static [u32]| {
            let ring = ring.clone();
            thread::spawn(move || {
                let mut tx = claim_producer_spin(&ring, id);
                for &value in values {
                    tx.push(value).expect("3 values never fill 4 slots");
                }
            })
        };
        let first = spawn_producer(1, &[1, 2]);
        let second = spawn_producer(2, &[3]);
        let mut rx = ring.claim_consumer(owner(3)).unwrap();
        let mut received: Vec<u32> = (0..2).filter_map(|_| rx.pop()).collect();
        first.join().unwrap();
        second.join().unwrap();
        received.extend(core::iter::from_fn(|| rx.pop()));
        assert!(
            received == [1, 2, 3] || received == [3, 1, 2],
            "each value once, batches not interleaved: {received:?}"
        );
    });
}

/// A producer pushes, is dropped, and a new handle (claimed, then taken over from a leaked one)
/// continues through wrap-around while the consumer pops concurrently. Each new handle starts
/// from the shared state alone (its predecessor's cached view is gone): it must resume exactly
/// at the last published position (a gap would deliver a stale slot, a step back a duplicate),
/// and its first view of the consumer's index must be ordered after the consumer's reads of the
/// slots it allows it to write. One body for both element rings (of 2 slots).
fn producer_reclaim_and_take_over<R: ElementRing<u32> + Send + 'static>() {
    let ring = Arc::new(*R::boxed());
    let producer_ring = ring.clone();
    let producer = thread::spawn(move || {
        let ring = &*producer_ring;
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        push_spin(&mut tx, 1);
        push_spin(&mut tx, 2);
        drop(tx);
        let mut tx = ring.claim_producer(owner(2)).unwrap();
        assert_eq!(tx.position(), 2);
        push_spin(&mut tx, 3);
        core::mem::forget(tx);
        // SAFETY: the handle of owner 2 was forgotten above and is never used again.
        let mut tx = unsafe { ring.take_over_producer(owner(2), owner(3)) }.unwrap();
        assert_eq!(tx.position(), 3);
        push_spin(&mut tx, 4);
    });
    let mut rx = ring.claim_consumer(owner(9)).unwrap();
    let received: Vec<u32> = (0..4).map(|_| pop_spin(&mut rx)).collect();
    assert_eq!(received, [1, 2, 3, 4]);
    producer.join().unwrap();
    assert_eq!(rx.pop(), None);
}

#[test]
fn ring_producer_reclaim_and_take_over() {
    model(BOUNDED, producer_reclaim_and_take_over::<Ring<u32, 2>>);
}

#[test]
fn dense_producer_reclaim_and_take_over() {
    model(BOUNDED, producer_reclaim_and_take_over::<DenseRing<u32, 2>>);
}

/// The consumer handle is dropped (and later leaked and taken over) mid-stream while the
/// producer keeps pushing. An element it only peeked is delivered to the next handle, which
/// must see it immediately (the claim synchronises with the release of the previous handle);
/// one it popped never is; and the new handle's first view of what is published must be ordered
/// after the producer's writes of the slots it allows it to read. One body for both element
/// rings (of 2 slots).
fn consumer_reclaim_and_take_over<R: ElementRing<u32> + Send + 'static>() {
    let ring = Arc::new(*R::boxed());
    let producer_ring = ring.clone();
    let producer = thread::spawn(move || {
        let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
        for value in 1..=3 {
            push_spin(&mut tx, value);
        }
    });
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    assert_eq!(pop_spin(&mut rx), 1);
    let peeked = loop {
        if let Some(&value) = rx.peek() {
            break value;
        }
        spin_hint();
    };
    assert_eq!(peeked, 2);
    drop(rx);
    let mut rx = ring.claim_consumer(owner(3)).unwrap();
    assert_eq!(rx.position(), 1);
    assert_eq!(rx.peek(), Some(&2), "peeked element delivered again");
    assert_eq!(rx.pop(), Some(2));
    core::mem::forget(rx);
    // SAFETY: the handle of owner 3 was forgotten above and is never used again.
    let mut rx = unsafe { ring.take_over_consumer(owner(3), owner(4)) }.unwrap();
    assert_eq!(rx.position(), 2);
    assert_eq!(pop_spin(&mut rx), 3);
    producer.join().unwrap();
    assert_eq!(rx.pop(), None);
}

#[test]
fn ring_consumer_reclaim_and_take_over() {
    model(EXHAUSTIVE, consumer_reclaim_and_take_over::<Ring<u32, 2>>);
}

#[test]
fn dense_consumer_reclaim_and_take_over() {
    model(
        EXHAUSTIVE,
        consumer_reclaim_and_take_over::<DenseRing<u32, 2>>,
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Dropping a ring that still holds elements.

/// Three counted elements through two slots; the consumer pops one. Dropping the ring after the
/// threads join must drop the two left in it, each exactly once.
#[test]
fn ring_drop_with_elements_left() {
    static DROPS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
    model(EXHAUSTIVE, || {
        reset(&DROPS);
        let ring = Arc::new(Ring::<Counted, 2>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            for id in 0..3 {
                push_spin(&mut tx, Counted { id, drops: &DROPS });
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let first = pop_spin(&mut rx);
        assert_eq!(first.id, 0);
        drop(first);
        drop(rx);
        producer.join().unwrap();
        assert_eq!(drop_counts(&DROPS), [1, 0, 0, 0]);
        drop(ring);
        assert_eq!(drop_counts(&DROPS), [1, 1, 1, 0]);
    });
}

/// A `Drain` that is dropped before yielding every ready element publishes exactly the ones it
/// yielded: the rest stay in the ring and are dropped with it, once.
#[test]
fn ring_partial_drain_then_drop() {
    static DROPS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
    model(EXHAUSTIVE, || {
        reset(&DROPS);
        let ring = Arc::new(Ring::<Counted, 4>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            let pushed = tx.push_iter((0..3).map(|id| Counted { id, drops: &DROPS }));
            assert_eq!(pushed, 3, "an empty ring of 4 takes 3");
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let first = loop {
            let mut drain = rx.drain(2);
            if let Some(value) = drain.next() {
                break value;
            }
            drop(drain);
            spin_hint();
        };
        assert_eq!(first.id, 0);
        drop(first);
        producer.join().unwrap();
        // The next consumer handle starts right after the one element the drain yielded.
        drop(rx);
        let rx = ring.claim_consumer(owner(3)).unwrap();
        assert_eq!(rx.peek().map(|value| value.id), Some(1));
        drop(rx);
        assert_eq!(drop_counts(&DROPS), [1, 0, 0, 0]);
        drop(ring);
        assert_eq!(drop_counts(&DROPS), [1, 1, 1, 0]);
    });
}

/// A `Drain` leaked with `mem::forget` (safe code) after yielding an element: the element it
/// moved out must not count as unconsumed for `Ring::drop` or the next consumer handle, or it is
/// dropped twice (with `Box` elements, a double free). This model found that bug (commit
/// `aefeb7a`); `Drain` now publishes the consumer index as it yields.
#[test]
fn ring_leaked_drain_then_drop() {
    static DROPS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
    model(EXHAUSTIVE, || {
        reset(&DROPS);
        let ring = Arc::new(Ring::<Counted, 2>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            push_spin(
                &mut tx,
                Counted {
                    id: 0,
                    drops: &DROPS,
                },
            );
            push_spin(
                &mut tx,
                Counted {
                    id: 1,
                    drops: &DROPS,
                },
            );
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let first = loop {
            let mut drain = rx.drain(1);
            if let Some(value) = drain.next() {
                core::mem::forget(drain);
                break value;
            }
            drop(drain);
            spin_hint();
        };
        assert_eq!(first.id, 0);
        drop(first);
        drop(rx);
        producer.join().unwrap();
        drop(ring);
        assert_eq!(
            drop_counts(&DROPS),
            [1, 1, 0, 0],
            "each element dropped exactly once"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Helpers for the message ring.

/// A payload whose every byte depends on the message and the position, so a stale, shifted or
/// foreign byte shows.
fn payload(message: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| message.wrapping_mul(37).wrapping_add(j as u8 * 7) | 1)
        .collect()
}

fn send_spin<const C: usize, const L: usize>(
    tx: &mut MessageProducer<'_, C, L>,
    tag: u16,
    bytes: &[u8],
) {
    loop {
        match tx.send(tag, bytes) {
            Ok(()) => return,
            Err(SendError::Full) => spin_hint(),
            Err(error) => panic!("send: {error}"),
        }
    }
}

fn recv_spin<const C: usize, const L: usize>(rx: &mut MessageConsumer<'_, C, L>) -> (u16, Vec<u8>) {
    loop {
        match rx.recv_with(|message| (message.tag(), message.payload().to_vec())) {
            Ok(received) => return received,
            Err(RecvError::Empty) => spin_hint(),
            Err(error) => panic!("recv: {error}"),
        }
    }
}

fn front_spin<const C: usize, const L: usize>(
    rx: &mut MessageConsumer<'_, C, L>,
) -> (u16, Vec<u8>) {
    loop {
        match rx.front() {
            Ok(message) => return (message.tag(), message.payload().to_vec()),
            Err(RecvError::Empty) => spin_hint(),
            Err(error) => panic!("front: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Messages that wrap with a padding record.

/// C = 64, MAX_PAYLOAD = 24. Records of 24 and 32 bytes at 0 and 24, a padding record at 56
/// (the third needs 24), then 24 and 32 bytes at 0 and 24 again, each waiting for the consumer
/// to release room. The second lap puts record boundaries where the first lap's commit words
/// were, so a consumer that overtook the producer would read a stale header unless the producer
/// zeroed it first (the "commit word at the write position is 0" invariant). Every payload byte
/// must arrive as written.
#[test]
fn message_ring_wraps_with_padding() {
    model(BOUNDED, || stream_messages::<64, 1>(&[16, 24, 16, 24]));
}

/// One model's body: a producer thread sends messages of `lens` bytes (tags 100, 101, …) while
/// the consumer receives them; every tag and byte must arrive in order, and nothing after.
fn stream_messages<const C: usize, const L: usize>(lens: &'static [usize]) {
    let ring = Arc::new(MessageRing::<C, L>::new());
    let producer_ring = ring.clone();
    let producer = thread::spawn(move || {
        let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
        for (i, &len) in lens.iter().enumerate() {
            send_spin(&mut tx, 100 + i as u16, &payload(i as u8, len));
        }
    });
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    for (i, &len) in lens.iter().enumerate() {
        assert_eq!(recv_spin(&mut rx), (100 + i as u16, payload(i as u8, len)));
    }
    producer.join().unwrap();
    assert!(matches!(rx.front(), Err(RecvError::Empty)));
}

// ---------------------------------------------------------------------------------------------
// 6. A slot allocated and dropped without push.

/// The producer fills a slot and drops it (publishing nothing) while the consumer polls; the
/// consumer must never see it, and the slot's room is reused by the next message.
#[test]
fn message_ring_alloc_without_push() {
    model(EXHAUSTIVE, || {
        let ring = Arc::new(MessageRing::<64>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            send_spin(&mut tx, 1, &payload(1, 24));
            // Needs the consumer to pop the first message (24 + 8 + the next header > 32).
            let mut slot = loop {
                match tx.alloc(24, 9) {
                    Ok(slot) => break slot,
                    Err(SendError::Full) => spin_hint(),
                    Err(error) => panic!("alloc: {error}"),
                }
            };
            slot.payload_mut().fill(0xEE);
            drop(slot);
            send_spin(&mut tx, 2, &payload(2, 16));
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        assert_eq!(recv_spin(&mut rx), (1, payload(1, 24)));
        assert_eq!(recv_spin(&mut rx), (2, payload(2, 16)));
        producer.join().unwrap();
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
        drop(rx);
        // A new producer resumes after the last pushed record, not the abandoned slot.
        let mut tx = ring.claim_producer(owner(3)).unwrap();
        send_spin(&mut tx, 3, &payload(3, 8));
        let mut rx = ring.claim_consumer(owner(4)).unwrap();
        assert_eq!(recv_spin(&mut rx), (3, payload(3, 8)));
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Message ring handles re-attached mid-stream.

/// The first producer pushes a message, allocates another and is leaked mid-write; a take-over
/// discards the unpushed slot and continues (through a padding record); a later handle is
/// dropped and re-claimed. The consumer sees each pushed message once, in order.
#[test]
fn message_ring_producer_take_over() {
    model(BOUNDED, || {
        let ring = Arc::new(MessageRing::<64>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let ring = &*producer_ring;
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            send_spin(&mut tx, 1, &payload(1, 16));
            let mut slot = tx.alloc(8, 9).expect("an 8-byte slot fits after 24 bytes");
            slot.payload_mut().fill(0xEE);
            core::mem::forget(slot);
            core::mem::forget(tx);
            // SAFETY: the handle of owner 1 was forgotten above and is never used again.
            let mut tx = unsafe { ring.take_over_producer(owner(1), owner(2)) }.unwrap();
            send_spin(&mut tx, 2, &payload(2, 24));
            drop(tx);
            let mut tx = ring.claim_producer(owner(3)).unwrap();
            send_spin(&mut tx, 3, &payload(3, 16));
        });
        let mut rx = ring.claim_consumer(owner(9)).unwrap();
        assert_eq!(recv_spin(&mut rx), (1, payload(1, 16)));
        assert_eq!(recv_spin(&mut rx), (2, payload(2, 24)));
        assert_eq!(recv_spin(&mut rx), (3, payload(3, 16)));
        producer.join().unwrap();
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
    });
}

/// A message read with `front` but not popped when the consumer handle goes away is delivered
/// again, immediately, to the next handle (claimed after a drop, or taken over from a leaked
/// one); a popped one never is.
#[test]
fn message_ring_consumer_reclaim() {
    model(EXHAUSTIVE, || {
        let ring = Arc::new(MessageRing::<64>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            send_spin(&mut tx, 1, &payload(1, 16));
            send_spin(&mut tx, 2, &payload(2, 24));
            send_spin(&mut tx, 3, &payload(3, 24));
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        assert_eq!(front_spin(&mut rx), (1, payload(1, 16)));
        drop(rx);
        let mut rx = ring.claim_consumer(owner(3)).unwrap();
        let again = rx
            .front()
            .map(|message| (message.tag(), message.payload().to_vec()));
        assert_eq!(
            again,
            Ok((1, payload(1, 16))),
            "unpopped message delivered again"
        );
        rx.pop().unwrap();
        assert_eq!(front_spin(&mut rx), (2, payload(2, 24)));
        core::mem::forget(rx);
        // SAFETY: the handle of owner 3 was forgotten above and is never used again.
        let mut rx = unsafe { ring.take_over_consumer(owner(3), owner(4)) }.unwrap();
        let again = rx
            .front()
            .map(|message| (message.tag(), message.payload().to_vec()));
        assert_eq!(
            again,
            Ok((2, payload(2, 24))),
            "unpopped message delivered again"
        );
        rx.pop().unwrap();
        assert_eq!(recv_spin(&mut rx), (3, payload(3, 24)));
        producer.join().unwrap();
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
    });
}

// ---------------------------------------------------------------------------------------------
// 8. A message ring of two lanes.

/// C = 128 in two lanes of 64 bytes (MAX_PAYLOAD = 24); message `i` goes to lane `i % 2`.
/// Lane 0 takes records of 32 and 32 bytes at 0 and 32, ending exactly at the lane's end, then
/// 16 bytes at 0 of its second lap; lane 1 takes 24 and 32 bytes at 0 and 24, a padding record
/// at 56, then 24 bytes at 0. Each lane must wait for the consumer to release room in that lane
/// (not the other), and the second laps put record starts where the first laps' commit words and
/// payload bytes were: a consumer reading a lane ahead of its producer sees a stale header unless
/// the successor's (or the padding's) commit word was zeroed in the right lane. (The padding in
/// lane 0 is the next model's.) After the join the consumer stands at lane 0, offset 16 of its
/// second lap, where the first lap's payload bytes still are.
#[test]
fn message_ring_lanes_wrap_in_order() {
    assert_eq!(MessageRing::<128, 2>::MAX_PAYLOAD, 24);
    model(BOUNDED, || {
        stream_messages::<128, 2>(&[24, 16, 24, 24, 8, 16]);
    });
}

/// Handles of a two-lane ring re-attached mid-stream: each must recover the lane of the next
/// message from the consumer's index words (the pop parities) and, for a producer, the messages
/// still queued in each lane, which the concurrent consumer splits between popped and queued in
/// every way. The two sides re-attach at different messages (a side that lost its lane would
/// otherwise agree with the other by chance): the producer is dropped and re-claimed after one
/// message and leaked and taken over after three, both times with lane 1 next; the consumer is
/// leaked and taken over after two, and dropped after five, with lane 1 next and the sixth read
/// but not popped (delivered again, immediately). Before that the consumer has skipped a
/// padding record in lane 0, which must not count as a message.
#[test]
fn message_ring_lanes_reattach_mid_stream() {
    model(BOUNDED, || {
        /// Message `i`'s tag and payload. Lane 0 holds records of 32 and 24 bytes at 0 and 32,
        /// padding at 56, then 24 bytes at 0; lane 1 holds 32 and 32 bytes, then 16 at 0.
        fn message(i: usize) -> (u16, Vec<u8>) {
            const LENS: [usize; 6] = [24, 24, 16, 24, 16, 8];
            (100 + i as u16, payload(i as u8, LENS[i]))
        }
        fn send(tx: &mut MessageProducer<'_, 128, 2>, i: usize) {
            let (tag, bytes) = message(i);
            send_spin(tx, tag, &bytes);
        }
        let ring = Arc::new(MessageRing::<128, 2>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let ring = &*producer_ring;
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            send(&mut tx, 0);
            drop(tx);
            let mut tx = ring.claim_producer(owner(2)).unwrap();
            send(&mut tx, 1);
            send(&mut tx, 2);
            core::mem::forget(tx);
            // SAFETY: the handle of owner 2 was forgotten above and is never used again.
            let mut tx = unsafe { ring.take_over_producer(owner(2), owner(3)) }.unwrap();
            for i in 3..6 {
                send(&mut tx, i);
            }
        });
        let mut rx = ring.claim_consumer(owner(9)).unwrap();
        assert_eq!(recv_spin(&mut rx), message(0));
        assert_eq!(recv_spin(&mut rx), message(1));
        core::mem::forget(rx);
        // SAFETY: the handle of owner 9 was forgotten above and is never used again.
        let mut rx = unsafe { ring.take_over_consumer(owner(9), owner(10)) }.unwrap();
        for i in 2..5 {
            assert_eq!(recv_spin(&mut rx), message(i));
        }
        assert_eq!(front_spin(&mut rx), message(5));
        drop(rx);
        let mut rx = ring.claim_consumer(owner(11)).unwrap();
        let again = rx
            .front()
            .map(|message| (message.tag(), message.payload().to_vec()));
        assert_eq!(again, Ok(message(5)), "unpopped message delivered again");
        rx.pop().unwrap();
        producer.join().unwrap();
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
    });
}

// ---------------------------------------------------------------------------------------------
// 9. The dense ring: batches across the ring's end.

/// The ring is first moved to position 1 (one element through it, on this thread), so every
/// batch of two starts at the last slot and wraps: the producer's first `push_slice`, offered to
/// an empty ring, is split into two copies (slot 1, then slot 0) under one `tail` store, and so
/// is its second whenever the consumer has emptied the ring; the consumer's `pop_slice` into a
/// two-element buffer copies out across the end whenever two are ready. Four values must arrive
/// once each, in order, and every copy must be ordered after the other side's release of its
/// slots.
#[test]
fn dense_push_slice_vs_pop_slice_across_the_end() {
    model(EXHAUSTIVE, || {
        let ring = Arc::new(DenseRing::<u32, 2>::new());
        {
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            let mut rx = ring.claim_consumer(owner(2)).unwrap();
            tx.push(0).unwrap();
            assert_eq!(rx.pop(), Some(0));
        }
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            assert_eq!(tx.position(), 1);
            assert_eq!(
                tx.push_slice(&[1, 2, 3]),
                2,
                "an empty ring takes two, wrapping"
            );
            push_slice_spin(&mut tx, &[3, 4]);
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let received = pop_slice_spin::<u32, 2>(&mut rx, 4, |&value| value);
        assert_eq!(received, [1, 2, 3, 4]);
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
        assert_eq!(rx.position(), 5);
    });
}

// ---------------------------------------------------------------------------------------------
// 10. The dense ring: read chunks of owned elements, and a ring dropped with elements left.

/// Four counted (non-`Copy`) elements through two slots with `push_iter`, which publishes what
/// fits with one store (the first two together) and leaves the rest in the iterator. The
/// consumer leaks a read chunk of the first two (which must remove nothing), commits one of them
/// from a second chunk (a partial commit, dropping it in place), then waits for a chunk of two
/// across the ring's end (the third element in the freed slot 0) and commits all of it. Every
/// drop must happen before the slot is released (the producer refills it at once), and dropping
/// the ring after the join must drop the fourth element, left in it: each exactly once.
#[test]
fn dense_push_iter_vs_read_chunk_then_drop() {
    static DROPS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
    /// The ids of a chunk's elements, oldest first.
    fn ids(chunk: &DenseReadChunk<'_, '_, Counted, 2>) -> Vec<usize> {
        assert!(chunk.get(chunk.len()).is_none());
        (0..chunk.len()).map(|i| chunk.get(i).unwrap().id).collect()
    }
    model(EXHAUSTIVE, || {
        reset(&DROPS);
        let ring = Arc::new(DenseRing::<Counted, 2>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            let mut items = (0..4).map(|id| Counted { id, drops: &DROPS });
            assert_eq!(tx.push_iter(&mut items), 2, "an empty ring takes two");
            let mut sent = 2;
            while sent < 4 {
                sent += tx.push_iter(&mut items);
                if sent < 4 {
                    spin_hint();
                }
            }
            assert!(items.next().is_none());
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let chunk = loop {
            let chunk = rx.read_chunk(2);
            if !chunk.is_empty() {
                break chunk;
            }
            drop(chunk);
            spin_hint();
        };
        assert_eq!(ids(&chunk), [0, 1], "published together");
        core::mem::forget(chunk);
        let chunk = rx.read_chunk(2);
        assert_eq!(ids(&chunk), [0, 1], "a leaked chunk removes nothing");
        chunk.commit(1);
        assert_eq!(
            drop_counts(&DROPS),
            [1, 0, 0, 0],
            "commit drops what it removes"
        );
        let chunk = loop {
            let chunk = rx.read_chunk(2);
            if chunk.len() == 2 {
                break chunk;
            }
            assert_eq!(ids(&chunk), [1]);
            drop(chunk);
            spin_hint();
        };
        assert_eq!(ids(&chunk), [1, 2]);
        chunk.commit_all();
        assert_eq!(
            drop_counts(&DROPS),
            [1, 1, 1, 0],
            "commit drops what it removes"
        );
        producer.join().unwrap();
        assert_eq!(rx.len(), 1);
        drop(rx);
        drop(ring);
        assert_eq!(
            drop_counts(&DROPS),
            [1, 1, 1, 1],
            "each element dropped exactly once"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 11. The read-ahead of a one-lane message ring (`src/read_ahead.rs`).
//
// The consumer reads published records as raw bytes ahead of its front (`published_run` from a
// cursor, Acquire per commit word), and releases every record before a cursor with one Release
// store (`pop_through`), while the producer keeps pushing into the room released. Under loom
// the commit words live in a side table (`LoomShadow` in `src/message_ring.rs`), so the first
// four bytes of each record in a run are not its commit word here: the checks below read each
// record's length word and payload, which identify the message (`payload` depends on both).

/// The payloads of the message records `bytes` holds, back to back, checking that they are whole
/// records: each a header, then the payload padded to 8 bytes, none cut short.
fn record_payloads(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert!(at + 8 <= bytes.len(), "a header cut short at byte {at}");
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let size = 8 + len.next_multiple_of(8);
        assert!(
            at + size <= bytes.len(),
            "a record of {size} bytes at byte {at} runs past the {} bytes",
            bytes.len()
        );
        payloads.push(bytes[at + 8..at + 8 + len].to_vec());
        at += size;
    }
    payloads
}

/// The payloads of a run, checked: whole records, as many as the run says, with the bytes of
/// the messages that follow the `seen` already read (message `i` has the payload
/// `payload(i, lens[i])`).
fn checked_run(run: &PublishedRun<'_>, lens: &[usize], seen: usize) -> Vec<Vec<u8>> {
    let payloads = record_payloads(run.bytes());
    assert_eq!(payloads.len(), run.messages() as usize);
    assert!(
        seen + payloads.len() <= lens.len(),
        "more records than pushed"
    );
    for (k, bytes) in payloads.iter().enumerate() {
        let i = seen + k;
        assert_eq!(bytes, &payload(i as u8, lens[i]), "message {i}'s bytes");
    }
    payloads
}

/// C = 64 (MAX_PAYLOAD = 24): records of 32 and 16 bytes at 0 and 32, then the third (32 bytes)
/// needs a padding record at 48 and goes to 0, where the first one's commit word and bytes were,
/// once the consumer has released both (the producer spins on `Full` until then); its successor's
/// commit word, at 32, is the second one's. The consumer reads ahead with unlimited runs from a
/// cursor moved by `cursor_after` over each whole run, and releases the run with `pop_through` at
/// once: every run must hold whole, published records with the bytes pushed (a stale commit word
/// at 0 or 32 would show the first or second message again, a record read before its commit the
/// wrong bytes, a release before the reads a race on the bytes), and the run after the padding
/// must start at the buffer's start.
#[test]
fn message_ring_read_ahead_releases_and_wraps() {
    const LENS: [usize; 3] = [24, 8, 24];
    model(BOUNDED, || {
        let ring = Arc::new(MessageRing::<64>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            for (i, &len) in LENS.iter().enumerate() {
                send_spin(&mut tx, 100 + i as u16, &payload(i as u8, len));
            }
            tx.position()
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut cursor = rx.read_ahead();
        let mut seen = 0;
        while seen < LENS.len() {
            let run = rx.published_run(cursor, usize::MAX).unwrap();
            if run.messages() == 0 {
                assert!(run.bytes().is_empty());
                spin_hint();
                continue;
            }
            let payloads = checked_run(&run, &LENS, seen);
            // The third message is the only one after the padding, at the buffer's start.
            let expected_start = if seen == 2 { 64 } else { cursor.position() };
            assert_eq!(run.start().position(), expected_start);
            let (next, partial) = run.cursor_after(run.bytes().len());
            assert_eq!((next, partial), (run.end(), 0));
            seen += payloads.len();
            cursor = next;
            rx.pop_through(cursor).unwrap();
            assert_eq!(rx.position(), cursor.position());
        }
        let end = producer.join().unwrap();
        assert_eq!((cursor.position(), end), (96, 96));
        assert!(rx
            .published_run(cursor, usize::MAX)
            .unwrap()
            .bytes()
            .is_empty());
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
    });
}

/// A transport's forwarding loop, as the TCP transport runs it: each "write" takes at most 20
/// bytes of the run from where the last one stopped (possibly inside a record: `cursor_after`'s
/// partial count), and a record is released one write after it was written in full (an ack
/// arriving later), or at once when nothing more is published. So the consumer reads runs ahead
/// of its released front, re-reads a record it wrote part of, and releases records in bulk
/// while the producer pushes: records of 32 and 8 bytes (an empty payload) at 0 and 32, padding
/// at 40, then 32 bytes at 0 once both are released (its successor's commit word, at 32, is the
/// second one's). The bytes written must be the records pushed, back to back.
#[test]
fn message_ring_read_ahead_partial_writes_lagging_release() {
    const LENS: [usize; 3] = [24, 0, 24];
    const WRITE: usize = 20;
    model(BOUNDED, || {
        let ring = Arc::new(MessageRing::<64>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            for (i, &len) in LENS.iter().enumerate() {
                send_spin(&mut tx, 100 + i as u16, &payload(i as u8, len));
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut cursor = rx.read_ahead();
        let mut partial = 0;
        let mut acked = cursor;
        let mut written = Vec::new();
        let total: usize = LENS.iter().map(|len| 8 + len.next_multiple_of(8)).sum();
        while written.len() < total {
            let run = rx.published_run(cursor, usize::MAX).unwrap();
            if run.messages() == 0 {
                assert_eq!(partial, 0, "a partly written record stays published");
                rx.pop_through(cursor).unwrap();
                acked = cursor;
                spin_hint();
                continue;
            }
            let bytes = run.bytes();
            assert!(partial < bytes.len());
            let take = WRITE.min(bytes.len() - partial);
            written.extend_from_slice(&bytes[partial..partial + take]);
            let (next, rest) = run.cursor_after(partial + take);
            assert!(rest < bytes.len());
            cursor = next;
            partial = rest;
            rx.pop_through(acked).unwrap();
            assert_eq!(rx.position(), acked.position());
            acked = cursor;
        }
        assert_eq!(partial, 0);
        let payloads = record_payloads(&written);
        let expected: Vec<Vec<u8>> = (0..LENS.len()).map(|i| payload(i as u8, LENS[i])).collect();
        assert_eq!(payloads, expected);
        rx.pop_through(cursor).unwrap();
        producer.join().unwrap();
        assert_eq!(rx.position(), 96);
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
    });
}

/// Dropping records unread: the consumer reads the first message with `front` (which caches its
/// header), then skips three messages with `skip_published` from its front, releasing what it
/// passed with `pop_through` after each partial skip, while the producer pushes: records of 24
/// and 16 bytes at 0 and 24, padding at 40, 32 bytes at 0 (once the first two are released),
/// then 16 bytes at 32 (once the third is: the skip across the padding) and 16 at 48. The
/// consumer then receives the last two with `front` and `pop`: in order, their tags and bytes
/// as pushed (a `front` cached before the release would return the first message again).
#[test]
fn message_ring_skip_published_then_pop() {
    const LENS: [usize; 5] = [16, 8, 24, 8, 8];
    const SKIP: u64 = 3;
    model(BOUNDED, || {
        let ring = Arc::new(MessageRing::<64>::new());
        let producer_ring = ring.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_ring.claim_producer(owner(1)).unwrap();
            for (i, &len) in LENS.iter().enumerate() {
                send_spin(&mut tx, 100 + i as u16, &payload(i as u8, len));
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        assert_eq!(front_spin(&mut rx), (100, payload(0, LENS[0])));
        let mut cursor = rx.read_ahead();
        let mut skipped = 0;
        while skipped < SKIP {
            let (next, passed) = rx.skip_published(cursor, SKIP - skipped).unwrap();
            assert!(passed <= SKIP - skipped);
            skipped += passed;
            cursor = next;
            rx.pop_through(cursor).unwrap();
            assert_eq!(rx.position(), cursor.position());
            if skipped < SKIP {
                spin_hint();
            }
        }
        assert_eq!(
            cursor.position(),
            96,
            "past the padding and the third message"
        );
        for (i, &len) in LENS.iter().enumerate().skip(SKIP as usize) {
            assert_eq!(recv_spin(&mut rx), (100 + i as u16, payload(i as u8, len)));
        }
        producer.join().unwrap();
        assert!(matches!(rx.front(), Err(RecvError::Empty)));
        assert_eq!(rx.skip_published(rx.read_ahead(), 1).unwrap().1, 0);
    });
}
