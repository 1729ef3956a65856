//! Functional tests of the dense element ring `DenseRing<T, N>`: order, capacity, batch
//! operations and read and write chunks across the ring's end, element drops, claims and corrupt indices,
//! attaching in caller memory, positions that wrap past `u32::MAX`, and a property test against
//! a `VecDeque` model. Single-threaded: `tests/threaded.rs` covers two threads.
// The loom build (`--cfg loom`) runs only `tests/loom.rs`: its rings exist only inside a
// loom model, and have no `init_in_place`, `attach` or slice views.
#![cfg(not(loom))]
// These tests drop or leak read chunks on purpose: either must stay harmless whatever their
// implementation (today they have no `Drop`, which these lints point out).
#![allow(clippy::drop_non_drop, clippy::forget_non_drop)]

use std::collections::VecDeque;
use std::mem;
use std::ptr::NonNull;

use proptest::prelude::*;
use spsc_core::{AttachError, ClaimError, DenseRing, Full, Ring, RingKind};

mod common;
use common::{
    drop_counts, drop_table, owner, proptest_config, scaled, start_position, Line, Region, Tracked,
};

/// Offsets of the consumer's and producer's index words: the second and third 128-byte lines,
/// after the control block. Part of the shared-memory format, locked at compile time by
/// `src/shared_layout.rs`; these tests use them to start a ring at any position, or corrupt it.
const HEAD_OFFSET: usize = 128;
const TAIL_OFFSET: usize = 256;

fn region_for<T, const N: usize>() -> Region {
    Region::new(mem::size_of::<DenseRing<T, N>>())
}

/// An empty `DenseRing<T, N>` in `region` whose positions stand at `start`, as if `start`
/// elements had been pushed and popped.
fn ring_at<T, const N: usize>(region: &mut Region, start: u32) -> &DenseRing<T, N> {
    let len = region.len();
    // SAFETY: `region` is valid, zeroed memory of `len` bytes, exclusively borrowed.
    unsafe { DenseRing::<T, N>::init_in_place(region.base(), len) }.expect("region fits");
    region.write_u32(HEAD_OFFSET, start);
    region.write_u32(TAIL_OFFSET, start);
    // SAFETY: initialised above; borrowed for the reference's lifetime.
    unsafe { DenseRing::<T, N>::attach(region.base(), len) }.expect("the ring initialised above")
}

#[test]
fn push_pop_peek_keep_fifo_order() {
    let mut ring = DenseRing::<u64, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(rx.pop(), None);
    assert_eq!(rx.peek(), None);
    for value in 1..=5 {
        tx.push(value).unwrap();
    }
    assert_eq!(rx.peek(), Some(&1));
    assert_eq!(rx.len(), 5);
    for value in 1..=5 {
        assert_eq!(rx.pop(), Some(value));
    }
    assert!(rx.is_empty());
    assert_eq!((tx.position(), rx.position()), (5, 5));
}

fn capacity_is_exactly<const N: usize>() {
    let mut ring = DenseRing::<u32, N>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.capacity(), N);
    assert_eq!(rx.capacity(), N);
    assert_eq!(DenseRing::<u32, N>::CAPACITY, N);
    for lap in 0..3u32 {
        for i in 0..N as u32 {
            assert!(!tx.is_full());
            tx.push(lap * 1000 + i).unwrap();
        }
        assert!(tx.is_full());
        assert_eq!(tx.free_len(), 0);
        assert_eq!(tx.push(7), Err(Full(7)));
        assert_eq!(rx.len(), N);
        for i in 0..N as u32 {
            assert_eq!(rx.pop(), Some(lap * 1000 + i));
        }
        assert_eq!(tx.free_len(), N);
    }
}

#[test]
fn capacity_is_exactly_n() {
    capacity_is_exactly::<1>();
    capacity_is_exactly::<2>();
    capacity_is_exactly::<8>();
    capacity_is_exactly::<64>();
}

