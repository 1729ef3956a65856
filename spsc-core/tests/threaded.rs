//! Two-thread stress tests of the rings: single and batch operations, messages of random sizes,
//! and sides handed from thread to thread mid-stream. Every consumer checks that nothing is lost,
//! duplicated, reordered or torn. These are also the tests run under ThreadSanitizer and Miri
//! (with shrunken counts).
// The loom build (`--cfg loom`) runs only `tests/loom.rs`: its rings exist only inside a
// loom model, and have no `init_in_place`, `attach` or slice views.
#![cfg(not(loom))]
// These tests leak or drop `Drain`s on purpose: leaking one must stay harmless whatever its
// implementation (today it has no `Drop`, which these lints point out).
#![allow(clippy::forget_non_drop, clippy::drop_non_drop)]

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use spsc_core::{
    ClaimError, DenseRing, MessageReceiver, MessageRing, MessageSender, RecvError, Ring, SendError,
    SendSlot,
};

mod common;
use common::{owner, scaled, ElementConsumer, ElementProducer, ElementRing};

/// A cheap mixing function: the check word of element `seq`, and the source of random sizes.
fn mix(seq: u64) -> u64 {
    let mut x = seq ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What waiting looks like: give the other thread the core (the test machine may have only
/// two, and Miri switches threads only at yields when preemption is off).
fn wait() {
    thread::yield_now();
}

/// An element whose halves must agree: a torn read (half of one write, half of another) fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    seq: u64,
    check: u64,
}

impl Item {
    fn new(seq: u64) -> Self {
        Self {
            seq,
            check: mix(seq),
        }
    }

    fn verify(self, expected_seq: u64) {
        assert_eq!(
            self.seq, expected_seq,
            "element lost, duplicated or reordered"
        );
        assert_eq!(self.check, mix(self.seq), "torn element {self:?}");
    }
}

/// Single pushes and pops (and peeks) of `total` elements through `R`.
fn single_ops<R: ElementRing<Item>>(total: u64) {
    let ring = R::boxed();
    let ring = &*ring;
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            for seq in 0..total {
                let mut item = Item::new(seq);
                while let Err(full) = tx.push(item) {
                    item = full.0;
                    wait();
                }
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut expected = 0;
        while expected < total {
            if expected.is_multiple_of(3) {
                if let Some(item) = rx.peek() {
                    item.verify(expected);
                }
            }
            match rx.pop() {
                Some(item) => {
                    item.verify(expected);
                    expected += 1;
                }
                None => wait(),
            }
        }
    });
    let mut rx = ring.claim_consumer(owner(3)).unwrap();
    assert_eq!(rx.pop(), None, "nothing beyond what was sent");
}

#[test]
fn ring_single_ops_64() {
    single_ops::<Ring<Item, 64>>(scaled(1_000_000, 300));
}

#[test]
fn ring_single_ops_1() {
    single_ops::<Ring<Item, 1>>(scaled(100_000, 100));
}

#[test]
fn dense_ring_single_ops_64() {
    single_ops::<DenseRing<Item, 64>>(scaled(1_000_000, 300));
}

#[test]
fn dense_ring_single_ops_1() {
    single_ops::<DenseRing<Item, 1>>(scaled(100_000, 100));
}

/// Batches of random sizes both ways: slices and iterators in; slices and in-place batch reads
/// that remove only half of what they see (`ElementConsumer::take_half`) out.
fn batch_ops<R: ElementRing<Item>>() {
    let total = scaled(1_000_000, 400);
    let ring = R::boxed();
    let ring = &*ring;
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            let mut seq = 0;
            let mut batch = Vec::new();
            while seq < total {
                let size = (mix(seq) % 70 + 1).min(total - seq);
                batch.clear();
                batch.extend((seq..seq + size).map(Item::new));
                let pushed = if seq.is_multiple_of(2) {
                    tx.push_slice(&batch)
                } else {
                    tx.push_iter(batch.iter().copied())
                };
                if pushed == 0 {
                    wait();
                }
                seq += pushed as u64;
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        let mut expected = 0;
        let mut out = [Item::new(0); 50];
        while expected < total {
            let max = (mix(expected ^ 1) % 90 + 1) as usize;
            let got = if expected.is_multiple_of(2) {
                rx.take_half(max, |item| {
                    item.verify(expected);
                    expected += 1;
                })
            } else {
                let n = rx.pop_slice(&mut out[..max.min(50)]);
                for item in &out[..n] {
                    item.verify(expected);
                    expected += 1;
                }
                n
            };
            if got == 0 {
                wait();
            }
        }
    });
    let mut rx = ring.claim_consumer(owner(3)).unwrap();
    assert_eq!(rx.pop(), None);
}

#[test]
fn ring_batch_ops() {
    batch_ops::<Ring<Item, 128>>();
}

#[test]
fn dense_ring_batch_ops() {
    batch_ops::<DenseRing<Item, 128>>();
}