#[test]
fn full_hands_back_a_non_copy_value() {
    let mut ring = DenseRing::<String, 2>::new();
    let (mut tx, mut rx) = ring.split();
    tx.push("a".into()).unwrap();
    tx.push("b".into()).unwrap();
    assert_eq!(tx.push("c".into()), Err(Full("c".to_string())));
    assert_eq!(rx.pop().as_deref(), Some("a"));
    tx.push("c".into()).unwrap();
    assert_eq!(rx.pop().as_deref(), Some("b"));
    assert_eq!(rx.pop().as_deref(), Some("c"));
}

/// Batches of every length from every fill level, lap after lap: each batch that crosses the
/// ring's end is split into two copies, and order must survive both sides' splits.
#[test]
fn batches_of_every_length_keep_order_across_the_ring_end() {
    const N: usize = 16;
    let mut ring = DenseRing::<u64, N>::new();
    let (mut tx, mut rx) = ring.split();
    let (mut next_in, mut next_out) = (0u64, 0u64);
    for round in 0..scaled(200, 12) {
        let push_len = round % (N + 3);
        let pop_len = (round * 7) % (N + 3);
        let items: Vec<u64> = (next_in..next_in + push_len as u64).collect();
        let free = N - (next_in - next_out) as usize;
        let pushed = tx.push_slice(&items);
        assert_eq!(pushed, push_len.min(free));
        next_in += pushed as u64;
        let mut out = vec![u64::MAX; pop_len];
        let ready = (next_in - next_out) as usize;
        let popped = rx.pop_slice(&mut out);
        assert_eq!(popped, pop_len.min(ready));
        for value in &out[..popped] {
            assert_eq!(*value, next_out);
            next_out += 1;
        }
        assert!(
            out[popped..].iter().all(|&v| v == u64::MAX),
            "wrote past the count"
        );
    }
}

#[test]
fn push_iter_leaves_the_rest_in_the_iterator() {
    let mut ring = DenseRing::<u32, 4>::new();
    let (mut tx, mut rx) = ring.split();
    let mut items = 0..10;
    assert_eq!(tx.push_iter(&mut items), 4);
    assert_eq!(items.next(), Some(4));
    assert_eq!(tx.push_iter(&mut items), 0);
    assert_eq!(rx.pop(), Some(0));
    assert_eq!(tx.push_iter(&mut items), 1);
    assert_eq!(items.next(), Some(6));
    let mut out = [0; 8];
    assert_eq!(rx.pop_slice(&mut out), 4);
    assert_eq!(out[..4], [1, 2, 3, 5]);
}

/// A read chunk sees exactly what was ready, as two slices split at the ring's end; committing
/// part of it releases exactly that part, and an uncommitted chunk releases nothing.
#[test]
fn read_chunks_are_two_slices_and_commit_what_they_are_told() {
    let mut ring = DenseRing::<u32, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.push_slice(&[0, 1, 2, 3, 4, 5]), 6);
    let mut out = [0; 5];
    assert_eq!(rx.pop_slice(&mut out), 5);
    assert_eq!(tx.push_slice(&[6, 7, 8, 9, 10]), 5);
    // Positions 5..11 sit at indices 5, 6, 7 and then 0, 1, 2.
    let chunk = rx.read_chunk(100);
    assert_eq!(chunk.len(), 6);
    assert_eq!(chunk.as_slices(), (&[5, 6, 7][..], &[8, 9, 10][..]));
    assert_eq!(chunk.get(3), Some(&8));
    assert_eq!(chunk.get(6), None);
    drop(chunk);
    assert_eq!(rx.len(), 6, "a dropped chunk releases nothing");
    let chunk = rx.read_chunk(4);
    assert_eq!(chunk.as_slices(), (&[5, 6, 7][..], &[8][..]));
    chunk.commit(2);
    assert_eq!(rx.position(), 7);
    assert_eq!(tx.free_len(), 4);
    let chunk = rx.read_chunk(2);
    assert_eq!(chunk.as_slices(), (&[7][..], &[8][..]));
    chunk.commit(99);
    assert_eq!(rx.pop(), Some(9));
    let chunk = rx.read_chunk(8);
    assert_eq!(chunk.as_slices(), (&[10][..], &[][..]));
    chunk.commit_all();
    assert!(rx.read_chunk(8).is_empty());
}

/// A write chunk offers exactly the free slots, as two runs split at the ring's end; committing
/// part of it publishes exactly that part, and an uncommitted chunk publishes nothing.
#[test]
fn write_chunks_are_two_runs_and_publish_what_they_commit() {
    let mut ring = DenseRing::<u32, 8>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.push_slice(&[0, 1, 2, 3, 4, 5]), 6);
    let mut out = [0; 5];
    assert_eq!(rx.pop_slice(&mut out), 5);
    // Free: positions 6..13, at indices 6, 7 and then 0..5.
    let mut chunk = tx.write_chunk(100);
    assert_eq!(chunk.len(), 7);
    let (first, second) = chunk.as_mut_slices();
    assert_eq!((first.len(), second.len()), (2, 5));
    first[0].write(99);
    drop(chunk);
    assert_eq!(rx.len(), 1, "a dropped chunk publishes nothing");
    let mut chunk = tx.write_chunk(4);
    let (first, second) = chunk.as_mut_slices();
    assert_eq!((first.len(), second.len()), (2, 2));
    for (i, slot) in first.iter_mut().chain(second.iter_mut()).enumerate() {
        slot.write(6 + i as u32);
    }
    // SAFETY: all four slots were written above; three are committed.
    unsafe { chunk.commit(3) };
    assert_eq!(tx.position(), 9);
    assert_eq!(tx.write_chunk(8).fill_from_iter(9..11), 2);
    assert!(tx.write_chunk(0).is_empty());
    let mut out = [0; 8];
    assert_eq!(rx.pop_slice(&mut out), 6);
    assert_eq!(out[..6], [5, 6, 7, 8, 9, 10]);
    // A full ring offers an empty chunk.
    assert_eq!(tx.push_iter(0..100), 8);
    assert!(tx.write_chunk(1).is_empty());
}

#[test]
fn zero_sized_elements_are_counted() {
    let mut ring = DenseRing::<(), 4>::new();
    let (mut tx, mut rx) = ring.split();
    assert_eq!(tx.push_slice(&[(); 6]), 4);
    assert_eq!(tx.push(()), Err(Full(())));
    assert_eq!(rx.len(), 4);
    let mut out = [(); 3];
    assert_eq!(rx.pop_slice(&mut out), 3);
    assert_eq!(rx.pop(), Some(()));
    assert_eq!(rx.pop(), None);
}

/// Every element is dropped exactly once, whichever way it leaves: popped, committed from a
/// chunk, or still in the ring when the ring is dropped (after positions wrapped round it).
#[test]
fn every_element_is_dropped_exactly_once() {
    let drops = drop_table(40);
    {
        let mut ring = DenseRing::<Tracked, 8>::new();
        let (mut tx, mut rx) = ring.split();
        let mut ids = 0..40;
        for _ in 0..3 {
            assert_eq!(
                tx.push_iter(ids.by_ref().take(6).map(|id| Tracked { id, drops: &drops })),
                6
            );
            drop(rx.pop()); // one dropped by the caller
            rx.read_chunk(3).commit(2); // two dropped in place
            let chunk = rx.read_chunk(8);
            assert_eq!(chunk.len(), 3);
            drop(chunk); // none
            rx.read_chunk(8).commit(3);
        }
        assert_eq!(
            tx.push_iter(ids.by_ref().take(5).map(|id| Tracked { id, drops: &drops })),
            5
        );
        drop(rx.pop());
        // Four are left in the ring, at indices that wrapped round its end.
    }
    let counts = drop_counts(&drops);
    assert!(counts[..23].iter().all(|&c| c == 1), "{counts:?}");
    assert!(counts[23..].iter().all(|&c| c == 0), "{counts:?}");
}