/// Length of message `seq`: mostly small (under 48 bytes, and never above `max`), one in eight
/// anything up to `max`.
fn message_len(seq: u64, max: u32) -> u32 {
    let h = mix(seq);
    let len = if h.is_multiple_of(8) {
        (h >> 8) % (u64::from(max) + 1)
    } else {
        (h >> 8) % (u64::from(max) + 1).min(48)
    };
    len as u32
}

/// Byte `i` of message `seq`; the first 8 bytes (when there are 8) hold `seq` itself.
fn message_byte(seq: u64, i: usize) -> u8 {
    if i < 8 {
        seq.to_le_bytes()[i]
    } else {
        (mix(seq) >> ((i % 8) * 8)) as u8 ^ (i / 8) as u8
    }
}

/// How long a side waits for the other before failing the test: a peer that panicked (in a
/// scoped thread, joined only at the end) must fail the run, not hang it.
const STALL: Duration = Duration::from_secs(60);

fn send_message<S: MessageSender>(tx: &mut S, seq: u64) {
    let len = message_len(seq, tx.max_payload());
    let since = Instant::now();
    loop {
        match tx.alloc(len, seq as u16) {
            Ok(mut slot) => {
                for (i, byte) in slot.payload_mut().iter_mut().enumerate() {
                    *byte = message_byte(seq, i);
                }
                slot.push();
                return;
            }
            Err(SendError::Full) => {
                assert!(
                    since.elapsed() < STALL,
                    "message {seq}: no room for {STALL:?}"
                );
                wait();
            }
            Err(error) => panic!("message {seq}: {error}"),
        }
    }
}

fn receive_message<R: MessageReceiver>(rx: &mut R, seq: u64, max: u32) {
    let since = Instant::now();
    loop {
        match rx.front() {
            Ok(message) => {
                assert_eq!(
                    message.tag(),
                    seq as u16,
                    "message lost, duplicated or reordered"
                );
                assert_eq!(
                    message.len(),
                    message_len(seq, max) as usize,
                    "message {seq}"
                );
                assert_eq!(message.payload().as_ptr() as usize % 8, 0);
                for (i, &byte) in message.payload().iter().enumerate() {
                    assert_eq!(byte, message_byte(seq, i), "message {seq}, byte {i}");
                }
                rx.pop().unwrap();
                return;
            }
            Err(RecvError::Empty) => {
                assert!(
                    since.elapsed() < STALL,
                    "message {seq}: nothing for {STALL:?}"
                );
                wait();
            }
            Err(error) => panic!("message {seq}: {error}"),
        }
    }
}

fn message_stream<const C: usize, const L: usize>(total: u64) {
    let ring = Box::new(MessageRing::<C, L>::new());
    let ring = &*ring;
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut tx = ring.claim_producer(owner(1)).unwrap();
            for seq in 0..total {
                send_message(&mut tx, seq);
            }
        });
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        for seq in 0..total {
            receive_message(&mut rx, seq, MessageRing::<C, L>::MAX_PAYLOAD);
        }
        // The producer may still be running: only emptiness after it is done is checked below.
    });
    assert_drained(ring);
}

/// Fresh handles of a ring both sides are done with find nothing queued, in any lane: the
/// consumer's next lane is empty and the producer resumes at the consumer's position.
fn assert_drained<const C: usize, const L: usize>(ring: &MessageRing<C, L>) {
    let mut rx = ring.claim_consumer(owner(98)).unwrap();
    assert_eq!(rx.front().unwrap_err(), RecvError::Empty);
    let tx = ring.claim_producer(owner(99)).unwrap();
    assert_eq!(tx.position(), rx.position(), "a message left in some lane");
}

#[test]
fn message_ring_random_sizes_4096() {
    message_stream::<4096, 1>(scaled(1_000_000, 300));
}

#[test]
fn message_ring_random_sizes_4096_in_16_lanes() {
    // Lanes of 256 bytes: the largest message (120 bytes) pads often in its lane.
    message_stream::<4096, 16>(scaled(1_000_000, 300));
}

#[test]
fn message_ring_random_sizes_128() {
    // Tiny: nearly every message wraps or pads.
    message_stream::<128, 1>(scaled(300_000, 300));
}

#[test]
fn message_ring_random_sizes_256_in_4_lanes() {
    // The smallest lanes (64 bytes, largest message 24): nearly every message wraps or pads.
    message_stream::<256, 4>(scaled(300_000, 300));
}

/// Claims `side` for thread `index` once the thread before has handed over: the previous
/// holder announces the hand-over *before* it drops its handle, so the claim races with the
/// release and must see `Taken` by exactly that holder until then.
fn claim_in_turn<H>(
    turn: &AtomicU32,
    index: u32,
    mut claim: impl FnMut(NonZeroU32) -> Result<H, ClaimError>,
) -> H {
    while turn.load(Ordering::Acquire) != index {
        wait();
    }
    loop {
        match claim(owner(index + 1)) {
            Ok(handle) => return handle,
            Err(ClaimError::Taken { owner }) => {
                assert_eq!(owner, index, "held by the previous thread only");
                wait();
            }
            Err(error) => panic!("thread {index}: {error}"),
        }
    }
}