#[test]
fn claiming_a_taken_side_names_the_owner() {
    let ring = DenseRing::<u32, 4>::new();
    let tx = ring.claim_producer(owner(7)).unwrap();
    let rx = ring.claim_consumer(owner(9)).unwrap();
    assert_eq!(ring.holders(), (7, 9));
    assert_eq!(
        ring.claim_producer(owner(8)).unwrap_err(),
        ClaimError::Taken { owner: 7 }
    );
    assert_eq!(
        ring.claim_consumer(owner(8)).unwrap_err(),
        ClaimError::Taken { owner: 9 }
    );
    drop((tx, rx));
    assert_eq!(ring.holders(), (0, 0));
}

/// Re-claimed handles continue exactly where the last ones stopped: no gap, no duplicate.
#[test]
fn reclaimed_sides_continue_where_the_last_ones_stopped() {
    let ring = DenseRing::<u32, 4>::new();
    let mut next = 0;
    let mut expected = 0;
    for round in 0..scaled(30, 6) {
        let mut tx = ring.claim_producer(owner(1)).unwrap();
        while tx.push(next).is_ok() {
            next += 1;
        }
        drop(tx);
        let mut rx = ring.claim_consumer(owner(2)).unwrap();
        for _ in 0..=round % 4 {
            assert_eq!(rx.pop(), Some(expected));
            expected += 1;
        }
    }
}

#[test]
fn take_over_from_a_dead_owner() {
    let ring = DenseRing::<u32, 4>::new();
    let mut tx = ring.claim_producer(owner(3)).unwrap();
    let mut rx = ring.claim_consumer(owner(4)).unwrap();
    tx.push_slice(&[1, 2, 3]);
    let chunk = rx.read_chunk(2);
    assert_eq!(chunk.len(), 2);
    // Both holders "die": their handles vanish without releasing the claims.
    mem::forget(chunk);
    mem::forget((tx, rx));
    assert_eq!(ring.holders(), (3, 4));
    // SAFETY: the old handles were forgotten and are never used again.
    let mut tx = unsafe { ring.take_over_producer(owner(3), owner(5)) }.unwrap();
    // SAFETY: as above.
    let mut rx = unsafe { ring.take_over_consumer(owner(4), owner(6)) }.unwrap();
    assert_eq!(
        // SAFETY: refused before any handle is made.
        unsafe { ring.take_over_producer(owner(3), owner(8)) }.unwrap_err(),
        ClaimError::Taken { owner: 5 }
    );
    tx.push(4).unwrap();
    let mut out = [0; 8];
    assert_eq!(
        rx.pop_slice(&mut out),
        4,
        "read but unreleased elements come again"
    );
    assert_eq!(out[..4], [1, 2, 3, 4]);
}

#[test]
fn split_clears_claims_of_leaked_handles() {
    let mut ring = DenseRing::<u32, 4>::new();
    mem::forget(ring.claim_producer(owner(5)).unwrap());
    mem::forget(ring.claim_consumer(owner(6)).unwrap());
    let (mut tx, mut rx) = ring.split();
    tx.push(1).unwrap();
    assert_eq!(rx.pop(), Some(1));
}

#[test]
fn a_ring_in_caller_memory_works_like_an_owned_one() {
    let mut region = region_for::<u64, 16>();
    let (len, base) = (region.len(), region.base());
    // SAFETY: the region is valid, exclusively borrowed memory of `len` bytes.
    let ring = unsafe { DenseRing::<u64, 16>::init_in_place(base, len) }.unwrap();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    tx.push_slice(&[10, 11, 12]);
    drop(tx);
    // Another "process" attaches to the same bytes.
    // SAFETY: as above; the ring is only used through handles.
    let again = unsafe { DenseRing::<u64, 16>::attach(base, len) }.unwrap();
    let mut rx = again.claim_consumer(owner(2)).unwrap();
    let mut out = [0; 4];
    assert_eq!(rx.pop_slice(&mut out), 3);
    assert_eq!(out[..3], [10, 11, 12]);
    let layout = DenseRing::<u64, 16>::LAYOUT;
    assert_eq!(layout.kind, RingKind::Dense as u32);
    assert_eq!(layout.block_offset(3), layout.data_offset as usize + 3 * 8);
}

/// `DenseRing::<T, N>::attach` on `len` bytes at `base`, keeping only the verdict.
///
/// Only for memory of a live `Region` of at least `len` bytes (or a suffix of one) that nothing
/// else uses during the call: the caller's side of `attach`'s contract.
fn attach_verdict<T, const N: usize>(base: NonNull<u8>, len: usize) -> Result<(), AttachError> {
    // SAFETY: per this function's contract, the bytes are valid and unshared for the call, and
    // the reference `attach` returns is dropped at once.
    unsafe { DenseRing::<T, N>::attach(base, len) }.map(|_| ())
}

#[test]
fn attach_refuses_what_is_not_this_ring() {
    let mut region = region_for::<u64, 16>();
    let (len, base) = (region.len(), region.base());
    assert_eq!(
        attach_verdict::<u64, 16>(base, len),
        Err(AttachError::BadMagic { found: 0 })
    );
    assert!(matches!(
        attach_verdict::<u64, 16>(base, len - 1),
        Err(AttachError::TooSmall { .. })
    ));
    let misaligned = NonNull::new(base.as_ptr().wrapping_add(8)).unwrap();
    assert!(matches!(
        attach_verdict::<u64, 16>(misaligned, len - 8),
        Err(AttachError::Misaligned { required: 128, .. })
    ));
    // SAFETY: the region is valid, exclusively borrowed memory of `len` bytes.
    unsafe { DenseRing::<u64, 16>::init_in_place(base, len) }.unwrap();
    assert_eq!(attach_verdict::<u64, 16>(base, len), Ok(()));
    // Another capacity, another element type: layout mismatches.
    assert!(matches!(
        attach_verdict::<u64, 8>(base, len),
        Err(AttachError::LayoutMismatch { .. })
    ));
    assert!(matches!(
        attach_verdict::<u32, 16>(base, len),
        Err(AttachError::LayoutMismatch { .. })
    ));
    // The stamped ring of the same element type and capacity is another kind.
    let mut big = vec![Line([0; 128]); mem::size_of::<Ring<u64, 16>>().div_ceil(128)];
    let big_base = NonNull::new(big.as_mut_ptr().cast::<u8>()).unwrap();
    let big_len = big.len() * 128;
    // SAFETY: `big` is valid, exclusively borrowed memory of `big_len` bytes.
    unsafe { DenseRing::<u64, 16>::init_in_place(big_base, big_len) }.unwrap();
    // SAFETY: as above; the reference is only matched on.
    match unsafe { Ring::<u64, 16>::attach(big_base, big_len) } {
        Err(AttachError::LayoutMismatch { expected, found }) => {
            assert_eq!(expected.kind, RingKind::Fixed as u32);
            assert_eq!(found.kind, RingKind::Dense as u32);
        }
        other => panic!("a Ring attached to a DenseRing: {other:?}"),
    }
}

/// Indices more than `N` apart (a peer's bug, or bytes that were never a ring's indices) are
/// refused at claim time, and the refused claim is released.
#[test]
fn indices_more_than_the_capacity_apart_are_refused() {
    for (head, tail) in [(0, 17), (5, 4), (u32::MAX, 16), (100, 0)] {
        let mut region = region_for::<u64, 16>();
        ring_at::<u64, 16>(&mut region, 0);
        region.write_u32(HEAD_OFFSET, head);
        region.write_u32(TAIL_OFFSET, tail);
        let (len, base) = (region.len(), region.base());
        // SAFETY: the region holds a ring initialised by `ring_at`, exclusively borrowed.
        let ring = unsafe { DenseRing::<u64, 16>::attach(base, len) }.unwrap();
        let corrupt = ClaimError::Corrupt {
            reason: "the producer's index is more than the capacity ahead of the consumer's",
        };
        assert_eq!(ring.claim_producer(owner(1)).unwrap_err(), corrupt);
        assert_eq!(ring.claim_consumer(owner(2)).unwrap_err(), corrupt);
        assert_eq!(ring.holders(), (0, 0), "refused claims are released");
    }
    // Exactly `N` apart is a full ring, and fine.
    let mut region = region_for::<u64, 16>();
    ring_at::<u64, 16>(&mut region, u32::MAX - 3);
    region.write_u32(TAIL_OFFSET, (u32::MAX - 3).wrapping_add(16));
    let (len, base) = (region.len(), region.base());
    // SAFETY: as above.
    let ring = unsafe { DenseRing::<u64, 16>::attach(base, len) }.unwrap();
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    assert!(tx.is_full());
    let rx = ring.claim_consumer(owner(2)).unwrap();
    assert_eq!(rx.len(), 16);
}