/// Four producer and four consumer threads take their side of `R` in turn, each for `chunk`
/// elements, while the other side runs: every claim continues exactly where the previous holder
/// stopped.
fn sides_handed<R: ElementRing<Item>>() {
    const THREADS: u32 = 4;
    let chunk = scaled(100_000, 60);
    let total = chunk * u64::from(THREADS);
    let ring = R::boxed();
    let ring = &*ring;
    let producer_turn = AtomicU32::new(0);
    let consumer_turn = AtomicU32::new(0);
    thread::scope(|scope| {
        for index in 0..THREADS {
            let turn = &producer_turn;
            scope.spawn(move || {
                let mut tx = claim_in_turn(turn, index, |id| ring.claim_producer(id));
                let first = chunk * u64::from(index);
                let mut seq = first;
                while seq < first + chunk {
                    // Mix single pushes and batches so the recovered position is tested after
                    // both.
                    let pushed = if seq.is_multiple_of(5) {
                        tx.push(Item::new(seq)).map_or(0, |()| 1)
                    } else {
                        tx.push_iter((seq..(seq + 7).min(first + chunk)).map(Item::new))
                    };
                    if pushed == 0 {
                        wait();
                    }
                    seq += pushed as u64;
                }
                turn.store(index + 1, Ordering::Release);
                drop(tx);
            });
        }
        for index in 0..THREADS {
            let turn = &consumer_turn;
            scope.spawn(move || {
                let mut rx = claim_in_turn(turn, index, |id| ring.claim_consumer(id));
                let first = chunk * u64::from(index);
                let mut expected = first;
                while expected < first + chunk {
                    let got = if expected.is_multiple_of(2) {
                        rx.pop().map_or(0, |item| {
                            item.verify(expected);
                            expected += 1;
                            1
                        })
                    } else {
                        // Take part of what is ready; the rest goes to the next claim.
                        let max = (first + chunk - expected).min(9) as usize;
                        rx.take_half(max, |item| {
                            item.verify(expected);
                            expected += 1;
                        })
                    };
                    if got == 0 {
                        wait();
                    }
                }
                turn.store(index + 1, Ordering::Release);
                drop(rx);
            });
        }
    });
    assert_eq!(ring.holders(), (0, 0));
    let mut rx = ring.claim_consumer(owner(99)).unwrap();
    assert_eq!(rx.pop(), None, "{total} elements, no more");
}

#[test]
fn ring_sides_handed_between_threads_mid_stream() {
    sides_handed::<Ring<Item, 32>>();
}

#[test]
fn dense_ring_sides_handed_between_threads_mid_stream() {
    sides_handed::<DenseRing<Item, 32>>();
}

/// Four producer and four consumer threads take their side in turn, each for `chunk` messages,
/// while the other side runs: every claim recovers the position (and with lanes, the lane the
/// round stands at) from what the previous holder left.
fn message_sides_handed<const C: usize, const L: usize>(chunk: u64) {
    const THREADS: u32 = 4;
    let ring = Box::new(MessageRing::<C, L>::new());
    let ring = &*ring;
    let producer_turn = AtomicU32::new(0);
    let consumer_turn = AtomicU32::new(0);
    thread::scope(|scope| {
        for index in 0..THREADS {
            let turn = &producer_turn;
            scope.spawn(move || {
                let mut tx = claim_in_turn(turn, index, |id| ring.claim_producer(id));
                let first = chunk * u64::from(index);
                for seq in first..first + chunk {
                    send_message(&mut tx, seq);
                }
                // A slot allocated and abandoned at the hand-over must leave no trace.
                if let Ok(mut slot) = tx.alloc(16, 0xDEAD) {
                    slot.payload_mut().fill(0xEE);
                }
                turn.store(index + 1, Ordering::Release);
                drop(tx);
            });
        }
        for index in 0..THREADS {
            let turn = &consumer_turn;
            scope.spawn(move || {
                let mut rx = claim_in_turn(turn, index, |id| ring.claim_consumer(id));
                let first = chunk * u64::from(index);
                for seq in first..first + chunk {
                    receive_message(&mut rx, seq, MessageRing::<C, L>::MAX_PAYLOAD);
                }
                turn.store(index + 1, Ordering::Release);
                drop(rx);
            });
        }
    });
    assert_eq!(ring.holders(), (0, 0));
    assert_drained(ring);
}

#[test]
fn message_ring_sides_handed_between_threads_mid_stream() {
    message_sides_handed::<1024, 1>(scaled(50_000, 40));
}

#[test]
fn message_ring_in_4_lanes_sides_handed_between_threads_mid_stream() {
    // Chunks of 4k + 1 messages: each hand-over happens at another lane.
    message_sides_handed::<2048, 4>(scaled(50_001, 41));
}