#[test]
fn positions_wrap_past_u32_max() {
    let mut region = region_for::<u64, 8>();
    let ring = ring_at::<u64, 8>(&mut region, u32::MAX - 5);
    let mut tx = ring.claim_producer(owner(1)).unwrap();
    let mut rx = ring.claim_consumer(owner(2)).unwrap();
    let mut next = 0u64;
    let mut expected = 0u64;
    for round in 0..scaled(40, 8) {
        let items: Vec<u64> = (next..next + (round % 9) as u64).collect();
        next += tx.push_slice(&items) as u64;
        if round % 3 == 0 {
            if let Some(value) = rx.pop() {
                assert_eq!(value, expected);
                expected += 1;
            }
        }
        let mut out = [0; 5];
        let popped = rx.pop_slice(&mut out);
        for value in &out[..popped] {
            assert_eq!(*value, expected);
            expected += 1;
        }
    }
    assert!(expected > 6, "too few elements to cross u32::MAX");
    assert_eq!(rx.position(), (u32::MAX - 5).wrapping_add(expected as u32));
    assert_eq!(
        tx.position().wrapping_sub(rx.position()),
        (next - expected) as u32
    );
}

// ---------------------------------------------------------------------------------------------
// Property test against a `VecDeque` model.

/// One step of the property test.
#[derive(Clone, Debug)]
enum Op {
    Push,
    PushSlice(usize),
    PushIter(usize),
    Pop,
    Peek,
    PopSlice(usize),
    /// A read chunk of at most `.0` elements, of which `.1` are committed.
    Chunk(usize, usize),
    /// A write chunk of at most `.0` slots, of which `.1` are written and committed.
    WriteChunk(usize, usize),
    ReclaimProducer,
    ReclaimConsumer,
}

/// Operations on a ring of capacity `n`; batch lengths go a little past it.
fn op(n: usize) -> impl Strategy<Value = Op> {
    let len = 0..n + 4;
    prop_oneof![
        3 => Just(Op::Push),
        2 => len.clone().prop_map(Op::PushSlice),
        2 => len.clone().prop_map(Op::PushIter),
        3 => Just(Op::Pop),
        1 => Just(Op::Peek),
        2 => len.clone().prop_map(Op::PopSlice),
        2 => (len.clone(), len.clone()).prop_map(|(max, take)| Op::Chunk(max, take)),
        2 => (len.clone(), len).prop_map(|(max, fill)| Op::WriteChunk(max, fill)),
        1 => Just(Op::ReclaimProducer),
        1 => Just(Op::ReclaimConsumer),
    ]
}

/// Runs `ops` against `DenseRing<[u32; 3], N>` at positions from `start` and a `VecDeque` model
/// (12-byte elements, so runs are not line multiples).
fn run_model<const N: usize>(start: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let make = |n: u32| [n, !n, n.wrapping_mul(3)];
    let mut region = region_for::<[u32; 3], N>();
    let ring = ring_at::<[u32; 3], N>(&mut region, start);
    let mut ids = 10..;
    let mut tx = ring.claim_producer(owner(ids.next().unwrap())).unwrap();
    let mut rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
    let mut model = VecDeque::new();
    let mut next = 0u32;
    for op in ops {
        let free = N - model.len();
        match *op {
            Op::Push => match tx.push(make(next)) {
                Ok(()) => {
                    prop_assert!(free > 0);
                    model.push_back(make(next));
                    next += 1;
                }
                Err(Full(back)) => {
                    prop_assert_eq!(free, 0);
                    prop_assert_eq!(back, make(next));
                }
            },
            Op::PushSlice(len) => {
                let items: Vec<_> = (next..next + len as u32).map(make).collect();
                let pushed = tx.push_slice(&items);
                prop_assert_eq!(pushed, len.min(free));
                model.extend(&items[..pushed]);
                next += pushed as u32;
            }
            Op::PushIter(len) => {
                let mut items = (next..next + len as u32).map(make);
                let pushed = tx.push_iter(&mut items);
                prop_assert_eq!(pushed, len.min(free));
                model.extend((next..next + pushed as u32).map(make));
                next += pushed as u32;
                prop_assert_eq!(items.next(), (pushed < len).then(|| make(next)));
            }
            Op::Pop => prop_assert_eq!(rx.pop(), model.pop_front()),
            Op::Peek => prop_assert_eq!(rx.peek(), model.front()),
            Op::PopSlice(len) => {
                let mut out = vec![[u32::MAX; 3]; len];
                let popped = rx.pop_slice(&mut out);
                prop_assert_eq!(popped, len.min(model.len()));
                let expected: Vec<_> = model.drain(..popped).collect();
                prop_assert_eq!(&out[..popped], &expected[..]);
            }
            Op::Chunk(max, take) => {
                let chunk = rx.read_chunk(max);
                let ready = max.min(model.len());
                prop_assert_eq!(chunk.len(), ready);
                let (first, second) = chunk.as_slices();
                let seen: Vec<_> = first.iter().chain(second).copied().collect();
                let expected: Vec<_> = model.iter().take(ready).copied().collect();
                prop_assert_eq!(seen, expected);
                chunk.commit(take);
                model.drain(..take.min(ready));
            }
            Op::WriteChunk(max, fill) => {
                let mut chunk = tx.write_chunk(max);
                prop_assert_eq!(chunk.len(), max.min(free));
                let written = fill.min(chunk.len());
                let (first, second) = chunk.as_mut_slices();
                prop_assert_eq!(first.len() + second.len(), max.min(free));
                for slot in first.iter_mut().chain(second.iter_mut()).take(written) {
                    slot.write(make(next));
                    model.push_back(make(next));
                    next += 1;
                }
                // SAFETY: the loop above initialised the first `written` slots.
                unsafe { chunk.commit(written) };
            }
            Op::ReclaimProducer => {
                let id = ids.next().unwrap();
                drop(tx);
                tx = ring.claim_producer(owner(id)).unwrap();
                prop_assert_eq!(ring.holders().0, id);
            }
            Op::ReclaimConsumer => {
                drop(rx);
                rx = ring.claim_consumer(owner(ids.next().unwrap())).unwrap();
            }
        }
        prop_assert_eq!(rx.len(), model.len());
        prop_assert_eq!(rx.is_empty(), model.is_empty());
        prop_assert_eq!(tx.free_len(), N - model.len());
        prop_assert_eq!(tx.is_full(), model.len() == N);
        prop_assert_eq!(
            tx.position().wrapping_sub(rx.position()) as usize,
            model.len()
        );
    }
    let mut rest = vec![[0; 3]; N];
    let popped = rx.pop_slice(&mut rest);
    prop_assert_eq!(&rest[..popped], &Vec::from(model)[..]);
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn matches_a_vecdeque_model(
        start in start_position(),
        ops in prop::collection::vec(op(8), 0..if cfg!(miri) { 40 } else { 200 }),
    ) {
        run_model::<8>(start, &ops)?;
    }

    #[test]
    fn matches_a_vecdeque_model_with_one_slot(
        start in start_position(),
        ops in prop::collection::vec(op(1), 0..if cfg!(miri) { 40 } else { 100 }),
    ) {
        run_model::<1>(start, &ops)?;
    }
}
